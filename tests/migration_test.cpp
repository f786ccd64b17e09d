// The two ends of a migration (migrate, receive_migration) each against a scripted other end over a
// socket pair, with the real CRIU and real process trees: what the source does with each answer
// (ends the tree, resumes it, or leaves it stopped when it cannot know), and what the receiver
// replies, holds and keeps. tests/migrate_test.py runs both ends together between two network
// namespaces.
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/migrate.hpp>
#include <nucleus/checkpoint/transfer.hpp>

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "fs/unique_fd.hpp"
#include "process_support.hpp"
#include "signature/chunked_signature.hpp"
#include "signature/hex.hpp"
#include "transfer/commit_proof.hpp"
#include "transfer/transfer_stream.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

// A receiver's greeting with a fixed nonce (a real one is random), and the proof a commit must carry.
const transfer::CommitNonce nonce{7};
const std::string hello = fmt::format("{{\"nonce\":\"{}\",\"protocol\":3}}\n", to_lower_hex(nonce));
// The source's nonce in its answer to the greeting, fixed.
const transfer::CommitNonce source_nonce{9};
std::string signature_of(const fs::path& dir) {
  const UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  return read_signature_text(fd.get());
}
// The commit the source owes for the checkpoint in dir, proven for `for_nonce` with this host's key.
std::string commit_for(const fs::path& dir, const transfer::CommitNonce& for_nonce) {
  const HmacKey key = KeyStore().load();
  return fmt::format("{{\"commit\":true,\"proof\":\"{}\"}}\n", transfer::prove_commit(key, for_nonce, signature_of(dir)));
}
// The source's commit as the receiver reads it, whose proof checks for `nonce` and dir's signature.
bool is_proven_commit(const std::string& line, const fs::path& dir) {
  const std::string prefix = R"({"commit":true,"proof":")";
  if (!line.starts_with(prefix) || !line.ends_with("\"}\n")) return false;
  const HmacKey key = KeyStore().load();
  return !error_of([&] {
    transfer::check_commit(key, nonce, signature_of(dir), line.substr(prefix.size(), line.size() - prefix.size() - 3));
  });
}
// The nonce of a greeting, or of the source's answer to it.
transfer::CommitNonce nonce_in(const std::string& greeting) {
  const std::string prefix = R"({"nonce":")";
  REQUIRE(greeting.starts_with(prefix));
  const auto given = array_from_lower_hex<32>(greeting.substr(prefix.size(), 64));
  REQUIRE(given.has_value());
  return *given;
}
// A receiver's answer line proven, as a receiver holding this host's HMAC key proves it, for the
// greeting's nonce and the source's `from_source`.
std::string proven(const std::string& line, const transfer::CommitNonce& from_source) {
  const HmacKey key = KeyStore().load();
  return transfer::prove_answer(key, {nonce, from_source}, line.substr(0, line.size() - 1));
}
std::string_view without_newline(std::string_view line) { return line.substr(0, line.find('\n')); }
// A source's answer to `greeting`, proven with this host's HMAC key as a source holding it proves it.
std::string source_hello_for(const std::string& greeting) {
  const HmacKey key = KeyStore().load_or_create();
  return fmt::format(R"({{"nonce":"{}","proof":"{}"}})" "\n", to_lower_hex(source_nonce),
                     transfer::prove_source(key, {nonce_in(greeting), source_nonce}, without_newline(greeting)));
}
const std::string go = R"({"go":true})" "\n";
const std::string ready = R"({"ready":true,"pid":4242,"dir":"/srv/m/c1","import_ms":30,"restore_ms":40})" "\n";
const std::string ok = R"({"ok":true,"pid":4242,"dir":"/srv/m/c1","import_ms":30,"restore_ms":45})" "\n";

struct Fixture {
  TempDir tmp;
  KeyFileEnv key{secure_key_dir(tmp) / "checkpoint.key"};
  std::unique_ptr<CriuRuntime> rt = real_criu();
  fs::path work_dir = tmp / "work" / "c1";
  fs::path store = tmp / "store";
  UniqueFd here, there;  // a connected socket pair: this end, the scripted other end

  Fixture() {
    fs::create_directories(work_dir.parent_path());
    fs::create_directories(store);
    reconnect();
  }

  // Another attempt in the same case: no checkpoint on either side, a new connection.
  void next_attempt() {
    fs::remove_all(work_dir);
    fs::remove_all(tmp / "received");
    reconnect();
  }

  void reconnect() {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    here.reset(fds[0]);
    there.reset(fds[1]);
  }

  // What the other end read until the end of the stream, or until a newline if `line`.
  static std::string read_from(int fd, bool line = false) {
    std::string bytes;
    char c = 0;
    while (::read(fd, &c, 1) == 1) {
      bytes += c;
      if (line && c == '\n') break;
    }
    return bytes;
  }
  static void say(int fd, const std::string& line) {
    CHECK(::send(fd, line.data(), line.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(line.size()));
  }
  // A scripted source's side of the greeting: reads it, answers as a source holding this host's
  // key, and takes the receiver's go. Returns the greeting.
  static std::string greet_as_source(int fd) {
    const std::string greeting = read_from(fd, true);
    say(fd, source_hello_for(greeting));
    const std::string answer = read_from(fd, true);
    CHECK(answer.starts_with(R"({"go":true,"proof":")"));
    return greeting;
  }
  // A scripted receiver's: greets, reads the source's answer and says go, proven. Returns the source's nonce.
  static transfer::CommitNonce greet_as_receiver(int fd) {
    say(fd, hello);
    const transfer::CommitNonce from_source = nonce_in(read_from(fd, true));
    say(fd, proven(go, from_source));
    return from_source;
  }

  // A scripted receiver: takes the stream whole (an import that checks it), says `first`, and if
  // the source commits, says `second`; an empty line is the connection closed instead. JSON lines
  // go proven for this connection, unless their Proof says otherwise.
  enum class Proof { this_connection, none, another_connection };
  struct Script {
    Proof first_proof = Proof::this_connection, second_proof = Proof::this_connection;
    bool imported = false;
    std::string commit_seen;
  };
  MigrationReport migrate_against(pid_t pid, const std::string& first, const std::string& second,
                                  std::optional<Error>& error, Script& script) {
    std::thread receiver([&] {
      const transfer::CommitNonce from_source = greet_as_receiver(there.get());
      const auto answer = [&](const std::string& line, Proof proof) {
        if (proof == Proof::none || !line.starts_with('{')) return line;
        return proven(line, proof == Proof::this_connection ? from_source : transfer::CommitNonce{1});
      };
      try {
        transfer::import_checkpoint(there.get(), tmp / "received", KeyStore(), transfer::StreamEnd::frame);
        script.imported = true;
      } catch (const Error&) {
      }
      if (first.empty()) return there.reset();
      say(there.get(), answer(first, script.first_proof));
      script.commit_seen = read_from(there.get(), true);
      if (second.empty() || script.commit_seen.empty()) return there.reset();
      say(there.get(), answer(second, script.second_proof));
    });
    MigrationReport report;
    error = error_of([&] { report = migrate(*rt, container("m1", pid), work_dir, here.get(), {}); });
    ::shutdown(here.get(), SHUT_RDWR);  // a receiver still waiting for a commit hears there is none
    receiver.join();
    return report;
  }
};

bool counts_on(const CounterTree& tree) {
  const long before = tree.count("parent");
  return wait_until([&] { return tree.count("parent") > before + 2; }, std::chrono::seconds(5));
}

// Stopped, and stays so: not resumed (it counts no more), not killed.
bool stays_stopped(const CounterTree& tree) {
  const long before = tree.count("parent");
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  return process_state(tree.pid()) == 'T' && tree.count("parent") == before;
}

}  // namespace

TEST_CASE_METHOD(Fixture, "a receiver's refusal resumes the tree, with the receiver's status and reason",
                 "[migrate]") {
  CounterTree tree(tmp / "counter");
  std::optional<Error> error;
  Script script;
  script.first_proof = Proof::none;  // taken unproven: before the commit a refusal only resumes, as a cut would
  migrate_against(tree.pid(),
                  R"({"ok":false,"status":6,"status_name":"NC_E_INTEGRITY","error":"chunk 3 differs\u001b[2J"})"
                  "\n", "", error, script);
  REQUIRE(error.has_value());
  INFO(error->what());
  CHECK(script.imported);  // a whole, verifying stream came, ended by its frame alone
  CHECK(script.commit_seen.empty());
  CHECK(error->status() == Status::integrity);
  CHECK(contains(error->what(), "the receiver did not restore the tree: chunk 3 differs?[2J (a refusal the receiver "
                                "did not prove"));
  CHECK(counts_on(tree));
  HmacTree::verify(work_dir, KeyStore());  // the checkpoint stays, whole
}

TEST_CASE_METHOD(Fixture, "no reply, or one that is not a receiver's, resumes the tree and commits nothing",
                 "[migrate]") {
  for (const std::string& line : {std::string(), std::string("HTTP/1.1 400 Bad Request\n"),
                                  std::string(R"({"ok":true})" "\n"), std::string(R"({"ready":true})" "\n")}) {
    CounterTree tree(tmp / "counter");
    std::optional<Error> error;
    Script script;
    migrate_against(tree.pid(), line, ok, error, script);
    there.reset();
    REQUIRE(error.has_value());
    INFO(line << ": " << error->what());
    CHECK(error->status() == Status::io);
    CHECK(script.commit_seen.empty());
    CHECK(counts_on(tree));
    next_attempt();
  }
}

TEST_CASE_METHOD(Fixture, "ready, commit, ok: the stopped tree ends and the report is filled", "[migrate]") {
  CounterTree tree(tmp / "counter");
  std::optional<Error> error;
  Script script;
  const MigrationReport report = migrate_against(tree.pid(), ready, ok, error, script);
  if (error) FAIL(error->what());
  CHECK(is_proven_commit(script.commit_seen, work_dir));
  CHECK(wait_until([&] { return ended(tree.pid()); }));
  CHECK(report.restored_pid == 4242);
  CHECK(report.restored_dir == "/srv/m/c1");
  CHECK(report.transfer.count() == 30);
  CHECK(report.restore.count() == 45);
  CHECK(report.downtime >= report.dump);
  CHECK(report.dump.count() > 0);
  CHECK(report.rounds == 0);
  CHECK_FALSE(report.rounds_reason.empty());
}

TEST_CASE_METHOD(Fixture, "a refusal after the commit resumes the tree", "[migrate]") {
  CounterTree tree(tmp / "counter");
  std::optional<Error> error;
  Script script;
  migrate_against(tree.pid(), ready,
                  R"({"ok":false,"status":5,"status_name":"NC_E_CRIU","error":"post-resume failed"})" "\n", error,
                  script);
  REQUIRE(error.has_value());
  CHECK(is_proven_commit(script.commit_seen, work_dir));
  CHECK(error->status() == Status::criu);
  CHECK(counts_on(tree));
}

TEST_CASE_METHOD(Fixture, "answers not proven by the receiver on this connection never end the tree, nor resume it once "
                          "committed", "[migrate]") {
  // Whoever sits on the path, answering for the receiver: its "ready" gets no commit (the tree
  // resumes); after the commit, its "ok" or refusal leaves the tree stopped, neither ended nor
  // resumed. Unproven, or proven for another connection (an answer replayed).
  const std::string refusal = R"({"ok":false,"status":5,"status_name":"NC_E_CRIU","error":"post-resume failed"})" "\n";
  for (const auto& [first_proof, second_proof, second] :
       {std::tuple{Proof::none, Proof::this_connection, ok}, std::tuple{Proof::another_connection, Proof::this_connection, ok},
        std::tuple{Proof::this_connection, Proof::none, ok}, std::tuple{Proof::this_connection, Proof::another_connection, ok},
        std::tuple{Proof::this_connection, Proof::none, refusal},
        std::tuple{Proof::this_connection, Proof::another_connection, refusal}}) {
    CounterTree tree(tmp / "counter");
    std::optional<Error> error;
    Script script;
    script.first_proof = first_proof;
    script.second_proof = second_proof;
    migrate_against(tree.pid(), ready, second, error, script);
    there.reset();
    REQUIRE(error.has_value());
    INFO(error->what());
    CHECK(contains(error->what(), "on this connection"));
    if (first_proof != Proof::this_connection) {
      CHECK(error->status() == Status::integrity);
      CHECK(script.commit_seen.empty());
      CHECK(counts_on(tree));
    } else {
      CHECK(is_proven_commit(script.commit_seen, work_dir));
      CHECK(error->status() == Status::unconfirmed);
      CHECK(stays_stopped(tree));
    }
    next_attempt();
  }
}

TEST_CASE_METHOD(Fixture, "Ed25519: the source migrates only to a receiver it trusts to answer, and dumps nothing before",
                 "[migrate]") {
  KeyStore().load_or_create_ed25519();  // this host's key, trusted here
  const Ed25519SecretKey stranger = Ed25519SecretKey::generate();
  MigrateOptions options;
  options.criu.signing = SignatureKind::ed25519;
  const auto greeting_with = [](const Ed25519PublicKey& key) {
    return fmt::format(R"({{"nonce":"{}","protocol":3,"answer_key_id":"{}"}})" "\n", to_lower_hex(nonce),
                       key.id_hex());
  };
  const std::string keyless = hello, untrusted = greeting_with(stranger.public_key());
  // A receiver pinned (its key given): another key answering is refused, even one trusted here.
  const std::string not_pinned = greeting_with(KeyStore().load_ed25519().public_key());
  for (const std::string& greeting : {keyless, untrusted, not_pinned}) {
    CounterTree tree(tmp / "counter");
    say(there.get(), greeting);
    if (greeting == not_pinned) options.receiver_key = stranger.public_key();
    const auto error = error_of([&] { migrate(*rt, container("m1", tree.pid()), work_dir, here.get(), options); });
    REQUIRE(error.has_value());
    INFO(error->what());
    CHECK(error->status() == (greeting == keyless ? Status::key : Status::integrity));
    CHECK(contains(error->what(), greeting == keyless     ? "holds no Ed25519 key of its own"
                                  : greeting == untrusted ? "does not trust"
                                                          : "not with the receiver's key given"));
    if (greeting != not_pinned) CHECK(contains(error->what(), "nucleus-checkpoint trust add FILE"));
    CHECK(contains(error->what(), "nothing was dumped"));
    CHECK_FALSE(fs::exists(work_dir));
    CHECK(counts_on(tree));
    reconnect();
  }
}

TEST_CASE_METHOD(Fixture, "Ed25519: a real migration, the receiver's answers proven by its own key, given to the source",
                 "[migrate]") {
  KeyStore().load_or_create_ed25519();  // the source's key, which the receiver (this host too) trusts
  // The receiver's own key, which the source is given rather than trusts.
  const Ed25519SecretKey receiver_key = Ed25519SecretKey::generate();
  CounterTree tree(tmp / "counter", 0, true);  // its own PID namespace: the restored copy takes its PIDs
  const std::unique_ptr<CriuRuntime> receiver_rt = real_criu();
  receiver_rt->set_ed25519_key(Ed25519SecretKey::from_bytes(receiver_key.bytes()));
  std::optional<ReceivedMigration> received;
  std::optional<Error> receiver_error;
  std::thread receiver([&] {
    receiver_error = error_of([&] { received = receive_migration(*receiver_rt, there.get(), store); });
    ::shutdown(there.get(), SHUT_RDWR);
  });
  MigrateOptions options;
  options.criu.signing = SignatureKind::ed25519;
  options.receiver_key = receiver_key.public_key();
  MigrationReport report;
  const auto error = error_of([&] { report = migrate(*rt, container("m1", tree.pid()), work_dir, here.get(), options); });
  ::shutdown(here.get(), SHUT_RDWR);
  receiver.join();
  if (error) FAIL(error->what());
  if (receiver_error) FAIL(receiver_error->what());
  const UniqueFd pidfd(received->tree.pidfd);
  INFO(received->reply);
  CHECK(report.restored_pid == received->tree.pid);
  CHECK(report.receiver_key_id == receiver_key.public_key().id_hex());
  // An Ed25519 signature (64 bytes, in hex) ends the "ok".
  REQUIRE(received->reply.size() > 10 + 128 + 3);
  CHECK(received->reply.substr(received->reply.size() - 10 - 128 - 3, 10) == R"(,"proof":")");
  CHECK(received->reply.ends_with("\"}\n"));
  CHECK(wait_until([&] { return ended(tree.pid()); }));
  CHECK(counts_on(tree));  // the receiver's copy, counting in the same files
  CounterTree::stop(received->tree.pid);
}

TEST_CASE_METHOD(Fixture, "versions that differ, or a receiver that refuses at once, say so before anything is dumped",
                 "[migrate]") {
  // An older receiver (its greeting names no protocol), and one that refuses in place of a greeting.
  const std::string older = fmt::format(R"({{"nonce":"{}"}})" "\n", to_lower_hex(nonce));
  const std::string refusing = R"({"ok":false,"status":8,"status_name":"NC_E_KEY","error":"key file mode 644"})" "\n";
  for (const std::string& greeting : {older, refusing}) {
    CounterTree tree(tmp / "counter");
    say(there.get(), greeting);
    const auto error = error_of([&] { migrate(*rt, container("m1", tree.pid()), work_dir, here.get(), {}); });
    REQUIRE(error.has_value());
    INFO(error->what());
    CHECK(error->status() == (greeting == older ? Status::unsupported : Status::key));
    CHECK(contains(error->what(), greeting == older ? "upgrade it" : "key file mode 644"));
    CHECK(contains(error->what(), "othing was dumped"));
    CHECK_FALSE(fs::exists(work_dir));
    CHECK(counts_on(tree));
    reconnect();
  }
  // An older source: its stream where its nonce should be.
  rt->checkpoint(container("m1", CounterTree(tmp / "counter").pid()), work_dir, false);
  std::thread source([&] {
    read_from(there.get(), true);
    export_checkpoint(work_dir, there.get());
    read_from(there.get());
  });
  const auto error = error_of([&] { receive_migration(*rt, here.get(), store); });
  here.reset();
  source.join();
  REQUIRE(error.has_value());
  CHECK(error->status() == Status::unsupported);
  CHECK(contains(error->what(), "the source is older than this receiver"));
  CHECK(fs::is_empty(store));
}

TEST_CASE_METHOD(Fixture, "a receiver whose own Ed25519 key does not load still takes HMAC migrations", "[migrate]") {
  const fs::path bad_key = tmp / "keys" / "ed25519.key";
  fs::create_directories(bad_key.parent_path());
  write_file(bad_key, std::string(64, 'k'));
  fs::permissions(bad_key, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                               fs::perms::others_read);  // a mode the key store refuses
  const ScopedEnv own_key("NUCLEUS_CHECKPOINT_ED25519_KEY_FILE", bad_key.c_str());
  CounterTree tree(tmp / "counter");
  rt->checkpoint(container("m1", tree.pid()), work_dir, false);
  REQUIRE(wait_until([&] { return ended(tree.pid()); }));
  std::string greeting, first, second;
  std::thread source([&] {
    greeting = greet_as_source(there.get());
    export_checkpoint(work_dir, there.get());
    first = read_from(there.get(), true);
    say(there.get(), commit_for(work_dir, nonce_in(greeting)));
    second = read_from(there.get());
  });
  std::optional<ReceivedMigration> received;
  const auto error = error_of([&] { received = receive_migration(*rt, here.get(), store); });
  here.reset();
  source.join();
  if (error) FAIL(error->what());
  const UniqueFd pidfd(received->tree.pidfd);
  INFO(greeting << first << second);
  CHECK_FALSE(contains(greeting, "answer_key_id"));
  CHECK(second.starts_with(R"({"ok":true,"pid":)"));
  CounterTree::stop(received->tree.pid);
}

TEST_CASE_METHOD(Fixture, "no answer after the commit leaves the tree stopped, neither resumed nor killed",
                 "[migrate]") {
  for (const std::string& second : {std::string(), std::string("garbage\n")}) {
    CounterTree tree(tmp / "counter");
    std::optional<Error> error;
    Script script;
    migrate_against(tree.pid(), ready, second, error, script);
    there.reset();
    REQUIRE(error.has_value());
    INFO(error->what());
    CHECK(is_proven_commit(script.commit_seen, work_dir));
    CHECK(error->status() == Status::unconfirmed);
    CHECK(contains(error->what(), fmt::format("root PID {}", tree.pid())));
    CHECK(contains(error->what(), "/srv/m/c1"));
    CHECK(stays_stopped(tree));
    next_attempt();
  }
}

TEST_CASE_METHOD(Fixture, "a source that dies after its commit leaves its tree stopped; before it, resumed",
                 "[migrate]") {
  for (const bool after_commit : {false, true}) {
    CounterTree tree(tmp / "counter");
    const pid_t source = ::fork();
    REQUIRE(source >= 0);
    if (source == 0) {
      here.reset();
      try {
        migrate(*rt, container("m1", tree.pid()), work_dir, there.get(), {});
      } catch (...) {
      }
      ::_exit(0);
    }
    there.reset();
    const transfer::CommitNonce from_source = greet_as_receiver(here.get());
    REQUIRE_NOTHROW(transfer::import_checkpoint(here.get(), tmp / "received", KeyStore(), transfer::StreamEnd::frame));
    if (after_commit) {
      say(here.get(), proven(ready, from_source));
      CHECK(is_proven_commit(read_from(here.get(), true), work_dir));
    }
    ::kill(source, SIGKILL);  // the dump's guardian outlives it
    ::waitpid(source, nullptr, 0);
    INFO("died " << (after_commit ? "after" : "before") << " its commit");
    CHECK((after_commit ? stays_stopped(tree) : counts_on(tree)));
    next_attempt();
  }
}

TEST_CASE_METHOD(Fixture, "a receiver that stops reading the stream does not hold the source: the tree resumes",
                 "[migrate]") {
  // On a Unix socket no TCP_USER_TIMEOUT bounds the stream: the source's own stall bound must.
  CounterTree tree(tmp / "counter", 16);  // a stream larger than the socket's buffers
  std::atomic<bool> source_done = false;
  std::thread receiver([&] {
    greet_as_receiver(there.get());  // then nothing more is read
    for (int i = 0; i < 200 && !source_done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ::shutdown(there.get(), SHUT_RDWR);  // without the bound, what ends the source's wait
  });
  MigrateOptions options;
  options.reply_timeout = std::chrono::seconds(2);
  const auto start = std::chrono::steady_clock::now();
  const auto error = error_of([&] { migrate(*rt, container("m1", tree.pid()), work_dir, here.get(), options); });
  const auto took = std::chrono::steady_clock::now() - start;
  source_done = true;
  receiver.join();
  REQUIRE(error.has_value());
  INFO(error->what());
  CHECK(error->status() == Status::io);
  CHECK(contains(error->what(), "its reader took nothing for 2000 ms"));
  CHECK(took < std::chrono::seconds(15));
  CHECK(counts_on(tree));
}

TEST_CASE_METHOD(Fixture, "a receiver key without Ed25519 signing is refused before anything is dumped", "[migrate]") {
  Child child;
  MigrateOptions options;
  options.receiver_key = Ed25519SecretKey::generate().public_key();  // with HMAC signing, the default
  const auto error = error_of([&] { migrate(*rt, container("m1", child.pid()), work_dir, here.get(), options); });
  REQUIRE(error.has_value());
  CHECK(error->status() == Status::invalid);
  CHECK(contains(error->what(), "sign with Ed25519 (--sign ed25519)"));
  CHECK_FALSE(fs::exists(work_dir));
  CHECK(process_state(child.pid()) != 'T');
}

TEST_CASE_METHOD(Fixture, "a descriptor that is not a socket is refused before anything is dumped", "[migrate]") {
  Child child;
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  const UniqueFd reader(fds[0]), writer(fds[1]);
  const auto error = error_of([&] { migrate(*rt, container("m1", child.pid()), work_dir, writer.get(), {}); });
  REQUIRE(error.has_value());
  CHECK(error->status() == Status::invalid);
  CHECK_FALSE(fs::exists(work_dir));
  CHECK(process_state(child.pid()) != 'T');
}

TEST_CASE_METHOD(Fixture, "the receiver refuses a corrupt stream, replies why, and commits nothing", "[migrate]") {
  std::string reply;
  std::thread source([&] {
    greet_as_source(there.get());
    say(there.get(), std::string("\x89NCXFER\n\x01\0\0\0\0\0\0\0", 16) + "garbage");
    ::shutdown(there.get(), SHUT_WR);
    reply = read_from(there.get());
  });
  const auto error = error_of([&] { receive_migration(*rt, here.get(), store); });
  here.reset();
  source.join();
  REQUIRE(error.has_value());
  CHECK(error->status() == Status::integrity);
  INFO(reply);
  CHECK(reply.starts_with(R"({"ok":false,"status":6,"status_name":"NC_E_INTEGRITY","error":")"));
  CHECK(reply.ends_with("\"}\n"));
  CHECK(fs::is_empty(store));
}

TEST_CASE_METHOD(Fixture, "the receiver holds the restored tree until the commit, then lets it run and says ok",
                 "[migrate]") {
  CounterTree tree(tmp / "counter");
  rt->checkpoint(container("m1", tree.pid()), work_dir, false);
  REQUIRE(wait_until([&] { return ended(tree.pid()); }));  // its PIDs free to restore
  const long stopped_at = tree.count("parent");
  std::string first, second;
  bool held = false;
  transfer::CommitNonce given{};
  std::thread source([&] {
    given = nonce_in(greet_as_source(there.get()));
    export_checkpoint(work_dir, there.get());
    first = read_from(there.get(), true);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    held = tree.count("parent") == stopped_at;  // restored, and not running yet
    say(there.get(), commit_for(work_dir, given));
    second = read_from(there.get());
  });
  std::optional<ReceivedMigration> received;
  const auto error = error_of([&] { received = receive_migration(*rt, here.get(), store); });
  here.reset();  // the source reads its replies to the end
  source.join();
  if (error) FAIL(error->what());
  const UniqueFd pidfd(received->tree.pidfd);
  INFO(first << second);
  CHECK(first.starts_with(fmt::format(R"({{"ready":true,"pid":{},"dir":"{}")", received->tree.pid,
                                      received->dir.native())));
  CHECK(held);
  CHECK(second == received->reply);
  const HmacKey key = KeyStore().load();
  for (const std::string& line : {first, second})  // each proven for this connection
    CHECK_NOTHROW(transfer::check_answer(key, {given, source_nonce}, line.substr(0, line.size() - 1)));
  CHECK(second.starts_with(fmt::format(R"({{"ok":true,"pid":{},"dir":"{}")", received->tree.pid,
                                       received->dir.native())));
  CHECK(received->source_told);
  CHECK(received->dir.parent_path() == store);
  CHECK(wait_until([&] { return tree.count("parent") > stopped_at + 2; }));
  CounterTree::stop(received->tree.pid);
}

TEST_CASE_METHOD(Fixture, "without the source's commit the restored tree is killed before it runs", "[migrate]") {
  CounterTree tree(tmp / "counter");
  rt->checkpoint(container("m1", tree.pid()), work_dir, false);
  REQUIRE(wait_until([&] { return ended(tree.pid()); }));
  const long stopped_at = tree.count("parent");
  std::string first;
  std::thread source([&] {
    greet_as_source(there.get());
    export_checkpoint(work_dir, there.get());
    first = read_from(there.get(), true);
    say(there.get(), R"({"commit":false})" "\n");
    read_from(there.get());
  });
  std::optional<ReceivedMigration> received;
  const auto error = error_of([&] { received = receive_migration(*rt, here.get(), store); });
  here.reset();
  source.join();
  REQUIRE(error.has_value());
  INFO(first << error->what());
  CHECK(first.starts_with(R"({"ready":true,"pid":)"));
  CHECK(contains(error->what(), "the source did not commit the migration, so the restored tree was killed before it ran"));
  const pid_t restored = std::stoi(first.substr(first.find(":", 14) + 1));
  CHECK(wait_until([&] { return ended(restored); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(tree.count("parent") == stopped_at);  // it never ran
  CHECK_FALSE(fs::is_empty(store));           // the verified checkpoint stays
}

TEST_CASE_METHOD(Fixture, "a receiver that dies before the commit leaves the restored tree stopped, never running",
                 "[migrate]") {
  CounterTree tree(tmp / "counter");
  rt->checkpoint(container("m1", tree.pid()), work_dir, false);
  REQUIRE(wait_until([&] { return ended(tree.pid()); }));
  const long stopped_at = tree.count("parent");
  const pid_t receiver = ::fork();
  REQUIRE(receiver >= 0);
  if (receiver == 0) {
    there.reset();
    try {
      receive_migration(*rt, here.get(), store);
    } catch (...) {
    }
    ::_exit(0);
  }
  here.reset();
  greet_as_source(there.get());
  export_checkpoint(work_dir, there.get());
  const std::string first = read_from(there.get(), true);
  ::kill(receiver, SIGKILL);
  ::waitpid(receiver, nullptr, 0);
  INFO(first);
  REQUIRE(first.starts_with(R"({"ready":true,"pid":)"));
  const pid_t restored = std::stoi(first.substr(first.find(":", 14) + 1));
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  CHECK(process_state(restored) == 'T');
  CHECK(tree.count("parent") == stopped_at);  // it never ran
  CounterTree::stop(restored);
}

TEST_CASE_METHOD(Fixture, "a replayed stream, or a commit not proven for this connection, never runs", "[migrate]") {
  CounterTree tree(tmp / "counter");
  rt->checkpoint(container("m1", tree.pid()), work_dir, false);
  REQUIRE(wait_until([&] { return ended(tree.pid()); }));
  const long stopped_at = tree.count("parent");
  // A stream sniffed earlier, sent again with a commit proven for another connection's nonce (or
  // none): whoever can reach the port holds no signing key.
  for (const std::string& forged : {commit_for(work_dir, transfer::CommitNonce{1}), std::string(R"({"commit":true})" "\n")}) {
    std::string first;
    std::thread source([&] {
      greet_as_source(there.get());
      export_checkpoint(work_dir, there.get());
      first = read_from(there.get(), true);
      say(there.get(), forged);
      read_from(there.get());
    });
    const auto error = error_of([&] { receive_migration(*rt, here.get(), store); });
    here.reset();
    source.join();
    REQUIRE(error.has_value());
    INFO(forged << error->what());
    CHECK(error->status() == Status::integrity);
    CHECK(contains(error->what(), "does not prove that the checkpoint's signer sent it on this connection"));
    const pid_t restored = std::stoi(first.substr(first.find(":", 14) + 1));
    CHECK(wait_until([&] { return ended(restored); }));
    CHECK(tree.count("parent") == stopped_at);  // it never ran
    reconnect();
  }
}

TEST_CASE_METHOD(Fixture, "a source that proves no key this host verifies with is refused at once, nothing imported",
                 "[migrate]") {
  // Whoever can reach the port, with an answer of a connection sniffed earlier, another host's HMAC
  // key or an Ed25519 key not trusted here: refused before any stream is read (without the check,
  // the receiver would wait for one, and time out).
  const HmacKey mine = KeyStore().load_or_create(), other = HmacKey::generate();
  const Ed25519SecretKey stranger = Ed25519SecretKey::generate();
  struct Attempt {
    const char* what;
    std::string (*answer)(const std::string& greeting, const HmacKey& mine, const HmacKey& other,
                          const Ed25519SecretKey& stranger);
    Status status;
    const char* says;
  };
  const Attempt attempts[] = {
      {"no proof", [](const std::string&, const HmacKey&, const HmacKey&, const Ed25519SecretKey&) {
         return fmt::format(R"({{"nonce":"{}"}})" "\n", to_lower_hex(source_nonce));
       }, Status::unsupported, "proves no key"},
      {"replayed", [](const std::string& greeting, const HmacKey& key, const HmacKey&, const Ed25519SecretKey&) {
         return fmt::format(R"({{"nonce":"{}","proof":"{}"}})" "\n", to_lower_hex(source_nonce),
                            transfer::prove_source(key, {transfer::CommitNonce{1}, source_nonce}, without_newline(greeting)));
       }, Status::integrity, "another HMAC key than this host's (or replayed"},
      {"greeting changed on the way", [](const std::string& greeting, const HmacKey& key, const HmacKey&, const Ed25519SecretKey&) {
         // The source read another answer_key_id than the receiver sent.
         const std::string changed = std::string(without_newline(greeting)).insert(greeting.find('}'),
                                                                                   R"(,"answer_key_id":"00")");
         return fmt::format(R"({{"nonce":"{}","proof":"{}"}})" "\n", to_lower_hex(source_nonce),
                            transfer::prove_source(key, {nonce_in(greeting), source_nonce}, changed));
       }, Status::integrity, "or its greeting was changed on the way"},
      {"another HMAC key", [](const std::string& greeting, const HmacKey&, const HmacKey& key, const Ed25519SecretKey&) {
         return fmt::format(R"({{"nonce":"{}","proof":"{}"}})" "\n", to_lower_hex(source_nonce),
                            transfer::prove_source(key, {nonce_in(greeting), source_nonce}, without_newline(greeting)));
       }, Status::integrity, "both hosts must hold the same key"},
      {"untrusted Ed25519 key", [](const std::string& greeting, const HmacKey&, const HmacKey&, const Ed25519SecretKey& key) {
         return fmt::format(R"({{"nonce":"{}","key_id":"{}","proof":"{}"}})" "\n", to_lower_hex(source_nonce),
                            key.public_key().id_hex(),
                            transfer::prove_source(key, {nonce_in(greeting), source_nonce}, without_newline(greeting)));
       }, Status::integrity, "which this host does not trust"},
  };
  for (const Attempt& attempt : attempts) {
    INFO(attempt.what);
    std::string reply;
    std::thread source([&] {
      say(there.get(), attempt.answer(read_from(there.get(), true), mine, other, stranger));
      reply = read_from(there.get());
    });
    const auto error = error_of([&] { receive_migration(*rt, here.get(), store, {}, std::chrono::seconds(2)); });
    here.reset();
    source.join();
    REQUIRE(error.has_value());
    INFO(error->what());
    CHECK(error->status() == attempt.status);
    CHECK(contains(error->what(), attempt.says));
    CHECK(reply.starts_with(R"({"ok":false,)"));
    CHECK(contains(reply, attempt.says));
    CHECK(fs::is_empty(store));
    reconnect();
  }
}

TEST_CASE_METHOD(Fixture, "a checkpoint signed by another key than the one the source proved is never restored",
                 "[migrate]") {
  // Proven with the HMAC key, a stream signed with this host's (trusted) Ed25519 key after it.
  KeyStore().load_or_create_ed25519();
  CounterTree tree(tmp / "counter");
  CriuOptions options;
  options.leave_running = true;
  options.signing = SignatureKind::ed25519;
  rt->checkpoint(container("m1", tree.pid()), work_dir, options, SignatureFormat::manifest);
  std::string reply;
  std::thread source([&] {
    greet_as_source(there.get());
    export_checkpoint(work_dir, there.get());
    reply = read_from(there.get());
  });
  const auto error = error_of([&] { receive_migration(*rt, here.get(), store); });
  here.reset();
  source.join();
  REQUIRE(error.has_value());
  INFO(error->what());
  CHECK(error->status() == Status::integrity);
  CHECK(contains(error->what(), "signed by another key than the one the source proved"));
  CHECK(reply.starts_with(R"({"ok":false,)"));
  CHECK(counts_on(tree));
}

TEST_CASE_METHOD(Fixture, "a receiver that refuses the source's greeting, or an unproven go, is told before any dump",
                 "[migrate]") {
  // A receiver that cannot check this host's checkpoints (another HMAC key, say) refuses at once;
  // a go made on the path (unproven) is refused here. Either way the tree never stops.
  const std::string refusal =
      R"({"ok":false,"status":6,"status_name":"NC_E_INTEGRITY","error":"another HMAC key than this host's"})" "\n";
  for (const std::string& answer : {refusal, go}) {
    INFO(answer);
    CounterTree tree(tmp / "counter");
    std::string source_answer;
    std::thread receiver([&] {
      say(there.get(), hello);
      source_answer = read_from(there.get(), true);
      say(there.get(), answer);
      read_from(there.get());
    });
    const auto error = error_of([&] { migrate(*rt, container("m1", tree.pid()), work_dir, here.get(), {}); });
    here.reset();
    receiver.join();
    REQUIRE(error.has_value());
    INFO(error->what());
    CHECK(error->status() == Status::integrity);
    CHECK(contains(error->what(), answer == go ? "carries no proof that the receiver gave it" : "another HMAC key than this host's"));
    CHECK(contains(error->what(), "othing was dumped"));
    CHECK_FALSE(fs::exists(work_dir));
    CHECK(counts_on(tree));
    // What the source proved: its key, for this connection.
    const auto parsed = source_answer.find(R"(","proof":")");
    REQUIRE(parsed != std::string::npos);
    CHECK_NOTHROW(transfer::check_source(KeyStore().load(), {nonce, nonce_in(source_answer)}, without_newline(hello),
                                         source_answer.substr(parsed + 11, 64)));
    reconnect();
  }
}

TEST_CASE_METHOD(Fixture, "a source that sends no stream, or stalls it, does not hold the receiver", "[migrate]") {
  for (const bool partial : {false, true}) {
    std::thread source([&] {
      greet_as_source(there.get());
      if (partial) say(there.get(), std::string("\x89NCXFER\n\x01\0\0\0\0\0\0\0", 16));
      read_from(there.get());  // until the receiver gives up
    });
    const auto error = error_of([&] { receive_migration(*rt, here.get(), store, {}, std::chrono::milliseconds(800)); });
    here.reset();
    source.join();
    REQUIRE(error.has_value());
    INFO(error->what());
    CHECK(error->status() == Status::io);
    CHECK(contains(error->what(), partial ? "the transfer stream stalled" : "the source sent no stream within"));
    CHECK(fs::is_empty(store));
    reconnect();
  }
}

TEST_CASE_METHOD(Fixture, "a source gone after its commit: the tree runs here, and source_told says it never heard",
                 "[migrate]") {
  CounterTree tree(tmp / "counter");
  rt->checkpoint(container("m1", tree.pid()), work_dir, false);
  REQUIRE(wait_until([&] { return ended(tree.pid()); }));
  const long stopped_at = tree.count("parent");
  std::string first;
  std::thread source([&] {
    const transfer::CommitNonce given = nonce_in(greet_as_source(there.get()));
    export_checkpoint(work_dir, there.get());
    first = read_from(there.get(), true);
    // A source that reads no more from here on (then closes): every later write to it fails
    // (EPIPE), so its valid commit is read but the "ok" after it cannot be sent.
    CHECK(::shutdown(there.get(), SHUT_RD) == 0);
    say(there.get(), commit_for(work_dir, given));
    there.reset();
  });
  std::optional<ReceivedMigration> received;
  const auto error = error_of([&] { received = receive_migration(*rt, here.get(), store); });
  source.join();
  if (error) FAIL(error->what());
  const UniqueFd pidfd(received->tree.pidfd);
  INFO(first << received->reply);
  CHECK(first.starts_with(R"({"ready":true,"pid":)"));
  CHECK_FALSE(received->source_told);
  CHECK(received->reply.starts_with(fmt::format(R"({{"ok":true,"pid":{},)", received->tree.pid)));
  CHECK(wait_until([&] { return tree.count("parent") > stopped_at + 2; }));  // it runs here all the same
  CounterTree::stop(received->tree.pid);
}
