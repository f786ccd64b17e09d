// push_image and pull_image: a checkpoint as an OCI image (one tar layer, a config, a manifest
// annotated as podman and CRI-O annotate checkpoint images), and back into a verified folder.
#include <nucleus/checkpoint/registry.hpp>

#include <fcntl.h>

#include <ctime>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/metadata.hpp>

#include "fs/checkpoint_dir.hpp"
#include "fs/fs_util.hpp"
#include "registry/image_reference.hpp"
#include "registry/layer_tar.hpp"
#include "registry/registry_client.hpp"
#include "signature/hex.hpp"
#include "signature/sha256.hpp"
#include "transfer/listing.hpp"

namespace nucleus::checkpoint {

using namespace registry;

namespace {

constexpr std::string_view config_type = "application/vnd.oci.image.config.v1+json";
constexpr std::string_view tar_layer_type = "application/vnd.oci.image.layer.v1.tar";
// The OCI image spec's advice: a registry client need not accept a manifest larger than 4 MiB.
constexpr std::size_t max_manifest_size = 4 << 20;
// What a tar adds to the bytes of its files: a header, a pax header and padding per entry (the
// signature and the listing that come first aside).
constexpr std::uint64_t tar_bytes_per_entry = 3 * 512;

std::string sha256_digest(std::string_view bytes) {
  Sha256 sha;
  sha.update(bytes.data(), bytes.size());
  return "sha256:" + to_lower_hex(sha.final());
}

std::string rfc3339(std::uint64_t seconds) {
  const std::time_t t = static_cast<std::time_t>(seconds);
  std::tm utc{};
  ::gmtime_r(&t, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

// GOARCH, as image configs name architectures.
constexpr const char* image_architecture() {
#if defined(__x86_64__)
  return "amd64";
#elif defined(__aarch64__)
  return "arm64";
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  return "ppc64le";
#elif defined(__s390x__)
  return "s390x";
#elif defined(__riscv) && __riscv_xlen == 64
  return "riscv64";
#else
  return "unknown";
#endif
}

using Annotations = std::vector<std::pair<std::string, std::string>>;

// The manifest's annotations: those podman and CRI-O read from checkpoint images, and ours. They
// are taken from the verified metadata.json, but nothing on pull trusts them: the layer's own
// metadata.json is what is signed.
Annotations annotations_of(const CheckpointMetadata& metadata, int dir_fd) {
  const std::string& name = metadata.container_name.empty() ? metadata.container_id : metadata.container_name;
  const CheckpointSigner signer = HmacTree::signer_of(dir_fd);
  const SignatureFormat format = HmacTree::format_of(dir_fd);
  return {
      {"io.podman.annotations.checkpoint.name", name},
      {"io.kubernetes.cri-o.annotations.checkpoint.name", name},
      {"org.opencontainers.image.created", rfc3339(metadata.checkpoint_at)},
      {"io.nucleus.checkpoint.container-id", metadata.container_id},
      {"io.nucleus.checkpoint.version", metadata.version},
      {"io.nucleus.checkpoint.signature-format", format == SignatureFormat::seed      ? "seed"
                                                 : format == SignatureFormat::chunked ? "chunked"
                                                                                      : "manifest"},
      {"io.nucleus.checkpoint.signer",
       signer.kind == SignatureKind::ed25519 ? "ed25519:" + signer.key_id : std::string("hmac-sha256")},
  };
}

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void write_string(Writer& w, std::string_view s) { w.String(s.data(), static_cast<rapidjson::SizeType>(s.size())); }

void write_descriptor(Writer& w, std::string_view media_type, const std::string& digest, std::uint64_t size) {
  w.StartObject();
  write_string(w, "mediaType");
  write_string(w, media_type);
  write_string(w, "digest");
  write_string(w, digest);
  write_string(w, "size");
  w.Uint64(size);
  w.EndObject();
}

std::string image_config(const CheckpointMetadata& metadata, const std::string& layer_digest) {
  rapidjson::StringBuffer out;
  Writer w(out);
  const std::string created = rfc3339(metadata.checkpoint_at);
  w.StartObject();
  write_string(w, "created");
  write_string(w, created);
  write_string(w, "architecture");
  write_string(w, image_architecture());
  write_string(w, "os");
  write_string(w, "linux");
  write_string(w, "rootfs");
  w.StartObject();
  write_string(w, "type");
  write_string(w, "layers");
  write_string(w, "diff_ids");
  w.StartArray();
  write_string(w, layer_digest);  // the layer is not compressed: its digest is its diff id
  w.EndArray();
  w.EndObject();
  write_string(w, "history");
  w.StartArray();
  w.StartObject();
  write_string(w, "created");
  write_string(w, created);
  write_string(w, "created_by");
  write_string(w, "nucleus-checkpoint push");
  w.EndObject();
  w.EndArray();
  w.EndObject();
  return {out.GetString(), out.GetSize()};
}

std::string image_manifest(const std::string& config, const LayerBlob& layer, const Annotations& annotations) {
  rapidjson::StringBuffer out;
  Writer w(out);
  w.StartObject();
  write_string(w, "schemaVersion");
  w.Int(2);
  write_string(w, "mediaType");
  write_string(w, oci_manifest_type);
  write_string(w, "config");
  write_descriptor(w, config_type, sha256_digest(config), config.size());
  write_string(w, "layers");
  w.StartArray();
  write_descriptor(w, tar_layer_type, layer.digest, layer.size);
  w.EndArray();
  write_string(w, "annotations");
  w.StartObject();
  for (const auto& [key, value] : annotations) {
    write_string(w, key);
    write_string(w, value);
  }
  w.EndObject();
  w.EndObject();
  return {out.GetString(), out.GetSize()};
}

struct LayerRef {
  std::string digest;
  std::uint64_t size = 0;
  LayerCompression compression = LayerCompression::none;
};

// The one layer of the manifest, checked: an image manifest (OCI or Docker) with exactly one tar
// layer, plain, gzip or zstd, of a size a checkpoint can have.
LayerRef layer_of(const RegistryClient::Manifest& manifest, const std::string& reference) {
  const auto refuse = [&](std::string_view why) {
    return Error(Status::integrity,
                 fmt::format("the manifest of {} is not a checkpoint image's: {}; refused", reference, why));
  };
  rapidjson::Document doc;
  if (doc.Parse(manifest.body.data(), manifest.body.size()).HasParseError() || !doc.IsObject())
    throw refuse("it is not a JSON object");
  const auto string_field = [&](const rapidjson::Value& v, const char* name) -> std::string {
    if (!v.IsObject() || !v.HasMember(name)) return {};
    if (!v[name].IsString()) throw refuse(fmt::format("its \"{}\" is not a string", name));
    return {v[name].GetString(), v[name].GetStringLength()};
  };
  std::string media_type = string_field(doc, "mediaType");
  if (media_type.empty()) media_type = manifest.content_type;
  if (media_type.find("index") != std::string::npos || media_type.find("manifest.list") != std::string::npos)
    throw refuse(
        fmt::format("it is an image index ({}), a list of images for several platforms: name one image's "
                    "manifest, by its digest",
                    quotable(media_type)));
  if (media_type != oci_manifest_type && media_type != docker_manifest_type)
    throw refuse(fmt::format("its media type is '{}', not {} or {}", quotable(media_type), oci_manifest_type,
                             docker_manifest_type));
  if (!manifest.content_type.empty() && manifest.content_type != media_type)
    throw refuse(fmt::format("the registry serves it as '{}' but it says it is '{}'", quotable(manifest.content_type),
                             quotable(media_type)));
  if (!doc.HasMember("schemaVersion") || !doc["schemaVersion"].IsInt() || doc["schemaVersion"].GetInt() != 2)
    throw refuse("its schemaVersion is not 2");
  if (!doc.HasMember("layers") || !doc["layers"].IsArray() || doc["layers"].Size() != 1)
    throw refuse("it does not list exactly one layer (a checkpoint image holds its folder in one layer)");
  const rapidjson::Value& layer = doc["layers"][0];
  LayerRef ref;
  const std::string layer_type = string_field(layer, "mediaType");
  if (layer_type == tar_layer_type || layer_type == "application/vnd.docker.image.rootfs.diff.tar")
    ref.compression = LayerCompression::none;
  else if (layer_type == "application/vnd.oci.image.layer.v1.tar+gzip" ||
           layer_type == "application/vnd.docker.image.rootfs.diff.tar.gzip")
    ref.compression = LayerCompression::gzip;
  else if (layer_type == "application/vnd.oci.image.layer.v1.tar+zstd")
    ref.compression = LayerCompression::zstd;
  else
    throw refuse(fmt::format("its layer's media type '{}' is not a tar, plain, gzip or zstd", quotable(layer_type)));
  ref.digest = string_field(layer, "digest");
  if (!is_sha256_digest(ref.digest)) throw refuse("its layer's digest is not sha256: and 64 lowercase hex digits");
  if (!layer.HasMember("size") || !layer["size"].IsUint64()) throw refuse("its layer has no valid size");
  ref.size = layer["size"].GetUint64();
  const std::uint64_t max_size = HmacTree::max_total_bytes() + HmacTree::max_entries * tar_bytes_per_entry +
                                 ChunkedSignature::max_manifest_text_size() + transfer::max_listing_bytes;
  if (ref.size > max_size)
    throw refuse(
        fmt::format("its layer is {} bytes, more than the {} a checkpoint's may be; if it is genuine, raise "
                    "the limit: set NUCLEUS_CHECKPOINT_MAX_BYTES",
                    ref.size, max_size));
  if (layer.HasMember("urls")) throw refuse("its layer is to be fetched from elsewhere (\"urls\")");
  return ref;
}

// The layer's bytes as the layer reader takes them, hashed and counted: a byte past the size the
// manifest names is refused at once, and at the end they must be that size and digest.
class LayerDownload {
 public:
  LayerDownload(const RegistryClient& client, const LayerRef& layer, const std::string& name)
      : blob_(client.get_blob(layer.digest)), layer_(layer), name_(name) {}

  // The next bytes, empty at the blob's end once it is verified.
  std::span<const char> next() {
    const std::span<const char> bytes = blob_.next();
    if (bytes.empty()) {
      if (!verified_) verify();
      return bytes;
    }
    if (bytes.size() > layer_.size - received_)
      refuse(fmt::format("the layer {} of {} is larger than the {} bytes its manifest says; refused", layer_.digest,
                         name_, layer_.size));
    sha_.update(bytes.data(), bytes.size());
    received_ += bytes.size();
    return bytes;
  }

  // The rest of the blob, after the tar's end (within the manifest's size), received and verified.
  void finish() {
    while (!next().empty()) {
    }
  }

  // Whether the download itself was refused (not the layer it carries).
  bool refused() const noexcept { return refused_; }

 private:
  void verify() {
    const std::string digest = "sha256:" + to_lower_hex(sha_.final());
    if (received_ != layer_.size || digest != layer_.digest)
      refuse(fmt::format("the layer of {} is not the one its manifest names: {} bytes hashing to {}, where the "
                         "manifest says {} bytes, {}; refused",
                         name_, received_, digest, layer_.size, layer_.digest));
    verified_ = true;
  }

  [[noreturn]] void refuse(std::string message) {
    refused_ = true;
    throw Error(Status::integrity, std::move(message));
  }

  RegistryClient::BlobStream blob_;
  const LayerRef& layer_;
  const std::string& name_;
  Sha256 sha_;
  std::uint64_t received_ = 0;
  bool verified_ = false, refused_ = false;
};

void pull_with(const std::string& reference, const std::filesystem::path& dir, const RegistryOptions& options,
               const VerifyingKeys& keys) {
  const ImageReference ref = ImageReference::parse(reference);
  const std::string name = ref.to_string();
  CheckpointDir staging = CheckpointDir::prepare(dir, CheckpointDir::Start::empty);
  const RegistryClient client(ref, options);
  const RegistryClient::Manifest manifest = client.get_manifest(max_manifest_size);
  if (!ref.digest.empty() && sha256_digest(manifest.body) != ref.digest)
    throw Error(Status::integrity, fmt::format("the registry's manifest for {} is not the one its digest names (it "
                                               "hashes to {}); refused",
                                               name, sha256_digest(manifest.body)));
  const LayerRef layer = layer_of(manifest, name);

  // Streamed into the layer reader, never to disk: what the registry sends is bounded by what the
  // reader takes, and it is hashed and counted as it comes.
  LayerDownload download(client, layer, name);
  try {
    extract_layer([&] { return download.next(); }, layer.compression, layer.size, staging.dir(), keys);
  } catch (const Error& e) {
    if (e.status() != Status::integrity || download.refused()) throw;
    throw Error(Status::integrity,
                fmt::format("the checkpoint in {} does not verify, so it was not pulled: {}", name, e.what()));
  }
  download.finish();
  const CheckpointMetadata metadata = CheckpointMetadata::load(staging.dir());
  if (metadata.chain && !metadata.chain->parent.empty())
    throw Error(Status::integrity,
                fmt::format("{} holds a layer of a pre-dump chain (its parent is {}), which cannot be "
                            "restored without its parent; refused",
                            name, metadata.chain->parent));
  staging.commit();
}

}  // namespace

PushedImage push_image(const std::filesystem::path& dir, const std::string& reference, const RegistryOptions& options,
                       const KeyStore& store) {
  const ImageReference ref = ImageReference::parse(reference);
  if (!ref.digest.empty())
    throw Error(Status::invalid, fmt::format("push names an image by a tag, not by a digest ('{}'): the digest is "
                                             "the registry's answer",
                                             reference));
  const std::filesystem::path path = std::filesystem::absolute(dir).lexically_normal();
  const UniqueFd dir_fd = open_dir(path, "checkpoint folder");
  // Format 3 only: a pull checks every chunk before it writes it, as an import does.
  const std::string signature_text = transfer::manifest_signature_text(dir_fd.get(), path);
  try {
    HmacTree::verify(dir_fd.get(), store);
  } catch (const Error& e) {
    if (e.status() != Status::integrity) throw;
    throw Error(Status::integrity,
                fmt::format("{} does not verify, so it is not published: {}", path.native(), e.what()));
  }
  const CheckpointMetadata metadata = CheckpointMetadata::load(dir_fd.get());
  if (metadata.chain && !metadata.chain->parent.empty())
    throw Error(Status::invalid, fmt::format("{} is a layer of a pre-dump chain (its parent is {}): only a checkpoint "
                                             "without a parent can be published as an image",
                                             path.native(), metadata.chain->parent));
  // The layer is staged in an unnamed file beside the checkpoint (the same file system, which held it).
  const std::filesystem::path parent = path.has_relative_path() ? path.parent_path() : path;
  const UniqueFd parent_fd = open_dir(parent, "the checkpoint's parent folder");
  const UniqueFd layer_fd = unnamed_file_at(parent_fd.get(), fmt::format("the image layer's file in {}", parent.native()));
  const LayerBlob layer = write_layer(dir_fd.get(), signature_text, layer_fd.get());
  const std::string config = image_config(metadata, layer.digest);
  const std::string manifest = image_manifest(config, layer, annotations_of(metadata, dir_fd.get()));

  const RegistryClient client(ref, options);
  client.put_blob(layer.digest, layer_fd.get(), layer.size);
  client.put_blob(sha256_digest(config), config);
  const std::string manifest_digest = sha256_digest(manifest);
  const std::string stored = client.put_manifest(manifest, oci_manifest_type);
  if (!stored.empty() && stored != manifest_digest)
    throw Error(Status::io, fmt::format("the registry stored the manifest of {} as {}, not as the {} sent",
                                        ref.to_string(), quotable(stored), manifest_digest));
  return {manifest_digest, layer.digest, layer.size};
}

void pull_image(const std::string& reference, const std::filesystem::path& dir, const RegistryOptions& options,
                const KeyStore& store) {
  pull_with(reference, dir, options, VerifyingKeys(store));
}

void pull_image(const std::string& reference, const std::filesystem::path& dir, const RegistryOptions& options,
                const HmacKey& key) {
  pull_with(reference, dir, options, VerifyingKeys(key));
}

}  // namespace nucleus::checkpoint
