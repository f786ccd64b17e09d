// Errors of the C++ API: every failure throws Error, whose status is the C ABI's nc_status.
#pragma once

#include <stdexcept>
#include <string>

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

}  // namespace nucleus::checkpoint
