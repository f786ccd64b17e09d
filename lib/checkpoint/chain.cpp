#include "checkpoint/chain.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <set>
#include <utility>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>

#include "checkpoint/utf8.hpp"
#include "fs/checkpoint_dir.hpp"
#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"
#include "signature/chunked_signature.hpp"
#include "signature/sha256.hpp"

namespace nucleus::checkpoint {

namespace {

Error integrity(std::string message) { return Error(Status::integrity, std::move(message)); }

bool is_sha256_hex(std::string_view hex) {
  return hex.size() == 64 && std::all_of(hex.begin(), hex.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// The folder holding the layer open at dir_fd, as CRIU reaches it from the layer's images ("..").
UniqueFd containing_folder(int dir_fd, std::string_view shown, ChainUse use) {
  UniqueFd up(::openat(dir_fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!up) throw system_error(status_of_errno(errno), errno, fmt::format("cannot open the folder holding {}", shown));
  // CRIU, or an export, follows images/parent by name through this folder: only its owner may
  // rename in it.
  if (use == ChainUse::criu_reads) require_private_dir(up.get(), fmt::format("holding {}", shown), "the folder");
  if (use == ChainUse::exports) {
    try {
      require_private_dir(up.get(), fmt::format("holding {}", shown), "the folder");
    } catch (const Error& e) {
      throw Error(e.status(), fmt::format("the folder holding {} ({}) can be changed by other users, and an export "
                                          "follows the chain's links by name there: one of them could name someone "
                                          "else's checkpoint as a parent. Copy the chain into a folder of your own "
                                          "and export the copy",
                                          shown, std::filesystem::read_symlink(fmt::format("/proc/self/fd/{}", up.get()))
                                                     .native()));
    }
  }
  return up;
}

}  // namespace

bool has_parent_link(int dir_fd) {
  struct stat st {};
  return ::fstatat(dir_fd, std::string(parent_link_path).c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
}

std::string signature_sha256(int dir_fd) { return signature_text_sha256(read_signature_text(dir_fd)); }

std::string signature_text_sha256(std::string_view text) {
  Sha256 sha;
  sha.update(text.data(), text.size());
  return HmacSha256::to_hex(sha.final());
}

std::vector<ChainLayer> verify_chain(int dir_fd, std::string_view shown, const std::function<void(int)>& verify_layer,
                                     ChainUse use) {
  std::vector<ChainLayer> layers;
  std::set<std::pair<dev_t, ino_t>> seen;
  UniqueFd current(::fcntl(dir_fd, F_DUPFD_CLOEXEC, 0));
  if (!current) throw system_error(Status::io, errno, "cannot duplicate a descriptor");
  std::string name(shown);
  std::string bound_sha;  // what the layer before bound of this one's signature
  for (;;) {
    const std::string what = layers.empty() ? name : fmt::format("parent checkpoint '{}' (of {})", name, shown);
    if (layers.size() == max_chain_layers)
      throw integrity(fmt::format("the chain of {} is longer than {} layers (at {}): refusing it; make a full dump "
                                  "instead of another layer", shown, max_chain_layers, what));
    const struct stat st = stat_fd(current.get(), what);
    if (!seen.insert({st.st_dev, st.st_ino}).second)
      throw integrity(fmt::format("the chain of {} loops: {} is met twice", shown, what));
    if (use == ChainUse::criu_reads) require_private_tree(current.get(), OpenWriters::refuse);
    try {
      verify_layer(current.get());
    } catch (const Error& e) {
      if (layers.empty()) throw;
      throw Error(e.status(), fmt::format("{} does not verify: {}", what, e.what()));
    }
    const bool linked = has_parent_link(current.get());
    // A signed folder that is no layer is verified alone; nothing of it need be parsed.
    if (layers.empty() && !linked && use != ChainUse::criu_reads) {
      layers.push_back({std::move(current), name, {}, {}});
      return layers;
    }
    CheckpointMetadata metadata = CheckpointMetadata::load(current.get());
    std::string signed_sha = signature_sha256(current.get());
    ChainLayer layer{std::move(current), name, std::move(metadata), std::move(signed_sha)};
    const std::optional<ChainRecord>& chain = layer.metadata.chain;
    if (!layers.empty()) {
      // Bound by its child: the very signature the child was dumped on, so neither swapped nor re-signed.
      if (layer.signature_sha256 != bound_sha)
        throw integrity(fmt::format("{} is not the checkpoint {} was dumped on: its signature differs from the one "
                                    "the layer bound (swapped, re-signed or replaced); the chain cannot be restored",
                                    what, layers.back().name));
      if (!chain || !chain->predump)
        throw integrity(fmt::format("{} is not a pre-dump: only a pre-dump can be a layer's parent", what));
    }
    const std::string parent = chain ? chain->parent : std::string();
    if (parent.empty()) {
      if (linked)
        throw integrity(fmt::format("{} holds a parent link ({}) but its metadata names no parent", what,
                                    parent_link_path));
      layers.push_back(std::move(layer));
      return layers;
    }
    if (!is_plain_name(parent) || !is_sha256_hex(chain->parent_signature_sha256))
      throw integrity(fmt::format("{} names its parent malformed: '{}' must be a plain folder name beside it, bound by "
                                  "a SHA-256", what, to_valid_utf8(parent)));
    if (!linked)
      throw integrity(fmt::format("{} names parent '{}' but has no {} link to it", what, parent, parent_link_path));
    // The link was verified as signed; it must also be the one the metadata names.
    const UniqueFd link(::openat(layer.dir.get(), std::string(parent_link_path).c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!link || read_link_fd(link.get(), parent_link_path) != parent_link_target(parent))
      throw integrity(fmt::format("{} links to another parent than the '{}' its metadata names", what, parent));
    const UniqueFd up = containing_folder(layer.dir.get(), what, use);
    try {
      current = open_dir_at(up.get(), parent, "parent checkpoint");
    } catch (const Error& e) {
      throw Error(e.status(), fmt::format("{} was dumped on parent checkpoint '{}', which must be a folder beside it "
                                          "(CRIU reaches it as {}): {}", what, parent, parent_link_target(parent),
                                          e.what()));
    }
    bound_sha = chain->parent_signature_sha256;
    name = parent;
    layers.push_back(std::move(layer));
  }
}

void CheckpointChain::verify(const std::filesystem::path& dir, const KeyStore& store, const HmacTree::Progress& progress) {
  std::uint64_t before = 0, layer = 0;  // bytes of the layers verified, and of the one being verified
  const HmacTree::Progress total = !progress ? HmacTree::Progress() : [&](std::uint64_t bytes) {
    layer = bytes;
    progress(before + bytes);
  };
  verify_chain(open_dir(dir, "checkpoint directory").get(), dir.native(), [&](int fd) {
    before += std::exchange(layer, 0);
    HmacTree::verify(fd, store, total);
  }, ChainUse::signatures);
}

std::string resign_parents(const std::vector<ChainLayer>& parents, const std::function<void(int)>& sign) {
  std::string rebound;  // the new signature's SHA-256 of the layer re-signed last
  for (auto it = parents.rbegin(); it != parents.rend(); ++it) {
    if (!rebound.empty()) {
      CheckpointMetadata metadata = it->metadata;
      metadata.chain->parent_signature_sha256 = rebound;
      metadata.save(it->dir.get());
    }
    sign(it->dir.get());
    rebound = signature_sha256(it->dir.get());
  }
  return rebound;
}

}  // namespace nucleus::checkpoint
