/* zinc/tensor.h - dtypes and logical tensors.
 *
 * fp32 is the compute type everywhere; bf16 and f16 are storage formats
 * (converted on load/store), on the CPU too, so mixed-precision logic is
 * testable without a GPU. */
#ifndef ZINC_TENSOR_H
#define ZINC_TENSOR_H

#include <stddef.h>
#include <stdint.h>

typedef enum zinc_dtype {
    ZINC_DTYPE_F32 = 0,
    ZINC_DTYPE_BF16,
    ZINC_DTYPE_F16,
    ZINC_DTYPE_I32,
    ZINC_DTYPE_U8,
    ZINC_DTYPE_F64,
    ZINC_DTYPE_I64,
} zinc_dtype;

/* Bytes per element. */
size_t zinc_dtype_size(zinc_dtype dt);
/* "f32", "bf16", ... */
const char *zinc_dtype_name(zinc_dtype dt);

#define ZINC_MAX_DIMS 4

/* A partition spec: how a logical tensor is split across tensor-parallel
 * ranks. tp_dim -1: replicated; 0 or 1: split along that dimension. */
typedef struct zinc_partition_spec {
    int tp_dim;
} zinc_partition_spec;

/* A logical tensor: a global name and shape, independent of how memory is
 * laid out or sharded. data is borrowed (engine-owned). */
typedef struct zinc_tensor {
    const char *name;
    void *data;
    zinc_dtype dtype;
    int ndim;
    int64_t shape[ZINC_MAX_DIMS];
    zinc_partition_spec part;
} zinc_tensor;

/* Number of elements (product of shape; 1 for ndim 0). */
int64_t zinc_tensor_numel(const zinc_tensor *t);

/* Round-to-nearest-even conversions between fp32 and the 16-bit formats. */
uint16_t zinc_f32_to_bf16(float f);
float zinc_bf16_to_f32(uint16_t h);
uint16_t zinc_f32_to_f16(float f);
float zinc_f16_to_f32(uint16_t h);

#endif
