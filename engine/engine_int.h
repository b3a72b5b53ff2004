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
    double t_fwd, t_bwd, t_reduce, t_opt;
};


/* ---- step.c: the training step, eval, the executor's stage callbacks ---- */
/* The dtype activations are stored in. */
zinc_dtype engine_act_dtype(const zinc_engine *e);
/* Frees the activation slabs (destroy). */
void engine_slabs_free(zinc_engine *e);

/* ---- ops_profile.c: per-op device times (ZINC_PROFILE_OPS=1) ---- */
const zinc_ops *engine_ops_profiled(const zinc_ops *in, zinc_status (*sync)(void));
void engine_ops_profile_report(void);
/* The first device error a profiling sync consumed since the last call
 * (ZINC_OK if none), with its detail as zinc_last_error(). */
zinc_status engine_ops_profile_error(void);
/* The device's sync, plus errors the profiler consumed. */
zinc_status engine_sync(zinc_engine *e);

#endif
