/* tensor.c - dtype sizes and names, element counts, 16-bit float conversions
 * (round to nearest even; NaN stays NaN). */
#include <string.h>

#include "zinc/tensor.h"

size_t zinc_dtype_size(zinc_dtype dt)
{
    switch (dt) {
    case ZINC_DTYPE_F32: return 4;
    case ZINC_DTYPE_BF16: return 2;
    case ZINC_DTYPE_F16: return 2;
    case ZINC_DTYPE_I32: return 4;
    case ZINC_DTYPE_U8: return 1;
    case ZINC_DTYPE_F64: return 8;
    case ZINC_DTYPE_I64: return 8;
    }
    return 0;
}

const char *zinc_dtype_name(zinc_dtype dt)
{
    switch (dt) {
    case ZINC_DTYPE_F32: return "f32";
    case ZINC_DTYPE_BF16: return "bf16";
    case ZINC_DTYPE_F16: return "f16";
    case ZINC_DTYPE_I32: return "i32";
    case ZINC_DTYPE_U8: return "u8";
    case ZINC_DTYPE_F64: return "f64";
    case ZINC_DTYPE_I64: return "i64";
    }
    return "?";
}

int64_t zinc_tensor_numel(const zinc_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

uint16_t zinc_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float zinc_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t zinc_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
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

float zinc_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ffu;
    if (e == 0) {
        if (m == 0) return bits_f32(sign);
        float f = (float)m / 16777216.0f; /* m * 2^-24 */
        return sign ? -f : f;
    }
    if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}
