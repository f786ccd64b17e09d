// CheckpointState: the lifecycle of one dump or restore, and the error for a step it forbids.
#include "test_support.hpp"

#include <array>
#include <optional>
#include <string>
#include <utility>

#include <nucleus/checkpoint/checkpoint_state.hpp>
#include <nucleus/checkpoint/error.hpp>

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

using enum CheckpointState;

constexpr std::array all_states{None, Dumping, Dumped, Restoring, Restored};

// The names spelled out here, not taken from to_string, so that a wrong name is caught.
std::string name_of(CheckpointState s) {
  switch (s) {
    case None: return "None";
    case Dumping: return "Dumping";
    case Dumped: return "Dumped";
    case Restoring: return "Restoring";
    case Restored: return "Restored";
  }
  return "?";
}

// The only allowed steps: two forward paths and their aborts.
bool allowed(CheckpointState from, CheckpointState to) {
  constexpr std::array<std::pair<CheckpointState, CheckpointState>, 6> valid{{
      {None, Dumping}, {Dumping, Dumped}, {None, Restoring}, {Restoring, Restored}, {Dumping, None}, {Restoring, None}}};
  for (const auto& [f, t] : valid)
    if (f == from && t == to) return true;
  return false;
}

}  // namespace

TEST_CASE("seed: test_checkpoint_state_transitions", "[checkpoint_state][seed]") {
  // Valid forward transitions
  CHECK(can_transition(None, Dumping));
  CHECK(can_transition(Dumping, Dumped));
  CHECK(can_transition(None, Restoring));
  CHECK(can_transition(Restoring, Restored));

  // Valid abort transitions
  CHECK(can_transition(Dumping, None));
  CHECK(can_transition(Restoring, None));

  // Invalid transitions
  CHECK_FALSE(can_transition(None, Dumped));
  CHECK_FALSE(can_transition(None, Restored));
  CHECK_FALSE(can_transition(Dumped, Restoring));
  CHECK_FALSE(can_transition(Restored, Dumping));
}

TEST_CASE("to_string names every state", "[checkpoint_state]") {
  for (const auto s : all_states) CHECK(std::string(to_string(s)) == name_of(s));
}

TEST_CASE("can_transition allows exactly the six lifecycle steps", "[checkpoint_state]") {
  int valid = 0;
  for (const auto from : all_states) {
    for (const auto to : all_states) {
      INFO(name_of(from) << " -> " << name_of(to));
      CHECK(can_transition(from, to) == allowed(from, to));
      valid += allowed(from, to) ? 1 : 0;
    }
  }
  CHECK(valid == 6);  // the table above really lists six distinct pairs
}

TEST_CASE("transition returns the target of an allowed step", "[checkpoint_state]") {
  for (const auto from : all_states) {
    for (const auto to : all_states) {
      if (!allowed(from, to)) continue;
      INFO(name_of(from) << " -> " << name_of(to));
      CHECK(transition(from, to) == to);
    }
  }
}

TEST_CASE("transition refuses every other pair with Status::state and the seed's message", "[checkpoint_state]") {
  int refused = 0;
  for (const auto from : all_states) {
    for (const auto to : all_states) {
      if (allowed(from, to)) continue;
      INFO(name_of(from) << " -> " << name_of(to));
      const auto e = error_of([&] { (void)transition(from, to); });
      REQUIRE(e.has_value());
      CHECK(e->status() == Status::state);
      CHECK(std::string(e->what()) == "Invalid state transition: from " + name_of(from) + " to " + name_of(to));
      ++refused;
    }
  }
  CHECK(refused == 25 - 6);  // self-transitions and Dumped/Restored as sources included
}

TEST_CASE("a whole dump and a whole restore walk through the lifecycle", "[checkpoint_state]") {
  // As CriuRuntime drives it: a failed dump aborts to None, after which a new dump may start.
  CheckpointState s = None;
  s = transition(s, Dumping);
  s = transition(s, None);
  s = transition(s, Dumping);
  s = transition(s, Dumped);
  CHECK(s == Dumped);
  CHECK_THROWS_AS(transition(s, Dumping), Error);  // a finished dump is final

  s = transition(None, Restoring);
  s = transition(s, Restored);
  CHECK(s == Restored);
  CHECK_THROWS_AS(transition(s, None), Error);
}
