/* zinc/engine.h - the engine: owns parameter, gradient, optimizer and
 * activation memory, runs the training step, and is the API a model is
 * written against.
 *
 * A model is an ordered list of layers (like DeepSpeed's PipelineModule).
 * Layer 0 receives the token ids; every other layer receives the previous
 * layer's output (B, T, n_out) floats -- with tensor_parallel.sequence_parallel,
 * this rank's zinc_tp_rows(tp, B*T) token rows of it (zinc/tp.h), so a
 * tp_ready model's layers leave and enter their parallel regions with the
 * region mappings; the last layer is the loss layer: it
 * reads ctx->targets, adds the summed token loss to ctx->loss_sum and has no
 * output. Each layer declares its parameters once (zinc_layer_param_add) and
 * reads parameters / writes gradients only through zinc_layer_param and
 * zinc_layer_grad, which are valid inside forward and backward.
 *
 * Parameters of each layer live in one flat unit (params, grads, fp32 master
 * and Adam moments share its layout), padded to a multiple of the DP size
 * times 16 elements, so later ZeRO stages can give each DP rank a contiguous
 * 1/DP slice of every unit.
 */
#ifndef ZINC_ENGINE_H
#define ZINC_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/aio.h"
#include "zinc/comm.h"
#include "zinc/config.h"
#include "zinc/data.h"
#include "zinc/device.h"
#include "zinc/ops.h"
#include "zinc/status.h"
#include "zinc/tp.h"
#include "zinc/zero.h" /* zinc_init_kind, zinc_mem_stats */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zinc_engine zinc_engine;
typedef struct zinc_layer zinc_layer;

/* What a layer sees while it runs. Engine-owned; valid during forward/backward. */
typedef struct zinc_ctx {
    const zinc_ops *ops;      /* the device's op table */
    int B, T;                 /* micro-batch size and sequence length */
    const int32_t *tokens;    /* (B, T) input ids */
    const int32_t *targets;   /* (B, T) next-token ids, -1 where no loss is taken */
    const int32_t *pos;       /* (B, T) positions within each document when the data has
                                 documents (zinc/data.h): position embeddings and rotary
                                 angles take them and attention stays inside a document;
                                 NULL: 0..T-1 on every row, plain causal attention */
    float dloss;              /* d(total objective)/d(each token's loss) */
    double loss_sum;          /* the loss layer adds sum of token losses here */
    void *scratch;            /* shared scratch, >= every layer's scratch_bytes */
    const zinc_tp *tp;        /* the layer's TP group, rank and sequence-parallel flag
                                 (size 1 without tensor parallelism) */
    const void *consts;       /* the model's constant tables (zinc_model_def.consts) in device
                                 memory, NULL without */
    int train;                /* 1: a training forward/backward (dropout on); 0: evaluation */
    uint64_t seed;            /* this micro-batch's random stream (the same in its forward and
                                 backward; another for each step, micro-batch and DP rank) */
} zinc_ctx;

typedef struct zinc_layer_ops {
    const char *type;
    /* Declares parameters with zinc_layer_param_add/_tie and the output width. */
    zinc_status (*declare)(zinc_layer *l);
    /* Bytes of saved activations this layer needs for a (B, T) micro-batch
     * when act tensors are stored in act (ctx->ops->act at run time). */
    size_t (*act_bytes)(const zinc_layer *l, int B, int T, zinc_dtype act);
    /* Bytes of shared scratch it needs during forward or backward. */
    size_t (*scratch_bytes)(const zinc_layer *l, int B, int T, zinc_dtype act);
    /* x: (B,T) int32 tokens for layer 0, else (B,T,n_in) act; y: (B,T,n_out)
     * act, NULL for the loss layer. act is ctx->ops->act (zinc/ops.h). */
    zinc_status (*forward)(zinc_layer *l, zinc_ctx *c, const void *x, void *y);
    /* dy: NULL for the loss layer; dx: zeroed by the engine, accumulate into it; NULL for layer 0. */
    zinc_status (*backward)(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy, void *dx);
} zinc_layer_ops;

/* One layer of a model definition. state is model-owned (hyperparameters). */
typedef struct zinc_layer_def {
    const zinc_layer_ops *ops;
    char name[64];  /* parameter name prefix, e.g. "h.3" ("" for none) */
    void *state;
} zinc_layer_def;

typedef struct zinc_model_def {
    zinc_layer_def *layers; /* borrowed; must outlive the engine */
    int n_layers;
    double flops_per_token; /* training FLOPs per token (6N + attention), for MFU; 0 = unknown */
    int tp_ready;           /* its layers split over TP ranks (they use ctx->tp and declare
                               partition specs); a TP size > 1 is refused for a model without */
    int64_t vocab_real;     /* the real vocabulary when the tensors below are padded past it (0: not
                               padded); checkpoints record it, and exports keep only its rows */
    const char *const *vocab_tensors; /* NULL-terminated names whose dimension 0 is the vocabulary */
    const void *consts;     /* host memory, consts_bytes (0: none): tables the layers read and never
                               train (Llama's rotary cos/sin), copied to the device once at create */
    size_t consts_bytes;
} zinc_model_def;

/* --- layer-side API (valid in declare / forward / backward) --- */

/* Declares a parameter named "<layer name>.<name>" of the given (logical)
 * shape; tp_dim is its partition spec: -1 replicated over the TP group, or
 * the dimension split over it, the rank storing (and zinc_layer_param
 * giving) its slice of shape[tp_dim] / TP. Returns its index in the layer
 * (>= 0) or -1 with the error recorded. Only inside declare. */
int zinc_layer_param_add(zinc_layer *l, const char *name, int ndim, const int64_t *shape,
                         int tp_dim, zinc_init_kind init, float std);
/* The same for a split dimension made of tp_blocks equal sub-blocks, each
 * split over the TP group (Megatron's partition stride: GPT-2's c_attn
 * columns q | k | v are 3 blocks, so a rank holds its heads' q, k and v). */
int zinc_layer_param_add_split(zinc_layer *l, const char *name, int ndim, const int64_t *shape,
                               int tp_dim, int tp_blocks, zinc_init_kind init, float std);
/* Uses the parameter of an earlier layer with the full name given (tied
 * weights, e.g. the GPT-2 head and "wte.weight"). Gradients from both uses
 * accumulate into the one gradient. Returns its index in this layer or -1. */
int zinc_layer_param_tie(zinc_layer *l, const char *full_name);
/* Sets the output width per token (elements); default: same as the input. */
void zinc_layer_set_out(zinc_layer *l, int n_out);
int zinc_layer_n_in(const zinc_layer *l);
/* 1 if a parameter's name is a LoRA adapter's (PEFT's names: "<module>.lora_A.weight",
 * "<module>.lora_B.weight"): with model.lora, these alone train. */
int zinc_lora_param_name(const char *name);
/* The layer's index in the model (0: the first layer). */
int zinc_layer_index(const zinc_layer *l);

void *zinc_layer_state(const zinc_layer *l);
/* The layer's TP group, size, rank and sequence-parallel flag (valid from
 * declare on, also in act_bytes and scratch_bytes, which size for it). */
const zinc_tp *zinc_layer_tp(const zinc_layer *l);
float *zinc_layer_param(zinc_layer *l, int idx); /* (shape) fp32 */
float *zinc_layer_grad(zinc_layer *l, int idx);  /* same shape, accumulate into it */
void *zinc_layer_acts(zinc_layer *l);            /* act_bytes bytes saved from forward (64-byte aligned) */

/* --- engine --- */

typedef struct zinc_engine_opts {
    const zinc_config *config;  /* borrowed, resolved for the DP size */
    zinc_comm *world;           /* borrowed */
    const zinc_model_def *model;/* borrowed */
    zinc_aio *aio;              /* borrowed, optional: the process's aio engine (from the
                                   config's aio section: zinc_engine_aio_create), used for
                                   swap files; NULL: the engine makes one when it needs it */
} zinc_engine_opts;

/* The aio engine the config's aio section describes (one per process). */
zinc_status zinc_engine_aio_create(const zinc_config *c, zinc_aio **out);

typedef struct zinc_step_stats {
    int64_t step;              /* 1-based step just completed */
    double loss;               /* mean token loss over the global batch */
    double lr;
    double grad_norm;          /* global, before clipping */
    double step_ms;
    double tokens_per_s;       /* global tokens / step time */
    uint64_t model_state_bytes;/* params + grads + optimizer state held by this rank */
    uint64_t model_state_bytes_max; /* largest over ranks */
    uint64_t comm_bytes;       /* bytes this rank communicated over its DP group during the step */
    uint64_t comm_bytes_op[ZINC_COMM_N_OPS]; /* the same by kind of collective */
    uint64_t tp_comm_bytes;    /* bytes it communicated over its TP group (0 without TP) */
    uint64_t tp_comm_bytes_op[ZINC_COMM_N_OPS];
    int64_t samples_seen;      /* global sample index after this step */
    double loss_scale;         /* fp16 loss scale used (1 otherwise) */
    int skipped;               /* 1 if an fp16 overflow skipped the update */
    uint64_t dev_mem_peak;     /* most device memory this rank's engine held during the step */
    double model_tflops;       /* model FLOPs per second over all ranks (flops_per_token * tokens/s); 0 = unknown */
    /* pipeline stages (0 without): */
    double pp_bubble;          /* measured: the time a stage waited on its neighbours / its step
                                  time, the largest over stages */
    double pp_bubble_theory;   /* the schedule's with uniform costs (zinc_pp_bubble_theory) */
    uint64_t pp_comm_bytes;    /* bytes this rank sent and received over its pipeline group */
    uint64_t storage_read_bytes, storage_write_bytes; /* bytes this rank read from and wrote to
                                  storage during the step (/proc/self/io: swap files, checkpoints
                                  and data) */
    uint64_t act_peak_bytes;   /* activation memory held at once during the step: the slabs of
                                  the (micro-batch, chunk) pairs in flight, the activations and
                                  gradients crossing stages, the gradient buffers and scratch;
                                  the largest over ranks */
    uint64_t act_peak_stage[64]; /* the same per pipeline stage (the first 64; pipeline only) */
    zinc_mem_stats mem;        /* this rank's model state */
    zinc_mem_stats mem_max;    /* largest over ranks, kind by kind */
} zinc_step_stats;

/* Model-state bytes per rank that zinc_engine_create would allocate for this
 * model at DP size dp and the given ZeRO stage and precision in c, and the
 * activation bytes it holds at once (train_micro_batch_size_per_gpu x the
 * sequence length, when c gives the micro-batch: one micro-batch without
 * pipeline stages) (pure; no communication, no allocation of model memory).
 * With pipeline stages (c->pp), the rank's of pipeline stage 0; see
 * zinc_engine_estimate_stage. */
zinc_status zinc_engine_estimate_memory(const zinc_config *c, const zinc_model_def *m, int dp,
                                        int stage, zinc_mem_stats *out);

/* Where a pipeline stage's estimate comes from. */
/* What a rank needs of each memory tier, from an estimate (zinc_mem_stats with its
 * activations): GPU memory (0 on CPU ranks), host memory (on CPU ranks everything
 * but the swap files), swap files on NVMe. */
typedef struct zinc_mem_tiers {
    uint64_t device, host, nvme;
} zinc_mem_tiers;
void zinc_mem_tiers_of(const zinc_mem_stats *m, int device_is_host, zinc_mem_tiers *t);

typedef struct zinc_stage_estimate {
    int n_chunks;                       /* model chunks the stage runs (virtual stages) */
    int first_layer[8], end_layer[8];   /* chunk k's layers [first, end) (k < 8) */
    int inflight;                       /* (micro-batch, chunk) pairs its schedule holds at once */
} zinc_stage_estimate;

/* The same for a rank of pipeline stage pp_stage (0 .. pipeline.stages - 1): the model
 * state of the layers pipeline.partition gives it (and of the tied parameters it shares
 * with another stage), and the activations of the (micro-batch, chunk) pairs its
 * schedule (pipeline.schedule, gradient_accumulation_steps micro-batches) holds at once:
 * one slab of saved activations each, the inputs and gradients crossing stages, the
 * gradient buffers and scratch. where (may be NULL) says which layers and how many. */
zinc_status zinc_engine_estimate_stage(const zinc_config *c, const zinc_model_def *m, int dp, int stage,
                                       int pp_stage, zinc_mem_stats *out, zinc_stage_estimate *where);

/* The device this rank computes on for config c: "cpu", "cuda" (the GPU
 * of this rank's local rank), or "auto" (cuda when a GPU is visible and the
 * build has CUDA, else cpu). Rank-local; agree on the status. */
zinc_status zinc_engine_open_device(const zinc_config *c, zinc_comm *world,
                                    const zinc_device **out);
/* The engine's device (valid for the engine's lifetime). */
const zinc_device *zinc_engine_device(const zinc_engine *e);

/* Collective over world. Builds the mesh (pipeline.stages x DP x
 * tensor_parallel.autotp_size, TP innermost, PP outermost), declares the
 * model, splits its layers into pipeline.stages x pipeline.virtual_stages
 * chunks (pipeline.partition; ZINC_ERR_CONFIG for more chunks than layers)
 * and allocates and initializes the memory of this rank's stage for the
 * configured ZeRO stage (zero_optimization.stage 0-3, over the stage's DP
 * group) and precision (fp32, bf16, fp16). Layers tied across stages (GPT-2's
 * head and wte) are held by both stages, which sum their gradients. */
zinc_status zinc_engine_create(const zinc_engine_opts *o, zinc_engine **out);
void zinc_engine_destroy(zinc_engine *e); /* NULL-safe */

/* Collective. One optimizer step: gradient_accumulation_steps micro-batches
 * of this DP rank's slice of the next global batch from data, run through
 * the stage's pipeline schedule (pipeline.schedule; without stages, forward
 * and backward of each micro-batch in turn), DP gradient reduction, global
 * norm, clipping, AdamW, lr schedule. An fp16 overflow is
 * not an error (st->skipped). After a failed step the engine's gradient and
 * communication state is undefined: destroy it (and resume from a checkpoint). */
zinc_status zinc_engine_train_batch(zinc_engine *e, const zinc_data *data, zinc_step_stats *st);

/* Forward and backward of one micro-batch (tokens/targets (B, T) with the
 * engine's B and T) on this rank alone, without communication: stores the
 * gradients of the mean token loss in the gradient buffers (replacing what
 * was there) and the mean loss in *loss. Does not step the optimizer. Only
 * for fp32 at ZeRO stage 0 (tests, tools): otherwise ZINC_ERR_UNSUPPORTED. */
zinc_status zinc_engine_loss_and_grad(zinc_engine *e, const int32_t *tokens,
                                      const int32_t *targets, double *loss);
/* The same for documents packed in the rows: pos (B, T) their positions (zinc/data.h),
 * targets -1 where no loss is taken; the mean is over the targets >= 0. Host devices. */
zinc_status zinc_engine_loss_and_grad_docs(zinc_engine *e, const int32_t *tokens, const int32_t *targets,
                                           const int32_t *pos, double *loss);

/* Looks up a parameter's gradient by full name, or NULL (device memory, as
 * zinc_engine_param_by_name). */
float *zinc_engine_grad_by_name(zinc_engine *e, const char *name, int64_t *numel);

/* --- checkpoints (see zinc/ckpt.h for the format) --- */

/* Collective over world. Saves <save_dir>/<tag>: every rank writes its 1/DP
 * slice of every unit (params in the storage dtype; fp32 master weights when
 * they differ; Adam exp_avg, exp_avg_sq) as logical tensors, plus meta: step,
 * optimizer step, data position (global sample index), loss scaler, topology,
 * the resolved config. keep_last > 0 prunes older checkpoints. aio borrowed. */
zinc_status zinc_engine_save_checkpoint(zinc_engine *e, zinc_aio *aio, const char *save_dir,
                                        const char *tag, int keep_last);
/* Collective over world. Loads <save_dir>/<tag> (NULL: latest) saved at any
 * DP size and ZeRO stage: each rank reads only the ranges its shards need.
 * Restores weights, Adam state, counters, data position and loss scaler. */
zinc_status zinc_engine_load_checkpoint(zinc_engine *e, zinc_aio *aio, const char *save_dir,
                                        const char *tag);
/* Sets every parameter (weights and fp32 master) from a Hugging Face GPT-2
 * safetensors file: names with or without the "transformer." prefix; wte may
 * have fewer rows than vocab_size (the rest stay zero), wpe at least
 * block_size rows; "attn.bias" buffers, rotary inv_freq and a tied lm_head.weight are
 * ignored, any other tensor no rank's parameters take is an error naming it.
 * Collective: every rank calls it and reads the file itself; the ranks agree on
 * the status before the unused-tensor check, so all return the same status. */
zinc_status zinc_engine_init_from(zinc_engine *e, const char *path);
/* Steps taken so far (restored by a load). */
int64_t zinc_engine_step(const zinc_engine *e);
/* Global samples drawn so far (DeepSpeed's global_samples; restored by resume). */
int64_t zinc_engine_samples(const zinc_engine *e);

/* Collective. Mean token loss over n_batches global batches starting at
 * global sample first_sample, forward only (no gradients, no update). */
zinc_status zinc_engine_eval(zinc_engine *e, const zinc_data *data, int64_t first_sample,
                             int n_batches, double *loss);

/* Learning rate the scheduler gives for a 0-based step (pure). */
double zinc_sched_lr(const zinc_config *c, int64_t step);

/* Number of model parameters (unpadded, tied counted once). */
int64_t zinc_engine_n_params(const zinc_engine *e);
int zinc_engine_dp_rank(const zinc_engine *e);
int zinc_engine_dp_size(const zinc_engine *e);
int zinc_engine_tp_size(const zinc_engine *e);
int zinc_engine_pp_size(const zinc_engine *e);
/* This rank's pipeline stage (0 without pipeline parallelism). */
int zinc_engine_pp_stage(const zinc_engine *e);

/* Looks up a parameter by full name; returns its fp32 data and numel, or
 * NULL (also when parameters are not held whole in fp32: ZeRO-3, 16-bit).
 * The data is in the engine's device memory (not readable by the host on
 * cuda: copy it with zinc_engine_device(e)->copy). */
float *zinc_engine_param_by_name(zinc_engine *e, const char *name, int64_t *numel);

#ifdef __cplusplus
}
#endif

#endif
