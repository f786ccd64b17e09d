#include "criu/proc.hpp"

#include <fcntl.h>
#include <signal.h>
#include <poll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <chrono>
#include <optional>
#include <set>
#include <thread>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"

namespace nucleus::checkpoint {

namespace {

// comm and state from /proc/<pid>/stat; comm is the text between the first '(' and the last ')'.
std::optional<ProcessStatus> stat_of(pid_t pid) {
  UniqueFd proc(::open(fmt::format("/proc/{}", pid).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!proc) return std::nullopt;
  std::string stat;
  try {
    stat = read_file_at(proc.get(), "stat", 4096, "process status");
  } catch (const Error&) {
    return std::nullopt;
  }
  const auto open = stat.find('(');
  const auto close = stat.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close + 2 >= stat.size()) return std::nullopt;
  ProcessStatus st;
  st.comm = stat.substr(open + 1, close - open - 1);
  st.state = stat[close + 2];
  st.parent = static_cast<pid_t>(std::strtol(stat.c_str() + close + 4, nullptr, 10));  // field 4
  // Field 22 of /proc/<pid>/stat; fields are counted from pid (1) and comm (2).
  std::size_t at = close + 2;
  for (int field = 3; field < 22 && at != std::string::npos; ++field) at = stat.find(' ', at + 1);
  if (at != std::string::npos) st.start_ticks = std::strtoull(stat.c_str() + at + 1, nullptr, 10);
  try {
    const std::string cmdline = read_file_at(proc.get(), "cmdline", 1 << 20, "process command line");
    for (std::size_t start = 0; start < cmdline.size();) {
      const auto end = cmdline.find('\0', start);
      st.cmdline.push_back(cmdline.substr(start, end - start));
      if (end == std::string::npos) break;
      start = end + 1;
    }
  } catch (const Error&) {
    // A process may exit between the two reads; its command line is then unknown.
  }
  return st;
}

}  // namespace

ProcessStatus read_process_status(pid_t pid, std::uint64_t expected_start_ticks) {
  auto st = stat_of(pid);
  if (!st) throw Error(Status::not_found, fmt::format("process {} does not exist; check the PID", pid));
  if (expected_start_ticks != 0 && st->start_ticks != expected_start_ticks)
    throw Error(Status::not_found, fmt::format("PID {} now belongs to another process ({}, started at tick {}, not {}): "
                                               "the container's process has exited and its PID was reused",
                                               pid, st->comm, st->start_ticks, expected_start_ticks));
  if (st->state == 'Z')
    throw Error(Status::not_found, fmt::format("process {} ({}) is a zombie: it has exited and there is nothing to "
                                               "checkpoint", pid, st->comm));
  return std::move(*st);
}

bool descends_from(pid_t pid, pid_t ancestor) {
  for (int depth = 0; depth < 4096 && pid > 1; ++depth) {
    if (pid == ancestor) return true;
    const auto st = stat_of(pid);
    if (!st) return false;
    pid = st->parent;
  }
  return pid == ancestor;
}

int open_pidfd(pid_t pid) noexcept { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

std::uint64_t boot_ticks_now() noexcept {
  struct timespec now {};
  ::clock_gettime(CLOCK_BOOTTIME, &now);
  const auto hz = static_cast<std::uint64_t>(::sysconf(_SC_CLK_TCK));
  return static_cast<std::uint64_t>(now.tv_sec) * hz + static_cast<std::uint64_t>(now.tv_nsec) * hz / 1000000000u;
}

bool process_exists(pid_t pid) { return stat_of(pid).has_value(); }

bool process_is_zombie(pid_t pid) {
  const auto st = stat_of(pid);
  return st && st->state == 'Z';
}

std::vector<pid_t> process_tree(pid_t pid) {
  std::vector<pid_t> tree{pid};
  for (std::size_t i = 0; i < tree.size() && tree.size() < 100000; ++i) {
    const UniqueFd tasks(::open(fmt::format("/proc/{}/task", tree[i]).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!tasks) continue;
    std::vector<std::string> tids;
    try {
      tids = list_dir(tasks.get(), "the process's tasks");
    } catch (const Error&) {
      continue;  // the process exited meanwhile
    }
    for (const auto& tid : tids) {
      std::string children;
      try {
        children = read_file_at(tasks.get(), fmt::format("{}/children", tid), 1 << 20, "task children");
      } catch (const Error&) {
        continue;  // the task exited meanwhile
      }
      for (const char* p = children.c_str(); *p;) {
        char* end = nullptr;
        const long child = std::strtol(p, &end, 10);
        if (end == p) break;
        tree.push_back(static_cast<pid_t>(child));
        p = end;
      }
    }
  }
  return tree;
}

namespace {

bool pidfd_alive(int pidfd) noexcept { return ::syscall(SYS_pidfd_send_signal, pidfd, 0, nullptr, 0) == 0; }

}  // namespace

ProcessTree ProcessTree::open(pid_t pid, int root_pidfd) {
  ProcessTree tree;
  std::set<pid_t> held;
  for (const pid_t p : process_tree(pid)) {
    const auto st = stat_of(p);
    if (!st || (p != pid && !held.contains(st->parent))) continue;
    held.insert(p);
    UniqueFd fd(open_pidfd(p));
    const auto now = fd ? stat_of(p) : std::nullopt;  // read after the pidfd is open
    if (fd && (!now || now->start_ticks != st->start_ticks)) continue;  // gone, its PID taken already
    tree.members_.push_back({p, st->start_ticks, std::move(fd)});
  }
  if (root_pidfd >= 0 && !pidfd_alive(root_pidfd)) tree.members_.clear();
  return tree;
}

int ProcessTree::reach(const Member& m, UniqueFd& opened) noexcept {
  if (m.pidfd) return m.pidfd.get();
  opened.reset(open_pidfd(m.pid));
  const auto st = opened ? stat_of(m.pid) : std::nullopt;  // read after the pidfd is open
  return st && st->start_ticks == m.start_ticks ? opened.get() : -1;
}

void ProcessTree::signal(int sig) const noexcept {
  for (const auto& m : members_) {
    UniqueFd opened;
    if (const int fd = reach(m, opened); fd >= 0) ::syscall(SYS_pidfd_send_signal, fd, sig, nullptr, 0);
  }
}

void close_all_but(std::span<int> keep) noexcept {
  std::sort(keep.begin(), keep.end());
  unsigned next = 3;  // standard input, output and error stay
  for (const int fd : keep) {
    if (fd < 0 || static_cast<unsigned>(fd) < next) continue;
    if (static_cast<unsigned>(fd) > next) ::close_range(next, static_cast<unsigned>(fd) - 1, 0);
    next = static_cast<unsigned>(fd) + 1;
  }
  ::close_range(next, ~0U, 0);
}

ProcessTree ProcessTree::open_stopped(pid_t pid, int root_pidfd) {
  for (int round = 0; round < 16; ++round) {
    const ProcessTree seen = open(pid, root_pidfd);
    seen.signal(SIGSTOP);
    if (open(pid, root_pidfd).size() == seen.size()) break;
  }
  return open(pid, root_pidfd);
}

void ProcessTree::kill() const noexcept {
  signal(SIGKILL);
  // A pidfd turns readable once its process has exited (a zombie counts).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (const auto& m : members_) {
    UniqueFd opened;
    const int fd = reach(m, opened);
    if (fd < 0) continue;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0)));
  }
}

HeldProcess open_process(pid_t pid, std::uint64_t expected_start_ticks) {
  UniqueFd fd(open_pidfd(pid));
  if (!fd) throw Error(Status::not_found, fmt::format("process {} does not exist; check the PID", pid));
  // Read after the pidfd is open: if this is the process expected, the pidfd is its.
  ProcessStatus status = read_process_status(pid, expected_start_ticks);
  return {std::move(fd), std::move(status)};
}

std::string describe_process(pid_t pid) {
  const auto st = stat_of(pid);
  if (!st) return "no process";
  return fmt::format("process {} ({}, state {})", pid, st->comm, st->state);
}

}  // namespace nucleus::checkpoint
