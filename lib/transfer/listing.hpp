// What a transfer stream and a registry image's layer share: a format 3 signature, then the
// listing of the tree (its folders, and its files with their sizes, in walk order) authenticated
// against it before a file byte is accepted, then the tree made from that listing alone, every
// chunk checked before it is written.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fs/unique_fd.hpp"
#include "signature/signed_manifest.hpp"
#include "transfer/transfer_stream.hpp"

namespace nucleus::checkpoint::transfer {

// The listing's paths are spooled and hashed before it is authenticated: within HmacTree's limits
// alone they could reach 4 GiB (a million 4096-byte paths), sent as a few MiB of zstd. 128 MiB is
// an average of 134 bytes over the most entries a tree may have.
inline constexpr std::uint64_t max_listing_path_bytes = std::uint64_t{128} << 20;
// The most a listing's records may take, as frames: the paths, and per entry a frame header and a
// file's size.
inline constexpr std::uint64_t max_listing_bytes =
    max_listing_path_bytes + HmacTree::max_entries * (frame_header_size + 8);

// The text of the checkpoint.hmac of the folder open at dir_fd (`dir`, as the caller named it) if
// it is format 3, else Status::invalid saying how to re-sign it: formats 1 and 2 cannot be checked
// chunk by chunk as they arrive, and a receiver must not write a byte it cannot check.
std::string manifest_signature_text(int dir_fd, const std::filesystem::path& dir);

// The signature text parsed, if it is format 3; formats 1 and 2 cannot be checked as they arrive,
// and no byte that cannot be checked is written, so they are refused (Status::integrity) saying
// how to re-sign them. `source` carries the checkpoint ("the transfer stream"), `before` is what
// is done with it ("exporting").
ChunkedSignature parse_manifest_signature(std::string_view text, std::string_view source, std::string_view before);

// A listing record as add takes it: a folder, or a file and its size.
struct ListedRecord {
  bool folder = false;
  std::string_view path;  // in the payload given to add
  std::uint64_t size = 0;
};

// Reads a range of a spool back a buffer at a time.
class SpoolReader {
 public:
  SpoolReader(int fd, std::uint64_t from, std::uint64_t to);
  bool get(char& c);                       // the next byte; false at the range's end
  void read(char* data, std::size_t size);  // exactly the next `size` bytes

 private:
  int fd_;
  std::uint64_t at_, end_;
  std::vector<char> buffer_;
  std::size_t pos_ = 0, len_ = 0;
};

// Receives a checkpoint's signature, then its listing record by record, and authenticates them.
// Until then they come from anyone, so nothing of them is held in memory: they are spooled to an
// unnamed file (O_TMPFILE, gone however the receiver ends) as they come, the manifest checked for
// its form alone, and the MAC computed as the listing arrives from its records and, for each file,
// its manifest line read back from the spool a digest at a time. Each record is held to what the
// walk of a checkpoint folder could have produced before anything is spent on it (plain relative
// names, each folder listed before its contents, the names in each folder in byte order and each
// once, within HmacTree's limits). Once authenticated, the listing is read back from the spool.
class ListingReceiver {
 public:
  // Reads exactly `size` bytes into `data`.
  using ReadBytes = std::function<void(char* data, std::size_t size)>;
  // `source` names what carries the listing in errors ("the transfer stream"); the spool is made
  // in the folder open at spool_dir_fd (the staging folder: the file system that is to hold the
  // checkpoint); `keys` must outlive the receiver.
  ListingReceiver(std::string_view source, int spool_dir_fd, const VerifyingKeys& keys);

  // The signature, `size` bytes (Status::integrity if more than a signature may be), read with
  // `read` a piece at a time: format 3, or refused as parse_manifest_signature does (`before`
  // says what was done with it); the key that checks it is loaded only then.
  void receive_signature(std::uint64_t size, const ReadBytes& read, std::string_view before);
  // Whether a frame of this header can be a record: a folder ('D', its path) or a file ('F', its
  // size as u64 LE, then its path) whose path is 1 to HmacTree::max_path_length bytes.
  static bool is_record(const FrameHeader& frame);
  // A chain layer's parent link, which the stream does not carry: the signature must cover exactly
  // this link, taken into the listing where the walk meets it. Before the first record.
  void expect_link(std::string_view rel, std::string_view target);
  ListedRecord add(const FrameHeader& frame, std::string_view payload);  // a record, once is_record
  // Status::integrity unless the listing is exactly what was signed.
  void authenticate();

  // Once authenticated: the chunk size, the signature's text, and the listing read back.
  std::uint64_t chunk_size() const;
  std::string signature_text() const;
  // Calls `each` with every listed entry in order: its path, and for a file its signed chunks
  // (nullptr for a folder).
  using EachListed = std::function<void(const std::string& path, const ManifestFile* file)>;
  void for_each_listed(const EachListed& each) const;

 private:
  void check(bool folder, std::string_view rel, std::uint64_t size);
  void take_link_before(std::optional<std::string_view> rel);  // the expected link, if it walks before rel
  void require_authenticated() const;
  void spool(const void* data, std::size_t size);
  void flush();

  struct Level {
    std::string path;       // "" for the checkpoint folder itself
    std::string last_name;  // the last name listed in it
  };
  std::string source_;
  const VerifyingKeys& keys_;
  UniqueFd spool_;
  std::vector<char> out_;  // spooled bytes not yet written
  // The spool holds the signature's text, its three lines (head_size_ bytes) then its manifest,
  // and from signature_size_ on the listing's records as frames.
  std::uint64_t head_size_ = 0, signature_size_ = 0, spooled_ = 0;
  std::optional<ManifestCheck> check_;
  std::optional<SpoolReader> lines_;  // the manifest, read back a line for each file listed
  bool authenticated_ = false;
  std::optional<std::pair<std::string, std::string>> link_;  // the expected link not yet taken: path, target
  std::uint64_t entries_ = 0;
  std::vector<Level> levels_{Level{}};
  std::uint64_t path_bytes_ = 0;
  std::uint64_t bytes_ = 0;
  const std::uint64_t max_bytes_ = HmacTree::max_total_bytes();
};

// Makes the authenticated listing's folders and files in the empty folder open at staging_fd, in
// listing order, each relative to its parent's descriptor (O_EXCL, O_NOFOLLOW), 0700 and 0600;
// after making each, calls fill with its path, its signed file (nullptr for a folder) and the
// descriptor its bytes are to be written to (-1 for a folder).
using FillListed = std::function<void(const std::string& path, const ManifestFile* file, int fd)>;
void make_listed_tree(int staging_fd, const ListingReceiver& listing, const FillListed& fill);

// Reads the next chunk of `file` (chunk `index`, `length` bytes) into `chunk` with `read`, checks
// it against the signed digest and only then writes it to fd: every chunk of the file in turn.
using ReadChunk = std::function<void(std::uint64_t index, char* data, std::size_t length)>;
void receive_chunks(const ManifestFile& file, std::uint64_t chunk_size, int fd, std::vector<char>& chunk,
                    const ReadChunk& read);

// Writes checkpoint.hmac, last, into the staging folder at staging_fd, which must not have one.
void write_signature(int staging_fd, std::string_view text);

}  // namespace nucleus::checkpoint::transfer
