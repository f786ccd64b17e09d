// CRIU's notifications (its action scripts) delivered to a callback on the caller's thread, while
// CRIU waits for the answer.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nucleus/checkpoint/criu_options.hpp>

#include "criu/runtime_support.hpp"
#include "criu/subprocess.hpp"

namespace nucleus::checkpoint {

// A private folder holding a fixed shell script, which CRIU runs as its action script, and two
// FIFOs: the script writes "ACTION PID" into `request` and waits for "ok" or "fail" in `answer`.
// Only root can reach the folder, so nobody else can speak for CRIU or answer it.
class NotifyChannel {
 public:
  // `reported`: the notifications the callback gets (empty: all); CRIU's others go on at once.
  NotifyChannel(const NotifyCallback& callback, const std::vector<CriuNotification>& reported);
  ~NotifyChannel();
  NotifyChannel(const NotifyChannel&) = delete;
  NotifyChannel& operator=(const NotifyChannel&) = delete;

  std::string script_path() const;
  int request_fd() const noexcept { return request_.get(); }
  // Reads what the script wrote, runs the callback for it and answers; never throws.
  void serve() noexcept;
  // Why the callback stopped CRIU ("" if it did not).
  const std::string& refusal() const noexcept { return refusal_; }

 private:
  void remove() noexcept;

  const NotifyCallback& callback_;
  PrivateRunDir run_;
  UniqueFd request_, answer_;
  std::string pending_, refusal_;
};

// The caller's notifications for one CRIU run, if it asked for any: CRIU's arguments for them and
// what run_process serves while CRIU runs.
class Notifications {
 public:
  explicit Notifications(const NotifyCallback& callback, const std::vector<CriuNotification>& reported = {});
  void add_args(std::vector<std::string>& args) const;
  const ProcessWatch* watch() const noexcept { return channel_ ? &watch_ : nullptr; }
  // Why the caller's callback stopped CRIU, "" if it did not: the cause to report first.
  std::string refusal() const { return channel_ ? channel_->refusal() : std::string(); }

 private:
  std::optional<NotifyChannel> channel_;
  ProcessWatch watch_;
};

}  // namespace nucleus::checkpoint
