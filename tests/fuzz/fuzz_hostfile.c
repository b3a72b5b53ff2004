/* fuzz_hostfile.c - fuzz target: the files zinc-run reads (launcher/inputs.c):
 * the DeepSpeed hostfile, the --include/--exclude selection applied to it,
 * and the two .zinc_env files, in the order zinc-run runs them.
 *
 * Input: up to 4 parts separated by FUZZ_SEP (a line "%%"):
 *   0  the hostfile
 *   1  options, one a line: "include SPEC", "exclude SPEC" (applied in that
 *      order, as zinc-run does, the first of each kind), "allow-env-loader-vars",
 *      "home-is-cwd" (HOME and the working directory are the same folder, so
 *      both env files are one file)
 *   2  $HOME/.zinc_env (absent when the input has no part 2)
 *   3  ./.zinc_env (absent when the input has no part 3)
 * Files are written to the scratch directory (/dev/shm when it can): the
 * hostfile at DIR/hostfile, $HOME is DIR/home, the working directory DIR/work
 * while env_files_read runs (the process's own directory is restored after,
 * so libFuzzer's artifacts land where it was started). The user's own
 * ~/.zinc_env and ./.zinc_env are never read.
 *
 * zinc-run's error paths print "zinc-run: ..." and return 2 (run a campaign
 * with -close_fd_mask=2 to keep them off the terminal). xrealloc and xprintf
 * exit(1) on out-of-memory only; inputs are far too small for that, and
 * nothing else on these paths exits. Properties checked: 0 or 2 is returned;
 * after a successful read every host has 1..4096 slots, a name that passes
 * zinc-run's rules, and n_use equal to its selected slots (at least one
 * after a selection); every env key is a shell name. */
#include <ctype.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../launcher/launcher_int.h"
#include "fuzz.h"

#define N_PARTS 4

static char hostfile[600], home[600], work[600], home_env[640], work_env[640];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = fuzz_scratch("hostfile");
    snprintf(hostfile, sizeof hostfile, "%s/hostfile", dir);
    snprintf(home, sizeof home, "%s/home", dir);
    snprintf(work, sizeof work, "%s/work", dir);
    snprintf(home_env, sizeof home_env, "%s/.zinc_env", home);
    snprintf(work_env, sizeof work_env, "%s/.zinc_env", work);
    if (mkdir(home, 0700) != 0 || mkdir(work, 0700) != 0)
        fuzz_harness_fail("cannot create %s and %s", home, work);
    /* the loader-variable check lets a key through when the environment has
     * it: fuzz with none of the listed ones set, as a clean shell would */
    static const char *loaders[] = {"LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "BASH_ENV", "ENV"};
    for (size_t i = 0; i < sizeof loaders / sizeof *loaders; i++) unsetenv(loaders[i]);
    return 0;
}

/* A copy of the option line's argument after "name " (up to the newline), or NULL. */
static char *option(const uint8_t *p, size_t n, const char *name)
{
    size_t k = strlen(name);
    for (const uint8_t *line = p, *end = p + n; line < end;) {
        const uint8_t *nl = memchr(line, '\n', (size_t)(end - line));
        size_t len = nl ? (size_t)(nl - line) : (size_t)(end - line);
        if (len >= k && !memcmp(line, name, k)) {
            char *s = fuzz_strndup(line + k, len - k);
            if (strlen(s) == len - k) return s;
            free(s); /* a NUL byte: no argv string holds one */
        }
        line += len + 1;
    }
    return NULL;
}

static void check_hosts(const run_hosts *hs, bool selected)
{
    fuzz_require(hs->n >= 1, "no hosts after a successful read");
    for (int i = 0; i < hs->n; i++) {
        const run_host *h = &hs->h[i];
        fuzz_require(h->slots >= 1 && h->slots <= RUN_MAX_SLOTS, "host %s: %d slots", h->name,
                     h->slots);
        size_t n = strlen(h->name);
        fuzz_require(n >= 1 && n <= 253 && h->name[0] != '-' && h->name[0] != '.',
                     "host name '%s'", h->name);
        for (size_t k = 0; k < n; k++)
            fuzz_require(isalnum((unsigned char)h->name[k]) || strchr("-._", h->name[k]),
                         "host name '%s'", h->name);
        int used = 0;
        for (int s = 0; s < h->slots; s++) used += h->use[s];
        fuzz_require(used == h->n_use && (!selected || used >= 1), "host %s: n_use %d, %d used",
                     h->name, h->n_use, used);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *part[N_PARTS];
    size_t len[N_PARTS];
    size_t n = fuzz_split(data, size, FUZZ_SEP, FUZZ_SEP_LEN, part, len, N_PARTS);
    const uint8_t *opts = n > 1 ? part[1] : (const uint8_t *)"";
    size_t opts_len = n > 1 ? len[1] : 0;

    fuzz_write_file(hostfile, part[0], len[0]);
    run_hosts hs = {0};
    int rc = hostfile_read(hostfile, &hs);
    fuzz_require(rc == 0 || rc == 2, "hostfile_read returned %d", rc);
    if (rc == 0) check_hosts(&hs, false);
    char *inc = option(opts, opts_len, "include "), *exc = option(opts, opts_len, "exclude ");
    if (rc == 0 && inc) {
        rc = hosts_select(&hs, inc, true, hostfile);
        fuzz_require(rc == 0 || rc == 2, "hosts_select returned %d", rc);
        if (rc == 0) check_hosts(&hs, true);
    }
    if (rc == 0 && exc) {
        rc = hosts_select(&hs, exc, false, hostfile);
        fuzz_require(rc == 0 || rc == 2, "hosts_select returned %d", rc);
        if (rc == 0) check_hosts(&hs, true);
    }
    free(inc);
    free(exc);
    hosts_free(&hs);

    /* env files: zinc-run reads them whatever the hostfile gave */
    char *allow = option(opts, opts_len, "allow-env-loader-vars");
    char *same = option(opts, opts_len, "home-is-cwd");
    unlink(home_env);
    unlink(work_env);
    if (n > 2) fuzz_write_file(same ? work_env : home_env, part[2], len[2]);
    if (n > 3 && !same) fuzz_write_file(work_env, part[3], len[3]);
    int here = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (here < 0 || chdir(work) != 0) fuzz_harness_fail("cannot change to %s", work);
    setenv("HOME", same ? work : home, 1);
    run_env env = {0};
    rc = env_files_read(&env, allow != NULL);
    if (fchdir(here) != 0) fuzz_harness_fail("cannot change back to the starting directory");
    close(here);
    fuzz_require(rc == 0 || rc == 2, "env_files_read returned %d", rc);
    fuzz_require(env.keys.n == env.vals.n, "%d keys, %d values", env.keys.n, env.vals.n);
    for (int i = 0; rc == 0 && i < env.keys.n; i++) {
        fuzz_require(valid_env_name(env.keys.v[i], strlen(env.keys.v[i])), "key '%s'",
                     env.keys.v[i]);
        fuzz_require(env_find(&env, env.keys.v[i]) == i, "key %s twice", env.keys.v[i]);
    }
    env_free(&env);
    free(allow);
    free(same);
    return 0;
}
