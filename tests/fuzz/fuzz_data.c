/* fuzz_data.c - fuzz target: the token shard loader (zinc_data_open and
 * zinc_data_get, zinc/data.h), which opens every data.train shard a config
 * names.
 *
 * Input: 4 parameter bytes, then the shards' bytes, separated by FUZZ_SEP
 * (a line "%%"; at most 4 shards):
 *   byte 0   seq_len = 1 + (b0 & 63); bit 6 set: open through the glob
 *            pattern "DIR/shard-*.bin" instead of the file names
 *   byte 1-2 vocab_size = 1 + (b1 | b2 << 8)   (1 .. 65536)
 *   byte 3   the sample-order seed
 * Each shard is written to shard-<k>.bin in the scratch directory (/dev/shm
 * when it can); an input shorter than 4 bytes is ignored.
 *
 * On a loader that opens, batches are read at the start, across the end of
 * the first epoch, in a far epoch and at the last index before overflow
 * (refused). Properties checked: n_samples = (n_tokens - 1) / seq_len >= 1;
 * targets are the inputs shifted by one; every token is < vocab_size. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "zinc/data.h"
#include "zinc/log.h"

#define MAX_SHARDS 4
#define MAX_BATCH 4

static const char *dir;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    zinc_log_set_level(ZINC_LOG_ERROR);
    dir = fuzz_scratch("data");
    return 0;
}

/* Reads n samples from first and checks them. */
static void check_batch(const zinc_data *d, uint64_t first, int n, int T, int vocab)
{
    static int32_t in[MAX_BATCH * 64], tg[MAX_BATCH * 64]; /* (n, T) each */
    zinc_status st = zinc_data_get(d, first, n, in, tg);
    fuzz_require(st == ZINC_OK, "get %llu +%d: %s", (unsigned long long)first, n,
                 zinc_last_error());
    for (int b = 0; b < n; b++)
        for (int t = 0; t < T; t++) {
            int32_t x = in[b * T + t], y = tg[b * T + t];
            fuzz_require(x >= 0 && x < vocab && y >= 0 && y < vocab, "token out of range");
            if (t + 1 < T)
                fuzz_require(tg[b * T + t] == in[b * T + t + 1], "targets are not inputs shifted");
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4) return 0;
    int T = 1 + (data[0] & 63);
    int use_glob = (data[0] >> 6) & 1;
    int vocab = 1 + (data[1] | data[2] << 8);
    uint64_t seed = data[3];

    const uint8_t *part[MAX_SHARDS];
    size_t len[MAX_SHARDS];
    size_t n = fuzz_split(data + 4, size - 4, FUZZ_SEP, FUZZ_SEP_LEN, part, len, MAX_SHARDS);
    static char names[MAX_SHARDS][600];
    const char *paths[MAX_SHARDS];
    for (size_t k = 0; k < MAX_SHARDS; k++) {
        snprintf(names[k], sizeof names[k], "%s/shard-%zu.bin", dir, k);
        if (k < n) fuzz_write_file(names[k], part[k], len[k]);
        else unlink(names[k]); /* left by an earlier input; the glob would find it */
        paths[k] = names[k];
    }
    char pattern[600];
    snprintf(pattern, sizeof pattern, "%s/shard-*.bin", dir);
    const char *glob_path[1] = {pattern};

    zinc_data *d = NULL;
    zinc_status st = use_glob ? zinc_data_open(glob_path, 1, T, vocab, seed, &d)
                              : zinc_data_open(paths, (int)n, T, vocab, seed, &d);
    if (st != ZINC_OK) {
        fuzz_require(d == NULL, "failed open returned a loader");
        fuzz_require(zinc_last_error()[0] != '\0', "failed open without a detail");
        return 0;
    }
    uint64_t tokens = zinc_data_n_tokens(d), samples = zinc_data_n_samples(d);
    fuzz_require(tokens >= (uint64_t)T + 1 && samples == (tokens - 1) / (uint64_t)T,
                 "%llu tokens, %llu samples of %d", (unsigned long long)tokens,
                 (unsigned long long)samples, T);
    int nb = samples < MAX_BATCH ? (int)samples : MAX_BATCH;
    check_batch(d, 0, nb, T, vocab);
    check_batch(d, samples - 1, 2, T, vocab);          /* into the second epoch */
    check_batch(d, samples * 1000 + seed, 1, T, vocab); /* a far epoch */
    static int32_t in[64], tg[64];
    fuzz_require(zinc_data_get(d, UINT64_MAX, 1, in, tg) == ZINC_ERR_INVALID_ARG,
                 "an index that overflows was not refused");
    zinc_data_close(d);
    return 0;
}
