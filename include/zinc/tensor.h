/* zinc/tensor.h - dtypes and logical tensors.
 *
 * fp32 is the compute type everywhere; bf16 and f16 are storage formats
 * (converted on load/store), on the CPU too, so mixed-precision logic is
 * testable without a GPU. */
#ifndef ZINC_TENSOR_H
#define ZINC_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

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

/* Round-to-nearest-even conversions between fp32 and the 16-bit formats
 * (NaN stays NaN). Inline so conversion loops vectorize. */
static inline uint32_t zinc_f32_bits_(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float zinc_bits_f32_(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline uint16_t zinc_f32_to_bf16(float f)
{
    uint32_t u = zinc_f32_bits_(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float zinc_bf16_to_f32(uint16_t h) { return zinc_bits_f32_((uint32_t)h << 16); }

static inline uint16_t zinc_f32_to_f16(float f)
{
    uint32_t u = zinc_f32_bits_(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);        /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);       /* overflow -> inf */
    if (a < 0x38800000u) {                                         /* subnormal or zero */
        if (a < 0x33000000u) return (uint16_t)sign;
        uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* value = m * 2^(e-150); f16 subnormal unit 2^-24 */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((a >> 13) - (112u << 10));
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

static inline float zinc_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ffu;
    if (e == 0) {
        if (m == 0) return zinc_bits_f32_(sign);
        float f = (float)m / 16777216.0f; /* m * 2^-24 */
        return sign ? -f : f;
    }
    if (e == 31) return zinc_bits_f32_(sign | 0x7f800000u | (m << 13));
    return zinc_bits_f32_(sign | ((e + 112) << 23) | (m << 13));
}

#ifdef __cplusplus
}
#endif

#endif
