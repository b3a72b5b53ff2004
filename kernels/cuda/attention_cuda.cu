/* attention_cuda.cu - causal multi-head self-attention on CUDA cores, flash
 * style: no (T, T) matrix ever reaches memory (zinc/ops.h contract). It is
 * the "cuda" table's attention (act f32) and, on bf16 act storage, the
 * "cuda-bf16" table's for the shapes attention_tc_cuda.cu does not take.
 *
 * Every kernel is a template on the act storage type A (float, or bf16
 * bits): act tensors (qkv, out, dout, dqkv) are widened to fp32 when loaded
 * and rounded once when stored (bf16: round to nearest even, NaN stays NaN);
 * dqkv accumulates in fp32 (old value widened, sum rounded once). All math
 * is fp32 on CUDA cores (FMA), deterministic (every output is one thread's
 * fixed-order sum, no atomics); lse and the scratch D stay fp32. q, k, v are
 * read in place from qkv (B,T,3C) through strided views: head h of row t is
 * qkv[t 3C + {0, C, 2C} + h HS].
 *
 * Tiles: 64 queries x 64 keys, one block of 256 threads (16 x 16) per tile;
 * thread (ty, tx) owns rows ty*4 + r (r < 4) and, in a score tile, keys
 * tx + 16 c (c < 4); in an (rows, HS) output it owns columns 64 j + tx*4 + e
 * (register blocking: 16 scores, 4 x D/16 outputs per thread). Head sizes up
 * to 64 run the D = 64 instance, up to 128 the D = 128 one; the unused
 * columns are zero-filled in shared memory. Shared tiles are fp32 whatever
 * A is; rows are padded by 4 floats: float4 reads stay aligned and the 16
 * key rows a warp reads at once fall in distinct banks. Global tile loads
 * move 16 bytes (4 floats or 8 bf16) at a time when every row of the view
 * is 16-byte aligned, else one element at a time.
 *
 * forward (one block per query tile, the key tiles <= it, the diagonal tile
 * masked): S = scale Q K^T; online softmax per row (running max m, running
 * sum l; the accumulator is rescaled by exp(m_old - m_new)); O += P V
 * through shared memory. out = O / l, lse = m + log l.
 *
 * backward, with P = exp(S - lse) recomputed bitwise as the forward's S and
 * dS = P (dP - Dr) scale, dP = dO V^T, Dr = rowsum(dO * O):
 *  1. attn_rowdot_kernel: Dr (B,NH,T) into scratch, one warp per row (also
 *     the tensor-core backward's first step);
 *  2. attn_bwd_dkv_kernel: per key tile, walking query tiles >= it:
 *     dV += P^T dO, dK += dS^T Q;
 *  3. attn_bwd_dq_kernel: per query tile, walking key tiles <= it:
 *     dQ += dS K.
 * The two write disjoint columns of dqkv (k, v; q), each element read,
 * added to and written by one thread. Grids are (tiles, NH, B); tiles are
 * dealt heaviest first (the last query tile has the most keys) to shorten
 * the tail. */
#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_int.h"

typedef __nv_bfloat16 bf16;

enum {
    ATT_BQ = 64,       /* queries per tile */
    ATT_BK = 64,       /* keys per tile */
    ATT_THREADS = 256, /* 16 x 16 */
    ATT_MAX_HS = 128,
    ATT_LP = ATT_BK + 4, /* row stride of the (64, 64) score tiles in shared memory */
};

/* Floats of shared memory per kernel, for head dimension D. */
static constexpr size_t att_fwd_smem(int D)
{
    return ((size_t)(ATT_BQ + 2 * ATT_BK) * (D + 4) + (size_t)ATT_BQ * ATT_LP) * sizeof(float);
}
static constexpr size_t att_dkv_smem(int D)
{
    return ((size_t)(2 * ATT_BK + 2 * ATT_BQ) * (D + 4) + (size_t)2 * ATT_BK * ATT_LP +
            2 * ATT_BQ) * sizeof(float);
}
static constexpr size_t att_dq_smem(int D)
{
    return ((size_t)(2 * ATT_BQ + 2 * ATT_BK) * (D + 4) + (size_t)ATT_BQ * ATT_LP) * sizeof(float);
}

/* ---- act storage: A = float (exact) or bf16 (bits in memory) ---- */

/* fp32 -> bf16 bits, round to nearest even; NaN stays NaN (quieted), as
 * the other ops of the bf16 table round. */
__device__ __forceinline__ uint16_t att_bf16_rne(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* One act element as fp32, and an fp32 value stored as act (rounded once). */
__device__ __forceinline__ float att_ld(const float *p) { return *p; }
__device__ __forceinline__ float att_ld(const bf16 *p)
{
    return __uint_as_float((uint32_t)__bfloat16_as_ushort(*p) << 16);
}
__device__ __forceinline__ void att_st(float *p, float x) { *p = x; }
__device__ __forceinline__ void att_st(bf16 *p, float x)
{
    *p = __ushort_as_bfloat16(att_bf16_rne(x));
}

/* Act elements per 16-byte vector. */
template <typename A>
struct att_vec {
    static constexpr int n = (int)(16 / sizeof(A));
};

/* The 16 bytes at p (16-byte aligned) widened to fp32 into dst (16-byte
 * aligned): 4 floats, or 8 bf16. */
__device__ __forceinline__ void att_ld16(float *dst, const float *p)
{
    *reinterpret_cast<float4 *>(dst) = *reinterpret_cast<const float4 *>(p);
}
__device__ __forceinline__ void att_ld16(float *dst, const bf16 *p)
{
    const uint4 v = *reinterpret_cast<const uint4 *>(p);
    /* bf16 bits << 16 are the fp32 bits; the low half of each word is the
     * element at the lower address */
    *reinterpret_cast<float4 *>(dst) =
        make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u),
                    __uint_as_float(v.y << 16), __uint_as_float(v.y & 0xffff0000u));
    *reinterpret_cast<float4 *>(dst + 4) =
        make_float4(__uint_as_float(v.z << 16), __uint_as_float(v.z & 0xffff0000u),
                    __uint_as_float(v.w << 16), __uint_as_float(v.w & 0xffff0000u));
}

/* dst (64, D+4) fp32 = rows row0.. of a (T, HS) act view with row stride
 * `stride`; rows >= T and columns >= HS become 0 (so they add nothing to
 * any product and never inject NaN through 0 * garbage). Lanes walk
 * columns: coalesced. vec: src, stride and HS are multiples of 16 bytes of
 * act (4 floats, 8 bf16), so rows move 16 bytes at a time. */
template <int D, typename A>
__device__ __forceinline__ void att_load_tile(float *dst, const A *src, int row0, int T,
                                              size_t stride, int HS, int vec)
{
    if (vec) {
        constexpr int W = att_vec<A>::n;
        for (int e = threadIdx.x; e < 64 * D / W; e += ATT_THREADS) {
            const int r = e / (D / W), d = e % (D / W) * W, t = row0 + r;
            float *q = dst + r * (D + 4) + d;
            if (t < T && d < HS) {
                att_ld16(q, src + (size_t)t * stride + d);
            } else {
#pragma unroll
                for (int i = 0; i < W; i += 4)
                    *reinterpret_cast<float4 *>(q + i) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        }
        return;
    }
    for (int e = threadIdx.x; e < 64 * D; e += ATT_THREADS) {
        const int r = e / D, d = e % D, t = row0 + r;
        dst[r * (D + 4) + d] = (t < T && d < HS) ? att_ld(src + (size_t)t * stride + d) : 0.0f;
    }
}

/* acc[r][c] = sum_d A[ty*4 + r][d] B[tx + 16 c][d], A and B (64, D+4) in
 * shared memory; one fmaf chain per output, d in order. */
template <int D>
__device__ __forceinline__ void att_dot_tile(float acc[4][4], const float *A, const float *Bm,
                                             int ty, int tx)
{
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++)
            acc[r][c] = 0.0f;
#pragma unroll 4
    for (int d = 0; d < D; d += 4) {
        float4 a[4], b[4];
        for (int r = 0; r < 4; r++)
            a[r] = *reinterpret_cast<const float4 *>(A + (ty * 4 + r) * (D + 4) + d);
        for (int c = 0; c < 4; c++)
            b[c] = *reinterpret_cast<const float4 *>(Bm + (tx + 16 * c) * (D + 4) + d);
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) {
                float s = acc[r][c];
                s = fmaf(a[r].x, b[c].x, s);
                s = fmaf(a[r].y, b[c].y, s);
                s = fmaf(a[r].z, b[c].z, s);
                s = fmaf(a[r].w, b[c].w, s);
                acc[r][c] = s;
            }
    }
}

/* acc[r][4 j + e] += sum_k P[ty*4 + r][k] V[k][64 j + tx*4 + e]: P (64, 64+4)
 * and V (64, D+4) in shared memory; k in order. */
template <int D>
__device__ __forceinline__ void att_pv_tile(float acc[4][D / 16], const float *P, const float *V,
                                            int ty, int tx)
{
#pragma unroll 2
    for (int k = 0; k < ATT_BK; k += 4) {
        float4 p[4];
        for (int r = 0; r < 4; r++)
            p[r] = *reinterpret_cast<const float4 *>(P + (ty * 4 + r) * ATT_LP + k);
        for (int kk = 0; kk < 4; kk++) {
            for (int j = 0; j < D / 64; j++) {
                const float4 v =
                    *reinterpret_cast<const float4 *>(V + (k + kk) * (D + 4) + 64 * j + tx * 4);
                for (int r = 0; r < 4; r++) {
                    const float pk = kk == 0 ? p[r].x : kk == 1 ? p[r].y : kk == 2 ? p[r].z : p[r].w;
                    acc[r][4 * j + 0] = fmaf(pk, v.x, acc[r][4 * j + 0]);
                    acc[r][4 * j + 1] = fmaf(pk, v.y, acc[r][4 * j + 1]);
                    acc[r][4 * j + 2] = fmaf(pk, v.z, acc[r][4 * j + 2]);
                    acc[r][4 * j + 3] = fmaf(pk, v.w, acc[r][4 * j + 3]);
                }
            }
        }
    }
}

/* Max and sum over the 16 lanes of a half warp (the threads sharing ty);
 * xor butterflies: every lane gets the same bits. */
__device__ __forceinline__ float att_max16(float v)
{
    for (int o = 8; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float att_sum16(float v)
{
    for (int o = 8; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* out (B,T,C) act, lse (B,NH,T) from qkv (B,T,3C) act; grid (query tiles,
 * NH, B). */
template <int D, typename A>
static __global__ void __launch_bounds__(ATT_THREADS)
    attn_fwd_kernel(A *out, float *lse, const A *qkv, int T, int C, int NH, float scale, int vec)
{
    extern __shared__ __align__(16) float sm[];
    float *Qs = sm;                   /* (BQ, D+4) */
    float *Ks = Qs + ATT_BQ * (D + 4); /* (BK, D+4) */
    float *Vs = Ks + ATT_BK * (D + 4); /* (BK, D+4) */
    float *Ps = Vs + ATT_BK * (D + 4); /* (BQ, BK+4) */
    const int qt = (int)(gridDim.x - 1 - blockIdx.x), h = (int)blockIdx.y, b = (int)blockIdx.z;
    const int HS = C / NH, tid = (int)threadIdx.x, tx = tid % 16, ty = tid / 16;
    const size_t C3 = (size_t)C * 3;
    const A *base = qkv + (size_t)b * T * C3 + (size_t)h * HS;
    const int q0 = qt * ATT_BQ;
    const int q_last = min(q0 + ATT_BQ, T) - 1; /* the last key any row here sees */
    float m[4], l[4], o[4][D / 16];

    for (int r = 0; r < 4; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int j = 0; j < D / 16; j++)
            o[r][j] = 0.0f;
    }
    att_load_tile<D>(Qs, base, q0, T, C3, HS, vec);
    for (int k0 = 0; k0 <= q_last; k0 += ATT_BK) {
        float s[4][4];
        att_load_tile<D>(Ks, base + C, k0, T, C3, HS, vec);
        att_load_tile<D>(Vs, base + 2 * (size_t)C, k0, T, C3, HS, vec);
        __syncthreads();
        att_dot_tile<D>(s, Qs, Ks, ty, tx);
        for (int r = 0; r < 4; r++) {
            const int qg = q0 + ty * 4 + r;
            float mt = -INFINITY;
            for (int c = 0; c < 4; c++) {
                const int kg = k0 + tx + 16 * c;
                s[r][c] = (kg <= qg && kg < T) ? s[r][c] * scale : -INFINITY;
                mt = fmaxf(mt, s[r][c]);
            }
            const float mn = fmaxf(m[r], att_max16(mt));
            /* a row with no key yet (only rows >= T) keeps everything at 0 */
            const float mref = mn == -INFINITY ? 0.0f : mn;
            const float alpha = expf(m[r] - mref);
            float ps = 0.0f;
            for (int c = 0; c < 4; c++) {
                const float p = expf(s[r][c] - mref);
                Ps[(ty * 4 + r) * ATT_LP + tx + 16 * c] = p;
                ps += p;
            }
            l[r] = l[r] * alpha + att_sum16(ps);
            m[r] = mn;
            for (int j = 0; j < D / 16; j++)
                o[r][j] *= alpha;
        }
        __syncthreads();
        att_pv_tile<D>(o, Ps, Vs, ty, tx);
        __syncthreads();
    }
    for (int r = 0; r < 4; r++) {
        const int qg = q0 + ty * 4 + r;
        if (qg >= T)
            continue;
        const float inv = 1.0f / l[r];
        A *orow = out + ((size_t)b * T + qg) * C + (size_t)h * HS;
        for (int j = 0; j < D / 64; j++)
            for (int e = 0; e < 4; e++) {
                const int d = 64 * j + tx * 4 + e;
                if (d < HS)
                    att_st(orow + d, o[r][4 * j + e] * inv);
            }
        if (tx == 0)
            lse[((size_t)b * NH + h) * T + qg] = m[r] + logf(l[r]);
    }
}

/* Dr (B,NH,T) fp32 = rowsum(dout * out) per head row, dout and out act;
 * one warp per row. */
template <typename A>
static __global__ void attn_rowdot_kernel(float *Dr, const A *dout, const A *out, int T, int C,
                                          int NH, size_t n_rows)
{
    const size_t row = ((size_t)blockIdx.x * ATT_THREADS + threadIdx.x) / 32;
    const int lane = (int)threadIdx.x % 32;
    if (row >= n_rows)
        return;
    const int HS = C / NH, t = (int)(row % (size_t)T);
    const size_t bh = row / (size_t)T;
    const int h = (int)(bh % (size_t)NH);
    const size_t b = bh / (size_t)NH;
    const size_t off = (b * T + t) * (size_t)C + (size_t)h * HS;
    float s = 0.0f;
    for (int i = lane; i < HS; i += 32)
        s = fmaf(att_ld(dout + off + i), att_ld(out + off + i), s);
    for (int o = 16; o > 0; o >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0)
        Dr[row] = s;
}

template <typename A>
static int att_rowdot(float *Dr, const A *dout, const A *out, int B, int T, int C, int NH)
{
    const size_t n_rows = (size_t)B * NH * T;
    const unsigned rows_per_block = ATT_THREADS / 32;
    if (n_rows == 0)
        return 1;
    attn_rowdot_kernel<A><<<(unsigned)((n_rows + rows_per_block - 1) / rows_per_block),
                            ATT_THREADS>>>(Dr, dout, out, T, C, NH, n_rows);
    LAUNCH_TRY(attn_rowdot_kernel);
    return 1;
cleanup:
    return 0;
}

int cuda_attention_rowdot(float *Dr, const void *dout, const void *out, zinc_dtype act, int B,
                          int T, int C, int NH)
{
    assert(act == ZINC_DTYPE_F32 || act == ZINC_DTYPE_BF16);
    if (act == ZINC_DTYPE_BF16)
        return att_rowdot(Dr, (const bf16 *)dout, (const bf16 *)out, B, T, C, NH);
    return att_rowdot(Dr, (const float *)dout, (const float *)out, B, T, C, NH);
}

/* dK, dV for one key tile; grid (key tiles, NH, B). dqkv, qkv, dout act;
 * dqkv accumulates. */
template <int D, typename A>
static __global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_dkv_kernel(A *dqkv, const A *qkv, const A *dout, const float *lse, const float *Dr,
                        int T, int C, int NH, float scale, int vec)
{
    extern __shared__ __align__(16) float sm[];
    float *Ks = sm;                      /* (BK, D+4) */
    float *Vs = Ks + ATT_BK * (D + 4);   /* (BK, D+4) */
    float *Qs = Vs + ATT_BK * (D + 4);   /* (BQ, D+4) */
    float *dOs = Qs + ATT_BQ * (D + 4);  /* (BQ, D+4) */
    float *Ps = dOs + ATT_BQ * (D + 4);  /* (BK, BQ+4): P^T */
    float *dSs = Ps + ATT_BK * ATT_LP;   /* (BK, BQ+4): dS^T */
    float *lse_s = dSs + ATT_BK * ATT_LP; /* (BQ) */
    float *Dr_s = lse_s + ATT_BQ;        /* (BQ) */
    const int kt = (int)(gridDim.x - 1 - blockIdx.x), h = (int)blockIdx.y, b = (int)blockIdx.z;
    const int HS = C / NH, tid = (int)threadIdx.x, tx = tid % 16, ty = tid / 16;
    const size_t C3 = (size_t)C * 3;
    const A *base = qkv + (size_t)b * T * C3 + (size_t)h * HS;
    const A *dobase = dout + (size_t)b * T * C + (size_t)h * HS;
    const float *lse_h = lse + ((size_t)b * NH + h) * T, *Dr_h = Dr + ((size_t)b * NH + h) * T;
    const int k0 = kt * ATT_BK;
    float dk[4][D / 16], dv[4][D / 16];

    for (int r = 0; r < 4; r++)
        for (int j = 0; j < D / 16; j++)
            dk[r][j] = dv[r][j] = 0.0f;
    att_load_tile<D>(Ks, base + C, k0, T, C3, HS, vec);
    att_load_tile<D>(Vs, base + 2 * (size_t)C, k0, T, C3, HS, vec);
    /* query tiles that start before k0 + BK hold queries >= some key here */
    for (int q0 = k0 / ATT_BQ * ATT_BQ; q0 < T; q0 += ATT_BQ) {
        float st[4][4], dpt[4][4];
        att_load_tile<D>(Qs, base, q0, T, C3, HS, vec);
        att_load_tile<D>(dOs, dobase, q0, T, (size_t)C, HS, vec);
        if (tid < ATT_BQ) {
            const int t = q0 + tid;
            lse_s[tid] = t < T ? lse_h[t] : 0.0f;
            Dr_s[tid] = t < T ? Dr_h[t] : 0.0f;
        }
        __syncthreads();
        att_dot_tile<D>(st, Ks, Qs, ty, tx);  /* S^T: key . query, as the forward's S */
        att_dot_tile<D>(dpt, Vs, dOs, ty, tx); /* dP^T */
        for (int r = 0; r < 4; r++) {
            const int kg = k0 + ty * 4 + r;
            for (int c = 0; c < 4; c++) {
                const int qi = tx + 16 * c, qg = q0 + qi;
                const float p =
                    (qg >= kg && qg < T) ? expf(st[r][c] * scale - lse_s[qi]) : 0.0f;
                Ps[(ty * 4 + r) * ATT_LP + qi] = p;
                dSs[(ty * 4 + r) * ATT_LP + qi] = p * (dpt[r][c] - Dr_s[qi]) * scale;
            }
        }
        __syncthreads();
        att_pv_tile<D>(dv, Ps, dOs, ty, tx);
        att_pv_tile<D>(dk, dSs, Qs, ty, tx);
        __syncthreads();
    }
    for (int r = 0; r < 4; r++) {
        const int kg = k0 + ty * 4 + r;
        if (kg >= T)
            continue;
        A *dkrow = dqkv + ((size_t)b * T + kg) * C3 + C + (size_t)h * HS;
        A *dvrow = dkrow + C;
        for (int j = 0; j < D / 64; j++)
            for (int e = 0; e < 4; e++) {
                const int d = 64 * j + tx * 4 + e;
                if (d < HS) {
                    att_st(dkrow + d, att_ld(dkrow + d) + dk[r][4 * j + e]);
                    att_st(dvrow + d, att_ld(dvrow + d) + dv[r][4 * j + e]);
                }
            }
    }
}

/* dQ for one query tile; grid (query tiles, NH, B). dqkv, qkv, dout act;
 * dqkv accumulates. */
template <int D, typename A>
static __global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_dq_kernel(A *dqkv, const A *qkv, const A *dout, const float *lse, const float *Dr,
                       int T, int C, int NH, float scale, int vec)
{
    extern __shared__ __align__(16) float sm[];
    float *Qs = sm;                     /* (BQ, D+4) */
    float *dOs = Qs + ATT_BQ * (D + 4); /* (BQ, D+4) */
    float *Ks = dOs + ATT_BQ * (D + 4); /* (BK, D+4) */
    float *Vs = Ks + ATT_BK * (D + 4);  /* (BK, D+4) */
    float *dSs = Vs + ATT_BK * (D + 4); /* (BQ, BK+4) */
    const int qt = (int)(gridDim.x - 1 - blockIdx.x), h = (int)blockIdx.y, b = (int)blockIdx.z;
    const int HS = C / NH, tid = (int)threadIdx.x, tx = tid % 16, ty = tid / 16;
    const size_t C3 = (size_t)C * 3;
    const A *base = qkv + (size_t)b * T * C3 + (size_t)h * HS;
    const A *dobase = dout + (size_t)b * T * C + (size_t)h * HS;
    const float *lse_h = lse + ((size_t)b * NH + h) * T, *Dr_h = Dr + ((size_t)b * NH + h) * T;
    const int q0 = qt * ATT_BQ;
    const int q_last = min(q0 + ATT_BQ, T) - 1;
    float dq[4][D / 16], lse_r[4], Dr_r[4];

    for (int r = 0; r < 4; r++) {
        const int qg = q0 + ty * 4 + r;
        lse_r[r] = qg < T ? lse_h[qg] : 0.0f;
        Dr_r[r] = qg < T ? Dr_h[qg] : 0.0f;
        for (int j = 0; j < D / 16; j++)
            dq[r][j] = 0.0f;
    }
    att_load_tile<D>(Qs, base, q0, T, C3, HS, vec);
    att_load_tile<D>(dOs, dobase, q0, T, (size_t)C, HS, vec);
    for (int k0 = 0; k0 <= q_last; k0 += ATT_BK) {
        float s[4][4], dp[4][4];
        att_load_tile<D>(Ks, base + C, k0, T, C3, HS, vec);
        att_load_tile<D>(Vs, base + 2 * (size_t)C, k0, T, C3, HS, vec);
        __syncthreads();
        att_dot_tile<D>(s, Qs, Ks, ty, tx);
        att_dot_tile<D>(dp, dOs, Vs, ty, tx);
        for (int r = 0; r < 4; r++) {
            const int qg = q0 + ty * 4 + r;
            for (int c = 0; c < 4; c++) {
                const int kg = k0 + tx + 16 * c;
                const float p = (kg <= qg && qg < T) ? expf(s[r][c] * scale - lse_r[r]) : 0.0f;
                dSs[(ty * 4 + r) * ATT_LP + tx + 16 * c] = p * (dp[r][c] - Dr_r[r]) * scale;
            }
        }
        __syncthreads();
        att_pv_tile<D>(dq, dSs, Ks, ty, tx);
        __syncthreads();
    }
    for (int r = 0; r < 4; r++) {
        const int qg = q0 + ty * 4 + r;
        if (qg >= T)
            continue;
        A *dqrow = dqkv + ((size_t)b * T + qg) * C3 + (size_t)h * HS;
        for (int j = 0; j < D / 64; j++)
            for (int e = 0; e < 4; e++) {
                const int d = 64 * j + tx * 4 + e;
                if (d < HS)
                    att_st(dqrow + d, att_ld(dqrow + d) + dq[r][4 * j + e]);
            }
    }
}

/* Checks the shape; 0 (after recording an error) if the kernels cannot take it. */
static int att_shape_ok(int B, int T, int C, int NH)
{
    assert(B >= 0 && T >= 0 && NH > 0 && C > 0 && C % NH == 0 && C / NH <= ATT_MAX_HS);
    if (C / NH > ATT_MAX_HS || NH > 65535 || B > 65535) {
        cuda_fail(ZINC_ERR_INVALID_ARG, "attention", __FILE__, __LINE__,
                  "head size above 128, or NH or B above 65535");
        return 0;
    }
    return 1;
}

/* 1 if every tile row of qkv and dout starts 16-byte aligned (16-byte
 * loads of W = 16 / sizeof(A) elements): C, HS multiples of W. */
template <typename A>
static int att_vec_ok(const A *qkv, const A *dout, int C, int NH)
{
    const int W = att_vec<A>::n;
    return C % W == 0 && (C / NH) % W == 0 && (uintptr_t)qkv % 16 == 0 &&
           (uintptr_t)dout % 16 == 0;
}

template <int D, typename A>
static int att_forward_launch(A *out, float *lse, const A *qkv, int B, int T, int C, int NH,
                              float scale, int vec)
{
    const size_t smem = att_fwd_smem(D);
    const dim3 grid((unsigned)((T + ATT_BQ - 1) / ATT_BQ), (unsigned)NH, (unsigned)B);
    int ok = 0;
    CUDA_TRY(cudaFuncSetAttribute(attn_fwd_kernel<D, A>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    attn_fwd_kernel<D, A><<<grid, ATT_THREADS, smem>>>(out, lse, qkv, T, C, NH, scale, vec);
    LAUNCH_TRY(attn_fwd_kernel);
    ok = 1;
cleanup:
    return ok;
}

template <typename A>
static void att_forward(A *out, float *lse, const A *qkv, int B, int T, int C, int NH)
{
    assert(out && lse && qkv);
    if (!att_shape_ok(B, T, C, NH) || B == 0 || T == 0)
        return;
    const float scale = 1.0f / sqrtf((float)(C / NH));
    const int vec = att_vec_ok(qkv, qkv, C, NH);
    if (C / NH <= 64)
        att_forward_launch<64>(out, lse, qkv, B, T, C, NH, scale, vec);
    else
        att_forward_launch<128>(out, lse, qkv, B, T, C, NH, scale, vec);
}

template <int D, typename A>
static int att_backward_launch(A *dqkv, const float *Dr, const A *dout, const A *qkv,
                               const float *lse, int B, int T, int C, int NH, float scale,
                               int vec)
{
    const size_t smem_kv = att_dkv_smem(D), smem_q = att_dq_smem(D);
    const dim3 grid_kv((unsigned)((T + ATT_BK - 1) / ATT_BK), (unsigned)NH, (unsigned)B);
    const dim3 grid_q((unsigned)((T + ATT_BQ - 1) / ATT_BQ), (unsigned)NH, (unsigned)B);
    int ok = 0;
    CUDA_TRY(cudaFuncSetAttribute(attn_bwd_dkv_kernel<D, A>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_kv));
    CUDA_TRY(cudaFuncSetAttribute(attn_bwd_dq_kernel<D, A>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_q));
    attn_bwd_dkv_kernel<D, A><<<grid_kv, ATT_THREADS, smem_kv>>>(dqkv, qkv, dout, lse, Dr, T, C,
                                                                 NH, scale, vec);
    LAUNCH_TRY(attn_bwd_dkv_kernel);
    attn_bwd_dq_kernel<D, A><<<grid_q, ATT_THREADS, smem_q>>>(dqkv, qkv, dout, lse, Dr, T, C, NH,
                                                              scale, vec);
    LAUNCH_TRY(attn_bwd_dq_kernel);
    ok = 1;
cleanup:
    return ok;
}

template <typename A>
static void att_backward(A *dqkv, float *scratch, const A *dout, const A *qkv, const A *out,
                         const float *lse, int B, int T, int C, int NH)
{
    assert(dqkv && scratch && dout && qkv && out && lse);
    const size_t n_rows = (size_t)B * NH * T;
    if (!att_shape_ok(B, T, C, NH) || n_rows == 0)
        return;
    const float scale = 1.0f / sqrtf((float)(C / NH));
    const int vec = att_vec_ok(qkv, dout, C, NH);
    if (!att_rowdot(scratch, dout, out, B, T, C, NH))
        return;
    if (C / NH <= 64)
        att_backward_launch<64>(dqkv, scratch, dout, qkv, lse, B, T, C, NH, scale, vec);
    else
        att_backward_launch<128>(dqkv, scratch, dout, qkv, lse, B, T, C, NH, scale, vec);
}

void cuda_attention_forward(float *out, float *lse, const float *qkv, int B, int T, int C,
                            int NH)
{
    att_forward(out, lse, qkv, B, T, C, NH);
}

void cuda_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                             const float *out, const float *lse, int B, int T, int C, int NH)
{
    att_backward(dqkv, scratch, dout, qkv, out, lse, B, T, C, NH);
}

void cuda_attention_forward_fallback_bf16(void *out, float *lse, const void *qkv, int B, int T,
                                          int C, int NH)
{
    att_forward((bf16 *)out, lse, (const bf16 *)qkv, B, T, C, NH);
}

void cuda_attention_backward_fallback_bf16(void *dqkv, float *scratch, const void *dout,
                                           const void *qkv, const void *out, const float *lse,
                                           int B, int T, int C, int NH)
{
    att_backward((bf16 *)dqkv, scratch, (const bf16 *)dout, (const bf16 *)qkv, (const bf16 *)out,
                 lse, B, T, C, NH);
}

size_t cuda_attention_scratch_floats(int B, int T, int C, int NH)
{
    (void)C;
    return (size_t)B * NH * T;
}
