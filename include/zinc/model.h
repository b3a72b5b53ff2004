/* zinc/model.h - the models zinc defines, behind one door: model.type picks GPT-2
 * (zinc/gpt2.h) or the Llama family (zinc/llama.h), and model.from_pretrained reads a
 * Hugging Face model folder's config.json into the config. */
#ifndef ZINC_MODEL_H
#define ZINC_MODEL_H

#include "zinc/config.h"
#include "zinc/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zinc_model zinc_model;

/* The model config->model.type names ("gpt2", "llama"). Valid until zinc_model_destroy. */
zinc_status zinc_model_create(const zinc_config *c, zinc_model **out);
const zinc_model_def *zinc_model_def_of(const zinc_model *m);
/* The real vocabulary n <= model.vocab_size (the padded rows' logits are -inf, so they
 * take no part in the softmax, the loss or any gradient). Before the engine runs. */
zinc_status zinc_model_set_vocab_real(zinc_model *m, int64_t n);
/* The token embedding's name ("wte.weight", "model.embed_tokens.weight"). */
const char *zinc_model_embedding_name(const zinc_model *m);
void zinc_model_destroy(zinc_model *m); /* NULL-safe */

/* model.from_pretrained: reads the folder's config.json into c: model_type gpt2 (GPT-2),
 * llama, mistral, qwen2 (the Llama family); another is ZINC_ERR_CONFIG naming it, and a
 * setting zinc cannot honour (another activation, a sliding window, a rope_scaling
 * other than llama3, ...) is one line naming it. vocab_size is padded to a multiple of
 * 128 and of 64 x TP (the real size kept out of the softmax); init_from becomes the
 * folder (model.safetensors or its index's shards) and, with data.tokenizer "bytes",
 * the folder's tokenizer.json. */
zinc_status zinc_model_pretrained_config(zinc_config *c);

#ifdef __cplusplus
}
#endif

#endif
