/* attention_tc_cuda.cu - causal multi-head self-attention for the bf16 op
 * table ("cuda-bf16"), FlashAttention-2 style on tensor cores (zinc/ops.h
 * contract with act bf16: qkv, out, dout, dqkv are bf16 bits in memory, lse
 * and scratch fp32; lse = natural-log LSE of the scaled scores; out rounded
 * once to bf16 (nearest even); dqkv accumulates: its old bf16 value plus
 * the fp32 gradient, rounded once; deterministic: no atomics, fixed-order
 * sums).
 *
 * Head size 64 only (GPT-2); any other head size, and empty shapes, go to
 * the CUDA-core kernels of attention_cuda.cu on bf16 storage
 * (cuda_attention_*_fallback_bf16). Operand tiles (q, k, v read through the
 * strided views of qkv (B,T,3C); dout) are bf16 in global memory as in the
 * shared tiles, so they are copied as is, 16 bytes (8 elements) at a time
 * with cp.async (no registers; rows past T zero-filled) when every row of
 * the views is 16-byte aligned, else with 2-byte loads and stores. Shared
 * tile rows are padded to 72 elements (144 bytes: the eight 16-byte rows of
 * an ldmatrix 8x8 fall in distinct banks). Products are mma.sync m16n8k16
 * bf16 with fp32 accumulation (inline PTX); operands come from shared
 * memory with ldmatrix (x4; .trans when the matrix is a B operand read as
 * stored, plain when read transposed), and the score-like tiles S, P, dP,
 * dS never leave registers: an m16n8 accumulator pair is packed to bf16x2
 * and is the A fragment of the next product (FA2 register reuse). Row
 * statistics are reduced over the four lanes of a quad (xor shuffles 1, 2).
 * P and dS are rounded to bf16 before their products; softmax statistics,
 * the scale, D = rowsum(dO * O) and dS = P (dP - D) are fp32. Exponentials
 * are exp2f of scores pre-multiplied by scale * log2(e); lse is stored in
 * natural log. Outputs leave as bf16 pairs (4-byte accesses; 2-byte ones
 * when unaligned).
 *
 * Every block has 8 warps (256 threads); a warp owns 16 rows of the block's
 * tile (queries, or keys in the dK/dV kernel) and walks 64-row tiles of the
 * other side, double buffered in shared memory: the copy of the next tile
 * into the other buffer is issued before the current one is multiplied and
 * waited for after it, one barrier per step. Warps skip (without leaving
 * the barriers) steps that are fully masked for their 16 rows; masks are
 * applied only on diagonal or ragged steps. Blocks run in groups of 16
 * (b, h) pairs, heaviest tiles first within a group (at_block): a group's
 * walked tiles stay in L2.
 *
 * forward (query tiles of 128, heaviest first): per key tile <= the query
 * tile: S = Q K^T, masked, online softmax in the log2 domain (the row's
 * partial sum kept per lane, reduced over the quad at the end), O += P V.
 * out = O / l, lse = (m + log2 l) ln 2.
 *
 * backward, P = exp2(S scale log2e - lse log2e) recomputed:
 *  1. cuda_attention_rowdot (attention_cuda.cu): D (B,NH,T) into scratch;
 *  2. attn_tc_dkv_kernel (key tiles of 128): per query tile of 64 at or
 *     after it: S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q,
 *     accumulators held across the walk (dK scaled once at the end);
 *  3. attn_tc_dq_kernel (query tiles of 128): per key tile of 64 at or
 *     before it: S = Q K^T, dP = dO V^T, dQ += dS K.
 * The two kernels write disjoint parts of dqkv (rows' k, v columns; q
 * columns), each element read-modified-written by one thread: no atomics. */
#include <assert.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_int.h"

typedef __nv_bfloat16 bf16;
typedef __nv_bfloat162 bf16x2;

/* Warp-level and asynchronous-copy primitives (the CPU emulator in
 * .scratch/attn_tc_emu_bf16 defines its own versions of these six with the
 * PTX ISA's fragment layouts and a synchronous copy). */

/* bf16x2 of (lo, hi): lo in the low 16 bits (the lower column index). */
__device__ __forceinline__ uint32_t at_pack(float lo, float hi)
{
    bf16x2 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* ldmatrix x4: lanes 8i..8i+7 give the 16-byte rows of 8x8 matrix i; r[i]
 * receives its row lane/4, columns 2 (lane%4), +1. */
__device__ __forceinline__ void at_ldsm4(uint32_t r[4], const bf16 *p)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* The same, each matrix transposed: r[i] holds its rows 2 (lane%4), +1 of
 * column lane/4. */
__device__ __forceinline__ void at_ldsm4t(uint32_t r[4], const bf16 *p)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* d (16x8 fp32) += a (16x16 bf16, row) b (16x8 bf16, col). */
__device__ __forceinline__ void at_mma(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* 16 bytes global -> shared without registers (sm_80+); src_bytes 0 reads
 * nothing and fills dst with zeros. Both addresses 16-byte aligned. */
__device__ __forceinline__ void at_cp16(bf16 *dst, const uint16_t *src, int src_bytes)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :
                 : "r"(a), "l"(src), "r"(src_bytes)
                 : "memory");
}

/* Waits for this thread's outstanding at_cp16 copies (a barrier after it
 * makes them visible to the block). */
__device__ __forceinline__ void at_cp_wait(void)
{
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}

/* ---- kernels (begin) ---- */
enum {
    AT_D = 64,        /* the one head size these kernels take */
    AT_WARPS = 8,     /* each owns 16 rows of the block's tile */
    AT_THREADS = 256,
    AT_BM = 128,      /* rows of a block's own tile (queries; keys in dK/dV) */
    AT_BN = 64,       /* rows of a walked tile (keys; queries in dK/dV) */
    AT_LD = AT_D + 8, /* bf16 row stride of every shared tile */
    AT_TILE = AT_BN * AT_LD, /* elements of one walked tile */
    AT_GROUP = 16,           /* (b, h) pairs per block group (at_block) */
    /* dynamic shared memory: own tiles (Q | Q, dO | K, V) of 128 rows, two
     * buffers of the walked tiles (K, V | K, V | Q, dO), the dK/dV kernel's
     * two buffers of lse * log2e and D for 64 queries */
    AT_FWD_SMEM = (AT_BM + 4 * AT_BN) * AT_LD * 2,                   /* 55296 */
    AT_DQ_SMEM = (2 * AT_BM + 4 * AT_BN) * AT_LD * 2,                /* 73728 */
    AT_DKV_SMEM = (2 * AT_BM + 4 * AT_BN) * AT_LD * 2 + 4 * AT_BN * 4, /* 74752 */
};

/* Fragments (PTX ISA, mma.m16n8k16 .bf16; g = lane / 4, c = lane % 4):
 * A (16x16) a[0]: row g, cols 2c, 2c+1; a[1]: row g+8, same cols; a[2], a[3]:
 * the same rows at cols 2c+8, +9. B (16x8) b0: rows (k) 2c, 2c+1 of col g;
 * b1: rows 2c+8, +9. C (16x8 fp32) d[0], d[1]: row g, cols 2c, 2c+1; d[2],
 * d[3]: row g+8. A warp's 16 x 64 score-like tile is s[8][4]: s[n] is the
 * m16n8 tile of columns 8n..8n+7. */

/* fp32 -> bf16 bits, round to nearest even; NaN stays NaN (quieted), as
 * the other ops of the bf16 table round their act outputs. */
__device__ __forceinline__ uint32_t at_rne(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (u >> 16) | 0x40u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

/* bf16 bits as fp32. */
__device__ __forceinline__ float at_f(uint32_t bits) { return __uint_as_float(bits << 16); }

/* Rows row0..row0+63 of a (T, 64) bf16 view with row stride `stride`
 * (elements) into the (64, AT_LD) shared tile dst, this thread's share
 * (2 x 16 bytes); rows >= T become 0. vec: cp.async (complete after
 * at_cp_wait), else 2-byte loads and 16-byte shared stores. */
__device__ __forceinline__ void at_copy(bf16 *dst, const uint16_t *src, int row0, int T,
                                        size_t stride, int vec)
{
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int e = (int)threadIdx.x + i * AT_THREADS, r = e / 8, t = row0 + r;
        bf16 *d = dst + r * AT_LD + e % 8 * 8;
        /* a row that exists even when t >= T (T > 0): never read then */
        const uint16_t *p = src + (size_t)min(t, T - 1) * stride + e % 8 * 8;
        if (vec) {
            at_cp16(d, p, t < T ? 16 : 0);
        } else {
            uint32_t w[4] = {0u, 0u, 0u, 0u};
            if (t < T) {
#pragma unroll
                for (int k = 0; k < 4; k++)
                    w[k] = (uint32_t)p[2 * k] | (uint32_t)p[2 * k + 1] << 16;
            }
            *reinterpret_cast<uint4 *>(d) = make_uint4(w[0], w[1], w[2], w[3]);
        }
    }
}

/* a[j] = A fragments of columns 16j.. of the 16 x 64 bf16 rows at M. */
__device__ __forceinline__ void at_load_a(uint32_t a[4][4], const bf16 *M, int lane)
{
#pragma unroll
    for (int j = 0; j < 4; j++)
        at_ldsm4(a[j], M + (lane % 16) * AT_LD + 16 * j + lane / 16 * 8);
}

/* s (16 x 64) = A X^T: a holds A (16 x 64); X is a (64, 64) shared tile, so
 * B[k][n] = X[n][k] is X's rows read as columns (plain ldmatrix). */
__device__ __forceinline__ void at_mul_xt(float s[8][4], const uint32_t a[4][4], const bf16 *X,
                                          int lane)
{
#pragma unroll
    for (int n = 0; n < 8; n++)
        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
#pragma unroll
        for (int np = 0; np < 4; np++) {
            uint32_t b[4];
            at_ldsm4(b, X + (16 * np + lane / 16 * 8 + lane % 8) * AT_LD + 16 * j +
                            lane / 8 % 2 * 8);
            at_mma(s[2 * np], a[j], b[0], b[1]);
            at_mma(s[2 * np + 1], a[j], b[2], b[3]);
        }
    }
}

/* o (16 x 64) += A X: a holds A (16 x 64, e.g. P packed from registers); X
 * is a (64, 64) shared tile read as stored (ldmatrix .trans). */
__device__ __forceinline__ void at_mul_x(float o[8][4], const uint32_t a[4][4], const bf16 *X,
                                         int lane)
{
#pragma unroll
    for (int j = 0; j < 4; j++) {
#pragma unroll
        for (int np = 0; np < 4; np++) {
            uint32_t b[4];
            at_ldsm4t(b, X + (16 * j + lane / 8 % 2 * 8 + lane % 8) * AT_LD + 16 * np +
                             lane / 16 * 8);
            at_mma(o[2 * np], a[j], b[0], b[1]);
            at_mma(o[2 * np + 1], a[j], b[2], b[3]);
        }
    }
}

/* a = the A fragments of the 16 x 64 accumulator tile s rounded to bf16. */
__device__ __forceinline__ void at_to_a(uint32_t a[4][4], const float s[8][4])
{
#pragma unroll
    for (int j = 0; j < 4; j++) {
        a[j][0] = at_pack(s[2 * j][0], s[2 * j][1]);
        a[j][1] = at_pack(s[2 * j][2], s[2 * j][3]);
        a[j][2] = at_pack(s[2 * j + 1][0], s[2 * j + 1][1]);
        a[j][3] = at_pack(s[2 * j + 1][2], s[2 * j + 1][3]);
    }
}

/* Rows r0 = row0 + g and r0 + 8 (those < T) of a bf16 view with row
 * stride `stride`: dst[., 8n + 2c + {0,1}] = bf16(f * acc (+ old value when
 * add)), rounded once; vec: 4-byte accesses (bf16 pairs). */
__device__ __forceinline__ void at_store_rows(uint16_t *dst, size_t stride, int row0, int T,
                                              const float acc[8][4], float f, int add, int vec,
                                              int lane)
{
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int t = row0 + lane / 4 + 8 * hf;
        if (t >= T)
            continue;
        uint16_t *p = dst + (size_t)t * stride + lane % 4 * 2;
#pragma unroll
        for (int n = 0; n < 8; n++) {
            float x = acc[n][2 * hf] * f, y = acc[n][2 * hf + 1] * f;
            if (vec) {
                uint32_t *q = reinterpret_cast<uint32_t *>(p + 8 * n);
                if (add) {
                    const uint32_t old = *q;
                    x += at_f(old & 0xffffu);
                    y += at_f(old >> 16);
                }
                *q = at_rne(x) | at_rne(y) << 16;
            } else {
                if (add) {
                    x += at_f(p[8 * n]);
                    y += at_f(p[8 * n + 1]);
                }
                p[8 * n] = (uint16_t)at_rne(x);
                p[8 * n + 1] = (uint16_t)at_rne(y);
            }
        }
    }
}

/* Block order (1-D grid of n_bh (b, h) pairs x n_tiles own tiles): groups
 * of AT_GROUP pairs, one after the other, so that the tiles a group walks
 * (a head's K, V or Q, dO: 512 KiB at T 1024) stay in L2 while its blocks
 * run; within a group the heaviest tiles (rank 0) of all its pairs first,
 * so that the light ones fill in at the end. */
__device__ __forceinline__ void at_block(int n_tiles, int n_bh, int *rank, int *bh)
{
    const int per = AT_GROUP * n_tiles, grp = (int)blockIdx.x / per;
    const int idx = (int)blockIdx.x % per, gsize = min((int)AT_GROUP, n_bh - grp * AT_GROUP);
    *rank = idx / gsize;
    *bh = grp * AT_GROUP + idx % gsize;
}

/* out (B,T,C) bf16, lse (B,NH,T) fp32 from qkv (B,T,3C) bf16; 1-D grid in
 * at_block order. sl2 = scale * log2(e). */
template <int MINB>
static __global__ void __launch_bounds__(AT_THREADS, MINB)
    attn_tc_fwd_kernel(uint16_t *out, float *lse, const uint16_t *qkv, int B, int T, int C,
                       int NH, float sl2, int vec)
{
    extern __shared__ __align__(128) unsigned char tc_smem[];
    bf16 *Qs = reinterpret_cast<bf16 *>(tc_smem); /* (128, LD) */
    bf16 *KV = Qs + AT_BM * AT_LD;                 /* buffer i: K at 2i, V at 2i+1 tiles */
    const int n_tiles = (T + AT_BM - 1) / AT_BM;
    int rank, bh;
    at_block(n_tiles, B * NH, &rank, &bh);
    const int h = bh % NH, b = bh / NH, q0 = (n_tiles - 1 - rank) * AT_BM; /* last first */
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int g = lane / 4, c2 = lane % 4 * 2;
    const size_t C3 = (size_t)C * 3;
    const uint16_t *base = qkv + (size_t)b * T * C3 + (size_t)h * AT_D;
    const int wq0 = q0 + 16 * warp;            /* the warp's first query */
    const int w_last = min(wq0 + 15, T - 1);   /* its last (< wq0 if none) */
    const int n_kt = (min(q0 + AT_BM, T) - 1) / AT_BN + 1;
    uint32_t qa[4][4];
    float o[8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

#pragma unroll
    for (int n = 0; n < 8; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    at_copy(Qs, base, q0, T, C3, vec);
    at_copy(Qs + AT_TILE, base, q0 + AT_BN, T, C3, vec);
    at_copy(KV, base + C, 0, T, C3, vec);
    at_copy(KV + AT_TILE, base + 2 * (size_t)C, 0, T, C3, vec);
    at_cp_wait();
    __syncthreads();
    at_load_a(qa, Qs + 16 * warp * AT_LD, lane);
    for (int kt = 0; kt < n_kt; kt++) {
        const int k0 = kt * AT_BN;
        const bf16 *Ks = KV + (kt % 2) * 2 * AT_TILE, *Vs = Ks + AT_TILE;
        if (kt + 1 < n_kt) { /* into the other buffer, freed by the last barrier */
            bf16 *nb = KV + ((kt + 1) % 2) * 2 * AT_TILE;
            at_copy(nb, base + C, k0 + AT_BN, T, C3, vec);
            at_copy(nb + AT_TILE, base + 2 * (size_t)C, k0 + AT_BN, T, C3, vec);
        }
        if (k0 <= w_last) { /* warp-uniform; then k0 <= wq0 (both tile-aligned) */
            float s[8][4];
            uint32_t pa[4][4];
            at_mul_xt(s, qa, Ks, lane); /* S = Q K^T (unscaled) */
            if (k0 + AT_BN > wq0 || k0 + AT_BN > T) {
#pragma unroll
                for (int n = 0; n < 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int col = k0 + 8 * n + c2 + e % 2, row = wq0 + g + e / 2 * 8;
                        if (col > row || col >= T)
                            s[n][e] = -INFINITY;
                    }
            }
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                float mx = -INFINITY;
#pragma unroll
                for (int n = 0; n < 8; n++)
                    mx = fmaxf(mx, fmaxf(s[n][2 * hf], s[n][2 * hf + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mn = fmaxf(m[hf], mx * sl2);
                /* a row with no key yet keeps zeros (none here: key k0 <= row) */
                const float mref = mn == -INFINITY ? 0.0f : mn;
                const float alpha = exp2f(m[hf] - mref);
                float ps = 0.0f;
#pragma unroll
                for (int n = 0; n < 8; n++) {
                    s[n][2 * hf] = exp2f(fmaf(s[n][2 * hf], sl2, -mref));
                    s[n][2 * hf + 1] = exp2f(fmaf(s[n][2 * hf + 1], sl2, -mref));
                    ps += s[n][2 * hf] + s[n][2 * hf + 1];
                    o[n][2 * hf] *= alpha;
                    o[n][2 * hf + 1] *= alpha;
                }
                l[hf] = l[hf] * alpha + ps; /* this lane's part of the row sum */
                m[hf] = mn;
            }
            at_to_a(pa, s);
            at_mul_x(o, pa, Vs, lane); /* O += P V */
        }
        at_cp_wait();
        __syncthreads(); /* the next buffer written; this one free */
    }
    float inv[2];
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        l[hf] += __shfl_xor_sync(0xffffffffu, l[hf], 1);
        l[hf] += __shfl_xor_sync(0xffffffffu, l[hf], 2);
        inv[hf] = 1.0f / l[hf];
        const int t = wq0 + g + 8 * hf;
        if (lane % 4 == 0 && t < T)
            lse[((size_t)b * NH + h) * T + t] = m[hf] * 0.69314718f + logf(l[hf]);
    }
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            o[n][e] *= inv[e / 2];
    at_store_rows(out + (size_t)b * T * C + (size_t)h * AT_D, (size_t)C, wq0, T, o, 1.0f, 0, vec,
                  lane);
}

/* dQ for one query tile of 128; 1-D grid in at_block order. dqkv, qkv, dout
 * bf16; dqkv accumulates. sl2 = scale * log2(e). */
template <int MINB>
static __global__ void __launch_bounds__(AT_THREADS, MINB)
    attn_tc_dq_kernel(uint16_t *dqkv, const uint16_t *qkv, const uint16_t *dout,
                      const float *lse, const float *Dr, int B, int T, int C, int NH, float scale,
                      float sl2, int vec)
{
    extern __shared__ __align__(128) unsigned char tc_smem[];
    bf16 *Qs = reinterpret_cast<bf16 *>(tc_smem); /* (128, LD) */
    bf16 *dOs = Qs + AT_BM * AT_LD;                /* (128, LD) */
    bf16 *KV = dOs + AT_BM * AT_LD;                /* buffer i: K at 2i, V at 2i+1 tiles */
    const int n_tiles = (T + AT_BM - 1) / AT_BM;
    int rank, bh;
    at_block(n_tiles, B * NH, &rank, &bh);
    const int h = bh % NH, b = bh / NH, q0 = (n_tiles - 1 - rank) * AT_BM; /* last first */
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int g = lane / 4, c2 = lane % 4 * 2;
    const size_t C3 = (size_t)C * 3;
    const uint16_t *base = qkv + (size_t)b * T * C3 + (size_t)h * AT_D;
    const uint16_t *dobase = dout + (size_t)b * T * C + (size_t)h * AT_D;
    const float *lse_h = lse + ((size_t)b * NH + h) * T, *Dr_h = Dr + ((size_t)b * NH + h) * T;
    const int wq0 = q0 + 16 * warp, w_last = min(wq0 + 15, T - 1);
    const int n_kt = (min(q0 + AT_BM, T) - 1) / AT_BN + 1;
    uint32_t qa[4][4], da[4][4];
    float dq[8][4], lse2[2], Dv[2];

    at_copy(Qs, base, q0, T, C3, vec);
    at_copy(Qs + AT_TILE, base, q0 + AT_BN, T, C3, vec);
    at_copy(dOs, dobase, q0, T, (size_t)C, vec);
    at_copy(dOs + AT_TILE, dobase, q0 + AT_BN, T, (size_t)C, vec);
    at_copy(KV, base + C, 0, T, C3, vec);
    at_copy(KV + AT_TILE, base + 2 * (size_t)C, 0, T, C3, vec);
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int t = wq0 + g + 8 * hf;
        lse2[hf] = t < T ? lse_h[t] * 1.44269504f : 0.0f;
        Dv[hf] = t < T ? Dr_h[t] : 0.0f;
    }
#pragma unroll
    for (int n = 0; n < 8; n++)
        dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
    at_cp_wait();
    __syncthreads();
    at_load_a(qa, Qs + 16 * warp * AT_LD, lane);
    at_load_a(da, dOs + 16 * warp * AT_LD, lane);
    for (int kt = 0; kt < n_kt; kt++) {
        const int k0 = kt * AT_BN;
        const bf16 *Ks = KV + (kt % 2) * 2 * AT_TILE, *Vs = Ks + AT_TILE;
        if (kt + 1 < n_kt) { /* into the other buffer, freed by the last barrier */
            bf16 *nb = KV + ((kt + 1) % 2) * 2 * AT_TILE;
            at_copy(nb, base + C, k0 + AT_BN, T, C3, vec);
            at_copy(nb + AT_TILE, base + 2 * (size_t)C, k0 + AT_BN, T, C3, vec);
        }
        if (k0 <= w_last) {
            float s[8][4], dp[8][4];
            uint32_t dsa[4][4];
            at_mul_xt(s, qa, Ks, lane);  /* S = Q K^T */
            at_mul_xt(dp, da, Vs, lane); /* dP = dO V^T */
            const int masked = k0 + AT_BN > wq0 || k0 + AT_BN > T;
#pragma unroll
            for (int n = 0; n < 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int col = k0 + 8 * n + c2 + e % 2, row = wq0 + g + e / 2 * 8;
                    float p = exp2f(fmaf(s[n][e], sl2, -lse2[e / 2]));
                    if (masked && (col > row || col >= T))
                        p = 0.0f;
                    s[n][e] = p * (dp[n][e] - Dv[e / 2]); /* dS / scale */
                }
            at_to_a(dsa, s);
            at_mul_x(dq, dsa, Ks, lane); /* dQ += dS K */
        }
        at_cp_wait();
        __syncthreads();
    }
    at_store_rows(dqkv + (size_t)b * T * C3 + (size_t)h * AT_D, C3, wq0, T, dq, scale, 1, vec,
                  lane);
}

/* dK, dV for one key tile of 128; 1-D grid in at_block order. dqkv, qkv,
 * dout bf16; dqkv accumulates. */
static __global__ void __launch_bounds__(AT_THREADS)
    attn_tc_dkv_kernel(uint16_t *dqkv, const uint16_t *qkv, const uint16_t *dout,
                       const float *lse, const float *Dr, int B, int T, int C, int NH,
                       float scale, float sl2, int vec)
{
    extern __shared__ __align__(128) unsigned char tc_smem[];
    bf16 *Ks = reinterpret_cast<bf16 *>(tc_smem); /* (128, LD) */
    bf16 *Vs = Ks + AT_BM * AT_LD;                 /* (128, LD) */
    bf16 *QD = Vs + AT_BM * AT_LD;                 /* buffer i: Q at 2i, dO at 2i+1 tiles */
    float *LD_s = reinterpret_cast<float *>(QD + 4 * AT_TILE); /* buffer i: lse2 | D (2 x 64) */
    int rank, bh;
    at_block((T + AT_BM - 1) / AT_BM, B * NH, &rank, &bh);
    const int h = bh % NH, b = bh / NH, k0 = rank * AT_BM; /* first keys first */
    const int tid = (int)threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, c2 = lane % 4 * 2;
    const size_t C3 = (size_t)C * 3;
    const uint16_t *base = qkv + (size_t)b * T * C3 + (size_t)h * AT_D;
    const uint16_t *dobase = dout + (size_t)b * T * C + (size_t)h * AT_D;
    const float *lse_h = lse + ((size_t)b * NH + h) * T, *Dr_h = Dr + ((size_t)b * NH + h) * T;
    const int wk0 = k0 + 16 * warp; /* the warp's first key */
    /* query tiles k0, k0 + 64, ... (the first that reach these keys) */
    const int n_qt = (T - k0 + AT_BN - 1) / AT_BN;
    float lf = 0.0f;
    uint32_t ka[4][4], va[4][4];
    float dk[8][4], dv[8][4];

    /* this thread's lse2 (tid < 64) or D (64 <= tid < 128) of query tile q */
    auto fetch_ld = [&](int q) {
        const int t = q + tid % AT_BN;
        lf = 0.0f;
        if (tid < 2 * AT_BN && t < T)
            lf = tid < AT_BN ? lse_h[t] * 1.44269504f : Dr_h[t];
    };
    at_copy(Ks, base + C, k0, T, C3, vec);
    at_copy(Ks + AT_TILE, base + C, k0 + AT_BN, T, C3, vec);
    at_copy(Vs, base + 2 * (size_t)C, k0, T, C3, vec);
    at_copy(Vs + AT_TILE, base + 2 * (size_t)C, k0 + AT_BN, T, C3, vec);
    at_copy(QD, base, k0, T, C3, vec);
    at_copy(QD + AT_TILE, dobase, k0, T, (size_t)C, vec);
    fetch_ld(k0);
#pragma unroll
    for (int n = 0; n < 8; n++) {
        dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.0f;
        dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.0f;
    }
    if (tid < 2 * AT_BN)
        LD_s[tid] = lf;
    at_cp_wait();
    __syncthreads();
    at_load_a(ka, Ks + 16 * warp * AT_LD, lane);
    at_load_a(va, Vs + 16 * warp * AT_LD, lane);
    for (int qt = 0; qt < n_qt; qt++) {
        const int q0 = k0 + qt * AT_BN;
        const bf16 *Qs = QD + (qt % 2) * 2 * AT_TILE, *dOs = Qs + AT_TILE;
        const float *lse2 = LD_s + (qt % 2) * 2 * AT_BN, *Dq = lse2 + AT_BN;
        const int active = wk0 < T && q0 + AT_BN - 1 >= wk0; /* warp-uniform */
        if (qt + 1 < n_qt) { /* into the other buffer, freed by the last barrier */
            bf16 *nb = QD + ((qt + 1) % 2) * 2 * AT_TILE;
            at_copy(nb, base, q0 + AT_BN, T, C3, vec);
            at_copy(nb + AT_TILE, dobase, q0 + AT_BN, T, (size_t)C, vec);
            fetch_ld(q0 + AT_BN);
        }
        if (active) {
            float s[8][4], dp[8][4];
            uint32_t pa[4][4];
            at_mul_xt(s, ka, Qs, lane);   /* S^T = K Q^T */
            at_mul_xt(dp, va, dOs, lane); /* dP^T = V dO^T */
            const int masked = q0 < wk0 + 16 || q0 + AT_BN > T;
#pragma unroll
            for (int n = 0; n < 8; n++) {
                const float2 l2 = *reinterpret_cast<const float2 *>(lse2 + 8 * n + c2);
                const float2 d2 = *reinterpret_cast<const float2 *>(Dq + 8 * n + c2);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int q = q0 + 8 * n + c2 + e % 2, key = wk0 + g + e / 2 * 8;
                    float p = exp2f(fmaf(s[n][e], sl2, -(e % 2 ? l2.y : l2.x)));
                    if (masked && (q < key || q >= T))
                        p = 0.0f;
                    s[n][e] = p;
                    dp[n][e] = p * (dp[n][e] - (e % 2 ? d2.y : d2.x)); /* dS^T / scale */
                }
            }
            at_to_a(pa, s);
            at_mul_x(dv, pa, dOs, lane); /* dV += P^T dO */
            at_to_a(pa, dp);
            at_mul_x(dk, pa, Qs, lane); /* dK += dS^T Q */
        }
        if (qt + 1 < n_qt && tid < 2 * AT_BN)
            LD_s[((qt + 1) % 2) * 2 * AT_BN + tid] = lf;
        at_cp_wait();
        __syncthreads();
    }
    uint16_t *dkbase = dqkv + (size_t)b * T * C3 + C + (size_t)h * AT_D;
    at_store_rows(dkbase, C3, wk0, T, dk, scale, 1, vec, lane);
    at_store_rows(dkbase + C, C3, wk0, T, dv, 1.0f, 1, vec, lane);
}
/* ---- kernels (end) ---- */

/* 1 when the tensor-core kernels take the shape (else the CUDA-core ones do). */
static int tc_shape_ok(int B, int T, int C, int NH)
{
    return B > 0 && T > 0 && NH > 0 && C % NH == 0 && C / NH == AT_D &&
           (size_t)B * NH * (size_t)((T + AT_BM - 1) / AT_BM + AT_GROUP) <= INT_MAX;
}

/* 1 if every tile row of the inputs starts 16-byte aligned (cp.async of
 * 8 bf16) and of the outputs 4-byte aligned (bf16 pairs). */
static int tc_vec_ok(const void *in1, const void *in2, const void *out1, int C)
{
    return C % 8 == 0 && (uintptr_t)in1 % 16 == 0 && (uintptr_t)in2 % 16 == 0 &&
           (uintptr_t)out1 % 4 == 0;
}

static const float tc_log2e = 1.44269504f;

/* Blocks per SM the forward and dQ kernels are compiled for: 1 (registers
 * as needed, 8 warps per SM) or 2 (at most 128 registers a thread, a few
 * bytes spilled, 16 warps per SM). ZINC_CUDA_ATT_MINB=1|2 picks (default 2,
 * the faster on an H200); the results are the same bits either way. */
static int tc_minb(void)
{
    static int v = 0;
    if (!v) {
        const char *e = getenv("ZINC_CUDA_ATT_MINB");
        v = e && atoi(e) == 1 ? 1 : 2;
    }
    return v;
}

void cuda_attention_forward_bf16(void *out, float *lse, const void *qkv, int B, int T, int C,
                                 int NH)
{
    assert(out && lse && qkv);
    if (!tc_shape_ok(B, T, C, NH)) {
        cuda_attention_forward_fallback_bf16(out, lse, qkv, B, T, C, NH);
        return;
    }
    const unsigned grid = (unsigned)((size_t)B * NH * (size_t)((T + AT_BM - 1) / AT_BM));
    const float scale = 1.0f / sqrtf((float)AT_D);
    if (tc_minb() == 2) {
        CUDA_TRY(cudaFuncSetAttribute(attn_tc_fwd_kernel<2>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, AT_FWD_SMEM));
        attn_tc_fwd_kernel<2><<<grid, AT_THREADS, AT_FWD_SMEM>>>(
            (uint16_t *)out, lse, (const uint16_t *)qkv, B, T, C, NH, scale * tc_log2e,
            tc_vec_ok(qkv, qkv, out, C));
    } else {
        CUDA_TRY(cudaFuncSetAttribute(attn_tc_fwd_kernel<1>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, AT_FWD_SMEM));
        attn_tc_fwd_kernel<1><<<grid, AT_THREADS, AT_FWD_SMEM>>>(
            (uint16_t *)out, lse, (const uint16_t *)qkv, B, T, C, NH, scale * tc_log2e,
            tc_vec_ok(qkv, qkv, out, C));
    }
    LAUNCH_TRY(attn_tc_fwd_kernel);
cleanup:
    return;
}

void cuda_attention_backward_bf16(void *dqkv, float *scratch, const void *dout, const void *qkv,
                                  const void *out, const float *lse, int B, int T, int C, int NH)
{
    assert(dqkv && scratch && dout && qkv && out && lse);
    if (!tc_shape_ok(B, T, C, NH)) {
        cuda_attention_backward_fallback_bf16(dqkv, scratch, dout, qkv, out, lse, B, T, C, NH);
        return;
    }
    const unsigned grid = (unsigned)((size_t)B * NH * (size_t)((T + AT_BM - 1) / AT_BM));
    const float scale = 1.0f / sqrtf((float)AT_D);
    const int vec = tc_vec_ok(qkv, dout, dqkv, C);
    uint16_t *dx = (uint16_t *)dqkv;
    const uint16_t *x = (const uint16_t *)qkv, *dy = (const uint16_t *)dout;
    CUDA_TRY(cudaFuncSetAttribute(attn_tc_dkv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  AT_DKV_SMEM));
    CUDA_TRY(cudaFuncSetAttribute(attn_tc_dq_kernel<1>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, AT_DQ_SMEM));
    CUDA_TRY(cudaFuncSetAttribute(attn_tc_dq_kernel<2>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, AT_DQ_SMEM));
    if (!cuda_attention_rowdot(scratch, dout, out, ZINC_DTYPE_BF16, B, T, C, NH))
        goto cleanup;
    attn_tc_dkv_kernel<<<grid, AT_THREADS, AT_DKV_SMEM>>>(dx, x, dy, lse, scratch, B, T, C, NH,
                                                          scale, scale * tc_log2e, vec);
    LAUNCH_TRY(attn_tc_dkv_kernel);
    if (tc_minb() == 2)
        attn_tc_dq_kernel<2><<<grid, AT_THREADS, AT_DQ_SMEM>>>(dx, x, dy, lse, scratch, B, T, C,
                                                               NH, scale, scale * tc_log2e, vec);
    else
        attn_tc_dq_kernel<1><<<grid, AT_THREADS, AT_DQ_SMEM>>>(dx, x, dy, lse, scratch, B, T, C,
                                                               NH, scale, scale * tc_log2e, vec);
    LAUNCH_TRY(attn_tc_dq_kernel);
cleanup:
    return;
}
