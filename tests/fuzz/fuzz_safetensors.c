/* fuzz_safetensors.c - fuzz target: the strict safetensors reader
 * (zinc_st_open and the per-tensor queries and reads of zinc/safetensors.h),
 * which model.init_from and `zinc-ckpt` run on files from anywhere.
 *
 * Input: the file's bytes, written to one file in the scratch directory
 * (/dev/shm when it can: zinc_st_open takes a path) and opened from there.
 *
 * On a file that opens, every tensor is looked up by name, read raw and as
 * f32, and the metadata keys are queried. Properties checked (what the
 * reader promises after open): entries tile the data section (sizes add up
 * to the file's data bytes, each span is the shape's byte size), names are
 * unique so zinc_st_find finds each entry at its own index, every read of an
 * opened file succeeds, and an f32 tensor read as f32 equals its raw bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "zinc/log.h"
#include "zinc/safetensors.h"

static char path[600];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    zinc_log_set_level(ZINC_LOG_ERROR);
    snprintf(path, sizeof path, "%s/in.safetensors", fuzz_scratch("safetensors"));
    return 0;
}

static void check_file(zinc_st_file *f, const uint8_t *data, size_t size)
{
    size_t n = zinc_st_count(f);
    uint64_t total = 0, hl = 0;
    fuzz_require(size >= 8, "opened a %zu-byte file", size);
    for (int b = 7; b >= 0; b--) hl = hl << 8 | data[b];
    fuzz_require(hl <= size - 8, "header length %llu past the end", (unsigned long long)hl);
    fuzz_require(zinc_st_entry_at(f, n) == NULL, "entry past the count");
    for (size_t i = 0; i < n; i++) {
        const zinc_st_entry *e = zinc_st_entry_at(f, i);
        fuzz_require(e != NULL && e->begin <= e->end, "entry %zu", i);
        fuzz_require(zinc_st_find(f, e->name) == (long)i, "tensor %s is not found at %zu",
                     e->name, i);
        fuzz_require(zinc_st_dtype_name(e->dtype) != NULL, "tensor %s: dtype %d", e->name,
                     (int)e->dtype);
        uint64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) numel *= (uint64_t)e->shape[d];
        size_t bytes = (size_t)(e->end - e->begin);
        fuzz_require(bytes == numel * zinc_dtype_size(e->dtype), "tensor %s: %zu bytes for %llu",
                     e->name, bytes, (unsigned long long)numel);
        total += bytes;

        uint8_t *raw = malloc(bytes + 1);
        float *f32 = malloc(numel * sizeof *f32 + 1);
        fuzz_require(raw && f32, "out of memory");
        zinc_status st = zinc_st_read_raw(f, i, raw);
        fuzz_require(st == ZINC_OK, "tensor %s: read_raw: %s", e->name, zinc_last_error());
        st = zinc_st_read_f32(f, i, f32);
        fuzz_require(st == ZINC_OK, "tensor %s: read_f32: %s", e->name, zinc_last_error());
        if (e->dtype == ZINC_DTYPE_F32)
            fuzz_require(!memcmp(raw, f32, bytes), "tensor %s: f32 read differs from raw", e->name);
        free(raw);
        free(f32);
    }
    fuzz_require(total == size - 8 - hl, "tensors hold %llu of the %llu data bytes",
                 (unsigned long long)total, (unsigned long long)(size - 8 - hl));
    fuzz_require(zinc_st_read_raw(f, n, NULL) == ZINC_ERR_INVALID_ARG, "read past the count");
    const char *v = zinc_st_metadata(f, "format");
    fuzz_require(!v || strlen(v) < size, "metadata value longer than the file");
    (void)zinc_st_metadata(f, "");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write_file(path, data, size);
    zinc_st_file *f = NULL;
    zinc_status st = zinc_st_open(path, &f);
    if (st == ZINC_OK) {
        check_file(f, data, size);
        zinc_st_close(f);
    } else {
        fuzz_require(f == NULL, "failed open returned a file");
        fuzz_require(zinc_last_error()[0] != '\0', "failed open without a detail");
    }
    return 0;
}
