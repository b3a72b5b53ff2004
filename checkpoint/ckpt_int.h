/* ckpt_int.h - checkpoint internals shared by the checkpoint sources and white-box tests. */
#ifndef ZINC_CKPT_INT_H
#define ZINC_CKPT_INT_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/ckpt.h"

#define CKPT_ALIGN 4096u                  /* chunk start alignment in rank files */
#define CKPT_BLOCK ZINC_CKPT_BLOCK_BYTES  /* crc32c block */
#define CKPT_SEG (8u << 20)               /* staging/transfer segment, a multiple of CKPT_BLOCK */
#define CKPT_INFLIGHT 4                   /* segments in flight per reader/writer */
#define CKPT_READ_WINDOW 16               /* transfers in flight (direct ones need no buffer) */
#define CKPT_PROGRESS_STEP (64ull << 20)  /* progress calls at least this far apart (or 1%) */

/* crc32c through the portable slice-by-8 path whatever the CPU (tests compare both). */
uint32_t ckpt_crc32c_sw(uint32_t crc, const void *data, size_t n);

/* One chunk of a tensor in a rank file: elements [eo, eo+n) at byte offset off. */
typedef struct ckpt_chunk {
    int file;            /* index into ckpt_manifest.files */
    uint64_t off, bytes; /* bytes == n * dtype size */
    int64_t eo, n;
    uint32_t *crcs;      /* ceil(bytes / CKPT_BLOCK) */
    size_t n_crcs;
} ckpt_chunk;

typedef struct ckpt_mtensor {
    zinc_ckpt_tensor t;
    int64_t numel;
    ckpt_chunk *chunks;  /* sorted by eo, covering [0, numel) exactly */
    int n_chunks;
} ckpt_mtensor;

typedef struct ckpt_file {
    char name[32];       /* "rank-00003.bin" */
    uint64_t bytes;      /* size written (4 KiB padded) */
} ckpt_file;

/* A parsed and validated manifest. */
typedef struct ckpt_manifest {
    char dir[4096];      /* checkpoint directory (for messages and file paths) */
    char tag[256];
    ckpt_file *files;
    int n_files;
    ckpt_mtensor *tensors;
    int n_tensors;
    int n_chunks;
    char *meta;          /* verbatim meta JSON text */
} ckpt_manifest;

/* Parses text (len bytes) of dir/manifest.json into m. ZINC_ERR_CORRUPT naming the file
 * (and tensor) on any syntax or consistency problem. */
zinc_status ckpt_manifest_parse(const char *dir, const char *text, size_t len, ckpt_manifest *m);
void ckpt_manifest_free(ckpt_manifest *m);

#endif
