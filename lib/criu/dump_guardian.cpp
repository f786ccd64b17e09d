#include "criu/dump_guardian.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "criu/proc.hpp"

namespace nucleus::checkpoint {

namespace {

// What the parent tells its guardian: one letter and a PID, fixed size.
struct Word {
  char what;  // 's' CRIU started (pid), 'e' CRIU ended, 'h' hold the tree stopped (pid != 0) or not, 'd' dismissed
  pid_t pid;
};

// The guardian's body, in the forked child: follows its parent's words until dismissed, or until
// the parent dies (the death signal, or the pipe's end without a word), and then acts.
[[noreturn]] void guard(pid_t parent, int words, pid_t root, int root_pidfd, const CheckpointDir& staging) {
  // Out of the caller's session and process group: a Ctrl-C or a group kill meant for the caller
  // must not take the guardian with it.
  ::setsid();
  // The caller's other descriptors (its sockets, its pipes) must not live on in the guardian: a
  // peer would wait for an end of stream that the guardian holds off.
  int keep[] = {words, root_pidfd, staging.parent(), staging.dir(), staging.images()};
  close_all_but(keep);
  sigset_t death;
  sigemptyset(&death);
  sigaddset(&death, SIGUSR2);
  ::sigprocmask(SIG_BLOCK, &death, nullptr);
  const int death_fd = ::signalfd(-1, &death, SFD_CLOEXEC);
  ::prctl(PR_SET_PDEATHSIG, SIGUSR2);
  ::prctl(PR_SET_NAME, "nc-dump-guard");
  int criu = -1;  // a pidfd while CRIU runs
  bool hold = false;
  bool parent_died = ::getppid() != parent;  // died before the death signal was asked for
  while (!parent_died) {
    std::array<pollfd, 2> fds{{{words, POLLIN, 0}, {death_fd, POLLIN, 0}}};
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;  // cannot watch: act as if the parent had died rather than leave the tree stopped
    }
    if (fds[0].revents == 0) break;  // the death signal
    Word w{};
    const ssize_t n = ::read(words, &w, sizeof w);
    if (n < 0 && errno == EINTR) continue;
    if (n != sizeof w) break;  // the parent's end closed without a word: it died
    if (w.what == 'd') ::_exit(0);
    if (w.what == 'h') hold = w.pid != 0;
    if (w.what == 's') criu = static_cast<int>(::syscall(SYS_pidfd_open, w.pid, 0));
    if (w.what == 'e' && criu >= 0) {
      ::close(criu);
      criu = -1;
    }
  }
  if (criu >= 0) {
    // CRIU was dumping: stopped here (its parasite leaves the tree when CRIU goes), and waited for.
    ::syscall(SYS_pidfd_send_signal, criu, SIGKILL, nullptr, 0);
    pollfd gone{criu, POLLIN, 0};
    ::poll(&gone, 1, 10'000);
  }
  try {
    if (!hold) ProcessTree::open(root, root_pidfd).signal(SIGCONT);
  } catch (...) {
  }
  staging.discard();
  ::_exit(0);
}

}  // namespace

DumpGuardian::DumpGuardian(pid_t root, int root_pidfd, const CheckpointDir& staging) {
  int pipe[2];
  if (::pipe2(pipe, O_CLOEXEC) != 0) return;  // best effort: the dump goes on unguarded
  UniqueFd child_end(pipe[0]);
  parent_end_.reset(pipe[1]);
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ == 0) {
    parent_end_.reset();
    guard(parent, child_end.get(), root, root_pidfd, staging);
  }
  if (pid_ < 0) parent_end_.reset();
}

void DumpGuardian::tell(char what, pid_t pid) const noexcept {
  if (!parent_end_) return;
  const Word w{what, pid};
  (void)!::write(parent_end_.get(), &w, sizeof w);  // far below PIPE_BUF: never split
}

void DumpGuardian::criu_started(pid_t pid) const noexcept { tell('s', pid); }

void DumpGuardian::criu_ended() const noexcept { tell('e'); }

void DumpGuardian::hold(bool stopped) const noexcept { tell('h', stopped ? 1 : 0); }

DumpGuardian::~DumpGuardian() {
  if (pid_ <= 0) return;
  tell('d');
  parent_end_.reset();
  // Its exit comes at once; a caller that reaps every child (or ignores SIGCHLD) may take it first.
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

void HeldTree::may_run_elsewhere(bool may) noexcept {
  may_run_elsewhere_ = may;
  guardian_.hold(may);
  // SIGCONT discards a SIGSTOP still pending.
  if (held_by_criu_) ProcessTree::open(root_, root_pidfd_).signal(may ? SIGSTOP : SIGCONT);
}

void HeldTree::end_criu(std::chrono::milliseconds grace) const noexcept {
  if (criu_pidfd_ < 0) return;
  pollfd p{criu_pidfd_, POLLIN, 0};  // readable once CRIU has exited
  if (::poll(&p, 1, static_cast<int>(grace.count())) == 0)
    ::syscall(SYS_pidfd_send_signal, criu_pidfd_, SIGKILL, nullptr, 0);
}

}  // namespace nucleus::checkpoint
