// Real processes for the CRIU tests: the sample counter tree, reaping, and fake criu binaries.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include <fmt/format.h>

#include <nucleus/checkpoint/criu_runtime.hpp>

#include "test_support.hpp"

namespace nucleus::checkpoint::test {

inline ContainerInfo container(std::string id, pid_t pid) {
  ContainerInfo c;
  c.id = std::move(id);
  c.pid = pid;
  return c;
}

// Reaps every exited child (and, as a subreaper, every orphaned descendant).
inline void reap_all() {
  while (::waitpid(-1, nullptr, WNOHANG) > 0) {
  }
}

inline char process_state(pid_t pid) {
  const std::string stat = read_file(fmt::format("/proc/{}/stat", pid));
  const auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? '\0' : stat[close + 2];
}

inline bool is_alive(pid_t pid) {
  const char state = process_state(pid);
  return state != '\0' && state != 'Z' && state != 'X';
}

// Whether pid has ended, reaped if it is this subreaper's to reap. Looked at before reaping: one
// that ends in between is reaped too, since a zombie keeps its PID, which a restore may need.
inline bool ended(pid_t pid) {
  const bool dead = !is_alive(pid);
  reap_all();
  return dead;
}

template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// A forked child that runs `body` (default: waits forever), killed and reaped when it goes out
// of scope, so a failing test never leaves it holding the test runner's output open.
class Child {
 public:
  template <typename Body>
  explicit Child(Body body) : pid_(::fork()) {
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      body();
      ::_exit(0);
    }
  }
  Child() : Child([] { for (;;) ::pause(); }) {}
  ~Child() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_;
};

// The real CRIU the suite runs (tests/meson.build's criu_path, else the library's discovery).
inline std::unique_ptr<CriuRuntime> real_criu() {
  REQUIRE(::geteuid() == 0);  // CRIU needs root; the suite runs as root
  const char* path = std::getenv("NC_TEST_CRIU");
  auto rt = path && *path ? std::make_unique<CriuRuntime>(path) : std::make_unique<CriuRuntime>();
  INFO("criu " << rt->binary() << " " << rt->version().text);
  REQUIRE(rt->version() >= CriuVersion{4, 1, 0, ""});
  return rt;
}

// examples/counter: a parent and a child each counting up in dir/parent and dir/child.
class CounterTree {
 public:
  // With memory_mib, the parent first fills that much memory, so that a dump takes a while (and
  // checks it on SIGUSR1: bad_pages). With own_pid_namespace it is the init of a PID namespace
  // of its own, so that a restored copy can take its PIDs while it is still there.
  explicit CounterTree(const fs::path& dir, int memory_mib = 0, bool own_pid_namespace = false) : dir_(dir) {
    fs::create_directories(dir_);
    const char* exe = std::getenv("NC_TEST_COUNTER");
    REQUIRE(exe != nullptr);
    pid_ = own_pid_namespace
               ? static_cast<pid_t>(::syscall(SYS_clone, CLONE_NEWPID | SIGCHLD, nullptr, nullptr, nullptr, nullptr))
               : ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      const std::string mib = std::to_string(memory_mib);
      ::execl(exe, exe, dir_.c_str(), mib.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    if (!wait_until([&] { return count("parent") >= 3 && count("child") >= 3; })) {
      stop(pid_);  // the destructor does not run when the constructor fails
      FAIL("the counter tree did not start counting");
    }
  }
  ~CounterTree() { stop(pid_); }
  CounterTree(const CounterTree&) = delete;
  CounterTree& operator=(const CounterTree&) = delete;

  pid_t pid() const { return pid_; }
  long count(const char* who) const {
    const std::string text = read_file(dir_ / who);
    return text.empty() ? -1 : std::strtol(text.c_str(), nullptr, 10);
  }
  // The pages of the parent's memory that are not as it filled them, as the copy of the tree
  // rooted at `root` finds (-1: no answer); its parent is the root.
  long bad_pages(pid_t root) const {
    fs::remove(dir_ / "parent.verify");
    ::kill(root, SIGUSR1);
    if (!wait_until([&] { return fs::exists(dir_ / "parent.verify"); }, std::chrono::seconds(20))) return -1;
    return count("parent.verify");
  }
  // The tree is one process group (the counter calls setsid()); a PID namespace's init dies with
  // SIGKILL alone, and takes its namespace with it.
  // Waited for until reaped, not merely dead: a zombie still holds its PID, which the next restore
  // of the same checkpoint needs. Up to 30 s: a loaded machine (CI runs tests side by side) may
  // take seconds to tear down a tree with memory.
  static void stop(pid_t pid) {
    if (pid > 0) ::kill(-pid, SIGKILL);
    wait_until([pid] { reap_all(); return process_state(pid) == '\0'; }, std::chrono::seconds(30));
  }

 private:
  fs::path dir_;
  pid_t pid_ = -1;
};

// A stand-in criu: a shell script that answers --version, records its arguments in dir/args and
// its environment in dir/env, sets $op, $img and $work from them, then runs `body`.
inline fs::path write_fake_criu(const fs::path& dir, const std::string& body,
                                const std::string& version = "Version: 4.1.1") {
  const fs::path path = dir / "criu";
  write_file(path, "#!/bin/sh\n"
                   "if [ \"$1\" = --version ]; then echo '" + version + "'; exit 0; fi\n"
                   "echo \"$@\" > '" + (dir / "args").native() + "'\n"
                   "env > '" + (dir / "env").native() + "'\n"
                   "op=$1\n"
                   "while [ $# -gt 0 ]; do case $1 in --images-dir) img=$2;; --work-dir) work=$2;; esac; shift; done\n" +
                   body + "\n");
  fs::permissions(path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                            fs::perms::others_read | fs::perms::others_exec, fs::perm_options::replace);
  return path;
}

}  // namespace nucleus::checkpoint::test
