/* fuzz_tokenizer.c - fuzz target: the tokenizer.json loader and the encoder /
 * decoder (zinc/tokenizer.h), which read a file from outside (a model folder's
 * tokenizer) and any text.
 *
 * Input: the tokenizer.json bytes, FUZZ_SEP (a line "%%"), then the text to encode
 * (without a separator the text is empty). The JSON is written to tokenizer.json in the
 * scratch directory (a folder load, as data.tokenizer takes it).
 *
 * Properties checked: a failed load leaves no tokenizer and says why; when the file
 * loads, encoding either fails with a detail (text that is not valid UTF-8, a character
 * without a token and no unk) or gives ids all below vocab_size, whose decoding then
 * succeeds and is NUL-terminated. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "zinc/log.h"
#include "zinc/tokenizer.h"

static char path[600];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    zinc_log_set_level(ZINC_LOG_ERROR);
    snprintf(path, sizeof path, "%s/tokenizer.json", fuzz_scratch("tokenizer"));
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *part[2];
    size_t len[2];
    const size_t np = fuzz_split(data, size, FUZZ_SEP, FUZZ_SEP_LEN, part, len, 2);
    fuzz_write_file(path, part[0], len[0]);
    zinc_tokenizer *t = NULL;
    zinc_status st = zinc_tokenizer_load(fuzz_dir(), &t);
    if (st != ZINC_OK) {
        fuzz_require(!t && zinc_last_error()[0], "a failed load left a tokenizer or no detail");
        return 0;
    }
    const char *text = np > 1 ? (const char *)part[1] : "";
    const size_t tl = np > 1 ? len[1] : 0;
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    st = zinc_tokenizer_encode(t, text, tl, &ids, &n, &cap);
    if (st == ZINC_OK) {
        const int64_t V = zinc_tokenizer_vocab_size(t);
        for (size_t i = 0; i < n; i++) fuzz_require(ids[i] >= 0 && ids[i] < V, "id %d outside the vocabulary %lld", ids[i], (long long)V);
        char *back = NULL;
        size_t bl = 0;
        st = zinc_tokenizer_decode(t, ids, n, &back, &bl);
        fuzz_require(st == ZINC_OK, "decoding the encoder's ids failed: %s", zinc_last_error());
        fuzz_require(back && back[bl] == '\0', "decode's text is not terminated");
        free(back);
    } else {
        fuzz_require(zinc_last_error()[0] != '\0', "a failed encode without a detail");
    }
    free(ids);
    zinc_tokenizer_free(t);
    return 0;
}
