// Runs a program with a fixed environment and exactly the descriptors it is given, and collects
// its exit status and output.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace nucleus::checkpoint {

struct ProcessResult {
  int exit_code = -1;      // when it exited
  int signal = 0;          // when a signal ended it
  bool timed_out = false;  // killed by run_process when its timeout passed
  bool status_lost = false;  // someone else reaped it (a caller's reaper, or SIGCHLD set to SIG_IGN)
  std::string output;      // stdout and stderr, interleaved, at most 64 KiB

  bool succeeded() const noexcept { return exit_code == 0; }
  std::string describe() const;  // "exit code 1", "killed by signal 9", "timed out and was killed"
  // Succeeded, or its status was lost and `output`/`log` holds `marker`, CRIU's own last word on
  // success.
  bool succeeded_by(std::string_view log, std::string_view marker) const noexcept;
};

// A descriptor watched while the program runs, and what to do each time it is readable
// (fd -1: none), and who to tell the program's PID as soon as it is started.
struct ProcessWatch {
  int fd = -1;
  std::function<void()> on_readable;
  std::function<void(pid_t)> on_start;
};

// Whether the program stays in the caller's process group, or gets one of its own whose every
// member still there once the program has ended (helpers it forked, left behind when it was
// killed) is killed too.
enum class ProcessGroup { caller, own };

// The descriptor number the child sees for inherited_fds[i].
constexpr int child_fd(std::size_t i) { return 3 + static_cast<int>(i); }

// Starts the program open at program_fd (executed through that descriptor, never looked up by
// path again; argv[0] = program_name) with stdin on /dev/null, stdout and stderr into a memfd (so
// no pipe can block on a descendant that keeps it open), inherited_fds[i] as child_fd(i), no other
// descriptor, default signal handling, and `env` as its whole environment. It is waited for
// through a pidfd; if a caller's reaper (waitpid(-1)) or an ignored SIGCHLD took its exit status
// first, status_lost says so. With a non-zero timeout it is killed (SIGKILL) once that passes.
ProcessResult run_process(int program_fd, const std::string& program_name, const std::vector<std::string>& args,
                          const std::vector<int>& inherited_fds, const std::vector<std::string>& env,
                          std::chrono::milliseconds timeout = std::chrono::milliseconds(0),
                          ProcessGroup group = ProcessGroup::caller, const ProcessWatch* watch = nullptr);

}  // namespace nucleus::checkpoint
