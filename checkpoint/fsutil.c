/* fsutil.c - the checkpoint's file system side: paths, small files read whole and written
 * atomically (tmp + fsync + rename + fsync dir), zinc's marker on the directories it
 * creates and the removal of only marked ones, tags, latest and index, and rank 0's
 * prepare (stale directories, a fresh <tag>.partial) and atomic commit of a save
 * (ckpt.c has the overview).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_int.h"
#include "zinc/file.h"
#include "zinc/log.h"

/* ---- small files and directories -------------------------------------------------------- */

zinc_status ckpt_path_join(char *out, const char *a, const char *b)
{
    int k = snprintf(out, CK_PATH, "%s/%s", a, b);
    if (k < 0 || k >= CK_PATH) return zinc_error(ZINC_ERR_INVALID_ARG, "path too long: %s/%s", a, b);
    return ZINC_OK;
}

static zinc_status fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return zinc_error(ZINC_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    int r = fsync(fd);
    int e = errno;
    close(fd);
    /* some file systems cannot fsync a directory; that is not an error of ours */
    if (r != 0 && e != EINVAL && e != EROFS)
        return zinc_error(ZINC_ERR_IO, "%s: fsync of directory failed: %s", dir, strerror(e));
    return ZINC_OK;
}

zinc_status zinc_ckpt_prepare_dir(const char *save_dir)
{
    if (!save_dir || !save_dir[0]) return zinc_error(ZINC_ERR_INVALID_ARG, "checkpoint: no save_dir");
    zinc_status st = zinc_mkdir_p(save_dir);
    if (st != ZINC_OK) return st;
    if (access(save_dir, W_OK | X_OK) != 0)
        return zinc_error(ZINC_ERR_IO, "%s: cannot write into it: %s", save_dir, strerror(errno));
    return ZINC_OK;
}

int ckpt_path_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Every directory zinc creates in a save_dir (<tag>.partial, which becomes <tag>) holds this
 * file with this line; zinc writes it into an older checkpoint before renaming it to
 * <tag>.replaced or <tag>.deleting. Stale *.partial / *.deleting / *.replaced directories are
 * removed only when they carry it: a user's thesis.partial/ is not ours to delete. */
#define CK_MARKER ".zinc-checkpoint"
#define CK_MARKER_LINE "zinc checkpoint directory (zinc may remove it when its name ends in .partial, .deleting or .replaced)\n"

/* 1 when dir carries zinc's marker with the expected line. */
static int dir_is_ours(const char *dir)
{
    char p[CK_PATH], buf[sizeof CK_MARKER_LINE];
    if (ckpt_path_join(p, dir, CK_MARKER) != ZINC_OK) return 0;
    int fd = open(p, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat sb;
    ssize_t n = -1;
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == (off_t)strlen(CK_MARKER_LINE))
        n = read(fd, buf, sizeof buf);
    close(fd);
    return n == (ssize_t)strlen(CK_MARKER_LINE) && !memcmp(buf, CK_MARKER_LINE, (size_t)n);
}

/* Writes zinc's marker into dir (which zinc created or committed). */
static zinc_status dir_mark(const char *dir)
{
    char p[CK_PATH];
    zinc_status st = ckpt_path_join(p, dir, CK_MARKER);
    if (st != ZINC_OK) return st;
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return zinc_error(ZINC_ERR_IO, "%s: cannot create: %s", p, strerror(errno));
    size_t n = strlen(CK_MARKER_LINE);
    ssize_t w = write(fd, CK_MARKER_LINE, n);
    int e = errno;
    if (close(fd) != 0 && w == (ssize_t)n) {
        w = -1;
        e = errno;
    }
    if (w != (ssize_t)n) return zinc_error(ZINC_ERR_IO, "%s: cannot write: %s", p, w < 0 ? strerror(e) : "short write");
    return ZINC_OK;
}

/* Removes a checkpoint directory: manifest.json first (so a half-removed directory is
 * never taken for complete), then the other plain files, the marker last (so a directory
 * half removed by a killed process is still known as zinc's), then the directory. Does not
 * recurse: a subdirectory (not ours) stops it with ZINC_ERR_IO. A missing dir is fine. */
static zinc_status remove_flat_dir(const char *dir)
{
    char p[CK_PATH];
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return ZINC_OK;
        return zinc_error(ZINC_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    }
    zinc_status st = ckpt_path_join(p, dir, "manifest.json");
    if (st == ZINC_OK && unlink(p) != 0 && errno != ENOENT)
        st = zinc_error(ZINC_ERR_IO, "%s: cannot remove: %s", p, strerror(errno));
    struct dirent *e;
    while (st == ZINC_OK && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, CK_MARKER)) continue;
        st = ckpt_path_join(p, dir, e->d_name);
        if (st == ZINC_OK && unlink(p) != 0)
            st = zinc_error(ZINC_ERR_IO, "%s: cannot remove: %s", p, strerror(errno));
    }
    closedir(d);
    if (st == ZINC_OK) st = ckpt_path_join(p, dir, CK_MARKER);
    if (st == ZINC_OK && unlink(p) != 0 && errno != ENOENT)
        st = zinc_error(ZINC_ERR_IO, "%s: cannot remove: %s", p, strerror(errno));
    if (st == ZINC_OK && rmdir(dir) != 0)
        st = zinc_error(ZINC_ERR_IO, "%s: cannot remove directory: %s", dir, strerror(errno));
    return st;
}

/* Removes a failed save's directory, keeping the detail of failure st. */
void ckpt_remove_partial(const char *part, zinc_status st)
{
    char keep[1024];
    ckpt_last_error_copy(keep, sizeof keep);
    if (remove_flat_dir(part) != ZINC_OK) ZINC_WARN("checkpoint: %s", zinc_last_error());
    zinc_error(st, "%s", keep);
}

/* Writes dir/name atomically: name.tmp, fsync, rename, fsync dir. */
zinc_status ckpt_write_file_atomic(zinc_aio *aio, const char *dir, const char *name,
                                   const char *data, size_t n)
{
    char tmp[CK_PATH], dst[CK_PATH], tname[300];
    zinc_aio_file *f = NULL;
    zinc_status st;
    snprintf(tname, sizeof tname, "%s.tmp", name);
    ZINC_TRY(ckpt_path_join(tmp, dir, tname));
    ZINC_TRY(ckpt_path_join(dst, dir, name));
    /* a leftover name.tmp is ours to replace; a named pipe there would block the open */
    if (unlink(tmp) != 0 && errno != ENOENT)
        return zinc_error(ZINC_ERR_IO, "%s: cannot remove: %s", tmp, strerror(errno));
    ZINC_TRY(zinc_aio_open(aio, tmp, ZINC_AIO_WRITE | ZINC_AIO_CREATE | ZINC_AIO_TRUNC | ZINC_AIO_BUFFERED, &f));
    if (n) ZINC_TRY(zinc_aio_pwrite(f, data, n, 0));
    ZINC_TRY(zinc_aio_fsync(f));
    st = zinc_aio_close(f);
    f = NULL;
    if (st != ZINC_OK) goto cleanup;
    if (rename(tmp, dst) != 0) {
        st = zinc_error(ZINC_ERR_IO, "cannot rename %s to %s: %s", tmp, dst, strerror(errno));
        goto cleanup;
    }
    st = fsync_dir(dir);
cleanup:
    if (f) {
        zinc_aio_close(f);
        unlink(tmp);
    }
    return st;
}

/* Reads a whole small file (plain read; at most max bytes) into a malloc'd NUL-terminated
 * buffer; what names its role in errors. The file is opened with zinc_open_regular, so a
 * named pipe or a device file is refused before anything blocks. ZINC_ERR_IO names the file. */
zinc_status ckpt_read_small_file(const char *path, const char *what, size_t max, char **out, size_t *len)
{
    *out = NULL;
    int fd;
    long long size = 0;
    zinc_status st = zinc_open_regular(path, 0, what, &fd, &size);
    if (st != ZINC_OK) return st;
    if (size < 0 || (uint64_t)size > max) {
        close(fd);
        return zinc_error(ZINC_ERR_CORRUPT, "%s: %lld bytes, larger than the %zu allowed", path, size, max);
    }
    size_t n = (size_t)size, got = 0;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return zinc_error(ZINC_ERR_NOMEM, "%s: no memory for %zu bytes", path, n);
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = errno;
            free(buf);
            close(fd);
            return zinc_error(ZINC_ERR_IO, "%s: read failed: %s", path, r < 0 ? strerror(e) : "short read");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return ZINC_OK;
}

/* ---- tags, latest, index ---------------------------------------------------------------- */

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int ckpt_tag_valid(const char *tag)
{
    size_t n = strlen(tag);
    if (n == 0 || n > ZINC_CKPT_TAG_MAX || tag[0] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        char c = tag[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    if (has_suffix(tag, ".partial") || has_suffix(tag, ".deleting") || has_suffix(tag, ".replaced") ||
        has_suffix(tag, ".tmp") || !strcmp(tag, "latest") || !strcmp(tag, "index"))
        return 0;
    return 1;
}

zinc_status zinc_ckpt_resolve_latest(const char *save_dir, char *tag, size_t cap)
{
    char p[CK_PATH], *buf = NULL;
    size_t n = 0;
    zinc_status st;
    if (!save_dir || !tag || cap == 0) return zinc_error(ZINC_ERR_INVALID_ARG, "zinc_ckpt_resolve_latest: NULL argument");
    ZINC_TRY(ckpt_path_join(p, save_dir, "latest"));
    ZINC_TRY(ckpt_read_small_file(p, "checkpoint latest", 4096, &buf, &n));
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == '\r')) buf[--n] = '\0';
    if (strlen(buf) != n || !ckpt_tag_valid(buf)) {
        st = zinc_error(ZINC_ERR_CORRUPT, "%s does not hold a valid checkpoint tag", p);
        goto cleanup;
    }
    if (n + 1 > cap) {
        st = zinc_error(ZINC_ERR_INVALID_ARG, "%s: tag longer than the %zu bytes given", p, cap);
        goto cleanup;
    }
    memcpy(tag, buf, n + 1);
cleanup:
    free(buf);
    return st;
}

/* The directory holding checkpoint tag: save_dir/tag, or save_dir/tag.replaced when a save
 * replacing that tag was killed between its two renames. */
zinc_status ckpt_dir_of(const char *save_dir, const char *tag, char *out)
{
    char p[CK_PATH], alt[CK_PATH], m[CK_PATH];
    zinc_status st;
    ZINC_TRY(ckpt_path_join(p, save_dir, tag));
    ZINC_TRY(ckpt_path_join(m, p, "manifest.json"));
    if (!ckpt_path_exists(m)) {
        char name[300];
        snprintf(name, sizeof name, "%s.replaced", tag);
        ZINC_TRY(ckpt_path_join(alt, save_dir, name));
        ZINC_TRY(ckpt_path_join(m, alt, "manifest.json"));
        if (ckpt_path_exists(m)) {
            memcpy(out, alt, CK_PATH);
            return ZINC_OK;
        }
    }
    memcpy(out, p, CK_PATH);
cleanup:
    return st;
}

/* Resolves dir (checkpoint or save_dir) to a checkpoint directory. */
zinc_status ckpt_resolve_dir(const char *dir, char *out)
{
    char m[CK_PATH], l[CK_PATH], tag[ZINC_CKPT_TAG_MAX + 1];
    zinc_status st;
    ZINC_TRY(ckpt_path_join(m, dir, "manifest.json"));
    if (ckpt_path_exists(m)) {
        snprintf(out, CK_PATH, "%s", dir);
        return ZINC_OK;
    }
    ZINC_TRY(ckpt_path_join(l, dir, "latest"));
    if (!ckpt_path_exists(l)) {
        struct stat sb;
        if (stat(dir, &sb) != 0)
            return zinc_error(ZINC_ERR_IO, "%s: %s", dir, strerror(errno));
        return zinc_error(ZINC_ERR_IO, "%s holds neither manifest.json nor latest: not a checkpoint or save directory", dir);
    }
    ZINC_TRY(zinc_ckpt_resolve_latest(dir, tag, sizeof tag));
    ZINC_TRY(ckpt_dir_of(dir, tag, out));
cleanup:
    return st;
}

/* Index lines (tags, oldest first); a missing index is empty. */
static zinc_status index_read(const char *save_dir, char ***tags, int *n)
{
    char p[CK_PATH], *buf = NULL;
    size_t len = 0;
    zinc_status st;
    *tags = NULL;
    *n = 0;
    ZINC_TRY(ckpt_path_join(p, save_dir, "index"));
    if (!ckpt_path_exists(p)) return ZINC_OK;
    ZINC_TRY(ckpt_read_small_file(p, "checkpoint index", 16u << 20, &buf, &len));
    int cap = 0;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        if (!ckpt_tag_valid(line)) continue; /* a torn or foreign line: skip, never delete by it */
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **t = realloc(*tags, (size_t)cap * sizeof *t);
            if (!t) {
                st = zinc_error(ZINC_ERR_NOMEM, "index of %s: out of memory", save_dir);
                goto cleanup;
            }
            *tags = t;
        }
        (*tags)[(*n)++] = strdup(line);
    }
cleanup:
    free(buf);
    return st;
}

static void tags_free(char **tags, int n)
{
    for (int i = 0; i < n; i++) free(tags[i]);
    free(tags);
}

static zinc_status index_write(zinc_aio *aio, const char *save_dir, char **tags, int n)
{
    sbuf s = {0};
    for (int i = 0; i < n; i++)
        if (tags[i]) ckpt_sb_printf(&s, "%s\n", tags[i]);
    zinc_status st = s.oom ? zinc_error(ZINC_ERR_NOMEM, "index of %s: out of memory", save_dir)
                           : ckpt_write_file_atomic(aio, save_dir, "index", s.p ? s.p : "", s.n);
    free(s.p);
    return st;
}

/* ---- save: prepare and commit ----------------------------------------------------------- */

/* Paths of foreign directories already reported by this process (each is said once). */
static char g_foreign_told[4096];

/* A *.partial / *.deleting / *.replaced directory without zinc's marker: left alone, said
 * once per process. */
static void foreign_dir(const char *p)
{
    size_t have = strlen(g_foreign_told), n = strlen(p);
    for (const char *c = g_foreign_told; (c = strstr(c, p)) != NULL; c += n)
        if ((c == g_foreign_told || c[-1] == '\n') && c[n] == '\n') return;
    ZINC_WARN("checkpoint: leaving %s alone: its name looks like a stale save's, but zinc did not create it "
              "(it lacks zinc's marker file %s)", p, CK_MARKER);
    if (have + n + 2 <= sizeof g_foreign_told) {
        memcpy(g_foreign_told + have, p, n);
        g_foreign_told[have + n] = '\n';
        g_foreign_told[have + n + 1] = '\0';
    }
}

/* Removes zinc's stale directory p (why: what it is), logging it; warnings only. */
static void remove_stale(const char *p, const char *why)
{
    if (remove_flat_dir(p) != ZINC_OK) ZINC_WARN("checkpoint: %s", zinc_last_error());
    else ZINC_INFO("checkpoint: removed %s (%s)", p, why);
}

/* Rank 0 before any rank writes: save_dir exists, stale directories of killed saves (those
 * carrying zinc's marker) are gone, <tag>.partial is fresh, marked and otherwise empty, meta
 * parses. */
zinc_status ckpt_save_prepare(const char *save_dir, const char *tag, const char *meta)
{
    char p[CK_PATH], name[300];
    zinc_status st;
    json_error_t jerr;
    json_t *j = json_loads(meta, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!j)
        return zinc_error(ZINC_ERR_INVALID_ARG, "meta_json: line %d column %d: %s", jerr.line, jerr.column, jerr.text);
    json_decref(j);
    ZINC_TRY(zinc_mkdir_p(save_dir));
    DIR *d = opendir(save_dir);
    if (!d) return zinc_error(ZINC_ERR_IO, "%s: cannot open directory: %s", save_dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (n[0] == '.') continue;
        int partial = has_suffix(n, ".partial"), deleting = has_suffix(n, ".deleting");
        int replaced = has_suffix(n, ".replaced");
        if (!partial && !deleting && !replaced) continue;
        if (snprintf(p, sizeof p, "%s/%s", save_dir, n) >= (int)sizeof p) continue;
        struct stat sb;
        if (lstat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)) continue;
        if (!dir_is_ours(p)) {
            /* a save killed between its mkdir and its marker leaves an empty .partial: rmdir
             * takes only an empty folder, so nothing of anyone's is lost */
            if (partial && rmdir(p) == 0) {
                ZINC_INFO("checkpoint: removed the empty %s (a save killed as it began)", p);
                continue;
            }
            foreign_dir(p);
            continue;
        }
        if (replaced) {
            /* a replacing save was killed: restore the original if the new one never arrived */
            char orig[CK_PATH];
            snprintf(orig, sizeof orig, "%.*s", (int)(strlen(p) - strlen(".replaced")), p);
            if (!ckpt_path_exists(orig) && rename(p, orig) == 0) {
                ZINC_INFO("checkpoint: restored %s from %s (a replacing save was killed)", orig, p);
                continue;
            }
        }
        remove_stale(p, partial ? "a killed save's partial checkpoint"
                        : deleting ? "a checkpoint a killed save was deleting"
                                   : "a checkpoint a killed save had replaced");
    }
    closedir(d);
    snprintf(name, sizeof name, "%s.partial", tag);
    ZINC_TRY(ckpt_path_join(p, save_dir, name));
    if (mkdir(p, 0755) != 0) {
        if (errno == EEXIST)
            return zinc_error(ZINC_ERR_IO, "%s exists and zinc did not create it: move it away or save under "
                              "another tag", p);
        return zinc_error(ZINC_ERR_IO, "%s: cannot create directory: %s", p, strerror(errno));
    }
    st = dir_mark(p);
    if (st != ZINC_OK) ckpt_remove_partial(p, st);
cleanup:
    return st;
}

/* Rank 0 after the manifest is durable: rename into place, index, latest, prune. */
zinc_status ckpt_save_commit(zinc_aio *aio, const char *save_dir, const char *tag, int keep_last)
{
    char part[CK_PATH], fin[CK_PATH], repl[CK_PATH], name[300];
    char **tags = NULL;
    int n = 0;
    zinc_status st;
    snprintf(name, sizeof name, "%s.partial", tag);
    ZINC_TRY(ckpt_path_join(part, save_dir, name));
    snprintf(name, sizeof name, "%s.replaced", tag);
    ZINC_TRY(ckpt_path_join(repl, save_dir, name));
    ZINC_TRY(ckpt_path_join(fin, save_dir, tag));
    int replacing = ckpt_path_exists(fin);
    /* a checkpoint written before markers existed is ours too (it is named by the tag) */
    if (replacing && !dir_is_ours(fin)) ZINC_TRY(dir_mark(fin));
    if (replacing && rename(fin, repl) != 0)
        return zinc_error(ZINC_ERR_IO, "cannot rename %s to %s: %s", fin, repl, strerror(errno));
    if (rename(part, fin) != 0) {
        st = zinc_error(ZINC_ERR_IO, "cannot rename %s to %s: %s", part, fin, strerror(errno));
        if (replacing) rename(repl, fin);
        return st;
    }
    ZINC_TRY(fsync_dir(save_dir));

    ZINC_TRY(index_read(save_dir, &tags, &n));
    for (int i = 0; i < n; i++)
        if (!strcmp(tags[i], tag)) {
            free(tags[i]);
            tags[i] = NULL;
        }
    char **t2 = realloc(tags, (size_t)(n + 1) * sizeof *t2);
    if (!t2) {
        st = zinc_error(ZINC_ERR_NOMEM, "index of %s: out of memory", save_dir);
        goto cleanup;
    }
    tags = t2;
    tags[n++] = strdup(tag);
    ZINC_TRY(index_write(aio, save_dir, tags, n));
    char line[ZINC_CKPT_TAG_MAX + 2];
    int ll = snprintf(line, sizeof line, "%s\n", tag);
    ZINC_TRY(ckpt_write_file_atomic(aio, save_dir, "latest", line, (size_t)ll));

    /* committed; what follows only frees space, so failures are warnings */
    if (replacing && remove_flat_dir(repl) != ZINC_OK) ZINC_WARN("checkpoint: %s", zinc_last_error());
    if (keep_last > 0) {
        int live = 0;
        for (int i = n - 1; i >= 0; i--) {
            if (!tags[i]) continue;
            if (live < keep_last) {
                live++;
                continue;
            }
            char dir[CK_PATH], del[CK_PATH], dn[300];
            snprintf(dn, sizeof dn, "%s.deleting", tags[i]);
            if (ckpt_path_join(dir, save_dir, tags[i]) != ZINC_OK || ckpt_path_join(del, save_dir, dn) != ZINC_OK) continue;
            if (ckpt_path_exists(dir) && !dir_is_ours(dir) && dir_mark(dir) != ZINC_OK) {
                ZINC_WARN("checkpoint: %s; not deleting it", zinc_last_error());
                continue;
            }
            if (ckpt_path_exists(dir) && rename(dir, del) != 0) {
                ZINC_WARN("checkpoint: cannot rename %s for deletion: %s", dir, strerror(errno));
                continue;
            }
            if (remove_flat_dir(del) != ZINC_OK) ZINC_WARN("checkpoint: %s", zinc_last_error());
            free(tags[i]);
            tags[i] = NULL;
        }
        if (index_write(aio, save_dir, tags, n) != ZINC_OK) ZINC_WARN("checkpoint: %s", zinc_last_error());
    }
    st = ZINC_OK;
cleanup:
    tags_free(tags, n);
    return st;
}
