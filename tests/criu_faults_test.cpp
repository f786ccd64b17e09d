// Faults around real CRIU dumps and restores, each with a clear status, nothing half-written that
// could verify, and no process lost where the library can prevent it.
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>

#include <sys/mount.h>

#include <memory>
#include <thread>

#include "process_support.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

struct Fixture {
  TempDir tmp;
  KeyFileEnv key{secure_key_dir(tmp) / "checkpoint.key"};
  CriuRuntime rt;  // the real CRIU, found as users find it
  fs::path checkpoint = tmp / "checkpoint";
};

// Nothing but the failed dump's log may be left where the checkpoint was to be.
void require_no_checkpoint_left(const fs::path& parent, const std::string& name) {
  CHECK_FALSE(fs::exists(parent / name));
  for (const auto& e : fs::directory_iterator(parent))
    CHECK_FALSE(e.path().filename().native().starts_with("." + name + ".staging"));
}

std::uint64_t start_ticks_of(pid_t pid) {
  const std::string stat = read_file(fmt::format("/proc/{}/stat", pid));
  std::size_t at = stat.rfind(')') + 2;
  for (int field = 3; field < 22; ++field) at = stat.find(' ', at + 1);
  return std::strtoull(stat.c_str() + at + 1, nullptr, 10);
}

// A tmpfs of `size` mounted on dir for the test's lifetime: a disk that fills up.
struct SmallDisk {
  fs::path dir;
  SmallDisk(const fs::path& at, const char* size) : dir(at) {
    fs::create_directory(dir);
    REQUIRE(::mount("tmpfs", dir.c_str(), "tmpfs", 0, fmt::format("size={},mode=0700", size).c_str()) == 0);
  }
  ~SmallDisk() { ::umount2(dir.c_str(), MNT_DETACH); }
};

}  // namespace

TEST_CASE_METHOD(Fixture, "CRIU killed mid-dump: a clear failure, nothing left, the tree runs on", "[faults]") {
  // 256 MiB takes CRIU a few hundred ms: the kills land before, while and after its parasite is in.
  CounterTree tree(tmp / "counter", 256);
  for (const int ms : {5, 60, 250}) {
    INFO("timeout " << ms << " ms");
    // If the kill lands while CRIU's parasite code runs inside a task, that task can die: CRIU's
    // doing, which the README documents. Then there is nothing left to dump.
    reap_all();
    if (!is_alive(tree.pid())) {
      WARN("the tree died when CRIU was killed before this " << ms << " ms run");
      break;
    }
    CriuOptions o;
    o.timeout = std::chrono::milliseconds(ms);
    try {
      rt.checkpoint(container("big", tree.pid()), checkpoint, o);
      fs::remove_all(checkpoint);  // CRIU was quicker than the timeout: also fine
      continue;
    } catch (const Error& e) {
      CHECK(e.status() == Status::criu);
      CHECK(contains(e.what(), "timed out"));
    }
    CHECK(rt.state() == CheckpointState::None);
    require_no_checkpoint_left(tmp.path(), "checkpoint");
    // CRIU's parasite removes itself when CRIU's socket closes, and the tree runs on (the
    // library resumes it, should CRIU have left it stopped) unless it died with the parasite.
    const long before = tree.count("parent");
    CHECK(wait_until([&] { reap_all(); return tree.count("parent") > before + 2 || !is_alive(tree.pid()); }));
  }
}

TEST_CASE_METHOD(Fixture, "CRIU killed mid-restore: a clear failure; the checkpoint restores again", "[faults]") {
  CounterTree tree(tmp / "counter");
  const pid_t pid = tree.pid();
  rt.checkpoint(container("e2e", pid), checkpoint, false);
  REQUIRE(wait_until([&] { return ended(pid); }));
  CriuOptions o;
  o.timeout = std::chrono::milliseconds(15);
  try {
    rt.restore(checkpoint, o);
    // CRIU finished within the timeout: the tree runs.
    CHECK(is_alive(pid));
    CounterTree::stop(pid);
  } catch (const Error& e) {
    CHECK(e.status() == Status::criu);
    CHECK(contains(e.what(), "timed out"));
    // What CRIU had restored dies with it (its restored tasks carry PDEATHSIG).
    CHECK(wait_until([&] { return ended(pid); }));
  }
  CHECK(rt.state() == CheckpointState::None);
  CHECK_NOTHROW(HmacTree::verify(checkpoint, KeyStore().load()));
  REQUIRE(wait_until([&] { reap_all(); return !fs::exists(fmt::format("/proc/{}", pid)); }));
  CHECK(rt.restore(checkpoint) == pid);
  CHECK(is_alive(pid));
}

TEST_CASE_METHOD(Fixture, "the disk fills up during the dump", "[faults]") {
  CounterTree tree(tmp / "counter");
  SmallDisk disk(tmp / "disk", "64k");
  const auto e = require_error([&] { rt.checkpoint(container("full", tree.pid()), disk.dir / "checkpoint", false); });
  CHECK(e.status() == Status::criu);
  CHECK(rt.state() == CheckpointState::None);
  require_no_checkpoint_left(disk.dir, "checkpoint");
  const long before = tree.count("parent");
  CHECK(wait_until([&] { return tree.count("parent") > before + 2; }));  // CRIU resumed the tree
}

TEST_CASE_METHOD(Fixture, "the disk fills up while the checkpoint is signed", "[faults]") {
  SmallDisk disk(tmp / "disk", "256k");
  // A stand-in CRIU that writes an image and then fills the disk, so writing metadata.json or
  // checkpoint.hmac is what fails.
  CriuRuntime fake(write_fake_criu(tmp.path(), "echo core > \"$img/core-1.img\"; "
                                               "cat /dev/zero > \"$img/pages-1.img\" 2>/dev/null; exit 0"));
  const auto e = require_error([&] { fake.checkpoint(container("full", ::getpid()), disk.dir / "checkpoint", true); });
  CHECK(e.status() == Status::io);
  CHECK(contains(e.what(), "No space left on device"));
  CHECK(fake.state() == CheckpointState::None);
  require_no_checkpoint_left(disk.dir, "checkpoint");
}

TEST_CASE_METHOD(Fixture, "the key goes missing or unsafe between sign and restore", "[faults]") {
  CounterTree tree(tmp / "counter");
  const pid_t pid = tree.pid();
  rt.checkpoint(container("key", pid), checkpoint, false);
  REQUIRE(wait_until([&] { return ended(pid); }));
  const fs::path key_file = KeyStore::default_path();
  SECTION("removed") {
    fs::remove(key_file);
    const auto err = require_error([&] { rt.restore(checkpoint); });
    CHECK(err.status() == Status::key);
    CHECK(contains(err.what(), "no checkpoint HMAC key"));
  }
  SECTION("readable by others") {
    fs::permissions(key_file, fs::perms::owner_read | fs::perms::others_read, fs::perm_options::replace);
    const auto err = require_error([&] { rt.restore(checkpoint); });
    CHECK(err.status() == Status::key);
    CHECK(contains(err.what(), "insecure mode"));
  }
  SECTION("replaced by another key") {
    fs::remove(key_file);
    KeyStore().load_or_create();
    CHECK(require_error([&] { rt.restore(checkpoint); }).status() == Status::integrity);
  }
  CHECK(rt.state() == CheckpointState::None);
  CHECK_FALSE(is_alive(pid));  // nothing of CRIU ran
}

TEST_CASE_METHOD(Fixture, "a key problem found at dump time loses nothing", "[faults]") {
  CounterTree tree(tmp / "counter");
  fs::permissions(KeyStore::default_path().parent_path(), fs::perms::group_read | fs::perms::group_exec,
                  fs::perm_options::add);  // an unsafe key folder: refused before CRIU runs
  const auto e = require_error([&] { rt.checkpoint(container("key", tree.pid()), checkpoint, false); });
  CHECK(e.status() == Status::key);
  CHECK(rt.state() == CheckpointState::None);
  require_no_checkpoint_left(tmp.path(), "checkpoint");
  const long before = tree.count("parent");
  CHECK(wait_until([&] { return tree.count("parent") > before + 2; }));  // not killed, not stopped
}

TEST_CASE_METHOD(Fixture, "two threads checkpoint two trees at once", "[faults]") {
  CounterTree a(tmp / "a"), b(tmp / "b");
  CriuRuntime rt_b;
  std::exception_ptr failure_a, failure_b;
  std::thread ta([&] {
    try { rt.checkpoint(container("a", a.pid()), tmp / "ckpt-a", true); } catch (...) { failure_a = std::current_exception(); }
  });
  std::thread tb([&] {
    try { rt_b.checkpoint(container("b", b.pid()), tmp / "ckpt-b", true); } catch (...) { failure_b = std::current_exception(); }
  });
  ta.join();
  tb.join();
  CHECK_FALSE(failure_a);
  CHECK_FALSE(failure_b);
  CHECK_NOTHROW(HmacTree::verify(tmp / "ckpt-a", KeyStore().load()));
  CHECK_NOTHROW(HmacTree::verify(tmp / "ckpt-b", KeyStore().load()));
}

TEST_CASE_METHOD(Fixture, "a reused PID is refused by its start time", "[faults]") {
  CounterTree tree(tmp / "counter");
  const std::uint64_t ticks = start_ticks_of(tree.pid());
  ContainerInfo info = container("reuse", tree.pid());
  info.start_ticks = ticks + 1;  // as if the container had started at another moment
  const auto e = require_error([&] { rt.checkpoint(info, checkpoint, true); });
  CHECK(e.status() == Status::not_found);
  CHECK(contains(e.what(), "reused"));
  info.start_ticks = ticks;
  CHECK_NOTHROW(rt.checkpoint(info, checkpoint, true));
}
