/* device_strict.c - the strict test device: host memory that the host may
 * touch only through the device's copy(), memset0() and ops; anything else
 * faults. CPU-only tests run the engine on it (ZINC_STRICT_DEVICE=1) to
 * exercise the paths a GPU takes - staged collectives, checkpoint pieces
 * through the io callback, the optimizer offloaded to host memory - and to
 * catch host code that reads device memory. Its ops are the CPU's, so a run
 * on it must give the same bits as a run on the cpu device.
 *
 * Every block is its own mmap, PROT_NONE while no op or copy runs; the
 * wrapper (zinc_ops_wrap, slot 1) opens all blocks around each op. host_alloc
 * memory is the mirror image: its own mmaps too, PROT_NONE while a device op runs
 * (a GPU's kernels cannot read pinned host memory), so a device op handed a host
 * buffer faults as well. Slow by
 * design (two mprotect per block per op): tests use tiny models. Meant for
 * one rank's thread, as the engine drives a device. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "zinc/device.h"

typedef struct block {
    char *p;
    size_t bytes; /* mapped (whole pages) */
} block;

static struct {
    block *b;
    int n, cap;
    block *h;      /* host_alloc blocks */
    int nh, caph;
    uint64_t live, peak, host_live;
    int open;
} S;

static size_t page_round(size_t bytes)
{
    return (bytes + 4095) / 4096 * 4096;
}

static void set_all(int prot)
{
    for (int i = 0; i < S.n; i++) mprotect(S.b[i].p, S.b[i].bytes, prot);
}

static void open_all(void)
{
    if (S.open++ == 0) set_all(PROT_READ | PROT_WRITE);
}

static void close_all(void)
{
    if (--S.open == 0) set_all(PROT_NONE);
}

static int in_op; /* a device op is running: host_alloc blocks are closed */

static void set_host(int prot)
{
    for (int i = 0; i < S.nh; i++) mprotect(S.h[i].p, S.h[i].bytes, prot);
}

static void hook_before(int op, void *user)
{
    (void)op;
    (void)user;
    if (in_op++ == 0) set_host(PROT_NONE);
    open_all();
}

static void hook_after(int op, void *user)
{
    (void)op;
    (void)user;
    close_all();
    if (--in_op == 0) set_host(PROT_READ | PROT_WRITE);
}

/* Room for one more block in table *t (n used, *cap allocated); 0 with the error recorded. */
static int table_room(block **t, int n, int *cap)
{
    if (n < *cap) return 1;
    int c = *cap ? 2 * *cap : 64;
    block *nb = realloc(*t, (size_t)c * sizeof *nb);
    if (!nb) {
        zinc_error(ZINC_ERR_NOMEM, "strict device: block table");
        return 0;
    }
    *t = nb;
    *cap = c;
    return 1;
}

static void *st_alloc(size_t bytes)
{
    size_t sz = page_round(bytes ? bytes : 1);
    if (!table_room(&S.b, S.n, &S.cap)) return NULL;
    /* zeroed by the kernel; readable only while open */
    void *p = mmap(NULL, sz, S.open ? PROT_READ | PROT_WRITE : PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        zinc_error(ZINC_ERR_NOMEM, "strict device: %zu bytes", bytes);
        return NULL;
    }
    S.b[S.n++] = (block){p, sz};
    S.live += sz;
    if (S.live > S.peak) S.peak = S.live;
    return p;
}

static int find(const void *p)
{
    for (int i = 0; i < S.n; i++)
        if ((const char *)p >= S.b[i].p && (const char *)p < S.b[i].p + S.b[i].bytes) return i;
    return -1;
}

static void st_free(void *p)
{
    int i = p ? find(p) : -1;
    if (i < 0) return;
    munmap(S.b[i].p, S.b[i].bytes);
    S.live -= S.b[i].bytes;
    S.b[i] = S.b[--S.n];
}

static void *st_host_alloc(size_t bytes)
{
    size_t sz = page_round(bytes ? bytes : 1);
    if (!table_room(&S.h, S.nh, &S.caph)) return NULL;
    void *p = mmap(NULL, sz, in_op ? PROT_NONE : PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        zinc_error(ZINC_ERR_NOMEM, "strict device: %zu bytes of host memory", bytes);
        return NULL;
    }
    S.h[S.nh++] = (block){p, sz};
    S.host_live += sz;
    return p;
}

static void st_host_free(void *p)
{
    if (!p) return;
    for (int i = 0; i < S.nh; i++)
        if (S.h[i].p == p) {
            munmap(S.h[i].p, S.h[i].bytes);
            S.host_live -= S.h[i].bytes;
            S.h[i] = S.h[--S.nh];
            return;
        }
}

static void st_memset0(void *p, size_t bytes)
{
    open_all();
    memset(p, 0, bytes);
    close_all();
}

static void st_copy(void *dst, const void *src, size_t bytes)
{
    if (!bytes || dst == src) return;
    open_all();
    memmove(dst, src, bytes);
    close_all();
}

static zinc_status st_sync(void) { return zinc_ops_cpu_last_status(); }
static int st_is_device_ptr(const void *p) { return p && find(p) >= 0; }

static void st_mem(uint64_t *live, uint64_t *peak, uint64_t *host_live)
{
    if (live) *live = S.live;
    if (peak) *peak = S.peak;
    if (host_live) *host_live = S.host_live;
}

static void st_mem_reset_peak(void) { S.peak = S.live; }

const zinc_device *zinc_device_strict(void)
{
    static zinc_device dev;
    if (!dev.name) {
        zinc_ops_hooks h = {hook_before, hook_after, NULL};
        const zinc_ops *ops = zinc_ops_wrap(1, zinc_ops_cpu(), &h);
        const zinc_ops *ops_bf16 = zinc_ops_wrap(2, zinc_ops_cpu_bf16(), &h);
        dev = (zinc_device){
            .name = "strict", .is_host = 0, .index = 0, .ops = ops, .ops_bf16 = ops_bf16,
            .alloc = st_alloc, .free = st_free, .host_alloc = st_host_alloc,
            .host_free = st_host_free, .memset0 = st_memset0, .copy = st_copy,
            .sync = st_sync, .is_device_ptr = st_is_device_ptr, .mem = st_mem,
            .mem_reset_peak = st_mem_reset_peak, .alloc_raw = st_alloc,
        };
    }
    return &dev;
}
