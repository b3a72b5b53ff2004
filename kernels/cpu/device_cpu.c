/* device_cpu.c - the cpu device (device memory is host memory; every call is
 * synchronous) and, in builds without CUDA, the cuda entry points that say
 * so. The cuda device lives in kernels/cuda/device_cuda.cu. */
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/device.h"

static _Atomic uint64_t cpu_live, cpu_peak, cpu_host_live;

static void cpu_account(_Atomic uint64_t *live, void *p, int add)
{
    uint64_t n = p ? (uint64_t)malloc_usable_size(p) : 0;
    if (!add) {
        atomic_fetch_sub(live, n);
        return;
    }
    uint64_t now = atomic_fetch_add(live, n) + n;
    if (live == &cpu_live) {
        uint64_t pk = atomic_load(&cpu_peak);
        while (now > pk && !atomic_compare_exchange_weak(&cpu_peak, &pk, now)) {}
    }
}

/* 4 KiB aligned from 1 MiB (O_DIRECT I/O straight from it), else 64;
 * zeroed when asked. */
static void *cpu_alloc_aligned(size_t bytes, int zero, size_t align)
{
    if (!align) align = bytes >= ((size_t)1 << 20) ? 4096 : 64;
    size_t sz = (bytes + align - 1) / align * align;
    void *p = aligned_alloc(align, sz ? sz : align);
    if (!p) {
        zinc_error(ZINC_ERR_NOMEM, "out of memory: asked for %zu bytes of host memory with %.2f GiB "
                   "allocated by zinc", bytes,
                   (double)(atomic_load(&cpu_live) + atomic_load(&cpu_host_live)) / (1u << 30));
        return NULL;
    }
    if (zero) memset(p, 0, sz ? sz : align);
    return p;
}

/* Large blocks are cached: free() keeps them for the next alloc of about
 * the same size instead of returning them to the system. glibc serves such
 * blocks with mmap, and every fresh mapping costs a page fault per 4 KiB on
 * first touch: the engine's per-step buffers (working params and grads of
 * 16-bit training, optimizer temporaries) would fault in hundreds of MB a
 * step. Blocks of at least CACHE_MIN bytes; a block serves a request of
 * its size down to 4/5 of it; at most CACHE_N blocks and CACHE_MAX bytes,
 * the oldest going back to the system first. Off under AddressSanitizer, which must see every free. A failed
 * allocation empties the cache and retries. */
#if defined(__SANITIZE_ADDRESS__)
#define CACHE_N 0
#else
#define CACHE_N 64
#endif
#define CACHE_MIN ((size_t)1 << 20)
#define CACHE_MAX ((size_t)2 << 30)
static struct {
    pthread_mutex_t mu;
    void *p[CACHE_N + 1];
    size_t n[CACHE_N + 1];
    int count;
    size_t bytes;
} cache = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Removes entry i (under the lock). */
static void cache_remove(int i)
{
    cache.bytes -= cache.n[i];
    memmove(&cache.p[i], &cache.p[i + 1], (size_t)(cache.count - i - 1) * sizeof(void *));
    memmove(&cache.n[i], &cache.n[i + 1], (size_t)(cache.count - i - 1) * sizeof(size_t));
    cache.count--;
}

static void *cache_take(size_t bytes)
{
    void *p = NULL;
    pthread_mutex_lock(&cache.mu);
    for (int i = 0; i < cache.count; i++)
        if (cache.n[i] >= bytes && cache.n[i] - cache.n[i] / 5 <= bytes) {
            p = cache.p[i];
            cache_remove(i);
            break;
        }
    pthread_mutex_unlock(&cache.mu);
    return p;
}

/* Keeps p if it is large enough; returns 1 when kept. */
static int cache_put(void *p)
{
    size_t n = malloc_usable_size(p);
    void *evict[CACHE_N + 1];
    int ne = 0;
    if (CACHE_N == 0 || n < CACHE_MIN || n > CACHE_MAX) return 0;
    pthread_mutex_lock(&cache.mu);
    while (cache.count > 0 && (cache.count == CACHE_N || cache.bytes + n > CACHE_MAX)) {
        evict[ne++] = cache.p[0]; /* the oldest goes back to the system */
        cache_remove(0);
    }
    cache.p[cache.count] = p;
    cache.n[cache.count] = n;
    cache.count++;
    cache.bytes += n;
    pthread_mutex_unlock(&cache.mu);
    for (int i = 0; i < ne; i++) free(evict[i]);
    return 1;
}

static void cache_release_all(void)
{
    pthread_mutex_lock(&cache.mu);
    for (int i = 0; i < cache.count; i++) free(cache.p[i]);
    cache.count = 0;
    cache.bytes = 0;
    pthread_mutex_unlock(&cache.mu);
}

/* A device block: from the cache, else fresh (page aligned from 1 MiB). */
static void *cpu_dev_alloc(size_t bytes, int zero)
{
    void *p = bytes >= CACHE_MIN ? cache_take(bytes) : NULL;
    if (p) {
        if (zero) memset(p, 0, bytes);
    } else {
        p = cpu_alloc_aligned(bytes, zero, 0);
        if (!p && bytes >= CACHE_MIN) {
            cache_release_all();
            p = cpu_alloc_aligned(bytes, zero, 0);
        }
    }
    cpu_account(&cpu_live, p, 1);
    return p;
}

static void *cpu_alloc(size_t bytes) { return cpu_dev_alloc(bytes, 1); }
static void *cpu_alloc_raw(size_t bytes) { return cpu_dev_alloc(bytes, 0); }

static void cpu_free(void *p)
{
    if (!p) return;
    cpu_account(&cpu_live, p, 0);
    if (!cache_put(p)) free(p);
}

static void *cpu_host_alloc(size_t bytes)
{
    void *p = cpu_alloc_aligned(bytes, 1, 4096); /* page aligned */
    cpu_account(&cpu_host_live, p, 1);
    return p;
}

static void cpu_host_free(void *p)
{
    if (!p) return;
    cpu_account(&cpu_host_live, p, 0);
    free(p);
}

static void cpu_memset0(void *p, size_t bytes)
{
    if (bytes) memset(p, 0, bytes);
}

static void cpu_copy_any(void *dst, const void *src, size_t bytes)
{
    if (bytes && dst != src) memmove(dst, src, bytes);
}

static zinc_status cpu_sync(void) { return zinc_ops_cpu_last_status(); }
static int cpu_is_device_ptr(const void *p) { (void)p; return 0; }

static void cpu_mem(uint64_t *live, uint64_t *peak, uint64_t *host_live)
{
    if (live) *live = atomic_load(&cpu_live);
    if (peak) *peak = atomic_load(&cpu_peak);
    if (host_live) *host_live = atomic_load(&cpu_host_live);
}

static void cpu_mem_reset_peak(void) { atomic_store(&cpu_peak, atomic_load(&cpu_live)); }

const zinc_device *zinc_device_cpu(void)
{
    static zinc_device dev;
    static int init;
    if (!init) { /* ops tables are reached through functions: fill once */
        dev = (zinc_device){
            .name = "cpu", .is_host = 1, .index = 0,
            .ops = zinc_ops_cpu(), .ops_bf16 = zinc_ops_cpu_bf16(),
            .alloc = cpu_alloc, .free = cpu_free,
            .host_alloc = cpu_host_alloc, .host_free = cpu_host_free,
            .memset0 = cpu_memset0, .copy = cpu_copy_any, .sync = cpu_sync,
            .is_device_ptr = cpu_is_device_ptr,
            .mem = cpu_mem, .mem_reset_peak = cpu_mem_reset_peak,
            .alloc_raw = cpu_alloc_raw,
        };
        init = 1;
    }
    return &dev;
}

#ifndef ZINC_HAVE_CUDA
int zinc_device_cuda_count(void) { return 0; }

zinc_status zinc_device_cuda_open(int local_rank, const zinc_device **out)
{
    (void)local_rank;
    *out = NULL;
    return zinc_error(ZINC_ERR_UNSUPPORTED, "device cuda: this build has no CUDA support (build "
                      "with `make CUDA=1` on a machine with the CUDA toolkit), or use \"device\": "
                      "\"cpu\"");
}
#endif
