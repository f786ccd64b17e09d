// The one walk over a checkpoint folder that everything shares: signing, verifying, and the
// ownership checks and fixes. Depth first, the names of each folder in byte order (the seed's
// order, which the signature formats are defined by), every entry opened relative to its
// parent's descriptor with O_NOFOLLOW and checked to be the entry examined. Anything but folders,
// regular files and a chain layer's parent link, names that are not UTF-8, and trees past
// HmacTree's limits are integrity failures: a walk never leaves the tree and never runs without
// bound.
#pragma once

#include <sys/stat.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <nucleus/checkpoint/hmac_tree.hpp>

namespace nucleus::checkpoint {

// A layer of a pre-dump chain holds one symlink, CRIU's link to its parent's images:
// images/parent, whose target is exactly "../../NAME/images" with NAME a plain folder name (the
// parent is a sibling of the layer's folder). The walk accepts no other symlink, and never follows
// this one.
inline constexpr std::string_view parent_link_path = "images/parent";
// The target of a parent link to the sibling checkpoint `name`.
std::string parent_link_target(std::string_view name);
// NAME of a target of that form; std::nullopt for any other target.
std::optional<std::string> parent_of_link_target(std::string_view target);
// A plain folder name: UTF-8, at most 255 bytes, no '/' or NUL, not empty, "." or "..".
bool is_plain_name(std::string_view name);
// The target of the parent link open at fd (O_PATH | O_NOFOLLOW, as the walk hands it over).
std::string read_link_fd(int fd, std::string_view rel);

// Called for each folder (before its contents), each regular file and the parent link below the
// root, with the entry open (files O_RDONLY | O_NONBLOCK, the link O_PATH), its fstat and its path
// relative to the root.
using TreeVisitor = std::function<void(int fd, const struct stat& st, const std::string& rel)>;

// Walks everything below root_fd, leaving out the top-level entry named `skip` (if not empty).
// A folder's names are counted against max_entries as they are read: reading stops, and the walk
// fails, as soon as the tree has more.
void walk_checkpoint_tree(int root_fd, const TreeVisitor& visit, const std::string& skip = {},
                          std::size_t max_entries = HmacTree::max_entries);

// The walk of whatever reads every file's bytes (signing, verifying). It walks the tree twice:
// first reading nothing but names and sizes, and refusing (an integrity failure, before a byte
// is read) a tree whose files add up to more than max_bytes, or whose sparse files hold more than
// max_bytes / HmacTree::max_holes_share of holes (bytes not allocated on disk: they read as zeros
// and cost whoever made them nothing); then again, calling visit, and failing if the files grew
// past what the first walk saw.
void walk_checkpoint_files(int root_fd, const TreeVisitor& visit, const std::string& skip, std::uint64_t max_bytes);

}  // namespace nucleus::checkpoint
