/* lib/wordset: sets of words from a text of lines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wordset.h"

static void test_lines_comments_and_case(void **state)
{
    (void)state;
    static const char text[] = "# a comment line is not a word\nAlpha\n\nbeta\r\nGamma\nalpha\n#delta\nlast";
    crm_wordset_t s;
    assert_int_equal(crm_wordset_init(&s, text, sizeof(text) - 1), 0);
    assert_int_equal(s.count, 4); /* alpha (twice), beta, gamma, last */
    assert_true(crm_wordset_has(&s, "alpha", 5));
    assert_true(crm_wordset_has(&s, "ALPHA", 5));
    assert_true(crm_wordset_has(&s, "Beta", 4)); /* CRLF line endings */
    assert_true(crm_wordset_has(&s, "gamma", 5));
    assert_true(crm_wordset_has(&s, "last", 4));     /* no final newline */
    assert_true(crm_wordset_has(&s, "alphabet", 5)); /* length-delimited: the first 5 bytes */
    assert_false(crm_wordset_has(&s, "alph", 4));
    assert_false(crm_wordset_has(&s, "alphas", 6));
    assert_false(crm_wordset_has(&s, "delta", 5));
    assert_false(crm_wordset_has(&s, "#delta", 6));
    assert_false(crm_wordset_has(&s, "", 0));
    assert_false(crm_wordset_has(&s, "# a comment line is not a word", 30));
    crm_wordset_dispose(&s);
    assert_false(crm_wordset_has(&s, "alpha", 5)); /* disposed: empty */
    crm_wordset_dispose(&s);                       /* twice is harmless */
}

static void test_many_words(void **state)
{
    (void)state;
    enum { N = 50000 };
    char *text = malloc(N * 12);
    size_t len = 0;
    for (int i = 0; i < N; ++i)
        len += (size_t)sprintf(text + len, "w%d\n", i * 7);
    crm_wordset_t s;
    assert_int_equal(crm_wordset_init(&s, text, len), 0);
    free(text); /* the set keeps its own copy */
    assert_int_equal(s.count, N);
    char w[16];
    for (int i = 0; i < N * 7; ++i) {
        int n = sprintf(w, "W%d", i);
        if (crm_wordset_has(&s, w, (size_t)n) != (i % 7 == 0))
            fail_msg("%s", w);
    }
    crm_wordset_dispose(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_comments_and_case),
        cmocka_unit_test(test_many_words),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
