/* zinc/progress.h - a one-line progress bar on stderr for the command-line tools:
 *
 *   \r<label> [#########.....................]  30% 1.2/4.0 GiB 1.3 GB/s
 *
 * (the [bar] only with a nonzero width; sizes in MiB below 1 GiB of total). Redrawn at most
 * every 0.1 s, always at 100%, where the line is ended with a newline. Not thread-safe.
 */
#ifndef ZINC_PROGRESS_H
#define ZINC_PROGRESS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zinc_progress {
    const char *label;  /* borrowed; "verify", "[checkpoint]" */
    int on;             /* 0: never draws (not a terminal) */
    int width;          /* characters of the [###...] bar; 0 for none */
    uint64_t min_total; /* operations smaller than this are not drawn */
    double t0, last;    /* start of the operation, last draw (seconds, monotonic) */
    int drawn;          /* a line is on the screen and not yet ended */
    int len;            /* characters of the line drawn last (to blank a shorter one) */
} zinc_progress;

/* Sets p up; label is borrowed. Draw only when on (e.g. isatty(STDERR_FILENO)). */
void zinc_progress_init(zinc_progress *p, const char *label, int on, int width, uint64_t min_total);

/* Reports done of total bytes. done == 0 starts a new operation (its rate restarts);
 * done == total draws the final line and ends it with a newline. */
void zinc_progress_update(zinc_progress *p, uint64_t done, uint64_t total);

/* Ends a line left unfinished (an operation that failed midway). */
void zinc_progress_end(zinc_progress *p);

/* zinc_progress_update with the signature of zinc_ckpt_progress_fn (u is the zinc_progress). */
void zinc_progress_cb(uint64_t done, uint64_t total, void *u);

#ifdef __cplusplus
}
#endif

#endif
