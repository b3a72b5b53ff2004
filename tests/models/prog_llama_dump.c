/* prog_llama_dump.c - for tests/models/test_llama.sh: builds the Llama-family model a
 * config describes on one rank, sets every parameter to seeded random values (norm
 * weights around 1, biases around 0, so that each takes part), runs one forward and
 * backward of a fixed micro-batch (zinc_engine_loss_and_grad, fp32) and writes
 *   p.NAME (the parameter), g.NAME (its gradient of the mean token loss), tokens,
 *   targets (I32), and the loss in the metadata ("loss", %.17g)
 * to OUT.safetensors, where an independent reference (tests/models/llama_ref.py)
 * recomputes the loss and checks the gradients by finite differences. With
 * model.init_from (or model.from_pretrained) the parameters are the folder's instead.
 * With "docs" the micro-batch's rows hold documents packed back to back (seeded
 * lengths): their positions go in as zinc_data_get_docs gives them and are written as
 * `pos`; targets that would cross a document, and a quarter of the others, are -1.
 *   prog_llama_dump CONFIG.json OUT.safetensors [docs]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/comm.h"
#include "zinc/config.h"
#include "zinc/engine.h"
#include "zinc/model.h"
#include "zinc/safetensors.h"

#define MAX_T 256

typedef struct dump {
    zinc_engine *eng;
    char (*names)[128];
    int n_names;
    const int32_t *tok, *tgt, *pos;
} dump;

static zinc_status source(void *u, size_t i, uint64_t offset, void *dst, size_t n)
{
    dump *d = u;
    const void *src;
    if (i < 2 * (size_t)d->n_names) {
        const char *name = d->names[i / 2];
        src = i % 2 ? (const void *)zinc_engine_grad_by_name(d->eng, name, NULL)
                    : (const void *)zinc_engine_param_by_name(d->eng, name, NULL);
    } else {
        src = i == 2 * (size_t)d->n_names ? d->tok : i == 2 * (size_t)d->n_names + 1 ? d->tgt : d->pos;
    }
    memcpy(dst, (const char *)src + offset, n);
    return ZINC_OK;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double unif(void) /* [-1, 1) */
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}

int main(int argc, char **argv)
{
    zinc_comm *w = NULL;
    if (zinc_comm_init_world("mpi", &argc, &argv, &w) != ZINC_OK || argc < 3 || argc > 4 ||
        (argc == 4 && strcmp(argv[3], "docs"))) {
        fprintf(stderr, "usage: prog_llama_dump CONFIG.json OUT.safetensors [docs]\n");
        return 2;
    }
    const int docs = argc == 4;
    zinc_config c;
    zinc_model *m = NULL;
    zinc_engine *e = NULL;
    int rc = 1;
    if (zinc_config_load(argv[1], NULL, 0, &c) != ZINC_OK ||
        (c.model.from_pretrained[0] && zinc_model_pretrained_config(&c) != ZINC_OK) ||
        zinc_config_resolve(&c, 1) != ZINC_OK || zinc_model_create(&c, &m) != ZINC_OK) {
        fprintf(stderr, "prog_llama_dump: %s\n", zinc_last_error());
        goto done;
    }
    zinc_engine_opts o = {.config = &c, .world = w, .model = zinc_model_def_of(m)};
    if (zinc_engine_create(&o, &e) != ZINC_OK) {
        fprintf(stderr, "prog_llama_dump: %s\n", zinc_last_error());
        goto done;
    }
    /* the parameters' names, as Hugging Face spells them */
    static const char *const block[] = {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                        "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                        "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                        "mlp.down_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.bias",
                                        "self_attn.v_proj.bias"};
    const int L = (int)c.model.n_layer, per = c.model.attention_bias ? 12 : 9;
    dump d = {.eng = e, .names = calloc((size_t)L * 12 + 3, sizeof *d.names)};
    snprintf(d.names[d.n_names++], 128, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++)
        for (int k = 0; k < per; k++) snprintf(d.names[d.n_names++], 128, "model.layers.%d.%s", l, block[k]);
    snprintf(d.names[d.n_names++], 128, "model.norm.weight");
    if (!c.model.tie_word_embeddings) snprintf(d.names[d.n_names++], 128, "lm_head.weight");
    /* seeded values: weights U(-0.2, 0.2) (so the attention is not uniform), norms 1 +- 0.3,
     * biases +- 0.3; or model.init_from's (a model folder: model.from_pretrained) */
    if (c.model.init_from[0] && zinc_engine_init_from(e, c.model.init_from) != ZINC_OK) {
        fprintf(stderr, "prog_llama_dump: %s\n", zinc_last_error());
        goto done;
    }
    for (int i = 0; i < d.n_names; i++) {
        int64_t n = 0;
        float *p = zinc_engine_param_by_name(e, d.names[i], &n);
        if (!p) {
            fprintf(stderr, "prog_llama_dump: no parameter %s\n", d.names[i]);
            goto done;
        }
        const int norm = strstr(d.names[i], "norm") != NULL, bias = strstr(d.names[i], ".bias") != NULL;
        for (int64_t j = 0; !c.model.init_from[0] && j < n; j++)
            p[j] = (float)(norm ? 1.0 + 0.3 * unif() : bias ? 0.3 * unif() : 0.2 * unif());
    }
    const int B = (int)c.train_micro_batch_size_per_gpu, T = (int)zinc_config_seq_len(&c);
    const int V = (int)c.model.vocab_size;
    int32_t *tok = malloc((size_t)B * T * sizeof *tok), *tgt = malloc((size_t)B * T * sizeof *tgt);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)((unif() + 1) * 0.5 * V) % V;
        tgt[i] = (int32_t)((unif() + 1) * 0.5 * V) % V;
    }
    int32_t *pos = NULL;
    if (docs) { /* documents of 1 .. T/2 tokens back to back; row starts restart too */
        pos = malloc((size_t)B * T * sizeof *pos);
        int left = 0, p = 0;
        for (int i = 0; i < B * T; i++) {
            if (i % T == 0 || left == 0) p = 0;
            if (left == 0) left = 1 + (int)((unif() + 1) * 0.5 * (T / 2)) % (T / 2);
            pos[i] = p++;
            left--;
        }
        for (int i = 0; i < B * T; i++) {
            const int next_starts = i % T == T - 1 || pos[i + 1] == 0;
            if ((next_starts && i % T != T - 1) || unif() < -0.5) tgt[i] = -1;
        }
    }
    double loss;
    if (zinc_engine_loss_and_grad_docs(e, tok, tgt, pos, &loss) != ZINC_OK) {
        fprintf(stderr, "prog_llama_dump: %s\n", zinc_last_error());
        goto done;
    }
    d.tok = tok, d.tgt = tgt, d.pos = pos;
    const size_t nt = 2 * (size_t)d.n_names + 2 + (docs ? 1 : 0);
    zinc_st_entry *t = calloc(nt, sizeof *t);
    for (int i = 0; i < d.n_names; i++) {
        int64_t n = 0;
        zinc_engine_param_by_name(e, d.names[i], &n);
        for (int k = 0; k < 2; k++) {
            zinc_st_entry *x = &t[2 * i + k];
            snprintf(x->name, sizeof x->name, "%s.%s", k ? "g" : "p", d.names[i]);
            x->dtype = ZINC_DTYPE_F32, x->ndim = 1, x->shape[0] = n; /* the reader knows the shapes */
        }
    }
    const size_t t0 = 2 * (size_t)d.n_names;
    snprintf(t[t0].name, sizeof t[t0].name, "tokens");
    snprintf(t[t0 + 1].name, sizeof t[t0 + 1].name, "targets");
    if (docs) snprintf(t[t0 + 2].name, sizeof t[t0 + 2].name, "pos");
    for (size_t k = t0; k < nt; k++) t[k].dtype = ZINC_DTYPE_I32, t[k].ndim = 2, t[k].shape[0] = B, t[k].shape[1] = T;
    char ls[64];
    snprintf(ls, sizeof ls, "%.17g", loss);
    const char *meta[] = {"loss", ls};
    if (zinc_st_write(argv[2], t, nt, source, &d, meta, 1) != ZINC_OK) {
        fprintf(stderr, "prog_llama_dump: %s\n", zinc_last_error());
        goto done;
    }
    printf("loss %.9g, %d tensors\n", loss, d.n_names);
    rc = 0;
    free(t), free(tok), free(tgt), free(pos), free(d.names);
done:
    zinc_engine_destroy(e);
    zinc_model_destroy(m);
    zinc_comm_destroy(w);
    return rc;
}
