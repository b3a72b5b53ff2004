/* box.c - boxes over a tensor's block view (zinc/ckpt.h) and the logical runs they stand
 * for. Pure functions, no I/O: the writer, rank 0's coverage check and the reader turn
 * every (box, offset, n) into the flat runs of the tensor it covers and work on those.
 *
 * A box over the view V (nd dimensions, strides from the right) is, in its own row-major
 * order, a sequence of runs that are contiguous in the tensor: let k be the innermost
 * dimension the box does not span whole; every run is count[k] * stride[k] elements long
 * and there is one per index of dimensions 0..k-1. Consecutive runs are never adjacent in
 * the tensor (that would need count[k] == V[k]), so these runs are maximal; a box spanning
 * every dimension whole is one run. The box's row-major order ascends in the tensor's flat
 * order (the view is a reshape of the tensor), which is what lets a load hand pieces to io
 * in ascending order whatever boxes the checkpoint was saved in.
 */
#include <stdio.h>
#include <string.h>

#include "ckpt_int.h"

int ckpt_box_is_whole(const int64_t *count)
{
    for (int d = 0; d < ZINC_CKPT_BOX_DIMS; d++)
        if (count[d] != 0) return 0;
    return 1;
}

int ckpt_view_check(const zinc_ckpt_tensor *t, char *why, size_t cap)
{
    if (t->tp_blocks < 0) {
        snprintf(why, cap, "tp_blocks %d is negative", t->tp_blocks);
        return -1;
    }
    if (t->tp_blocks <= 1) return 0;
    if (t->tp_dim < 0 || t->tp_dim >= t->ndim) {
        snprintf(why, cap, "tp_blocks %d needs tp_dim in 0..%d, not %d", t->tp_blocks, t->ndim - 1, t->tp_dim);
        return -1;
    }
    if (t->shape[t->tp_dim] % t->tp_blocks != 0) {
        snprintf(why, cap, "tp_blocks %d does not divide dimension %d (%lld)", t->tp_blocks, t->tp_dim,
                 (long long)t->shape[t->tp_dim]);
        return -1;
    }
    return 0;
}

int ckpt_view(const zinc_ckpt_tensor *t, int64_t *view)
{
    int nd = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (d == t->tp_dim && t->tp_blocks > 1) {
            view[nd++] = t->tp_blocks;
            view[nd++] = t->shape[d] / t->tp_blocks;
        } else {
            view[nd++] = t->shape[d];
        }
    }
    for (int d = nd; d < ZINC_CKPT_BOX_DIMS; d++) view[d] = 0;
    return nd;
}

void ckpt_box_str(const int64_t *start, const int64_t *count, int nd, char *buf, size_t cap)
{
    int k = snprintf(buf, cap, "[");
    for (int d = 0; d < nd && k > 0 && (size_t)k < cap; d++)
        k += snprintf(buf + k, cap - (size_t)k, "%s%lld:%lld", d ? ", " : "", (long long)start[d],
                      (long long)(start[d] + count[d]));
    if (k > 0 && (size_t)k < cap) snprintf(buf + k, cap - (size_t)k, "]");
}

int64_t ckpt_box_volume(const zinc_ckpt_tensor *t, const int64_t *count)
{
    if (ckpt_box_is_whole(count)) return ckpt_tensor_numel(t);
    int64_t view[ZINC_CKPT_BOX_DIMS], v = 1;
    int nd = ckpt_view(t, view);
    for (int d = 0; d < nd; d++) v *= count[d]; /* <= the view's product: checked boxes only */
    return v;
}

int ckpt_box_check(const zinc_ckpt_tensor *t, const int64_t *start, const int64_t *count, int64_t off, int64_t n,
                   char *why, size_t cap)
{
    int64_t view[ZINC_CKPT_BOX_DIMS];
    int nd = ckpt_view(t, view);
    char vs[160], bs[200];
    if (!ckpt_box_is_whole(count)) {
        int bad = 0;
        for (int d = 0; d < ZINC_CKPT_BOX_DIMS; d++) {
            int64_t vd = d < nd ? view[d] : 0;
            /* start <= vd and count <= vd - start: no overflow in start + count */
            if (start[d] < 0 || count[d] < 0 || start[d] > vd || count[d] > vd - start[d] ||
                (d >= nd && (start[d] || count[d])))
                bad = 1;
        }
        if (bad) {
            int64_t zero[ZINC_CKPT_BOX_DIMS] = {0};
            ckpt_box_str(zero, view, nd, vs, sizeof vs);
            ckpt_box_str(start, count, ZINC_CKPT_BOX_DIMS, bs, sizeof bs);
            snprintf(why, cap, "box %s is outside the block view %s", bs, vs);
            return -1;
        }
    } else {
        for (int d = 0; d < ZINC_CKPT_BOX_DIMS; d++)
            if (start[d] != 0) {
                ckpt_box_str(start, count, ZINC_CKPT_BOX_DIMS, bs, sizeof bs);
                snprintf(why, cap, "box %s has a start but no counts (all counts 0 is the whole tensor)", bs);
                return -1;
            }
    }
    int64_t vol = ckpt_box_volume(t, count);
    if (off < 0 || n < 0 || off > vol || n > vol - off) {
        snprintf(why, cap, "elements [%lld, %lld) are outside its box of %lld elements", (long long)off,
                 (long long)(off + n), (long long)vol);
        return -1;
    }
    return 0;
}

int ckpt_box_runs(const zinc_ckpt_tensor *t, const int64_t *start, const int64_t *count, int64_t off, int64_t n,
                  ckpt_run_fn fn, void *u)
{
    if (n <= 0) return 0;
    if (ckpt_box_is_whole(count)) return fn(u, off, off, n);
    int64_t view[ZINC_CKPT_BOX_DIMS], stride[ZINC_CKPT_BOX_DIMS], idx[ZINC_CKPT_BOX_DIMS];
    int nd = ckpt_view(t, view);
    int64_t s = 1;
    for (int d = nd - 1; d >= 0; d--) {
        stride[d] = s;
        s *= view[d];
    }
    int k = nd - 1; /* the innermost dimension the box does not span whole */
    while (k >= 0 && start[k] == 0 && count[k] == view[k]) k--;
    if (k < 0) return fn(u, off, off, n);
    for (int d = 0; d <= k; d++)
        if (count[d] == 0) return 0; /* an empty box (n is 0 then, when checked) */
    const int64_t R = count[k] * stride[k];
    int64_t rem = off / R, in = off % R;
    for (int d = k - 1; d >= 0; d--) {
        idx[d] = rem % count[d];
        rem /= count[d];
    }
    for (int64_t pos = off, end = off + n; pos < end;) {
        int64_t base = start[k] * stride[k];
        for (int d = 0; d < k; d++) base += (start[d] + idx[d]) * stride[d];
        int64_t len = R - in < end - pos ? R - in : end - pos;
        int rc = fn(u, pos, base + in, len);
        if (rc) return rc;
        pos += len;
        in = 0;
        for (int d = k - 1; d >= 0; d--) {
            if (++idx[d] < count[d]) break;
            idx[d] = 0;
        }
    }
    return 0;
}

static int first_run(void *u, int64_t pos, int64_t logical, int64_t n)
{
    (void)pos;
    (void)n;
    *(int64_t *)u = logical;
    return 1;
}

int64_t ckpt_box_logical(const zinc_ckpt_tensor *t, const int64_t *start, const int64_t *count, int64_t pos)
{
    int64_t at = -1;
    ckpt_box_runs(t, start, count, pos, 1, first_run, &at);
    return at;
}

zinc_status zinc_ckpt_box_tp(const zinc_ckpt_tensor *t, int tp, int tp_rank, int64_t *start, int64_t *count)
{
    char why[256];
    if (!t || !start || !count) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_ckpt_box_tp: NULL argument");
    memset(start, 0, ZINC_CKPT_BOX_DIMS * sizeof *start);
    memset(count, 0, ZINC_CKPT_BOX_DIMS * sizeof *count);
    if (tp <= 1 || t->tp_dim < 0) return ZINC_OK;
    if (t->ndim < 0 || t->ndim > ZINC_MAX_DIMS || t->tp_dim >= t->ndim)
        return zinc_error(ZINC_ERR_INVALID_ARG, "tensor %s: tp_dim %d outside its %d dimensions", t->name, t->tp_dim,
                          t->ndim);
    if (ckpt_view_check(t, why, sizeof why) != 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "tensor %s: %s", t->name, why);
    if (tp_rank < 0 || tp_rank >= tp)
        return zinc_error(ZINC_ERR_INVALID_ARG, "tensor %s: TP rank %d outside 0..%d", t->name, tp_rank, tp - 1);
    int64_t view[ZINC_CKPT_BOX_DIMS];
    int nd = ckpt_view(t, view);
    int split = t->tp_dim + (t->tp_blocks > 1); /* the sub-block dimension of the view */
    if (view[split] % tp != 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "tensor %s: TP size %d does not divide dimension %d's %s%lld", t->name,
                          tp, t->tp_dim, t->tp_blocks > 1 ? "sub-blocks of " : "", (long long)view[split]);
    for (int d = 0; d < nd; d++) count[d] = view[d];
    count[split] = view[split] / tp;
    start[split] = (int64_t)tp_rank * count[split];
    return ZINC_OK;
}

int64_t ckpt_box_n_runs(const zinc_ckpt_tensor *t, const int64_t *start, const int64_t *count, int64_t off, int64_t n)
{
    if (n <= 0) return 0;
    if (ckpt_box_is_whole(count)) return 1;
    int64_t view[ZINC_CKPT_BOX_DIMS], s = 1, stride_k = 1;
    int nd = ckpt_view(t, view);
    int k = nd - 1;
    for (; k >= 0 && start[k] == 0 && count[k] == view[k]; k--) s *= view[k];
    if (k < 0) return 1;
    stride_k = s;
    int64_t R = count[k] * stride_k;
    if (R == 0) return 0;
    return (off + n - 1) / R - off / R + 1;
}
