// The public headers compile alone as C++, the C header included; the declarations of 0.2 (and
// 0.3's transfer streams) have exactly their types, and CriuError is an Error with CRIU's details.
#include <nucleus/checkpoint.h>
#include <nucleus/checkpoint/checkpoint_state.hpp>
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/ed25519.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>
#include <nucleus/checkpoint/metadata.hpp>
#include <nucleus/checkpoint/transfer.hpp>

#include <string>
#include <type_traits>
#include <vector>

#define EXPECT_TYPE(function, type) static_assert(std::is_same_v<decltype(&function), type>, #function)

EXPECT_TYPE(nc_error_new, nc_status (*)(nc_error**));
EXPECT_TYPE(nc_error_free, void (*)(nc_error*));
EXPECT_TYPE(nc_error_status, nc_status (*)(const nc_error*));
EXPECT_TYPE(nc_error_message, const char* (*)(const nc_error*));
EXPECT_TYPE(nc_error_criu_exit_code, int (*)(const nc_error*));
EXPECT_TYPE(nc_error_criu_lines, const char* (*)(const nc_error*));
EXPECT_TYPE(nc_options_error, const nc_error* (*)(const nc_options*));
EXPECT_TYPE(nc_runtime_new_e, nc_status (*)(nc_runtime**, nc_error*));
EXPECT_TYPE(nc_runtime_new_with_criu_e, nc_status (*)(const char*, nc_runtime**, nc_error*));
EXPECT_TYPE(nc_checkpoint_e, nc_status (*)(nc_runtime*, const char*, pid_t, const char*, int, nc_error*));
EXPECT_TYPE(nc_checkpoint_ex_e, nc_status (*)(nc_runtime*, const char*, pid_t, const char*, const nc_options*, nc_error*));
EXPECT_TYPE(nc_restore_e, nc_status (*)(nc_runtime*, const char*, pid_t*, nc_error*));
EXPECT_TYPE(nc_restore_ex_e, nc_status (*)(nc_runtime*, const char*, const nc_options*, pid_t*, nc_error*));
EXPECT_TYPE(nc_restore_pidfd_e, nc_status (*)(nc_runtime*, const char*, const nc_options*, pid_t*, int*, nc_error*));
EXPECT_TYPE(nc_sign_e, nc_status (*)(const char*, nc_error*));
EXPECT_TYPE(nc_verify_e, nc_status (*)(const char*, nc_error*));
EXPECT_TYPE(nc_sign_progress_e, nc_status (*)(const char*, nc_progress_fn, void*, nc_error*));
EXPECT_TYPE(nc_verify_progress_e, nc_status (*)(const char*, nc_progress_fn, void*, nc_error*));
EXPECT_TYPE(nc_sign_ex_e, nc_status (*)(const char*, nc_signature_format, nc_progress_fn, void*, nc_error*));
EXPECT_TYPE(nc_signature_format_of_e, nc_status (*)(const char*, nc_signature_format*, nc_error*));
EXPECT_TYPE(nc_read_metadata_e, nc_status (*)(const char*, char**, nc_error*));
EXPECT_TYPE(nc_set_max_checkpoint_bytes_e, nc_status (*)(unsigned long long, nc_error*));
EXPECT_TYPE(nc_key_path_e, nc_status (*)(char*, size_t, nc_error*));
EXPECT_TYPE(nc_key_path_ex, nc_status (*)(char*, size_t, size_t*));
EXPECT_TYPE(nc_key_path_ex_e, nc_status (*)(char*, size_t, size_t*, nc_error*));
EXPECT_TYPE(nc_keygen_e, nc_status (*)(int*, nc_error*));
EXPECT_TYPE(nc_options_new_e, nc_status (*)(nc_options**, nc_error*));
EXPECT_TYPE(nc_criu_version_e, nc_status (*)(const nc_runtime*, int*, int*, int*, nc_error*));
EXPECT_TYPE(nc_criu_check_e, nc_status (*)(const nc_runtime*, nc_error*));
EXPECT_TYPE(nc_options_set_image_stream, nc_status (*)(nc_options*, int));
EXPECT_TYPE(nc_last_error, const char* (*)());
EXPECT_TYPE(nc_export, nc_status (*)(const char*, int, const nc_options*));
EXPECT_TYPE(nc_import, nc_status (*)(int, const char*, const nc_options*));
EXPECT_TYPE(nc_options_set_compression, nc_status (*)(nc_options*, nc_compression));

namespace nc = nucleus::checkpoint;
static_assert(std::is_base_of_v<nc::Error, nc::CriuError>);
static_assert(std::is_nothrow_copy_constructible_v<nc::CriuError>);  // an exception is copied freely
static_assert(std::is_same_v<decltype(std::declval<const nc::CriuError&>().criu_exit_code()), int>);
static_assert(std::is_same_v<decltype(std::declval<const nc::CriuError&>().criu_lines()), const std::vector<std::string>&>);

int main() {
  const nc::CriuError e(1, {"(00.01) Error (criu/x.c:1): x"}, "criu failed");
  const nc::Error& base = e;
  return nc_status{NC_OK} == static_cast<int>(nucleus::checkpoint::Status::ok) && base.status() == nc::Status::criu &&
                 e.criu_exit_code() == 1 && e.criu_lines().size() == 1
             ? 0
             : 1;
}
