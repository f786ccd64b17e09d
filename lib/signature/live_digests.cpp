#include "signature/live_digests.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include <fmt/format.h>

namespace nucleus::checkpoint {

namespace {

constexpr std::uint64_t step_chunks = 2;  // per thread: hashed per file before events (and stop) are looked at again

}  // namespace

LiveDigests::LiveDigests(int dir_fd, std::uint64_t chunk_size, TwinChunks* twins)
    // CRIU keeps about one core busy while it writes; the others are free to hash.
    : dir_fd_(dir_fd), chunk_size_(chunk_size), twins_(twins), threads_(std::max(1U, hash_threads() - 1)) {
  inotify_.reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  const std::string dir = fmt::format("/proc/self/fd/{}", dir_fd);
  constexpr std::uint32_t events = IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO;
  if (!inotify_ || !wake_ || ::inotify_add_watch(inotify_.get(), dir.c_str(), events | IN_ONLYDIR) < 0) {
    inotify_.reset();  // follows nothing: signing hashes everything itself
    return;
  }
  try {
    follower_ = std::jthread([this](const std::stop_token& stop) { follow(stop); });
  } catch (const std::system_error&) {
    inotify_.reset();  // no thread to be had: the same
  }
}

LiveDigests::~LiveDigests() { halt(); }

void LiveDigests::halt() noexcept {
  if (!follower_.joinable()) return;
  follower_.request_stop();
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(wake_.get(), &one, sizeof one);  // wakes its poll
  follower_.join();
}

StartedDigests LiveDigests::stop() {
  halt();
  StartedDigests started;
  if (!inotify_) return started;
  // The writer has finished, so its last events are all queued now.
  if (trusted_) drain_events();
  for (const auto& [name, file] : files_)
    if (file.write_closes > 1) trusted_ = false;
  if (!trusted_) {
    // Not written the way CRIU writes: nothing hashed so far counts, chunks shared with other files
    // included; signing hashes every file from scratch.
    if (twins_) twins_->forget_all();
    files_.clear();
    return started;
  }
  for (auto& [name, file] : files_) started.emplace(std::pair{file.dev, file.ino}, std::move(file.digest));
  files_.clear();
  return started;
}

void LiveDigests::follow(const std::stop_token& stop) {
  try {
    while (!stop.stop_requested() && trusted_) {
      drain_events();
      if (!trusted_ || hash_some()) continue;
      pollfd fds[] = {{inotify_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
      while (::poll(fds, 2, -1) < 0 && errno == EINTR) {
      }
    }
  } catch (...) {
    trusted_ = false;  // out of memory, say: signing does it all
  }
}

void LiveDigests::drain_events() {
  alignas(inotify_event) char buffer[64 * 1024];
  for (;;) {
    const ssize_t n = ::read(inotify_.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // EAGAIN: nothing more queued
    for (const char* p = buffer; p < buffer + n;) {
      const auto* event = reinterpret_cast<const inotify_event*>(p);
      p += sizeof(inotify_event) + event->len;
      if (event->mask & IN_Q_OVERFLOW) trusted_ = false;  // events were lost
      if (event->len == 0) continue;
      const std::string name(event->name);
      if (event->mask & (IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)) {
        if (files_.erase(name) != 0) trusted_ = false;
      } else if (event->mask & IN_CLOSE_WRITE) {
        if (const auto it = files_.find(name); it != files_.end()) ++it->second.write_closes;
      } else if ((event->mask & IN_CREATE) && !(event->mask & IN_ISDIR)) {
        if (files_.erase(name) != 0) trusted_ = false;
        UniqueFd fd(::openat(dir_fd_, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
        struct stat st {};
        if (fd && ::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode))
          files_.emplace(name, File{std::move(fd), st.st_dev, st.st_ino, ChunkedFileDigest(chunk_size_), 0});
      }
    }
  }
}

bool LiveDigests::hash_some() {
  bool progressed = false;
  for (auto it = files_.begin(); it != files_.end();) {
    File& file = it->second;
    const std::uint64_t before = file.digest.hashed();
    struct stat st {};
    bool usable = ::fstat(file.fd.get(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) >= before;
    try {
      if (usable)
        file.digest.advance(file.fd.get(), std::min<std::uint64_t>(st.st_size, before + step_chunks * threads_ * chunk_size_),
                            threads_, it->first, {}, twins_);
    } catch (const std::exception&) {
      usable = false;
    }
    if (!usable) {  // shortened or unreadable: signing hashes it from scratch, and reports what is wrong
      trusted_ = false;
      return false;
    }
    progressed |= file.digest.hashed() != before;
    ++it;
  }
  return progressed;
}

}  // namespace nucleus::checkpoint
