// The lifecycle of one dump or restore.
#pragma once

#include <string_view>

#include <nucleus/checkpoint_export.h>

namespace nucleus::checkpoint {

enum class CheckpointState : int { None = 0, Dumping = 1, Dumped = 2, Restoring = 3, Restored = 4 };

NC_EXPORT std::string_view to_string(CheckpointState state) noexcept;

// None->Dumping->Dumped, None->Restoring->Restored, and the aborts Dumping->None, Restoring->None.
NC_EXPORT bool can_transition(CheckpointState from, CheckpointState to) noexcept;

// Returns `to`, or throws Error(Status::state, "Invalid state transition: from X to Y").
NC_EXPORT CheckpointState transition(CheckpointState from, CheckpointState to);

}  // namespace nucleus::checkpoint
