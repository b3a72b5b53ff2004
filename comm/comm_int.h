/* comm_int.h - private to comm/: the zinc_comm struct, handles and the
 * backend vtable. comm.c owns everything backend-independent (argument checks,
 * byte counters, handles, the timeout-bounded wait, stale requests, staging
 * of device buffers through pinned host memory, the mesh); a backend
 * (comm_mpi.c, comm_nccl.c) only starts operations and tests them for
 * completion. Nothing outside comm/ includes this file. */
#ifndef ZINC_COMM_INT_H
#define ZINC_COMM_INT_H

#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#include "zinc/comm.h"
#include "zinc/device.h"

#define COMM_NAME_MAX 32

#define COMM_RING 64 /* collectives each group remembers (comm_diag.c) */

typedef struct comm_backend comm_backend;
typedef struct comm_diag_query comm_diag_query;

/* One collective in a group's ring (comm_diag.c). */
typedef struct comm_rec {
    uint64_t seq;               /* its number on the group, from 1 */
    uint64_t bytes;             /* payload: count x dtype size as the caller gave it */
    double t_start, t_end;      /* t_end 0 until its wait completes it */
    int32_t op, root;           /* zinc_comm_op; broadcast's root, else -1 */
} comm_rec;
/* Reusable pinned host buffers for staging device buffers (comm.c). One per
 * world, shared by the groups split from it. */
typedef struct comm_stage_pool comm_stage_pool;

struct zinc_comm {
    const comm_backend *be;
    void *impl;                 /* backend state (owned by the backend) */
    char name[COMM_NAME_MAX];   /* "world", "dp", ... */
    int rank, size;
    int local_rank, local_size;
    int is_world;
    double timeout_s;           /* <= 0: waits are unbounded */
    uint64_t bytes;             /* algorithmic bytes since creation/reset */
    uint64_t op_bytes[ZINC_COMM_N_OPS]; /* the same, by kind of op */
    zinc_comm_handle *stale;    /* timed-out requests, reaped later */
    int n_stale;
    const zinc_device *dev;     /* zinc_comm_set_device; NULL: host buffers only */
    int dev_native;             /* the backend takes this group's device buffers itself */
    void *dev_impl;             /* the backend's device state (nccl), owned by it */
    comm_stage_pool *pool;      /* the world's; owned by the world */
    /* Hang diagnostics (comm_diag.c). */
    int world_rank;             /* this process's rank in the world */
    int *members;               /* world rank of each rank of the group; owned */
    uint64_t seq;               /* collectives started on the group */
    comm_rec ring[COMM_RING];   /* the last of them: ring[(seq - 1) % COMM_RING] */
    zinc_comm *diag_next;       /* the process's list of live groups */
};

/* One in-flight operation. The backend's request state lives in impl[]
 * (be->handle_bytes of it), so one allocation serves each op. */
struct zinc_comm_handle {
    zinc_comm *comm;            /* borrowed; must outlive the handle */
    const char *op;             /* static: "all_reduce", ... */
    int p2p;                    /* send/recv: may be cancelled */
    uint64_t n_bytes;           /* algorithmic bytes: sizes the wait's poll phase */
    int track_arrival;          /* backend reports when every rank has entered */
    int device;                 /* the buffers are device memory (dev_native groups only) */
    int kind;                   /* zinc_comm_op */
    int root;                   /* broadcast's root, else -1 */
    uint64_t payload;           /* count x dtype size */
    uint64_t seq;               /* the collective's number on its group; 0 for p2p */
    zinc_comm_handle *next;     /* link in comm->stale */
    /* Staging (comm.c): a pool buffer the op runs on instead of device
     * memory, and the copy to the device that completes the op. */
    const zinc_device *stage_dev;
    void *stage;
    size_t stage_bytes;         /* its capacity */
    void *copy_dst;             /* device recv buffer, or NULL */
    const void *copy_src;       /* in stage */
    size_t copy_bytes;
    _Alignas(16) unsigned char impl[];
};

/* The backend vtable. Start functions begin a nonblocking operation on
 * pre-validated arguments and fill h->impl; they never wait. When
 * h->track_arrival is set (collectives only, same on every rank) they also
 * start whatever lets test() tell that every rank has entered the op (the
 * mpi backend: an MPI_Ibarrier issued right after the op). test() reports
 * completion and, once done (or failed), releases the request.
 *
 * Buffers handed to the start functions are host memory unless h->device is
 * set, which comm.c does only on groups whose c->dev_native the backend has
 * set (all of the op's buffers are then device memory). */
struct comm_backend {
    const char *name;
    size_t handle_bytes;
    /* Initializes the backend and fills world (rank, size, local_*, impl). */
    zinc_status (*init_world)(int *argc, char ***argv, zinc_comm *world);
    /* Collective over parent; fills child (rank, size, local_*, impl). */
    zinc_status (*split)(zinc_comm *parent, int color, int key, zinc_comm *child);
    /* Frees c->impl; for the world also finalizes the backend. */
    void (*destroy)(zinc_comm *c);
    zinc_status (*all_reduce)(zinc_comm *c, const void *send, void *recv, size_t n,
                              zinc_dtype dt, zinc_redop op, zinc_comm_handle *h);
    zinc_status (*reduce_scatter)(zinc_comm *c, const void *send, void *recv, size_t n,
                                  zinc_dtype dt, zinc_redop op, zinc_comm_handle *h);
    zinc_status (*all_gather)(zinc_comm *c, const void *send, void *recv, size_t n,
                              zinc_dtype dt, zinc_comm_handle *h);
    zinc_status (*broadcast)(zinc_comm *c, void *buf, size_t n, zinc_dtype dt, int root,
                             zinc_comm_handle *h);
    zinc_status (*send)(zinc_comm *c, const void *buf, size_t n, zinc_dtype dt, int peer,
                        int tag, zinc_comm_handle *h);
    zinc_status (*recv)(zinc_comm *c, void *buf, size_t n, zinc_dtype dt, int peer, int tag,
                        zinc_comm_handle *h);
    zinc_status (*barrier)(zinc_comm *c, zinc_comm_handle *h);
    /* Sets *done, and *arrived once every rank has entered the op (always 1
     * without track_arrival); on done or on error the request is released. */
    zinc_status (*test)(zinc_comm_handle *h, int *done, int *arrived);
    /* Last chance for a stale request at destroy: cancel it if the backend
     * can (p2p), test it once more; returns 1 when it is released, 0 when it
     * must be leaked (an unfinished collective cannot be freed in MPI). */
    int (*release_stale)(zinc_comm_handle *h);
    void (*abort)(zinc_comm *c, int code);
    /* Optional. Collective over c: c->dev changed to dev (NULL: unbound).
     * Sets up what the backend needs to take device buffers itself and sets
     * c->dev_native accordingly. Without it device buffers are staged. */
    zinc_status (*set_device)(zinc_comm *c, const zinc_device *dev);
    /* Optional. The wait gave up on h, which is about to go stale; returns a
     * note appended to the timeout error (" (...)") or NULL. */
    const char *(*timed_out)(zinc_comm_handle *h);
};

/* The mpi backend's request in h->impl; a backend that hands host buffers
 * to the mpi backend (nccl) sizes its handles to hold it. */
typedef struct mpi_req {
    MPI_Request req;
    MPI_Request arrival; /* Ibarrier after the op when tracking arrival */
    MPI_Datatype type;   /* recv: to check the received count */
    int n, peer, tag, is_recv;
    /* A reduce-scatter run by the backend itself as a ring of point-to-point
     * steps (comm_mpi.c), advanced by test(); is_ring marks it. */
    int is_ring;
    struct mpi_ring {
        MPI_Request sr[2];     /* this step's send and recv */
        MPI_Op op;
        const char *send;      /* the caller's input, size blocks */
        char *out;             /* the caller's recv: the result */
        char *tmp;             /* the other partial buffer (size > 2); owned */
        size_t block_bytes;
        int step, steps;       /* steps done, of size - 1 */
    } ring;
} mpi_req;

/* comm_diag.c: the rings, the side channel that compares them on a
 * timeout, and the ZINC_FAULT_SKIP_COLL hook. Times are comm.c's clock. */
zinc_status comm_diag_world_init(zinc_comm *world); /* after the backend's init */
void comm_diag_register(zinc_comm *c);              /* a split group, members set */
void comm_diag_unregister(zinc_comm *c);            /* at destroy; frees members */
int comm_diag_skip(const zinc_comm *c, const char *op); /* 1: skip this collective */
void comm_diag_started(zinc_comm *c, zinc_comm_handle *h, double now);
void comm_diag_wait_begin(zinc_comm_handle *h, double now);
void comm_diag_wait_end(zinc_comm_handle *h, int done, double now);
void comm_diag_poll(double now); /* answers other ranks' questions; never blocks */
comm_diag_query *comm_diag_start(zinc_comm *c, zinc_comm_handle *h); /* NULL: none */
void comm_diag_progress(comm_diag_query *q);
/* Writes " : rank 1 (...) never entered it; ..." for the timeout's error. */
void comm_diag_finish(comm_diag_query *q, double now, char *note, size_t cap);
void comm_diag_query_free(comm_diag_query *q); /* NULL-safe */
void comm_diag_log_ring(const zinc_comm *c, double now);

extern const comm_backend comm_backend_mpi;
#ifdef ZINC_HAVE_NCCL
/* NCCL for device buffers, the mpi backend for everything else (comm_nccl.c). */
extern const comm_backend comm_backend_nccl;
/* Set by comm_find_backend: the world was asked for "auto". Then NCCL is
 * used only if every node has a GPU per local rank (agreed by all ranks);
 * otherwise device buffers are staged through MPI, as the mpi backend does. */
extern int comm_nccl_auto;
#endif

#endif
