/* csv.c - DeepSpeed's csv_monitor files: DIR/<tag with '/' and ' ' as '_'>.csv, a header
 * "step,<last component of the tag>" and one "step,value" row per write. At open, every
 * such file in DIR (a .csv whose first line starts "step,") loses its rows past the resumed
 * step — all of them in a fresh run — whether or not this run writes its tag again: they
 * belong to steps the checkpoint does not hold. Each tag's file is opened at its first
 * write, its rows appended after the rest. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "monitor_int.h"
#include "zinc/file.h"

#define CSV_MAX_TAGS 64

typedef struct csv_file {
    char tag[128];
    char path[4096];
    FILE *f;
} csv_file;

struct csv_writer {
    char dir[3584];
    char what[64];
    int64_t resume_step;
    csv_file files[CSV_MAX_TAGS];
    int n;
};

/* Keeps the header and the rows up to w->resume_step of the csv_monitor file at path;
 * a file that is not one (its first line does not start "step,") is left alone. */
static zinc_status csv_cut(const csv_writer *w, const char *path)
{
    FILE *in = fopen(path, "r");
    if (!in) return errno == ENOENT ? ZINC_OK : zinc_error(ZINC_ERR_IO, "%s: cannot read %s: %s", w->what, path,
                                                           strerror(errno));
    char line[512];
    if (!fgets(line, sizeof line, in) || strncmp(line, "step,", 5) != 0) {
        fclose(in);
        return ZINC_OK;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *o = fopen(tmp, "w");
    if (!o) {
        fclose(in);
        return zinc_error(ZINC_ERR_IO, "%s: cannot write %s: %s", w->what, tmp, strerror(errno));
    }
    fputs(line, o);
    while (fgets(line, sizeof line, in)) {
        char *end;
        long long step = strtoll(line, &end, 10);
        if (end != line && *end == ',' && step <= w->resume_step) fputs(line, o);
    }
    fclose(in);
    int bad = fflush(o) != 0;
    if (fclose(o) != 0 || bad || rename(tmp, path) != 0) {
        zinc_status st = zinc_error(ZINC_ERR_IO, "%s: cannot rewrite %s: %s", w->what, path, strerror(errno));
        remove(tmp);
        return st;
    }
    return ZINC_OK;
}

/* csv_cut on every .csv in w->dir */
static zinc_status csv_cut_all(const csv_writer *w)
{
    DIR *dir = opendir(w->dir);
    if (!dir) return zinc_error(ZINC_ERR_IO, "%s: cannot read %s: %s", w->what, w->dir, strerror(errno));
    zinc_status st = ZINC_OK;
    struct dirent *de;
    while (st == ZINC_OK && (de = readdir(dir))) {
        size_t n = strlen(de->d_name);
        if (n < 5 || strcmp(de->d_name + n - 4, ".csv") != 0) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", w->dir, de->d_name);
        st = csv_cut(w, path);
    }
    closedir(dir);
    return st;
}

zinc_status csv_open(const char *dir, const char *what, int64_t resume_step, csv_writer **out)
{
    *out = NULL;
    csv_writer *w = calloc(1, sizeof *w);
    if (!w) return zinc_error(ZINC_ERR_NOMEM, "%s", what);
    if (snprintf(w->dir, sizeof w->dir, "%s", dir) >= (int)sizeof w->dir) {
        free(w);
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s: the folder's name is too long: %s", what, dir);
    }
    snprintf(w->what, sizeof w->what, "%s", what);
    w->resume_step = resume_step;
    zinc_status st = zinc_mkdir_p(dir);
    if (st != ZINC_OK) {
        free(w);
        return zinc_error(st, "%s: %s", what, zinc_last_error());
    }
    st = csv_cut_all(w);
    if (st != ZINC_OK) {
        free(w);
        return st;
    }
    *out = w;
    return ZINC_OK;
}

static zinc_status csv_file_for(csv_writer *w, const char *tag, csv_file **out)
{
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->files[i].tag, tag)) {
            *out = &w->files[i];
            return ZINC_OK;
        }
    if (w->n == CSV_MAX_TAGS || strlen(tag) >= sizeof w->files[0].tag)
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s: more than %d tags or a tag past 127 bytes (%s)", w->what,
                          CSV_MAX_TAGS, tag);
    csv_file *c = &w->files[w->n];
    snprintf(c->tag, sizeof c->tag, "%s", tag);
    char name[128];
    size_t k = 0;
    for (const char *p = tag; *p; p++) name[k++] = *p == '/' || *p == ' ' ? '_' : *p;
    name[k] = '\0';
    char path[sizeof c->path];
    snprintf(path, sizeof path, "%s/%s.csv", w->dir, name);
    memcpy(c->path, path, sizeof path);
    long long size = 0;
    FILE *probe = fopen(c->path, "r");
    if (probe) {
        fseek(probe, 0, SEEK_END);
        size = ftell(probe);
        fclose(probe);
    }
    int append = w->resume_step >= 0 && size > 0; /* cut at open */
    c->f = fopen(c->path, append ? "a" : "w");
    if (!c->f) return zinc_error(ZINC_ERR_IO, "%s: cannot open %s: %s", w->what, c->path, strerror(errno));
    if (!append) {
        const char *last = strrchr(tag, '/');
        fprintf(c->f, "step,%s\n", last ? last + 1 : tag);
    }
    w->n++;
    *out = c;
    return ZINC_OK;
}

zinc_status csv_scalar(csv_writer *w, const char *tag, double value, int64_t step)
{
    csv_file *c = NULL;
    MON_TRY(csv_file_for(w, tag, &c));
    if (fprintf(c->f, "%lld,%.9g\n", (long long)step, value) < 0)
        return zinc_error(ZINC_ERR_IO, "%s %s: write failed: %s", w->what, c->path, strerror(errno));
    return ZINC_OK;
}

zinc_status csv_flush(csv_writer *w)
{
    for (int i = 0; i < w->n; i++)
        if (fflush(w->files[i].f) != 0)
            return zinc_error(ZINC_ERR_IO, "%s %s: write failed: %s", w->what, w->files[i].path, strerror(errno));
    return ZINC_OK;
}

void csv_close(csv_writer *w)
{
    if (!w) return;
    for (int i = 0; i < w->n; i++) fclose(w->files[i].f);
    free(w);
}
