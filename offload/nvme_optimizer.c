/* nvme_optimizer.c - the optimizer stream over a 3-part fp32 swap file
 * (zinc_swap_stream in zinc/offload.h): sub-groups in rotating buffers, the
 * read of group i+1 ahead of the update of i (pipeline_read), the write of
 * i behind it (pipeline_write). The update itself is the caller's.
 */
#include <stdlib.h>
#include <sys/types.h>

#include "zinc/clock.h"
#include "zinc/offload.h"

typedef struct stream {
    zinc_swap *s;
    float **buf;            /* nb buffers of 3 x G floats: master, m, v */
    zinc_aio_req *(*reqs)[3];
    int *nreq;
    ssize_t *loaded;        /* the group read into each buffer, or -1 */
    size_t G;
    double *io_wait_ms;
} stream;

/* Reads (write 0) or writes group g's three parts into / from buffer b. */
static zinc_status group_io(stream *t, int b, const zinc_swap_group *g, int write)
{
    for (int k = 0; k < 3; k++) {
        zinc_status st = zinc_swap_io_async(t->s, g->region, k, (uint64_t)g->first * sizeof(float),
                                            t->buf[b] + (size_t)k * t->G, g->n * sizeof(float),
                                            write, &t->reqs[b][t->nreq[b]]);
        if (st != ZINC_OK) return st;
        t->nreq[b]++;
    }
    return ZINC_OK;
}

/* Waits for buffer b's transfers; the first error wins over st. */
static zinc_status wait_buf(stream *t, int b, zinc_status st)
{
    double tw = zinc_now_ms();
    for (int q = 0; q < t->nreq[b]; q++) {
        zinc_status s2 = zinc_aio_wait(&t->reqs[b][q]);
        if (st == ZINC_OK) st = s2;
    }
    t->nreq[b] = 0;
    *t->io_wait_ms += zinc_now_ms() - tw;
    return st;
}

zinc_status zinc_swap_stream(zinc_swap *s, const zinc_swap_group *grp, size_t K, size_t G,
                             int pr, int pw, zinc_swap_update_fn update, void *user,
                             double *io_wait_ms)
{
    zinc_status st = ZINC_OK;
    int nb = 1 + pr + pw; /* the group in work, the one read ahead, the one written behind */
    stream t = {.s = s, .G = G, .io_wait_ms = io_wait_ms};
    t.buf = calloc((size_t)nb, sizeof *t.buf);
    t.reqs = calloc((size_t)nb, sizeof *t.reqs);
    t.nreq = calloc((size_t)nb, sizeof *t.nreq);
    t.loaded = calloc((size_t)nb, sizeof *t.loaded);
    if (!t.buf || !t.reqs || !t.nreq || !t.loaded) {
        st = zinc_error(ZINC_ERR_NOMEM, "optimizer swap buffers");
        goto cleanup;
    }
    for (int b = 0; b < nb; b++) {
        t.loaded[b] = -1;
        t.buf[b] = zinc_aio_buf_alloc(3 * G * sizeof(float));
        if (!t.buf[b]) {
            st = zinc_error(ZINC_ERR_NOMEM, "optimizer swap buffers: %d x %zu bytes", nb,
                            3 * G * sizeof(float));
            goto cleanup;
        }
    }
    for (size_t i = 0; i < K && st == ZINC_OK; i++) {
        for (size_t j = i; j <= i + (size_t)pr && j < K && st == ZINC_OK; j++) {
            int b = (int)(j % (size_t)nb);
            if (t.loaded[b] == (ssize_t)j) continue;
            st = wait_buf(&t, b, st); /* its earlier write must land before it is reused */
            if (st != ZINC_OK) break;
            st = group_io(&t, b, &grp[j], 0);
            t.loaded[b] = (ssize_t)j;
        }
        if (st != ZINC_OK) break;
        int b = (int)(i % (size_t)nb);
        st = wait_buf(&t, b, st);
        if (st != ZINC_OK) break;
        st = update(user, &grp[i], t.buf[b], t.buf[b] + G, t.buf[b] + 2 * G);
        if (st == ZINC_OK) {
            st = group_io(&t, b, &grp[i], 1);
            t.loaded[b] = -1;
        }
        if (!pw) st = wait_buf(&t, b, st);
    }
cleanup:
    for (int b = 0; t.reqs && t.nreq && b < nb; b++) st = wait_buf(&t, b, st);
    for (int b = 0; t.buf && b < nb; b++) zinc_aio_buf_free(t.buf[b]);
    free(t.buf);
    free(t.reqs);
    free(t.nreq);
    free(t.loaded);
    return st;
}
