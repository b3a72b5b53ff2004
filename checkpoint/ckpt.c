/* ckpt.c - sharded checkpoints: save, load at any layout, verify, inspect.
 *
 * Save: every rank writes its pieces as chunks of rank-%05d.bin, each chunk starting at a
 * 4 KiB boundary and padded to one, so every transfer of the file is O_DIRECT friendly.
 * The file is written as one stream: staged bytes are packed into aligned 8 MiB buffers
 * (many small chunks make few large writes), one 1 MiB crc block at a time with its crc32c
 * computed right after the copy (the block is still in cache); a chunk whose memory is
 * 4 KiB aligned goes direct from the caller's memory, its crcs computed while the write is
 * in flight (no copy). Up to 16 writes are in flight, at most 4 of them staged. After an
 * fsync every rank sends its
 * chunk table (JSON) to rank 0, which checks that the chunks of all ranks tile every tensor
 * exactly, writes manifest.json, and commits: rename <tag>.partial -> <tag>, fsync save_dir,
 * update index and latest by write-tmp + fsync + rename + fsync dir. Any kill before the
 * rename of latest leaves the previous latest pointing at a complete checkpoint.
 *
 * Load: rank 0 resolves the tag and reads the manifest, which it broadcasts; every rank
 * parses it, maps all its wanted pieces onto the stored chunks that overlap them, and reads
 * just the 1 MiB crc blocks involved, in up to 8 MiB segments through one pipeline (16 in
 * flight, at most 4 staged). A segment that is wholly wanted, in the stored dtype, with
 * memory aligned like the file is read straight into the piece and checked there; others
 * are staged and each block is checked, then converted into the piece while in cache.
 *
 * Pieces without memory (data NULL: optimizer state swapped out to NVMe) go through the
 * layout's io callback and the same staging buffers: on save io fills a staging buffer in
 * place (up to its end, 4 KiB aligned) and the crcs follow; on load each staged segment is
 * checked, converted if needed through one more CKPT_SEG buffer, and handed to io. Memory
 * stays bounded by those buffers whatever the piece size; io calls run on the caller's
 * thread while the pipeline's other transfers are in flight.
 *
 * Measured (bench/bench-ckpt.sh): staging through a few small reused buffers and draining
 * the pipeline per piece cost 25-45% of the raw bandwidth; see the bench for numbers.
 *
 * Errors are agreed: each collective step ends with one all-reduce (MIN of the failing rank
 * numbers); if some rank failed, the lowest failing rank broadcasts its status and detail
 * and every rank returns that.
 *
 * The manifest is written by hand (one chunk per line, meta last, verbatim) and parsed
 * with jansson; the meta text is recovered verbatim from its known position. Every size
 * derived from a stored shape is a checked product, and every file a checkpoint names
 * (latest, index, manifest.json, rank files) is opened through zinc_open_regular first.
 * Directories a save creates carry a marker file; only marked ones are ever removed.
 *
 * Boxes (zinc/ckpt.h): a piece is a box of its tensor's block view and a flat range of the
 * box. It is written as one chunk, its bytes in the box's row-major order; the manifest
 * records the box (version 2), never the runs. Rank 0's coverage check, the manifest's
 * validation and the load all take boxes apart into the tensor's logical runs (box.c) and
 * work on those: the runs of all chunks, sorted, must tile the tensor; a wanted piece's
 * runs are intersected with them by binary search into fragments (chunk elements -> piece
 * elements), and fragments of one chunk are read together, each 1 MiB block once per
 * piece. Pieces behind io are gathered in 8 MiB windows of the piece, so io still gets
 * each piece in ascending order when its elements come from several chunks.
 *
 * The files: fsutil.c (small files and directories, tags, latest and index, and rank 0's
 * prepare and atomic commit of a save), box.c (block views, boxes and their runs),
 * manifest.c (rank 0's merge of the chunk tables, the manifest's text, its parsing and
 * validation), writer.c (the rank file's writer and
 * zinc_ckpt_save), reader.c (the reader, verify and zinc_ckpt_load), crc32c.c (the checksum)
 * and this file: what they share (string builder, error agreement, layout checks, progress,
 * io failures). Their shared declarations are in ckpt_int.h.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_int.h"

uint64_t ckpt_align_up(uint64_t x, uint64_t a)
{
    return (x + a - 1) / a * a;
}

/* Copies the current error detail (zinc_error must not format from its own buffer). */
void ckpt_last_error_copy(char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", zinc_last_error());
}

/* Completes *r if a request is in flight (zinc_aio_wait wants a live request). */
zinc_status ckpt_wait_opt(zinc_aio_req **r)
{
    return *r ? zinc_aio_wait(r) : ZINC_OK;
}

/* ---- string builder --------------------------------------------------------------------- */

void ckpt_sb_put(sbuf *s, const char *t, size_t n)
{
    if (s->oom) return;
    if (s->n + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->n + n + 1) cap *= 2;
        char *p = realloc(s->p, cap);
        if (!p) {
            s->oom = 1;
            return;
        }
        s->p = p;
        s->cap = cap;
    }
    memcpy(s->p + s->n, t, n);
    s->n += n;
    s->p[s->n] = '\0';
}

void ckpt_sb_printf(sbuf *s, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) {
        s->oom = 1;
        return;
    }
    if ((size_t)k < sizeof tmp) {
        ckpt_sb_put(s, tmp, (size_t)k);
        return;
    }
    char *big = malloc((size_t)k + 1);
    if (!big) {
        s->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)k + 1, fmt, ap);
    va_end(ap);
    ckpt_sb_put(s, big, (size_t)k);
    free(big);
}

/* A JSON string literal of str. */
void ckpt_sb_json_str(sbuf *s, const char *str)
{
    ckpt_sb_put(s, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)str; *c; c++) {
        if (*c == '"' || *c == '\\') {
            char e[2] = {'\\', (char)*c};
            ckpt_sb_put(s, e, 2);
        } else if (*c < 0x20) {
            ckpt_sb_printf(s, "\\u%04x", *c);
        } else {
            ckpt_sb_put(s, (const char *)c, 1);
        }
    }
    ckpt_sb_put(s, "\"", 1);
}

/* ---- error agreement -------------------------------------------------------------------- */

/* Collective: every rank returns the status of the lowest failing rank (with its detail),
 * or ZINC_OK if none failed. One all-reduce when all succeed. */
zinc_status ckpt_agree(zinc_comm *w, zinc_status st)
{
    return zinc_comm_agree(w, st);
}

/* ---- layout checks ---------------------------------------------------------------------- */

int64_t zinc_ckpt_tensor_numel(const zinc_ckpt_tensor *t)
{
    int64_t n = 1, bytes;
    if (!t || t->ndim < 0 || t->ndim > ZINC_MAX_DIMS) return -1;
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0 || __builtin_mul_overflow(n, t->shape[d], &n)) return -1;
    size_t esz = zinc_dtype_size(t->dtype);
    if (esz == 0 || __builtin_mul_overflow(n, (int64_t)esz, &bytes)) return -1;
    return n;
}

int64_t ckpt_tensor_numel(const zinc_ckpt_tensor *t)
{
    return zinc_ckpt_tensor_numel(t);
}

static int dtype_valid(zinc_dtype dt)
{
    return dt >= ZINC_DTYPE_F32 && dt <= ZINC_DTYPE_I64;
}

static zinc_status check_tensor(const zinc_ckpt_tensor *t, int i, const char *what)
{
    if (!memchr(t->name, '\0', sizeof t->name) || !t->name[0])
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s tensor %d: name empty or not terminated", what, i);
    if (!memchr(t->kind, '\0', sizeof t->kind) || !t->kind[0])
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s tensor %s: kind empty or not terminated", what, t->name);
    if (!dtype_valid(t->dtype))
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s tensor %s: invalid dtype %d", what, t->name, (int)t->dtype);
    if (t->ndim < 0 || t->ndim > ZINC_MAX_DIMS)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s tensor %s: ndim %d outside 0..%d", what, t->name, t->ndim, ZINC_MAX_DIMS);
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0 || t->shape[d] > ((int64_t)1 << 48))
            return zinc_error(ZINC_ERR_INVALID_ARG, "%s tensor %s: bad dimension %lld", what, t->name,
                              (long long)t->shape[d]);
    if (ckpt_tensor_numel(t) < 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s tensor %s: its shape's size in bytes overflows 64 bits", what,
                          t->name);
    char why[256];
    if (ckpt_view_check(t, why, sizeof why) != 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s tensor %s (%s): %s", what, t->name, t->kind, why);
    return ZINC_OK;
}

/* Checks a layout's tensors and pieces against themselves (not across ranks). */
zinc_status ckpt_check_layout(const zinc_ckpt_layout *L, const char *what)
{
    zinc_status st = ZINC_OK;
    if (!L || (L->n_tensors && !L->tensors) || (L->n_pieces && !L->pieces) || L->n_tensors < 0 ||
        L->n_pieces < 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s layout: NULL or negative table", what);
    for (int i = 0; i < L->n_tensors; i++) ZINC_TRY(check_tensor(&L->tensors[i], i, what));
    for (int i = 0; i < L->n_pieces; i++) {
        const zinc_ckpt_piece *p = &L->pieces[i];
        if (p->tensor < 0 || p->tensor >= L->n_tensors)
            return zinc_error(ZINC_ERR_INVALID_ARG, "%s piece %d: tensor index %d outside 0..%d", what, i,
                              p->tensor, L->n_tensors - 1);
        const zinc_ckpt_tensor *t = &L->tensors[p->tensor];
        int64_t numel = ckpt_tensor_numel(t);
        char why[512];
        if (ckpt_box_is_whole(p->count) &&
            (p->offset < 0 || p->n < 0 || p->offset > numel || p->n > numel - p->offset))
            return zinc_error(ZINC_ERR_INVALID_ARG, "%s piece %d: elements [%lld, %lld) outside tensor %s (%s) of %lld elements",
                              what, i, (long long)p->offset, (long long)(p->offset + p->n), t->name, t->kind,
                              (long long)numel);
        if (ckpt_box_check(t, p->start, p->count, p->offset, p->n, why, sizeof why) != 0)
            return zinc_error(ZINC_ERR_INVALID_ARG, "%s piece %d of tensor %s (%s): %s", what, i, t->name, t->kind, why);
        if (p->n > 0 && !p->data && !L->io)
            return zinc_error(ZINC_ERR_INVALID_ARG, "%s piece %d of tensor %s: data is NULL and the layout has no io",
                              what, i, t->name);
    }
cleanup:
    return st;
}

const char *ckpt_dtype_tag(zinc_dtype dt)
{
    return zinc_dtype_name(dt);
}

/* ---- progress --------------------------------------------------------------------------- */

zinc_ckpt_progress_fn ckpt_progress_fn;
void *ckpt_progress_u;

void zinc_ckpt_set_progress(zinc_ckpt_progress_fn fn, void *u)
{
    ckpt_progress_fn = fn;
    ckpt_progress_u = u;
}

void zinc_ckpt_get_progress(zinc_ckpt_progress_fn *fn, void **u)
{
    *fn = ckpt_progress_fn;
    *u = ckpt_progress_u;
}

void ckpt_progress_start(ck_progress *p, zinc_ckpt_progress_fn fn, void *u, uint64_t total)
{
    uint64_t step = total / 100;
    if (step > CKPT_PROGRESS_STEP) step = CKPT_PROGRESS_STEP;
    *p = (ck_progress){fn, u, 0, total, step ? step : 1, step ? step : 1};
    if (fn) fn(0, total, u);
}

void ckpt_progress_add(ck_progress *p, uint64_t n)
{
    if (!p || !p->fn || n == 0) return;
    p->done += n;
    if (p->done > p->total) p->done = p->total;
    if (p->done >= p->next || p->done == p->total) {
        p->fn(p->done, p->total, p->u);
        p->next = p->done + p->step;
    }
}

/* ---- io of pieces without memory -------------------------------------------------------- */

/* Records the failure st of io on piece pi (elements [first, first+n) of it), keeping
 * io's own detail first. */
zinc_status ckpt_io_failed(zinc_status st, const char *op, int pi, const zinc_ckpt_tensor *t, int64_t first,
                           int64_t n)
{
    char err[1024];
    ckpt_last_error_copy(err, sizeof err);
    return zinc_error(st, "%s (checkpoint %s: io of piece %d, tensor %s (%s), elements [%lld, %lld) of the piece)", err,
                      op, pi, t->name, t->kind, (long long)first, (long long)(first + n));
}
