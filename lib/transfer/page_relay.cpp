#include "transfer/page_relay.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"
#include "signature/hex.hpp"
#include "signature/sodium.hpp"
#include "transfer/transfer_stream.hpp"

namespace nucleus::checkpoint::transfer {

// Guarded memory: the key pair's secret half, the session keys and the stream's state.
struct PageSession {
  PageKey public_key{};
  std::array<unsigned char, crypto_kx_SECRETKEYBYTES> secret_key{};
  std::array<unsigned char, crypto_kx_SESSIONKEYBYTES> rx{}, tx{};
  crypto_secretstream_xchacha20poly1305_state state{};

  PageSession() {
    init_sodium();
    crypto_kx_keypair(public_key.data(), secret_key.data());
  }
  static void* operator new(std::size_t size) { return alloc_key_bytes(size); }
  static void operator delete(void* p) noexcept { free_key_bytes(static_cast<unsigned char*>(p)); }
};

namespace {

using Clock = std::chrono::steady_clock;

// CRIU's lazy-pages daemon asks for at most 4 MiB at once (its MAX_XFER_LEN).
constexpr std::uint64_t max_request_bytes = 4 << 20;
std::uint64_t max_request_pages() { return max_request_bytes / page_bytes(); }
// CRIU's page server commands (criu/page-xfer.c) and the header of its answer to a GET.
constexpr std::uint32_t iov_get = 7, iov_close = 0x1023, iov_force_close = 0x1024;
constexpr std::uint32_t page_answer = 6 /* PS_IOV_ADD_F */ | ((1U << 2) /* PE_PRESENT */ << 16);
constexpr std::size_t sealed_overhead = crypto_secretstream_xchacha20poly1305_ABYTES;
// CRIU answers a request at once; one that waits this long hangs (its page server blocks in
// splice on a request for pages it does not hold).
constexpr std::chrono::seconds criu_stall{30};

// CRIU's struct page_server_iov as it travels (x86-64 and arm64: the u32 padded to 8).
struct RawIov {
  std::uint32_t cmd;
  std::uint32_t padding;
  std::uint64_t nr_pages, vaddr, dst_id;
};
static_assert(sizeof(RawIov) == 32);
constexpr std::size_t max_message = sizeof(RawIov) + max_request_bytes + sealed_overhead;
using IovBytes = std::array<unsigned char, sizeof(RawIov)>;

RawIov decode(const unsigned char* bytes) {
  RawIov iov;
  std::memcpy(&iov, bytes, sizeof iov);
  iov.padding = 0;
  return iov;
}

// What is sent on and authenticated: the fields alone, the padding zero.
IovBytes encode(RawIov iov) {
  iov.padding = 0;
  IovBytes bytes;
  std::memcpy(bytes.data(), &iov, sizeof iov);
  return bytes;
}

bool closes(const RawIov& iov) { return iov.cmd == iov_close || iov.cmd == iov_force_close; }

std::string in_seconds(std::chrono::milliseconds stall) {
  return fmt::format("{} s", std::chrono::duration_cast<std::chrono::seconds>(stall).count());
}

// Reads what is there of size bytes (at least one), waiting `stall` at most (zero: for ever);
// 0 at the end of the stream.
std::size_t read_some(int fd, unsigned char* data, std::size_t size, std::chrono::milliseconds stall,
                      std::string_view what) {
  for (;;) {
    if (stall.count() > 0) {
      pollfd pfd{fd, POLLIN, 0};
      const int n = ::poll(&pfd, 1, static_cast<int>(std::min<long long>(stall.count(), 0x7fffffff)));
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) throw Error(Status::io, fmt::format("{} sent nothing for {}", what, in_seconds(stall)));
    }
    const ssize_t n = ::recv(fd, data, size, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::io, errno, fmt::format("the connection to {} failed", what));
    return static_cast<std::size_t>(n);
  }
}

// Reads exactly size bytes, none taking longer than `stall`; false if the stream ended before
// the first (an error after it).
bool read_exact_or_end(int fd, void* data, std::size_t size, std::chrono::milliseconds stall, std::string_view what) {
  auto* p = static_cast<unsigned char*>(data);
  for (std::size_t got = 0; got < size;) {
    const std::size_t n = read_some(fd, p + got, size - got, stall, what);
    if (n == 0 && got == 0) return false;
    if (n == 0) throw Error(Status::io, fmt::format("{} closed the page stream before its end", what));
    got += n;
  }
  return true;
}

void read_exact(int fd, void* data, std::size_t size, std::chrono::milliseconds stall, std::string_view what) {
  if (!read_exact_or_end(fd, data, size, stall, what))
    throw Error(Status::io, fmt::format("{} closed the page stream before its end", what));
}

void send_all(int fd, const void* data, std::size_t size, std::string_view what) {
  const auto* p = static_cast<const unsigned char*>(data);
  while (size > 0) {
    const ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::io, errno, fmt::format("cannot send to {}", what));
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

// Requests sent and not yet answered, oldest first: CRIU answers in order.
class PendingRequests {
 public:
  void push(const RawIov& iov) {
    const std::lock_guard lock(mutex_);
    queue_.push_back({iov, Clock::now()});
    ++unanswered_;
    ready_.notify_one();
  }
  // The oldest; waits for one unless `wait` is false; nothing once stopped and empty.
  std::optional<RawIov> pop(bool wait) {
    std::unique_lock lock(mutex_);
    if (wait) ready_.wait(lock, [&] { return !queue_.empty() || stopped_; });
    if (queue_.empty()) return std::nullopt;
    const RawIov iov = queue_.front().iov;
    queue_.pop_front();
    return iov;
  }
  // The source: the answer to the oldest request taken is sent. Until then it is owed, however long
  // CRIU and the network take over it.
  void answered() {
    const std::lock_guard lock(mutex_);
    if (unanswered_ > 0 && --unanswered_ == 0) drained_ = Clock::now();
  }
  // When the oldest was pushed, if there is one.
  std::optional<Clock::time_point> oldest_since() {
    const std::lock_guard lock(mutex_);
    if (queue_.empty()) return std::nullopt;
    return queue_.front().since;
  }
  // The source: since when it has owed no answer, if it owes none.
  std::optional<Clock::time_point> drained_since() {
    const std::lock_guard lock(mutex_);
    if (unanswered_ > 0) return std::nullopt;
    return drained_;
  }
  void stop() {
    const std::lock_guard lock(mutex_);
    stopped_ = true;
    ready_.notify_all();
  }

 private:
  struct Pending {
    RawIov iov;
    Clock::time_point since;
  };
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Pending> queue_;
  std::size_t unanswered_ = 0;  // pushed, and not yet answered()
  Clock::time_point drained_ = Clock::now();
  bool stopped_ = false;
};

// Waits until fd has something to read (or its end). While a request waits for its answer, for
// `stall` at most after it was made or after `last_answer`, whichever is later; without a limit
// while nothing is asked.
void await_answer(int fd, PendingRequests& pending, Clock::time_point last_answer, std::chrono::milliseconds stall) {
  for (;;) {
    const std::optional<Clock::time_point> asked = pending.oldest_since();
    const Clock::time_point now = Clock::now();
    // Nothing asked: look again after `stall`, which is no later than the deadline of a request
    // made meanwhile.
    const Clock::time_point deadline = asked ? std::max(*asked, last_answer) + stall : now + stall;
    if (deadline <= now)
      throw Error(Status::io,
                  fmt::format("the source sent nothing for {} while pages were asked for", in_seconds(stall)));
    if (readable_by(fd, deadline)) return;
  }
}

// Waits until the receiver's next record comes (or its end), `stall` at most after its last one
// (`last_record`). The time it leaves the source owing nothing meanwhile is added to `idle`, the
// whole transfer's, which may not reach `stall` either: a receiver that asked slowly for ever would
// keep the source's copy stopped, and its CRIU serving, for ever.
void await_request(int fd, PendingRequests& pending, Clock::time_point last_record, std::chrono::milliseconds stall,
                   Clock::duration& idle) {
  const auto idle_since = [&](Clock::time_point now) {
    const std::optional<Clock::time_point> drained = pending.drained_since();
    return drained ? std::max(*drained, last_record) : now;  // still owing: idle from now at the earliest
  };
  for (;;) {
    const Clock::time_point now = Clock::now(), since = idle_since(now);
    if (idle + (now - since) >= stall)
      throw Error(Status::io, fmt::format("the receiver left the page stream idle for {} in all, asking for its "
                                          "memory slowly or not at all; the stream is stopped",
                                          in_seconds(stall)));
    if (now - last_record >= stall)
      throw Error(Status::io, fmt::format("the receiver sent nothing for {}", in_seconds(stall)));
    if (readable_by(fd, std::min(last_record + stall, since + (stall - idle)))) {
      const Clock::time_point arrived = Clock::now();
      idle += arrived - idle_since(arrived);
      return;
    }
  }
}

Error refused_request(const RawIov& iov, std::string_view why) {
  return Error(Status::integrity,
               fmt::format("the receiver asked for pages CRIU's page server must not be asked for (command {:#x}, "
                           "{} pages at {:#x} of PID {}): {}; the page stream is stopped",
                           iov.cmd, iov.nr_pages, iov.vaddr, iov.dst_id, why));
}

// A GET's bounds, checked before anything is spent on it.
template <typename Refuse>
void check_get(const RawIov& iov, Refuse refuse) {
  if (iov.nr_pages == 0 || iov.nr_pages > max_request_pages()) throw refuse("more than 4 MiB, or nothing");
  if (iov.vaddr % page_bytes() != 0) throw refuse("not at a page's start");
  if (iov.vaddr > ~std::uint64_t{0} - iov.nr_pages * page_bytes()) throw refuse("past the address space");
}

// A line between the pages: receiver to source, a record whose command is `line_cmd` and whose
// page count is the line's length; source to receiver, a length with `line_bit` set.
constexpr std::uint32_t line_cmd = 0x4e430001;
constexpr std::uint32_t line_bit = 0x80000000U;
constexpr std::size_t max_line = 64 * 1024;
constexpr std::size_t max_queued_lines = 8;

std::string read_line_of(int fd, std::uint64_t length, std::chrono::milliseconds stall, std::string_view what) {
  if (length == 0 || length > max_line)
    throw Error(Status::io, fmt::format("{} sent a line of {} bytes: not a migration's", what, length));
  std::string line(length, '\0');
  read_exact(fd, line.data(), line.size(), stall, what);
  return line;
}

}  // namespace

std::string page_keys_bound(const PageKey& source, const PageKey& receiver) {
  std::string bound(reinterpret_cast<const char*>(source.data()), source.size());
  bound.append(reinterpret_cast<const char*>(receiver.data()), receiver.size());
  return bound;
}

PageStream::PageStream(int local_fd, int net_fd, std::chrono::milliseconds stall_timeout,
                       std::function<void()> on_failure)
    : local_fd_(local_fd), net_fd_(net_fd), stall_(stall_timeout), session_(new PageSession),
      on_failure_(std::move(on_failure)) {
  // Requests are small and each waits for its answer: none may wait for Nagle's algorithm. (Not
  // TCP: nothing to set.)
  const int on = 1;
  ::setsockopt(net_fd_, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}

PageStream::~PageStream() {
  if (to_net_.joinable() || from_net_.joinable())
    abort(std::make_exception_ptr(Error(Status::io, "the migration ended before its page stream")));
  if (to_net_.joinable()) to_net_.join();
  if (from_net_.joinable()) from_net_.join();
}

const PageKey& PageStream::key() const noexcept { return session_->public_key; }

void PageStream::fail(std::exception_ptr why) noexcept {
  std::call_once(failed_once_, [&] {
    {
      const std::lock_guard lock(mutex_);
      failure_ = why;
      lines_ready_.notify_all();
    }
    if (on_failure_) on_failure_();
    ::shutdown(local_fd_, SHUT_RDWR);
    ::shutdown(net_fd_, SHUT_RDWR);
  });
}

void PageStream::abort(std::exception_ptr why) noexcept { fail(why); }

void PageStream::rethrow_failure() {
  const std::lock_guard lock(mutex_);
  if (failure_) std::rethrow_exception(failure_);
}

template <typename F>
void PageStream::guarded(F&& body) noexcept {
  try {
    body();
  } catch (...) {
    fail(std::current_exception());
  }
}

void PageStream::take_line(std::string line) {
  const std::lock_guard lock(mutex_);
  // The conversation has four lines at most: more, unread, are a flood.
  if (lines_.size() >= max_queued_lines) throw Error(Status::io, "the other host sent more lines than a migration has");
  lines_.push_back(std::move(line));
  lines_ready_.notify_all();
}

void PageStream::reading_ended() noexcept {
  const std::lock_guard lock(mutex_);
  reading_ended_ = true;
  lines_ready_.notify_all();
}

std::string PageStream::read_line(std::chrono::steady_clock::time_point deadline, std::string_view peer) {
  std::unique_lock lock(mutex_);
  if (!lines_ready_.wait_until(lock, deadline, [&] { return !lines_.empty() || failure_ || reading_ended_; }))
    throw Error(Status::io, fmt::format("{} did not answer in time", peer));
  if (lines_.empty()) {
    if (!failure_) throw Error(Status::io, fmt::format("{} closed the connection without an answer", peer));
    try {
      std::rethrow_exception(failure_);
    } catch (const std::exception& e) {
      throw Error(Status::io, fmt::format("the page stream to {} failed before its answer: {}", peer, e.what()));
    }
  }
  std::string line = std::move(lines_.front());
  lines_.pop_front();
  return line;
}

void PageStream::send_net(const void* data, std::size_t size) {
  const std::lock_guard lock(write_mutex_);
  send_all(net_fd_, data, size, "the other host");
}

void PageStream::writer_done() {
  const std::lock_guard lock(write_mutex_);
  if (--writers_ == 0) ::shutdown(net_fd_, SHUT_WR);
}

void PageStream::done_talking() { writer_done(); }

PageStreamStats PageStream::finish() {
  if (to_net_.joinable()) to_net_.join();
  if (from_net_.joinable()) from_net_.join();
  const std::lock_guard lock(mutex_);
  if (failure_) std::rethrow_exception(failure_);
  return stats_;
}

PageSender::PageSender(int criu_fd, int net_fd, std::chrono::milliseconds stall_timeout)
    : PageStream(criu_fd, net_fd, stall_timeout, {}) {}

PageSender::~PageSender() = default;

std::string PageSender::key_exchange(const PageKey& receiver) {
  PageSession& s = *session_;
  if (crypto_kx_server_session_keys(s.rx.data(), s.tx.data(), s.public_key.data(), s.secret_key.data(),
                                    receiver.data()) != 0)
    throw Error(Status::integrity, "the receiver's page stream key is not a valid public key");
  sodium_memzero(s.secret_key.data(), s.secret_key.size());
  std::array<unsigned char, crypto_secretstream_xchacha20poly1305_HEADERBYTES> header{};
  crypto_secretstream_xchacha20poly1305_init_push(&s.state, header.data(), s.tx.data());
  sodium_memzero(s.tx.data(), s.tx.size());
  return to_lower_hex(header);
}

void PageSender::send_line(std::string_view line) {
  const std::uint32_t prefix = static_cast<std::uint32_t>(line.size()) | line_bit;
  std::string frame(reinterpret_cast<const char*>(&prefix), sizeof prefix);
  frame.append(line);
  send_net(frame.data(), frame.size());
}

void PageReceiver::send_line(std::string_view line) {
  const IovBytes record = encode(RawIov{line_cmd, 0, line.size(), 0, 0});
  std::string frame(reinterpret_cast<const char*>(record.data()), record.size());
  frame.append(line);
  send_net(frame.data(), frame.size());
}

void PageSender::start(LazyExtents lazy) {
  auto pending = std::make_shared<PendingRequests>();
  // The receiver's requests, checked, on to CRIU; its lines, to read_line. After its CRIU closed the
  // stream only lines may come, until it is done.
  from_net_ = std::thread([this, pending, lazy = std::move(lazy)] {
    guarded([&] {
      bool closed = false;
      Clock::time_point last_record = Clock::now();
      Clock::duration idle{};
      for (;;) {
        IovBytes bytes;
        if (!closed) await_request(net_fd_, *pending, last_record, stall_, idle);
        if (!read_exact_or_end(net_fd_, bytes.data(), bytes.size(), stall_, "the receiver")) {
          if (closed) return;  // the receiver is done
          throw Error(Status::io, "the receiver closed the page stream before its end");
        }
        const RawIov iov = decode(bytes.data());
        if (iov.cmd == line_cmd) {
          take_line(read_line_of(net_fd_, iov.nr_pages, stall_, "the receiver"));
          last_record = Clock::now();
          continue;
        }
        const auto refuse = [&](std::string_view why) { return refused_request(iov, why); };
        if (closed) throw refuse("the page stream was closed");
        if (!closes(iov)) {
          if (iov.cmd != iov_get) throw refuse("not a request for pages");
          check_get(iov, refuse);
          if (!is_lazy(lazy, iov.dst_id, iov.vaddr, iov.nr_pages * page_bytes()))
            throw refuse("not memory the dump left out");
        }
        pending->push(iov);
        last_record = Clock::now();
        const IovBytes canonical = encode(iov);
        send_all(local_fd_, canonical.data(), canonical.size(), "CRIU's page server");
        closed = closes(iov);
      }
    });
    pending->stop();  // what is queued is still answered
    reading_ended();
  });
  // CRIU's answers, in order, each sealed to the request it answers.
  to_net_ = std::thread([this, pending] {
    guarded([&] {
      std::vector<unsigned char> plain(sizeof(RawIov) + max_request_bytes), sealed(max_message + 4);
      for (;;) {
        const std::optional<RawIov> request = pending->pop(true);
        if (!request) return;  // the other direction ended first: its failure says why
        std::size_t length;
        unsigned char tag = 0;
        if (closes(*request)) {
          read_exact(local_fd_, plain.data(), sizeof(std::int32_t), criu_stall, "CRIU's page server");
          length = sizeof(std::int32_t);
          tag = crypto_secretstream_xchacha20poly1305_TAG_FINAL;
        } else {
          read_exact(local_fd_, plain.data(), sizeof(RawIov), criu_stall, "CRIU's page server");
          const RawIov answer = decode(plain.data());
          if (answer.cmd != page_answer || answer.vaddr != request->vaddr || answer.dst_id != request->dst_id ||
              answer.nr_pages == 0 || answer.nr_pages > request->nr_pages)
            throw Error(Status::criu, fmt::format("CRIU's page server answered a request for {} pages at {:#x} of PID "
                                                  "{} with another ({:#x}, {} pages at {:#x})",
                                                  request->nr_pages, request->vaddr, request->dst_id, answer.cmd,
                                                  answer.nr_pages, answer.vaddr));
          length = sizeof(RawIov) + answer.nr_pages * page_bytes();
          read_exact(local_fd_, plain.data() + sizeof(RawIov), length - sizeof(RawIov), criu_stall,
                     "CRIU's page server");
          stats_.pages += answer.nr_pages;
        }
        const IovBytes ad = encode(*request);
        unsigned long long sealed_length = 0;
        crypto_secretstream_xchacha20poly1305_push(&session_->state, sealed.data() + 4, &sealed_length, plain.data(),
                                                   length, ad.data(), ad.size(), tag);
        const auto prefix = static_cast<std::uint32_t>(sealed_length);
        std::memcpy(sealed.data(), &prefix, 4);
        send_net(sealed.data(), 4 + sealed_length);
        pending->answered();
        ++stats_.messages;
        if (tag == crypto_secretstream_xchacha20poly1305_TAG_FINAL) return writer_done();
      }
    });
  });
}

PageReceiver::PageReceiver(int daemon_fd, int net_fd, std::chrono::milliseconds stall_timeout,
                           std::function<void()> stop_tree)
    : PageStream(daemon_fd, net_fd, stall_timeout, std::move(stop_tree)) {}

PageReceiver::~PageReceiver() = default;

void PageReceiver::key_exchange(const PageKey& source, std::string_view header_hex) {
  PageSession& s = *session_;
  const auto header = array_from_lower_hex<crypto_secretstream_xchacha20poly1305_HEADERBYTES>(header_hex);
  if (!header) throw Error(Status::io, "the source sent no page stream header");
  if (crypto_kx_client_session_keys(s.rx.data(), s.tx.data(), s.public_key.data(), s.secret_key.data(),
                                    source.data()) != 0)
    throw Error(Status::integrity, "the checkpoint's page stream key is not a valid public key");
  sodium_memzero(s.secret_key.data(), s.secret_key.size());
  if (crypto_secretstream_xchacha20poly1305_init_pull(&s.state, header->data(), s.rx.data()) != 0)
    throw Error(Status::integrity, "the source's page stream header is not valid");
  sodium_memzero(s.rx.data(), s.rx.size());
}

void PageReceiver::start() {
  auto pending = std::make_shared<PendingRequests>();
  // CRIU's requests on to the source.
  to_net_ = std::thread([this, pending] {
    guarded([&] {
      for (;;) {
        IovBytes bytes;
        read_exact(local_fd_, bytes.data(), bytes.size(), {}, "CRIU's lazy-pages daemon");
        const RawIov iov = decode(bytes.data());
        if (!closes(iov)) {
          const auto odd = [&](std::string_view why) {
            return Error(Status::criu, fmt::format("CRIU's lazy-pages daemon made a request the page stream does not "
                                                   "carry (command {:#x}, {} pages): {}", iov.cmd, iov.nr_pages, why));
          };
          if (iov.cmd != iov_get) throw odd("not a request for pages");
          check_get(iov, odd);
        }
        pending->push(iov);
        const IovBytes canonical = encode(iov);
        send_net(canonical.data(), canonical.size());
        if (closes(iov)) return writer_done();
      }
    });
  });
  // The source's answers, each authenticated as the answer to the oldest open request, and its
  // lines; after the stream's last message only lines, until the source is done.
  from_net_ = std::thread([this, pending] {
    guarded([&] {
      std::vector<unsigned char> sealed(max_message), plain(max_message);
      bool ended = false;
      Clock::time_point last_answer = Clock::now();
      for (;;) {
        std::uint32_t length = 0;
        if (!ended) await_answer(net_fd_, *pending, last_answer, stall_);  // after it, its end is owed
        if (!read_exact_or_end(net_fd_, &length, sizeof length, stall_, "the source")) {
          if (ended) return;  // the source is done
          throw Error(Status::io, "the source closed the page stream before its end");
        }
        if (length & line_bit) {
          take_line(read_line_of(net_fd_, length & ~line_bit, stall_, "the source"));
          continue;
        }
        if (ended) throw Error(Status::integrity, "the source sent pages after the page stream's end");
        if (length < sealed_overhead || length > max_message)
          throw Error(Status::integrity, fmt::format("the source's page message of {} bytes is not one (at most {})",
                                                     length, max_message));
        read_exact(net_fd_, sealed.data(), length, stall_, "the source");
        last_answer = Clock::now();
        const std::optional<RawIov> request = pending->pop(false);
        if (!request) throw Error(Status::integrity, "the source sent pages nobody asked for");
        const IovBytes ad = encode(*request);
        unsigned long long plain_length = 0;
        unsigned char tag = 0;
        if (crypto_secretstream_xchacha20poly1305_pull(&session_->state, plain.data(), &plain_length, &tag,
                                                       sealed.data(), length, ad.data(), ad.size()) != 0)
          throw Error(Status::integrity, fmt::format("page message {} does not authenticate as the source's answer to "
                                                     "the request it follows (changed, replayed, reordered or forged)",
                                                     stats_.messages + 1));
        ++stats_.messages;
        if (closes(*request)) {
          if (tag != crypto_secretstream_xchacha20poly1305_TAG_FINAL || plain_length != sizeof(std::int32_t))
            throw Error(Status::integrity, "the source's answer to the end of the page stream is not its last");
          send_all(local_fd_, plain.data(), plain_length, "CRIU's lazy-pages daemon");
          ended = true;
          continue;
        }
        const RawIov answer = plain_length >= sizeof(RawIov) ? decode(plain.data()) : RawIov{};
        if (tag != crypto_secretstream_xchacha20poly1305_TAG_MESSAGE || answer.cmd != page_answer ||
            answer.vaddr != request->vaddr || answer.dst_id != request->dst_id || answer.nr_pages == 0 ||
            answer.nr_pages > request->nr_pages || plain_length != sizeof(RawIov) + answer.nr_pages * page_bytes())
          throw Error(Status::integrity, fmt::format("page message {} does not answer its request ({} pages at {:#x} "
                                                     "of PID {})", stats_.messages, request->nr_pages, request->vaddr,
                                                     request->dst_id));
        send_all(local_fd_, plain.data(), plain_length, "CRIU's lazy-pages daemon");
        stats_.pages += answer.nr_pages;
      }
    });
    reading_ended();
  });
}

}  // namespace nucleus::checkpoint::transfer
