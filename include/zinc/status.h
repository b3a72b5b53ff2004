/* zinc/status.h - one status type for the whole library, plus a thread-local
 * detail string that says what failed, where, and what to do.
 *
 * Every fallible function returns zinc_status. On failure it has recorded a
 * one-line detail retrievable with zinc_last_error() on the same thread. */
#ifndef ZINC_STATUS_H
#define ZINC_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum zinc_status {
    ZINC_OK = 0,
    ZINC_ERR_INVALID_ARG,
    ZINC_ERR_CONFIG,
    ZINC_ERR_NOMEM,
    ZINC_ERR_IO,
    ZINC_ERR_CUDA,
    ZINC_ERR_NCCL,
    ZINC_ERR_MPI,
    ZINC_ERR_TIMEOUT,
    ZINC_ERR_REMOTE,
    ZINC_ERR_CORRUPT,
    ZINC_ERR_UNSUPPORTED,
    ZINC_ERR_INTERNAL,
} zinc_status;

/* Short static name of a status ("config error"). Never NULL. */
const char *zinc_status_str(zinc_status s);

/* Detail of the last failure recorded on this thread ("" if none). The
 * returned pointer stays valid until the next zinc call on this thread. */
const char *zinc_last_error(void);

/* Records a printf-style detail for status s on this thread and returns s,
 * so callers can write `return zinc_error(ZINC_ERR_IO, "%s: %s", path, ...)`. */
zinc_status zinc_error(zinc_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Clears the detail string of this thread. */
void zinc_error_clear(void);

/* Evaluates a zinc_status expression; on failure jumps to the function's
 * `cleanup` label with `st` set. Requires a local `zinc_status st`. */
#define ZINC_TRY(expr)                                                        \
    do {                                                                      \
        st = (expr);                                                          \
        if (st != ZINC_OK) goto cleanup;                                      \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
