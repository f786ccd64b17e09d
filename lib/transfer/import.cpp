// import_checkpoint: authenticates the stream's listing against its signature before accepting a
// file byte, then checks every chunk as it arrives, writing it into a private staging folder that
// is renamed into place only once the stream has ended cleanly.
#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/transfer.hpp>

#include "checkpoint/chain.hpp"
#include "fs/checkpoint_dir.hpp"
#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"
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

// Receives a checkpoint stream's body, through its end frame, into the empty staging folder open at
// staging_fd; a chain layer's parent `link` (its path and target), which the stream leaves out, must
// be the one its signature covers. Returns the signature's text, not yet written.
std::string receive_checkpoint(transfer::StreamReader& in, int staging_fd, const VerifyingKeys& keys,
                               const std::optional<std::pair<std::string, std::string>>& link = std::nullopt) {
  transfer::ListingReceiver listing("the transfer stream", staging_fd, keys);
  if (link) listing.expect_link(link->first, link->second);
  read_listing(in, listing);

  // Authenticated: the importer makes each folder and file itself, relative to the staging folder.
  std::vector<char> chunk;
  transfer::make_listed_tree(staging_fd, listing, [&](const std::string&, const ManifestFile* file, int file_fd) {
    if (file) receive_file(in, file_fd, *file, listing.chunk_size(), chunk);
  });
  const transfer::FrameHeader end = in.next("the end frame");
  if (end.type != static_cast<char>(Frame::end) || end.length != 0) throw unexpected(end, "the end frame");
  return listing.signature_text();
}

// Returns the signature's text.
std::string import_with(int fd, const std::filesystem::path& dir, const VerifyingKeys& keys,
                        transfer::StreamEnd stream_end, std::chrono::milliseconds stall_timeout = {}) {
  CheckpointDir staging = CheckpointDir::prepare(dir, CheckpointDir::Start::empty);
  transfer::StreamReader in(fd, stall_timeout);
  std::string signature_text = receive_checkpoint(in, staging.dir(), keys);
  in.require_end(stream_end);
  transfer::write_signature(staging.dir(), signature_text);
  staging.commit();
  return signature_text;
}

// Before a layer is received: each layer the stream leaves out is in the store as named (the very
// signature), and none it sends is (an import never writes over a folder).
void check_store(int store_fd, const std::filesystem::path& store_dir, const std::vector<transfer::ChainEntry>& table) {
  for (const transfer::ChainEntry& layer : table) {
    const std::filesystem::path shown = store_dir / layer.name;
    struct stat st {};
    if (::fstatat(store_fd, layer.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno != ENOENT) throw system_error(status_of_errno(errno), errno, fmt::format("cannot examine {}", shown.native()));
      if (!layer.sent)
        throw Error(Status::invalid, fmt::format("the chain stream leaves out layer '{}' as held here, but {} does not "
                                                 "exist: export the chain again without {} among the layers the receiver "
                                                 "has (--have, nc_options_add_receiver_has)",
                                                 layer.name, shown.native(), layer.signature_sha256));
      continue;
    }
    const std::string held = signature_sha256(open_dir_at(store_fd, layer.name, "chain layer").get());
    if (held != layer.signature_sha256)
      throw Error(Status::invalid, fmt::format("{} is another checkpoint than the chain's layer '{}' (its signature's "
                                               "SHA-256 is {}, the layer's {}): import the chain into another folder, "
                                               "or move {} away",
                                               shown.native(), layer.name, held, layer.signature_sha256,
                                               shown.native()));
    if (layer.sent)
      throw Error(Status::invalid, fmt::format("{} holds the chain's layer '{}' already: export the chain with {} among "
                                               "the layers the receiver has (--have, nc_options_add_receiver_has), "
                                               "which leaves it out",
                                               shown.native(), layer.name, layer.signature_sha256));
  }
}

// The target of the parent link of the layer received at layer_fd, as its signed metadata names
// it, once it names and binds the parent the stream says it has.
std::string signed_parent_link(int layer_fd, const transfer::ChainEntry& layer, const transfer::ChainEntry& parent) {
  const CheckpointMetadata metadata = CheckpointMetadata::load(layer_fd);
  if (!metadata.chain || metadata.chain->parent != parent.name ||
      metadata.chain->parent_signature_sha256 != parent.signature_sha256)
    throw integrity(fmt::format("the chain stream's layer '{}' was not dumped on its layer '{}' (its signed metadata "
                                "names another parent or another signature of it); nothing was imported",
                                layer.name, parent.name));
  return parent_link_target(metadata.chain->parent);
}

std::filesystem::path import_chain_with(transfer::StreamReader& in, const std::filesystem::path& store_dir,
                                        const KeyStore& store, std::vector<CheckpointDir>& committed) {
  const transfer::FrameHeader head = in.next("the chain's table");
  if (head.type != static_cast<char>(Frame::chain) || head.length > transfer::max_chain_table_size)
    throw unexpected(head, fmt::format("the chain's table (at most {} bytes)", transfer::max_chain_table_size));
  std::string payload(head.length, '\0');
  in.read(payload.data(), payload.size(), "the chain's table");
  const std::vector<transfer::ChainEntry> table = transfer::decode_chain_table(payload);
  const UniqueFd store_fd = open_or_create_dir(store_dir, 0700, "chain store folder");
  // The store is read by name (held layers, the chain verified at the end): only root or this user
  // may change it, or what is verified is not what stays.
  const std::filesystem::path real_store = std::filesystem::read_symlink(fmt::format("/proc/self/fd/{}", store_fd.get()));
  if (const auto dir = folder_others_can_change(real_store / table.back().name))
    throw Error(Status::permission, fmt::format("the chain store {} can be changed by someone other than root ({}), "
                                                "who could swap its layers once verified; import into a folder only "
                                                "root can change",
                                                real_store.native(), dir->native()));
  check_store(store_fd.get(), store_dir, table);

  for (std::size_t i = 0; i < table.size(); ++i) {
    const transfer::ChainEntry& layer = table[i];
    if (!layer.sent) continue;
    CheckpointDir staging = CheckpointDir::prepare(store_dir / layer.name, CheckpointDir::Start::empty);
    if (!same_file(staging.parent(), store_fd.get()))
      throw Error(Status::permission, fmt::format("the chain store {} was replaced while the chain was imported (a "
                                                  "symlink on its path changed?); give its real path",
                                                  store_dir.native()));
    // The parent link the signature must cover: to the layer before, as the table names it.
    std::optional<std::pair<std::string, std::string>> link;
    if (i > 0) link.emplace(parent_link_path, parent_link_target(table[i - 1].name));
    const std::string signature_text = receive_checkpoint(in, staging.dir(), VerifyingKeys(store), link);
    if (signature_text_sha256(signature_text) != layer.signature_sha256)
      throw integrity(fmt::format("the chain stream's layer '{}' is not the one its table names (another signature); "
                                  "nothing was imported",
                                  layer.name));
    if (link) {
      const std::string target = signed_parent_link(staging.dir(), layer, table[i - 1]);
      const UniqueFd images = open_dir_at(staging.dir(), CheckpointDir::images_name, "layer's images folder");
      if (::symlinkat(target.c_str(), images.get(), "parent") != 0)
        throw system_error(status_of_errno(errno), errno, fmt::format("cannot link layer '{}' to its parent", layer.name));
    }
    transfer::write_signature(staging.dir(), signature_text);
    staging.commit();
    committed.push_back(std::move(staging));
  }
  const transfer::FrameHeader end = in.next("the chain's end frame");
  if (end.type != static_cast<char>(Frame::end) || end.length != 0) throw unexpected(end, "the chain's end frame");
  in.require_end(transfer::StreamEnd::descriptor);

  // Every layer, those held before included, as a restore would verify the chain.
  const std::string& newest = table.back().name;
  const std::vector<ChainLayer> verified = verify_chain(
      open_dir_at(store_fd.get(), newest, "chain layer").get(), (store_dir / newest).native(),
      [&](int fd) { HmacTree::verify(fd, store); }, ChainUse::signatures);
  // The newest was opened by its name: it must be the table's, and each parent the entry before it.
  if (signature_sha256(verified.front().dir.get()) != table.back().signature_sha256)
    throw integrity(fmt::format("the chain's newest layer {} in the store is not the one the stream names; nothing "
                                "was imported",
                                (store_dir / newest).native()));
  for (std::size_t i = 1; i < table.size(); ++i)
    if (i >= verified.size() || verified[i].name != table[table.size() - 1 - i].name)
      throw integrity(fmt::format("the chain of {} in the store is not the one the stream names (at layer '{}'); "
                                  "nothing was imported",
                                  (store_dir / newest).native(), table[table.size() - 1 - i].name));
  return store_dir / newest;
}

}  // namespace

std::filesystem::path import_chain(int fd, const std::filesystem::path& store_dir, const KeyStore& store) {
  transfer::StreamReader in(fd, {}, transfer::StreamKind::chain);
  std::vector<CheckpointDir> committed;  // removed again should the chain fail
  try {
    return import_chain_with(in, store_dir, store, committed);
  } catch (...) {
    for (auto it = committed.rbegin(); it != committed.rend(); ++it) it->withdraw();
    throw;
  }
}

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
