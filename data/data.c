/* data.c - token shards, the deterministic global sample order, and a user's batch
 * source (the writers of shards are in shard_write.c).
 *
 * Open: every path is expanded with glob(3) (matches sorted), each shard's
 * 1024-byte header is checked (magic, version 1: uint16 tokens, or 2: uint32, as llm.c
 * writes Llama-3's, and file size exactly 1024 + 2 or 4 * count), the file is memory-mapped read-only and its tokens are
 * scanned once against vocab_size. The loader then sees the shards as one
 * token stream; sample s covers tokens [s*T, s*T + T] (T = seq_len, T+1
 * tokens: inputs are the first T, targets the last T), so samples overlap by
 * one token and n_samples = (n_tokens - 1) / T.
 *
 * Order: global sample k is in epoch e = k / n_samples at position
 * i = k % n_samples and is sample perm_e[i], perm_e a Fisher-Yates shuffle
 * driven by splitmix64 seeded from (seed, e). It depends on nothing else, so
 * every DP layout and every resume sees the same sequence. The permutation of
 * the last epoch asked for is cached in the loader behind a mutex: gets from
 * several threads are safe (they serialise on the cache), and the observable
 * result never depends on the cache.
 *
 * Shards are little-endian on disk; tokens are read in place, so this file
 * assumes a little-endian host (checked at compile time).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zinc/data.h"
#include "zinc/file.h"
#include "zinc/tokenizer.h"
#include "data_int.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "zinc data shards are read in place and need a little-endian host"
#endif



struct zinc_data {
    data_shard *shards;
    int n_shards;
    int seq_len;
    uint64_t seed;
    uint64_t n_tokens;
    uint64_t n_samples;
    bool docs; /* some shard has documents (version 3): targets and positions follow them */
    bool has_src; /* a user's batch source instead of shards (zinc_data_from_source) */
    zinc_batch_source src;
    bool masked; /* the source's targets may be -1 (no documents: positions run 0..T-1) */
    int vocab;
    /* Permutation cache: perm holds perm_e for e = perm_epoch. */
    pthread_mutex_t lock;
    uint64_t *perm; /* (n_samples,) */
    uint64_t perm_epoch;
    bool perm_valid;
};

/* ---------------------------------------------------------------- PRNG --- */

/* splitmix64 (Steele, Lea, Flood 2014): a tiny generator with a full 2^64
 * period whose output function is also a good 64-bit mixer. */
static uint64_t data_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform integer in [0, n), n >= 1, without modulo bias (rejects the
 * 2^64 mod n lowest outputs). */
static uint64_t data_uniform(uint64_t *state, uint64_t n)
{
    uint64_t threshold = (0 - n) % n;
    for (;;) {
        uint64_t r = data_splitmix64(state);
        if (r >= threshold) return r % n;
    }
}

/* Fills perm (n,) with the permutation of epoch e for seed. */
static void data_perm_fill(uint64_t *perm, uint64_t n, uint64_t seed, uint64_t epoch)
{
    uint64_t s = seed;
    uint64_t mixed_seed = data_splitmix64(&s);
    uint64_t e = epoch ^ 0xD1B54A32D192ED03ull;
    uint64_t state = mixed_seed ^ data_splitmix64(&e);
    for (uint64_t i = 0; i < n; i++) perm[i] = i;
    for (uint64_t i = n - 1; i > 0; i--) {
        uint64_t j = data_uniform(&state, i + 1);
        uint64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* ---------------------------------------------------------------- open --- */

void data_shard_release(data_shard *sh)
{
    if (sh->map) munmap(sh->map, sh->map_bytes);
    free(sh->path);
    memset(sh, 0, sizeof *sh);
}

/* Index of the first token >= vocab in the shard, or n_tokens if none. Scans in
 * blocks with a branch-free max so the common (clean) case vectorises. */
static uint64_t data_find_bad_token(const data_shard *sh, int vocab)
{
    const uint64_t block = 4096, n = sh->n_tokens;
    const uint16_t *t16 = sh->tokens;
    const uint32_t *t32 = sh->tokens;
    for (uint64_t b = 0; b < n; b += block) {
        uint64_t e = b + block < n ? b + block : n;
        uint32_t mx = 0;
        if (sh->tsz == 2)
            for (uint64_t i = b; i < e; i++) mx = t16[i] > mx ? t16[i] : mx;
        else
            for (uint64_t i = b; i < e; i++) mx = t32[i] > mx ? t32[i] : mx;
        if (mx < (uint32_t)vocab) continue;
        for (uint64_t i = b; i < e; i++)
            if (shard_tok(sh, i) >= (uint32_t)vocab) return i;
    }
    return n;
}

/* Opens, checks and maps one shard file into *sh (path is copied). */
zinc_status data_shard_open(const char *path, int vocab_size, data_shard *sh)
{
    zinc_status st = ZINC_OK;
    memset(sh, 0, sizeof *sh);
    int fd;
    long long fsize;
    st = zinc_open_regular(path, 0, "token shard", &fd, &fsize); /* a FIFO would block */
    if (st != ZINC_OK) return zinc_error(st, "data: %s", zinc_last_error());
    uint64_t size = (uint64_t)fsize;
    if (size < HEADER_BYTES) {
        st = zinc_error(ZINC_ERR_CORRUPT,
                        "data: %s is %llu bytes, shorter than the %llu-byte shard header "
                        "(truncated or not a token shard)",
                        path, (unsigned long long)size, (unsigned long long)HEADER_BYTES);
        goto cleanup;
    }
    if (size > (uint64_t)SIZE_MAX) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "data: %s is too large to map", path);
        goto cleanup;
    }
    sh->map_bytes = (size_t)size;
    sh->map = mmap(NULL, sh->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (sh->map == MAP_FAILED) {
        sh->map = NULL;
        st = zinc_error(ZINC_ERR_IO, "data: cannot mmap %s: %s", path, strerror(errno));
        goto cleanup;
    }
    const int32_t *hdr = (const int32_t *)sh->map;
    if (hdr[0] != ZINC_SHARD_MAGIC) {
        st = zinc_error(ZINC_ERR_CORRUPT,
                        "data: %s: bad magic %d (expected %d); not a token shard", path,
                        hdr[0], ZINC_SHARD_MAGIC);
        goto cleanup;
    }
    if (hdr[1] != ZINC_SHARD_VERSION && hdr[1] != ZINC_SHARD_VERSION_U32 && hdr[1] != ZINC_SHARD_VERSION_DOCS) {
        st = zinc_error(ZINC_ERR_UNSUPPORTED, "data: %s: shard version %d (zinc reads %d, uint16 tokens, %d, "
                        "uint32, and %d, documents with loss masks)", path, hdr[1], ZINC_SHARD_VERSION,
                        ZINC_SHARD_VERSION_U32, ZINC_SHARD_VERSION_DOCS);
        goto cleanup;
    }
    const int docs = hdr[1] == ZINC_SHARD_VERSION_DOCS;
    sh->tsz = hdr[1] == ZINC_SHARD_VERSION ? 2 : hdr[1] == ZINC_SHARD_VERSION_U32 ? 4 : hdr[3];
    if (docs && ((sh->tsz != 2 && sh->tsz != 4) || hdr[4] < 0)) {
        st = zinc_error(ZINC_ERR_CORRUPT, "data: %s: version %d header with %d-byte tokens and block %d "
                        "(corrupt header)", path, hdr[1], hdr[3], hdr[4]);
        goto cleanup;
    }
    sh->block = docs ? hdr[4] : 0;
    if (hdr[2] < 0) {
        st = zinc_error(ZINC_ERR_CORRUPT, "data: %s: negative token count %d in header", path,
                        hdr[2]);
        goto cleanup;
    }
    sh->n_tokens = (uint64_t)hdr[2];
    uint64_t want = HEADER_BYTES + (uint64_t)(sh->tsz + docs) * sh->n_tokens;
    if (size != want) {
        st = zinc_error(ZINC_ERR_CORRUPT,
                        "data: %s is %llu bytes but its header says %llu tokens (%llu bytes); "
                        "the shard is %s",
                        path, (unsigned long long)size, (unsigned long long)sh->n_tokens,
                        (unsigned long long)want, size < want ? "truncated" : "padded");
        goto cleanup;
    }
    sh->tokens = (const char *)sh->map + HEADER_BYTES;
    if (docs) {
        sh->flags = (const uint8_t *)sh->tokens + (size_t)sh->tsz * sh->n_tokens;
        uint8_t any = 0;
        for (uint64_t i = 0; i < sh->n_tokens; i++) {
            any |= sh->flags[i];
            sh->n_docs += (sh->flags[i] & ZINC_TOK_DOC) != 0;
        }
        if ((any & ~(ZINC_TOK_LOSS | ZINC_TOK_DOC)) || (sh->n_tokens && !(sh->flags[0] & ZINC_TOK_DOC))) {
            st = zinc_error(ZINC_ERR_CORRUPT, "data: %s: bad token flags (%s)", path,
                            sh->n_tokens && !(sh->flags[0] & ZINC_TOK_DOC) ? "the first token starts no document"
                                                                            : "unknown bits");
            goto cleanup;
        }
    }
    uint64_t bad = data_find_bad_token(sh, vocab_size);
    if (bad < sh->n_tokens) {
        st = zinc_error(ZINC_ERR_CORRUPT,
                        "data: %s: token %u at index %llu is >= vocab_size %d "
                        "(shard made with another tokenizer?)",
                        path, (unsigned)shard_tok(sh, bad), (unsigned long long)bad, vocab_size);
        goto cleanup;
    }
    sh->path = strdup(path);
    if (!sh->path) st = zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
cleanup:
    close(fd);
    if (st != ZINC_OK) data_shard_release(sh);
    return st;
}

static bool data_has_glob_chars(const char *s)
{
    return strpbrk(s, "*?[") != NULL;
}

/* Writes "a.bin, b.bin" (at most 3 names, then "and N more") into buf. */
static void data_name_shards(const zinc_data *d, char *buf, size_t cap)
{
    size_t off = 0;
    buf[0] = '\0';
    for (int i = 0; i < d->n_shards && off < cap; i++) {
        int w;
        if (i == 3) {
            w = snprintf(buf + off, cap - off, " and %d more", d->n_shards - 3);
            break;
        }
        w = snprintf(buf + off, cap - off, "%s%s", i ? ", " : "", d->shards[i].path);
        if (w < 0) break;
        off += (size_t)w;
    }
}

zinc_status zinc_data_open(const char *const *paths, int n_paths, int seq_len, int vocab_size,
                           uint64_t seed, zinc_data **out)
{
    zinc_status st = ZINC_OK;
    if (!out) return zinc_error(ZINC_ERR_INVALID_ARG, "data: out is NULL");
    *out = NULL;
    if (!paths || n_paths <= 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "data: no shard paths given");
    if (seq_len <= 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "data: seq_len %d must be >= 1", seq_len);
    if (vocab_size <= 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "data: vocab_size %d must be >= 1", vocab_size);

    zinc_data *d = calloc(1, sizeof *d);
    if (!d) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
    pthread_mutex_init(&d->lock, NULL);
    d->seq_len = seq_len;
    d->seed = seed;
    int cap = 0;
    for (int p = 0; p < n_paths; p++) {
        if (!paths[p]) {
            st = zinc_error(ZINC_ERR_INVALID_ARG, "data: shard path %d is NULL", p);
            goto cleanup;
        }
        glob_t g;
        int rc = glob(paths[p], 0, NULL, &g);
        if (rc == GLOB_NOMATCH && access(paths[p], F_OK) == 0) {
            /* A literal name that merely looks like a pattern ("x[1].bin"). */
            rc = glob(paths[p], GLOB_NOCHECK | GLOB_NOESCAPE, NULL, &g);
        }
        if (rc == GLOB_NOMATCH) {
            if (data_has_glob_chars(paths[p]))
                st = zinc_error(ZINC_ERR_IO, "data: no file matches %s", paths[p]);
            else
                st = zinc_error(ZINC_ERR_IO, "data: cannot open %s: %s", paths[p],
                                strerror(ENOENT));
            goto cleanup;
        }
        if (rc != 0) {
            st = zinc_error(ZINC_ERR_IO, "data: cannot expand %s (%s)", paths[p],
                            rc == GLOB_NOSPACE ? "out of memory" : "read error");
            goto cleanup;
        }
        for (size_t m = 0; m < g.gl_pathc; m++) {
            if (d->n_shards == cap) {
                int ncap = cap ? 2 * cap : 8;
                data_shard *ns = realloc(d->shards, (size_t)ncap * sizeof *ns);
                if (!ns) {
                    globfree(&g);
                    st = zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
                    goto cleanup;
                }
                d->shards = ns;
                cap = ncap;
            }
            st = data_shard_open(g.gl_pathv[m], vocab_size, &d->shards[d->n_shards]);
            if (st != ZINC_OK) {
                globfree(&g);
                goto cleanup;
            }
            d->shards[d->n_shards].first = d->n_tokens;
            d->n_tokens += d->shards[d->n_shards].n_tokens;
            d->docs |= d->shards[d->n_shards].flags != NULL;
            d->n_shards++;
        }
        globfree(&g);
    }
    if (d->n_tokens < (uint64_t)seq_len + 1) {
        char names[512];
        data_name_shards(d, names, sizeof names);
        st = zinc_error(ZINC_ERR_INVALID_ARG,
                        "data: %s hold%s %llu tokens; seq_len %d needs at least %llu for one sample",
                        names, d->n_shards == 1 ? "s" : "", (unsigned long long)d->n_tokens,
                        seq_len, (unsigned long long)seq_len + 1);
        goto cleanup;
    }
    d->n_samples = (d->n_tokens - 1) / (uint64_t)seq_len;
    if (d->n_samples > SIZE_MAX / sizeof(uint64_t)) {
        st = zinc_error(ZINC_ERR_NOMEM, "data: %llu samples are too many to shuffle",
                        (unsigned long long)d->n_samples);
        goto cleanup;
    }
    d->perm = malloc((size_t)d->n_samples * sizeof *d->perm);
    if (!d->perm) {
        st = zinc_error(ZINC_ERR_NOMEM, "data: out of memory for a %llu-sample permutation",
                        (unsigned long long)d->n_samples);
        goto cleanup;
    }
    data_perm_fill(d->perm, d->n_samples, d->seed, 0);
    d->perm_epoch = 0;
    d->perm_valid = true;
    *out = d;
    return ZINC_OK;
cleanup:
    zinc_data_close(d);
    return st;
}

void zinc_data_close(zinc_data *d)
{
    if (!d) return;
    for (int i = 0; i < d->n_shards; i++) data_shard_release(&d->shards[i]);
    free(d->shards);
    free(d->perm);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

zinc_status zinc_data_from_source(const zinc_batch_source *src, int seq_len, int vocab_size, zinc_data **out)
{
    *out = NULL;
    if (!src || !src->get) return zinc_error(ZINC_ERR_INVALID_ARG, "batch source: no get function");
    if (src->n_samples < 1) return zinc_error(ZINC_ERR_INVALID_ARG, "batch source: n_samples must be >= 1");
    if (seq_len < 1 || vocab_size < 1)
        return zinc_error(ZINC_ERR_INVALID_ARG, "batch source: seq_len %d, vocab_size %d", seq_len, vocab_size);
    zinc_data *d = calloc(1, sizeof *d);
    if (!d) return zinc_error(ZINC_ERR_NOMEM, "batch source");
    pthread_mutex_init(&d->lock, NULL);
    d->has_src = true;
    d->src = *src;
    d->seq_len = seq_len;
    d->vocab = vocab_size;
    d->n_samples = src->n_samples;
    d->n_tokens = src->n_samples * (uint64_t)seq_len;
    d->masked = src->masked != 0;
    *out = d;
    return ZINC_OK;
}

/* n samples from the user's source, checked: ids in [0, vocab), targets in [-1, vocab).
 * Global index k past an epoch reads sample k mod n_samples (a call never crosses an epoch). */
static zinc_status data_src_get(const zinc_data *d, uint64_t first, int n, int32_t *inputs, int32_t *targets,
                                int32_t *pos)
{
    const size_t T = (size_t)d->seq_len;
    const uint64_t N = d->src.n_samples;
    for (int done = 0; done < n;) {
        uint64_t k = (first + (uint64_t)done) % N;
        int m = (int)(N - k < (uint64_t)(n - done) ? N - k : (uint64_t)(n - done));
        int32_t *in = inputs + (size_t)done * T, *tg = targets + (size_t)done * T;
        zinc_status st = d->src.get(d->src.user, k, m, d->seq_len, in, tg);
        if (st != ZINC_OK)
            return zinc_error(st, "batch source, samples %llu..%llu: %s", (unsigned long long)k,
                              (unsigned long long)(k + (uint64_t)m - 1), zinc_last_error());
        for (size_t i = 0; i < (size_t)m * T; i++) {
            int bad_in = in[i] < 0 || in[i] >= d->vocab;
            if (bad_in || tg[i] < -1 || tg[i] >= d->vocab || (!d->masked && tg[i] < 0))
                return zinc_error(ZINC_ERR_INVALID_ARG, "batch source: sample %llu, position %zu: %s %d %s",
                                  (unsigned long long)(k + i / T), i % T, bad_in ? "input" : "target",
                                  bad_in ? in[i] : tg[i],
                                  !bad_in && !d->masked && tg[i] == -1 ? "(-1 needs masked = 1)"
                                                                        : "is outside the vocabulary");
        }
        done += m;
    }
    if (pos)
        for (size_t i = 0; i < (size_t)n * T; i++) pos[i] = (int32_t)(i % T);
    return ZINC_OK;
}

uint64_t zinc_data_n_samples(const zinc_data *d) { return d ? d->n_samples : 0; }
uint64_t zinc_data_n_tokens(const zinc_data *d) { return d ? d->n_tokens : 0; }
int zinc_data_has_docs(const zinc_data *d) { return d && d->docs; }
int zinc_data_has_masks(const zinc_data *d) { return d && (d->docs || d->masked); }

/* ----------------------------------------------------------------- get --- */

/* Copies n tokens of the stream starting at global token index pos into dst
 * (n,), crossing shard boundaries, and with fl their ZINC_TOK_* flags into fl (n,):
 * a shard without flags has ZINC_TOK_LOSS on every token and, in a loader with
 * documents, ZINC_TOK_DOC on its first (a plain shard is one document there).
 * Caller guarantees pos + n <= n_tokens. */
static void data_copy_tokens(const zinc_data *d, uint64_t pos, uint64_t n, int32_t *dst, uint8_t *fl)
{
    /* Binary search for the last shard whose first token is <= pos. */
    int lo = 0, hi = d->n_shards - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (d->shards[mid].first <= pos)
            lo = mid;
        else
            hi = mid - 1;
    }
    int s = lo;
    while (n > 0) {
        const data_shard *sh = &d->shards[s];
        uint64_t off = pos - sh->first;
        if (off >= sh->n_tokens) { /* empty shard or pos past it */
            s++;
            continue;
        }
        uint64_t take = sh->n_tokens - off < n ? sh->n_tokens - off : n;
        if (sh->tsz == 2)
            for (uint64_t i = 0; i < take; i++) dst[i] = ((const uint16_t *)sh->tokens)[off + i];
        else
            for (uint64_t i = 0; i < take; i++) dst[i] = (int32_t)((const uint32_t *)sh->tokens)[off + i];
        if (fl && sh->flags) {
            memcpy(fl, sh->flags + off, take);
        } else if (fl) {
            memset(fl, ZINC_TOK_LOSS, take);
            if (off == 0 && d->docs) fl[0] |= ZINC_TOK_DOC;
        }
        if (fl) fl += take;
        dst += take;
        pos += take;
        n -= take;
        s++;
    }
}

/* Sample k of the global order: its window's first token in the stream. The caller holds
 * the lock (the permutation cache). */
static uint64_t data_sample_start(zinc_data *m, uint64_t k)
{
    uint64_t e = k / m->n_samples, i = k % m->n_samples;
    if (!m->perm_valid || m->perm_epoch != e) {
        data_perm_fill(m->perm, m->n_samples, m->seed, e);
        m->perm_epoch = e;
        m->perm_valid = true;
    }
    return m->perm[i] * (uint64_t)m->seq_len;
}

static zinc_status data_get_check(const zinc_data *d, uint64_t first, int n)
{
    if (!d) return zinc_error(ZINC_ERR_INVALID_ARG, "data: loader is NULL");
    if (n < 0) return zinc_error(ZINC_ERR_INVALID_ARG, "data: negative sample count %d", n);
    if (first > UINT64_MAX - (uint64_t)n)
        return zinc_error(ZINC_ERR_INVALID_ARG, "data: sample index %llu overflows",
                          (unsigned long long)first);
    return ZINC_OK;
}

zinc_status zinc_data_get_docs(const zinc_data *d, uint64_t first, int n, int32_t *inputs,
                               int32_t *targets, int32_t *pos)
{
    zinc_status cst = data_get_check(d, first, n);
    if (cst != ZINC_OK) return cst;
    if (n == 0) return ZINC_OK;
    if (!inputs || !targets)
        return zinc_error(ZINC_ERR_INVALID_ARG, "data: inputs/targets buffer is NULL");
    if (d->has_src) return data_src_get(d, first, n, inputs, targets, pos);
    const size_t T = (size_t)d->seq_len;
    int32_t *buf = malloc((T + 1) * sizeof *buf); /* (T+1,) one sample */
    uint8_t *fl = d->docs ? malloc(T + 1) : NULL;
    if (!buf || (d->docs && !fl)) {
        free(buf);
        free(fl);
        return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
    }

    /* The cache is the loader's only mutable part; it never changes results. */
    zinc_data *m = (zinc_data *)d;
    pthread_mutex_lock(&m->lock);
    for (int b = 0; b < n; b++) {
        data_copy_tokens(d, data_sample_start(m, first + (uint64_t)b), T + 1, buf, fl);
        int32_t *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T; // (n, T) each
        memcpy(in, buf, T * sizeof *buf);
        memcpy(tg, buf + 1, T * sizeof *buf);
        if (!fl) {
            if (pos)
                for (size_t t = 0; t < T; t++) pos[(size_t)b * T + t] = (int32_t)t;
            continue;
        }
        size_t start = 0; /* the row's current document begins here (or at the row's start) */
        for (size_t t = 0; t < T; t++) {
            if (t > 0 && (fl[t] & ZINC_TOK_DOC)) start = t;
            if (pos) pos[(size_t)b * T + t] = (int32_t)(t - start);
            if (!data_is_target(fl[t + 1])) tg[t] = -1;
        }
    }
    pthread_mutex_unlock(&m->lock);
    free(buf);
    free(fl);
    return ZINC_OK;
}

zinc_status zinc_data_get(const zinc_data *d, uint64_t first, int n, int32_t *inputs,
                          int32_t *targets)
{
    return zinc_data_get_docs(d, first, n, inputs, targets, NULL);
}

zinc_status zinc_data_count_targets(const zinc_data *d, uint64_t first, uint64_t n, uint64_t *count)
{
    *count = 0;
    if (n > INT32_MAX) return zinc_error(ZINC_ERR_INVALID_ARG, "data: %llu samples to count", (unsigned long long)n);
    zinc_status cst = data_get_check(d, first, (int)n);
    if (cst != ZINC_OK) return cst;
    const uint64_t T = (uint64_t)d->seq_len;
    if (!zinc_data_has_masks(d)) {
        *count = n * T;
        return ZINC_OK;
    }
    if (d->has_src) { /* one sample at a time through the source */
        int32_t *in = malloc(2 * T * sizeof *in);
        if (!in) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
        zinc_status st = ZINC_OK;
        for (uint64_t b = 0; b < n && st == ZINC_OK; b++) {
            st = data_src_get(d, first + b, 1, in, in + T, NULL);
            for (uint64_t t = 0; st == ZINC_OK && t < T; t++) *count += in[T + t] >= 0;
        }
        free(in);
        return st;
    }
    int32_t *buf = malloc((T + 1) * sizeof *buf);
    uint8_t *fl = malloc(T + 1);
    if (!buf || !fl) {
        free(buf);
        free(fl);
        return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
    }
    zinc_data *m = (zinc_data *)d;
    pthread_mutex_lock(&m->lock);
    for (uint64_t b = 0; b < n; b++) {
        data_copy_tokens(d, data_sample_start(m, first + b), T + 1, buf, fl);
        for (uint64_t t = 1; t <= T; t++) *count += data_is_target(fl[t]);
    }
    pthread_mutex_unlock(&m->lock);
    free(buf);
    free(fl);
    return ZINC_OK;
}
