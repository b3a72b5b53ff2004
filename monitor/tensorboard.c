/* tensorboard.c - TensorBoard event files without TensorFlow or protobuf.
 *
 * A file is a sequence of TFRecords: u64 length (little-endian), u32 masked crc32c of those
 * 8 bytes, the record, u32 masked crc32c of the record; mask(c) = ((c >> 15) | (c << 17)) +
 * 0xa282ead8. Each record is a tensorflow.Event message, written here field by field:
 *   Event      1 wall_time double, 2 step int64, 3 file_version string, 5 summary Summary,
 *              6 session_log SessionLog
 *   Summary    1 value Value (repeated)
 *   Value      1 tag string, 2 simple_value float
 *   SessionLog 1 status enum (START = 1)
 * Records accumulate in memory and go to the file whole at tb_flush. File names sort in
 * the order the files were made (tb_stamp), which is the order TensorBoard reads them.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "monitor_int.h"
#include "zinc/ckpt.h"
#include "zinc/file.h"

struct tb_writer {
    FILE *f;
    char path[4096];
    unsigned char *buf; /* framed records not yet written */
    size_t n, cap;
};

typedef struct pb {
    unsigned char b[1024];
    size_t n;
    int overflow;
} pb;

static void pb_byte(pb *p, unsigned v)
{
    if (p->n < sizeof p->b) p->b[p->n++] = (unsigned char)v;
    else p->overflow = 1;
}

static void pb_varint(pb *p, uint64_t v)
{
    do {
        pb_byte(p, (unsigned)(v & 0x7f) | (v > 0x7f ? 0x80u : 0u));
        v >>= 7;
    } while (v);
}

static void pb_bytes(pb *p, unsigned field, const void *data, size_t n)
{
    pb_varint(p, (uint64_t)field << 3 | 2u);
    pb_varint(p, n);
    for (size_t i = 0; i < n; i++) pb_byte(p, ((const unsigned char *)data)[i]);
}

static void pb_fixed(pb *p, unsigned field, unsigned wire, uint64_t v, int bytes)
{
    pb_varint(p, (uint64_t)field << 3 | wire);
    for (int i = 0; i < bytes; i++) pb_byte(p, (unsigned)(v >> (8 * i)) & 0xffu);
}

static void pb_double(pb *p, unsigned field, double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    pb_fixed(p, field, 1, u, 8);
}

static void pb_float(pb *p, unsigned field, float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    pb_fixed(p, field, 5, u, 4);
}

static uint32_t masked_crc(const void *data, size_t n)
{
    uint32_t c = zinc_crc32c(0, data, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static void put_le(unsigned char *d, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) d[i] = (unsigned char)(v >> (8 * i));
}

/* frames one record into the buffer */
static zinc_status tb_record(tb_writer *w, const pb *p)
{
    if (p->overflow) return zinc_error(ZINC_ERR_INVALID_ARG, "tensorboard: a record past %zu bytes (a tag too long?)",
                                       sizeof p->b);
    size_t need = w->n + 16 + p->n;
    if (need > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < need) cap *= 2;
        unsigned char *b = realloc(w->buf, cap);
        if (!b) return zinc_error(ZINC_ERR_NOMEM, "tensorboard: %zu bytes of records", cap);
        w->buf = b;
        w->cap = cap;
    }
    unsigned char *d = w->buf + w->n;
    put_le(d, p->n, 8);
    put_le(d + 8, masked_crc(d, 8), 4);
    memcpy(d + 12, p->b, p->n);
    put_le(d + 12 + p->n, masked_crc(p->b, p->n), 4);
    w->n = need;
    return ZINC_OK;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* TensorBoard reads a folder's event files in name order: a new file's time stamp is past
 * every existing one's (a run resumed within the same second still sorts after it) */
static long long tb_stamp(const char *dir, double now)
{
    long long t = (long long)now;
    DIR *d = opendir(dir);
    if (!d) return t;
    const char *pre = "events.out.tfevents.";
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, pre, strlen(pre)) != 0) continue;
        long long x = strtoll(e->d_name + strlen(pre), NULL, 10);
        if (x >= t) t = x + 1;
    }
    closedir(d);
    return t;
}

zinc_status tb_open(const char *dir, const char *what, int64_t purge_step, tb_writer **out)
{
    *out = NULL;
    zinc_status st = zinc_mkdir_p(dir);
    if (st != ZINC_OK) return zinc_error(st, "%s: %s", what, zinc_last_error());
    tb_writer *w = calloc(1, sizeof *w);
    if (!w) return zinc_error(ZINC_ERR_NOMEM, "%s", what);
    char host[256] = "localhost";
    if (gethostname(host, sizeof host - 1) != 0) snprintf(host, sizeof host, "localhost");
    double now = wall_now();
    if (snprintf(w->path, sizeof w->path, "%s/events.out.tfevents.%lld.%s.%d.0", dir, tb_stamp(dir, now), host,
                 (int)getpid()) >= (int)sizeof w->path) {
        free(w);
        return zinc_error(ZINC_ERR_INVALID_ARG, "%s: the folder's name is too long: %s", what, dir);
    }
    w->f = fopen(w->path, "wb");
    if (!w->f) {
        st = zinc_error(ZINC_ERR_IO, "%s: cannot create %s: %s", what, w->path, strerror(errno));
        free(w);
        return st;
    }
    pb p = {.n = 0};
    pb_double(&p, 1, now);
    pb_bytes(&p, 3, "brain.Event:2", 13);
    st = tb_record(w, &p);
    if (st == ZINC_OK && purge_step >= 0) {
        pb s = {.n = 0}, e = {.n = 0};
        pb_varint(&s, 1u << 3 | 0u); /* status = START */
        pb_varint(&s, 1);
        pb_double(&e, 1, now);
        pb_varint(&e, 2u << 3 | 0u);
        pb_varint(&e, (uint64_t)purge_step);
        pb_bytes(&e, 6, s.b, s.n);
        st = tb_record(w, &e);
    }
    if (st == ZINC_OK) st = tb_flush(w);
    if (st != ZINC_OK) {
        tb_discard(w);
        return st;
    }
    *out = w;
    return ZINC_OK;
}

zinc_status tb_scalar(tb_writer *w, const char *tag, float value, int64_t step, double wall_time)
{
    pb v = {.n = 0}, s = {.n = 0}, e = {.n = 0};
    pb_bytes(&v, 1, tag, strlen(tag));
    pb_float(&v, 2, value);
    pb_bytes(&s, 1, v.b, v.n);
    pb_double(&e, 1, wall_time > 0 ? wall_time : wall_now());
    pb_varint(&e, 2u << 3 | 0u);
    pb_varint(&e, (uint64_t)step);
    pb_bytes(&e, 5, s.b, s.n);
    if (v.overflow || s.overflow) e.overflow = 1;
    return tb_record(w, &e);
}

zinc_status tb_flush(tb_writer *w)
{
    if (w->n && fwrite(w->buf, 1, w->n, w->f) != w->n) {
        w->n = 0;
        return zinc_error(ZINC_ERR_IO, "tensorboard %s: write failed: %s", w->path, strerror(errno));
    }
    w->n = 0;
    if (fflush(w->f) != 0)
        return zinc_error(ZINC_ERR_IO, "tensorboard %s: write failed: %s", w->path, strerror(errno));
    return ZINC_OK;
}

const char *tb_path(const tb_writer *w) { return w ? w->path : ""; }

void tb_discard(tb_writer *w)
{
    if (!w) return;
    if (w->f) fclose(w->f);
    w->f = NULL;
    unlink(w->path);
    tb_close(w);
}

void tb_close(tb_writer *w)
{
    if (!w) return;
    if (w->f) {
        (void)tb_flush(w);
        fclose(w->f);
    }
    free(w->buf);
    free(w);
}
