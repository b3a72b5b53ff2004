/* ops_wrap.c - an op table that calls hooks around every op of another
 * one: the op profiler (engine/ops_profile.c) and the strict test device
 * (kernels/cpu/device_strict.c) are both built on it. Op tables hold plain
 * function pointers, so each wrapper slot is its own set of functions,
 * generated from one list of the ops. */
#include <assert.h>
#include <stddef.h>

#include "zinc/ops.h"

/* Every wrapped op of zinc_ops: X(name, (params), (args)). */
#define WRAP_VOID_OPS(X)                                                                      \
    X(matmul, (float *c, const float *a, const float *b, int m, int n, int k, int ta, int tb,   \
               float alpha, float beta), (c, a, b, m, n, k, ta, tb, alpha, beta))               \
    X(linear_forward, (void *out, const void *inp, const float *w, const float *b, int N,       \
                       int C, int OC), (out, inp, w, b, N, C, OC))                              \
    X(linear_backward, (void *dinp, float *dw, float *db, const void *dout, const void *inp,    \
                        const float *w, int N, int C, int OC),                                  \
      (dinp, dw, db, dout, inp, w, N, C, OC))                                                   \
    X(linear_gelu_forward, (void *out, void *pre, const void *inp, const float *w,            \
                            const float *b, int N, int C, int OC),                              \
      (out, pre, inp, w, b, N, C, OC))                                                          \
    X(linear_gelu_backward, (void *dpre, float *dw, float *db, const void *dout,               \
                             const void *inp, const void *pre, const float *w, int N, int C,    \
                             int OC), (dpre, dw, db, dout, inp, pre, w, N, C, OC))              \
    X(linear_t_forward, (void *out, const void *inp, const float *w, const float *b, int N,    \
                         int C, int OC), (out, inp, w, b, N, C, OC))                            \
    X(linear_t_backward, (void *dinp, float *dw, float *db, const void *dout, const void *inp,  \
                          const float *w, int N, int C, int OC),                                \
      (dinp, dw, db, dout, inp, w, N, C, OC))                                                   \
    X(embedding_forward, (void *out, const int32_t *tok, const int32_t *pos, const float *wte,  \
                          const float *wpe, int B, int T, int C, int v0, int V),                \
      (out, tok, pos, wte, wpe, B, T, C, v0, V))                                                \
    X(embedding_backward, (float *dwte, float *dwpe, const void *dout, const int32_t *tok,      \
                           const int32_t *pos, int B, int T, int C, int v0, int V),             \
      (dwte, dwpe, dout, tok, pos, B, T, C, v0, V))                                             \
    X(layernorm_forward, (void *out, float *mean, float *rstd, const void *inp,                 \
                          const float *w, const float *b, int N, int C),                        \
      (out, mean, rstd, inp, w, b, N, C))                                                       \
    X(layernorm_backward, (void *dinp, float *dw, float *db, const void *dout,                  \
                           const void *inp, const float *w, const float *mean,                  \
                           const float *rstd, int N, int C),                                    \
      (dinp, dw, db, dout, inp, w, mean, rstd, N, C))                                           \
    X(rmsnorm_forward, (void *out, float *rstd, const void *inp, const float *w, float eps,       \
                        int N, int C), (out, rstd, inp, w, eps, N, C))                          \
    X(rmsnorm_backward, (void *dinp, float *dw, const void *dout, const void *inp,              \
                         const float *w, const float *rstd, int N, int C),                      \
      (dinp, dw, dout, inp, w, rstd, N, C))                                                     \
    X(rope, (void *x, int N, int stride, int nh, int HS, int T, const int32_t *pos,             \
             const float *cs, const float *sn, int dir), (x, N, stride, nh, HS, T, pos, cs, sn, dir)) \
    X(attention_gqa_forward, (void *out, float *lse, const void *qkv, const int32_t *pos, int B, \
                              int T, int NH, int NKV, int HS),                                  \
      (out, lse, qkv, pos, B, T, NH, NKV, HS))                                                  \
    X(attention_gqa_backward, (void *dqkv, float *sc, const void *dout, const void *qkv,        \
                               const void *out, const float *lse, const int32_t *pos, int B,    \
                               int T, int NH, int NKV, int HS),                                 \
      (dqkv, sc, dout, qkv, out, lse, pos, B, T, NH, NKV, HS))                                  \
    X(lora_down, (float *t, const void *inp, int ldi, const float *A, int N, int C, int r),     \
      (t, inp, ldi, A, N, C, r))                                                                \
    X(lora_up, (void *out, int ldo, const float *t, const float *B, float s, int N, int OC,     \
                int r), (out, ldo, t, B, s, N, OC, r))                                          \
    X(lora_grad_up, (float *dB, float *dt, const void *dout, int ldo, const float *t,           \
                     const float *B, float s, int N, int OC, int r),                            \
      (dB, dt, dout, ldo, t, B, s, N, OC, r))                                                   \
    X(lora_grad_down, (void *dinp, float *dA, const float *dt, const void *inp, int ldi,        \
                       const float *A, int N, int C, int r), (dinp, dA, dt, inp, ldi, A, N, C, r)) \
    X(dropout_forward, (void *out, const void *inp, size_t n, float p, uint64_t seed),          \
      (out, inp, n, p, seed))                                                                   \
    X(dropout_backward, (void *dinp, const void *dout, size_t n, float p, uint64_t seed),       \
      (dinp, dout, n, p, seed))                                                                 \
    X(swiglu_forward, (void *out, const void *gu, int N, int F), (out, gu, N, F))               \
    X(fill_cols, (void *x, int N, int ld, int c0, int c1, float v), (x, N, ld, c0, c1, v))      \
    X(swiglu_backward, (void *dgu, const void *dout, const void *gu, int N, int F),             \
      (dgu, dout, gu, N, F))                                                                    \
    X(gelu_forward, (void *out, const void *inp, size_t n), (out, inp, n))                      \
    X(gelu_backward, (void *dinp, const void *inp, const void *dout, size_t n),                 \
      (dinp, inp, dout, n))                                                                     \
    X(attention_forward, (void *out, float *lse, const void *qkv, int B, int T, int C,          \
                          int NH), (out, lse, qkv, B, T, C, NH))                                \
    X(attention_backward, (void *dqkv, float *scratch, const void *dout, const void *qkv,       \
                           const void *out, const float *lse, int B, int T, int C, int NH),     \
      (dqkv, scratch, dout, qkv, out, lse, B, T, C, NH))                                        \
    X(residual_forward, (void *out, const void *a, const void *b, size_t n), (out, a, b, n))    \
    X(softmax_xent, (float *losses, void *logits, const int32_t *t, float dloss, int N,         \
                     int V), (losses, logits, t, dloss, N, V))                                  \
    X(xent_vp_max, (float *rowmax, const void *logits, int N, int V), (rowmax, logits, N, V))  \
    X(xent_vp_sums, (float *sums, const void *logits, const int32_t *t, const float *rowmax,    \
                     int N, int V, int v0), (sums, logits, t, rowmax, N, V, v0))                \
    X(xent_vp_finish, (float *losses, void *logits, const int32_t *t, const float *rowmax,      \
                       const float *sums, float dloss, int N, int V, int v0),                   \
      (losses, logits, t, rowmax, sums, dloss, N, V, v0))                                       \
    X(adamw, (float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,       \
              float b2, float eps, float wd, int t), (p, g, m, v, n, lr, b1, b2, eps, wd, t))   \
    X(adamw_mixed, (float *p, const void *g, zinc_dtype gdt, float coef, float *m, float *v, void *o, \
                    zinc_dtype odt, size_t n, float lr, float b1, float b2, float eps, float wd, int t), \
      (p, g, gdt, coef, m, v, o, odt, n, lr, b1, b2, eps, wd, t))                               \
    X(scale, (float *x, float s, size_t n), (x, s, n))                                          \
    X(zero, (void *p, size_t bytes), (p, bytes))                                                \
    X(copy, (void *dst, const void *src, size_t bytes), (dst, src, bytes))                      \
    X(convert, (void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n),          \
      (dst, ddt, src, sdt, n))                                                                  \
    X(add_into, (void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n),         \
      (dst, ddt, src, sdt, n))                                                                  \
    X(round_to, (float *x, zinc_dtype dt, size_t n), (x, dt, n))
#define WRAP_DOUBLE_OPS(X)                                                                    \
    X(sumsq, (const float *x, size_t n), (x, n))                                                \
    X(sum, (const float *x, size_t n), (x, n))

enum {
#define ENUM_X(name, params, args) OP_##name,
    WRAP_VOID_OPS(ENUM_X) WRAP_DOUBLE_OPS(ENUM_X)
#undef ENUM_X
    OP_N
};

static const char *const op_names[OP_N] = {
#define NAME_X(name, params, args) #name,
    WRAP_VOID_OPS(NAME_X) WRAP_DOUBLE_OPS(NAME_X)
#undef NAME_X
};

int zinc_ops_n_ops(void) { return OP_N; }
const char *zinc_ops_op_name(int op) { return op >= 0 && op < OP_N ? op_names[op] : "?"; }

static struct {
    const zinc_ops *in;
    zinc_ops_hooks hooks;
    zinc_ops table;
} W[ZINC_OPS_WRAP_SLOTS];

/* The functions of one slot. */
#define VOID_X(S, name, params, args)                                                         \
    static void w##S##_##name params                                                           \
    {                                                                                          \
        W[S].hooks.before(OP_##name, W[S].hooks.user);                                         \
        W[S].in->name args;                                                                    \
        W[S].hooks.after(OP_##name, W[S].hooks.user);                                          \
    }
#define DOUBLE_X(S, name, params, args)                                                       \
    static double w##S##_##name params                                                         \
    {                                                                                          \
        W[S].hooks.before(OP_##name, W[S].hooks.user);                                         \
        double r_ = W[S].in->name args;                                                        \
        W[S].hooks.after(OP_##name, W[S].hooks.user);                                          \
        return r_;                                                                             \
    }
#define SET_X(S, name, params, args) W[S].table.name = W[S].in->name ? w##S##_##name : NULL; /* optional ops stay NULL */

#define SLOT(S)                                                                               \
    WRAP_VOID_OPS_S(VOID_X, S)                                                                 \
    WRAP_DOUBLE_OPS_S(DOUBLE_X, S)                                                             \
    static void fill_##S(void) { WRAP_VOID_OPS_S(SET_X, S) WRAP_DOUBLE_OPS_S(SET_X, S) }

/* The lists again, with the slot number passed through. */
#define WRAP_VOID_OPS_S(X, S) WRAP_VOID_OPS(X##_##S)
#define WRAP_DOUBLE_OPS_S(X, S) WRAP_DOUBLE_OPS(X##_##S)
#define VOID_X_0(n, p, a) VOID_X(0, n, p, a)
#define VOID_X_1(n, p, a) VOID_X(1, n, p, a)
#define VOID_X_2(n, p, a) VOID_X(2, n, p, a)
#define DOUBLE_X_0(n, p, a) DOUBLE_X(0, n, p, a)
#define DOUBLE_X_1(n, p, a) DOUBLE_X(1, n, p, a)
#define DOUBLE_X_2(n, p, a) DOUBLE_X(2, n, p, a)
#define SET_X_0(n, p, a) SET_X(0, n, p, a)
#define SET_X_1(n, p, a) SET_X(1, n, p, a)
#define SET_X_2(n, p, a) SET_X(2, n, p, a)

SLOT(0)
SLOT(1)
SLOT(2)

const zinc_ops *zinc_ops_wrap(int slot, const zinc_ops *in, const zinc_ops_hooks *hooks)
{
    assert(slot >= 0 && slot < ZINC_OPS_WRAP_SLOTS && in && hooks && hooks->before &&
           hooks->after);
    W[slot].in = in;
    W[slot].hooks = *hooks;
    W[slot].table = *in; /* name, act and attention_scratch_floats pass through */
    static void (*const fill[ZINC_OPS_WRAP_SLOTS])(void) = {fill_0, fill_1, fill_2};
    fill[slot]();
    return &W[slot].table;
}
