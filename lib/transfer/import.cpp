// import_checkpoint: authenticates the stream's listing against its signature before accepting a
// file byte, then checks every chunk as it arrives, writing it into a private staging folder that
// is renamed into place only once the stream has ended cleanly.
#include <fcntl.h>
#include <sys/stat.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/transfer.hpp>

#include "fs/checkpoint_dir.hpp"
#include "fs/fs_util.hpp"
#include "signature/signed_manifest.hpp"
#include "transfer/listing.hpp"
#include "transfer/transfer_stream.hpp"

namespace nucleus::checkpoint {

namespace {

using transfer::Frame;

Error integrity(std::string message) { return Error(Status::integrity, std::move(message)); }

Error unexpected(const transfer::FrameHeader& frame, std::string_view expected) {
  return integrity(fmt::format("the transfer stream is corrupt or out of order: expected {}, found a frame of type "
                               "0x{:02x} with {} bytes; nothing was imported",
                               expected, static_cast<unsigned char>(frame.type), frame.length));
}

// Reads the signature frame and the listing up to its end frame into `listing`, which spools
// them and authenticates them as they come.
void read_listing(transfer::StreamReader& in, transfer::ListingReceiver& listing) {
  const transfer::FrameHeader signature = in.next("the signature frame");
  if (signature.type != static_cast<char>(Frame::signature)) throw unexpected(signature, "the signature frame");
  listing.receive_signature(
      signature.length, [&](char* data, std::size_t size) { in.read(data, size, "the signature"); }, "exporting");
  std::string record;
  for (;;) {
    const transfer::FrameHeader frame = in.next("the listing");
    if (static_cast<Frame>(frame.type) == Frame::listing_end && frame.length == 0) break;
    if (!transfer::ListingReceiver::is_record(frame))
      throw unexpected(frame, fmt::format("a folder or file of the listing (a path of 1 to {} bytes)",
                                          HmacTree::max_path_length));
    record.resize(frame.length);
    in.read(record.data(), record.size(), "the listing");
    listing.add(frame, record);
  }
  listing.authenticate();
}

// Receives one file's chunks into fd, checking each before it is written.
void receive_file(transfer::StreamReader& in, int fd, const ManifestFile& file, std::uint64_t chunk_size,
                  std::vector<char>& chunk) {
  transfer::receive_chunks(file, chunk_size, fd, chunk, [&](std::uint64_t index, char* data, std::size_t length) {
    const std::string expected = fmt::format("chunk {} of '{}' ({} bytes)", index, file.path, length);
    const transfer::FrameHeader frame = in.next(expected);
    if (frame.type != static_cast<char>(Frame::chunk) || frame.length != length) throw unexpected(frame, expected);
    in.read(data, length, expected);
  });
}

// Returns the signature's text.
std::string import_with(int fd, const std::filesystem::path& dir, const VerifyingKeys& keys,
                        transfer::StreamEnd stream_end, std::chrono::milliseconds stall_timeout = {}) {
  CheckpointDir staging = CheckpointDir::prepare(dir, CheckpointDir::Start::empty);
  transfer::StreamReader in(fd, stall_timeout);
  transfer::ListingReceiver listing("the transfer stream", staging.dir(), keys);
  read_listing(in, listing);

  // Authenticated: the importer makes each folder and file itself, relative to the staging folder.
  std::vector<char> chunk;
  transfer::make_listed_tree(staging.dir(), listing, [&](const std::string&, const ManifestFile* file, int file_fd) {
    if (file) receive_file(in, file_fd, *file, listing.chunk_size(), chunk);
  });
  const transfer::FrameHeader end = in.next("the end frame");
  if (end.type != static_cast<char>(Frame::end) || end.length != 0) throw unexpected(end, "the end frame");
  in.require_end(stream_end);
  std::string signature_text = listing.signature_text();
  transfer::write_signature(staging.dir(), signature_text);
  staging.commit();
  return signature_text;
}

}  // namespace

void import_checkpoint(int fd, const std::filesystem::path& dir, const KeyStore& store) {
  import_with(fd, dir, VerifyingKeys(store), transfer::StreamEnd::descriptor);
}

void import_checkpoint(int fd, const std::filesystem::path& dir, const HmacKey& key) {
  import_with(fd, dir, VerifyingKeys(key), transfer::StreamEnd::descriptor);
}

std::string transfer::import_checkpoint(int fd, const std::filesystem::path& dir, const VerifyingKeys& keys,
                                       StreamEnd end, std::chrono::milliseconds stall_timeout) {
  return import_with(fd, dir, keys, end, stall_timeout);
}

}  // namespace nucleus::checkpoint
