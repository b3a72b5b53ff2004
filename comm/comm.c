/* comm.c - the backend-independent half of zinc's communication layer.
 *
 * Every op is started nonblocking by the backend (vtable in comm_int.h) and,
 * when the caller passes no handle, completed right here by the same wait that
 * zinc_comm_wait() uses. That wait polls the backend's test() with a backoff:
 * a short spin, then sched_yield() (oversubscribed ranks on few cores hand the
 * CPU to peers that have work), then nanosleeps growing to 1 ms so that a rank
 * waiting for a slow peer costs almost nothing.
 *
 * Sleeping has a price: MPI moves a large message only while both sides are
 * inside MPI calls, so a rank that sleeps while its data is moving stalls the
 * pipeline (a 4-rank 40 MB all_reduce on 2 cores took 1.6 s instead of 0.05 s
 * with 1 ms sleeps). So the wait polls actively for as long as the op's bytes
 * take at 0.5 GB/s (plus 2 ms) once every rank has entered the op, and
 * sleeps only before that or after. Collectives of 256 KiB or more learn when
 * every rank has entered from a nonblocking barrier the backend starts right
 * after the op (same order on every rank, so it matches); smaller ops and
 * send/recv simply count the window from the start of the wait.
 *
 * Hang diagnostics (comm_diag.c): every collective gets a number on its
 * group and a place in the group's ring of recent ones; a waiting rank
 * answers other ranks' questions about its ring, and a wait nearing its
 * timeout asks them, so that the timeout's error names the ranks that never
 * entered the op, what they wait in instead, and where the rings disagree.
 *
 * Past the group's timeout the wait gives up with ZINC_ERR_TIMEOUT; the
 * request is then stale: it goes on the group's stale list, is tested again
 * by every later wait on the group (the backend keeps progressing it; a late
 * peer completes it) and is released at destroy. A stale op's buffers must stay valid until the op completes or the
 * group is destroyed, since the backend may still write them; in practice a
 * timeout means the job is going down.
 *
 * Byte counters count the algorithmic bytes per rank of the ring algorithms
 * (p ranks, n elements of sz bytes, counted when the op starts):
 *   all_reduce      floor(2*(p-1)*n*sz / p)   (exact when p divides 2*n*sz)
 *   reduce_scatter  (p-1)*n*sz                (n = the per-rank block)
 *   all_gather      (p-1)*n*sz                (n = the per-rank block)
 *   broadcast       n*sz on every rank (0 when p == 1: nothing moves)
 *   send, recv      n*sz
 *   barrier         0
 * all computed in uint64.
 *
 * Timeouts: zinc_comm_set_timeout(c, s) with s <= 0 (or NaN) disables the
 * bound for that group. The world's default is 300 s or ZINC_COMM_TIMEOUT_S;
 * split groups inherit their parent's timeout at creation.
 *
 * Destroy order: destroy every split group (and mesh) before the world; the
 * world's destroy finalizes the backend, after which other groups are
 * invalid (programmer error, not detected).
 *
 * Device buffers (zinc_comm_set_device): an op whose buffers the group's
 * device reports as device memory goes to the backend untouched when the
 * backend takes device buffers of that group (c->dev_native: nccl) and all of
 * the op's buffers are device memory. Otherwise it is staged: the device
 * inputs are copied into a pinned host buffer (dev->copy to host memory is
 * synchronous and ordered after earlier device work), the backend runs on
 * host buffers, and the wait that completes the op copies the result back to
 * the device buffer (again synchronous, so the data is in place when the
 * wait returns). Each op uses at most one staging buffer and one copy back:
 * all_reduce and all_gather run in place on the staging buffer (or on the
 * host recv buffer when only send is device memory); reduce_scatter stages
 * send and recv side by side; broadcast copies in on the root and back on the
 * others. Staging buffers come from a pool per world (shared by its splits):
 * pinned allocations are slow, so up to COMM_POOL_MAX free buffers are kept
 * (best fit on reuse, sizes rounded up to 64 KiB) and freed at the world's
 * destroy. An op's buffer returns to the pool when its wait completes (or
 * fails); a stale op keeps it until it is released.
 */
#include <math.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_int.h"
#include "zinc/log.h"

#define COMM_DEFAULT_TIMEOUT_S 300.0
#define COMM_SPIN_TESTS 64         /* tests before yielding */
#define COMM_YIELD_S 2e-3          /* then yield at least this long, */
#define COMM_YIELD_S_PER_BYTE 2e-9 /* plus this per byte moved (0.5 GB/s) */
#define COMM_SLEEP_MIN_NS 1000L
#define COMM_SLEEP_MAX_NS 1000000L /* 1 ms */
#define COMM_ARRIVAL_MIN_BYTES (256u << 10) /* collectives this big track arrival */
#define COMM_POOL_MAX 8                     /* free staging buffers kept per world */
#define COMM_STAGE_ROUND ((size_t)64 << 10)  /* staging sizes round up to this */

struct comm_stage_pool {
    struct {
        void *p;
        size_t bytes;
        const zinc_device *dev; /* frees it */
    } free_bufs[COMM_POOL_MAX];
    int n_free;
};

static double comm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The default timeout: ZINC_COMM_TIMEOUT_S if it parses as a number, else
 * 300 s. */
static double comm_default_timeout(void)
{
    const char *s = getenv("ZINC_COMM_TIMEOUT_S");
    if (!s || !*s) return COMM_DEFAULT_TIMEOUT_S;
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || isnan(v)) {
        ZINC_WARN("ZINC_COMM_TIMEOUT_S=%s is not a number of seconds; using %g s", s,
                  COMM_DEFAULT_TIMEOUT_S);
        return COMM_DEFAULT_TIMEOUT_S;
    }
    return v;
}

static const comm_backend *comm_find_backend(const char *name)
{
#ifdef ZINC_HAVE_NCCL
    /* auto: the nccl backend, which falls back to staging through MPI on
     * every rank when any node has fewer GPUs than ranks (comm_nccl.c) */
    comm_nccl_auto = name && !strcmp(name, "auto");
    if (name && (!strcmp(name, "nccl") || !strcmp(name, "auto"))) return &comm_backend_nccl;
#endif
    if (!name || !strcmp(name, "auto") || !strcmp(name, "mpi")) return &comm_backend_mpi;
    return NULL;
}

zinc_status zinc_comm_init_world(const char *backend, int *argc, char ***argv, zinc_comm **world)
{
    if (!world) return zinc_error(ZINC_ERR_INVALID_ARG, "comm init: world is NULL");
    *world = NULL;
    const comm_backend *be = comm_find_backend(backend);
    if (!be) {
        if (!strcmp(backend, "nccl"))
            return zinc_error(ZINC_ERR_UNSUPPORTED,
                              "comm_backend nccl: not built in (this build has: mpi)");
        return zinc_error(ZINC_ERR_UNSUPPORTED,
                          "comm_backend %s: unknown backend (expected auto, mpi or nccl)",
                          backend);
    }
    zinc_comm *c = calloc(1, sizeof *c);
    comm_stage_pool *pool = calloc(1, sizeof *pool);
    if (!c || !pool) {
        free(c);
        free(pool);
        return zinc_error(ZINC_ERR_NOMEM, "comm init: out of memory");
    }
    c->pool = pool;
    c->be = be;
    c->is_world = 1;
    snprintf(c->name, sizeof c->name, "world");
    c->timeout_s = comm_default_timeout();
    zinc_status st = be->init_world(argc, argv, c);
    if (st != ZINC_OK) {
        free(pool);
        free(c);
        return st;
    }
    st = comm_diag_world_init(c);
    if (st != ZINC_OK) {
        zinc_comm_destroy(c);
        return st;
    }
    *world = c;
    return ZINC_OK;
}

/* ---- staging pool --------------------------------------------------------- */

/* A staging buffer of at least bytes for dev: the smallest free one that
 * fits, else a new one. */
static zinc_status comm_stage_get(zinc_comm *c, const char *op, const zinc_device *dev,
                                  size_t bytes, void **p, size_t *cap)
{
    comm_stage_pool *pool = c->pool;
    int best = -1;
    for (int i = 0; i < pool->n_free; i++)
        if (pool->free_bufs[i].dev == dev && pool->free_bufs[i].bytes >= bytes &&
            (best < 0 || pool->free_bufs[i].bytes < pool->free_bufs[best].bytes))
            best = i;
    if (best >= 0) {
        *p = pool->free_bufs[best].p;
        *cap = pool->free_bufs[best].bytes;
        pool->free_bufs[best] = pool->free_bufs[--pool->n_free];
        return ZINC_OK;
    }
    size_t want = bytes;
    if (want <= SIZE_MAX - COMM_STAGE_ROUND)
        want = (want + COMM_STAGE_ROUND - 1) / COMM_STAGE_ROUND * COMM_STAGE_ROUND;
    void *q = dev->host_alloc(want);
    if (!q && pool->n_free) { /* give the cached buffers back and try once more */
        for (int i = 0; i < pool->n_free; i++)
            pool->free_bufs[i].dev->host_free(pool->free_bufs[i].p);
        pool->n_free = 0;
        q = dev->host_alloc(want);
    }
    if (!q) {
        char why[256];
        snprintf(why, sizeof why, "%s", zinc_last_error());
        return zinc_error(ZINC_ERR_NOMEM,
                          "%s on group %s: no pinned host memory for a %zu-byte staging buffer "
                          "of device data (%s)", op, c->name, want, why);
    }
    *p = q;
    *cap = want;
    return ZINC_OK;
}

/* Returns h's staging buffer to the pool; the smallest buffer goes when the
 * pool is full. */
static void comm_stage_put(zinc_comm_handle *h)
{
    if (!h->stage) return;
    comm_stage_pool *pool = h->comm->pool;
    void *p = h->stage;
    size_t bytes = h->stage_bytes;
    const zinc_device *dev = h->stage_dev;
    h->stage = NULL;
    if (pool->n_free == COMM_POOL_MAX) {
        int small = 0;
        for (int i = 1; i < COMM_POOL_MAX; i++)
            if (pool->free_bufs[i].bytes < pool->free_bufs[small].bytes) small = i;
        if (pool->free_bufs[small].bytes >= bytes) { /* the returned one is the smallest */
            dev->host_free(p);
            return;
        }
        pool->free_bufs[small].dev->host_free(pool->free_bufs[small].p);
        pool->free_bufs[small] = pool->free_bufs[--pool->n_free];
    }
    pool->free_bufs[pool->n_free].p = p;
    pool->free_bufs[pool->n_free].bytes = bytes;
    pool->free_bufs[pool->n_free].dev = dev;
    pool->n_free++;
}

static void comm_pool_destroy(comm_stage_pool *pool)
{
    if (!pool) return;
    for (int i = 0; i < pool->n_free; i++)
        pool->free_bufs[i].dev->host_free(pool->free_bufs[i].p);
    free(pool);
}

/* Frees a handle that is done (or never started), returning its staging
 * buffer. */
static void comm_handle_free(zinc_comm_handle *h)
{
    if (!h) return;
    comm_stage_put(h);
    free(h);
}

/* Tests every stale request of c once and frees the finished ones. Errors of
 * stale requests are dropped: their op already failed with a timeout. */
static void comm_reap_stale(zinc_comm *c)
{
    zinc_comm_handle **pp = &c->stale;
    while (*pp) {
        zinc_comm_handle *h = *pp;
        int done = 0;
        int arrived = 0;
        zinc_status st = c->be->test(h, &done, &arrived);
        if (st != ZINC_OK || done) {
            *pp = h->next;
            c->n_stale--;
            comm_handle_free(h);
        } else {
            pp = &h->next;
        }
    }
}

void zinc_comm_destroy(zinc_comm *c)
{
    if (!c) return;
    int n_leaked = 0;
    while (c->stale) {
        zinc_comm_handle *h = c->stale;
        c->stale = h->next;
        if (c->be->release_stale(h))
            comm_handle_free(h);
        else
            n_leaked++; /* the backend may still write h->impl and h->stage: never free them */
    }
    if (n_leaked)
        ZINC_WARN("comm group %s: %d timed-out operation(s) never completed; leaking them",
                  c->name, n_leaked);
    if (c->is_world) comm_pool_destroy(c->pool);
    c->pool = NULL;
    comm_diag_unregister(c);
    c->be->destroy(c);
    free(c);
}

int zinc_comm_rank(const zinc_comm *c) { return c ? c->rank : -1; }
int zinc_comm_size(const zinc_comm *c) { return c ? c->size : 0; }
int zinc_comm_local_rank(const zinc_comm *c) { return c ? c->local_rank : -1; }
int zinc_comm_local_size(const zinc_comm *c) { return c ? c->local_size : 0; }
const char *zinc_comm_name(const zinc_comm *c) { return c ? c->name : "(null)"; }

void zinc_comm_set_timeout(zinc_comm *c, double seconds)
{
    if (c) c->timeout_s = seconds;
}

zinc_status zinc_comm_set_device(zinc_comm *c, const zinc_device *dev)
{
    if (!c) return zinc_error(ZINC_ERR_INVALID_ARG, "comm set_device: group is NULL");
    if (dev && (!dev->is_device_ptr || !dev->copy || !dev->host_alloc || !dev->host_free))
        return zinc_error(ZINC_ERR_INVALID_ARG,
                          "comm set_device on group %s: device %s lacks is_device_ptr, copy or "
                          "host memory", c->name, dev->name ? dev->name : "(unnamed)");
    const zinc_device *old = c->dev;
    c->dev = dev;
    if (!c->be->set_device) {
        c->dev_native = 0;
        return ZINC_OK;
    }
    zinc_status st = c->be->set_device(c, dev);
    if (st != ZINC_OK) {
        c->dev = old;
        return st;
    }
    return ZINC_OK;
}

uint64_t zinc_comm_bytes(const zinc_comm *c) { return c ? c->bytes : 0; }

static const char *const op_names[ZINC_COMM_N_OPS] = {
    "all_reduce", "reduce_scatter", "all_gather", "broadcast", "send", "recv", "barrier",
};

const char *zinc_comm_op_name(zinc_comm_op op)
{
    return (unsigned)op < ZINC_COMM_N_OPS ? op_names[op] : "?";
}

uint64_t zinc_comm_bytes_op(const zinc_comm *c, zinc_comm_op op)
{
    return c && (unsigned)op < ZINC_COMM_N_OPS ? c->op_bytes[op] : 0;
}

void zinc_comm_reset_bytes(zinc_comm *c)
{
    if (!c) return;
    c->bytes = 0;
    memset(c->op_bytes, 0, sizeof c->op_bytes);
}

/* ---- argument checks -------------------------------------------------- */

static zinc_status comm_check(const zinc_comm *c, const char *op)
{
    if (!c) return zinc_error(ZINC_ERR_INVALID_ARG, "comm %s: group is NULL", op);
    return ZINC_OK;
}

static zinc_status comm_check_dtype(const zinc_comm *c, const char *op, zinc_dtype dt)
{
    if (zinc_dtype_size(dt) == 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s on group %s: unknown dtype %d", op,
                          c->name, (int)dt);
    return ZINC_OK;
}

static zinc_status comm_check_redop(const zinc_comm *c, const char *op, zinc_redop rop)
{
    if (rop != ZINC_REDOP_SUM && rop != ZINC_REDOP_MAX && rop != ZINC_REDOP_MIN)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s on group %s: unknown reduction op %d", op,
                          c->name, (int)rop);
    return ZINC_OK;
}

/* n_per*mult elements of sz bytes must fit in size_t. */
static zinc_status comm_check_count(const zinc_comm *c, const char *op, size_t n, size_t mult,
                                    size_t sz)
{
    if (n && mult && n > SIZE_MAX / mult / sz)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s on group %s: %zu elements x %zu overflows",
                          op, c->name, n, mult);
    return ZINC_OK;
}

static zinc_status comm_check_buf(const zinc_comm *c, const char *op, const char *what,
                                  const void *p, size_t n)
{
    if (n && !p)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s on group %s: %s is NULL with n = %zu", op,
                          c->name, what, n);
    return ZINC_OK;
}

/* Nonzero when [a, a+na) and [b, b+nb) share a byte. */
static int comm_overlap(const void *a, size_t na, const void *b, size_t nb)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return na && nb && x < y + nb && y < x + na;
}

static zinc_status comm_check_rank(const zinc_comm *c, const char *op, const char *what, int r)
{
    if (r < 0 || r >= c->size)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s on group %s: %s %d is not in [0, %d)", op,
                          c->name, what, r, c->size);
    return ZINC_OK;
}

/* ---- handles and the bounded wait ------------------------------------- */

/* A handle for an op of payload bytes moving n_bytes (algorithmic, per
 * rank). Collectives big enough for sleeping to matter also track the
 * arrival of all ranks. */
static zinc_status comm_handle_new(zinc_comm *c, const char *op, int p2p, uint64_t payload,
                                   uint64_t n_bytes, zinc_comm_handle **out)
{
    zinc_comm_handle *h = calloc(1, sizeof *h + c->be->handle_bytes);
    if (!h) return zinc_error(ZINC_ERR_NOMEM, "%s on group %s: out of memory", op, c->name);
    h->comm = c;
    h->op = op;
    h->p2p = p2p;
    h->payload = payload;
    h->n_bytes = n_bytes;
    h->root = -1;
    for (int i = 0; i < ZINC_COMM_N_OPS; i++)
        if (!strcmp(op, op_names[i])) h->kind = i;
    h->track_arrival = !p2p && c->size > 1 && n_bytes >= COMM_ARRIVAL_MIN_BYTES;
    *out = h;
    return ZINC_OK;
}

/* Nonzero when the n-byte buffer p is device memory of c's device. */
static int comm_is_dev(const zinc_comm *c, const void *p, size_t bytes)
{
    return c->dev && bytes && p && c->dev->is_device_ptr(p);
}

/* Hands h the op's device buffers untouched (the backend takes them). */
static void comm_go_native(zinc_comm_handle *h)
{
    h->device = 1;
    h->track_arrival = 0;
}

/* Gives h a staging buffer of at least bytes. */
static zinc_status comm_stage(zinc_comm *c, zinc_comm_handle *h, size_t bytes, void **p)
{
    zinc_status st = comm_stage_get(c, h->op, c->dev, bytes, &h->stage, &h->stage_bytes);
    if (st != ZINC_OK) return st;
    h->stage_dev = c->dev;
    *p = h->stage;
    return ZINC_OK;
}

/* The op completes by copying bytes from src (in the staging buffer) to the
 * device buffer dst. */
static void comm_copy_back(zinc_comm_handle *h, void *dst, const void *src, size_t bytes)
{
    h->copy_dst = dst;
    h->copy_src = src;
    h->copy_bytes = bytes;
}

/* How long before the timeout the other ranks are asked (comm_diag.c):
 * 20% of it, at least 50 ms and at most 5 s. */
static double comm_diag_window(double timeout)
{
    double w = timeout * 0.2;
    return w < 0.05 ? 0.05 : w > 5.0 ? 5.0 : w;
}

static void comm_sleep_ns(long ns)
{
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

zinc_status zinc_comm_test(zinc_comm_handle **hp, int *done)
{
    *done = 1;
    if (!hp || !*hp) return ZINC_OK;
    zinc_comm_handle *h = *hp;
    int d = 0, arrived = 0;
    zinc_status st = h->comm->be->test(h, &d, &arrived);
    if (st == ZINC_OK && !d) {
        *done = 0;
        return ZINC_OK;
    }
    if (st == ZINC_OK && h->copy_bytes) h->stage_dev->copy(h->copy_dst, h->copy_src, h->copy_bytes);
    *hp = NULL;
    comm_handle_free(h); /* the backend released the request (done or failed) */
    return st;
}

zinc_status zinc_comm_wait(zinc_comm_handle **hp)
{
    if (!hp || !*hp) return ZINC_OK;
    zinc_comm_handle *h = *hp;
    *hp = NULL;
    zinc_comm *c = h->comm;
    if (c->stale) comm_reap_stale(c);

    double timeout = c->timeout_s;
    int bounded = timeout > 0; /* false for <= 0 and NaN */
    double t0 = comm_now();
    /* Poll actively (spin, then yield) for 2 ms, and for the whole expected
     * transfer time once every rank is known to be in the op (from the start
     * when the op does not track arrival); sleep otherwise. */
    double busy_s = COMM_YIELD_S + COMM_YIELD_S_PER_BYTE * (double)h->n_bytes;
    int all_in = !h->track_arrival;
    double t_active = t0, active_s = all_in ? busy_s : COMM_YIELD_S;
    long n_tests = 0, sleep_ns = COMM_SLEEP_MIN_NS;
    /* Near the deadline the other ranks are asked what they are doing
     * (comm_diag.c), so that the timeout can name the stuck ones. */
    double diag_at = timeout - comm_diag_window(timeout);
    comm_diag_query *q = NULL;
    comm_diag_wait_begin(h, t0);
    for (;;) {
        int done = 0, arrived = 0;
        zinc_status st = c->be->test(h, &done, &arrived);
        if (st != ZINC_OK || done) {
            if (st == ZINC_OK && h->copy_bytes)
                h->stage_dev->copy(h->copy_dst, h->copy_src, h->copy_bytes);
            comm_diag_wait_end(h, st == ZINC_OK, comm_now());
            comm_diag_query_free(q);
            comm_handle_free(h);
            return st;
        }
        if (!all_in && arrived) { /* the data starts moving now */
            all_in = 1;
            t_active = comm_now();
            active_s = busy_s;
            n_tests = 0;
            sleep_ns = COMM_SLEEP_MIN_NS;
        }
        if (++n_tests <= COMM_SPIN_TESTS) continue;
        double t = comm_now(), el = t - t0;
        comm_diag_poll(t);
        if (bounded && !q && el >= diag_at) q = comm_diag_start(c, h);
        comm_diag_progress(q);
        if (bounded && el >= timeout) {
            const char *note = c->be->timed_out ? c->be->timed_out(h) : NULL;
            char who[768];
            comm_diag_finish(q, t, who, sizeof who);
            comm_diag_query_free(q);
            comm_diag_wait_end(h, 0, t);
            if (h->seq) comm_diag_log_ring(c, t);
            h->next = c->stale;
            c->stale = h;
            c->n_stale++;
            char num[48] = "";
            if (h->seq) snprintf(num, sizeof num, " #%llu", (unsigned long long)h->seq);
            if (h->p2p && h->root >= 0 && h->root < c->size) /* the peer that did not answer */
                snprintf(num, sizeof num, " %s rank %d (world rank %d)", h->kind == ZINC_COMM_OP_SEND ? "to" : "from",
                         h->root, c->members ? c->members[h->root] : h->root);
            return zinc_error(ZINC_ERR_TIMEOUT,
                              "%s%s on group %s (%d ranks) did not complete within %g s%s%s",
                              h->op, num, c->name, c->size, timeout, note ? note : "",
                              who[0] ? who : h->p2p ? "; that rank may be stuck or dead"
                                                    : "; a rank may be stuck or dead");
        }
        if (t - t_active < active_s) {
            sched_yield();
        } else {
            /* never sleep past the deadline by more than a test's worth */
            long ns = sleep_ns;
            if (bounded && (timeout - el) * 1e9 < (double)ns) ns = (long)((timeout - el) * 1e9) + 1;
            comm_sleep_ns(ns);
            sleep_ns = sleep_ns * 2 > COMM_SLEEP_MAX_NS ? COMM_SLEEP_MAX_NS : sleep_ns * 2;
        }
    }
}

/* Common tail of every op: on a started op, numbers it, counts its bytes
 * and either hands the handle to the caller or waits for it. On failure
 * frees it. */
static zinc_status comm_finish(zinc_comm *c, zinc_status st, zinc_comm_handle *hh,
                               zinc_comm_handle **h)
{
    if (st != ZINC_OK) {
        comm_handle_free(hh);
        return st;
    }
    comm_diag_started(c, hh, comm_now());
    c->bytes += hh->n_bytes;
    c->op_bytes[hh->kind] += hh->n_bytes;
    if (h) {
        *h = hh;
        return ZINC_OK;
    }
    return zinc_comm_wait(&hh);
}

/* A collective the ZINC_FAULT_SKIP_COLL hook skips: it never starts. The
 * caller's handle (already NULL) waits for nothing. */
static zinc_status comm_skip(zinc_comm_handle *hh)
{
    comm_handle_free(hh);
    return ZINC_OK;
}

/* ---- the ops' prologue -------------------------------------------------- */

/* An op's arguments. The entry point fills them; comm_begin checks them and
 * points send, recv and buf at what the backend runs on (a staging buffer
 * in place of device memory that the backend does not take). */
typedef struct comm_args {
    zinc_comm_op kind;
    const void *send;  /* all_reduce, reduce_scatter, all_gather */
    void *recv;
    void *buf;         /* broadcast, send, recv: their one buffer */
    size_t n;          /* elements: reduce_scatter's and all_gather's per-rank block */
    zinc_dtype dt;     /* none for barrier */
    zinc_redop redop;  /* all_reduce, reduce_scatter */
    int rank;          /* broadcast's root, send's and recv's peer */
    int tag;           /* send, recv */
} comm_args;

/* The algorithmic bytes per rank of op k moving payload bytes (the table at
 * the top). */
static uint64_t comm_algo_bytes(const zinc_comm *c, zinc_comm_op k, uint64_t payload)
{
    uint64_t p = (uint64_t)c->size;
    switch (k) {
    case ZINC_COMM_OP_ALL_REDUCE: return 2 * (p - 1) * payload / p;
    case ZINC_COMM_OP_REDUCE_SCATTER:
    case ZINC_COMM_OP_ALL_GATHER: return (p - 1) * payload;
    case ZINC_COMM_OP_BROADCAST: return p > 1 ? payload : 0;
    case ZINC_COMM_OP_SEND:
    case ZINC_COMM_OP_RECV: return payload;
    default: return 0; /* barrier */
    }
}

/* Hands the op's device buffers to the backend as they are, or stages them
 * (the top comment says when); send is sb bytes and recv rb, 0 for a buffer
 * the op lacks. in_place: the op runs on recv (the staging buffer when recv
 * is device memory) with send copied to recv + at (all_reduce, all_gather);
 * else staged send and recv lie side by side in one buffer (reduce_scatter,
 * and the one buffer of broadcast, send and recv, as their send or recv). */
static zinc_status comm_stage_args(zinc_comm *c, zinc_comm_handle *hh, comm_args *a, size_t sb,
                                   size_t rb, int in_place, size_t at)
{
    int ds = comm_is_dev(c, a->send, sb), dr = comm_is_dev(c, a->recv, rb);
    if (!ds && !dr) return ZINC_OK;
    if (c->dev_native && (ds || !sb) && (dr || !rb)) { /* all of the op's buffers */
        comm_go_native(hh);
        return ZINC_OK;
    }
    void *tv = a->recv;
    zinc_status st = ZINC_OK;
    if (in_place) { /* in place on the staging buffer, or on host recv */
        if (dr) st = comm_stage(c, hh, rb, &tv);
        if (st != ZINC_OK) return st;
        char *t = tv;
        c->dev->copy(t + at, a->send, sb);
        if (dr) comm_copy_back(hh, a->recv, t, rb);
        a->send = t + at;
        a->recv = t;
        return ZINC_OK;
    }
    st = comm_stage(c, hh, (ds ? sb : 0) + (dr ? rb : 0), &tv); /* [staged send][staged recv] */
    if (st != ZINC_OK) return st;
    char *t = tv;
    if (ds) {
        c->dev->copy(t, a->send, sb);
        a->send = t;
        t += sb;
    }
    if (dr) {
        comm_copy_back(hh, a->recv, t, rb);
        a->recv = t;
    }
    return ZINC_OK;
}

/* The prologue of every op: checks a (group, dtype, reduction op, count,
 * buffers, root or peer, overlap or tag, in that order, as the op has them),
 * makes the op's handle and stages its device buffers. On ZINC_OK *out is
 * the handle, to be started on a's buffers, or NULL when the
 * ZINC_FAULT_SKIP_COLL hook skips the collective (nothing to start or wait
 * for). *h (the caller's, may be NULL) is set to NULL first. */
static zinc_status comm_begin(zinc_comm *c, comm_args *a, zinc_comm_handle **h,
                              zinc_comm_handle **out)
{
    const zinc_comm_op k = a->kind;
    const char *op = op_names[k];
    int p2p = k == ZINC_COMM_OP_SEND || k == ZINC_COMM_OP_RECV;
    int one = p2p || k == ZINC_COMM_OP_BROADCAST; /* ops of one buffer, buf */
    int scatter = k == ZINC_COMM_OP_REDUCE_SCATTER, gather = k == ZINC_COMM_OP_ALL_GATHER;
    int in = 0; /* buf is the op's input (broadcast's root, send) */
    zinc_status st;
    zinc_comm_handle *hh = NULL;
    size_t sz = 0, sb = 0, rb = 0, at = 0;
    *out = NULL;
    if (h) *h = NULL;
    ZINC_TRY(comm_check(c, op));
    if (k != ZINC_COMM_OP_BARRIER) {
        ZINC_TRY(comm_check_dtype(c, op, a->dt));
        if (k == ZINC_COMM_OP_ALL_REDUCE || scatter) ZINC_TRY(comm_check_redop(c, op, a->redop));
        sz = zinc_dtype_size(a->dt);
        ZINC_TRY(comm_check_count(c, op, a->n, scatter || gather ? (size_t)c->size : 1, sz));
    }
    size_t nb = a->n * sz, all = nb * (size_t)c->size;
    if (one) {
        ZINC_TRY(comm_check_buf(c, op, "buf", a->buf, a->n));
        ZINC_TRY(comm_check_rank(c, op, p2p ? "peer" : "root", a->rank));
        if (p2p && a->tag < 0) {
            st = zinc_error(ZINC_ERR_INVALID_ARG, "%s on group %s: tag %d is negative", op,
                            c->name, a->tag);
            goto cleanup;
        }
        in = k == ZINC_COMM_OP_SEND || (k == ZINC_COMM_OP_BROADCAST && c->rank == a->rank);
        if (in) {
            a->send = a->buf;
            sb = nb;
        } else {
            a->recv = a->buf;
            rb = nb;
        }
    } else if (k != ZINC_COMM_OP_BARRIER) {
        ZINC_TRY(comm_check_buf(c, op, "send", a->send, a->n));
        ZINC_TRY(comm_check_buf(c, op, "recv", a->recv, a->n));
        sb = scatter ? all : nb;
        rb = gather ? all : nb;
        at = gather ? (size_t)c->rank * nb : 0; /* send's in-place position in recv */
        const char *why =
            scatter  ? "recv overlaps send"
            : gather ? "send overlaps recv but is not recv + rank*n (the in-place position)"
                     : "send and recv overlap but differ (pass send == recv for in place)";
        if ((scatter || (uintptr_t)a->send != (uintptr_t)a->recv + at) &&
            comm_overlap(a->send, sb, a->recv, rb)) {
            st = zinc_error(ZINC_ERR_INVALID_ARG, "%s on group %s: %s", op, c->name, why);
            goto cleanup;
        }
    }
    ZINC_TRY(comm_handle_new(c, op, p2p, (uint64_t)nb, comm_algo_bytes(c, k, (uint64_t)nb), &hh));
    if (k == ZINC_COMM_OP_BROADCAST || p2p) hh->root = a->rank; /* the root, or the peer */
    ZINC_TRY(comm_stage_args(c, hh, a, sb, rb, !one && !scatter, at));
    if (one) a->buf = in ? (void *)a->send : a->recv;
    if (!p2p && comm_diag_skip(c, op)) return comm_skip(hh);
    *out = hh;
    return ZINC_OK;
cleanup:
    comm_handle_free(hh);
    return st;
}

/* ---- ops ---------------------------------------------------------------- */

/* Every op: the prologue, the backend's start of its kind, the common tail. */
static zinc_status comm_run(zinc_comm *c, comm_args *a, zinc_comm_handle **h)
{
    zinc_comm_handle *hh;
    zinc_status st = comm_begin(c, a, h, &hh);
    if (st != ZINC_OK || !hh) return st; /* failed, or skipped by the fault hook */
    const comm_backend *be = c->be;
    switch (a->kind) {
    case ZINC_COMM_OP_ALL_REDUCE:
        st = be->all_reduce(c, a->send, a->recv, a->n, a->dt, a->redop, hh);
        break;
    case ZINC_COMM_OP_REDUCE_SCATTER:
        st = be->reduce_scatter(c, a->send, a->recv, a->n, a->dt, a->redop, hh);
        break;
    case ZINC_COMM_OP_ALL_GATHER: st = be->all_gather(c, a->send, a->recv, a->n, a->dt, hh); break;
    case ZINC_COMM_OP_BROADCAST: st = be->broadcast(c, a->buf, a->n, a->dt, a->rank, hh); break;
    case ZINC_COMM_OP_SEND: st = be->send(c, a->buf, a->n, a->dt, a->rank, a->tag, hh); break;
    case ZINC_COMM_OP_RECV: st = be->recv(c, a->buf, a->n, a->dt, a->rank, a->tag, hh); break;
    default: st = be->barrier(c, hh); break;
    }
    return comm_finish(c, st, hh, h);
}

zinc_status zinc_comm_all_reduce(zinc_comm *c, const void *send, void *recv, size_t n,
                                 zinc_dtype dt, zinc_redop op, zinc_comm_handle **h)
{
    return comm_run(c, &(comm_args){.kind = ZINC_COMM_OP_ALL_REDUCE, .send = send, .recv = recv,
                                    .n = n, .dt = dt, .redop = op}, h);
}

zinc_status zinc_comm_reduce_scatter(zinc_comm *c, const void *send, void *recv, size_t n,
                                     zinc_dtype dt, zinc_redop op, zinc_comm_handle **h)
{
    return comm_run(c, &(comm_args){.kind = ZINC_COMM_OP_REDUCE_SCATTER, .send = send,
                                    .recv = recv, .n = n, .dt = dt, .redop = op}, h);
}

zinc_status zinc_comm_all_gather(zinc_comm *c, const void *send, void *recv, size_t n,
                                 zinc_dtype dt, zinc_comm_handle **h)
{
    return comm_run(c, &(comm_args){.kind = ZINC_COMM_OP_ALL_GATHER, .send = send, .recv = recv,
                                    .n = n, .dt = dt}, h);
}

zinc_status zinc_comm_broadcast(zinc_comm *c, void *buf, size_t n, zinc_dtype dt, int root,
                                zinc_comm_handle **h)
{
    return comm_run(c, &(comm_args){.kind = ZINC_COMM_OP_BROADCAST, .buf = buf, .n = n, .dt = dt,
                                    .rank = root}, h);
}

zinc_status zinc_comm_send(zinc_comm *c, const void *buf, size_t n, zinc_dtype dt, int peer,
                           int tag, zinc_comm_handle **h)
{
    return comm_run(c, &(comm_args){.kind = ZINC_COMM_OP_SEND, .buf = (void *)buf, .n = n,
                                    .dt = dt, .rank = peer, .tag = tag}, h);
}

zinc_status zinc_comm_recv(zinc_comm *c, void *buf, size_t n, zinc_dtype dt, int peer, int tag,
                           zinc_comm_handle **h)
{
    return comm_run(c, &(comm_args){.kind = ZINC_COMM_OP_RECV, .buf = buf, .n = n, .dt = dt,
                                    .rank = peer, .tag = tag}, h);
}

zinc_status zinc_comm_barrier(zinc_comm *c)
{
    return comm_run(c, &(comm_args){.kind = ZINC_COMM_OP_BARRIER}, NULL);
}

/* ---- groups ------------------------------------------------------------- */

zinc_status zinc_comm_split(zinc_comm *parent, int color, int key, const char *name,
                            zinc_comm **out)
{
    zinc_status st;
    zinc_comm *c = NULL;
    if (out) *out = NULL;
    ZINC_TRY(comm_check(parent, "split"));
    if (!out || !name) {
        st = zinc_error(ZINC_ERR_INVALID_ARG, "split of group %s: %s is NULL", parent->name,
                        !out ? "out" : "name");
        goto cleanup;
    }
    if (color < 0) {
        st = zinc_error(ZINC_ERR_INVALID_ARG, "split of group %s into %s: color %d is negative",
                        parent->name, name, color);
        goto cleanup;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        st = zinc_error(ZINC_ERR_NOMEM, "split of group %s: out of memory", parent->name);
        goto cleanup;
    }
    c->be = parent->be;
    snprintf(c->name, sizeof c->name, "%s", name);
    c->timeout_s = parent->timeout_s;
    c->dev = parent->dev; /* the backend's split makes c dev_native if it can */
    c->pool = parent->pool;
    /* The backend's split blocks without a bound; a bounded barrier first
     * turns a missing rank into a timeout instead of a hang. */
    ZINC_TRY(zinc_comm_barrier(parent));
    ZINC_TRY(parent->be->split(parent, color, key, c));
    /* the world ranks of the members, for the hang diagnostics' questions */
    c->world_rank = parent->world_rank;
    c->members = malloc(sizeof *c->members * (size_t)c->size);
    if (!c->members) {
        st = zinc_error(ZINC_ERR_NOMEM, "split of group %s: out of memory", parent->name);
        zinc_comm_destroy(c);
        return st;
    }
    st = zinc_comm_all_gather(c, &c->world_rank, c->members, 1, ZINC_DTYPE_I32, NULL);
    zinc_comm_reset_bytes(c); /* the counters count the caller's ops */
    comm_diag_register(c);
    if (st != ZINC_OK) {
        zinc_comm_destroy(c);
        return st;
    }
    *out = c;
    return ZINC_OK;
cleanup:
    free(c);
    return st;
}

void zinc_comm_abort(zinc_comm *world, int code)
{
    const comm_backend *be = world ? world->be : &comm_backend_mpi;
    be->abort(world, code);
}

zinc_status zinc_mesh_create(zinc_comm *world, int pp, int dp, int tp, zinc_mesh **out)
{
    zinc_status st;
    zinc_mesh *m = NULL;
    if (out) *out = NULL;
    ZINC_TRY(comm_check(world, "mesh"));
    if (!out) {
        st = zinc_error(ZINC_ERR_INVALID_ARG, "mesh: out is NULL");
        goto cleanup;
    }
    if (pp < 1 || dp < 1 || tp < 1 || (int64_t)pp * dp * tp != world->size) {
        st = zinc_error(ZINC_ERR_INVALID_ARG,
                        "mesh: pp %d x dp %d x tp %d = %lld does not equal the %s size %d", pp,
                        dp, tp, (long long)pp * dp * tp, world->name, world->size);
        goto cleanup;
    }
    m = calloc(1, sizeof *m);
    if (!m) {
        st = zinc_error(ZINC_ERR_NOMEM, "mesh: out of memory");
        goto cleanup;
    }
    int r = world->rank;
    m->pp = pp;
    m->dp = dp;
    m->tp = tp;
    m->world = world;
    m->pp_rank = r / (dp * tp);
    m->dp_rank = (r / tp) % dp;
    m->tp_rank = r % tp;
    /* dp: same (pp, tp); tp: same (pp, dp); pp: same (dp, tp). */
    ZINC_TRY(zinc_comm_split(world, m->pp_rank * tp + m->tp_rank, m->dp_rank, "dp",
                             &m->dp_group));
    ZINC_TRY(zinc_comm_split(world, m->pp_rank * dp + m->dp_rank, m->tp_rank, "tp",
                             &m->tp_group));
    ZINC_TRY(zinc_comm_split(world, m->dp_rank * tp + m->tp_rank, m->pp_rank, "pp",
                             &m->pp_group));
    *out = m;
    return ZINC_OK;
cleanup:
    zinc_mesh_destroy(m);
    return st;
}

void zinc_mesh_destroy(zinc_mesh *m)
{
    if (!m) return;
    zinc_comm_destroy(m->pp_group);
    zinc_comm_destroy(m->tp_group);
    zinc_comm_destroy(m->dp_group);
    free(m);
}

/* ---- agreement -------------------------------------------------------- */

zinc_status zinc_comm_agree(zinc_comm *c, zinc_status st)
{
    struct {
        int32_t status;
        char detail[1020];
    } m;
    int rank = zinc_comm_rank(c);
    int32_t v = st != ZINC_OK ? rank : INT32_MAX;
    zinc_status cs = zinc_comm_all_reduce(c, &v, &v, 1, ZINC_DTYPE_I32, ZINC_REDOP_MIN, NULL);
    if (cs != ZINC_OK) return cs;
    if (v == INT32_MAX) return ZINC_OK;
    memset(&m, 0, sizeof m);
    if (rank == v) {
        m.status = (int32_t)st;
        snprintf(m.detail, sizeof m.detail, "%s", zinc_last_error());
    }
    cs = zinc_comm_broadcast(c, &m, sizeof m, ZINC_DTYPE_U8, v, NULL);
    if (cs != ZINC_OK) return cs;
    m.detail[sizeof m.detail - 1] = '\0';
    return zinc_error((zinc_status)m.status, "%s", m.detail);
}
