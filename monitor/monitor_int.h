/* monitor_int.h - the two writers behind zinc/monitor.h (private to monitor/). */
#ifndef ZINC_MONITOR_INT_H
#define ZINC_MONITOR_INT_H

#include <stdint.h>

#include "zinc/status.h"

/* returns a failing zinc_status expression from the function */
#define MON_TRY(expr)                                                         \
    do {                                                                      \
        zinc_status mon_st_ = (expr);                                         \
        if (mon_st_ != ZINC_OK) return mon_st_;                               \
    } while (0)

/* TensorBoard event file (tensorboard.c) */
typedef struct tb_writer tb_writer;
/* Creates dir and a new event file in it holding the file_version record (and, when
 * purge_step >= 0, a SessionLog START at purge_step). what names the config section. */
zinc_status tb_open(const char *dir, const char *what, int64_t purge_step, tb_writer **out);
zinc_status tb_scalar(tb_writer *w, const char *tag, float value, int64_t step, double wall_time);
zinc_status tb_flush(tb_writer *w);
const char *tb_path(const tb_writer *w);
void tb_close(tb_writer *w);
void tb_discard(tb_writer *w); /* closes and removes the file: an open that failed later */

/* csv_monitor files (csv.c) */
typedef struct csv_writer csv_writer;
/* dir is created; resume_step < 0: files are truncated when first written, else their rows
 * past resume_step are dropped. */
zinc_status csv_open(const char *dir, const char *what, int64_t resume_step, csv_writer **out);
zinc_status csv_scalar(csv_writer *w, const char *tag, double value, int64_t step);
zinc_status csv_flush(csv_writer *w);
void csv_close(csv_writer *w);

#endif
