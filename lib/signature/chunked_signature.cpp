#include "signature/chunked_signature.hpp"

#include <sodium.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <type_traits>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"
#include "signature/hex.hpp"
#include "signature/signed_manifest.hpp"
#include "signature/sodium.hpp"

namespace nucleus::checkpoint {

namespace {

Error malformed(std::string_view what) {
  return Error(Status::integrity, fmt::format("Checkpoint signature {} is malformed: {}", HmacTree::signature_file, what));
}

// Takes "KEY VALUE\n" off the front of text and returns VALUE.
std::string_view take_line(std::string_view& text, std::string_view key) {
  const auto end = text.find('\n');
  if (end == std::string_view::npos) throw malformed(fmt::format("the '{}' line is missing or unterminated", key));
  std::string_view line = text.substr(0, end);
  text.remove_prefix(end + 1);
  if (!line.starts_with(key) || line.size() <= key.size() || line[key.size()] != ' ')
    throw malformed(fmt::format("expected a '{}' line", key));
  return line.substr(key.size() + 1);
}

// Format 3's manifest: a line per file of its chunk digests, each as 64 lowercase hex digits.
std::vector<std::vector<Sha256::Digest>> parse_manifest(std::string_view text) {
  static_assert(std::is_same_v<Sha256::Digest, HmacSha256::Mac>, "digests are read as MACs are");
  constexpr std::size_t digits = 2 * std::tuple_size_v<Sha256::Digest>;
  // Checked whole before a line is kept, since an empty line costs its text one byte and the
  // manifest a vector.
  ManifestForm form;
  form.feed(text);
  std::vector<std::vector<Sha256::Digest>> manifest;
  manifest.reserve(form.finish());
  for (std::size_t end; (end = text.find('\n')) != std::string_view::npos; text.remove_prefix(end + 1)) {
    auto& chunks = manifest.emplace_back();
    chunks.reserve(end / digits);
    for (std::size_t at = 0; at < end; at += digits) chunks.push_back(*HmacSha256::from_hex(text.substr(at, digits)));
  }
  return manifest;
}

// The file the authenticated manifest lists at `index`, which a later walk must come to again.
const ManifestFile& listed_file(const SignedManifest& manifest, std::size_t index, const std::string& rel,
                                std::uint64_t size) {
  const auto& files = manifest.files();
  if (index >= files.size() || files[index].path != rel || files[index].size != size)
    throw Error(Status::integrity, fmt::format("checkpoint file '{}' changed during the integrity scan", rel));
  return files[index];
}

}  // namespace

void ManifestForm::feed(std::string_view text) {
  constexpr std::size_t digits = 2 * std::tuple_size_v<Sha256::Digest>;
  for (const char c : text) {
    if (!in_line_) {
      // A line per file, and no tree has more files than entries.
      if (lines_ == HmacTree::max_entries)
        throw malformed(fmt::format("the manifest has more than {} lines, one for each file of a tree of at most {} "
                                    "entries",
                                    HmacTree::max_entries, HmacTree::max_entries));
      in_line_ = true;
    }
    if (c != '\n') {
      not_hex_ = not_hex_ || ((c < '0' || c > '9') && (c < 'a' || c > 'f'));
      ++length_;
      continue;
    }
    if (length_ % digits != 0)
      throw malformed(fmt::format("manifest line {} is {} characters long, not {} hex digits for each chunk",
                                  lines_ + 1, length_, digits));
    if (not_hex_) throw malformed(fmt::format("manifest line {} is not lowercase hex digits", lines_ + 1));
    ++lines_;
    length_ = 0;
    in_line_ = false;
  }
}

std::size_t ManifestForm::finish() const {
  if (in_line_) throw malformed(fmt::format("manifest line {} is unterminated", lines_ + 1));
  return lines_;
}

std::uint64_t ChunkedSignature::max_manifest_text_size() {
  constexpr std::uint64_t digits = 64, head = 4096;
  return head + (HmacTree::max_total_bytes() / min_chunk_size + HmacTree::max_entries) * digits + HmacTree::max_entries;
}

std::string_view ChunkedSignature::header_of(SignatureFormat format) {
  if (format == SignatureFormat::chunked) return header;
  if (format == SignatureFormat::manifest) return manifest_header;
  throw Error(Status::invalid, fmt::format("signature format {} is not a chunked one", static_cast<int>(format)));
}

std::string ChunkedSignature::to_text() const {
  const std::string signed_by = kind == SignatureKind::ed25519
                                    ? fmt::format("{} {} {}", ed25519_line, Ed25519PublicKey::hex(key_id),
                                                  to_lower_hex(ed25519_signature))
                                    : fmt::format("{} {}", hmac_line, HmacSha256::to_hex(mac));
  std::string text = fmt::format("{}\nchunk-size {}\n{}\n", header_of(format), chunk_size, signed_by);
  if (format != SignatureFormat::manifest) return text;
  for (const auto& chunks : manifest) {
    for (const auto& digest : chunks) text += HmacSha256::to_hex(digest);
    text += '\n';
  }
  return text;
}

ChunkedSignature ChunkedSignature::parse(std::string_view text) {
  const auto first_end = text.find('\n');
  const std::string_view first = text.substr(0, first_end);
  ChunkedSignature s;
  if (first == manifest_header) {
    s.format = SignatureFormat::manifest;
  } else if (first != header) {
    // Quoted for the operator, but only as printable ASCII: the text is the checkpoint's, not ours.
    std::string shown(first.substr(0, 64));
    std::replace_if(shown.begin(), shown.end(), [](char c) { return c < 0x20 || c > 0x7e; }, '?');
    throw Error(Status::integrity,
                fmt::format("checkpoint is signed in the format '{}', which this library does not know (it knows "
                            "'{}', '{}' and nucleus-container's): verify it with the version that wrote it, or upgrade",
                            shown, header, manifest_header));
  }
  if (first_end == std::string_view::npos) throw malformed("the header line is unterminated");
  text.remove_prefix(first_end + 1);
  const std::string_view size = take_line(text, "chunk-size");
  const auto [end, ec] = std::from_chars(size.data(), size.data() + size.size(), s.chunk_size);
  if (ec != std::errc() || end != size.data() + size.size() || size.front() == '0' || !std::has_single_bit(s.chunk_size) ||
      s.chunk_size < min_chunk_size || s.chunk_size > max_chunk_size)
    throw malformed(fmt::format("chunk-size must be a power of two from {} to {}", min_chunk_size, max_chunk_size));
  if (text.starts_with(ed25519_line) && text.substr(ed25519_line.size()).starts_with(' ')) {
    s.kind = SignatureKind::ed25519;
    const std::string_view value = take_line(text, ed25519_line);
    const auto space = value.find(' ');
    const auto key_id = array_from_lower_hex<Ed25519PublicKey::id_size>(value.substr(0, space));
    const auto signature = space == std::string_view::npos
                               ? std::nullopt
                               : array_from_lower_hex<crypto_sign_BYTES>(value.substr(space + 1));
    if (!key_id || !signature)
      throw malformed(fmt::format("the ed25519 line must be a key id of {} and then a signature of {} lowercase hex "
                                  "digits, one space between them",
                                  2 * Ed25519PublicKey::id_size, 2 * crypto_sign_BYTES));
    s.key_id = *key_id;
    s.ed25519_signature = *signature;
  } else {
    const auto mac = HmacSha256::from_hex(take_line(text, hmac_line));
    if (!mac) throw malformed(fmt::format("hmac-sha256 must be {} lowercase hex digits", 2 * s.mac.size()));
    s.mac = *mac;
  }
  if (s.format == SignatureFormat::manifest) s.manifest = parse_manifest(text);
  else if (!text.empty()) throw malformed("unexpected text after the signature line");
  return s;
}

TreeKey VerifyingKeys::key_for(const ChunkedSignature& signature) const {
  if (signature.kind == SignatureKind::hmac_sha256) return hmac();
  if (!trusted_ || trusted_->id() != signature.key_id)
    trusted_ = (store_ ? *store_ : KeyStore()).trusted_key(signature.key_id);
  return *trusted_;
}

const HmacKey& VerifyingKeys::hmac() const {
  if (given_) return *given_;
  if (!KeyStore::accepts_hmac())
    throw Error(Status::integrity, "the checkpoint is signed with an HMAC key, and this host accepts Ed25519 "
                                   "signatures only (NUCLEUS_CHECKPOINT_SIGNERS=ed25519): have it signed with the "
                                   "sender's Ed25519 key (dump --sign ed25519) and trust that key here (trust add)");
  if (!loaded_) loaded_ = store_->load();
  return *loaded_;
}

ChunkedTreeMac::ChunkedTreeMac(TreeKey key, SignatureFormat format, std::uint64_t chunk_size) : key_(key) {
  if (const HmacKey* hmac = key.get<HmacKey>()) {
    mac_.emplace(hmac->bytes());
  } else {
    init_sodium();
    crypto_sign_init(&ed25519_);
    // The domain first: no Ed25519 message is ever the same bytes as an HMAC message.
    update(ed25519_domain.data(), ed25519_domain.size());
    update("", 1);
  }
  const std::string_view header = ChunkedSignature::header_of(format);
  update(header.data(), header.size());
  update("", 1);
  update_u64le(chunk_size);
}

void ChunkedTreeMac::update(const void* data, std::size_t size) {
  if (mac_) return mac_->update(data, size);
  crypto_sign_update(&ed25519_, static_cast<const unsigned char*>(data), size);
}

void ChunkedTreeMac::update_u64le(std::uint64_t value) {
  unsigned char bytes[8];
  for (unsigned char& byte : bytes) {
    byte = static_cast<unsigned char>(value);
    value >>= 8;
  }
  update(bytes, sizeof bytes);
}

void ChunkedTreeMac::sign(ChunkedSignature& signature) {
  signature.kind = key_.kind();
  if (mac_) {
    signature.mac = mac_->final();
    return;
  }
  const Ed25519SecretKey* secret = key_.get<Ed25519SecretKey>();
  if (!secret) throw Error(Status::internal, "an Ed25519 public key cannot sign");
  signature.key_id = secret->public_key().id();
  if (crypto_sign_final_create(&ed25519_, signature.ed25519_signature.data(), nullptr, secret->bytes().data()) != 0)
    throw Error(Status::internal, "libsodium could not make the Ed25519 signature");
}

void ChunkedTreeMac::check(const ChunkedSignature& signature) {
  if (signature.kind != key_.kind())
    throw Error(Status::integrity, "Checkpoint integrity verification failed: the signature is not of the key's kind");
  if (mac_) return require_same_mac(signature.mac, mac_->final());
  const Ed25519PublicKey* key = key_.get<Ed25519PublicKey>();
  if (!key || key->id() != signature.key_id)
    throw Error(Status::internal, "an Ed25519 signature is checked only with the public key it names");
  // A copy: crypto_sign_final_verify takes the signature as writable.
  ChunkedSignature::Ed25519Signature copy = signature.ed25519_signature;
  if (crypto_sign_final_verify(&ed25519_, copy.data(), key->bytes().data()) != 0)
    throw Error(Status::integrity,
                fmt::format("Checkpoint integrity verification failed: Ed25519 signature mismatch (the folder changed "
                            "since key {} signed it, or that key never did)",
                            key->id_hex()));
}

void ChunkedTreeMac::folder(std::string_view rel) { path_record('D', rel); }

void ChunkedTreeMac::file(std::string_view rel, std::uint64_t size, const Sha256::Digest& file_digest) {
  path_record('F', rel);
  update_u64le(size);
  update(file_digest.data(), file_digest.size());
}

void ChunkedTreeMac::link(std::string_view rel, std::string_view target) {
  path_record('L', rel);
  update_u64le(target.size());
  update(target.data(), target.size());
}

void ChunkedTreeMac::path_record(char kind, std::string_view rel) {
  update(&kind, 1);
  update_u64le(rel.size());
  update(rel.data(), rel.size());
}

std::string read_signature_text(int dir_fd) {
  const std::uint64_t max_size = ChunkedSignature::max_manifest_text_size();
  std::string text;
  try {
    text = read_file_at(dir_fd, HmacTree::signature_file, max_size, "checkpoint signature");
  } catch (const Error& e) {
    if (e.status() == Status::not_found)
      throw Error(Status::integrity, fmt::format("checkpoint is not signed: it has no {}", HmacTree::signature_file));
    throw Error(Status::integrity, fmt::format("cannot read the checkpoint's signature: {}", e.what()));
  }
  // Only a manifest makes the file long: the other formats keep their bound.
  constexpr std::size_t short_max = ChunkedSignature::max_text_size_without_manifest;
  if (text.size() > short_max && !text.starts_with(ChunkedSignature::manifest_header))
    throw Error(Status::integrity,
                fmt::format("cannot read the checkpoint's signature: {} is {} bytes, more than the {} allowed for a "
                            "signature without a manifest",
                            HmacTree::signature_file, text.size(), short_max));
  return text;
}

void require_signable(SignatureFormat format, SignatureKind kind) {
  if (format == SignatureFormat::seed && kind != SignatureKind::hmac_sha256)
    throw Error(Status::invalid, "the seed signature format (1) is HMAC-only: sign with Ed25519 in the chunked (2) or "
                                 "manifest (3) format");
}

void require_same_mac(const HmacSha256::Mac& signed_mac, const HmacSha256::Mac& computed) {
  if (sodium_memcmp(signed_mac.data(), computed.data(), computed.size()) != 0)
    throw Error(Status::integrity,
                "Checkpoint integrity verification failed: HMAC mismatch (the folder changed since it was signed, or "
                "it was signed with another key)");
}

namespace {

// Feeds `mac` the records of the folder at root_fd; returns its manifest when one is wanted (format
// 3, no expected manifest). See chunked_signature_of and verify_chunked.
std::vector<std::vector<Sha256::Digest>> feed_records(int root_fd, ChunkedTreeMac& mac, SignatureFormat format,
                                                      std::uint64_t chunk_size, const HmacTree::Progress& progress,
                                                      StartedDigests* started, TwinChunks* twins,
                                                      const SignedManifest* expected) {
  std::vector<std::vector<Sha256::Digest>> manifest;
  const unsigned threads = hash_threads();
  std::uint64_t hashed = 0;
  const ChunkedFileDigest::BytesHashed done = [&](std::uint64_t bytes) {
    hashed += bytes;
    if (progress) progress(hashed);
  };
  std::size_t files = 0;
  walk_checkpoint_files(root_fd, [&](int fd, const struct stat& st, const std::string& rel) {
    if (S_ISDIR(st.st_mode)) return mac.folder(rel);
    if (S_ISLNK(st.st_mode)) return mac.link(rel, read_link_fd(fd, rel));
    const auto size = static_cast<std::uint64_t>(st.st_size);
    const ManifestFile* listed = expected ? &listed_file(*expected, files++, rel, size) : nullptr;
    ChunkedFileDigest digest(chunk_size);
    if (started) {
      // Begun while the file was written; unusable in another chunk size, or if the file is now
      // shorter than what was hashed.
      // Taken out, so that a second name for the same file (a hard link) starts afresh.
      if (auto node = started->extract({st.st_dev, st.st_ino});
          !node.empty() && node.mapped().chunk_size() == chunk_size && node.mapped().hashed() <= size)
        digest = std::move(node.mapped());
    }
    const Sha256::Digest d =
        digest.finish(fd, size, threads, rel, listed ? checking_chunks(*listed, chunk_size, digest, done) : done, twins);
    mac.file(rel, size, d);
    if (format == SignatureFormat::manifest && !expected) manifest.push_back(digest.chunk_digests());
  }, HmacTree::signature_file, HmacTree::max_total_bytes());
  return manifest;
}

}  // namespace

ChunkedSignature chunked_signature_of(int root_fd, TreeKey key, SignatureFormat format, std::uint64_t chunk_size,
                                      const HmacTree::Progress& progress, StartedDigests* started, TwinChunks* twins) {
  ChunkedSignature s;
  s.format = format;
  s.chunk_size = chunk_size;
  ChunkedTreeMac mac(key, format, chunk_size);
  s.manifest = feed_records(root_fd, mac, format, chunk_size, progress, started, twins, nullptr);
  mac.sign(s);
  return s;
}

void verify_chunked(int root_fd, TreeKey key, const ChunkedSignature& signature, const HmacTree::Progress& progress,
                    const SignedManifest* expected) {
  ChunkedTreeMac mac(key, signature.format, signature.chunk_size);
  (void)feed_records(root_fd, mac, signature.format, signature.chunk_size, progress, nullptr, nullptr, expected);
  mac.check(signature);
}

HmacSha256::Mac chunked_tree_mac(int root_fd, const HmacKey& key, std::uint64_t chunk_size,
                                 const HmacTree::Progress& progress, StartedDigests* started, TwinChunks* twins) {
  return chunked_signature_of(root_fd, key, SignatureFormat::chunked, chunk_size, progress, started, twins).mac;
}

void sign_chunked(int root_fd, TreeKey key, const HmacTree::Progress& progress, StartedDigests* started,
                  TwinChunks* twins, SignatureFormat format) {
  // A stale temp file from an interrupted sign must not become part of what is signed.
  remove_stale_temp_at(root_fd, HmacTree::signature_file);
  const ChunkedSignature s =
      chunked_signature_of(root_fd, key, format, ChunkedSignature::default_chunk_size, progress, started, twins);
  write_file_atomic_at(root_fd, HmacTree::signature_file, s.to_text(), 0600);
}

}  // namespace nucleus::checkpoint
