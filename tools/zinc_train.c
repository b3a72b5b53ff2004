/* zinc-train - the main job: builds a GPT from a JSON config, trains it with
 * data parallelism over the ranks mpirun started, logs one line per
 * steps_per_print steps and JSON lines to train.metrics_file.
 *
 *   zinc-train CONFIG [--set key.path=value]... [--check]
 *   zinc-train --list-keys
 *
 * Exit status: 0 done, 1 runtime failure, 2 bad input (usage, config, data).
 * Errors that every rank sees alike (config, data) are agreed on with one
 * all-reduce so the job ends cleanly with one message; errors during a step
 * abort the whole job (MPI_Abort) so no rank is left waiting.
 */
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include <jansson.h>

#include "zinc/aio.h"
#include "zinc/blas.h"
#include "zinc/clock.h"
#include "zinc/ckpt.h"
#include "zinc/comm.h"
#include "zinc/config.h"
#include "zinc/data.h"
#include "zinc/device.h"
#include "zinc/engine.h"
#include "zinc/sysmem.h"
#include "zinc/pipeline.h"
#include "zinc/safetensors.h"
#include "zinc/tokenizer.h"
#include "zinc/file.h"
#include "zinc/model.h"
#include "zinc/monitor.h"
#include "zinc/log.h"
#include "zinc/progress.h"

#define MAX_OVERRIDES 64
#define CKPT_BAR_MIN_BYTES (64ull << 20) /* smaller checkpoints go by without a bar */

static zinc_progress ckpt_bar; /* rank 0's checkpoint progress line (off unless a terminal) */

static void usage(FILE *f)
{
    fprintf(f, "usage: zinc-train CONFIG.json [--set key.path=value]... [--check | --estimate-memory -n N]\n"
               "       zinc-train --list-keys\n"
               "  --set k=v             override any config key (value parsed as JSON, else a string)\n"
               "  --check               validate and print the resolved config, do not train\n"
               "  --estimate-memory -n N  per-rank model-state bytes for ZeRO stages 0-3 at N ranks\n"
               "  --eval-loss           print the loss on the first global batch (after init_from /\n"
               "                        resume) and exit without training\n"
               "  --list-keys           print every config key (type, default, values, effect in zinc)\n"
               "                        as a markdown table, and exit\n");
}

/* Prints the per-rank model-state estimate of stages 0-3 for n ranks. */
static int estimate_memory(const zinc_config *cfg_in, int n)
{
    zinc_model *g = NULL;
    zinc_config resolved = *cfg_in, *cfg = &resolved;
    if (zinc_config_check_mesh(cfg, n) != ZINC_OK) { /* the layout decides what a rank holds */
        fprintf(stderr, "zinc-train: %s\n", zinc_last_error());
        return 2;
    }
    if (zinc_config_resolve(cfg, n) != ZINC_OK) { /* the batch triple for n ranks */
        /* model state does not depend on the batch; activations do */
        fprintf(stderr, "zinc-train: activations not estimated: %s\n", zinc_last_error());
        cfg->train_micro_batch_size_per_gpu = 0;
    }
    if (zinc_model_create(cfg, &g) != ZINC_OK) {
        fprintf(stderr, "zinc-train: %s\n", zinc_last_error());
        return 2;
    }
    const char *prec = cfg->bf16.enabled ? "bf16" : cfg->fp16.enabled ? "fp16" : "fp32";
    const int dp = zinc_config_dp_size(cfg, n);
    char layout[96] = ""; /* what one rank of a TP group (of a pipeline stage) holds */
    if (cfg->tp.size > 1 || cfg->pp.stages > 1) {
        char ppn[32] = "";
        if (cfg->pp.stages > 1) snprintf(ppn, sizeof ppn, "pp %lld x ", (long long)cfg->pp.stages);
        snprintf(layout, sizeof layout, " (%stp %lld%s x dp %d)", ppn, (long long)cfg->tp.size,
                 cfg->tp.sequence_parallel ? ", sequence parallel" : "", dp);
    }
    int rc = 0;
    for (int stage = 0; stage <= 3 && rc == 0; stage++) {
        zinc_mem_stats m;
        zinc_status est = zinc_engine_estimate_memory(cfg, zinc_model_def_of(g), dp, stage, &m);
        if (est != ZINC_OK) {
            fprintf(stderr, "zinc-train: %s\n", zinc_last_error());
            rc = est == ZINC_ERR_CONFIG ? 2 : 1;
            break;
        }
        if (stage == 0)
            printf("model-state memory per rank, %d ranks%s, %s (MiB):\n"
                   "stage    params     grads    master optimizer     total   +buckets   on nvme\n", n,
                   layout, prec);
        printf("%5d %9.1f %9.1f %9.1f %9.1f %9.1f %10.1f %9.1f\n", stage, m.params / 1048576.0,
               m.grads / 1048576.0, m.master / 1048576.0, m.optimizer / 1048576.0,
               m.total / 1048576.0, (m.total + m.buffers) / 1048576.0, m.nvme / 1048576.0);
        if (stage == 3 && m.frozen)
            printf("frozen (model.freeze; in params, without grads, master or optimizer state): %.1f MiB at "
                   "stage 3, the rest trainable\n", m.frozen / 1048576.0);
        if (stage == 3 && m.activations && cfg->pp.stages == 1)
            printf("activations per rank (micro-batch %lld x %lld tokens, %s, any stage): %.1f MiB\n",
                   (long long)cfg->train_micro_batch_size_per_gpu,
                   (long long)zinc_config_seq_len(cfg), cfg->bf16.enabled ? "bf16" : "fp32",
                   m.activations / 1048576.0);
    }
    /* the tiers at the configured stage, against what this machine has */
    if (rc == 0 && cfg->pp.stages == 1) {
        zinc_mem_stats m;
        zinc_mem_tiers t;
        if (zinc_engine_estimate_memory(cfg, zinc_model_def_of(g), dp, (int)cfg->zero.stage, &m) == ZINC_OK) {
            const int gpu = cfg->device == ZINC_DEVICE_CUDA || (cfg->device == ZINC_DEVICE_AUTO && zinc_device_cuda_count() > 0);
            zinc_mem_tiers_of(&m, !gpu, &t);
            uint64_t avail, total;
            zinc_host_mem(&avail, &total);
            printf("per rank at ZeRO stage %lld, by tier (MiB): %s %.1f | host %.1f | nvme %.1f; this machine has "
                   "%.1f MiB of host memory available", (long long)cfg->zero.stage, gpu ? "gpu" : "(no gpu)",
                   t.device / 1048576.0, t.host / 1048576.0, t.nvme / 1048576.0, avail / 1048576.0);
            const char *paths[2] = {cfg->zero.offload_optimizer.device == ZINC_OFFLOAD_NVME ? cfg->zero.offload_optimizer.nvme_path : "",
                                    cfg->zero.offload_param.device == ZINC_OFFLOAD_NVME ? cfg->zero.offload_param.nvme_path : ""};
            for (int k = 0; k < 2; k++) {
                uint64_t fb;
                if (!paths[k][0] || (k == 1 && !strcmp(paths[0], paths[1]))) continue;
                if (zinc_fs_free(paths[k], &fb, NULL) == ZINC_OK) printf(", %s %.1f MiB free", paths[k], fb / 1048576.0);
            }
            printf(" (host and nvme: each rank of a node needs its own)\n");
        }
    }
    /* pipeline stages: each stage's share at the configured ZeRO stage */
    for (int s = 0; rc == 0 && cfg->pp.stages > 1 && s < cfg->pp.stages; s++) {
        zinc_mem_stats m;
        zinc_stage_estimate w;
        zinc_status est = zinc_engine_estimate_stage(cfg, zinc_model_def_of(g), dp, (int)cfg->zero.stage, s, &m, &w);
        if (est != ZINC_OK) {
            fprintf(stderr, "zinc-train: %s\n", zinc_last_error());
            rc = est == ZINC_ERR_CONFIG ? 2 : 1;
            break;
        }
        if (s == 0)
            printf("per pipeline stage (%lld stages, %s, %lld micro-batches, ZeRO stage %lld), MiB:\n"
                   "pp stage  layers          model state  activations  in flight\n",
                   (long long)cfg->pp.stages, zinc_pp_kind_name((zinc_pp_kind)cfg->pp.schedule),
                   (long long)cfg->gradient_accumulation_steps, (long long)cfg->zero.stage);
        char layers[64] = "";
        for (int k = 0, at = 0; k < w.n_chunks && k < 8 && at < (int)sizeof layers; k++)
            at += snprintf(layers + at, sizeof layers - (size_t)at, "%s%d-%d", k ? "," : "", w.first_layer[k],
                           w.end_layer[k] - 1);
        printf("%8d  %-15s %11.1f %12.1f %10d\n", s, layers, (m.total + m.buffers) / 1048576.0,
               m.activations / 1048576.0, w.inflight);
    }
    zinc_model_destroy(g);
    return rc;
}

static double now_s(void) { return zinc_now_ms() / 1e3; }

static int exit_code(zinc_status st)
{
    return (st == ZINC_ERR_CONFIG || st == ZINC_ERR_IO || st == ZINC_ERR_CORRUPT ||
            st == ZINC_ERR_UNSUPPORTED || st == ZINC_ERR_INVALID_ARG) ? 2 : 1;
}

/* Collective: every rank's status combined (zinc_comm_agree); rank 0 prints
 * the failing rank's detail once. */
static zinc_status agree(zinc_comm *w, zinc_status st)
{
    zinc_status all = zinc_comm_agree(w, st);
    if (all != ZINC_OK && zinc_comm_rank(w) == 0) fprintf(stderr, "zinc-train: %s\n", zinc_last_error());
    return all;
}

/* A step failed on this rank: say so and take the whole job down. */
static void die(zinc_comm *w, const char *what)
{
    zinc_progress_end(&ckpt_bar);
    fprintf(stderr, "zinc-train: rank %d: %s: %s\n", zinc_comm_rank(w), what, zinc_last_error());
    fflush(stderr);
    if (zinc_comm_size(w) > 1) zinc_comm_abort(w, 1);
    exit(1);
}

/* Fault injection for tests: ZINC_FAULT_KILL="RANK:STEP" kills that rank with
 * SIGKILL when it starts that (1-based) step; ZINC_FAULT_KILL_SAVED="RANK:STEP"
 * right after the checkpoint of that step is saved; ZINC_FAULT_HANG="RANK:STEP"
 * makes it stop responding there (sleeps forever). */
static int fault_at(const char *var, int rank, int64_t step)
{
    const char *f = getenv(var);
    int r;
    long long s;
    return f && sscanf(f, "%d:%lld", &r, &s) == 2 && r == rank && s == step;
}

static void maybe_fault(int rank, int64_t step)
{
    if (fault_at("ZINC_FAULT_KILL", rank, step)) raise(SIGKILL);
    if (fault_at("ZINC_FAULT_HANG", rank, step))
        for (;;) pause();
}

/* Preemption. SIGTERM, SIGINT and SIGUSR1 (what a scheduler sends before it
 * kills a job; zinc-run turns its own SIGTERM into SIGUSR1, which mpirun
 * passes to every rank) ask the job to stop: the handler only records the
 * signal, the ranks agree on it at the next step boundary (one small
 * all-reduce a step), save a checkpoint when train.save_dir is set and exit
 * with 128 + the signal. A second signal exits at once (128 + it); a save it
 * interrupts never reached `latest`, which is renamed into place last. */
static volatile sig_atomic_t g_stop_sig = 0;

static void stop_handler(int sig)
{
    if (g_stop_sig) {
        static const char msg[] = "zinc-train: second signal: exiting now, latest checkpoint untouched\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(128 + sig);
    }
    g_stop_sig = sig;
}

static void stop_handlers_install(void)
{
    static const int sigs[] = {SIGTERM, SIGINT, SIGUSR1};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = stop_handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaction(sigs[i], &sa, NULL);
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: return "a signal";
    }
}

/* Collective: the signal any rank has been sent (the largest number), or 0. */
static int stop_agreed(zinc_comm *w)
{
    int32_t sig = (int32_t)g_stop_sig;
    if (zinc_comm_size(w) > 1 &&
        zinc_comm_all_reduce(w, &sig, &sig, 1, ZINC_DTYPE_I32, ZINC_REDOP_MAX, NULL) != ZINC_OK)
        die(w, "agreeing on a stop signal failed");
    return sig;
}

/* zinc-run --max-restarts starts a failed job again with ZINC_RESTART=k (k >=
 * 1): the job then resumes from the latest checkpoint of train.save_dir, as
 * train.resume "auto" does, unless train.resume names one. */
static void restart_resume(zinc_config *c, int rank)
{
    const char *e = getenv("ZINC_RESTART");
    char *end;
    long k = e ? strtol(e, &end, 10) : 0;
    if (!e || *end || k < 1) return;
    if (c->train.resume[0]) {
        if (rank == 0) ZINC_INFO("restart %ld: train.resume %s as configured", k, c->train.resume);
    } else if (c->train.save_dir[0]) {
        snprintf(c->train.resume, sizeof c->train.resume, "auto");
        if (rank == 0) ZINC_INFO("restart %ld: resuming from the latest checkpoint of %s", k,
                                 c->train.save_dir);
    } else if (rank == 0) {
        ZINC_WARN("restart %ld: train.save_dir is not set, so training starts again at step 1", k);
    }
}

/* A resumed run appends to train.metrics_file: the lines of steps after the
 * checkpoint's (written by the run that failed after it) are dropped first,
 * so the file holds each step once. Rewritten through a temporary file. */
static zinc_status metrics_truncate(const char *path, int64_t step)
{
    FILE *in = NULL;
    if (zinc_fopen_regular(path, "train.metrics_file", &in, NULL) != ZINC_OK) {
        struct stat sb;
        return stat(path, &sb) != 0 ? ZINC_OK : ZINC_ERR_IO; /* absent: nothing to drop */
    }
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out) {
        fclose(in);
        return zinc_error(ZINC_ERR_IO, "train.metrics_file: cannot write %s", tmp);
    }
    char *line = NULL;
    size_t cap = 0;
    int64_t dropped = 0;
    while (getline(&line, &cap, in) > 0) {
        long long s;
        if (sscanf(line, "{\"step\": %lld", &s) == 1 && s > step) { dropped++; continue; }
        fputs(line, out);
    }
    free(line);
    fclose(in);
    if (fclose(out) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return zinc_error(ZINC_ERR_IO, "train.metrics_file: cannot rewrite %s", path);
    }
    if (dropped)
        ZINC_INFO("train.metrics_file: dropped %lld lines of steps after %lld (not in the checkpoint)",
                  (long long)dropped, (long long)step);
    return ZINC_OK;
}

/* Collective: saves checkpoint tag (global_stepN) of step into
 * train.save_dir, or takes the job down. Returns step. */
static int64_t save_step(const zinc_config *c, zinc_engine *eng, zinc_aio *aio, zinc_comm *w,
                         int64_t step, const char *tag)
{
    double t = now_s();
    if (zinc_engine_save_checkpoint(eng, aio, c->train.save_dir, tag, (int)c->train.keep_last) !=
        ZINC_OK)
        die(w, "checkpoint save failed");
    if (zinc_comm_rank(w) == 0)
        ZINC_INFO("saved checkpoint %s/%s in %.2f s", c->train.save_dir, tag, now_s() - t);
    if (fault_at("ZINC_FAULT_KILL_SAVED", zinc_comm_rank(w), step)) raise(SIGKILL);
    return step;
}

/* comm_backend: "auto" lets the comm layer choose NCCL when every local rank
 * of every node has a GPU of its own (NCCL refuses two ranks on one GPU) and
 * MPI, which stages device buffers through pinned host memory, otherwise;
 * all ranks agree on it. CPU training always uses MPI. */
static const char *comm_backend_for(const zinc_config *c)
{
    if (c->comm_backend == ZINC_COMM_NCCL) return "nccl";
    if (c->comm_backend == ZINC_COMM_MPI || c->device == ZINC_DEVICE_CPU) return "mpi";
    return "auto";
}

static int threads_per_rank(const zinc_config *c, zinc_comm *w)
{
    if (c->train.threads > 0) return (int)c->train.threads;
    const char *e = getenv("OMP_NUM_THREADS");
    if (e && atoi(e) > 0) return atoi(e);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n = (int)(cores / zinc_comm_local_size(w));
    return n > 0 ? n : 1;
}

/* train.save_dir is usable before the first step, not at the first save
 * after hours of training. */
static zinc_status check_save_dir(const char *dir)
{
    if (!dir[0]) return ZINC_OK;
    zinc_status st = zinc_ckpt_prepare_dir(dir);
    return st == ZINC_OK ? st : zinc_error(st, "train.save_dir: %s", zinc_last_error());
}

/* data.train and data.valid entries ending in .jsonl (instruction data, zinc/data.h) become
 * the shards made from them once and cached (data.cache_dir, else beside each file), for
 * rows of the run's seq_len, rendered by data.chat_template, with the eos_token of the
 * tokenizer's tokenizer_config.json. Rank 0 makes a missing one first; a rank that does
 * not see it then (no shared filesystem) makes its own. Collective. */
static zinc_status prepare_jsonl(zinc_config *c, zinc_comm *w, const zinc_tokenizer *tok, char (*paths)[512], int n)
{
    const int rank = zinc_comm_rank(w);
    char eos[256] = "";
    const char *tokp = strcmp(c->data.tokenizer, "bytes") ? c->data.tokenizer : NULL;
    if (tokp) zinc_tokenizer_config_eos(tokp, eos, sizeof eos);
    zinc_jsonl_opts o = {.chat_template = c->data.chat_template, .block = (int)zinc_config_seq_len(c),
                         .eos = eos[0] ? eos : NULL};
    for (int i = 0; i < n; i++) {
        size_t len = strlen(paths[i]);
        if (len < 6 || strcmp(paths[i] + len - 6, ".jsonl")) continue;
        char out[512];
        int built = 0;
        zinc_jsonl_stats s;
        for (int phase = 0; phase < 2; phase++) {
            zinc_status st = ZINC_OK;
            if ((rank == 0) == (phase == 0)) {
                double t0 = now_s();
                zinc_progress bar; /* large inputs: a progress line on a terminal, rank 0's */
                zinc_progress_init(&bar, "[tokenizing]", rank == 0 && isatty(STDERR_FILENO), 30, 64u << 20);
                o.progress = zinc_progress_cb, o.progress_u = &bar;
                st = zinc_data_jsonl_cached(paths[i], c->data.cache_dir, tokp, tok, &o, out, sizeof out, &built, &s);
                if (st == ZINC_OK && built)
                    ZINC_INFO("data: %s -> %s in %.1f s: %llu samples, %llu tokens, %llu targets (%.1f%% of the tokens "
                              "take no loss), %llu padding tokens, %llu samples truncated to %d tokens%s%s",
                              paths[i], out, now_s() - t0, (unsigned long long)s.docs, (unsigned long long)s.written,
                              (unsigned long long)s.targets,
                              s.written ? 100.0 * (double)(s.written - s.targets) / (double)s.written : 0.0,
                              (unsigned long long)s.pad_tokens, (unsigned long long)s.truncated, o.block,
                              o.eos ? ", eos " : ", no eos token", o.eos ? o.eos : "");
                else if (st == ZINC_OK && rank == 0)
                    ZINC_INFO("data: %s: the cached shard %s", paths[i], out);
                if (st != ZINC_OK) zinc_progress_end(&bar);
            }
            st = agree(w, st);
            if (st != ZINC_OK) return st;
        }
        snprintf(paths[i], sizeof paths[i], "%s", out);
    }
    return ZINC_OK;
}

/* Rank 0 tokenizes data.text into a temporary shard; returns its path in buf. */
static zinc_status prepare_text(const zinc_config *c, zinc_comm *w, const zinc_tokenizer *tok, char *buf, size_t cap)
{
    zinc_status st = ZINC_OK;
    int64_t id = (int64_t)getpid();
    st = zinc_comm_broadcast(w, &id, 1, ZINC_DTYPE_I64, 0, NULL);
    if (st != ZINC_OK) return st;
    const char *tmp = getenv("TMPDIR");
    snprintf(buf, cap, "%s/zinc-text-%lld.bin", tmp && *tmp ? tmp : "/tmp", (long long)id);
    if (zinc_comm_rank(w) == 0) {
        const char *in[ZINC_MAX_PATHS];
        for (int i = 0; i < c->data.n_text; i++) in[i] = c->data.text[i];
        uint64_t n = 0;
        zinc_progress bar; /* large inputs: a progress line on a terminal */
        zinc_progress_init(&bar, "[tokenizing]", isatty(STDERR_FILENO), 30, 64u << 20);
        zinc_data_set_progress(zinc_progress_cb, &bar);
        st = zinc_data_write_shard_from_text(in, c->data.n_text, c->data.text_exts, tok, buf, &n);
        zinc_data_set_progress(NULL, NULL);
        zinc_progress_end(&bar);
        if (st == ZINC_OK)
            ZINC_INFO("data: tokenized the text into %llu tokens (%s) in %s", (unsigned long long)n,
                      c->data.tokenizer, buf);
    }
    return st;
}

/* data.tokenizer, loaded on every rank (the text's encoding and the real vocabulary):
 * NULL for "bytes"; one bigger than the model is refused. */
static zinc_status load_tokenizer(const zinc_config *c, zinc_tokenizer **out)
{
    *out = NULL;
    if (!strcmp(c->data.tokenizer, "bytes")) return ZINC_OK;
    zinc_status st = zinc_tokenizer_load(c->data.tokenizer, out); /* config.c checked it exists */
    if (st != ZINC_OK) return zinc_error(st, "data.tokenizer: %s", zinc_last_error());
    if (zinc_tokenizer_vocab_size(*out) > c->model.vocab_size)
        return zinc_error(ZINC_ERR_CONFIG, "data.tokenizer %s has %lld tokens, more than model.vocab_size %lld",
                          c->data.tokenizer, (long long)zinc_tokenizer_vocab_size(*out), (long long)c->model.vocab_size);
    return ZINC_OK;
}

/* The real vocabulary under a padded model.vocab_size: the model folder's config.json
 * vocab_size or the rows of the imported wte (model.init_from); without imported weights
 * the tokenizer's size (tok). The padded rows then take no part in the softmax. Every
 * rank reads the same files. */
static zinc_status vocab_real(const zinc_config *c, const zinc_tokenizer *tok, zinc_model *g, int rank)
{
    int64_t real = c->model.vocab_size;
    char cj[700];
    snprintf(cj, sizeof cj, "%s/config.json", c->model.init_from);
    json_error_t je;
    json_t *hf = c->model.init_from[0] ? json_load_file(cj, 0, &je) : NULL; /* a model folder */
    int weighed = hf != NULL; /* imported weights say how many rows they have: the tokenizer does not cut them */
    if (hf && json_is_integer(json_object_get(hf, "vocab_size")) &&
        json_integer_value(json_object_get(hf, "vocab_size")) < real)
        real = json_integer_value(json_object_get(hf, "vocab_size"));
    json_decref(hf);
    if (c->model.init_from[0] && !hf) {
        zinc_st_file *f = NULL;
        if (zinc_st_open(c->model.init_from, &f) == ZINC_OK) { /* errors: zinc_engine_init_from names them */
            long ti = zinc_st_find(f, zinc_model_embedding_name(g));
            if (ti < 0) ti = zinc_st_find(f, "transformer.wte.weight");
            /* rows init_from takes (it refuses the others, naming them) */
            const zinc_st_entry *w = ti >= 0 ? zinc_st_entry_at(f, (size_t)ti) : NULL;
            if (w && w->ndim == 2 && w->shape[0] < real && w->shape[0] >= (real < 256 ? real : 256))
                real = w->shape[0];
            weighed = w != NULL;
            zinc_st_close(f);
        }
    }
    if (tok && !weighed && zinc_tokenizer_vocab_size(tok) < real) real = zinc_tokenizer_vocab_size(tok);
    if (real < c->model.vocab_size && rank == 0)
        ZINC_INFO("model: %lld of model.vocab_size %lld rows are the real vocabulary; the padded rows take no part "
                  "in the softmax", (long long)real, (long long)c->model.vocab_size);
    return zinc_model_set_vocab_real(g, real);
}

/* train.resume: "" none; "auto" the latest checkpoint of train.save_dir if
 * there is one; a tag in save_dir; or a checkpoint directory path. */
static zinc_status resume(const zinc_config *c, zinc_engine *eng, zinc_aio *aio, zinc_comm *w)
{
    const char *r = c->train.resume;
    if (!r[0]) return ZINC_OK;
    char path[1100];
    struct stat sb;
    if (!strcmp(r, "auto")) {
        if (!c->train.save_dir[0])
            return zinc_error(ZINC_ERR_CONFIG, "train.resume \"auto\" needs train.save_dir");
        /* rank 0 decides, so every rank takes the same path */
        snprintf(path, sizeof path, "%s/latest", c->train.save_dir);
        int32_t have = zinc_comm_rank(w) == 0 ? stat(path, &sb) == 0 : 0;
        zinc_status st = zinc_comm_broadcast(w, &have, 1, ZINC_DTYPE_I32, 0, NULL);
        if (st != ZINC_OK) return st;
        if (!have) {
            if (zinc_engine_dp_rank(eng) == 0)
                ZINC_INFO("train.resume auto: no checkpoint in %s yet, starting fresh",
                          c->train.save_dir);
            return ZINC_OK;
        }
        return zinc_engine_load_checkpoint(eng, aio, c->train.save_dir, NULL);
    }
    snprintf(path, sizeof path, "%s/manifest.json", r);
    if (stat(path, &sb) == 0) { /* a checkpoint directory: save_dir/tag */
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", r);
        size_t n = strlen(dir);
        while (n > 1 && dir[n - 1] == '/') dir[--n] = '\0';
        char *slash = strrchr(dir, '/');
        if (!slash) return zinc_engine_load_checkpoint(eng, aio, ".", dir);
        *slash = '\0';
        return zinc_engine_load_checkpoint(eng, aio, dir[0] ? dir : "/", slash + 1);
    }
    if (!c->train.save_dir[0])
        return zinc_error(ZINC_ERR_CONFIG, "train.resume: %s is not a checkpoint directory (no "
                          "manifest.json) and train.save_dir is not set", r);
    snprintf(path, sizeof path, "%s/%s/manifest.json", c->train.save_dir, r);
    if (stat(path, &sb) != 0)
        return zinc_error(ZINC_ERR_CONFIG, "train.resume: no checkpoint \"%s\" (neither a "
                          "checkpoint directory nor a tag in train.save_dir %s)", r,
                          c->train.save_dir);
    return zinc_engine_load_checkpoint(eng, aio, c->train.save_dir, r);
}

/* What rank 0 writes each step to. */
typedef struct step_log {
    const zinc_config *cfg;
    zinc_engine *eng;
    zinc_comm *world;
    int64_t every;       /* the step line every this many steps */
    FILE *metrics;       /* train.metrics_file or NULL */
    zinc_monitor *mon;   /* tensorboard / csv_monitor or NULL */
    double t_start;      /* when first_step began */
    int64_t first_step;
    double peak_tflops;  /* every rank's device together (0 unknown): MFU = model TFLOP/s / this */
} step_log;

/* "1h02m", "3m12s", "12s" */
static void fmt_eta(double s, char *buf, size_t cap)
{
    long long t = (long long)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%lldh%02lldm", t / 3600, t / 60 % 60);
    else if (t >= 60) snprintf(buf, cap, "%lldm%02llds", t / 60, t % 60);
    else snprintf(buf, cap, "%llds", t);
}

/* Rank 0: the step line on stdout (every `every` steps, the first and the last
 * and each with a validation loss), the step's line of train.metrics_file and its
 * scalars to the monitors (written out every step, as DeepSpeed's monitors do). */
static void log_step(const step_log *L, int64_t step, const zinc_step_stats *s, double vloss)
{
    const zinc_config *cfg = L->cfg;
    zinc_engine *eng = L->eng;
    zinc_comm *world = L->world;
    FILE *metrics = L->metrics;
    const int64_t every = L->every;
    /* FLOP/s for people: GFLOP/s below one TFLOP/s (CPUs), MFU when the peak is known,
     * the time left to max_steps at the mean step time so far */
    char rate[64], eta[48] = "";
    if (s->model_tflops >= 1.0) snprintf(rate, sizeof rate, "%.1f TFLOP/s", s->model_tflops);
    else snprintf(rate, sizeof rate, "%.1f GFLOP/s", s->model_tflops * 1e3);
    if (L->peak_tflops > 0) {
        size_t n = strlen(rate);
        snprintf(rate + n, sizeof rate - n, " (MFU %.1f%%)", 100.0 * s->model_tflops / L->peak_tflops);
    }
    if (step < cfg->train.max_steps) {
        char t[32];
        double per = (now_s() - L->t_start) / (double)(step - L->first_step + 1);
        fmt_eta(per * (double)(cfg->train.max_steps - step), t, sizeof t);
        snprintf(eta, sizeof eta, " | ETA %s", t);
    }
    char nvme_note[96] = "";
    if (s->mem_max.frozen) /* model.freeze: trainable and frozen apart */
        snprintf(nvme_note, sizeof nvme_note, " (%.1f trainable + %.1f frozen)",
                 (s->model_state_bytes_max - s->mem_max.frozen) / 1048576.0, s->mem_max.frozen / 1048576.0);
    if (s->mem_max.nvme) {
        size_t n = strlen(nvme_note);
        snprintf(nvme_note + n, sizeof nvme_note - n, " (%.1f MiB on nvme)", s->mem_max.nvme / 1048576.0);
    }
    char tp_comm[192] = ""; /* DP bytes first, then the TP group's, then the pipeline's */
    if (zinc_engine_tp_size(eng) > 1)
        snprintf(tp_comm, sizeof tp_comm, " + tp %.2f MiB", s->tp_comm_bytes / 1048576.0);
    if (zinc_engine_pp_size(eng) > 1) {
        size_t n = strlen(tp_comm);
        snprintf(tp_comm + n, sizeof tp_comm - n, " + pp %.2f MiB | bubble %.2f (theory %.2f)",
                 s->pp_comm_bytes / 1048576.0, s->pp_bubble, s->pp_bubble_theory);
    }
    char eval_note[64] = "";
    if (!isnan(vloss))
        snprintf(eval_note, sizeof eval_note, " | eval %.4f (ppl %.2f)", vloss, exp(vloss));
    {
        size_t n = strlen(tp_comm);
        snprintf(tp_comm + n, sizeof tp_comm - n, "%s", eval_note);
    }
    const int shown = step % every == 0 || step == 1 || step == cfg->train.max_steps || !isnan(vloss);
    if (shown)
        printf("step %5lld/%lld | loss %.4f | lr %.3e | norm %7.4f | %8.0f tok/s | %8.1f ms | "
               "%s | state %.1f MiB/rank%s | %s mem %.2f GiB | comm %.2f MiB%s%s%s\n",
               (long long)step, (long long)cfg->train.max_steps, s->loss, s->lr, s->grad_norm,
               s->tokens_per_s, s->step_ms, rate, s->model_state_bytes_max / 1048576.0,
               nvme_note, zinc_engine_device(eng)->name, s->dev_mem_peak / 1073741824.0,
               s->comm_bytes / 1048576.0, tp_comm, s->skipped ? (cfg->fp16.enabled ? " | skipped (fp16 overflow)" : " | skipped (not finite)") : "", eta);
    fflush(stdout);
    if (zinc_monitor_step(L->mon, cfg, s, vloss, L->peak_tflops, zinc_engine_tp_size(eng), zinc_engine_pp_size(eng)) !=
            ZINC_OK ||
        zinc_monitor_flush(L->mon) != ZINC_OK)
        die(world, "monitor");
    if (metrics) {
        const zinc_mem_stats *m = &s->mem_max;
        char norm_json[32] = "null"; /* JSON has no NaN/inf: an fp16 overflow logs null */
        if (isfinite(s->grad_norm)) snprintf(norm_json, sizeof norm_json, "%.9g", s->grad_norm);
        fprintf(metrics,
                "{\"step\": %lld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %s, "
                "\"tokens_per_s\": %.3f, \"step_ms\": %.3f, \"model_state_bytes\": %llu, "
                "\"comm_bytes\": %llu, \"samples\": %lld, \"loss_scale\": %.9g, \"skipped\": %d, "
                "\"device\": \"%s\", \"device_mem_peak\": %llu, \"model_tflops\": %.3f, "
                "\"mem\": {\"params\": %llu, \"grads\": %llu, \"master\": %llu, "
                "\"optimizer\": %llu, \"buffers\": %llu, \"nvme\": %llu}, \"comm\": {",
                (long long)s->step, s->loss, s->lr, norm_json, s->tokens_per_s, s->step_ms,
                (unsigned long long)s->model_state_bytes_max, (unsigned long long)s->comm_bytes,
                (long long)s->samples_seen, s->loss_scale, s->skipped, zinc_engine_device(eng)->name,
                (unsigned long long)s->dev_mem_peak, s->model_tflops,
                (unsigned long long)m->params, (unsigned long long)m->grads,
                (unsigned long long)m->master, (unsigned long long)m->optimizer,
                (unsigned long long)m->buffers, (unsigned long long)m->nvme);
        for (int k = 0; k < ZINC_COMM_N_OPS; k++)
            fprintf(metrics, "%s\"%s\": %llu", k ? ", " : "", zinc_comm_op_name(k),
                    (unsigned long long)s->comm_bytes_op[k]);
        fprintf(metrics, "}, \"tp_comm_bytes\": %llu, \"tp_comm\": {",
                (unsigned long long)s->tp_comm_bytes);
        for (int k = 0; k < ZINC_COMM_N_OPS; k++)
            fprintf(metrics, "%s\"%s\": %llu", k ? ", " : "", zinc_comm_op_name(k),
                    (unsigned long long)s->tp_comm_bytes_op[k]);
        fprintf(metrics, "}, \"pp_comm_bytes\": %llu, \"pp_bubble\": %.6f, \"pp_bubble_theory\": %.6f, "
                "\"act_peak_bytes\": %llu, \"storage_read_bytes\": %llu, \"storage_write_bytes\": %llu, "
                "\"act_peak_stage\": [", (unsigned long long)s->pp_comm_bytes,
                s->pp_bubble, s->pp_bubble_theory, (unsigned long long)s->act_peak_bytes,
                (unsigned long long)s->storage_read_bytes, (unsigned long long)s->storage_write_bytes);
        for (int k = 0; k < zinc_engine_pp_size(eng) && k < 64; k++)
            fprintf(metrics, "%s%llu", k ? ", " : "",
                    (unsigned long long)(zinc_engine_pp_size(eng) > 1 ? s->act_peak_stage[k] : s->act_peak_bytes));
        fprintf(metrics, "]");
        if (!isnan(vloss)) fprintf(metrics, ", \"eval_loss\": %.9g, \"eval_ppl\": %.9g", vloss, exp(vloss));
        fprintf(metrics, "}\n");
        if (fflush(metrics) != 0) {
            zinc_error(ZINC_ERR_IO, "train.metrics_file %s: write failed", cfg->train.metrics_file);
            die(world, "metrics");
        }
    }
}

int main(int argc, char **argv)
{
    const char *cfg_path = NULL, *overrides[MAX_OVERRIDES];
    int n_over = 0, check = 0, estimate = 0, est_n = 1, eval_loss = 0, list_keys = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--set") && i + 1 < argc) {
            if (n_over == MAX_OVERRIDES) { fprintf(stderr, "zinc-train: too many --set\n"); return 2; }
            overrides[n_over++] = argv[++i];
        } else if (!strncmp(argv[i], "--set=", 6)) {
            if (n_over == MAX_OVERRIDES) { fprintf(stderr, "zinc-train: too many --set\n"); return 2; }
            overrides[n_over++] = argv[i] + 6;
        } else if (!strcmp(argv[i], "--check")) {
            check = 1;
        } else if (!strcmp(argv[i], "--list-keys")) {
            list_keys = 1;
        } else if (!strcmp(argv[i], "--eval-loss")) {
            eval_loss = 1;
        } else if (!strcmp(argv[i], "--estimate-memory")) {
            estimate = 1;
        } else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 1000000) {
                fprintf(stderr, "zinc-train: -n: expected a rank count >= 1, found '%s'\n", argv[i]);
                return 2;
            }
            est_n = (int)v;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-' || cfg_path) {
            fprintf(stderr, "zinc-train: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else {
            cfg_path = argv[i];
        }
    }
    if (list_keys) { /* the table alone: no config needed */
        if (zinc_config_list_keys(stdout) == ZINC_OK) return 0;
        fprintf(stderr, "zinc-train: %s\n", zinc_last_error());
        return 1;
    }
    if (!cfg_path) {
        usage(stderr);
        return 2;
    }

    /* every rank loads the config; only the first one shows its warnings */
    const char *wr = getenv("OMPI_COMM_WORLD_RANK");
    zinc_log_level lvl = zinc_log_get_level();
    if (wr && atoi(wr) > 0) zinc_log_set_level(ZINC_LOG_ERROR);
    zinc_config cfg;
    char *effects = NULL; /* --check: what each key given does */
    zinc_status st = zinc_config_load_effects(cfg_path, overrides, n_over, &cfg, check ? &effects : NULL);
    zinc_log_set_level(lvl);
    if (st == ZINC_OK && cfg.model.from_pretrained[0]) st = zinc_model_pretrained_config(&cfg);
    if (st != ZINC_OK) {
        fprintf(stderr, "zinc-train: %s\n", zinc_last_error());
        return 2;
    }
    if (estimate) return estimate_memory(&cfg, est_n);
    if (check) {
        const char *ws = getenv("OMPI_COMM_WORLD_SIZE");
        int dp = ws && atoi(ws) > 0 ? atoi(ws) : 1;
        if (zinc_config_resolve(&cfg, dp) != ZINC_OK) {
            fprintf(stderr, "zinc-train: %s\n", zinc_last_error());
            return 2;
        }
        char *s = zinc_config_dump(&cfg);
        if (!s) return 1;
        printf("%s\n", s); /* stdout stays the resolved config, loadable as is */
        free(s);
        fprintf(stderr, "keys given and their effect:\n");
        for (char *line = effects, *nl; line && *line; line = nl + 1) {
            nl = strchr(line, '\n');
            if (!nl) break;
            fprintf(stderr, "  %.*s\n", (int)(nl - line), line);
        }
        free(effects);
        return 0;
    }

    zinc_comm *world = NULL;
    const char *backend = comm_backend_for(&cfg);
    if (zinc_comm_init_world(backend, &argc, &argv, &world) != ZINC_OK) {
        fprintf(stderr, "zinc-train: %s\n", zinc_last_error());
        return 1;
    }
    int rank = zinc_comm_rank(world), size = zinc_comm_size(world);
    if (size > 1) zinc_log_set_rank(rank);
    /* ZINC_COMM_TIMEOUT_S (read by the comm layer) wins over comm_timeout_s */
    if (!getenv("ZINC_COMM_TIMEOUT_S")) zinc_comm_set_timeout(world, cfg.comm_timeout_s);
    stop_handlers_install();
    restart_resume(&cfg, rank);

    zinc_model *gpt = NULL;
    zinc_engine *eng = NULL;
    zinc_data *data = NULL, *vdata = NULL;
    zinc_tokenizer *tok = NULL;
    int eval_nb = 0; /* global batches of data.valid per evaluation */
    FILE *metrics = NULL;
    zinc_monitor *mon = NULL;
    zinc_aio *aio = NULL;
    char text_shard[600] = "";
    int rc = 0;

    st = agree(world, zinc_config_resolve(&cfg, size));
    if (st != ZINC_OK) { rc = 2; goto done; }
    st = agree(world, check_save_dir(cfg.train.save_dir));
    if (st != ZINC_OK) { rc = 2; goto done; }
    int nt = threads_per_rank(&cfg, world);
    omp_set_num_threads(nt);
    openblas_set_num_threads(nt);

    st = agree(world, load_tokenizer(&cfg, &tok));
    if (st != ZINC_OK) { rc = exit_code(st); goto done; }
    if (prepare_jsonl(&cfg, world, tok, cfg.data.train, cfg.data.n_train) != ZINC_OK ||
        prepare_jsonl(&cfg, world, tok, cfg.data.valid, cfg.data.n_valid) != ZINC_OK) {
        rc = 2;
        goto done;
    }
    if (cfg.data.n_text > 0) {
        st = agree(world, prepare_text(&cfg, world, tok, text_shard, sizeof text_shard));
        if (st != ZINC_OK) { rc = 2; goto done; }
    }
    {
        const char *paths[ZINC_MAX_PATHS];
        int n = 0;
        if (text_shard[0]) paths[n++] = text_shard;
        else for (; n < cfg.data.n_train; n++) paths[n] = cfg.data.train[n];
        int T = (int)zinc_config_seq_len(&cfg);
        st = agree(world, zinc_data_open(paths, n, T, (int)cfg.model.vocab_size,
                                         (uint64_t)cfg.data.seed, &data));
        if (text_shard[0] && rank == 0) unlink(text_shard); /* open files stay readable */
        if (st != ZINC_OK) { rc = exit_code(st); goto done; }
    }
    if (cfg.data.n_valid > 0) { /* held-out shards for the validation loss */
        const char *paths[ZINC_MAX_PATHS];
        for (int k = 0; k < cfg.data.n_valid; k++) paths[k] = cfg.data.valid[k];
        st = zinc_data_open(paths, cfg.data.n_valid, (int)zinc_config_seq_len(&cfg), (int)cfg.model.vocab_size,
                            (uint64_t)cfg.data.seed, &vdata);
        if (st != ZINC_OK) st = zinc_error(st, "data.valid: %s", zinc_last_error());
        if (st == ZINC_OK) {
            const uint64_t nb = zinc_data_n_samples(vdata) / (uint64_t)cfg.train_batch_size;
            eval_nb = nb < (uint64_t)cfg.train.eval_batches ? (int)nb : (int)cfg.train.eval_batches;
            if (eval_nb == 0)
                st = zinc_error(ZINC_ERR_CONFIG, "data.valid: %llu samples of %lld tokens, fewer than one global batch of "
                                "%lld; give more held-out data or a smaller train_batch_size",
                                (unsigned long long)zinc_data_n_samples(vdata), (long long)zinc_config_seq_len(&cfg),
                                (long long)cfg.train_batch_size);
        }
        st = agree(world, st);
        if (st != ZINC_OK) { rc = exit_code(st); goto done; }
    }
    st = agree(world, zinc_model_create(&cfg, &gpt));
    if (st != ZINC_OK) { rc = exit_code(st); goto done; }
    st = agree(world, vocab_real(&cfg, tok, gpt, rank));
    if (st != ZINC_OK) { rc = exit_code(st); goto done; }
    /* one aio engine for the process: checkpoints and the engine's swap files */
    if (cfg.train.save_dir[0] || cfg.train.resume[0] ||
        cfg.zero.offload_optimizer.device == ZINC_OFFLOAD_NVME ||
        cfg.zero.offload_param.device == ZINC_OFFLOAD_NVME) {
        st = agree(world, zinc_engine_aio_create(&cfg, &aio));
        if (st != ZINC_OK) { rc = 1; goto done; }
    }
    zinc_engine_opts eo = {.config = &cfg, .world = world, .model = zinc_model_def_of(gpt), .aio = aio};
    st = agree(world, zinc_engine_create(&eo, &eng));
    if (st != ZINC_OK) { rc = exit_code(st); goto done; }
    /* rank 0 on a terminal: "[checkpoint] 45% 1.2/2.7 GiB 1.3 GB/s" while big checkpoints
     * or model.init_from weights load or save (its own bytes; the ranks move theirs in parallel) */
    if (rank == 0 && isatty(STDERR_FILENO)) {
        zinc_progress_init(&ckpt_bar, "[checkpoint]", 1, 0, CKPT_BAR_MIN_BYTES);
        zinc_ckpt_set_progress(zinc_progress_cb, &ckpt_bar);
    }
    if (cfg.model.init_from[0]) {
        st = agree(world, zinc_engine_init_from(eng, cfg.model.init_from));
        if (st != ZINC_OK) { rc = exit_code(st); goto done; }
    }
    st = agree(world, resume(&cfg, eng, aio, world));
    if (st != ZINC_OK) { rc = exit_code(st); goto done; }
    if (eval_loss) {
        double l;
        if (zinc_engine_eval(eng, data, 0, 1, &l) != ZINC_OK) die(world, "evaluation failed");
        if (rank == 0) printf("eval loss %.9g\n", l);
        goto done;
    }
    int appending = zinc_engine_step(eng) > 0;
    if (rank == 0 && cfg.train.metrics_file[0]) {
        if (appending && metrics_truncate(cfg.train.metrics_file, zinc_engine_step(eng)) != ZINC_OK)
            ZINC_WARN("%s", zinc_last_error());
        metrics = fopen(cfg.train.metrics_file, appending ? "a" : "w");
        if (!metrics) zinc_error(ZINC_ERR_IO, "train.metrics_file: cannot open %s for writing",
                                 cfg.train.metrics_file);
    }
    st = agree(world, rank == 0 && cfg.train.metrics_file[0] && !metrics ? ZINC_ERR_IO : ZINC_OK);
    if (st != ZINC_OK) { rc = 2; goto done; }
    /* tensorboard / csv_monitor: a resumed run continues after its checkpoint's samples */
    st = agree(world, rank == 0 ? zinc_monitor_open(&cfg, appending ? zinc_engine_samples(eng) : -1, &mon) : ZINC_OK);
    if (st != ZINC_OK) { rc = 2; goto done; }
    if (rank == 0 && mon && cfg.tensorboard.enabled) ZINC_INFO("tensorboard: %s", zinc_monitor_tb_path(mon));

    int64_t every = cfg.train.log_every > 0 ? cfg.train.log_every : cfg.steps_per_print;
    if (every < 1) every = 1;
    char tp_note[128] = "";
    if (zinc_engine_tp_size(eng) > 1)
        snprintf(tp_note, sizeof tp_note, " | tp %d%s", zinc_engine_tp_size(eng),
                 cfg.tp.sequence_parallel ? " (sequence parallel)" : "");
    if (zinc_engine_pp_size(eng) > 1) {
        size_t n = strlen(tp_note);
        snprintf(tp_note + n, sizeof tp_note - n, " | pp %d %s", zinc_engine_pp_size(eng),
                 zinc_pp_kind_name((zinc_pp_kind)cfg.pp.schedule));
        n = strlen(tp_note);
        if (cfg.pp.virtual_stages > 1)
            snprintf(tp_note + n, sizeof tp_note - n, " x %lld chunks", (long long)cfg.pp.virtual_stages);
    }
    if (rank == 0)
        ZINC_INFO("%s L=%lld C=%lld heads=%lld vocab=%lld T=%lld: %.2fM params | %d ranks x %d threads on %s | "
                  "batch %lld = micro %lld x accum %lld x dp %d%s | %llu samples of data",
                  cfg.model.type, (long long)cfg.model.n_layer, (long long)cfg.model.n_embd, (long long)cfg.model.n_head,
                  (long long)cfg.model.vocab_size, (long long)zinc_config_seq_len(&cfg),
                  zinc_engine_n_params(eng) / 1e6, size, nt, zinc_engine_device(eng)->name,
                  (long long)cfg.train_batch_size,
                  (long long)cfg.train_micro_batch_size_per_gpu, (long long)cfg.gradient_accumulation_steps,
                  zinc_engine_dp_size(eng), tp_note, (unsigned long long)zinc_data_n_samples(data));
    if (rank == 0) ZINC_INFO("blas: %s", zinc_blas_summary());

    /* the device peak for the MFU: train.peak_tflops, else measured once where the device
     * can (GPUs; the slowest rank's, as the step waits for it) */
    double peak = cfg.train.peak_tflops;
    if (peak == 0 && zinc_engine_device(eng)->peak_tflops) {
        double p = zinc_engine_device(eng)->peak_tflops();
        char why[256];
        snprintf(why, sizeof why, "%s", p > 0 ? "" : zinc_last_error());
        int64_t mt = (int64_t)(p * 1000.0); /* milli-TFLOP/s, reduced as integers */
        if (size > 1 && zinc_comm_all_reduce(world, &mt, &mt, 1, ZINC_DTYPE_I64, ZINC_REDOP_MIN, NULL) != ZINC_OK) {
            snprintf(why, sizeof why, "%s", zinc_last_error());
            mt = 0;
        }
        peak = mt / 1000.0;
        if (rank == 0) {
            if (peak > 0) ZINC_INFO("device peak %.1f TFLOP/s (bf16 products, measured; train.peak_tflops sets it)", peak);
            else ZINC_WARN("device peak not measured (%s): no MFU; train.peak_tflops sets it",
                           why[0] ? why : "on another rank");
        }
    }
    double t_start = now_s(), tok_s_sum = 0.0, first_loss = 0.0, last_loss = 0.0;
    int64_t n_tok_s = 0;
    int64_t first_step = zinc_engine_step(eng) + 1;
    int64_t last_saved = appending ? first_step - 1 : -1; /* a resumed step is saved */
    const step_log slog = {.cfg = &cfg, .eng = eng, .world = world, .every = every, .metrics = metrics, .mon = mon,
                           .t_start = t_start, .first_step = first_step,
                           .peak_tflops = peak * size}; /* model_tflops is over all ranks */
    for (int64_t step = first_step; step <= cfg.train.max_steps; step++) {
        int sig = stop_agreed(world);
        if (sig) { /* stop before this step; step - 1 is the last one done */
            int64_t done_step = step - 1;
            char tag[64];
            snprintf(tag, sizeof tag, "global_step%lld", (long long)done_step);
            if (cfg.train.save_dir[0] && last_saved != done_step && done_step > 0)
                last_saved = save_step(&cfg, eng, aio, world, done_step, tag);
            if (rank == 0) {
                if (last_saved == done_step)
                    fprintf(stderr, "zinc-train: stopped by %s after step %lld; checkpoint %s/%s "
                                    "(resume with train.resume \"auto\")\n",
                            signal_name(sig), (long long)done_step, cfg.train.save_dir, tag);
                else
                    fprintf(stderr, "zinc-train: stopped by %s after step %lld; no checkpoint "
                                    "saved (%s)\n",
                            signal_name(sig), (long long)done_step,
                            cfg.train.save_dir[0] ? "no step done" : "train.save_dir is not set");
            }
            rc = 128 + sig;
            goto done;
        }
        maybe_fault(rank, step);
        zinc_step_stats s;
        if (zinc_engine_train_batch(eng, data, &s) != ZINC_OK) die(world, "training step failed");
        if (step == first_step) first_loss = s.loss;
        last_loss = s.loss;
        if (step > first_step || cfg.train.max_steps == first_step) { tok_s_sum += s.tokens_per_s; n_tok_s++; }
        /* the validation loss: every eval_every steps and at the end (collective) */
        double vloss = NAN;
        if (vdata && (step == cfg.train.max_steps || (cfg.train.eval_every > 0 && step % cfg.train.eval_every == 0)))
            if (zinc_engine_eval(eng, vdata, 0, eval_nb, &vloss) != ZINC_OK) die(world, "validation loss failed");
        /* the step's lines go out before its checkpoint: a rank lost after the save
         * must not leave a checkpointed step missing from the metrics file */
        if (rank == 0) log_step(&slog, step, &s, vloss);
        /* save every save_every steps and at the end (only at the end when save_every is 0) */
        if (cfg.train.save_dir[0] &&
            ((cfg.train.save_every > 0 && step % cfg.train.save_every == 0) ||
             step == cfg.train.max_steps)) {
            char tag[64];
            snprintf(tag, sizeof tag, "global_step%lld", (long long)step);
            last_saved = save_step(&cfg, eng, aio, world, step, tag);
        }
    }
    /* peak resident memory (largest rank) and storage I/O (all ranks) */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    int64_t mx = (int64_t)ru.ru_maxrss * 1024, io[2] = {0, 0};
    FILE *pio = fopen("/proc/self/io", "r");
    if (pio) {
        char k[64];
        long long v;
        while (fscanf(pio, "%63[^:]: %lld\n", k, &v) == 2) {
            if (!strcmp(k, "read_bytes")) io[0] = v;
            if (!strcmp(k, "write_bytes")) io[1] = v;
        }
        fclose(pio);
    }
    if (size > 1) {
        zinc_comm_all_reduce(world, &mx, &mx, 1, ZINC_DTYPE_I64, ZINC_REDOP_MAX, NULL);
        zinc_comm_all_reduce(world, io, io, 2, ZINC_DTYPE_I64, ZINC_REDOP_SUM, NULL);
    }
    if (rank == 0 && cfg.train.max_steps >= first_step)
        printf("done: %lld steps in %.1f s | loss %.4f -> %.4f | mean %.0f tok/s | peak RSS %.0f "
               "MiB/rank | storage I/O %.2f GiB read, %.2f GiB written\n",
               (long long)(cfg.train.max_steps - first_step + 1), now_s() - t_start, first_loss,
               last_loss, n_tok_s ? tok_s_sum / n_tok_s : 0.0, mx / 1048576.0,
               io[0] / 1073741824.0, io[1] / 1073741824.0);

done:
    zinc_ckpt_set_progress(NULL, NULL);
    if (metrics) fclose(metrics);
    zinc_monitor_close(mon);
    zinc_engine_destroy(eng); /* before the aio engine its swap files use */
    zinc_aio_destroy(aio);
    zinc_model_destroy(gpt);
    zinc_data_close(data);
    zinc_data_close(vdata);
    zinc_tokenizer_free(tok);
    zinc_comm_destroy(world);
    return rc;
}
