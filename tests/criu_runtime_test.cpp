// CriuRuntime without real CRIU: binary validation, version and pidfile parsing, checkpoint
// folders, and, with a fake criu script, the arguments and environment CRIU gets and every
// error path. The real dumps and restores are in criu_e2e_test.cpp.
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/metadata.hpp>

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <csignal>
#include <optional>
#include <fstream>
#include <thread>

#include "fs/checkpoint_dir.hpp"
#include "criu/proc.hpp"
#include "process_support.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::lstat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

fs::path make_binary(const TempDir& tmp, fs::perms perms) {
  const fs::path bin = tmp / "criu";
  write_file(bin, "#!/bin/sh\n");
  fs::permissions(bin, perms, fs::perm_options::replace);
  return bin;
}

constexpr auto rwx = fs::perms::owner_all;
constexpr auto r_x_group_others =
    fs::perms::group_read | fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec;

// A key of our own per test, so no test touches the machine's key store.
struct TestKey {
  TempDir tmp;
  KeyFileEnv env{secure_key_dir(tmp) / "checkpoint.key"};
};

void save_metadata(const fs::path& dir) {
  CheckpointMetadata m;
  m.container_id = m.container_name = "c";
  m.save(UniqueFd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY)).get());
}

// A checkpoint folder as the library writes one, not yet signed.
fs::path unsigned_checkpoint(const TempDir& tmp) {
  const fs::path dir = tmp / "cp";
  fs::create_directories(dir / "images");
  write_file(dir / "images/pages-1.img", "pages");
  save_metadata(dir);
  return dir;
}

}  // namespace

TEST_CASE("validate_binary refuses unsafe binaries", "[criu_runtime]") {
  TempDir tmp;
  SECTION("group-writable") {
    const auto e = require_error([&] { CriuRuntime::validate_binary(make_binary(tmp, rwx | fs::perms::group_all | fs::perms::others_read)); });
    CHECK(contains(e.what(), "writable by group/others"));
    CHECK(e.status() == Status::permission);
  }
  SECTION("world-writable") {
    const auto e = require_error([&] { CriuRuntime::validate_binary(make_binary(tmp, rwx | fs::perms::group_read | fs::perms::others_all)); });
    CHECK(contains(e.what(), "writable by group/others"));
  }
  SECTION("not executable") {
    const auto e = require_error([&] { CriuRuntime::validate_binary(make_binary(tmp, fs::perms::owner_read | fs::perms::owner_write)); });
    CHECK(contains(e.what(), "not executable"));
  }
  SECTION("missing") {
    CHECK(require_error([&] { CriuRuntime::validate_binary(tmp / "nonexistent"); }).status() == Status::not_found);
  }
  SECTION("owned by another user") {
    const fs::path bin = make_binary(tmp, rwx | r_x_group_others);
    REQUIRE(::chown(bin.c_str(), 12345, 12345) == 0);
    CHECK(contains(require_error([&] { CriuRuntime::validate_binary(bin); }).what(), "owned by UID 12345"));
  }
  SECTION("a folder") {
    CHECK(require_error([&] { CriuRuntime::validate_binary(tmp.path()); }).status() == Status::invalid);
  }
}

TEST_CASE("validate_binary accepts 0755 and 0700", "[criu_runtime]") {
  TempDir tmp;
  CHECK_NOTHROW(CriuRuntime::validate_binary(make_binary(tmp, rwx | r_x_group_others)));
  CHECK_NOTHROW(CriuRuntime::validate_binary(make_binary(tmp, rwx)));
}

TEST_CASE("parse_pidfile is strict (the seed's BUG-22)", "[criu_runtime]") {
  CHECK(CriuRuntime::parse_pidfile("1234\n") == 1234);
  CHECK(CriuRuntime::parse_pidfile("  5678  \n") == 5678);
  // Text around a number is an error message, never a PID (the seed's lenient parse_pid_text
  // took the first number it found).
  CHECK_FALSE(CriuRuntime::parse_pidfile("Error code: 255 (EPERM)"));
  CHECK_FALSE(CriuRuntime::parse_pidfile("restored successfully pid=5678"));
  CHECK_FALSE(CriuRuntime::parse_pidfile(""));
  CHECK_FALSE(CriuRuntime::parse_pidfile("no pid here"));
  CHECK_FALSE(CriuRuntime::parse_pidfile("12 34"));
  CHECK_FALSE(CriuRuntime::parse_pidfile("+12"));
  CHECK_FALSE(CriuRuntime::parse_pidfile("-12"));
  CHECK_FALSE(CriuRuntime::parse_pidfile("0"));
  CHECK_FALSE(CriuRuntime::parse_pidfile("99999999999999999999"));
}

TEST_CASE("parse_version reads criu --version", "[criu_runtime]") {
  const auto v = CriuRuntime::parse_version("Version: 4.1.1\nGitID: v4.1.1\n");
  REQUIRE(v);
  CHECK((v->major == 4 && v->minor == 1 && v->patch == 1));
  CHECK(v->text == "4.1.1");
  CHECK(*CriuRuntime::parse_version("Version: 3.17.1\n") < *v);
  const auto two = CriuRuntime::parse_version("Version: 4.2\n");
  REQUIRE(two);
  CHECK((two->major == 4 && two->minor == 2 && two->patch == 0));
  CHECK_FALSE(CriuRuntime::parse_version("criu: command not found"));
  CHECK_FALSE(CriuRuntime::parse_version("Version: four"));
}

TEST_CASE("CheckpointDir stages a checkpoint beside its target and commits it whole", "[criu_runtime]") {
  TempDir tmp;
  const auto entries = [&](const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename());
    return names;
  };
  SECTION("private folders, renamed into place on commit; parents created") {
    const fs::path dir = tmp / "a/b/checkpoint";
    {
      CheckpointDir cd = CheckpointDir::prepare(dir);
      CHECK_FALSE(fs::exists(dir));  // nothing at the target until it is complete
      write_file(fs::path(fmt::format("/proc/self/fd/{}/core-1.img", cd.images())), "core");
      cd.commit();
    }
    CHECK(read_file(dir / "images/core-1.img") == "core");
    CHECK(mode_of(dir) == 0700);
    CHECK(mode_of(dir / "images") == 0700);
    CHECK(entries(tmp / "a/b") == std::vector<std::string>{"checkpoint"});  // no staging left
  }
  SECTION("not committed: the staging folder is removed and the target stays absent") {
    {
      CheckpointDir cd = CheckpointDir::prepare(tmp / "cp");
      write_file(fs::path(fmt::format("/proc/self/fd/{}/pages-1.img", cd.images())), "pages");
    }
    CHECK(entries(tmp.path()).empty());
  }
  SECTION("an existing empty folder is replaced") {
    fs::create_directory(tmp / "empty");
    CheckpointDir cd = CheckpointDir::prepare(tmp / "empty/");
    cd.commit();
    CHECK(fs::is_directory(tmp / "empty/images"));
  }
  SECTION("refuses a symlinked checkpoint folder") {
    fs::create_directory(tmp / "real");
    fs::create_directory_symlink(tmp / "real", tmp / "link");
    CHECK(contains(require_error([&] { CheckpointDir::prepare(tmp / "link"); }).what(), "symlink"));
  }
  SECTION("refuses a file as the checkpoint folder") {
    write_file(tmp / "not-a-dir", "");
    CHECK(contains(require_error([&] { CheckpointDir::prepare(tmp / "not-a-dir"); }).what(), "not a directory"));
  }
  SECTION("refuses a folder that already holds files, such as a symlinked images folder (seed test)") {
    fs::create_directory(tmp / "target");
    fs::create_directory(tmp / "cp");
    fs::create_directory_symlink(tmp / "target", tmp / "cp/images");
    const auto e = require_error([&] { CheckpointDir::prepare(tmp / "cp"); });
    CHECK(contains(e.what(), "already holds files"));
    CHECK(fs::is_symlink(tmp / "cp/images"));
  }
  SECTION("a target that appears meanwhile is not overwritten") {
    CheckpointDir cd = CheckpointDir::prepare(tmp / "cp");
    fs::create_directory(tmp / "cp");
    write_file(tmp / "cp/precious", "x");
    CHECK_THROWS_AS(cd.commit(), Error);
    CHECK(read_file(tmp / "cp/precious") == "x");
  }
}

TEST_CASE("the runtime refuses a criu that fails or says no version", "[criu_runtime]") {
  TempDir tmp;
  SECTION("--version fails") {
    const fs::path bin = tmp / "criu";
    write_file(bin, "#!/bin/sh\necho broken >&2\nexit 3\n");
    fs::permissions(bin, rwx, fs::perm_options::replace);
    const auto e = require_error([&] { CriuRuntime rt(bin); });
    CHECK(e.status() == Status::criu);
    CHECK(contains(e.what(), "broken"));
  }
  SECTION("no version") {
    const auto e = require_error([&] { CriuRuntime rt(write_fake_criu(tmp.path(), "", "hello")); });
    CHECK(e.status() == Status::criu);
  }
  SECTION("too old for a kernel with [vvar_vclock]") {
    const bool vvar_vclock = contains(read_file("/proc/self/maps"), "[vvar_vclock]");
    const fs::path bin = write_fake_criu(tmp.path(), "", "Version: 3.17.1");
    if (vvar_vclock) {
      const auto e = require_error([&] { CriuRuntime rt(bin); });
      CHECK(e.status() == Status::criu);
      CHECK(contains(e.what(), "too old for this kernel"));
    } else {
      CHECK(CriuRuntime(bin).version().text == "3.17.1");
    }
  }
}

TEST_CASE("checkpoint passes CRIU its folders as descriptors and a clean environment", "[criu_runtime]") {
  TestKey key;
  TempDir tmp;
  CriuRuntime rt(write_fake_criu(tmp.path(), "touch \"$img/core-1.img\" \"$work/dump.log\"; exit 0"));
  const fs::path dir = tmp / "cp";
  ::setenv("NC_TEST_SECRET_VARIABLE", "1", 1);
  rt.checkpoint(container("c1", ::getpid()), dir, true);
  ::unsetenv("NC_TEST_SECRET_VARIABLE");

  const std::string args = read_file(tmp / "args");
  CHECK(args.starts_with("dump "));
  CHECK(contains(args, fmt::format("--tree {} ", ::getpid())));
  CHECK(contains(args, "--images-dir /proc/self/fd/"));
  CHECK(contains(args, "--work-dir /proc/self/fd/"));
  CHECK(contains(args, "--log-file dump.log"));
  CHECK(contains(args, "--shell-job"));
  CHECK(contains(args, "--leave-running"));
  const std::string env = read_file(tmp / "env");
  CHECK(contains(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
  CHECK(contains(env, "CRIU_FAULT=130"));
  CHECK_FALSE(contains(env, "NC_TEST_SECRET_VARIABLE"));

  CHECK(rt.state() == CheckpointState::Dumped);
  CHECK(fs::exists(dir / "images/core-1.img"));
  CHECK_NOTHROW(HmacTree::verify(dir, KeyStore().load()));
  const UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY));
  const auto metadata = CheckpointMetadata::load(fd.get());
  CHECK(metadata.container_id == "c1");
  CHECK(metadata.container_name == "c1");
  CHECK(metadata.original_pid == static_cast<std::uint32_t>(::getpid()));
  CHECK_FALSE(metadata.command.empty());

  SECTION("without leave_running CRIU leaves the tree stopped, and the library ends it once signed") {
    Child sleeper;
    const pid_t child = sleeper.pid();
    rt.checkpoint(container("c2", child), tmp / "cp2", false);
    CHECK(contains(read_file(tmp / "args"), "--leave-stopped"));
    CHECK_FALSE(contains(read_file(tmp / "args"), "--leave-running"));
    int status = 0;
    CHECK(::waitpid(child, &status, 0) == child);
    CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
  }
}

TEST_CASE("a failed dump reports CRIU's errors, signs nothing and returns to None", "[criu_runtime]") {
  TestKey key;
  TempDir tmp;
  CriuRuntime rt(write_fake_criu(tmp.path(),
      "echo 'Error (criu/util.c:1533): rlimit: Can'\"'\"'t setup RLIMIT_NOFILE for self' > \"$work/dump.log\"\n"
      "echo 'Error (criu/cr-dump.c:99): the tree is too strange' >> \"$work/dump.log\"; exit 1"));
  const auto e = require_error([&] { rt.checkpoint(container("c", ::getpid()), tmp / "cp", true); });
  CHECK(e.status() == Status::criu);
  CHECK(contains(e.what(), "the tree is too strange"));
  CHECK_FALSE(contains(e.what(), "RLIMIT_NOFILE"));
  CHECK(contains(e.what(), (tmp / "cp.failed-dump.log").native()));
  CHECK(contains(read_file(tmp / "cp.failed-dump.log"), "the tree is too strange"));
  CHECK(rt.state() == CheckpointState::None);
  CHECK_FALSE(fs::exists(tmp / "cp"));  // no half-written checkpoint, and no staging folder
  for (const auto& entry : fs::directory_iterator(tmp.path()))
    CHECK_FALSE(entry.path().filename().native().starts_with(".cp.staging"));
}

TEST_CASE("checkpoint refuses bad targets before CRIU runs", "[criu_runtime]") {
  TestKey key;
  TempDir tmp;
  CriuRuntime rt(write_fake_criu(tmp.path(), "exit 0"));
  SECTION("a PID that does not exist") {
    CHECK(require_error([&] { rt.checkpoint(container("c", 4194304), tmp / "cp", false); }).status() == Status::not_found);
  }
  SECTION("a zombie") {
    const pid_t child = ::fork();
    if (child == 0) ::_exit(0);
    REQUIRE(wait_until([&] { return process_state(child) == 'Z'; }));
    const auto e = require_error([&] { rt.checkpoint(container("c", child), tmp / "cp", false); });
    ::waitpid(child, nullptr, 0);
    CHECK(e.status() == Status::not_found);
    CHECK(contains(e.what(), "zombie"));
  }
  SECTION("an empty id or a bad PID") {
    CHECK(require_error([&] { rt.checkpoint(container("", ::getpid()), tmp / "cp", false); }).status() == Status::invalid);
    CHECK(require_error([&] { rt.checkpoint(container("c", 0), tmp / "cp", false); }).status() == Status::invalid);
  }
  SECTION("a symlinked checkpoint folder") {
    fs::create_directory(tmp / "real");
    fs::create_directory_symlink(tmp / "real", tmp / "link");
    CHECK(contains(require_error([&] { rt.checkpoint(container("c", ::getpid()), tmp / "link", false); }).what(), "symlink"));
  }
  SECTION("not root") {
    REQUIRE(::seteuid(65534) == 0);
    const auto e = require_error([&] { rt.checkpoint(container("c", ::getpid()), tmp / "cp", false); });
    REQUIRE(::seteuid(0) == 0);
    CHECK(e.status() == Status::permission);
    CHECK(contains(e.what(), "requires root"));
  }
  CHECK_FALSE(fs::exists(tmp / "args"));  // CRIU never ran
  CHECK(rt.state() == CheckpointState::None);
}

TEST_CASE("restore verifies before CRIU runs", "[criu_runtime]") {
  TestKey key;
  TempDir tmp;
  CriuRuntime rt(write_fake_criu(tmp.path(), "echo 4242 > \"$work/restore.pid\"; exit 0"));
  const fs::path dir = unsigned_checkpoint(tmp);

  SECTION("unsigned") {
    CHECK(require_error([&] { rt.restore(dir); }).status() == Status::integrity);
    CHECK_FALSE(fs::exists(tmp / "args"));
  }
  SECTION("tampered") {
    HmacTree::sign(dir, KeyStore().load_or_create());
    write_file(dir / "images/pages-1.img", "PAGES");
    CHECK(require_error([&] { rt.restore(dir); }).status() == Status::integrity);
    CHECK_FALSE(fs::exists(tmp / "args"));
  }
  SECTION("signed: the PID comes from the pidfile and the folder stays as signed") {
    HmacTree::sign(dir, KeyStore().load_or_create());
    CHECK(rt.restore(dir) == 4242);
    CHECK(rt.state() == CheckpointState::Restored);
    const std::string args = read_file(tmp / "args");
    CHECK(args.starts_with("restore "));
    CHECK(contains(args, "--images-dir /proc/self/fd/"));
    CHECK(contains(args, "--restore-detached"));
    CHECK(contains(args, "--pidfile restore.pid"));
    CHECK_NOTHROW(HmacTree::verify(dir, KeyStore().load()));
  }
  CHECK(rt.state() != CheckpointState::Restoring);
}

TEST_CASE("restore reports CRIU failures clearly", "[criu_runtime]") {
  TestKey key;
  TempDir tmp;
  const fs::path dir = tmp / "cp";
  fs::create_directories(dir / "images");
  save_metadata(dir);
  HmacTree::sign(dir, KeyStore().load_or_create());

  SECTION("a pidfile that holds no PID") {
    CriuRuntime rt(write_fake_criu(tmp.path(), "echo 'Error code: 255' > \"$work/restore.pid\"; exit 0"));
    const auto e = require_error([&] { rt.restore(dir); });
    CHECK(e.status() == Status::criu);
    CHECK(contains(e.what(), "holds no PID"));
    CHECK(rt.state() == CheckpointState::None);
  }
  SECTION("a PID the tree needs is held by a live process") {
    CriuRuntime rt(write_fake_criu(tmp.path(), fmt::format(
        "echo 'Error (criu/cr-restore.c:1230): Can'\"'\"'t fork for {}: File exists' > \"$work/restore.log\"; exit 1",
        ::getpid())));
    const auto e = require_error([&] { rt.restore(dir); });
    CHECK(e.status() == Status::criu);
    CHECK(contains(e.what(), fmt::format("PID {} that the checkpoint needs is taken by process {}", ::getpid(), ::getpid())));
    CHECK(rt.state() == CheckpointState::None);
  }
}

TEST_CASE("one runtime runs one operation at a time", "[criu_runtime]") {
  TestKey key;
  TempDir tmp;
  CriuRuntime rt(write_fake_criu(tmp.path(), "sleep 1; exit 0"));
  std::atomic<bool> done{false};
  std::thread dump([&] {
    rt.checkpoint(container("c", ::getpid()), tmp / "cp", true);
    done = true;
  });
  REQUIRE(wait_until([&] { return rt.state() == CheckpointState::Dumping; }));
  const auto e = require_error([&] { rt.restore(tmp / "cp"); });
  dump.join();
  CHECK(e.status() == Status::state);
  CHECK(std::string(e.what()) == "cannot restore: this runtime is already dumping; a runtime (nc_runtime, CriuRuntime) "
                                "runs one operation at a time: use one runtime per thread");
  CHECK(done);
  CHECK(rt.state() == CheckpointState::Dumped);
}

TEST_CASE("options become CRIU's arguments", "[criu_runtime][options]") {
  TestKey key;
  TempDir tmp;
  CriuRuntime rt(write_fake_criu(tmp.path(), "echo 4242 > \"$work/restore.pid\"; touch \"$work/$op.log\"; exit 0"));
  CriuOptions o;
  o.leave_running = true;
  o.shell_job = false;
  o.tcp_established = true;
  o.ext_unix_sk = true;
  o.file_locks = true;
  o.manage_cgroups = CgroupMode::soft;
  o.external = {"mnt[/data]:data"};
  o.log_level = 2;
  o.work_dir = tmp / "work";
  rt.checkpoint(container("c", ::getpid()), tmp / "cp", o);
  const std::string dump = read_file(tmp / "args");
  for (const char* arg : {" --tcp-established", " --ext-unix-sk", " --file-locks", " --manage-cgroups=soft",
                          " --external mnt[/data]:data", " -v2 ", " --leave-running"})
    CHECK(contains(dump, arg));
  CHECK_FALSE(contains(dump, "--shell-job"));
  CHECK(fs::exists(tmp / "work/dump.log"));  // the log went to the work dir, not the checkpoint
  CHECK_FALSE(fs::exists(tmp / "cp/dump.log"));

  o.tcp_close = true;
  o.restore_mode = RestoreMode::child;
  CHECK(rt.restore(tmp / "cp", o) == 4242);
  const std::string restore = read_file(tmp / "args");
  CHECK(contains(restore, "--restore-sibling"));
  CHECK(contains(restore, "--restore-detached"));
  CHECK(contains(restore, "--tcp-close"));
  CHECK(fs::exists(tmp / "work/restore.log"));  // kept in a caller's work dir
  CHECK_FALSE(fs::exists(tmp / "work/restore.pid"));

  o.log_level = 5;
  CHECK(require_error([&] { rt.checkpoint(container("c", ::getpid()), tmp / "cp2", o); }).status() == Status::invalid);
  o.log_level = 4;
  o.external = {"--exec-cmd"};
  CHECK(require_error([&] { rt.checkpoint(container("c", ::getpid()), tmp / "cp3", o); }).status() == Status::invalid);
}

TEST_CASE("a CRIU that hangs is killed at the timeout", "[criu_runtime][options]") {
  TestKey key;
  TempDir tmp;
  CriuRuntime rt(write_fake_criu(tmp.path(), "exec sleep 30"));
  CriuOptions o;
  o.timeout = std::chrono::milliseconds(300);
  const auto start = std::chrono::steady_clock::now();
  const auto e = require_error([&] { rt.checkpoint(container("c", ::getpid()), tmp / "cp", o); });
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
  CHECK(e.status() == Status::criu);
  CHECK(contains(e.what(), "timed out"));
  CHECK(rt.state() == CheckpointState::None);
  CHECK_FALSE(fs::exists(tmp / "cp/checkpoint.hmac"));
}

TEST_CASE("a helper a killed CRIU leaves behind, stopped, is killed with it", "[criu_runtime][options]") {
  TestKey key;
  TempDir tmp;
  // The helper stops itself, as CRIU's own helpers were found stopped after CRIU was killed.
  // (Stopping again when continued: the library resumes what it finds of a dumped tree.)
  CriuRuntime rt(write_fake_criu(tmp.path(), "sh -c 'echo $$ > \"" + (tmp / "helper.pid").native() +
                                                 "\"; while :; do kill -STOP $$; done' & sleep 30"));
  CriuOptions o;
  o.timeout = std::chrono::milliseconds(500);
  const auto e = require_error([&] { rt.checkpoint(container("c", ::getpid()), tmp / "cp", o); });
  CHECK(contains(e.what(), "timed out"));
  const pid_t helper = static_cast<pid_t>(std::stol(read_file(tmp / "helper.pid")));
  CHECK(wait_until([&] { return ended(helper); }));
}

TEST_CASE("CRIU gets only its own descriptors and default signals, and its status is ours", "[criu_runtime][spawn]") {
  TestKey key;
  TempDir tmp;
  CriuRuntime rt(write_fake_criu(tmp.path(), "ls -l /proc/$$/fd > \"$work/fds\"; grep SigIgn /proc/$$/status > \"$work/sig\"; "
                                             "echo '(00.3) Dumping finished successfully' > \"$work/dump.log\"; "
                                             "sleep 0.3; exit 0"));
  // A descriptor the caller forgot to mark close-on-exec, an ignored SIGCHLD, and a reaper
  // thread collecting every child: none of them may reach or disturb CRIU. With SIGCHLD ignored
  // the kernel discards CRIU's exit status, and CRIU's log says how the dump ended.
  const int leaked = ::open("/etc/hostname", O_RDONLY);
  REQUIRE(leaked >= 0);
  const auto old_sigchld = ::signal(SIGCHLD, SIG_IGN);
  std::atomic<bool> stop{false};
  std::thread reaper([&] {
    while (!stop) {
      ::waitpid(-1, nullptr, WNOHANG);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  CriuOptions o;
  o.leave_running = true;
  o.work_dir = tmp / "work";
  CHECK_NOTHROW(rt.checkpoint(container("c", ::getpid()), tmp / "cp", o));
  stop = true;
  reaper.join();
  ::signal(SIGCHLD, old_sigchld);
  ::close(leaked);
  CHECK_FALSE(contains(read_file(tmp / "work/fds"), "/etc/hostname"));
  const std::string sig = read_file(tmp / "work/sig");
  const auto ignored = std::strtoull(sig.substr(sig.find(':') + 1).c_str(), nullptr, 16);
  CHECK((ignored & (1ull << (SIGCHLD - 1))) == 0);
}

namespace {

// Makes clone3 fail with ENOSYS in this process from now on, as Docker's default seccomp profile
// does, and allows everything else.
void refuse_clone3() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{static_cast<unsigned short>(std::size(filter)), filter};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0)
    ::_exit(3);
}

}  // namespace

TEST_CASE("where seccomp refuses clone3, CRIU is started with clone", "[criu_runtime][spawn]") {
  TestKey key;
  TempDir tmp;
  const fs::path criu = write_fake_criu(tmp.path(), "echo '(00.3) Dumping finished successfully' > \"$work/dump.log\"");
  // In a child, so that the filter stays there; it reports through its exit code.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    refuse_clone3();
    if (::syscall(SYS_clone3, nullptr, 0) != -1 || errno != ENOSYS) ::_exit(4);  // the filter works
    try {
      CriuRuntime rt(criu);
      CriuOptions o;
      o.leave_running = true;
      rt.checkpoint(container("c", ::getppid()), tmp / "cp", o);
      ::_exit(fs::exists(tmp / "cp/checkpoint.hmac") ? 0 : 5);
    } catch (...) {
      ::_exit(6);
    }
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("with stdin closed, CRIU still gets the right descriptors", "[criu_runtime][spawn]") {
  TestKey key;
  TempDir tmp;
  const int saved = ::dup(0);
  ::close(0);
  std::optional<Error> e;
  {
    CriuRuntime rt(write_fake_criu(tmp.path(), "touch \"$img/core-1.img\"; exit 0"));
    CriuOptions o;
    o.leave_running = true;
    e = error_of([&] { rt.checkpoint(container("c", ::getpid()), tmp / "cp", o); });
  }
  ::dup2(saved, 0);
  ::close(saved);
  CHECK_FALSE(e.has_value());
  CHECK(fs::exists(tmp / "cp/images/core-1.img"));
}

TEST_CASE("if the checkpoint cannot be put in place after the dump, the stopped tree runs on", "[criu_runtime]") {
  TestKey key;
  TempDir tmp;
  Child sleeper;
  const pid_t child = sleeper.pid();
  // The stand-in stops the tree as --leave-stopped does, then someone else takes the target.
  CriuRuntime rt(write_fake_criu(tmp.path(), fmt::format("kill -STOP {}; touch \"$img/core-1.img\"; "
                                                         "mkdir '{}'; touch '{}/theirs'; exit 0",
                                                         child, (tmp / "cp").native(), (tmp / "cp").native())));
  const auto e = require_error([&] { rt.checkpoint(container("c", child), tmp / "cp", false); });
  CHECK(e.status() == Status::io);
  CHECK(fs::exists(tmp / "cp/theirs"));  // not overwritten
  CHECK(wait_until([&] { return process_state(child) == 'S'; }));  // resumed, not stopped, not killed
}

TEST_CASE("restore refuses a checkpoint others could change between verification and CRIU", "[criu_runtime][security]") {
  TestKey key;
  TempDir tmp;
  CriuRuntime rt(write_fake_criu(tmp.path(), "echo 4242 > \"$work/restore.pid\"; exit 0"));
  const fs::path dir = unsigned_checkpoint(tmp);
  HmacTree::sign(dir, KeyStore().load_or_create());
  SECTION("a file writable by others") {
    fs::permissions(dir / "images/pages-1.img", fs::perms::others_write, fs::perm_options::add);
  }
  SECTION("a folder owned by another user") { REQUIRE(::chown((dir / "images").c_str(), 12345, 12345) == 0); }
  SECTION("a file with another hard link") { fs::create_hard_link(dir / "images/pages-1.img", tmp / "elsewhere"); }
  const auto e = require_error([&] { rt.restore(dir); });
  CHECK(e.status() == Status::permission);
  CHECK_FALSE(fs::exists(tmp / "args"));  // CRIU never ran
  CHECK(rt.state() == CheckpointState::None);
  CHECK_NOTHROW(HmacTree::verify(dir, KeyStore().load()));  // verification alone is not gated
}

TEST_CASE("a work dir others could write is refused", "[criu_runtime][security]") {
  TestKey key;
  TempDir tmp;
  CriuRuntime rt(write_fake_criu(tmp.path(), "exit 0"));
  fs::create_directory(tmp / "work");
  REQUIRE(::chown((tmp / "work").c_str(), 12345, 12345) == 0);
  CriuOptions o;
  o.leave_running = true;
  o.work_dir = tmp / "work";
  CHECK(require_error([&] { rt.checkpoint(container("c", ::getpid()), tmp / "cp", o); }).status() == Status::permission);
  CHECK_FALSE(fs::exists(tmp / "args"));
}

TEST_CASE("a dump's files are private, and a trailing slash names the folder", "[criu_runtime][security]") {
  TestKey key;
  TempDir tmp;
  CriuRuntime rt(write_fake_criu(tmp.path(), "echo pages > \"$img/pages-1.img\"; chmod 0644 \"$img/pages-1.img\"; exit 0"));
  rt.checkpoint(container("c", ::getpid()), (tmp / "cp").native() + "/", true);
  CHECK(mode_of(tmp / "cp/images/pages-1.img") == 0600);
  CHECK(mode_of(tmp / "cp/metadata.json") == 0600);
  CHECK(mode_of(tmp / "cp/images") == 0700);
}

TEST_CASE("a process that took the PID of a tree's member is never signalled", "[security]") {
  // The attack: a member of a dumped tree exits, and another process takes its PID before the
  // library kills or resumes the tree. ns_last_pid makes the next fork get that very PID.
  REQUIRE(::geteuid() == 0);
  const auto park = [] {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::pause();
      ::_exit(0);
    }
    return pid;
  };
  const pid_t member = park();
  REQUIRE(member > 0);
  const ProcessTree tree = ProcessTree::open(member);
  REQUIRE(tree.size() == 1);
  ::kill(member, SIGKILL);
  REQUIRE(::waitpid(member, nullptr, 0) == member);
  pid_t stranger = -1;
  for (int attempt = 0; attempt < 200 && stranger != member; ++attempt) {
    if (stranger > 0) {
      ::kill(stranger, SIGKILL);
      ::waitpid(stranger, nullptr, 0);
    }
    std::ofstream("/proc/sys/kernel/ns_last_pid") << member - 1;
    stranger = park();
  }
  REQUIRE(stranger == member);  // the machine's other forks may win a few times, not 200
  tree.signal(SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(::waitpid(stranger, nullptr, WNOHANG) == 0);  // still alive: not signalled
  ::kill(stranger, SIGKILL);
  ::waitpid(stranger, nullptr, 0);
}
