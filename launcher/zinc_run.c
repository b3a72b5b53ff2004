/* zinc_run.c - `zinc-run`: starts N ranks of a program through OpenMPI's
 * mpirun (or Slurm's srun) and returns the job's exit status.
 *
 *   zinc-run [-n N] [--hostfile F] [--include SPEC | --exclude SPEC]
 *            [--launcher openmpi|slurm] [--allow-env-loader-vars] [--dry-run]
 *            [--] PROGRAM ARGS...
 *
 * It only builds an argv: no host name, path, variable or argument is ever
 * seen by a shell. The argv is run in a child (fork + execvp + waitpid); the
 * child's exit status is returned (128 + signal if it was killed). Signals
 * sent to zinc-run by another process (kill, a scheduler) are passed on to
 * the child; terminal signals (^C) already reach it through the process group.
 *
 * What goes into the mpirun argv, and why:
 *   -n N                  ranks
 *   --bind-to none        OpenMPI binds each rank to one core by default, which
 *                         would starve ranks that run K OpenMP threads
 *   --oversubscribe       when N exceeds this node's cores (no hostfile) or the
 *                         slots of a one-host hostfile
 *   --allow-run-as-root   when euid is 0 (containers, CI)
 *   --mca btl_vader_single_copy_mechanism none
 *                         CMA/XPMEM single copy is blocked in most containers
 *   --host h1:N1,h2:N2    from the hostfile after --include/--exclude
 *   -x OMP_NUM_THREADS=K -x ZINC_THREADS=K
 *                         K = max(1, cores of a node / ranks on that node),
 *                         unless OMP_NUM_THREADS is already set (then it is
 *                         forwarded as is). Remote nodes are assumed to have
 *                         as many cores as this one.
 *   -x NAME               every variable named ZINC_*, NCCL_*, OMP_*, OPENBLAS_*
 *   -x KEY=VALUE          every line of $HOME/.zinc_env, then ./.zinc_env (a
 *                         later file overrides an earlier one; a variable
 *                         already set in the environment wins over both and
 *                         is forwarded by name). Values are taken literally.
 *
 * Hostfile: DeepSpeed's format, `host slots=N` lines with # comments. The
 * --include/--exclude SPEC is DeepSpeed's "host1:0,2@host2" (slot indices per
 * host; a bare host means all its slots). Ranks fill a host's slots in order
 * (GPU = local rank), so a selection such as host1:1,3 yields 2 ranks there
 * using local ranks 0 and 1; zinc-run warns when that differs.
 *
 * Variables that choose what code runs are refused from .zinc_env files:
 * ./.zinc_env comes with whatever directory zinc-run is started in (a cloned
 * repository), and a line there would reach every rank of the job. Refused,
 * unless --allow-env-loader-vars is given or the variable is already in
 * zinc-run's environment (then it is the user's own and is forwarded by
 * name as before), are the variables that make a program load or run code
 * from a path or string that the program itself did not name:
 *   the dynamic loader   LD_* (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...),
 *                        GLIBC_TUNABLES, GCONV_PATH (glibc dlopens converters)
 *   program lookup       PATH (which file a command name runs)
 *   shells               BASH_ENV, ENV (run by non-interactive bash and sh),
 *                        SHELLOPTS, BASHOPTS, PS4 (expanded under xtrace), ZDOTDIR
 *   interpreters         PYTHONSTARTUP, PYTHONPATH, PYTHONHOME, PYTHONUSERBASE,
 *                        PYTHONBREAKPOINT, PERL5OPT, PERL5LIB, PERLLIB, PERL5DB,
 *                        RUBYOPT, RUBYLIB, NODE_OPTIONS, NODE_PATH,
 *                        JAVA_TOOL_OPTIONS, _JAVA_OPTIONS, JDK_JAVA_OPTIONS,
 *                        LUA_INIT*, LUA_PATH*, LUA_CPATH*
 *   libraries ranks load CUDA_INJECTION64_PATH, CUDA_INJECTION32_PATH,
 *                        NCCL_NET_PLUGIN, NCCL_TUNER_PLUGIN, NCCL_PROFILER_PLUGIN,
 *                        OPAL_PREFIX, OMPI_MCA_mca_base_component_path
 * The list names mechanisms, not every program's; a variable a rank's own
 * program reads to load code is the program's to check.
 *
 * Input checks: the hostfile and both .zinc_env files are opened with the
 * file-type check first (zinc_fopen_regular: a named pipe or device is
 * refused, not read) and read line by line with each line's true length; a
 * line holding a NUL byte or another control character (tab, and one CR
 * before the newline, excepted), a hostfile line past 4096 bytes or a
 * .zinc_env line past 64 KiB (a file past 1 MiB) is refused, naming the file
 * and line. Host names are letters, digits, '-', '.', '_' (an IPv4 literal
 * fits), at most 253 bytes, not starting with '-' or '.'; an IPv6 literal is
 * refused, since ':' separates slots in --host and in SPEC. SPEC is printable
 * ASCII without spaces. The finished command is checked against Linux's exec
 * limits (128 KiB an argument, ARG_MAX in all) before it is run or printed;
 * --dry-run writes control characters in ARGS as $'\xHH'.
 *
 * Limits: at most 65536 ranks (-n, and the hostfile's slots added up) and
 * 4096 slots per host.
 *
 * Exit status: the job's; 2 for bad flags, a bad hostfile, .zinc_env or
 * selection; 127 when mpirun/srun is not on PATH; 1 if fork fails.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zinc/file.h"

extern char **environ;

/* Most ranks one job may have (-n, and the hostfile's slots added up), and
 * most slots one host may have: far past any cluster zinc runs on, small
 * enough that counts and the --host list stay well inside an int. */
#define RUN_MAX_RANKS 65536
#define RUN_MAX_SLOTS 4096
/* Longest hostfile line: a 253-byte host name, its slots and a comment. */
#define HOSTFILE_MAX_LINE 4096
/* Longest .zinc_env line: Linux refuses an argv string (-x KEY=VALUE) past
 * 128 KiB (MAX_ARG_STRLEN), and the whole argv past a few MiB. */
#define ENV_FILE_MAX_LINE 65536
#define ENV_FILE_MAX_BYTES (1L << 20)

static const char *usage_text =
    "usage: zinc-run [-n N] [--hostfile F] [--include SPEC | --exclude SPEC]\n"
    "                [--launcher openmpi|slurm] [--allow-env-loader-vars] [--dry-run]\n"
    "                [--] PROGRAM ARGS...\n"
    "  -n N              ranks, 1 to 65536 (default: all hostfile slots, else 1)\n"
    "  --hostfile F      lines `host slots=N` (N <= 4096); # starts a comment\n"
    "  --include SPEC    use only these hosts/slots, e.g. \"host1:0,2@host2\"\n"
    "  --exclude SPEC    use all but these hosts/slots\n"
    "  --launcher L      openmpi (mpirun, the default) or slurm (srun)\n"
    "  --allow-env-loader-vars\n"
    "                    take LD_*, PATH, BASH_ENV, PYTHONPATH, ... from .zinc_env files\n"
    "                    (refused by default: they choose what code every rank runs)\n"
    "  --dry-run         print the command instead of running it\n"
    "  Exports ZINC_*, NCCL_*, OMP_*, OPENBLAS_* variables and the KEY=VALUE lines of\n"
    "  ./.zinc_env and ~/.zinc_env to every rank. Limits: 65536 ranks, 4096 slots a host.\n";

/* ------------------------------------------------------------ helpers --- */

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("zinc-run: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fputs(usage_text, stderr);
    return 2;
}

/* Prints "zinc-run: <detail>" to stderr; returns 2 for the caller to exit with. */
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("zinc-run: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 2;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q) {
        fputs("zinc-run: out of memory\n", stderr);
        exit(1);
    }
    return q;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xrealloc(NULL, n), s, n);
}

static char *xprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) {
        fputs("zinc-run: out of memory\n", stderr);
        exit(1);
    }
    va_end(ap);
    return s;
}

/* A growable NULL-terminated string vector; it owns its strings. */
typedef struct run_vec {
    char **v;
    int n, cap;
} run_vec;

static void vec_push_take(run_vec *a, char *s)
{
    if (a->n + 2 > a->cap) {
        a->cap = a->cap ? 2 * a->cap : 32;
        a->v = xrealloc(a->v, (size_t)a->cap * sizeof *a->v);
    }
    a->v[a->n++] = s;
    a->v[a->n] = NULL;
}

static void vec_push(run_vec *a, const char *s) { vec_push_take(a, xstrdup(s)); }

static void vec_free(run_vec *a)
{
    for (int i = 0; i < a->n; i++) free(a->v[i]);
    free(a->v);
    memset(a, 0, sizeof *a);
}

/* Parses a whole decimal int in [lo, hi]; false otherwise. */
static bool parse_int(const char *s, long lo, long hi, int *out)
{
    if (!s || !*s || isspace((unsigned char)*s)) return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

static bool valid_env_name(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_')) return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_')) return false;
    return true;
}

/* Line-by-line reading of the files zinc-run is given (hostfile, .zinc_env).
 * Each is opened with the type check first (a named pipe would block, a
 * device stream forever), each line is read with its true length (a NUL byte
 * must not cut it short unseen) up to max bytes, and a line holding a control
 * character other than tab (or one CR before its newline) is refused: none
 * belongs in a host name or a variable, and each would reach mpirun's argv. */
typedef struct run_lines {
    FILE *f;
    const char *path;
    const char *kind;  /* "hostfile " or "": what error messages put before path */
    char *buf;         /* (max + 1,) the current line, NUL-terminated */
    size_t max;        /* longest line accepted, in bytes, without its newline */
    int lineno;
} run_lines;

/* Opens path as r (what names it in errors). Returns 0, or 2 after printing
 * the error. */
static int lines_open(run_lines *r, const char *path, const char *kind, const char *what,
                      size_t max)
{
    memset(r, 0, sizeof *r);
    if (zinc_fopen_regular(path, what, &r->f, NULL) != ZINC_OK)
        return fail("%s", zinc_last_error());
    r->path = path;
    r->kind = kind;
    r->max = max;
    r->buf = xrealloc(NULL, max + 1);
    return 0;
}

static void lines_close(run_lines *r)
{
    if (r->f) fclose(r->f);
    free(r->buf);
    memset(r, 0, sizeof *r);
}

/* Reads the next line into r->buf (without "\n" or "\r\n"). Returns 1 for a
 * line, 0 at the end of the file, or 2 after printing the error. */
static int lines_next(run_lines *r, size_t *len)
{
    size_t n = 0;
    int c;
    while ((c = getc(r->f)) != EOF && c != '\n') {
        if (n == r->max) {
            return fail("%s%s:%d: line is longer than %zu bytes", r->kind, r->path, r->lineno + 1,
                        r->max);
        }
        r->buf[n++] = (char)c;
    }
    if (ferror(r->f))
        return fail("%s%s:%d: read failed: %s", r->kind, r->path, r->lineno + 1, strerror(errno));
    if (c == EOF && n == 0) return 0;
    r->lineno++;
    if (n > 0 && r->buf[n - 1] == '\r') n--;
    r->buf[n] = '\0';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)r->buf[i];
        if (ch == '\t' || (ch >= 0x20 && ch != 0x7f)) continue;
        if (ch == 0)
            return fail("%s%s:%d: holds a NUL byte (column %zu); is it a text file?", r->kind,
                        r->path, r->lineno, i + 1);
        return fail("%s%s:%d: holds control character 0x%02x (column %zu)", r->kind, r->path,
                    r->lineno, ch, i + 1);
    }
    *len = n;
    return 1;
}

/* Writes s to f, single-quoted if it holds anything a shell would interpret.
 * A control character other than tab and newline is written as $'\xHH' (bash,
 * zsh, ksh and POSIX.1-2024 sh read it back) so that a --dry-run line never
 * sends raw escape sequences to the terminal. */
static void shell_quote(FILE *f, const char *s)
{
    bool plain = *s != '\0';
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr("_@%+=:,./-", *p))) plain = false;
    if (plain) {
        fputs(s, f);
        return;
    }
    fputc('\'', f);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\'') fputs("'\\''", f);
        else if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f) fprintf(f, "'$'\\x%02x''", c);
        else fputc(c, f);
    }
    fputc('\'', f);
}

/* Linux refuses an exec whose single argument passes MAX_ARG_STRLEN (32
 * pages) or whose argv and environment together pass ARG_MAX (a quarter of
 * the stack limit); execvp would fail with "Argument list too long" after
 * the work of building the command. Returns 0, or 2 after naming the part. */
static int argv_check(char **argv)
{
    const size_t max_arg = 32 * 4096;
    long arg_max = sysconf(_SC_ARG_MAX);
    size_t total = 0;
    for (char **a = argv; *a; a++) {
        size_t n = strlen(*a) + 1;
        if (n > max_arg)
            return fail("the command's argument '%.24s...' is %zu bytes; Linux passes at most %zu "
                        "in one argument (fewer hosts, or shorter .zinc_env values)",
                        *a, n - 1, max_arg - 1);
        total += n + sizeof *a;
    }
    for (char **e = environ; *e; e++) total += strlen(*e) + 1 + sizeof *e;
    if (arg_max > 0 && total > (size_t)arg_max)
        return fail("the command and environment are %zu bytes; this system runs at most %ld "
                    "(ARG_MAX, a quarter of `ulimit -s`): shorten .zinc_env or the host list",
                    total, arg_max);
    return 0;
}

/* Full path of an executable name as execvp would find it, or NULL. */
static char *find_in_path(const char *name)
{
    if (strchr(name, '/')) return access(name, X_OK) == 0 ? xstrdup(name) : NULL;
    const char *path = getenv("PATH");
    if (!path) path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path;;) {
        const char *e = strchr(p, ':');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char *cand = len ? xprintf("%.*s/%s", (int)len, p, name) : xprintf("./%s", name);
        struct stat sb;
        if (stat(cand, &sb) == 0 && S_ISREG(sb.st_mode) && access(cand, X_OK) == 0) return cand;
        free(cand);
        if (!e) return NULL;
        p = e + 1;
    }
}

/* ----------------------------------------------------------- CPU counts --- */

/* CPUs this process may run on (what nproc prints). */
static int logical_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static bool read_int_file(const char *path, int *out)
{
    FILE *f = fopen(path, "r");
    if (!f) return false;
    bool ok = fscanf(f, "%d", out) == 1;
    fclose(f);
    return ok;
}

/* Physical cores among this process's CPUs: OpenMPI's default slot count on
 * a node without a hostfile. Falls back to the logical count. */
static int physical_cores(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return logical_cpus();
    int n_ids = 0, cap = CPU_COUNT(&set);
    long *ids = xrealloc(NULL, (size_t)(cap > 0 ? cap : 1) * sizeof *ids);
    for (int c = 0; c < CPU_SETSIZE && n_ids < cap; c++) {
        if (!CPU_ISSET(c, &set)) continue;
        char p1[96], p2[96];
        int pkg, core;
        snprintf(p1, sizeof p1, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", c);
        snprintf(p2, sizeof p2, "/sys/devices/system/cpu/cpu%d/topology/core_id", c);
        if (!read_int_file(p1, &pkg) || !read_int_file(p2, &core)) {
            free(ids);
            return logical_cpus();
        }
        long id = (long)pkg * 1000000L + core;
        bool seen = false;
        for (int i = 0; i < n_ids; i++) seen |= ids[i] == id;
        if (!seen) ids[n_ids++] = id;
    }
    free(ids);
    return n_ids > 0 ? n_ids : logical_cpus();
}

/* ------------------------------------------------------------ hostfile --- */

typedef struct run_host {
    char *name;
    int slots;     /* from the hostfile */
    bool *use;     /* (slots,) selected by --include/--exclude */
    int n_use;     /* how many are selected */
} run_host;

typedef struct run_hosts {
    run_host *h;
    int n;
} run_hosts;

static void hosts_free(run_hosts *hs)
{
    for (int i = 0; i < hs->n; i++) {
        free(hs->h[i].name);
        free(hs->h[i].use);
    }
    free(hs->h);
    memset(hs, 0, sizeof *hs);
}

static int host_find(const run_hosts *hs, const char *name, size_t len)
{
    for (int i = 0; i < hs->n; i++)
        if (strlen(hs->h[i].name) == len && !memcmp(hs->h[i].name, name, len)) return i;
    return -1;
}

/* Why s (n bytes) cannot be a host in mpirun's --host list, or NULL if it
 * can: a host name or IPv4 literal of letters, digits, '-', '.' and '_'
 * (DeepSpeed hostfiles use '_'), at most 253 bytes (DNS's limit), starting
 * with neither '-' (it would read as an option) nor '.'. An IPv6 literal is
 * refused: mpirun's --host and zinc-run's --include/--exclude both take
 * "host:N", so its ':' cannot be told from a slot separator. */
static const char *host_name_problem(const char *s, size_t n)
{
    if (n == 0) return "is empty";
    if (n > 253) return "is longer than 253 bytes";
    if (s[0] == '-' || s[0] == '.') return "starts with '-' or '.'";
    if (memchr(s, ':', n))
        return "holds ':' (an IPv6 literal?); mpirun --host and --include/--exclude read ':' as "
               "the slot separator, so give the host's name";
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '.' || s[i] == '-' || s[i] == '_'))
            return "holds a character other than letters, digits, '-', '.' and '_'";
    return NULL;
}

/* Reads a DeepSpeed hostfile. Returns 0, or 2 after printing the error. */
static int hostfile_read(const char *path, run_hosts *hs)
{
    run_lines r;
    int rc = lines_open(&r, path, "hostfile ", "hostfile", HOSTFILE_MAX_LINE);
    if (rc) return rc;
    size_t len;
    int n_slots = 0;
    while ((rc = lines_next(&r, &len)) == 1) {
        int lineno = r.lineno;
        char *hash = strchr(r.buf, '#');
        if (hash) *hash = '\0';
        char *tok[3];
        int nt = 0;
        for (char *save = NULL, *t = strtok_r(r.buf, " \t", &save); t;
             t = strtok_r(NULL, " \t", &save)) {
            if (nt < 3) tok[nt] = t;
            nt++;
        }
        if (nt == 0) continue;
        if (nt != 2 || strncmp(tok[1], "slots=", 6) != 0) {
            rc = fail("hostfile %s:%d: expected `hostname slots=N`", path, lineno);
            break;
        }
        const char *why = host_name_problem(tok[0], strlen(tok[0]));
        if (why) {
            rc = fail("hostfile %s:%d: bad host name '%.64s%s': it %s", path, lineno, tok[0],
                      strlen(tok[0]) > 64 ? "..." : "", why);
            break;
        }
        int slots;
        if (!parse_int(tok[1] + 6, 1, RUN_MAX_SLOTS, &slots)) {
            rc = fail("hostfile %s:%d: slots must be an integer >= 1 and <= %d, got '%s'", path,
                      lineno, RUN_MAX_SLOTS, tok[1] + 6);
            break;
        }
        if (n_slots + slots > RUN_MAX_RANKS) {
            rc = fail("hostfile %s:%d: slots add up to more than %d, the most ranks zinc-run "
                      "starts",
                      path, lineno, RUN_MAX_RANKS);
            break;
        }
        n_slots += slots;
        if (host_find(hs, tok[0], strlen(tok[0])) >= 0) {
            rc = fail("hostfile %s:%d: duplicate host %s", path, lineno, tok[0]);
            break;
        }
        hs->h = xrealloc(hs->h, (size_t)(hs->n + 1) * sizeof *hs->h);
        run_host *h = &hs->h[hs->n++];
        h->name = xstrdup(tok[0]);
        h->slots = slots;
        h->use = xrealloc(NULL, (size_t)slots * sizeof *h->use);
        for (int s = 0; s < slots; s++) h->use[s] = true;
        h->n_use = slots;
    }
    lines_close(&r);
    if (rc == 0 && hs->n == 0) rc = fail("hostfile %s: no hosts in it", path);
    return rc;
}

/* Applies an --include (include=true) or --exclude SPEC "h1:0,2@h2". Returns
 * 0, or 2 after printing the error. */
static int hosts_select(run_hosts *hs, const char *spec, bool include, const char *hostfile)
{
    const char *flag = include ? "--include" : "--exclude";
    if (include)
        for (int i = 0; i < hs->n; i++) {
            for (int s = 0; s < hs->h[i].slots; s++) hs->h[i].use[s] = false;
        }
    const char *p = spec;
    if (!*p) return fail("%s: empty SPEC", flag);
    for (const char *c = spec; *c; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f)
            return fail("%s: SPEC holds byte 0x%02x (column %d); it is host names, ':', slot "
                        "numbers, ',' and '@' only",
                        flag, (unsigned char)*c, (int)(c - spec) + 1);
    for (;;) {
        const char *end = strchr(p, '@');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *colon = memchr(p, ':', len);
        size_t hlen = colon ? (size_t)(colon - p) : len;
        if (hlen == 0) return fail("%s '%s': empty host name", flag, spec);
        int hi = host_find(hs, p, hlen);
        if (hi < 0)
            return fail("%s: host %.*s is not in hostfile %s", flag, (int)hlen, p, hostfile);
        run_host *h = &hs->h[hi];
        if (!colon) {
            for (int s = 0; s < h->slots; s++) h->use[s] = include;
        } else {
            const char *q = colon + 1, *stop = p + len;
            if (q == stop) return fail("%s '%s': no slots after %s:", flag, spec, h->name);
            while (q < stop) {
                const char *comma = memchr(q, ',', (size_t)(stop - q));
                size_t ilen = comma ? (size_t)(comma - q) : (size_t)(stop - q);
                char num[32];
                int slot;
                if (ilen == 0 || ilen >= sizeof num)
                    return fail("%s '%s': bad slot list for %s", flag, spec, h->name);
                memcpy(num, q, ilen);
                num[ilen] = '\0';
                if (!parse_int(num, 0, INT_MAX, &slot))
                    return fail("%s '%s': bad slot '%s' for %s", flag, spec, num, h->name);
                if (slot >= h->slots)
                    return fail("%s: slot %d of %s is out of range (hostfile %s gives it %d slots)",
                                flag, slot, h->name, hostfile, h->slots);
                h->use[slot] = include;
                q += ilen + (comma ? 1 : 0);
                if (comma && q == stop)
                    return fail("%s '%s': bad slot list for %s", flag, spec, h->name);
            }
        }
        if (!end) break;
        p = end + 1;
    }
    /* Drop hosts left without slots; warn where slots are not a prefix. */
    int kept = 0;
    for (int i = 0; i < hs->n; i++) {
        run_host *h = &hs->h[i];
        h->n_use = 0;
        bool prefix = true;
        for (int s = 0; s < h->slots; s++) {
            if (h->use[s]) h->n_use++;
            if (h->use[s] && (s > 0 && !h->use[s - 1])) prefix = false;
        }
        if (h->n_use == 0) {
            free(h->name);
            free(h->use);
            continue;
        }
        if (!prefix)
            fprintf(stderr,
                    "zinc-run: warning: %s: %d slots selected, but ranks use local slots "
                    "0..%d in order (GPU = local rank)\n",
                    h->name, h->n_use, h->n_use - 1);
        hs->h[kept++] = *h;
    }
    hs->n = kept;
    if (kept == 0) return fail("%s '%s' leaves no slots to run on", flag, spec);
    return 0;
}

/* ------------------------------------------------------------ env file --- */

typedef struct run_env {
    run_vec keys, vals;
} run_env;

static int env_find(const run_env *e, const char *key)
{
    for (int i = 0; i < e->keys.n; i++)
        if (!strcmp(e->keys.v[i], key)) return i;
    return -1;
}

/* Whether key makes a program load or run code it did not name (the list
 * and its reasons are in this file's header comment). */
static bool env_loads_code(const char *key)
{
    static const char *names[] = {
        "LD_*", "GLIBC_TUNABLES", "GCONV_PATH", "PATH", "BASH_ENV", "ENV", "SHELLOPTS",
        "BASHOPTS", "PS4", "ZDOTDIR", "PYTHONSTARTUP", "PYTHONPATH", "PYTHONHOME",
        "PYTHONUSERBASE", "PYTHONBREAKPOINT", "PERL5OPT", "PERL5LIB", "PERLLIB", "PERL5DB",
        "RUBYOPT", "RUBYLIB", "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS", "LUA_INIT*", "LUA_PATH*", "LUA_CPATH*", "CUDA_INJECTION64_PATH",
        "CUDA_INJECTION32_PATH", "NCCL_NET_PLUGIN", "NCCL_TUNER_PLUGIN", "NCCL_PROFILER_PLUGIN",
        "OPAL_PREFIX", "OMPI_MCA_mca_base_component_path",
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        size_t n = strlen(names[i]);
        if (names[i][n - 1] == '*' ? !strncmp(key, names[i], n - 1) : !strcmp(key, names[i]))
            return true;
    }
    return false;
}

/* Adds the KEY=VALUE lines of path (if it exists) to e; later keys override.
 * A key that loads code (env_loads_code) is refused unless allow_loader or
 * it is set in the environment. Returns 0, or 2 after printing the error. */
static int env_file_read(const char *path, run_env *e, bool allow_loader)
{
    struct stat sb;
    if (stat(path, &sb) != 0 && errno == ENOENT) return 0;
    run_lines r;
    int rc = lines_open(&r, path, "", "env file", ENV_FILE_MAX_LINE);
    if (rc) return rc;
    size_t len;
    long n_bytes = 0;
    while ((rc = lines_next(&r, &len)) == 1) {
        n_bytes += (long)len + 1;
        if (n_bytes > ENV_FILE_MAX_BYTES) {
            rc = fail("%s:%d: env file is larger than %ld bytes", path, r.lineno,
                      ENV_FILE_MAX_BYTES);
            break;
        }
        char *p = r.buf;
        while (*p == ' ' || *p == '\t') p++;
        if (*p == '\0' || *p == '#') continue;
        if (!strncmp(p, "export", 6) && (p[6] == ' ' || p[6] == '\t')) {
            p += 6;
            while (*p == ' ' || *p == '\t') p++;
        }
        char *eq = strchr(p, '=');
        if (!eq || !valid_env_name(p, (size_t)(eq - p))) {
            rc = fail("%s:%d: expected KEY=VALUE", path, r.lineno);
            break;
        }
        *eq = '\0';
        if (!allow_loader && env_loads_code(p) && !getenv(p)) {
            rc = fail("%s:%d: %s chooses what code every rank loads or runs; zinc-run takes it "
                      "from an env file only with --allow-env-loader-vars",
                      path, r.lineno, p);
            break;
        }
        int i = env_find(e, p);
        if (i >= 0) {
            free(e->vals.v[i]);
            e->vals.v[i] = xstrdup(eq + 1);
        } else {
            vec_push(&e->keys, p);
            vec_push(&e->vals, eq + 1);
        }
    }
    lines_close(&r);
    return rc;
}

/* Reads ~/.zinc_env then ./.zinc_env (once if they are the same file). */
static int env_files_read(run_env *e, bool allow_loader)
{
    const char *home = getenv("HOME");
    struct stat hs, cs;
    bool have_home = false;
    if (home && *home) {
        char *hp = xprintf("%s/.zinc_env", home);
        have_home = stat(hp, &hs) == 0;
        int rc = env_file_read(hp, e, allow_loader);
        free(hp);
        if (rc) return rc;
    }
    if (have_home && stat(".zinc_env", &cs) == 0 && cs.st_dev == hs.st_dev &&
        cs.st_ino == hs.st_ino)
        return 0;
    return env_file_read(".zinc_env", e, allow_loader);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names of the environment variables forwarded by prefix, sorted. */
static void env_forwarded_names(run_vec *names)
{
    static const char *prefixes[] = {"ZINC_", "NCCL_", "OMP_", "OPENBLAS_"};
    for (char **ep = environ; *ep; ep++) {
        const char *eq = strchr(*ep, '=');
        if (!eq) continue;
        size_t n = (size_t)(eq - *ep);
        if (!valid_env_name(*ep, n)) continue;
        for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
            if (n > strlen(prefixes[i]) && !strncmp(*ep, prefixes[i], strlen(prefixes[i]))) {
                vec_push_take(names, xprintf("%.*s", (int)n, *ep));
                break;
            }
    }
    if (names->n > 1) qsort(names->v, (size_t)names->n, sizeof *names->v, cmp_str);
}

/* --------------------------------------------------------------- run --- */

static volatile sig_atomic_t g_child = 0;

/* Passes signals sent by other processes on to the job. Signals from the
 * terminal (si_code SI_KERNEL) reach the job through the process group
 * already; forwarding those too would make mpirun abort hard on the second. */
static void forward_signal(int sig, siginfo_t *info, void *uctx)
{
    (void)uctx;
    pid_t c = (pid_t)g_child;
    if (c > 0 && (!info || info->si_code <= 0)) kill(c, sig);
}

/* Runs argv in a child and returns its exit status (128+sig if killed). */
static int run_child(char **argv)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = forward_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "zinc-run: fork failed: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        execvp(argv[0], argv);
        fprintf(stderr, "zinc-run: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    g_child = pid;
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaction(sigs[i], &sa, NULL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            fprintf(stderr, "zinc-run: waitpid: %s\n", strerror(errno));
            return 1;
        }
    }
    g_child = 0;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 1;
}

/* ---------------------------------------------------------------- main --- */

typedef struct run_opts {
    int n;        /* 0: not given */
    const char *hostfile, *include, *exclude, *launcher;
    bool dry_run;
    bool allow_loader; /* --allow-env-loader-vars */
    int prog;     /* argv index of PROGRAM */
} run_opts;

/* Value of option argv[*i] ("--opt V" or "--opt=V"); NULL if missing. */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (a[n] == '=') return a + n + 1;
    if (*i + 1 >= argc) return NULL;
    return argv[++*i];
}

static bool opt_is(const char *a, const char *name)
{
    size_t n = strlen(name);
    return !strncmp(a, name, n) && (a[n] == '\0' || a[n] == '=');
}

/* Parses flags; returns -1 to go on, else an exit status. */
static int parse_args(int argc, char **argv, run_opts *o)
{
    memset(o, 0, sizeof *o);
    o->launcher = "openmpi";
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--")) {
            i++;
            break;
        }
        if (a[0] != '-' || a[1] == '\0') break;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (!strcmp(a, "--dry-run")) {
            o->dry_run = true;
        } else if (!strcmp(a, "--allow-env-loader-vars")) {
            o->allow_loader = true;
        } else if (!strcmp(a, "-n") || opt_is(a, "--np") || !strcmp(a, "-np") ||
                   (a[1] == 'n' && isdigit((unsigned char)a[2]))) {
            if (a[1] == 'n' && isdigit((unsigned char)a[2])) v = a + 2;
            else v = opt_value(argc, argv, &i, a[1] == '-' ? "--np" : a);
            if (!v) return usage_error("%s needs a value", a);
            if (!parse_int(v, 1, RUN_MAX_RANKS, &o->n))
                return fail("-n: expected a rank count from 1 to %d, got '%s'", RUN_MAX_RANKS, v);
        } else if (opt_is(a, "--hostfile") || !strcmp(a, "-H")) {
            if (!(o->hostfile = opt_value(argc, argv, &i, a[1] == 'H' ? "-H" : "--hostfile")))
                return usage_error("--hostfile needs a file");
        } else if (opt_is(a, "--include") || opt_is(a, "-i")) {
            if (!(o->include = opt_value(argc, argv, &i, a[1] == 'i' ? "-i" : "--include")))
                return usage_error("--include needs a SPEC");
        } else if (opt_is(a, "--exclude") || opt_is(a, "-e")) {
            if (!(o->exclude = opt_value(argc, argv, &i, a[1] == 'e' ? "-e" : "--exclude")))
                return usage_error("--exclude needs a SPEC");
        } else if (opt_is(a, "--launcher")) {
            if (!(o->launcher = opt_value(argc, argv, &i, "--launcher")))
                return usage_error("--launcher needs openmpi or slurm");
            if (strcmp(o->launcher, "openmpi") && strcmp(o->launcher, "slurm"))
                return usage_error("--launcher: expected openmpi or slurm, got '%s'", o->launcher);
        } else {
            return usage_error("unknown option %s", a);
        }
    }
    if (i >= argc) return usage_error("no PROGRAM given");
    if (argv[i][0] == '-') return usage_error("PROGRAM may not start with '-' (%s)", argv[i]);
    if (o->include && o->exclude) return usage_error("--include and --exclude are exclusive");
    if ((o->include || o->exclude) && !o->hostfile)
        return usage_error("--include/--exclude select from a --hostfile; give one");
    o->prog = i;
    return -1;
}

int main(int argc, char **argv)
{
    run_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0) return rc;
    bool slurm = !strcmp(o.launcher, "slurm");

    run_hosts hs = {0};
    run_env ef = {0};
    run_vec names = {0}, cmd = {0};
    rc = 0;
    if (o.hostfile) {
        if ((rc = hostfile_read(o.hostfile, &hs))) goto done;
        if (o.include && (rc = hosts_select(&hs, o.include, true, o.hostfile))) goto done;
        if (o.exclude && (rc = hosts_select(&hs, o.exclude, false, o.hostfile))) goto done;
    }
    if ((rc = env_files_read(&ef, o.allow_loader))) goto done;

    /* Ranks, oversubscription and the most ranks any node runs. */
    int total = 0;
    for (int i = 0; i < hs.n; i++) total += hs.h[i].n_use;
    int n = o.n ? o.n : (hs.n ? total : 1);
    bool oversub = false;
    int per_node = n;
    int cores = logical_cpus();
    if (hs.n) {
        if (n > total) {
            if (hs.n > 1) {
                rc = fail("-n %d exceeds the %d slots of hostfile %s (%d hosts); lower -n or add "
                          "slots",
                          n, total, o.hostfile, hs.n);
                goto done;
            }
            oversub = true; /* one node: run more ranks than slots */
        } else {
            per_node = 0;
            for (int i = 0, left = n; i < hs.n && left > 0; i++) {
                int here = hs.h[i].n_use < left ? hs.h[i].n_use : left;
                per_node = here > per_node ? here : per_node;
                left -= here;
            }
        }
    } else {
        oversub = n > physical_cores();
    }
    if (slurm) {
        int sc, nodes;
        if (parse_int(getenv("SLURM_CPUS_ON_NODE"), 1, 1 << 20, &sc)) cores = sc;
        if (!hs.n && parse_int(getenv("SLURM_JOB_NUM_NODES"), 1, 1 << 20, &nodes))
            per_node = (n + nodes - 1) / nodes;
    }
    int threads = cores / (per_node > 0 ? per_node : 1);
    if (threads < 1) threads = 1;

    /* Thread counts unless the user chose them (environment or env file). */
    bool user_omp = getenv("OMP_NUM_THREADS") || env_find(&ef, "OMP_NUM_THREADS") >= 0;
    bool user_zt = getenv("ZINC_THREADS") || env_find(&ef, "ZINC_THREADS") >= 0;
    env_forwarded_names(&names);

    if (!slurm) {
        vec_push(&cmd, "mpirun");
        vec_push(&cmd, "-n");
        vec_push_take(&cmd, xprintf("%d", n));
        vec_push(&cmd, "--bind-to");
        vec_push(&cmd, "none");
        if (oversub) vec_push(&cmd, "--oversubscribe");
        if (geteuid() == 0) vec_push(&cmd, "--allow-run-as-root");
        vec_push(&cmd, "--mca");
        vec_push(&cmd, "btl_vader_single_copy_mechanism");
        vec_push(&cmd, "none");
        if (hs.n) {
            size_t len = 1;
            for (int i = 0; i < hs.n; i++) len += strlen(hs.h[i].name) + 16;
            char *hl = xrealloc(NULL, len), *p = hl;
            for (int i = 0; i < hs.n; i++)
                p += sprintf(p, "%s%s:%d", i ? "," : "", hs.h[i].name, hs.h[i].n_use);
            vec_push(&cmd, "--host");
            vec_push_take(&cmd, hl);
        }
        if (!user_omp) {
            vec_push(&cmd, "-x");
            vec_push_take(&cmd, xprintf("OMP_NUM_THREADS=%d", threads));
            if (!user_zt) {
                vec_push(&cmd, "-x");
                vec_push_take(&cmd, xprintf("ZINC_THREADS=%d", threads));
            }
        }
        for (int i = 0; i < names.n; i++) {
            vec_push(&cmd, "-x");
            vec_push(&cmd, names.v[i]);
        }
        for (int i = 0; i < ef.keys.n; i++) {
            const char *k = ef.keys.v[i];
            if (getenv(k)) { /* the environment wins: forward it by name, once */
                bool listed = false;
                for (int j = 0; j < names.n; j++) listed |= !strcmp(names.v[j], k);
                if (listed) continue;
                vec_push(&cmd, "-x");
                vec_push(&cmd, k);
            } else {
                vec_push(&cmd, "-x");
                vec_push_take(&cmd, xprintf("%s=%s", k, ef.vals.v[i]));
            }
        }
    } else {
        /* srun passes the whole environment (--export=ALL); what zinc-run adds
         * rides in the same flag, which splits on commas. */
        vec_push(&cmd, "srun");
        vec_push(&cmd, "-n");
        vec_push_take(&cmd, xprintf("%d", n));
        vec_push_take(&cmd, xprintf("--cpus-per-task=%d", threads));
        if (hs.n) {
            size_t len = 16;
            for (int i = 0; i < hs.n; i++) len += strlen(hs.h[i].name) + 1;
            char *nl = xrealloc(NULL, len), *p = nl;
            p += sprintf(p, "--nodelist=");
            for (int i = 0; i < hs.n; i++) p += sprintf(p, "%s%s", i ? "," : "", hs.h[i].name);
            vec_push_take(&cmd, nl);
        }
        char *exp = xstrdup("--export=ALL");
        if (!user_omp) {
            char *t = xprintf("%s,OMP_NUM_THREADS=%d", exp, threads);
            free(exp);
            exp = t;
            if (!user_zt) {
                t = xprintf("%s,ZINC_THREADS=%d", exp, threads);
                free(exp);
                exp = t;
            }
        }
        for (int i = 0; i < ef.keys.n; i++) {
            if (getenv(ef.keys.v[i])) continue; /* already in ALL */
            if (strchr(ef.vals.v[i], ',')) {
                free(exp);
                rc = fail(".zinc_env: %s's value holds a comma, which srun --export cannot pass; "
                          "set it in the environment instead",
                          ef.keys.v[i]);
                goto done;
            }
            char *t = xprintf("%s,%s=%s", exp, ef.keys.v[i], ef.vals.v[i]);
            free(exp);
            exp = t;
        }
        vec_push_take(&cmd, exp);
    }
    for (int i = o.prog; i < argc; i++) vec_push(&cmd, argv[i]);
    if ((rc = argv_check(cmd.v))) goto done;

    if (o.dry_run) {
        for (int i = 0; i < cmd.n; i++) {
            if (i) putchar(' ');
            shell_quote(stdout, cmd.v[i]);
        }
        putchar('\n');
        rc = fflush(stdout) == 0 ? 0 : 1;
        goto done;
    }
    char *found = find_in_path(cmd.v[0]);
    if (!found) {
        if (slurm)
            fprintf(stderr, "zinc-run: srun not found on PATH; --launcher slurm needs Slurm "
                            "(or use --launcher openmpi)\n");
        else
            fprintf(stderr, "zinc-run: mpirun not found on PATH; install openmpi-bin "
                            "(or run `make deps`)\n");
        rc = 127;
        goto done;
    }
    free(found);
    rc = run_child(cmd.v);
done:
    hosts_free(&hs);
    vec_free(&ef.keys);
    vec_free(&ef.vals);
    vec_free(&names);
    vec_free(&cmd);
    return rc;
}
