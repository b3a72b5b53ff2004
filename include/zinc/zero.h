/* zinc/zero.h - flat units under ZeRO stages 0-3: their layout over the
 * data-parallel group, their memory, and the hooks the engine calls around
 * each layer, at the accumulation boundary and for the optimizer step.
 *
 * Layer l's own parameters form unit l, padded to a multiple of dp x
 * ZERO_UNIT_ALIGN elements; DP rank r owns the slice [r*shard, (r+1)*shard)
 * of every unit. The "opt range" of a unit is what this rank's optimizer
 * updates: the whole unit at stage 0, the owned slice at stages 1-3. P is
 * the parameter/gradient storage dtype (f32, bf16, f16); master weights and
 * Adam moments are always fp32.
 *
 *   stage | params (P)       | grads (P)        | master, m, v (fp32)
 *   0     | whole            | whole            | whole
 *   1     | whole            | whole            | shard
 *   2     | whole            | shard            | shard
 *   3     | shard (*)        | shard            | shard
 *   (*) units under stage3_param_persistence_threshold stay whole.
 * With P = f32 the master weights are the parameters themselves (no copy).
 *
 * Layers compute in fp32 on "working" copies: wp (full fp32 params while the
 * unit is live) and wg (full fp32 grads while the unit's backward is open).
 * Where storage already is full fp32 they alias it; otherwise they are
 * gathered / converted on demand and released after use.
 *
 * A zero_state belongs to one engine; its collectives run on dp_group (every
 * hook marked "collective" must be reached by every rank of that group in
 * the same order). The structs are visible so the engine's checkpoint code
 * can name where each piece of state lives; only zero/ writes them.
 */
#ifndef ZINC_ZERO_H
#define ZINC_ZERO_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/aio.h"
#include "zinc/comm.h"
#include "zinc/device.h"
#include "zinc/offload.h"
#include "zinc/ops.h"
#include "zinc/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ZERO_UNIT_ALIGN 16     /* elements: 64-byte alignment of every param */
#define ZERO_MAX_LAYER_UNITS 4 /* units one layer may touch (its own + tied) */

/* What zero/ takes from the config (zero_optimization, the optimizer, the
 * precision, the model seed), filled once by the engine. */
typedef struct zero_opts {
    zinc_dtype pdt;                   /* param / grad storage: bf16, fp16 or f32 */
    zinc_offload_device offload_optimizer, offload_param;
    const char *optimizer_nvme_path;  /* borrowed */
    const char *param_nvme_path;      /* borrowed */
    int pipeline_read, pipeline_write;
    int overlap_comm;
    int64_t reduce_bucket_size, allgather_bucket_size;
    int64_t prefetch_bucket_size;     /* stage3_prefetch_bucket_size */
    int64_t max_live_parameters;      /* stage3_max_live_parameters */
    int64_t max_reuse_distance;       /* stage3_max_reuse_distance */
    int64_t persistence_threshold;    /* stage3_param_persistence_threshold */
    int64_t sub_group_size;
    int delayed_update;               /* offload_optimizer.delayed_update (ZeRO-Offload's DPU) */
    double opt_ratio;                 /* offload_optimizer.ratio: the fraction of the optimizer
                                         state in host memory when it is offloaded on a GPU */
    double weight_decay, beta1, beta2, eps; /* AdamW */
    uint64_t seed;                    /* model.seed: initial values */
} zero_opts;

typedef enum zinc_init_kind {
    ZINC_INIT_ZEROS = 0,
    ZINC_INIT_ONES,
    ZINC_INIT_NORMAL, /* N(0, std^2), from a stream seeded by (model seed, param name) */
    ZINC_INIT_UNIFORM, /* U(-std, std), likewise (LoRA's Kaiming-uniform A: std 1/sqrt(fan_in)) */
} zinc_init_kind;

/* Bytes of model state a rank holds, by kind. */
typedef struct zinc_mem_stats {
    uint64_t params;     /* working-precision parameters (frozen ones included) */
    uint64_t frozen;     /* the part of params that is frozen (model.freeze): no grads,
                            master weights or optimizer state */
    uint64_t grads;      /* working-precision gradients */
    uint64_t master;     /* fp32 master weights (0 when params are fp32) */
    uint64_t optimizer;  /* Adam moments */
    uint64_t total;      /* the sum of the four */
    uint64_t buffers;    /* declared communication buckets (reduce + allgather), and the
                            NVMe optimizer pipeline's sub-group buffers */
    uint64_t buffers_host; /* the part of buffers in host memory (the NVMe pipeline's) */
    uint64_t nvme;       /* the part of total that sits in swap files on NVMe */
    uint64_t host;       /* the part of total in host memory on a GPU rank (offloaded
                            optimizer state; 0 on CPU ranks, whose device memory is the host's) */
    uint64_t activations;/* estimate only: saved activations, gradient buffers and
                            scratch of one micro-batch (0 when unknown) */
    uint64_t activations_host; /* estimate only: the part of them in host memory on a GPU
                            rank (activation_checkpointing.cpu_checkpointing) */
} zinc_mem_stats;

/* What is sharded and where each kind of state lives: derived once from the
 * config (zero_plan_make) for both engine creation and --estimate-memory. */
typedef struct zero_plan {
    int stage;
    zinc_dtype pdt;      /* param / grad storage dtype */
    size_t psz;          /* its size in bytes */
    int opt_nvme;        /* master, m, v in a swap file (offload_optimizer nvme) */
    int param_nvme;      /* sharded params in a swap file (offload_param nvme, stage 3) */
    int opt_host;        /* offload_optimizer cpu or nvme on a GPU: master, m, v in pinned host
                            memory or host swap buffers, AdamW on the CPU (grads copied down,
                            params copied up per sub-group); with offload_optimizer.ratio < 1
                            only the units zero_units_layout marks opt_host */
    int master_sep;      /* master weights are their own array (16-bit params, NVMe, host) */
    int param_host;      /* offload_param cpu on a GPU: sharded params in pinned host memory,
                            copied up before each all-gather (on CPU ranks "cpu" is where they
                            are already) */
} zero_plan;

/* A parameter: its logical (global) tensor, and the slice this TP rank
 * stores. With tp_dim 0..ndim-1 and a TP size > 1 the rank holds, along
 * tp_dim, 1/TP of each of tp_blocks equal sub-blocks (Megatron's partition
 * stride: GPT-2's c_attn columns are q | k | v, 3 blocks, so each rank gets
 * the columns of its heads in all three); tp_dim -1 is replicated. */
typedef struct zero_param {
    char name[96];
    int ndim;
    int64_t shape[ZINC_MAX_DIMS];  /* logical */
    int64_t lshape[ZINC_MAX_DIMS]; /* this rank's slice */
    int64_t numel;                 /* elements this rank stores (of lshape) */
    int64_t gnumel;                /* elements of the logical tensor */
    int tp_dim;                    /* -1: replicated over the TP group */
    int tp_blocks;                 /* sub-blocks of tp_dim, each split (1: a plain split) */
    zinc_init_kind init;
    float std;
    int unit;       /* the unit (= declaring layer) that stores it */
    size_t uoff;    /* element offset inside the unit */
    int decay;      /* weight decay applies (ndim >= 2) */
    int frozen;     /* not trained: stored in the frozen unit of its layer */
} zero_param;

typedef struct zero_unit {
    int layer;                /* the layer that declares its parameters */
    int frozen;               /* the frozen unit of that layer: params only (no g, master,
                                 m, v; opt_n 0), sharded and offloaded like any unit; its
                                 working grads are a scratch the backward writes and drops */
    size_t numel, shard;      /* padded elements; numel / dp */
    size_t opt_lo, opt_n;     /* this rank's optimizer range inside the unit */
    int sharded;              /* params stored as a shard only (stage 3) */
    int opt_host;             /* its optimizer state is the host's (plan.opt_host, and among the
                                 first units holding offload_optimizer.ratio of the state) */
    int first_user;           /* lowest held layer using the unit: its grads are final after it */
    int held;                 /* a layer this rank runs uses it (pipeline: its stage's layers) */
    int shared;               /* held, and also used by a layer another stage runs (the tied
                                 embedding on the first and last stages): its gradient is
                                 summed over those stages (zero_shared_reduce) */
    int dup;                  /* shared, and declared by a layer of another stage: a copy, left
                                 out of the grad norm and of checkpoints (the owner has them) */
    int n_params_first, n_params_end; /* param ids [first, end) stored here */
    void *p;                  /* P: whole, or the shard when sharded; NULL on NVMe */
    void *g;                  /* P: whole (stage 0/1) or the shard (stage >= 2) */
    float *master;            /* fp32 over the opt range; aliases p when P is f32; NULL on NVMe */
    float *m, *v;             /* fp32 over the opt range; NULL on NVMe */
    float *wp;                /* fp32 whole params while live */
    int wp_owned;
    void *gathered;           /* P: whole params being / been gathered (sharded) */
    zinc_comm_handle *h_gather;
    float *wg;                /* fp32 whole grads while open */
    int wg_owned;
    void *pstage;             /* P shard being read from the param swap (prefetch) */
    void *dstage;             /* P shard copied up to the device to be gathered (a shard in host
                                 memory or read off NVMe, on a GPU) */
    int ready;                /* gathered holds the whole unit already (copied up, one rank) */
    zinc_aio_req *pread;
} zero_unit;

/* The units a layer touches (its own and the ones it ties to). */
typedef struct zero_layer {
    int units[ZERO_MAX_LAYER_UNITS];
    int n_units;
} zero_layer;

/* A gradient reduce-scatter in flight (stage >= 2). */
typedef struct zero_pending {
    int unit;
    void *send;       /* P, whole unit; owned unless it is the unit's wg */
    void *recv;       /* P, shard; owned */
    zinc_comm_handle *h;
} zero_pending;

typedef struct zero_state {
    zero_opts opt;
    zero_plan plan;
    const zinc_device *dev;   /* where every buffer lives */
    const zinc_ops *ops;      /* dev's op table for the storage precision */
    zinc_comm *dp_group;      /* borrowed; NULL for an estimate */
    int dp, dp_rank;
    int tp, tp_rank;          /* the TP group parameters are sliced for (1, 0 without TP) */

    zero_param *params;
    int n_params, cap_params;
    zero_unit *units;         /* 2 per layer (possibly empty): units[l] the trainable params
                                 of layer l, units[n_layers + l] its frozen ones */
    zero_layer *layers;
    int n_layers;
    const unsigned char *layer_held; /* borrowed, per layer: this rank runs it (NULL: every
                                        layer, no pipeline) */
    int n_units;              /* = 2 x n_layers */

    zero_pending *pending;
    int n_pending;
    uint64_t pending_bytes;
    uint64_t live_elems;      /* elements of owned working params */
    uint64_t fetch_elems;     /* elements of ZeRO-3 gathers (or NVMe reads) started ahead of use */

    zinc_aio *aio;            /* borrowed: the process's aio engine */
    zinc_swap *opt_swap;      /* regions = units, parts master, exp_avg, exp_avg_sq */
    zinc_swap *param_swap;    /* regions = units, one part: the P shard */
    double t_opt_io;          /* ms waited on the optimizer swap this step */
    struct zero_delay *delay; /* delayed_update's state (optimizer.c), NULL until its first step */
} zero_state;

/* ---- partition.c: the plan and the layout (pure: no memory, no comm) ---- */

/* The plan for `stage` from the options; dev_name is the device's name when it
 * is not host memory (a GPU), NULL otherwise. Errors: offload_param below
 * stage 3, offload_param on a GPU (not supported yet). */
zinc_status zero_plan_make(const zero_opts *o, int stage, const char *dev_name, zero_plan *out);
/* Allocates the unit and layer tables for n layers (zeroed). */
zinc_status zero_tables_alloc(zero_state *z, int n_layers);
void zero_tables_free(zero_state *z);
/* Declares a parameter of layer `layer` (stored in its unit, or its frozen unit when
 * frozen, which the layer then uses) of logical
 * shape `shape`, split over z->tp ranks along tp_dim in tp_blocks sub-blocks
 * (see zero_param); returns its id, or -1 with the error set (a dimension
 * that does not split evenly names the parameter and the numbers). */
int zero_param_add(zero_state *z, int layer, const char *name, int ndim, const int64_t *shape,
                   int tp_dim, int tp_blocks, zinc_init_kind init, float std, int frozen);
/* The runs of this rank's slice of p inside the logical tensor, in the
 * slice's element order: fn(u, local_first, logical_first, n) for each
 * contiguous run (one run without TP or for tp_dim 0 with one block). */
void zero_param_runs(const zero_param *p, int tp, int tp_rank,
                     void (*fn)(void *u, int64_t local, int64_t logical, int64_t n), void *u);
/* Records that layer `layer` touches unit u (own or tied). */
zinc_status zero_layer_use(zero_state *z, int layer, int u);
/* Lays units out for (plan, dp, dp_rank): offsets, sizes, ranges, first
 * users; allocates nothing. With z->layer_held set (pipeline stages), a unit
 * no held layer uses is empty here (numel 0: no memory, no collectives), and
 * held, shared and dup say which of the rest another stage holds too. */
void zero_units_layout(zero_state *z);
/* Model-state bytes of the laid-out units. */
void zero_mem_stats(const zero_state *z, zinc_mem_stats *m);
/* Elements per optimizer sub-group for the laid-out units. */
size_t zero_group_elems(const zero_state *z);

/* ---- params.c: storage, swap files, gather, materialize, release ---- */

/* Creates the swap files the plan needs on aio (rank names the folder). */
zinc_status zero_offload_open(zero_state *z, zinc_aio *aio, int rank);
/* Before zero_offload_open: ZINC_ERR_CONFIG naming the nvme_path whose file system has no
 * room for the swap files of the node_ranks ranks of this node (each planning the same). */
zinc_status zero_offload_room(const zero_state *z, int rank, int node_ranks);
void zero_offload_close(zero_state *z);
/* Allocates and initializes every unit's model states. */
zinc_status zero_units_alloc(zero_state *z);
void zero_units_free(zero_state *z);
/* Stores initial / loaded values of unit l: vals holds the elements this
 * rank keeps as params (the whole unit, or its shard when sharded); writes
 * the params and the master weights of the opt range (memory or swap). */
zinc_status zero_unit_store(zero_state *z, int l, const float *vals);
/* Collective: all-gathers whole params at stages 1/2 (and whole units at stage 3). */
zinc_status zero_gather_whole_params(zero_state *z);
/* Collective: rewrites working-precision params from the master weights of
 * this rank's opt ranges, then all-gathers them (after loading a checkpoint). */
zinc_status zero_params_from_master(zero_state *z);
/* 1 if unit u's params live on NVMe. */
int zero_param_on_nvme(const zero_state *z, const zero_unit *u);
/* 1 if unit u's params shard lives in pinned host memory (offload_param cpu on a GPU). */
int zero_param_on_host(const zero_state *z, const zero_unit *u);
/* fp32 working params / grads of parameter id (valid inside the hooks). */
float *zero_param_data(const zero_state *z, int id);
/* dst (this rank's numel elements of parameter id) = its initial value (init, seed, name). */
void zero_param_init(const zero_state *z, int id, float *dst);
float *zero_grad_data(const zero_state *z, int id);

/* ---- policy.c: the hooks around each layer (collective at stage 3) ----
 * A micro-batch runs layers 0..L-1 forward, then L-1..0 backward (when
 * backward); positions 0..2L-1 in that order drive prefetch
 * (stage3_prefetch_bucket_size, stage3_max_live_parameters) and release
 * (stage3_max_reuse_distance). */
zinc_status zero_forward_begin(zero_state *z, int layer, int backward);
void zero_forward_end(zero_state *z, int layer);
zinc_status zero_backward_begin(zero_state *z, int layer);
zinc_status zero_backward_end(zero_state *z, int layer);
/* Before a layer's forward runs again in backward (activation checkpointing): its units
 * made whole and kept for the backward that follows (no prefetch, no release). */
zinc_status zero_recompute_begin(zero_state *z, int layer);
/* After the backward of a micro-batch: completes reduce-scatters in flight. */
zinc_status zero_backward_done(zero_state *z);
/* End of a micro-batch (also after an error): drops every working copy. */
void zero_micro_end(zero_state *z);

/* ---- grads.c ---- */

/* Zeroes all gradient storage (start of a step). */
void zero_grads_zero(zero_state *z);
/* Collective: accumulation boundary: all-reduce (stage 0) or reduce-scatter (stage 1). */
zinc_status zero_reduce_boundary(zero_state *z);
/* Collective over g (the ranks of the stages that hold the shared units, at
 * the same DP and TP position): sums the reduced gradients of this rank's opt
 * range of every shared unit, after zero_reduce_boundary (Megatron's
 * embedding all-reduce between the first and last stages). */
zinc_status zero_shared_reduce(zero_state *z, zinc_comm *g);
/* Sums of squares of this rank's gradient range (opt ranges; dup units left
 * out, their owner counts them), double:
 * split[0] over TP-split parameters (to be summed over the TP group),
 * split[1] over replicated ones (the same on every TP rank: counted once). */
zinc_status zero_grad_sumsq(zero_state *z, double split[2]);
/* Collective: the lowest param id whose gradient (this rank's optimizer
 * range of it) holds a NaN or Inf on any rank, or -1. */
zinc_status zero_first_nonfinite(zero_state *z, int *param);
/* ZINC_FAULT_NAN="RANK:STEP" (tests): a NaN in this rank's grads at step. */
void zero_fault_nan(zero_state *z, int64_t step);

/* ---- optimizer.c ---- */

/* Collective: AdamW over this rank's opt ranges with grads multiplied by
 * coef, then writes the working-precision params back (and all-gathers them
 * at stages 1/2 and for whole units at stage 3). */
zinc_status zero_optimizer_step(zero_state *z, double lr, double coef, int t);
/* offload_optimizer.delayed_update: zero_optimizer_step first applies the update the
 * previous call started (its new params copied in and gathered: the params of step t+1
 * are those of before step t's update), then copies this step's reduced grads to host
 * memory and starts their update on a host thread (inline on CPU ranks), which runs while
 * the next step's forward and backward do. Collective: completes the update in flight
 * (checkpoints, the end of training); nothing to do when none is. */
zinc_status zero_delay_flush(zero_state *z);
/* Joins an update in flight and frees the delay's buffers (destroy; no collective). */
void zero_delay_free(zero_state *z);

#ifdef __cplusplus
}
#endif

#endif
