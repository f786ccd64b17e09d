#include "criu/criu_tools.hpp"

#include <unistd.h>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

namespace nucleus::checkpoint {

namespace {
constexpr std::string_view criu_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
}  // namespace

// CRIU_FAULT=130 is CRIU's switch to step the parasite's sigreturn with PTRACE_SYSCALL instead of
// a hardware breakpoint: under hypervisors that do not forward debug exceptions (this project's
// machines among them) a breakpoint never fires and CRIU waits forever. It costs microseconds.
std::vector<std::string> criu_environment() {
  return {fmt::format("PATH={}", criu_path), "LANG=C", "CRIU_FAULT=130"};
}

std::optional<std::string> find_criu_tool(std::string_view name) {
  for (std::size_t at = 0; at <= criu_path.size();) {
    const auto colon = criu_path.find(':', at);
    const std::string_view dir = criu_path.substr(at, colon == std::string_view::npos ? std::string_view::npos : colon - at);
    std::string candidate = fmt::format("{}/{}", dir, name);
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (colon == std::string_view::npos) break;
    at = colon + 1;
  }
  return std::nullopt;
}

void require_network_tools(NetworkLock lock, std::string_view action) {
  const auto missing = [&](std::string_view tool, std::string_view package, std::string_view why,
                           std::string_view instead) {
    if (find_criu_tool(tool)) return;
    throw Error(Status::criu, fmt::format("cannot {} a tree in a network namespace of its own: CRIU runs {} to {}, and "
                                          "it is not installed ({}). Install {} (scripts/setup.sh does){}",
                                          action, tool, why, criu_path, package, instead));
  };
  missing("ip", "iproute2", "save and restore the namespace's addresses and routes", "");
  // (The nftables lock is CRIU's own, through libnftables: it runs no program.)
  if (lock == NetworkLock::criu_default || lock == NetworkLock::iptables)
    missing("iptables-restore", "iptables", "lock its network while it works",
            ", or choose network-lock nftables or skip");
}

}  // namespace nucleus::checkpoint
