/* nn_cpu.c - transformer layer ops for the CPU table: embedding, layernorm,
 * causal self-attention and the fused softmax + cross-entropy loss (whole
 * rows, and split by vocabulary for tensor parallelism).
 *
 * The math follows llm.c's CPU reference; the loops are arranged so that
 * their inner dimension is contiguous and vectorizes. Parallel loops are
 * split so that no two threads ever write the same element: gradients that
 * several rows contribute to (embedding tables, layernorm weight and bias)
 * are reduced per column block, rows in order, which keeps every result
 * bitwise identical for any thread count. Attention is flash style: it
 * never holds a (T, T) matrix (forward saves one log-sum-exp per query row,
 * backward recomputes the probabilities from it); scores go through C
 * loops, which beat per-head sgemm calls at T = HS = 64. */
#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "zinc/ops.h"
#include "cpu_int.h"

#define LN_EPS 1e-5f

/* Where vocabulary index g (a token, a target) stands in the slice
 * [v0, v0+V) of a vocabulary split across ranks: g - v0, or -1 when the
 * slice does not hold it. */
static inline int64_t vp_index(int32_t g, int v0, int V)
{
    const int64_t r = (int64_t)g - v0;
    return r >= 0 && r < V ? r : -1;
}

/* out(B,T,C) = wte[tokens[b,t] - v0] (0 outside [v0, v0+V)) + wpe[pos ? pos[b,t] : t]
 * (wpe may be NULL). With both present the sum is the one the whole-table
 * op always made. */
void cpu_embedding_forward(float *out, const int32_t *tokens, const int32_t *pos, const float *wte,
                           const float *wpe, int B, int T, int C, int v0, int V)
{
    assert(out && tokens && wte && B >= 0 && T >= 0 && C > 0 && v0 >= 0 && V > 0);
    const int BT = B * T;
    #pragma omp parallel for schedule(static) if ((size_t)BT * C >= CPU_PAR_MIN)
    for (int bt = 0; bt < BT; bt++) {
        assert(tokens[bt] >= 0);
        const int64_t r = vp_index(tokens[bt], v0, V);
        const float *restrict e = r >= 0 ? wte + (size_t)r * C : NULL;
        const float *restrict p = wpe ? wpe + (size_t)(pos ? pos[bt] : bt % T) * C : NULL;
        float *restrict o = out + (size_t)bt * C;
        if (e && p) {
            for (int c = 0; c < C; c++)
                o[c] = e[c] + p[c];
        } else if (e || p) {
            memcpy(o, e ? e : p, (size_t)C * sizeof *o);
        } else {
            memset(o, 0, (size_t)C * sizeof *o);
        }
    }
}

/* dwte(V,C) += scatter of dout(B,T,C) by token (tokens in [v0, v0+V));
 * dwpe(T,C) += sum_b dout[b] unless dwpe is NULL (with pos: the scatter of dout by
 * position). dwte, and dwpe with pos, are split by column blocks (each block walks all
 * rows in order, so repeated tokens or positions never race), dwpe without pos by
 * time step. */
void cpu_embedding_backward(float *dwte, float *dwpe, const float *dout,
                            const int32_t *tokens, const int32_t *pos, int B, int T, int C, int v0, int V)
{
    enum { BLK = 64 };
    assert(dout && tokens && B >= 0 && T >= 0 && C > 0 && v0 >= 0 && V > 0);
    const int BT = B * T;
    const int nblk = (C + BLK - 1) / BLK;
    const int nt = dwpe && !pos ? T : 0;
    #pragma omp parallel if ((size_t)BT * C >= CPU_PAR_MIN)
    {
        #pragma omp for schedule(static) nowait
        for (int bi = 0; bi < nblk; bi++) {
            const int c0 = bi * BLK;
            const int cw = C - c0 < BLK ? C - c0 : BLK;
            for (int bt = 0; dwte && bt < BT; bt++) {
                const int64_t r = vp_index(tokens[bt], v0, V);
                if (r < 0)
                    continue;
                float *restrict dst = dwte + (size_t)r * C + c0;
                const float *restrict src = dout + (size_t)bt * C + c0;
                #pragma omp simd
                for (int c = 0; c < cw; c++)
                    dst[c] += src[c];
            }
            if (dwpe && pos)
                for (int bt = 0; bt < BT; bt++) {
                    float *restrict dst = dwpe + (size_t)pos[bt] * C + c0;
                    const float *restrict src = dout + (size_t)bt * C + c0;
                    #pragma omp simd
                    for (int c = 0; c < cw; c++)
                        dst[c] += src[c];
                }
        }
        #pragma omp for schedule(static)
        for (int t = 0; t < nt; t++) {
            float *restrict dst = dwpe + (size_t)t * C;
            for (int b = 0; b < B; b++) {
                const float *restrict src = dout + ((size_t)b * T + t) * C;
                #pragma omp simd
                for (int c = 0; c < C; c++)
                    dst[c] += src[c];
            }
        }
    }
}

/* out(N,C) = (inp - mean) * rstd * weight + bias; mean(N), rstd(N) saved.
 * Two-pass variance (mean first), as the one-pass form loses digits. */
void cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                           const float *weight, const float *bias, int N, int C)
{
    assert(out && mean && rstd && inp && weight && bias && N >= 0 && C > 0);
    const float inv_c = 1.0f / (float)C;
    #pragma omp parallel for schedule(static) if ((size_t)N * C >= CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *restrict x = inp + (size_t)i * C;
        float *restrict o = out + (size_t)i * C;
        float s = 0.0f;
        #pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++)
            s += x[c];
        const float m = s * inv_c;
        float v = 0.0f;
        #pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) {
            const float d = x[c] - m;
            v += d * d;
        }
        const float rs = 1.0f / sqrtf(v * inv_c + LN_EPS);
        #pragma omp simd
        for (int c = 0; c < C; c++)
            o[c] = (x[c] - m) * rs * weight[c] + bias[c];
        mean[i] = m;
        rstd[i] = rs;
    }
}

/* dinp(N,C), dweight(C), dbias(C) accumulate. With norm = (x - mean) rstd
 * and dnorm = weight * dout:
 *   dinp += rstd (dnorm - mean_c(dnorm) - norm mean_c(dnorm norm))
 *   dweight += sum_rows norm dout;  dbias += sum_rows dout
 * Rows are split across threads for dinp, column blocks for the weight and
 * bias gradients (which recompute norm: cheaper than storing it). */
void cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const float *mean,
                            const float *rstd, int N, int C)
{
    enum { BLK = CPU_NORM_BLK };
    assert(dinp && dout && inp && weight && mean && rstd);
    assert(N >= 0 && C > 0);
    const float inv_c = 1.0f / (float)C;
    const int nblk = (C + BLK - 1) / BLK;
    #pragma omp parallel if ((size_t)N * C >= CPU_PAR_MIN)
    {
        #pragma omp for schedule(static) nowait
        for (int i = 0; i < N; i++) {
            const float *restrict x = inp + (size_t)i * C;
            const float *restrict dy = dout + (size_t)i * C;
            float *restrict dx = dinp + (size_t)i * C;
            const float m = mean[i], rs = rstd[i];
            float s1 = 0.0f, s2 = 0.0f;
            #pragma omp simd reduction(+ : s1, s2)
            for (int c = 0; c < C; c++) {
                const float dn = weight[c] * dy[c];
                s1 += dn;
                s2 += dn * (x[c] - m) * rs;
            }
            const float dn_mean = s1 * inv_c, dnn_mean = s2 * inv_c;
            #pragma omp simd
            for (int c = 0; c < C; c++) {
                const float norm = (x[c] - m) * rs;
                dx[c] += (weight[c] * dy[c] - dn_mean - norm * dnn_mean) * rs;
            }
        }
        #pragma omp for schedule(static)
        for (int bi = 0; bi < (dweight || dbias ? nblk : 0); bi++)
            cpu_norm_param_grads(dweight, dbias, dout, inp, mean, rstd, N, C, bi * CPU_NORM_BLK);
    }
}

void cpu_norm_param_grads(float *dweight, float *dbias, const float *dout, const float *inp, const float *mean,
                          const float *rstd, int N, int C, int c0)
{
    const int cw = C - c0 < CPU_NORM_BLK ? C - c0 : CPU_NORM_BLK;
    float accw[CPU_NORM_BLK] = {0}, accb[CPU_NORM_BLK] = {0};
    for (int i = 0; i < N; i++) {
        const float *restrict x = inp + (size_t)i * C + c0;
        const float *restrict dy = dout + (size_t)i * C + c0;
        const float m = mean ? mean[i] : 0.0f, rs = rstd[i]; /* x - 0 is x: RMSNorm's bits */
        #pragma omp simd
        for (int c = 0; c < cw; c++) {
            accw[c] += (x[c] - m) * rs * dy[c];
            accb[c] += dy[c];
        }
    }
    if (dweight)
        for (int c = 0; c < cw; c++) dweight[c0 + c] += accw[c];
    if (dbias)
        for (int c = 0; c < cw; c++) dbias[c0 + c] += accb[c];
}

/* Keys scored at a time by the attention ops (a stack buffer per row). */
#define ATT_KB 64

/* Causal attention, flash style: no (T, T) matrix, with NKV key/value heads shared by
 * groups of NH / NKV query heads (grouped-query attention; NKV = NH is multi-head). Rows
 * of qkv are q (NH heads) | k (NKV) | v (NKV), each head HS wide; query head h reads
 * key/value head h / (NH / NKV). For each query row (b, h, t) the keys t2 <= t are taken
 * ATT_KB at a time: scores q_t . k_t2 / sqrt(HS), then an online softmax (running max mx,
 * running sum l; the output accumulator is rescaled by exp(old mx - new mx) when the max
 * grows), out_t = acc / l and lse_t = mx + log l. Rows are independent, and work per row
 * grows with t, so rows are dealt round-robin to threads. With pos (B,T) (documents
 * packed in a row) query t takes keys t - pos[b,t] .. t only. */
void cpu_attention_gqa_forward(float *out, float *lse, const float *qkv, const int32_t *pos, int B, int T, int NH,
                               int NKV, int HS)
{
    assert(out && lse && qkv && B >= 0 && T >= 0 && NH > 0 && NKV > 0 && NH % NKV == 0);
    assert(HS > 0 && HS <= ATT_MAX_HS);
    const size_t R = (size_t)(NH + 2 * NKV) * HS, C = (size_t)NH * HS;
    const int G = NH / NKV;
    const float scale = 1.0f / sqrtf((float)HS);
    const int n_rows = B * NH * T;
    #pragma omp parallel for schedule(static, 1) if ((size_t)n_rows * T * HS >= CPU_PAR_MIN)
    for (int r = 0; r < n_rows; r++) {
        const int t = r % T, h = (r / T) % NH, b = r / (T * NH);
        const float *restrict q = qkv + ((size_t)b * T + t) * R + (size_t)h * HS;
        const float *restrict kbase = qkv + (size_t)b * T * R + C + (size_t)(h / G) * HS;
        const float *restrict vbase = kbase + (size_t)NKV * HS;
        float acc[ATT_MAX_HS], s[ATT_KB];
        float mx = -INFINITY, l = 0.0f;
        for (int i = 0; i < HS; i++)
            acc[i] = 0.0f;
        for (int k0 = pos ? t - pos[b * T + t] : 0; k0 <= t; k0 += ATT_KB) {
            const int kn = t + 1 - k0 < ATT_KB ? t + 1 - k0 : ATT_KB;
            float bm = -INFINITY;
            for (int j = 0; j < kn; j++) {
                const float *restrict k = kbase + (size_t)(k0 + j) * R;
                float d = 0.0f;
                #pragma omp simd reduction(+ : d)
                for (int i = 0; i < HS; i++)
                    d += q[i] * k[i];
                s[j] = d * scale;
                bm = s[j] > bm ? s[j] : bm;
            }
            if (bm > mx) { /* rescale what the earlier blocks summed */
                const float f = cpu_expf(mx - bm); /* 0 on the first block */
                l *= f;
                #pragma omp simd
                for (int i = 0; i < HS; i++)
                    acc[i] *= f;
                mx = bm;
            }
            float bs = 0.0f;
            #pragma omp simd reduction(+ : bs)
            for (int j = 0; j < kn; j++) {
                s[j] = cpu_expf(s[j] - mx);
                bs += s[j];
            }
            l += bs;
            for (int j = 0; j < kn; j++) {
                const float *restrict v = vbase + (size_t)(k0 + j) * R;
                const float p = s[j];
                #pragma omp simd
                for (int i = 0; i < HS; i++)
                    acc[i] += p * v[i];
            }
        }
        const float inv = 1.0f / l;
        float *restrict o = out + ((size_t)b * T + t) * C + (size_t)h * HS;
        for (int i = 0; i < HS; i++)
            o[i] = acc[i] * inv;
        lse[r] = mx + logf(l); /* r = (b NH + h) T + t: lse is (B,NH,T) */
    }
}

void cpu_attention_forward(float *out, float *lse, const float *qkv, int B, int T, int C, int NH)
{
    assert(NH > 0 && C % NH == 0);
    cpu_attention_gqa_forward(out, lse, qkv, NULL, B, T, NH, NH, C / NH);
}

/* Floats of scratch cpu_attention_backward needs: D, one per query row. */
size_t cpu_attention_scratch_floats(int B, int T, int C, int NH)
{
    (void)C;
    return (size_t)B * NH * T;
}

/* Backward of cpu_attention_gqa_forward; dqkv accumulates. Probabilities are
 * recomputed from lse, p = exp(s - lse_t), and with D_t = dout_t . out_t
 * (= sum_t2 p dp, kept in scratch (B,NH,T)) the score gradient is
 *   ds = p (dp - D_t) scale,  dp = dout_t . v_t2.
 * k_t2 and v_t2 of a key/value head get gradient from every t >= t2 of every query head
 * of its group, so threads own whole (b, key/value head) pairs and walk the group's
 * query heads and t in order (race-free, and bitwise the same for any thread count;
 * with NKV = NH the order of the multi-head op). */
void cpu_attention_gqa_backward(float *dqkv, float *scratch, const float *dout, const float *qkv, const float *out,
                                const float *lse, const int32_t *pos, int B, int T, int NH, int NKV, int HS)
{
    assert(dqkv && scratch && dout && qkv && out && lse && B >= 0 && T >= 0);
    assert(NH > 0 && NKV > 0 && NH % NKV == 0 && HS > 0);
    const size_t R = (size_t)(NH + 2 * NKV) * HS, C = (size_t)NH * HS, KV = (size_t)NKV * HS;
    const int G = NH / NKV;
    const float scale = 1.0f / sqrtf((float)HS);
    const int n_groups = B * NKV;
    #pragma omp parallel for schedule(static, 1) if ((size_t)B * NH * T * T * HS >= CPU_PAR_MIN)
    for (int bg = 0; bg < n_groups; bg++) {
        const int b = bg / NKV, g = bg % NKV;
        const size_t koff = (size_t)b * T * R + C + (size_t)g * HS;
        for (int h = g * G; h < (g + 1) * G; h++) {
            const int bh = b * NH + h;
            const size_t qoff = (size_t)b * T * R + (size_t)h * HS;
            const size_t ooff = (size_t)b * T * C + (size_t)h * HS;
            float *restrict D = scratch + (size_t)bh * T;
            for (int t = 0; t < T; t++) {
                const float *restrict dy = dout + ooff + (size_t)t * C;
                const float *restrict o = out + ooff + (size_t)t * C;
                float d = 0.0f;
                #pragma omp simd reduction(+ : d)
                for (int i = 0; i < HS; i++)
                    d += dy[i] * o[i];
                D[t] = d;
            }
            for (int t = 0; t < T; t++) {
                const float *restrict dy = dout + ooff + (size_t)t * C;
                const float *restrict q = qkv + qoff + (size_t)t * R;
                float *restrict dq = dqkv + qoff + (size_t)t * R;
                const float lse_t = lse[(size_t)bh * T + t], D_t = D[t];
                for (int t2 = pos ? t - pos[b * T + t] : 0; t2 <= t; t2++) {
                    const float *restrict k = qkv + koff + (size_t)t2 * R;
                    const float *restrict v = k + KV;
                    float *restrict dk = dqkv + koff + (size_t)t2 * R;
                    float *restrict dv = dk + KV;
                    float sc = 0.0f;
                    #pragma omp simd reduction(+ : sc)
                    for (int i = 0; i < HS; i++)
                        sc += q[i] * k[i];
                    const float p = cpu_expf(sc * scale - lse_t);
                    float dp = 0.0f;
                    #pragma omp simd reduction(+ : dp)
                    for (int i = 0; i < HS; i++) {
                        dp += dy[i] * v[i];
                        dv[i] += p * dy[i];
                    }
                    const float ds = p * (dp - D_t) * scale;
                    #pragma omp simd
                    for (int i = 0; i < HS; i++) {
                        dq[i] += ds * k[i];
                        dk[i] += ds * q[i];
                    }
                }
            }
        }
    }
}

void cpu_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                            const float *out, const float *lse, int B, int T, int C, int NH)
{
    assert(NH > 0 && C % NH == 0);
    cpu_attention_gqa_backward(dqkv, scratch, dout, qkv, out, lse, NULL, B, T, NH, NH, C / NH);
}

/* The row steps of the softmax + cross-entropy ops. */

static inline float xent_row_max(const float *restrict x, int V)
{
    float mx = -INFINITY;
    #pragma omp simd reduction(max : mx)
    for (int j = 0; j < V; j++)
        mx = x[j] > mx ? x[j] : mx;
    return mx;
}

/* -log softmax[target] from the row's sum of exp(x - mx) and target logit xt. */
static inline float xent_row_loss(double sum, float mx, float xt)
{
    return (float)(log(sum) - ((double)xt - (double)mx));
}

/* x = exp(x - mx), in place. */
static inline void xent_row_exp(float *restrict x, float mx, int V)
{
    #pragma omp simd
    for (int j = 0; j < V; j++)
        x[j] = cpu_expf(x[j] - mx);
}

/* A row of e = exp(x - mx) becomes dloss * (e / sum - onehot(tl)), e
 * scaled by dloss / sum rounded to fp32; tl < 0: the row holds no target. */
static inline void xent_row_grad(float *restrict x, double sum, int64_t tl, float dloss, int V)
{
    const float f = (float)((double)dloss / sum);
    #pragma omp simd
    for (int j = 0; j < V; j++)
        x[j] *= f;
    if (tl >= 0)
        x[tl] -= dloss;
}

/* Fused softmax + cross-entropy over rows of logits(N,V), rows in
 * parallel. Per row: max; exp(x - max) stored in place and summed in
 * double (the sum sets every probability's error); loss = log(sum) - (x_t -
 * max); then the row becomes dloss * (p - onehot) with p = e * (1/sum). */
void cpu_softmax_xent(float *losses, float *logits, const int32_t *targets, float dloss,
                      int N, int V)
{
    assert(losses && logits && targets && N >= 0 && V > 0);
    #pragma omp parallel for schedule(static) if ((size_t)N * V >= CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *restrict x = logits + (size_t)i * V;
        const int tgt = targets[i];
        if (tgt < 0) {
            losses[i] = 0.0f;
            memset(x, 0, (size_t)V * sizeof *x);
            continue;
        }
        assert(tgt < V);
        const float xt = x[tgt];
        const float mx = xent_row_max(x, V);
        xent_row_exp(x, mx, V);
        double sum = 0.0;
        #pragma omp simd reduction(+ : sum)
        for (int j = 0; j < V; j++)
            sum += (double)x[j];
        losses[i] = xent_row_loss(sum, mx, xt);
        xent_row_grad(x, sum, tgt, dloss, V);
    }
}

/* The vocab-parallel form (zinc/ops.h): the same row steps, split at the
 * two all-reduces. On one rank the exps, the loss and the gradient are
 * those of cpu_softmax_xent but for the sum's rounding to fp32 between
 * xent_vp_sums and xent_vp_finish. */
void cpu_xent_vp_max(float *rowmax, const float *logits, int N, int V)
{
    assert(rowmax && logits && N >= 0 && V > 0);
    #pragma omp parallel for schedule(static) if ((size_t)N * V >= CPU_PAR_MIN)
    for (int i = 0; i < N; i++)
        rowmax[i] = xent_row_max(logits + (size_t)i * V, V);
}

/* sums(N,2): the row's sum of exp(x - rowmax) in double, rounded once;
 * the target's logit if this slice holds it, else 0. */
void cpu_xent_vp_sums(float *sums, const float *logits, const int32_t *targets,
                      const float *rowmax, int N, int V, int v0)
{
    assert(sums && logits && targets && rowmax && N >= 0 && V > 0 && v0 >= 0);
    #pragma omp parallel for schedule(static) if ((size_t)N * V >= CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *restrict x = logits + (size_t)i * V;
        if (targets[i] < 0) {
            sums[2 * i] = sums[2 * i + 1] = 0.0f;
            continue;
        }
        const float mx = rowmax[i];
        double sum = 0.0;
        #pragma omp simd reduction(+ : sum)
        for (int j = 0; j < V; j++)
            sum += (double)cpu_expf(x[j] - mx);
        const int64_t tl = vp_index(targets[i], v0, V);
        sums[2 * i] = (float)sum;
        sums[2 * i + 1] = tl >= 0 ? x[tl] : 0.0f;
    }
}

/* losses from the all-reduced rowmax and sums; the slice's columns of the
 * gradient in place. */
void cpu_xent_vp_finish(float *losses, float *logits, const int32_t *targets,
                        const float *rowmax, const float *sums, float dloss, int N, int V,
                        int v0)
{
    assert(losses && logits && targets && rowmax && sums && N >= 0 && V > 0 && v0 >= 0);
    #pragma omp parallel for schedule(static) if ((size_t)N * V >= CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *restrict x = logits + (size_t)i * V;
        if (targets[i] < 0) {
            losses[i] = 0.0f;
            memset(x, 0, (size_t)V * sizeof *x);
            continue;
        }
        const float mx = rowmax[i];
        const double sum = sums[2 * i];
        losses[i] = xent_row_loss(sum, mx, sums[2 * i + 1]);
        xent_row_exp(x, mx, V);
        xent_row_grad(x, sum, vp_index(targets[i], v0, V), dloss, V);
    }
}
