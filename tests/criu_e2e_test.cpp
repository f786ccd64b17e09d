// End to end with the real CRIU, as root: real process trees dumped, signed, verified and
// restored. These never skip: without a working CRIU they fail.
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/metadata.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>

#include <memory>
#include <algorithm>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <vector>

#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "process_support.hpp"
#include "fs/fs_util.hpp"
#include "fs/unique_fd.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

struct Fixture {
  TempDir tmp;
  KeyFileEnv key{secure_key_dir(tmp) / "checkpoint.key"};
  std::unique_ptr<CriuRuntime> rt = real_criu();
  fs::path checkpoint = tmp / "checkpoint";
};

}  // namespace

TEST_CASE_METHOD(Fixture, "a dumped tree is restored and runs on from where it stopped", "[e2e]") {
  CounterTree tree(tmp / "counter");
  const pid_t pid = tree.pid();
  rt->checkpoint(container("e2e", pid), checkpoint, false);
  CHECK(rt->state() == CheckpointState::Dumped);
  REQUIRE(wait_until([&] { return ended(pid); }));  // CRIU stopped the tree
  const long parent_at_dump = tree.count("parent");
  const long child_at_dump = tree.count("child");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(tree.count("parent") == parent_at_dump);  // nothing runs while checkpointed

  CHECK_NOTHROW(HmacTree::verify(checkpoint, KeyStore().load()));
  const auto metadata = CheckpointMetadata::load(UniqueFd(::open(checkpoint.c_str(), O_RDONLY | O_DIRECTORY)).get());
  CHECK(metadata.original_pid == static_cast<std::uint32_t>(pid));
  CHECK(metadata.container_id == "e2e");
  CHECK(fs::exists(checkpoint / "dump.log"));
  for (const auto& e : fs::recursive_directory_iterator(checkpoint))  // process memory: private
    CHECK((fs::status(e).permissions() & (fs::perms::group_all | fs::perms::others_all)) == fs::perms::none);

  const pid_t restored = rt->restore(checkpoint);
  // restore returned while the tree runs: it did not wait for the tree to exit (the seed did).
  CHECK(restored == pid);
  CHECK(is_alive(restored));
  CHECK(rt->state() == CheckpointState::Restored);
  REQUIRE(wait_until([&] { return tree.count("parent") > parent_at_dump + 5 && tree.count("child") > child_at_dump + 5; }));
  // It went on from its checkpoint rather than starting again from zero.
  CHECK(tree.count("parent") < parent_at_dump + 200);
  // The checkpoint folder is exactly as signed: it verifies (and could restore) again.
  CHECK_NOTHROW(HmacTree::verify(checkpoint, KeyStore().load()));
}

TEST_CASE_METHOD(Fixture, "leave_running keeps the original running", "[e2e]") {
  CounterTree tree(tmp / "counter");
  rt->checkpoint(container("e2e", tree.pid()), checkpoint, true);
  const long at_dump = tree.count("parent");
  REQUIRE(wait_until([&] { return tree.count("parent") > at_dump + 3; }));
  CHECK(is_alive(tree.pid()));
  CHECK_NOTHROW(HmacTree::verify(checkpoint, KeyStore().load()));

  SECTION("restoring while the original still holds its PIDs is a clear error") {
    try {
      rt->restore(checkpoint);
      FAIL("restore succeeded although the PIDs are taken");
    } catch (const Error& e) {
      CHECK(e.status() == Status::criu);
      CHECK(std::string(e.what()).find(fmt::format("PID {} that the checkpoint needs is taken", tree.pid())) != std::string::npos);
    }
    CHECK(rt->state() == CheckpointState::None);
    CHECK(is_alive(tree.pid()));
  }
}

TEST_CASE_METHOD(Fixture, "a tampered image is refused and nothing is restored", "[e2e]") {
  CounterTree tree(tmp / "counter");
  const pid_t pid = tree.pid();
  rt->checkpoint(container("e2e", pid), checkpoint, false);
  REQUIRE(wait_until([&] { return ended(pid); }));
  const long at_dump = tree.count("parent");
  flip_byte(checkpoint / "images/pages-1.img", 64);
  try {
    rt->restore(checkpoint);
    FAIL("a tampered checkpoint was restored");
  } catch (const Error& e) {
    CHECK(e.status() == Status::integrity);
  }
  CHECK(rt->state() == CheckpointState::None);
  // What CRIU had made before the bad chunk reached it never ran, and is gone.
  CHECK(wait_until([&] { return ended(pid); }));
  CHECK(tree.count("parent") == at_dump);
}

TEST_CASE_METHOD(Fixture, "a dump's images hashed while CRIU wrote them give the signature hashed afterwards",
                 "[e2e][signature]") {
  CounterTree tree(tmp / "counter", 64);  // tens of MiB of images: most are hashed during the dump
  rt->checkpoint(container("e2e", tree.pid()), checkpoint, true);
  REQUIRE(HmacTree::format_of(checkpoint) == SignatureFormat::manifest);  // the default for dumps
  const std::string streamed = read_file(checkpoint / HmacTree::signature_file);
  CHECK_NOTHROW(HmacTree::verify(checkpoint, KeyStore().load()));
  HmacTree::sign_as(checkpoint, KeyStore().load(), SignatureFormat::manifest);  // from scratch, after the fact
  CHECK(read_file(checkpoint / HmacTree::signature_file) == streamed);

  SECTION("a byte changed deep in the pages is refused") {
    flip_byte(checkpoint / "images/pages-1.img", 40 << 20);
    try {
      HmacTree::verify(checkpoint, KeyStore().load());
      FAIL("a changed page verified");
    } catch (const Error& e) {
      CHECK(e.status() == Status::integrity);
    }
  }
}

TEST_CASE_METHOD(Fixture, "a dump signed in the seed format restores", "[e2e][signature]") {
  CounterTree tree(tmp / "counter");
  const pid_t pid = tree.pid();
  rt->checkpoint(container("e2e", pid), checkpoint, CriuOptions(), SignatureFormat::seed);
  REQUIRE(HmacTree::format_of(checkpoint) == SignatureFormat::seed);
  CHECK(HmacTree::compute(checkpoint, KeyStore().load()) == read_file(checkpoint / HmacTree::signature_file));
  REQUIRE(wait_until([&] { return ended(pid); }));
  CHECK(rt->restore(checkpoint) == pid);
  CHECK(is_alive(pid));
}

namespace {

// A child in its own session holding an established TCP connection to this process.
struct TcpClient {
  int listener = -1, accepted = -1;
  pid_t pid = -1;
  TcpClient() {
    listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(listener, 1) == 0);
    REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    pid = ::fork();
    if (pid == 0) {
      ::setsid();
      const int s = ::socket(AF_INET, SOCK_STREAM, 0);
      if (::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) ::_exit(1);
      for (;;) ::pause();
    }
    accepted = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    REQUIRE(accepted >= 0);
  }
  ~TcpClient() {
    ::close(accepted);
    ::close(listener);
    CounterTree::stop(pid);
  }
};

}  // namespace

TEST_CASE_METHOD(Fixture, "file_locks lets CRIU dump a process holding a lock", "[e2e][options]") {
  const fs::path lock_file = tmp / "lock";
  const Child locker([&] {
    ::setsid();
    const int fd = ::open(lock_file.c_str(), O_RDWR | O_CREAT, 0600);
    if (fd < 0 || ::flock(fd, LOCK_EX) != 0) ::_exit(1);
    write_file(tmp / "locked", "");
    for (;;) ::pause();
  });
  const pid_t holder = locker.pid();
  REQUIRE(wait_until([&] { return fs::exists(tmp / "locked"); }));
  CriuOptions o;
  o.leave_running = true;
  CHECK(require_error([&] { rt->checkpoint(container("lock", holder), checkpoint, o); }).status() == Status::criu);
  CHECK(is_alive(holder));
  o.file_locks = true;
  CHECK_NOTHROW(rt->checkpoint(container("lock", holder), tmp / "with-locks", o));
  CHECK(is_alive(holder));
  CHECK_NOTHROW(HmacTree::verify(tmp / "with-locks", KeyStore().load()));
}

TEST_CASE_METHOD(Fixture, "restore as the caller's child", "[e2e][options]") {
  CounterTree tree(tmp / "counter");
  const pid_t pid = tree.pid();
  rt->checkpoint(container("e2e", pid), checkpoint, false);
  REQUIRE(wait_until([&] { return ended(pid); }));
  CriuOptions o;
  o.restore_mode = RestoreMode::child;
  const pid_t restored = rt->restore(checkpoint, o);
  CHECK(restored == pid);
  const std::string stat = read_file(fmt::format("/proc/{}/stat", restored));
  const long ppid = std::strtol(stat.c_str() + stat.rfind(')') + 4, nullptr, 10);
  CHECK(ppid == ::getpid());
  ::kill(restored, SIGKILL);
  int status = 0;
  CHECK(::waitpid(restored, &status, 0) == restored);  // ours to wait for
  CHECK(WIFSIGNALED(status));
}

TEST_CASE_METHOD(Fixture, "a failed dump leaves the state None and the process running", "[e2e]") {
  // An established TCP connection, which CRIU refuses to dump without --tcp-established.
  TcpClient client;
  const pid_t child = client.pid;
  try {
    rt->checkpoint(container("tcp", child), checkpoint, false);
    FAIL("CRIU dumped an established TCP connection without --tcp-established");
  } catch (const Error& e) {
    CHECK(e.status() == Status::criu);
    CHECK(std::string(e.what()).find("Error (") != std::string::npos);  // CRIU's own words
  }
  CHECK(rt->state() == CheckpointState::None);
  CHECK(is_alive(child));
  CHECK(process_state(child) != 't');  // not left stopped under ptrace
  CHECK_FALSE(fs::exists(checkpoint));  // nothing half-written, no staging folder
  CHECK(fs::exists(tmp / "checkpoint.failed-dump.log"));
}

TEST_CASE_METHOD(Fixture, "restore waits for a zombie that still holds a PID of the tree", "[e2e]") {
  CounterTree tree(tmp / "counter");
  const pid_t pid = tree.pid();
  rt->checkpoint(container("e2e", pid), checkpoint, false);
  REQUIRE(wait_until([&] { return process_state(pid) == 'Z'; }));  // our child, not reaped yet
  // Reap the tree's zombies (the root, and its child that was reparented to this subreaper and
  // still holds the root's PID as its process group) a moment after restore has found it taken.
  std::thread reaper([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    reap_all();
  });
  pid_t restored = 0;
  CHECK_NOTHROW(restored = rt->restore(checkpoint));
  reaper.join();
  CHECK(restored == pid);
  CHECK(is_alive(pid));
}

TEST_CASE_METHOD(Fixture, "CRIU's notifications reach the caller's callback on its own thread", "[e2e][notify]") {
  CounterTree tree(tmp / "counter");
  const auto caller = std::this_thread::get_id();
  std::vector<NotifyEvent> seen;
  bool other_thread = false;
  CriuOptions options;
  options.notify = [&](const NotifyEvent& e) {
    seen.push_back(e);
    other_thread |= std::this_thread::get_id() != caller;
    return true;
  };
  rt->checkpoint(container("notify", tree.pid()), checkpoint, options);
  REQUIRE(wait_until([&] { return ended(tree.pid()); }));
  CHECK_FALSE(other_thread);
  const auto has = [&](CriuNotification what) {
    return std::any_of(seen.begin(), seen.end(), [&](const NotifyEvent& e) { return e.what == what; });
  };
  CHECK(has(CriuNotification::post_dump));
  for (const auto& e : seen)
    if (e.what == CriuNotification::post_dump) CHECK(e.pid == tree.pid());

  seen.clear();
  const RestoredTree restored = rt->restore_tree(checkpoint, options);
  UniqueFd pidfd(restored.pidfd);
  CHECK(restored.pid == tree.pid());
  CHECK(has(CriuNotification::pre_resume));
  CHECK(has(CriuNotification::post_resume));
  CHECK(has(CriuNotification::post_restore));
  for (const auto& e : seen)
    if (e.what == CriuNotification::pre_resume) CHECK(e.pid == restored.pid);
  CHECK(::syscall(SYS_pidfd_send_signal, pidfd.get(), 0, nullptr, 0) == 0);
}

TEST_CASE_METHOD(Fixture, "a callback that refuses post-dump fails the dump and the tree runs on", "[e2e][notify]") {
  CounterTree tree(tmp / "counter");
  CriuOptions options;
  options.notify = [](const NotifyEvent& e) { return e.what != CriuNotification::post_dump; };
  try {
    rt->checkpoint(container("notify", tree.pid()), checkpoint, options);
    FAIL("the dump succeeded although the callback refused it");
  } catch (const Error& e) {
    CHECK(e.status() == Status::criu);
    CHECK(std::string(e.what()).find("notification callback refused post-dump") != std::string::npos);
  }
  CHECK_FALSE(fs::exists(checkpoint));
  const long now = tree.count("parent");
  CHECK(wait_until([&] { return tree.count("parent") > now + 3; }));  // resumed, running
}

TEST_CASE_METHOD(Fixture, "a callback that throws at pre-resume: nothing restored ever runs", "[e2e][notify]") {
  CounterTree tree(tmp / "counter");
  const pid_t pid = tree.pid();
  rt->checkpoint(container("notify", pid), checkpoint, false);
  REQUIRE(wait_until([&] { return ended(pid); }));
  const long at_dump = tree.count("parent");
  CriuOptions options;
  bool asked = false;
  options.notify = [&](const NotifyEvent& e) {
    if (e.what != CriuNotification::pre_resume) return true;
    asked = true;
    throw std::runtime_error("the runtime's network is not ready");
  };
  try {
    rt->restore(checkpoint, options);
    FAIL("the restore succeeded although the callback failed");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("failed at pre-resume: the runtime's network is not ready") != std::string::npos);
  }
  CHECK(asked);
  reap_all();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(tree.count("parent") == at_dump);  // it never ran
  // The checkpoint is untouched and restores once the callback agrees.
  REQUIRE(wait_until([&] { return ended(pid); }));
  CHECK(rt->restore(checkpoint) == pid);
  CHECK(wait_until([&] { return tree.count("parent") > at_dump + 3; }));
}

TEST_CASE_METHOD(Fixture, "checkpoints swapped between containers are refused by the expected id", "[e2e][security]") {
  // A user who can write the store swaps store/web and store/db with two renames.
  CounterTree web(tmp / "web-counter"), db(tmp / "db-counter");
  const fs::path store = tmp / "store";
  ContainerInfo web_info = container("web", web.pid()), db_info = container("db", db.pid());
  web_info.annotations = {{"generation", "7"}};
  rt->checkpoint(web_info, store / "web", false);
  rt->checkpoint(db_info, store / "db", false);
  REQUIRE(wait_until([&] { return ended(web.pid()) && ended(db.pid()); }));
  fs::rename(store / "web", store / "tmp");
  fs::rename(store / "db", store / "web");
  fs::rename(store / "tmp", store / "db");

  CriuOptions expect_web;
  expect_web.expected_container_id = "web";
  try {
    rt->restore(store / "web", expect_web);
    FAIL("the db container's checkpoint was restored as web");
  } catch (const Error& e) {
    CHECK(e.status() == Status::integrity);
    CHECK(std::string(e.what()).find("checkpoint of container 'db', not of 'web'") != std::string::npos);
  }
  CHECK_FALSE(is_alive(db.pid()));  // nothing ran

  SECTION("an older generation is refused; the expected one restores") {
    expect_web.expected_annotations = {{"generation", "8"}};
    try {
      rt->restore(store / "db", expect_web);
      FAIL("an older generation was restored");
    } catch (const Error& e) {
      CHECK(e.status() == Status::integrity);
      CHECK(std::string(e.what()).find("generation=7, not the 8 expected") != std::string::npos);
    }
    expect_web.expected_annotations = {{"generation", "7"}};
    CHECK(rt->restore(store / "db", expect_web) == web.pid());
  }
}

TEST_CASE_METHOD(Fixture, "a dump into a folder another user can change is refused before CRIU runs", "[e2e][security]") {
  // Its owner could swap the staging folder or the finished checkpoint for another: a replay of an
  // older signed checkpoint, or a folder of root's that the cleanup would then remove.
  CounterTree tree(tmp / "counter");
  const fs::path shared = tmp / "shared";
  fs::create_directory(shared);
  REQUIRE(::chown(shared.c_str(), 65534, 65534) == 0);
  try {
    rt->checkpoint(container("shared", tree.pid()), shared / "c1", true);
    FAIL("a dump was made in a folder another user owns");
  } catch (const Error& e) {
    CHECK(e.status() == Status::permission);
    CHECK(std::string(e.what()).find("can be changed by someone other than root") != std::string::npos);
  }
  CHECK(fs::is_empty(shared));
  const long now = tree.count("parent");
  CHECK(wait_until([&] { return tree.count("parent") > now + 2; }));  // never frozen
}

TEST_CASE_METHOD(Fixture, "a caller killed in the middle of a dump leaves its tree running and no staging",
                 "[e2e][security]") {
  // From CRIU's start until the library kills the tree (or resumes it after a failure) the tree
  // is stopped. A caller that dies in that window must not leave it stopped forever, nor its
  // staging folder behind.
  CounterTree tree(tmp / "counter", 512);
  const auto staging_log = [&]() -> std::string {
    for (const auto& e : fs::directory_iterator(tmp.path()))
      if (e.path().filename().native().starts_with(".checkpoint.staging-")) return read_file(e.path() / "dump.log");
    return "";
  };
  bool (*when)(const std::string&) = nullptr;
  SECTION("while CRIU dumps") {
    when = [](const std::string& log) { return contains(log, "Dumping") && !contains(log, "finished successfully"); };
  }
  SECTION("while it signs 512 MiB, once CRIU is done") {
    when = [](const std::string& log) { return contains(log, "Dumping finished successfully"); };
  }
  const pid_t caller = ::fork();
  REQUIRE(caller >= 0);
  if (caller == 0) {
    try {
      real_criu()->checkpoint(container("guarded", tree.pid()), checkpoint, false);
    } catch (...) {
    }
    ::_exit(0);
  }
  REQUIRE(wait_until([&] { return when(staging_log()); }, std::chrono::seconds(60)));
  ::kill(caller, SIGKILL);
  ::waitpid(caller, nullptr, 0);
  const long at_kill = tree.count("parent");
  CHECK(wait_until([&] { return tree.count("parent") > at_kill + 3; }));  // resumed
  const auto staged = [&] {
    for (const auto& e : fs::directory_iterator(tmp.path()))
      if (e.path().filename().native().starts_with(".checkpoint.staging-")) return true;
    return false;
  };
  CHECK(wait_until([&] { return !staged(); }));
  CHECK_FALSE(fs::exists(checkpoint));
}

TEST_CASE("cleaning up a deep tree is iterative and stays bounded", "[security]") {
  TempDir tmp;
  const UniqueFd top(::open(tmp.path().c_str(), O_RDONLY | O_DIRECTORY));
  int fd = ::dup(top.get());
  for (int i = 0; i < 20000; ++i) {  // the recursive cleanup ran out of stack at 19,000 levels
    REQUIRE(::mkdirat(fd, "d", 0700) == 0);
    const int next = ::openat(fd, "d", O_RDONLY | O_DIRECTORY);
    ::close(fd);
    fd = next;
  }
  ::close(fd);
  remove_contents(top.get());  // returns; what lies past its depth bound is left, not followed
  CHECK(fs::exists(tmp / "d"));
}

TEST_CASE("an Ed25519-signed dump restores, streamed, on a host holding only the public key; tampered, it does not",
          "[e2e][ed25519]") {
  TempDir tmp;
  const auto host_keys = [&](const char* name) {
    fs::create_directory(tmp / name);
    fs::permissions(tmp / name, fs::perms::owner_all, fs::perm_options::replace);
    return tmp / name;
  };
  // Each host's keys by the environment, as the CLI and C callers find them; KeyStore(path) puts
  // them beside the HMAC key under the same names.
  const auto on_host = [](const fs::path& keys) {
    return std::make_tuple(
        std::make_unique<ScopedEnv>("NUCLEUS_CHECKPOINT_HMAC_KEY_FILE", (keys / "checkpoint-hmac.key").c_str()),
        std::make_unique<ScopedEnv>("NUCLEUS_CHECKPOINT_ED25519_KEY_FILE", (keys / "checkpoint-ed25519.key").c_str()),
        std::make_unique<ScopedEnv>("NUCLEUS_CHECKPOINT_TRUSTED_KEYS", (keys / "trusted-keys").c_str()));
  };
  const fs::path source = host_keys("source"), receiver = host_keys("receiver"), checkpoint = tmp / "checkpoint";
  std::unique_ptr<CriuRuntime> rt = real_criu();
  CounterTree tree(tmp / "counter");
  const pid_t pid = tree.pid();
  {
    const auto env = on_host(source);
    // A key handed in from memory (CLI and C dumps use the key store's).
    const Ed25519SecretKey key = Ed25519SecretKey::generate();
    const Ed25519PublicKey public_key = key.public_key();
    rt->set_ed25519_key(Ed25519SecretKey::from_bytes(key.bytes()));
    CriuOptions options;
    options.signing = SignatureKind::ed25519;
    rt->checkpoint(container("e2e", pid), checkpoint, options);
    CHECK_FALSE(KeyStore().ed25519_exists());
    CHECK_FALSE(KeyStore().exists());  // nor an HMAC key: an Ed25519 dump needs none
    // The receiver is given the public key alone.
    KeyStore(receiver / "checkpoint-hmac.key").trust(public_key);
    CHECK(HmacTree::signer_of(checkpoint).key_id == public_key.id_hex());
  }
  REQUIRE(wait_until([&] { return ended(pid); }));
  const long at_dump = tree.count("parent");
  const auto env = on_host(receiver);
  REQUIRE(HmacTree::signer_of(checkpoint).kind == SignatureKind::ed25519);

  SECTION("as signed, it restores") {
    const pid_t restored = rt->restore(checkpoint);  // streamed: the manifest authenticated by the public key
    CHECK(restored == pid);
    REQUIRE(wait_until([&] { return tree.count("parent") > at_dump + 5; }));
    CHECK(tree.count("parent") < at_dump + 200);  // from its checkpoint, not from zero
    CHECK_FALSE(fs::exists(receiver / "checkpoint-hmac.key"));
    CHECK_FALSE(fs::exists(receiver / "checkpoint-ed25519.key"));
  }
  SECTION("tampered, it does not") {
    flip_byte(checkpoint / "images/pages-1.img", 64);
    CHECK(require_error([&] { rt->restore(checkpoint); }).status() == Status::integrity);
    CHECK(wait_until([&] { return ended(pid); }));
    CHECK(tree.count("parent") == at_dump);
  }
}
