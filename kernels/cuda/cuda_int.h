/* cuda_int.h - private to kernels/cuda: the check macros every CUDA, cuBLAS
 * and cuBLASLt call goes through, and the process-wide lazy state (cuBLASLt
 * handle, workspace, scratch) that the kernels/cuda sources share.
 * Nothing outside kernels/cuda includes this file. */
#ifndef ZINC_CUDA_INT_H
#define ZINC_CUDA_INT_H

#include <stddef.h>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "zinc/status.h"
#include "zinc/tensor.h"

/* Records a failed foreign call: sets this thread's zinc_last_error() to
 * "call: file:line: message" (call cut at its first '(') and keeps it as the
 * process-wide first error that zinc_cuda_last_status() reports, unless an
 * earlier one is still pending. */
void cuda_fail(zinc_status s, const char *call, const char *file, int line, const char *msg);

/* Check macros: on failure they record through cuda_fail and jump to the
 * function's `cleanup` label (one per function). In C++ a goto may not
 * cross an initialized declaration, so functions declare their locals
 * before the first *_TRY. */
#define CUDA_TRY(call)                                                                  \
    do {                                                                                \
        const cudaError_t e_ = (call);                                                  \
        if (e_ != cudaSuccess) {                                                        \
            cuda_fail(e_ == cudaErrorMemoryAllocation ? ZINC_ERR_NOMEM : ZINC_ERR_CUDA, \
                      #call, __FILE__, __LINE__, cudaGetErrorString(e_));               \
            goto cleanup;                                                               \
        }                                                                               \
    } while (0)

#define CUBLAS_TRY(call)                                                                  \
    do {                                                                                  \
        const cublasStatus_t s_ = (call);                                                 \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                \
            cuda_fail(s_ == CUBLAS_STATUS_ALLOC_FAILED ? ZINC_ERR_NOMEM : ZINC_ERR_CUDA,  \
                      #call, __FILE__, __LINE__, cublasGetStatusString(s_));              \
            goto cleanup;                                                                 \
        }                                                                                 \
    } while (0)

/* After a <<<...>>> launch: a bad configuration (or an earlier asynchronous
 * fault) shows up here; `kernel` names it in the message. */
#define LAUNCH_TRY(kernel)                                                              \
    do {                                                                                \
        const cudaError_t e_ = cudaGetLastError();                                      \
        if (e_ != cudaSuccess) {                                                        \
            cuda_fail(ZINC_ERR_CUDA, "launch " #kernel, __FILE__, __LINE__,             \
                      cudaGetErrorString(e_));                                          \
            goto cleanup;                                                               \
        }                                                                               \
    } while (0)

/* Bytes of the cuBLASLt workspace (32 MiB: what cuBLAS asks for on Hopper). */
#define CUDA_LT_WS_BYTES ((size_t)32 << 20)

/* The lazy process-wide state, bound to the device current when it is
 * first created. Returns 1 when it is ready for the current device, 0 after
 * recording an error (creation failed, or another device is current). */
int cuda_state_get(void);
/* The cuBLASLt handle and its workspace; valid after cuda_state_get() == 1. */
cublasLtHandle_t cuda_lt_handle(void);
void *cuda_lt_workspace(void);
/* A device scratch buffer of at least n_bytes, reused by every op (they all
 * run in order on stream 0, so one op's use ends before the next starts).
 * Growing it frees the old buffer (cudaFree synchronizes the device).
 * Returns NULL after recording an error. Requires cuda_state_get() == 1. */
void *cuda_scratch(size_t n_bytes);

/* device_cuda.cu: frees the device memory cache's free blocks (after a
 * failed cudaMalloc elsewhere), and counts memory allocated outside the
 * device's alloc (the scratch) in its live/peak bytes. */
void cuda_cache_release(void);
void cuda_mem_note(long long delta_bytes);

/* attention_cuda.cu: the "cuda" table's attention entries (zinc/ops.h
 * contract, act f32, flash style on CUDA cores; stream 0; errors through
 * cuda_fail). */
void cuda_attention_forward(float *out, float *lse, const float *qkv, int B, int T, int C,
                            int NH);
void cuda_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                             const float *out, const float *lse, int B, int T, int C, int NH);
size_t cuda_attention_scratch_floats(int B, int T, int C, int NH);
/* The same kernels on act bf16 (qkv, out, dout, dqkv bf16 bits; lse and
 * scratch fp32): the bf16 entries' path for shapes the tensor-core kernels
 * do not take. */
void cuda_attention_forward_fallback_bf16(void *out, float *lse, const void *qkv, int B, int T,
                                          int C, int NH);
void cuda_attention_backward_fallback_bf16(void *dqkv, float *scratch, const void *dout,
                                           const void *qkv, const void *out, const float *lse,
                                           int B, int T, int C, int NH);
/* Dr (B,NH,T) fp32 = rowsum(dout * out) per head row, dout and out (B,T,C)
 * of dtype act (ZINC_DTYPE_F32 or ZINC_DTYPE_BF16): the backward's D, shared
 * by both attention implementations. Returns 1, or 0 after recording an
 * error. */
int cuda_attention_rowdot(float *Dr, const void *dout, const void *out, zinc_dtype act, int B,
                          int T, int C, int NH);

/* attention_tc_cuda.cu: the "cuda-bf16" table's attention entries (the
 * same contract and scratch size, act bf16), on tensor cores (bf16
 * operands, fp32 softmax and accumulation) when the head size is 64; other
 * shapes run cuda_attention_*_fallback_bf16. */
void cuda_attention_forward_bf16(void *out, float *lse, const void *qkv, int B, int T, int C,
                                 int NH);
void cuda_attention_backward_bf16(void *dqkv, float *scratch, const void *dout, const void *qkv,
                                  const void *out, const float *lse, int B, int T, int C, int NH);

#endif
