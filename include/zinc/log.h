/* zinc/log.h - the log sink. Lines go to stderr, prefixed with the rank when
 * more than one rank runs. Globals here are the only mutable library globals:
 * the level and the rank prefix. */
#ifndef ZINC_LOG_H
#define ZINC_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum zinc_log_level {
    ZINC_LOG_ERROR = 0,
    ZINC_LOG_WARN,
    ZINC_LOG_INFO,
    ZINC_LOG_DEBUG,
} zinc_log_level;

/* Sets the maximum level printed (default INFO; env ZINC_LOG=debug|info|warn|error). */
void zinc_log_set_level(zinc_log_level lvl);
zinc_log_level zinc_log_get_level(void);

/* Sets the rank shown in the prefix; rank < 0 (the default) shows none. */
void zinc_log_set_rank(int rank);

/* Prints one line "zinc[rank] warning: ..." to stderr if lvl is enabled. */
void zinc_log(zinc_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define ZINC_ERROR(...) zinc_log(ZINC_LOG_ERROR, __VA_ARGS__)
#define ZINC_WARN(...)  zinc_log(ZINC_LOG_WARN, __VA_ARGS__)
#define ZINC_INFO(...)  zinc_log(ZINC_LOG_INFO, __VA_ARGS__)
#define ZINC_DEBUG(...) zinc_log(ZINC_LOG_DEBUG, __VA_ARGS__)

#ifdef __cplusplus
}
#endif

#endif
