/* reader.c - checkpoint read side: the reader (opens a checkpoint by its manifest, reads
 * any element range of a tensor through one pipeline of crc-checked segments, converting
 * among f32/bf16/f16), verify, and zinc_ckpt_load, which maps every rank's wanted pieces
 * onto the stored chunks (ckpt.c has the overview).
 *
 * A wanted piece (a box and a range of it) becomes fragments: its logical runs, each found
 * among the manifest's sorted stored runs by binary search and cut where stored runs end,
 * adjacent ones merged (a piece saved and loaded alike is one fragment per chunk). For
 * memory, a piece's fragments are sorted by chunk and position and a segment takes every
 * fragment that continues in its blocks. For io, the piece goes in CKPT_SEG windows: a
 * window's fragments are read the same way into r->conv and the window's last segment
 * hands it to io, so io sees the piece in order with one buffer whatever the saved boxes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt_int.h"
#include "zinc/file.h"

/* ---- reader ------------------------------------------------------------------------------ */

static int is_float16_or_32(zinc_dtype dt)
{
    return dt == ZINC_DTYPE_F32 || dt == ZINC_DTYPE_BF16 || dt == ZINC_DTYPE_F16;
}

struct zinc_ckpt_reader {
    zinc_aio *aio;
    ckpt_manifest m;
    zinc_aio_file **fh;   /* per file, opened on first use */
    uint64_t *fsize;      /* actual sizes */
    uint8_t *buf[CKPT_INFLIGHT]; /* CKPT_SEG each, allocated on first read */
    uint8_t *conv;        /* CKPT_SEG: converted elements on their way to a load's io */
};

static zinc_status reader_from_text(zinc_aio *aio, const char *dir, const char *text, size_t len,
                                    zinc_ckpt_reader **out)
{
    zinc_status st;
    *out = NULL;
    zinc_ckpt_reader *r = calloc(1, sizeof *r);
    if (!r) return zinc_error(ZINC_ERR_NOMEM, "checkpoint reader: out of memory");
    r->aio = aio;
    st = ckpt_manifest_parse(dir, text, len, &r->m);
    if (st != ZINC_OK) {
        free(r);
        return st;
    }
    r->fh = calloc((size_t)r->m.n_files + 1, sizeof *r->fh);
    r->fsize = calloc((size_t)r->m.n_files + 1, sizeof *r->fsize);
    if (!r->fh || !r->fsize) {
        zinc_ckpt_reader_close(r);
        return zinc_error(ZINC_ERR_NOMEM, "checkpoint reader: out of memory");
    }
    *out = r;
    return ZINC_OK;
}

static zinc_status read_manifest_text(const char *ckdir, char **text, size_t *len)
{
    char p[CK_PATH];
    zinc_status st = ckpt_path_join(p, ckdir, "manifest.json");
    if (st != ZINC_OK) return st;
    st = ckpt_read_small_file(p, "checkpoint manifest", (size_t)1 << 30, text, len);
    if (st == ZINC_ERR_IO && !ckpt_path_exists(ckdir))
        return zinc_error(ZINC_ERR_IO, "checkpoint %s does not exist", ckdir);
    return st;
}

zinc_status zinc_ckpt_reader_open(zinc_aio *aio, const char *dir, zinc_ckpt_reader **out)
{
    char ck[CK_PATH], *text = NULL;
    size_t len = 0;
    zinc_status st;
    if (!aio || !dir || !out) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_ckpt_reader_open: NULL argument");
    *out = NULL;
    ZINC_TRY(ckpt_resolve_dir(dir, ck));
    ZINC_TRY(read_manifest_text(ck, &text, &len));
    ZINC_TRY(reader_from_text(aio, ck, text, len, out));
cleanup:
    free(text);
    return st;
}

void zinc_ckpt_reader_close(zinc_ckpt_reader *r)
{
    if (!r) return;
    for (int i = 0; r->fh && i < r->m.n_files; i++) zinc_aio_close(r->fh[i]);
    free(r->fh);
    free(r->fsize);
    for (int b = 0; b < CKPT_INFLIGHT; b++) zinc_aio_buf_free(r->buf[b]);
    zinc_aio_buf_free(r->conv);
    ckpt_manifest_free(&r->m);
    free(r);
}

const char *zinc_ckpt_reader_dir(const zinc_ckpt_reader *r) { return r->m.dir; }
const char *zinc_ckpt_reader_tag(const zinc_ckpt_reader *r) { return r->m.tag; }
const char *zinc_ckpt_reader_meta(const zinc_ckpt_reader *r) { return r->m.meta; }
int zinc_ckpt_reader_n_tensors(const zinc_ckpt_reader *r) { return r->m.n_tensors; }

const zinc_ckpt_tensor *zinc_ckpt_reader_tensor(const zinc_ckpt_reader *r, int i)
{
    return i >= 0 && i < r->m.n_tensors ? &r->m.tensors[i].t : NULL;
}

int zinc_ckpt_reader_find(const zinc_ckpt_reader *r, const char *name, const char *kind)
{
    for (int i = 0; i < r->m.n_tensors; i++)
        if (!strcmp(r->m.tensors[i].t.name, name) && (!kind || !strcmp(r->m.tensors[i].t.kind, kind))) return i;
    return -1;
}

void zinc_ckpt_reader_stats(const zinc_ckpt_reader *r, int *n_files, int *n_chunks, uint64_t *file_bytes)
{
    uint64_t b = 0;
    for (int i = 0; i < r->m.n_files; i++) b += r->m.files[i].bytes;
    if (n_files) *n_files = r->m.n_files;
    if (n_chunks) *n_chunks = r->m.n_chunks;
    if (file_bytes) *file_bytes = b;
}

/* Opens file fi on first use and checks that it is not shorter than the manifest says;
 * t names the tensor that needs it (NULL in verify). */
static zinc_status reader_file(zinc_ckpt_reader *r, int fi, const ckpt_mtensor *t, const ckpt_chunk *c)
{
    if (r->fh[fi]) return ZINC_OK;
    char p[CK_PATH], err[1024], who[256] = "";
    zinc_status st = ckpt_path_join(p, r->m.dir, r->m.files[fi].name);
    if (st != ZINC_OK) return st;
    if (t)
        snprintf(who, sizeof who, " (tensor %s (%s) needs bytes [%llu, %llu))", t->t.name, t->t.kind,
                 (unsigned long long)c->off, (unsigned long long)(c->off + c->bytes));
    if (!ckpt_path_exists(p))
        return zinc_error(ZINC_ERR_IO, "%s is missing%s", p, who);
    /* the type check first: zinc_aio_open would block on a named pipe */
    int fd;
    st = zinc_open_regular(p, 0, "checkpoint rank file", &fd, NULL);
    if (st != ZINC_OK) {
        ckpt_last_error_copy(err, sizeof err);
        return zinc_error(st, "%s%s", err, who);
    }
    close(fd);
    st = zinc_aio_open(r->aio, p, ZINC_AIO_READ, &r->fh[fi]);
    if (st == ZINC_OK) st = zinc_aio_size(r->fh[fi], &r->fsize[fi]);
    if (st != ZINC_OK) {
        ckpt_last_error_copy(err, sizeof err);
        zinc_aio_close(r->fh[fi]);
        r->fh[fi] = NULL;
        return zinc_error(st, "%s%s", err, who);
    }
    if (r->fsize[fi] < r->m.files[fi].bytes) {
        uint64_t have = r->fsize[fi];
        zinc_aio_close(r->fh[fi]);
        r->fh[fi] = NULL;
        return zinc_error(ZINC_ERR_CORRUPT, "%s is truncated: %llu of %llu bytes%s", p, (unsigned long long)have,
                          (unsigned long long)r->m.files[fi].bytes, who);
    }
    return ZINC_OK;
}

/* Where a load's piece without memory goes: io(u, piece, 1, ...). */
typedef struct ck_io {
    zinc_ckpt_io_fn fn;
    void *u;
    int piece;
    const zinc_ckpt_tensor *want; /* the piece's wanted tensor (messages) */
} ck_io;

/* Part of a segment's chunk that is wanted: chunk elements [lo, hi) (counted from the
 * chunk's first element) go to destination elements [d, d + hi - lo). */
typedef struct ck_frag {
    int64_t lo, hi, d;
} ck_frag;

/* One transfer: blocks [blk0, blk0+nblk) of chunk c of tensor t, and the fragments
 * [f0, f0+nf) of the list (sorted by lo, inside those blocks) that go to dst as dtype ddt
 * or, with io.fn set, to the reader's window buffer r->conv; a segment with io_n > 0 then
 * hands the window (io_n elements) to io.fn as elements [io_first, ...) of piece io.piece.
 * No fragments: verify only.
 * direct: read straight into dst and checked there (its one fragment is all of the
 * segment, the dtype is the stored one, and dst is aligned like the file offset, so the aio
 * engine can go O_DIRECT). io_buf: the window is this segment's one fragment in the stored
 * dtype: io gets it straight from the staging buffer. */
typedef struct ck_seg {
    const ckpt_mtensor *t;
    const ckpt_chunk *c;
    uint64_t blk0, nblk;
    size_t f0, nf;
    uint8_t *dst;
    zinc_dtype ddt;
    int direct, io_buf;
    ck_io io;
    int64_t io_first, io_n;
} ck_seg;

/* A growing list of segments and their fragments. */
typedef struct ck_segs {
    ck_seg *s;
    size_t n, cap;
    ck_frag *f;
    size_t nf, capf;
} ck_segs;

static void convert(const void *src, zinc_dtype sdt, void *dst, zinc_dtype ddt, size_t n)
{
    if (sdt == ddt) {
        memcpy(dst, src, n * zinc_dtype_size(sdt));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float v;
        switch (sdt) {
        case ZINC_DTYPE_BF16: v = zinc_bf16_to_f32(((const uint16_t *)src)[i]); break;
        case ZINC_DTYPE_F16: v = zinc_f16_to_f32(((const uint16_t *)src)[i]); break;
        default: v = ((const float *)src)[i]; break;
        }
        switch (ddt) {
        case ZINC_DTYPE_BF16: ((uint16_t *)dst)[i] = zinc_f32_to_bf16(v); break;
        case ZINC_DTYPE_F16: ((uint16_t *)dst)[i] = zinc_f32_to_f16(v); break;
        default: ((float *)dst)[i] = v; break;
        }
    }
}

static void seg_range(const ck_seg *s, uint64_t *foff, size_t *len)
{
    uint64_t b0 = s->blk0 * CKPT_BLOCK, b1 = (s->blk0 + s->nblk) * CKPT_BLOCK;
    if (b1 > s->c->bytes) b1 = s->c->bytes;
    *foff = s->c->off + b0;
    *len = (size_t)(b1 - b0);
}

/* Where a direct segment's bytes go. */
static uint8_t *seg_direct_dst(const ck_segs *l, const ck_seg *s)
{
    return s->dst + (size_t)l->f[s->f0].d * zinc_dtype_size(s->ddt);
}

static zinc_status seg_submit(zinc_ckpt_reader *r, const ck_segs *l, const ck_seg *s, uint8_t *buf,
                              zinc_aio_req **req)
{
    uint64_t foff;
    size_t len;
    zinc_status st = reader_file(r, s->c->file, s->t, s->c);
    if (st != ZINC_OK) return st;
    seg_range(s, &foff, &len);
    if (s->direct) return zinc_aio_pread_async(r->fh[s->c->file], seg_direct_dst(l, s), len, foff, req);
    size_t rl = len;
    /* read whole 4 KiB pages when the file has them: O_DIRECT friendly */
    if (foff % CKPT_ALIGN == 0 && foff + ckpt_align_up(len, CKPT_ALIGN) <= r->fsize[s->c->file])
        rl = (size_t)ckpt_align_up(len, CKPT_ALIGN);
    return zinc_aio_pread_async(r->fh[s->c->file], buf, rl, foff, req);
}

/* Hands n elements in buf (as s->ddt), elements [first, first+n) of s's piece, to s's io. */
static zinc_status seg_io(const ck_seg *s, void *buf, int64_t first, int64_t n)
{
    zinc_status st = s->io.fn(s->io.u, s->io.piece, 1, buf, first, n);
    return st == ZINC_OK ? st : ckpt_io_failed(st, "load", s->io.piece, s->io.want, first, n);
}

/* "elements [a, b)" of a chunk, with its box when it has one. */
static void chunk_str(const ckpt_mtensor *t, const ckpt_chunk *c, char *buf, size_t cap)
{
    char box[200] = "";
    if (!ckpt_box_is_whole(c->count)) {
        int64_t view[ZINC_CKPT_BOX_DIMS];
        ckpt_box_str(c->start, c->count, ckpt_view(&t->t, view), box, sizeof box);
    }
    snprintf(buf, cap, "elements [%lld, %lld)%s%s", (long long)c->bo, (long long)(c->bo + c->n), box[0] ? " of box " : "",
             box);
}

/* Checks the crc of every block of s (read into buf, or into dst if direct) and converts
 * the parts of its fragments in each block into their destination right after the block's
 * check, while it is in cache; then hands an io window on. */
static zinc_status seg_finish(zinc_ckpt_reader *r, const ck_segs *l, const ck_seg *s, const uint8_t *buf)
{
    const ckpt_chunk *c = s->c;
    zinc_dtype sdt = s->t->t.dtype;
    size_t esz = zinc_dtype_size(sdt), dsz = zinc_dtype_size(s->ddt);
    const ck_frag *f = l->f + s->f0, *fend = f + s->nf;
    const int64_t e0 = (int64_t)(s->blk0 * CKPT_BLOCK / esz); /* the chunk element at buf[0] */
    uint8_t *out = s->io.fn ? r->conv : s->dst;
    const int scatter = s->nf > 0 && !s->direct && !s->io_buf;
    if (s->direct) buf = seg_direct_dst(l, s);
    for (uint64_t k = 0; k < s->nblk; k++) {
        uint64_t blk = s->blk0 + k, b0 = blk * CKPT_BLOCK;
        size_t bl = (size_t)(c->bytes - b0 < CKPT_BLOCK ? c->bytes - b0 : CKPT_BLOCK);
        uint32_t crc = zinc_crc32c(0, buf + k * CKPT_BLOCK, bl);
        if (crc != c->crcs[blk]) {
            char cs[300];
            chunk_str(s->t, c, cs, sizeof cs);
            return zinc_error(ZINC_ERR_CORRUPT,
                              "%s/%s: crc32c mismatch in tensor %s (%s) at byte offset %llu (block %llu of the chunk of %s): the checkpoint is corrupt",
                              r->m.dir, r->m.files[c->file].name, s->t->t.name, s->t->t.kind,
                              (unsigned long long)(c->off + b0), (unsigned long long)blk, cs);
        }
        if (!scatter) continue;
        /* elements of this block (an element may straddle blocks only if esz does not
         * divide the block size, which no dtype allows) */
        int64_t be0 = (int64_t)(b0 / esz), be1 = (int64_t)((b0 + bl) / esz);
        for (; f < fend; f++) {
            int64_t lo = f->lo > be0 ? f->lo : be0, hi = f->hi < be1 ? f->hi : be1;
            if (lo < hi)
                convert(buf + (size_t)(lo - e0) * esz, sdt, out + (size_t)(f->d + lo - f->lo) * dsz, s->ddt,
                        (size_t)(hi - lo));
            if (f->hi > be1) break; /* continues in the next block */
        }
    }
    if (!s->io.fn || s->io_n == 0) return ZINC_OK;
    const uint8_t *src = s->io_buf ? buf + (size_t)(l->f[s->f0].lo - e0) * esz : r->conv;
    return seg_io(s, (void *)src, s->io_first, s->io_n);
}

/* Runs segments in order, checking each as it completes: up to CKPT_READ_WINDOW transfers
 * in flight, of which at most CKPT_INFLIGHT staged (each owning one of the reader's
 * CKPT_SEG buffers; direct segments need none). prog (may be NULL) advances by each
 * segment's bytes. Segments finish in order, so the io window in r->conv is filled by one
 * window's segments at a time. */
static zinc_status run_segs(zinc_ckpt_reader *r, const ck_segs *l, ck_progress *prog)
{
    zinc_status st = ZINC_OK;
    const ck_seg *segs = l->s;
    const size_t n = l->n;
    zinc_aio_req *req[CKPT_READ_WINDOW] = {NULL};
    uint8_t *bufs[CKPT_READ_WINDOW] = {NULL}; /* staging buffer of each in-flight slot */
    uint8_t *pool[CKPT_INFLIGHT];
    int n_pool = 0;
    size_t head = 0, count = 0, next = 0;
    if (n == 0) return ZINC_OK;
    for (size_t i = 0; i < n && !r->conv; i++)
        if (segs[i].io.fn && !segs[i].io_buf && !(r->conv = zinc_aio_buf_alloc(CKPT_SEG)))
            return zinc_error(ZINC_ERR_NOMEM, "checkpoint reader: no memory for the io window");
    for (size_t i = 0; i < n && n_pool == 0; i++)
        if (!segs[i].direct) { /* some segment is staged: make sure the buffers exist */
            for (int b = 0; b < CKPT_INFLIGHT; b++) {
                if (!r->buf[b] && !(r->buf[b] = zinc_aio_buf_alloc(CKPT_SEG)))
                    return zinc_error(ZINC_ERR_NOMEM, "checkpoint reader: no memory for read buffers");
                pool[n_pool++] = r->buf[b];
            }
        }
    while (next < n || count > 0) {
        /* fill the window in order: a staged segment waits for a free buffer */
        while (next < n && count < CKPT_READ_WINDOW && (segs[next].direct || n_pool > 0)) {
            size_t k = (head + count) % CKPT_READ_WINDOW;
            bufs[k] = segs[next].direct ? NULL : pool[--n_pool];
            st = seg_submit(r, l, &segs[next], bufs[k], &req[k]);
            if (st != ZINC_OK) {
                if (bufs[k]) pool[n_pool++] = bufs[k];
                goto cleanup;
            }
            next++;
            count++;
        }
        const ck_seg *s = &segs[next - count];
        st = ckpt_wait_opt(&req[head]);
        if (st != ZINC_OK) {
            char err[1024];
            ckpt_last_error_copy(err, sizeof err);
            st = zinc_error(st, "%s (tensor %s (%s))", err, s->t->t.name, s->t->t.kind);
            goto cleanup;
        }
        ZINC_TRY(seg_finish(r, l, s, bufs[head]));
        if (bufs[head]) pool[n_pool++] = bufs[head];
        head = (head + 1) % CKPT_READ_WINDOW;
        count--;
        if (prog) {
            uint64_t foff;
            size_t len;
            seg_range(s, &foff, &len);
            ckpt_progress_add(prog, len);
        }
    }
cleanup:
    if (st != ZINC_OK) {
        char keep[1024];
        ckpt_last_error_copy(keep, sizeof keep);
        for (size_t k = 0; k < CKPT_READ_WINDOW; k++) ckpt_wait_opt(&req[k]);
        zinc_error(st, "%s", keep);
    }
    return st;
}

static uint64_t segs_bytes(const ck_segs *l)
{
    uint64_t total = 0;
    for (size_t i = 0; i < l->n; i++) {
        uint64_t foff;
        size_t len;
        seg_range(&l->s[i], &foff, &len);
        total += len;
    }
    return total;
}

/* Appends a segment of chunk c of t starting at block k0, with no blocks or fragments yet;
 * its index, or -1 when out of memory. */
static int64_t seg_new(ck_segs *l, const ckpt_mtensor *t, const ckpt_chunk *c, uint64_t k0, uint8_t *dst,
                       zinc_dtype ddt, const ck_io *io)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? 2 * l->cap : 16;
        ck_seg *s = realloc(l->s, nc * sizeof *s);
        if (!s) return -1;
        l->s = s;
        l->cap = nc;
    }
    ck_seg *s = &l->s[l->n];
    memset(s, 0, sizeof *s);
    s->t = t;
    s->c = c;
    s->blk0 = k0;
    s->f0 = l->nf;
    s->dst = dst;
    s->ddt = ddt;
    if (io) s->io = *io;
    return (int64_t)l->n++;
}

static int frag_add(ck_segs *l, ck_frag f)
{
    if (l->nf == l->capf) {
        size_t nc = l->capf ? 2 * l->capf : 64;
        ck_frag *p = realloc(l->f, nc * sizeof *p);
        if (!p) return -1;
        l->f = p;
        l->capf = nc;
    }
    l->f[l->nf++] = f;
    return 0;
}

/* Appends the segments verify reads: every block of chunk c, no fragments. */
static zinc_status add_verify_segs(ck_segs *l, const ckpt_mtensor *t, const ckpt_chunk *c)
{
    const uint64_t per = CKPT_SEG / CKPT_BLOCK, k1 = (c->bytes + CKPT_BLOCK - 1) / CKPT_BLOCK;
    for (uint64_t k = 0; k < k1; k += per) {
        int64_t i = seg_new(l, t, c, k, NULL, t->t.dtype, NULL);
        if (i < 0) return zinc_error(ZINC_ERR_NOMEM, "checkpoint reader: out of memory");
        l->s[i].nblk = k1 - k < per ? k1 - k : per;
    }
    return ZINC_OK;
}

/* A wanted piece's part in one chunk: chunk elements [cpos, cpos+n) are piece elements
 * [ppos, ppos+n) (both counted from their first element). */
typedef struct ck_pfrag {
    int chunk;
    int64_t cpos, ppos, n;
} ck_pfrag;

static int pfrag_chunk_cmp(const void *a, const void *b)
{
    const ck_pfrag *x = a, *y = b;
    if (x->chunk != y->chunk) return x->chunk - y->chunk;
    return x->cpos < y->cpos ? -1 : x->cpos > y->cpos;
}

/* Appends segments reading fragments pf[0..n) (sorted by chunk, then cpos) of t: fragment
 * elements go to destination elements ppos - dbase (of dst, or of the io window). A segment
 * takes the fragments that continue in its blocks (up to CKPT_SEG bytes of them), so every
 * block is read once per call; fragments are split where segments end. */
static zinc_status emit_segs(ck_segs *l, const ckpt_mtensor *t, const ck_pfrag *pf, size_t n, int64_t dbase,
                             uint8_t *dst, zinc_dtype ddt, const ck_io *io)
{
    const size_t esz = zinc_dtype_size(t->t.dtype), dsz = zinc_dtype_size(ddt);
    const uint64_t per = CKPT_SEG / CKPT_BLOCK;
    const size_t s0 = l->n;
    int64_t cur = -1; /* the open segment */
    for (size_t i = 0; i < n; i++) {
        const ckpt_chunk *c = &t->chunks[pf[i].chunk];
        int64_t a = pf[i].cpos, b = a + pf[i].n, d = pf[i].ppos - dbase;
        while (a < b) {
            uint64_t ka = (uint64_t)a * esz / CKPT_BLOCK;
            ck_seg *s = cur >= 0 ? &l->s[cur] : NULL;
            if (!s || s->c != c || ka < s->blk0 || ka > s->blk0 + s->nblk ||
                (ka == s->blk0 + s->nblk && s->nblk == per)) {
                cur = seg_new(l, t, c, ka, dst, ddt, io);
                if (cur < 0) return zinc_error(ZINC_ERR_NOMEM, "checkpoint reader: out of memory");
                s = &l->s[cur];
            }
            uint64_t lim = (s->blk0 + per) * CKPT_BLOCK < c->bytes ? (s->blk0 + per) * CKPT_BLOCK : c->bytes;
            int64_t e = b < (int64_t)(lim / esz) ? b : (int64_t)(lim / esz);
            uint64_t kb = ((uint64_t)e * esz + CKPT_BLOCK - 1) / CKPT_BLOCK;
            if (kb - s->blk0 > s->nblk) s->nblk = kb - s->blk0;
            if (frag_add(l, (ck_frag){a, e, d}) != 0) return zinc_error(ZINC_ERR_NOMEM, "checkpoint reader: out of memory");
            s->nf++;
            d += e - a;
            a = e;
        }
    }
    for (size_t k = s0; dst && k < l->n; k++) {
        ck_seg *s = &l->s[k];
        const ck_frag *f = &l->f[s->f0];
        uint64_t b1 = (s->blk0 + s->nblk) * CKPT_BLOCK < s->c->bytes ? (s->blk0 + s->nblk) * CKPT_BLOCK : s->c->bytes;
        s->direct = s->nf == 1 && ddt == t->t.dtype && f->lo == (int64_t)(s->blk0 * CKPT_BLOCK / esz) &&
                    f->hi == (int64_t)(b1 / esz) &&
                    ((uintptr_t)(dst + (size_t)f->d * dsz) - (s->c->off + s->blk0 * CKPT_BLOCK)) % CKPT_ALIGN == 0;
    }
    return ZINC_OK;
}

/* The fragments of a wanted piece: its runs intersected with the stored runs of t. */
typedef struct ck_isect {
    const ckpt_mtensor *t;
    int64_t off;   /* the piece's first box element */
    ck_pfrag *f;
    size_t n, cap;
    int oom;
} ck_isect;

static int isect_run(void *u, int64_t pos, int64_t logical, int64_t n)
{
    ck_isect *x = u;
    const ckpt_srun *R = x->t->runs;
    const int64_t end = logical + n;
    int64_t lo = 0, hi = x->t->n_runs - 1; /* the last stored run starting at or before logical */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (R[mid].lo <= logical) lo = mid;
        else hi = mid - 1;
    }
    for (int64_t k = lo; k < x->t->n_runs && R[k].lo < end; k++) {
        int64_t a = logical > R[k].lo ? logical : R[k].lo, b = end < R[k].lo + R[k].n ? end : R[k].lo + R[k].n;
        if (a >= b) continue;
        ck_pfrag f = {R[k].chunk, R[k].cpos + (a - R[k].lo), pos - x->off + (a - logical), b - a};
        ck_pfrag *p = x->n ? &x->f[x->n - 1] : NULL;
        if (p && p->chunk == f.chunk && p->cpos + p->n == f.cpos && p->ppos + p->n == f.ppos) { /* continues */
            p->n += f.n;
            continue;
        }
        if (x->n == x->cap) {
            size_t nc = x->cap ? 2 * x->cap : 64;
            ck_pfrag *q = realloc(x->f, nc * sizeof *q);
            if (!q) {
                x->oom = 1;
                return 1;
            }
            x->f = q;
            x->cap = nc;
        }
        x->f[x->n++] = f;
    }
    return 0;
}

/* Appends the segments reading elements [off, off+n) of box (start, count) of manifest
 * tensor ti, in the block view of wt (the wanted tensor: same shape), into dst as dtype, or,
 * dst NULL, to io in windows of at most CKPT_SEG bytes, in ascending order. */
static zinc_status add_read_segs(zinc_ckpt_reader *r, ck_segs *l, int ti, const zinc_ckpt_tensor *wt,
                                 const int64_t *start, const int64_t *count, int64_t off, int64_t n, zinc_dtype dtype,
                                 void *dst, const ck_io *io)
{
    const ckpt_mtensor *t = &r->m.tensors[ti];
    zinc_status st = ZINC_OK;
    ck_isect x = {t, off, NULL, 0, 0, 0};
    ck_pfrag *wf = NULL;
    if (ckpt_box_is_whole(count) && (off < 0 || n < 0 || off > t->numel || n > t->numel - off))
        return zinc_error(ZINC_ERR_INVALID_ARG, "tensor %s (%s): elements [%lld, %lld) outside its %lld", t->t.name,
                          t->t.kind, (long long)off, (long long)(off + n), (long long)t->numel);
    if (t->t.dtype != dtype && !(is_float16_or_32(t->t.dtype) && is_float16_or_32(dtype)))
        return zinc_error(ZINC_ERR_UNSUPPORTED, "tensor %s (%s): cannot convert stored %s to %s", t->t.name, t->t.kind,
                          zinc_dtype_name(t->t.dtype), zinc_dtype_name(dtype));
    if (n <= 0) return ZINC_OK;
    ckpt_box_runs(wt, start, count, off, n, isect_run, &x);
    if (x.oom) {
        st = zinc_error(ZINC_ERR_NOMEM, "checkpoint reader: out of memory");
        goto cleanup;
    }
    if (dst || !io) { /* memory: in any order, each chunk's blocks read once */
        if (x.n > 1) qsort(x.f, x.n, sizeof *x.f, pfrag_chunk_cmp);
        st = emit_segs(l, t, x.f, x.n, 0, dst, dtype, NULL);
        goto cleanup;
    }
    /* io: windows of the piece in order, each gathered from its chunks into r->conv */
    const int64_t W = (int64_t)(CKPT_SEG / zinc_dtype_size(dtype));
    wf = malloc((x.n + 1) * sizeof *wf);
    if (!wf) {
        st = zinc_error(ZINC_ERR_NOMEM, "checkpoint reader: out of memory");
        goto cleanup;
    }
    size_t i = 0;
    int64_t used = 0; /* elements of x.f[i] in earlier windows */
    for (int64_t w = 0; w < n && st == ZINC_OK; w += W) {
        int64_t we = w + W < n ? w + W : n;
        size_t nw = 0;
        while (i < x.n && x.f[i].ppos + used < we) {
            ck_pfrag f = x.f[i];
            f.cpos += used;
            f.ppos += used;
            f.n -= used;
            if (f.ppos + f.n > we) { /* continues in the next window */
                f.n = we - f.ppos;
                used += f.n;
            } else {
                used = 0;
                i++;
            }
            wf[nw++] = f;
        }
        if (nw > 1) qsort(wf, nw, sizeof *wf, pfrag_chunk_cmp);
        size_t s0 = l->n;
        st = emit_segs(l, t, wf, nw, w, NULL, dtype, io);
        if (st == ZINC_OK && l->n > s0) {
            ck_seg *s = &l->s[l->n - 1];
            s->io_first = w;
            s->io_n = we - w;
            s->io_buf = l->n == s0 + 1 && s->nf == 1 && dtype == t->t.dtype;
        }
    }
cleanup:
    free(wf);
    free(x.f);
    return st;
}

/* Reads flat elements [off, off+n) of manifest tensor ti into dst as dtype. */
static zinc_status reader_read(zinc_ckpt_reader *r, int ti, int64_t off, int64_t n, zinc_dtype dtype, void *dst)
{
    ck_segs l = {0};
    int64_t whole[ZINC_CKPT_BOX_DIMS] = {0};
    zinc_status st = add_read_segs(r, &l, ti, &r->m.tensors[ti].t, whole, whole, off, n, dtype, dst, NULL);
    if (st == ZINC_OK) st = run_segs(r, &l, NULL);
    free(l.s);
    free(l.f);
    return st;
}

zinc_status zinc_ckpt_reader_read(zinc_ckpt_reader *r, int i, int64_t offset, int64_t n, zinc_dtype dtype, void *dst)
{
    if (!r || i < 0 || i >= r->m.n_tensors || (n > 0 && !dst))
        return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_ckpt_reader_read: bad tensor index %d or NULL buffer", i);
    return reader_read(r, i, offset, n, dtype, dst);
}

typedef struct file_chunk {
    const ckpt_mtensor *t;
    const ckpt_chunk *c;
} file_chunk;

static int file_chunk_cmp(const void *a, const void *b)
{
    const file_chunk *x = a, *y = b;
    if (x->c->file != y->c->file) return x->c->file - y->c->file;
    return x->c->off < y->c->off ? -1 : x->c->off > y->c->off;
}

zinc_status zinc_ckpt_reader_verify(zinc_ckpt_reader *r, zinc_ckpt_progress_fn progress, void *u)
{
    zinc_status st = ZINC_OK;
    file_chunk *fc = NULL;
    ck_segs l = {0};
    ck_progress prog;
    char p[CK_PATH];
    for (int f = 0; f < r->m.n_files; f++) {
        ZINC_TRY(reader_file(r, f, NULL, NULL));
        if (r->fsize[f] != r->m.files[f].bytes) {
            ZINC_TRY(ckpt_path_join(p, r->m.dir, r->m.files[f].name));
            return zinc_error(ZINC_ERR_CORRUPT, "%s is %llu bytes, the manifest says %llu", p,
                              (unsigned long long)r->fsize[f], (unsigned long long)r->m.files[f].bytes);
        }
    }
    fc = malloc(((size_t)r->m.n_chunks + 1) * sizeof *fc);
    if (!fc) return zinc_error(ZINC_ERR_NOMEM, "verify: out of memory");
    size_t k = 0;
    for (int i = 0; i < r->m.n_tensors; i++)
        for (int j = 0; j < r->m.tensors[i].n_chunks; j++) fc[k++] = (file_chunk){&r->m.tensors[i], &r->m.tensors[i].chunks[j]};
    qsort(fc, k, sizeof *fc, file_chunk_cmp);
    for (size_t i = 0; i < k; i++) {
        if (i > 0 && fc[i].c->file == fc[i - 1].c->file && fc[i].c->off < fc[i - 1].c->off + fc[i - 1].c->bytes) {
            st = zinc_error(ZINC_ERR_CORRUPT, "%s/manifest.json: chunks of tensors %s and %s overlap in %s", r->m.dir,
                            fc[i - 1].t->t.name, fc[i].t->t.name, r->m.files[fc[i].c->file].name);
            goto cleanup;
        }
        ZINC_TRY(add_verify_segs(&l, fc[i].t, fc[i].c));
    }
    ckpt_progress_start(&prog, progress, u, segs_bytes(&l));
    st = run_segs(r, &l, &prog);
cleanup:
    free(fc);
    free(l.s);
    free(l.f);
    return st;
}

zinc_status zinc_ckpt_verify(zinc_aio *aio, const char *ckpt_dir, zinc_ckpt_progress_fn progress, void *u)
{
    zinc_ckpt_reader *r = NULL;
    zinc_status st = zinc_ckpt_reader_open(aio, ckpt_dir, &r);
    if (st == ZINC_OK) st = zinc_ckpt_reader_verify(r, progress, u);
    zinc_ckpt_reader_close(r);
    return st;
}

/* ---- load -------------------------------------------------------------------------------- */

zinc_status zinc_ckpt_load(zinc_comm *world, zinc_aio *aio, const char *save_dir, const char *tag,
                           const zinc_ckpt_layout *want, char **meta_json_out)
{
    zinc_status st = ZINC_OK;
    int rank = zinc_comm_rank(world);
    char *ckdir = NULL, *text = NULL;
    int64_t len = 0;
    zinc_ckpt_reader *r = NULL;
    int *map = NULL;
    ck_segs segs = {0};
    if (meta_json_out) *meta_json_out = NULL;

    ckdir = calloc(1, CK_PATH);
    if (!ckdir) st = zinc_error(ZINC_ERR_NOMEM, "checkpoint load: out of memory");
    else if (!aio || !save_dir) st = zinc_error(ZINC_ERR_INVALID_ARG, "zinc_ckpt_load: NULL aio or save_dir");
    else if (tag && !ckpt_tag_valid(tag)) st = zinc_error(ZINC_ERR_INVALID_ARG, "checkpoint tag '%s' is invalid", tag);
    else st = ckpt_check_layout(want, "load");
    if (st == ZINC_OK && rank == 0) {
        char t[ZINC_CKPT_TAG_MAX + 1];
        if (!tag) {
            st = zinc_ckpt_resolve_latest(save_dir, t, sizeof t);
            tag = t;
        }
        if (st == ZINC_OK) st = ckpt_dir_of(save_dir, tag, ckdir);
        size_t l = 0;
        if (st == ZINC_OK) st = read_manifest_text(ckdir, &text, &l);
        len = (int64_t)l;
    }
    ZINC_TRY(ckpt_agree(world, st));
    ZINC_TRY(zinc_comm_broadcast(world, ckdir, CK_PATH, ZINC_DTYPE_U8, 0, NULL));
    ZINC_TRY(zinc_comm_broadcast(world, &len, 1, ZINC_DTYPE_I64, 0, NULL));
    if (rank != 0) {
        text = malloc((size_t)len + 1);
        if (!text) st = zinc_error(ZINC_ERR_NOMEM, "checkpoint load: no memory for the manifest");
    }
    ZINC_TRY(ckpt_agree(world, st));
    if (len) ZINC_TRY(zinc_comm_broadcast(world, text, (size_t)len, ZINC_DTYPE_U8, 0, NULL));
    text[len] = '\0';
    ckdir[CK_PATH - 1] = '\0';

    st = reader_from_text(aio, ckdir, text, (size_t)len, &r);
    if (st == ZINC_OK) {
        map = malloc(((size_t)want->n_tensors + 1) * sizeof *map);
        if (!map) st = zinc_error(ZINC_ERR_NOMEM, "checkpoint load: out of memory");
    }
    for (int i = 0; st == ZINC_OK && i < want->n_tensors; i++) {
        const zinc_ckpt_tensor *w = &want->tensors[i];
        int g = i < r->m.n_tensors && !strcmp(r->m.tensors[i].t.name, w->name) && !strcmp(r->m.tensors[i].t.kind, w->kind)
                    ? i
                    : zinc_ckpt_reader_find(r, w->name, w->kind);
        map[i] = g;
        if (g < 0) {
            st = zinc_error(ZINC_ERR_CORRUPT, "%s/manifest.json: checkpoint has no tensor %s (%s)", ckdir, w->name, w->kind);
        } else if (!ckpt_shape_eq(&r->m.tensors[g].t, w)) {
            char s1[128], s2[128];
            ckpt_shape_str(&r->m.tensors[g].t, s1, sizeof s1);
            ckpt_shape_str(w, s2, sizeof s2);
            st = zinc_error(ZINC_ERR_CORRUPT, "%s/manifest.json: tensor %s (%s) has shape %s in the checkpoint, %s wanted",
                            ckdir, w->name, w->kind, s1, s2);
        }
    }
    /* all pieces through one pipeline: no drain between small pieces */
    for (int i = 0; st == ZINC_OK && i < want->n_pieces; i++) {
        const zinc_ckpt_piece *p = &want->pieces[i];
        if (p->n == 0) continue;
        ck_io io = {want->io, want->io_u, i, &want->tensors[p->tensor]};
        st = add_read_segs(r, &segs, map[p->tensor], &want->tensors[p->tensor], p->start, p->count, p->offset, p->n,
                           want->tensors[p->tensor].dtype, p->data, &io);
    }
    if (st == ZINC_OK) {
        ck_progress prog;
        ckpt_progress_start(&prog, ckpt_progress_fn, ckpt_progress_u, segs_bytes(&segs));
        st = run_segs(r, &segs, &prog);
    }
    if (st == ZINC_OK && meta_json_out) {
        *meta_json_out = strdup(r->m.meta);
        if (!*meta_json_out) st = zinc_error(ZINC_ERR_NOMEM, "checkpoint load: out of memory");
    }
    st = ckpt_agree(world, st);
    if (st != ZINC_OK && meta_json_out) {
        free(*meta_json_out);
        *meta_json_out = NULL;
    }
cleanup:
    free(segs.s);
    free(segs.f);
    zinc_ckpt_reader_close(r);
    free(map);
    free(text);
    free(ckdir);
    return st;
}
