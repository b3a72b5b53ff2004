/* test_executor.c - the pipeline executor (pipeline/executor.c) on real ranks
 * (tests/pipeline/mpi_ranks: the world is the pipeline group, one stage per rank).
 *
 * A toy stack of p*v chunks, chunk j: y = w_j * x + b_j elementwise on D floats, the last
 * chunk's loss 0.5 * sum (y - t)^2, is run for every schedule and several micro-batch
 * counts through zinc_pp_execute; each rank holds its chunks' parameters and gradients.
 * Against the same stack run serially on every rank: the gradients of each rank's chunks
 * and the loss are bit for bit equal (the schedules keep micro-batch order per chunk);
 * every (mb, chunk) is forwarded and backwarded once, loads happen only at the ends,
 * reduce and step once. Last: a stage whose forward fails ends the step on every rank with
 * an error within the comm timeout (no hang). */
#include <CUnit/Basic.h>

#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/comm.h"
#include "zinc/log.h"
#include "zinc/pipeline.h"
#include "../unit.h"

#define D 7
#define MAXJ 16
#define MAXM 16

static zinc_comm *g_world;
static int g_rank, g_size;

static float wv(int j, int i) { return 0.5f + 0.1f * (float)((j * 7 + i) % 5); }
static float bv(int j, int i) { return 0.01f * (float)(j - i); }
static float xv(int mb, int i) { return 0.1f * (float)((mb * 13 + i * 7) % 11 - 5); }
static float tv(int mb, int i) { return 0.2f * (float)((mb * 5 + i * 3) % 7 - 3); }

typedef struct toy {
    int p, v, m, s, J;
    float dw[MAXJ][D], db[MAXJ][D];
    float xin[MAXM][MAXJ][D]; /* saved inputs for the weight gradient */
    float gy[MAXM][D];        /* the last chunk's y - t */
    double loss;
    int fwd[MAXM][MAXJ], bwd[MAXM][MAXJ], wgt[MAXM][MAXJ], loads, reduces, steps;
    int fail_at_mb; /* forward of this mb fails on stage 0 (-1: never) */
} toy;

static zinc_status t_load(void *u, int mb, int chunk)
{
    toy *t = u;
    int j = chunk * t->p + t->s;
    if (j != 0 && j != t->J - 1) return zinc_error(ZINC_ERR_INTERNAL, "load at chunk %d", j);
    (void)mb;
    t->loads++;
    return ZINC_OK;
}

static zinc_status t_forward(void *u, int mb, int chunk, const void *in, void *out)
{
    toy *t = u;
    int j = chunk * t->p + t->s;
    if (mb == t->fail_at_mb && t->s == 0) return zinc_error(ZINC_ERR_INTERNAL, "toy forward fails at mb %d", mb);
    float x[D], y[D];
    for (int i = 0; i < D; i++) x[i] = j == 0 ? xv(mb, i) : ((const float *)in)[i];
    if ((j == 0) != (in == NULL) || (j == t->J - 1) != (out == NULL))
        return zinc_error(ZINC_ERR_INTERNAL, "forward buffers at chunk %d", j);
    for (int i = 0; i < D; i++) {
        t->xin[mb][j][i] = x[i];
        y[i] = wv(j, i) * x[i] + bv(j, i);
    }
    if (out) memcpy(out, y, sizeof y);
    else {
        double l = 0;
        for (int i = 0; i < D; i++) {
            t->gy[mb][i] = y[i] - tv(mb, i);
            l += 0.5 * (double)t->gy[mb][i] * (double)t->gy[mb][i];
        }
        t->loss += l;
    }
    t->fwd[mb][j]++;
    return ZINC_OK;
}

static zinc_status t_backward(void *u, int mb, int chunk, const void *in, const void *grad_out, void *grad_in,
                              int part)
{
    toy *t = u;
    int j = chunk * t->p + t->s;
    /* the input forward had, still held (for the weight part too) */
    if ((j == 0) != (in == NULL) || (in && memcmp(in, t->xin[mb][j], sizeof t->xin[mb][j])))
        return zinc_error(ZINC_ERR_INTERNAL, "backward input at chunk %d, mb %d", j, mb);
    const float *g = j == t->J - 1 ? t->gy[mb] : grad_out;
    if (!g || (j == t->J - 1) != (grad_out == NULL)) return zinc_error(ZINC_ERR_INTERNAL, "backward grad at %d", j);
    if (part != 2 && j > 0 && !grad_in) return zinc_error(ZINC_ERR_INTERNAL, "no grad_in at chunk %d", j);
    if (part != 2 && grad_in)
        for (int i = 0; i < D; i++) ((float *)grad_in)[i] = g[i] * wv(j, i);
    if (part != 1)
        for (int i = 0; i < D; i++) {
            t->dw[j][i] += g[i] * t->xin[mb][j][i];
            t->db[j][i] += g[i];
        }
    if (part == 2) t->wgt[mb][j]++;
    else t->bwd[mb][j]++;
    return ZINC_OK;
}

static zinc_status t_reduce(void *u)
{
    ((toy *)u)->reduces++;
    return ZINC_OK;
}

static zinc_status t_step(void *u)
{
    ((toy *)u)->steps++;
    return ZINC_OK;
}

/* The same stack, serially: every chunk's gradients and the loss. */
static void reference(toy *r)
{
    for (int mb = 0; mb < r->m; mb++) {
        float x[D];
        for (int i = 0; i < D; i++) x[i] = xv(mb, i);
        float xs[MAXJ][D];
        for (int j = 0; j < r->J; j++) {
            memcpy(xs[j], x, sizeof x);
            for (int i = 0; i < D; i++) x[i] = wv(j, i) * x[i] + bv(j, i);
        }
        float g[D];
        double l = 0;
        for (int i = 0; i < D; i++) {
            g[i] = x[i] - tv(mb, i);
            l += 0.5 * (double)g[i] * (double)g[i];
        }
        r->loss += l;
        for (int j = r->J - 1; j >= 0; j--) {
            for (int i = 0; i < D; i++) {
                r->dw[j][i] += g[i] * xs[j][i];
                r->db[j][i] += g[i];
            }
            for (int i = 0; i < D; i++) g[i] = g[i] * wv(j, i);
        }
    }
}

static toy g_t, g_r;

static int run_plan(zinc_pp_kind kind, int m, int v, zinc_pp_exec_stats *stats)
{
    zinc_pp_plan pl = {kind, g_size, m, v};
    memset(&g_t, 0, sizeof g_t);
    g_t = (toy){.p = g_size, .v = v, .m = m, .s = g_rank, .J = g_size * v, .fail_at_mb = -1};
    zinc_pp_stage_ops ops = {&g_t, D, ZINC_DTYPE_F32, t_load, t_forward, t_backward, t_reduce, t_step, NULL, NULL};
    zinc_status st = zinc_pp_execute(&pl, g_world, g_rank, &ops, stats);
    if (st != ZINC_OK) fprintf(stderr, "rank %d: %s: %s\n", g_rank, zinc_status_str(st), zinc_last_error());
    return st == ZINC_OK;
}

static void test_equal_serial(void)
{
    int plans = 0;
    for (int kind = ZINC_PP_GPIPE; kind <= ZINC_PP_ZERO_BUBBLE; kind++)
        for (int v = 1; v <= (kind == ZINC_PP_INTERLEAVED ? 2 : 1); v++)
            for (int m = 1; m <= 8; m *= 2) {
                if (kind == ZINC_PP_INTERLEAVED && m % g_size) continue;
                zinc_pp_exec_stats stats;
                CU_ASSERT_FATAL(run_plan((zinc_pp_kind)kind, m, v, &stats));
                memset(&g_r, 0, sizeof g_r);
                g_r = (toy){.p = g_size, .v = v, .m = m, .J = g_size * v};
                reference(&g_r);
                int bad = 0;
                for (int c = 0; c < v; c++) {
                    int j = c * g_size + g_rank;
                    bad |= memcmp(g_t.dw[j], g_r.dw[j], sizeof g_r.dw[j]) != 0;
                    bad |= memcmp(g_t.db[j], g_r.db[j], sizeof g_r.db[j]) != 0;
                    for (int mb = 0; mb < m; mb++)
                        bad |= g_t.fwd[mb][j] != 1 || g_t.bwd[mb][j] != 1 ||
                               g_t.wgt[mb][j] != (kind == ZINC_PP_ZERO_BUBBLE);
                    if (j == g_t.J - 1) bad |= g_t.loss != g_r.loss;
                }
                int want_loads = (g_rank == 0 ? m : 0) + (((g_t.J - 1) % g_size == g_rank && g_t.J > 1) ? m : 0);
                if (g_t.J == 1) want_loads = m;
                bad |= g_t.loads != want_loads || g_t.reduces != 1 || g_t.steps != 1;
                if (bad)
                    fprintf(stderr, "rank %d: %s m=%d v=%d differs from the serial run\n", g_rank,
                            zinc_pp_kind_name((zinc_pp_kind)kind), m, v);
                CU_ASSERT(!bad);
                CU_ASSERT(stats.wait_ms >= 0 && stats.step_ms >= stats.wait_ms * 0.999);
                /* every buffer comes back: peak within the schedule's activations and the
                 * step's sends */
                CU_ASSERT(stats.peak_buffers <= (size_t)(3 * m * v + 2));
                /* 1f1b holds at most p - s inputs and their output gradients, plus sends
                 * in flight: the toy's messages are small (eager), so each finished send is
                 * freed at the next instruction and the peak does not grow with m */
                if (kind == ZINC_PP_1F1B && g_size > 1) {
                    size_t bound = (size_t)(2 * (g_size - g_rank) + 2);
                    if (stats.peak_buffers > bound)
                        fprintf(stderr, "rank %d: 1f1b m=%d: %zu buffers at once, bound %zu\n", g_rank, m,
                                stats.peak_buffers, bound);
                    CU_ASSERT(stats.peak_buffers <= bound);
                }
                plans++;
            }
    if (g_rank == 0) printf("\n  %d plans on %d stages equal the serial run\n", plans, g_size);
}

/* A stage that fails mid-step: every rank gets an error, none hangs (comm timeout 2 s). */
static void test_failure_ends_step(void)
{
    if (g_size == 1) {
        memset(&g_t, 0, sizeof g_t);
        g_t = (toy){.p = 1, .v = 1, .m = 4, .s = 0, .J = 1, .fail_at_mb = 2};
        zinc_pp_plan pl = {ZINC_PP_1F1B, 1, 4, 1};
        zinc_pp_stage_ops ops = {&g_t, D, ZINC_DTYPE_F32, t_load, t_forward, t_backward, t_reduce, t_step, NULL, NULL};
        CU_ASSERT(zinc_pp_execute(&pl, NULL, 0, &ops, NULL) == ZINC_ERR_INTERNAL);
        CU_ASSERT(strstr(zinc_last_error(), "toy forward fails at mb 2") != NULL);
        CU_ASSERT(g_t.steps == 0);
        return;
    }
    zinc_comm_set_timeout(g_world, 2);
    memset(&g_t, 0, sizeof g_t);
    g_t = (toy){.p = g_size, .v = 1, .m = 4, .s = g_rank, .J = g_size, .fail_at_mb = 1};
    zinc_pp_plan pl = {ZINC_PP_1F1B, g_size, 4, 1};
    zinc_pp_stage_ops ops = {&g_t, D, ZINC_DTYPE_F32, t_load, t_forward, t_backward, t_reduce, t_step, NULL, NULL};
    zinc_pp_exec_stats stats = {0};
    zinc_status st = zinc_pp_execute(&pl, g_world, g_rank, &ops, &stats);
    fprintf(stderr, "rank %d: %s: %s\n", g_rank, zinc_status_str(st), zinc_last_error());
    CU_ASSERT(st != ZINC_OK);
    if (g_rank == 0) {
        CU_ASSERT(strstr(zinc_last_error(), "toy forward fails at mb 1") != NULL);
    } else {
        CU_ASSERT(st == ZINC_ERR_TIMEOUT);
    }
    CU_ASSERT(g_t.steps == 0);
}

int main(int argc, char **argv)
{
    zinc_status st = zinc_comm_init_world("auto", &argc, &argv, &g_world);
    if (st != ZINC_OK) {
        fprintf(stderr, "comm init: %s: %s\n", zinc_status_str(st), zinc_last_error());
        return 1;
    }
    g_rank = zinc_comm_rank(g_world);
    g_size = zinc_comm_size(g_world);
    zinc_comm_set_timeout(g_world, 60);
    static const unit_case cases[] = {
        {"every schedule = the serial run, bit for bit", test_equal_serial},
        {"a failing stage ends the step on every rank", test_failure_ends_step},
    };
    const unsigned n_fail = unit_run("pipeline executor", cases, sizeof cases / sizeof *cases, g_rank == 0);
    zinc_comm_destroy(g_world);
    if (n_fail) fprintf(stderr, "rank %d: %u failure(s)\n", g_rank, n_fail);
    return n_fail ? 1 : 0;
}
