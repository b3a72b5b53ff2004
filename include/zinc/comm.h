/* zinc/comm.h - process groups and collectives.
 *
 * A zinc_comm is one group of ranks (the world, or one DP/TP/PP group of the
 * mesh) bound to a backend (mpi, or nccl in CUDA builds) behind one vtable.
 * Buffers are host memory, or device memory of the device set with
 * zinc_comm_set_device().
 *
 * Every collective is *collective*: all ranks of the group call it, in the same
 * order, with the same count and dtype. Each op adds its algorithmic bytes per
 * rank (ring formulas: all_reduce 2(n-1)/n * bytes, reduce_scatter and
 * all_gather (n-1)/n * full bytes, broadcast bytes, send/recv bytes) to the
 * group's counter, read with zinc_comm_bytes().
 *
 * Async ops return a handle; zinc_comm_wait() completes and frees it. Every
 * wait (blocking ops wait internally) is bounded by the group's timeout
 * (comm_timeout_s, default 300 s; env ZINC_COMM_TIMEOUT_S): a collective that
 * exceeds it fails with ZINC_ERR_TIMEOUT naming the op and the group, instead
 * of hanging. A rank that dies takes the job down through mpirun, which names it.
 */
#ifndef ZINC_COMM_H
#define ZINC_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/status.h"
#include "zinc/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zinc_comm zinc_comm;
typedef struct zinc_comm_handle zinc_comm_handle;

typedef enum zinc_redop {
    ZINC_REDOP_SUM = 0,
    ZINC_REDOP_MAX,
    ZINC_REDOP_MIN,
} zinc_redop;

/* Initializes the backend ("mpi" or "auto"; "nccl" in CUDA builds, which
 * also uses MPI) and returns the world group. Calls MPI_Init (argc/argv may
 * be NULL). Destroy the world last with zinc_comm_destroy(), which finalizes
 * MPI. nccl: ZINC_ERR_CONFIG when a node runs more ranks than it has GPUs. */
zinc_status zinc_comm_init_world(const char *backend, int *argc, char ***argv, zinc_comm **world);

/* NULL-safe. Destroying the world group finalizes the backend. */
void zinc_comm_destroy(zinc_comm *c);

int zinc_comm_rank(const zinc_comm *c);
int zinc_comm_size(const zinc_comm *c);
/* Rank among the ranks on this node (OpenMPI's local rank), and their count. */
int zinc_comm_local_rank(const zinc_comm *c);
int zinc_comm_local_size(const zinc_comm *c);
const char *zinc_comm_name(const zinc_comm *c); /* "world", "dp", "tp", "pp" */

/* Seconds a wait may take before ZINC_ERR_TIMEOUT. */
void zinc_comm_set_timeout(zinc_comm *c, double seconds);

typedef struct zinc_device zinc_device; /* zinc/device.h */

/* Binds the group (and groups split from it afterwards) to the rank's device:
 * buffers that dev->is_device_ptr() reports as device memory are then
 * accepted by every op. The mpi backend stages them through pinned host
 * buffers (dev->host_alloc); the nccl backend hands them to NCCL. NULL
 * (default): buffers are host memory. dev is borrowed and must outlive the
 * group. *Collective* over c (the nccl backend creates the group's NCCL
 * communicator here; ZINC_ERR_NCCL/ZINC_ERR_CUDA on every rank if that fails,
 * and the group keeps its previous device). Returns ZINC_OK otherwise. */
zinc_status zinc_comm_set_device(zinc_comm *c, const zinc_device *dev);

/* Collective over parent: splits it into groups of ranks with the same color;
 * order within a group follows key. name labels the group in errors. */
zinc_status zinc_comm_split(zinc_comm *parent, int color, int key, const char *name,
                            zinc_comm **out);

/* recv = reduce(send) over the group; send == recv is in-place. */
zinc_status zinc_comm_all_reduce(zinc_comm *c, const void *send, void *recv, size_t n,
                                 zinc_dtype dt, zinc_redop op, zinc_comm_handle **h);
/* send holds size*n elements; rank r receives the reduction of block r (n elements). */
zinc_status zinc_comm_reduce_scatter(zinc_comm *c, const void *send, void *recv, size_t n,
                                     zinc_dtype dt, zinc_redop op, zinc_comm_handle **h);
/* Each rank contributes n elements; recv holds size*n, rank r's block at r*n.
 * send may equal recv + rank*n (in place). */
zinc_status zinc_comm_all_gather(zinc_comm *c, const void *send, void *recv, size_t n,
                                 zinc_dtype dt, zinc_comm_handle **h);
zinc_status zinc_comm_broadcast(zinc_comm *c, void *buf, size_t n, zinc_dtype dt, int root,
                                zinc_comm_handle **h);
/* Point to point (not collective); tag distinguishes concurrent messages. */
zinc_status zinc_comm_send(zinc_comm *c, const void *buf, size_t n, zinc_dtype dt, int peer,
                           int tag, zinc_comm_handle **h);
zinc_status zinc_comm_recv(zinc_comm *c, void *buf, size_t n, zinc_dtype dt, int peer,
                           int tag, zinc_comm_handle **h);
zinc_status zinc_comm_barrier(zinc_comm *c);

/* Pass h == NULL to the ops above for blocking behaviour. Otherwise wait
 * completes the op and frees *h (sets it NULL); NULL-safe. */
zinc_status zinc_comm_wait(zinc_comm_handle **h);
/* Completes the op if it is done, without waiting: *done 1 (and *h freed, set NULL;
 * also when *h is NULL or the op failed, whose error is returned), or 0 (still in
 * flight: *h untouched). Each call lets the backend move the op along. */
zinc_status zinc_comm_test(zinc_comm_handle **h, int *done);

/* Collective kinds, for per-kind byte counters. */
typedef enum zinc_comm_op {
    ZINC_COMM_OP_ALL_REDUCE = 0,
    ZINC_COMM_OP_REDUCE_SCATTER,
    ZINC_COMM_OP_ALL_GATHER,
    ZINC_COMM_OP_BROADCAST,
    ZINC_COMM_OP_SEND,
    ZINC_COMM_OP_RECV,
    ZINC_COMM_OP_BARRIER,
    ZINC_COMM_N_OPS,
} zinc_comm_op;

/* Name of an op kind ("all_reduce", ...). */
const char *zinc_comm_op_name(zinc_comm_op op);

/* Algorithmic bytes this rank has moved in this group since creation/reset:
 * in total, and for one kind of op. */
uint64_t zinc_comm_bytes(const zinc_comm *c);
uint64_t zinc_comm_bytes_op(const zinc_comm *c, zinc_comm_op op);
void zinc_comm_reset_bytes(zinc_comm *c);

/* Collective over c: combines every rank's status. If any rank failed, every
 * rank returns the status of the lowest failing rank, with that rank's detail
 * as its own zinc_last_error(); otherwise ZINC_OK. The point every rank
 * reaches after local work that may fail, so no rank is left waiting. */
zinc_status zinc_comm_agree(zinc_comm *c, zinc_status st);

/* Ends every rank of the job at once (MPI_Abort); for tools, never the library. */
void zinc_comm_abort(zinc_comm *world, int code);

/* The PP x DP x TP mesh over the world: rank = pp*(DP*TP) + dp*TP + tp.
 * Each member group is created by zinc_mesh_create (collective over world). */
typedef struct zinc_mesh {
    int pp, dp, tp;             /* sizes */
    int pp_rank, dp_rank, tp_rank;
    zinc_comm *world;           /* borrowed */
    zinc_comm *dp_group, *tp_group, *pp_group; /* owned */
} zinc_mesh;

/* Collective over world. pp*dp*tp must equal the world size. */
zinc_status zinc_mesh_create(zinc_comm *world, int pp, int dp, int tp, zinc_mesh **out);
void zinc_mesh_destroy(zinc_mesh *m); /* NULL-safe; does not destroy world */

#ifdef __cplusplus
}
#endif

#endif
