/* fuzz.h - what the fuzz targets share: libFuzzer's two entry points, the
 * splitting of one input into parts, and a private scratch directory for the
 * targets whose API takes a path.
 *
 * Each tests/fuzz/fuzz_<target>.c defines both entry points and links either
 * with libFuzzer (`make fuzz`, clang, build-fuzz/fuzz_<target>) or with
 * replay.c (the normal build, $(BUILD)/tests/fuzz/replay_<target>, which
 * `make test` runs over tests/fuzz/corpus/<target>/). Header-only (static
 * inline functions) so that a target is one .c file and needs nothing else.
 *
 * A finding is a crash: a sanitizer report, or abort() from a target's own
 * check of a documented property (fuzz_require). Everything the harness
 * itself needs (the scratch directory, writing a file there) either works
 * or stops the process with a message saying it is the harness, not the
 * code under test. */
#ifndef ZINC_FUZZ_H
#define ZINC_FUZZ_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* libFuzzer's entry points (every target defines both). */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The separator between the parts of an input, for the targets that take
 * several files or strings from one input: a line holding only "%%". */
#define FUZZ_SEP "\n%%\n"
#define FUZZ_SEP_LEN 4

/* Splits data (size bytes) at the first max - 1 occurrences of sep (n
 * bytes): part k is [part[k], part[k] + len[k]); the last part holds the
 * rest, separators included. Returns the number of parts (1..max). */
static inline size_t fuzz_split(const uint8_t *data, size_t size, const char *sep, size_t n,
                         const uint8_t **part, size_t *len, size_t max)
{
    size_t k = 0;
    const uint8_t *p = data, *end = data + size;
    while (k + 1 < max) {
        const uint8_t *s = memmem(p, (size_t)(end - p), sep, n);
        if (!s) break;
        part[k] = p;
        len[k++] = (size_t)(s - p);
        p = s + n;
    }
    part[k] = p;
    len[k++] = (size_t)(end - p);
    return k;
}

/* A documented property failed: print what and abort (the finding). */
#define fuzz_require(cond, ...)                                                          \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz: %s:%d: property failed: %s: ", __FILE__, __LINE__,    \
                    #cond);                                                              \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            abort();                                                                     \
        }                                                                                \
    } while (0)

/* The harness itself failed (no scratch space): not a finding. */
#define fuzz_harness_fail(...)                                                           \
    do {                                                                                 \
        fprintf(stderr, "fuzz harness: ");                                               \
        fprintf(stderr, __VA_ARGS__);                                                    \
        fputc('\n', stderr);                                                             \
        exit(3);                                                                         \
    } while (0)

/* The scratch directory's path ("" until fuzz_scratch made it). */
static inline char *fuzz_dir(void)
{
    static char dir[512];
    return dir;
}

static inline int fuzz_rm_one(const char *p, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    remove(p);
    return 0;
}

/* Removes the scratch directory and everything in it (at exit). */
static inline void fuzz_scratch_remove(void)
{
    if (fuzz_dir()[0]) nftw(fuzz_dir(), fuzz_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Creates the process's scratch directory once, zinc-fuzz-<name>-XXXXXX in
 * /dev/shm (a tmpfs: a target writes a file per input) or else $TMPDIR or
 * /tmp, removed again at exit. Returns its path. */
static inline const char *fuzz_scratch(const char *name)
{
    char *dir = fuzz_dir();
    if (dir[0]) return dir;
    const char *tmp = getenv("TMPDIR");
    const char *bases[] = {"/dev/shm", tmp && *tmp ? tmp : "/tmp", "/tmp"};
    for (size_t i = 0; i < sizeof bases / sizeof *bases; i++) {
        snprintf(dir, 512, "%s/zinc-fuzz-%s-XXXXXX", bases[i], name);
        if (access(bases[i], W_OK) == 0 && mkdtemp(dir)) {
            atexit(fuzz_scratch_remove);
            return dir;
        }
    }
    dir[0] = '\0';
    fuzz_harness_fail("cannot create a scratch directory in /dev/shm, $TMPDIR or /tmp: %s",
                      strerror(errno));
}

/* Writes data (n bytes) to path, replacing it. */
static inline void fuzz_write_file(const char *path, const void *data, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) fuzz_harness_fail("cannot create %s: %s", path, strerror(errno));
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) fuzz_harness_fail("cannot write %s: %s", path, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    close(fd);
}

/* A NUL-terminated malloc'd copy of data (n bytes); caller frees. */
static inline char *fuzz_strndup(const uint8_t *data, size_t n)
{
    char *s = malloc(n + 1);
    if (!s) fuzz_harness_fail("out of memory");
    if (n) memcpy(s, data, n);
    s[n] = '\0';
    return s;
}

#endif
