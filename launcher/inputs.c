/* inputs.c - the files zinc-run reads: a DeepSpeed hostfile (with the
 * --include/--exclude selection applied to it) and the .zinc_env files.
 * What each accepts and refuses is in zinc_run.c's header comment; the parsers
 * are here, apart from the launching, so that tests/fuzz can drive them. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "launcher_int.h"
#include "zinc/file.h"

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

/* ------------------------------------------------------------ hostfile --- */

void hosts_free(run_hosts *hs)
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
const char *host_name_problem(const char *s, size_t n)
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
int hostfile_read(const char *path, run_hosts *hs)
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
int hosts_select(run_hosts *hs, const char *spec, bool include, const char *hostfile)
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

/* --num_nodes: DeepSpeed takes the first N hosts of its list, after the
 * selection; so does this. */
int hosts_keep_first(run_hosts *hs, int n_nodes, const char *hostfile)
{
    if (n_nodes > hs->n)
        return fail("--num_nodes %d: hostfile %s leaves %d host%s to run on; lower --num_nodes",
                    n_nodes, hostfile, hs->n, hs->n == 1 ? "" : "s");
    for (int i = n_nodes; i < hs->n; i++) {
        free(hs->h[i].name);
        free(hs->h[i].use);
    }
    hs->n = n_nodes;
    return 0;
}

/* --num_gpus: local ranks fill a host's selected slots in order, so keeping
 * the lowest per_host of them is what runs per_host ranks there. */
void hosts_cap_slots(run_hosts *hs, int per_host)
{
    for (int i = 0; i < hs->n; i++) {
        run_host *h = &hs->h[i];
        if (h->n_use < per_host)
            fprintf(stderr, "zinc-run: warning: --num_gpus %d: host %s has %d slot%s to run on; "
                            "it runs %d rank%s\n", per_host, h->name, h->n_use,
                    h->n_use == 1 ? "" : "s", h->n_use, h->n_use == 1 ? "" : "s");
        for (int s = 0, kept = 0; s < h->slots; s++) {
            if (!h->use[s]) continue;
            if (kept == per_host) h->use[s] = false;
            else kept++;
        }
        if (h->n_use > per_host) h->n_use = per_host;
    }
}

/* ------------------------------------------------------------ env file --- */

int env_find(const run_env *e, const char *key)
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
int env_files_read(run_env *e, bool allow_loader)
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

void env_free(run_env *e)
{
    vec_free(&e->keys);
    vec_free(&e->vals);
}
