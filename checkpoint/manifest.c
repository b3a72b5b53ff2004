/* manifest.c - the checkpoint manifest: rank 0's merge of every rank's chunk table and the
 * check that the chunks tile every tensor, the manifest's text (written by hand, meta last,
 * verbatim), and its parsing and validation with jansson (ckpt.c has the overview).
 *
 * Both checks take each chunk's box apart into its logical runs (box.c), sort the runs of a
 * tensor by first element and require them to tile [0, numel): O(R log R) in the tensor's
 * runs R, never pieces x runs. A parsed manifest keeps the sorted runs (the reader
 * intersects wanted pieces with them); the manifest text holds only the boxes.
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
    return x->first < y->first ? -1 : x->first > y->first ? 1 : x->rank - y->rank;
}

/* A growing list of runs; chunk indexes the caller's chunk array. */
typedef struct run_list {
    ckpt_srun *r;
    int64_t n, cap;
    int chunk;
    int oom;
} run_list;

static int run_add(void *u, int64_t pos, int64_t logical, int64_t n)
{
    run_list *l = u;
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 64;
        ckpt_srun *r = realloc(l->r, (size_t)cap * sizeof *r);
        if (!r) {
            l->oom = 1;
            return 1;
        }
        l->r = r;
        l->cap = cap;
    }
    l->r[l->n++] = (ckpt_srun){logical, n, pos, l->chunk};
    return 0;
}

static int srun_cmp(const void *a, const void *b)
{
    const ckpt_srun *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo ? 1 : x->chunk - y->chunk;
}

/* Box elements [eo, eo+n) of chunk `chunk` as runs appended to l, their cpos counted from
 * the chunk's first element. -1 when out of memory. */
static int runs_of_chunk(run_list *l, const zinc_ckpt_tensor *t, const int64_t *start, const int64_t *count,
                         int64_t eo, int64_t n, int chunk)
{
    int64_t n0 = l->n;
    l->chunk = chunk;
    ckpt_box_runs(t, start, count, eo, n, run_add, l);
    for (int64_t k = n0; k < l->n; k++) l->r[k].cpos -= eo;
    return l->oom ? -1 : 0;
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
        int tp, tpb;
        if (json_unpack(json_array_get(ts, i), "[s s s o i i]", &name, &kind, &dt, &shape, &tp, &tpb) != 0 ||
            dtype_parse(dt, &t.dtype) != 0) {
            st = zinc_error(ZINC_ERR_INTERNAL, "chunk table of rank %d: bad tensor entry %zu", r, i);
            goto cleanup;
        }
        snprintf(t.name, sizeof t.name, "%s", name);
        snprintf(t.kind, sizeof t.kind, "%s", kind);
        t.ndim = (int)json_array_size(shape);
        for (int d = 0; d < t.ndim && d < ZINC_MAX_DIMS; d++) t.shape[d] = json_integer_value(json_array_get(shape, (size_t)d));
        t.tp_dim = tp;
        t.tp_blocks = tpb;
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
            if (o->dtype != t.dtype || !ckpt_shape_eq(o, &t) || o->tp_dim != t.tp_dim || o->tp_blocks != t.tp_blocks) {
                char s1[128], s2[128];
                ckpt_shape_str(o, s1, sizeof s1);
                ckpt_shape_str(&t, s2, sizeof s2);
                st = zinc_error(ZINC_ERR_INVALID_ARG,
                                "tensor %s (%s) differs between ranks: %s %s tp_dim %d tp_blocks %d vs rank %d's %s %s "
                                "tp_dim %d tp_blocks %d",
                                t.name, t.kind, zinc_dtype_name(o->dtype), s1, o->tp_dim, o->tp_blocks, r,
                                zinc_dtype_name(t.dtype), s2, t.tp_dim, t.tp_blocks);
                goto cleanup;
            }
        }
        map[i] = g;
    }
    for (size_t i = 0; i < json_array_size(cs); i++) {
        int lt;
        json_int_t off, bytes, eo, n;
        json_t *crcs, *box;
        m_chunk c = {.rank = r};
        if (json_unpack(json_array_get(cs, i), "[i I I I I o o]", &lt, &off, &bytes, &eo, &n, &crcs, &box) != 0 ||
            lt < 0 || (size_t)lt >= nt) {
            st = zinc_error(ZINC_ERR_INTERNAL, "chunk table of rank %d: bad chunk entry %zu", r, i);
            goto cleanup;
        }
        m_tensor *m = &mt->t[map[lt]];
        if (json_is_array(box)) { /* the sender checked it against the same view */
            json_t *bs = json_array_get(box, 0), *bc = json_array_get(box, 1);
            for (size_t d = 0; d < json_array_size(bs) && d < ZINC_CKPT_BOX_DIMS; d++) {
                c.start[d] = json_integer_value(json_array_get(bs, d));
                c.count[d] = json_integer_value(json_array_get(bc, d));
            }
        }
        c.off = (uint64_t)off;
        c.bytes = (uint64_t)bytes;
        c.eo = eo;
        c.n = n;
        c.first = ckpt_box_logical(&m->t, c.start, c.count, eo);
        c.crcs = crcs;
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
        m->c[m->nc++] = c;
    }
cleanup:
    free(map);
    return st;
}

/* Every tensor covered exactly once by the chunks of all ranks: the runs of all its chunks,
 * sorted, follow each other without a gap or an overlap. Sorts each tensor's chunks by
 * their first element (the manifest's order). */
zinc_status ckpt_check_coverage(m_table *mt)
{
    zinc_status st = ZINC_OK;
    run_list l = {0};
    int64_t n_runs = 0;
    for (int i = 0; i < mt->n; i++) {
        m_tensor *m = &mt->t[i];
        if (m->nc > 1) qsort(m->c, (size_t)m->nc, sizeof *m->c, mchunk_cmp);
        int64_t numel = ckpt_tensor_numel(&m->t), next = 0;
        l.n = 0;
        for (int j = 0; j < m->nc; j++) {
            n_runs += ckpt_box_n_runs(&m->t, m->c[j].start, m->c[j].count, m->c[j].eo, m->c[j].n);
            if (n_runs > CKPT_MAX_RUNS) {
                st = zinc_error(ZINC_ERR_UNSUPPORTED,
                                "tensor %s (%s): the pieces' boxes stand for more than %d logical runs in all "
                                "(a checkpoint zinc could not load)", m->t.name, m->t.kind, CKPT_MAX_RUNS);
                goto cleanup;
            }
            if (runs_of_chunk(&l, &m->t, m->c[j].start, m->c[j].count, m->c[j].eo, m->c[j].n, j) != 0) {
                st = zinc_error(ZINC_ERR_NOMEM, "checking tensor %s (%s): out of memory", m->t.name, m->t.kind);
                goto cleanup;
            }
        }
        if (l.n > 1) qsort(l.r, (size_t)l.n, sizeof *l.r, srun_cmp);
        int prev_rank = -1;
        for (int64_t k = 0; k < l.n; k++) {
            const ckpt_srun *u = &l.r[k];
            int rank = m->c[u->chunk].rank;
            if (u->lo > next) {
                st = zinc_error(ZINC_ERR_INVALID_ARG, "tensor %s (%s): elements [%lld, %lld) are saved by no rank",
                                m->t.name, m->t.kind, (long long)next, (long long)u->lo);
                goto cleanup;
            }
            if (u->lo < next) {
                int64_t end = u->lo + u->n < next ? u->lo + u->n : next;
                st = zinc_error(ZINC_ERR_INVALID_ARG,
                                "tensor %s (%s): elements [%lld, %lld) are saved twice (rank %d and rank %d)",
                                m->t.name, m->t.kind, (long long)u->lo, (long long)end, prev_rank, rank);
                goto cleanup;
            }
            next = u->lo + u->n;
            prev_rank = rank;
        }
        if (next < numel) {
            st = zinc_error(ZINC_ERR_INVALID_ARG, "tensor %s (%s): elements [%lld, %lld) are saved by no rank",
                            m->t.name, m->t.kind, (long long)next, (long long)numel);
            goto cleanup;
        }
    }
cleanup:
    free(l.r);
    return st;
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
        ckpt_sb_printf(&s, "], \"tp_dim\": %d, \"tp_blocks\": %d, \"chunks\": [\n", m->t.tp_dim,
                       m->t.tp_blocks > 1 ? m->t.tp_blocks : 1);
        int64_t view[ZINC_CKPT_BOX_DIMS];
        int nd = ckpt_view(&m->t, view);
        for (int j = 0; j < m->nc; j++) {
            const m_chunk *c = &m->c[j];
            ckpt_sb_printf(&s, "      {\"file\": \"rank-%05d.bin\", \"offset\": %llu, \"bytes\": %llu, ", c->rank,
                           (unsigned long long)c->off, (unsigned long long)c->bytes);
            if (!ckpt_box_is_whole(c->count)) { /* whole-tensor boxes are left out */
                ckpt_sb_printf(&s, "\"box\": {\"start\": [");
                for (int d = 0; d < nd; d++) ckpt_sb_printf(&s, "%s%lld", d ? ", " : "", (long long)c->start[d]);
                ckpt_sb_printf(&s, "], \"count\": [");
                for (int d = 0; d < nd; d++) ckpt_sb_printf(&s, "%s%lld", d ? ", " : "", (long long)c->count[d]);
                ckpt_sb_printf(&s, "]}, ");
            }
            ckpt_sb_printf(&s, "\"elements\": [%lld, %lld], \"crc32c\": [", (long long)c->eo,
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
    for (int i = 0; m->tensors && i < m->n_tensors; i++) free(m->tensors[i].runs);
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

static int chunk_cmp(const void *a, const void *b) /* by first element, held in eo then */
{
    const ckpt_chunk *x = a, *y = b;
    return x->eo < y->eo ? -1 : x->eo > y->eo;
}

/* An integer array of exactly nd elements into v; -1 if it is not one. */
static int get_dims(json_t *a, int nd, int64_t *v)
{
    if (!json_is_array(a) || json_array_size(a) != (size_t)nd) return -1;
    for (int d = 0; d < nd; d++) {
        json_t *x = json_array_get(a, (size_t)d);
        if (!json_is_integer(x)) return -1;
        v[d] = json_integer_value(x);
    }
    return 0;
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
    if (ver < 1) { /* versions 1 (flat ranges) and 2 (boxes) were written, no other */
        st = zinc_error(ZINC_ERR_CORRUPT, "%s: format version %lld is not one zinc knows (1..%d)", mp, (long long)ver,
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
    int64_t n_runs = 0; /* over the whole manifest */
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
        json_t *tpb = json_object_get(t, "tp_blocks");
        if (tp < -1 || tp >= ZINC_MAX_DIMS || (ver >= 2 && tpb && (!json_is_integer(tpb) || json_integer_value(tpb) < 0 ||
                                                                   json_integer_value(tpb) > (1 << 30)))) {
            st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s): invalid tp_dim or tp_blocks", mp, mt->t.name,
                            mt->t.kind);
            goto cleanup;
        }
        mt->t.tp_dim = (int)tp;
        mt->t.tp_blocks = ver >= 2 && tpb ? (int)json_integer_value(tpb) : 0; /* version 1 did not record it */
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
        char why[512];
        if (ckpt_view_check(&mt->t, why, sizeof why) != 0) {
            st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s): %s", mp, mt->t.name, mt->t.kind, why);
            goto cleanup;
        }
        int64_t view[ZINC_CKPT_BOX_DIMS];
        int nd = ckpt_view(&mt->t, view);
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
            json_t *box = json_object_get(c, "box");
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
            ck->bo = json_integer_value(json_array_get(el, 0));
            if (__builtin_sub_overflow((int64_t)json_integer_value(json_array_get(el, 1)), ck->bo, &ck->n)) ck->n = -1;
            ck->n_crcs = json_array_size(crcs);
            if (box) { /* version 2: a box over the view; absent: the whole tensor */
                if (ver < 2 || !json_is_object(box) || get_dims(json_object_get(box, "start"), nd, ck->start) != 0 ||
                    get_dims(json_object_get(box, "count"), nd, ck->count) != 0 || json_object_size(box) != 2) {
                    st = zinc_error(ZINC_ERR_CORRUPT,
                                    "%s: tensor %s (%s): chunk %d in %s: invalid box (version 2 only: {\"start\": [...], "
                                    "\"count\": [...]}, %d dimensions each)",
                                    mp, mt->t.name, mt->t.kind, j, m->files[ck->file].name, nd);
                    goto cleanup;
                }
                /* an empty box would read as the whole tensor: it never holds a chunk (n > 0) */
                if (ckpt_box_is_whole(ck->count) || ckpt_box_check(&mt->t, ck->start, ck->count, 0, 0, why, sizeof why)) {
                    if (ckpt_box_is_whole(ck->count)) snprintf(why, sizeof why, "its box is empty");
                    st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s): chunk %d in %s: %s", mp, mt->t.name,
                                    mt->t.kind, j, m->files[ck->file].name, why);
                    goto cleanup;
                }
            }
            int64_t vol = ckpt_box_volume(&mt->t, ck->count);
            /* n <= numel, whose byte size fits in int64: n * esz cannot overflow below */
            if (ck->bo < 0 || ck->n <= 0 || ck->bo > vol || ck->n > vol - ck->bo ||
                ck->bytes != (uint64_t)ck->n * esz || ck->n_crcs != (ck->bytes + CKPT_BLOCK - 1) / CKPT_BLOCK ||
                ck->off > m->files[ck->file].bytes || ck->bytes > m->files[ck->file].bytes - ck->off) {
                st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s): chunk %d (elements [%lld, %lld) of %s of %lld in %s) is inconsistent",
                                mp, mt->t.name, mt->t.kind, j, (long long)ck->bo, (long long)(ck->bo + ck->n),
                                box ? "its box" : "the tensor", (long long)vol, m->files[ck->file].name);
                goto cleanup;
            }
            n_runs += ckpt_box_n_runs(&mt->t, ck->start, ck->count, ck->bo, ck->n);
            if (n_runs > CKPT_MAX_RUNS) {
                st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s): the chunks' boxes stand for more than %d logical runs",
                                mp, mt->t.name, mt->t.kind, CKPT_MAX_RUNS);
                goto cleanup;
            }
            ck->eo = ckpt_box_logical(&mt->t, ck->start, ck->count, ck->bo); /* for the sort below */
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
        /* the runs of all chunks, sorted, each continue where the one before ends: a chunk
         * past the end, or one repeating a range already covered, is as wrong as a hole
         * (found by fuzz_manifest) */
        run_list l = {0};
        int64_t next = 0, used = 0;
        for (int j = 0; j < mt->n_chunks; j++) {
            ckpt_chunk *ck = &mt->chunks[j];
            if (runs_of_chunk(&l, &mt->t, ck->start, ck->count, ck->bo, ck->n, j) != 0) {
                free(l.r);
                st = zinc_error(ZINC_ERR_NOMEM, "%s: out of memory", mp);
                goto cleanup;
            }
        }
        mt->runs = l.r;
        mt->n_runs = l.n;
        if (l.n > 1) qsort(l.r, (size_t)l.n, sizeof *l.r, srun_cmp);
        for (; used < l.n && l.r[used].lo == next; used++) next += l.r[used].n;
        if (next != mt->numel || used != l.n) {
            st = zinc_error(ZINC_ERR_CORRUPT, "%s: tensor %s (%s): chunks do not cover its %lld elements exactly", mp,
                            mt->t.name, mt->t.kind, (long long)mt->numel);
            goto cleanup;
        }
        for (int j = 0; j < mt->n_chunks; j++) /* the chunks laid end to end: they tile [0, numel) */
            mt->chunks[j].eo = j ? mt->chunks[j - 1].eo + mt->chunks[j - 1].n : 0;
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
