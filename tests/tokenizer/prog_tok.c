/* prog_tok.c - tests/tokenizer/test_tokenizer.sh's driver: encodes documents with
 * zinc's tokenizer the way ref.py encodes them with `tokenizers`.
 *
 *   prog_tok TOKENIZER DOCS OUT [--no-roundtrip | --special]  (--special: with the
 *                                 post-processor's special tokens, no round trip)
 *                                 DOCS: (u32 length, bytes) per document; OUT: (u32 count,
 *                                 i32 ids) per document. Checks decode(encode(d)) == d for
 *                                 every document (not with --no-roundtrip: a tokenizer that
 *                                 adds a prefix space decodes it too) and prints one line:
 *                                 documents, bytes, tokens, round-trip mismatches,
 *                                 single-thread MB/s. OUT.dec gets each document's
 *                                 decoding, in the DOCS format.
 *   prog_tok TOKENIZER            loads it only (exit 2 and the error line on failure)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/clock.h"
#include "zinc/tokenizer.h"

int main(int argc, char **argv)
{
    zinc_tokenizer *t = NULL;
    const int special = argc == 5 && !strcmp(argv[4], "--special");
    const int roundtrip = !(argc == 5 && (!strcmp(argv[4], "--no-roundtrip") || special));
    if (argc != 2 && argc != 4 && !(argc == 5 && !roundtrip)) {
        fprintf(stderr, "usage: prog_tok TOKENIZER [DOCS OUT [--no-roundtrip | --special]]\n");
        return 2;
    }
    if (zinc_tokenizer_load(argv[1], &t) != ZINC_OK) {
        fprintf(stderr, "prog_tok: %s\n", zinc_last_error());
        return 2;
    }
    if (argc == 2) {
        printf("loaded %s: vocabulary %lld\n", argv[1], (long long)zinc_tokenizer_vocab_size(t));
        zinc_tokenizer_free(t);
        return 0;
    }
    char decp[4096];
    snprintf(decp, sizeof decp, "%s.dec", argv[3]);
    FILE *in = fopen(argv[2], "rb"), *out = fopen(argv[3], "wb"), *dec = fopen(decp, "wb");
    if (!in || !out || !dec) {
        fprintf(stderr, "prog_tok: cannot open %s or %s\n", argv[2], argv[3]);
        return 2;
    }
    size_t n_docs = 0, bytes = 0, tokens = 0, bad = 0, cap = 0, n = 0;
    int32_t *ids = NULL;
    double ms = 0;
    uint32_t len;
    while (fread(&len, 4, 1, in) == 1) {
        char *d = malloc(len + 1);
        if (!d || fread(d, 1, len, in) != len) {
            fprintf(stderr, "prog_tok: %s: truncated document %zu\n", argv[2], n_docs);
            return 2;
        }
        n = 0;
        double t0 = zinc_now_ms();
        zinc_status st = special ? zinc_tokenizer_encode_special(t, d, len, &ids, &n, &cap)
                                 : zinc_tokenizer_encode(t, d, len, &ids, &n, &cap);
        ms += zinc_now_ms() - t0;
        if (st != ZINC_OK) {
            fprintf(stderr, "prog_tok: document %zu: %s\n", n_docs, zinc_last_error());
            return 1;
        }
        uint32_t c = (uint32_t)n;
        fwrite(&c, 4, 1, out);
        fwrite(ids, sizeof *ids, n, out);
        char *back = NULL;
        size_t blen = 0;
        if (zinc_tokenizer_decode(t, ids, n, &back, &blen) != ZINC_OK) {
            fprintf(stderr, "prog_tok: document %zu: %s\n", n_docs, zinc_last_error());
            return 1;
        }
        if (roundtrip && (blen != len || memcmp(back, d, len))) bad++;
        const uint32_t bl = (uint32_t)blen;
        fwrite(&bl, 4, 1, dec);
        fwrite(back, 1, blen, dec);
        free(back);
        free(d);
        n_docs++;
        bytes += len;
        tokens += n;
    }
    fclose(in);
    if (fclose(out) != 0 || fclose(dec) != 0) return 2;
    printf("documents %zu bytes %zu tokens %zu roundtrip_mismatches %zu MB_per_s %.2f\n", n_docs, bytes, tokens, bad,
           bytes / 1e6 / (ms / 1e3));
    free(ids);
    zinc_tokenizer_free(t);
    return bad ? 1 : 0;
}
