/* llama_cpu.c - the Llama-family layer ops for the CPU table: RMSNorm,
 * rotary position embeddings (Hugging Face's rotate-half pairing, with
 * Llama-3's rope_scaling), and SwiGLU; and the rotary tables.
 *
 * As in nn_cpu.c, rows are split across threads and the weight gradient of
 * RMSNorm is reduced per column block, rows in order, so every result is
 * bitwise the same for any thread count. */
#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "zinc/ops.h"
#include "cpu_int.h"

/* out(N,C) = inp * rstd * weight, rstd = 1 / sqrt(mean(inp^2) + eps). */
void cpu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, float eps, int N,
                         int C)
{
    assert(out && rstd && inp && weight && N >= 0 && C > 0);
    const float inv_c = 1.0f / (float)C;
    #pragma omp parallel for schedule(static) if ((size_t)N * C >= CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *restrict x = inp + (size_t)i * C;
        float *restrict o = out + (size_t)i * C;
        float s = 0.0f;
        #pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++)
            s += x[c] * x[c];
        const float rs = 1.0f / sqrtf(s * inv_c + eps);
        #pragma omp simd
        for (int c = 0; c < C; c++)
            o[c] = x[c] * rs * weight[c];
        rstd[i] = rs;
    }
}

/* With norm = x rstd and dnorm = weight * dout:
 *   dinp += rstd (dnorm - norm mean_c(dnorm norm));  dweight += sum_rows norm dout. */
void cpu_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          const float *rstd, int N, int C)
{
    enum { BLK = CPU_NORM_BLK };
    assert(dinp && dout && inp && weight && rstd && N >= 0 && C > 0);
    const float inv_c = 1.0f / (float)C;
    const int nblk = (C + BLK - 1) / BLK;
    #pragma omp parallel if ((size_t)N * C >= CPU_PAR_MIN)
    {
        #pragma omp for schedule(static) nowait
        for (int i = 0; i < N; i++) {
            const float *restrict x = inp + (size_t)i * C;
            const float *restrict dy = dout + (size_t)i * C;
            float *restrict dx = dinp + (size_t)i * C;
            const float rs = rstd[i];
            float s = 0.0f;
            #pragma omp simd reduction(+ : s)
            for (int c = 0; c < C; c++)
                s += weight[c] * dy[c] * x[c] * rs;
            const float m = s * inv_c;
            #pragma omp simd
            for (int c = 0; c < C; c++)
                dx[c] += (weight[c] * dy[c] - x[c] * rs * m) * rs;
        }
        #pragma omp for schedule(static)
        for (int bi = 0; bi < (dweight ? nblk : 0); bi++) /* LayerNorm's with mean 0 and no bias */
            cpu_norm_param_grads(dweight, NULL, dout, inp, NULL, rstd, N, C, bi * BLK);
    }
}

/* In place, each of the n_heads heads of HS elements at the start of each row:
 * (x_i, x_{i+H}) -> (x_i cos - x_{i+H} sin, x_{i+H} cos + x_i sin), H = HS/2, the angle's
 * cos and sin from row pos of the tables; dir -1 rotates back (sin negated). */
void cpu_rope(float *x, int N, int stride, int n_heads, int HS, int T, const int32_t *pos, const float *cos_t,
              const float *sin_t, int dir)
{
    assert(x && cos_t && sin_t && N >= 0 && n_heads >= 0 && HS > 0 && HS % 2 == 0 && T > 0);
    assert(stride >= n_heads * HS && (dir == 1 || dir == -1));
    const int H = HS / 2;
    const float sg = (float)dir;
    #pragma omp parallel for schedule(static) if ((size_t)N * n_heads * HS >= CPU_PAR_MIN)
    for (int r = 0; r < N; r++) {
        const int p = pos ? pos[r] : r % T;
        const float *restrict co = cos_t + (size_t)p * H, *restrict si = sin_t + (size_t)p * H;
        for (int h = 0; h < n_heads; h++) {
            float *restrict a = x + (size_t)r * stride + (size_t)h * HS, *restrict b = a + H;
            #pragma omp simd
            for (int i = 0; i < H; i++) {
                const float x1 = a[i], x2 = b[i], s = sg * si[i];
                a[i] = x1 * co[i] - x2 * s;
                b[i] = x2 * co[i] + x1 * s;
            }
        }
    }
}

/* out(N,F) = silu(gate) * up, gu(N,2F) = gate | up per row. */
void cpu_swiglu_forward(float *out, const float *gu, int N, int F)
{
    assert(out && gu && N >= 0 && F > 0);
    #pragma omp parallel for schedule(static) if ((size_t)N * F >= CPU_PAR_MIN)
    for (int r = 0; r < N; r++) {
        const float *restrict g = gu + (size_t)r * 2 * F, *restrict u = g + F;
        float *restrict o = out + (size_t)r * F;
        #pragma omp simd
        for (int i = 0; i < F; i++) {
            const float sg = 1.0f / (1.0f + expf(-g[i]));
            o[i] = g[i] * sg * u[i];
        }
    }
}

/* dgate += dout up silu'(gate), dup += dout silu(gate);
 * silu'(g) = s (1 + g (1 - s)), s = sigmoid(g). */
void cpu_swiglu_backward(float *dgu, const float *dout, const float *gu, int N, int F)
{
    assert(dgu && dout && gu && N >= 0 && F > 0);
    #pragma omp parallel for schedule(static) if ((size_t)N * F >= CPU_PAR_MIN)
    for (int r = 0; r < N; r++) {
        const float *restrict g = gu + (size_t)r * 2 * F, *restrict u = g + F;
        const float *restrict dy = dout + (size_t)r * F;
        float *restrict dg = dgu + (size_t)r * 2 * F, *restrict du = dg + F;
        #pragma omp simd
        for (int i = 0; i < F; i++) {
            const float sg = 1.0f / (1.0f + expf(-g[i]));
            dg[i] += dy[i] * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
            du[i] += dy[i] * g[i] * sg;
        }
    }
}

/* Hugging Face's _compute_default_rope_parameters and _compute_llama3_parameters:
 * inv_freq_i = theta^(-2i/HS); with Llama-3 scaling the wavelengths longer than
 * original / low_freq_factor are divided by factor, those shorter than original /
 * high_freq_factor kept, and the ones between blended. As transformers does, the
 * frequency is held in fp32 and the angle is the fp32 product of it and the position
 * (which matters at long positions); its cos and sin are rounded once from double. */
void zinc_rope_table(float *cos_t, float *sin_t, int P, int HS, double theta, const zinc_rope_scaling *sc)
{
    assert(cos_t && sin_t && P >= 0 && HS > 0 && HS % 2 == 0 && theta > 0);
    const int H = HS / 2;
    for (int i = 0; i < H; i++) {
        double inv = pow(theta, -2.0 * i / HS);
        if (sc && sc->factor > 0) {
            const double old = sc->original_max_position, lo = old / sc->low_freq_factor,
                         hi = old / sc->high_freq_factor, wl = 2.0 * M_PI / inv;
            if (wl > lo) {
                inv /= sc->factor;
            } else if (wl >= hi) { /* medium: not (wl < hi) and not (wl > lo) */
                const double s = (old / wl - sc->low_freq_factor) / (sc->high_freq_factor - sc->low_freq_factor);
                inv = (1.0 - s) * inv / sc->factor + s * inv;
            }
        }
        const float inv32 = (float)inv;
        for (int p = 0; p < P; p++) {
            const float a = inv32 * (float)p;
            cos_t[(size_t)p * H + i] = (float)cos(a);
            sin_t[(size_t)p * H + i] = (float)sin(a);
        }
    }
}

/* x(N, ld): columns [c0, c1) of each row = v. */
void cpu_fill_cols(float *x, int N, int ld, int c0, int c1, float v)
{
    assert(x && N >= 0 && ld > 0 && c0 >= 0 && c0 <= c1 && c1 <= ld);
    #pragma omp parallel for schedule(static) if ((size_t)N * (c1 - c0) >= CPU_PAR_MIN)
    for (int r = 0; r < N; r++)
        for (int c = c0; c < c1; c++) x[(size_t)r * ld + c] = v;
}
