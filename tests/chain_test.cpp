// Pre-dump chains with the real CRIU, as root. Where the kernel tracks changed memory
// (soft-dirty), a real chain is made: pre-dump, pre-dump on it, final dump on it, restored. Where it
// does not (CRIU's pre-dump aborts there), the library must refuse before CRIU runs, and the
// chain's verification is tested on chains of real dumps linked and signed as a dump on a parent
// links and signs them: CRIU restores their final layer through the parent link all the same.
#include <nucleus/checkpoint/chain.hpp>
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/metadata.hpp>

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "checkpoint/chain.hpp"
#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"
#include "process_support.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

bool kernel_tracks_memory(const CriuRuntime& rt) {
  const std::string command = rt.binary().native() + " check --feature mem_dirty_track >/dev/null 2>&1";
  return std::system(command.c_str()) == 0;
}

std::uint64_t pages_bytes(const fs::path& checkpoint) {
  std::uint64_t total = 0;
  for (const auto& e : fs::directory_iterator(checkpoint / "images"))
    if (e.path().filename().native().starts_with("pages-") && e.is_regular_file(/*no follow*/)) total += e.file_size();
  return total;
}

struct Fixture {
  TempDir tmp;
  KeyFileEnv key_env{secure_key_dir(tmp) / "checkpoint.key"};
  std::unique_ptr<CriuRuntime> rt = real_criu();
  fs::path chains = tmp / "chains";  // the folder holding the layers: root's, 0700
  Fixture() { fs::create_directory(chains, tmp.path()); fs::permissions(chains, fs::perms::owner_all); }

  CriuOptions running() const {
    CriuOptions o;
    o.leave_running = true;
    return o;
  }
  // Makes the real checkpoint `layer` (beside its parent) a layer of a chain, as a dump on
  // `parent` writes one: its metadata marks it (a pre-dump or not) and binds the parent's
  // signature, CRIU's link leads to the parent's images, and it is signed again.
  void link_layer(const std::string& layer, const std::string& parent, bool predump) const {
    const UniqueFd dir = open_dir(chains / layer, "layer");
    CheckpointMetadata m = CheckpointMetadata::load(dir.get());
    m.chain = ChainRecord{predump, parent,
                          parent.empty() ? "" : signature_sha256(open_dir(chains / parent, "parent").get())};
    m.save(dir.get());
    fs::remove(chains / layer / "images/parent");
    if (!parent.empty()) fs::create_directory_symlink(parent_link_target(parent), chains / layer / "images/parent");
    HmacTree::sign_as(dir.get(), KeyStore().load(), SignatureFormat::manifest);
  }
  // A copy of a checkpoint (files 0600 and folders 0700, as the library writes them).
  void copy_checkpoint(const std::string& from, const std::string& to) const {
    fs::copy(chains / from, chains / to, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  }
  void verify(const std::string& layer) const { CheckpointChain::verify(chains / layer, KeyStore()); }
};

// A chain of real checkpoints of one running counter: p0 and p1 marked pre-dumps (p1 on p0), and
// the final layer, dumped last, on p1. The counter is stopped by the final dump.
struct ChainFixture : Fixture {
  CounterTree tree{tmp / "counter"};
  long at_final = 0;
  ChainFixture() {
    rt->checkpoint(container("chain", tree.pid()), chains / "p0", running());
    link_layer("p0", "", true);
    rt->checkpoint(container("chain", tree.pid()), chains / "p1", running());
    link_layer("p1", "p0", true);
    rt->checkpoint(container("chain", tree.pid()), chains / "final", false);
    REQUIRE(wait_until([&] { return ended(tree.pid()); }));
    at_final = tree.count("parent");
    link_layer("final", "p1", false);
  }
  // The restore of the final layer fails with `status`, saying `says`, and nothing of it runs.
  void refused(Status status, const std::string& says) {
    const Error e = require_error([&] { rt->restore(chains / "final"); });
    INFO(e.what());
    CHECK(e.status() == status);
    CHECK(contains(e.what(), says));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(tree.count("parent") == at_final);
  }
};

}  // namespace

TEST_CASE_METHOD(Fixture, "a pre-dump chain: pre-dump, pre-dump on it, final dump on it, restored", "[chain]") {
  CounterTree tree(tmp / "counter", 16);
  if (!kernel_tracks_memory(*rt)) {
    // CRIU's pre-dump aborts on such a kernel: the library says why before CRIU runs, and nothing is made.
    const Error e = require_error([&] { rt->predump(container("chain", tree.pid()), chains / "p0", CriuOptions()); });
    INFO(e.what());
    CHECK(e.status() == Status::criu);
    CHECK(contains(e.what(), "CONFIG_MEM_SOFT_DIRTY"));
    CHECK(rt->state() == CheckpointState::None);
    CHECK(!fs::exists(chains / "p0"));
    CHECK(fs::is_empty(chains));
    const long before = tree.count("parent");
    CHECK(wait_until([&] { return tree.count("parent") > before + 2; }));  // it runs on
    WARN("this kernel has no soft-dirty memory tracking: the pre-dump chain itself was not made here");
    return;
  }
  rt->predump(container("chain", tree.pid()), chains / "p0", CriuOptions());
  CHECK(is_alive(tree.pid()));
  CriuOptions on_p0;
  on_p0.parent = chains / "p0";
  rt->predump(container("chain", tree.pid()), chains / "p1", on_p0);
  CriuOptions on_p1;
  on_p1.parent = chains / "p1";
  rt->checkpoint(container("chain", tree.pid()), chains / "final", on_p1);
  REQUIRE(wait_until([&] { return ended(tree.pid()); }));
  const long at_final = tree.count("parent");
  // The first layer holds the 16 MiB; the second only what changed since.
  INFO("pages: p0 " << pages_bytes(chains / "p0") << ", p1 " << pages_bytes(chains / "p1") << ", final "
                    << pages_bytes(chains / "final"));
  CHECK(pages_bytes(chains / "p0") > 16u << 20);
  CHECK(pages_bytes(chains / "p1") * 8 < pages_bytes(chains / "p0"));
  CHECK(pages_bytes(chains / "final") * 8 < pages_bytes(chains / "p0"));
  CHECK(fs::read_symlink(chains / "final/images/parent") == "../../p1/images");
  CHECK_NOTHROW(verify("final"));
  const pid_t restored = rt->restore(chains / "final");
  CHECK(restored == tree.pid());
  REQUIRE(wait_until([&] { return tree.count("parent") > at_final + 5; }));
  CHECK(tree.count("parent") < at_final + 200);  // on from where it stopped
  CounterTree::stop(restored);
}

TEST_CASE_METHOD(Fixture, "a dump on a parent checks the parent before anything runs", "[chain]") {
  CounterTree tree(tmp / "counter");
  rt->checkpoint(container("chain", tree.pid()), chains / "full", running());
  copy_checkpoint("full", "p0");
  link_layer("p0", "", true);
  const auto dump_on = [&](const fs::path& parent) {
    CriuOptions o = running();
    o.parent = parent;
    return require_error([&] { rt->checkpoint(container("chain", tree.pid()), chains / "new", o); });
  };
  const auto nothing_made = [&] {
    CHECK(!fs::exists(chains / "new"));
    CHECK(rt->state() != CheckpointState::Dumping);
  };
  SECTION("not beside the new checkpoint") {
    fs::create_directory(tmp / "elsewhere");
    fs::rename(chains / "p0", tmp / "elsewhere/p0");
    const Error e = dump_on(tmp / "elsewhere/p0");
    CHECK(e.status() == Status::invalid);
    CHECK(contains(e.what(), "must be a folder beside the new checkpoint"));
  }
  SECTION("not a pre-dump") {
    const Error e = dump_on(chains / "full");
    CHECK(e.status() == Status::invalid);
    CHECK(contains(e.what(), "is not a pre-dump"));
  }
  SECTION("of another container") {
    const UniqueFd dir = open_dir(chains / "p0", "p0");
    CheckpointMetadata m = CheckpointMetadata::load(dir.get());
    m.container_id = "other";
    m.save(dir.get());
    HmacTree::sign_as(dir.get(), KeyStore().load(), SignatureFormat::manifest);
    const Error e = dump_on(chains / "p0");
    CHECK(e.status() == Status::invalid);
    CHECK(contains(e.what(), "of container 'other'"));
  }
  SECTION("changed since it was signed") {
    flip_byte(chains / "p0/images/inventory.img", 3);
    const Error e = dump_on(chains / "p0");
    CHECK(e.status() == Status::integrity);
  }
  SECTION("auto-dedup without a parent") {
    CriuOptions o = running();
    o.auto_dedup = true;
    const Error e = require_error([&] { rt->checkpoint(container("chain", tree.pid()), chains / "new", o); });
    CHECK(e.status() == Status::invalid);
    CHECK(contains(e.what(), "auto-dedup needs a parent"));
  }
  SECTION("signed in the seed format") {
    CriuOptions o = running();
    o.parent = chains / "p0";
    const Error e = require_error(
        [&] { rt->checkpoint(container("chain", tree.pid()), chains / "new", o, SignatureFormat::seed); });
    CHECK(e.status() == Status::invalid);
    CHECK(contains(e.what(), "seed format cannot cover"));
  }
  SECTION("a good parent, on a kernel without memory tracking") {
    if (kernel_tracks_memory(*rt)) return;  // there the dump is made: see the test above
    const Error e = dump_on(chains / "p0");
    CHECK(e.status() == Status::criu);
    CHECK(contains(e.what(), "CONFIG_MEM_SOFT_DIRTY"));
  }
  nothing_made();
  CHECK(is_alive(tree.pid()));
}

TEST_CASE_METHOD(ChainFixture, "a chain verifies, and its final layer restores through its parent link", "[chain]") {
  CHECK_NOTHROW(verify("final"));
  CHECK_NOTHROW(verify("p1"));
  const pid_t restored = rt->restore(chains / "final");  // streamed by default: a chain is not
  CHECK(restored == tree.pid());
  REQUIRE(wait_until([&] { return tree.count("parent") > at_final + 5; }));
  CHECK(tree.count("parent") < at_final + 200);
  CounterTree::stop(restored);
  CHECK_NOTHROW(verify("final"));  // left exactly as signed
}

TEST_CASE_METHOD(ChainFixture, "a chain that is not as dumped is refused and nothing runs", "[chain]") {
  SECTION("the parent swapped for another signed pre-dump") {
    copy_checkpoint("p0", "other");
    link_layer("other", "p0", true);  // a pre-dump on p0 too, signed, but not the one final bound
    fs::rename(chains / "p1", chains / "p1.was");
    fs::rename(chains / "other", chains / "p1");
    refused(Status::integrity, "is not the checkpoint");
  }
  SECTION("the layer re-parented: its link") {
    fs::remove(chains / "final/images/parent");
    fs::create_directory_symlink("../../p0/images", chains / "final/images/parent");
    refused(Status::integrity, "HMAC mismatch");
  }
  SECTION("the layer re-parented: its metadata") {
    const std::string text = read_file(chains / "final/metadata.json");
    const auto at = text.find("\"parent\": \"p1\"");
    REQUIRE(at != std::string::npos);
    std::string changed = text;
    changed.replace(at, 14, "\"parent\": \"p0\"");
    write_file(chains / "final/metadata.json", changed);
    refused(Status::integrity, "'metadata.json' differs from what was signed");
  }
  SECTION("the layer signed with a link to another parent than its metadata names") {
    fs::remove(chains / "final/images/parent");
    fs::create_directory_symlink("../../p0/images", chains / "final/images/parent");
    HmacTree::sign_as(open_dir(chains / "final", "final").get(), KeyStore().load(), SignatureFormat::manifest);
    refused(Status::integrity, "links to another parent than the 'p1' its metadata names");
  }
  SECTION("a byte of a parent's pages changed") {
    flip_byte(chains / "p0/images/pages-1.img", 100);
    refused(Status::integrity, "parent checkpoint 'p0'");
  }
  SECTION("the parent link removed") {
    fs::remove(chains / "final/images/parent");
    refused(Status::integrity, "HMAC mismatch");
  }
  SECTION("a parent that is not a pre-dump") {
    link_layer("p1", "p0", false);
    link_layer("final", "p1", false);  // bound to the new signature of p1
    refused(Status::integrity, "parent checkpoint 'p1' (of");
    CHECK(contains(require_error([&] { verify("final"); }).what(), "is not a pre-dump"));
  }
  SECTION("the folder holding the chain writable by others") {
    fs::permissions(chains, fs::perms::others_write, fs::perm_options::add);
    refused(Status::permission, "can be changed by others");
  }
  SECTION("a parent's file writable by others") {
    fs::permissions(chains / "p0/images/pages-1.img", fs::perms::others_write, fs::perm_options::add);
    refused(Status::permission, "pages-1.img");
  }
}

TEST_CASE_METHOD(ChainFixture, "a pre-dump is not restored alone", "[chain]") {
  const Error e = require_error([&] { rt->restore(chains / "p1"); });
  CHECK(e.status() == Status::invalid);
  CHECK(contains(e.what(), "is a pre-dump"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(tree.count("parent") == at_final);
}

TEST_CASE_METHOD(Fixture, "after auto-dedup punched holes in the parents, they are re-signed, rebound", "[chain]") {
  // What CRIU's --auto-dedup does to the parents (it needs memory tracking to run at all): it
  // punches the pages the new layer holds out of their pages images.
  CounterTree tree(tmp / "counter");
  rt->checkpoint(container("chain", tree.pid()), chains / "p0", running());
  link_layer("p0", "", true);
  rt->checkpoint(container("chain", tree.pid()), chains / "p1", running());
  link_layer("p1", "p0", true);
  const std::vector<ChainLayer> parents = verify_chain(open_dir(chains / "p1", "p1").get(), "p1", [](int fd) {
    HmacTree::verify(fd, KeyStore().load());
  }, ChainUse::criu_reads);
  REQUIRE(parents.size() == 2);
  for (const char* layer : {"p0", "p1"}) {
    const UniqueFd pages(::open((chains / layer / "images/pages-1.img").c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
    REQUIRE(pages);
    REQUIRE(::fallocate(pages.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0);
  }
  CHECK(require_error([&] { verify("p1"); }).status() == Status::integrity);
  const std::string bound = resign_parents(parents, [](int fd) {
    HmacTree::sign_as(fd, KeyStore().load(), HmacTree::format_of(fd));
  });
  CHECK(bound == signature_sha256(open_dir(chains / "p1", "p1").get()));
  CHECK_NOTHROW(verify("p1"));  // p0 re-signed, p1 rebound to it and re-signed
}

TEST_CASE_METHOD(Fixture, "chain loops and chains too long are refused", "[chain]") {
  CounterTree tree(tmp / "counter");
  rt->checkpoint(container("chain", tree.pid()), chains / "l0", running());
  link_layer("l0", "", true);
  SECTION("a loop") {
    copy_checkpoint("l0", "a");
    copy_checkpoint("l0", "b");
    link_layer("a", "b", true);
    link_layer("b", "a", true);  // b's signature changes: a no longer binds it, but the loop is met first
    const Error e = require_error([&] { verify("b"); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), "the chain of"));
    CHECK(contains(e.what(), "loops: parent checkpoint 'b'"));
  }
  SECTION("64 layers verify, 65 do not") {
    for (int i = 1; i < static_cast<int>(CheckpointChain::max_layers); ++i) {
      copy_checkpoint("l0", "l" + std::to_string(i));
      link_layer("l" + std::to_string(i), "l" + std::to_string(i - 1), true);
    }
    CHECK_NOTHROW(verify("l63"));
    copy_checkpoint("l0", "l64");
    link_layer("l64", "l63", true);
    const Error e = require_error([&] { verify("l64"); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), "longer than 64 layers"));
  }
}

TEST_CASE_METHOD(Fixture, "only a layer's parent link is a symlink a checkpoint may hold", "[chain]") {
  CounterTree tree(tmp / "counter");
  rt->checkpoint(container("chain", tree.pid()), chains / "p0", running());
  link_layer("p0", "", true);
  copy_checkpoint("p0", "layer");
  link_layer("layer", "p0", true);
  const UniqueFd layer = open_dir(chains / "layer", "layer");
  SECTION("the seed format cannot sign it") {
    const Error e = require_error([&] { HmacTree::sign_as(layer.get(), KeyStore().load(), SignatureFormat::seed); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), "seed signature format cannot cover 'images/parent'"));
  }
  SECTION("the chunked format signs it as the manifest format does") {
    HmacTree::sign_as(layer.get(), KeyStore().load(), SignatureFormat::chunked);
    CHECK_NOTHROW(verify("layer"));
  }
  SECTION("the independent implementation (seed_hmac.py) verifies it, and only as linked") {
    const char* script = std::getenv("NC_TEST_SEED_HMAC");
    REQUIRE(script != nullptr);
    const auto python_verifies = [&] {
      const std::string command = fmt::format("/usr/bin/python3 {} --verify {} {} >/dev/null 2>&1", script,
                                              (chains / "layer").native(), KeyStore().path().native());
      return std::system(command.c_str()) == 0;
    };
    CHECK(python_verifies());  // the manifest format
    HmacTree::sign_as(layer.get(), KeyStore().load(), SignatureFormat::chunked);
    CHECK(python_verifies());
    fs::remove(chains / "layer/images/parent");
    fs::create_directory_symlink("../../layer/images", chains / "layer/images/parent");
    CHECK(!python_verifies());
  }
  for (const char* target : {"/etc", "../../p0/images/..", "../../../p0/images", "../../p0/x/images", "../.././images",
                             "../p0/images"}) {
    DYNAMIC_SECTION("a link to " << target) {
      fs::remove(chains / "layer/images/parent");
      fs::create_directory_symlink(target, chains / "layer/images/parent");
      const Error e = require_error([&] { HmacTree::verify(layer.get(), KeyStore().load()); });
      CHECK(e.status() == Status::integrity);
      CHECK(contains(e.what(), "not to a sibling checkpoint's images"));
    }
  }
  SECTION("another symlink") {
    fs::create_symlink("inventory.img", chains / "layer/images/other");
    const Error e = require_error([&] { HmacTree::verify(layer.get(), KeyStore().load()); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), "refuses symlink path 'images/other'"));
  }
}
