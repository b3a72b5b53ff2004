/* zinc/tp.h - Megatron-style tensor parallelism: the TP group a layer sees
 * and the building blocks that split one layer's work over it.
 *
 * A TP group of size P holds one layer split P ways: a column-parallel
 * linear holds OC/P output columns of its weight, a row-parallel linear C/P
 * input rows, attention NH/P heads. With sequence parallelism (Megatron's
 * SP) the activations between the parallel regions (LayerNorm, residual)
 * hold N/P of the N = B*T token rows on each rank (rank r the rows [r*N/P,
 * (r+1)*N/P) of the (N, C) matrix: every op there is per token), and each
 * region's all-reduce becomes an all-gather on entry and a reduce-scatter on
 * exit, moving the same bytes.
 *
 * Every function here that communicates is *collective* over the TP group
 * (all its ranks call it in the same order with the same sizes); with no
 * group (size 1) nothing moves and each is the single-rank op. Act tensors
 * are in the op table's act dtype (zinc/ops.h); weights fp32.
 */
#ifndef ZINC_TP_H
#define ZINC_TP_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/comm.h"
#include "zinc/ops.h"
#include "zinc/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zinc_tp {
    zinc_comm *group;      /* borrowed; NULL when the TP size is 1 */
    int size, rank;
    int sequence_parallel; /* activations outside the parallel regions split by rows */
    const zinc_ops *ops;   /* the device's op table (borrowed) */
} zinc_tp;

/* The slice of a dimension of n elements that TP rank `rank` of `size`
 * holds: [*lo, *lo + return). n must be a multiple of size. */
static inline int64_t zinc_tp_slice(int64_t n, int size, int rank, int64_t *lo)
{
    int64_t k = n / size;
    if (lo) *lo = k * rank;
    return k;
}

/* ---- mappings (Megatron's copy / reduce / gather / scatter pairs) ---- */

/* x(n) act = sum over the group of x, in place. */
zinc_status zinc_tp_all_reduce(const zinc_tp *t, void *x, size_t n);
/* out(size * rows, width) act = the ranks' in(rows, width) blocks in rank
 * order (SP: entering a parallel region). out and in do not overlap. */
zinc_status zinc_tp_gather_rows(const zinc_tp *t, void *out, const void *in, size_t rows,
                                size_t width);
/* out(rows, width) act = block `rank` of the sum over the group of
 * in(size * rows, width) (SP: leaving a parallel region). */
zinc_status zinc_tp_reduce_scatter_rows(const zinc_tp *t, void *out, const void *in, size_t rows,
                                        size_t width);

/* Rows of an (N, width) activation outside the parallel regions that this
 * rank holds: N / size with sequence parallelism, else N. */
static inline int zinc_tp_rows(const zinc_tp *t, int N)
{
    return t->sequence_parallel && t->size > 1 ? N / t->size : N;
}

/* Entering a parallel region (Megatron's copy / gather-from-SP pair): the
 * whole (N, width) activation from this rank's zinc_tp_rows(N) rows x.
 * With sequence parallelism it all-gathers x into full (N, width) act and
 * returns full; without, it returns x (full unused, may be NULL). NULL with
 * the error recorded in *st on failure. Collective with SP. Its backward is
 * zinc_tp_region_leave of the gradient. */
const void *zinc_tp_region_enter(const zinc_tp *t, void *full, const void *x, int N, int width,
                                 zinc_status *st);
/* Leaving a parallel region (Megatron's reduce / reduce-scatter-to-SP pair):
 * part (N, width) act holds this rank's partial sum; y (zinc_tp_rows(N),
 * width) = this rank's rows of the sum over the group. Without sequence
 * parallelism part is all-reduced in place and copied to y when y != part;
 * with it part is reduce-scattered into y (part != y). Collective. Its
 * backward is zinc_tp_region_enter of the gradient. */
zinc_status zinc_tp_region_leave(const zinc_tp *t, void *y, void *part, int N, int width);
/* x(n) fp32 = sum over the group of x, in place: the gradients of parameters
 * that sequence parallelism leaves partial on each rank (LayerNorm's, whose
 * rows are split). Collective. */
zinc_status zinc_tp_all_reduce_f32(const zinc_tp *t, float *x, size_t n);

/* ---- parallel linears (weights stored (in, out) as zinc_ops' linear) ----
 * Column-parallel: this rank holds W[:, cols] (C, OCl) and b[cols]; the input
 * is whole on every rank (zinc_tp_region_enter's), the output split by
 * columns. Row-parallel: this rank holds W[rows, :] (Cl, OC); the input split
 * by columns (the output of a column-parallel linear), the output summed over
 * the group (zinc_tp_region_leave's); b (OC) is replicated and added once.
 * `part` is (N, OC or C) act scratch for the partial sum with sequence
 * parallelism; without it part may be NULL (the output itself is used). */

/* y(N, OCl) act = x(N, C) @ w(C, OCl) + b(OCl). No communication. */
void zinc_tp_column_forward(const zinc_tp *t, void *y, const void *x, const float *w,
                            const float *b, int N, int C, int OCl);
/* dx(rows, C) act = this rank's rows of the sum over the group of dy(N, OCl)
 * @ w^T -- WRITTEN, not accumulated; dw(C, OCl) += x^T @ dy with x the whole
 * (N, C) input; db(OCl) += sum_rows dy (may be NULL). Collective. */
zinc_status zinc_tp_column_backward(const zinc_tp *t, void *dx, void *part, float *dw, float *db,
                                    const void *dy, const void *x, const float *w, int N, int C,
                                    int OCl);
/* y(rows, OC) act = this rank's rows of the sum over the group of x(N, Cl) @
 * w(Cl, OC), + b(OC) (added by rank 0 before the sum, so once). Collective. */
zinc_status zinc_tp_row_forward(const zinc_tp *t, void *y, void *part, const void *x,
                                const float *w, const float *b, int N, int Cl, int OC);
/* dx(N, Cl) act += dy(N, OC) @ w^T; dw(Cl, OC) += x^T @ dy; db(OC) += sum_rows
 * dy on every rank (b is replicated: its gradient is the same everywhere).
 * dy is the whole gradient (zinc_tp_region_enter's). No communication. */
void zinc_tp_row_backward(const zinc_tp *t, void *dx, float *dw, float *db, const void *dy,
                          const void *x, const float *w, int N, int Cl, int OC);

/* The same four with weights stored (out, in), as nn.Linear (zinc_ops' linear_t): a
 * column-parallel w is (OCl, C) (this rank's rows of the whole (OC, C)), dw likewise; a
 * row-parallel w is (OC, Cl) (this rank's columns). The vocab-parallel tied head is a
 * column-parallel one without bias: logits(N, Vl) = x @ wte(Vl, C)^T. */
void zinc_tp_column_t_forward(const zinc_tp *t, void *y, const void *x, const float *w, const float *b, int N,
                              int C, int OCl);
zinc_status zinc_tp_column_t_backward(const zinc_tp *t, void *dx, void *part, float *dw, float *db, const void *dy,
                                      const void *x, const float *w, int N, int C, int OCl);
zinc_status zinc_tp_row_t_forward(const zinc_tp *t, void *y, void *part, const void *x, const float *w,
                                  const float *b, int N, int Cl, int OC);
void zinc_tp_row_t_backward(const zinc_tp *t, void *dx, float *dw, float *db, const void *dy, const void *x,
                            const float *w, int N, int Cl, int OC);

/* ---- vocab-parallel embedding, tied head and cross-entropy ----
 * This rank holds rows [v0, v0 + Vl) of the token embedding wte (Vl = V / TP,
 * v0 = rank x Vl); the tied head's logits (zinc_tp_column_t_forward) are its Vl columns,
 * never the whole row on one rank. */

/* out(rows, C) act = this rank's rows of the sum over the group of the
 * embeddings of the vocabulary rows this rank holds (tokens elsewhere give
 * 0) + wpe[pos ? pos[b,t] : t] (added once); part (B*T, C) as the linears'. Collective. */
zinc_status zinc_tp_embedding_forward(const zinc_tp *t, void *out, void *part,
                                      const int32_t *tokens, const int32_t *pos, const float *wte,
                                      const float *wpe, int B, int T, int C, int Vl);
/* dwte(Vl, C) += dout of this rank's tokens; dwpe(T, C) += dout by position (wpe
 * is replicated: the same gradient on every rank). dout (rows, C); with
 * sequence parallelism it is gathered into full (B*T, C) act scratch first
 * (full may be NULL without). Collective with SP. */
zinc_status zinc_tp_embedding_backward(const zinc_tp *t, float *dwte, float *dwpe,
                                       const void *dout, void *full, const int32_t *tokens,
                                       const int32_t *pos, int B, int T, int C, int Vl);
/* Softmax cross-entropy of rows split by columns: losses(N) fp32 (each row's
 * whole loss, the same on every rank), logits(N, Vl) overwritten with this
 * rank's columns of dloss * (softmax - onehot); stats holds 3N floats of
 * device scratch. Two all-reduces (MAX of N, SUM of 2N). Without a group it
 * is softmax_xent. Collective. */
zinc_status zinc_tp_softmax_xent(const zinc_tp *t, float *losses, void *logits,
                                 const int32_t *targets, float dloss, float *stats, int N, int Vl);

/* Bytes one rank's TP collectives moved (ring formula, as comm counts them). */
uint64_t zinc_tp_bytes(const zinc_tp *t);

#ifdef __cplusplus
}
#endif

#endif
