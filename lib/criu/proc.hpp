// What /proc says of a process.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace nucleus::checkpoint {

struct ProcessStatus {
  std::string comm;
  char state = '?';  // R, S, D, Z, T, ...
  pid_t parent = 0;
  std::uint64_t start_ticks = 0;  // start time after boot, in clock ticks: tells a reused PID apart
  std::vector<std::string> cmdline;
};

// Throws Error(Status::not_found) if pid does not exist or is a zombie (nothing to checkpoint), or
// if expected_start_ticks is not 0 and differs from the process's: the PID was reused.
ProcessStatus read_process_status(pid_t pid, std::uint64_t expected_start_ticks = 0);
bool process_exists(pid_t pid);
bool process_is_zombie(pid_t pid);
// pid and all its descendants (through /proc/<pid>/task/<tid>/children), parents first.
std::vector<pid_t> process_tree(pid_t pid);
// Sends sig to every process of a tree collected by process_tree.
void signal_tree(const std::vector<pid_t>& tree, int sig) noexcept;
// SIGKILL to every process of the tree, then waits (up to 5 s) until each has died: gone, or a
// zombie for its parent to reap. As `criu dump` without --leave-running would have returned.
void kill_tree(const std::vector<pid_t>& tree) noexcept;

// Whether pid is `ancestor` or descends from it now (a process forked since a tree was listed).
bool descends_from(pid_t pid, pid_t ancestor);

// A pidfd for pid (-1 with errno set if there is no such process).
int open_pidfd(pid_t pid) noexcept;
// Clock ticks since boot now, as /proc/PID/stat counts a process's start time.
std::uint64_t boot_ticks_now() noexcept;

// "process 123 (sleep, state S)", or "no process" if it is gone.
std::string describe_process(pid_t pid);

}  // namespace nucleus::checkpoint
