// migrate and receive_migration: a migration over one connection, cold or post-copy. The source's
// tree stays stopped from its dump until the receiver's reply; the reply decides whether it ends
// (the tree runs on the receiver) or resumes (anything else).
#include <nucleus/checkpoint/migrate.hpp>

#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sodium.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>
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
#include <nucleus/checkpoint/metadata.hpp>

#include "checkpoint/utf8.hpp"
#include "criu/dump_guardian.hpp"
#include "criu/lazy_pages.hpp"
#include "criu/proc.hpp"
#include "criu/runtime_support.hpp"
#include "fs/checkpoint_dir.hpp"
#include "fs/fs_util.hpp"
#include "signature/hex.hpp"
#include "transfer/commit_proof.hpp"
#include "transfer/listing.hpp"
#include "transfer/page_relay.hpp"
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

// The other end's next line, read until its newline (bounded in size and time). `peer` names it
// ("the receiver"), `late` says what to do when it is late.
std::string read_reply(int fd, Clock::time_point deadline, std::string_view peer, std::string_view late) {
  std::string line;
  char buf[4096];
  for (;;) {
    if (!transfer::readable_by(fd, deadline))
      throw Error(Status::io, fmt::format("{} did not answer in time ({})", peer, late));
    // Looked at first, then taken up to the newline only: a post-copy page stream follows it.
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_PEEK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::io, errno, fmt::format("the connection to {} failed before its answer", peer));
    if (n == 0) throw Error(Status::io, fmt::format("{} closed the connection without an answer (it was stopped or failed)", peer));
    const auto* newline = static_cast<const char*>(std::memchr(buf, '\n', static_cast<std::size_t>(n)));
    n = ::recv(fd, buf, newline ? static_cast<std::size_t>(newline - buf + 1) : static_cast<std::size_t>(n), 0);
    if (n <= 0) throw system_error(Status::io, errno, fmt::format("the connection to {} failed before its answer", peer));
    line.append(buf, static_cast<std::size_t>(n));
    if (newline) return line.substr(0, line.size() - 1);
    if (line.size() > max_reply)
      throw Error(Status::io, fmt::format("{}'s answer is longer than {} bytes: not a migration's", peer, max_reply));
  }
}

// The migration's lines: on the connection itself, or post-copy, once the page stream runs,
// between its frames.
class Conversation {
 public:
  explicit Conversation(int fd) : fd_(fd) {}
  void framed_by(transfer::PageStream* pages) noexcept { pages_ = pages; }
  std::string read(Clock::time_point deadline, std::string_view peer, std::string_view late) {
    return pages_ ? pages_->read_line(deadline, peer) : read_reply(fd_, deadline, peer, late);
  }
  // The receiver's next answer.
  std::string read_receivers(Clock::time_point deadline) {
    return read(deadline, "the receiver", "raise the reply timeout if its import and restore take longer");
  }
  void write(const std::string& line, std::string_view what) {
    if (pages_) pages_->send_line(line);
    else write_all(fd_, line.data(), line.size(), what);
  }

 private:
  int fd_;
  transfer::PageStream* pages_ = nullptr;
};

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

// Marks a refusal taken without its proof (ReceiverAnswers), for refusal_in to say so.
constexpr const char* unproven_member = " unproven";

// A refusal's error, in the receiver's own status; nothing if the reply is no refusal. Its words
// are shown without control characters: they may come from anyone on the path.
std::optional<Error> refusal_in(const rapidjson::Document& reply,
                                std::string_view refused = "did not restore the tree") {
  const auto ok = reply.FindMember("ok");
  if (ok == reply.MemberEnd() || !ok->value.IsBool() || ok->value.GetBool()) return std::nullopt;
  const std::uint64_t status = member_u64(reply, "status");
  std::string error = member_string(reply, "error");
  std::replace_if(error.begin(), error.end(), [](unsigned char c) { return is_ascii_control(c); }, '?');
  if (reply.HasMember(unproven_member))
    error += " (a refusal the receiver did not prove: it may come from anyone on the path)";
  // Unconfirmed is the source's own verdict: a receiver's refusal means the tree did not run there.
  const Status said = status >= 1 && status <= static_cast<int>(Status::unsupported) ? static_cast<Status>(status)
                      : status == static_cast<int>(Status::unconfirmed)              ? Status::io
                                                                                     : Status::internal;
  return Error(said,
               fmt::format("the receiver {}: {}", refused, error.empty() ? "(no reason given)" : error));
}

// Whether the reply says `word` is true ("ready", "ok", "commit").
bool says(const rapidjson::Document& reply, const char* word) {
  const auto it = reply.FindMember(word);
  return it != reply.MemberEnd() && it->value.IsBool() && it->value.GetBool();
}

// The receiver's answers as the source takes them: each proven by the receiver on this connection
// (transfer/commit_proof.hpp), but for a refusal before the commit, which only resumes the tree
// here, as a connection cut on the way does.
class ReceiverAnswers {
 public:
  ReceiverAnswers(TreeKey key, const transfer::AnswerNonces& nonces) noexcept : key_(key), nonces_(nonces) {}
  rapidjson::Document take(const std::string& line, bool committed) const {
    rapidjson::Document reply = parse_reply(line);
    if (committed || !refusal_in(reply)) return parse_reply(transfer::check_answer(key_, nonces_, line));
    try {
      transfer::check_answer(key_, nonces_, line);
    } catch (const Error&) {
      reply.AddMember(rapidjson::StringRef(unproven_member), true, reply.GetAllocator());
    }
    return reply;
  }

 private:
  TreeKey key_;
  transfer::AnswerNonces nonces_;
};

// A post-copy key in a reply ({"post_copy":{"key":hex, ...}}), or nothing.
std::optional<transfer::PageKey> post_copy_key(const rapidjson::Document& reply) {
  const auto it = reply.FindMember("post_copy");
  if (it == reply.MemberEnd() || !it->value.IsObject()) return std::nullopt;
  return array_from_lower_hex<std::tuple_size_v<transfer::PageKey>>(member_string(it->value, "key"));
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
void confirm(Conversation& lines, const ReceiverAnswers& answers, const MigrateOptions& options, HeldTree& tree,
             MigrationReport& report) {
  std::optional<Error> refused;
  try {
    const rapidjson::Document reply =
        answers.take(lines.read_receivers(Clock::now() + options.reply_timeout), true);
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

// The memory the post-copy dump in work_dir left out, from its own images.
LazyExtents left_out(const fs::path& work_dir) {
  const UniqueFd dir = open_dir(work_dir, "checkpoint directory");
  return read_lazy_extents(open_dir_at(dir.get(), CheckpointDir::images_name, "checkpoint images directory").get());
}

// The source's proof that it commits this checkpoint on this connection (and post-copy, `bound`).
std::string commit_proof_of(const fs::path& work_dir, const transfer::CommitNonce& nonce, TreeKey key,
                            std::string_view bound) {
  const UniqueFd dir = open_dir(work_dir, "checkpoint directory");
  return transfer::prove_commit(key, nonce, read_signature_text(dir.get()), bound);
}

// Sends the stream and takes the receiver's answer in two steps: "ready" (the tree is restored and
// held stopped there), to which the source answers "commit" once it no longer resumes its own
// copy, and then "ok" (the tree runs there). Throws, and so resumes the tree, until the commit; a
// failed send still looks for the receiver's reason, which says more than a reset. Post-copy, the
// page stream is keyed and started between the stream and "ready": the restore needs pages.
void hand_over(const fs::path& work_dir, int fd, const MigrateOptions& options, const transfer::AnswerNonces& nonces,
               const ReceiverAnswers& answers, Clock::time_point dumped, HeldTree& tree, MigrationReport& report,
               transfer::PageSender* pages) {
  std::optional<Error> sending;
  try {
    // Bounded as the replies are: a receiver that stops reading must not hold the stopped tree.
    transfer::export_checkpoint(work_dir, fd, options.transfer, options.reply_timeout);
  } catch (const Error& e) {
    sending = e;
  }
  Conversation lines(fd);
  rapidjson::Document reply;
  try {
    reply = answers.take(
        lines.read_receivers(sending ? Clock::now() + reason_time : Clock::now() + options.reply_timeout), false);
  } catch (const Error& e) {
    if (sending) throw Error(sending->status(), fmt::format("{} ({})", sending->what(), e.what()));
    throw;
  }
  if (std::optional<Error> refused = refusal_in(reply)) throw *refused;
  if (sending) throw *sending;
  std::string bound;
  if (pages) {
    const std::optional<transfer::PageKey> receiver = post_copy_key(reply);
    if (!receiver)
      throw Error(Status::unsupported, "the receiver does not take post-copy migrations (it answered the stream with "
                                       "no page stream key): upgrade it, or migrate without post-copy");
    const std::string header = fmt::format("{{\"post_copy\":{{\"header\":\"{}\"}}}}\n", pages->key_exchange(*receiver));
    write_all(fd, header.data(), header.size(), "the page stream's header to the receiver");
    pages->start(left_out(work_dir));
    lines.framed_by(pages);
    bound = transfer::page_keys_bound(pages->key(), *receiver);
    reply = answers.take(lines.read_receivers(Clock::now() + options.reply_timeout), false);
    if (std::optional<Error> refused = refusal_in(reply)) throw *refused;
  }
  report.bytes_sent = bytes_acked(fd);
  if (!says(reply, "ready"))
    throw Error(Status::io, "the receiver's reply is not a migration reply (neither \"ready\" nor a refusal)");
  take_restored(reply, report);
  if (report.transfer.count() == 0) report.transfer = since(dumped);
  const std::string commit = fmt::format("{{\"commit\":true,\"proof\":\"{}\"}}\n",
                                         commit_proof_of(work_dir, nonces.receiver, tree.signer(), bound));
  // From here the receiver may run the tree: ours must never resume unless the receiver says it
  // refused, even should this process die.
  tree.may_run_elsewhere(true);
  const transfer::SigpipeBlock sigpipe_blocked;
  try {
    // Post-copy: a page stream that failed may have let CRIU resume the tree: no commit then.
    if (pages) pages->rethrow_failure();
    lines.write(commit, "the commit to the receiver");
  } catch (...) {
    // Not sent whole (or not at all): the receiver cannot have been told. Without its word it
    // lets nothing run.
    tree.may_run_elsewhere(false);
    throw;
  }
  if (pages) pages->done_talking();  // the source's last line
  confirm(lines, answers, options, tree, report);
}

// Post-copy, after "ok": the receiver's last word, {"done":true}, once every page is in and CRIU's
// daemon has ended well. Only then may the source's copy end: a stream that ended otherwise (a
// daemon that failed, then closed it; a last message lost) leaves the receiver's copy killed.
void await_done(transfer::PageStream& pages, const ReceiverAnswers& answers) {
  const rapidjson::Document done =
      answers.take(pages.read_line(Clock::now() + std::chrono::hours(24), "the receiver"), true);
  if (std::optional<Error> refused = refusal_in(done)) throw *refused;
  if (!says(done, "done")) throw Error(Status::io, "the receiver's last word is not that every page is in");
}

// A greeting's nonce ({"nonce":"<hex>",...}), from `peer`.
transfer::CommitNonce nonce_in(const rapidjson::Document& greeting, std::string_view peer) {
  const auto nonce = array_from_lower_hex<std::tuple_size_v<transfer::CommitNonce>>(member_string(greeting, "nonce"));
  if (!nonce) throw Error(Status::io, fmt::format("{}'s first line is not a migration's (no nonce)", peer));
  return *nonce;
}

// The version of the conversation, in the receiver's greeting: 2 since the receiver proves its
// answers, 3 since the source proves its key before it dumps. A receiver that names none is older,
// and its answers cannot be told from forged ones.
constexpr std::uint64_t protocol = 3;

// The receiver's greeting: the nonce the source's commit must prove, and the id of the Ed25519 key
// the receiver proves its answers with, if it holds one.
struct Greeting {
  transfer::CommitNonce nonce;
  std::string answer_key_id;
  std::string line;  // as read, without its newline: the source's proof covers it
};

Greeting read_hello(int fd, Clock::time_point deadline) {
  std::string line = read_reply(fd, deadline, "the peer", "is a `nucleus-checkpoint receive` listening there?");
  const rapidjson::Document hello = parse_reply(line, "the peer");
  if (std::optional<Error> refused = refusal_in(hello, "refused the migration"))
    throw Error(refused->status(), fmt::format("{}; nothing was dumped", refused->what()));
  const Greeting greeting{nonce_in(hello, "the peer"), member_string(hello, "answer_key_id"), std::move(line)};
  if (member_u64(hello, "protocol") != protocol)
    throw Error(Status::unsupported, fmt::format("the receiver speaks another version of the migration (protocol {}, "
                                                 "this host {}): an older one cannot check this host's key before it "
                                                 "dumps, nor prove its answers; upgrade it to "
                                                 "this host's nucleus-checkpoint. Nothing was dumped",
                                                 member_u64(hello, "protocol"), protocol));
  return greeting;
}

// Before an Ed25519-signed migration: the receiver's public key its answers must be proven by, the
// one given (`pinned`) or else from this host's trust folder. Nothing is dumped yet.
Ed25519PublicKey trusted_receiver(const std::string& key_id, const std::optional<Ed25519PublicKey>& pinned) {
  static constexpr std::string_view how =
      "on the receiver, `nucleus-checkpoint keygen --ed25519 --public-key-out FILE` writes its public key (and makes "
      "the key if there is none); here, `nucleus-checkpoint trust add FILE` trusts it";
  const auto id = array_from_lower_hex<Ed25519PublicKey::id_size>(key_id);
  if (!id)
    throw Error(Status::key, fmt::format("the checkpoint is to be signed with Ed25519, and the receiver holds no "
                                         "Ed25519 key of its own to prove its answers with, so this host could not "
                                         "tell its \"ok\" from a forged one: {}; nothing was dumped",
                                         how));
  if (pinned) {
    if (pinned->id() != *id)
      throw Error(Status::integrity,
                  fmt::format("the receiver proves its answers with Ed25519 key {}, not with the receiver's key given "
                              "({}): is it the host you meant? nothing was dumped",
                              key_id, pinned->id_hex()));
    return *pinned;
  }
  const KeyStore store;
  try {
    return store.trusted_key(*id);
  } catch (const Error& e) {
    // Not found is said in the receiver's terms; anything else (a trust folder that is not safe) as it is.
    throw Error(e.status(),
                fmt::format("the receiver proves its answers with Ed25519 key {}, which this host does not trust ({}), "
                            "so its \"ok\" could not be told from a forged one: {}; nothing was dumped",
                            key_id,
                            e.status() == Status::integrity ? fmt::format("no such key in {}", store.trust_dir().native())
                                                            : std::string(e.what()),
                            how));
  }
}


// The receiver's word as one JSON object, no newline (ASCII: the message is escaped): a refusal, or
// the restored tree's numbers under `word` ("ready": restored and held stopped; "ok": running).
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
  return std::string(buffer.GetString(), buffer.GetSize());
}

// Who the source proved to be in its answer to the greeting: the holder of the HMAC key, or of the
// trusted Ed25519 key its "key_id" names. Its checkpoint must be signed by that same key.
struct SourceIdentity {
  SignatureKind kind = SignatureKind::hmac_sha256;
  Ed25519PublicKey::Id key_id{};
};

SourceIdentity proven_source(const rapidjson::Document& answer, const VerifyingKeys& keys,
                             const transfer::AnswerNonces& nonces, std::string_view greeting) {
  const std::string proof = member_string(answer, "proof");
  if (proof.empty())
    throw Error(Status::unsupported, "the source's answer to the greeting proves no key: the source is older than "
                                     "this receiver; upgrade it to this host's nucleus-checkpoint. Nothing was "
                                     "imported");
  SourceIdentity source;
  if (answer.HasMember("key_id")) {
    const auto id = array_from_lower_hex<Ed25519PublicKey::id_size>(member_string(answer, "key_id"));
    if (!id) throw Error(Status::io, "the source's answer to the greeting names no key (its key_id is not one)");
    source = {SignatureKind::ed25519, *id};
  }
  ChunkedSignature named;
  named.kind = source.kind;
  named.key_id = source.key_id;
  const TreeKey key = [&] {
    try {
      return keys.key_for(named);
    } catch (const Error& e) {
      throw Error(e.status(), fmt::format("the source is to sign its checkpoint with a key this host cannot check, so "
                                          "it is refused before it dumps: {}",
                                          e.what()));
    }
  }();
  try {
    transfer::check_source(key, nonces, greeting, proof);
  } catch (const Error& e) {
    if (source.kind == SignatureKind::ed25519) throw;
    throw Error(e.status(), "the source proved itself with another HMAC key than this host's (or replayed an answer "
                            "from another connection, or its greeting was changed on the way): both hosts must hold the same key (NUCLEUS_CHECKPOINT_HMAC_KEY_FILE, "
                            "mode 0600 on each), or have the source sign with Ed25519 (--sign ed25519) and trust its "
                            "key here. Nothing was imported");
  }
  return source;
}

// What the source still sends, read and dropped until it ends or drain_time passes, so that closing
// the connection does not reset it before the source has read the reply.
void drain(int fd) noexcept {
  const Clock::time_point deadline = Clock::now() + drain_time;
  char buf[65536];
  try {
    while (transfer::readable_by(fd, deadline)) {
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

// The receiver's restored tree, as the page stream's failure must find it from its own threads:
// killed whole before anything else of the migration goes.
class RestoredHandle {
 public:
  void set(const RestoredTree& tree) {
    const std::lock_guard lock(mutex_);
    tree_ = tree;
  }
  void kill() noexcept {
    const std::lock_guard lock(mutex_);
    if (tree_.pidfd < 0) return;
    try {
      ProcessTree::open_stopped(tree_.pid, tree_.pidfd).kill();
    } catch (...) {
      ::syscall(SYS_pidfd_send_signal, tree_.pidfd, SIGKILL, nullptr, 0);  // the root at least
    }
  }

 private:
  std::mutex mutex_;
  RestoredTree tree_;
};

// The receiver's post-copy: CRIU's lazy-pages daemon, and the page stream that feeds it.
struct PostCopyReceiver {
  UniqueFd daemon_end, receiver_end;
  std::optional<LazyPagesDaemon> daemon;
  std::optional<transfer::PageReceiver> pages;

  PostCopyReceiver(int criu_binary_fd, int dir_fd, int connected_fd, const CriuOptions& options,
                   milliseconds stall_timeout, RestoredHandle& restored) {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0)
      throw system_error(Status::io, errno, "cannot create the socket for CRIU's lazy-pages daemon");
    daemon_end.reset(pair[0]);
    receiver_end.reset(pair[1]);
    const UniqueFd images = open_dir_at(dir_fd, CheckpointDir::images_name, "checkpoint images directory");
    daemon.emplace(criu_binary_fd, images.get(), daemon_end.get(), receiver_end.get(), options, commit_time);
    daemon_end.reset();  // the daemon's own copy: its end must be the socket's
    pages.emplace(receiver_end.get(), connected_fd, stall_timeout, [&restored] { restored.kill(); });
  }
};

// The key this host signs the checkpoint with, loaded before anything is dumped.
struct SigningKey {
  std::optional<HmacKey> hmac;
  std::optional<Ed25519SecretKey> ed25519;
  TreeKey key() const { return ed25519 ? TreeKey(*ed25519) : TreeKey(*hmac); }
};

}  // namespace

MigrationReport migrate(CriuRuntime& runtime, const ContainerInfo& container, const fs::path& work_dir,
                        int connected_fd, const MigrateOptions& options) {
  require_socket(connected_fd, "migrate");
  if (options.reply_timeout.count() <= 0) throw Error(Status::invalid, "migrate: the reply timeout must be positive");
  if (options.receiver_key && options.criu.signing != SignatureKind::ed25519)
    throw Error(Status::invalid, "migrate: a receiver key (--receiver-key, nc_options_set_receiver_key) pins the key "
                                 "that proves an Ed25519 migration's answers; sign with Ed25519 (--sign ed25519), or "
                                 "leave it out: with HMAC the shared key proves them");
  if (options.post_copy) {
    require_lazy_page_server();
    require_own_pid_namespace(container.pid);
  }
  bound_stalls(connected_fd, options.reply_timeout);
  MigrationReport report;
  // Pre-dump rounds would shorten the downtime where CRIU can track memory; they are not made yet.
  report.rounds_reason =
      memory_tracking_missing(runtime.binary_fd_)
          .value_or(options.post_copy ? "post-copy: the memory follows the tree"
                                      : "a cold migration: pre-dump rounds are not implemented yet");
  // Before anything is dumped: a peer that is not a receiver costs the tree nothing.
  const Greeting hello = read_hello(connected_fd, Clock::now() + options.reply_timeout);
  const std::optional<Ed25519PublicKey> receiver_key =
      options.criu.signing == SignatureKind::ed25519
          ? std::optional(trusted_receiver(hello.answer_key_id, options.receiver_key))
          : std::nullopt;
  if (receiver_key) report.receiver_key_id = receiver_key->id_hex();
  const transfer::AnswerNonces nonces{hello.nonce, transfer::new_commit_nonce()};
  // This host proves itself with the key it will sign with, and dumps only on the receiver's
  // proven "go": a receiver that could not verify the checkpoint refuses before the tree stops.
  SigningKey signing;
  if (options.criu.signing == SignatureKind::ed25519) signing.ed25519 = runtime.ed25519_signing_key();
  else signing.hmac = runtime.signing_key();
  const std::string greeted =
      fmt::format("{{\"nonce\":\"{}\"{},\"proof\":\"{}\"}}\n", to_lower_hex(nonces.source),
                  signing.ed25519 ? fmt::format(",\"key_id\":\"{}\"", signing.ed25519->public_key().id_hex()) : "",
                  transfer::prove_source(signing.key(), nonces, hello.line));
  write_all(connected_fd, greeted.data(), greeted.size(), "the answer to the receiver's greeting");
  const ReceiverAnswers answers(receiver_key ? TreeKey(*receiver_key) : signing.key(), nonces);
  try {
    const rapidjson::Document go = answers.take(
        read_reply(connected_fd, Clock::now() + options.reply_timeout, "the receiver", "it answers at once"), false);
    if (std::optional<Error> refused = refusal_in(go, "refused the migration")) throw *refused;
    if (!says(go, "go")) throw Error(Status::io, "the receiver's answer to this host's greeting is neither \"go\" nor a refusal");
  } catch (const Error& e) {
    throw Error(e.status(), fmt::format("{}; nothing was dumped", e.what()));
  }
  CriuOptions criu = options.criu;
  criu.leave_running = false;
  const Clock::time_point start = Clock::now();
  HandOver hand_over_tree;
  // Post-copy: CRIU's page server on one end of a socket pair, the page stream on the other. CRIU
  // serves only once the post-dump notification returns, and the receiver's restore needs pages:
  // so the hand-over goes on beside CRIU, on a thread of its own, and `served` waits for it.
  UniqueFd criu_end, sender_end;
  std::optional<transfer::PageSender> pages;
  std::thread beside_criu;
  std::exception_ptr failure;
  if (options.post_copy) {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0)
      throw system_error(Status::io, errno, "cannot create the socket for CRIU's page server");
    criu_end.reset(pair[0]);
    sender_end.reset(pair[1]);
    pages.emplace(sender_end.get(), connected_fd, options.reply_timeout);
    hand_over_tree.lazy_pages_socket = criu_end.get();
    hand_over_tree.post_copy_key = to_lower_hex(pages->key());
  }
  hand_over_tree.give = [&](HeldTree& tree) {
    const Clock::time_point dumped = Clock::now();
    report.dump = since(start);
    if (!pages) {
      hand_over(work_dir, connected_fd, options, nonces, answers, dumped, tree, report, nullptr);
      report.downtime = since(start);
      return;
    }
    criu_end.reset();  // CRIU's own copy: its end must be the socket's
    beside_criu = std::thread([&, dumped, answers] {
      try {
        hand_over(work_dir, connected_fd, options, nonces, answers, dumped, tree, report, &*pages);
        report.downtime = since(start);
        const Clock::time_point running = Clock::now();
        await_done(*pages, answers);
        report.pages_sent = pages->finish().pages;
        report.post_copy = since(running);
      } catch (...) {
        failure = std::current_exception();
        // CRIU's socket shut: CRIU ends (or is ended), and the tree is resumed unless it may run
        // elsewhere, when it stays stopped.
        pages->abort(failure);
        tree.end_criu(std::chrono::seconds(5));
      }
    });
  };
  hand_over_tree.refused = [&] { ::shutdown(sender_end.get(), SHUT_RDWR); };
  hand_over_tree.served = [&](HeldTree& tree) {
    if (beside_criu.joinable()) beside_criu.join();
    if (!failure) return;
    if (!tree.may_run_elsewhere()) std::rethrow_exception(failure);
    try {
      std::rethrow_exception(failure);
    } catch (const Error& e) {
      if (e.status() == Status::unconfirmed) throw;
      throw Error(Status::unconfirmed,
                  fmt::format("the tree runs on the receiver, but its memory did not all reach it ({}); the receiver "
                              "kills its copy when it loses the page stream, so this one, root PID {}, is left "
                              "stopped: once the receiver's copy is gone ({}), resume it here (kill -CONT to each of "
                              "its processes), or kill it",
                              e.what(), tree.root(), report.restored_dir.empty() ? "no folder named" : report.restored_dir));
    }
  };
  try {
    runtime.dump(container, work_dir, criu, SignatureFormat::manifest, false, hand_over_tree);
  } catch (...) {
    if (beside_criu.joinable()) {
      pages->abort(std::current_exception());
      beside_criu.join();
    }
    throw;
  }
  return report;
}

ReceivedMigration receive_migration(CriuRuntime& runtime, int connected_fd, const fs::path& store,
                                    const CriuOptions& options, std::chrono::milliseconds stream_timeout) {
  ReceivedMigration received;
  std::optional<Error> failure;
  const transfer::SigpipeBlock sigpipe_blocked;
  Conversation lines(connected_fd);
  // Post-copy, the tree dies on any failure before anything else of it goes: the daemon, and with
  // it the memory not yet in, which the kernel would otherwise hand out as zero pages.
  RestoredHandle restored;
  std::optional<PostCopyReceiver> post_copy;
  // The answers, proven once the stream verified and the key is known (transfer/commit_proof.hpp).
  transfer::AnswerNonces nonces{};
  std::optional<VerifyingKeys> keys;
  std::optional<Ed25519SecretKey> own_key;
  std::optional<Error> own_key_failure;
  std::optional<TreeKey> answer_key;
  const auto answer = [&](const std::string& json) {
    return answer_key ? transfer::prove_answer(*answer_key, nonces, json) : json + "\n";
  };
  const auto give_up_tree = [&] {
    restored.kill();
    restored.set({});  // before its pidfd closes: the page stream's threads may still reach for it
    if (received.tree.pidfd >= 0) ::close(received.tree.pidfd);
    received.tree = {};
  };
  try {
    require_socket(connected_fd, "receive");
    if (stream_timeout.count() <= 0) throw Error(Status::invalid, "receive: the stream timeout must be positive");
    bound_stalls(connected_fd, stream_timeout);
    nonces.receiver = transfer::new_commit_nonce();
    // The key this host proves its answers with when the checkpoint is signed with Ed25519: its own
    // (the source must trust it); HMAC-signed, both hold the key that signed it. One that does not
    // load fails an Ed25519 migration only, and says why there.
    try {
      if (runtime.ed25519_key_) own_key = Ed25519SecretKey::from_bytes(runtime.ed25519_key_->bytes());
      else if (KeyStore store; store.ed25519_exists()) own_key = store.load_ed25519();
    } catch (const Error& e) {
      own_key_failure = e;
    }
    const std::string hello =
        own_key ? fmt::format("{{\"nonce\":\"{}\",\"protocol\":{},\"answer_key_id\":\"{}\"}}\n",
                              to_lower_hex(nonces.receiver), protocol, own_key->public_key().id_hex())
                : fmt::format("{{\"nonce\":\"{}\",\"protocol\":{}}}\n", to_lower_hex(nonces.receiver), protocol);
    write_all(connected_fd, hello.data(), hello.size(), "the greeting to the source");
    // The source answers at once, before it dumps; an older one sends its stream instead.
    const std::string source_hello =
        read_reply(connected_fd, Clock::now() + commit_time, "the source", "it answers the greeting at once");
    if (source_hello.starts_with("\x89NCX"))
      throw Error(Status::unsupported, "the source is older than this receiver: it sent its stream without answering "
                                       "the greeting, so it cannot check this host's answers; upgrade it to this "
                                       "host's nucleus-checkpoint");
    const rapidjson::Document source = parse_reply(source_hello, "the source");
    nonces.source = nonce_in(source, "the source");
    keys.emplace(KeyStore());
    const SourceIdentity source_is =
        proven_source(source, *keys, nonces, std::string_view(hello).substr(0, hello.size() - 1));
    // The key this host proves its answers with: the HMAC key both hold, or its own Ed25519 key.
    if (source_is.kind == SignatureKind::hmac_sha256) answer_key = keys->hmac();
    else if (own_key) answer_key = TreeKey(*own_key);
    else if (own_key_failure)
      throw Error(own_key_failure->status(), fmt::format("the source signs with Ed25519, and this host's own Ed25519 "
                                                         "key, which proves its answers to the source, does not "
                                                         "load: {}",
                                                         own_key_failure->what()));
    else
      throw Error(Status::key, "the source signs with Ed25519, and this host holds no Ed25519 key of its own to prove "
                               "its answers to the source with: make one (`nucleus-checkpoint keygen --ed25519 "
                               "--public-key-out FILE`) and have the source trust it (`nucleus-checkpoint trust add "
                               "FILE` there)");
    const std::string go = answer(R"({"go":true})");
    write_all(connected_fd, go.data(), go.size(), "the go to the source");
    // The source dumps once it has the go: the import is timed from the stream's first bytes.
    if (!transfer::readable_by(connected_fd, Clock::now() + stream_timeout))
      throw Error(Status::io, fmt::format("the source sent no stream within {} s of the go (does its dump take "
                                          "longer? raise the stream timeout)",
                                          std::chrono::duration_cast<std::chrono::seconds>(stream_timeout).count()));
    const Clock::time_point start = Clock::now();
    received.dir = store / received_name();
    const std::string signature_text =
        transfer::import_checkpoint(connected_fd, received.dir, *keys, transfer::StreamEnd::frame, stream_timeout);
    received.import_time = since(start);
    const ChunkedSignature signature =
        transfer::parse_manifest_signature(signature_text, "the imported checkpoint", "checking the commit");
    if (signature.kind != source_is.kind || signature.key_id != source_is.key_id)
      throw Error(Status::integrity, "the checkpoint is signed by another key than the one the source proved itself "
                                     "with on this connection");
    const TreeKey key = keys->key_for(signature);
    const Clock::time_point imported = Clock::now();
    // Restored and verified, the tree is left stopped by CRIU itself (should this process die now,
    // it stays stopped), and runs only once the source has given up resuming its own copy.
    CriuOptions stopped = options;
    stopped.leave_stopped = true;
    std::string bound;
    {
      const UniqueFd dir = open_dir(received.dir, "received checkpoint");
      const std::string source_key_hex = CheckpointMetadata::load(dir.get()).record.post_copy_key;
      if (!source_key_hex.empty()) {
        // Post-copy: the page stream is keyed (the source's key as its signed metadata gives it)
        // and runs before the restore, which needs pages.
        const auto source_key = array_from_lower_hex<std::tuple_size_v<transfer::PageKey>>(source_key_hex);
        if (!source_key) throw Error(Status::integrity, "the checkpoint's post-copy key is not a key");
        post_copy.emplace(runtime.binary_fd_, dir.get(), connected_fd, options, stream_timeout, restored);
        const std::string page_key =
            answer(fmt::format("{{\"post_copy\":{{\"key\":\"{}\"}}}}", to_lower_hex(post_copy->pages->key())));
        write_all(connected_fd, page_key.data(), page_key.size(), "the page stream's key to the source");
        // From here the source reads only the page stream's frames: a refusal goes as one.
        lines.framed_by(&*post_copy->pages);
        const rapidjson::Document header = parse_reply(
            read_reply(connected_fd, Clock::now() + commit_time, "the source", "it must answer at once"), "the source");
        const auto it = header.FindMember("post_copy");
        post_copy->pages->key_exchange(*source_key,
                                       it != header.MemberEnd() && it->value.IsObject() ? member_string(it->value, "header")
                                                                                        : std::string());
        post_copy->pages->start();
        stopped.work_dir = post_copy->daemon->work_path();
        bound = transfer::page_keys_bound(*source_key, post_copy->pages->key());
      }
    }
    received.tree = runtime.restore_tracked(received.dir, stopped, true, post_copy.has_value());
    restored.set(received.tree);
    received.restore_time = since(imported);
    const auto killed_before_it_ran = [&](const Error& e, std::string_view why) {
      give_up_tree();
      return Error(e.status(), fmt::format("{}, so the restored tree was killed before it ran; the checkpoint stays "
                                           "in {} ({})",
                                           why, received.dir.native(), e.what()));
    };
    try {
      if (post_copy) post_copy->daemon->hold(received.tree.pidfd);
    } catch (const Error& e) {
      throw killed_before_it_ran(e, "the restored tree could not be held while its memory follows it");
    }
    try {
      lines.write(answer(reply_line(std::nullopt, received, "ready")), "the answer to the source");
      const rapidjson::Document commit =
          parse_reply(lines.read(Clock::now() + commit_time, "the source", "it must commit at once"), "the source");
      if (!says(commit, "commit")) throw Error(Status::io, "the source's answer is not a commit");
      transfer::check_commit(key, nonces.receiver, signature_text, member_string(commit, "proof"), bound);
    } catch (const Error& e) {
      throw killed_before_it_ran(e, "the source did not commit the migration");
    }
    ProcessTree::open(received.tree.pid, received.tree.pidfd).signal(SIGCONT);
  } catch (const Error& e) {
    failure = e;
  } catch (const std::exception& e) {
    failure = Error(Status::internal, e.what());
  }
  received.reply = answer(reply_line(failure, received, "ok"));
  try {
    lines.write(received.reply, "the reply to the source");
  } catch (const Error&) {
    if (failure) throw *failure;
    // The tree runs here: the source, told to let it, keeps its copy stopped and says it is unsure.
    received.source_told = false;
  }
  if (failure) {
    if (post_copy) {
      post_copy->pages->abort(std::make_exception_ptr(*failure));
      throw *failure;
    }
    ::shutdown(connected_fd, SHUT_WR);
    drain(connected_fd);
    throw *failure;
  }
  if (post_copy) {
    const Clock::time_point running = Clock::now();
    try {
      received.pages_received = post_copy->pages->finish().pages;
      post_copy->daemon->wait_done(stream_timeout);
      post_copy->pages->send_line(answer("{\"done\":true}"));
      post_copy->pages->done_talking();
    } catch (const Error& e) {
      const pid_t pid = received.tree.pid;
      give_up_tree();
      throw Error(e.status(), fmt::format("the restored tree (root PID {}) ran, but its memory did not all arrive, so "
                                          "it was killed; the source keeps its own copy stopped and can resume it. "
                                          "The checkpoint stays in {}; CRIU's lazy-pages daemon: {} ({})",
                                          pid, received.dir.native(), post_copy->daemon->keep_logs(), e.what()));
    }
    received.post_copy_time = since(running);
  }
  return received;
}

}  // namespace nucleus::checkpoint
