/* zinc_data.c - `zinc-data`: makes token shards from text (byte-level, or
 * through a Hugging Face tokenizer.json) and inspects shards.
 *
 *   zinc-data [--ext .c,.h,.md] [--tokenizer PATH] -o OUT.bin INPUT...
 *   zinc-data info SHARD...
 *
 * Exit status: 0 ok, 1 an error (one line "zinc-data: <detail>"), 2 bad
 * arguments (usage on stderr). `info` reads each shard itself so it can report
 * on shards whatever vocabulary made them: it checks the header and size like
 * the loader does and prints the token count and the range of ids used.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zinc/data.h"
#include "zinc/file.h"
#include "zinc/status.h"
#include "zinc/tokenizer.h"

static const char *usage_text =
    "usage: zinc-data [--ext .c,.h,.md] [--tokenizer PATH] -o OUT.bin INPUT...\n"
    "       zinc-data info SHARD...\n"
    "  Tokenizes text files and directories (walked recursively in sorted order,\n"
    "  hidden entries and build* folders skipped; --ext filters the files found in\n"
    "  directories, files named on the command line are always taken) into one\n"
    "  shard: byte tokens (0..255), or with --tokenizer the ids of a Hugging Face\n"
    "  tokenizer.json (PATH: the file or a folder holding it; byte-level BPE),\n"
    "  each file encoded whole. `info` prints each shard's token count, the\n"
    "  range of token ids it uses and whether its header and size are right.\n";

static int usage(const char *why)
{
    if (why) fprintf(stderr, "zinc-data: %s\n", why);
    fputs(usage_text, stderr);
    return 2;
}

/* Prints one shard's summary; returns 0 if it is a valid shard, else 1 after
 * printing "zinc-data: <detail>" to stderr. */
static int info_one(const char *path)
{
    zinc_shard_info i;
    if (zinc_data_shard_info(path, &i) != ZINC_OK) {
        const char *e = zinc_last_error();
        fprintf(stderr, "zinc-data: %s\n", strncmp(e, "data: ", 6) ? e : e + 6);
        return 1;
    }
    if (i.n_tokens)
        printf("%s: %llu tokens, ids %u..%u (needs vocab_size >= %u), header ok "
               "(magic %d, version %d: %d-bit tokens, %llu bytes)\n",
               path, (unsigned long long)i.n_tokens, i.lo, i.hi, i.hi + 1, ZINC_SHARD_MAGIC, i.version,
               8 * i.token_bytes, (unsigned long long)i.file_bytes);
    else
        printf("%s: 0 tokens, header ok (magic %d, version %d: %d-bit tokens, %llu bytes)\n", path,
               ZINC_SHARD_MAGIC, i.version, 8 * i.token_bytes, (unsigned long long)i.file_bytes);
    return 0;
}

static int cmd_info(int argc, char **argv)
{
    if (argc < 1) return usage("info needs at least one shard");
    int rc = 0;
    for (int i = 0; i < argc; i++)
        if (info_one(argv[i]) != 0) rc = 1;
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "info")) return cmd_info(argc - 2, argv + 2);
    const char *exts = NULL, *out = NULL, *tokp = NULL;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) {
            i++;
            break;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (!strcmp(a, "--ext") || !strcmp(a, "-o") || !strcmp(a, "--tokenizer")) {
            if (i + 1 >= argc) {
                char why[64];
                snprintf(why, sizeof why, "%s needs a value", a);
                return usage(why);
            }
            if (a[1] == 'o') out = argv[++i];
            else if (a[2] == 't') tokp = argv[++i];
            else exts = argv[++i];
        } else if (!strncmp(a, "--ext=", 6)) {
            exts = a + 6;
        } else if (!strncmp(a, "--tokenizer=", 12)) {
            tokp = a + 12;
        } else if (a[0] == '-' && a[1] != '\0') {
            char why[300];
            snprintf(why, sizeof why, "unknown option %.200s", a);
            return usage(why);
        } else {
            break;
        }
    }
    if (!out) return usage("missing -o OUT.bin");
    if (i >= argc) return usage("no INPUT given");
    /* Options come first: everything from the first input on is an input. */
    uint64_t n = 0;
    zinc_tokenizer *tok = NULL;
    if (tokp && zinc_tokenizer_load(tokp, &tok) != ZINC_OK) {
        fprintf(stderr, "zinc-data: --tokenizer: %s\n", zinc_last_error());
        return 1;
    }
    zinc_status st = zinc_data_write_shard_from_text((const char *const *)(argv + i), argc - i,
                                                     exts, tok, out, &n);
    zinc_tokenizer_free(tok);
    if (st != ZINC_OK) {
        const char *msg = zinc_last_error();
        if (!strncmp(msg, "data: ", 6)) msg += 6;
        fprintf(stderr, "zinc-data: %s\n", msg);
        return 1;
    }
    printf("wrote %llu tokens to %s\n", (unsigned long long)n, out);
    return 0;
}
