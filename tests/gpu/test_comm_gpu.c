/* test_comm_gpu.c - comm ops on CUDA device buffers, checked against
 * host-computed expectations. An MPI program:
 *
 *   mpirun -n N test_comm_gpu nccl|mpi
 *
 * nccl hands device buffers to NCCL (one GPU per rank); mpi stages them
 * through pinned host memory (ranks may share a GPU). Each rank opens the
 * cuda device by its local rank and sets it on the world. Prints "ok ..." (rank
 * 0) and "FAIL rank r ..." lines and "== N checks, M failed ==" (M summed
 * over ranks); exits 1 on any failure, 77 ("SKIP: no GPU") without a GPU.
 * Inputs are small integers (f32: exact sums in any order) or bf16 values
 * with a rounding tolerance. ZINC_TEST_NO_WATCHDOG=1 skips the last check,
 * which leaves a receive unmatched to make the watchdog fire. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "zinc/comm.h"
#include "zinc/device.h"

static const zinc_device *D;
static zinc_comm *W;
static int g_rank, g_size, g_checks, g_fails;
static const char *g_backend;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
    g_checks++;
    if (!ok) g_fails++;
    if (ok && g_rank != 0) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (ok)
        printf("ok %s\n", msg);
    else
        printf("FAIL rank %d: %s\n", g_rank, msg);
    fflush(stdout);
}

/* A status check: ok, or FAIL with the error detail. */
static int check_st(zinc_status st, const char *what)
{
    check(st == ZINC_OK, "%s%s%s", what, st == ZINC_OK ? "" : ": ",
          st == ZINC_OK ? "" : zinc_last_error());
    return st == ZINC_OK;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *dalloc(size_t bytes)
{
    void *p = D->alloc(bytes ? bytes : 1);
    if (!p) {
        printf("FAIL rank %d: device alloc of %zu bytes: %s\n", g_rank, bytes, zinc_last_error());
        zinc_comm_abort(W, 1);
    }
    return p;
}

static void *halloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        printf("FAIL rank %d: malloc of %zu bytes\n", g_rank, bytes);
        zinc_comm_abort(W, 1);
    }
    return p;
}

/* Rank r's f32 input element i: small integers, exact in any sum order. */
static float in_f32(int r, size_t i) { return (float)((long)((i * 7 + (size_t)r * 3) % 64) - 16); }

/* Rank r's bf16 input element i, in [1, 2). */
static uint16_t in_bf16(int r, size_t i)
{
    return zinc_f32_to_bf16(1.0f + (float)((i * 13 + (size_t)r * 7) % 97) / 97.0f);
}

static void fill_f32(float *h, size_t n, int r, size_t off)
{
    for (size_t i = 0; i < n; i++) h[i] = in_f32(r, off + i);
}

static void fill_bf16(uint16_t *h, size_t n, int r, size_t off)
{
    for (size_t i = 0; i < n; i++) h[i] = in_bf16(r, off + i);
}

/* Element i of the sum (or max) over ranks of the f32 inputs. */
static float sum_f32(size_t i, int is_max)
{
    float acc = in_f32(0, i);
    for (int r = 1; r < g_size; r++) {
        float v = in_f32(r, i);
        acc = is_max ? (v > acc ? v : acc) : acc + v;
    }
    return acc;
}

/* Mismatches of h against the sum over ranks of inputs at off + i. */
static size_t bad_sum_f32(const float *h, size_t n, size_t off, int is_max)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += h[i] != sum_f32(off + i, is_max);
    return bad;
}

static size_t bad_sum_bf16(const uint16_t *h, size_t n, size_t off)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double e = 0;
        for (int r = 0; r < g_size; r++) e += zinc_bf16_to_f32(in_bf16(r, off + i));
        /* one bf16 rounding per step of any reduction order */
        double tol = g_size * (e + 2.0) / 256.0;
        bad += fabs((double)zinc_bf16_to_f32(h[i]) - e) > tol;
    }
    return bad;
}

/* ---- checks ------------------------------------------------------------- */

static void check_all_reduce(void)
{
    static const size_t ns[] = {1, 1000, (1u << 20) + 3};
    for (size_t k = 0; k < 3; k++) {
        size_t n = ns[k], b = n * 4;
        float *h = halloc(b), *got = halloc(b);
        float *ds = dalloc(b), *dr = dalloc(b);
        fill_f32(h, n, g_rank, 0);
        D->copy(ds, h, b);
        check_st(zinc_comm_all_reduce(W, ds, dr, n, ZINC_DTYPE_F32, ZINC_REDOP_SUM, NULL),
                 "all_reduce f32");
        D->copy(got, dr, b);
        check(bad_sum_f32(got, n, 0, 0) == 0, "all_reduce f32 sum n=%zu", n);
        D->copy(got, ds, b);
        check(memcmp(got, h, b) == 0, "all_reduce f32 n=%zu leaves send alone", n);
        check_st(zinc_comm_all_reduce(W, ds, ds, n, ZINC_DTYPE_F32, ZINC_REDOP_SUM, NULL),
                 "all_reduce f32 in place");
        D->copy(got, ds, b);
        check(bad_sum_f32(got, n, 0, 0) == 0, "all_reduce f32 sum in place n=%zu", n);
        D->copy(ds, h, b);
        check_st(zinc_comm_all_reduce(W, ds, ds, n, ZINC_DTYPE_F32, ZINC_REDOP_MAX, NULL),
                 "all_reduce f32 max");
        D->copy(got, ds, b);
        check(bad_sum_f32(got, n, 0, 1) == 0, "all_reduce f32 max n=%zu", n);
        D->free(ds);
        D->free(dr);
        free(h);
        free(got);
    }
    /* bf16 sums */
    size_t n = 300007, b = n * 2;
    uint16_t *h = halloc(b), *got = halloc(b);
    uint16_t *d = dalloc(b);
    fill_bf16(h, n, g_rank, 0);
    D->copy(d, h, b);
    check_st(zinc_comm_all_reduce(W, d, d, n, ZINC_DTYPE_BF16, ZINC_REDOP_SUM, NULL),
             "all_reduce bf16 in place");
    D->copy(got, d, b);
    check(bad_sum_bf16(got, n, 0) == 0, "all_reduce bf16 sum n=%zu", n);
    D->free(d);
    free(h);
    free(got);
}

static void check_async(void)
{
    enum { K = 4 };
    size_t n = 200003, b = n * 4;
    float *h = halloc(b), *got = halloc(b);
    float *d[K];
    zinc_comm_handle *hd[K];
    for (int k = 0; k < K; k++) {
        d[k] = dalloc(b);
        fill_f32(h, n, g_rank, (size_t)k * 5);
        D->copy(d[k], h, b);
    }
    int ok = 1;
    for (int k = 0; k < K; k++)
        ok &= zinc_comm_all_reduce(W, d[k], d[k], n, ZINC_DTYPE_F32, ZINC_REDOP_SUM, &hd[k]) ==
              ZINC_OK;
    check(ok, "all_reduce x%d async started%s%s", K, ok ? "" : ": ", ok ? "" : zinc_last_error());
    for (int k = K - 1; k >= 0; k--) check_st(zinc_comm_wait(&hd[k]), "async wait");
    size_t bad = 0;
    for (int k = 0; k < K; k++) {
        D->copy(got, d[k], b);
        bad += bad_sum_f32(got, n, (size_t)k * 5, 0);
        D->free(d[k]);
    }
    check(bad == 0, "all_reduce x%d async, waited in reverse order", K);
    free(h);
    free(got);
}

static void check_reduce_scatter(void)
{
    size_t n = 100003, all = n * (size_t)g_size, off = (size_t)g_rank * n;
    float *h = halloc(all * 4), *got = halloc(n * 4);
    float *ds = dalloc(all * 4), *dr = dalloc(n * 4);
    fill_f32(h, all, g_rank, 0);
    D->copy(ds, h, all * 4);
    check_st(zinc_comm_reduce_scatter(W, ds, dr, n, ZINC_DTYPE_F32, ZINC_REDOP_SUM, NULL),
             "reduce_scatter f32");
    D->copy(got, dr, n * 4);
    check(bad_sum_f32(got, n, off, 0) == 0, "reduce_scatter f32 sum n=%zu", n);
    D->free(ds);
    D->free(dr);
    free(h);
    free(got);

    uint16_t *hb = halloc(all * 2), *gb = halloc(n * 2);
    uint16_t *dbs = dalloc(all * 2), *dbr = dalloc(n * 2);
    fill_bf16(hb, all, g_rank, 0);
    D->copy(dbs, hb, all * 2);
    zinc_comm_handle *hd = NULL;
    check_st(zinc_comm_reduce_scatter(W, dbs, dbr, n, ZINC_DTYPE_BF16, ZINC_REDOP_SUM, &hd),
             "reduce_scatter bf16 async");
    check_st(zinc_comm_wait(&hd), "reduce_scatter bf16 wait");
    D->copy(gb, dbr, n * 2);
    check(bad_sum_bf16(gb, n, off) == 0, "reduce_scatter bf16 sum n=%zu", n);
    D->free(dbs);
    D->free(dbr);
    free(hb);
    free(gb);
}

static void check_all_gather(void)
{
    size_t n = 65537, all = n * (size_t)g_size, off = (size_t)g_rank * n;
    float *h = halloc(n * 4), *got = halloc(all * 4);
    float *ds = dalloc(n * 4), *dr = dalloc(all * 4);
    for (int inplace = 0; inplace < 2; inplace++) {
        fill_f32(h, n, g_rank, 0);
        D->memset0(dr, all * 4);
        float *src = inplace ? dr + off : ds;
        D->copy(src, h, n * 4);
        check_st(zinc_comm_all_gather(W, src, dr, n, ZINC_DTYPE_F32, NULL), "all_gather f32");
        D->copy(got, dr, all * 4);
        size_t bad = 0;
        for (int r = 0; r < g_size; r++)
            for (size_t i = 0; i < n; i++) bad += got[(size_t)r * n + i] != in_f32(r, i);
        check(bad == 0, "all_gather f32%s n=%zu", inplace ? " in place" : "", n);
    }
    D->free(ds);
    D->free(dr);
    free(h);
    free(got);

    uint16_t *hb = halloc(n * 2), *gb = halloc(all * 2);
    uint16_t *dbs = dalloc(n * 2), *dbr = dalloc(all * 2);
    fill_bf16(hb, n, g_rank, 0);
    D->copy(dbs, hb, n * 2);
    zinc_comm_handle *hd = NULL;
    check_st(zinc_comm_all_gather(W, dbs, dbr, n, ZINC_DTYPE_BF16, &hd), "all_gather bf16 async");
    check_st(zinc_comm_wait(&hd), "all_gather bf16 wait");
    D->copy(gb, dbr, all * 2);
    size_t bad = 0;
    for (int r = 0; r < g_size; r++)
        for (size_t i = 0; i < n; i++) bad += gb[(size_t)r * n + i] != in_bf16(r, i);
    check(bad == 0, "all_gather bf16 n=%zu", n);
    D->free(dbs);
    D->free(dbr);
    free(hb);
    free(gb);
}

static void check_broadcast(void)
{
    size_t n = 123457, b = n * 4;
    float *h = halloc(b), *got = halloc(b);
    float *d = dalloc(b);
    for (int root = 0; root < g_size; root++) {
        for (size_t i = 0; i < n; i++) h[i] = g_rank == root ? in_f32(root, i) : -99.0f;
        D->copy(d, h, b);
        check_st(zinc_comm_broadcast(W, d, n, ZINC_DTYPE_F32, root, NULL), "broadcast");
        D->copy(got, d, b);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += got[i] != in_f32(root, i);
        check(bad == 0, "broadcast f32 from root %d", root);
    }
    D->free(d);
    free(h);
    free(got);
}

static void check_send_recv(void)
{
    if (g_size == 1 && !strcmp(g_backend, "nccl")) {
        /* NCCL's self send/recv needs both in one group call; zinc posts them apart */
        if (g_rank == 0) printf("skip send/recv: nccl with 1 rank\n");
        return;
    }
    /* a ring; even ranks send first, odd ranks receive first, so that NCCL's
     * in-order streams never wait on each other in a cycle */
    size_t n = 77777, b = n * 4;
    int right = (g_rank + 1) % g_size, left = (g_rank + g_size - 1) % g_size;
    float *h = halloc(b), *got = halloc(b);
    float *ds = dalloc(b), *dr = dalloc(b);
    fill_f32(h, n, g_rank, 0);
    D->copy(ds, h, b);
    zinc_comm_handle *hs = NULL, *hr = NULL;
    if (g_rank % 2 == 0) {
        check_st(zinc_comm_send(W, ds, n, ZINC_DTYPE_F32, right, 4, &hs), "send");
        check_st(zinc_comm_recv(W, dr, n, ZINC_DTYPE_F32, left, 4, &hr), "recv");
    } else {
        check_st(zinc_comm_recv(W, dr, n, ZINC_DTYPE_F32, left, 4, &hr), "recv");
        check_st(zinc_comm_send(W, ds, n, ZINC_DTYPE_F32, right, 4, &hs), "send");
    }
    check_st(zinc_comm_wait(&hr), "recv wait");
    check_st(zinc_comm_wait(&hs), "send wait");
    D->copy(got, dr, b);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += got[i] != in_f32(left, i);
    check(bad == 0, "send/recv ring f32 n=%zu", n);
    D->free(ds);
    D->free(dr);
    free(h);
    free(got);
}

static void check_ordering(void)
{
    /* a large device-to-device copy (async on stream 0) fills the send
     * buffer right before the op: the op must see it; a copy right after the
     * wait must see the result */
    size_t n = (size_t)16 << 20, b = n * 4;
    float *h = halloc(b), *got = halloc(b);
    float *src = dalloc(b), *d = dalloc(b), *after = dalloc(b);
    fill_f32(h, n, g_rank, 3);
    D->copy(src, h, b);
    check_st(D->sync(), "device sync before ordering");
    D->memset0(d, b);
    D->copy(d, src, b); /* async */
    check_st(zinc_comm_all_reduce(W, d, d, n, ZINC_DTYPE_F32, ZINC_REDOP_SUM, NULL),
             "all_reduce after async copy");
    D->copy(after, d, b); /* async, on stream 0 */
    D->memset0(d, b);
    D->copy(got, after, b);
    check(bad_sum_f32(got, n, 3, 0) == 0, "ordering: op after stream-0 copy, copy after op (n=%zu)",
          n);
    check_st(D->sync(), "device sync after ordering");
    D->free(src);
    D->free(d);
    D->free(after);
    free(h);
    free(got);
}

static void check_mixed(void)
{
    /* device send, host recv (staged on any backend) */
    size_t n = 4099, b = n * 4;
    float *h = halloc(b), *got = halloc(b);
    float *d = dalloc(b);
    fill_f32(h, n, g_rank, 0);
    D->copy(d, h, b);
    check_st(zinc_comm_all_reduce(W, d, got, n, ZINC_DTYPE_F32, ZINC_REDOP_SUM, NULL),
             "all_reduce device send, host recv");
    check(bad_sum_f32(got, n, 0, 0) == 0, "all_reduce device send, host recv values");
    /* host buffers still work on a group with a device */
    double x = g_rank + 0.5;
    check_st(zinc_comm_all_reduce(W, &x, &x, 1, ZINC_DTYPE_F64, ZINC_REDOP_SUM, NULL),
             "all_reduce host f64");
    check(x == g_size * (g_size - 1) / 2.0 + 0.5 * g_size, "all_reduce host f64 value");
    D->free(d);
    free(h);
    free(got);
}

static void check_bytes(void)
{
    size_t n = 1000;
    float *d = dalloc(n * 4);
    D->memset0(d, n * 4);
    zinc_comm_reset_bytes(W);
    check_st(zinc_comm_all_reduce(W, d, d, n, ZINC_DTYPE_F32, ZINC_REDOP_SUM, NULL),
             "all_reduce for bytes");
    uint64_t p = (uint64_t)g_size;
    check(zinc_comm_bytes(W) == 2 * (p - 1) * n * 4 / p, "byte counter on device op");
    D->free(d);
}

static void check_split(void)
{
    zinc_comm *half = NULL;
    if (!check_st(zinc_comm_split(W, g_rank % 2, g_rank, "half", &half), "split")) return;
    size_t n = 10007, b = n * 4;
    float *h = halloc(b), *got = halloc(b);
    float *d = dalloc(b);
    for (size_t i = 0; i < n; i++) h[i] = (float)(g_rank + 1);
    D->copy(d, h, b);
    check_st(zinc_comm_all_reduce(half, d, d, n, ZINC_DTYPE_F32, ZINC_REDOP_SUM, NULL),
             "all_reduce on split group");
    D->copy(got, d, b);
    float want = 0;
    for (int r = g_rank % 2; r < g_size; r += 2) want += (float)(r + 1);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += got[i] != want;
    check(bad == 0, "split group inherits the device: sum %g", (double)want);
    zinc_comm_destroy(half);
    D->free(d);
    free(h);
    free(got);
}

static void check_watchdog(void)
{
    /* a receive nobody sends: the wait gives up after the timeout (nccl:
     * the watchdog aborts the group's communicator), the error names the op
     * and group, and the world goes on working */
    zinc_comm *probe = NULL;
    if (!check_st(zinc_comm_split(W, g_rank, 0, "probe", &probe), "split probe")) return;
    zinc_comm_set_timeout(probe, 1.0);
    float *d = dalloc(64 * 4);
    double t0 = now_s();
    zinc_status st = zinc_comm_recv(probe, d, 64, ZINC_DTYPE_F32, 0, 9, NULL);
    double el = now_s() - t0;
    /* NCCL refuses a lone self-receive outright ("invalid usage", seen on
     * NCCL 2.28): then the check is that the refusal is a clean error naming
     * the op and group; the hang path of the watchdog needs two GPUs */
    int refused = st != ZINC_OK && st != ZINC_ERR_TIMEOUT && !strcmp(g_backend, "nccl");
    if (refused && g_rank == 0)
        printf("# NCCL refused the unmatched receive (%s, status %s): the timeout path is not "
               "exercised with one GPU\n", zinc_last_error(), zinc_status_str(st));
    check((st == ZINC_ERR_TIMEOUT || refused) && strstr(zinc_last_error(), "recv") &&
              strstr(zinc_last_error(), "on group probe"),
          "unmatched recv fails after %.2f s with %s: %s", el, zinc_status_str(st),
          zinc_last_error());
    if (st == ZINC_ERR_TIMEOUT && !strcmp(g_backend, "nccl")) {
        check(strstr(zinc_last_error(), "aborted") != NULL, "nccl timeout aborts the communicator");
        st = zinc_comm_all_reduce(probe, d, d, 64, ZINC_DTYPE_F32, ZINC_REDOP_SUM, NULL);
        check(st == ZINC_ERR_NCCL && strstr(zinc_last_error(), "aborted"),
              "device op on an aborted group fails at once: %s", zinc_last_error());
    }
    zinc_comm_destroy(probe);
    D->free(d);
    check_st(D->sync(), "device sync after watchdog");
    float *e = dalloc(1000 * 4);
    D->memset0(e, 1000 * 4);
    check_st(zinc_comm_all_reduce(W, e, e, 1000, ZINC_DTYPE_F32, ZINC_REDOP_SUM, NULL),
             "world works after the watchdog fired");
    D->free(e);
}

int main(int argc, char **argv)
{
    g_backend = argc > 1 ? argv[1] : "nccl";
    if (zinc_device_cuda_count() == 0) {
        printf("SKIP: no GPU\n");
        return 77;
    }
    zinc_status st = zinc_comm_init_world(g_backend, &argc, &argv, &W);
    if (st != ZINC_OK) {
        printf("FAIL comm init %s: %s\n", g_backend, zinc_last_error());
        printf("== 1 checks, 1 failed ==\n");
        return 1;
    }
    g_rank = zinc_comm_rank(W);
    g_size = zinc_comm_size(W);
    zinc_comm_set_timeout(W, 60);
    double t0 = now_s();
    st = zinc_comm_agree(W, zinc_device_cuda_open(zinc_comm_local_rank(W), &D));
    if (check_st(st, "cuda device open") &&
        check_st(zinc_comm_set_device(W, D), "set_device on world")) {
        if (g_rank == 0)
            printf("# backend %s, %d rank(s), GPU %d\n", g_backend, g_size, D->index);
        check_all_reduce();
        check_async();
        check_reduce_scatter();
        check_all_gather();
        check_broadcast();
        check_send_recv();
        check_ordering();
        check_mixed();
        check_bytes();
        check_split();
        const char *nw = getenv("ZINC_TEST_NO_WATCHDOG");
        if (!nw || strcmp(nw, "1")) {
            if (g_rank == 0) {
                printf("# watchdog: an unmatched recv on a 1-rank group, 1 s timeout "
                       "(ZINC_TEST_NO_WATCHDOG=1 skips)\n");
                fflush(stdout);
            }
            check_watchdog();
        }
        check_st(D->sync(), "device sync at the end");
    }
    int32_t fails = g_fails;
    if (zinc_comm_all_reduce(W, &fails, &fails, 1, ZINC_DTYPE_I32, ZINC_REDOP_SUM, NULL) !=
        ZINC_OK)
        fails = g_fails + 1;
    if (g_rank == 0)
        printf("== %d checks, %d failed == (%.1f s)\n", g_checks, (int)fails, now_s() - t0);
    zinc_comm_destroy(W);
    return fails ? 1 : 0;
}
