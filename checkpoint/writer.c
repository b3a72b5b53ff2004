/* writer.c - checkpoint save: the rank file's writer (one aligned stream through staging
 * buffers or direct from the caller's memory, crc32c per block), each rank's chunk table
 * (one chunk per piece, with its box), and zinc_ckpt_save, which gathers the tables on rank 0 for the manifest and the commit
 * (ckpt.c has the overview).
 */
#include <assert.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_int.h"

#define CK_TAG_RANKFILE 7101
#define CK_TAG_RANKDESC 7102

/* ---- save: one rank's file -------------------------------------------------------------- */

typedef struct rank_chunk {
    int tensor; /* local tensor index */
    uint64_t off, bytes;
    int64_t eo, n;        /* elements [eo, eo+n) of the piece's box */
    const int64_t *start, *count; /* the piece's box (borrowed from the layout) */
    uint32_t *crcs;
    size_t n_crcs;
} rank_chunk;

/* The rank file's writer. The file is one sequential stream: chunk bytes, zero padding to
 * the next 4 KiB boundary, the next chunk. Staged bytes are packed into aligned CKPT_SEG
 * buffers, so many small chunks cost a few large writes. A chunk whose data is 4 KiB
 * aligned (its file offset always is) and at least one block long goes direct from the
 * caller's memory instead, its crcs computed while the write is in flight; only its last
 * partial page is staged. Up to CKPT_READ_WINDOW writes are in flight (a FIFO), of which
 * at most CKPT_INFLIGHT staged ones, each owning one staging buffer. */
typedef struct ck_writer {
    zinc_aio_file *f;
    uint8_t *bufs[CKPT_INFLIGHT];      /* all staging buffers (freed at the end) */
    uint8_t *pool[CKPT_INFLIGHT];      /* the free ones */
    int n_pool;
    zinc_aio_req *req[CKPT_READ_WINDOW];
    uint8_t *rbuf[CKPT_READ_WINDOW];   /* staging buffer of each request, or NULL */
    uint64_t len[CKPT_READ_WINDOW];    /* bytes of each request (progress) */
    size_t head, count;
    uint8_t *cur;                      /* buffer being filled, or NULL */
    size_t fill;                       /* staged bytes in cur */
    uint64_t pos;                      /* file offset of the next byte of the stream */
    ck_progress *prog;
} ck_writer;

/* Completes the oldest write in flight. */
static zinc_status writer_retire(ck_writer *w)
{
    zinc_status st = zinc_aio_wait(&w->req[w->head]);
    if (w->rbuf[w->head]) w->pool[w->n_pool++] = w->rbuf[w->head];
    if (st == ZINC_OK) ckpt_progress_add(w->prog, w->len[w->head]);
    w->head = (w->head + 1) % CKPT_READ_WINDOW;
    w->count--;
    return st;
}

/* Starts writing p (n bytes at file offset off; staging buffer buf or NULL). */
static zinc_status writer_submit(ck_writer *w, const void *p, size_t n, uint64_t off, uint8_t *buf)
{
    zinc_status st = ZINC_OK;
    if (w->count == CKPT_READ_WINDOW) ZINC_TRY(writer_retire(w));
    size_t k = (w->head + w->count) % CKPT_READ_WINDOW;
    ZINC_TRY(zinc_aio_pwrite_async(w->f, p, n, off, &w->req[k]));
    w->rbuf[k] = buf;
    w->len[k] = n;
    w->count++;
cleanup:
    return st;
}

/* Writes the staged bytes (always ending 4 KiB aligned: callers pad first). */
static zinc_status writer_flush(ck_writer *w)
{
    if (w->fill == 0) return ZINC_OK;
    uint8_t *b = w->cur;
    size_t n = w->fill;
    w->cur = NULL;
    w->fill = 0;
    zinc_status st = writer_submit(w, b, n, w->pos - n, b);
    if (st != ZINC_OK) w->pool[w->n_pool++] = b;
    return st;
}

/* Appends n bytes of src to the stream through the staging buffers; with crc != NULL,
 * continues *crc over them, storing a finished block's crc at crcs[(*blk_at) / block]. */
static zinc_status writer_stage(ck_writer *w, const uint8_t *src, size_t n, uint32_t *crcs, uint64_t *blk_at,
                                uint32_t *crc)
{
    zinc_status st = ZINC_OK;
    while (n > 0) {
        size_t k = CKPT_SEG - w->fill;
        if (k > n) k = n;
        if (crcs) { /* stop at the block boundary */
            size_t left = CKPT_BLOCK - (size_t)(*blk_at % CKPT_BLOCK);
            if (k > left) k = left;
        }
        if (!w->cur) {
            while (w->n_pool == 0) ZINC_TRY(writer_retire(w));
            w->cur = w->pool[--w->n_pool];
        }
        uint8_t *d = w->cur + w->fill;
        if (src) memcpy(d, src, k);
        else memset(d, 0, k);
        if (crcs) {
            *crc = zinc_crc32c(*crc, d, k);
            *blk_at += k;
            if (*blk_at % CKPT_BLOCK == 0) {
                crcs[*blk_at / CKPT_BLOCK - 1] = *crc;
                *crc = 0;
            }
        }
        w->fill += k;
        w->pos += k;
        if (src) src += k;
        n -= k;
        if (w->fill == CKPT_SEG) ZINC_TRY(writer_flush(w));
    }
cleanup:
    return st;
}

/* Writes chunk c (data p) at c->off, which is >= the stream position. */
static zinc_status writer_chunk(ck_writer *w, rank_chunk *c, const uint8_t *p)
{
    zinc_status st = ZINC_OK;
    ZINC_TRY(writer_stage(w, NULL, (size_t)(c->off - w->pos), NULL, NULL, NULL)); /* padding */
    uint64_t direct = ((uintptr_t)p % CKPT_ALIGN) == 0 && c->bytes >= CKPT_BLOCK ? c->bytes / CKPT_ALIGN * CKPT_ALIGN : 0;
    if (direct == 0) {
        uint64_t at = 0;
        uint32_t crc = 0;
        ZINC_TRY(writer_stage(w, p, (size_t)c->bytes, c->crcs, &at, &crc));
        if (at % CKPT_BLOCK) c->crcs[at / CKPT_BLOCK] = crc; /* the chunk's last, short block */
        return ZINC_OK;
    }
    ZINC_TRY(writer_flush(w)); /* the stream is at c->off: the staged bytes end aligned */
    for (uint64_t s = 0; s < direct; s += CKPT_SEG) {
        size_t len = (size_t)(direct - s < CKPT_SEG ? direct - s : CKPT_SEG);
        ZINC_TRY(writer_submit(w, p + s, len, c->off + s, NULL));
        /* the blocks wholly inside this write, checksummed while it is in flight */
        for (uint64_t b = s; b < s + len && b + CKPT_BLOCK <= direct; b += CKPT_BLOCK)
            c->crcs[b / CKPT_BLOCK] = zinc_crc32c(0, p + b, CKPT_BLOCK);
    }
    /* the block that the direct part ends in, if any, and the tail */
    uint64_t b0 = direct / CKPT_BLOCK * CKPT_BLOCK;
    if (b0 < c->bytes) c->crcs[b0 / CKPT_BLOCK] = zinc_crc32c(0, p + b0, (size_t)(c->bytes - b0));
    w->pos = c->off + direct;
    return writer_stage(w, p + direct, (size_t)(c->bytes - direct), NULL, NULL, NULL);
cleanup:
    return st;
}

/* Writes chunk c of piece pi, which has no memory, at c->off (>= the stream position):
 * L->io fills the staging buffers directly, each call up to the end of the current one,
 * and the crcs of what it filled are computed right after. Every call's buffer is 4 KiB
 * aligned (staging buffers start at 4 KiB aligned stream positions, chunks too) and all
 * but a chunk's last call end on a buffer's end, so lengths are whole elements. */
static zinc_status writer_chunk_io(ck_writer *w, rank_chunk *c, const zinc_ckpt_layout *L, int pi)
{
    zinc_status st = ZINC_OK;
    const zinc_ckpt_tensor *t = &L->tensors[L->pieces[pi].tensor];
    size_t esz = zinc_dtype_size(t->dtype);
    uint64_t at = 0;
    uint32_t crc = 0;
    ZINC_TRY(writer_stage(w, NULL, (size_t)(c->off - w->pos), NULL, NULL, NULL)); /* padding */
    while (at < c->bytes) {
        if (!w->cur) {
            while (w->n_pool == 0) ZINC_TRY(writer_retire(w));
            w->cur = w->pool[--w->n_pool];
        }
        size_t k = CKPT_SEG - w->fill;
        if (k > c->bytes - at) k = (size_t)(c->bytes - at);
        assert(k % esz == 0 && w->fill % CKPT_ALIGN == 0);
        uint8_t *d = w->cur + w->fill;
        int64_t first = (int64_t)(at / esz), n = (int64_t)(k / esz);
        st = L->io(L->io_u, pi, 0, d, first, n);
        if (st != ZINC_OK) {
            st = ckpt_io_failed(st, "save", pi, t, first, n);
            goto cleanup;
        }
        for (size_t q = 0; q < k;) {
            size_t m = CKPT_BLOCK - (size_t)(at % CKPT_BLOCK);
            if (m > k - q) m = k - q;
            crc = zinc_crc32c(crc, d + q, m);
            at += m;
            q += m;
            if (at % CKPT_BLOCK == 0) {
                c->crcs[at / CKPT_BLOCK - 1] = crc;
                crc = 0;
            }
        }
        w->fill += k;
        w->pos += k;
        if (w->fill == CKPT_SEG) ZINC_TRY(writer_flush(w));
    }
    if (at % CKPT_BLOCK) c->crcs[at / CKPT_BLOCK] = crc; /* the chunk's last, short block */
cleanup:
    return st;
}

/* Writes this rank's pieces to path; fills ch (one per non-empty piece, *n_ch of them)
 * with offsets and crcs, and *file_bytes with the file's size. */
static zinc_status write_rank_file(zinc_aio *aio, const char *path, const zinc_ckpt_layout *L,
                                   rank_chunk *ch, int *n_ch, uint64_t *file_bytes)
{
    zinc_status st = ZINC_OK;
    ck_writer w;
    ck_progress prog;
    memset(&w, 0, sizeof w);
    uint64_t off = 0;
    int k = 0;
    for (int i = 0; i < L->n_pieces; i++) {
        const zinc_ckpt_piece *p = &L->pieces[i];
        if (p->n == 0) continue;
        size_t esz = zinc_dtype_size(L->tensors[p->tensor].dtype);
        rank_chunk *c = &ch[k++];
        c->tensor = p->tensor;
        c->eo = p->offset;
        c->n = p->n;
        c->start = p->start;
        c->count = p->count;
        c->off = off;
        c->bytes = (uint64_t)p->n * esz;
        c->n_crcs = (size_t)((c->bytes + CKPT_BLOCK - 1) / CKPT_BLOCK);
        c->crcs = malloc(c->n_crcs * sizeof *c->crcs);
        if (!c->crcs) return zinc_error(ZINC_ERR_NOMEM, "%s: no memory for the crc table", path);
        off = ckpt_align_up(off + c->bytes, CKPT_ALIGN);
    }
    *n_ch = k;
    *file_bytes = off;
    ckpt_progress_start(&prog, ckpt_progress_fn, ckpt_progress_u, off);
    w.prog = &prog;

    ZINC_TRY(zinc_aio_open(aio, path, ZINC_AIO_WRITE | ZINC_AIO_CREATE | ZINC_AIO_TRUNC, &w.f));
    for (int b = 0; b < CKPT_INFLIGHT; b++) {
        if (!(w.bufs[b] = zinc_aio_buf_alloc(CKPT_SEG))) {
            st = zinc_error(ZINC_ERR_NOMEM, "%s: no memory for staging buffers", path);
            goto cleanup;
        }
        w.pool[w.n_pool++] = w.bufs[b];
    }
    for (int j = 0, i = 0; j < k; i++) {
        const zinc_ckpt_piece *p = &L->pieces[i];
        if (p->n == 0) continue;
        if (p->data) ZINC_TRY(writer_chunk(&w, &ch[j++], p->data));
        else ZINC_TRY(writer_chunk_io(&w, &ch[j++], L, i));
    }
    ZINC_TRY(writer_stage(&w, NULL, (size_t)(off - w.pos), NULL, NULL, NULL)); /* last padding */
    ZINC_TRY(writer_flush(&w));
    while (w.count > 0) ZINC_TRY(writer_retire(&w));
    ZINC_TRY(zinc_aio_fsync(w.f));
    st = zinc_aio_close(w.f);
    w.f = NULL;
cleanup:
    if (st != ZINC_OK) {
        /* drain and close without losing the first failure's detail */
        char keep[1024];
        ckpt_last_error_copy(keep, sizeof keep);
        for (int q = 0; q < CKPT_READ_WINDOW; q++) ckpt_wait_opt(&w.req[q]);
        zinc_aio_close(w.f);
        zinc_error(st, "%s", keep);
    }
    for (int b = 0; b < CKPT_INFLIGHT; b++) zinc_aio_buf_free(w.bufs[b]);
    return st;
}

/* This rank's tensor table and chunks as JSON (sent to rank 0). */
static char *rank_desc_json(const zinc_ckpt_layout *L, const rank_chunk *ch, int n_ch, uint64_t file_bytes)
{
    json_t *root = json_object(), *ts = json_array(), *cs = json_array();
    for (int i = 0; i < L->n_tensors; i++) {
        const zinc_ckpt_tensor *t = &L->tensors[i];
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_array_append_new(ts, json_pack("[s s s o i i]", t->name, t->kind, ckpt_dtype_tag(t->dtype), shape, t->tp_dim,
                                            t->tp_blocks > 1 ? t->tp_blocks : 1));
    }
    for (int i = 0; i < n_ch; i++) {
        const rank_chunk *c = &ch[i];
        json_t *crcs = json_array(), *box = json_null();
        for (size_t b = 0; b < c->n_crcs; b++) json_array_append_new(crcs, json_integer(c->crcs[b]));
        if (!ckpt_box_is_whole(c->count)) { /* [[start...], [count...]] over the view */
            int64_t view[ZINC_CKPT_BOX_DIMS];
            int nd = ckpt_view(&L->tensors[c->tensor], view);
            json_t *st = json_array(), *ct = json_array();
            for (int d = 0; d < nd; d++) {
                json_array_append_new(st, json_integer(c->start[d]));
                json_array_append_new(ct, json_integer(c->count[d]));
            }
            box = json_pack("[o o]", st, ct);
        }
        json_array_append_new(cs, json_pack("[i I I I I o o]", c->tensor, (json_int_t)c->off, (json_int_t)c->bytes,
                                            (json_int_t)c->eo, (json_int_t)c->n, crcs, box));
    }
    json_object_set_new(root, "tensors", ts);
    json_object_set_new(root, "chunks", cs);
    json_object_set_new(root, "file_bytes", json_integer((json_int_t)file_bytes));
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

/* ---- save ------------------------------------------------------------------------------- */

zinc_status zinc_ckpt_save(zinc_comm *world, zinc_aio *aio, const char *save_dir, const char *tag,
                           const zinc_ckpt_layout *mine, const char *meta_json, int keep_last)
{
    zinc_status st = ZINC_OK;
    int rank = zinc_comm_rank(world), size = zinc_comm_size(world);
    char part[CK_PATH], path[CK_PATH], name[300];
    rank_chunk *ch = NULL;
    int n_ch = 0;
    uint64_t fbytes = 0;
    char *desc = NULL, *man = NULL;
    json_t **descs = NULL;
    uint64_t *file_bytes = NULL;
    m_table mt = {0};
    const char *meta = meta_json ? meta_json : "{}";

    if (!aio || !save_dir || !tag)
        st = zinc_error(ZINC_ERR_INVALID_ARG, "zinc_ckpt_save: NULL aio, save_dir or tag");
    else if (!ckpt_tag_valid(tag))
        st = zinc_error(ZINC_ERR_INVALID_ARG,
                        "checkpoint tag '%s' is invalid: use 1-%d of [A-Za-z0-9._-], not starting with '.'",
                        tag, ZINC_CKPT_TAG_MAX);
    else
        st = ckpt_check_layout(mine, "save");
    if (st == ZINC_OK) {
        snprintf(name, sizeof name, "%s.partial", tag);
        st = ckpt_path_join(part, save_dir, name);
    }
    if (st == ZINC_OK && rank == 0) st = ckpt_save_prepare(save_dir, tag, meta);
    ZINC_TRY(ckpt_agree(world, st));

    /* every rank writes its file */
    snprintf(name, sizeof name, "rank-%05d.bin", rank);
    st = ckpt_path_join(path, part, name);
    if (st == ZINC_OK) {
        ch = calloc((size_t)mine->n_pieces + 1, sizeof *ch);
        st = ch ? write_rank_file(aio, path, mine, ch, &n_ch, &fbytes)
                : zinc_error(ZINC_ERR_NOMEM, "%s: no memory for the chunk table", path);
    }
    if (st == ZINC_OK) {
        desc = rank_desc_json(mine, ch, n_ch, fbytes);
        if (!desc) st = zinc_error(ZINC_ERR_NOMEM, "%s: no memory for the chunk table", path);
    }
    st = ckpt_agree(world, st);
    if (st != ZINC_OK) {
        if (rank == 0) ckpt_remove_partial(part, st);
        goto cleanup;
    }

    /* chunk tables to rank 0 */
    zinc_status cst = ZINC_OK;
    if (rank != 0) {
        int64_t len = (int64_t)strlen(desc) + 1;
        cst = zinc_comm_send(world, &len, 1, ZINC_DTYPE_I64, 0, CK_TAG_RANKFILE, NULL);
        if (cst == ZINC_OK) cst = zinc_comm_send(world, desc, (size_t)len, ZINC_DTYPE_U8, 0, CK_TAG_RANKDESC, NULL);
        st = cst;
    } else {
        descs = calloc((size_t)size, sizeof *descs);
        file_bytes = calloc((size_t)size, sizeof *file_bytes);
        if (!descs || !file_bytes) st = zinc_error(ZINC_ERR_NOMEM, "checkpoint: out of memory");
        for (int r = 0; r < size; r++) {
            char *txt = desc;
            int64_t len = 0;
            if (r != 0) {
                cst = zinc_comm_recv(world, &len, 1, ZINC_DTYPE_I64, r, CK_TAG_RANKFILE, NULL);
                if (cst != ZINC_OK) {
                    st = cst;
                    break;
                }
                txt = malloc((size_t)len);
                if (!txt) {
                    st = zinc_error(ZINC_ERR_NOMEM, "checkpoint: out of memory");
                    break; /* the job is going down: a peer will time out */
                }
                cst = zinc_comm_recv(world, txt, (size_t)len, ZINC_DTYPE_U8, r, CK_TAG_RANKDESC, NULL);
                if (cst != ZINC_OK) {
                    free(txt);
                    st = cst;
                    break;
                }
            }
            if (st == ZINC_OK) {
                json_error_t jerr;
                descs[r] = json_loads(txt, 0, &jerr);
                if (!descs[r]) st = zinc_error(ZINC_ERR_INTERNAL, "chunk table of rank %d: %s", r, jerr.text);
                else st = ckpt_merge_rank(&mt, r, descs[r], &file_bytes[r]);
            }
            if (r != 0) free(txt);
        }
        if (st == ZINC_OK) st = ckpt_check_coverage(&mt);
        size_t mlen = 0;
        if (st == ZINC_OK) {
            man = ckpt_manifest_text(tag, &mt, file_bytes, size, meta, &mlen);
            if (!man) st = zinc_error(ZINC_ERR_NOMEM, "checkpoint manifest: out of memory");
        }
        if (st == ZINC_OK) st = ckpt_write_file_atomic(aio, part, "manifest.json", man, mlen);
        if (st == ZINC_OK) st = ckpt_save_commit(aio, save_dir, tag, keep_last);
        if (st != ZINC_OK) ckpt_remove_partial(part, st);
    }
    st = ckpt_agree(world, st);

cleanup:
    if (ch)
        for (int i = 0; i < n_ch; i++) free(ch[i].crcs);
    free(ch);
    free(desc);
    free(man);
    if (descs)
        for (int r = 0; r < size; r++) json_decref(descs[r]);
    free(descs);
    free(file_bytes);
    for (int i = 0; i < mt.n; i++) free(mt.t[i].c);
    free(mt.t);
    return st;
}
