/* test_aio.c - the aio engine: byte-exact round trips over every option
 * combination and alignment, on a disk file system (O_DIRECT) and on tmpfs,
 * outstanding async requests waited out of order, concurrent callers,
 * destroy with work in flight, and every error path (missing file, short
 * read, read-only, missing folder, ENOSPC through ZINC_AIO_FAULT and, when
 * mounting is permitted, a 1 MiB tmpfs). Files live in fresh temporary
 * folders under $TMPDIR (or /tmp) and /dev/shm, removed at the end. */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zinc/aio.h"

#define MIB ((size_t)1 << 20)

static char g_dir[512];     /* under $TMPDIR or /tmp */
static char g_shm[512];     /* under /dev/shm, "" if absent */

/* dir/name in a rotating static buffer. */
static const char *tpath(const char *dir, const char *name)
{
    static char bufs[8][1024];
    static int i;
    char *b = bufs[i++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

static void fill_random(unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)(x >> 24);
    }
}

/* Writes n bytes of pattern `seed` to path with plain write(2). */
static void plain_fill(const char *path, size_t n, uint64_t seed)
{
    unsigned char *p = malloc(n ? n : 1);
    fill_random(p, n, seed);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, p, n) == (ssize_t)n);
    close(fd);
    free(p);
}

/* Reads the whole file with plain read(2); *n gets its size. */
static unsigned char *plain_read(const char *path, size_t *n)
{
    struct stat sb;
    CU_ASSERT_FATAL(stat(path, &sb) == 0);
    *n = (size_t)sb.st_size;
    unsigned char *p = malloc(*n ? *n : 1);
    int fd = open(path, O_RDONLY);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(read(fd, p, *n) == (ssize_t)*n);
    close(fd);
    return p;
}

static zinc_aio *make_engine(size_t bs, int qd, int par, int single, int overlap)
{
    zinc_aio_opts o;
    zinc_aio_opts_default(&o);
    o.block_size = bs;
    o.queue_depth = qd;
    o.intra_op_parallelism = par;
    o.single_submit = single;
    o.overlap_events = overlap;
    zinc_aio *a = NULL;
    zinc_status st = zinc_aio_create(&o, &a);
    if (st != ZINC_OK) fprintf(stderr, "create: %s\n", zinc_last_error());
    CU_ASSERT_FATAL(st == ZINC_OK && a != NULL);
    return a;
}

/* One round trip: the file holds `pre` bytes of pattern 1; write n random
 * bytes at off from a buffer misaligned by bmis; read them back into a
 * buffer misaligned by rmis; check the read and the whole file (the bytes
 * around the write untouched). Returns 1 if all matched. */
static int round_trip(zinc_aio *a, const char *path, size_t n, uint64_t off, size_t bmis, size_t rmis,
                      uint64_t seed)
{
    size_t pre = (size_t)off + n + 5000;
    plain_fill(path, pre, 1);
    unsigned char *expect = malloc(pre);
    fill_random(expect, pre, 1);
    unsigned char *wb = zinc_aio_buf_alloc(n + bmis), *rb = zinc_aio_buf_alloc(n + rmis);
    CU_ASSERT_FATAL(wb && rb);
    fill_random(wb + bmis, n, seed);
    memcpy(expect + off, wb + bmis, n);
    int ok = 1;
    zinc_aio_file *f = NULL;
    zinc_status st = zinc_aio_open(a, path, ZINC_AIO_READ | ZINC_AIO_WRITE, &f);
    CU_ASSERT_FATAL(st == ZINC_OK);
    st = zinc_aio_pwrite(f, wb + bmis, n, off);
    if (st != ZINC_OK) fprintf(stderr, "pwrite: %s\n", zinc_last_error()), ok = 0;
    st = zinc_aio_pread(f, rb + rmis, n, off);
    if (st != ZINC_OK) fprintf(stderr, "pread: %s\n", zinc_last_error()), ok = 0;
    if (memcmp(rb + rmis, wb + bmis, n) != 0) ok = 0;
    CU_ASSERT(zinc_aio_close(f) == ZINC_OK);
    size_t got_n;
    unsigned char *got = plain_read(path, &got_n);
    if (got_n != pre || memcmp(got, expect, pre) != 0) ok = 0;
    if (!ok)
        fprintf(stderr, "round trip failed: %s n=%zu off=%llu bmis=%zu rmis=%zu\n", path, n,
                (unsigned long long)off, bmis, rmis);
    free(got);
    free(expect);
    zinc_aio_buf_free(wb);
    zinc_aio_buf_free(rb);
    return ok;
}

static const size_t k_sizes[] = {0, 1, 4095, 4096, MIB + 7, 9 * MIB};
#define N_SIZES (sizeof k_sizes / sizeof k_sizes[0])

/* Every size at: all aligned; buffer and offset off by the same amount (the
 * direct middle with buffered edges); buffer, offset and read buffer all
 * differently misaligned (all buffered). */
static int sweep(zinc_aio *a, const char *path, int big)
{
    int ok = 1;
    for (size_t i = 0; i < N_SIZES; i++) {
        size_t n = k_sizes[i];
        if (n > 2 * MIB && !big) continue;
        ok &= round_trip(a, path, n, 8192, 0, 0, i + 10);
        ok &= round_trip(a, path, n, 8192 + 100, 100, 100, i + 20);
        if (n <= 2 * MIB) ok &= round_trip(a, path, n, 4096 + 5, 3, 11, i + 30);
    }
    return ok;
}

static void test_round_trips_options(void)
{
    /* 64 KiB blocks so 1 MiB+7 spans many requests over the workers. */
    int combo = 0;
    for (int par = 1; par <= 3; par += 2)
        for (int qd = 1; qd <= 8; qd += 7)
            for (int single = 0; single <= 1; single++)
                for (int overlap = 0; overlap <= 1; overlap++, combo++) {
                    zinc_aio *a = make_engine(65536, qd, par, single, overlap);
                    /* 9 MiB in a quarter of the combinations keeps it fast */
                    int ok = sweep(a, tpath(g_dir, "rt.bin"), combo % 4 == 0 || (par == 3 && qd == 8));
                    if (!ok)
                        fprintf(stderr, "options par=%d qd=%d single=%d overlap=%d\n", par, qd, single, overlap);
                    CU_ASSERT(ok);
                    zinc_aio_destroy(a);
                }
}

static void test_round_trips_direct_state(void)
{
    zinc_aio *a = make_engine(MIB, 8, 1, 0, 1);
    zinc_aio_file *f = NULL;
    CU_ASSERT_FATAL(zinc_aio_open(a, tpath(g_dir, "d.bin"), ZINC_AIO_WRITE | ZINC_AIO_CREATE, &f) == ZINC_OK);
    CU_ASSERT(strcmp(zinc_aio_path(f), tpath(g_dir, "d.bin")) == 0);
    int direct = zinc_aio_is_direct(f);
    CU_ASSERT(zinc_aio_close(f) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_aio_open(a, tpath(g_dir, "d.bin"), ZINC_AIO_WRITE | ZINC_AIO_BUFFERED, &f) == ZINC_OK);
    CU_ASSERT(zinc_aio_is_direct(f) == 0);
    CU_ASSERT(zinc_aio_close(f) == ZINC_OK);
    fprintf(stderr, "[%s: O_DIRECT %s] ", g_dir, direct ? "in use" : "not supported");
    CU_ASSERT(sweep(a, tpath(g_dir, "d.bin"), 1));
    zinc_aio_destroy(a);
}

/* Odd block sizes: not a multiple of 4096, and smaller than a page. */
static void test_round_trips_odd_blocks(void)
{
    size_t bs[] = {10000, 512};
    for (int i = 0; i < 2; i++) {
        zinc_aio *a = make_engine(bs[i], 4, 2, 0, 1);
        CU_ASSERT(sweep(a, tpath(g_dir, "odd.bin"), 0));
        zinc_aio_destroy(a);
    }
}

static void test_round_trips_tmpfs(void)
{
    if (!g_shm[0]) {
        fprintf(stderr, "[no /dev/shm] ");
        return;
    }
    zinc_aio *a = make_engine(65536, 8, 3, 0, 1);
    CU_ASSERT(sweep(a, tpath(g_shm, "t.bin"), 1));
    zinc_aio_destroy(a);
}

/* Runs fn with stderr captured into a file; returns the text (malloc'd). */
static char *capture_stderr(void (*fn)(void *), void *arg)
{
    const char *cap = tpath(g_dir, "stderr.txt");
    fflush(stderr);
    int saved = dup(2);
    int fd = open(cap, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
    fn(arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    size_t n;
    unsigned char *t = plain_read(cap, &n);
    char *s = malloc(n + 1);
    memcpy(s, t, n);
    s[n] = '\0';
    free(t);
    return s;
}

static int count_substr(const char *s, const char *sub)
{
    int n = 0;
    for (const char *p = strstr(s, sub); p; p = strstr(p + 1, sub)) n++;
    return n;
}

/* Two files on an engine that cannot use O_DIRECT: both work buffered, one
 * warning in all. */
static void nodirect_body(void *arg)
{
    int *ok = arg;
    zinc_aio *a = make_engine(65536, 8, 2, 0, 1);
    zinc_aio_file *f1 = NULL, *f2 = NULL;
    *ok = zinc_aio_open(a, tpath(g_dir, "nd1.bin"), ZINC_AIO_WRITE | ZINC_AIO_CREATE, &f1) == ZINC_OK &&
          zinc_aio_open(a, tpath(g_dir, "nd2.bin"), ZINC_AIO_WRITE | ZINC_AIO_CREATE, &f2) == ZINC_OK &&
          !zinc_aio_is_direct(f1) && !zinc_aio_is_direct(f2);
    zinc_aio_close(f1);
    zinc_aio_close(f2);
    *ok &= sweep(a, tpath(g_dir, "nd1.bin"), 0);
    zinc_aio_destroy(a);
}

static void test_fallback_no_direct(void)
{
    setenv("ZINC_AIO_FAULT", "nodirect", 1);
    int ok = 0;
    char *err = capture_stderr(nodirect_body, &ok);
    unsetenv("ZINC_AIO_FAULT");
    CU_ASSERT(ok);
    CU_ASSERT(count_substr(err, "does not support O_DIRECT") == 1);
    CU_ASSERT(strstr(err, "nd1.bin") != NULL); /* names the path */
    free(err);
}

/* No rings (seccomp'd containers): pread/pwrite workers, same results. */
static void nouring_body(void *arg)
{
    int *ok = arg;
    zinc_aio *a = make_engine(65536, 4, 2, 0, 1);
    *ok = sweep(a, tpath(g_dir, "nu.bin"), 1);
    zinc_aio_destroy(a);
}

static void test_fallback_no_uring(void)
{
    setenv("ZINC_AIO_FAULT", "nouring", 1);
    int ok = 0;
    char *err = capture_stderr(nouring_body, &ok);
    unsetenv("ZINC_AIO_FAULT");
    CU_ASSERT(ok);
    CU_ASSERT(count_substr(err, "using pread/pwrite") == 1);
    free(err);
}

/* Short transfers continued and EINTR/EAGAIN retried, through the rings and
 * through the pread/pwrite workers (ZINC_AIO_FAULT short,retry). */
static void short_body(void *arg)
{
    int *ok = arg;
    const char *faults[] = {"short,retry", "short,retry,nouring"};
    *ok = 1;
    for (int i = 0; i < 2; i++) {
        setenv("ZINC_AIO_FAULT", faults[i], 1);
        zinc_aio *a = make_engine(MIB, 4, 2, i, 1);
        unsetenv("ZINC_AIO_FAULT");
        *ok &= sweep(a, tpath(g_dir, "short.bin"), 1);
        if (g_shm[0]) *ok &= sweep(a, tpath(g_shm, "short.bin"), 0);
        zinc_aio_destroy(a);
    }
}

static void test_short_and_retry(void)
{
    int ok = 0;
    char *err = capture_stderr(short_body, &ok);
    CU_ASSERT(ok);
    if (!ok) fputs(err, stderr);
    free(err);
}

/* Four regions written async and waited out of order, then a pipeline that
 * reads region i+1 while writing region i-1 (the offload pattern). */
static void test_async_out_of_order(void)
{
    zinc_aio *a = make_engine(65536, 8, 2, 0, 1);
    const size_t region = MIB + 4096;
    enum { N = 4 };
    unsigned char *src[N], *dst[N];
    zinc_aio_file *f = NULL;
    CU_ASSERT_FATAL(zinc_aio_open(a, tpath(g_dir, "async.bin"),
                                  ZINC_AIO_READ | ZINC_AIO_WRITE | ZINC_AIO_CREATE | ZINC_AIO_TRUNC, &f) == ZINC_OK);
    zinc_aio_req *r[N];
    for (int i = 0; i < N; i++) {
        src[i] = zinc_aio_buf_alloc(region);
        dst[i] = zinc_aio_buf_alloc(region);
        fill_random(src[i], region, 100 + (uint64_t)i);
        CU_ASSERT_FATAL(zinc_aio_pwrite_async(f, src[i], region, i * region, &r[i]) == ZINC_OK);
    }
    int order[N] = {3, 1, 0, 2};
    for (int k = 0; k < N; k++) {
        CU_ASSERT(zinc_aio_wait(&r[order[k]]) == ZINC_OK);
        CU_ASSERT(r[order[k]] == NULL);
    }
    uint64_t size = 0;
    CU_ASSERT(zinc_aio_size(f, &size) == ZINC_OK);
    CU_ASSERT(size == N * region);
    /* pipeline over a second file: read i+1 from f while writing i-1 to g */
    zinc_aio_file *g = NULL;
    CU_ASSERT_FATAL(zinc_aio_open(a, tpath(g_dir, "async2.bin"),
                                  ZINC_AIO_READ | ZINC_AIO_WRITE | ZINC_AIO_CREATE | ZINC_AIO_TRUNC, &g) == ZINC_OK);
    zinc_aio_req *rd = NULL, *wr = NULL;
    CU_ASSERT_FATAL(zinc_aio_pread_async(f, dst[0], region, 0, &rd) == ZINC_OK);
    for (int i = 0; i < N; i++) {
        CU_ASSERT(zinc_aio_wait(&rd) == ZINC_OK);
        if (i + 1 < N) CU_ASSERT_FATAL(zinc_aio_pread_async(f, dst[i + 1], region, (i + 1) * region, &rd) == ZINC_OK);
        if (wr) CU_ASSERT(zinc_aio_wait(&wr) == ZINC_OK);
        CU_ASSERT(memcmp(dst[i], src[i], region) == 0);
        CU_ASSERT_FATAL(zinc_aio_pwrite_async(g, dst[i], region, i * region, &wr) == ZINC_OK);
    }
    CU_ASSERT(zinc_aio_wait(&wr) == ZINC_OK);
    CU_ASSERT(zinc_aio_fsync(g) == ZINC_OK);
    CU_ASSERT(zinc_aio_close(g) == ZINC_OK);
    CU_ASSERT(zinc_aio_close(f) == ZINC_OK);
    size_t n;
    unsigned char *got = plain_read(tpath(g_dir, "async2.bin"), &n);
    CU_ASSERT(n == N * region);
    for (int i = 0; i < N && n == N * region; i++) CU_ASSERT(memcmp(got + i * region, src[i], region) == 0);
    free(got);
    for (int i = 0; i < N; i++) {
        zinc_aio_buf_free(src[i]);
        zinc_aio_buf_free(dst[i]);
    }
    CU_ASSERT(zinc_aio_wait(NULL) == ZINC_ERR_INVALID_ARG);
    zinc_aio_destroy(a);
}

/* Three threads, one engine, one file each plus a shared file split in
 * thirds. */
typedef struct {
    zinc_aio *a;
    zinc_aio_file *shared;
    int id;
    int ok;
} thr_arg;

static void *thr_main(void *p)
{
    thr_arg *t = p;
    const size_t n = 3 * MIB + 123;
    unsigned char *w = zinc_aio_buf_alloc(n), *r = zinc_aio_buf_alloc(n);
    char path[1024]; /* not tpath: its static buffers are not thread-safe */
    snprintf(path, sizeof path, "%s/thr%d.bin", g_dir, t->id);
    t->ok = 1;
    for (int rep = 0; rep < 3; rep++) {
        fill_random(w, n, (uint64_t)(t->id * 10 + rep));
        zinc_aio_file *f = NULL;
        t->ok &= zinc_aio_open(t->a, path, ZINC_AIO_READ | ZINC_AIO_WRITE | ZINC_AIO_CREATE, &f) ==
                 ZINC_OK;
        if (!f) break;
        t->ok &= zinc_aio_pwrite(f, w, n, 0) == ZINC_OK;
        t->ok &= zinc_aio_pread(f, r, n, 0) == ZINC_OK;
        t->ok &= memcmp(w, r, n) == 0;
        t->ok &= zinc_aio_close(f) == ZINC_OK;
        t->ok &= zinc_aio_pwrite(t->shared, w, MIB, (uint64_t)t->id * MIB) == ZINC_OK;
        t->ok &= zinc_aio_pread(t->shared, r, MIB, (uint64_t)t->id * MIB) == ZINC_OK;
        t->ok &= memcmp(w, r, MIB) == 0;
    }
    zinc_aio_buf_free(w);
    zinc_aio_buf_free(r);
    return NULL;
}

static void test_threads(void)
{
    zinc_aio *a = make_engine(65536, 8, 2, 0, 1);
    zinc_aio_file *sh = NULL;
    CU_ASSERT_FATAL(zinc_aio_open(a, tpath(g_dir, "shared.bin"), ZINC_AIO_READ | ZINC_AIO_WRITE | ZINC_AIO_CREATE,
                                  &sh) == ZINC_OK);
    pthread_t th[3];
    thr_arg args[3];
    for (int i = 0; i < 3; i++) {
        args[i] = (thr_arg){a, sh, i, 0};
        CU_ASSERT_FATAL(pthread_create(&th[i], NULL, thr_main, &args[i]) == 0);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT(args[i].ok);
    }
    CU_ASSERT(zinc_aio_close(sh) == ZINC_OK);
    zinc_aio_destroy(a);
}

/* Destroy right after starting writes waits for them (and closes the file,
 * frees the request, with warnings). */
static void destroy_body(void *arg)
{
    unsigned char *w = arg;
    zinc_aio *a = make_engine(65536, 2, 1, 1, 0);
    zinc_aio_file *f = NULL;
    CU_ASSERT_FATAL(zinc_aio_open(a, tpath(g_dir, "destroy.bin"), ZINC_AIO_WRITE | ZINC_AIO_CREATE | ZINC_AIO_TRUNC,
                                  &f) == ZINC_OK);
    zinc_aio_req *r = NULL;
    CU_ASSERT_FATAL(zinc_aio_pwrite_async(f, w, 9 * MIB, 0, &r) == ZINC_OK);
    zinc_aio_destroy(a);
}

static void test_destroy_in_flight(void)
{
    unsigned char *w = zinc_aio_buf_alloc(9 * MIB);
    fill_random(w, 9 * MIB, 77);
    char *err = capture_stderr(destroy_body, w);
    CU_ASSERT(strstr(err, "never waited") != NULL);
    free(err);
    size_t n;
    unsigned char *got = plain_read(tpath(g_dir, "destroy.bin"), &n);
    CU_ASSERT(n == 9 * MIB && memcmp(got, w, 9 * MIB) == 0);
    free(got);
    zinc_aio_buf_free(w);
    zinc_aio_destroy(NULL);
}

/* ---- errors ---------------------------------------------------------------- */

#define ASSERT_DETAIL(sub)                                                                     \
    do {                                                                                       \
        if (!strstr(zinc_last_error(), (sub)))                                                 \
            fprintf(stderr, "\n  detail \"%s\" lacks \"%s\"\n", zinc_last_error(), (sub));     \
        CU_ASSERT(strstr(zinc_last_error(), (sub)) != NULL);                                   \
    } while (0)

static void test_err_missing(void)
{
    zinc_aio *a = make_engine(MIB, 8, 1, 0, 1);
    zinc_aio_file *f = (zinc_aio_file *)1;
    const char *p = tpath(g_dir, "no-such-file.bin");
    CU_ASSERT(zinc_aio_open(a, p, ZINC_AIO_READ, &f) == ZINC_ERR_IO);
    CU_ASSERT(f == NULL);
    ASSERT_DETAIL(p);
    ASSERT_DETAIL("No such file or directory");
    p = tpath(g_dir, "no-such-dir/x.bin");
    CU_ASSERT(zinc_aio_open(a, p, ZINC_AIO_WRITE | ZINC_AIO_CREATE, &f) == ZINC_ERR_IO);
    ASSERT_DETAIL(p);
    ASSERT_DETAIL("No such file or directory");
    CU_ASSERT(zinc_aio_open(a, g_dir, ZINC_AIO_READ, &f) == ZINC_ERR_IO); /* a folder */
    ASSERT_DETAIL(g_dir);
    CU_ASSERT(zinc_aio_open(a, p, 0, &f) == ZINC_ERR_INVALID_ARG);
    zinc_aio_destroy(a);
}

static void test_err_short_read(void)
{
    zinc_aio *a = make_engine(MIB, 8, 3, 0, 1);
    const char *p = tpath(g_dir, "short.bin");
    plain_fill(p, 3 * MIB + 100, 5);
    zinc_aio_file *f = NULL;
    CU_ASSERT_FATAL(zinc_aio_open(a, p, ZINC_AIO_READ, &f) == ZINC_OK);
    unsigned char *b = zinc_aio_buf_alloc(8 * MIB);
    int direct = zinc_aio_is_direct(f);
    CU_ASSERT(zinc_aio_pread(f, b, 8 * MIB, 0) == ZINC_ERR_IO); /* ends inside */
    ASSERT_DETAIL("short read");
    ASSERT_DETAIL(p);
    ASSERT_DETAIL("offset 3145828"); /* the end of the file, the lowest failure */
    CU_ASSERT(zinc_aio_pread(f, b, 4096, 4 * MIB) == ZINC_ERR_IO); /* starts beyond */
    ASSERT_DETAIL("short read");
    CU_ASSERT(zinc_aio_pread(f, b + 1, 10, 3 * MIB + 95) == ZINC_ERR_IO); /* buffered edge */
    ASSERT_DETAIL("short read");
    CU_ASSERT(zinc_aio_pread(f, b, 3 * MIB + 100, 0) == ZINC_OK); /* exactly all */
    CU_ASSERT(zinc_aio_pread(f, b, 0, 10 * MIB) == ZINC_OK);      /* nothing */
    CU_ASSERT(zinc_aio_is_direct(f) == direct); /* EOF is not "O_DIRECT refused" */
    zinc_aio_buf_free(b);
    CU_ASSERT(zinc_aio_close(f) == ZINC_OK);
    zinc_aio_destroy(a);
}

static void test_err_read_only(void)
{
    zinc_aio *a = make_engine(MIB, 8, 1, 0, 1);
    const char *p = tpath(g_dir, "ro.bin");
    plain_fill(p, 8192, 6);
    zinc_aio_file *f = NULL;
    unsigned char *b = zinc_aio_buf_alloc(8192);
    CU_ASSERT_FATAL(zinc_aio_open(a, p, ZINC_AIO_READ, &f) == ZINC_OK);
    CU_ASSERT(zinc_aio_pwrite(f, b, 4096, 0) == ZINC_ERR_INVALID_ARG);
    ASSERT_DETAIL(p);
    ASSERT_DETAIL("not open for writing");
    CU_ASSERT(zinc_aio_close(f) == ZINC_OK);
    CU_ASSERT_FATAL(zinc_aio_open(a, p, ZINC_AIO_WRITE, &f) == ZINC_OK);
    CU_ASSERT(zinc_aio_pread(f, b, 4096, 0) == ZINC_ERR_INVALID_ARG);
    ASSERT_DETAIL("not open for reading");
    CU_ASSERT(zinc_aio_close(f) == ZINC_OK);
    /* a file without write permission: only meaningful when not root */
    CU_ASSERT(chmod(p, 0444) == 0);
    if (geteuid() != 0) {
        CU_ASSERT(zinc_aio_open(a, p, ZINC_AIO_WRITE, &f) == ZINC_ERR_IO);
        ASSERT_DETAIL(p);
        ASSERT_DETAIL("Permission denied");
    }
    zinc_aio_buf_free(b);
    zinc_aio_destroy(a);
}

/* ENOSPC through the fault hook: 1 MiB may be written, then the disk is
 * "full". The first failing request starts at byte 1 MiB. */
static void test_err_enospc_fault(void)
{
    setenv("ZINC_AIO_FAULT", "enospc:1048576", 1);
    zinc_aio *a = make_engine(MIB, 8, 1, 0, 1);
    unsetenv("ZINC_AIO_FAULT");
    const char *p = tpath(g_dir, "full.bin");
    zinc_aio_file *f = NULL;
    CU_ASSERT_FATAL(zinc_aio_open(a, p, ZINC_AIO_WRITE | ZINC_AIO_CREATE | ZINC_AIO_TRUNC, &f) == ZINC_OK);
    unsigned char *b = zinc_aio_buf_alloc(4 * MIB);
    CU_ASSERT(zinc_aio_pwrite(f, b, 4 * MIB, 0) == ZINC_ERR_IO);
    char want[1200];
    snprintf(want, sizeof want, "%s: write at offset 1048576: No space left on device", p);
    CU_ASSERT_STRING_EQUAL(zinc_last_error(), want);
    CU_ASSERT(zinc_aio_pwrite(f, b, 4096, 8 * MIB) == ZINC_ERR_IO);
    ASSERT_DETAIL("offset 8388608: No space left on device");
    CU_ASSERT(zinc_aio_close(f) == ZINC_OK);
    zinc_aio_destroy(a);
    /* same through the pread/pwrite workers, and EIO on reads */
    setenv("ZINC_AIO_FAULT", "nouring,enospc:0", 1);
    zinc_aio_create(NULL, &a);
    unsetenv("ZINC_AIO_FAULT");
    CU_ASSERT_FATAL(a != NULL);
    CU_ASSERT_FATAL(zinc_aio_open(a, p, ZINC_AIO_WRITE, &f) == ZINC_OK);
    CU_ASSERT(zinc_aio_pwrite(f, b + 1, 100, 7) == ZINC_ERR_IO);
    ASSERT_DETAIL("write at offset 7: No space left on device");
    CU_ASSERT(zinc_aio_close(f) == ZINC_OK);
    zinc_aio_destroy(a);
    setenv("ZINC_AIO_FAULT", "eio:4096", 1);
    a = make_engine(4096, 1, 1, 1, 0);
    unsetenv("ZINC_AIO_FAULT");
    plain_fill(p, 3 * 4096, 3);
    CU_ASSERT_FATAL(zinc_aio_open(a, p, ZINC_AIO_READ, &f) == ZINC_OK);
    CU_ASSERT(zinc_aio_pread(f, b, 3 * 4096, 0) == ZINC_ERR_IO);
    ASSERT_DETAIL("read at offset 4096: Input/output error");
    ASSERT_DETAIL(p);
    CU_ASSERT(zinc_aio_close(f) == ZINC_OK);
    zinc_aio_destroy(a);
    zinc_aio_buf_free(b);
    /* a malformed hook is refused */
    setenv("ZINC_AIO_FAULT", "enospc:lots", 1);
    a = (zinc_aio *)1;
    CU_ASSERT(zinc_aio_create(NULL, &a) == ZINC_ERR_INVALID_ARG);
    CU_ASSERT(a == NULL);
    ASSERT_DETAIL("ZINC_AIO_FAULT");
    unsetenv("ZINC_AIO_FAULT");
}

/* A real full file system, when this process may mount a 1 MiB tmpfs. */
static void test_err_enospc_tmpfs(void)
{
    char mnt[600];
    snprintf(mnt, sizeof mnt, "%s/mnt", g_dir);
    if (mkdir(mnt, 0755) != 0 || mount("zinc-aio-test", mnt, "tmpfs", 0, "size=1m") != 0) {
        fprintf(stderr, "[mount not permitted: covered by ZINC_AIO_FAULT only] ");
        rmdir(mnt);
        return;
    }
    zinc_aio *a = make_engine(65536, 8, 2, 0, 1);
    const char *p = tpath(mnt, "opt.swp");
    zinc_aio_file *f = NULL;
    unsigned char *b = zinc_aio_buf_alloc(4 * MIB);
    CU_ASSERT_FATAL(zinc_aio_open(a, p, ZINC_AIO_WRITE | ZINC_AIO_CREATE, &f) == ZINC_OK);
    CU_ASSERT(zinc_aio_pwrite(f, b, 4 * MIB, 0) == ZINC_ERR_IO);
    ASSERT_DETAIL(p);
    ASSERT_DETAIL(": write at offset ");
    ASSERT_DETAIL("No space left on device");
    CU_ASSERT(zinc_aio_close(f) == ZINC_OK);
    zinc_aio_destroy(a);
    zinc_aio_buf_free(b);
    umount(mnt);
    rmdir(mnt);
}

static void test_err_args(void)
{
    zinc_aio_opts o;
    zinc_aio_opts_default(&o);
    CU_ASSERT(o.block_size == 1048576 && o.queue_depth == 8 && o.intra_op_parallelism == 1 && !o.single_submit &&
              o.overlap_events);
    zinc_aio *a = NULL;
    o.queue_depth = 0;
    CU_ASSERT(zinc_aio_create(&o, &a) == ZINC_ERR_INVALID_ARG);
    ASSERT_DETAIL("aio.queue_depth");
    zinc_aio_opts_default(&o);
    o.block_size = 0;
    CU_ASSERT(zinc_aio_create(&o, &a) == ZINC_ERR_INVALID_ARG);
    ASSERT_DETAIL("aio.block_size");
    zinc_aio_opts_default(&o);
    o.intra_op_parallelism = 0;
    CU_ASSERT(zinc_aio_create(&o, &a) == ZINC_ERR_INVALID_ARG);
    ASSERT_DETAIL("aio.intra_op_parallelism");
    CU_ASSERT(zinc_aio_close(NULL) == ZINC_OK);
    void *p = zinc_aio_buf_alloc(1);
    CU_ASSERT(p != NULL && ((uintptr_t)p % ZINC_AIO_ALIGN) == 0 && ((unsigned char *)p)[4095] == 0);
    zinc_aio_buf_free(p);
    zinc_aio_buf_free(NULL);
}

/* ---- setup ------------------------------------------------------------------ */

static void rm_rf(const char *dir)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/zinc-aio-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror(g_dir);
        return 1;
    }
    strcpy(g_shm, "/dev/shm/zinc-aio-XXXXXX");
    if (!mkdtemp(g_shm)) g_shm[0] = '\0';

    if (CU_initialize_registry() != CUE_SUCCESS) return 1;
    CU_pSuite s = CU_add_suite("aio", NULL, NULL);
    CU_add_test(s, "round trips: every option combination", test_round_trips_options);
    CU_add_test(s, "round trips: default options, O_DIRECT state", test_round_trips_direct_state);
    CU_add_test(s, "round trips: odd block sizes", test_round_trips_odd_blocks);
    CU_add_test(s, "round trips: tmpfs", test_round_trips_tmpfs);
    CU_add_test(s, "fallback: no O_DIRECT, one warning", test_fallback_no_direct);
    CU_add_test(s, "fallback: no io_uring", test_fallback_no_uring);
    CU_add_test(s, "short transfers continued, EINTR/EAGAIN retried", test_short_and_retry);
    CU_add_test(s, "async requests waited out of order", test_async_out_of_order);
    CU_add_test(s, "threads sharing an engine", test_threads);
    CU_add_test(s, "destroy waits for work in flight", test_destroy_in_flight);
    CU_add_test(s, "error: missing file or folder", test_err_missing);
    CU_add_test(s, "error: short read", test_err_short_read);
    CU_add_test(s, "error: read-only", test_err_read_only);
    CU_add_test(s, "error: ENOSPC and EIO by fault injection", test_err_enospc_fault);
    CU_add_test(s, "error: ENOSPC on a 1 MiB tmpfs", test_err_enospc_tmpfs);
    CU_add_test(s, "error: arguments", test_err_args);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures();
    CU_cleanup_registry();
    rm_rf(g_dir);
    if (g_shm[0]) rm_rf(g_shm);
    return fails ? 1 : 0;
}
