/* tests/unit.h - what the CUnit test programs share: one suite of cases, run.
 * Header-only (a test program is one .c file). The older suites still spell their
 * main out; new ones use this. */
#ifndef ZINC_TESTS_UNIT_H
#define ZINC_TESTS_UNIT_H

#include <stddef.h>

#include <CUnit/Basic.h>

typedef struct unit_case {
    const char *name;
    void (*fn)(void);
} unit_case;

/* Registers the n cases as suite `suite`, runs them (CUnit's verbose report when verbose,
 * silent otherwise: the other ranks of an MPI test) and returns the number of failed
 * assertions (1 when CUnit itself cannot start). */
static inline unsigned unit_run(const char *suite, const unit_case *c, size_t n, int verbose)
{
    if (CU_initialize_registry() != CUE_SUCCESS) return 1;
    CU_pSuite s = CU_add_suite(suite, NULL, NULL);
    for (size_t i = 0; s && i < n; i++)
        if (!CU_add_test(s, c[i].name, c[i].fn)) s = NULL;
    if (!s) {
        CU_cleanup_registry();
        return 1;
    }
    CU_basic_set_mode(verbose ? CU_BRM_VERBOSE : CU_BRM_SILENT);
    CU_basic_run_tests();
    const unsigned failures = CU_get_number_of_failures();
    CU_cleanup_registry();
    return failures;
}

#endif
