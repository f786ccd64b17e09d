// Errors of the C++ API: every failure throws Error, whose status is the C ABI's nc_status.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nucleus/checkpoint_export.h>

namespace nucleus::checkpoint {

enum class Status : int {
  ok = 0,
  invalid = 1,
  permission = 2,
  not_found = 3,
  state = 4,
  criu = 5,
  integrity = 6,
  io = 7,
  key = 8,
  no_memory = 9,
  internal = 10,
  unsupported = 11,  // a feature this build of the library lacks (built without its dependencies)
  // A migration whose outcome the source could not learn after it let the receiver run the tree:
  // the source's tree is left stopped, neither resumed (it may run there) nor killed.
  unconfirmed = 12,
};

// Stable upper-case name of a status, as in the C header ("NC_E_INTEGRITY").
NC_EXPORT const char* status_name(Status status) noexcept;

class NC_EXPORT Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  Status status() const noexcept { return status_; }

 private:
  Status status_;
};

// CRIU itself failed (status criu): its exit code, -1 when it did not exit (killed, timed out, or
// its status taken by a reaper of the caller's), and its own Error lines (from its log, else its
// console output), as the message quotes them. A class of its own so that Error's layout, part of
// the ABI, stays as it was; catch Error as before, or CriuError for these details.
class NC_EXPORT CriuError : public Error {
 public:
  CriuError(int exit_code, std::vector<std::string> lines, const std::string& message)
      : Error(Status::criu, message), exit_code_(exit_code),
        lines_(std::make_shared<const std::vector<std::string>>(std::move(lines))) {}
  int criu_exit_code() const noexcept { return exit_code_; }
  const std::vector<std::string>& criu_lines() const noexcept { return *lines_; }

 private:
  int exit_code_;
  std::shared_ptr<const std::vector<std::string>> lines_;  // shared: copying an exception must not throw
};

}  // namespace nucleus::checkpoint
