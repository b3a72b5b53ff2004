/* ops_matmul.cu - the dense products of both tables on cuBLASLt: matmul,
 * linear and head (forward and backward) and the fused linear + GELU ops,
 * with the cuBLASLt plumbing they share (the product with its epilogues,
 * the algorithm choice and optional autotuning, the bf16 staging of fp32
 * operands). */

/* Dense products (matmul, linear, head) go to cuBLASLt with fp32 compute
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
 * operands, which sub-tensors carved from a slab are not. */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_int.h"

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

    if (!cuda_algo_cache_find(&key, &algo)) {
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
        cuda_algo_cache_put(&key, &algo);
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
        to_bf16_kernel<<<cuda_ew_grid(n[i] / 4 + 1), EW_BLOCK>>>(
            (uint16_t *)(base + off[i]), src[i], n[i], cuda_al16(src[i]));
        LAUNCH_TRY(to_bf16_kernel);
        out[i] = base + off[i];
    }
    return 1;
cleanup:
    return 0;
}

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
        beta_scale_kernel<<<cuda_ew_grid((size_t)m * n), EW_BLOCK>>>(c, beta, (size_t)m * n);
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

/* zinc_device.peak_tflops: bf16 x bf16 -> bf16 products of 8192^3 (operands filled with
 * one small bf16 value, 0x3c3c ~ 0.0115), one warm-up then the median of 5 timed on stream
 * 0, each 2 n^3 FLOPs. Buffers from cudaMalloc, freed before returning. */
double cuda_peak_tflops(void)
{
    if (!cuda_state_get()) return 0;
    const int n = 8192;
    const size_t bytes = (size_t)n * n * 2;
    void *a = NULL, *b = NULL, *c = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    float ms[5];
    double rate = 0;
    int ok = cudaMalloc(&a, bytes) == cudaSuccess && cudaMalloc(&b, bytes) == cudaSuccess &&
             cudaMalloc(&c, bytes) == cudaSuccess && cudaEventCreate(&e0) == cudaSuccess &&
             cudaEventCreate(&e1) == cudaSuccess && cudaMemset(a, 0x3c, bytes) == cudaSuccess &&
             cudaMemset(b, 0x3c, bytes) == cudaSuccess;
    if (!ok) {
        zinc_error(ZINC_ERR_CUDA, "peak_tflops: %s", cudaGetErrorString(cudaGetLastError()));
        goto out;
    }
    for (int i = -1; i < 5; i++) { /* -1: the warm-up */
        cudaEventRecord(e0, 0);
        int r = lt_matmul(c, a, b, n, n, n, 0, 0, 1.0f, 0.0f, NULL, LT_BF16, LT_BF16);
        if (r == 0) zinc_error(ZINC_ERR_UNSUPPORTED, "peak_tflops: cuBLASLt has no bf16 algorithm for %d^3", n);
        if (r != 1) goto out; /* else lt_matmul recorded the error */
        cudaEventRecord(e1, 0);
        if (i < 0) continue;
        if (cudaEventSynchronize(e1) != cudaSuccess || cudaEventElapsedTime(&ms[i], e0, e1) != cudaSuccess) {
            zinc_error(ZINC_ERR_CUDA, "peak_tflops: %s", cudaGetErrorString(cudaGetLastError()));
            goto out;
        }
    }
    for (int i = 1; i < 5; i++) /* insertion sort: the median is ms[2] */
        for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
            float t = ms[j];
            ms[j] = ms[j - 1];
            ms[j - 1] = t;
        }
    if (ms[2] > 0) rate = 2.0 * n * (double)n * n / (ms[2] * 1e-3) / 1e12;
out:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    return rate;
}

void cuda_matmul(float *c, const float *a, const float *b, int m, int n, int k, int ta, int tb,
                 float alpha, float beta)
{
    matmul_impl(c, a, b, m, n, k, ta, tb, alpha, beta, 0);
}
void cuda_matmul_bf16(float *c, const float *a, const float *b, int m, int n, int k, int ta, int tb,
                      float alpha, float beta)
{
    matmul_impl(c, a, b, m, n, k, ta, tb, alpha, beta, 1);
}

/* --- the linear and head ops of both tables, on act storage A.
 * Table "cuda" (A float): act fp32, exact fp32 products.
 * Table "cuda-bf16" (A bf16): act bf16 read directly as tensor-core
 * operands; fp32 parameters staged to bf16 copies (stage_bf16); fp32
 * accumulation; bf16 outputs rounded once by cuBLASLt (a bf16 c is read
 * and combined in fp32 when beta = 1). --- */

/* The operands that a linear or head op's fp32 parameters give its
 * products: the weight w (nw elements) and the bias (nb; NULL: none) as
 * they are on the "cuda" table (bf16_ops 0), their bf16 copies on
 * "cuda-bf16" (stage_bf16; NULL stays NULL). op[0] receives the weight's,
 * op[1] the bias's. Returns 1, or 0 after recording an error. */
static int param_operands(int bf16_ops, const float *w, size_t nw, const float *bias, size_t nb,
                          const void **op)
{
    const float *src[2] = {w, bias};
    const size_t cnt[2] = {nw, nb};
    if (bf16_ops)
        return stage_bf16(src, cnt, 2, op);
    op[0] = w;
    op[1] = bias;
    return 1;
}

/* out(N,OC) = inp(N,C) @ W + bias(OC), W = weight(C,OC) (tw 0: the linear op) or
 * weight(OC,C)^T (tw 1: linear_t, nn.Linear's layout). The bias goes through
 * the BIAS epilogue (bias type = d type) when cuBLASLt has an algorithm
 * for it and, fp32, its pointer is 16-byte aligned (bf16: the bias staged
 * to bf16); otherwise out is filled with bias rows and the product
 * accumulates (beta = 1), as the CPU does (bf16: the bf16 bias rows, so
 * the sum is still rounded once). */
template <class A>
static void linear_fwd(void *out, const void *inp, const float *weight, const float *bias, int N, int C, int OC,
                       int tw)
{
    const int bf16_ops = sizeof(A) == 2;
    const int ab = bf16_ops ? LT_BF16 : LT_F32;
    const void *h[2] = {NULL, NULL};
    int rc = 0;
    assert(out && inp && weight && N >= 0 && C > 0 && OC > 0);
    if (N == 0 || !cuda_state_get() ||
        !param_operands(bf16_ops, weight, (size_t)C * OC, bias, (size_t)OC, h))
        return;
    if (h[1] && (bf16_ops || ptr_align(h[1]) >= 16)) {
        const lt_epi ep = {LT_EPI_NONE, h[1], NULL};
        rc = lt_matmul(out, inp, h[0], N, OC, C, 0, tw, 1.0f, 0.0f, &ep, ab, ab);
        if (rc != 0)
            return; /* done, or an error was recorded */
    }
    if (h[1]) {
        fill_rows_kernel<A><<<cuda_ew_grid((size_t)N * OC), EW_BLOCK>>>(
            (A *)out, (const A *)h[1], OC, (size_t)N * OC);
        LAUNCH_TRY(fill_rows_kernel);
    }
    gemm(out, inp, h[0], N, OC, C, 0, tw, 1.0f, h[1] ? 1.0f : 0.0f, ab, ab);
cleanup:
    return;
}

template <class A>
void cuda_linear_forward(void *out, const void *inp, const float *weight, const float *bias,
                         int N, int C, int OC)
{
    linear_fwd<A>(out, inp, weight, bias, N, C, OC, 0);
}

template <class A>
void cuda_linear_t_forward(void *out, const void *inp, const float *weight, const float *bias, int N, int C, int OC)
{
    linear_fwd<A>(out, inp, weight, bias, N, C, OC, 1);
}

/* dinp(N,C) += dy(N,K) @ w^T (tw 1: the linear op, w (C,K)) or dy @ w
 * (tw 0: linear_t, w (K,C)), on the weight operand of this table
 * (param_operands: the weight is staged once, only for dinp); nothing when
 * dinp is NULL. bf16: c = d bf16, beta 1, so one rounding. Returns 1, or 0
 * after recording an error. */
static int dinp_acc(int bf16_ops, void *dinp, const void *dy, const float *w, int N, int C, int K,
                    int tw)
{
    const int ab = bf16_ops ? LT_BF16 : LT_F32;
    const void *h[2] = {NULL, NULL};
    return !dinp || (param_operands(bf16_ops, w, (size_t)C * K, NULL, 0, h) &&
                     gemm(dinp, dy, h[0], N, C, K, 0, tw, 1.0f, 1.0f, ab, ab));
}

/* dinp(N,C) += dout(N,OC) @ weight(C,OC)^T; dweight(C,OC) += inp^T @ dout;
 * dbias(OC) += column sums of dout (two-pass, deterministic). bf16: dinp
 * bf16, dweight fp32 (bf16 operands, fp32 c), dbias fp32 from the bf16
 * dout. */
template <class A>
void cuda_linear_backward(void *dinp, float *dweight, float *dbias, const void *dout,
                          const void *inp, const float *weight, int N, int C, int OC)
{
    const int bf16_ops = sizeof(A) == 2;
    assert(dout && inp && weight && N >= 0 && C > 0 && OC > 0);
    if (N == 0 || !cuda_state_get() || !dinp_acc(bf16_ops, dinp, dout, weight, N, C, OC, 1) ||
        (dweight && /* NULL: a frozen weight */ !gemm(dweight, inp, dout, C, OC, N, 1, 0, 1.0f, 1.0f, bf16_ops ? LT_BF16 : LT_F32, LT_F32)))
        return;
    /* the column sums take the scratch after the products are enqueued:
     * stream order keeps the staged weight valid for them */
    if (dbias)
        cuda_colsum_acc(dbias, (const A *)dout, N, OC);
}

/* dinp(N,C) += dout(N,OC) @ weight(OC,C); dweight(OC,C) += dout^T @ inp; dbias(OC) +=
 * column sums of dout. bf16: dinp bf16, dweight fp32 (bf16 operands, fp32 c). */
template <class A>
void cuda_linear_t_backward(void *dinp, float *dweight, float *dbias, const void *dout, const void *inp,
                            const float *weight, int N, int C, int OC)
{
    const int bf16_ops = sizeof(A) == 2;
    assert(dout && inp && weight && N >= 0 && C > 0 && OC > 0);
    if (N == 0 || !cuda_state_get() || !dinp_acc(bf16_ops, dinp, dout, weight, N, C, OC, 0) ||
        (dweight && !gemm(dweight, dout, inp, OC, C, N, 1, 0, 1.0f, 1.0f, bf16_ops ? LT_BF16 : LT_F32, LT_F32)))
        return;
    if (dbias)
        cuda_colsum_acc(dbias, (const A *)dout, N, OC);
}

/* --- linear + GELU --- */

/* Linear + GELU (zinc/ops.h). The bf16 table runs one product with
 * cuBLASLt's GELU epilogue (GELU_BIAS, or GELU_AUX_BIAS when pre is kept:
 * the GELU of the fp32 result, one rounding of each output); the fp32
 * table, and the bf16 table when cuBLASLt has no epilogue algorithm for
 * the shape, run the linear op and then the GELU op (the bf16 fallback
 * takes the GELU of the rounded pre, within bf16 tolerance). */
template <class A>
void cuda_linear_gelu_forward(void *out, void *pre, const void *inp, const float *weight,
                              const float *bias, int N, int C, int OC)
{
    assert(out && inp && weight && N >= 0 && C > 0 && OC > 0);
    void *p = pre ? pre : out; /* the GELU op is elementwise: in place is fine */
    if (N == 0 || !cuda_state_get())
        return;
    if (sizeof(A) == 2) {
        const void *h[2] = {NULL, NULL};
        if (!param_operands(1, weight, (size_t)C * OC, bias, (size_t)OC, h))
            return;
        const lt_epi ep = {pre ? LT_EPI_GELU_AUX : LT_EPI_GELU, h[1], pre};
        const int rc = lt_matmul(out, inp, h[0], N, OC, C, 0, 0, 1.0f, 0.0f, &ep, LT_BF16, LT_BF16);
        if (rc != 0)
            return; /* done, or an error was recorded */
        cuda_linear_forward<bf16>(p, inp, weight, bias, N, C, OC);
    } else {
        cuda_linear_forward<float>(p, inp, weight, bias, N, C, OC);
    }
    cuda_gelu_forward<A>(out, p, (size_t)N * OC);
}

/* dpre = (dout @ weight^T) * gelu'(pre), written: the bf16 table's product
 * takes cuBLASLt's DGELU epilogue (aux = pre), else the product (beta 0)
 * and then gelu' in place; dweight and dbias as linear_backward. */
template <class A>
void cuda_linear_gelu_backward(void *dpre, float *dweight, float *dbias, const void *dout,
                               const void *inp, const void *pre, const float *weight, int N,
                               int C, int OC)
{
    assert(dpre && dout && inp && pre && weight && N >= 0 && C > 0 && OC > 0);
    if (N == 0 || !cuda_state_get())
        return;
    if (sizeof(A) == 2) {
        const void *h[2] = {NULL, NULL};
        if (!param_operands(1, weight, (size_t)C * OC, NULL, 0, h))
            return;
        const lt_epi ep = {LT_EPI_DGELU, NULL, (void *)pre};
        const int rc = lt_matmul(dpre, dout, h[0], N, C, OC, 0, 1, 1.0f, 0.0f, &ep, LT_BF16,
                                 LT_BF16);
        if (rc < 0)
            return;
        if (rc == 0) {
            if (!gemm(dpre, dout, h[0], N, C, OC, 0, 1, 1.0f, 0.0f, LT_BF16, LT_BF16))
                return;
            cuda_gelu_grad_mul<A>(dpre, pre, (size_t)N * C);
        }
        cuda_linear_backward<bf16>(NULL, dweight, dbias, dout, inp, weight, N, C, OC);
    } else {
        if (!gemm(dpre, dout, weight, N, C, OC, 0, 1, 1.0f, 0.0f, LT_F32, LT_F32))
            return;
        cuda_gelu_grad_mul<A>(dpre, pre, (size_t)N * C);
        cuda_linear_backward<float>(NULL, dweight, dbias, dout, inp, weight, N, C, OC);
    }
}

/* The tables' two act types (ops_tables.cu). */
template void cuda_linear_forward<float>(void *, const void *, const float *, const float *, int,
                                         int, int);
template void cuda_linear_forward<bf16>(void *, const void *, const float *, const float *, int,
                                        int, int);
template void cuda_linear_backward<float>(void *, float *, float *, const void *, const void *,
                                          const float *, int, int, int);
template void cuda_linear_backward<bf16>(void *, float *, float *, const void *, const void *,
                                         const float *, int, int, int);
template void cuda_linear_t_forward<float>(void *, const void *, const float *, const float *, int, int, int);
template void cuda_linear_t_forward<bf16>(void *, const void *, const float *, const float *, int, int, int);
template void cuda_linear_t_backward<float>(void *, float *, float *, const void *, const void *, const float *, int,
                                            int, int);
template void cuda_linear_t_backward<bf16>(void *, float *, float *, const void *, const void *, const float *, int,
                                           int, int);
template void cuda_linear_gelu_forward<float>(void *, void *, const void *, const float *,
                                              const float *, int, int, int);
template void cuda_linear_gelu_forward<bf16>(void *, void *, const void *, const float *,
                                             const float *, int, int, int);
template void cuda_linear_gelu_backward<float>(void *, float *, float *, const void *,
                                               const void *, const void *, const float *, int,
                                               int, int);
template void cuda_linear_gelu_backward<bf16>(void *, float *, float *, const void *,
                                              const void *, const void *, const float *, int,
                                              int, int);
