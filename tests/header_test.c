/* The public C header compiles alone as C99 with -pedantic-errors (and, from header_test.cpp, as
 * C++), so any C toolchain can use it. The declarations of 0.2 are checked to have exactly their
 * types: each is assigned to a pointer of the type it must have (p), inside sizeof, so nothing is
 * linked, and C refuses any other type. */
#include <nucleus/checkpoint.h>
#include <nucleus/checkpoint_version.h>

/* declaration: a pointer named p of the expected type, e.g. nc_status (*p)(const char *) */
#define EXPECT_TYPE(function, declaration) \
  do {                                     \
    declaration = 0;                       \
    (void)sizeof(p = function);            \
  } while (0)

int main(void) {
  nc_status s = NC_OK;
  /* nc_error and the _e twins */
  EXPECT_TYPE(nc_error_new, nc_status (*p)(nc_error **));
  EXPECT_TYPE(nc_error_free, void (*p)(nc_error *));
  EXPECT_TYPE(nc_error_status, nc_status (*p)(const nc_error *));
  EXPECT_TYPE(nc_error_message, const char *(*p)(const nc_error *));
  EXPECT_TYPE(nc_error_criu_exit_code, int (*p)(const nc_error *));
  EXPECT_TYPE(nc_error_criu_lines, const char *(*p)(const nc_error *));
  EXPECT_TYPE(nc_options_error, const nc_error *(*p)(const nc_options *));
  EXPECT_TYPE(nc_runtime_new_e, nc_status (*p)(nc_runtime **, nc_error *));
  EXPECT_TYPE(nc_runtime_new_with_criu_e, nc_status (*p)(const char *, nc_runtime **, nc_error *));
  EXPECT_TYPE(nc_checkpoint_e, nc_status (*p)(nc_runtime *, const char *, pid_t, const char *, int, nc_error *));
  EXPECT_TYPE(nc_checkpoint_ex_e,
              nc_status (*p)(nc_runtime *, const char *, pid_t, const char *, const nc_options *, nc_error *));
  EXPECT_TYPE(nc_restore_e, nc_status (*p)(nc_runtime *, const char *, pid_t *, nc_error *));
  EXPECT_TYPE(nc_restore_ex_e, nc_status (*p)(nc_runtime *, const char *, const nc_options *, pid_t *, nc_error *));
  EXPECT_TYPE(nc_restore_pidfd_e,
              nc_status (*p)(nc_runtime *, const char *, const nc_options *, pid_t *, int *, nc_error *));
  EXPECT_TYPE(nc_sign_e, nc_status (*p)(const char *, nc_error *));
  EXPECT_TYPE(nc_verify_e, nc_status (*p)(const char *, nc_error *));
  EXPECT_TYPE(nc_sign_progress_e, nc_status (*p)(const char *, nc_progress_fn, void *, nc_error *));
  EXPECT_TYPE(nc_verify_progress_e, nc_status (*p)(const char *, nc_progress_fn, void *, nc_error *));
  EXPECT_TYPE(nc_sign_ex_e, nc_status (*p)(const char *, nc_signature_format, nc_progress_fn, void *, nc_error *));
  EXPECT_TYPE(nc_signature_format_of_e, nc_status (*p)(const char *, nc_signature_format *, nc_error *));
  EXPECT_TYPE(nc_read_metadata_e, nc_status (*p)(const char *, char **, nc_error *));
  EXPECT_TYPE(nc_set_max_checkpoint_bytes_e, nc_status (*p)(unsigned long long, nc_error *));
  EXPECT_TYPE(nc_key_path_e, nc_status (*p)(char *, size_t, nc_error *));
  EXPECT_TYPE(nc_key_path_ex, nc_status (*p)(char *, size_t, size_t *));
  EXPECT_TYPE(nc_key_path_ex_e, nc_status (*p)(char *, size_t, size_t *, nc_error *));
  EXPECT_TYPE(nc_keygen_e, nc_status (*p)(int *, nc_error *));
  EXPECT_TYPE(nc_options_new_e, nc_status (*p)(nc_options **, nc_error *));
  EXPECT_TYPE(nc_criu_version_e, nc_status (*p)(const nc_runtime *, int *, int *, int *, nc_error *));
  EXPECT_TYPE(nc_criu_check_e, nc_status (*p)(const nc_runtime *, nc_error *));
  EXPECT_TYPE(nc_options_set_image_stream, nc_status (*p)(nc_options *, int));
  /* and the functions they are the twins of, unchanged */
  EXPECT_TYPE(nc_last_error, const char *(*p)(void));
  EXPECT_TYPE(nc_key_path, nc_status (*p)(char *, size_t));
  EXPECT_TYPE(nc_verify, nc_status (*p)(const char *));
  return (int)s + (NC_VERSION_NUMBER > 0 ? 0 : 1);
}
