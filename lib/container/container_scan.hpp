// What a dump learns of a container from outside it: its rootfs as the host sees it, the mounts
// and namespaces it shares with the host, and the descriptors its root holds.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include <nucleus/checkpoint/metadata.hpp>

namespace nucleus::checkpoint {

struct ContainerScan {
  DumpRecord found;                    // the container part: namespaces, root, mounts, descriptors, cgroups
  std::vector<std::string> externals;  // CRIU's dump form, for what was found outside the container
};

// Reads /proc of the tree rooted at `pid` (all of whose processes are in `tree`). Mounts whose
// mountpoint is in `declared` ("mnt[MOUNTPOINT]:KEY" values the caller gave) are left to the
// caller. Throws Error(Status::invalid) for what CRIU could not dump and no option fixes
// automatically, naming the mount or descriptor and what to do.
ContainerScan scan_container(pid_t pid, const std::vector<pid_t>& tree, const std::vector<std::string>& declared);

}  // namespace nucleus::checkpoint
