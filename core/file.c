/* file.c - opening user-named files with the type check first (zinc/file.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zinc/file.h"

const char *zinc_file_kind(unsigned mode)
{
    switch (mode & S_IFMT) {
    case S_IFREG: return "a regular file";
    case S_IFDIR: return "a directory";
    case S_IFIFO: return "a named pipe";
    case S_IFCHR: return "a character device";
    case S_IFBLK: return "a block device";
    case S_IFSOCK: return "a socket";
    case S_IFLNK: return "a symbolic link";
    }
    return "an unknown kind of file";
}

zinc_status zinc_open_regular(const char *path, int flags, const char *what, int *fd,
                              long long *size)
{
    *fd = -1;
    if (!what) what = "file";
    /* O_NONBLOCK: open() of a FIFO without a writer would block forever */
    int d;
    do {
        d = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | flags);
    } while (d < 0 && errno == EINTR);
    if (d < 0) return zinc_error(ZINC_ERR_IO, "%s: cannot open %s: %s", path, what, strerror(errno));
    struct stat sb;
    if (fstat(d, &sb) != 0) {
        int err = errno;
        close(d);
        return zinc_error(ZINC_ERR_IO, "%s: cannot stat %s: %s", path, what, strerror(err));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(d);
        return zinc_error(ZINC_ERR_IO, "%s: %s is %s, not a regular file", path, what,
                          zinc_file_kind((unsigned)sb.st_mode));
    }
    int fl = fcntl(d, F_GETFL);
    if (fl < 0 || fcntl(d, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int err = errno;
        close(d);
        return zinc_error(ZINC_ERR_IO, "%s: cannot open %s: %s", path, what, strerror(err));
    }
    *fd = d;
    if (size) *size = (long long)sb.st_size;
    return ZINC_OK;
}

zinc_status zinc_fopen_regular(const char *path, const char *what, FILE **f, long long *size)
{
    int d;
    *f = NULL;
    zinc_status st = zinc_open_regular(path, 0, what, &d, size);
    if (st != ZINC_OK) return st;
    *f = fdopen(d, "rb");
    if (!*f) {
        int err = errno;
        close(d);
        return zinc_error(ZINC_ERR_IO, "%s: cannot open %s: %s", path, what ? what : "file",
                          strerror(err));
    }
    return ZINC_OK;
}

zinc_status zinc_mkdir_p(const char *dir)
{
    char p[4096];
    if (!dir[0]) return zinc_error(ZINC_ERR_INVALID_ARG, "empty directory name");
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        return zinc_error(ZINC_ERR_INVALID_ARG, "path too long: %s", dir);
    for (char *c = p + 1;; c++) {
        if (*c == '/' || *c == '\0') {
            char save = *c;
            *c = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST)
                return zinc_error(ZINC_ERR_IO, "%s: cannot create directory: %s", p, strerror(errno));
            *c = save;
            if (save == '\0') break;
        }
    }
    struct stat sb;
    if (stat(dir, &sb) != 0) return zinc_error(ZINC_ERR_IO, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return zinc_error(ZINC_ERR_IO, "%s is %s, not a directory", dir, zinc_file_kind((unsigned)sb.st_mode));
    return ZINC_OK;
}
