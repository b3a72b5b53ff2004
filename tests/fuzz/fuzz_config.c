/* fuzz_config.c - fuzz target: the config parser with --set overrides
 * (zinc_config_load_string), the batch rule (zinc_config_resolve), the range
 * check and the dump.
 *
 * Input: the JSON text, then optionally a NUL byte and up to 8 overrides
 * separated by NUL bytes ("path=value" as zinc-train's --set passes them):
 *   {"train_batch_size": 8} \0 train.max_steps=3 \0 zero_optimization.stage=2
 * NUL is the separator because neither part can hold one: the JSON reaches
 * the parser as a C string, an override as an argv string. A ninth NUL and
 * what follows it stay in the eighth override's string (cut there by C).
 *
 * Properties checked (each a documented contract of zinc/config.h):
 *   - a failed load or resolve leaves the caller's struct unchanged;
 *   - a loaded config passes zinc_config_check (the parser enforces its ranges);
 *   - a resolved triple satisfies tbs == micro * accum * dp, micro and accum >= 1;
 *   - dump -> load -> resolve gives the same config (tests/config's round
 *     trip), for the first DP size that resolves, up to the dump's 15
 *     significant digits (check_round_trip). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "zinc/config.h"
#include "zinc/log.h"

#define MAX_OVERRIDES 8

/* Two configs equal in every field except the private "given" record. */
static int same_config(const zinc_config *a, const zinc_config *b)
{
    zinc_config x = *a, y = *b;
    memset(&x.given, 0, sizeof x.given);
    memset(&y.given, 0, sizeof y.given);
    return !memcmp(&x, &y, sizeof x);
}

/* A config filled with a byte pattern no load produces, to see that a failed
 * call left it alone. */
static zinc_config poisoned;
static int strict_dump; /* ZINC_FUZZ_STRICT_DUMP: see check_round_trip */

static void poison(zinc_config *c) { memcpy(c, &poisoned, sizeof *c); }

static int is_poisoned(const zinc_config *c) { return !memcmp(c, &poisoned, sizeof *c); }

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    zinc_log_set_level(ZINC_LOG_ERROR); /* warnings about unknown keys: every input has some */
    memset(&poisoned, 0xa5, sizeof poisoned);
    strict_dump = getenv("ZINC_FUZZ_STRICT_DUMP") != NULL;
    return 0;
}

/* Loads and resolves s (a dump) into r for dp; requires both to work. */
static void reload(const char *s, int dp, zinc_config *r)
{
    zinc_status st = zinc_config_load_string(s, "dump", NULL, 0, r);
    fuzz_require(st == ZINC_OK, "the dump does not load: %s\n%s", zinc_last_error(), s);
    st = zinc_config_resolve(r, dp);
    fuzz_require(st == ZINC_OK, "the dump does not resolve for dp %d: %s\n%s", dp,
                 zinc_last_error(), s);
}

/* Loads and resolves the dump of c (resolved for dp) and requires the same
 * config. Known limit: the dump writes numbers at 15 significant digits
 * (JSON_REAL_PRECISION(15) in zinc_config_dump), so a value that needs 16
 * or 17 ("lr": 4666666666666666, tests/fuzz/corpus/config/crash-dump-real-
 * precision) comes back rounded. Unless ZINC_FUZZ_STRICT_DUMP is set, a
 * config that differs is accepted when nothing the dump shows differs (its
 * dump is the same text) and it is itself an exact fixed point, so any other
 * loss (a key the dump drops or misnames) still fails. */
static void check_round_trip(const zinc_config *c, int dp)
{
    char *s = zinc_config_dump(c);
    fuzz_require(s != NULL, "zinc_config_dump returned NULL");
    static zinc_config r, r2;
    reload(s, dp, &r);
    if (!same_config(c, &r)) {
        fuzz_require(!strict_dump, "dump round trip differs (dp %d)\n%s", dp, s);
        char *s2 = zinc_config_dump(&r);
        fuzz_require(s2 && !strcmp(s, s2), "dump round trip differs (dp %d)\n%s\nthen\n%s", dp,
                     s, s2 ? s2 : "NULL");
        reload(s2, dp, &r2);
        fuzz_require(same_config(&r, &r2), "dump round trip differs twice (dp %d)\n%s", dp, s2);
        free(s2);
    }
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = fuzz_strndup(data, size);
    const char *ovr[MAX_OVERRIDES];
    int n_ovr = 0;
    size_t json_len = strlen(buf);
    for (size_t at = json_len; at < size && n_ovr < MAX_OVERRIDES; at += strlen(buf + at)) {
        at++; /* past the NUL */
        ovr[n_ovr++] = buf + at;
    }

    static zinc_config c; /* 20 KiB: static, not on the fuzzer's stack */
    poison(&c);
    zinc_status st = zinc_config_load_string(buf, "fuzz.json", ovr, n_ovr, &c);
    if (st != ZINC_OK) {
        fuzz_require(is_poisoned(&c), "failed load (%s) changed the config", zinc_last_error());
        fuzz_require(zinc_last_error()[0] != '\0', "failed load without a detail");
        free(buf);
        return 0;
    }
    st = zinc_config_check(&c);
    fuzz_require(st == ZINC_OK, "a loaded config fails zinc_config_check: %s", zinc_last_error());

    static const int dps[] = {1, 2, 3, 8};
    int tripped = 0;
    for (size_t i = 0; i < sizeof dps / sizeof *dps; i++) {
        static zinc_config before;
        memcpy(&before, &c, sizeof c);
        st = zinc_config_resolve(&c, dps[i]);
        if (st != ZINC_OK) {
            fuzz_require(!memcmp(&before, &c, sizeof c), "failed resolve (%s) changed the config",
                         zinc_last_error());
            continue;
        }
        /* the batch rule's DP: the ranks over the TP size and the pipeline stages */
        const int dp = zinc_config_dp_size(&c, dps[i]);
        fuzz_require(dp >= 1 && dp * c.tp.size * c.pp.stages == dps[i], "DP %d x TP %lld x PP %lld is not %d ranks",
                     dp, (long long)c.tp.size, (long long)c.pp.stages, dps[i]);
        fuzz_require(c.pp.virtual_stages == 1 || c.pp.schedule == 2, "virtual stages %lld with schedule %d",
                     (long long)c.pp.virtual_stages, c.pp.schedule);
        fuzz_require(c.pp.schedule != 2 || c.gradient_accumulation_steps % c.pp.stages == 0,
                     "interleaved: %lld micro-batches over %lld stages", (long long)c.gradient_accumulation_steps,
                     (long long)c.pp.stages);
        fuzz_require(c.train_micro_batch_size_per_gpu >= 1 && c.gradient_accumulation_steps >= 1 &&
                         c.train_batch_size == c.train_micro_batch_size_per_gpu *
                                                   c.gradient_accumulation_steps * dp,
                     "resolved triple %lld = %lld * %lld * DP %d does not hold",
                     (long long)c.train_batch_size, (long long)c.train_micro_batch_size_per_gpu,
                     (long long)c.gradient_accumulation_steps, dp);
        if (!tripped++) check_round_trip(&c, dps[i]);
    }
    free(buf);
    return 0;
}
