#include "criu/criu_log.hpp"

#include <charconv>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"

namespace nucleus::checkpoint {

namespace {

constexpr std::size_t max_log_read = 64u << 20;
constexpr std::size_t max_lines = 10;

std::string_view trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

}  // namespace

std::string criu_errors(int dir_fd, const std::string& log_name, std::string_view console_output) {
  std::string log;
  try {
    log = read_file_at(dir_fd, log_name, max_log_read, "CRIU log");
  } catch (const Error&) {
    // No log (CRIU failed before opening it): its console output is all there is.
  }
  std::vector<std::string_view> errors;
  bool vdso = false;
  std::string_view rest = log;
  while (!rest.empty()) {
    const auto eol = rest.find('\n');
    const std::string_view line = rest.substr(0, eol);
    rest = eol == std::string_view::npos ? std::string_view{} : rest.substr(eol + 1);
    if (line.find("Error (") == std::string_view::npos || line.find("RLIMIT_NOFILE") != std::string_view::npos) continue;
    if (line.find("vdso") != std::string_view::npos || line.find("vDSO") != std::string_view::npos) vdso = true;
    if (errors.size() < max_lines) errors.push_back(trim(line));
  }
  std::string out = errors.empty() ? std::string(trim(console_output)) : fmt::format("{}", fmt::join(errors, "; "));
  if (out.empty()) out = "CRIU logged no error";
  if (vdso)
    out += ". This CRIU does not understand this kernel's vDSO layout: install CRIU >= 4.1 (scripts/install-criu.sh)";
  return out;
}

std::string log_tail(int dir_fd, const std::string& log_name) {
  try {
    const std::string log = read_file_at(dir_fd, log_name, max_log_read, "CRIU log");
    return log.substr(log.size() > 4096 ? log.size() - 4096 : 0);
  } catch (const Error&) {
    return {};
  }
}

std::optional<pid_t> taken_pid(std::string_view errors) {
  constexpr std::string_view marker = "Can't fork for ";
  const auto at = errors.find(marker);
  if (at == std::string_view::npos) return std::nullopt;
  const std::string_view rest = errors.substr(at + marker.size());
  pid_t pid = 0;
  const auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), pid);
  if (ec != std::errc() || !std::string_view(end, rest.data() + rest.size()).starts_with(": File exists"))
    return std::nullopt;
  return pid;
}

}  // namespace nucleus::checkpoint
