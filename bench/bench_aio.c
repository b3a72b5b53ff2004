/* bench_aio.c - sequential write and read throughput of one file through the
 * aio engine: each run is one transfer of the whole size from one aligned
 * buffer, which the engine splits into block-size requests over its workers.
 *
 * Usage: bench_aio [-m write|read|both] [-b BLOCK] [-q QD] [-s SIZE] [-t THREADS]
 *                  [-n RUNS] [-B BUF] [-S] [-N] PATH
 *   sizes take K/M/G suffixes (binary); -S single_submit; -N no overlap_events;
 *   -B BUF streams the file through a BUF-byte buffer instead: two async
 *   transfers of BUF/2 outstanding, as fio cycles through bs x iodepth bytes.
 * Writes overwrite PATH in place (created when missing; "both" writes first).
 * Prints one line per run and a median line per mode:
 *   aio write bs=1048576 qd=32 threads=1 size=1073741824 median_GBps=1.93 runs=1.90,1.93,1.95
 * GB/s are 1e9 bytes per second, as fio's bw_bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "zinc/aio.h"


/* Runs one mode `runs` times; returns 0 on success. */
/* Moves size bytes at offset 0 through buf: one transfer, or with half > 0
 * transfers of `half` bytes alternating between buf's halves, two in flight. */
static zinc_status transfer(zinc_aio_file *f, int write, unsigned char *buf, size_t size, size_t half)
{
    if (!half) return write ? zinc_aio_pwrite(f, buf, size, 0) : zinc_aio_pread(f, buf, size, 0);
    zinc_aio_req *r[2] = {NULL, NULL};
    zinc_status st = ZINC_OK;
    int k = 0;
    for (size_t off = 0; off < size && st == ZINC_OK; off += half, k ^= 1) {
        size_t n = size - off < half ? size - off : half;
        if (r[k]) st = zinc_aio_wait(&r[k]);
        if (st != ZINC_OK) break;
        st = write ? zinc_aio_pwrite_async(f, buf + (size_t)k * half, n, off, &r[k])
                   : zinc_aio_pread_async(f, buf + (size_t)k * half, n, off, &r[k]);
    }
    for (k = 0; k < 2; k++) {
        if (!r[k]) continue;
        zinc_status s2 = zinc_aio_wait(&r[k]);
        if (st == ZINC_OK) st = s2;
    }
    return st;
}

static int bench(zinc_aio *a, const char *path, int write, unsigned char *buf, size_t size, size_t half, int runs,
                 const zinc_aio_opts *o)
{
    double gbps[64];
    if (runs > 64) runs = 64;
    for (int i = 0; i < runs; i++) {
        zinc_aio_file *f = NULL;
        zinc_status st = zinc_aio_open(a, path, write ? ZINC_AIO_WRITE | ZINC_AIO_CREATE : ZINC_AIO_READ, &f);
        if (st != ZINC_OK) {
            fprintf(stderr, "bench_aio: %s\n", zinc_last_error());
            return 1;
        }
        if (i == 0 && !zinc_aio_is_direct(f)) fprintf(stderr, "bench_aio: %s: not using O_DIRECT\n", path);
        double t0 = now_s();
        st = transfer(f, write, buf, size, half);
        double t = now_s() - t0;
        if (st == ZINC_OK) st = zinc_aio_close(f);
        else zinc_aio_close(f);
        if (st != ZINC_OK) {
            fprintf(stderr, "bench_aio: %s\n", zinc_last_error());
            return 1;
        }
        gbps[i] = (double)size / t / 1e9;
    }
    char list[64 * 12] = "";
    size_t len = 0;
    for (int i = 0; i < runs; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%.3f", i ? "," : "", gbps[i]);
    qsort(gbps, (size_t)runs, sizeof *gbps, cmp_double);
    double med = runs % 2 ? gbps[runs / 2] : 0.5 * (gbps[runs / 2 - 1] + gbps[runs / 2]);
    printf("aio %s bs=%zu qd=%d threads=%d size=%zu buf=%zu single_submit=%d overlap_events=%d "
           "median_GBps=%.3f runs=%s\n",
           write ? "write" : "read", o->block_size, o->queue_depth, o->intra_op_parallelism, size,
           half ? 2 * half : size, o->single_submit, o->overlap_events, med, list);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    zinc_aio_opts o;
    zinc_aio_opts_default(&o);
    const char *mode = "both";
    size_t size = (size_t)1 << 30, bufsz = 0;
    int runs = 1, c;
    while ((c = getopt(argc, argv, "m:b:q:s:t:n:B:SN")) != -1) {
        switch (c) {
        case 'm': mode = optarg; break;
        case 'b': o.block_size = parse_size(optarg); break;
        case 'q': o.queue_depth = atoi(optarg); break;
        case 's': size = parse_size(optarg); break;
        case 't': o.intra_op_parallelism = atoi(optarg); break;
        case 'n': runs = atoi(optarg); break;
        case 'B': bufsz = parse_size(optarg); if (!bufsz) goto usage; break;
        case 'S': o.single_submit = 1; break;
        case 'N': o.overlap_events = 0; break;
        default: goto usage;
        }
    }
    if (optind != argc - 1 || size == 0 || runs < 1 ||
        (strcmp(mode, "write") && strcmp(mode, "read") && strcmp(mode, "both")))
        goto usage;
    const char *path = argv[optind];
    zinc_aio *a = NULL;
    if (zinc_aio_create(&o, &a) != ZINC_OK) {
        fprintf(stderr, "bench_aio: %s\n", zinc_last_error());
        return 1;
    }
    /* streaming halves stay aligned so the engine can go direct */
    size_t half = bufsz && bufsz < size ? (bufsz / 2 + ZINC_AIO_ALIGN - 1) / ZINC_AIO_ALIGN * ZINC_AIO_ALIGN : 0;
    size_t alloc = half ? 2 * half : size;
    unsigned char *buf = zinc_aio_buf_alloc(alloc);
    if (!buf) {
        fprintf(stderr, "bench_aio: cannot allocate %zu bytes\n", alloc);
        zinc_aio_destroy(a);
        return 1;
    }
    for (size_t i = 0; i < alloc; i += 64) buf[i] = (unsigned char)(i * 2654435761u >> 13); /* not all zero */
    int rc = 0;
    if (strcmp(mode, "read")) rc |= bench(a, path, 1, buf, size, half, runs, &o);
    if (strcmp(mode, "write") && !rc) rc |= bench(a, path, 0, buf, size, half, runs, &o);
    zinc_aio_buf_free(buf);
    zinc_aio_destroy(a);
    return rc;
usage:
    fprintf(stderr, "usage: bench_aio [-m write|read|both] [-b BLOCK] [-q QD] [-s SIZE] [-t THREADS] "
                    "[-n RUNS] [-B BUF] [-S] [-N] PATH\n");
    return 2;
}
