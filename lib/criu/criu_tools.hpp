// The programs CRIU runs for containers, and the environment it runs with.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nucleus/checkpoint/criu_options.hpp>

namespace nucleus::checkpoint {

// CRIU's whole environment: nothing of the caller's PATH or LD_* reaches it.
std::vector<std::string> criu_environment();

// Where `name` is in the PATH CRIU runs with, if anywhere.
std::optional<std::string> find_criu_tool(std::string_view name);

// For a tree in a network namespace of its own, CRIU locks its network (iptables-restore, unless
// nftables or skip is chosen) and saves and restores its addresses and routes (ip): refuses,
// before anything is frozen, when one of them is missing, naming the package and the option that
// avoids it.
void require_network_tools(NetworkLock lock, std::string_view action);

}  // namespace nucleus::checkpoint
