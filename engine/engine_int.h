/* engine_int.h - private engine structures (engine/ only). */
#ifndef ZINC_ENGINE_INT_H
#define ZINC_ENGINE_INT_H

#include "zinc/engine.h"

#define ENGINE_MAX_LAYER_PARAMS 32
#define ENGINE_UNIT_ALIGN 16 /* elements: 64-byte alignment of every param */

typedef struct engine_param {
    char name[96];
    int ndim;
    int64_t shape[ZINC_MAX_DIMS];
    int64_t numel;
    int tp_dim;
    zinc_init_kind init;
    float std;
    int layer;      /* the layer (unit) that owns it */
    size_t offset;  /* element offset into the slabs */
    int decay;      /* weight decay applies (ndim >= 2) */
} engine_param;

struct zinc_layer {
    zinc_engine *e;
    const zinc_layer_def *def;
    int index;
    int n_in, n_out;
    int params[ENGINE_MAX_LAYER_PARAMS]; /* engine param ids */
    int n_params;
    size_t unit_offset, unit_numel; /* flat unit: [unit_offset, +unit_numel) of the slabs */
    float *acts;
    size_t act_floats;
    int declaring;
};

struct zinc_engine {
    zinc_config cfg;
    zinc_comm *world;
    zinc_mesh *mesh;
    const zinc_ops *ops;
    const zinc_model_def *model;

    zinc_layer *layers;
    int n_layers;
    engine_param *params;
    int n_params, cap_params;

    /* flat units of all layers back to back; same layout in every slab */
    size_t slab_numel;
    float *param_slab, *grad_slab, *m_slab, *v_slab;

    float *act_slab;     /* every layer's saved activations and outputs */
    float **out;         /* out[l]: (B, T, n_out) of layer l; NULL for the loss layer */
    float *dbuf[2];      /* ping-pong activation gradients */
    float *scratch;
    int32_t *tokens, *targets;

    int B, T, ga, dp, dp_rank;
    int64_t step;        /* optimizer steps done */
    int64_t samples;     /* global sample index of the next batch */
    uint64_t state_bytes, state_bytes_max;
};

#endif
