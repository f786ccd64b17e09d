// How a restore applies what the dump recorded (the options CRIU must be given again, the
// container's rootfs, mounts, namespaces and descriptors), with the caller's options first.
#pragma once

#include <vector>

#include <nucleus/checkpoint/criu_options.hpp>
#include <nucleus/checkpoint/metadata.hpp>

#include "fs/unique_fd.hpp"

namespace nucleus::checkpoint {

struct RestorePlan {
  CriuOptions options;                 // the caller's, with the recorded ones applied
  std::vector<int> fds;                // descriptors for CRIU, in order, after the images and work dir
  std::vector<InheritedFd> inherited;  // CRIU's --inherit-fd, by the numbers CRIU sees them at
  std::vector<UniqueFd> opened;        // what the library opened for it (namespaces)
};

// Checks, before CRIU runs, that what the checkpoint needs is there (the rootfs, the volumes'
// sources, the namespaces to join, the caller's descriptors) and says what to pass otherwise.
// CRIU will see fds[i] as descriptor first_fd + i.
RestorePlan plan_restore(const CheckpointMetadata& metadata, const CriuOptions& caller, int first_fd);

}  // namespace nucleus::checkpoint
