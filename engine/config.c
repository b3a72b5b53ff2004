/* config.c - the training configuration: DeepSpeed's ds_config keys (same
 * names, defaults and batch rule) plus zinc's model/data/train sections,
 * parsed strictly with jansson.
 *
 * One mechanism does the work: a tree of key descriptors (name, type, field
 * offset, range, default, flags). zinc_config_defaults walks it to fill the
 * defaults, the validator walks it against the JSON tree (unknown keys get a
 * did-you-mean from the same table), zinc_config_dump walks it again to
 * write the resolved config back with DeepSpeed's names, and
 * zinc_config_list_keys to print the key reference (README.md's is its
 * output, scripts/config-reference.sh). Rules that tie keys
 * together (the batch triple, "auto" values, fp16 vs bf16, offload vs stage)
 * run after the walk, in finish().
 *
 * Load order: read the file -> json_loadb(JSON_REJECT_DUPLICATES) -> apply
 * overrides to the tree -> normalise ("zero_optimization": bool) -> walk the
 * tables -> resolve "auto" -> cross-key checks -> copy into the caller's
 * struct (untouched on failure).
 *
 * "auto" (Hugging Face Trainer's placeholder) resolves as follows; the
 * Trainer would fill these from its own arguments, which zinc does not have:
 *   train_batch_size, train_micro_batch_size_per_gpu,
 *   gradient_accumulation_steps  -> treated as absent by the batch rule; if
 *                                   neither tbs nor micro is a number,
 *                                   micro 1 and grad_accum 1 (or as given)
 *   gradient_clipping            -> 1.0 (default)
 *   optimizer lr                 -> scheduler warmup_max_lr when the scheduler
 *                                   (WarmupLR/WarmupDecayLR) gives a number,
 *                                   else 1e-3
 *   betas, eps, weight_decay     -> defaults (0.9/0.999, 1e-8, 0)
 *   warmup_min_lr                -> 0
 *   warmup_max_lr                -> optimizer lr (after the rule above)
 *   total_num_steps              -> train.max_steps
 *   warmup_num_steps             -> 1000 capped at total_num_steps (at
 *                                   train.max_steps for WarmupLR)
 *   fp16.enabled, bf16.enabled   -> false
 *   reduce_bucket_size           -> n_embd * n_embd
 *   stage3_prefetch_bucket_size  -> 0.9 * n_embd * n_embd
 *   stage3_param_persistence_threshold -> 10 * n_embd
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <jansson.h>

#include "zinc/config.h"
#include "zinc/data.h"
#include "zinc/log.h"
#include "config_int.h"

/* ---------------------------------------------------------------- descriptors */

struct cfg_ctx {
    const char *origin;
    zinc_config *c;
    const char *const *ovr; /* "a.b=v" strings, for naming --set as the origin */
    int n_ovr;
    unsigned autos;         /* 1 << A_* */
    char noeff[1024];       /* keys given without effect, for one warning line */
    size_t noeff_n;
    int noeff_more;         /* more than fit */
    char *eff;              /* "path = value: effect" lines (zinc_config_load_effects) */
    size_t eff_n, eff_cap;
    int want_eff;
};



/* stored keys */
#define KB(n, f, d) {.name = n, .type = T_BOOL, .off = OFF(f), .def = d}
#define KBA(n, f, d, fl, a) {.name = n, .type = T_BOOL, .off = OFF(f), .def = d, .flags = fl, .auto_id = a}
#define KI(n, f, l, h, d) {.name = n, .type = T_INT, .off = OFF(f), .lo = l, .hi = h, .def = d}
#define KIA(n, f, l, h, d, fl, a) \
    {.name = n, .type = T_INT, .off = OFF(f), .lo = l, .hi = h, .def = d, .flags = fl, .auto_id = a}
#define KN(n, f, l, h, d, fl) {.name = n, .type = T_NUM, .off = OFF(f), .lo = l, .hi = h, .def = d, .flags = fl}
#define KNA(n, f, l, h, d, fl, a) \
    {.name = n, .type = T_NUM, .off = OFF(f), .lo = l, .hi = h, .def = d, .flags = (fl) | F_AUTO, .auto_id = a}
#define KS(n, f, d, al) \
    {.name = n, .type = T_STR, .off = OFF(f), .sdef = d, .aux = FSZ(f), .allowed = al, .flags = F_NULL_OK}
#define KE(n, f, d, names, fl) {.name = n, .type = T_ENUM, .off = OFF(f), .def = d, .enums = names, .flags = fl}
#define KP(n, f, cnt) {.name = n, .type = T_PATHS, .off = OFF(f), .aux = OFF(cnt)}
#define KSEC(n, t) {.name = n, .type = T_SECTION, .off = NOF, .sub = t, .flags = F_NULL_OK}
#define KSECZ(n, t) {.name = n, .type = T_SECTION, .off = NOF, .sub = t, .flags = F_NULL_OK | F_ZINC}
/* DeepSpeed keys zinc accepts but does not use (yet): validated, not stored */
#define XB(n) {.name = n, .type = T_BOOL, .off = NOF, .flags = F_NULL_OK}
#define XI(n, l, h) {.name = n, .type = T_INT, .off = NOF, .lo = l, .hi = h, .flags = F_NULL_OK}
#define XN(n, l, h, fl) {.name = n, .type = T_NUM, .off = NOF, .lo = l, .hi = h, .flags = (fl) | F_NULL_OK}
#define XS(n, al, fl) {.name = n, .type = T_STR, .off = NOF, .allowed = al, .flags = (fl) | F_NULL_OK}
#define XANY(n) {.name = n, .type = T_ANY, .off = NOF}
/* the same with the reason shown by --check */
#define XBW(n, why) {.name = n, .type = T_BOOL, .off = NOF, .flags = F_NULL_OK, .text = why}
#define XIW(n, l, h, why) {.name = n, .type = T_INT, .off = NOF, .lo = l, .hi = h, .flags = F_NULL_OK, .text = why}
#define XSW(n, why) {.name = n, .type = T_STR, .off = NOF, .flags = F_NULL_OK, .text = why}
#define XANYW(n, why) {.name = n, .type = T_ANY, .off = NOF, .text = why}
/* keys whose other values zinc cannot compute yet: an error, never a silent fallback */
#define NYB(n, why) {.name = n, .type = T_BOOL, .off = NOF, .def = 0, .flags = F_NOTYET | F_NULL_OK, .text = why}
#define NYI(n, l, h, only, why) \
    {.name = n, .type = T_INT, .off = NOF, .lo = l, .hi = h, .def = only, .flags = F_NOTYET | F_NULL_OK, .text = why}
#define NYN(n, l, h, only, why) \
    {.name = n, .type = T_NUM, .off = NOF, .lo = l, .hi = h, .def = only, .flags = F_NOTYET | F_NULL_OK, .text = why}
#define FEATURE(n, why) {.name = n, .type = T_FEATURE, .off = NOF, .text = why}
#define ALIAS(n, to, fl) {.name = n, .type = T_ALIAS, .off = NOF, .text = to, .flags = fl}
#define REJECT(n, why) {.name = n, .type = T_REJECT, .off = NOF, .text = why}
#define END {.name = NULL}

#define SM_LR (1u << ZINC_SCHED_WARMUP_LR)
#define SM_DECAY (1u << ZINC_SCHED_WARMUP_DECAY_LR)
#define SM_COS (1u << ZINC_SCHED_WARMUP_COSINE_LR)
#define SM_ALL (SM_LR | SM_DECAY | SM_COS)

static const enum_name opt_types[] = {{"Adam", ZINC_OPT_ADAM}, {"AdamW", ZINC_OPT_ADAMW}, {NULL, 0}};
static const enum_name sched_types[] = {{"WarmupLR", ZINC_SCHED_WARMUP_LR},
                                        {"WarmupDecayLR", ZINC_SCHED_WARMUP_DECAY_LR},
                                        {"WarmupCosineLR", ZINC_SCHED_WARMUP_COSINE_LR},
                                        {NULL, 0}};
static const enum_name warmup_types[] = {{"log", ZINC_WARMUP_LOG}, {"linear", ZINC_WARMUP_LINEAR}, {NULL, 0}};
static const enum_name offload_devices[] = {
    {"none", ZINC_OFFLOAD_NONE}, {"cpu", ZINC_OFFLOAD_CPU}, {"nvme", ZINC_OFFLOAD_NVME}, {NULL, 0}};
static const enum_name device_kinds[] = {
    {"auto", ZINC_DEVICE_AUTO}, {"cpu", ZINC_DEVICE_CPU}, {"cuda", ZINC_DEVICE_CUDA}, {NULL, 0}};
static const enum_name comm_kinds[] = {
    {"auto", ZINC_COMM_AUTO}, {"mpi", ZINC_COMM_MPI}, {"nccl", ZINC_COMM_NCCL}, {NULL, 0}};
static const char *const model_types[] = {"gpt2", "llama", NULL};
static const char *const rope_types[] = {"", "llama3", NULL};
static const char *const tag_validations[] = {"Ignore", "Warn", "Fail", NULL};

_Static_assert(sizeof(zinc_opt_type) == sizeof(int), "enum fields are stored as int");
_Static_assert(sizeof(zinc_offload_device) == sizeof(int), "enum fields are stored as int");

static int skip_scheduler(const zinc_config *c);
static int skip_data(const zinc_config *c);

static const keydesc optimizer_params_keys[] = {
    KNA("lr", optimizer.lr, 0, INF, 1e-3, 0, A_LR),
    {.name = "betas", .type = T_PAIR, .off = OFF(optimizer.betas), .lo = 0, .hi = 1, .def = 0.9,
     .def2 = 0.999, .flags = F_AUTO | F_HI_OPEN, .auto_id = A_BETAS},
    KNA("eps", optimizer.eps, 0, INF, 1e-8, F_LO_OPEN, A_EPS),
    KNA("weight_decay", optimizer.weight_decay, 0, INF, 0, 0, A_WD),
    KB("adam_w_mode", optimizer.adam_w_mode, 1),
    {.name = "bias_correction", .type = T_BOOL, .off = NOF, .flags = F_ONLY_TRUE,
     .text = "zinc's Adam always applies bias correction"},
    {.name = "amsgrad", .type = T_BOOL, .off = NOF, .flags = F_ONLY_FALSE,
     .text = "zinc's Adam has no AMSGrad variant"},
    XBW("torch_adam", "zinc runs its own Adam kernels"),
    REJECT("max_grad_norm", "not supported in optimizer params, use gradient_clipping (top level)"),
    END};

static const keydesc optimizer_keys[] = {
    KE("type", optimizer.type, ZINC_OPT_ADAM, opt_types, F_NOCASE | F_REQUIRED),
    KSEC("params", optimizer_params_keys),
    END};

static const keydesc scheduler_params_keys[] = {
    {.name = "warmup_min_lr", .type = T_NUM, .off = OFF(scheduler.warmup_min_lr), .lo = 0, .hi = INF,
     .def = 0, .flags = F_AUTO, .auto_id = A_WMIN, .sched_mask = SM_LR | SM_DECAY},
    {.name = "warmup_max_lr", .type = T_NUM, .off = OFF(scheduler.warmup_max_lr), .lo = 0, .hi = INF,
     .def = 1e-3, .flags = F_AUTO, .auto_id = A_WMAX, .sched_mask = SM_LR | SM_DECAY},
    {.name = "warmup_num_steps", .type = T_INT, .off = OFF(scheduler.warmup_num_steps), .lo = 0,
     .hi = STEPS_MAX, .def = 1000, .flags = F_AUTO, .auto_id = A_WNUM, .sched_mask = SM_ALL},
    {.name = "warmup_type", .type = T_ENUM, .off = OFF(scheduler.warmup_type), .def = ZINC_WARMUP_LOG,
     .enums = warmup_types, .sched_mask = SM_ALL},
    {.name = "total_num_steps", .type = T_INT, .off = OFF(scheduler.total_num_steps), .lo = 1,
     .hi = STEPS_MAX, .def = 0, .flags = F_AUTO, .auto_id = A_TOTAL, .sched_mask = SM_DECAY | SM_COS},
    {.name = "warmup_min_ratio", .type = T_NUM, .off = OFF(scheduler.warmup_min_ratio), .lo = 0,
     .hi = 1, .def = 0, .sched_mask = SM_COS},
    {.name = "cos_min_ratio", .type = T_NUM, .off = OFF(scheduler.cos_min_ratio), .lo = 0, .hi = 1,
     .def = 1e-4, .sched_mask = SM_COS},
    {.name = "last_batch_iteration", .type = T_INT, .off = NOF, .lo = -1, .hi = INF,
     .sched_mask = SM_ALL},
    END};

static const keydesc scheduler_keys[] = {
    KE("type", scheduler.type, ZINC_SCHED_NONE, sched_types, F_REQUIRED),
    KSEC("params", scheduler_params_keys),
    END};

static const keydesc fp16_keys[] = {
    KBA("enabled", fp16.enabled, 0, F_AUTO, A_FP16),
    KN("loss_scale", fp16.loss_scale, 0, INF, 0, 0),
    KI("initial_scale_power", fp16.initial_scale_power, 0, 100, 16),
    KI("loss_scale_window", fp16.loss_scale_window, 1, STEPS_MAX, 1000),
    KI("hysteresis", fp16.hysteresis, 1, 1e6, 2),
    KN("min_loss_scale", fp16.min_loss_scale, 0, INF, 1, F_LO_OPEN),
    NYB("auto_cast", "zinc casts no model inputs to fp16"),
    NYB("consecutive_hysteresis", "zinc's loss scaler counts hysteresis over all overflows"),
    NYB("fp16_master_weights_and_grads", "zinc keeps fp32 master weights and gradients"),
    END};

static const keydesc bf16_keys[] = {
    KBA("enabled", bf16.enabled, 0, F_AUTO, A_BF16),
    NYB("immediate_grad_update", "zinc accumulates gradients over the step before the update"),
    END};

static const keydesc offload_optimizer_keys[] = {
    KE("device", zero.offload_optimizer.device, ZINC_OFFLOAD_NONE, offload_devices, F_NULL_OK),
    KS("nvme_path", zero.offload_optimizer.nvme_path, "", NULL),
    {.name = "pin_memory", .type = T_BOOL, .off = OFF(zero.offload_optimizer.pin_memory), .def = 1,
     .flags = F_UNUSED, .text = "zinc pins host buffers where the device benefits"},
    {.name = "buffer_count", .type = T_INT, .off = OFF(zero.offload_optimizer.buffer_count), .lo = 1,
     .hi = BUFFERS_MAX, .def = 4, .flags = F_UNUSED, .text = "zinc sizes its NVMe swap buffers itself"},
    KB("pipeline_read", zero.offload_optimizer.pipeline_read, 0),
    KB("pipeline_write", zero.offload_optimizer.pipeline_write, 0),
    XBW("fast_init", "zinc creates swap files without a separate fast path"),
    KN("ratio", zero.offload_optimizer.ratio, 0, 1, 1, 0),
    {.name = "delayed_update", .type = T_BOOL, .off = OFF(zero.offload_optimizer.delayed_update), .def = 0,
     .flags = F_ZINC}, /* ZeRO-Offload's DPU; checked in zero_plan_make */
    XBW("pipeline", "use pipeline_read / pipeline_write"),
    END};

static const keydesc offload_param_keys[] = {
    KE("device", zero.offload_param.device, ZINC_OFFLOAD_NONE, offload_devices, F_NULL_OK),
    KS("nvme_path", zero.offload_param.nvme_path, "", NULL),
    {.name = "pin_memory", .type = T_BOOL, .off = OFF(zero.offload_param.pin_memory), .def = 1,
     .flags = F_UNUSED, .text = "zinc pins host buffers where the device benefits"},
    {.name = "buffer_count", .type = T_INT, .off = OFF(zero.offload_param.buffer_count), .lo = 1,
     .hi = BUFFERS_MAX, .def = 5, .flags = F_UNUSED, .text = "zinc stages one unit at a time"},
    {.name = "buffer_size", .type = T_INT, .off = OFF(zero.offload_param.buffer_size), .lo = 1,
     .hi = ELEMS_MAX, .def = 1e8, .flags = F_UNUSED, .text = "zinc stages one unit at a time"},
    {.name = "max_in_cpu", .type = T_INT, .off = OFF(zero.offload_param.max_in_cpu), .lo = 0,
     .hi = ELEMS_MAX, .def = 1e9, .flags = F_UNUSED, .text = "zinc keeps no parameter cache in host memory"},
    END};

static const keydesc zero_keys[] = {
    {.name = "stage", .type = T_INT32, .off = OFF(zero.stage), .lo = 0, .hi = 3, .def = 0},
    {.name = "contiguous_gradients", .type = T_BOOL, .off = OFF(zero.contiguous_gradients), .def = 1,
     .flags = F_UNUSED, .text = "zinc's gradients are always contiguous flat units"},
    KB("overlap_comm", zero.overlap_comm, 0), /* true at stage 3 unless given: finish() */
    KB("reduce_scatter", zero.reduce_scatter, 1),
    KIA("reduce_bucket_size", zero.reduce_bucket_size, 1, ELEMS_MAX, 5e8, F_AUTO, A_RBS),
    KI("allgather_bucket_size", zero.allgather_bucket_size, 1, ELEMS_MAX, 5e8),
    KIA("stage3_prefetch_bucket_size", zero.stage3_prefetch_bucket_size, 0, ELEMS_MAX, 5e7,
        F_AUTO | F_STAGE3, A_PREFETCH),
    KIA("stage3_param_persistence_threshold", zero.stage3_param_persistence_threshold, 0, ELEMS_MAX, 1e5,
        F_AUTO | F_STAGE3, A_PERSIST),
    KIA("stage3_max_live_parameters", zero.stage3_max_live_parameters, 0, ELEMS_MAX, 1e9, F_STAGE3, A_NONE),
    KIA("stage3_max_reuse_distance", zero.stage3_max_reuse_distance, 0, ELEMS_MAX, 1e9, F_STAGE3, A_NONE),
    KI("sub_group_size", zero.sub_group_size, 1, ELEMS_MAX, 1e9),
    {.name = "stage3_gather_16bit_weights_on_model_save", .type = T_BOOL,
     .off = OFF(zero.stage3_gather_16bit_weights_on_model_save), .def = 0, .flags = F_STAGE3 | F_UNUSED,
     .text = "zinc-ckpt export writes whole weights from any checkpoint"},
    KSEC("offload_optimizer", offload_optimizer_keys),
    KSEC("offload_param", offload_param_keys),
    /* DeepSpeed's pydantic field names of the stage3_* keys */
    ALIAS("prefetch_bucket_size", "stage3_prefetch_bucket_size", 0),
    ALIAS("param_persistence_threshold", "stage3_param_persistence_threshold", 0),
    ALIAS("max_live_parameters", "stage3_max_live_parameters", 0),
    ALIAS("max_reuse_distance", "stage3_max_reuse_distance", 0),
    ALIAS("gather_16bit_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save", 0),
    /* deprecated names */
    ALIAS("stage3_gather_fp16_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save",
          F_DEPRECATED),
    {.name = "cpu_offload", .type = T_HOOK, .off = OFF(zero.offload_optimizer.device),
     .hook = config_hook_cpu_offload, .text = "offload_optimizer"},
    {.name = "cpu_offload_params", .type = T_HOOK, .off = OFF(zero.offload_param.device),
     .hook = config_hook_cpu_offload, .text = "offload_param"},
    {.name = "cpu_offload_use_pin_memory", .type = T_BOOL, .off = NOF, .flags = F_DEPRECATED,
     .text = "no effect; use offload_optimizer.pin_memory / offload_param.pin_memory"},
    /* DeepSpeed keys zinc accepts but does not use */
    XBW("allgather_partitions", "zinc always all-gathers updated partitions"),
    XBW("round_robin_gradients", "zinc reduces gradients per layer unit"),
    XBW("load_from_fp32_weights", "zinc always restores fp32 master weights"),
    XBW("ignore_unused_parameters", "every zinc parameter takes part in each step"),
    XBW("elastic_checkpoint", "zinc checkpoints always reshard"),
    XBW("legacy_stage1", "zinc has one stage 1"),
    NYI("zero_hpz_partition_size", 1, INF, 1, "ZeRO++ hierarchical partitioning is not implemented"),
    NYB("zero_quantized_weights", "ZeRO++ quantized weights are not implemented"),
    NYB("zero_quantized_nontrainable_weights", "ZeRO++ quantized weights are not implemented"),
    NYB("zero_quantized_gradients", "ZeRO++ quantized gradients are not implemented"),
    NYI("mics_shard_size", -1, INF, -1, "MiCS sharding is not implemented"),
    XBW("mics_hierarchical_params_gather", "MiCS is not implemented"),
    XBW("memory_efficient_linear", "zinc's linear layers keep no extra copies"),
    XBW("pipeline_loading_checkpoint", "zinc loads checkpoints shard by shard"),
    XBW("override_module_apply", "zinc has no module hooks"),
    XBW("use_multi_rank_bucket_allreduce", "zinc reduces per layer unit"),
    XIW("model_persistence_threshold", 0, INF, "zinc has no model-parallel persistence"),
    XIW("stage3_model_persistence_threshold", 0, INF, "zinc has no model-parallel persistence"),
    XIW("module_granularity_threshold", 0, INF, "zinc's units are its layers"),
    XBW("use_all_reduce_for_fetch_params", "zinc all-gathers parameters"),
    XBW("stage3_use_all_reduce_for_fetch_params", "zinc all-gathers parameters"),
    XBW("log_trace_cache_warnings", "zinc has no trace cache"),
    FEATURE("zeropp_loco_param", "ZeRO++ LoCo is not implemented"),
    END};

static const keydesc aio_keys[] = {
    KI("block_size", aio.block_size, 1, AIO_BLOCK_MAX, 1048576),
    KI("queue_depth", aio.queue_depth, 1, AIO_QD_MAX, 8),
    KI("intra_op_parallelism", aio.intra_op_parallelism, 1, AIO_WORKERS_MAX, 1),
    KB("single_submit", aio.single_submit, 0),
    KB("overlap_events", aio.overlap_events, 1),
    ALIAS("thread_count", "intra_op_parallelism", F_DEPRECATED),
    NYB("use_gds", "GPUDirect Storage is not implemented; zinc stages NVMe I/O through host memory"),
    END};

static const keydesc rope_scaling_keys[] = {
    {.name = "type", .type = T_STR, .off = OFF(model.rope_scaling.type), .sdef = "", .aux = FSZ(model.rope_scaling.type),
     .allowed = rope_types, .flags = F_NULL_OK | F_LLAMA},
    ALIAS("rope_type", "type", 0),
    KN("factor", model.rope_scaling.factor, 1, 1e6, 8, F_LLAMA),
    KN("low_freq_factor", model.rope_scaling.low_freq_factor, 0, 1e6, 1, F_LO_OPEN | F_LLAMA),
    KN("high_freq_factor", model.rope_scaling.high_freq_factor, 0, 1e6, 4, F_LO_OPEN | F_LLAMA),
    {.name = "original_max_position_embeddings", .type = T_INT, .off = OFF(model.rope_scaling.original_max_position_embeddings),
     .lo = 1, .hi = SEQ_MAX, .def = 8192, .flags = F_LLAMA},
    END};

static const char *const lora_inits[] = {"default", "gaussian", NULL};

static int skip_lora(const zinc_config *c) { return !c->model.lora.enabled; }

static const keydesc lora_keys[] = {
    KI("r", model.lora.r, 1, 65536, 8),
    KN("alpha", model.lora.alpha, 0, 1e6, 8, F_LO_OPEN),
    ALIAS("lora_alpha", "alpha", 0),
    KN("dropout", model.lora.dropout, 0, 1, 0, F_HI_OPEN),
    ALIAS("lora_dropout", "dropout", 0),
    KP("target_modules", model.lora.target_modules, model.lora.n_target_modules),
    KS("init", model.lora.init, "default", lora_inits),
    KB("use_rslora", model.lora.use_rslora, 0),
    END};

static const keydesc model_keys[] = {
    KS("type", model.type, "gpt2", model_types),
    KI("n_layer", model.n_layer, 1, LAYERS_MAX, 4),
    KI("n_embd", model.n_embd, 1, EMBD_MAX, 128),
    KI("n_head", model.n_head, 1, HEADS_MAX, 4),
    KI("n_kv_head", model.n_kv_head, 0, HEADS_MAX, 0),
    KI("intermediate_size", model.intermediate_size, 0, EMBD_MAX * 16, 0),
    KB("tie_word_embeddings", model.tie_word_embeddings, 1),
    {.name = "attention_bias", .type = T_BOOL, .off = OFF(model.attention_bias), .def = 0, .flags = F_LLAMA},
    KN("rope_theta", model.rope_theta, 0, 1e12, 10000, F_LO_OPEN | F_LLAMA),
    KN("rms_norm_eps", model.rms_norm_eps, 0, 1, 1e-6, F_LO_OPEN | F_LLAMA),
    KSEC("rope_scaling", rope_scaling_keys),
    KI("vocab_size", model.vocab_size, 256, 16777216, 50304), /* Llama 3: 128256, Qwen2: 151936 */
    KI("block_size", model.block_size, 1, SEQ_MAX, 64),
    KI("seed", model.seed, 0, SEED_MAX, 1337),
    KS("init_from", model.init_from, "", NULL),
    KS("from_pretrained", model.from_pretrained, "", NULL),
    KB("recompute", model.recompute, 0),
    KP("freeze", model.freeze, model.n_freeze),
    {.name = "lora", .type = T_SECTION, .off = NOF, .sub = lora_keys, .flags = F_NULL_OK, .skip = skip_lora},
    END};

static const keydesc data_keys[] = {
    KP("train", data.train, data.n_train),
    KP("text", data.text, data.n_text),
    KP("valid", data.valid, data.n_valid),
    KS("text_exts", data.text_exts, ".c,.h,.md,.sh,.json,.txt", NULL),
    KS("tokenizer", data.tokenizer, "bytes", NULL), /* "bytes" or a path: finish() checks it */
    KS("chat_template", data.chat_template, "", NULL), /* finish() checks the name */
    KS("cache_dir", data.cache_dir, "", NULL),
    KI("seq_len", data.seq_len, 0, SEQ_MAX, 0),
    KI("seed", data.seed, 0, SEED_MAX, 1234),
    END};

static const enum_name on_nan_kinds[] = {
    {"error", ZINC_ON_NAN_ERROR}, {"skip", ZINC_ON_NAN_SKIP}, {NULL, 0}};

static const keydesc train_keys[] = {
    KI("max_steps", train.max_steps, 1, STEPS_MAX, 100),
    KI("log_every", train.log_every, 0, STEPS_MAX, 0),
    KI("eval_every", train.eval_every, 0, STEPS_MAX, 0),
    KI("eval_batches", train.eval_batches, 1, 1e6, 10),
    KS("save_dir", train.save_dir, "", NULL),
    KS("metrics_file", train.metrics_file, "", NULL),
    KI("save_every", train.save_every, 0, STEPS_MAX, 0),
    KI("keep_last", train.keep_last, 0, KEEP_MAX, 0),
    KS("resume", train.resume, "", NULL),
    KI("threads", train.threads, 0, THREADS_MAX, 0),
    KE("on_nan", train.on_nan, ZINC_ON_NAN_ERROR, on_nan_kinds, 0),
    KI("max_skipped", train.max_skipped, 1, STEPS_MAX, 10),
    KB("check_memory", train.check_memory, 1),
    KN("peak_tflops", train.peak_tflops, 0, 1e9, 0, 0),
    END};

/* DeepSpeed's monitors: the same three keys each (monitor/monitor.c) */
static const keydesc tensorboard_keys[] = {
    KB("enabled", tensorboard.enabled, 0),
    KS("output_path", tensorboard.output_path, "", NULL),
    KS("job_name", tensorboard.job_name, "DeepSpeedJobName", NULL),
    END};
static const keydesc csv_monitor_keys[] = {
    KB("enabled", csv_monitor.enabled, 0),
    KS("output_path", csv_monitor.output_path, "", NULL),
    KS("job_name", csv_monitor.job_name, "DeepSpeedJobName", NULL),
    END};

/* activation_checkpointing: given, whole-layer recompute (engine/acts.c) */
static int skip_ac(const zinc_config *c) { return !c->ac.enabled; }
static int skip_ac_interval(const zinc_config *c) { return c->ac.interval == 0; }
static const keydesc activation_checkpointing_keys[] = {
    KB("partition_activations", ac.partition_activations, 0),
    KB("cpu_checkpointing", ac.cpu_checkpointing, 0),
    XBW("contiguous_memory_optimization", "zinc's checkpoints always lie in one contiguous buffer per micro-batch"),
    {.name = "number_checkpoints", .type = T_INT, .off = OFF(ac.number_checkpoints), .lo = 0, .hi = LAYERS_MAX,
     .def = 0, .flags = F_NULL_OK},
    XBW("synchronize_checkpoint_boundary", "zinc's device work is ordered on one stream; nothing to synchronize"),
    XBW("profile", "zinc does not time checkpointed layers"),
    END};

/* the values of zinc_pp_kind (zinc/pipeline.h) */
static const enum_name pp_schedules[] = {{"gpipe", 0}, {"1f1b", 1}, {"interleaved", 2}, {"zero-bubble", 3},
                                         {NULL, 0}};
static const keydesc pipeline_keys[] = {
    {.name = "stages", .type = T_INT, .off = OFF(pp.stages), .lo = 1, .hi = PP_MAX, .def = 1,
     .flags = F_AUTO | F_NULL_OK},
    /* the schedule orders the micro-batches even on one stage (gpipe holds all of them);
     * virtual stages before partition: the partition splits stages x virtual_stages chunks */
    KE("schedule", pp.schedule, 1, pp_schedules, F_NOCASE | F_ZINC),
    {.name = "virtual_stages", .type = T_INT, .off = OFF(pp.virtual_stages), .lo = 1, .hi = LAYERS_MAX,
     .def = 1, .flags = F_ZINC},
    {.name = "partition", .type = T_STR, .off = OFF(pp.partition), .sdef = "parameters", .aux = FSZ(pp.partition),
     .flags = F_NULL_OK | F_PP}, /* finish() checks the method */
    XBW("seed_layers", "zinc seeds every parameter by its name, whatever the stage"),
    /* DeepSpeed's pipeline engine: checkpoint every N layers (0: off); engine/acts.c */
    {.name = "activation_checkpoint_interval", .type = T_INT, .off = OFF(ac.interval), .lo = 0, .hi = LAYERS_MAX,
     .def = 0, .flags = F_NULL_OK, .skip = skip_ac_interval}, /* dumped only when on: 0 given turns it off */
    XBW("pipe_partitioned", "zinc sends whole activations between stages"),
    XBW("grad_partitioned", "zinc sends whole activation gradients between stages"),
    XBW("use_reentrant", "zinc has no autograd"),
    END};

static const keydesc checkpoint_keys[] = {
    {.name = "tag_validation", .type = T_STR, .off = NOF, .allowed = tag_validations,
     .flags = F_NOCASE | F_NULL_OK, .text = "zinc's manifest records and checks the tag on every rank"},
    XBW("load_universal", "zinc checkpoints load at any layout"),
    NYB("use_node_local_storage", "zinc writes every rank's shard under train.save_dir"),
    XANYW("parallel_write", "every zinc rank writes its own shard in parallel"),
    END};

static const char *const fp32_names[] = {"fp32", "float32", "float", NULL};
static const keydesc data_types_keys[] = {
    {.name = "grad_accum_dtype", .type = T_STR, .off = NOF, .allowed = fp32_names,
     .flags = F_NULL_OK | F_NOTYET | F_NOCASE, .text = "zinc accumulates gradients in fp32"},
    END};

/* DeepSpeed's tensor_parallel section: autotp_size and sequence_parallel
 * are zinc's TP layout (zinc_config_resolve checks it); the inference keys
 * are not */
#define TP_WHY "zinc's tensor parallelism takes autotp_size and sequence_parallel only"
static const keydesc tp_inner_keys[] = {
    NYI("tp_size", 1, INF, 1, TP_WHY),
    XANYW("tp_grain_size", TP_WHY),
    XANYW("mpu", TP_WHY),
    XANYW("tp_group", TP_WHY),
    END};
static const keydesc tensor_parallel_keys[] = {
    KI("autotp_size", tp.size, 1, TP_MAX, 1),
    /* not in DeepSpeed's TPTrainingConfig: Megatron's sequence parallelism */
    {.name = "sequence_parallel", .type = T_BOOL, .off = OFF(tp.sequence_parallel), .def = 0,
     .flags = F_TP | F_ZINC},
    KSEC("tp", tp_inner_keys),
    XANYW("tensor_parallel", TP_WHY),
    XANYW("dtype", TP_WHY),
    XANYW("keep_module_on_host", TP_WHY),
    XANYW("replace_with_kernel_inject", TP_WHY),
    XANYW("injection_policy", TP_WHY),
    XANYW("injection_policy_tuple", TP_WHY),
    XANYW("preset_model", TP_WHY),
    XANYW("partition_config", TP_WHY),
    END};

/* DeepSpeed's elasticity section, version 0.1 (engine/elastic.c) */
static const keydesc elasticity_keys[] = {
    KB("enabled", elasticity.enabled, 0),
    KI("max_train_batch_size", elasticity.max_train_batch_size, 1, TBS_MAX, 2000),
    {.name = "micro_batch_sizes", .type = T_HOOK, .off = OFF(elasticity.micro_batch_sizes),
     .hook = config_hook_micro_list},
    KI("min_gpus", elasticity.min_gpus, 1, 65536, 1),
    KI("max_gpus", elasticity.max_gpus, 1, 65536, 10000),
    XIW("min_time", 0, INF, "zinc-run --elastic relaunches as soon as a job fails"),
    KB("prefer_larger_batch", elasticity.prefer_larger_batch, 1),
    KB("ignore_non_elastic_batch_info", elasticity.ignore_non_elastic_batch_info, 0),
    NYN("version", 0, INF, 0.1, "zinc implements elasticity version 0.1"),
    NYI("model_parallel_size", 1, INF, 1, "elastic jobs are data parallel only in zinc"),
    XIW("num_gpus_per_node", 1, INF, "used by elasticity version 0.2 only"),
    END};

const keydesc config_root_keys[] = {
    KIA("train_batch_size", train_batch_size, 1, TBS_MAX, 0, F_AUTO | F_BATCH, A_TBS),
    KIA("train_micro_batch_size_per_gpu", train_micro_batch_size_per_gpu, 1, MICRO_MAX, 0, F_AUTO | F_BATCH,
        A_MICRO),
    KIA("gradient_accumulation_steps", gradient_accumulation_steps, 1, GAS_MAX, 0, F_AUTO | F_BATCH, A_GAS),
    KNA("gradient_clipping", gradient_clipping, 0, INF, 1.0, 0, A_CLIP),
    KI("steps_per_print", steps_per_print, 1, STEPS_MAX, 10),
    KB("wall_clock_breakdown", wall_clock_breakdown, 0),
    KSEC("optimizer", optimizer_keys),
    {.name = "scheduler", .type = T_SECTION, .off = NOF, .sub = scheduler_keys, .flags = F_NULL_OK,
     .skip = skip_scheduler},
    KSEC("fp16", fp16_keys),
    KSEC("bf16", bf16_keys),
    ALIAS("bfloat16", "bf16", F_DEPRECATED),
    KSEC("zero_optimization", zero_keys),
    KSEC("aio", aio_keys),
    KSECZ("model", model_keys),
    {.name = "data", .type = T_SECTION, .off = NOF, .sub = data_keys, .flags = F_ZINC, .skip = skip_data},
    KSECZ("train", train_keys),
    KE("device", device, ZINC_DEVICE_AUTO, device_kinds, F_ZINC),
    KE("comm_backend", comm_backend, ZINC_COMM_AUTO, comm_kinds, F_ZINC),
    KN("comm_timeout_s", comm_timeout_s, 0, INF, 300, F_LO_OPEN | F_ZINC),
    /* DeepSpeed sections and keys zinc accepts but does not use yet */
    {.name = "activation_checkpointing", .type = T_SECTION, .off = NOF, .sub = activation_checkpointing_keys,
     .flags = F_NULL_OK, .skip = skip_ac},
    KSEC("pipeline", pipeline_keys),
    KSEC("checkpoint", checkpoint_keys),
    KSEC("tensor_parallel", tensor_parallel_keys),
    NYB("prescale_gradients", "zinc averages gradients after reducing them"),
    NYN("gradient_predivide_factor", 0, INF, 1, "zinc averages gradients after reducing them"),
    XBW("zero_allow_untested_optimizer", "zinc runs its own Adam/AdamW"),
    XBW("zero_force_ds_cpu_optimizer", "zinc runs its own host Adam"),
    {.name = "communication_data_type", .type = T_STR, .off = NOF, .flags = F_NULL_OK | F_FINISH,
     .text = "only the working dtype's name (fp32, fp16 or bf16): zinc reduces gradients in it"},
    XSW("seq_parallel_communication_data_type", "sequence parallelism is not implemented"),
    XBW("memory_breakdown", "zinc's step line always shows the memory in use"),
    XBW("sparse_gradients", "zinc's embedding gradients are dense"),
    XBW("dump_state", "zinc prints its resolved config with zinc-train --check"),
    XIW("seed", 0, INF, "zinc seeds from model.seed (weights) and data.seed (sample order)"),
    XBW("disable_allgather", "zinc always all-gathers updated partitions"),
    {.name = "fp32_allreduce", .type = T_BOOL, .off = NOF, .flags = F_NULL_OK | F_FINISH,
     .text = "true only in fp32: zinc reduces gradients in the working dtype"},
    NYI("sequence_parallel_size", 1, INF, 1, "sequence parallelism is not implemented"),
    XBW("dataloader_drop_last", "zinc's loader draws whole batches"),
    XBW("use_data_before_expert_parallelism", "zinc has no expert parallelism"),
    XBW("graph_harvesting", "zinc captures no CUDA graphs"),
    FEATURE("amp", "Apex AMP is not available; use fp16 or bf16"),
    KSEC("elasticity", elasticity_keys),
    XANYW("autotuning", "zinc has no autotuner"),
    KSEC("data_types", data_types_keys),
    KSEC("tensorboard", tensorboard_keys),
    XANYW("wandb", "zinc does not log to Weights & Biases; see tensorboard, csv_monitor, train.metrics_file"),
    KSEC("csv_monitor", csv_monitor_keys),
    XANYW("comet", "zinc does not log to Comet; see train.metrics_file"),
    XANYW("flops_profiler", "zinc's step line shows TFLOP/s"),
    XANYW("comms_logger", "zinc's step line shows communication volume"),
    FEATURE("compression_training", "compression training is not implemented"),
    FEATURE("data_efficiency", "data efficiency sampling is not implemented"),
    FEATURE("curriculum_learning", "curriculum learning is not implemented"),
    XANYW("nebula", "zinc writes its own checkpoints"),
    FEATURE("quantize_training", "quantized training is not implemented"),
    FEATURE("sparse_attention", "sparse attention is not implemented"),
    FEATURE("hybrid_engine", "the hybrid engine is not implemented"),
    FEATURE("weight_quantization", "weight quantization is not implemented"),
    XANYW("compile", "zinc is compiled C"),
    XANYW("timers", "zinc's step line shows its timings"),
    XANYW("eigenvalue", "zinc computes no Hessian eigenvalues"),
    FEATURE("progressive_layer_drop", "progressive layer drop is not implemented"),
    FEATURE("torch_autocast", "zinc casts by fp16/bf16, not autocast"),
    END};

static int skip_scheduler(const zinc_config *c) { return c->scheduler.type == ZINC_SCHED_NONE; }
static int skip_data(const zinc_config *c) { return c->data.n_train == 0 && c->data.n_text == 0; }

/* ---------------------------------------------------------------- helpers */

const keydesc *config_find_key(const keydesc *tab, const char *name)
{
    for (; tab->name; tab++)
        if (!strcmp(tab->name, name)) return tab;
    return NULL;
}

const char *config_enum_name(const enum_name *e, int value)
{
    for (; e->name; e++)
        if (e->value == value) return e->name;
    return NULL;
}

static int is_auto(const json_t *v)
{
    return json_is_string(v) && !strcmp(json_string_value(v), "auto");
}

static int tolower_ascii(int ch) { return ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch; }

/* Optimal-string-alignment distance (Levenshtein + adjacent transposition),
 * case-insensitive; names longer than 63 bytes are compared by their prefix. */
static int edit_distance(const char *a, const char *b)
{
    enum { N = 64 };
    int la = (int)strnlen(a, N - 1), lb = (int)strnlen(b, N - 1);
    int d[N][N];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++) {
        for (int j = 1; j <= lb; j++) {
            int ca = tolower_ascii(a[i - 1]), cb = tolower_ascii(b[j - 1]);
            int best = d[i - 1][j - 1] + (ca != cb);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && ca == tolower_ascii(b[j - 2]) && tolower_ascii(a[i - 2]) == cb &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

/* The closest name in tab to a misspelled key, or NULL when none is close. */
static const char *suggest(const keydesc *tab, const char *name)
{
    const char *best = NULL;
    int best_d = 1 << 30, len = (int)strlen(name);
    for (; tab->name; tab++) {
        int d = edit_distance(name, tab->name);
        int lc = (int)strlen(tab->name);
        int limit = len <= 4 ? 1 : 2 + len / 4;
        if (d <= limit && d < len && d < lc && d < best_d) {
            best = tab->name;
            best_d = d;
        }
    }
    return best;
}

/* Counts the sections (below tab) holding a key called name; the path of
 * the last one found goes to out. */
static int find_elsewhere(const keydesc *tab, const char *prefix, const char *name, char *out, size_t cap)
{
    int found = 0;
    for (const keydesc *k = tab; k->name; k++) {
        if (k->type != T_SECTION) continue;
        char p[PATH_CAP];
        snprintf(p, sizeof p, "%s%s%s", prefix, prefix[0] ? "." : "", k->name);
        if (config_find_key(k->sub, name)) {
            snprintf(out, cap, "%s", p);
            found++;
        }
        found += find_elsewhere(k->sub, p, name, out, cap);
    }
    return found;
}

/* " (did you mean "x"?)", " (it belongs in "section")", or the list of known
 * keys when it is short. */
static void unknown_hint(const keydesc *tab, const char *name, char *buf, size_t cap)
{
    const char *s = suggest(tab, name);
    char where_else[PATH_CAP];
    buf[0] = '\0';
    if (s) {
        snprintf(buf, cap, " (did you mean \"%s\"?)", s);
        return;
    }
    if (find_elsewhere(config_root_keys, "", name, where_else, sizeof where_else) == 1) {
        snprintf(buf, cap, " (it belongs in \"%s\")", where_else);
        return;
    }
    size_t n = (size_t)snprintf(buf, cap, " (known keys:");
    int listed = 0;
    for (const keydesc *k = tab; k->name && n < cap; k++) {
        if (k->type == T_ALIAS || k->type == T_REJECT || (k->flags & F_DEPRECATED)) continue;
        n += (size_t)snprintf(buf + n, cap - n, "%s %s", listed++ ? "," : "", k->name);
    }
    if (n + 2 < cap && n < 300)
        snprintf(buf + n, cap - n, ")");
    else
        buf[0] = '\0'; /* too long for one readable line */
}

/* Shortest decimal form of d that reads back exactly. */
void config_fmt_double(double d, char *buf, size_t cap)
{
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, d);
        if (strtod(buf, NULL) == d) return;
    }
}

/* What a JSON value is, for "found ...": 5, 2.5, string "x", true, an array. */
static void describe(const json_t *v, char *buf, size_t cap)
{
    switch (json_typeof(v)) {
    case JSON_INTEGER: snprintf(buf, cap, "%lld", (long long)json_integer_value(v)); break;
    case JSON_REAL: config_fmt_double(json_real_value(v), buf, cap); break;
    case JSON_TRUE: snprintf(buf, cap, "true"); break;
    case JSON_FALSE: snprintf(buf, cap, "false"); break;
    case JSON_NULL: snprintf(buf, cap, "null"); break;
    case JSON_OBJECT: snprintf(buf, cap, "an object"); break;
    case JSON_ARRAY: snprintf(buf, cap, "an array"); break;
    case JSON_STRING: {
        const char *s = json_string_value(v);
        size_t n = strlen(s), show = n > 60 ? 57 : n;
        size_t o = (size_t)snprintf(buf, cap, "string \"");
        for (size_t i = 0; i < show && o + 1 < cap; i++) /* keep the detail on one line */
            buf[o++] = (unsigned char)s[i] < 0x20 ? '?' : s[i];
        snprintf(buf + o, cap - o, "%s\"", n > show ? "..." : "");
        break;
    }
    }
}

static void fmt_bound(double b, int is_int, char *buf, size_t cap)
{
    if (!isfinite(b))
        snprintf(buf, cap, "%s", b < 0 ? "-inf" : "inf"); /* never printed: ranges omit it */
    else if (is_int && b >= SEED_MAX)
        snprintf(buf, cap, "%lld", (long long)INT64_MAX); /* (long long)2^63 would overflow */
    else if (is_int)
        snprintf(buf, cap, "%lld", (long long)b);
    else
        config_fmt_double(b, buf, cap);
}

/* What a key accepts: "an integer in 0..3", "a number >= 0", "one of ...". */
void config_expected(const keydesc *k, char *buf, size_t cap)
{
    char lo[32], hi[32];
    switch (k->type) {
    case T_BOOL:
        if (k->flags & (F_ONLY_FALSE | F_ONLY_TRUE))
            snprintf(buf, cap, "%s (%s)", k->flags & F_ONLY_FALSE ? "false" : "true", k->text);
        else
            snprintf(buf, cap, "true or false");
        break;
    case T_INT:
    case T_INT32:
    case T_NUM:
    case T_PAIR: {
        int is_int = k->type == T_INT || k->type == T_INT32;
        const char *what = is_int ? "an integer" : "a number";
        fmt_bound(k->lo, is_int, lo, sizeof lo);
        fmt_bound(k->hi, is_int, hi, sizeof hi);
        char range[96];
        if (k->lo == -INF && k->hi == INF)
            range[0] = '\0';
        else if (k->hi == INF)
            snprintf(range, sizeof range, " %s %s", k->flags & F_LO_OPEN ? ">" : ">=", lo);
        else if (k->lo == -INF)
            snprintf(range, sizeof range, " %s %s", k->flags & F_HI_OPEN ? "<" : "<=", hi);
        else if (is_int)
            snprintf(range, sizeof range, " in %s..%s", lo, hi);
        else
            snprintf(range, sizeof range, " in %c%s, %s%c", k->flags & F_LO_OPEN ? '(' : '[', lo, hi,
                     k->flags & F_HI_OPEN ? ')' : ']');
        snprintf(buf, cap, "%s%s", what, range);
        break;
    }
    case T_STR:
    case T_ENUM: {
        if (k->type == T_STR && !k->allowed) {
            snprintf(buf, cap, "a string");
            break;
        }
        size_t n = (size_t)snprintf(buf, cap, "one of");
        for (int i = 0; n < cap; i++) {
            const char *name = k->type == T_STR ? k->allowed[i] : k->enums[i].name;
            if (!name) break;
            n += (size_t)snprintf(buf + n, cap - n, "%s \"%s\"", i ? "," : "", name);
        }
        break;
    }
    case T_PATHS: snprintf(buf, cap, "a string or an array of at most %d strings", ZINC_MAX_PATHS); break;
    case T_SECTION:
    case T_FEATURE: snprintf(buf, cap, "an object"); break;
    default: snprintf(buf, cap, "a valid value"); break;
    }
}

/* Was path set (or created) by an override? Then the override is named as
 * the origin of an error rather than the file. */
static const char *override_of(const cfg_ctx *x, const char *path)
{
    for (int i = 0; i < x->n_ovr; i++) {
        const char *o = x->ovr[i], *eq = strchr(o, '=');
        if (!eq) continue;
        size_t n = (size_t)(eq - o);
        if (!strncmp(path, o, n) && (path[n] == '\0' || path[n] == '.' || path[n] == '[')) return o;
    }
    return NULL;
}

/* "ORIGIN: PATH", or "--set PATH" when an override set path. also: other
 * keys (comma-separated) the error is about, for a rule that ties keys
 * together; when one of those came from --set, the override is named:
 * "--set model.n_head=5: model.n_embd: ...". */
static void where(const cfg_ctx *x, const char *path, const char *also, char *buf, size_t cap)
{
    if (override_of(x, path)) {
        snprintf(buf, cap, "--set %s", path);
        return;
    }
    for (const char *a = also; a && *a;) {
        const char *comma = strchr(a, ',');
        size_t n = comma ? (size_t)(comma - a) : strlen(a);
        char key[PATH_CAP];
        snprintf(key, sizeof key, "%.*s", (int)(n < PATH_CAP ? n : PATH_CAP - 1), a);
        const char *o = override_of(x, key);
        if (o) {
            snprintf(buf, cap, "--set %s: %s", o, path);
            return;
        }
        a = comma ? comma + 1 : a + n;
    }
    snprintf(buf, cap, "%s: %s", x->origin, path);
}

static zinc_status cfg_verr(const cfg_ctx *x, const char *path, const char *also, const char *fmt,
                            va_list ap)
{
    char w[2 * PATH_CAP + 300], msg[700];
    vsnprintf(msg, sizeof msg, fmt, ap);
    where(x, path, also, w, sizeof w);
    return zinc_error(ZINC_ERR_CONFIG, "%s: %s", w, msg);
}

static zinc_status cfg_err(const cfg_ctx *x, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static zinc_status cfg_err(const cfg_ctx *x, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    zinc_status st = cfg_verr(x, path, NULL, fmt, ap);
    va_end(ap);
    return st;
}

/* An error about path that also involves the keys in also (see where()). */
static zinc_status cfg_err_also(const cfg_ctx *x, const char *path, const char *also,
                                const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static zinc_status cfg_err_also(const cfg_ctx *x, const char *path, const char *also,
                                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    zinc_status st = cfg_verr(x, path, also, fmt, ap);
    va_end(ap);
    return st;
}

static void cfg_warn(const cfg_ctx *x, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void cfg_warn(const cfg_ctx *x, const char *path, const char *fmt, ...)
{
    char w[2 * PATH_CAP + 300], msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    where(x, path, NULL, w, sizeof w);
    ZINC_WARN("%s: %s", w, msg);
}

static zinc_status type_err(const cfg_ctx *x, const keydesc *k, const char *path, const json_t *v)
{
    char exp[400], found[128];
    config_expected(k, exp, sizeof exp);
    describe(v, found, sizeof found);
    return cfg_err(x, path, "expected %s, found %s", exp, found);
}

/* Appends ".name" (or "name" at the root) to path; returns the new length. */
size_t config_path_push(char *path, size_t len, const char *name)
{
    int n = snprintf(path + len, PATH_CAP - len, "%s%s", len ? "." : "", name);
    if (n < 0) return len;
    return len + (size_t)n >= PATH_CAP ? PATH_CAP - 1 : len + (size_t)n;
}

/* An integral JSON number (integer, or a real such as 1e9 with no fraction). */
static int json_to_int(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0) return 0;
        *out = (int64_t)d;
        return 1;
    }
    return 0;
}

int config_in_range(const keydesc *k, double d)
{
    int lo_ok = k->flags & F_LO_OPEN ? d > k->lo : d >= k->lo;
    int hi_ok = k->flags & F_HI_OPEN ? d < k->hi : d <= k->hi;
    return lo_ok && hi_ok;
}

/* Matches s against enum names / allowed strings; -1 when none. */
static int match_name(const keydesc *k, const char *s)
{
    for (int i = 0;; i++) {
        const char *name = k->type == T_STR ? k->allowed[i] : k->enums[i].name;
        if (!name) return -1;
        if (k->flags & F_NOCASE ? !strcasecmp(name, s) : !strcmp(name, s))
            return k->type == T_STR ? i : k->enums[i].value;
    }
}

static zinc_status store_string(const cfg_ctx *x, const char *path, const json_t *v, char *dst,
                                size_t cap)
{
    size_t n = json_string_length(v);
    if (cap && n >= cap)
        return cfg_err(x, path, "expected a string of at most %zu bytes, found %zu bytes", cap - 1, n);
    if (strlen(json_string_value(v)) != n) return cfg_err(x, path, "string contains a NUL byte");
    if (dst) memcpy(dst, json_string_value(v), n + 1);
    return ZINC_OK;
}

/* ---------------------------------------------------------------- effects */

/* Appends one "path = value: effect" line for zinc_config_load_effects. */
static void note_effect(cfg_ctx *x, const char *path, const json_t *v, const char *effect)
{
    if (!x->want_eff) return;
    char val[80];
    char *js = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    snprintf(val, sizeof val, "%s", js ? js : "?");
    if (js && strlen(js) >= sizeof val) memcpy(val + sizeof val - 4, "...", 4);
    free(js);
    for (char *q = val; *q; q++)
        if ((unsigned char)*q < 0x20) *q = '?'; /* one line per key */
    size_t need = strlen(path) + strlen(val) + strlen(effect) + 8;
    if (x->eff_n + need >= x->eff_cap) {
        size_t cap = (x->eff_cap ? x->eff_cap * 2 : 4096) + need;
        char *nb = realloc(x->eff, cap);
        if (!nb) return;
        x->eff = nb;
        x->eff_cap = cap;
    }
    x->eff_n += (size_t)snprintf(x->eff + x->eff_n, x->eff_cap - x->eff_n, "%s = %s: %s\n", path, val,
                                 effect);
}

/* The reason of a key without effect whose row gives none. */

/* A key given without effect: listed in the start-up warning and --check. */
static void note_no_effect(cfg_ctx *x, const char *path, const json_t *v, const char *why)
{
    char e[400];
    snprintf(e, sizeof e, "no effect (%s)", why ? why : NO_EFFECT_WHY);
    note_effect(x, path, v, e);
    size_t n = strlen(path) + 2;
    if (x->noeff_n + n + 1 >= sizeof x->noeff) {
        x->noeff_more++;
        return;
    }
    x->noeff_n += (size_t)snprintf(x->noeff + x->noeff_n, sizeof x->noeff - x->noeff_n, "%s%s",
                                   x->noeff_n ? ", " : "", path);
}

/* What a validated leaf key does, for the effect record. */
static void effect_of(cfg_ctx *x, const keydesc *k, const char *path, const json_t *v)
{
    const zinc_config *c = x->c;
    if (k->type == T_SECTION || k->type == T_REJECT) return;
    if (json_is_null(v)) {
        note_effect(x, path, v, "default");
        return;
    }
    if (k->type == T_ANY || k->type == T_FEATURE) {
        note_no_effect(x, path, v, k->text);
        return;
    }
    if ((k->flags & F_STAGE3) && c->zero.stage < 3) {
        char e[64];
        snprintf(e, sizeof e, "no effect at stage %d (stage 3 only)", c->zero.stage);
        note_effect(x, path, v, e);
        return;
    }
    if ((k->flags & F_TP) && c->tp.size == 1) {
        note_effect(x, path, v, "no effect with tensor_parallel.autotp_size 1");
        return;
    }
    if ((k->flags & F_LLAMA) && strcmp(c->model.type, "llama")) {
        /* the default is what GPT-2 does anyway (a dump holds it); another value is listed */
        const char *f = (const char *)c + k->off;
        int dflt = k->type == T_BOOL  ? *(const int *)f == (int)k->def
                   : k->type == T_INT ? *(const int64_t *)f == (int64_t)k->def
                   : k->type == T_NUM ? *(const double *)f == k->def
                   : k->type == T_STR ? !strcmp(f, k->sdef ? k->sdef : "")
                                      : 0;
        char e[80];
        snprintf(e, sizeof e, "model.type \"%s\" (llama only)", c->model.type);
        if (dflt)
            note_effect(x, path, v, "applied (the default; llama only)");
        else
            note_no_effect(x, path, v, e);
        return;
    }
    if ((k->flags & F_PP) && c->pp.stages * c->pp.virtual_stages == 1) {
        /* the default is what one chunk does anyway (a dump holds it); another value is listed */
        if (json_is_string(v) && k->sdef && !strcasecmp(json_string_value(v), k->sdef))
            note_effect(x, path, v, "applied (the default; one model chunk)");
        else
            note_no_effect(x, path, v, "one model chunk: pipeline.stages and pipeline.virtual_stages 1");
        return;
    }
    if ((k->flags & F_AUTO) && is_auto(v)) {
        note_effect(x, path, v, "applied (\"auto\", resolved as shown)");
        return;
    }
    if (k->flags & (F_NOTYET | F_ONLY_FALSE | F_ONLY_TRUE | F_FINISH)) {
        note_effect(x, path, v, "applied (the only value zinc supports)");
        return;
    }
    if (k->flags & F_UNUSED) {
        const char *f = (const char *)c + k->off;
        int differs = k->type == T_BOOL ? *(const int *)f != (int)k->def
                                        : *(const int64_t *)f != (int64_t)k->def;
        if (differs)
            note_no_effect(x, path, v, k->text);
        else
            note_effect(x, path, v, "applied (zinc's behaviour)");
        return;
    }
    if (k->off == NOF && k->type != T_HOOK) {
        note_no_effect(x, path, v, k->text);
        return;
    }
    note_effect(x, path, v, "applied");
}

/* A value zinc cannot compute yet: "2 is not supported yet; only 1 (why)". */
static zinc_status not_yet(const cfg_ctx *x, const keydesc *k, const char *path, const json_t *v)
{
    char found[128], only[64];
    describe(v, found, sizeof found);
    if (k->type == T_BOOL)
        snprintf(only, sizeof only, "%s", k->def ? "true" : "false");
    else
        config_fmt_double(k->def, only, sizeof only);
    return cfg_err(x, path, "%s is not supported yet; only %s (%s)", found, only, k->text);
}

/* DeepSpeed feature sections zinc lacks (T_FEATURE). */
static zinc_status walk_feature(cfg_ctx *x, const keydesc *k, json_t *v, const char *path)
{
    if (!json_is_object(v)) return type_err(x, k, path, v);
    json_t *en = json_object_get(v, "enabled");
    if (json_is_true(en)) {
        char p[PATH_CAP + 16];
        snprintf(p, sizeof p, "%s.enabled", path);
        return cfg_err(x, p, "true is not supported yet (%s)", k->text);
    }
    if (!en && json_object_size(v) > 0)
        return cfg_err(x, path, "not supported yet (%s); remove the section or set \"enabled\": false",
                       k->text);
    return ZINC_OK;
}

/* The scheduler types taking a key of scheduler.params: "WarmupLR, WarmupDecayLR". */
void config_sched_users(unsigned mask, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (const enum_name *e = sched_types; e->name && n < cap; e++)
        if (mask & (1u << e->value))
            n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", e->name);
}

/* ---------------------------------------------------------------- the walk */

static zinc_status walk_object(cfg_ctx *x, const keydesc *tab, json_t *obj, char *path, size_t plen,
                               int top);
static zinc_status walk_value_store(cfg_ctx *x, const keydesc *k, json_t *obj, json_t *v, char *path,
                                    size_t plen);

/* Validates v against k, stores it into the config and records its effect. */
static zinc_status walk_value(cfg_ctx *x, const keydesc *k, json_t *obj, json_t *v, char *path,
                              size_t plen)
{
    zinc_status st = walk_value_store(x, k, obj, v, path, plen);
    if (st == ZINC_OK) effect_of(x, k, path, v);
    return st;
}

static zinc_status walk_value_store(cfg_ctx *x, const keydesc *k, json_t *obj, json_t *v, char *path,
                                    size_t plen)
{
    zinc_config *c = x->c;
    char *f = k->off == NOF ? NULL : (char *)c + k->off;

    if (k->sched_mask && !(k->sched_mask & (1u << c->scheduler.type))) {
        char users[128];
        config_sched_users(k->sched_mask, users, sizeof users);
        return cfg_err(x, path, "not a parameter of %s (it is one of %s)",
                       config_enum_name(sched_types, (int)c->scheduler.type), users);
    }
    if (json_is_null(v) && (k->flags & F_NULL_OK)) return ZINC_OK;
    if ((k->flags & F_AUTO) && is_auto(v)) {
        x->autos |= 1u << k->auto_id;
        return ZINC_OK;
    }
    if ((k->flags & F_DEPRECATED) && k->type != T_ALIAS)
        cfg_warn(x, path, "deprecated, %s", k->text ? k->text : "ignored");

    switch (k->type) {
    case T_BOOL: {
        if (!json_is_boolean(v)) return type_err(x, k, path, v);
        int b = json_is_true(v);
        if (((k->flags & F_ONLY_FALSE) && b) || ((k->flags & F_ONLY_TRUE) && !b))
            return type_err(x, k, path, v);
        if ((k->flags & F_NOTYET) && b != (int)k->def) return not_yet(x, k, path, v);
        if (f) *(int *)f = b;
        return ZINC_OK;
    }
    case T_INT:
    case T_INT32: {
        int64_t n;
        if (!json_to_int(v, &n) || !config_in_range(k, (double)n)) return type_err(x, k, path, v);
        if ((k->flags & F_NOTYET) && n != (int64_t)k->def) return not_yet(x, k, path, v);
        if (f && k->type == T_INT) *(int64_t *)f = n;
        if (f && k->type == T_INT32) *(int *)f = (int)n;
        return ZINC_OK;
    }
    case T_NUM:
        if (!json_is_number(v) || !config_in_range(k, json_number_value(v))) return type_err(x, k, path, v);
        if ((k->flags & F_NOTYET) && json_number_value(v) != k->def) return not_yet(x, k, path, v);
        if (f) *(double *)f = json_number_value(v);
        return ZINC_OK;
    case T_PAIR: {
        if (!json_is_array(v) || json_array_size(v) != 2) {
            char found[128];
            describe(v, found, sizeof found);
            if (json_is_array(v)) snprintf(found, sizeof found, "an array of %zu", json_array_size(v));
            return cfg_err(x, path, "expected an array of 2 numbers, found %s", found);
        }
        for (size_t i = 0; i < 2; i++) {
            json_t *e = json_array_get(v, i);
            if (!json_is_number(e) || !config_in_range(k, json_number_value(e))) {
                char p[PATH_CAP + 8];
                snprintf(p, sizeof p, "%s[%zu]", path, i);
                return type_err(x, k, p, e);
            }
            if (f) ((double *)f)[i] = json_number_value(e);
        }
        return ZINC_OK;
    }
    case T_STR:
        if (!json_is_string(v) || (k->allowed && match_name(k, json_string_value(v)) < 0))
            return type_err(x, k, path, v);
        return store_string(x, path, v, f, k->aux);
    case T_ENUM: {
        int val = json_is_string(v) ? match_name(k, json_string_value(v)) : -1;
        if (val < 0) return type_err(x, k, path, v);
        if (f) *(int *)f = val;
        return ZINC_OK;
    }
    case T_PATHS: {
        char(*dst)[512] = (char(*)[512])f;
        int *count = (int *)((char *)c + k->aux);
        size_t n = json_is_array(v) ? json_array_size(v) : 1;
        if (!(json_is_string(v) || json_is_array(v)) || n > ZINC_MAX_PATHS) {
            char found[128];
            describe(v, found, sizeof found);
            if (json_is_array(v)) snprintf(found, sizeof found, "%zu strings", n);
            return cfg_err(x, path, "expected a string or an array of at most %d strings, found %s",
                           ZINC_MAX_PATHS, found);
        }
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
            char p[PATH_CAP + 8];
            snprintf(p, sizeof p, "%s[%zu]", path, i);
            if (!json_is_string(e)) {
                char found[128];
                describe(e, found, sizeof found);
                return cfg_err(x, p, "expected a string, found %s", found);
            }
            zinc_status st = store_string(x, p, e, dst[i], sizeof dst[i]);
            if (st != ZINC_OK) return st;
        }
        *count = (int)n;
        return ZINC_OK;
    }
    case T_SECTION:
        if (!json_is_object(v)) return type_err(x, k, path, v);
        return walk_object(x, k->sub, v, path, plen, 0);
    case T_ANY: return ZINC_OK;
    case T_FEATURE: return walk_feature(x, k, v, path);
    case T_REJECT: return cfg_err(x, path, "%s", k->text);
    case T_HOOK: return k->hook(x, k, obj, v, path);
    case T_ALIAS: break;
    }
    return cfg_err(x, path, "internal error: bad key descriptor");
}

/* Checks the keys of obj against tab (unknown keys: error, or a warning at
 * the top level), then validates and stores every known key in table order,
 * so that a key may depend on one listed before it (scheduler.type before
 * scheduler.params). */
static zinc_status walk_object(cfg_ctx *x, const keydesc *tab, json_t *obj, char *path, size_t plen,
                               int top)
{
    const char *key;
    json_t *v;
    zinc_status st = ZINC_OK;
    json_object_foreach(obj, key, v) {
        if (config_find_key(tab, key)) continue;
        char hint[512];
        unknown_hint(tab, key, hint, sizeof hint);
        config_path_push(path, plen, key);
        if (top) {
            cfg_warn(x, path, "unknown top-level key, ignored%s", hint);
            note_effect(x, path, v, "ignored (unknown top-level key)");
        } else {
            st = cfg_err(x, path, "unknown key%s", hint);
        }
        path[plen] = '\0';
        if (st != ZINC_OK) return st;
    }
    for (const keydesc *k = tab; k->name; k++) {
        if ((k->flags & F_REQUIRED) && !json_object_get(obj, k->name)) {
            char exp[400];
            config_expected(k, exp, sizeof exp);
            config_path_push(path, plen, k->name);
            st = cfg_err(x, path, "required, %s", exp);
            path[plen] = '\0';
            return st;
        }
    }
    for (const keydesc *k = tab; k->name; k++) {
        v = json_object_get(obj, k->name);
        if (!v) continue;
        size_t n = config_path_push(path, plen, k->name);
        const keydesc *t = k;
        if (k->type == T_ALIAS) {
            t = config_find_key(tab, k->text);
            if (json_object_get(obj, k->text)) {
                st = cfg_err(x, path, "\"%s\" is also given and names the same setting; keep one",
                             k->text);
            } else if (k->flags & F_DEPRECATED) {
                cfg_warn(x, path, "deprecated name, use \"%s\"", k->text);
            }
        }
        if (st == ZINC_OK) st = walk_value(x, t, obj, v, path, n);
        path[plen] = '\0';
        if (st != ZINC_OK) return st;
    }
    return ZINC_OK;
}

/* "cpu_offload": true / "cpu_offload_params": true (old DeepSpeed) mean
 * offload_optimizer / offload_param {"device": "cpu"}. */
/* elasticity.micro_batch_sizes: a non-empty array of distinct micro-batch sizes. */
zinc_status config_hook_micro_list(cfg_ctx *x, const keydesc *k, json_t *obj, json_t *v,
                                   const char *path)
{
    (void)k;
    (void)obj;
    if (json_is_null(v)) return ZINC_OK;
    char found[128];
    describe(v, found, sizeof found);
    size_t n = json_is_array(v) ? json_array_size(v) : 0;
    if (n < 1 || n > ZINC_ELASTIC_MAX_MICRO)
        return cfg_err(x, path, "expected an array of 1 to %d micro-batch sizes, found %s",
                       ZINC_ELASTIC_MAX_MICRO, found);
    int64_t m[ZINC_ELASTIC_MAX_MICRO];
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        double d = json_is_number(e) ? json_number_value(e) : -1;
        if (!(d >= 1 && d <= MICRO_MAX && d == (double)(int64_t)d)) {
            describe(e, found, sizeof found);
            return cfg_err(x, path, "entry %zu: expected an integer from 1 to %.0f, found %s", i,
                           MICRO_MAX, found);
        }
        m[i] = (int64_t)d;
        for (size_t j = 0; j < i; j++)
            if (m[j] == m[i])
                return cfg_err(x, path, "entry %zu: %lld is listed twice", i, (long long)m[i]);
    }
    memcpy(x->c->elasticity.micro_batch_sizes, m, n * sizeof *m);
    x->c->elasticity.n_micro = (int)n;
    return ZINC_OK;
}

zinc_status config_hook_cpu_offload(cfg_ctx *x, const keydesc *k, json_t *obj, json_t *v,
                                    const char *path)
{
    if (!json_is_boolean(v)) {
        char found[128];
        describe(v, found, sizeof found);
        return cfg_err(x, path, "expected true or false, found %s", found);
    }
    if (json_object_get(obj, k->text))
        return cfg_err(x, path, "deprecated form of \"%s\", which is also given; keep only \"%s\"",
                       k->text, k->text);
    cfg_warn(x, path, "deprecated, use \"%s\": {\"device\": \"cpu\"}", k->text);
    if (json_is_true(v)) *(int *)((char *)x->c + k->off) = ZINC_OFFLOAD_CPU;
    return ZINC_OK;
}

/* ---------------------------------------------------------------- defaults */

static void defaults_walk(zinc_config *c, const keydesc *tab)
{
    for (const keydesc *k = tab; k->name; k++) {
        if (k->type == T_SECTION) {
            defaults_walk(c, k->sub);
            continue;
        }
        if (k->off == NOF) continue;
        char *f = (char *)c + k->off;
        switch (k->type) {
        case T_BOOL:
        case T_INT32:
        case T_ENUM: *(int *)f = (int)k->def; break;
        case T_INT: *(int64_t *)f = (int64_t)k->def; break;
        case T_NUM: *(double *)f = k->def; break;
        case T_PAIR:
            ((double *)f)[0] = k->def;
            ((double *)f)[1] = k->def2;
            break;
        case T_STR: snprintf(f, k->aux, "%s", k->sdef ? k->sdef : ""); break;
        case T_PATHS: *(int *)((char *)c + k->aux) = 0; break;
        default: break;
        }
    }
}

void zinc_config_defaults(zinc_config *c)
{
    memset(c, 0, sizeof *c);
    defaults_walk(c, config_root_keys);
    static const int64_t micro[] = {2, 4, 6}; /* DeepSpeed's default */
    memcpy(c->elasticity.micro_batch_sizes, micro, sizeof micro);
    c->elasticity.n_micro = 3;
}

/* ---------------------------------------------------------------- overrides */

/* Applies one "a.b.c=value" to the tree: value parsed as JSON, else taken as
 * a string; missing intermediate objects are created. */
static zinc_status apply_override(json_t *root, const char *ov)
{
    const char *eq = strchr(ov, '=');
    size_t klen = eq ? (size_t)(eq - ov) : 0;
    int bad = !eq || klen == 0 || ov[0] == '.' || ov[klen - 1] == '.';
    for (size_t i = 1; !bad && i < klen; i++)
        if (ov[i] == '.' && ov[i - 1] == '.') bad = 1;
    if (bad) return zinc_error(ZINC_ERR_CONFIG, "--set %s: expected key.path=value", ov);
    if (klen >= PATH_CAP)
        return zinc_error(ZINC_ERR_CONFIG, "--set %.*s...: key path too long", 40, ov);

    json_error_t jerr;
    json_t *val = json_loads(eq + 1, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!val) val = json_string(eq + 1);
    if (!val) return zinc_error(ZINC_ERR_CONFIG, "--set %.*s: value is not valid UTF-8", (int)klen, ov);

    char key[PATH_CAP];
    memcpy(key, ov, klen);
    key[klen] = '\0';
    json_t *obj = root;
    char *seg = key;
    for (char *dot; (dot = strchr(seg, '.')); seg = dot + 1) {
        *dot = '\0';
        json_t *child = json_object_get(obj, seg);
        if (!child) {
            child = json_object();
            if (!child || json_object_set_new(obj, seg, child)) {
                json_decref(val);
                return zinc_error(ZINC_ERR_NOMEM, "--set %s: out of memory", key);
            }
        } else if (!json_is_object(child)) {
            char found[128];
            describe(child, found, sizeof found);
            json_decref(val);
            return zinc_error(ZINC_ERR_CONFIG, "--set %.*s: %s is not an object (found %s)", (int)klen,
                              ov, key, found);
        }
        obj = child;
        *dot = '.';
    }
    if (json_object_set_new(obj, seg, val))
        return zinc_error(ZINC_ERR_NOMEM, "--set %.*s: out of memory", (int)klen, ov);
    return ZINC_OK;
}

/* "zero_optimization": true/false is DeepSpeed shorthand for stage 1/0. */
static zinc_status normalize(json_t *root)
{
    json_t *z = json_object_get(root, "zero_optimization");
    if (json_is_boolean(z)) {
        json_t *o = json_pack("{s:i}", "stage", json_is_true(z) ? 1 : 0);
        if (!o || json_object_set_new(root, "zero_optimization", o))
            return zinc_error(ZINC_ERR_NOMEM, "config: out of memory");
    }
    return ZINC_OK;
}

/* ---------------------------------------------------------------- after the walk */

static const char *const batch_names[3] = {"train_batch_size", "train_micro_batch_size_per_gpu",
                                           "gradient_accumulation_steps"};

static int ends_with_jsonl(const char *p)
{
    size_t n = strlen(p);
    return n >= 6 && !strcmp(p + n - 6, ".jsonl");
}

static int has_key(const json_t *obj, const char *key)
{
    return json_is_object(obj) && json_object_get(obj, key) != NULL;
}

/* One warning listing the stage3_* knobs set (to non-default values) at a
 * stage where they do nothing. */
static void warn_stage3_knobs(cfg_ctx *x, json_t *zero)
{
    if (!json_is_object(zero) || x->c->zero.stage >= 3) return;
    char list[512] = "";
    size_t n = 0;
    const char *key;
    json_t *v;
    json_object_foreach(zero, key, v) {
        const keydesc *k = config_find_key(zero_keys, key);
        if (k && k->type == T_ALIAS) k = config_find_key(zero_keys, k->text);
        if (!k || !(k->flags & F_STAGE3) || is_auto(v) || json_is_null(v)) continue;
        const char *f = (const char *)x->c + k->off;
        int differs = k->type == T_BOOL ? *(const int *)f != (int)k->def
                                        : *(const int64_t *)f != (int64_t)k->def;
        if (differs && n < sizeof list)
            n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", n ? ", " : "", key);
    }
    if (n)
        cfg_warn(x, "zero_optimization", "%s %s no effect at stage %d (stage 3 only)", list,
                 strchr(list, ',') ? "have" : "has", x->c->zero.stage);
}

/* Records the batch keys as given and runs the checks that hold for every
 * DP size; zinc_config_resolve does the rest. */
static zinc_status finish_batch(cfg_ctx *x, json_t *root)
{
    zinc_config *c = x->c;
    int64_t *fields[3] = {&c->train_batch_size, &c->train_micro_batch_size_per_gpu,
                          &c->gradient_accumulation_steps};
    for (int i = 0; i < 3; i++) {
        json_t *v = json_object_get(root, batch_names[i]);
        c->given.batch[i] = !v ? 0 : is_auto(v) ? -1 : *fields[i];
        c->given.resolved[i] = *fields[i];
    }
    c->given.valid = 1;
    /* zinc_config_resolve's errors name the override that set a batch key */
    c->given.batch_origin[0] = '\0';
    for (int i = 0; i < 3 && !c->given.batch_origin[0]; i++) {
        const char *o = override_of(x, batch_names[i]);
        if (o) snprintf(c->given.batch_origin, sizeof c->given.batch_origin, "--set %s", o);
    }
    if (c->elasticity.enabled) { /* elasticity sets the triple (zinc_config_resolve) */
        for (int i = 0; i < 3; i++)
            if (c->given.batch[i] && !c->elasticity.ignore_non_elastic_batch_info)
                return cfg_err(x, batch_names[i],
                               "not allowed with elasticity.enabled, which sets the batch; "
                               "remove it or set elasticity.ignore_non_elastic_batch_info: true");
        memset(c->given.batch, 0, sizeof c->given.batch); /* ignored */
        return ZINC_OK;
    }
    if (!c->given.batch[0] && !c->given.batch[1])
        return cfg_err_also(x, "train_batch_size", "train_micro_batch_size_per_gpu",
                            "neither train_batch_size nor train_micro_batch_size_per_gpu is set");
    int64_t t = c->given.batch[0] > 0 ? c->given.batch[0] : 0;
    int64_t m = c->given.batch[1] > 0 ? c->given.batch[1] : 0;
    int64_t a = c->given.batch[2] > 0 ? c->given.batch[2] : 0;
    int64_t ma;
    if (t && m && a) {
        if (__builtin_mul_overflow(m, a, &ma) || t % ma)
            return cfg_err_also(x, "train_batch_size",
                           "train_micro_batch_size_per_gpu,gradient_accumulation_steps",
                           "%lld is not divisible by train_micro_batch_size_per_gpu %lld * "
                           "gradient_accumulation_steps %lld",
                           (long long)t, (long long)m, (long long)a);
    } else if (t && (m || a) && t % (m ? m : a)) {
        return cfg_err_also(x, "train_batch_size",
                            "train_micro_batch_size_per_gpu,gradient_accumulation_steps",
                            "%lld is not divisible by %s %lld", (long long)t,
                       m ? batch_names[1] : batch_names[2], (long long)(m ? m : a));
    }
    return ZINC_OK;
}

#define AUTO(a) (x->autos & (1u << (a)))

static zinc_status finish(cfg_ctx *x, json_t *root)
{
    zinc_config *c = x->c;
    json_t *zero = json_object_get(root, "zero_optimization");
    json_t *sched = json_object_get(root, "scheduler");
    json_t *sparams = json_is_object(sched) ? json_object_get(sched, "params") : NULL;

    /* DeepSpeed's overlap_comm default depends on the stage */
    if (!has_key(zero, "overlap_comm")) c->zero.overlap_comm = c->zero.stage == 3;
    /* AdamW is Adam with decoupled weight decay, whatever adam_w_mode says */
    if (c->optimizer.type == ZINC_OPT_ADAMW) {
        if (!c->optimizer.adam_w_mode)
            cfg_warn(x, "optimizer.params.adam_w_mode", "false has no effect with AdamW");
        c->optimizer.adam_w_mode = 1;
    }

    /* model.lora: given (an object), LoRA is on */
    json_t *jmodel = json_object_get(root, "model");
    c->model.lora.enabled = json_is_object(json_object_get(jmodel, "lora"));
    if (c->model.lora.enabled && c->model.lora.dropout > 0 && c->tp.size > 1 && c->tp.sequence_parallel)
        return cfg_err_also(x, "model.lora.dropout", "tensor_parallel.sequence_parallel",
                            "LoRA dropout with sequence parallelism is not implemented yet (dropout %g)",
                            c->model.lora.dropout);

    /* activation_checkpointing: given (an object), whole-layer recompute is on */
    /* ... unless the pipeline's interval is given as 0, which turns it off (as in DeepSpeed's pipeline) */
    json_t *jpipe = json_object_get(root, "pipeline");
    int ac_sec = json_is_object(json_object_get(root, "activation_checkpointing"));
    int ac_off = has_key(jpipe, "activation_checkpoint_interval") && c->ac.interval == 0;
    c->ac.enabled = (ac_sec && !ac_off) || c->ac.interval > 0;
    if (ac_sec && ac_off)
        cfg_warn(x, "activation_checkpointing", "no effect: pipeline.activation_checkpoint_interval 0 turns "
                 "activation checkpointing off");
    if (c->ac.interval > 0 && c->ac.number_checkpoints > 0)
        return cfg_err_also(x, "pipeline.activation_checkpoint_interval", "activation_checkpointing.number_checkpoints",
                            "both group the checkpointed layers (%lld layers a group, %lld groups): give one",
                            (long long)c->ac.interval, (long long)c->ac.number_checkpoints);
    if (c->ac.partition_activations && c->ac.enabled && c->tp.size == 1)
        cfg_warn(x, "activation_checkpointing.partition_activations",
                 "true has no effect with tensor_parallel.autotp_size 1 (nothing to split the checkpoints over)");
    else if (c->ac.partition_activations && c->ac.enabled && c->tp.sequence_parallel)
        cfg_warn(x, "activation_checkpointing.partition_activations",
                 "true has no effect with tensor_parallel.sequence_parallel: the checkpoints are split over the "
                 "TP ranks already");

    /* "auto" (rules at the top of this file) */
    zinc_sched_type sty = c->scheduler.type;
    int takes_max_lr = sty == ZINC_SCHED_WARMUP_LR || sty == ZINC_SCHED_WARMUP_DECAY_LR;
    if (AUTO(A_TOTAL)) c->scheduler.total_num_steps = c->train.max_steps;
    if (AUTO(A_LR)) c->optimizer.lr = takes_max_lr && !AUTO(A_WMAX) ? c->scheduler.warmup_max_lr : 1e-3;
    if (AUTO(A_WMAX)) c->scheduler.warmup_max_lr = c->optimizer.lr;
    if (AUTO(A_WNUM)) {
        int64_t cap = c->scheduler.total_num_steps > 0 ? c->scheduler.total_num_steps : c->train.max_steps;
        c->scheduler.warmup_num_steps = cap < 1000 ? cap : 1000;
    }
    /* n_embd <= EMBD_MAX: these products fit int64; clamped to the keys' own bound */
    int64_t emb = c->model.n_embd, emb2;
    if (__builtin_mul_overflow(emb, emb, &emb2) || emb2 > (int64_t)ELEMS_MAX) emb2 = (int64_t)ELEMS_MAX;
    if (AUTO(A_RBS)) c->zero.reduce_bucket_size = emb2;
    if (AUTO(A_PREFETCH)) c->zero.stage3_prefetch_bucket_size = (int64_t)(0.9 * (double)emb2);
    if (AUTO(A_PERSIST)) c->zero.stage3_param_persistence_threshold = 10 * emb;

    /* scheduler */
    if (sty == ZINC_SCHED_WARMUP_DECAY_LR || sty == ZINC_SCHED_WARMUP_COSINE_LR) {
        if (!has_key(sparams, "total_num_steps"))
            return cfg_err_also(x, "scheduler.params.total_num_steps", "scheduler.type", "required by %s",
                           config_enum_name(sched_types, (int)sty));
        if (c->scheduler.total_num_steps < c->scheduler.warmup_num_steps)
            return cfg_err_also(x, "scheduler.params.total_num_steps",
                           "scheduler.params.warmup_num_steps", "%lld is less than scheduler.params.warmup_num_steps %lld",
                           (long long)c->scheduler.total_num_steps,
                           (long long)c->scheduler.warmup_num_steps);
    }

    /* the validation loss needs held-out data */
    if (c->train.eval_every > 0 && c->data.n_valid == 0)
        return cfg_err(x, "train.eval_every", "%lld needs data.valid (the held-out token shards)",
                       (long long)c->train.eval_every);
    json_t *trn = json_object_get(root, "train");
    if (c->data.n_valid == 0 && has_key(trn, "eval_batches") && c->train.eval_batches != 10) /* 10: the default a dump holds */
        note_no_effect(x, "train.eval_batches", json_object_get(trn, "eval_batches"), "no data.valid to evaluate");

    /* data.tokenizer: "bytes", or a tokenizer.json (or a folder holding one) that exists */
    if (strcmp(c->data.tokenizer, "bytes")) {
        struct stat tsb;
        char tj[600];
        snprintf(tj, sizeof tj, "%s/tokenizer.json", c->data.tokenizer);
        int isdir = stat(c->data.tokenizer, &tsb) == 0 && S_ISDIR(tsb.st_mode);
        if (stat(isdir ? tj : c->data.tokenizer, &tsb) != 0)
            return cfg_err(x, "data.tokenizer", "\"%s\": neither \"bytes\" nor a tokenizer.json or a folder holding one "
                           "(%s)", c->data.tokenizer, strerror(errno));
    }

    /* .jsonl data: the chat template by name (never guessed); without .jsonl data the
     * template and the cache have nothing to do */
    int n_jsonl = 0;
    for (int i = 0; i < c->data.n_train; i++) n_jsonl += ends_with_jsonl(c->data.train[i]);
    for (int i = 0; i < c->data.n_valid; i++) n_jsonl += ends_with_jsonl(c->data.valid[i]);
    json_t *dat = json_object_get(root, "data");
    if (c->data.chat_template[0] && !zinc_chat_template_known(c->data.chat_template))
        return cfg_err(x, "data.chat_template", "\"%s\": zinc renders chatml, qwen2, llama3 and llama2",
                       c->data.chat_template);
    if (c->data.chat_template[0] && n_jsonl && !strcmp(c->data.tokenizer, "bytes"))
        return cfg_err(x, "data.chat_template", "%s needs data.tokenizer (its special tokens)", c->data.chat_template);
    if (!n_jsonl && has_key(dat, "chat_template") && c->data.chat_template[0])
        note_no_effect(x, "data.chat_template", json_object_get(dat, "chat_template"), "no .jsonl data to render");
    if (!n_jsonl && has_key(dat, "cache_dir") && c->data.cache_dir[0])
        note_no_effect(x, "data.cache_dir", json_object_get(dat, "cache_dir"), "no .jsonl data to cache");

    /* pipeline.partition: DeepSpeed's methods (the regex is matched against the layer types) */
    const char *pm = c->pp.partition;
    if (strcasecmp(pm, "parameters") && strcasecmp(pm, "uniform") && strncasecmp(pm, "type:", 5))
        return cfg_err(x, "pipeline.partition", "expected \"parameters\", \"uniform\" or \"type:REGEX\", found \"%s\"",
                       pm);
    if (!strncasecmp(pm, "type:", 5)) {
        regex_t re;
        int rc = regcomp(&re, pm + 5, REG_EXTENDED | REG_ICASE | REG_NOSUB);
        if (rc) {
            char why[128];
            regerror(rc, &re, why, sizeof why);
            return cfg_err(x, "pipeline.partition", "\"%s\": bad regular expression: %s", pm, why);
        }
        regfree(&re);
    }

    /* gradients are accumulated in fp32 and reduced in the working dtype */
    const char *wdt = c->bf16.enabled ? "bf16" : c->fp16.enabled ? "fp16" : "fp32";
    json_t *cdt = json_object_get(root, "communication_data_type");
    if (json_is_string(cdt)) {
        static const char *const names[3][4] = {{"fp32", "float32", "float", NULL},
                                                {"fp16", "float16", "half", NULL},
                                                {"bf16", "bfloat16", NULL, NULL}};
        int w = c->bf16.enabled ? 2 : c->fp16.enabled ? 1 : 0, ok = 0;
        for (int i = 0; names[w][i]; i++) ok |= !strcasecmp(json_string_value(cdt), names[w][i]);
        if (!ok)
            return cfg_err_also(x, "communication_data_type", "fp16.enabled,bf16.enabled",
                                "\"%s\" is not supported yet; only \"%s\" (zinc reduces gradients in the "
                                "working dtype)", json_string_value(cdt), wdt);
    }
    if (json_is_true(json_object_get(root, "fp32_allreduce")) && strcmp(wdt, "fp32"))
        return cfg_err_also(x, "fp32_allreduce", "fp16.enabled,bf16.enabled",
                            "true is not supported yet with %s (zinc reduces gradients in the working "
                            "dtype)", wdt);
    /* DeepSpeed's Adam with adam_w_mode false is Adam with L2 weight decay */
    if (c->optimizer.type == ZINC_OPT_ADAM && !c->optimizer.adam_w_mode && c->optimizer.weight_decay > 0)
        return cfg_err_also(x, "optimizer.params.adam_w_mode", "optimizer.params.weight_decay,optimizer.type",
                            "false with weight_decay %g is not supported yet; only true (zinc decays "
                            "weights decoupled, as AdamW; Adam's L2 weight decay is not implemented)",
                            c->optimizer.weight_decay);

    /* precision */
    if (c->fp16.enabled && c->bf16.enabled)
        return cfg_err_also(x, "fp16", "fp16.enabled,bf16.enabled",
                            "fp16.enabled and bf16.enabled are both true; enable at most one");

    /* model and data */
    if (c->model.n_embd % c->model.n_head)
        return cfg_err_also(x, "model.n_embd", "model.n_head", "%lld is not divisible by model.n_head %lld",
                       (long long)c->model.n_embd, (long long)c->model.n_head);
    if (c->model.n_head % zinc_config_kv_heads(c))
        return cfg_err_also(x, "model.n_kv_head", "model.n_head", "%lld does not divide model.n_head %lld (each key/value "
                            "head serves a group of query heads)", (long long)c->model.n_kv_head, (long long)c->model.n_head);
    if (!strcmp(c->model.type, "gpt2")) { /* GPT-2's shape is fixed: another value would change what is computed */
        if (zinc_config_kv_heads(c) != c->model.n_head)
            return cfg_err_also(x, "model.n_kv_head", "model.type", "%lld with model.type \"gpt2\": GPT-2 has one key/value "
                                "head per query head (grouped-query attention is model.type \"llama\")",
                                (long long)c->model.n_kv_head);
        if (zinc_config_ffn(c) != 4 * c->model.n_embd)
            return cfg_err_also(x, "model.intermediate_size", "model.type", "%lld with model.type \"gpt2\": GPT-2's MLP "
                                "is 4 x model.n_embd = %lld wide", (long long)c->model.intermediate_size,
                                (long long)(4 * c->model.n_embd));
        if (!c->model.tie_word_embeddings)
            return cfg_err_also(x, "model.tie_word_embeddings", "model.type", "false with model.type \"gpt2\": zinc's "
                                "GPT-2 ties its head to wte (untied heads are model.type \"llama\")");
    } else {
        const int64_t hs = c->model.n_embd / c->model.n_head;
        if (hs % 2)
            return cfg_err_also(x, "model.n_embd", "model.n_head", "model.n_embd / model.n_head = %lld: the rotary "
                                "embedding needs an even head size", (long long)hs);
    }
    if (c->data.n_train && c->data.n_text)
        return cfg_err_also(x, "data", "data.train,data.text", "both data.train (token shards) and data.text (files to tokenize) "
                       "are given; use one");
    if (has_key(root, "data") && !c->data.n_train && !c->data.n_text)
        return cfg_err(x, "data", "needs data.train (token shards) or data.text (files to tokenize)");
    if (c->data.seq_len > c->model.block_size && !c->model.from_pretrained[0]) /* else: the folder's, checked there */
        return cfg_err_also(x, "data.seq_len", "model.block_size", "%lld exceeds model.block_size %lld",
                       (long long)c->data.seq_len, (long long)c->model.block_size);

    /* ZeRO and offload */
    if (c->zero.offload_optimizer.device == ZINC_OFFLOAD_NVME && !c->zero.offload_optimizer.nvme_path[0])
        return cfg_err_also(x, "zero_optimization.offload_optimizer.nvme_path",
                            "zero_optimization.offload_optimizer.device",
                       "required when offload_optimizer.device is \"nvme\"");
    if (c->zero.offload_param.device == ZINC_OFFLOAD_NVME && !c->zero.offload_param.nvme_path[0])
        return cfg_err_also(x, "zero_optimization.offload_param.nvme_path",
                            "zero_optimization.offload_param.device",
                       "required when offload_param.device is \"nvme\"");
    if (c->zero.offload_param.device != ZINC_OFFLOAD_NONE && c->zero.stage < 3)
        return cfg_err_also(x, "zero_optimization.offload_param.device", "zero_optimization.stage",
                       "\"%s\" requires zero_optimization.stage 3, found stage %d",
                       config_enum_name(offload_devices, (int)c->zero.offload_param.device), c->zero.stage);
    if (c->zero.offload_optimizer.device != ZINC_OFFLOAD_NONE && c->zero.stage < 1)
        return cfg_err_also(x, "zero_optimization.offload_optimizer.device", "zero_optimization.stage",
                       "\"%s\" requires zero_optimization.stage >= 1, found stage 0",
                       config_enum_name(offload_devices, (int)c->zero.offload_optimizer.device));
    if (c->zero.offload_optimizer.ratio < 1 && c->zero.offload_optimizer.device == ZINC_OFFLOAD_NVME)
        return cfg_err_also(x, "zero_optimization.offload_optimizer.ratio", "zero_optimization.offload_optimizer.device",
                            "%g with \"nvme\" is not supported yet (the swap file holds every unit's state); use "
                            "\"cpu\" or ratio 1", c->zero.offload_optimizer.ratio);
    if (c->zero.offload_optimizer.ratio < 1 && c->zero.offload_optimizer.device == ZINC_OFFLOAD_NONE)
        cfg_warn(x, "zero_optimization.offload_optimizer.ratio", "%g has no effect without offload_optimizer.device",
                 c->zero.offload_optimizer.ratio);
    warn_stage3_knobs(x, zero);
    /* sequence parallelism splits the activations of a TP group: none at size 1 */
    if (x->c->tp.sequence_parallel && x->c->tp.size == 1)
        cfg_warn(x, "tensor_parallel.sequence_parallel",
                 "true has no effect with tensor_parallel.autotp_size 1");

    return finish_batch(x, root);
}

/* ---------------------------------------------------------------- the struct */

/* Checks every stored number of c against its key's range: the same table
 * that validates JSON validates a struct filled through the C API. */
static zinc_status check_walk(const zinc_config *c, const keydesc *tab, char *path, size_t plen)
{
    for (const keydesc *k = tab; k->name; k++) {
        size_t n = config_path_push(path, plen, k->name);
        zinc_status st = ZINC_OK;
        if (k->type == T_SECTION) {
            st = check_walk(c, k->sub, path, n);
        } else if (k->off != NOF && (k->type == T_INT || k->type == T_INT32 || k->type == T_NUM) &&
                   !(k->sched_mask && !(k->sched_mask & (1u << c->scheduler.type)))) {
            const char *f = (const char *)c + k->off;
            double d = k->type == T_INT ? (double)*(const int64_t *)f
                       : k->type == T_INT32 ? (double)*(const int *)f : *(const double *)f;
            /* the batch triple is 0 before zinc_config_resolve; total_num_steps 0 when unused */
            int unset = d == 0 && ((k->flags & F_BATCH) || k->auto_id == A_TOTAL);
            if (!unset && (!config_in_range(k, d) || (k->type == T_NUM && isnan(d)))) {
                char exp[400], found[64];
                config_expected(k, exp, sizeof exp);
                if (k->type == T_NUM)
                    config_fmt_double(d, found, sizeof found);
                else
                    snprintf(found, sizeof found, "%lld",
                             k->type == T_INT ? (long long)*(const int64_t *)f : (long long)*(const int *)f);
                st = zinc_error(ZINC_ERR_CONFIG, "%s: %s: expected %s, found %s",
                                c->given.origin[0] ? c->given.origin : "config", path, exp, found);
            }
        }
        path[plen] = '\0';
        if (st != ZINC_OK) return st;
    }
    return ZINC_OK;
}

zinc_status zinc_config_check(const zinc_config *c)
{
    if (!c) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_config_check: no config");
    char path[PATH_CAP] = "";
    return check_walk(c, config_root_keys, path, 0);
}

/* ---------------------------------------------------------------- load */

static zinc_status load_tree(json_t *root, const char *origin, const char *const *ovr, int n_ovr,
                             zinc_config *out, char **effects)
{
    zinc_status st = ZINC_OK;
    char path[PATH_CAP] = "";
    zinc_config *c = malloc(sizeof *c);
    if (!c) return zinc_error(ZINC_ERR_NOMEM, "%s: out of memory", origin);
    zinc_config_defaults(c);
    cfg_ctx x = {.origin = origin, .c = c, .ovr = ovr, .n_ovr = n_ovr, .want_eff = effects != NULL};

    if (!json_is_object(root)) {
        char found[128];
        describe(root, found, sizeof found);
        st = zinc_error(ZINC_ERR_CONFIG, "%s: expected a JSON object at the top level, found %s",
                        origin, found);
        goto cleanup;
    }
    ZINC_TRY(normalize(root));
    for (int i = 0; i < n_ovr; i++) {
        if (!ovr[i]) {
            st = zinc_error(ZINC_ERR_INVALID_ARG, "--set: override %d is NULL", i);
            goto cleanup;
        }
        ZINC_TRY(apply_override(root, ovr[i]));
    }
    ZINC_TRY(normalize(root));
    ZINC_TRY(walk_object(&x, config_root_keys, root, path, 0, 1));
    ZINC_TRY(finish(&x, root));
    /* one line for every key given that zinc accepts but does not act on */
    if (x.noeff_n)
        ZINC_WARN("%s: no effect in zinc (accepted for DeepSpeed compatibility; zinc-train --check "
                  "says why): %s%s", origin, x.noeff, x.noeff_more ? ", ..." : "");
    snprintf(c->given.origin, sizeof c->given.origin, "%s", origin);
    *out = *c;
    if (effects) {
        *effects = x.eff ? x.eff : strdup("");
        x.eff = NULL;
    }
cleanup:
    free(x.eff);
    free(c);
    return st;
}

static zinc_status load_buffer(const char *text, size_t len, const char *origin,
                               const char *const *ovr, int n_ovr, zinc_config *c, char **effects)
{
    json_error_t e;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &e);
    if (!root)
        return zinc_error(ZINC_ERR_CONFIG, "%s:%d:%d: malformed JSON: %s", origin, e.line, e.column,
                          e.text);
    zinc_status st = load_tree(root, origin, ovr, n_ovr, c, effects);
    json_decref(root);
    return st;
}

zinc_status zinc_config_load_string(const char *json, const char *origin,
                                    const char *const *overrides, int n_overrides, zinc_config *c)
{
    if (!origin) origin = "<string>";
    if (!json || !c || n_overrides < 0 || (n_overrides && !overrides))
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s: zinc_config_load_string: bad arguments", origin);
    return load_buffer(json, strlen(json), origin, overrides, n_overrides, c, NULL);
}

zinc_status zinc_config_load(const char *path, const char *const *overrides, int n_overrides,
                             zinc_config *c)
{
    return zinc_config_load_effects(path, overrides, n_overrides, c, NULL);
}

zinc_status zinc_config_load_effects(const char *path, const char *const *overrides, int n_overrides,
                                     zinc_config *c, char **effects)
{
    if (effects) *effects = NULL;
    if (!path || !c || n_overrides < 0 || (n_overrides && !overrides))
        return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_config_load: bad arguments");
    FILE *f = fopen(path, "rb");
    if (!f) return zinc_error(ZINC_ERR_IO, "%s: cannot open config: %s", path, strerror(errno));
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap) break;
        char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int err = ferror(f) ? errno : 0;
    fclose(f);
    if (!buf) return zinc_error(ZINC_ERR_NOMEM, "%s: out of memory reading config", path);
    if (err) {
        free(buf);
        return zinc_error(ZINC_ERR_IO, "%s: cannot open config: %s", path, strerror(err));
    }
    zinc_status st = load_buffer(buf, len, path, overrides, n_overrides, c, effects);
    free(buf);
    return st;
}

/* ---------------------------------------------------------------- batch rule */

/* With elasticity on, the batch keys come from it (engine/elastic.c): the
 * global batch for every rank count, the largest micro-batch that dp ranks
 * can run it with. Batch keys given besides are an error, as in DeepSpeed,
 * unless ignore_non_elastic_batch_info (then they are ignored). */
static zinc_status elastic_batch(const zinc_config *c, int dp, const char *origin, int64_t g[3])
{
    if ((g[0] || g[1] || g[2]) && !c->elasticity.ignore_non_elastic_batch_info)
        return zinc_error(ZINC_ERR_CONFIG,
                          "%s: elasticity.enabled sets train_batch_size, "
                          "train_micro_batch_size_per_gpu and gradient_accumulation_steps; remove "
                          "them or set elasticity.ignore_non_elastic_batch_info: true",
                          origin);
    if (c->elasticity.min_gpus > c->elasticity.max_gpus)
        return zinc_error(ZINC_ERR_CONFIG, "%s: elasticity.min_gpus %lld > max_gpus %lld", origin,
                          (long long)c->elasticity.min_gpus, (long long)c->elasticity.max_gpus);
    int64_t b = zinc_elastic_batch(c), m = 0;
    if (b < 1)
        return zinc_error(ZINC_ERR_CONFIG,
                          "%s: elasticity: no micro_batch_sizes entry fits max_train_batch_size %lld",
                          origin, (long long)c->elasticity.max_train_batch_size);
    if (dp < c->elasticity.min_gpus || dp > c->elasticity.max_gpus ||
        !zinc_elastic_fits(c, b, dp, &m)) {
        char valid[256];
        zinc_elastic_valid_list(c, b, valid, sizeof valid);
        return zinc_error(ZINC_ERR_CONFIG,
                          "%s: elasticity: %d ranks cannot run its train batch of %lld (valid rank "
                          "counts: %s)",
                          origin, dp, (long long)b, valid);
    }
    g[0] = b;
    g[1] = m;
    g[2] = 0;
    return ZINC_OK;
}

int zinc_config_dp_size(const zinc_config *c, int world)
{
    const int64_t mp = (c->tp.size > 0 ? c->tp.size : 1) * (c->pp.stages > 0 ? c->pp.stages : 1);
    return (int)(world / mp);
}

/* The pipeline layout for a job of world ranks (the stage count against the
 * layers is the engine's check: it knows the model). */
static zinc_status pp_check(const zinc_config *c, int world, const char *origin)
{
    const long long pp = (long long)c->pp.stages, tp = (long long)c->tp.size, v = (long long)c->pp.virtual_stages;
    if (pp < 1 || v < 1)
        return zinc_error(ZINC_ERR_CONFIG, "%s: pipeline.stages %lld and pipeline.virtual_stages %lld must be >= 1",
                          origin, pp, v);
    if (world % (pp * tp))
        return zinc_error(ZINC_ERR_CONFIG, "%s: pipeline.stages %lld x tensor_parallel.autotp_size %lld = %lld does "
                          "not divide the world size %d", origin, pp, tp, pp * tp, world);
    if (v > 1 && c->pp.schedule != 2)
        return zinc_error(ZINC_ERR_CONFIG, "%s: pipeline.virtual_stages %lld needs pipeline.schedule "
                          "\"interleaved\" (found \"%s\")", origin, v, config_enum_name(pp_schedules, c->pp.schedule));
    if (pp > 1 && c->elasticity.enabled)
        return zinc_error(ZINC_ERR_CONFIG, "%s: elasticity with pipeline.stages %lld: not supported yet (elastic "
                          "jobs are data parallel only)", origin, pp);
    return ZINC_OK;
}

/* The micro-batches of a step against the schedule (after the batch is resolved). */
static zinc_status pp_check_micro(const zinc_config *c, const char *origin)
{
    const long long pp = (long long)c->pp.stages, ga = (long long)c->gradient_accumulation_steps;
    if (c->pp.schedule == 2 && ga > 0 && ga % pp)
        return zinc_error(ZINC_ERR_CONFIG, "%s: pipeline.schedule \"interleaved\": gradient_accumulation_steps %lld "
                          "(the micro-batches of a step) is not a multiple of pipeline.stages %lld", origin, ga, pp);
    return ZINC_OK;
}

/* The TP layout for a job of world ranks: TP divides the world, the heads,
 * the MLP width and the vocabulary (padded by the user to a multiple of
 * TP x 64, as Megatron pads it, so every rank's slice stays aligned). */
static zinc_status tp_check(const zinc_config *c, int world, const char *origin)
{
    const long long tp = (long long)c->tp.size, nh = (long long)c->model.n_head;
    const long long nkv = (long long)zinc_config_kv_heads(c);
    const long long mlp = (long long)zinc_config_ffn(c), v = (long long)c->model.vocab_size;
    if (world % tp)
        return zinc_error(ZINC_ERR_CONFIG, "%s: tensor_parallel.autotp_size %lld does not divide "
                          "the world size %d", origin, tp, world);
    if (nh % tp)
        return zinc_error(ZINC_ERR_CONFIG, "%s: tensor_parallel.autotp_size %lld does not divide "
                          "model.n_head %lld", origin, tp, nh);
    if (nkv % tp)
        return zinc_error(ZINC_ERR_CONFIG, "%s: tensor_parallel.autotp_size %lld does not divide "
                          "the key/value heads (model.n_kv_head) %lld", origin, tp, nkv);
    if (mlp % tp)
        return zinc_error(ZINC_ERR_CONFIG, "%s: tensor_parallel.autotp_size %lld does not divide "
                          "the MLP width %lld", origin, tp, mlp);
    if (tp > 1 && v % (64 * tp))
        return zinc_error(ZINC_ERR_CONFIG, "%s: model.vocab_size %lld is not a multiple of "
                          "64 x tensor_parallel.autotp_size = %lld; pad it to %lld", origin, v,
                          64 * tp, (v + 64 * tp - 1) / (64 * tp) * (64 * tp));
    const long long T = (long long)zinc_config_seq_len(c);
    if (tp > 1 && c->tp.sequence_parallel && T % tp)
        return zinc_error(ZINC_ERR_CONFIG, "%s: tensor_parallel.sequence_parallel: the sequence "
                          "length %lld is not a multiple of tensor_parallel.autotp_size %lld (each "
                          "rank holds 1/TP of the tokens between the parallel regions)", origin, T, tp);
    if (tp > 1 && c->elasticity.enabled)
        return zinc_error(ZINC_ERR_CONFIG, "%s: elasticity with tensor_parallel.autotp_size %lld: "
                          "not supported yet (elastic jobs are data parallel only)", origin, tp);
    return ZINC_OK;
}

zinc_status zinc_config_check_mesh(const zinc_config *c, int world)
{
    const char *origin = c->given.origin[0] ? c->given.origin : "config";
    if (world < 1) return zinc_error(ZINC_ERR_INVALID_ARG, "%s: world size %d must be >= 1", origin, world);
    zinc_status st = tp_check(c, world, origin);
    if (st == ZINC_OK) st = pp_check(c, world, origin);
    if (st == ZINC_OK) st = pp_check_micro(c, origin);
    return st;
}

zinc_status zinc_config_resolve(zinc_config *c, int world)
{
    if (!c) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_config_resolve: no config");
    const char *origin = c->given.batch_origin[0] ? c->given.batch_origin
                         : c->given.origin[0]     ? c->given.origin
                                                  : "config";
    if (world < 1)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s: data-parallel size %d must be >= 1", origin,
                          world);
    zinc_status cst = zinc_config_check(c);
    if (cst != ZINC_OK) return cst;
    cst = tp_check(c, world, origin);
    if (cst == ZINC_OK) cst = pp_check(c, world, origin);
    if (cst != ZINC_OK) return cst;
    const int dp = zinc_config_dp_size(c, world);
    int64_t cur[3] = {c->train_batch_size, c->train_micro_batch_size_per_gpu,
                      c->gradient_accumulation_steps};
    int64_t g[3];
    if (c->given.valid && !memcmp(cur, c->given.resolved, sizeof cur)) {
        memcpy(g, c->given.batch, sizeof g);
    } else {
        /* set through the C API, or edited since the last resolve: the fields are what is given */
        for (int i = 0; i < 3; i++) {
            if (cur[i] < 0)
                return zinc_error(ZINC_ERR_CONFIG, "%s: %s: expected an integer >= 1, found %lld",
                                  origin, batch_names[i], (long long)cur[i]);
            g[i] = cur[i];
        }
    }
    int64_t given[3];
    memcpy(given, g, sizeof given); /* what a later resolve starts from again */
    if (c->elasticity.enabled) {
        zinc_status est = elastic_batch(c, dp, origin, g);
        if (est != ZINC_OK) return est;
    }
    if (!g[0] && !g[1])
        return zinc_error(ZINC_ERR_CONFIG, "%s: neither train_batch_size nor "
                          "train_micro_batch_size_per_gpu is set", origin);
    /* "auto" (-1) counts as absent */
    int64_t t = g[0] > 0 ? g[0] : 0, m = g[1] > 0 ? g[1] : 0, a = g[2] > 0 ? g[2] : 0;
    int64_t prod;
    if (!t && !m) m = 1; /* only "auto": one sample per micro-batch */
    if (t && m && a) {
        if (__builtin_mul_overflow(m, a, &prod) || __builtin_mul_overflow(prod, (int64_t)dp, &prod) ||
            prod != t)
            return zinc_error(ZINC_ERR_CONFIG,
                              "%s: train_batch_size %lld != train_micro_batch_size_per_gpu %lld * "
                              "gradient_accumulation_steps %lld * data-parallel size %d",
                              origin, (long long)t, (long long)m, (long long)a, dp);
    } else if (t && (m || a)) {
        int64_t known = m ? m : a;
        if (__builtin_mul_overflow(known, (int64_t)dp, &prod) || t % prod)
            return zinc_error(ZINC_ERR_CONFIG,
                              "%s: train_batch_size %lld is not divisible by %s %lld * "
                              "data-parallel size %d",
                              origin, (long long)t, m ? batch_names[1] : batch_names[2],
                              (long long)known, dp);
        if (m)
            a = t / prod;
        else
            m = t / prod;
    } else if (t) {
        a = 1;
        if (t % dp)
            return zinc_error(ZINC_ERR_CONFIG,
                              "%s: train_batch_size %lld is not divisible by data-parallel size %d",
                              origin, (long long)t, dp);
        m = t / dp;
    } else {
        if (!a) a = 1;
        if (__builtin_mul_overflow(m, a, &t) || __builtin_mul_overflow(t, (int64_t)dp, &t))
            return zinc_error(ZINC_ERR_CONFIG,
                              "%s: train_micro_batch_size_per_gpu %lld * gradient_accumulation_steps "
                              "%lld * data-parallel size %d overflows",
                              origin, (long long)m, (long long)a, dp);
    }
    /* what the engine holds: int micro-batch, accumulation and tokens per micro-batch */
    const int64_t lim[3] = {(int64_t)TBS_MAX, (int64_t)MICRO_MAX, (int64_t)GAS_MAX};
    const int64_t res[3] = {t, m, a};
    for (int i = 0; i < 3; i++)
        if (res[i] > lim[i])
            return zinc_error(ZINC_ERR_CONFIG,
                              "%s: %s resolves to %lld for data-parallel size %d; at most %lld",
                              origin, batch_names[i], (long long)res[i], dp, (long long)lim[i]);
    int64_t seq = zinc_config_seq_len(c), tok;
    if (__builtin_mul_overflow(m, seq, &tok) || tok > INT32_MAX)
        return zinc_error(ZINC_ERR_CONFIG,
                          "%s: train_micro_batch_size_per_gpu %lld * sequence length %lld = %lld "
                          "tokens per micro-batch; at most %d",
                          origin, (long long)m, (long long)seq, (long long)tok, INT32_MAX);
    zinc_config tmp = *c;
    tmp.gradient_accumulation_steps = a;
    cst = pp_check_micro(&tmp, origin);
    if (cst != ZINC_OK) return cst;
    c->train_batch_size = t;
    c->train_micro_batch_size_per_gpu = m;
    c->gradient_accumulation_steps = a;
    memcpy(c->given.batch, given, sizeof given);
    c->given.resolved[0] = t;
    c->given.resolved[1] = m;
    c->given.resolved[2] = a;
    c->given.valid = 1;
    return ZINC_OK;
}
