/* ops_cuda.cu - the CUDA op tables: every op of zinc/ops.h on device
 * memory, row-major, same contract as the CPU reference (kernels/cpu).
 * Two tables: "cuda" keeps activations in fp32 and is exact fp32 (the
 * reference "cpu"); "cuda-bf16" keeps them in bf16 (the reference
 * "cpu-bf16"): every op computes in fp32 and rounds each act output once.
 * The act kernels are templates on the storage type (float or bf16), so one
 * source serves both tables.
 *
 * Dense products (matmul, linear, head) go to cuBLASLt with fp32 compute
 * (CUBLAS_COMPUTE_32F, no TF32) and fp32 scale. "cuda": fp32 operands and
 * outputs. "cuda-bf16": the bf16 activations are the tensor-core operands
 * as they lie; the fp32 weights are staged to bf16 copies (stage_bf16),
 * act outputs are bf16 written by cuBLASLt (an accumulating dinp is read as
 * c and rounded once), weight gradients fp32. cuBLASLt is column-major, and
 * a row-major c(m,n) is a column-major c^T(n,m), so c^T = op(b)^T op(a)^T
 * is computed with the operands swapped and each keeping its own transpose
 * flag: no copies. The linear bias rides the BIAS epilogue (one pass over
 * out). Algorithms come from the heuristic once per (shape, transposes,
 * epilogue, types, pointer alignment) and are cached; the alignments go
 * into the preference because cuBLASLt otherwise assumes 256-byte aligned
 * operands, which sub-tensors carved from a slab are not.
 *
 * Every other op is a hand-written kernel on stream 0, written for clarity
 * first (llm.c style) and with a fixed reduction order everywhere: no float
 * atomics, so every result is bitwise reproducible run to run.
 *  - Row ops (layernorm, softmax_xent) split a row into 16-byte groups the
 *    same way whatever the alignment; only whether a group moves in one
 *    access depends on it, so the bits do not. Layernorm: one warp per row
 *    and xor butterflies, whose result is the same in every lane.
 *  - Column sums (bias, layernorm weight/bias gradients) are two-pass: row
 *    chunks whose bounds depend only on N write partials to the scratch
 *    buffer, then they are added in chunk order. layernorm_backward makes
 *    its partials in the same pass as dinp (dout and inp read once).
 *  - The embedding table gradient is owned per (row bucket, column): the
 *    thread for column c and bucket j walks the tokens in order and adds
 *    only rows v with v % buckets == j, so repeated tokens never race and
 *    each row receives its contributions in token order, as on the CPU.
 *  - Attention is flash style (attention_cuda.cu, attention_tc_cuda.cu):
 *    tiled kernels that never write a T x T matrix; forward saves one
 *    log-sum-exp per row.
 *  - softmax_xent: one block per row, three fp32 passes (max, sum of exps,
 *    gradient) with fixed-order block reductions; a bf16 row (98 KiB at V =
 *    50304) waits in shared memory between the passes, so the logits are
 *    read once and written once.
 *  - sumsq: a fixed grid (size from n only) of double partials, then one
 *    block adds them in a fixed tree.
 * Elementwise ops that the CPU writes without FMA (adamw, residual, scale)
 * use explicitly rounded intrinsics, so they match the CPU bitwise.
 * Elementwise ops move 16 bytes of act (4 floats or 8 bf16) per access, or
 * four elements of the precision ops' operands, wherever their operands
 * line up, on a grid as large as the device holds at once (ew_kernel); the
 * arithmetic per element is unchanged.
 *
 * Errors: every foreign call goes through CUDA_TRY / CUBLAS_TRY / LAUNCH_TRY
 * (cuda_int.h); ops return void, so the first failure is kept for
 * zinc_cuda_last_status(). */
#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>

#include <cub/device/device_radix_sort.cuh>
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "zinc/ops_cuda.h"
#include "cuda_int.h"

#define LN_EPS 1e-5f
#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_CUBE 0.044715f

enum {
    EW_BLOCK = 256,            /* threads per block of elementwise kernels */
    ROW_WARPS = 8,             /* warps (rows) per block of warp-per-row kernels */
    COLSUM_MAX_CHUNKS = 64,    /* row chunks of the two-pass column sums */
    COLSUM_MIN_ROWS = 64,      /* fewest rows per chunk */
    EMB_THREADS = 256,         /* threads per block of the embedding table gradient */
    EMB_CHUNK = 64,            /* sorted tokens per block of the embedding table gradient */
    XENT_BLOCK = 512,          /* threads per row of softmax_xent */
    XENT_STASH_MAX = 112 << 10, /* bytes of a row softmax_xent keeps in shared memory
                                  (two blocks fit an SM: 228 KiB on Hopper) */
    LN_BWD_KG = 4,             /* most 16-byte groups per lane of the fused layernorm_backward */
    LN_BWD_MIN_ROWS = 64,      /* fewest rows per block of it */
    LN_BWD_MAX_BLOCKS = 1024,  /* most blocks (partial column sums) of it */
    LN_FIN_Y = 16,             /* chunk slices per column of its finishing sums */
    SUMSQ_BLOCK = 256,
    SUMSQ_MAX_BLOCKS = 1024,
    SUMSQ_MIN_PER_BLOCK = 4096,
    ALGO_CACHE_N = 128,        /* cached cuBLASLt algorithms */
};

/* ------------------------------------------------------------------ */
/* errors and lazy state                                               */
/* ------------------------------------------------------------------ */

static std::mutex err_mu;
static zinc_status err_status = ZINC_OK;
static char err_detail[512];

void cuda_fail(zinc_status s, const char *call, const char *file, int line, const char *msg)
{
    const int call_len = (int)strcspn(call, "(");
    zinc_error(s, "%.*s: %s:%d: %s", call_len, call, file, line, msg ? msg : "?");
    std::lock_guard<std::mutex> lk(err_mu);
    if (err_status == ZINC_OK) {
        err_status = s;
        snprintf(err_detail, sizeof err_detail, "%s", zinc_last_error());
    }
}

extern "C" zinc_status zinc_cuda_last_status(void)
{
    const cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess)
        cuda_fail(ZINC_ERR_CUDA, "cudaDeviceSynchronize", __FILE__, __LINE__,
                  cudaGetErrorString(e));
    std::lock_guard<std::mutex> lk(err_mu);
    const zinc_status s = err_status;
    if (s != ZINC_OK) {
        zinc_error(s, "%s", err_detail);
        err_status = ZINC_OK;
        err_detail[0] = '\0';
    }
    return s;
}

/* What a cuBLASLt algorithm was chosen for. */
struct algo_key {
    int m, n, k, ta, tb, epi, bias, ab, cd; /* epi: LT_EPI_*; ab, cd: LT_F32 or LT_BF16 */
    unsigned al_a, al_b, al_c, al_bias, al_aux;
};

struct algo_entry {
    algo_key key;
    cublasLtMatmulAlgo_t algo;
    int used;
};

static struct {
    std::mutex mu;
    int ready, device;
    cublasLtHandle_t lt;
    void *ws;
    void *scratch;
    size_t scratch_bytes;
    algo_entry cache[ALGO_CACHE_N];
    int cache_next;
} g;

int cuda_state_get(void)
{
    std::lock_guard<std::mutex> lk(g.mu);
    int dev = -1, ok = 0;
    cublasLtHandle_t lt = NULL;
    void *ws = NULL;
    char msg[128];
    CUDA_TRY(cudaGetDevice(&dev));
    if (g.ready) {
        if (dev != g.device) {
            snprintf(msg, sizeof msg, "the CUDA op table is bound to device %d, called on device %d",
                     g.device, dev);
            cuda_fail(ZINC_ERR_CUDA, "zinc_ops_cuda", __FILE__, __LINE__, msg);
            goto cleanup;
        }
        ok = 1;
        goto cleanup;
    }
    CUBLAS_TRY(cublasLtCreate(&lt));
    CUDA_TRY(cudaMalloc(&ws, CUDA_LT_WS_BYTES));
    g.lt = lt;
    g.ws = ws;
    lt = NULL;
    ws = NULL;
    g.device = dev;
    g.ready = 1;
    ok = 1;
cleanup:
    if (ws)
        cudaFree(ws);
    if (lt)
        cublasLtDestroy(lt);
    return ok;
}

cublasLtHandle_t cuda_lt_handle(void)
{
    return g.lt;
}

void *cuda_lt_workspace(void)
{
    return g.ws;
}

void *cuda_scratch(size_t n_bytes)
{
    std::lock_guard<std::mutex> lk(g.mu);
    void *p = NULL;
    const size_t mib = (size_t)1 << 20;
    const size_t want = (n_bytes + mib) / mib * mib; /* > n_bytes, never 0 */
    if (n_bytes <= g.scratch_bytes && g.scratch)
        return g.scratch;
    if (g.scratch) {
        cuda_mem_note(-(long long)g.scratch_bytes);
        g.scratch_bytes = 0;
        CUDA_TRY(cudaFree(g.scratch));
        g.scratch = NULL;
    }
    if (cudaMalloc(&p, want) != cudaSuccess) { /* free the device cache's blocks, retry */
        cudaGetLastError();
        cuda_cache_release();
        CUDA_TRY(cudaMalloc(&p, want));
    }
    g.scratch = p;
    g.scratch_bytes = want;
    cuda_mem_note((long long)want);
cleanup:
    return g.scratch_bytes >= n_bytes ? g.scratch : NULL;
}

/* ------------------------------------------------------------------ */
/* small helpers                                                       */
/* ------------------------------------------------------------------ */

/* Blocks for a grid-stride loop over n elements (n > 0). */
static unsigned ew_grid(size_t n)
{
    const size_t blocks = (n + EW_BLOCK - 1) / EW_BLOCK;
    const size_t cap = (size_t)65535 * 32;
    return (unsigned)(blocks < cap ? blocks : cap);
}

/* Blocks of ROW_WARPS warps for one warp per row over n_rows rows. */
static unsigned row_grid(size_t n_rows)
{
    return (unsigned)((n_rows + ROW_WARPS - 1) / ROW_WARPS);
}

/* Vectorized elementwise ops. An op over n elements runs elements
 * [head, head + W nv) W at a time (Op::W: 4, or 8 for bf16 activations),
 * every operand moved with one access of W elements (16 bytes for fp32 or
 * bf16 act operands, 8 for the 16-bit operands of the precision ops), and
 * the head [0, head) and the tail [head + W nv, n) one at a time. Only the
 * memory access differs: each element gets the same arithmetic (op.one and
 * op.vec share it) whichever way it goes, so results do not depend on
 * alignment. */
struct ew_split {
    size_t head, nv, n;
};

/* head brings operand 0 (element size esz[0]) to a W-element boundary;
 * unless every other operand is then on one of its own, all go one at a
 * time (nv = 0). */
static ew_split ew_plan(size_t n, const void *const *p, const unsigned *esz, int np, unsigned W)
{
    ew_split s = {0, 0, n};
    const uintptr_t a0 = (uintptr_t)p[0], w0 = W * esz[0];
    if (a0 % esz[0])
        return s;
    const size_t head = (size_t)((w0 - a0 % w0) % w0) / esz[0];
    if (head >= n)
        return s;
    for (int k = 1; k < np; k++)
        if (((uintptr_t)p[k] + head * esz[k]) % (W * esz[k]))
            return s;
    s.head = head;
    s.nv = (n - head) / W;
    return s;
}

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

/* Streaming multiprocessors of the current device (the op table is bound
 * to one device), 1 if the query fails. */
static int ew_sms(void)
{
    static const int sms = [] {
        int dev = 0, n = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
            n < 1) {
            (void)cudaGetLastError();
            n = 1;
        }
        return n;
    }();
    return sms;
}

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
    const size_t cap = (size_t)ew_sms() * (size_t)per_sm;
    ew_kernel<Op><<<(unsigned)(want < cap ? want : cap), EW_BLOCK>>>(op, s);
}

/* Sum over the 32 lanes of a warp; every lane gets the same bits. */
__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ------------------------------------------------------------------ */
/* elementwise                                                         */
/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* activation storage: fp32 ("cuda") or bf16 ("cuda-bf16")             */
/* ------------------------------------------------------------------ */

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

__device__ __forceinline__ float bf16_bits_to_f32(uint32_t h)
{
    return __uint_as_float(h << 16);
}

__device__ __forceinline__ float act_ld(const float *p, size_t i)
{
    return p[i];
}
__device__ __forceinline__ float act_ld(const bf16 *p, size_t i)
{
    return bf16_bits_to_f32(reinterpret_cast<const uint16_t *>(p)[i]);
}
__device__ __forceinline__ void act_st(float *p, size_t i, float x)
{
    p[i] = x;
}
__device__ __forceinline__ void act_st(bf16 *p, size_t i, float x)
{
    reinterpret_cast<uint16_t *>(p)[i] = f32_to_bf16_rne(x);
}

/* The four 32-bit words of a 16-byte vector, unpacked (v: 4 or 8 floats). */
__device__ __forceinline__ void act_unpack(const float *, uint4 r, float *v)
{
    v[0] = __uint_as_float(r.x);
    v[1] = __uint_as_float(r.y);
    v[2] = __uint_as_float(r.z);
    v[3] = __uint_as_float(r.w);
}
__device__ __forceinline__ void act_unpack(const bf16 *, uint4 r, float *v)
{
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int k = 0; k < 4; k++) { /* element 2k in the low half (little endian) */
        v[2 * k] = bf16_bits_to_f32(w[k] & 0xffffu);
        v[2 * k + 1] = bf16_bits_to_f32(w[k] >> 16);
    }
}
__device__ __forceinline__ uint4 act_pack(const float *, const float *v)
{
    return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                      __float_as_uint(v[3]));
}
__device__ __forceinline__ uint4 act_pack(const bf16 *, const float *v)
{
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; k++)
        w[k] = (uint32_t)f32_to_bf16_rne(v[2 * k]) | ((uint32_t)f32_to_bf16_rne(v[2 * k + 1]) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
}

template <class T>
__device__ __forceinline__ void act_ldv(const T *p, float *v)
{
    act_unpack(p, *reinterpret_cast<const uint4 *>(p), v);
}
template <class T>
__device__ __forceinline__ void act_stv(T *p, const float *v)
{
    *reinterpret_cast<uint4 *>(p) = act_pack(p, v);
}

/* Elements p[0..VW) as fp32: one 16-byte access when VEC, else one at a
 * time (the same values either way). */
template <bool VEC, class T>
__device__ __forceinline__ void act_ldg(const T *p, float *v)
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
__device__ __forceinline__ void act_stg(T *p, const float *v)
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
__device__ __forceinline__ void par_ldg(const float *p, float *v)
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

/* Whether p is 16-byte aligned (vector accesses). */
static int al16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

/* ------------------------------------------------------------------ */
/* elementwise                                                         */
/* ------------------------------------------------------------------ */

/* c = beta * c, or 0 where beta is 0 (BLAS: c is not read then). */
static __global__ void beta_scale_kernel(float *c, float beta, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        c[i] = beta == 0.0f ? 0.0f : __fmul_rn(beta, c[i]);
}

/* out(N,OC) rows = bias(OC) (bias already of out's type). */
template <class T>
static __global__ void fill_rows_kernel(T *out, const T *bias, int OC, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = bias[i % (size_t)OC];
}

/* tanh(u) = 1 - 2 / (exp(2u) + 1), the CPU reference's form. */
__device__ __forceinline__ float gelu_tanh(float u)
{
    return 1.0f - 2.0f / (expf(2.0f * u) + 1.0f);
}

/* gelu(x), the CPU reference's expression. */
__device__ __forceinline__ float gelu_fwd1(float x)
{
    const float u = GELU_SCALE * (x + GELU_CUBE * x * x * x);
    return 0.5f * x * (1.0f + gelu_tanh(u));
}

/* acc + gelu'(x) d, the expression of dinp[i] += gr * dout[i]. */
__device__ __forceinline__ float gelu_bwd1(float x, float d, float acc)
{
    const float x2 = x * x;
    const float u = GELU_SCALE * (x + GELU_CUBE * x2 * x);
    const float th = gelu_tanh(u);
    const float sech2 = 1.0f - th * th;
    const float gr = 0.5f * (1.0f + th) +
                     0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * GELU_CUBE * x2);
    return acc + gr * d;
}

__device__ __forceinline__ float4 ld_f4(const float *p)
{
    return *reinterpret_cast<const float4 *>(p);
}

__device__ __forceinline__ void st_f4(float *p, float4 v)
{
    *reinterpret_cast<float4 *>(p) = v;
}

template <class T>
struct gelu_fwd_op {
    static constexpr int W = ACT_VW(T);
    T *out;
    const T *inp;
    __device__ void one(size_t i) const { act_st(out, i, gelu_fwd1(act_ld(inp, i))); }
    __device__ void vec(size_t i) const
    {
        float x[W];
        act_ldv(inp + i, x);
#pragma unroll
        for (int u = 0; u < W; u++)
            x[u] = gelu_fwd1(x[u]);
        act_stv(out + i, x);
    }
};

template <class T>
struct gelu_bwd_op {
    static constexpr int W = ACT_VW(T);
    T *dinp;
    const T *inp, *dout;
    __device__ void one(size_t i) const
    {
        act_st(dinp, i, gelu_bwd1(act_ld(inp, i), act_ld(dout, i), act_ld(dinp, i)));
    }
    __device__ void vec(size_t i) const
    {
        float x[W], d[W], a[W];
        act_ldv(inp + i, x);
        act_ldv(dout + i, d);
        act_ldv(dinp + i, a);
#pragma unroll
        for (int u = 0; u < W; u++)
            a[u] = gelu_bwd1(x[u], d[u], a[u]);
        act_stv(dinp + i, a);
    }
};

/* d = gelu'(pre) d, in place (the fused linear + GELU backward's fallback). */
template <class T>
struct gelu_grad_mul_op {
    static constexpr int W = ACT_VW(T);
    T *d;
    const T *pre;
    __device__ void one(size_t i) const
    {
        act_st(d, i, gelu_bwd1(act_ld(pre, i), act_ld(d, i), 0.0f));
    }
    __device__ void vec(size_t i) const
    {
        float x[W], g[W];
        act_ldv(pre + i, x);
        act_ldv(d + i, g);
#pragma unroll
        for (int u = 0; u < W; u++)
            g[u] = gelu_bwd1(x[u], g[u], 0.0f);
        act_stv(d + i, g);
    }
};

/* out may alias a or b: each element is read before it is written. */
template <class T>
struct residual_op {
    static constexpr int W = ACT_VW(T);
    T *out;
    const T *a, *b;
    __device__ void one(size_t i) const { act_st(out, i, __fadd_rn(act_ld(a, i), act_ld(b, i))); }
    __device__ void vec(size_t i) const
    {
        float x[W], y[W];
        act_ldv(a + i, x);
        act_ldv(b + i, y);
#pragma unroll
        for (int u = 0; u < W; u++)
            x[u] = __fadd_rn(x[u], y[u]);
        act_stv(out + i, x);
    }
};

struct scale_op {
    static constexpr int W = 4;
    float *x;
    float s;
    __device__ void one(size_t i) const { x[i] = __fmul_rn(x[i], s); }
    __device__ void vec(size_t i) const
    {
        const float4 v = ld_f4(x + i);
        st_f4(x + i, make_float4(__fmul_rn(v.x, s), __fmul_rn(v.y, s), __fmul_rn(v.z, s),
                                 __fmul_rn(v.w, s)));
    }
};

/* The CPU's AdamW, operation for operation (rounded intrinsics keep nvcc
 * from fusing multiply-adds the CPU does not fuse). */
static __global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n,
                             float lr, float beta1, float beta2, float eps, float wd,
                             float ibc1, float ibc2)
{
    const float omb1 = __fsub_rn(1.0f, beta1), omb2 = __fsub_rn(1.0f, beta2);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float gi = grad[i];
        const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(omb1, gi));
        const float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(omb2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        const float p = param[i];
        const float den = __fadd_rn(__fsqrt_rn(__fmul_rn(vi, ibc2)), eps);
        const float upd = __fadd_rn(__fdiv_rn(__fmul_rn(mi, ibc1), den), __fmul_rn(wd, p));
        param[i] = __fsub_rn(p, __fmul_rn(lr, upd));
    }
}

/* ------------------------------------------------------------------ */
/* column sums (two passes, deterministic)                             */
/* ------------------------------------------------------------------ */

/* Rows per chunk for N rows; depends on N only, so the summation order
 * (hence the bits) is fixed for a shape. */
static int colsum_rows_per_chunk(int N)
{
    int rpc = (N + COLSUM_MAX_CHUNKS - 1) / COLSUM_MAX_CHUNKS;
    return rpc < COLSUM_MIN_ROWS ? COLSUM_MIN_ROWS : rpc;
}

/* Pass 1. grid (ceil(C/32), nchunk), block (32, 8). part (Q, nchunk, C):
 * LN false: Q = 1, column sums of dout(N,C);
 * LN true:  Q = 2, sums of norm * dout (norm = (inp - mean) rstd) and of dout. */
template <bool LN, class T>
static __global__ void colsum_partial_kernel(float *part, const T *dout, const T *inp,
                                             const float *mean, const float *rstd, int N, int C,
                                             int rows_per_chunk)
{
    __shared__ float s0[8][33], s1[8][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * 32 + tx;
    const int r0 = blockIdx.y * rows_per_chunk;
    const int r1 = min(N, r0 + rows_per_chunk);
    float a0 = 0.0f, a1 = 0.0f;
    if (c < C) {
        for (int r = r0 + ty; r < r1; r += 8) {
            const float dy = act_ld(dout, (size_t)r * C + c);
            if (LN) {
                a0 += (act_ld(inp, (size_t)r * C + c) - mean[r]) * rstd[r] * dy;
                a1 += dy;
            } else {
                a0 += dy;
            }
        }
    }
    s0[ty][tx] = a0;
    s1[ty][tx] = a1;
    __syncthreads();
    if (ty == 0 && c < C) {
        float t0 = 0.0f, t1 = 0.0f;
        for (int y = 0; y < 8; y++) {
            t0 += s0[y][tx];
            t1 += s1[y][tx];
        }
        part[(size_t)blockIdx.y * C + c] = t0;
        if (LN)
            part[((size_t)gridDim.y + blockIdx.y) * C + c] = t1;
    }
}

/* Pass 2. dst(C) += sum over chunks of part(nchunk, C), chunks in order. */
static __global__ void colsum_finish_kernel(float *dst, const float *part, int nchunk, int C)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    float s = 0.0f;
    for (int k = 0; k < nchunk; k++)
        s += part[(size_t)k * C + c];
    dst[c] += s;
}

/* dst(C) += column sums of src(N,C) (act, read as T). Returns 0 after
 * recording an error. */
template <class T>
static int colsum_acc(float *dst, const T *src, int N, int C)
{
    const int rpc = colsum_rows_per_chunk(N);
    const int nchunk = (N + rpc - 1) / rpc;
    const dim3 grid((unsigned)((C + 31) / 32), (unsigned)nchunk), block(32, 8);
    int ok = 0;
    float *part = (float *)cuda_scratch((size_t)nchunk * C * sizeof(float));
    if (!part)
        goto cleanup;
    colsum_partial_kernel<false, T><<<grid, block>>>(part, src, NULL, NULL, NULL, N, C, rpc);
    LAUNCH_TRY(colsum_partial_kernel);
    colsum_finish_kernel<<<(C + 255) / 256, 256>>>(dst, part, nchunk, C);
    LAUNCH_TRY(colsum_finish_kernel);
    ok = 1;
cleanup:
    return ok;
}

/* ------------------------------------------------------------------ */
/* matmul and linear (cuBLASLt)                                        */
/* ------------------------------------------------------------------ */

/* Largest power of two (2..16) that divides the address. Capped at 16, the
 * most any cuBLASLt kernel asks for: activations carved at 64-byte steps
 * would otherwise make several cache keys of one shape, and a miss costs
 * a heuristic query on the host (tens of microseconds) every product. */
static unsigned ptr_align(const void *p)
{
    const uintptr_t a = (uintptr_t)p;
    unsigned al = 16;
    while (al > 2 && a % al)
        al >>= 1;
    return al;
}

static int algo_key_eq(const algo_key *x, const algo_key *y)
{
    return x->m == y->m && x->n == y->n && x->k == y->k && x->ta == y->ta && x->tb == y->tb &&
           x->epi == y->epi && x->bias == y->bias && x->ab == y->ab && x->cd == y->cd &&
           x->al_a == y->al_a && x->al_b == y->al_b && x->al_c == y->al_c &&
           x->al_bias == y->al_bias && x->al_aux == y->al_aux;
}

static int algo_cache_find(const algo_key *key, cublasLtMatmulAlgo_t *algo)
{
    std::lock_guard<std::mutex> lk(g.mu);
    for (int i = 0; i < ALGO_CACHE_N; i++) {
        if (g.cache[i].used && algo_key_eq(&g.cache[i].key, key)) {
            *algo = g.cache[i].algo;
            return 1;
        }
    }
    return 0;
}

static void algo_cache_put(const algo_key *key, const cublasLtMatmulAlgo_t *algo)
{
    std::lock_guard<std::mutex> lk(g.mu);
    algo_entry *e = &g.cache[g.cache_next];
    g.cache_next = (g.cache_next + 1) % ALGO_CACHE_N;
    e->key = *key;
    e->algo = *algo;
    e->used = 1;
}

/* ZINC_CUDA_AUTOTUNE=1: the first product of each shape times cuBLASLt's
 * best few candidate algorithms and keeps the fastest, instead of taking
 * the heuristic's first. Off by default: the choice depends on timing, so
 * two runs may pick different algorithms and differ in the last bits. */
static int lt_autotune(void)
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("ZINC_CUDA_AUTOTUNE");
        on = v && atoi(v) > 0;
    }
    return on;
}

/* Times up to 8 heuristic candidates (median of 3 after a warm-up) on a
 * scratch copy of c (c_bytes) and sets *algo to the fastest. Best effort:
 * any failure keeps the heuristic's choice; nothing is recorded. */
static void lt_tune(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                    cublasLtMatrixLayout_t lc, cublasLtMatmulPreference_t pref, const void *a,
                    const void *b, const void *c, size_t c_bytes, const float *alpha,
                    const float *beta, cublasLtMatmulAlgo_t *algo)
{
    enum { N_CAND = 8, REPS = 3 };
    cublasLtMatmulHeuristicResult_t cand[N_CAND];
    int n = 0;
    void *tmp = NULL;
    float best_ms = 1e30f;
    cudaEvent_t e0 = NULL, e1 = NULL;
    if (cublasLtMatmulAlgoGetHeuristic(cuda_lt_handle(), op, la, lb, lc, lc, pref, N_CAND, cand,
                                       &n) != CUBLAS_STATUS_SUCCESS || n < 2)
        return;
    if (cudaMalloc(&tmp, c_bytes) != cudaSuccess || cudaEventCreate(&e0) != cudaSuccess ||
        cudaEventCreate(&e1) != cudaSuccess)
        goto done;
    if (cudaMemcpyAsync(tmp, c, c_bytes, cudaMemcpyDeviceToDevice, 0) != cudaSuccess)
        goto done;
    for (int i = 0; i < n; i++) {
        float t[REPS];
        int ok = cand[i].state == CUBLAS_STATUS_SUCCESS;
        for (int r = -1; ok && r < REPS; r++) {
            cudaEventRecord(e0, 0);
            ok = cublasLtMatmul(cuda_lt_handle(), op, alpha, b, la, a, lb, beta, tmp, lc, tmp, lc,
                                &cand[i].algo, cuda_lt_workspace(), CUDA_LT_WS_BYTES, 0) ==
                 CUBLAS_STATUS_SUCCESS;
            cudaEventRecord(e1, 0);
            if (ok && cudaEventSynchronize(e1) == cudaSuccess && r >= 0)
                cudaEventElapsedTime(&t[r], e0, e1);
        }
        if (!ok)
            continue;
        for (int x = 1; x < REPS; x++) /* median of REPS */
            for (int y = x; y > 0 && t[y] < t[y - 1]; y--) {
                const float s = t[y];
                t[y] = t[y - 1];
                t[y - 1] = s;
            }
        if (t[REPS / 2] < best_ms) {
            best_ms = t[REPS / 2];
            *algo = cand[i].algo;
        }
    }
done:
    cudaGetLastError(); /* tuning is best effort: leave no error behind */
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    cudaFree(tmp);
}

/* Operand types of a product: a and b share one, c (= d) and the bias
 * have one. */
enum { LT_F32 = 0, LT_BF16 = 1 };

static cudaDataType_t lt_type(int dt)
{
    return dt == LT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

/* The epilogue of a product (cuBLASLt applies it to the fp32 result before
 * rounding to c's type). LT_EPI_GELU: c = gelu(p [+ bias]); LT_EPI_GELU_AUX:
 * the same, and aux (shaped as c) = p [+ bias]; LT_EPI_DGELU: c = p *
 * gelu'(aux), aux read (beta must be 0). bias: NULL or (n) of c's type. */
enum { LT_EPI_NONE, LT_EPI_GELU, LT_EPI_GELU_AUX, LT_EPI_DGELU };
struct lt_epi {
    int kind;
    const void *bias;
    void *aux;
};

static cublasLtEpilogue_t lt_epilogue(const lt_epi *ep)
{
    const int bias = ep && ep->bias;
    switch (ep ? ep->kind : LT_EPI_NONE) {
    case LT_EPI_GELU:
        return bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
    case LT_EPI_GELU_AUX:
        return bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    case LT_EPI_DGELU:
        return CUBLASLT_EPILOGUE_DGELU;
    default:
        return bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    }
}

/* Row-major c(m,n) = epilogue(alpha op(a) op(b) + beta c) (ep NULL: none),
 * as column-major c^T(n,m) = op(b)^T op(a)^T: cuBLASLt's A is our b, its B
 * our a. a and b hold ab (LT_F32 / LT_BF16) elements, c and the bias cd;
 * compute and scale types are fp32 (CUBLAS_COMPUTE_32F: no TF32, and a bf16
 * c is read, combined in fp32 and rounded once). m, n, k > 0; requires
 * cuda_state_get() == 1.
 * Returns 1 when done, 0 when cuBLASLt has no algorithm for these arguments
 * (nothing recorded: the caller may fall back), -1 after recording an error. */
static int lt_matmul(void *c, const void *a, const void *b, int m, int n, int k, int ta, int tb,
                     float alpha, float beta, const lt_epi *ep, int ab, int cd)
{
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    cublasLtMatmulAlgo_t algo;
    cublasStatus_t hs;
    const cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const void *bias = ep ? ep->bias : NULL;
    void *aux = ep && ep->kind != LT_EPI_GELU ? ep->aux : NULL;
    const int64_t aux_ld = n;
    const cublasLtEpilogue_t epi = lt_epilogue(ep);
    const uint64_t ws_bytes = CUDA_LT_WS_BYTES;
    const algo_key key = {m, n, k, ta, tb, ep ? ep->kind : LT_EPI_NONE, bias != NULL, ab, cd,
                          ptr_align(a), ptr_align(b), ptr_align(c),
                          bias ? ptr_align(bias) : 0u, aux ? ptr_align(aux) : 0u};
    const cudaDataType_t abtype = lt_type(ab), cdtype = lt_type(cd);
    const size_t c_bytes = (size_t)m * n * (cd == LT_BF16 ? 2 : 4);
    /* cuBLASLt's A = our b: stored (k,n) row-major = (n,k) column-major, or
     * (n,k) row-major = (k,n) column-major when tb. Its B = our a likewise. */
    const uint64_t a_rows = tb ? k : n, a_cols = tb ? n : k;
    const uint64_t b_rows = ta ? m : k, b_cols = ta ? k : m;
    int nres = 0, rc = -1;
    memset(&res, 0, sizeof res);

    CUBLAS_TRY(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (epi != CUBLASLT_EPILOGUE_DEFAULT)
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                  sizeof epi));
    if (bias) /* the bias has d's type (cuBLASLt's default for non-fp8 products) */
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                  sizeof bias));
    if (aux) { /* shaped as c (column-major n x m); its type defaults to d's */
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                  &aux, sizeof aux));
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                                  &aux_ld, sizeof aux_ld));
    }
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&la, abtype, a_rows, a_cols, (int64_t)a_rows));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lb, abtype, b_rows, b_cols, (int64_t)b_rows));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lc, cdtype, (uint64_t)n, (uint64_t)m, n));

    if (!algo_cache_find(&key, &algo)) {
        CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&pref));
        CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes));
        CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.al_b, sizeof key.al_b));
        CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.al_a, sizeof key.al_a));
        CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.al_c, sizeof key.al_c));
        CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.al_c, sizeof key.al_c));
        /* "no algorithm" comes back as NOT_SUPPORTED or as zero results */
        hs = cublasLtMatmulAlgoGetHeuristic(cuda_lt_handle(), op, la, lb, lc, lc, pref, 1, &res,
                                            &nres);
        if (hs == CUBLAS_STATUS_NOT_SUPPORTED || (hs == CUBLAS_STATUS_SUCCESS && nres == 0)) {
            rc = 0;
            goto cleanup;
        }
        if (hs != CUBLAS_STATUS_SUCCESS) {
            cuda_fail(ZINC_ERR_CUDA, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__,
                      cublasGetStatusString(hs));
            goto cleanup;
        }
        algo = res.algo;
        if (lt_autotune())
            lt_tune(op, la, lb, lc, pref, a, b, c, c_bytes, &alpha, &beta, &algo);
        algo_cache_put(&key, &algo);
    }
    CUBLAS_TRY(cublasLtMatmul(cuda_lt_handle(), op, &alpha, b, la, a, lb, &beta, c, lc, c, lc,
                              &algo, cuda_lt_workspace(), CUDA_LT_WS_BYTES, 0));
    rc = 1;
cleanup:
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (lc)
        cublasLtMatrixLayoutDestroy(lc);
    if (lb)
        cublasLtMatrixLayoutDestroy(lb);
    if (la)
        cublasLtMatrixLayoutDestroy(la);
    if (op)
        cublasLtMatmulDescDestroy(op);
    return rc;
}

/* lt_matmul without a bias; "no algorithm" becomes a recorded error.
 * Returns 1 when done, 0 after recording an error. */
static int gemm(void *c, const void *a, const void *b, int m, int n, int k, int ta, int tb,
                float alpha, float beta, int ab, int cd)
{
    const int rc = lt_matmul(c, a, b, m, n, k, ta, tb, alpha, beta, NULL, ab, cd);
    if (rc == 0) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "no cuBLASLt algorithm for m=%d n=%d k=%d ta=%d tb=%d ab=%s cd=%s", m, n, k, ta,
                 tb, ab == LT_BF16 ? "bf16" : "f32", cd == LT_BF16 ? "bf16" : "f32");
        cuda_fail(ZINC_ERR_CUDA, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__, msg);
    }
    return rc == 1;
}

/* fp32 -> bf16, round to nearest even; 4 elements per access when vec
 * (src 16-byte aligned; dst is the scratch, 256-byte aligned). */
static __global__ void to_bf16_kernel(uint16_t *dst, const float *src, size_t n, int vec)
{
    const size_t n4 = vec ? n / 4 : 0;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += stride) {
        const float4 v = reinterpret_cast<const float4 *>(src)[i];
        uint2 o;
        o.x = (uint32_t)f32_to_bf16_rne(v.x) | ((uint32_t)f32_to_bf16_rne(v.y) << 16);
        o.y = (uint32_t)f32_to_bf16_rne(v.z) | ((uint32_t)f32_to_bf16_rne(v.w) << 16);
        reinterpret_cast<uint2 *>(dst)[i] = o;
    }
    for (size_t i = n4 * 4 + blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = f32_to_bf16_rne(src[i]);
}

/* Converts up to three fp32 operands (NULL or empty skipped: out[i] NULL)
 * to bf16 copies in the shared scratch, each 256-byte aligned; out[i]
 * receives each copy. The copies live until the next op takes the scratch
 * (stream order keeps them valid for the products enqueued after this).
 * Parameters only: they hold bf16-representable values in bf16 training,
 * and are small next to the activations. Returns 1, or 0 after recording
 * an error. */
static int stage_bf16(const float *const *src, const size_t *n, int count, const void **out)
{
    size_t total = 0, off[3];
    char *base;
    assert(count <= 3);
    for (int i = 0; i < count; i++) {
        out[i] = NULL;
        off[i] = total;
        total += src[i] ? (n[i] * 2 + 255) / 256 * 256 : 0;
    }
    base = (char *)cuda_scratch(total);
    if (!base)
        return 0;
    for (int i = 0; i < count; i++) {
        if (!src[i] || !n[i])
            continue;
        to_bf16_kernel<<<ew_grid(n[i] / 4 + 1), EW_BLOCK>>>((uint16_t *)(base + off[i]), src[i],
                                                             n[i], al16(src[i]));
        LAUNCH_TRY(to_bf16_kernel);
        out[i] = base + off[i];
    }
    return 1;
cleanup:
    return 0;
}

/* The matmul op (all fp32 on both tables): exact fp32 products, or (bf16
 * table) operands rounded to bf16 copies, fp32 accumulation and c (exact
 * fp32 where cuBLASLt has no bf16 algorithm for the shape). */
static void matmul_impl(float *c, const float *a, const float *b, int m, int n, int k,
                        int trans_a, int trans_b, float alpha, float beta, int bf16_ops)
{
    assert(c && a && b && m >= 0 && n >= 0 && k >= 0);
    if (m == 0 || n == 0)
        return;
    if (k == 0) { /* the product is empty: c = beta c */
        beta_scale_kernel<<<ew_grid((size_t)m * n), EW_BLOCK>>>(c, beta, (size_t)m * n);
        LAUNCH_TRY(beta_scale_kernel);
        goto cleanup;
    }
    if (!cuda_state_get())
        goto cleanup;
    if (bf16_ops) {
        const float *src[2] = {a, b};
        const size_t cnt[2] = {(size_t)m * k, (size_t)k * n};
        const void *h[2] = {NULL, NULL};
        if (!stage_bf16(src, cnt, 2, h) ||
            lt_matmul(c, h[0], h[1], m, n, k, trans_a, trans_b, alpha, beta, NULL, LT_BF16,
                      LT_F32) != 0)
            goto cleanup; /* done, or an error was recorded */
        /* no bf16 algorithm for this shape: the exact product below */
    }
    gemm(c, a, b, m, n, k, trans_a, trans_b, alpha, beta, LT_F32, LT_F32);
cleanup:
    return;
}

static void cuda_matmul(float *c, const float *a, const float *b, int m, int n, int k, int ta,
                        int tb, float alpha, float beta)
{
    matmul_impl(c, a, b, m, n, k, ta, tb, alpha, beta, 0);
}
static void cuda_matmul_bf16(float *c, const float *a, const float *b, int m, int n, int k,
                             int ta, int tb, float alpha, float beta)
{
    matmul_impl(c, a, b, m, n, k, ta, tb, alpha, beta, 1);
}

/* --- table "cuda": act fp32, exact fp32 products --- */

/* out(N,OC) = inp(N,C) @ weight(C,OC) + bias(OC). The bias goes through
 * the BIAS epilogue when its pointer is 16-byte aligned and cuBLASLt has an
 * algorithm for it; otherwise out is filled with bias rows and the product
 * accumulates (beta = 1), as the CPU does. */
static void cuda_linear_forward(void *out_, const void *inp, const float *weight,
                                const float *bias, int N, int C, int OC)
{
    float *out = (float *)out_;
    int rc = 0;
    assert(out && inp && weight && N >= 0 && C > 0 && OC > 0);
    if (N == 0)
        return;
    if (!cuda_state_get())
        goto cleanup;
    if (bias && ptr_align(bias) >= 16) {
        const lt_epi ep = {LT_EPI_NONE, bias, NULL};
        rc = lt_matmul(out, inp, weight, N, OC, C, 0, 0, 1.0f, 0.0f, &ep, LT_F32, LT_F32);
        if (rc != 0)
            goto cleanup; /* done, or an error was recorded */
    }
    if (bias) {
        fill_rows_kernel<float><<<ew_grid((size_t)N * OC), EW_BLOCK>>>(out, bias, OC,
                                                                       (size_t)N * OC);
        LAUNCH_TRY(fill_rows_kernel);
    }
    gemm(out, inp, weight, N, OC, C, 0, 0, 1.0f, bias ? 1.0f : 0.0f, LT_F32, LT_F32);
cleanup:
    return;
}

/* dinp(N,C) += dout(N,OC) @ weight(C,OC)^T; dweight(C,OC) += inp^T @ dout;
 * dbias(OC) += column sums of dout (two-pass, deterministic). */
static void cuda_linear_backward(void *dinp, float *dweight, float *dbias, const void *dout,
                                 const void *inp, const float *weight, int N, int C, int OC)
{
    assert(dweight && dout && inp && weight && N >= 0 && C > 0 && OC > 0);
    if (N == 0 || !cuda_state_get())
        return;
    if (dinp && !gemm(dinp, dout, weight, N, C, OC, 0, 1, 1.0f, 1.0f, LT_F32, LT_F32))
        return;
    if (!gemm(dweight, inp, dout, C, OC, N, 1, 0, 1.0f, 1.0f, LT_F32, LT_F32))
        return;
    if (dbias)
        colsum_acc(dbias, (const float *)dout, N, OC);
}

/* logits(N,V) = inp(N,C) @ wte(V,C)^T. */
static void cuda_head_forward(void *logits, const void *inp, const float *wte, int N, int C,
                              int V)
{
    assert(logits && inp && wte && N >= 0 && C > 0 && V > 0);
    if (N == 0 || !cuda_state_get())
        return;
    gemm(logits, inp, wte, N, V, C, 0, 1, 1.0f, 0.0f, LT_F32, LT_F32);
}

/* dinp(N,C) += dlogits(N,V) @ wte(V,C); dwte(V,C) += dlogits^T @ inp. */
static void cuda_head_backward(void *dinp, float *dwte, const void *dlogits, const void *inp,
                               const float *wte, int N, int C, int V)
{
    assert(dwte && dlogits && inp && wte && N >= 0 && C > 0 && V > 0);
    if (N == 0 || !cuda_state_get())
        return;
    if (dinp && !gemm(dinp, dlogits, wte, N, C, V, 0, 0, 1.0f, 1.0f, LT_F32, LT_F32))
        return;
    gemm(dwte, dlogits, inp, V, C, N, 1, 0, 1.0f, 1.0f, LT_F32, LT_F32);
}

/* --- table "cuda-bf16": act bf16 read directly as tensor-core operands;
 * fp32 parameters staged to bf16 copies (stage_bf16); fp32 accumulation;
 * bf16 outputs rounded once by cuBLASLt (a bf16 c is read and combined in
 * fp32 when beta = 1). --- */

/* out(N,OC) bf16 = inp(N,C) bf16 @ weight + bias, bias staged to bf16 and
 * added by the BIAS epilogue (bias type = d type); without an epilogue
 * algorithm out is filled with the bf16 bias rows and the product
 * accumulates (beta = 1), so the sum is still rounded once. */
static void cuda_linear_forward_bf16(void *out, const void *inp, const float *weight,
                                     const float *bias, int N, int C, int OC)
{
    const float *src[2] = {weight, bias};
    const size_t cnt[2] = {(size_t)C * OC, (size_t)OC};
    const void *h[2] = {NULL, NULL};
    int rc = 0;
    assert(out && inp && weight && N >= 0 && C > 0 && OC > 0);
    if (N == 0 || !cuda_state_get() || !stage_bf16(src, cnt, 2, h))
        return;
    if (h[1]) {
        const lt_epi ep = {LT_EPI_NONE, h[1], NULL};
        rc = lt_matmul(out, inp, h[0], N, OC, C, 0, 0, 1.0f, 0.0f, &ep, LT_BF16, LT_BF16);
        if (rc != 0)
            return; /* done, or an error was recorded */
        fill_rows_kernel<bf16><<<ew_grid((size_t)N * OC), EW_BLOCK>>>(
            (bf16 *)out, (const bf16 *)h[1], OC, (size_t)N * OC);
        LAUNCH_TRY(fill_rows_kernel);
    }
    gemm(out, inp, h[0], N, OC, C, 0, 0, 1.0f, h[1] ? 1.0f : 0.0f, LT_BF16, LT_BF16);
cleanup:
    return;
}

/* dinp(N,C) bf16 += dout @ weight^T (c = d bf16, beta 1: one rounding);
 * dweight(C,OC) fp32 += inp^T @ dout (bf16 operands, fp32 c); dbias fp32
 * += column sums of the bf16 dout. The weight is staged once, only for
 * dinp. */
static void cuda_linear_backward_bf16(void *dinp, float *dweight, float *dbias, const void *dout,
                                      const void *inp, const float *weight, int N, int C, int OC)
{
    const float *src[1] = {weight};
    const size_t cnt[1] = {(size_t)C * OC};
    const void *h[1] = {NULL};
    assert(dweight && dout && inp && weight && N >= 0 && C > 0 && OC > 0);
    if (N == 0 || !cuda_state_get())
        return;
    if (dinp) {
        if (!stage_bf16(src, cnt, 1, h) ||
            !gemm(dinp, dout, h[0], N, C, OC, 0, 1, 1.0f, 1.0f, LT_BF16, LT_BF16))
            return;
    }
    if (!gemm(dweight, inp, dout, C, OC, N, 1, 0, 1.0f, 1.0f, LT_BF16, LT_F32))
        return;
    /* the column sums take the scratch after the products are enqueued:
     * stream order keeps the staged weight valid for them */
    if (dbias)
        colsum_acc(dbias, (const bf16 *)dout, N, OC);
}

/* logits(N,V) bf16 = inp(N,C) bf16 @ wte(V,C)^T, wte staged to bf16. */
static void cuda_head_forward_bf16(void *logits, const void *inp, const float *wte, int N, int C,
                                   int V)
{
    const float *src[1] = {wte};
    const size_t cnt[1] = {(size_t)V * C};
    const void *h[1] = {NULL};
    assert(logits && inp && wte && N >= 0 && C > 0 && V > 0);
    if (N == 0 || !cuda_state_get() || !stage_bf16(src, cnt, 1, h))
        return;
    gemm(logits, inp, h[0], N, V, C, 0, 1, 1.0f, 0.0f, LT_BF16, LT_BF16);
}

/* dinp(N,C) bf16 += dlogits(N,V) @ wte (c = d bf16, beta 1); dwte(V,C)
 * fp32 += dlogits^T @ inp (bf16 operands, fp32 c). */
static void cuda_head_backward_bf16(void *dinp, float *dwte, const void *dlogits,
                                    const void *inp, const float *wte, int N, int C, int V)
{
    const float *src[1] = {wte};
    const size_t cnt[1] = {(size_t)V * C};
    const void *h[1] = {NULL};
    assert(dwte && dlogits && inp && wte && N >= 0 && C > 0 && V > 0);
    if (N == 0 || !cuda_state_get())
        return;
    if (dinp) {
        if (!stage_bf16(src, cnt, 1, h) ||
            !gemm(dinp, dlogits, h[0], N, C, V, 0, 0, 1.0f, 1.0f, LT_BF16, LT_BF16))
            return;
    }
    gemm(dwte, dlogits, inp, V, C, N, 1, 0, 1.0f, 1.0f, LT_BF16, LT_F32);
}

/* ------------------------------------------------------------------ */
/* embedding                                                           */
/* ------------------------------------------------------------------ */

/* out(B,T,C) = wte[tokens[b,t]] + wpe[t]; one thread per element. */
template <class T>
static __global__ void embedding_forward_kernel(T *out, const int32_t *tokens, const float *wte,
                                                const float *wpe, int Tn, int C, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t bt = i / (size_t)C;
        const int c = (int)(i % (size_t)C);
        const int t = (int)(bt % (size_t)Tn);
        const int32_t tok = tokens[bt];
        assert(tok >= 0);
        act_st(out, i, wte[(size_t)tok * C + c] + wpe[(size_t)t * C + c]);
    }
}

/* pos[i] = i: the positions that the radix sort orders by token. */
static __global__ void iota_kernel(int32_t *pos, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        pos[i] = i;
}

/* dwte(V,C) += dout rows by token, from the positions sorted by token
 * (stable: ascending position within a token), in two kernels so that a
 * token that fills much of the batch (the space of source code) is summed
 * by many blocks, and every sum has a fixed order (no atomics).
 * The sorted entries are cut into chunks of EMB_CHUNK; a chunk's entries
 * fall into segments of equal tokens. Kernel 1, block per chunk: a
 * segment that is a whole run (its token appears nowhere else) is summed,
 * in position order, and added to dwte at once; the chunk's first and last
 * segments, when their run crosses into the previous or next chunk, are
 * stored as the chunk's partials first[c] and last[c] instead. Kernel 2,
 * block per chunk where a crossing run starts: last[c] + first[c+1] + ...
 * in chunk order, added to dwte once. */
template <class T>
static __global__ void __launch_bounds__(EMB_THREADS)
    emb_wte_chunk_kernel(float *dwte, float *first, float *last, const T *dout,
                         const int32_t *tok_sorted, const int32_t *pos_sorted, int BT, int C)
{
    __shared__ int32_t tok_s[EMB_CHUNK], pos_s[EMB_CHUNK];
    const int c = blockIdx.x, lo = c * EMB_CHUNK, hi = min(lo + EMB_CHUNK, BT), n = hi - lo;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        tok_s[i] = tok_sorted[lo + i];
        pos_s[i] = pos_sorted[lo + i];
    }
    __syncthreads();
    const int cont_prev = lo > 0 && tok_sorted[lo - 1] == tok_s[0];
    const int cont_next = hi < BT && tok_sorted[hi] == tok_s[n - 1];
    for (int col = threadIdx.x; col < C; col += blockDim.x) {
        for (int s0 = 0; s0 < n;) {
            const int32_t tok = tok_s[s0];
            int e = s0 + 1;
            while (e < n && tok_s[e] == tok)
                e++;
            float acc = 0.0f;
            int j = s0;
            for (; j + 4 <= e; j += 4) { /* four independent loads in flight */
                const float v0 = act_ld(dout, (size_t)pos_s[j] * C + col);
                const float v1 = act_ld(dout, (size_t)pos_s[j + 1] * C + col);
                const float v2 = act_ld(dout, (size_t)pos_s[j + 2] * C + col);
                const float v3 = act_ld(dout, (size_t)pos_s[j + 3] * C + col);
                acc += v0;
                acc += v1;
                acc += v2;
                acc += v3;
            }
            for (; j < e; j++)
                acc += act_ld(dout, (size_t)pos_s[j] * C + col);
            const int is_first = s0 == 0, is_last = e == n;
            if ((is_first && cont_prev) || (is_last && cont_next)) {
                if (is_first)
                    first[(size_t)c * C + col] = acc;
                if (is_last)
                    last[(size_t)c * C + col] = acc;
            } else {
                dwte[(size_t)tok * C + col] += acc;
            }
            s0 = e;
        }
    }
}

static __global__ void __launch_bounds__(EMB_THREADS)
    emb_wte_cross_kernel(float *dwte, const float *first, const float *last,
                         const int32_t *tok_sorted, int BT, int C)
{
    const int c = blockIdx.x, lo = c * EMB_CHUNK, hi = min(lo + EMB_CHUNK, BT);
    const int32_t t = tok_sorted[hi - 1];
    if (hi >= BT || tok_sorted[hi] != t) /* the chunk's last run ends here */
        return;
    if (lo > 0 && tok_sorted[lo - 1] == t) /* sorted: the run began in an earlier chunk */
        return;
    for (int col = threadIdx.x; col < C; col += blockDim.x) {
        float acc = last[(size_t)c * C + col];
        for (int c2 = c + 1;; c2++) { /* chunk c2 begins with t */
            acc += first[(size_t)c2 * C + col];
            const int hi2 = min((c2 + 1) * EMB_CHUNK, BT);
            if (!(hi2 < BT && tok_sorted[hi2 - 1] == t && tok_sorted[hi2] == t))
                break; /* the run ends in chunk c2 */
        }
        dwte[(size_t)t * C + col] += acc;
    }
}

/* dwpe(T,C) += sum over b of dout(B,T,C)[b], b in order; thread per (t, c). */
template <class T>
static __global__ void embedding_backward_wpe_kernel(float *dwpe, const T *dout, int B, int Tn,
                                                     int C)
{
    const size_t n = (size_t)Tn * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float s = dwpe[i];
        for (int b = 0; b < B; b++)
            s += act_ld(dout, (size_t)b * n + i);
        dwpe[i] = s;
    }
}

template <class A>
static void cuda_embedding_forward(void *out, const int32_t *tokens, const float *wte,
                                   const float *wpe, int B, int T, int C)
{
    assert(out && tokens && wte && wpe && B >= 0 && T >= 0 && C > 0);
    const size_t n = (size_t)B * T * C;
    if (n == 0)
        return;
    embedding_forward_kernel<A><<<ew_grid(n), EW_BLOCK>>>((A *)out, tokens, wte, wpe, T, C, n);
    LAUNCH_TRY(embedding_forward_kernel);
cleanup:
    return;
}

template <class A>
static void cuda_embedding_backward(float *dwte, float *dwpe, const void *dout,
                                    const int32_t *tokens, int B, int T, int C)
{
    assert(dwte && dwpe && dout && tokens && B >= 0 && T >= 0 && C > 0);
    if ((size_t)B * T == 0)
        return;
    {
        /* scratch: sorted tokens, positions, sorted positions, the chunks'
         * partials (first, last), the sort's temporaries */
        const int BT = B * T, nch = (BT + EMB_CHUNK - 1) / EMB_CHUNK;
        const size_t ib = ((size_t)BT * sizeof(int32_t) + 255) / 256 * 256;
        const size_t pb = ((size_t)nch * C * sizeof(float) + 255) / 256 * 256;
        size_t temp = 0;
        char *base;
        int32_t *tok_sorted, *pos, *pos_sorted;
        float *first, *last;
        CUDA_TRY(cub::DeviceRadixSort::SortPairs(NULL, temp, tokens, (int32_t *)NULL,
                                                 (const int32_t *)NULL, (int32_t *)NULL, BT));
        base = (char *)cuda_scratch(3 * ib + 2 * pb + temp);
        if (!base)
            goto cleanup;
        tok_sorted = (int32_t *)base;
        pos = (int32_t *)(base + ib);
        pos_sorted = (int32_t *)(base + 2 * ib);
        first = (float *)(base + 3 * ib);
        last = (float *)(base + 3 * ib + pb);
        iota_kernel<<<(BT + 255) / 256, 256>>>(pos, BT);
        LAUNCH_TRY(iota_kernel);
        CUDA_TRY(cub::DeviceRadixSort::SortPairs(base + 3 * ib + 2 * pb, temp, tokens,
                                                 tok_sorted, pos, pos_sorted, BT, 0, 32,
                                                 (cudaStream_t)0));
        emb_wte_chunk_kernel<A><<<nch, EMB_THREADS>>>(dwte, first, last, (const A *)dout,
                                                      tok_sorted, pos_sorted, BT, C);
        LAUNCH_TRY(emb_wte_chunk_kernel);
        emb_wte_cross_kernel<<<nch, EMB_THREADS>>>(dwte, first, last, tok_sorted, BT, C);
        LAUNCH_TRY(emb_wte_cross_kernel);
    }
    embedding_backward_wpe_kernel<A><<<ew_grid((size_t)T * C), EW_BLOCK>>>(dwpe, (const A *)dout,
                                                                         B, T, C);
    LAUNCH_TRY(embedding_backward_wpe_kernel);
cleanup:
    return;
}

/* ------------------------------------------------------------------ */
/* layernorm                                                           */
/* ------------------------------------------------------------------ */

/* The row kernels split a row of C elements the same way whatever the
 * alignment: lane l takes the groups g = l, l + 32, ... of VW = ACT_VW(T)
 * consecutive elements (g < C / VW), in order, then the tail elements
 * VW (C / VW) + l, + 32, ...; VEC only says whether a group moves in one
 * 16-byte access (C % VW == 0 and every row pointer 16-byte aligned) or
 * element by element, so both give the same bits. */

/* One warp per row of inp(N,C); two-pass variance like the CPU. */
template <class T, bool VEC>
static __global__ void __launch_bounds__(ROW_WARPS * 32)
    layernorm_forward_kernel(T *out, float *mean, float *rstd, const T *inp, const float *weight,
                             const float *bias, int N, int C)
{
    constexpr int VW = ACT_VW(T);
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * ROW_WARPS + threadIdx.x / 32;
    if (row >= N)
        return; /* the whole warp leaves together */
    const int G = C / VW;
    const float inv_c = 1.0f / (float)C;
    const T *x = inp + (size_t)row * C;
    T *o = out + (size_t)row * C;
    float v[VW];
    float s = 0.0f;
    for (int g = lane; g < G; g += 32) {
        act_ldg<VEC>(x + (size_t)g * VW, v);
#pragma unroll
        for (int u = 0; u < VW; u++)
            s += v[u];
    }
    for (int c = G * VW + lane; c < C; c += 32)
        s += act_ld(x, c);
    const float m = warp_sum(s) * inv_c;
    float var = 0.0f;
    for (int g = lane; g < G; g += 32) {
        act_ldg<VEC>(x + (size_t)g * VW, v);
#pragma unroll
        for (int u = 0; u < VW; u++) {
            const float d = v[u] - m;
            var += d * d;
        }
    }
    for (int c = G * VW + lane; c < C; c += 32) {
        const float d = act_ld(x, c) - m;
        var += d * d;
    }
    const float rs = 1.0f / sqrtf(warp_sum(var) * inv_c + LN_EPS);
    for (int g = lane; g < G; g += 32) {
        float w[VW], bb[VW];
        act_ldg<VEC>(x + (size_t)g * VW, v);
        par_ldg<VEC, VW>(weight + (size_t)g * VW, w);
        par_ldg<VEC, VW>(bias + (size_t)g * VW, bb);
#pragma unroll
        for (int u = 0; u < VW; u++)
            v[u] = (v[u] - m) * rs * w[u] + bb[u];
        act_stg<VEC>(o + (size_t)g * VW, v);
    }
    for (int c = G * VW + lane; c < C; c += 32)
        act_st(o, c, (act_ld(x, c) - m) * rs * weight[c] + bias[c]);
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = rs;
    }
}

/* dinp(N,C) += rstd (dnorm - mean_c(dnorm) - norm mean_c(dnorm norm)),
 * dnorm = weight dout; one warp per row. */
template <class T, bool VEC>
static __global__ void __launch_bounds__(ROW_WARPS * 32)
    layernorm_backward_dinp_kernel(T *dinp, const T *dout, const T *inp, const float *weight,
                                   const float *mean, const float *rstd, int N, int C)
{
    constexpr int VW = ACT_VW(T);
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * ROW_WARPS + threadIdx.x / 32;
    if (row >= N)
        return;
    const int G = C / VW;
    const float inv_c = 1.0f / (float)C;
    const T *x = inp + (size_t)row * C;
    const T *dy = dout + (size_t)row * C;
    T *dx = dinp + (size_t)row * C;
    const float m = mean[row], rs = rstd[row];
    float xv[VW], dv[VW], w[VW];
    float s1 = 0.0f, s2 = 0.0f;
    for (int g = lane; g < G; g += 32) {
        act_ldg<VEC>(x + (size_t)g * VW, xv);
        act_ldg<VEC>(dy + (size_t)g * VW, dv);
        par_ldg<VEC, VW>(weight + (size_t)g * VW, w);
#pragma unroll
        for (int u = 0; u < VW; u++) {
            const float dn = w[u] * dv[u];
            s1 += dn;
            s2 += dn * (xv[u] - m) * rs;
        }
    }
    for (int c = G * VW + lane; c < C; c += 32) {
        const float dn = weight[c] * act_ld(dy, c);
        s1 += dn;
        s2 += dn * (act_ld(x, c) - m) * rs;
    }
    const float dn_mean = warp_sum(s1) * inv_c, dnn_mean = warp_sum(s2) * inv_c;
    for (int g = lane; g < G; g += 32) {
        float a[VW];
        act_ldg<VEC>(x + (size_t)g * VW, xv);
        act_ldg<VEC>(dy + (size_t)g * VW, dv);
        act_ldg<VEC>(dx + (size_t)g * VW, a);
        par_ldg<VEC, VW>(weight + (size_t)g * VW, w);
#pragma unroll
        for (int u = 0; u < VW; u++) {
            const float norm = (xv[u] - m) * rs;
            a[u] += (w[u] * dv[u] - dn_mean - norm * dnn_mean) * rs;
        }
        act_stg<VEC>(dx + (size_t)g * VW, a);
    }
    for (int c = G * VW + lane; c < C; c += 32) {
        const float norm = (act_ld(x, c) - m) * rs;
        act_st(dx, c, act_ld(dx, c) + (weight[c] * act_ld(dy, c) - dn_mean - norm * dnn_mean) * rs);
    }
}

template <class A>
static void cuda_layernorm_forward(void *out, float *mean, float *rstd, const void *inp,
                                   const float *weight, const float *bias, int N, int C)
{
    assert(out && mean && rstd && inp && weight && bias && N >= 0 && C > 0);
    const int vec = C % ACT_VW(A) == 0 && al16(out) && al16(inp) && al16(weight) && al16(bias);
    if (N == 0)
        return;
    if (vec)
        layernorm_forward_kernel<A, true><<<row_grid((size_t)N), ROW_WARPS * 32>>>(
            (A *)out, mean, rstd, (const A *)inp, weight, bias, N, C);
    else
        layernorm_forward_kernel<A, false><<<row_grid((size_t)N), ROW_WARPS * 32>>>(
            (A *)out, mean, rstd, (const A *)inp, weight, bias, N, C);
    LAUNCH_TRY(layernorm_forward_kernel);
cleanup:
    return;
}

/* The 16 bytes of act elements p[0..VW) as they lie in memory (bf16:
 * element 2k in the low half of word k; fp32: element k in word k): one
 * access when VEC (p 16-byte aligned), else element by element; the same
 * bits either way. act_stq writes them back the same two ways. */
template <bool VEC, class T>
__device__ __forceinline__ uint4 act_ldq(const T *p)
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
__device__ __forceinline__ void act_stq(T *p, uint4 r)
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

/* Rows per block of layernorm_backward_kernel; depends on N only, so the
 * summation order of dweight and dbias (hence their bits) is fixed for a
 * shape. */
static int ln_bwd_rows_per_block(int N)
{
    const int r = (N + LN_BWD_MAX_BLOCKS - 1) / LN_BWD_MAX_BLOCKS;
    return r < LN_BWD_MIN_ROWS ? LN_BWD_MIN_ROWS : r;
}

/* layernorm_backward in one pass over dout and inp: dinp as
 * layernorm_backward_dinp_kernel (the same arithmetic, so the same bits)
 * and, in the same pass, this block's partial column sums of dweight and
 * dbias. Block b owns rows [b R, min(N, (b + 1) R)) (R = rows_per_block);
 * its warp w the rows b R + w, + ROW_WARPS, ... Lane l holds the groups g
 * = l + 32 k (k < KG, g < C / VW) and the tail column VW (C / VW) + l:
 * the same columns in every row, so it keeps running sums of norm * dout
 * and dout for them in registers, and a row's inp, dout and dinp stay in
 * registers between the row sums and the dinp update (read once). At the
 * end the block adds its warps' sums in warp order and writes them as
 * chunk b of part (2, P, C) (P = gridDim.x; dweight's chunks, then
 * dbias's); ln_bwd_finish_kernel adds the chunks in order. Needs
 * C / VW <= 32 KG. */
template <class T, bool VEC, int KG>
static __global__ void __launch_bounds__(ROW_WARPS * 32, 2)
    layernorm_backward_kernel(T *dinp, float *part, const T *dout, const T *inp,
                              const float *weight, const float *mean, const float *rstd, int N,
                              int C, int rows_per_block)
{
    constexpr int VW = ACT_VW(T);
    constexpr int CM = 32 * KG * VW + VW; /* > the largest C this instantiation takes */
    /* bf16 with 4 groups a lane: dinp's groups are loaded after the row sums,
     * else the registers spill (ptxas, sm_90) */
    constexpr bool LATE = KG * VW > 24;
    __shared__ float s_dw[CM], s_db[CM];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int G = C / VW;
    const int ct = G * VW + lane; /* this lane's tail column, if < C */
    const float inv_c = 1.0f / (float)C;
    const int r0 = blockIdx.x * rows_per_block;
    const int r1 = min(N, r0 + rows_per_block);
    float aw[KG][VW], ab[KG][VW]; /* column sums of norm * dout, dout */
    float awt = 0.0f, abt = 0.0f;
#pragma unroll
    for (int k = 0; k < KG; k++) {
#pragma unroll
        for (int u = 0; u < VW; u++) {
            aw[k][u] = 0.0f;
            ab[k][u] = 0.0f;
        }
    }
    for (int row = r0 + warp; row < r1; row += ROW_WARPS) { /* uniform in the warp */
        const T *x = inp + (size_t)row * C;
        const T *dy = dout + (size_t)row * C;
        T *dx = dinp + (size_t)row * C;
        const float m = mean[row], rs = rstd[row];
        uint4 xq[KG], dq[KG], aq[KG];
        float xt = 0.0f, dyt = 0.0f, at = 0.0f;
#pragma unroll
        for (int k = 0; k < KG; k++) {
            const int g = lane + 32 * k;
            xq[k] = make_uint4(0u, 0u, 0u, 0u);
            dq[k] = xq[k];
            aq[k] = xq[k];
            if (g < G) {
                xq[k] = act_ldq<VEC>(x + (size_t)g * VW);
                dq[k] = act_ldq<VEC>(dy + (size_t)g * VW);
                if (!LATE)
                    aq[k] = act_ldq<VEC>(dx + (size_t)g * VW);
            }
        }
        if (ct < C) {
            xt = act_ld(x, ct);
            dyt = act_ld(dy, ct);
            at = act_ld(dx, ct);
        }
        float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
        for (int k = 0; k < KG; k++) {
            const int g = lane + 32 * k;
            if (g < G) {
                float xv[VW], dv[VW], w[VW];
                act_unpack(x, xq[k], xv);
                act_unpack(x, dq[k], dv);
                par_ldg<VEC, VW>(weight + (size_t)g * VW, w);
#pragma unroll
                for (int u = 0; u < VW; u++) {
                    const float dn = w[u] * dv[u];
                    s1 += dn;
                    s2 += dn * (xv[u] - m) * rs;
                }
            }
        }
        if (ct < C) {
            const float dn = weight[ct] * dyt;
            s1 += dn;
            s2 += dn * (xt - m) * rs;
        }
        const float dn_mean = warp_sum(s1) * inv_c, dnn_mean = warp_sum(s2) * inv_c;
#pragma unroll
        for (int k = 0; k < KG; k++) {
            const int g = lane + 32 * k;
            if (g < G) {
                float xv[VW], dv[VW], a[VW], w[VW];
                act_unpack(x, xq[k], xv);
                act_unpack(x, dq[k], dv);
                act_unpack(x, LATE ? act_ldq<VEC>(dx + (size_t)g * VW) : aq[k], a);
                par_ldg<VEC, VW>(weight + (size_t)g * VW, w);
#pragma unroll
                for (int u = 0; u < VW; u++) {
                    const float norm = (xv[u] - m) * rs;
                    a[u] += (w[u] * dv[u] - dn_mean - norm * dnn_mean) * rs;
                    aw[k][u] += norm * dv[u];
                    ab[k][u] += dv[u];
                }
                act_stq<VEC>(dx + (size_t)g * VW, act_pack(dx, a));
            }
        }
        if (ct < C) {
            const float norm = (xt - m) * rs;
            act_st(dx, ct, at + (weight[ct] * dyt - dn_mean - norm * dnn_mean) * rs);
            awt += norm * dyt;
            abt += dyt;
        }
    }
    /* the warps' sums, added in warp order (a warp without rows adds zeros) */
    for (int wi = 0; wi < ROW_WARPS; wi++) {
        if (warp == wi) {
#pragma unroll
            for (int k = 0; k < KG; k++) {
                const int g = lane + 32 * k;
                if (g < G) {
#pragma unroll
                    for (int u = 0; u < VW; u++) {
                        const int c = g * VW + u;
                        s_dw[c] = wi ? s_dw[c] + aw[k][u] : aw[k][u];
                        s_db[c] = wi ? s_db[c] + ab[k][u] : ab[k][u];
                    }
                }
            }
            if (ct < C) {
                s_dw[ct] = wi ? s_dw[ct] + awt : awt;
                s_db[ct] = wi ? s_db[ct] + abt : abt;
            }
        }
        __syncthreads();
    }
    float *pw = part + (size_t)blockIdx.x * C;
    float *pb = part + ((size_t)gridDim.x + blockIdx.x) * C;
    for (int c = threadIdx.x; c < C; c += ROW_WARPS * 32) {
        pw[c] = s_dw[c];
        pb[c] = s_db[c];
    }
}

/* dweight(C) += sum over the P chunks of part(0, ., C), dbias(C) the same
 * of part(1, ., C) (blockIdx.y selects). grid (ceil(C/32), 2), block (32,
 * LN_FIN_Y): row ty of the block adds chunks ty, ty + LN_FIN_Y, ... in
 * order, then row 0 adds the LN_FIN_Y results in order: a fixed tree. */
static __global__ void __launch_bounds__(32 * LN_FIN_Y)
    ln_bwd_finish_kernel(float *dweight, float *dbias, const float *part, int P, int C)
{
    __shared__ float s[LN_FIN_Y][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * 32 + tx;
    const float *src = part + (size_t)blockIdx.y * P * C;
    float a = 0.0f;
    if (c < C)
        for (int k = ty; k < P; k += LN_FIN_Y)
            a += src[(size_t)k * C + c];
    s[ty][tx] = a;
    __syncthreads();
    if (ty == 0 && c < C) {
        float t = s[0][tx];
        for (int y = 1; y < LN_FIN_Y; y++)
            t += s[y][tx];
        float *dst = blockIdx.y ? dbias : dweight;
        dst[c] += t;
    }
}

/* Launches layernorm_backward_kernel<A, VEC, KG> with the smallest KG >= kg
 * (1 <= kg <= LN_BWD_KG). */
template <class A, bool VEC>
static void ln_bwd_launch(int kg, unsigned grid, A *dinp, float *part, const A *dout,
                          const A *inp, const float *weight, const float *mean, const float *rstd,
                          int N, int C, int rpb)
{
    static_assert(LN_BWD_KG == 4, "one case per KG");
    const unsigned block = ROW_WARPS * 32;
    switch (kg) {
    case 1:
        layernorm_backward_kernel<A, VEC, 1><<<grid, block>>>(dinp, part, dout, inp, weight, mean,
                                                              rstd, N, C, rpb);
        break;
    case 2:
        layernorm_backward_kernel<A, VEC, 2><<<grid, block>>>(dinp, part, dout, inp, weight, mean,
                                                              rstd, N, C, rpb);
        break;
    case 3:
        layernorm_backward_kernel<A, VEC, 3><<<grid, block>>>(dinp, part, dout, inp, weight, mean,
                                                              rstd, N, C, rpb);
        break;
    default:
        layernorm_backward_kernel<A, VEC, 4><<<grid, block>>>(dinp, part, dout, inp, weight, mean,
                                                              rstd, N, C, rpb);
        break;
    }
}

/* Rows of up to 32 LN_BWD_KG groups (C <= 1024 bf16, 512 fp32): one fused
 * pass (layernorm_backward_kernel) and ln_bwd_finish_kernel. Wider rows: the
 * dinp kernel, then the two-pass column sums (reading dout and inp again). */
template <class A>
static void cuda_layernorm_backward(void *dinp, float *dweight, float *dbias, const void *dout,
                                    const void *inp, const float *weight, const float *mean,
                                    const float *rstd, int N, int C)
{
    assert(dinp && dweight && dbias && dout && inp && weight && mean && rstd);
    assert(N >= 0 && C > 0);
    const int G = C / ACT_VW(A);
    const int kg = G > 32 ? (G + 31) / 32 : 1;
    const int fused = kg <= LN_BWD_KG;
    const int rpc = fused ? ln_bwd_rows_per_block(N) : colsum_rows_per_chunk(N);
    const int nchunk = N > 0 ? (N + rpc - 1) / rpc : 0;
    const dim3 grid((unsigned)((C + 31) / 32), (unsigned)nchunk), block(32, 8);
    const int vec = C % ACT_VW(A) == 0 && al16(dinp) && al16(dout) && al16(inp) && al16(weight);
    float *part = NULL;
    if (N == 0)
        return;
    if (!cuda_state_get())
        goto cleanup;
    part = (float *)cuda_scratch((size_t)2 * nchunk * C * sizeof(float));
    if (!part)
        goto cleanup;
    if (fused) {
        if (vec)
            ln_bwd_launch<A, true>(kg, (unsigned)nchunk, (A *)dinp, part, (const A *)dout,
                                   (const A *)inp, weight, mean, rstd, N, C, rpc);
        else
            ln_bwd_launch<A, false>(kg, (unsigned)nchunk, (A *)dinp, part, (const A *)dout,
                                    (const A *)inp, weight, mean, rstd, N, C, rpc);
        LAUNCH_TRY(layernorm_backward_kernel);
        ln_bwd_finish_kernel<<<dim3((unsigned)((C + 31) / 32), 2), dim3(32, LN_FIN_Y)>>>(
            dweight, dbias, part, nchunk, C);
        LAUNCH_TRY(ln_bwd_finish_kernel);
        goto cleanup;
    }
    if (vec)
        layernorm_backward_dinp_kernel<A, true><<<row_grid((size_t)N), ROW_WARPS * 32>>>(
            (A *)dinp, (const A *)dout, (const A *)inp, weight, mean, rstd, N, C);
    else
        layernorm_backward_dinp_kernel<A, false><<<row_grid((size_t)N), ROW_WARPS * 32>>>(
            (A *)dinp, (const A *)dout, (const A *)inp, weight, mean, rstd, N, C);
    LAUNCH_TRY(layernorm_backward_dinp_kernel);
    colsum_partial_kernel<true, A><<<grid, block>>>(part, (const A *)dout, (const A *)inp, mean,
                                                    rstd, N, C, rpc);
    LAUNCH_TRY(colsum_partial_kernel);
    colsum_finish_kernel<<<(C + 255) / 256, 256>>>(dweight, part, nchunk, C);
    LAUNCH_TRY(colsum_finish_kernel);
    colsum_finish_kernel<<<(C + 255) / 256, 256>>>(dbias, part + (size_t)nchunk * C, nchunk, C);
    LAUNCH_TRY(colsum_finish_kernel);
cleanup:
    return;
}

/* ------------------------------------------------------------------ */
/* GELU, residual                                                      */
/* ------------------------------------------------------------------ */

/* Runs the elementwise act op over n elements of the act tensors ptrs
 * (all of type A), with the vector plan their alignment allows; a failed
 * launch is recorded under name. */
template <class A, class Op, class... P>
static void act_ew(const char *name, const Op &op, size_t n, P... ptrs)
{
    const void *p[] = {ptrs...};
    unsigned esz[sizeof...(P)];
    cudaError_t e;
    for (unsigned &x : esz)
        x = sizeof(A);
    if (n == 0)
        return;
    ew_launch(op, ew_plan(n, p, esz, (int)sizeof...(P), Op::W));
    e = cudaGetLastError();
    if (e != cudaSuccess)
        cuda_fail(ZINC_ERR_CUDA, name, __FILE__, __LINE__, cudaGetErrorString(e));
}

template <class A>
static void cuda_gelu_forward(void *out, const void *inp, size_t n)
{
    assert(out && inp);
    act_ew<A>("launch gelu_forward", gelu_fwd_op<A>{(A *)out, (const A *)inp}, n, out, inp);
}

template <class A>
static void cuda_gelu_backward(void *dinp, const void *inp, const void *dout, size_t n)
{
    assert(dinp && inp && dout);
    act_ew<A>("launch gelu_backward", gelu_bwd_op<A>{(A *)dinp, (const A *)inp, (const A *)dout},
              n, dinp, inp, dout);
}

template <class A>
static void gelu_grad_mul(void *d, const void *pre, size_t n)
{
    act_ew<A>("launch gelu_grad_mul", gelu_grad_mul_op<A>{(A *)d, (const A *)pre}, n, d, pre);
}

/* Linear + GELU (zinc/ops.h). The bf16 table runs one product with
 * cuBLASLt's GELU epilogue (GELU_BIAS, or GELU_AUX_BIAS when pre is kept:
 * the GELU of the fp32 result, one rounding of each output); the fp32
 * table, and the bf16 table when cuBLASLt has no epilogue algorithm for
 * the shape, run the linear op and then the GELU op (the bf16 fallback
 * takes the GELU of the rounded pre, within bf16 tolerance). */
template <class A>
static void cuda_linear_gelu_forward(void *out, void *pre, const void *inp, const float *weight,
                                     const float *bias, int N, int C, int OC)
{
    assert(out && inp && weight && N >= 0 && C > 0 && OC > 0);
    void *p = pre ? pre : out; /* the GELU op is elementwise: in place is fine */
    if (N == 0 || !cuda_state_get())
        return;
    if (sizeof(A) == 2) {
        const float *src[2] = {weight, bias};
        const size_t cnt[2] = {(size_t)C * OC, (size_t)OC};
        const void *h[2] = {NULL, NULL};
        if (!stage_bf16(src, cnt, 2, h))
            return;
        const lt_epi ep = {pre ? LT_EPI_GELU_AUX : LT_EPI_GELU, h[1], pre};
        const int rc = lt_matmul(out, inp, h[0], N, OC, C, 0, 0, 1.0f, 0.0f, &ep, LT_BF16, LT_BF16);
        if (rc != 0)
            return; /* done, or an error was recorded */
        cuda_linear_forward_bf16(p, inp, weight, bias, N, C, OC);
    } else {
        cuda_linear_forward(p, inp, weight, bias, N, C, OC);
    }
    cuda_gelu_forward<A>(out, p, (size_t)N * OC);
}

/* dpre = (dout @ weight^T) * gelu'(pre), written: the bf16 table's product
 * takes cuBLASLt's DGELU epilogue (aux = pre), else the product (beta 0)
 * and then gelu' in place; dweight and dbias as linear_backward. */
template <class A>
static void cuda_linear_gelu_backward(void *dpre, float *dweight, float *dbias, const void *dout,
                                      const void *inp, const void *pre, const float *weight,
                                      int N, int C, int OC)
{
    assert(dpre && dweight && dout && inp && pre && weight && N >= 0 && C > 0 && OC > 0);
    if (N == 0 || !cuda_state_get())
        return;
    if (sizeof(A) == 2) {
        const float *src[1] = {weight};
        const size_t cnt[1] = {(size_t)C * OC};
        const void *h[1] = {NULL};
        if (!stage_bf16(src, cnt, 1, h))
            return;
        const lt_epi ep = {LT_EPI_DGELU, NULL, (void *)pre};
        const int rc = lt_matmul(dpre, dout, h[0], N, C, OC, 0, 1, 1.0f, 0.0f, &ep, LT_BF16,
                                 LT_BF16);
        if (rc < 0)
            return;
        if (rc == 0) {
            if (!gemm(dpre, dout, h[0], N, C, OC, 0, 1, 1.0f, 0.0f, LT_BF16, LT_BF16))
                return;
            gelu_grad_mul<A>(dpre, pre, (size_t)N * C);
        }
        cuda_linear_backward_bf16(NULL, dweight, dbias, dout, inp, weight, N, C, OC);
    } else {
        if (!gemm(dpre, dout, weight, N, C, OC, 0, 1, 1.0f, 0.0f, LT_F32, LT_F32))
            return;
        gelu_grad_mul<A>(dpre, pre, (size_t)N * C);
        cuda_linear_backward(NULL, dweight, dbias, dout, inp, weight, N, C, OC);
    }
}

template <class A>
static void cuda_residual_forward(void *out, const void *a, const void *b, size_t n)
{
    assert(out && a && b);
    act_ew<A>("launch residual_forward", residual_op<A>{(A *)out, (const A *)a, (const A *)b}, n,
              out, a, b);
}

/* ------------------------------------------------------------------ */
/* softmax + cross-entropy                                             */
/* ------------------------------------------------------------------ */

/* 2^x on the special function unit (relative error about 2^-22; results
 * below 2^-126 flush to 0). */
__device__ __forceinline__ float xent_ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* exp(x - mx): the difference first (exact when x is within a factor 2 of
 * mx), so the error does not grow with |mx|. */
__device__ __forceinline__ float xent_exp(float x, float mx)
{
    return xent_ex2((x - mx) * 1.4426950408889634f);
}

/* A 16-byte group of gradients packed for storing: fp32 as is; bf16 by the
 * hardware conversion (round to nearest even, as f32_to_bf16_rne for every
 * non-NaN value; a NaN stays NaN) at one instruction per pair. */
__device__ __forceinline__ uint4 xent_pack(const float *p, const float *v)
{
    return act_pack(p, v);
}
__device__ __forceinline__ uint4 xent_pack(const bf16 *, const float *v)
{
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]); /* .x low */
        w[k] = *reinterpret_cast<const uint32_t *>(&h);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

/* 16 bytes global -> shared without registers (sm_80+); both addresses
 * 16-byte aligned. */
__device__ __forceinline__ void xent_cp16(uint4 *dst, const void *src)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" : : "r"(a), "l"(src) : "memory");
}

/* Max and sum over the block: butterflies in each warp, the warps' results
 * through red (XENT_BLOCK / 32 floats, one barrier), then every warp takes
 * them (lane l warp l's) and butterflies again: every thread gets the same
 * bits, in a fixed order. */
__device__ __forceinline__ float xent_block_max(float v, float *red)
{
    const int lane = threadIdx.x % 32;
    v = warp_max(v);
    if (lane == 0)
        red[threadIdx.x / 32] = v;
    __syncthreads();
    return warp_max(lane < XENT_BLOCK / 32 ? red[lane] : -INFINITY);
}
__device__ __forceinline__ float xent_block_sum(float v, float *red)
{
    const int lane = threadIdx.x % 32;
    v = warp_sum(v);
    if (lane == 0)
        red[threadIdx.x / 32] = v;
    __syncthreads();
    return warp_sum(lane < XENT_BLOCK / 32 ? red[lane] : 0.0f);
}

/* One block of XENT_BLOCK threads per row of logits(N,V) (act T). A row is
 * split as the layernorm rows are: thread t takes the groups q = t, t +
 * XENT_BLOCK, ... of VW = ACT_VW(T) logits (q < V / VW), then the tail
 * elements VW (V / VW) + t; VEC (V % VW == 0 and logits 16-byte aligned,
 * so every row is) only says whether a group moves in one 16-byte access
 * or element by element, and stash only where the groups are read from, so
 * neither changes a bit. Three passes over the row, all in fp32: its max
 * mx; the sum of exp(x - mx) (each thread's in order, then the block's in
 * a fixed tree); the gradient exp(x - mx) dloss / sum - dloss [target],
 * overwriting the row. With stash (the groups fit the dynamic shared
 * memory: a bf16 row of 50304 logits is 98 KiB, and two blocks share an
 * SM) the first pass moves the groups there (cp.async when VEC) and the
 * others read them there: the logits are read from memory once and written
 * once. Without, each pass reads the row again. */
template <class T, bool VEC>
static __global__ void __launch_bounds__(XENT_BLOCK, 2)
    softmax_xent_kernel(float *losses, T *logits, const int32_t *targets, float dloss, int V,
                        int stash)
{
    constexpr int VW = ACT_VW(T);
    extern __shared__ uint4 row_s[]; /* (V / VW) groups when stash */
    __shared__ float red_max[XENT_BLOCK / 32], red_sum[XENT_BLOCK / 32];
    T *x = logits + (size_t)blockIdx.x * V;
    const int tgt = targets[blockIdx.x];
    const int NG = V / VW;
    float v[VW];
    if (tgt < 0) { /* ignored row: uniform across the block */
        for (int q = threadIdx.x; q < NG; q += XENT_BLOCK)
            act_stq<VEC>(x + (size_t)q * VW, make_uint4(0u, 0u, 0u, 0u));
        for (int j = NG * VW + threadIdx.x; j < V; j += XENT_BLOCK)
            act_st(x, j, 0.0f);
        if (threadIdx.x == 0)
            losses[blockIdx.x] = 0.0f;
        return;
    }
    assert(tgt < V);
    /* read before the barriers below, so before any thread writes the row */
    const float xt = threadIdx.x == 0 ? act_ld(x, tgt) : 0.0f;

    /* pass 1: the row's max */
    if (stash) {
        for (int q = threadIdx.x; q < NG; q += XENT_BLOCK) {
            if (VEC)
                xent_cp16(row_s + q, x + (size_t)q * VW);
            else
                row_s[q] = act_ldq<false>(x + (size_t)q * VW);
        }
        if (VEC) /* this thread's copies; it alone reads its groups */
            asm volatile("cp.async.wait_all;\n" ::: "memory");
    }
    float m = -INFINITY;
    for (int q = threadIdx.x; q < NG; q += XENT_BLOCK) {
        act_unpack(x, stash ? row_s[q] : act_ldq<VEC>(x + (size_t)q * VW), v);
#pragma unroll
        for (int u = 0; u < VW; u++)
            m = fmaxf(m, v[u]);
    }
    for (int j = NG * VW + threadIdx.x; j < V; j += XENT_BLOCK)
        m = fmaxf(m, act_ld(x, j));
    const float mx = xent_block_max(m, red_max);

    /* pass 2: sum of exp(x - mx) */
    float s = 0.0f;
    for (int q = threadIdx.x; q < NG; q += XENT_BLOCK) {
        act_unpack(x, stash ? row_s[q] : act_ldq<VEC>(x + (size_t)q * VW), v);
#pragma unroll
        for (int u = 0; u < VW; u++)
            s += xent_exp(v[u], mx);
    }
    for (int j = NG * VW + threadIdx.x; j < V; j += XENT_BLOCK)
        s += xent_exp(act_ld(x, j), mx);
    const float sum = xent_block_sum(s, red_sum);
    if (threadIdx.x == 0)
        losses[blockIdx.x] = (float)(log((double)sum) - ((double)xt - (double)mx));

    /* pass 3: the gradient, in place (each thread rewrites what it read) */
    const float f = dloss / sum;
    for (int q = threadIdx.x; q < NG; q += XENT_BLOCK) {
        act_unpack(x, stash ? row_s[q] : act_ldq<VEC>(x + (size_t)q * VW), v);
#pragma unroll
        for (int u = 0; u < VW; u++)
            v[u] = __fmul_rn(xent_exp(v[u], mx), f);
        const int jt = tgt - q * VW;
        if ((unsigned)jt < (unsigned)VW) {
#pragma unroll
            for (int u = 0; u < VW; u++)
                if (u == jt)
                    v[u] -= dloss;
        }
        act_stq<VEC>(x + (size_t)q * VW, xent_pack(x, v));
    }
    for (int j = NG * VW + threadIdx.x; j < V; j += XENT_BLOCK) {
        float g = __fmul_rn(xent_exp(act_ld(x, j), mx), f);
        if (j == tgt)
            g -= dloss;
        act_st(x, j, g);
    }
}

/* Whether softmax_xent_kernel<T, VEC> may take bytes of dynamic shared
 * memory (raised above the default 48 KiB once per instantiation, with the
 * largest shared memory carveout so that two blocks fit an SM). */
template <class T, bool VEC>
static int xent_stash_ok(size_t bytes)
{
    static const int ok = [] {
        const cudaError_t e = cudaFuncSetAttribute(
            softmax_xent_kernel<T, VEC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
            XENT_STASH_MAX);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            return 0;
        }
        if (cudaFuncSetAttribute(softmax_xent_kernel<T, VEC>,
                                 cudaFuncAttributePreferredSharedMemoryCarveout,
                                 (int)cudaSharedmemCarveoutMaxShared) != cudaSuccess)
            (void)cudaGetLastError(); /* a hint only */
        return 1;
    }();
    return ok && bytes <= XENT_STASH_MAX;
}

template <class T, bool VEC>
static void xent_launch(float *losses, T *logits, const int32_t *targets, float dloss, int N,
                        int V)
{
    const size_t bytes = (size_t)(V / ACT_VW(T)) * 16; /* the groups */
    const int stash = bytes > 0 && xent_stash_ok<T, VEC>(bytes);
    softmax_xent_kernel<T, VEC><<<(unsigned)N, XENT_BLOCK, stash ? bytes : 0>>>(
        losses, logits, targets, dloss, V, stash);
}

template <class A>
static void cuda_softmax_xent(float *losses, void *logits, const int32_t *targets, float dloss,
                              int N, int V)
{
    assert(losses && logits && targets && N >= 0 && V > 0);
    if (N == 0)
        return;
    if (V % ACT_VW(A) == 0 && al16(logits))
        xent_launch<A, true>(losses, (A *)logits, targets, dloss, N, V);
    else
        xent_launch<A, false>(losses, (A *)logits, targets, dloss, N, V);
    LAUNCH_TRY(softmax_xent_kernel);
cleanup:
    return;
}

/* ------------------------------------------------------------------ */
/* optimizer, norms                                                    */
/* ------------------------------------------------------------------ */

static void cuda_adamw(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                       float beta1, float beta2, float eps, float wd, int t)
{
    assert(param && grad && m && v && t >= 1);
    /* bias corrections folded into two scalars, computed as the CPU does */
    const float ibc1 = (float)(1.0 / (1.0 - pow((double)beta1, t)));
    const float ibc2 = (float)(1.0 / (1.0 - pow((double)beta2, t)));
    if (n == 0)
        return;
    adamw_kernel<<<ew_grid(n), EW_BLOCK>>>(param, grad, m, v, n, lr, beta1, beta2, eps, wd, ibc1,
                                           ibc2);
    LAUNCH_TRY(adamw_kernel);
cleanup:
    return;
}

/* Fixed tree over SUMSQ_BLOCK doubles in shared memory; result in sh[0]. */
static __device__ void block_sum_double(double *sh)
{
    for (int s = SUMSQ_BLOCK / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s)
            sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
}

/* Pass 1: block b sums x^2 over [b chunk, (b+1) chunk) into part[b]. */
template <bool SQUARE>
static __global__ void __launch_bounds__(SUMSQ_BLOCK)
    sumsq_partial_kernel(double *part, const float *x, size_t n, size_t chunk)
{
    __shared__ double sh[SUMSQ_BLOCK];
    const size_t lo = blockIdx.x * chunk;
    const size_t hi = lo + chunk < n ? lo + chunk : n;
    double s = 0.0;
    for (size_t i = lo + threadIdx.x; i < hi; i += SUMSQ_BLOCK)
        s += SQUARE ? (double)x[i] * (double)x[i] : (double)x[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    block_sum_double(sh);
    if (threadIdx.x == 0)
        part[blockIdx.x] = sh[0];
}

/* Pass 2: out[0] = sum of part[0..nparts), one block. */
static __global__ void __launch_bounds__(SUMSQ_BLOCK)
    sumsq_finish_kernel(double *out, const double *part, int nparts)
{
    __shared__ double sh[SUMSQ_BLOCK];
    double s = 0.0;
    for (int i = threadIdx.x; i < nparts; i += SUMSQ_BLOCK)
        s += part[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    block_sum_double(sh);
    if (threadIdx.x == 0)
        out[0] = sh[0];
}

/* sum x^2 in double; synchronizes (returns a host value). The grid depends
 * on n only, so the bits do too. Returns 0 after recording an error. */
template <bool SQUARE>
static double sum_impl(const float *x, size_t n)
{
    assert(x || n == 0);
    size_t nblk = (n + SUMSQ_MIN_PER_BLOCK - 1) / SUMSQ_MIN_PER_BLOCK;
    double result = 0.0;
    double *buf = NULL;
    size_t chunk;
    if (n == 0)
        return 0.0;
    if (nblk > SUMSQ_MAX_BLOCKS)
        nblk = SUMSQ_MAX_BLOCKS;
    chunk = (n + nblk - 1) / nblk;
    nblk = (n + chunk - 1) / chunk;
    if (!cuda_state_get())
        goto cleanup;
    buf = (double *)cuda_scratch((nblk + 1) * sizeof(double));
    if (!buf)
        goto cleanup;
    sumsq_partial_kernel<SQUARE><<<(unsigned)nblk, SUMSQ_BLOCK>>>(buf + 1, x, n, chunk);
    LAUNCH_TRY(sumsq_partial_kernel);
    sumsq_finish_kernel<<<1, SUMSQ_BLOCK>>>(buf, buf + 1, (int)nblk);
    LAUNCH_TRY(sumsq_finish_kernel);
    CUDA_TRY(cudaMemcpy(&result, buf, sizeof result, cudaMemcpyDeviceToHost));
cleanup:
    return result;
}

static double cuda_sumsq(const float *x, size_t n) { return sum_impl<true>(x, n); }
static double cuda_sum(const float *x, size_t n) { return sum_impl<false>(x, n); }

static void cuda_scale(float *x, float s, size_t n)
{
    assert(x || n == 0);
    if (n == 0)
        return;
    {
        const void *p[1] = {x};
        const unsigned esz[1] = {4};
        ew_launch(scale_op{x, s}, ew_plan(n, p, esz, 1, scale_op::W));
    }
    LAUNCH_TRY(scale);
cleanup:
    return;
}

/* ------------------------------------------------------------------ */
/* memory and precision                                                */
/* ------------------------------------------------------------------ */

/* The dtypes of the precision ops as template arguments: F32, BF16, and
 * anything else is F16 (as the per-element switch always treated it). */
static int dt_kind(zinc_dtype dt)
{
    return dt == ZINC_DTYPE_F32 ? ZINC_DTYPE_F32
                                : dt == ZINC_DTYPE_BF16 ? ZINC_DTYPE_BF16 : ZINC_DTYPE_F16;
}

static __device__ __forceinline__ float from_16(int dt, uint32_t h)
{
    if (dt == ZINC_DTYPE_BF16)
        return __uint_as_float(h << 16);
    return __half2float(__ushort_as_half((unsigned short)h));
}

static __device__ __forceinline__ uint32_t to_16(int dt, float x)
{
    if (dt == ZINC_DTYPE_BF16)
        return f32_to_bf16_rne(x);
    return __half_as_ushort(__float2half_rn(x));
}

/* Element i of a DT array as fp32, and back (round to nearest even). */
template <int DT>
static __device__ __forceinline__ float ld1(const void *p, size_t i)
{
    if (DT == ZINC_DTYPE_F32)
        return ((const float *)p)[i];
    return from_16(DT, ((const uint16_t *)p)[i]);
}

template <int DT>
static __device__ __forceinline__ void st1(void *p, size_t i, float x)
{
    if (DT == ZINC_DTYPE_F32)
        ((float *)p)[i] = x;
    else
        ((uint16_t *)p)[i] = (uint16_t)to_16(DT, x);
}

/* Elements i..i+3 (i on a 4-element boundary of an aligned array) in one
 * access: float4, or uint2 of four 16-bit values (element i in the low
 * half of .x, little endian). */
template <int DT>
static __device__ __forceinline__ float4 ld4(const void *p, size_t i)
{
    if (DT == ZINC_DTYPE_F32)
        return ld_f4((const float *)p + i);
    const uint2 u = *reinterpret_cast<const uint2 *>((const uint16_t *)p + i);
    return make_float4(from_16(DT, u.x & 0xffffu), from_16(DT, u.x >> 16),
                       from_16(DT, u.y & 0xffffu), from_16(DT, u.y >> 16));
}

template <int DT>
static __device__ __forceinline__ void st4(void *p, size_t i, float4 v)
{
    if (DT == ZINC_DTYPE_F32) {
        st_f4((float *)p + i, v);
        return;
    }
    uint2 u;
    u.x = to_16(DT, v.x) | (to_16(DT, v.y) << 16);
    u.y = to_16(DT, v.z) | (to_16(DT, v.w) << 16);
    *reinterpret_cast<uint2 *>((uint16_t *)p + i) = u;
}

template <int DDT, int SDT>
struct convert_op {
    static constexpr int W = 4;
    void *dst;
    const void *src;
    __device__ void one(size_t i) const { st1<DDT>(dst, i, ld1<SDT>(src, i)); }
    __device__ void vec(size_t i) const { st4<DDT>(dst, i, ld4<SDT>(src, i)); }
};

template <int DDT, int SDT>
struct add_into_op {
    static constexpr int W = 4;
    void *dst;
    const void *src;
    __device__ void one(size_t i) const
    {
        st1<DDT>(dst, i, __fadd_rn(ld1<DDT>(dst, i), ld1<SDT>(src, i)));
    }
    __device__ void vec(size_t i) const
    {
        const float4 d = ld4<DDT>(dst, i), x = ld4<SDT>(src, i);
        st4<DDT>(dst, i, make_float4(__fadd_rn(d.x, x.x), __fadd_rn(d.y, x.y),
                                     __fadd_rn(d.z, x.z), __fadd_rn(d.w, x.w)));
    }
};

/* x = fp32(DT(x)) in place. */
template <int DT>
struct round_to_op {
    static constexpr int W = 4;
    float *x;
    __device__ static float r(float v)
    {
        if (DT == ZINC_DTYPE_BF16)
            return __uint_as_float((uint32_t)f32_to_bf16_rne(v) << 16);
        return __half2float(__float2half_rn(v));
    }
    __device__ void one(size_t i) const { x[i] = r(x[i]); }
    __device__ void vec(size_t i) const
    {
        const float4 v = ld_f4(x + i);
        st_f4(x + i, make_float4(r(v.x), r(v.y), r(v.z), r(v.w)));
    }
};

/* Op<D, S> over n elements of dst (dtype D) and src (dtype S). */
template <template <int, int> class Op, int D, int S>
static void precision_launch(void *dst, const void *src, size_t n)
{
    const void *p[2] = {dst, src};
    const unsigned esz[2] = {D == ZINC_DTYPE_F32 ? 4u : 2u, S == ZINC_DTYPE_F32 ? 4u : 2u};
    ew_launch(Op<D, S>{dst, src}, ew_plan(n, p, esz, 2, 4));
}

template <template <int, int> class Op, int D>
static void precision_launch_s(void *dst, int sdt, const void *src, size_t n)
{
    if (sdt == ZINC_DTYPE_F32)
        precision_launch<Op, D, ZINC_DTYPE_F32>(dst, src, n);
    else if (sdt == ZINC_DTYPE_BF16)
        precision_launch<Op, D, ZINC_DTYPE_BF16>(dst, src, n);
    else
        precision_launch<Op, D, ZINC_DTYPE_F16>(dst, src, n);
}

template <template <int, int> class Op>
static void precision_launch_ds(void *dst, int ddt, const void *src, int sdt, size_t n)
{
    if (ddt == ZINC_DTYPE_F32)
        precision_launch_s<Op, ZINC_DTYPE_F32>(dst, sdt, src, n);
    else if (ddt == ZINC_DTYPE_BF16)
        precision_launch_s<Op, ZINC_DTYPE_BF16>(dst, sdt, src, n);
    else
        precision_launch_s<Op, ZINC_DTYPE_F16>(dst, sdt, src, n);
}

static void cuda_zero(void *p, size_t bytes)
{
    assert(p || bytes == 0);
    if (bytes)
        CUDA_TRY(cudaMemsetAsync(p, 0, bytes, 0));
cleanup:
    return;
}

static void cuda_copy(void *dst, const void *src, size_t bytes)
{
    assert((dst && src) || bytes == 0);
    if (bytes && dst != src)
        CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0));
cleanup:
    return;
}

static void cuda_convert(void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n)
{
    assert((dst && src) || n == 0);
    if (n == 0)
        return;
    if (ddt == sdt) {
        cuda_copy(dst, src, n * (ddt == ZINC_DTYPE_F32 ? 4 : 2));
        return;
    }
    precision_launch_ds<convert_op>(dst, dt_kind(ddt), src, dt_kind(sdt), n);
    LAUNCH_TRY(convert);
cleanup:
    return;
}

static void cuda_add_into(void *dst, zinc_dtype ddt, const void *src, zinc_dtype sdt, size_t n)
{
    assert((dst && src) || n == 0);
    if (n == 0)
        return;
    precision_launch_ds<add_into_op>(dst, dt_kind(ddt), src, dt_kind(sdt), n);
    LAUNCH_TRY(add_into);
cleanup:
    return;
}

static void cuda_round_to(float *x, zinc_dtype dt, size_t n)
{
    assert(x || n == 0);
    if (n == 0 || dt == ZINC_DTYPE_F32)
        return;
    {
        const void *p[1] = {x};
        const unsigned esz[1] = {4};
        const ew_split sp = ew_plan(n, p, esz, 1, 4);
        if (dt == ZINC_DTYPE_BF16)
            ew_launch(round_to_op<ZINC_DTYPE_BF16>{x}, sp);
        else
            ew_launch(round_to_op<ZINC_DTYPE_F16>{x}, sp);
    }
    LAUNCH_TRY(round_to);
cleanup:
    return;
}

/* ------------------------------------------------------------------ */
/* attention and the tables                                            */
/* ------------------------------------------------------------------ */

/* The fp32 table's attention: act is fp32. */
static void cuda_attention_forward_f32(void *out, float *lse, const void *qkv, int B, int T,
                                       int C, int NH)
{
    cuda_attention_forward((float *)out, lse, (const float *)qkv, B, T, C, NH);
}

static void cuda_attention_backward_f32(void *dqkv, float *scratch, const void *dout,
                                        const void *qkv, const void *out, const float *lse,
                                        int B, int T, int C, int NH)
{
    cuda_attention_backward((float *)dqkv, scratch, (const float *)dout, (const float *)qkv,
                            (const float *)out, lse, B, T, C, NH);
}

/* The act ops of one storage type A (float or bf16). */
template <class A>
static void fill_act_ops(zinc_ops *t)
{
    t->embedding_forward = cuda_embedding_forward<A>;
    t->embedding_backward = cuda_embedding_backward<A>;
    t->layernorm_forward = cuda_layernorm_forward<A>;
    t->layernorm_backward = cuda_layernorm_backward<A>;
    t->gelu_forward = cuda_gelu_forward<A>;
    t->linear_gelu_forward = cuda_linear_gelu_forward<A>;
    t->linear_gelu_backward = cuda_linear_gelu_backward<A>;
    t->gelu_backward = cuda_gelu_backward<A>;
    t->residual_forward = cuda_residual_forward<A>;
    t->softmax_xent = cuda_softmax_xent<A>;
}

/* The tables, filled by member name (the struct grows; C++17 has no
 * designated initializers). bf16: act bf16 and tensor-core products. */
static zinc_ops make_table(int bf16_act)
{
    zinc_ops t;
    memset(&t, 0, sizeof t);
    t.name = bf16_act ? "cuda-bf16" : "cuda";
    t.act = bf16_act ? ZINC_DTYPE_BF16 : ZINC_DTYPE_F32;
    if (bf16_act) {
        t.matmul = cuda_matmul_bf16;
        t.linear_forward = cuda_linear_forward_bf16;
        t.linear_backward = cuda_linear_backward_bf16;
        t.head_forward = cuda_head_forward_bf16;
        t.head_backward = cuda_head_backward_bf16;
        t.attention_forward = cuda_attention_forward_bf16;
        t.attention_backward = cuda_attention_backward_bf16;
        fill_act_ops<bf16>(&t);
    } else {
        t.matmul = cuda_matmul;
        t.linear_forward = cuda_linear_forward;
        t.linear_backward = cuda_linear_backward;
        t.head_forward = cuda_head_forward;
        t.head_backward = cuda_head_backward;
        t.attention_forward = cuda_attention_forward_f32;
        t.attention_backward = cuda_attention_backward_f32;
        fill_act_ops<float>(&t);
    }
    t.attention_scratch_floats = cuda_attention_scratch_floats;
    t.adamw = cuda_adamw;
    t.sumsq = cuda_sumsq;
    t.scale = cuda_scale;
    t.zero = cuda_zero;
    t.copy = cuda_copy;
    t.convert = cuda_convert;
    t.add_into = cuda_add_into;
    t.round_to = cuda_round_to;
    t.sum = cuda_sum;
    return t;
}

static const zinc_ops cuda_ops = make_table(0);
static const zinc_ops cuda_ops_bf16 = make_table(1);

/* The CUDA op tables; static storage, touch no CUDA API. */
extern "C" const zinc_ops *zinc_ops_cuda(void)
{
    return &cuda_ops;
}

extern "C" const zinc_ops *zinc_ops_cuda_bf16(void)
{
    return &cuda_ops_bf16;
}
