/* monitor.c - the config's monitors (zinc/monitor.h): each scalar to every one enabled. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "monitor_int.h"
#include "zinc/monitor.h"

struct zinc_monitor {
    tb_writer *tb;
    csv_writer *csv;
};

/* OUTPUT_PATH/JOB_NAME, or JOB_NAME when output_path is "" (DeepSpeed's os.path.join) */
static zinc_status monitor_dir(const char *section, const char *output_path, const char *job_name, char *out,
                               size_t cap)
{
    if (!job_name[0] && !output_path[0])
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s: output_path and job_name are both empty", section);
    int w = !output_path[0] ? snprintf(out, cap, "%s", job_name)
            : !job_name[0]  ? snprintf(out, cap, "%s", output_path)
                            : snprintf(out, cap, "%s/%s", output_path, job_name);
    if (w < 0 || (size_t)w >= cap) return zinc_error(ZINC_ERR_INVALID_ARG, "%s: the folder's name is too long", section);
    return ZINC_OK;
}

zinc_status zinc_monitor_open(const zinc_config *cfg, int64_t resume_step, zinc_monitor **out)
{
    *out = NULL;
    if (!cfg->tensorboard.enabled && !cfg->csv_monitor.enabled) return ZINC_OK;
    zinc_monitor *m = calloc(1, sizeof *m);
    if (!m) return zinc_error(ZINC_ERR_NOMEM, "monitors");
    char dir[3584];
    zinc_status st = ZINC_OK;
    if (cfg->tensorboard.enabled) {
        st = monitor_dir("tensorboard", cfg->tensorboard.output_path, cfg->tensorboard.job_name, dir, sizeof dir);
        if (st == ZINC_OK) st = tb_open(dir, "tensorboard", resume_step >= 0 ? resume_step + 1 : -1, &m->tb);
    }
    if (st == ZINC_OK && cfg->csv_monitor.enabled) {
        st = monitor_dir("csv_monitor", cfg->csv_monitor.output_path, cfg->csv_monitor.job_name, dir, sizeof dir);
        if (st == ZINC_OK) st = csv_open(dir, "csv_monitor", resume_step, &m->csv);
    }
    if (st != ZINC_OK) {
        tb_discard(m->tb); /* no event file of a run that did not start */
        m->tb = NULL;
        zinc_monitor_close(m);
        return st;
    }
    *out = m;
    return ZINC_OK;
}

zinc_status zinc_monitor_scalar(zinc_monitor *m, const char *tag, double value, int64_t step)
{
    if (!m) return ZINC_OK;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (m->tb) MON_TRY(tb_scalar(m->tb, tag, (float)value, step, (double)ts.tv_sec + ts.tv_nsec * 1e-9));
    if (m->csv) MON_TRY(csv_scalar(m->csv, tag, value, step));
    return ZINC_OK;
}

zinc_status zinc_monitor_step(zinc_monitor *m, const zinc_config *cfg, const zinc_step_stats *s, double vloss,
                              double peak_tflops, int tp, int pp)
{
    if (!m) return ZINC_OK;
    const int64_t at = s->samples_seen;
    struct {
        const char *tag;
        double v;
        int on;
    } t[] = {
        {"Train/Samples/train_loss", s->loss, 1},
        {"Train/Samples/lr", s->lr, 1},
        {"Train/Samples/loss_scale", s->loss_scale, cfg->fp16.enabled},
        {"Train/Samples/grad_norm", s->grad_norm, isfinite(s->grad_norm)},
        {"Train/Samples/tokens_per_s", s->tokens_per_s, 1},
        {"Train/Samples/step_ms", s->step_ms, 1},
        {"Train/Samples/tflops", s->model_tflops, 1},
        {"Train/Samples/mfu", peak_tflops > 0 ? s->model_tflops / peak_tflops : 0, peak_tflops > 0},
        {"Train/Samples/eval_loss", vloss, !isnan(vloss)},
        {"Train/Samples/model_state_bytes", (double)s->model_state_bytes_max, 1},
        {"Train/Samples/device_mem_peak_bytes", (double)s->dev_mem_peak, 1},
        {"Train/Samples/act_peak_bytes", (double)s->act_peak_bytes, 1},
        {"Train/Samples/comm_bytes", (double)s->comm_bytes, 1},
        {"Train/Samples/tp_comm_bytes", (double)s->tp_comm_bytes, tp > 1},
        {"Train/Samples/pp_comm_bytes", (double)s->pp_comm_bytes, pp > 1},
        {"Train/Samples/pp_bubble", s->pp_bubble, pp > 1},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (t[i].on) MON_TRY(zinc_monitor_scalar(m, t[i].tag, t[i].v, at));
    return ZINC_OK;
}

zinc_status zinc_monitor_flush(zinc_monitor *m)
{
    if (!m) return ZINC_OK;
    if (m->tb) MON_TRY(tb_flush(m->tb));
    if (m->csv) MON_TRY(csv_flush(m->csv));
    return ZINC_OK;
}

const char *zinc_monitor_tb_path(const zinc_monitor *m) { return m ? tb_path(m->tb) : ""; }

void zinc_monitor_close(zinc_monitor *m)
{
    if (!m) return;
    tb_close(m->tb);
    csv_close(m->csv);
    free(m);
}
