// Reading what CRIU said: its log's Error lines, and the failures the library explains.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace nucleus::checkpoint {

// CRIU's own "Error (...)" lines from log_name in dir_fd (at most ten, the harmless
// RLIMIT_NOFILE one left out), else its console output; with a hint when the failure is one
// the library knows (a CRIU too old for the kernel's vDSO).
std::string criu_errors(int dir_fd, const std::string& log_name, std::string_view console_output);

// The lines of a criu_errors text, each CRIU's own (its log's "Error (...)" lines, or its
// console output's lines), without the library's hint; none for "CRIU logged no error".
std::vector<std::string> criu_error_lines(std::string_view criu_errors);

// What a known failure among criu_errors' lines means and what fixes it, in the caller's terms
// (which mount, descriptor or option); "" for one the library does not know.
std::string criu_hint(std::string_view criu_errors);

// The last 4 KiB of log_name in dir_fd ("" if unreadable): where CRIU says how it ended.
std::string log_tail(int dir_fd, const std::string& log_name);

// The PID of "Can't fork for PID: File exists": a PID the restored tree needs is taken.
std::optional<pid_t> taken_pid(std::string_view criu_errors);

}  // namespace nucleus::checkpoint
