/* config_int.h - the key descriptors of the configuration, shared by the parser
 * (config.c) and the writers of the resolved config and of the key reference
 * (config_ref.c). Internal to engine/. */
#ifndef ZINC_CONFIG_INT_H
#define ZINC_CONFIG_INT_H

#include <math.h>
#include <stddef.h>

#include <jansson.h>

#include "zinc/config.h"

typedef enum key_type {
    T_BOOL,    /* int field: true/false */
    T_INT,     /* int64_t field; integral reals (1e9) accepted */
    T_INT32,   /* int field */
    T_NUM,     /* double field */
    T_PAIR,    /* double[2] field (betas) */
    T_STR,     /* char[cap] field; optional list of allowed values */
    T_ENUM,    /* int-sized enum field, values named by ->enums */
    T_PATHS,   /* string or array of strings: char[ZINC_MAX_PATHS][512] + int count */
    T_SECTION, /* object, keys in ->sub */
    T_ANY,     /* any JSON value, accepted without effect (->text: why) */
    T_FEATURE, /* a DeepSpeed feature section zinc lacks: "enabled": true (or, for a
                * section without "enabled", any content) is an error, else no effect */
    T_ALIAS,   /* another name of ->text in the same table */
    T_REJECT,  /* always an error, ->text says what to use */
    T_HOOK,    /* custom handler */
} key_type;

enum {
    F_AUTO = 1u << 0,       /* "auto" accepted (recorded in ctx->autos[auto_id]) */
    F_LO_OPEN = 1u << 1,    /* value > lo rather than >= lo */
    F_HI_OPEN = 1u << 2,    /* value < hi rather than <= hi */
    F_NULL_OK = 1u << 3,    /* null means "keep the default" */
    F_DEPRECATED = 1u << 4, /* warn when given */
    F_NOCASE = 1u << 5,     /* enum/allowed strings match case-insensitively */
    F_REQUIRED = 1u << 6,   /* must be present when its section is */
    F_STAGE3 = 1u << 7,     /* only meaningful at ZeRO stage 3 */
    F_BATCH = 1u << 8,      /* one of the batch triple */
    F_ONLY_FALSE = 1u << 9, /* bool that zinc supports only as false (->text says why) */
    F_ONLY_TRUE = 1u << 10, /* bool that zinc supports only as true */
    F_NOTYET = 1u << 11,    /* changes what is computed or how memory is used: any value
                             * but ->def is "not supported yet" (->text says why) */
    F_FINISH = 1u << 13,    /* not stored; finish() checks it against the run (effect: applied;
                             * ->text says what is accepted) */
    F_UNUSED = 1u << 12,    /* stored, but nothing reads it yet: a value other than the
                             * default has no effect (->text says what zinc does) */
    F_TP = 1u << 14,        /* only meaningful with a TP group (tensor_parallel.autotp_size > 1) */
    F_PP = 1u << 15,        /* only meaningful with several model chunks (stages x virtual_stages > 1) */
    F_LLAMA = 1u << 16,     /* only meaningful for model.type "llama" */
    F_ZINC = 1u << 17,      /* zinc's own key, not DeepSpeed's (a section's: all its keys);
                             * for zinc_config_list_keys only */
};

/* slots of ctx->autos: which keys were given as "auto" */
enum {
    A_NONE = 0, A_TBS, A_MICRO, A_GAS, A_CLIP, A_LR, A_BETAS, A_EPS, A_WD, A_WMIN, A_WMAX,
    A_WNUM, A_TOTAL, A_FP16, A_BF16, A_RBS, A_PREFETCH, A_PERSIST,
};

typedef struct enum_name {
    const char *name;
    int value;
} enum_name;

typedef struct cfg_ctx cfg_ctx;
typedef struct keydesc keydesc;
typedef zinc_status (*key_hook)(cfg_ctx *x, const keydesc *k, json_t *obj, json_t *v,
                                const char *path);

struct keydesc {
    const char *name;
    key_type type;
    size_t off;                  /* offsetof(zinc_config, field); NOF: validated, not stored */
    double lo, hi;               /* range of numbers */
    double def, def2;            /* defaults of numbers, bools and enums (def2: pair) */
    const char *sdef;            /* default of strings */
    unsigned flags;
    int auto_id;                 /* A_* slot when F_AUTO */
    unsigned sched_mask;         /* scheduler.params: the types (1 << type) taking the key */
    size_t aux;                  /* T_STR: capacity; T_PATHS: offset of the count */
    const keydesc *sub;          /* T_SECTION: its keys, ended by a NULL name */
    const enum_name *enums;      /* T_ENUM: names */
    const char *const *allowed;  /* T_STR: allowed values (NULL: any) */
    const char *text;            /* T_ALIAS: target; T_REJECT/F_ONLY_*: why; T_HOOK: section;
                                  * else why a key has no effect (or only one value) */
    key_hook hook;               /* T_HOOK */
    int (*skip)(const zinc_config *c); /* T_SECTION: left out of the dump when true */
};

#define NOF ((size_t)-1)
#define OFF(f) offsetof(zinc_config, f)
#define FSZ(f) sizeof(((zinc_config *)0)->f)
#define INF HUGE_VAL
#define PATH_CAP 256

/* Upper bounds of integer keys: what the consumer holds, and sizes that stay
 * sane where a value drives an allocation or a product (zinc_config_check).
 * Every stored integer key has a finite bound (tests/config checks this). */
#define STEPS_MAX 1e12          /* step counts, intervals */
#define ELEMS_MAX 1e15          /* element counts (x 16 bytes still fits int64) */
#define SEED_MAX 9223372036854775807.0 /* uint64 seeds: any non-negative int64 */
#define TBS_MAX 2147483647.0    /* samples per step */
#define MICRO_MAX 1048576.0     /* samples per micro-batch (int in the engine) */
#define GAS_MAX 16777216.0      /* micro-batches per step (int in the engine) */
#define LAYERS_MAX 16384.0
#define EMBD_MAX 1048576.0
#define HEADS_MAX 65536.0
#define SEQ_MAX 16777216.0      /* tokens per sequence (int in the kernels) */
#define THREADS_MAX 4096.0
#define KEEP_MAX 1000000.0
#define TP_MAX 4096.0              /* TP ranks in one group */
#define PP_MAX 4096.0              /* pipeline stages */
#define AIO_BLOCK_MAX 1073741824.0 /* one request moves at most 1 GiB (offload/aio.c) */
#define AIO_QD_MAX 4096.0          /* ring entries per worker (offload/aio.c) */
#define AIO_WORKERS_MAX 256.0      /* workers (offload/aio.c) */
#define BUFFERS_MAX 1024.0

#define NO_EFFECT_WHY "accepted for DeepSpeed compatibility"

/* the tree of every key, ended by a NULL name (config.c) */
extern const keydesc config_root_keys[];

const keydesc *config_find_key(const keydesc *tab, const char *name);
const char *config_enum_name(const enum_name *e, int value);
void config_fmt_double(double d, char *buf, size_t cap); /* shortest text that reads back as d */
void config_expected(const keydesc *k, char *buf, size_t cap); /* "a number in [lo, hi]" & co. */
size_t config_path_push(char *path, size_t len, const char *name); /* path "a.b" + name; new length */
int config_in_range(const keydesc *k, double d);
void config_sched_users(unsigned mask, char *buf, size_t cap); /* the scheduler types taking a key */

/* hooks the key reference names */
zinc_status config_hook_micro_list(cfg_ctx *x, const keydesc *k, json_t *obj, json_t *v, const char *path);
zinc_status config_hook_cpu_offload(cfg_ctx *x, const keydesc *k, json_t *obj, json_t *v, const char *path);

#endif
