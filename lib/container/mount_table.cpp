#include "container/mount_table.hpp"

#include <sys/sysmacros.h>

#include <charconv>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"

namespace nucleus::checkpoint {

namespace {

// The kernel escapes space, tab, newline and backslash in mountinfo as \ooo.
std::string unescape(std::string_view field) {
  std::string out;
  out.reserve(field.size());
  for (std::size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      unsigned value = 0;
      const auto [end, ec] = std::from_chars(field.data() + i + 1, field.data() + i + 4, value, 8);
      if (ec == std::errc() && end == field.data() + i + 4 && value < 256) {
        out.push_back(static_cast<char>(value));
        i += 3;
        continue;
      }
    }
    out.push_back(field[i]);
  }
  return out;
}

template <typename Int>
bool parse_int(std::string_view text, Int& out) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

}  // namespace

std::vector<MountEntry> parse_mount_table(std::string_view mountinfo) {
  std::vector<MountEntry> table;
  std::size_t line_no = 0;
  while (!mountinfo.empty()) {
    const auto nl = mountinfo.find('\n');
    const std::string_view line = mountinfo.substr(0, nl);
    mountinfo.remove_prefix(nl == std::string_view::npos ? mountinfo.size() : nl + 1);
    ++line_no;
    if (line.empty()) continue;
    // id parent major:minor root mountpoint options [optional fields...] - fstype source superoptions
    std::vector<std::string_view> fields;
    for (std::size_t at = 0; at <= line.size();) {
      const auto sp = line.find(' ', at);
      fields.push_back(line.substr(at, sp == std::string_view::npos ? std::string_view::npos : sp - at));
      if (sp == std::string_view::npos) break;
      at = sp + 1;
    }
    std::size_t dash = 6;
    while (dash < fields.size() && fields[dash] != "-") ++dash;
    MountEntry m;
    unsigned major = 0, minor = 0;
    const auto colon = fields.size() > 2 ? fields[2].find(':') : std::string_view::npos;
    if (dash + 2 >= fields.size() || !parse_int(fields[0], m.id) || !parse_int(fields[1], m.parent) ||
        colon == std::string_view::npos || !parse_int(fields[2].substr(0, colon), major) ||
        !parse_int(fields[2].substr(colon + 1), minor))
      throw Error(Status::invalid, fmt::format("mountinfo line {} is malformed: '{}'", line_no, line));
    m.dev = makedev(major, minor);
    m.root = unescape(fields[3]);
    m.mountpoint = unescape(fields[4]);
    m.fstype = unescape(fields[dash + 1]);
    m.source = unescape(fields[dash + 2]);
    table.push_back(std::move(m));
  }
  return table;
}

std::vector<MountEntry> read_mount_table(pid_t pid) {
  const UniqueFd proc = open_dir(fmt::format("/proc/{}", pid), "process folder");
  return parse_mount_table(read_file_at(proc.get(), "mountinfo", 16 << 20, "mount table"));
}

FileIdentity identity_of(const struct stat& st) {
  if (S_ISCHR(st.st_mode)) return {static_cast<std::uint64_t>(st.st_rdev), 0};
  return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
}

bool same_identity(const FileIdentity& recorded, const FileIdentity& found) {
  const bool anonymous = recorded.ino != 0 && major(static_cast<dev_t>(recorded.dev)) == 0 &&
                         major(static_cast<dev_t>(found.dev)) == 0;
  return recorded.ino == found.ino && (recorded.dev == found.dev || anonymous);
}

bool path_is_within(std::string_view path, std::string_view prefix) {
  if (prefix == "/") return path.starts_with('/');
  return path.starts_with(prefix) && (path.size() == prefix.size() || path[prefix.size()] == '/');
}

std::string rebase_path(std::string_view path, std::string_view from, std::string_view to) {
  std::string_view rest = from == "/" ? path.substr(1) : path.substr(from.size());
  if (rest.starts_with('/')) rest.remove_prefix(1);
  std::string out(to);
  if (!rest.empty()) {
    if (!out.ends_with('/')) out.push_back('/');
    out.append(rest);
  }
  return out;
}

}  // namespace nucleus::checkpoint
