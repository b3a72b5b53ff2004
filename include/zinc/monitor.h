/* zinc/monitor.h - DeepSpeed's monitors: TensorBoard event files and csv_monitor files.
 *
 * The config's `tensorboard` and `csv_monitor` sections ({enabled, output_path, job_name},
 * DeepSpeed's keys and defaults) each name a folder OUTPUT_PATH/JOB_NAME (JOB_NAME alone,
 * relative to the working directory, when output_path is ""). zinc-train's rank 0 writes
 * one scalar per tag per step there, the step being the global sample count as DeepSpeed's
 * `Train/Samples/...` tags use it. Nothing here communicates; the caller picks the rank.
 *
 * TensorBoard: one file events.out.tfevents.<unix time>.<host>.<pid>.0 per run, TFRecord
 * framing (u64 length, masked crc32c of the length, the record, masked crc32c of it) around
 * Event protobufs encoded here (no protobuf library): the first holds file_version
 * "brain.Event:2", each scalar is an Event {wall_time, step, summary {value {tag,
 * simple_value}}}. A resumed run's file opens with a SessionLog START at the resumed step,
 * which makes TensorBoard drop the earlier files' events past it (the steps the checkpoint
 * does not hold). Records are buffered and written out whole at each zinc_monitor_flush
 * (zinc-train's: every step), so a reader sees whole records while training runs.
 *
 * CSV: one file per tag, TAG with '/' and ' ' replaced by '_' + ".csv", header "step,NAME"
 * (NAME: the tag's last '/' component) and one "step,value" row per write, as DeepSpeed's
 * csv_monitor writes them. A fresh run truncates the files it writes; a resumed run keeps the
 * rows up to the resumed step and appends after them.
 */
#ifndef ZINC_MONITOR_H
#define ZINC_MONITOR_H

#include <stdint.h>

#include "zinc/config.h"
#include "zinc/engine.h"
#include "zinc/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zinc_monitor zinc_monitor;

/* Opens the monitors cfg enables (*out NULL when none is). resume_step: -1 for a fresh
 * run, else the step (sample count) a resumed run continues after. ZINC_ERR_IO naming the
 * folder or file (and its config key) when it cannot be made. */
zinc_status zinc_monitor_open(const zinc_config *cfg, int64_t resume_step, zinc_monitor **out);

/* One scalar of tag at step. Buffered; errors (a full disk) come back from here or from
 * the next flush, naming the file. m may be NULL (no monitor: nothing to do). */
zinc_status zinc_monitor_scalar(zinc_monitor *m, const char *tag, double value, int64_t step);

/* A training step's scalars at step s->samples_seen: DeepSpeed's Train/Samples/train_loss,
 * Train/Samples/lr and (fp16) Train/Samples/loss_scale, and zinc's under the same prefix:
 * grad_norm (when finite), tokens_per_s, step_ms, tflops, mfu (peak_tflops > 0), eval_loss
 * (vloss not NaN), model_state_bytes, device_mem_peak_bytes, act_peak_bytes, comm_bytes,
 * tp_comm_bytes (tp > 1), pp_comm_bytes and pp_bubble (pp > 1). */
zinc_status zinc_monitor_step(zinc_monitor *m, const zinc_config *cfg, const zinc_step_stats *s, double vloss,
                              double peak_tflops, int tp, int pp);

/* Writes out what is buffered (whole records). m may be NULL. */
zinc_status zinc_monitor_flush(zinc_monitor *m);

/* Flushes and closes; m may be NULL. */
void zinc_monitor_close(zinc_monitor *m);

/* The file zinc_monitor_open made for TensorBoard ("" when disabled). */
const char *zinc_monitor_tb_path(const zinc_monitor *m);

#ifdef __cplusplus
}
#endif

#endif
