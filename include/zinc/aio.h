/* zinc/aio.h - the one I/O path for checkpoints and NVMe offload: io_uring
 * with O_DIRECT where the file system supports it, buffered pread/pwrite
 * otherwise.
 *
 * An engine owns intra_op_parallelism worker threads, each with its own
 * ring. A transfer is split into block_size requests; each worker keeps up
 * to queue_depth of them in flight. Short transfers are continued, EINTR and
 * EAGAIN retried; any other failure (ENOSPC, EIO, ...) is ZINC_ERR_IO with a
 * detail naming the file, the offset and the error. Reading past the end of
 * a file is ZINC_ERR_IO ("short read").
 *
 * O_DIRECT needs buffer address, file offset and length aligned to
 * ZINC_AIO_ALIGN. Any transfer is accepted: the aligned middle goes direct,
 * unaligned edges or buffers go through the file's buffered descriptor. Files
 * on a file system without O_DIRECT (tmpfs) fall back to buffered I/O with
 * one warning per engine.
 */
#ifndef ZINC_AIO_H
#define ZINC_AIO_H

#include <stddef.h>
#include <stdint.h>

#include "zinc/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ZINC_AIO_ALIGN 4096

typedef struct zinc_aio zinc_aio;
typedef struct zinc_aio_file zinc_aio_file;
typedef struct zinc_aio_req zinc_aio_req;

typedef struct zinc_aio_opts {
    size_t block_size;        /* bytes per request (DeepSpeed aio.block_size, 1 MiB) */
    int queue_depth;          /* requests in flight per worker (8) */
    int intra_op_parallelism; /* workers, each with its own ring (1) */
    int single_submit;        /* submit requests one at a time (false) */
    int overlap_events;       /* reap completions while submitting (true) */
} zinc_aio_opts;

/* DeepSpeed's defaults. */
void zinc_aio_opts_default(zinc_aio_opts *o);

zinc_status zinc_aio_create(const zinc_aio_opts *o, zinc_aio **out);
/* NULL-safe; waits for requests in flight. */
void zinc_aio_destroy(zinc_aio *a);

enum {
    ZINC_AIO_READ = 1,
    ZINC_AIO_WRITE = 2,     /* READ|WRITE for both */
    ZINC_AIO_CREATE = 4,
    ZINC_AIO_TRUNC = 8,
    ZINC_AIO_BUFFERED = 16, /* never use O_DIRECT */
};

/* Opens path. The file belongs to engine a and is used with its workers. */
zinc_status zinc_aio_open(zinc_aio *a, const char *path, int flags, zinc_aio_file **out);
/* Closes; NULL-safe. Returns ZINC_ERR_IO if close reported an error. */
zinc_status zinc_aio_close(zinc_aio_file *f);
zinc_status zinc_aio_fsync(zinc_aio_file *f);
/* Current size of the file in bytes. */
zinc_status zinc_aio_size(zinc_aio_file *f, uint64_t *bytes);
/* 1 if O_DIRECT is in use for this file. */
int zinc_aio_is_direct(const zinc_aio_file *f);
const char *zinc_aio_path(const zinc_aio_file *f);

/* Blocking transfers of n bytes at offset off. */
zinc_status zinc_aio_pread(zinc_aio_file *f, void *buf, size_t n, uint64_t off);
zinc_status zinc_aio_pwrite(zinc_aio_file *f, const void *buf, size_t n, uint64_t off);

/* Asynchronous transfers: start, then zinc_aio_wait completes the request,
 * frees it and sets *r to NULL. buf must stay valid until then. */
zinc_status zinc_aio_pread_async(zinc_aio_file *f, void *buf, size_t n, uint64_t off,
                                 zinc_aio_req **r);
zinc_status zinc_aio_pwrite_async(zinc_aio_file *f, const void *buf, size_t n, uint64_t off,
                                  zinc_aio_req **r);
zinc_status zinc_aio_wait(zinc_aio_req **r);

/* Buffers aligned to ZINC_AIO_ALIGN (size rounded up), zeroed; NULL on failure. */
void *zinc_aio_buf_alloc(size_t bytes);
void zinc_aio_buf_free(void *p); /* NULL-safe */

#ifdef __cplusplus
}
#endif

#endif
