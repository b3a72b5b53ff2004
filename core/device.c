/* device.c - the cpu device (device memory is host memory; every call is
 * synchronous) and, in builds without CUDA, the cuda entry points that say
 * so. The cuda device lives in kernels/cuda/device_cuda.cu. */
#include <malloc.h>
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
        zinc_error(ZINC_ERR_NOMEM, "host memory: %zu bytes", bytes);
        return NULL;
    }
    if (zero) memset(p, 0, sz ? sz : align);
    return p;
}

static void *cpu_alloc(size_t bytes)
{
    void *p = cpu_alloc_aligned(bytes, 1, 0);
    cpu_account(&cpu_live, p, 1);
    return p;
}

static void *cpu_alloc_raw(size_t bytes)
{
    void *p = cpu_alloc_aligned(bytes, 0, 0);
    cpu_account(&cpu_live, p, 1);
    return p;
}

static void cpu_free(void *p)
{
    if (!p) return;
    cpu_account(&cpu_live, p, 0);
    free(p);
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
