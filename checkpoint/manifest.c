/* manifest.c - the checkpoint manifest: rank 0's merge of every rank's chunk table and the
 * check that the chunks tile every tensor, the manifest's text (written by hand, meta last,
 * verbatim), and its parsing and validation with jansson (ckpt.c has the overview).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_int.h"

/* ---- save: rank 0's merge and manifest -------------------------------------------------- */

static int dtype_parse(const char *s, zinc_dtype *dt)
{
    for (int d = ZINC_DTYPE_F32; d <= ZINC_DTYPE_I64; d++)
        if (!strcmp(s, zinc_dtype_name((zinc_dtype)d))) {
            *dt = (zinc_dtype)d;
            return 0;
        }
    return -1;
}

static int mchunk_cmp(const void *a, const void *b)
{
    const m_chunk *x = a, *y = b;
    return x->eo < y->eo ? -1 : x->eo > y->eo ? 1 : x->rank - y->rank;
}

int ckpt_shape_eq(const zinc_ckpt_tensor *a, const zinc_ckpt_tensor *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

void ckpt_shape_str(const zinc_ckpt_tensor *t, char *buf, size_t cap)
{
    int k = snprintf(buf, cap, "(");
    for (int d = 0; d < t->ndim && k > 0 && (size_t)k < cap; d++)
        k += snprintf(buf + k, cap - (size_t)k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (k > 0 && (size_t)k < cap) snprintf(buf + k, cap - (size_t)k, ")");
}

/* Adds rank r's descriptor to the table; hint speeds up identical tables. */
zinc_status ckpt_merge_rank(m_table *mt, int r, json_t *desc, uint64_t *file_bytes)
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
            if (o->dtype != t.dtype || !ckpt_shape_eq(o, &t) || o->tp_dim != t.tp_dim) {
                char s1[128], s2[128];
                ckpt_shape_str(o, s1, sizeof s1);
                ckpt_shape_str(&t, s2, sizeof s2);
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
zinc_status ckpt_check_coverage(m_table *mt)
{
    for (int i = 0; i < mt->n; i++) {
        m_tensor *m = &mt->t[i];
        if (m->nc > 1) qsort(m->c, (size_t)m->nc, sizeof *m->c, mchunk_cmp);
        int64_t numel = ckpt_tensor_numel(&m->t), next = 0;
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

char *ckpt_manifest_text(const char *tag, const m_table *mt, const uint64_t *file_bytes, int n_files,
                         const char *meta, size_t *len)
{
    sbuf s = {0};
    ckpt_sb_printf(&s, "{\n  \"format\": \"zinc-ckpt\",\n  \"version\": %d,\n  \"tag\": ", ZINC_CKPT_FORMAT_VERSION);
    ckpt_sb_json_str(&s, tag);
    ckpt_sb_printf(&s, ",\n  \"block_bytes\": %u,\n  \"align_bytes\": %u,\n  \"files\": [\n", CKPT_BLOCK, CKPT_ALIGN);
    for (int r = 0; r < n_files; r++)
        ckpt_sb_printf(&s, "    {\"name\": \"rank-%05d.bin\", \"bytes\": %llu}%s\n", r,
                       (unsigned long long)file_bytes[r], r + 1 < n_files ? "," : "");
    ckpt_sb_printf(&s, "  ],\n  \"tensors\": [\n");
    for (int i = 0; i < mt->n; i++) {
        const m_tensor *m = &mt->t[i];
        ckpt_sb_printf(&s, "    {\"name\": ");
        ckpt_sb_json_str(&s, m->t.name);
        ckpt_sb_printf(&s, ", \"kind\": ");
        ckpt_sb_json_str(&s, m->t.kind);
        ckpt_sb_printf(&s, ", \"dtype\": \"%s\", \"shape\": [", ckpt_dtype_tag(m->t.dtype));
        for (int d = 0; d < m->t.ndim; d++) ckpt_sb_printf(&s, "%s%lld", d ? ", " : "", (long long)m->t.shape[d]);
        ckpt_sb_printf(&s, "], \"tp_dim\": %d, \"chunks\": [\n", m->t.tp_dim);
        for (int j = 0; j < m->nc; j++) {
            const m_chunk *c = &m->c[j];
            ckpt_sb_printf(&s, "      {\"file\": \"rank-%05d.bin\", \"offset\": %llu, \"bytes\": %llu, \"elements\": [%lld, %lld], \"crc32c\": [",
                           c->rank, (unsigned long long)c->off, (unsigned long long)c->bytes, (long long)c->eo,
                      (long long)(c->eo + c->n));
            for (size_t b = 0; b < json_array_size(c->crcs); b++)
                ckpt_sb_printf(&s, "%s%lld", b ? ", " : "", (long long)json_integer_value(json_array_get(c->crcs, b)));
            ckpt_sb_printf(&s, "]}%s\n", j + 1 < m->nc ? "," : "");
        }
        ckpt_sb_printf(&s, "    ]}%s\n", i + 1 < mt->n ? "," : "");
    }
    ckpt_sb_printf(&s, "  ],\n  \"meta\": ");
    ckpt_sb_put(&s, meta, strlen(meta));
    ckpt_sb_printf(&s, "\n}\n");
    if (s.oom) {
        free(s.p);
        return NULL;
    }
    *len = s.n;
    return s.p;
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
        mt->numel = ckpt_tensor_numel(&mt->t);
        if (mt->numel < 0) {
            char sh[128];
            ckpt_shape_str(&mt->t, sh, sizeof sh);
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
