/* tp.c - tensor-parallel mappings and the column- and row-parallel linears
 * (zinc/tp.h), on the op table and the TP group.
 */
#include "zinc/tp.h"

static int tp_on(const zinc_tp *t) { return t->group && t->size > 1; }

zinc_status zinc_tp_all_reduce(const zinc_tp *t, void *x, size_t n)
{
    if (!tp_on(t) || n == 0) return ZINC_OK;
    return zinc_comm_all_reduce(t->group, x, x, n, t->ops->act, ZINC_REDOP_SUM, NULL);
}

zinc_status zinc_tp_gather_rows(const zinc_tp *t, void *out, const void *in, size_t rows,
                                size_t width)
{
    size_t n = rows * width;
    if (!tp_on(t)) {
        if (n) t->ops->copy(out, in, n * zinc_dtype_size(t->ops->act));
        return ZINC_OK;
    }
    return zinc_comm_all_gather(t->group, in, out, n, t->ops->act, NULL);
}

zinc_status zinc_tp_reduce_scatter_rows(const zinc_tp *t, void *out, const void *in, size_t rows,
                                        size_t width)
{
    size_t n = rows * width;
    if (!tp_on(t)) {
        if (n) t->ops->copy(out, in, n * zinc_dtype_size(t->ops->act));
        return ZINC_OK;
    }
    return zinc_comm_reduce_scatter(t->group, in, out, n, t->ops->act, ZINC_REDOP_SUM, NULL);
}

static int sp_on(const zinc_tp *t) { return tp_on(t) && t->sequence_parallel; }

const void *zinc_tp_region_enter(const zinc_tp *t, void *full, const void *x, int N, int width,
                                 zinc_status *st)
{
    *st = ZINC_OK;
    if (!sp_on(t)) return x;
    *st = zinc_tp_gather_rows(t, full, x, (size_t)(N / t->size), (size_t)width);
    return *st == ZINC_OK ? full : NULL;
}

zinc_status zinc_tp_region_leave(const zinc_tp *t, void *y, void *part, int N, int width)
{
    const size_t n = (size_t)N * width;
    if (sp_on(t)) return zinc_tp_reduce_scatter_rows(t, y, part, (size_t)(N / t->size), (size_t)width);
    zinc_status st = zinc_tp_all_reduce(t, part, n);
    if (st == ZINC_OK && y != part && n) t->ops->copy(y, part, n * zinc_dtype_size(t->ops->act));
    return st;
}

zinc_status zinc_tp_all_reduce_f32(const zinc_tp *t, float *x, size_t n)
{
    if (!tp_on(t) || n == 0) return ZINC_OK;
    return zinc_comm_all_reduce(t->group, x, x, n, ZINC_DTYPE_F32, ZINC_REDOP_SUM, NULL);
}

/* The buffer a partial sum is formed in: part with SP, else the output. */
static void *part_of(const zinc_tp *t, void *y, void *part) { return sp_on(t) ? part : y; }

/* The device's linear on weights stored (in, out) (tw 0) or (out, in) (tw 1). */
static void lin_fwd(const zinc_tp *t, int tw, void *y, const void *x, const float *w, const float *b, int N, int C,
                    int OC)
{
    (tw ? t->ops->linear_t_forward : t->ops->linear_forward)(y, x, w, b, N, C, OC);
}

static void lin_bwd(const zinc_tp *t, int tw, void *dx, float *dw, float *db, const void *dy, const void *x,
                    const float *w, int N, int C, int OC)
{
    (tw ? t->ops->linear_t_backward : t->ops->linear_backward)(dx, dw, db, dy, x, w, N, C, OC);
}

static zinc_status column_bwd(const zinc_tp *t, int tw, void *dx, void *part, float *dw, float *db, const void *dy,
                              const void *x, const float *w, int N, int C, int OCl)
{
    void *p = part_of(t, dx, part);
    t->ops->zero(p, (size_t)N * C * zinc_dtype_size(t->ops->act));
    lin_bwd(t, tw, p, dw, db, dy, x, w, N, C, OCl);
    return zinc_tp_region_leave(t, dx, p, N, C);
}

static zinc_status row_fwd(const zinc_tp *t, int tw, void *y, void *part, const void *x, const float *w,
                           const float *b, int N, int Cl, int OC)
{
    void *p = part_of(t, y, part);
    lin_fwd(t, tw, p, x, w, t->rank == 0 ? b : NULL, N, Cl, OC);
    return zinc_tp_region_leave(t, y, p, N, OC);
}

void zinc_tp_column_forward(const zinc_tp *t, void *y, const void *x, const float *w,
                            const float *b, int N, int C, int OCl)
{
    lin_fwd(t, 0, y, x, w, b, N, C, OCl);
}

void zinc_tp_column_t_forward(const zinc_tp *t, void *y, const void *x, const float *w, const float *b, int N,
                              int C, int OCl)
{
    lin_fwd(t, 1, y, x, w, b, N, C, OCl);
}

zinc_status zinc_tp_column_backward(const zinc_tp *t, void *dx, void *part, float *dw, float *db,
                                    const void *dy, const void *x, const float *w, int N, int C,
                                    int OCl)
{
    return column_bwd(t, 0, dx, part, dw, db, dy, x, w, N, C, OCl);
}

zinc_status zinc_tp_column_t_backward(const zinc_tp *t, void *dx, void *part, float *dw, float *db, const void *dy,
                                      const void *x, const float *w, int N, int C, int OCl)
{
    return column_bwd(t, 1, dx, part, dw, db, dy, x, w, N, C, OCl);
}

zinc_status zinc_tp_row_forward(const zinc_tp *t, void *y, void *part, const void *x,
                                const float *w, const float *b, int N, int Cl, int OC)
{
    return row_fwd(t, 0, y, part, x, w, b, N, Cl, OC);
}

zinc_status zinc_tp_row_t_forward(const zinc_tp *t, void *y, void *part, const void *x, const float *w,
                                  const float *b, int N, int Cl, int OC)
{
    return row_fwd(t, 1, y, part, x, w, b, N, Cl, OC);
}

void zinc_tp_row_backward(const zinc_tp *t, void *dx, float *dw, float *db, const void *dy,
                          const void *x, const float *w, int N, int Cl, int OC)
{
    lin_bwd(t, 0, dx, dw, db, dy, x, w, N, Cl, OC);
}

void zinc_tp_row_t_backward(const zinc_tp *t, void *dx, float *dw, float *db, const void *dy, const void *x,
                            const float *w, int N, int Cl, int OC)
{
    lin_bwd(t, 1, dx, dw, db, dy, x, w, N, Cl, OC);
}

zinc_status zinc_tp_embedding_forward(const zinc_tp *t, void *out, void *part,
                                      const int32_t *tokens, const int32_t *pos, const float *wte,
                                      const float *wpe, int B, int T, int C, int Vl)
{
    void *p = part_of(t, out, part);
    t->ops->embedding_forward(p, tokens, pos, wte, t->rank == 0 ? wpe : NULL, B, T, C, t->rank * Vl,
                              Vl);
    return zinc_tp_region_leave(t, out, p, B * T, C);
}

zinc_status zinc_tp_embedding_backward(const zinc_tp *t, float *dwte, float *dwpe,
                                       const void *dout, void *full, const int32_t *tokens,
                                       const int32_t *pos, int B, int T, int C, int Vl)
{
    zinc_status st;
    if (!dwte && !dwpe) return ZINC_OK; /* frozen tables (on every TP rank alike: no gather) */
    const void *d = zinc_tp_region_enter(t, full, dout, B * T, C, &st);
    if (st != ZINC_OK) return st;
    t->ops->embedding_backward(dwte, dwpe, d, tokens, pos, B, T, C, t->rank * Vl, Vl);
    return ZINC_OK;
}

zinc_status zinc_tp_softmax_xent(const zinc_tp *t, float *losses, void *logits,
                                 const int32_t *targets, float dloss, float *stats, int N, int Vl)
{
    if (!tp_on(t)) {
        t->ops->softmax_xent(losses, logits, targets, dloss, N, Vl);
        return ZINC_OK;
    }
    float *rowmax = stats, *sums = stats + N;
    const int v0 = t->rank * Vl;
    zinc_status st;
    t->ops->xent_vp_max(rowmax, logits, N, Vl);
    st = zinc_comm_all_reduce(t->group, rowmax, rowmax, (size_t)N, ZINC_DTYPE_F32, ZINC_REDOP_MAX,
                              NULL);
    if (st != ZINC_OK) return st;
    t->ops->xent_vp_sums(sums, logits, targets, rowmax, N, Vl, v0);
    st = zinc_comm_all_reduce(t->group, sums, sums, 2 * (size_t)N, ZINC_DTYPE_F32, ZINC_REDOP_SUM,
                              NULL);
    if (st != ZINC_OK) return st;
    t->ops->xent_vp_finish(losses, logits, targets, rowmax, sums, dloss, N, Vl, v0);
    return ZINC_OK;
}

uint64_t zinc_tp_bytes(const zinc_tp *t) { return tp_on(t) ? zinc_comm_bytes(t->group) : 0; }
