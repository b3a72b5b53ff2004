/* swap.c - swap files on NVMe laid out in regions of page-aligned parts
 * (zinc/offload.h), and the one function that locates a byte in them.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zinc/offload.h"
#include "zinc/sysmem.h"

struct zinc_swap {
    zinc_aio_file *file;
    char path[600];
    uint64_t ino;
    int lock_fd;       /* the flock held on the file: one job per file */
    int n_regions, n_parts;
    uint64_t *part;    /* bytes of each part of region r (page rounded) */
    uint64_t *base;    /* file offset of region r */
};

static uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

uint64_t zinc_swap_file_bytes(int n_regions, int n_parts, const uint64_t *part_bytes)
{
    uint64_t off = 0;
    for (int r = 0; r < n_regions; r++) off += (uint64_t)n_parts * round_up(part_bytes[r], ZINC_AIO_ALIGN);
    return off;
}

/* n bytes as "12.34 GB" / "5.6 MB" / "700 kB" (decimal units, as df -H). */
static const char *human(char buf[32], uint64_t n)
{
    if (n >= 1000000000u) snprintf(buf, 32, "%.2f GB", n / 1e9);
    else if (n >= 1000000u) snprintf(buf, 32, "%.2f MB", n / 1e6);
    else snprintf(buf, 32, "%.1f kB", n / 1e3);
    return buf;
}

zinc_status zinc_swap_room(const char *key, const char *dir, int rank, const char *const *names, uint64_t bytes,
                           int ranks, uint64_t per_rank)
{
    uint64_t free_b;
    if (!dir || !dir[0] || zinc_fs_free(dir, &free_b, NULL) != ZINC_OK) return ZINC_OK;
    for (int i = 0; names && names[i]; i++) { /* a stale file of this rank is truncated first */
        char p[700];
        struct stat sb;
        snprintf(p, sizeof p, "%s/rank%d/%s", dir, rank, names[i]);
        if (stat(p, &sb) == 0) free_b += (uint64_t)sb.st_blocks * 512u * (uint64_t)ranks;
    }
    if (bytes <= free_b) return ZINC_OK;
    char f[32], b[32], r[32], d[32];
    return zinc_error(ZINC_ERR_CONFIG, "%s: %s has %s free; the planned swap files need %s (%d rank%s on this node x "
                      "%s), %s short; free space there or point it at a larger disk", key, dir, human(f, free_b),
                      human(b, bytes), ranks, ranks == 1 ? "" : "s", human(r, per_rank), human(d, bytes - free_b));
}

uint64_t zinc_swap_part_bytes_f32(size_t n) { return round_up((uint64_t)n * sizeof(float), ZINC_AIO_ALIGN); }

/* Makes <dir>/rank<r>, creates the file inside it with the given size
 * (sparse) under an exclusive flock. */
static zinc_status make_file(zinc_swap *s, const char *key, const char *dir, int rank,
                             const char *name, uint64_t bytes)
{
    struct stat sb;
    if (!dir || !dir[0]) return zinc_error(ZINC_ERR_CONFIG, "%s: not set", key);
    if (stat(dir, &sb) != 0)
        return zinc_error(ZINC_ERR_IO, "%s: %s: %s", key, dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return zinc_error(ZINC_ERR_IO, "%s: %s is not a directory", key, dir);
    char rdir[560];
    snprintf(rdir, sizeof rdir, "%s/rank%d", dir, rank);
    if (mkdir(rdir, 0700) != 0 && errno != EEXIST)
        return zinc_error(ZINC_ERR_IO, "%s: cannot create %s: %s", key, rdir, strerror(errno));
    snprintf(s->path, sizeof s->path, "%s/%s", rdir, name);
    int fd = open(s->path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0)
        return zinc_error(ZINC_ERR_IO, "%s: cannot create %s: %s", key, s->path, strerror(errno));
    /* a second job on the same directory would truncate this one's live state */
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return zinc_error(ZINC_ERR_IO, "%s: %s is in use by another job; give each job its own "
                          "nvme_path", key, s->path);
    }
    int rc = ftruncate(fd, 0) == 0 ? ftruncate(fd, (off_t)bytes) : -1;
    int err = errno;
    if (rc == 0 && fstat(fd, &sb) == 0) s->ino = (uint64_t)sb.st_ino;
    if (rc != 0) {
        close(fd);
        unlink(s->path);
        return zinc_error(ZINC_ERR_IO, "%s: cannot size the swap file to %llu bytes: %s", s->path,
                          (unsigned long long)bytes, strerror(err));
    }
    s->lock_fd = fd;
    return ZINC_OK;
}

zinc_status zinc_swap_create(zinc_aio *aio, const char *key, const char *dir, int rank,
                             const char *name, int n_regions, int n_parts,
                             const uint64_t *part_bytes, zinc_swap **out)
{
    zinc_status st = ZINC_OK;
    *out = NULL;
    if (n_regions < 0 || n_parts < 1)
        return zinc_error(ZINC_ERR_INVALID_ARG, "swap %s: %d regions of %d parts", name, n_regions,
                          n_parts);
    zinc_swap *s = calloc(1, sizeof *s);
    if (s) {
        s->part = calloc((size_t)n_regions + 1, sizeof *s->part);
        s->base = calloc((size_t)n_regions + 1, sizeof *s->base);
    }
    if (!s || !s->part || !s->base) {
        st = zinc_error(ZINC_ERR_NOMEM, "swap file table");
        goto cleanup;
    }
    s->lock_fd = -1;
    s->n_regions = n_regions;
    s->n_parts = n_parts;
    uint64_t off = 0;
    for (int r = 0; r < n_regions; r++) {
        s->part[r] = round_up(part_bytes[r], ZINC_AIO_ALIGN);
        s->base[r] = off;
        off += (uint64_t)n_parts * s->part[r];
    }
    ZINC_TRY(make_file(s, key, dir, rank, name, off));
    ZINC_TRY(zinc_aio_open(aio, s->path, ZINC_AIO_READ | ZINC_AIO_WRITE, &s->file));
    *out = s;
    return ZINC_OK;
cleanup:
    zinc_swap_destroy(s);
    return st;
}

void zinc_swap_destroy(zinc_swap *s)
{
    if (!s) return;
    zinc_aio_close(s->file);
    if (s->lock_fd >= 0) { /* remove only a file this swap created and locked */
        unlink(s->path);
        close(s->lock_fd);
    }
    free(s->part);
    free(s->base);
    free(s);
}

zinc_status zinc_swap_check(const zinc_swap *s)
{
    struct stat sb;
    if (!s) return ZINC_OK;
    if (stat(s->path, &sb) != 0)
        return zinc_error(ZINC_ERR_IO, "swap file %s: %s (removed while the job was running?)",
                          s->path, strerror(errno));
    if ((uint64_t)sb.st_ino != s->ino)
        return zinc_error(ZINC_ERR_IO, "swap file %s was replaced while the job was running",
                          s->path);
    return ZINC_OK;
}

const char *zinc_swap_path(const zinc_swap *s) { return s->path; }
zinc_aio_file *zinc_swap_file(const zinc_swap *s) { return s->file; }

uint64_t zinc_swap_locate(const zinc_swap *s, int region, int part, uint64_t at)
{
    return s->base[region] + (uint64_t)part * s->part[region] + at;
}

zinc_status zinc_swap_io(zinc_swap *s, int region, int part, uint64_t at, void *buf,
                         size_t bytes, int write)
{
    uint64_t off = zinc_swap_locate(s, region, part, at);
    return write ? zinc_aio_pwrite(s->file, buf, bytes, off) : zinc_aio_pread(s->file, buf, bytes, off);
}

zinc_status zinc_swap_io_async(zinc_swap *s, int region, int part, uint64_t at, void *buf,
                               size_t bytes, int write, zinc_aio_req **req)
{
    uint64_t off = zinc_swap_locate(s, region, part, at);
    return write ? zinc_aio_pwrite_async(s->file, buf, bytes, off, req)
                 : zinc_aio_pread_async(s->file, buf, bytes, off, req);
}
