// migrate and receive_migration: a cold migration over one connection. The source's tree stays
// stopped from its dump until the receiver's reply; the reply decides whether it ends (the tree
// runs on the receiver) or resumes (anything else).
#include <nucleus/checkpoint/migrate.hpp>

#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sodium.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <nucleus/checkpoint/error.hpp>

#include "criu/proc.hpp"
#include "criu/runtime_support.hpp"
#include "fs/fs_util.hpp"
#include "transfer/transfer_stream.hpp"

namespace nucleus::checkpoint {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// A reply is one short line; anything longer is not a reply of ours.
constexpr std::size_t max_reply = 64 * 1024;
// After a failure the receiver reads what the source still sends for this long at most, so that
// its reply is not lost to a reset; then it closes.
constexpr milliseconds drain_time{5000};
// After a failed send, the source waits this long at most for the receiver's reason.
constexpr milliseconds reason_time{5000};

milliseconds since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

void require_socket(int fd, std::string_view operation) {
  if (fd < 0) throw Error(Status::invalid, fmt::format("{}: the connection's descriptor is negative", operation));
  if (!S_ISSOCK(stat_fd(fd, "the connection").st_mode))
    throw Error(Status::invalid, fmt::format("{}: descriptor {} is not a connected socket", operation, fd));
}

// On TCP, data left unacknowledged this long (a host gone, a peer that stopped reading) fails the
// connection instead of blocking forever; other sockets are left as they are.
void bound_stalls(int fd, milliseconds timeout) {
  const auto ms = static_cast<unsigned>(std::min<milliseconds::rep>(timeout.count(), 0x7fffffff));
  if (::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms) != 0 && errno != EOPNOTSUPP &&
      errno != ENOPROTOOPT)
    throw system_error(status_of_errno(errno), errno, "cannot set the connection's timeout");
}

// The stream's bytes the receiver acknowledged; 0 where the socket is not TCP.
std::uint64_t bytes_acked(int fd) {
  tcp_info info{};
  socklen_t size = sizeof info;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &size) != 0 ||
      size < offsetof(tcp_info, tcpi_bytes_acked) + sizeof info.tcpi_bytes_acked)
    return 0;
  return info.tcpi_bytes_acked;
}

// Waits until fd is readable or the deadline passes; false at the deadline.
bool readable_by(int fd, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 60'000)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) throw system_error(Status::io, errno, "cannot wait for the connection");
  }
}

// The receiver's reply line, read until its newline (bounded in size and time).
std::string read_reply(int fd, Clock::time_point deadline) {
  std::string line;
  char buf[4096];
  for (;;) {
    if (!readable_by(fd, deadline))
      throw Error(Status::io, "the receiver did not reply in time (raise the reply timeout if its import and restore "
                              "take longer)");
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::io, errno, "the connection to the receiver failed before its reply");
    if (n == 0) throw Error(Status::io, "the receiver closed the connection without a reply (it was stopped or failed)");
    line.append(buf, static_cast<std::size_t>(n));
    if (const auto end = line.find('\n'); end != std::string::npos) return line.substr(0, end);
    if (line.size() > max_reply)
      throw Error(Status::io, fmt::format("the receiver's reply is longer than {} bytes: not a receiver's", max_reply));
  }
}

std::uint64_t member_u64(const rapidjson::Value& v, const char* name) {
  const auto it = v.FindMember(name);
  return it != v.MemberEnd() && it->value.IsUint64() ? it->value.GetUint64() : 0;
}

std::string member_string(const rapidjson::Value& v, const char* name) {
  const auto it = v.FindMember(name);
  return it != v.MemberEnd() && it->value.IsString() ? std::string(it->value.GetString(), it->value.GetStringLength())
                                                    : std::string();
}

// The reply's outcome into report; the receiver's error, in its own status, if it did not restore.
void take_reply(const std::string& line, MigrationReport& report) {
  rapidjson::Document doc;
  doc.Parse(line.data(), line.size());
  const auto ok = doc.IsObject() ? doc.FindMember("ok") : rapidjson::Value::ConstMemberIterator();
  if (!doc.IsObject() || ok == doc.MemberEnd() || !ok->value.IsBool())
    throw Error(Status::io, "the receiver's reply is not a migration reply (a JSON object with \"ok\")");
  if (!ok->value.GetBool()) {
    const std::uint64_t status = member_u64(doc, "status");
    const std::string error = member_string(doc, "error");
    throw Error(status >= 1 && status <= static_cast<int>(Status::unsupported) ? static_cast<Status>(status)
                                                                                : Status::internal,
                fmt::format("the receiver did not restore the tree: {}", error.empty() ? "(no reason given)" : error));
  }
  const std::uint64_t pid = member_u64(doc, "pid");
  if (pid == 0 || pid > 0x7fffffff) throw Error(Status::io, "the receiver's reply names no restored PID");
  report.restored_pid = static_cast<pid_t>(pid);
  report.restored_dir = member_string(doc, "dir");
  report.transfer = milliseconds(member_u64(doc, "import_ms"));
  report.restore = milliseconds(member_u64(doc, "restore_ms"));
}

// Sends the stream, then takes the reply; throws (and so resumes the tree) unless the receiver
// restored it. A failed send still looks for the receiver's reason, which says more than a reset.
void hand_over(const fs::path& work_dir, int fd, const MigrateOptions& options, Clock::time_point dumped,
               MigrationReport& report) {
  std::optional<Error> sending;
  try {
    export_checkpoint(work_dir, fd, options.transfer);
    if (::shutdown(fd, SHUT_WR) != 0) throw system_error(Status::io, errno, "cannot end the stream to the receiver");
  } catch (const Error& e) {
    sending = e;
  }
  std::string line;
  try {
    line = read_reply(fd, sending ? Clock::now() + reason_time : Clock::now() + options.reply_timeout);
  } catch (const Error& e) {
    if (sending) throw Error(sending->status(), fmt::format("{} ({})", sending->what(), e.what()));
    throw;
  }
  report.bytes_sent = bytes_acked(fd);
  take_reply(line, report);
  if (report.transfer.count() == 0) report.transfer = since(dumped);
}

// The outcome as one JSON line (ASCII: the message is escaped).
std::string reply_line(const std::optional<Error>& failure, const ReceivedMigration& received) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer, rapidjson::UTF8<>, rapidjson::ASCII<>> w(buffer);
  w.StartObject();
  w.Key("ok");
  w.Bool(!failure);
  if (failure) {
    w.Key("status");
    w.Int(static_cast<int>(failure->status()));
    w.Key("status_name");
    w.String(status_name(failure->status()));
    const std::string message = std::string(failure->what()).substr(0, max_reply / 2);
    w.Key("error");
    w.String(message.data(), static_cast<rapidjson::SizeType>(message.size()));
  } else {
    w.Key("pid");
    w.Int(received.tree.pid);
    const std::string dir = received.dir.native();
    w.Key("dir");
    w.String(dir.data(), static_cast<rapidjson::SizeType>(dir.size()));
    w.Key("import_ms");
    w.Uint64(static_cast<std::uint64_t>(received.import_time.count()));
    w.Key("restore_ms");
    w.Uint64(static_cast<std::uint64_t>(received.restore_time.count()));
  }
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize()) + "\n";
}

// What the source still sends, read and dropped until it ends or drain_time passes, so that closing
// the connection does not reset it before the source has read the reply.
void drain(int fd) noexcept {
  const Clock::time_point deadline = Clock::now() + drain_time;
  char buf[65536];
  try {
    while (readable_by(fd, deadline)) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n == 0 || (n < 0 && errno != EINTR)) return;
    }
  } catch (const Error&) {
  }
}

// A new folder's name under the store: when it came, and random bytes so that two never meet.
std::string received_name() {
  const auto seconds =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  return fmt::format("migration-{}-{:08x}", seconds, randombytes_random());
}

}  // namespace

MigrationReport migrate(CriuRuntime& runtime, const ContainerInfo& container, const fs::path& work_dir,
                        int connected_fd, const MigrateOptions& options) {
  require_socket(connected_fd, "migrate");
  if (options.reply_timeout.count() <= 0) throw Error(Status::invalid, "migrate: the reply timeout must be positive");
  bound_stalls(connected_fd, options.reply_timeout);
  MigrationReport report;
  // Pre-dump rounds would shorten the downtime where CRIU can track memory; they are not made yet.
  report.rounds_reason = memory_tracking_missing(runtime.binary_fd_)
                             .value_or("a cold migration: pre-dump rounds are not implemented yet");
  CriuOptions criu = options.criu;
  criu.leave_running = false;
  const Clock::time_point start = Clock::now();
  runtime.dump(container, work_dir, criu, SignatureFormat::manifest, false, [&] {
    const Clock::time_point dumped = Clock::now();
    report.dump = since(start);
    hand_over(work_dir, connected_fd, options, dumped, report);
    report.downtime = since(start);
  });
  return report;
}

ReceivedMigration receive_migration(CriuRuntime& runtime, int connected_fd, const fs::path& store,
                                    const CriuOptions& options) {
  ReceivedMigration received;
  std::optional<Error> failure;
  try {
    require_socket(connected_fd, "receive");
    // The source connects before it dumps: the import is timed from the stream's first bytes.
    readable_by(connected_fd, Clock::time_point::max());
    const Clock::time_point start = Clock::now();
    received.dir = store / received_name();
    import_checkpoint(connected_fd, received.dir);
    received.import_time = since(start);
    const Clock::time_point imported = Clock::now();
    received.tree = runtime.restore_tree(received.dir, options);
    received.restore_time = since(imported);
  } catch (const Error& e) {
    failure = e;
  } catch (const std::exception& e) {
    failure = Error(Status::internal, e.what());
  }
  received.reply = reply_line(failure, received);
  const transfer::SigpipeBlock sigpipe_blocked;
  try {
    write_all(connected_fd, received.reply.data(), received.reply.size(), "the reply to the source");
  } catch (const Error& e) {
    if (failure) throw *failure;
    // The source cannot learn that the tree runs here, so it resumes it there: it must not run twice.
    ProcessTree::open(received.tree.pid, received.tree.pidfd).kill();
    ::close(received.tree.pidfd);
    throw Error(Status::io, fmt::format("the restored tree was killed: the source could not be told that it runs here ({}); "
                                        "the checkpoint stays in {}",
                                        e.what(), received.dir.native()));
  }
  if (failure) {
    ::shutdown(connected_fd, SHUT_WR);
    drain(connected_fd);
    throw *failure;
  }
  return received;
}

}  // namespace nucleus::checkpoint
