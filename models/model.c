/* model.c - model.type to the model that defines it, and Hugging Face config.json to
 * the config (zinc/model.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zinc/gpt2.h"
#include "zinc/llama.h"
#include "zinc/model.h"
#include "model_int.h"

struct zinc_model {
    zinc_gpt2 *gpt2;
    zinc_llama *llama;
};

zinc_status zinc_model_create(const zinc_config *c, zinc_model **out)
{
    *out = NULL;
    zinc_model *m = calloc(1, sizeof *m);
    if (!m) return zinc_error(ZINC_ERR_NOMEM, "model");
    zinc_status st;
    if (!strcmp(c->model.type, "llama"))
        st = zinc_llama_create(c, &m->llama);
    else
        st = zinc_gpt2_create(c, &m->gpt2);
    if (st != ZINC_OK) {
        free(m);
        return st;
    }
    *out = m;
    return ZINC_OK;
}

const zinc_model_def *zinc_model_def_of(const zinc_model *m)
{
    return m->llama ? zinc_llama_model(m->llama) : zinc_gpt2_model(m->gpt2);
}

zinc_status zinc_model_set_vocab_real(zinc_model *m, int64_t n)
{
    return m->llama ? zinc_llama_set_vocab_real(m->llama, n) : zinc_gpt2_set_vocab_real(m->gpt2, n);
}

const char *zinc_model_embedding_name(const zinc_model *m)
{
    return m->llama ? "model.embed_tokens.weight" : "wte.weight";
}

void zinc_model_destroy(zinc_model *m)
{
    if (!m) return;
    zinc_llama_destroy(m->llama);
    zinc_gpt2_destroy(m->gpt2);
    free(m);
}

zinc_status zinc_model_pretrained_config(zinc_config *c)
{
    const char *dir = c->model.from_pretrained;
    char path[700];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j)
        return zinc_error(access(path, R_OK) ? ZINC_ERR_IO : ZINC_ERR_CORRUPT, "model.from_pretrained: %s: %s", path,
                          access(path, R_OK) ? strerror(errno) : je.text);
    zinc_status st = ZINC_OK;
    const char *mt = json_string_value(json_object_get(j, "model_type"));
    if (mt && !strcmp(mt, "gpt2"))
        st = gpt2_hf_config(c, j, path);
    else if (mt && (!strcmp(mt, "llama") || !strcmp(mt, "mistral") || !strcmp(mt, "qwen2")))
        st = llama_hf_config(c, j, path, mt);
    else
        st = zinc_error(ZINC_ERR_CONFIG, "model.from_pretrained: %s: model_type %s%s%s: zinc knows gpt2, llama, "
                        "mistral and qwen2", path, mt ? "\"" : "", mt ? mt : "missing", mt ? "\"" : "");
    if (st != ZINC_OK) goto done;
    /* a multiple of 128, and of 64 x TP as vocab-parallel TP needs */
    const int64_t tp = c->tp.size > 0 ? c->tp.size : 1, pad = 64 * tp > 128 ? 64 * tp : 128;
    c->model.vocab_size = (c->model.vocab_size + pad - 1) / pad * pad; /* the padded rows stay out of the softmax */
    snprintf(c->model.init_from, sizeof c->model.init_from, "%s", dir);
    char tj[700];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    if (!strcmp(c->data.tokenizer, "bytes") && access(tj, R_OK) == 0)
        snprintf(c->data.tokenizer, sizeof c->data.tokenizer, "%s", dir);
    st = zinc_config_check(c);
    if (st == ZINC_OK && c->data.seq_len > c->model.block_size)
        st = zinc_error(ZINC_ERR_CONFIG, "data.seq_len %lld exceeds the %lld positions of model.from_pretrained %s",
                        (long long)c->data.seq_len, (long long)c->model.block_size, path);
done:
    json_decref(j);
    return st;
}
