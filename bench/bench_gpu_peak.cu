/* bench_gpu_peak - the current GPU's ceilings, the yardstick for the CUDA
 * kernels and the training step:
 *   (1) cuBLASLt bf16 GEMM (bf16 in/out, fp32 compute) at m=n=k=8192 and at
 *       the GPT-2 124M training shapes with 16384 tokens (M x K x N);
 *   (2) fp32 GEMM with CUBLAS_COMPUTE_32F_FAST_16BF and _FAST_TF32 at 8192^3;
 *   (3) device-to-device cudaMemcpy of 2 GiB, counting read + write bytes.
 * Inputs are uniform random in [-1, 1) (never zero: all-zero inputs let the
 * tensor cores idle and overstate the rate). Each GEMM tries up to 8 of the
 * heuristic's algorithms and keeps the fastest, warms up, then times >= 20
 * runs one by one with cudaEvents, rotating among 3 input sets so that no
 * run finds its operands in L2; the figure is the median. One entry of each
 * GEMM's output is checked against a CPU dot product (catches a wrong layout).
 * Prints the GPU name, one line per measurement, and last
 *   PEAK bf16_tflops=<8192 cube> copy_gbs=<copy>
 * Any failed CUDA/cuBLAS call prints the call and its error and exits 1.
 * Build:
 *   nvcc -O3 -std=c++17 -gencode 'arch=compute_90,code=[sm_90,compute_90]' \
 *     -Xcompiler -Wall,-Wextra bench/bench_gpu_peak.cu -o bench_gpu_peak \
 *     -lcublasLt -lcublas */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#define CUDA_CHECK(call)                                                          \
    do {                                                                          \
        cudaError_t err_ = (call);                                                \
        if (err_ != cudaSuccess) {                                                \
            fprintf(stderr, "bench_gpu_peak: %s:%d: %s: %s\n", __FILE__, __LINE__, \
                    #call, cudaGetErrorString(err_));                             \
            exit(1);                                                              \
        }                                                                         \
    } while (0)

#define CUBLAS_CHECK(call)                                                        \
    do {                                                                          \
        cublasStatus_t st_ = (call);                                              \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                       \
            fprintf(stderr, "bench_gpu_peak: %s:%d: %s: %s\n", __FILE__, __LINE__, \
                    #call, cublasLtGetStatusString(st_));                         \
            exit(1);                                                              \
        }                                                                         \
    } while (0)

enum { N_SETS = 3, N_WARMUP = 5, N_TIMED = 20, N_ALGOS = 8, N_TRIAL = 3 };
static const size_t WORKSPACE_BYTES = (size_t)32 << 20; // Hopper: 32 MiB

static cublasLtHandle_t g_lt;
static cudaStream_t g_stream;
static void *g_workspace;

// splitmix64 of (seed, i) -> uniform in [-1, 1); an exact 0 becomes 0.5
__device__ static float rand_uniform(uint64_t seed, uint64_t i)
{
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 1;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    float u = (float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f; // 24 bits
    return u == 0.0f ? 0.5f : u;
}

__global__ static void fill_bf16(__nv_bfloat16 *x, size_t n, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = __float2bfloat16(rand_uniform(seed, i));
}

__global__ static void fill_f32(float *x, size_t n, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = rand_uniform(seed, i);
}

static void fill_random(void *x, size_t n, cudaDataType_t type, uint64_t seed)
{
    if (type == CUDA_R_16BF)
        fill_bf16<<<1024, 256, 0, g_stream>>>((__nv_bfloat16 *)x, n, seed);
    else
        fill_f32<<<1024, 256, 0, g_stream>>>((float *)x, n, seed);
    CUDA_CHECK(cudaGetLastError());
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static float median(float *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_float);
    return n % 2 ? v[n / 2] : 0.5f * (v[n / 2 - 1] + v[n / 2]);
}

static size_t dtype_bytes(cudaDataType_t t) { return t == CUDA_R_16BF ? 2 : 4; }

static double to_double(const void *p, size_t i, cudaDataType_t t)
{
    if (t == CUDA_R_16BF) {
        uint16_t h;
        memcpy(&h, (const char *)p + 2 * i, 2);
        uint32_t bits = (uint32_t)h << 16;
        float f;
        memcpy(&f, &bits, 4);
        return f;
    }
    float f;
    memcpy(&f, (const char *)p + 4 * i, 4);
    return f;
}

/* One GEMM problem as the training step issues it, in cuBLAS column-major
 * terms (llm.c's matmul_forward): out (M, N) = inp (M, K) @ W^T where W is
 * (N, K) row-major. cuBLAS sees C (n_out x m_tok, ld n_out) =
 * op(A) (n_out x k, A stored k x n_out, transposed) * B (k x m_tok). */
struct gemm_case {
    const char *label; // "bf16 gemm", "fp32 gemm fast_16bf", ...
    int m, k, n;       // tokens, reduction, output features
    cudaDataType_t io_type;
    cublasComputeType_t compute;
};

// Runs C = op(A) B once with the given algorithm on g_stream.
static void gemm_run(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t la,
                     cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc, const void *a,
                     const void *b, void *c, const cublasLtMatmulAlgo_t *algo)
{
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasLtMatmul(g_lt, op, &alpha, a, la, b, lb, &beta, c, lc, c, lc, algo,
                                g_workspace, WORKSPACE_BYTES, g_stream));
}

/* Times n_runs calls one by one (event pair around each), rotating input
 * sets; writes per-run ms into ms[] and returns the median. */
static float gemm_time(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t la,
                       cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc, void *const *a,
                       void *const *b, void *c, const cublasLtMatmulAlgo_t *algo, int n_runs,
                       float *ms)
{
    cudaEvent_t ev[2 * N_TIMED];
    for (int i = 0; i < 2 * n_runs; i++)
        CUDA_CHECK(cudaEventCreate(&ev[i]));
    for (int i = 0; i < n_runs; i++) {
        CUDA_CHECK(cudaEventRecord(ev[2 * i], g_stream));
        gemm_run(op, la, lb, lc, a[i % N_SETS], b[i % N_SETS], c, algo);
        CUDA_CHECK(cudaEventRecord(ev[2 * i + 1], g_stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(g_stream));
    for (int i = 0; i < n_runs; i++)
        CUDA_CHECK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
    for (int i = 0; i < 2 * n_runs; i++)
        CUDA_CHECK(cudaEventDestroy(ev[i]));
    return median(ms, n_runs);
}

/* Checks three entries C[i, j] (column-major, n_out rows) of C = op(A) B
 * against double dot products on the CPU. Exits 1 on a
 * mismatch beyond bf16 rounding of the inputs and output. */
static void gemm_verify(const struct gemm_case *g, const void *a, const void *b, const void *c)
{
    const int rows[3] = {0, g->n / 2 + 1, g->n - 1}, cols[3] = {0, g->m / 3 + 7, g->m - 1};
    size_t es = dtype_bytes(g->io_type);
    size_t k = (size_t)g->k;
    char *ha = (char *)malloc(k * es), *hb = (char *)malloc(k * es);
    if (!ha || !hb) {
        fprintf(stderr, "bench_gpu_peak: out of host memory\n");
        exit(1);
    }
    for (int p = 0; p < 3; p++) {
        size_t i = (size_t)rows[p], j = (size_t)cols[p];
        char hc[4];
        // A stored k x n_out: column i is contiguous; B stored k x m: column j
        CUDA_CHECK(cudaMemcpy(ha, (const char *)a + i * k * es, k * es, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(hb, (const char *)b + j * k * es, k * es, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(hc, (const char *)c + (i + j * (size_t)g->n) * es, es,
                              cudaMemcpyDeviceToHost));
        double ref = 0.0, sq = 0.0;
        for (size_t t = 0; t < k; t++) {
            double prod = to_double(ha, t, g->io_type) * to_double(hb, t, g->io_type);
            ref += prod;
            sq += prod * prod;
        }
        double got = to_double(hc, 0, g->io_type);
        // bf16 output rounding (2^-8 relative) plus input rounding of the
        // fast modes, which grows like the root of the sum of squares
        double tol = 1e-2 * fabs(ref) + 1e-2 * sqrt(sq) + 1e-3;
        if (!(fabs(got - ref) <= tol)) {
            fprintf(stderr,
                    "bench_gpu_peak: %s %dx%dx%d: C[%zu,%zu] = %g, CPU reference %g (tol %g)\n",
                    g->label, g->m, g->k, g->n, i, j, got, ref, tol);
            exit(1);
        }
    }
    free(ha);
    free(hb);
}

// Measures one GEMM case; prints its line and returns TFLOP/s.
static double gemm_bench(const struct gemm_case *g)
{
    size_t es = dtype_bytes(g->io_type);
    size_t a_n = (size_t)g->k * g->n, b_n = (size_t)g->k * g->m, c_n = (size_t)g->n * g->m;
    void *a[N_SETS], *b[N_SETS], *c;
    for (int s = 0; s < N_SETS; s++) {
        CUDA_CHECK(cudaMalloc(&a[s], a_n * es));
        CUDA_CHECK(cudaMalloc(&b[s], b_n * es));
        fill_random(a[s], a_n, g->io_type, 100 + 2 * (uint64_t)s);
        fill_random(b[s], b_n, g->io_type, 101 + 2 * (uint64_t)s);
    }
    CUDA_CHECK(cudaMalloc(&c, c_n * es));

    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, g->compute, CUDA_R_32F));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, g->io_type, g->k, g->n, g->k));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, g->io_type, g->k, g->m, g->k));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, g->io_type, g->n, g->m, g->n));

    cublasLtMatmulPreference_t pref;
    uint64_t ws = WORKSPACE_BYTES;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasLtMatmulHeuristicResult_t heur[N_ALGOS];
    int n_found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(g_lt, op, la, lb, lc, lc, pref, N_ALGOS, heur,
                                                &n_found));
    if (n_found < 1) {
        fprintf(stderr, "bench_gpu_peak: %s %dx%dx%d: cuBLASLt has no algorithm\n", g->label,
                g->m, g->k, g->n);
        exit(1);
    }

    // keep the fastest of the heuristic's candidates (short trial each)
    float ms[N_TIMED];
    int best = 0;
    float best_ms = 0.0f;
    for (int h = 0; h < n_found; h++) {
        if (heur[h].state != CUBLAS_STATUS_SUCCESS)
            continue;
        gemm_run(op, la, lb, lc, a[0], b[0], c, &heur[h].algo);
        float t = gemm_time(op, la, lb, lc, a, b, c, &heur[h].algo, N_TRIAL, ms);
        if (h == 0 || t < best_ms) {
            best = h;
            best_ms = t;
        }
    }
    const cublasLtMatmulAlgo_t *algo = &heur[best].algo;

    gemm_run(op, la, lb, lc, a[0], b[0], c, algo);
    CUDA_CHECK(cudaStreamSynchronize(g_stream));
    gemm_verify(g, a[0], b[0], c);
    for (int i = 0; i < N_WARMUP; i++)
        gemm_run(op, la, lb, lc, a[i % N_SETS], b[i % N_SETS], c, algo);
    float med = gemm_time(op, la, lb, lc, a, b, c, algo, N_TIMED, ms);
    double tflops = 2.0 * g->m * (double)g->k * g->n / (med * 1e-3) / 1e12;
    printf("%s %dx%dx%d: %.1f TFLOP/s (median of %d, ms %.3f)\n", g->label, g->m, g->k, g->n,
           tflops, N_TIMED, med);
    fflush(stdout);

    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lc));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(op));
    for (int s = 0; s < N_SETS; s++) {
        CUDA_CHECK(cudaFree(a[s]));
        CUDA_CHECK(cudaFree(b[s]));
    }
    CUDA_CHECK(cudaFree(c));
    return tflops;
}

// Device-to-device cudaMemcpy of 2 GiB; returns GB/s (1e9) of read + write.
static double copy_bench(void)
{
    const size_t bytes = (size_t)2 << 30;
    void *src, *dst;
    CUDA_CHECK(cudaMalloc(&src, bytes));
    CUDA_CHECK(cudaMalloc(&dst, bytes));
    fill_random(src, bytes / 4, CUDA_R_32F, 7);
    CUDA_CHECK(cudaDeviceSynchronize());
    for (int i = 0; i < N_WARMUP; i++)
        CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
    cudaEvent_t ev[2 * N_TIMED];
    float ms[N_TIMED];
    for (int i = 0; i < 2 * N_TIMED; i++)
        CUDA_CHECK(cudaEventCreate(&ev[i]));
    for (int i = 0; i < N_TIMED; i++) {
        // cudaMemcpy runs on the legacy default stream: record there
        CUDA_CHECK(cudaEventRecord(ev[2 * i], 0));
        CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
        CUDA_CHECK(cudaEventRecord(ev[2 * i + 1], 0));
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    for (int i = 0; i < N_TIMED; i++)
        CUDA_CHECK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
    for (int i = 0; i < 2 * N_TIMED; i++)
        CUDA_CHECK(cudaEventDestroy(ev[i]));
    float med = median(ms, N_TIMED);
    double gbs = 2.0 * (double)bytes / (med * 1e-3) / 1e9;
    printf("d2d copy 2 GiB: %.1f GB/s read+write (median of %d, ms %.3f)\n", gbs, N_TIMED,
           med);
    fflush(stdout);
    CUDA_CHECK(cudaFree(src));
    CUDA_CHECK(cudaFree(dst));
    return gbs;
}

int main(void)
{
    int dev = 0;
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    printf("gpu: %s (sm_%d%d, %d SMs, %.1f GiB)\n", prop.name, prop.major, prop.minor,
           prop.multiProcessorCount, prop.totalGlobalMem / (double)(1u << 30));
    fflush(stdout);

    CUBLAS_CHECK(cublasLtCreate(&g_lt));
    CUDA_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaMalloc(&g_workspace, WORKSPACE_BYTES));

    const struct gemm_case cases[] = {
        {"bf16 gemm", 8192, 8192, 8192, CUDA_R_16BF, CUBLAS_COMPUTE_32F},
        // GPT-2 124M, 16384 tokens: qkv, fc, fc proj, lm head
        {"bf16 gemm", 16384, 768, 2304, CUDA_R_16BF, CUBLAS_COMPUTE_32F},
        {"bf16 gemm", 16384, 768, 3072, CUDA_R_16BF, CUBLAS_COMPUTE_32F},
        {"bf16 gemm", 16384, 3072, 768, CUDA_R_16BF, CUBLAS_COMPUTE_32F},
        {"bf16 gemm", 16384, 768, 50304, CUDA_R_16BF, CUBLAS_COMPUTE_32F},
        {"fp32 gemm fast_16bf", 8192, 8192, 8192, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_16BF},
        {"fp32 gemm fast_tf32", 8192, 8192, 8192, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32},
    };
    double bf16_tflops = 0.0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double t = gemm_bench(&cases[i]);
        if (i == 0)
            bf16_tflops = t;
    }
    double copy_gbs = copy_bench();

    CUDA_CHECK(cudaFree(g_workspace));
    CUDA_CHECK(cudaStreamDestroy(g_stream));
    CUBLAS_CHECK(cublasLtDestroy(g_lt));
    printf("PEAK bf16_tflops=%.1f copy_gbs=%.1f\n", bf16_tflops, copy_gbs);
    return 0;
}
