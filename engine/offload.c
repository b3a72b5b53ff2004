/* offload.c - optimizer state and ZeRO-3 parameter shards in swap files on
 * NVMe (ZeRO-Infinity), through the aio engine.
 *
 * Files: <nvme_path>/rank<r>/optimizer.swp holds, per unit, the fp32 master
 * weights, exp_avg and exp_avg_sq of this rank's opt range, each part 4 KiB
 * aligned; <nvme_path>/rank<r>/params.swp holds the storage-dtype shard of
 * every sharded unit. Both are created fresh by each job (sparse, so the
 * moments start as zeros), removed at the end, and checked before each step:
 * a swap file removed or replaced under the running job is an error rather
 * than silent use of a deleted file.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_int.h"
#include "zinc/log.h"

static uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

int offload_param_on_nvme(const zinc_engine *e, const engine_unit *u)
{
    return e->param_nvme && u->sharded;
}

uint64_t offload_part_bytes(const engine_unit *u)
{
    return round_up((uint64_t)u->opt_n * sizeof(float), ZINC_AIO_ALIGN);
}

/* Makes <dir>/rank<r>, creates path inside it with the given size (sparse). */
static zinc_status make_swap(const zinc_engine *e, const char *key, const char *dir,
                             const char *name, uint64_t bytes, char *path, size_t cap,
                             uint64_t *ino, int *lock_fd)
{
    struct stat sb;
    if (!dir[0])
        return zinc_error(ZINC_ERR_CONFIG, "zero_optimization.%s.nvme_path: not set", key);
    if (stat(dir, &sb) != 0)
        return zinc_error(ZINC_ERR_IO, "zero_optimization.%s.nvme_path: %s: %s", key, dir,
                          strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return zinc_error(ZINC_ERR_IO, "zero_optimization.%s.nvme_path: %s is not a directory",
                          key, dir);
    char rdir[560];
    snprintf(rdir, sizeof rdir, "%s/rank%d", dir, zinc_comm_rank(e->world));
    if (mkdir(rdir, 0700) != 0 && errno != EEXIST)
        return zinc_error(ZINC_ERR_IO, "zero_optimization.%s.nvme_path: cannot create %s: %s",
                          key, rdir, strerror(errno));
    snprintf(path, cap, "%s/%s", rdir, name);
    int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0)
        return zinc_error(ZINC_ERR_IO, "zero_optimization.%s.nvme_path: cannot create %s: %s",
                          key, path, strerror(errno));
    /* a second job on the same nvme_path would truncate this one's live state */
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return zinc_error(ZINC_ERR_IO, "zero_optimization.%s.nvme_path: %s is in use by another "
                          "job; give each job its own nvme_path", key, path);
    }
    int rc = ftruncate(fd, 0) == 0 ? ftruncate(fd, (off_t)bytes) : -1;
    int err = errno;
    if (rc == 0 && fstat(fd, &sb) == 0) *ino = (uint64_t)sb.st_ino;
    if (rc != 0) {
        close(fd);
        unlink(path);
        return zinc_error(ZINC_ERR_IO, "%s: cannot size the swap file to %llu bytes: %s", path,
                          (unsigned long long)bytes, strerror(err));
    }
    *lock_fd = fd;
    return ZINC_OK;
}

zinc_status offload_open(zinc_engine *e)
{
    zinc_status st = ZINC_OK;
    const zinc_config *c = &e->cfg;
    zinc_aio_opts ao;
    zinc_aio_opts_default(&ao);
    ao.block_size = (size_t)c->aio.block_size;
    ao.queue_depth = (int)c->aio.queue_depth;
    ao.intra_op_parallelism = (int)c->aio.intra_op_parallelism;
    ao.single_submit = c->aio.single_submit;
    ao.overlap_events = c->aio.overlap_events;
    ZINC_TRY(zinc_aio_create(&ao, &e->aio));
    if (e->opt_nvme) {
        uint64_t off = 0;
        for (int l = 0; l < e->n_layers; l++) {
            e->units[l].swap_off = off;
            off += 3 * offload_part_bytes(&e->units[l]);
        }
        ZINC_TRY(make_swap(e, "offload_optimizer", c->zero.offload_optimizer.nvme_path,
                           "optimizer.swp", off, e->opt_swap_path, sizeof e->opt_swap_path,
                           &e->opt_ino, &e->opt_lock_fd));
        ZINC_TRY(zinc_aio_open(e->aio, e->opt_swap_path, ZINC_AIO_READ | ZINC_AIO_WRITE,
                               &e->opt_swap));
    }
    if (e->param_nvme) {
        uint64_t off = 0;
        for (int l = 0; l < e->n_layers; l++) {
            engine_unit *u = &e->units[l];
            u->pswap_off = off;
            if (offload_param_on_nvme(e, u))
                off += round_up((uint64_t)u->shard * e->psz, ZINC_AIO_ALIGN);
        }
        ZINC_TRY(make_swap(e, "offload_param", c->zero.offload_param.nvme_path, "params.swp", off,
                           e->param_swap_path, sizeof e->param_swap_path, &e->param_ino,
                           &e->param_lock_fd));
        ZINC_TRY(zinc_aio_open(e->aio, e->param_swap_path, ZINC_AIO_READ | ZINC_AIO_WRITE,
                               &e->param_swap));
    }
cleanup:
    return st;
}

void offload_close(zinc_engine *e)
{
    zinc_aio_close(e->opt_swap);
    zinc_aio_close(e->param_swap);
    /* remove only files this job created and locked */
    if (e->opt_lock_fd > 0) {
        unlink(e->opt_swap_path);
        close(e->opt_lock_fd);
    }
    if (e->param_lock_fd > 0) {
        unlink(e->param_swap_path);
        close(e->param_lock_fd);
    }
    e->opt_lock_fd = e->param_lock_fd = 0;
    e->opt_swap = e->param_swap = NULL;
    zinc_aio_destroy(e->aio);
    e->aio = NULL;
}

static zinc_status check_one(const char *path, uint64_t ino)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return zinc_error(ZINC_ERR_IO, "swap file %s: %s (removed while the job was running?)",
                          path, strerror(errno));
    if ((uint64_t)sb.st_ino != ino)
        return zinc_error(ZINC_ERR_IO, "swap file %s was replaced while the job was running", path);
    return ZINC_OK;
}

zinc_status offload_check(zinc_engine *e)
{
    zinc_status st = ZINC_OK;
    if (e->opt_swap) st = check_one(e->opt_swap_path, e->opt_ino);
    if (st == ZINC_OK && e->param_swap) st = check_one(e->param_swap_path, e->param_ino);
    return st;
}

zinc_status offload_opt_io(zinc_engine *e, const engine_unit *u, size_t a, size_t n, float *buf,
                           size_t stride, int write, zinc_aio_req **reqs, int *n_reqs)
{
    uint64_t part = offload_part_bytes(u);
    for (int k = 0; k < 3; k++) {
        uint64_t off = u->swap_off + (uint64_t)k * part + (uint64_t)a * sizeof(float);
        float *b = buf + (size_t)k * stride;
        zinc_status st = write ? zinc_aio_pwrite_async(e->opt_swap, b, n * sizeof(float), off,
                                                       &reqs[*n_reqs])
                               : zinc_aio_pread_async(e->opt_swap, b, n * sizeof(float), off,
                                                      &reqs[*n_reqs]);
        if (st != ZINC_OK) return st;
        (*n_reqs)++;
    }
    return ZINC_OK;
}
