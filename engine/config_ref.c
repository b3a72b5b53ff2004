/* config_ref.c - the configuration written back: zinc_config_dump (the resolved config
 * with DeepSpeed's names) and zinc_config_list_keys (the key reference README.md holds,
 * scripts/config-reference.sh), both walks of the descriptor tree of config.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "zinc/config.h"
#include "zinc/log.h"
#include "config_int.h"

/* ---------------------------------------------------------------- dump */

static json_t *dump_object(const zinc_config *c, const keydesc *tab)
{
    json_t *o = json_object();
    if (!o) return NULL;
    for (const keydesc *k = tab; k->name; k++) {
        json_t *v = NULL;
        const char *f = (const char *)c + (k->off == NOF ? 0 : k->off);
        if (k->type == T_SECTION) {
            if (k->skip && k->skip(c)) continue;
            v = dump_object(c, k->sub);
            if (v && json_object_size(v) == 0) {
                json_decref(v);
                continue;
            }
        } else if (k->off == NOF || (k->sched_mask && !(k->sched_mask & (1u << c->scheduler.type))) ||
                   (k->skip && k->skip(c))) {
            continue;
        } else {
            switch (k->type) {
            case T_BOOL: v = json_boolean(*(const int *)f); break;
            case T_INT32: v = json_integer(*(const int *)f); break;
            case T_INT: {
                int64_t n = *(const int64_t *)f;
                if ((k->flags & F_BATCH) && n == 0) { /* before resolve: as given */
                    if (!(c->given.valid && c->given.batch[k->auto_id - A_TBS] < 0)) continue;
                    v = json_string("auto");
                } else {
                    v = json_integer(n);
                }
                break;
            }
            case T_NUM: v = json_real(*(const double *)f); break;
            case T_PAIR: v = json_pack("[ff]", ((const double *)f)[0], ((const double *)f)[1]); break;
            case T_STR: v = json_string(f); break;
            case T_ENUM: {
                const char *name = config_enum_name(k->enums, *(const int *)f);
                if (!name) continue;
                v = json_string(name);
                break;
            }
            case T_PATHS: {
                int n = *(const int *)((const char *)c + k->aux);
                if (n == 0) continue;
                v = json_array();
                for (int i = 0; v && i < n && i < ZINC_MAX_PATHS; i++)
                    if (json_array_append_new(v, json_string(f + (size_t)i * 512))) {
                        json_decref(v);
                        v = NULL;
                    }
                break;
            }
            default: continue;
            }
        }
        if (!v || json_object_set_new(o, k->name, v)) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

char *zinc_config_dump(const zinc_config *c)
{
    if (!c) return NULL;
    json_t *root = dump_object(c, config_root_keys);
    if (!root) return NULL;
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    json_decref(root);
    return s;
}

/* ---------------------------------------------------------------- key reference */

/* One markdown table cell: "| text " with '|' escaped, in backticks when code. */
static void ref_cell(FILE *f, const char *s, int code)
{
    int tick = code && *s;
    fputs(tick ? "| `" : "| ", f);
    for (; *s; s++) {
        if (*s == '|') fputc('\\', f);
        fputc(*s, f);
    }
    fputs(tick ? "` " : " ", f);
}

/* The JSON type of a key: "integer", "[number, number]", ... */
static const char *ref_type(const keydesc *k)
{
    switch (k->type) {
    case T_BOOL: return "bool";
    case T_INT:
    case T_INT32: return "integer";
    case T_NUM: return "number";
    case T_PAIR: return "[number, number]";
    case T_STR:
    case T_ENUM: return "string";
    case T_PATHS: return "string or [string]";
    case T_SECTION:
    case T_FEATURE: return "object";
    case T_HOOK: return k->hook == config_hook_micro_list ? "[integer]" : "bool";
    case T_ANY:
    case T_REJECT:
    case T_ALIAS: break;
    }
    return "any";
}

/* A default number as a reader writes it: 300, 10000, 1e-08, 0.9. */
static void ref_number(double d, char *buf, size_t cap)
{
    if (d == floor(d) && fabs(d) < 1e15)
        snprintf(buf, cap, "%.0f", d);
    else
        config_fmt_double(d, buf, cap);
}

/* The one value a NY* or F_ONLY_* key takes ("" for other keys). */
static void ref_only(const keydesc *k, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (k->flags & (F_ONLY_FALSE | F_ONLY_TRUE))
        snprintf(buf, cap, "%s", k->flags & F_ONLY_TRUE ? "true" : "false");
    else if ((k->flags & F_NOTYET) && k->type == T_BOOL)
        snprintf(buf, cap, "%s", k->def ? "true" : "false");
    else if ((k->flags & F_NOTYET) && k->type != T_STR)
        ref_number(k->def, buf, cap);
}

/* The default as JSON, from the filled defaults d: "" for keys zinc does not
 * store, "none" where a stored key has none in its range (the batch triple,
 * total_num_steps: derived or required); for NY* / F_ONLY_* keys the one
 * value zinc supports. */
static void ref_default(const keydesc *k, const zinc_config *d, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (k->type == T_HOOK) {
        if (k->hook == config_hook_micro_list) {
            size_t n = (size_t)snprintf(buf, cap, "[");
            for (int i = 0; i < d->elasticity.n_micro && n < cap; i++)
                n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "",
                                      (long long)d->elasticity.micro_batch_sizes[i]);
            if (n < cap) snprintf(buf + n, cap - n, "]");
        } else {
            snprintf(buf, cap, "false");
        }
        return;
    }
    if (k->off == NOF) {
        ref_only(k, buf, cap);
        return;
    }
    const char *f = (const char *)d + k->off;
    char a[32], b[32];
    switch (k->type) {
    case T_BOOL: snprintf(buf, cap, "%s", *(const int *)f ? "true" : "false"); break;
    case T_INT:
    case T_INT32: {
        long long v = k->type == T_INT ? (long long)*(const int64_t *)f : (long long)*(const int *)f;
        if (config_in_range(k, (double)v))
            snprintf(buf, cap, "%lld", v);
        else
            snprintf(buf, cap, "none");
        break;
    }
    case T_NUM: ref_number(*(const double *)f, buf, cap); break;
    case T_PAIR:
        ref_number(((const double *)f)[0], a, sizeof a);
        ref_number(((const double *)f)[1], b, sizeof b);
        snprintf(buf, cap, "[%s, %s]", a, b);
        break;
    case T_STR: snprintf(buf, cap, "\"%s\"", f); break;
    case T_ENUM: {
        const char *name = config_enum_name(k->enums, *(const int *)f);
        if (name) snprintf(buf, cap, "\"%s\"", name);
        break;
    }
    default: break;
    }
}

/* What a key accepts, in the words of the validation errors (expected_text). */
static void ref_accepts(const keydesc *k, char *buf, size_t cap)
{
    if (k->type == T_ANY) {
        snprintf(buf, cap, "any value");
    } else if (k->type == T_REJECT) {
        snprintf(buf, cap, "nothing");
    } else if (k->type == T_HOOK && k->hook == config_hook_micro_list) {
        snprintf(buf, cap, "1 to %d distinct integers in 1..%.0f", ZINC_ELASTIC_MAX_MICRO, MICRO_MAX);
    } else if (k->type == T_HOOK) {
        snprintf(buf, cap, "true or false");
    } else if (k->flags & (F_ONLY_FALSE | F_ONLY_TRUE)) {
        snprintf(buf, cap, "%s", k->flags & F_ONLY_TRUE ? "true" : "false");
    } else if (k->type == T_PAIR) { /* expected_text words one element: "a number in [0, 1)" */
        char one[300];
        config_expected(k, one, sizeof one);
        snprintf(buf, cap, "an array of 2 numbers%s", one + strlen("a number"));
    } else {
        config_expected(k, buf, cap);
    }
    size_t n = strlen(buf);
    if ((k->flags & F_NOCASE) && n < cap) n += (size_t)snprintf(buf + n, cap - n, " (any case)");
    if ((k->flags & F_AUTO) && n < cap) snprintf(buf + n, cap - n, ", or \"auto\"");
}

/* What zinc does with a key: "honoured" (and when), "no effect: why", "only
 * 1: why", "error: why", ... prefix: the path of the key's section. */
static void ref_effect(const keydesc *k, const char *prefix, char *buf, size_t cap)
{
    const char *why = k->text ? k->text : NO_EFFECT_WHY, *dot = prefix[0] ? "." : "";
    char only[64];
    switch (k->type) {
    case T_SECTION: snprintf(buf, cap, "section"); return;
    case T_ALIAS:
        snprintf(buf, cap, "%salias of `%s%s%s`", k->flags & F_DEPRECATED ? "deprecated " : "", prefix, dot,
                 k->text);
        return;
    case T_REJECT: snprintf(buf, cap, "error: %s", k->text); return;
    case T_FEATURE:
        snprintf(buf, cap, "error unless empty or \"enabled\": false: %s", k->text);
        return;
    case T_ANY: snprintf(buf, cap, "no effect: %s", why); return;
    case T_HOOK:
        if (k->hook == config_hook_cpu_offload) {
            snprintf(buf, cap, "deprecated: true means `%s%s%s.device` \"cpu\"", prefix, dot, k->text);
            return;
        }
        break;
    default: break;
    }
    if (k->flags & F_DEPRECATED) {
        snprintf(buf, cap, "deprecated: %s", why);
    } else if ((k->flags & F_NOTYET) && k->type == T_STR) {
        snprintf(buf, cap, "only the values listed: %s", why);
    } else if (k->flags & (F_NOTYET | F_ONLY_FALSE | F_ONLY_TRUE)) {
        ref_only(k, only, sizeof only);
        snprintf(buf, cap, "only `%s`: %s", only, why);
    } else if (k->flags & F_FINISH) {
        snprintf(buf, cap, "checked against the run: %s", why);
    } else if (k->off == NOF && k->type != T_HOOK) {
        snprintf(buf, cap, "no effect: %s", why);
    } else if (k->flags & F_UNUSED) {
        snprintf(buf, cap, "the default is what zinc does, another value has no effect: %s", why);
    } else {
        size_t n = (size_t)snprintf(buf, cap, "honoured");
        char users[128];
        config_sched_users(k->sched_mask, users, sizeof users);
        if (k->sched_mask && n < cap) n += (size_t)snprintf(buf + n, cap - n, " by %s", users);
        if ((k->flags & F_STAGE3) && n < cap) n += (size_t)snprintf(buf + n, cap - n, " at ZeRO stage 3");
        if ((k->flags & F_TP) && n < cap)
            n += (size_t)snprintf(buf + n, cap - n, " with tensor_parallel.autotp_size > 1");
        if ((k->flags & F_PP) && n < cap)
            n += (size_t)snprintf(buf + n, cap - n, " with pipeline.stages x pipeline.virtual_stages > 1");
        if ((k->flags & F_LLAMA) && n < cap) n += (size_t)snprintf(buf + n, cap - n, " for model.type \"llama\"");
        if ((k->flags & F_REQUIRED) && n < cap) snprintf(buf + n, cap - n, "; required in its section");
    }
}

/* One row per key of tab, a section's keys after it. zinc: the section is zinc's. */
static void ref_walk(FILE *f, const keydesc *tab, const zinc_config *d, char *path, size_t plen, int zinc)
{
    for (const keydesc *k = tab; k->name; k++) {
        char prefix[PATH_CAP], dflt[128], accepts[600], effect[700];
        snprintf(prefix, sizeof prefix, "%s", path);
        size_t n = config_path_push(path, plen, k->name);
        /* an alias takes its target's values */
        const keydesc *t = k->type == T_ALIAS ? config_find_key(tab, k->text) : k;
        if (!t) t = k;
        if (k->type == T_ALIAS)
            dflt[0] = '\0';
        else
            ref_default(k, d, dflt, sizeof dflt);
        ref_accepts(t, accepts, sizeof accepts);
        ref_effect(k, prefix, effect, sizeof effect);
        int z = zinc || (k->flags & F_ZINC);
        ref_cell(f, path, 1);
        ref_cell(f, ref_type(t), 0);
        ref_cell(f, dflt, strcmp(dflt, "none") != 0);
        ref_cell(f, accepts, 0);
        ref_cell(f, effect, 0);
        ref_cell(f, z ? "zinc" : "DeepSpeed", 0);
        fputs("|\n", f);
        if (k->type == T_SECTION) ref_walk(f, k->sub, d, path, n, z);
        path[plen] = '\0';
    }
}

zinc_status zinc_config_list_keys(FILE *f)
{
    if (!f) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_config_list_keys: no stream");
    zinc_config *d = malloc(sizeof *d);
    if (!d) return zinc_error(ZINC_ERR_NOMEM, "zinc_config_list_keys: out of memory");
    zinc_config_defaults(d);
    char path[PATH_CAP] = "";
    fputs("| key | type | default | accepts | effect in zinc | from |\n|---|---|---|---|---|---|\n", f);
    ref_walk(f, config_root_keys, d, path, 0, 0);
    free(d);
    if (fflush(f) != 0 || ferror(f)) return zinc_error(ZINC_ERR_IO, "key reference: write failed");
    return ZINC_OK;
}
