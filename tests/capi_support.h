/* What the C tests share: CHECK and its counters, a sleep, reaping as a child subreaper, and a
 * private folder under $NC_TEST_TMPDIR with its own key, removed at the end. */
#ifndef NC_TESTS_CAPI_SUPPORT_H
#define NC_TESTS_CAPI_SUPPORT_H

#include <nucleus/checkpoint.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

static int failures, checks;

#define CHECK(cond)                                                                                   \
  do {                                                                                                \
    ++checks;                                                                                         \
    if (!(cond)) {                                                                                    \
      ++failures;                                                                                     \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond,        \
              nc_last_error());                                                                       \
    }                                                                                                 \
  } while (0)

static char base[4096];

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

/* As a child subreaper this process reaps the dumped and restored trees at once. */
static void reap(void) {
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

/* base = a new 0700 folder NAME-XXXXXX under $NC_TEST_TMPDIR, with the key file in base/keys;
 * this process becomes a child subreaper. 0 on success. */
static int enter_test_folder(const char *name) {
  const char *tmp = getenv("NC_TEST_TMPDIR");
  const char *root = tmp && *tmp ? tmp : ".";
  mkdir(root, 0755);
  snprintf(base, sizeof base, "%s/%s-XXXXXX", root, name);
  if (!mkdtemp(base)) {
    perror("mkdtemp");
    return 1;
  }
  char keys[4200], key[4300];
  snprintf(keys, sizeof keys, "%s/keys", base);
  mkdir(keys, 0700);
  snprintf(key, sizeof key, "%s/checkpoint.key", keys);
  setenv("NUCLEUS_CHECKPOINT_HMAC_KEY_FILE", key, 1);
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  return 0;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)st, (void)type, (void)ftw;
  return remove(path);
}

/* Removes base, prints "NAME: N checks, M failed" and returns the exit code. */
static int leave_test_folder(const char *name) {
  nftw(base, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  printf("%s: %d checks, %d failed\n", name, checks, failures);
  return failures == 0 ? 0 : 1;
}

#endif
