/* engine_ckpt.c - the engine's state as logical tensors: checkpoint save and
 * load at any layout, and initialization from Hugging Face safetensors.
 *
 * Every parameter becomes up to four logical tensors of its global shape:
 * "param" (storage dtype), "master" (fp32, only when the storage dtype is 16
 * bits), "exp_avg" and "exp_avg_sq" (fp32). On save each rank contributes its
 * slice [r*shard, (r+1)*shard) of every unit, so the ranks write disjoint
 * pieces in parallel at every stage. Under tensor parallelism a parameter's
 * slice is a box of the logical tensor (zinc/ckpt.h), one piece per parameter,
 * kind and rank; replicated parameters come from TP rank 0 only. On load each rank asks for its opt range
 * (the whole unit at stage 0) of the fp32 master weights ("master" when the
 * checkpoint has it, else "param") and the moments, then rebuilds the
 * storage-dtype params from them and gathers them where they are whole.
 * State offloaded to NVMe streams between checkpoint and swap files through
 * the layout's io callback, a few MiB at a time, never whole in memory.
 * The meta (step counters, topology, loss scaler) is checked field by field
 * against itself and the checkpoint before a load uses any of it, and
 * init_from takes only finite floating-point weights of the model's shapes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "engine_int.h"
#include "zinc/ckpt.h"
#include "zinc/log.h"
#include "zinc/safetensors.h"

enum { K_PARAM, K_MASTER, K_EXP_AVG, K_EXP_AVG_SQ, N_KINDS };
static const char *const kind_names[N_KINDS] = {"param", "master", "exp_avg", "exp_avg_sq"};

/* Where a piece without host memory lives: a range of a swap file, or
 * device memory the host cannot read (copied through the staging buffer). */
typedef struct piece_src {
    zinc_aio_file *file;  /* swap file, or NULL */
    void *dev;            /* device memory of the piece's first element, or NULL */
    uint64_t off;         /* byte offset of the piece's first element in file */
    size_t elem_bytes;
} piece_src;

typedef struct layout_buf {
    zinc_engine *e;
    zinc_ckpt_tensor *t;
    zinc_ckpt_piece *p;
    piece_src *src;       /* parallel to p */
    int n_t, n_p, cap_p;
} layout_buf;

static void layout_free(layout_buf *b)
{
    free(b->t);
    free(b->p);
    free(b->src);
}

/* Appends a piece: elements [off, off+n) of box (start, count) of tensor. */
static int add_piece(layout_buf *b, int tensor, int64_t off, int64_t n, void *data, piece_src src,
                     const int64_t *start, const int64_t *count)
{
    if (b->n_p == b->cap_p) {
        int cap = b->cap_p ? 2 * b->cap_p : 256;
        zinc_ckpt_piece *np = realloc(b->p, (size_t)cap * sizeof *np);
        if (np) b->p = np;
        piece_src *ns = np ? realloc(b->src, (size_t)cap * sizeof *ns) : NULL;
        if (ns) b->src = ns;
        if (!np || !ns) return -1;
        b->cap_p = cap;
    }
    b->src[b->n_p] = src;
    zinc_ckpt_piece *p = &b->p[b->n_p++];
    *p = (zinc_ckpt_piece){.tensor = tensor, .offset = off, .n = n, .data = data};
    memcpy(p->start, start, sizeof p->start);
    memcpy(p->count, count, sizeof p->count);
    return 0;
}

/* The layout's io: offloaded pieces stream between checkpoint and swap
 * file, device pieces between checkpoint and device memory. */
static zinc_status swap_io(void *u, int piece, int write, void *buf, int64_t first, int64_t n)
{
    const layout_buf *b = u;
    const piece_src *s = &b->src[piece];
    size_t bytes = (size_t)n * s->elem_bytes;
    if (s->dev) {
        char *d = (char *)s->dev + (size_t)first * s->elem_bytes;
        if (write)
            b->e->dev->copy(d, buf, bytes);
        else
            b->e->dev->copy(buf, d, bytes);
        return engine_sync(b->e);
    }
    uint64_t off = s->off + (uint64_t)first * s->elem_bytes;
    return write ? zinc_aio_pwrite(s->file, buf, bytes, off) : zinc_aio_pread(s->file, buf, bytes, off);
}

/* Swap-file location of element elem of unit u for kind, when it is offloaded. */
static piece_src swap_src(const zinc_engine *e, int kind, const zero_unit *u, size_t elem);

/* Tensor table: tensor index = param * N_KINDS + kind. */
static zinc_status make_tensors(const zinc_engine *e, layout_buf *b, int master_as_param)
{
    b->n_t = e->z.n_params * N_KINDS;
    b->t = calloc((size_t)b->n_t, sizeof *b->t);
    if (!b->t) return zinc_error(ZINC_ERR_NOMEM, "checkpoint tensor table");
    for (int i = 0; i < e->z.n_params; i++)
        for (int k = 0; k < N_KINDS; k++) {
            zinc_ckpt_tensor *t = &b->t[i * N_KINDS + k];
            const zero_param *p = &e->z.params[i];
            snprintf(t->name, sizeof t->name, "%s", p->name);
            snprintf(t->kind, sizeof t->kind, "%s",
                     k == K_MASTER && master_as_param ? "param" : kind_names[k]);
            t->dtype = k == K_PARAM ? e->z.plan.pdt : ZINC_DTYPE_F32;
            t->ndim = p->ndim;
            memcpy(t->shape, p->shape, sizeof t->shape);
            t->tp_dim = p->tp_dim;
            t->tp_blocks = p->tp_dim >= 0 ? p->tp_blocks : 0;
        }
    return ZINC_OK;
}

/* Pieces for elements [lo, hi) of every unit; ptr(kind, unit, elem) gives
 * where element elem of the unit lives for that kind (NULL: skip kind). */
typedef void *(*elem_ptr_fn)(const zinc_engine *e, int kind, const zero_unit *u, size_t elem);

/* Pieces for this rank's elements of every parameter: [shard lo, hi) of each unit
 * (use_lo_shard, save) or its opt range (load), one piece per parameter and kind. Under
 * TP a parameter's local slice is the TP box of its logical tensor (zinc_ckpt_box_tp) and
 * the slice's row-major order is the box's, so the local range [a, z) is the piece
 * (box, a, z - a), however many rows the slice spans. */
static zinc_status make_pieces(const zinc_engine *e, layout_buf *b, int use_lo_shard,
                               const int *kinds, int n_kinds, elem_ptr_fn ptr)
{
    zinc_status st = ZINC_OK;
    static const int param_only[] = {K_PARAM};
    for (int l = 0; l < e->z.n_units; l++) {
        const zero_unit *u = &e->z.units[l];
        if (use_lo_shard && u->dup) continue; /* a copy of another stage's unit: the owner saves it */
        size_t lo = use_lo_shard ? (size_t)e->z.dp_rank * u->shard : u->opt_lo;
        size_t hi = use_lo_shard ? lo + u->shard : u->opt_lo + u->opt_n;
        const int *ks = kinds, nks = u->frozen ? 1 : n_kinds;
        if (u->frozen) { /* the params alone, in the storage dtype: a load takes what the rank stores */
            ks = param_only;
            if (!use_lo_shard) {
                lo = u->sharded ? (size_t)e->z.dp_rank * u->shard : 0;
                hi = u->sharded ? lo + u->shard : u->numel;
            }
        }
        for (int pi = u->n_params_first; pi < u->n_params_end; pi++) {
            const zero_param *p = &e->z.params[pi];
            if (p->unit != l) continue;
            size_t a = p->uoff > lo ? p->uoff : lo;
            size_t z = p->uoff + (size_t)p->numel < hi ? p->uoff + (size_t)p->numel : hi;
            if (a >= z) continue;
            /* a replicated parameter is the same on every TP rank: TP rank 0 saves it */
            if (use_lo_shard && p->tp_dim < 0 && e->z.tp_rank > 0) continue;
            int64_t start[ZINC_CKPT_BOX_DIMS], count[ZINC_CKPT_BOX_DIMS];
            /* every kind's tensor has the parameter's shape and partition spec */
            ZINC_TRY(zinc_ckpt_box_tp(&b->t[pi * N_KINDS], e->z.tp, e->z.tp_rank, start, count));
            for (int k = 0; k < nks; k++) {
                void *data = ptr(e, ks[k], u, a);
                piece_src src = data ? (piece_src){0} : swap_src(e, ks[k], u, a);
                if (data && e->dev->is_device_ptr(data)) { /* device memory: io callback */
                    src = (piece_src){.dev = data,
                                      .elem_bytes = ks[k] == K_PARAM ? e->z.plan.psz : sizeof(float)};
                    data = NULL;
                }
                if (add_piece(b, pi * N_KINDS + ks[k], (int64_t)(a - p->uoff), (int64_t)(z - a), data,
                              src, start, count) != 0)
                    return zinc_error(ZINC_ERR_NOMEM, "checkpoint pieces");
            }
        }
    }
cleanup:
    return st;
}

static piece_src swap_src(const zinc_engine *e, int kind, const zero_unit *u, size_t elem)
{
    size_t rel = elem - u->opt_lo; /* offload needs stage >= 1: opt_lo starts the slice */
    int l = (int)(u - e->z.units);
    if (kind == K_PARAM)
        return (piece_src){.file = zinc_swap_file(e->z.param_swap),
                           .off = zinc_swap_locate(e->z.param_swap, l, 0, rel * e->z.plan.psz),
                           .elem_bytes = e->z.plan.psz};
    int part = kind == K_MASTER ? 0 : kind == K_EXP_AVG ? 1 : 2;
    return (piece_src){.file = zinc_swap_file(e->z.opt_swap),
                       .off = zinc_swap_locate(e->z.opt_swap, l, part, rel * sizeof(float)),
                       .elem_bytes = sizeof(float)};
}

/* Where element elem of unit u's params is stored (whole, or the shard); NULL when offloaded. */
static void *param_ptr(const zinc_engine *e, const zero_unit *u, size_t elem)
{
    if (zero_param_on_nvme(&e->z, u)) return NULL;
    size_t at = u->sharded ? elem - (size_t)e->z.dp_rank * u->shard : elem;
    return (char *)u->p + at * e->z.plan.psz;
}

/* Save: element elem of slice [r*shard, (r+1)*shard); NULL when offloaded. */
static void *save_ptr(const zinc_engine *e, int kind, const zero_unit *u, size_t elem)
{
    size_t rel = elem - u->opt_lo; /* stage >= 1: opt range is the slice */
    if (kind == K_PARAM) return param_ptr(e, u, elem);
    if (e->z.plan.opt_nvme) return NULL;
    const float *base = kind == K_MASTER ? u->master : kind == K_EXP_AVG ? u->m : u->v;
    return (void *)(base + (e->z.plan.stage == 0 ? elem : rel));
}

/* Load: element elem of the opt range; the fp32 master (or params) go to
 * master; NULL when offloaded. */
static void *load_ptr(const zinc_engine *e, int kind, const zero_unit *u, size_t elem)
{
    if (kind == K_PARAM) return param_ptr(e, u, elem); /* frozen units: their params */
    if (e->z.plan.opt_nvme) return NULL;
    size_t rel = elem - u->opt_lo;
    const float *base = kind == K_EXP_AVG ? u->m : kind == K_EXP_AVG_SQ ? u->v : u->master;
    return (void *)(base + rel);
}

static char *make_meta(const zinc_engine *e)
{
    json_t *m = json_object();
    json_object_set_new(m, "step", json_integer(e->step));
    json_object_set_new(m, "optimizer_step", json_integer(e->opt_step));
    json_object_set_new(m, "samples", json_integer(e->samples));
    json_object_set_new(m, "precision", json_string(zinc_dtype_name(e->z.plan.pdt)));
    json_t *topo = json_object();
    json_object_set_new(topo, "pp", json_integer(e->pp.stages));
    json_object_set_new(topo, "virtual_stages", json_integer(e->pp.virt));
    /* the layer-to-stage map: model chunk j (stage j % pp) ran layers [b[j], b[j+1]) */
    json_t *lb = json_array();
    for (int j = 0; j <= e->pp.stages * e->pp.virt; j++) json_array_append_new(lb, json_integer(e->bounds[j]));
    json_object_set_new(topo, "chunk_layers", lb);
    json_object_set_new(topo, "dp", json_integer(e->z.dp));
    json_object_set_new(topo, "tp", json_integer(e->z.tp));
    json_object_set_new(topo, "zero_stage", json_integer(e->z.plan.stage));
    json_object_set_new(m, "topology", topo);
    if (e->model->vocab_real > 0 && e->model->vocab_tensors) { /* what an export keeps of a padded vocabulary */
        json_t *v = json_object(), *names = json_array();
        for (int i = 0; e->model->vocab_tensors[i]; i++)
            json_array_append_new(names, json_string(e->model->vocab_tensors[i]));
        json_object_set_new(v, "real", json_integer(e->model->vocab_real));
        json_object_set_new(v, "tensors", names);
        json_object_set_new(m, "vocab", v);
    }
    json_t *sc = json_object();
    json_object_set_new(sc, "scale", json_real(e->scaler.scale));
    json_object_set_new(sc, "cur_hysteresis", json_integer(e->scaler.cur_hysteresis));
    json_object_set_new(sc, "last_overflow_iter", json_integer(e->scaler.last_overflow_iter));
    json_object_set_new(sc, "cur_iter", json_integer(e->scaler.cur_iter));
    json_object_set_new(m, "loss_scaler", sc);
    json_t *sched = json_object();
    json_object_set_new(sched, "last_batch_iteration", json_integer(e->opt_step));
    json_object_set_new(m, "lr_scheduler", sched);
    /* the data order is a pure function of (seed, sample index): no RNG state to keep */
    json_t *data = json_object();
    json_object_set_new(data, "seed", json_integer(e->cfg.data.seed));
    json_object_set_new(data, "sample_index", json_integer(e->samples));
    json_object_set_new(m, "data", data);
    char *cfg = zinc_config_dump(&e->cfg);
    if (cfg) {
        json_t *cj = json_loads(cfg, 0, NULL);
        if (cj) json_object_set_new(m, "config", cj);
        free(cfg);
    }
    char *s = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    return s;
}

/* Lists only the tensors a rank may have pieces of: a frozen parameter has its params only
 * (no master or moments in any checkpoint), and tensors whose name was cleared go. */
static zinc_status table_compact(const zinc_engine *e, layout_buf *b)
{
    for (int i = 0; i < b->n_t; i++)
        if (i % N_KINDS != K_PARAM && e->z.params[i / N_KINDS].frozen) b->t[i].name[0] = '\0';
    if (b->n_t <= 0) return ZINC_OK;
    int *remap = malloc((size_t)b->n_t * sizeof *remap), n = 0;
    if (!remap) return zinc_error(ZINC_ERR_NOMEM, "checkpoint tensor table");
    for (int i = 0; i < b->n_t; i++) {
        remap[i] = b->t[i].name[0] ? n : -1;
        if (b->t[i].name[0]) b->t[n++] = b->t[i];
    }
    for (int i = 0; i < b->n_p; i++) b->p[i].tensor = remap[b->p[i].tensor];
    free(remap);
    b->n_t = n;
    return ZINC_OK;
}

/* The rank-local part of a save: offloaded state into memory, the layout
 * of this rank's pieces, the meta (rank 0's is stored). */
static zinc_status save_prepare(zinc_engine *e, layout_buf *b, const int *kinds, int nk, int mixed,
                                char **meta)
{
    zinc_status st = ZINC_OK;
    ZINC_TRY(make_tensors(e, b, 0));
    ZINC_TRY(make_pieces(e, b, 1, kinds, nk, save_ptr));
    /* drop the master tensors from the table when they are the params */
    if (!mixed)
        for (int i = 0; i < b->n_t; i++)
            if (i % N_KINDS == K_MASTER) b->t[i].name[0] = '\0';
    ZINC_TRY(table_compact(e, b));
    *meta = make_meta(e);
    if (!*meta) {
        st = zinc_error(ZINC_ERR_NOMEM, "checkpoint meta");
        goto cleanup;
    }
cleanup:
    return st;
}

zinc_status zinc_engine_save_checkpoint(zinc_engine *e, zinc_aio *aio, const char *save_dir,
                                        const char *tag, int keep_last)
{
    /* delayed_update: the update in flight lands first (a checkpoint holds one state; the
     * run that saves continues from it, as a resumed one does) */
    zinc_status st = zero_delay_flush(&e->z);
    if (st != ZINC_OK) return st;
    layout_buf b = {.e = e};
    char *meta = NULL;
    int mixed = e->z.plan.pdt != ZINC_DTYPE_F32;
    int kinds[N_KINDS], nk = 0;
    kinds[nk++] = K_PARAM;
    if (mixed) kinds[nk++] = K_MASTER;
    kinds[nk++] = K_EXP_AVG;
    kinds[nk++] = K_EXP_AVG_SQ;
    /* local preparation; every rank agrees on it before the collective save */
    ZINC_TRY(zinc_comm_agree(e->world, save_prepare(e, &b, kinds, nk, mixed, &meta)));
    zinc_ckpt_layout lay = {b.t, b.n_t, b.p, b.n_p, swap_io, &b};
    st = zinc_ckpt_save(e->world, aio, save_dir, tag, &lay, meta, keep_last);
cleanup:
    free(meta);
    layout_free(&b);
    return st;
}

/* ---- the meta, validated before anything of it is used ---- */

#define META_STEPS_MAX 1000000000000LL /* config.c's bound on step counts */
#define META_TBS_MAX 2147483647LL      /* and on samples per step */
#define META_HYST_MAX 1000000LL        /* and on fp16.hysteresis */

/* What make_meta wrote, checked by meta_parse. */
typedef struct ckpt_meta {
    int64_t step, opt_step, samples, seed;
    zinc_dtype precision;
    int64_t pp, dp, tp, zero_stage;
    double scale;
    int64_t cur_hysteresis, last_overflow_iter, cur_iter;
} ckpt_meta;

/* Refuses field (path "meta.x.y") of file mp: one line naming both, what was expected and
 * what was found. */
static zinc_status meta_bad(const char *mp, const char *field, json_t *v, const char *want)
{
    char found[64] = "nothing (missing)";
    if (v) {
        char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        snprintf(found, sizeof found, "%.40s%s", t ? t : "?", t && strlen(t) > 40 ? "..." : "");
        free(t);
    }
    return zinc_error(ZINC_ERR_CORRUPT, "%s: meta.%s: expected %s, found %s", mp, field, want, found);
}

/* obj.key as an integer in [lo, hi] (field names it in messages). */
static zinc_status meta_i64(const char *mp, json_t *obj, const char *key, const char *field, int64_t lo, int64_t hi,
                            int64_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        char want[96];
        snprintf(want, sizeof want, "an integer in %lld..%lld", (long long)lo, (long long)hi);
        return meta_bad(mp, field, v, want);
    }
    *out = json_integer_value(v);
    return ZINC_OK;
}

/* obj.key as an object (field names it). */
static zinc_status meta_obj(const char *mp, json_t *obj, const char *key, json_t **out)
{
    *out = json_object_get(obj, key);
    return json_is_object(*out) ? ZINC_OK : meta_bad(mp, key, *out, "an object");
}

/* Parses and checks the meta text of checkpoint file mp (its manifest) against itself, the
 * checkpoint (n_files rank files, params stored as param_dtype) and what zinc can run:
 * every field make_meta writes must be there with its type and range, and the counters
 * must agree (optimizer steps <= steps <= samples, scheduler and data positions equal to
 * them, scaler iterations within the steps). ZINC_ERR_CORRUPT naming mp and the field. */
static zinc_status meta_parse(const char *mp, const char *text, int n_files, zinc_dtype param_dtype,
                              ckpt_meta *c)
{
    zinc_status st = ZINC_OK;
    json_error_t jerr;
    json_t *m = text ? json_loads(text, JSON_DECODE_ANY, &jerr) : NULL, *o, *v;
    memset(c, 0, sizeof *c);
    if (!json_is_object(m)) {
        st = m ? zinc_error(ZINC_ERR_CORRUPT, "%s: meta is not an object", mp)
               : zinc_error(ZINC_ERR_CORRUPT, "%s: meta does not parse", mp);
        goto cleanup;
    }
    ZINC_TRY(meta_i64(mp, m, "step", "step", 0, META_STEPS_MAX, &c->step));
    ZINC_TRY(meta_i64(mp, m, "optimizer_step", "optimizer_step (<= step)", 0,
                      c->step < INT32_MAX ? c->step : INT32_MAX, &c->opt_step));
    int64_t most;
    if (__builtin_mul_overflow(c->step, META_TBS_MAX, &most)) most = INT64_MAX;
    ZINC_TRY(meta_i64(mp, m, "samples", "samples (between step and step x 2^31-1)", c->step, most, &c->samples));

    v = json_object_get(m, "precision");
    const char *pn = json_is_string(v) ? json_string_value(v) : "";
    if (!strcmp(pn, "f32")) c->precision = ZINC_DTYPE_F32;
    else if (!strcmp(pn, "bf16")) c->precision = ZINC_DTYPE_BF16;
    else if (!strcmp(pn, "f16")) c->precision = ZINC_DTYPE_F16;
    else {
        st = meta_bad(mp, "precision", v, "\"f32\", \"bf16\" or \"f16\"");
        goto cleanup;
    }
    if ((int)param_dtype >= 0 && c->precision != param_dtype) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: meta.precision: \"%s\", but the params are stored as %s", mp, pn,
                        zinc_dtype_name(param_dtype));
        goto cleanup;
    }

    ZINC_TRY(meta_obj(mp, m, "topology", &o));
    /* rank files = pp x dp x tp */
    ZINC_TRY(meta_i64(mp, o, "pp", "topology.pp (dividing the checkpoint's rank files)", 1, n_files, &c->pp));
    ZINC_TRY(meta_i64(mp, o, "tp", "topology.tp (dividing the checkpoint's rank files)", 1,
                      n_files, &c->tp));
    if (n_files % (c->tp * c->pp)) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: meta.topology.pp %lld x tp %lld does not divide the checkpoint's "
                        "%d rank files", mp, (long long)c->pp, (long long)c->tp, n_files);
        goto cleanup;
    }
    ZINC_TRY(meta_i64(mp, o, "dp", "topology.dp (the checkpoint's rank files / (pp x tp))",
                      n_files / (c->tp * c->pp), n_files / (c->tp * c->pp), &c->dp));
    ZINC_TRY(meta_i64(mp, o, "zero_stage", "topology.zero_stage", 0, 3, &c->zero_stage));

    ZINC_TRY(meta_obj(mp, m, "loss_scaler", &o));
    v = json_object_get(o, "scale");
    if (!json_is_number(v) || !isfinite(json_number_value(v)) || json_number_value(v) <= 0) {
        st = meta_bad(mp, "loss_scaler.scale", v, "a finite number > 0");
        goto cleanup;
    }
    c->scale = json_number_value(v);
    /* a scaler that ran (fp16) never lets hysteresis fall below 1; others keep 0 */
    ZINC_TRY(meta_i64(mp, o, "cur_hysteresis", "loss_scaler.cur_hysteresis", c->precision == ZINC_DTYPE_F16,
                      META_HYST_MAX, &c->cur_hysteresis));
    ZINC_TRY(meta_i64(mp, o, "cur_iter", "loss_scaler.cur_iter (<= step)", 0, c->step, &c->cur_iter));
    /* an overflow at iteration i sets it to i, then cur_iter becomes i + 1; without fp16 the
     * scaler never ran and both stay 0 */
    ZINC_TRY(meta_i64(mp, o, "last_overflow_iter", "loss_scaler.last_overflow_iter (-1 or < cur_iter)", -1,
                      c->precision == ZINC_DTYPE_F16 ? c->cur_iter - 1 : c->cur_iter, &c->last_overflow_iter));

    int64_t x;
    ZINC_TRY(meta_obj(mp, m, "lr_scheduler", &o));
    ZINC_TRY(meta_i64(mp, o, "last_batch_iteration", "lr_scheduler.last_batch_iteration (= optimizer_step)",
                      c->opt_step, c->opt_step, &x));
    ZINC_TRY(meta_obj(mp, m, "data", &o));
    ZINC_TRY(meta_i64(mp, o, "seed", "data.seed", 0, INT64_MAX, &c->seed));
    ZINC_TRY(meta_i64(mp, o, "sample_index", "data.sample_index (= samples)", c->samples, c->samples, &x));
    v = json_object_get(m, "config");
    if (v && !json_is_object(v)) {
        st = meta_bad(mp, "config", v, "an object");
        goto cleanup;
    }
cleanup:
    json_decref(m);
    return st;
}

/* The rank-local part of a load: which tag, whether the checkpoint has fp32
 * master weights, a meta that zinc can resume from, offloaded state into
 * memory, the wanted pieces. */
static zinc_status load_prepare(zinc_engine *e, zinc_aio *aio, const char *save_dir,
                                const char **tag, char *tagbuf, layout_buf *b, char *mp,
                                size_t mp_cap, int *n_files, zinc_dtype *param_dtype)
{
    zinc_status st = ZINC_OK;
    char dir[1024];
    zinc_ckpt_reader *r = NULL;
    ckpt_meta cm;
    if (!*tag) {
        ZINC_TRY(zinc_ckpt_resolve_latest(save_dir, tagbuf, ZINC_CKPT_TAG_MAX + 1));
        *tag = tagbuf;
    }
    /* fp32 master weights come from "master" when saved in 16 bits, else "param" */
    snprintf(dir, sizeof dir, "%s/%s", save_dir, *tag);
    ZINC_TRY(zinc_ckpt_reader_open(aio, dir, &r));
    snprintf(mp, mp_cap, "%s/manifest.json", zinc_ckpt_reader_dir(r));
    int q = 0; /* the first trained parameter (a frozen one has no master in any precision) */
    while (q < e->z.n_params && e->z.params[q].frozen) q++;
    int has_master = q < e->z.n_params && zinc_ckpt_reader_find(r, e->z.params[q].name, "master") >= 0;
    int pi = q < e->z.n_params ? zinc_ckpt_reader_find(r, e->z.params[q].name, "param") : -1;
    *param_dtype = pi >= 0 ? zinc_ckpt_reader_tensor(r, pi)->dtype : (zinc_dtype)-1;
    zinc_ckpt_reader_stats(r, n_files, NULL, NULL);
    ZINC_TRY(meta_parse(mp, zinc_ckpt_reader_meta(r), *n_files, *param_dtype, &cm));
    if (pi >= 0 && has_master != (cm.precision != ZINC_DTYPE_F32)) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: meta.precision: %s, but the checkpoint %s fp32 master weights", mp,
                        zinc_dtype_name(cm.precision), has_master ? "has" : "lacks");
        goto cleanup;
    }
    int kinds[] = {K_MASTER, K_EXP_AVG, K_EXP_AVG_SQ};
    ZINC_TRY(make_tensors(e, b, !has_master));
    ZINC_TRY(make_pieces(e, b, 0, kinds, 3, load_ptr));
    ZINC_TRY(table_compact(e, b));
cleanup:
    zinc_ckpt_reader_close(r);
    return st;
}

zinc_status zinc_engine_load_checkpoint(zinc_engine *e, zinc_aio *aio, const char *save_dir,
                                        const char *tag)
{
    zero_delay_free(&e->z); /* an update in flight belongs to the state being replaced */
    zinc_status st = ZINC_OK;
    layout_buf b = {.e = e};
    char *meta = NULL, tagbuf[ZINC_CKPT_TAG_MAX + 1], mp[1100] = "";
    int n_files = 0;
    zinc_dtype pdt = (zinc_dtype)-1;
    ckpt_meta cm;
    /* local preparation; every rank agrees on it before the collective load */
    ZINC_TRY(zinc_comm_agree(e->world, load_prepare(e, aio, save_dir, &tag, tagbuf, &b, mp, sizeof mp,
                                                    &n_files, &pdt)));
    zinc_ckpt_layout lay = {b.t, b.n_t, b.p, b.n_p, swap_io, &b};
    ZINC_TRY(zinc_ckpt_load(e->world, aio, save_dir, tag, &lay, &meta));
    /* the meta as loaded (rank 0 read the manifest again): checked again before use */
    ZINC_TRY(zinc_comm_agree(e->world, meta_parse(mp, meta, n_files, pdt, &cm)));
    ZINC_TRY(zero_params_from_master(&e->z));

    e->step = cm.step;
    e->opt_step = cm.opt_step;
    e->samples = cm.samples;
    /* the scaler continues only where one ran (an fp16 checkpoint) and this run's is dynamic:
     * a static fp16.loss_scale is the config's to set */
    if (e->cfg.fp16.enabled && e->scaler.dynamic && cm.precision == ZINC_DTYPE_F16) {
        e->scaler.scale = cm.scale;
        e->scaler.cur_hysteresis = (int)cm.cur_hysteresis;
        e->scaler.last_overflow_iter = cm.last_overflow_iter;
        e->scaler.cur_iter = cm.cur_iter;
    }
    if (cm.seed != e->cfg.data.seed && e->z.dp_rank == 0)
        ZINC_WARN("checkpoint %s was trained with data.seed %lld, this run uses %lld: the sample "
                  "order changes", tag, (long long)cm.seed, (long long)e->cfg.data.seed);
    if (e->z.dp_rank == 0 && e->cfg.train.max_steps > 0 && cm.step > e->cfg.train.max_steps)
        ZINC_WARN("checkpoint %s/%s is at step %lld, past train.max_steps %lld: no step is left to train",
                  save_dir, tag, (long long)cm.step, (long long)e->cfg.train.max_steps);
    if (zinc_comm_rank(e->world) == 0 && (cm.pp > 1 || e->pp.stages > 1))
        ZINC_INFO("loaded checkpoint %s/%s (step %lld, saved at pp %lld tp %lld dp %lld stage %lld) into "
                  "pp %d tp %d dp %d stage %d", save_dir, tag, (long long)e->step, (long long)cm.pp, (long long)cm.tp,
                  (long long)cm.dp, (long long)cm.zero_stage, e->pp.stages, e->z.tp, e->z.dp, e->z.plan.stage);
    else if (zinc_comm_rank(e->world) == 0 && cm.tp == 1 && e->z.tp == 1)
        ZINC_INFO("loaded checkpoint %s/%s (step %lld, saved at dp %lld stage %lld) into dp %d stage %d",
                  save_dir, tag, (long long)e->step, (long long)cm.dp, (long long)cm.zero_stage, e->z.dp,
                  e->z.plan.stage);
    else if (zinc_comm_rank(e->world) == 0)
        ZINC_INFO("loaded checkpoint %s/%s (step %lld, saved at tp %lld dp %lld stage %lld) into "
                  "tp %d dp %d stage %d", save_dir, tag, (long long)e->step, (long long)cm.tp,
                  (long long)cm.dp, (long long)cm.zero_stage, e->z.tp, e->z.dp, e->z.plan.stage);
cleanup:
    free(meta);
    layout_free(&b);
    return st;
}

int64_t zinc_engine_step(const zinc_engine *e) { return e->step; }
int64_t zinc_engine_samples(const zinc_engine *e) { return e->samples; }

/* ------------------------------------------------------------ safetensors */

/* Copies logical elements [logical, logical + n) of a file's tensor (tn
 * elements, zero past them) to slice elements [local, local + n). */
typedef struct copy_run_ctx {
    float *dst;
    const float *src;
    int64_t tn;
} copy_run_ctx;

static void copy_run(void *user, int64_t local, int64_t logical, int64_t n)
{
    const copy_run_ctx *c = user;
    int64_t have = c->tn - logical < n ? c->tn - logical : n;
    if (have > 0) memcpy(c->dst + local, c->src + logical, (size_t)have * sizeof(float));
}

/* The weights of model.init_from: one safetensors file, or a Hugging Face model folder's
 * model.safetensors or its shards named by model.safetensors.index.json (weight_map). */
typedef struct st_set {
    char dir[600];
    json_t *map;          /* weight_map, or NULL for one file */
    int n;
    char *names[256];     /* the shard files opened so far */
    zinc_st_file *f[256];
} st_set;

static zinc_status st_set_open(st_set *s, const char *path)
{
    struct stat sb;
    memset(s, 0, sizeof *s);
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        s->names[0] = strdup(path);
        s->n = 1;
        return s->names[0] ? zinc_st_open(path, &s->f[0]) : zinc_error(ZINC_ERR_NOMEM, "init_from");
    }
    snprintf(s->dir, sizeof s->dir, "%s", path);
    char idx[700], one[700];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", path);
    snprintf(one, sizeof one, "%s/model.safetensors", path);
    if (stat(idx, &sb) != 0) {
        s->names[0] = strdup(one);
        s->n = 1;
        return s->names[0] ? zinc_st_open(one, &s->f[0]) : zinc_error(ZINC_ERR_NOMEM, "init_from");
    }
    json_error_t je;
    json_t *root = json_load_file(idx, 0, &je);
    if (!root) return zinc_error(ZINC_ERR_CORRUPT, "%s:%d: not a safetensors index: %s", idx, je.line, je.text);
    s->map = json_incref(json_object_get(root, "weight_map"));
    json_decref(root);
    if (!json_is_object(s->map)) return zinc_error(ZINC_ERR_CORRUPT, "%s: weight_map: expected an object", idx);
    return ZINC_OK;
}

static void st_set_close(st_set *s)
{
    for (int i = 0; i < s->n; i++) {
        zinc_st_close(s->f[i]);
        free(s->names[i]);
    }
    json_decref(s->map);
}

/* Finds tensor name: its file and index there (ti -1: not in the weights). */
static zinc_status st_set_find(st_set *s, const char *name, zinc_st_file **f, long *ti, const char **file)
{
    *ti = -1;
    if (!s->map) {
        *f = s->f[0];
        *file = s->names[0];
        *ti = zinc_st_find(s->f[0], name);
        return ZINC_OK;
    }
    const char *shard = json_string_value(json_object_get(s->map, name));
    if (!shard) return ZINC_OK;
    if (strchr(shard, '/') || !strcmp(shard, ".."))
        return zinc_error(ZINC_ERR_CORRUPT, "%s/model.safetensors.index.json: %s: shard \"%s\" is not a file name of the "
                          "folder", s->dir, name, shard);
    char p[900];
    snprintf(p, sizeof p, "%s/%s", s->dir, shard);
    int k = 0;
    while (k < s->n && strcmp(s->names[k], p)) k++;
    if (k == s->n) {
        if (s->n == 256) return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: more than 256 weight shards", s->dir);
        s->names[k] = strdup(p);
        if (!s->names[k]) return zinc_error(ZINC_ERR_NOMEM, "init_from");
        s->n++;
        zinc_status st = zinc_st_open(p, &s->f[k]);
        if (st != ZINC_OK)
            return zinc_error(st, "%s/model.safetensors.index.json names %s for %s: %s", s->dir, shard, name,
                              zinc_last_error());
    }
    *f = s->f[k];
    *file = s->names[k];
    *ti = zinc_st_find(s->f[k], name);
    if (*ti < 0)
        return zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s is missing (model.safetensors.index.json puts it there)", p, name);
    return ZINC_OK;
}

/* Tensors of the weights no parameter takes (on any rank: a pipeline stage holds its own
 * layers), other than buffers Hugging Face files carry (GPT-2's attention masks, rotary
 * inverse frequencies, a tied model's copy of lm_head): weights of another shape of model
 * (biases the config does not have, an untied head, more layers) are an error, never
 * dropped. Collective. */
static int init_benign(const zinc_engine *e, const char *n)
{
    static const char *const suffix[] = {".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq", NULL};
    const size_t len = strlen(n);
    for (int i = 0; suffix[i]; i++) {
        const size_t k = strlen(suffix[i]);
        if (len >= k && !strcmp(n + len - k, suffix[i])) return 1;
    }
    return e->cfg.model.tie_word_embeddings && !strcmp(n, "lm_head.weight");
}

static zinc_status init_unused_check(zinc_engine *e, st_set *s, const char *path)
{
    size_t n = s->map ? json_object_size(s->map) : zinc_st_count(s->f[0]);
    const char **names = calloc(n ? n : 1, sizeof *names);
    int32_t *unused = calloc(n ? n : 1, sizeof *unused);
    zinc_status st = ZINC_OK;
    if (!names || !unused) {
        st = zinc_error(ZINC_ERR_NOMEM, "init_from");
        n = 0; /* still take part in the collective below */
    }
    size_t i = 0;
    if (s->map && names) {
        const char *k;
        json_t *v;
        json_object_foreach(s->map, k, v) names[i++] = k;
    } else if (names) {
        for (; i < n; i++) names[i] = zinc_st_entry_at(s->f[0], i)->name;
    }
    for (i = 0; i < n; i++) {
        const char *nm = names[i], *bare = !strncmp(nm, "transformer.", 12) ? nm + 12 : nm;
        int used = init_benign(e, bare);
        for (int p = 0; !used && p < e->z.n_params; p++) used = !strcmp(e->z.params[p].name, nm) ||
                                                                 !strcmp(e->z.params[p].name, bare);
        unused[i] = !used;
    }
    int64_t nn = (int64_t)n, lo = nn, hi = nn; /* every rank lists the same names */
    zinc_status cs = zinc_comm_all_reduce(e->world, &nn, &lo, 1, ZINC_DTYPE_I64, ZINC_REDOP_MIN, NULL);
    if (cs == ZINC_OK) cs = zinc_comm_all_reduce(e->world, &nn, &hi, 1, ZINC_DTYPE_I64, ZINC_REDOP_MAX, NULL);
    if (cs == ZINC_OK && lo == hi && n)
        cs = zinc_comm_all_reduce(e->world, unused, unused, n, ZINC_DTYPE_I32, ZINC_REDOP_MIN, NULL);
    if (st == ZINC_OK) st = cs;
    int bad = 0;
    char list[400] = "";
    size_t off = 0;
    for (i = 0; st == ZINC_OK && i < n; i++) {
        if (!unused[i]) continue;
        if (bad++ < 3 && off < sizeof list) {
            int w = snprintf(list + off, sizeof list - off, "%s%s", off ? ", " : "", names[i]);
            if (w > 0) off += (size_t)w;
        }
    }
    if (st == ZINC_OK && bad)
        st = zinc_error(ZINC_ERR_CORRUPT, "%s %s: %d tensor%s the model does not take (%s%s): weights of "
                        "another shape of model (model.attention_bias, tie_word_embeddings, n_layer?)",
                        e->cfg.model.from_pretrained[0] ? "model.from_pretrained" : "model.init_from", path, bad,
                        bad == 1 ? "" : "s", list, bad > 3 ? ", ..." : "");
    free(names);
    free(unused);
    return st;
}

zinc_status zinc_engine_init_from(zinc_engine *e, const char *path)
{
    zinc_status st = ZINC_OK;
    zinc_st_file *f = NULL;
    st_set set;
    float *buf = NULL, *full = NULL;
    st = st_set_open(&set, path);
    if (st != ZINC_OK) {
        char err[1024];
        snprintf(err, sizeof err, "%s", zinc_last_error());
        st = zinc_error(st, "model.init_from: %s", err);
        goto cleanup;
    }
    /* the progress hook of checkpoints (a bar on zinc-train's terminal): bytes read as f32 */
    zinc_ckpt_progress_fn prog;
    void *prog_u;
    zinc_ckpt_get_progress(&prog, &prog_u);
    uint64_t prog_total = 0, prog_done = 0;
    for (int l = 0; l < e->z.n_units; l++) /* this stage's units: those it reads below */
        for (int pi = e->z.units[l].n_params_first; e->z.units[l].numel > 0 && pi < e->z.units[l].n_params_end; pi++)
            if (e->z.params[pi].unit == l) prog_total += (uint64_t)e->z.params[pi].numel * sizeof(float);
    if (prog) prog(0, prog_total, prog_u);
    for (int l = 0; l < e->z.n_units; l++) {
        zero_unit *u = &e->z.units[l];
        if (u->numel == 0) continue;
        free(full);
        full = calloc(u->numel, sizeof(float));
        if (!full) {
            st = zinc_error(ZINC_ERR_NOMEM, "init_from: layer %d", u->layer);
            goto cleanup;
        }
        for (int pi = u->n_params_first; pi < u->n_params_end; pi++) {
            const zero_param *p = &e->z.params[pi];
            if (p->unit != l) continue;
            char alt[128];
            snprintf(alt, sizeof alt, "transformer.%s", p->name);
            long ti;
            const char *file;
            ZINC_TRY(st_set_find(&set, p->name, &f, &ti, &file));
            if (ti < 0) ZINC_TRY(st_set_find(&set, alt, &f, &ti, &file));
            if (ti < 0 && zinc_lora_param_name(p->name)) { /* a base model's file: the adapter starts fresh */
                zero_param_init(&e->z, pi, full + p->uoff);
                continue;
            }
            if (ti < 0) {
                st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s is missing", set.map ? set.dir : file, p->name);
                goto cleanup;
            }
            const zinc_st_entry *t = zinc_st_entry_at(f, (size_t)ti);
            if (t->dtype != ZINC_DTYPE_F32 && t->dtype != ZINC_DTYPE_BF16 && t->dtype != ZINC_DTYPE_F16 &&
                t->dtype != ZINC_DTYPE_F64) {
                st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s has dtype %s; weights must be floating point "
                                "(F32, BF16, F16 or F64)", file, t->name, zinc_st_dtype_name(t->dtype));
                goto cleanup;
            }
            /* same rank; dim 0 may differ for the embeddings: fewer token rows only by the
             * padding of vocab_size to a multiple of 128 (50257 -> 50304; of 64 x TP when that
             * is more), never below the 256 byte tokens; more position rows than block_size */
            int is_wte = !strcmp(p->name, "wte.weight"), is_wpe = !strcmp(p->name, "wpe.weight");
            for (int i = 0; e->model->vocab_tensors && e->model->vocab_tensors[i]; i++)
                is_wte |= !strcmp(p->name, e->model->vocab_tensors[i]); /* the vocabulary's rows */
            const int64_t pad = 64 * e->z.tp > 128 ? 64 * e->z.tp : 128;
            int64_t min_rows = p->ndim > 0 ? p->shape[0] - (pad - 1) : 0;
            if (p->ndim > 0 && min_rows < (p->shape[0] < 256 ? p->shape[0] : 256))
                min_rows = p->shape[0] < 256 ? p->shape[0] : 256;
            int ok = t->ndim == p->ndim;
            for (int d = 0; ok && d < p->ndim; d++)
                ok = t->shape[d] == p->shape[d] ||
                     (d == 0 && is_wte && t->shape[0] <= p->shape[0] && t->shape[0] >= min_rows) ||
                     (d == 0 && is_wpe && t->shape[0] >= p->shape[0]);
            if (!ok && is_wte && t->ndim == p->ndim && t->ndim == 2 && t->shape[1] == p->shape[1]) {
                st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s has %lld rows; model.vocab_size %lld takes "
                                "%lld..%lld (fewer only by padding to a multiple of 128)", file, t->name,
                                (long long)t->shape[0], (long long)p->shape[0], (long long)min_rows,
                                (long long)p->shape[0]);
                goto cleanup;
            }
            if (!ok) {
                st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s has shape [%lld, %lld], the model "
                                "needs [%lld, %lld]", file, t->name, (long long)t->shape[0],
                                (long long)(t->ndim > 1 ? t->shape[1] : 1), (long long)p->shape[0],
                                (long long)(p->ndim > 1 ? p->shape[1] : 1));
                goto cleanup;
            }
            /* zinc_st_open checked that the shape's bytes fit; the f32 copy is checked here */
            int64_t tn = 1, tb;
            for (int d = 0; d < t->ndim; d++) tn *= t->shape[d];
            free(buf);
            buf = __builtin_mul_overflow(tn, (int64_t)sizeof(float), &tb) ? NULL : malloc((size_t)tb + 1);
            if (!buf) {
                st = zinc_error(ZINC_ERR_NOMEM, "init_from: %s", t->name);
                goto cleanup;
            }
            ZINC_TRY(zinc_st_read_f32(f, (size_t)ti, buf));
            for (int64_t k = 0; k < tn; k++)
                if (!isfinite(buf[k])) {
                    st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s: element %lld is %s (as f32); weights must "
                                    "be finite", file, t->name, (long long)k,
                                    isnan(buf[k]) ? "NaN" : buf[k] > 0 ? "+Inf" : "-Inf");
                    goto cleanup;
                }
            /* this TP rank's slice: the runs of it inside the logical tensor
             * (rows past the file's, the vocabulary's padding, stay zero) */
            copy_run_ctx cr = {full + p->uoff, buf, tn};
            zero_param_runs(p, e->z.tp, e->z.tp_rank, copy_run, &cr);
            prog_done += (uint64_t)p->numel * sizeof(float);
            if (prog) prog(prog_done < prog_total ? prog_done : prog_total, prog_total, prog_u);
        }
        /* this rank's storage: params (whole or shard), master over the opt range */
        ZINC_TRY(zero_unit_store(&e->z, l, full + (u->sharded ? u->opt_lo : 0)));
    }
cleanup:
    {   /* collective from here: a rank that failed above must not leave the others waiting */
        zinc_status all = zinc_comm_agree(e->world, st);
        if (st == ZINC_OK) st = all;
        if (st == ZINC_OK) st = init_unused_check(e, &set, path);
    }
    if (st == ZINC_OK && e->z.dp_rank == 0) ZINC_INFO("initialized %d parameters from %s", e->z.n_params, path);
    free(buf);
    free(full);
    st_set_close(&set);
    return st;
}
