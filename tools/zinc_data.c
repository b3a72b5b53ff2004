/* zinc_data.c - `zinc-data`: makes token shards from text (byte-level, or
 * through a Hugging Face tokenizer.json) and inspects shards.
 *
 *   zinc-data [--ext .c,.h,.md] [--tokenizer PATH] -o OUT.bin INPUT...
 *   zinc-data [--tokenizer PATH] [--chat-template NAME] [--block-size N] [--eos TOKEN | --no-eos]
 *             -o OUT.bin DATA.jsonl...
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
#include "zinc/progress.h"
#include "zinc/status.h"
#include "zinc/tokenizer.h"

static const char *usage_text =
    "usage: zinc-data [--ext .c,.h,.md] [--tokenizer PATH] -o OUT.bin INPUT...\n"
    "       zinc-data [--tokenizer PATH] [--chat-template chatml|qwen2|llama3|llama2] [--block-size N]\n"
    "                 [--eos TOKEN | --no-eos] -o OUT.bin DATA.jsonl...\n"
    "       zinc-data info SHARD...\n"
    "  Tokenizes text files and directories (walked recursively in sorted order,\n"
    "  hidden entries and build* folders skipped; --ext filters the files found in\n"
    "  directories, files named on the command line are always taken) into one\n"
    "  shard: byte tokens (0..255), or with --tokenizer the ids of a Hugging Face\n"
    "  tokenizer.json (PATH: the file or a folder holding it; byte-level BPE),\n"
    "  each file encoded whole. Inputs ending in .jsonl are records, one per line:\n"
    "  {\"text\"}, {\"prompt\", \"completion\"}, {\"messages\": [{\"role\", \"content\"}]} (rendered\n"
    "  by --chat-template) or {\"input_ids\", \"labels\"} (-100: no loss), written as a\n"
    "  shard of documents with loss masks (loss on completions and assistant replies\n"
    "  only), each sample kept whole in a row of --block-size tokens (the run's\n"
    "  seq_len; longer ones truncated and counted). --eos defaults to the eos_token of\n"
    "  the tokenizer_config.json beside the tokenizer. `info` prints each shard's token\n"
    "  count, the range of token ids it uses and whether its header and size are right.\n";

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
    if (i.version == ZINC_SHARD_VERSION_DOCS)
        printf("%s: %llu documents, %llu tokens, %llu targets (%.1f%% of tokens masked), packed for block %d%s\n",
               path, (unsigned long long)i.n_docs, (unsigned long long)i.n_tokens, (unsigned long long)i.n_targets,
               i.n_tokens ? 100.0 * (double)(i.n_tokens - i.n_targets) / (double)i.n_tokens : 0.0, i.block,
               i.block ? "" : " (not packed)");
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

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* JSONL inputs: records into a shard of documents with loss masks, and a summary. */
static int cmd_jsonl(char **inputs, int n, const char *out, const char *tokp, const zinc_tokenizer *tok,
                     const char *tmpl, long block, const char *eos, int no_eos)
{
    char eos_buf[256] = "";
    if (!eos && !no_eos && tokp && zinc_tokenizer_config_eos(tokp, eos_buf, sizeof eos_buf)) eos = eos_buf;
    zinc_progress bar;
    zinc_progress_init(&bar, "tokenizing", isatty(STDERR_FILENO), 30, 64u << 20);
    zinc_jsonl_opts o = {.chat_template = tmpl, .block = (int)block, .eos = no_eos ? NULL : eos,
                         .progress = zinc_progress_cb, .progress_u = &bar};
    zinc_jsonl_stats s;
    zinc_status st = zinc_data_write_shard_from_jsonl((const char *const *)inputs, n, tok, &o, out, &s);
    if (st != ZINC_OK) {
        zinc_progress_end(&bar);
        const char *msg = zinc_last_error();
        fprintf(stderr, "zinc-data: %s\n", strncmp(msg, "data: ", 6) ? msg : msg + 6);
        return 1;
    }
    printf("wrote %llu tokens to %s: %llu documents, %llu tokens of them, %llu targets (%.1f%% of the tokens take "
           "no loss)", (unsigned long long)s.written, out, (unsigned long long)s.docs, (unsigned long long)s.tokens,
           (unsigned long long)s.targets,
           s.written ? 100.0 * (double)(s.written - s.targets) / (double)s.written : 0.0);
    if (block)
        printf(", packed in rows of %ld (%llu padding tokens), %llu truncated to %ld tokens (%llu tokens cut)", block,
               (unsigned long long)s.pad_tokens, (unsigned long long)s.truncated, block,
               (unsigned long long)s.truncated_tokens);
    if (s.empty) printf(", %llu empty samples skipped", (unsigned long long)s.empty);
    if (s.eos >= 0) printf(", eos %s (id %d)", o.eos, s.eos);
    else printf(", no eos token");
    printf("\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "info")) return cmd_info(argc - 2, argv + 2);
    const char *exts = NULL, *out = NULL, *tokp = NULL, *tmpl = NULL, *eos = NULL;
    long block = -1;
    int no_eos = 0;
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
        if (!strcmp(a, "--no-eos")) {
            no_eos = 1;
        } else if (!strcmp(a, "--ext") || !strcmp(a, "-o") || !strcmp(a, "--tokenizer") ||
                   !strcmp(a, "--chat-template") || !strcmp(a, "--block-size") || !strcmp(a, "--eos")) {
            if (i + 1 >= argc) {
                char why[64];
                snprintf(why, sizeof why, "%s needs a value", a);
                return usage(why);
            }
            const char *v = argv[++i];
            if (a[1] == 'o') out = v;
            else if (!strcmp(a, "--tokenizer")) tokp = v;
            else if (!strcmp(a, "--chat-template")) tmpl = v;
            else if (!strcmp(a, "--eos")) eos = v;
            else if (!strcmp(a, "--block-size")) {
                char *end;
                errno = 0;
                block = strtol(v, &end, 10);
                if (*v == '\0' || *end || errno || block < 0 || block > (1 << 24))
                    return usage("--block-size needs a token count from 0 to 16777216");
            } else exts = v;
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
    int n_jsonl = 0;
    for (int k = i; k < argc; k++) n_jsonl += ends_with(argv[k], ".jsonl");
    if (n_jsonl && n_jsonl != argc - i) return usage("give JSONL inputs or text inputs, not both");
    if (!n_jsonl && (tmpl || block >= 0 || eos || no_eos))
        return usage("--chat-template, --block-size and --eos are for .jsonl inputs");
    if (n_jsonl && exts) return usage("--ext is for text inputs");
    if (eos && no_eos) return usage("--eos and --no-eos contradict each other");
    if (tmpl && !zinc_chat_template_known(tmpl)) {
        fprintf(stderr, "zinc-data: --chat-template %s: zinc knows chatml, qwen2, llama3 and llama2\n", tmpl);
        return 2;
    }
    zinc_tokenizer *tok = NULL;
    if (tokp && zinc_tokenizer_load(tokp, &tok) != ZINC_OK) {
        fprintf(stderr, "zinc-data: --tokenizer: %s\n", zinc_last_error());
        return 1;
    }
    if (n_jsonl) {
        int rc = cmd_jsonl(argv + i, argc - i, out, tokp, tok, tmpl, block < 0 ? 0 : block, eos, no_eos);
        zinc_tokenizer_free(tok);
        return rc;
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
