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
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_int.h"
#include "zinc/file.h"
#include "zinc/log.h"

#define CK_PATH 4096
#define CK_TAG_RANKFILE 7101
#define CK_TAG_RANKDESC 7102

static uint64_t align_up(uint64_t x, uint64_t a)
{
    return (x + a - 1) / a * a;
}

/* Copies the current error detail (zinc_error must not format from its own buffer). */
static void last_error_copy(char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", zinc_last_error());
}

/* Completes *r if a request is in flight (zinc_aio_wait wants a live request). */
static zinc_status wait_opt(zinc_aio_req **r)
{
    return *r ? zinc_aio_wait(r) : ZINC_OK;
}

/* ---- string builder --------------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *s, const char *t, size_t n)
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

static void sb_printf(sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *s, const char *fmt, ...)
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
        sb_put(s, tmp, (size_t)k);
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
    sb_put(s, big, (size_t)k);
    free(big);
}

/* A JSON string literal of str. */
static void sb_json_str(sbuf *s, const char *str)
{
    sb_put(s, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)str; *c; c++) {
        if (*c == '"' || *c == '\\') {
            char e[2] = {'\\', (char)*c};
            sb_put(s, e, 2);
        } else if (*c < 0x20) {
            sb_printf(s, "\\u%04x", *c);
        } else {
            sb_put(s, (const char *)c, 1);
        }
    }
    sb_put(s, "\"", 1);
}

/* ---- small files and directories -------------------------------------------------------- */

static zinc_status path_join(char *out, const char *a, const char *b)
{
    int k = snprintf(out, CK_PATH, "%s/%s", a, b);
    if (k < 0 || k >= CK_PATH) return zinc_error(ZINC_ERR_INVALID_ARG, "path too long: %s/%s", a, b);
    return ZINC_OK;
}

static zinc_status fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return zinc_error(ZINC_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    int r = fsync(fd);
    int e = errno;
    close(fd);
    /* some file systems cannot fsync a directory; that is not an error of ours */
    if (r != 0 && e != EINVAL && e != EROFS)
        return zinc_error(ZINC_ERR_IO, "%s: fsync of directory failed: %s", dir, strerror(e));
    return ZINC_OK;
}

static zinc_status mkdir_p(const char *dir)
{
    char p[CK_PATH];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        return zinc_error(ZINC_ERR_INVALID_ARG, "path too long: %s", dir);
    for (char *c = p + 1;; c++) {
        if (*c == '/' || *c == '\0') {
            char save = *c;
            *c = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST)
                return zinc_error(ZINC_ERR_IO, "%s: cannot create directory: %s", p, strerror(errno));
            *c = save;
            if (save == '\0') break;
        }
    }
    struct stat sb;
    if (stat(dir, &sb) != 0) return zinc_error(ZINC_ERR_IO, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return zinc_error(ZINC_ERR_IO, "%s is %s, not a directory", dir, zinc_file_kind((unsigned)sb.st_mode));
    return ZINC_OK;
}

zinc_status zinc_ckpt_prepare_dir(const char *save_dir)
{
    if (!save_dir || !save_dir[0]) return zinc_error(ZINC_ERR_INVALID_ARG, "checkpoint: no save_dir");
    zinc_status st = mkdir_p(save_dir);
    if (st != ZINC_OK) return st;
    if (access(save_dir, W_OK | X_OK) != 0)
        return zinc_error(ZINC_ERR_IO, "%s: cannot write into it: %s", save_dir, strerror(errno));
    return ZINC_OK;
}

static int path_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Every directory zinc creates in a save_dir (<tag>.partial, which becomes <tag>) holds this
 * file with this line; zinc writes it into an older checkpoint before renaming it to
 * <tag>.replaced or <tag>.deleting. Stale *.partial / *.deleting / *.replaced directories are
 * removed only when they carry it: a user's thesis.partial/ is not ours to delete. */
#define CK_MARKER ".zinc-checkpoint"
#define CK_MARKER_LINE "zinc checkpoint directory (zinc may remove it when its name ends in .partial, .deleting or .replaced)\n"

/* 1 when dir carries zinc's marker with the expected line. */
static int dir_is_ours(const char *dir)
{
    char p[CK_PATH], buf[sizeof CK_MARKER_LINE];
    if (path_join(p, dir, CK_MARKER) != ZINC_OK) return 0;
    int fd = open(p, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat sb;
    ssize_t n = -1;
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == (off_t)strlen(CK_MARKER_LINE))
        n = read(fd, buf, sizeof buf);
    close(fd);
    return n == (ssize_t)strlen(CK_MARKER_LINE) && !memcmp(buf, CK_MARKER_LINE, (size_t)n);
}

/* Writes zinc's marker into dir (which zinc created or committed). */
static zinc_status dir_mark(const char *dir)
{
    char p[CK_PATH];
    zinc_status st = path_join(p, dir, CK_MARKER);
    if (st != ZINC_OK) return st;
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return zinc_error(ZINC_ERR_IO, "%s: cannot create: %s", p, strerror(errno));
    size_t n = strlen(CK_MARKER_LINE);
    ssize_t w = write(fd, CK_MARKER_LINE, n);
    int e = errno;
    if (close(fd) != 0 && w == (ssize_t)n) {
        w = -1;
        e = errno;
    }
    if (w != (ssize_t)n) return zinc_error(ZINC_ERR_IO, "%s: cannot write: %s", p, w < 0 ? strerror(e) : "short write");
    return ZINC_OK;
}

/* Removes a checkpoint directory: manifest.json first (so a half-removed directory is
 * never taken for complete), then the other plain files, the marker last (so a directory
 * half removed by a killed process is still known as zinc's), then the directory. Does not
 * recurse: a subdirectory (not ours) stops it with ZINC_ERR_IO. A missing dir is fine. */
static zinc_status remove_flat_dir(const char *dir)
{
    char p[CK_PATH];
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return ZINC_OK;
        return zinc_error(ZINC_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    }
    zinc_status st = path_join(p, dir, "manifest.json");
    if (st == ZINC_OK && unlink(p) != 0 && errno != ENOENT)
        st = zinc_error(ZINC_ERR_IO, "%s: cannot remove: %s", p, strerror(errno));
    struct dirent *e;
    while (st == ZINC_OK && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, CK_MARKER)) continue;
        st = path_join(p, dir, e->d_name);
        if (st == ZINC_OK && unlink(p) != 0)
            st = zinc_error(ZINC_ERR_IO, "%s: cannot remove: %s", p, strerror(errno));
    }
    closedir(d);
    if (st == ZINC_OK) st = path_join(p, dir, CK_MARKER);
    if (st == ZINC_OK && unlink(p) != 0 && errno != ENOENT)
        st = zinc_error(ZINC_ERR_IO, "%s: cannot remove: %s", p, strerror(errno));
    if (st == ZINC_OK && rmdir(dir) != 0)
        st = zinc_error(ZINC_ERR_IO, "%s: cannot remove directory: %s", dir, strerror(errno));
    return st;
}

/* Removes a failed save's directory, keeping the detail of failure st. */
static void remove_partial(const char *part, zinc_status st)
{
    char keep[1024];
    last_error_copy(keep, sizeof keep);
    if (remove_flat_dir(part) != ZINC_OK) ZINC_WARN("checkpoint: %s", zinc_last_error());
    zinc_error(st, "%s", keep);
}

/* Writes dir/name atomically: name.tmp, fsync, rename, fsync dir. */
static zinc_status write_file_atomic(zinc_aio *aio, const char *dir, const char *name,
                                     const char *data, size_t n)
{
    char tmp[CK_PATH], dst[CK_PATH], tname[300];
    zinc_aio_file *f = NULL;
    zinc_status st;
    snprintf(tname, sizeof tname, "%s.tmp", name);
    ZINC_TRY(path_join(tmp, dir, tname));
    ZINC_TRY(path_join(dst, dir, name));
    /* a leftover name.tmp is ours to replace; a named pipe there would block the open */
    if (unlink(tmp) != 0 && errno != ENOENT)
        return zinc_error(ZINC_ERR_IO, "%s: cannot remove: %s", tmp, strerror(errno));
    ZINC_TRY(zinc_aio_open(aio, tmp, ZINC_AIO_WRITE | ZINC_AIO_CREATE | ZINC_AIO_TRUNC | ZINC_AIO_BUFFERED, &f));
    if (n) ZINC_TRY(zinc_aio_pwrite(f, data, n, 0));
    ZINC_TRY(zinc_aio_fsync(f));
    st = zinc_aio_close(f);
    f = NULL;
    if (st != ZINC_OK) goto cleanup;
    if (rename(tmp, dst) != 0) {
        st = zinc_error(ZINC_ERR_IO, "cannot rename %s to %s: %s", tmp, dst, strerror(errno));
        goto cleanup;
    }
    st = fsync_dir(dir);
cleanup:
    if (f) {
        zinc_aio_close(f);
        unlink(tmp);
    }
    return st;
}

/* Reads a whole small file (plain read; at most max bytes) into a malloc'd NUL-terminated
 * buffer; what names its role in errors. The file is opened with zinc_open_regular, so a
 * named pipe or a device file is refused before anything blocks. ZINC_ERR_IO names the file. */
static zinc_status read_small_file(const char *path, const char *what, size_t max, char **out, size_t *len)
{
    *out = NULL;
    int fd;
    long long size = 0;
    zinc_status st = zinc_open_regular(path, 0, what, &fd, &size);
    if (st != ZINC_OK) return st;
    if (size < 0 || (uint64_t)size > max) {
        close(fd);
        return zinc_error(ZINC_ERR_CORRUPT, "%s: %lld bytes, larger than the %zu allowed", path, size, max);
    }
    size_t n = (size_t)size, got = 0;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return zinc_error(ZINC_ERR_NOMEM, "%s: no memory for %zu bytes", path, n);
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = errno;
            free(buf);
            close(fd);
            return zinc_error(ZINC_ERR_IO, "%s: read failed: %s", path, r < 0 ? strerror(e) : "short read");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return ZINC_OK;
}

/* ---- tags, latest, index ---------------------------------------------------------------- */

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int tag_valid(const char *tag)
{
    size_t n = strlen(tag);
    if (n == 0 || n > ZINC_CKPT_TAG_MAX || tag[0] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        char c = tag[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    if (has_suffix(tag, ".partial") || has_suffix(tag, ".deleting") || has_suffix(tag, ".replaced") ||
        has_suffix(tag, ".tmp") || !strcmp(tag, "latest") || !strcmp(tag, "index"))
        return 0;
    return 1;
}

zinc_status zinc_ckpt_resolve_latest(const char *save_dir, char *tag, size_t cap)
{
    char p[CK_PATH], *buf = NULL;
    size_t n = 0;
    zinc_status st;
    if (!save_dir || !tag || cap == 0) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_ckpt_resolve_latest: NULL argument");
    ZINC_TRY(path_join(p, save_dir, "latest"));
    ZINC_TRY(read_small_file(p, "checkpoint latest", 4096, &buf, &n));
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == '\r')) buf[--n] = '\0';
    if (strlen(buf) != n || !tag_valid(buf)) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s does not hold a valid checkpoint tag", p);
        goto cleanup;
    }
    if (n + 1 > cap) {
        st = zinc_error(ZINC_ERR_INVALID_ARG, "%s: tag longer than the %zu bytes given", p, cap);
        goto cleanup;
    }
    memcpy(tag, buf, n + 1);
cleanup:
    free(buf);
    return st;
}

/* The directory holding checkpoint tag: save_dir/tag, or save_dir/tag.replaced when a save
 * replacing that tag was killed between its two renames. */
static zinc_status ckpt_dir_of(const char *save_dir, const char *tag, char *out)
{
    char p[CK_PATH], alt[CK_PATH], m[CK_PATH];
    zinc_status st;
    ZINC_TRY(path_join(p, save_dir, tag));
    ZINC_TRY(path_join(m, p, "manifest.json"));
    if (!path_exists(m)) {
        char name[300];
        snprintf(name, sizeof name, "%s.replaced", tag);
        ZINC_TRY(path_join(alt, save_dir, name));
        ZINC_TRY(path_join(m, alt, "manifest.json"));
        if (path_exists(m)) {
            memcpy(out, alt, CK_PATH);
            return ZINC_OK;
        }
    }
    memcpy(out, p, CK_PATH);
cleanup:
    return st;
}

/* Resolves dir (checkpoint or save_dir) to a checkpoint directory. */
static zinc_status resolve_dir(const char *dir, char *out)
{
    char m[CK_PATH], l[CK_PATH], tag[ZINC_CKPT_TAG_MAX + 1];
    zinc_status st;
    ZINC_TRY(path_join(m, dir, "manifest.json"));
    if (path_exists(m)) {
        snprintf(out, CK_PATH, "%s", dir);
        return ZINC_OK;
    }
    ZINC_TRY(path_join(l, dir, "latest"));
    if (!path_exists(l)) {
        struct stat sb;
        if (stat(dir, &sb) != 0)
            return zinc_error(ZINC_ERR_IO, "%s: %s", dir, strerror(errno));
        return zinc_error(ZINC_ERR_IO, "%s holds neither manifest.json nor latest: not a checkpoint or save directory", dir);
    }
    ZINC_TRY(zinc_ckpt_resolve_latest(dir, tag, sizeof tag));
    ZINC_TRY(ckpt_dir_of(dir, tag, out));
cleanup:
    return st;
}

/* Index lines (tags, oldest first); a missing index is empty. */
static zinc_status index_read(const char *save_dir, char ***tags, int *n)
{
    char p[CK_PATH], *buf = NULL;
    size_t len = 0;
    zinc_status st;
    *tags = NULL;
    *n = 0;
    ZINC_TRY(path_join(p, save_dir, "index"));
    if (!path_exists(p)) return ZINC_OK;
    ZINC_TRY(read_small_file(p, "checkpoint index", 16u << 20, &buf, &len));
    int cap = 0;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        if (!tag_valid(line)) continue; /* a torn or foreign line: skip, never delete by it */
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **t = realloc(*tags, (size_t)cap * sizeof *t);
            if (!t) {
                st = zinc_error(ZINC_ERR_NOMEM, "index of %s: out of memory", save_dir);
                goto cleanup;
            }
            *tags = t;
        }
        (*tags)[(*n)++] = strdup(line);
    }
cleanup:
    free(buf);
    return st;
}

static void tags_free(char **tags, int n)
{
    for (int i = 0; i < n; i++) free(tags[i]);
    free(tags);
}

static zinc_status index_write(zinc_aio *aio, const char *save_dir, char **tags, int n)
{
    sbuf s = {0};
    for (int i = 0; i < n; i++)
        if (tags[i]) sb_printf(&s, "%s\n", tags[i]);
    zinc_status st = s.oom ? zinc_error(ZINC_ERR_NOMEM, "index of %s: out of memory", save_dir)
                           : write_file_atomic(aio, save_dir, "index", s.p ? s.p : "", s.n);
    free(s.p);
    return st;
}

/* ---- error agreement -------------------------------------------------------------------- */


/* Collective: every rank returns the status of the lowest failing rank (with its detail),
 * or ZINC_OK if none failed. One all-reduce when all succeed. */
static zinc_status agree(zinc_comm *w, zinc_status st)
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

static int64_t tensor_numel(const zinc_ckpt_tensor *t)
{
    return zinc_ckpt_tensor_numel(t);
}

static int dtype_valid(zinc_dtype dt)
{
    return dt >= ZINC_DTYPE_F32 && dt <= ZINC_DTYPE_I64;
}

static int is_float16_or_32(zinc_dtype dt)
{
    return dt == ZINC_DTYPE_F32 || dt == ZINC_DTYPE_BF16 || dt == ZINC_DTYPE_F16;
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
    if (tensor_numel(t) < 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s tensor %s: its shape's size in bytes overflows 64 bits", what,
                          t->name);
    return ZINC_OK;
}

/* Checks a layout's tensors and pieces against themselves (not across ranks). */
static zinc_status check_layout(const zinc_ckpt_layout *L, const char *what)
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
        int64_t numel = tensor_numel(t);
        if (p->offset < 0 || p->n < 0 || p->offset > numel || p->n > numel - p->offset)
            return zinc_error(ZINC_ERR_INVALID_ARG, "%s piece %d: elements [%lld, %lld) outside tensor %s (%s) of %lld elements",
                              what, i, (long long)p->offset, (long long)(p->offset + p->n), t->name, t->kind,
                              (long long)numel);
        if (p->n > 0 && !p->data && !L->io)
            return zinc_error(ZINC_ERR_INVALID_ARG, "%s piece %d of tensor %s: data is NULL and the layout has no io",
                              what, i, t->name);
    }
cleanup:
    return st;
}

static const char *dtype_tag(zinc_dtype dt)
{
    return zinc_dtype_name(dt);
}

static int dtype_parse(const char *s, zinc_dtype *dt)
{
    for (int d = ZINC_DTYPE_F32; d <= ZINC_DTYPE_I64; d++)
        if (!strcmp(s, zinc_dtype_name((zinc_dtype)d))) {
            *dt = (zinc_dtype)d;
            return 0;
        }
    return -1;
}

/* ---- save: one rank's file -------------------------------------------------------------- */

typedef struct rank_chunk {
    int tensor; /* local tensor index */
    uint64_t off, bytes;
    int64_t eo, n;
    uint32_t *crcs;
    size_t n_crcs;
} rank_chunk;

/* A progress reporter: calls fn(done, total) when done has advanced by step bytes since the
 * last call, and always at 0 and at total. */
typedef struct ck_progress {
    zinc_ckpt_progress_fn fn;
    void *u;
    uint64_t done, total, step, next;
} ck_progress;

static zinc_ckpt_progress_fn g_progress_fn;
static void *g_progress_u;

void zinc_ckpt_set_progress(zinc_ckpt_progress_fn fn, void *u)
{
    g_progress_fn = fn;
    g_progress_u = u;
}

static void progress_start(ck_progress *p, zinc_ckpt_progress_fn fn, void *u, uint64_t total)
{
    uint64_t step = total / 100;
    if (step > CKPT_PROGRESS_STEP) step = CKPT_PROGRESS_STEP;
    *p = (ck_progress){fn, u, 0, total, step ? step : 1, step ? step : 1};
    if (fn) fn(0, total, u);
}

static void progress_add(ck_progress *p, uint64_t n)
{
    if (!p || !p->fn || n == 0) return;
    p->done += n;
    if (p->done > p->total) p->done = p->total;
    if (p->done >= p->next || p->done == p->total) {
        p->fn(p->done, p->total, p->u);
        p->next = p->done + p->step;
    }
}

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
    if (st == ZINC_OK) progress_add(w->prog, w->len[w->head]);
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

/* Records the failure st of io on piece pi (elements [first, first+n) of it), keeping
 * io's own detail first. */
static zinc_status io_failed(zinc_status st, const char *op, int pi, const zinc_ckpt_tensor *t, int64_t first,
                             int64_t n)
{
    char err[1024];
    last_error_copy(err, sizeof err);
    return zinc_error(st, "%s (checkpoint %s: io of piece %d, tensor %s (%s), elements [%lld, %lld) of the piece)", err,
                      op, pi, t->name, t->kind, (long long)first, (long long)(first + n));
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
            st = io_failed(st, "save", pi, t, first, n);
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
        c->off = off;
        c->bytes = (uint64_t)p->n * esz;
        c->n_crcs = (size_t)((c->bytes + CKPT_BLOCK - 1) / CKPT_BLOCK);
        c->crcs = malloc(c->n_crcs * sizeof *c->crcs);
        if (!c->crcs) return zinc_error(ZINC_ERR_NOMEM, "%s: no memory for the crc table", path);
        off = align_up(off + c->bytes, CKPT_ALIGN);
    }
    *n_ch = k;
    *file_bytes = off;
    progress_start(&prog, g_progress_fn, g_progress_u, off);
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
        last_error_copy(keep, sizeof keep);
        for (int q = 0; q < CKPT_READ_WINDOW; q++) wait_opt(&w.req[q]);
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
        json_array_append_new(ts, json_pack("[s s s o i]", t->name, t->kind, dtype_tag(t->dtype), shape, t->tp_dim));
    }
    for (int i = 0; i < n_ch; i++) {
        const rank_chunk *c = &ch[i];
        json_t *crcs = json_array();
        for (size_t b = 0; b < c->n_crcs; b++) json_array_append_new(crcs, json_integer(c->crcs[b]));
        json_array_append_new(cs, json_pack("[i I I I I o]", c->tensor, (json_int_t)c->off, (json_int_t)c->bytes,
                                            (json_int_t)c->eo, (json_int_t)c->n, crcs));
    }
    json_object_set_new(root, "tensors", ts);
    json_object_set_new(root, "chunks", cs);
    json_object_set_new(root, "file_bytes", json_integer((json_int_t)file_bytes));
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

/* ---- save: rank 0's merge and manifest -------------------------------------------------- */

typedef struct m_chunk {
    int rank;
    uint64_t off, bytes;
    int64_t eo, n;
    json_t *crcs; /* borrowed from the rank's parsed descriptor */
} m_chunk;

typedef struct m_tensor {
    zinc_ckpt_tensor t;
    m_chunk *c;
    int nc, capc;
} m_tensor;

typedef struct m_table {
    m_tensor *t;
    int n, cap;
} m_table;

static int mchunk_cmp(const void *a, const void *b)
{
    const m_chunk *x = a, *y = b;
    return x->eo < y->eo ? -1 : x->eo > y->eo ? 1 : x->rank - y->rank;
}

static int shape_eq(const zinc_ckpt_tensor *a, const zinc_ckpt_tensor *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

static void shape_str(const zinc_ckpt_tensor *t, char *buf, size_t cap)
{
    int k = snprintf(buf, cap, "(");
    for (int d = 0; d < t->ndim && k > 0 && (size_t)k < cap; d++)
        k += snprintf(buf + k, cap - (size_t)k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (k > 0 && (size_t)k < cap) snprintf(buf + k, cap - (size_t)k, ")");
}

/* Adds rank r's descriptor to the table; hint speeds up identical tables. */
static zinc_status merge_rank(m_table *mt, int r, json_t *desc, uint64_t *file_bytes)
{
    json_t *ts = json_object_get(desc, "tensors"), *cs = json_object_get(desc, "chunks");
    json_t *fb = json_object_get(desc, "file_bytes");
    if (!json_is_array(ts) || !json_is_array(cs) || !json_is_integer(fb))
        return zinc_error(ZINC_ERR_INTERNAL, "chunk table of rank %d is malformed", r);
    *file_bytes = (uint64_t)json_integer_value(fb);
    size_t nt = json_array_size(ts);
    int *map = malloc((nt ? nt : 1) * sizeof *map);
    if (!map) return zinc_error(ZINC_ERR_NOMEM, "merging chunk tables: out of memory");
    zinc_status st = ZINC_OK;
    for (size_t i = 0; i < nt; i++) {
        zinc_ckpt_tensor t;
        memset(&t, 0, sizeof t);
        const char *name, *kind, *dt;
        json_t *shape;
        int tp;
        if (json_unpack(json_array_get(ts, i), "[s s s o i]", &name, &kind, &dt, &shape, &tp) != 0 ||
            dtype_parse(dt, &t.dtype) != 0) {
            st = zinc_error(ZINC_ERR_INTERNAL, "chunk table of rank %d: bad tensor entry %zu", r, i);
            goto cleanup;
        }
        snprintf(t.name, sizeof t.name, "%s", name);
        snprintf(t.kind, sizeof t.kind, "%s", kind);
        t.ndim = (int)json_array_size(shape);
        for (int d = 0; d < t.ndim && d < ZINC_MAX_DIMS; d++) t.shape[d] = json_integer_value(json_array_get(shape, (size_t)d));
        t.tp_dim = tp;
        int g = -1;
        if ((int)i < mt->n && !strcmp(mt->t[i].t.name, t.name) && !strcmp(mt->t[i].t.kind, t.kind)) g = (int)i;
        for (int j = 0; g < 0 && j < mt->n; j++)
            if (!strcmp(mt->t[j].t.name, t.name) && !strcmp(mt->t[j].t.kind, t.kind)) g = j;
        if (g < 0) {
            if (mt->n == mt->cap) {
                int cap = mt->cap ? 2 * mt->cap : 64;
                m_tensor *nt2 = realloc(mt->t, (size_t)cap * sizeof *nt2);
                if (!nt2) {
                    st = zinc_error(ZINC_ERR_NOMEM, "merging chunk tables: out of memory");
                    goto cleanup;
                }
                mt->t = nt2;
                mt->cap = cap;
            }
            g = mt->n++;
            memset(&mt->t[g], 0, sizeof mt->t[g]);
            mt->t[g].t = t;
        } else {
            const zinc_ckpt_tensor *o = &mt->t[g].t;
            if (o->dtype != t.dtype || !shape_eq(o, &t) || o->tp_dim != t.tp_dim) {
                char s1[128], s2[128];
                shape_str(o, s1, sizeof s1);
                shape_str(&t, s2, sizeof s2);
                st = zinc_error(ZINC_ERR_INVALID_ARG,
                                "tensor %s (%s) differs between ranks: %s %s tp_dim %d vs rank %d's %s %s tp_dim %d",
                                t.name, t.kind, zinc_dtype_name(o->dtype), s1, o->tp_dim, r,
                                zinc_dtype_name(t.dtype), s2, t.tp_dim);
                goto cleanup;
            }
        }
        map[i] = g;
    }
    for (size_t i = 0; i < json_array_size(cs); i++) {
        int lt;
        json_int_t off, bytes, eo, n;
        json_t *crcs;
        if (json_unpack(json_array_get(cs, i), "[i I I I I o]", &lt, &off, &bytes, &eo, &n, &crcs) != 0 ||
            lt < 0 || (size_t)lt >= nt) {
            st = zinc_error(ZINC_ERR_INTERNAL, "chunk table of rank %d: bad chunk entry %zu", r, i);
            goto cleanup;
        }
        m_tensor *m = &mt->t[map[lt]];
        if (m->nc == m->capc) {
            int cap = m->capc ? 2 * m->capc : 4;
            m_chunk *nc = realloc(m->c, (size_t)cap * sizeof *nc);
            if (!nc) {
                st = zinc_error(ZINC_ERR_NOMEM, "merging chunk tables: out of memory");
                goto cleanup;
            }
            m->c = nc;
            m->capc = cap;
        }
        m->c[m->nc++] = (m_chunk){r, (uint64_t)off, (uint64_t)bytes, eo, n, crcs};
    }
cleanup:
    free(map);
    return st;
}

/* Every tensor covered exactly once by the chunks of all ranks. */
static zinc_status check_coverage(m_table *mt)
{
    for (int i = 0; i < mt->n; i++) {
        m_tensor *m = &mt->t[i];
        if (m->nc > 1) qsort(m->c, (size_t)m->nc, sizeof *m->c, mchunk_cmp);
        int64_t numel = tensor_numel(&m->t), next = 0;
        int prev_rank = -1;
        for (int j = 0; j < m->nc; j++) {
            const m_chunk *c = &m->c[j];
            if (c->eo > next)
                return zinc_error(ZINC_ERR_INVALID_ARG,
                                  "tensor %s (%s): elements [%lld, %lld) are saved by no rank",
                                  m->t.name, m->t.kind, (long long)next, (long long)c->eo);
            if (c->eo < next) {
                int64_t end = c->eo + c->n < next ? c->eo + c->n : next;
                return zinc_error(ZINC_ERR_INVALID_ARG,
                                  "tensor %s (%s): elements [%lld, %lld) are saved twice (rank %d and rank %d)",
                                  m->t.name, m->t.kind, (long long)c->eo, (long long)end, prev_rank, c->rank);
            }
            next = c->eo + c->n;
            prev_rank = c->rank;
        }
        if (next < numel)
            return zinc_error(ZINC_ERR_INVALID_ARG, "tensor %s (%s): elements [%lld, %lld) are saved by no rank",
                              m->t.name, m->t.kind, (long long)next, (long long)numel);
    }
    return ZINC_OK;
}

static char *manifest_text(const char *tag, const m_table *mt, const uint64_t *file_bytes, int n_files,
                           const char *meta, size_t *len)
{
    sbuf s = {0};
    sb_printf(&s, "{\n  \"format\": \"zinc-ckpt\",\n  \"version\": %d,\n  \"tag\": ", ZINC_CKPT_FORMAT_VERSION);
    sb_json_str(&s, tag);
    sb_printf(&s, ",\n  \"block_bytes\": %u,\n  \"align_bytes\": %u,\n  \"files\": [\n", CKPT_BLOCK, CKPT_ALIGN);
    for (int r = 0; r < n_files; r++)
        sb_printf(&s, "    {\"name\": \"rank-%05d.bin\", \"bytes\": %llu}%s\n", r,
                  (unsigned long long)file_bytes[r], r + 1 < n_files ? "," : "");
    sb_printf(&s, "  ],\n  \"tensors\": [\n");
    for (int i = 0; i < mt->n; i++) {
        const m_tensor *m = &mt->t[i];
        sb_printf(&s, "    {\"name\": ");
        sb_json_str(&s, m->t.name);
        sb_printf(&s, ", \"kind\": ");
        sb_json_str(&s, m->t.kind);
        sb_printf(&s, ", \"dtype\": \"%s\", \"shape\": [", dtype_tag(m->t.dtype));
        for (int d = 0; d < m->t.ndim; d++) sb_printf(&s, "%s%lld", d ? ", " : "", (long long)m->t.shape[d]);
        sb_printf(&s, "], \"tp_dim\": %d, \"chunks\": [\n", m->t.tp_dim);
        for (int j = 0; j < m->nc; j++) {
            const m_chunk *c = &m->c[j];
            sb_printf(&s, "      {\"file\": \"rank-%05d.bin\", \"offset\": %llu, \"bytes\": %llu, \"elements\": [%lld, %lld], \"crc32c\": [",
                      c->rank, (unsigned long long)c->off, (unsigned long long)c->bytes, (long long)c->eo,
                      (long long)(c->eo + c->n));
            for (size_t b = 0; b < json_array_size(c->crcs); b++)
                sb_printf(&s, "%s%lld", b ? ", " : "", (long long)json_integer_value(json_array_get(c->crcs, b)));
            sb_printf(&s, "]}%s\n", j + 1 < m->nc ? "," : "");
        }
        sb_printf(&s, "    ]}%s\n", i + 1 < mt->n ? "," : "");
    }
    sb_printf(&s, "  ],\n  \"meta\": ");
    sb_put(&s, meta, strlen(meta));
    sb_printf(&s, "\n}\n");
    if (s.oom) {
        free(s.p);
        return NULL;
    }
    *len = s.n;
    return s.p;
}

/* Paths of foreign directories already reported by this process (each is said once). */
static char g_foreign_told[4096];

/* A *.partial / *.deleting / *.replaced directory without zinc's marker: left alone, said
 * once per process. */
static void foreign_dir(const char *p)
{
    size_t have = strlen(g_foreign_told), n = strlen(p);
    for (const char *c = g_foreign_told; (c = strstr(c, p)) != NULL; c += n)
        if ((c == g_foreign_told || c[-1] == '\n') && c[n] == '\n') return;
    ZINC_WARN("checkpoint: leaving %s alone: its name looks like a stale save's, but zinc did not create it "
              "(it lacks zinc's marker file %s)", p, CK_MARKER);
    if (have + n + 2 <= sizeof g_foreign_told) {
        memcpy(g_foreign_told + have, p, n);
        g_foreign_told[have + n] = '\n';
        g_foreign_told[have + n + 1] = '\0';
    }
}

/* Removes zinc's stale directory p (why: what it is), logging it; warnings only. */
static void remove_stale(const char *p, const char *why)
{
    if (remove_flat_dir(p) != ZINC_OK) ZINC_WARN("checkpoint: %s", zinc_last_error());
    else ZINC_INFO("checkpoint: removed %s (%s)", p, why);
}

/* Rank 0 before any rank writes: save_dir exists, stale directories of killed saves (those
 * carrying zinc's marker) are gone, <tag>.partial is fresh, marked and otherwise empty, meta
 * parses. */
static zinc_status save_prepare(const char *save_dir, const char *tag, const char *meta)
{
    char p[CK_PATH], name[300];
    zinc_status st;
    json_error_t jerr;
    json_t *j = json_loads(meta, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!j)
        return zinc_error(ZINC_ERR_INVALID_ARG, "meta_json: line %d column %d: %s", jerr.line, jerr.column, jerr.text);
    json_decref(j);
    ZINC_TRY(mkdir_p(save_dir));
    DIR *d = opendir(save_dir);
    if (!d) return zinc_error(ZINC_ERR_IO, "%s: cannot open directory: %s", save_dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (n[0] == '.') continue;
        int partial = has_suffix(n, ".partial"), deleting = has_suffix(n, ".deleting");
        int replaced = has_suffix(n, ".replaced");
        if (!partial && !deleting && !replaced) continue;
        if (snprintf(p, sizeof p, "%s/%s", save_dir, n) >= (int)sizeof p) continue;
        struct stat sb;
        if (lstat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)) continue;
        if (!dir_is_ours(p)) {
            foreign_dir(p);
            continue;
        }
        if (replaced) {
            /* a replacing save was killed: restore the original if the new one never arrived */
            char orig[CK_PATH];
            snprintf(orig, sizeof orig, "%.*s", (int)(strlen(p) - strlen(".replaced")), p);
            if (!path_exists(orig) && rename(p, orig) == 0) {
                ZINC_INFO("checkpoint: restored %s from %s (a replacing save was killed)", orig, p);
                continue;
            }
        }
        remove_stale(p, partial ? "a killed save's partial checkpoint"
                        : deleting ? "a checkpoint a killed save was deleting"
                                   : "a checkpoint a killed save had replaced");
    }
    closedir(d);
    snprintf(name, sizeof name, "%s.partial", tag);
    ZINC_TRY(path_join(p, save_dir, name));
    if (mkdir(p, 0755) != 0) {
        if (errno == EEXIST)
            return zinc_error(ZINC_ERR_IO, "%s exists and zinc did not create it: move it away or save under "
                              "another tag", p);
        return zinc_error(ZINC_ERR_IO, "%s: cannot create directory: %s", p, strerror(errno));
    }
    st = dir_mark(p);
    if (st != ZINC_OK) remove_partial(p, st);
cleanup:
    return st;
}

/* Rank 0 after the manifest is durable: rename into place, index, latest, prune. */
static zinc_status save_commit(zinc_aio *aio, const char *save_dir, const char *tag, int keep_last)
{
    char part[CK_PATH], fin[CK_PATH], repl[CK_PATH], name[300];
    char **tags = NULL;
    int n = 0;
    zinc_status st;
    snprintf(name, sizeof name, "%s.partial", tag);
    ZINC_TRY(path_join(part, save_dir, name));
    snprintf(name, sizeof name, "%s.replaced", tag);
    ZINC_TRY(path_join(repl, save_dir, name));
    ZINC_TRY(path_join(fin, save_dir, tag));
    int replacing = path_exists(fin);
    /* a checkpoint written before markers existed is ours too (it is named by the tag) */
    if (replacing && !dir_is_ours(fin)) ZINC_TRY(dir_mark(fin));
    if (replacing && rename(fin, repl) != 0)
        return zinc_error(ZINC_ERR_IO, "cannot rename %s to %s: %s", fin, repl, strerror(errno));
    if (rename(part, fin) != 0) {
        st = zinc_error(ZINC_ERR_IO, "cannot rename %s to %s: %s", part, fin, strerror(errno));
        if (replacing) rename(repl, fin);
        return st;
    }
    ZINC_TRY(fsync_dir(save_dir));

    ZINC_TRY(index_read(save_dir, &tags, &n));
    for (int i = 0; i < n; i++)
        if (!strcmp(tags[i], tag)) {
            free(tags[i]);
            tags[i] = NULL;
        }
    char **t2 = realloc(tags, (size_t)(n + 1) * sizeof *t2);
    if (!t2) {
        st = zinc_error(ZINC_ERR_NOMEM, "index of %s: out of memory", save_dir);
        goto cleanup;
    }
    tags = t2;
    tags[n++] = strdup(tag);
    ZINC_TRY(index_write(aio, save_dir, tags, n));
    char line[ZINC_CKPT_TAG_MAX + 2];
    int ll = snprintf(line, sizeof line, "%s\n", tag);
    ZINC_TRY(write_file_atomic(aio, save_dir, "latest", line, (size_t)ll));

    /* committed; what follows only frees space, so failures are warnings */
    if (replacing && remove_flat_dir(repl) != ZINC_OK) ZINC_WARN("checkpoint: %s", zinc_last_error());
    if (keep_last > 0) {
        int live = 0;
        for (int i = n - 1; i >= 0; i--) {
            if (!tags[i]) continue;
            if (live < keep_last) {
                live++;
                continue;
            }
            char dir[CK_PATH], del[CK_PATH], dn[300];
            snprintf(dn, sizeof dn, "%s.deleting", tags[i]);
            if (path_join(dir, save_dir, tags[i]) != ZINC_OK || path_join(del, save_dir, dn) != ZINC_OK) continue;
            if (path_exists(dir) && !dir_is_ours(dir) && dir_mark(dir) != ZINC_OK) {
                ZINC_WARN("checkpoint: %s; not deleting it", zinc_last_error());
                continue;
            }
            if (path_exists(dir) && rename(dir, del) != 0) {
                ZINC_WARN("checkpoint: cannot rename %s for deletion: %s", dir, strerror(errno));
                continue;
            }
            if (remove_flat_dir(del) != ZINC_OK) ZINC_WARN("checkpoint: %s", zinc_last_error());
            free(tags[i]);
            tags[i] = NULL;
        }
        if (index_write(aio, save_dir, tags, n) != ZINC_OK) ZINC_WARN("checkpoint: %s", zinc_last_error());
    }
    st = ZINC_OK;
cleanup:
    tags_free(tags, n);
    return st;
}

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
    else if (!tag_valid(tag))
        st = zinc_error(ZINC_ERR_INVALID_ARG,
                        "checkpoint tag '%s' is invalid: use 1-%d of [A-Za-z0-9._-], not starting with '.'",
                        tag, ZINC_CKPT_TAG_MAX);
    else
        st = check_layout(mine, "save");
    if (st == ZINC_OK) {
        snprintf(name, sizeof name, "%s.partial", tag);
        st = path_join(part, save_dir, name);
    }
    if (st == ZINC_OK && rank == 0) st = save_prepare(save_dir, tag, meta);
    ZINC_TRY(agree(world, st));

    /* every rank writes its file */
    snprintf(name, sizeof name, "rank-%05d.bin", rank);
    st = path_join(path, part, name);
    if (st == ZINC_OK) {
        ch = calloc((size_t)mine->n_pieces + 1, sizeof *ch);
        st = ch ? write_rank_file(aio, path, mine, ch, &n_ch, &fbytes)
                : zinc_error(ZINC_ERR_NOMEM, "%s: no memory for the chunk table", path);
    }
    if (st == ZINC_OK) {
        desc = rank_desc_json(mine, ch, n_ch, fbytes);
        if (!desc) st = zinc_error(ZINC_ERR_NOMEM, "%s: no memory for the chunk table", path);
    }
    st = agree(world, st);
    if (st != ZINC_OK) {
        if (rank == 0) remove_partial(part, st);
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
                else st = merge_rank(&mt, r, descs[r], &file_bytes[r]);
            }
            if (r != 0) free(txt);
        }
        if (st == ZINC_OK) st = check_coverage(&mt);
        size_t mlen = 0;
        if (st == ZINC_OK) {
            man = manifest_text(tag, &mt, file_bytes, size, meta, &mlen);
            if (!man) st = zinc_error(ZINC_ERR_NOMEM, "checkpoint manifest: out of memory");
        }
        if (st == ZINC_OK) st = write_file_atomic(aio, part, "manifest.json", man, mlen);
        if (st == ZINC_OK) st = save_commit(aio, save_dir, tag, keep_last);
        if (st != ZINC_OK) remove_partial(part, st);
    }
    st = agree(world, st);

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

/* ---- manifest parsing -------------------------------------------------------------------- */

void ckpt_manifest_free(ckpt_manifest *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_tensors; i++) {
        for (int j = 0; j < m->tensors[i].n_chunks; j++) free(m->tensors[i].chunks[j].crcs);
        free(m->tensors[i].chunks);
    }
    free(m->tensors);
    free(m->files);
    free(m->meta);
    memset(m, 0, sizeof *m);
}

static int get_i64(json_t *o, const char *key, int64_t *v)
{
    json_t *x = json_object_get(o, key);
    if (!json_is_integer(x)) return -1;
    *v = (int64_t)json_integer_value(x);
    return 0;
}

static int chunk_cmp(const void *a, const void *b)
{
    const ckpt_chunk *x = a, *y = b;
    return x->eo < y->eo ? -1 : x->eo > y->eo;
}

/* The meta text exactly as written: meta is the manifest's last member, after a fixed
 * line that nothing earlier can contain (earlier strings cannot hold a raw newline). */
static char *meta_verbatim(const char *text, size_t len, json_t *meta)
{
    static const char key[] = "\n  \"meta\": ", tail[] = "\n}\n";
    const char *k = strstr(text, key);
    if (k && len >= strlen(tail) && !memcmp(text + len - strlen(tail), tail, strlen(tail))) {
        const char *b = k + strlen(key), *e = text + len - strlen(tail);
        if (b <= e) {
            json_t *j = json_loadb(b, (size_t)(e - b), JSON_DECODE_ANY, NULL);
            int same = j && json_equal(j, meta);
            json_decref(j);
            if (same) return strndup(b, (size_t)(e - b));
        }
    }
    return json_dumps(meta, JSON_COMPACT | JSON_ENCODE_ANY); /* reformatted by hand: same value */
}

zinc_status ckpt_manifest_parse(const char *dir, const char *text, size_t len, ckpt_manifest *m)
{
    zinc_status st = ZINC_OK;
    char mp[CK_PATH + 32];
    json_error_t jerr;
    memset(m, 0, sizeof *m);
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    snprintf(mp, sizeof mp, "%s/manifest.json", dir);
    /* jansson reads past a NUL byte between tokens, but meta_verbatim's copy would stop
     * at it (a truncated meta); no manifest zinc writes holds one (found by fuzz_manifest) */
    const char *nul = memchr(text, '\0', len);
    if (nul)
        return zinc_error(ZINC_ERR_CORRUPT, "%s: holds a NUL byte at offset %zu; not a manifest zinc wrote", mp,
                          (size_t)(nul - text));
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return zinc_error(ZINC_ERR_CORRUPT, "%s: line %d column %d: %s", mp, jerr.line, jerr.column, jerr.text);
    json_t *fmt = json_object_get(root, "format"), *tag = json_object_get(root, "tag");
    json_t *files = json_object_get(root, "files"), *tensors = json_object_get(root, "tensors");
    json_t *meta = json_object_get(root, "meta");
    int64_t ver, block, align;
    if (!json_is_object(root) || !json_is_string(fmt) || strcmp(json_string_value(fmt), "zinc-ckpt") != 0 ||
        get_i64(root, "version", &ver) != 0) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: not a zinc checkpoint manifest", mp);
        goto cleanup;
    }
    if (ver > ZINC_CKPT_FORMAT_VERSION) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "%s: format version %lld is newer than this zinc (%d)", mp,
                        (long long)ver, ZINC_CKPT_FORMAT_VERSION);
        goto cleanup;
    }
    if (ver != ZINC_CKPT_FORMAT_VERSION) { /* no other version was ever written */
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: format version %lld is not one zinc knows (%d)", mp, (long long)ver,
                        ZINC_CKPT_FORMAT_VERSION);
        goto cleanup;
    }
    if (!json_is_string(tag) || !json_is_array(files) || !json_is_array(tensors) || !meta ||
        get_i64(root, "block_bytes", &block) != 0 || block != CKPT_BLOCK ||
        get_i64(root, "align_bytes", &align) != 0) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: missing or invalid tag, files, tensors, meta or block_bytes", mp);
        goto cleanup;
    }
    snprintf(m->tag, sizeof m->tag, "%s", json_string_value(tag));
    m->n_files = (int)json_array_size(files);
    m->files = calloc((size_t)m->n_files + 1, sizeof *m->files);
    m->n_tensors = (int)json_array_size(tensors);
    m->tensors = calloc((size_t)m->n_tensors + 1, sizeof *m->tensors);
    m->meta = meta_verbatim(text, len, meta);
    if (!m->files || !m->tensors || !m->meta) {
        st = zinc_error(ZINC_ERR_NOMEM, "%s: out of memory", mp);
        goto cleanup;
    }
    for (int i = 0; i < m->n_files; i++) {
        json_t *f = json_array_get(files, (size_t)i), *nm = json_object_get(f, "name");
        int64_t b;
        if (!json_is_string(nm) || get_i64(f, "bytes", &b) != 0 || b < 0 ||
            strlen(json_string_value(nm)) >= sizeof m->files[i].name || strchr(json_string_value(nm), '/')) {
            st = zinc_error(ZINC_ERR_CORRUPT, "%s: files[%d] is invalid", mp, i);
            goto cleanup;
        }
        snprintf(m->files[i].name, sizeof m->files[i].name, "%s", json_string_value(nm));
        m->files[i].bytes = (uint64_t)b;
    }
    for (int i = 0; i < m->n_tensors; i++) {
        json_t *t = json_array_get(tensors, (size_t)i);
        ckpt_mtensor *mt = &m->tensors[i];
        json_t *nm = json_object_get(t, "name"), *kd = json_object_get(t, "kind"), *dt = json_object_get(t, "dtype");
        json_t *shape = json_object_get(t, "shape"), *chunks = json_object_get(t, "chunks");
        int64_t tp;
        if (!json_is_string(nm) || !json_is_string(kd) || !json_is_string(dt) || !json_is_array(shape) ||
            !json_is_array(chunks) || get_i64(t, "tp_dim", &tp) != 0 ||
            strlen(json_string_value(nm)) >= sizeof mt->t.name || strlen(json_string_value(kd)) >= sizeof mt->t.kind ||
            dtype_parse(json_string_value(dt), &mt->t.dtype) != 0 || json_array_size(shape) > ZINC_MAX_DIMS) {
            st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensors[%d]%s%s is invalid", mp, i,
                            json_is_string(nm) ? " " : "", json_is_string(nm) ? json_string_value(nm) : "");
            goto cleanup;
        }
        snprintf(mt->t.name, sizeof mt->t.name, "%s", json_string_value(nm));
        snprintf(mt->t.kind, sizeof mt->t.kind, "%s", json_string_value(kd));
        mt->t.tp_dim = (int)tp;
        mt->t.ndim = (int)json_array_size(shape);
        for (int d = 0; d < mt->t.ndim; d++) {
            json_t *x = json_array_get(shape, (size_t)d);
            if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > ((json_int_t)1 << 48)) {
                st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s): invalid shape: dimension %d is not an integer in 0..2^48",
                                mp, mt->t.name, mt->t.kind, d);
                goto cleanup;
            }
            mt->t.shape[d] = json_integer_value(x);
        }
        mt->numel = tensor_numel(&mt->t);
        if (mt->numel < 0) {
            char sh[128];
            shape_str(&mt->t, sh, sizeof sh);
            st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s): shape %s of %s overflows 64 bits in elements or bytes",
                            mp, mt->t.name, mt->t.kind, sh, zinc_dtype_name(mt->t.dtype));
            goto cleanup;
        }
        mt->n_chunks = (int)json_array_size(chunks);
        mt->chunks = calloc((size_t)mt->n_chunks + 1, sizeof *mt->chunks);
        if (!mt->chunks) {
            st = zinc_error(ZINC_ERR_NOMEM, "%s: out of memory", mp);
            goto cleanup;
        }
        size_t esz = zinc_dtype_size(mt->t.dtype);
        for (int j = 0; j < mt->n_chunks; j++) {
            json_t *c = json_array_get(chunks, (size_t)j), *fn = json_object_get(c, "file");
            json_t *el = json_object_get(c, "elements"), *crcs = json_object_get(c, "crc32c");
            ckpt_chunk *ck = &mt->chunks[j];
            int64_t off, bytes;
            ck->file = -1;
            if (json_is_string(fn))
                for (int f = 0; f < m->n_files; f++)
                    if (!strcmp(m->files[f].name, json_string_value(fn))) ck->file = f;
            if (ck->file < 0 || get_i64(c, "offset", &off) != 0 || get_i64(c, "bytes", &bytes) != 0 || off < 0 ||
                bytes < 0 || !json_is_array(el) || json_array_size(el) != 2 ||
                !json_is_integer(json_array_get(el, 0)) || !json_is_integer(json_array_get(el, 1)) ||
                !json_is_array(crcs)) {
                st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s): chunk %d is invalid", mp, mt->t.name, mt->t.kind, j);
                goto cleanup;
            }
            ck->off = (uint64_t)off;
            ck->bytes = (uint64_t)bytes;
            ck->eo = json_integer_value(json_array_get(el, 0));
            if (__builtin_sub_overflow((int64_t)json_integer_value(json_array_get(el, 1)), ck->eo, &ck->n)) ck->n = -1;
            ck->n_crcs = json_array_size(crcs);
            /* n <= numel, whose byte size fits in int64: n * esz cannot overflow below */
            if (ck->eo < 0 || ck->n <= 0 || ck->eo > mt->numel || ck->n > mt->numel - ck->eo ||
                ck->bytes != (uint64_t)ck->n * esz || ck->n_crcs != (ck->bytes + CKPT_BLOCK - 1) / CKPT_BLOCK ||
                ck->off > m->files[ck->file].bytes || ck->bytes > m->files[ck->file].bytes - ck->off) {
                st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s): chunk %d (elements [%lld, %lld) in %s) is inconsistent",
                                mp, mt->t.name, mt->t.kind, j, (long long)ck->eo, (long long)(ck->eo + ck->n),
                                m->files[ck->file].name);
                goto cleanup;
            }
            ck->crcs = malloc(ck->n_crcs * sizeof *ck->crcs + 1);
            if (!ck->crcs) {
                st = zinc_error(ZINC_ERR_NOMEM, "%s: out of memory", mp);
                goto cleanup;
            }
            for (size_t b = 0; b < ck->n_crcs; b++) {
                json_t *x = json_array_get(crcs, b);
                if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > 0xffffffffLL) {
                    st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s): chunk %d has an invalid crc", mp, mt->t.name,
                                    mt->t.kind, j);
                    goto cleanup;
                }
                ck->crcs[b] = (uint32_t)json_integer_value(x);
            }
            m->n_chunks++;
        }
        qsort(mt->chunks, (size_t)mt->n_chunks, sizeof *mt->chunks, chunk_cmp);
        /* every chunk continues where the one before ends: a chunk past the end, or one
         * repeating a range already covered, is as wrong as a hole (found by fuzz_manifest) */
        int64_t next = 0;
        int used = 0;
        for (; used < mt->n_chunks && mt->chunks[used].eo == next; used++) next += mt->chunks[used].n;
        if (next != mt->numel || used != mt->n_chunks) {
            st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s): chunks do not cover its %lld elements exactly", mp,
                            mt->t.name, mt->t.kind, (long long)mt->numel);
            goto cleanup;
        }
        for (int k = 0; k < i; k++)
            if (!strcmp(m->tensors[k].t.name, mt->t.name) && !strcmp(m->tensors[k].t.kind, mt->t.kind)) {
                st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s) listed twice", mp, mt->t.name, mt->t.kind);
                goto cleanup;
            }
    }
cleanup:
    json_decref(root);
    if (st != ZINC_OK) ckpt_manifest_free(m);
    return st;
}

/* ---- reader ------------------------------------------------------------------------------ */

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
    zinc_status st = path_join(p, ckdir, "manifest.json");
    if (st != ZINC_OK) return st;
    st = read_small_file(p, "checkpoint manifest", (size_t)1 << 30, text, len);
    if (st == ZINC_ERR_IO && !path_exists(ckdir))
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
    ZINC_TRY(resolve_dir(dir, ck));
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
    zinc_status st = path_join(p, r->m.dir, r->m.files[fi].name);
    if (st != ZINC_OK) return st;
    if (t)
        snprintf(who, sizeof who, " (tensor %s (%s) needs bytes [%llu, %llu))", t->t.name, t->t.kind,
                 (unsigned long long)c->off, (unsigned long long)(c->off + c->bytes));
    if (!path_exists(p))
        return zinc_error(ZINC_ERR_IO, "%s is missing%s", p, who);
    /* the type check first: zinc_aio_open would block on a named pipe */
    int fd;
    st = zinc_open_regular(p, 0, "checkpoint rank file", &fd, NULL);
    if (st != ZINC_OK) {
        last_error_copy(err, sizeof err);
        return zinc_error(st, "%s%s", err, who);
    }
    close(fd);
    st = zinc_aio_open(r->aio, p, ZINC_AIO_READ, &r->fh[fi]);
    if (st == ZINC_OK) st = zinc_aio_size(r->fh[fi], &r->fsize[fi]);
    if (st != ZINC_OK) {
        last_error_copy(err, sizeof err);
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

/* One transfer: blocks [blk0, blk0+nblk) of chunk c of tensor t; elements [e_lo, e_hi)
 * of it go to dst as dtype ddt (element e at dst + (e - de0) * size of ddt), or, with
 * io.fn set, to io.fn as elements [e - de0, ...) of piece io.piece; neither: verify only.
 * A direct segment is read straight into dst and checked there: its elements are all of
 * the segment, the dtype is the stored one, and dst is aligned like the file offset, so
 * the aio engine can go O_DIRECT. */
typedef struct ck_seg {
    const ckpt_mtensor *t;
    const ckpt_chunk *c;
    uint64_t blk0, nblk;
    int64_t e_lo, e_hi;
    uint8_t *dst;
    zinc_dtype ddt;
    int64_t de0;
    int direct;
    ck_io io;
} ck_seg;

/* A growing list of segments. */
typedef struct ck_segs {
    ck_seg *s;
    size_t n, cap;
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

/* Where element e of segment s's chunk goes. */
static uint8_t *seg_dst(const ck_seg *s, int64_t e)
{
    return s->dst + (size_t)(e - s->de0) * zinc_dtype_size(s->ddt);
}

static zinc_status seg_submit(zinc_ckpt_reader *r, const ck_seg *s, uint8_t *buf, zinc_aio_req **req)
{
    uint64_t foff;
    size_t len;
    zinc_status st = reader_file(r, s->c->file, s->t, s->c);
    if (st != ZINC_OK) return st;
    seg_range(s, &foff, &len);
    if (s->direct) return zinc_aio_pread_async(r->fh[s->c->file], seg_dst(s, s->e_lo), len, foff, req);
    size_t rl = len;
    /* read whole 4 KiB pages when the file has them: O_DIRECT friendly */
    if (foff % CKPT_ALIGN == 0 && foff + align_up(len, CKPT_ALIGN) <= r->fsize[s->c->file])
        rl = (size_t)align_up(len, CKPT_ALIGN);
    return zinc_aio_pread_async(r->fh[s->c->file], buf, rl, foff, req);
}

/* Hands elements [lo, lo+n) of s's tensor, n of them in buf as s->ddt, to s's io. */
static zinc_status seg_io(const ck_seg *s, void *buf, int64_t lo, int64_t n)
{
    zinc_status st = s->io.fn(s->io.u, s->io.piece, 1, buf, lo - s->de0, n);
    return st == ZINC_OK ? st : io_failed(st, "load", s->io.piece, s->io.want, lo - s->de0, n);
}

/* Checks the crc of every block of s (read into buf, or into dst if direct) and converts
 * the wanted elements of each block into dst right after its check, while it is in cache.
 * A segment for io goes out in one call after all its blocks are checked when no
 * conversion is needed; otherwise each block is converted into r->conv right after its
 * check, and r->conv goes out whenever the next block would not fit, and at the end. */
static zinc_status seg_finish(zinc_ckpt_reader *r, const ck_seg *s, const uint8_t *buf)
{
    const ckpt_chunk *c = s->c;
    size_t esz = zinc_dtype_size(s->t->t.dtype), dsz = zinc_dtype_size(s->ddt);
    int64_t conv_lo = s->e_lo, conv_n = 0; /* converted elements waiting in r->conv */
    if (s->direct) buf = seg_dst(s, s->e_lo);
    for (uint64_t k = 0; k < s->nblk; k++) {
        uint64_t blk = s->blk0 + k, b0 = blk * CKPT_BLOCK;
        size_t bl = (size_t)(c->bytes - b0 < CKPT_BLOCK ? c->bytes - b0 : CKPT_BLOCK);
        uint32_t crc = zinc_crc32c(0, buf + k * CKPT_BLOCK, bl);
        if (crc != c->crcs[blk])
            return zinc_error(ZINC_ERR_CORRUPT,
                              "%s/%s: crc32c mismatch in tensor %s (%s) at byte offset %llu (block %llu of the chunk of elements [%lld, %lld)): the checkpoint is corrupt",
                              r->m.dir, r->m.files[c->file].name, s->t->t.name, s->t->t.kind,
                              (unsigned long long)(c->off + b0), (unsigned long long)blk, (long long)c->eo,
                              (long long)(c->eo + c->n));
        if (s->io.fn ? s->ddt == s->t->t.dtype : !s->dst || s->direct) continue;
        /* elements of this block (an element may straddle blocks only if esz does not
         * divide the block size, which no dtype allows) */
        int64_t be0 = c->eo + (int64_t)(b0 / esz), be1 = c->eo + (int64_t)((b0 + bl) / esz);
        int64_t lo = s->e_lo > be0 ? s->e_lo : be0, hi = s->e_hi < be1 ? s->e_hi : be1;
        if (lo >= hi) continue;
        const uint8_t *src = buf + k * CKPT_BLOCK + (size_t)(lo - be0) * esz;
        if (!s->io.fn) {
            convert(src, s->t->t.dtype, seg_dst(s, lo), s->ddt, (size_t)(hi - lo));
            continue;
        }
        if ((size_t)(conv_n + hi - lo) * dsz > CKPT_SEG) { /* a block converts to <= 2 MiB */
            zinc_status st = seg_io(s, r->conv, conv_lo, conv_n);
            if (st != ZINC_OK) return st;
            conv_lo += conv_n;
            conv_n = 0;
        }
        convert(src, s->t->t.dtype, r->conv + (size_t)conv_n * dsz, s->ddt, (size_t)(hi - lo));
        conv_n += hi - lo;
    }
    if (!s->io.fn || s->e_lo >= s->e_hi) return ZINC_OK;
    if (s->ddt != s->t->t.dtype) return conv_n ? seg_io(s, r->conv, conv_lo, conv_n) : ZINC_OK;
    int64_t s_e0 = c->eo + (int64_t)(s->blk0 * CKPT_BLOCK / esz);
    return seg_io(s, (void *)(buf + (size_t)(s->e_lo - s_e0) * esz), s->e_lo, s->e_hi - s->e_lo);
}

/* Runs segments in order, checking each as it completes: up to CKPT_READ_WINDOW transfers
 * in flight, of which at most CKPT_INFLIGHT staged (each owning one of the reader's
 * CKPT_SEG buffers; direct segments need none). prog (may be NULL) advances by each
 * segment's bytes. */
static zinc_status run_segs(zinc_ckpt_reader *r, const ck_seg *segs, size_t n, ck_progress *prog)
{
    zinc_status st = ZINC_OK;
    zinc_aio_req *req[CKPT_READ_WINDOW] = {NULL};
    uint8_t *bufs[CKPT_READ_WINDOW] = {NULL}; /* staging buffer of each in-flight slot */
    uint8_t *pool[CKPT_INFLIGHT];
    int n_pool = 0;
    size_t head = 0, count = 0, next = 0;
    if (n == 0) return ZINC_OK;
    for (size_t i = 0; i < n && !r->conv; i++)
        if (segs[i].io.fn && segs[i].ddt != segs[i].t->t.dtype && !(r->conv = zinc_aio_buf_alloc(CKPT_SEG)))
            return zinc_error(ZINC_ERR_NOMEM, "checkpoint reader: no memory for the conversion buffer");
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
            st = seg_submit(r, &segs[next], bufs[k], &req[k]);
            if (st != ZINC_OK) {
                if (bufs[k]) pool[n_pool++] = bufs[k];
                goto cleanup;
            }
            next++;
            count++;
        }
        const ck_seg *s = &segs[next - count];
        st = wait_opt(&req[head]);
        if (st != ZINC_OK) {
            char err[1024];
            last_error_copy(err, sizeof err);
            st = zinc_error(st, "%s (tensor %s (%s))", err, s->t->t.name, s->t->t.kind);
            goto cleanup;
        }
        ZINC_TRY(seg_finish(r, s, bufs[head]));
        if (bufs[head]) pool[n_pool++] = bufs[head];
        head = (head + 1) % CKPT_READ_WINDOW;
        count--;
        if (prog) {
            uint64_t foff;
            size_t len;
            seg_range(s, &foff, &len);
            progress_add(prog, len);
        }
    }
cleanup:
    if (st != ZINC_OK) {
        char keep[1024];
        last_error_copy(keep, sizeof keep);
        for (size_t k = 0; k < CKPT_READ_WINDOW; k++) wait_opt(&req[k]);
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

/* Appends the segments reading elements [lo, hi) of chunk c into dst (element e at
 * dst + (e - de0) * size of ddt) or, when io is not NULL, to io; all of it, unconverted,
 * when dst and io are NULL (verify). */
static zinc_status add_segs(ck_segs *l, const ckpt_mtensor *t, const ckpt_chunk *c, int64_t lo, int64_t hi,
                            void *dst, zinc_dtype ddt, int64_t de0, const ck_io *io)
{
    int verify = !dst && !io;
    size_t esz = zinc_dtype_size(t->t.dtype);
    uint64_t blo = 0, bhi = c->bytes;
    if (!verify) {
        blo = (uint64_t)(lo - c->eo) * esz;
        bhi = (uint64_t)(hi - c->eo) * esz;
    }
    uint64_t k0 = blo / CKPT_BLOCK, k1 = (bhi + CKPT_BLOCK - 1) / CKPT_BLOCK;
    const uint64_t per = CKPT_SEG / CKPT_BLOCK;
    for (uint64_t k = k0; k < k1; k += per) {
        if (l->n == l->cap) {
            size_t nc = l->cap ? 2 * l->cap : 16;
            ck_seg *s = realloc(l->s, nc * sizeof *s);
            if (!s) return zinc_error(ZINC_ERR_NOMEM, "checkpoint reader: out of memory");
            l->s = s;
            l->cap = nc;
        }
        ck_seg *s = &l->s[l->n++];
        memset(s, 0, sizeof *s);
        s->t = t;
        s->c = c;
        s->blk0 = k;
        s->nblk = k1 - k < per ? k1 - k : per;
        if (verify) continue;
        int64_t s_e0 = c->eo + (int64_t)(k * CKPT_BLOCK / esz);
        uint64_t b1 = (k + s->nblk) * CKPT_BLOCK < c->bytes ? (k + s->nblk) * CKPT_BLOCK : c->bytes;
        int64_t s_e1 = c->eo + (int64_t)(b1 / esz);
        s->e_lo = lo > s_e0 ? lo : s_e0;
        s->e_hi = hi < s_e1 ? hi : s_e1;
        s->dst = dst;
        s->ddt = ddt;
        s->de0 = de0;
        if (io) {
            s->io = *io;
            continue;
        }
        s->direct = ddt == t->t.dtype && s->e_lo == s_e0 && s->e_hi == s_e1 &&
                    ((uintptr_t)seg_dst(s, s_e0) - (c->off + k * CKPT_BLOCK)) % CKPT_ALIGN == 0;
    }
    return ZINC_OK;
}

/* Appends the segments reading elements [off, off+n) of manifest tensor ti into dst as
 * dtype, or to io when dst is NULL. */
static zinc_status add_read_segs(zinc_ckpt_reader *r, ck_segs *l, int ti, int64_t off, int64_t n, zinc_dtype dtype,
                                 void *dst, const ck_io *io)
{
    const ckpt_mtensor *t = &r->m.tensors[ti];
    zinc_status st = ZINC_OK;
    if (off < 0 || n < 0 || off > t->numel || n > t->numel - off)
        return zinc_error(ZINC_ERR_INVALID_ARG, "tensor %s (%s): elements [%lld, %lld) outside its %lld", t->t.name,
                          t->t.kind, (long long)off, (long long)(off + n), (long long)t->numel);
    if (t->t.dtype != dtype && !(is_float16_or_32(t->t.dtype) && is_float16_or_32(dtype)))
        return zinc_error(ZINC_ERR_UNSUPPORTED, "tensor %s (%s): cannot convert stored %s to %s", t->t.name, t->t.kind,
                          zinc_dtype_name(t->t.dtype), zinc_dtype_name(dtype));
    for (int j = 0; j < t->n_chunks && st == ZINC_OK; j++) {
        const ckpt_chunk *c = &t->chunks[j];
        int64_t lo = off > c->eo ? off : c->eo, hi = off + n < c->eo + c->n ? off + n : c->eo + c->n;
        if (lo < hi) st = add_segs(l, t, c, lo, hi, dst, dtype, off, dst ? NULL : io);
    }
    return st;
}

/* Reads elements [off, off+n) of manifest tensor ti into dst as dtype. */
static zinc_status reader_read(zinc_ckpt_reader *r, int ti, int64_t off, int64_t n, zinc_dtype dtype, void *dst)
{
    ck_segs l = {0};
    zinc_status st = add_read_segs(r, &l, ti, off, n, dtype, dst, NULL);
    if (st == ZINC_OK) st = run_segs(r, l.s, l.n, NULL);
    free(l.s);
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
            ZINC_TRY(path_join(p, r->m.dir, r->m.files[f].name));
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
        ZINC_TRY(add_segs(&l, fc[i].t, fc[i].c, 0, 0, NULL, fc[i].t->t.dtype, 0, NULL));
    }
    progress_start(&prog, progress, u, segs_bytes(&l));
    st = run_segs(r, l.s, l.n, &prog);
cleanup:
    free(fc);
    free(l.s);
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
    else if (tag && !tag_valid(tag)) st = zinc_error(ZINC_ERR_INVALID_ARG, "checkpoint tag '%s' is invalid", tag);
    else st = check_layout(want, "load");
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
    ZINC_TRY(agree(world, st));
    ZINC_TRY(zinc_comm_broadcast(world, ckdir, CK_PATH, ZINC_DTYPE_U8, 0, NULL));
    ZINC_TRY(zinc_comm_broadcast(world, &len, 1, ZINC_DTYPE_I64, 0, NULL));
    if (rank != 0) {
        text = malloc((size_t)len + 1);
        if (!text) st = zinc_error(ZINC_ERR_NOMEM, "checkpoint load: no memory for the manifest");
    }
    ZINC_TRY(agree(world, st));
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
        } else if (!shape_eq(&r->m.tensors[g].t, w)) {
            char s1[128], s2[128];
            shape_str(&r->m.tensors[g].t, s1, sizeof s1);
            shape_str(w, s2, sizeof s2);
            st = zinc_error(ZINC_ERR_CORRUPT, "%s/manifest.json: tensor %s (%s) has shape %s in the checkpoint, %s wanted",
                            ckdir, w->name, w->kind, s1, s2);
        }
    }
    /* all pieces through one pipeline: no drain between small pieces */
    for (int i = 0; st == ZINC_OK && i < want->n_pieces; i++) {
        const zinc_ckpt_piece *p = &want->pieces[i];
        if (p->n == 0) continue;
        ck_io io = {want->io, want->io_u, i, &want->tensors[p->tensor]};
        st = add_read_segs(r, &segs, map[p->tensor], p->offset, p->n, want->tensors[p->tensor].dtype, p->data, &io);
    }
    if (st == ZINC_OK) {
        ck_progress prog;
        progress_start(&prog, g_progress_fn, g_progress_u, segs_bytes(&segs));
        st = run_segs(r, segs.s, segs.n, &prog);
    }
    if (st == ZINC_OK && meta_json_out) {
        *meta_json_out = strdup(r->m.meta);
        if (!*meta_json_out) st = zinc_error(ZINC_ERR_NOMEM, "checkpoint load: out of memory");
    }
    st = agree(world, st);
    if (st != ZINC_OK && meta_json_out) {
        free(*meta_json_out);
        *meta_json_out = NULL;
    }
cleanup:
    free(segs.s);
    zinc_ckpt_reader_close(r);
    free(map);
    free(text);
    free(ckdir);
    return st;
}
