/* prog_saver.c - saves checkpoints in a loop for the kill test (tests/ckpt/test_ckpt_kill.sh).
 *
 *   prog_saver DIR [--steps N] [--mib M] [--keep K]   save step-1, step-2, ... (N = 0: forever);
 *                                                    resumes after the step named by latest
 *   prog_saver DIR --check                           load latest and check every element
 *
 * Element i of tensor t at step s is a function of (t, i, s) exact in f32, bf16 and f16;
 * the step is carried in meta as {"step": s, "topology": {...}}. --check exits 0 after "ok: step-S", 3 when
 * DIR has no latest, 1 on any error or wrong element. Run it under mpirun (any rank count;
 * save and check may use different counts: check reads interleaved ranges). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "zinc/ckpt.h"
#include "zinc/comm.h"
#include "zinc/log.h"

#define NT 3

static float val(int t, int64_t i, int step)
{
    return (float)((int)((i * 7 + t * 13 + step * 31) % 251) - 125) / 8.0f;
}

static void put(void *buf, zinc_dtype dt, int64_t k, float v)
{
    if (dt == ZINC_DTYPE_BF16) ((uint16_t *)buf)[k] = zinc_f32_to_bf16(v);
    else if (dt == ZINC_DTYPE_F16) ((uint16_t *)buf)[k] = zinc_f32_to_f16(v);
    else ((float *)buf)[k] = v;
}

static float get(const void *buf, zinc_dtype dt, int64_t k)
{
    if (dt == ZINC_DTYPE_BF16) return zinc_bf16_to_f32(((const uint16_t *)buf)[k]);
    if (dt == ZINC_DTYPE_F16) return zinc_f16_to_f32(((const uint16_t *)buf)[k]);
    return ((const float *)buf)[k];
}

static int64_t numel(const zinc_ckpt_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

int main(int argc, char **argv)
{
    zinc_comm *w = NULL;
    if (zinc_comm_init_world("mpi", &argc, &argv, &w) != ZINC_OK) {
        fprintf(stderr, "prog_saver: %s\n", zinc_last_error());
        return 1;
    }
    int rank = zinc_comm_rank(w), size = zinc_comm_size(w);
    const char *dir = NULL;
    int steps = 0, keep = 3, check = 0;
    double mib = 4;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mib") && i + 1 < argc) mib = atof(argv[++i]);
        else if (!strcmp(argv[i], "--keep") && i + 1 < argc) keep = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--check")) check = 1;
        else dir = argv[i];
    }
    if (!dir) {
        fprintf(stderr, "usage: prog_saver DIR [--steps N] [--mib M] [--keep K] | DIR --check\n");
        zinc_comm_destroy(w);
        return 2;
    }
    zinc_log_set_rank(size > 1 ? rank : -1);
    zinc_aio *aio = NULL;
    zinc_aio_opts o;
    zinc_aio_opts_default(&o);
    if (zinc_aio_create(&o, &aio) != ZINC_OK) {
        fprintf(stderr, "prog_saver: %s\n", zinc_last_error());
        zinc_comm_destroy(w);
        return 1;
    }
    /* ~mib MiB in all: 60% f32 master, the same tensor as bf16 param, an odd f16 bias */
    int64_t n0 = (int64_t)(mib * 1048576.0 * 0.6 / 4.0) | 1;
    zinc_ckpt_tensor T[NT] = {
        {"wte.weight", "master", ZINC_DTYPE_F32, 1, {n0}, -1, 0},
        {"wte.weight", "param", ZINC_DTYPE_BF16, 1, {n0}, -1, 0},
        {"h.0.mlp.c_fc.bias", "param", ZINC_DTYPE_F16, 1, {(int64_t)(mib * 1048576.0 * 0.1) | 1}, -1, 0},
    };
    zinc_ckpt_piece P[64];
    int np = 0;
    /* save: contiguous blocks; check: interleaved ranges of an odd size */
    for (int t = 0; t < NT; t++) {
        int64_t N = numel(&T[t]);
        if (!check) {
            int64_t a = N * rank / size, b = N * (rank + 1) / size;
            P[np++] = (zinc_ckpt_piece){.tensor = t, .offset = a, .n = b - a, .data = malloc((size_t)(b - a + 1) * 4)};
        } else {
            int64_t B = N / 5 + 7;
            for (int64_t k = 0; k * B < N; k++)
                if (k % size == rank) {
                    int64_t n = (k + 1) * B < N ? B : N - k * B;
                    P[np++] = (zinc_ckpt_piece){.tensor = t, .offset = k * B, .n = n, .data = malloc((size_t)(n + 1) * 4)};
                }
        }
    }
    zinc_ckpt_layout L = {T, NT, P, np, NULL, NULL};
    int rc = 0;
    char tag[ZINC_CKPT_TAG_MAX + 1];
    if (check) {
        int has = 1;
        if (rank == 0) {
            char p[4096];
            struct stat sb;
            snprintf(p, sizeof p, "%s/latest", dir);
            has = stat(p, &sb) == 0;
        }
        int32_t h = has;
        zinc_comm_broadcast(w, &h, 1, ZINC_DTYPE_I32, 0, NULL);
        if (!h) {
            if (rank == 0) printf("no latest in %s\n", dir);
            rc = 3;
            goto done;
        }
        char *meta = NULL;
        if (zinc_ckpt_load(w, aio, dir, NULL, &L, &meta) != ZINC_OK) {
            if (rank == 0) fprintf(stderr, "prog_saver: load: %s\n", zinc_last_error());
            rc = 1;
            goto done;
        }
        int step = -1;
        if (sscanf(meta, "{\"step\": %d", &step) != 1) step = -1;
        free(meta);
        int32_t bad = step < 0;
        for (int i = 0; i < np && !bad; i++)
            for (int64_t k = 0; k < P[i].n; k++)
                if (get(P[i].data, T[P[i].tensor].dtype, k) != val(P[i].tensor, P[i].offset + k, step)) {
                    fprintf(stderr, "prog_saver: rank %d: tensor %d element %lld wrong for step %d\n", rank, P[i].tensor,
                            (long long)(P[i].offset + k), step);
                    bad = 1;
                    break;
                }
        zinc_comm_all_reduce(w, &bad, &bad, 1, ZINC_DTYPE_I32, ZINC_REDOP_MAX, NULL);
        if (rank == 0) {
            if (zinc_ckpt_resolve_latest(dir, tag, sizeof tag) != ZINC_OK) snprintf(tag, sizeof tag, "?");
            char want[64];
            snprintf(want, sizeof want, "step-%d", step);
            if (strcmp(tag, want) != 0) {
                fprintf(stderr, "prog_saver: latest is %s but its meta says step %d\n", tag, step);
                bad = 1;
            }
            if (!bad) printf("ok: %s\n", tag);
        }
        zinc_comm_broadcast(w, &bad, 1, ZINC_DTYPE_I32, 0, NULL);
        rc = bad ? 1 : 0;
        goto done;
    }
    int32_t start = 1;
    if (rank == 0 && zinc_ckpt_resolve_latest(dir, tag, sizeof tag) == ZINC_OK && sscanf(tag, "step-%d", &start) == 1)
        start++;
    zinc_comm_broadcast(w, &start, 1, ZINC_DTYPE_I32, 0, NULL);
    for (int step = start; steps == 0 || step < start + steps; step++) {
        for (int i = 0; i < np; i++)
            for (int64_t k = 0; k < P[i].n; k++) put(P[i].data, T[P[i].tensor].dtype, k, val(P[i].tensor, P[i].offset + k, step));
        char meta[160];
        snprintf(tag, sizeof tag, "step-%d", step);
        snprintf(meta, sizeof meta, "{\"step\": %d, \"topology\": {\"pp\": 1, \"dp\": %d, \"tp\": 1, \"zero_stage\": 0}}",
                 step, size);
        if (zinc_ckpt_save(w, aio, dir, tag, &L, meta, keep) != ZINC_OK) {
            if (rank == 0) fprintf(stderr, "prog_saver: save %s: %s\n", tag, zinc_last_error());
            rc = 1;
            break;
        }
        if (rank == 0 && steps) printf("saved %s\n", tag);
    }
done:
    for (int i = 0; i < np; i++) free(P[i].data);
    zinc_aio_destroy(aio);
    zinc_comm_destroy(w);
    return rc;
}
