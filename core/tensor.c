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
