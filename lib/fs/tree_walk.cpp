#include "fs/tree_walk.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>

#include "fs/fs_util.hpp"
#include "checkpoint/utf8.hpp"

namespace nucleus::checkpoint {

namespace {

Error integrity(std::string message) { return Error(Status::integrity, std::move(message)); }

class Walk {
 public:
  Walk(const TreeVisitor& visit, const std::string& skip) : visit_(visit), skip_(skip) {}

  void folder(int dir_fd, const std::string& prefix, int depth) {
    if (depth > HmacTree::max_depth)
      throw integrity(fmt::format("checkpoint tree is nested deeper than {} levels at '{}'", HmacTree::max_depth, prefix));
    // std::string compares as unsigned char: byte order, like Rust's Path.
    std::vector<std::string> names = list_dir(dir_fd, fmt::format("checkpoint folder '{}'", prefix));
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      if (depth == 0 && name == skip_) continue;
      const std::string rel = prefix.empty() ? name : prefix + "/" + name;
      if (++entries_ > HmacTree::max_entries)
        throw integrity(fmt::format("checkpoint tree has more than {} entries", HmacTree::max_entries));
      if (rel.size() > HmacTree::max_path_length)
        throw integrity(fmt::format("checkpoint path '{}...' is longer than {} bytes", rel.substr(0, 64),
                                    HmacTree::max_path_length));
      if (!is_valid_utf8(name)) throw integrity(fmt::format("Checkpoint path '{}' is not valid UTF-8", rel));
      struct stat seen {};
      if (::fstatat(dir_fd, name.c_str(), &seen, AT_SYMLINK_NOFOLLOW) != 0)
        throw integrity(fmt::format("checkpoint entry '{}' vanished during the integrity scan", rel));
      if (S_ISLNK(seen.st_mode))
        throw integrity(fmt::format("Checkpoint integrity scan refuses symlink path '{}'", rel));
      if (!S_ISDIR(seen.st_mode) && !S_ISREG(seen.st_mode))
        throw integrity(fmt::format("Checkpoint integrity scan rejects special file '{}' (only folders and regular "
                                    "files may be in a checkpoint)", rel));
      const int flags = S_ISDIR(seen.st_mode) ? O_DIRECTORY : O_NONBLOCK | O_NOCTTY;
      const UniqueFd fd(::openat(dir_fd, name.c_str(), flags | O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
      if (!fd) throw integrity(fmt::format("cannot open checkpoint entry '{}': {}", rel, std::strerror(errno)));
      // The entry opened must be the one examined: a swap in between is an integrity failure.
      const struct stat st = stat_fd(fd.get(), rel);
      if (st.st_dev != seen.st_dev || st.st_ino != seen.st_ino || (st.st_mode & S_IFMT) != (seen.st_mode & S_IFMT))
        throw integrity(fmt::format("checkpoint entry '{}' was replaced during the integrity scan", rel));
      visit_(fd.get(), st, rel);
      if (S_ISDIR(st.st_mode)) folder(fd.get(), rel, depth + 1);
    }
  }

 private:
  const TreeVisitor& visit_;
  const std::string& skip_;
  std::size_t entries_ = 0;
};

}  // namespace

void walk_checkpoint_tree(int root_fd, const TreeVisitor& visit, const std::string& skip) {
  Walk(visit, skip).folder(root_fd, "", 0);
}

}  // namespace nucleus::checkpoint
