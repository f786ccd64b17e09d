// Post-copy migration (MigrateOptions::post_copy), both ends for real: migrate and
// receive_migration on two threads, the real CRIU (its lazy pages) on both, a counter tree in its
// own PID namespace (so that its restored copy can take the same PIDs while the source's is still
// there) whose memory it checks itself (the counter's SIGUSR1). Between the ends a proxy that can
// change a byte or cut the connection once the page stream runs. Then the receiver's lazy-pages
// daemon alone (its hold, its start), and the page stream's bounds between stand-ins for CRIU.
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/migrate.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "criu/lazy_pages.hpp"
#include "criu/proc.hpp"
#include "fs/unique_fd.hpp"
#include "process_support.hpp"
#include "transfer/page_relay.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

// Enough that its pages still come well after the tree runs again (about a second here).
constexpr int memory_mib = 256;

// The sysctl the source's CRIU needs for its 4 MiB page server pipes.
const char* const pipe_max_size = "/proc/sys/fs/pipe-max-size";
std::string read_pipe_max() {
  std::ifstream in(pipe_max_size);
  std::string value;
  in >> value;
  return value;
}
void write_pipe_max(const std::string& value) {
  std::ofstream out(pipe_max_size);
  out << value;
  out.close();
  REQUIRE(read_pipe_max() == value);
}

// The counter (examples/counter.c) as the init of a PID namespace of its own, filling memory_mib.
struct Counter : CounterTree {
  explicit Counter(const fs::path& dir) : CounterTree(dir, memory_mib, true) {}
  // Counting on, whichever copy of it counts.
  bool counts_on() const {
    const long before = count("parent");
    return wait_until([&] { return count("parent") > before + 2; }, std::chrono::seconds(10));
  }
  // Stopped, and stays so (neither resumed nor killed); then resumed, as its operator would, and
  // counting on with all its memory as it was.
  void stays_stopped_then_resumes() const {
    const long stopped_at = count("parent");
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    CHECK(process_state(pid()) == 'T');
    CHECK(count("parent") == stopped_at);
    ::kill(-pid(), SIGCONT);
    CHECK(counts_on());
    CHECK(bad_pages(pid()) == 0);
  }
};

// Copies bytes both ways between two sockets, and acts on them: once the receiver has said "ok"
// (the tree runs there; its memory still comes), it flips a bit in the source's next bytes, or
// cuts both connections after killing the process `kill` if given (either end); or it flips the
// last bit the source sends before its end (the page stream's last message).
class Proxy {
 public:
  enum class Act { flip_after_ok, cut_after_ok, flip_last, forge_request_after_ok };
  Proxy(int source_side, int receiver_side, Act act, pid_t kill = 0)
      : thread_([=, this] { run(source_side, receiver_side, act, kill); }) {}
  ~Proxy() { thread_.join(); }
  bool acted() const { return acted_; }
  pid_t restored() const { return restored_; }  // the receiver's restored root, from its "ok"

 private:
  void run(int source_side, int receiver_side, Act act, pid_t kill) {
    bool ok_seen = false;
    // flip_last: the source's bytes parsed as the page stream's frames once its header line has
    // passed: a u32 length, then that many bytes. The last message, the answer to CRIU's close,
    // is the only one of 21 bytes (a 4-byte status, sealed).
    bool framed = false;
    std::string line;
    unsigned char length_bytes[4];
    std::size_t length_got = 0, body_left = 0, body_length = 0;
    char buf[65536];
    pollfd p[2] = {{source_side, POLLIN, 0}, {receiver_side, POLLIN, 0}};
    for (;;) {
      if (::poll(p, 2, 60'000) <= 0) break;
      const int from = p[0].revents ? source_side : receiver_side, to = from == source_side ? receiver_side : source_side;
      const ssize_t n = ::read(from, buf, sizeof buf);
      if (n <= 0) break;
      const std::string_view seen(buf, static_cast<std::size_t>(n));
      if (from == receiver_side && seen.find(R"("ok":true,"pid":)") != std::string_view::npos) {
        ok_seen = true;
        restored_ = std::atoi(buf + seen.find(R"("pid":)") + 6);
        const std::size_t line_end = seen.find('\n', seen.find(R"("ok":true,"pid":)"));
        if (act == Act::forge_request_after_ok && line_end != std::string_view::npos) {
          // After the line, at a record's boundary (the tree's own requests may follow in the
          // same read): CRIU's GET (7) of one page at 0x1000 of PID 1, which the dump holds no
          // lazy memory at.
          const std::uint64_t forged[4] = {7, 1, 0x1000, 1};
          const auto line_size = static_cast<ssize_t>(line_end + 1);
          if (::send(to, buf, static_cast<std::size_t>(line_size), MSG_NOSIGNAL) != line_size) break;
          acted_ = ::send(to, forged, sizeof forged, MSG_NOSIGNAL) == sizeof forged;
          if (n > line_size &&
              ::send(to, buf + line_size, static_cast<std::size_t>(n - line_size), MSG_NOSIGNAL) != n - line_size)
            break;
          continue;
        }
      } else if (from == source_side && act == Act::flip_last) {
        for (ssize_t i = 0; i < n; ++i) {
          if (!framed) {
            line += buf[i];
            if (buf[i] == '\n') framed = line.find(R"({"post_copy":{"header":")") != std::string::npos, line.clear();
          } else if (body_left > 0) {
            if (--body_left == 0 && body_length == 21) {
              acted_ = true;
              buf[i] ^= 0x01;
            }
          } else {
            length_bytes[length_got++] = static_cast<unsigned char>(buf[i]);
            if (length_got == 4) {
              std::uint32_t length;
              std::memcpy(&length, length_bytes, 4);
              body_length = body_left = length & 0x7fffffffU;
              length_got = 0;
            }
          }
        }
      } else if (from == source_side && ok_seen && !acted_ && n > 64 &&
                 (act == Act::flip_after_ok || act == Act::cut_after_ok)) {
        acted_ = true;
        if (kill > 0) ::kill(kill, SIGKILL);
        if (act == Act::cut_after_ok) break;
        buf[n / 2] ^= 0x10;
      }
      if (::send(to, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) break;
    }
    ::shutdown(source_side, SHUT_RDWR);
    ::shutdown(receiver_side, SHUT_RDWR);
  }
  bool acted_ = false;
  pid_t restored_ = 0;
  std::thread thread_;
};

struct Fixture {
  TempDir tmp;
  KeyFileEnv key{secure_key_dir(tmp) / "checkpoint.key"};
  std::unique_ptr<CriuRuntime> source_rt = real_criu(), receiver_rt = real_criu();
  fs::path work_dir = tmp / "work" / "c1";
  fs::path store = tmp / "store";

  Fixture() {
    fs::create_directories(work_dir.parent_path());
    fs::create_directories(store);
    if (std::stoul(read_pipe_max()) < (4U << 20)) write_pipe_max("4194304");
  }

  static std::pair<UniqueFd, UniqueFd> socket_pair() {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    return {UniqueFd(fds[0]), UniqueFd(fds[1])};
  }

  struct Outcome {
    MigrationReport report;
    std::optional<Error> source_error;
    std::optional<ReceivedMigration> received;
    std::optional<Error> receiver_error;
  };
  // Migrates the tree post-copy, the two ends connected directly or through a Proxy.
  Outcome migrate_post_copy(pid_t pid, std::optional<Proxy::Act> between = std::nullopt,
                            const NotifyCallback& notify = {}) {
    const bool proxied = between.has_value();
    auto [source_end, source_proxy] = socket_pair();
    auto [receiver_proxy, receiver_end] = proxied ? socket_pair() : std::pair<UniqueFd, UniqueFd>();
    if (!proxied) receiver_end = std::move(source_proxy);
    std::optional<Proxy> proxy;
    if (proxied) proxy.emplace(source_proxy.get(), receiver_proxy.get(), *between);
    Outcome out;
    std::thread receiver([&] {
      out.receiver_error = error_of([&] { out.received = receive_migration(*receiver_rt, receiver_end.get(), store); });
      ::shutdown(receiver_end.get(), SHUT_RDWR);
    });
    MigrateOptions options;
    options.post_copy = true;
    options.reply_timeout = std::chrono::seconds(30);
    options.criu.notify = notify;
    out.source_error = error_of([&] { out.report = migrate(*source_rt, container("pc1", pid), work_dir, source_end.get(), options); });
    ::shutdown(source_end.get(), SHUT_RDWR);
    receiver.join();
    if (proxy) CHECK(proxy->acted());
    return out;
  }
};

}  // namespace

TEST_CASE_METHOD(Fixture, "post-copy: the tree runs on the receiver before its memory is there, and all of it arrives",
                 "[post-copy]") {
  Counter counter(tmp / "counter");
  Outcome out = migrate_post_copy(counter.pid());
  if (out.source_error) FAIL(out.source_error->what());
  if (out.receiver_error) FAIL(out.receiver_error->what());
  const UniqueFd pidfd(out.received->tree.pidfd);
  const pid_t restored = out.received->tree.pid;
  // The source's copy is gone; the receiver's counts on, with every page as the counter filled it.
  CHECK(wait_until([&] { return ended(counter.pid()); }));
  CHECK(counter.counts_on());
  CHECK(counter.bad_pages(restored) == 0);
  // Most of the memory came after the tree ran: the checkpoint did not carry it.
  CHECK(out.report.pages_sent >= memory_mib * 256 / 2);
  CHECK(out.received->pages_received == out.report.pages_sent);
  CHECK(out.report.post_copy.count() > 0);
  CHECK(out.report.downtime < out.report.downtime + out.report.post_copy);
  // What stays here is signed, and says it cannot be restored: its memory is elsewhere.
  const auto refused = error_of([&] { source_rt->restore(work_dir); });
  REQUIRE(refused);
  CHECK(refused->status() == Status::invalid);
  CHECK(contains(refused->what(), "post-copy checkpoint"));
  CounterTree::stop(restored);
}

TEST_CASE_METHOD(Fixture, "post-copy: a page changed in flight never reaches the tree; the source keeps its copy stopped",
                 "[post-copy]") {
  Counter counter(tmp / "counter");
  Outcome out = migrate_post_copy(counter.pid(), Proxy::Act::flip_after_ok);
  INFO((out.receiver_error ? out.receiver_error->what() : "") << " / " << (out.source_error ? out.source_error->what() : ""));
  REQUIRE(out.receiver_error);
  CHECK(out.receiver_error->status() == Status::integrity);
  CHECK(contains(out.receiver_error->what(), "does not authenticate"));
  CHECK(contains(out.receiver_error->what(), "it was killed"));
  CHECK_FALSE(out.received.has_value());
  // The source cannot know how far the tree got: stopped; its operator resumes it, nothing lost.
  REQUIRE(out.source_error);
  CHECK(out.source_error->status() == Status::unconfirmed);
  counter.stays_stopped_then_resumes();
}

TEST_CASE_METHOD(Fixture, "post-copy: the source lost while pages are owed kills the receiver's copy, stops the source's",
                 "[post-copy]") {
  Counter counter(tmp / "counter");
  Outcome out = migrate_post_copy(counter.pid(), Proxy::Act::cut_after_ok);
  INFO((out.receiver_error ? out.receiver_error->what() : "") << " / " << (out.source_error ? out.source_error->what() : ""));
  REQUIRE(out.receiver_error);
  CHECK(out.receiver_error->status() == Status::io);
  CHECK(contains(out.receiver_error->what(), "it was killed"));
  REQUIRE(out.source_error);
  CHECK(out.source_error->status() == Status::unconfirmed);
  counter.stays_stopped_then_resumes();
}

TEST_CASE_METHOD(Fixture, "post-copy: a receiver that refuses the checkpoint leaves the source's tree running",
                 "[post-copy]") {
  Counter counter(tmp / "counter");
  // The receiver cannot import into its store (a file, not a folder): it refuses before any page.
  store = tmp / "not-a-folder";
  write_file(store, "x");
  Outcome out = migrate_post_copy(counter.pid());
  REQUIRE(out.receiver_error);
  REQUIRE(out.source_error);
  CHECK(out.source_error->status() == out.receiver_error->status());
  CHECK(contains(out.source_error->what(), "did not restore the tree"));
  CHECK(counter.counts_on());
}

TEST_CASE_METHOD(Fixture, "post-copy without 4 MiB pipes is refused before anything is dumped", "[post-copy]") {
  Counter counter(tmp / "counter");
  const std::string before = read_pipe_max();
  write_pipe_max("1048576");
  auto [source_end, receiver_end] = socket_pair();
  // A receiver's greeting, and then no receiver: whatever went further would fail another way.
  const std::string hello = R"({"nonce":"0707070707070707070707070707070707070707070707070707070707070707"})" "\n";
  REQUIRE(::write(receiver_end.get(), hello.data(), hello.size()) == static_cast<ssize_t>(hello.size()));
  receiver_end.reset();
  MigrateOptions options;
  options.post_copy = true;
  const auto error = error_of([&] { migrate(*source_rt, container("pc1", counter.pid()), work_dir, source_end.get(), options); });
  write_pipe_max(before);
  REQUIRE(error);
  CHECK(error->status() == Status::unsupported);
  CHECK(contains(error->what(), "sysctl -w fs.pipe-max-size=4194304"));
  CHECK_FALSE(fs::exists(work_dir));
  CHECK(counter.counts_on());
}

TEST_CASE_METHOD(Fixture, "post-copy: a source that dies while pages are owed leaves its tree stopped", "[post-copy]") {
  Counter counter(tmp / "counter");
  auto [source_end, source_proxy] = socket_pair();
  auto [receiver_proxy, receiver_end] = socket_pair();
  const pid_t source = ::fork();
  REQUIRE(source >= 0);
  if (source == 0) {
    MigrateOptions options;
    options.post_copy = true;
    try {
      migrate(*source_rt, container("pc1", counter.pid()), work_dir, source_end.get(), options);
    } catch (...) {
    }
    ::_exit(0);
  }
  source_end.reset();
  std::optional<Error> receiver_error;
  {
    const Proxy proxy(source_proxy.get(), receiver_proxy.get(), Proxy::Act::cut_after_ok, source);  // kills it once the tree runs here
    receiver_error = error_of([&] { receive_migration(*receiver_rt, receiver_end.get(), store); });
    ::shutdown(receiver_end.get(), SHUT_RDWR);
  }
  ::waitpid(source, nullptr, 0);
  REQUIRE(receiver_error);
  CHECK(contains(receiver_error->what(), "it was killed"));
  // Its dump's guardian killed CRIU, which lets go of the tree: it stays stopped, not resumed.
  counter.stays_stopped_then_resumes();
}

TEST_CASE_METHOD(Fixture, "post-copy: a receiver that dies while pages are owed takes its copy with it", "[post-copy]") {
  Counter counter(tmp / "counter");
  auto [source_end, source_proxy] = socket_pair();
  auto [receiver_proxy, receiver_end] = socket_pair();
  const pid_t receiver = ::fork();
  REQUIRE(receiver >= 0);
  if (receiver == 0) {
    try {
      receive_migration(*receiver_rt, receiver_end.get(), store);
    } catch (...) {
    }
    ::_exit(0);
  }
  receiver_end.reset();
  std::optional<Error> source_error;
  pid_t restored = 0;
  {
    // Kills the receiver once the tree runs there: its keeper must kill the tree, which would
    // otherwise hang on its missing memory for good, or read it as zeros once CRIU's daemon went.
    const Proxy proxy(source_proxy.get(), receiver_proxy.get(), Proxy::Act::cut_after_ok, receiver);
    MigrateOptions options;
    options.post_copy = true;
    source_error = error_of([&] { migrate(*source_rt, container("pc1", counter.pid()), work_dir, source_end.get(), options); });
    ::shutdown(source_end.get(), SHUT_RDWR);
    restored = proxy.restored();
  }
  ::waitpid(receiver, nullptr, 0);
  REQUIRE(source_error);
  CHECK(source_error->status() == Status::unconfirmed);
  REQUIRE(restored > 0);
  // Killed, not crashed: the restored root (this process's, its subreaper) did not run on zero
  // pages (without its keeper it dies of SIGSEGV here, once CRIU's daemon is gone).
  int status = 0;
  const bool died = wait_until([&] { return ::waitpid(restored, &status, WNOHANG) == restored; });
  if (!died) CounterTree::stop(restored);
  REQUIRE(died);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
  counter.stays_stopped_then_resumes();
}

TEST_CASE_METHOD(Fixture, "post-copy: the source's copy ends only on the receiver's word that every page is in",
                 "[post-copy]") {
  Counter counter(tmp / "counter");
  // The page stream's last message changed: CRIU's daemon on the receiver never gets its end, the
  // receiver kills its copy; the source, whose CRIU did answer, must not take that for success.
  Outcome out = migrate_post_copy(counter.pid(), Proxy::Act::flip_last);
  INFO((out.receiver_error ? out.receiver_error->what() : "") << " / " << (out.source_error ? out.source_error->what() : ""));
  REQUIRE(out.receiver_error);
  CHECK(out.receiver_error->status() == Status::integrity);
  REQUIRE(out.source_error);
  CHECK(out.source_error->status() == Status::unconfirmed);
  counter.stays_stopped_then_resumes();
}

TEST_CASE_METHOD(Fixture, "post-copy: a refusal at post-dump resumes the tree instead of leaving CRIU waiting",
                 "[post-copy]") {
  Counter counter(tmp / "counter");
  // CRIU serves pages after post-dump even when told "fail" there, until its socket ends.
  Outcome out = migrate_post_copy(counter.pid(), std::nullopt, [](const NotifyEvent& event) {
    return event.what != CriuNotification::post_dump;
  });
  REQUIRE(out.source_error);
  CHECK(contains(out.source_error->what(), "refused post-dump"));
  CHECK(counter.counts_on());
}

TEST_CASE_METHOD(Fixture, "post-copy: a request for memory the dump did not leave out never reaches CRIU",
                 "[post-copy]") {
  Counter counter(tmp / "counter");
  // CRIU's page server hangs on pages it holds that are not lazy, and crashes on a PID it did not
  // dump: the source refuses the request, and keeps its copy stopped (the receiver's may run).
  Outcome out = migrate_post_copy(counter.pid(), Proxy::Act::forge_request_after_ok);
  INFO((out.receiver_error ? out.receiver_error->what() : "") << " / " << (out.source_error ? out.source_error->what() : ""));
  REQUIRE(out.source_error);
  CHECK(out.source_error->status() == Status::unconfirmed);
  CHECK(contains(out.source_error->what(), "not memory the dump left out"));
  REQUIRE(out.receiver_error);
  CHECK(contains(out.receiver_error->what(), "it was killed"));
  counter.stays_stopped_then_resumes();
}

TEST_CASE_METHOD(Fixture, "post-copy: a tree without a PID namespace of its own is refused", "[post-copy]") {
  // Should the receiver die, killing a PID namespace's init is what kills every process of the
  // tree, whenever it forked them: without one, a process forked after the restore would escape
  // the receiver's keeper and run on zero pages.
  CounterTree counter(tmp / "counter", 0, false);
  const auto error = error_of([&] { require_own_pid_namespace(counter.pid()); });
  REQUIRE(error);
  CHECK(error->status() == Status::unsupported);
  CHECK(contains(error->what(), "PID namespace of its own"));
  const CounterTree own(tmp / "own", 0, true);
  CHECK_FALSE(error_of([&] { require_own_pid_namespace(own.pid()); }));
}

TEST_CASE_METHOD(Fixture, "post-copy migration of a tree without a PID namespace of its own is refused before anything "
                          "is dumped", "[post-copy]") {
  CounterTree counter(tmp / "counter", 0, false);
  const Outcome out = migrate_post_copy(counter.pid());
  INFO((out.receiver_error ? out.receiver_error->what() : "") << " / " << (out.source_error ? out.source_error->what() : ""));
  REQUIRE(out.source_error);
  CHECK(out.source_error->status() == Status::unsupported);
  CHECK(contains(out.source_error->what(), "PID namespace of its own"));
  CHECK_FALSE(fs::exists(work_dir));
  const long before = counter.count("parent");
  CHECK(wait_until([&] { return counter.count("parent") > before + 2; }));
}

namespace {

// The processes this one has forked and not reaped (zombies too).
std::set<pid_t> children() {
  std::set<pid_t> pids;
  for (const auto& task : fs::directory_iterator("/proc/self/task")) {
    std::istringstream in(read_file(task.path() / "children"));
    for (pid_t pid; in >> pid;) pids.insert(pid);
  }
  return pids;
}

// The descriptor limit that leaves `spare` descriptors free.
int limit_leaving(unsigned spare) {
  for (int fd = 0, free = 0;; ++fd)
    if (::fcntl(fd, F_GETFD) == -1 && free++ == static_cast<int>(spare)) return fd;
}

// CRIU's lazy-pages daemon on a small tree's checkpoint (it needs its process tree to start), with
// its page socket.
struct Daemon {
  TempDir tmp;
  KeyFileEnv key{secure_key_dir(tmp) / "checkpoint.key"};
  UniqueFd criu, images, daemon_end, relay_end;
  Daemon() {
    const std::unique_ptr<CriuRuntime> rt = real_criu();
    criu.reset(::open(rt->binary().c_str(), O_PATH | O_CLOEXEC));
    REQUIRE(criu);
    {
      const CounterTree dumped(tmp / "counter", 0, true);
      rt->checkpoint(container("lazy", dumped.pid()), tmp / "checkpoint", true);
    }
    images.reset(::open((tmp / "checkpoint" / "images").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    REQUIRE(images);
    int pair[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
    daemon_end.reset(pair[0]);
    relay_end.reset(pair[1]);
  }
  LazyPagesDaemon start() {
    return LazyPagesDaemon(criu.get(), images.get(), daemon_end.get(), relay_end.get(), {}, std::chrono::seconds(10));
  }
};

}  // namespace

TEST_CASE("post-copy: the receiver holds only a tree whose root is a PID namespace's init", "[post-copy]") {
  Daemon d;
  const TempDir tmp;
  CounterTree shared(tmp / "shared", 0, false);
  const UniqueFd shared_pidfd(open_pidfd(shared.pid()));
  {
    LazyPagesDaemon daemon = d.start();
    const auto refused = error_of([&] { daemon.hold(shared_pidfd.get()); });
    REQUIRE(refused);
    CHECK(refused->status() == Status::unsupported);
    CHECK(contains(refused->what(), "not a PID namespace of its own"));
  }
  // Its keeper was never given it (the caller kills a tree it refused, still stopped).
  const long before = shared.count("parent");
  CHECK(wait_until([&] { return shared.count("parent") > before + 2; }));

  // A namespace's init is held: should this process go without wait_done, its keeper kills it, and
  // the kernel every other process of the namespace.
  CounterTree own(tmp / "own", 0, true);
  const UniqueFd own_pidfd(open_pidfd(own.pid()));
  {
    LazyPagesDaemon daemon = d.start();
    daemon.hold(own_pidfd.get());
  }
  CHECK(wait_until([&] { return ::waitpid(own.pid(), nullptr, WNOHANG) == own.pid(); }));
}

TEST_CASE("post-copy: a lazy-pages daemon that cannot start leaves no process behind", "[post-copy]") {
  Daemon d;
  // UBSan's first check of an object's type probes its memory through a pipe: made here, with
  // descriptors to spare (a start, and a failure caught as the daemon's thread catches one).
  d.start();
  try {
    throw Error(Status::io, "no descriptors");
  } catch (const std::exception& e) {
    CHECK(contains(e.what(), "descriptors"));
  }
  const std::set<pid_t> before = children();
  rlimit limit{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &limit) == 0);
  // Short of descriptors, by fewer and fewer: each start fails at a later step of its own (its
  // pipe, CRIU's output), before CRIU runs.
  for (unsigned spare = 2; spare <= 6; ++spare) {
    rlimit lowered = limit;
    lowered.rlim_cur = static_cast<rlim_t>(limit_leaving(spare));
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &lowered) == 0);
    const auto failure = error_of([&] { const LazyPagesDaemon daemon = d.start(); });
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &limit) == 0);
    REQUIRE(failure);
    INFO(spare << " descriptors spare: " << failure->what());
    CHECK(children() == before);
    // The folder a failure keeps for its logs.
    const std::string what = failure->what();
    if (const auto at = what.find("Full log: "); at != std::string::npos)
      fs::remove_all(fs::path(what.substr(at + 10)).parent_path());
  }
}

namespace {

// CRIU's struct page_server_iov as the page stream carries it.
struct Iov {
  std::uint32_t cmd, padding;
  std::uint64_t nr_pages, vaddr, dst_id;
};

// Both ends of a page stream, each with a stand-in for its CRIU: the source's page server, the
// receiver's lazy-pages daemon; 16 lazy pages of PID 1 from page 16 on.
struct Relay {
  static std::pair<UniqueFd, UniqueFd> pair() {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    return {UniqueFd(fds[0]), UniqueFd(fds[1])};
  }
  std::pair<UniqueFd, UniqueFd> criu = pair(), net = pair(), daemon = pair();  // stand-in first
  const std::uint64_t page = page_bytes();
  std::atomic<bool> tree_stopped = false;
  transfer::PageSender sender;
  transfer::PageReceiver receiver;

  Relay(std::chrono::milliseconds source_stall, std::chrono::milliseconds receiver_stall)
      : sender(criu.second.get(), net.first.get(), source_stall),
        receiver(daemon.second.get(), net.second.get(), receiver_stall, [this] { tree_stopped = true; }) {
    receiver.key_exchange(sender.key(), sender.key_exchange(receiver.key()));
    sender.start({{1, {{16 * page, 32 * page}}}});
    receiver.start();
  }
  // The receiver's daemon asks for page `n` (of the 16); false if the receiver has stopped.
  bool ask(std::uint64_t n) {
    const Iov get{7, 0, 1, (16 + n) * page, 1};
    return ::send(daemon.first.get(), &get, sizeof get, MSG_NOSIGNAL) == sizeof get;
  }
  // The source's page server answers the request it is given; the receiver's daemon gets the page.
  void serve() {
    Iov asked{};
    REQUIRE(::recv(criu.first.get(), &asked, sizeof asked, MSG_WAITALL) == sizeof asked);
    std::string answer(sizeof(Iov) + page, '\x5a');
    const Iov header{6 | (4 << 16), 0, 1, asked.vaddr, asked.dst_id};
    std::memcpy(answer.data(), &header, sizeof header);
    REQUIRE(::send(criu.first.get(), answer.data(), answer.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(answer.size()));
    std::string received(answer.size(), '\0');
    REQUIRE(::recv(daemon.first.get(), received.data(), received.size(), MSG_WAITALL) ==
            static_cast<ssize_t>(received.size()));
    CHECK(received == answer);
  }
};

}  // namespace

TEST_CASE("post-copy: the receiver's stall bound runs only while pages are asked for", "[post-copy]") {
  const std::chrono::seconds stall(1);
  Relay relay(std::chrono::minutes(5), stall);
  // A tree that leaves its memory alone asks nothing: the source owes nothing.
  std::this_thread::sleep_for(3 * stall);
  CHECK_NOTHROW(relay.receiver.rethrow_failure());
  CHECK_FALSE(relay.tree_stopped);
  REQUIRE(relay.ask(0));
  relay.serve();
  // A page asked for and not answered: a stall, within its bound.
  const auto asked_at = std::chrono::steady_clock::now();
  REQUIRE(relay.ask(1));
  REQUIRE(wait_until([&] { return relay.tree_stopped.load(); }, 5 * stall));
  CHECK(std::chrono::steady_clock::now() - asked_at < 2 * stall);
  const auto failure = error_of([&] { relay.receiver.rethrow_failure(); });
  REQUIRE(failure);
  CHECK(contains(failure->what(), "sent nothing for 1 s while pages were asked for"));
}

TEST_CASE("post-copy: a source whose CRIU serves slowly does not take the receiver for idle", "[post-copy]") {
  // 4 s of serving in all, beyond the source's bound (3 s): each request is owed until its answer
  // is sent, and the receiver asks again as soon as it has it.
  Relay relay(std::chrono::seconds(3), std::chrono::minutes(5));
  for (std::uint64_t n = 0; n < 8; ++n) {
    REQUIRE(relay.ask(n));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // CRIU reading the pages
    relay.serve();
  }
  CHECK_NOTHROW(relay.sender.rethrow_failure());
}

TEST_CASE("post-copy: a receiver that asks for its memory slowly for ever is cut off", "[post-copy]") {
  // The source's stall bound (3 s) bounds its idle time in all too: each gap is well within it.
  Relay relay(std::chrono::seconds(3), std::chrono::minutes(5));
  const auto start = std::chrono::steady_clock::now();
  std::optional<Error> failure;
  for (std::uint64_t n = 0; n < 16 && !failure; ++n) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    Iov asked{};
    // The source stops reading requests (and shuts CRIU's socket and the connection) once the
    // budget is spent.
    if (!relay.ask(n) || ::recv(relay.criu.first.get(), &asked, sizeof asked, MSG_WAITALL) != sizeof asked) {
      failure = error_of([&] { relay.sender.rethrow_failure(); });
      break;
    }
    std::string answer(sizeof(Iov) + relay.page, '\x5a');
    const Iov header{6 | (4 << 16), 0, 1, asked.vaddr, asked.dst_id};
    std::memcpy(answer.data(), &header, sizeof header);
    REQUIRE(::send(relay.criu.first.get(), answer.data(), answer.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(answer.size()));
  }
  REQUIRE(failure);
  CHECK(contains(failure->what(), "left the page stream idle for 3 s in all"));
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(took >= std::chrono::seconds(3));
  CHECK(took < std::chrono::seconds(5));
}
