/* ops_profile.c - the op profiler (ZINC_PROFILE_OPS=1): the engine's op
 * table wrapped (zinc_ops_wrap, slot 0) so that the device is synchronized
 * before and after each op and the time between is added to the op's
 * total: device times, at the cost of the overlap between the host and the
 * device. A diagnostic, one per process. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"
#include "zinc/clock.h"
#include "zinc/log.h"

static struct {
    const char *name;
    zinc_status (*sync)(void);
    double *ms;
    long *calls;
    double t0;
    zinc_status err;     /* the first error a sync reported (consumed there) */
    char err_msg[512];
} P;

static double p_now(void) { return zinc_now_ms(); }

/* A device sync that keeps the first error for engine_ops_profile_error:
 * the device reports (and clears) errors at its sync, and the engine must
 * still see them. */
static void p_sync(void)
{
    zinc_status st = P.sync();
    if (st != ZINC_OK && P.err == ZINC_OK) {
        P.err = st;
        snprintf(P.err_msg, sizeof P.err_msg, "%s", zinc_last_error());
    }
}

static void p_before(int op, void *user)
{
    (void)op;
    (void)user;
    p_sync();
    P.t0 = p_now();
}

static void p_after(int op, void *user)
{
    (void)user;
    p_sync();
    P.ms[op] += p_now() - P.t0;
    P.calls[op]++;
}

zinc_status engine_ops_profile_error(void)
{
    zinc_status st = P.err;
    if (st != ZINC_OK) zinc_error(st, "%s", P.err_msg);
    P.err = ZINC_OK;
    return st;
}

const zinc_ops *engine_ops_profiled(const zinc_ops *in, zinc_status (*sync)(void))
{
    int n = zinc_ops_n_ops();
    free(P.ms);
    free(P.calls);
    P.ms = calloc((size_t)n, sizeof *P.ms);
    P.calls = calloc((size_t)n, sizeof *P.calls);
    if (!P.ms || !P.calls) return in; /* no profile, same results */
    P.name = in->name;
    P.sync = sync;
    zinc_ops_hooks h = {p_before, p_after, NULL};
    return zinc_ops_wrap(0, in, &h);
}

void engine_ops_profile_report(void)
{
    int n = zinc_ops_n_ops();
    double total = 0.0;
    if (!P.ms) return;
    for (int i = 0; i < n; i++) total += P.ms[i];
    if (total <= 0.0) return;
    ZINC_INFO("op profile (%s, device time with a sync around each op): %.1f ms in ops", P.name,
              total);
    for (int done = 0; done < n; done++) { /* largest first */
        int k = -1;
        for (int i = 0; i < n; i++)
            if (P.calls[i] && (k < 0 || P.ms[i] > P.ms[k])) k = i;
        if (k < 0) break;
        ZINC_INFO("  %-20s %8ld calls %10.2f ms %5.1f%% %9.3f ms/call", zinc_ops_op_name(k),
                  P.calls[k], P.ms[k], 100.0 * P.ms[k] / total, P.ms[k] / (double)P.calls[k]);
        P.calls[k] = 0; /* reported */
    }
}
