/* engine_int.h - private engine structures (engine/ only).
 *
 * Flat units and ZeRO. Layer l's own parameters form unit l, padded to a
 * multiple of dp x ENGINE_UNIT_ALIGN elements; DP rank r owns the slice
 * [r*shard, (r+1)*shard) of every unit. The "opt range" of a unit is what
 * this rank's optimizer updates: the whole unit at stage 0, the owned slice
 * at stages 1-3. P is the parameter/gradient storage dtype (f32, bf16, f16);
 * master weights and Adam moments are always fp32.
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
 */
#ifndef ZINC_ENGINE_INT_H
#define ZINC_ENGINE_INT_H

#include "zinc/aio.h"
#include "zinc/device.h"
#include "zinc/engine.h"

#define ENGINE_MAX_LAYER_PARAMS 32
#define ENGINE_MAX_LAYER_UNITS 4
#define ENGINE_UNIT_ALIGN 16 /* elements: 64-byte alignment of every param */

typedef struct engine_param {
    char name[96];
    int ndim;
    int64_t shape[ZINC_MAX_DIMS];
    int64_t numel;
    int tp_dim;
    zinc_init_kind init;
    float std;
    int unit;       /* the unit (= declaring layer) that stores it */
    size_t uoff;    /* element offset inside the unit */
    int decay;      /* weight decay applies (ndim >= 2) */
} engine_param;

typedef struct engine_unit {
    size_t numel, shard;      /* padded elements; numel / dp */
    size_t opt_lo, opt_n;     /* this rank's optimizer range inside the unit */
    int sharded;              /* params stored as a shard only (stage 3) */
    int first_user;           /* lowest layer index using the unit: its grads are final after it */
    int n_params_first, n_params_end; /* engine param ids [first, end) stored here */
    void *p;                  /* P: whole, or the shard when sharded */
    void *g;                  /* P: whole (stage 0/1) or the shard (stage >= 2) */
    float *master;            /* fp32 over the opt range; aliases p when P is f32 */
    float *m, *v;             /* fp32 over the opt range */
    float *wp;                /* fp32 whole params while live */
    int wp_owned;
    void *gathered;           /* P: whole params being / been gathered (sharded) */
    zinc_comm_handle *h_gather;
    float *wg;                /* fp32 whole grads while open */
    int wg_owned;
    /* NVMe offload (offload.c) */
    uint64_t swap_off;        /* this unit's optimizer state in the optimizer swap file */
    uint64_t pswap_off;       /* this unit's param shard in the param swap file */
    void *pstage;             /* P shard being read from the param swap (prefetch) */
    zinc_aio_req *pread;
} engine_unit;

struct zinc_layer {
    zinc_engine *e;
    const zinc_layer_def *def;
    int index;
    int n_in, n_out;
    int params[ENGINE_MAX_LAYER_PARAMS]; /* engine param ids */
    int n_params;
    int units[ENGINE_MAX_LAYER_UNITS];   /* units this layer touches (own + tied) */
    int n_units;
    void *acts;
    size_t act_bytes;
    int declaring;
};

/* A gradient reduce-scatter in flight (stage >= 2). */
typedef struct engine_pending {
    int unit;
    void *send;       /* P, whole unit; owned unless it is the unit's wg */
    void *recv;       /* P, shard; owned */
    zinc_comm_handle *h;
} engine_pending;

typedef struct engine_scaler {
    double scale;
    int dynamic;
    int cur_hysteresis;
    int64_t last_overflow_iter, cur_iter;
} engine_scaler;

struct zinc_engine {
    zinc_config cfg;
    zinc_comm *world;
    zinc_mesh *mesh;
    const zinc_device *dev; /* where every buffer below lives (cpu or cuda) */
    const zinc_ops *ops;    /* dev's op table for the storage precision */
    int profiling;          /* ops is the timing wrapper (ZINC_PROFILE_OPS) */
    const zinc_model_def *model;
    zinc_dtype pdt;      /* param / grad storage dtype */
    size_t psz;          /* its size in bytes */
    int stage;

    zinc_layer *layers;
    int n_layers;
    engine_param *params;
    int n_params, cap_params;
    engine_unit *units;  /* one per layer (possibly empty) */

    engine_pending *pending;
    int n_pending;
    uint64_t pending_bytes;
    uint64_t live_elems; /* elements of owned working params */
    uint64_t fetch_elems; /* elements of ZeRO-3 gathers (or NVMe reads) started ahead of use */

    void *act_slab;      /* every layer's saved activations and outputs */
    void **out;          /* out[l]: (B, T, n_out) act of layer l; NULL for the loss layer */
    void *dbuf[2];       /* ping-pong activation gradients (act) */
    void *scratch;
    int32_t *tokens, *targets;   /* device copies of the micro-batch */
    int32_t *htokens, *htargets; /* host staging (pinned), NULL on a host device */

    int B, T, ga, dp, dp_rank;
    int64_t step;        /* steps taken, skipped ones included */
    int64_t opt_step;    /* optimizer steps applied (Adam t, scheduler position) */
    int64_t samples;     /* global sample index of the next batch */
    engine_scaler scaler;
    int64_t nonfinite_run;    /* steps skipped in a row for train.on_nan "skip" */
    zinc_mem_stats mem, mem_max;

    /* wall_clock_breakdown: ms spent this step */
    double t_fwd, t_bwd, t_reduce, t_opt, t_opt_io;

    /* offload: optimizer state (master, m, v) and/or ZeRO-3 param shards on NVMe */
    int opt_nvme, param_nvme;
    int opt_host;        /* offload_optimizer cpu or nvme on a GPU: master, m, v in pinned host
                            memory or host swap buffers, AdamW on the CPU (grads copied down,
                            params copied up per sub-group) */
    int master_sep;      /* master weights are their own array (16-bit params, or NVMe) */
    zinc_aio *aio;
    zinc_aio_file *opt_swap, *param_swap;
    char opt_swap_path[600], param_swap_path[600];
    uint64_t opt_ino, param_ino;
    int opt_lock_fd, param_lock_fd; /* flock held on each swap file: one job per file */
};


/* ---- zero.c: flat units under ZeRO stages 0-3 (engine/ only) ---- */

/* Lays out units from the declared params and fills unit sizes and ranges
 * for (dp, dp_rank, stage); allocates nothing. */
void zero_units_layout(zinc_engine *e);
/* Model-state bytes of the laid-out units. */
void zero_mem_stats(const zinc_engine *e, zinc_mem_stats *m);
/* Allocates and initializes every unit's model states. */
zinc_status zero_units_alloc(zinc_engine *e);
void zero_units_free(zinc_engine *e);

/* fp32 working params of unit u (gathers / converts as needed). */
zinc_status zero_unit_materialize(zinc_engine *e, int u);
/* 1 if making unit u whole takes a gather: sharded over several ranks, or
 * its shard on NVMe (a shard over one rank in memory is the whole unit). */
int zero_unit_gathers(const zinc_engine *e, int u);
/* Starts gathering unit u's params ahead of use (units that gather only). */
zinc_status zero_unit_prefetch(zinc_engine *e, int u);
/* Drops unit u's working params if they are a copy. */
void zero_unit_release(zinc_engine *e, int u);
/* 1 if releasing u would free memory (its working params are a copy). */
int zero_unit_releasable(const zinc_engine *e, int u);

/* Opens unit u's fp32 working grads for this micro-batch. */
zinc_status zero_grad_open(zinc_engine *e, int u);
/* Folds the finished working grads of u into its gradient storage (stage
 * 0/1) or starts their reduce-scatter into the owner's shard (stage >= 2). */
zinc_status zero_grad_close(zinc_engine *e, int u);
/* Completes reduce-scatters in flight (all, or until under the bucket). */
zinc_status zero_wait_pending(zinc_engine *e, int all);

/* Zeroes all gradient storage (start of a step). */
void zero_grads_zero(zinc_engine *e);
/* Accumulation boundary: all-reduce (stage 0) or reduce-scatter (stage 1). */
zinc_status zero_reduce_boundary(zinc_engine *e);
/* Sum of squares of this rank's gradient range (opt ranges), double. */
zinc_status zero_grad_sumsq(zinc_engine *e, double *out);
/* Collective over dp: the lowest engine param id whose gradient (this
 * rank's optimizer range of it) holds a NaN or Inf on any rank, or -1. */
zinc_status zero_first_nonfinite(zinc_engine *e, int *param);
void zero_fault_nan(zinc_engine *e); /* ZINC_FAULT_NAN="RANK:STEP" (tests) */
/* AdamW over this rank's opt ranges with grads multiplied by coef, then
 * writes the working-precision params back (and all-gathers them at
 * stages 1/2 and for whole units at stage 3). */
zinc_status zero_optimizer_step(zinc_engine *e, double lr, double coef, int t);

/* Stores initial / loaded values of unit l: vals holds the elements this
 * rank keeps as params (the whole unit, or its shard when sharded); writes
 * the params and the master weights of the opt range (memory or swap). */
zinc_status zero_unit_store(zinc_engine *e, int l, const float *vals);
/* All-gathers whole params at stages 1/2 (and whole units at stage 3). */
zinc_status zero_gather_whole_params(zinc_engine *e);
/* Rewrites working-precision params from the master weights of this rank's
 * opt ranges, then all-gathers them (after loading a checkpoint). */
zinc_status zero_params_from_master(zinc_engine *e);

/* ---- offload.c: swap files on NVMe (engine/ only) ---- */

/* 1 if unit u's params live on NVMe (sharded units under offload_param nvme). */
int offload_param_on_nvme(const zinc_engine *e, const engine_unit *u);
/* Creates the swap files under nvme_path/rank<r>/ and lays units out in them. */
zinc_status offload_open(zinc_engine *e);
void offload_close(zinc_engine *e);
/* Checks that the swap files are still the ones this job created. */
zinc_status offload_check(zinc_engine *e);
/* Bytes per unit-element region in the optimizer swap, and its parts. */
uint64_t offload_part_bytes(const engine_unit *u);
/* Reads / writes elements [a, a+n) of unit u's opt range of the optimizer
 * state into / from buf: master at buf, m at buf + stride, v at buf + 2 stride
 * (stride a multiple of 1024 keeps every part page aligned for O_DIRECT);
 * async, requests appended to reqs. */
zinc_status offload_opt_io(zinc_engine *e, const engine_unit *u, size_t a, size_t n, float *buf,
                           size_t stride, int write, zinc_aio_req **reqs, int *n_reqs);

/* dtype helpers */
/* ---- ops_profile.c: per-op device times (ZINC_PROFILE_OPS=1) ---- */
const zinc_ops *engine_ops_profiled(const zinc_ops *in, zinc_status (*sync)(void));
void engine_ops_profile_report(void);
/* The first device error a profiling sync consumed since the last call
 * (ZINC_OK if none), with its detail as zinc_last_error(). */
zinc_status engine_ops_profile_error(void);
/* The device's sync, plus errors the profiler consumed. */
zinc_status engine_sync(zinc_engine *e);

/* dtype helpers: device-memory conversions through the engine's op table */
void zero_to_f32(const zinc_engine *e, float *dst, const void *src, zinc_dtype dt, size_t n);
void zero_from_f32(const zinc_engine *e, void *dst, const float *src, zinc_dtype dt, size_t n);

#endif
