// A dump that outlives its caller. From the moment CRIU starts until the library kills or resumes
// the tree, a caller that died would leave the tree stopped (CRIU dumps with --leave-stopped) and
// gigabytes of staging behind. So a small guardian process watches over that window: told of its
// parent's death (PR_SET_PDEATHSIG), it kills CRIU if it still runs, resumes the tree through the
// root's pidfd it inherited, and removes the staging folder; dismissed, it exits. Once a migration
// may let the tree run on another host, it is held: then the caller's death leaves the tree stopped.
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include <sys/types.h>

#include "fs/checkpoint_dir.hpp"
#include "fs/unique_fd.hpp"
#include "signature/chunked_signature.hpp"

namespace nucleus::checkpoint {

class DumpGuardian {
 public:
  // root_pidfd: the tree's root, held since before CRIU. The staging folder must outlive the guardian.
  DumpGuardian(pid_t root, int root_pidfd, const CheckpointDir& staging);
  ~DumpGuardian();  // dismisses it: the caller is there to deal with the tree
  DumpGuardian(const DumpGuardian&) = delete;
  DumpGuardian& operator=(const DumpGuardian&) = delete;

  // CRIU runs as `pid` (the guardian takes a pidfd for it at once, while it cannot be reused).
  void criu_started(pid_t pid) const noexcept;
  // CRIU has been waited for: nothing of it is left to kill.
  void criu_ended() const noexcept;
  // Whether the caller's death must leave the tree stopped (it may run elsewhere) or resume it.
  void hold(bool stopped) const noexcept;

 private:
  void tell(char what, pid_t pid = 0) const noexcept;

  UniqueFd parent_end_;
  pid_t pid_ = -1;
};

// The stopped tree a migration hands over (CriuRuntime::dump's hand_over): resumed if the hand-over
// fails, unless the receiver may already run it; then a failure, or the caller's death, leaves it
// stopped, since resuming it could run the workload twice.
class HeldTree {
 public:
  // held_by_criu: CRIU still holds the tree (a post-copy dump serves its memory until the receiver
  // has it all) and resumes it when it ends without success, or is killed; so once the tree may run
  // elsewhere it is sent SIGSTOP, which it takes when CRIU lets go of it.
  HeldTree(pid_t root, int root_pidfd, const DumpGuardian& guardian, TreeKey signer, bool held_by_criu)
      : root_(root), root_pidfd_(root_pidfd), guardian_(guardian), signer_(signer), held_by_criu_(held_by_criu) {}
  pid_t root() const noexcept { return root_; }
  TreeKey signer() const noexcept { return signer_; }  // the key that signed the dump
  void may_run_elsewhere(bool may) noexcept;
  bool may_run_elsewhere() const noexcept { return may_run_elsewhere_; }
  // Post-copy: CRIU runs as `criu_pidfd` (owned by the caller of dump).
  void criu_started(int criu_pidfd) noexcept { criu_pidfd_ = criu_pidfd; }
  // Post-copy, once the page stream failed: CRIU ends by itself when its socket is shut, unless it
  // hangs (its page server waits in splice for pages it does not have): then, after `grace`, it
  // is killed, which leaves the tree as CRIU's end would (resumed, or stopped once it may run
  // elsewhere).
  void end_criu(std::chrono::milliseconds grace) const noexcept;

 private:
  pid_t root_;
  int root_pidfd_;
  const DumpGuardian& guardian_;
  TreeKey signer_;
  bool held_by_criu_;
  bool may_run_elsewhere_ = false;
  int criu_pidfd_ = -1;
};

// What a migration does with the tree it dumps (CriuRuntime::dump).
struct HandOver {
  // Runs once the checkpoint is signed and in place, the tree still stopped: hands it over. The
  // tree is killed once this returns (and, post-copy, once `served` returns too), resumed if it
  // throws, unless it said through the HeldTree that the tree may run elsewhere.
  std::function<void(HeldTree&)> give;
  // Post-copy: CRIU's end of a socket through which CRIU serves the memory it left out of the
  // checkpoint (--lazy-pages --ps-socket) once `give` has returned; -1: a cold dump.
  int lazy_pages_socket = -1;
  std::string post_copy_key;  // post-copy: the page stream's key, recorded in the signed metadata
  // Post-copy: runs once CRIU has ended; throws unless every page reached the receiver.
  std::function<void(HeldTree&)> served;
  // Post-copy: CRIU was told "fail" at post-dump, and then waits on its socket all the same: end it.
  std::function<void()> refused;
};

}  // namespace nucleus::checkpoint
