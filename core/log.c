/* log.c - the log sink: one line per message on stderr. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zinc/log.h"

static int g_level = -1; /* -1: not yet read from ZINC_LOG */
static int g_rank = -1;

static int level_from_env(void)
{
    const char *e = getenv("ZINC_LOG");
    if (!e) return ZINC_LOG_INFO;
    if (!strcmp(e, "debug")) return ZINC_LOG_DEBUG;
    if (!strcmp(e, "warn")) return ZINC_LOG_WARN;
    if (!strcmp(e, "error")) return ZINC_LOG_ERROR;
    return ZINC_LOG_INFO;
}

void zinc_log_set_level(zinc_log_level lvl) { g_level = (int)lvl; }

zinc_log_level zinc_log_get_level(void)
{
    if (g_level < 0) g_level = level_from_env();
    return (zinc_log_level)g_level;
}

void zinc_log_set_rank(int rank) { g_rank = rank; }

void zinc_log(zinc_log_level lvl, const char *fmt, ...)
{
    static const char *names[] = {"error", "warning", "info", "debug"};
    if ((int)lvl > (int)zinc_log_get_level()) return;
    char line[2048];
    int off;
    if (g_rank >= 0)
        off = snprintf(line, sizeof line, "zinc[%d] %s: ", g_rank, names[lvl]);
    else
        off = snprintf(line, sizeof line, "zinc %s: ", names[lvl]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + off, sizeof line - (size_t)off, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line); /* one write per line keeps ranks' lines whole */
}
