/* zinc/rng.h - small deterministic random streams (splitmix64), so every
 * random number zinc draws is a pure function of (seed, stream name, index)
 * and independent of the number of ranks or threads. */
#ifndef ZINC_RNG_H
#define ZINC_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zinc_rng {
    uint64_t s;
} zinc_rng;

/* 64-bit FNV-1a hash of a string (stream names). */
uint64_t zinc_hash_str(const char *s);
/* Seeds a stream from a seed and a stream id. */
void zinc_rng_seed(zinc_rng *r, uint64_t seed, uint64_t stream);
uint64_t zinc_rng_u64(zinc_rng *r);
/* Uniform in [0, 1). */
double zinc_rng_uniform(zinc_rng *r);
/* Fills out[n] with N(0, std^2) (Box-Muller, pairs). */
void zinc_rng_normal(zinc_rng *r, float *out, int64_t n, float std);

/* Elements [first, first+n) of the N(0, std^2) stream that zinc_rng_seed(seed,
 * stream) + zinc_rng_normal would produce, without generating the ones before:
 * a rank initializes just its shard of a parameter. */
void zinc_rng_normal_range(uint64_t seed, uint64_t stream, float *out, int64_t first, int64_t n,
                           float std);

/* Elements [first, first+n) of a U(-bound, bound) stream of (seed, stream): element i
 * from draw i alone, so a rank fills just its shard. */
void zinc_rng_uniform_range(uint64_t seed, uint64_t stream, float *out, int64_t first, int64_t n, float bound);

#ifdef __cplusplus
}
#endif

#endif
