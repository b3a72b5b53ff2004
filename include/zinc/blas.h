/* zinc/blas.h - which OpenBLAS kernels the CPU ops run, and the choice zinc
 * makes for the user.
 *
 * A DYNAMIC_ARCH OpenBLAS picks its kernels ("core") from cpuid when it is
 * loaded. A library older than the processor does not know it and falls
 * back to generic SSE3 kernels ("Prescott"): Debian 12's 0.3.21 on Intel
 * family 6 model 207 runs sgemm at a quarter of the machine's speed. Every
 * program linked with libzinc therefore checks, once at start-up (an ELF
 * constructor, which runs after OpenBLAS's own), whether the core OpenBLAS
 * selected uses less of the instruction set than the processor has; if so
 * and the user has not set OPENBLAS_CORETYPE, it sets OPENBLAS_CORETYPE to
 * the matching core and re-executes itself once (before main, so before MPI
 * or any thread starts), and OpenBLAS loads with the right kernels.
 *
 *  - A user's OPENBLAS_CORETYPE always wins; ZINC_BLAS_AUTO=0 turns the
 *    check off.
 *  - The variable zinc sets is marked (ZINC_BLAS_AUTO_CORE holds the same
 *    value), so a process that inherits it from another zinc process knows
 *    it was zinc's choice, not the user's, and checks it against its own
 *    processor.
 *  - ZINC_BLAS_SIMULATE_DETECT=CORE is a test hook: the program first runs
 *    as if OpenBLAS had detected CORE (it really loads those kernels), so
 *    the correction can be tested on a machine OpenBLAS detects well.
 */
#ifndef ZINC_BLAS_H
#define ZINC_BLAS_H

#ifdef __cplusplus
extern "C" {
#endif

/* Instruction-set levels that decide which OpenBLAS kernels fit. */
typedef enum zinc_isa {
    ZINC_ISA_SSE = 0,     /* SSE3 and below: Prescott, Core2, Nehalem, Opteron, ... */
    ZINC_ISA_AVX,         /* AVX: Sandybridge, Bulldozer, Piledriver, ... */
    ZINC_ISA_AVX2,        /* AVX2 + FMA: Haswell, Zen */
    ZINC_ISA_AVX512,      /* AVX-512 F/BW/VL/DQ/CD: SkylakeX */
    ZINC_ISA_AVX512_BF16, /* + AVX512_BF16: Cooperlake, SapphireRapids */
} zinc_isa;

/* This processor's level from cpuid, counting a vector width only when the
 * OS saves its registers (XCR0). */
zinc_isa zinc_cpu_isa(void);
/* "sse", "avx", "avx2", "avx512", "avx512-bf16". Static storage. */
const char *zinc_isa_name(zinc_isa isa);
/* The level an OpenBLAS core name needs (case-insensitive; an unknown name
 * counts as ZINC_ISA_SSE). */
zinc_isa zinc_blas_core_isa(const char *core);
/* The core zinc selects on a processor at level cpu when OpenBLAS chose
 * lib_core: NULL when lib_core already uses what the processor has (or
 * more: never downgraded), else the core of cpu's level ("Cooperlake",
 * "SkylakeX", "Haswell", "Sandybridge"). Pure. Static storage. */
const char *zinc_blas_core_wanted(zinc_isa cpu, const char *lib_core);

/* The core OpenBLAS runs now (openblas_get_corename). Static storage. */
const char *zinc_blas_core(void);
/* One line for start-up banners: library, core in use and why, e.g.
 * "OpenBLAS 0.3.21, core Cooperlake (selected by zinc: OpenBLAS detected
 * Prescott on an avx512-bf16 processor)". Static storage, never NULL. */
const char *zinc_blas_summary(void);

#ifdef __cplusplus
}
#endif
#endif
