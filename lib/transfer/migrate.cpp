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
#include <csignal>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <nucleus/checkpoint/error.hpp>

#include "checkpoint/utf8.hpp"
#include "criu/dump_guardian.hpp"
#include "criu/proc.hpp"
#include "criu/runtime_support.hpp"
#include "fs/fs_util.hpp"
#include "signature/hex.hpp"
#include "transfer/commit_proof.hpp"
#include "transfer/listing.hpp"
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
// The restored tree waits this long at most for the source's commit, which the source sends as soon
// as it reads "ready": a round trip, no work.
constexpr milliseconds commit_time{30'000};

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

// The other end's next line, read until its newline (bounded in size and time). `peer` names it
// ("the receiver"), `late` says what to do when it is late.
std::string read_reply(int fd, Clock::time_point deadline, std::string_view peer, std::string_view late) {
  std::string line;
  char buf[4096];
  for (;;) {
    if (!readable_by(fd, deadline)) throw Error(Status::io, fmt::format("{} did not answer in time ({})", peer, late));
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::io, errno, fmt::format("the connection to {} failed before its answer", peer));
    if (n == 0) throw Error(Status::io, fmt::format("{} closed the connection without an answer (it was stopped or failed)", peer));
    line.append(buf, static_cast<std::size_t>(n));
    if (const auto end = line.find('\n'); end != std::string::npos) return line.substr(0, end);
    if (line.size() > max_reply)
      throw Error(Status::io, fmt::format("{}'s answer is longer than {} bytes: not a migration's", peer, max_reply));
  }
}

// The receiver's next answer.
std::string read_receivers(int fd, Clock::time_point deadline) {
  return read_reply(fd, deadline, "the receiver", "raise the reply timeout if its import and restore take longer");
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

// An answer line as JSON: an object, or Status::io (not a migration's answer). `peer` names its sender.
rapidjson::Document parse_reply(const std::string& line, std::string_view peer = "the receiver") {
  rapidjson::Document doc;
  doc.Parse(line.data(), line.size());
  if (!doc.IsObject()) throw Error(Status::io, fmt::format("{}'s answer is not a migration's (a JSON object)", peer));
  return doc;
}

// A refusal's error, in the receiver's own status; nothing if the reply is no refusal.
std::optional<Error> refusal_in(const rapidjson::Document& reply) {
  const auto ok = reply.FindMember("ok");
  if (ok == reply.MemberEnd() || !ok->value.IsBool() || ok->value.GetBool()) return std::nullopt;
  const std::uint64_t status = member_u64(reply, "status");
  const std::string error = member_string(reply, "error");
  // Unconfirmed is the source's own verdict: a receiver's refusal means the tree did not run there.
  const Status said = status >= 1 && status <= static_cast<int>(Status::unsupported) ? static_cast<Status>(status)
                      : status == static_cast<int>(Status::unconfirmed)              ? Status::io
                                                                                     : Status::internal;
  return Error(said,
               fmt::format("the receiver did not restore the tree: {}", error.empty() ? "(no reason given)" : error));
}

// Whether the reply says `word` is true ("ready", "ok", "commit").
bool says(const rapidjson::Document& reply, const char* word) {
  const auto it = reply.FindMember(word);
  return it != reply.MemberEnd() && it->value.IsBool() && it->value.GetBool();
}

// The restored tree's numbers in a ready or ok reply, into report.
void take_restored(const rapidjson::Document& reply, MigrationReport& report) {
  const std::uint64_t pid = member_u64(reply, "pid");
  if (pid == 0 || pid > 0x7fffffff) throw Error(Status::io, "the receiver's reply names no restored PID");
  report.restored_pid = static_cast<pid_t>(pid);
  report.restored_dir = member_string(reply, "dir");
  report.transfer = milliseconds(member_u64(reply, "import_ms"));
  report.restore = milliseconds(member_u64(reply, "restore_ms"));
}

// The receiver's second word, once it was told to let the tree run: only its "ok" ends the tree
// here, only its refusal resumes it; anything else leaves the tree stopped, since it may run there.
void confirm(int fd, const MigrateOptions& options, HeldTree& tree, MigrationReport& report) {
  std::optional<Error> refused;
  try {
    const rapidjson::Document reply = parse_reply(read_receivers(fd, Clock::now() + options.reply_timeout));
    refused = refusal_in(reply);
    if (!refused) {
      if (!says(reply, "ok")) throw Error(Status::io, "the receiver's reply is neither \"ok\" nor a refusal");
      take_restored(reply, report);
      return;
    }
  } catch (const Error& e) {
    throw Error(Status::unconfirmed,
                fmt::format("the receiver was told to run the tree and did not confirm that it does ({}); the tree "
                            "is left stopped here, root PID {}, since it may be running there ({}). If it runs "
                            "there, kill it here (kill -KILL); if not, resume it here (kill -CONT to each of its "
                            "processes) or restore it again from the checkpoint",
                            e.what(), tree.root(), report.restored_dir.empty() ? "no folder named" : report.restored_dir));
  }
  tree.may_run_elsewhere(false);  // refused after the commit: the receiver killed what it restored
  throw *refused;
}

// Sends the stream and takes the receiver's answer in two steps: "ready" (the tree is restored and
// held stopped there), to which the source answers "commit" once it no longer resumes its own
// copy, and then "ok" (the tree runs there). Throws, and so resumes the tree, until the commit; a
// failed send still looks for the receiver's reason, which says more than a reset.
void hand_over(const fs::path& work_dir, int fd, const MigrateOptions& options, const std::string& proof,
               Clock::time_point dumped, HeldTree& tree, MigrationReport& report) {
  std::optional<Error> sending;
  try {
    export_checkpoint(work_dir, fd, options.transfer);
  } catch (const Error& e) {
    sending = e;
  }
  rapidjson::Document reply;
  try {
    reply = parse_reply(read_receivers(fd, sending ? Clock::now() + reason_time : Clock::now() + options.reply_timeout));
  } catch (const Error& e) {
    if (sending) throw Error(sending->status(), fmt::format("{} ({})", sending->what(), e.what()));
    throw;
  }
  report.bytes_sent = bytes_acked(fd);
  if (std::optional<Error> refused = refusal_in(reply)) throw *refused;
  if (sending) throw *sending;
  if (!says(reply, "ready"))
    throw Error(Status::io, "the receiver's reply is not a migration reply (neither \"ready\" nor a refusal)");
  take_restored(reply, report);
  if (report.transfer.count() == 0) report.transfer = since(dumped);
  // From here the receiver may run the tree: ours must never resume unless the receiver says it
  // refused, even should this process die.
  tree.may_run_elsewhere(true);
  const std::string commit = fmt::format("{{\"commit\":true,\"proof\":\"{}\"}}\n", proof);
  const transfer::SigpipeBlock sigpipe_blocked;
  try {
    write_all(fd, commit.data(), commit.size(), "the commit to the receiver");
  } catch (const Error&) {
    // Not sent whole: the receiver cannot have been told. Without its word it lets nothing run.
    tree.may_run_elsewhere(false);
    throw;
  }
  confirm(fd, options, tree, report);
}

// The receiver's first line: the nonce the source's commit must prove (transfer/commit_proof.hpp).
transfer::CommitNonce read_hello(int fd, Clock::time_point deadline) {
  const rapidjson::Document hello = parse_reply(
      read_reply(fd, deadline, "the peer", "is a `nucleus-checkpoint receive` listening there?"), "the peer");
  const auto nonce = array_from_lower_hex<std::tuple_size_v<transfer::CommitNonce>>(member_string(hello, "nonce"));
  if (!nonce) throw Error(Status::io, "the peer's first line is not a migration receiver's (no nonce)");
  return *nonce;
}

// The source's proof that it commits this checkpoint on this connection.
std::string proof_of(const fs::path& work_dir, const transfer::CommitNonce& nonce, TreeKey key) {
  const UniqueFd dir = open_dir(work_dir, "checkpoint directory");
  return transfer::prove_commit(key, nonce, read_signature_text(dir.get()));
}

// The receiver's word as one JSON line (ASCII: the message is escaped): a refusal, or the restored
// tree's numbers under `word` ("ready": restored and held stopped; "ok": running).
std::string reply_line(const std::optional<Error>& failure, const ReceivedMigration& received, const char* word) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer, rapidjson::UTF8<>, rapidjson::ASCII<>> w(buffer);
  w.StartObject();
  if (failure) {
    w.Key("ok");
    w.Bool(false);
    w.Key("status");
    w.Int(static_cast<int>(failure->status()));
    w.Key("status_name");
    w.String(status_name(failure->status()));
    // Valid UTF-8, or the writer would stop mid-string: a message cut short, a path in any bytes.
    const std::string message = to_valid_utf8(std::string_view(failure->what()).substr(0, max_reply / 2));
    w.Key("error");
    w.String(message.data(), static_cast<rapidjson::SizeType>(message.size()));
  } else {
    w.Key(word);
    w.Bool(true);
    w.Key("pid");
    w.Int(received.tree.pid);
    const std::string dir = to_valid_utf8(received.dir.native());
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
  // Before anything is dumped: a peer that is not a receiver costs the tree nothing.
  const transfer::CommitNonce nonce = read_hello(connected_fd, Clock::now() + options.reply_timeout);
  CriuOptions criu = options.criu;
  criu.leave_running = false;
  const Clock::time_point start = Clock::now();
  runtime.dump(container, work_dir, criu, SignatureFormat::manifest, false, [&](HeldTree& tree) {
    const Clock::time_point dumped = Clock::now();
    report.dump = since(start);
    const std::string proof = proof_of(work_dir, nonce, tree.signer());  // by the key that signed the dump
    hand_over(work_dir, connected_fd, options, proof, dumped, tree, report);
    report.downtime = since(start);
  });
  return report;
}

ReceivedMigration receive_migration(CriuRuntime& runtime, int connected_fd, const fs::path& store,
                                    const CriuOptions& options, std::chrono::milliseconds stream_timeout) {
  ReceivedMigration received;
  std::optional<Error> failure;
  const transfer::SigpipeBlock sigpipe_blocked;
  try {
    require_socket(connected_fd, "receive");
    if (stream_timeout.count() <= 0) throw Error(Status::invalid, "receive: the stream timeout must be positive");
    bound_stalls(connected_fd, stream_timeout);
    const transfer::CommitNonce nonce = transfer::new_commit_nonce();
    const std::string hello = fmt::format("{{\"nonce\":\"{}\"}}\n", to_lower_hex(nonce));
    write_all(connected_fd, hello.data(), hello.size(), "the greeting to the source");
    // The source dumps once it has the nonce: the import is timed from the stream's first bytes.
    if (!readable_by(connected_fd, Clock::now() + stream_timeout))
      throw Error(Status::io, fmt::format("the source sent no stream within {} s of the greeting (does its dump take "
                                          "longer? raise the stream timeout)",
                                          std::chrono::duration_cast<std::chrono::seconds>(stream_timeout).count()));
    const Clock::time_point start = Clock::now();
    received.dir = store / received_name();
    const VerifyingKeys keys{KeyStore()};
    const std::string signature_text =
        transfer::import_checkpoint(connected_fd, received.dir, keys, transfer::StreamEnd::frame, stream_timeout);
    received.import_time = since(start);
    const Clock::time_point imported = Clock::now();
    // Restored and verified, the tree is left stopped by CRIU itself (should this process die now,
    // it stays stopped), and runs only once the source has given up resuming its own copy.
    CriuOptions stopped = options;
    stopped.leave_stopped = true;
    received.tree = runtime.restore_tree(received.dir, stopped);
    received.restore_time = since(imported);
    const ProcessTree tree = ProcessTree::open(received.tree.pid, received.tree.pidfd);
    try {
      const std::string ready = reply_line(std::nullopt, received, "ready");
      write_all(connected_fd, ready.data(), ready.size(), "the answer to the source");
      const rapidjson::Document commit = parse_reply(
          read_reply(connected_fd, Clock::now() + commit_time, "the source", "it must commit at once"), "the source");
      if (!says(commit, "commit")) throw Error(Status::io, "the source's answer is not a commit");
      const TreeKey key = keys.key_for(
          transfer::parse_manifest_signature(signature_text, "the imported checkpoint", "checking the commit"));
      transfer::check_commit(key, nonce, signature_text, member_string(commit, "proof"));
    } catch (const Error& e) {
      tree.kill();
      ::close(received.tree.pidfd);
      received.tree = {};
      throw Error(e.status(), fmt::format("the source did not commit the migration, so the restored tree was killed "
                                          "before it ran; the checkpoint stays in {} ({})",
                                          received.dir.native(), e.what()));
    }
    tree.signal(SIGCONT);
  } catch (const Error& e) {
    failure = e;
  } catch (const std::exception& e) {
    failure = Error(Status::internal, e.what());
  }
  received.reply = reply_line(failure, received, "ok");
  try {
    write_all(connected_fd, received.reply.data(), received.reply.size(), "the reply to the source");
  } catch (const Error&) {
    if (failure) throw *failure;
    // The tree runs here: the source, told to let it, keeps its copy stopped and says it is unsure.
    received.source_told = false;
  }
  if (failure) {
    ::shutdown(connected_fd, SHUT_WR);
    drain(connected_fd);
    throw *failure;
  }
  return received;
}

}  // namespace nucleus::checkpoint
