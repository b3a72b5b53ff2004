/* zinc/gpt2.h - the GPT-2 model as a list of engine layers: embedding
 * (wte, wpe), n_layer pre-LN transformer blocks with Hugging Face GPT-2
 * parameter names (Conv1D (in, out) weights), and a head (ln_f + tied wte +
 * fused softmax cross-entropy). */
#ifndef ZINC_GPT2_H
#define ZINC_GPT2_H

#include "zinc/config.h"
#include "zinc/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zinc_gpt2 zinc_gpt2;

/* Builds the model definition from config->model. The definition inside
 * stays valid until zinc_gpt2_destroy. */
zinc_status zinc_gpt2_create(const zinc_config *c, zinc_gpt2 **out);
const zinc_model_def *zinc_gpt2_model(const zinc_gpt2 *g);
/* The real vocabulary n <= model.vocab_size (the tokenizer's, or the rows of the imported
 * wte): the padded rows' logits are -inf, so they take no part in the softmax, the loss or
 * any gradient, on every device and under vocab-parallel TP. Before the engine runs. */
zinc_status zinc_gpt2_set_vocab_real(zinc_gpt2 *g, int64_t n);
void zinc_gpt2_destroy(zinc_gpt2 *g); /* NULL-safe */

#ifdef __cplusplus
}
#endif

#endif
