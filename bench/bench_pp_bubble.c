/* bench_pp_bubble.c - the pipeline executor's measured bubble against the schedule's
 * theory, on ranks = stages (mpirun -n P). Each chunk's compute is a sleep (forward F ms,
 * backward 2F, split into input F and weight F for zero-bubble; a chunk of an interleaved
 * stage does 1/v of that), so the ranks need no cores and the figure is the schedule and
 * the executor's own cost (messages of act_kib KiB between stages). Per step: the bubble
 * is the largest over stages of (time waiting on neighbours) / (step time); median of the
 * steps. Prints one line per schedule: measured, theory, ratio.
 * Usage: mpirun -n P bench_pp_bubble [micro=8] [F_ms=4] [steps=7] [act_kib=64] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "zinc/comm.h"
#include "zinc/log.h"
#include "zinc/pipeline.h"

static double g_f_ms;
static int g_v;

static void nap(double ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)((ms - (double)(time_t)(ms / 1000) * 1000) * 1e6)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static zinc_status b_load(void *u, int mb, int c)
{
    (void)u, (void)mb, (void)c;
    return ZINC_OK;
}
static zinc_status b_fwd(void *u, int mb, int c, const void *in, void *out)
{
    (void)u, (void)mb, (void)c, (void)in, (void)out;
    nap(g_f_ms / g_v);
    return ZINC_OK;
}
static zinc_status b_bwd(void *u, int mb, int c, const void *in, const void *g, void *gi, int part)
{
    (void)u, (void)mb, (void)c, (void)in, (void)g, (void)gi;
    nap((part == 0 ? 2 : 1) * g_f_ms / g_v);
    return ZINC_OK;
}
static zinc_status b_none(void *u)
{
    (void)u;
    return ZINC_OK;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    zinc_comm *w;
    if (zinc_comm_init_world("mpi", &argc, &argv, &w) != ZINC_OK) {
        fprintf(stderr, "bench_pp_bubble: %s\n", zinc_last_error());
        return 1;
    }
    int rank = zinc_comm_rank(w), p = zinc_comm_size(w);
    int m = argc > 1 ? atoi(argv[1]) : 8, steps = argc > 3 ? atoi(argv[3]) : 7;
    g_f_ms = argc > 2 ? atof(argv[2]) : 4.0;
    size_t act = (size_t)(argc > 4 ? atoi(argv[4]) : 64) * 1024 / 4;
    static const struct {
        zinc_pp_kind k;
        int v;
    } runs[] = {{ZINC_PP_GPIPE, 1}, {ZINC_PP_1F1B, 1}, {ZINC_PP_INTERLEAVED, 2}, {ZINC_PP_ZERO_BUBBLE, 1}};
    if (rank == 0)
        printf("pipeline bubble, %d stages, %d micro-batches, F = %.1f ms (sleep), %zu KiB activations, median of %d steps\n",
               p, m, g_f_ms, act * 4 / 1024, steps);
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        zinc_pp_plan pl = {runs[r].k, p, m, runs[r].v};
        if (zinc_pp_plan_check(&pl) != ZINC_OK) continue;
        g_v = runs[r].v;
        zinc_pp_stage_ops ops = {NULL, act, ZINC_DTYPE_F32, b_load, b_fwd, b_bwd, b_none, b_none, NULL, NULL};
        double *bub = calloc((size_t)steps, sizeof *bub), *ms = calloc((size_t)steps, sizeof *ms);
        for (int s = -1; s < steps; s++) { /* step -1 warms up */
            zinc_pp_exec_stats st;
            zinc_comm_barrier(w);
            if (zinc_pp_execute(&pl, w, rank, &ops, &st) != ZINC_OK) {
                fprintf(stderr, "rank %d: %s\n", rank, zinc_last_error());
                return 1;
            }
            double v[2] = {st.wait_ms / st.step_ms, st.step_ms};
            zinc_comm_all_reduce(w, v, v, 2, ZINC_DTYPE_F64, ZINC_REDOP_MAX, NULL);
            if (s >= 0) {
                bub[s] = v[0];
                ms[s] = v[1];
            }
        }
        qsort(bub, (size_t)steps, sizeof *bub, cmp);
        qsort(ms, (size_t)steps, sizeof *ms, cmp);
        double th = zinc_pp_bubble_theory(&pl);
        if (rank == 0)
            printf("%-12s v=%d  step %7.1f ms  bubble measured %.4f  theory %.4f  measured/theory %.3f\n",
                   zinc_pp_kind_name(pl.kind), pl.virt, ms[steps / 2], bub[steps / 2], th, bub[steps / 2] / th);
        free(bub);
        free(ms);
    }
    zinc_comm_destroy(w);
    return 0;
}
