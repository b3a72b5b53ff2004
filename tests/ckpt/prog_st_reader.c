/* prog_st_reader.c - an independent safetensors reader for tests/ckpt/test_zinc_ckpt.sh.
 *
 * Shares no code with zinc's writer or reader (no zinc headers, no jansson): it reads
 * the u64 header length, scans the JSON header with its own small parser and checks what
 * the format requires of a well-formed file from zinc's writer:
 *   - header length a multiple of 8, JSON followed only by spaces;
 *   - every tensor's data_offsets inside the data, end - begin == product(shape) * dtype size;
 *   - tensors tile the data region exactly, without overlap or holes.
 *
 *   prog_st_reader FILE                 prints "header N", "meta KEY VALUE", then one line per
 *                                       tensor in header order: "tensor NAME DTYPE [s0,s1] BEGIN END"
 *   prog_st_reader FILE NAME I...       prints "NAME[I] = VALUE" (as float, %.9g)
 * Exit 1 with one line on stderr on any violation.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXT 4096

typedef struct ten {
    char name[256], dtype[16];
    long long shape[8];
    int ndim;
    long long begin, end;
} ten;

static ten g_t[MAXT];
static int g_nt;
static char g_meta[64][2][256];
static int g_nm;

typedef struct scan {
    const char *p, *end;
} scan;

static void die(const char *msg, const char *detail)
{
    fprintf(stderr, "prog_st_reader: %s%s%s\n", msg, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static void ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\t' || *s->p == '\r')) s->p++;
}

static void expect(scan *s, char c)
{
    ws(s);
    if (s->p >= s->end || *s->p != c) {
        char m[32];
        snprintf(m, sizeof m, "expected '%c'", c);
        die("bad header JSON", m);
    }
    s->p++;
}

static int peek(scan *s, char c)
{
    ws(s);
    return s->p < s->end && *s->p == c;
}

static void str(scan *s, char *out, size_t cap)
{
    size_t n = 0;
    expect(s, '"');
    while (s->p < s->end && *s->p != '"') {
        char c = *s->p++;
        if (c == '\\') {
            if (s->p >= s->end) die("bad header JSON", "escape at end");
            char e = *s->p++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u':
                if (s->end - s->p < 4) die("bad header JSON", "short \\u escape");
                c = (char)strtol((char[]){s->p[0], s->p[1], s->p[2], s->p[3], 0}, NULL, 16);
                s->p += 4;
                break;
            default: c = e; break;
            }
        }
        if (n + 1 < cap) out[n++] = c;
    }
    if (s->p >= s->end) die("bad header JSON", "unterminated string");
    s->p++;
    out[n] = '\0';
}

static long long integer(scan *s)
{
    ws(s);
    const char *b = s->p;
    if (s->p < s->end && *s->p == '-') s->p++;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') s->p++;
    if (s->p == b || (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E'))) die("bad header JSON", "integer expected");
    return strtoll(b, NULL, 10);
}

static void skip_value(scan *s)
{
    char tmp[4096];
    ws(s);
    if (peek(s, '"')) {
        str(s, tmp, sizeof tmp);
    } else if (peek(s, '{') || peek(s, '[')) {
        char close = *s->p == '{' ? '}' : ']';
        int obj = close == '}';
        s->p++;
        if (peek(s, close)) {
            s->p++;
            return;
        }
        for (;;) {
            if (obj) {
                str(s, tmp, sizeof tmp);
                expect(s, ':');
            }
            skip_value(s);
            if (peek(s, ',')) {
                s->p++;
                continue;
            }
            expect(s, close);
            return;
        }
    } else {
        while (s->p < s->end && strchr(",}] \n\t\r", *s->p) == NULL) s->p++;
    }
}

static void tensor(scan *s, ten *t)
{
    char key[64];
    int have = 0;
    expect(s, '{');
    while (!peek(s, '}')) {
        str(s, key, sizeof key);
        expect(s, ':');
        if (!strcmp(key, "dtype")) {
            str(s, t->dtype, sizeof t->dtype);
            have |= 1;
        } else if (!strcmp(key, "shape")) {
            expect(s, '[');
            while (!peek(s, ']')) {
                if (t->ndim == 8) die("too many dims in", t->name);
                t->shape[t->ndim++] = integer(s);
                if (peek(s, ',')) s->p++;
            }
            s->p++;
            have |= 2;
        } else if (!strcmp(key, "data_offsets")) {
            expect(s, '[');
            t->begin = integer(s);
            expect(s, ',');
            t->end = integer(s);
            expect(s, ']');
            have |= 4;
        } else {
            skip_value(s);
        }
        if (peek(s, ',')) s->p++;
    }
    s->p++;
    if (have != 7) die("tensor lacks dtype, shape or data_offsets", t->name);
}

static int dsize(const char *dt)
{
    if (!strcmp(dt, "F32") || !strcmp(dt, "I32")) return 4;
    if (!strcmp(dt, "BF16") || !strcmp(dt, "F16")) return 2;
    if (!strcmp(dt, "F64") || !strcmp(dt, "I64")) return 8;
    if (!strcmp(dt, "U8")) return 1;
    return 0;
}

static float half_to_float(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? (float)m / 1024.0f / 16384.0f : e == 31 ? (m ? NAN : INFINITY) : (1.0f + (float)m / 1024.0f) * (float)ldexp(1.0, e - 15);
    return (h & 0x8000) ? -v : v;
}

static int by_begin(const void *a, const void *b)
{
    const ten *x = *(ten *const *)a, *y = *(ten *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

int main(int argc, char **argv)
{
    if (argc < 2) die("usage: prog_st_reader FILE [NAME I...]", NULL);
    FILE *f = fopen(argv[1], "rb");
    if (!f) die("cannot open", argv[1]);
    fseek(f, 0, SEEK_END);
    long long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char l8[8];
    if (size < 8 || fread(l8, 1, 8, f) != 8) die("file too short", argv[1]);
    unsigned long long hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | l8[i];
    if (hl > (unsigned long long)size - 8) die("header length beyond the file", argv[1]);
    if (hl % 8) die("header length not a multiple of 8", argv[1]);
    char *h = malloc(hl + 1);
    if (!h || fread(h, 1, hl, f) != hl) die("cannot read the header", argv[1]);
    h[hl] = '\0';
    scan s = {h, h + hl};
    expect(&s, '{');
    while (!peek(&s, '}')) {
        char key[256];
        str(&s, key, sizeof key);
        expect(&s, ':');
        if (!strcmp(key, "__metadata__")) {
            expect(&s, '{');
            while (!peek(&s, '}')) {
                if (g_nm == 64) die("too much metadata", NULL);
                str(&s, g_meta[g_nm][0], sizeof g_meta[0][0]);
                expect(&s, ':');
                str(&s, g_meta[g_nm][1], sizeof g_meta[0][1]);
                g_nm++;
                if (peek(&s, ',')) s.p++;
            }
            s.p++;
        } else {
            if (g_nt == MAXT) die("too many tensors", NULL);
            ten *t = &g_t[g_nt++];
            snprintf(t->name, sizeof t->name, "%s", key);
            tensor(&s, t);
        }
        if (peek(&s, ',')) s.p++;
    }
    s.p++;
    for (const char *q = s.p; q < s.end; q++)
        if (*q != ' ') die("header padding is not spaces", argv[1]);
    long long data = size - 8 - (long long)hl;
    ten *order[MAXT];
    for (int i = 0; i < g_nt; i++) {
        ten *t = &g_t[i];
        long long n = 1;
        for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
        if (!dsize(t->dtype)) die("unknown dtype in", t->name);
        if (t->begin < 0 || t->end > data || t->end < t->begin) die("data_offsets out of range in", t->name);
        if (t->end - t->begin != n * dsize(t->dtype)) die("byte size does not match the shape in", t->name);
        order[i] = t;
    }
    qsort(order, (size_t)g_nt, sizeof order[0], by_begin);
    long long next = 0;
    for (int i = 0; i < g_nt; i++) {
        if (order[i]->begin != next) die(order[i]->begin < next ? "overlap at" : "hole before", order[i]->name);
        next = order[i]->end;
    }
    if (next != data) die("data region not exactly covered", argv[1]);

    if (argc == 2) {
        printf("header %llu\n", hl);
        for (int i = 0; i < g_nm; i++) printf("meta %s %s\n", g_meta[i][0], g_meta[i][1]);
        for (int i = 0; i < g_nt; i++) {
            printf("tensor %s %s [", g_t[i].name, g_t[i].dtype);
            for (int d = 0; d < g_t[i].ndim; d++) printf("%s%lld", d ? "," : "", g_t[i].shape[d]);
            printf("] %lld %lld\n", g_t[i].begin, g_t[i].end);
        }
        return 0;
    }
    int k = -1;
    for (int i = 0; i < g_nt; i++)
        if (!strcmp(g_t[i].name, argv[2])) k = i;
    if (k < 0) die("no such tensor", argv[2]);
    for (int a = 3; a < argc; a++) {
        long long idx = atoll(argv[a]);
        int es = dsize(g_t[k].dtype);
        if (idx < 0 || idx * es >= g_t[k].end - g_t[k].begin) die("index out of range", argv[a]);
        unsigned char b[8] = {0};
        fseek(f, (long)(8 + (long long)hl + g_t[k].begin + idx * es), SEEK_SET);
        if (fread(b, 1, (size_t)es, f) != (size_t)es) die("short read", argv[1]);
        float v;
        if (!strcmp(g_t[k].dtype, "F32")) {
            uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
            memcpy(&v, &u, 4);
        } else if (!strcmp(g_t[k].dtype, "BF16")) {
            uint32_t u = ((uint32_t)b[0] | (uint32_t)b[1] << 8) << 16;
            memcpy(&v, &u, 4);
        } else if (!strcmp(g_t[k].dtype, "F16")) {
            v = half_to_float((uint16_t)(b[0] | b[1] << 8));
        } else {
            die("values only for F32, BF16, F16", g_t[k].dtype);
        }
        printf("%s[%lld] = %.9g\n", argv[2], idx, v);
    }
    fclose(f);
    free(h);
    return 0;
}
