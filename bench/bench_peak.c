/* bench_peak - this processor's fp32 FMA peak, the ceiling no CPU training
 * rate can pass: threads x clock x FMA lanes x 2 x FMA pipes.
 *   bench_peak [threads=2] [bursts=200]
 * Prints
 *   "peak threads=T isa=I lanes=L clock_ghz=G fma_pipes=P fma_loop_gflops=F theory_gflops=X"
 * - lanes: fp32 lanes of the widest FMA the processor has and the OS enables
 *   (16 for AVX-512, 8 for AVX2+FMA; zinc_cpu_isa()).
 * - clock: measured, on every thread at once (so all-core turbo, as training
 *   runs): a chain of dependent integer adds retires one per cycle, so adds
 *   per second is the clock. The nominal frequency in /proc/cpuinfo is not
 *   used: turbo runs above it, and a VM may report anything.
 * - fma pipes: full-width FMAs retired per cycle, from a loop of 16 (AVX2:
 *   14) independent FMA chains (enough to cover 4-cycle latency on 2 pipes),
 *   rounded to a whole number: 2 on server Intel cores, 1 on AMD Zen 4 (its
 *   AVX-512 runs on two 256-bit pipes).
 * - fma_loop_gflops: what that loop reached; theory_gflops: the formula.
 * Each figure is the best of many short bursts (about 1 ms, all threads
 * together): on a shared machine a burst no other process interrupted shows
 * the real rate, and a ceiling must not be underestimated. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <immintrin.h>

#include "zinc/blas.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Cycles per second of this thread: 32 dependent adds per iteration. */
static double clock_hz(long iters)
{
    long x = 0, n = iters;
    const double t = now_s();
    __asm__ volatile("1:\n\t"
                     ".rept 32\n\t"
                     "add $1, %0\n\t"
                     ".endr\n\t"
                     "dec %1\n\t"
                     "jnz 1b"
                     : "+r"(x), "+r"(n)
                     :
                     : "cc");
    return 32.0 * (double)iters / (now_s() - t);
}

#define REGS16 "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15"
#define REGS14 "0,1,2,3,4,5,6,7,8,9,10,11,12,13"

/* FLOPs per second of this thread running full-width FMAs back to back: 16
 * independent chains (zmm0-15; 14 for AVX2, ymm0-13), written in assembly
 * so the compiler cannot put the chains through memory. */
__attribute__((target("avx512f"))) static double fma_avx512(long iters)
{
    const float b = 0.9999999f, c = 1e-7f;
    long n = iters;
    const double t = now_s();
    __asm__ volatile("vbroadcastss %[b], %%zmm16\n\t"
                     "vbroadcastss %[c], %%zmm17\n\t"
                     ".irp r," REGS16 "\n\t vmovaps %%zmm17, %%zmm\\r\n\t .endr\n\t"
                     "1:\n\t"
                     ".irp r," REGS16 "\n\t vfmadd132ps %%zmm16, %%zmm17, %%zmm\\r\n\t .endr\n\t"
                     "dec %[n]\n\t"
                     "jnz 1b\n\t"
                     "vzeroupper"
                     : [n] "+r"(n)
                     : [b] "m"(b), [c] "m"(c)
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16",
                       "xmm17", "cc");
    return 2.0 * 16 * 16 * (double)iters / (now_s() - t);
}

__attribute__((target("avx2,fma"))) static double fma_avx2(long iters)
{
    const float b = 0.9999999f, c = 1e-7f;
    long n = iters;
    const double t = now_s();
    __asm__ volatile("vbroadcastss %[b], %%ymm14\n\t"
                     "vbroadcastss %[c], %%ymm15\n\t"
                     ".irp r," REGS14 "\n\t vmovaps %%ymm15, %%ymm\\r\n\t .endr\n\t"
                     "1:\n\t"
                     ".irp r," REGS14 "\n\t vfmadd132ps %%ymm14, %%ymm15, %%ymm\\r\n\t .endr\n\t"
                     "dec %[n]\n\t"
                     "jnz 1b\n\t"
                     "vzeroupper"
                     : [n] "+r"(n)
                     : [b] "m"(b), [c] "m"(c)
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc");
    return 2.0 * 8 * 14 * (double)iters / (now_s() - t);
}

int main(int argc, char **argv)
{
    const int threads = argc > 1 ? atoi(argv[1]) : 2;
    const int bursts = argc > 2 ? atoi(argv[2]) : 200;
    if (threads < 1 || threads > 1024 || bursts < 1 || bursts > 100000) {
        fprintf(stderr, "usage: bench_peak [threads] [bursts]\n");
        return 2;
    }
    const zinc_isa isa = zinc_cpu_isa();
    if (isa < ZINC_ISA_AVX2) {
        fprintf(stderr, "bench_peak: this %s processor has no FMA; no fp32 FMA peak to report\n",
                zinc_isa_name(isa));
        return 1;
    }
    const int lanes = isa >= ZINC_ISA_AVX512 ? 16 : 8;
    double best_hz = 0.0, best_fl = 0.0;
    omp_set_num_threads(threads);
    for (int r = -20; r < bursts; r++) { /* r < 0: warm-up (clocks ramp up) */
        double hz_sum = 0.0, fl_sum = 0.0;
        #pragma omp parallel reduction(+ : hz_sum, fl_sum)
        {
            #pragma omp barrier
            hz_sum += clock_hz(50000);
            #pragma omp barrier
            fl_sum += lanes == 16 ? fma_avx512(50000) : fma_avx2(50000);
        }
        if (r >= 0 && hz_sum / threads > best_hz)
            best_hz = hz_sum / threads;
        if (r >= 0 && fl_sum > best_fl)
            best_fl = fl_sum;
    }
    const double g = best_hz / 1e9, f = best_fl / 1e9;
    double pipes = round(f / threads / (g * lanes * 2.0));
    if (pipes < 1.0)
        pipes = 1.0;
    const double theory = threads * g * lanes * 2.0 * pipes;
    printf("peak threads=%d isa=%s lanes=%d clock_ghz=%.2f fma_pipes=%.0f fma_loop_gflops=%.1f "
           "theory_gflops=%.1f\n",
           threads, zinc_isa_name(isa), lanes, g, pipes, f, theory);
    return 0;
}
