/* bench_ckpt.c - checkpoint save and load throughput per rank next to the raw sequential
 * write and read bandwidth of the same file system through the same I/O path (zinc_aio).
 * An MPI program: run it under scripts/mpirun.sh N.
 *
 * Usage: bench_ckpt [-s SIZE] [-T TENSORS] [-n RUNS] [-b BLOCK] [-q QD] [-t THREADS] [-U] DIR
 *   SIZE      bytes per rank (K/M/G suffixes, binary; default 1G), split over TENSORS (4)
 *             f32 tensors of which every rank holds one disjoint slice each
 *   BLOCK/QD/THREADS  aio block_size, queue_depth, intra_op_parallelism (DeepSpeed
 *             defaults: 1M, 8, 1); the one engine serves both raw and checkpoint I/O
 *   -U        tensor memory 64 bytes off 4 KiB alignment (as the engine's slabs): the
 *             checkpoint then stages every byte instead of going direct (raw stays aligned)
 *   DIR       an existing directory; everything the bench writes there is removed again
 *
 * Every run, interleaved so that disk noise hits all four alike:
 *   raw write  each rank zinc_aio_pwrite's SIZE bytes from one aligned buffer to its own
 *              DIR/raw-rank-NNNNN.bin, then fsync and close
 *   raw read   the file is dropped from the page cache (posix_fadvise DONTNEED; the engine
 *              reads O_DIRECT anyway) and read back with one zinc_aio_pread
 *   save       zinc_ckpt_save of the layout into DIR/ckpt (all fsyncs and the commit)
 *   load       rank files dropped from the cache, zinc_ckpt_load into a second buffer
 *              (poisoned before), then compared with the source (not timed)
 * A phase's time is the slowest rank's (barrier before, all-reduce MAX after), so per-rank
 * GB/s = SIZE / that time; GB = 1e9 bytes. Rank 0 prints the medians over RUNS (3):
 *   ranks=2 size=1073741824 raw_write=1.234 raw_read=... save=... load=...
 *   save/raw_write=0.97 load/raw_read=0.95
 * and one line of every run's values. Exit status 0, 1 on any failure (verify included). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "zinc/aio.h"
#include "zinc/ckpt.h"
#include "zinc/comm.h"

#define MAX_RUNS 32
#define MAX_TENSORS 64

enum { PH_RAW_WRITE, PH_RAW_READ, PH_SAVE, PH_LOAD, N_PHASES };
static const char *phase_name[N_PHASES] = {"raw_write", "raw_read", "save", "load"};


static double median(const double *v, int n)
{
    double s[MAX_RUNS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

/* Drops path from the page cache as far as the kernel allows (dirty pages were fsynced). */
static void drop_cache(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

/* Raw write of n bytes from buf to path: open, one pwrite, fsync, close. */
static zinc_status raw_write(zinc_aio *aio, const char *path, const void *buf, size_t n)
{
    zinc_aio_file *f = NULL;
    zinc_status st = zinc_aio_open(aio, path, ZINC_AIO_WRITE | ZINC_AIO_CREATE | ZINC_AIO_TRUNC, &f);
    if (st == ZINC_OK) st = zinc_aio_pwrite(f, buf, n, 0);
    if (st == ZINC_OK) st = zinc_aio_fsync(f);
    zinc_status cs = zinc_aio_close(f);
    return st != ZINC_OK ? st : cs;
}

static zinc_status raw_read(zinc_aio *aio, const char *path, void *buf, size_t n)
{
    zinc_aio_file *f = NULL;
    zinc_status st = zinc_aio_open(aio, path, ZINC_AIO_READ, &f);
    if (st == ZINC_OK) st = zinc_aio_pread(f, buf, n, 0);
    zinc_status cs = zinc_aio_close(f);
    return st != ZINC_OK ? st : cs;
}

/* Collective: the slowest rank's seconds for a phase; *ok becomes 0 if any rank failed. */
static double phase_time(zinc_comm *w, double t, zinc_status st, int *ok)
{
    double v[2] = {t, st == ZINC_OK ? 0.0 : 1.0}, m[2];
    if (st != ZINC_OK) fprintf(stderr, "bench_ckpt: rank %d: %s\n", zinc_comm_rank(w), zinc_last_error());
    if (zinc_comm_all_reduce(w, v, m, 2, ZINC_DTYPE_F64, ZINC_REDOP_MAX, NULL) != ZINC_OK) {
        fprintf(stderr, "bench_ckpt: all-reduce: %s\n", zinc_last_error());
        *ok = 0;
        return 0.0;
    }
    if (m[1] != 0.0) *ok = 0;
    return m[0];
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_ckpt [-s SIZE] [-T TENSORS] [-n RUNS] [-b BLOCK] [-q QD] [-t THREADS] [-U] DIR\n");
    return 2;
}

int main(int argc, char **argv)
{
    zinc_comm *w = NULL;
    if (zinc_comm_init_world("mpi", &argc, &argv, &w) != ZINC_OK) {
        fprintf(stderr, "bench_ckpt: %s\n", zinc_last_error());
        return 1;
    }
    int rank = zinc_comm_rank(w), size = zinc_comm_size(w);
    zinc_aio_opts o;
    zinc_aio_opts_default(&o);
    size_t bytes = (size_t)1 << 30;
    int n_t = 4, runs = 3, c, unaligned = 0;
    while ((c = getopt(argc, argv, "s:T:n:b:q:t:U")) != -1) {
        switch (c) {
        case 's': bytes = parse_size(optarg); break;
        case 'T': n_t = atoi(optarg); break;
        case 'n': runs = atoi(optarg); break;
        case 'b': o.block_size = parse_size(optarg); break;
        case 'q': o.queue_depth = atoi(optarg); break;
        case 't': o.intra_op_parallelism = atoi(optarg); break;
        case 'U': unaligned = 1; break;
        default: zinc_comm_destroy(w); return usage();
        }
    }
    if (optind != argc - 1 || n_t < 1 || n_t > MAX_TENSORS || runs < 1 || runs > MAX_RUNS ||
        bytes < (size_t)n_t * 4 || o.block_size == 0 || o.queue_depth < 1 || o.intra_op_parallelism < 1) {
        zinc_comm_destroy(w);
        return usage();
    }
    const char *dir = argv[optind];

    /* n_t tensors of `per` elements per rank (the last one takes the rest); rank r holds
     * elements [r * per_i, (r + 1) * per_i) of tensor i */
    int64_t n_el = (int64_t)(bytes / 4), base = n_el / n_t;
    bytes = (size_t)n_el * 4;
    zinc_ckpt_tensor tensors[MAX_TENSORS];
    zinc_ckpt_piece save_p[MAX_TENSORS], load_p[MAX_TENSORS];
    memset(tensors, 0, sizeof tensors);
    /* 64 bytes of slack: -U shifts the checkpoint's view of both buffers off alignment */
    uint8_t *src_mem = zinc_aio_buf_alloc(bytes + 64), *dst_mem = zinc_aio_buf_alloc(bytes + 64);
    float *src = (float *)src_mem, *dst = (float *)dst_mem;
    float *csrc = (float *)(src_mem + (unaligned ? 64 : 0)), *cdst = (float *)(dst_mem + (unaligned ? 64 : 0));
    zinc_aio *aio = NULL;
    int ok = src && dst;
    if (!ok) fprintf(stderr, "bench_ckpt: rank %d: cannot allocate 2 x %zu bytes\n", rank, bytes);
    else if (zinc_aio_create(&o, &aio) != ZINC_OK) {
        fprintf(stderr, "bench_ckpt: %s\n", zinc_last_error());
        ok = 0;
    }
    int64_t at = 0;
    for (int i = 0; ok && i < n_t; i++) {
        int64_t per = i + 1 < n_t ? base : n_el - base * (n_t - 1);
        zinc_ckpt_tensor *t = &tensors[i];
        snprintf(t->name, sizeof t->name, "bench.%d.weight", i);
        snprintf(t->kind, sizeof t->kind, "param");
        t->dtype = ZINC_DTYPE_F32;
        t->ndim = 1;
        t->shape[0] = per * size;
        t->tp_dim = -1;
        save_p[i] = (zinc_ckpt_piece){.tensor = i, .offset = per * rank, .n = per, .data = csrc + at};
        load_p[i] = (zinc_ckpt_piece){.tensor = i, .offset = per * rank, .n = per, .data = cdst + at};
        /* a pattern that differs per rank, tensor and element */
        for (int64_t e = 0; e < per; e++)
            csrc[at + e] = (float)((uint32_t)((per * rank + e) * 2654435761u + (uint32_t)i * 40503u) >> 8);
        at += per;
    }
    zinc_ckpt_layout save_l = {tensors, n_t, save_p, n_t, NULL, NULL}, load_l = {tensors, n_t, load_p, n_t, NULL, NULL};

    char raw[4200], save_dir[4200], rankfile[4300], tag[32];
    snprintf(raw, sizeof raw, "%s/raw-rank-%05d.bin", dir, rank);
    snprintf(save_dir, sizeof save_dir, "%s/ckpt", dir);
    double secs[N_PHASES][MAX_RUNS];
    int32_t all_ok = ok;
    zinc_comm_all_reduce(w, &all_ok, &all_ok, 1, ZINC_DTYPE_I32, ZINC_REDOP_MIN, NULL);
    ok = all_ok;
    if (ok && rank == 0) {
        printf("bench_ckpt: %d ranks, %zu bytes per rank in %d f32 tensors (%s), aio bs=%zu qd=%d threads=%d, %d runs, %s\n",
               size, bytes, n_t, unaligned ? "unaligned: staged" : "4 KiB aligned: direct", o.block_size,
               o.queue_depth, o.intra_op_parallelism, runs, dir);
        fflush(stdout);
    }
    for (int r = 0; ok && r < runs; r++) {
        zinc_status st;
        double t0;

        zinc_comm_barrier(w);
        t0 = now_s();
        st = raw_write(aio, raw, src, bytes);
        secs[PH_RAW_WRITE][r] = phase_time(w, now_s() - t0, st, &ok);
        if (!ok) break;

        drop_cache(raw);
        memset(dst, 0xff, bytes);
        zinc_comm_barrier(w);
        t0 = now_s();
        st = raw_read(aio, raw, dst, bytes);
        secs[PH_RAW_READ][r] = phase_time(w, now_s() - t0, st, &ok);
        unlink(raw);
        if (!ok) break;
        if (memcmp(src, dst, bytes) != 0) {
            zinc_error(ZINC_ERR_CORRUPT, "%s: read back differs from what was written", raw);
            phase_time(w, 0.0, ZINC_ERR_CORRUPT, &ok);
            break;
        }
        phase_time(w, 0.0, ZINC_OK, &ok);

        snprintf(tag, sizeof tag, "run%d", r);
        zinc_comm_barrier(w);
        t0 = now_s();
        st = zinc_ckpt_save(w, aio, save_dir, tag, &save_l, "{\"bench\": true}", 0);
        secs[PH_SAVE][r] = phase_time(w, now_s() - t0, st, &ok);
        if (!ok) break;

        snprintf(rankfile, sizeof rankfile, "%s/%s/rank-%05d.bin", save_dir, tag, rank);
        drop_cache(rankfile);
        memset(dst_mem, 0xff, bytes + 64);
        zinc_comm_barrier(w);
        t0 = now_s();
        st = zinc_ckpt_load(w, aio, save_dir, tag, &load_l, NULL);
        secs[PH_LOAD][r] = phase_time(w, now_s() - t0, st, &ok);
        if (!ok) break;
        if (memcmp(csrc, cdst, bytes) != 0) {
            zinc_error(ZINC_ERR_CORRUPT, "checkpoint %s/%s: loaded content differs from what was saved", save_dir, tag);
            phase_time(w, 0.0, ZINC_ERR_CORRUPT, &ok);
            break;
        }
        phase_time(w, 0.0, ZINC_OK, &ok);
        if (rank == 0) { /* untimed: the next run saves into a clean directory */
            char cmd[4400];
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", save_dir);
            if (system(cmd) != 0) fprintf(stderr, "bench_ckpt: could not remove %s\n", save_dir);
        }
    }
    if (rank == 0) {
        char cmd[4400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", save_dir);
        if (system(cmd) != 0) fprintf(stderr, "bench_ckpt: could not remove %s\n", save_dir);
    }
    unlink(raw);

    if (ok && rank == 0) {
        double med[N_PHASES];
        for (int p = 0; p < N_PHASES; p++) {
            double g[MAX_RUNS];
            for (int r = 0; r < runs; r++) g[r] = (double)bytes / secs[p][r] / 1e9;
            med[p] = median(g, runs);
            printf("runs %-9s GB/s", phase_name[p]);
            for (int r = 0; r < runs; r++) printf(" %.3f", g[r]);
            printf("\n");
        }
        printf("ranks=%d size=%zu raw_write=%.3f raw_read=%.3f save=%.3f load=%.3f save/raw_write=%.3f "
               "load/raw_read=%.3f\n",
               size, bytes, med[PH_RAW_WRITE], med[PH_RAW_READ], med[PH_SAVE], med[PH_LOAD],
               med[PH_SAVE] / med[PH_RAW_WRITE], med[PH_LOAD] / med[PH_RAW_READ]);
        fflush(stdout);
    }
    zinc_aio_destroy(aio);
    zinc_aio_buf_free(src_mem);
    zinc_aio_buf_free(dst_mem);
    zinc_comm_destroy(w);
    return ok ? 0 : 1;
}
