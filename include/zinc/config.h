/* zinc/config.h - the training configuration: DeepSpeed's ds_config keys
 * (same names, defaults and batch rule) plus zinc's model/data/train/device/
 * comm_backend sections.
 *
 * Parsing is strict: malformed JSON reports line and column; an unknown key
 * inside a section, a wrong type, an out-of-range value or an inconsistent
 * batch triple is ZINC_ERR_CONFIG with a one-line detail naming the key path,
 * what was expected and what was found (with a did-you-mean for misspellings).
 * Unknown top-level keys are warned about (DeepSpeed ignores them silently).
 * Deprecated DeepSpeed names are accepted with a warning naming the new one.
 * Numbers such as 1e9 are accepted where an integer is expected if integral.
 */
#ifndef ZINC_CONFIG_H
#define ZINC_CONFIG_H

#include <stdint.h>
#include <stdio.h> /* FILE: zinc_config_list_keys */

#include "zinc/offload.h" /* zinc_offload_device */
#include "zinc/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ZINC_MAX_PATHS 16
#define ZINC_ELASTIC_MAX_MICRO 16 /* elasticity.micro_batch_sizes entries */

/* train.on_nan: what a step whose gradients (or loss) are not finite does
 * when fp16 loss scaling is off: stop the job naming the first such
 * parameter, or skip the update (at most train.max_skipped in a row). */
typedef enum { ZINC_ON_NAN_ERROR = 0, ZINC_ON_NAN_SKIP } zinc_on_nan;

typedef enum { ZINC_OPT_ADAM = 0, ZINC_OPT_ADAMW } zinc_opt_type;
typedef enum {
    ZINC_SCHED_NONE = 0,   /* constant lr */
    ZINC_SCHED_WARMUP_LR,
    ZINC_SCHED_WARMUP_DECAY_LR,
    ZINC_SCHED_WARMUP_COSINE_LR,
} zinc_sched_type;
typedef enum { ZINC_WARMUP_LOG = 0, ZINC_WARMUP_LINEAR } zinc_warmup_type;
typedef enum { ZINC_DEVICE_AUTO = 0, ZINC_DEVICE_CPU, ZINC_DEVICE_CUDA } zinc_device_kind;
typedef enum { ZINC_COMM_AUTO = 0, ZINC_COMM_MPI, ZINC_COMM_NCCL } zinc_comm_kind;

typedef struct zinc_config {
    /* batch triple; resolved by zinc_config_resolve (0 = not given before it) */
    int64_t train_batch_size;
    int64_t train_micro_batch_size_per_gpu;
    int64_t gradient_accumulation_steps;
    double gradient_clipping;          /* 1.0; 0 disables */
    int64_t steps_per_print;           /* 10 */
    int wall_clock_breakdown;          /* false */

    struct {
        zinc_opt_type type;            /* Adam */
        double lr;                     /* 1e-3 */
        double betas[2];               /* 0.9, 0.999 */
        double eps;                    /* 1e-8 */
        double weight_decay;           /* 0 */
        int adam_w_mode;               /* true */
    } optimizer;

    struct {
        zinc_sched_type type;          /* NONE when absent */
        double warmup_min_lr;          /* 0 */
        double warmup_max_lr;          /* 0.001 */
        int64_t warmup_num_steps;      /* 1000 */
        zinc_warmup_type warmup_type;  /* log */
        int64_t total_num_steps;       /* required for Decay/Cosine */
        double warmup_min_ratio;       /* 0 (cosine) */
        double cos_min_ratio;          /* 1e-4 (cosine) */
    } scheduler;

    struct {
        int enabled;                   /* false */
        double loss_scale;             /* 0 = dynamic */
        int64_t initial_scale_power;   /* 16 */
        int64_t loss_scale_window;     /* 1000 */
        int64_t hysteresis;            /* 2 */
        double min_loss_scale;         /* 1 */
    } fp16;
    struct {
        int enabled;                   /* false */
    } bf16;

    struct {
        int stage;                                   /* 0 */
        int contiguous_gradients;                    /* true */
        int overlap_comm;                            /* true for stage 3, else false */
        int reduce_scatter;                          /* true */
        int64_t reduce_bucket_size;                  /* 5e8 */
        int64_t allgather_bucket_size;               /* 5e8 */
        int64_t stage3_prefetch_bucket_size;         /* 5e7 */
        int64_t stage3_param_persistence_threshold;  /* 1e5 */
        int64_t stage3_max_live_parameters;          /* 1e9 */
        int64_t stage3_max_reuse_distance;           /* 1e9 */
        int64_t sub_group_size;                      /* 1e9 */
        int stage3_gather_16bit_weights_on_model_save; /* false */
        struct {
            zinc_offload_device device;  /* none */
            char nvme_path[512];
            int pin_memory;              /* true */
            int64_t buffer_count;        /* 4 */
            int pipeline_read;           /* false */
            int pipeline_write;          /* false */
            int delayed_update;          /* false: ZeRO-Offload's one-step delayed parameter update
                                          * (the host step overlaps the next step's forward and
                                          * backward, which use the params of one update before) */
            double ratio;                /* 1: the fraction of the optimizer state offloaded
                                          * (device cpu on a GPU; the rest stays on the GPU) */
        } offload_optimizer;
        struct {
            zinc_offload_device device;  /* none */
            char nvme_path[512];
            int pin_memory;              /* true */
            int64_t buffer_count;        /* 5 */
            int64_t buffer_size;         /* 1e8 */
            int64_t max_in_cpu;          /* 1e9 */
        } offload_param;
    } zero;

    struct {
        int64_t block_size;            /* 1048576 */
        int64_t queue_depth;           /* 8 */
        int64_t intra_op_parallelism;  /* 1 (old name thread_count) */
        int single_submit;             /* false */
        int overlap_events;            /* true */
    } aio;

    /* zinc sections */
    struct {
        char type[32];                 /* "gpt2" | "llama" (Llama, Qwen2, Mistral: zinc/llama.h) */
        int64_t n_layer;               /* 4 */
        int64_t n_embd;                /* 128 */
        int64_t n_head;                /* 4 */
        int64_t n_kv_head;             /* 0 = n_head: key/value heads (grouped-query attention; llama) */
        int64_t intermediate_size;     /* 0 = the model's: 4 n_embd (gpt2), 8/3 n_embd rounded up to a
                                        * multiple of 256 (llama): the MLP width */
        int tie_word_embeddings;       /* true: the output head is the token embedding (gpt2: always) */
        int attention_bias;            /* false: q/k/v biases (Qwen2; llama only) */
        double rope_theta;             /* 10000: rotary base (llama only) */
        double rms_norm_eps;           /* 1e-6: RMSNorm epsilon (llama only) */
        struct {                       /* Llama-3's rope_scaling (llama only) */
            char type[16];             /* "" none | "llama3" */
            double factor;             /* 8 */
            double low_freq_factor;    /* 1 */
            double high_freq_factor;   /* 4 */
            int64_t original_max_position_embeddings; /* 8192 */
        } rope_scaling;
        int64_t vocab_size;            /* 50304; must be >= 256 for tokenizer bytes */
        int64_t block_size;            /* 64 (max sequence length T) */
        int64_t seed;                  /* 1337: parameter init seed */
        char init_from[512];           /* "": a safetensors file or a Hugging Face model folder */
        char from_pretrained[512];     /* "": a Hugging Face model folder (config.json, weights,
                                        * tokenizer): sets the model's shape, init_from and the
                                        * tokenizer (zinc_gpt2_pretrained_config) */
        int recompute;                 /* false: keep every activation backward needs;
                                        * true: recompute the cheap ones (less memory) */
        char freeze[ZINC_MAX_PATHS][512]; /* parameter names (fnmatch patterns, "h.*.attn.*")
                                           * not trained: no grads, master or optimizer state */
        int n_freeze;
        struct {                       /* model.lora (PEFT's LoraConfig): given, LoRA adapters are
                                        * trained and every other parameter is frozen */
            int enabled;               /* the section is in the config */
            int64_t r;                 /* 8: the adapters' rank */
            double alpha;              /* 8 (PEFT's lora_alpha): the update is (alpha/r) B A */
            double dropout;            /* 0 (lora_dropout): on the adapter's input, in [0, 1) */
            char target_modules[ZINC_MAX_PATHS][512]; /* module names (suffixes, as PEFT matches
                                        * them); none: c_attn (gpt2), q_proj, v_proj (llama) */
            int n_target_modules;
            char init[16];             /* "default": A Kaiming-uniform, B 0 (PEFT's); "gaussian":
                                        * A N(0, 1/r^2), B 0 */
            int use_rslora;            /* false: alpha/r; true: alpha/sqrt(r) */
        } lora;
    } model;

    /* DeepSpeed's tensor_parallel section (training: AutoTP's size) */
    struct {
        int64_t size;                  /* autotp_size: 1 */
        int sequence_parallel;         /* false: Megatron sequence parallelism */
    } tp;

    /* DeepSpeed's activation_checkpointing section (or pipeline.activation_checkpoint_interval):
     * given, whole-layer recompute (every layer
     * between the first and the last keeps only its input; backward runs it forward again) */
    struct {
        int enabled;                   /* the section is in the config */
        int64_t number_checkpoints;    /* 0 (absent): every such layer is a checkpoint; K: the
                                        * layers in K contiguous groups, a group's input kept */
        int cpu_checkpointing;         /* false: checkpoints in host memory (pinned on a GPU) */
        int partition_activations;     /* false: checkpoints split over the TP group */
        int64_t interval;              /* pipeline.activation_checkpoint_interval: 0 (off), or N
                                        * layers a group (turns recompute on) */
    } ac;

    /* DeepSpeed's pipeline section (stages, partition) and zinc's schedule keys */
    struct {
        int64_t stages;                /* 1: pipeline stages (PP size); "auto" = 1 */
        char partition[128];           /* "parameters" | "uniform" | "type:REGEX" */
        int schedule;                  /* zinc_pp_kind (zinc/pipeline.h): 1f1b (1) */
        int64_t virtual_stages;        /* 1: model chunks per stage (interleaved) */
    } pp;

    struct {
        char train[ZINC_MAX_PATHS][512]; /* token shard paths (glob patterns allowed) */
        int n_train;
        char text[ZINC_MAX_PATHS][512];  /* text files/dirs tokenized at start (alternative to train) */
        int n_text;
        char valid[ZINC_MAX_PATHS][512]; /* held-out token shards for the validation loss (glob ok) */
        int n_valid;
        char tokenizer[512];             /* "bytes", or a tokenizer.json / a folder holding one */
        int64_t seq_len;                 /* 0 = model.block_size */
        int64_t seed;                    /* 1234: sample order seed */
        char text_exts[128];             /* ".c,.h,.md,.sh,.json,.txt": endings of files taken
                                            from text directories */
        char chat_template[32];          /* "": none; chatml, qwen2, llama3, llama2: renders the
                                            chat messages of .jsonl data (zinc/data.h) */
        char cache_dir[512];             /* where .jsonl data's shards are cached ("": beside
                                            each .jsonl file) */
    } data;

    struct {
        int64_t max_steps;             /* 100 */
        int64_t log_every;             /* 0 = steps_per_print */
        char save_dir[512];            /* "" */
        char metrics_file[512];        /* "" = none */
        int64_t save_every;            /* 0 */
        int64_t keep_last;             /* 0 = all */
        char resume[512];              /* "" | "auto" | path */
        int64_t threads;               /* 0 = cores / local ranks */
        zinc_on_nan on_nan;            /* error */
        int64_t max_skipped;           /* 10: non-finite steps in a row before on_nan "skip" stops */
        int check_memory;              /* true: refuse at start-up a job whose planned memory (GPU,
                                          host, NVMe) exceeds what the node has */
        int64_t eval_every;            /* 0: the validation loss (data.valid) at the end only; N: every N steps too */
        int64_t eval_batches;          /* 10: global batches of data.valid per evaluation (fewer when it has fewer) */
        double peak_tflops;            /* 0: the device's peak for the step line's MFU (0: unknown,
                                          or measured at start-up on GPUs) */
    } train;

    /* DeepSpeed's monitors (zinc/monitor.h): rank 0 writes OUTPUT_PATH/JOB_NAME/ */
    struct {
        int enabled;                   /* false */
        char output_path[512];         /* "": the working directory */
        char job_name[256];            /* "DeepSpeedJobName" */
    } tensorboard, csv_monitor;

    zinc_device_kind device;           /* auto */
    zinc_comm_kind comm_backend;       /* auto */
    double comm_timeout_s;             /* 300 */

    /* DeepSpeed's elasticity section (version 0.1): when enabled,
     * zinc_config_resolve derives the batch triple from it for any valid
     * rank count, keeping the global batch (engine/elastic.c). */
    struct {
        int enabled;                   /* false */
        int64_t max_train_batch_size;  /* 2000 */
        int64_t micro_batch_sizes[ZINC_ELASTIC_MAX_MICRO]; /* [2, 4, 6] */
        int n_micro;
        int64_t min_gpus, max_gpus;    /* 1, 10000 */
        int prefer_larger_batch;       /* true */
        int ignore_non_elastic_batch_info; /* false */
    } elasticity;

    /* Private to engine/config.c: the batch keys as given (0 absent, -1
     * "auto"), the triple last resolved and the origin, so that
     * zinc_config_resolve can be re-run for another DP size. */
    struct {
        int valid;
        int64_t batch[3];
        int64_t resolved[3];
        char origin[256];
        char batch_origin[320]; /* "--set KEY=VALUE" that set a batch key, else "" */
    } given;
} zinc_config;

/* Sequence length used for training: data.seq_len, or model.block_size when 0. */
static inline int64_t zinc_config_seq_len(const zinc_config *c)
{
    return c->data.seq_len > 0 ? c->data.seq_len : c->model.block_size;
}

/* Key/value heads: model.n_kv_head, or model.n_head when 0. */
static inline int64_t zinc_config_kv_heads(const zinc_config *c)
{
    return c->model.n_kv_head > 0 ? c->model.n_kv_head : c->model.n_head;
}

/* The MLP width: model.intermediate_size, or the model type's default when 0 (4 n_embd
 * for gpt2; Llama's 2/3 of 4 n_embd rounded up to a multiple of 256). */
static inline int64_t zinc_config_ffn(const zinc_config *c)
{
    if (c->model.intermediate_size > 0) return c->model.intermediate_size;
    if (c->model.type[0] == 'l') return (8 * c->model.n_embd / 3 + 255) / 256 * 256;
    return 4 * c->model.n_embd;
}

/* Fills c with every default. Cannot fail. */
void zinc_config_defaults(zinc_config *c);

/* Parses a JSON file (path) into c (defaults first), then applies overrides
 * ("a.b.c=value", value parsed as JSON, or as a string if it is not valid
 * JSON), then validates and resolves every "auto" except the batch triple,
 * which stays as given (0 for absent or "auto") until zinc_config_resolve
 * fills it for a DP size; checks that hold for every DP size run here.
 * Returns ZINC_ERR_CONFIG (or ZINC_ERR_IO for an unreadable file) with a
 * detail; c is left unchanged on failure. Warnings (deprecated names,
 * unknown top-level keys) go to the log. */
zinc_status zinc_config_load(const char *path, const char *const *overrides, int n_overrides,
                             zinc_config *c);

/* zinc_config_load that also returns, in *effects (malloc'd; caller frees;
 * NULL on failure), one line per key given in the file or an override:
 * "path = value: effect", the effect being "applied", "default", "applied
 * (\"auto\", ...)", "no effect (why)" or "no effect at stage N". Keys given
 * without effect are also listed in one warning line at load. */
zinc_status zinc_config_load_effects(const char *path, const char *const *overrides, int n_overrides,
                                     zinc_config *c, char **effects);

/* Same as zinc_config_load but from a JSON string; origin names it in errors. */
zinc_status zinc_config_load_string(const char *json, const char *origin,
                                    const char *const *overrides, int n_overrides,
                                    zinc_config *c);

/* Resolves the layout and the batch triple for a job of `world` ranks: the
 * mesh is TP x DP with DP = world / tensor_parallel.autotp_size (each TP
 * size checked against the world, the heads, the MLP width and the
 * vocabulary first), then train_batch_size == micro * grad_accum * DP
 * (DeepSpeed's rule: two given derive the third; train_batch_size alone
 * means grad_accum 1; micro alone means grad_accum 1; "auto" counts as
 * absent). May be called again with another world size; it works from the
 * values as given. c is unchanged on failure (ZINC_ERR_CONFIG;
 * ZINC_ERR_INVALID_ARG for world < 1). */
zinc_status zinc_config_resolve(zinc_config *c, int world);
/* The mesh checks zinc_config_resolve makes, alone (ZINC_ERR_CONFIG naming
 * the key and the numbers): TP and PP divide the world, TP divides the
 * heads, the MLP width and the padded vocabulary, virtual stages only with
 * the interleaved schedule, whose micro-batches (gradient_accumulation_steps)
 * are a multiple of the stages. Whether the model splits its layers over TP
 * and has a layer for every pipeline chunk is the engine's check. */
zinc_status zinc_config_check_mesh(const zinc_config *c, int world);
/* DP = world / (TP x PP): the data-parallel size of a job of `world` ranks. */
int zinc_config_dp_size(const zinc_config *c, int world);

/* Elasticity (DeepSpeed's version 0.1 rule, engine/elastic.c). The global
 * batch: of the candidates (each micro-batch size and their least common
 * multiple, scaled by the largest highly composite number that keeps them
 * <= max_train_batch_size), the one that the most rank counts in
 * [min_gpus, max_gpus] can run, a tie going to the larger batch when
 * prefer_larger_batch (else the smaller). A rank count n can run batch B
 * when some micro-batch size m has B % (m * n) == 0; it then runs the
 * largest such m with B / (m * n) accumulation steps. */
int64_t zinc_elastic_batch(const zinc_config *c);
/* 1 when ranks can run batch, with *micro its micro-batch size; else 0. */
int zinc_elastic_fits(const zinc_config *c, int64_t batch, int64_t ranks, int64_t *micro);
/* The largest rank count <= available that the elastic batch can run (0:
 * none); available itself when elasticity is not enabled. */
int zinc_elastic_ranks(const zinc_config *c, int available);
/* Writes the valid rank counts ("1, 2, 3, 4, 6, 8, 12, 24", shortened past
 * cap) of batch into buf. */
void zinc_elastic_valid_list(const zinc_config *c, int64_t batch, char *buf, size_t cap);

/* Checks every number stored in c against its key's range (the ranges the
 * parser enforces, which are what zinc's consumers hold: an int micro-batch,
 * at most 16384 layers, ...); for configs filled or edited through the C API.
 * zinc_config_resolve runs it first. ZINC_ERR_CONFIG naming the key. */
zinc_status zinc_config_check(const zinc_config *c);

/* Writes the resolved config as pretty JSON (DeepSpeed names) to a malloc'd
 * string; caller frees. NULL on allocation failure. */
char *zinc_config_dump(const zinc_config *c);

/* Writes the key reference to f (borrowed), generated from the table the
 * parser validates with: a markdown table, one row per key the parser
 * accepts (sections and their keys, aliases, keys without effect) in table
 * order: dotted path, JSON type, default, what it accepts (as the validation
 * errors word it), what zinc does with it ("honoured", "no effect: why",
 * "only `1`: why", "error when enabled: why", "alias of `path`", ...) and
 * whether the key is DeepSpeed's or zinc's own. README.md's config reference
 * is this output (scripts/config-reference.sh). ZINC_ERR_IO when writing
 * fails, ZINC_ERR_NOMEM, ZINC_ERR_INVALID_ARG for a NULL f. */
zinc_status zinc_config_list_keys(FILE *f);

#ifdef __cplusplus
}
#endif

#endif
