/* test_blas.c - OpenBLAS core selection (zinc/blas.h).
 *
 * The decision is pure and checked on a table of (processor level, core
 * OpenBLAS chose) cases. The processor level zinc reads from cpuid is
 * checked against the kernel's own reading (/proc/cpuinfo flags), and the
 * core running in this very process against that level: this is what makes
 * `make test` fail on a machine where OpenBLAS would run kernels below the
 * processor and zinc did not correct it. (Run without OPENBLAS_CORETYPE;
 * tests/kernels/test_blas_core.sh covers the user's setting and the
 * re-execution itself.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "zinc/blas.h"

static void test_core_isa(void)
{
    CU_ASSERT_EQUAL(zinc_blas_core_isa("Prescott"), ZINC_ISA_SSE);
    CU_ASSERT_EQUAL(zinc_blas_core_isa("Nehalem"), ZINC_ISA_SSE);
    CU_ASSERT_EQUAL(zinc_blas_core_isa("Sandybridge"), ZINC_ISA_AVX);
    CU_ASSERT_EQUAL(zinc_blas_core_isa("Haswell"), ZINC_ISA_AVX2);
    CU_ASSERT_EQUAL(zinc_blas_core_isa("ZEN"), ZINC_ISA_AVX2);
    CU_ASSERT_EQUAL(zinc_blas_core_isa("skylakex"), ZINC_ISA_AVX512);
    CU_ASSERT_EQUAL(zinc_blas_core_isa("Cooperlake"), ZINC_ISA_AVX512_BF16);
    CU_ASSERT_EQUAL(zinc_blas_core_isa("SapphireRapids"), ZINC_ISA_AVX512_BF16);
    CU_ASSERT_EQUAL(zinc_blas_core_isa("NoSuchCore"), ZINC_ISA_SSE);
    CU_ASSERT_EQUAL(zinc_blas_core_isa(NULL), ZINC_ISA_SSE);
}

static void check_wanted(zinc_isa cpu, const char *lib, const char *want)
{
    const char *got = zinc_blas_core_wanted(cpu, lib);
    if (!want) {
        CU_ASSERT_PTR_NULL(got);
    } else {
        CU_ASSERT(got && strcmp(got, want) == 0);
    }
    if ((want == NULL) != (got == NULL) || (want && got && strcmp(want, got)))
        fprintf(stderr, "cpu %s, OpenBLAS %s: wanted %s, got %s\n", zinc_isa_name(cpu), lib,
                want ? want : "(keep)", got ? got : "(keep)");
}

static void test_wanted(void)
{
    /* the defect: Debian 12's 0.3.21 on Intel family 6 model 207 */
    check_wanted(ZINC_ISA_AVX512_BF16, "Prescott", "Cooperlake");
    check_wanted(ZINC_ISA_AVX512_BF16, "SkylakeX", "Cooperlake");
    check_wanted(ZINC_ISA_AVX512_BF16, "Haswell", "Cooperlake");
    check_wanted(ZINC_ISA_AVX512, "Prescott", "SkylakeX");
    check_wanted(ZINC_ISA_AVX512, "Haswell", "SkylakeX");
    check_wanted(ZINC_ISA_AVX2, "Prescott", "Haswell");
    check_wanted(ZINC_ISA_AVX2, "Nehalem", "Haswell");
    check_wanted(ZINC_ISA_AVX2, "Sandybridge", "Haswell");
    check_wanted(ZINC_ISA_AVX, "Core2", "Sandybridge");
    /* detected well: kept, whatever the name */
    check_wanted(ZINC_ISA_AVX512_BF16, "Cooperlake", NULL);
    check_wanted(ZINC_ISA_AVX512_BF16, "SapphireRapids", NULL);
    check_wanted(ZINC_ISA_AVX512, "SkylakeX", NULL);
    check_wanted(ZINC_ISA_AVX2, "Zen", NULL);
    check_wanted(ZINC_ISA_AVX2, "Haswell", NULL);
    check_wanted(ZINC_ISA_SSE, "Prescott", NULL);
    /* never downgraded (a core above the processor is the user's or the
     * library's business, not a misdetection zinc can see) */
    check_wanted(ZINC_ISA_AVX2, "SkylakeX", NULL);
}

/* The level from the kernel's flags: an independent reading of cpuid
 * (and of what the OS enabled: the kernel hides avx512 flags it does not
 * save). */
static int cpuinfo_has(const char *flags, const char *f)
{
    const size_t n = strlen(f);
    for (const char *p = flags; (p = strstr(p, f)); p += n)
        if ((p == flags || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\n' || p[n] == '\0'))
            return 1;
    return 0;
}

static int cpuinfo_isa(void)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return -1;
    static char line[8192];
    int isa = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        const char *fl = strchr(line, ':');
        if (!fl)
            break;
        isa = ZINC_ISA_SSE;
        if (cpuinfo_has(fl, "avx"))
            isa = ZINC_ISA_AVX;
        if (cpuinfo_has(fl, "avx2") && cpuinfo_has(fl, "fma"))
            isa = ZINC_ISA_AVX2;
        if (cpuinfo_has(fl, "avx512f") && cpuinfo_has(fl, "avx512bw") &&
            cpuinfo_has(fl, "avx512vl") && cpuinfo_has(fl, "avx512dq") &&
            cpuinfo_has(fl, "avx512cd"))
            isa = cpuinfo_has(fl, "avx512_bf16") ? ZINC_ISA_AVX512_BF16 : ZINC_ISA_AVX512;
        break;
    }
    fclose(f);
    return isa;
}

static void test_cpu_isa(void)
{
    const int want = cpuinfo_isa();
    CU_ASSERT_FATAL(want >= 0); /* no /proc/cpuinfo flags: this test cannot judge */
    printf("\n  cpuid: %s, /proc/cpuinfo: %s\n", zinc_isa_name(zinc_cpu_isa()),
           zinc_isa_name((zinc_isa)want));
    CU_ASSERT_EQUAL(zinc_cpu_isa(), (zinc_isa)want);
}

/* The kernels running in this process use what the processor has. */
static void test_running_core(void)
{
    printf("\n  %s\n", zinc_blas_summary());
    if (getenv("OPENBLAS_CORETYPE") && !getenv("ZINC_BLAS_AUTO_CORE")) {
        /* a user's choice wins; say so instead of judging it */
        printf("  OPENBLAS_CORETYPE=%s set by the user: kept\n", getenv("OPENBLAS_CORETYPE"));
        CU_ASSERT(strstr(zinc_blas_summary(), "set by the user") != NULL);
        return;
    }
    CU_ASSERT(zinc_blas_core_isa(zinc_blas_core()) >= zinc_cpu_isa());
    CU_ASSERT_PTR_NULL(zinc_blas_core_wanted(zinc_cpu_isa(), zinc_blas_core()));
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("blas", NULL, NULL);
    if (!s || !CU_add_test(s, "core_isa", test_core_isa) ||
        !CU_add_test(s, "wanted", test_wanted) || !CU_add_test(s, "cpu_isa", test_cpu_isa) ||
        !CU_add_test(s, "running_core", test_running_core))
        return 1;
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    const unsigned failed = CU_get_number_of_failures();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
