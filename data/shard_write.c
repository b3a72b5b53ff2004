/* shard_write.c - writing token shards: zinc_data_write_shard (uint16, version 1),
 * _shard32 (uint32, version 2), _docs (documents with loss masks, version 3), each
 * committed atomically (a temporary file linked into place), the shard reader's
 * zinc_data_shard_info, and the text tokenizer that turns files into a shard. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zinc/data.h"
#include "zinc/file.h"
#include "zinc/tokenizer.h"
#include "data_int.h"

/* -------------------------------------------------------------- writing --- */

/* Writes all of buf to fd. */
static int data_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The output being written. Where the filesystem has O_TMPFILE it is an
 * unnamed file in OUT's directory, linked as OUT only on commit, so a
 * process killed mid-write (SIGKILL included) leaves nothing behind; else
 * "OUT.tmp", renamed on commit and removed on failure. */
typedef struct data_out {
    const char *path;
    char *tmp;   /* the name shown in messages (and the file, without O_TMPFILE) */
    int fd;
    int unnamed; /* O_TMPFILE: nothing to unlink on failure */
} data_out;

/* OUT's directory ("." for a bare name), malloc'd. */
static char *data_dirname(const char *path)
{
    char *dir = strdup(path);
    if (!dir) return NULL;
    char *slash = strrchr(dir, '/');
    if (!slash) {
        free(dir);
        return strdup(".");
    }
    if (slash == dir) slash[1] = '\0';
    else *slash = '\0';
    return dir;
}

static zinc_status data_out_begin(data_out *o, const char *path)
{
    o->path = path;
    o->fd = -1;
    o->unnamed = 0;
    size_t len = strlen(path);
    o->tmp = malloc(len + 5);
    if (!o->tmp) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
    memcpy(o->tmp, path, len);
    memcpy(o->tmp + len, ".tmp", 5);
#ifdef O_TMPFILE
    char *dir = data_dirname(path);
    if (dir) {
        o->fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
        free(dir);
        if (o->fd >= 0) {
            o->unnamed = 1;
            return ZINC_OK;
        }
    }
#endif
    o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (o->fd < 0) {
        zinc_status st = zinc_error(ZINC_ERR_IO, "data: cannot create %s: %s", o->tmp,
                                    strerror(errno));
        free(o->tmp);
        o->tmp = NULL;
        return st;
    }
    return ZINC_OK;
}

/* Discards the temporary file (after a failure). */
static void data_out_abort(data_out *o)
{
    if (o->fd >= 0) close(o->fd);
    if (o->tmp && !o->unnamed) unlink(o->tmp);
    free(o->tmp);
    o->tmp = NULL;
    o->fd = -1;
}

/* Gives the unnamed file the name o->tmp (replacing a stale one), so that
 * the rename below puts it in place atomically. */
static zinc_status data_out_link(data_out *o)
{
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", o->fd);
    for (int tries = 0; tries < 2; tries++) {
        if (linkat(AT_FDCWD, proc, AT_FDCWD, o->tmp, AT_SYMLINK_FOLLOW) == 0) {
            o->unnamed = 0;
            return ZINC_OK;
        }
        if (errno != EEXIST || unlink(o->tmp) != 0) break;
    }
    return zinc_error(ZINC_ERR_IO, "data: cannot create %s: %s", o->tmp, strerror(errno));
}

/* Writes the header for n tokens at offset 0 (version 1 or 2 by tsz; with block >= 0
 * version 3, documents packed for block), fsyncs, renames into place and fsyncs the
 * directory so the rename itself is durable. */
static zinc_status data_out_commit(data_out *o, uint64_t n, int tsz, int block)
{
    zinc_status st = ZINC_OK;
    int32_t hdr[ZINC_SHARD_HEADER_INTS] = {0};
    hdr[0] = ZINC_SHARD_MAGIC;
    hdr[1] = block >= 0 ? ZINC_SHARD_VERSION_DOCS : tsz == 2 ? ZINC_SHARD_VERSION : ZINC_SHARD_VERSION_U32;
    hdr[2] = (int32_t)n;
    if (block >= 0) {
        hdr[3] = tsz;
        hdr[4] = block;
    }
    if (pwrite(o->fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr) {
        st = zinc_error(ZINC_ERR_IO, "data: cannot write %s: %s", o->tmp, strerror(errno));
        goto cleanup;
    }
    if (fsync(o->fd) != 0) {
        st = zinc_error(ZINC_ERR_IO, "data: cannot fsync %s: %s", o->tmp, strerror(errno));
        goto cleanup;
    }
    if (o->unnamed && (st = data_out_link(o)) != ZINC_OK) goto cleanup;
    if (close(o->fd) != 0) {
        o->fd = -1;
        st = zinc_error(ZINC_ERR_IO, "data: cannot close %s: %s", o->tmp, strerror(errno));
        goto cleanup;
    }
    o->fd = -1;
    if (rename(o->tmp, o->path) != 0) {
        st = zinc_error(ZINC_ERR_IO, "data: cannot rename %s to %s: %s", o->tmp, o->path,
                        strerror(errno));
        goto cleanup;
    }
    /* Best effort: some filesystems refuse fsync on directories. */
    char *dir = data_dirname(o->path);
    if (dir) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    free(o->tmp);
    o->tmp = NULL;
    return ZINC_OK;
cleanup:
    data_out_abort(o);
    return st;
}

/* A shard of n tokens of tsz bytes each. */
static zinc_status write_shard(const char *out_path, const void *tokens, uint64_t n, int tsz)
{
    if (!out_path || !*out_path) return zinc_error(ZINC_ERR_INVALID_ARG, "data: no output path");
    if (n > 0 && !tokens) return zinc_error(ZINC_ERR_INVALID_ARG, "data: tokens is NULL");
    if (n > (uint64_t)INT32_MAX)
        return zinc_error(ZINC_ERR_INVALID_ARG,
                          "data: %s: %llu tokens exceed the shard limit of %d; split the data",
                          out_path, (unsigned long long)n, INT32_MAX);
    data_out o;
    zinc_status st = data_out_begin(&o, out_path);
    if (st != ZINC_OK) return st;
    int32_t zero_hdr[ZINC_SHARD_HEADER_INTS] = {0};
    if (data_write_all(o.fd, zero_hdr, sizeof zero_hdr) != 0 ||
        data_write_all(o.fd, tokens, (size_t)n * (size_t)tsz) != 0) {
        st = zinc_error(ZINC_ERR_IO, "data: cannot write %s: %s", o.tmp, strerror(errno));
        data_out_abort(&o);
        return st;
    }
    return data_out_commit(&o, n, tsz, -1);
}

zinc_status zinc_data_write_shard(const char *out_path, const uint16_t *tokens, uint64_t n)
{
    return write_shard(out_path, tokens, n, 2);
}

zinc_status zinc_data_write_shard32(const char *out_path, const uint32_t *tokens, uint64_t n)
{
    return write_shard(out_path, tokens, n, 4);
}

zinc_status zinc_data_write_docs(const char *out_path, const uint32_t *tokens, const uint8_t *flags, uint64_t n,
                                 int token_bytes, int block)
{
    if (!out_path || !*out_path) return zinc_error(ZINC_ERR_INVALID_ARG, "data: no output path");
    if ((n > 0 && (!tokens || !flags)) || (token_bytes != 2 && token_bytes != 4) || block < 0)
        return zinc_error(ZINC_ERR_INVALID_ARG, "data: %s: bad document shard arguments", out_path);
    if (n > (uint64_t)INT32_MAX)
        return zinc_error(ZINC_ERR_INVALID_ARG,
                          "data: %s: %llu tokens exceed the shard limit of %d; split the data",
                          out_path, (unsigned long long)n, INT32_MAX);
    if (n && !(flags[0] & ZINC_TOK_DOC))
        return zinc_error(ZINC_ERR_INVALID_ARG, "data: %s: the first token must start a document", out_path);
    for (uint64_t i = 0; i < n; i++)
        if ((token_bytes == 2 && tokens[i] > UINT16_MAX) || (flags[i] & ~(ZINC_TOK_LOSS | ZINC_TOK_DOC)))
            return zinc_error(ZINC_ERR_INVALID_ARG, "data: %s: token %llu: id %u or flags %u do not fit",
                              out_path, (unsigned long long)i, tokens[i], flags[i]);
    data_out o;
    zinc_status st = data_out_begin(&o, out_path);
    if (st != ZINC_OK) return st;
    int32_t zero_hdr[ZINC_SHARD_HEADER_INTS] = {0};
    int bad = data_write_all(o.fd, zero_hdr, sizeof zero_hdr) != 0;
    if (token_bytes == 4) {
        bad = bad || data_write_all(o.fd, tokens, (size_t)n * 4) != 0;
    } else {
        uint16_t chunk[4096];
        for (uint64_t i = 0; i < n && !bad; i += 4096) {
            const uint64_t k = n - i < 4096 ? n - i : 4096;
            for (uint64_t j = 0; j < k; j++) chunk[j] = (uint16_t)tokens[i + j];
            bad = data_write_all(o.fd, chunk, (size_t)k * 2) != 0;
        }
    }
    bad = bad || data_write_all(o.fd, flags, (size_t)n) != 0;
    if (bad) {
        st = zinc_error(ZINC_ERR_IO, "data: cannot write %s: %s", o.tmp, strerror(errno));
        data_out_abort(&o);
        return st;
    }
    return data_out_commit(&o, n, token_bytes, block);
}

zinc_status zinc_data_shard_info(const char *path, zinc_shard_info *out)
{
    data_shard sh;
    memset(out, 0, sizeof *out);
    zinc_status st = data_shard_open(path, INT32_MAX, &sh);
    if (st != ZINC_OK) return st;
    out->n_tokens = sh.n_tokens;
    out->version = sh.flags ? ZINC_SHARD_VERSION_DOCS : sh.tsz == 2 ? ZINC_SHARD_VERSION : ZINC_SHARD_VERSION_U32;
    out->block = sh.block;
    out->n_docs = sh.n_docs;
    out->n_targets = sh.n_tokens;
    if (sh.flags) {
        out->n_targets = 0;
        for (uint64_t i = 0; i < sh.n_tokens; i++) out->n_targets += data_is_target(sh.flags[i]);
    }
    out->token_bytes = sh.tsz;
    out->file_bytes = sh.map_bytes;
    out->lo = UINT32_MAX;
    for (uint64_t i = 0; i < sh.n_tokens; i++) {
        const uint32_t t = shard_tok(&sh, i);
        out->lo = t < out->lo ? t : out->lo;
        out->hi = t > out->hi ? t : out->hi;
    }
    if (!sh.n_tokens) out->lo = 0;
    data_shard_release(&sh);
    return ZINC_OK;
}

/* ------------------------------------------------------ text tokenizer --- */

typedef struct data_list {
    char **items;
    size_t n, cap;
} data_list;

static void data_list_free(data_list *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* Appends s (taking ownership); frees s on failure. */
static zinc_status data_list_push_take(data_list *l, char *s)
{
    if (!s) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
    if (l->n == l->cap) {
        size_t ncap = l->cap ? 2 * l->cap : 16;
        char **ni = realloc(l->items, ncap * sizeof *ni);
        if (!ni) {
            free(s);
            return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
        }
        l->items = ni;
        l->cap = ncap;
    }
    l->items[l->n++] = s;
    return ZINC_OK;
}

/* True if name ends in one of the comma-separated suffixes of exts (NULL or
 * empty: everything matches). */
static bool data_ext_match(const char *name, const char *exts)
{
    if (!exts || !*exts) return true;
    size_t nlen = strlen(name);
    const char *p = exts;
    bool any = false;
    while (*p) {
        while (*p == ',' || *p == ' ') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        size_t len = (size_t)(e - p);
        while (len > 0 && p[len - 1] == ' ') len--;
        if (len > 0) {
            any = true;
            if (len <= nlen && memcmp(name + nlen - len, p, len) == 0) return true;
        }
        p = e;
    }
    return !any; /* a list of only commas filters nothing */
}

static int data_cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static char *data_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    bool slash = a > 0 && dir[a - 1] == '/';
    char *s = malloc(a + b + 2);
    if (!s) return NULL;
    memcpy(s, dir, a);
    if (!slash) s[a++] = '/';
    memcpy(s + a, name, b + 1);
    return s;
}

/* The file being written, so a walk never tokenizes its own output. */
typedef struct data_skip {
    dev_t dev;
    ino_t ino;
    bool valid;
} data_skip;

/* Appends the matching regular files under dir to files, in sorted order,
 * skipping hidden entries, build* directories and symlinked directories. */
static zinc_status data_walk(const char *dir, const char *exts, const data_skip *skip,
                             data_list *files)
{
    zinc_status st = ZINC_OK;
    data_list names = {0};
    DIR *dp = opendir(dir);
    if (!dp) return zinc_error(ZINC_ERR_IO, "data: cannot read directory %s: %s", dir,
                               strerror(errno));
    struct dirent *de;
    errno = 0;
    while ((de = readdir(dp)) != NULL) {
        if (de->d_name[0] == '.') continue;
        ZINC_TRY(data_list_push_take(&names, strdup(de->d_name)));
    }
    closedir(dp);
    dp = NULL;
    qsort(names.items, names.n, sizeof *names.items, data_cmp_str);
    for (size_t i = 0; i < names.n; i++) {
        char *path = data_join(dir, names.items[i]);
        if (!path) {
            st = zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
            goto cleanup;
        }
        struct stat sb, lsb;
        if (stat(path, &sb) != 0 || lstat(path, &lsb) != 0) {
            st = zinc_error(ZINC_ERR_IO, "data: cannot stat %s: %s", path, strerror(errno));
            free(path);
            goto cleanup;
        }
        if (S_ISDIR(sb.st_mode)) {
            bool is_build = strncmp(names.items[i], "build", 5) == 0;
            if (!is_build && !S_ISLNK(lsb.st_mode)) st = data_walk(path, exts, skip, files);
            free(path);
            if (st != ZINC_OK) goto cleanup;
        } else if (S_ISREG(sb.st_mode) && data_ext_match(names.items[i], exts) &&
                   !(skip->valid && sb.st_dev == skip->dev && sb.st_ino == skip->ino)) {
            ZINC_TRY(data_list_push_take(files, path));
        } else {
            free(path);
        }
    }
cleanup:
    if (dp) closedir(dp);
    data_list_free(&names);
    return st;
}

/* One whole file through the tokenizer: its ids as tsz-byte tokens (uint16 or uint32) in
 * toks (malloc'd, n). Runs on any thread: a failure's detail goes to err, not to this
 * thread's last error. */
typedef struct enc_file {
    void *toks;
    size_t n;
    zinc_status st;
    char err[600];
} enc_file;

static void data_encode_file(const zinc_tokenizer *tok, const char *path, int tsz, enc_file *r)
{
    struct stat sb;
    char *text = NULL;
    int32_t *ids = NULL;
    size_t n = 0, cap = 0, got = 0;
    int fd = -1;
    zinc_status st = zinc_open_regular(path, 0, "text input", &fd, NULL);
    if (st != ZINC_OK) goto fail;
    if (fstat(fd, &sb) != 0 || sb.st_size > (off_t)1 << 30) {
        st = zinc_error(ZINC_ERR_INVALID_ARG, "%s: more than 1 GiB of text in one file; split it", path);
        goto fail;
    }
    text = malloc((size_t)sb.st_size + 1);
    if (!text) {
        st = zinc_error(ZINC_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    while (got < (size_t)sb.st_size) {
        ssize_t rd = read(fd, text + got, (size_t)sb.st_size - got);
        if (rd < 0 && errno == EINTR) continue;
        if (rd <= 0) {
            st = zinc_error(ZINC_ERR_IO, "cannot read %s: %s", path, rd < 0 ? strerror(errno) : "file shrank");
            goto fail;
        }
        got += (size_t)rd;
    }
    st = zinc_tokenizer_encode_special(tok, text, got, &ids, &n, &cap);
    if (st != ZINC_OK) {
        st = zinc_error(st, "%s: %s", path, zinc_last_error());
        goto fail;
    }
    r->toks = malloc((n ? n : 1) * (size_t)tsz);
    if (!r->toks) {
        st = zinc_error(ZINC_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        if (tsz == 2 && ids[i] > 65535) { /* the vocabulary said 16 bits */
            st = zinc_error(ZINC_ERR_CORRUPT, "%s: token id %d is past the tokenizer's vocabulary", path, ids[i]);
            goto fail;
        }
        if (tsz == 2)
            ((uint16_t *)r->toks)[i] = (uint16_t)ids[i];
        else
            ((uint32_t *)r->toks)[i] = (uint32_t)ids[i];
    }
    r->n = n;
    r->st = ZINC_OK;
    goto done;
fail:
    r->st = st;
    snprintf(r->err, sizeof r->err, "%s", zinc_last_error());
    free(r->toks);
    r->toks = NULL;
done:
    if (fd >= 0) close(fd);
    free(text);
    free(ids);
}

/* zinc_data_set_progress's hook and the bytes of the text being tokenized */
static void (*text_progress)(uint64_t done, uint64_t total, void *u);
static void *text_progress_u;

void zinc_data_set_progress(void (*fn)(uint64_t done, uint64_t total, void *u), void *u)
{
    text_progress = fn;
    text_progress_u = u;
}

typedef struct text_prog {
    uint64_t done, total;
} text_prog;

static uint64_t file_bytes(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

static void text_prog_add(text_prog *p, uint64_t n)
{
    p->done += n;
    if (text_progress) text_progress(p->done < p->total ? p->done : p->total, p->total, text_progress_u);
}

/* The files through the tokenizer into o's shard, in order: windows of files encoded on
 * every thread at once, then written one after another. */
static zinc_status data_tokenize_files(const zinc_tokenizer *tok, const data_list *files, data_out *o,
                                       const char *out_path, int tsz, uint64_t *total, text_prog *prog)
{
    zinc_status st = ZINC_OK;
    const size_t win = (size_t)omp_get_max_threads() * 2;
    enc_file *r = calloc(win, sizeof *r);
    if (!r) return zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
    for (size_t f0 = 0; f0 < files->n && st == ZINC_OK; f0 += win) {
        const size_t nw = files->n - f0 < win ? files->n - f0 : win;
        #pragma omp parallel for schedule(dynamic, 1)
        for (size_t i = 0; i < nw; i++) data_encode_file(tok, files->items[f0 + i], tsz, &r[i]);
        for (size_t i = 0; i < nw; i++) {
            if (st == ZINC_OK && r[i].st != ZINC_OK) st = zinc_error(r[i].st, "data: %s", r[i].err);
            if (st == ZINC_OK && *total + r[i].n > (uint64_t)INT32_MAX)
                st = zinc_error(ZINC_ERR_INVALID_ARG, "data: %s: inputs exceed the shard limit of %d tokens; split "
                                "them over several shards", out_path, INT32_MAX);
            if (st == ZINC_OK && data_write_all(o->fd, r[i].toks, r[i].n * (size_t)tsz) != 0)
                st = zinc_error(ZINC_ERR_IO, "data: cannot write %s: %s", o->tmp, strerror(errno));
            if (st == ZINC_OK) *total += r[i].n;
            if (st == ZINC_OK) text_prog_add(prog, file_bytes(files->items[f0 + i]));
            free(r[i].toks);
            r[i] = (enc_file){0};
        }
    }
    free(r);
    return st;
}

zinc_status zinc_data_write_shard_from_text(const char *const *inputs, int n_inputs,
                                            const char *exts, const zinc_tokenizer *tok,
                                            const char *out_path, uint64_t *n_tokens)
{
    zinc_status st = ZINC_OK;
    data_list files = {0};
    data_out o = {.fd = -1};
    unsigned char *in = NULL;
    uint16_t *toks = NULL;
    int fd = -1;
    uint64_t total = 0;
    if (n_tokens) *n_tokens = 0;
    if (!out_path || !*out_path) return zinc_error(ZINC_ERR_INVALID_ARG, "data: no output path");
    if (!inputs || n_inputs <= 0) return zinc_error(ZINC_ERR_INVALID_ARG, "data: no inputs given");

    data_skip skip = {0};
    struct stat sb;
    if (stat(out_path, &sb) == 0) skip = (data_skip){sb.st_dev, sb.st_ino, true};

    /* Named files are always taken; the exts filter applies inside directories. */
    for (int i = 0; i < n_inputs; i++) {
        if (!inputs[i]) {
            st = zinc_error(ZINC_ERR_INVALID_ARG, "data: input %d is NULL", i);
            goto cleanup;
        }
        if (stat(inputs[i], &sb) != 0) {
            st = zinc_error(ZINC_ERR_IO, "data: cannot open %s: %s", inputs[i], strerror(errno));
            goto cleanup;
        }
        if (S_ISDIR(sb.st_mode)) {
            ZINC_TRY(data_walk(inputs[i], exts, &skip, &files));
        } else if (!S_ISREG(sb.st_mode)) { /* /dev/zero would stream forever, a FIFO block */
            st = zinc_error(ZINC_ERR_IO, "data: %s: text input is %s, not a regular file or a directory",
                            inputs[i], zinc_file_kind((unsigned)sb.st_mode));
            goto cleanup;
        } else {
            ZINC_TRY(data_list_push_take(&files, strdup(inputs[i])));
        }
    }
    if (files.n == 0) {
        st = zinc_error(ZINC_ERR_IO, "data: no input files%s%s found under %s%s",
                        exts ? " matching " : "", exts ? exts : "", inputs[0],
                        n_inputs > 1 ? " and the other inputs" : "");
        goto cleanup;
    }

    const size_t chunk = 1 << 20;
    in = malloc(chunk);
    toks = malloc(chunk * sizeof *toks);
    if (!in || !toks) {
        st = zinc_error(ZINC_ERR_NOMEM, "data: out of memory");
        goto cleanup;
    }
    ZINC_TRY(data_out_begin(&o, out_path));
    int32_t zero_hdr[ZINC_SHARD_HEADER_INTS] = {0};
    if (data_write_all(o.fd, zero_hdr, sizeof zero_hdr) != 0) {
        st = zinc_error(ZINC_ERR_IO, "data: cannot write %s: %s", o.tmp, strerror(errno));
        goto cleanup;
    }
    /* 16-bit tokens while the vocabulary fits them (llm.c's version 1), else 32-bit (2) */
    const int tsz = tok && zinc_tokenizer_vocab_size(tok) > 65536 ? 4 : 2;
    text_prog prog = {0, 0};
    for (size_t f = 0; f < files.n; f++) prog.total += file_bytes(files.items[f]);
    if (text_progress) text_progress(0, prog.total, text_progress_u);
    if (tok) ZINC_TRY(data_tokenize_files(tok, &files, &o, out_path, tsz, &total, &prog));
    for (size_t f = 0; f < files.n && !tok; f++) {
        st = zinc_open_regular(files.items[f], 0, "text input", &fd, NULL);
        if (st != ZINC_OK) {
            st = zinc_error(st, "data: %s", zinc_last_error());
            goto cleanup;
        }
        for (;;) {
            ssize_t r = read(fd, in, chunk);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                st = zinc_error(ZINC_ERR_IO, "data: cannot read %s: %s", files.items[f],
                                strerror(errno));
                goto cleanup;
            }
            if (r == 0) break;
            if (total + (uint64_t)r > (uint64_t)INT32_MAX) {
                st = zinc_error(ZINC_ERR_INVALID_ARG,
                                "data: %s: inputs exceed the shard limit of %d tokens; "
                                "split them over several shards",
                                out_path, INT32_MAX);
                goto cleanup;
            }
            for (ssize_t i = 0; i < r; i++) toks[i] = in[i]; /* byte tokenizer */
            if (data_write_all(o.fd, toks, (size_t)r * sizeof *toks) != 0) {
                st = zinc_error(ZINC_ERR_IO, "data: cannot write %s: %s", o.tmp,
                                strerror(errno));
                goto cleanup;
            }
            total += (uint64_t)r;
            text_prog_add(&prog, (uint64_t)r);
        }
        close(fd);
        fd = -1;
    }
    st = data_out_commit(&o, total, tsz, -1);
    if (st == ZINC_OK && n_tokens) *n_tokens = total;
cleanup:
    if (fd >= 0) close(fd);
    if (st != ZINC_OK && o.tmp) data_out_abort(&o);
    free(in);
    free(toks);
    data_list_free(&files);
    return st;
}
