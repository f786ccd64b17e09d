// The signature parsers, through HmacTree::verify: a small fixed tree whose checkpoint.hmac holds
// the input. verify must succeed or throw Error(Status::integrity), and it must succeed exactly
// when the input is the tree's seed-format MAC (64 lowercase hex digits) with only " \t\r\n"
// around it, or exactly the tree's chunked-format or manifest-format signature text. The chunked
// parser (versions 2 and 3, manifest lines included) is also run on the input directly: what it
// accepts must be in its one canonical form, byte for byte. SignedManifest::load, given the same,
// must throw nothing but Status::integrity, and authenticate exactly the tree's manifest text.
#include <fcntl.h>
#include <sys/stat.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>

#include <nucleus/checkpoint/hmac_tree.hpp>

#include "signature/chunked_signature.hpp"
#include "fs/unique_fd.hpp"
#include "signature/signed_manifest.hpp"
#include "fuzz_support.hpp"

namespace {

using nc_fuzz::expect;
using nucleus::checkpoint::ChunkedSignature;
using nucleus::checkpoint::HmacTree;
using nucleus::checkpoint::SignatureFormat;
using nucleus::checkpoint::SignedManifest;

std::string_view trim(std::string_view s) {
  const auto ws = std::string_view(" \t\r\n");
  const auto first = s.find_first_not_of(ws);
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(ws) - first + 1);
}

struct Tree {
  nc_fuzz::ScratchDir dir;
  std::string seed_mac;       // the seed format's 64 hex digits
  std::string chunked_text;   // the chunked format's checkpoint.hmac, as sign writes it
  std::string manifest_text;  // the manifest format's
  Tree() {
    ::mkdir((dir.path() / "images").c_str(), 0700);
    nc_fuzz::write_file(dir.path() / "images/pages-1.img", "pages");
    nc_fuzz::write_file(dir.path() / "metadata.json", "{}\n");
    nc_fuzz::write_file(dir.path() / "dump.log", "");
    seed_mac = HmacTree::compute(dir.path(), nc_fuzz::fixed_key());
    chunked_text = signed_as(SignatureFormat::chunked);
    expect(chunked_text.starts_with(ChunkedSignature::header), "sign(chunked) wrote no chunked signature");
    manifest_text = signed_as(SignatureFormat::manifest);
    expect(manifest_text.starts_with(ChunkedSignature::manifest_header), "sign(manifest) wrote no manifest signature");
  }

  std::string signed_as(SignatureFormat format) const {
    HmacTree::sign_as(dir.path(), nc_fuzz::fixed_key(), format);
    std::ifstream in(dir.path() / HmacTree::signature_file, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const Tree tree;
  const std::string_view input(reinterpret_cast<const char*>(data), size);

  const auto parse_status = nc_fuzz::status_of([&] {
    expect(ChunkedSignature::parse(input).to_text() == input, "parse accepted a text that to_text does not give back");
  });
  expect(!parse_status || *parse_status == nucleus::checkpoint::Status::integrity,
         "parse threw an Error other than Status::integrity");

  nc_fuzz::write_file(tree.dir.path() / HmacTree::signature_file, input);
  const auto status = nc_fuzz::status_of([&] { HmacTree::verify(tree.dir.path(), nc_fuzz::fixed_key()); });
  // Longer than 4096 bytes, only a manifest signature is read at all.
  const bool should_pass =
      input == tree.manifest_text || (size <= ChunkedSignature::max_text_size_without_manifest &&
                                      (trim(input) == tree.seed_mac || input == tree.chunked_text));
  if (status) {
    expect(*status == nucleus::checkpoint::Status::integrity, "verify threw an Error other than Status::integrity");
    expect(!should_pass, "verify refused the tree's own signature");
  } else {
    expect(should_pass, "verify accepted a signature that is not the tree's");
  }

  std::optional<SignedManifest> manifest;
  const auto load_status = nc_fuzz::status_of([&] {
    const nucleus::checkpoint::UniqueFd fd(::open(tree.dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    manifest = SignedManifest::load(fd.get(), nc_fuzz::fixed_key());
  });
  expect(!load_status || *load_status == nucleus::checkpoint::Status::integrity,
         "SignedManifest::load threw an Error other than Status::integrity");
  expect(manifest.has_value() == (input == tree.manifest_text),
         "SignedManifest::load authenticated a manifest that is not the tree's, or refused the tree's own");
  return 0;
}
