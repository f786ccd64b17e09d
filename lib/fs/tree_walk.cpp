#include "fs/tree_walk.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"
#include "checkpoint/utf8.hpp"

namespace nucleus::checkpoint {

namespace {

Error integrity(std::string message) { return Error(Status::integrity, std::move(message)); }

// The names in the folder open at dir_fd, but for ".", ".." and `skip`; an integrity failure as
// soon as there are more than `room`, so that a folder of millions of names is never read whole.
std::vector<std::string> read_names(int dir_fd, const std::string& prefix, const std::string& skip, std::size_t room,
                                    std::size_t max_entries) {
  std::vector<std::string> names;
  for_each_name(dir_fd, fmt::format("checkpoint folder '{}'", prefix), [&](std::string_view n) {
    if (n == skip) return;
    if (names.size() == room)
      throw integrity(fmt::format("checkpoint tree has more than {} entries (found reading '{}')", max_entries,
                                  prefix.empty() ? "." : prefix));
    names.emplace_back(n);
  });
  return names;
}

class Walk {
 public:
  Walk(const TreeVisitor& visit, const std::string& skip, std::size_t max_entries)
      : visit_(visit), skip_(skip), max_entries_(max_entries) {}

  void folder(int dir_fd, const std::string& prefix, int depth) {
    if (depth > HmacTree::max_depth)
      throw integrity(fmt::format("checkpoint tree is nested deeper than {} levels at '{}'", HmacTree::max_depth, prefix));
    // Counted as read: every name read is visited unless the walk fails first.
    std::vector<std::string> names =
        read_names(dir_fd, prefix, depth == 0 ? skip_ : std::string(), max_entries_ - entries_, max_entries_);
    entries_ += names.size();
    // std::string compares as unsigned char: byte order, like Rust's Path.
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      const std::string rel = prefix.empty() ? name : prefix + "/" + name;
      if (rel.size() > HmacTree::max_path_length)
        throw integrity(fmt::format("checkpoint path '{}...' is longer than {} bytes", rel.substr(0, 64),
                                    HmacTree::max_path_length));
      if (!is_valid_utf8(name)) throw integrity(fmt::format("Checkpoint path '{}' is not valid UTF-8", rel));
      struct stat seen {};
      if (::fstatat(dir_fd, name.c_str(), &seen, AT_SYMLINK_NOFOLLOW) != 0)
        throw integrity(fmt::format("checkpoint entry '{}' vanished during the integrity scan", rel));
      const bool link = S_ISLNK(seen.st_mode);
      if (link && rel != parent_link_path)
        throw integrity(fmt::format("Checkpoint integrity scan refuses symlink path '{}' (the only symlink a checkpoint "
                                    "may hold is a chain layer's {})", rel, parent_link_path));
      if (!link && !S_ISDIR(seen.st_mode) && !S_ISREG(seen.st_mode))
        throw integrity(fmt::format("Checkpoint integrity scan rejects special file '{}' (only folders and regular "
                                    "files may be in a checkpoint)", rel));
      const int flags = link ? O_PATH : S_ISDIR(seen.st_mode) ? O_DIRECTORY : O_NONBLOCK | O_NOCTTY;
      const UniqueFd fd(::openat(dir_fd, name.c_str(), flags | O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
      if (!fd) throw integrity(fmt::format("cannot open checkpoint entry '{}': {}", rel, std::strerror(errno)));
      // The entry opened must be the one examined: a swap in between is an integrity failure.
      const struct stat st = stat_fd(fd.get(), rel);
      if (st.st_dev != seen.st_dev || st.st_ino != seen.st_ino || (st.st_mode & S_IFMT) != (seen.st_mode & S_IFMT))
        throw integrity(fmt::format("checkpoint entry '{}' was replaced during the integrity scan", rel));
      if (link) {
        const std::string target = read_link_fd(fd.get(), rel);
        if (!parent_of_link_target(target))
          throw integrity(fmt::format("checkpoint link '{}' points to '{}', not to a sibling checkpoint's images "
                                      "(\"{}\")", rel, to_valid_utf8(target), parent_link_target("NAME")));
      }
      visit_(fd.get(), st, rel);
      if (S_ISDIR(st.st_mode)) folder(fd.get(), rel, depth + 1);
    }
  }

 private:
  const TreeVisitor& visit_;
  const std::string& skip_;
  std::size_t max_entries_;
  std::size_t entries_ = 0;
};

// What reading a tree's files costs, from their fstat alone.
struct FileBytes {
  std::uint64_t bytes = 0;  // their sizes
  std::uint64_t holes = 0;  // the parts of them not allocated on disk

  static FileBytes of(const struct stat& st) {
    const auto size = static_cast<std::uint64_t>(st.st_size), blocks = static_cast<std::uint64_t>(st.st_blocks);
    return {size, blocks >= size / 512 ? 0 : size - blocks * 512};
  }
  FileBytes& operator+=(const FileBytes& f) {
    // Saturating: a file system (FUSE) may claim any sizes.
    const auto add = [](std::uint64_t a, std::uint64_t b) { return b > UINT64_MAX - a ? UINT64_MAX : a + b; };
    bytes = add(bytes, f.bytes);
    holes = add(holes, f.holes);
    return *this;
  }
};

std::string human(std::uint64_t bytes) {
  static constexpr std::array units = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  auto value = static_cast<double>(bytes);
  std::size_t unit = 0;
  for (; value >= 1024 && unit + 1 < units.size(); ++unit) value /= 1024;
  return unit == 0 ? fmt::format("{} bytes", bytes) : fmt::format("{:.1f} {} ({} bytes)", value, units[unit], bytes);
}

constexpr std::string_view how_to_raise =
    "set NUCLEUS_CHECKPOINT_MAX_BYTES to a number of bytes (C++: HmacTree::set_max_total_bytes)";

// The first walk of walk_checkpoint_files: refuses a tree too costly to read, before reading it.
FileBytes measure(int root_fd, const std::string& skip, std::uint64_t max_bytes) {
  FileBytes total;
  std::string sparsest;  // the file with the most holes
  FileBytes sparsest_bytes;
  walk_checkpoint_tree(root_fd, [&](int, const struct stat& st, const std::string& rel) {
    if (!S_ISREG(st.st_mode)) return;
    const FileBytes file = FileBytes::of(st);
    total += file;
    if (file.holes > sparsest_bytes.holes) {
      sparsest = rel;
      sparsest_bytes = file;
    }
  }, skip);
  if (const std::uint64_t allowed = max_bytes / HmacTree::max_holes_share; total.holes > allowed)
    throw integrity(fmt::format(
        "checkpoint file '{}' is sparse: {} long, {} of it not on disk. Holes read as zeros and cost nothing to "
        "make, so a checkpoint may hold at most {} of them (1/{} of the {} limit); this one holds {}. CRIU writes "
        "its images densely: if this checkpoint is genuine (kept on a file system that stores zeros as holes, such "
        "as ZFS with compression), raise the limit: {}",
        sparsest, human(sparsest_bytes.bytes), human(sparsest_bytes.holes), human(allowed), HmacTree::max_holes_share,
        human(max_bytes), human(total.holes), how_to_raise));
  if (total.bytes > max_bytes)
    throw integrity(fmt::format("checkpoint files add up to {}, more than the {} limit on what is hashed for one "
                                "checkpoint; if this checkpoint is genuine, raise the limit: {}",
                                human(total.bytes), human(max_bytes), how_to_raise));
  return total;
}

}  // namespace

std::string parent_link_target(std::string_view name) { return fmt::format("../../{}/images", name); }

bool is_plain_name(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.size() <= 255 &&
         name.find_first_of(std::string_view("/\0", 2)) == std::string_view::npos && is_valid_utf8(name);
}

std::optional<std::string> parent_of_link_target(std::string_view target) {
  constexpr std::string_view up = "../../", down = "/images";
  if (!target.starts_with(up) || !target.ends_with(down) || target.size() < up.size() + down.size())
    return std::nullopt;
  std::string name(target.substr(up.size(), target.size() - up.size() - down.size()));
  if (!is_plain_name(name)) return std::nullopt;
  return name;
}

std::string read_link_fd(int fd, std::string_view rel) {
  std::array<char, 512> target{};  // a valid target is at most 6 + 255 + 7 bytes
  const ssize_t n = ::readlinkat(fd, "", target.data(), target.size());
  if (n < 0) throw system_error(Status::integrity, errno, fmt::format("cannot read checkpoint link '{}'", rel));
  if (static_cast<std::size_t>(n) == target.size())
    throw integrity(fmt::format("checkpoint link '{}' points to a path longer than {} bytes", rel, target.size() - 1));
  return {target.data(), static_cast<std::size_t>(n)};
}

void walk_checkpoint_tree(int root_fd, const TreeVisitor& visit, const std::string& skip, std::size_t max_entries) {
  Walk(visit, skip, max_entries).folder(root_fd, "", 0);
}

void walk_checkpoint_files(int root_fd, const TreeVisitor& visit, const std::string& skip, std::uint64_t max_bytes) {
  const FileBytes measured = measure(root_fd, skip, max_bytes);
  // The tree may change between the walks (its owner may write to it): what is read stays within
  // what was measured.
  FileBytes read;
  walk_checkpoint_tree(root_fd, [&](int fd, const struct stat& st, const std::string& rel) {
    if (S_ISREG(st.st_mode) && ((read += FileBytes::of(st)).bytes > measured.bytes || read.holes > measured.holes))
      throw integrity(fmt::format("checkpoint file '{}' changed during the integrity scan", rel));
    visit(fd, st, rel);
  }, skip);
}

}  // namespace nucleus::checkpoint
