// CRIU's options for a dump or a restore: those a container runtime reaches for (runc's and
// libcriu's names), with the library's defaults.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace nucleus::checkpoint {

enum class CgroupMode : int { criu_default = 0, soft = 1, full = 2, strict = 3, ignore = 4 };
enum class RestoreMode : int {
  detached = 0,  // reparented to the nearest subreaper or PID 1 (--restore-detached)
  child = 1,     // the caller's child, which it can wait for (--restore-sibling)
};

struct CriuOptions {
  bool leave_running = false;    // dump: the tree keeps running afterwards
  bool shell_job = true;         // the tree may belong to an outside session or terminal (seed default)
  bool tcp_established = false;  // dump and restore established TCP connections
  bool tcp_close = false;        // restore: close established TCP connections instead
  bool ext_unix_sk = false;      // allow UNIX sockets connected outside the tree
  bool file_locks = false;       // dump and restore file locks
  CgroupMode manage_cgroups = CgroupMode::criu_default;
  std::vector<std::string> external;  // --external values, e.g. "mnt[/data]:data"
  std::filesystem::path work_dir;     // CRIU's logs (and pidfile) here instead of the default
  int log_level = 4;                  // CRIU's -v, 0 to 4
  std::chrono::milliseconds timeout{0};  // 0: none; past it CRIU is stopped and the call fails
  RestoreMode restore_mode = RestoreMode::detached;
};

}  // namespace nucleus::checkpoint
