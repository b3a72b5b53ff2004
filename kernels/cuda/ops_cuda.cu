/* ops_cuda.cu - the CUDA op table: every op of zinc/ops.h on device memory,
 * fp32, row-major, same contract as the CPU reference (kernels/cpu).
 *
 * Dense products (matmul, linear) go to cuBLASLt in fp32 (CUBLAS_COMPUTE_32F,
 * no TF32). cuBLASLt is column-major, and a row-major c(m,n) is a
 * column-major c^T(n,m), so c^T = op(b)^T op(a)^T is computed with the
 * operands swapped and each keeping its own transpose flag: no copies. The
 * linear bias rides the BIAS epilogue (one pass over out). Algorithms come
 * from the heuristic once per (shape, transposes, epilogue, pointer
 * alignment) and are cached; the alignments go into the preference because
 * cuBLASLt otherwise assumes 256-byte aligned operands, which sub-tensors
 * carved from a slab are not.
 *
 * Every other op is a hand-written kernel on stream 0, written for clarity
 * first (llm.c style) and with a fixed reduction order everywhere: no float
 * atomics, so every result is bitwise reproducible run to run.
 *  - Row ops (layernorm, attention softmax) use one warp per row and xor
 *    butterflies, whose result is the same in every lane.
 *  - Column sums (bias, layernorm weight/bias gradients) are two-pass: row
 *    chunks whose bounds depend only on N write partials to the scratch
 *    buffer, then one thread per column adds them in chunk order.
 *  - The embedding table gradient is owned per (row bucket, column): the
 *    thread for column c and bucket j walks the tokens in order and adds
 *    only rows v with v % buckets == j, so repeated tokens never race and
 *    each row receives its contributions in token order, as on the CPU.
 *  - Attention follows the contract: att (B,NH,T,T) holds the probabilities.
 *    Its five products are one batched tiled SIMT GEMM over (b, h) with
 *    strided views into qkv (no permute copies), which skips the tiles and
 *    k ranges the causal mask makes zero; softmax and its backward are warp
 *    row kernels. A flash-style kernel that never writes T x T belongs
 *    behind a new op.
 *  - softmax_xent: one block per row, an online (max, sum) pass with the sum
 *    in double (as the CPU), then one pass writing the gradient.
 *  - sumsq: a fixed grid (size from n only) of double partials, then one
 *    block adds them in a fixed tree.
 * Elementwise ops that the CPU writes without FMA (adamw, residual, scale)
 * use explicitly rounded intrinsics, so they match the CPU bitwise.
 *
 * Errors: every foreign call goes through CUDA_TRY / CUBLAS_TRY / LAUNCH_TRY
 * (cuda_int.h); ops return void, so the first failure is kept for
 * zinc_cuda_last_status(). */
#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <mutex>

#include <cublasLt.h>
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
    EMB_BUCKETS = 64,          /* row buckets of the embedding table gradient */
    EMB_TOK_TILE = 1024,       /* tokens staged in shared memory at a time */
    XENT_BLOCK = 512,          /* threads per row of softmax_xent */
    SUMSQ_BLOCK = 256,
    SUMSQ_MAX_BLOCKS = 1024,
    SUMSQ_MIN_PER_BLOCK = 4096,
    ALGO_CACHE_N = 64,         /* cached cuBLASLt algorithms */
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
    int m, n, k, ta, tb, bias;
    unsigned al_a, al_b, al_c, al_bias;
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
        g.scratch_bytes = 0;
        CUDA_TRY(cudaFree(g.scratch));
        g.scratch = NULL;
    }
    CUDA_TRY(cudaMalloc(&p, want));
    g.scratch = p;
    g.scratch_bytes = want;
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

/* c = beta * c, or 0 where beta is 0 (BLAS: c is not read then). */
static __global__ void beta_scale_kernel(float *c, float beta, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        c[i] = beta == 0.0f ? 0.0f : __fmul_rn(beta, c[i]);
}

/* out(N,OC) rows = bias(OC). */
static __global__ void fill_rows_kernel(float *out, const float *bias, int OC, size_t n)
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

static __global__ void gelu_forward_kernel(float *out, const float *inp, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float x = inp[i];
        const float u = GELU_SCALE * (x + GELU_CUBE * x * x * x);
        out[i] = 0.5f * x * (1.0f + gelu_tanh(u));
    }
}

static __global__ void gelu_backward_kernel(float *dinp, const float *inp, const float *dout, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float x = inp[i];
        const float x2 = x * x;
        const float u = GELU_SCALE * (x + GELU_CUBE * x2 * x);
        const float th = gelu_tanh(u);
        const float sech2 = 1.0f - th * th;
        const float gr = 0.5f * (1.0f + th) +
                         0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * GELU_CUBE * x2);
        dinp[i] += gr * dout[i];
    }
}

static __global__ void residual_kernel(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = __fadd_rn(a[i], b[i]);
}

static __global__ void scale_kernel(float *x, float s, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = __fmul_rn(x[i], s);
}

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
template <bool LN>
static __global__ void colsum_partial_kernel(float *part, const float *dout, const float *inp,
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
            const float dy = dout[(size_t)r * C + c];
            if (LN) {
                a0 += (inp[(size_t)r * C + c] - mean[r]) * rstd[r] * dy;
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

/* dst(C) += column sums of src(N,C). Returns 0 after recording an error. */
static int colsum_acc(float *dst, const float *src, int N, int C)
{
    const int rpc = colsum_rows_per_chunk(N);
    const int nchunk = (N + rpc - 1) / rpc;
    const dim3 grid((unsigned)((C + 31) / 32), (unsigned)nchunk), block(32, 8);
    int ok = 0;
    float *part = (float *)cuda_scratch((size_t)nchunk * C * sizeof(float));
    if (!part)
        goto cleanup;
    colsum_partial_kernel<false><<<grid, block>>>(part, src, NULL, NULL, NULL, N, C, rpc);
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

/* Largest power of two (4..256) that divides the address. */
static unsigned ptr_align(const void *p)
{
    const uintptr_t a = (uintptr_t)p;
    unsigned al = 256;
    while (al > 4 && a % al)
        al >>= 1;
    return al;
}

static int algo_key_eq(const algo_key *x, const algo_key *y)
{
    return x->m == y->m && x->n == y->n && x->k == y->k && x->ta == y->ta && x->tb == y->tb &&
           x->bias == y->bias && x->al_a == y->al_a && x->al_b == y->al_b &&
           x->al_c == y->al_c && x->al_bias == y->al_bias;
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

/* Row-major c(m,n) = alpha op(a) op(b) + beta c [+ bias(n) on every row],
 * as column-major c^T(n,m) = op(b)^T op(a)^T: cuBLASLt's A is our b, its B
 * our a. m, n, k > 0; requires cuda_state_get() == 1.
 * Returns 1 when done, 0 when cuBLASLt has no algorithm for these arguments
 * (nothing recorded: the caller may fall back), -1 after recording an error. */
static int lt_matmul(float *c, const float *a, const float *b, int m, int n, int k, int ta,
                     int tb, float alpha, float beta, const float *bias)
{
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    cublasLtMatmulAlgo_t algo;
    cublasStatus_t hs;
    const cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    const uint64_t ws_bytes = CUDA_LT_WS_BYTES;
    const algo_key key = {m, n, k, ta, tb, bias != NULL, ptr_align(a), ptr_align(b),
                          ptr_align(c), bias ? ptr_align(bias) : 0u};
    /* cuBLASLt's A = our b: stored (k,n) row-major = (n,k) column-major, or
     * (n,k) row-major = (k,n) column-major when tb. Its B = our a likewise. */
    const uint64_t a_rows = tb ? k : n, a_cols = tb ? n : k;
    const uint64_t b_rows = ta ? m : k, b_cols = ta ? k : m;
    int nres = 0, rc = -1;
    memset(&res, 0, sizeof res);

    CUBLAS_TRY(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (bias) {
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                  sizeof epi));
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                  sizeof bias));
    }
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, a_rows, a_cols, (int64_t)a_rows));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, b_rows, b_cols, (int64_t)b_rows));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, (uint64_t)n, (uint64_t)m, n));

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
static int gemm(float *c, const float *a, const float *b, int m, int n, int k, int ta, int tb,
                float alpha, float beta)
{
    const int rc = lt_matmul(c, a, b, m, n, k, ta, tb, alpha, beta, NULL);
    if (rc == 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "no cuBLASLt fp32 algorithm for m=%d n=%d k=%d ta=%d tb=%d",
                 m, n, k, ta, tb);
        cuda_fail(ZINC_ERR_CUDA, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__, msg);
    }
    return rc == 1;
}

static void cuda_matmul(float *c, const float *a, const float *b, int m, int n, int k,
                        int trans_a, int trans_b, float alpha, float beta)
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
    gemm(c, a, b, m, n, k, trans_a, trans_b, alpha, beta);
cleanup:
    return;
}

/* out(N,OC) = inp(N,C) @ weight(C,OC) + bias(OC). The bias goes through
 * the BIAS epilogue when its pointer is 16-byte aligned and cuBLASLt has an
 * algorithm for it; otherwise out is filled with bias rows and the product
 * accumulates (beta = 1), as the CPU does. */
static void cuda_linear_forward(float *out, const float *inp, const float *weight,
                                const float *bias, int N, int C, int OC)
{
    assert(out && inp && weight && N >= 0 && C > 0 && OC > 0);
    int rc = 0;
    if (N == 0)
        return;
    if (!cuda_state_get())
        goto cleanup;
    if (bias && ptr_align(bias) >= 16) {
        rc = lt_matmul(out, inp, weight, N, OC, C, 0, 0, 1.0f, 0.0f, bias);
        if (rc != 0)
            goto cleanup; /* done, or an error was recorded */
    }
    if (bias) {
        fill_rows_kernel<<<ew_grid((size_t)N * OC), EW_BLOCK>>>(out, bias, OC, (size_t)N * OC);
        LAUNCH_TRY(fill_rows_kernel);
    }
    gemm(out, inp, weight, N, OC, C, 0, 0, 1.0f, bias ? 1.0f : 0.0f);
cleanup:
    return;
}

/* dinp(N,C) += dout(N,OC) @ weight(C,OC)^T; dweight(C,OC) += inp^T @ dout;
 * dbias(OC) += column sums of dout (two-pass, deterministic). */
static void cuda_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                 const float *inp, const float *weight, int N, int C, int OC)
{
    assert(dweight && dout && inp && weight && N >= 0 && C > 0 && OC > 0);
    if (N == 0)
        return;
    if (!cuda_state_get())
        return;
    if (dinp && !gemm(dinp, dout, weight, N, C, OC, 0, 1, 1.0f, 1.0f))
        return;
    if (!gemm(dweight, inp, dout, C, OC, N, 1, 0, 1.0f, 1.0f))
        return;
    if (dbias)
        colsum_acc(dbias, dout, N, OC);
}

/* ------------------------------------------------------------------ */
/* embedding                                                           */
/* ------------------------------------------------------------------ */

/* out(B,T,C) = wte[tokens[b,t]] + wpe[t]; one thread per element. */
static __global__ void embedding_forward_kernel(float *out, const int32_t *tokens, const float *wte,
                                         const float *wpe, int T, int C, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t bt = i / (size_t)C;
        const int c = (int)(i % (size_t)C);
        const int t = (int)(bt % (size_t)T);
        const int32_t tok = tokens[bt];
        assert(tok >= 0);
        out[i] = wte[(size_t)tok * C + c] + wpe[(size_t)t * C + c];
    }
}

/* dwte(V,C) += dout rows by token. grid (ceil(C/128), EMB_BUCKETS), block
 * 128: the thread for (bucket, c) owns column c of every row v with
 * v % EMB_BUCKETS == bucket, and adds in token order. */
static __global__ void embedding_backward_wte_kernel(float *dwte, const float *dout,
                                              const int32_t *tokens, int BT, int C)
{
    __shared__ int32_t tok_s[EMB_TOK_TILE];
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int bucket = (int)blockIdx.y;
    for (int base = 0; base < BT; base += EMB_TOK_TILE) {
        const int cnt = min(EMB_TOK_TILE, BT - base);
        __syncthreads(); /* the previous tile is consumed */
        for (int i = threadIdx.x; i < cnt; i += blockDim.x)
            tok_s[i] = tokens[base + i];
        __syncthreads();
        if (c < C) {
            for (int i = 0; i < cnt; i++) {
                const int32_t tok = tok_s[i];
                if (tok % EMB_BUCKETS == bucket)
                    dwte[(size_t)tok * C + c] += dout[(size_t)(base + i) * C + c];
            }
        }
    }
}

/* dwpe(T,C) += sum over b of dout(B,T,C)[b], b in order; thread per (t, c). */
static __global__ void embedding_backward_wpe_kernel(float *dwpe, const float *dout, int B, int T,
                                              int C)
{
    const size_t n = (size_t)T * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float s = dwpe[i];
        for (int b = 0; b < B; b++)
            s += dout[(size_t)b * n + i];
        dwpe[i] = s;
    }
}

static void cuda_embedding_forward(float *out, const int32_t *tokens, const float *wte,
                                   const float *wpe, int B, int T, int C)
{
    assert(out && tokens && wte && wpe && B >= 0 && T >= 0 && C > 0);
    const size_t n = (size_t)B * T * C;
    if (n == 0)
        return;
    embedding_forward_kernel<<<ew_grid(n), EW_BLOCK>>>(out, tokens, wte, wpe, T, C, n);
    LAUNCH_TRY(embedding_forward_kernel);
cleanup:
    return;
}

static void cuda_embedding_backward(float *dwte, float *dwpe, const float *dout,
                                    const int32_t *tokens, int B, int T, int C)
{
    assert(dwte && dwpe && dout && tokens && B >= 0 && T >= 0 && C > 0);
    const dim3 grid((unsigned)((C + 127) / 128), EMB_BUCKETS);
    if ((size_t)B * T == 0)
        return;
    embedding_backward_wte_kernel<<<grid, 128>>>(dwte, dout, tokens, B * T, C);
    LAUNCH_TRY(embedding_backward_wte_kernel);
    embedding_backward_wpe_kernel<<<ew_grid((size_t)T * C), EW_BLOCK>>>(dwpe, dout, B, T, C);
    LAUNCH_TRY(embedding_backward_wpe_kernel);
cleanup:
    return;
}

/* ------------------------------------------------------------------ */
/* layernorm                                                           */
/* ------------------------------------------------------------------ */

/* One warp per row of inp(N,C); two-pass variance like the CPU. */
static __global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd, const float *inp,
                                         const float *weight, const float *bias, int N, int C)
{
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * ROW_WARPS + threadIdx.x / 32;
    if (row >= N)
        return; /* the whole warp leaves together */
    const float inv_c = 1.0f / (float)C;
    const float *x = inp + (size_t)row * C;
    float *o = out + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32)
        s += x[c];
    const float m = warp_sum(s) * inv_c;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float d = x[c] - m;
        v += d * d;
    }
    const float rs = 1.0f / sqrtf(warp_sum(v) * inv_c + LN_EPS);
    for (int c = lane; c < C; c += 32)
        o[c] = (x[c] - m) * rs * weight[c] + bias[c];
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = rs;
    }
}

/* dinp(N,C) += rstd (dnorm - mean_c(dnorm) - norm mean_c(dnorm norm)),
 * dnorm = weight dout; one warp per row. */
static __global__ void layernorm_backward_dinp_kernel(float *dinp, const float *dout, const float *inp,
                                               const float *weight, const float *mean,
                                               const float *rstd, int N, int C)
{
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * ROW_WARPS + threadIdx.x / 32;
    if (row >= N)
        return;
    const float inv_c = 1.0f / (float)C;
    const float *x = inp + (size_t)row * C;
    const float *dy = dout + (size_t)row * C;
    float *dx = dinp + (size_t)row * C;
    const float m = mean[row], rs = rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float dn = weight[c] * dy[c];
        s1 += dn;
        s2 += dn * (x[c] - m) * rs;
    }
    const float dn_mean = warp_sum(s1) * inv_c, dnn_mean = warp_sum(s2) * inv_c;
    for (int c = lane; c < C; c += 32) {
        const float norm = (x[c] - m) * rs;
        dx[c] += (weight[c] * dy[c] - dn_mean - norm * dnn_mean) * rs;
    }
}

static void cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                   const float *weight, const float *bias, int N, int C)
{
    assert(out && mean && rstd && inp && weight && bias && N >= 0 && C > 0);
    if (N == 0)
        return;
    layernorm_forward_kernel<<<row_grid((size_t)N), ROW_WARPS * 32>>>(out, mean, rstd, inp,
                                                                      weight, bias, N, C);
    LAUNCH_TRY(layernorm_forward_kernel);
cleanup:
    return;
}

static void cuda_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                    const float *inp, const float *weight, const float *mean,
                                    const float *rstd, int N, int C)
{
    assert(dinp && dweight && dbias && dout && inp && weight && mean && rstd);
    assert(N >= 0 && C > 0);
    const int rpc = colsum_rows_per_chunk(N);
    const int nchunk = N > 0 ? (N + rpc - 1) / rpc : 0;
    const dim3 grid((unsigned)((C + 31) / 32), (unsigned)nchunk), block(32, 8);
    float *part = NULL;
    if (N == 0)
        return;
    layernorm_backward_dinp_kernel<<<row_grid((size_t)N), ROW_WARPS * 32>>>(
        dinp, dout, inp, weight, mean, rstd, N, C);
    LAUNCH_TRY(layernorm_backward_dinp_kernel);
    if (!cuda_state_get())
        goto cleanup;
    part = (float *)cuda_scratch((size_t)2 * nchunk * C * sizeof(float));
    if (!part)
        goto cleanup;
    colsum_partial_kernel<true><<<grid, block>>>(part, dout, inp, mean, rstd, N, C, rpc);
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

static void cuda_gelu_forward(float *out, const float *inp, size_t n)
{
    assert(out && inp);
    if (n == 0)
        return;
    gelu_forward_kernel<<<ew_grid(n), EW_BLOCK>>>(out, inp, n);
    LAUNCH_TRY(gelu_forward_kernel);
cleanup:
    return;
}

static void cuda_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n)
{
    assert(dinp && inp && dout);
    if (n == 0)
        return;
    gelu_backward_kernel<<<ew_grid(n), EW_BLOCK>>>(dinp, inp, dout, n);
    LAUNCH_TRY(gelu_backward_kernel);
cleanup:
    return;
}

static void cuda_residual_forward(float *out, const float *a, const float *b, size_t n)
{
    assert(out && a && b);
    if (n == 0)
        return;
    residual_kernel<<<ew_grid(n), EW_BLOCK>>>(out, a, b, n);
    LAUNCH_TRY(residual_kernel);
cleanup:
    return;
}

/* ------------------------------------------------------------------ */
/* attention                                                           */
/* ------------------------------------------------------------------ */

enum { BG_M = 64, BG_N = 64, BG_K = 16, BG_THREADS = 256 };
enum {
    BG_CAUSAL_TILES = 1, /* C is (T,T) causal: skip tiles wholly above the diagonal */
    BG_K_UPTO_ROW = 2,   /* A(i,k) = 0 for k > i: stop k at the tile's last row */
    BG_K_FROM_ROW = 4,   /* A(i,k) = 0 for k < i: start k at the tile's first row */
};

/* One batched product C = alpha A B + beta C over matrices (zb, zh),
 * zb < B, zh < nh, given by element strides:
 *   A(i,k) = a[zb a_bs + zh a_hs + i a_rs + k a_cs]      (M,K)
 *   B(k,j) = b[zb b_bs + zh b_hs + k b_rs + j b_cs]      (K,N)
 *   C(i,j) = c[zb c_bs + zh c_hs + i c_rs + j]           (M,N)
 * beta 0 does not read C. */
struct bgemm_args {
    float *c;
    const float *a, *b;
    long long a_rs, a_cs, a_bs, a_hs;
    long long b_rs, b_cs, b_bs, b_hs;
    long long c_rs, c_bs, c_hs;
    int nh, M, N, K, flags;
    float alpha, beta;
};

/* 64 x 64 tile of C per block of 256 threads, 4 x 4 outputs per thread
 * (rows ty + 16r, columns tx + 16c: stores coalesce along j); k in steps of
 * 16 through shared memory, each operand loaded with threads walking its
 * contiguous dimension. grid (tiles_m * tiles_n, B * nh). Each output is one
 * thread's fmaf chain in k order: deterministic. */
static __global__ void __launch_bounds__(BG_THREADS) bgemm_kernel(const bgemm_args p)
{
    __shared__ float As[BG_K][BG_M + 4];
    __shared__ float Bs[BG_K][BG_N + 4];
    const int tiles_n = (p.N + BG_N - 1) / BG_N;
    const int m0 = (int)(blockIdx.x / tiles_n) * BG_M;
    const int n0 = (int)(blockIdx.x % tiles_n) * BG_N;
    if ((p.flags & BG_CAUSAL_TILES) && n0 > m0 + BG_M - 1)
        return; /* every j > every i: stays as the row kernels leave it */
    const int zb = (int)blockIdx.y / p.nh, zh = (int)blockIdx.y % p.nh;
    const float *A = p.a + zb * p.a_bs + zh * p.a_hs;
    const float *Bm = p.b + zb * p.b_bs + zh * p.b_hs;
    float *Cm = p.c + zb * p.c_bs + zh * p.c_hs;
    const int kbeg = (p.flags & BG_K_FROM_ROW) ? min(m0, p.K) : 0;
    const int kend = (p.flags & BG_K_UPTO_ROW) ? min(p.K, m0 + BG_M) : p.K;
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const bool a_kfast = p.a_cs == 1, b_jfast = p.b_cs == 1;
    float acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++)
            acc[r][q] = 0.0f;
    for (int k0 = kbeg; k0 < kend; k0 += BG_K) {
        for (int l = 0; l < (BG_K * BG_M) / BG_THREADS; l++) {
            const int e = tid + BG_THREADS * l;
            const int kk = a_kfast ? e % BG_K : e / BG_M;
            const int ii = a_kfast ? e / BG_K : e % BG_M;
            const int gi = m0 + ii, gk = k0 + kk;
            As[kk][ii] = (gi < p.M && gk < kend) ? A[gi * p.a_rs + gk * p.a_cs] : 0.0f;
        }
        for (int l = 0; l < (BG_K * BG_N) / BG_THREADS; l++) {
            const int e = tid + BG_THREADS * l;
            const int kk = b_jfast ? e / BG_N : e % BG_K;
            const int jj = b_jfast ? e % BG_N : e / BG_K;
            const int gj = n0 + jj, gk = k0 + kk;
            Bs[kk][jj] = (gj < p.N && gk < kend) ? Bm[gk * p.b_rs + gj * p.b_cs] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < BG_K; kk++) {
            float av[4], bv[4];
            for (int r = 0; r < 4; r++)
                av[r] = As[kk][ty + 16 * r];
            for (int q = 0; q < 4; q++)
                bv[q] = Bs[kk][tx + 16 * q];
            for (int r = 0; r < 4; r++)
                for (int q = 0; q < 4; q++)
                    acc[r][q] = fmaf(av[r], bv[q], acc[r][q]);
        }
        __syncthreads();
    }
    for (int r = 0; r < 4; r++) {
        const int i = m0 + ty + 16 * r;
        if (i >= p.M)
            continue;
        for (int q = 0; q < 4; q++) {
            const int j = n0 + tx + 16 * q;
            if (j >= p.N)
                continue;
            float *cp = Cm + i * p.c_rs + j;
            *cp = p.beta == 0.0f ? p.alpha * acc[r][q] : p.alpha * acc[r][q] + p.beta * *cp;
        }
    }
}

/* Launches bgemm_kernel over n_mats = B * nh matrices. Returns 0 after
 * recording an error. */
static int bgemm(const bgemm_args *p, int n_mats)
{
    const unsigned tiles = (unsigned)(((p->M + BG_M - 1) / BG_M) * ((p->N + BG_N - 1) / BG_N));
    int ok = 0;
    assert(n_mats > 0 && n_mats <= 65535);
    bgemm_kernel<<<dim3(tiles, (unsigned)n_mats), BG_THREADS>>>(*p);
    LAUNCH_TRY(bgemm_kernel);
    ok = 1;
cleanup:
    return ok;
}

/* Rows r of att (n_rows = B NH T rows of T): row r is query t = r % T.
 * Scores in att[0..t] become softmax probabilities, att[t+1..T) zeros. */
static __global__ void attention_softmax_kernel(float *att, int T, size_t n_rows)
{
    const int lane = threadIdx.x % 32;
    const size_t row = (size_t)blockIdx.x * ROW_WARPS + threadIdx.x / 32;
    if (row >= n_rows)
        return;
    const int t = (int)(row % (size_t)T);
    float *a = att + row * T;
    float mx = -INFINITY;
    for (int t2 = lane; t2 <= t; t2 += 32)
        mx = fmaxf(mx, a[t2]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int t2 = lane; t2 <= t; t2 += 32) {
        const float e = expf(a[t2] - mx);
        a[t2] = e;
        sum += e;
    }
    const float inv = 1.0f / warp_sum(sum);
    for (int t2 = lane; t2 <= t; t2 += 32)
        a[t2] *= inv;
    for (int t2 = t + 1 + lane; t2 < T; t2 += 32)
        a[t2] = 0.0f;
}

/* Softmax backward per row: datt (in da) becomes the score gradient
 * dpre = att (datt - sum(att datt)) scale over t2 <= t, 0 above. */
static __global__ void attention_softmax_backward_kernel(float *da, const float *att, int T,
                                                  size_t n_rows, float scale)
{
    const int lane = threadIdx.x % 32;
    const size_t row = (size_t)blockIdx.x * ROW_WARPS + threadIdx.x / 32;
    if (row >= n_rows)
        return;
    const int t = (int)(row % (size_t)T);
    const float *a = att + row * T;
    float *d = da + row * T;
    float s = 0.0f;
    for (int t2 = lane; t2 <= t; t2 += 32)
        s += a[t2] * d[t2];
    s = warp_sum(s);
    for (int t2 = lane; t2 <= t; t2 += 32)
        d[t2] = a[t2] * (d[t2] - s) * scale;
    for (int t2 = t + 1 + lane; t2 < T; t2 += 32)
        d[t2] = 0.0f;
}

/* out(B,T,C) and att(B,NH,T,T) from qkv(B,T,3C):
 * att = softmax(scale q k^T) (causal), out = att v. */
static void cuda_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C,
                                   int NH)
{
    assert(out && att && qkv && B >= 0 && T >= 0 && NH > 0 && C % NH == 0);
    const int HS = C / NH;
    const float scale = 1.0f / sqrtf((float)HS);
    const size_t n_rows = (size_t)B * NH * T;
    const long long TT = (long long)T * T;
    bgemm_args p;
    const float *q, *k, *v;
    long long rs, bs, hs;
    if (n_rows == 0)
        return;
    /* views into qkv (B,T,3C) for head (b, h): q | k | v at columns 0, C,
     * 2C, each (T,HS) with row stride 3C; matrix strides T 3C (b), HS (h) */
    q = qkv, k = qkv + C, v = qkv + 2 * C;
    rs = 3LL * C, bs = (long long)T * 3 * C, hs = HS;

    /* att (T,T) = scale q (T,HS) k^T (HS,T), tiles on or below the diagonal */
    memset(&p, 0, sizeof p);
    p.c = att, p.c_rs = T, p.c_bs = NH * TT, p.c_hs = TT;
    p.a = q, p.a_rs = rs, p.a_cs = 1, p.a_bs = bs, p.a_hs = hs;
    p.b = k, p.b_rs = 1, p.b_cs = rs, p.b_bs = bs, p.b_hs = hs; /* B(k,j) = key j, dim k */
    p.nh = NH, p.M = T, p.N = T, p.K = HS, p.flags = BG_CAUSAL_TILES;
    p.alpha = scale, p.beta = 0.0f;
    if (!bgemm(&p, B * NH))
        goto cleanup;

    attention_softmax_kernel<<<row_grid(n_rows), ROW_WARPS * 32>>>(att, T, n_rows);
    LAUNCH_TRY(attention_softmax_kernel);

    /* out (T,HS) = att (T,T) v (T,HS); att(t, t2) = 0 for t2 > t */
    memset(&p, 0, sizeof p);
    p.c = out, p.c_rs = C, p.c_bs = (long long)T * C, p.c_hs = HS;
    p.a = att, p.a_rs = T, p.a_cs = 1, p.a_bs = NH * TT, p.a_hs = TT;
    p.b = v, p.b_rs = rs, p.b_cs = 1, p.b_bs = bs, p.b_hs = hs;
    p.nh = NH, p.M = T, p.N = HS, p.K = T, p.flags = BG_K_UPTO_ROW;
    p.alpha = 1.0f, p.beta = 0.0f;
    bgemm(&p, B * NH);
cleanup:
    return;
}

/* Backward of cuda_attention_forward; dqkv accumulates. scratch (B,NH,T,T)
 * holds datt = dout v^T, then in place dpre (the score gradient, scale
 * included, zero above the diagonal); then dv += att^T dout,
 * dq += dpre k, dk += dpre^T q. */
static void cuda_attention_backward(float *dqkv, float *scratch, const float *dout,
                                    const float *qkv, const float *att, int B, int T, int C,
                                    int NH)
{
    assert(dqkv && scratch && dout && qkv && att && B >= 0 && T >= 0);
    assert(NH > 0 && C % NH == 0);
    const int HS = C / NH;
    const float scale = 1.0f / sqrtf((float)HS);
    const size_t n_rows = (size_t)B * NH * T;
    const long long TT = (long long)T * T;
    bgemm_args p;
    const float *q, *k, *v;
    float *dq = dqkv, *dk = dqkv + C, *dv = dqkv + 2 * C;
    long long rs, bs, hs;
    if (n_rows == 0)
        return;
    /* views into qkv (B,T,3C) for head (b, h): q | k | v at columns 0, C,
     * 2C, each (T,HS) with row stride 3C; matrix strides T 3C (b), HS (h) */
    q = qkv, k = qkv + C, v = qkv + 2 * C;
    rs = 3LL * C, bs = (long long)T * 3 * C, hs = HS;

    /* datt (T,T) = dout (T,HS) v^T (HS,T), tiles on or below the diagonal */
    memset(&p, 0, sizeof p);
    p.c = scratch, p.c_rs = T, p.c_bs = NH * TT, p.c_hs = TT;
    p.a = dout, p.a_rs = C, p.a_cs = 1, p.a_bs = (long long)T * C, p.a_hs = HS;
    p.b = v, p.b_rs = 1, p.b_cs = rs, p.b_bs = bs, p.b_hs = hs;
    p.nh = NH, p.M = T, p.N = T, p.K = HS, p.flags = BG_CAUSAL_TILES;
    p.alpha = 1.0f, p.beta = 0.0f;
    if (!bgemm(&p, B * NH))
        goto cleanup;

    attention_softmax_backward_kernel<<<row_grid(n_rows), ROW_WARPS * 32>>>(scratch, att, T,
                                                                            n_rows, scale);
    LAUNCH_TRY(attention_softmax_backward_kernel);

    /* dv (T,HS) += att^T (T,T) dout (T,HS): A(t2, t) = att(t, t2), 0 for t < t2 */
    memset(&p, 0, sizeof p);
    p.c = dv, p.c_rs = rs, p.c_bs = bs, p.c_hs = hs;
    p.a = att, p.a_rs = 1, p.a_cs = T, p.a_bs = NH * TT, p.a_hs = TT;
    p.b = dout, p.b_rs = C, p.b_cs = 1, p.b_bs = (long long)T * C, p.b_hs = HS;
    p.nh = NH, p.M = T, p.N = HS, p.K = T, p.flags = BG_K_FROM_ROW;
    p.alpha = 1.0f, p.beta = 1.0f;
    if (!bgemm(&p, B * NH))
        goto cleanup;

    /* dq (T,HS) += dpre (T,T) k (T,HS): dpre(t, t2) = 0 for t2 > t */
    memset(&p, 0, sizeof p);
    p.c = dq, p.c_rs = rs, p.c_bs = bs, p.c_hs = hs;
    p.a = scratch, p.a_rs = T, p.a_cs = 1, p.a_bs = NH * TT, p.a_hs = TT;
    p.b = k, p.b_rs = rs, p.b_cs = 1, p.b_bs = bs, p.b_hs = hs;
    p.nh = NH, p.M = T, p.N = HS, p.K = T, p.flags = BG_K_UPTO_ROW;
    p.alpha = 1.0f, p.beta = 1.0f;
    if (!bgemm(&p, B * NH))
        goto cleanup;

    /* dk (T,HS) += dpre^T (T,T) q (T,HS): A(t2, t) = dpre(t, t2), 0 for t < t2 */
    memset(&p, 0, sizeof p);
    p.c = dk, p.c_rs = rs, p.c_bs = bs, p.c_hs = hs;
    p.a = scratch, p.a_rs = 1, p.a_cs = T, p.a_bs = NH * TT, p.a_hs = TT;
    p.b = q, p.b_rs = rs, p.b_cs = 1, p.b_bs = bs, p.b_hs = hs;
    p.nh = NH, p.M = T, p.N = HS, p.K = T, p.flags = BG_K_FROM_ROW;
    p.alpha = 1.0f, p.beta = 1.0f;
    bgemm(&p, B * NH);
cleanup:
    return;
}

/* ------------------------------------------------------------------ */
/* softmax + cross-entropy                                             */
/* ------------------------------------------------------------------ */

/* (m, s) += (m2, s2) for sums s of exp(x - m); -inf marks an empty part. */
__device__ __forceinline__ void ms_merge(float &m, double &s, float m2, double s2)
{
    const float mx = fmaxf(m, m2);
    if (mx == -INFINITY)
        return; /* both empty */
    const double a = m == -INFINITY ? 0.0 : s * (double)expf(m - mx);
    const double b = m2 == -INFINITY ? 0.0 : s2 * (double)expf(m2 - mx);
    s = a + b;
    m = mx;
}

/* One block of XENT_BLOCK threads per row of logits(N,V). Pass 1: each
 * thread an online (max, sum exp) over its strided elements, merged by
 * warp butterflies (a merge is symmetric, so every lane agrees) and then
 * across warps in order. Pass 2 overwrites the row with the gradient. */
static __global__ void __launch_bounds__(XENT_BLOCK)
    softmax_xent_kernel(float *losses, float *logits, const int32_t *targets, float dloss, int V)
{
    __shared__ float wm[XENT_BLOCK / 32];
    __shared__ double ws[XENT_BLOCK / 32];
    __shared__ float row_max;
    __shared__ double row_sum;
    float *x = logits + (size_t)blockIdx.x * V;
    const int tgt = targets[blockIdx.x];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (tgt < 0) { /* ignored row: uniform across the block */
        for (int j = threadIdx.x; j < V; j += blockDim.x)
            x[j] = 0.0f;
        if (threadIdx.x == 0)
            losses[blockIdx.x] = 0.0f;
        return;
    }
    assert(tgt < V);
    float m = -INFINITY;
    double s = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float xj = x[j];
        if (xj > m) {
            s = (m == -INFINITY ? 0.0 : s * (double)expf(m - xj)) + 1.0;
            m = xj;
        } else if (m != -INFINITY) { /* xj = m = -inf adds exp(-inf) = 0 */
            s += (double)expf(xj - m);
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const double s2 = __shfl_xor_sync(0xffffffffu, s, o);
        ms_merge(m, s, m2, s2);
    }
    if (lane == 0) {
        wm[warp] = m;
        ws[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float mm = wm[0];
        double ss = ws[0];
        for (int w = 1; w < XENT_BLOCK / 32; w++)
            ms_merge(mm, ss, wm[w], ws[w]);
        row_max = mm;
        row_sum = ss;
        losses[blockIdx.x] = (float)(log(ss) - ((double)x[tgt] - (double)mm));
    }
    __syncthreads();
    const float mx = row_max;
    const float f = (float)((double)dloss / row_sum);
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float gj = expf(x[j] - mx) * f;
        if (j == tgt)
            gj -= dloss;
        x[j] = gj;
    }
}

static void cuda_softmax_xent(float *losses, float *logits, const int32_t *targets, float dloss,
                              int N, int V)
{
    assert(losses && logits && targets && N >= 0 && V > 0);
    if (N == 0)
        return;
    softmax_xent_kernel<<<(unsigned)N, XENT_BLOCK>>>(losses, logits, targets, dloss, V);
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
static __global__ void __launch_bounds__(SUMSQ_BLOCK)
    sumsq_partial_kernel(double *part, const float *x, size_t n, size_t chunk)
{
    __shared__ double sh[SUMSQ_BLOCK];
    const size_t lo = blockIdx.x * chunk;
    const size_t hi = lo + chunk < n ? lo + chunk : n;
    double s = 0.0;
    for (size_t i = lo + threadIdx.x; i < hi; i += SUMSQ_BLOCK)
        s += (double)x[i] * (double)x[i];
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
static double cuda_sumsq(const float *x, size_t n)
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
    sumsq_partial_kernel<<<(unsigned)nblk, SUMSQ_BLOCK>>>(buf + 1, x, n, chunk);
    LAUNCH_TRY(sumsq_partial_kernel);
    sumsq_finish_kernel<<<1, SUMSQ_BLOCK>>>(buf, buf + 1, (int)nblk);
    LAUNCH_TRY(sumsq_finish_kernel);
    CUDA_TRY(cudaMemcpy(&result, buf, sizeof result, cudaMemcpyDeviceToHost));
cleanup:
    return result;
}

static void cuda_scale(float *x, float s, size_t n)
{
    assert(x || n == 0);
    if (n == 0)
        return;
    scale_kernel<<<ew_grid(n), EW_BLOCK>>>(x, s, n);
    LAUNCH_TRY(scale_kernel);
cleanup:
    return;
}

static const zinc_ops cuda_ops = {
    /* .name = */ "cuda",
    /* .matmul = */ cuda_matmul,
    /* .linear_forward = */ cuda_linear_forward,
    /* .linear_backward = */ cuda_linear_backward,
    /* .embedding_forward = */ cuda_embedding_forward,
    /* .embedding_backward = */ cuda_embedding_backward,
    /* .layernorm_forward = */ cuda_layernorm_forward,
    /* .layernorm_backward = */ cuda_layernorm_backward,
    /* .gelu_forward = */ cuda_gelu_forward,
    /* .gelu_backward = */ cuda_gelu_backward,
    /* .attention_forward = */ cuda_attention_forward,
    /* .attention_backward = */ cuda_attention_backward,
    /* .residual_forward = */ cuda_residual_forward,
    /* .softmax_xent = */ cuda_softmax_xent,
    /* .adamw = */ cuda_adamw,
    /* .sumsq = */ cuda_sumsq,
    /* .scale = */ cuda_scale,
};

/* The CUDA op table; static storage, touches no CUDA API. */
extern "C" const zinc_ops *zinc_ops_cuda(void)
{
    return &cuda_ops;
}
