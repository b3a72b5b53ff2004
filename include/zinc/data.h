/* zinc/data.h - token shards and the deterministic sample order.
 *
 * Shard format (llm.c's): 256 x int32 header (magic 20240520, version, token count),
 * then token count tokens: uint16 for version 1, uint32 for version 2 (vocabularies past
 * 65536 ids: Llama 3, Qwen2). zinc's version 3 holds documents with loss masks
 * (instruction data): header ints 3 and 4 are the bytes per token (2 or 4) and the block
 * size its documents were packed for (0: not packed), and after the tokens come as many
 * bytes of ZINC_TOK_* flags: LOSS (the token is a target the loss counts), DOC (the
 * token starts a document; the first token always does).
 *
 * With documents (any version-3 shard among the loader's, where a plain shard is one
 * document with every token a target), a sample's targets never cross a document: the
 * target of input t is -1 (no loss) when token t+1 starts a document or has no LOSS
 * flag, and positions restart per document: pos[t] = t - (the row's last document start
 * at or before t, else 0). Attention of query t then covers keys t - pos[t] .. t (block
 * diagonal within the row).
 *
 * A loader sees the concatenation of its shards as one token stream, cut into
 * samples of seq_len+1 tokens (inputs and shifted targets) at stride seq_len.
 * Sample k of the global order (k = 0, 1, 2, ...) is a pure function of
 * (k, seed, shards): epoch e = k / n_samples walks a seeded permutation of the
 * samples. So a step's global batch is the same set of sequences whatever the
 * DP size (each rank asks for its slice of global indices), and resuming is
 * just continuing from a global sample index.
 */
#ifndef ZINC_DATA_H
#define ZINC_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ZINC_SHARD_MAGIC 20240520
#define ZINC_SHARD_VERSION 1     /* uint16 tokens */
#define ZINC_SHARD_VERSION_U32 2 /* uint32 tokens */
#define ZINC_SHARD_VERSION_DOCS 3 /* zinc's: documents and loss masks */
#define ZINC_TOK_LOSS 1u /* version-3 token flags */
#define ZINC_TOK_DOC 2u
#define ZINC_SHARD_HEADER_INTS 256

typedef struct zinc_data zinc_data;

/* Opens shards (paths may be glob patterns; matches are sorted) for samples
 * of seq_len tokens. Checks headers and sizes: a missing file, bad magic or
 * truncated shard is an error naming the file. Tokens >= vocab_size are an
 * error naming the file and position. */
zinc_status zinc_data_open(const char *const *paths, int n_paths, int seq_len, int vocab_size,
                           uint64_t seed, zinc_data **out);
void zinc_data_close(zinc_data *d); /* NULL-safe */

/* A user's data instead of token shards (the driver API of examples/): zinc asks for
 * samples by their global index, and sample k must be a pure function of k — that makes a
 * step's global batch the same at every DP size (each rank asks for its slice) and a
 * resumed run exact (it continues from the checkpoint's sample index). Each rank asks only
 * for its own samples, in any order; a masked source's samples are read twice per step
 * (once to count the targets the mean loss divides by, once to train). Global index k past
 * the first epoch reads sample k mod n_samples, and one call never crosses an epoch. */
typedef struct zinc_batch_source {
    /* Fills samples first .. first+n-1: inputs (n, seq_len) ids in [0, vocab_size) for
     * layer 0, targets (n, seq_len) the ids the loss layer predicts, -1 where no loss is
     * taken (only when masked). Another status stops the step, its detail kept. */
    zinc_status (*get)(void *user, uint64_t first, int n, int seq_len, int32_t *inputs, int32_t *targets);
    uint64_t n_samples; /* samples per epoch (>= 1): what zinc_data_n_samples reports */
    int masked;         /* targets may be -1: the mean loss divides by the targets that count */
    void *user;
} zinc_batch_source;
/* A loader over src (copied; src->user borrowed) for samples of seq_len. Ids outside the
 * vocabulary are an error naming the sample and position. */
zinc_status zinc_data_from_source(const zinc_batch_source *src, int seq_len, int vocab_size, zinc_data **out);

/* Samples per epoch and total tokens. */
uint64_t zinc_data_n_samples(const zinc_data *d);
uint64_t zinc_data_n_tokens(const zinc_data *d);

/* Fills inputs(n, seq_len) and targets(n, seq_len) with global samples
 * first .. first+n-1. Thread-compatible; no state changes. */
zinc_status zinc_data_get(const zinc_data *d, uint64_t first, int n, int32_t *inputs,
                          int32_t *targets);
/* The same with the positions (n, seq_len) in pos (may be NULL; 0..seq_len-1 on each row
 * without documents) and the targets masked by documents (above). */
zinc_status zinc_data_get_docs(const zinc_data *d, uint64_t first, int n, int32_t *inputs,
                               int32_t *targets, int32_t *pos);
/* Whether the loader has documents (a version-3 shard: positions restart at each). */
int zinc_data_has_docs(const zinc_data *d);
/* Whether some targets may be -1: documents, or a masked batch source. */
int zinc_data_has_masks(const zinc_data *d);
/* The targets that count (>= 0) in global samples first .. first+n-1: n * seq_len
 * without masks. What a step's mean loss divides by. */
zinc_status zinc_data_count_targets(const zinc_data *d, uint64_t first, uint64_t n, uint64_t *count);

/* Tokenizes the given text files (directories are walked recursively in
 * sorted order, files whose name ends in one of exts — a comma separated list
 * like ".c,.h,.md" or NULL for all — are included) and writes one shard to
 * out_path: with tok NULL the byte-level tokenizer (token = byte value
 * 0..255, streamed), else each file whole through tok as tokenizer(text)
 * encodes it, special tokens of the post-processor included (zinc/tokenizer.h;
 * a file must be valid UTF-8 and at most 1 GiB; a shard of uint16 tokens when the
 * tokenizer's vocabulary fits 16 bits, else of uint32), files encoded on every OpenMP thread at once and
 * written in order. Reports tokens written in *n_tokens (may be NULL). */
typedef struct zinc_tokenizer zinc_tokenizer;
zinc_status zinc_data_write_shard_from_text(const char *const *inputs, int n_inputs,
                                            const char *exts, const zinc_tokenizer *tok,
                                            const char *out_path, uint64_t *n_tokens);

/* A process-wide hook (fn NULL: none, the default) zinc_data_write_shard_from_text calls
 * with the input bytes tokenized so far and their total: once with 0, then as files (the
 * byte tokenizer: reads) complete. Not thread-safe: set it while no shard is written. */
void zinc_data_set_progress(void (*fn)(uint64_t done, uint64_t total, void *u), void *u);

/* Writes a shard from an array of tokens: uint16 (version 1) or uint32 (version 2). */
zinc_status zinc_data_write_shard(const char *out_path, const uint16_t *tokens, uint64_t n);
zinc_status zinc_data_write_shard32(const char *out_path, const uint32_t *tokens, uint64_t n);
/* Writes a version-3 shard: n tokens (stored in token_bytes 2 or 4) with their ZINC_TOK_*
 * flags, the first a document start, packed for block (0: not packed). */
zinc_status zinc_data_write_docs(const char *out_path, const uint32_t *tokens, const uint8_t *flags, uint64_t n,
                                 int token_bytes, int block);

/* Instruction and document data (data/jsonl.c): JSONL records, one per line — {"text"},
 * {"prompt", "completion"}, {"messages": [{"role", "content"}...]} through a named chat
 * template, or pre-tokenized {"input_ids", "labels"} with -100 masking — tokenized into a
 * version-3 shard with the loss on completions and assistant replies only, samples packed
 * whole into rows of block tokens (padded rows, longer samples truncated; text records
 * flow across rows). A bad record is one line naming file:line and the thing at fault. */
typedef struct zinc_jsonl_opts {
    const char *chat_template; /* "chatml", "qwen2", "llama3", "llama2", or NULL: none */
    int block;                 /* tokens per row (the run's seq_len); 0: no packing */
    const char *eos;           /* the end-of-sequence token appended to text records and
                                  completions without a template, or NULL: none */
    void (*progress)(uint64_t done, uint64_t total, void *u); /* bytes read, or NULL */
    void *progress_u;
} zinc_jsonl_opts;
typedef struct zinc_jsonl_stats {
    uint64_t docs, tokens, targets;      /* samples written, their tokens, the targets the loss counts */
    uint64_t truncated, truncated_tokens; /* samples cut to the block size, tokens cut */
    uint64_t pad_tokens, empty, written; /* row padding, samples with no tokens (skipped), shard tokens */
    int32_t eos;                         /* the end-of-sequence id used, or -1 */
} zinc_jsonl_stats;
zinc_status zinc_data_write_shard_from_jsonl(const char *const *inputs, int n_inputs, const zinc_tokenizer *tok,
                                             const zinc_jsonl_opts *opt, const char *out_path, zinc_jsonl_stats *st);
/* The shard of one .jsonl file, made once and cached: out (cap bytes) receives
 * CACHE_DIR/NAME.HASH.bin (cache_dir NULL or "": beside the .jsonl), HASH over the file's
 * path, size and modification time, the tokenizer.json's bytes (tok_path) and the options;
 * *built says whether this call wrote it (then *st holds the summary). */
zinc_status zinc_data_jsonl_cached(const char *jsonl, const char *cache_dir, const char *tok_path,
                                   const zinc_tokenizer *tok, const zinc_jsonl_opts *o, char *out, size_t cap,
                                   int *built, zinc_jsonl_stats *st);
/* The eos_token of the tokenizer_config.json beside a tokenizer (tok_path: tokenizer.json
 * or its folder) into out: 1, or 0 when there is none. */
int zinc_tokenizer_config_eos(const char *tok_path, char *out, size_t cap);
/* Whether name is a chat template zinc renders. */
int zinc_chat_template_known(const char *name);

/* What a valid shard holds (its header and file size checked as zinc_data_open checks
 * them): version, bytes per token, tokens, the smallest and largest id. */
typedef struct zinc_shard_info {
    int version, token_bytes, block; /* block: version 3's packing block size, else 0 */
    uint64_t n_tokens, file_bytes;
    uint64_t n_docs, n_targets; /* version 3: documents, tokens the loss counts (else 0, n_tokens) */
    uint32_t lo, hi;
} zinc_shard_info;
zinc_status zinc_data_shard_info(const char *path, zinc_shard_info *out);

#ifdef __cplusplus
}
#endif

#endif
