/* zinc/llama.h - the Llama family (Llama 2/3, Mistral, Qwen2) as a list of engine layers:
 * the token embedding, n_layer pre-norm blocks (RMSNorm, rotary embeddings with
 * Llama-3's rope_scaling, grouped-query attention, SwiGLU MLP, optional q/k/v biases)
 * and a head (RMSNorm, lm_head or the tied embedding, fused softmax cross-entropy), with
 * Hugging Face's parameter names and (out, in) weight layouts. */
#ifndef ZINC_LLAMA_H
#define ZINC_LLAMA_H

#include "zinc/config.h"
#include "zinc/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zinc_llama zinc_llama;

/* Builds the model definition from config->model (type "llama"): n_layer, n_embd,
 * n_head, n_kv_head, intermediate_size, vocab_size, tie_word_embeddings,
 * attention_bias, rope_theta, rope_scaling, rms_norm_eps; the rotary tables cover the
 * training sequence length. Valid until zinc_llama_destroy. */
zinc_status zinc_llama_create(const zinc_config *c, zinc_llama **out);
const zinc_model_def *zinc_llama_model(const zinc_llama *m);
/* The real vocabulary n <= model.vocab_size: the padded rows' logits are -inf. */
zinc_status zinc_llama_set_vocab_real(zinc_llama *m, int64_t n);
void zinc_llama_destroy(zinc_llama *m); /* NULL-safe */

#ifdef __cplusplus
}
#endif

#endif
