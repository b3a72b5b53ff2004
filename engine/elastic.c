/* elastic.c - DeepSpeed's elasticity rule (version 0.1): one global batch
 * that many rank counts can run, and the micro-batch each of them uses.
 * Pure arithmetic on the config's elasticity section; zinc_config_resolve
 * uses it to set the batch triple, zinc-run --elastic to choose how many
 * ranks to relaunch on. See include/zinc/config.h for the rule. */
#include <stdio.h>
#include <string.h>

#include "zinc/config.h"

/* The smallest highly composite numbers (each has more divisors than any
 * smaller number): scaling a base by one keeps the batch divisible by many
 * rank counts. DeepSpeed uses the same 38. */
static const int64_t hcn[] = {
    1, 2, 4, 6, 12, 24, 36, 48, 60, 120, 180, 240, 360, 720, 840, 1260, 1680, 2520, 5040,
    7560, 10080, 15120, 20160, 25200, 27720, 45360, 50400, 55440, 83160, 110880, 166320,
    221760, 277200, 332640, 498960, 554400, 665280, 720720,
};

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

int zinc_elastic_fits(const zinc_config *c, int64_t batch, int64_t ranks, int64_t *micro)
{
    int64_t best = 0;
    if (ranks < 1 || batch < 1) return 0;
    for (int i = 0; i < c->elasticity.n_micro; i++) {
        int64_t m = c->elasticity.micro_batch_sizes[i];
        if (m > 0 && m > best && batch % m == 0 && (batch / m) % ranks == 0) best = m;
    }
    if (micro) *micro = best;
    return best > 0;
}

/* Rank counts in [min_gpus, max_gpus] that can run batch. */
static int64_t count_valid(const zinc_config *c, int64_t batch)
{
    int64_t n = 0, hi = c->elasticity.max_gpus < batch ? c->elasticity.max_gpus : batch;
    for (int64_t g = c->elasticity.min_gpus; g <= hi; g++) n += zinc_elastic_fits(c, batch, g, NULL);
    return n;
}

int64_t zinc_elastic_batch(const zinc_config *c)
{
    const int64_t max = c->elasticity.max_train_batch_size;
    int nb = c->elasticity.n_micro;
    int64_t base[ZINC_ELASTIC_MAX_MICRO + 1], lcm = 1;
    for (int i = 0; i < nb; i++) {
        int64_t m = c->elasticity.micro_batch_sizes[i];
        base[i] = m;
        if (lcm > 0) {
            int64_t l = lcm / gcd64(lcm, m);
            lcm = __builtin_mul_overflow(l, m, &l) || l > max ? 0 : l; /* 0: past the max */
        }
    }
    if (lcm > 0) base[nb++] = lcm;
    int64_t final = 0, final_n = -1;
    for (int i = 0; i < nb; i++) {
        if (base[i] > max) continue;
        int64_t b = base[i];
        for (size_t k = 0; k < sizeof hcn / sizeof *hcn; k++) {
            if (hcn[k] > max / base[i]) break;
            b = base[i] * hcn[k];
        }
        int64_t n = count_valid(c, b);
        if (n > final_n || (n == final_n && (c->elasticity.prefer_larger_batch ? b > final
                                                                               : b < final))) {
            final = b;
            final_n = n;
        }
    }
    return final;
}

int zinc_elastic_ranks(const zinc_config *c, int available)
{
    if (!c->elasticity.enabled) return available;
    int64_t b = zinc_elastic_batch(c);
    for (int64_t g = available; g >= 1; g--)
        if (g >= c->elasticity.min_gpus && g <= c->elasticity.max_gpus &&
            zinc_elastic_fits(c, b, g, NULL))
            return (int)g;
    return 0;
}

void zinc_elastic_valid_list(const zinc_config *c, int64_t batch, char *buf, size_t cap)
{
    size_t len = 0;
    int64_t hi = c->elasticity.max_gpus < batch ? c->elasticity.max_gpus : batch;
    buf[0] = '\0';
    for (int64_t g = c->elasticity.min_gpus; g <= hi; g++) {
        if (!zinc_elastic_fits(c, batch, g, NULL)) continue;
        char item[32];
        int k = snprintf(item, sizeof item, "%s%lld", len ? ", " : "", (long long)g);
        if (len + (size_t)k + 5 >= cap) {
            snprintf(buf + len, cap - len, ", ...");
            return;
        }
        memcpy(buf + len, item, (size_t)k + 1);
        len += (size_t)k;
    }
    if (!len) snprintf(buf, cap, "none");
}
