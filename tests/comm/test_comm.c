/* test_comm.c - comm (mpi backend) under 1..4 real ranks (tests/comm/mpi_ranks).
 *
 * Every test is collective: all ranks run the same tests in the same order.
 * Inputs are functions of (rank, index) so each rank computes the expected
 * result locally. The group timeout is lowered to 30 s so a broken collective
 * fails the run instead of hanging it. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <CUnit/Basic.h>

#include "zinc/comm.h"
#include "zinc/log.h"

static zinc_comm *g_world;
static int g_rank, g_size;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* ---- typed element access ------------------------------------------------ */

/* Element i of a rank's input, as a double exactly representable in dt. */
static double input_val(zinc_dtype dt, int rank, size_t i)
{
    switch (dt) {
    case ZINC_DTYPE_F32: return (double)((i * 7 + (size_t)rank * 3) % 64) - 16.0;
    case ZINC_DTYPE_F64: return (double)(i % 1000) * 0.5 + rank - 0.125;
    case ZINC_DTYPE_I32: return (double)((long)((i * 31 + (size_t)rank * 17) % 1000) - 500);
    case ZINC_DTYPE_I64: return (double)((long)((i * 13 + (size_t)rank * 5) % 999) - 300);
    case ZINC_DTYPE_U8: return (double)((i * 3 + (size_t)rank * 11) % 60);
    case ZINC_DTYPE_BF16:
        return zinc_bf16_to_f32(zinc_f32_to_bf16(1.0f + (float)((i * 13 + (size_t)rank * 7) % 97) / 97.0f));
    case ZINC_DTYPE_F16:
        return zinc_f16_to_f32(zinc_f32_to_f16(-2.0f + (float)((i * 11 + (size_t)rank * 5) % 89) / 23.0f));
    }
    return 0;
}

static void put(void *buf, zinc_dtype dt, size_t i, double v)
{
    switch (dt) {
    case ZINC_DTYPE_F32: ((float *)buf)[i] = (float)v; break;
    case ZINC_DTYPE_F64: ((double *)buf)[i] = v; break;
    case ZINC_DTYPE_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
    case ZINC_DTYPE_I64: ((int64_t *)buf)[i] = (int64_t)v; break;
    case ZINC_DTYPE_U8: ((uint8_t *)buf)[i] = (uint8_t)v; break;
    case ZINC_DTYPE_BF16: ((uint16_t *)buf)[i] = zinc_f32_to_bf16((float)v); break;
    case ZINC_DTYPE_F16: ((uint16_t *)buf)[i] = zinc_f32_to_f16((float)v); break;
    }
}

static double get(const void *buf, zinc_dtype dt, size_t i)
{
    switch (dt) {
    case ZINC_DTYPE_F32: return ((const float *)buf)[i];
    case ZINC_DTYPE_F64: return ((const double *)buf)[i];
    case ZINC_DTYPE_I32: return ((const int32_t *)buf)[i];
    case ZINC_DTYPE_I64: return (double)((const int64_t *)buf)[i];
    case ZINC_DTYPE_U8: return ((const uint8_t *)buf)[i];
    case ZINC_DTYPE_BF16: return zinc_bf16_to_f32(((const uint16_t *)buf)[i]);
    case ZINC_DTYPE_F16: return zinc_f16_to_f32(((const uint16_t *)buf)[i]);
    }
    return 0;
}

/* Reduction of input_val over ranks [0, p). */
static double expect_reduce(zinc_dtype dt, zinc_redop op, int p, size_t i)
{
    double acc = input_val(dt, 0, i);
    for (int r = 1; r < p; r++) {
        double v = input_val(dt, r, i);
        if (op == ZINC_REDOP_SUM) acc += v;
        else if (op == ZINC_REDOP_MAX) acc = v > acc ? v : acc;
        else acc = v < acc ? v : acc;
    }
    return acc;
}

/* Allowed error of a sum of p values: one rounding per pairwise step. */
static double tolerance(zinc_dtype dt, zinc_redop op, int p, double expect)
{
    if (op != ZINC_REDOP_SUM) return 0;
    double eps = dt == ZINC_DTYPE_BF16 ? 1.0 / 256 : dt == ZINC_DTYPE_F16 ? 1.0 / 2048 : 0;
    return eps * (p - 1) * (fabs(expect) + p * 4.0) + 1e-12;
}

/* Checks n elements of buf against expect_reduce; returns the number wrong
 * (reports the first). */
static size_t check_reduce(const void *buf, zinc_dtype dt, zinc_redop op, int p, size_t n,
                           const char *what)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double e = expect_reduce(dt, op, p, i), g = get(buf, dt, i);
        if (fabs(e - g) > tolerance(dt, op, p, e)) {
            if (!bad)
                fprintf(stderr, "rank %d %s %s op %d n %zu: [%zu] = %g, expected %g\n", g_rank,
                        what, zinc_dtype_name(dt), (int)op, n, i, g, e);
            bad++;
        }
    }
    return bad;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_basics(void)
{
    CU_ASSERT_EQUAL(zinc_comm_size(g_world), g_size);
    CU_ASSERT(g_rank >= 0 && g_rank < g_size);
    CU_ASSERT_STRING_EQUAL(zinc_comm_name(g_world), "world");
    CU_ASSERT(zinc_comm_local_size(g_world) >= 1);
    CU_ASSERT(zinc_comm_local_rank(g_world) >= 0 &&
              zinc_comm_local_rank(g_world) < zinc_comm_local_size(g_world));
    /* all test ranks run on this one node */
    CU_ASSERT_EQUAL(zinc_comm_local_size(g_world), g_size);
    CU_ASSERT_EQUAL(zinc_comm_local_rank(g_world), g_rank);

    zinc_comm *w = (zinc_comm *)1;
#ifndef ZINC_HAVE_NCCL /* a build with NCCL has it (tests/gpu/test_comm_gpu tests it) */
    CU_ASSERT_EQUAL(zinc_comm_init_world("nccl", NULL, NULL, &w), ZINC_ERR_UNSUPPORTED);
    CU_ASSERT_PTR_NULL(w);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "nccl"));
#endif
    CU_ASSERT_EQUAL(zinc_comm_init_world("gloo", NULL, NULL, &w), ZINC_ERR_UNSUPPORTED);
    CU_ASSERT_PTR_NULL(w);
    CU_ASSERT_EQUAL(zinc_comm_wait(NULL), ZINC_OK);
    zinc_comm_handle *h = NULL;
    CU_ASSERT_EQUAL(zinc_comm_wait(&h), ZINC_OK);
}

static void test_all_reduce(void)
{
    static const zinc_dtype dts[] = {ZINC_DTYPE_F32, ZINC_DTYPE_F64, ZINC_DTYPE_I32,
                                     ZINC_DTYPE_BF16, ZINC_DTYPE_F16, ZINC_DTYPE_I64,
                                     ZINC_DTYPE_U8};
    static const size_t ns[] = {0, 1, 7, 1000003};
    static const zinc_redop ops[] = {ZINC_REDOP_SUM, ZINC_REDOP_MAX, ZINC_REDOP_MIN};
    size_t nmax = 1000003;
    void *send = malloc(nmax * 8), *recv = malloc(nmax * 8);
    CU_ASSERT_FATAL(send && recv);
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
        zinc_dtype dt = dts[d];
        int small_only = dt == ZINC_DTYPE_I64 || dt == ZINC_DTYPE_U8;
        for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
            size_t n = ns[k];
            if (small_only && n > 7) continue;
            for (size_t o = 0; o < 3; o++) {
                /* u8 sums of 4 ranks stay below 256 */
                for (int inplace = 0; inplace < 2; inplace++) {
                    /* the large case runs once per dtype and op, alternating */
                    if (n == nmax && inplace != (int)(o % 2)) continue;
                    for (size_t i = 0; i < n; i++) put(send, dt, i, input_val(dt, g_rank, i));
                    memset(recv, 0xAB, n * 8);
                    void *out = inplace ? send : recv;
                    zinc_status st =
                        zinc_comm_all_reduce(g_world, send, out, n, dt, ops[o], NULL);
                    CU_ASSERT_EQUAL(st, ZINC_OK);
                    if (st != ZINC_OK) fprintf(stderr, "%s\n", zinc_last_error());
                    CU_ASSERT_EQUAL(check_reduce(out, dt, ops[o], g_size, n,
                                                 inplace ? "all_reduce in place"
                                                         : "all_reduce"),
                                    0);
                    if (!inplace) /* send untouched */
                        CU_ASSERT(n == 0 || get(send, dt, n - 1) == input_val(dt, g_rank, n - 1));
                }
            }
        }
    }
    free(send);
    free(recv);
}

static void test_reduce_scatter(void)
{
    static const size_t ns[] = {0, 1, 5, 10007};
    for (size_t k = 0; k < 4; k++) {
        size_t n = ns[k], total = n * (size_t)g_size;
        float *send = malloc((total + 1) * sizeof(float));
        int32_t *isend = malloc((total + 1) * sizeof(int32_t));
        float *recv = malloc((n + 1) * sizeof(float));
        int32_t *irecv = malloc((n + 1) * sizeof(int32_t));
        CU_ASSERT_FATAL(send && isend && recv && irecv);
        for (size_t i = 0; i < total; i++) {
            send[i] = (float)input_val(ZINC_DTYPE_F32, g_rank, i);
            isend[i] = (int32_t)input_val(ZINC_DTYPE_I32, g_rank, i);
        }
        CU_ASSERT_EQUAL(zinc_comm_reduce_scatter(g_world, send, recv, n, ZINC_DTYPE_F32,
                                                 ZINC_REDOP_SUM, NULL), ZINC_OK);
        CU_ASSERT_EQUAL(zinc_comm_reduce_scatter(g_world, isend, irecv, n, ZINC_DTYPE_I32,
                                                 ZINC_REDOP_MAX, NULL), ZINC_OK);
        size_t bad = 0;
        for (size_t j = 0; j < n; j++) {
            size_t i = (size_t)g_rank * n + j;
            bad += recv[j] != (float)expect_reduce(ZINC_DTYPE_F32, ZINC_REDOP_SUM, g_size, i);
            bad += irecv[j] != (int32_t)expect_reduce(ZINC_DTYPE_I32, ZINC_REDOP_MAX, g_size, i);
        }
        CU_ASSERT_EQUAL(bad, 0);
        free(send);
        free(isend);
        free(recv);
        free(irecv);
    }
}

/* Reduce-scatters in flight together (the mpi backend runs them as rings of
 * point-to-point steps that only its test() advances), waited for out of
 * order, with the caller's own send/recv on small tags in between: every
 * result lands in its own buffer and the caller's messages match only each
 * other. One of them is big enough (> 256 KiB per rank) to track arrival. */
static void test_reduce_scatter_async(void)
{
    static const zinc_dtype dts[] = {ZINC_DTYPE_F32, ZINC_DTYPE_BF16, ZINC_DTYPE_F16,
                                     ZINC_DTYPE_I32};
    static const zinc_redop ops[] = {ZINC_REDOP_SUM, ZINC_REDOP_SUM, ZINC_REDOP_MIN,
                                     ZINC_REDOP_MAX};
    static const size_t ns[] = {70001, 333, 17, 1};
    enum { K = 4 };
    void *send[K], *recv[K];
    zinc_comm_handle *h[K];
    int right = (g_rank + 1) % g_size, left = (g_rank + g_size - 1) % g_size;
    int32_t mine[2] = {g_rank, -g_rank}, theirs[2] = {-1, -1};
    zinc_comm_handle *hs = NULL, *hr = NULL;
    for (int k = 0; k < K; k++) {
        size_t sz = zinc_dtype_size(dts[k]), total = ns[k] * (size_t)g_size;
        send[k] = malloc(total * sz);
        recv[k] = malloc(ns[k] * sz);
        CU_ASSERT_FATAL(send[k] && recv[k]);
        for (size_t i = 0; i < total; i++) put(send[k], dts[k], i, input_val(dts[k], g_rank, i));
        memset(recv[k], 0xAB, ns[k] * sz);
        CU_ASSERT_EQUAL(zinc_comm_reduce_scatter(g_world, send[k], recv[k], ns[k], dts[k], ops[k],
                                                 &h[k]), ZINC_OK);
        if (k == 1) { /* tags 0 and 1 on the group, as a reduce-scatter's own would be */
            CU_ASSERT_EQUAL(zinc_comm_recv(g_world, theirs, 2, ZINC_DTYPE_I32, left, 1, &hr),
                            ZINC_OK);
            CU_ASSERT_EQUAL(zinc_comm_send(g_world, mine, 2, ZINC_DTYPE_I32, right, 1, &hs),
                            ZINC_OK);
        }
    }
    for (int k = K - 1; k >= 0; k--) {
        CU_ASSERT_EQUAL(zinc_comm_wait(&h[k]), ZINC_OK);
        if (k == 2) {
            CU_ASSERT_EQUAL(zinc_comm_wait(&hr), ZINC_OK);
            CU_ASSERT_EQUAL(zinc_comm_wait(&hs), ZINC_OK);
        }
    }
    CU_ASSERT(theirs[0] == left && theirs[1] == -left);
    for (int k = 0; k < K; k++) {
        size_t bad = 0;
        for (size_t j = 0; j < ns[k]; j++) {
            size_t i = (size_t)g_rank * ns[k] + j;
            double e = expect_reduce(dts[k], ops[k], g_size, i), g = get(recv[k], dts[k], j);
            bad += fabs(e - g) > tolerance(dts[k], ops[k], g_size, e);
        }
        CU_ASSERT_EQUAL(bad, 0);
        if (bad) fprintf(stderr, "rank %d: reduce_scatter %d (%s): %zu wrong\n", g_rank, k,
                         zinc_dtype_name(dts[k]), bad);
        free(send[k]);
        free(recv[k]);
    }
}

static void test_all_gather(void)
{
    static const size_t ns[] = {0, 1, 13, 10007};
    static const zinc_dtype dts[] = {ZINC_DTYPE_F32, ZINC_DTYPE_BF16, ZINC_DTYPE_U8};
    for (size_t d = 0; d < 3; d++) {
        zinc_dtype dt = dts[d];
        size_t sz = zinc_dtype_size(dt);
        for (size_t k = 0; k < 4; k++) {
            size_t n = ns[k], total = n * (size_t)g_size;
            char *send = malloc(n * sz + 1), *recv = malloc(total * sz + 1);
            CU_ASSERT_FATAL(send && recv);
            for (int inplace = 0; inplace < 2; inplace++) {
                memset(recv, 0xCD, total * sz + 1);
                char *mine = recv + (size_t)g_rank * n * sz;
                char *src = inplace ? mine : send;
                for (size_t i = 0; i < n; i++) put(src, dt, i, input_val(dt, g_rank, i));
                CU_ASSERT_EQUAL(zinc_comm_all_gather(g_world, src, recv, n, dt, NULL), ZINC_OK);
                size_t bad = 0;
                for (int r = 0; r < g_size; r++)
                    for (size_t i = 0; i < n; i++)
                        bad += get(recv, dt, (size_t)r * n + i) != input_val(dt, r, i);
                CU_ASSERT_EQUAL(bad, 0);
                CU_ASSERT_EQUAL((unsigned char)recv[total * sz], 0xCD); /* no overrun */
            }
            free(send);
            free(recv);
        }
    }
}

static void test_broadcast(void)
{
    enum { N = 17 };
    for (int root = 0; root < g_size; root++) {
        int64_t a[N];
        uint8_t b[N + 1];
        for (size_t i = 0; i < N; i++) {
            a[i] = g_rank == root ? (int64_t)input_val(ZINC_DTYPE_I64, root, i) : -1;
            b[i] = g_rank == root ? (uint8_t)input_val(ZINC_DTYPE_U8, root, i) : 0xFF;
        }
        b[N] = 0x5A;
        CU_ASSERT_EQUAL(zinc_comm_broadcast(g_world, a, N, ZINC_DTYPE_I64, root, NULL), ZINC_OK);
        zinc_comm_handle *h = NULL;
        CU_ASSERT_EQUAL(zinc_comm_broadcast(g_world, b, N, ZINC_DTYPE_U8, root, &h), ZINC_OK);
        CU_ASSERT_PTR_NOT_NULL(h);
        CU_ASSERT_EQUAL(zinc_comm_wait(&h), ZINC_OK);
        CU_ASSERT_PTR_NULL(h);
        int bad = 0;
        for (size_t i = 0; i < N; i++) {
            bad += a[i] != (int64_t)input_val(ZINC_DTYPE_I64, root, i);
            bad += b[i] != (uint8_t)input_val(ZINC_DTYPE_U8, root, i);
        }
        CU_ASSERT_EQUAL(bad, 0);
        CU_ASSERT_EQUAL(b[N], 0x5A);
    }
}

static void test_send_recv(void)
{
    /* Ring: send two tagged messages to the right, receive from the left with
     * the receives posted in the opposite order; tags must route them. */
    enum { N = 9 };
    int right = (g_rank + 1) % g_size, left = (g_rank + g_size - 1) % g_size;
    float s5[N], s9[N], r5[N], r9[N];
    for (int i = 0; i < N; i++) {
        s5[i] = (float)(g_rank * 100 + i);
        s9[i] = (float)(g_rank * 100 + 50 + i);
        r5[i] = r9[i] = -1;
    }
    zinc_comm_handle *hs5, *hs9, *hr5, *hr9;
    CU_ASSERT_EQUAL(zinc_comm_recv(g_world, r9, N, ZINC_DTYPE_F32, left, 9, &hr9), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_recv(g_world, r5, N, ZINC_DTYPE_F32, left, 5, &hr5), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_send(g_world, s5, N, ZINC_DTYPE_F32, right, 5, &hs5), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_send(g_world, s9, N, ZINC_DTYPE_F32, right, 9, &hs9), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_wait(&hr5), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_wait(&hr9), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_wait(&hs9), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_wait(&hs5), ZINC_OK);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        bad += r5[i] != (float)(left * 100 + i);
        bad += r9[i] != (float)(left * 100 + 50 + i);
    }
    CU_ASSERT_EQUAL(bad, 0);

    /* bf16 is bytes on the wire: any bit pattern, NaN payloads included, survives */
    uint16_t hs[4] = {0x7FC1, 0xFF80, 0x0001, 0x3F80}, hr[4] = {0};
    zinc_comm_handle *h = NULL;
    CU_ASSERT_EQUAL(zinc_comm_send(g_world, hs, 4, ZINC_DTYPE_BF16, right, 1, &h), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_recv(g_world, hr, 4, ZINC_DTYPE_BF16, left, 1, NULL), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_wait(&h), ZINC_OK);
    CU_ASSERT_EQUAL(memcmp(hs, hr, sizeof hs), 0);

    /* a longer message than the receive buffer is an MPI error naming recv */
    float big[8] = {0}, small[4];
    CU_ASSERT_EQUAL(zinc_comm_send(g_world, big, 8, ZINC_DTYPE_F32, right, 2, &h), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_recv(g_world, small, 4, ZINC_DTYPE_F32, left, 2, NULL),
                    ZINC_ERR_MPI);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "recv on group world"));
    CU_ASSERT_EQUAL(zinc_comm_wait(&h), ZINC_OK);
    /* a shorter one is an error too: recv of n means exactly n */
    CU_ASSERT_EQUAL(zinc_comm_send(g_world, big, 3, ZINC_DTYPE_F32, right, 3, &h), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_recv(g_world, small, 4, ZINC_DTYPE_F32, left, 3, NULL),
                    ZINC_ERR_MPI);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "got 3 elements, expected 4"));
    CU_ASSERT_EQUAL(zinc_comm_wait(&h), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_barrier(g_world), ZINC_OK);
}

static void test_barrier(void)
{
    /* rank 0 is late; nobody may leave the barrier before it arrives */
    double t0 = now_s();
    if (g_rank == 0) sleep_s(0.2);
    CU_ASSERT_EQUAL(zinc_comm_barrier(g_world), ZINC_OK);
    CU_ASSERT(now_s() - t0 >= 0.19);
}

static void test_async(void)
{
    enum { N = 1001 };
    static float a[3][N];
    zinc_comm_handle *h[3];
    for (int k = 0; k < 3; k++) {
        for (size_t i = 0; i < N; i++) a[k][i] = (float)input_val(ZINC_DTYPE_F32, g_rank, i + (size_t)k);
        zinc_redop op = k == 0 ? ZINC_REDOP_SUM : k == 1 ? ZINC_REDOP_MAX : ZINC_REDOP_MIN;
        CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, a[k], a[k], N, ZINC_DTYPE_F32, op, &h[k]),
                        ZINC_OK);
    }
    for (int k = 2; k >= 0; k--) CU_ASSERT_EQUAL(zinc_comm_wait(&h[k]), ZINC_OK);
    size_t bad = 0;
    for (int k = 0; k < 3; k++) {
        zinc_redop op = k == 0 ? ZINC_REDOP_SUM : k == 1 ? ZINC_REDOP_MAX : ZINC_REDOP_MIN;
        for (size_t i = 0; i < N; i++)
            bad += a[k][i] != (float)expect_reduce(ZINC_DTYPE_F32, op, g_size, i + (size_t)k);
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static void test_bytes(void)
{
    uint64_t p = (uint64_t)g_size;
    float buf[4 * 103];
    memset(buf, 0, sizeof buf);
    zinc_comm_reset_bytes(g_world);
    CU_ASSERT_EQUAL(zinc_comm_bytes(g_world), 0);
    uint64_t want = 0;
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, buf, buf, 100, ZINC_DTYPE_F32,
                                         ZINC_REDOP_SUM, NULL), ZINC_OK);
    want += 2 * (p - 1) * 100 * 4 / p;
    CU_ASSERT_EQUAL(zinc_comm_bytes(g_world), want);
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, buf, buf, 7, ZINC_DTYPE_BF16,
                                         ZINC_REDOP_MAX, NULL), ZINC_OK);
    want += 2 * (p - 1) * 7 * 2 / p; /* floor when p does not divide */
    CU_ASSERT_EQUAL(zinc_comm_bytes(g_world), want);
    CU_ASSERT_EQUAL(zinc_comm_reduce_scatter(g_world, buf, buf + 4 * 50, 50, ZINC_DTYPE_F32,
                                             ZINC_REDOP_SUM, NULL), ZINC_OK);
    want += (p - 1) * 50 * 4;
    CU_ASSERT_EQUAL(zinc_comm_bytes(g_world), want);
    CU_ASSERT_EQUAL(zinc_comm_all_gather(g_world, buf + 4 * 100, buf, 3, ZINC_DTYPE_I32, NULL),
                    ZINC_OK);
    want += (p - 1) * 3 * 4;
    CU_ASSERT_EQUAL(zinc_comm_bytes(g_world), want);
    CU_ASSERT_EQUAL(zinc_comm_broadcast(g_world, buf, 11, ZINC_DTYPE_F64, 0, NULL), ZINC_OK);
    want += p > 1 ? 11 * 8 : 0;
    CU_ASSERT_EQUAL(zinc_comm_bytes(g_world), want);
    CU_ASSERT_EQUAL(zinc_comm_barrier(g_world), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_bytes(g_world), want);
    zinc_comm_handle *h = NULL;
    int right = (g_rank + 1) % g_size, left = (g_rank + g_size - 1) % g_size;
    CU_ASSERT_EQUAL(zinc_comm_send(g_world, buf, 5, ZINC_DTYPE_U8, right, 0, &h), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_recv(g_world, buf + 200, 5, ZINC_DTYPE_U8, left, 0, NULL), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_wait(&h), ZINC_OK);
    want += 5 + 5;
    CU_ASSERT_EQUAL(zinc_comm_bytes(g_world), want);
    zinc_comm_reset_bytes(g_world);
    CU_ASSERT_EQUAL(zinc_comm_bytes(g_world), 0);
    /* a failed op counts nothing */
    CU_ASSERT_EQUAL(zinc_comm_broadcast(g_world, buf, 1, ZINC_DTYPE_F32, g_size, NULL),
                    ZINC_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(zinc_comm_bytes(g_world), 0);
}

static void test_bad_args(void)
{
    float x[8] = {0};
    zinc_comm_handle *h = (zinc_comm_handle *)1;
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(NULL, x, x, 1, ZINC_DTYPE_F32, ZINC_REDOP_SUM, &h),
                    ZINC_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NULL(h);
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, NULL, x, 1, ZINC_DTYPE_F32, ZINC_REDOP_SUM,
                                         NULL), ZINC_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "send is NULL"));
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, x, x, 1, (zinc_dtype)99, ZINC_REDOP_SUM,
                                         NULL), ZINC_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, x, x, 1, ZINC_DTYPE_F32, (zinc_redop)7,
                                         NULL), ZINC_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, x, x + 1, 4, ZINC_DTYPE_F32, ZINC_REDOP_SUM,
                                         NULL), ZINC_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(zinc_comm_broadcast(g_world, x, 1, ZINC_DTYPE_F32, -1, NULL),
                    ZINC_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "root -1"));
    CU_ASSERT_EQUAL(zinc_comm_send(g_world, x, 1, ZINC_DTYPE_F32, g_size, 0, NULL),
                    ZINC_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(zinc_comm_recv(g_world, x, 1, ZINC_DTYPE_F32, 0, -3, NULL),
                    ZINC_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(zinc_comm_all_gather(g_world, x + 1, x, 1, ZINC_DTYPE_F32, NULL),
                    g_size == 1 || g_rank == 1 ? ZINC_OK : ZINC_ERR_INVALID_ARG);
    /* rank 1 (if any) started a real all_gather above; the others must match it */
    if (g_size > 1 && g_rank != 1) {
        float y[8];
        CU_ASSERT_EQUAL(zinc_comm_all_gather(g_world, x, y, 1, ZINC_DTYPE_F32, NULL), ZINC_OK);
    }
    CU_ASSERT_EQUAL(zinc_comm_barrier(NULL), ZINC_ERR_INVALID_ARG);
    zinc_comm *sub = (zinc_comm *)1;
    CU_ASSERT_EQUAL(zinc_comm_split(g_world, -1, 0, "x", &sub), ZINC_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NULL(sub);
}

static void test_split(void)
{
    /* parity groups, ordered by descending world rank */
    zinc_comm *sub = NULL;
    CU_ASSERT_EQUAL_FATAL(zinc_comm_split(g_world, g_rank % 2, -g_rank, "parity", &sub), ZINC_OK);
    int n_same = 0, n_before = 0;
    for (int r = 0; r < g_size; r++) {
        if (r % 2 != g_rank % 2) continue;
        n_same++;
        n_before += r > g_rank;
    }
    CU_ASSERT_EQUAL(zinc_comm_size(sub), n_same);
    CU_ASSERT_EQUAL(zinc_comm_rank(sub), n_before);
    CU_ASSERT_STRING_EQUAL(zinc_comm_name(sub), "parity");
    CU_ASSERT_EQUAL(zinc_comm_local_size(sub), n_same);
    int32_t v = g_rank, want = 0;
    for (int r = g_rank % 2; r < g_size; r += 2) want += r;
    zinc_comm_reset_bytes(g_world);
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(sub, &v, &v, 1, ZINC_DTYPE_I32, ZINC_REDOP_SUM, NULL),
                    ZINC_OK);
    CU_ASSERT_EQUAL(v, want);
    CU_ASSERT_EQUAL(zinc_comm_bytes(g_world), 0); /* counters are per group */
    CU_ASSERT_EQUAL(zinc_comm_bytes(sub), 2 * (uint64_t)(n_same - 1) * 4 / (uint64_t)n_same);
    zinc_comm_destroy(sub);
    zinc_comm_destroy(NULL);
}

/* Checks one mesh against the rank formula, and that each group reduces
 * over exactly its members. */
static void check_mesh(int pp, int dp, int tp)
{
    zinc_mesh *m = NULL;
    CU_ASSERT_EQUAL_FATAL(zinc_mesh_create(g_world, pp, dp, tp, &m), ZINC_OK);
    int pi = g_rank / (dp * tp), di = (g_rank / tp) % dp, ti = g_rank % tp;
    CU_ASSERT_EQUAL(m->pp, pp);
    CU_ASSERT_EQUAL(m->dp, dp);
    CU_ASSERT_EQUAL(m->tp, tp);
    CU_ASSERT_EQUAL(m->pp_rank, pi);
    CU_ASSERT_EQUAL(m->dp_rank, di);
    CU_ASSERT_EQUAL(m->tp_rank, ti);
    CU_ASSERT_EQUAL(g_rank, pi * dp * tp + di * tp + ti);
    CU_ASSERT_PTR_EQUAL(m->world, g_world);
    CU_ASSERT_EQUAL(zinc_comm_size(m->dp_group), dp);
    CU_ASSERT_EQUAL(zinc_comm_size(m->tp_group), tp);
    CU_ASSERT_EQUAL(zinc_comm_size(m->pp_group), pp);
    CU_ASSERT_EQUAL(zinc_comm_rank(m->dp_group), di);
    CU_ASSERT_EQUAL(zinc_comm_rank(m->tp_group), ti);
    CU_ASSERT_EQUAL(zinc_comm_rank(m->pp_group), pi);
    CU_ASSERT_STRING_EQUAL(zinc_comm_name(m->dp_group), "dp");
    CU_ASSERT_STRING_EQUAL(zinc_comm_name(m->tp_group), "tp");
    CU_ASSERT_STRING_EQUAL(zinc_comm_name(m->pp_group), "pp");

    int64_t want_dp = 0, want_tp = 0, want_pp = 0;
    for (int d = 0; d < dp; d++) want_dp += pi * dp * tp + d * tp + ti;
    for (int t = 0; t < tp; t++) want_tp += pi * dp * tp + di * tp + t;
    for (int p = 0; p < pp; p++) want_pp += p * dp * tp + di * tp + ti;
    int64_t v = g_rank, w = g_rank, x = g_rank;
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(m->dp_group, &v, &v, 1, ZINC_DTYPE_I64, ZINC_REDOP_SUM,
                                         NULL), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(m->tp_group, &w, &w, 1, ZINC_DTYPE_I64, ZINC_REDOP_SUM,
                                         NULL), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(m->pp_group, &x, &x, 1, ZINC_DTYPE_I64, ZINC_REDOP_SUM,
                                         NULL), ZINC_OK);
    CU_ASSERT_EQUAL(v, want_dp);
    CU_ASSERT_EQUAL(w, want_tp);
    CU_ASSERT_EQUAL(x, want_pp);
    zinc_mesh_destroy(m);
}

static void test_mesh(void)
{
    if (g_size == 4) {
        check_mesh(1, 2, 2);
        check_mesh(2, 2, 1);
        check_mesh(2, 1, 2);
    }
    check_mesh(1, g_size, 1);
    check_mesh(g_size, 1, 1);
    check_mesh(1, 1, g_size);
    zinc_mesh *m = (zinc_mesh *)1;
    CU_ASSERT_EQUAL(zinc_mesh_create(g_world, 2, g_size, 1, &m), ZINC_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NULL(m);
    char want[64];
    snprintf(want, sizeof want, "pp 2 x dp %d x tp 1 = %d", g_size, 2 * g_size);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), want));
    CU_ASSERT_EQUAL(zinc_mesh_create(g_world, 0, g_size, 1, &m), ZINC_ERR_INVALID_ARG);
    zinc_mesh_destroy(NULL);
}

static void test_timeout(void)
{
    if (g_size < 2) return;
    CU_ASSERT_EQUAL(zinc_comm_barrier(g_world), ZINC_OK);
    zinc_comm_set_timeout(g_world, 0.3);
    if (g_rank == 0) {
        double t0 = now_s();
        zinc_status st = zinc_comm_barrier(g_world);
        double el = now_s() - t0;
        CU_ASSERT_EQUAL(st, ZINC_ERR_TIMEOUT);
        CU_ASSERT(el >= 0.29 && el < 1.2);
        CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "barrier #"));
        CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), " on group world"));
        CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "0.3 s"));
        /* the others sleep outside communication: they cannot answer */
        CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "no answer from rank 1"));
        CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), " (dead, or busy outside communication)"));
    } else {
        sleep_s(1.5);
        /* matches rank 0's timed-out barrier, which is still in flight there */
        zinc_comm_set_timeout(g_world, 30);
        CU_ASSERT_EQUAL(zinc_comm_barrier(g_world), ZINC_OK);
    }
    zinc_comm_set_timeout(g_world, 30);
    CU_ASSERT_EQUAL(zinc_comm_barrier(g_world), ZINC_OK);
    float v[5];
    for (int i = 0; i < 5; i++) v[i] = (float)(g_rank + i);
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, v, v, 5, ZINC_DTYPE_F32, ZINC_REDOP_SUM, NULL),
                    ZINC_OK);
    int bad = 0;
    for (int i = 0; i < 5; i++) bad += v[i] != (float)(g_size * (g_size - 1) / 2 + g_size * i);
    CU_ASSERT_EQUAL(bad, 0);
}

/* ZINC_COMM_TIMEOUT_S sets a new world's timeout; a second world shares the
 * initialized MPI and its destroy does not finalize it. */
static void test_env_timeout(void)
{
    setenv("ZINC_COMM_TIMEOUT_S", "0.2", 1);
    zinc_comm *w2 = NULL;
    zinc_status st = zinc_comm_init_world("mpi", NULL, NULL, &w2);
    unsetenv("ZINC_COMM_TIMEOUT_S");
    CU_ASSERT_EQUAL_FATAL(st, ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_size(w2), g_size);
    CU_ASSERT_EQUAL(zinc_comm_rank(w2), g_rank);
    if (g_size > 1) {
        if (g_rank == 0) {
            CU_ASSERT_EQUAL(zinc_comm_barrier(w2), ZINC_ERR_TIMEOUT);
            CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "within 0.2 s"));
        } else {
            sleep_s(0.5);
            zinc_comm_set_timeout(w2, 30);
            CU_ASSERT_EQUAL(zinc_comm_barrier(w2), ZINC_OK);
        }
    }
    zinc_comm_set_timeout(w2, 30);
    CU_ASSERT_EQUAL(zinc_comm_barrier(w2), ZINC_OK);
    zinc_comm_destroy(w2);
    /* the first world still works */
    CU_ASSERT_EQUAL(zinc_comm_barrier(g_world), ZINC_OK);
}

/* Hang diagnostics: rank 1 skips collective #3 of group "diagA" (the
 * ZINC_FAULT_SKIP_COLL hook, read when a world is made) and goes on to an
 * all_reduce on "diagB", where nobody else comes: each side's timeout names
 * the ranks that never entered its op, what they are waiting in, and the
 * first number at which the ranks' rings disagree. Rank 1 then joins the
 * others' op and they join its, so that nothing is left in flight. */
static void test_hang_diagnostics(void)
{
    if (g_size < 2) return;
    setenv("ZINC_FAULT_SKIP_COLL", "1:diagA:3", 1);
    zinc_comm *w2 = NULL, *a = NULL, *b = NULL;
    zinc_status st = zinc_comm_init_world("mpi", NULL, NULL, &w2);
    unsetenv("ZINC_FAULT_SKIP_COLL");
    CU_ASSERT_EQUAL_FATAL(st, ZINC_OK);
    zinc_comm_set_timeout(w2, 30);
    CU_ASSERT_EQUAL_FATAL(zinc_comm_split(w2, 0, g_rank, "diagA", &a), ZINC_OK); /* #1 */
    CU_ASSERT_EQUAL_FATAL(zinc_comm_split(w2, 0, g_rank, "diagB", &b), ZINC_OK); /* #1 */
    int32_t v = 1;
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(a, &v, &v, 1, ZINC_DTYPE_I32, ZINC_REDOP_SUM, NULL),
                    ZINC_OK); /* #2 */
    CU_ASSERT_EQUAL(v, g_size);
    zinc_comm_set_timeout(a, 1.0);
    zinc_comm_set_timeout(b, 1.0);
    char want[256];
    /* #3 on diagA: rank 1 skips it and waits in #2 on diagB */
    st = zinc_comm_all_reduce(a, &v, &v, 1, ZINC_DTYPE_I32, ZINC_REDOP_SUM, NULL);
    if (g_rank == 1) {
        CU_ASSERT_EQUAL(st, ZINC_OK); /* skipped */
        st = zinc_comm_all_reduce(b, &v, &v, 1, ZINC_DTYPE_I32, ZINC_REDOP_SUM, NULL);
        CU_ASSERT_EQUAL(st, ZINC_ERR_TIMEOUT);
        const char *e = zinc_last_error();
        CU_ASSERT_PTR_NOT_NULL(strstr(e, "all_reduce #2 on group diagB"));
        CU_ASSERT_PTR_NOT_NULL(strstr(e, ": rank 0 (waiting in all_reduce #3 on group diagA for "));
        CU_ASSERT_PTR_NOT_NULL(strstr(e, "never entered it"));
        CU_ASSERT_PTR_NOT_NULL(
            strstr(e, "ranks first disagree at #2 on group diagB (rank 0: none; rank 1: all_reduce 4 B)"));
        if (CU_get_number_of_failures()) fprintf(stderr, "rank 1: %s\n", e);
        /* every rank has timed out before any joins another's op (else, on a
         * loaded machine, a rank could see its op completed by the join) */
        CU_ASSERT_EQUAL(zinc_comm_barrier(w2), ZINC_OK);
        /* join the others' #3, then they join this #2 */
        zinc_comm_set_timeout(a, 30);
        CU_ASSERT_EQUAL(zinc_comm_all_reduce(a, &v, &v, 1, ZINC_DTYPE_I32, ZINC_REDOP_SUM, NULL),
                        ZINC_OK);
    } else {
        CU_ASSERT_EQUAL(st, ZINC_ERR_TIMEOUT);
        const char *e = zinc_last_error();
        CU_ASSERT_PTR_NOT_NULL(strstr(e, "all_reduce #3 on group diagA"));
        CU_ASSERT_PTR_NOT_NULL(strstr(e, ": rank 1 (waiting in all_reduce #2 on group diagB for "));
        CU_ASSERT_PTR_NOT_NULL(strstr(e, ") never entered it"));
        snprintf(want, sizeof want,
                 "ranks first disagree at #3 on group diagA (rank 0: all_reduce 4 B; rank 1: none)");
        CU_ASSERT_PTR_NOT_NULL(strstr(e, want));
        CU_ASSERT_PTR_NULL(strstr(e, "no answer"));
        if (CU_get_number_of_failures()) fprintf(stderr, "rank %d: %s\n", g_rank, e);
        CU_ASSERT_EQUAL(zinc_comm_barrier(w2), ZINC_OK); /* as rank 1 above */
        zinc_comm_set_timeout(b, 30);
        CU_ASSERT_EQUAL(zinc_comm_all_reduce(b, &v, &v, 1, ZINC_DTYPE_I32, ZINC_REDOP_SUM, NULL),
                        ZINC_OK);
    }
    zinc_comm_set_timeout(a, 30);
    zinc_comm_set_timeout(b, 30);
    /* both groups agree again (the stale ops complete) and work */
    CU_ASSERT_EQUAL(zinc_comm_barrier(a), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_barrier(b), ZINC_OK);
    v = 1;
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(a, &v, &v, 1, ZINC_DTYPE_I32, ZINC_REDOP_SUM, NULL),
                    ZINC_OK);
    CU_ASSERT_EQUAL(v, g_size);
    zinc_comm_destroy(a);
    zinc_comm_destroy(b);
    zinc_comm_destroy(w2);
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
    zinc_comm_set_timeout(g_world, 30);

    if (CU_initialize_registry() != CUE_SUCCESS) return 1;
    CU_pSuite s = CU_add_suite("comm", NULL, NULL);
    CU_add_test(s, "basics", test_basics);
    CU_add_test(s, "all_reduce", test_all_reduce);
    CU_add_test(s, "reduce_scatter", test_reduce_scatter);
    CU_add_test(s, "reduce_scatter_async", test_reduce_scatter_async);
    CU_add_test(s, "all_gather", test_all_gather);
    CU_add_test(s, "broadcast", test_broadcast);
    CU_add_test(s, "send_recv", test_send_recv);
    CU_add_test(s, "barrier", test_barrier);
    CU_add_test(s, "async", test_async);
    CU_add_test(s, "bytes", test_bytes);
    CU_add_test(s, "bad_args", test_bad_args);
    CU_add_test(s, "split", test_split);
    CU_add_test(s, "mesh", test_mesh);
    CU_add_test(s, "timeout", test_timeout);
    CU_add_test(s, "env_timeout", test_env_timeout);
    CU_add_test(s, "hang_diagnostics", test_hang_diagnostics);
    /* rank 0 narrates; the others speak only about their failures */
    CU_basic_set_mode(g_rank == 0 ? CU_BRM_VERBOSE : CU_BRM_SILENT);
    CU_basic_run_tests();
    unsigned n_fail = CU_get_number_of_failures();
    if (g_rank != 0)
        for (CU_pFailureRecord f = CU_get_failure_list(); f; f = f->pNext)
            fprintf(stderr, "rank %d: %s:%u: %s\n", g_rank, f->strFileName, f->uiLineNumber,
                    f->strCondition);
    CU_cleanup_registry();
    zinc_comm_destroy(g_world);
    if (n_fail) fprintf(stderr, "rank %d: %u failure(s)\n", g_rank, n_fail);
    return n_fail ? 1 : 0;
}
