// nc_bench: the library against its baselines, side by side in one run, after a warm-up.
//
//   HMAC        HmacTree::sign / verify against OpenSSL's serial HMAC-SHA256 (EVP_MAC) over the
//               same tree: the seed format (same records, read the same way, 1 MiB chunks), and the
//               chunked format; the latter also against the hardware's ceiling, OpenSSL SHA-256 of
//               the same bytes shared out to every core
//   peak RSS    `nucleus-checkpoint sign --format F` and `verify` on a 1 GiB checkpoint, in both
//               formats (ru_maxrss from wait4)
//   dump        CriuRuntime::checkpoint (leave running)  vs  bare `criu dump --leave-running`
//   restore     CriuRuntime::restore streamed (the default: CRIU reads the images through the
//               library, each chunk checked as it goes) and from the folder after verifying it
//               whole (stream_images=false)  vs  bare `criu restore --restore-detached`
//               Both at each size (--sizes), for a tree whose memory the child shares and for one
//               whose memory is the parent's alone; with the peak RSS of `nucleus-checkpoint dump`
//               and `restore` doing the same (VmHWM of its process, and ru_maxrss from wait4)
//   containers  the same container dumped (left running) and restored three ways, side by side:
//               CriuRuntime::checkpoint / restore (container detection on, as by default); bare
//               CRIU given exactly the arguments the library gave it (recorded once through a
//               wrapper, then replayed with the same descriptor numbers and environment); and, for
//               a runc container, `runc checkpoint --leave-running` / `runc restore -d`. Two
//               containers: the project's launcher (tests/container/launcher.c: its own PID,
//               mount, network namespaces, a volume, /dev binds, pipe stdio, a TCP server) and
//               Debian's runc with tests/container/runc_bundle.sh's bundle (a volume, its own
//               network namespace).
//   transfer    `nucleus-checkpoint export [--zstd] | import` against `tar | [zstd -1 | zstd -d |] tar`
//               on a 1 GiB dump and on a folder of mixed files; and `migrate [--zstd]` to `receive`
//               on 127.0.0.1 of a 1 GiB process rewriting 32 MiB/s (tests/bench/rewriter, in its own
//               PID namespace) against a cold move with bare CRIU: `criu dump`, `tar | tar`, `criu
//               restore -d`; downtime and each phase.
//
// Ratios are library time / baseline time: 1.00 is the same speed, higher is slower. Needs root.
// Run it through scripts/bench.sh, which builds it (release) and passes the paths it needs.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <netinet/in.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <rapidjson/document.h>

#include <nucleus/checkpoint.h>
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>

namespace {

namespace fs = std::filesystem;
namespace nc = nucleus::checkpoint;
using Clock = std::chrono::steady_clock;

constexpr int runs = 3;                  // timed runs per measure; the median is reported
constexpr int dump_runs = 5;             // more for dumps and restores: this machine is noisy
constexpr int restore_runs = 5;
constexpr int rss_runs = 1;              // the command's peak RSS during a dump or restore (steady: one run)
constexpr int container_runs = 11;      // containers are small and quick: more runs, a steadier median
constexpr int transfer_runs = 6;         // export|import against tar|tar: even, so each goes first as often
constexpr int migration_runs = 3;        // each migration starts a fresh 1 GiB workload: slow, so fewer
constexpr int migration_mib = 1024;      // the migrated workload's memory
constexpr int rewrite_mib_per_s = 32;    // of which it rewrites this much every second
constexpr std::size_t chunk = 1 << 20;   // read size, the library's own (seed format)
constexpr int judged_mib = 1024;         // the size (of a tree not shared) the issue sets its targets at
constexpr double sign_target = 1.15;     // the issues' targets
constexpr double dump_target = 1.25;
constexpr double restore_target = 1.10;
constexpr double stream_target = 1.20;  // export | import against tar | tar
constexpr double rss_target_mib = 16;       // the command signing or verifying
constexpr double criu_rss_target_mib = 32;  // the command dumping or restoring

struct Config {
  fs::path counter;   // examples/counter
  fs::path cli;       // examples/nucleus-checkpoint
  fs::path key_file;  // the command's key, in a 0700 folder
  fs::path work;      // a tmpfs folder for every checkpoint (the caller removes it)
  fs::path criu = "/usr/local/sbin/criu";
  std::vector<int> sizes_mib{64, 256, 1024};
  int hmac_mib = 1024;
  // Containers: the launcher binary and the source tree (its tests/container scripts); "yes" runs
  // them after the rest, "only" alone, "no" not at all.
  fs::path launcher;
  fs::path source;
  std::string containers = "yes";
  // Transfer (export | import, migrate): the migration's workload; "yes", "only" or "no" as above.
  fs::path rewriter;
  std::string transfer = "yes";
};

struct Row {
  std::string measure, library, baseline, ratio, target, result;
};

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

void note(const std::string& line) {
  static const auto start = std::chrono::steady_clock::now();
  const double at = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "nc_bench [%.0f s]: %s\n", at, line.c_str());
}

template <typename F>
double timed(F&& f) {
  const auto start = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The CPUs this process may run on: what "all cores" means for parallel hashing.
unsigned usable_cores() {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  return ::sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? static_cast<unsigned>(CPU_COUNT(&cpus)) : 1U;
}

// One measure among those timed side by side: its name in the progress notes, one run of it
// (returning the seconds it took), and the seconds of its timed runs.
struct Timing {
  std::string name;
  std::function<double()> run;
  std::vector<double> seconds{};
  // Containers: CRIU's own time in each run, from its log (the run's lambda appends to it).
  std::shared_ptr<std::vector<double>> criu_seconds = std::make_shared<std::vector<double>>();
  // Dumps and restores: the CPU time each run took (the run's lambda appends to it; see cpu_now).
  std::shared_ptr<std::vector<double>> cpu_seconds = std::make_shared<std::vector<double>>();
};

enum class Order {
  fixed,                 // every round in the given order (when one measure needs another's result)
  reversed_on_odd_runs,  // reversed on odd rounds, so an edge for going first (or last) cancels out
  rotated,               // round r starts with measure r (mod their number): each goes first in turn
};

void warm_up(const std::vector<Timing*>& timings) {
  for (Timing* t : timings) t->run();
}

// Runs every measure once per round, so drift in the machine hits them all alike.
void time_rounds(const std::string& what, const std::vector<Timing*>& timings, int rounds, Order order) {
  for (int round = 0; round < rounds; ++round) {
    std::vector<Timing*> sequence = timings;
    if (order == Order::reversed_on_odd_runs && round % 2 == 1) std::reverse(sequence.begin(), sequence.end());
    if (order == Order::rotated)
      std::rotate(sequence.begin(), sequence.begin() + round % static_cast<int>(sequence.size()), sequence.end());
    std::string line = fmt::format("{} run {}/{}:", what, round + 1, rounds);
    for (Timing* t : sequence) {
      t->seconds.push_back(t->run());
      line += fmt::format(" {} {:.3f} s,", t->name, t->seconds.back());
    }
    line.pop_back();
    note(line);
  }
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// ---------------------------------------------------------------------------------------------
// Processes. The benchmark is a child subreaper, so dumped and restored trees end up as its
// children and their PIDs are freed (reaped) at once: a restore needs every PID of the tree free.

// CRIU as the library runs it: a fixed environment, and CRIU_FAULT=130 because the hardware
// breakpoint path hangs under this hypervisor.
char* const* criu_environment() {
  static const char* env[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C",
                              "CRIU_FAULT=130", nullptr};
  return const_cast<char* const*>(env);
}

// Runs argv with stdin and stdout/stderr on /dev/null and no other descriptor, so nothing of the
// benchmark leaks into a tree CRIU then has to dump.
pid_t spawn(const std::vector<std::string>& argv, char* const* envp, const fs::path& cwd = "/") {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) fail(fmt::format("fork: {}", std::strerror(errno)));
  if (pid == 0) {
    const int null_fd = ::open("/dev/null", O_RDWR);
    if (null_fd < 0 || ::dup2(null_fd, 0) < 0 || ::dup2(null_fd, 1) < 0 || ::dup2(null_fd, 2) < 0) ::_exit(126);
    ::syscall(SYS_close_range, 3U, ~0U, 0U);
    if (::chdir(cwd.c_str()) != 0) ::_exit(126);
    ::execve(args[0], args.data(), envp);
    ::_exit(127);
  }
  return pid;
}

// Waits for one child; its exit code (or 128 + signal), and its resource usage.
int wait_child(pid_t pid, struct rusage* usage = nullptr) {
  int status = 0;
  struct rusage ignored {};
  while (::wait4(pid, &status, 0, usage ? usage : &ignored) < 0)
    if (errno != EINTR) fail(fmt::format("wait4({}): {}", pid, std::strerror(errno)));
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void reap_exited() {
  while (::waitpid(-1, nullptr, WNOHANG) > 0) {
  }
}

// Kills a counter tree (its own process group) and reaps it, and whatever else has ended, until
// the benchmark has no child left: then every PID of the tree is free again.
void kill_and_reap(pid_t pid) {
  ::kill(-pid, SIGKILL);
  ::kill(pid, SIGKILL);  // before the counter's setsid() the group is not its own yet
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  for (;;) {
    const pid_t r = ::waitpid(-1, nullptr, WNOHANG);
    if (r < 0 && errno == ECHILD) return;
    if (r == 0) {
      if (Clock::now() > deadline) fail(fmt::format("the tree of PID {} did not go away", pid));
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
}

// examples/counter DIR MIB: a parent and a child counting in DIR, the parent holding MIB MiB of
// filled memory, which the child shares copy-on-write unless `shared` is false. Killed and reaped
// when it goes out of scope.
class Counter {
 public:
  Counter(const Config& c, const fs::path& dir, int mib, bool shared = true) {
    fs::create_directories(dir);
    std::vector<std::string> argv{c.counter.native(), dir.native(), std::to_string(mib)};
    if (!shared) argv.emplace_back("private");
    pid_ = spawn(argv, criu_environment(), dir);
    // Recorded so that scripts/bench.sh can kill it (or its restored copy: same PIDs) if we die.
    std::ofstream(c.work / "counter.pids", std::ios::app) << pid_ << '\n';
    // It counts only once its memory is filled and it has its own session.
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (!fs::exists(dir / "parent") || !fs::exists(dir / "child")) {
      if (Clock::now() > deadline || ::waitpid(pid_, nullptr, WNOHANG) != 0) {
        stop();  // the destructor does not run for a constructor that throws
        fail("examples/counter did not start");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~Counter() { stop(); }
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  pid_t pid() const { return pid_; }
  void stop() {
    if (pid_ > 0) kill_and_reap(pid_);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

// CRIU's own "Error" lines from a log, for a failure message.
std::string log_errors(const fs::path& log) {
  std::istringstream in(read_text(log));
  std::string line, errors;
  while (std::getline(in, line))
    if (line.find("Error") != std::string::npos) errors += line + "\n";
  return errors.empty() ? "(no Error lines in " + log.native() + ")" : errors;
}

void run_criu(const Config& c, const std::vector<std::string>& args, const fs::path& log) {
  std::vector<std::string> argv{c.criu.native()};
  argv.insert(argv.end(), args.begin(), args.end());
  const int code = wait_child(spawn(argv, criu_environment()));
  if (code != 0) fail(fmt::format("criu {} failed (exit {}): {}", args.front(), code, log_errors(log)));
}

// ---------------------------------------------------------------------------------------------
// HMAC: the library against OpenSSL over the same checkpoint-shaped folder.

void write_file(const fs::path& path, std::span<const unsigned char> bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) fail(fmt::format("cannot create {}: {}", path.native(), std::strerror(errno)));
  for (std::size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(fmt::format("cannot write {}: {}", path.native(), std::strerror(errno)));
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

void write_file(const fs::path& path, const std::string& text) {
  write_file(path, std::span(reinterpret_cast<const unsigned char*>(text.data()), text.size()));
}

// Non-constant bytes (splitmix64), so nothing along the way can shortcut runs of one value.
void fill(std::vector<unsigned char>& buffer, std::uint64_t& state) {
  for (std::size_t i = 0; i + 8 <= buffer.size(); i += 8) {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    std::memcpy(buffer.data() + i, &z, 8);
  }
}

// A folder shaped like a checkpoint: one large pages image and the small files around it.
void make_checkpoint_folder(const fs::path& dir, int mib) {
  fs::create_directory(dir);
  fs::create_directory(dir / "images");
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace);
  fs::permissions(dir / "images", fs::perms::owner_all, fs::perm_options::replace);
  std::vector<unsigned char> buffer(chunk);
  std::uint64_t state = 42;
  const int fd = ::open((dir / "images/pages-1.img").c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) fail(fmt::format("cannot create the pages image: {}", std::strerror(errno)));
  for (int i = 0; i < mib; ++i) {
    fill(buffer, state);
    if (::write(fd, buffer.data(), buffer.size()) != static_cast<ssize_t>(buffer.size()))
      fail(fmt::format("cannot write the pages image: {}", std::strerror(errno)));
  }
  ::close(fd);
  for (const auto& [name, size] : {std::pair{"images/core-1.img", 4096}, {"images/core-2.img", 4096},
                                   {"images/mm-1.img", 2048}, {"images/pagemap-1.img", 512},
                                   {"images/pstree.img", 64}, {"images/inventory.img", 48}}) {
    buffer.resize(static_cast<std::size_t>(size));
    fill(buffer, state);
    write_file(dir / name, buffer);
  }
  std::string log;
  for (int i = 0; i < 2000; ++i) log += fmt::format("({:.6f}) Dumping pages of region {}\n", i * 1e-4, i);
  write_file(dir / "dump.log", log);
  write_file(dir / "metadata.json",
             R"({"container_id":"bench","container_name":"bench","original_pid":1,"command":["counter"],)"
             R"("checkpoint_at":0,"version":"0.1.0","using_gvisor":false,"rootless":false})");
}

struct EvpMacFree {
  void operator()(EVP_MAC* p) const noexcept { EVP_MAC_free(p); }
  void operator()(EVP_MAC_CTX* p) const noexcept { EVP_MAC_CTX_free(p); }
};

// The seed format's tree MAC computed with OpenSSL: the same walk, names in byte order, the same
// records, the same 1 MiB reads. Its result must equal the library's signature.
class OpensslTreeMac {
 public:
  explicit OpensslTreeMac(std::span<const unsigned char> key) : buffer_(chunk) {
    mac_.reset(EVP_MAC_fetch(nullptr, "HMAC", nullptr));
    ctx_.reset(mac_ ? EVP_MAC_CTX_new(mac_.get()) : nullptr);
    char digest[] = "SHA256";
    const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                                OSSL_PARAM_construct_end()};
    if (!ctx_ || EVP_MAC_init(ctx_.get(), key.data(), key.size(), params) != 1) fail("OpenSSL HMAC-SHA256 init failed");
  }

  std::string run(const fs::path& dir) {
    walk(dir, "");
    unsigned char mac[32];
    std::size_t size = 0;
    if (EVP_MAC_final(ctx_.get(), mac, &size, sizeof mac) != 1 || size != sizeof mac) fail("OpenSSL HMAC final failed");
    std::string hex;
    for (unsigned char b : mac) hex += fmt::format("{:02x}", b);
    return hex;
  }

 private:
  void update(const void* data, std::size_t size) {
    if (EVP_MAC_update(ctx_.get(), static_cast<const unsigned char*>(data), size) != 1) fail("OpenSSL HMAC update failed");
  }
  void record(char kind, const std::string& rel) {
    std::string head{kind, '\0'};
    head += rel;
    head.push_back('\0');
    update(head.data(), head.size());
  }

  void walk(const fs::path& dir, const std::string& prefix) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().native());
    std::sort(names.begin(), names.end());
    for (const auto& name : names) {
      if (prefix.empty() && name == nc::HmacTree::signature_file) continue;
      const std::string rel = prefix.empty() ? name : prefix + "/" + name;
      const auto status = fs::symlink_status(dir / name);
      if (fs::is_directory(status)) {
        record('D', rel);
        walk(dir / name, rel);
      } else if (fs::is_regular_file(status)) {
        record('F', rel);
        hash_file(dir / name);
      } else {
        fail(fmt::format("unexpected entry {} in the benchmark folder", rel));
      }
    }
  }

  void hash_file(const fs::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) fail(fmt::format("cannot open {}: {}", path.native(), std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail(fmt::format("cannot stat {}: {}", path.native(), std::strerror(errno)));
    unsigned char le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(static_cast<std::uint64_t>(st.st_size) >> (8 * i));
    update(le, sizeof le);
    ssize_t n;
    while ((n = ::read(fd, buffer_.data(), buffer_.size())) > 0) update(buffer_.data(), static_cast<std::size_t>(n));
    ::close(fd);
    if (n < 0) fail(fmt::format("cannot read {}: {}", path.native(), std::strerror(errno)));
  }

  std::unique_ptr<EVP_MAC, EvpMacFree> mac_;
  std::unique_ptr<EVP_MAC_CTX, EvpMacFree> ctx_;
  std::vector<unsigned char> buffer_;
};

std::string openssl_tree_mac(const fs::path& dir, const nc::HmacKey& key) { return OpensslTreeMac(key.bytes()).run(dir); }

std::uint64_t tree_bytes(const fs::path& dir) {
  std::uint64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() != nc::HmacTree::signature_file) total += e.file_size();
  return total;
}

struct EvpMdCtxFree {
  void operator()(EVP_MD_CTX* p) const noexcept { EVP_MD_CTX_free(p); }
};

// The hardware's ceiling for hashing the tree: OpenSSL SHA-256 of the same bytes, in 4 MiB pieces
// handed out to a thread per core, each piece its own digest and nothing bound together (no walk
// order, no HMAC). Reads are 256 KiB, small enough to stay in cache while hashed. Returns the
// bytes hashed, for a check that they are the tree's.
std::uint64_t openssl_sha256_all_cores(const fs::path& dir) {
  constexpr std::uint64_t piece_size = 4 << 20;
  constexpr std::size_t read_size = 256 << 10;
  struct Piece {
    int fd;
    std::uint64_t offset, size;
  };
  struct OpenFiles {
    std::vector<int> fds;
    ~OpenFiles() {
      for (int fd : fds) ::close(fd);
    }
  } files;
  std::vector<Piece> pieces;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file() || e.path().filename() == nc::HmacTree::signature_file) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) fail(fmt::format("cannot open {}: {}", e.path().native(), std::strerror(errno)));
    files.fds.push_back(fd);
    const std::uint64_t size = e.file_size();
    for (std::uint64_t at = 0; at < size; at += piece_size) pieces.push_back({fd, at, std::min(piece_size, size - at)});
  }

  std::atomic<std::size_t> next{0};
  std::atomic<std::uint64_t> hashed{0};
  std::mutex failure_mutex;
  std::string failure;
  const auto worker = [&] {
    std::unique_ptr<EVP_MD_CTX, EvpMdCtxFree> ctx(EVP_MD_CTX_new());
    std::vector<unsigned char> buffer(read_size);
    unsigned char digest[EVP_MAX_MD_SIZE];
    for (std::size_t i; (i = next++) < pieces.size();) {
      const Piece& p = pieces[i];
      bool ok = ctx && EVP_DigestInit_ex2(ctx.get(), EVP_sha256(), nullptr) == 1;
      for (std::uint64_t at = p.offset; ok && at < p.offset + p.size;) {
        const ssize_t n = ::pread(p.fd, buffer.data(), std::min<std::uint64_t>(read_size, p.offset + p.size - at),
                                  static_cast<off_t>(at));
        ok = n > 0 && EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<std::size_t>(n)) == 1;
        if (ok) at += static_cast<std::uint64_t>(n);
      }
      if (!ok || EVP_DigestFinal_ex(ctx.get(), digest, nullptr) != 1) {
        next = pieces.size();  // the others stop too
        const std::lock_guard lock(failure_mutex);
        failure = "OpenSSL SHA-256 over the benchmark folder failed (read or digest error)";
        return;
      }
      hashed += p.size;
    }
  };
  {
    std::vector<std::jthread> helpers;
    for (unsigned t = 1; t < usable_cores(); ++t) helpers.emplace_back(worker);
    worker();
  }
  if (!failure.empty()) fail(failure);
  return hashed;
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

std::string ratio_text(double r) { return fmt::format("{:.2f}x", r); }
std::string verdict(bool pass) { return pass ? "PASS" : "MISS"; }

// A throughput row: `library` against `baseline` over the same `gb` bytes, judged only with a target.
Row hash_row(const std::string& measure, const Timing& library, const Timing& baseline, const std::string& baseline_name,
             double gb, std::optional<double> target) {
  const auto rate = [&](const Timing& t) { return fmt::format("{:.2f} GB/s", gb / median(t.seconds)); };
  const double r = median(library.seconds) / median(baseline.seconds);
  return {measure, rate(library), rate(baseline) + " " + baseline_name, ratio_text(r),
          target ? fmt::format("<= {:.2f}x", *target) : "-", target ? verdict(r <= *target) : "-"};
}

void bench_hmac(const fs::path& dir, std::vector<Row>& rows) {
  const nc::HmacKey key = nc::HmacKey::generate();
  const std::uint64_t bytes = tree_bytes(dir);
  const double gb = static_cast<double>(bytes) / 1e9;
  const auto sign_as = [&](nc::SignatureFormat format) {
    nc::HmacTree::sign_as(dir, key, format);
    if (nc::HmacTree::format_of(dir) != format) fail("the library signed in another format than it was asked for");
  };

  // Warm-up, and cross-checks that each side hashes the same bytes: OpenSSL's tree MAC is the
  // seed-format signature, and the ceiling hashes every byte of the tree.
  const std::string expected = openssl_tree_mac(dir, key);
  sign_as(nc::SignatureFormat::seed);
  nc::HmacTree::verify(dir, key);
  if (trim(read_text(dir / nc::HmacTree::signature_file)) != expected)
    fail("OpenSSL's tree MAC differs from the library's signature: the two do not hash the same bytes");
  sign_as(nc::SignatureFormat::chunked);
  nc::HmacTree::verify(dir, key);
  if (openssl_sha256_all_cores(dir) != bytes) fail("the all-core SHA-256 ceiling did not hash every byte of the tree");
  note("HMAC warm-up done; OpenSSL's tree MAC equals the library's seed-format signature");

  // Each verify follows the sign of its format, which it then checks: a fixed order.
  Timing openssl{"OpenSSL HMAC", [&] {
                   return timed([&] {
                     if (CRYPTO_memcmp(openssl_tree_mac(dir, key).data(), expected.data(), expected.size()) != 0)
                       fail("OpenSSL's tree MAC changed between runs");
                   });
                 }};
  Timing seed_sign{"seed sign", [&] { return timed([&] { sign_as(nc::SignatureFormat::seed); }); }};
  Timing seed_verify{"seed verify", [&] { return timed([&] { nc::HmacTree::verify(dir, key); }); }};
  Timing chunked_sign{"chunked sign", [&] { return timed([&] { sign_as(nc::SignatureFormat::chunked); }); }};
  Timing chunked_verify{"chunked verify", [&] { return timed([&] { nc::HmacTree::verify(dir, key); }); }};
  Timing ceiling{"SHA-256 all cores", [&] { return timed([&] { openssl_sha256_all_cores(dir); }); }};
  time_rounds("HMAC", {&openssl, &seed_sign, &seed_verify, &chunked_sign, &chunked_verify, &ceiling}, runs, Order::fixed);

  const std::string size = fmt::format("({:.2f} GB)", gb);
  const std::string ceiling_name = fmt::format("SHA-256 {} cores", usable_cores());
  rows.push_back(hash_row("HMAC sign, seed format " + size, seed_sign, openssl, "OpenSSL", gb, sign_target));
  rows.push_back(hash_row("HMAC verify, seed format " + size, seed_verify, openssl, "OpenSSL", gb, sign_target));
  rows.push_back(hash_row("HMAC sign, chunked format " + size, chunked_sign, openssl, "OpenSSL", gb, std::nullopt));
  rows.push_back(hash_row("HMAC verify, chunked format " + size, chunked_verify, openssl, "OpenSSL", gb, std::nullopt));
  rows.push_back(hash_row("HMAC sign, chunked, vs all-core ceiling", chunked_sign, ceiling, ceiling_name, gb, std::nullopt));
  rows.push_back(hash_row("HMAC verify, chunked, vs all-core ceiling", chunked_verify, ceiling, ceiling_name, gb, std::nullopt));
}

// ---------------------------------------------------------------------------------------------
// Peak RSS of the command, as a child: its ru_maxrss from wait4.

void ensure_key_file(const fs::path& key_file) {
  const fs::path folder = key_file.parent_path();
  fs::create_directories(folder);
  fs::permissions(folder, fs::perms::owner_all, fs::perm_options::replace);  // the key store demands 0700
  if (fs::exists(key_file)) return;
  const nc::HmacKey key = nc::HmacKey::generate();
  write_file(key_file, key.bytes());
}

// Runs `nucleus-checkpoint ARGS... --dir DIR` with the key file; its peak RSS in MiB.
double peak_rss_mib(const Config& c, const std::vector<std::string>& args, const fs::path& dir) {
  const std::string key_env = "NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=" + c.key_file.native();
  // The library's engine switch, if set, goes along: the command must hash as the library does here.
  const char* engine = std::getenv("NUCLEUS_CHECKPOINT_HMAC_ENGINE");
  const std::string engine_env = fmt::format("NUCLEUS_CHECKPOINT_HMAC_ENGINE={}", engine ? engine : "");
  const char* env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", key_env.c_str(),
                       engine ? engine_env.c_str() : nullptr, nullptr};
  std::vector<std::string> argv{c.cli.native()};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.insert(argv.end(), {"--dir", dir.native()});
  struct rusage usage {};
  const int code = wait_child(spawn(argv, const_cast<char* const*>(env)), &usage);
  if (code != 0) fail(fmt::format("{} failed with exit code {}", fmt::join(argv, " "), code));
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB
}

void bench_rss(const Config& c, const fs::path& dir, std::vector<Row>& rows) {
  ensure_key_file(c.key_file);
  const std::string size = fmt::format("({:.2f} GB)", static_cast<double>(tree_bytes(dir)) / 1e9);
  for (const char* format : {"seed", "chunked"}) {
    std::vector<double> sign, verify;
    for (int i = 0; i < runs; ++i) {
      // Signs with the key file, so verify then passes; verify tells the format from the signature.
      sign.push_back(peak_rss_mib(c, {"sign", "--format", format}, dir));
      verify.push_back(peak_rss_mib(c, {"verify"}, dir));
    }
    for (const auto& [what, mib] : {std::pair{"sign", &sign}, {"verify", &verify}}) {
      const double worst = *std::max_element(mib->begin(), mib->end());  // a ceiling: report the worst run
      rows.push_back({fmt::format("peak RSS, CLI {}, {} format {}", what, format, size), fmt::format("{:.1f} MiB", worst),
                      "-", "-", fmt::format("< {:.0f} MiB", rss_target_mib), verdict(worst < rss_target_mib)});
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Dump and restore: the library against bare CRIU on the same tree, at each size, for a tree
// whose memory the child shares copy-on-write (CRIU writes it once for each: about 2N MiB of
// pages) and for one whose memory is the parent's alone (N MiB). Each operation's variants run
// side by side, once each per round, the first of them rotating from round to round.

void private_dir(const fs::path& dir) {
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace);
}

// CRIU's own time from its log: the timestamp on its line saying it finished (it counts from the
// moment CRIU started logging, just after it started).
std::optional<double> criu_log_seconds(const fs::path& log) {
  std::istringstream in(read_text(log));
  for (std::string line; std::getline(in, line);)
    if (line.starts_with("(") && (line.find("Dumping finished successfully") != std::string::npos ||
                                  line.find("Restore finished successfully") != std::string::npos))
      return std::stod(line.substr(1, line.find(')') - 1));
  return std::nullopt;
}

// CPU seconds used so far by this process (all its threads: the library's hashing and serving)
// and by its children once reaped: CRIU, and a restored tree, which does its own part of the
// restore (reading its pages) and is reaped when killed. Unlike wall time, hardly affected by how
// busy the machine is: what a run costs, whatever else runs.
double cpu_now() {
  struct rusage self {}, children {};
  ::getrusage(RUSAGE_SELF, &self);
  ::getrusage(RUSAGE_CHILDREN, &children);
  const auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return s(self.ru_utime) + s(self.ru_stime) + s(children.ru_utime) + s(children.ru_stime);
}

// What CRIU logs at -v4 once it is done with the image stream: only a streamed restore has it.
constexpr std::string_view streamer_line = "Dismissing the image streamer";

enum class Tree { shared, not_shared };

std::string tree_name(Tree tree) { return tree == Tree::shared ? "shared" : "not shared"; }

// A dump timed into dir, which is then removed: every run writes its images afresh. CRIU's own
// time comes from the dump.log it left there.
Timing discarded_dump(std::string name, const fs::path& dir, std::function<double(const fs::path&)> dump) {
  Timing t{std::move(name), {}};
  t.run = [dir, dump = std::move(dump), criu = t.criu_seconds, cpu = t.cpu_seconds] {
    const double cpu_before = cpu_now();
    const double seconds = dump(dir);
    cpu->push_back(cpu_now() - cpu_before);  // the dumped tree's part (CRIU's parasite) is left out, as it runs on
    if (const auto inner = criu_log_seconds(dir / "dump.log")) criu->push_back(*inner);
    fs::remove_all(dir);
    reap_exited();
    return seconds;
  };
  return t;
}

double bare_dump(const Config& c, pid_t pid, const fs::path& dir) {
  fs::create_directory(dir);
  return timed([&] {
    run_criu(c, {"dump", "-t", std::to_string(pid), "-D", dir.native(), "-W", dir.native(), "-o", "dump.log", "-v4",
                 "--shell-job", "--leave-running"}, dir / "dump.log");
  });
}

// The library's dump, left running, in the library's default signature format (what its
// restores stream from).
double library_dump(nc::CriuRuntime& rt, pid_t pid, const fs::path& dir) {
  nc::ContainerInfo box;
  box.id = "bench";
  box.pid = pid;
  nc::CriuOptions options;  // the defaults match the bare dump's: -v4 --shell-job
  options.leave_running = true;
  return timed([&] { rt.checkpoint(box, dir, options); });
}

// Restores the images of the library's checkpoint with bare CRIU. Its log and pidfile go to a
// work folder of their own, so the checkpoint stays exactly as signed for the library's restores.
Timing bare_restore(const Config& c, const fs::path& checkpoint, const fs::path& work) {
  Timing t{"CRIU", {}};
  t.run = [&c, checkpoint, work, criu = t.criu_seconds, cpu = t.cpu_seconds] {
    private_dir(work);
    const double cpu_before = cpu_now();
    const double seconds = timed([&] {
      run_criu(c, {"restore", "-D", (checkpoint / "images").native(), "-W", work.native(), "-o", "restore.log", "-v4",
                   "--shell-job", "--restore-detached", "--pidfile", (work / "restore.pid").native()},
               work / "restore.log");
    });
    const pid_t pid = static_cast<pid_t>(std::stol(read_text(work / "restore.pid")));
    if (::kill(pid, 0) != 0) fail(fmt::format("bare criu restored PID {}, but it does not run", pid));
    kill_and_reap(pid);
    cpu->push_back(cpu_now() - cpu_before);
    if (const auto inner = criu_log_seconds(work / "restore.log")) criu->push_back(*inner);
    fs::remove_all(work);
    return seconds;
  };
  return t;
}

// The library's restore, streamed (the default) or from the folder once it verifies whole. CRIU's
// log goes to a work folder of the benchmark's, for CRIU's own time, and tells whether CRIU
// really read a stream: a checkpoint in an older signature format would silently restore from
// the folder.
Timing library_restore(std::string name, nc::CriuRuntime& rt, const fs::path& checkpoint, const fs::path& work,
                       bool stream) {
  Timing t{std::move(name), {}};
  t.run = [&rt, checkpoint, work, stream, criu = t.criu_seconds, cpu = t.cpu_seconds] {
    private_dir(work);
    nc::CriuOptions o;
    o.work_dir = work;
    o.stream_images = stream;
    pid_t pid = 0;
    const double cpu_before = cpu_now();
    const double seconds = timed([&] { pid = rt.restore(checkpoint, o); });
    if (::kill(pid, 0) != 0) fail(fmt::format("the library restored PID {}, but it does not run", pid));
    kill_and_reap(pid);
    cpu->push_back(cpu_now() - cpu_before);
    const std::string log = read_text(work / "restore.log");
    if ((log.find(streamer_line) != std::string::npos) != stream)
      fail(fmt::format("the library's restore (stream_images={}) {} CRIU's images through a stream", stream,
                       stream ? "did not give" : "gave"));
    if (const auto inner = criu_log_seconds(work / "restore.log")) criu->push_back(*inner);
    fs::remove_all(work);
    return seconds;
  };
  return t;
}

// Warm-up runs, then the timed ones, the first in each round rotating; CRIU's own times of the
// timed runs alone kept.
void time_criu_rounds(const std::string& what, const std::vector<Timing*>& timings, int rounds) {
  warm_up(timings);
  for (Timing* t : timings) {
    t->criu_seconds->clear();
    t->cpu_seconds->clear();
  }
  time_rounds(what, timings, rounds, Order::rotated);
}

// The command's peak memory, in runs of its own (untimed): the highest VmHWM of its own process
// (sampled every millisecond from /proc while it runs: CRIU and the restored tree are other
// processes), and ru_maxrss from wait4, which also counts CRIU, its child, and the benchmark's own
// pages at the fork.
struct PeakRss {
  double own_mib = 0;
  double maxrss_mib = 0;
};

// VmHWM in KiB of a running process named `name` (its first 15 bytes: /proc's Name); 0 once it
// is gone (or a zombie), or while it is still the benchmark's copy between fork and exec.
long vm_hwm_kib(pid_t pid, const std::string& name) {
  std::istringstream in(read_text(fmt::format("/proc/{}/status", pid)));
  long kib = 0;
  bool named = false;
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("Name:")) {
      const auto at = line.find_first_not_of(" \t", 5);
      named = at != std::string::npos && trim(line.substr(at)) == name.substr(0, 15);
    }
    if (line.starts_with("VmHWM:")) kib = std::stol(line.substr(6));
  }
  return named ? kib : 0;
}

// Runs the command (`nucleus-checkpoint ARGS...`) with the key file; its peak RSS.
PeakRss cli_peak_rss(const Config& c, const std::vector<std::string>& args) {
  const std::string key_env = "NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=" + c.key_file.native();
  const char* engine = std::getenv("NUCLEUS_CHECKPOINT_HMAC_ENGINE");
  const std::string engine_env = fmt::format("NUCLEUS_CHECKPOINT_HMAC_ENGINE={}", engine ? engine : "");
  const char* env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", key_env.c_str(),
                       engine ? engine_env.c_str() : nullptr, nullptr};
  std::vector<std::string> argv{c.cli.native()};
  argv.insert(argv.end(), args.begin(), args.end());
  const pid_t pid = spawn(argv, const_cast<char* const*>(env));
  long own_kib = 0;
  int status = 0;
  struct rusage usage {};
  for (;;) {
    const pid_t r = ::wait4(pid, &status, WNOHANG, &usage);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) fail(fmt::format("wait4({}): {}", pid, std::strerror(errno)));
    own_kib = std::max(own_kib, vm_hwm_kib(pid, c.cli.filename().native()));
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (code != 0) fail(fmt::format("{} failed with exit code {}", fmt::join(argv, " "), code));
  if (own_kib == 0) fail(fmt::format("{} ended before its memory could be read", fmt::join(argv, " ")));
  return {static_cast<double>(own_kib) / 1024.0, static_cast<double>(usage.ru_maxrss) / 1024.0};
}

PeakRss worst(const std::vector<PeakRss>& runs) {
  PeakRss w;
  for (const PeakRss& r : runs) w = {std::max(w.own_mib, r.own_mib), std::max(w.maxrss_mib, r.maxrss_mib)};
  return w;
}

// What this build of the command offers (its help text): the restore's --no-stream flag, the
// manifest format for dumps.
struct CliFeatures {
  bool no_stream = false;
  std::string dump_format;  // "manifest" if the command takes it (the library's default); else the command's default
};

std::string cli_help(const Config& c, const std::string& subcommand) {
  const int fd = ::memfd_create("cli-help", MFD_CLOEXEC);
  if (fd < 0) fail(fmt::format("memfd_create: {}", std::strerror(errno)));
  const pid_t pid = ::fork();
  if (pid < 0) fail(fmt::format("fork: {}", std::strerror(errno)));
  if (pid == 0) {
    const int null_fd = ::open("/dev/null", O_RDWR);
    if (null_fd < 0 || ::dup2(null_fd, 0) < 0 || ::dup2(fd, 1) < 0 || ::dup2(null_fd, 2) < 0) ::_exit(126);
    ::syscall(SYS_close_range, 3U, ~0U, 0U);
    ::execl(c.cli.c_str(), c.cli.c_str(), subcommand.c_str(), "--help", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  wait_child(pid);
  std::string text(1 << 16, '\0');
  const ssize_t n = ::pread(fd, text.data(), text.size(), 0);
  ::close(fd);
  text.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return text;
}

CliFeatures cli_features(const Config& c) {
  CliFeatures f;
  f.no_stream = cli_help(c, "restore").find("--no-stream") != std::string::npos;
  if (cli_help(c, "dump").find("manifest") != std::string::npos) f.dump_format = "manifest";
  return f;
}

// How many cores this machine gives right now: SHA-256 of the same 16 MiB in memory on one thread,
// then on every core at once; cores x one thread's time / all cores' time, the best of 3 tries.
// On this project's VMs two vCPUs sometimes run as one: a library that hashes beside CRIU then
// takes about as long as both one after the other.
double effective_cores() {
  const unsigned cores = usable_cores();
  std::vector<unsigned char> data(16 << 20);
  std::uint64_t state = 7;
  fill(data, state);
  const auto hash = [&data] {
    unsigned char digest[EVP_MAX_MD_SIZE];
    if (EVP_Digest(data.data(), data.size(), digest, nullptr, EVP_sha256(), nullptr) != 1) fail("OpenSSL SHA-256 failed");
  };
  double best = 0;
  for (int i = 0; i < 3; ++i) {
    const double one = timed(hash);
    const double all = timed([&] {
      std::vector<std::jthread> threads;
      for (unsigned t = 0; t < cores; ++t) threads.emplace_back(hash);
    });
    best = std::max(best, cores * one / all);
  }
  return std::min<double>(best, cores);
}

// One row of the dump and restore table.
struct CriuRow {
  std::string tree;
  int mib = 0;
  std::string operation;
  double library = 0, bare = 0;
  std::optional<double> library_criu, bare_criu;  // CRIU's own part, from its log
  double library_cpu = 0, bare_cpu = 0;             // CPU seconds, median
  std::optional<PeakRss> rss;                     // the command doing the same
  std::optional<double> target;                   // the issue's, at its size and tree only
  std::pair<double, double> cores{0, 0};          // effective cores before and after the rounds
};

std::optional<double> criu_median(const Timing& t) {
  if (t.criu_seconds->empty()) return std::nullopt;
  return median(*t.criu_seconds);
}

CriuRow criu_row(Tree tree, int mib, std::string operation, const Timing& library, const Timing& bare,
                 std::optional<PeakRss> rss, std::optional<double> target, std::pair<double, double> cores) {
  return {tree_name(tree),
          mib,
          std::move(operation),
          median(library.seconds),
          median(bare.seconds),
          criu_median(library),
          criu_median(bare),
          median(*library.cpu_seconds),
          median(*bare.cpu_seconds),
          rss,
          target,
          cores};
}

// The rounds, with the machine's effective cores just before and just after them.
std::pair<double, double> rounds_with_cores(const std::string& what, const std::vector<Timing*>& timings, int rounds) {
  const double before = effective_cores();
  time_criu_rounds(what, timings, rounds);
  const double after = effective_cores();
  note(fmt::format("{}: effective cores {:.1f} before, {:.1f} after", what, before, after));
  return {before, after};
}

void bench_criu(const Config& c, nc::CriuRuntime& rt, const CliFeatures& cli, int mib, Tree tree,
                std::vector<CriuRow>& rows) {
  const fs::path base = c.work / fmt::format("criu-{}-{}", mib, tree == Tree::shared ? "shared" : "private");
  private_dir(base);
  const fs::path source = base / "checkpoint";  // the library's checkpoint every restore starts from
  const bool judged = mib == judged_mib && tree == Tree::not_shared;
  const std::string what = fmt::format("{} MiB {}", mib, tree_name(tree));
  std::vector<PeakRss> dump_rss, stream_rss, folder_rss;
  pid_t pid = 0;  // the counter's root; a restored tree's too
  {
    Counter counter(c, base / "counter", mib, tree == Tree::shared);
    pid = counter.pid();
    library_dump(rt, pid, source);  // untimed; what the restores restore
    reap_exited();
    Timing bare = discarded_dump("CRIU", base / "bare", [&](const fs::path& dir) { return bare_dump(c, pid, dir); });
    Timing library = discarded_dump("library", base / "library",
                                    [&](const fs::path& dir) { return library_dump(rt, pid, dir); });
    const auto dump_cores = rounds_with_cores("dump " + what, {&bare, &library}, dump_runs);
    // The command's peak memory while it dumps the same tree, in runs of its own.
    for (int i = 0; i < rss_runs; ++i) {
      const fs::path dir = base / "cli-dump";
      std::vector<std::string> args{"dump", "--pid", std::to_string(pid), "--dir", dir.native(), "--leave-running",
                                    "--criu", c.criu.native()};
      if (!cli.dump_format.empty()) args.insert(args.end(), {"--signature-format", cli.dump_format});
      dump_rss.push_back(cli_peak_rss(c, args));
      fs::remove_all(dir);
      reap_exited();
    }
    rows.push_back(criu_row(tree, mib, "dump, left running", library, bare, worst(dump_rss),
                            judged ? std::optional(dump_target) : std::nullopt, dump_cores));
    note(fmt::format("dump {}: the command's peak RSS {:.1f} MiB (ru_maxrss {:.1f} MiB)", what, worst(dump_rss).own_mib,
                     worst(dump_rss).maxrss_mib));
  }  // the counter gone: its PIDs must be free for the restores

  Timing bare = bare_restore(c, source, base / "restore-work");
  Timing streamed = library_restore("streamed", rt, source, base / "library-restore-work", true);
  Timing folder = library_restore("folder", rt, source, base / "library-restore-work", false);
  const auto restore_cores = rounds_with_cores("restore " + what, {&bare, &streamed, &folder}, restore_runs);
  // The command's peak memory while it restores the same checkpoint (signed with its key file's
  // key, as every checkpoint here), in runs of its own. The restored tree has the counter's PIDs;
  // it ends up the benchmark's child (a subreaper), killed and reaped after each run.
  const auto cli_restore = [&](bool stream) {
    std::vector<std::string> args{"restore", "--dir", source.native(), "--criu", c.criu.native()};
    if (!stream) args.emplace_back("--no-stream");
    const PeakRss rss = cli_peak_rss(c, args);
    if (::kill(pid, 0) != 0) fail(fmt::format("the command restored {}, but PID {} does not run", source.native(), pid));
    kill_and_reap(pid);
    return rss;
  };
  for (int i = 0; i < rss_runs; ++i) {
    stream_rss.push_back(cli_restore(true));
    if (cli.no_stream) folder_rss.push_back(cli_restore(false));
  }
  rows.push_back(criu_row(tree, mib, "restore, streamed", streamed, bare, worst(stream_rss),
                          judged ? std::optional(restore_target) : std::nullopt, restore_cores));
  rows.push_back(criu_row(tree, mib, "restore, verify then folder", folder, bare,
                          cli.no_stream ? std::optional(worst(folder_rss)) : std::nullopt, std::nullopt, restore_cores));
  note(fmt::format("restore {}: the command's peak RSS {:.1f} MiB streamed (ru_maxrss {:.1f} MiB){}", what,
                   worst(stream_rss).own_mib, worst(stream_rss).maxrss_mib,
                   cli.no_stream ? fmt::format(", {:.1f} MiB from the folder (ru_maxrss {:.1f} MiB)",
                                               worst(folder_rss).own_mib, worst(folder_rss).maxrss_mib)
                                 : std::string(", --no-stream not in this build of the command")));
  fs::remove_all(base);
}

// ---------------------------------------------------------------------------------------------
// Containers: one container dumped and restored by the library, by bare CRIU given exactly the
// library's arguments, and (a runc container) by runc itself.
//
// Every process started here ends up the benchmark's child (it is a subreaper): the launcher,
// runc's container inits once `runc run -d` returns, restored trees once CRIU exits. While
// containers run, exit statuses are collected by reap_poll() alone and kept by PID, so waiting for
// one process never takes another's status.

std::map<pid_t, int>& exited_children() {
  static std::map<pid_t, int> exited;
  return exited;
}

void reap_poll() {
  int status = 0;
  pid_t pid;
  while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) exited_children()[pid] = status;
}

// Waits until PID has exited and been reaped; its exit code (128 + signal), -1 if another parent
// reaped it, nullopt if it still runs after `limit`.
std::optional<int> await_exit(pid_t pid, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  for (;;) {
    reap_poll();
    auto& exited = exited_children();
    if (const auto it = exited.find(pid); it != exited.end()) {
      const int status = it->second;
      exited.erase(it);
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (::kill(pid, 0) != 0 && errno == ESRCH) return -1;
    if (Clock::now() > deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
}

int await_exit_or_fail(pid_t pid, const std::string& what, std::chrono::seconds limit = std::chrono::seconds(120)) {
  const auto code = await_exit(pid, limit);
  if (!code) fail(fmt::format("{} (PID {}) did not end within {} s", what, pid, limit.count()));
  return *code;
}

bool is_running(pid_t pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  const std::string stat = read_text(fmt::format("/proc/{}/stat", pid));
  const auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

// A restored container's init: SIGKILL (an init ignores SIGTERM), which ends its PID namespace,
// then reaped.
void kill_restored(pid_t pid) {
  if (pid <= 0) return;
  ::kill(pid, SIGKILL);
  if (!await_exit(pid, std::chrono::seconds(30))) fail(fmt::format("restored container PID {} did not die", pid));
}

// Runs `program` as argv (argv[0] as given) with stdin, stdout and stderr (-1: /dev/null) and each
// `extra` descriptor at its number, nothing else open.
struct FdAt {
  int target;
  int source;
};
pid_t spawn_io(const fs::path& program, const std::vector<std::string>& argv, const std::vector<std::string>& env,
               int in, int out, int err, const std::vector<FdAt>& extra = {}) {
  constexpr int high = 512;  // every source is moved above every target first
  for (const FdAt& f : extra)
    if (f.target < 3 || f.target >= high) fail(fmt::format("descriptor number {} out of range", f.target));
  std::vector<std::string> args_copy = argv, env_copy = env;
  std::vector<char*> args, envp;
  for (auto& a : args_copy) args.push_back(a.data());
  args.push_back(nullptr);
  for (auto& e : env_copy) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<int> moved(3 + extra.size());
  int top = 2;
  for (const FdAt& f : extra) top = std::max(top, f.target);
  const pid_t pid = ::fork();
  if (pid < 0) fail(fmt::format("fork: {}", std::strerror(errno)));
  if (pid == 0) {
    const int null_fd = ::open("/dev/null", O_RDWR);
    if (null_fd < 0) ::_exit(126);
    const int stdio[3] = {in >= 0 ? in : null_fd, out >= 0 ? out : null_fd, err >= 0 ? err : null_fd};
    for (int i = 0; i < 3; ++i)
      if ((moved[i] = ::fcntl(stdio[i], F_DUPFD, high)) < 0) ::_exit(126);
    for (std::size_t j = 0; j < extra.size(); ++j)
      if ((moved[3 + j] = ::fcntl(extra[j].source, F_DUPFD, high)) < 0) ::_exit(126);
    for (int i = 0; i < 3; ++i)
      if (::dup2(moved[i], i) < 0) ::_exit(126);
    for (std::size_t j = 0; j < extra.size(); ++j)
      if (::dup2(moved[3 + j], extra[j].target) < 0) ::_exit(126);
    for (int fd = 3; fd <= top; ++fd) {
      bool keep = false;
      for (const FdAt& f : extra) keep = keep || f.target == fd;
      if (!keep) ::close(fd);
    }
    ::syscall(SYS_close_range, static_cast<unsigned>(top + 1), ~0U, 0U);
    if (::chdir("/") != 0) ::_exit(126);
    ::execve(program.c_str(), args.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

std::vector<std::string> plain_environment() {
  std::vector<std::string> env;
  for (char* const* e = criu_environment(); *e; ++e) env.emplace_back(*e);
  return env;
}

int open_or_fail(const fs::path& path, int flags, mode_t mode = 0600) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) fail(fmt::format("cannot open {}: {}", path.native(), std::strerror(errno)));
  return fd;
}

// A setup script, its output into `log`; fails with that output.
void run_setup(const std::vector<std::string>& argv, const fs::path& log) {
  const int fd = open_or_fail(log, O_WRONLY | O_CREAT | O_APPEND);
  const pid_t pid = spawn_io(argv.front(), argv, plain_environment(), -1, fd, fd);
  ::close(fd);
  if (const int code = await_exit_or_fail(pid, argv[1]); code != 0)
    fail(fmt::format("{} failed (exit {}): {}", fmt::join(argv, " "), code, read_text(log)));
}

long read_counter(const fs::path& file) {
  const std::string text = read_text(file);
  try {
    return text.empty() ? -1 : std::stol(text);
  } catch (const std::exception&) {
    return -1;
  }
}

void wait_counting(const fs::path& counter, const std::string& what) {
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (read_counter(counter) <= 3) {
    if (Clock::now() > deadline) fail(what + " did not start counting in its volume");
    reap_poll();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Where a cgroup v2 folder of our own goes: the hybrid layout's unified mount, or a pure v2 root.
fs::path cgroup2_root() {
  for (const char* p : {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}) {
    struct statfs st {};
    if (::statfs(p, &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC) return p;
  }
  fail("no cgroup v2 hierarchy mounted at /sys/fs/cgroup/unified or /sys/fs/cgroup");
}

// Every cgroup folder named TAG-... (the launcher's; runc's and what CRIU recreated of them, in
// each hierarchy) and what is below it, deepest first, retried while the last processes leave
// them. Best effort: scripts/bench.sh does it again.
void collect_cgroups(const fs::path& dir, const std::string& tag, int depth, bool below_match, std::vector<fs::path>& found) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_directory(ec) || it->is_symlink(ec)) continue;  // cgroup files, and errors, skipped
    const bool match = below_match || it->path().filename().native().starts_with(tag + "-");
    if (match) found.push_back(it->path());
    if (depth < 6) collect_cgroups(it->path(), tag, depth + 1, match, found);
  }
}

void remove_cgroups(const std::string& tag) {
  std::vector<fs::path> found;
  collect_cgroups("/sys/fs/cgroup", tag, 1, false, found);
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  for (auto it = found.rbegin(); it != found.rend(); ++it) {  // children were listed after their parents
    while (::rmdir(it->c_str()) != 0 && errno == EBUSY && Clock::now() < deadline) {
      reap_poll();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

// --- What the library gives CRIU, recorded once through a stand-in and replayed bare ---

struct CriuCall {
  std::vector<std::string> args;  // after argv[0]
  std::vector<std::string> env;
};

// A stand-in for criu that records the arguments and the environment the library runs CRIU with
// for a dump or a restore, then runs CRIU with them. Used untimed, once per container and action.
fs::path write_capture_wrapper(const Config& c, const fs::path& dir) {
  private_dir(dir);
  const fs::path script = dir / "criu";
  write_file(script, fmt::format(R"(#!/bin/sh
# nc_bench: records what the library gives CRIU, then runs CRIU with it
case "$1" in
  dump|restore)
    {{ echo "$#"; printf '%s\n' "$@"; }} > '{0}'/"$1".args
    tr '\0' '\n' < /proc/$$/environ > '{0}'/"$1".env ;;
esac
exec '{1}' "$@"
)",
                                 dir.native(), c.criu.native()));
  fs::permissions(script, fs::perms::owner_all, fs::perm_options::replace);
  return script;
}

CriuCall take_capture(const fs::path& dir, const std::string& action) {
  const fs::path args_file = dir / (action + ".args"), env_file = dir / (action + ".env");
  if (!fs::exists(args_file)) fail(fmt::format("the library ran no criu {} through the recording stand-in", action));
  CriuCall call;
  std::istringstream args(read_text(args_file)), env(read_text(env_file));
  std::string line;
  std::getline(args, line);
  const std::size_t count = std::stoul(line);
  while (std::getline(args, line)) call.args.push_back(line);
  while (std::getline(env, line))
    if (!line.empty()) call.env.push_back(line);
  if (call.args.size() != count || call.args.front() != action)
    fail(fmt::format("cannot read back the library's criu {} arguments (an argument spanning lines?)", action));
  fs::remove(args_file);
  fs::remove(env_file);
  note(fmt::format("the library ran: criu {}", fmt::join(call.args, " ")));
  // Bare CRIU reads the images from the folder itself: no stream (the library serves it), and no
  // action script (the library's notifications: a streamed restore verifies what CRIU did not read
  // at pre-resume; its script is gone with the library's call).
  std::vector<std::string> bare;
  for (std::size_t i = 0; i < call.args.size(); ++i) {
    if (call.args[i] == "--stream") continue;
    if (call.args[i] == "--action-script" && i + 1 < call.args.size()) {
      ++i;
      continue;
    }
    bare.push_back(call.args[i]);
  }
  if (bare.size() != call.args.size()) {
    call.args = std::move(bare);
    note(fmt::format("bare CRIU runs: criu {}", fmt::join(call.args, " ")));
  }
  return call;
}

std::string call_value(const CriuCall& call, const std::string& option) {
  for (std::size_t i = 0; i + 1 < call.args.size(); ++i)
    if (call.args[i] == option) return call.args[i + 1];
  return "";
}

// CRIU run exactly as the library ran it, with these images and work folders where the library had
// its own: at the same descriptor numbers when it named them /proc/self/fd/N, as paths otherwise.
// The seconds CRIU took.
double replay(const Config& c, CriuCall call, const fs::path& images, const fs::path& work) {
  std::vector<FdAt> fds;
  std::vector<int> opened;
  for (std::size_t i = 0; i < call.args.size(); ++i) {
    const std::string& a = call.args[i];
    if (a == "--inherit-fd" || a.starts_with("--inherit-fd="))
      fail("the library handed CRIU descriptors of its own (--inherit-fd); the benchmark does not replay those");
    if ((a != "--images-dir" && a != "--work-dir") || i + 1 >= call.args.size()) continue;
    const fs::path& dir = a == "--images-dir" ? images : work;
    std::string& value = call.args[i + 1];
    constexpr std::string_view fd_prefix = "/proc/self/fd/";
    if (value.starts_with(fd_prefix)) {
      opened.push_back(open_or_fail(dir, O_RDONLY | O_DIRECTORY));
      fds.push_back({std::stoi(value.substr(fd_prefix.size())), opened.back()});
    } else {
      value = dir.native();
    }
  }
  std::vector<std::string> argv{"criu"};
  argv.insert(argv.end(), call.args.begin(), call.args.end());
  int code = 0;
  const double seconds = timed([&] {
    const pid_t pid = spawn_io(c.criu, argv, call.env, -1, -1, -1, fds);
    code = await_exit_or_fail(pid, "criu");
  });
  for (int fd : opened) ::close(fd);
  const std::string log = call_value(call, "--log-file");
  if (code != 0)
    fail(fmt::format("bare criu {} failed (exit {}): {}", call.args.front(), code, log_errors(work / log)));
  return seconds;
}

// The restored root's PID from the pidfile a replayed restore wrote.
pid_t replayed_pid(const CriuCall& call, const fs::path& work) {
  const fs::path pidfile = call_value(call, "--pidfile");
  const std::string text = read_text(pidfile.is_absolute() ? pidfile : work / pidfile);
  const auto pid = nc::CriuRuntime::parse_pidfile(text);
  if (!pid) fail(fmt::format("bare criu restore wrote no PID: '{}'", text));
  return *pid;
}

// --- The two containers ---

// The project's launcher (tests/container/launcher.c): new PID, mount, UTS, IPC, cgroup and
// network namespaces, a busybox rootfs, a volume at /data, /dev binds from the host, pipe stdio
// held by the launcher, a TCP server on port 8080, in a cgroup v2 folder of its own.
class LauncherContainer {
 public:
  LauncherContainer(const Config& c, const fs::path& base, const fs::path& cgroup) : volume_(base / "volume") {
    run_setup({"/bin/sh", (c.source / "tests/container/make_rootfs.sh").native(), (base / "rootfs").native()},
              base / "setup.log");
    fs::create_directory(volume_);
    const fs::path out = base / "launcher.out";
    const int out_fd = open_or_fail(out, O_WRONLY | O_CREAT | O_TRUNC);
    launcher_ = spawn_io(c.launcher,
                         {"container_launcher", "--rootfs", (base / "rootfs").native(), "--volume", volume_.native(),
                          "--cgroup2", cgroup.native(), "--tcp-port", "8080"},
                         plain_environment(), -1, out_fd, out_fd);
    ::close(out_fd);
    // Recorded so that scripts/bench.sh can kill it if we die (its command line names the folder).
    std::ofstream(c.work / "counter.pids", std::ios::app) << launcher_ << '\n';
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    for (;;) {
      const std::string text = read_text(out);
      if (text.starts_with("pid ") && text.find('\n') != std::string::npos) {
        init_ = static_cast<pid_t>(std::stol(text.substr(4)));
        break;
      }
      if (Clock::now() > deadline || !is_running(launcher_)) {
        stop();
        fail("the container launcher did not start: " + text);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    try {
      wait_counting(volume_ / "counter", "the launcher's container");
    } catch (...) {
      stop();
      throw;
    }
  }
  ~LauncherContainer() { stop(); }
  LauncherContainer(const LauncherContainer&) = delete;
  LauncherContainer& operator=(const LauncherContainer&) = delete;

  pid_t init() const { return init_; }
  // Kills the container; the launcher then exits (its pipes closed) and is reaped.
  void stop() noexcept {
    if (init_ > 0) ::kill(init_, SIGKILL);
    if (launcher_ > 0 && !await_exit(launcher_, std::chrono::seconds(20))) {
      ::kill(launcher_, SIGKILL);
      await_exit(launcher_, std::chrono::seconds(20));
    }
    init_ = launcher_ = -1;
  }

 private:
  fs::path volume_;
  pid_t launcher_ = -1;
  pid_t init_ = -1;
};

fs::path find_runc() {
  for (const char* p : {"/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"})
    if (::access(p, X_OK) == 0) return p;
  fail("runc not found (scripts/setup.sh installs Debian's)");
}

// Debian's runc with tests/container/runc_bundle.sh's bundle: a busybox loop counting in a volume
// at /data, runc's default namespaces (its own network namespace). Its stdio are pipes held here
// (`runc checkpoint` refuses a host file): stdin never written, stdout and stderr drained.
class RuncContainer {
 public:
  RuncContainer(const Config& c, const fs::path& base, std::string id)
      : runc_(find_runc()), bundle_(base / "bundle"), root_(base / "runc-state"), id_(std::move(id)) {
    run_setup({"/bin/bash", (c.source / "tests/container/runc_bundle.sh").native(), bundle_.native()}, base / "setup.log");
    private_dir(root_);
    if (::pipe2(in_, O_CLOEXEC) != 0 || ::pipe2(out_, O_CLOEXEC) != 0) fail("pipe2 failed");
    ::fcntl(out_[0], F_SETFL, O_NONBLOCK);
  }
  ~RuncContainer() {
    remove();
    for (int fd : {in_[0], in_[1], out_[0], out_[1]}) ::close(fd);
  }
  RuncContainer(const RuncContainer&) = delete;
  RuncContainer& operator=(const RuncContainer&) = delete;

  const fs::path& bundle() const { return bundle_; }
  const std::string& id() const { return id_; }
  pid_t init() const { return init_; }

  // runc --root ROOT ARGS...: its exit code. CRIU comes from PATH (/usr/local/sbin first), with
  // CRIU_FAULT=130.
  int runc(const std::vector<std::string>& args, int out = -1) {
    std::vector<std::string> argv{"runc", "--root", root_.native()};
    argv.insert(argv.end(), args.begin(), args.end());
    const pid_t pid = spawn_io(runc_, argv, plain_environment(), in_[0], out >= 0 ? out : out_[1], out_[1]);
    const int code = await_exit_or_fail(pid, "runc " + args.front());
    drain();
    return code;
  }
  void must(const std::vector<std::string>& args) {
    if (const int code = runc(args); code != 0)
      fail(fmt::format("runc {} failed (exit {}): {}", fmt::join(args, " "), code, drained_));
  }
  // The container's init PID as `runc state` tells it; the container must be running.
  pid_t state_pid() {
    const int fd = ::memfd_create("runc-state", MFD_CLOEXEC);
    const int code = runc({"state", id_}, fd);
    std::string text(4096, '\0');
    const ssize_t n = ::pread(fd, text.data(), text.size(), 0);
    ::close(fd);
    text.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    const auto at = text.find("\"pid\":");
    if (code != 0 || at == std::string::npos || text.find("\"running\"") == std::string::npos)
      fail(fmt::format("runc state {}: the container does not run: {}", id_, text));
    return static_cast<pid_t>(std::stol(text.substr(at + 6)));
  }
  void start() {
    must({"run", "-d", "--bundle", bundle_.native(), id_});
    init_ = state_pid();
    wait_counting(bundle_ / "volume" / "counter", "the runc container");
  }
  void restore(const fs::path& images, const fs::path& work) {
    must({"restore", "-d", "--image-path", images.native(), "--work-path", work.native(), "--bundle", bundle_.native(), id_});
    init_ = state_pid();
  }
  // runc delete -f (kills the container, removes its state and cgroups); the init reaped.
  void remove() noexcept {
    try {
      runc({"delete", "-f", id_});
    } catch (const std::exception&) {
    }
    if (init_ > 0) {
      ::kill(init_, SIGKILL);
      await_exit(init_, std::chrono::seconds(20));
    }
    init_ = -1;
  }

 private:
  void drain() {
    char buffer[4096];
    ssize_t n;
    while ((n = ::read(out_[0], buffer, sizeof buffer)) > 0) {
      drained_.append(buffer, static_cast<std::size_t>(n));
      if (drained_.size() > 8192) drained_.erase(0, drained_.size() - 4096);
    }
  }

  fs::path runc_, bundle_, root_;
  std::string id_;
  int in_[2] = {-1, -1}, out_[2] = {-1, -1};
  std::string drained_;  // the end of what runc and the container wrote, for error messages
  pid_t init_ = -1;
};

// --- The measures ---

struct ContainerRow {
  std::string container, operation;
  double library = 0, bare = 0;
  std::optional<double> runc;
  // CRIU's own time, from its log: how much of each is CRIU running.
  std::optional<double> library_criu, bare_criu, runc_criu;
  // Restores: the library's from the folder once verified whole (stream_images=false).
  std::optional<double> folder, folder_criu;
};

// Warm-up runs, then the timed ones; CRIU's own times of the timed runs alone kept.
void time_container_rounds(const std::string& what, const std::vector<Timing*>& timings) {
  warm_up(timings);
  for (Timing* t : timings) t->criu_seconds->clear();
  time_rounds(what, timings, container_runs, Order::rotated);
}

// The untimed runtime that runs CRIU through the recording stand-in; same key as the timed one.
struct Recorder {
  nc::CriuRuntime& rt;
  fs::path dir;
};

nc::CriuOptions left_running() {
  nc::CriuOptions o;
  o.leave_running = true;
  return o;
}

Timing library_container_dump(nc::CriuRuntime& rt, const nc::ContainerInfo& box, const fs::path& dir) {
  Timing t{"library", {}};
  t.run = [&rt, box, dir, criu = t.criu_seconds] {
    const double s = timed([&] { rt.checkpoint(box, dir, left_running()); });
    if (const auto inner = criu_log_seconds(dir / "dump.log")) criu->push_back(*inner);  // signed with it
    fs::remove_all(dir);
    return s;
  };
  return t;
}

Timing bare_container_dump(const Config& c, const CriuCall& call, const fs::path& dir) {
  Timing t{"CRIU", {}};
  t.run = [&c, call, dir, criu = t.criu_seconds] {
    private_dir(dir / "images");
    const double s = replay(c, call, dir / "images", dir);
    if (const auto inner = criu_log_seconds(dir / call_value(call, "--log-file"))) criu->push_back(*inner);
    fs::remove_all(dir);
    return s;
  };
  return t;
}

// The library's restore: streamed (the default), or from the folder once it verifies whole.
Timing library_container_restore(nc::CriuRuntime& rt, const fs::path& checkpoint, const fs::path& work,
                                 bool stream = true) {
  Timing t{stream ? "library" : "library, folder", {}};
  t.run = [&rt, checkpoint, work, stream, criu = t.criu_seconds] {
    private_dir(work);
    nc::CriuOptions o;
    o.work_dir = work;  // CRIU's log here, not in /run: all of the benchmark's files in one folder
    o.stream_images = stream;
    pid_t pid = 0;
    const double s = timed([&] { pid = rt.restore(checkpoint, o); });
    const bool ran = is_running(pid);
    kill_restored(pid);
    if (!ran) fail(fmt::format("the library restored PID {}, but it does not run", pid));
    if (const auto inner = criu_log_seconds(work / "restore.log")) criu->push_back(*inner);
    fs::remove_all(work);
    return s;
  };
  return t;
}

Timing bare_container_restore(const Config& c, const CriuCall& call, const fs::path& checkpoint, const fs::path& work) {
  Timing t{"CRIU", {}};
  t.run = [&c, call, checkpoint, work, criu = t.criu_seconds] {
    private_dir(work);
    const double s = replay(c, call, checkpoint / "images", work);
    const pid_t pid = replayed_pid(call, work);
    const bool ran = is_running(pid);
    kill_restored(pid);
    if (!ran) fail(fmt::format("bare criu restored PID {}, but it does not run", pid));
    if (const auto inner = criu_log_seconds(work / call_value(call, "--log-file"))) criu->push_back(*inner);
    fs::remove_all(work);
    return s;
  };
  return t;
}

// The library's dump of the running container, untimed, through the recording stand-in: the
// checkpoint every restore starts from, and the arguments bare CRIU's dumps get.
CriuCall record_dump(const Recorder& rec, const nc::ContainerInfo& box, const fs::path& checkpoint) {
  rec.rt.checkpoint(box, checkpoint, left_running());
  return take_capture(rec.dir, "dump");
}

// The library's restore of the checkpoint, untimed, through the stand-in: bare CRIU's restore
// arguments. The restored tree is killed at once.
CriuCall record_restore(const Recorder& rec, const fs::path& checkpoint, const fs::path& work) {
  private_dir(work);
  nc::CriuOptions o;
  o.work_dir = work;
  const pid_t pid = rec.rt.restore(checkpoint, o);
  const bool ran = is_running(pid);
  kill_restored(pid);
  if (!ran) fail(fmt::format("the library restored PID {}, but it does not run", pid));
  fs::remove_all(work);
  return take_capture(rec.dir, "restore");
}

ContainerRow container_row(std::string container, std::string operation, const Timing& library, const Timing& bare,
                           const Timing* runc = nullptr, const Timing* folder = nullptr) {
  ContainerRow row{std::move(container), std::move(operation), median(library.seconds), median(bare.seconds),
                   std::nullopt, criu_median(library), criu_median(bare), std::nullopt, std::nullopt, std::nullopt};
  if (runc) {
    row.runc = median(runc->seconds);
    row.runc_criu = criu_median(*runc);
  }
  if (folder) {
    row.folder = median(folder->seconds);
    row.folder_criu = criu_median(*folder);
  }
  return row;
}

void bench_launcher_container(const Config& c, nc::CriuRuntime& rt, const Recorder& rec, const std::string& tag,
                              std::vector<ContainerRow>& rows) {
  const fs::path base = c.work / "containers" / "launcher";
  private_dir(base);
  const fs::path checkpoint = base / "checkpoint";
  const std::string name = "launcher (volume, own netns)";
  {
    LauncherContainer box(c, base, cgroup2_root() / (tag + "-launcher"));
    nc::ContainerInfo info;
    info.id = "bench-launcher";
    info.pid = box.init();
    const CriuCall dump_call = record_dump(rec, info, checkpoint);
    Timing library = library_container_dump(rt, info, base / "library-dump");
    Timing bare = bare_container_dump(c, dump_call, base / "bare-dump");
    time_container_rounds("launcher container dump", {&library, &bare});
    rows.push_back(container_row(name, "dump (leave running)", library, bare));
  }  // the original gone before any restore
  const CriuCall restore_call = record_restore(rec, checkpoint, base / "record-restore-work");
  Timing library = library_container_restore(rt, checkpoint, base / "library-restore-work");
  Timing folder = library_container_restore(rt, checkpoint, base / "library-restore-work", /*stream=*/false);
  Timing bare = bare_container_restore(c, restore_call, checkpoint, base / "bare-restore-work");
  time_container_rounds("launcher container restore", {&library, &folder, &bare});
  rows.push_back(container_row(name, "restore", library, bare, nullptr, &folder));
  fs::remove_all(base);
}

void bench_runc_container(const Config& c, nc::CriuRuntime& rt, const Recorder& rec, const std::string& tag,
                          std::vector<ContainerRow>& rows) {
  const fs::path base = c.work / "containers" / "runc";
  private_dir(base);
  const fs::path checkpoint = base / "checkpoint", runc_checkpoint = base / "runc-checkpoint";
  const std::string name = "runc (volume, own netns)";
  RuncContainer box(c, base, tag + "-runc");
  box.start();
  nc::ContainerInfo info;
  info.id = "bench-runc";
  info.pid = box.init();
  const CriuCall dump_call = record_dump(rec, info, checkpoint);
  box.must({"checkpoint", "--leave-running", "--image-path", runc_checkpoint.native(), "--work-path",
            (base / "runc-checkpoint-work").native(), box.id()});
  Timing library = library_container_dump(rt, info, base / "library-dump");
  Timing bare = bare_container_dump(c, dump_call, base / "bare-dump");
  Timing runc{"runc", {}};
  runc.run = [&, criu = runc.criu_seconds] {
    const fs::path images = base / "runc-dump", work = base / "runc-dump-work";
    const double s = timed([&] {
      box.must({"checkpoint", "--leave-running", "--image-path", images.native(), "--work-path",
                work.native(), box.id()});
    });
    if (const auto inner = criu_log_seconds(work / "dump.log")) criu->push_back(*inner);
    fs::remove_all(images);
    fs::remove_all(work);
    return s;
  };
  time_container_rounds("runc container dump", {&library, &bare, &runc});
  rows.push_back(container_row(name, "dump (leave running)", library, bare, &runc));

  box.remove();  // the original gone before any restore
  const CriuCall restore_call = record_restore(rec, checkpoint, base / "record-restore-work");
  Timing library_restore = library_container_restore(rt, checkpoint, base / "library-restore-work");
  Timing folder_restore = library_container_restore(rt, checkpoint, base / "library-restore-work", /*stream=*/false);
  Timing bare_restore = bare_container_restore(c, restore_call, checkpoint, base / "bare-restore-work");
  Timing runc_restore{"runc", {}};
  runc_restore.run = [&, criu = runc_restore.criu_seconds] {
    const fs::path work = base / "runc-restore-work";
    const double s = timed([&] { box.restore(runc_checkpoint, work); });
    const pid_t pid = box.init();
    const bool ran = is_running(pid);
    box.remove();
    if (!ran) fail(fmt::format("runc restored PID {}, but it does not run", pid));
    if (const auto inner = criu_log_seconds(work / "restore.log")) criu->push_back(*inner);
    fs::remove_all(work);
    return s;
  };
  time_container_rounds("runc container restore", {&library_restore, &folder_restore, &bare_restore, &runc_restore});
  rows.push_back(container_row(name, "restore", library_restore, bare_restore, &runc_restore, &folder_restore));
}

std::string runc_version() {
  const int fd = ::memfd_create("runc-version", MFD_CLOEXEC);
  const pid_t pid = spawn_io(find_runc(), {"runc", "--version"}, plain_environment(), -1, fd, -1);
  await_exit_or_fail(pid, "runc --version");
  std::string text(256, '\0');
  const ssize_t n = ::pread(fd, text.data(), text.size(), 0);
  ::close(fd);
  text.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return text.substr(0, text.find('\n'));
}

void bench_containers(const Config& c, nc::CriuRuntime& rt, const nc::HmacKey& key, std::vector<ContainerRow>& rows) {
  // Names of ours in the host's shared places (cgroups, runc's container ID) carry the work
  // folder's unique name, so that scripts/bench.sh finds them whatever happens.
  const std::string tag = c.work.filename().native();
  const fs::path record_dir = c.work / "criu-record";
  nc::CriuRuntime recording(write_capture_wrapper(c, record_dir));
  recording.set_key(nc::HmacKey::from_bytes(key.bytes()));
  const Recorder rec{recording, record_dir};
  try {
    bench_launcher_container(c, rt, rec, tag, rows);
    bench_runc_container(c, rt, rec, tag, rows);
  } catch (...) {
    remove_cgroups(tag);
    throw;
  }
  remove_cgroups(tag);
  fs::remove_all(c.work / "containers");
  fs::remove_all(record_dir);
}

// ---------------------------------------------------------------------------------------------
// Transfer: a checkpoint carried into another folder through a pipe (`export | import`) against
// `tar | tar`, with zstd -1 on both sides and without; and a process moved to a receiver on
// 127.0.0.1 (`migrate` / `receive`, plain and zstd) against a cold move with bare CRIU (`criu
// dump`, `tar | tar` into another folder, `criu restore -d`). Both run in the same rounds as their
// baselines, each taking its turn to go first.

// What a child has written so far into the memfd fd, up to `limit` bytes.
std::string memfd_text(int fd, std::size_t limit = 1 << 16) {
  std::string text(limit, '\0');
  const ssize_t n = ::pread(fd, text.data(), text.size(), 0);
  text.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return text;
}

int memfd_or_fail(const char* name) {
  const int fd = ::memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) fail(fmt::format("memfd_create: {}", std::strerror(errno)));
  return fd;
}

std::string shell_quoted(const std::string& word) {
  std::string quoted = "'";
  for (char ch : word) quoted += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return quoted + "'";
}

// The command's environment: the plain one, its key file, and the library's engine switch if set.
std::vector<std::string> cli_environment(const Config& c) {
  std::vector<std::string> env = plain_environment();
  env.push_back("NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=" + c.key_file.native());
  if (const char* engine = std::getenv("NUCLEUS_CHECKPOINT_HMAC_ENGINE"))
    env.push_back(fmt::format("NUCLEUS_CHECKPOINT_HMAC_ENGINE={}", engine));
  return env;
}

// Runs `bash -o pipefail -c COMMAND` (its stdout into out_fd, or /dev/null); its wall seconds.
// Fails with what it said on stderr.
double run_shell(const std::string& command, const std::vector<std::string>& env, int out_fd = -1) {
  const int err = memfd_or_fail("shell-stderr");
  const auto start = Clock::now();
  const pid_t pid = spawn_io("/bin/bash", {"bash", "-o", "pipefail", "-c", command}, env, -1, out_fd, err);
  const int code = await_exit_or_fail(pid, command, std::chrono::seconds(600));
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const std::string said = memfd_text(err);
  ::close(err);
  if (code != 0) fail(fmt::format("`{}` failed (exit {}): {}", command, code, trim(said)));
  return seconds;
}

// The bytes COMMAND writes to its stdout (`COMMAND | wc -c`, untimed).
std::uint64_t stream_bytes(const std::string& command, const std::vector<std::string>& env) {
  const int out = memfd_or_fail("stream-bytes");
  run_shell(command + " | wc -c", env, out);
  const std::string counted = memfd_text(out);
  ::close(out);
  return std::stoull(counted);
}

// A folder of mixed files, as a project or a container's rootfs would hold: 2000 files in 40
// folders, from 1 byte to 1 MiB (about 200 MB in all), each half pseudo-random and half zeros;
// signed by the command in the manifest format, which export requires.
void make_mixed_folder(const Config& c, const fs::path& dir) {
  std::uint64_t state = 11;
  std::vector<unsigned char> bytes;
  for (int i = 0; i < 2000; ++i) {
    const fs::path folder = dir / fmt::format("d{:02}", i % 40);
    fs::create_directories(folder);
    const std::size_t size = std::size_t{1} << (i % 21);
    bytes.assign((size + 1) / 2, 0);
    fill(bytes, state);
    bytes.resize(size, 0);
    write_file(folder / fmt::format("f{:04}", i), bytes);
  }
  run_shell(fmt::format("{} sign --format manifest --dir {}", shell_quoted(c.cli.native()), shell_quoted(dir.native())),
            cli_environment(c));
}

// One row of the stream table.
struct StreamRow {
  std::string folder;
  std::uint64_t bytes = 0;  // the folder's
  std::string compression;
  double library = 0, tar = 0;               // seconds, median
  std::uint64_t library_stream = 0, tar_stream = 0;  // bytes through the pipe
  std::pair<double, double> cores{0, 0};
};

// A pipeline copying a folder into out (which it creates, or which exists and is empty), timed;
// out is removed after each run.
Timing pipeline_timing(std::string name, std::string command, const fs::path& out, bool out_made_first,
                       const std::vector<std::string>& env) {
  Timing t{std::move(name), {}};
  t.run = [command = std::move(command), out, out_made_first, env] {
    fs::remove_all(out);
    if (out_made_first) fs::create_directory(out);
    const double seconds = run_shell(command, env);
    fs::remove_all(out);
    return seconds;
  };
  return t;
}

void bench_streams(const Config& c, const std::string& folder_name, const fs::path& source, std::vector<StreamRow>& rows) {
  const std::vector<std::string> env = cli_environment(c);
  const fs::path out = source.parent_path() / "copy";
  const std::string cli = shell_quoted(c.cli.native()), from = shell_quoted(source.native()),
                    to = shell_quoted(out.native());
  const std::uint64_t bytes = tree_bytes(source);
  for (const bool zstd : {true, false}) {
    const std::string export_cmd = fmt::format("{} export --dir {}{}", cli, from, zstd ? " --zstd" : "");
    const std::string tar_cmd = fmt::format("tar -C {} -cf - .{}", from, zstd ? " | zstd -1 -T0 -q" : "");
    Timing library = pipeline_timing("export|import", fmt::format("{} | {} import --dir {}", export_cmd, cli, to), out,
                                     false, env);
    Timing tar = pipeline_timing("tar|tar", fmt::format("{} | {}tar -xf - -C {}", tar_cmd, zstd ? "zstd -d -q | " : "", to),
                                 out, true, env);
    const std::string what = fmt::format("{} {}", folder_name, zstd ? "zstd" : "uncompressed");
    const auto cores = rounds_with_cores(what, {&library, &tar}, transfer_runs);
    rows.push_back({folder_name, bytes, zstd ? "zstd -1" : "none", median(library.seconds), median(tar.seconds),
                    stream_bytes(export_cmd, env), stream_bytes(tar_cmd, env), cores});
  }
}

// The migration's workload, tests/bench/rewriter, in a PID namespace of its own (`unshare --pid
// --fork`), of which it is the init: a restore then makes a new namespace and needs none of the
// host's PIDs, which the stopped source still holds. Both PIDs are recorded for scripts/bench.sh.
// Killed (SIGKILL: an init ignores SIGTERM) and reaped when it goes out of scope, unless a
// migration or a dump ended it first.
class Rewriter {
 public:
  Rewriter(const Config& c, const fs::path& dir) : dir_(dir) {
    fs::remove_all(dir);  // a previous run's ticks would pass for this one's
    fs::create_directories(dir);
    unshare_ = spawn_io("/usr/bin/unshare",
                        {"unshare", "--pid", "--fork", c.rewriter.native(), dir.native(),
                         std::to_string(migration_mib), std::to_string(rewrite_mib_per_s)},
                        plain_environment(), -1, -1, -1);
    std::ofstream pids(c.work / "counter.pids", std::ios::app);
    pids << unshare_ << '\n' << std::flush;
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    const fs::path children = fmt::format("/proc/{}/task/{}/children", unshare_, unshare_);
    while (init_ <= 0 || !fs::exists(dir / "ticks")) {
      if (init_ <= 0) {
        const std::string listed = trim(read_text(children));
        const pid_t child = listed.empty() ? 0 : static_cast<pid_t>(std::stol(listed));
        // Held by a pidfd, still unshare's child once it is open: the SIGKILL at the end reaches
        // this process, even after a migration ended it and its PID went to another.
        const int fd = child > 0 ? static_cast<int>(::syscall(SYS_pidfd_open, child, 0)) : -1;
        if (fd >= 0 && trim(read_text(children)) == listed) {
          init_ = child;
          init_fd_ = fd;
          pids << init_ << '\n' << std::flush;
        } else if (fd >= 0) {
          ::close(fd);
        }
      }
      if (Clock::now() > deadline || await_exit(unshare_, std::chrono::milliseconds(0))) {
        stop();  // the destructor does not run for a constructor that throws
        fail("tests/bench/rewriter did not start in its PID namespace");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~Rewriter() { stop(); }
  Rewriter(const Rewriter&) = delete;
  Rewriter& operator=(const Rewriter&) = delete;

  pid_t init() const { return init_; }

 private:
  void stop() {
    if (init_fd_ >= 0) {  // the namespace's init: its end ends unshare's wait
      ::syscall(SYS_pidfd_send_signal, init_fd_, SIGKILL, nullptr, 0U);
      ::close(init_fd_);
    }
    if (unshare_ > 0 && !await_exit(unshare_, std::chrono::seconds(30))) ::kill(unshare_, SIGKILL);
    init_ = unshare_ = init_fd_ = -1;
    std::error_code ignored;  // called from the destructor: must not throw
    fs::remove_all(dir_, ignored);
  }
  fs::path dir_;
  pid_t unshare_ = -1;
  pid_t init_ = -1;
  int init_fd_ = -1;
};

// A migration's downtime and phases, seconds.
struct Phases {
  double downtime = 0, dump = 0, transfer = 0, restore = 0;
  std::uint64_t bytes = 0;  // sent over the connection, or copied by tar
  double memory_after = 0;  // post-copy: from the tree running again until its last page was in
};

// A restored tree's init, recorded for scripts/bench.sh, checked to run, then killed and reaped.
void end_restored(const Config& c, pid_t pid, const std::string& who) {
  std::ofstream(c.work / "counter.pids", std::ios::app) << pid << '\n';
  if (!is_running(pid)) fail(fmt::format("{} restored PID {}, but it does not run", who, pid));
  kill_restored(pid);
}

// A free TCP port on 127.0.0.1 for the receiver (the kernel's pick; free again once closed here).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof address;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0)
    fail(fmt::format("no free port on 127.0.0.1: {}", std::strerror(errno)));
  ::close(fd);
  return ntohs(address.sin_port);
}

// One `receive` on 127.0.0.1 and one `migrate` of a fresh workload to it, with `flag` ("--zstd",
// "--post-copy" or none); the phases from migrate's --json report. rounds_reason gets the report's
// reason for making no pre-dump rounds.
Phases migrate_once(const Config& c, const fs::path& base, const std::string& flag, std::string& rounds_reason) {
  const std::vector<std::string> env = cli_environment(c);
  const fs::path store = base / "store", dir = base / "migrated";
  private_dir(store);
  Rewriter workload(c, base / "workload");
  const std::string to = fmt::format("127.0.0.1:{}", free_port());
  const int receive_out = memfd_or_fail("receive-stdout"), receive_err = memfd_or_fail("receive-stderr"),
            migrate_out = memfd_or_fail("migrate-stdout");
  const pid_t receiver = spawn_io(c.cli, {c.cli.native(), "--json", "receive", "--listen", to, "--dir", store.native()},
                                  env, -1, receive_out, receive_err);
  // It says so on stderr once it listens.
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  std::string said;
  while (said.find("listening on") == std::string::npos) {
    if (Clock::now() > deadline || await_exit(receiver, std::chrono::milliseconds(0))) {
      ::kill(receiver, SIGKILL);
      await_exit(receiver, std::chrono::seconds(10));
      fail(fmt::format("the receiver on {} did not listen: {}", to, said));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    said = memfd_text(receive_err);
  }
  std::vector<std::string> argv{c.cli.native(), "--json", "migrate", "--pid", std::to_string(workload.init()),
                                "--to", to, "--dir", dir.native()};
  if (!flag.empty()) argv.push_back(flag);
  const pid_t migrator = spawn_io(c.cli, argv, env, -1, migrate_out, -1);
  const int migrated = await_exit_or_fail(migrator, "migrate", std::chrono::seconds(600));
  const int received = await_exit_or_fail(receiver, "receive", std::chrono::seconds(60));
  const std::string report = memfd_text(migrate_out), reply = memfd_text(receive_out);
  for (const int fd : {receive_out, receive_err, migrate_out}) ::close(fd);
  rapidjson::Document doc;
  doc.Parse(report.c_str());
  const auto number = [&doc](const char* name) {
    return doc.HasMember(name) && doc[name].IsNumber() ? doc[name].GetDouble() : -1.0;
  };
  if (migrated != 0 || received != 0 || doc.HasParseError() || !doc.IsObject() || number("restored_pid") <= 0 ||
      !doc.HasMember("rounds_reason") || !doc["rounds_reason"].IsString())
    fail(fmt::format("migrate (exit {}) to receive (exit {}) failed: {} / {}", migrated, received, trim(report),
                     trim(reply)));
  end_restored(c, static_cast<pid_t>(number("restored_pid")), "receive");
  rounds_reason = doc["rounds_reason"].GetString();
  fs::remove_all(dir);
  fs::remove_all(store);
  return {number("downtime_ms") / 1000, number("dump_ms") / 1000, number("transfer_ms") / 1000,
          number("restore_ms") / 1000, static_cast<std::uint64_t>(number("bytes_sent")),
          std::max(number("post_copy_ms"), 0.0) / 1000};
}

// The cold move with bare CRIU: `criu dump` (the tree ends), `tar | tar` into another folder,
// `criu restore -d` from there; the tree is down from the dump's start to the restore's end.
Phases bare_migrate_once(const Config& c, const fs::path& base) {
  const fs::path images = base / "bare-images", copy = base / "bare-copy", work = base / "bare-work";
  for (const fs::path& dir : {images, copy, work}) private_dir(dir);
  Rewriter workload(c, base / "workload");
  Phases p;
  p.dump = timed([&] {
    run_criu(c, {"dump", "-t", std::to_string(workload.init()), "-D", images.native(), "-W", images.native(), "-o",
                 "dump.log", "-v4", "--shell-job"}, images / "dump.log");
  });
  p.transfer = run_shell(fmt::format("tar -C {} -cf - . | tar -xf - -C {}", shell_quoted(images.native()),
                                     shell_quoted(copy.native())),
                         plain_environment());
  p.restore = timed([&] {
    run_criu(c, {"restore", "-D", copy.native(), "-W", work.native(), "-o", "restore.log", "-v4", "--shell-job",
                 "--restore-detached", "--pidfile", (work / "restore.pid").native()}, work / "restore.log");
  });
  p.downtime = p.dump + p.transfer + p.restore;
  p.bytes = tree_bytes(images);
  end_restored(c, static_cast<pid_t>(std::stol(read_text(work / "restore.pid"))), "bare criu");
  for (const fs::path& dir : {images, copy, work}) fs::remove_all(dir);
  return p;
}

// One row of the migration table: the medians of each column over the timed runs.
struct MigrationRow {
  std::string method;
  Phases median;
  std::pair<double, double> cores{0, 0};
};

// A migration method as a Timing (its downtime), its phases kept run by run.
Timing migration_timing(std::string name, std::function<Phases()> once,
                        const std::shared_ptr<std::vector<Phases>>& phases) {
  Timing t{std::move(name), {}};
  t.run = [once = std::move(once), phases] {
    phases->push_back(once());
    return phases->back().downtime;
  };
  return t;
}

Phases median_phases(const std::vector<Phases>& runs) {
  const auto of = [&runs](auto member) {
    std::vector<double> v;
    for (const Phases& p : runs) v.push_back(static_cast<double>(p.*member));
    return median(v);
  };
  return {of(&Phases::downtime), of(&Phases::dump), of(&Phases::transfer), of(&Phases::restore),
          static_cast<std::uint64_t>(of(&Phases::bytes)), of(&Phases::memory_after)};
}

void bench_migration(const Config& c, std::vector<MigrationRow>& rows, std::string& rounds_reason) {
  const fs::path base = c.work / "migration";
  private_dir(base);
  std::vector<std::pair<std::string, std::shared_ptr<std::vector<Phases>>>> methods;
  std::vector<Timing> timings;
  const auto add = [&](const std::string& name, std::function<Phases()> once) {
    methods.emplace_back(name, std::make_shared<std::vector<Phases>>());
    timings.push_back(migration_timing(name, std::move(once), methods.back().second));
  };
  add("migrate", [&] { return migrate_once(c, base, "", rounds_reason); });
  add("migrate --zstd", [&] { return migrate_once(c, base, "--zstd", rounds_reason); });
  add("migrate --post-copy", [&] { return migrate_once(c, base, "--post-copy", rounds_reason); });
  add("bare CRIU + tar", [&] { return bare_migrate_once(c, base); });
  std::vector<Timing*> order;
  for (Timing& t : timings) order.push_back(&t);
  const auto cores = rounds_with_cores(fmt::format("migration {} MiB", migration_mib), order, migration_runs);
  for (const auto& [name, phases] : methods)  // the warm-up's run first: left out
    rows.push_back({name, median_phases({phases->end() - migration_runs, phases->end()}), cores});
  fs::remove_all(base);
}

// The machine's load average (1, 5, 15 minutes), as /proc/loadavg gives it.
std::string load_average() {
  std::istringstream in(read_text("/proc/loadavg"));
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return fmt::format("{} {} {}", one, five, fifteen);
}

struct TransferResults {
  std::vector<StreamRow> streams;
  std::vector<MigrationRow> migrations;
  std::string rounds_reason;  // migrate's, for making no pre-dump rounds
  std::string load_before, load_after;
};

void bench_transfer(const Config& c, nc::CriuRuntime& rt, TransferResults& results) {
  results.load_before = load_average();
  const fs::path base = c.work / "transfer";
  private_dir(base);
  {
    const fs::path dump = base / "dump" / "checkpoint";
    private_dir(dump.parent_path());
    {
      Counter counter(c, base / "counter", judged_mib, false);
      library_dump(rt, counter.pid(), dump);
    }
    bench_streams(c, fmt::format("dump of {} MiB", judged_mib), dump, results.streams);
    fs::remove_all(dump.parent_path());
  }
  const fs::path mixed = base / "mixed" / "folder";
  private_dir(mixed.parent_path());
  make_mixed_folder(c, mixed);
  bench_streams(c, "mixed files", mixed, results.streams);
  fs::remove_all(base);
  bench_migration(c, results.migrations, results.rounds_reason);
  results.load_after = load_average();
}

// ---------------------------------------------------------------------------------------------
// The report.

std::string cpu_model() {
  std::istringstream in(read_text("/proc/cpuinfo"));
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

// Columns as wide as their widest cell: the first left-aligned, the figures right-aligned.
void print_columns(const std::vector<std::vector<std::string>>& lines) {
  std::vector<std::size_t> width(lines.front().size());
  for (const auto& line : lines)
    for (std::size_t i = 0; i < width.size(); ++i) width[i] = std::max(width[i], line[i].size());
  for (const auto& line : lines) {
    std::string text = fmt::format("{:<{}}", line[0], width[0]);
    for (std::size_t i = 1; i < width.size(); ++i) text += fmt::format("  {:>{}}", line[i], width[i]);
    fmt::print("{}\n", trim(text));
    if (&line == &lines.front()) fmt::print("{}\n", std::string(text.size(), '-'));
  }
}

void print_table(const std::vector<Row>& rows, const std::vector<CriuRow>& criu_rows,
                 const std::vector<ContainerRow>& container_rows, const std::string& runc,
                 const TransferResults& transfer, const nc::CriuRuntime& rt, double total_seconds) {
  struct utsname u {};
  ::uname(&u);
  fmt::print("\nlibnucleuscheckpoint {} benchmark (release build; median of {} runs for dumps and restores, {} for "
             "hashing, {} for containers, after a warm-up)\n", nc_version_string(), dump_runs, runs, container_runs);
  fmt::print("machine: {}, {} cores, kernel {}, CRIU {}.{}.{}, {}{}\n", cpu_model(), usable_cores(), u.release,
             rt.version().major, rt.version().minor, rt.version().patch, OpenSSL_version(OPENSSL_VERSION),
             runc.empty() ? "" : ", " + runc);
  if (const char* engine = std::getenv("NUCLEUS_CHECKPOINT_HMAC_ENGINE"))
    fmt::print("NUCLEUS_CHECKPOINT_HMAC_ENGINE={}\n", engine);
  fmt::print("ratio = library time / baseline time (1.00x: as fast; higher: slower). Checkpoints on tmpfs (/dev/shm).\n");
  if (!rows.empty()) {
    fmt::print(
        "HMAC: one checkpoint-shaped folder, warm in the page cache. Baseline: OpenSSL's serial HMAC-SHA256 over the\n"
        "seed format's records. The all-core ceiling: OpenSSL SHA-256 of the same bytes on every core (1.00x: the\n"
        "chunked format hashes as fast as that).\n\n");
    std::vector<std::vector<std::string>> lines{{"measure", "library", "baseline", "ratio", "target", ""}};
    for (const Row& r : rows) lines.push_back({r.measure, r.library, r.baseline, r.ratio, r.target, r.result});
    print_columns(lines);
  }
  if (!criu_rows.empty()) {
    fmt::print(
        "\nDump and restore (seconds, median): examples/counter, a parent holding N MiB and a child. \"shared\": the\n"
        "parent fills its memory before the fork, the child shares it copy-on-write and CRIU writes it once for\n"
        "each, about 2N MiB of pages; \"not shared\": after the fork, N MiB of pages. Library: CriuRuntime::checkpoint\n"
        "(left running; metadata, the default signature format, images hashed while CRIU writes them) and\n"
        "CriuRuntime::restore, streamed (the default: CRIU reads the images through the library, every 4 MiB chunk\n"
        "checked against the signature first) or from the folder once it verifies whole (stream_images=false).\n"
        "Baseline: bare `criu dump --leave-running` / `criu restore -d` of the same tree and images, in the same\n"
        "rounds; the variants take turns going first. In parentheses: CRIU's own part of the same runs (its log,\n"
        "from its start to \"finished successfully\").\n"
        "CPU s: CPU time of the same runs, library / bare (median): the benchmark's process, where the library runs,\n"
        "and its reaped children: CRIU, and a restored tree, which reads its own pages (not a dumped tree, which\n"
        "runs on). What wall time would come to if the machine had no core to spare.\n"
        "Cores: how many cores the machine gave just before and just after the rounds (SHA-256 on one thread, then\n"
        "on every core at once); on a VM, two vCPUs may run as one.\n"
        "Peak RSS: the command (nucleus-checkpoint dump --leave-running / restore [--no-stream]) doing the same, in\n"
        "{} run(s) of its own: its own process's VmHWM, sampled every ms (wait4's ru_maxrss, in the progress notes,\n"
        "also counts CRIU, its child, and the benchmark's pages at the fork).\n\n",
        rss_runs);
    std::vector<std::vector<std::string>> lines{
        {"tree", "MiB", "operation", "library", "bare CRIU", "ratio", "CPU s", "CPU ratio", "cores", "target",
         "peak RSS (MiB)", ""}};
    const auto seconds = [](double total, std::optional<double> criu) {
      return criu ? fmt::format("{:.3f} ({:.3f})", total, *criu) : fmt::format("{:.3f}", total);
    };
    for (const CriuRow& r : criu_rows) {
      const double ratio = r.library / r.bare;
      const std::string rss = r.rss ? fmt::format("{:.1f}", r.rss->own_mib) : "-";
      std::string target = "-", result = "-";
      if (r.target) {
        target = fmt::format("<= {:.2f}x, < {:.0f} MiB", *r.target, criu_rss_target_mib);
        const bool fast = ratio <= *r.target, small = r.rss && r.rss->own_mib < criu_rss_target_mib;
        result = fast && small ? "PASS" : fmt::format("MISS ({})", !fast && !small ? "time, RSS" : !fast ? "time" : "RSS");
      }
      lines.push_back({r.tree, std::to_string(r.mib), r.operation, seconds(r.library, r.library_criu),
                       seconds(r.bare, r.bare_criu), ratio_text(ratio),
                       fmt::format("{:.2f} / {:.2f}", r.library_cpu, r.bare_cpu), ratio_text(r.library_cpu / r.bare_cpu),
                       fmt::format("{:.1f}-{:.1f}", std::min(r.cores.first, r.cores.second),
                                   std::max(r.cores.first, r.cores.second)),
                       target, rss, result});
    }
    print_columns(lines);
  }
  if (!container_rows.empty()) {
    fmt::print(
        "\nContainers (ms, median): the same container dumped (left running) and restored by the library's C++ API\n"
        "(CriuRuntime::checkpoint / restore: container detection, metadata, the default signature format; restore\n"
        "streamed, and from the folder once verified whole), by bare CRIU given exactly the arguments and environment\n"
        "the library gave it (but for --stream and the library's --action-script: bare CRIU reads the folder), and by\n"
        "runc (`runc checkpoint --leave-running`, `runc restore -d`, CRIU through its RPC). Each restore follows the\n"
        "previous instance's SIGKILL. The variants take turns going first.\n\n");
    std::vector<std::vector<std::string>> lines{{"container", "operation", "library", "library, folder", "bare CRIU",
                                                 "runc", "library/CRIU", "folder/CRIU", "runc/CRIU"}};
    const auto ms = [](double s) { return fmt::format("{:.1f}", s * 1000); };
    const auto cell = [&](std::optional<double> total, std::optional<double> criu) -> std::string {
      if (!total) return "-";
      return criu ? fmt::format("{} ({:.0f})", ms(*total), *criu * 1000) : ms(*total);
    };
    for (const ContainerRow& r : container_rows)
      lines.push_back({r.container, r.operation, cell(r.library, r.library_criu), cell(r.folder, r.folder_criu),
                       cell(r.bare, r.bare_criu), cell(r.runc, r.runc_criu), ratio_text(r.library / r.bare),
                       r.folder ? ratio_text(*r.folder / r.bare) : "-", r.runc ? ratio_text(*r.runc / r.bare) : "-"});
    print_columns(lines);
    fmt::print("(in parentheses: CRIU's own time in the same runs, median, from its log: from its start to its\n"
               "\"finished successfully\" line)\n");
  }
  if (!transfer.streams.empty() || !transfer.migrations.empty())
    fmt::print("\nTransfer: load average (1, 5, 15 min) {} before, {} after.\n", transfer.load_before, transfer.load_after);
  const auto cores = [](std::pair<double, double> c) {
    return fmt::format("{:.1f}-{:.1f}", std::min(c.first, c.second), std::max(c.first, c.second));
  };
  if (!transfer.streams.empty()) {
    fmt::print(
        "Export | import (seconds, median of {}): a folder copied through a pipe into a new folder on the same tmpfs.\n"
        "Library: `nucleus-checkpoint export --dir SRC [--zstd] | nucleus-checkpoint import --dir OUT` (the stream\n"
        "signed, every chunk verified as it arrives). Baseline: `tar -C SRC -cf - . [| zstd -1 -T0 | zstd -d] | tar\n"
        "-xf - -C OUT`. The variants take turns going first. MB/s: the folder's bytes over the time. Stream: bytes\n"
        "through the pipe (compressed, for zstd). The dump: examples/counter, {} MiB not shared, dumped by the library\n"
        "(one byte written per page: most of it compresses away). Mixed files: 2000 files in 40 folders, 1 B to 1 MiB,\n"
        "each half pseudo-random bytes and half zeros.\n\n",
        transfer_runs, judged_mib);
    std::vector<std::vector<std::string>> lines{{"folder", "GB", "compression", "export|import", "tar|tar", "ratio",
                                                 "MB/s, library / tar", "stream MB, library / tar", "cores", "target",
                                                 ""}};
    for (const StreamRow& r : transfer.streams) {
      const double gb = static_cast<double>(r.bytes) / 1e9, ratio = r.library / r.tar;
      lines.push_back({r.folder, fmt::format("{:.2f}", gb), r.compression, fmt::format("{:.3f}", r.library),
                       fmt::format("{:.3f}", r.tar), ratio_text(ratio),
                       fmt::format("{:.0f} / {:.0f}", gb * 1e3 / r.library, gb * 1e3 / r.tar),
                       fmt::format("{:.1f} / {:.1f}", static_cast<double>(r.library_stream) / 1e6,
                                   static_cast<double>(r.tar_stream) / 1e6),
                       cores(r.cores), fmt::format("<= {:.2f}x", stream_target), verdict(ratio <= stream_target)});
    }
    print_columns(lines);
  }
  if (!transfer.migrations.empty()) {
    fmt::print(
        "\nMigration (seconds, median of {}): tests/bench/rewriter, {} MiB of memory of which it rewrites {} MiB every\n"
        "second (each page half pseudo-random, half zeros), the init of its own PID namespace; a fresh one for each\n"
        "run. migrate: `nucleus-checkpoint migrate --pid P --to 127.0.0.1:PORT --dir W [--zstd] --json` to `receive\n"
        "--listen 127.0.0.1:PORT --dir STORE --json`: downtime (dump start to the receiver's reply) and phases from\n"
        "its report (dump: dump, sign, commit; transfer: the receiver's import, received and verified; restore: the\n"
        "receiver's streamed restore). Bare CRIU + tar: a cold move, `criu dump` (the tree ends), `tar | tar` into\n"
        "another folder, `criu restore -d` from it; downtime is their sum. The methods take turns going first.\n"
        "Bytes: sent over the connection (migrate; post-copy: before the tree ran again), the images (bare).\n"
        "--post-copy leaves the memory out of the checkpoint and sends it once the tree runs on the receiver: its\n"
        "memory column is the time from then until the last page was in (needs fs.pipe-max-size >= 4194304).\n\n",
        migration_runs, migration_mib, rewrite_mib_per_s);
    std::vector<std::vector<std::string>> lines{
        {"method", "downtime", "dump", "transfer", "restore", "MB", "memory", "downtime / bare", "cores"}};
    const auto bare = std::find_if(transfer.migrations.begin(), transfer.migrations.end(),
                                   [](const MigrationRow& r) { return r.method.starts_with("bare"); });
    for (const MigrationRow& r : transfer.migrations) {
      const Phases& p = r.median;
      lines.push_back({r.method, fmt::format("{:.3f}", p.downtime), fmt::format("{:.3f}", p.dump),
                       fmt::format("{:.3f}", p.transfer), fmt::format("{:.3f}", p.restore),
                       fmt::format("{:.1f}", static_cast<double>(p.bytes) / 1e6),
                       p.memory_after > 0 ? fmt::format("{:.3f}", p.memory_after) : "-",
                       bare == transfer.migrations.end() ? "-" : ratio_text(p.downtime / bare->median.downtime),
                       cores(r.cores)});
    }
    print_columns(lines);
    // The kernel may lack soft-dirty tracking, and migrate makes no rounds yet: its report says which.
    fmt::print("migrate with pre-dump rounds: n/a: {}\n", transfer.rounds_reason);
  }
  fmt::print("\nbenchmark took {:.0f} s\n", total_seconds);
}

std::vector<int> parse_sizes(const std::string& text) {
  std::vector<int> sizes;
  std::istringstream in(text);
  for (std::string item; std::getline(in, item, ',');) sizes.push_back(std::stoi(item));
  return sizes;
}

Config parse_args(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) fail("missing value after " + flag);
    const std::string value = argv[++i];
    if (flag == "--counter") c.counter = value;
    else if (flag == "--cli") c.cli = value;
    else if (flag == "--key-file") c.key_file = value;
    else if (flag == "--work") c.work = value;
    else if (flag == "--criu") c.criu = value;
    else if (flag == "--sizes") c.sizes_mib = parse_sizes(value);  // e.g. 64 for a quick try
    else if (flag == "--hmac-mib") c.hmac_mib = std::stoi(value);
    else if (flag == "--launcher") c.launcher = value;
    else if (flag == "--source") c.source = value;
    else if (flag == "--containers") c.containers = value;  // yes, no, only
    else if (flag == "--rewriter") c.rewriter = value;
    else if (flag == "--transfer") c.transfer = value;  // yes, no, only
    else fail("unknown option " + flag);
  }
  const auto is_mode = [](const std::string& mode) { return mode == "yes" || mode == "no" || mode == "only"; };
  if (c.counter.empty() || c.cli.empty() || c.key_file.empty() || c.work.empty() || !is_mode(c.containers) ||
      !is_mode(c.transfer) || (c.containers != "no" && (c.launcher.empty() || c.source.empty())) ||
      (c.transfer != "no" && c.rewriter.empty()))
    fail("usage: nc_bench --counter PATH --cli PATH --key-file PATH --work TMPFS_DIR [--criu PATH] "
         "[--sizes 64,256,1024] [--hmac-mib 1024] [--containers yes|no|only --launcher PATH --source SOURCE_DIR] "
         "[--transfer yes|no|only --rewriter PATH] (\"only\": these rows, and those of any other \"only\", alone)");
  // The children run elsewhere (cwd "/"): every path they get must be absolute.
  for (fs::path* p : {&c.counter, &c.cli, &c.key_file, &c.work, &c.launcher, &c.source, &c.rewriter})
    if (!p->empty()) *p = fs::absolute(*p);
  c.work = c.work.lexically_normal();
  if (!c.work.has_filename()) c.work = c.work.parent_path();  // "DIR/": its name tags what the benchmark creates
  return c;
}

int run(int argc, char** argv) {
  const auto start = Clock::now();
  const Config c = parse_args(argc, argv);
  if (::geteuid() != 0) fail("run as root: CRIU needs it (scripts/bench.sh)");
  // Dumped and restored trees become our children, to be reaped at once (see kill_and_reap).
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) fail(fmt::format("PR_SET_CHILD_SUBREAPER: {}", std::strerror(errno)));

  nc::CriuRuntime rt(c.criu);  // the same binary the bare runs use
  // The command's key file's key: the command restores what the library signed.
  ensure_key_file(c.key_file);
  const std::string key_bytes = read_text(c.key_file);
  const nc::HmacKey key =
      nc::HmacKey::from_bytes(std::span(reinterpret_cast<const unsigned char*>(key_bytes.data()), key_bytes.size()));
  rt.set_key(nc::HmacKey::from_bytes(key.bytes()));
  std::vector<Row> rows;
  std::vector<CriuRow> criu_rows;

  // A section set to "only" runs, with any other set so, and nothing else.
  const bool any_only = c.containers == "only" || c.transfer == "only";
  const auto runs_section = [any_only](const std::string& mode) { return mode == "only" || (mode == "yes" && !any_only); };
  if (!any_only) {
    const fs::path hmac_dir = c.work / "hmac";
    note(fmt::format("writing a {} MiB checkpoint-shaped folder to {}", c.hmac_mib, hmac_dir.native()));
    make_checkpoint_folder(hmac_dir, c.hmac_mib);
    bench_hmac(hmac_dir, rows);
    bench_rss(c, hmac_dir, rows);
    fs::remove_all(hmac_dir);

    const CliFeatures cli = cli_features(c);
    if (!cli.no_stream) note("this build of the command has no restore --no-stream: no peak RSS for that restore");
    for (int mib : c.sizes_mib)
      for (Tree tree : {Tree::shared, Tree::not_shared}) bench_criu(c, rt, cli, mib, tree, criu_rows);
  }

  std::vector<ContainerRow> container_rows;
  std::string runc;
  // A failure among the containers or the transfers still prints what was measured before it.
  std::exception_ptr failure;
  if (runs_section(c.containers)) {
    try {
      runc = runc_version();
      bench_containers(c, rt, key, container_rows);
    } catch (...) {
      failure = std::current_exception();
    }
  }
  TransferResults transfer;
  if (runs_section(c.transfer) && !failure) {
    try {
      bench_transfer(c, rt, transfer);
    } catch (...) {
      failure = std::current_exception();
    }
  }

  print_table(rows, criu_rows, container_rows, runc, transfer, rt,
              std::chrono::duration<double>(Clock::now() - start).count());
  if (failure) std::rethrow_exception(failure);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const nc::Error& e) {
    std::fprintf(stderr, "nc_bench: %s: %s\n", nc::status_name(e.status()), e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nc_bench: %s\n", e.what());
  }
  return 1;
}
