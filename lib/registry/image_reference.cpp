#include "registry/image_reference.hpp"

#include <algorithm>

#include "checkpoint/utf8.hpp"

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

namespace nucleus::checkpoint::registry {

namespace {

constexpr std::string_view reference_form = "HOST[:PORT]/NAME[:TAG] or HOST[:PORT]/NAME@sha256:DIGEST";

bool is_lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// The distribution spec's path component: [a-z0-9]+ joined by '.', '_', '__' or '-'s.
bool is_name_component(std::string_view part) {
  if (part.empty() || !is_lower_alnum(part.front()) || !is_lower_alnum(part.back())) return false;
  return std::all_of(part.begin(), part.end(),
                     [](char c) { return is_lower_alnum(c) || c == '.' || c == '_' || c == '-'; });
}

// A DNS name or IPv4 address, then an optional port of 1 to 5 digits.
bool is_host(std::string_view host) {
  const auto colon = host.find(':');
  const std::string_view name = host.substr(0, colon);
  if (name.empty() || name.size() > 253) return false;
  const bool name_ok = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-';
  });
  if (!name_ok || name.front() == '-' || name.front() == '.') return false;
  if (colon == std::string_view::npos) return true;
  const std::string_view port = host.substr(colon + 1);
  return !port.empty() && port.size() <= 5 &&
         std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The distribution spec's tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
bool is_tag(std::string_view tag) {
  const auto word = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  };
  return !tag.empty() && tag.size() <= 128 && word(tag.front()) &&
         std::all_of(tag.begin(), tag.end(), [&](char c) { return word(c) || c == '.' || c == '-'; });
}

}  // namespace

std::string quotable(std::string_view text) {
  std::string shown = to_valid_utf8(text.substr(0, 256));
  std::replace_if(
      shown.begin(), shown.end(), [](char c) { return c >= 0 && c < 0x20; }, '?');
  return shown;
}

bool is_sha256_digest(std::string_view text) {
  constexpr std::string_view prefix = "sha256:";
  if (text.size() != prefix.size() + 64 || !text.starts_with(prefix)) return false;
  text.remove_prefix(prefix.size());
  return std::all_of(text.begin(), text.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

ImageReference ImageReference::parse(std::string_view text) {
  const auto invalid = [&](std::string_view why) {
    return Error(Status::invalid,
                 fmt::format("'{}' is not an image reference: {} (write {})", quotable(text), why, reference_form));
  };
  if (text.starts_with("docker://")) text.remove_prefix(9);  // as skopeo writes them
  if (text.size() > 1024) throw invalid("it is longer than 1024 bytes");
  const auto slash = text.find('/');
  if (slash == std::string_view::npos) throw invalid("it names no registry host");
  ImageReference ref;
  ref.host = std::string(text.substr(0, slash));
  if (!is_host(ref.host))
    throw invalid(fmt::format("'{}' is not a host name or address with an optional port", quotable(ref.host)));
  std::string_view rest = text.substr(slash + 1);
  if (const auto at = rest.find('@'); at != std::string_view::npos) {
    ref.digest = std::string(rest.substr(at + 1));
    if (!is_sha256_digest(ref.digest)) throw invalid("the digest after '@' is not sha256: and 64 lowercase hex digits");
    rest = rest.substr(0, at);
  } else if (const auto colon = rest.rfind(':');
             colon != std::string_view::npos && rest.find('/', colon) == std::string_view::npos) {
    ref.tag = std::string(rest.substr(colon + 1));
    if (!is_tag(ref.tag))
      throw invalid(fmt::format("'{}' is not a tag (letters, digits, '_', '.', '-'; at most 128)", quotable(ref.tag)));
    rest = rest.substr(0, colon);
  } else {
    ref.tag = "latest";
  }
  for (std::string_view part = rest;;) {
    const auto next = part.find('/');
    if (!is_name_component(part.substr(0, next)))
      throw invalid("the image name must be lowercase letters and digits, separated by '.', '_', '-' or '/'");
    if (next == std::string_view::npos) break;
    part.remove_prefix(next + 1);
  }
  ref.repository = std::string(rest);
  return ref;
}

std::string ImageReference::to_string() const {
  return digest.empty() ? fmt::format("{}/{}:{}", host, repository, tag)
                        : fmt::format("{}/{}@{}", host, repository, digest);
}

}  // namespace nucleus::checkpoint::registry
