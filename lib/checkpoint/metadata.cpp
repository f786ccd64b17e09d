#include <nucleus/checkpoint/metadata.hpp>

#include <cctype>
#include <limits>
#include <string_view>
#include <unordered_set>

#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"
#include "checkpoint/utf8.hpp"

namespace nucleus::checkpoint {

namespace {

// The object holding the library's own fields.
constexpr const char* extension_name = "nucleus";

Error malformed(std::string_view what) {
  return Error(Status::invalid, fmt::format("{} is malformed: {}", CheckpointMetadata::file_name, what));
}

const rapidjson::Value& field(const rapidjson::Value& root, const char* name) {
  const auto it = root.FindMember(name);
  if (it == root.MemberEnd()) throw malformed(fmt::format("missing field \"{}\"", name));
  return it->value;
}

// A JSON string as UTF-8: an escaped lone surrogate ("\udc00") decodes to bytes that are not.
std::string utf8_string(const rapidjson::Value& v, const char* name) {
  std::string s(v.GetString(), v.GetStringLength());
  if (!is_valid_utf8(s)) throw malformed(fmt::format("field \"{}\" is not valid UTF-8", name));
  return s;
}

std::string string_field(const rapidjson::Value& root, const char* name) {
  const auto& v = field(root, name);
  if (!v.IsString()) throw malformed(fmt::format("field \"{}\" must be a string", name));
  return utf8_string(v, name);
}

bool bool_field(const rapidjson::Value& root, const char* name) {
  const auto& v = field(root, name);
  if (!v.IsBool()) throw malformed(fmt::format("field \"{}\" must be true or false", name));
  return v.GetBool();
}

std::uint64_t uint_field(const rapidjson::Value& root, const char* name, std::uint64_t max) {
  const auto& v = field(root, name);
  if (!v.IsUint64() || v.GetUint64() > max)
    throw malformed(fmt::format("field \"{}\" must be a whole number from 0 to {}", name, max));
  return v.GetUint64();
}

int int_field(const rapidjson::Value& root, const char* name) {
  const auto& v = field(root, name);
  if (!v.IsInt()) throw malformed(fmt::format("field \"{}\" must be a whole number", name));
  return v.GetInt();
}

// serde_json writes \u escapes with lowercase hex digits, RapidJSON with uppercase ones.
std::string lowercase_unicode_escapes(std::string json) {
  for (std::size_t i = 0; i + 1 < json.size(); ++i) {
    if (json[i] != '\\') continue;
    if (json[i + 1] == 'u')
      for (std::size_t j = i + 2; j < i + 6 && j < json.size(); ++j)
        json[j] = static_cast<char>(std::tolower(static_cast<unsigned char>(json[j])));
    ++i;  // skip the escaped character, so "\\u" stays as it is
  }
  return json;
}

void require_utf8(const std::string& value, const char* field) {
  if (!is_valid_utf8(value)) throw malformed(fmt::format("field \"{}\" is not valid UTF-8", field));
}

template <typename Writer>
void write_string(Writer& w, const std::string& s) {
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

// The library's own fields, in an object of their own so that the seed's stay exactly as they are.
template <typename Writer>
void write_identity(Writer& w, const FileIdentity& id) {
  w.Key("dev");
  w.Uint64(id.dev);
  w.Key("ino");
  w.Uint64(id.ino);
}

template <typename Writer>
void write_extension(Writer& w, const CheckpointMetadata& m) {
  const DumpRecord& r = m.record;
  const auto str = [&w](const char* key, const std::string& value) {
    w.Key(key);
    write_string(w, value);
  };
  const auto flag = [&w](const char* key, bool value) {
    w.Key(key);
    w.Bool(value);
  };
  w.Key(extension_name);
  w.StartObject();
  w.Key("dump");
  w.StartObject();
  flag("shell_job", r.shell_job);
  flag("tcp_established", r.tcp_established);
  flag("tcp_close", r.tcp_close);
  flag("ext_unix_sk", r.ext_unix_sk);
  flag("file_locks", r.file_locks);
  flag("evasive_devices", r.evasive_devices);
  if (!r.post_copy_key.empty()) str("post_copy_key", r.post_copy_key);  // absent otherwise, as in earlier checkpoints
  str("manage_cgroups", r.manage_cgroups);
  str("network_lock", r.network_lock);
  str("file_validation", r.file_validation);
  w.EndObject();
  w.Key("container");
  w.StartObject();
  flag("own_mount_namespace", r.own_mount_namespace);
  flag("own_network_namespace", r.own_network_namespace);
  str("root", r.root);
  w.Key("root_identity");
  w.StartObject();
  write_identity(w, r.root_identity);
  w.EndObject();
  w.Key("mounts");
  w.StartArray();
  for (const auto& mount : r.mounts) {
    w.StartObject();
    str("mountpoint", mount.mountpoint);
    str("key", mount.key);
    str("source", mount.source);
    str("fstype", mount.fstype);
    write_identity(w, mount.identity);
    w.EndObject();
  }
  w.EndArray();
  w.Key("namespaces");
  w.StartArray();
  for (const auto& ns : r.namespaces) {
    w.StartObject();
    str("type", ns.type);
    w.Key("inode");
    w.Uint64(ns.inode);
    str("key", ns.key);
    str("path", ns.path);
    w.EndObject();
  }
  w.EndArray();
  w.Key("descriptors");
  w.StartArray();
  for (const auto& d : r.descriptors) {
    w.StartObject();
    w.Key("fd");
    w.Int(d.fd);
    str("key", d.key);
    str("path", d.path);
    w.Key("flags");
    w.Int(d.flags);
    write_identity(w, d.identity);
    w.EndObject();
  }
  w.EndArray();
  w.Key("cgroups");
  w.StartArray();
  for (const auto& line : r.cgroups) write_string(w, line);
  w.EndArray();
  w.EndObject();
  w.Key("annotations");
  w.StartObject();
  for (const auto& [name, value] : m.annotations) str(name.c_str(), value);
  w.EndObject();
  w.Key("runtime_files");
  w.StartArray();
  for (const auto& name : m.runtime_files) write_string(w, name);
  w.EndArray();
  if (m.chain) {
    w.Key("chain");
    w.StartObject();
    flag("predump", m.chain->predump);
    str("parent", m.chain->parent);
    str("parent_signature_sha256", m.chain->parent_signature_sha256);
    w.EndObject();
  }
  w.EndObject();
}

void require_unique_members(const rapidjson::Value& object) {
  // serde_json refuses a field given twice; so does this, rather than pick one.
  std::unordered_set<std::string_view> seen;
  for (const auto& member : object.GetObject()) {
    const std::string_view name(member.name.GetString(), member.name.GetStringLength());
    if (!seen.insert(name).second) throw malformed(fmt::format("field \"{}\" appears twice", name));
  }
}

const rapidjson::Value& object_field(const rapidjson::Value& root, const char* name) {
  const auto& v = field(root, name);
  if (!v.IsObject()) throw malformed(fmt::format("field \"{}\" must be an object", name));
  require_unique_members(v);
  return v;
}

const rapidjson::Value::ConstArray array_field(const rapidjson::Value& root, const char* name) {
  const auto& v = field(root, name);
  if (!v.IsArray()) throw malformed(fmt::format("field \"{}\" must be an array", name));
  return v.GetArray();
}

std::vector<std::string> string_array(const rapidjson::Value& root, const char* name) {
  std::vector<std::string> out;
  for (const auto& item : array_field(root, name)) {
    if (!item.IsString()) throw malformed(fmt::format("field \"{}\" must be an array of strings", name));
    out.push_back(utf8_string(item, name));
  }
  return out;
}

const rapidjson::Value& array_object(const rapidjson::Value& item, const char* name) {
  if (!item.IsObject()) throw malformed(fmt::format("field \"{}\" must be an array of objects", name));
  require_unique_members(item);
  return item;
}

FileIdentity identity_of(const rapidjson::Value& o) {
  constexpr auto max = std::numeric_limits<std::uint64_t>::max();
  return FileIdentity{uint_field(o, "dev", max), uint_field(o, "ino", max)};
}

void read_extension(const rapidjson::Value& ext, CheckpointMetadata& m) {
  DumpRecord& r = m.record;
  const auto& dump = object_field(ext, "dump");
  r.shell_job = bool_field(dump, "shell_job");
  r.tcp_established = bool_field(dump, "tcp_established");
  r.tcp_close = bool_field(dump, "tcp_close");
  r.ext_unix_sk = bool_field(dump, "ext_unix_sk");
  r.file_locks = bool_field(dump, "file_locks");
  r.evasive_devices = bool_field(dump, "evasive_devices");
  if (dump.HasMember("post_copy_key")) r.post_copy_key = string_field(dump, "post_copy_key");
  r.manage_cgroups = string_field(dump, "manage_cgroups");
  r.network_lock = string_field(dump, "network_lock");
  r.file_validation = string_field(dump, "file_validation");
  const auto& container = object_field(ext, "container");
  r.own_mount_namespace = bool_field(container, "own_mount_namespace");
  r.own_network_namespace = bool_field(container, "own_network_namespace");
  r.root = string_field(container, "root");
  r.root_identity = identity_of(object_field(container, "root_identity"));
  for (const auto& item : array_field(container, "mounts")) {
    const auto& o = array_object(item, "mounts");
    r.mounts.push_back({string_field(o, "mountpoint"), string_field(o, "key"), string_field(o, "source"),
                        string_field(o, "fstype"), identity_of(o)});
  }
  for (const auto& item : array_field(container, "namespaces")) {
    const auto& o = array_object(item, "namespaces");
    r.namespaces.push_back({string_field(o, "type"),
                            uint_field(o, "inode", std::numeric_limits<std::uint64_t>::max()),
                            string_field(o, "key"), string_field(o, "path")});
  }
  for (const auto& item : array_field(container, "descriptors")) {
    const auto& o = array_object(item, "descriptors");
    r.descriptors.push_back(
        {int_field(o, "fd"), string_field(o, "key"), string_field(o, "path"), int_field(o, "flags"), identity_of(o)});
  }
  r.cgroups = string_array(container, "cgroups");
  for (const auto& a : object_field(ext, "annotations").GetObject()) {
    if (!a.value.IsString()) throw malformed("field \"annotations\" must map names to strings");
    m.annotations.emplace_back(utf8_string(a.name, "annotations"), utf8_string(a.value, "annotations"));
  }
  m.runtime_files = string_array(ext, "runtime_files");
  if (ext.HasMember("chain")) {
    const auto& chain = object_field(ext, "chain");
    m.chain = ChainRecord{bool_field(chain, "predump"), string_field(chain, "parent"),
                          string_field(chain, "parent_signature_sha256")};
  }
  m.has_record = true;
}

}  // namespace

std::string CheckpointMetadata::to_json() const {
  require_utf8(container_id, "container_id");
  require_utf8(container_name, "container_name");
  require_utf8(version, "version");
  for (const auto& arg : command) require_utf8(arg, "command");
  rapidjson::StringBuffer out;
  rapidjson::PrettyWriter<rapidjson::StringBuffer> w(out);
  w.SetIndent(' ', 2);  // the seed writes serde_json's pretty form
  const auto str = [&w](const std::string& s) { w.String(s.data(), static_cast<rapidjson::SizeType>(s.size())); };
  w.StartObject();
  w.Key("container_id"); str(container_id);
  w.Key("container_name"); str(container_name);
  w.Key("original_pid"); w.Uint(original_pid);
  w.Key("command");
  w.StartArray();
  for (const auto& arg : command) str(arg);
  w.EndArray();
  w.Key("checkpoint_at"); w.Uint64(checkpoint_at);
  w.Key("version"); str(version);
  w.Key("using_gvisor"); w.Bool(using_gvisor);
  w.Key("rootless"); w.Bool(rootless);
  if (has_record) write_extension(w, *this);
  w.EndObject();
  if (out.GetSize() > max_size)
    throw malformed(fmt::format("it would be {} bytes, more than the {} allowed", out.GetSize(), max_size));
  // Paths, keys and annotations in the library's own fields must be UTF-8 as well.
  if (has_record && !is_valid_utf8({out.GetString(), out.GetSize()}))
    throw malformed("a path, key or annotation of the container is not valid UTF-8");
  return lowercase_unicode_escapes({out.GetString(), out.GetSize()});
}

CheckpointMetadata CheckpointMetadata::from_json(std::string_view json) {
  if (json.size() > max_size) throw malformed(fmt::format("it is larger than {} bytes", max_size));
  rapidjson::Document doc;
  // Iterative parsing: deep nesting cannot exhaust the stack. Strings must be valid UTF-8.
  doc.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(json.data(), json.size());
  if (doc.HasParseError())
    throw malformed(fmt::format("{} at byte {}", rapidjson::GetParseError_En(doc.GetParseError()), doc.GetErrorOffset()));
  if (!doc.IsObject()) throw malformed("the top level must be a JSON object");
  require_unique_members(doc);
  CheckpointMetadata m;
  m.container_id = string_field(doc, "container_id");
  m.container_name = string_field(doc, "container_name");
  m.original_pid = static_cast<std::uint32_t>(uint_field(doc, "original_pid", std::numeric_limits<std::uint32_t>::max()));
  const auto& command = field(doc, "command");
  if (!command.IsArray()) throw malformed("field \"command\" must be an array of strings");
  for (const auto& arg : command.GetArray()) {
    if (!arg.IsString()) throw malformed("field \"command\" must be an array of strings");
    m.command.push_back(utf8_string(arg, "command"));
  }
  m.checkpoint_at = uint_field(doc, "checkpoint_at", std::numeric_limits<std::uint64_t>::max());
  m.version = string_field(doc, "version");
  m.using_gvisor = bool_field(doc, "using_gvisor");
  m.rootless = bool_field(doc, "rootless");
  if (doc.HasMember(extension_name)) read_extension(object_field(doc, extension_name), m);
  return m;
}

void CheckpointMetadata::save(int dir_fd) const { write_file_atomic_at(dir_fd, file_name, to_json(), 0600); }

CheckpointMetadata CheckpointMetadata::load(int dir_fd) {
  return from_json(read_file_at(dir_fd, file_name, max_size, "checkpoint metadata"));
}

}  // namespace nucleus::checkpoint
