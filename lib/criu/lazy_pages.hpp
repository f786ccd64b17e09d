// CRIU's post-copy ("lazy pages") on both hosts: what the source must have before it dumps that
// way, and the receiver's lazy-pages daemon, which gives the restored tree its memory as the tree
// touches it and fetches the rest in the background, through a page socket only the library holds.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nucleus/checkpoint/criu_options.hpp>

#include "criu/runtime_support.hpp"
#include "criu/subprocess.hpp"
#include "fs/unique_fd.hpp"

namespace nucleus::checkpoint {

// The memory a post-copy dump left out, by process (the PIDs CRIU's images use): for each, its
// lazy ranges [start, end) in bytes, sorted, adjacent ones merged. What the receiver may ask for.
using LazyExtents = std::map<std::uint64_t, std::vector<std::pair<std::uint64_t, std::uint64_t>>>;
// Read from the dump's pagemap-PID.img files in the images folder (the checkpoint's own, signed).
LazyExtents read_lazy_extents(int images_fd);
// Whether [vaddr, vaddr + bytes) of process `pid` lies within one of its lazy ranges.
bool is_lazy(const LazyExtents& extents, std::uint64_t pid, std::uint64_t vaddr, std::uint64_t bytes);

// This host's page size (sysconf): the unit CRIU's pagemap entries and page requests count in.
std::uint64_t page_bytes();

// Throws Status::unsupported, saying what to change, unless CRIU's page server could serve lazy
// pages from this process: it sets its pipes to 819 pages (F_SETPIPE_SZ; 4 MiB with 4 KiB pages),
// which needs fs.pipe-max-size that large or CAP_SYS_RESOURCE; without it CRIU fails at the first
// page.
void require_lazy_page_server();

// Throws Status::unsupported, saying what to change, unless the tree rooted at `root` is a PID
// namespace of its own (its root that namespace's init). Should the receiver die while the tree's
// memory is still coming, its keeper kills the restored root, and the kernel then kills every
// process of the namespace, however many the tree has and whenever it forked them: a tree that
// shares its PID namespace could leave processes running on zero pages.
void require_own_pid_namespace(pid_t root);

// `criu lazy-pages` for one restore: started on the verified checkpoint's images in a private work
// folder, which the restore must be given as its work dir (CRIU finds the daemon there), with its
// page server the other end of page_socket: relay_end.
class LazyPagesDaemon {
 public:
  // Returns once the daemon listens; throws with its log if it exits first or takes longer than
  // `timeout`. Its keeper (below) starts last: a constructor that throws leaves none behind.
  LazyPagesDaemon(int criu_binary_fd, int images_fd, int page_socket, int relay_end, const CriuOptions& options,
                  std::chrono::milliseconds timeout);
  // Kills it if it still runs (after the tree, which the caller has dealt with), and removes the
  // folder unless a failure's logs are kept there.
  ~LazyPagesDaemon();
  LazyPagesDaemon(const LazyPagesDaemon&) = delete;
  LazyPagesDaemon& operator=(const LazyPagesDaemon&) = delete;

  std::string work_path() const { return run_.path(); }
  // Once the restore has returned, the tree still stopped: duplicates of the daemon's
  // userfaultfds, held until it is done. Should the daemon die, the tree's missing pages then block
  // instead of reading as zeros (the kernel zero-fills a range whose userfaultfd is gone). And
  // should this process die, its keeper (below) kills the tree's root, and with it its PID
  // namespace, before the daemon can go. Throws (Status::unsupported) unless the root is a PID
  // namespace's init (the caller kills the tree, still stopped), or unless the daemon still runs.
  void hold(int root_pidfd);
  // Waits (up to `timeout`) for the daemon to end once every page is in; throws with its log unless
  // it succeeded.
  void wait_done(std::chrono::milliseconds timeout);
  // Where its logs stay after a failure.
  std::string keep_logs();

 private:
  void start_daemon(int criu_binary_fd, int images_fd, int page_socket, const CriuOptions& options,
                    std::chrono::milliseconds timeout);
  void stop() noexcept;           // kills the daemon if it still runs, and waits for it
  void remove_folder() noexcept;  // unless a failure's logs are kept there
  bool exited_by(std::chrono::steady_clock::time_point deadline);
  std::string failure(std::string_view what);

  // A small process forked once the daemon listens, which outlives this one: it holds a copy of the
  // daemon's page socket (so the daemon sees no end while it lives), and the tree root's pidfd and
  // the userfaultfds it is sent. When this process goes without saying it is done (its end of
  // `keeper_` closes), it kills the root (the kernel kills the rest of its PID namespace first),
  // waits for it to die, and only then exits, letting go of the rest.
  void start_keeper(int page_socket);
  void tell_keeper(char what, const std::vector<int>& fds);

  PrivateRunDir run_;
  UniqueFd keeper_;
  pid_t keeper_pid_ = -1;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable changed_;
  pid_t pid_ = 0;
  UniqueFd pidfd_;
  std::optional<ProcessResult> result_;
  std::vector<UniqueFd> userfaultfds_;
  bool keep_ = false;
};

}  // namespace nucleus::checkpoint
