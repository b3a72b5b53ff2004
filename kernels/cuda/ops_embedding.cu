/* ops_embedding.cu - the embedding ops of both tables: the forward
 * (token plus position rows) and the backward into the token and position
 * tables, summed in a fixed order without atomics. The token table may be
 * a slice of the vocabulary (tensor parallelism: rows [v0, v0+V)); tokens
 * outside it read zeros and add nothing. */

/* The embedding table gradient is owned per (row bucket, column): the
 * thread for column c and bucket j walks the tokens in order and adds
 * only rows v with v % buckets == j, so repeated tokens never race and
 * each row receives its contributions in token order, as on the CPU. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_int.h"

enum {
    EMB_THREADS = 256,         /* threads per block of the embedding table gradient */
    EMB_CHUNK = 64,            /* sorted tokens per block of the embedding table gradient */
};

/* ------------------------------------------------------------------ */
/* embedding                                                           */
/* ------------------------------------------------------------------ */

/* The row of token tok (>= 0) in a table of the rows [v0, v0+V), or -1
 * when the table does not hold it. */
static __device__ __forceinline__ int emb_row(int32_t tok, int v0, int V)
{
    const int r = tok - v0; /* tok, v0 >= 0: no overflow */
    return r >= 0 && r < V ? r : -1;
}

/* out(B,T,C) = wte[tokens[b,t] - v0] (0 outside [v0, v0+V)) + wpe[t]
 * (wpe may be NULL: not added); a grid-stride loop over the elements. */
template <class T>
static __global__ void embedding_forward_kernel(T *out, const int32_t *tokens, const float *wte,
                                                const float *wpe, int Tn, int C, int v0, int V,
                                                size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t bt = i / (size_t)C;
        const int c = (int)(i % (size_t)C);
        const int t = (int)(bt % (size_t)Tn);
        const int32_t tok = tokens[bt];
        assert(tok >= 0);
        const int r = emb_row(tok, v0, V);
        const float e = r >= 0 ? wte[(size_t)r * C + c] : 0.0f;
        act_st(out, i, wpe ? e + wpe[(size_t)t * C + c] : e);
    }
}

/* pos[i] = i: the positions that the radix sort orders by token. */
static __global__ void iota_kernel(int32_t *pos, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        pos[i] = i;
}

/* dwte(V,C) += dout rows by token (those in [v0, v0+V), at row tok - v0;
 * the runs of other tokens are passed over), from the positions sorted by token
 * (stable: ascending position within a token), in two kernels so that a
 * token that fills much of the batch (the space of source code) is summed
 * by many blocks, and every sum has a fixed order (no atomics).
 * The sorted entries are cut into chunks of EMB_CHUNK; a chunk's entries
 * fall into segments of equal tokens. Kernel 1, block per chunk: a
 * segment that is a whole run (its token appears nowhere else) is summed,
 * in position order, and added to dwte at once; the chunk's first and last
 * segments, when their run crosses into the previous or next chunk, are
 * stored as the chunk's partials first[c] and last[c] instead. Kernel 2,
 * block per chunk where a crossing run starts: last[c] + first[c+1] + ...
 * in chunk order, added to dwte once. */
template <class T>
static __global__ void __launch_bounds__(EMB_THREADS)
    emb_wte_chunk_kernel(float *dwte, float *first, float *last, const T *dout,
                         const int32_t *tok_sorted, const int32_t *pos_sorted, int BT, int C,
                         int v0, int V)
{
    __shared__ int32_t tok_s[EMB_CHUNK], pos_s[EMB_CHUNK];
    const int c = blockIdx.x, lo = c * EMB_CHUNK, hi = min(lo + EMB_CHUNK, BT), n = hi - lo;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        tok_s[i] = tok_sorted[lo + i];
        pos_s[i] = pos_sorted[lo + i];
    }
    __syncthreads();
    const int cont_prev = lo > 0 && tok_sorted[lo - 1] == tok_s[0];
    const int cont_next = hi < BT && tok_sorted[hi] == tok_s[n - 1];
    for (int col = threadIdx.x; col < C; col += blockDim.x) {
        for (int s0 = 0; s0 < n;) {
            const int32_t tok = tok_s[s0];
            int e = s0 + 1;
            while (e < n && tok_s[e] == tok)
                e++;
            const int row = emb_row(tok, v0, V);
            if (row < 0) { /* not this table's: neither summed nor a partial */
                s0 = e;
                continue;
            }
            float acc = 0.0f;
            int j = s0;
            for (; j + 4 <= e; j += 4) { /* four independent loads in flight */
                const float v0 = act_ld(dout, (size_t)pos_s[j] * C + col);
                const float v1 = act_ld(dout, (size_t)pos_s[j + 1] * C + col);
                const float v2 = act_ld(dout, (size_t)pos_s[j + 2] * C + col);
                const float v3 = act_ld(dout, (size_t)pos_s[j + 3] * C + col);
                acc += v0;
                acc += v1;
                acc += v2;
                acc += v3;
            }
            for (; j < e; j++)
                acc += act_ld(dout, (size_t)pos_s[j] * C + col);
            const int is_first = s0 == 0, is_last = e == n;
            if ((is_first && cont_prev) || (is_last && cont_next)) {
                if (is_first)
                    first[(size_t)c * C + col] = acc;
                if (is_last)
                    last[(size_t)c * C + col] = acc;
            } else {
                dwte[(size_t)row * C + col] += acc;
            }
            s0 = e;
        }
    }
}

static __global__ void __launch_bounds__(EMB_THREADS)
    emb_wte_cross_kernel(float *dwte, const float *first, const float *last,
                         const int32_t *tok_sorted, int BT, int C, int v0, int V)
{
    const int c = blockIdx.x, lo = c * EMB_CHUNK, hi = min(lo + EMB_CHUNK, BT);
    const int32_t t = tok_sorted[hi - 1];
    if (hi >= BT || tok_sorted[hi] != t) /* the chunk's last run ends here */
        return;
    if (lo > 0 && tok_sorted[lo - 1] == t) /* sorted: the run began in an earlier chunk */
        return;
    const int row = emb_row(t, v0, V);
    if (row < 0) /* not this table's: the chunk kernel left no partials */
        return;
    for (int col = threadIdx.x; col < C; col += blockDim.x) {
        float acc = last[(size_t)c * C + col];
        for (int c2 = c + 1;; c2++) { /* chunk c2 begins with t */
            acc += first[(size_t)c2 * C + col];
            const int hi2 = min((c2 + 1) * EMB_CHUNK, BT);
            if (!(hi2 < BT && tok_sorted[hi2 - 1] == t && tok_sorted[hi2] == t))
                break; /* the run ends in chunk c2 */
        }
        dwte[(size_t)row * C + col] += acc;
    }
}

/* dwpe(T,C) += sum over b of dout(B,T,C)[b], b in order; thread per (t, c). */
template <class T>
static __global__ void embedding_backward_wpe_kernel(float *dwpe, const T *dout, int B, int Tn,
                                                     int C)
{
    const size_t n = (size_t)Tn * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float s = dwpe[i];
        for (int b = 0; b < B; b++)
            s += act_ld(dout, (size_t)b * n + i);
        dwpe[i] = s;
    }
}

template <class A>
void cuda_embedding_forward(void *out, const int32_t *tokens, const int32_t *pos, const float *wte,
                            const float *wpe, int B, int T, int C, int v0, int V)
{
    assert(out && tokens && wte && B >= 0 && T >= 0 && C > 0 && v0 >= 0 && V > 0);
    if (pos) { /* the engine refuses documents on cuda before a step gets here */
        cuda_fail(ZINC_ERR_UNSUPPORTED, "embedding_forward", __FILE__, __LINE__,
                  "positions that restart per document are not done on cuda yet");
        return;
    }
    const size_t n = (size_t)B * T * C;
    if (n == 0)
        return;
    embedding_forward_kernel<A><<<cuda_ew_grid(n), EW_BLOCK>>>((A *)out, tokens, wte, wpe, T, C,
                                                                v0, V, n);
    LAUNCH_TRY(embedding_forward_kernel);
cleanup:
    return;
}

template <class A>
void cuda_embedding_backward(float *dwte, float *dwpe, const void *dout, const int32_t *tokens,
                             const int32_t *tpos, int B, int T, int C, int v0, int V)
{
    assert(dout && tokens && B >= 0 && T >= 0 && C > 0 && v0 >= 0 && V > 0);
    if (tpos) {
        cuda_fail(ZINC_ERR_UNSUPPORTED, "embedding_backward", __FILE__, __LINE__,
                  "positions that restart per document are not done on cuda yet");
        return;
    }
    if ((size_t)B * T == 0)
        return;
    if (dwte) { /* NULL: a frozen table */
        /* scratch: sorted tokens, positions, sorted positions, the chunks'
         * partials (first, last), the sort's temporaries */
        const int BT = B * T, nch = (BT + EMB_CHUNK - 1) / EMB_CHUNK;
        const size_t ib = ((size_t)BT * sizeof(int32_t) + 255) / 256 * 256;
        const size_t pb = ((size_t)nch * C * sizeof(float) + 255) / 256 * 256;
        size_t temp = 0;
        char *base;
        int32_t *tok_sorted, *pos, *pos_sorted;
        float *first, *last;
        CUDA_TRY(cub::DeviceRadixSort::SortPairs(NULL, temp, tokens, (int32_t *)NULL,
                                                 (const int32_t *)NULL, (int32_t *)NULL, BT));
        base = (char *)cuda_scratch(3 * ib + 2 * pb + temp);
        if (!base)
            goto cleanup;
        tok_sorted = (int32_t *)base;
        pos = (int32_t *)(base + ib);
        pos_sorted = (int32_t *)(base + 2 * ib);
        first = (float *)(base + 3 * ib);
        last = (float *)(base + 3 * ib + pb);
        iota_kernel<<<(BT + 255) / 256, 256>>>(pos, BT);
        LAUNCH_TRY(iota_kernel);
        CUDA_TRY(cub::DeviceRadixSort::SortPairs(base + 3 * ib + 2 * pb, temp, tokens,
                                                 tok_sorted, pos, pos_sorted, BT, 0, 32,
                                                 (cudaStream_t)0));
        emb_wte_chunk_kernel<A><<<nch, EMB_THREADS>>>(dwte, first, last, (const A *)dout,
                                                      tok_sorted, pos_sorted, BT, C, v0, V);
        LAUNCH_TRY(emb_wte_chunk_kernel);
        emb_wte_cross_kernel<<<nch, EMB_THREADS>>>(dwte, first, last, tok_sorted, BT, C, v0, V);
        LAUNCH_TRY(emb_wte_cross_kernel);
    }
    if (dwpe) {
        embedding_backward_wpe_kernel<A><<<cuda_ew_grid((size_t)T * C), EW_BLOCK>>>(
            dwpe, (const A *)dout, B, T, C);
        LAUNCH_TRY(embedding_backward_wpe_kernel);
    }
cleanup:
    return;
}

/* The tables' two act types (ops_tables.cu). */
template void cuda_embedding_forward<float>(void *, const int32_t *, const int32_t *, const float *,
                                            const float *, int, int, int, int, int);
template void cuda_embedding_forward<bf16>(void *, const int32_t *, const int32_t *, const float *,
                                           const float *, int, int, int, int, int);
template void cuda_embedding_backward<float>(float *, float *, const void *, const int32_t *,
                                             const int32_t *, int, int, int, int, int);
template void cuda_embedding_backward<bf16>(float *, float *, const void *, const int32_t *,
                                            const int32_t *, int, int, int, int, int);
