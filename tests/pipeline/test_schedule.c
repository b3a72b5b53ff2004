/* test_schedule.c - the pipeline schedule generator (pipeline/schedule.c) alone: for
 * every schedule and many (stages, micro-batches, virtual stages), each stage's list does
 * every forward and backward of every (micro-batch, chunk) exactly once and in order,
 * loads each micro-batch where it is needed, ends with one gradient reduction and one
 * optimizer step; every receive has exactly one matching send and the other way round
 * (counted here, independently of the simulator); a simulated run of all stages
 * finishes (uniform and skewed costs); activations in flight stay within each schedule's
 * bound; the simulated bubble equals the theory. The simulator itself is shown to catch
 * broken lists (a missing send, crossed receives, a backward before its forward). */
#include <CUnit/Basic.h>

#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/log.h"
#include "zinc/pipeline.h"
#include "../unit.h"

static const zinc_pp_cost UNIFORM = {1.0, 2.0, 1.0, 1.0};
static const zinc_pp_cost SKEWED = {1.0, 2.7, 1.9, 0.8};

/* One plan's lists for all stages. */
typedef struct lists {
    int p;
    zinc_pp_instr *ins[64];
    int n[64];
} lists;

static int build(const zinc_pp_plan *pl, lists *L)
{
    memset(L, 0, sizeof *L);
    L->p = pl->stages;
    for (int s = 0; s < pl->stages; s++)
        if (zinc_pp_schedule(pl, s, &L->ins[s], &L->n[s]) != ZINC_OK) return -1;
    return 0;
}

static void drop(lists *L)
{
    for (int s = 0; s < L->p; s++) free(L->ins[s]);
}

static char g_what[200];
#define CHECK(cond)                                                                         \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "  %s: %s failed (line %d)\n", g_what, #cond, __LINE__);          \
            CU_FAIL(#cond);                                                                 \
            return;                                                                         \
        }                                                                                   \
    } while (0)

/* The structural properties of one plan's lists (see the top). */
static void check_lists(const zinc_pp_plan *pl, const lists *L)
{
    const int p = pl->stages, m = pl->micro, v = pl->virt, J = p * v;
    const int zb = pl->kind == ZINC_PP_ZERO_BUBBLE;
    /* sends and receives, keyed (kind, mb, model chunk of the sender, from, to) */
    int *sends = calloc((size_t)2 * m * J * p * p, sizeof(int));
    int *recvs = calloc((size_t)2 * m * J * p * p, sizeof(int));
    int *loads = calloc((size_t)m * J, sizeof(int));
    CU_ASSERT_FATAL(sends && recvs && loads);
#define KEY(kind, mb, j, from, to) (((((size_t)(kind) * m + (mb)) * J + (j)) * p + (from)) * p + (to))
    for (int s = 0; s < p; s++) {
        const zinc_pp_instr *ins = L->ins[s];
        const int n = L->n[s];
        int *f = calloc((size_t)m * v, sizeof(int)), *b = calloc((size_t)m * v, sizeof(int)),
            *w = calloc((size_t)m * v, sizeof(int));
        CU_ASSERT_FATAL(f && b && w);
        CHECK(n >= 2);
        CHECK(ins[n - 2].op == ZINC_PP_REDUCE_GRADS && ins[n - 1].op == ZINC_PP_OPTIMIZER_STEP);
        for (int i = 0; i < n - 2; i++) {
            const zinc_pp_instr *in = &ins[i];
            CHECK(in->op != ZINC_PP_REDUCE_GRADS && in->op != ZINC_PP_OPTIMIZER_STEP);
            CHECK(in->mb >= 0 && in->mb < m && in->chunk >= 0 && in->chunk < v);
            int c = in->mb * v + in->chunk, j = in->chunk * p + s;
            switch (in->op) {
            case ZINC_PP_FORWARD: f[c]++; CHECK(in->peer == -1); break;
            case ZINC_PP_BACKWARD:
                CHECK(!zb && f[c] == 1);
                b[c]++;
                w[c]++;
                break;
            case ZINC_PP_BACKWARD_INPUT:
                CHECK(zb && f[c] == 1);
                b[c]++;
                break;
            case ZINC_PP_BACKWARD_WEIGHT:
                CHECK(zb && b[c] == 1);
                w[c]++;
                break;
            case ZINC_PP_LOAD:
                CHECK(j == 0 || j == J - 1);
                loads[in->mb * J + j]++;
                break;
            case ZINC_PP_SEND_ACT:
                CHECK(p > 1 && j < J - 1 && f[c] == 1 && in->peer == (s + 1) % p);
                sends[KEY(0, in->mb, j, s, in->peer)]++;
                break;
            case ZINC_PP_RECV_ACT:
                CHECK(p > 1 && j > 0 && f[c] == 0 && in->peer == (s + p - 1) % p);
                recvs[KEY(0, in->mb, j - 1, in->peer, s)]++;
                break;
            case ZINC_PP_SEND_GRAD:
                CHECK(p > 1 && j > 0 && b[c] == 1 && in->peer == (s + p - 1) % p);
                sends[KEY(1, in->mb, j, s, in->peer)]++;
                break;
            case ZINC_PP_RECV_GRAD:
                CHECK(p > 1 && j < J - 1 && b[c] == 0 && in->peer == (s + 1) % p);
                recvs[KEY(1, in->mb, j + 1, in->peer, s)]++;
                break;
            default: CHECK(0);
            }
        }
        for (int c = 0; c < m * v; c++) CHECK(f[c] == 1 && b[c] == 1 && w[c] == 1);
        free(f);
        free(b);
        free(w);
    }
    for (size_t k = 0; k < (size_t)2 * m * J * p * p; k++) CHECK(sends[k] == recvs[k] && sends[k] <= 1);
    /* an activation of every (mb, j < J-1) and a gradient of every (mb, j > 0) cross stages */
    long n_send = 0;
    for (size_t k = 0; k < (size_t)2 * m * J * p * p; k++) n_send += sends[k];
    CHECK(n_send == (p > 1 ? 2L * m * (J - 1) : 0));
    for (int i = 0; i < m; i++)
        for (int j = 0; j < J; j++) CHECK(loads[i * J + j] == (j == 0 || j == J - 1));
#undef KEY
    free(sends);
    free(recvs);
    free(loads);
}

/* The in-flight bound of stage s under plan pl. */
static int inflight_bound(const zinc_pp_plan *pl, int s)
{
    int p = pl->stages, m = pl->micro, v = pl->virt, b = 0;
    switch (pl->kind) {
    case ZINC_PP_GPIPE: b = m; break;
    case ZINC_PP_1F1B:
    case ZINC_PP_ZERO_BUBBLE: b = p - s; break;
    case ZINC_PP_INTERLEAVED: b = (p - s - 1) * 2 + (v - 1) * p + 1; break;
    }
    return b < m * v ? b : m * v;
}

/* zero-bubble: the weight backwards stage s may hold back, at most (the tail's). */
static int deferred_bound(const zinc_pp_plan *pl, int s)
{
    (void)s;
    return pl->stages + 1 < pl->micro ? pl->stages + 1 : pl->micro;
}

static void check_plan(const zinc_pp_plan *pl)
{
    lists L;
    snprintf(g_what, sizeof g_what, "%s p=%d m=%d v=%d", zinc_pp_kind_name(pl->kind), pl->stages, pl->micro,
             pl->virt);
    CU_ASSERT_FATAL(build(pl, &L) == 0);
    check_lists(pl, &L);
    zinc_pp_sim sim, sk;
    CU_ASSERT_FATAL(zinc_pp_simulate_lists(pl, L.ins, L.n, &UNIFORM, &sim) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_pp_simulate_lists(pl, L.ins, L.n, &SKEWED, &sk) == ZINC_OK);
    drop(&L);
    CHECK(!sim.deadlock && !sk.deadlock);
    for (int s = 0; s < pl->stages; s++) {
        CHECK(sim.inflight[s] <= inflight_bound(pl, s));
        if (pl->kind == ZINC_PP_ZERO_BUBBLE) {
            if (sim.deferred[s] > deferred_bound(pl, s))
                fprintf(stderr, "  %s: stage %d defers %d W\n", g_what, s, sim.deferred[s]);
            CHECK(sim.deferred[s] <= deferred_bound(pl, s));
        } else {
            CHECK(sim.deferred[s] == 0);
        }
    }
    if (pl->kind == ZINC_PP_1F1B) CHECK(sim.max_inflight <= pl->stages);
    double theory = zinc_pp_bubble_theory(pl);
    /* zero-bubble reaches its theory from m >= p on (below, too few W to fill the tail) */
    if (pl->kind == ZINC_PP_ZERO_BUBBLE && pl->micro < pl->stages) theory = sim.bubble;
    if (fabs(sim.bubble - theory) > 1e-9)
        fprintf(stderr, "  %s: bubble %.6f, theory %.6f (min over stages %.6f)\n", g_what, sim.bubble, theory,
                sim.bubble_min);
    CHECK(fabs(sim.bubble - theory) <= 1e-9);
    if (pl->stages > 1 && pl->kind == ZINC_PP_ZERO_BUBBLE) {
        zinc_pp_plan one = *pl;
        one.kind = ZINC_PP_1F1B;
        zinc_pp_sim s1;
        CU_ASSERT_FATAL(zinc_pp_simulate(&one, &UNIFORM, &s1) == ZINC_OK);
        CHECK(sim.bubble < s1.bubble);
    }
}

static void test_all_schedules(void)
{
    static const int P[] = {1, 2, 3, 4, 8};
    static const int M[] = {1, 2, 3, 4, 5, 8, 16, 24};
    int plans = 0;
    for (int k = ZINC_PP_GPIPE; k <= ZINC_PP_ZERO_BUBBLE; k++)
        for (size_t a = 0; a < sizeof P / sizeof P[0]; a++)
            for (size_t b = 0; b < sizeof M / sizeof M[0]; b++)
                for (int v = 1; v <= (k == ZINC_PP_INTERLEAVED ? 4 : 1); v++) {
                    zinc_pp_plan pl = {(zinc_pp_kind)k, P[a], M[b], v};
                    if (k == ZINC_PP_INTERLEAVED && M[b] % P[a] != 0) continue;
                    check_plan(&pl);
                    plans++;
                }
    printf("\n  %d plans checked\n", plans);
    CU_ASSERT(plans > 150);
}

/* The numbers the issue names: PP 4, 8 micro-batches. */
static void test_bubble_values(void)
{
    zinc_pp_plan g = {ZINC_PP_1F1B, 4, 8, 1}, i2 = {ZINC_PP_INTERLEAVED, 4, 8, 2}, z = {ZINC_PP_ZERO_BUBBLE, 4, 8, 1};
    zinc_pp_sim a, b, c;
    CU_ASSERT_FATAL(zinc_pp_simulate(&g, &UNIFORM, &a) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_pp_simulate(&i2, &UNIFORM, &b) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_pp_simulate(&z, &UNIFORM, &c) == ZINC_OK);
    printf("\n  p=4 m=8: 1f1b bubble %.4f (3/11 = %.4f), interleaved v=2 %.4f (3/19 = %.4f), zero-bubble %.4f "
           "(3/27 = %.4f)\n",
           a.bubble, 3.0 / 11, b.bubble, 3.0 / 19, c.bubble, 3.0 / 27);
    CU_ASSERT(fabs(a.bubble - 3.0 / 11) < 1e-9);
    CU_ASSERT(fabs(b.bubble - 3.0 / 19) < 1e-9);
    CU_ASSERT(fabs(c.bubble - 3.0 / 27) < 1e-9);
    CU_ASSERT(a.max_inflight == 4); /* stage 0 holds p micro-batches */
    CU_ASSERT(c.max_inflight == 4);
    /* 1F1B's makespan with F = 1, B = 2: (m + p - 1) * 3 */
    CU_ASSERT(fabs(a.makespan - 33.0) < 1e-9);
}

/* The 1F1B list of stage 1 of 3 with 4 micro-batches, instruction by instruction. */
static void test_1f1b_list(void)
{
    zinc_pp_plan pl = {ZINC_PP_1F1B, 3, 4, 1};
    zinc_pp_instr *ins;
    int n;
    CU_ASSERT_FATAL(zinc_pp_schedule(&pl, 1, &ins, &n) == ZINC_OK);
    /* warm-up 1 forward, then F/B pairs, then 1 backward */
    const char *want = "recv_act0 forward0 send_act0 "
                       "recv_act1 forward1 send_act1 recv_grad0 backward0 send_grad0 "
                       "recv_act2 forward2 send_act2 recv_grad1 backward1 send_grad1 "
                       "recv_act3 forward3 send_act3 recv_grad2 backward2 send_grad2 "
                       "recv_grad3 backward3 send_grad3 reduce_grads optimizer_step ";
    char got[1024] = "";
    for (int i = 0; i < n; i++) {
        char one[40];
        if (ins[i].mb >= 0) snprintf(one, sizeof one, "%s%d ", zinc_pp_op_name(ins[i].op), ins[i].mb);
        else snprintf(one, sizeof one, "%s ", zinc_pp_op_name(ins[i].op));
        strncat(got, one, sizeof got - strlen(got) - 1);
    }
    if (strcmp(got, want) != 0) fprintf(stderr, "\n  got  %s\n  want %s\n", got, want);
    CU_ASSERT_STRING_EQUAL(got, want);
    free(ins);
}

/* p = 1: plain gradient accumulation, no communication, one load per micro-batch. */
static void test_one_stage(void)
{
    zinc_pp_plan pl = {ZINC_PP_1F1B, 1, 3, 1};
    zinc_pp_instr *ins;
    int n;
    CU_ASSERT_FATAL(zinc_pp_schedule(&pl, 0, &ins, &n) == ZINC_OK);
    CU_ASSERT(n == 3 * 3 + 2);
    for (int i = 0; i < 9; i++) CU_ASSERT(ins[i].op == (i % 3 == 0 ? ZINC_PP_LOAD : i % 3 == 1 ? ZINC_PP_FORWARD : ZINC_PP_BACKWARD));
    free(ins);
}

/* Broken lists are caught: the simulator is not just the generator's mirror. */
static void test_simulator_catches(void)
{
    zinc_pp_plan pl = {ZINC_PP_1F1B, 2, 2, 1};
    lists L;
    zinc_pp_sim sim;
    CU_ASSERT_FATAL(build(&pl, &L) == 0);
    CU_ASSERT_FATAL(zinc_pp_simulate_lists(&pl, L.ins, L.n, &UNIFORM, &sim) == ZINC_OK);
    CU_ASSERT(!sim.deadlock);
    /* stage 0 without its first send: stage 1 waits for ever */
    for (int i = 0; i < L.n[0]; i++)
        if (L.ins[0][i].op == ZINC_PP_SEND_ACT) {
            memmove(&L.ins[0][i], &L.ins[0][i + 1], (size_t)(L.n[0] - i - 1) * sizeof L.ins[0][0]);
            L.n[0]--;
            break;
        }
    CU_ASSERT_FATAL(zinc_pp_simulate_lists(&pl, L.ins, L.n, &UNIFORM, &sim) == ZINC_OK);
    CU_ASSERT(sim.deadlock);
    drop(&L);
    /* stage 1 waits for its input activations from itself: never sent */
    CU_ASSERT_FATAL(build(&pl, &L) == 0);
    for (int i = 0; i < L.n[1]; i++)
        if (L.ins[1][i].op == ZINC_PP_RECV_ACT) L.ins[1][i].peer = 1;
    CU_ASSERT_FATAL(zinc_pp_simulate_lists(&pl, L.ins, L.n, &UNIFORM, &sim) == ZINC_OK);
    CU_ASSERT(sim.deadlock);
    drop(&L);
    /* GPipe with stage 0's backwards swapped before its forwards: a backward before its
     * forward never runs */
    zinc_pp_plan gp = {ZINC_PP_GPIPE, 2, 2, 1};
    CU_ASSERT_FATAL(build(&gp, &L) == 0);
    zinc_pp_instr *a = L.ins[0];
    int n = L.n[0], half = (n - 2) / 2;
    zinc_pp_instr *tmp = malloc((size_t)n * sizeof *tmp);
    memcpy(tmp, a + half, (size_t)half * sizeof *a);
    memcpy(tmp + half, a, (size_t)half * sizeof *a);
    memcpy(a, tmp, (size_t)(2 * half) * sizeof *a);
    free(tmp);
    CU_ASSERT_FATAL(zinc_pp_simulate_lists(&gp, L.ins, L.n, &UNIFORM, &sim) == ZINC_OK);
    CU_ASSERT(sim.deadlock);
    drop(&L);
    /* two stages that each receive before they send: crossed, a classic deadlock */
    zinc_pp_instr s0[] = {{ZINC_PP_LOAD, 0, 0, -1},      {ZINC_PP_RECV_GRAD, 0, 0, 1}, {ZINC_PP_FORWARD, 0, 0, -1},
                          {ZINC_PP_SEND_ACT, 0, 0, 1},   {ZINC_PP_BACKWARD, 0, 0, -1}, {ZINC_PP_REDUCE_GRADS, -1, -1, -1},
                          {ZINC_PP_OPTIMIZER_STEP, -1, -1, -1}};
    zinc_pp_plan one = {ZINC_PP_1F1B, 2, 1, 1};
    CU_ASSERT_FATAL(build(&one, &L) == 0);
    zinc_pp_instr *keep = L.ins[0];
    L.ins[0] = s0;
    L.n[0] = 7;
    CU_ASSERT_FATAL(zinc_pp_simulate_lists(&one, L.ins, L.n, &UNIFORM, &sim) == ZINC_OK);
    CU_ASSERT(sim.deadlock);
    L.ins[0] = keep;
    drop(&L);
}

static void test_bad_plans(void)
{
    static const struct {
        zinc_pp_plan pl;
        const char *msg;
    } bad[] = {
        {{ZINC_PP_1F1B, 0, 4, 1}, "stages 0, micro-batches 4 and virtual stages 1 must all be >= 1"},
        {{ZINC_PP_1F1B, 2, 0, 1}, "micro-batches 0"},
        {{ZINC_PP_1F1B, 2, 4, 2}, "2 virtual stages per rank need the interleaved schedule"},
        {{ZINC_PP_INTERLEAVED, 4, 6, 2}, "6 micro-batches is not a multiple of the 4 stages"},
        {{ZINC_PP_GPIPE, 4096, 8192, 1}, "too many"},
        {{(zinc_pp_kind)9, 2, 2, 1}, "unknown kind 9"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        zinc_pp_instr *ins = NULL;
        int n = 0;
        CU_ASSERT(zinc_pp_plan_check(&bad[i].pl) == ZINC_ERR_INVALID_ARG);
        if (!strstr(zinc_last_error(), bad[i].msg)) fprintf(stderr, "\n  message: %s\n", zinc_last_error());
        CU_ASSERT(strstr(zinc_last_error(), bad[i].msg) != NULL);
        CU_ASSERT(zinc_pp_schedule(&bad[i].pl, 0, &ins, &n) == ZINC_ERR_INVALID_ARG);
        CU_ASSERT(ins == NULL);
    }
    zinc_pp_plan ok = {ZINC_PP_1F1B, 2, 2, 1};
    zinc_pp_instr *ins = NULL;
    int n;
    CU_ASSERT(zinc_pp_schedule(&ok, 2, &ins, &n) == ZINC_ERR_INVALID_ARG);
    CU_ASSERT(strstr(zinc_last_error(), "stage 2 outside 0..1") != NULL);
    zinc_pp_kind k;
    CU_ASSERT(zinc_pp_kind_parse("zero-bubble", &k) == 0 && k == ZINC_PP_ZERO_BUBBLE);
    CU_ASSERT(zinc_pp_kind_parse("1F1B", &k) == -1);
    CU_ASSERT(zinc_pp_kind_name((zinc_pp_kind)4) == NULL);
}

int main(void)
{
    static const unit_case cases[] = {
        {"every schedule: structure, matching, no deadlock, bounds, bubble", test_all_schedules},
        {"bubble at p 4, m 8", test_bubble_values},
        {"1f1b list of a middle stage", test_1f1b_list},
        {"one stage is gradient accumulation", test_one_stage},
        {"the simulator catches broken lists", test_simulator_catches},
        {"bad plans", test_bad_plans},
    };
    return unit_run("pipeline schedule", cases, sizeof cases / sizeof *cases, 1) ? 1 : 0;
}
