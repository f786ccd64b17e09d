/* The C ABI from C: argument checks, status names, last-error messages, sign and verify, and a
 * real checkpoint and restore of the sample tree through nc_checkpoint/nc_restore. */
#define _GNU_SOURCE
#include <nucleus/checkpoint.h>
#include <nucleus/checkpoint_version.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures, checks;

#define CHECK(cond)                                                                 \
  do {                                                                              \
    ++checks;                                                                       \
    if (!(cond)) {                                                                  \
      ++failures;                                                                   \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, \
              nc_last_error());                                                     \
    }                                                                               \
  } while (0)

static char base[4096];

static void path_of(char *out, size_t size, const char *name) { snprintf(out, size, "%s/%s", base, name); }

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
}

static long count_of(const char *path) {
  FILE *f = fopen(path, "r");
  long n = -1;
  if (f) {
    if (fscanf(f, "%ld", &n) != 1) n = -1;
    fclose(f);
  }
  return n;
}

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

static void test_arguments(void) {
  nc_runtime *rt = (nc_runtime *)1;
  CHECK(nc_runtime_new(NULL) == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "out is NULL") != NULL);
  CHECK(nc_runtime_new_with_criu(NULL, &rt) == NC_E_INVALID);
  CHECK(rt == NULL);
  CHECK(nc_runtime_new_with_criu("/nonexistent/criu", &rt) == NC_E_NOT_FOUND);
  CHECK(rt == NULL);
  CHECK(strlen(nc_last_error()) > 0);
  nc_runtime_free(NULL);
  CHECK(nc_checkpoint(NULL, "id", 1, "/x", 0) == NC_E_INVALID);
  CHECK(nc_restore(NULL, "/x", NULL) == NC_E_INVALID);
  CHECK(nc_sign(NULL) == NC_E_INVALID);
  CHECK(nc_verify("") == NC_E_INVALID);
}

static void test_status_names(void) {
  CHECK(strcmp(nc_status_name(NC_OK), "NC_OK") == 0);
  CHECK(strcmp(nc_status_name(NC_E_INTEGRITY), "NC_E_INTEGRITY") == 0);
  CHECK(strcmp(nc_status_name(NC_E_INTERNAL), "NC_E_INTERNAL") == 0);
  /* The values are ABI: they never change. */
  CHECK(NC_OK == 0 && NC_E_INVALID == 1 && NC_E_PERMISSION == 2 && NC_E_NOT_FOUND == 3 && NC_E_STATE == 4 &&
        NC_E_CRIU == 5 && NC_E_INTEGRITY == 6 && NC_E_IO == 7 && NC_E_KEY == 8 && NC_E_NOMEM == 9 &&
        NC_E_INTERNAL == 10);
}

static void test_options_and_versions(void) {
  nc_options *opts = NULL;
  CHECK(nc_options_new(&opts) == NC_OK);
  CHECK(nc_options_set_tcp_established(opts, 1) == NC_OK);
  CHECK(nc_options_set_manage_cgroups(opts, NC_CGROUP_SOFT) == NC_OK);
  CHECK(nc_options_set_manage_cgroups(opts, (nc_cgroup_mode)42) == NC_E_INVALID);
  CHECK(nc_options_set_log_level(opts, 5) == NC_E_INVALID);
  CHECK(nc_options_add_external(opts, "--exec-cmd") == NC_E_INVALID);
  CHECK(nc_options_set_restore_mode(opts, NC_RESTORE_CHILD) == NC_OK);
  CHECK(nc_options_set_signature_format(opts, NC_SIGNATURE_SEED) == NC_OK);
  CHECK(nc_options_set_signature_format(opts, (nc_signature_format)0) == NC_E_INVALID);
  CHECK(nc_options_set_leave_running(NULL, 1) == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "options are NULL") != NULL);
  nc_options_free(opts);
  nc_options_free(NULL);

  CHECK(strcmp(nc_version_string(), NC_VERSION_STRING) == 0);
  nc_runtime *rt = NULL;
  CHECK(nc_runtime_new(&rt) == NC_OK);
  int major = 0, minor = 0, patch = -1;
  CHECK(nc_criu_version(rt, &major, &minor, &patch) == NC_OK);
  CHECK(major > 4 || (major == 4 && minor >= 1));
  CHECK(patch >= 0);
  CHECK(nc_criu_check(rt) == NC_OK);
  CHECK(nc_criu_version(NULL, &major, NULL, NULL) == NC_E_INVALID);
  nc_runtime_free(rt);
}

static void test_sign_verify(void) {
  char dir[4200], images[4300], file[4400];
  path_of(dir, sizeof dir, "signed");
  snprintf(images, sizeof images, "%s/images", dir);
  snprintf(file, sizeof file, "%s/pages-1.img", images);
  mkdir(dir, 0700);
  mkdir(images, 0700);
  write_text(file, "pages");
  nc_signature_format format = NC_SIGNATURE_CHUNKED;
  CHECK(nc_verify(dir) == NC_E_INTEGRITY); /* unsigned */
  CHECK(nc_signature_format_of(dir, &format) == NC_E_INTEGRITY);
  CHECK(nc_sign_ex(dir, NC_SIGNATURE_CHUNKED, NULL, NULL) == NC_OK);
  CHECK(nc_signature_format_of(dir, &format) == NC_OK && format == NC_SIGNATURE_CHUNKED);
  CHECK(nc_verify(dir) == NC_OK);
  CHECK(nc_sign(dir) == NC_OK); /* the seed's format, as before */
  CHECK(nc_signature_format_of(dir, &format) == NC_OK && format == NC_SIGNATURE_SEED);
  CHECK(nc_verify(dir) == NC_OK);
  CHECK(strcmp(nc_last_error(), "") == 0);
  CHECK(nc_sign_ex(dir, (nc_signature_format)3, NULL, NULL) == NC_E_INVALID);
  CHECK(nc_signature_format_of(dir, NULL) == NC_E_INVALID);
  write_text(file, "PAGES");
  CHECK(nc_verify(dir) == NC_E_INTEGRITY);
  CHECK(strstr(nc_last_error(), "HMAC mismatch") != NULL);
  path_of(dir, sizeof dir, "missing");
  CHECK(nc_verify(dir) == NC_E_NOT_FOUND);
}

static void test_checkpoint_restore(void) {
  const char *counter = getenv("NC_TEST_COUNTER");
  char counter_dir[4200], parent_count[4300], checkpoint[4200];
  path_of(counter_dir, sizeof counter_dir, "counter");
  path_of(checkpoint, sizeof checkpoint, "checkpoint");
  snprintf(parent_count, sizeof parent_count, "%s/parent", counter_dir);
  mkdir(counter_dir, 0700);
  CHECK(counter != NULL);
  if (!counter) return;
  pid_t pid = fork();
  if (pid == 0) {
    execl(counter, counter, counter_dir, (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 500 && count_of(parent_count) < 3; ++i) sleep_ms(20);

  nc_runtime *rt = NULL;
  CHECK(nc_runtime_new(&rt) == NC_OK);
  if (!rt) return;
  CHECK(nc_checkpoint(rt, "capi", pid, checkpoint, 0) == NC_OK);
  nc_signature_format format = NC_SIGNATURE_SEED;
  CHECK(nc_signature_format_of(checkpoint, &format) == NC_OK && format == NC_SIGNATURE_CHUNKED); /* the default */
  sleep_ms(100);
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  long at_dump = count_of(parent_count);
  CHECK(nc_verify(checkpoint) == NC_OK);
  CHECK(nc_checkpoint(rt, "capi", pid, checkpoint, 0) != NC_OK); /* the tree is gone */

  pid_t restored = 0;
  CHECK(nc_restore(rt, checkpoint, &restored) == NC_OK);
  CHECK(restored == pid);
  for (int i = 0; i < 500 && count_of(parent_count) <= at_dump + 3; ++i) sleep_ms(20);
  CHECK(count_of(parent_count) > at_dump + 3);
  kill(-restored, SIGKILL);
  sleep_ms(100);
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  nc_runtime_free(rt);
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)st, (void)type, (void)ftw;
  return remove(path);
}

int main(void) {
  const char *tmp = getenv("NC_TEST_TMPDIR");
  char templ[4096];
  snprintf(templ, sizeof templ, "%s/capi-XXXXXX", tmp && *tmp ? tmp : ".");
  mkdir(tmp && *tmp ? tmp : ".", 0700);
  if (!mkdtemp(templ)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(base, sizeof base, "%s", templ);
  char keys[4200], key[4300];
  path_of(keys, sizeof keys, "keys");
  mkdir(keys, 0700);
  snprintf(key, sizeof key, "%s/checkpoint.key", keys);
  setenv("NUCLEUS_CHECKPOINT_HMAC_KEY_FILE", key, 1);
  prctl(PR_SET_CHILD_SUBREAPER, 1);

  test_arguments();
  test_status_names();
  test_options_and_versions();
  test_sign_verify();
  test_checkpoint_restore();
  nftw(base, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  printf("capi: %d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
