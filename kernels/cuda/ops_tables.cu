/* ops_tables.cu - the CUDA op tables: every op of zinc/ops.h on device
 * memory, row-major, same contract as the CPU reference (kernels/cpu).
 * Two tables: "cuda" keeps activations in fp32 and is exact fp32 (the
 * reference "cpu"); "cuda-bf16" keeps them in bf16 (the reference
 * "cpu-bf16"): every op computes in fp32 and rounds each act output once.
 * The act kernels are templates on the storage type (float or bf16), so one
 * source serves both tables. The ops live by family in ops_matmul.cu
 * (matmul, linear, linear_t, linear + GELU), ops_embedding.cu,
 * ops_layernorm.cu, ops_llama.cu (RMSNorm, RoPE, SwiGLU), ops_elementwise.cu (GELU, residual), ops_xent.cu,
 * ops_optim.cu (AdamW, sums, scale), ops_precision.cu (memory and
 * precision), attention_cuda.cu and attention_tc_cuda.cu; ops_common.cu
 * and ops_colsum.cu serve them (cuda_int.h). */

/* Every op but the dense products is a hand-written kernel on stream 0,
 * written for clarity first (llm.c style) and with a fixed reduction order
 * everywhere: no float atomics, so every result is bitwise reproducible
 * run to run. Attention is flash style (attention_cuda.cu,
 * attention_tc_cuda.cu): tiled kernels that never write a T x T matrix;
 * forward saves one log-sum-exp per row. */
#include <string.h>

#include <cuda_bf16.h>

#include "zinc/ops_cuda.h"
#include "cuda_int.h"

/* ------------------------------------------------------------------ */
/* attention and the tables                                            */
/* ------------------------------------------------------------------ */

/* The fp32 table's attention: act is fp32. */
static void cuda_attention_forward_f32(void *out, float *lse, const void *qkv, int B, int T,
                                       int C, int NH)
{
    cuda_attention_forward((float *)out, lse, (const float *)qkv, B, T, C, NH);
}

static void cuda_attention_backward_f32(void *dqkv, float *scratch, const void *dout,
                                        const void *qkv, const void *out, const float *lse,
                                        int B, int T, int C, int NH)
{
    cuda_attention_backward((float *)dqkv, scratch, (const float *)dout, (const float *)qkv,
                            (const float *)out, lse, B, T, C, NH);
}

/* Grouped-query attention: the multi-head kernels when every query head has its own key
 * and value head; shared ones are not done on cuda yet (recorded as an error, which the
 * engine's next sync reports). */
template <class A>
static void cuda_attention_gqa_forward(void *out, float *lse, const void *qkv, const int32_t *pos, int B, int T,
                                       int NH, int NKV, int HS)
{
    if (NKV != NH || pos) {
        cuda_fail(ZINC_ERR_UNSUPPORTED, "attention_gqa_forward", __FILE__, __LINE__,
                  pos ? "attention masked by documents is not done on cuda yet"
                      : "key/value heads shared by several query heads are not done on cuda yet");
        return;
    }
    if (sizeof(A) == sizeof(float))
        cuda_attention_forward((float *)out, lse, (const float *)qkv, B, T, NH * HS, NH);
    else
        cuda_attention_forward_bf16(out, lse, qkv, B, T, NH * HS, NH);
}

template <class A>
static void cuda_attention_gqa_backward(void *dqkv, float *scratch, const void *dout, const void *qkv, const void *out,
                                        const float *lse, const int32_t *pos, int B, int T, int NH, int NKV,
                                        int HS)
{
    if (NKV != NH || pos) {
        cuda_fail(ZINC_ERR_UNSUPPORTED, "attention_gqa_backward", __FILE__, __LINE__,
                  pos ? "attention masked by documents is not done on cuda yet"
                      : "key/value heads shared by several query heads are not done on cuda yet");
        return;
    }
    if (sizeof(A) == sizeof(float))
        cuda_attention_backward((float *)dqkv, scratch, (const float *)dout, (const float *)qkv, (const float *)out, lse,
                                B, T, NH * HS, NH);
    else
        cuda_attention_backward_bf16(dqkv, scratch, dout, qkv, out, lse, B, T, NH * HS, NH);
}

/* The act ops of one storage type A (float or bf16). */
template <class A>
static void fill_act_ops(zinc_ops *t)
{
    t->linear_forward = cuda_linear_forward<A>;
    t->linear_backward = cuda_linear_backward<A>;
    t->linear_t_forward = cuda_linear_t_forward<A>;
    t->linear_t_backward = cuda_linear_t_backward<A>;
    t->embedding_forward = cuda_embedding_forward<A>;
    t->embedding_backward = cuda_embedding_backward<A>;
    t->layernorm_forward = cuda_layernorm_forward<A>;
    t->layernorm_backward = cuda_layernorm_backward<A>;
    t->rmsnorm_forward = cuda_rmsnorm_forward<A>;
    t->rmsnorm_backward = cuda_rmsnorm_backward<A>;
    t->rope = cuda_rope<A>;
    t->swiglu_forward = cuda_swiglu_forward<A>;
    t->swiglu_backward = cuda_swiglu_backward<A>;
    t->fill_cols = cuda_fill_cols<A>;
    t->attention_gqa_forward = cuda_attention_gqa_forward<A>;
    t->attention_gqa_backward = cuda_attention_gqa_backward<A>;
    t->gelu_forward = cuda_gelu_forward<A>;
    t->linear_gelu_forward = cuda_linear_gelu_forward<A>;
    t->linear_gelu_backward = cuda_linear_gelu_backward<A>;
    t->gelu_backward = cuda_gelu_backward<A>;
    t->residual_forward = cuda_residual_forward<A>;
    t->softmax_xent = cuda_softmax_xent<A>;
    t->xent_vp_max = cuda_xent_vp_max<A>;
    t->xent_vp_sums = cuda_xent_vp_sums<A>;
    t->xent_vp_finish = cuda_xent_vp_finish<A>;
    t->lora_down = cuda_lora_down<A>;
    t->lora_up = cuda_lora_up<A>;
    t->lora_grad_up = cuda_lora_grad_up<A>;
    t->lora_grad_down = cuda_lora_grad_down<A>;
    t->dropout_forward = cuda_dropout_forward<A>;
    t->dropout_backward = cuda_dropout_backward<A>;
}

/* The tables, filled by member name (the struct grows; C++17 has no
 * designated initializers). bf16: act bf16 and tensor-core products. */
static zinc_ops make_table(int bf16_act)
{
    zinc_ops t;
    memset(&t, 0, sizeof t);
    t.name = bf16_act ? "cuda-bf16" : "cuda";
    t.act = bf16_act ? ZINC_DTYPE_BF16 : ZINC_DTYPE_F32;
    if (bf16_act) {
        t.matmul = cuda_matmul_bf16;
        t.attention_forward = cuda_attention_forward_bf16;
        t.attention_backward = cuda_attention_backward_bf16;
        fill_act_ops<bf16>(&t);
    } else {
        t.matmul = cuda_matmul;
        t.attention_forward = cuda_attention_forward_f32;
        t.attention_backward = cuda_attention_backward_f32;
        fill_act_ops<float>(&t);
    }
    t.attention_scratch_floats = cuda_attention_scratch_floats;
    t.adamw = cuda_adamw;
    t.sumsq = cuda_sumsq;
    t.scale = cuda_scale;
    t.zero = cuda_zero;
    t.copy = cuda_copy;
    t.convert = cuda_convert;
    t.add_into = cuda_add_into;
    t.round_to = cuda_round_to;
    t.sum = cuda_sum;
    return t;
}

static const zinc_ops cuda_ops = make_table(0);
static const zinc_ops cuda_ops_bf16 = make_table(1);

/* The CUDA op tables; static storage, touch no CUDA API. */
extern "C" const zinc_ops *zinc_ops_cuda(void)
{
    return &cuda_ops;
}

extern "C" const zinc_ops *zinc_ops_cuda_bf16(void)
{
    return &cuda_ops_bf16;
}
