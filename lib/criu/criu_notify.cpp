#include "criu/criu_notify.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <exception>
#include <string_view>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "criu/proc.hpp"
#include "fs/fs_util.hpp"

namespace nucleus::checkpoint {

namespace {

// CRIU executes the script itself, so it must live where programs may run: /run is often
// mounted noexec, /var/lib seldom.
constexpr std::array notify_parents{run_dir, "/var/lib/nucleus-checkpoint"};

// The script's text, fixed but for the notifications it reports (the library's own names):
// others it answers itself at once, without a round trip to the caller's thread.
std::string script_text(const std::vector<std::string_view>& reported) {
  std::string cases;
  for (const auto name : reported) cases += fmt::format("{}{}", cases.empty() ? "" : "|", name);
  return fmt::format(R"(#!/bin/sh
# Written by libnucleuscheckpoint: tells it which notification CRIU gives, and waits for its answer.
case "$CRTOOLS_SCRIPT_ACTION" in {}) ;; *) exit 0 ;; esac
dir=${{0%/*}}
printf '%s %s\n' "$CRTOOLS_SCRIPT_ACTION" "${{CRTOOLS_INIT_PID:-0}}" >"$dir/request" || exit 1
read -r answer <"$dir/answer" || exit 1
[ "$answer" = ok ]
)", cases);
}

struct Action {
  std::string_view name;
  CriuNotification notification;
};
constexpr Action actions[] = {
    {"pre-dump", CriuNotification::pre_dump},
    {"post-dump", CriuNotification::post_dump},
    {"pre-restore", CriuNotification::pre_restore},
    {"post-restore", CriuNotification::post_restore},
    {"network-lock", CriuNotification::network_lock},
    {"network-unlock", CriuNotification::network_unlock},
    {"setup-namespaces", CriuNotification::setup_namespaces},
    {"post-setup-namespaces", CriuNotification::post_setup_namespaces},
    {"pre-resume", CriuNotification::pre_resume},
    {"post-resume", CriuNotification::post_resume},
    {"status-ready", CriuNotification::status_ready},
};

PrivateRunDir executable_run_dir() {
  for (const char* parent : notify_parents) {
    PrivateRunDir run = make_private_run_dir(parent, "notify", "CRIU notification folder");
    struct statvfs vfs {};
    if (::fstatvfs(run.dir.get(), &vfs) == 0 && (vfs.f_flag & ST_NOEXEC) == 0) return run;
    ::unlinkat(run.parent.get(), run.name.c_str(), AT_REMOVEDIR);
  }
  throw Error(Status::io, fmt::format("CRIU's notifications need a folder where programs may run, and both {} and {} "
                                      "are on file systems mounted noexec", notify_parents[0], notify_parents[1]));
}

UniqueFd make_fifo(int dir_fd, const char* name) {
  if (::mkfifoat(dir_fd, name, 0600) != 0)
    throw system_error(Status::io, errno, fmt::format("cannot create the notification FIFO {}", name));
  // Read and write ends both held here: opening never blocks and the FIFO never reads as closed.
  UniqueFd fd(::openat(dir_fd, name, O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) throw system_error(Status::io, errno, fmt::format("cannot open the notification FIFO {}", name));
  return fd;
}

}  // namespace

NotifyChannel::NotifyChannel(const NotifyCallback& callback, const std::vector<CriuNotification>& reported)
    : callback_(callback), run_(executable_run_dir()) {
  try {
    std::vector<std::string_view> names;
    for (const auto& a : actions)
      if (reported.empty() || std::find(reported.begin(), reported.end(), a.notification) != reported.end())
        names.push_back(a.name);
    const std::string script = script_text(names);
    UniqueFd file(::openat(run_.dir.get(), "notify", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0700));
    if (!file) throw system_error(Status::io, errno, "cannot write CRIU's notification script");
    write_all(file.get(), script.data(), script.size(), "CRIU's notification script");
    request_ = make_fifo(run_.dir.get(), "request");
    answer_ = make_fifo(run_.dir.get(), "answer");
  } catch (...) {
    remove();
    throw;
  }
}

NotifyChannel::~NotifyChannel() { remove(); }

void NotifyChannel::remove() noexcept {
  for (const char* name : {"notify", "request", "answer"}) ::unlinkat(run_.dir.get(), name, 0);
  ::unlinkat(run_.parent.get(), run_.name.c_str(), AT_REMOVEDIR);
}

std::string NotifyChannel::script_path() const { return fmt::format("{}/notify", run_.path()); }

void NotifyChannel::serve() noexcept {
  char buf[256];
  const ssize_t n = ::read(request_.get(), buf, sizeof buf);
  if (n <= 0) return;
  pending_.append(buf, static_cast<std::size_t>(n));
  if (pending_.size() > 4096) pending_.clear();  // not the script's: it writes one short line
  for (auto nl = pending_.find('\n'); nl != std::string::npos; nl = pending_.find('\n')) {
    const std::string line = pending_.substr(0, nl);
    pending_.erase(0, nl + 1);
    const auto space = line.find(' ');
    const std::string_view name = std::string_view(line).substr(0, space);
    pid_t pid = 0;
    if (space != std::string::npos) std::from_chars(line.data() + space + 1, line.data() + line.size(), pid);
    bool go_on = true;
    for (const auto& a : actions) {
      if (a.name != name) continue;
      try {
        go_on = callback_(NotifyEvent{a.notification, pid});
        if (!go_on) refusal_ = fmt::format("the caller's notification callback refused {}", name);
      } catch (const std::exception& e) {
        go_on = false;
        refusal_ = fmt::format("the caller's notification callback failed at {}: {}", name, e.what());
      } catch (...) {
        go_on = false;
        refusal_ = fmt::format("the caller's notification callback failed at {}", name);
      }
    }
    // CRIU only logs a failed pre-resume or post-resume script and lets the tree run. At pre-resume
    // the tree is still stopped, so it is killed here before it runs a single instruction; at
    // post-resume it runs, so it is stopped whole first (again while it still grows), then killed.
    if (!go_on && (name == "pre-resume" || name == "post-resume") && pid > 0) {
      try {
        (name == "post-resume" ? ProcessTree::open_stopped(pid) : ProcessTree::open(pid)).signal(SIGKILL);
      } catch (...) {
        ::kill(pid, SIGKILL);  // the root at least
      }
    }
    const std::string_view answer = go_on ? "ok\n" : "fail\n";
    if (::write(answer_.get(), answer.data(), answer.size()) < 0) refusal_ = "cannot answer CRIU's notification";
  }
}

Notifications::Notifications(const NotifyCallback& callback, const std::vector<CriuNotification>& reported) {
  if (!callback) return;
  channel_.emplace(callback, reported);
  watch_ = ProcessWatch{channel_->request_fd(), [this] { channel_->serve(); }, {}};
}

void Notifications::add_args(std::vector<std::string>& args) const {
  if (channel_) args.insert(args.end(), {"--action-script", channel_->script_path()});
}

}  // namespace nucleus::checkpoint
