/* tokenizer.c - Hugging Face tokenizer.json BPE (zinc/tokenizer.h).
 *
 * Encoding, as `tokenizers` does it: the added tokens are found in the raw text first
 * (leftmost, longest); every stretch between them goes through the normalizers
 * (Prepend, Replace), the pre-tokenizers (Split by a regex into pieces; Metaspace;
 * ByteLevel: an optional leading space, GPT-2's split pattern, the byte-to-character
 * mapping), and each piece through BPE: its symbols (byte-level: each byte's mapped
 * character; else each character, or its "<0xXX>" bytes, or unk), then merges, lowest
 * rank first and the leftmost of equal ranks, one at a time from a heap of candidates
 * (tokenizers' Word::merge_all), until no adjacent pair has one (with ignore_merges a
 * piece that is a token as a whole is that token). Merges are looked up by the pair of
 * token ids. No piece cache yet.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "zinc/tokenizer.h"

/* ------------------------------------------------------------ hash maps */

static uint64_t fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* strings -> ids: keys point into the tokenizer's token texts */
typedef struct strmap {
    const char **key;
    int32_t *klen, *val;
    size_t cap; /* power of two, at least twice the entries */
} strmap;

static int strmap_init(strmap *m, size_t n)
{
    m->cap = 16;
    while (m->cap < 2 * n + 1) m->cap <<= 1;
    m->key = calloc(m->cap, sizeof *m->key);
    m->klen = calloc(m->cap, sizeof *m->klen);
    m->val = calloc(m->cap, sizeof *m->val);
    return m->key && m->klen && m->val ? 0 : -1;
}

static void strmap_free(strmap *m)
{
    free(m->key);
    free(m->klen);
    free(m->val);
}

/* the slot of (s, n): its entry, or the empty slot it would take */
static size_t strmap_slot(const strmap *m, const char *s, size_t n)
{
    size_t i = fnv(s, n) & (m->cap - 1);
    while (m->key[i] && !((size_t)m->klen[i] == n && !memcmp(m->key[i], s, n))) i = (i + 1) & (m->cap - 1);
    return i;
}

static int32_t strmap_get(const strmap *m, const char *s, size_t n)
{
    size_t i = strmap_slot(m, s, n);
    return m->key[i] ? m->val[i] : -1;
}

/* pairs of ids -> (rank, merged id) */
typedef struct pairmap {
    uint64_t *key; /* (a << 32 | b) + 1; 0: empty */
    int32_t *rank, *id;
    size_t cap;
} pairmap;

static int pairmap_init(pairmap *m, size_t n)
{
    m->cap = 16;
    while (m->cap < 2 * n + 1) m->cap <<= 1;
    m->key = calloc(m->cap, sizeof *m->key);
    m->rank = calloc(m->cap, sizeof *m->rank);
    m->id = calloc(m->cap, sizeof *m->id);
    return m->key && m->rank && m->id ? 0 : -1;
}

static void pairmap_free(pairmap *m)
{
    free(m->key);
    free(m->rank);
    free(m->id);
}

static size_t pairmap_slot(const pairmap *m, uint64_t k)
{
    size_t i = mix64(k) & (m->cap - 1);
    while (m->key[i] && m->key[i] != k) i = (i + 1) & (m->cap - 1);
    return i;
}

static inline uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1; }

/* ------------------------------------------------------------ the tokenizer */

enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE };
enum { NORM_PREPEND, NORM_REPLACE };

typedef struct norm_step {
    int kind;
    char *a, *b; /* Prepend: a; Replace: a -> b (literal strings) */
    size_t la, lb;
} norm_step;
enum { SPLIT_ISOLATED, SPLIT_REMOVED };

typedef struct pre_step {
    int kind;
    pcre2_code *re;   /* the split pattern (ByteLevel: GPT-2's when use_regex), or NULL */
    int behavior;     /* SPLIT_* */
    int prefix_space; /* ByteLevel add_prefix_space */
    char repl[8];     /* Metaspace: the replacement of ' ' (UTF-8) */
    int repl_len, prepend, split; /* prepend: 0 never, 1 first, 2 always */
} pre_step;

typedef struct added_tok {
    const char *s;
    int32_t len, id;
} added_tok;

struct zinc_tokenizer {
    char file[512];
    char **text;      /* id -> token text (NULL for an id no token has) */
    int32_t *text_len;
    int64_t n_ids;
    strmap vocab;
    pairmap merges;
    int ignore_merges;
    pre_step pre[8];
    int n_pre;
    norm_step norm[8];
    int n_norm;
    int byte_level;       /* pieces are bytes (a ByteLevel step); else characters (SentencePiece style) */
    int byte_fallback, fuse_unk;
    int32_t unk_id;       /* -1: none */
    int32_t fb_id[256];   /* byte_fallback: the "<0xXX>" tokens (-1: missing) */
    int strip_space;      /* decoding drops the one leading space the normalizer or Metaspace prepended */
    char meta[8];         /* the character that stands for a space (Metaspace, Replace " "), "" none */
    int meta_len;
    int32_t post_pre[8], post_post[8]; /* the post-processor's special tokens before / after a text */
    int n_post_pre, n_post_post;
    char post_why[200];   /* why encoding with special tokens is refused ("" when it is not) */
    added_tok *added;  /* by first byte, then longest first */
    int n_added;
    int first_added[257]; /* added[first_added[b] .. first_added[b + 1]) start with byte b */
    int32_t byte_id[256];  /* the token of each byte's mapped character */
    char byte_chr[256][3]; /* that character in UTF-8, and its length */
    int byte_chr_len[256];
    int16_t cp_byte[324];  /* mapped code point -> byte (-1: none) */
};

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to 256 + k. */
static void byte_map(zinc_tokenizer *t)
{
    int n = 0;
    for (int i = 0; i < 324; i++) t->cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        const int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        const int cp = keep ? b : 256 + n++;
        t->cp_byte[cp] = (int16_t)b;
        if (cp < 0x80) {
            t->byte_chr[b][0] = (char)cp;
            t->byte_chr_len[b] = 1;
        } else {
            t->byte_chr[b][0] = (char)(0xC0 | (cp >> 6));
            t->byte_chr[b][1] = (char)(0x80 | (cp & 0x3F));
            t->byte_chr_len[b] = 2;
        }
    }
}

static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static zinc_status compile_re(const zinc_tokenizer *t, const char *pat, int literal, const char *key, pcre2_code **out)
{
    int err;
    PCRE2_SIZE off;
    uint32_t flags = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    *out = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, flags, &err, &off, NULL);
    if (!*out) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        return zinc_error(ZINC_ERR_CORRUPT, "%s: %s: the regex does not compile at offset %zu: %s", t->file, key,
                          (size_t)off, (const char *)msg);
    }
    pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE); /* without JIT it still matches, slower */
    return ZINC_OK;
}

static int is_false_or_null(json_t *v) { return !v || json_is_null(v) || json_is_false(v); }

static zinc_status load_pre(zinc_tokenizer *t, json_t *p, const char *key)
{
    if (!p || json_is_null(p)) return ZINC_OK;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type) return zinc_error(ZINC_ERR_CORRUPT, "%s: %s.type: expected a string", t->file, key);
    if (!strcmp(type, "Sequence")) {
        json_t *a = json_object_get(p, "pretokenizers");
        if (!json_is_array(a)) return zinc_error(ZINC_ERR_CORRUPT, "%s: %s.pretokenizers: expected an array", t->file, key);
        for (size_t i = 0; i < json_array_size(a); i++) {
            char k[96];
            snprintf(k, sizeof k, "%s.pretokenizers[%zu]", key, i);
            zinc_status st = load_pre(t, json_array_get(a, i), k);
            if (st != ZINC_OK) return st;
        }
        return ZINC_OK;
    }
    if (t->n_pre == (int)(sizeof t->pre / sizeof *t->pre))
        return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: %s: more than 8 pre-tokenizers", t->file, key);
    if (t->n_pre > 0 && t->pre[t->n_pre - 1].kind == PRE_BYTELEVEL)
        return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: %s: a pre-tokenizer after ByteLevel is not supported", t->file, key);
    pre_step *s = &t->pre[t->n_pre];
    memset(s, 0, sizeof *s);
    if (!strcmp(type, "ByteLevel")) {
        s->kind = PRE_BYTELEVEL;
        s->prefix_space = json_is_true(json_object_get(p, "add_prefix_space"));
        json_t *ur = json_object_get(p, "use_regex");
        if (!ur || json_is_true(ur)) {
            zinc_status st = compile_re(t, GPT2_PATTERN, 0, key, &s->re);
            if (st != ZINC_OK) return st;
        }
        t->n_pre++;
        return ZINC_OK;
    }
    if (!strcmp(type, "Metaspace")) {
        s->kind = PRE_METASPACE;
        const char *r = json_string_value(json_object_get(p, "replacement"));
        if (!r || !*r || strlen(r) >= sizeof s->repl)
            return zinc_error(ZINC_ERR_CORRUPT, "%s: %s.replacement: expected one character", t->file, key);
        snprintf(s->repl, sizeof s->repl, "%s", r);
        s->repl_len = (int)strlen(r);
        const char *ps = json_string_value(json_object_get(p, "prepend_scheme"));
        if (ps) s->prepend = !strcmp(ps, "always") ? 2 : !strcmp(ps, "first") ? 1 : 0;
        else s->prepend = json_is_false(json_object_get(p, "add_prefix_space")) ? 0 : 2; /* older files */
        if (ps && strcmp(ps, "always") && strcmp(ps, "first") && strcmp(ps, "never"))
            return zinc_error(ZINC_ERR_CORRUPT, "%s: %s.prepend_scheme \"%s\": expected always, first or never", t->file, key, ps);
        json_t *sp = json_object_get(p, "split");
        s->split = !sp || json_is_true(sp);
        if (s->prepend) t->strip_space = 1;
        snprintf(t->meta, sizeof t->meta, "%s", s->repl);
        t->meta_len = s->repl_len;
        t->n_pre++;
        return ZINC_OK;
    }
    if (!strcmp(type, "Split")) {
        s->kind = PRE_SPLIT;
        json_t *pat = json_object_get(p, "pattern");
        const char *rx = json_string_value(json_object_get(pat, "Regex"));
        const char *lit = json_string_value(json_object_get(pat, "String"));
        const char *beh = json_string_value(json_object_get(p, "behavior"));
        if (!rx && !lit) return zinc_error(ZINC_ERR_CORRUPT, "%s: %s.pattern: expected {\"Regex\": ...} or {\"String\": ...}", t->file, key);
        if (!beh || (strcmp(beh, "Isolated") && strcmp(beh, "Removed")))
            return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: %s.behavior \"%s\": zinc splits \"Isolated\" or \"Removed\" only", t->file,
                              key, beh ? beh : "(none)");
        if (!is_false_or_null(json_object_get(p, "invert")))
            return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: %s.invert true is not supported", t->file, key);
        s->behavior = strcmp(beh, "Isolated") ? SPLIT_REMOVED : SPLIT_ISOLATED;
        zinc_status st = compile_re(t, rx ? rx : lit, !rx, key, &s->re);
        if (st != ZINC_OK) return st;
        t->n_pre++;
        return ZINC_OK;
    }
    return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: %s.type \"%s\": zinc's tokenizer takes ByteLevel, Metaspace, Split and "
                      "Sequence pre-tokenizers", t->file, key, type);
}

static zinc_status load_norm(zinc_tokenizer *t, json_t *p, const char *key)
{
    if (!p || json_is_null(p)) return ZINC_OK;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type) return zinc_error(ZINC_ERR_CORRUPT, "%s: %s.type: expected a string", t->file, key);
    if (!strcmp(type, "Sequence")) {
        json_t *a = json_object_get(p, "normalizers");
        if (!json_is_array(a)) return zinc_error(ZINC_ERR_CORRUPT, "%s: %s.normalizers: expected an array", t->file, key);
        for (size_t i = 0; i < json_array_size(a); i++) {
            char k[96];
            snprintf(k, sizeof k, "%s.normalizers[%zu]", key, i);
            zinc_status st = load_norm(t, json_array_get(a, i), k);
            if (st != ZINC_OK) return st;
        }
        return ZINC_OK;
    }
    if (t->n_norm == (int)(sizeof t->norm / sizeof *t->norm))
        return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: %s: more than 8 normalizers", t->file, key);
    norm_step *n = &t->norm[t->n_norm];
    const char *a = NULL, *b = NULL;
    if (!strcmp(type, "Prepend")) {
        n->kind = NORM_PREPEND;
        a = json_string_value(json_object_get(p, "prepend"));
        b = "";
    } else if (!strcmp(type, "Replace")) {
        n->kind = NORM_REPLACE;
        a = json_string_value(json_object_get(json_object_get(p, "pattern"), "String"));
        b = json_string_value(json_object_get(p, "content"));
        if (!a && json_object_get(json_object_get(p, "pattern"), "Regex"))
            return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: %s: a Replace by regex is not supported yet", t->file, key);
    } else {
        return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: normalizer %s: not supported yet (zinc takes Prepend and Replace)",
                          t->file, type);
    }
    if (!a || !b || (n->kind == NORM_REPLACE && !*a))
        return zinc_error(ZINC_ERR_CORRUPT, "%s: %s: the %s normalizer's strings are missing", t->file, key, type);
    n->a = strdup(a);
    n->b = strdup(b);
    if (!n->a || !n->b) return zinc_error(ZINC_ERR_NOMEM, "%s: normalizer", t->file);
    n->la = strlen(a);
    n->lb = strlen(b);
    if (n->kind == NORM_PREPEND) t->strip_space = 1;
    if (n->kind == NORM_REPLACE && !strcmp(a, " ") && n->lb < sizeof t->meta) {
        snprintf(t->meta, sizeof t->meta, "%s", b);
        t->meta_len = (int)n->lb;
    }
    t->n_norm++;
    return ZINC_OK;
}

/* The post-processor's single-text template: its special tokens before and after the text.
 * A kind zinc does not apply is noted (post_why) and refused only when special tokens are
 * asked for. */
static zinc_status load_post(zinc_tokenizer *t, json_t *p)
{
    if (!p || json_is_null(p)) return ZINC_OK;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type) return zinc_error(ZINC_ERR_CORRUPT, "%s: post_processor.type: expected a string", t->file);
    if (!strcmp(type, "Sequence")) {
        json_t *a = json_object_get(p, "processors");
        for (size_t i = 0; json_is_array(a) && i < json_array_size(a); i++) {
            zinc_status st = load_post(t, json_array_get(a, i));
            if (st != ZINC_OK) return st;
        }
        return ZINC_OK;
    }
    if (!strcmp(type, "ByteLevel")) return ZINC_OK; /* offsets only */
    if (strcmp(type, "TemplateProcessing")) {
        snprintf(t->post_why, sizeof t->post_why, "post_processor %s is not applied by zinc yet", type);
        return ZINC_OK;
    }
    json_t *single = json_object_get(p, "single"), *sp = json_object_get(p, "special_tokens");
    int after = 0;
    for (size_t i = 0; json_is_array(single) && i < json_array_size(single); i++) {
        json_t *it = json_array_get(single, i);
        if (json_object_get(it, "Sequence")) {
            after = 1;
            continue;
        }
        const char *name = json_string_value(json_object_get(json_object_get(it, "SpecialToken"), "id"));
        json_t *ids = json_object_get(json_object_get(sp, name ? name : ""), "ids");
        if (!name || !json_is_array(ids))
            return zinc_error(ZINC_ERR_CORRUPT, "%s: post_processor.single[%zu]: a special token without ids", t->file, i);
        for (size_t k = 0; k < json_array_size(ids); k++) {
            json_t *v = json_array_get(ids, k);
            int32_t *dst = after ? t->post_post : t->post_pre;
            int *n = after ? &t->n_post_post : &t->n_post_pre;
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= t->n_ids ||
                !t->text[json_integer_value(v)])
                return zinc_error(ZINC_ERR_CORRUPT, "%s: post_processor: special token %s has id %s, not in the vocabulary",
                                  t->file, name, json_is_integer(v) ? "out of range" : "not an integer");
            if (*n == 8) return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: post_processor: more than 8 special tokens", t->file);
            dst[(*n)++] = (int32_t)json_integer_value(v);
        }
    }
    return ZINC_OK;
}

static int cmp_added(const void *a, const void *b)
{
    const added_tok *x = a, *y = b;
    const unsigned char fx = (unsigned char)x->s[0], fy = (unsigned char)y->s[0];
    if (fx != fy) return fx < fy ? -1 : 1;
    return y->len - x->len; /* longest first */
}

/* Sets token id's text (a copy), growing the id table. */
static int set_text(zinc_tokenizer *t, int32_t id, const char *s, size_t n)
{
    if (id >= t->n_ids) {
        int64_t cap = t->n_ids ? t->n_ids : 1024;
        while (cap <= id) cap *= 2;
        char **nt = realloc(t->text, (size_t)cap * sizeof *nt);
        if (!nt) return -1;
        t->text = nt;
        int32_t *nl = realloc(t->text_len, (size_t)cap * sizeof *nl);
        if (!nl) return -1;
        t->text_len = nl;
        for (int64_t i = t->n_ids; i < cap; i++) t->text[i] = NULL, t->text_len[i] = 0;
        t->n_ids = cap;
    }
    if (t->text[id]) return (size_t)t->text_len[id] == n && !memcmp(t->text[id], s, n) ? 0 : -2;
    t->text[id] = malloc(n + 1);
    if (!t->text[id]) return -1;
    memcpy(t->text[id], s, n);
    t->text[id][n] = 0;
    t->text_len[id] = (int32_t)n;
    return 0;
}

static zinc_status load_json(zinc_tokenizer *t, json_t *root)
{
    json_t *model = json_object_get(root, "model");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!type) return zinc_error(ZINC_ERR_CORRUPT, "%s: model.type: expected a string", t->file);
    if (strcmp(type, "BPE"))
        return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: model.type \"%s\": zinc encodes BPE models only", t->file, type);
    static const char *const must_be_off[] = {"continuing_subword_prefix", "end_of_word_suffix", "dropout", NULL};
    for (int i = 0; must_be_off[i]; i++)
        if (!is_false_or_null(json_object_get(model, must_be_off[i])))
            return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: model.%s is set: not supported yet", t->file, must_be_off[i]);
    zinc_status nst = load_norm(t, json_object_get(root, "normalizer"), "normalizer");
    if (nst != ZINC_OK) return nst;
    t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    t->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    t->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab) || json_object_size(vocab) == 0)
        return zinc_error(ZINC_ERR_CORRUPT, "%s: model.vocab: expected an object of the tokens", t->file);
    json_t *added = json_object_get(root, "added_tokens");
    const size_t n_vocab = json_object_size(vocab), n_added = json_is_array(added) ? json_array_size(added) : 0;
    if (strmap_init(&t->vocab, n_vocab + n_added) != 0) return zinc_error(ZINC_ERR_NOMEM, "%s: vocabulary", t->file);
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v) {
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
        if (id < 0 || id > INT32_MAX - 1)
            return zinc_error(ZINC_ERR_CORRUPT, "%s: model.vocab[\"%.40s\"]: expected an id >= 0", t->file, k);
        const int rc = set_text(t, (int32_t)id, k, strlen(k));
        if (rc == -2) return zinc_error(ZINC_ERR_CORRUPT, "%s: model.vocab: id %lld is given to two tokens", t->file, (long long)id);
        if (rc != 0) return zinc_error(ZINC_ERR_NOMEM, "%s: vocabulary", t->file);
        size_t sl = strmap_slot(&t->vocab, k, strlen(k));
        t->vocab.key[sl] = t->text[id];
        t->vocab.klen[sl] = (int32_t)strlen(k);
        t->vocab.val[sl] = (int32_t)id;
    }
    /* added tokens: ids of their own or of vocabulary entries */
    t->added = calloc(n_added ? n_added : 1, sizeof *t->added);
    if (!t->added) return zinc_error(ZINC_ERR_NOMEM, "%s: added tokens", t->file);
    for (size_t i = 0; i < n_added; i++) {
        json_t *a = json_array_get(added, i);
        const char *c = json_string_value(json_object_get(a, "content"));
        json_t *idv = json_object_get(a, "id");
        if (!c || !*c || !json_is_integer(idv) || json_integer_value(idv) < 0 || json_integer_value(idv) > INT32_MAX - 1)
            return zinc_error(ZINC_ERR_CORRUPT, "%s: added_tokens[%zu]: expected a non-empty content and an id >= 0", t->file, i);
        static const char *const flags[] = {"single_word", "lstrip", "rstrip", NULL};
        for (int f = 0; flags[f]; f++)
            if (json_is_true(json_object_get(a, flags[f])))
                return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: added_tokens[%zu] \"%.40s\": %s true is not supported yet",
                                  t->file, i, c, flags[f]);
        const int32_t id = (int32_t)json_integer_value(idv);
        const int rc = set_text(t, id, c, strlen(c));
        if (rc == -2)
            return zinc_error(ZINC_ERR_CORRUPT, "%s: added_tokens[%zu] \"%.40s\": id %d is another token's", t->file, i, c, id);
        if (rc != 0) return zinc_error(ZINC_ERR_NOMEM, "%s: added tokens", t->file);
        size_t sl = strmap_slot(&t->vocab, c, strlen(c));
        t->vocab.key[sl] = t->text[id];
        t->vocab.klen[sl] = (int32_t)strlen(c);
        t->vocab.val[sl] = id;
        t->added[t->n_added++] = (added_tok){t->text[id], (int32_t)strlen(c), id};
    }
    qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added);
    for (int b = 0, i = 0; b <= 256; b++) {
        while (i < t->n_added && (unsigned char)t->added[i].s[0] < b) i++;
        t->first_added[b] = i;
    }
    /* merges: "a b" or [a, b] */
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges)) return zinc_error(ZINC_ERR_CORRUPT, "%s: model.merges: expected an array", t->file);
    if (pairmap_init(&t->merges, json_array_size(merges)) != 0) return zinc_error(ZINC_ERR_NOMEM, "%s: merges", t->file);
    char *buf = NULL;
    size_t bcap = 0;
    for (size_t r = 0; r < json_array_size(merges); r++) {
        json_t *m = json_array_get(merges, r);
        const char *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        if (json_is_string(m)) {
            const char *s = json_string_value(m), *sp = strchr(s, ' ');
            if (sp) a = s, la = (size_t)(sp - s), b = sp + 1, lb = strlen(sp + 1);
        } else if (json_is_array(m) && json_array_size(m) == 2) {
            a = json_string_value(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            la = a ? strlen(a) : 0;
            lb = b ? strlen(b) : 0;
        }
        if (!a || !b) {
            free(buf);
            return zinc_error(ZINC_ERR_CORRUPT, "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", t->file, r);
        }
        if (la + lb > bcap) {
            bcap = 2 * (la + lb) + 64;
            char *nb = realloc(buf, bcap);
            if (!nb) {
                free(buf);
                return zinc_error(ZINC_ERR_NOMEM, "%s: merges", t->file);
            }
            buf = nb;
        }
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        const int32_t ia = strmap_get(&t->vocab, a, la), ib = strmap_get(&t->vocab, b, lb),
                      im = strmap_get(&t->vocab, buf, la + lb);
        if (ia < 0 || ib < 0 || im < 0) {
            free(buf);
            return zinc_error(ZINC_ERR_CORRUPT, "%s: model.merges[%zu]: \"%.*s\" + \"%.*s\" names a token the vocabulary "
                              "does not have", t->file, r, (int)(la > 40 ? 40 : la), a, (int)(lb > 40 ? 40 : lb), b);
        }
        size_t sl = pairmap_slot(&t->merges, pair_key(ia, ib));
        if (!t->merges.key[sl]) { /* a repeated merge keeps its first (lowest) rank */
            t->merges.key[sl] = pair_key(ia, ib);
            t->merges.rank[sl] = (int32_t)r;
            t->merges.id[sl] = im;
        }
    }
    free(buf);
    zinc_status st = load_pre(t, json_object_get(root, "pre_tokenizer"), "pre_tokenizer");
    if (st != ZINC_OK) return st;
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    t->unk_id = unk ? strmap_get(&t->vocab, unk, strlen(unk)) : -1;
    if (unk && t->unk_id < 0)
        return zinc_error(ZINC_ERR_CORRUPT, "%s: model.unk_token \"%.40s\" is not in the vocabulary", t->file, unk);
    for (int b = 0; b < 256; b++) {
        char fb[8];
        snprintf(fb, sizeof fb, "<0x%02X>", b);
        t->fb_id[b] = strmap_get(&t->vocab, fb, 6);
    }
    t->byte_level = t->n_pre > 0 && t->pre[t->n_pre - 1].kind == PRE_BYTELEVEL;
    st = load_post(t, json_object_get(root, "post_processor"));
    if (st != ZINC_OK) return st;
    byte_map(t);
    for (int b = 0; b < 256 && t->byte_level; b++) {
        t->byte_id[b] = strmap_get(&t->vocab, t->byte_chr[b], (size_t)t->byte_chr_len[b]);
        if (t->byte_id[b] < 0)
            return zinc_error(ZINC_ERR_CORRUPT, "%s: model.vocab has no token for byte 0x%02x (\"%.*s\"): a byte-level "
                              "vocabulary holds all 256", t->file, b, t->byte_chr_len[b], t->byte_chr[b]);
    }
    return ZINC_OK;
}

zinc_status zinc_tokenizer_load(const char *path, zinc_tokenizer **out)
{
    *out = NULL;
    zinc_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return zinc_error(ZINC_ERR_NOMEM, "tokenizer");
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        snprintf(t->file, sizeof t->file, "%s/tokenizer.json", path);
    else
        snprintf(t->file, sizeof t->file, "%s", path);
    json_error_t je;
    json_t *root = json_load_file(t->file, JSON_REJECT_DUPLICATES, &je);
    zinc_status st;
    if (!root) {
        st = access(t->file, R_OK) != 0
                 ? zinc_error(ZINC_ERR_IO, "%s: cannot read the tokenizer: %s", t->file, strerror(errno))
                 : zinc_error(ZINC_ERR_CORRUPT, "%s:%d:%d: not a tokenizer.json: %s", t->file, je.line, je.column, je.text);
    } else {
        st = load_json(t, root);
        json_decref(root);
    }
    if (st != ZINC_OK) {
        zinc_tokenizer_free(t);
        return st;
    }
    *out = t;
    return ZINC_OK;
}

void zinc_tokenizer_free(zinc_tokenizer *t)
{
    if (!t) return;
    for (int64_t i = 0; i < t->n_ids; i++) free(t->text[i]);
    free(t->text);
    free(t->text_len);
    strmap_free(&t->vocab);
    pairmap_free(&t->merges);
    for (int i = 0; i < t->n_pre; i++) pcre2_code_free(t->pre[i].re);
    for (int i = 0; i < t->n_norm; i++) free(t->norm[i].a), free(t->norm[i].b);
    free(t->added);
    free(t);
}

int64_t zinc_tokenizer_vocab_size(const zinc_tokenizer *t)
{
    int64_t n = t->n_ids;
    while (n > 0 && !t->text[n - 1]) n--;
    return n;
}

int32_t zinc_tokenizer_token_id(const zinc_tokenizer *t, const char *token)
{
    return strmap_get(&t->vocab, token, strlen(token));
}

/* ------------------------------------------------------------ encoding */

/* Length of the valid UTF-8 prefix of s. */
static size_t utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        const unsigned c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) k = 1, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF) k = 2, cp = c & 0x0F;
        else if (c >= 0xF0 && c <= 0xF4) k = 3, cp = c & 0x07;
        else return i;
        if (i + k >= n) return i; /* a sequence cut short */
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return i;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return i;
        i += k + 1;
    }
    return n;
}

typedef struct piece {
    const char *p; /* in the text, or in the arena (a copy with a leading space) */
    size_t len;
} piece;

typedef struct enc {
    const zinc_tokenizer *t;
    piece *a, *b; /* pieces in, out of a step */
    size_t na, nb, cap;
    int32_t *sym;
    size_t sym_cap;
    char *chr;
    size_t chr_cap;
    char **arena; /* the copies */
    size_t n_arena, arena_cap;
    int32_t *links; /* merge_all's prev and next links */
    size_t link_cap;
    struct cand { int32_t rank, pos, id; } *heap;
    size_t heap_cap;
    pcre2_match_data *md;
} enc;

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int out_piece(enc *e, const char *p, size_t len)
{
    if (len == 0) return 0;
    if (e->nb == e->cap) {
        size_t c = e->cap ? 2 * e->cap : 256;
        piece *na = realloc(e->a, c * sizeof *na), *nb;
        if (!na) return -1;
        e->a = na;
        nb = realloc(e->b, c * sizeof *nb);
        if (!nb) return -1;
        e->b = nb;
        e->cap = c;
    }
    e->b[e->nb++] = (piece){p, len};
    return 0;
}

static void swap_pieces(enc *e)
{
    piece *t = e->a;
    e->a = e->b;
    e->b = t;
    e->na = e->nb;
    e->nb = 0;
}

/* Splits each piece of a by re into b: the matches, and (isolated) the stretches between. */
static int split_step(enc *e, const pcre2_code *re, int behavior)
{
    e->nb = 0;
    for (size_t i = 0; i < e->na; i++) {
        const piece p = e->a[i];
        size_t at = 0, gap = 0;
        while (at < p.len) {
            int rc = pcre2_match(re, (PCRE2_SPTR)p.p, p.len, at, PCRE2_NO_UTF_CHECK, e->md, NULL);
            if (rc < 0) break;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
            const size_t s = ov[0], z = ov[1];
            if (z == s) { /* an empty match: step one character on */
                at = s + 1;
                while (at < p.len && ((unsigned char)p.p[at] & 0xC0) == 0x80) at++;
                continue;
            }
            if (s > gap && behavior == SPLIT_ISOLATED && out_piece(e, p.p + gap, s - gap) != 0) return -1;
            if (behavior == SPLIT_ISOLATED && out_piece(e, p.p + s, z - s) != 0) return -1;
            gap = at = z;
        }
        if (gap < p.len && out_piece(e, p.p + gap, p.len - gap) != 0) return -1;
    }
    swap_pieces(e);
    return 0;
}

/* A copy of len bytes in the arena (freed with the encoding). */
static char *arena_copy(enc *e, const char *p, size_t len, size_t extra)
{
    char *c = malloc(len + extra + 1);
    if (!c || grow((void **)&e->arena, &e->arena_cap, e->n_arena + 1, sizeof *e->arena) != 0) {
        free(c);
        return NULL;
    }
    e->arena[e->n_arena++] = c;
    if (len) memcpy(c, p, len);
    return c;
}

/* ByteLevel's add_prefix_space: a piece not starting with a space gets one (a copy). */
static int prefix_spaces(enc *e)
{
    for (size_t i = 0; i < e->na; i++) {
        piece *p = &e->a[i];
        if (p->len > 0 && p->p[0] == ' ') continue;
        char *c = arena_copy(e, NULL, 0, p->len + 1);
        if (!c) return -1;
        c[0] = ' ';
        memcpy(c + 1, p->p, p->len);
        p->p = c;
        p->len++;
    }
    return 0;
}

/* The min-heap of candidate merges: lowest rank first, then leftmost. */
static int cand_less(const struct cand *a, const struct cand *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static int heap_push(enc *e, size_t *n, struct cand c)
{
    if (grow((void **)&e->heap, &e->heap_cap, *n + 1, sizeof *e->heap) != 0) return -1;
    size_t i = (*n)++;
    while (i > 0 && cand_less(&c, &e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = c;
    return 0;
}

static struct cand heap_pop(enc *e, size_t *n)
{
    struct cand top = e->heap[0], last = e->heap[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_less(&e->heap[c + 1], &e->heap[c])) c++;
        if (!cand_less(&e->heap[c], &last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (*n) e->heap[i] = last;
    return top;
}

static int merge_of(const zinc_tokenizer *t, int32_t a, int32_t b, struct cand *c, int32_t pos)
{
    const size_t sl = pairmap_slot(&t->merges, pair_key(a, b));
    if (!t->merges.key[sl]) return 0;
    *c = (struct cand){t->merges.rank[sl], pos, t->merges.id[sl]};
    return 1;
}

/* tokenizers' Word::merge_all: the symbols sym[0..k) as a linked list; candidate merges
 * of adjacent pairs in a heap; the best one applied if still current, and the new pairs
 * it makes with its neighbours pushed. Returns the symbols left (compacted in sym). */
static long merge_all(enc *e, int32_t *sym, size_t k)
{
    const zinc_tokenizer *t = e->t;
    if (k < 2) return (long)k;
    if (grow((void **)&e->links, &e->link_cap, 2 * k, sizeof *e->links) != 0) return -1;
    int32_t *prev = e->links, *next = e->links + k;
    size_t nh = 0;
    for (size_t i = 0; i < k; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < k ? (int32_t)i + 1 : -1;
        struct cand c;
        if (i + 1 < k && merge_of(t, sym[i], sym[i + 1], &c, (int32_t)i) && heap_push(e, &nh, c) != 0) return -1;
    }
    while (nh) {
        const struct cand c = heap_pop(e, &nh);
        const int32_t i = c.pos, j = next[i];
        if (sym[i] < 0 || j < 0) continue; /* merged away, or the last symbol now */
        struct cand now;
        if (!merge_of(t, sym[i], sym[j], &now, i) || now.id != c.id) continue; /* stale */
        sym[i] = c.id;
        sym[j] = -1;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        struct cand nc;
        if (prev[i] >= 0 && merge_of(t, sym[prev[i]], sym[i], &nc, prev[i]) && heap_push(e, &nh, nc) != 0) return -1;
        if (next[i] >= 0 && merge_of(t, sym[i], sym[next[i]], &nc, i) && heap_push(e, &nh, nc) != 0) return -1;
    }
    size_t m = 0;
    for (size_t i = 0; i < k; i++)
        if (sym[i] >= 0) sym[m++] = sym[i];
    return (long)m;
}

/* The piece's initial symbols: byte-level, each byte's mapped character; otherwise each
 * character, or its "<0xXX>" bytes (byte_fallback), or unk (consecutive ones fused). */
static long piece_symbols(enc *e, const piece *p)
{
    const zinc_tokenizer *t = e->t;
    const unsigned char *s = (const unsigned char *)p->p;
    if (grow((void **)&e->sym, &e->sym_cap, p->len + 1, sizeof *e->sym) != 0) return -1;
    int32_t *sym = e->sym;
    size_t k = 0;
    if (t->byte_level) {
        for (size_t i = 0; i < p->len; i++) sym[k++] = t->byte_id[s[i]];
        return (long)k;
    }
    int last_unk = 0;
    for (size_t i = 0; i < p->len;) {
        size_t w = s[i] < 0x80 ? 1 : s[i] < 0xE0 ? 2 : s[i] < 0xF0 ? 3 : 4;
        if (i + w > p->len) w = p->len - i;
        const int32_t id = strmap_get(&t->vocab, (const char *)s + i, w);
        if (id >= 0) {
            sym[k++] = id;
            last_unk = 0;
        } else {
            int fb = t->byte_fallback;
            for (size_t j = 0; fb && j < w; j++) fb = t->fb_id[s[i + j]] >= 0;
            if (fb) {
                for (size_t j = 0; j < w; j++) sym[k++] = t->fb_id[s[i + j]];
                last_unk = 0;
            } else if (t->unk_id >= 0) {
                if (!(t->fuse_unk && last_unk)) sym[k++] = t->unk_id;
                last_unk = 1;
            } else {
                zinc_error(ZINC_ERR_INVALID_ARG, "tokenizer: the character \"%.*s\" is not in the vocabulary, which has "
                           "no unk_token", (int)w, (const char *)s + i);
                return -2;
            }
        }
        i += w;
    }
    return (long)k;
}

/* BPE of one piece; ids appended. -1 out of memory, -2 an error recorded. */
static int bpe_piece(enc *e, const piece *p, int32_t **ids, size_t *n, size_t *cap)
{
    const zinc_tokenizer *t = e->t;
    long k = piece_symbols(e, p);
    if (k < 0) return (int)k;
    if (t->ignore_merges && k > 1) { /* the whole piece as one token, if it is one */
        const char *w = p->p;
        size_t m = p->len;
        if (t->byte_level) {
            if (grow((void **)&e->chr, &e->chr_cap, 2 * p->len, 1) != 0) return -1;
            m = 0;
            for (size_t i = 0; i < p->len; i++) {
                const unsigned char b = (unsigned char)p->p[i];
                memcpy(e->chr + m, t->byte_chr[b], (size_t)t->byte_chr_len[b]);
                m += (size_t)t->byte_chr_len[b];
            }
            w = e->chr;
        }
        const int32_t id = strmap_get(&t->vocab, w, m);
        if (id >= 0) e->sym[0] = id, k = 1;
    }
    k = merge_all(e, e->sym, (size_t)k);
    if (k < 0) return -1;
    if (grow((void **)ids, cap, *n + (size_t)k, sizeof **ids) != 0) return -1;
    memcpy(*ids + *n, e->sym, (size_t)k * sizeof *e->sym);
    *n += (size_t)k;
    return 0;
}

/* The normalizers on a stretch (Prepend: when it is not empty; Replace: every
 * occurrence, left to right); the result in the arena, or the stretch itself. */
static int normalize(enc *e, const char **text, size_t *len)
{
    const zinc_tokenizer *t = e->t;
    for (int s = 0; s < t->n_norm; s++) {
        const norm_step *ns = &t->norm[s];
        if (*len == 0) return 0;
        if (ns->kind == NORM_PREPEND) {
            char *c = arena_copy(e, NULL, 0, ns->la + *len);
            if (!c) return -1;
            memcpy(c, ns->a, ns->la);
            memcpy(c + ns->la, *text, *len);
            *text = c;
            *len += ns->la;
            continue;
        }
        size_t hits = 0;
        for (size_t i = 0; i + ns->la <= *len; i++)
            if (!memcmp(*text + i, ns->a, ns->la)) hits++, i += ns->la - 1;
        if (!hits) continue;
        char *c = arena_copy(e, NULL, 0, *len + hits * ns->lb);
        if (!c) return -1;
        size_t m = 0;
        for (size_t i = 0; i < *len;) {
            if (i + ns->la <= *len && !memcmp(*text + i, ns->a, ns->la)) {
                memcpy(c + m, ns->b, ns->lb);
                m += ns->lb;
                i += ns->la;
            } else {
                c[m++] = (*text)[i++];
            }
        }
        *text = c;
        *len = m;
    }
    return 0;
}

/* Metaspace: spaces become the replacement, one is prepended (always, or for the input's
 * first stretch), and with split each replacement starts a new piece. */
static int metaspace_step(enc *e, const pre_step *ps, int at_start)
{
    e->nb = 0;
    for (size_t i = 0; i < e->na; i++) {
        const piece p = e->a[i];
        size_t spaces = 0;
        for (size_t j = 0; j < p.len; j++) spaces += p.p[j] == ' ';
        const int pre = (ps->prepend == 2 || (ps->prepend == 1 && at_start && i == 0)) &&
                        !(p.len >= (size_t)ps->repl_len && !memcmp(p.p, ps->repl, (size_t)ps->repl_len)) &&
                        !(p.len > 0 && p.p[0] == ' ');
        char *c = arena_copy(e, NULL, 0, p.len + (spaces + 1) * (size_t)ps->repl_len);
        if (!c) return -1;
        size_t m = 0;
        if (pre) memcpy(c, ps->repl, (size_t)ps->repl_len), m += (size_t)ps->repl_len;
        for (size_t j = 0; j < p.len; j++) {
            if (p.p[j] == ' ') memcpy(c + m, ps->repl, (size_t)ps->repl_len), m += (size_t)ps->repl_len;
            else c[m++] = p.p[j];
        }
        if (!ps->split) {
            if (out_piece(e, c, m) != 0) return -1;
            continue;
        }
        size_t from = 0; /* MergedWithNext: each replacement begins a piece */
        for (size_t j = 1; j + (size_t)ps->repl_len <= m; j++)
            if (!memcmp(c + j, ps->repl, (size_t)ps->repl_len)) {
                if (out_piece(e, c + from, j - from) != 0) return -1;
                from = j;
            }
        if (out_piece(e, c + from, m - from) != 0) return -1;
    }
    swap_pieces(e);
    return 0;
}

/* A stretch of text without added tokens through the normalizers, the pre-tokenizers and
 * BPE; at_start: it begins the input. */
static int encode_plain(enc *e, const char *text, size_t len, int at_start, int32_t **ids, size_t *n, size_t *cap)
{
    const zinc_tokenizer *t = e->t;
    if (normalize(e, &text, &len) != 0) return -1;
    e->na = e->nb = 0;
    if (out_piece(e, text, len) != 0) return -1;
    swap_pieces(e);
    for (int s = 0; s < t->n_pre; s++) {
        const pre_step *ps = &t->pre[s];
        if (ps->kind == PRE_METASPACE) {
            if (metaspace_step(e, ps, at_start) != 0) return -1;
            continue;
        }
        if (ps->kind == PRE_BYTELEVEL && ps->prefix_space && prefix_spaces(e) != 0) return -1;
        if (ps->re && split_step(e, ps->re, ps->kind == PRE_BYTELEVEL ? SPLIT_ISOLATED : ps->behavior) != 0) return -1;
    }
    for (size_t i = 0; i < e->na; i++) {
        const int rc = bpe_piece(e, &e->a[i], ids, n, cap);
        if (rc != 0) return rc;
    }
    return 0;
}

zinc_status zinc_tokenizer_encode(const zinc_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n,
                                  size_t *cap)
{
    const size_t ok = utf8_valid((const unsigned char *)text, len);
    if (ok != len) return zinc_error(ZINC_ERR_INVALID_ARG, "tokenizer: the text is not valid UTF-8 at byte %zu", ok);
    enc e = {.t = t};
    e.md = pcre2_match_data_create(4, NULL);
    zinc_status st = ZINC_OK;
    int rc = 0;
    if (!e.md) return zinc_error(ZINC_ERR_NOMEM, "tokenizer: match data");
    size_t start = 0, i = 0;
    while (i < len) {
        const unsigned char c = (unsigned char)text[i];
        int hit = -1;
        for (int a = t->first_added[c]; a < t->first_added[c + 1]; a++)
            if ((size_t)t->added[a].len <= len - i && !memcmp(text + i, t->added[a].s, (size_t)t->added[a].len)) {
                hit = a;
                break; /* longest first */
            }
        if (hit < 0) {
            i++;
            continue;
        }
        if (i > start && (rc = encode_plain(&e, text + start, i - start, start == 0, ids, n, cap)) != 0) goto fail;
        if (grow((void **)ids, cap, *n + 1, sizeof **ids) != 0) goto nomem;
        (*ids)[(*n)++] = t->added[hit].id;
        i += (size_t)t->added[hit].len;
        start = i;
    }
    if (len > start && (rc = encode_plain(&e, text + start, len - start, start == 0, ids, n, cap)) != 0) goto fail;
    goto done;
nomem:
    rc = -1;
fail:
    st = rc == -2 ? ZINC_ERR_INVALID_ARG : zinc_error(ZINC_ERR_NOMEM, "tokenizer: out of memory encoding %zu bytes", len);
done:
    pcre2_match_data_free(e.md);
    free(e.a);
    free(e.b);
    free(e.sym);
    free(e.chr);
    for (size_t k = 0; k < e.n_arena; k++) free(e.arena[k]);
    free(e.arena);
    free(e.links);
    free(e.heap);
    return st;
}

/* Appends n bytes to the growing output. */
static int put(char **out, size_t *m, size_t *cap, const void *p, size_t n)
{
    if (*m + n + 1 > *cap) {
        size_t c = *cap;
        while (*m + n + 1 > c) c *= 2;
        char *no = realloc(*out, c);
        if (!no) return -1;
        *out = no;
        *cap = c;
    }
    memcpy(*out + *m, p, n);
    *m += n;
    return 0;
}

static int is_added(const zinc_tokenizer *t, int32_t id)
{
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id == id) return 1;
    return 0;
}

/* Byte-level: every character back to its byte (one not in the map as it is). Otherwise
 * (SentencePiece style): "<0xXX>" tokens are their byte, the space character is a space
 * again, added tokens stay as they are, and one leading space the encoding prepended is
 * dropped (Llama-2's decoder: Replace, ByteFallback, Fuse, Strip). */
zinc_status zinc_tokenizer_encode_special(const zinc_tokenizer *t, const char *text, size_t len, int32_t **ids,
                                          size_t *n, size_t *cap)
{
    if (t->post_why[0]) return zinc_error(ZINC_ERR_UNSUPPORTED, "%s: %s", t->file, t->post_why);
    if (grow((void **)ids, cap, *n + (size_t)t->n_post_pre, sizeof **ids) != 0)
        return zinc_error(ZINC_ERR_NOMEM, "tokenizer: out of memory");
    for (int i = 0; i < t->n_post_pre; i++) (*ids)[(*n)++] = t->post_pre[i];
    zinc_status st = zinc_tokenizer_encode(t, text, len, ids, n, cap);
    if (st != ZINC_OK) return st;
    if (grow((void **)ids, cap, *n + (size_t)t->n_post_post, sizeof **ids) != 0)
        return zinc_error(ZINC_ERR_NOMEM, "tokenizer: out of memory");
    for (int i = 0; i < t->n_post_post; i++) (*ids)[(*n)++] = t->post_post[i];
    return ZINC_OK;
}

zinc_status zinc_tokenizer_decode(const zinc_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len)
{
    size_t cap = 64, m = 0;
    char *out = malloc(cap);
    if (!out) return zinc_error(ZINC_ERR_NOMEM, "tokenizer: decode");
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_ids || !t->text[ids[i]]) {
            free(out);
            return zinc_error(ZINC_ERR_INVALID_ARG, "tokenizer: decode: id %d at %zu is not in the vocabulary", ids[i], i);
        }
        const unsigned char *s = (const unsigned char *)t->text[ids[i]];
        const size_t sl = (size_t)t->text_len[ids[i]];
        int bad = 0;
        if (!t->byte_level) {
            unsigned b;
            if (t->byte_fallback && sl == 6 && sscanf((const char *)s, "<0x%2X>", &b) == 1 && s[5] == '>') {
                const unsigned char c = (unsigned char)b;
                bad = put(&out, &m, &cap, &c, 1);
            } else if (is_added(t, ids[i]) || !t->meta_len) {
                bad = put(&out, &m, &cap, s, sl);
            } else {
                for (size_t j = 0; j < sl && !bad;) {
                    if (j + (size_t)t->meta_len <= sl && !memcmp(s + j, t->meta, (size_t)t->meta_len)) {
                        bad = put(&out, &m, &cap, " ", 1);
                        j += (size_t)t->meta_len;
                    } else {
                        bad = put(&out, &m, &cap, s + j, 1);
                        j++;
                    }
                }
            }
        } else {
            for (size_t j = 0; j < sl && !bad;) { /* each character back to its byte */
                uint32_t cp = s[j];
                size_t w = 1;
                if (cp >= 0xC0 && cp < 0xE0 && j + 1 < sl) cp = (cp & 0x1F) << 6 | (s[j + 1] & 0x3F), w = 2;
                if (cp < 324 && t->cp_byte[cp] >= 0 && (w == 2 || cp < 0x80)) {
                    const unsigned char c = (unsigned char)t->cp_byte[cp];
                    bad = put(&out, &m, &cap, &c, 1);
                } else { /* not a mapped character (an added token's text): as it is */
                    if (s[j] >= 0xE0) w = s[j] >= 0xF0 ? 4 : 3;
                    if (j + w > sl) w = sl - j;
                    bad = put(&out, &m, &cap, s + j, w);
                }
                j += w;
            }
        }
        if (bad) {
            free(out);
            return zinc_error(ZINC_ERR_NOMEM, "tokenizer: decode");
        }
    }
    size_t from = t->strip_space && m > 0 && out[0] == ' ' ? 1 : 0;
    if (from) memmove(out, out + 1, --m);
    out[m] = 0;
    *text = out;
    *len = m;
    return ZINC_OK;
}
