/* ops_common.cu - what the op files (ops_*.cu) share: the error channel
 * (cuda_fail, zinc_cuda_last_status), the lazy process-wide state (the
 * cuBLASLt handle and workspace, the scratch buffer, the cuBLASLt
 * algorithm cache, all under one lock), and the host side of the
 * elementwise launcher of cuda_int.h (grid sizes, vector plans, the
 * device's SM count). */

/* Errors: every foreign call goes through CUDA_TRY / CUBLAS_TRY / LAUNCH_TRY
 * (cuda_int.h); ops return void, so the first failure is kept for
 * zinc_cuda_last_status(). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <mutex>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "zinc/ops_cuda.h"
#include "cuda_int.h"

enum {
    ALGO_CACHE_N = 128, /* cached cuBLASLt algorithms */
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

/* The cuBLASLt algorithm cache: lt_matmul (ops_matmul.cu) looks a key up
 * before asking the heuristic and stores what it chose. */
static int algo_key_eq(const algo_key *x, const algo_key *y)
{
    return x->m == y->m && x->n == y->n && x->k == y->k && x->ta == y->ta && x->tb == y->tb &&
           x->epi == y->epi && x->bias == y->bias && x->ab == y->ab && x->cd == y->cd &&
           x->al_a == y->al_a && x->al_b == y->al_b && x->al_c == y->al_c &&
           x->al_bias == y->al_bias && x->al_aux == y->al_aux;
}

int cuda_algo_cache_find(const algo_key *key, cublasLtMatmulAlgo_t *algo)
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

void cuda_algo_cache_put(const algo_key *key, const cublasLtMatmulAlgo_t *algo)
{
    std::lock_guard<std::mutex> lk(g.mu);
    algo_entry *e = &g.cache[g.cache_next];
    g.cache_next = (g.cache_next + 1) % ALGO_CACHE_N;
    e->key = *key;
    e->algo = *algo;
    e->used = 1;
}

/* ------------------------------------------------------------------ */
/* small helpers                                                       */
/* ------------------------------------------------------------------ */

/* Blocks for a grid-stride loop over n elements (n > 0). */
unsigned cuda_ew_grid(size_t n)
{
    const size_t blocks = (n + EW_BLOCK - 1) / EW_BLOCK;
    const size_t cap = (size_t)65535 * 32;
    return (unsigned)(blocks < cap ? blocks : cap);
}

/* head brings operand 0 (element size esz[0]) to a W-element boundary;
 * unless every other operand is then on one of its own, all go one at a
 * time (nv = 0). */
ew_split cuda_ew_plan(size_t n, const void *const *p, const unsigned *esz, int np, unsigned W)
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

/* Streaming multiprocessors of the current device (the op table is bound
 * to one device), 1 if the query fails. */
int cuda_ew_sms(void)
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

/* Whether p is 16-byte aligned (vector accesses). */
int cuda_al16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}
