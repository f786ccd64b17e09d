// nucleus-checkpoint: the operator's command line, on the C ABI alone.
//
//   nucleus-checkpoint check | dump | restore | sign | verify | inspect | keygen  [--json]
//
// Exit codes: 0 on success, else the nc_status value of the failure (1 to 10), 64 for a usage
// error. Human output by default; --json prints one JSON object on stdout for scripts.
#include <nucleus/checkpoint.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace {

constexpr int exit_usage = 64;

// One JSON object (--json) or lines of text for a person.
class Report {
 public:
  explicit Report(bool json) : json_(json), writer_(buffer_) {
    if (json_) writer_.StartObject();
  }
  void field(const char* key, const std::string& value, const char* label = nullptr) {
    if (json_) {
      writer_.Key(key);
      writer_.String(value.c_str(), static_cast<rapidjson::SizeType>(value.size()));
    } else {
      fmt::print("{:<18} {}\n", fmt::format("{}:", label ? label : key), value);
    }
  }
  void field(const char* key, std::int64_t value, const char* label = nullptr) {
    if (json_) {
      writer_.Key(key);
      writer_.Int64(value);
    } else {
      fmt::print("{:<18} {}\n", fmt::format("{}:", label ? label : key), value);
    }
  }
  void flag(const char* key, bool value, const char* label = nullptr) {
    if (json_) {
      writer_.Key(key);
      writer_.Bool(value);
    } else {
      fmt::print("{:<18} {}\n", fmt::format("{}:", label ? label : key), value ? "yes" : "no");
    }
  }
  void raw_json(const char* key, const std::string& json) {  // already valid JSON
    if (json_) {
      writer_.Key(key);
      writer_.RawValue(json.c_str(), json.size(), rapidjson::kObjectType);
    }
  }
  // Ends the report with the outcome; returns the exit code.
  int finish(nc_status status) {
    if (json_) {
      writer_.Key("status");
      writer_.String(nc_status_name(status));
      if (status != NC_OK) {
        writer_.Key("error");
        writer_.String(nc_last_error());
      }
      writer_.EndObject();
      fmt::print("{}\n", buffer_.GetString());
    } else if (status != NC_OK) {
      fmt::print(stderr, "nucleus-checkpoint: {}: {}\n", nc_status_name(status), nc_last_error());
    }
    return static_cast<int>(status);
  }

 private:
  bool json_;
  rapidjson::StringBuffer buffer_;
  rapidjson::Writer<rapidjson::StringBuffer> writer_;
};

struct RuntimeFree {
  void operator()(nc_runtime* rt) const { nc_runtime_free(rt); }
};
using Runtime = std::unique_ptr<nc_runtime, RuntimeFree>;

nc_status open_runtime(const std::string& criu, Runtime& out) {
  nc_runtime* rt = nullptr;
  const nc_status s = criu.empty() ? nc_runtime_new(&rt) : nc_runtime_new_with_criu(criu.c_str(), &rt);
  out.reset(rt);
  return s;
}

struct OptionsFree {
  void operator()(nc_options* o) const { nc_options_free(o); }
};

// What dump and restore take from the command line, turned into nc_options.
struct CriuFlags {
  bool no_shell_job = false, tcp_established = false, tcp_close = false, ext_unix_sk = false, file_locks = false;
  std::string manage_cgroups, work_dir;
  std::vector<std::string> external;
  int log_level = 4;
  double timeout_s = 0;

  void add_to(CLI::App* cmd) {
    cmd->add_flag("--no-shell-job", no_shell_job, "The tree is not attached to an outside session or terminal");
    cmd->add_flag("--tcp-established", tcp_established, "Checkpoint/restore established TCP connections");
    cmd->add_flag("--ext-unix-sk", ext_unix_sk, "Allow UNIX sockets connected outside the tree");
    cmd->add_flag("--file-locks", file_locks, "Checkpoint/restore file locks");
    cmd->add_option("--manage-cgroups", manage_cgroups, "CRIU's cgroup mode")
        ->check(CLI::IsMember({"soft", "full", "strict", "ignore"}));
    cmd->add_option("--external", external, "CRIU --external resource (repeatable), e.g. mnt[/data]:data");
    cmd->add_option("--work-dir", work_dir, "Write CRIU's log here instead of the default place");
    cmd->add_option("--log-level", log_level, "CRIU's log level")->check(CLI::Range(0, 4));
    cmd->add_option("--timeout", timeout_s, "Stop CRIU and fail after this many seconds (0: none)")
        ->check(CLI::Range(0.0, 86400.0));
  }

  // nc_options from the flags; a failing setter's status is returned.
  nc_status build(std::unique_ptr<nc_options, OptionsFree>& out, bool leave_running) const {
    nc_options* raw = nullptr;
    nc_status s = nc_options_new(&raw);
    out.reset(raw);
    const auto set = [&s](nc_status r) {
      if (s == NC_OK) s = r;
    };
    if (s != NC_OK) return s;
    set(nc_options_set_leave_running(raw, leave_running));
    set(nc_options_set_shell_job(raw, !no_shell_job));
    set(nc_options_set_tcp_established(raw, tcp_established));
    set(nc_options_set_tcp_close(raw, tcp_close));
    set(nc_options_set_ext_unix_sk(raw, ext_unix_sk));
    set(nc_options_set_file_locks(raw, file_locks));
    const char* modes[] = {"", "soft", "full", "strict", "ignore"};
    for (int m = 1; m <= 4; ++m)
      if (manage_cgroups == modes[m]) set(nc_options_set_manage_cgroups(raw, static_cast<nc_cgroup_mode>(m)));
    for (const auto& e : external) set(nc_options_add_external(raw, e.c_str()));
    if (!work_dir.empty()) set(nc_options_set_work_dir(raw, work_dir.c_str()));
    set(nc_options_set_log_level(raw, log_level));
    set(nc_options_set_timeout_ms(raw, static_cast<unsigned>(timeout_s * 1000)));
    return s;
  }
};

using Options = std::unique_ptr<nc_options, OptionsFree>;

// The runtime and the options a dump or restore needs.
nc_status open_runtime_with(const std::string& criu, const CriuFlags& flags, bool leave_running, Runtime& rt,
                            Options& opts) {
  const nc_status s = open_runtime(criu, rt);
  return s != NC_OK ? s : flags.build(opts, leave_running);
}

// "\r hashed 1.2 GiB at 840 MB/s" on a terminal, about ten times a second.
struct Progress {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now(), last{};
  bool shown = false;

  static void report(unsigned long long bytes, void* user) {
    auto* self = static_cast<Progress*>(user);
    const auto now = std::chrono::steady_clock::now();
    if (now - self->last < std::chrono::milliseconds(100)) return;
    self->last = now;
    const double seconds = std::chrono::duration<double>(now - self->start).count();
    fmt::print(stderr, "\r  hashed {:.1f} MiB at {:.0f} MB/s   ", static_cast<double>(bytes) / (1 << 20),
               seconds > 0 ? static_cast<double>(bytes) / 1e6 / seconds : 0.0);
    self->shown = true;
  }
  void done() const {
    if (shown) fmt::print(stderr, "\n");
  }
};

// The signature formats by their command-line names.
const std::map<std::string, nc_signature_format> signature_formats{{"seed", NC_SIGNATURE_SEED},
                                                                   {"chunked", NC_SIGNATURE_CHUNKED}};

std::string signature_format_name(nc_signature_format format) {
  for (const auto& [name, f] : signature_formats)
    if (f == format) return name;
  return "unknown";
}

// Signs (in `format`) or verifies dir, with a progress line on a terminal.
nc_status hash_with_progress(std::optional<nc_signature_format> sign_format, const std::string& dir, bool json) {
  Progress progress;
  const bool show = !json && ::isatty(STDERR_FILENO);
  const nc_progress_fn fn = show ? &Progress::report : nullptr;
  const nc_status s = sign_format ? nc_sign_ex(dir.c_str(), *sign_format, fn, &progress)
                                  : nc_verify_progress(dir.c_str(), fn, &progress);
  progress.done();
  return s;
}

// The format field of a signed folder (nothing if it has no readable signature).
void report_format(Report& r, const std::string& dir) {
  nc_signature_format format{};
  if (nc_signature_format_of(dir.c_str(), &format) == NC_OK) r.field("format", signature_format_name(format), "signature format");
}

// Files and bytes under dir, without following symlinks.
void count_tree(const std::string& dir, std::int64_t& files, std::int64_t& bytes) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  DIR* d = fd >= 0 ? ::fdopendir(fd) : nullptr;
  if (!d) {
    if (fd >= 0) ::close(fd);
    return;
  }
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st {};
    if (::fstatat(::dirfd(d), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      count_tree(dir + "/" + name, files, bytes);
    } else {
      ++files;
      bytes += st.st_size;
    }
  }
  ::closedir(d);
}

int cmd_check(const std::string& criu, bool json) {
  Report r(json);
  r.field("library", nc_version_string(), "library version");
  char key_path[4096];
  if (nc_key_path(key_path, sizeof key_path) == NC_OK) {
    struct stat st {};
    r.field("key_path", key_path, "key file");
    r.flag("key_exists", ::lstat(key_path, &st) == 0, "key present");
  }
  Runtime rt;
  nc_status s = open_runtime(criu, rt);
  if (s != NC_OK) return r.finish(s);
  int major = 0, minor = 0, patch = 0;
  nc_criu_version(rt.get(), &major, &minor, &patch);
  r.field("criu_version", fmt::format("{}.{}.{}", major, minor, patch), "CRIU version");
  s = nc_criu_check(rt.get());
  r.flag("criu_check", s == NC_OK, "criu check");
  if (!json && s == NC_OK) fmt::print("ready: checkpoints can be taken, signed and restored here\n");
  return r.finish(s);
}

int cmd_dump(const std::string& criu, pid_t pid, const std::string& dir, const std::string& id, bool leave_running,
             const CriuFlags& flags, nc_signature_format format, bool json) {
  Report r(json);
  Runtime rt;
  Options opts;
  nc_status s = open_runtime_with(criu, flags, leave_running, rt, opts);
  if (s == NC_OK) s = nc_options_set_signature_format(opts.get(), format);
  if (s != NC_OK) return r.finish(s);
  const auto start = std::chrono::steady_clock::now();
  s = nc_checkpoint_ex(rt.get(), id.empty() ? std::to_string(pid).c_str() : id.c_str(), pid, dir.c_str(), opts.get());
  if (s != NC_OK) return r.finish(s);
  std::int64_t files = 0, bytes = 0;
  count_tree(dir, files, bytes);
  r.field("dir", dir, "checkpoint");
  r.field("pid", pid, "process");
  r.flag("left_running", leave_running, "left running");
  r.field("bytes", bytes, "size (bytes)");
  report_format(r, dir);
  r.field("milliseconds", std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count(),
          "took (ms)");
  return r.finish(s);
}

int cmd_restore(const std::string& criu, const std::string& dir, const CriuFlags& flags, bool json) {
  Report r(json);
  Runtime rt;
  Options opts;
  nc_status s = open_runtime_with(criu, flags, false, rt, opts);
  if (s != NC_OK) return r.finish(s);
  pid_t restored = 0;
  s = nc_restore_ex(rt.get(), dir.c_str(), opts.get(), &restored);
  if (s == NC_OK) {
    r.field("dir", dir, "checkpoint");
    r.field("pid", restored, "restored PID");
  }
  return r.finish(s);
}

int cmd_inspect(const std::string& dir, bool json) {
  Report r(json);
  std::int64_t files = 0, bytes = 0;
  count_tree(dir, files, bytes);
  r.field("dir", dir, "checkpoint");
  r.field("files", files);
  r.field("bytes", bytes, "size (bytes)");
  const nc_status verified = hash_with_progress(std::nullopt, dir, json);
  r.field("signature", verified == NC_OK ? "valid" : fmt::format("INVALID ({})", nc_last_error()));
  report_format(r, dir);
  char* metadata = nullptr;
  const nc_status s = nc_read_metadata(dir.c_str(), &metadata);
  if (s == NC_OK) {
    rapidjson::Document doc;
    doc.Parse(metadata);
    if (json) {
      r.raw_json("metadata", metadata);
    } else {
      for (auto& m : doc.GetObject()) {
        const std::string key = m.name.GetString();
        if (m.value.IsString()) r.field(key.c_str(), m.value.GetString());
        else if (m.value.IsBool()) r.flag(key.c_str(), m.value.GetBool());
        else if (m.value.IsUint64()) r.field(key.c_str(), static_cast<std::int64_t>(m.value.GetUint64()));
        else if (m.value.IsArray()) {
          std::string joined;
          for (auto& a : m.value.GetArray()) joined += (joined.empty() ? "" : " ") + std::string(a.GetString());
          r.field(key.c_str(), joined);
        }
      }
    }
  }
  nc_free(metadata);
  // An invalid signature is the answer inspect was asked for; the exit code says it too.
  return r.finish(verified != NC_OK ? verified : s);
}

int cmd_hash(std::optional<nc_signature_format> sign_format, const std::string& dir, bool json) {
  Report r(json);
  const nc_status s = hash_with_progress(sign_format, dir, json);
  if (s == NC_OK) {
    r.field("dir", dir, "checkpoint");
    r.field("signature", sign_format ? "written" : "valid");
    report_format(r, dir);
  }
  return r.finish(s);
}

int cmd_keygen(bool json) {
  Report r(json);
  int created = 0;
  const nc_status s = nc_keygen(&created);
  char key_path[4096];
  if (s == NC_OK && nc_key_path(key_path, sizeof key_path) == NC_OK) {
    r.field("key_path", key_path, "key file");
    r.flag("created", created != 0, "created now");
  }
  return r.finish(s);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Checkpoint and restore process trees through CRIU; every checkpoint signed with HMAC-SHA256.\n"
               "Exit code: 0, the failure's nc_status (1-10), or 64 for a usage error.",
               "nucleus-checkpoint"};
  app.require_subcommand(1);
  bool json = false;
  std::string criu, dir, id;
  pid_t pid = 0;
  bool leave_running = false;
  CriuFlags flags;
  app.add_flag("--json", json, "Print one JSON object for scripts");

  auto* check = app.add_subcommand("check", "Is this machine ready? CRIU found, its version, criu check, the key");
  check->add_option("--criu", criu, "CRIU binary to use instead of the trusted paths");

  auto* dump = app.add_subcommand("dump", "Checkpoint the process tree rooted at --pid into --dir, signed");
  dump->add_option("--pid", pid, "Root of the tree")->required()->check(CLI::PositiveNumber);
  dump->add_option("--dir", dir, "Checkpoint folder to create")->required();
  dump->add_option("--id", id, "Container id recorded in metadata.json (default: the PID)");
  dump->add_flag("--leave-running", leave_running, "Keep the tree running after the dump");
  dump->add_option("--criu", criu, "CRIU binary to use instead of the trusted paths");
  nc_signature_format dump_format = NC_SIGNATURE_CHUNKED;
  dump->add_option("--signature-format", dump_format, "Signature format (default chunked; seed: nucleus-container's)")
      ->transform(CLI::CheckedTransformer(signature_formats));
  flags.add_to(dump);

  auto* restore = app.add_subcommand("restore", "Verify --dir and restore its tree; prints the restored PID");
  restore->add_option("--dir", dir, "Checkpoint folder")->required();
  restore->add_option("--criu", criu, "CRIU binary to use instead of the trusted paths");
  restore->add_flag("--tcp-close", flags.tcp_close, "Close established TCP connections instead of restoring them");
  flags.add_to(restore);

  auto* sign = app.add_subcommand("sign", "Write --dir/checkpoint.hmac with this machine's key");
  sign->add_option("--dir", dir, "Checkpoint folder")->required();
  nc_signature_format sign_format = NC_SIGNATURE_SEED;
  sign->add_option("--format", sign_format, "Signature format (default seed, as nc_sign; chunked: parallel)")
      ->transform(CLI::CheckedTransformer(signature_formats));
  auto* verify = app.add_subcommand("verify", "Check --dir against its checkpoint.hmac");
  verify->add_option("--dir", dir, "Checkpoint folder")->required();
  auto* inspect = app.add_subcommand("inspect", "Show a checkpoint's metadata, size and signature state");
  inspect->add_option("--dir", dir, "Checkpoint folder")->required();
  app.add_subcommand("keygen", "Create this machine's checkpoint key if there is none, and show where it is");

  for (auto* sub : app.get_subcommands({})) sub->fallthrough();  // --json may follow the subcommand
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : exit_usage;
  }

  if (*check) return cmd_check(criu, json);
  if (*dump) return cmd_dump(criu, pid, dir, id, leave_running, flags, dump_format, json);
  if (*restore) return cmd_restore(criu, dir, flags, json);
  if (*sign) return cmd_hash(sign_format, dir, json);
  if (*verify) return cmd_hash(std::nullopt, dir, json);
  if (*inspect) return cmd_inspect(dir, json);
  return cmd_keygen(json);
}
