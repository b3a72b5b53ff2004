/* aio.c - the io_uring engine behind checkpoints and NVMe offload.
 *
 * Algorithm. A transfer (zinc_aio_req) is cut into chunks at submission
 * time: an unaligned head, an aligned middle of block_size chunks that goes
 * through the file's O_DIRECT descriptor, and an unaligned tail; a transfer
 * whose buffer and offset disagree modulo ZINC_AIO_ALIGN, or whose file has
 * no O_DIRECT, is cut into block_size chunks that all go buffered. Requests
 * wait in one FIFO; each of the intra_op_parallelism workers owns a ring and
 * queue_depth slots, takes the next chunk of the oldest request whenever it
 * has a free slot, and completes the request when its last chunk finishes.
 * With overlap_events a worker refills slots as soon as any completion
 * arrives; without it, it submits a full batch and reaps all of it before
 * taking more. single_submit calls io_uring_submit once per SQE.
 *
 * Coherence of mixed direct/buffered I/O on one file: the unaligned head and
 * tail of a transfer never share a page with its aligned middle, and Linux
 * writes back and invalidates the page cache of a range before every
 * O_DIRECT read or write of it, so buffered edges and direct middles see each
 * other's data. We chose this over "all buffered when unaligned" because the
 * checkpoint writer's 4 KiB-aligned chunks then keep the direct path even
 * when a caller passes an odd total length. Concurrent transfers that
 * overlap the same bytes are the caller's race, as with pread/pwrite.
 *
 * Continuations: a short result advances the slot and resubmits the rest
 * (buffered if the rest is no longer aligned); -EINTR/-EAGAIN resubmit the
 * same piece; -EINVAL on a direct piece switches the file to buffered (some
 * file systems accept O_DIRECT at open and refuse it per I/O); 0 bytes read
 * is "short read"; everything else is ZINC_ERR_IO naming path, offset and
 * strerror. The request reports the failure at the lowest offset.
 *
 * Fallbacks, each warned once per engine: no O_DIRECT -> buffered; rings
 * unavailable (seccomp, old kernel, memlock) -> workers use pread/pwrite.
 *
 * Thread safety: any number of threads may open files, start and wait for
 * transfers and close files on one engine concurrently; one mutex guards the
 * queue and request bookkeeping, taken once per chunk. A request is waited by
 * one thread, once. zinc_aio_close waits for the file's unfinished transfers.
 * zinc_aio_destroy waits for every queued and in-flight transfer, then frees
 * requests never waited and closes files left open (warning about each), so
 * those handles must not be used afterwards. Fault injection for tests: env ZINC_AIO_FAULT, read by
 * zinc_aio_create, a comma list of enospc:BYTES (writes beyond BYTES in total
 * fail with ENOSPC), eio:BYTES (transfers beyond BYTES in total fail with
 * EIO), nodirect (O_DIRECT refused as by tmpfs on old kernels), nouring
 * (no rings: pread/pwrite workers), short (every piece asks for about half of
 * what is left, so every transfer is continued) and retry (every third piece
 * "fails" with EINTR or EAGAIN before reaching the kernel). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>

#include "zinc/aio.h"
#include "zinc/log.h"

#define ALIGN ((uint64_t)ZINC_AIO_ALIGN)
#define MAX_CHUNK ((size_t)1 << 30)  /* one SQE moves at most 1 GiB (Linux caps at ~2 GiB) */
#define MAX_QD 4096                   /* per-worker ring entries (IORING_MAX_ENTRIES is 32768) */
#define MAX_WORKERS 256
#define SUBMIT_RETRIES 10000

/* One contiguous part of a request, moved in chunks of `chunk` bytes. */
typedef struct aio_seg {
    size_t rel;    /* offset of the part inside the request */
    size_t bytes;
    size_t chunk;
    size_t n_chunks;
    int direct;
} aio_seg;

struct zinc_aio_req {
    zinc_aio_file *f;
    int write;
    char *buf;
    uint64_t off;
    size_t n;
    aio_seg seg[3];
    int n_seg;
    size_t n_chunks;
    size_t next;   /* next chunk to hand out (engine lock) */
    size_t n_done; /* chunks finished (engine lock) */
    int failed;
    zinc_status st;
    uint64_t err_off;
    char detail[768];
    zinc_aio_req *qnext;        /* FIFO of requests with chunks to hand out */
    zinc_aio_req *lprev, *lnext; /* every request not yet waited */
};

/* One request piece in flight on a worker. */
typedef struct aio_slot {
    zinc_aio_req *r;
    char *buf;
    uint64_t off;
    size_t left;
    int direct;
} aio_slot;

typedef struct aio_worker {
    zinc_aio *a;
    int id;
    int sync;    /* no ring: pread/pwrite */
    int broken;  /* ring failed hard: no more submits, chunks fail */
    char broken_detail[256];
    int have_ring;
    struct io_uring ring;
    aio_slot *slots;
    int *free_idx; /* stack of free slot indices */
    int n_free;
    int n_inflight;
    aio_slot **pend; /* SQEs prepared, not yet accepted by the kernel, in order */
    int n_pend;
    pthread_t th;
    int started;
} aio_worker;

struct zinc_aio {
    zinc_aio_opts o;
    int qd;
    size_t chunk_buf;    /* buffered chunk bytes */
    size_t chunk_direct; /* direct chunk bytes (multiple of ALIGN) */
    pthread_mutex_t mu;
    pthread_cond_t cv_work; /* queue got work or stop */
    pthread_cond_t cv_done; /* a request or a file's last request finished */
    zinc_aio_req *qhead, *qtail;
    zinc_aio_req live; /* sentinel of the live list */
    zinc_aio_file *files; /* open files */
    int stop;
    int n_workers;
    aio_worker *w;
    atomic_int warned_direct;
    atomic_int warned_ring;
    /* fault injection (ZINC_AIO_FAULT) */
    uint64_t fault_enospc, fault_eio;
    int has_enospc, has_eio, fault_nodirect, fault_nouring, fault_short, fault_retry;
    atomic_uint_fast64_t written, moved, n_issued;
};

struct zinc_aio_file {
    zinc_aio *a;
    int fd_buf;
    int fd_dir; /* -1 without O_DIRECT */
    atomic_int direct;
    int can_read, can_write;
    int n_busy; /* requests not finished (engine lock) */
    char *path;
    zinc_aio_file *fprev, *fnext; /* the engine's open files (engine lock) */
};

static int aligned(uint64_t v) { return (v & (ALIGN - 1)) == 0; }

/* ---- options, faults ------------------------------------------------------ */

void zinc_aio_opts_default(zinc_aio_opts *o)
{
    o->block_size = 1048576;
    o->queue_depth = 8;
    o->intra_op_parallelism = 1;
    o->single_submit = 0;
    o->overlap_events = 1;
}

/* Parses ZINC_AIO_FAULT into a. */
static zinc_status parse_faults(zinc_aio *a)
{
    const char *e = getenv("ZINC_AIO_FAULT");
    if (!e || !*e) return ZINC_OK;
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", e);
    char *save = NULL;
    for (char *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(t, ':');
        unsigned long long v = 0;
        if (colon) {
            char *end;
            errno = 0;
            v = strtoull(colon + 1, &end, 10);
            if (errno || end == colon + 1 || *end)
                return zinc_error(ZINC_ERR_INVALID_ARG, "ZINC_AIO_FAULT: bad byte count in '%s'", t);
            *colon = '\0';
        }
        if (!strcmp(t, "enospc") && colon) a->has_enospc = 1, a->fault_enospc = v;
        else if (!strcmp(t, "eio") && colon) a->has_eio = 1, a->fault_eio = v;
        else if (!strcmp(t, "nodirect") && !colon) a->fault_nodirect = 1;
        else if (!strcmp(t, "nouring") && !colon) a->fault_nouring = 1;
        else if (!strcmp(t, "short") && !colon) a->fault_short = 1;
        else if (!strcmp(t, "retry") && !colon) a->fault_retry = 1;
        else
            return zinc_error(ZINC_ERR_INVALID_ARG,
                              "ZINC_AIO_FAULT: unknown fault '%s' (enospc:BYTES, eio:BYTES, nodirect, nouring, short, retry)", t);
    }
    ZINC_WARN("aio: fault injection active: ZINC_AIO_FAULT=%s", e);
    return ZINC_OK;
}

/* ---- requests: layout and bookkeeping (engine lock) ----------------------- */

static void seg_add(zinc_aio_req *r, size_t rel, size_t bytes, size_t chunk, int direct)
{
    if (bytes == 0) return;
    aio_seg *s = &r->seg[r->n_seg++];
    s->rel = rel;
    s->bytes = bytes;
    s->chunk = chunk;
    s->n_chunks = (bytes + chunk - 1) / chunk;
    s->direct = direct;
    r->n_chunks += s->n_chunks;
}

/* Cuts r into head / direct middle / tail, or all-buffered chunks. */
static void req_layout(zinc_aio *a, zinc_aio_req *r)
{
    uint64_t start = r->off, end = r->off + r->n;
    uint64_t mid0 = (start + ALIGN - 1) & ~(ALIGN - 1), mid1 = end & ~(ALIGN - 1);
    int direct = atomic_load(&r->f->direct) && ((uintptr_t)r->buf & (ALIGN - 1)) == (start & (ALIGN - 1));
    if (direct && mid1 > mid0) {
        seg_add(r, 0, (size_t)(mid0 - start), a->chunk_buf, 0);
        seg_add(r, (size_t)(mid0 - start), (size_t)(mid1 - mid0), a->chunk_direct, 1);
        seg_add(r, (size_t)(mid1 - start), (size_t)(end - mid1), a->chunk_buf, 0);
    } else {
        seg_add(r, 0, r->n, a->chunk_buf, 0);
    }
}

/* Fills s with chunk i of r. */
static void req_chunk(zinc_aio_req *r, size_t i, aio_slot *s)
{
    int k = 0;
    while (i >= r->seg[k].n_chunks) i -= r->seg[k++].n_chunks;
    const aio_seg *g = &r->seg[k];
    size_t rel = g->rel + i * g->chunk;
    size_t len = g->bytes - i * g->chunk;
    if (len > g->chunk) len = g->chunk;
    s->r = r;
    s->buf = r->buf + rel;
    s->off = r->off + rel;
    s->left = len;
    s->direct = g->direct;
}

/* Marks chunks [from, n_chunks) finished without I/O after a failure. */
static void req_finish_n(zinc_aio *a, zinc_aio_req *r, size_t k)
{
    r->n_done += k;
    if (r->n_done == r->n_chunks) {
        r->f->n_busy--;
        pthread_cond_broadcast(&a->cv_done);
    }
}

/* Takes the next chunk from the queue into s; 0 if there is none. */
static int queue_take(zinc_aio *a, aio_slot *s)
{
    for (;;) {
        zinc_aio_req *r = a->qhead;
        if (!r) return 0;
        if (r->failed) { /* skip what was not started */
            size_t k = r->n_chunks - r->next;
            r->next = r->n_chunks;
            a->qhead = r->qnext;
            if (!a->qhead) a->qtail = NULL;
            req_finish_n(a, r, k);
            continue;
        }
        req_chunk(r, r->next++, s);
        if (r->next == r->n_chunks) {
            a->qhead = r->qnext;
            if (!a->qhead) a->qtail = NULL;
        }
        return 1;
    }
}

/* ---- workers -------------------------------------------------------------- */

/* Finishes slot s with status st (detail in msg when st != OK). */
static void slot_done(aio_worker *w, aio_slot *s, zinc_status st, const char *msg)
{
    zinc_aio *a = w->a;
    zinc_aio_req *r = s->r;
    pthread_mutex_lock(&a->mu);
    if (st != ZINC_OK && (!r->failed || s->off < r->err_off)) {
        r->failed = 1;
        r->st = st;
        r->err_off = s->off;
        snprintf(r->detail, sizeof r->detail, "%s", msg);
    }
    req_finish_n(a, r, 1);
    pthread_mutex_unlock(&a->mu);
    s->r = NULL;
    w->free_idx[w->n_free++] = (int)(s - w->slots);
    w->n_inflight--;
}

static void slot_fail_errno(aio_worker *w, aio_slot *s, int err)
{
    char msg[768];
    snprintf(msg, sizeof msg, "%s: %s at offset %llu: %s", s->r->f->path, s->r->write ? "write" : "read",
             (unsigned long long)s->off, strerror(err));
    slot_done(w, s, ZINC_ERR_IO, msg);
}

/* Switches f to buffered after the kernel refused O_DIRECT. */
static void file_drop_direct(zinc_aio_file *f, int err)
{
    if (atomic_exchange(&f->direct, 0) && !atomic_exchange(&f->a->warned_direct, 1))
        ZINC_WARN("aio: %s: O_DIRECT refused (%s); using buffered I/O", f->path, strerror(err));
}

/* Applies a result (bytes moved or -errno) to s. Returns 1 if s must be
 * issued again, 0 if it is finished. */
static int slot_result(aio_worker *w, aio_slot *s, int res)
{
    zinc_aio_req *r = s->r;
    if (res == -EINTR || res == -EAGAIN) {
        if (res == -EAGAIN) sched_yield();
        return 1;
    }
    if (res == -EINVAL && s->direct) {
        file_drop_direct(r->f, EINVAL);
        s->direct = 0;
        return 1;
    }
    if (res < 0) {
        slot_fail_errno(w, s, -res);
        return 0;
    }
    if (res == 0) {
        char msg[768];
        if (r->write)
            snprintf(msg, sizeof msg, "%s: write at offset %llu: wrote 0 of %zu bytes", r->f->path,
                     (unsigned long long)s->off, s->left);
        else
            snprintf(msg, sizeof msg, "%s: short read at offset %llu: end of file, %zu bytes missing",
                     r->f->path, (unsigned long long)s->off, s->left);
        slot_done(w, s, ZINC_ERR_IO, msg);
        return 0;
    }
    if ((size_t)res < s->left) {
        s->buf += res;
        s->off += (uint64_t)res;
        s->left -= (size_t)res;
        if (s->direct && !(aligned((uintptr_t)s->buf) && aligned(s->off) && aligned(s->left))) s->direct = 0;
        return 1;
    }
    slot_done(w, s, ZINC_OK, NULL);
    return 0;
}

/* Injected faults for the piece s is about to move: 0 or an -errno. */
static int slot_fault(zinc_aio *a, aio_slot *s)
{
    if (a->fault_retry) {
        uint64_t k = atomic_fetch_add(&a->n_issued, 1);
        if (k % 3 == 1) return k % 2 ? -EINTR : -EAGAIN;
    }
    if (a->has_enospc && s->r->write) {
        uint64_t before = atomic_fetch_add(&a->written, s->left);
        if (before + s->left > a->fault_enospc) return -ENOSPC;
    }
    if (a->has_eio) {
        uint64_t before = atomic_fetch_add(&a->moved, s->left);
        if (before + s->left > a->fault_eio) return -EIO;
    }
    return 0;
}

static int slot_fd(const aio_slot *s) { return s->direct ? s->r->f->fd_dir : s->r->f->fd_buf; }

/* Bytes to ask for: all that is left, or about half of it under the "short"
 * fault (kept aligned for direct pieces) to exercise continuations. */
static size_t slot_len(const zinc_aio *a, const aio_slot *s)
{
    if (!a->fault_short || s->left < 2) return s->left;
    if (!s->direct) return s->left / 2;
    size_t half = (s->left / 2) & ~(size_t)(ALIGN - 1);
    return half ? half : s->left;
}

/* Moves s with one pread/pwrite: bytes or -errno. */
static int slot_sync(const zinc_aio *a, const aio_slot *s)
{
    size_t len = slot_len(a, s);
    ssize_t k = s->r->write ? pwrite(slot_fd(s), s->buf, len, (off_t)s->off)
                            : pread(slot_fd(s), s->buf, len, (off_t)s->off);
    return k < 0 ? -errno : (int)k;
}

static void worker_break(aio_worker *w, const char *what, int err)
{
    w->broken = 1;
    snprintf(w->broken_detail, sizeof w->broken_detail, "aio worker %d: %s: %s", w->id, what, strerror(err));
    ZINC_ERROR("%s; its remaining transfers fail", w->broken_detail);
}

/* Hands prepared SQEs to the kernel. On a hard failure the worker breaks and
 * fails the pieces the kernel did not take (they are never submitted). */
static void worker_submit(aio_worker *w)
{
    int tries = 0;
    while (w->n_pend > 0 && !w->broken) {
        int ret = io_uring_submit(&w->ring);
        if (ret > 0) {
            if (ret > w->n_pend) ret = w->n_pend;
            memmove(w->pend, w->pend + ret, (size_t)(w->n_pend - ret) * sizeof *w->pend);
            w->n_pend -= ret;
            tries = 0;
            continue;
        }
        if ((ret == 0 || ret == -EINTR || ret == -EAGAIN || ret == -EBUSY) && ++tries < SUBMIT_RETRIES) {
            sched_yield();
            continue;
        }
        worker_break(w, "io_uring_submit", ret < 0 ? -ret : EAGAIN);
    }
    if (w->broken) {
        while (w->n_pend > 0) {
            aio_slot *s = w->pend[--w->n_pend];
            slot_done(w, s, ZINC_ERR_IO, w->broken_detail);
        }
    }
}

/* Starts s: runs it to the end (sync, fault, broken) or prepares its SQE. */
static void slot_issue(aio_worker *w, aio_slot *s)
{
    for (;;) {
        if (w->broken) {
            slot_done(w, s, ZINC_ERR_IO, w->broken_detail);
            return;
        }
        int res = slot_fault(w->a, s);
        if (res == 0 && w->sync) res = slot_sync(w->a, s);
        if (res == 0 && !w->sync) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
            if (!sqe) { /* cannot happen with entries >= qd; be safe */
                worker_submit(w);
                continue;
            }
            unsigned len = (unsigned)slot_len(w->a, s);
            if (s->r->write) io_uring_prep_write(sqe, slot_fd(s), s->buf, len, s->off);
            else io_uring_prep_read(sqe, slot_fd(s), s->buf, len, s->off);
            io_uring_sqe_set_data(sqe, s);
            w->pend[w->n_pend++] = s;
            if (w->a->o.single_submit) worker_submit(w);
            return;
        }
        if (!slot_result(w, s, res)) return;
    }
}

/* Processes one completion. */
static void worker_cqe(aio_worker *w, struct io_uring_cqe *cqe)
{
    aio_slot *s = io_uring_cqe_get_data(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&w->ring, cqe);
    if (slot_result(w, s, res)) slot_issue(w, s);
}

/* Submits what is prepared, waits for one completion, and processes it and
 * every other completion already there (their continuations included). */
static void worker_reap(aio_worker *w)
{
    worker_submit(w);
    if (w->n_inflight == 0) return;
    struct io_uring_cqe *cqe;
    int ret = io_uring_wait_cqe(&w->ring, &cqe);
    if (ret < 0) {
        if (ret == -EINTR || ret == -EAGAIN) return;
        /* The kernel may still own the buffers: keep waiting, say so once. */
        if (!w->broken) worker_break(w, "io_uring_wait_cqe", -ret);
        nanosleep(&(struct timespec){0, 1000000}, NULL);
        return;
    }
    worker_cqe(w, cqe);
    while (io_uring_peek_cqe(&w->ring, &cqe) == 0) worker_cqe(w, cqe);
    worker_submit(w);
}

static void *worker_main(void *arg)
{
    aio_worker *w = arg;
    zinc_aio *a = w->a;
    for (;;) {
        pthread_mutex_lock(&a->mu);
        while (w->n_inflight == 0 && !a->qhead && !a->stop) pthread_cond_wait(&a->cv_work, &a->mu);
        if (w->n_inflight == 0 && !a->qhead && a->stop) {
            pthread_mutex_unlock(&a->mu);
            break;
        }
        int got[MAX_QD], n_got = 0;
        while (w->n_free > 0) {
            aio_slot *s = &w->slots[w->free_idx[w->n_free - 1]];
            if (!queue_take(a, s)) break;
            got[n_got++] = w->free_idx[--w->n_free];
            w->n_inflight++;
        }
        pthread_mutex_unlock(&a->mu);
        for (int i = 0; i < n_got; i++) slot_issue(w, &w->slots[got[i]]);
        if (w->sync) continue; /* slot_issue ran them to the end */
        if (a->o.overlap_events) worker_reap(w);
        else
            while (w->n_inflight > 0) worker_reap(w); /* the whole batch, then more */
    }
    return NULL;
}

/* ---- engine --------------------------------------------------------------- */

static void engine_free(zinc_aio *a)
{
    for (int i = 0; i < a->n_workers; i++) {
        aio_worker *w = &a->w[i];
        if (w->have_ring) io_uring_queue_exit(&w->ring);
        free(w->slots);
        free(w->free_idx);
        free(w->pend);
    }
    free(a->w);
    pthread_cond_destroy(&a->cv_done);
    pthread_cond_destroy(&a->cv_work);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

/* Stops the workers after the queue and all in-flight pieces are done. */
static void engine_stop(zinc_aio *a)
{
    pthread_mutex_lock(&a->mu);
    a->stop = 1;
    pthread_cond_broadcast(&a->cv_work);
    pthread_mutex_unlock(&a->mu);
    for (int i = 0; i < a->n_workers; i++)
        if (a->w[i].started) pthread_join(a->w[i].th, NULL);
}

zinc_status zinc_aio_create(const zinc_aio_opts *o, zinc_aio **out)
{
    zinc_status st = ZINC_OK;
    if (!out) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_aio_create: out is NULL");
    *out = NULL;
    zinc_aio_opts def;
    if (!o) {
        zinc_aio_opts_default(&def);
        o = &def;
    }
    if (o->block_size < 1)
        return zinc_error(ZINC_ERR_INVALID_ARG, "aio.block_size: %zu must be at least 1", o->block_size);
    if (o->queue_depth < 1)
        return zinc_error(ZINC_ERR_INVALID_ARG, "aio.queue_depth: %d must be at least 1", o->queue_depth);
    if (o->intra_op_parallelism < 1 || o->intra_op_parallelism > MAX_WORKERS)
        return zinc_error(ZINC_ERR_INVALID_ARG, "aio.intra_op_parallelism: %d must be in 1..%d",
                          o->intra_op_parallelism, MAX_WORKERS);
    zinc_aio *a = calloc(1, sizeof *a);
    if (!a) return zinc_error(ZINC_ERR_NOMEM, "aio: engine allocation failed");
    a->o = *o;
    a->qd = o->queue_depth > MAX_QD ? MAX_QD : o->queue_depth;
    a->chunk_buf = o->block_size > MAX_CHUNK ? MAX_CHUNK : o->block_size;
    a->chunk_direct = (a->chunk_buf + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    a->live.lnext = a->live.lprev = &a->live;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv_work, NULL);
    pthread_cond_init(&a->cv_done, NULL);
    st = parse_faults(a);
    if (st != ZINC_OK) {
        engine_free(a);
        return st;
    }
    a->w = calloc((size_t)o->intra_op_parallelism, sizeof *a->w);
    if (!a->w) {
        engine_free(a);
        return zinc_error(ZINC_ERR_NOMEM, "aio: worker allocation failed");
    }
    a->n_workers = o->intra_op_parallelism;
    for (int i = 0; i < a->n_workers; i++) {
        aio_worker *w = &a->w[i];
        w->a = a;
        w->id = i;
        w->slots = calloc((size_t)a->qd, sizeof *w->slots);
        w->free_idx = calloc((size_t)a->qd, sizeof *w->free_idx);
        w->pend = calloc((size_t)a->qd, sizeof *w->pend);
        if (!w->slots || !w->free_idx || !w->pend) {
            engine_free(a);
            return zinc_error(ZINC_ERR_NOMEM, "aio: slot allocation failed (queue_depth %d)", a->qd);
        }
        for (int k = 0; k < a->qd; k++) w->free_idx[k] = a->qd - 1 - k;
        w->n_free = a->qd;
        int ret = a->fault_nouring ? -ENOSYS : io_uring_queue_init((unsigned)a->qd, &w->ring, 0);
        if (ret == 0) {
            w->have_ring = 1;
        } else {
            w->sync = 1;
            if (!atomic_exchange(&a->warned_ring, 1))
                ZINC_WARN("aio: io_uring_queue_init(%d): %s; using pread/pwrite", a->qd, strerror(-ret));
        }
    }
    for (int i = 0; i < a->n_workers; i++) {
        int ret = pthread_create(&a->w[i].th, NULL, worker_main, &a->w[i]);
        if (ret != 0) {
            engine_stop(a);
            engine_free(a);
            return zinc_error(ZINC_ERR_INTERNAL, "aio: pthread_create for worker %d: %s", i, strerror(ret));
        }
        a->w[i].started = 1;
    }
    *out = a;
    return ZINC_OK;
}

void zinc_aio_destroy(zinc_aio *a)
{
    if (!a) return;
    engine_stop(a);
    int n = 0;
    while (a->live.lnext != &a->live) {
        zinc_aio_req *r = a->live.lnext;
        r->lprev->lnext = r->lnext;
        r->lnext->lprev = r->lprev;
        free(r);
        n++;
    }
    if (n) ZINC_WARN("aio: engine destroyed with %d transfer(s) never waited", n);
    n = 0;
    while (a->files) {
        zinc_aio_file *f = a->files;
        a->files = f->fnext;
        if (f->fd_dir >= 0) close(f->fd_dir);
        close(f->fd_buf);
        free(f->path);
        free(f);
        n++;
    }
    if (n) ZINC_WARN("aio: engine destroyed with %d file(s) open; closed them", n);
    engine_free(a);
}

/* ---- files ---------------------------------------------------------------- */

zinc_status zinc_aio_open(zinc_aio *a, const char *path, int flags, zinc_aio_file **out)
{
    if (!out) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_aio_open: out is NULL");
    *out = NULL;
    if (!a || !path) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_aio_open: engine or path is NULL");
    int rw = flags & (ZINC_AIO_READ | ZINC_AIO_WRITE);
    if (!rw)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s: open needs ZINC_AIO_READ and/or ZINC_AIO_WRITE", path);
    int acc = rw == (ZINC_AIO_READ | ZINC_AIO_WRITE) ? O_RDWR : rw == ZINC_AIO_WRITE ? O_WRONLY : O_RDONLY;
    int extra = ((flags & ZINC_AIO_CREATE) ? O_CREAT : 0) | ((flags & ZINC_AIO_TRUNC) ? O_TRUNC : 0);
    zinc_aio_file *f = calloc(1, sizeof *f);
    char *p = strdup(path);
    if (!f || !p) {
        free(f);
        free(p);
        return zinc_error(ZINC_ERR_NOMEM, "%s: open: out of memory", path);
    }
    f->a = a;
    f->path = p;
    f->fd_dir = -1;
    f->can_read = (rw & ZINC_AIO_READ) != 0;
    f->can_write = (rw & ZINC_AIO_WRITE) != 0;
    do f->fd_buf = open(path, acc | extra | O_CLOEXEC, 0644);
    while (f->fd_buf < 0 && errno == EINTR);
    if (f->fd_buf < 0) {
        int err = errno;
        free(f->path);
        free(f);
        return zinc_error(ZINC_ERR_IO, "%s: open for %s: %s", path,
                          rw == ZINC_AIO_READ ? "reading" : rw == ZINC_AIO_WRITE ? "writing" : "reading and writing",
                          strerror(err));
    }
    struct stat sb;
    if (fstat(f->fd_buf, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        close(f->fd_buf);
        free(f->path);
        free(f);
        return zinc_error(ZINC_ERR_IO, "%s: open: is a directory", path);
    }
    if (!(flags & ZINC_AIO_BUFFERED)) {
        int err = EINVAL;
        if (!a->fault_nodirect) {
            do f->fd_dir = open(path, acc | O_DIRECT | O_CLOEXEC);
            while (f->fd_dir < 0 && errno == EINTR);
            err = errno;
        }
        if (f->fd_dir >= 0) {
            atomic_store(&f->direct, 1);
        } else if (err == EINVAL) {
            if (!atomic_exchange(&a->warned_direct, 1))
                ZINC_WARN("aio: %s: file system does not support O_DIRECT; using buffered I/O", path);
        } else {
            close(f->fd_buf);
            free(f->path);
            free(f);
            return zinc_error(ZINC_ERR_IO, "%s: open with O_DIRECT: %s", path, strerror(err));
        }
    }
    pthread_mutex_lock(&a->mu);
    f->fnext = a->files;
    if (a->files) a->files->fprev = f;
    a->files = f;
    pthread_mutex_unlock(&a->mu);
    *out = f;
    return ZINC_OK;
}

/* Waits until no request on f is unfinished. */
static void file_drain(zinc_aio_file *f)
{
    zinc_aio *a = f->a;
    pthread_mutex_lock(&a->mu);
    while (f->n_busy > 0) pthread_cond_wait(&a->cv_done, &a->mu);
    if (f->fprev) f->fprev->fnext = f->fnext;
    else a->files = f->fnext;
    if (f->fnext) f->fnext->fprev = f->fprev;
    pthread_mutex_unlock(&a->mu);
}

zinc_status zinc_aio_close(zinc_aio_file *f)
{
    if (!f) return ZINC_OK;
    file_drain(f); /* and unlink it from the engine */
    zinc_status st = ZINC_OK;
    int fds[2] = {f->fd_dir, f->fd_buf};
    for (int i = 0; i < 2; i++) {
        if (fds[i] >= 0 && close(fds[i]) != 0 && st == ZINC_OK)
            st = zinc_error(ZINC_ERR_IO, "%s: close: %s", f->path, strerror(errno));
    }
    free(f->path);
    free(f);
    return st;
}

zinc_status zinc_aio_fsync(zinc_aio_file *f)
{
    if (!f) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_aio_fsync: file is NULL");
    int ret;
    do ret = fsync(f->fd_buf);
    while (ret != 0 && errno == EINTR);
    if (ret != 0) return zinc_error(ZINC_ERR_IO, "%s: fsync: %s", f->path, strerror(errno));
    return ZINC_OK;
}

zinc_status zinc_aio_size(zinc_aio_file *f, uint64_t *bytes)
{
    if (!f || !bytes) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_aio_size: file or bytes is NULL");
    struct stat sb;
    if (fstat(f->fd_buf, &sb) != 0) return zinc_error(ZINC_ERR_IO, "%s: fstat: %s", f->path, strerror(errno));
    *bytes = (uint64_t)sb.st_size;
    return ZINC_OK;
}

int zinc_aio_is_direct(const zinc_aio_file *f) { return f ? atomic_load(&f->direct) : 0; }

const char *zinc_aio_path(const zinc_aio_file *f) { return f ? f->path : ""; }

/* ---- transfers ------------------------------------------------------------ */

static zinc_status start(zinc_aio_file *f, void *buf, size_t n, uint64_t off, int write, zinc_aio_req **out)
{
    const char *what = write ? "write" : "read";
    if (!out) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_aio_p%s_async: request pointer is NULL", what);
    *out = NULL;
    if (!f) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_aio_p%s: file is NULL", what);
    if (!buf && n > 0) return zinc_error(ZINC_ERR_INVALID_ARG, "%s: %s of %zu bytes into a NULL buffer", f->path, what, n);
    if (write ? !f->can_write : !f->can_read)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s: %s at offset %llu: file is not open for %s", f->path, what,
                          (unsigned long long)off, write ? "writing (no ZINC_AIO_WRITE)" : "reading (no ZINC_AIO_READ)");
    if (off > (uint64_t)INT64_MAX || n > (uint64_t)INT64_MAX - off)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s: %s of %zu bytes at offset %llu exceeds the largest file offset",
                          f->path, what, n, (unsigned long long)off);
    zinc_aio *a = f->a;
    zinc_aio_req *r = calloc(1, sizeof *r);
    if (!r) return zinc_error(ZINC_ERR_NOMEM, "%s: %s request allocation failed", f->path, what);
    r->f = f;
    r->write = write;
    r->buf = buf;
    r->off = off;
    r->n = n;
    r->st = ZINC_OK;
    req_layout(a, r);
    pthread_mutex_lock(&a->mu);
    r->lnext = &a->live;
    r->lprev = a->live.lprev;
    r->lprev->lnext = r;
    a->live.lprev = r;
    if (r->n_chunks > 0) {
        f->n_busy++;
        if (a->qtail) a->qtail->qnext = r;
        else a->qhead = r;
        a->qtail = r;
        pthread_cond_broadcast(&a->cv_work);
    }
    pthread_mutex_unlock(&a->mu);
    *out = r;
    return ZINC_OK;
}

zinc_status zinc_aio_pread_async(zinc_aio_file *f, void *buf, size_t n, uint64_t off, zinc_aio_req **r)
{
    return start(f, buf, n, off, 0, r);
}

zinc_status zinc_aio_pwrite_async(zinc_aio_file *f, const void *buf, size_t n, uint64_t off, zinc_aio_req **r)
{
    return start(f, (void *)(uintptr_t)buf, n, off, 1, r); /* never written through */
}

zinc_status zinc_aio_wait(zinc_aio_req **rp)
{
    if (!rp || !*rp) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_aio_wait: request is NULL");
    zinc_aio_req *r = *rp;
    zinc_aio *a = r->f->a;
    pthread_mutex_lock(&a->mu);
    while (r->n_done < r->n_chunks) pthread_cond_wait(&a->cv_done, &a->mu);
    r->lprev->lnext = r->lnext;
    r->lnext->lprev = r->lprev;
    pthread_mutex_unlock(&a->mu);
    zinc_status st = r->st;
    if (st != ZINC_OK) zinc_error(st, "%s", r->detail);
    free(r);
    *rp = NULL;
    return st;
}

zinc_status zinc_aio_pread(zinc_aio_file *f, void *buf, size_t n, uint64_t off)
{
    zinc_aio_req *r;
    zinc_status st = zinc_aio_pread_async(f, buf, n, off, &r);
    return st != ZINC_OK ? st : zinc_aio_wait(&r);
}

zinc_status zinc_aio_pwrite(zinc_aio_file *f, const void *buf, size_t n, uint64_t off)
{
    zinc_aio_req *r;
    zinc_status st = zinc_aio_pwrite_async(f, buf, n, off, &r);
    return st != ZINC_OK ? st : zinc_aio_wait(&r);
}

/* ---- buffers -------------------------------------------------------------- */

void *zinc_aio_buf_alloc(size_t bytes)
{
    if (bytes > SIZE_MAX - ALIGN) return NULL;
    size_t n = (bytes + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    if (n == 0) n = ALIGN;
    void *p = NULL;
    if (posix_memalign(&p, ALIGN, n) != 0) return NULL;
    memset(p, 0, n);
    return p;
}

void zinc_aio_buf_free(void *p) { free(p); }
