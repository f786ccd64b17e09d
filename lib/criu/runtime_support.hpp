// What the runtime's dump and restore share: how CRIU is reached, its work folder, the root check
// and the state guard.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include <nucleus/checkpoint/checkpoint_state.hpp>
#include <nucleus/checkpoint/criu_runtime.hpp>

#include "fs/unique_fd.hpp"

namespace nucleus::checkpoint {

// How CRIU, which gets only the descriptors it is handed, opens one of them by path.
inline std::string proc_fd_path(int fd) { return fmt::format("/proc/self/fd/{}", fd); }

// CRIU, as root, writes its log (and pidfile) there, following symlinks: the folder must be ours.
UniqueFd open_work_dir(const std::filesystem::path& path);

// Where the library keeps its per-operation folders: root's alone, emptied at boot.
inline constexpr const char* run_dir = "/run/nucleus-checkpoint";

// A new folder of the library's own (0700) for one operation, `parent/prefix-XXXXXXXX`, in a parent
// that only root can change (created 0700 if missing, refused otherwise).
struct PrivateRunDir {
  UniqueFd parent, dir;
  std::string parent_path, name;
  std::string path() const { return parent_path + "/" + name; }
};
PrivateRunDir make_private_run_dir(const std::string& parent_path, std::string_view prefix, std::string_view what);

// Verifies the whole folder at dir_fd with the runtime's own key (CriuRuntime::set_key) if it has
// one, else with the key store's keys.
inline void verify_whole(int dir_fd, const std::optional<HmacKey>& key) {
  if (key) HmacTree::verify(dir_fd, *key);
  else HmacTree::verify(dir_fd, KeyStore());
}

// Why CRIU cannot track the memory a process changes here (pre-dump, dump on a parent), or nullopt
// if it can: `criu check --feature mem_dirty_track`'s words (it needs CONFIG_MEM_SOFT_DIRTY).
std::optional<std::string> memory_tracking_missing(int criu_binary_fd);

// Throws Error(Status::permission) unless the caller is root.
void require_root(std::string_view operation);

// Runs `body`; whatever it throws, the state first returns to None (the seed left it stuck).
template <typename Body>
auto guarded(CriuRuntime& rt, void (CriuRuntime::*finish)(CheckpointState), Body&& body) {
  try {
    return body();
  } catch (...) {
    (rt.*finish)(CheckpointState::None);
    throw;
  }
}

}  // namespace nucleus::checkpoint
