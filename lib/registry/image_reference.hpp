// An image reference as podman and skopeo write it after "docker://": HOST[:PORT]/NAME[:TAG] or
// HOST[:PORT]/NAME@sha256:HEX. The host is always given (no default registry, no search list:
// which registry a checkpoint goes to is never guessed).
#pragma once

#include <string>
#include <string_view>

namespace nucleus::checkpoint::registry {

struct ImageReference {
  std::string host;        // with ":PORT" if given
  std::string repository;  // NAME: lowercase components joined by '/'
  std::string tag;         // empty when the reference names a digest
  std::string digest;      // "sha256:" + 64 lowercase hex digits, or empty

  // Throws Error(Status::invalid) saying what is wrong with `text` and what a reference looks like.
  static ImageReference parse(std::string_view text);
  // What the distribution API's manifest URL ends with: the tag or the digest.
  const std::string& manifest_name() const noexcept { return digest.empty() ? tag : digest; }
  std::string to_string() const;
};

// Text from the registry, an image or the caller, as an error message may quote it: valid UTF-8,
// control characters as '?', at most 256 bytes of it.
std::string quotable(std::string_view text);

// Whether `text` is "sha256:" and 64 lowercase hex digits, the only digest this library accepts.
bool is_sha256_digest(std::string_view text);

}  // namespace nucleus::checkpoint::registry
