// Pre-dump chains: incremental checkpoints (CriuRuntime::predump, CriuOptions::parent). Each layer
// is a signed checkpoint of its own whose signature binds its parent's; the README's "Pre-dump
// chains" says how.
#pragma once

#include <cstddef>
#include <filesystem>

#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>

namespace nucleus::checkpoint {

class NC_EXPORT CheckpointChain {
 public:
  static constexpr std::size_t max_layers = 64;  // a layer and all its parents

  // HmacTree::verify of the checkpoint at dir and, if it is a layer, of each parent in turn: each
  // link the one its signed metadata names, each parent a pre-dump beside it whose signature is the
  // one its child bound. A checkpoint without a parent is verified alone. Throws
  // Error(Status::integrity) naming the layer at fault. Progress counts the bytes of all layers.
  static void verify(const std::filesystem::path& dir, const KeyStore& store, const HmacTree::Progress& progress = {});
};

}  // namespace nucleus::checkpoint
