#include "subprocess.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <csignal>
#include <cstring>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs_util.hpp"

namespace nucleus::checkpoint {

bool ProcessResult::succeeded() const noexcept { return WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0; }

std::string ProcessResult::describe() const {
  if (timed_out) return "timed out and was killed";
  if (WIFEXITED(wait_status)) return fmt::format("exit code {}", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) return fmt::format("killed by signal {} ({})", WTERMSIG(wait_status), strsignal(WTERMSIG(wait_status)));
  return fmt::format("wait status {}", wait_status);
}

namespace {

struct SpawnActions {
  posix_spawn_file_actions_t actions{};
  SpawnActions() { posix_spawn_file_actions_init(&actions); }
  ~SpawnActions() { posix_spawn_file_actions_destroy(&actions); }
};

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Waits up to `timeout` for pid to exit without reaping it; kills it if it does not.
bool wait_exit(pid_t pid, std::chrono::milliseconds timeout) {
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) throw system_error(Status::internal, errno, "pidfd_open failed");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{pidfd.get(), POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0)));
    if (n > 0) return true;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::internal, errno, "poll on a pidfd failed");
    ::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
    return false;
  }
}

}  // namespace

ProcessResult run_process(const std::string& program, const std::string& program_name,
                          const std::vector<std::string>& args, const std::vector<int>& inherited_fds,
                          const std::vector<std::string>& env, std::chrono::milliseconds timeout) {
  UniqueFd output(::memfd_create("nucleus-checkpoint-output", MFD_CLOEXEC));
  if (!output) throw system_error(Status::io, errno, "cannot create a memfd for CRIU's output");
  UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!null) throw system_error(Status::io, errno, "cannot open /dev/null");

  SpawnActions fa;
  posix_spawn_file_actions_adddup2(&fa.actions, null.get(), STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&fa.actions, output.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&fa.actions, output.get(), STDERR_FILENO);
  for (int fd : inherited_fds) posix_spawn_file_actions_adddup2(&fa.actions, fd, fd);  // clears FD_CLOEXEC

  std::vector<std::string> argv_strings{program_name};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<std::string> env_strings = env;
  auto argv = c_strings(argv_strings);
  auto envp = c_strings(env_strings);

  pid_t pid = -1;
  if (const int err = posix_spawn(&pid, program.c_str(), &fa.actions, nullptr, argv.data(), envp.data()); err != 0)
    throw system_error(Status::criu, err, fmt::format("cannot start {}", program_name));

  ProcessResult result;
  if (timeout.count() > 0) result.timed_out = !wait_exit(pid, timeout);
  while (::waitpid(pid, &result.wait_status, 0) < 0) {
    if (errno != EINTR) throw system_error(Status::internal, errno, fmt::format("cannot wait for {}", program_name));
  }
  result.output.resize(64 * 1024);
  const ssize_t n = ::pread(output.get(), result.output.data(), result.output.size(), 0);
  result.output.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return result;
}

}  // namespace nucleus::checkpoint
