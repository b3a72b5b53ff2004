/* comm_mpi.c - the MPI backend: host buffers, every op a nonblocking MPI call
 * (MPI_Iallreduce, MPI_Iallgather, MPI_Ibcast, MPI_Isend/Irecv, MPI_Ibarrier)
 * completed by comm.c's bounded wait. Reduce-scatter over 2 or more ranks is
 * the backend's own ring of MPI_Isend/Irecv steps, advanced by test() (see
 * "reduce-scatter as a ring" below for why).
 *
 * Every communicator (and MPI_COMM_WORLD/SELF) gets MPI_ERRORS_RETURN, so an
 * MPI failure becomes ZINC_ERR_MPI naming the op, the group and MPI's error
 * string. The world group is a dup of MPI_COMM_WORLD, so zinc's traffic never
 * matches anyone else's.
 *
 * bf16 and f16 are 2-byte contiguous MPI types; their reductions use
 * user-defined ops that convert to float, reduce, and round back to nearest
 * even (one rounding per pairwise step of MPI's reduction tree). Data moves of
 * these types are plain bytes.
 *
 * MPI counts are int: an op of more than INT_MAX elements per call is
 * ZINC_ERR_UNSUPPORTED (split it). MPI is initialized with
 * MPI_THREAD_FUNNELED: call comm from the thread that initialized it.
 */
#include <limits.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_int.h"
#include "zinc/log.h"

typedef struct mpi_group {
    MPI_Comm comm;
    MPI_Comm coll;      /* a dup of comm for the backend's own collectives' messages */
    unsigned coll_seq;  /* those collectives started on this group: their tags */
} mpi_group;

/* Process-wide MPI state: MPI itself is process-global. */
static struct {
    int n_worlds;       /* live world groups */
    int we_initialized; /* we called MPI_Init_thread, so we finalize */
    int n_leaked;       /* stale requests that never completed */
    int tag_ub;
    MPI_Datatype bf16, f16;
    MPI_Op half_sum, half_max, half_min;
} g_mpi;

static MPI_Comm mpi_comm_of(const zinc_comm *c)
{
    return ((const mpi_group *)c->impl)->comm;
}

static mpi_req *mpi_req_of(zinc_comm_handle *h)
{
    return (mpi_req *)(void *)h->impl;
}

/* Resets h's requests; returns the one the op's MPI call fills. */
static MPI_Request *mpi_req_start(zinc_comm_handle *h)
{
    mpi_req *r = mpi_req_of(h);
    r->req = r->arrival = MPI_REQUEST_NULL;
    return &r->req;
}

/* Records ZINC_ERR_MPI: "<op> on group <name>: <call>: <MPI error string>". */
static zinc_status mpi_error(const char *op, const char *group, const char *call, int rc)
{
    char msg[MPI_MAX_ERROR_STRING + 1];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
    msg[len] = '\0';
    if (!len) snprintf(msg, sizeof msg, "MPI error code %d", rc);
    return zinc_error(ZINC_ERR_MPI, "%s on group %s: %s: %s", op, group, call, msg);
}

#define MPI_TRY(op, group, call)                                                  \
    do {                                                                          \
        int rc_ = (call);                                                         \
        if (rc_ != MPI_SUCCESS) {                                                 \
            st = mpi_error((op), (group), #call, rc_);                            \
            goto cleanup;                                                         \
        }                                                                         \
    } while (0)

/* After a collective started: the barrier that tells test() every rank is in. */
static zinc_status mpi_track_arrival(zinc_comm *c, zinc_comm_handle *h)
{
    zinc_status st = ZINC_OK;
    if (!h->track_arrival) return ZINC_OK;
    MPI_TRY(h->op, c->name, MPI_Ibarrier(mpi_comm_of(c), &mpi_req_of(h)->arrival));
cleanup:
    return st;
}

/* ---- bf16/f16 reductions ------------------------------------------------ */

static void half_reduce(const uint16_t *in, uint16_t *io, int n, int is_bf16, zinc_redop op)
{
    /* sums, the hot case (gradient reductions), as plain loops that vectorize */
    if (op == ZINC_REDOP_SUM && is_bf16) {
#pragma omp simd
        for (int i = 0; i < n; i++) io[i] = zinc_f32_to_bf16(zinc_bf16_to_f32(in[i]) + zinc_bf16_to_f32(io[i]));
        return;
    }
    if (op == ZINC_REDOP_SUM) {
        for (int i = 0; i < n; i++) io[i] = zinc_f32_to_f16(zinc_f16_to_f32(in[i]) + zinc_f16_to_f32(io[i]));
        return;
    }
    float (*to)(uint16_t) = is_bf16 ? zinc_bf16_to_f32 : zinc_f16_to_f32;
    uint16_t (*from)(float) = is_bf16 ? zinc_f32_to_bf16 : zinc_f32_to_f16;
    for (int i = 0; i < n; i++) {
        float a = to(in[i]), b = to(io[i]);
        switch (op) {
        case ZINC_REDOP_SUM: io[i] = from(a + b); break;
        case ZINC_REDOP_MAX: if (a > b) io[i] = in[i]; break;
        case ZINC_REDOP_MIN: if (a < b) io[i] = in[i]; break;
        }
    }
}

static void half_sum_fn(void *in, void *io, int *len, MPI_Datatype *dt)
{
    half_reduce(in, io, *len, *dt == g_mpi.bf16, ZINC_REDOP_SUM);
}
static void half_max_fn(void *in, void *io, int *len, MPI_Datatype *dt)
{
    half_reduce(in, io, *len, *dt == g_mpi.bf16, ZINC_REDOP_MAX);
}
static void half_min_fn(void *in, void *io, int *len, MPI_Datatype *dt)
{
    half_reduce(in, io, *len, *dt == g_mpi.bf16, ZINC_REDOP_MIN);
}

static MPI_Datatype mpi_type(zinc_dtype dt)
{
    switch (dt) {
    case ZINC_DTYPE_F32: return MPI_FLOAT;
    case ZINC_DTYPE_F64: return MPI_DOUBLE;
    case ZINC_DTYPE_I32: return MPI_INT32_T;
    case ZINC_DTYPE_I64: return MPI_INT64_T;
    case ZINC_DTYPE_U8: return MPI_UINT8_T;
    case ZINC_DTYPE_BF16: return g_mpi.bf16;
    case ZINC_DTYPE_F16: return g_mpi.f16;
    }
    return MPI_DATATYPE_NULL;
}

static MPI_Op mpi_op(zinc_dtype dt, zinc_redop op)
{
    int half = dt == ZINC_DTYPE_BF16 || dt == ZINC_DTYPE_F16;
    switch (op) {
    case ZINC_REDOP_SUM: return half ? g_mpi.half_sum : MPI_SUM;
    case ZINC_REDOP_MAX: return half ? g_mpi.half_max : MPI_MAX;
    case ZINC_REDOP_MIN: return half ? g_mpi.half_min : MPI_MIN;
    }
    return MPI_OP_NULL;
}

static zinc_status mpi_check_int(const zinc_comm *c, const char *op, size_t n)
{
    if (n > (size_t)INT_MAX)
        return zinc_error(ZINC_ERR_UNSUPPORTED,
                          "%s on group %s: %zu elements exceed MPI's int count; split the op",
                          op, c->name, n);
    return ZINC_OK;
}

/* Fills the node-local rank and size of comm (ranks sharing memory). */
static zinc_status mpi_local(zinc_comm *c, MPI_Comm comm)
{
    zinc_status st = ZINC_OK;
    MPI_Comm shm = MPI_COMM_NULL;
    MPI_TRY("split", c->name,
            MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &shm));
    MPI_TRY("split", c->name, MPI_Comm_rank(shm, &c->local_rank));
    MPI_TRY("split", c->name, MPI_Comm_size(shm, &c->local_size));
cleanup:
    if (shm != MPI_COMM_NULL) MPI_Comm_free(&shm);
    return st;
}

/* Takes ownership of comm: on failure it is freed. */
static zinc_status mpi_group_fill(zinc_comm *c, MPI_Comm comm)
{
    zinc_status st = ZINC_OK;
    mpi_group *g = calloc(1, sizeof *g);
    if (!g) {
        st = zinc_error(ZINC_ERR_NOMEM, "comm group %s: out of memory", c->name);
        goto cleanup;
    }
    g->coll = MPI_COMM_NULL;
    MPI_TRY("split", c->name, MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
    MPI_TRY("split", c->name, MPI_Comm_dup(comm, &g->coll)); /* inherits the handler */
    MPI_TRY("split", c->name, MPI_Comm_rank(comm, &c->rank));
    MPI_TRY("split", c->name, MPI_Comm_size(comm, &c->size));
    st = mpi_local(c, comm);
    if (st != ZINC_OK) goto cleanup;
    g->comm = comm;
    c->impl = g;
    return ZINC_OK;
cleanup:
    if (g && g->coll != MPI_COMM_NULL) MPI_Comm_free(&g->coll);
    free(g);
    MPI_Comm_free(&comm);
    return st;
}

static void mpi_free_globals(void)
{
    if (g_mpi.half_sum != MPI_OP_NULL) MPI_Op_free(&g_mpi.half_sum);
    if (g_mpi.half_max != MPI_OP_NULL) MPI_Op_free(&g_mpi.half_max);
    if (g_mpi.half_min != MPI_OP_NULL) MPI_Op_free(&g_mpi.half_min);
    if (g_mpi.bf16 != MPI_DATATYPE_NULL) MPI_Type_free(&g_mpi.bf16);
    if (g_mpi.f16 != MPI_DATATYPE_NULL) MPI_Type_free(&g_mpi.f16);
}

static zinc_status mpi_init_globals(void)
{
    zinc_status st = ZINC_OK;
    g_mpi.bf16 = g_mpi.f16 = MPI_DATATYPE_NULL;
    g_mpi.half_sum = g_mpi.half_max = g_mpi.half_min = MPI_OP_NULL;
    MPI_TRY("init", "world", MPI_Type_contiguous(2, MPI_BYTE, &g_mpi.bf16));
    MPI_TRY("init", "world", MPI_Type_commit(&g_mpi.bf16));
    MPI_TRY("init", "world", MPI_Type_contiguous(2, MPI_BYTE, &g_mpi.f16));
    MPI_TRY("init", "world", MPI_Type_commit(&g_mpi.f16));
    MPI_TRY("init", "world", MPI_Op_create(half_sum_fn, 1, &g_mpi.half_sum));
    MPI_TRY("init", "world", MPI_Op_create(half_max_fn, 1, &g_mpi.half_max));
    MPI_TRY("init", "world", MPI_Op_create(half_min_fn, 1, &g_mpi.half_min));
    void *ub = NULL;
    int flag = 0;
    MPI_TRY("init", "world", MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag));
    g_mpi.tag_ub = flag && ub ? *(int *)ub : 32767; /* 32767: MPI's guaranteed minimum */
    return ZINC_OK;
cleanup:
    mpi_free_globals();
    return st;
}

static zinc_status mpi_init_world(int *argc, char ***argv, zinc_comm *world)
{
    zinc_status st = ZINC_OK;
    int inited = 0, finalized = 0, provided = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized)
        return zinc_error(ZINC_ERR_MPI, "comm init: MPI was already finalized; it cannot "
                                        "be initialized twice in one process");
    if (!inited) {
        MPI_TRY("init", "world", MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
        g_mpi.we_initialized = 1;
    }
    MPI_TRY("init", "world", MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MPI_TRY("init", "world", MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN));
    if (g_mpi.n_worlds == 0) {
        st = mpi_init_globals();
        if (st != ZINC_OK) goto cleanup;
    }
    MPI_Comm comm = MPI_COMM_NULL;
    MPI_TRY("init", "world", MPI_Comm_dup(MPI_COMM_WORLD, &comm));
    st = mpi_group_fill(world, comm);
    if (st != ZINC_OK) {
        if (g_mpi.n_worlds == 0) mpi_free_globals();
        goto cleanup;
    }
    g_mpi.n_worlds++;
    if (world->size > 1) zinc_log_set_rank(world->rank);
    return ZINC_OK;
cleanup:
    return st;
}

static zinc_status mpi_split(zinc_comm *parent, int color, int key, zinc_comm *child)
{
    zinc_status st = ZINC_OK;
    MPI_Comm comm = MPI_COMM_NULL;
    MPI_TRY("split", parent->name, MPI_Comm_split(mpi_comm_of(parent), color, key, &comm));
    return mpi_group_fill(child, comm);
cleanup:
    return st;
}

static void mpi_destroy(zinc_comm *c)
{
    mpi_group *g = c->impl;
    if (g) {
        if (g->coll != MPI_COMM_NULL) MPI_Comm_free(&g->coll);
        if (g->comm != MPI_COMM_NULL) MPI_Comm_free(&g->comm);
        free(g);
        c->impl = NULL;
    }
    if (!c->is_world) return;
    if (--g_mpi.n_worlds > 0) return;
    mpi_free_globals();
    if (!g_mpi.we_initialized) return;
    if (g_mpi.n_leaked) {
        /* MPI_Finalize would wait on them forever; leaving without it lets
         * mpirun report this rank instead of hanging the job. */
        ZINC_WARN("comm: %d operation(s) never completed; not calling MPI_Finalize",
                  g_mpi.n_leaked);
        return;
    }
    MPI_Finalize();
    g_mpi.we_initialized = 0;
}

/* ---- ops ---------------------------------------------------------------- */

static zinc_status mpi_all_reduce(zinc_comm *c, const void *send, void *recv, size_t n,
                                  zinc_dtype dt, zinc_redop op, zinc_comm_handle *h)
{
    zinc_status st = mpi_check_int(c, h->op, n);
    if (st != ZINC_OK) return st;
    const void *sb = send == recv ? MPI_IN_PLACE : send;
    MPI_TRY(h->op, c->name, MPI_Iallreduce(sb, recv, (int)n, mpi_type(dt), mpi_op(dt, op),
                                           mpi_comm_of(c), mpi_req_start(h)));
    st = mpi_track_arrival(c, h);
cleanup:
    return st;
}

/* ---- reduce-scatter as a ring ------------------------------------------
 *
 * Open MPI's MPI_Ireduce_scatter_block (libnbc) reduces the whole buffer to
 * rank 0 and scatters the blocks back from there: with 2 ranks on one node
 * that is 1.5x the bytes, all through one rank, and a fresh temporary of the
 * whole buffer per call. Measured on the 2-core CI machine, 2 ranks, a
 * 77 MB fp32 buffer (GPT-2's embedding unit): 175 ms, where exchanging the
 * same halves point to point took 12 ms.
 *
 * The ring moves (p-1)/p of the buffer per rank and reduces as it goes. At
 * step k (k = 0 .. p-2) rank r sends its partial of block (r-k-1) mod p to
 * rank r+1, receives rank r-1's partial of block (r-k-2) mod p and reduces
 * it with its own input of that block (MPI_Reduce_local: partial = own op
 * received), which it sends on at step k+1. After p-1 steps rank r holds
 * block r reduced over every rank. Partials alternate between recv and one
 * temporary so that the last one lands in recv; with 2 ranks the ring is a
 * single exchange, needs no temporary, and gives MPI's result bit for bit
 * (a op b == b op a for the sums, max and min here). With more ranks the
 * association differs from MPI's tree but is fixed for a given group size.
 *
 * Each step waits on its predecessor, so test() posts the next step when it
 * finds the current one complete. The messages go on a duplicate of the
 * group's communicator, so they never match the caller's send/recv, tagged
 * with the op's sequence number in the group, which every rank counts alike
 * because collectives are started in the same order on every rank. */

/* Ends h's ring: frees its temporary and marks every step done. dropped: a
 * failure broke the job, so its requests are dropped rather than waited on. */
static void ring_end(mpi_req *r, int dropped)
{
    if (dropped) r->ring.sr[0] = r->ring.sr[1] = MPI_REQUEST_NULL;
    free(r->ring.tmp);
    r->ring.tmp = NULL;
    r->ring.step = r->ring.steps;
}

/* Where the partial received at step k goes: the last step's into out. */
static char *ring_partial(mpi_req *r, int k)
{
    return (r->ring.steps - 1 - k) % 2 == 0 ? r->ring.out : r->ring.tmp;
}

/* Posts step r->ring.step of h's ring. */
static zinc_status ring_post(zinc_comm_handle *h)
{
    zinc_status st = ZINC_OK;
    zinc_comm *c = h->comm;
    mpi_req *r = mpi_req_of(h);
    int p = c->size, me = c->rank, k = r->ring.step;
    int send_block = ((me - k - 1) % p + p) % p;
    const char *src = k == 0 ? r->ring.send + (size_t)send_block * r->ring.block_bytes
                             : ring_partial(r, k - 1);
    MPI_Comm comm = ((const mpi_group *)c->impl)->coll;
    MPI_TRY(h->op, c->name, MPI_Irecv(ring_partial(r, k), r->n, r->type, (me + p - 1) % p,
                                      r->tag, comm, &r->ring.sr[1]));
    MPI_TRY(h->op, c->name,
            MPI_Isend(src, r->n, r->type, (me + 1) % p, r->tag, comm, &r->ring.sr[0]));
cleanup:
    return st;
}

/* Advances h's ring as far as the messages that have arrived allow; sets
 * *finished when block rank is complete in recv. On failure the ring's
 * requests are dropped (the job is broken) and *finished is set. */
static zinc_status ring_progress(zinc_comm_handle *h, int *finished)
{
    zinc_status st = ZINC_OK;
    zinc_comm *c = h->comm;
    mpi_req *r = mpi_req_of(h);
    int p = c->size, me = c->rank;
    *finished = 0;
    while (r->ring.step < r->ring.steps) {
        int flag = 0, k = r->ring.step;
        MPI_TRY(h->op, c->name, MPI_Testall(2, r->ring.sr, &flag, MPI_STATUSES_IGNORE));
        if (!flag) return ZINC_OK;
        int got_block = ((me - k - 2) % p + p) % p;
        MPI_TRY(h->op, c->name,
                MPI_Reduce_local(r->ring.send + (size_t)got_block * r->ring.block_bytes,
                                 ring_partial(r, k), r->n, r->type, r->ring.op));
        if (++r->ring.step < r->ring.steps && (st = ring_post(h)) != ZINC_OK) goto cleanup;
    }
cleanup:
    ring_end(r, st != ZINC_OK);
    *finished = 1;
    return st;
}

static zinc_status mpi_reduce_scatter(zinc_comm *c, const void *send, void *recv, size_t n,
                                      zinc_dtype dt, zinc_redop op, zinc_comm_handle *h)
{
    zinc_status st = mpi_check_int(c, h->op, n);
    if (st != ZINC_OK) return st;
    if (c->size > 1) {
        mpi_group *g = c->impl;
        mpi_req *r = mpi_req_of(h);
        mpi_req_start(h);
        r->is_ring = 1;
        r->type = mpi_type(dt);
        r->n = (int)n;
        r->tag = (int)(g->coll_seq++ % ((unsigned)g_mpi.tag_ub + 1u));
        r->ring.sr[0] = r->ring.sr[1] = MPI_REQUEST_NULL;
        r->ring.op = mpi_op(dt, op);
        r->ring.send = send;
        r->ring.out = recv;
        r->ring.block_bytes = n * zinc_dtype_size(dt);
        r->ring.steps = c->size - 1;
        if (c->size > 2) {
            r->ring.tmp = malloc(r->ring.block_bytes ? r->ring.block_bytes : 1);
            if (!r->ring.tmp) {
                ring_end(r, 0);
                return zinc_error(ZINC_ERR_NOMEM, "%s on group %s: %zu-byte ring buffer",
                                  h->op, c->name, r->ring.block_bytes);
            }
        }
        st = ring_post(h);
        if (st == ZINC_OK) st = mpi_track_arrival(c, h);
        if (st != ZINC_OK) ring_end(r, 1); /* the job is broken */
        return st;
    }
    MPI_TRY(h->op, c->name,
            MPI_Ireduce_scatter_block(send, recv, (int)n, mpi_type(dt), mpi_op(dt, op),
                                      mpi_comm_of(c), mpi_req_start(h)));
    st = mpi_track_arrival(c, h);
cleanup:
    return st;
}

static zinc_status mpi_all_gather(zinc_comm *c, const void *send, void *recv, size_t n,
                                  zinc_dtype dt, zinc_comm_handle *h)
{
    zinc_status st = mpi_check_int(c, h->op, n);
    if (st != ZINC_OK) return st;
    const char *mine = (const char *)recv + (size_t)c->rank * n * zinc_dtype_size(dt);
    if (send == (const void *)mine) {
        MPI_TRY(h->op, c->name,
                MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recv, (int)n, mpi_type(dt),
                               mpi_comm_of(c), mpi_req_start(h)));
    } else {
        MPI_TRY(h->op, c->name,
                MPI_Iallgather(send, (int)n, mpi_type(dt), recv, (int)n, mpi_type(dt),
                               mpi_comm_of(c), mpi_req_start(h)));
    }
    st = mpi_track_arrival(c, h);
cleanup:
    return st;
}

static zinc_status mpi_broadcast(zinc_comm *c, void *buf, size_t n, zinc_dtype dt, int root,
                                 zinc_comm_handle *h)
{
    zinc_status st = mpi_check_int(c, h->op, n);
    if (st != ZINC_OK) return st;
    MPI_TRY(h->op, c->name, MPI_Ibcast(buf, (int)n, mpi_type(dt), root, mpi_comm_of(c),
                                       mpi_req_start(h)));
    st = mpi_track_arrival(c, h);
cleanup:
    return st;
}

static zinc_status mpi_check_tag(const zinc_comm *c, const char *op, int tag)
{
    if (tag > g_mpi.tag_ub)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s on group %s: tag %d exceeds MPI_TAG_UB %d",
                          op, c->name, tag, g_mpi.tag_ub);
    return ZINC_OK;
}

static zinc_status mpi_send(zinc_comm *c, const void *buf, size_t n, zinc_dtype dt, int peer,
                            int tag, zinc_comm_handle *h)
{
    zinc_status st = mpi_check_int(c, h->op, n);
    if (st == ZINC_OK) st = mpi_check_tag(c, h->op, tag);
    if (st != ZINC_OK) return st;
    MPI_TRY(h->op, c->name, MPI_Isend(buf, (int)n, mpi_type(dt), peer, tag, mpi_comm_of(c),
                                      mpi_req_start(h)));
cleanup:
    return st;
}

static zinc_status mpi_recv(zinc_comm *c, void *buf, size_t n, zinc_dtype dt, int peer, int tag,
                            zinc_comm_handle *h)
{
    zinc_status st = mpi_check_int(c, h->op, n);
    if (st == ZINC_OK) st = mpi_check_tag(c, h->op, tag);
    if (st != ZINC_OK) return st;
    mpi_req *r = mpi_req_of(h);
    MPI_Request *req = mpi_req_start(h);
    r->is_recv = 1;
    r->type = mpi_type(dt);
    r->n = (int)n;
    r->peer = peer;
    r->tag = tag;
    MPI_TRY(h->op, c->name,
            MPI_Irecv(buf, (int)n, r->type, peer, tag, mpi_comm_of(c), req));
cleanup:
    return st;
}

static zinc_status mpi_barrier(zinc_comm *c, zinc_comm_handle *h)
{
    zinc_status st = ZINC_OK;
    MPI_TRY(h->op, c->name, MPI_Ibarrier(mpi_comm_of(c), mpi_req_start(h)));
cleanup:
    return st;
}

static zinc_status mpi_test(zinc_comm_handle *h, int *done, int *arrived)
{
    mpi_req *r = mpi_req_of(h);
    MPI_Status status;
    int rc = MPI_SUCCESS, op_done = 0, all_in = 1;
    *done = 0;
    *arrived = 0;
    if (r->arrival != MPI_REQUEST_NULL) rc = MPI_Test(&r->arrival, &all_in, MPI_STATUS_IGNORE);
    if (r->is_ring) {
        zinc_status st = rc == MPI_SUCCESS ? ring_progress(h, &op_done)
                                           : mpi_error(h->op, h->comm->name, "MPI_Test", rc);
        if (st != ZINC_OK) { /* the job is broken; drop the requests rather than wait on them */
            ring_end(r, 1);
            r->arrival = MPI_REQUEST_NULL;
            *done = 1;
            return st;
        }
        *arrived = all_in;
        *done = op_done && all_in;
        return ZINC_OK;
    }
    if (rc == MPI_SUCCESS) rc = MPI_Test(&r->req, &op_done, &status);
    if (rc != MPI_SUCCESS) {
        /* the job is broken; drop the requests rather than wait on them */
        r->req = r->arrival = MPI_REQUEST_NULL;
        *done = 1;
        return mpi_error(h->op, h->comm->name, "MPI_Test", rc);
    }
    *arrived = all_in;
    if (!op_done) return ZINC_OK;
    if (r->is_recv) {
        int got = 0;
        MPI_Get_count(&status, r->type, &got);
        if (got != r->n) {
            *done = 1;
            return zinc_error(ZINC_ERR_MPI,
                              "recv on group %s from rank %d tag %d: got %d elements, expected %d",
                              h->comm->name, r->peer, r->tag, got, r->n);
        }
    }
    *done = all_in; /* the arrival barrier ends with the op; keep testing it */
    return ZINC_OK;
}

static int mpi_release_stale(zinc_comm_handle *h)
{
    mpi_req *r = mpi_req_of(h);
    /* Only point-to-point requests may be cancelled; a cancelled one still
     * has to complete, which MPI then does promptly. */
    if (h->p2p && r->req != MPI_REQUEST_NULL) MPI_Cancel(&r->req);
    for (int i = 0; i < 1000; i++) { /* 0.1 s in all */
        int done = 1, arrived = 0;
        if (r->req != MPI_REQUEST_NULL || r->arrival != MPI_REQUEST_NULL ||
            (r->is_ring && r->ring.step < r->ring.steps))
            mpi_test(h, &done, &arrived);
        if (done) return 1;
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    g_mpi.n_leaked++;
    return 0;
}

static void mpi_abort(zinc_comm *c, int code)
{
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (!inited || finalized) return;
    MPI_Abort(c && c->impl ? mpi_comm_of(c) : MPI_COMM_WORLD, code);
}

const comm_backend comm_backend_mpi = {
    .name = "mpi",
    .handle_bytes = sizeof(mpi_req),
    .init_world = mpi_init_world,
    .split = mpi_split,
    .destroy = mpi_destroy,
    .all_reduce = mpi_all_reduce,
    .reduce_scatter = mpi_reduce_scatter,
    .all_gather = mpi_all_gather,
    .broadcast = mpi_broadcast,
    .send = mpi_send,
    .recv = mpi_recv,
    .barrier = mpi_barrier,
    .test = mpi_test,
    .release_stale = mpi_release_stale,
    .abort = mpi_abort,
};
