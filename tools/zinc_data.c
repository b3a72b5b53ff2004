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
    int fd;
    long long fsize;
    if (zinc_open_regular(path, 0, "token shard", &fd, &fsize) != ZINC_OK) { /* a FIFO would block */
        fprintf(stderr, "zinc-data: %s\n", zinc_last_error());
        return 1;
    }
    const uint64_t hdr_bytes = ZINC_SHARD_HEADER_INTS * sizeof(int32_t);
    uint64_t size = (uint64_t)fsize;
    if (size < hdr_bytes) {
        fprintf(stderr, "zinc-data: %s is %llu bytes, shorter than the %llu-byte shard header\n",
                path, (unsigned long long)size, (unsigned long long)hdr_bytes);
        close(fd);
        return 1;
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        fprintf(stderr, "zinc-data: cannot mmap %s: %s\n", path, strerror(errno));
        return 1;
    }
    int rc = 1;
    const int32_t *hdr = map;
    if (hdr[0] != ZINC_SHARD_MAGIC) {
        fprintf(stderr, "zinc-data: %s: bad magic %d (expected %d); not a token shard\n", path,
                hdr[0], ZINC_SHARD_MAGIC);
        goto done;
    }
    if (hdr[1] != ZINC_SHARD_VERSION) {
        fprintf(stderr, "zinc-data: %s: shard version %d (only %d is supported)\n", path, hdr[1],
                ZINC_SHARD_VERSION);
        goto done;
    }
    if (hdr[2] < 0) {
        fprintf(stderr, "zinc-data: %s: negative token count %d in header\n", path, hdr[2]);
        goto done;
    }
    uint64_t n = (uint64_t)hdr[2], want = hdr_bytes + 2 * n;
    if (size != want) {
        fprintf(stderr,
                "zinc-data: %s is %llu bytes but its header says %llu tokens (%llu bytes); "
                "the shard is %s\n",
                path, (unsigned long long)size, (unsigned long long)n, (unsigned long long)want,
                size < want ? "truncated" : "padded");
        goto done;
    }
    const uint16_t *t = (const uint16_t *)((const char *)map + hdr_bytes);
    unsigned lo = 65535, hi = 0;
    for (uint64_t i = 0; i < n; i++) {
        lo = t[i] < lo ? t[i] : lo;
        hi = t[i] > hi ? t[i] : hi;
    }
    if (n)
        printf("%s: %llu tokens, ids %u..%u (needs vocab_size >= %u), header ok "
               "(magic %d, version %d, %llu bytes)\n",
               path, (unsigned long long)n, lo, hi, hi + 1, ZINC_SHARD_MAGIC, ZINC_SHARD_VERSION,
               (unsigned long long)size);
    else
        printf("%s: 0 tokens, header ok (magic %d, version %d, %llu bytes)\n", path,
               ZINC_SHARD_MAGIC, ZINC_SHARD_VERSION, (unsigned long long)size);
    rc = 0;
done:
    munmap(map, (size_t)size);
    return rc;
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
