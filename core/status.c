/* status.c - status names and the thread-local error detail. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "zinc/status.h"

static _Thread_local char tl_detail[1024];

const char *zinc_status_str(zinc_status s)
{
    switch (s) {
    case ZINC_OK: return "ok";
    case ZINC_ERR_INVALID_ARG: return "invalid argument";
    case ZINC_ERR_CONFIG: return "config error";
    case ZINC_ERR_NOMEM: return "out of memory";
    case ZINC_ERR_IO: return "I/O error";
    case ZINC_ERR_CUDA: return "CUDA error";
    case ZINC_ERR_NCCL: return "NCCL error";
    case ZINC_ERR_MPI: return "MPI error";
    case ZINC_ERR_TIMEOUT: return "timeout";
    case ZINC_ERR_REMOTE: return "remote rank failed";
    case ZINC_ERR_CORRUPT: return "corrupt data";
    case ZINC_ERR_UNSUPPORTED: return "unsupported";
    case ZINC_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *zinc_last_error(void)
{
    return tl_detail;
}

zinc_status zinc_error(zinc_status s, const char *fmt, ...)
{
    /* formatted aside first: an argument may be zinc_last_error() itself
     * ("%s: %s", what, zinc_last_error()), which vsnprintf into tl_detail
     * would read while overwriting it */
    char buf[sizeof tl_detail];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(tl_detail, buf, sizeof buf);
    return s;
}

void zinc_error_clear(void)
{
    tl_detail[0] = '\0';
}
