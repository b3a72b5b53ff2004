/* zinc/ops.h - the op table: every compute op zinc's models use, with one
 * contract shared by all devices. The CPU table (kernels/cpu) is the
 * reference every other device's table is tested against.
 *
 * Conventions (llm.c style):
 *  - Tensors are dense and row-major; pointers are borrowed and live in the
 *    memory of the device the table belongs to.
 *  - Two kinds of tensors. Activations ("act": typed void *) are stored in
 *    the table's act dtype, f32 or bf16: layer inputs and outputs, logits,
 *    qkv, and their gradients. Everything else is fp32 (float *): parameters,
 *    their gradients, and the small per-row statistics (LayerNorm mean/rstd,
 *    attention lse, token losses). A table with act bf16 computes every op in
 *    fp32 from its inputs and rounds each act output to bf16 once (round to
 *    nearest even); parameters hold bf16-representable values in bf16
 *    training, so tables may stage them to bf16 for tensor-core products.
 *  - Shapes are given in the comment of each op: B batch, T time, C channels,
 *    NH heads, V vocab, N rows.
 *  - Backward ops ACCUMULATE (+=) into every gradient they write (dinp, dweight,
 *    dbias, ...), so gradient accumulation and residual branches need no copies.
 *    Callers zero gradients when a fresh value is wanted. (An act gradient
 *    accumulates in fp32 and is rounded once: dinp = act(dinp + delta).)
 *  - Ops never fail: argument errors are programmer errors (assert).
 */
#ifndef ZINC_OPS_H
#define ZINC_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/status.h"
#include "zinc/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zinc_ops {
    const char *name; /* "cpu", "cpu-bf16", "cuda", "cuda-bf16" */
    zinc_dtype act;   /* dtype of act tensors: ZINC_DTYPE_F32 or ZINC_DTYPE_BF16 */

    /* All fp32, whatever act is (a general product; models use the ops below).
     * c(m,n) = alpha * op(a) @ op(b) + beta * c, op(x) = x or x^T.
     * a is (m,k) or, if trans_a, stored (k,m); b is (k,n) or, if trans_b, stored (n,k). */
    void (*matmul)(float *c, const float *a, const float *b, int m, int n, int k,
                   int trans_a, int trans_b, float alpha, float beta);

    /* out(N,OC) act = inp(N,C) act @ weight(C,OC) + bias(OC); bias may be NULL.
     * weight is stored (in, out), as Hugging Face's Conv1D. */
    void (*linear_forward)(void *out, const void *inp, const float *weight,
                           const float *bias, int N, int C, int OC);
    /* dinp(N,C) act += dout @ weight^T; dweight(C,OC) += inp^T @ dout;
     * dbias(OC) += sum_rows dout. Each of dinp, dweight and dbias may be NULL
     * (skipped: a frozen weight has no gradient, and its product is not made). */
    void (*linear_backward)(void *dinp, float *dweight, float *dbias,
                            const void *dout, const void *inp, const float *weight,
                            int N, int C, int OC);

    /* The MLP's first product with its GELU fused (one pass over the output):
     * pre(N,OC) act = inp(N,C) act @ weight(C,OC) + bias(OC) (bias may be NULL),
     * out(N,OC) act = gelu(pre) (a table may take the GELU of pre before or
     * after rounding pre to act: equal within the act tolerance).
     * pre may be NULL (not kept: the forward pass needs only out). */
    void (*linear_gelu_forward)(void *out, void *pre, const void *inp, const float *weight,
                                const float *bias, int N, int C, int OC);
    /* Backward of a linear whose input is inp = gelu(pre) (the MLP's second
     * product), fused with that GELU's backward:
     * dpre(N,C) act = (dout(N,OC) @ weight^T) * gelu'(pre) -- WRITTEN, not
     * accumulated (the exception to the rule above: pre has no other use);
     * dweight(C,OC) += inp^T @ dout (may be NULL); dbias(OC) += sum_rows dout (may be NULL). */
    void (*linear_gelu_backward)(void *dpre, float *dweight, float *dbias, const void *dout,
                                 const void *inp, const void *pre, const float *weight, int N,
                                 int C, int OC);

    /* The linear with its weight stored (out, in), as PyTorch's nn.Linear (Llama's
     * projections) and the tied LM head (wte (V, C), no bias):
     * out(N,OC) act = inp(N,C) act @ weight(OC,C)^T + bias(OC); bias may be NULL. */
    void (*linear_t_forward)(void *out, const void *inp, const float *weight, const float *bias,
                             int N, int C, int OC);
    /* dinp(N,C) act += dout(N,OC) @ weight; dweight(OC,C) += dout^T @ inp;
     * dbias(OC) += sum_rows dout. dinp, dweight and dbias may be NULL (skipped). */
    void (*linear_t_backward)(void *dinp, float *dweight, float *dbias, const void *dout,
                              const void *inp, const float *weight, int N, int C, int OC);

    /* The token + position embedding, whole or split by vocabulary (tensor
     * parallelism: this rank holds the token rows [v0, v0+V); v0 = 0 and V =
     * the vocabulary for the whole table). tokens (B,T) are >= 0.
     * out(B,T,C) act = (v0 <= tok < v0+V ? wte[tok - v0] : 0) + (wpe ? wpe[p] : 0),
     * tok = tokens[b,t], p = pos ? pos[b,t] : t (pos (B,T): positions that restart
     * per document, zinc/data.h; the CUDA table takes NULL only); wte (V,C), wpe
     * (maxT,C) or NULL (not added: the ranks of a split sum their outs, so one of
     * them adds wpe, or the caller adds it after the sum). */
    void (*embedding_forward)(void *out, const int32_t *tokens, const int32_t *pos, const float *wte,
                              const float *wpe, int B, int T, int C, int v0, int V);
    /* dwte(V,C) += scatter of dout(B,T,C) act by token, rows tok - v0 of the
     * tokens in [v0, v0+V) only (the others touch nothing);
     * dwpe(maxT,C)[p] += dout[b,t]; dwte or dwpe NULL: skipped (frozen). */
    void (*embedding_backward)(float *dwte, float *dwpe, const void *dout,
                               const int32_t *tokens, const int32_t *pos, int B, int T, int C, int v0, int V);

    /* out(N,C) act = (inp - mean) * rstd * weight + bias, eps 1e-5; saves
     * mean(N), rstd(N) for backward. inp act. */
    void (*layernorm_forward)(void *out, float *mean, float *rstd, const void *inp,
                              const float *weight, const float *bias, int N, int C);
    /* dinp(N,C) act, dweight(C), dbias(C) accumulate; dout, inp act. dweight and
     * dbias may be NULL (frozen; the CUDA table takes one NULL without the other on
     * rows of at most 1024 bf16 / 512 fp32 only, and records an error for wider). */
    void (*layernorm_backward)(void *dinp, float *dweight, float *dbias, const void *dout,
                               const void *inp, const float *weight, const float *mean,
                               const float *rstd, int N, int C);

    /* tanh-approximation GELU, elementwise over n (all act). */
    void (*gelu_forward)(void *out, const void *inp, size_t n);
    /* dinp += gelu'(inp) * dout (all act). */
    void (*gelu_backward)(void *dinp, const void *inp, const void *dout, size_t n);

    /* Causal multi-head self-attention, flash style (no T x T matrix in memory).
     * qkv (B,T,3C) act holds q | k | v, each (NH, HS) with HS = C/NH, HS <= 128.
     * out (B,T,C) act; lse (B,NH,T) fp32 receives, per query row, the
     * log-sum-exp of its scaled scores (q.k/sqrt(HS)) over keys t2 <= t;
     * saved for backward. */
    void (*attention_forward)(void *out, float *lse, const void *qkv,
                              int B, int T, int C, int NH);
    /* dqkv (B,T,3C) act accumulates; dout act; out and lse as saved by
     * forward; scratch (fp32) holds attention_scratch_floats(B,T,C,NH) floats. */
    void (*attention_backward)(void *dqkv, float *scratch, const void *dout, const void *qkv,
                               const void *out, const float *lse, int B, int T, int C, int NH);
    /* Floats of scratch attention_backward needs: B*NH*T on every device (one
     * float per query row, D = rowsum(dout * out)), so callers without a
     * table at hand may size it by that formula. */
    size_t (*attention_scratch_floats)(int B, int T, int C, int NH);

    /* --- Llama-family layers --- */
    /* RMSNorm: out(N,C) act = inp * rstd * weight, rstd(N) = 1/sqrt(mean_c(inp^2) + eps),
     * saved for backward. inp act. */
    void (*rmsnorm_forward)(void *out, float *rstd, const void *inp, const float *weight, float eps,
                            int N, int C);
    /* dinp(N,C) act and dweight(C) accumulate (dweight NULL: frozen, skipped); dout, inp act. */
    void (*rmsnorm_backward)(void *dinp, float *dweight, const void *dout, const void *inp,
                             const float *weight, const float *rstd, int N, int C);
    /* Rotary position embedding, IN PLACE (the exception to accumulation): the first
     * n_heads heads of HS (even) elements of each of the N rows of x (act; rows stride
     * elements apart, e.g. the q or k part of a qkv row) are rotated pairwise as Hugging
     * Face's rotate_half pairs them, (x_i, x_{i+HS/2}) by the angle of row pos(r) of the
     * tables, pos(r) = pos ? pos[r] : r % T; cos, sin (P, HS/2) fp32 from
     * zinc_rope_table, P above every position. dir 1: forward; dir -1: the inverse
     * rotation, which is the backward (the gradient of the input from that of the output,
     * in place). */
    void (*rope)(void *x, int N, int stride, int n_heads, int HS, int T, const int32_t *pos,
                 const float *cos, const float *sin, int dir);
    /* Grouped-query attention: attention_forward / _backward's contract with NKV key/value
     * heads shared by groups of NH / NKV query heads (NKV divides NH; NKV = NH is the
     * multi-head op): qkv (B,T,(NH + 2 NKV) HS) act holds q (NH heads) | k (NKV) | v (NKV),
     * query head h reading key/value head h / (NH / NKV); out (B,T,NH HS) act; lse
     * (B,NH,T); scratch as attention_scratch_floats(B, T, NH HS, NH). K and V are never
     * expanded in memory. pos (B,T) or NULL: documents packed in a row, query t
     * attending to keys t - pos[b,t] .. t only (block diagonal; the CUDA table takes
     * NULL only, and records an error for another). */
    void (*attention_gqa_forward)(void *out, float *lse, const void *qkv, const int32_t *pos, int B, int T, int NH,
                                  int NKV, int HS);
    void (*attention_gqa_backward)(void *dqkv, float *scratch, const void *dout, const void *qkv, const void *out,
                                   const float *lse, const int32_t *pos, int B, int T, int NH, int NKV, int HS);
    /* SwiGLU: gu(N,2F) act holds gate | up per row; out(N,F) act = silu(gate) * up. */
    void (*swiglu_forward)(void *out, const void *gu, int N, int F);
    /* dgu(N,2F) act accumulates; dout(N,F) act; gu as forward had it. */
    void (*swiglu_backward)(void *dgu, const void *dout, const void *gu, int N, int F);

    /* --- LoRA (models/lora.c) --- */
    /* The low-rank path beside a linear, out += s * (inp @ A^T) @ B^T, as PEFT's lora_A
     * (r,C) and lora_B (OC,r) (weights stored (out, in), whatever the base's layout), s its
     * scale (alpha/r, or alpha/sqrt(r) with rsLoRA), in four ops so that tensor parallelism
     * can sum the rank-r products between them. Rows are strided: inp / dinp (N rows, ldi
     * apart) act, out / dout (N rows, ldo apart) act, so a fused product's q or v columns
     * take their own adapter; t and dt (N,r) are fp32.
     * lora_down: t = inp @ A^T, WRITTEN (saved for backward). */
    void (*lora_down)(float *t, const void *inp, int ldi, const float *A, int N, int C, int r);
    /* lora_up: out += s * t @ B^T. */
    void (*lora_up)(void *out, int ldo, const float *t, const float *B, float s, int N, int OC, int r);
    /* lora_grad_up: dB(OC,r) += s * dout^T @ t; dt = s * dout @ B, WRITTEN. */
    void (*lora_grad_up)(float *dB, float *dt, const void *dout, int ldo, const float *t, const float *B, float s,
                         int N, int OC, int r);
    /* lora_grad_down: dA(r,C) += dt^T @ inp unless dA is NULL; dinp += dt @ A unless dinp is
     * NULL (inp is not read without dA: it may be NULL then). */
    void (*lora_grad_down)(void *dinp, float *dA, const float *dt, const void *inp, int ldi, const float *A, int N,
                           int C, int r);
    /* Inverted dropout over n act elements: out(i) = keep(i) ? inp(i) / (1 - p) : 0, keep(i)
     * = zinc_dropout_keep(seed, i, p) (a counter-based mask: the backward makes the same one
     * from the seed, nothing is saved). 0 <= p < 1. */
    void (*dropout_forward)(void *out, const void *inp, size_t n, float p, uint64_t seed);
    /* dinp(i) act += keep(i) ? dout(i) / (1 - p) : 0. */
    void (*dropout_backward)(void *dinp, const void *dout, size_t n, float p, uint64_t seed);

    /* x(N, ld) act: columns [c0, c1) of every row set to value (rounded to act); the
     * padded vocabulary's logits get -inf so that they take no part in the softmax. */
    void (*fill_cols)(void *x, int N, int ld, int c0, int c1, float value);

    /* out = a + b, elementwise over n, all act (out may alias a or b). */
    void (*residual_forward)(void *out, const void *a, const void *b, size_t n);

    /* Fused softmax + cross-entropy over N rows of V logits (act).
     * losses(N) fp32 = -log softmax(logits)[target]; then logits is overwritten
     * with d(dloss * sum losses)/d logits = dloss * (softmax - onehot).
     * A target < 0 ignores the row (loss 0, gradient 0). */
    void (*softmax_xent)(float *losses, void *logits, const int32_t *targets,
                         float dloss, int N, int V);

    /* softmax_xent with the vocabulary split across ranks (Megatron's
     * vocab-parallel cross-entropy): this rank holds the logit columns
     * [v0, v0+V) of each of the N rows, logits (N,V) act; targets (N) are
     * indices into the whole row (< 0: the row is ignored). Three ops around
     * two all-reduces that the caller makes:
     *   xent_vp_max -> all-reduce MAX of rowmax -> xent_vp_sums ->
     *   all-reduce SUM of sums -> xent_vp_finish.
     * On one rank (v0 = 0, V the whole row) the three equal softmax_xent
     * within fp32 rounding (the sum of exps is held in fp32 between them).
     *
     * rowmax(N) fp32 = max over the row's local logits. WRITTEN. */
    void (*xent_vp_max)(float *rowmax, const void *logits, int N, int V);
    /* sums(N,2) fp32, with rowmax the all-reduced (global) row max. WRITTEN:
     * sums[2i] = sum_j exp(logits[i,j] - rowmax[i]) (summed as the table's
     * softmax_xent sums: the CPU's in double, rounded once), sums[2i+1] =
     * logits[i, targets[i] - v0] if v0 <= targets[i] < v0+V, else 0 (so the
     * SUM over ranks is the target's logit). Rows with targets[i] < 0 give
     * 0, 0. logits is only read. */
    void (*xent_vp_sums)(float *sums, const void *logits, const int32_t *targets,
                         const float *rowmax, int N, int V, int v0);
    /* With rowmax and sums all-reduced: losses(N) fp32 = log(sums[2i]) +
     * rowmax[i] - sums[2i+1] (the whole row's loss, the same on every rank:
     * count it once), WRITTEN; then logits is overwritten with this rank's
     * columns of dloss * (softmax - onehot): dloss * (exp(logits - rowmax) /
     * sums[2i] - [j == targets[i] - v0]). A target < 0: loss 0, gradient 0. */
    void (*xent_vp_finish)(float *losses, void *logits, const int32_t *targets,
                           const float *rowmax, const float *sums, float dloss, int N, int V,
                           int v0);

    /* AdamW (decoupled weight decay, bias-corrected) over n elements:
     * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     * p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p); t is the 1-based step. */
    void (*adamw)(float *param, const float *grad, float *m, float *v, size_t n,
                  float lr, float beta1, float beta2, float eps, float wd, int t);
    /* The same in one pass from a gradient stored as gdt, times coef (g = grad * coef, the
     * product skipped when coef is 1), on fp32 master weights, and, unless out is NULL, the
     * new master weights rounded to odt into out (which may be the gradient's own memory:
     * element i is read before it is written). NULL in a table without it: the caller
     * converts, scales, runs adamw and converts back, with the same result. */
    void (*adamw_mixed)(float *master, const void *grad, zinc_dtype gdt, float coef, float *m, float *v,
                        void *out, zinc_dtype odt, size_t n, float lr, float beta1, float beta2, float eps,
                        float wd, int t);

    /* Returns sum x^2 over n in double precision. */
    double (*sumsq)(const float *x, size_t n);
    /* x *= s over n. */
    void (*scale)(float *x, float s, size_t n);

    /* --- memory and precision (the engine's plumbing; every pointer device
     * memory; f16/bf16 rounding is round-to-nearest-even, NaN stays NaN) --- */

    /* Sets bytes of p to zero. */
    void (*zero)(void *p, size_t bytes);
    /* dst = src, bytes (no overlap). */
    void (*copy)(void *dst, const void *src, size_t bytes);
    /* dst (ddt) = src (sdt) over n elements; dtypes f32, bf16, f16 (any pair;
     * equal dtypes copy). */
    void (*convert)(void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n);
    /* dst (ddt) += src (sdt) over n, in fp32 arithmetic rounded once to ddt. */
    void (*add_into)(void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n);
    /* x = fp32(dt(x)): rounds fp32 values to what dt can hold (f32: no-op). */
    void (*round_to)(float *x, zinc_dtype dt, size_t n);
    /* Returns sum x over n in double precision (fixed order: deterministic). */
    double (*sum)(const float *x, size_t n);
} zinc_ops;

/* The CPU op table (C + OpenMP + OpenBLAS), act f32. Static storage, never NULL. */
const zinc_ops *zinc_ops_cpu(void);
/* The same ops with act bf16 ("cpu-bf16"): each op computes in fp32 from its
 * act inputs and rounds its act outputs to bf16, so it is the reference for
 * every act-bf16 table. Its products run bf16 x bf16 with fp32 accumulation
 * (AVX512_BF16, kernels/cpu/gemm_bf16.c) where the processor has it, else the
 * fp32 product of the widened inputs; the other ops widen their inputs and
 * run the fp32 op. Static storage, never NULL. */
const zinc_ops *zinc_ops_cpu_bf16(void);
/* The ops return void; an act-bf16 CPU op that cannot allocate its fp32
 * temporaries does nothing and records ZINC_ERR_NOMEM instead. Returns the
 * first such failure since the last call (ZINC_OK if none), with
 * zinc_last_error() set to its detail, and clears it. The cpu device's
 * sync() reports it, so it surfaces at the engine's next step boundary. */
zinc_status zinc_ops_cpu_last_status(void);

/* The dropout mask every table draws: element i of the stream seed is kept when the top
 * 24 bits of splitmix64(seed + i) (as a fraction of 2^24) are >= p. */
#ifdef __CUDACC__
#define ZINC_HOST_DEVICE __host__ __device__
#else
#define ZINC_HOST_DEVICE
#endif
static inline ZINC_HOST_DEVICE int zinc_dropout_keep(uint64_t seed, uint64_t i, float p)
{
    uint64_t z = seed + i * 0x9E3779B97F4A7C15ull + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) >= p;
}

/* Llama-3's rope_scaling (rope_type "llama3"); factor 0: none. */
typedef struct zinc_rope_scaling {
    double factor, low_freq_factor, high_freq_factor;
    int original_max_position; /* original_max_position_embeddings */
} zinc_rope_scaling;

/* The rotary tables zinc_ops.rope reads (pure, host memory: copy them to the device):
 * cos, sin (P, HS/2) for positions 0..P-1, inverse frequencies theta^(-2i/HS) (rope_theta)
 * scaled as sc says (NULL: none), computed as transformers computes them. */
void zinc_rope_table(float *cos, float *sin, int P, int HS, double theta, const zinc_rope_scaling *sc);

/* Hooks around the ops of a wrapped table: before(op, user), the op,
 * after(op, user); op indexes zinc_ops_op_name(). */
typedef struct zinc_ops_hooks {
    void (*before)(int op, void *user);
    void (*after)(int op, void *user);
    void *user;
} zinc_ops_hooks;

#define ZINC_OPS_WRAP_SLOTS 3 /* 0: the op profiler; 1, 2: the strict test device (act f32, bf16) */

/* A table that runs every op of in between the hooks (name and
 * act and attention_scratch_floats pass through). One table per slot per process,
 * static storage; a later call for the same slot replaces it. in and the
 * hooks' user are borrowed. */
const zinc_ops *zinc_ops_wrap(int slot, const zinc_ops *in, const zinc_ops_hooks *hooks);
/* Number of wrapped ops, and the name of op i ("matmul", ...). */
int zinc_ops_n_ops(void);
const char *zinc_ops_op_name(int op);

#ifdef __cplusplus
}
#endif

#endif
