/* cuda_int.h - private to kernels/cuda: the check macros every CUDA, cuBLAS
 * and cuBLASLt call goes through, the process-wide lazy state (cuBLASLt
 * handle, workspace, scratch, algorithm cache) that the kernels/cuda
 * sources share, the device helpers and the elementwise launcher of the op
 * kernels, and what each ops_*.cu file gives the others and the op tables
 * (ops_tables.cu). Nothing outside kernels/cuda includes this file. */
#ifndef ZINC_CUDA_INT_H
#define ZINC_CUDA_INT_H

#include <stddef.h>
#include <stdint.h>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "zinc/status.h"
#include "zinc/tensor.h"

/* Records a failed foreign call: sets this thread's zinc_last_error() to
 * "call: file:line: message" (call cut at its first '(') and keeps it as the
 * process-wide first error that zinc_cuda_last_status() reports, unless an
 * earlier one is still pending. */
void cuda_fail(zinc_status s, const char *call, const char *file, int line, const char *msg);

/* Check macros: on failure they record through cuda_fail and jump to the
 * function's `cleanup` label (one per function). In C++ a goto may not
 * cross an initialized declaration, so functions declare their locals
 * before the first *_TRY. */
#define CUDA_TRY(call)                                                                  \
    do {                                                                                \
        const cudaError_t e_ = (call);                                                  \
        if (e_ != cudaSuccess) {                                                        \
            cuda_fail(e_ == cudaErrorMemoryAllocation ? ZINC_ERR_NOMEM : ZINC_ERR_CUDA, \
                      #call, __FILE__, __LINE__, cudaGetErrorString(e_));               \
            goto cleanup;                                                               \
        }                                                                               \
    } while (0)

#define CUBLAS_TRY(call)                                                                  \
    do {                                                                                  \
        const cublasStatus_t s_ = (call);                                                 \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                \
            cuda_fail(s_ == CUBLAS_STATUS_ALLOC_FAILED ? ZINC_ERR_NOMEM : ZINC_ERR_CUDA,  \
                      #call, __FILE__, __LINE__, cublasGetStatusString(s_));              \
            goto cleanup;                                                                 \
        }                                                                                 \
    } while (0)

/* After a <<<...>>> launch: a bad configuration (or an earlier asynchronous
 * fault) shows up here; `kernel` names it in the message. */
#define LAUNCH_TRY(kernel)                                                              \
    do {                                                                                \
        const cudaError_t e_ = cudaGetLastError();                                      \
        if (e_ != cudaSuccess) {                                                        \
            cuda_fail(ZINC_ERR_CUDA, "launch " #kernel, __FILE__, __LINE__,             \
                      cudaGetErrorString(e_));                                          \
            goto cleanup;                                                               \
        }                                                                               \
    } while (0)

/* ops_matmul.cu: the device's bf16 product rate (zinc_device.peak_tflops). */
double cuda_peak_tflops(void);

/* Bytes of the cuBLASLt workspace (32 MiB: what cuBLAS asks for on Hopper). */
#define CUDA_LT_WS_BYTES ((size_t)32 << 20)

/* The lazy process-wide state, bound to the device current when it is
 * first created. Returns 1 when it is ready for the current device, 0 after
 * recording an error (creation failed, or another device is current). */
int cuda_state_get(void);
/* The cuBLASLt handle and its workspace; valid after cuda_state_get() == 1. */
cublasLtHandle_t cuda_lt_handle(void);
void *cuda_lt_workspace(void);
/* A device scratch buffer of at least n_bytes, reused by every op (they all
 * run in order on stream 0, so one op's use ends before the next starts).
 * Growing it frees the old buffer (cudaFree synchronizes the device).
 * Returns NULL after recording an error. Requires cuda_state_get() == 1. */
void *cuda_scratch(size_t n_bytes);

/* What a cuBLASLt algorithm was chosen for. */
struct algo_key {
    int m, n, k, ta, tb, epi, bias, ab, cd; /* epi: LT_EPI_*; ab, cd: LT_F32 or LT_BF16 */
    unsigned al_a, al_b, al_c, al_bias, al_aux;
};
/* ops_common.cu: the cuBLASLt algorithm cache (the oldest entry replaced
 * first), under the lock of the lazy state. find sets *algo to the
 * algorithm cached for key and returns 1, or returns 0. */
int cuda_algo_cache_find(const algo_key *key, cublasLtMatmulAlgo_t *algo);
void cuda_algo_cache_put(const algo_key *key, const cublasLtMatmulAlgo_t *algo);

/* device_cuda.cu: frees the device memory cache's free blocks (after a
 * failed cudaMalloc elsewhere), and counts memory allocated outside the
 * device's alloc (the scratch) in its live/peak bytes. */
void cuda_cache_release(void);
void cuda_mem_note(long long delta_bytes);

/* attention_cuda.cu: the "cuda" table's attention entries (zinc/ops.h
 * contract, act f32, flash style on CUDA cores; stream 0; errors through
 * cuda_fail). */
void cuda_attention_forward(float *out, float *lse, const float *qkv, int B, int T, int C,
                            int NH);
void cuda_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                             const float *out, const float *lse, int B, int T, int C, int NH);
size_t cuda_attention_scratch_floats(int B, int T, int C, int NH);
/* The same kernels on act bf16 (qkv, out, dout, dqkv bf16 bits; lse and
 * scratch fp32): the bf16 entries' path for shapes the tensor-core kernels
 * do not take. */
void cuda_attention_forward_fallback_bf16(void *out, float *lse, const void *qkv, int B, int T,
                                          int C, int NH);
void cuda_attention_backward_fallback_bf16(void *dqkv, float *scratch, const void *dout,
                                           const void *qkv, const void *out, const float *lse,
                                           int B, int T, int C, int NH);
/* Dr (B,NH,T) fp32 = rowsum(dout * out) per head row, dout and out (B,T,C)
 * of dtype act (ZINC_DTYPE_F32 or ZINC_DTYPE_BF16): the backward's D, shared
 * by both attention implementations. Returns 1, or 0 after recording an
 * error. */
int cuda_attention_rowdot(float *Dr, const void *dout, const void *out, zinc_dtype act, int B,
                          int T, int C, int NH);

/* attention_tc_cuda.cu: the "cuda-bf16" table's attention entries (the
 * same contract and scratch size, act bf16), on tensor cores (bf16
 * operands, fp32 softmax and accumulation) when the head size is 64; other
 * shapes run cuda_attention_*_fallback_bf16. */
void cuda_attention_forward_bf16(void *out, float *lse, const void *qkv, int B, int T, int C,
                                 int NH);
void cuda_attention_backward_bf16(void *dqkv, float *scratch, const void *dout, const void *qkv,
                                  const void *out, const float *lse, int B, int T, int C, int NH);

/* ------------------------------------------------------------------ */
/* the op kernels (ops_*.cu): launch helpers                           */
/* ------------------------------------------------------------------ */

enum {
    EW_BLOCK = 256, /* threads per block of elementwise kernels */
};

/* ops_common.cu: blocks of EW_BLOCK threads for a grid-stride loop over n
 * elements (n > 0); whether p is 16-byte aligned (vector accesses). */
unsigned cuda_ew_grid(size_t n);
int cuda_al16(const void *p);

/* Vectorized elementwise ops. An op over n elements runs elements
 * [head, head + W nv) W at a time (Op::W: 4, or 8 for bf16 activations),
 * every operand moved with one access of W elements (16 bytes for fp32 or
 * bf16 act operands, 8 for the 16-bit operands of the precision ops), and
 * the head [0, head) and the tail [head + W nv, n) one at a time. Only the
 * memory access differs: each element gets the same arithmetic (op.one and
 * op.vec share it) whichever way it goes, so results do not depend on
 * alignment.
 * Elementwise ops move 16 bytes of act (4 floats or 8 bf16) per access, or
 * four elements of the precision ops' operands, wherever their operands
 * line up, on a grid as large as the device holds at once (ew_kernel); the
 * arithmetic per element is unchanged. */
struct ew_split {
    size_t head, nv, n;
};

/* ops_common.cu: the split of n elements of the np operands p (element
 * sizes esz) into W-wide groups, as their alignment allows. */
ew_split cuda_ew_plan(size_t n, const void *const *p, const unsigned *esz, int np, unsigned W);

/* One grid-stride loop over the W-wide groups, then one over the 0..2W-2
 * single elements (head and tail). */
template <class Op>
static __global__ void __launch_bounds__(EW_BLOCK) ew_kernel(Op op, ew_split s)
{
    const size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = t; i < s.nv; i += stride)
        op.vec(s.head + (size_t)Op::W * i);
    const size_t n1 = s.n - (size_t)Op::W * s.nv;
    for (size_t k = t; k < n1; k += stride)
        op.one(k < s.head ? k : k + (size_t)Op::W * s.nv);
}

/* ops_common.cu: streaming multiprocessors of the current device (the op
 * table is bound to one device), 1 if the query fails. */
int cuda_ew_sms(void);

/* Launches op over s: as many blocks as fit on the device at once (SMs x
 * resident blocks per SM of this kernel), fewer for small n. The caller
 * checks the launch with LAUNCH_TRY. */
template <class Op>
static void ew_launch(const Op &op, ew_split s)
{
    static const int per_sm = [] {
        int b = 0;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, ew_kernel<Op>, EW_BLOCK, 0) !=
                cudaSuccess ||
            b < 1) {
            (void)cudaGetLastError();
            b = 4;
        }
        return b;
    }();
    const size_t n1 = s.n - (size_t)Op::W * s.nv;
    const size_t items = s.nv > n1 ? s.nv : n1;
    const size_t want = (items + EW_BLOCK - 1) / EW_BLOCK;
    const size_t cap = (size_t)cuda_ew_sms() * (size_t)per_sm;
    ew_kernel<Op><<<(unsigned)(want < cap ? want : cap), EW_BLOCK>>>(op, s);
}

/* ------------------------------------------------------------------ */
/* the op kernels: device helpers                                      */
/* ------------------------------------------------------------------ */

/* Sum over the 32 lanes of a warp; every lane gets the same bits. */
static __device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Round to nearest even, NaN kept quiet: the CPU's zinc_f32_to_bf16. */
static __device__ __forceinline__ uint16_t f32_to_bf16_rne(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* The act kernels are templates on the storage type T of activations,
 * float or bf16; every one computes in fp32 and rounds each act output once.
 * act_ld / act_st move one element (as fp32), act_ldv / act_stv one 16-byte
 * vector of ACT_VW<T> elements (4 floats or 8 bf16; the pointer must be
 * 16-byte aligned). */
typedef __nv_bfloat16 bf16;

template <class T>
struct act_vw {
    static constexpr int n = 16 / (int)sizeof(T);
};
#define ACT_VW(T) (act_vw<T>::n)

static __device__ __forceinline__ float bf16_bits_to_f32(uint32_t h)
{
    return __uint_as_float(h << 16);
}

static __device__ __forceinline__ float act_ld(const float *p, size_t i)
{
    return p[i];
}
static __device__ __forceinline__ float act_ld(const bf16 *p, size_t i)
{
    return bf16_bits_to_f32(reinterpret_cast<const uint16_t *>(p)[i]);
}
static __device__ __forceinline__ void act_st(float *p, size_t i, float x)
{
    p[i] = x;
}
static __device__ __forceinline__ void act_st(bf16 *p, size_t i, float x)
{
    reinterpret_cast<uint16_t *>(p)[i] = f32_to_bf16_rne(x);
}

/* The four 32-bit words of a 16-byte vector, unpacked (v: 4 or 8 floats). */
static __device__ __forceinline__ void act_unpack(const float *, uint4 r, float *v)
{
    v[0] = __uint_as_float(r.x);
    v[1] = __uint_as_float(r.y);
    v[2] = __uint_as_float(r.z);
    v[3] = __uint_as_float(r.w);
}
static __device__ __forceinline__ void act_unpack(const bf16 *, uint4 r, float *v)
{
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int k = 0; k < 4; k++) { /* element 2k in the low half (little endian) */
        v[2 * k] = bf16_bits_to_f32(w[k] & 0xffffu);
        v[2 * k + 1] = bf16_bits_to_f32(w[k] >> 16);
    }
}
static __device__ __forceinline__ uint4 act_pack(const float *, const float *v)
{
    return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                      __float_as_uint(v[3]));
}
static __device__ __forceinline__ uint4 act_pack(const bf16 *, const float *v)
{
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; k++)
        w[k] = (uint32_t)f32_to_bf16_rne(v[2 * k]) | ((uint32_t)f32_to_bf16_rne(v[2 * k + 1]) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
}

template <class T>
static __device__ __forceinline__ void act_ldv(const T *p, float *v)
{
    act_unpack(p, *reinterpret_cast<const uint4 *>(p), v);
}
template <class T>
static __device__ __forceinline__ void act_stv(T *p, const float *v)
{
    *reinterpret_cast<uint4 *>(p) = act_pack(p, v);
}

/* Elements p[0..VW) as fp32: one 16-byte access when VEC, else one at a
 * time (the same values either way). */
template <bool VEC, class T>
static __device__ __forceinline__ void act_ldg(const T *p, float *v)
{
    if (VEC) {
        act_ldv(p, v);
    } else {
#pragma unroll
        for (int u = 0; u < ACT_VW(T); u++)
            v[u] = act_ld(p, u);
    }
}
template <bool VEC, class T>
static __device__ __forceinline__ void act_stg(T *p, const float *v)
{
    if (VEC) {
        act_stv(p, v);
    } else {
#pragma unroll
        for (int u = 0; u < ACT_VW(T); u++)
            act_st(p, u, v[u]);
    }
}

/* n fp32 parameters p[0..n) (n = 4 or 8): float4 accesses when VEC (p
 * 16-byte aligned), else one at a time. */
template <bool VEC, int n>
static __device__ __forceinline__ void par_ldg(const float *p, float *v)
{
#pragma unroll
    for (int k = 0; k < n; k += 4) {
        if (VEC) {
            const float4 f = *reinterpret_cast<const float4 *>(p + k);
            v[k] = f.x;
            v[k + 1] = f.y;
            v[k + 2] = f.z;
            v[k + 3] = f.w;
        } else {
#pragma unroll
            for (int u = 0; u < 4; u++)
                v[k + u] = p[k + u];
        }
    }
}

static __device__ __forceinline__ float4 ld_f4(const float *p)
{
    return *reinterpret_cast<const float4 *>(p);
}

static __device__ __forceinline__ void st_f4(float *p, float4 v)
{
    *reinterpret_cast<float4 *>(p) = v;
}

/* The 16 bytes of act elements p[0..VW) as they lie in memory (bf16:
 * element 2k in the low half of word k; fp32: element k in word k): one
 * access when VEC (p 16-byte aligned), else element by element; the same
 * bits either way. act_stq writes them back the same two ways. */
template <bool VEC, class T>
static __device__ __forceinline__ uint4 act_ldq(const T *p)
{
    if (VEC)
        return *reinterpret_cast<const uint4 *>(p);
    uint32_t w[4];
    if constexpr (sizeof(T) == 2) {
        const uint16_t *h = reinterpret_cast<const uint16_t *>(p);
#pragma unroll
        for (int k = 0; k < 4; k++)
            w[k] = (uint32_t)h[2 * k] | ((uint32_t)h[2 * k + 1] << 16);
    } else {
        const uint32_t *h = reinterpret_cast<const uint32_t *>(p);
#pragma unroll
        for (int k = 0; k < 4; k++)
            w[k] = h[k];
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}
template <bool VEC, class T>
static __device__ __forceinline__ void act_stq(T *p, uint4 r)
{
    if (VEC) {
        *reinterpret_cast<uint4 *>(p) = r;
        return;
    }
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
    if constexpr (sizeof(T) == 2) {
        uint16_t *h = reinterpret_cast<uint16_t *>(p);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            h[2 * k] = (uint16_t)(w[k] & 0xffffu);
            h[2 * k + 1] = (uint16_t)(w[k] >> 16);
        }
    } else {
        uint32_t *h = reinterpret_cast<uint32_t *>(p);
#pragma unroll
        for (int k = 0; k < 4; k++)
            h[k] = w[k];
    }
}

/* ------------------------------------------------------------------ */
/* the op kernels: what each ops_*.cu gives the others and the tables  */
/* ------------------------------------------------------------------ */

/* The entries of both tables on act storage A, templates instantiated for
 * A = float ("cuda") and bf16 ("cuda-bf16") in the file that defines them;
 * the rest serve both tables as they are. Contracts: zinc/ops.h. */

/* ops_matmul.cu: matmul, linear, linear_t (the (out, in) linear and the head) and the fused linear + GELU ops
 * (cuBLASLt). */
void cuda_matmul(float *c, const float *a, const float *b, int m, int n, int k, int ta, int tb,
                 float alpha, float beta);
void cuda_matmul_bf16(float *c, const float *a, const float *b, int m, int n, int k, int ta,
                      int tb, float alpha, float beta);
template <class A>
void cuda_linear_forward(void *out, const void *inp, const float *weight, const float *bias,
                         int N, int C, int OC);
template <class A>
void cuda_linear_backward(void *dinp, float *dweight, float *dbias, const void *dout,
                          const void *inp, const float *weight, int N, int C, int OC);
template <class A>
void cuda_linear_t_forward(void *out, const void *inp, const float *weight, const float *bias, int N, int C, int OC);
template <class A>
void cuda_linear_t_backward(void *dinp, float *dweight, float *dbias, const void *dout, const void *inp,
                            const float *weight, int N, int C, int OC);
template <class A>
void cuda_linear_gelu_forward(void *out, void *pre, const void *inp, const float *weight,
                              const float *bias, int N, int C, int OC);
template <class A>
void cuda_linear_gelu_backward(void *dpre, float *dweight, float *dbias, const void *dout,
                               const void *inp, const void *pre, const float *weight, int N,
                               int C, int OC);

/* ops_colsum.cu: the two-pass column sums. Rows per chunk for N rows
 * (depends on N only). dst(C) += column sums of src(N,C) (act, read as T).
 * The layernorm_backward ones for rows too wide for its fused kernel:
 * dweight(C) += column sums of norm * dout (norm = (inp - mean) rstd) and
 * dbias(C) += those of dout, through part (2, nchunk, C) in the scratch
 * (nchunk: the chunks of N rows). Both return 0 after recording an error. */
int cuda_colsum_rows_per_chunk(int N);
template <class T>
int cuda_colsum_acc(float *dst, const T *src, int N, int C);
template <class T>
int cuda_colsum_ln_acc(float *dweight, float *dbias, float *part, const T *dout, const T *inp,
                       const float *mean, const float *rstd, int N, int C, int rows_per_chunk);

/* ops_elementwise.cu: GELU and residual; gelu_grad_mul: d = gelu'(pre) d
 * in place (the fused linear + GELU backward's fallback). */
template <class A>
void cuda_gelu_forward(void *out, const void *inp, size_t n);
template <class A>
void cuda_gelu_backward(void *dinp, const void *inp, const void *dout, size_t n);
template <class A>
void cuda_gelu_grad_mul(void *d, const void *pre, size_t n);
template <class A>
void cuda_residual_forward(void *out, const void *a, const void *b, size_t n);

/* ops_embedding.cu */
template <class A>
void cuda_embedding_forward(void *out, const int32_t *tokens, const int32_t *pos, const float *wte,
                            const float *wpe, int B, int T, int C, int v0, int V);
template <class A>
void cuda_embedding_backward(float *dwte, float *dwpe, const void *dout, const int32_t *tokens,
                             const int32_t *pos, int B, int T, int C, int v0, int V);

/* ops_layernorm.cu */
template <class A>
void cuda_layernorm_forward(void *out, float *mean, float *rstd, const void *inp,
                            const float *weight, const float *bias, int N, int C);
template <class A>
void cuda_layernorm_backward(void *dinp, float *dweight, float *dbias, const void *dout,
                             const void *inp, const float *weight, const float *mean,
                             const float *rstd, int N, int C);

/* ops_llama.cu: RMSNorm, rotary embeddings, SwiGLU. */
template <class A>
void cuda_rmsnorm_forward(void *out, float *rstd, const void *inp, const float *weight, float eps, int N, int C);
template <class A>
void cuda_rmsnorm_backward(void *dinp, float *dweight, const void *dout, const void *inp, const float *weight,
                           const float *rstd, int N, int C);
template <class A>
void cuda_rope(void *x, int N, int stride, int n_heads, int HS, int T, const int32_t *pos, const float *cos_t,
               const float *sin_t, int dir);
template <class A>
void cuda_swiglu_forward(void *out, const void *gu, int N, int F);
template <class A>
void cuda_swiglu_backward(void *dgu, const void *dout, const void *gu, int N, int F);
template <class A>
void cuda_fill_cols(void *x, int N, int ld, int c0, int c1, float v);

/* ops_lora.cu: LoRA's low-rank path, the dropout on its input. */
template <class A>
void cuda_lora_down(float *t, const void *inp, int ldi, const float *Aw, int N, int C, int r);
template <class A>
void cuda_lora_up(void *out, int ldo, const float *t, const float *Bw, float s, int N, int OC, int r);
template <class A>
void cuda_lora_grad_up(float *dB, float *dt, const void *dout, int ldo, const float *t, const float *Bw, float s,
                       int N, int OC, int r);
template <class A>
void cuda_lora_grad_down(void *dinp, float *dA, const float *dt, const void *inp, int ldi, const float *Aw, int N,
                         int C, int r);
template <class A>
void cuda_dropout_forward(void *out, const void *inp, size_t n, float p, uint64_t seed);
template <class A>
void cuda_dropout_backward(void *dinp, const void *dout, size_t n, float p, uint64_t seed);

/* ops_xent.cu: softmax_xent and its vocab-parallel form. */
template <class A>
void cuda_softmax_xent(float *losses, void *logits, const int32_t *targets, float dloss, int N,
                       int V);
template <class A>
void cuda_xent_vp_max(float *rowmax, const void *logits, int N, int V);
template <class A>
void cuda_xent_vp_sums(float *sums, const void *logits, const int32_t *targets,
                       const float *rowmax, int N, int V, int v0);
template <class A>
void cuda_xent_vp_finish(float *losses, void *logits, const int32_t *targets,
                         const float *rowmax, const float *sums, float dloss, int N, int V,
                         int v0);

/* ops_optim.cu: AdamW, the sums (of squares) for norms, scale. */
void cuda_adamw(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                float beta1, float beta2, float eps, float wd, int t);
double cuda_sumsq(const float *x, size_t n);
double cuda_sum(const float *x, size_t n);
void cuda_scale(float *x, float s, size_t n);

/* ops_precision.cu: memory and precision. */
void cuda_zero(void *p, size_t bytes);
void cuda_copy(void *dst, const void *src, size_t bytes);
void cuda_convert(void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n);
void cuda_add_into(void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n);
void cuda_round_to(float *x, zinc_dtype dt, size_t n);

#endif
