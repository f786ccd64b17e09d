// CheckpointMetadata: metadata.json in the seed's (serde_json's) shape, strict parsing, and
// atomic save/load relative to a folder descriptor.
#include "test_support.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/metadata.hpp>

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

// from_json(json) must fail with Status::invalid, and name `part` (a field) in its message.
void require_invalid(const std::string& json, std::string_view part = {}) {
  const auto e = error_of([&] { (void)CheckpointMetadata::from_json(json); });
  REQUIRE(e.has_value());
  INFO("message: " << e->what());
  CHECK(e->status() == Status::invalid);
  CHECK(contains(e->what(), part));
}

CheckpointMetadata sample() {
  CheckpointMetadata m;
  m.container_id = "abc123";
  m.container_name = "web";
  m.original_pid = 4242;
  m.command = {"/bin/sh", "-c", "echo hi"};
  m.checkpoint_at = 1700000000;
  m.version = "0.3.3";
  m.using_gvisor = false;
  m.rootless = true;
  return m;
}

// What serde_json::to_string_pretty writes for sample(): 2-space indent, fields in the
// struct's order, no trailing newline.
constexpr std::string_view sample_json = R"({
  "container_id": "abc123",
  "container_name": "web",
  "original_pid": 4242,
  "command": [
    "/bin/sh",
    "-c",
    "echo hi"
  ],
  "checkpoint_at": 1700000000,
  "version": "0.3.3",
  "using_gvisor": false,
  "rootless": true
})";

constexpr std::array<const char*, 8> field_names{"container_id", "container_name", "original_pid", "command",
                                                 "checkpoint_at", "version",        "using_gvisor", "rootless"};

// sample() as compact JSON, with `field` given the JSON text `value`, or left out if none.
std::string json_with(std::string_view field, std::optional<std::string> value) {
  const std::array<std::pair<const char*, std::string>, 8> fields{{{"container_id", R"("abc123")"},
                                                                   {"container_name", R"("web")"},
                                                                   {"original_pid", "4242"},
                                                                   {"command", R"(["/bin/sh","-c","echo hi"])"},
                                                                   {"checkpoint_at", "1700000000"},
                                                                   {"version", R"("0.3.3")"},
                                                                   {"using_gvisor", "false"},
                                                                   {"rootless", "true"}}};
  std::string out = "{";
  for (const auto& [name, text] : fields) {
    if (name == field && !value) continue;
    if (out.size() > 1) out += ',';
    out += std::string("\"") + name + "\":" + (name == field ? *value : text);
  }
  return out + "}";
}

// A descriptor on a TempDir, as CriuRuntime hands save/load the checkpoint folder's descriptor.
class DirFd {
 public:
  explicit DirFd(const fs::path& dir) : fd_(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {
    if (fd_ < 0) throw std::runtime_error("cannot open " + dir.native());
  }
  ~DirFd() { ::close(fd_); }
  DirFd(const DirFd&) = delete;
  DirFd& operator=(const DirFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::lstat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

}  // namespace

TEST_CASE("to_json writes serde_json's pretty format in the seed's field order", "[metadata]") {
  CHECK(sample().to_json() == sample_json);

  CheckpointMetadata empty_command = sample();
  empty_command.command.clear();
  CHECK(contains(empty_command.to_json(), "\n  \"command\": [],\n"));  // serde writes [] on one line
}

TEST_CASE("to_json escapes control characters as serde_json does", "[metadata]") {
  // serde_json writes \uXXXX with lowercase hex digits; the short forms for \n, \t and ".
  CheckpointMetadata m = sample();
  m.container_id = "a\x1b" "b\x0b" "c\x1f";
  m.container_name = "q\"\\\n\t";
  const std::string json = m.to_json();
  INFO(json);
  CHECK(contains(json, R"("container_id": "a\u001bb\u000bc\u001f",)"));
  CHECK(contains(json, R"("container_name": "q\"\\\n\t",)"));
  CHECK(CheckpointMetadata::from_json(json) == m);
}

TEST_CASE("to_json and from_json round-trip", "[metadata]") {
  CheckpointMetadata m = sample();
  SECTION("the sample") {}
  SECTION("unicode text") {
    m.container_id = "café-日本";
    m.container_name = "コンテナ 🚀";
    m.command = {"/usr/bin/écho", "naïve", "Ωmega", "tab\there", "quote\"back\\slash"};
  }
  SECTION("an empty command and empty strings") {
    m.command.clear();
    m.container_name.clear();
    m.version.clear();
  }
  SECTION("extreme numbers and both flags set") {
    m.original_pid = 4294967295U;
    m.checkpoint_at = 18446744073709551615ULL;
    m.using_gvisor = true;
    m.rootless = true;
  }
  SECTION("zero numbers and both flags clear") {
    m.original_pid = 0;
    m.checkpoint_at = 0;
    m.using_gvisor = false;
    m.rootless = false;
  }
  SECTION("a layer of a pre-dump chain") {
    m.has_record = true;
    m.chain = ChainRecord{true, "web.0", std::string(64, 'a')};
  }
  const std::string json = m.to_json();
  INFO(json);
  CHECK(CheckpointMetadata::from_json(json) == m);
}

TEST_CASE("from_json reads compact JSON and ignores unknown fields", "[metadata]") {
  CHECK(CheckpointMetadata::from_json(json_with("", std::nullopt)) == sample());
  // Fields a later version may add, of every JSON type, before and after the known ones.
  std::string json = json_with("", std::nullopt);
  json.insert(1, R"("zz_first":{"a":[1,2,{"b":null}]},"x":1.5e3,)");
  json.insert(json.size() - 1, R"(,"future_flag":true,"notes":"hi","list":[])");
  CHECK(CheckpointMetadata::from_json(json) == sample());
}

TEST_CASE("a chain record must be whole", "[metadata]") {
  CheckpointMetadata m = sample();
  m.has_record = true;
  m.chain = ChainRecord{false, "p", ""};
  std::string json = m.to_json();
  const auto at = json.find("\"parent_signature_sha256\"");
  REQUIRE(at != std::string::npos);
  json.replace(at, 25, "\"parent_signature\"");
  require_invalid(json, "\"parent_signature_sha256\"");
}

TEST_CASE("from_json names each missing field", "[metadata]") {
  for (const char* name : field_names) {
    INFO("missing " << name);
    require_invalid(json_with(name, std::nullopt), std::string("\"") + name + "\"");
  }
}

TEST_CASE("from_json refuses a field of the wrong type, naming it", "[metadata]") {
  const std::vector<std::pair<const char*, std::string>> cases{
      {"original_pid", R"("4242")"},             // a string
      {"original_pid", "-1"},                    // negative
      {"original_pid", "4294967296"},            // u32 max + 1
      {"original_pid", "42.5"},                  // not whole
      {"original_pid", "null"},
      {"checkpoint_at", "-1"},
      {"checkpoint_at", "18446744073709551616"},  // u64 max + 1
      {"checkpoint_at", R"("1700000000")"},
      {"using_gvisor", R"("false")"},             // not a bool
      {"using_gvisor", "0"},
      {"rootless", "1"},
      {"rootless", "null"},
      {"command", R"(["/bin/sh",1])"},            // an argument that is no string
      {"command", R"(["/bin/sh",null])"},
      {"command", R"([["/bin/sh"]])"},
      {"command", R"("/bin/sh -c")"},             // not an array
      {"container_id", "5"},
      {"container_name", "null"},
      {"version", "[]"},
  };
  for (const auto& [name, value] : cases) {
    INFO(name << " = " << value);
    require_invalid(json_with(name, value), std::string("\"") + name + "\"");
  }
}

TEST_CASE("from_json accepts the largest PID and timestamp", "[metadata]") {
  CHECK(CheckpointMetadata::from_json(json_with("original_pid", "4294967295")).original_pid == 4294967295U);
  CHECK(CheckpointMetadata::from_json(json_with("checkpoint_at", "18446744073709551615")).checkpoint_at ==
        18446744073709551615ULL);
}

TEST_CASE("from_json refuses documents that are not one well-formed JSON object", "[metadata]") {
  const std::string valid = json_with("", std::nullopt);
  SECTION("top level is not an object") {
    for (const char* json : {"[]", R"("abc123")", "42", "null", "true"}) {
      INFO(json);
      require_invalid(json);
    }
  }
  SECTION("truncated") {
    require_invalid("");
    require_invalid(std::string(sample_json.substr(0, sample_json.size() / 2)));
    require_invalid(valid.substr(0, valid.size() - 1));
  }
  SECTION("trailing data after the object") { require_invalid(valid + " {}"); }
  SECTION("invalid UTF-8 in a string") {
    require_invalid(json_with("container_id", "\"abc\xff\""));
    require_invalid(json_with("container_name", "\"\xc0\xaf\""));        // overlong '/'
    require_invalid(json_with("command", "[\"\xed\xa0\x80\"]"));         // a UTF-16 surrogate
  }
  SECTION("a 2 MiB document") {
    std::string big = valid;
    big.insert(1, "\"padding\":\"" + std::string(2 << 20, 'x') + "\",");
    require_invalid(big);
  }
  SECTION("100000-deep nesting") {
    // Must fail cleanly rather than exhaust the stack.
    const std::string open(100000, '['), close(100000, ']');
    require_invalid(open + close);
    require_invalid(open);
    require_invalid(json_with("command", open + close), "\"command\"");
  }
}

TEST_CASE("from_json accepts a large document below the size limit", "[metadata]") {
  // The 1 MiB limit must not refuse a long but legitimate command line.
  CheckpointMetadata m = sample();
  m.command.assign(1000, std::string(800, 'a'));
  const std::string json = m.to_json();
  REQUIRE(json.size() < CheckpointMetadata::max_size);
  CHECK(CheckpointMetadata::from_json(json) == m);
}

TEST_CASE("save and load go through a folder descriptor, atomically and owner-only", "[metadata]") {
  TempDir tmp;
  const DirFd dir(tmp.path());
  const fs::path file = tmp / CheckpointMetadata::file_name;

  sample().save(dir.get());
  CHECK(mode_of(file) == 0600);
  CHECK(read_file(file) == sample_json);
  CHECK_FALSE(fs::exists(fs::symlink_status(tmp / "metadata.json.tmp")));
  CHECK(CheckpointMetadata::load(dir.get()) == sample());

  SECTION("a second save replaces the first") {
    CheckpointMetadata other = sample();
    other.container_id = "second";
    other.command = {"sleep", "1"};
    other.save(dir.get());
    CHECK(CheckpointMetadata::load(dir.get()) == other);
    CHECK(mode_of(file) == 0600);
  }
  SECTION("a stale metadata.json.tmp symlink is replaced, not written through") {
    const fs::path outside = tmp / "outside.txt";
    write_file(outside, "untouched");
    fs::create_symlink(outside, tmp / "metadata.json.tmp");
    CheckpointMetadata other = sample();
    other.container_id = "third";
    other.save(dir.get());
    CHECK(read_file(outside) == "untouched");
    CHECK(CheckpointMetadata::load(dir.get()) == other);
    CHECK_FALSE(fs::exists(fs::symlink_status(tmp / "metadata.json.tmp")));
  }
}

TEST_CASE("load refuses a metadata.json that is not a plain regular file", "[metadata]") {
  TempDir tmp;
  const DirFd dir(tmp.path());
  const fs::path file = tmp / CheckpointMetadata::file_name;
  std::string part;
  SECTION("a symlink, even to valid metadata") {
    write_file(tmp / "real.json", std::string(sample_json));
    fs::create_symlink(tmp / "real.json", file);
    part = "symlink";
  }
  SECTION("missing") { part = "does not exist"; }
  SECTION("a directory") { fs::create_directory(file); }
  SECTION("larger than max_size") {
    std::string big(sample_json);
    big.append(CheckpointMetadata::max_size, ' ');  // valid JSON, only too big
    write_file(file, big);
  }
  const auto e = error_of([&] { (void)CheckpointMetadata::load(dir.get()); });
  REQUIRE(e.has_value());
  INFO("message: " << e->what());
  CHECK(contains(e->what(), part));
}

TEST_CASE("what save writes, load reads back", "[metadata]") {
  // CriuRuntime fills command from /proc/<pid>/cmdline, which is arbitrary bytes of up to
  // 1 MiB: save must either refuse such metadata or write something load accepts, or the
  // checkpoint it signs can never be restored.
  TempDir tmp;
  const DirFd dir(tmp.path());
  const auto require_round_trip = [&](const CheckpointMetadata& m) {
    if (error_of([&] { m.save(dir.get()); })) return;  // refusing to save is fine
    const auto loaded = error_of([&] { (void)CheckpointMetadata::load(dir.get()); });
    INFO("load after a successful save: " << (loaded ? loaded->what() : "ok"));
    CHECK_FALSE(loaded.has_value());
  };
  CheckpointMetadata m = sample();
  SECTION("an argument that is not UTF-8") {
    m.command = {"/bin/prog", "caf\xe9", "\xff"};
    require_round_trip(m);
  }
  SECTION("a command line that grows past max_size once written as JSON") {
    m.command.assign(150000, "abcd");  // 750 kB as a command line, 1.8 MB as pretty JSON
    require_round_trip(m);
  }
}

TEST_CASE("from_json refuses what serde_json refuses: lone surrogates and repeated fields", "[metadata]") {
  std::string json(sample_json);
  SECTION("an escaped lone surrogate, which decodes to bytes that are not UTF-8") {
    json.replace(json.find("\"abc123\""), 8, "\"ab\\udc00\"");
    require_invalid(json, "\"container_id\"");
  }
  SECTION("a field given twice") {
    json.insert(json.find("\"rootless\""), "\"rootless\": true,\n  ");
    require_invalid(json, "appears twice");
  }
}
