// A dump that outlives its caller. From the moment CRIU starts until the library kills or resumes
// the tree, a caller that died would leave the tree stopped (CRIU dumps with --leave-stopped) and
// gigabytes of staging behind. So a small guardian process watches over that window: told of its
// parent's death (PR_SET_PDEATHSIG), it kills CRIU if it still runs, resumes the tree through the
// root's pidfd it inherited, and removes the staging folder; dismissed, it exits. Once a migration
// may let the tree run on another host, it is held: then the caller's death leaves the tree stopped.
#pragma once

#include <functional>

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
  HeldTree(pid_t root, const DumpGuardian& guardian, TreeKey signer) : root_(root), guardian_(guardian), signer_(signer) {}
  pid_t root() const noexcept { return root_; }
  TreeKey signer() const noexcept { return signer_; }  // the key that signed the dump
  void may_run_elsewhere(bool may) noexcept {
    may_run_elsewhere_ = may;
    guardian_.hold(may);
  }
  bool may_run_elsewhere() const noexcept { return may_run_elsewhere_; }

 private:
  pid_t root_;
  const DumpGuardian& guardian_;
  TreeKey signer_;
  bool may_run_elsewhere_ = false;
};
using HandOver = std::function<void(HeldTree&)>;

}  // namespace nucleus::checkpoint
