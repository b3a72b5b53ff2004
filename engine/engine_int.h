/* engine_int.h - private engine structures (engine/ only).
 *
 * The engine owns the layers, activations, the step counters and the loss
 * scaler; ZeRO's flat units and their state are zero/'s (zinc/zero.h), held
 * in e->z, and the engine reaches them only through zero's hooks and the
 * fields zero.h documents.
 */
#ifndef ZINC_ENGINE_INT_H
#define ZINC_ENGINE_INT_H

#include "zinc/aio.h"
#include "zinc/device.h"
#include "zinc/engine.h"
#include "zinc/pipeline.h"
#include "zinc/tp.h"
#include "zinc/zero.h"

#define ENGINE_MAX_LAYER_PARAMS 32

struct zinc_layer {
    zinc_engine *e;
    const zinc_layer_def *def;
    int index;
    int n_in, n_out;
    int params[ENGINE_MAX_LAYER_PARAMS]; /* zero param ids (e->z.params) */
    int n_params;
    void *acts;
    size_t act_bytes;
    int declaring;
};

typedef struct engine_scaler {
    double scale;
    int dynamic;
    int cur_hysteresis;
    int64_t last_overflow_iter, cur_iter;
} engine_scaler;

/* Where forward puts a layer's output (acts.c). */
enum {
    OUT_EXEC, /* the chunk's last layer: the executor's buffer (none for the loss layer) */
    OUT_SLAB, /* the micro-batch's slab, at out_off */
    OUT_RC,   /* inside a checkpointed group: the recompute buffer, at ac.rc_out (thrown away) */
    OUT_CK,   /* a group's last layer whose output the chunk reads later, kept apart: in host memory
               * (cpu_checkpointing) and/or split over the TP group (partition_activations);
               * forward writes it to ac.ckbuf, backward loads it back into ac.ckin */
};

/* Activation checkpointing as a plan (acts.c), made once from activation_checkpointing
 * and pipeline.activation_checkpoint_interval: whole-layer recompute of the layers
 * between the first and the last, in groups inside each chunk; a group keeps only its
 * input (the output of the layer before it), and backward runs the group's forward
 * again into one shared buffer before its backward. */
typedef struct engine_ac {
    int on, cpu, part;      /* recompute; checkpoints in host memory; split over the TP group */
    int n_groups;
    int *first, *last, *gno; /* per layer: its group's first and last layer and its number
                              * (first -1: not checkpointed) */
    size_t *rc_act, *rc_out; /* per checkpointed layer: offsets in rc of its saved activations and
                              * of its output (the group's last: a spare only recompute writes) */
    size_t *ck_off;          /* per OUT_CK layer: its offset in the host slab (cpu) */
    size_t rc_bytes, host_bytes, io_bytes; /* rc; a host slab; one whole layer output */
    void *rc, *ckbuf[2], *ckin, *ckpart; /* device: recompute buffer, ping-pong outputs, load buffers */
    void **hslabs;           /* host slabs, parallel to the device slabs (cpu) */
    int ckin_of;             /* the layer whose output ckin holds (-1: none) */
} engine_ac;

/* A (micro-batch, chunk)'s activations: its device slab and (cpu_checkpointing) host slab. */
typedef struct engine_slab {
    char *dev, *host;
} engine_slab;

struct zinc_engine {
    zinc_config cfg;
    zinc_comm *world;
    zinc_mesh *mesh;
    zinc_tp tp;             /* this rank's TP group (size 1 without tensor parallelism) */
    const zinc_device *dev; /* where every buffer below lives (cpu or cuda) */
    const zinc_ops *ops;    /* dev's op table for the storage precision */
    int profiling;          /* ops is the timing wrapper (ZINC_PROFILE_OPS) */
    const zinc_model_def *model;
    zero_state z;        /* flat units under ZeRO: params, grads, optimizer state, plan */
    zinc_aio *aio;       /* the process's one aio engine: swap files and checkpoints */
    int aio_owned;       /* created here (no aio in the opts) */

    zinc_layer *layers;
    int n_layers;

    /* pipeline: the schedule, this rank's stage and the layers it runs (one stage and
     * one chunk of every layer without pipeline parallelism) */
    zinc_pp_plan pp;     /* stages, micro-batches (= gradient_accumulation_steps), chunks, kind */
    int stage;           /* this rank's stage (the mesh's pp rank) */
    int *bounds;         /* model chunk j runs layers [bounds[j], bounds[j+1]) (p*v + 1 entries) */
    unsigned char *held; /* per layer: this stage runs it */
    zinc_comm *tied_group; /* the stages sharing units (the tied embedding: first and last), or NULL */
    zinc_pp_exec_stats pst; /* the last step's executor measurements */

    /* activations: one slab per (micro-batch, chunk) in flight, each holding the saved
     * activations of the chunk's layers and the outputs inside the chunk (act_off[l],
     * out_off[l]: offsets in the slab; out_off SIZE_MAX for a chunk's last layer, whose
     * output is the executor's buffer or, for the loss layer, none) */
    size_t *act_off, *out_off;
    unsigned char *out_kind; /* per layer: OUT_* */
    engine_ac ac;
    size_t slab_bytes;   /* the largest chunk this stage runs */
    size_t io_elems;     /* elements of one activation crossing chunks (the widest boundary) */
    void **slabs;        /* allocated so far (n_slabs: the peak in flight) */
    int n_slabs, *slab_free, n_free;
    int *slab_of;        /* per (mb * v + chunk): its slab, or -1 */
    void *dbuf[2];       /* ping-pong activation gradients (act) */
    void *scratch;
    void *consts;        /* the model's constant tables in device memory (zinc_model_def.consts) */
    size_t act_fixed;    /* bytes of dbuf and scratch */
    int32_t *tokens, *targets;   /* device copies of the step's micro-batches (ga x B x T) */
    int32_t *htokens, *htargets; /* host staging of one micro-batch (pinned), NULL on a host device */
    int32_t *pos;                /* positions within documents (ga x B x T), read when docs */
    int docs;                    /* the step's data has documents (zinc_ctx.pos; host devices only) */
    unsigned freeze_hits;        /* model.freeze patterns that matched a parameter (bit i) */
    int n_lora;                  /* LoRA adapter parameters declared (model.lora) */
    int masked;                  /* some targets are -1: the mean loss divides by the counted ones */
    const zinc_data *step_data;  /* the step's data source (executor callbacks) */
    float step_dloss;            /* its loss gradient per token */
    double loss_acc;             /* its summed token loss (the last stage's) */

    int B, T, ga;
    int64_t step;        /* steps taken, skipped ones included */
    int64_t opt_step;    /* optimizer steps applied (Adam t, scheduler position) */
    int64_t samples;     /* global sample index of the next batch */
    engine_scaler scaler;
    int64_t nonfinite_run;    /* steps skipped in a row for train.on_nan "skip" */
    zinc_mem_stats mem, mem_max;

    /* wall_clock_breakdown: ms spent this step */
    double t_fwd, t_bwd, t_recompute, t_reduce, t_opt; /* t_recompute: within t_bwd */
};


/* ---- step.c: the training step, eval, the executor's stage callbacks ---- */
/* The dtype activations are stored in. */
zinc_dtype engine_act_dtype(const zinc_engine *e);

/* ---- acts.c: where activations live ---- */
/* The checkpointing plan (e->ac) and the activation layout: every layer's saved
 * activations and output inside its chunk (act_off, out_off, out_kind: the slab of one
 * micro-batch of a chunk; *slab the largest of this stage's chunks), one gradient buffer
 * for the widest layer input (dbuf, two of them are used), the largest scratch, the
 * elements of an activation crossing chunks (io). Sets each layer's act_bytes. Needs
 * e->bounds, e->held, e->tp. */
zinc_status engine_act_layout(zinc_engine *e, size_t *slab, size_t *dbuf, size_t *scratch, size_t *io);
/* Device and host bytes the plan's own buffers take (recompute, load buffers; one host slab). */
void engine_ac_bytes(const zinc_engine *e, size_t *dev, size_t *host);
/* Allocates the plan's buffers and slab 0 (create). */
zinc_status engine_acts_alloc(zinc_engine *e);
void engine_acts_free(zinc_engine *e);
void engine_layout_free(zinc_engine *e);
/* The slab of (micro-batch, chunk) k: the one it holds, or a free one, or a new one. */
zinc_status engine_slab_take(zinc_engine *e, int k, engine_slab *out);
void engine_slab_give(zinc_engine *e, int k);
/* Slab 0 (eval, loss_and_grad). */
engine_slab engine_slab0(const zinc_engine *e);
/* Forward: where layer i keeps its saved activations and writes its output (out: the
 * chunk's); after it ran, engine_act_keep stores a checkpoint kept apart. */
void *engine_act_saved(const zinc_engine *e, engine_slab s, int i);
void *engine_act_out(const zinc_engine *e, engine_slab s, int i, void *out);
zinc_status engine_act_keep(zinc_engine *e, engine_slab s, int i, const void *y);
/* Backward: the input of layer i of the chunk starting at layer lo (in: the chunk's input,
 * NULL for the tokens), a kept-apart checkpoint loaded back first. */
const void *engine_act_input(zinc_engine *e, engine_slab s, int i, int lo, const void *in, zinc_status *st);
/* Backward: where a recomputed layer writes its output. */
void *engine_act_recompute_out(const zinc_engine *e, int i);

/* ---- ops_profile.c: per-op device times (ZINC_PROFILE_OPS=1) ---- */
const zinc_ops *engine_ops_profiled(const zinc_ops *in, zinc_status (*sync)(void));
void engine_ops_profile_report(void);
/* The first device error a profiling sync consumed since the last call
 * (ZINC_OK if none), with its detail as zinc_last_error(). */
zinc_status engine_ops_profile_error(void);
/* The device's sync, plus errors the profiler consumed. */
zinc_status engine_sync(zinc_engine *e);

#endif
