/* safetensors.c - writer and strict reader of the safetensors format.
 *
 * Writer: the header is built with jansson (insertion order = tensor order), padded with
 * spaces to a multiple of 8 bytes, then each tensor's bytes are pulled from the caller's
 * source in pieces of at most 16 MiB and appended with write(); path.tmp is fsynced and
 * renamed over path at the end, so a crash never leaves a half file under the real name.
 *
 * Reader: opens the file with zinc_open_regular (a named pipe is refused, never waited on),
 * reads the header only, validates every entry (dtype, shape with checked products, offsets
 * within the data, byte size matching the shape) and the data section as a whole (sorted by
 * begin, the tensors tile it: no overlap, no hole, nothing after the last), and keeps the
 * entries; tensor data is read with pread on demand.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zinc/file.h"
#include "zinc/safetensors.h"

#define ST_MAX_HEADER (100u << 20) /* the reference implementation's limit */
#define ST_PIECE (16u << 20)

static const struct {
    const char *name;
    zinc_dtype dt;
} st_dtypes[] = {
    {"F32", ZINC_DTYPE_F32}, {"BF16", ZINC_DTYPE_BF16}, {"F16", ZINC_DTYPE_F16}, {"F64", ZINC_DTYPE_F64},
    {"I32", ZINC_DTYPE_I32}, {"I64", ZINC_DTYPE_I64},   {"U8", ZINC_DTYPE_U8},
};

const char *zinc_st_dtype_name(zinc_dtype dt)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (st_dtypes[i].dt == dt) return st_dtypes[i].name;
    return NULL;
}

static int st_dtype_parse(const char *s, zinc_dtype *dt)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (!strcmp(st_dtypes[i].name, s)) {
            *dt = st_dtypes[i].dt;
            return 0;
        }
    return -1;
}

/* Elements and bytes of e's shape at its dtype; -1 when ndim is out of range, a dimension
 * is negative or either product does not fit in int64 (checked: a [2^32, 2^32] tensor must
 * not wrap to 0 bytes). */
static int entry_size(const zinc_st_entry *e, uint64_t *numel, uint64_t *bytes)
{
    int64_t n = 1, b;
    if (e->ndim < 0 || e->ndim > ZINC_MAX_DIMS) return -1;
    for (int d = 0; d < e->ndim; d++)
        if (e->shape[d] < 0 || __builtin_mul_overflow(n, e->shape[d], &n)) return -1;
    size_t esz = zinc_dtype_size(e->dtype);
    if (esz == 0 || __builtin_mul_overflow(n, (int64_t)esz, &b)) return -1;
    if (numel) *numel = (uint64_t)n;
    if (bytes) *bytes = (uint64_t)b;
    return 0;
}

/* ---- writer ------------------------------------------------------------------------------ */

static zinc_status write_all(int fd, const char *path, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return zinc_error(ZINC_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    return ZINC_OK;
}

zinc_status zinc_st_write(const char *path, const zinc_st_entry *t, size_t n, zinc_st_source src, void *u,
                          const char *const *meta, size_t n_meta)
{
    zinc_status st = ZINC_OK;
    char tmp[4096];
    int fd = -1;
    char *hdr = NULL;
    void *buf = NULL;
    json_t *root = NULL;
    if (!path || (n && (!t || !src)) || (n_meta && !meta))
        return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_st_write: NULL argument");
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return zinc_error(ZINC_ERR_INVALID_ARG, "path too long: %s", path);

    root = json_object();
    if (n_meta) {
        json_t *m = json_object();
        for (size_t k = 0; k < n_meta; k++) json_object_set_new(m, meta[2 * k], json_string(meta[2 * k + 1]));
        json_object_set_new(root, "__metadata__", m);
    }
    uint64_t off = 0, max_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        const char *dn = zinc_st_dtype_name(t[i].dtype);
        if (!dn || !t[i].name[0] || !strcmp(t[i].name, "__metadata__") || t[i].ndim < 0 || t[i].ndim > ZINC_MAX_DIMS) {
            st = zinc_error(ZINC_ERR_INVALID_ARG, "%s: tensor '%s': bad name, dtype or ndim", path, t[i].name);
            goto cleanup;
        }
        if (json_object_get(root, t[i].name)) {
            st = zinc_error(ZINC_ERR_INVALID_ARG, "%s: tensor %s given twice", path, t[i].name);
            goto cleanup;
        }
        uint64_t bytes, end;
        if (entry_size(&t[i], NULL, &bytes) != 0 || __builtin_add_overflow(off, bytes, &end) ||
            end > (uint64_t)INT64_MAX) {
            st = zinc_error(ZINC_ERR_INVALID_ARG, "%s: tensor %s: negative dimension, or its size in bytes "
                            "overflows 64 bits", path, t[i].name);
            goto cleanup;
        }
        json_t *shape = json_array();
        for (int d = 0; d < t[i].ndim; d++) json_array_append_new(shape, json_integer(t[i].shape[d]));
        json_object_set_new(root, t[i].name,
                            json_pack("{s:s, s:o, s:[I, I]}", "dtype", dn, "shape", shape, "data_offsets",
                                      (json_int_t)off, (json_int_t)(off + bytes)));
        off += bytes;
        if (bytes > max_bytes) max_bytes = bytes;
    }
    hdr = json_dumps(root, JSON_COMPACT);
    if (!hdr) {
        st = zinc_error(ZINC_ERR_NOMEM, "%s: cannot build the header", path);
        goto cleanup;
    }
    size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
    char *h2 = realloc(hdr, padded + 1);
    if (!h2) {
        st = zinc_error(ZINC_ERR_NOMEM, "%s: cannot build the header", path);
        goto cleanup;
    }
    hdr = h2;
    memset(hdr + hl, ' ', padded - hl);

    size_t bl = (size_t)(max_bytes < ST_PIECE ? max_bytes : ST_PIECE);
    buf = malloc(bl ? bl : 1);
    if (!buf) {
        st = zinc_error(ZINC_ERR_NOMEM, "%s: no memory for a %zu-byte buffer", path, bl);
        goto cleanup;
    }
    /* a leftover path.tmp is ours to replace; a named pipe there would block the open */
    if (unlink(tmp) != 0 && errno != ENOENT) {
        st = zinc_error(ZINC_ERR_IO, "%s: cannot remove: %s", tmp, strerror(errno));
        goto cleanup;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = zinc_error(ZINC_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto cleanup;
    }
    uint8_t len8[8];
    for (int b = 0; b < 8; b++) len8[b] = (uint8_t)((uint64_t)padded >> (8 * b));
    ZINC_TRY(write_all(fd, tmp, len8, 8));
    ZINC_TRY(write_all(fd, tmp, hdr, padded));
    for (size_t i = 0; i < n; i++) {
        uint64_t bytes = 0;
        entry_size(&t[i], NULL, &bytes); /* checked above */
        for (uint64_t o = 0; o < bytes; o += ST_PIECE) {
            size_t k = (size_t)(bytes - o < ST_PIECE ? bytes - o : ST_PIECE);
            ZINC_TRY(src(u, i, o, buf, k));
            ZINC_TRY(write_all(fd, tmp, buf, k));
        }
    }
    if (fsync(fd) != 0) {
        st = zinc_error(ZINC_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
        goto cleanup;
    }
    int r = close(fd);
    fd = -1;
    if (r != 0) {
        st = zinc_error(ZINC_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
        goto cleanup;
    }
    if (rename(tmp, path) != 0) st = zinc_error(ZINC_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
cleanup:
    if (fd >= 0) close(fd);
    if (st != ZINC_OK) unlink(tmp);
    free(buf);
    free(hdr);
    json_decref(root);
    return st;
}

/* ---- reader ------------------------------------------------------------------------------ */

struct zinc_st_file {
    char path[4096];
    int fd;
    uint64_t data_off, data_bytes;
    zinc_st_entry *e;
    size_t n;
    char **meta; /* key, value pairs */
    size_t n_meta;
};

void zinc_st_close(zinc_st_file *f)
{
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    for (size_t i = 0; i < 2 * f->n_meta; i++) free(f->meta[i]);
    free(f->meta);
    free(f->e);
    free(f);
}

static zinc_status pread_all(int fd, const char *path, void *buf, size_t n, uint64_t off)
{
    char *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return zinc_error(ZINC_ERR_IO, "%s: read at offset %llu failed: %s", path, (unsigned long long)off, strerror(errno));
        if (r == 0) return zinc_error(ZINC_ERR_CORRUPT, "%s: file ends at offset %llu, data expected", path, (unsigned long long)off);
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return ZINC_OK;
}

static int begin_cmp(const void *a, const void *b)
{
    const zinc_st_entry *x = *(const zinc_st_entry *const *)a, *y = *(const zinc_st_entry *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static zinc_status parse_entry(zinc_st_file *f, const char *name, json_t *v, zinc_st_entry *e)
{
    const char *p = f->path;
    memset(e, 0, sizeof *e);
    if (strlen(name) >= sizeof e->name)
        return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: tensor name longer than %zu bytes: %.60s...", p, sizeof e->name - 1, name);
    snprintf(e->name, sizeof e->name, "%s", name);
    json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"), *off = json_object_get(v, "data_offsets");
    if (!json_is_object(v) || !json_is_string(dt) || !json_is_array(shape) || !json_is_array(off))
        return zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s: needs dtype, shape and data_offsets", p, name);
    if (st_dtype_parse(json_string_value(dt), &e->dtype) != 0)
        return zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s: unknown dtype '%s'", p, name, json_string_value(dt));
    if (json_array_size(shape) > ZINC_MAX_DIMS)
        return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: tensor %s: %zu dimensions, at most %d supported", p, name,
                          json_array_size(shape), ZINC_MAX_DIMS);
    e->ndim = (int)json_array_size(shape);
    for (int d = 0; d < e->ndim; d++) {
        json_t *x = json_array_get(shape, (size_t)d);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > ((json_int_t)1 << 48))
            return zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s: invalid shape: dimension %d is not an integer in 0..2^48",
                              p, name, d);
        e->shape[d] = json_integer_value(x);
    }
    json_t *b = json_array_get(off, 0), *en = json_array_get(off, 1);
    if (json_array_size(off) != 2 || !json_is_integer(b) || !json_is_integer(en) || json_integer_value(b) < 0 ||
        json_integer_value(en) < json_integer_value(b))
        return zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s: data_offsets must be [begin, end] with 0 <= begin <= end", p, name);
    e->begin = (uint64_t)json_integer_value(b);
    e->end = (uint64_t)json_integer_value(en);
    uint64_t need;
    if (entry_size(e, NULL, &need) != 0)
        return zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s: shape's element count or size in bytes overflows 64 bits", p,
                          name);
    if (e->end > f->data_bytes)
        return zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s: data_offsets [%llu, %llu] outside the %llu data bytes", p, name,
                          (unsigned long long)e->begin, (unsigned long long)e->end, (unsigned long long)f->data_bytes);
    if (e->end - e->begin != need)
        return zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s: data_offsets span %llu bytes, its shape and dtype need %llu", p,
                          name, (unsigned long long)(e->end - e->begin), (unsigned long long)need);
    return ZINC_OK;
}

zinc_status zinc_st_open(const char *path, zinc_st_file **out)
{
    zinc_status st = ZINC_OK;
    char *hdr = NULL;
    json_t *root = NULL;
    zinc_st_entry **order = NULL;
    if (!path || !out) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_st_open: NULL argument");
    *out = NULL;
    zinc_st_file *f = calloc(1, sizeof *f);
    if (!f) return zinc_error(ZINC_ERR_NOMEM, "%s: out of memory", path);
    snprintf(f->path, sizeof f->path, "%s", path);
    long long fsize = 0;
    f->fd = -1;
    ZINC_TRY(zinc_open_regular(path, 0, "safetensors file", &f->fd, &fsize));
    uint64_t size = (uint64_t)fsize;
    if (size < 8) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: %llu bytes, too short for a safetensors header", path, (unsigned long long)size);
        goto cleanup;
    }
    uint8_t l8[8];
    ZINC_TRY(pread_all(f->fd, path, l8, 8, 0));
    uint64_t hl = 0;
    for (int b = 7; b >= 0; b--) hl = hl << 8 | l8[b];
    if (hl > size - 8) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: header length %llu goes beyond the file's %llu bytes", path,
                        (unsigned long long)hl, (unsigned long long)size);
        goto cleanup;
    }
    if (hl > ST_MAX_HEADER || hl < 2) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: header length %llu is implausible", path, (unsigned long long)hl);
        goto cleanup;
    }
    f->data_off = 8 + hl;
    f->data_bytes = size - f->data_off;
    hdr = malloc((size_t)hl);
    if (!hdr) {
        st = zinc_error(ZINC_ERR_NOMEM, "%s: no memory for the header", path);
        goto cleanup;
    }
    ZINC_TRY(pread_all(f->fd, path, hdr, (size_t)hl, 8));
    json_error_t jerr;
    root = json_loadb(hdr, (size_t)hl, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: header JSON line %d column %d: %s", path, jerr.line, jerr.column, jerr.text);
        goto cleanup;
    }
    if (!json_is_object(root)) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: header is not a JSON object", path);
        goto cleanup;
    }
    size_t cap = json_object_size(root);
    f->e = calloc(cap + 1, sizeof *f->e);
    if (!f->e) {
        st = zinc_error(ZINC_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(v)) {
                st = zinc_error(ZINC_ERR_CORRUPT, "%s: __metadata__ is not an object", path);
                goto cleanup;
            }
            f->meta = calloc(2 * json_object_size(v) + 1, sizeof *f->meta);
            if (!f->meta) {
                st = zinc_error(ZINC_ERR_NOMEM, "%s: out of memory", path);
                goto cleanup;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) {
                    st = zinc_error(ZINC_ERR_CORRUPT, "%s: __metadata__ value of %s is not a string", path, mk);
                    goto cleanup;
                }
                f->meta[2 * f->n_meta] = strdup(mk);
                f->meta[2 * f->n_meta + 1] = strdup(json_string_value(mv));
                f->n_meta++;
            }
            continue;
        }
        ZINC_TRY(parse_entry(f, key, v, &f->e[f->n]));
        f->n++;
    }
    order = malloc((f->n + 1) * sizeof *order);
    if (!order) {
        st = zinc_error(ZINC_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    /* the format: the data section is fully indexed, no overlaps, no holes (empty tensors
     * may sit anywhere within it) */
    size_t k = 0;
    for (size_t i = 0; i < f->n; i++)
        if (f->e[i].end > f->e[i].begin) order[k++] = &f->e[i];
    qsort(order, k, sizeof *order, begin_cmp);
    uint64_t at = 0;
    for (size_t i = 0; i < k; i++) {
        if (i > 0 && order[i]->begin < order[i - 1]->end) {
            st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s: data_offsets [%llu, %llu] overlap tensor %s's [%llu, %llu]", path,
                            order[i]->name, (unsigned long long)order[i]->begin, (unsigned long long)order[i]->end,
                            order[i - 1]->name, (unsigned long long)order[i - 1]->begin,
                            (unsigned long long)order[i - 1]->end);
            goto cleanup;
        }
        if (order[i]->begin != at) {
            st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s: data_offsets [%llu, %llu] leave bytes [%llu, %llu) of the data "
                            "indexed by no tensor", path, order[i]->name, (unsigned long long)order[i]->begin,
                            (unsigned long long)order[i]->end, (unsigned long long)at,
                            (unsigned long long)order[i]->begin);
            goto cleanup;
        }
        at = order[i]->end;
    }
    if (at != f->data_bytes) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: data bytes [%llu, %llu)%s%s are indexed by no tensor", path,
                        (unsigned long long)at, (unsigned long long)f->data_bytes, k ? " after tensor " : "",
                        k ? order[k - 1]->name : "");
        goto cleanup;
    }
    *out = f;
    f = NULL;
cleanup:
    free(order);
    json_decref(root);
    free(hdr);
    zinc_st_close(f);
    return st;
}

size_t zinc_st_count(const zinc_st_file *f) { return f->n; }

const zinc_st_entry *zinc_st_entry_at(const zinc_st_file *f, size_t i)
{
    return i < f->n ? &f->e[i] : NULL;
}

long zinc_st_find(const zinc_st_file *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->e[i].name, name)) return (long)i;
    return -1;
}

const char *zinc_st_metadata(const zinc_st_file *f, const char *key)
{
    for (size_t i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta[2 * i], key)) return f->meta[2 * i + 1];
    return NULL;
}

zinc_status zinc_st_read_raw(zinc_st_file *f, size_t i, void *dst)
{
    if (i >= f->n) return zinc_error(ZINC_ERR_INVALID_ARG, "%s: no tensor %zu", f->path, i);
    const zinc_st_entry *e = &f->e[i];
    zinc_status st = pread_all(f->fd, f->path, dst, (size_t)(e->end - e->begin), f->data_off + e->begin);
    if (st != ZINC_OK) {
        char err[1024];
        snprintf(err, sizeof err, "%s", zinc_last_error());
        return zinc_error(st, "%s (tensor %s)", err, e->name);
    }
    return ZINC_OK;
}

zinc_status zinc_st_read_f32(zinc_st_file *f, size_t i, float *dst)
{
    if (i >= f->n) return zinc_error(ZINC_ERR_INVALID_ARG, "%s: no tensor %zu", f->path, i);
    const zinc_st_entry *e = &f->e[i];
    uint64_t n64 = 0;
    entry_size(e, &n64, NULL); /* checked by zinc_st_open */
    size_t n = (size_t)n64, esz = zinc_dtype_size(e->dtype);
    if (e->dtype == ZINC_DTYPE_F32) return zinc_st_read_raw(f, i, dst);
    void *raw = malloc(n * esz + 1);
    if (!raw) return zinc_error(ZINC_ERR_NOMEM, "%s: tensor %s: no memory", f->path, e->name);
    zinc_status st = zinc_st_read_raw(f, i, raw);
    for (size_t k = 0; st == ZINC_OK && k < n; k++) {
        switch (e->dtype) {
        case ZINC_DTYPE_BF16: dst[k] = zinc_bf16_to_f32(((const uint16_t *)raw)[k]); break;
        case ZINC_DTYPE_F16: dst[k] = zinc_f16_to_f32(((const uint16_t *)raw)[k]); break;
        case ZINC_DTYPE_F64: dst[k] = (float)((const double *)raw)[k]; break;
        case ZINC_DTYPE_I32: dst[k] = (float)((const int32_t *)raw)[k]; break;
        case ZINC_DTYPE_I64: dst[k] = (float)((const int64_t *)raw)[k]; break;
        case ZINC_DTYPE_U8: dst[k] = (float)((const uint8_t *)raw)[k]; break;
        default: dst[k] = ((const float *)raw)[k]; break;
        }
    }
    free(raw);
    return st;
}
