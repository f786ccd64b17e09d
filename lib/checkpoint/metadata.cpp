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
  w.EndObject();
  if (out.GetSize() > max_size)
    throw malformed(fmt::format("it would be {} bytes, more than the {} allowed", out.GetSize(), max_size));
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
  // serde_json refuses a field given twice; so does this, rather than pick one.
  std::unordered_set<std::string_view> seen;
  for (const auto& member : doc.GetObject()) {
    const std::string_view name(member.name.GetString(), member.name.GetStringLength());
    if (!seen.insert(name).second) throw malformed(fmt::format("field \"{}\" appears twice", name));
  }
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
  return m;
}

void CheckpointMetadata::save(int dir_fd) const { write_file_atomic_at(dir_fd, file_name, to_json(), 0600); }

CheckpointMetadata CheckpointMetadata::load(int dir_fd) {
  return from_json(read_file_at(dir_fd, file_name, max_size, "checkpoint metadata"));
}

}  // namespace nucleus::checkpoint
