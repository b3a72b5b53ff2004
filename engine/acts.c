/* acts.c - where activations live: the layout of a (micro-batch, chunk)'s slab, the
 * slabs in flight, and activation checkpointing (DeepSpeed's activation_checkpointing
 * keys and the pipeline's activation_checkpoint_interval).
 *
 * Without checkpointing a slab holds every layer's saved activations and every output
 * inside the chunk. With it, the layers between the model's first and last (the
 * embedding and the loss head stay as they are) form groups of consecutive layers
 * inside each chunk (every layer its own group, or number_checkpoints groups, or
 * groups of activation_checkpoint_interval layers). A group's layers keep their saved
 * activations and inner outputs in one recompute buffer (rc) that every group and
 * micro-batch shares; only the group's input, the output of the layer before it (a
 * "checkpoint"), stays in the slab. Backward, on reaching a group's last layer, runs
 * the group's forward again from that input into rc, then its backward, so the
 * activations one micro-batch holds at once are its checkpoints plus one group's.
 * The recompute repeats the forward bit for bit (same input, same dropout stream),
 * so the gradients are those of the run without checkpointing.
 *
 * A checkpoint the chunk reads later can be kept apart (OUT_CK): in host memory
 * (cpu_checkpointing: copied down after its forward, back up before its group's
 * recompute), and/or, with TP and no sequence parallelism, split over the TP group
 * (partition_activations: each rank keeps 1/TP of its elements, all-gathered back
 * before the recompute, as Megatron partitions its checkpoints).
 */
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"
#include "zinc/log.h"

#define ACT_ALIGN(n) (((n) + 63) / 64 * 64) /* bytes: 64-byte aligned carving */

/* ---------------------------------------------------------------- the plan */

static void ac_tables_free(engine_ac *a)
{
    free(a->first);
    free(a->last);
    free(a->gno);
    free(a->rc_act);
    free(a->rc_out);
    free(a->ck_off);
    a->first = a->last = a->gno = NULL;
    a->rc_act = a->rc_out = a->ck_off = NULL;
}

void engine_layout_free(zinc_engine *e)
{
    free(e->act_off);
    free(e->out_off);
    free(e->out_kind);
    e->act_off = e->out_off = NULL;
    e->out_kind = NULL;
    ac_tables_free(&e->ac);
}

/* The groups: every layer but the model's first and last, in groups of g consecutive
 * layers counted from layer 1, each cut at the chunk boundaries. */
static zinc_status ac_plan(zinc_engine *e)
{
    engine_ac *a = &e->ac;
    const zinc_config *c = &e->cfg;
    const int L = e->n_layers, J = e->pp.stages * e->pp.virt, inner = L > 2 ? L - 2 : 0;
    a->on = c->ac.enabled;
    a->cpu = a->on && c->ac.cpu_checkpointing;
    a->part = a->on && c->ac.partition_activations && e->tp.size > 1 && !e->tp.sequence_parallel;
    a->n_groups = 0;
    ac_tables_free(a);
    const size_t n = (size_t)(L ? L : 1);
    a->first = malloc(n * sizeof *a->first);
    a->last = malloc(n * sizeof *a->last);
    a->gno = malloc(n * sizeof *a->gno);
    a->rc_act = calloc(n, sizeof *a->rc_act);
    a->rc_out = calloc(n, sizeof *a->rc_out);
    a->ck_off = calloc(n, sizeof *a->ck_off);
    if (!a->first || !a->last || !a->gno || !a->rc_act || !a->rc_out || !a->ck_off)
        return zinc_error(ZINC_ERR_NOMEM, "layer table");
    for (int i = 0; i < L; i++) a->first[i] = a->last[i] = a->gno[i] = -1;
    if (!a->on) return ZINC_OK;
    if (c->ac.number_checkpoints > inner)
        return zinc_error(ZINC_ERR_CONFIG, "activation_checkpointing.number_checkpoints %lld: the model has %d "
                          "layers to checkpoint (all but its first and last of %d)",
                          (long long)c->ac.number_checkpoints, inner, L);
    int g = 1;
    if (c->ac.interval > 0) g = (int)c->ac.interval;
    else if (c->ac.number_checkpoints > 0) g = (int)((inner + c->ac.number_checkpoints - 1) / c->ac.number_checkpoints);
    for (int j = 0; j < J; j++)
        for (int i = e->bounds[j] > 1 ? e->bounds[j] : 1; i < e->bounds[j + 1] && i < L - 1;) {
            int end = 1 + ((i - 1) / g + 1) * g; /* the first layer of the next group */
            if (end > e->bounds[j + 1]) end = e->bounds[j + 1];
            if (end > L - 1) end = L - 1;
            for (int k = i; k < end; k++) {
                a->first[k] = i;
                a->last[k] = end - 1;
                a->gno[k] = a->n_groups;
            }
            a->n_groups++;
            i = end;
        }
    return ZINC_OK;
}

static int ckpt(const engine_ac *a, int i) { return a->first[i] >= 0; }

zinc_status engine_act_layout(zinc_engine *e, size_t *slab, size_t *dbuf, size_t *scratch, size_t *io)
{
    const zinc_dtype act = engine_act_dtype(e);
    const size_t rows = (size_t)zinc_tp_rows(&e->tp, e->B * e->T), asz = zinc_dtype_size(act);
    const int L = e->n_layers, J = e->pp.stages * e->pp.virt;
    engine_ac *a = &e->ac;
    size_t max_width = 0;
    *slab = *scratch = *io = 0;
    free(e->act_off);
    free(e->out_off);
    free(e->out_kind);
    e->act_off = calloc((size_t)(L ? L : 1), sizeof *e->act_off);
    e->out_off = calloc((size_t)(L ? L : 1), sizeof *e->out_off);
    e->out_kind = calloc((size_t)(L ? L : 1), 1);
    if (!e->act_off || !e->out_off || !e->out_kind) return zinc_error(ZINC_ERR_NOMEM, "layer table");
    zinc_status st = ac_plan(e);
    if (st != ZINC_OK) return st;
    a->rc_bytes = a->host_bytes = a->io_bytes = 0;
    for (int j = 0; j < J; j++) {
        size_t off = 0, hoff = 0, roff = 0;
        for (int i = e->bounds[j]; i < e->bounds[j + 1]; i++) {
            zinc_layer *l = &e->layers[i];
            const zinc_layer_ops *lo = l->def->ops;
            const size_t ob = rows * (size_t)l->n_out * asz; /* its output's bytes */
            const int chunk_last = i + 1 == e->bounds[j + 1];
            l->act_bytes = lo->act_bytes ? lo->act_bytes(l, e->B, e->T, act) : 0;
            e->out_off[i] = SIZE_MAX;
            e->out_kind[i] = chunk_last ? OUT_EXEC : OUT_SLAB;
            if (ckpt(a, i)) {
                if (i == a->first[i]) roff = 0;
                a->rc_act[i] = roff;
                roff += ACT_ALIGN(l->act_bytes);
                a->rc_out[i] = roff; /* inner: its output; the group's last: the spare */
                roff += ACT_ALIGN(ob);
                if (e->held[i] && roff > a->rc_bytes) a->rc_bytes = roff; /* this stage's chunks */
                if (i < a->last[i]) e->out_kind[i] = OUT_RC;
                else if (!chunk_last && (a->cpu || a->part)) e->out_kind[i] = OUT_CK;
                if (e->held[i] && ob > a->io_bytes) a->io_bytes = ob;
            } else {
                e->act_off[i] = off;
                off += ACT_ALIGN(l->act_bytes);
            }
            const size_t kept = a->part ? ob / (size_t)e->tp.size : ob; /* an OUT_CK output's share */
            if (e->out_kind[i] == OUT_SLAB || (e->out_kind[i] == OUT_CK && !a->cpu)) {
                e->out_off[i] = off;
                off += ACT_ALIGN(e->out_kind[i] == OUT_CK ? kept : ob);
            } else if (e->out_kind[i] == OUT_CK) {
                a->ck_off[i] = hoff;
                hoff += ACT_ALIGN(kept);
            }
            if (chunk_last && i + 1 < L && rows * (size_t)l->n_out > *io) *io = rows * (size_t)l->n_out;
            if (e->held[i]) {
                if ((size_t)l->n_in > max_width) max_width = (size_t)l->n_in;
                size_t sc = lo->scratch_bytes ? lo->scratch_bytes(l, e->B, e->T, act) : 0;
                if (sc > *scratch) *scratch = sc;
            }
        }
        if (e->held[e->bounds[j]] && off > *slab) *slab = off;
        if (e->held[e->bounds[j]] && hoff > a->host_bytes) a->host_bytes = hoff;
    }
    if (a->part)
        for (int i = 0; i < L; i++)
            if (e->out_kind[i] == OUT_CK && rows * (size_t)e->layers[i].n_out % (size_t)e->tp.size)
                return zinc_error(ZINC_ERR_CONFIG, "activation_checkpointing.partition_activations: layer %d's "
                                  "output of %zu elements does not split over %d TP ranks", i,
                                  rows * (size_t)e->layers[i].n_out, e->tp.size);
    *dbuf = rows * max_width * asz;
    return ZINC_OK;
}

void engine_ac_bytes(const zinc_engine *e, size_t *dev, size_t *host)
{
    const engine_ac *a = &e->ac;
    *dev = *host = 0;
    if (!a->on) return;
    *dev = a->rc_bytes;
    if (a->cpu || a->part) *dev += 3 * a->io_bytes + (a->part ? a->io_bytes / (size_t)e->tp.size : 0);
    *host = a->host_bytes;
}

/* ---------------------------------------------------------------- slabs */

static zinc_status slab_new(zinc_engine *e, int s)
{
    e->slabs[s] = e->dev->alloc(e->slab_bytes ? e->slab_bytes : 1);
    if (!e->slabs[s] && s == 0) /* at create: the one micro-batch */
        return zinc_error(ZINC_ERR_NOMEM, "activations of micro-batch %d x %d tokens on %s: %zu bytes saved: %s", e->B,
                          e->T, e->dev->name, e->slab_bytes, zinc_last_error());
    if (!e->slabs[s])
        return zinc_error(ZINC_ERR_NOMEM, "activations of %d micro-batches in flight on %s (%zu bytes each): %s",
                          s + 1, e->dev->name, e->slab_bytes, zinc_last_error());
    if (e->ac.cpu) {
        e->ac.hslabs[s] = e->dev->host_alloc(e->ac.host_bytes ? e->ac.host_bytes : 1);
        if (!e->ac.hslabs[s]) {
            e->dev->free(e->slabs[s]);
            e->slabs[s] = NULL;
            return zinc_error(ZINC_ERR_NOMEM, "activation_checkpointing.cpu_checkpointing: %d micro-batches' "
                              "checkpoints in host memory (%zu bytes each)", s + 1, e->ac.host_bytes);
        }
    }
    return ZINC_OK;
}

static engine_slab slab_at(const zinc_engine *e, int s)
{
    return (engine_slab){.dev = e->slabs[s], .host = e->ac.hslabs ? e->ac.hslabs[s] : NULL};
}

engine_slab engine_slab0(const zinc_engine *e) { return slab_at(e, 0); }

zinc_status engine_slab_take(zinc_engine *e, int k, engine_slab *out)
{
    if (e->slab_of[k] < 0) {
        int s;
        if (e->n_free > 0) {
            s = e->slab_free[--e->n_free];
        } else {
            s = e->n_slabs;
            zinc_status st = slab_new(e, s);
            if (st != ZINC_OK) return st;
            e->n_slabs++;
        }
        e->slab_of[k] = s;
    }
    *out = slab_at(e, e->slab_of[k]);
    return ZINC_OK;
}

void engine_slab_give(zinc_engine *e, int k)
{
    if (e->slab_of[k] < 0) return;
    e->slab_free[e->n_free++] = e->slab_of[k];
    e->slab_of[k] = -1;
}

zinc_status engine_acts_alloc(zinc_engine *e)
{
    engine_ac *a = &e->ac;
    const size_t nk = (size_t)e->pp.micro * e->pp.virt;
    e->slab_of = malloc(nk * sizeof *e->slab_of);
    e->slab_free = malloc(nk * sizeof *e->slab_free);
    e->slabs = calloc(nk, sizeof *e->slabs);
    if (a->cpu) a->hslabs = calloc(nk, sizeof *a->hslabs);
    if (!e->slab_of || !e->slab_free || !e->slabs || (a->cpu && !a->hslabs))
        return zinc_error(ZINC_ERR_NOMEM, "activation table");
    for (size_t k = 0; k < nk; k++) e->slab_of[k] = -1;
    a->ckin_of = -1;
    if (a->on) {
        a->rc = e->dev->alloc(a->rc_bytes ? a->rc_bytes : 1);
        if (!a->rc)
            return zinc_error(ZINC_ERR_NOMEM, "activation checkpointing: the recompute buffer of %zu bytes on %s",
                              a->rc_bytes, e->dev->name);
    }
    if (a->cpu || a->part) {
        const size_t io = a->io_bytes ? a->io_bytes : 1;
        a->ckbuf[0] = e->dev->alloc(io);
        a->ckbuf[1] = e->dev->alloc(io);
        a->ckin = e->dev->alloc(io);
        a->ckpart = a->part ? e->dev->alloc(io / (size_t)e->tp.size + 1) : NULL;
        if (!a->ckbuf[0] || !a->ckbuf[1] || !a->ckin || (a->part && !a->ckpart))
            return zinc_error(ZINC_ERR_NOMEM, "activation checkpointing: 3 buffers of %zu bytes on %s", io,
                              e->dev->name);
    }
    /* one slab now: a micro-batch that cannot fit fails here, not in the first step */
    zinc_status st = slab_new(e, 0);
    if (st != ZINC_OK) return st;
    e->n_slabs = 1;
    e->slab_free[0] = 0;
    e->n_free = 1;
    return ZINC_OK;
}

void engine_acts_free(zinc_engine *e)
{
    engine_ac *a = &e->ac;
    for (int i = 0; e->slabs && i < e->n_slabs; i++) {
        e->dev->free(e->slabs[i]);
        if (a->hslabs) e->dev->host_free(a->hslabs[i]);
    }
    free(e->slabs);
    free(e->slab_of);
    free(e->slab_free);
    free(a->hslabs);
    e->slabs = NULL;
    a->hslabs = NULL;
    e->slab_of = e->slab_free = NULL;
    e->n_slabs = e->n_free = 0;
    e->dev->free(a->rc);
    e->dev->free(a->ckbuf[0]);
    e->dev->free(a->ckbuf[1]);
    e->dev->free(a->ckin);
    e->dev->free(a->ckpart);
    a->rc = a->ckbuf[0] = a->ckbuf[1] = a->ckin = a->ckpart = NULL;
}

/* ---------------------------------------------------------------- forward and backward */

void *engine_act_saved(const zinc_engine *e, engine_slab s, int i)
{
    return ckpt(&e->ac, i) ? (char *)e->ac.rc + e->ac.rc_act[i] : s.dev + e->act_off[i];
}

void *engine_act_out(const zinc_engine *e, engine_slab s, int i, void *out)
{
    switch (e->out_kind[i]) {
    case OUT_SLAB: return s.dev + e->out_off[i];
    case OUT_RC: return (char *)e->ac.rc + e->ac.rc_out[i];
    case OUT_CK: return e->ac.ckbuf[e->ac.gno[i] & 1];
    default: return out;
    }
}

void *engine_act_recompute_out(const zinc_engine *e, int i) { return (char *)e->ac.rc + e->ac.rc_out[i]; }

/* Layer i's output: its bytes, and with partitioning the share and offset this TP rank keeps. */
static size_t out_bytes(const zinc_engine *e, int i)
{
    return (size_t)zinc_tp_rows(&e->tp, e->B * e->T) * (size_t)e->layers[i].n_out *
           zinc_dtype_size(engine_act_dtype(e));
}

zinc_status engine_act_keep(zinc_engine *e, engine_slab s, int i, const void *y)
{
    if (e->out_kind[i] != OUT_CK) return ZINC_OK;
    const engine_ac *a = &e->ac;
    size_t n = out_bytes(e, i), lo = 0;
    if (a->part) {
        n /= (size_t)e->tp.size;
        lo = n * (size_t)e->tp.rank;
    }
    void *dst = a->cpu ? (void *)(s.host + a->ck_off[i]) : (void *)(s.dev + e->out_off[i]);
    e->dev->copy(dst, (const char *)y + lo, n);
    if (e->ac.ckin_of == i) e->ac.ckin_of = -1;
    return ZINC_OK;
}

/* ckin = layer i's kept-apart output. */
static zinc_status ck_load(zinc_engine *e, engine_slab s, int i)
{
    engine_ac *a = &e->ac;
    if (a->ckin_of == i) return ZINC_OK;
    a->ckin_of = -1;
    const size_t n = out_bytes(e, i), esz = zinc_dtype_size(engine_act_dtype(e));
    if (!a->part) {
        e->dev->copy(a->ckin, s.host + a->ck_off[i], n);
    } else {
        const size_t share = n / (size_t)e->tp.size;
        const void *mine = s.dev + e->out_off[i];
        if (a->cpu) {
            e->dev->copy(a->ckpart, s.host + a->ck_off[i], share);
            mine = a->ckpart;
        }
        zinc_status st = zinc_tp_gather_rows(&e->tp, a->ckin, mine, share / esz, 1);
        if (st != ZINC_OK) return st;
    }
    a->ckin_of = i;
    return ZINC_OK;
}

const void *engine_act_input(zinc_engine *e, engine_slab s, int i, int lo, const void *in, zinc_status *st)
{
    *st = ZINC_OK;
    if (i == lo) return in;
    const int p = i - 1;
    switch (e->out_kind[p]) {
    case OUT_SLAB: return s.dev + e->out_off[p];
    case OUT_RC: return (char *)e->ac.rc + e->ac.rc_out[p];
    case OUT_CK: *st = ck_load(e, s, p); return *st == ZINC_OK ? e->ac.ckin : NULL;
    default:
        *st = zinc_error(ZINC_ERR_INTERNAL, "layer %d's input is no output inside its chunk", i);
        return NULL;
    }
}
