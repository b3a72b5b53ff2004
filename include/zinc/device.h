/* zinc/device.h - the device a rank computes on: its memory, copies,
 * ordering, and its op table, behind one vtable.
 *
 * Two devices exist: "cpu" (device memory is host memory, every call is
 * synchronous) and "cuda" (one GPU per rank, built only with `make CUDA=1`).
 * Every engine buffer that ops read or write lives in device memory; host
 * code touches it only through copy().
 *
 * Ordering: ops of the device's op table, memset0 and copy are executed in
 * call order on the device's compute stream (CUDA: the legacy default
 * stream 0). They may return before the work is done, except as noted.
 * Errors of asynchronous work surface at the next sync().
 */
#ifndef ZINC_DEVICE_H
#define ZINC_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* the CUDA sources are C++; ops.h has no guards of its own */
#endif

#include "zinc/ops.h"
#include "zinc/status.h"

typedef struct zinc_device {
    const char *name;      /* "cpu", "cuda" */
    int is_host;           /* 1: device memory is ordinary host memory */
    int host_async;        /* 1: host threads may use host_alloc memory while device ops run
                              (cuda; not the strict device, which closes it during ops) */
    int index;             /* CUDA device ordinal (0 on cpu) */
    const zinc_ops *ops;   /* fp32 op table on device pointers (act f32) */
    /* The op table to compute with when parameters are stored in bf16: act
     * bf16 (activations stored in bf16; products on bf16 operands, tensor
     * cores on cuda). cpu: "cpu-bf16"; cuda: "cuda-bf16". */
    const zinc_ops *ops_bf16;

    /* Device memory, zeroed, at least 64-byte aligned (cuda: 256; cpu: 4 KiB
     * from 1 MiB, so O_DIRECT I/O can use it). NULL with the error recorded
     * (ZINC_ERR_NOMEM naming the size). */
    void *(*alloc)(size_t bytes);
    /* NULL-safe. Waits for device work that may still use p. */
    void (*free)(void *p);
    /* Page-aligned host memory that copies to and from the device run at
     * full speed (CUDA: pinned). Zeroed. NULL with the error recorded. */
    void *(*host_alloc)(size_t bytes);
    void (*host_free)(void *p);

    /* Zeroes bytes of device memory (async). */
    void (*memset0)(void *p, size_t bytes);
    /* Copies bytes between any two of device memory, host memory and
     * host_alloc memory. A copy whose destination or source is host memory
     * is synchronous: it returns after every earlier device op and the copy
     * itself are done (so the host may read dst / reuse src at once). A
     * device-to-device copy is async. */
    void (*copy)(void *dst, const void *src, size_t bytes);
    /* Waits for all work enqueued so far; returns the first error recorded
     * since the last sync (ZINC_OK if none) with zinc_last_error() set to
     * "call: file:line: message". A CUDA error is fatal for the device. */
    zinc_status (*sync)(void);
    /* 1 if p points into device memory that the host cannot read directly
     * (always 0 on cpu). */
    int (*is_device_ptr)(const void *p);
    /* Bytes of device memory allocated through alloc (cuda: and the op
     * table's scratch) now and at most since the last reset (peak), and of
     * host_alloc memory now. Free blocks the cuda device keeps cached for
     * reuse are not counted. */
    void (*mem)(uint64_t *live, uint64_t *peak, uint64_t *host_live);
    void (*mem_reset_peak)(void);
    /* alloc without the zeroing, for buffers that are fully written before
     * they are read (NULL: use alloc). Freed with free. */
    void *(*alloc_raw)(size_t bytes);
    /* The device's dense bf16 product rate in TFLOP/s, measured (cuda: the median of 5
     * bf16 x bf16 products of 8192^3 with fp32 accumulation on cuBLASLt, about a second),
     * for the step line's MFU; 0 after recording an error. NULL where not measured (cpu:
     * train.peak_tflops gives it). */
    double (*peak_tflops)(void);
    /* Free and total device memory now (cuda: cudaMemGetInfo), for the start-up check that
     * the plan fits; NULL where device memory is host memory (cpu, the strict device). */
    void (*mem_info)(uint64_t *free_bytes, uint64_t *total_bytes);
} zinc_device;

/* The CPU device. Static storage, never NULL. */
const zinc_device *zinc_device_cpu(void);

/* The strict test device: host memory that the host can touch only through
 * the device's copy, memset0 and ops (all else faults), with the CPU's ops;
 * is_host 0, so the engine takes its device paths (staging, io callbacks,
 * host-offloaded optimizer). For tests (ZINC_STRICT_DEVICE=1 makes the
 * engine use it instead of the cpu device); slow, one thread. */
const zinc_device *zinc_device_strict(void);

/* Number of CUDA devices visible to this process: 0 in a build without
 * CUDA or on a machine without a GPU (never an error). */
int zinc_device_cuda_count(void);

/* Binds this process to CUDA device (local_rank mod count) (cudaSetDevice)
 * and returns the cuda device. ZINC_ERR_UNSUPPORTED in a build without
 * CUDA, ZINC_ERR_CUDA when no GPU is visible or the device cannot be set. */
zinc_status zinc_device_cuda_open(int local_rank, const zinc_device **out);

#ifdef __cplusplus
}
#endif
#endif
