/* zinc/file.h - opening the files a user names, safely.
 *
 * Every file zinc reads because a config, a flag or a checkpoint names it
 * (token shards, text, init_from, manifests, rank files, `latest`, hostfiles)
 * is opened through zinc_open_regular: a named pipe would block open() and a
 * device file (/dev/zero) would stream forever, so the path is opened with
 * O_NONBLOCK | O_NOCTTY, checked with fstat, and refused unless it is a
 * regular file, before a single byte is read. The detail names the path,
 * what it is for and what it is ("a named pipe", "a character device",
 * "a directory", ...).
 */
#ifndef ZINC_FILE_H
#define ZINC_FILE_H

#include <stdio.h>

#include "zinc/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Opens path read-only (flags: extra open flags such as O_CLOEXEC or
 * O_DIRECT; O_NONBLOCK is used for the open and cleared afterwards) and
 * checks that it is a regular file. what names the file's role in errors
 * ("token shard", "checkpoint manifest"). On success *fd is the open
 * descriptor and, when size is not NULL, *size its length in bytes.
 * ZINC_ERR_IO: cannot open ("PATH: cannot open WHAT: No such file ...") or
 * not a regular file ("PATH: WHAT is a named pipe, not a regular file"). */
zinc_status zinc_open_regular(const char *path, int flags, const char *what, int *fd,
                              long long *size);

/* The same as a stdio stream opened "rb" (or "r"). */
zinc_status zinc_fopen_regular(const char *path, const char *what, FILE **f, long long *size);

/* What kind of file a stat mode is: "a regular file", "a directory",
 * "a named pipe", "a character device", "a block device", "a socket",
 * "a symbolic link", "an unknown kind of file". */
const char *zinc_file_kind(unsigned mode);

/* mkdir -p: creates dir and its missing parents (0755); ZINC_ERR_IO naming the part that
 * cannot be made, or dir when it exists but is not a directory. */
zinc_status zinc_mkdir_p(const char *dir);

#ifdef __cplusplus
}
#endif

#endif
