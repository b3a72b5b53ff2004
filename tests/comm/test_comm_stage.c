/* test_comm_stage.c - comm ops on device buffers staged through host memory
 * (zinc_comm_set_device with the mpi backend), under 1..4 real ranks
 * (tests/comm/mpi_ranks).
 *
 * The device is a fake defined here: its memory is mmap'ed pages kept
 * PROT_NONE except inside its own copy()/memset0(), so any access to device
 * memory that does not go through the device (an MPI call on a device
 * pointer) crashes the test. Its host_alloc counts live buffers, which shows
 * the staging pool reusing them. Every op runs with device buffers in each
 * placement (all device, in place, only send or only recv on the device) and
 * is compared with the same op on host buffers. Every test is collective. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "zinc/comm.h"
#include "zinc/device.h"
#include "zinc/log.h"

static zinc_comm *g_world;
static int g_rank, g_size;

/* ---- the fake device ------------------------------------------------------ */

#define FAKE_MAX 256

static struct {
    struct {
        char *p;
        size_t len; /* mapped bytes */
    } regions[FAKE_MAX];
    int n_live_host;  /* host_alloc buffers not yet freed */
    int n_host_allocs; /* host_alloc calls */
    long n_copies;
} g_fake;

static size_t fake_page(void) { return (size_t)sysconf(_SC_PAGESIZE); }

static int fake_region(const void *p)
{
    for (int i = 0; i < FAKE_MAX; i++)
        if (g_fake.regions[i].p && (const char *)p >= g_fake.regions[i].p &&
            (const char *)p < g_fake.regions[i].p + g_fake.regions[i].len)
            return i;
    return -1;
}

static void fake_protect(int i, int prot)
{
    if (i >= 0 && mprotect(g_fake.regions[i].p, g_fake.regions[i].len, prot) != 0) abort();
}

static void *fake_alloc(size_t bytes)
{
    size_t pg = fake_page(), len = (bytes + pg - 1) / pg * pg;
    if (!len) len = pg;
    for (int i = 0; i < FAKE_MAX; i++)
        if (!g_fake.regions[i].p) {
            void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) return NULL;
            g_fake.regions[i].p = p;
            g_fake.regions[i].len = len;
            return p;
        }
    return NULL;
}

static void fake_free(void *p)
{
    int i = p ? fake_region(p) : -1;
    if (i < 0) return;
    munmap(g_fake.regions[i].p, g_fake.regions[i].len);
    g_fake.regions[i].p = NULL;
}

static void *fake_host_alloc(size_t bytes)
{
    size_t pg = fake_page(), len = (bytes + pg - 1) / pg * pg;
    void *p = aligned_alloc(pg, len ? len : pg);
    if (!p) return NULL;
    memset(p, 0, len);
    g_fake.n_live_host++;
    g_fake.n_host_allocs++;
    return p;
}

static void fake_host_free(void *p)
{
    if (!p) return;
    g_fake.n_live_host--;
    free(p);
}

static void fake_copy(void *dst, const void *src, size_t bytes)
{
    int d = fake_region(dst), s = fake_region(src);
    fake_protect(d, PROT_READ | PROT_WRITE);
    fake_protect(s, PROT_READ | PROT_WRITE);
    memmove(dst, src, bytes);
    fake_protect(s, PROT_NONE);
    fake_protect(d, PROT_NONE);
    g_fake.n_copies++;
}

static void fake_memset0(void *p, size_t bytes)
{
    int d = fake_region(p);
    fake_protect(d, PROT_READ | PROT_WRITE);
    memset(p, 0, bytes);
    fake_protect(d, PROT_NONE);
}

static zinc_status fake_sync(void) { return ZINC_OK; }

static int fake_is_device_ptr(const void *p) { return fake_region(p) >= 0; }

static const zinc_device g_dev = {
    .name = "fake",
    .is_host = 0,
    .index = 0,
    .ops = NULL,
    .ops_bf16 = NULL,
    .alloc = fake_alloc,
    .free = fake_free,
    .host_alloc = fake_host_alloc,
    .host_free = fake_host_free,
    .memset0 = fake_memset0,
    .copy = fake_copy,
    .sync = fake_sync,
    .is_device_ptr = fake_is_device_ptr,
};

/* ---- values ----------------------------------------------------------------- */

static double input_val(zinc_dtype dt, int rank, size_t i)
{
    switch (dt) {
    case ZINC_DTYPE_F32: return (double)((i * 7 + (size_t)rank * 3) % 64) - 16.0;
    case ZINC_DTYPE_I32: return (double)((long)((i * 31 + (size_t)rank * 17) % 1000) - 500);
    case ZINC_DTYPE_BF16:
        return zinc_bf16_to_f32(zinc_f32_to_bf16(1.0f + (float)((i * 13 + (size_t)rank * 7) % 97) / 97.0f));
    default: return (double)((i * 3 + (size_t)rank * 11) % 60);
    }
}

static void put(void *buf, zinc_dtype dt, size_t i, double v)
{
    switch (dt) {
    case ZINC_DTYPE_F32: ((float *)buf)[i] = (float)v; break;
    case ZINC_DTYPE_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
    case ZINC_DTYPE_BF16: ((uint16_t *)buf)[i] = zinc_f32_to_bf16((float)v); break;
    default: ((uint8_t *)buf)[i] = (uint8_t)v; break;
    }
}

static double get(const void *buf, zinc_dtype dt, size_t i)
{
    switch (dt) {
    case ZINC_DTYPE_F32: return ((const float *)buf)[i];
    case ZINC_DTYPE_I32: return ((const int32_t *)buf)[i];
    case ZINC_DTYPE_BF16: return zinc_bf16_to_f32(((const uint16_t *)buf)[i]);
    default: return ((const uint8_t *)buf)[i];
    }
}

/* n elements of rank's input for element offset off. */
static void fill(void *buf, zinc_dtype dt, size_t n, int rank, size_t off)
{
    for (size_t i = 0; i < n; i++) put(buf, dt, i, input_val(dt, rank, off + i));
}

/* Elements of got that differ from ref by more than a bf16 sum's rounding
 * (exact for other types); reports the first. */
static size_t compare(const void *got, const void *ref, zinc_dtype dt, size_t n, const char *what)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double g = get(got, dt, i), r = get(ref, dt, i);
        double tol = dt == ZINC_DTYPE_BF16 ? (g_size - 1) * (fabs(r) + 4.0 * g_size) / 256.0 : 0;
        if (fabs(g - r) > tol) {
            if (!bad)
                fprintf(stderr, "rank %d %s %s n %zu: [%zu] = %g, host result %g\n", g_rank,
                        what, zinc_dtype_name(dt), n, i, g, r);
            bad++;
        }
    }
    return bad;
}

/* A device buffer holding a copy of n bytes of host memory (or zeroes). */
static void *dev_from(const void *host, size_t bytes)
{
    void *d = g_dev.alloc(bytes);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    if (host && bytes) g_dev.copy(d, host, bytes);
    return d;
}

static void to_host(void *host, const void *d, size_t bytes)
{
    if (bytes) g_dev.copy(host, d, bytes);
}

/* ---- tests -------------------------------------------------------------------- */

static const zinc_dtype g_dts[] = {ZINC_DTYPE_F32, ZINC_DTYPE_BF16, ZINC_DTYPE_I32};
static const size_t g_ns[] = {0, 5, 70001};

/* Placement of an op's buffers: both on the device (out of place), in place
 * on the device, only send on the device, only recv on the device. */
enum { BOTH, INPLACE, SEND_DEV, RECV_DEV, N_PLACES };
static const char *const g_place[N_PLACES] = {"both", "in place", "send on device",
                                              "recv on device"};

static void test_set_device(void)
{
    zinc_device bad = g_dev;
    bad.is_device_ptr = NULL;
    CU_ASSERT_EQUAL(zinc_comm_set_device(g_world, &bad), ZINC_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), "is_device_ptr"));
    CU_ASSERT_EQUAL(zinc_comm_set_device(NULL, &g_dev), ZINC_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(zinc_comm_set_device(g_world, &g_dev), ZINC_OK);
    /* device memory really is out of the host's reach outside copy() */
    float *d = g_dev.alloc(64);
    CU_ASSERT_TRUE(g_dev.is_device_ptr(d + 3));
    float x = 1;
    CU_ASSERT_FALSE(g_dev.is_device_ptr(&x));
    g_dev.free(d);
}

static void test_all_reduce(void)
{
    for (size_t d = 0; d < 3; d++)
        for (size_t k = 0; k < 3; k++)
            for (int pl = 0; pl < N_PLACES; pl++) {
                zinc_dtype dt = g_dts[d];
                size_t n = g_ns[k], b = n * zinc_dtype_size(dt);
                zinc_redop op = dt == ZINC_DTYPE_I32 ? ZINC_REDOP_MAX : ZINC_REDOP_SUM;
                char *in = malloc(b + 1), *ref = malloc(b + 1), *got = malloc(b + 1);
                CU_ASSERT_FATAL(in && ref && got);
                fill(in, dt, n, g_rank, 0);
                CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, in, ref, n, dt, op, NULL), ZINC_OK);
                void *ds = pl == RECV_DEV ? NULL : dev_from(in, b);
                void *dr = pl == BOTH || pl == RECV_DEV ? dev_from(NULL, b) : NULL;
                const void *s = pl == RECV_DEV ? (const void *)in : ds;
                void *r = pl == INPLACE ? ds : pl == SEND_DEV ? (void *)got : dr;
                if (pl == SEND_DEV) memset(got, 0xAB, b);
                zinc_status st = zinc_comm_all_reduce(g_world, s, r, n, dt, op, NULL);
                CU_ASSERT_EQUAL(st, ZINC_OK);
                if (st != ZINC_OK) fprintf(stderr, "%s\n", zinc_last_error());
                if (pl != SEND_DEV) to_host(got, r, b);
                CU_ASSERT_EQUAL(compare(got, ref, dt, n, g_place[pl]), 0);
                if (pl == BOTH) { /* send untouched */
                    to_host(got, ds, b);
                    CU_ASSERT_EQUAL(memcmp(got, in, b), 0);
                }
                g_dev.free(ds);
                g_dev.free(dr);
                free(in);
                free(ref);
                free(got);
            }
}

static void test_reduce_scatter(void)
{
    for (size_t d = 0; d < 2; d++)
        for (size_t k = 0; k < 3; k++)
            for (int pl = 0; pl < N_PLACES; pl++) {
                if (pl == INPLACE) continue; /* not an option of reduce_scatter */
                zinc_dtype dt = g_dts[d];
                size_t n = g_ns[k], sz = zinc_dtype_size(dt), all = n * (size_t)g_size * sz;
                char *in = malloc(all + 1), *ref = malloc(n * sz + 1), *got = malloc(n * sz + 1);
                CU_ASSERT_FATAL(in && ref && got);
                fill(in, dt, n * (size_t)g_size, g_rank, 0);
                CU_ASSERT_EQUAL(zinc_comm_reduce_scatter(g_world, in, ref, n, dt, ZINC_REDOP_SUM,
                                                         NULL), ZINC_OK);
                void *ds = pl == RECV_DEV ? NULL : dev_from(in, all);
                void *dr = pl == SEND_DEV ? NULL : dev_from(NULL, n * sz);
                zinc_status st = zinc_comm_reduce_scatter(g_world, ds ? ds : in, dr ? dr : got,
                                                          n, dt, ZINC_REDOP_SUM, NULL);
                CU_ASSERT_EQUAL(st, ZINC_OK);
                if (dr) to_host(got, dr, n * sz);
                CU_ASSERT_EQUAL(compare(got, ref, dt, n, g_place[pl]), 0);
                g_dev.free(ds);
                g_dev.free(dr);
                free(in);
                free(ref);
                free(got);
            }
}

static void test_all_gather(void)
{
    for (size_t d = 0; d < 2; d++)
        for (size_t k = 0; k < 3; k++)
            for (int pl = 0; pl < N_PLACES; pl++) {
                zinc_dtype dt = g_dts[d];
                size_t n = g_ns[k], sz = zinc_dtype_size(dt), all = n * (size_t)g_size * sz;
                size_t off = (size_t)g_rank * n * sz;
                char *in = malloc(n * sz + 1), *ref = malloc(all + 1), *got = malloc(all + 1);
                CU_ASSERT_FATAL(in && ref && got);
                fill(in, dt, n, g_rank, 0);
                CU_ASSERT_EQUAL(zinc_comm_all_gather(g_world, in, ref, n, dt, NULL), ZINC_OK);
                memset(got, 0xCD, all);
                void *ds = pl == BOTH || pl == SEND_DEV ? dev_from(in, n * sz) : NULL;
                void *dr = pl == BOTH || pl == RECV_DEV || pl == INPLACE ? dev_from(NULL, all)
                                                                          : NULL;
                if (pl == INPLACE && n) g_dev.copy((char *)dr + off, in, n * sz);
                const void *s = pl == INPLACE ? (char *)dr + off : ds ? ds : (void *)in;
                zinc_status st = zinc_comm_all_gather(g_world, s, dr ? dr : got, n, dt, NULL);
                CU_ASSERT_EQUAL(st, ZINC_OK);
                if (dr) to_host(got, dr, all);
                CU_ASSERT_EQUAL(compare(got, ref, dt, n * (size_t)g_size, g_place[pl]), 0);
                g_dev.free(ds);
                g_dev.free(dr);
                free(in);
                free(ref);
                free(got);
            }
}

static void test_broadcast(void)
{
    enum { N = 3001 };
    float host[N], got[N];
    for (int root = 0; root < g_size; root++) {
        for (size_t i = 0; i < N; i++) host[i] = g_rank == root ? (float)input_val(ZINC_DTYPE_F32, root, i) : -1.0f;
        float *d = dev_from(host, sizeof host);
        zinc_comm_handle *h = NULL;
        CU_ASSERT_EQUAL(zinc_comm_broadcast(g_world, d, N, ZINC_DTYPE_F32, root, &h), ZINC_OK);
        CU_ASSERT_EQUAL(zinc_comm_wait(&h), ZINC_OK);
        to_host(got, d, sizeof got);
        size_t bad = 0;
        for (size_t i = 0; i < N; i++) bad += got[i] != (float)input_val(ZINC_DTYPE_F32, root, i);
        CU_ASSERT_EQUAL(bad, 0);
        g_dev.free(d);
    }
}

static void test_send_recv(void)
{
    /* ring with tags, the receives posted in the other order; device send
     * and recv buffers, and a host send into a device recv */
    enum { N = 20000 };
    int right = (g_rank + 1) % g_size, left = (g_rank + g_size - 1) % g_size;
    static float s5[N], s9[N], got[N];
    for (int i = 0; i < N; i++) {
        s5[i] = (float)(g_rank * 100000 + i);
        s9[i] = (float)(g_rank * 100000 + 50000 + i);
    }
    float *ds5 = dev_from(s5, sizeof s5), *dr5 = dev_from(NULL, sizeof s5);
    float *dr9 = dev_from(NULL, sizeof s9);
    zinc_comm_handle *hs5, *hs9, *hr5, *hr9;
    CU_ASSERT_EQUAL(zinc_comm_recv(g_world, dr9, N, ZINC_DTYPE_F32, left, 9, &hr9), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_recv(g_world, dr5, N, ZINC_DTYPE_F32, left, 5, &hr5), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_send(g_world, ds5, N, ZINC_DTYPE_F32, right, 5, &hs5), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_send(g_world, s9, N, ZINC_DTYPE_F32, right, 9, &hs9), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_wait(&hr5), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_wait(&hs9), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_wait(&hr9), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_wait(&hs5), ZINC_OK);
    size_t bad = 0;
    to_host(got, dr5, sizeof got);
    for (int i = 0; i < N; i++) bad += got[i] != (float)(left * 100000 + i);
    to_host(got, dr9, sizeof got);
    for (int i = 0; i < N; i++) bad += got[i] != (float)(left * 100000 + 50000 + i);
    CU_ASSERT_EQUAL(bad, 0);
    /* a short message into a staged recv is still an error, and the device
     * buffer is left alone */
    float big[3] = {1, 2, 3}, minus[4] = {-1, -1, -1, -1};
    float *dsmall = dev_from(minus, sizeof minus);
    zinc_comm_handle *h = NULL;
    CU_ASSERT_EQUAL(zinc_comm_send(g_world, big, 3, ZINC_DTYPE_F32, right, 3, &h), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_recv(g_world, dsmall, 4, ZINC_DTYPE_F32, left, 3, NULL),
                    ZINC_ERR_MPI);
    CU_ASSERT_EQUAL(zinc_comm_wait(&h), ZINC_OK);
    to_host(got, dsmall, sizeof minus);
    CU_ASSERT_EQUAL(memcmp(got, minus, sizeof minus), 0);
    g_dev.free(dsmall);
    g_dev.free(ds5);
    g_dev.free(dr5);
    g_dev.free(dr9);
    CU_ASSERT_EQUAL(zinc_comm_barrier(g_world), ZINC_OK);
}

static void test_async(void)
{
    /* several staged ops in flight at once, waited in reverse order: each
     * needs its own staging buffer */
    enum { K = 5, N = 40000 };
    static uint16_t host[K][N], ref[K][N], got[N];
    void *d[K];
    zinc_comm_handle *h[K];
    for (int k = 0; k < K; k++) {
        fill(host[k], ZINC_DTYPE_BF16, N, g_rank, (size_t)k * 11);
        CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, host[k], ref[k], N, ZINC_DTYPE_BF16,
                                             ZINC_REDOP_SUM, NULL), ZINC_OK);
        d[k] = dev_from(host[k], sizeof host[k]);
    }
    for (int k = 0; k < K; k++)
        CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, d[k], d[k], N, ZINC_DTYPE_BF16,
                                             ZINC_REDOP_SUM, &h[k]), ZINC_OK);
    for (int k = K - 1; k >= 0; k--) {
        CU_ASSERT_EQUAL(zinc_comm_wait(&h[k]), ZINC_OK);
        CU_ASSERT_PTR_NULL(h[k]);
    }
    for (int k = 0; k < K; k++) {
        to_host(got, d[k], sizeof got);
        CU_ASSERT_EQUAL(compare(got, ref[k], ZINC_DTYPE_BF16, N, "async"), 0);
        g_dev.free(d[k]);
    }
}

static void test_pool(void)
{
    /* after a warm-up, more ops of the same sizes allocate no pinned memory,
     * and the pool keeps a bounded number of buffers */
    enum { N = 10000 };
    static float host[N];
    fill(host, ZINC_DTYPE_F32, N, g_rank, 0);
    float *d = dev_from(host, sizeof host), *e = dev_from(NULL, sizeof host);
    size_t m = N / (size_t)g_size / 2;
    zinc_comm_handle *h[2];
    for (int round = 0; round < 12; round++) {
        if (round == 2) {
            CU_ASSERT(g_fake.n_live_host <= 8);
            g_fake.n_host_allocs = 0;
        }
        CU_ASSERT_EQUAL(zinc_comm_broadcast(g_world, d, N, ZINC_DTYPE_F32, 0, &h[0]), ZINC_OK);
        CU_ASSERT_EQUAL(zinc_comm_all_gather(g_world, e + (size_t)g_rank * m, e, m,
                                             ZINC_DTYPE_F32, &h[1]), ZINC_OK);
        CU_ASSERT_EQUAL(zinc_comm_wait(&h[1]), ZINC_OK);
        CU_ASSERT_EQUAL(zinc_comm_wait(&h[0]), ZINC_OK);
    }
    CU_ASSERT_EQUAL(g_fake.n_host_allocs, 0);
    CU_ASSERT(g_fake.n_live_host >= 1 && g_fake.n_live_host <= 8);
    g_dev.free(d);
    g_dev.free(e);
}

static void test_bytes(void)
{
    /* staging counts exactly what the same op on host buffers counts */
    enum { N = 1001 };
    static float host[N * 4];
    float *d = dev_from(NULL, sizeof host);
    zinc_comm_reset_bytes(g_world);
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, host, host, N, ZINC_DTYPE_F32, ZINC_REDOP_SUM,
                                         NULL), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_reduce_scatter(g_world, host, host + N * 3, N / 4, ZINC_DTYPE_F32,
                                             ZINC_REDOP_SUM, NULL), ZINC_OK);
    uint64_t want = zinc_comm_bytes(g_world);
    uint64_t want_rs = zinc_comm_bytes_op(g_world, ZINC_COMM_OP_REDUCE_SCATTER);
    zinc_comm_reset_bytes(g_world);
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(g_world, d, d, N, ZINC_DTYPE_F32, ZINC_REDOP_SUM,
                                         NULL), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_reduce_scatter(g_world, d, d + N * 3, N / 4, ZINC_DTYPE_F32,
                                             ZINC_REDOP_SUM, NULL), ZINC_OK);
    CU_ASSERT_EQUAL(zinc_comm_bytes(g_world), want);
    CU_ASSERT_EQUAL(zinc_comm_bytes_op(g_world, ZINC_COMM_OP_REDUCE_SCATTER), want_rs);
    g_dev.free(d);
}

static void test_split(void)
{
    /* a group split after set_device inherits the device */
    zinc_comm *half = NULL;
    CU_ASSERT_EQUAL_FATAL(zinc_comm_split(g_world, g_rank % 2, g_rank, "half", &half), ZINC_OK);
    int n = zinc_comm_size(half);
    int32_t v[3] = {g_rank, 1, -g_rank}, got[3];
    int32_t *d = dev_from(v, sizeof v);
    CU_ASSERT_EQUAL(zinc_comm_all_reduce(half, d, d, 3, ZINC_DTYPE_I32, ZINC_REDOP_SUM, NULL),
                    ZINC_OK);
    to_host(got, d, sizeof got);
    int32_t want = 0;
    for (int r = g_rank % 2; r < g_size; r += 2) want += r;
    CU_ASSERT_EQUAL(got[0], want);
    CU_ASSERT_EQUAL(got[1], n);
    CU_ASSERT_EQUAL(got[2], -want);
    g_dev.free(d);
    zinc_comm_destroy(half);
}

static void test_stale(void)
{
    /* a staged recv that times out keeps its staging buffer until its group
     * is destroyed, which releases it back to the pool (not leaked) */
    zinc_comm *self = NULL;
    CU_ASSERT_EQUAL_FATAL(zinc_comm_split(g_world, g_rank, 0, "self", &self), ZINC_OK);
    zinc_comm_set_timeout(self, 0.2);
    float minus[8] = {-1, -1, -1, -1, -1, -1, -1, -1}, got[8];
    float *d = dev_from(minus, sizeof minus);
    int live = g_fake.n_live_host;
    CU_ASSERT_EQUAL(zinc_comm_recv(self, d, 8, ZINC_DTYPE_F32, 0, 7, NULL), ZINC_ERR_TIMEOUT);
    char want[96]; /* the timeout names the peer that never sent */
    snprintf(want, sizeof want, "recv from rank 0 (world rank %d) on group self", g_rank);
    CU_ASSERT_PTR_NOT_NULL(strstr(zinc_last_error(), want));
    zinc_comm_destroy(self);
    CU_ASSERT(g_fake.n_live_host <= live + 1 && g_fake.n_live_host <= 8);
    to_host(got, d, sizeof got);
    CU_ASSERT_EQUAL(memcmp(got, minus, sizeof minus), 0);
    g_dev.free(d);
    CU_ASSERT_EQUAL(zinc_comm_barrier(g_world), ZINC_OK);
}

static void test_staged_for_real(void)
{
    /* the ops above went through copy(), not around it */
    CU_ASSERT(g_fake.n_copies > 100);
}

int main(int argc, char **argv)
{
    zinc_status st = zinc_comm_init_world("mpi", &argc, &argv, &g_world);
    if (st != ZINC_OK) {
        fprintf(stderr, "comm init: %s: %s\n", zinc_status_str(st), zinc_last_error());
        return 1;
    }
    g_rank = zinc_comm_rank(g_world);
    g_size = zinc_comm_size(g_world);
    zinc_comm_set_timeout(g_world, 30);

    if (CU_initialize_registry() != CUE_SUCCESS) return 1;
    CU_pSuite s = CU_add_suite("comm_stage", NULL, NULL);
    CU_add_test(s, "set_device", test_set_device);
    CU_add_test(s, "all_reduce", test_all_reduce);
    CU_add_test(s, "reduce_scatter", test_reduce_scatter);
    CU_add_test(s, "all_gather", test_all_gather);
    CU_add_test(s, "broadcast", test_broadcast);
    CU_add_test(s, "send_recv", test_send_recv);
    CU_add_test(s, "async", test_async);
    CU_add_test(s, "pool", test_pool);
    CU_add_test(s, "bytes", test_bytes);
    CU_add_test(s, "split", test_split);
    CU_add_test(s, "stale", test_stale);
    CU_add_test(s, "staged_for_real", test_staged_for_real);
    CU_basic_set_mode(g_rank == 0 ? CU_BRM_VERBOSE : CU_BRM_SILENT);
    CU_basic_run_tests();
    unsigned n_fail = CU_get_number_of_failures();
    if (g_rank != 0)
        for (CU_pFailureRecord f = CU_get_failure_list(); f; f = f->pNext)
            fprintf(stderr, "rank %d: %s:%u: %s\n", g_rank, f->strFileName, f->uiLineNumber,
                    f->strCondition);
    CU_cleanup_registry();
    zinc_comm_destroy(g_world);
    /* the world's destroy returned every pooled staging buffer */
    if (g_fake.n_live_host != 0) {
        fprintf(stderr, "rank %d: %d staging buffer(s) not freed\n", g_rank, g_fake.n_live_host);
        n_fail++;
    }
    if (n_fail) fprintf(stderr, "rank %d: %u failure(s)\n", g_rank, n_fail);
    return n_fail ? 1 : 0;
}
