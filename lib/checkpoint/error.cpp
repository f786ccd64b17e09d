#include <nucleus/checkpoint/error.hpp>

namespace nucleus::checkpoint {

const char* status_name(Status status) noexcept {
  switch (status) {
    case Status::ok: return "NC_OK";
    case Status::invalid: return "NC_E_INVALID";
    case Status::permission: return "NC_E_PERMISSION";
    case Status::not_found: return "NC_E_NOT_FOUND";
    case Status::state: return "NC_E_STATE";
    case Status::criu: return "NC_E_CRIU";
    case Status::integrity: return "NC_E_INTEGRITY";
    case Status::io: return "NC_E_IO";
    case Status::key: return "NC_E_KEY";
    case Status::no_memory: return "NC_E_NOMEM";
    case Status::internal: return "NC_E_INTERNAL";
    case Status::unsupported: return "NC_E_UNSUPPORTED";
    case Status::unconfirmed: return "NC_E_UNCONFIRMED";
  }
  return "NC_E_UNKNOWN";
}

}  // namespace nucleus::checkpoint
