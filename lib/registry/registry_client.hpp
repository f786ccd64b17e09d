// The OCI distribution API, as much of it as pushing and pulling one image takes, over libcurl:
// blobs uploaded monolithically (POST, then PUT with the digest), manifests put and got with the
// OCI and Docker media types, blobs received as the caller takes them. Plain http only when the
// options say so; redirects (a registry's blob storage) are followed for GET only, never to plain
// http from https. Anonymous access only: a registry that asks for credentials is refused, saying
// so.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include <nucleus/checkpoint/registry.hpp>

#include "registry/image_reference.hpp"

namespace nucleus::checkpoint::registry {

inline constexpr std::string_view oci_manifest_type = "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view docker_manifest_type = "application/vnd.docker.distribution.manifest.v2+json";

class RegistryClient {
 public:
  RegistryClient(const ImageReference& ref, const RegistryOptions& options);

  struct Manifest {
    std::string body;
    std::string content_type;  // without parameters
  };
  // The manifest the reference names, asking for OCI or Docker image manifests (or indexes, which
  // the caller refuses by name); Status::integrity
  // if it is larger than max_size.
  Manifest get_manifest(std::size_t max_size) const;
  class BlobStream;
  // The blob, received as its bytes are taken (BlobStream::next).
  BlobStream get_blob(const std::string& digest) const;
  bool has_blob(const std::string& digest) const;
  // Uploads a blob of `size` bytes read from fd (from offset 0) or held in `data`.
  void put_blob(const std::string& digest, int fd, std::uint64_t size) const;
  void put_blob(const std::string& digest, std::string_view data) const;
  // Puts the manifest under the reference's tag; returns the digest the registry reports, if any.
  std::string put_manifest(std::string_view manifest, std::string_view media_type) const;

 private:
  struct Request;
  struct Response;
  struct Transfer;
  Response perform(Request& request) const;
  std::string url(std::string_view path) const;
  void upload(const std::string& digest, Request& put) const;

  ImageReference ref_;
  RegistryOptions options_;
};

// A blob's bytes, received only as the caller takes them (curl's multi interface, driven by next):
// ahead of the caller, no more than 1 MiB and what the kernel's socket buffers hold, so that the
// caller's limits on what it reads bound what a registry can make it receive. Destroyed, it drops
// the connection.
class RegistryClient::BlobStream {
 public:
  BlobStream(BlobStream&&) noexcept;
  ~BlobStream();
  // The next bytes, empty at the blob's end; valid until the next call. A failed transfer is
  // Status::io; an answer other than 200 is refused as other requests' are.
  std::span<const char> next();

 private:
  friend class RegistryClient;
  struct State;
  explicit BlobStream(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace nucleus::checkpoint::registry
