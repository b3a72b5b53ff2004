/* partition.c - which contiguous layers each pipeline stage holds (zinc/pipeline.h).
 *
 * "uniform" is DeepSpeed's partition_uniform (the first n % parts parts one layer more).
 * Otherwise weights per layer (parameter counts, or 1 per layer whose type matches) are
 * split into non-empty contiguous parts minimising the largest part's weight: a binary
 * search over that bound, each probe a greedy left-to-right packing (the least number of
 * parts a bound needs; splitting a part further never raises it, so any bound that needs
 * at most `parts` is feasible). The split itself packs left to right under the optimal
 * bound, leaving one layer for each part still to come. Pure: no I/O, no communication.
 */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/pipeline.h"

/* Least parts whose weights stay <= cap (every weight <= cap). */
static int parts_needed(const long long *w, int n, long long cap)
{
    int k = 1;
    long long sum = 0;
    for (int i = 0; i < n; i++) {
        if (sum + w[i] > cap) {
            k++;
            sum = 0;
        }
        sum += w[i];
    }
    return k;
}

static void split(const long long *w, int n, int parts, int *bounds)
{
    long long lo = 0, hi = 0;
    for (int i = 0; i < n; i++) {
        if (w[i] > lo) lo = w[i];
        hi += w[i];
    }
    while (lo < hi) { /* the least cap that `parts` parts can hold */
        long long mid = lo + (hi - lo) / 2;
        if (parts_needed(w, n, mid) <= parts) hi = mid;
        else lo = mid + 1;
    }
    int at = 0;
    bounds[0] = 0;
    for (int k = 0; k < parts; k++) {
        long long sum = w[at];
        int end = at + 1; /* every part takes at least one layer */
        while (end < n - (parts - k - 1) && sum + w[end] <= lo) sum += w[end++];
        if (k == parts - 1) end = n;
        bounds[k + 1] = end;
        at = end;
    }
}

zinc_status zinc_pp_partition(const char *method, const zinc_pp_layer_info *layers, int n, int parts, int *bounds)
{
    if (!method || !bounds || (n > 0 && !layers))
        return zinc_error(ZINC_ERR_INVALID_ARG, "pipeline.partition: NULL argument");
    if (parts < 1 || parts > n)
        return zinc_error(ZINC_ERR_INVALID_ARG,
                          "pipeline.stages %d: the model has %d layers, and each stage needs at least one", parts, n);
    long long *w = malloc((size_t)n * sizeof *w);
    if (!w) return zinc_error(ZINC_ERR_NOMEM, "pipeline.partition: out of memory");
    zinc_status st = ZINC_OK;
    if (strcmp(method, "parameters") == 0) {
        for (int i = 0; i < n; i++) {
            if (layers[i].params < 0) {
                st = zinc_error(ZINC_ERR_INVALID_ARG, "pipeline.partition: layer %d has %lld parameters", i,
                                layers[i].params);
                goto out;
            }
            w[i] = layers[i].params;
        }
    } else if (strcmp(method, "uniform") == 0) { /* DeepSpeed's partition_uniform */
        int q = n / parts, r = n % parts;
        bounds[0] = 0;
        for (int k = 0; k < parts; k++) bounds[k + 1] = bounds[k] + q + (k < r);
        goto out;
    } else if (strncmp(method, "type:", 5) == 0) {
        regex_t re;
        int rc = regcomp(&re, method + 5, REG_EXTENDED | REG_ICASE | REG_NOSUB);
        if (rc != 0) {
            char why[200];
            regerror(rc, &re, why, sizeof why);
            st = zinc_error(ZINC_ERR_INVALID_ARG, "pipeline.partition \"%s\": bad regular expression: %s", method, why);
            goto out;
        }
        long long hits = 0;
        for (int i = 0; i < n; i++) {
            w[i] = layers[i].type && regexec(&re, layers[i].type, 0, NULL, 0) == 0;
            hits += w[i];
        }
        regfree(&re);
        if (hits == 0) {
            char types[256] = "";
            for (int i = 0; i < n; i++) {
                const char *t = layers[i].type ? layers[i].type : "?";
                int seen = 0;
                for (int j = 0; j < i && !seen; j++) seen = layers[j].type && strcmp(layers[j].type, t) == 0;
                if (!seen && strlen(types) + strlen(t) + 3 < sizeof types)
                    snprintf(types + strlen(types), sizeof types - strlen(types), "%s%s", types[0] ? ", " : "", t);
            }
            st = zinc_error(ZINC_ERR_INVALID_ARG, "pipeline.partition \"%s\" matches no layer (the layer types: %s)",
                            method, types);
            goto out;
        }
    } else {
        st = zinc_error(ZINC_ERR_INVALID_ARG,
                        "pipeline.partition \"%s\": expected \"parameters\", \"uniform\" or \"type:REGEX\"", method);
        goto out;
    }
    split(w, n, parts, bounds);
out:
    free(w);
    return st;
}
