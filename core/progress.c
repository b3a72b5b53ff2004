/* progress.c - the tools' one-line progress bar (zinc/progress.h). Writes to stderr with
 * \r and pads a line shorter than the one before it with spaces, so no terminal control
 * sequences are needed. */
#include <stdio.h>
#include <string.h>
#include "zinc/clock.h"
#include "zinc/progress.h"

#define PROGRESS_BAR_MAX 60

static double now_s(void) { return zinc_now_ms() / 1e3; }

void zinc_progress_init(zinc_progress *p, const char *label, int on, int width, uint64_t min_total)
{
    memset(p, 0, sizeof *p);
    p->label = label ? label : "";
    p->on = on;
    p->width = width < 0 ? 0 : width > PROGRESS_BAR_MAX ? PROGRESS_BAR_MAX : width;
    p->min_total = min_total;
    p->t0 = now_s();
}

void zinc_progress_update(zinc_progress *p, uint64_t done, uint64_t total)
{
    if (!p->on) return;
    double t = now_s();
    if (done == 0) { /* a new operation */
        zinc_progress_end(p);
        p->t0 = t;
        p->last = 0.0;
    }
    if (total < p->min_total || total == 0) return;
    if (done > total) done = total;
    if (done < total && t - p->last < 0.1) return;
    p->last = t;

    char line[256], bar[PROGRESS_BAR_MAX + 4] = "";
    if (p->width > 0) {
        int k = (int)((double)p->width * (double)done / (double)total);
        bar[0] = ' ';
        bar[1] = '[';
        for (int i = 0; i < p->width; i++) bar[2 + i] = i < k ? '#' : '.';
        bar[2 + p->width] = ']';
        bar[3 + p->width] = '\0';
    }
    int gib = total >= (1ull << 30);
    double unit = gib ? 1073741824.0 : 1048576.0, dt = t - p->t0;
    int n = snprintf(line, sizeof line, "%s%s %3d%% %.*f/%.*f %s", p->label, bar,
                     (int)(100.0 * (double)done / (double)total), gib ? 1 : 0, (double)done / unit, gib ? 1 : 0,
                     (double)total / unit, gib ? "GiB" : "MiB");
    if (dt > 0.0 && done > 0 && n > 0 && (size_t)n < sizeof line)
        n += snprintf(line + n, sizeof line - (size_t)n, " %.1f GB/s", (double)done / dt / 1e9);
    if (n < 0) return;
    if ((size_t)n >= sizeof line) n = (int)sizeof line - 1;
    fprintf(stderr, "\r%s%*s", line, p->len > n ? p->len - n : 0, "");
    p->len = n;
    p->drawn = 1;
    if (done == total) zinc_progress_end(p);
    else fflush(stderr);
}

void zinc_progress_end(zinc_progress *p)
{
    if (p->drawn) {
        fputc('\n', stderr);
        fflush(stderr);
    }
    p->drawn = 0;
    p->len = 0;
}

void zinc_progress_cb(uint64_t done, uint64_t total, void *u)
{
    zinc_progress_update(u, done, total);
}
