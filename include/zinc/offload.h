/* zinc/offload.h - swap files on NVMe (ZeRO-Infinity) and the optimizer
 * stream over them, on top of the aio engine (zinc/aio.h).
 *
 * A swap file is laid out in regions (one per flat unit), each of n_parts
 * parts (the optimizer's master, exp_avg and exp_avg_sq; or one part of
 * parameters), every part rounded up to ZINC_AIO_ALIGN bytes so each starts
 * page aligned for O_DIRECT. zinc_swap_locate() is the one place that turns
 * (region, part, byte) into a file offset: the optimizer, the ZeRO-3
 * parameter path and checkpoints all go through it.
 *
 * Files live at <dir>/rank<r>/<name>, are created fresh by each job (sparse,
 * so unwritten state reads as zeros), held under an exclusive flock (a second
 * job on the same dir is refused rather than truncating this one's state),
 * and removed by zinc_swap_destroy. zinc_swap_check() finds a file removed or
 * replaced under the running job. Errors name the config key the directory
 * came from (e.g. "zero_optimization.offload_optimizer.nvme_path").
 */
#ifndef ZINC_OFFLOAD_H
#define ZINC_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/aio.h"
#include "zinc/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where a kind of model state lives (zero_optimization.offload_*.device). */
typedef enum { ZINC_OFFLOAD_NONE = 0, ZINC_OFFLOAD_CPU, ZINC_OFFLOAD_NVME } zinc_offload_device;

typedef struct zinc_swap zinc_swap;

/* Creates <dir>/rank<rank>/<name> holding n_regions regions of n_parts parts;
 * part_bytes[r] is the size of each part of region r (0 for none). key names
 * the config key of dir in errors. The file is opened on aio, which must
 * outlive the swap. */
zinc_status zinc_swap_create(zinc_aio *aio, const char *key, const char *dir, int rank,
                             const char *name, int n_regions, int n_parts,
                             const uint64_t *part_bytes, zinc_swap **out);
/* The size zinc_swap_create gives such a file. */
uint64_t zinc_swap_file_bytes(int n_regions, int n_parts, const uint64_t *part_bytes);
/* Before creating swap files: ZINC_ERR_CONFIG naming key when the file system of dir has
 * no room for `bytes` (what every rank of this node plans there: `ranks` x `per_rank`),
 * the space this rank's stale files `names` (NULL-terminated, in dir/rank<rank>) hold
 * counted as free; ZINC_OK when dir cannot be read (creation then names the error). */
zinc_status zinc_swap_room(const char *key, const char *dir, int rank, const char *const *names, uint64_t bytes,
                           int ranks, uint64_t per_rank);
/* Closes and removes the file (only one this swap created). NULL-safe. */
void zinc_swap_destroy(zinc_swap *s);
/* ZINC_ERR_IO when the file was removed or replaced since creation. */
zinc_status zinc_swap_check(const zinc_swap *s);
const char *zinc_swap_path(const zinc_swap *s);
zinc_aio_file *zinc_swap_file(const zinc_swap *s);
/* File offset of byte `at` of part `part` of region `region`. */
uint64_t zinc_swap_locate(const zinc_swap *s, int region, int part, uint64_t at);
/* bytes at (region, part, at) into / from buf; synchronous, or async with
 * the request in *req (zinc_aio_wait). */
zinc_status zinc_swap_io(zinc_swap *s, int region, int part, uint64_t at, void *buf,
                         size_t bytes, int write);
zinc_status zinc_swap_io_async(zinc_swap *s, int region, int part, uint64_t at, void *buf,
                               size_t bytes, int write, zinc_aio_req **req);
/* Bytes of one part holding n fp32 elements (rounded to ZINC_AIO_ALIGN). */
uint64_t zinc_swap_part_bytes_f32(size_t n);

/* ---- the NVMe optimizer stream (offload/nvme_optimizer.c) ----
 *
 * Runs an update over every sub-group of a 3-part fp32 swap (master, m, v):
 * group i is read ahead while group i-1 is updated (pipeline_read) and
 * written back behind (pipeline_write), in 1 + pipeline_read +
 * pipeline_write rotating buffers of 3 x group_elems floats. */
typedef struct zinc_swap_group {
    int region;   /* the swap region (flat unit) */
    size_t first; /* first fp32 element of the group inside each part */
    size_t n;     /* elements */
} zinc_swap_group;

/* The update of one group: master, m and v hold its n elements. */
typedef zinc_status (*zinc_swap_update_fn)(void *user, const zinc_swap_group *g, float *master,
                                           float *m, float *v);

/* Streams groups [0, n_groups) through update; adds the milliseconds spent
 * waiting on the swap file to *io_wait_ms. */
zinc_status zinc_swap_stream(zinc_swap *s, const zinc_swap_group *groups, size_t n_groups,
                             size_t group_elems, int pipeline_read, int pipeline_write,
                             zinc_swap_update_fn update, void *user, double *io_wait_ms);

#ifdef __cplusplus
}
#endif

#endif
