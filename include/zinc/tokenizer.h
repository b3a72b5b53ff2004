/* zinc/tokenizer.h - Hugging Face tokenizer.json, encoded and decoded as the
 * `tokenizers` library does (data/tokenizer.c).
 *
 * Supported today: model "BPE" (merges as "a b" strings or [a, b] pairs, ignore_merges,
 * unk_token with fuse_unk, byte_fallback to "<0xXX>" tokens), with
 *   - byte-level pieces (GPT-2, Llama-3, Qwen2 style): pre_tokenizer ByteLevel
 *     (use_regex: GPT-2's split pattern; add_prefix_space), after Split steps (a Regex or
 *     String pattern, behavior "Isolated" or "Removed") in a Sequence;
 *   - character pieces (SentencePiece style: Llama-2, Mistral): normalizers Prepend and
 *     Replace (string patterns, in a Sequence), pre_tokenizer Metaspace (prepend_scheme
 *     always / first / never, split) or none;
 * and added tokens (special or not) matched in the raw text first, leftmost and longest.
 * The Unicode-class regexes run on PCRE2 (UTF + UCP), as transformers' run on Oniguruma.
 * Decoding mirrors the matching decoders (ByteLevel; Replace + ByteFallback + Fuse +
 * Strip). Anything else a tokenizer.json asks for (NFC/NFKC normalizers, lstrip/rstrip/
 * single_word added tokens, WordPiece or Unigram models, ...) is refused at load with one
 * line naming the file and the key.
 *
 * A loaded tokenizer is read-only: encode and decode may run on many threads at once.
 */
#ifndef ZINC_TOKENIZER_H
#define ZINC_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zinc_tokenizer zinc_tokenizer;

/* Loads path: a tokenizer.json, or a folder holding one. ZINC_ERR_IO (missing or
 * unreadable), ZINC_ERR_CORRUPT (not JSON, a merge naming no token, ...) or
 * ZINC_ERR_UNSUPPORTED (a kind zinc does not encode yet), one line naming the file and
 * the key. */
zinc_status zinc_tokenizer_load(const char *path, zinc_tokenizer **out);
void zinc_tokenizer_free(zinc_tokenizer *t); /* NULL-safe */

/* The largest token id + 1 (the model's vocabulary must be at least this). */
int64_t zinc_tokenizer_vocab_size(const zinc_tokenizer *t);
/* The id of a token or added token by its text, or -1. */
int32_t zinc_tokenizer_token_id(const zinc_tokenizer *t, const char *token);

/* Encodes len bytes of UTF-8 text as `tokenizers` does with add_special_tokens=False:
 * appends the ids to *ids (a malloc'd array of *cap, grown as needed; *n in use).
 * ZINC_ERR_INVALID_ARG for text that is not valid UTF-8 (naming the byte offset);
 * ZINC_ERR_NOMEM. */
zinc_status zinc_tokenizer_encode(const zinc_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n,
                                  size_t *cap);
/* The same with the post-processor's special tokens, as tokenizers encodes with
 * add_special_tokens=True (what `tokenizer(text)` gives): TemplateProcessing's single
 * template (Llama-3's <|begin_of_text|> first, ...; ByteLevel adds none).
 * ZINC_ERR_UNSUPPORTED for another post-processor kind, naming it. */
zinc_status zinc_tokenizer_encode_special(const zinc_tokenizer *t, const char *text, size_t len, int32_t **ids,
                                          size_t *n, size_t *cap);
/* Decodes n ids to *text (malloc'd, NUL-terminated, *len bytes) as tokenizers' decode
 * with skip_special_tokens=False does. ZINC_ERR_INVALID_ARG for an id outside the
 * vocabulary. */
zinc_status zinc_tokenizer_decode(const zinc_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len);

#ifdef __cplusplus
}
#endif

#endif
