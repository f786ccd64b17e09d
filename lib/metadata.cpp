#include <nucleus/checkpoint/metadata.hpp>

#include <limits>

#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs_util.hpp"

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

std::string string_field(const rapidjson::Value& root, const char* name) {
  const auto& v = field(root, name);
  if (!v.IsString()) throw malformed(fmt::format("field \"{}\" must be a string", name));
  return {v.GetString(), v.GetStringLength()};
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

}  // namespace

std::string CheckpointMetadata::to_json() const {
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
  return {out.GetString(), out.GetSize()};
}

CheckpointMetadata CheckpointMetadata::from_json(std::string_view json) {
  if (json.size() > max_size) throw malformed(fmt::format("it is larger than {} bytes", max_size));
  rapidjson::Document doc;
  // Iterative parsing: deep nesting cannot exhaust the stack. Strings must be valid UTF-8.
  doc.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(json.data(), json.size());
  if (doc.HasParseError())
    throw malformed(fmt::format("{} at byte {}", rapidjson::GetParseError_En(doc.GetParseError()), doc.GetErrorOffset()));
  if (!doc.IsObject()) throw malformed("the top level must be a JSON object");
  CheckpointMetadata m;
  m.container_id = string_field(doc, "container_id");
  m.container_name = string_field(doc, "container_name");
  m.original_pid = static_cast<std::uint32_t>(uint_field(doc, "original_pid", std::numeric_limits<std::uint32_t>::max()));
  const auto& command = field(doc, "command");
  if (!command.IsArray()) throw malformed("field \"command\" must be an array of strings");
  for (const auto& arg : command.GetArray()) {
    if (!arg.IsString()) throw malformed("field \"command\" must be an array of strings");
    m.command.emplace_back(arg.GetString(), arg.GetStringLength());
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
