/* sysmem.c - host memory and file-system space (zinc/sysmem.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "zinc/sysmem.h"

/* The first number in file path, or 0 (also for "max"). */
static uint64_t read_u64(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    uint64_t v = 0;
    if (fscanf(f, "%" SCNu64, &v) != 1) v = 0;
    fclose(f);
    return v;
}

void zinc_host_mem(uint64_t *avail, uint64_t *total)
{
    *avail = *total = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            uint64_t kb;
            if (sscanf(line, "MemAvailable: %" SCNu64 " kB", &kb) == 1) *avail = kb * 1024;
            else if (sscanf(line, "MemTotal: %" SCNu64 " kB", &kb) == 1) *total = kb * 1024;
        }
        fclose(f);
    }
    const uint64_t max = read_u64("/sys/fs/cgroup/memory.max"), cur = read_u64("/sys/fs/cgroup/memory.current");
    if (max > 0) {
        const uint64_t left = max > cur ? max - cur : 0;
        if (*avail == 0 || left < *avail) *avail = left;
        if (*total == 0 || max < *total) *total = max;
    }
}

void zinc_proc_io(uint64_t *read_bytes, uint64_t *write_bytes)
{
    *read_bytes = *write_bytes = 0;
    FILE *f = fopen("/proc/self/io", "r");
    if (!f) return;
    char k[64];
    unsigned long long v;
    while (fscanf(f, "%63[^:]: %llu\n", k, &v) == 2) {
        if (!strcmp(k, "read_bytes")) *read_bytes = v;
        if (!strcmp(k, "write_bytes")) *write_bytes = v;
    }
    fclose(f);
}

zinc_status zinc_fs_free(const char *path, uint64_t *free_bytes, uint64_t *dev_id)
{
    struct statvfs v;
    struct stat sb;
    if (statvfs(path, &v) != 0 || stat(path, &sb) != 0)
        return zinc_error(ZINC_ERR_IO, "%s: %s", path, strerror(errno));
    *free_bytes = (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
    if (dev_id) *dev_id = (uint64_t)sb.st_dev;
    return ZINC_OK;
}
