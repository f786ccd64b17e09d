// LiveDigests: digests begun while a writer thread fills the followed folder, handed over to
// signing. What matters is that signing with them gives exactly the signature signing without
// them gives; a file changed in a way a running digest cannot follow must not be handed over.
#include "test_support.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>

#include "signature/chunked_signature.hpp"
#include "signature/live_digests.hpp"
#include "fs/unique_fd.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

constexpr std::uint64_t chunk = 64 << 10;  // small chunks keep the files, and the test, small
constexpr std::size_t piece = 40 << 10;    // the writer's writes: not aligned to chunks

HmacKey test_key() {
  std::vector<unsigned char> bytes(32);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 13 + 5);
  return HmacKey::from_bytes(bytes);
}

UniqueFd open_path(const fs::path& path, int flags, mode_t mode = 0) {
  UniqueFd fd(::open(path.c_str(), flags | O_CLOEXEC, mode));
  REQUIRE(fd);
  return fd;
}

std::pair<dev_t, ino_t> file_id(const fs::path& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return {st.st_dev, st.st_ino};
}

// A checkpoint folder being dumped: its images/ folder is the one followed, as in a dump.
struct Dump {
  TempDir tmp;
  fs::path root = tmp / "checkpoint", images = root / "images";
  UniqueFd root_fd, images_fd;
  Dump() {
    fs::create_directories(images);
    write_file(root / "metadata.json", "{\"id\":\"live\"}");
    root_fd = open_path(root, O_RDONLY | O_DIRECTORY);
    images_fd = open_path(images, O_RDONLY | O_DIRECTORY);
  }
};

// Sees the follower read files in a folder (inotify IN_ACCESS): proof that hashing began while
// the file was still being written, without timing guesses.
class ReadWatch {
 public:
  explicit ReadWatch(const fs::path& dir) : fd_(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) {
    REQUIRE(fd_);
    REQUIRE(::inotify_add_watch(fd_.get(), dir.c_str(), IN_ACCESS) >= 0);
  }
  // Waits for a read of `name` after the last wait; false after 10 s without one.
  bool wait_for_read(std::string_view name) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      alignas(inotify_event) char buffer[4096];
      const ssize_t n = ::read(fd_.get(), buffer, sizeof buffer);
      for (const char* p = buffer; n > 0 && p < buffer + n;) {
        const auto* event = reinterpret_cast<const inotify_event*>(p);
        p += sizeof(inotify_event) + event->len;
        if (event->len > 0 && name == event->name) return true;
      }
      pollfd pfd{fd_.get(), POLLIN, 0};
      ::poll(&pfd, 1, 100);
    }
    return false;
  }

 private:
  UniqueFd fd_;
};

// Writes files into the followed folder on its own thread, as CRIU does, in pieces, waiting
// after every `wait_every` bytes (at least a chunk) until the follower has read from the file.
// Catch2's assertions are not for other threads: a failure is recorded and checked by join().
class Writer {
 public:
  explicit Writer(const fs::path& dir, std::size_t wait_every = 1 << 20)
      : dir_(dir), reads_(dir), wait_every_(wait_every) {}

  // The steps, run in order on the writer thread once start() is called.
  void create_and_write(const std::string& name, const std::string& data, bool wait_for_reads = true) {
    steps_.push_back([this, name, data, wait_for_reads] {
      const int fd = ::open((dir_ / name).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (fd < 0) return fail("cannot create " + name);
      write_in_pieces(fd, name, data, wait_for_reads);
      if (::close(fd) != 0) fail("cannot close " + name);
    });
  }
  void then(std::function<void()> step) { steps_.push_back(std::move(step)); }
  void start() {
    thread_ = std::thread([this] {
      for (auto& step : steps_) step();
    });
  }
  void join() {
    thread_.join();
    INFO("writer: " << failure_);
    REQUIRE(failure_.empty());
  }

  // Writes data through fd from the start in pieces; with wait_for_reads, waits for the follower
  // to read after every wait_every_ bytes.
  void write_in_pieces(int fd, const std::string& name, std::string_view data, bool wait_for_reads) {
    std::size_t since_wait = 0;
    while (!data.empty()) {
      const ssize_t n = ::write(fd, data.data(), std::min(piece, data.size()));
      if (n <= 0) return fail("cannot write " + name);
      data.remove_prefix(static_cast<std::size_t>(n));
      since_wait += static_cast<std::size_t>(n);
      if (wait_for_reads && since_wait >= wait_every_) {
        since_wait = 0;
        if (!reads_.wait_for_read(name)) return fail("the follower never read " + name);
      }
    }
  }

 private:
  void fail(const std::string& what) {
    if (failure_.empty()) failure_ = what;
  }

  fs::path dir_;
  ReadWatch reads_;
  std::size_t wait_every_;
  std::vector<std::function<void()>> steps_;
  std::thread thread_;
  std::string failure_;
};

// Follows dump.images while the writer runs its steps; returns the digests handed over.
StartedDigests follow_while_writing(const Dump& dump, Writer& writer, std::uint64_t chunk_size = chunk,
                                    TwinChunks* twins = nullptr) {
  LiveDigests live(dump.images_fd.get(), chunk_size, twins);
  writer.start();
  writer.join();
  return live.stop();
}

// The chunked MAC of the dump at 64 KiB chunks, with the handed-over digests or (started null)
// from scratch.
HmacSha256::Mac tree_mac(const Dump& dump, StartedDigests* started) {
  return chunked_tree_mac(dump.root_fd.get(), test_key(), chunk, {}, started);
}

// The file's digest must not be handed over.
void require_not_handed_over(const StartedDigests& started, const std::pair<dev_t, ino_t>& id) {
  CHECK(started.find(id) == started.end());
}

// A digest begun over a file's current content, as a wrong handover would carry it.
ChunkedFileDigest digest_begun_over(const fs::path& file) {
  const UniqueFd fd = open_path(file, O_RDONLY);
  ChunkedFileDigest digest(chunk);
  digest.advance(fd.get(), fs::file_size(file), 1, "begun");
  REQUIRE(digest.hashed() > 0);
  return digest;
}

}  // namespace

TEST_CASE("a digest handed over and finished equals a fresh digest of the written file", "[live_digests]") {
  Dump dump;
  const std::string data = bytes_of_size((5 << 20) + 12345);  // several MiB, a partial last chunk
  Writer writer(dump.images);
  writer.create_and_write("pages-1.img", data);
  StartedDigests started = follow_while_writing(dump, writer);

  const fs::path file = dump.images / "pages-1.img";
  const auto it = started.find(file_id(file));
  REQUIRE(it != started.end());
  ChunkedFileDigest& handed_over = it->second;
  INFO("hashed while written: " << handed_over.hashed());
  CHECK(handed_over.hashed() > 0);  // the writer waited for reads, so hashing began while it wrote
  CHECK(handed_over.hashed() % chunk == 0);
  CHECK(handed_over.hashed() <= data.size());

  const UniqueFd fd = open_path(file, O_RDONLY);
  ChunkedFileDigest fresh(chunk);
  const Sha256::Digest expected = fresh.finish(fd.get(), data.size(), 1, "pages-1.img");
  CHECK(handed_over.finish(fd.get(), data.size(), hash_threads(), "pages-1.img") == expected);
}

TEST_CASE("signing with handed-over digests gives the signature signing without them gives", "[live_digests]") {
  SECTION("64 KiB chunks, several files one after another, through chunked_tree_mac") {
    Dump dump;
    write_file(dump.images / "before.img", bytes_of_size(3 * chunk));  // there before following began
    Writer writer(dump.images);
    writer.create_and_write("core-1.img", bytes_of_size(1000, 1));  // less than a chunk
    writer.create_and_write("pages-1.img", bytes_of_size(3 << 20, 2));
    writer.create_and_write("pages-2.img", bytes_of_size((2 << 20) + 1, 3));
    writer.create_and_write("exact.img", bytes_of_size(20 * chunk, 4));
    fs::create_directory(dump.images / "sub");
    StartedDigests started = follow_while_writing(dump, writer);

    require_not_handed_over(started, file_id(dump.images / "before.img"));
    for (const char* name : {"pages-1.img", "pages-2.img"}) {
      INFO(name);
      const auto it = started.find(file_id(dump.images / name));
      REQUIRE(it != started.end());
      CHECK(it->second.hashed() > 0);
    }
    const HmacSha256::Mac from_scratch = tree_mac(dump, nullptr);
    CHECK(tree_mac(dump, &started) == from_scratch);
  }

  SECTION("the default 4 MiB chunks, through sign_chunked, and the signature verifies") {
    Dump dump;
    Writer writer(dump.images, ChunkedSignature::default_chunk_size);
    writer.create_and_write("pages-1.img", bytes_of_size((10 << 20) + 3, 5));
    StartedDigests started = follow_while_writing(dump, writer, ChunkedSignature::default_chunk_size);
    const auto it = started.find(file_id(dump.images / "pages-1.img"));
    REQUIRE(it != started.end());
    CHECK(it->second.hashed() > 0);

    sign_chunked(dump.root_fd.get(), test_key(), {}, &started);
    const std::string with_started = read_file(dump.root / HmacTree::signature_file);
    sign_chunked(dump.root_fd.get(), test_key(), {});
    CHECK(read_file(dump.root / HmacTree::signature_file) == with_started);
    CHECK_NOTHROW(HmacTree::verify(dump.root, test_key()));
  }
}

TEST_CASE("a wrong handover gives a wrong MAC: the comparison above can fail", "[live_digests]") {
  // The control for the cases below: a digest begun over content that was then rewritten in the
  // same inode, handed over by hand, changes the MAC.
  Dump dump;
  const fs::path file = dump.images / "pages-1.img";
  write_file(file, bytes_of_size(1 << 20, 1));
  ChunkedFileDigest stale = digest_begun_over(file);
  write_file(file, bytes_of_size(1 << 20, 2));  // same inode, same size, other bytes
  StartedDigests wrong;
  wrong.emplace(file_id(file), std::move(stale));
  CHECK(tree_mac(dump, &wrong) != tree_mac(dump, nullptr));
}

TEST_CASE("a file changed in a way a running digest cannot follow means nothing is handed over", "[live_digests]") {
  Dump dump;
  const fs::path file = dump.images / "pages-1.img";
  const std::string first = bytes_of_size(2 << 20, 1);
  Writer writer(dump.images);
  writer.create_and_write("pages-1.img", first);  // waits for the follower to read it
  std::pair<dev_t, ino_t> id{};  // the file whose digest began, recorded on the writer thread
  writer.then([&] {
    struct stat st {};
    ::stat(file.c_str(), &st);
    id = {st.st_dev, st.st_ino};
  });
  // Nothing is handed over, for any file, once one was written other than front to back. Only a
  // shortening the follower did not see before it stopped is handed over, begun past the file's
  // end, where signing must not take it.
  bool shortened = false;

  SECTION("rewritten through a second open with O_TRUNC, other bytes of the same size") {
    writer.create_and_write("pages-1.img", bytes_of_size(first.size(), 2), false);
  }
  SECTION("rewritten through a second open with O_TRUNC, longer") {
    writer.create_and_write("pages-1.img", bytes_of_size(first.size() + 3 * chunk, 2), false);
  }
  SECTION("renamed") {
    writer.then([&] { fs::rename(file, dump.images / "pages-2.img"); });
  }
  SECTION("truncated shorter than what was hashed") {
    writer.then([&] { fs::resize_file(file, 1000); });
    shortened = true;
  }
  SECTION("renamed over by another file") {
    writer.create_and_write("other.img", bytes_of_size(first.size(), 3));
    writer.then([&] { fs::rename(dump.images / "other.img", file); });
  }
  SECTION("deleted") {
    writer.then([&] { fs::remove(file); });
  }
  SECTION("deleted and written again under its name") {
    writer.then([&] { fs::remove(file); });
    writer.create_and_write("pages-1.img", bytes_of_size(first.size(), 4), false);
  }
  writer.then([&] { write_file(dump.images / "pages-9.img", bytes_of_size(3 * chunk + 1, 9)); });
  StartedDigests started = follow_while_writing(dump, writer);

  REQUIRE(id.second != 0);
  if (!shortened) CHECK(started.empty());
  if (const auto it = started.find(id); shortened && it != started.end())
    CHECK(it->second.hashed() > fs::file_size(file));
  const HmacSha256::Mac from_scratch = tree_mac(dump, nullptr);
  CHECK(tree_mac(dump, &started) == from_scratch);
}

TEST_CASE("a file rewritten after its chunks were remembered lends no stale digest to its twin", "[live_digests]") {
  // a's chunks are remembered as twins, then a is rewritten through a second open, and b is
  // written with a's new bytes: b must not take over a's old digests.
  Dump dump;
  Writer writer(dump.images, chunk);  // waits for the follower's read of every chunk
  writer.create_and_write("a.img", bytes_of_size(4 * chunk, 1));
  writer.then([] { std::this_thread::sleep_for(std::chrono::milliseconds(50)); });  // and its last digest
  writer.create_and_write("a.img", bytes_of_size(4 * chunk, 2), false);
  writer.create_and_write("b.img", bytes_of_size(4 * chunk, 2), false);
  TwinChunks twins;
  StartedDigests started = follow_while_writing(dump, writer, chunk, &twins);
  CHECK(started.empty());
  CHECK(chunked_tree_mac(dump.root_fd.get(), test_key(), chunk, {}, &started, &twins) == tree_mac(dump, nullptr));
}

TEST_CASE("a file that appears twice in the tree (a hard link) continues its digest once", "[live_digests]") {
  Dump dump;
  Writer writer(dump.images);
  writer.create_and_write("pages-1.img", bytes_of_size(5 * chunk + 7, 1));
  StartedDigests started = follow_while_writing(dump, writer);
  REQUIRE_FALSE(started.empty());
  fs::create_hard_link(dump.images / "pages-1.img", dump.images / "pages-2.img");
  CHECK(tree_mac(dump, &started) == tree_mac(dump, nullptr));
}

TEST_CASE("stop with nothing written hands over nothing, and LiveDigests may go without stop", "[live_digests]") {
  Dump dump;
  {
    LiveDigests live(dump.images_fd.get(), chunk);
    CHECK(live.stop().empty());
  }
  {
    LiveDigests live(dump.images_fd.get(), chunk);
    write_file(dump.images / "pages-1.img", bytes_of_size(3 * chunk));
  }  // destroyed while following: joins its thread
  CHECK(fs::file_size(dump.images / "pages-1.img") == 3 * chunk);
}

TEST_CASE("started digests of another chunk size are not taken over", "[live_digests]") {
  // Digests begun at 64 KiB cannot continue a 4 MiB signature: signing must hash the file afresh.
  Dump dump;
  Writer writer(dump.images);
  writer.create_and_write("pages-1.img", bytes_of_size(3 << 20, 1));
  StartedDigests started = follow_while_writing(dump, writer);
  sign_chunked(dump.root_fd.get(), test_key(), {}, &started);
  CHECK_NOTHROW(HmacTree::verify(dump.root, test_key()));
}
