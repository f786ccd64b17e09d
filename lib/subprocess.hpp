// Runs a program with a fixed environment and collects its exit status and output.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace nucleus::checkpoint {

struct ProcessResult {
  int wait_status = 0;
  bool timed_out = false;  // killed by run_process when its timeout passed
  std::string output;  // stdout and stderr, interleaved, at most 64 KiB

  bool succeeded() const noexcept;
  std::string describe() const;  // "exit code 1", "killed by signal 9"
};

// Starts `program` (argv[0] = program_name) with stdin on /dev/null and stdout/stderr into a
// memfd, so no pipe can block on a descendant that keeps it open. `inherited_fds` stay open in
// the child; `env` is its whole environment. Waits for it to exit, or with a non-zero timeout
// kills it (SIGKILL) once the timeout has passed.
ProcessResult run_process(const std::string& program, const std::string& program_name,
                          const std::vector<std::string>& args, const std::vector<int>& inherited_fds,
                          const std::vector<std::string>& env,
                          std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

}  // namespace nucleus::checkpoint
