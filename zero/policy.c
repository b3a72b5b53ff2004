/* policy.c - when ZeRO-3 gathers and releases parameters: the hooks the
 * engine calls around each layer (zinc/zero.h).
 *
 * Release: after position pos, a unit's working params are kept if its next
 * use comes before stage3_max_reuse_distance elements of other layers'
 * params have been used in between (DeepSpeed's rule: 0 releases after
 * every use).
 *
 * Prefetch, as DeepSpeed's parameter coordinator does it: walking the
 * layers from the next position up to (not including) the end of this
 * micro-batch in the order they will run, starts gathering every sharded
 * unit whose params are not live, while fewer than
 * stage3_prefetch_bucket_size elements are being fetched ahead (gathers in
 * flight count; the unit that reaches the bucket still goes, since the check
 * comes before it) and live plus fetched elements stay within
 * stage3_max_live_parameters (the walk stops at the first unit that does not
 * fit, so units arrive in the order of use). 0 turns prefetch off.
 *
 * With pipeline stages the positions are the stage's own layers' (a prefetch for
 * another stage's layer would never be consumed, and a gather left in flight
 * past the optimizer step would bring back stale parameters).
 *
 * Fetching far ahead matters on ranks that share a node: collectives move
 * their bytes only while every rank is inside MPI, so each gather waited for
 * on its own is a point where the ranks meet; with the default bucket (5e7)
 * a small model's forward gathers everything at its first layer, in one go.
 */
#include "zero_int.h"

/* Layer run at position pos of the micro-batch's touch sequence: forward
 * 0..L-1, then backward L..2L-1 (layer 2L-1-pos). */
static int layer_at(const zero_state *z, int pos)
{
    return pos < z->n_layers ? pos : 2 * z->n_layers - 1 - pos;
}

/* Whether this rank runs the layer (pipeline stages run some): the positions of the
 * others are empty here, even where they touch a unit this rank holds (a tied one). */
static int runs(const zero_state *z, int layer) { return !z->layer_held || z->layer_held[layer]; }

static void maybe_release(zero_state *z, int u, int pos)
{
    if (!zero_unit_releasable(z, u)) return;
    uint64_t dist = 0, max = (uint64_t)z->opt.max_reuse_distance;
    for (int q = pos + 1; q < 2 * z->n_layers && dist < max; q++) {
        if (!runs(z, layer_at(z, q))) continue;
        const zero_layer *l = &z->layers[layer_at(z, q)];
        for (int j = 0; j < l->n_units; j++)
            if (l->units[j] == u) return;
        for (int j = 0; j < l->n_units; j++) dist += z->units[l->units[j]].numel;
    }
    zero_unit_release(z, u);
}

static void release_after(zero_state *z, int layer, int pos)
{
    const zero_layer *l = &z->layers[layer];
    for (int j = 0; j < l->n_units; j++) maybe_release(z, l->units[j], pos);
}

static zinc_status prefetch(zero_state *z, int pos, int end)
{
    const int64_t bucket = z->opt.prefetch_bucket_size;
    if (z->plan.stage != 3 || bucket <= 0) return ZINC_OK;
    uint64_t ahead = 0, max_live = (uint64_t)z->opt.max_live_parameters;
    for (int q = pos; q < end && ahead < (uint64_t)bucket; q++) {
        if (!runs(z, layer_at(z, q))) continue;
        const zero_layer *l = &z->layers[layer_at(z, q)];
        for (int j = 0; j < l->n_units && ahead < (uint64_t)bucket; j++) {
            const zero_unit *u = &z->units[l->units[j]];
            if (!zero_unit_gathers(z, l->units[j]) || u->wp) continue;
            if (u->h_gather || u->pread || u->ready) {
                ahead += u->numel;
                continue;
            }
            if (z->live_elems + z->fetch_elems + u->numel > max_live) return ZINC_OK;
            zinc_status st = zero_unit_prefetch(z, l->units[j]);
            if (st != ZINC_OK) return st;
            ahead += u->numel;
        }
    }
    return ZINC_OK;
}

/* The end of this micro-batch's touch sequence: prefetch never reaches past
 * its last use (forward only: the forward positions). */
static int seq_end(const zero_state *z, int backward) { return backward ? 2 * z->n_layers : z->n_layers; }

zinc_status zero_forward_begin(zero_state *z, int layer, int backward)
{
    const zero_layer *l = &z->layers[layer];
    for (int j = 0; j < l->n_units; j++) {
        zinc_status st = zero_unit_materialize(z, l->units[j]);
        if (st != ZINC_OK) return st;
    }
    return prefetch(z, layer + 1, seq_end(z, backward));
}

void zero_forward_end(zero_state *z, int layer) { release_after(z, layer, layer); }

zinc_status zero_backward_begin(zero_state *z, int layer)
{
    zinc_status st;
    const zero_layer *l = &z->layers[layer];
    for (int j = 0; j < l->n_units; j++) {
        if ((st = zero_unit_materialize(z, l->units[j])) != ZINC_OK) return st;
        if ((st = zero_grad_open(z, l->units[j])) != ZINC_OK) return st;
    }
    return prefetch(z, 2 * z->n_layers - layer, seq_end(z, 1));
}

zinc_status zero_backward_end(zero_state *z, int layer)
{
    const zero_layer *l = &z->layers[layer];
    for (int j = 0; j < l->n_units; j++)
        if (z->units[l->units[j]].first_user == layer) {
            zinc_status st = zero_grad_close(z, l->units[j]);
            if (st != ZINC_OK) return st;
        }
    release_after(z, layer, 2 * z->n_layers - 1 - layer);
    return ZINC_OK;
}

zinc_status zero_recompute_begin(zero_state *z, int layer)
{
    const zero_layer *l = &z->layers[layer];
    for (int j = 0; j < l->n_units; j++) {
        zinc_status st = zero_unit_materialize(z, l->units[j]);
        if (st != ZINC_OK) return st;
    }
    return ZINC_OK;
}

zinc_status zero_backward_done(zero_state *z) { return zero_wait_pending(z, 1); }

void zero_micro_end(zero_state *z)
{
    for (int u = 0; u < z->n_units; u++) {
        zero_unit_release(z, u);
        zero_unit_drop_ready(z, u);
    }
}
