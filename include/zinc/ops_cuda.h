/* zinc/ops_cuda.h - the CUDA op table: every op of zinc/ops.h, with the same
 * contract, on device pointers (fp32, row-major), plus the error channel the
 * void ops need.
 *
 * Built only by `make CUDA=1` (into build/libzinc_cuda.a; link with
 * -lcublasLt -lcublas -lcudart). The CPU build never sees this header's
 * implementation.
 *
 * Execution model:
 *  - Every pointer argument is borrowed and must be device memory of the
 *    current device (cudaMalloc'd or managed), except where a scalar is
 *    passed by value.
 *  - Ops are enqueued on the legacy default stream (stream 0) of the current
 *    device, in call order, and return before the work completes; sumsq is
 *    the exception: it returns a value and so synchronizes with its result.
 *    Results are deterministic: the same inputs and shapes give bitwise the
 *    same outputs on the same GPU model (no float atomics anywhere).
 *  - The first op that needs them creates, lazily and once per process, a
 *    cuBLASLt handle, a 32 MiB cuBLASLt workspace and a scratch buffer that
 *    grows to the largest reduction seen; all bound to the device current
 *    at that moment. Calling the table later with another device current
 *    records a ZINC_ERR_CUDA error (one device per process, as zinc maps
 *    one GPU to each local rank). The state lives until process exit.
 *  - The table is meant to be driven from one host thread at a time (a
 *    training rank's thread); error recording and lazy set-up are
 *    thread-safe, concurrent ops on the shared scratch are not.
 *  - Argument errors are programmer errors (assert), as in zinc/ops.h;
 *    device-side asserts check token ids and targets.
 */
#ifndef ZINC_OPS_CUDA_H
#define ZINC_OPS_CUDA_H

#include "zinc/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* zinc/ops.h has no C++ guards of its own; included here, inside them, so
 * that C++ (CUDA) code that includes this header first links against the
 * C symbols it declares (zinc_ops_cpu). */
#include "zinc/ops.h"

/* The CUDA op table (name "cuda"). Static storage, never NULL; calling it
 * touches no CUDA API, so it is safe on a machine without a GPU. */
const zinc_ops *zinc_ops_cuda(void);
/* The same ops with act bf16 (name "cuda-bf16"): activations are bf16 in
 * memory and are the tensor-core operands of the products as they lie;
 * fp32 parameters are rounded to bf16 copies for them; accumulation and all
 * other arithmetic are fp32, and each act output is rounded to bf16 once.
 * matmul stays fp32 in and out (bf16 operand copies, fp32 accumulation).
 * The table for bf16 training; its reference is zinc_ops_cpu_bf16(), which
 * it agrees with within bf16 tolerance. */
const zinc_ops *zinc_ops_cuda_bf16(void);

/* The ops return void, so a failing CUDA, cuBLAS or cuBLASLt call inside
 * one (bad launch, out of memory, a fault of an earlier kernel surfacing)
 * is recorded instead: the first such failure since the last call of this
 * function is kept process-wide, later ones are dropped (they are usually
 * consequences of the first).
 *
 * This function first synchronizes the current device (cudaDeviceSynchronize),
 * so that faults of kernels still in flight are caught; then it returns the
 * recorded status (ZINC_OK if none), sets zinc_last_error() on the calling
 * thread to its one-line detail, "call: file:line: message" (e.g.
 * "cudaMemcpy: kernels/cuda/ops_cuda.cu:123: an illegal memory access was
 * encountered"), and clears the record.
 *
 * Call it once per step (or after a group of ops) and treat a non-OK
 * result as fatal for the device: a CUDA fault leaves the context unusable.
 * Returns ZINC_ERR_CUDA, ZINC_ERR_NOMEM (a device allocation failed) or
 * ZINC_OK. Not collective. */
zinc_status zinc_cuda_last_status(void);

#ifdef __cplusplus
}
#endif
#endif
