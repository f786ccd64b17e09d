// ChunkedFileDigest: a file's digest in the chunked signature format, checked against the format's
// definition composed here from libsodium's SHA-256, whether hashed in one go or in steps, on one
// thread or several, and refused when the file changes size under it; and the chunk digests it
// keeps for format 3's manifest.
#include "test_support.hpp"

#include <fcntl.h>
#include <sodium.h>
#include <unistd.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include <nucleus/checkpoint/error.hpp>

#include "signature/chunked_digest.hpp"
#include "fs/unique_fd.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

constexpr std::uint64_t chunk = 4096;
constexpr std::uint64_t window = 64;  // chunks the digest hashes in parallel at a time (chunked_digest.cpp)

// The SHA-256 of each chunk_size piece, with libsodium.
std::vector<Sha256::Digest> spec_chunk_digests(std::string_view data, std::uint64_t chunk_size) {
  std::vector<Sha256::Digest> digests;
  for (std::uint64_t at = 0; at < data.size(); at += chunk_size) {
    const std::string_view piece = data.substr(at, chunk_size);
    crypto_hash_sha256(digests.emplace_back().data(), reinterpret_cast<const unsigned char*>(piece.data()),
                       piece.size());
  }
  return digests;
}

// The format's definition: SHA-256 over the SHA-256 of each chunk_size piece, with libsodium.
Sha256::Digest spec_digest(std::string_view data, std::uint64_t chunk_size) {
  crypto_hash_sha256_state outer;
  crypto_hash_sha256_init(&outer);
  for (std::uint64_t at = 0; at < data.size(); at += chunk_size) {
    const std::string_view piece = data.substr(at, chunk_size);
    unsigned char d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(d, reinterpret_cast<const unsigned char*>(piece.data()), piece.size());
    crypto_hash_sha256_update(&outer, d, sizeof d);
  }
  Sha256::Digest digest{};
  crypto_hash_sha256_final(&outer, digest.data());
  return digest;
}

UniqueFd open_for_reading(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(fd);
  return fd;
}

// A file holding `data` in tmp, and a descriptor to read it through.
struct TestFile {
  fs::path path;
  UniqueFd fd;
  TestFile(const TempDir& tmp, const std::string& data, const char* name = "image.img") : path(tmp / name) {
    write_file(path, data);
    fd = open_for_reading(path);
  }
};

Sha256::Digest digest_in_one_go(int fd, std::uint64_t size, std::uint64_t chunk_size, unsigned threads) {
  ChunkedFileDigest digest(chunk_size);
  return digest.finish(fd, size, threads, "image.img");
}

// f must throw Error(Status::integrity) saying that the named file changed size.
template <class F>
void require_size_change_error(F&& f) {
  const auto e = error_of(std::forward<F>(f));
  REQUIRE(e.has_value());
  INFO("message: " << e->what());
  CHECK(e->status() == Status::integrity);
  CHECK(contains(e->what(), "'image.img' changed size during the integrity scan"));
}

}  // namespace

TEST_CASE("a file's digest is the format's SHA-256 of chunk digests, under both engines", "[chunked_digest]") {
  TempDir tmp;
  // Empty (no chunks), on either side of a chunk boundary, and across windows of parallel chunks.
  const std::uint64_t sizes[] = {0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 5,
                                 window * chunk, window * chunk + 1, (2 * window + 2) * chunk + 17};
  for (const bool sodium : {false, true}) {
    const auto engine = hash_engine_env(sodium);
    for (const std::uint64_t size : sizes) {
      INFO((sodium ? "libsodium" : "default engine") << ", " << size << " bytes");
      const std::string data = bytes_of_size(size);
      const TestFile file(tmp, data);
      CHECK(digest_in_one_go(file.fd.get(), size, chunk, 1) == spec_digest(data, chunk));
    }
  }
  // SHA-256 of nothing, which is what an empty file's digest is.
  const std::string empty_sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  const TestFile empty(tmp, "");
  const Sha256::Digest d = digest_in_one_go(empty.fd.get(), 0, chunk, 1);
  char hex[65];
  sodium_bin2hex(hex, sizeof hex, d.data(), d.size());
  CHECK(hex == empty_sha256);
}

TEST_CASE("the chunk size is part of a file's digest", "[chunked_digest]") {
  TempDir tmp;
  const std::string data = bytes_of_size(5 * chunk + 3);
  const TestFile file(tmp, data);
  const Sha256::Digest small = digest_in_one_go(file.fd.get(), data.size(), chunk, 2);
  const Sha256::Digest large = digest_in_one_go(file.fd.get(), data.size(), 2 * chunk, 2);
  CHECK(small == spec_digest(data, chunk));
  CHECK(large == spec_digest(data, 2 * chunk));
  CHECK(small != large);
  // At the default 4 MiB the file is one chunk, and its digest is the SHA-256 of its SHA-256, not
  // the SHA-256 of the file.
  const Sha256::Digest one_chunk = digest_in_one_go(file.fd.get(), data.size(), 4 << 20, 2);
  CHECK(one_chunk == spec_digest(data, 4 << 20));
  Sha256::Digest plain{};
  crypto_hash_sha256(plain.data(), reinterpret_cast<const unsigned char*>(data.data()), data.size());
  CHECK(one_chunk != plain);
}

TEST_CASE("hashing in steps, then finishing, equals hashing in one go", "[chunked_digest]") {
  TempDir tmp;
  const std::uint64_t size = (2 * window + 3) * chunk + 100;
  const std::string data = bytes_of_size(size, 7);
  const TestFile file(tmp, data);
  const Sha256::Digest expected = spec_digest(data, chunk);

  // Ends inside chunks, on boundaries, repeated, going back, and past a window.
  const std::uint64_t ends[] = {0, 1, chunk - 1, chunk, chunk, 3 * chunk + 7, 2 * chunk, (window + 1) * chunk + 9,
                                size - 1};
  for (const unsigned threads : {1u, 4u}) {
    INFO(threads << " threads");
    ChunkedFileDigest digest(chunk);
    std::uint64_t reported = 0, expected_hashed = 0;
    const ChunkedFileDigest::BytesHashed count = [&](std::uint64_t bytes) { reported += bytes; };
    for (const std::uint64_t end : ends) {
      INFO("advance to " << end);
      digest.advance(file.fd.get(), end, threads, "image.img", count);
      expected_hashed = std::max(expected_hashed, end - end % chunk);  // whole chunks only, never backwards
      CHECK(digest.hashed() == expected_hashed);
      CHECK(reported == expected_hashed);
    }
    CHECK(digest.finish(file.fd.get(), size, threads, "image.img", count) == expected);
    CHECK(reported == size);  // every byte reported once
  }
}

TEST_CASE("1, 3 and 4 threads give the same digest", "[chunked_digest]") {
  TempDir tmp;
  const std::uint64_t size = (3 * window + 5) * chunk + 1;  // several windows, an uneven last one
  const std::string data = bytes_of_size(size, 3);
  const TestFile file(tmp, data);
  const Sha256::Digest one = digest_in_one_go(file.fd.get(), size, chunk, 1);
  CHECK(one == spec_digest(data, chunk));
  CHECK(digest_in_one_go(file.fd.get(), size, chunk, 3) == one);
  CHECK(digest_in_one_go(file.fd.get(), size, chunk, 4) == one);
  CHECK(digest_in_one_go(file.fd.get(), size, chunk, hash_threads()) == one);
}

TEST_CASE("hash_threads is between 1 and 8", "[chunked_digest]") {
  CHECK(hash_threads() >= 1);
  CHECK(hash_threads() <= 8);
}

TEST_CASE("a file that changes size under the digest is an integrity error", "[chunked_digest]") {
  TempDir tmp;
  const std::uint64_t size = (window + 10) * chunk + 5;
  const TestFile file(tmp, bytes_of_size(size));
  ChunkedFileDigest digest(chunk);
  const unsigned threads = 4;

  SECTION("shortened below what was hashed, between advance and finish") {
    digest.advance(file.fd.get(), 3 * chunk, threads, "image.img");
    fs::resize_file(file.path, chunk);
    require_size_change_error([&] { (void)digest.finish(file.fd.get(), chunk, threads, "image.img"); });
  }
  SECTION("shortened after advance, finished with the old size") {
    digest.advance(file.fd.get(), 3 * chunk, threads, "image.img");
    fs::resize_file(file.path, 5 * chunk + 1);
    require_size_change_error([&] { (void)digest.finish(file.fd.get(), size, threads, "image.img"); });
  }
  SECTION("shorter than the size, in the first window of parallel chunks") {
    // The read that fails is on a helper thread: its error must come out of finish.
    fs::resize_file(file.path, 10 * chunk + 1);
    require_size_change_error([&] { (void)digest.finish(file.fd.get(), size, threads, "image.img"); });
  }
  SECTION("longer than the size, by a byte") {
    require_size_change_error([&] { (void)digest.finish(file.fd.get(), size - 1, threads, "image.img"); });
  }
  SECTION("grown after advance, finished with the old size") {
    digest.advance(file.fd.get(), 2 * chunk, threads, "image.img");
    write_file(file.path, bytes_of_size(size + chunk));  // same inode, truncated and rewritten longer
    require_size_change_error([&] { (void)digest.finish(file.fd.get(), size, threads, "image.img"); });
  }
  SECTION("advanced past the end of the file") {
    require_size_change_error([&] { digest.advance(file.fd.get(), size + 2 * chunk, threads, "image.img"); });
  }
  SECTION("an empty file that is not empty") {
    const TestFile grown(tmp, "x", "image.img");
    require_size_change_error([&] { (void)digest.finish(grown.fd.get(), 0, threads, "image.img"); });
  }
}

TEST_CASE("the digest keeps every chunk's digest, in order, for the manifest", "[chunked_digest]") {
  TempDir tmp;
  const std::uint64_t size = (window + 3) * chunk + 100;  // across a window, a short last chunk
  const std::string data = bytes_of_size(size, 5);
  const TestFile file(tmp, data);
  const std::vector<Sha256::Digest> expected = spec_chunk_digests(data, chunk);
  REQUIRE(expected.size() == window + 4);
  for (const unsigned threads : {1u, 4u}) {
    INFO(threads << " threads");
    ChunkedFileDigest digest(chunk);
    CHECK(digest.chunk_digests().empty());
    digest.advance(file.fd.get(), 2 * chunk + 5, threads, "image.img");
    CHECK(digest.chunk_digests() == std::vector<Sha256::Digest>(expected.begin(), expected.begin() + 2));
    // Handed over, as LiveDigests hands its digests to signing.
    ChunkedFileDigest handed_over = std::move(digest);
    std::uint64_t hashed = 0;
    const ChunkedFileDigest::BytesHashed each_window = [&](std::uint64_t bytes) {
      // A window's digests are there by the time it is reported.
      hashed += bytes;
      CHECK(handed_over.chunk_digests().size() == 2 + (hashed + chunk - 1) / chunk);
    };
    const Sha256::Digest d = handed_over.finish(file.fd.get(), size, threads, "image.img", each_window);
    CHECK(handed_over.chunk_digests() == expected);
    CHECK(file_digest_of(handed_over.chunk_digests()) == d);
    CHECK(d == spec_digest(data, chunk));
  }
  // An empty file has no chunks, and its digest is SHA-256 of nothing.
  const TestFile empty(tmp, "", "empty.img");
  ChunkedFileDigest none(chunk);
  CHECK(none.finish(empty.fd.get(), 0, 2, "empty.img") == file_digest_of({}));
  CHECK(none.chunk_digests().empty());
  CHECK(file_digest_of({}) == spec_digest("", chunk));
}
