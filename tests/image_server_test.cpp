// Restore through the library's image stream, end to end with the real CRIU, as root: CRIU reads
// only bytes that passed the signature's checks, whatever happens to the folder while it reads.
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <memory>
#include <string>
#include <thread>

#include "process_support.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

constexpr off_t chunk = 4 << 20;  // what dumps sign with

struct Fixture {
  TempDir tmp;
  KeyFileEnv key{secure_key_dir(tmp) / "checkpoint.key"};
  std::unique_ptr<CriuRuntime> runtime = real_criu();
  CriuRuntime& rt = *runtime;
  fs::path checkpoint = tmp / "checkpoint";

  // A counter tree with `mib` MiB of memory, dumped (and so stopped and reaped).
  std::unique_ptr<CounterTree> dumped_tree(int mib) {
    auto tree = std::make_unique<CounterTree>(tmp / "counter", mib);
    rt.checkpoint(container("stream", tree->pid()), checkpoint, false);
    REQUIRE(wait_until([&] { return ended(tree->pid()); }));
    return tree;
  }
  fs::path largest_pages() const {
    fs::path pages;
    for (const auto& e : fs::directory_iterator(checkpoint / "images"))
      if (e.path().filename().native().starts_with("pages-") && (pages.empty() || fs::file_size(e) > fs::file_size(pages)))
        pages = e.path();
    REQUIRE(!pages.empty());
    return pages;
  }
};

// The CRIU this process runs, found as its child named criu.
pid_t running_criu() {
  const std::unique_ptr<DIR, int (*)(DIR*)> proc(::opendir("/proc"), ::closedir);
  while (const dirent* e = ::readdir(proc.get())) {
    const pid_t pid = static_cast<pid_t>(std::strtol(e->d_name, nullptr, 10));
    if (pid <= 0) continue;
    const std::string stat = read_file(fmt::format("/proc/{}/stat", pid));
    const auto close = stat.rfind(')');
    if (close == std::string::npos || stat.find("(criu)") == std::string::npos) continue;
    if (std::strtol(stat.c_str() + close + 4, nullptr, 10) == ::getpid()) return pid;
  }
  return -1;
}

// What a refused restore made is gone and reaped (this runner is the subreaper of CRIU's
// orphans), so that the PID is free for the next restore.
void wait_gone(pid_t pid) {
  CHECK(wait_until([&] { reap_all(); return !fs::exists(fmt::format("/proc/{}", pid)); }));
}

}  // namespace

TEST_CASE_METHOD(Fixture, "a streamed restore feeds CRIU the checked images and the tree runs on", "[e2e][stream]") {
  const auto tree = dumped_tree(64);
  REQUIRE(HmacTree::format_of(checkpoint) == SignatureFormat::manifest);
  REQUIRE(fs::file_size(largest_pages()) > 8 * static_cast<std::uintmax_t>(chunk));  // many chunks
  const long at_dump = tree->count("parent");
  CriuOptions options;
  options.work_dir = tmp / "work";
  fs::create_directories(options.work_dir);
  fs::permissions(options.work_dir, fs::perms::owner_all);
  CHECK(rt.restore(checkpoint, options) == tree->pid());
  CHECK(wait_until([&] { return tree->count("parent") > at_dump + 3; }));
  // CRIU read its images from the stream, not from the folder.
  CHECK(read_file(options.work_dir / "restore.log").find("Dismissing the image streamer") != std::string::npos);
  CHECK_NOTHROW(HmacTree::verify(checkpoint, KeyStore().load()));
}

TEST_CASE_METHOD(Fixture, "a page changed while CRIU restores is refused before CRIU reads it, and nothing runs",
                 "[e2e][stream][security]") {
  const auto tree = dumped_tree(64);
  const long at_dump = tree->count("parent");
  const fs::path pages = largest_pages();
  const auto size = static_cast<off_t>(fs::file_size(pages));
  off_t at = 0;
  SECTION("in the first chunk") { at = 100; }
  SECTION("in a middle chunk") { at = (size / chunk / 2) * chunk + 4097; }
  SECTION("in the last chunk") { at = size - 1; }
  // CRIU is running and has begun reading its images when it gives pre-restore; the pages come later.
  CriuOptions options;
  bool changed = false;
  options.notify = [&](const NotifyEvent& e) {
    if (e.what == CriuNotification::pre_restore && !changed) {
      flip_byte(pages, at);
      changed = true;
    }
    return true;
  };
  try {
    rt.restore(checkpoint, options);
    FAIL("a checkpoint changed during restore was restored");
  } catch (const Error& e) {
    CHECK(e.status() == Status::integrity);
    const off_t start = at / chunk * chunk;
    CHECK(std::string(e.what()).find(fmt::format("bytes {}", start)) != std::string::npos);
  }
  CHECK(changed);
  reap_all();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK_FALSE(is_alive(tree->pid()));
  CHECK(tree->count("parent") == at_dump);  // it never ran
  flip_byte(pages, at);  // back as signed: it restores
  wait_gone(tree->pid());
  CHECK(rt.restore(checkpoint) == tree->pid());
}

TEST_CASE_METHOD(Fixture, "a writer holding a descriptor from before the chown gets no byte restored",
                 "[e2e][stream][security]") {
  // The attack: an unprivileged user owns the checkpoint, opens a page image for writing and keeps
  // the descriptor; root takes the folder over (chown) and restores; the user writes whenever it likes.
  const auto tree = dumped_tree(16);
  const long at_dump = tree->count("parent");
  const fs::path pages = largest_pages();
  const auto chown_tree = [&](uid_t uid) {
    REQUIRE(::chown(checkpoint.c_str(), uid, uid) == 0);
    for (const auto& e : fs::recursive_directory_iterator(checkpoint)) REQUIRE(::lchown(e.path().c_str(), uid, uid) == 0);
  };
  chown_tree(65534);
  int commands[2], done[2];
  REQUIRE(::pipe(commands) == 0);
  REQUIRE(::pipe(done) == 0);
  const pid_t attacker = ::fork();
  if (attacker == 0) {
    ::close(commands[1]);
    ::close(done[0]);
    const int fd = ::open(pages.c_str(), O_RDWR);
    unsigned char original = 0;
    if (fd < 0 || ::pread(fd, &original, 1, 4096) != 1 || ::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(1);
    for (char c = 0; ::read(commands[0], &c, 1) == 1;) {  // 'w': write its own byte, 'u': undo
      const unsigned char b = c == 'w' ? static_cast<unsigned char>(original ^ 0x5a) : original;
      if (::pwrite(fd, &b, 1, 4096) != 1 || ::write(done[1], "x", 1) != 1) ::_exit(1);
    }
    ::_exit(0);
  }
  ::close(commands[0]);
  ::close(done[1]);
  const auto attack = [&](char c) {
    char ack = 0;
    REQUIRE(::write(commands[1], &c, 1) == 1);
    REQUIRE(::read(done[0], &ack, 1) == 1);
  };
  chown_tree(0);  // the folder is root's alone now; the descriptor survives
  attack('w');
  try {
    rt.restore(checkpoint);
    FAIL("the attacker's bytes were restored");
  } catch (const Error& e) {
    CHECK(e.status() == Status::integrity);
  }
  reap_all();
  CHECK_FALSE(is_alive(tree->pid()));
  CHECK(tree->count("parent") == at_dump);

  SECTION("restoring from the folder after verifying it whole refuses the open writer instead") {
    attack('u');
    CriuOptions from_folder;
    from_folder.stream_images = false;
    try {
      rt.restore(checkpoint, from_folder);
      FAIL("restored from the folder while another process could still write a page image");
    } catch (const Error& e) {
      CHECK(e.status() == Status::permission);
      CHECK(std::string(e.what()).find("is open for writing by some process") != std::string::npos);
    }
  }
  SECTION("with the bytes as signed again, the stream restores while the writer still holds its descriptor") {
    attack('u');
    wait_gone(tree->pid());
    CHECK(rt.restore(checkpoint) == tree->pid());
  }
  ::close(commands[1]);
  ::waitpid(attacker, nullptr, 0);
  ::close(done[0]);
}

TEST_CASE_METHOD(Fixture, "CRIU killed in the middle of the stream leaves nothing running and the checkpoint intact",
                 "[e2e][stream]") {
  const auto tree = dumped_tree(64);
  const long at_dump = tree->count("parent");
  CriuOptions options;
  pid_t killed = -1;
  options.notify = [&](const NotifyEvent& e) {
    if (e.what == CriuNotification::pre_restore && killed < 0) {
      killed = running_criu();
      if (killed > 0) ::kill(killed, SIGKILL);
    }
    return true;
  };
  try {
    rt.restore(checkpoint, options);
    FAIL("the restore succeeded although CRIU was killed");
  } catch (const Error& e) {
    CHECK((e.status() == Status::criu || e.status() == Status::io));
  }
  CHECK(killed > 0);
  reap_all();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK_FALSE(is_alive(tree->pid()));
  CHECK(tree->count("parent") == at_dump);
  CHECK_NOTHROW(HmacTree::verify(checkpoint, KeyStore().load()));
  wait_gone(tree->pid());
  CHECK(rt.restore(checkpoint) == tree->pid());
  CHECK(wait_until([&] { return tree->count("parent") > at_dump + 3; }));
}

TEST_CASE_METHOD(Fixture, "a checkpoint signed in an older format restores from the verified folder", "[e2e][stream]") {
  const auto tree = dumped_tree(0);
  HmacTree::sign_as(checkpoint, KeyStore().load(), SignatureFormat::chunked);
  const long at_dump = tree->count("parent");
  CHECK(rt.restore(checkpoint) == tree->pid());
  CHECK(wait_until([&] { return tree->count("parent") > at_dump + 3; }));
}
