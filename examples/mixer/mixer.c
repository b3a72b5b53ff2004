/* mixer.c - a model zinc does not ship, trained by the installed engine: a causal
 * MLP-Mixer language model (token mixing by a learned lower-triangular T x T matrix per
 * block instead of attention, then a channel MLP), its layers written here against
 * <zinc/engine.h> only, its data supplied by a callback instead of a zinc token shard.
 *
 *   cc mixer.c $(pkg-config --cflags --libs zinc) -o mixer
 *   zinc-run -n 2 ./mixer mixer.json [--set key=value]...
 *
 * The config is zinc's (DeepSpeed's keys: batch sizes, optimizer, scheduler,
 * zero_optimization, train.max_steps / save_dir / save_every / resume); the model's sizes
 * come from model.vocab_size, model.n_embd, model.n_layer and model.block_size. The task: row k
 * counts through the first 32 ids with a stride and start drawn from k, so the next token
 * follows from the ones before it. Host devices, fp32 (device "cpu").
 *
 * Rank 0 prints "step N loss L" per step: the same numbers at every DP size and ZeRO stage,
 * and after a resume. See README.md for the walk through the layer API.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zinc/aio.h>
#include <zinc/comm.h>
#include <zinc/config.h>
#include <zinc/data.h>
#include <zinc/engine.h>
#include <zinc/status.h>

/* ------------------------------------------------------------- the layers --- */

typedef struct mixer_dims {
    int V, C, F, T; /* vocabulary, channels, MLP width, sequence length */
    int masked;     /* --masked: no loss at positions where (sample + t) % 5 == 0 */
} mixer_dims;

static zinc_status need_fp32(const zinc_ctx *c)
{
    if (c->ops->act != ZINC_DTYPE_F32)
        return zinc_error(ZINC_ERR_UNSUPPORTED, "mixer: fp32 activations only (turn bf16/fp16 off)");
    return ZINC_OK;
}

/* layer 0: token embedding E (V, C) plus position embedding P (T, C) */
static zinc_status embed_declare(zinc_layer *l)
{
    const mixer_dims *d = zinc_layer_state(l);
    int64_t e[2] = {d->V, d->C}, p[2] = {d->T, d->C};
    if (zinc_layer_param_add(l, "tok", 2, e, -1, ZINC_INIT_NORMAL, 0.1f) < 0) return ZINC_ERR_INVALID_ARG;
    if (zinc_layer_param_add(l, "pos", 2, p, -1, ZINC_INIT_NORMAL, 0.1f) < 0) return ZINC_ERR_INVALID_ARG;
    zinc_layer_set_out(l, d->C);
    return ZINC_OK;
}

static size_t no_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    (void)l, (void)B, (void)T, (void)act;
    return 0;
}

static zinc_status embed_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    const mixer_dims *d = zinc_layer_state(l);
    zinc_status st = need_fp32(c);
    if (st != ZINC_OK) return st;
    const int32_t *tok = x;
    const float *E = zinc_layer_param(l, 0), *P = zinc_layer_param(l, 1);
    float *out = y;
    for (int i = 0; i < c->B * c->T; i++)
        for (int k = 0; k < d->C; k++) out[(size_t)i * d->C + k] = E[(size_t)tok[i] * d->C + k] + P[(i % c->T) * d->C + k];
    return ZINC_OK;
}

static zinc_status embed_backward(zinc_layer *l, zinc_ctx *c, const void *x, const void *dy, void *dx)
{
    const mixer_dims *d = zinc_layer_state(l);
    (void)dx; /* layer 0 has no input gradient */
    const int32_t *tok = x;
    const float *g = dy;
    float *dE = zinc_layer_grad(l, 0), *dP = zinc_layer_grad(l, 1);
    for (int i = 0; i < c->B * c->T; i++)
        for (int k = 0; k < d->C; k++) {
            dE[(size_t)tok[i] * d->C + k] += g[(size_t)i * d->C + k];
            dP[(i % c->T) * d->C + k] += g[(size_t)i * d->C + k];
        }
    return ZINC_OK;
}

/* a mixer block: z = x + M x along time (M lower-triangular: causal), then
 * y = z + W2 relu(W1 z + b1) + b2 along channels. Saves z and u = W1 z + b1. */
enum { P_MIX, P_W1, P_B1, P_W2, P_B2 };

static zinc_status block_declare(zinc_layer *l)
{
    const mixer_dims *d = zinc_layer_state(l);
    int64_t m[2] = {d->T, d->T}, w1[2] = {d->F, d->C}, b1[1] = {d->F}, w2[2] = {d->C, d->F}, b2[1] = {d->C};
    if (zinc_layer_param_add(l, "mix", 2, m, -1, ZINC_INIT_NORMAL, 0.05f) < 0 ||
        zinc_layer_param_add(l, "fc1.weight", 2, w1, -1, ZINC_INIT_NORMAL, 0.1f) < 0 ||
        zinc_layer_param_add(l, "fc1.bias", 1, b1, -1, ZINC_INIT_ZEROS, 0) < 0 ||
        zinc_layer_param_add(l, "fc2.weight", 2, w2, -1, ZINC_INIT_NORMAL, 0.1f) < 0 ||
        zinc_layer_param_add(l, "fc2.bias", 1, b2, -1, ZINC_INIT_ZEROS, 0) < 0)
        return ZINC_ERR_INVALID_ARG;
    return ZINC_OK; /* output width = input width */
}

static size_t block_act_bytes(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const mixer_dims *d = zinc_layer_state(l);
    (void)act;
    return (size_t)B * T * (d->C + d->F) * sizeof(float);
}

static zinc_status block_forward(zinc_layer *l, zinc_ctx *c, const void *xv, void *yv)
{
    const mixer_dims *d = zinc_layer_state(l);
    zinc_status st = need_fp32(c);
    if (st != ZINC_OK) return st;
    const int T = c->T, C = d->C, F = d->F;
    const float *x = xv, *M = zinc_layer_param(l, P_MIX), *W1 = zinc_layer_param(l, P_W1),
                *b1 = zinc_layer_param(l, P_B1), *W2 = zinc_layer_param(l, P_W2), *b2 = zinc_layer_param(l, P_B2);
    float *z = zinc_layer_acts(l), *u = z + (size_t)c->B * T * C, *y = yv;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < T; t++) {
            float *zt = z + ((size_t)b * T + t) * C;
            memcpy(zt, x + ((size_t)b * T + t) * C, C * sizeof *zt);
            for (int s = 0; s <= t; s++)
                for (int k = 0; k < C; k++) zt[k] += M[t * T + s] * x[((size_t)b * T + s) * C + k];
        }
    for (size_t i = 0; i < (size_t)c->B * T; i++) {
        const float *zi = z + i * C;
        float *ui = u + i * F, *yi = y + i * C;
        for (int f = 0; f < F; f++) {
            float a = b1[f];
            for (int k = 0; k < C; k++) a += W1[f * C + k] * zi[k];
            ui[f] = a;
        }
        for (int k = 0; k < C; k++) {
            float a = zi[k] + b2[k];
            for (int f = 0; f < F; f++) a += W2[k * F + f] * (ui[f] > 0 ? ui[f] : 0);
            yi[k] = a;
        }
    }
    return ZINC_OK;
}

static zinc_status block_backward(zinc_layer *l, zinc_ctx *c, const void *xv, const void *dyv, void *dxv)
{
    const mixer_dims *d = zinc_layer_state(l);
    const int T = c->T, C = d->C, F = d->F;
    const float *x = xv, *dy = dyv, *M = zinc_layer_param(l, P_MIX), *W1 = zinc_layer_param(l, P_W1),
                *W2 = zinc_layer_param(l, P_W2);
    float *dM = zinc_layer_grad(l, P_MIX), *dW1 = zinc_layer_grad(l, P_W1), *db1 = zinc_layer_grad(l, P_B1),
          *dW2 = zinc_layer_grad(l, P_W2), *db2 = zinc_layer_grad(l, P_B2), *dx = dxv;
    const float *z = zinc_layer_acts(l), *u = z + (size_t)c->B * T * C;
    float *dz = malloc((size_t)c->B * T * C * sizeof *dz), *du = malloc((size_t)F * sizeof *du);
    if (!dz || !du) {
        free(dz);
        free(du);
        return zinc_error(ZINC_ERR_NOMEM, "mixer block backward");
    }
    for (size_t i = 0; i < (size_t)c->B * T; i++) { /* the channel MLP */
        const float *zi = z + i * C, *ui = u + i * F, *g = dy + i * C;
        float *dzi = dz + i * C;
        for (int k = 0; k < C; k++) {
            dzi[k] = g[k];
            db2[k] += g[k];
            for (int f = 0; f < F; f++) dW2[k * F + f] += g[k] * (ui[f] > 0 ? ui[f] : 0);
        }
        for (int f = 0; f < F; f++) {
            float a = 0;
            for (int k = 0; k < C; k++) a += W2[k * F + f] * g[k];
            du[f] = ui[f] > 0 ? a : 0;
            db1[f] += du[f];
            for (int k = 0; k < C; k++) {
                dW1[f * C + k] += du[f] * zi[k];
                dzi[k] += W1[f * C + k] * du[f];
            }
        }
    }
    for (int b = 0; b < c->B; b++) /* the token mixing: z_t = x_t + sum_{s<=t} M[t,s] x_s */
        for (int t = 0; t < T; t++) {
            const float *g = dz + ((size_t)b * T + t) * C;
            float *dxt = dx + ((size_t)b * T + t) * C;
            for (int k = 0; k < C; k++) dxt[k] += g[k];
            for (int s = 0; s <= t; s++) {
                const float *xs = x + ((size_t)b * T + s) * C;
                float *dxs = dx + ((size_t)b * T + s) * C, a = 0;
                for (int k = 0; k < C; k++) {
                    a += g[k] * xs[k];
                    dxs[k] += M[t * T + s] * g[k];
                }
                dM[t * T + s] += a;
            }
        }
    free(dz);
    free(du);
    return ZINC_OK;
}

/* the loss layer: logits = H x (H: V x C), softmax cross-entropy against ctx->targets
 * (-1: no loss); adds the summed loss to ctx->loss_sum, gradients scaled by ctx->dloss */
static zinc_status head_declare(zinc_layer *l)
{
    const mixer_dims *d = zinc_layer_state(l);
    int64_t h[2] = {d->V, d->C};
    return zinc_layer_param_add(l, "weight", 2, h, -1, ZINC_INIT_NORMAL, 0.1f) < 0 ? ZINC_ERR_INVALID_ARG : ZINC_OK;
}

static size_t head_scratch(const zinc_layer *l, int B, int T, zinc_dtype act)
{
    const mixer_dims *d = zinc_layer_state(l);
    (void)B, (void)T, (void)act;
    return (size_t)d->V * sizeof(float);
}

/* p = softmax(H x_i) in c->scratch; returns the loss of target t (t >= 0) */
static double head_probs(const mixer_dims *d, const float *H, const float *xi, int32_t t, float *p)
{
    float mx = -INFINITY;
    for (int v = 0; v < d->V; v++) {
        float a = 0;
        for (int k = 0; k < d->C; k++) a += H[v * d->C + k] * xi[k];
        p[v] = a;
        mx = a > mx ? a : mx;
    }
    double sum = 0;
    for (int v = 0; v < d->V; v++) sum += exp((double)p[v] - mx);
    for (int v = 0; v < d->V; v++) p[v] = (float)(exp((double)p[v] - mx) / sum);
    return t >= 0 ? -log((double)p[t] > 1e-30 ? (double)p[t] : 1e-30) : 0;
}

static zinc_status head_forward(zinc_layer *l, zinc_ctx *c, const void *x, void *y)
{
    const mixer_dims *d = zinc_layer_state(l);
    (void)y;
    const float *H = zinc_layer_param(l, 0);
    for (int i = 0; i < c->B * c->T; i++)
        if (c->targets[i] >= 0)
            c->loss_sum += head_probs(d, H, (const float *)x + (size_t)i * d->C, c->targets[i], c->scratch);
    return ZINC_OK;
}

static zinc_status head_backward(zinc_layer *l, zinc_ctx *c, const void *xv, const void *dy, void *dxv)
{
    const mixer_dims *d = zinc_layer_state(l);
    (void)dy;
    const float *H = zinc_layer_param(l, 0), *x = xv;
    float *dH = zinc_layer_grad(l, 0), *dx = dxv, *p = c->scratch;
    for (int i = 0; i < c->B * c->T; i++) {
        const int32_t t = c->targets[i];
        if (t < 0) continue;
        const float *xi = x + (size_t)i * d->C;
        float *dxi = dx + (size_t)i * d->C;
        head_probs(d, H, xi, t, p);
        for (int v = 0; v < d->V; v++) {
            const float g = (p[v] - (v == t)) * c->dloss;
            for (int k = 0; k < d->C; k++) {
                dH[v * d->C + k] += g * xi[k];
                dxi[k] += g * H[v * d->C + k];
            }
        }
    }
    return ZINC_OK;
}

static const zinc_layer_ops embed_ops = {"mixer_embed", embed_declare, no_bytes, no_bytes, embed_forward,
                                         embed_backward};
static const zinc_layer_ops block_ops = {"mixer_block", block_declare, block_act_bytes, no_bytes, block_forward,
                                         block_backward};
static const zinc_layer_ops head_ops = {"mixer_head", head_declare, no_bytes, head_scratch, head_forward,
                                        head_backward};

/* --------------------------------------------------------------- the data --- */

/* Row k: token t = (start + stride * t) mod COUNT_MOD (the first ids of the vocabulary),
 * start and stride from a hash of k; the target of t is token t+1. A pure function of k,
 * as zinc_batch_source asks. */
#define COUNT_MOD 32
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static zinc_status counting_rows(void *user, uint64_t first, int n, int T, int32_t *inputs, int32_t *targets)
{
    const mixer_dims *d = user;
    for (int b = 0; b < n; b++) {
        uint64_t h = mix64(first + (uint64_t)b + 1);
        const int m = d->V < COUNT_MOD ? d->V : COUNT_MOD;
        int start = (int)(h % (uint64_t)m), stride = 1 + (int)((h >> 32) % 3);
        for (int t = 0; t < T; t++) {
            inputs[(size_t)b * T + t] = (start + stride * t) % m;
            targets[(size_t)b * T + t] = (start + stride * (t + 1)) % m;
            if (d->masked && (first + (uint64_t)b + (uint64_t)t) % 5 == 0) targets[(size_t)b * T + t] = -1;
        }
    }
    return ZINC_OK;
}

/* ----------------------------------------------------------------- driver --- */

#define MAX_SET 64

/* --gradcheck (one rank, zero_optimization.stage 0): the layers' gradients against central
 * finite differences of the loss at a few elements of every parameter; prints the worst
 * relative error and fails past 1e-2 (fp32). */
static int gradcheck(zinc_engine *eng, const mixer_dims *d, const zinc_layer_def *layers, int L)
{
    const int B = 2, T = d->T;
    int32_t *in = malloc(sizeof(int32_t) * 2 * (size_t)B * T), *tg = in + (size_t)B * T;
    if (!in || counting_rows((void *)d, 0, B, T, in, tg) != ZINC_OK) return 1;
    static const char *const names[][5] = {{"tok", "pos"}, {"mix", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"},
                                           {"weight"}};
    double loss, worst = 0;
    if (zinc_engine_loss_and_grad(eng, in, tg, &loss) != ZINC_OK) {
        fprintf(stderr, "mixer: %s\n", zinc_last_error());
        return 1;
    }
    for (int i = 0; i < L; i++) {
        const int kind = i == 0 ? 0 : i == L - 1 ? 2 : 1;
        for (int j = 0; j < 5 && names[kind][j]; j++) {
            char full[128];
            snprintf(full, sizeof full, "%s.%s", layers[i].name, names[kind][j]);
            int64_t n = 0;
            float *w = zinc_engine_param_by_name(eng, full, &n), *g = zinc_engine_grad_by_name(eng, full, &n);
            if (!w || !g) return 1;
            for (int t = 0; t < 3; t++) {
                const int64_t k = (int64_t)(mix64((uint64_t)(i * 5 + j) * 3 + (uint64_t)t) % (uint64_t)n);
                /* the engine keeps the gradients of the last call: take the analytic one first */
                zinc_engine_loss_and_grad(eng, in, tg, &loss);
                const double an = g[k], h = 1e-3, w0 = w[k];
                double lp, lm;
                w[k] = (float)(w0 + h);
                zinc_engine_loss_and_grad(eng, in, tg, &lp);
                w[k] = (float)(w0 - h);
                zinc_engine_loss_and_grad(eng, in, tg, &lm);
                w[k] = (float)w0;
                const double fd = (lp - lm) / (2 * h), err = fabs(fd - an) / fmax(fmax(fabs(fd), fabs(an)), 1e-3);
                if (getenv("MIXER_GC_VERBOSE")) printf("%s[%lld]: fd %.6g an %.6g\n", full, (long long)k, fd, an);
                if (err > worst) worst = err;
            }
        }
    }
    free(in);
    printf("gradcheck: worst relative error %.3g against finite differences\n", worst);
    return worst > 1e-2;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: mixer CONFIG.json [--set key=value]... [--gradcheck] [--masked]\n");
        return 2;
    }
    const char *sets[MAX_SET];
    int n_set = 0, check = 0, masked = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--set") && i + 1 < argc && n_set < MAX_SET) sets[n_set++] = argv[++i];
        else if (!strcmp(argv[i], "--gradcheck")) check = 1;
        else if (!strcmp(argv[i], "--masked")) masked = 1;
        else {
            fprintf(stderr, "mixer: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    zinc_config cfg;
    if (zinc_config_load(argv[1], sets, n_set, &cfg) != ZINC_OK) {
        fprintf(stderr, "mixer: %s\n", zinc_last_error());
        return 2;
    }
    zinc_comm *world = NULL;
    if (zinc_comm_init_world("mpi", &argc, &argv, &world) != ZINC_OK) {
        fprintf(stderr, "mixer: %s\n", zinc_last_error());
        return 1;
    }
    const int rank = zinc_comm_rank(world);
    int rc = 0;
    zinc_engine *eng = NULL;
    zinc_data *data = NULL;
    zinc_aio *aio = NULL; /* checkpoints write through the process's aio engine (the config's aio section) */
    zinc_status st = zinc_comm_agree(world, zinc_config_resolve(&cfg, zinc_comm_size(world)));
    mixer_dims dims = {(int)cfg.model.vocab_size, (int)cfg.model.n_embd, 2 * (int)cfg.model.n_embd,
                       (int)zinc_config_seq_len(&cfg), masked};

    /* the model: embedding, n_layer mixer blocks, the loss layer */
    int L = (int)cfg.model.n_layer + 2;
    zinc_layer_def *layers = calloc((size_t)L, sizeof *layers);
    if (!layers) st = zinc_error(ZINC_ERR_NOMEM, "mixer: layers");
    for (int i = 0; st == ZINC_OK && i < L; i++) {
        layers[i].ops = i == 0 ? &embed_ops : i == L - 1 ? &head_ops : &block_ops;
        layers[i].state = &dims;
        if (i == 0) snprintf(layers[i].name, sizeof layers[i].name, "embed");
        else if (i == L - 1) snprintf(layers[i].name, sizeof layers[i].name, "head");
        else snprintf(layers[i].name, sizeof layers[i].name, "blocks.%d", i - 1);
    }
    /* training FLOPs per token for the step line: 6 x the parameters of the products */
    const double n_mm = (double)cfg.model.n_layer * (2.0 * dims.C * dims.F + dims.T / 2.0) + (double)dims.V * dims.C;
    zinc_model_def model = {.layers = layers, .n_layers = L, .flops_per_token = 6 * n_mm};
    if (st == ZINC_OK) st = zinc_comm_agree(world, zinc_engine_aio_create(&cfg, &aio));
    zinc_engine_opts eo = {.config = &cfg, .world = world, .model = &model, .aio = aio};
    if (st == ZINC_OK) st = zinc_comm_agree(world, zinc_engine_create(&eo, &eng));
    if (st == ZINC_OK && strcmp(zinc_engine_device(eng)->name, "cpu") != 0)
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "mixer: its layers run on the host: set \"device\": \"cpu\"");
    /* the data: a callback, not a token shard */
    zinc_batch_source src = {.get = counting_rows, .n_samples = 1u << 20, .masked = dims.masked, .user = &dims};
    if (st == ZINC_OK) st = zinc_data_from_source(&src, dims.T, dims.V, &data);
    /* resume: train.resume names a checkpoint tag in train.save_dir ("auto": the latest) */
    if (st == ZINC_OK && cfg.train.resume[0])
        st = zinc_comm_agree(world, zinc_engine_load_checkpoint(eng, aio, cfg.train.save_dir,
                                                                strcmp(cfg.train.resume, "auto") ? cfg.train.resume : NULL));
    if (st != ZINC_OK) {
        if (rank == 0) fprintf(stderr, "mixer: %s\n", zinc_last_error());
        rc = st == ZINC_ERR_CONFIG || st == ZINC_ERR_INVALID_ARG || st == ZINC_ERR_UNSUPPORTED ? 2 : 1;
        goto done;
    }
    if (check) {
        rc = gradcheck(eng, &dims, layers, L);
        goto done;
    }
    if (rank == 0)
        printf("mixer: %lld parameters, %d layers, dp %d, ZeRO stage %d\n", (long long)zinc_engine_n_params(eng), L,
               zinc_engine_dp_size(eng), (int)cfg.zero.stage);
    for (int64_t step = zinc_engine_step(eng) + 1; step <= cfg.train.max_steps; step++) {
        zinc_step_stats s;
        st = zinc_engine_train_batch(eng, data, &s);
        if (st != ZINC_OK) {
            fprintf(stderr, "mixer: rank %d: step %lld: %s\n", rank, (long long)step, zinc_last_error());
            rc = 1;
            goto done;
        }
        if (rank == 0) printf("step %lld loss %.9g\n", (long long)step, s.loss);
        if (cfg.train.save_dir[0] && cfg.train.save_every > 0 && step % cfg.train.save_every == 0) {
            char tag[64];
            snprintf(tag, sizeof tag, "global_step%lld", (long long)step);
            st = zinc_comm_agree(world, zinc_engine_save_checkpoint(eng, aio, cfg.train.save_dir, tag, 0));
            if (st != ZINC_OK) {
                if (rank == 0) fprintf(stderr, "mixer: saving %s: %s\n", tag, zinc_last_error());
                rc = 1;
                goto done;
            }
        }
    }
done:
    zinc_data_close(data);
    zinc_engine_destroy(eng); /* before the aio engine */
    zinc_aio_destroy(aio);
    free(layers);
    zinc_comm_destroy(world);
    return rc;
}
