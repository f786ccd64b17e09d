// Checkpoints as OCI images in a container registry, as podman (`container checkpoint
// --create-image`) and CRI-O move them between hosts: one layer, a tar of the checkpoint folder
// with its checkpoint.hmac, so that what is pulled verifies wherever it went on the way; the
// README's "Registry images" says what is pushed and what a pull checks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <nucleus/checkpoint/key_store.hpp>
#include <nucleus/checkpoint_export.h>

namespace nucleus::checkpoint {

struct RegistryOptions {
  // Speak plain http to the registry (skopeo's --tls-verify=false): a registry on localhost or a
  // lab network. Otherwise https with the system's certificate authorities, and redirects to https
  // only.
  bool insecure = false;
};

// What push_image published: the manifest's and the layer's digests ("sha256:" + 64 hex digits).
struct PushedImage {
  std::string manifest_digest;
  std::string layer_digest;
  std::uint64_t layer_size = 0;
};

// Publishes the checkpoint folder `dir` as the image `reference` ("HOST[:PORT]/NAME[:TAG]", the
// tag "latest" if none): the folder is verified with the store's keys first (an unsigned or
// changed checkpoint is not published; Status::integrity), then written as one uncompressed tar
// layer, a config and a manifest annotated from its metadata.json. Only a folder signed in format 3
// is published (a pull checks every chunk as it arrives): formats 1 and 2 are Status::invalid,
// saying how to re-sign. A layer of a pre-dump chain (which has a parent) is Status::invalid. Registry errors are Status::io (unreachable,
// refused), Status::permission (401, 403) or Status::not_found (404), quoting the registry.
// Throws Error(Status::unsupported) if the library was built without registry support.
NC_EXPORT PushedImage push_image(const std::filesystem::path& dir, const std::string& reference,
                                 const RegistryOptions& options = {}, const KeyStore& store = KeyStore());

// Pulls the image `reference` ("HOST[:PORT]/NAME[:TAG]" or "HOST[:PORT]/NAME@sha256:HEX") into the
// new checkpoint folder `dir` (absent, or an empty folder): the manifest (at most 4 MiB, an OCI or
// Docker image manifest whose digest is checked when the reference names one) must list exactly one
// tar layer, plain, gzip or zstd; the layer is read as it arrives (received only as far as it is
// read, never stored whole; its size and sha256 checked against the manifest to its end) into a
// private staging folder beside dir, as import_checkpoint reads a stream: its checkpoint.hmac
// (format 3) and its listing first, authenticated with the store's keys or the key given before a
// byte is written, then only the listed folders and files, each of its listed size and each chunk
// checked before it is written (modes 0700/0600), and renamed into place once the whole layer
// matched its digest. Anything else is refused with Status::integrity and leaves nothing behind.
NC_EXPORT void pull_image(const std::string& reference, const std::filesystem::path& dir,
                          const RegistryOptions& options = {}, const KeyStore& store = KeyStore());
NC_EXPORT void pull_image(const std::string& reference, const std::filesystem::path& dir,
                          const RegistryOptions& options, const HmacKey& key);

}  // namespace nucleus::checkpoint
