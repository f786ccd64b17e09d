// Transfer streams (export_checkpoint / import_checkpoint): real CRIU checkpoints through files,
// pipes and socket pairs, plain and zstd; and every kind of bad stream refused, leaving nothing
// behind. Chain streams (export_chain / import_chain) likewise, below. Streams are taken apart and
// made up here from the README's "Transfer stream" and "Chain stream" alone.
#include <nucleus/checkpoint/chain.hpp>
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/metadata.hpp>
#include <nucleus/checkpoint/transfer.hpp>

#include <fcntl.h>
#include <malloc.h>
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_frameHeaderSize
#include <zstd.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "checkpoint/chain.hpp"
#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"
#include "fs/unique_fd.hpp"
#include "process_support.hpp"
#include "signature/hex.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

constexpr std::uint64_t chunk = 4 << 20;  // what signing writes
constexpr std::size_t stream_header = 16;

std::string u64le(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

std::string frame(char type, const std::string& payload) { return type + u64le(payload.size()) + payload; }

constexpr std::string_view checkpoint_magic{"\x89NCXFER\n", 8}, chain_magic{"\x89NCXCHN\n", 8};

std::string plain_header(std::string_view magic = checkpoint_magic) {
  std::string h(magic);
  h += std::string("\x01\0\0\0\0\0\0\0", 8);  // version 1, no compression
  return h;
}

struct Frame {
  char type;
  std::string payload;
};

// The frames of a plain stream, after its header.
std::vector<Frame> frames_of(const std::string& stream, std::string_view magic = checkpoint_magic) {
  REQUIRE(stream.substr(0, 8) == magic);
  REQUIRE(stream[12] == 0);  // not compressed
  std::vector<Frame> frames;
  for (std::size_t at = stream_header; at < stream.size();) {
    std::uint64_t length = 0;
    for (int i = 0; i < 8; ++i) length |= std::uint64_t{static_cast<unsigned char>(stream[at + 1 + i])} << (8 * i);
    frames.push_back({stream[at], stream.substr(at + 9, length)});
    at += 9 + length;
  }
  return frames;
}

std::string stream_of(const std::vector<Frame>& frames, std::string_view magic = checkpoint_magic) {
  std::string s = plain_header(magic);
  for (const Frame& f : frames) s += frame(f.type, f.payload);
  return s;
}

// A descriptor reading `bytes` from the start (an unlinked file).
UniqueFd fd_of(const TempDir& tmp, const std::string& bytes) {
  const fs::path path = tmp / "stream.in";
  write_file(path, bytes);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(fd);
  fs::remove(path);
  return fd;
}

struct Fixture {
  TempDir tmp;
  KeyFileEnv key_env{secure_key_dir(tmp) / "checkpoint.key"};
  fs::path source = tmp / "source";
  fs::path received = tmp / "received" / "c1";

  // A signed folder shaped like a checkpoint: pages of several chunks, small files, an empty one,
  // a nested folder.
  void make_source(const fs::path& dir, unsigned salt = 0, SignatureFormat format = SignatureFormat::manifest) {
    fs::create_directories(dir / "images" / "sub");
    write_file(dir / "images" / "pages-1.img", bytes_of_size(5 * chunk + 12345, salt));
    write_file(dir / "images" / "core-1.img", bytes_of_size(3000, salt + 1));
    write_file(dir / "images" / "sub" / "empty.img", "");
    write_file(dir / "metadata.json", "{\"container_id\":\"c1\"}");
    HmacTree::sign_as(dir, KeyStore().load_or_create(), format);
  }

  std::string exported(const fs::path& dir, Compression compression = Compression::none) {
    const fs::path path = tmp / "stream.out";
    {
      const UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
      REQUIRE(fd);
      export_checkpoint(dir, fd.get(), {compression});
    }
    std::string bytes = read_file(path);
    fs::remove(path);
    return bytes;
  }

  // Imports `bytes`; the error, and how far into them the importer read.
  std::pair<std::optional<Error>, off_t> import_bytes(const std::string& bytes) {
    const UniqueFd fd = fd_of(tmp, bytes);
    auto error = error_of([&] { import_checkpoint(fd.get(), received); });
    return {error, ::lseek(fd.get(), 0, SEEK_CUR)};
  }

  // Refused with Status::integrity and a message holding `why`, and nothing left beside the target.
  Error refused(const std::string& bytes, std::string_view why) {
    const auto [error, read] = import_bytes(bytes);
    REQUIRE(error.has_value());
    INFO(error->what());
    CHECK(error->status() == Status::integrity);
    CHECK(contains(error->what(), why));
    nothing_left();
    return *error;
  }

  void nothing_left() const {
    CHECK_FALSE(fs::exists(received));
    if (fs::exists(received.parent_path())) CHECK(fs::is_empty(received.parent_path()));
  }
};

// Exports on a thread into one end of `fds`, imports from the other on this one.
void through(int fds[2], const fs::path& from, const fs::path& to, Compression compression) {
  UniqueFd reader(fds[0]), writer(fds[1]);
  std::optional<Error> export_error;
  std::thread sender([&] {
    export_error = error_of([&] { export_checkpoint(from, writer.get(), {compression}); });
    writer.reset();
  });
  const auto import_error = error_of([&] { import_checkpoint(reader.get(), to); });
  reader.reset();  // a sender still writing gets EPIPE, not a hang
  sender.join();
  if (export_error) FAIL("export: " << export_error->what());
  if (import_error) FAIL("import: " << import_error->what());
}

// Pre-dump chains as one stream (export_chain / import_chain): chains of real dumps linked and signed
// as a dump on a parent makes them (as chain_test builds them where the kernel cannot pre-dump),
// moved to a fresh store and restored there, or only the layers a receiver lacks; and every kind of
// bad chain stream refused, leaving the store as it was. Made up from the README's "Chain stream".
// One entry of the chain table.
struct Entry {
  bool sent;
  std::string sha256;  // hex
  std::string name;
};

std::string table_of(const std::vector<Entry>& entries) {
  std::string table;
  for (const Entry& e : entries) {
    const auto sha = array_from_lower_hex<32>(e.sha256);
    REQUIRE(sha.has_value());
    table += static_cast<char>(e.sent ? 1 : 0);
    table.append(reinterpret_cast<const char*>(sha->data()), sha->size());
    table += static_cast<char>(e.name.size());
    table += e.name;
  }
  return table;
}

std::vector<Entry> entries_of(const std::string& table) {
  std::vector<Entry> entries;
  for (std::size_t at = 0; at < table.size();) {
    const auto* sha = reinterpret_cast<const unsigned char*>(table.data() + at + 1);
    const std::size_t name_size = static_cast<unsigned char>(table[at + 33]);
    entries.push_back({table[at] == 1, to_lower_hex({sha, 32}), table.substr(at + 34, name_size)});
    at += 34 + name_size;
  }
  return entries;
}

// A plain chain stream taken apart: its table, and each layer sent as its frames ('S' to 'E').
struct ChainStream {
  std::vector<Entry> table;
  std::vector<std::vector<Frame>> layers;

  explicit ChainStream(const std::string& bytes) {
    const std::vector<Frame> frames = frames_of(bytes, chain_magic);
    REQUIRE(frames.size() >= 2);
    REQUIRE(frames.front().type == 'H');
    REQUIRE(frames.back().type == 'E');
    table = entries_of(frames.front().payload);
    for (std::size_t i = 1; i + 1 < frames.size(); ++i) {
      if (frames[i].type == 'S') layers.emplace_back();
      layers.back().push_back(frames[i]);
    }
  }

  std::string bytes() const {
    std::vector<Frame> frames{{'H', table_of(table)}};
    for (const auto& layer : layers) frames.insert(frames.end(), layer.begin(), layer.end());
    frames.push_back({'E', ""});
    return stream_of(frames, chain_magic);
  }
};

// The names in a folder, and for each file its bytes: what "left as it was" compares.
std::map<std::string, std::string> contents_of(const fs::path& dir) {
  std::map<std::string, std::string> contents;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string rel = fs::relative(e.path(), dir).native();
    contents[rel] = e.is_symlink() ? "-> " + fs::read_symlink(e.path()).native()
                    : e.is_regular_file() ? read_file(e.path())
                                          : "folder";
  }
  return contents;
}

struct ChainFixture {
  TempDir tmp;
  KeyFileEnv key_env{secure_key_dir(tmp) / "checkpoint.key"};
  std::unique_ptr<CriuRuntime> rt = real_criu();
  fs::path chains = tmp / "chains";  // the sender's layers
  fs::path store = tmp / "store";    // the receiver's
  CounterTree tree{tmp / "counter"};
  long at_final = 0;

  // p0 (a pre-dump), p1 (a pre-dump on p0: a copy of p0, linked), final (dumped last, on p1).
  ChainFixture() {
    make_private_dir(chains);
    rt->checkpoint(container("chain", tree.pid()), chains / "p0", running());
    link_layer(chains, "p0", "", true);
    fs::copy(chains / "p0", chains / "p1", fs::copy_options::recursive);
    link_layer(chains, "p1", "p0", true);
    rt->checkpoint(container("chain", tree.pid()), chains / "final", false);
    REQUIRE(wait_until([&] { return ended(tree.pid()); }));
    at_final = tree.count("parent");
    link_layer(chains, "final", "p1", false);
  }

  static void make_private_dir(const fs::path& dir) {
    fs::create_directory(dir);
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace);
  }
  static CriuOptions running() {
    CriuOptions o;
    o.leave_running = true;
    return o;
  }
  // Makes the checkpoint in[layer] a layer on in[parent] as a dump on a parent writes one.
  static void link_layer(const fs::path& in, const std::string& layer, const std::string& parent, bool predump) {
    const UniqueFd dir = open_dir(in / layer, "layer");
    CheckpointMetadata m = CheckpointMetadata::load(dir.get());
    m.chain = ChainRecord{predump, parent, parent.empty() ? "" : sha_of(in / parent)};
    m.save(dir.get());
    fs::remove(in / layer / "images/parent");
    if (!parent.empty()) fs::create_directory_symlink(parent_link_target(parent), in / layer / "images/parent");
    HmacTree::sign_as(dir.get(), KeyStore().load(), SignatureFormat::manifest);
  }
  static std::string sha_of(const fs::path& layer) { return signature_sha256(open_dir(layer, "layer").get()); }

  // Another chain beside the first, its layers of the same names: p0 holds one more file, so every
  // signature differs.
  fs::path other_chain() const {
    const fs::path other = tmp / "other";
    make_private_dir(other);
    for (const char* layer : {"p0", "p1", "final"})
      fs::copy(chains / layer, other / layer, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
    write_file(other / "p0/images/extra.img", "another chain");
    link_layer(other, "p0", "", true);
    link_layer(other, "p1", "p0", true);
    link_layer(other, "final", "p1", false);
    return other;
  }

  std::string exported(const fs::path& layer, const ChainTransferOptions& options = {}) const {
    const fs::path path = tmp / "stream.out";
    {
      const UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
      REQUIRE(fd);
      export_chain(layer, fd.get(), options);
    }
    std::string bytes = read_file(path);
    fs::remove(path);
    return bytes;
  }

  std::optional<Error> import_bytes(const std::string& bytes) const {
    const UniqueFd fd = fd_of(tmp, bytes);
    fs::path newest;
    std::optional<Error> error = error_of([&] { newest = import_chain(fd.get(), store); });
    if (!error) CHECK(newest == store / "final");
    if (error) UNSCOPED_INFO("the import: " << error->what());
    return error;
  }

  // Refused with `status` and a message holding `why`, the store left exactly as it was.
  void refused(const std::string& bytes, Status status, std::string_view why) const {
    const auto before = fs::exists(store) ? contents_of(store) : std::map<std::string, std::string>{};
    const std::optional<Error> error = import_bytes(bytes);
    REQUIRE(error.has_value());
    INFO(error->what());
    CHECK(error->status() == status);
    CHECK(contains(error->what(), why));
    CHECK((fs::exists(store) ? contents_of(store) : std::map<std::string, std::string>{}) == before);
  }
};

}  // namespace

TEST_CASE_METHOD(Fixture, "a real checkpoint travels through a file, a pipe and a socket pair, then verifies and restores",
                 "[e2e][transfer]") {
  const auto runtime = real_criu();
  CounterTree tree(tmp / "counter", 16);  // pages of several chunks
  const fs::path checkpoint = tmp / "checkpoint";
  runtime->checkpoint(container("xfer", tree.pid()), checkpoint, false);
  REQUIRE(wait_until([&] { return ended(tree.pid()); }));
  const long at_dump = tree.count("parent");

  for (const Compression compression : {Compression::none, Compression::zstd}) {
    for (const std::string how : {"file", "pipe", "socketpair"}) {
      INFO(how << (compression == Compression::zstd ? " zstd" : " plain"));
      const fs::path copy = tmp / "received" / fmt::format("{}-{}", how, static_cast<int>(compression));
      if (how == "file") {
        received = copy;
        const std::string bytes = exported(checkpoint, compression);
        const auto [error, read] = import_bytes(bytes);
        if (error) FAIL(error->what());
        CHECK(read == static_cast<off_t>(bytes.size()));
      } else {
        int fds[2];
        REQUIRE((how == "pipe" ? ::pipe2(fds, O_CLOEXEC) : ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds)) == 0);
        through(fds, checkpoint, copy, compression);
      }
      CHECK_NOTHROW(HmacTree::verify(copy, KeyStore().load()));
      CHECK((fs::status(copy).permissions() & fs::perms::all) == fs::perms::owner_all);
      CHECK(runtime->restore(copy) == tree.pid());
      const long restored_at = tree.count("parent");
      CHECK(restored_at >= at_dump);
      CHECK(wait_until([&] { return tree.count("parent") > restored_at + 3; }));
      CounterTree::stop(tree.pid());
    }
  }
}

TEST_CASE_METHOD(Fixture, "a stream round-trips byte for byte, plain and compressed", "[transfer]") {
  make_source(source);
  const Compression compression = GENERATE(Compression::none, Compression::zstd);
  const std::string bytes = exported(source, compression);
  const auto [error, read] = import_bytes(bytes);
  if (error) FAIL(error->what());
  for (const char* rel : {"images/pages-1.img", "images/core-1.img", "images/sub/empty.img", "metadata.json",
                          "checkpoint.hmac"})
    CHECK(read_file(received / rel) == read_file(source / rel));
  CHECK_NOTHROW(HmacTree::verify(received, KeyStore().load()));
  if (compression == Compression::zstd) CHECK(bytes.size() < fs::file_size(source / "images" / "pages-1.img") / 2);
  // The target is taken now: a second import is refused before it reads the stream.
  const UniqueFd again = fd_of(tmp, bytes);
  CHECK(require_error([&] { import_checkpoint(again.get(), received); }).status() == Status::invalid);
  CHECK(::lseek(again.get(), 0, SEEK_CUR) == 0);
}

TEST_CASE_METHOD(Fixture, "a byte changed in a page chunk is refused at that chunk, before the rest is read",
                 "[transfer][security]") {
  make_source(source);
  const std::string good = exported(source);
  std::vector<Frame> frames = frames_of(good);
  // Chunk frames follow the listing in walk order: core-1.img's one chunk, then pages-1.img's.
  std::size_t first_page_chunk = 0;
  while (frames[first_page_chunk].type != 'C') ++first_page_chunk;
  ++first_page_chunk;
  frames[first_page_chunk + 1].payload[777] ^= 0x01;  // pages-1.img's chunk 1
  const std::string bad = stream_of(frames);
  const auto [error, read] = import_bytes(bad);
  REQUIRE(error.has_value());
  CHECK(error->status() == Status::integrity);
  CHECK(contains(error->what(), fmt::format("'images/pages-1.img' differs from what was signed in bytes {}–{}", chunk,
                                            2 * chunk - 1)));
  // The importer read up to that chunk and a bounded read-ahead, not the three chunks after it.
  std::size_t chunk_end = stream_header;
  for (std::size_t i = 0; i <= first_page_chunk + 1; ++i) chunk_end += 9 + frames[i].payload.size();
  CHECK(static_cast<std::size_t>(read) <= chunk_end + (256 << 10));
  CHECK(static_cast<std::size_t>(read) + 2 * chunk < bad.size());
  nothing_left();
}

TEST_CASE_METHOD(Fixture, "any byte changed in a plain stream is refused; in a compressed one, any that changes it",
                 "[transfer][security]") {
  make_source(source);
  const Compression compression = GENERATE(Compression::none, Compression::zstd);
  const std::string good = exported(source, compression);
  // zstd's encoding has bits that change nothing decoded (an unused flag, a window larger than
  // needed, slack in its tables): a flip there decodes to the same stream, and so imports exactly
  // the checkpoint signed. Every flip that changes the stream is refused.
  std::size_t flips = 0, imported = 0;
  for (std::size_t at = 0; at < good.size(); at += at < 48 ? 1 : good.size() / 40) {
    for (const std::size_t where : {at, good.size() - 1 - at % 16}) {
      INFO("byte " << where << " of " << good.size());
      std::string bad = good;
      bad[where] ^= 0x01;
      ++flips;
      if (const auto [error, read] = import_bytes(bad); error) {
        CHECK(error->status() == Status::integrity);
      } else {
        CHECK(compression == Compression::zstd);
        ++imported;
        for (const char* rel : {"images/pages-1.img", "images/core-1.img", "metadata.json", "checkpoint.hmac"})
          CHECK(read_file(received / rel) == read_file(source / rel));
        fs::remove_all(received);
      }
      nothing_left();
    }
  }
  CHECK(imported * 10 < flips);
}

TEST_CASE_METHOD(Fixture, "a truncated stream is refused wherever it was cut", "[transfer][security]") {
  make_source(source);
  const Compression compression = GENERATE(Compression::none, Compression::zstd);
  const std::string bytes = exported(source, compression);
  // Cut after `keep` bytes, or (SIZE_MAX) just before the last byte.
  const std::size_t keep = GENERATE(std::size_t{0}, 5, 16, 40, 600, 4000, 3 * chunk + 100, SIZE_MAX);
  const std::size_t kept = std::min(keep, bytes.size() - 1);
  INFO(kept << " of " << bytes.size() << " bytes");
  refused(bytes.substr(0, kept), kept == 0 ? "empty" : "ends early");
}

TEST_CASE_METHOD(Fixture, "bytes after the end of a stream are refused", "[transfer][security]") {
  make_source(source);
  const Compression compression = GENERATE(Compression::none, Compression::zstd);
  const std::string bytes = exported(source, compression);
  SECTION("one byte") { refused(bytes + "x", "goes on after its end frame"); }
  SECTION("a second stream") { refused(bytes + bytes, "goes on after its end frame"); }
}

TEST_CASE_METHOD(Fixture, "a stream mixed from two checkpoints or reordered is refused", "[transfer][security]") {
  make_source(source);
  const fs::path other = tmp / "other";
  make_source(other, 7);
  const std::vector<Frame> mine = frames_of(exported(source)), theirs = frames_of(exported(other));
  REQUIRE(mine.size() == theirs.size());  // same shape, other bytes
  SECTION("the signature of another checkpoint of the same shape: refused at the first chunk") {
    std::vector<Frame> mixed = mine;
    mixed[0] = theirs[0];  // it authenticates the same listing, with the other's chunk digests
    refused(stream_of(mixed), "'images/core-1.img' differs from what was signed in bytes 0–2999");
  }
  SECTION("the signature of another checkpoint of another shape: refused before any file byte") {
    const fs::path bigger = tmp / "bigger";
    make_source(bigger);
    write_file(bigger / "extra", "x");
    HmacTree::sign_as(bigger, KeyStore().load(), SignatureFormat::manifest);
    std::vector<Frame> mixed = mine;
    mixed[0] = frames_of(exported(bigger))[0];
    refused(stream_of(mixed), "does not match its signature");
  }
  SECTION("the files of another checkpoint") {
    std::vector<Frame> mixed = mine;
    for (std::size_t i = 0; i < mixed.size(); ++i)
      if (mixed[i].type == 'C') mixed[i] = theirs[i];
    refused(stream_of(mixed), "differs from what was signed");
  }
  SECTION("two chunks swapped") {
    std::vector<Frame> swapped = mine;
    std::size_t pages = 0;  // pages-1.img's first chunk: after core-1.img's one
    while (swapped[pages].type != 'C') ++pages;
    std::swap(swapped[pages + 1], swapped[pages + 2]);
    refused(stream_of(swapped), "differs from what was signed");
  }
  SECTION("two listing entries swapped") {
    std::vector<Frame> swapped = mine;
    std::swap(swapped[1], swapped[2]);  // images/ and its first entry
    refused(stream_of(swapped), "out of walk order");
  }
  SECTION("signed with another key") {
    const std::string bytes = stream_of(mine);
    const KeyFileEnv other_key(tmp / "keys" / "other.key");
    (void)KeyStore().load_or_create();
    refused(bytes, "does not match its signature");
  }
}

TEST_CASE_METHOD(Fixture, "a hostile listing is refused before anything is written", "[transfer][security]") {
  make_source(source);
  const std::vector<Frame> genuine = frames_of(exported(source));
  const auto with_listing = [&](const std::vector<Frame>& listing) {
    std::vector<Frame> frames{genuine[0]};
    frames.insert(frames.end(), listing.begin(), listing.end());
    frames.push_back({'L', ""});
    frames.push_back({'E', ""});
    return stream_of(frames);
  };
  const auto file = [](const std::string& path, std::uint64_t size) { return Frame{'F', u64le(size) + path}; };
  SECTION("..") { refused(with_listing({{'D', ".."}}), "'..', which is not a plain relative path"); }
  SECTION("a name below ..") { refused(with_listing({{'D', "images"}, file("images/../../x", 1)}), "not a plain relative path"); }
  SECTION("absolute") { refused(with_listing({file("/etc/passwd", 1)}), "'/etc/passwd', which is not a plain relative path"); }
  SECTION("empty component") { refused(with_listing({{'D', "a"}, file("a//b", 1)}), "not a plain relative path"); }
  SECTION("NUL") { refused(with_listing({file(std::string("a\0b", 3), 1)}), "not a plain relative path"); }
  SECTION("a file in a folder not listed") { refused(with_listing({file("nowhere/x", 1)}), "out of walk order"); }
  SECTION("the same name twice") { refused(with_listing({file("a", 1), file("a", 1)}), "out of walk order"); }
  SECTION("the signature among the files") { refused(with_listing({file("checkpoint.hmac", 1)}), "among the signed files"); }
  SECTION("a huge size") { refused(with_listing({file("big", std::uint64_t{1} << 62)}), "adding up to more than"); }
  SECTION("a path too long for a frame") {
    refused(with_listing({{'D', std::string(HmacTree::max_path_length + 1, 'a')}}), "a path of 1 to 4096 bytes");
  }
  SECTION("too deep") {
    std::vector<Frame> deep;
    std::string path;
    for (int level = 0; level <= HmacTree::max_depth + 1; ++level) deep.push_back({'D', path += (level ? "/d" : "d")});
    refused(with_listing(deep), "nested deeper than 64 levels");
  }
  SECTION("too many entries") {
    std::vector<Frame> many;
    many.reserve(HmacTree::max_entries + 1);
    for (std::size_t i = 0; i <= HmacTree::max_entries; ++i) many.push_back(file(fmt::format("f{:07}", i), 0));
    refused(with_listing(many), "more than 1000000 entries");
  }
  SECTION("a signature frame larger than a signature may be") {
    refused(plain_header() + 'S' + u64le(std::uint64_t{1} << 40), "more than the");
  }
  SECTION("a manifest of more lines than a tree has files: refused as it is parsed, before any key") {
    // A byte a line: unbounded, 4 KiB of zstd made 3 GiB of empty lines in memory.
    const std::string text = genuine[0].payload + std::string(HmacTree::max_entries, '\n');
    refused(plain_header() + frame('S', text), "the manifest has more than 1000000 lines");
  }
  SECTION("paths adding up to more than an importer holds before it authenticates them") {
    // Every entry a 4095-byte path below 15 folders of 255-byte names: within the walk's limits,
    // a million of them made 4 GiB in memory from a few MiB of zstd.
    std::vector<Frame> listing;
    std::string prefix;
    for (int level = 0; level < 15; ++level)
      listing.push_back({'D', prefix += fmt::format("{}{:02}{}", level ? "/" : "", level, std::string(253, 'd'))});
    prefix += '/';
    for (std::size_t i = 0; i <= (std::size_t{128} << 20) / 4095; ++i)
      listing.push_back({'D', prefix + fmt::format("{:010}", i) + std::string(245, 'f')});
    REQUIRE(listing.back().payload.size() == 4095);
    refused(with_listing(listing), "lists paths adding up to more than 134217728 bytes");
  }
  SECTION("a chunk frame of another length than the listed chunk") {
    std::vector<Frame> frames = genuine;
    for (Frame& f : frames)
      if (f.type == 'C') {
        f.payload += "x";
        break;
      }
    refused(stream_of(frames), "corrupt or out of order");
  }
}

TEST_CASE_METHOD(Fixture, "an Ed25519-signed checkpoint imports where its key is trusted, and only there",
                 "[transfer][security]") {
  make_source(source);
  HmacTree::sign_as(source, KeyStore().load_or_create_ed25519(), SignatureFormat::manifest);  // trusted here
  const std::string bytes = exported(source);
  SECTION("trusted") {
    const auto [error, read] = import_bytes(bytes);
    if (error) FAIL(error->what());
    CHECK_NOTHROW(HmacTree::verify(received, KeyStore()));
  }
  SECTION("on a host that does not trust it: refused before any file") {
    const fs::path empty_trust = tmp / "trust-none";
    fs::create_directory(empty_trust);
    fs::permissions(empty_trust, fs::perms::owner_all, fs::perm_options::replace);
    const ScopedEnv trust("NUCLEUS_CHECKPOINT_TRUSTED_KEYS", empty_trust.c_str());
    const auto [error, read] = import_bytes(bytes);
    REQUIRE(error.has_value());
    CHECK(error->status() == Status::integrity);
    CHECK(static_cast<std::size_t>(read) < bytes.size() / 2);
    nothing_left();
  }
}

TEST_CASE_METHOD(Fixture, "only a folder signed in format 3 is exported or imported", "[transfer]") {
  const SignatureFormat format = GENERATE(SignatureFormat::seed, SignatureFormat::chunked);
  make_source(source, 0, format);
  const UniqueFd out(::open((tmp / "out").c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  const Error e = require_error([&] { export_checkpoint(source, out.get()); });
  CHECK(e.status() == Status::invalid);
  CHECK(contains(e.what(), "sign it in format 3: nucleus-checkpoint sign --format manifest --dir"));
  CHECK(fs::file_size(tmp / "out") == 0);
  // Nor is such a signature accepted from a stream made by hand.
  const std::string text = read_file(source / "checkpoint.hmac");
  refused(plain_header() + frame('S', text) + frame('L', "") + frame('E', ""), "sign it in format 3");
}

TEST_CASE_METHOD(Fixture, "a pre-dump layer with a parent link is not exported", "[transfer]") {
  make_source(source);
  fs::create_directory_symlink("../../parent/images", source / "images" / "parent");
  const UniqueFd out(::open((tmp / "out").c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  const Error e = require_error([&] { export_checkpoint(source, out.get()); });
  CHECK(e.status() == Status::invalid);
  CHECK(contains(e.what(), "pre-dump layer"));
}

TEST_CASE_METHOD(Fixture, "a reader that goes away fails the export with EPIPE, not SIGPIPE", "[transfer]") {
  make_source(source);
  int fds[2];
  const bool socket = GENERATE(false, true);
  REQUIRE((socket ? ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) : ::pipe2(fds, O_CLOEXEC)) == 0);
  ::close(fds[0]);
  const UniqueFd writer(fds[1]);
  struct sigaction before {};
  ::sigaction(SIGPIPE, nullptr, &before);
  REQUIRE(before.sa_handler == SIG_DFL);  // a SIGPIPE would kill this test
  const Error e = require_error([&] { export_checkpoint(source, writer.get()); });
  CHECK(e.status() == Status::io);
  CHECK(contains(e.what(), "its reader went away"));
  struct sigaction after {};
  ::sigaction(SIGPIPE, nullptr, &after);
  CHECK(after.sa_handler == SIG_DFL);
  sigset_t pending, mask;
  ::sigpending(&pending);
  CHECK(sigismember(&pending, SIGPIPE) == 0);
  ::pthread_sigmask(SIG_SETMASK, nullptr, &mask);
  CHECK(sigismember(&mask, SIGPIPE) == 0);
}

// The exporter reopens each listed file after the walk: whoever can write the folder may have put a
// FIFO there meanwhile, whose open (with no writer) would block the export forever.
TEST_CASE("a FIFO put in place of a listed file is refused without blocking", "[transfer]") {
  TempDir tmp;
  const UniqueFd dir(::open(tmp.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(::mkfifo((tmp.path() / "metadata.json").c_str(), 0600) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    try {
      open_beneath(dir.get(), "metadata.json", "checkpoint file");
    } catch (const Error& e) {
      ::_exit(e.status() == Status::integrity ? 0 : 2);
    }
    ::_exit(1);
  }
  int status = -1;
  const bool ended = wait_until([&] { return ::waitpid(child, &status, WNOHANG) == child; }, std::chrono::seconds(5));
  if (!ended) {
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
  }
  REQUIRE(ended);  // it did not block on the FIFO
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
}

namespace {

// What an import in a child process cost: how far its resident memory rose above where it stood
// (heap trimmed, peak reset) when the import began, and how the import ended.
struct ImportCost {
  std::uint64_t peak_growth = 0;
  int status = 0;  // the Error's Status, 0 if it imported
  std::string message;
};

std::uint64_t status_kib(std::string_view field) {  // a "VmRSS:   123 kB" line of /proc/self/status
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.starts_with(field)) return std::stoull(line.substr(field.size() + 1));
  return 0;
}

// Imports into `to` what `send` writes into a pipe, in a child of its own, so that the memory
// measured is the import's: the hostile stream is made as it is sent, never held.
ImportCost import_cost(const fs::path& to, const std::function<void(int fd)>& send) {
  int report[2];
  REQUIRE(::pipe2(report, O_CLOEXEC) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::signal(SIGPIPE, SIG_IGN);  // the sender of a refused stream gets EPIPE
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) ::_exit(3);
    ::malloc_trim(0);
    std::ofstream("/proc/self/clear_refs") << "5";  // VmHWM from here
    const std::uint64_t before = status_kib("VmRSS:");
    std::thread sender([&] {
      send(fds[1]);
      ::close(fds[1]);
    });
    const auto error = error_of([&] { import_checkpoint(fds[0], to); });
    ::close(fds[0]);
    sender.join();
    const std::string line = fmt::format("{} {} {}", (status_kib("VmHWM:") - before) << 10,
                                         error ? static_cast<int>(error->status()) : 0, error ? error->what() : "");
    (void)!::write(report[1], line.data(), line.size());
    ::_exit(0);
  }
  ::close(report[1]);
  std::string said;
  char buffer[4096];
  for (ssize_t n; (n = ::read(report[0], buffer, sizeof buffer)) > 0;) said.append(buffer, static_cast<std::size_t>(n));
  ::close(report[0]);
  int wait_status = -1;
  REQUIRE(::waitpid(child, &wait_status, 0) == child);
  REQUIRE((WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0));
  ImportCost cost;
  std::istringstream in(said);
  in >> cost.peak_growth >> cost.status;
  std::getline(in >> std::ws, cost.message);
  return cost;
}

// Writes all of `bytes` to fd; false once the reader went away.
bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Sends a stream with the most a signature and a listing may be (a million files, a 128-byte path
// and one chunk digest each: 65 MB of signature, 145 MB of listing), made as it is sent, which
// fails only at the listing's end, where the MAC is checked: the signature is `head` (a genuine
// signature's three lines) over a manifest of zeros.
void send_largest_listing(int fd, const std::string& head) {
  const std::size_t files = HmacTree::max_entries;
  const std::string line = std::string(64, '0') + '\n';
  std::string out = plain_header() + 'S' + u64le(head.size() + files * line.size()) + head;
  for (std::size_t i = 0; i < files; ++i) {
    out += line;
    if (out.size() >= (1 << 20) && !send_all(fd, std::exchange(out, {}))) return;
  }
  for (std::size_t i = 0; i < files; ++i) {
    out += frame('F', u64le(1) + fmt::format("f{:07}", i) + std::string(120, 'x'));
    if (out.size() >= (1 << 20) && !send_all(fd, std::exchange(out, {}))) return;
  }
  send_all(fd, out + frame('L', "") + frame('E', ""));
}

// The three lines of the signature of a folder made by make_source.
std::string signature_head(const std::string& signature) {
  return signature.substr(0, signature.find('\n', signature.find('\n', signature.find('\n') + 1) + 1) + 1);
}

}  // namespace

// The largest signature and listing arrive from anyone who can reach a receiver. Held in memory
// until the listing was authenticated, they made an importer grow by about 0.4 GB; spooled to an
// unnamed file and read back a line at a time, by a few buffers.
TEST_CASE_METHOD(Fixture, "a hostile listing as large as a listing may be costs an importer a few MiB of memory",
                 "[transfer][security]") {
  make_source(source);
  const std::string head = signature_head(frames_of(exported(source))[0].payload);
  REQUIRE(head.starts_with("nucleus-checkpoint-signature 3\n"));
  const ImportCost cost = import_cost(received, [&](int fd) { send_largest_listing(fd, head); });
  INFO(cost.message);
  WARN("the import's memory grew by " << (cost.peak_growth >> 20) << " MiB at its peak");
  CHECK(cost.status == static_cast<int>(Status::integrity));
  CHECK(contains(cost.message, "does not match its signature"));
#ifndef __SANITIZE_ADDRESS__  // AddressSanitizer keeps what was freed resident (its quarantine): no measure
  CHECK(cost.peak_growth < (std::uint64_t{16} << 20));
#endif
  nothing_left();
}

// The spool takes the disk the checkpoint was to take: where there is not enough for the signature
// and listing, the import fails saying so, and leaves nothing.
TEST_CASE_METHOD(Fixture, "a listing larger than the target's free space is refused with the disk's error",
                 "[transfer]") {
  make_source(source);
  const std::string head = signature_head(frames_of(exported(source))[0].payload);
  const fs::path small = tmp / "small";
  fs::create_directory(small);
  REQUIRE(::mount("tmpfs", small.c_str(), "tmpfs", 0, "size=4m,mode=0700") == 0);
  const std::unique_ptr<const char, void (*)(const char*)> unmount(small.c_str(),
                                                                  [](const char* at) { ::umount2(at, MNT_DETACH); });
  received = small / "c1";
  const ImportCost cost = import_cost(received, [&](int fd) { send_largest_listing(fd, head); });
  INFO(cost.message);
  CHECK(cost.status == static_cast<int>(Status::io));
  CHECK(contains(cost.message, "signature and listing wait to be authenticated: No space left on device"));
  nothing_left();
}

TEST_CASE_METHOD(ChainFixture, "a chain travels as one stream, parents first, and restores from the new store",
                 "[chain_transfer][e2e]") {
  const std::string bytes = exported(chains / "final");
  const ChainStream stream(bytes);
  REQUIRE(stream.table.size() == 3);
  CHECK(stream.table[0].name == "p0");
  CHECK(stream.table[1].name == "p1");
  CHECK(stream.table[2].name == "final");
  CHECK(stream.table[2].sha256 == sha_of(chains / "final"));
  CHECK(stream.layers.size() == 3);
  for (const auto& layer : stream.layers)  // no layer carries its parent link: the importer makes it
    for (const Frame& f : layer) CHECK_FALSE(contains(f.payload, "images/parent"));

  REQUIRE_FALSE(import_bytes(bytes).has_value());
  CHECK_NOTHROW(CheckpointChain::verify(store / "final", KeyStore()));
  CHECK(fs::read_symlink(store / "final/images/parent") == "../../p1/images");
  CHECK(fs::read_symlink(store / "p1/images/parent") == "../../p0/images");
  CHECK_FALSE(fs::exists(fs::symlink_status(store / "p0/images/parent")));
  for (const char* layer : {"p0", "p1", "final"}) CHECK(sha_of(store / layer) == sha_of(chains / layer));
  CHECK((fs::status(store).permissions() & fs::perms::all) == fs::perms::owner_all);
  CHECK(fs::directory_iterator(store) != fs::directory_iterator());
  CHECK(std::distance(fs::directory_iterator(store), fs::directory_iterator()) == 3);  // no staging left

  const pid_t restored = rt->restore(store / "final");
  CHECK(restored == tree.pid());
  REQUIRE(wait_until([&] { return tree.count("parent") > at_final + 5; }));
  CounterTree::stop(restored);

  // Compressed, into another store.
  store = tmp / "store-zstd";
  REQUIRE_FALSE(import_bytes(exported(chains / "final", {Compression::zstd, {}})).has_value());
  CHECK_NOTHROW(CheckpointChain::verify(store / "final", KeyStore()));
}

TEST_CASE_METHOD(ChainFixture, "only the layers the receiver lacks are sent, and the result verifies", "[chain_transfer]") {
  make_private_dir(store);
  fs::copy(chains / "p0", store / "p0", fs::copy_options::recursive);
  const auto held_before = contents_of(store / "p0");
  const std::string full = exported(chains / "final");
  const std::string lacking = exported(chains / "final", {Compression::none, {sha_of(chains / "p0")}});
  CHECK(lacking.size() + fs::file_size(chains / "p0/images/pages-1.img") < full.size());
  const ChainStream stream(lacking);
  REQUIRE(stream.table.size() == 3);
  CHECK_FALSE(stream.table[0].sent);
  CHECK(stream.table[1].sent);
  CHECK(stream.layers.size() == 2);

  SECTION("imported beside the layer held") {
    REQUIRE_FALSE(import_bytes(lacking).has_value());
    CHECK_NOTHROW(CheckpointChain::verify(store / "final", KeyStore()));
    CHECK(contents_of(store / "p0") == held_before);
  }
  SECTION("a layer sent that the store holds already is refused, saying to leave it out") {
    refused(full, Status::invalid, "export the chain with " + sha_of(chains / "p0") + " among the layers the receiver has");
  }
  SECTION("a layer left out that the store lacks is refused") {
    fs::remove_all(store / "p0");
    refused(lacking, Status::invalid, "leaves out layer 'p0' as held here");
  }
  SECTION("a layer held that changed since it was signed fails the chain; the layers imported are removed") {
    flip_byte(store / "p0/images/pages-1.img", 100);
    refused(lacking, Status::integrity, "parent checkpoint 'p0'");
  }
}

TEST_CASE_METHOD(ChainFixture, "a chain in the store other than the one the table names is refused",
                 "[chain_transfer][security]") {
  // The store holds p1 on x0 (a copy of p0, so of p0's very signature); the stream sends p0 and a
  // final layer on that p1, and says p1 is held: every layer verifies, but p1's parent is not p0.
  make_private_dir(store);
  fs::copy(chains / "p0", store / "x0", fs::copy_options::recursive);
  fs::copy(chains / "p1", store / "p1", fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  link_layer(store, "p1", "x0", true);
  const fs::path sender = tmp / "sender";
  make_private_dir(sender);
  for (const char* layer : {"x0", "p1"})
    fs::copy(store / layer, sender / layer, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  fs::copy(chains / "final", sender / "final", fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  link_layer(sender, "final", "p1", false);
  const ChainStream on_x0(exported(sender / "final"));
  ChainStream stream(exported(chains / "final"));
  stream.table[1] = on_x0.table[1];
  stream.table[1].sent = false;
  stream.table[2] = on_x0.table[2];
  stream.layers = {stream.layers[0], on_x0.layers[2]};
  refused(stream.bytes(), Status::integrity, "is not the one the stream names (at layer 'p0')");
}

TEST_CASE_METHOD(ChainFixture, "a layer swapped for another chain's layer is refused", "[chain_transfer][security]") {
  const fs::path other = other_chain();
  ChainStream stream(exported(chains / "final"));
  const ChainStream theirs(exported(other / "final"));
  // Layer i of the stream is theirs; with `table`, its table entry too.
  const auto swapped = [&](std::size_t i, bool table, const std::string& why) {
    stream.layers[i] = theirs.layers[i];
    if (table) stream.table[i] = theirs.table[i];
    refused(stream.bytes(), Status::integrity, why);
  };
  SECTION("the table as sent") { swapped(1, false, "layer 'p1' is not the one its table names"); }
  // Their p1 binds their p0, not this p0.
  SECTION("the table naming the other layer") { swapped(1, true, "layer 'p1' was not dumped on its layer 'p0'"); }
  SECTION("the newest layer") { swapped(2, true, "layer 'final' was not dumped on its layer 'p1'"); }
  // p1's link is signed with p0's name alone; what binds the parent is p1's metadata.
  SECTION("the first layer") { swapped(0, true, "layer 'p1' was not dumped on its layer 'p0'"); }
}

TEST_CASE_METHOD(ChainFixture, "a parent link other than the signed one is refused", "[chain_transfer][security]") {
  ChainStream stream(exported(chains / "final"));
  SECTION("the parent renamed in the table: the link made to it is not the one signed") {
    stream.table[0].name = "q0";
    refused(stream.bytes(), Status::integrity, "listing does not match its signature");
  }
  // The stream's own images/parent, where the walk would meet it in a layer's listing.
  const auto listed = [&](std::size_t layer, const Frame& link) {
    auto& listing = stream.layers[layer];
    const auto at = std::find_if(listing.begin(), listing.end(), [](const Frame& f) {
      return f.type == 'F' && f.payload.substr(8) > "images/parent";
    });
    REQUIRE(at != listing.end());
    listing.insert(at, link);
    refused(stream.bytes(), Status::integrity, "lists 'images/parent' out of walk order");
  };
  SECTION("the link listed as a file") { listed(1, Frame{'F', u64le(0) + "images/parent"}); }
  SECTION("the link listed as a folder") { listed(2, Frame{'D', "images/parent"}); }
}

TEST_CASE_METHOD(ChainFixture, "a stream cut in its second layer leaves the store as it was", "[chain_transfer][security]") {
  make_private_dir(store);
  make_private_dir(store / "kept");
  write_file(store / "kept/file", "there before");
  const std::string bytes = exported(chains / "final");
  const ChainStream stream(bytes);
  std::size_t first_layer = 0;  // bytes of the header, the table and the first layer
  first_layer += stream_header + 9 + table_of(stream.table).size();
  for (const Frame& f : stream.layers[0]) first_layer += 9 + f.payload.size();
  std::size_t second_layer = 0;
  for (const Frame& f : stream.layers[1]) second_layer += 9 + f.payload.size();
  for (const std::size_t cut : {first_layer + 5, first_layer + second_layer / 2, first_layer + second_layer - 1}) {
    INFO("cut at " << cut);
    refused(bytes.substr(0, cut), Status::integrity, "ends early");
    CHECK_FALSE(fs::exists(store / "p0"));
  }
  // Cut before its end frame: every layer in, and removed again.
  refused(bytes.substr(0, bytes.size() - 9), Status::integrity, "ends early");
}

TEST_CASE_METHOD(ChainFixture, "a layer name that is not a plain folder name is refused", "[chain_transfer][security]") {
  ChainStream stream(exported(chains / "final"));
  for (const std::string& name : std::vector<std::string>{"a/b", "..", ".", "../p0", std::string("p\0", 2),
                                                          "p\x1b[2J", "p\n"}) {
    INFO(name);
    stream.table[0].name = name;
    refused(stream.bytes(), Status::integrity, "not a plain folder name");
  }
  CHECK_FALSE(fs::exists(tmp / "a"));
  stream.table[0].name = "p1";
  refused(stream.bytes(), Status::integrity, "names layer 'p1' twice");
}

TEST_CASE_METHOD(ChainFixture, "a chain whose layers lie in a folder others can change is not exported",
                 "[chain_transfer][security]") {
  // There, another user could put a layer of their own beside someone's checkpoint and name that one
  // as its parent: the export would send it.
  const fs::path shared = tmp / "shared";
  make_private_dir(shared);
  for (const char* layer : {"p0", "p1", "final"})
    fs::copy(chains / layer, shared / layer, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  fs::permissions(shared, fs::perms::all);  // writable by anyone, no sticky bit
  const fs::path out = tmp / "stream.out";
  const UniqueFd fd(::open(out.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  const auto error = error_of([&] { export_chain(shared / "final", fd.get()); });
  REQUIRE(error.has_value());
  INFO(error->what());
  CHECK(error->status() == Status::permission);
  CHECK(contains(error->what(), shared.native()));
  CHECK(fs::file_size(out) == 0);  // refused before a byte is written
}

TEST_CASE_METHOD(ChainFixture, "a chain store others can change is refused, even when every layer is held there",
                 "[chain_transfer][security]") {
  // Nothing of the stream would be written: the import would only verify, by name, layers another
  // user can swap right after.
  make_private_dir(store);
  for (const char* layer : {"p0", "p1", "final"})
    fs::copy(chains / layer, store / layer, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  fs::permissions(store, fs::perms::all);  // writable by anyone, no sticky bit
  refused(exported(chains / "final", {Compression::none, {sha_of(chains / "p0"), sha_of(chains / "p1"),
                                                          sha_of(chains / "final")}}),
          Status::permission, "can be changed by someone other than root");
}

TEST_CASE_METHOD(ChainFixture, "a folder of a layer's name with another signature is refused and left alone",
                 "[chain_transfer][security]") {
  const fs::path other = other_chain();
  make_private_dir(store);
  fs::copy(other / "p0", store / "p0", fs::copy_options::recursive);
  refused(exported(chains / "final"), Status::invalid, (store / "p0").native() + " is another checkpoint");
  refused(exported(chains / "final", {Compression::none, {sha_of(chains / "p0")}}), Status::invalid,
          (store / "p0").native() + " is another checkpoint");
}

TEST_CASE_METHOD(ChainFixture, "a chain of more layers than a chain may have is refused", "[chain_transfer][security]") {
  ChainStream stream(exported(chains / "final"));
  std::vector<Entry> table;
  for (std::size_t i = 0; i <= CheckpointChain::max_layers; ++i)
    table.push_back({false, stream.table[0].sha256, "l" + std::to_string(i)});
  stream.table = table;
  stream.layers.clear();
  refused(stream.bytes(), Status::integrity, "more than 64 layers");
  table.pop_back();  // 64 are read, and checked against the store
  stream.table = table;
  refused(stream.bytes(), Status::invalid, "leaves out layer 'l0'");
}

TEST_CASE_METHOD(ChainFixture, "a chain stream and a checkpoint stream are not taken for each other", "[chain_transfer]") {
  const UniqueFd chain = fd_of(tmp, exported(chains / "final"));
  const Error e = require_error([&] { import_checkpoint(chain.get(), tmp / "single"); });
  CHECK(e.status() == Status::integrity);
  CHECK(contains(e.what(), "import it with nucleus-checkpoint import --chain"));
  CHECK_FALSE(fs::exists(tmp / "single"));

  const fs::path single = tmp / "single.stream";
  {
    const UniqueFd out(::open(single.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    export_checkpoint(chains / "p0", out.get());  // no parent: a checkpoint stream carries it
    const Error layer = require_error([&] { export_checkpoint(chains / "final", out.get()); });
    CHECK(layer.status() == Status::invalid);
    CHECK(contains(layer.what(), "export it with its chain"));
  }
  refused(read_file(single), Status::integrity, "holds one checkpoint, not a chain");
}
