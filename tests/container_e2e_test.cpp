// Containers through the C++ API with the real CRIU, as root:
//  - the project's launcher (tests/container/launcher.c: new namespaces, a busybox rootfs,
//    pivot_root, a volume, pipe stdio, a TCP server, a cgroup2 leaf of its own) dumped with its
//    runtime's description, restored with one call plus a new stdout, killed through the pidfd;
//  - the "unshare case": a tree started by unshare(1) with the host's /dev/null as stdin;
//  - a dump refused, naming the package, when CRIU's iptables-restore is missing;
//  - a rootfs moved away: the error says so, and `root` restores from the new place.
// Needs NC_TEST_LAUNCHER and NC_TEST_MAKE_ROOTFS (set by tests/meson.build). These never skip.
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>
#include <nucleus/checkpoint/metadata.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/time.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "process_support.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;
using namespace std::chrono_literals;

namespace {

std::string env_path(const char* name) {
  const char* value = std::getenv(name);
  INFO(name << " is set by tests/meson.build");
  REQUIRE(value != nullptr);
  REQUIRE(*value != '\0');
  return value;
}

int pidfd_send(int pidfd, int sig) { return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0)); }

std::string link_of(const fs::path& link) {
  std::error_code ec;
  const auto target = fs::read_symlink(link, ec);
  return ec ? std::string() : target.native();
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool same_file(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  return fs::equivalent(a, b, ec) && !ec;
}

// Where a cgroup2 leaf of a container's own goes: the unified hierarchy, wherever it is mounted.
fs::path cgroup2_parent() {
  for (const char* p : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}) {
    struct statfs st {};
    if (::statfs(p, &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC) return p;
  }
  FAIL("no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified");
  return {};
}

// Runs argv to its end; its exit status, or -1.
int run(const std::vector<std::string>& argv) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The lines of numbers a container prints on a pipe: read without blocking (so that its writer
// never blocks either), each number above a bound waited for, the last one kept.
struct LineReader {
  LineReader() = default;
  explicit LineReader(int read_end) : fd(read_end) {}

  int fd = -1;
  std::string seen;  // for the test's messages (the last few KiB)
  long last = -1;

  // Reads what is there now, adding the numbers of complete lines to `numbers`; false at EOF.
  bool pump(std::vector<long>* numbers = nullptr) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) {
      seen.append(buf, static_cast<std::size_t>(n));
      pending_.append(buf, static_cast<std::size_t>(n));
    }
    if (seen.size() > 4096) seen.erase(0, seen.size() - 4096);
    for (std::size_t nl; (nl = pending_.find('\n')) != std::string::npos;) {
      const std::string line = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      char* end = nullptr;
      const long v = std::strtol(line.c_str(), &end, 10);
      if (line.empty() || *end != '\0') continue;
      last = v;
      if (numbers) numbers->push_back(v);
    }
    return n != 0;
  }

  std::optional<long> number_above(long above, std::chrono::milliseconds limit = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      std::vector<long> numbers;
      const bool open = pump(&numbers);
      for (const long v : numbers)
        if (v > above) return v;
      if (!open || std::chrono::steady_clock::now() > deadline) return std::nullopt;
      pollfd p{fd, POLLIN, 0};
      ::poll(&p, 1, 100);
    }
  }

  void drain() { pump(); }

  // The last number printed before the writer closed its end.
  long last_before_eof(std::chrono::milliseconds limit = 10s) {
    wait_until([&] { return !pump(); }, limit);
    return last;
  }

 private:
  std::string pending_;
};

// What the TCP server on 127.0.0.1:port in PID's network namespace answers (from a child that
// joins the namespace), trimmed; "" if nothing.
std::string tcp_answer(pid_t pid, int port) {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    const int ns = ::open(fmt::format("/proc/{}/ns/net", pid).c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0 || ::setns(ns, CLONE_NEWNET) != 0) ::_exit(1);
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{5, 0};
    ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) ::_exit(2);
    char buf[256];
    ssize_t n;
    while ((n = ::read(s, buf, sizeof buf)) > 0)
      if (::write(p[1], buf, static_cast<std::size_t>(n)) != n) ::_exit(3);
    ::_exit(0);
  }
  ::close(p[1]);
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = ::read(p[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
  ::close(p[0]);
  ::waitpid(child, nullptr, 0);
  while (!out.empty() && std::isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
  return out;
}

bool is_number(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

// Waits for a process this test may hold a pidfd for to be gone (reaping, as the subreaper).
bool gone(pid_t pid, std::chrono::milliseconds limit = 10s) {
  return wait_until([&] { return ended(pid); }, limit);
}

// A pipe whose write end a restore hands to the tree as its stdout.
struct Pipe {
  int read_end = -1, write_end = -1;
  Pipe() { REQUIRE(::pipe2(&read_end, O_CLOEXEC) == 0); }
  ~Pipe() {
    close_write();
    if (read_end >= 0) ::close(read_end);
  }
  void close_write() {
    if (write_end >= 0) ::close(write_end);
    write_end = -1;
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
};

// The launcher's container, with everything it made undone when it goes out of scope: the
// launcher, the container, every restored tree given to adopt() (killed through its pidfd),
// and its cgroup2 leaf.
class LaunchedContainer {
 public:
  LaunchedContainer(const fs::path& base, const std::string& name, std::vector<std::string> extra = {})
      : rootfs_(base / "rootfs"), volume_(base / "volume"),
        cgroup_(cgroup2_parent() / fmt::format("nc-test-{}-{}", name, ::getpid())) {
    try {
      start(std::move(extra));
    } catch (...) {
      cleanup();
      throw;
    }
  }
  ~LaunchedContainer() { cleanup(); }
  LaunchedContainer(const LaunchedContainer&) = delete;
  LaunchedContainer& operator=(const LaunchedContainer&) = delete;

  pid_t pid() const { return pid_; }
  const fs::path& rootfs() const { return rootfs_; }
  const fs::path& volume() const { return volume_; }
  const fs::path& cgroup() const { return cgroup_; }
  LineReader& output() { return out_; }
  long count() const {
    const std::string text = read_file(volume_ / "counter");
    char* end = nullptr;
    const long v = std::strtol(text.c_str(), &end, 10);
    return text.empty() || end == text.c_str() ? -1 : v;
  }
  // Once CRIU has stopped the container, its launcher sees its pipes close and exits.
  bool launcher_exited() {
    if (launcher_ <= 0) return true;
    const bool exited = wait_until([&] {
      const pid_t w = ::waitpid(launcher_, nullptr, WNOHANG);
      return w == launcher_ || (w < 0 && errno == ECHILD);  // or reaped already by reap_all()
    }, 30s);
    if (exited) launcher_ = -1;
    reap_all();
    return exited;
  }
  // Where the counter stopped at a dump (after launcher_exited()): the volume's counter, or if
  // the dump came between the file's truncation and its writing, the last number printed.
  long stopped_at() {
    const long printed = out_.last_before_eof();
    const long counted = count();
    return counted >= 0 ? counted : printed;
  }
  void rootfs_moved_to(const fs::path& p) { rootfs_ = p; }
  // A restored tree, killed through its pidfd (and the pidfd closed) at the end.
  void adopt(const RestoredTree& t) { restored_.push_back(t); }
  // Pids of the processes in the container's cgroup.
  std::string cgroup_procs() const { return read_file(cgroup_ / "cgroup.procs"); }

 private:
  void start(std::vector<std::string> extra) {
    fs::create_directories(volume_);
    REQUIRE(run({"sh", env_path("NC_TEST_MAKE_ROOTFS"), rootfs_.native()}) == 0);
    const std::string launcher = env_path("NC_TEST_LAUNCHER");
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    out_.fd = p[0];
    std::vector<std::string> argv = {launcher, "--rootfs", rootfs_.native(), "--volume", volume_.native(),
                                     "--cgroup2", cgroup_.native()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    launcher_ = ::fork();
    REQUIRE(launcher_ >= 0);
    if (launcher_ == 0) {
      ::dup2(p[1], STDOUT_FILENO);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(p[1]);
    // Its first line: "pid N", the container's init as the host sees it.
    std::string first;
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (first.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd pf{out_.fd, POLLIN, 0};
      if (::poll(&pf, 1, 200) <= 0) continue;
      char c;
      if (::read(out_.fd, &c, 1) != 1) break;
      first += c;
    }
    INFO("the launcher's first line: " << first);
    REQUIRE(first.starts_with("pid "));
    pid_ = static_cast<pid_t>(std::strtol(first.c_str() + 4, nullptr, 10));
    REQUIRE(pid_ > 0);
    REQUIRE(wait_until([&] { out_.drain(); return count() > 3; }, 20s));
  }

  void cleanup() {
    for (const auto& t : restored_) {
      if (t.pidfd >= 0) {
        pidfd_send(t.pidfd, SIGKILL);  // a PID-namespace init ignores SIGTERM
        ::close(t.pidfd);
      }
      gone(t.pid, 5s);
    }
    restored_.clear();
    if (pid_ > 0 && launcher_ > 0) ::kill(pid_, SIGKILL);  // still the launcher's child: not a reused PID
    if (launcher_ > 0) {
      ::kill(launcher_, SIGKILL);
      ::waitpid(launcher_, nullptr, 0);
      launcher_ = -1;
    }
    reap_all();
    if (out_.fd >= 0) ::close(out_.fd);
    out_.fd = -1;
    // The cgroup empties once its processes are reaped.
    wait_until([&] { reap_all(); return ::rmdir(cgroup_.c_str()) == 0 || errno == ENOENT; }, 10s);
  }

  fs::path rootfs_, volume_, cgroup_;
  pid_t launcher_ = -1;
  pid_t pid_ = -1;
  LineReader out_;
  std::vector<RestoredTree> restored_;
};

struct Fixture {
  TempDir tmp;
  KeyFileEnv key{secure_key_dir(tmp) / "checkpoint.key"};
  std::unique_ptr<CriuRuntime> rt = real_criu();
  fs::path checkpoint = tmp / "checkpoint";
};

CheckpointMetadata load_metadata(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  try {
    auto m = CheckpointMetadata::load(fd);
    ::close(fd);
    return m;
  } catch (...) {
    ::close(fd);
    throw;
  }
}

CriuOptions with_stdout(int fd) {
  CriuOptions o;
  o.inherit_fds.push_back({fd, "stdout"});
  return o;
}

}  // namespace

TEST_CASE_METHOD(Fixture, "the launcher's container round-trips with its description, a new stdout and a pidfd",
                 "[container]") {
  LaunchedContainer box(tmp / "box", "e2e-box", {"--tcp-port", "8080"});
  CHECK(is_number(tcp_answer(box.pid(), 8080)));  // the server answers before the dump
  const std::string config = R"({"ociVersion":"1.0.2","process":{"args":["sh"]}})";
  ContainerInfo info = container("box", box.pid());
  info.annotations = {{"io.example.runtime", "nucleus-test"}, {"io.example.bundle", (tmp / "box").native()}};
  info.runtime_files = {{"config.json", config}};
  rt->checkpoint(info, checkpoint, CriuOptions{});  // leave_running false: CRIU stops the tree
  REQUIRE(box.launcher_exited());
  REQUIRE(gone(box.pid()));
  const long before = box.stopped_at();
  REQUIRE(before > 3);
  std::this_thread::sleep_for(300ms);
  CHECK(box.count() <= before);  // nothing runs while checkpointed

  CHECK_NOTHROW(HmacTree::verify(checkpoint, KeyStore().load()));
  const CheckpointMetadata m = load_metadata(checkpoint);
  CHECK(m.container_id == "box");
  CHECK(m.annotations == std::vector<std::pair<std::string, std::string>>{
                             {"io.example.bundle", (tmp / "box").native()}, {"io.example.runtime", "nucleus-test"}});
  CHECK(m.runtime_files == std::vector<std::string>{"config.json"});
  CHECK(read_file(checkpoint / "runtime" / "config.json") == config);
  REQUIRE(m.has_record);
  const DumpRecord& r = m.record;
  CHECK(r.own_mount_namespace);
  CHECK(r.own_network_namespace);
  CHECK(same_file(r.root, box.rootfs()));
  const auto data = std::find_if(r.mounts.begin(), r.mounts.end(), [](const ExternalMount& e) { return e.mountpoint == "/data"; });
  REQUIRE(data != r.mounts.end());
  CHECK(same_file(data->source, box.volume()));
  CHECK(std::any_of(r.descriptors.begin(), r.descriptors.end(),
                    [](const RecordedFd& d) { return d.fd == 1 && d.key.starts_with("pipe:["); }));

  Pipe out;
  const RestoredTree t = rt->restore_tree(checkpoint, with_stdout(out.write_end));
  box.adopt(t);
  out.close_write();
  REQUIRE(t.pid > 0);
  REQUIRE(t.pidfd >= 0);
  CHECK(rt->state() == CheckpointState::Restored);
  // The pidfd is the restored root's.
  CHECK(pidfd_send(t.pidfd, 0) == 0);
  CHECK(contains(read_file(fmt::format("/proc/self/fdinfo/{}", t.pidfd)), fmt::format("Pid:\t{}\n", t.pid)));
  CHECK(link_of(fmt::format("/proc/{}/ns/net", t.pid)) != link_of("/proc/self/ns/net"));
  CHECK(link_of(fmt::format("/proc/{}/ns/mnt", t.pid)) != link_of("/proc/self/ns/mnt"));
  CHECK(same_file(fmt::format("/proc/{}/root", t.pid), box.rootfs()));
  CHECK(contains(box.cgroup_procs(), fmt::format("{}\n", t.pid)));  // back in its own cgroup
  // The counter goes on in the volume, from where it stopped.
  CHECK(wait_until([&] { return box.count() > before + 5; }));
  CHECK(box.count() < before + 300);
  // Its output reaches the new pipe.
  LineReader reader(out.read_end);
  const auto printed = reader.number_above(before);
  INFO("read from the new stdout: " << reader.seen);
  CHECK(printed.has_value());
  const std::string answer = tcp_answer(t.pid, 8080);
  INFO("the TCP server's answer: " << answer);
  CHECK(is_number(answer));  // its listening socket came back in its network namespace
  // The folder is exactly as signed after the restore.
  CHECK_NOTHROW(HmacTree::verify(checkpoint, KeyStore().load()));

  // Killed through the pidfd: it becomes readable once the root is gone.
  REQUIRE(pidfd_send(t.pidfd, SIGKILL) == 0);
  pollfd p{t.pidfd, POLLIN, 0};
  CHECK(::poll(&p, 1, 10000) == 1);
  CHECK(gone(t.pid));
  const long at_kill = box.count();
  std::this_thread::sleep_for(300ms);
  CHECK(box.count() == at_kill);
}

TEST_CASE_METHOD(Fixture, "a tree started by unshare with the host's /dev/null as stdin round-trips", "[container]") {
  // unshare --fork leaves its child, the new PID namespace's init, in unshare's session, whose
  // leader is outside the namespace: CRIU refuses such a tree ("A session leader of N(1) is
  // outside of its pid namespace"), so the init makes a session of its own with setsid.
  const fs::path log = tmp / "unshare.log";
  pid_t unshare = ::fork();
  REQUIRE(unshare >= 0);
  if (unshare == 0) {
    const int null = ::open("/dev/null", O_RDONLY);  // the host's /dev/null
    const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (null < 0 || out < 0 || ::dup2(null, 0) != 0 || ::dup2(out, 1) != 1 || ::dup2(out, 2) != 2) ::_exit(126);
    ::syscall(SYS_close_range, 3U, ~0U, 0U);
    ::execlp("setsid", "setsid", "unshare", "--pid", "--fork", "--mount-proc", "--net", "setsid", "sh", "-c",
             "while :; do sleep 0.1; done", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  pid_t init = -1;
  struct Cleanup {
    pid_t& unshare;
    pid_t& init;
    ~Cleanup() {
      if (init > 0 && is_alive(init) && unshare > 0) ::kill(init, SIGKILL);  // still unshare's child
      if (unshare > 0) {
        ::kill(unshare, SIGKILL);
        ::waitpid(unshare, nullptr, 0);
      }
      reap_all();
    }
  } cleanup{unshare, init};

  // The init: unshare's child, once it runs sh and sh has started its first sleep.
  const auto children_of = [](pid_t pid) {
    std::set<pid_t> out;
    std::error_code ec;
    for (const auto& task : fs::directory_iterator(fmt::format("/proc/{}/task", pid), ec)) {
      std::istringstream in(read_file(task.path() / "children"));
      for (pid_t c; in >> c;) out.insert(c);
    }
    return out;
  };
  REQUIRE(wait_until([&] {
    const auto kids = children_of(unshare);
    if (kids.size() != 1) return false;
    init = *kids.begin();
    return read_file(fmt::format("/proc/{}/comm", init)) == "sh\n" && !children_of(init).empty();
  }));
  CHECK(link_of(fmt::format("/proc/{}/fd/0", init)) == "/dev/null");
  CHECK(link_of(fmt::format("/proc/{}/ns/mnt", init)) != link_of("/proc/self/ns/mnt"));
  CHECK(link_of(fmt::format("/proc/{}/ns/pid", init)) != link_of("/proc/self/ns/pid"));

  rt->checkpoint(container("unshare", init), checkpoint, CriuOptions{});
  int status = 0;
  CHECK(::waitpid(unshare, &status, 0) == unshare);  // its child gone, unshare exits
  unshare = -1;
  REQUIRE(gone(init));
  init = -1;
  const CheckpointMetadata m = load_metadata(checkpoint);
  const auto& fds = m.record.descriptors;
  CHECK(std::any_of(fds.begin(), fds.end(), [](const RecordedFd& d) {
    return d.fd == 0 && d.path == "/dev/null" && d.key.starts_with("file[");
  }));  // declared external, to be reopened at restore

  // A plain restore: nothing to give but the checkpoint.
  RestoredTree t;
  const auto plain = error_of([&] { t = rt->restore_tree(checkpoint, CriuOptions{}); });
  {
    INFO("a plain restore of the unshare case failed: " << (plain ? plain->what() : ""));
    CHECK_FALSE(plain.has_value());
  }
  // The network namespace was shared with unshare itself (unshare(2) moves the caller into it,
  // unlike clone), so the dump declared it external; until a plain restore gets the tree a
  // namespace of its own, the rest is checked with one given to it.
  std::optional<Child> holder;
  if (plain && contains(plain->what(), "net namespace")) {
    const auto ns = std::find_if(m.record.namespaces.begin(), m.record.namespaces.end(),
                                 [](const ExternalNamespace& n) { return n.type == "net"; });
    REQUIRE(ns != m.record.namespaces.end());
    holder.emplace([] {
      if (::unshare(CLONE_NEWNET) != 0) ::_exit(1);
      for (;;) ::pause();
    });
    const std::string path = fmt::format("/proc/{}/ns/net", holder->pid());
    REQUIRE(wait_until([&] { return link_of(path) != link_of("/proc/self/ns/net"); }));
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    CriuOptions o;
    o.inherit_fds.push_back({fd, ns->key});
    const auto given = error_of([&] { t = rt->restore_tree(checkpoint, o); });
    ::close(fd);
    INFO("the restore given a network namespace failed: " << (given ? given->what() : ""));
    REQUIRE_FALSE(given.has_value());
  }
  struct Kill {
    RestoredTree& t;
    ~Kill() {
      if (t.pidfd < 0) return;
      pidfd_send(t.pidfd, SIGKILL);
      ::close(t.pidfd);
      gone(t.pid, 5s);
    }
  } kill{t};
  REQUIRE(t.pidfd >= 0);
  CHECK(pidfd_send(t.pidfd, 0) == 0);
  CHECK(read_file(fmt::format("/proc/{}/comm", t.pid)) == "sh\n");
  CHECK(link_of(fmt::format("/proc/{}/fd/0", t.pid)) == "/dev/null");  // reopened
  CHECK(same_file(fmt::format("/proc/{}/fd/1", t.pid), log));
  // It runs: its loop starts one sleep after another.
  const auto first = children_of(t.pid);
  CHECK(wait_until([&] {
    const auto now = children_of(t.pid);
    return !now.empty() && now != first;
  }, 5s));
}

TEST_CASE_METHOD(Fixture, "a dump without iptables-restore is refused, naming the package", "[container]") {
  LaunchedContainer box(tmp / "box", "e2e-notools");
  const long before = std::max(box.count(), 4L);  // (-1 if read while the file is rewritten)
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  const Child child([&] {
    // In a private mount namespace, every iptables-restore in CRIU's PATH hidden under /dev/null
    // (bound over the file a symlink resolves to: on Debian, xtables-nft-multi).
    std::string message;
    if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      message = "cannot make a private mount namespace";
    } else {
      for (const char* dir : {"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}) {
        const std::string path = std::string(dir) + "/iptables-restore";
        for (int i = 0; i < 4 && ::access(path.c_str(), X_OK) == 0; ++i)
          ::mount("/dev/null", path.c_str(), nullptr, MS_BIND, nullptr);
        if (::access(path.c_str(), X_OK) == 0) message = "cannot hide " + path;
      }
    }
    if (message.empty()) {
      try {
        const char* criu = std::getenv("NC_TEST_CRIU");
        const auto runtime = criu && *criu ? std::make_unique<CriuRuntime>(criu) : std::make_unique<CriuRuntime>();
        runtime->checkpoint(container("notools", box.pid()), checkpoint, CriuOptions{});
        message = "the dump succeeded";
      } catch (const Error& e) {
        message = e.what();
      } catch (const std::exception& e) {
        message = std::string("not an Error: ") + e.what();
      }
    }
    if (::write(p[1], message.data(), message.size()) < 0) ::_exit(1);
    ::_exit(0);
  });
  ::close(p[1]);
  std::string message;
  char buf[4096];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;) message.append(buf, static_cast<std::size_t>(n));
  ::close(p[0]);
  INFO("the dump in a namespace without iptables-restore said: " << message);
  CHECK(contains(message, "iptables-restore"));
  CHECK(contains(lower(message), "install iptables"));
  CHECK(::access("/usr/sbin/iptables-restore", X_OK) == 0);  // hidden in the child's namespace alone
  // Refused before anything was frozen: the container runs on, and nothing was written.
  CHECK(is_alive(box.pid()));
  CHECK(process_state(box.pid()) != 't');
  CHECK(wait_until([&] { box.output().drain(); return box.count() > before + 5; }));
  CHECK_FALSE(fs::exists(checkpoint / "checkpoint.hmac"));
}

TEST_CASE_METHOD(Fixture, "a rootfs moved away: the error names it and root, and root restores from the new place",
                 "[container]") {
  LaunchedContainer box(tmp / "moved", "e2e-moved");
  rt->checkpoint(container("moved", box.pid()), checkpoint, CriuOptions{});
  REQUIRE(box.launcher_exited());
  REQUIRE(gone(box.pid()));
  const long before = box.stopped_at();
  REQUIRE(before > 3);
  const fs::path moved = tmp / "moved" / "rootfs.elsewhere";
  fs::rename(box.rootfs(), moved);

  {
    Pipe out;
    const auto e = require_error([&] { box.adopt(rt->restore_tree(checkpoint, with_stdout(out.write_end))); });
    INFO(e.what());
    CHECK(e.status() == Status::not_found);
    CHECK(contains(e.what(), "rootfs"));
    CHECK(contains(e.what(), box.rootfs().native()));  // the recorded place
    CHECK(contains(e.what(), "root"));
    CHECK(rt->state() == CheckpointState::None);
    std::this_thread::sleep_for(300ms);
    CHECK(box.count() <= before);  // nothing was restored
  }

  Pipe out;
  CriuOptions o = with_stdout(out.write_end);
  o.root = moved;
  const RestoredTree t = rt->restore_tree(checkpoint, o);
  box.adopt(t);
  out.close_write();
  box.rootfs_moved_to(moved);
  CHECK(pidfd_send(t.pidfd, 0) == 0);
  CHECK(same_file(fmt::format("/proc/{}/root", t.pid), moved));
  CHECK(wait_until([&] { return box.count() > before + 5; }));
  LineReader reader(out.read_end);
  CHECK(reader.number_above(before).has_value());
}
