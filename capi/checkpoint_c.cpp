// The C ABI: a thin shim over the C++ core. Every entry point catches everything, records the
// message for nc_last_error() and returns the status.
#include <nucleus/checkpoint.h>

#include <new>
#include <optional>
#include <string>

#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>

namespace nc = nucleus::checkpoint;

struct nc_runtime {
  explicit nc_runtime(std::optional<std::string> criu_path)
      : criu(criu_path ? nc::CriuRuntime(*criu_path) : nc::CriuRuntime()) {}
  nc::CriuRuntime criu;
};

namespace {

static_assert(static_cast<int>(nc::Status::internal) == NC_E_INTERNAL && static_cast<int>(nc::Status::key) == NC_E_KEY &&
              static_cast<int>(nc::Status::integrity) == NC_E_INTEGRITY && static_cast<int>(nc::Status::ok) == NC_OK);

thread_local std::string last_error;

nc_status fail(nc_status status, const char* message) noexcept {
  try {
    last_error = message;
  } catch (...) {
    last_error.clear();
  }
  return status;
}

template <typename Body>
nc_status guard(Body&& body) noexcept {
  try {
    body();
    last_error.clear();
    return NC_OK;
  } catch (const nc::Error& e) {
    return fail(static_cast<nc_status>(e.status()), e.what());
  } catch (const std::bad_alloc&) {
    return fail(NC_E_NOMEM, "out of memory");
  } catch (const std::exception& e) {
    return fail(NC_E_INTERNAL, e.what());
  } catch (...) {
    return fail(NC_E_INTERNAL, "unknown internal error");
  }
}

void require(bool ok, const char* what) {
  if (!ok) throw nc::Error(nc::Status::invalid, what);
}

}  // namespace

extern "C" {

nc_status nc_runtime_new(nc_runtime** out) {
  return guard([&] {
    require(out != nullptr, "nc_runtime_new: out is NULL");
    *out = nullptr;
    *out = new nc_runtime(std::nullopt);
  });
}

nc_status nc_runtime_new_with_criu(const char* criu_path, nc_runtime** out) {
  return guard([&] {
    require(out != nullptr, "nc_runtime_new_with_criu: out is NULL");
    *out = nullptr;
    require(criu_path != nullptr && *criu_path != '\0', "nc_runtime_new_with_criu: criu_path is NULL or empty");
    *out = new nc_runtime(std::string(criu_path));
  });
}

void nc_runtime_free(nc_runtime* rt) { delete rt; }

nc_status nc_checkpoint(nc_runtime* rt, const char* container_id, pid_t pid, const char* dir, int leave_running) {
  return guard([&] {
    require(rt != nullptr, "nc_checkpoint: runtime is NULL");
    require(container_id != nullptr && *container_id != '\0', "nc_checkpoint: container_id is NULL or empty");
    require(dir != nullptr && *dir != '\0', "nc_checkpoint: dir is NULL or empty");
    nc::ContainerInfo info;
    info.id = container_id;
    info.pid = pid;
    rt->criu.checkpoint(info, dir, leave_running != 0);
  });
}

nc_status nc_restore(nc_runtime* rt, const char* dir, pid_t* restored_pid) {
  return guard([&] {
    require(rt != nullptr, "nc_restore: runtime is NULL");
    require(dir != nullptr && *dir != '\0', "nc_restore: dir is NULL or empty");
    require(restored_pid != nullptr, "nc_restore: restored_pid is NULL");
    *restored_pid = 0;
    *restored_pid = rt->criu.restore(dir);
  });
}

nc_status nc_sign(const char* dir) {
  return guard([&] {
    require(dir != nullptr && *dir != '\0', "nc_sign: dir is NULL or empty");
    nc::HmacTree::sign(dir, nc::KeyStore().load_or_create());
  });
}

nc_status nc_verify(const char* dir) {
  return guard([&] {
    require(dir != nullptr && *dir != '\0', "nc_verify: dir is NULL or empty");
    nc::HmacTree::verify(dir, nc::KeyStore());
  });
}

const char* nc_last_error(void) { return last_error.c_str(); }

const char* nc_status_name(nc_status s) { return nc::status_name(static_cast<nc::Status>(s)); }

}  // extern "C"
