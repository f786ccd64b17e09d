#include "criu/criu_log.hpp"

#include <algorithm>
#include <charconv>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"

namespace nucleus::checkpoint {

namespace {

constexpr std::size_t max_log_read = 64u << 20;
constexpr std::size_t max_lines = 10;
constexpr std::string_view no_error = "CRIU logged no error";
constexpr std::string_view vdso_hint =
    ". This CRIU does not understand this kernel's vDSO layout: install CRIU >= 4.1 (scripts/install-criu.sh)";

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
    // After a failed restore CRIU's cgroup daemon reports the lost connection: noise, not a cause.
    if (line.find("Error (") == std::string_view::npos || line.find("RLIMIT_NOFILE") != std::string_view::npos ||
        line.find("cgroupd: recv req error") != std::string_view::npos)
      continue;
    if (line.find("vdso") != std::string_view::npos || line.find("vDSO") != std::string_view::npos) vdso = true;
    if (errors.size() < max_lines) errors.push_back(trim(line));
  }
  std::string out = errors.empty() ? std::string(trim(console_output)) : fmt::format("{}", fmt::join(errors, "; "));
  if (out.empty()) out = no_error;
  if (vdso) out += vdso_hint;
  return out;
}

std::vector<std::string> criu_error_lines(std::string_view errors) {
  if (errors.ends_with(vdso_hint)) errors.remove_suffix(vdso_hint.size());
  std::vector<std::string> lines;
  if (errors == no_error) return lines;
  // criu_errors joins the log's lines with "; " (as criu_hint reads them); console output keeps its own.
  while (!errors.empty()) {
    const auto end = std::min(errors.find("; "), errors.find('\n'));
    const std::string_view line = trim(errors.substr(0, end));
    if (!line.empty()) lines.emplace_back(line);
    errors = end == std::string_view::npos ? std::string_view{} : errors.substr(end + (errors[end] == '\n' ? 1 : 2));
  }
  return lines;
}

namespace {

// What follows `marker` in `line` up to the first of `stops`.
std::string_view after(std::string_view line, std::string_view marker, std::string_view stops) {
  const auto at = line.find(marker);
  if (at == std::string_view::npos) return {};
  const std::string_view rest = line.substr(at + marker.size());
  return rest.substr(0, rest.find_first_of(stops));
}

// The mountpoint of "mnt: 92:./data doesn't have a proper root mount" as the container sees it.
std::string mount_in(std::string_view line) {
  const auto end = line.find(" doesn't have");
  const auto colon = line.rfind(':', end);
  if (end == std::string_view::npos || colon == std::string_view::npos) return "?";
  std::string_view mp = line.substr(colon + 1, end - colon - 1);
  if (mp.starts_with('.')) mp.remove_prefix(1);
  return mp.empty() ? "/" : std::string(mp);
}

struct KnownFailure {
  std::string_view needle;
  std::string (*explain)(std::string_view line);
};

const KnownFailure known_failures[] = {
    {"doesn't have a proper root mount",
     [](std::string_view l) {
       const std::string mp = mount_in(l);
       return fmt::format("the container's mount {} comes from outside it and was not found from the host: declare it "
                          "(external mnt[{}]:KEY at dump, external mnt[KEY]:HOST_PATH at restore)", mp, mp);
     }},
    {"execvp(\"",
     [](std::string_view l) {
       const std::string_view tool = after(l, "execvp(\"", "\"");
       const std::string_view package = tool == "ip" ? "iproute2" : tool == "nft" ? "nftables" : tool == "tar" ? "tar" : "iptables";
       return fmt::format("CRIU could not run {}: install {} (scripts/setup.sh does){}", tool, package,
                          package == "iptables" ? ", or choose network-lock nftables or skip" : "");
     }},
    {"Can't lookup mount=",
     [](std::string_view l) {
       return fmt::format("descriptor {} of the tree is open on mount {}, which is not in its mount namespace: open it "
                          "inside the container (stdio as pipes, or files it opens itself)",
                          after(l, "fd=", " "), after(l, "mount=", " "));
     }},
    {"Unable to find an external netns",
     [](std::string_view) {
       return std::string("the tree was in a network namespace shared with processes outside it: give that namespace "
                          "at restore (inherit-fd fd[N]:KEY with the key the dump recorded)");
     }},
    {"Can't get 1:16 opt",
     [](std::string_view) {
       return std::string("this CRIU cannot dump sockets on Linux 6.16 and newer (criu#2718): install CRIU 4.2.1 or newer "
                          "(scripts/install-criu.sh)");
     }},
    // Before the dump's "Connected TCP socket": the restore-time line contains it.
    {"Connected TCP socket in image",
     [](std::string_view) {
       return std::string("the checkpoint holds established TCP connections: restore with tcp-established (a plain "
                          "restore of a checkpoint made by this library applies it), or tcp-close to drop them");
     }},
    {"Connected TCP socket",
     [](std::string_view) {
       return std::string("the tree has established TCP connections: pass tcp-established (or tcp-close to drop them)");
     }},
    {"ext-unix-sk",
     [](std::string_view) {
       return std::string("the tree has a UNIX socket connected outside it: pass ext-unix-sk");
     }},
    {"file locks",
     [](std::string_view) { return std::string("the tree holds file locks: pass file-locks"); }},
    {"No set 1 found",
     [](std::string_view) {
       return std::string("the tree has a cgroup namespace of its own but stayed in CRIU's own cgroups, which CRIU "
                          "cannot restore: give the container a cgroup of its own (as runtimes do), or restore with "
                          "manage-cgroups ignore");
     }},
    {"is outside of its pid namespace",
     [](std::string_view) {
       return std::string("the tree's root leads a session that began outside its PID namespace, which CRIU cannot "
                          "dump: start the session inside it (e.g. unshare --pid --fork ... setsid CMD)");
     }},
    {"BUG at criu/mount.c",
     [](std::string_view) {
       return std::string("CRIU needs the container's rootfs to restore its mounts: give it (root, CLI --root PATH)");
     }},
};

}  // namespace

std::string criu_hint(std::string_view errors) {
  for (const auto& known : known_failures) {
    const auto at = errors.find(known.needle);
    if (at == std::string_view::npos) continue;
    const auto start = errors.rfind("; ", at);
    const std::string_view line = errors.substr(start == std::string_view::npos ? 0 : start + 2);
    return known.explain(line.substr(0, line.find("; ")));
  }
  return {};
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
