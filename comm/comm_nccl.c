/* comm_nccl.c - the nccl backend (CUDA builds): NCCL for device buffers, the
 * mpi backend for everything else.
 *
 * The world is bootstrapped by the mpi backend; every group keeps its MPI
 * communicator, and ops on host buffers (the engine's host-side sums, agree,
 * barriers) go to MPI exactly as with comm_backend mpi. A group's NCCL
 * communicator is created in zinc_comm_set_device(), which is collective
 * (not lazily on the first device op: send/recv are not collective, so a
 * lazy creation there would deadlock): rank 0's ncclGetUniqueId is broadcast
 * over MPI and every rank calls ncclCommInitRank on the CUDA device the
 * device was opened on. Groups split afterwards from a group with a NCCL
 * communicator get theirs from ncclCommSplit inside zinc_comm_split (also
 * collective). Local failures before a blocking NCCL call are agreed over MPI
 * first, so no rank is left waiting in NCCL for a rank that gave up.
 *
 * Ordering: each group has a comm stream created with cudaStreamNonBlocking.
 * An op records an event on the compute stream (the legacy stream 0) and
 * makes the comm stream wait on it, so it sees every earlier device op;
 * NCCL runs on the comm stream; an event recorded after it marks completion.
 * test() polls that event (cudaEventQuery) and, once it has completed, makes
 * stream 0 wait on it so later device work sees the result.
 *
 * Watchdog: while an op is pending, test() also polls ncclCommGetAsyncError;
 * on an asynchronous NCCL error, and when comm.c's wait gives up after the
 * group's timeout (timed_out), the communicator is aborted (ncclCommAbort)
 * and the op fails naming the op and group; later device ops on the group
 * fail at once with ZINC_ERR_NCCL. Every CUDA and NCCL call is checked; a
 * failure is ZINC_ERR_CUDA / ZINC_ERR_NCCL with "op on group g: call:
 * file:line: message".
 *
 * NCCL has no tags: device-buffer sends and receives between two ranks match
 * in the order they are posted, and each rank's NCCL ops run in order on its
 * group's one stream, so a send whose receive the peer posts only after its
 * own send blocks both (exchange as send-then-recv on one side and
 * recv-then-send on the other). NCCL refuses two ranks on one GPU: init
 * fails when a node runs more ranks than it has visible GPUs (use the mpi
 * backend, which stages device buffers through host memory, to share GPUs).
 */
#ifdef ZINC_HAVE_NCCL

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
/* nccl.h declares a few functions as f() */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nccl.h>
#pragma GCC diagnostic pop

#include "comm_int.h"
#include "zinc/log.h"

typedef struct nccl_group {
    ncclComm_t comm;     /* NULL once aborted */
    cudaStream_t stream; /* the group's comm stream */
    cudaEvent_t ready;   /* recorded on stream 0 before each op */
    int device;          /* CUDA ordinal */
    char why[192];       /* why comm was aborted */
} nccl_group;

typedef struct nccl_req {
    cudaEvent_t done; /* recorded on the comm stream after the op; NULL once released */
} nccl_req;

/* h->impl holds either backend's request: host ops are the mpi backend's. */
typedef union nccl_handle {
    mpi_req mpi;
    nccl_req nccl;
} nccl_handle;

static nccl_req *nccl_req_of(zinc_comm_handle *h)
{
    return (nccl_req *)(void *)h->impl;
}

static zinc_status cuda_status(cudaError_t e, const char *op, const char *group, const char *call,
                               const char *file, int line)
{
    if (e == cudaSuccess) return ZINC_OK;
    return zinc_error(ZINC_ERR_CUDA, "%s on group %s: %s: %s:%d: %s", op, group, call, file,
                      line, cudaGetErrorString(e));
}

static zinc_status nccl_status(ncclResult_t r, const char *op, const char *group,
                               const char *call, const char *file, int line)
{
    if (r == ncclSuccess) return ZINC_OK;
    const char *last = ncclGetLastError(NULL);
    return zinc_error(ZINC_ERR_NCCL, "%s on group %s: %s: %s:%d: %s%s%s%s", op, group, call,
                      file, line, ncclGetErrorString(r), last && *last ? " (" : "",
                      last && *last ? last : "", last && *last ? ")" : "");
}

/* Check a CUDA / NCCL call: a zinc_status naming op, group, call, file, line. */
#define CUDA_CHECK(op, group, fn, args) cuda_status(fn args, (op), (group), #fn, __FILE__, __LINE__)
#define NCCL_CHECK(op, group, fn, args) nccl_status(fn args, (op), (group), #fn, __FILE__, __LINE__)
#define CUDA_TRY(op, group, fn, args) ZINC_TRY(CUDA_CHECK(op, group, fn, args))
#define NCCL_TRY(op, group, fn, args) ZINC_TRY(NCCL_CHECK(op, group, fn, args))

static ncclDataType_t nccl_type(zinc_dtype dt)
{
    switch (dt) {
    case ZINC_DTYPE_F32: return ncclFloat32;
    case ZINC_DTYPE_F64: return ncclFloat64;
    case ZINC_DTYPE_I32: return ncclInt32;
    case ZINC_DTYPE_I64: return ncclInt64;
    case ZINC_DTYPE_U8: return ncclUint8;
    case ZINC_DTYPE_BF16: return ncclBfloat16;
    case ZINC_DTYPE_F16: return ncclFloat16;
    }
    return ncclUint8;
}

static ncclRedOp_t nccl_op(zinc_redop op)
{
    switch (op) {
    case ZINC_REDOP_SUM: return ncclSum;
    case ZINC_REDOP_MAX: return ncclMax;
    case ZINC_REDOP_MIN: return ncclMin;
    }
    return ncclSum;
}

/* ---- groups --------------------------------------------------------------- */

/* Frees g (NULL-safe): destroys its communicator, stream and event. */
static void nccl_group_free(nccl_group *g, const char *name)
{
    if (!g) return;
    if (g->comm && NCCL_CHECK("destroy", name, ncclCommDestroy, (g->comm)) != ZINC_OK)
        ZINC_WARN("%s", zinc_last_error());
    if (g->ready && CUDA_CHECK("destroy", name, cudaEventDestroy, (g->ready)) != ZINC_OK)
        ZINC_WARN("%s", zinc_last_error());
    if (g->stream && CUDA_CHECK("destroy", name, cudaStreamDestroy, (g->stream)) != ZINC_OK)
        ZINC_WARN("%s", zinc_last_error());
    free(g);
}

/* Aborts g's communicator (the watchdog) after what happened to op; later
 * device ops on the group fail saying so. */
static void nccl_group_abort(nccl_group *g, const char *what, const char *op, const char *name)
{
    if (!g->comm) return;
    ncclCommAbort(g->comm); /* its result is moot: the communicator is gone either way */
    g->comm = NULL;
    snprintf(g->why, sizeof g->why, "the NCCL communicator was aborted after %s in %s on group %s",
             what, op, name);
}

int comm_nccl_auto;
static int nccl_off; /* auto found a node without a GPU per rank: stage through MPI */

/* A group state on the current CUDA device (set to device): stream and event,
 * no communicator yet. */
static zinc_status nccl_group_new(const zinc_comm *c, int device, nccl_group **out)
{
    zinc_status st = ZINC_OK;
    nccl_group *g = calloc(1, sizeof *g);
    *out = NULL;
    if (!g) return zinc_error(ZINC_ERR_NOMEM, "nccl setup on group %s: out of memory", c->name);
    g->device = device;
    CUDA_TRY("nccl setup", c->name, cudaSetDevice, (device));
    CUDA_TRY("nccl setup", c->name, cudaStreamCreateWithFlags,
             (&g->stream, cudaStreamNonBlocking));
    CUDA_TRY("nccl setup", c->name, cudaEventCreateWithFlags,
             (&g->ready, cudaEventDisableTiming));
    *out = g;
    return ZINC_OK;
cleanup:
    nccl_group_free(g, c->name);
    return st;
}

/* Collective over c: c's NCCL communicator from a unique id broadcast over
 * MPI. On failure every rank returns the lowest failing rank's error. */
static zinc_status nccl_group_create(zinc_comm *c, int device)
{
    zinc_status st = ZINC_OK;
    nccl_group *g = NULL;
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    zinc_status lst = nccl_group_new(c, device, &g);
    if (lst == ZINC_OK && c->rank == 0)
        lst = NCCL_CHECK("nccl setup", c->name, ncclGetUniqueId, (&id));
    ZINC_TRY(zinc_comm_agree(c, lst));
    ZINC_TRY(zinc_comm_broadcast(c, &id, sizeof id, ZINC_DTYPE_U8, 0, NULL));
    lst = NCCL_CHECK("nccl setup", c->name, ncclCommInitRank, (&g->comm, c->size, id, c->rank));
    if (lst != ZINC_OK) g->comm = NULL;
    ZINC_TRY(zinc_comm_agree(c, lst));
    c->dev_impl = g;
    return ZINC_OK;
cleanup:
    nccl_group_free(g, c->name);
    return st;
}

static zinc_status nccl_set_device(zinc_comm *c, const zinc_device *dev)
{
    /* only the cuda device's pointers are NCCL's; any other device stages */
    if (nccl_off || !dev || dev->is_host || !dev->name || strcmp(dev->name, "cuda") != 0) {
        c->dev_native = 0;
        return ZINC_OK;
    }
    nccl_group *g = c->dev_impl;
    if (g) {
        if (g->device != dev->index)
            return zinc_error(ZINC_ERR_INVALID_ARG,
                              "set_device on group %s: its NCCL communicator is on CUDA device "
                              "%d, not %d", c->name, g->device, dev->index);
        c->dev_native = 1;
        return ZINC_OK;
    }
    zinc_status st = nccl_group_create(c, dev->index);
    if (st != ZINC_OK) return st;
    c->dev_native = 1;
    return ZINC_OK;
}

static zinc_status nccl_init_world(int *argc, char ***argv, zinc_comm *world)
{
    zinc_status st = comm_backend_mpi.init_world(argc, argv, world);
    if (st != ZINC_OK) return st;
    int n_gpu = 0;
    cudaError_t e = cudaGetDeviceCount(&n_gpu);
    if (e != cudaSuccess) cudaGetLastError();
    nccl_off = 0;
    if (comm_nccl_auto) { /* every rank decides the same: NCCL only if all can */
        int ok = e == cudaSuccess && n_gpu > 0 && world->local_size <= n_gpu, all = 0;
        st = zinc_comm_all_reduce(world, &ok, &all, 1, ZINC_DTYPE_I32, ZINC_REDOP_MIN, NULL);
        if (st != ZINC_OK) {
            comm_backend_mpi.destroy(world);
            return st;
        }
        nccl_off = !all;
        return ZINC_OK;
    }
    if (e != cudaSuccess || n_gpu == 0)
        st = zinc_error(ZINC_ERR_CUDA, "comm_backend nccl: no GPU visible (cudaGetDeviceCount: "
                        "%s); use comm_backend mpi",
                        e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    else if (world->local_size > n_gpu)
        st = zinc_error(ZINC_ERR_CONFIG,
                        "comm_backend nccl: %d ranks on this node but only %d GPU(s) visible; "
                        "NCCL cannot run two ranks on one GPU: run at most %d ranks per node, "
                        "or use comm_backend mpi to share GPUs", world->local_size, n_gpu,
                        n_gpu);
    st = zinc_comm_agree(world, st);
    if (st != ZINC_OK) comm_backend_mpi.destroy(world); /* finalizes MPI */
    return st;
}

static zinc_status nccl_split(zinc_comm *parent, int color, int key, zinc_comm *child)
{
    zinc_status st = comm_backend_mpi.split(parent, color, key, child);
    if (st != ZINC_OK) return st;
    nccl_group *pg = parent->dev_impl, *g = NULL;
    child->dev_native = 0;
    if (!pg || !parent->dev_native) return ZINC_OK; /* set_device on the child later */
    /* every rank of parent must reach ncclCommSplit, or none */
    zinc_status lst = pg->comm ? nccl_group_new(child, pg->device, &g)
                               : zinc_error(ZINC_ERR_NCCL, "split of group %s: %s",
                                            parent->name, pg->why);
    ZINC_TRY(zinc_comm_agree(parent, lst));
    lst = NCCL_CHECK("split", parent->name, ncclCommSplit, (pg->comm, color, key, &g->comm, NULL));
    if (lst != ZINC_OK) g->comm = NULL;
    ZINC_TRY(zinc_comm_agree(parent, lst));
    child->dev_impl = g;
    child->dev_native = 1;
    return ZINC_OK;
cleanup:
    nccl_group_free(g, child->name);
    comm_backend_mpi.destroy(child); /* not the world: frees the MPI communicator only */
    return st;
}

static void nccl_destroy(zinc_comm *c)
{
    nccl_group_free(c->dev_impl, c->name);
    c->dev_impl = NULL;
    c->dev_native = 0;
    comm_backend_mpi.destroy(c);
}

/* ---- ops ------------------------------------------------------------------ */

/* Before a device op: orders the comm stream after stream 0 and creates the
 * op's completion event. */
static zinc_status nccl_begin(zinc_comm *c, zinc_comm_handle *h, nccl_group **out)
{
    zinc_status st = ZINC_OK;
    nccl_group *g = c->dev_impl;
    nccl_req *r = nccl_req_of(h);
    r->done = NULL;
    *out = g;
    if (!g || !g->comm)
        return zinc_error(ZINC_ERR_NCCL, "%s on group %s: %s", h->op, c->name,
                          g ? g->why : "no NCCL communicator");
    CUDA_TRY(h->op, c->name, cudaEventRecord, (g->ready, cudaStreamLegacy));
    CUDA_TRY(h->op, c->name, cudaStreamWaitEvent, (g->stream, g->ready, 0));
    CUDA_TRY(h->op, c->name, cudaEventCreateWithFlags, (&r->done, cudaEventDisableTiming));
cleanup:
    return st;
}

/* After the NCCL call (its status st): records the completion event, or
 * releases it on failure. */
static zinc_status nccl_end(zinc_comm *c, zinc_comm_handle *h, nccl_group *g, zinc_status st)
{
    nccl_req *r = nccl_req_of(h);
    if (st == ZINC_OK) st = CUDA_CHECK(h->op, c->name, cudaEventRecord, (r->done, g->stream));
    if (st != ZINC_OK && r->done) { /* the NCCL call or the record failed: no completion */
        cudaEventDestroy(r->done);
        r->done = NULL;
    }
    return st;
}

static zinc_status nccl_all_reduce(zinc_comm *c, const void *send, void *recv, size_t n,
                                   zinc_dtype dt, zinc_redop op, zinc_comm_handle *h)
{
    if (!h->device) return comm_backend_mpi.all_reduce(c, send, recv, n, dt, op, h);
    nccl_group *g = NULL;
    zinc_status st = nccl_begin(c, h, &g);
    if (st == ZINC_OK)
        st = NCCL_CHECK(h->op, c->name, ncclAllReduce,
                        (send, recv, n, nccl_type(dt), nccl_op(op), g->comm, g->stream));
    return nccl_end(c, h, g, st);
}

static zinc_status nccl_reduce_scatter(zinc_comm *c, const void *send, void *recv, size_t n,
                                       zinc_dtype dt, zinc_redop op, zinc_comm_handle *h)
{
    if (!h->device) return comm_backend_mpi.reduce_scatter(c, send, recv, n, dt, op, h);
    nccl_group *g = NULL;
    zinc_status st = nccl_begin(c, h, &g);
    if (st == ZINC_OK)
        st = NCCL_CHECK(h->op, c->name, ncclReduceScatter,
                        (send, recv, n, nccl_type(dt), nccl_op(op), g->comm, g->stream));
    return nccl_end(c, h, g, st);
}

static zinc_status nccl_all_gather(zinc_comm *c, const void *send, void *recv, size_t n,
                                   zinc_dtype dt, zinc_comm_handle *h)
{
    if (!h->device) return comm_backend_mpi.all_gather(c, send, recv, n, dt, h);
    nccl_group *g = NULL;
    zinc_status st = nccl_begin(c, h, &g);
    /* in place (send == recv + rank*n) is NCCL's in-place all-gather too */
    if (st == ZINC_OK)
        st = NCCL_CHECK(h->op, c->name, ncclAllGather,
                        (send, recv, n, nccl_type(dt), g->comm, g->stream));
    return nccl_end(c, h, g, st);
}

static zinc_status nccl_broadcast(zinc_comm *c, void *buf, size_t n, zinc_dtype dt, int root,
                                  zinc_comm_handle *h)
{
    if (!h->device) return comm_backend_mpi.broadcast(c, buf, n, dt, root, h);
    nccl_group *g = NULL;
    zinc_status st = nccl_begin(c, h, &g);
    if (st == ZINC_OK)
        st = NCCL_CHECK(h->op, c->name, ncclBroadcast,
                        (buf, buf, n, nccl_type(dt), root, g->comm, g->stream));
    return nccl_end(c, h, g, st);
}

static zinc_status nccl_send(zinc_comm *c, const void *buf, size_t n, zinc_dtype dt, int peer,
                             int tag, zinc_comm_handle *h)
{
    if (!h->device) return comm_backend_mpi.send(c, buf, n, dt, peer, tag, h);
    nccl_group *g = NULL;
    zinc_status st = nccl_begin(c, h, &g);
    if (st == ZINC_OK)
        st = NCCL_CHECK(h->op, c->name, ncclSend,
                        (buf, n, nccl_type(dt), peer, g->comm, g->stream));
    return nccl_end(c, h, g, st);
}

static zinc_status nccl_recv(zinc_comm *c, void *buf, size_t n, zinc_dtype dt, int peer, int tag,
                             zinc_comm_handle *h)
{
    if (!h->device) return comm_backend_mpi.recv(c, buf, n, dt, peer, tag, h);
    nccl_group *g = NULL;
    zinc_status st = nccl_begin(c, h, &g);
    if (st == ZINC_OK)
        st = NCCL_CHECK(h->op, c->name, ncclRecv,
                        (buf, n, nccl_type(dt), peer, g->comm, g->stream));
    return nccl_end(c, h, g, st);
}

static zinc_status nccl_barrier(zinc_comm *c, zinc_comm_handle *h)
{
    return comm_backend_mpi.barrier(c, h);
}

/* Releases h's completion event (NULL-safe). */
static void nccl_req_release(zinc_comm_handle *h)
{
    nccl_req *r = nccl_req_of(h);
    if (r->done) cudaEventDestroy(r->done);
    r->done = NULL;
}

static zinc_status nccl_test(zinc_comm_handle *h, int *done, int *arrived)
{
    if (!h->device) return comm_backend_mpi.test(h, done, arrived);
    zinc_status st = ZINC_OK;
    zinc_comm *c = h->comm;
    nccl_group *g = c->dev_impl;
    nccl_req *r = nccl_req_of(h);
    *arrived = 1;
    *done = 1;
    if (!r->done) return ZINC_OK;
    cudaError_t e = cudaEventQuery(r->done);
    if (e == cudaSuccess) { /* later device work on stream 0 sees the result */
        st = CUDA_CHECK(h->op, c->name, cudaStreamWaitEvent, (cudaStreamLegacy, r->done, 0));
        nccl_req_release(h);
        return st;
    }
    if (e != cudaErrorNotReady) {
        nccl_req_release(h);
        return cuda_status(e, h->op, c->name, "cudaEventQuery", __FILE__, __LINE__);
    }
    if (!g->comm) { /* aborted by another op's watchdog */
        nccl_req_release(h);
        return zinc_error(ZINC_ERR_NCCL, "%s on group %s: %s", h->op, c->name, g->why);
    }
    ncclResult_t ae = ncclSuccess;
    st = NCCL_CHECK(h->op, c->name, ncclCommGetAsyncError, (g->comm, &ae));
    if (st == ZINC_OK && ae != ncclSuccess && ae != ncclInProgress) {
        const char *why = ncclGetErrorString(ae);
        nccl_group_abort(g, "an asynchronous error", h->op, c->name);
        nccl_req_release(h);
        return zinc_error(ZINC_ERR_NCCL,
                          "%s on group %s: NCCL failed asynchronously: %s; the group's NCCL "
                          "communicator was aborted", h->op, c->name, why);
    }
    if (st != ZINC_OK) {
        nccl_req_release(h);
        return st;
    }
    *done = 0;
    return ZINC_OK;
}

static const char *nccl_timed_out(zinc_comm_handle *h)
{
    if (!h->device) return NULL;
    nccl_group *g = h->comm->dev_impl;
    if (!g || !g->comm) return NULL;
    nccl_group_abort(g, "a timeout", h->op, h->comm->name);
    return "; the group's NCCL communicator was aborted";
}

static int nccl_release_stale(zinc_comm_handle *h)
{
    if (!h->device) return comm_backend_mpi.release_stale(h);
    /* a stale device op's communicator was aborted when it timed out */
    nccl_req_release(h);
    return 1;
}

static void nccl_abort(zinc_comm *c, int code)
{
    comm_backend_mpi.abort(c, code);
}

const comm_backend comm_backend_nccl = {
    .name = "nccl",
    .handle_bytes = sizeof(nccl_handle),
    .init_world = nccl_init_world,
    .split = nccl_split,
    .destroy = nccl_destroy,
    .all_reduce = nccl_all_reduce,
    .reduce_scatter = nccl_reduce_scatter,
    .all_gather = nccl_all_gather,
    .broadcast = nccl_broadcast,
    .send = nccl_send,
    .recv = nccl_recv,
    .barrier = nccl_barrier,
    .test = nccl_test,
    .release_stale = nccl_release_stale,
    .abort = nccl_abort,
    .set_device = nccl_set_device,
    .timed_out = nccl_timed_out,
};

#endif /* ZINC_HAVE_NCCL */
