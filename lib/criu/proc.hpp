// What /proc says of a process.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <span>
#include <vector>

#include "fs/unique_fd.hpp"

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
// A process tree signalled only through pidfds, so that a signal can only ever reach the processes
// that were listed, never one that reused a PID of theirs since. Each member is held by a pidfd
// opened as it is listed; past the descriptor limit (a tree of thousands), by its PID and start
// time, reached through a pidfd opened when it is signalled and used only if the process behind it
// started then (which a PID reused within the same clock tick could fool: the held pidfd cannot be).
class ProcessTree {
 public:
  ProcessTree() = default;
  // pid and its descendants, each kept only if its parent is a member already (a stranger that took
  // the PID of one that exited while the tree was listed is not). `root_pidfd`, if given, is the
  // root's pidfd taken earlier: if that process is gone by the end of the listing, the tree is empty.
  static ProcessTree open(pid_t pid, int root_pidfd = -1);
  // As open, for a tree that runs: each member is sent SIGSTOP, again while the tree still grows
  // (a fork racing the listing), so that what is returned is all of it, stopped.
  static ProcessTree open_stopped(pid_t pid, int root_pidfd = -1);

  bool empty() const noexcept { return members_.empty(); }
  std::size_t size() const noexcept { return members_.size(); }
  // Sends sig to every member that still lives.
  void signal(int sig) const noexcept;
  // SIGKILL to every member, then waits (up to 5 s) until each has died: gone, or a zombie for its
  // parent to reap. As `criu dump` without --leave-running would have returned.
  void kill() const noexcept;

 private:
  struct Member {
    pid_t pid;
    std::uint64_t start_ticks;
    UniqueFd pidfd;  // empty past the descriptor limit
  };
  // A pidfd for m (its own, or one opened now), or -1 if m has exited (its PID free, or someone
  // else's); `opened` keeps one opened now.
  static int reach(const Member& m, UniqueFd& opened) noexcept;
  std::vector<Member> members_;
};

// A pidfd for pid and what /proc says of it, refused (Status::not_found) unless the process started
// at expected_start_ticks (0: not checked) and is alive: what a dump acts on from then on.
struct HeldProcess {
  UniqueFd pidfd;
  ProcessStatus status;  // read after the pidfd was open: the pidfd is this process's
};
HeldProcess open_process(pid_t pid, std::uint64_t expected_start_ticks);

// Whether pid is `ancestor` or descends from it now (a process forked since a tree was listed).
bool descends_from(pid_t pid, pid_t ancestor);

// A pidfd for pid (-1 with errno set if there is no such process).
int open_pidfd(pid_t pid) noexcept;

// Closes every descriptor above standard error but those in `keep` (sorted in place; negative ones
// ignored). Allocates nothing: for a child just forked from a process that may have threads.
void close_all_but(std::span<int> keep) noexcept;
// Clock ticks since boot now, as /proc/PID/stat counts a process's start time.
std::uint64_t boot_ticks_now() noexcept;

// "process 123 (sleep, state S)", or "no process" if it is gone.
std::string describe_process(pid_t pid);

}  // namespace nucleus::checkpoint
