// A post-copy migration's page stream (the README's "Post-copy"). CRIU serves the memory it left
// out of the checkpoint (--lazy-pages) through a socket only the library holds, on both hosts: the
// source's dump answers page requests, the receiver's lazy-pages daemon makes them, from the
// restore on. Between the two the library relays over the migration's connection: requests go to
// the source as CRIU made them (checked first: CRIU's page server trusts them); pages come back in
// one crypto_secretstream keyed by crypto_kx between a key pair the source made for this dump (its
// public half in the signed metadata) and one the receiver made, each message bound to the very
// request it answers. Order, replay, truncation and any changed byte are caught: the receiver's
// CRIU sees no page that did not authenticate. The migration's own lines ("ready", "commit",
// "ok") travel between the pages, framed apart from them.
#pragma once

#include <sodium.h>

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "criu/lazy_pages.hpp"

namespace nucleus::checkpoint::transfer {

using PageKey = std::array<unsigned char, crypto_kx_PUBLICKEYBYTES>;

struct PageStreamStats {
  std::uint64_t pages = 0;     // pages (this host's size) sent (source) or received (receiver)
  std::uint64_t messages = 0;  // answers to requests
};

struct PageSession;  // the key pair, then the stream's state: guarded memory

// What both ends share: the connection, the lines between the pages, the first failure.
class PageStream {
 public:
  virtual ~PageStream();
  PageStream(const PageStream&) = delete;
  PageStream& operator=(const PageStream&) = delete;

  const PageKey& key() const noexcept;  // this side's public key
  // The other side's next line of the conversation (without its newline), by `deadline`; throws
  // Status::io if it is late or the page stream failed (with that failure's words).
  std::string read_line(std::chrono::steady_clock::time_point deadline, std::string_view peer);
  virtual void send_line(std::string_view line) = 0;
  // The conversation has nothing more to send: once the pages in this direction have ended too,
  // the connection's sending side is shut, which tells the other side this one is done.
  void done_talking();
  // Waits until both directions have ended: every page in, and the other side done talking. Throws
  // the first failure.
  PageStreamStats finish();
  // Ends the relay now for `why` (the conversation failed): the sockets are shut, as on a failure.
  void abort(std::exception_ptr why) noexcept;
  // The failure that ended the relay, if one did (rethrown); nothing otherwise.
  void rethrow_failure();

 protected:
  PageStream(int local_fd, int net_fd, std::chrono::milliseconds stall_timeout, std::function<void()> on_failure);
  void fail(std::exception_ptr why) noexcept;
  template <typename F>
  void guarded(F&& body) noexcept;
  void take_line(std::string line);  // a line read between the pages
  void reading_ended() noexcept;      // nothing more comes from the other host
  void send_net(const void* data, std::size_t size);  // whole, between other writers
  void writer_done();  // the conversation, or the pages this side sends, have ended

  int local_fd_, net_fd_;
  std::chrono::milliseconds stall_;
  std::unique_ptr<PageSession> session_;
  PageStreamStats stats_;
  std::thread to_net_, from_net_;

 private:
  std::function<void()> on_failure_;
  std::mutex mutex_;        // lines_, failure_, reading_ended_
  std::mutex write_mutex_;  // the connection's writers, writers_
  std::condition_variable lines_ready_;
  std::deque<std::string> lines_;
  std::once_flag failed_once_;
  std::exception_ptr failure_;
  bool reading_ended_ = false;
  int writers_ = 2;
};

// The source's end: between CRIU's page server (criu_fd, its --ps-socket's other end) and the
// receiver (net_fd). Made before the dump, whose signed metadata carries its key. The receiver may
// send nothing for `stall_timeout`, and leave it owing nothing (no request open) for as long summed
// over the whole transfer: one that asked slowly for ever would keep the source's copy stopped,
// and CRIU serving, for ever.
class PageSender : public PageStream {
 public:
  PageSender(int criu_fd, int net_fd, std::chrono::milliseconds stall_timeout);
  ~PageSender() override;
  // Keys the stream for the receiver's public key; returns the stream's header (hex) for the
  // receiver, which must have it before the relay starts.
  std::string key_exchange(const PageKey& receiver);
  // `lazy`: the memory the dump left out; a request for anything else is refused before CRIU
  // sees it (CRIU's page server crashes on a PID it did not dump, and hangs on pages it holds
  // that are not lazy).
  void start(LazyExtents lazy);
  void send_line(std::string_view line) override;
};

// The receiver's end: between the source (net_fd) and CRIU's lazy-pages daemon (daemon_fd). On any
// failure (a message that does not authenticate or answer its request, the source or the daemon
// gone, a stall) it calls `stop_tree` first, which must leave the restored tree (if any) dead, and
// only then lets go of the daemon. A stall is the source sending nothing for `stall_timeout` while
// a request waits for its answer, or within a message: while nothing is asked (a tree that leaves
// its memory alone) the source owes nothing.
class PageReceiver : public PageStream {
 public:
  PageReceiver(int daemon_fd, int net_fd, std::chrono::milliseconds stall_timeout, std::function<void()> stop_tree);
  ~PageReceiver() override;
  // Keys the stream from the source's public key (from the signed metadata) and its header.
  void key_exchange(const PageKey& source, std::string_view header_hex);
  void start();
  void send_line(std::string_view line) override;
};

// The 64 bytes a post-copy commit binds besides the nonce and the checkpoint: both public keys.
std::string page_keys_bound(const PageKey& source, const PageKey& receiver);

}  // namespace nucleus::checkpoint::transfer
