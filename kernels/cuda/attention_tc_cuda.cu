/* attention_tc_cuda.cu - causal multi-head self-attention for the bf16 op
 * table ("cuda-bf16"), flash style on tensor cores (zinc/ops.h contract:
 * fp32 in memory, lse = natural-log LSE of the scaled scores, dqkv
 * accumulates, deterministic: no atomics, fixed-order sums).
 *
 * Head size 64 only (GPT-2); any other head size, and empty shapes, go to
 * the exact fp32 kernels of attention_cuda.cu. Operand tiles are read from
 * fp32 global memory (q, k, v through the strided views of qkv (B,T,3C),
 * as attention_cuda.cu does), rounded to bf16 into shared memory, and
 * multiplied with nvcuda::wmma 16x16x16 bf16 fragments, fp32 accumulation.
 * P and dS are rounded to bf16 before their products; softmax statistics
 * (row max m, row sum l, lse), the 1/sqrt(HS) scale, D = rowsum(dO * O) and
 * dS = P (dP - D) are fp32.
 *
 * Tiles: 64 queries x 64 keys, one block of 4 warps (128 threads); warp w
 * owns 16 rows of the block's tile (16 queries, or 16 keys in the dK/dV
 * kernel). Per key tile a warp stores its (16, 64) score tile from the
 * accumulators to its own fp32 shared slice; then lane pair (2r, 2r+1) owns
 * row r of it, the pair splitting the columns by parity (c = 2 i + half)
 * and combining its max and sum with one xor shuffle. Fragments are only
 * ever loaded, multiplied and stored whole (never indexed), so no
 * accumulator layout is assumed. Rows are padded (bf16 rows 72 elements,
 * fp32 rows 68) so the 16-byte row segments of a fragment load fall in
 * distinct banks; every fragment pointer is 32-byte aligned.
 *
 * forward (grid: query tiles heaviest first, NH, B): Q fragments stay in
 * registers; per key tile <= the query tile: S = Q K^T (K^T is K read as a
 * col_major matrix_b), scale and causal mask in fp32, online softmax (the
 * lane's 32 output columns rescaled by exp(m_old - m_new)), P (bf16) V with
 * V as a row_major matrix_b, the product added through the warp's slice.
 * out = O / l, lse = m + log l.
 *
 * backward, P = exp(scale S - lse) recomputed from the same bf16 operands:
 *  1. attn_tc_rowdot_kernel: D (B,NH,T) into scratch, one warp per row;
 *  2. attn_tc_dkv_kernel: per key tile (its K, V fragments in registers),
 *     walking query tiles >= it: S^T = K Q^T, dP^T = V dO^T, then
 *     dV += P^T dO, dK += dS^T Q in accumulators held across the walk;
 *  3. attn_tc_dq_kernel: per query tile, walking key tiles <= it:
 *     S = Q K^T, dP = dO V^T, dQ += dS K.
 * The two kernels write disjoint parts of dqkv (rows' k, v columns; q
 * columns), each element by one thread: no atomics. */
#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "cuda_int.h"

namespace wmma = nvcuda::wmma;
typedef __nv_bfloat16 bf16;
typedef __nv_bfloat162 bf16x2;

/* ---- kernels (begin) ---- */
enum {
    TC_T = 64,         /* queries per query tile = keys per key tile */
    TC_D = 64,         /* the one head size these kernels take */
    TC_WARPS = 4,      /* each owns 16 rows of a tile */
    TC_THREADS = 128,
    TC_LH = TC_D + 8,  /* bf16 row stride of the Q, K, V, dO tiles (64, 64) */
    TC_LP = TC_T + 8,  /* bf16 row stride of a warp's P / dS slice (16, 64) */
    TC_LS = TC_T + 4,  /* fp32 row stride of a warp's S / dP slice (16, 64) */
    TC_TILE_BYTES = TC_T * TC_LH * 2,       /* one bf16 operand tile: 9216 */
    TC_SLICE_BYTES = TC_WARPS * 16 * TC_LS * 4, /* fp32 slices of 4 warps: 17408 */
    TC_PSLICE_BYTES = TC_WARPS * 16 * TC_LP * 2, /* bf16 slices of 4 warps: 9216 */
    /* dynamic shared memory of each kernel */
    TC_FWD_SMEM = 3 * TC_TILE_BYTES + TC_SLICE_BYTES + TC_PSLICE_BYTES,          /* 54272 */
    TC_DKV_SMEM = 4 * TC_TILE_BYTES + 2 * TC_SLICE_BYTES + 2 * TC_PSLICE_BYTES +
                  2 * TC_T * 4,                                                  /* 90624 */
    TC_DQ_SMEM = 4 * TC_TILE_BYTES + 2 * TC_SLICE_BYTES + TC_PSLICE_BYTES,       /* 80896 */
};

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> tc_frag_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> tc_frag_b_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> tc_frag_b_col;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> tc_frag_acc;

/* dst (64, TC_LH) bf16 = rows row0.. of a (T, 64) fp32 view with row
 * stride `stride`; rows >= T become 0 (they add nothing to any product).
 * vec: src and stride are multiples of 4 floats, so rows move as float4. */
__device__ __forceinline__ void tc_load_tile(bf16 *dst, const float *src, int row0, int T,
                                             size_t stride, int vec)
{
    if (vec) {
        for (int e = (int)threadIdx.x; e < TC_T * TC_D / 4; e += TC_THREADS) {
            const int r = e / (TC_D / 4), d = e % (TC_D / 4) * 4, t = row0 + r;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (t < T)
                v = *reinterpret_cast<const float4 *>(src + (size_t)t * stride + d);
            bf16x2 *p = reinterpret_cast<bf16x2 *>(dst + r * TC_LH + d);
            p[0] = __floats2bfloat162_rn(v.x, v.y);
            p[1] = __floats2bfloat162_rn(v.z, v.w);
        }
        return;
    }
    for (int e = (int)threadIdx.x; e < TC_T * TC_D; e += TC_THREADS) {
        const int r = e / TC_D, d = e % TC_D, t = row0 + r;
        dst[r * TC_LH + d] = __float2bfloat16(t < T ? src[(size_t)t * stride + d] : 0.0f);
    }
}

/* acc[n] (16, 16) = A (16, 64) B_n: a[kk] holds A's columns 16 kk..; B_n
 * (64, 16) is read from the bf16 tile M (row stride TC_LH) as M^T, i.e.
 * B_n[k][j] = M[16 n + j][k] (col_major), and the four products go to the
 * fp32 slice S (16, TC_LS) as columns 16 n... */
__device__ __forceinline__ void tc_a_mt_to_slice(float *S, const tc_frag_a a[4], const bf16 *M)
{
#pragma unroll
    for (int n = 0; n < 4; n++) {
        tc_frag_acc acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            tc_frag_b_col bt;
            wmma::load_matrix_sync(bt, M + n * 16 * TC_LH + kk * 16, TC_LH);
            wmma::mma_sync(acc, a[kk], bt, acc);
        }
        wmma::store_matrix_sync(S + n * 16, acc, TC_LS, wmma::mem_row_major);
    }
}

/* acc[n] += A (16, 64) M[:, 16 n..16 n + 16]: M a bf16 (64, 64) tile read
 * row_major (row stride TC_LH); a[kk] holds A's columns 16 kk... */
__device__ __forceinline__ void tc_a_m_acc(tc_frag_acc acc[4], const tc_frag_a a[4], const bf16 *M)
{
#pragma unroll
    for (int n = 0; n < 4; n++) {
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            tc_frag_b_row bm;
            wmma::load_matrix_sync(bm, M + kk * 16 * TC_LH + n * 16, TC_LH);
            wmma::mma_sync(acc[n], a[kk], bm, acc[n]);
        }
    }
}

/* a[kk] = the (16, 16) blocks of a (16, 64) bf16 matrix at M, row stride ld. */
__device__ __forceinline__ void tc_load_a4(tc_frag_a a[4], const bf16 *M, int ld)
{
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
        wmma::load_matrix_sync(a[kk], M + kk * 16, ld);
}

/* The warp's (16, 64) result held in acc[4], added (+=) to rows row0 + r
 * (r < 16, those < T) of a view with row stride `stride`, through the
 * warp's fp32 slice S; lanes walk columns (coalesced). */
__device__ __forceinline__ void tc_acc_add_rows(float *dst, size_t stride, int row0, int T,
                                                float *S, const tc_frag_acc acc[4], int lane)
{
#pragma unroll
    for (int n = 0; n < 4; n++)
        wmma::store_matrix_sync(S + n * 16, acc[n], TC_LS, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 16 * TC_D; e += 32) {
        const int r = e / TC_D, d = e % TC_D, t = row0 + r;
        if (t < T)
            dst[(size_t)t * stride + d] += S[r * TC_LS + d];
    }
}

/* out (B,T,C), lse (B,NH,T) from qkv (B,T,3C); grid (query tiles, NH, B). */
static __global__ void __launch_bounds__(TC_THREADS, 3)
    attn_tc_fwd_kernel(float *out, float *lse, const float *qkv, int T, int C, int NH,
                       float scale, int vec)
{
    extern __shared__ __align__(128) unsigned char tc_smem[];
    bf16 *Qs = reinterpret_cast<bf16 *>(tc_smem);             /* (64, LH) */
    bf16 *Ks = Qs + TC_T * TC_LH;                              /* (64, LH) */
    bf16 *Vs = Ks + TC_T * TC_LH;                              /* (64, LH) */
    float *Ss = reinterpret_cast<float *>(Vs + TC_T * TC_LH); /* 4 x (16, LS) */
    bf16 *Ps = reinterpret_cast<bf16 *>(Ss + TC_WARPS * 16 * TC_LS); /* 4 x (16, LP) */
    const int qt = (int)(gridDim.x - 1 - blockIdx.x), h = (int)blockIdx.y, b = (int)blockIdx.z;
    const int tid = (int)threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int row = lane / 2, half = lane % 2; /* this lane's row of the warp's 16 */
    const size_t C3 = (size_t)C * 3;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * TC_D;
    const int q0 = qt * TC_T, q_last = min(q0 + TC_T, T) - 1;
    const int qg = q0 + warp * 16 + row;
    float *Sw = Ss + warp * 16 * TC_LS;
    bf16 *Pw = Ps + warp * 16 * TC_LP;
    float m = -INFINITY, l = 0.0f, o[32];
    tc_frag_a qa[4];

#pragma unroll
    for (int i = 0; i < 32; i++)
        o[i] = 0.0f;
    tc_load_tile(Qs, base, q0, T, C3, vec);
    for (int k0 = 0; k0 <= q_last; k0 += TC_T) {
        tc_load_tile(Ks, base + C, k0, T, C3, vec);
        tc_load_tile(Vs, base + 2 * (size_t)C, k0, T, C3, vec);
        __syncthreads();
        if (k0 == 0)
            tc_load_a4(qa, Qs + warp * 16 * TC_LH, TC_LH);
        tc_a_mt_to_slice(Sw, qa, Ks); /* S = Q K^T (unscaled) */
        __syncwarp();

        /* the scaled, masked score of column c (read twice: no register copy) */
        auto score = [&](int c) {
            return (k0 + c <= qg && k0 + c < T) ? Sw[row * TC_LS + c] * scale : -INFINITY;
        };
        float mt = -INFINITY;
#pragma unroll
        for (int i = 0; i < 32; i++)
            mt = fmaxf(mt, score(2 * i + half));
        mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
        const float mn = fmaxf(m, mt);
        /* a row that has seen no key (none here: key k0 <= every row) keeps 0s */
        const float mref = mn == -INFINITY ? 0.0f : mn;
        const float alpha = expf(m - mref);
        float ps = 0.0f;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const float p = expf(score(2 * i + half) - mref);
            Pw[row * TC_LP + 2 * i + half] = __float2bfloat16(p);
            ps += p;
        }
        ps += __shfl_xor_sync(0xffffffffu, ps, 1);
        l = l * alpha + ps;
        m = mn;
        __syncwarp(); /* P written; every lane is done reading S */

        tc_frag_a pa[4];
        tc_frag_acc pv[4];
        tc_load_a4(pa, Pw, TC_LP);
#pragma unroll
        for (int n = 0; n < 4; n++)
            wmma::fill_fragment(pv[n], 0.0f);
        tc_a_m_acc(pv, pa, Vs); /* P V */
#pragma unroll
        for (int n = 0; n < 4; n++)
            wmma::store_matrix_sync(Sw + n * 16, pv[n], TC_LS, wmma::mem_row_major);
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 32; i++)
            o[i] = o[i] * alpha + Sw[row * TC_LS + 2 * i + half];
        __syncthreads(); /* Ks, Vs and the slices are free for the next tile */
    }
    const float inv = 1.0f / l;
#pragma unroll
    for (int i = 0; i < 32; i++)
        Sw[row * TC_LS + 2 * i + half] = o[i] * inv;
    if (half == 0 && qg < T)
        lse[((size_t)b * NH + h) * T + qg] = m + logf(l);
    __syncwarp();
    for (int e = lane; e < 16 * TC_D; e += 32) {
        const int r = e / TC_D, d = e % TC_D, t = q0 + warp * 16 + r;
        if (t < T)
            out[((size_t)b * T + t) * C + (size_t)h * TC_D + d] = Sw[r * TC_LS + d];
    }
}

/* D (B,NH,T) = rowsum(dout * out) per head row; one warp per row. */
static __global__ void attn_tc_rowdot_kernel(float *Dr, const float *dout, const float *out,
                                             int T, int C, int NH, size_t n_rows)
{
    const size_t r = ((size_t)blockIdx.x * TC_THREADS + threadIdx.x) / 32;
    const int lane = (int)threadIdx.x % 32;
    if (r >= n_rows)
        return;
    const int HS = C / NH, t = (int)(r % (size_t)T);
    const size_t bh = r / (size_t)T;
    const int h = (int)(bh % (size_t)NH);
    const size_t b = bh / (size_t)NH;
    const size_t off = (b * T + t) * (size_t)C + (size_t)h * HS;
    float s = 0.0f;
    for (int i = lane; i < HS; i += 32)
        s = fmaf(dout[off + i], out[off + i], s);
    for (int o = 16; o > 0; o >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0)
        Dr[r] = s;
}

/* dK, dV for one key tile; grid (key tiles, NH, B). dqkv accumulates. */
static __global__ void __launch_bounds__(TC_THREADS)
    attn_tc_dkv_kernel(float *dqkv, const float *qkv, const float *dout, const float *lse,
                       const float *Dr, int T, int C, int NH, float scale, int vec)
{
    extern __shared__ __align__(128) unsigned char tc_smem[];
    bf16 *Ks = reinterpret_cast<bf16 *>(tc_smem);              /* (64, LH) */
    bf16 *Vs = Ks + TC_T * TC_LH;                               /* (64, LH) */
    bf16 *Qs = Vs + TC_T * TC_LH;                               /* (64, LH) */
    bf16 *dOs = Qs + TC_T * TC_LH;                              /* (64, LH) */
    float *Ss = reinterpret_cast<float *>(dOs + TC_T * TC_LH); /* 4 x (16, LS): S^T */
    float *dPs = Ss + TC_WARPS * 16 * TC_LS;                    /* 4 x (16, LS): dP^T */
    bf16 *Ps = reinterpret_cast<bf16 *>(dPs + TC_WARPS * 16 * TC_LS); /* 4 x (16, LP): P^T */
    bf16 *dSs = Ps + TC_WARPS * 16 * TC_LP;                     /* 4 x (16, LP): dS^T */
    float *lse_s = reinterpret_cast<float *>(dSs + TC_WARPS * 16 * TC_LP); /* (64) */
    float *Dr_s = lse_s + TC_T;                                             /* (64) */
    const int kt = (int)(gridDim.x - 1 - blockIdx.x), h = (int)blockIdx.y, b = (int)blockIdx.z;
    const int tid = (int)threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int row = lane / 2, half = lane % 2;
    const size_t C3 = (size_t)C * 3;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * TC_D;
    const float *dobase = dout + (size_t)b * T * C + (size_t)h * TC_D;
    const float *lse_h = lse + ((size_t)b * NH + h) * T, *Dr_h = Dr + ((size_t)b * NH + h) * T;
    const int k0 = kt * TC_T, kg = k0 + warp * 16 + row;
    float *Sw = Ss + warp * 16 * TC_LS, *dPw = dPs + warp * 16 * TC_LS;
    bf16 *Pw = Ps + warp * 16 * TC_LP, *dSw = dSs + warp * 16 * TC_LP;
    tc_frag_a ka[4], va[4];
    tc_frag_acc dk[4], dv[4];

#pragma unroll
    for (int n = 0; n < 4; n++) {
        wmma::fill_fragment(dk[n], 0.0f);
        wmma::fill_fragment(dv[n], 0.0f);
    }
    tc_load_tile(Ks, base + C, k0, T, C3, vec);
    tc_load_tile(Vs, base + 2 * (size_t)C, k0, T, C3, vec);
    /* query tile k0 is the first whose queries reach keys here (same tiling) */
    for (int q0 = k0; q0 < T; q0 += TC_T) {
        tc_load_tile(Qs, base, q0, T, C3, vec);
        tc_load_tile(dOs, dobase, q0, T, (size_t)C, vec);
        if (tid < TC_T) {
            const int t = q0 + tid;
            lse_s[tid] = t < T ? lse_h[t] : 0.0f;
            Dr_s[tid] = t < T ? Dr_h[t] : 0.0f;
        }
        __syncthreads();
        if (q0 == k0) {
            tc_load_a4(ka, Ks + warp * 16 * TC_LH, TC_LH);
            tc_load_a4(va, Vs + warp * 16 * TC_LH, TC_LH);
        }
        tc_a_mt_to_slice(Sw, ka, Qs);   /* S^T = K Q^T (key rows) */
        tc_a_mt_to_slice(dPw, va, dOs); /* dP^T = V dO^T */
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const int c = 2 * i + half, qg = q0 + c;
            const float p =
                (qg >= kg && qg < T) ? expf(Sw[row * TC_LS + c] * scale - lse_s[c]) : 0.0f;
            const float ds = p * (dPw[row * TC_LS + c] - Dr_s[c]) * scale;
            Pw[row * TC_LP + c] = __float2bfloat16(p);
            dSw[row * TC_LP + c] = __float2bfloat16(ds);
        }
        __syncwarp();
        {
            tc_frag_a pa[4];
            tc_load_a4(pa, Pw, TC_LP);
            tc_a_m_acc(dv, pa, dOs); /* dV += P^T dO */
            tc_load_a4(pa, dSw, TC_LP);
            tc_a_m_acc(dk, pa, Qs); /* dK += dS^T Q */
        }
        __syncthreads(); /* Qs, dOs, lse_s, Dr_s and the slices free for the next tile */
    }
    float *dkbase = dqkv + (size_t)b * T * C3 + C + (size_t)h * TC_D;
    tc_acc_add_rows(dkbase, C3, k0 + warp * 16, T, Sw, dk, lane);
    tc_acc_add_rows(dkbase + C, C3, k0 + warp * 16, T, dPw, dv, lane);
}

/* dQ for one query tile; grid (query tiles, NH, B). dqkv accumulates. */
static __global__ void __launch_bounds__(TC_THREADS)
    attn_tc_dq_kernel(float *dqkv, const float *qkv, const float *dout, const float *lse,
                      const float *Dr, int T, int C, int NH, float scale, int vec)
{
    extern __shared__ __align__(128) unsigned char tc_smem[];
    bf16 *Qs = reinterpret_cast<bf16 *>(tc_smem);              /* (64, LH) */
    bf16 *dOs = Qs + TC_T * TC_LH;                              /* (64, LH) */
    bf16 *Ks = dOs + TC_T * TC_LH;                              /* (64, LH) */
    bf16 *Vs = Ks + TC_T * TC_LH;                               /* (64, LH) */
    float *Ss = reinterpret_cast<float *>(Vs + TC_T * TC_LH);  /* 4 x (16, LS): S */
    float *dPs = Ss + TC_WARPS * 16 * TC_LS;                    /* 4 x (16, LS): dP */
    bf16 *dSs = reinterpret_cast<bf16 *>(dPs + TC_WARPS * 16 * TC_LS); /* 4 x (16, LP): dS */
    const int qt = (int)(gridDim.x - 1 - blockIdx.x), h = (int)blockIdx.y, b = (int)blockIdx.z;
    const int tid = (int)threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int row = lane / 2, half = lane % 2;
    const size_t C3 = (size_t)C * 3;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * TC_D;
    const float *dobase = dout + (size_t)b * T * C + (size_t)h * TC_D;
    const float *lse_h = lse + ((size_t)b * NH + h) * T, *Dr_h = Dr + ((size_t)b * NH + h) * T;
    const int q0 = qt * TC_T, q_last = min(q0 + TC_T, T) - 1;
    const int qg = q0 + warp * 16 + row;
    const float lse_r = qg < T ? lse_h[qg] : 0.0f, Dr_r = qg < T ? Dr_h[qg] : 0.0f;
    float *Sw = Ss + warp * 16 * TC_LS, *dPw = dPs + warp * 16 * TC_LS;
    bf16 *dSw = dSs + warp * 16 * TC_LP;
    tc_frag_a qa[4], doa[4];
    tc_frag_acc dq[4];

#pragma unroll
    for (int n = 0; n < 4; n++)
        wmma::fill_fragment(dq[n], 0.0f);
    tc_load_tile(Qs, base, q0, T, C3, vec);
    tc_load_tile(dOs, dobase, q0, T, (size_t)C, vec);
    for (int k0 = 0; k0 <= q_last; k0 += TC_T) {
        tc_load_tile(Ks, base + C, k0, T, C3, vec);
        tc_load_tile(Vs, base + 2 * (size_t)C, k0, T, C3, vec);
        __syncthreads();
        if (k0 == 0) {
            tc_load_a4(qa, Qs + warp * 16 * TC_LH, TC_LH);
            tc_load_a4(doa, dOs + warp * 16 * TC_LH, TC_LH);
        }
        tc_a_mt_to_slice(Sw, qa, Ks);   /* S = Q K^T */
        tc_a_mt_to_slice(dPw, doa, Vs); /* dP = dO V^T */
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const int c = 2 * i + half, kg = k0 + c;
            const float p =
                (kg <= qg && qg < T) ? expf(Sw[row * TC_LS + c] * scale - lse_r) : 0.0f;
            dSw[row * TC_LP + c] = __float2bfloat16(p * (dPw[row * TC_LS + c] - Dr_r) * scale);
        }
        __syncwarp();
        {
            tc_frag_a dsa[4];
            tc_load_a4(dsa, dSw, TC_LP);
            tc_a_m_acc(dq, dsa, Ks); /* dQ += dS K */
        }
        __syncthreads(); /* Ks, Vs and the slices free for the next tile */
    }
    tc_acc_add_rows(dqkv + (size_t)b * T * C3 + (size_t)h * TC_D, C3, q0 + warp * 16, T, Sw, dq,
                    lane);
}
/* ---- kernels (end) ---- */

/* 1 when the tensor-core kernels take the shape (else the fp32 ones do). */
static int tc_shape_ok(int B, int T, int C, int NH)
{
    return B > 0 && T > 0 && NH > 0 && C % NH == 0 && C / NH == TC_D && NH <= 65535 &&
           B <= 65535;
}

/* 1 if every tile row of qkv and dout starts 16-byte aligned (float4 loads). */
static int tc_vec_ok(const float *qkv, const float *dout, int C)
{
    return C % 4 == 0 && (uintptr_t)qkv % 16 == 0 && (uintptr_t)dout % 16 == 0;
}

void cuda_attention_forward_bf16(float *out, float *lse, const float *qkv, int B, int T, int C,
                                 int NH)
{
    assert(out && lse && qkv);
    if (!tc_shape_ok(B, T, C, NH)) {
        cuda_attention_forward(out, lse, qkv, B, T, C, NH);
        return;
    }
    const dim3 grid((unsigned)((T + TC_T - 1) / TC_T), (unsigned)NH, (unsigned)B);
    const float scale = 1.0f / sqrtf((float)TC_D);
    CUDA_TRY(cudaFuncSetAttribute(attn_tc_fwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  TC_FWD_SMEM));
    attn_tc_fwd_kernel<<<grid, TC_THREADS, TC_FWD_SMEM>>>(out, lse, qkv, T, C, NH, scale,
                                                          tc_vec_ok(qkv, qkv, C));
    LAUNCH_TRY(attn_tc_fwd_kernel);
cleanup:
    return;
}

void cuda_attention_backward_bf16(float *dqkv, float *scratch, const float *dout,
                                  const float *qkv, const float *out, const float *lse, int B,
                                  int T, int C, int NH)
{
    assert(dqkv && scratch && dout && qkv && out && lse);
    if (!tc_shape_ok(B, T, C, NH)) {
        cuda_attention_backward(dqkv, scratch, dout, qkv, out, lse, B, T, C, NH);
        return;
    }
    const size_t n_rows = (size_t)B * NH * T;
    const unsigned rows_per_block = TC_THREADS / 32;
    const dim3 grid((unsigned)((T + TC_T - 1) / TC_T), (unsigned)NH, (unsigned)B);
    const float scale = 1.0f / sqrtf((float)TC_D);
    const int vec = tc_vec_ok(qkv, dout, C);
    CUDA_TRY(cudaFuncSetAttribute(attn_tc_dkv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  TC_DKV_SMEM));
    CUDA_TRY(cudaFuncSetAttribute(attn_tc_dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  TC_DQ_SMEM));
    attn_tc_rowdot_kernel<<<(unsigned)((n_rows + rows_per_block - 1) / rows_per_block),
                            TC_THREADS>>>(scratch, dout, out, T, C, NH, n_rows);
    LAUNCH_TRY(attn_tc_rowdot_kernel);
    attn_tc_dkv_kernel<<<grid, TC_THREADS, TC_DKV_SMEM>>>(dqkv, qkv, dout, lse, scratch, T, C, NH,
                                                          scale, vec);
    LAUNCH_TRY(attn_tc_dkv_kernel);
    attn_tc_dq_kernel<<<grid, TC_THREADS, TC_DQ_SMEM>>>(dqkv, qkv, dout, lse, scratch, T, C, NH,
                                                        scale, vec);
    LAUNCH_TRY(attn_tc_dq_kernel);
cleanup:
    return;
}
