/* zinc/clock.h - the one clock: monotonic milliseconds (timers, rates,
 * timeouts; never wall-clock dates). */
#ifndef ZINC_CLOCK_H
#define ZINC_CLOCK_H

#ifdef __cplusplus
extern "C" {
#endif

double zinc_now_ms(void);

#ifdef __cplusplus
}
#endif

#endif
