/* data_int.h - what the shard reader (data.c) and the shard writers (shard_write.c)
 * share. Internal to data/. */
#ifndef ZINC_DATA_INT_H
#define ZINC_DATA_INT_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/data.h"

#define HEADER_BYTES ((uint64_t)ZINC_SHARD_HEADER_INTS * sizeof(int32_t))

/* One shard, memory-mapped. */
typedef struct data_shard {
    char *path;
    void *map;            /* whole file, read-only (NULL when map_bytes is 0) */
    size_t map_bytes;
    const void *tokens;   /* (n_tokens,) uint16 or uint32 inside map */
    const uint8_t *flags; /* (n_tokens,) ZINC_TOK_* inside map (version 3), else NULL */
    int tsz;              /* bytes per token: 2 (version 1) or 4 (version 2) */
    int block;            /* version 3: the block size its documents were packed for, or 0 */
    uint64_t n_docs;      /* version 3: documents (tokens flagged ZINC_TOK_DOC) */
    uint64_t n_tokens;
    uint64_t first;       /* index of tokens[0] in the concatenated stream */
} data_shard;

/* Maps the shard at path and checks its header, size and tokens (< vocab_size);
 * errors name the file. */
zinc_status data_shard_open(const char *path, int vocab_size, data_shard *sh);
void data_shard_release(data_shard *sh);

/* A target counts when its token has ZINC_TOK_LOSS and starts no document. */
static inline int data_is_target(uint8_t f) { return (f & (ZINC_TOK_LOSS | ZINC_TOK_DOC)) == ZINC_TOK_LOSS; }

/* Token i of a shard. */
static inline uint32_t shard_tok(const data_shard *sh, uint64_t i)
{
    return sh->tsz == 2 ? ((const uint16_t *)sh->tokens)[i] : ((const uint32_t *)sh->tokens)[i];
}

#endif
