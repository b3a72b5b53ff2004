/* jsonl.c - instruction and document data: JSONL records tokenized into a version-3
 * shard (documents with loss masks, zinc/data.h), packed for a block size.
 *
 * One record per line (blank lines skipped), recognised by its keys:
 *   {"text": S}                         continued pre-training: tokenizer(S) (+ eos), every
 *                                       token a target
 *   {"prompt": P, "completion": Q}      without a chat template as TRL tokenizes it:
 *                                       tokenizer(P) + encode(Q) + eos, loss on Q and eos;
 *                                       with one: a user and an assistant message
 *   {"messages": [{"role", "content"}]} rendered by the named chat template (never
 *                                       guessed), loss on each assistant reply and the end
 *                                       of its turn
 *   {"input_ids": [...], "labels": [...]} pre-tokenized as Hugging Face writes it: a label
 *                                       -100 takes no loss (labels optional: all taken);
 *                                       attention_mask 0 drops the token (padding)
 * A rendered conversation is encoded whole (as transformers' apply_chat_template does,
 * add_special_tokens=False), and the token range of each assistant span [a, b) of its
 * characters comes from encoding the prefixes S[:a] and S[:b]: a token that straddles a
 * boundary counts as inside (the tokens whose characters meet the span).
 *
 * Packing: with a block size T (the run's seq_len), a sample other than text is kept whole
 * inside one row of T tokens: when it does not fit in what is left of the current row the
 * row is padded (a document of its own with no targets) and the sample starts the next;
 * a sample longer than T is cut to T (counted: truncated). Text records flow across rows
 * as pre-training does. The shard is written at the end through zinc_data_write_docs, so
 * a failure leaves nothing half-written.
 */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "zinc/data.h"
#include "zinc/file.h"
#include "zinc/tokenizer.h"

#define JL_TRY(e)                                                                                                      \
    do {                                                                                                               \
        zinc_status s_ = (e);                                                                                          \
        if (s_ != ZINC_OK) return s_;                                                                                  \
    } while (0)

/* ---------------------------------------------------------------- buffers --- */

typedef struct jl_out {
    uint32_t *tok;
    uint8_t *fl;
    size_t n, cap;
} jl_out;

static zinc_status jl_push(jl_out *o, uint32_t t, uint8_t f)
{
    if (o->n == o->cap) {
        size_t nc = o->cap ? 2 * o->cap : 1 << 16;
        uint32_t *nt = realloc(o->tok, nc * sizeof *nt);
        if (!nt) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
        o->tok = nt;
        uint8_t *nf = realloc(o->fl, nc);
        if (!nf) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
        o->fl = nf;
        o->cap = nc;
    }
    o->tok[o->n] = t;
    o->fl[o->n++] = f;
    return ZINC_OK;
}

/* One sample being built: ids and whether each is a target. */
typedef struct jl_doc {
    int32_t *ids;
    size_t n, cap;
    uint8_t *loss;
    size_t lcap;
} jl_doc;

static zinc_status jl_doc_mark(jl_doc *d, size_t from, int loss)
{
    if (d->lcap < d->n) {
        uint8_t *nl = realloc(d->loss, d->cap ? d->cap : 1);
        if (!nl) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
        d->loss = nl;
        d->lcap = d->cap;
    }
    for (size_t i = from; i < d->n; i++) d->loss[i] = (uint8_t)loss;
    return ZINC_OK;
}

/* Appends the ids of text (with the post-processor's special tokens when special) as
 * targets or not. tok NULL: bytes. */
static zinc_status jl_encode(const zinc_tokenizer *tok, jl_doc *d, const char *text, size_t len, int special,
                             int loss)
{
    const size_t from = d->n;
    if (!tok) {
        for (size_t i = 0; i < len; i++) {
            if (d->n == d->cap) {
                size_t nc = d->cap ? 2 * d->cap : 256;
                int32_t *ni = realloc(d->ids, nc * sizeof *ni);
                if (!ni) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
                d->ids = ni, d->cap = nc;
            }
            d->ids[d->n++] = (unsigned char)text[i];
        }
    } else {
        zinc_status st = special ? zinc_tokenizer_encode_special(tok, text, len, &d->ids, &d->n, &d->cap)
                                 : zinc_tokenizer_encode(tok, text, len, &d->ids, &d->n, &d->cap);
        if (st != ZINC_OK) return st;
    }
    return jl_doc_mark(d, from, loss);
}

static zinc_status jl_push_id(jl_doc *d, int32_t id, int loss)
{
    if (d->n == d->cap) {
        size_t nc = d->cap ? 2 * d->cap : 256;
        int32_t *ni = realloc(d->ids, nc * sizeof *ni);
        if (!ni) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
        d->ids = ni, d->cap = nc;
    }
    d->ids[d->n++] = id;
    return jl_doc_mark(d, d->n - 1, loss);
}

/* ------------------------------------------------------------ templates --- */

typedef struct jl_template {
    const char *name;
    const char *const need[5]; /* tokens the tokenizer must have */
} jl_template;

enum { T_CHATML, T_QWEN2, T_LLAMA3, T_LLAMA2, N_TEMPLATES };
static const jl_template templates[N_TEMPLATES] = {
    [T_CHATML] = {"chatml", {"<|im_start|>", "<|im_end|>"}},
    [T_QWEN2] = {"qwen2", {"<|im_start|>", "<|im_end|>"}},
    [T_LLAMA3] = {"llama3", {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}},
    [T_LLAMA2] = {"llama2", {"<s>", "</s>"}},
};

/* A growing string with the character spans that take the loss. */
typedef struct jl_text {
    char *s;
    size_t n, cap;
    size_t *span; /* pairs [a, b) */
    size_t n_span, span_cap;
} jl_text;

static zinc_status jl_cat(jl_text *t, const char *s, size_t len)
{
    if (t->n + len + 1 > t->cap) {
        size_t nc = t->cap ? t->cap : 256;
        while (nc < t->n + len + 1) nc *= 2;
        char *ns = realloc(t->s, nc);
        if (!ns) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
        t->s = ns, t->cap = nc;
    }
    memcpy(t->s + t->n, s, len);
    t->n += len;
    t->s[t->n] = '\0';
    return ZINC_OK;
}

static zinc_status jl_cats(jl_text *t, const char *s) { return jl_cat(t, s, strlen(s)); }

static zinc_status jl_span(jl_text *t, size_t a, size_t b)
{
    if (t->n_span + 2 > t->span_cap) {
        size_t nc = t->span_cap ? 2 * t->span_cap : 16;
        size_t *ns = realloc(t->span, nc * sizeof *ns);
        if (!ns) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
        t->span = ns, t->span_cap = nc;
    }
    t->span[t->n_span++] = a;
    t->span[t->n_span++] = b;
    return ZINC_OK;
}

/* Python's str.strip() on ASCII whitespace (Jinja's trim). */
static void jl_strip(const char **s, size_t *len)
{
    while (*len && isspace((unsigned char)**s)) (*s)++, (*len)--;
    while (*len && isspace((unsigned char)(*s)[*len - 1])) (*len)--;
}

typedef struct jl_msg {
    const char *role, *content;
    size_t len;
} jl_msg;

/* Renders msgs (n >= 1, roles checked) with template k into t, the assistant spans marked. */
static zinc_status jl_render(int k, const jl_msg *m, int n, jl_text *t, const char *where)
{
#define CAT(x) JL_TRY(jl_cats(t, x))
#define CATN(x, l) JL_TRY(jl_cat(t, x, l))
    if (k == T_CHATML || k == T_QWEN2) {
        if (k == T_QWEN2 && strcmp(m[0].role, "system")) CAT("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n");
        for (int i = 0; i < n; i++) {
            CAT("<|im_start|>");
            CAT(m[i].role);
            CAT("\n");
            const size_t a = t->n;
            CATN(m[i].content, m[i].len);
            CAT("<|im_end|>");
            if (!strcmp(m[i].role, "assistant")) JL_TRY(jl_span(t, a, t->n));
            CAT("\n");
        }
    } else if (k == T_LLAMA3) {
        CAT("<|begin_of_text|>");
        for (int i = 0; i < n; i++) {
            CAT("<|start_header_id|>");
            CAT(m[i].role);
            CAT("<|end_header_id|>\n\n");
            const char *c = m[i].content;
            size_t len = m[i].len;
            jl_strip(&c, &len);
            const size_t a = t->n;
            CATN(c, len);
            CAT("<|eot_id|>");
            if (!strcmp(m[i].role, "assistant")) JL_TRY(jl_span(t, a, t->n));
        }
    } else { /* llama2: [INST] pairs, the system message inside the first user turn */
        int i0 = 0;
        const char *sys = NULL;
        size_t sys_len = 0;
        if (!strcmp(m[0].role, "system")) sys = m[0].content, sys_len = m[0].len, i0 = 1;
        for (int i = i0; i < n; i++) {
            const int user = !strcmp(m[i].role, "user");
            if (user != ((i - i0) % 2 == 0))
                return zinc_error(ZINC_ERR_INVALID_ARG, "%s: message %d: llama2 needs the roles to alternate "
                                  "user/assistant/user/... after an optional system message", where, i + 1);
            const char *c = m[i].content;
            size_t len = m[i].len;
            if (user) {
                CAT("<s>[INST] ");
                if (sys && i == i0) { /* '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + content, then strip */
                    jl_text tmp = {0};
                    zinc_status s = jl_cats(&tmp, "<<SYS>>\n");
                    if (s == ZINC_OK) s = jl_cat(&tmp, sys, sys_len);
                    if (s == ZINC_OK) s = jl_cats(&tmp, "\n<</SYS>>\n\n");
                    if (s == ZINC_OK) s = jl_cat(&tmp, c, len);
                    const char *tc = tmp.s;
                    size_t tl = tmp.n;
                    if (s == ZINC_OK) jl_strip(&tc, &tl);
                    if (s == ZINC_OK) s = jl_cat(t, tc, tl);
                    free(tmp.s);
                    free(tmp.span);
                    JL_TRY(s);
                } else {
                    jl_strip(&c, &len);
                    CATN(c, len);
                }
                CAT(" [/INST]");
            } else {
                jl_strip(&c, &len);
                const size_t a = t->n;
                CAT(" ");
                CATN(c, len);
                CAT(" </s>");
                JL_TRY(jl_span(t, a, t->n));
            }
        }
    }
    return ZINC_OK;
#undef CAT
#undef CATN
}

/* Encodes the rendered t whole into d, the tokens meeting its spans as targets. */
static zinc_status jl_encode_spans(const zinc_tokenizer *tok, const jl_text *t, jl_doc *d)
{
    zinc_status st = jl_encode(tok, d, t->s, t->n, 0, 0);
    if (st != ZINC_OK) return st;
    int32_t *pre = NULL;
    size_t pn = 0, pcap = 0;
    for (size_t k = 0; k < t->n_span && st == ZINC_OK; k++) {
        pn = 0;
        st = zinc_tokenizer_encode(tok, t->s, t->span[k], &pre, &pn, &pcap);
        if (st != ZINC_OK) break;
        size_t l = 0; /* the common prefix with the whole */
        while (l < pn && l < d->n && pre[l] == d->ids[l]) l++;
        size_t at = k % 2 == 0 ? l : (l == pn ? l : l + 1); /* a straddling token is inside */
        if (at > d->n) at = d->n;
        if (k % 2 == 0) {
            t->span[k] = at; /* reused: token index now */
        } else {
            for (size_t i = t->span[k - 1]; i < at; i++) d->loss[i] = 1;
        }
    }
    free(pre);
    return st;
}

/* ---------------------------------------------------------------- records --- */

typedef struct jl_ctx {
    const zinc_tokenizer *tok;
    int tmpl;       /* -1: none */
    int32_t eos;    /* -1: none */
    int64_t vocab;  /* ids must be below it */
    const char *where;
} jl_ctx;

static const char *jl_str(json_t *o, const char *key, size_t *len)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v)) return NULL;
    *len = json_string_length(v);
    return json_string_value(v);
}

static zinc_status jl_messages(const jl_ctx *c, json_t *arr, const jl_msg *extra, int n_extra, jl_doc *d)
{
    if (c->tmpl < 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s: chat messages need a chat template (data.chat_template or "
                          "zinc-data --chat-template: chatml, qwen2, llama3, llama2); zinc never guesses one", c->where);
    int n = arr ? (int)json_array_size(arr) : n_extra;
    if (n == 0) return zinc_error(ZINC_ERR_INVALID_ARG, "%s: \"messages\" is empty", c->where);
    jl_msg *m = calloc((size_t)n, sizeof *m);
    if (!m) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
    zinc_status st = ZINC_OK;
    int n_asst = 0;
    for (int i = 0; i < n && st == ZINC_OK; i++) {
        if (!arr) {
            m[i] = extra[i];
        } else {
            json_t *e = json_array_get(arr, (size_t)i);
            size_t rl = 0;
            m[i].role = json_is_object(e) ? jl_str(e, "role", &rl) : NULL;
            m[i].content = json_is_object(e) ? jl_str(e, "content", &m[i].len) : NULL;
            if (!m[i].role || !m[i].content) {
                st = zinc_error(ZINC_ERR_INVALID_ARG, "%s: message %d needs string \"role\" and \"content\"",
                                c->where, i + 1);
                break;
            }
        }
        const char *r = m[i].role;
        if (strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "system"))
            st = zinc_error(ZINC_ERR_INVALID_ARG, "%s: message %d: unknown role \"%.40s\" (%s knows system, user, "
                            "assistant)", c->where, i + 1, r, templates[c->tmpl].name);
        else if (!strcmp(r, "system") && i > 0)
            st = zinc_error(ZINC_ERR_INVALID_ARG, "%s: message %d: a system message comes first only", c->where,
                            i + 1);
        n_asst += !strcmp(r, "assistant");
    }
    jl_text t = {0};
    if (st == ZINC_OK) st = jl_render(c->tmpl, m, n, &t, c->where);
    if (st == ZINC_OK) st = jl_encode_spans(c->tok, &t, d);
    free(t.s);
    free(t.span);
    free(m);
    return st;
}

/* Fills d from one parsed record; *text: a text record (may span rows). */
static zinc_status jl_record(const jl_ctx *c, json_t *o, jl_doc *d, int *text)
{
    size_t l1 = 0, l2 = 0;
    const char *s1, *s2;
    json_t *v;
    *text = 0;
    if ((v = json_object_get(o, "messages"))) {
        if (!json_is_array(v)) return zinc_error(ZINC_ERR_INVALID_ARG, "%s: \"messages\" is not a list", c->where);
        return jl_messages(c, v, NULL, 0, d);
    }
    if (json_object_get(o, "prompt") || json_object_get(o, "completion")) {
        s1 = jl_str(o, "prompt", &l1), s2 = jl_str(o, "completion", &l2);
        if (!s1 || !s2)
            return zinc_error(ZINC_ERR_INVALID_ARG, "%s: \"prompt\" and \"completion\" must both be strings", c->where);
        if (c->tmpl >= 0) {
            const jl_msg m[2] = {{"user", s1, l1}, {"assistant", s2, l2}};
            return jl_messages(c, NULL, m, 2, d);
        }
        JL_TRY(jl_encode(c->tok, d, s1, l1, 1, 0));
        JL_TRY(jl_encode(c->tok, d, s2, l2, 0, 1));
        return c->eos >= 0 ? jl_push_id(d, c->eos, 1) : ZINC_OK;
    }
    if ((v = json_object_get(o, "input_ids"))) {
        json_t *lab = json_object_get(o, "labels"), *am = json_object_get(o, "attention_mask");
        const size_t n = json_is_array(v) ? json_array_size(v) : 0;
        if (!json_is_array(v) || (lab && (!json_is_array(lab) || json_array_size(lab) != n)) ||
            (am && (!json_is_array(am) || json_array_size(am) != n)))
            return zinc_error(ZINC_ERR_INVALID_ARG, "%s: \"input_ids\" (and \"labels\", \"attention_mask\") must be "
                              "lists of one length", c->where);
        for (size_t i = 0; i < n; i++) {
            json_t *x = json_array_get(v, i), *y = lab ? json_array_get(lab, i) : NULL;
            json_t *a = am ? json_array_get(am, i) : NULL;
            if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= c->vocab)
                return zinc_error(ZINC_ERR_INVALID_ARG, "%s: input_ids[%zu] is not a token id below %lld", c->where, i,
                                  (long long)c->vocab);
            if (a && !json_is_integer(a))
                return zinc_error(ZINC_ERR_INVALID_ARG, "%s: attention_mask[%zu] is not 0 or 1", c->where, i);
            if (a && json_integer_value(a) == 0) continue; /* padding */
            const json_int_t id = json_integer_value(x);
            int loss = 1;
            if (y) {
                if (!json_is_integer(y) || (json_integer_value(y) != -100 && json_integer_value(y) != id))
                    return zinc_error(ZINC_ERR_INVALID_ARG, "%s: labels[%zu] is neither -100 nor input_ids[%zu] (zinc's "
                                      "targets are the next tokens, as Hugging Face's causal LM shifts them)",
                                      c->where, i, i);
                loss = json_integer_value(y) != -100;
            }
            JL_TRY(jl_push_id(d, (int32_t)id, loss));
        }
        return ZINC_OK;
    }
    if (json_object_get(o, "text")) {
        if (!(s1 = jl_str(o, "text", &l1))) return zinc_error(ZINC_ERR_INVALID_ARG, "%s: \"text\" is not a string", c->where);
        *text = 1;
        JL_TRY(jl_encode(c->tok, d, s1, l1, 1, 1));
        return c->eos >= 0 ? jl_push_id(d, c->eos, 1) : ZINC_OK;
    }
    char keys[160] = "";
    size_t off = 0;
    const char *k;
    json_t *vv;
    json_object_foreach(o, k, vv) {
        int w = snprintf(keys + off, sizeof keys - off, "%s%s", off ? ", " : "", k);
        if (w < 0 || (size_t)w >= sizeof keys - off) break;
        off += (size_t)w;
    }
    return zinc_error(ZINC_ERR_INVALID_ARG, "%s: a record needs \"text\", \"prompt\" and \"completion\", \"messages\" "
                      "or \"input_ids\" (it has: %s)", c->where, off ? keys : "no keys");
}

/* Appends d as one document to o, packed for block (0: none). */
static zinc_status jl_pack(jl_out *o, const jl_doc *d, int text, int block, int32_t pad, zinc_jsonl_stats *s)
{
    size_t n = d->n;
    if (n == 0) {
        s->empty++;
        return ZINC_OK;
    }
    if (block > 0 && !text) {
        if (n > (size_t)block) {
            s->truncated++;
            s->truncated_tokens += n - (size_t)block;
            n = (size_t)block;
        }
        const size_t used = o->n % (size_t)block;
        if (used && used + n > (size_t)block) { /* pad the row: a document without targets */
            for (size_t i = used; i < (size_t)block; i++)
                JL_TRY(jl_push(o, (uint32_t)pad, i == used ? ZINC_TOK_DOC : 0));
            s->pad_tokens += (size_t)block - used;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const uint8_t f = (uint8_t)((i == 0 ? ZINC_TOK_DOC : 0) | (d->loss[i] ? ZINC_TOK_LOSS : 0));
        JL_TRY(jl_push(o, (uint32_t)d->ids[i], f));
        s->targets += i > 0 && d->loss[i];
    }
    s->docs++;
    s->tokens += n;
    return ZINC_OK;
}

int zinc_chat_template_known(const char *name)
{
    for (int k = 0; k < N_TEMPLATES; k++)
        if (!strcmp(templates[k].name, name)) return 1;
    return 0;
}

zinc_status zinc_data_write_shard_from_jsonl(const char *const *inputs, int n_inputs, const zinc_tokenizer *tok,
                                             const zinc_jsonl_opts *opt, const char *out_path, zinc_jsonl_stats *s)
{
    zinc_jsonl_stats dummy;
    if (!s) s = &dummy;
    memset(s, 0, sizeof *s);
    s->eos = -1;
    if (!inputs || n_inputs < 1 || !out_path)
        return zinc_error(ZINC_ERR_INVALID_ARG, "data: no JSONL input or output given");
    jl_ctx c = {.tok = tok, .tmpl = -1, .eos = -1, .vocab = tok ? zinc_tokenizer_vocab_size(tok) : 256};
    const char *tn = opt ? opt->chat_template : NULL;
    if (tn && *tn) {
        for (int k = 0; k < N_TEMPLATES; k++)
            if (!strcmp(templates[k].name, tn)) c.tmpl = k;
        if (c.tmpl < 0)
            return zinc_error(ZINC_ERR_INVALID_ARG, "data: chat template \"%s\" is not one zinc knows (chatml, qwen2, "
                              "llama3, llama2)", tn);
        if (!tok)
            return zinc_error(ZINC_ERR_INVALID_ARG, "data: chat template %s needs a tokenizer (data.tokenizer or "
                              "--tokenizer)", tn);
        for (int i = 0; i < 5 && templates[c.tmpl].need[i]; i++)
            if (zinc_tokenizer_token_id(tok, templates[c.tmpl].need[i]) < 0)
                return zinc_error(ZINC_ERR_INVALID_ARG, "data: chat template %s needs the token %s, which the "
                                  "tokenizer does not have (a template for another model family?)", tn,
                                  templates[c.tmpl].need[i]);
    }
    if (opt && opt->eos && *opt->eos) {
        c.eos = tok ? zinc_tokenizer_token_id(tok, opt->eos) : -1;
        if (c.eos < 0)
            return zinc_error(ZINC_ERR_INVALID_ARG, "data: end-of-sequence token %s is not in the tokenizer", opt->eos);
    }
    s->eos = c.eos;
    const int block = opt ? opt->block : 0;
    if (block < 0) return zinc_error(ZINC_ERR_INVALID_ARG, "data: block size %d", block);
    const int32_t pad = c.eos >= 0 ? c.eos : 0;

    uint64_t total = 0, done = 0;
    for (int f = 0; f < n_inputs; f++) {
        struct stat sb;
        if (stat(inputs[f], &sb) == 0) total += (uint64_t)sb.st_size;
    }
    jl_out o = {0};
    jl_doc d = {0};
    char *line = NULL, where[1200];
    size_t lcap = 0;
    zinc_status st = ZINC_OK;
    for (int f = 0; f < n_inputs && st == ZINC_OK; f++) {
        FILE *in = NULL;
        if ((st = zinc_fopen_regular(inputs[f], "JSONL input", &in, NULL)) != ZINC_OK) {
            st = zinc_error(st, "data: %s", zinc_last_error());
            break;
        }
        ssize_t len;
        long long ln = 0;
        while (st == ZINC_OK && (len = getline(&line, &lcap, in)) > 0) {
            ln++;
            done += (uint64_t)len;
            snprintf(where, sizeof where, "%s:%lld", inputs[f], ln);
            size_t k = 0;
            while (k < (size_t)len && isspace((unsigned char)line[k])) k++;
            if (k == (size_t)len) continue;
            json_error_t je;
            json_t *obj = json_loadb(line, (size_t)len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
            if (!obj) {
                st = zinc_error(ZINC_ERR_CORRUPT, "data: %s: not valid JSON (at byte %d of the line: %s)", where, je.position, je.text);
                break;
            }
            if (!json_is_object(obj)) {
                json_decref(obj);
                st = zinc_error(ZINC_ERR_CORRUPT, "data: %s: a record is a JSON object", where);
                break;
            }
            c.where = where;
            d.n = 0;
            int text = 0;
            st = jl_record(&c, obj, &d, &text);
            json_decref(obj);
            if (st == ZINC_OK) st = jl_pack(&o, &d, text, block, pad, s);
            else if (strncmp(zinc_last_error(), "data: ", 6)) st = zinc_error(st, "data: %s", zinc_last_error());
            if (st == ZINC_OK && opt && opt->progress) opt->progress(done, total ? total : done, opt->progress_u);
        }
        if (st == ZINC_OK && ferror(in)) st = zinc_error(ZINC_ERR_IO, "data: cannot read %s: %s", inputs[f], strerror(errno));
        fclose(in);
    }
    free(line);
    free(d.ids);
    free(d.loss);
    if (st == ZINC_OK && o.n == 0)
        st = zinc_error(ZINC_ERR_INVALID_ARG, "data: the JSONL input holds no tokens");
    if (st == ZINC_OK)
        st = zinc_data_write_docs(out_path, o.tok, o.fl, o.n, c.vocab > 65536 ? 4 : 2, block);
    if (st == ZINC_OK && opt && opt->progress) opt->progress(total ? total : done, total ? total : done, opt->progress_u);
    s->written = o.n;
    free(o.tok);
    free(o.fl);
    return st;
}

int zinc_tokenizer_config_eos(const char *tok_path, char *out, size_t cap)
{
    struct stat sb;
    char path[1200];
    if (!tok_path || stat(tok_path, &sb) != 0) return 0;
    if (S_ISDIR(sb.st_mode)) {
        snprintf(path, sizeof path, "%s/tokenizer_config.json", tok_path);
    } else {
        const char *sl = strrchr(tok_path, '/');
        if (sl) snprintf(path, sizeof path, "%.*s/tokenizer_config.json", (int)(sl - tok_path), tok_path);
        else snprintf(path, sizeof path, "tokenizer_config.json");
    }
    json_t *j = json_load_file(path, 0, NULL);
    if (!j) return 0;
    json_t *e = json_object_get(j, "eos_token");
    if (json_is_object(e)) e = json_object_get(e, "content");
    int ok = json_is_string(e) && json_string_length(e) < cap;
    if (ok) snprintf(out, cap, "%s", json_string_value(e));
    json_decref(j);
    return ok;
}

/* ------------------------------------------------------------------ cache --- */

static uint64_t jl_fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* FNV-1a of a file's bytes into h; 0 on a read error. */
static int jl_fnv_file(uint64_t *h, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) *h = jl_fnv(*h, buf, n);
    int ok = !ferror(f);
    fclose(f);
    return ok;
}

zinc_status zinc_data_jsonl_cached(const char *jsonl, const char *cache_dir, const char *tok_path,
                                   const zinc_tokenizer *tok, const zinc_jsonl_opts *o, char *out, size_t cap,
                                   int *built, zinc_jsonl_stats *st)
{
    *built = 0;
    struct stat sb;
    if (stat(jsonl, &sb) != 0) return zinc_error(ZINC_ERR_IO, "data: %s: %s", jsonl, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return zinc_error(ZINC_ERR_IO, "data: %s: not a regular file", jsonl);
    /* the key: what the shard is a function of */
    uint64_t h = 0xcbf29ce484222325ull;
    static const char recipe[] = "zinc jsonl shard 1";
    h = jl_fnv(h, recipe, sizeof recipe);
    char real[4096];
    const char *rp = realpath(jsonl, real) ? real : jsonl;
    h = jl_fnv(h, rp, strlen(rp) + 1);
    h = jl_fnv(h, &sb.st_size, sizeof sb.st_size);
    h = jl_fnv(h, &sb.st_mtim, sizeof sb.st_mtim);
    const char *tmpl = o && o->chat_template ? o->chat_template : "", *eos = o && o->eos ? o->eos : "";
    const int block = o ? o->block : 0;
    h = jl_fnv(h, tmpl, strlen(tmpl) + 1);
    h = jl_fnv(h, eos, strlen(eos) + 1);
    h = jl_fnv(h, &block, sizeof block);
    if (tok_path && *tok_path) {
        char tj[1200];
        struct stat tsb;
        snprintf(tj, sizeof tj, stat(tok_path, &tsb) == 0 && S_ISDIR(tsb.st_mode) ? "%s/tokenizer.json" : "%s", tok_path);
        if (!jl_fnv_file(&h, tj)) return zinc_error(ZINC_ERR_IO, "data: cannot read %s", tj);
    }
    /* the name: CACHE_DIR/BASE.HASH.bin (beside the .jsonl without a cache_dir) */
    const char *base = strrchr(jsonl, '/');
    base = base ? base + 1 : jsonl;
    int w;
    if (cache_dir && *cache_dir) {
        zinc_status ms = zinc_mkdir_p(cache_dir);
        if (ms != ZINC_OK) return zinc_error(ms, "data.cache_dir %s: %s", cache_dir, zinc_last_error());
        w = snprintf(out, cap, "%s/%.*s.%016llx.bin", cache_dir, (int)(strlen(base) - 6), base, (unsigned long long)h);
    } else {
        w = snprintf(out, cap, "%.*s.%016llx.bin", (int)(strlen(jsonl) - 6), jsonl, (unsigned long long)h);
    }
    if (w < 0 || (size_t)w >= cap) return zinc_error(ZINC_ERR_INVALID_ARG, "data: %s: cache path too long", jsonl);
    if (stat(out, &sb) == 0) return ZINC_OK; /* made before: shards are written whole or not at all */
    const char *in[1] = {jsonl};
    zinc_status s = zinc_data_write_shard_from_jsonl(in, 1, tok, o, out, st);
    *built = s == ZINC_OK;
    return s;
}
