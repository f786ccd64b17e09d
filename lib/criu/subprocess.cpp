#include "criu/subprocess.hpp"

#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace nucleus::checkpoint {

bool ProcessResult::succeeded_by(std::string_view log, std::string_view marker) const noexcept {
  return succeeded() || (status_lost && !timed_out &&
                         (log.find(marker) != std::string_view::npos || output.find(marker) != std::string::npos));
}

std::string ProcessResult::describe() const {
  if (timed_out) return "timed out and was killed";
  if (status_lost) return "its exit status was taken by another wait() in this process";
  if (signal != 0) return fmt::format("killed by signal {} ({})", signal, strsignal(signal));
  return fmt::format("exit code {}", exit_code);
}

namespace {

// A copy numbered above every number the child's descriptors are moved to (3 + count, and the
// program after them), so no dup2 there overwrites a source.
UniqueFd high_copy(int fd, std::size_t count) {
  UniqueFd copy(::fcntl(fd, F_DUPFD_CLOEXEC, static_cast<int>(std::max<std::size_t>(64, 3 + count + 1))));
  if (!copy) throw system_error(Status::io, errno, "cannot duplicate a descriptor for CRIU");
  return copy;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// In the new process: only async-signal-safe calls from here to execveat.
[[noreturn]] void exec_child(int null_fd, int output_fd, int program_fd, const int* sources, std::size_t count,
                             char* const* argv, char* const* envp, ProcessGroup group) {
  if (group == ProcessGroup::own && ::setpgid(0, 0) != 0) ::_exit(127);
  for (int sig = 1; sig < NSIG; ++sig) {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(sig, &dfl, nullptr);  // fails harmlessly for SIGKILL, SIGSTOP and glibc's own
  }
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  if (::dup2(null_fd, 0) < 0 || ::dup2(output_fd, 1) < 0 || ::dup2(output_fd, 2) < 0) ::_exit(127);
  for (std::size_t i = 0; i < count; ++i)
    if (::dup2(sources[i], child_fd(i)) < 0) ::_exit(127);
  const int program = child_fd(count);
  if (::dup2(program_fd, program) < 0) ::_exit(127);
  ::syscall(SYS_close_range, program + 1, ~0U, 0);
  ::syscall(SYS_execveat, program, "", argv, envp, AT_EMPTY_PATH);
  ::_exit(127);
}

// fork(), but with a pidfd for the child, so that it is waited for through that alone. clone3
// first; where a seccomp filter refuses it (Docker's default profile answers ENOSYS, older ones
// EPERM), the older clone(), which returns the pidfd through its parent_tid argument (the third
// on x86-64 and arm64).
long fork_with_pidfd(int& pidfd) {
  clone_args ca{};
  ca.flags = CLONE_PIDFD;
  ca.pidfd = reinterpret_cast<std::uint64_t>(&pidfd);
  ca.exit_signal = SIGCHLD;
  const long pid = ::syscall(SYS_clone3, &ca, sizeof ca);
#if defined(__x86_64__) || defined(__aarch64__)
  if (pid < 0 && (errno == ENOSYS || errno == EPERM)) return ::syscall(SYS_clone, CLONE_PIDFD | SIGCHLD, nullptr, &pidfd, nullptr, nullptr);
#endif
  return pid;
}

// Waits up to `timeout` (0: forever) for the process to exit, serving `watch` meanwhile; kills
// the process once the timeout passes.
bool wait_exit(int pidfd, std::chrono::milliseconds timeout, const ProcessWatch* watch) {
  if (timeout.count() <= 0 && !watch) return true;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p[2] = {{pidfd, POLLIN, 0}, {watch ? watch->fd : -1, POLLIN, 0}};
    const int n = ::poll(p, 2, timeout.count() <= 0 ? -1 : static_cast<int>(std::max<std::int64_t>(left.count(), 0)));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::internal, errno, "poll on a pidfd failed");
    if (n > 0 && p[0].revents != 0) return true;
    if (n > 0 && p[1].revents != 0 && watch->fd >= 0) {
      watch->on_readable();
      continue;
    }
    ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
    return false;
  }
}

}  // namespace

ProcessResult run_process(int program_fd, const std::string& program_name, const std::vector<std::string>& args,
                          const std::vector<int>& inherited_fds, const std::vector<std::string>& env,
                          std::chrono::milliseconds timeout, ProcessGroup group, const ProcessWatch* watch) {
  UniqueFd output(::memfd_create("nucleus-checkpoint-output", MFD_CLOEXEC));
  if (!output) throw system_error(Status::io, errno, "cannot create a memfd for CRIU's output");
  UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!null) throw system_error(Status::io, errno, "cannot open /dev/null");
  const std::size_t count = inherited_fds.size();
  const UniqueFd null_high = high_copy(null.get(), count), output_high = high_copy(output.get(), count),
                 program_high = high_copy(program_fd, count);
  std::vector<UniqueFd> sources;
  std::vector<int> source_numbers;
  for (int fd : inherited_fds) {
    sources.push_back(high_copy(fd, count));
    source_numbers.push_back(sources.back().get());
  }

  std::vector<std::string> argv_strings{program_name};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<std::string> env_strings = env;
  const auto argv = c_strings(argv_strings);
  const auto envp = c_strings(env_strings);

  // No signal handler of the caller may run in the child before it has reset them.
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  int pidfd_raw = -1;
  const long pid = fork_with_pidfd(pidfd_raw);
  if (pid == 0)
    exec_child(null_high.get(), output_high.get(), program_high.get(), source_numbers.data(), source_numbers.size(),
               argv.data(), envp.data(), group);
  const int clone_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) throw system_error(Status::internal, clone_errno, fmt::format("cannot start {}", program_name));
  const UniqueFd pidfd(pidfd_raw);
  if (watch && watch->on_start) watch->on_start(static_cast<pid_t>(pid));

  ProcessResult result;
  result.timed_out = !wait_exit(pidfd.get(), timeout, watch);
  siginfo_t info{};
  int rc;
  while ((rc = ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd.get()), &info, WEXITED | __WALL)) < 0 &&
         errno == EINTR) {
  }
  if (rc < 0 && errno != ECHILD)
    throw system_error(Status::internal, errno, fmt::format("cannot wait for {}", program_name));
  if (rc < 0) result.status_lost = true;
  else if (info.si_code == CLD_EXITED) result.exit_code = info.si_status;
  else result.signal = info.si_status;
  // The group outlives its leader while any member does; none belongs to anyone else.
  if (group == ProcessGroup::own) ::kill(-static_cast<pid_t>(pid), SIGKILL);
  result.output.resize(64 * 1024);
  const ssize_t n = ::pread(output.get(), result.output.data(), result.output.size(), 0);
  result.output.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return result;
}

}  // namespace nucleus::checkpoint
