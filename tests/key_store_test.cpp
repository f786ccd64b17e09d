// KeyStore and HmacKey: where the checkpoint key lives, which key files are refused, and that
// concurrent creators agree on one key. The suite runs as root (chown, the root default path).
#include "test_support.hpp"

#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <exception>
#include <latch>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/key_store.hpp>

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

constexpr const char* key_env = "NUCLEUS_CHECKPOINT_HMAC_KEY_FILE";
constexpr const char* root_default = "/var/lib/nucleus/checkpoint-hmac.key";

std::string bytes_of(const HmacKey& key) { return {key.bytes().begin(), key.bytes().end()}; }

std::optional<std::string> env_value() {
  const char* v = std::getenv(key_env);
  return v ? std::optional<std::string>(v) : std::nullopt;
}

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::lstat(p.c_str(), &st) == 0);
  return st.st_mode;
}

// Names in a folder, sorted: shows leftover temporary files.
std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

void write_key(const fs::path& path, const std::string& data, mode_t mode = 0600) {
  write_file(path, data);
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

// load_or_create in two threads released at once; returns both keys.
std::array<std::string, 2> race_in_threads(const fs::path& path) {
  std::latch start(2);
  std::array<std::string, 2> keys;
  std::array<std::exception_ptr, 2> errors;
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      try {
        keys[i] = bytes_of(KeyStore(path).load_or_create());
      } catch (...) {
        errors[i] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  return keys;
}

// load_or_create in two forked processes released at once (closing a pipe both wait on);
// each sends its key back through its own pipe.
std::array<std::string, 2> race_in_processes(const fs::path& path) {
  int go[2];
  REQUIRE(::pipe(go) == 0);
  std::array<pid_t, 2> pids{};
  std::array<int, 2> results{};
  for (std::size_t i = 0; i < 2; ++i) {
    int out[2];
    REQUIRE(::pipe(out) == 0);
    pids[i] = ::fork();
    REQUIRE(pids[i] >= 0);
    if (pids[i] == 0) {
      // Child: no Catch2 and no destructors here, only _exit.
      ::close(go[1]);
      ::close(out[0]);
      char c;
      while (::read(go[0], &c, 1) < 0 && errno == EINTR) {
      }
      try {
        const std::string key = bytes_of(KeyStore(path).load_or_create());
        if (::write(out[1], key.data(), key.size()) != static_cast<ssize_t>(key.size())) ::_exit(3);
        ::_exit(0);
      } catch (...) {
        ::_exit(2);
      }
    }
    ::close(out[1]);
    results[i] = out[0];
  }
  ::close(go[0]);
  ::close(go[1]);  // releases both children
  std::array<std::string, 2> keys;
  for (std::size_t i = 0; i < 2; ++i) {
    char buf[256];
    ssize_t n;
    while ((n = ::read(results[i], buf, sizeof buf)) != 0) {
      if (n < 0 && errno == EINTR) continue;
      REQUIRE(n > 0);
      keys[i].append(buf, static_cast<std::size_t>(n));
    }
    ::close(results[i]);
    int status = 0;
    REQUIRE(::waitpid(pids[i], &status, 0) == pids[i]);
    INFO("child " << i << " wait status " << status);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
  return keys;
}

}  // namespace

TEST_CASE("default_path: the environment variable wins, then root's fixed path", "[key_store]") {
  REQUIRE(::geteuid() == 0);  // the non-root order needs an unprivileged user
  const auto before = env_value();
  SECTION("the variable is set") {
    const KeyFileEnv env("/srv/keys/custom.key");
    CHECK(KeyStore::default_path() == "/srv/keys/custom.key");
    CHECK(KeyStore().path() == "/srv/keys/custom.key");
  }
  SECTION("the variable is empty") {
    const KeyFileEnv env("");
    CHECK(KeyStore::default_path() == root_default);
  }
  SECTION("the variable is unset") {
    const KeyFileEnv env("/restored/by/the/guard");
    ::unsetenv(key_env);
    CHECK(KeyStore::default_path() == root_default);
    CHECK(KeyStore().path() == root_default);
  }
  CHECK(env_value() == before);
}

TEST_CASE("load_or_create makes a 32-byte owner-only key, creating missing folders 0700", "[key_store]") {
  TempDir tmp;
  const fs::path keys = secure_key_dir(tmp);
  const fs::path path = keys / "a" / "b" / "checkpoint.key";
  const KeyStore store(path);
  REQUIRE_FALSE(store.exists());

  const HmacKey key = store.load_or_create();
  const std::string created = bytes_of(key);
  CHECK(created.size() == HmacKey::min_size);
  CHECK(created != std::string(created.size(), '\0'));  // filled by the CSPRNG
  CHECK(store.exists());
  CHECK(mode_of(path) == (S_IFREG | 0600));
  CHECK(mode_of(keys / "a") == (S_IFDIR | 0700));
  CHECK(mode_of(keys / "a" / "b") == (S_IFDIR | 0700));
  CHECK(read_file(path) == created);
  CHECK(entries(keys / "a" / "b") == std::vector<std::string>{"checkpoint.key"});

  // Later loads return the stored key, not a new one.
  CHECK(bytes_of(store.load()) == created);
  CHECK(bytes_of(KeyStore(path).load_or_create()) == created);
  CHECK(read_file(path) == created);

  // Another path gets another key.
  CHECK(bytes_of(KeyStore(keys / "other.key").load_or_create()) != created);
}

TEST_CASE("load accepts a 32-byte raw key, and keys of any allowed length in the marked hex format", "[key_store]") {
  TempDir tmp;
  const fs::path path = secure_key_dir(tmp) / "checkpoint.key";
  std::string raw(32, '\0');
  for (std::size_t i = 0; i < raw.size(); ++i) raw[i] = static_cast<char>(i * 7 + 1);
  write_key(path, raw);  // as keygen and nucleus-container write it
  CHECK(bytes_of(KeyStore(path).load()) == raw);
  CHECK(bytes_of(KeyStore(path).load_or_create()) == raw);
  for (const std::size_t size : {std::size_t{32}, std::size_t{65}, HmacKey::max_size}) {
    for (const char* end : {"\n", ""}) {
      INFO(size << " bytes, " << (*end ? "with" : "without") << " a final newline");
      std::string data(size, '\0'), hex;
      for (std::size_t i = 0; i < size; ++i) data[i] = static_cast<char>(i * 7 + 1);
      for (const char c : data) hex += fmt::format("{:02x}", static_cast<unsigned char>(c));
      write_key(path, "nucleus-checkpoint-hmac-key 1\n" + hex + end);
      CHECK(bytes_of(KeyStore(path).load()) == data);
      CHECK(bytes_of(KeyStore(path).load_or_create()) == data);
    }
  }
}

TEST_CASE("a private file that is not a key file is refused, saying what a key file looks like", "[key_store]") {
  // As root, any root-owned 0600 file used to be taken as a key: a dump's metadata.json, say.
  TempDir tmp;
  const fs::path path = secure_key_dir(tmp) / "checkpoint.key";
  const std::string hex64(64, 'a');
  const std::string not_keys[] = {
      R"({"container_id":"abc","container_name":"web","original_pid":4242,"command":"/bin/sh","version":"0.3.3"})",
      std::string(33, 'k'),
      std::string(64, 'k'),
      std::string(HmacKey::max_size, 'k'),
      hex64,                                                  // hex without the header line
      "nucleus-checkpoint-hmac-key 2\n" + hex64 + "\n",       // another version
      "nucleus-checkpoint-hmac-key 1\n" + hex64.substr(2) + "\n",  // 31 bytes
      "nucleus-checkpoint-hmac-key 1\n" + hex64 + "a\n",      // an odd number of digits
      "nucleus-checkpoint-hmac-key 1\n" + std::string(64, 'A') + "\n",
      "nucleus-checkpoint-hmac-key 1\n" + hex64 + "\n\n",
      "nucleus-checkpoint-hmac-key 1\n" + hex64 + "\r\n",
      "nucleus-checkpoint-hmac-key 1\r\n" + hex64 + "\n",
      "nucleus-checkpoint-hmac-key 1\n" + hex64.substr(0, 32) + "\n" + hex64.substr(32) + "\n",
      "nucleus-checkpoint-hmac-key 1\n" + std::string(2 * HmacKey::max_size + 2, 'a') + "\n",
  };
  for (const std::string& data : not_keys) {
    INFO("key file: " << data.substr(0, 100));
    write_key(path, data);
    for (const bool create : {false, true}) {
      const auto e = error_of([&] { (void)(create ? KeyStore(path).load_or_create() : KeyStore(path).load()); });
      REQUIRE(e.has_value());
      INFO("message: " << e->what());
      CHECK(e->status() == Status::key);
      CHECK(contains(e->what(), fmt::format("({} bytes) is not a key file", data.size())));
      CHECK(contains(e->what(), "nucleus-checkpoint keygen"));
      CHECK(contains(e->what(), "'nucleus-checkpoint-hmac-key 1'"));
    }
    CHECK(read_file(path) == data);  // refused, not replaced
  }
}

TEST_CASE("the refusal's recipe for a longer key makes a key file that loads", "[key_store]") {
  TempDir tmp;
  const fs::path keys = secure_key_dir(tmp), path = keys / "checkpoint.key", raw = keys / "raw";
  std::string data(65, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(255 - i * 3);
  write_key(path, data);
  const auto e = error_of([&] { (void)KeyStore(path).load(); });
  REQUIRE(e.has_value());
  const std::string message = e->what();
  const auto at = message.find("{ echo");
  REQUIRE(at != std::string::npos);
  std::string recipe = message.substr(at);
  recipe.replace(recipe.find("RAW_KEY"), 7, raw.native());
  recipe.replace(recipe.find("KEY_FILE"), 8, path.native());
  fs::rename(path, raw);
  INFO("recipe: " << recipe);
  REQUIRE(std::system(("umask 077; " + recipe).c_str()) == 0);
  CHECK(bytes_of(KeyStore(path).load()) == data);
}

TEST_CASE("load without a key file fails with Status::key naming the path", "[key_store]") {
  TempDir tmp;
  const fs::path keys = secure_key_dir(tmp);
  const fs::path path = keys / "missing.key";
  const auto e = error_of([&] { (void)KeyStore(path).load(); });
  REQUIRE(e.has_value());
  INFO("message: " << e->what());
  CHECK(e->status() == Status::key);
  CHECK(contains(e->what(), path.native()));
  CHECK(entries(keys).empty());  // load never creates
}

TEST_CASE("unsafe or unusable key files are refused with Status::key", "[key_store]") {
  REQUIRE(::geteuid() == 0);  // chown to another uid
  TempDir tmp;
  const fs::path keys = secure_key_dir(tmp);
  const fs::path path = keys / "checkpoint.key";
  const std::string good(HmacKey::min_size, 'k');
  fs::path used = path;  // the path handed to KeyStore
  std::string part;      // what the message must say

  SECTION("key file readable by its group (0640)") {
    write_key(path, good, 0640);
    part = "insecure mode 640";
  }
  SECTION("key file readable by others (0604)") {
    write_key(path, good, 0604);
    part = "insecure mode 604";
  }
  SECTION("key folder open to its group (0750)") {
    write_key(path, good);
    fs::permissions(keys, static_cast<fs::perms>(0750), fs::perm_options::replace);
    part = "insecure mode 750";
  }
  SECTION("key folder open to others (0701)") {
    write_key(path, good);
    fs::permissions(keys, static_cast<fs::perms>(0701), fs::perm_options::replace);
    part = "insecure mode 701";
  }
  SECTION("key file is a symlink to a good key") {
    write_key(keys / "real.key", good);
    fs::create_symlink(keys / "real.key", path);
    part = "symlink";
  }
  SECTION("key folder is a symlink to a good folder") {
    write_key(path, good);
    fs::create_directory_symlink(keys, tmp / "keys-link");
    used = tmp / "keys-link" / "checkpoint.key";
    part = "symlink";
  }
  SECTION("key shorter than 32 bytes") {
    write_key(path, good.substr(1));
    part = "31 bytes";
  }
  SECTION("empty key") {
    write_key(path, "");
    part = "0 bytes";
  }
  SECTION("key longer than max_size") {
    write_key(path, std::string(HmacKey::max_size + 1, 'k'));
    part = "4097 bytes";
  }
  SECTION("key is a directory") {
    fs::create_directory(path);
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::replace);
    part = "not a regular file";
  }
  SECTION("key file owned by another uid") {
    write_key(path, good);
    REQUIRE(::chown(path.c_str(), 12345, 0) == 0);
    part = "owned by uid 12345";
  }
  SECTION("key folder owned by another uid") {
    write_key(path, good);
    REQUIRE(::chown(keys.c_str(), 12345, 0) == 0);
    part = "owned by uid 12345";
  }

  // What is there before, to show that nothing is replaced or left behind.
  const auto snapshot = [&] {
    return std::pair(entries(keys), fs::is_regular_file(fs::symlink_status(path)) ? read_file(path) : "");
  };
  const auto before = snapshot();
  const auto load = error_of([&] { (void)KeyStore(used).load(); });
  const auto create = error_of([&] { (void)KeyStore(used).load_or_create(); });
  for (const auto& e : {load, create}) {
    REQUIRE(e.has_value());
    INFO("message: " << e->what());
    CHECK(e->status() == Status::key);
    CHECK(contains(e->what(), part));
  }
  // A refused key is left as it is: load_or_create must not replace it with a new one.
  CHECK(snapshot() == before);
}

TEST_CASE("HmacKey::from_bytes copies 32 to 4096 bytes and refuses others", "[key_store]") {
  for (const std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{31}, HmacKey::max_size + 1}) {
    INFO(size << " bytes");
    const std::vector<unsigned char> bytes(size, 0x5a);
    const auto e = error_of([&] { (void)HmacKey::from_bytes(bytes); });
    REQUIRE(e.has_value());
    CHECK(e->status() == Status::key);
  }
  std::vector<unsigned char> bytes(32);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i);
  const HmacKey key = HmacKey::from_bytes(bytes);
  bytes.assign(bytes.size(), 0xff);  // the key is a copy, not a view
  REQUIRE(key.bytes().size() == 32);
  for (std::size_t i = 0; i < 32; ++i) CHECK(static_cast<std::size_t>(key.bytes()[i]) == i);
}

TEST_CASE("HmacKey::generate makes distinct 32-byte keys", "[key_store]") {
  const HmacKey a = HmacKey::generate(), b = HmacKey::generate();
  CHECK(a.bytes().size() == HmacKey::min_size);
  CHECK(b.bytes().size() == HmacKey::min_size);
  CHECK(bytes_of(a) != bytes_of(b));
}

TEST_CASE("two concurrent creators of a fresh key agree on one key", "[key_store]") {
  std::array<std::string, 2> (*race)(const fs::path&) = race_in_threads;
  int rounds = 25;
  SECTION("two threads") {}
  SECTION("two forked processes") {
    race = race_in_processes;
    rounds = 10;
  }
  // Several rounds, each on a fresh path whose folder is missing too, to give the race a chance.
  for (int round = 0; round < rounds; ++round) {
    INFO("round " << round);
    TempDir tmp;
    const fs::path dir = secure_key_dir(tmp) / "fresh";
    const auto keys = race(dir / "checkpoint.key");
    REQUIRE(keys[0].size() == HmacKey::min_size);
    REQUIRE(keys[0] == keys[1]);
    // One key file, and no temporary file left behind.
    REQUIRE(entries(dir) == std::vector<std::string>{"checkpoint.key"});
    REQUIRE(read_file(dir / "checkpoint.key") == keys[0]);
  }
}

TEST_CASE("the process is not dumpable while a key lives, and is again once the last one goes", "[key_store]") {
  // OpenSSL keeps keyed HMAC state in ordinary heap, so no core file may be written meanwhile.
  REQUIRE(::prctl(PR_GET_DUMPABLE) == 1);
  {
    const HmacKey generated = HmacKey::generate();
    CHECK(::prctl(PR_GET_DUMPABLE) == 0);
    {
      const HmacKey copy = HmacKey::from_bytes(generated.bytes());
      HmacKey moved = HmacKey::from_bytes(copy.bytes());
      const HmacKey taken = std::move(moved);
      CHECK(::prctl(PR_GET_DUMPABLE) == 0);
    }
    CHECK(::prctl(PR_GET_DUMPABLE) == 0);
  }
  CHECK(::prctl(PR_GET_DUMPABLE) == 1);

  SECTION("a key loaded from its file, and one refused") {
    TempDir tmp;
    const fs::path path = secure_key_dir(tmp) / "checkpoint.key";
    {
      const HmacKey key = KeyStore(path).load_or_create();
      CHECK(::prctl(PR_GET_DUMPABLE) == 0);
    }
    CHECK(::prctl(PR_GET_DUMPABLE) == 1);
    write_key(path, "nucleus-checkpoint-hmac-key 1\n" + std::string(63, 'a') + "\n");
    CHECK(error_of([&] { (void)KeyStore(path).load(); }).has_value());
  }
  SECTION("keys made and dropped on many threads at once") {
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([] {
        for (int i = 0; i < 200; ++i) {
          const HmacKey key = HmacKey::generate();
          const HmacKey copy = HmacKey::from_bytes(key.bytes());
        }
      });
    for (auto& t : threads) t.join();
  }
  SECTION("a process its caller made non-dumpable stays so") {
    REQUIRE(::prctl(PR_SET_DUMPABLE, 0) == 0);
    { const HmacKey key = HmacKey::generate(); }
    CHECK(::prctl(PR_GET_DUMPABLE) == 0);
    REQUIRE(::prctl(PR_SET_DUMPABLE, 1) == 0);
  }
  CHECK(::prctl(PR_GET_DUMPABLE) == 1);
}
