/* zinc_ckpt.c - `zinc-ckpt`: inspects, verifies and exports zinc checkpoints.
 *
 *   zinc-ckpt info DIR
 *   zinc-ckpt verify DIR
 *   zinc-ckpt export DIR [--format safetensors] OUT [--dtype f32|bf16|f16] [--kind KIND]
 *   zinc-ckpt export DIR --format hf OUT_DIR [--max-shard-size 5GB] [--dtype ...]
 *   zinc-ckpt export DIR --format peft OUT_DIR [--dtype ...]
 *   zinc-ckpt export DIR [--format hf|safetensors] OUT --merge [--dtype ...]
 *
 * DIR is a checkpoint directory or a save_dir (its latest is used). Exit status: 0 ok,
 * 1 an error (one line "zinc-ckpt: <detail>"), 2 bad arguments. verify and export draw a
 * progress bar on stderr when it is a terminal and the checkpoint is large.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "zinc/aio.h"
#include "zinc/ckpt.h"
#include "zinc/engine.h"
#include "zinc/progress.h"
#include "zinc/safetensors.h"

#define PROGRESS_MIN_BYTES (64ull << 20)

static const char *usage_text =
    "usage: zinc-ckpt info DIR\n"
    "       zinc-ckpt verify DIR\n"
    "       zinc-ckpt export DIR [--format safetensors] OUT [--dtype f32|bf16|f16] [--kind KIND]\n"
    "       zinc-ckpt export DIR --format hf OUT_DIR [--max-shard-size 5GB] [--dtype f32|bf16|f16]\n"
    "       zinc-ckpt export DIR --format peft OUT_DIR [--dtype f32|bf16|f16]\n"
    "       zinc-ckpt export DIR [--format safetensors|hf] OUT --merge [--dtype f32|bf16|f16]\n"
    "  DIR is one checkpoint (holding manifest.json) or a save directory (its latest is used).\n"
    "  info    tag, step, topology and every tensor with kind, dtype, shape and bytes.\n"
    "  verify  checks every file size and every crc32c block; exit 1 on corruption.\n"
    "  export  writes the tensors of one kind (default: the weights, each parameter's master if\n"
    "          present, else its param) into\n"
    "          one safetensors file under their stored (Hugging Face) names; --dtype\n"
    "          converts floating-point tensors (default: as stored).\n"
    "          --format peft (a model.lora run): adapter_model.safetensors and adapter_config.json\n"
    "          as PEFT writes them; --merge: the base weights with each adapter merged in,\n"
    "          W + (alpha/r) B A (in double, rounded once), and no adapter tensors.\n";

static int usage(const char *why)
{
    if (why) fprintf(stderr, "zinc-ckpt: %s\n", why);
    fputs(usage_text, stderr);
    return 2;
}

static int fail(void)
{
    fprintf(stderr, "zinc-ckpt: %s\n", zinc_last_error());
    return 1;
}

static double mib(uint64_t b)
{
    return (double)b / (1024.0 * 1024.0);
}

/* ---- info -------------------------------------------------------------------------------- */

static void shape_str(const zinc_ckpt_tensor *t, char *buf, size_t cap)
{
    int k = snprintf(buf, cap, "(");
    for (int d = 0; d < t->ndim && (size_t)k < cap; d++)
        k += snprintf(buf + k, cap - (size_t)k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if ((size_t)k < cap) snprintf(buf + k, cap - (size_t)k, "%s)", t->ndim == 1 ? "," : "");
}

/* Elements of t; the reader has refused shapes whose count or bytes overflow, but the size
 * is checked again here rather than wrapped: 0 for such a tensor. */
static int64_t numel(const zinc_ckpt_tensor *t)
{
    int64_t n = zinc_ckpt_tensor_numel(t);
    return n < 0 ? 0 : n;
}

static void print_meta(const char *meta)
{
    json_t *m = json_loads(meta, JSON_DECODE_ANY, NULL);
    if (!json_is_object(m)) {
        json_decref(m);
        return;
    }
    json_t *step = json_object_get(m, "step"), *topo = json_object_get(m, "topology");
    if (json_is_integer(step)) printf("step        %lld\n", (long long)json_integer_value(step));
    if (json_is_object(topo)) {
        printf("topology   ");
        const char *k;
        json_t *v;
        json_object_foreach(topo, k, v) {
            char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            printf(" %s=%s", k, s ? s : "?");
            free(s);
        }
        printf("\n");
    }
    json_decref(m);
}

static int cmd_info(zinc_aio *aio, const char *dir)
{
    zinc_ckpt_reader *r = NULL;
    if (zinc_ckpt_reader_open(aio, dir, &r) != ZINC_OK) return fail();
    int nf, nc;
    uint64_t fb;
    zinc_ckpt_reader_stats(r, &nf, &nc, &fb);
    printf("checkpoint  %s\n", zinc_ckpt_reader_dir(r));
    printf("tag         %s\n", zinc_ckpt_reader_tag(r));
    print_meta(zinc_ckpt_reader_meta(r));
    printf("files       %d rank files, %d chunks, %.1f MiB\n", nf, nc, mib(fb));
    printf("  %-10s %-5s %-20s %12s  %s\n", "kind", "dtype", "shape", "bytes", "name");
    int n = zinc_ckpt_reader_n_tensors(r);
    /* totals per kind, in order of first appearance */
    char kinds[64][16];
    int nk = 0, kt[64] = {0};
    uint64_t kb[64] = {0}, tot_b = 0, tot_e = 0;
    for (int i = 0; i < n; i++) {
        const zinc_ckpt_tensor *t = zinc_ckpt_reader_tensor(r, i);
        char sh[96];
        shape_str(t, sh, sizeof sh);
        uint64_t b = (uint64_t)numel(t) * zinc_dtype_size(t->dtype);
        printf("  %-10s %-5s %-20s %12llu  %s\n", t->kind, zinc_dtype_name(t->dtype), sh, (unsigned long long)b, t->name);
        int k = 0;
        while (k < nk && strcmp(kinds[k], t->kind)) k++;
        if (k == nk && nk < 64) snprintf(kinds[nk++], sizeof kinds[0], "%s", t->kind);
        if (k < 64) {
            kt[k]++;
            kb[k] += b;
        }
        tot_b += b;
        tot_e += (uint64_t)numel(t);
    }
    for (int k = 0; k < nk; k++)
        printf("kind        %-10s %5d tensors %14llu bytes (%.1f MiB)\n", kinds[k], kt[k], (unsigned long long)kb[k], mib(kb[k]));
    printf("total       %d tensors, %llu elements, %llu bytes (%.1f MiB)\n", n, (unsigned long long)tot_e,
           (unsigned long long)tot_b, mib(tot_b));
    zinc_ckpt_reader_close(r);
    return 0;
}

/* ---- verify ------------------------------------------------------------------------------ */

static int cmd_verify(zinc_aio *aio, const char *dir)
{
    zinc_ckpt_reader *r = NULL;
    zinc_progress p;
    zinc_progress_init(&p, "verify", isatty(STDERR_FILENO), 30, PROGRESS_MIN_BYTES);
    if (zinc_ckpt_reader_open(aio, dir, &r) != ZINC_OK) return fail();
    zinc_status st = zinc_ckpt_reader_verify(r, zinc_progress_cb, &p);
    zinc_progress_end(&p);
    if (st != ZINC_OK) {
        zinc_ckpt_reader_close(r);
        return fail();
    }
    int nf, nc;
    uint64_t fb;
    zinc_ckpt_reader_stats(r, &nf, &nc, &fb);
    uint64_t data = 0;
    for (int i = 0; i < zinc_ckpt_reader_n_tensors(r); i++) {
        const zinc_ckpt_tensor *t = zinc_ckpt_reader_tensor(r, i);
        data += (uint64_t)numel(t) * zinc_dtype_size(t->dtype);
    }
    printf("ok: %s, %d chunks in %d files, %.1f MiB verified\n", zinc_ckpt_reader_dir(r), nc, nf, mib(data));
    zinc_ckpt_reader_close(r);
    return 0;
}

/* ---- export ------------------------------------------------------------------------------ */

static int64_t entry_numel(const zinc_st_entry *e)
{
    int64_t el = 1;
    for (int d = 0; d < e->ndim; d++) el *= e->shape[d];
    return el;
}

/* --merge: each adapted weight's lora_A and lora_B (reader indices, by the weight's reader
 * index; -1: none), the scale, whether weights are stored (in, out) (GPT-2's Conv1D: the
 * update goes in transposed), and the merged tensor of the entry last asked for (fp32). */
typedef struct merge_plan {
    int *ia, *ib;
    double scale;
    int transposed;
    float *cache;
    size_t cached; /* entry index + 1 of cache */
} merge_plan;

typedef struct export_ctx {
    zinc_ckpt_reader *r;
    const int *idx;            /* reader tensor of each entry */
    const zinc_st_entry *e;
    zinc_progress *p;
    uint64_t done, total;
    merge_plan *m;             /* NULL: no merging */
} export_ctx;

/* W + scale B A of entry i into m->cache (fp32): W (out, in), or (in, out) when transposed;
 * A (r, in), B (out, r); each element's sum in double, rounded once. */
static zinc_status merge_entry(export_ctx *x, size_t i, int ia, int ib)
{
    merge_plan *m = x->m;
    const zinc_ckpt_tensor *ta = zinc_ckpt_reader_tensor(x->r, ia), *tb = zinc_ckpt_reader_tensor(x->r, ib);
    const zinc_st_entry *e = &x->e[i];
    const int64_t r = ta->shape[0], in = ta->shape[1], out = tb->shape[0];
    const int64_t rows = m->transposed ? in : out, cols = m->transposed ? out : in;
    if (e->ndim != 2 || ta->ndim != 2 || tb->ndim != 2 || tb->shape[1] != r || e->shape[0] != rows ||
        e->shape[1] != cols)
        return zinc_error(ZINC_ERR_CORRUPT, "%s: the adapter's shapes (A [%lld, %lld], B [%lld, %lld]) do not fit "
                          "the weight's", e->name, (long long)r, (long long)in, (long long)tb->shape[0],
                          (long long)tb->shape[1]);
    const size_t n = (size_t)(rows * cols);
    float *w = realloc(m->cache, n * sizeof(float)), *a = malloc((size_t)(r * in) * sizeof(float)),
          *b = malloc((size_t)(out * r) * sizeof(float));
    zinc_status st = ZINC_OK;
    if (w) m->cache = w;
    m->cached = 0;
    if (!w || !a || !b) {
        st = zinc_error(ZINC_ERR_NOMEM, "merge %s", e->name);
        goto done;
    }
    if ((st = zinc_ckpt_reader_read(x->r, x->idx[i], 0, (int64_t)n, ZINC_DTYPE_F32, w)) != ZINC_OK ||
        (st = zinc_ckpt_reader_read(x->r, ia, 0, r * in, ZINC_DTYPE_F32, a)) != ZINC_OK ||
        (st = zinc_ckpt_reader_read(x->r, ib, 0, out * r, ZINC_DTYPE_F32, b)) != ZINC_OK)
        goto done;
    for (int64_t j = 0; j < out; j++)
        for (int64_t c = 0; c < in; c++) {
            double d = 0;
            for (int64_t k = 0; k < r; k++) d += (double)b[j * r + k] * (double)a[k * in + c];
            float *y = m->transposed ? &w[c * out + j] : &w[j * in + c];
            *y = (float)((double)*y + m->scale * d);
        }
    m->cached = i + 1;
done:
    free(a);
    free(b);
    return st;
}

static void from_f32(void *dst, zinc_dtype dt, const float *src, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        if (dt == ZINC_DTYPE_BF16) ((uint16_t *)dst)[k] = zinc_f32_to_bf16(src[k]);
        else if (dt == ZINC_DTYPE_F16) ((uint16_t *)dst)[k] = zinc_f32_to_f16(src[k]);
        else ((float *)dst)[k] = src[k];
    }
}

static zinc_status export_src(void *u, size_t i, uint64_t off, void *dst, size_t n)
{
    export_ctx *x = u;
    size_t esz = zinc_dtype_size(x->e[i].dtype);
    if (x->m && x->m->ia[x->idx[i]] >= 0) {
        zinc_status st = x->m->cached == i + 1 ? ZINC_OK : merge_entry(x, i, x->m->ia[x->idx[i]], x->m->ib[x->idx[i]]);
        if (st != ZINC_OK) return st;
        from_f32(dst, x->e[i].dtype, x->m->cache + off / esz, n / esz);
        x->done += n;
        zinc_progress_update(x->p, x->done, x->total);
        return ZINC_OK;
    }
    zinc_status st = zinc_ckpt_reader_read(x->r, x->idx[i], (int64_t)(off / esz), (int64_t)(n / esz), x->e[i].dtype, dst);
    x->done += n;
    zinc_progress_update(x->p, x->done, x->total);
    return st;
}

static int is_float(zinc_dtype d)
{
    return d == ZINC_DTYPE_F32 || d == ZINC_DTYPE_BF16 || d == ZINC_DTYPE_F16;
}

static int export_hf(zinc_ckpt_reader *r, zinc_st_entry *e, int *idx, size_t ne, uint64_t total, const char *out,
                     uint64_t max_shard, const char *kind, merge_plan *m);
static int export_peft(zinc_ckpt_reader *r, zinc_st_entry *e, int *idx, size_t ne, const char *out, json_t *meta);

/* The reader tensor of an adapter's weights: its fp32 master, else its param; -1: none. */
static int find_weights(const zinc_ckpt_reader *r, const char *name)
{
    int i = zinc_ckpt_reader_find(r, name, "master");
    return i >= 0 ? i : zinc_ckpt_reader_find(r, name, "param");
}

/* --merge: the plan (each weight's adapter, the scale from the run's model.lora), and
 * entries without the adapters' tensors. Returns the entries left; 0 after a message. */
static size_t merge_prepare(zinc_ckpt_reader *r, json_t *meta, zinc_st_entry *e, int *idx, size_t ne,
                            uint64_t *total, merge_plan *m)
{
    const int n = zinc_ckpt_reader_n_tensors(r);
    json_t *model = json_object_get(json_object_get(meta, "config"), "model");
    json_t *lora = json_object_get(model, "lora");
    const char *type = json_string_value(json_object_get(model, "type"));
    m->ia = malloc((size_t)n * sizeof(int));
    m->ib = malloc((size_t)n * sizeof(int));
    if (!m->ia || !m->ib) {
        fprintf(stderr, "zinc-ckpt: out of memory\n");
        return 0;
    }
    for (int i = 0; i < n; i++) m->ia[i] = m->ib[i] = -1;
    m->transposed = type && !strcmp(type, "gpt2"); /* Conv1D weights (in, out) */
    size_t k = 0, merged = 0;
    int64_t rank = 0;
    *total = 0;
    for (size_t i = 0; i < ne; i++) {
        if (zinc_lora_param_name(e[i].name)) continue;
        char an[300], bn[300];
        size_t L = strlen(e[i].name);
        if (L > 7 && !strcmp(e[i].name + L - 7, ".weight")) {
            snprintf(an, sizeof an, "%.*s.lora_A.weight", (int)(L - 7), e[i].name);
            snprintf(bn, sizeof bn, "%.*s.lora_B.weight", (int)(L - 7), e[i].name);
            int ia = find_weights(r, an), ib = find_weights(r, bn);
            if ((ia >= 0) != (ib >= 0)) {
                fprintf(stderr, "zinc-ckpt: %s: %s has one of lora_A and lora_B only\n", zinc_ckpt_reader_dir(r),
                        e[i].name);
                return 0;
            }
            if (ia >= 0) {
                m->ia[idx[i]] = ia, m->ib[idx[i]] = ib, merged++;
                rank = zinc_ckpt_reader_tensor(r, ia)->shape[0];
            }
        }
        e[k] = e[i];
        idx[k++] = idx[i];
        *total += (uint64_t)entry_numel(&e[k - 1]) * zinc_dtype_size(e[k - 1].dtype);
    }
    if (merged == 0) {
        fprintf(stderr, "zinc-ckpt: %s holds no LoRA adapters (a model.lora run's checkpoint): nothing to merge\n",
                zinc_ckpt_reader_dir(r));
        return 0;
    }
    const double alpha = json_number_value(json_object_get(lora, "alpha"));
    if (!(alpha > 0) || rank < 1) {
        fprintf(stderr, "zinc-ckpt: %s: the manifest's model.lora has no alpha > 0\n", zinc_ckpt_reader_dir(r));
        return 0;
    }
    m->scale = alpha / (json_is_true(json_object_get(lora, "use_rslora")) ? sqrt((double)rank) : (double)rank);
    return k;
}

static int cmd_export(zinc_aio *aio, const char *dir, const char *out, const char *dtype, const char *kind,
                      const char *format, uint64_t max_shard, int merge)
{
    merge_plan mp = {0};
    json_t *meta_j = NULL;
    zinc_ckpt_reader *r = NULL;
    int rc = 1;
    zinc_dtype want = ZINC_DTYPE_F32;
    if (dtype) {
        if (!strcmp(dtype, "f32")) want = ZINC_DTYPE_F32;
        else if (!strcmp(dtype, "bf16")) want = ZINC_DTYPE_BF16;
        else if (!strcmp(dtype, "f16")) want = ZINC_DTYPE_F16;
        else return usage("--dtype must be f32, bf16 or f16");
    }
    if (zinc_ckpt_reader_open(aio, dir, &r) != ZINC_OK) return fail();
    int n = zinc_ckpt_reader_n_tensors(r);
    /* no --kind: the model's weights, each parameter's fp32 master where it has one, else
     * its param (a frozen parameter has no master: model.freeze) */
    int weights = !kind, mixed_kinds = 0;
    if (!kind) {
        kind = "param";
        for (int i = 0; i < n; i++)
            if (!strcmp(zinc_ckpt_reader_tensor(r, i)->kind, "master")) kind = "master";
    }
    zinc_st_entry *e = calloc((size_t)n + 1, sizeof *e);
    int *idx = calloc((size_t)n + 1, sizeof *idx);
    size_t ne = 0;
    uint64_t total = 0;
    if (!e || !idx) {
        fprintf(stderr, "zinc-ckpt: out of memory\n");
        goto done;
    }
    /* a padded vocabulary (meta.vocab): only its real rows are written */
    json_error_t je;
    meta_j = json_loads(zinc_ckpt_reader_meta(r) ? zinc_ckpt_reader_meta(r) : "{}", 0, &je);
    json_t *vocab = json_object_get(meta_j, "vocab");
    const json_int_t vreal = json_integer_value(json_object_get(vocab, "real"));
    for (int i = 0; i < n; i++) {
        const zinc_ckpt_tensor *t = zinc_ckpt_reader_tensor(r, i);
        int take = !strcmp(t->kind, kind) ||
                   (weights && !strcmp(t->kind, "param") && zinc_ckpt_reader_find(r, t->name, "master") < 0);
        if (!take) continue;
        if (strcmp(t->kind, kind) != 0) mixed_kinds = 1;
        snprintf(e[ne].name, sizeof e[ne].name, "%s", t->name);
        e[ne].dtype = dtype && is_float(t->dtype) ? want : t->dtype;
        e[ne].ndim = t->ndim;
        memcpy(e[ne].shape, t->shape, sizeof t->shape);
        json_t *names = json_object_get(vocab, "tensors");
        for (size_t k = 0; vreal > 0 && k < json_array_size(names); k++)
            if (!strcmp(json_string_value(json_array_get(names, k)) ? json_string_value(json_array_get(names, k)) : "",
                        t->name) && t->ndim >= 1 && vreal < t->shape[0])
                e[ne].shape[0] = vreal;
        int64_t ne_el = 1;
        for (int d = 0; d < e[ne].ndim; d++) ne_el *= e[ne].shape[d];
        total += (uint64_t)ne_el * zinc_dtype_size(e[ne].dtype);
        idx[ne++] = i;
    }
    if (mixed_kinds) kind = "weights"; /* masters, and params where there is none */
    if (ne == 0) {
        fprintf(stderr, "zinc-ckpt: %s has no tensors of kind %s\n", zinc_ckpt_reader_dir(r), kind);
        goto done;
    }
    if (format && !strcmp(format, "peft")) {
        rc = export_peft(r, e, idx, ne, out, meta_j);
        goto done;
    }
    if (merge && (ne = merge_prepare(r, meta_j, e, idx, ne, &total, &mp)) == 0) goto done;
    if (format && !strcmp(format, "hf")) {
        rc = export_hf(r, e, idx, ne, total, out, max_shard, kind, merge ? &mp : NULL);
        goto done;
    }
    zinc_progress p;
    zinc_progress_init(&p, "export", isatty(STDERR_FILENO), 30, PROGRESS_MIN_BYTES);
    export_ctx x = {r, idx, e, &p, 0, total, merge ? &mp : NULL};
    const char *meta[] = {"format", "pt", "zinc_tag", zinc_ckpt_reader_tag(r), "zinc_kind", kind};
    zinc_status st = zinc_st_write(out, e, ne, export_src, &x, meta, 3);
    zinc_progress_end(&p);
    if (st != ZINC_OK) {
        fail();
        goto done;
    }
    printf("wrote %s: %zu tensors of kind %s%s, %.1f MiB\n", out, ne, kind, merge ? ", adapters merged" : "",
           mib(total));
    rc = 0;
done:
    json_decref(meta_j);
    free(mp.ia);
    free(mp.ib);
    free(mp.cache);
    free(e);
    free(idx);
    zinc_ckpt_reader_close(r);
    return rc;
}

/* "5GB", "500MB", "64KB" (powers of 1000, as transformers reads them) or bytes; 0 if bad. */
static uint64_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v <= 0) return 0;
    if (!strcasecmp(end, "GB")) v *= 1e9;
    else if (!strcasecmp(end, "MB")) v *= 1e6;
    else if (!strcasecmp(end, "KB")) v *= 1e3;
    else if (*end && strcasecmp(end, "B")) return 0;
    return (uint64_t)v;
}

/* config.json of a Hugging Face GPT-2 from the manifest's model section. */
static json_t *hf_gpt2_config(json_t *model, json_int_t vocab, const char *tdt)
{
    return json_pack("{s:s, s:[s], s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:f, s:b, s:s}", "model_type", "gpt2",
                     "architectures", "GPT2LMHeadModel", "n_layer", json_integer_value(json_object_get(model, "n_layer")),
                     "n_embd", json_integer_value(json_object_get(model, "n_embd")),
                     "n_head", json_integer_value(json_object_get(model, "n_head")),
                     "n_positions", json_integer_value(json_object_get(model, "block_size")),
                     "n_ctx", json_integer_value(json_object_get(model, "block_size")), "vocab_size", vocab,
                     "activation_function", "gelu_new", "layer_norm_epsilon", 1e-5, "tie_word_embeddings", 1,
                     "torch_dtype", tdt);
}

/* config.json of the Llama family: "llama", or "qwen2" when the model has q/k/v biases (a
 * Llama's attention_bias would put one on o_proj too). The manifest's model section holds
 * the resolved keys (0 for n_kv_head and intermediate_size: the defaults). */
static json_t *hf_llama_config(json_t *model, json_int_t vocab, const char *tdt)
{
#define MI(k) json_integer_value(json_object_get(model, k))
#define MN(k) json_number_value(json_object_get(model, k))
    const int bias = json_is_true(json_object_get(model, "attention_bias"));
    const json_int_t C = MI("n_embd"), nh = MI("n_head"), nkv = MI("n_kv_head") > 0 ? MI("n_kv_head") : nh;
    const json_int_t ffn = MI("intermediate_size") > 0 ? MI("intermediate_size") : (8 * C / 3 + 255) / 256 * 256;
    json_t *rs = json_object_get(model, "rope_scaling");
    const char *rt = json_string_value(json_object_get(rs, "type"));
    json_t *scaling = rt && !strcmp(rt, "llama3")
                          ? json_pack("{s:s, s:f, s:f, s:f, s:I}", "rope_type", "llama3", "factor",
                                      json_number_value(json_object_get(rs, "factor")), "low_freq_factor",
                                      json_number_value(json_object_get(rs, "low_freq_factor")), "high_freq_factor",
                                      json_number_value(json_object_get(rs, "high_freq_factor")),
                                      "original_max_position_embeddings",
                                      json_integer_value(json_object_get(rs, "original_max_position_embeddings")))
                          : json_null();
    json_t *c = json_pack("{s:s, s:[s], s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:b, s:s, s:o, s:s, s:f}",
                          "model_type", bias ? "qwen2" : "llama", "architectures",
                          bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM", "hidden_size", C, "intermediate_size", ffn,
                          "num_hidden_layers", MI("n_layer"), "num_attention_heads", nh, "num_key_value_heads", nkv,
                          "max_position_embeddings", MI("block_size"), "vocab_size", vocab, "rms_norm_eps",
                          MN("rms_norm_eps"), "rope_theta", MN("rope_theta"), "tie_word_embeddings",
                          json_is_true(json_object_get(model, "tie_word_embeddings")), "hidden_act", "silu",
                          "rope_scaling", scaling, "torch_dtype", tdt, "attention_dropout", 0.0);
    if (c && bias) json_object_set_new(c, "use_sliding_window", json_false());
    if (c && !bias) {
        json_object_set_new(c, "attention_bias", json_false());
        json_object_set_new(c, "mlp_bias", json_false());
    }
    return c;
#undef MI
#undef MN
}

static int copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = a ? fopen(to, "wb") : NULL;
    char buf[65536];
    size_t n;
    int ok = a && b;
    while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0) ok = fwrite(buf, 1, n, b) == n;
    if (a) fclose(a);
    if (b && fclose(b) != 0) ok = 0;
    return ok ? 0 : -1;
}

/* A Hugging Face model folder from a GPT-2 or Llama-family checkpoint: config.json from the resolved
 * config the manifest keeps, the weights as model.safetensors or as shards of at most
 * max_shard bytes (a bigger tensor alone) with model.safetensors.index.json, the padded
 * vocabulary cut to its real rows, and the tokenizer's files when the run had one. */
static int export_hf(zinc_ckpt_reader *r, zinc_st_entry *e, int *idx, size_t ne, uint64_t total, const char *out,
                     uint64_t max_shard, const char *kind, merge_plan *m)
{
    json_error_t je;
    json_t *meta = json_loads(zinc_ckpt_reader_meta(r) ? zinc_ckpt_reader_meta(r) : "{}", 0, &je);
    json_t *model = json_object_get(json_object_get(meta, "config"), "model");
    const char *type = json_string_value(json_object_get(model, "type"));
    int rc = 1;
    char path[1200];
    if (!type || (strcmp(type, "gpt2") && strcmp(type, "llama"))) {
        fprintf(stderr, "zinc-ckpt: %s: --format hf: model.type %s: zinc writes gpt2 and llama folders\n",
                zinc_ckpt_reader_dir(r), type ? type : "(missing)");
        goto done;
    }
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "zinc-ckpt: cannot make %s: %s\n", out, strerror(errno));
        goto done;
    }
    json_int_t vocab = json_integer_value(json_object_get(json_object_get(meta, "vocab"), "real"));
    if (vocab <= 0) vocab = json_integer_value(json_object_get(model, "vocab_size"));
    const char *tdt = e[0].dtype == ZINC_DTYPE_BF16 ? "bfloat16" : e[0].dtype == ZINC_DTYPE_F16 ? "float16" : "float32";
    json_t *cfg = !strcmp(type, "gpt2") ? hf_gpt2_config(model, vocab, tdt) : hf_llama_config(model, vocab, tdt);
    snprintf(path, sizeof path, "%s/config.json", out);
    if (!cfg || json_dump_file(cfg, path, JSON_INDENT(2)) != 0) {
        json_decref(cfg);
        fprintf(stderr, "zinc-ckpt: cannot write %s\n", path);
        goto done;
    }
    json_decref(cfg);
    /* shards: tensors in order, a new shard when the next would pass max_shard */
    size_t n_sh = 0, first[4096];
    uint64_t cur = 0;
    for (size_t i = 0; i < ne; i++) {
        int64_t el = 1;
        for (int d = 0; d < e[i].ndim; d++) el *= e[i].shape[d];
        const uint64_t b = (uint64_t)el * zinc_dtype_size(e[i].dtype);
        if (i == 0 || (cur > 0 && cur + b > max_shard)) {
            if (n_sh == sizeof first / sizeof *first) {
                fprintf(stderr, "zinc-ckpt: --max-shard-size gives more than 4096 shards\n");
                goto done;
            }
            first[n_sh++] = i;
            cur = 0;
        }
        cur += b;
    }
    json_t *wm = json_object();
    zinc_progress p;
    zinc_progress_init(&p, "export", isatty(STDERR_FILENO), 30, PROGRESS_MIN_BYTES);
    export_ctx x = {r, idx, e, &p, 0, total, m};
    const char *stmeta[] = {"format", "pt", "zinc_tag", zinc_ckpt_reader_tag(r), "zinc_kind", kind};
    for (size_t k = 0; k < n_sh; k++) {
        const size_t a = first[k], z = k + 1 < n_sh ? first[k + 1] : ne;
        char name[64];
        if (n_sh == 1) snprintf(name, sizeof name, "model.safetensors");
        else snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", k + 1, n_sh);
        snprintf(path, sizeof path, "%s/%s", out, name);
        export_ctx xs = x;
        xs.idx = idx + a;
        xs.e = e + a;
        zinc_status st = zinc_st_write(path, e + a, z - a, export_src, &xs, stmeta, 3);
        x.done = xs.done;
        if (st != ZINC_OK) {
            zinc_progress_end(&p);
            json_decref(wm);
            fail();
            goto done;
        }
        for (size_t i = a; i < z; i++) json_object_set_new(wm, e[i].name, json_string(name));
    }
    zinc_progress_end(&p);
    if (n_sh > 1) {
        json_t *ix = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total, "weight_map", wm);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", out);
        if (!ix || json_dump_file(ix, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0) {
            json_decref(ix);
            fprintf(stderr, "zinc-ckpt: cannot write %s\n", path);
            goto done;
        }
        json_decref(ix);
    } else {
        json_decref(wm);
    }
    /* the tokenizer's files, when the run had one */
    const char *tk = json_string_value(json_object_get(json_object_get(json_object_get(meta, "config"), "data"), "tokenizer"));
    int copied = 0;
    if (tk && strcmp(tk, "bytes")) {
        struct stat sb;
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", tk);
        if (stat(tk, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
            char *sl = strrchr(dir, '/');
            if (sl) *sl = 0;
            else snprintf(dir, sizeof dir, ".");
        }
        static const char *const files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", NULL};
        for (int i = 0; files[i]; i++) {
            char from[1100], to[1300];
            snprintf(from, sizeof from, "%s/%s", dir, files[i]);
            snprintf(to, sizeof to, "%s/%s", out, files[i]);
            if (access(from, R_OK) != 0) continue;
            if (copy_file(from, to) != 0) {
                fprintf(stderr, "zinc-ckpt: cannot copy %s to %s\n", from, to);
                goto done;
            }
            copied++;
        }
    }
    printf("wrote %s: config.json, %zu tensors of kind %s%s in %zu file%s (%.1f MiB)%s\n", out, ne, kind,
           m ? " (adapters merged)" : "", n_sh, n_sh > 1 ? "s + index" : "", mib(total),
           copied ? ", the tokenizer's files" : "");
    rc = 0;
done:
    json_decref(meta);
    return rc;
}

/* A PEFT adapter folder: adapter_model.safetensors with the adapters under PEFT's names
 * (base_model.model.<the transformers module path>.lora_A.weight (r, in), .lora_B.weight
 * (out, r)) and adapter_config.json from the run's model.lora. */
static int export_peft(zinc_ckpt_reader *r, zinc_st_entry *e, int *idx, size_t ne, const char *out, json_t *meta)
{
    json_t *model = json_object_get(json_object_get(meta, "config"), "model");
    json_t *lora = json_object_get(model, "lora");
    const char *type = json_string_value(json_object_get(model, "type"));
    const int gpt2 = type && !strcmp(type, "gpt2");
    const char *prefix = gpt2 ? "base_model.model.transformer." : "base_model.model.";
    json_t *targets = json_array(), *cfg = NULL;
    size_t k = 0;
    uint64_t total = 0;
    int64_t rank = 0;
    int rc = 1;
    char path[1200];
    for (size_t i = 0; i < ne; i++) {
        if (!zinc_lora_param_name(e[i].name)) continue;
        /* the module's last name ("c_attn", "q_proj"): the target_modules PEFT lists */
        char mod[256];
        snprintf(mod, sizeof mod, "%s", e[i].name);
        *strstr(mod, ".lora_") = 0;
        const char *last = strrchr(mod, '.') ? strrchr(mod, '.') + 1 : mod;
        int have = 0;
        for (size_t t = 0; t < json_array_size(targets); t++)
            have |= !strcmp(json_string_value(json_array_get(targets, t)), last);
        if (!have) json_array_append_new(targets, json_string(last));
        if (strstr(e[i].name, ".lora_A.")) rank = e[i].shape[0];
        e[k] = e[i];
        idx[k] = idx[i];
        snprintf(e[k].name, sizeof e[k].name, "%s%s", prefix, e[i].name);
        total += (uint64_t)entry_numel(&e[k]) * zinc_dtype_size(e[k].dtype);
        k++;
    }
    if (k == 0) {
        fprintf(stderr, "zinc-ckpt: %s holds no LoRA adapters (a model.lora run's checkpoint): no PEFT folder to "
                "write\n", zinc_ckpt_reader_dir(r));
        goto done;
    }
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "zinc-ckpt: cannot make %s: %s\n", out, strerror(errno));
        goto done;
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
    zinc_progress p;
    zinc_progress_init(&p, "export", isatty(STDERR_FILENO), 30, PROGRESS_MIN_BYTES);
    export_ctx x = {r, idx, e, &p, 0, total, NULL};
    const char *stmeta[] = {"format", "pt"};
    zinc_status st = zinc_st_write(path, e, k, export_src, &x, stmeta, 1);
    zinc_progress_end(&p);
    if (st != ZINC_OK) {
        fail();
        goto done;
    }
    json_t *base = json_object_get(model, "from_pretrained");
    if (!json_string_value(base) || !*json_string_value(base)) base = json_object_get(model, "init_from");
    const char *bname = json_string_value(base) ? json_string_value(base) : "";
    cfg = json_pack("{s:s, s:s, s:I, s:f, s:f, s:O, s:s, s:b, s:b, s:b, s:b, s:s, s:n, s:n, s:n, s:n, s:{}, s:{}}",
                    "peft_type", "LORA", "task_type", "CAUSAL_LM", "r", (json_int_t)rank, "lora_alpha",
                    json_number_value(json_object_get(lora, "alpha")), "lora_dropout",
                    json_number_value(json_object_get(lora, "dropout")), "target_modules", targets, "bias", "none",
                    "fan_in_fan_out", gpt2, "use_rslora", json_is_true(json_object_get(lora, "use_rslora")),
                    "inference_mode", 1, "init_lora_weights", 1, "base_model_name_or_path", bname,
                    "modules_to_save", "layers_to_transform", "layers_pattern", "revision", "rank_pattern",
                    "alpha_pattern");
    snprintf(path, sizeof path, "%s/adapter_config.json", out);
    if (!cfg || json_dump_file(cfg, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0) {
        fprintf(stderr, "zinc-ckpt: cannot write %s\n", path);
        goto done;
    }
    printf("wrote %s: adapter_model.safetensors (%zu tensors, r %lld, %.1f MiB), adapter_config.json\n", out, k,
           (long long)rank, mib(total));
    rc = 0;
done:
    json_decref(targets);
    json_decref(cfg);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage(NULL);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
        fputs(usage_text, stdout);
        return 0;
    }
    const char *pos[3] = {NULL, NULL, NULL}, *format = NULL, *dtype = NULL, *kind = NULL, *maxs = NULL;
    int np = 0, merge = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--merge")) {
            merge = 1;
            continue;
        }
        const char **opt = !strcmp(argv[i], "--format") ? &format
                           : !strcmp(argv[i], "--dtype") ? &dtype
                           : !strcmp(argv[i], "--kind")  ? &kind
                           : !strcmp(argv[i], "--max-shard-size") ? &maxs
                                                         : NULL;
        if (opt) {
            if (i + 1 >= argc) return usage("option needs a value");
            *opt = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            char msg[300];
            snprintf(msg, sizeof msg, "unknown option %.200s", argv[i]);
            return usage(msg);
        } else if (np < 3) {
            pos[np++] = argv[i];
        } else {
            return usage("too many arguments");
        }
    }
    int is_export = !strcmp(cmd, "export");
    if (!is_export && strcmp(cmd, "info") != 0 && strcmp(cmd, "verify") != 0) {
        char msg[300];
        snprintf(msg, sizeof msg, "unknown command %.200s", cmd);
        return usage(msg);
    }
    if (!is_export && (np != 1 || format || dtype || kind || maxs || merge)) return usage("info and verify take one DIR");
    uint64_t max_shard = (uint64_t)5e9; /* transformers' default */
    if (is_export) {
        if (np != 2) return usage("export needs DIR and OUT");
        if (format && strcmp(format, "safetensors") != 0 && strcmp(format, "hf") != 0 && strcmp(format, "peft") != 0)
            return usage("--format must be safetensors, hf or peft");
        if (format && !strcmp(format, "peft") && (merge || kind))
            return usage("--format peft writes the adapters: no --merge or --kind");
        if (merge && kind) return usage("--merge takes the weights: no --kind");
        if (maxs && !(format && !strcmp(format, "hf"))) return usage("--max-shard-size goes with --format hf");
        if (maxs && !(max_shard = parse_size(maxs))) return usage("--max-shard-size: expected a size like 5GB, 500MB or bytes");
    }
    zinc_aio_opts o;
    zinc_aio_opts_default(&o);
    zinc_aio *aio = NULL;
    if (zinc_aio_create(&o, &aio) != ZINC_OK) return fail();
    int rc = !strcmp(cmd, "info") ? cmd_info(aio, pos[0])
             : !strcmp(cmd, "verify") ? cmd_verify(aio, pos[0])
                                      : cmd_export(aio, pos[0], pos[1], dtype, kind, format, max_shard, merge);
    fflush(stdout);
    zinc_aio_destroy(aio);
    return rc;
}
