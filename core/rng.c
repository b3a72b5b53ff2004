/* rng.c - splitmix64 streams and Box-Muller normals. */
#include <math.h>

#include "zinc/rng.h"

uint64_t zinc_hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void zinc_rng_seed(zinc_rng *r, uint64_t seed, uint64_t stream)
{
    r->s = seed * 0x9e3779b97f4a7c15ull ^ (stream + 0x632be59bd9b4e019ull);
    (void)zinc_rng_u64(r);
}

uint64_t zinc_rng_u64(zinc_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double zinc_rng_uniform(zinc_rng *r)
{
    return (double)(zinc_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

void zinc_rng_normal(zinc_rng *r, float *out, int64_t n, float std)
{
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = zinc_rng_uniform(r), u2 = zinc_rng_uniform(r);
        if (u1 < 1e-300) u1 = 1e-300;
        double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
        out[i] = (float)(rad * cos(th)) * std;
        if (i + 1 < n) out[i + 1] = (float)(rad * sin(th)) * std;
    }
}

void zinc_rng_normal_range(uint64_t seed, uint64_t stream, float *out, int64_t first, int64_t n,
                           float std)
{
    zinc_rng r;
    zinc_rng_seed(&r, seed, stream);
    /* element i comes from the pair of draws 2*(i/2), 2*(i/2)+1; each draw
     * advances the state by one constant, so the stream can be entered anywhere */
    int64_t pair = first / 2;
    r.s += (uint64_t)(2 * pair) * 0x9e3779b97f4a7c15ull;
    int64_t i = 0;
    if (first & 1) {
        float two[2];
        zinc_rng_normal(&r, two, 2, std);
        if (n > 0) out[i++] = two[1];
    }
    int64_t rest = n - i;
    zinc_rng_normal(&r, out + i, rest & ~(int64_t)1, std);
    if (rest & 1) {
        float two[2];
        zinc_rng_normal(&r, two, 2, std);
        out[n - 1] = two[0];
    }
}

void zinc_rng_uniform_range(uint64_t seed, uint64_t stream, float *out, int64_t first, int64_t n, float bound)
{
    zinc_rng r;
    zinc_rng_seed(&r, seed, stream);
    r.s += (uint64_t)first * 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; i < n; i++) out[i] = (float)((2.0 * zinc_rng_uniform(&r) - 1.0) * bound);
}
