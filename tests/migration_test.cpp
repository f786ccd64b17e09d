// The two ends of a migration (migrate, receive_migration) each against a scripted other end over a
// socket pair, with the real CRIU and real process trees: what the source does with each reply
// (ends the tree, or resumes it), and what the receiver replies and keeps. tests/migrate_test.py
// runs both ends together between two network namespaces.
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/migrate.hpp>
#include <nucleus/checkpoint/transfer.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "fs/unique_fd.hpp"
#include "process_support.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

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
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    here.reset(fds[0]);
    there.reset(fds[1]);
  }

  // What the other end read until the end of the stream.
  static std::string read_to_end(int fd) {
    std::string bytes;
    char buf[65536];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) bytes.append(buf, static_cast<std::size_t>(n));
    return bytes;
  }
  static void say(int fd, const std::string& line) { REQUIRE(::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size())); }

  // A scripted receiver: reads the whole stream, then replies `line`.
  MigrationReport migrate_against(pid_t pid, const std::string& line, std::optional<Error>& error) {
    std::string stream;
    std::thread receiver([&] {
      stream = read_to_end(there.get());
      say(there.get(), line);
      ::shutdown(there.get(), SHUT_WR);
    });
    MigrationReport report;
    error = error_of([&] { report = migrate(*rt, container("m1", pid), work_dir, here.get(), {}); });
    receiver.join();
    CHECK(stream.substr(0, 8) == std::string("\x89NCXFER\n", 8));  // a whole transfer stream came
    return report;
  }
};

bool counts_on(const CounterTree& tree) {
  const long before = tree.count("parent");
  return wait_until([&] { return tree.count("parent") > before + 2; }, std::chrono::seconds(5));
}

}  // namespace

TEST_CASE_METHOD(Fixture, "a receiver's refusal resumes the tree, with the receiver's status and reason",
                 "[migrate]") {
  CounterTree tree(tmp / "counter");
  std::optional<Error> error;
  migrate_against(tree.pid(), R"({"ok":false,"status":6,"status_name":"NC_E_INTEGRITY","error":"chunk 3 differs"})"
                              "\n",
                  error);
  REQUIRE(error.has_value());
  INFO(error->what());
  CHECK(error->status() == Status::integrity);
  CHECK(contains(error->what(), "the receiver did not restore the tree: chunk 3 differs"));
  CHECK(counts_on(tree));
  HmacTree::verify(work_dir, KeyStore());  // the checkpoint stays, whole
}

TEST_CASE_METHOD(Fixture, "no reply, or one that is not a receiver's, resumes the tree", "[migrate]") {
  for (const std::string& line : {std::string(), std::string("HTTP/1.1 400 Bad Request\n"),
                                  std::string(R"({"ok":true})" "\n")}) {
    CounterTree tree(tmp / "counter");
    std::optional<Error> error;
    migrate_against(tree.pid(), line, error);
    there.reset();
    REQUIRE(error.has_value());
    INFO(line << ": " << error->what());
    CHECK(error->status() == Status::io);
    CHECK(counts_on(tree));
    fs::remove_all(work_dir);
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    here.reset(fds[0]);
    there.reset(fds[1]);
  }
}

TEST_CASE_METHOD(Fixture, "an ok ends the stopped tree and fills the report", "[migrate]") {
  CounterTree tree(tmp / "counter");
  std::optional<Error> error;
  const MigrationReport report = migrate_against(
      tree.pid(), R"({"ok":true,"pid":4242,"dir":"/srv/m/c1","import_ms":30,"restore_ms":40})" "\n", error);
  REQUIRE_FALSE(error.has_value());
  CHECK(wait_until([&] { reap_all(); return !is_alive(tree.pid()); }));
  CHECK(report.restored_pid == 4242);
  CHECK(report.restored_dir == "/srv/m/c1");
  CHECK(report.transfer.count() == 30);
  CHECK(report.restore.count() == 40);
  CHECK(report.downtime >= report.dump);
  CHECK(report.dump.count() > 0);
  CHECK(report.rounds == 0);
  CHECK_FALSE(report.rounds_reason.empty());
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
    say(there.get(), std::string("\x89NCXFER\n\x01\0\0\0\0\0\0\0", 16) + "garbage");
    ::shutdown(there.get(), SHUT_WR);
    reply = read_to_end(there.get());
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

TEST_CASE_METHOD(Fixture, "the receiver restores a real dump and replies with its PID and folder", "[migrate]") {
  CounterTree tree(tmp / "counter");
  rt->checkpoint(container("m1", tree.pid()), work_dir, false);
  REQUIRE(wait_until([&] { reap_all(); return !is_alive(tree.pid()); }));  // its PIDs free to restore
  const long stopped_at = tree.count("parent");
  std::string reply;
  std::thread source([&] {
    export_checkpoint(work_dir, there.get());
    ::shutdown(there.get(), SHUT_WR);
    reply = read_to_end(there.get());
  });
  std::optional<ReceivedMigration> received;
  const auto error = error_of([&] { received = receive_migration(*rt, here.get(), store); });
  here.reset();  // the source reads its reply to the end
  source.join();
  if (error) FAIL(error->what());
  const UniqueFd pidfd(received->tree.pidfd);
  INFO(reply);
  CHECK(reply == received->reply);
  CHECK(reply.starts_with(fmt::format(R"({{"ok":true,"pid":{},"dir":"{}")", received->tree.pid,
                                      received->dir.native())));
  CHECK(received->dir.parent_path() == store);
  CHECK(wait_until([&] { return tree.count("parent") > stopped_at + 2; }));
  CounterTree::stop(received->tree.pid);
}
