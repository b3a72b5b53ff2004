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
    /* the memory cgroup of this process (/proc/self/cgroup: v2 "0::/path", v1
     * "N:memory:/path"): its limit, and its use less the page cache it could drop */
    char v2[512] = "", v1[512] = "", line[512];
    int has_v1 = 0;
    f = fopen("/proc/self/cgroup", "r");
    if (f) {
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = 0;
            const char *c = strchr(line, ':');
            if (!strncmp(line, "0::", 3)) snprintf(v2, sizeof v2, "%s", line + 3);
            else if (c && !strncmp(c + 1, "memory:", 7)) snprintf(v1, sizeof v1, "%s", c + 8), has_v1 = 1;
        }
        fclose(f);
    }
    char dir[1100], p[1200];
    if (has_v1) snprintf(dir, sizeof dir, "/sys/fs/cgroup/memory%s", strcmp(v1, "/") ? v1 : "");
    else snprintf(dir, sizeof dir, "/sys/fs/cgroup%s", strcmp(v2, "/") && v2[0] ? v2 : "");
    snprintf(p, sizeof p, has_v1 ? "%s/memory.limit_in_bytes" : "%s/memory.max", dir);
    uint64_t max = read_u64(p);
    if (max >= (UINT64_C(1) << 60)) max = 0; /* v1's "no limit" */
    snprintf(p, sizeof p, has_v1 ? "%s/memory.usage_in_bytes" : "%s/memory.current", dir);
    uint64_t cur = read_u64(p), cache = 0;
    snprintf(p, sizeof p, "%s/memory.stat", dir);
    if ((f = fopen(p, "r"))) {
        while (fgets(line, sizeof line, f))
            if (sscanf(line, has_v1 ? "total_inactive_file %" SCNu64 : "inactive_file %" SCNu64, &cache) == 1) break;
        fclose(f);
    }
    cur = cur > cache ? cur - cache : 0;
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
