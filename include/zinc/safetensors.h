/* zinc/safetensors.h - the safetensors file format (Hugging Face): a little-endian u64
 * header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"key": "value", ...}}
 * padded with spaces to a multiple of 8 bytes, then the tensor bytes (offsets relative to
 * the end of the header), little-endian, row-major.
 *
 * dtypes: F32, BF16, F16 (what zinc stores), plus F64, I32, I64, U8.
 */
#ifndef ZINC_SAFETENSORS_H
#define ZINC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/status.h"
#include "zinc/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One tensor of a file. */
typedef struct zinc_st_entry {
    char name[256];
    zinc_dtype dtype;
    int ndim;
    int64_t shape[ZINC_MAX_DIMS];
    uint64_t begin, end; /* data_offsets (reader fills them; the writer computes its own) */
} zinc_st_entry;

/* Supplies bytes [offset, offset+n) of tensor i's data (in the entry's dtype) into dst.
 * The writer asks for each tensor in order, in pieces of at most 16 MiB, so a model is
 * never held whole in memory. */
typedef zinc_status (*zinc_st_source)(void *u, size_t i, uint64_t offset, void *dst, size_t n);

/* Writes path (through path.tmp + fsync + rename: an existing file is replaced only by a
 * complete one): tensors t[0..n) in that order, data from src(u, ...). meta holds n_meta
 * key/value string pairs (meta[2k], meta[2k+1]) for "__metadata__" (may be NULL). Names
 * must be unique and not "__metadata__". ZINC_ERR_INVALID_ARG for bad entries (negative
 * dimensions, byte sizes that overflow 64 bits included), ZINC_ERR_IO
 * naming the file, or the source's status. */
zinc_status zinc_st_write(const char *path, const zinc_st_entry *t, size_t n, zinc_st_source src, void *u,
                          const char *const *meta, size_t n_meta);

typedef struct zinc_st_file zinc_st_file;

/* Opens and validates path as the format's spec demands: header length within the file,
 * JSON that parses (no duplicate keys), known dtypes, at most ZINC_MAX_DIMS dims, each
 * non-negative, element count and byte size within int64 (checked products), data_offsets
 * [begin, end] within the data with end - begin equal to the shape's byte size, and the
 * data section fully indexed: no two tensors overlapping, no bytes outside every tensor.
 * Any violation is ZINC_ERR_CORRUPT naming the file (and the tensor); a file that cannot be
 * read, or is not a regular file (a named pipe is refused before anything is read, never
 * waited on), is ZINC_ERR_IO. */
zinc_status zinc_st_open(const char *path, zinc_st_file **out);
void zinc_st_close(zinc_st_file *f); /* NULL-safe */

/* Tensors in header order; entries owned by f. */
size_t zinc_st_count(const zinc_st_file *f);
const zinc_st_entry *zinc_st_entry_at(const zinc_st_file *f, size_t i);
/* Index of name, or -1. */
long zinc_st_find(const zinc_st_file *f, const char *name);
/* Value of a __metadata__ key (owned by f), or NULL. */
const char *zinc_st_metadata(const zinc_st_file *f, const char *key);

/* Reads tensor i whole into dst (numel floats), converted to f32. */
zinc_status zinc_st_read_f32(zinc_st_file *f, size_t i, float *dst);
/* Reads tensor i's raw bytes (end - begin of them) into dst. */
zinc_status zinc_st_read_raw(zinc_st_file *f, size_t i, void *dst);

/* "F32", "BF16", ... for a zinc dtype; NULL for none. */
const char *zinc_st_dtype_name(zinc_dtype dt);

#ifdef __cplusplus
}
#endif

#endif
