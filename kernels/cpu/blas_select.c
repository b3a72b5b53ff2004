/* blas_select.c - OpenBLAS runs the kernels this processor can run.
 *
 * OpenBLAS (DYNAMIC_ARCH) chooses its kernels in its own constructor, from
 * cpuid; a library older than the processor falls back to SSE3 kernels.
 * The constructor below runs after OpenBLAS's (the executable's initializers
 * run after those of the libraries it needs), reads the core OpenBLAS chose
 * and the processor's level, and when the core is below the processor and
 * the user has not chosen one, sets OPENBLAS_CORETYPE and re-executes the
 * program once (/proc/self/exe, same argv and environment, before main). The
 * protocol between the two executions is carried in the environment:
 *   ZINC_BLAS_AUTO_CORE / ZINC_BLAS_AUTO_HOST  zinc set OPENBLAS_CORETYPE to
 *                                      this value on this host (not the user)
 *   ZINC_BLAS_DETECTED                 what OpenBLAS had chosen by itself
 *   ZINC_BLAS_EXECS                    re-executions so far (bounded)
 * See zinc/blas.h for the user-facing rules. */
#include <cpuid.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cblas.h>

#include "zinc/blas.h"

enum { MAX_EXECS = 4 };

static char summary[320] = "OpenBLAS (core not checked)";

/* ------------------------------------------------------------ pure parts */

const char *zinc_isa_name(zinc_isa isa)
{
    switch (isa) {
    case ZINC_ISA_SSE: return "sse";
    case ZINC_ISA_AVX: return "avx";
    case ZINC_ISA_AVX2: return "avx2";
    case ZINC_ISA_AVX512: return "avx512";
    case ZINC_ISA_AVX512_BF16: return "avx512-bf16";
    }
    return "?";
}

/* OpenBLAS's x86-64 core names (driver/others/dynamic.c) by the level their
 * kernels need; every other name (Prescott, Core2, Nehalem, Atom, Opteron,
 * Barcelona, ...) is SSE-level. */
static const struct {
    const char *name;
    zinc_isa isa;
} core_isa[] = {
    {"SapphireRapids", ZINC_ISA_AVX512_BF16}, {"Cooperlake", ZINC_ISA_AVX512_BF16},
    {"SkylakeX", ZINC_ISA_AVX512},            {"Haswell", ZINC_ISA_AVX2},
    {"Zen", ZINC_ISA_AVX2},                   {"Sandybridge", ZINC_ISA_AVX},
    {"Bulldozer", ZINC_ISA_AVX},              {"Piledriver", ZINC_ISA_AVX},
    {"Steamroller", ZINC_ISA_AVX},            {"Excavator", ZINC_ISA_AVX},
};

zinc_isa zinc_blas_core_isa(const char *core)
{
    if (!core)
        return ZINC_ISA_SSE;
    for (size_t i = 0; i < sizeof core_isa / sizeof core_isa[0]; i++)
        if (strcasecmp(core, core_isa[i].name) == 0)
            return core_isa[i].isa;
    return ZINC_ISA_SSE;
}

/* The core zinc asks for at each level. Cooperlake, not SapphireRapids, at
 * the top: it needs no AMX permission from the kernel, and its sgemm is
 * SkylakeX's, which is what zinc's fp32 products use. */
static const char *core_for_isa(zinc_isa isa)
{
    switch (isa) {
    case ZINC_ISA_AVX512_BF16: return "Cooperlake";
    case ZINC_ISA_AVX512: return "SkylakeX";
    case ZINC_ISA_AVX2: return "Haswell";
    case ZINC_ISA_AVX: return "Sandybridge";
    case ZINC_ISA_SSE: return NULL;
    }
    return NULL;
}

const char *zinc_blas_core_wanted(zinc_isa cpu, const char *lib_core)
{
    if (zinc_blas_core_isa(lib_core) >= cpu)
        return NULL;
    return core_for_isa(cpu);
}

/* ------------------------------------------------------------ this processor */

static unsigned long long xgetbv0(void)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

zinc_isa zinc_cpu_isa(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return ZINC_ISA_SSE;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx)
        return ZINC_ISA_SSE;
    const unsigned long long xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) /* the OS saves xmm and ymm */
        return ZINC_ISA_SSE;
    unsigned int b7 = 0, a71 = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d))
        b7 = b;
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d))
        a71 = a;
    const int avx2 = (b7 >> 5) & 1;
    /* AVX-512 F, DQ, CD, BW, VL: what OpenBLAS's SkylakeX kernels use */
    const unsigned int avx512_bits = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);
    const int avx512 = (b7 & avx512_bits) == avx512_bits && (xcr0 & 0xe0) == 0xe0;
    const int bf16 = (a71 >> 5) & 1;
    if (avx512)
        return bf16 ? ZINC_ISA_AVX512_BF16 : ZINC_ISA_AVX512;
    if (avx2 && fma)
        return ZINC_ISA_AVX2;
    return ZINC_ISA_AVX;
}

/* ------------------------------------------------------------ start-up */

const char *zinc_blas_core(void)
{
    const char *c = openblas_get_corename();
    return c ? c : "unknown";
}

const char *zinc_blas_summary(void) { return summary; }

/* "OpenBLAS 0.3.21" from openblas_get_config()'s "OpenBLAS 0.3.21 DYNAMIC_ARCH ..." */
static void library_name(char *buf, size_t cap)
{
    const char *cfg = openblas_get_config();
    snprintf(buf, cap, "%s", cfg ? cfg : "OpenBLAS");
    char *sp = strchr(buf, ' ');
    if (sp && (sp = strchr(sp + 1, ' ')))
        *sp = '\0';
}

static void set_summary(const char *why)
{
    char lib[64];
    library_name(lib, sizeof lib);
    snprintf(summary, sizeof summary, "%s, core %s (%s)", lib, zinc_blas_core(), why);
}

static void unset_protocol(void)
{
    unsetenv("ZINC_BLAS_AUTO_CORE");
    unsetenv("ZINC_BLAS_AUTO_HOST");
    unsetenv("ZINC_BLAS_DETECTED");
    unsetenv("ZINC_BLAS_EXECS");
}

/* Re-executes this program with the environment as it is now; returns only
 * when that is impossible (too many re-executions, or exec failed). */
static void reexec(char **argv)
{
    const char *s = getenv("ZINC_BLAS_EXECS");
    const int n = s ? atoi(s) : 0;
    if (n >= MAX_EXECS || !argv || !argv[0])
        return;
    char buf[16];
    snprintf(buf, sizeof buf, "%d", n + 1);
    setenv("ZINC_BLAS_EXECS", buf, 1);
    fflush(NULL);
    execv("/proc/self/exe", argv);
}

static void hostname(char *buf, size_t cap)
{
    if (gethostname(buf, cap) != 0)
        snprintf(buf, cap, "?");
    buf[cap - 1] = '\0';
}

/* Sets OPENBLAS_CORETYPE to core as zinc's choice and re-executes. */
static void select_core(char **argv, const char *core, const char *detected)
{
    char host[256];
    hostname(host, sizeof host);
    setenv("OPENBLAS_CORETYPE", core, 1);
    setenv("ZINC_BLAS_AUTO_CORE", core, 1);
    setenv("ZINC_BLAS_AUTO_HOST", host, 1);
    setenv("ZINC_BLAS_DETECTED", detected, 1);
    reexec(argv);
    /* still here: the library keeps what it detected; say so, and leave no
     * variable behind that would tell a child otherwise */
    unsetenv("OPENBLAS_CORETYPE");
    unset_protocol();
    char why[160];
    snprintf(why, sizeof why, "OpenBLAS detected it; zinc could not re-execute to select %s",
             core);
    set_summary(why);
}

/* glibc passes argc, argv and envp to the initializers of the executable. */
__attribute__((constructor)) static void blas_autoselect(int argc, char **argv, char **envp)
{
    (void)argc;
    (void)envp;
    const char *lib = zinc_blas_core();
    const zinc_isa cpu = zinc_cpu_isa();
    const char *user = getenv("OPENBLAS_CORETYPE");
    const char *mark = getenv("ZINC_BLAS_AUTO_CORE");
    const char *sim = getenv("ZINC_BLAS_SIMULATE_DETECT");
    const char *off = getenv("ZINC_BLAS_AUTO");
    char why[200], host[256];

    if (off && strcmp(off, "0") == 0) {
        set_summary(user ? "OPENBLAS_CORETYPE, ZINC_BLAS_AUTO=0" : "as detected, ZINC_BLAS_AUTO=0");
        return;
    }
    if (sim && *sim && !user) {
        /* test hook: first load the kernels of a misdetection, for real */
        setenv("OPENBLAS_CORETYPE", sim, 1);
        setenv("ZINC_BLAS_SIMULATING", sim, 1);
        unsetenv("ZINC_BLAS_SIMULATE_DETECT");
        reexec(argv);
        unsetenv("OPENBLAS_CORETYPE");
        unsetenv("ZINC_BLAS_SIMULATING");
        set_summary("as detected; the simulated misdetection could not re-execute");
        return;
    }
    const char *simulating = getenv("ZINC_BLAS_SIMULATING");
    if (user && simulating && strcmp(simulating, user) == 0) {
        /* running as if OpenBLAS had detected `lib` by itself */
        unsetenv("ZINC_BLAS_SIMULATING");
        unsetenv("OPENBLAS_CORETYPE");
        user = NULL;
        mark = NULL;
    }
    if (user && mark && strcmp(user, mark) == 0) {
        /* zinc's choice: made by this program before it re-executed, or
         * inherited from a zinc process (maybe on another host) */
        const char *ahost = getenv("ZINC_BLAS_AUTO_HOST");
        hostname(host, sizeof host);
        if (!ahost || strcmp(ahost, host) != 0) {
            unsetenv("OPENBLAS_CORETYPE"); /* decide on this host */
            unset_protocol();
            reexec(argv);
            set_summary("inherited from another host; could not re-execute to check it");
            return;
        }
        const char *det = getenv("ZINC_BLAS_DETECTED");
        if (strcasecmp(lib, mark) != 0) {
            /* the library does not know that core: try the level below */
            const zinc_isa next = zinc_blas_core_isa(mark) - 1;
            if (next > zinc_blas_core_isa(det) && core_for_isa(next)) {
                select_core(argv, core_for_isa(next), det ? det : lib);
                return;
            }
            snprintf(why, sizeof why, "this OpenBLAS has no core %s for this %s processor", mark,
                     zinc_isa_name(cpu));
            unsetenv("OPENBLAS_CORETYPE");
            unset_protocol();
            set_summary(why);
            return;
        }
        snprintf(why, sizeof why, "selected by zinc: OpenBLAS detected %s on this %s processor",
                 det ? det : "?", zinc_isa_name(cpu));
        unsetenv("ZINC_BLAS_EXECS");
        set_summary(why);
        return;
    }
    if (user) {
        set_summary("OPENBLAS_CORETYPE set by the user");
        return;
    }
    const char *want = zinc_blas_core_wanted(cpu, lib);
    if (!want) {
        unset_protocol();
        snprintf(why, sizeof why, "as detected, matches this %s processor", zinc_isa_name(cpu));
        set_summary(why);
        return;
    }
    select_core(argv, want, lib);
}
