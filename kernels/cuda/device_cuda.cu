/* device_cuda.cu - the cuda device (zinc/device.h): one GPU per rank,
 * memory through cudaMalloc / cudaHostAlloc with byte accounting, copies
 * and memsets ordered on the legacy default stream (stream 0, where every
 * op of the CUDA op tables runs), and the error channel of cuda_int.h: a
 * failing call is recorded with call, file and line and reported by sync(). */
#include <stdint.h>
#include <string.h>

#include <mutex>
#include <unordered_map>

#include <cuda_runtime.h>

#include "zinc/device.h"
#include "zinc/ops_cuda.h"
#include "cuda_int.h"

/* Device memory is cached: free() keeps a block for the next alloc of the
 * same size instead of calling cudaFree (which synchronizes the device, and
 * the engine frees working buffers every layer). Every user of a block runs
 * on stream 0 in order (communication streams are joined back to it before a
 * buffer is released), so handing a freed block to the next alloc is safe
 * without waiting. When cudaMalloc fails the cache is emptied and it is
 * tried once more. */
static struct {
    std::mutex mu;
    std::unordered_map<void *, size_t> sizes;              /* live blocks, device and host */
    std::unordered_multimap<size_t, void *> cache;         /* free device blocks by size */
    uint64_t live, peak, host_live, cached;
    int index;
} g_dev;

static void account(void *p, size_t bytes, int host)
{
    std::lock_guard<std::mutex> lk(g_dev.mu);
    g_dev.sizes[p] = bytes;
    if (host) {
        g_dev.host_live += bytes;
        return;
    }
    g_dev.live += bytes;
    if (g_dev.live > g_dev.peak)
        g_dev.peak = g_dev.live;
}

/* Forgets p; returns its size (0 if unknown). */
static size_t unaccount(void *p, int host)
{
    std::lock_guard<std::mutex> lk(g_dev.mu);
    auto it = g_dev.sizes.find(p);
    if (it == g_dev.sizes.end())
        return 0;
    size_t n = it->second;
    if (host)
        g_dev.host_live -= n;
    else
        g_dev.live -= n;
    g_dev.sizes.erase(it);
    return n;
}

/* Device blocks are sized in 512-byte steps so near sizes share the cache. */
static size_t block_bytes(size_t bytes)
{
    return (bytes ? bytes + 511 : 512) / 512 * 512;
}

static void *cache_take(size_t bytes)
{
    std::lock_guard<std::mutex> lk(g_dev.mu);
    auto it = g_dev.cache.find(bytes);
    if (it == g_dev.cache.end())
        return NULL;
    void *p = it->second;
    g_dev.cache.erase(it);
    g_dev.cached -= bytes;
    return p;
}

static void cache_release_all(void)
{
    std::unordered_multimap<size_t, void *> blocks;
    {
        std::lock_guard<std::mutex> lk(g_dev.mu);
        blocks.swap(g_dev.cache);
        g_dev.cached = 0;
    }
    for (auto &kv : blocks) /* cudaFree waits for work still using them */
        cudaFree(kv.second);
}

void cuda_cache_release(void) { cache_release_all(); }

void cuda_mem_note(long long delta)
{
    std::lock_guard<std::mutex> lk(g_dev.mu);
    g_dev.live = (uint64_t)((long long)g_dev.live + delta);
    if (g_dev.live > g_dev.peak)
        g_dev.peak = g_dev.live;
}

static void *dev_alloc_impl(size_t bytes, int zero)
{
    const size_t bb = block_bytes(bytes);
    void *p = cache_take(bb);
    if (!p) {
        cudaError_t e = cudaMalloc(&p, bb);
        if (e == cudaErrorMemoryAllocation) {
            cudaGetLastError(); /* an allocation failure is not sticky */
            cache_release_all();
            e = cudaMalloc(&p, bb);
        }
        if (e != cudaSuccess) {
            uint64_t live = 0;
            {
                std::lock_guard<std::mutex> lk(g_dev.mu);
                live = g_dev.live;
            }
            cudaGetLastError();
            zinc_error(e == cudaErrorMemoryAllocation ? ZINC_ERR_NOMEM : ZINC_ERR_CUDA,
                       "cudaMalloc: %s: asked for %zu bytes on GPU %d with %.2f GiB allocated "
                       "by zinc", cudaGetErrorString(e), bytes, g_dev.index,
                       (double)live / (1u << 30));
            return NULL;
        }
    }
    if (zero)
        CUDA_TRY(cudaMemsetAsync(p, 0, bb, 0));
    account(p, bb, 0);
    return p;
cleanup:
    cudaFree(p);
    return NULL;
}

static void *dev_alloc(size_t bytes) { return dev_alloc_impl(bytes, 1); }
static void *dev_alloc_raw(size_t bytes) { return dev_alloc_impl(bytes, 0); }

static void dev_free(void *p)
{
    if (!p)
        return;
    size_t n = unaccount(p, 0);
    if (!n) { /* not ours: hand it back to CUDA */
        cudaFree(p);
        return;
    }
    std::lock_guard<std::mutex> lk(g_dev.mu);
    g_dev.cache.emplace(n, p);
    g_dev.cached += n;
}

static void *dev_host_alloc(size_t bytes)
{
    void *p = NULL;
    if (bytes < 4096)
        bytes = 4096;
    cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        zinc_error(ZINC_ERR_NOMEM, "cudaHostAlloc: %s (asked for %zu bytes of pinned memory)",
                   cudaGetErrorString(e), bytes);
        return NULL;
    }
    memset(p, 0, bytes);
    account(p, bytes, 1);
    return p;
}

static void dev_mem_info(uint64_t *free_bytes, uint64_t *total_bytes)
{
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) != cudaSuccess) f = t = 0; /* unknown: no check */
    *free_bytes = f;
    *total_bytes = t;
}

static void dev_host_free(void *p)
{
    if (!p)
        return;
    unaccount(p, 1);
    CUDA_TRY(cudaFreeHost(p));
cleanup:
    return;
}

static void dev_memset0(void *p, size_t bytes)
{
    if (bytes)
        CUDA_TRY(cudaMemsetAsync(p, 0, bytes, 0));
cleanup:
    return;
}

static int dev_is_device_ptr(const void *p)
{
    cudaPointerAttributes a;
    if (!p)
        return 0;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

/* Host-side copies are synchronous (the contract); device to device stays async. */
static void dev_copy(void *dst, const void *src, size_t bytes)
{
    if (!bytes || dst == src)
        return;
    const int host_side = !dev_is_device_ptr(dst) || !dev_is_device_ptr(src);
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, 0));
    if (host_side)
        CUDA_TRY(cudaStreamSynchronize(0));
cleanup:
    return;
}

static zinc_status dev_sync(void) { return zinc_cuda_last_status(); }

static void dev_mem(uint64_t *live, uint64_t *peak, uint64_t *host_live)
{
    std::lock_guard<std::mutex> lk(g_dev.mu);
    if (live)
        *live = g_dev.live;
    if (peak)
        *peak = g_dev.peak;
    if (host_live)
        *host_live = g_dev.host_live;
}

static void dev_mem_reset_peak(void)
{
    std::lock_guard<std::mutex> lk(g_dev.mu);
    g_dev.peak = g_dev.live;
}

extern "C" int zinc_device_cuda_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" zinc_status zinc_device_cuda_open(int local_rank, const zinc_device **out)
{
    static zinc_device dev;
    *out = NULL;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        return zinc_error(ZINC_ERR_CUDA, "device cuda: no GPU is visible (%s)",
                          e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    int idx = (local_rank < 0 ? 0 : local_rank) % n;
    if ((e = cudaSetDevice(idx)) != cudaSuccess || (e = cudaFree(0)) != cudaSuccess)
        return zinc_error(ZINC_ERR_CUDA, "device cuda: cudaSetDevice(%d): %s", idx,
                          cudaGetErrorString(e));
    g_dev.index = idx;
    memset(&dev, 0, sizeof dev);
    dev.name = "cuda";
    dev.is_host = 0;
    dev.host_async = 1;
    dev.index = idx;
    dev.ops = zinc_ops_cuda();
    dev.ops_bf16 = zinc_ops_cuda_bf16();
    dev.alloc = dev_alloc;
    dev.free = dev_free;
    dev.host_alloc = dev_host_alloc;
    dev.host_free = dev_host_free;
    dev.memset0 = dev_memset0;
    dev.copy = dev_copy;
    dev.sync = dev_sync;
    dev.is_device_ptr = dev_is_device_ptr;
    dev.mem = dev_mem;
    dev.mem_reset_peak = dev_mem_reset_peak;
    dev.alloc_raw = dev_alloc_raw;
    dev.peak_tflops = cuda_peak_tflops;
    dev.mem_info = dev_mem_info;
    *out = &dev;
    return ZINC_OK;
}
