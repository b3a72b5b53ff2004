/* ops_layernorm.cu - the layernorm ops of both tables: the forward (one
 * warp per row) and the backward, which for rows of up to 32 LN_BWD_KG
 * groups makes dinp and the partial weight and bias gradients in one pass
 * (wider rows: the dinp kernel and the column sums of ops_colsum.cu). */

/* Row ops (layernorm, softmax_xent) split a row into 16-byte groups the
 * same way whatever the alignment; only whether a group moves in one
 * access depends on it, so the bits do not. Layernorm: one warp per row
 * and xor butterflies, whose result is the same in every lane. */
#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_int.h"

#define LN_EPS 1e-5f

enum {
    ROW_WARPS = 8,             /* warps (rows) per block of warp-per-row kernels */
    LN_BWD_KG = 4,             /* most 16-byte groups per lane of the fused layernorm_backward */
    LN_BWD_MIN_ROWS = 64,      /* fewest rows per block of it */
    LN_BWD_MAX_BLOCKS = 1024,  /* most blocks (partial column sums) of it */
    LN_FIN_Y = 16,             /* chunk slices per column of its finishing sums */
};

/* ------------------------------------------------------------------ */
/* layernorm                                                           */
/* ------------------------------------------------------------------ */

/* The row kernels split a row of C elements the same way whatever the
 * alignment: lane l takes the groups g = l, l + 32, ... of VW = ACT_VW(T)
 * consecutive elements (g < C / VW), in order, then the tail elements
 * VW (C / VW) + l, + 32, ...; VEC only says whether a group moves in one
 * 16-byte access (C % VW == 0 and every row pointer 16-byte aligned) or
 * element by element, so both give the same bits. */

/* Blocks of ROW_WARPS warps for one warp per row over n_rows rows. */
static unsigned row_grid(size_t n_rows)
{
    return (unsigned)((n_rows + ROW_WARPS - 1) / ROW_WARPS);
}

/* One warp per row of inp(N,C); two-pass variance like the CPU. */
template <class T, bool VEC>
static __global__ void __launch_bounds__(ROW_WARPS * 32)
    layernorm_forward_kernel(T *out, float *mean, float *rstd, const T *inp, const float *weight,
                             const float *bias, int N, int C)
{
    constexpr int VW = ACT_VW(T);
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * ROW_WARPS + threadIdx.x / 32;
    if (row >= N)
        return; /* the whole warp leaves together */
    const int G = C / VW;
    const float inv_c = 1.0f / (float)C;
    const T *x = inp + (size_t)row * C;
    T *o = out + (size_t)row * C;
    float v[VW];
    float s = 0.0f;
    for (int g = lane; g < G; g += 32) {
        act_ldg<VEC>(x + (size_t)g * VW, v);
#pragma unroll
        for (int u = 0; u < VW; u++)
            s += v[u];
    }
    for (int c = G * VW + lane; c < C; c += 32)
        s += act_ld(x, c);
    const float m = warp_sum(s) * inv_c;
    float var = 0.0f;
    for (int g = lane; g < G; g += 32) {
        act_ldg<VEC>(x + (size_t)g * VW, v);
#pragma unroll
        for (int u = 0; u < VW; u++) {
            const float d = v[u] - m;
            var += d * d;
        }
    }
    for (int c = G * VW + lane; c < C; c += 32) {
        const float d = act_ld(x, c) - m;
        var += d * d;
    }
    const float rs = 1.0f / sqrtf(warp_sum(var) * inv_c + LN_EPS);
    for (int g = lane; g < G; g += 32) {
        float w[VW], bb[VW];
        act_ldg<VEC>(x + (size_t)g * VW, v);
        par_ldg<VEC, VW>(weight + (size_t)g * VW, w);
        par_ldg<VEC, VW>(bias + (size_t)g * VW, bb);
#pragma unroll
        for (int u = 0; u < VW; u++)
            v[u] = (v[u] - m) * rs * w[u] + bb[u];
        act_stg<VEC>(o + (size_t)g * VW, v);
    }
    for (int c = G * VW + lane; c < C; c += 32)
        act_st(o, c, (act_ld(x, c) - m) * rs * weight[c] + bias[c]);
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = rs;
    }
}

/* The row sums of layernorm_backward over n elements: s1 += dn, s2 += dn
 * norm, where dn = w dy and norm = (x - m) rs. Both backward kernels add
 * their groups' terms with it, so their dinp bits agree. */
template <int n>
__device__ __forceinline__ void ln_bwd_sums(float &s1, float &s2, const float *x, const float *dy,
                                            const float *w, float m, float rs)
{
#pragma unroll
    for (int u = 0; u < n; u++) {
        const float dn = w[u] * dy[u];
        s1 += dn;
        s2 += dn * (x[u] - m) * rs;
    }
}

/* dinp(N,C) += rstd (dnorm - mean_c(dnorm) - norm mean_c(dnorm norm)),
 * dnorm = weight dout; one warp per row. */
template <class T, bool VEC>
static __global__ void __launch_bounds__(ROW_WARPS * 32)
    layernorm_backward_dinp_kernel(T *dinp, const T *dout, const T *inp, const float *weight,
                                   const float *mean, const float *rstd, int N, int C)
{
    constexpr int VW = ACT_VW(T);
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * ROW_WARPS + threadIdx.x / 32;
    if (row >= N)
        return;
    const int G = C / VW;
    const float inv_c = 1.0f / (float)C;
    const T *x = inp + (size_t)row * C;
    const T *dy = dout + (size_t)row * C;
    T *dx = dinp + (size_t)row * C;
    const float m = mean[row], rs = rstd[row];
    float xv[VW], dv[VW], w[VW];
    float s1 = 0.0f, s2 = 0.0f;
    for (int g = lane; g < G; g += 32) {
        act_ldg<VEC>(x + (size_t)g * VW, xv);
        act_ldg<VEC>(dy + (size_t)g * VW, dv);
        par_ldg<VEC, VW>(weight + (size_t)g * VW, w);
        ln_bwd_sums<VW>(s1, s2, xv, dv, w, m, rs);
    }
    for (int c = G * VW + lane; c < C; c += 32) {
        const float dn = weight[c] * act_ld(dy, c);
        s1 += dn;
        s2 += dn * (act_ld(x, c) - m) * rs;
    }
    const float dn_mean = warp_sum(s1) * inv_c, dnn_mean = warp_sum(s2) * inv_c;
    for (int g = lane; g < G; g += 32) {
        float a[VW];
        act_ldg<VEC>(x + (size_t)g * VW, xv);
        act_ldg<VEC>(dy + (size_t)g * VW, dv);
        act_ldg<VEC>(dx + (size_t)g * VW, a);
        par_ldg<VEC, VW>(weight + (size_t)g * VW, w);
#pragma unroll
        for (int u = 0; u < VW; u++) {
            const float norm = (xv[u] - m) * rs;
            a[u] += (w[u] * dv[u] - dn_mean - norm * dnn_mean) * rs;
        }
        act_stg<VEC>(dx + (size_t)g * VW, a);
    }
    for (int c = G * VW + lane; c < C; c += 32) {
        const float norm = (act_ld(x, c) - m) * rs;
        act_st(dx, c, act_ld(dx, c) + (weight[c] * act_ld(dy, c) - dn_mean - norm * dnn_mean) * rs);
    }
}

template <class A>
void cuda_layernorm_forward(void *out, float *mean, float *rstd, const void *inp,
                            const float *weight, const float *bias, int N, int C)
{
    assert(out && mean && rstd && inp && weight && bias && N >= 0 && C > 0);
    const int vec = C % ACT_VW(A) == 0 && cuda_al16(out) && cuda_al16(inp) && cuda_al16(weight) &&
                    cuda_al16(bias);
    if (N == 0)
        return;
    if (vec)
        layernorm_forward_kernel<A, true><<<row_grid((size_t)N), ROW_WARPS * 32>>>(
            (A *)out, mean, rstd, (const A *)inp, weight, bias, N, C);
    else
        layernorm_forward_kernel<A, false><<<row_grid((size_t)N), ROW_WARPS * 32>>>(
            (A *)out, mean, rstd, (const A *)inp, weight, bias, N, C);
    LAUNCH_TRY(layernorm_forward_kernel);
cleanup:
    return;
}

/* Rows per block of layernorm_backward_kernel; depends on N only, so the
 * summation order of dweight and dbias (hence their bits) is fixed for a
 * shape. */
static int ln_bwd_rows_per_block(int N)
{
    const int r = (N + LN_BWD_MAX_BLOCKS - 1) / LN_BWD_MAX_BLOCKS;
    return r < LN_BWD_MIN_ROWS ? LN_BWD_MIN_ROWS : r;
}

/* layernorm_backward in one pass over dout and inp: dinp as
 * layernorm_backward_dinp_kernel (the same arithmetic, so the same bits)
 * and, in the same pass, this block's partial column sums of dweight and
 * dbias. Block b owns rows [b R, min(N, (b + 1) R)) (R = rows_per_block);
 * its warp w the rows b R + w, + ROW_WARPS, ... Lane l holds the groups g
 * = l + 32 k (k < KG, g < C / VW) and the tail column VW (C / VW) + l:
 * the same columns in every row, so it keeps running sums of norm * dout
 * and dout for them in registers, and a row's inp, dout and dinp stay in
 * registers between the row sums and the dinp update (read once). At the
 * end the block adds its warps' sums in warp order and writes them as
 * chunk b of part (2, P, C) (P = gridDim.x; dweight's chunks, then
 * dbias's); ln_bwd_finish_kernel adds the chunks in order. Needs
 * C / VW <= 32 KG. */
template <class T, bool VEC, int KG>
static __global__ void __launch_bounds__(ROW_WARPS * 32, 2)
    layernorm_backward_kernel(T *dinp, float *part, const T *dout, const T *inp,
                              const float *weight, const float *mean, const float *rstd, int N,
                              int C, int rows_per_block)
{
    constexpr int VW = ACT_VW(T);
    constexpr int CM = 32 * KG * VW + VW; /* > the largest C this instantiation takes */
    /* bf16 with 4 groups a lane: dinp's groups are loaded after the row sums,
     * else the registers spill (ptxas, sm_90) */
    constexpr bool LATE = KG * VW > 24;
    __shared__ float s_dw[CM], s_db[CM];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int G = C / VW;
    const int ct = G * VW + lane; /* this lane's tail column, if < C */
    const float inv_c = 1.0f / (float)C;
    const int r0 = blockIdx.x * rows_per_block;
    const int r1 = min(N, r0 + rows_per_block);
    float aw[KG][VW], ab[KG][VW]; /* column sums of norm * dout, dout */
    float awt = 0.0f, abt = 0.0f;
#pragma unroll
    for (int k = 0; k < KG; k++) {
#pragma unroll
        for (int u = 0; u < VW; u++) {
            aw[k][u] = 0.0f;
            ab[k][u] = 0.0f;
        }
    }
    for (int row = r0 + warp; row < r1; row += ROW_WARPS) { /* uniform in the warp */
        const T *x = inp + (size_t)row * C;
        const T *dy = dout + (size_t)row * C;
        T *dx = dinp + (size_t)row * C;
        const float m = mean[row], rs = rstd[row];
        uint4 xq[KG], dq[KG], aq[KG];
        float xt = 0.0f, dyt = 0.0f, at = 0.0f;
#pragma unroll
        for (int k = 0; k < KG; k++) {
            const int g = lane + 32 * k;
            xq[k] = make_uint4(0u, 0u, 0u, 0u);
            dq[k] = xq[k];
            aq[k] = xq[k];
            if (g < G) {
                xq[k] = act_ldq<VEC>(x + (size_t)g * VW);
                dq[k] = act_ldq<VEC>(dy + (size_t)g * VW);
                if (!LATE)
                    aq[k] = act_ldq<VEC>(dx + (size_t)g * VW);
            }
        }
        if (ct < C) {
            xt = act_ld(x, ct);
            dyt = act_ld(dy, ct);
            at = act_ld(dx, ct);
        }
        float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
        for (int k = 0; k < KG; k++) {
            const int g = lane + 32 * k;
            if (g < G) {
                float xv[VW], dv[VW], w[VW];
                act_unpack(x, xq[k], xv);
                act_unpack(x, dq[k], dv);
                par_ldg<VEC, VW>(weight + (size_t)g * VW, w);
                ln_bwd_sums<VW>(s1, s2, xv, dv, w, m, rs);
            }
        }
        if (ct < C) {
            const float dn = weight[ct] * dyt;
            s1 += dn;
            s2 += dn * (xt - m) * rs;
        }
        const float dn_mean = warp_sum(s1) * inv_c, dnn_mean = warp_sum(s2) * inv_c;
#pragma unroll
        for (int k = 0; k < KG; k++) {
            const int g = lane + 32 * k;
            if (g < G) {
                float xv[VW], dv[VW], a[VW], w[VW];
                act_unpack(x, xq[k], xv);
                act_unpack(x, dq[k], dv);
                act_unpack(x, LATE ? act_ldq<VEC>(dx + (size_t)g * VW) : aq[k], a);
                par_ldg<VEC, VW>(weight + (size_t)g * VW, w);
#pragma unroll
                for (int u = 0; u < VW; u++) {
                    const float norm = (xv[u] - m) * rs;
                    a[u] += (w[u] * dv[u] - dn_mean - norm * dnn_mean) * rs;
                    aw[k][u] += norm * dv[u];
                    ab[k][u] += dv[u];
                }
                act_stq<VEC>(dx + (size_t)g * VW, act_pack(dx, a));
            }
        }
        if (ct < C) {
            const float norm = (xt - m) * rs;
            act_st(dx, ct, at + (weight[ct] * dyt - dn_mean - norm * dnn_mean) * rs);
            awt += norm * dyt;
            abt += dyt;
        }
    }
    /* the warps' sums, added in warp order (a warp without rows adds zeros) */
    for (int wi = 0; wi < ROW_WARPS; wi++) {
        if (warp == wi) {
#pragma unroll
            for (int k = 0; k < KG; k++) {
                const int g = lane + 32 * k;
                if (g < G) {
#pragma unroll
                    for (int u = 0; u < VW; u++) {
                        const int c = g * VW + u;
                        s_dw[c] = wi ? s_dw[c] + aw[k][u] : aw[k][u];
                        s_db[c] = wi ? s_db[c] + ab[k][u] : ab[k][u];
                    }
                }
            }
            if (ct < C) {
                s_dw[ct] = wi ? s_dw[ct] + awt : awt;
                s_db[ct] = wi ? s_db[ct] + abt : abt;
            }
        }
        __syncthreads();
    }
    float *pw = part + (size_t)blockIdx.x * C;
    float *pb = part + ((size_t)gridDim.x + blockIdx.x) * C;
    for (int c = threadIdx.x; c < C; c += ROW_WARPS * 32) {
        pw[c] = s_dw[c];
        pb[c] = s_db[c];
    }
}

/* dweight(C) += sum over the P chunks of part(0, ., C), dbias(C) the same
 * of part(1, ., C) (blockIdx.y selects). grid (ceil(C/32), 2), block (32,
 * LN_FIN_Y): row ty of the block adds chunks ty, ty + LN_FIN_Y, ... in
 * order, then row 0 adds the LN_FIN_Y results in order: a fixed tree. */
static __global__ void __launch_bounds__(32 * LN_FIN_Y)
    ln_bwd_finish_kernel(float *dweight, float *dbias, const float *part, int P, int C)
{
    __shared__ float s[LN_FIN_Y][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * 32 + tx;
    const float *src = part + (size_t)blockIdx.y * P * C;
    float a = 0.0f;
    if (c < C)
        for (int k = ty; k < P; k += LN_FIN_Y)
            a += src[(size_t)k * C + c];
    s[ty][tx] = a;
    __syncthreads();
    if (ty == 0 && c < C) {
        float t = s[0][tx];
        for (int y = 1; y < LN_FIN_Y; y++)
            t += s[y][tx];
        float *dst = blockIdx.y ? dbias : dweight;
        if (dst) dst[c] += t; /* NULL: a frozen parameter */
    }
}

/* Launches layernorm_backward_kernel<A, VEC, KG> with the smallest KG >= kg
 * (1 <= kg <= LN_BWD_KG). */
template <class A, bool VEC>
static void ln_bwd_launch(int kg, unsigned grid, A *dinp, float *part, const A *dout,
                          const A *inp, const float *weight, const float *mean, const float *rstd,
                          int N, int C, int rpb)
{
    static_assert(LN_BWD_KG == 4, "one case per KG");
    const unsigned block = ROW_WARPS * 32;
    switch (kg) {
    case 1:
        layernorm_backward_kernel<A, VEC, 1><<<grid, block>>>(dinp, part, dout, inp, weight, mean,
                                                              rstd, N, C, rpb);
        break;
    case 2:
        layernorm_backward_kernel<A, VEC, 2><<<grid, block>>>(dinp, part, dout, inp, weight, mean,
                                                              rstd, N, C, rpb);
        break;
    case 3:
        layernorm_backward_kernel<A, VEC, 3><<<grid, block>>>(dinp, part, dout, inp, weight, mean,
                                                              rstd, N, C, rpb);
        break;
    default:
        layernorm_backward_kernel<A, VEC, 4><<<grid, block>>>(dinp, part, dout, inp, weight, mean,
                                                              rstd, N, C, rpb);
        break;
    }
}

/* Rows of up to 32 LN_BWD_KG groups (C <= 1024 bf16, 512 fp32): one fused
 * pass (layernorm_backward_kernel) and ln_bwd_finish_kernel. Wider rows: the
 * dinp kernel, then the two-pass column sums (reading dout and inp again). */
template <class A>
void cuda_layernorm_backward(void *dinp, float *dweight, float *dbias, const void *dout,
                             const void *inp, const float *weight, const float *mean,
                             const float *rstd, int N, int C)
{
    assert(dinp && dout && inp && weight && mean && rstd);
    assert(N >= 0 && C > 0);
    const int G = C / ACT_VW(A);
    const int kg = G > 32 ? (G + 31) / 32 : 1;
    const int fused = kg <= LN_BWD_KG && (dweight || dbias); /* both NULL (frozen): dinp alone */
    const int rpc = fused ? ln_bwd_rows_per_block(N) : cuda_colsum_rows_per_chunk(N);
    const int nchunk = N > 0 ? (N + rpc - 1) / rpc : 0;
    const int vec = C % ACT_VW(A) == 0 && cuda_al16(dinp) && cuda_al16(dout) && cuda_al16(inp) &&
                    cuda_al16(weight);
    float *part = NULL;
    if (N == 0)
        return;
    if (!cuda_state_get())
        goto cleanup;
    part = (float *)cuda_scratch((size_t)2 * nchunk * C * sizeof(float));
    if (!part)
        goto cleanup;
    if (fused) {
        if (vec)
            ln_bwd_launch<A, true>(kg, (unsigned)nchunk, (A *)dinp, part, (const A *)dout,
                                   (const A *)inp, weight, mean, rstd, N, C, rpc);
        else
            ln_bwd_launch<A, false>(kg, (unsigned)nchunk, (A *)dinp, part, (const A *)dout,
                                    (const A *)inp, weight, mean, rstd, N, C, rpc);
        LAUNCH_TRY(layernorm_backward_kernel);
        ln_bwd_finish_kernel<<<dim3((unsigned)((C + 31) / 32), 2), dim3(32, LN_FIN_Y)>>>(
            dweight, dbias, part, nchunk, C);
        LAUNCH_TRY(ln_bwd_finish_kernel);
        goto cleanup;
    }
    if (vec)
        layernorm_backward_dinp_kernel<A, true><<<row_grid((size_t)N), ROW_WARPS * 32>>>(
            (A *)dinp, (const A *)dout, (const A *)inp, weight, mean, rstd, N, C);
    else
        layernorm_backward_dinp_kernel<A, false><<<row_grid((size_t)N), ROW_WARPS * 32>>>(
            (A *)dinp, (const A *)dout, (const A *)inp, weight, mean, rstd, N, C);
    LAUNCH_TRY(layernorm_backward_dinp_kernel);
    if (!dweight && !dbias) goto cleanup;
    if (!dweight || !dbias) {
        cuda_fail(ZINC_ERR_UNSUPPORTED, "layernorm_backward", __FILE__, __LINE__,
                  "a frozen LayerNorm weight with a trained bias (or the reverse) is not done on cuda for rows "
                  "this wide");
        goto cleanup;
    }
    cuda_colsum_ln_acc(dweight, dbias, part, (const A *)dout, (const A *)inp, mean, rstd, N, C,
                       rpc);
cleanup:
    return;
}

/* The tables' two act types (ops_tables.cu). */
template void cuda_layernorm_forward<float>(void *, float *, float *, const void *, const float *,
                                            const float *, int, int);
template void cuda_layernorm_forward<bf16>(void *, float *, float *, const void *, const float *,
                                           const float *, int, int);
template void cuda_layernorm_backward<float>(void *, float *, float *, const void *, const void *,
                                             const float *, const float *, const float *, int,
                                             int);
template void cuda_layernorm_backward<bf16>(void *, float *, float *, const void *, const void *,
                                            const float *, const float *, const float *, int,
                                            int);
