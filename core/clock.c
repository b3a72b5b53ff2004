/* clock.c - the one clock (zinc/clock.h). */
#include <time.h>

#include "zinc/clock.h"

double zinc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}
