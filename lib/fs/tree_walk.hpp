// The one walk over a checkpoint folder that everything shares: signing, verifying, and the
// ownership checks and fixes. Depth first, the names of each folder in byte order (the seed's
// order, which the signature formats are defined by), every entry opened relative to its
// parent's descriptor with O_NOFOLLOW and checked to be the entry examined. Anything but folders
// and regular files, names that are not UTF-8, and trees past HmacTree's limits are integrity
// failures: a walk never leaves the tree and never runs without bound.
#pragma once

#include <sys/stat.h>

#include <functional>
#include <string>

namespace nucleus::checkpoint {

// Called for each folder (before its contents) and each regular file below the root, with the
// entry open (files O_RDONLY | O_NONBLOCK), its fstat and its path relative to the root.
using TreeVisitor = std::function<void(int fd, const struct stat& st, const std::string& rel)>;

// Walks everything below root_fd, leaving out the top-level entry named `skip` (if not empty).
void walk_checkpoint_tree(int root_fd, const TreeVisitor& visit, const std::string& skip = {});

}  // namespace nucleus::checkpoint
