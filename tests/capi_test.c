/* The C ABI from C: argument checks, status names, last-error messages and nc_error objects (16
 * threads failing at once included), sign and verify, CRIU's own failures at dump and restore,
 * and a real checkpoint and restore of the sample tree through nc_checkpoint/nc_restore. */
#define _GNU_SOURCE
#include <nucleus/checkpoint.h>
#include <nucleus/checkpoint_version.h>

#include "capi_support.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>


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
  CHECK(strcmp(nc_status_name(NC_E_UNCONFIRMED), "NC_E_UNCONFIRMED") == 0 && NC_E_UNCONFIRMED == 12);
}

/* Messages are fit to print: a path holding a bidi override (U+202E), a C1 control, an escape
 * sequence and a byte that is not UTF-8 comes back escaped, the backslash doubled, in the nc_error
 * and nc_last_error() alike. */
static void test_message_escaping(void) {
  char hostile[4200];
  path_of(hostile, sizeof hostile, "gone-\xe2\x80\xae-\xc2\x9b-\x1b[2J-\xff-\\");
  nc_error *err = NULL;
  CHECK(nc_error_new(&err) == NC_OK);
  CHECK(nc_verify_e(hostile, err) == NC_E_NOT_FOUND);
  const char *message = nc_error_message(err);
  CHECK(strstr(message, "gone-\\u202e-\\u009b-\\x1b[2J-\\xff-\\\\") != NULL);
  CHECK(strstr(message, "\xe2\x80\xae") == NULL && strstr(message, "\xc2\x9b") == NULL && strchr(message, 0x1b) == NULL);
  CHECK(strcmp(message, nc_last_error()) == 0);
  nc_error_free(err);
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

/* Every container setter: a NULL handle, bad values (naming CRIU's option), good values. */
static void test_container_options(void) {
  nc_options *opts = NULL;
  CHECK(nc_options_new(&opts) == NC_OK);

  CHECK(nc_options_set_root(NULL, "/rootfs") == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "nc_options_set_root: options are NULL") != NULL);
  CHECK(nc_options_add_inherit_fd(NULL, 0, "stdin") == NC_E_INVALID);
  CHECK(nc_options_add_join_ns(NULL, "net:/run/netns/a") == NC_E_INVALID);
  CHECK(nc_options_add_empty_ns(NULL, "net") == NC_E_INVALID);
  CHECK(nc_options_set_network_lock(NULL, NC_NETWORK_LOCK_SKIP) == NC_E_INVALID);
  CHECK(nc_options_add_cgroup_root(NULL, "/a") == NC_E_INVALID);
  CHECK(nc_options_set_cgroup_yard(NULL, "/a") == NC_E_INVALID);
  CHECK(nc_options_set_cgroup_props(NULL, "a") == NC_E_INVALID);
  CHECK(nc_options_set_freeze_cgroup(NULL, "/a") == NC_E_INVALID);
  CHECK(nc_options_set_lsm_profile(NULL, "apparmor:a") == NC_E_INVALID);
  CHECK(nc_options_set_lsm_mount_context(NULL, "a") == NC_E_INVALID);
  CHECK(nc_options_set_skip_in_flight(NULL, 1) == NC_E_INVALID);
  CHECK(nc_options_set_link_remap(NULL, 1) == NC_E_INVALID);
  CHECK(nc_options_set_ghost_limit(NULL, 1) == NC_E_INVALID);
  CHECK(nc_options_set_ghost_fiemap(NULL, 1) == NC_E_INVALID);
  CHECK(nc_options_set_evasive_devices(NULL, 1) == NC_E_INVALID);
  CHECK(nc_options_set_file_validation(NULL, "filesize") == NC_E_INVALID);
  CHECK(nc_options_set_detect_container(NULL, 0) == NC_E_INVALID);
  CHECK(nc_options_set_use_default_config(NULL, 1) == NC_E_INVALID);
  CHECK(nc_options_add_annotation(NULL, "a", "b") == NC_E_INVALID);
  CHECK(nc_options_add_runtime_file(NULL, "a", "b", 1) == NC_E_INVALID);

  CHECK(nc_options_set_root(opts, "rootfs") == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "--root") != NULL && strstr(nc_last_error(), "absolute") != NULL);
  CHECK(nc_options_set_root(opts, "") == NC_E_INVALID);
  CHECK(nc_options_set_root(opts, "/var/lib/c/rootfs") == NC_OK);
  CHECK(nc_options_set_root(opts, NULL) == NC_OK); /* back to the recorded rootfs */

  int pipe_fds[2];
  CHECK(pipe(pipe_fds) == 0);
  close(pipe_fds[1]);
  CHECK(nc_options_add_inherit_fd(opts, pipe_fds[1], "stdout") == NC_E_INVALID); /* closed */
  CHECK(strstr(nc_last_error(), "not open") != NULL);
  CHECK(nc_options_add_inherit_fd(opts, -1, "stdout") == NC_E_INVALID);
  CHECK(nc_options_add_inherit_fd(opts, pipe_fds[0], NULL) == NC_E_INVALID);
  CHECK(nc_options_add_inherit_fd(opts, pipe_fds[0], "bad\nkey") == NC_E_INVALID);
  CHECK(nc_options_add_inherit_fd(opts, pipe_fds[0], "stdin") == NC_OK);
  close(pipe_fds[0]);

  CHECK(nc_options_add_join_ns(opts, "pid:1") == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "--join-ns") != NULL);
  CHECK(nc_options_add_join_ns(opts, NULL) == NC_E_INVALID);
  CHECK(nc_options_add_join_ns(opts, "net:/run/netns/pod") == NC_OK);
  CHECK(nc_options_add_empty_ns(opts, "ipc") == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "--empty-ns") != NULL);
  CHECK(nc_options_add_empty_ns(opts, "net") == NC_OK);
  CHECK(nc_options_set_network_lock(opts, (nc_network_lock)4) == NC_E_INVALID);
  CHECK(nc_options_set_network_lock(opts, (nc_network_lock)-1) == NC_E_INVALID);
  CHECK(NC_NETWORK_LOCK_DEFAULT == 0 && NC_NETWORK_LOCK_IPTABLES == 1 && NC_NETWORK_LOCK_NFTABLES == 2 &&
        NC_NETWORK_LOCK_SKIP == 3);
  CHECK(nc_options_set_network_lock(opts, NC_NETWORK_LOCK_NFTABLES) == NC_OK);
  CHECK(nc_options_add_cgroup_root(opts, "pods") == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "--cgroup-root") != NULL);
  CHECK(nc_options_add_cgroup_root(opts, "memory:/pods/c") == NC_OK);
  CHECK(nc_options_set_cgroup_yard(opts, "yard") == NC_E_INVALID);
  CHECK(nc_options_set_cgroup_yard(opts, "/run/yard") == NC_OK);
  CHECK(nc_options_set_cgroup_props(opts, "a:\n--config=/tmp/x") == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "--cgroup-props") != NULL);
  CHECK(nc_options_set_cgroup_props(opts, "\"cpu\":\n  \"strategy\": \"replace\"\n") == NC_OK);
  CHECK(nc_options_set_freeze_cgroup(opts, "-x") == NC_E_INVALID);
  CHECK(nc_options_set_freeze_cgroup(opts, "/sys/fs/cgroup/pods/c") == NC_OK);
  CHECK(nc_options_set_lsm_profile(opts, "smack:x") == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "--lsm-profile") != NULL);
  CHECK(nc_options_set_lsm_profile(opts, "apparmor:container-default") == NC_OK);
  CHECK(nc_options_set_lsm_mount_context(opts, "a\nb") == NC_E_INVALID);
  CHECK(nc_options_set_lsm_mount_context(opts, "system_u:object_r:container_file_t:s0") == NC_OK);
  CHECK(nc_options_set_ghost_limit(opts, ~0ULL) == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "--ghost-limit") != NULL);
  CHECK(nc_options_set_ghost_limit(opts, 1ULL << 20) == NC_OK);
  CHECK(nc_options_set_file_validation(opts, "md5") == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "filesize or buildid") != NULL);
  CHECK(nc_options_set_file_validation(opts, "buildid") == NC_OK);
  CHECK(nc_options_set_file_validation(opts, NULL) == NC_OK);
  CHECK(nc_options_set_skip_in_flight(opts, 1) == NC_OK);
  CHECK(nc_options_set_link_remap(opts, 1) == NC_OK);
  CHECK(nc_options_set_ghost_fiemap(opts, 1) == NC_OK);
  CHECK(nc_options_set_evasive_devices(opts, 1) == NC_OK);
  CHECK(nc_options_set_detect_container(opts, 0) == NC_OK);
  CHECK(nc_options_set_use_default_config(opts, 1) == NC_OK);

  static char big[NC_RUNTIME_FILE_MAX + 1];
  char long_name[NC_RUNTIME_FILE_NAME_MAX + 2];
  memset(long_name, 'n', sizeof long_name - 1);
  long_name[sizeof long_name - 1] = '\0';
  memset(big, 'v', sizeof big - 1);
  big[NC_ANNOTATION_VALUE_MAX + 1] = '\0';
  CHECK(nc_options_add_annotation(opts, "", "v") == NC_E_INVALID);
  CHECK(nc_options_add_annotation(opts, NULL, "v") == NC_E_INVALID);
  CHECK(nc_options_add_annotation(opts, "a", NULL) == NC_E_INVALID);
  CHECK(nc_options_add_annotation(opts, "a", big) == NC_E_INVALID); /* one byte too many */
  CHECK(nc_options_add_annotation(opts, "a", "\xff") == NC_E_INVALID);
  CHECK(nc_options_add_annotation(opts, "io.example.owner", "") == NC_OK);
  CHECK(nc_options_add_annotation(opts, "io.example.owner", "again") == NC_E_INVALID);
  big[NC_ANNOTATION_VALUE_MAX] = '\0';
  CHECK(nc_options_add_annotation(opts, "io.example.big", big) == NC_OK);
  CHECK(nc_options_add_runtime_file(opts, "a/b", "x", 1) == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "plain file name") != NULL);
  CHECK(nc_options_add_runtime_file(opts, ".", "x", 1) == NC_E_INVALID);
  CHECK(nc_options_add_runtime_file(opts, "..", "x", 1) == NC_E_INVALID);
  CHECK(nc_options_add_runtime_file(opts, "", "x", 1) == NC_E_INVALID);
  CHECK(nc_options_add_runtime_file(opts, NULL, "x", 1) == NC_E_INVALID);
  CHECK(nc_options_add_runtime_file(opts, long_name, "x", 1) == NC_E_INVALID);
  CHECK(nc_options_add_runtime_file(opts, "big", big, NC_RUNTIME_FILE_MAX + 1) == NC_E_INVALID);
  CHECK(nc_options_add_runtime_file(opts, "null", NULL, 1) == NC_E_INVALID);
  CHECK(nc_options_add_runtime_file(opts, "empty", NULL, 0) == NC_OK);
  CHECK(nc_options_add_runtime_file(opts, "big", big, NC_RUNTIME_FILE_MAX) == NC_OK);
  long_name[NC_RUNTIME_FILE_NAME_MAX] = '\0';
  CHECK(nc_options_add_runtime_file(opts, long_name, "x", 1) == NC_OK);
  CHECK(nc_options_add_runtime_file(opts, "big", "x", 1) == NC_E_INVALID); /* added once */
  nc_options_free(opts);

  pid_t restored = 1;
  int pidfd = 7;
  CHECK(nc_restore_pidfd(NULL, "/x", NULL, &restored, &pidfd) == NC_E_INVALID);
  CHECK(restored == 0 && pidfd == -1);
  CHECK(nc_restore_pidfd(NULL, "/x", NULL, &restored, NULL) == NC_E_INVALID);
  CHECK(nc_restore_pidfd(NULL, "/x", NULL, NULL, &pidfd) == NC_E_INVALID);
}

/* A folder shaped like a checkpoint, unsigned: dir/images/pages-1.img (its path in pages) holding text. */
static void make_pages_folder(const char *dir, char *pages, size_t size, const char *text) {
  char images[4300];
  snprintf(images, sizeof images, "%s/images", dir);
  snprintf(pages, size, "%s/pages-1.img", images);
  mkdir(dir, 0700);
  mkdir(images, 0700);
  write_text(pages, text);
}

static void test_sign_verify(void) {
  char dir[4200], file[4400];
  path_of(dir, sizeof dir, "signed");
  make_pages_folder(dir, file, sizeof file, "pages");
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
  CHECK(nc_set_max_checkpoint_bytes(4) == NC_OK); /* the folder holds 5 bytes and a few of metadata */
  CHECK(nc_verify(dir) == NC_E_INTEGRITY);
  CHECK(nc_set_max_checkpoint_bytes(0) == NC_OK); /* back to the default */
  CHECK(nc_verify(dir) == NC_OK);
  CHECK(nc_sign_ex(dir, (nc_signature_format)4, NULL, NULL) == NC_E_INVALID);
  CHECK(nc_signature_format_of(dir, NULL) == NC_E_INVALID);
  write_text(file, "PAGES");
  CHECK(nc_verify(dir) == NC_E_INTEGRITY);
  CHECK(strstr(nc_last_error(), "HMAC mismatch") != NULL);
  path_of(dir, sizeof dir, "missing");
  CHECK(nc_verify(dir) == NC_E_NOT_FOUND);
}

/* nc_error: empty when made, filled by every _e twin, reset by a success, independent of the
 * thread's nc_last_error(); NULL reads as empty. */
static void test_error_objects(void) {
  nc_error *err = NULL;
  CHECK(nc_error_new(NULL) == NC_E_INVALID);
  CHECK(nc_error_new(&err) == NC_OK && err != NULL);
  if (!err) return;
  CHECK(nc_error_status(err) == NC_OK && strcmp(nc_error_message(err), "") == 0);
  CHECK(nc_error_criu_exit_code(err) == -1 && strcmp(nc_error_criu_lines(err), "") == 0);
  CHECK(nc_error_status(NULL) == NC_OK && strcmp(nc_error_message(NULL), "") == 0);
  CHECK(nc_error_criu_exit_code(NULL) == -1 && strcmp(nc_error_criu_lines(NULL), "") == 0);
  nc_error_free(NULL);

  char missing[4200];
  path_of(missing, sizeof missing, "no-such-checkpoint");
  CHECK(nc_verify_e(missing, err) == NC_E_NOT_FOUND);
  CHECK(nc_error_status(err) == NC_E_NOT_FOUND);
  CHECK(strstr(nc_error_message(err), missing) != NULL);
  CHECK(strcmp(nc_error_message(err), nc_last_error()) == 0); /* the twin sets the thread's too */
  CHECK(nc_error_criu_exit_code(err) == -1 && strcmp(nc_error_criu_lines(err), "") == 0);
  CHECK(nc_verify("") == NC_E_INVALID); /* a call without err changes the thread's, not err */
  CHECK(strstr(nc_error_message(err), missing) != NULL && strstr(nc_last_error(), missing) == NULL);
  CHECK(nc_set_max_checkpoint_bytes_e(0, err) == NC_OK); /* a success resets both */
  CHECK(nc_error_status(err) == NC_OK && strcmp(nc_error_message(err), "") == 0);
  CHECK(strcmp(nc_last_error(), "") == 0);
  CHECK(nc_verify_e(missing, NULL) == NC_E_NOT_FOUND); /* err NULL: the twin's behaviour */
  CHECK(strstr(nc_last_error(), missing) != NULL);

  /* Every twin fills err. */
#define CHECK_E(call, status, text)                                                                  \
  do {                                                                                              \
    CHECK((call) == (status));                                                                      \
    CHECK(nc_error_status(err) == (status) && strstr(nc_error_message(err), (text)) != NULL);       \
  } while (0)
  nc_runtime *rt = (nc_runtime *)1;
  pid_t pid = 1;
  int pidfd = 7, major = 0;
  CHECK_E(nc_runtime_new_e(NULL, err), NC_E_INVALID, "nc_runtime_new: out is NULL");
  CHECK_E(nc_runtime_new_with_criu_e("/nonexistent/criu", &rt, err), NC_E_NOT_FOUND, "");
  CHECK(rt == NULL && strlen(nc_error_message(err)) > 0);
  CHECK_E(nc_checkpoint_e(NULL, "id", 1, "/x", 0, err), NC_E_INVALID, "checkpoint: the runtime is NULL");
  CHECK_E(nc_checkpoint_ex_e(NULL, "id", 1, "/x", NULL, err), NC_E_INVALID, "checkpoint: the runtime is NULL");
  CHECK_E(nc_restore_e(NULL, "/x", &pid, err), NC_E_INVALID, "restore: the runtime is NULL");
  CHECK(pid == 0);
  CHECK_E(nc_restore_ex_e(NULL, "/x", NULL, NULL, err), NC_E_INVALID, "restored_pid is NULL");
  CHECK_E(nc_restore_pidfd_e(NULL, "/x", NULL, &pid, &pidfd, err), NC_E_INVALID, "the runtime is NULL");
  CHECK(pidfd == -1);
  CHECK_E(nc_sign_e(NULL, err), NC_E_INVALID, "dir is NULL or empty");
  CHECK_E(nc_verify_e("", err), NC_E_INVALID, "dir is NULL or empty");
  CHECK_E(nc_sign_progress_e("", NULL, NULL, err), NC_E_INVALID, "dir is NULL or empty");
  CHECK_E(nc_verify_progress_e(missing, NULL, NULL, err), NC_E_NOT_FOUND, missing);
  CHECK_E(nc_sign_ex_e(missing, (nc_signature_format)42, NULL, NULL, err), NC_E_INVALID, "unknown signature format 42");
  CHECK_E(nc_signature_format_of_e(missing, NULL, err), NC_E_INVALID, "format_out is NULL");
  CHECK_E(nc_read_metadata_e(missing, NULL, err), NC_E_INVALID, "json_out is NULL");
  CHECK_E(nc_key_path_e(NULL, 10, err), NC_E_INVALID, "nc_key_path: buf is NULL");
  CHECK_E(nc_key_path_ex_e(NULL, 10, NULL, err), NC_E_INVALID, "needed is NULL");
  CHECK_E(nc_options_new_e(NULL, err), NC_E_INVALID, "nc_options_new: out is NULL");
  CHECK_E(nc_criu_version_e(NULL, &major, NULL, NULL, err), NC_E_INVALID, "nc_criu_version: runtime is NULL");
  CHECK_E(nc_criu_check_e(NULL, err), NC_E_INVALID, "nc_criu_check: runtime is NULL");
  int created = -1;
  CHECK_E(nc_keygen_e(&created, err), NC_OK, "");
  CHECK(created == 0 || created == 1);
  CHECK_E(nc_set_max_checkpoint_bytes_e(0, err), NC_OK, "");
  CHECK_E(nc_runtime_new_e(&rt, err), NC_OK, "");
  CHECK_E(nc_criu_check_e(rt, err), NC_OK, "");
  CHECK_E(nc_criu_version_e(rt, &major, NULL, NULL, err), NC_OK, "");
  CHECK(major >= 4);
  nc_runtime_free(rt);
  nc_error_free(err);
}

/* A setter's outcome is kept in its handle, whichever thread asks. */
static void test_options_errors(void) {
  nc_options *opts = NULL;
  CHECK(nc_options_new(&opts) == NC_OK);
  if (!opts) return;
  const nc_error *e = nc_options_error(opts);
  CHECK(e != NULL && nc_error_status(e) == NC_OK && strcmp(nc_error_message(e), "") == 0);
  CHECK(nc_options_set_log_level(opts, 9) == NC_E_INVALID);
  CHECK(nc_error_status(e) == NC_E_INVALID);
  CHECK(strstr(nc_error_message(e), "nc_options_set_log_level") != NULL && strstr(nc_error_message(e), "0 to 4") != NULL);
  CHECK(nc_verify("") == NC_E_INVALID); /* another call leaves the handle's alone */
  CHECK(strstr(nc_error_message(e), "0 to 4") != NULL);
  CHECK(nc_options_add_join_ns(opts, "pid:1") == NC_E_INVALID);
  CHECK(strstr(nc_error_message(e), "--join-ns") != NULL);
  CHECK(nc_options_set_image_stream(opts, 0) == NC_OK);
  CHECK(nc_error_status(e) == NC_OK && strcmp(nc_error_message(e), "") == 0);
  CHECK(nc_options_set_image_stream(opts, 1) == NC_OK);
  CHECK(nc_options_set_image_stream(NULL, 1) == NC_E_INVALID);
  CHECK(strstr(nc_last_error(), "nc_options_set_image_stream: options are NULL") != NULL);
  CHECK(nc_options_error(NULL) == NULL);
  nc_options_free(opts);
}

/* nc_key_path_ex reports the size the path needs; nc_key_path is unchanged. */
static void test_key_path(void) {
  char path[4096], small[4] = "xyz";
  size_t needed = 0, again = 0;
  CHECK(nc_key_path(path, sizeof path) == NC_OK);
  CHECK(nc_key_path_ex(NULL, 0, &needed) == NC_OK && needed == strlen(path) + 1);
  CHECK(nc_key_path_ex(small, sizeof small, &again) == NC_E_INVALID);
  CHECK(again == needed && small[0] == '\0');
  CHECK(strstr(nc_last_error(), "the path needs") != NULL);
  char *buf = malloc(needed);
  CHECK(buf != NULL);
  if (buf) {
    CHECK(nc_key_path_ex(buf, needed, &again) == NC_OK && strcmp(buf, path) == 0);
    CHECK(nc_key_path_ex(buf, needed, NULL) == NC_E_INVALID);
    free(buf);
  }
  CHECK(nc_key_path_ex(NULL, 5, &again) == NC_E_INVALID && again == 0);
  strcpy(small, "xyz");
  CHECK(nc_key_path(small, sizeof small) == NC_E_INVALID && strcmp(small, "xyz") == 0); /* nothing written */
  CHECK(nc_key_path(NULL, 0) == NC_E_INVALID);
}

/* 16 threads, 1000 failing calls each, every one with a message of its own (its own path): each
 * nc_error holds exactly its call's message, whole, whatever the other threads do meanwhile; and
 * it is read as well from the thread that made none of those calls. */
enum { error_threads = 16, error_calls = 1000 };
static pthread_barrier_t error_start;
static char reference_message[4096];
static size_t reference_offset; /* where the path is in the message */

struct error_worker {
  int index;
  int wrong;
  nc_error *err;
  char last_path[128];
};

static void nonexistent_path(char *out, size_t size, int thread, int call) {
  snprintf(out, size, "/nonexistent-nc-capi/thread-%02d/call-%04d", thread, call);
}

static void *fail_many(void *arg) {
  struct error_worker *w = arg;
  pthread_barrier_wait(&error_start);
  for (int i = 0; i < error_calls; ++i) {
    char path[128], want[4096];
    nonexistent_path(path, sizeof path, w->index, i);
    /* The message this call must get: the reference one with this call's path (same length). */
    memcpy(want, reference_message, sizeof want);
    memcpy(want + reference_offset, path, strlen(path));
    const nc_status s = nc_verify_e(path, w->err);
    if (s != NC_E_NOT_FOUND || nc_error_status(w->err) != NC_E_NOT_FOUND || strcmp(nc_error_message(w->err), want) != 0)
      ++w->wrong;
    if (strcmp(nc_last_error(), want) != 0) ++w->wrong; /* the thread-local one agrees on this thread */
    memcpy(w->last_path, path, sizeof path);
  }
  return NULL;
}

static void test_errors_across_threads(void) {
  char path[128];
  nonexistent_path(path, sizeof path, 99, 9999);
  CHECK(nc_verify(path) == NC_E_NOT_FOUND);
  snprintf(reference_message, sizeof reference_message, "%s", nc_last_error());
  const char *at = strstr(reference_message, path);
  CHECK(at != NULL);
  if (!at) return;
  reference_offset = (size_t)(at - reference_message);

  struct error_worker workers[error_threads];
  pthread_t threads[error_threads];
  CHECK(pthread_barrier_init(&error_start, NULL, error_threads) == 0);
  int started = 0;
  for (int t = 0; t < error_threads; ++t) {
    workers[t].index = t;
    workers[t].wrong = 0;
    workers[t].err = NULL;
    workers[t].last_path[0] = '\0';
    CHECK(nc_error_new(&workers[t].err) == NC_OK);
  }
  for (int t = 0; t < error_threads; ++t)
    if (pthread_create(&threads[t], NULL, fail_many, &workers[t]) == 0) ++started;
  CHECK(started == error_threads);
  for (int t = 0; t < started; ++t) pthread_join(threads[t], NULL);
  pthread_barrier_destroy(&error_start);
  int wrong = 0;
  for (int t = 0; t < error_threads; ++t) {
    wrong += workers[t].wrong;
    /* Read here, on a thread that made none of its calls. */
    CHECK(strstr(nc_error_message(workers[t].err), workers[t].last_path) != NULL);
    nc_error_free(workers[t].err);
  }
  if (wrong) fprintf(stderr, "%d of %d calls saw a message not their own\n", wrong, 2 * error_threads * error_calls);
  CHECK(wrong == 0);
}

static pid_t start_counter(const char *counter_dir) {
  const char *counter = getenv("NC_TEST_COUNTER");
  CHECK(counter != NULL);
  if (!counter) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    execl(counter, counter, counter_dir, (char *)NULL);
    _exit(127);
  }
  return pid;
}

struct reentry {
  nc_runtime *rt;
  nc_error *err;
  nc_status status;
  int calls;
};

/* At pre-dump, a restore on the runtime that is dumping. */
static int restore_while_dumping(nc_notification what, pid_t pid, void *user) {
  struct reentry *r = user;
  (void)pid;
  if (what == NC_NOTIFY_PRE_DUMP) {
    pid_t restored = 0;
    r->status = nc_restore_e(r->rt, "/nonexistent", &restored, r->err);
    ++r->calls;
  }
  return 0;
}

/* CRIU's own failures, at dump and at restore, with its exit code and Error lines; and a second
 * operation on a busy runtime. */
static void test_criu_failures(void) {
  nc_runtime *rt = NULL;
  nc_error *err = NULL;
  CHECK(nc_runtime_new(&rt) == NC_OK && nc_error_new(&err) == NC_OK);
  if (!rt || !err) return;

  /* Dump: a UNIX socket connected outside the tree, which CRIU refuses without ext-unix-sk. */
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    setsid();
    for (;;) pause();
  }
  close(sv[1]);
  sleep_ms(100);
  char dir[4200];
  path_of(dir, sizeof dir, "socket-outside");
  CHECK(nc_checkpoint_e(rt, "capi", pid, dir, 0, err) == NC_E_CRIU);
  CHECK(nc_error_status(err) == NC_E_CRIU);
  CHECK(nc_error_criu_exit_code(err) == 1);
  const char *lines = nc_error_criu_lines(err);
  CHECK(strstr(lines, "Error (") != NULL && strstr(lines, "External socket is used") != NULL);
  CHECK(strlen(lines) > 0 && lines[strlen(lines) - 1] == '\n');
  CHECK(strstr(nc_error_message(err), "ext-unix-sk") != NULL);
  CHECK(kill(pid, 0) == 0); /* CRIU resumed it */
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  close(sv[0]);

  /* Restore: a file the tree held open (its stdout) is gone. */
  char out_path[4200];
  path_of(out_path, sizeof out_path, "stdout.txt");
  path_of(dir, sizeof dir, "file-gone");
  pid = fork();
  if (pid == 0) {
    setsid();
    int null = open("/dev/null", O_RDWR), out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(null, 0);
    dup2(out, 1);
    dup2(null, 2);
    /* A plain program, not this one: CRIU cannot restore a process built with ASan (the
     * sanitizer run), and the failure wanted is the missing file's. */
    execl("/bin/sleep", "sleep", "100000", (char *)NULL);
    _exit(127);
  }
  sleep_ms(100);
  CHECK(nc_checkpoint_e(rt, "capi", pid, dir, 0, err) == NC_OK);
  CHECK(nc_error_status(err) == NC_OK && nc_error_criu_exit_code(err) == -1);
  CHECK(waitpid(pid, NULL, 0) == pid); /* killed once the checkpoint was signed: reaped here */
  CHECK(unlink(out_path) == 0);
  pid_t restored = 1;
  CHECK(nc_restore_e(rt, dir, &restored, err) == NC_E_CRIU);
  CHECK(restored == 0 && nc_error_criu_exit_code(err) == 1);
  CHECK(strstr(nc_error_criu_lines(err), "Can't open file") != NULL);
  CHECK(strstr(nc_error_message(err), "Can't open file") != NULL);

  /* A second operation while one runs (re-entered from the dump's own notification). */
  char counter_dir[4200];
  path_of(counter_dir, sizeof counter_dir, "busy-counter");
  path_of(dir, sizeof dir, "busy");
  mkdir(counter_dir, 0700);
  pid = start_counter(counter_dir);
  nc_options *opts = NULL;
  struct reentry reentry = {rt, NULL, NC_OK, 0};
  CHECK(nc_error_new(&reentry.err) == NC_OK);
  CHECK(nc_options_new(&opts) == NC_OK);
  CHECK(nc_options_set_leave_running(opts, 1) == NC_OK);
  CHECK(nc_options_set_notify(opts, restore_while_dumping, &reentry) == NC_OK);
  CHECK(pid > 0 && nc_checkpoint_ex_e(rt, "capi", pid, dir, opts, err) == NC_OK);
  CHECK(reentry.calls == 1 && reentry.status == NC_E_STATE);
  CHECK(strcmp(nc_error_message(reentry.err),
               "cannot restore: this runtime is already dumping; a runtime (nc_runtime, CriuRuntime) runs one "
               "operation at a time: use one runtime per thread") == 0);
  CHECK(nc_error_status(err) == NC_OK && strcmp(nc_last_error(), "") == 0); /* the dump's own outcome */
  nc_options_free(opts);
  nc_error_free(reentry.err);
  if (pid > 0) {
    kill(-pid, SIGKILL);
    sleep_ms(100);
    reap();
  }
  nc_error_free(err);
  nc_runtime_free(rt);
}

struct notified {
  int pre_resume;
  pid_t pid;
};

static int count_pre_resume(nc_notification what, pid_t pid, void *user) {
  struct notified *seen = user;
  if (what == NC_NOTIFY_PRE_RESUME) {
    ++seen->pre_resume;
    seen->pid = pid;
  }
  return 0;
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
  CHECK(nc_signature_format_of(checkpoint, &format) == NC_OK && format == NC_SIGNATURE_MANIFEST); /* the default */
  sleep_ms(100);
  reap();
  long at_dump = count_of(parent_count);
  CHECK(nc_verify(checkpoint) == NC_OK);
  CHECK(nc_checkpoint(rt, "capi", pid, checkpoint, 0) != NC_OK); /* the tree is gone */

  pid_t restored = 0;
  CHECK(nc_restore(rt, checkpoint, &restored) == NC_OK);
  CHECK(restored == pid);
  for (int i = 0; i < 500 && count_of(parent_count) <= at_dump + 3; ++i) sleep_ms(20);
  CHECK(count_of(parent_count) > at_dump + 3);

  /* Again with the runtime's description, restored as this process's child with a pidfd. */
  char again[4200], runtime_file[4400];
  path_of(again, sizeof again, "again");
  snprintf(runtime_file, sizeof runtime_file, "%s/runtime/config.json", again);
  nc_options *opts = NULL;
  CHECK(nc_options_new(&opts) == NC_OK);
  CHECK(nc_options_add_annotation(opts, "io.example.owner", "capi") == NC_OK);
  CHECK(nc_options_add_runtime_file(opts, "config.json", "{}", 2) == NC_OK);
  CHECK(nc_checkpoint_ex(rt, "capi", restored, again, opts) == NC_OK);
  sleep_ms(100);
  reap();
  char *metadata = NULL;
  CHECK(nc_read_metadata(again, &metadata) == NC_OK);
  CHECK(metadata != NULL && strstr(metadata, "io.example.owner") != NULL);
  nc_free(metadata);
  struct stat st;
  CHECK(stat(runtime_file, &st) == 0 && st.st_size == 2);
  CHECK(nc_options_set_restore_mode(opts, NC_RESTORE_CHILD) == NC_OK);
  CHECK(nc_options_set_image_stream(opts, 0) == NC_OK); /* from the folder, verified whole first */
  struct notified seen = {0, 0};
  CHECK(nc_options_set_notify(NULL, count_pre_resume, &seen) == NC_E_INVALID);
  CHECK(nc_options_set_notify(opts, count_pre_resume, &seen) == NC_OK);
  int pidfd = -1;
  restored = 0;
  CHECK(nc_restore_pidfd(rt, again, opts, &restored, &pidfd) == NC_OK);
  CHECK(restored == pid && pidfd >= 0);
  CHECK(seen.pre_resume == 1 && seen.pid == restored); /* CRIU's notification, on this thread */
  nc_options_free(opts);
  if (pidfd >= 0) {
    kill(-restored, SIGKILL);
    siginfo_t info;
    memset(&info, 0, sizeof info);
    CHECK(waitid(P_PIDFD, (id_t)pidfd, &info, WEXITED) == 0); /* the caller's child */
    CHECK(info.si_pid == restored && info.si_code == CLD_KILLED && info.si_status == SIGKILL);
    close(pidfd);
  }
  kill(-restored, SIGKILL);
  sleep_ms(100);
  reap();
  nc_runtime_free(rt);
}

/* Ed25519 through the C ABI: this process as the signing host (its keys beside the HMAC key), then
 * as a receiver holding only the public key (its key store moved by the environment); a real dump
 * signed with Ed25519 restores. */
static void test_ed25519(void) {
  nc_error *err = NULL;
  CHECK(nc_error_new(&err) == NC_OK);
  int created = -1;
  CHECK(nc_keygen_ed25519(&created) == NC_OK && created == 1);
  CHECK(nc_keygen_ed25519_e(&created, err) == NC_OK && created == 0);
  char *text = NULL, *key_id = NULL;
  CHECK(nc_public_key(&text, &key_id) == NC_OK);
  CHECK(text != NULL && strncmp(text, "nucleus-checkpoint-ed25519-public 1\n", 36) == 0);
  CHECK(key_id != NULL && strlen(key_id) == 32);
  CHECK_E(nc_public_key_e(NULL, NULL, err), NC_E_INVALID, "text_out and key_id_out are both NULL");

  char dir[4200], pages[4400];
  path_of(dir, sizeof dir, "ed25519");
  make_pages_folder(dir, pages, sizeof pages, "pages");
  CHECK_E(nc_sign_as_e(dir, NC_SIGNATURE_SEED, NC_SIGNING_ED25519, NULL, NULL, err), NC_E_INVALID, "HMAC-only");
  CHECK_E(nc_sign_as_e(dir, NC_SIGNATURE_MANIFEST, (nc_signing)3, NULL, NULL, err), NC_E_INVALID, "unknown signing 3");
  CHECK(nc_sign_as(dir, NC_SIGNATURE_MANIFEST, NC_SIGNING_ED25519, NULL, NULL) == NC_OK);
  nc_signing signing = NC_SIGNING_HMAC;
  char *signer_id = NULL;
  CHECK(nc_signer_of(dir, &signing, &signer_id) == NC_OK && signing == NC_SIGNING_ED25519);
  CHECK(signer_id != NULL && key_id != NULL && strcmp(signer_id, key_id) == 0);
  nc_free(signer_id);
  CHECK_E(nc_signer_of_e(dir, NULL, NULL, err), NC_E_INVALID, "signing_out is NULL");
  CHECK(nc_verify(dir) == NC_OK); /* the host trusts its own key */

  /* The receiver: a key store of its own, with no key of any kind. */
  char receiver[4200], hmac_key[4400], source_hmac_key[4400];
  path_of(receiver, sizeof receiver, "receiver-keys");
  mkdir(receiver, 0700);
  snprintf(hmac_key, sizeof hmac_key, "%s/checkpoint-hmac.key", receiver);
  snprintf(source_hmac_key, sizeof source_hmac_key, "%s", getenv("NUCLEUS_CHECKPOINT_HMAC_KEY_FILE"));
  setenv("NUCLEUS_CHECKPOINT_HMAC_KEY_FILE", hmac_key, 1);
  CHECK_E(nc_verify_e(dir, err), NC_E_INTEGRITY, "does not trust");
  CHECK(key_id != NULL && strstr(nc_error_message(err), key_id) != NULL);
  CHECK_E(nc_trust_key_e("nucleus-checkpoint-ed25519-public 1\nabc\n", err), NC_E_KEY, "not an Ed25519 public key file");
  CHECK_E(nc_trust_key_e(NULL, err), NC_E_INVALID, "public_key_text is NULL");
  CHECK(nc_trust_key(text) == NC_OK);
  CHECK(nc_verify(dir) == NC_OK);
  /* A migration's receiver key: a public key's text or none; anything else refused, none kept. */
  nc_options *migrating = NULL;
  CHECK(nc_options_new(&migrating) == NC_OK);
  CHECK(nc_options_set_receiver_key(NULL, text) == NC_E_INVALID);
  CHECK(nc_options_set_receiver_key(migrating, text) == NC_OK);
  CHECK(nc_options_set_receiver_key(migrating, "nucleus-checkpoint-ed25519-public 1\nabc\n") == NC_E_KEY);
  CHECK(strstr(nc_error_message(nc_options_error(migrating)), "nc_options_set_receiver_key") != NULL);
  CHECK(nc_options_set_receiver_key(migrating, NULL) == NC_OK);
  nc_options_free(migrating);
  signing = NC_SIGNING_ED25519;
  CHECK(nc_sign_ex(dir, NC_SIGNATURE_MANIFEST, NULL, NULL) == NC_OK); /* re-signed with its own HMAC key */
  CHECK(nc_signer_of(dir, &signing, &signer_id) == NC_OK && signing == NC_SIGNING_HMAC && signer_id == NULL);
  setenv("NUCLEUS_CHECKPOINT_HMAC_KEY_FILE", source_hmac_key, 1);
  CHECK(nc_keygen(NULL) == NC_OK);
  CHECK(nc_verify(dir) == NC_E_INTEGRITY); /* the source's HMAC key is not the receiver's */
  nc_free(text);
  nc_free(key_id);

  /* A real dump signed with Ed25519 restores, streamed. */
  nc_options *opts = NULL;
  CHECK(nc_options_new(&opts) == NC_OK);
  CHECK(nc_options_set_signing(opts, (nc_signing)0) == NC_E_INVALID);
  CHECK(nc_options_set_signing(opts, NC_SIGNING_ED25519) == NC_OK);
  const char *counter = getenv("NC_TEST_COUNTER");
  char counter_dir[4200], parent_count[4300], checkpoint[4200];
  path_of(counter_dir, sizeof counter_dir, "ed25519-counter");
  path_of(checkpoint, sizeof checkpoint, "ed25519-checkpoint");
  snprintf(parent_count, sizeof parent_count, "%s/parent", counter_dir);
  mkdir(counter_dir, 0700);
  nc_runtime *rt = NULL;
  CHECK(counter != NULL && nc_runtime_new(&rt) == NC_OK);
  if (counter && rt) {
    pid_t pid = fork();
    if (pid == 0) {
      execl(counter, counter, counter_dir, (char *)NULL);
      _exit(127);
    }
    for (int i = 0; i < 500 && count_of(parent_count) < 3; ++i) sleep_ms(20);
    CHECK(nc_checkpoint_ex(rt, "capi-ed25519", pid, checkpoint, opts) == NC_OK);
    sleep_ms(100);
    reap();
    CHECK(nc_signer_of(checkpoint, &signing, NULL) == NC_OK && signing == NC_SIGNING_ED25519);
    const long at_dump = count_of(parent_count);
    pid_t restored = 0;
    CHECK(nc_restore(rt, checkpoint, &restored) == NC_OK && restored == pid);
    for (int i = 0; i < 500 && count_of(parent_count) <= at_dump + 3; ++i) sleep_ms(20);
    CHECK(count_of(parent_count) > at_dump + 3);
    kill(-pid, SIGKILL);
    sleep_ms(100);
    reap();
  }
  nc_runtime_free(rt);
  nc_options_free(opts);
  nc_error_free(err);
}

/* Transfer streams through the C ABI: a signed folder through a socket pair, compressed, exported
 * on a thread and imported here; a truncated stream refused with nothing left; the arguments. */
struct export_job {
  const char *dir;
  int fd;
  const nc_options *opts;
  nc_status status;
};

static void *export_on_thread(void *arg) {
  struct export_job *job = arg;
  job->status = nc_export(job->dir, job->fd, job->opts);
  close(job->fd);
  return NULL;
}

static void test_transfer(void) {
  char src[4200], pages[4400], dst[4200], half[4200], stream[4200];
  path_of(src, sizeof src, "xfer-src");
  path_of(dst, sizeof dst, "xfer-dst");
  path_of(half, sizeof half, "xfer-half");
  path_of(stream, sizeof stream, "xfer.stream");
  make_pages_folder(src, pages, sizeof pages, "pages of memory, in a real checkpoint many MiB");
  nc_options *opts = NULL;
  nc_error *err = NULL;
  CHECK(nc_options_new(&opts) == NC_OK && nc_error_new(&err) == NC_OK);
  CHECK(nc_options_set_compression(opts, (nc_compression)2) == NC_E_INVALID);
  CHECK(strstr(nc_error_message(nc_options_error(opts)), "unknown compression 2") != NULL);
  CHECK(nc_options_set_compression(opts, NC_COMPRESSION_ZSTD) == NC_OK);

  /* Format 2 cannot be checked as it arrives: refused before a byte is written, saying what to do. */
  CHECK(nc_sign_ex(src, NC_SIGNATURE_CHUNKED, NULL, NULL) == NC_OK);
  int fd = open(stream, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  CHECK(nc_export_e(src, fd, opts, err) == NC_E_INVALID);
  CHECK(strstr(nc_error_message(err), "sign it in format 3") != NULL);
  CHECK(lseek(fd, 0, SEEK_END) == 0);
  CHECK(nc_sign_ex(src, NC_SIGNATURE_MANIFEST, NULL, NULL) == NC_OK);

  int pair[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
  struct export_job job = {src, pair[1], opts, NC_E_INTERNAL};
  pthread_t sender;
  CHECK(pthread_create(&sender, NULL, export_on_thread, &job) == 0);
  CHECK(nc_import_e(pair[0], dst, NULL, err) == NC_OK);
  pthread_join(sender, NULL);
  close(pair[0]);
  CHECK(job.status == NC_OK);
  CHECK(nc_verify(dst) == NC_OK);

  /* Half a stream: refused, and no folder and no staging folder beside it. */
  CHECK(nc_export(src, fd, NULL) == NC_OK);
  const off_t size = lseek(fd, 0, SEEK_END);
  CHECK(size > 0 && ftruncate(fd, size / 2) == 0 && lseek(fd, 0, SEEK_SET) == 0);
  CHECK(nc_import_e(fd, half, NULL, err) == NC_E_INTEGRITY);
  CHECK(strstr(nc_error_message(err), "ends early") != NULL);
  struct stat st;
  CHECK(stat(half, &st) != 0 && errno == ENOENT);
  int staging_left = 0;
  DIR *d = opendir(base);
  for (struct dirent *e; d && (e = readdir(d));) staging_left += strncmp(e->d_name, ".xfer-half.staging", 18) == 0;
  if (d) closedir(d);
  CHECK(staging_left == 0);
  close(fd);

  CHECK(nc_export_e(NULL, 1, NULL, err) == NC_E_INVALID && strstr(nc_error_message(err), "nc_export: dir") != NULL);
  CHECK(nc_import_e(-1, dst, NULL, err) == NC_E_INVALID && strstr(nc_error_message(err), "nc_import: fd") != NULL);
  CHECK(nc_import(0, "", NULL) == NC_E_INVALID);
  nc_error_free(err);
  nc_options_free(opts);
}

/* Chain streams through the C ABI: a folder without a parent is a chain of one, exported and
 * imported into a store; the layers held, and the arguments. (tests/chain_transfer_test.cpp has
 * real chains.) */
static void test_chain_transfer(void) {
  char src[4200], pages[4400], store[4200], stream[4200], expected[8600];
  path_of(src, sizeof src, "chain-src");
  path_of(store, sizeof store, "chain-store");
  path_of(stream, sizeof stream, "chain.stream");
  snprintf(expected, sizeof expected, "%s/chain-src", store);
  make_pages_folder(src, pages, sizeof pages, "a layer's pages");
  CHECK(nc_sign_ex(src, NC_SIGNATURE_MANIFEST, NULL, NULL) == NC_OK);
  nc_options *opts = NULL;
  nc_error *err = NULL;
  CHECK(nc_options_new(&opts) == NC_OK && nc_error_new(&err) == NC_OK);
  CHECK(nc_options_add_receiver_has(opts, NULL) == NC_E_INVALID);
  CHECK(nc_options_add_receiver_has(NULL, "00") == NC_E_INVALID);
  CHECK(nc_options_add_receiver_has(opts, "ABCD") == NC_E_INVALID);
  CHECK(strstr(nc_error_message(nc_options_error(opts)), "64 lowercase hex digits") != NULL);
  /* A layer the receiver is said to hold that is not in the chain changes nothing. */
  CHECK(nc_options_add_receiver_has(opts, "00000000000000000000000000000000000000000000000000000000000000ff") ==
        NC_OK);
  CHECK(nc_options_set_compression(opts, NC_COMPRESSION_ZSTD) == NC_OK);

  int fd = open(stream, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  CHECK(nc_export_chain_e(src, fd, opts, err) == NC_OK);
  CHECK(lseek(fd, 0, SEEK_SET) == 0);
  char *layer = (char *)1;
  CHECK(nc_import_chain_e(fd, store, NULL, &layer, err) == NC_OK);
  CHECK(layer != NULL && strcmp(layer, expected) == 0);
  nc_free(layer);
  CHECK(nc_verify(expected) == NC_OK);
  /* Again into the same store: the layer is there, so it is refused and left alone. */
  CHECK(lseek(fd, 0, SEEK_SET) == 0);
  layer = (char *)1;
  CHECK(nc_import_chain_e(fd, store, NULL, &layer, err) == NC_E_INVALID);
  CHECK(layer == NULL && strstr(nc_error_message(err), "--have") != NULL);
  CHECK(nc_verify(expected) == NC_OK);
  /* A checkpoint stream is not a chain stream. */
  CHECK(ftruncate(fd, 0) == 0 && lseek(fd, 0, SEEK_SET) == 0);
  CHECK(nc_export(src, fd, NULL) == NC_OK && lseek(fd, 0, SEEK_SET) == 0);
  CHECK(nc_import_chain_e(fd, store, NULL, NULL, err) == NC_E_INTEGRITY);
  CHECK(strstr(nc_error_message(err), "not a chain") != NULL);
  close(fd);

  CHECK(nc_export_chain_e(NULL, 1, NULL, err) == NC_E_INVALID &&
        strstr(nc_error_message(err), "nc_export_chain: layer_dir") != NULL);
  CHECK(nc_export_chain(src, -1, NULL) == NC_E_INVALID);
  CHECK(nc_import_chain_e(-1, store, NULL, NULL, err) == NC_E_INVALID &&
        strstr(nc_error_message(err), "nc_import_chain: fd") != NULL);
  CHECK(nc_import_chain(0, NULL, NULL, NULL) == NC_E_INVALID);
  nc_error_free(err);
  nc_options_free(opts);
}

/* Pre-dump chains through the C ABI: the setters, the arguments, and a chain of the sample tree
 * (pre-dump, final dump on it, verified and restored) where the kernel tracks changed memory;
 * elsewhere nc_predump must fail, saying why, and make nothing. */
/* Registry images' arguments and failures that need no registry (tests/registry_test.py has one). */
static void test_registry_arguments(void) {
  CHECK(strcmp(nc_status_name(NC_E_UNSUPPORTED), "NC_E_UNSUPPORTED") == 0 && NC_E_UNSUPPORTED == 11);
  CHECK(nc_options_set_insecure_registry(NULL, 1) == NC_E_INVALID);
  nc_options *opts = NULL;
  CHECK(nc_options_new(&opts) == NC_OK && nc_options_set_insecure_registry(opts, 1) == NC_OK);
  char *digest = (char *)"untouched";
  CHECK(nc_push_image(NULL, "127.0.0.1:1/a:b", opts, &digest) == NC_E_INVALID && digest == NULL);
  CHECK(nc_pull_image("127.0.0.1:1/a:b", "", opts) == NC_E_INVALID);
  nc_error *err = NULL;
  CHECK(nc_error_new(&err) == NC_OK);
  char target[4200];
  path_of(target, sizeof target, "pulled-image");
  nc_status s = nc_pull_image_e("no-host-here", target, opts, err);
  CHECK(s == NC_E_INVALID || s == NC_E_UNSUPPORTED);
  if (s == NC_E_INVALID) {
    CHECK(strstr(nc_error_message(err), "HOST[:PORT]/NAME[:TAG]") != NULL);
    /* Nothing listens on port 1: an I/O error naming the URL, and nothing left behind. */
    CHECK(nc_pull_image_e("127.0.0.1:1/checkpoints/web:v1", target, opts, err) == NC_E_IO);
    CHECK(strstr(nc_error_message(err), "http://127.0.0.1:1/v2/checkpoints/web/manifests/v1") != NULL);
    CHECK(access(target, F_OK) != 0);
  }
  nc_error_free(err);
  nc_options_free(opts);
}

static void test_predump(void) {
  char counter_dir[4200], parent_count[4300], chain[4200], p0[4300], final[4300];
  path_of(counter_dir, sizeof counter_dir, "chain-counter");
  path_of(chain, sizeof chain, "chain");
  snprintf(parent_count, sizeof parent_count, "%s/parent", counter_dir);
  snprintf(p0, sizeof p0, "%s/p0", chain);
  snprintf(final, sizeof final, "%s/final", chain);
  mkdir(counter_dir, 0700);
  mkdir(chain, 0700);
  nc_runtime *rt = NULL;
  nc_error *err = NULL;
  nc_options *opts = NULL;
  CHECK(nc_runtime_new(&rt) == NC_OK && nc_error_new(&err) == NC_OK && nc_options_new(&opts) == NC_OK);
  if (!rt || !err || !opts) return;
  CHECK(nc_options_set_parent(NULL, p0) == NC_E_INVALID);
  CHECK(nc_options_set_auto_dedup(NULL, 1) == NC_E_INVALID);
  CHECK(nc_predump_e(NULL, "capi", 1, p0, NULL, err) == NC_E_INVALID);
  CHECK(strstr(nc_error_message(err), "predump: the runtime is NULL") != NULL);
  CHECK(nc_predump(rt, "", 1, p0, NULL) == NC_E_INVALID);

  pid_t pid = start_counter(counter_dir);
  for (int i = 0; i < 500 && count_of(parent_count) < 3; ++i) sleep_ms(20);
  /* Auto-dedup without a parent has nothing to take from: refused before anything runs. */
  CHECK(nc_options_set_auto_dedup(opts, 1) == NC_OK);
  CHECK(nc_checkpoint_ex_e(rt, "capi", pid, final, opts, err) == NC_E_INVALID);
  CHECK(strstr(nc_error_message(err), "auto-dedup needs a parent") != NULL);
  CHECK(nc_options_set_auto_dedup(opts, 0) == NC_OK);

  const char *criu = getenv("NC_TEST_CRIU");
  char probe[4200];
  snprintf(probe, sizeof probe, "%s check --feature mem_dirty_track >/dev/null 2>&1", criu && *criu ? criu : "criu");
  const int tracks_memory = system(probe) == 0;
  nc_status s = nc_predump_e(rt, "capi", pid, p0, NULL, err);
  if (!tracks_memory) {
    CHECK(s == NC_E_CRIU);
    CHECK(strstr(nc_error_message(err), "CONFIG_MEM_SOFT_DIRTY") != NULL);
    struct stat st;
    CHECK(stat(p0, &st) != 0 && errno == ENOENT);
    long before = count_of(parent_count);
    sleep_ms(300);
    CHECK(count_of(parent_count) > before); /* it runs on */
    fprintf(stderr, "capi: this kernel has no soft-dirty memory tracking: no pre-dump chain was made\n");
  } else {
    CHECK(s == NC_OK);
    CHECK(nc_options_set_parent(opts, p0) == NC_OK);
    CHECK(nc_checkpoint_ex_e(rt, "capi", pid, final, opts, err) == NC_OK);
    sleep_ms(100);
    reap();
    long at_dump = count_of(parent_count);
    CHECK(nc_verify_e(final, err) == NC_OK);
    pid_t restored = 0;
    CHECK(nc_restore_e(rt, p0, &restored, err) == NC_E_INVALID); /* a pre-dump alone */
    CHECK(nc_restore_e(rt, final, &restored, err) == NC_OK && restored == pid);
    for (int i = 0; i < 500 && count_of(parent_count) <= at_dump + 3; ++i) sleep_ms(20);
    CHECK(count_of(parent_count) > at_dump + 3);
  }
  kill(-pid, SIGKILL);
  sleep_ms(100);
  reap();
  nc_options_free(opts);
  nc_error_free(err);
  nc_runtime_free(rt);
}

int main(void) {
  if (enter_test_folder("capi") != 0) return 1;
  test_arguments();
  test_status_names();
  test_options_and_versions();
  test_container_options();
  test_sign_verify();
  test_error_objects();
  test_message_escaping();
  test_options_errors();
  test_key_path();
  test_errors_across_threads();
  test_criu_failures();
  test_checkpoint_restore();
  test_predump();
  test_transfer();
  test_chain_transfer();
  test_registry_arguments();
  test_ed25519();
  return leave_test_folder("capi");
}
