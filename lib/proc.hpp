// What /proc says of a process.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace nucleus::checkpoint {

struct ProcessStatus {
  std::string comm;
  char state = '?';  // R, S, D, Z, T, ...
  std::vector<std::string> cmdline;
};

// Throws Error(Status::not_found) if pid does not exist or is a zombie: nothing to checkpoint.
ProcessStatus read_process_status(pid_t pid);
bool process_exists(pid_t pid);
bool process_is_zombie(pid_t pid);
// "process 123 (sleep, state S)", or "no process" if it is gone.
std::string describe_process(pid_t pid);

}  // namespace nucleus::checkpoint
