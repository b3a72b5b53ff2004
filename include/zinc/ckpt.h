/* zinc/ckpt.h - sharded checkpoints that speak only in logical tensors.
 *
 * On disk:
 *   save_dir/latest               tag of the newest complete checkpoint (written by rename)
 *   save_dir/index                tags of complete checkpoints, oldest first (for keep_last)
 *   save_dir/<tag>/manifest.json  format version, the tensor table (name, kind, dtype, shape,
 *                                 tp_dim, tp_blocks), every chunk (file, byte offset, length,
 *                                 box and element range in it, crc32c per 1 MiB block) and
 *                                 the caller's meta JSON verbatim under "meta"
 *   save_dir/<tag>/rank-00003.bin raw chunk bytes; every chunk starts 4 KiB aligned
 *
 * A logical tensor is identified by (name, kind): "h.3.attn.c_attn.weight" of kind "param"
 * and of kind "exp_avg" are two tensors. A rank describes what it holds with pieces, in
 * the style of Megatron's ShardedTensor: a box of the tensor's block view and a flattened
 * element range of that box.
 *
 * Block view: the tensor's shape, with dimension tp_dim replaced by (tp_blocks,
 * shape[tp_dim] / tp_blocks) when tp_blocks > 1 (ndim + 1 dimensions), else the shape
 * itself. GPT-2's c_attn.weight (C, 3C), tp_dim 1, tp_blocks 3 (q|k|v) has the view
 * (C, 3, C). A box is start[d] .. start[d] + count[d] in every dimension d of the view; a
 * piece's elements are [offset, offset + n) of its box in the box's own row-major order.
 * Counts all 0 (a {t, offset, n, data} initializer) mean the whole tensor as box, so
 * (offset, n) is then a flat range of the tensor. TP rank r of P holds the box that is
 * whole except start r * s / P, count s / P in the split dimension (s = shape[tp_dim] /
 * tp_blocks: in view (C, 3, C), start (0, 0, r*C/P), count (C, 3, C/P)), and its local
 * row-major slice is that box's row-major order, so a ZeRO flat range [a, z) of the local
 * slice is the piece (box, a, z - a): one piece per rank, however many rows it spans
 * (zinc_ckpt_box_tp makes the box).
 *
 * Save and load only need the pieces to be consistent within one call: both work on the
 * logical elements the pieces stand for, so a checkpoint saved by 4 ranks with one sharding
 * (TP 2 x DP 2, say) loads into 3 ranks with another (TP 1 x DP 3), into TP 4 boxes, or
 * into one rank holding everything. Format version 1 (before boxes: every chunk a flat
 * range of the tensor) still loads.
 *
 * Commit is atomic: ranks write <tag>.partial/, fsync, rank 0 writes the manifest, renames
 * the directory to <tag> and only then points latest at it. A save killed at any point
 * leaves the previous checkpoint (and latest) intact.
 */
#ifndef ZINC_CKPT_H
#define ZINC_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/aio.h"
#include "zinc/comm.h"
#include "zinc/status.h"
#include "zinc/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ZINC_CKPT_FORMAT_VERSION 2    /* 2: boxes; 1 (flat ranges) is still read */
#define ZINC_CKPT_BLOCK_BYTES (1u << 20) /* crc32c granularity within a chunk */
#define ZINC_CKPT_TAG_MAX 200            /* longest tag, [A-Za-z0-9._-], not starting with '.' */
#define ZINC_CKPT_BOX_DIMS (ZINC_MAX_DIMS + 1) /* dimensions of a block view, at most */

/* A logical tensor. */
typedef struct zinc_ckpt_tensor {
    char name[96];           /* "h.3.attn.c_attn.weight" (Hugging Face GPT-2 names) */
    char kind[16];           /* "param" | "master" | "exp_avg" | "exp_avg_sq" (any short string) */
    zinc_dtype dtype;        /* stored dtype (save); wanted dtype (load: converted among f32/bf16/f16) */
    int ndim;
    int64_t shape[ZINC_MAX_DIMS];
    int tp_dim;              /* partition spec: the dimension TP splits (-1: replicated) */
    int tp_blocks;           /* sub-blocks of tp_dim, each split alike (0 or 1: none); > 1 needs
                              * 0 <= tp_dim < ndim and shape[tp_dim] % tp_blocks == 0 */
} zinc_ckpt_tensor;

/* Part of a tensor held by this rank: in memory, or (data NULL) behind the layout's io. */
typedef struct zinc_ckpt_piece {
    int tensor;              /* index into the layout's tensor table */
    int64_t offset, n;       /* elements [offset, offset+n) of the box, in its row-major order */
    void *data;              /* n elements of the tensor's dtype (save: read; load: written);
                              * NULL: the piece moves through the layout's io */
    /* the box over the tensor's block view (see the top of this file): dimensions
     * [0, view ndim) used, the rest 0. All counts 0: the whole tensor (start must be 0). */
    int64_t start[ZINC_CKPT_BOX_DIMS], count[ZINC_CKPT_BOX_DIMS];
} zinc_ckpt_piece;

/* Sets start and count (ZINC_CKPT_BOX_DIMS each) to TP rank tp_rank's box of t when t is
 * split over tp ranks (tp > 1, t->tp_dim >= 0): the block view whole but for the split
 * dimension, start tp_rank * s / tp, count s / tp (s = shape[tp_dim] / tp_blocks).
 * Otherwise (tp <= 1 or replicated) the whole-tensor box (all 0). ZINC_ERR_INVALID_ARG
 * when tp_rank is outside 0..tp-1, the spec is invalid or tp does not divide s. */
zinc_status zinc_ckpt_box_tp(const zinc_ckpt_tensor *t, int tp, int tp_rank, int64_t *start, int64_t *count);

/* Moves elements [first, first+n) of piece (its index in the layout; first relative to the
 * piece's own start: element offset + first of its box) between buf and wherever the piece lives (an NVMe swap file): write 0
 * (save) fills buf, write 1 (load) takes buf. buf holds elements of the tensor's dtype (the
 * stored one on save, the wanted one on load) and is valid only during the call. */
typedef zinc_status (*zinc_ckpt_io_fn)(void *u, int piece, int write, void *buf, int64_t first, int64_t n);

/* What one rank holds. Every array is borrowed for the duration of the call. Ranks may have
 * different tensor tables (a pipeline stage lists only its own tensors); tensors are matched
 * across ranks by (name, kind). */
typedef struct zinc_ckpt_layout {
    const zinc_ckpt_tensor *tensors;
    int n_tensors;
    const zinc_ckpt_piece *pieces;
    int n_pieces;
    /* Pieces with data == NULL move through io instead of memory: on save,
     * io(u, piece, 0, buf, first, n) must fill buf with elements [first, first+n)
     * of that piece (relative to the piece's own start, in the tensor's dtype);
     * on load, io(u, piece, 1, buf, first, n) receives them (already converted to
     * the wanted dtype and crc-checked). Called from the calling thread only, with
     * n at most a few MiB worth; a non-OK status aborts the save/load (agreed
     * across ranks like any other error).
     * Exactly: each such piece's elements are passed once, in ascending first, pieces
     * in layout order; n * (size of buf's dtype) <= 8 MiB. Save: buf is 4 KiB aligned
     * and n * size a multiple of 4 KiB except on a piece's last call. Load: buf is
     * aligned to its dtype's size only. io should set the detail with zinc_error();
     * the save/load returns it with the piece and elements appended. NULL (the
     * default of a {t, n_t, p, n_p} initializer): every piece must have data. */
    zinc_ckpt_io_fn io;
    void *io_u;
} zinc_ckpt_layout;

/* Progress callback: done and total bytes of the current operation. */
typedef void (*zinc_ckpt_progress_fn)(uint64_t done, uint64_t total, void *u);

/* Installs a process-wide progress hook (fn NULL: none, the default) that zinc_ckpt_save
 * and zinc_ckpt_load call on every rank with this rank's bytes done and total: the rank
 * file's bytes written (save) or the stored bytes read (load). Called once with done 0,
 * then as bytes complete, at least min(total / 100, 64 MiB) bytes apart, and once with
 * done == total when the rank's data is through (a save's commit and a load's agreement
 * follow). fn runs on the calling thread and must not call zinc_ckpt_*. Not thread-safe:
 * set it while no save or load runs. */
void zinc_ckpt_set_progress(zinc_ckpt_progress_fn fn, void *u);
/* The hook installed (fn NULL: none), for other loaders that report the same way
 * (zinc_engine_init_from: the bytes of the weights this rank reads, as float32). */
void zinc_ckpt_get_progress(zinc_ckpt_progress_fn *fn, void **u);

/* Collective over world. Saves checkpoint <save_dir>/<tag> (save_dir is created if needed):
 * every rank writes its pieces (one chunk each, 4 KiB aligned, crc32c per 1 MiB block) to
 * <tag>.partial/rank-%05d.bin in parallel and fsyncs it; rank 0 gathers the chunk tables,
 * checks that the pieces of all ranks cover every element of every tensor exactly once
 * (comparing the logical elements that boxes and ranges stand for), writes and fsyncs
 * manifest.json, renames <tag>.partial -> <tag>, fsyncs save_dir, appends tag to save_dir/index
 * and points save_dir/latest at it (latest.tmp + rename + fsync). A complete checkpoint with
 * the same tag is replaced. Every directory zinc creates there carries a marker file
 * (.zinc-checkpoint); stale <x>.partial, <x>.deleting and <x>.replaced directories of killed
 * saves are removed (logged) only when they carry it: others are left alone with one warning.
 *
 * meta_json (may be NULL: "{}") must be valid JSON (integers within int64); it is stored
 * verbatim under "meta" and handed back by zinc_ckpt_load. keep_last > 0 then deletes the
 * oldest complete checkpoints listed in the index beyond the newest keep_last (never the one
 * just written); 0 keeps everything.
 *
 * Every rank returns the same status (errors are agreed with one all-reduce; the detail is
 * the lowest failing rank's): ZINC_ERR_INVALID_ARG for a bad tag, layout or meta (a box
 * outside its tensor's block view, a range beyond its box, an invalid tp_blocks; a gap or
 * overlap between pieces names the tensor and the flat element range of the tensor), ZINC_ERR_IO for a failed
 * write (naming the file), comm errors as returned. On failure the previous checkpoint and
 * latest are intact. */
/* Makes save_dir (with its parents) a directory saves can write into, so a
 * job learns before its first step, not at its first save, that it cannot
 * checkpoint. ZINC_ERR_IO naming the path (a file there, no permission). */
zinc_status zinc_ckpt_prepare_dir(const char *save_dir);

zinc_status zinc_ckpt_save(zinc_comm *world, zinc_aio *aio, const char *save_dir, const char *tag,
                           const zinc_ckpt_layout *mine, const char *meta_json, int keep_last);

/* Collective over world. Loads <save_dir>/<tag> (tag NULL: the tag named by save_dir/latest)
 * into the wanted pieces: each rank reads only the 1 MiB crc blocks that overlap its pieces,
 * checks their crc32c and converts when the stored dtype differs from the wanted tensor's
 * dtype (among f32, bf16, f16; other dtypes must match). Pieces may be any layout (other rank
 * count, other sharding than at save); a piece need not cover a whole tensor.
 *
 * If meta_json_out is not NULL, *meta_json_out receives the meta JSON text exactly as saved
 * (malloc'd, the caller frees it; NULL on failure).
 *
 * Every rank returns the same status: ZINC_ERR_IO (missing latest/checkpoint/rank file, one
 * that is not a regular file (a named pipe is refused, never waited on), read failure) or ZINC_ERR_CORRUPT (unparsable manifest, wanted tensor missing from the
 * checkpoint, shape mismatch, crc mismatch, truncated rank file), each naming the file and,
 * where one is involved, the tensor (also a chunk's box outside the view, counts of another
 * rank, or elements beyond its box); ZINC_ERR_INVALID_ARG for a piece outside its tensor or
 * box; ZINC_ERR_UNSUPPORTED for an impossible dtype conversion or a newer format version
 * (0, negative ones and those never written are ZINC_ERR_CORRUPT; versions 1 and 2 load).
 * The wanted pieces' boxes need not match the saved ones (other TP size, tp_blocks unknown
 * to a version-1 checkpoint): each is taken apart into the tensor's logical runs.
 * Pieces with data NULL are passed to io in ascending first within each piece, pieces in
 * layout order, whatever the saved layout (gathered through one 8 MiB buffer when their
 * elements come from several saved chunks). */
zinc_status zinc_ckpt_load(zinc_comm *world, zinc_aio *aio, const char *save_dir, const char *tag,
                           const zinc_ckpt_layout *want, char **meta_json_out);

/* ---- non-collective helpers (tools, tests) -------------------------------------------- */

/* Elements of t (1 for ndim 0), or -1 when ndim is outside 0..ZINC_MAX_DIMS, a dimension
 * is negative, or the element count or its size in bytes (at t->dtype) does not fit in
 * int64: every size derived from a checked shape is then safe to compute. */
int64_t zinc_ckpt_tensor_numel(const zinc_ckpt_tensor *t);

/* Copies the tag named by save_dir/latest into tag (capacity cap). ZINC_ERR_IO if latest is
 * missing or unreadable, ZINC_ERR_CORRUPT if it does not hold a valid tag. */
zinc_status zinc_ckpt_resolve_latest(const char *save_dir, char *tag, size_t cap);


/* Checks one checkpoint directory completely: manifest, every file's size, every crc.
 * ckpt_dir is a checkpoint (holding manifest.json) or a save_dir (its latest is used).
 * progress (may be NULL) is called as bytes are verified. ZINC_ERR_CORRUPT / ZINC_ERR_IO name
 * the file, the tensor and the byte offset of the first problem. */
zinc_status zinc_ckpt_verify(zinc_aio *aio, const char *ckpt_dir, zinc_ckpt_progress_fn progress,
                             void *u);

/* A checkpoint opened for inspection: the parsed manifest plus open rank files. */
typedef struct zinc_ckpt_reader zinc_ckpt_reader;

/* Opens dir: a checkpoint directory, or a save_dir whose latest is followed. aio is borrowed
 * and must outlive the reader. Fails like zinc_ckpt_load on a missing/unparsable manifest. */
zinc_status zinc_ckpt_reader_open(zinc_aio *aio, const char *dir, zinc_ckpt_reader **out);
/* NULL-safe; closes the rank files. */
void zinc_ckpt_reader_close(zinc_ckpt_reader *r);

/* Checkpoint directory actually opened and its tag (last path component). Owned by r. */
const char *zinc_ckpt_reader_dir(const zinc_ckpt_reader *r);
const char *zinc_ckpt_reader_tag(const zinc_ckpt_reader *r);
/* The meta JSON text as saved. Owned by r. */
const char *zinc_ckpt_reader_meta(const zinc_ckpt_reader *r);

/* Tensor table in manifest order; entries are owned by r (dtype = stored dtype; tp_blocks 0
 * when the checkpoint did not record it: version 1). */
int zinc_ckpt_reader_n_tensors(const zinc_ckpt_reader *r);
const zinc_ckpt_tensor *zinc_ckpt_reader_tensor(const zinc_ckpt_reader *r, int i);
/* Index of tensor (name, kind), or -1. kind NULL matches the first tensor of that name. */
int zinc_ckpt_reader_find(const zinc_ckpt_reader *r, const char *name, const char *kind);
/* Totals over the checkpoint: rank files, chunks, stored bytes (sum of file sizes). */
void zinc_ckpt_reader_stats(const zinc_ckpt_reader *r, int *n_files, int *n_chunks,
                            uint64_t *file_bytes);

/* Reads flat elements [offset, offset+n) of tensor i (row-major over the whole tensor,
 * whatever boxes it was saved in) into dst as dtype (conversion as for load), checking the
 * crc of every block read. */
zinc_status zinc_ckpt_reader_read(zinc_ckpt_reader *r, int i, int64_t offset, int64_t n,
                                  zinc_dtype dtype, void *dst);
/* zinc_ckpt_verify on an open reader. */
zinc_status zinc_ckpt_reader_verify(zinc_ckpt_reader *r, zinc_ckpt_progress_fn progress, void *u);

/* crc32c (Castagnoli) of n bytes, continuing from crc (0 to start): crc32c("123456789") is
 * 0xE3069283. Uses SSE4.2 when the CPU has it. */
uint32_t zinc_crc32c(uint32_t crc, const void *data, size_t n);

#ifdef __cplusplus
}
#endif

#endif
