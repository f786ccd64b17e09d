// Pre-dump chains. A layer is a signed checkpoint of its own whose images hold only the memory
// changed since its parent, a pre-dump in a sibling folder that CRIU reaches through the layer's
// images/parent link ("../../NAME/images"). The layer's signed metadata names the parent and binds
// the SHA-256 of the parent's checkpoint.hmac, and its signature covers the link: a layer cannot
// be re-parented, nor its parent swapped, changed or re-signed, without failing verification.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <nucleus/checkpoint/chain.hpp>
#include <nucleus/checkpoint/metadata.hpp>

#include "fs/unique_fd.hpp"

namespace nucleus::checkpoint {

inline constexpr std::size_t max_chain_layers = CheckpointChain::max_layers;

// One verified layer of a chain: its folder (open), its name as the chain reaches it, its metadata
// as signed, and the SHA-256 (hex) of its checkpoint.hmac as verified.
struct ChainLayer {
  UniqueFd dir;
  std::string name;
  CheckpointMetadata metadata;
  std::string signature_sha256;
};

// How a chain is checked beside its signatures. `criu_reads`: CRIU will follow the links by name
// (a restore, or a dump on a parent), so each layer must be the caller's alone (require_private_tree,
// no writer) and so must the folder holding them (nobody else can rename a sibling in or out).
// `exports`: the library itself follows the links by name and sends what it finds (export_chain),
// so the folder holding the layers must be private (else its other users could put a layer of their
// own beside another's checkpoint, and name that one as its parent). `signatures`: signatures and
// links only.
enum class ChainUse { signatures, exports, criu_reads };

// Verifies the checkpoint at dir_fd (shown as `shown` in messages) with `verify_layer` (which
// verifies one folder's signature, whatever its format), and if it is a layer, each parent in turn:
// its link is the one its metadata names, the parent is the sibling folder of that name, and the
// parent's checkpoint.hmac is the one the layer bound; a parent must be a pre-dump. At most
// max_chain_layers layers; a folder met twice (a loop) is refused. Returns the layers, the given
// one first (but for `criu_reads`, a folder without a parent link is verified alone, its metadata
// not read). Status::integrity for a chain that does not verify, naming the layer and what to do.
std::vector<ChainLayer> verify_chain(int dir_fd, std::string_view shown, const std::function<void(int)>& verify_layer,
                                     ChainUse use);

// True if the checkpoint at dir_fd is a layer: it holds images/parent (verified or not).
bool has_parent_link(int dir_fd);

// The lowercase hex SHA-256 of dir_fd/checkpoint.hmac (read within its bound).
std::string signature_sha256(int dir_fd);
// The same of a signature's text.
std::string signature_text_sha256(std::string_view text);

// After CRIU's auto-dedup punched holes in the parents' pages images (verified before CRIU ran):
// re-signs each, the oldest first, each rebound to its parent's new signature, with `sign`.
// Returns the SHA-256 of the newest parent's new checkpoint.hmac, for the new layer to bind.
std::string resign_parents(const std::vector<ChainLayer>& parents, const std::function<void(int)>& sign);

}  // namespace nucleus::checkpoint
