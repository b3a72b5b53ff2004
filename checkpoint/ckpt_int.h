/* ckpt_int.h - checkpoint internals shared by the checkpoint sources and white-box tests;
 * nothing outside checkpoint/ and tests/ includes it. */
#ifndef ZINC_CKPT_INT_H
#define ZINC_CKPT_INT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "zinc/ckpt.h"

#define CKPT_ALIGN 4096u                  /* chunk start alignment in rank files */
#define CKPT_BLOCK ZINC_CKPT_BLOCK_BYTES  /* crc32c block */
#define CKPT_SEG (8u << 20)               /* staging/transfer segment, a multiple of CKPT_BLOCK */
#define CKPT_INFLIGHT 4                   /* segments in flight per reader/writer */
#define CKPT_READ_WINDOW 16               /* transfers in flight (direct ones need no buffer) */
#define CKPT_PROGRESS_STEP (64ull << 20)  /* progress calls at least this far apart (or 1%) */
#define CK_PATH 4096                      /* longest path a checkpoint builds */

/* crc32c through the portable slice-by-8 path whatever the CPU (tests compare both). */
uint32_t ckpt_crc32c_sw(uint32_t crc, const void *data, size_t n);

/* One chunk of a tensor in a rank file, at byte offset off: elements [bo, bo+n) of its box
 * (start, count over the tensor's block view; counts all 0: the whole tensor, and then bo is
 * the flat element offset, as in every version-1 chunk). eo is where the chunk starts when
 * the tensor's chunks, in the order of their first logical element, are laid end to end:
 * chunks sorted by eo tile [0, numel), and eo == bo for whole-tensor chunks. */
typedef struct ckpt_chunk {
    int file;            /* index into ckpt_manifest.files */
    uint64_t off, bytes; /* bytes == n * dtype size */
    int64_t eo, n;
    int64_t bo;
    int64_t start[ZINC_CKPT_BOX_DIMS], count[ZINC_CKPT_BOX_DIMS];
    uint32_t *crcs;      /* ceil(bytes / CKPT_BLOCK) */
    size_t n_crcs;
} ckpt_chunk;

/* A logical run of a stored tensor: flat elements [lo, lo+n) are elements [cpos, cpos+n)
 * of chunk `chunk` (counted from the chunk's first element). */
typedef struct ckpt_srun {
    int64_t lo, n, cpos;
    int chunk;
} ckpt_srun;

typedef struct ckpt_mtensor {
    zinc_ckpt_tensor t;
    int64_t numel;
    ckpt_chunk *chunks;  /* sorted by eo */
    int n_chunks;
    ckpt_srun *runs;     /* every chunk's runs, sorted by lo, tiling [0, numel) exactly */
    int64_t n_runs;
} ckpt_mtensor;

typedef struct ckpt_file {
    char name[32];       /* "rank-00003.bin" */
    uint64_t bytes;      /* size written (4 KiB padded) */
} ckpt_file;

/* A parsed and validated manifest. */
typedef struct ckpt_manifest {
    char dir[4096];      /* checkpoint directory (for messages and file paths) */
    char tag[256];
    ckpt_file *files;
    int n_files;
    ckpt_mtensor *tensors;
    int n_tensors;
    int n_chunks;
    char *meta;          /* verbatim meta JSON text */
} ckpt_manifest;

/* Parses text (len bytes) of dir/manifest.json into m. ZINC_ERR_CORRUPT naming the file
 * (and tensor) on any syntax or consistency problem. */
zinc_status ckpt_manifest_parse(const char *dir, const char *text, size_t len, ckpt_manifest *m);
void ckpt_manifest_free(ckpt_manifest *m);

/* ---- box.c: boxes over a tensor's block view and their logical runs (pure) ---- */

/* All counts 0: the whole-tensor box. */
int ckpt_box_is_whole(const int64_t *count);
/* 0 when t's tp_blocks makes a block view (<= 1, or dividing shape[tp_dim] with tp_dim a
 * dimension), else -1 with the reason in why. */
int ckpt_view_check(const zinc_ckpt_tensor *t, char *why, size_t cap);
/* t's block view in view[ZINC_CKPT_BOX_DIMS] (the rest 0); returns its dimensions. */
int ckpt_view(const zinc_ckpt_tensor *t, int64_t *view);
/* 0 when the box lies in t's view (dimensions past it 0; all counts 0 with start 0: whole)
 * and [off, off+n) in the box; else -1 with the reason in why. t's view must be valid. */
int ckpt_box_check(const zinc_ckpt_tensor *t, const int64_t *start, const int64_t *count, int64_t off, int64_t n,
                   char *why, size_t cap);
/* Elements of a checked box. */
int64_t ckpt_box_volume(const zinc_ckpt_tensor *t, const int64_t *count);
/* "[0:768, 0:3, 384:768]" for nd dimensions. */
void ckpt_box_str(const int64_t *start, const int64_t *count, int nd, char *buf, size_t cap);
/* fn(u, pos, logical, n): box elements [pos, pos+n) are the tensor's flat elements
 * [logical, logical+n); returns non-zero to stop (and ckpt_box_runs returns it). */
typedef int (*ckpt_run_fn)(void *u, int64_t pos, int64_t logical, int64_t n);
/* Calls fn for each maximal run of elements [off, off+n) of a checked box, in order (pos and
 * logical both ascend). Returns 0, or fn's first non-zero value. */
int ckpt_box_runs(const zinc_ckpt_tensor *t, const int64_t *start, const int64_t *count, int64_t off, int64_t n,
                  ckpt_run_fn fn, void *u);
/* Runs ckpt_box_runs would call fn for (0 when n <= 0). */
int64_t ckpt_box_n_runs(const zinc_ckpt_tensor *t, const int64_t *start, const int64_t *count, int64_t off, int64_t n);
/* Most logical runs the chunks of one checkpoint may stand for: rank 0 refuses to save more
 * (ZINC_ERR_UNSUPPORTED), a manifest with more is refused as corrupt. The parsed manifest
 * keeps them all (32 bytes each: 512 MiB at the limit; GPT-2 1.5B at TP 8 has 7.4 M). */
#define CKPT_MAX_RUNS (1 << 24)
/* The flat element of box element pos (pos inside the checked box). */
int64_t ckpt_box_logical(const zinc_ckpt_tensor *t, const int64_t *start, const int64_t *count, int64_t pos);

/* ---- ckpt.c: what the other files share ---- */

uint64_t ckpt_align_up(uint64_t x, uint64_t a);
void ckpt_last_error_copy(char *buf, size_t cap);
zinc_status ckpt_wait_opt(zinc_aio_req **r);

/* A growing NUL-terminated string; oom set once an allocation failed. */
typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

void ckpt_sb_put(sbuf *s, const char *t, size_t n);
void ckpt_sb_printf(sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ckpt_sb_json_str(sbuf *s, const char *str);

zinc_status ckpt_agree(zinc_comm *w, zinc_status st);

int64_t ckpt_tensor_numel(const zinc_ckpt_tensor *t);
zinc_status ckpt_check_layout(const zinc_ckpt_layout *L, const char *what);
const char *ckpt_dtype_tag(zinc_dtype dt);

/* A progress reporter: calls fn(done, total) when done has advanced by step bytes since the
 * last call, and always at 0 and at total. */
typedef struct ck_progress {
    zinc_ckpt_progress_fn fn;
    void *u;
    uint64_t done, total, step, next;
} ck_progress;

extern zinc_ckpt_progress_fn ckpt_progress_fn; /* zinc_ckpt_set_progress's, for save and load */
extern void *ckpt_progress_u;
void ckpt_progress_start(ck_progress *p, zinc_ckpt_progress_fn fn, void *u, uint64_t total);
void ckpt_progress_add(ck_progress *p, uint64_t n);

zinc_status ckpt_io_failed(zinc_status st, const char *op, int pi, const zinc_ckpt_tensor *t, int64_t first,
                           int64_t n);

/* ---- fsutil.c: paths, small files, directories, tags, latest, index, prepare and commit ---- */

zinc_status ckpt_path_join(char *out, const char *a, const char *b);
int ckpt_path_exists(const char *p);
void ckpt_remove_partial(const char *part, zinc_status st);
zinc_status ckpt_write_file_atomic(zinc_aio *aio, const char *dir, const char *name, const char *data, size_t n);
zinc_status ckpt_read_small_file(const char *path, const char *what, size_t max, char **out, size_t *len);
int ckpt_tag_valid(const char *tag);
zinc_status ckpt_dir_of(const char *save_dir, const char *tag, char *out);
zinc_status ckpt_resolve_dir(const char *dir, char *out);
zinc_status ckpt_save_prepare(const char *save_dir, const char *tag, const char *meta);
zinc_status ckpt_save_commit(zinc_aio *aio, const char *save_dir, const char *tag, int keep_last);

/* ---- manifest.c: rank 0's merge of the chunk tables, the manifest's text ---- */

typedef struct m_chunk {
    int rank;
    uint64_t off, bytes;
    int64_t eo, n;      /* elements [eo, eo+n) of the box */
    int64_t start[ZINC_CKPT_BOX_DIMS], count[ZINC_CKPT_BOX_DIMS]; /* all 0: the whole tensor */
    int64_t first;      /* flat element of the chunk's first element (the manifest's order) */
    json_t *crcs; /* borrowed from the rank's parsed descriptor */
} m_chunk;

typedef struct m_tensor {
    zinc_ckpt_tensor t;
    m_chunk *c;
    int nc, capc;
} m_tensor;

typedef struct m_table {
    m_tensor *t;
    int n, cap;
} m_table;

int ckpt_shape_eq(const zinc_ckpt_tensor *a, const zinc_ckpt_tensor *b);
void ckpt_shape_str(const zinc_ckpt_tensor *t, char *buf, size_t cap);
zinc_status ckpt_merge_rank(m_table *mt, int r, json_t *desc, uint64_t *file_bytes);
zinc_status ckpt_check_coverage(m_table *mt);
char *ckpt_manifest_text(const char *tag, const m_table *mt, const uint64_t *file_bytes, int n_files,
                         const char *meta, size_t *len);

#endif
