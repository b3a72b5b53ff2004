/* zinc/sysmem.h - what this machine has: host memory and the free space of a file system,
 * for the plans that must fit in them (the memory estimator, the swap files). */
#ifndef ZINC_SYSMEM_H
#define ZINC_SYSMEM_H

#include <stdint.h>

#include "zinc/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Host memory this process may still take (/proc/meminfo's MemAvailable, capped by the
 * cgroup's memory.max less its memory.current when a limit is set) and the machine's
 * total. 0 for both where they cannot be read. */
void zinc_host_mem(uint64_t *avail, uint64_t *total);

/* Bytes this process has read from and written to storage (/proc/self/io's read_bytes and
 * write_bytes: what reached the block layer); 0 where not available. */
void zinc_proc_io(uint64_t *read_bytes, uint64_t *write_bytes);

/* Bytes an unprivileged writer may still take on the file system holding path, and its
 * device id (to tell two paths on one file system apart). ZINC_ERR_IO naming the path. */
zinc_status zinc_fs_free(const char *path, uint64_t *free_bytes, uint64_t *dev_id);

#ifdef __cplusplus
}
#endif

#endif
