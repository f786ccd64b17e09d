#include "criu/lazy_pages.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "criu/criu_args.hpp"
#include "criu/criu_log.hpp"
#include "criu/criu_tools.hpp"
#include "criu/proc.hpp"
#include "fs/fs_util.hpp"
#include "pagemap.pb-c.h"

namespace nucleus::checkpoint {

namespace {

using Clock = std::chrono::steady_clock;

// CRIU's page server pipes: PIPE_MAX_SIZE (819) pages, which the kernel rounds up to a power of
// two (4 MiB with 4 KiB pages).
std::uint64_t page_server_pipe() { return std::bit_ceil(819 * page_bytes()); }

constexpr const char* log_name = "lazy-pages.log";

constexpr std::size_t max_fds_per_word = 64;

// The keeper's whole life, in the forked child: system calls alone (the parent has threads).
[[noreturn]] void keep(int words, int page_socket) {
  int keep[] = {words, page_socket};
  close_all_but(keep);
  int root = -1;
  for (;;) {
    char what = 0;
    iovec iov{&what, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds_per_word)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(words, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the parent is gone without saying it is done
    if (what == 'd') ::_exit(0);
    // The root's pidfd ('p'); the others ('u', userfaultfds) are only held.
    const cmsghdr* c = CMSG_FIRSTHDR(&msg);
    if (what == 'p' && c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
        c->cmsg_len >= CMSG_LEN(sizeof root))
      std::memcpy(&root, CMSG_DATA(c), sizeof root);
  }
  // SIGKILL to a PID namespace's init: the kernel kills every other process of it, and the root
  // ends (its pidfd readable) only once they are gone.
  if (root >= 0) {
    ::syscall(SYS_pidfd_send_signal, root, SIGKILL, nullptr, 0);
    pollfd p{root, POLLIN, 0};
    ::poll(&p, 1, 5000);
  }
  ::_exit(0);
}

// Whether /proc's NSpid line in `text` (a process's status, or a pidfd's fdinfo) says the process
// is the init of a PID namespace below this one: its PID there, the last, is 1.
bool is_pid_namespace_init(const std::string& text) {
  constexpr std::string_view key = "\nNSpid:";
  const std::size_t at = text.find(key);
  if (at == std::string::npos) return false;
  const std::size_t end = std::min(text.find('\n', at + key.size()), text.size());
  std::istringstream fields(text.substr(at + key.size(), end - at - key.size()));
  std::vector<std::string> pids;
  for (std::string pid; fields >> pid;) pids.push_back(pid);
  return pids.size() >= 2 && pids.back() == "1";
}

// CRIU's image magics (criu/include/magic.h) and a pagemap entry's "lazy" flag (pagemap.h).
constexpr std::uint32_t img_common_magic = 0x54564319, img_service_magic = 0x55105940, pagemap_magic = 0x56084025;
constexpr std::uint32_t pe_lazy = 1U << 1;
constexpr std::size_t max_pagemap_image = 64 << 20;

std::uint32_t u32_at(const std::string& bytes, std::size_t at) {
  std::uint32_t value;
  std::memcpy(&value, bytes.data() + at, sizeof value);
  return value;
}

// One pagemap-PID.img: its head, then its entries, each a u32 size and a protobuf message.
std::vector<std::pair<std::uint64_t, std::uint64_t>> lazy_ranges_in(const std::string& image, const std::string& name) {
  const auto malformed = [&] { return Error(Status::integrity, fmt::format("CRIU's {} is not a pagemap image", name)); };
  std::size_t at = 0;
  if (image.size() < 8) throw malformed();
  if (u32_at(image, 0) == img_common_magic || u32_at(image, 0) == img_service_magic) at = 4;
  if (u32_at(image, at) != pagemap_magic) throw malformed();
  at += 4;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (bool head = true; at < image.size(); head = false) {
    if (image.size() - at < 4) throw malformed();
    const std::uint32_t size = u32_at(image, at);
    at += 4;
    if (size > image.size() - at) throw malformed();
    const auto* data = reinterpret_cast<const std::uint8_t*>(image.data() + at);
    at += size;
    if (head) {
      PagemapHead* h = pagemap_head__unpack(nullptr, size, data);
      if (!h) throw malformed();
      pagemap_head__free_unpacked(h, nullptr);
      continue;
    }
    PagemapEntry* e = pagemap_entry__unpack(nullptr, size, data);
    if (!e) throw malformed();
    const std::uint64_t pages = e->has_nr_pages ? e->nr_pages : e->compat_nr_pages;
    const bool lazy = e->has_flags && (e->flags & pe_lazy) != 0;
    const std::uint64_t start = e->vaddr;
    pagemap_entry__free_unpacked(e, nullptr);
    if (!lazy || pages == 0) continue;
    if (start % page_bytes() != 0 || pages > (~std::uint64_t{0} - start) / page_bytes()) throw malformed();
    ranges.emplace_back(start, start + pages * page_bytes());
  }
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<std::uint64_t, std::uint64_t>> merged;
  for (const auto& r : ranges) {
    if (!merged.empty() && r.first <= merged.back().second) merged.back().second = std::max(merged.back().second, r.second);
    else merged.push_back(r);
  }
  return merged;
}

}  // namespace

LazyExtents read_lazy_extents(int images_fd) {
  LazyExtents extents;
  for (const std::string& name : list_dir(images_fd, "checkpoint images directory")) {
    constexpr std::string_view prefix = "pagemap-", suffix = ".img";
    if (!name.starts_with(prefix) || !name.ends_with(suffix)) continue;
    const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    std::uint64_t pid = 0;
    const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
    if (error != std::errc() || end != digits.data() + digits.size()) continue;
    extents[pid] = lazy_ranges_in(read_file_at(images_fd, name, max_pagemap_image, "CRIU pagemap image"), name);
  }
  return extents;
}

bool is_lazy(const LazyExtents& extents, std::uint64_t pid, std::uint64_t vaddr, std::uint64_t bytes) {
  const auto it = extents.find(pid);
  if (it == extents.end() || bytes > ~std::uint64_t{0} - vaddr) return false;
  const auto& ranges = it->second;
  // The last range starting at or before vaddr.
  auto r = std::upper_bound(ranges.begin(), ranges.end(), std::make_pair(vaddr, ~std::uint64_t{0}));
  if (r == ranges.begin()) return false;
  --r;
  return vaddr >= r->first && vaddr + bytes <= r->second;
}

std::uint64_t page_bytes() {
  static const auto bytes = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  return bytes;
}

void require_lazy_page_server() {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw system_error(Status::io, errno, "cannot create a pipe");
  const std::uint64_t pipe_bytes = page_server_pipe();
  const int set = ::fcntl(p[0], F_SETPIPE_SZ, static_cast<int>(pipe_bytes));
  const int error = errno;
  ::close(p[0]);
  ::close(p[1]);
  if (set >= 0) return;
  std::string limit = "?";
  if (std::ifstream in("/proc/sys/fs/pipe-max-size"); in) in >> limit;
  throw Error(Status::unsupported,
              fmt::format("post-copy needs pipes of {} MiB for CRIU's page server, and this host allows {} bytes "
                          "(fs.pipe-max-size) without CAP_SYS_RESOURCE ({}); raise it with `sysctl -w "
                          "fs.pipe-max-size={}`, or migrate without post-copy",
                          pipe_bytes >> 20, limit, std::strerror(error), pipe_bytes));
}

void require_own_pid_namespace(pid_t root) {
  const std::string status = read_file_at(AT_FDCWD, fmt::format("/proc/{}/status", root), 64 << 10, "process status");
  if (is_pid_namespace_init(status)) return;
  throw Error(Status::unsupported,
              fmt::format("post-copy needs the tree in a PID namespace of its own, and process {} is not the init of "
                          "one: should the receiver fail while the memory still comes, killing that init is what "
                          "kills every process the tree has by then. Start the workload in its own PID namespace "
                          "(e.g. `unshare --pid --fork`, or a container), or migrate without post-copy",
                          root));
}

LazyPagesDaemon::LazyPagesDaemon(int criu_binary_fd, int images_fd, int page_socket, int relay_end,
                                 const CriuOptions& options, std::chrono::milliseconds timeout)
    : run_(make_private_run_dir(run_dir, "lazy-pages", "CRIU lazy-pages folder")) {
  // No destructor runs for a constructor that throws: nothing may be left then, neither the daemon
  // nor the keeper (started last, once nothing else can fail) nor the folder (but a failure's logs).
  try {
    start_daemon(criu_binary_fd, images_fd, page_socket, options, timeout);
    start_keeper(relay_end);
  } catch (...) {
    stop();
    remove_folder();
    throw;
  }
}

void LazyPagesDaemon::start_daemon(int criu_binary_fd, int images_fd, int page_socket, const CriuOptions& options,
                                   std::chrono::milliseconds timeout) {
  int status[2];
  if (::pipe2(status, O_CLOEXEC) != 0) throw system_error(Status::io, errno, "cannot create a pipe for CRIU");
  UniqueFd ready(status[0]), ready_writer(status[1]);
  const std::vector<std::string> args =
      criu_lazy_pages_args(proc_fd_path(child_fd(0)), proc_fd_path(child_fd(1)), child_fd(2), child_fd(3), options);
  const std::vector<int> fds{images_fd, run_.dir.get(), page_socket, ready_writer.get()};
  thread_ = std::thread([this, criu_binary_fd, args, fds] {
    ProcessWatch watch;
    watch.on_start = [&](pid_t pid) {
      const std::lock_guard lock(mutex_);
      pid_ = pid;
      pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
      changed_.notify_all();
    };
    ProcessResult r;
    try {
      r = run_process(criu_binary_fd, "criu", args, fds, criu_environment(), {}, ProcessGroup::own, &watch);
    } catch (const std::exception& e) {
      r.output = e.what();
    }
    const std::lock_guard lock(mutex_);
    result_ = std::move(r);
    changed_.notify_all();
  });
  {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return pidfd_ || result_; });
  }
  // Started or not, the daemon's copy alone: its end (or none) is the pipe's end.
  ready_writer.reset();
  // CRIU writes one byte to its status fd once it listens.
  const Clock::time_point deadline = Clock::now() + timeout;
  char byte = 1;
  pollfd p{ready.get(), POLLIN, 0};
  int n;
  while ((n = ::poll(&p, 1, static_cast<int>(std::max<long long>(
                                  std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count(),
                                  0)))) < 0 &&
         errno == EINTR) {
  }
  if (n <= 0 || ::read(ready.get(), &byte, 1) != 1 || byte != 0) {
    stop();  // for its log to be complete
    throw Error(Status::criu, failure(n == 0 ? "did not start in time" : "ended before it was ready"));
  }
}

void LazyPagesDaemon::start_keeper(int relay_end) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0)
    throw system_error(Status::io, errno, "cannot create the socket for the restored tree's keeper");
  UniqueFd ours(pair[0]), its(pair[1]);
  const pid_t pid = ::fork();
  if (pid < 0) throw system_error(Status::internal, errno, "cannot start the restored tree's keeper");
  if (pid == 0) keep(its.get(), relay_end);
  keeper_ = std::move(ours);
  keeper_pid_ = pid;
}

void LazyPagesDaemon::tell_keeper(char what, const std::vector<int>& fds) {
  for (std::size_t at = 0; at < fds.size() || (at == 0 && fds.empty()); at += max_fds_per_word) {
    const std::size_t count = std::min(max_fds_per_word, fds.size() - at);
    iovec iov{&what, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds_per_word)]{};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (count > 0) {
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * count);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * count);
      std::memcpy(CMSG_DATA(c), fds.data() + at, sizeof(int) * count);
    }
    if (::sendmsg(keeper_.get(), &msg, MSG_NOSIGNAL) != 1)
      throw system_error(Status::internal, errno, "cannot reach the restored tree's keeper");
    if (fds.empty()) break;
  }
}

LazyPagesDaemon::~LazyPagesDaemon() {
  // Done or not, the tree is dealt with by now; a keeper not told so kills it (again) on its way.
  keeper_.reset();
  if (keeper_pid_ > 0) ::waitpid(keeper_pid_, nullptr, 0);
  stop();
  userfaultfds_.clear();
  remove_folder();
}

void LazyPagesDaemon::remove_folder() noexcept {
  if (keep_ || !run_.dir) return;
  for (const char* f : {log_name, "lazy-pages.socket", "restore.log", "stats-restore", "restore.pid"})
    ::unlinkat(run_.dir.get(), f, 0);
  ::unlinkat(run_.parent.get(), run_.name.c_str(), AT_REMOVEDIR);
}

void LazyPagesDaemon::stop() noexcept {
  if (thread_.joinable()) {
    {
      const std::lock_guard lock(mutex_);
      if (pidfd_ && !result_) ::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
    }
    thread_.join();
  }
}

void LazyPagesDaemon::hold(int root_pidfd) {
  if (root_pidfd < 0) throw Error(Status::internal, "the restored tree's root has no pidfd to hold it by");
  // Read through the pidfd itself: this very process, whatever PIDs have been reused since.
  const std::string root =
      read_file_at(AT_FDCWD, fmt::format("/proc/self/fdinfo/{}", root_pidfd), 64 << 10, "restored root's pidfd");
  if (!is_pid_namespace_init(root))
    throw Error(Status::unsupported,
                "the restored tree is not a PID namespace of its own (its root is not the init of one), so nothing "
                "could kill every process it forks should this receiver fail while its memory still comes; migrate "
                "such a tree without post-copy");
  tell_keeper('p', {root_pidfd});
  int pidfd;
  {
    const std::lock_guard lock(mutex_);
    // A tree with little memory to follow may have it all before the restore has even returned.
    if (result_ && result_->succeeded()) return;
    if (result_ || !pidfd_) throw Error(Status::criu, failure("ended before the tree's memory was in"));
    pidfd = pidfd_.get();
  }
  try {
    const UniqueFd fd_dir(::open(fmt::format("/proc/{}/fd", pid_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd_dir) throw system_error(Status::criu, errno, "cannot list CRIU lazy-pages daemon's descriptors");
    for_each_name(fd_dir.get(), "CRIU lazy-pages daemon's descriptors", [&](std::string_view name) {
      std::array<char, 64> target{};
      const std::string fd(name);
      if (::readlinkat(fd_dir.get(), fd.c_str(), target.data(), target.size() - 1) < 0 ||
          std::string_view(target.data()) != "anon_inode:[userfaultfd]")
        return;
      UniqueFd copy(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, std::atoi(fd.c_str()), 0)));
      if (copy) userfaultfds_.push_back(std::move(copy));
    });
  } catch (const Error&) {
    // Ending while it is listed (its /proc folder goes at any step): done, when it brought every page in.
    userfaultfds_.clear();
    if (exited_by(Clock::now() + std::chrono::seconds(5)) && result_->succeeded()) return;
    throw;
  }
  // Listed through its PID: still that process only if it has not ended meanwhile (or ended well).
  if (exited_by(Clock::now())) {
    userfaultfds_.clear();
    if (result_->succeeded()) return;
    throw Error(Status::criu, failure("ended before the tree's memory was in"));
  }
  std::vector<int> held;
  for (const UniqueFd& fd : userfaultfds_) held.push_back(fd.get());
  tell_keeper('u', held);
}

bool LazyPagesDaemon::exited_by(Clock::time_point deadline) {
  std::unique_lock lock(mutex_);
  return changed_.wait_until(lock, deadline, [&] { return result_.has_value(); });
}

void LazyPagesDaemon::wait_done(std::chrono::milliseconds timeout) {
  if (!exited_by(Clock::now() + timeout)) throw Error(Status::criu, failure("did not end once every page was in"));
  if (!result_->succeeded()) throw Error(Status::criu, failure(fmt::format("failed ({})", result_->describe())));
  tell_keeper('d', {});
  userfaultfds_.clear();
}

std::string LazyPagesDaemon::keep_logs() {
  keep_ = true;
  return fmt::format("its logs are in {}", run_.path());
}

std::string LazyPagesDaemon::failure(std::string_view what) {
  const std::string output = result_ ? result_->output : std::string();
  const std::string errors = criu_errors(run_.dir.get(), log_name, output);
  keep_ = true;
  return fmt::format("CRIU's lazy-pages daemon {}: {}. Full log: {}/{}", what, errors, run_.path(), log_name);
}

}  // namespace nucleus::checkpoint
