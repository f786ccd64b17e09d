#include "criu/criu_args.hpp"

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

namespace nucleus::checkpoint {

namespace {

// What dump and restore share: folders, log, and the options that apply to both.
std::vector<std::string> common_args(const char* action, const std::string& images_dir, const std::string& work_dir,
                                     const CriuOptions& o) {
  if (o.log_level < 0 || o.log_level > 4)
    throw Error(Status::invalid, fmt::format("CRIU log level {} is out of range 0 to 4", o.log_level));
  std::vector<std::string> args{action, "--images-dir", images_dir, "--work-dir", work_dir,
                                "--log-file", fmt::format("{}.log", action), fmt::format("-v{}", o.log_level)};
  if (o.shell_job) args.emplace_back("--shell-job");
  if (o.tcp_established) args.emplace_back("--tcp-established");
  if (o.ext_unix_sk) args.emplace_back("--ext-unix-sk");
  if (o.file_locks) args.emplace_back("--file-locks");
  switch (o.manage_cgroups) {
    case CgroupMode::criu_default: break;
    case CgroupMode::soft: args.emplace_back("--manage-cgroups=soft"); break;
    case CgroupMode::full: args.emplace_back("--manage-cgroups=full"); break;
    case CgroupMode::strict: args.emplace_back("--manage-cgroups=strict"); break;
    case CgroupMode::ignore: args.emplace_back("--manage-cgroups=ignore"); break;
    default: throw Error(Status::invalid, fmt::format("unknown cgroup mode {}", static_cast<int>(o.manage_cgroups)));
  }
  for (const auto& e : o.external) {
    if (e.empty() || e.front() == '-') throw Error(Status::invalid, fmt::format("bad --external value '{}'", e));
    args.emplace_back("--external");
    args.push_back(e);
  }
  return args;
}

}  // namespace

std::vector<std::string> criu_dump_args(pid_t pid, const std::string& images_dir, const std::string& work_dir,
                                        const CriuOptions& o) {
  auto args = common_args("dump", images_dir, work_dir, o);
  args.insert(args.begin() + 1, {"--tree", std::to_string(pid)});
  // Without leave_running the tree is left stopped, not killed: the library kills it only once
  // the checkpoint is signed and in place, and resumes it if anything fails before that.
  args.emplace_back(o.leave_running ? "--leave-running" : "--leave-stopped");
  return args;
}

std::vector<std::string> criu_restore_args(const std::string& images_dir, const std::string& work_dir,
                                           const CriuOptions& o) {
  auto args = common_args("restore", images_dir, work_dir, o);
  args.insert(args.end(), {"--pidfile", "restore.pid", "--restore-detached"});
  if (o.tcp_close) args.emplace_back("--tcp-close");
  switch (o.restore_mode) {
    case RestoreMode::detached: break;
    case RestoreMode::child: args.emplace_back("--restore-sibling"); break;
    default: throw Error(Status::invalid, fmt::format("unknown restore mode {}", static_cast<int>(o.restore_mode)));
  }
  return args;
}

}  // namespace nucleus::checkpoint
