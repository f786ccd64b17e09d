#include <nucleus/checkpoint/checkpoint_state.hpp>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

namespace nucleus::checkpoint {

std::string_view to_string(CheckpointState state) noexcept {
  switch (state) {
    case CheckpointState::None: return "None";
    case CheckpointState::Dumping: return "Dumping";
    case CheckpointState::Dumped: return "Dumped";
    case CheckpointState::Restoring: return "Restoring";
    case CheckpointState::Restored: return "Restored";
  }
  return "Unknown";
}

bool can_transition(CheckpointState from, CheckpointState to) noexcept {
  using enum CheckpointState;
  switch (from) {
    case None: return to == Dumping || to == Restoring;
    case Dumping: return to == Dumped || to == None;
    case Restoring: return to == Restored || to == None;
    case Dumped:
    case Restored: return false;
  }
  return false;
}

CheckpointState transition(CheckpointState from, CheckpointState to) {
  if (!can_transition(from, to))
    throw Error(Status::state, fmt::format("Invalid state transition: from {} to {}", to_string(from), to_string(to)));
  return to;
}

}  // namespace nucleus::checkpoint
