// nucleus-checkpoint: the operator's command line, on the C ABI alone.
//
//   nucleus-checkpoint check | dump | predump | restore | sign | verify | inspect | export | import | push | pull |
//                      migrate | receive | keygen | trust add  [--json]
//
// Exit codes: 0 on success, else the nc_status value of the failure (1 to 10), 64 for a usage
// error; restore --wait exits as the restored root did (its status, or 128+signal). Human output
// by default; --json prints one JSON object on stdout for scripts.
#include <nucleus/checkpoint.h>

#include <dirent.h>
#include <netdb.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "checkpoint/utf8.hpp"

namespace {

constexpr int exit_usage = 64;

// The kinds of signing key by their command-line names.
const std::map<std::string, nc_signing> signings{{"hmac", NC_SIGNING_HMAC}, {"ed25519", NC_SIGNING_ED25519}};

// Text from a checkpoint folder, CRIU or the user, fit to show (lib/checkpoint/utf8.hpp).
using nucleus::checkpoint::printable;

// The first failure of a run of calls, with its message taken when it happened (a later call
// that succeeds clears nc_last_error()), fit to show: the library's comes escaped, this
// program's own is escaped here.
struct Outcome {
  nc_status status = NC_OK;
  std::string message;

  void operator()(nc_status s, const std::string& own_message = {}) {
    if (status != NC_OK || s == NC_OK) return;
    status = s;
    message = own_message.empty() ? nc_last_error() : printable(own_message);
  }
  void operator()(const Outcome& earlier) {
    if (status == NC_OK) *this = earlier;
  }
  bool ok() const { return status == NC_OK; }
};

// One JSON object (--json) or lines of text for a person; every string in it through printable,
// and the JSON all ASCII (\uNNNN beyond), so that neither can carry a control to a terminal.
class Report {
 public:
  // out: stdout, or stderr where stdout carries data (export's stream).
  explicit Report(bool json, std::FILE* out = stdout) : json_(json), out_(out), writer_(buffer_) {
    if (json_) writer_.StartObject();
  }
  void field(const char* key, const std::string& value, const char* label = nullptr) {
    shown_field(key, json_ ? value : printable(value), label);
  }
  // A value fit to show already (holding an Outcome's message): not escaped again.
  void shown_field(const char* key, const std::string& value, const char* label = nullptr) {
    if (json_) {
      writer_.Key(key);
      string(value);
    } else {
      line(label ? label : key, value);
    }
  }
  void field(const char* key, std::int64_t value, const char* label = nullptr) {
    if (json_) {
      writer_.Key(key);
      writer_.Int64(value);
    } else {
      line(label ? label : key, std::to_string(value));
    }
  }
  void flag(const char* key, bool value, const char* label = nullptr) {
    if (json_) {
      writer_.Key(key);
      writer_.Bool(value);
    } else {
      line(label ? label : key, value ? "yes" : "no");
    }
  }
  void value(const char* key, const rapidjson::Value& v) {  // JSON only
    if (json_) {
      writer_.Key(key);
      v.Accept(writer_);
    }
  }
  // Fields grouped under key in JSON; for a person, the fields alone.
  void object(const char* key, const std::function<void()>& fields) {
    if (json_) {
      writer_.Key(key);
      writer_.StartObject();
    }
    fields();
    if (json_) writer_.EndObject();
  }
  void list(const char* key, const std::vector<std::string>& values, const char* label = nullptr) {
    if (json_) {
      writer_.Key(key);
      writer_.StartArray();
      for (const auto& v : values) string(v);
      writer_.EndArray();
    } else {
      std::vector<std::string> shown;
      for (const auto& v : values) shown.push_back(printable(v));
      line(label ? label : key, fmt::format("{}", fmt::join(shown, ", ")));
    }
  }
  // Ends the report with the outcome, whose message was taken when its call failed; returns the
  // exit code.
  int finish(const Outcome& outcome) {
    if (json_) {
      writer_.Key("status");
      writer_.String(nc_status_name(outcome.status));
      if (!outcome.ok()) {
        writer_.Key("error");
        string(outcome.message);
      }
      writer_.EndObject();
      fmt::print(out_, "{}\n", buffer_.GetString());
    } else if (!outcome.ok()) {
      fmt::print(stderr, "nucleus-checkpoint: {}: {}\n", nc_status_name(outcome.status), outcome.message);
    }
    std::fflush(out_);
    return static_cast<int>(outcome.status);
  }

 private:
  void line(const std::string& label, const std::string& text) {
    fmt::print(out_, "{:<18} {}\n", printable(label) + ":", text);
  }
  void string(const std::string& value) {
    const std::string utf8 = printable(value, false);
    writer_.String(utf8.c_str(), static_cast<rapidjson::SizeType>(utf8.size()));
  }

  bool json_;
  std::FILE* out_;
  rapidjson::StringBuffer buffer_;
  rapidjson::Writer<rapidjson::StringBuffer, rapidjson::UTF8<>, rapidjson::ASCII<>> writer_;
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
using Options = std::unique_ptr<nc_options, OptionsFree>;

// CRIU's fd[N]:KEY.
std::optional<std::pair<int, std::string>> split_inherit_fd(const std::string& spec) {
  const auto close = spec.find("]:");
  if (spec.rfind("fd[", 0) != 0 || close == std::string::npos || close + 2 == spec.size()) return std::nullopt;
  int fd = -1;
  const char* last = spec.data() + close;
  const auto [end, error] = std::from_chars(spec.data() + 3, last, fd);
  if (error != std::errc() || end != last || fd < 0) return std::nullopt;
  return std::pair{fd, spec.substr(close + 2)};
}

// NAME=VALUE, split at the first '=' (a value may hold more); the name is not empty.
std::optional<std::pair<std::string, std::string>> split_assignment(const std::string& text) {
  const auto eq = text.find('=');
  if (eq == 0 || eq == std::string::npos) return std::nullopt;
  return std::pair{text.substr(0, eq), text.substr(eq + 1)};
}

// N must be open here: the restored tree gets what this command inherited from its caller.
const CLI::Validator inherited_descriptor(
    [](std::string& spec) -> std::string {
      const auto parsed = split_inherit_fd(spec);
      if (!parsed) return "expected fd[N]:KEY (N: a descriptor this command inherited; KEY: CRIU's key, or stdin, "
                          "stdout, stderr)";
      if (::fcntl(parsed->first, F_GETFD) == -1)
        return fmt::format("descriptor {0} is not open: nucleus-checkpoint must inherit it from its caller (in a "
                           "shell: {0}<FILE or {0}<&FD)", parsed->first);
      return {};
    },
    "fd[N]:KEY");

const CLI::Validator assignment(
    [](std::string& text) -> std::string { return split_assignment(text) ? "" : "expected NAME=VALUE with a name"; },
    "NAME=VALUE");

// PATH's bytes, refused (not cut) beyond `limit`, which `bound` names.
Outcome read_bounded(const std::string& path, std::size_t limit, std::string& bytes,
                     std::string_view bound = "the most a checkpoint records") {
  Outcome outcome;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    outcome(error == ENOENT ? NC_E_NOT_FOUND : NC_E_IO, fmt::format("cannot open {}: {}", path, std::strerror(error)));
    return outcome;
  }
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) outcome(NC_E_IO, fmt::format("cannot read {}: {}", path, std::strerror(errno)));
    if (n <= 0) break;
    bytes.append(buffer, static_cast<std::size_t>(n));
    if (bytes.size() > limit) {
      outcome(NC_E_INVALID, fmt::format("{} is larger than {} bytes, {}", path, limit, bound));
      break;
    }
  }
  ::close(fd);
  return outcome;
}

// The actions a flag applies to, as CRIU reads it.
enum Action : unsigned { dump_action = 1, restore_action = 2 };

// What dump and restore take from the command line (each flag only where it applies, named as
// CRIU names it), turned into nc_options.
struct CriuFlags {
  bool no_shell_job = false, tcp_established = false, tcp_close = false, ext_unix_sk = false, file_locks = false;
  std::string manage_cgroups, work_dir;
  std::vector<std::string> external;
  int log_level = 4;
  double timeout_s = 0;
  // Containers.
  bool no_detect_container = false, use_default_config = false, evasive_devices = false;
  std::vector<std::string> cgroup_root;
  std::string cgroup_yard, file_validation;
  // Dump.
  nc_network_lock network_lock = NC_NETWORK_LOCK_DEFAULT;
  std::string cgroup_props, freeze_cgroup;
  bool skip_in_flight = false, link_remap = false, ghost_fiemap = false;
  std::uint64_t ghost_limit = 0;
  std::string parent;  // pre-dump chains
  bool auto_dedup = false;
  nc_signing signing = NC_SIGNING_HMAC;
  std::vector<std::string> annotations, runtime_files;  // NAME=VALUE, NAME=PATH
  // Restore.
  std::string root, lsm_profile, lsm_mount_context;
  std::vector<std::string> inherit_fds, join_ns, empty_ns;
  bool restore_sibling = false, wait = false, no_stream = false;
  std::string expected_id;
  std::vector<std::string> expected_annotations;  // NAME=VALUE

  void add_to(CLI::App* cmd, Action action) {
    cmd->add_flag("--no-shell-job", no_shell_job, "The tree is not attached to an outside session or terminal");
    cmd->add_flag("--tcp-established", tcp_established, "Checkpoint/restore established TCP connections");
    cmd->add_flag("--tcp-close", tcp_close,
                  action == dump_action ? "Do not dump established TCP connections (restore them closed)"
                                        : "Restore established TCP connections closed (needed if dumped with it)");
    cmd->add_flag("--ext-unix-sk", ext_unix_sk, "Allow UNIX sockets connected outside the tree");
    cmd->add_flag("--file-locks", file_locks, "Checkpoint/restore file locks");
    cmd->add_option("--manage-cgroups", manage_cgroups, "CRIU's cgroup mode")
        ->check(CLI::IsMember({"soft", "full", "strict", "ignore"}));
    cmd->add_option("--external", external,
                    action == dump_action
                        ? "CRIU --external resource (repeatable): mnt[MOUNTPOINT]:KEY, e.g. mnt[/data]:data; "
                          "net[INODE]:KEY, pid[INODE]:KEY, dev[MAJOR/MINOR]:KEY"
                        : "CRIU --external resource (repeatable): mnt[KEY]:HOST_PATH, e.g. mnt[data]:/srv/data; "
                          "dev[KEY]:HOST_PATH");
    cmd->add_option("--work-dir", work_dir, "Write CRIU's log here instead of the default place");
    cmd->add_option("--log-level", log_level, "CRIU's log level")->check(CLI::Range(0, 4));
    cmd->add_option("--timeout", timeout_s, "Stop CRIU and fail after this many seconds (0: none)")
        ->check(CLI::Range(0.0, 86400.0));

    cmd->add_flag("--no-detect-container", no_detect_container,
                  action == dump_action ? "Do not read and record the tree's mounts, namespaces and descriptors"
                                        : "Do not apply what the dump recorded of the container");
    cmd->add_flag("--use-default-config", use_default_config,
                  "Let CRIU read /etc/criu/default.conf (by default it reads no configuration file)");
    cmd->add_option("--cgroup-root", cgroup_root,
                    action == dump_action ? "Dump cgroups from this root: /PATH or CONTROLLER:/PATH (repeatable)"
                                          : "Restore cgroups under this root: /PATH or CONTROLLER:/PATH (repeatable)");
    cmd->add_option("--cgroup-yard", cgroup_yard, "An already mounted cgroup yard (absolute path) CRIU uses");
    cmd->add_flag("--evasive-devices", evasive_devices, "Reach a device file by any path when its own is gone");
    cmd->add_option("--file-validation", file_validation, "How CRIU checks files are those dumped")
        ->check(CLI::IsMember({"filesize", "buildid"}));

    if (action == dump_action) {
      cmd->add_option("--network-lock", network_lock, "How CRIU keeps a network namespace quiet (default iptables)")
          ->transform(CLI::CheckedTransformer(std::map<std::string, nc_network_lock>{
              {"iptables", NC_NETWORK_LOCK_IPTABLES}, {"nftables", NC_NETWORK_LOCK_NFTABLES}, {"skip", NC_NETWORK_LOCK_SKIP}}));
      cmd->add_option("--cgroup-props", cgroup_props, "Cgroup controllers and properties to dump (CRIU's YAML)");
      cmd->add_option("--freeze-cgroup", freeze_cgroup, "Freeze the tree through this cgroup (absolute path)");
      cmd->add_flag("--skip-in-flight", skip_in_flight, "Leave out TCP connections not yet accepted");
      cmd->add_flag("--link-remap", link_remap, "Link open but deleted files back where possible");
      cmd->add_option("--ghost-limit", ghost_limit, "Largest deleted file whose contents are dumped (e.g. 10M)")
          ->transform(CLI::AsSizeValue(false));
      cmd->add_flag("--ghost-fiemap", ghost_fiemap, "Dump deleted files' contents sparsely (fiemap)");
      cmd->add_option("--parent", parent, "A pre-dump beside --dir to dump on: write only the memory changed since");
      cmd->add_flag("--auto-dedup", auto_dedup, "With --parent: punch what this layer holds out of the parents' "
                                                "images (they are re-signed)");
      cmd->add_option("--sign", signing, "Key to sign with: hmac (default) or ed25519 (receivers verify with its "
                                         "public key alone)")
          ->transform(CLI::CheckedTransformer(signings));
      cmd->add_option("--annotation", annotations, "Record NAME=VALUE in the signed metadata (repeatable)")
          ->check(assignment);
      cmd->add_option("--runtime-file", runtime_files,
                      "Store the file at PATH as runtime/NAME in the checkpoint, signed: NAME=PATH (repeatable)")
          ->check(assignment);
    } else {
      cmd->add_option("--root", root, "The container's rootfs (default: the one the dump recorded)");
      cmd->add_option("--inherit-fd", inherit_fds,
                      "fd[N]:KEY: this command's descriptor N stands for KEY (CRIU's, or stdin, stdout, stderr of "
                      "the tree's root) (repeatable)")
          ->check(inherited_descriptor);
      cmd->add_option("--join-ns", join_ns, "Join a namespace: NS:PID or NS:PATH, user:PID,UID,GID (repeatable)");
      cmd->add_option("--empty-ns", empty_ns, "Create the namespace but leave it unconfigured (net)");
      cmd->add_option("--lsm-profile", lsm_profile, "apparmor:NAME, selinux:CONTEXT or none:");
      cmd->add_option("--lsm-mount-context", lsm_mount_context, "SELinux context to restore mounts with");
      cmd->add_option("--id", expected_id,
                      "Refuse the checkpoint unless it was signed for this container id (a swapped folder)");
      cmd->add_option("--expect-annotation", expected_annotations,
                      "Refuse the checkpoint unless it carries annotation NAME=VALUE, e.g. a generation (repeatable)")
          ->check(assignment);
      auto* sibling = cmd->add_flag("--restore-sibling", restore_sibling,
                                    "Restore the tree as this command's child (default: detached)");
      cmd->add_flag("--wait", wait, "Wait for the restored root; exit with its status, or 128+signal")->needs(sibling);
      cmd->add_flag("--no-stream", no_stream,
                    "Verify the whole checkpoint first and let CRIU read the folder (slower; the default streams the "
                    "images to CRIU through the library's checks)");
    }
  }

  // nc_options from the flags.
  Outcome build(Options& out, bool leave_running) const {
    Outcome set;
    nc_options* raw = nullptr;
    set(nc_options_new(&raw));
    out.reset(raw);
    if (!set.ok()) return set;
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

    set(nc_options_set_detect_container(raw, !no_detect_container));
    set(nc_options_set_use_default_config(raw, use_default_config));
    for (const auto& r : cgroup_root) set(nc_options_add_cgroup_root(raw, r.c_str()));
    set(nc_options_set_evasive_devices(raw, evasive_devices));
    // Optional strings: the library's default unless given.
    const auto given = [](const std::string& v) { return v.empty() ? nullptr : v.c_str(); };
    set(nc_options_set_cgroup_yard(raw, given(cgroup_yard)));
    set(nc_options_set_file_validation(raw, given(file_validation)));

    set(nc_options_set_network_lock(raw, network_lock));
    set(nc_options_set_cgroup_props(raw, given(cgroup_props)));
    set(nc_options_set_freeze_cgroup(raw, given(freeze_cgroup)));
    set(nc_options_set_skip_in_flight(raw, skip_in_flight));
    set(nc_options_set_link_remap(raw, link_remap));
    set(nc_options_set_ghost_limit(raw, ghost_limit));
    set(nc_options_set_ghost_fiemap(raw, ghost_fiemap));
    set(nc_options_set_parent(raw, given(parent)));
    set(nc_options_set_auto_dedup(raw, auto_dedup));
    set(nc_options_set_signing(raw, signing));
    for (const auto& a : annotations) {
      const auto [name, value] = *split_assignment(a);  // checked by the parser
      set(nc_options_add_annotation(raw, name.c_str(), value.c_str()));
    }
    for (const auto& f : runtime_files) {
      const auto [name, path] = *split_assignment(f);
      std::string bytes;
      const Outcome read = read_bounded(path, NC_RUNTIME_FILE_MAX, bytes);
      set(read);
      if (set.ok()) set(nc_options_add_runtime_file(raw, name.c_str(), bytes.data(), bytes.size()));
    }

    set(nc_options_set_root(raw, given(root)));
    for (const auto& spec : inherit_fds) {
      const auto [fd, key] = *split_inherit_fd(spec);  // checked by the parser
      set(nc_options_add_inherit_fd(raw, fd, key.c_str()));
    }
    for (const auto& ns : join_ns) set(nc_options_add_join_ns(raw, ns.c_str()));
    for (const auto& ns : empty_ns) set(nc_options_add_empty_ns(raw, ns.c_str()));
    set(nc_options_set_lsm_profile(raw, given(lsm_profile)));
    set(nc_options_set_lsm_mount_context(raw, given(lsm_mount_context)));
    set(nc_options_set_restore_mode(raw, restore_sibling ? NC_RESTORE_CHILD : NC_RESTORE_DETACHED));
    if (no_stream) set(nc_options_set_image_stream(raw, 0));
    set(nc_options_set_expected_container_id(raw, given(expected_id)));
    for (const auto& text : expected_annotations) {
      const auto [name, value] = *split_assignment(text);  // checked by the parser
      set(nc_options_expect_annotation(raw, name.c_str(), value.c_str()));
    }
    return set;
  }
};

// The runtime and the options a dump or restore needs.
Outcome open_runtime_with(const std::string& criu, const CriuFlags& flags, bool leave_running, Runtime& rt,
                          Options& opts) {
  Outcome outcome;
  outcome(open_runtime(criu, rt));
  return outcome.ok() ? flags.build(opts, leave_running) : outcome;
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
const std::map<std::string, nc_signature_format> signature_formats{
    {"seed", NC_SIGNATURE_SEED}, {"chunked", NC_SIGNATURE_CHUNKED}, {"manifest", NC_SIGNATURE_MANIFEST}};

std::string signature_format_name(nc_signature_format format) {
  for (const auto& [name, f] : signature_formats)
    if (f == format) return name;
  return "unknown";
}

// Signs (in `format`, with the key of `signing`) or verifies dir, with a progress line on a terminal.
nc_status hash_with_progress(std::optional<nc_signature_format> sign_format, const std::string& dir, bool json,
                             nc_signing signing = NC_SIGNING_HMAC) {
  Progress progress;
  const bool show = !json && ::isatty(STDERR_FILENO);
  const nc_progress_fn fn = show ? &Progress::report : nullptr;
  const nc_status s = sign_format ? nc_sign_as(dir.c_str(), *sign_format, signing, fn, &progress)
                                  : nc_verify_progress(dir.c_str(), fn, &progress);
  progress.done();
  return s;
}

// The format and signer fields of a signed folder (nothing if it has no readable signature).
void report_format(Report& r, const std::string& dir) {
  nc_signature_format format{};
  if (nc_signature_format_of(dir.c_str(), &format) == NC_OK) r.field("format", signature_format_name(format), "signature format");
  nc_signing signing{};
  char* key_id = nullptr;
  if (nc_signer_of(dir.c_str(), &signing, &key_id) == NC_OK) {
    r.field("signed_with", signing == NC_SIGNING_ED25519 ? "ed25519" : "hmac-sha256", "signed with");
    if (key_id) r.field("key_id", key_id, "signing key id");
  }
  nc_free(key_id);
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

// The programs CRIU runs for containers, each with its Debian package; CRIU finds them in the
// PATH the library gives it.
struct CriuTool {
  const char* name;
  const char* package;
  const char* used_for;
};
constexpr CriuTool criu_tools[] = {
    {"iptables-restore", "iptables", "network lock, iptables"},
    {"ip6tables-restore", "iptables", "network lock, iptables, IPv6"},
    {"nft", "nftables", "network lock, nftables"},
    {"ip", "iproute2", "a network namespace's addresses and routes"},
    {"tar", "tar", "tmpfs contents"},
};
constexpr const char* criu_path[] = {"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"};

std::optional<std::string> find_criu_tool(const char* name) {
  for (const char* dir : criu_path) {
    std::string candidate = fmt::format("{}/{}", dir, name);
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return std::nullopt;
}

// The running kernel's release, and its version (0.0 if unreadable).
struct Kernel {
  std::string release;
  int major = 0, minor = 0;
};
Kernel running_kernel() {
  struct utsname u {};
  if (::uname(&u) != 0) return {};
  Kernel k{u.release};
  if (std::sscanf(u.release, "%d.%d", &k.major, &k.minor) != 2) k.major = k.minor = 0;
  return k;
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
  Outcome opened;
  opened(open_runtime(criu, rt));
  if (!opened.ok()) return r.finish(opened);
  int major = 0, minor = 0, patch = 0;
  nc_criu_version(rt.get(), &major, &minor, &patch);
  r.field("criu_version", fmt::format("{}.{}.{}", major, minor, patch), "CRIU version");
  Outcome checked;
  checked(nc_criu_check(rt.get()));
  r.flag("criu_check", checked.ok(), "criu check");

  std::vector<std::string> missing_tools, missing_packages;
  r.object("tools", [&] {
    for (const auto& tool : criu_tools) {
      const auto path = find_criu_tool(tool.name);
      if (!path) {
        missing_tools.emplace_back(tool.name);
        if (std::find(missing_packages.begin(), missing_packages.end(), tool.package) == missing_packages.end())
          missing_packages.emplace_back(tool.package);
      }
      if (json) {
        r.object(tool.name, [&] {
          r.flag("found", path.has_value());
          r.field("path", path.value_or(""));
          r.field("package", tool.package);
          r.field("used_for", tool.used_for);
        });
      } else {
        r.field(tool.name, path ? fmt::format("{} ({})", *path, tool.used_for)
                                : fmt::format("MISSING: install {} ({})", tool.package, tool.used_for));
      }
    }
  });
  if (json || !missing_packages.empty()) r.list("missing_packages", missing_packages, "to install");

  // CRIU before 4.2 cannot dump a TCP or UDP socket on Linux 6.16 and later (criu#2718).
  const Kernel kernel = running_kernel();
  const bool sockets = std::pair(major, minor) >= std::pair(4, 2) || std::pair(kernel.major, kernel.minor) < std::pair(6, 16);
  r.field("kernel", kernel.release);
  r.flag("tcp_udp_sockets", sockets, "TCP/UDP sockets");

  std::vector<std::string> problems;  // fit to show, as the outcome's message they make
  if (!checked.ok()) problems.push_back(checked.message);
  if (!missing_tools.empty())
    problems.push_back(printable(fmt::format("CRIU runs {} for containers; not found in CRIU's PATH ({}): install the "
                                             "Debian package{} {} (scripts/setup.sh does)",
                                             fmt::join(missing_tools, ", "), fmt::join(criu_path, ":"),
                                             missing_packages.size() > 1 ? "s" : "", fmt::join(missing_packages, " "))));
  if (!sockets)
    problems.push_back(printable(fmt::format("CRIU {}.{} cannot dump TCP or UDP sockets on Linux {} (6.16 and later, "
                                             "criu#2718): install CRIU 4.2 or later (scripts/install-criu.sh)",
                                             major, minor, kernel.release)));
  r.flag("ready", problems.empty());
  if (!problems.empty())
    return r.finish({checked.ok() ? NC_E_CRIU : checked.status, fmt::format("{}", fmt::join(problems, "; "))});
  if (!json) fmt::print("ready: checkpoints can be taken, signed and restored here\n");
  return r.finish({});
}

// The start time of PID (field 22 of /proc/PID/stat), 0 if there is no such process: taken as the
// command starts, so that the library refuses a PID reused while it got ready.
unsigned long long start_ticks_of(pid_t pid) {
  std::FILE* f = std::fopen(fmt::format("/proc/{}/stat", pid).c_str(), "re");
  if (!f) return 0;
  char buf[4096];
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  const std::string stat(buf, n);
  std::size_t at = stat.rfind(')');
  for (int field = 2; field < 22 && at != std::string::npos; ++field) at = stat.find(' ', at + 1);
  return at == std::string::npos ? 0 : std::strtoull(stat.c_str() + at + 1, nullptr, 10);
}

int cmd_dump(const std::string& criu, pid_t pid, const std::string& dir, const std::string& id, bool leave_running,
             const CriuFlags& flags, nc_signature_format format, bool predump, bool json) {
  const unsigned long long start_ticks = start_ticks_of(pid);
  Report r(json);
  Runtime rt;
  Options opts;
  Outcome opened = open_runtime_with(criu, flags, leave_running, rt, opts);
  if (opened.ok()) opened(nc_options_set_signature_format(opts.get(), format));
  if (opened.ok() && start_ticks != 0) opened(nc_options_set_start_ticks(opts.get(), start_ticks));
  if (!opened.ok()) return r.finish(opened);
  const auto start = std::chrono::steady_clock::now();
  Outcome dumped;
  const std::string container_id = id.empty() ? std::to_string(pid) : id;
  dumped((predump ? nc_predump : nc_checkpoint_ex)(rt.get(), container_id.c_str(), pid, dir.c_str(), opts.get()));
  if (!dumped.ok()) return r.finish(dumped);
  std::int64_t files = 0, bytes = 0;
  count_tree(dir, files, bytes);
  r.field("dir", dir, "checkpoint");
  r.field("pid", pid, "process");
  r.flag("left_running", leave_running || predump, "left running");
  r.flag("predump", predump, "pre-dump");
  if (!flags.parent.empty()) r.field("parent", flags.parent, "parent");
  r.field("bytes", bytes, "size (bytes)");
  report_format(r, dir);
  r.field("milliseconds", std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count(),
          "took (ms)");
  return r.finish(dumped);
}

// Waits for the restored root, this command's child, through its pidfd (which it closes): the
// root's exit status, or 128+signal as a shell reports it.
int wait_for_exit(int pidfd) {
  siginfo_t info{};
  int waited = 0;
  while ((waited = ::waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WEXITED)) != 0 && errno == EINTR) {
  }
  const int error = errno;
  ::close(pidfd);
  if (waited != 0) {
    fmt::print(stderr, "nucleus-checkpoint: cannot wait for the restored tree: {}\n", std::strerror(error));
    return NC_E_INTERNAL;
  }
  return info.si_code == CLD_EXITED ? info.si_status : 128 + info.si_status;
}

int cmd_restore(const std::string& criu, const std::string& dir, const CriuFlags& flags, bool json) {
  Report r(json);
  Runtime rt;
  Options opts;
  const Outcome opened = open_runtime_with(criu, flags, false, rt, opts);
  if (!opened.ok()) return r.finish(opened);
  pid_t restored = 0;
  int pidfd = -1;
  Outcome restoring;
  restoring(nc_restore_pidfd(rt.get(), dir.c_str(), opts.get(), &restored, &pidfd));
  if (!restoring.ok()) return r.finish(restoring);
  r.field("dir", dir, "checkpoint");
  r.field("pid", restored, "restored PID");
  r.flag("child", flags.restore_sibling, "our child");
  const int code = r.finish(restoring);  // printed now: the PID is wanted while the tree runs
  if (!flags.wait) {
    ::close(pidfd);
    return code;
  }
  return wait_for_exit(pidfd);
}

int cmd_inspect(const std::string& dir, bool json) {
  Report r(json);
  std::int64_t files = 0, bytes = 0;
  count_tree(dir, files, bytes);
  r.field("dir", dir, "checkpoint");
  r.field("files", files);
  r.field("bytes", bytes, "size (bytes)");
  Outcome outcome;
  outcome(hash_with_progress(std::nullopt, dir, json));
  const bool verified = outcome.ok();
  r.shown_field("signature", verified ? "valid" : fmt::format("INVALID ({})", outcome.message));
  report_format(r, dir);
  char* metadata = nullptr;
  const nc_status read = nc_read_metadata(dir.c_str(), &metadata);
  outcome(read);
  // Shown even when the signature does not verify (it is what was asked for), but marked: then
  // anyone who can write the folder may have written it. (Read after verifying, by path: its
  // owner could swap it in between; only the library could read the very bytes it verified.)
  if (json) r.flag("metadata_verified", verified && read == NC_OK);
  if (read == NC_OK) {
    rapidjson::Document doc;
    doc.Parse(metadata);
    if (json) {
      r.value("metadata", doc);
    } else {
      r.field("metadata", verified ? "verified (signed)"
                                   : "UNVERIFIED: the signature does not verify, anyone may have written what follows");
      // Const: RapidJSON's non-const member iterators are ambiguous under C++20 (clang warns).
      for (const auto& m : std::as_const(doc).GetObject()) {
        const char* key = m.name.GetString();
        const std::string label = (verified ? "" : "UNVERIFIED ") + std::string(key);
        if (m.value.IsString()) r.field(key, m.value.GetString(), label.c_str());
        else if (m.value.IsBool()) r.flag(key, m.value.GetBool(), label.c_str());
        else if (m.value.IsUint64()) r.field(key, static_cast<std::int64_t>(m.value.GetUint64()), label.c_str());
        else if (m.value.IsArray()) {
          std::string joined;
          for (auto& a : m.value.GetArray()) joined += (joined.empty() ? "" : " ") + std::string(a.GetString());
          r.field(key, joined, label.c_str());
        }
      }
    }
  }
  nc_free(metadata);
  // An invalid signature is the answer inspect was asked for; the exit code says it too.
  return r.finish(outcome);
}

int cmd_hash(std::optional<nc_signature_format> sign_format, const std::string& dir, bool json,
             nc_signing signing = NC_SIGNING_HMAC) {
  Report r(json);
  Outcome hashed;
  hashed(hash_with_progress(sign_format, dir, json, signing));
  if (hashed.ok()) {
    r.field("dir", dir, "checkpoint");
    r.field("signature", sign_format ? "written" : "valid");
    report_format(r, dir);
  }
  return r.finish(hashed);
}

// Writes --dir as a transfer stream to --output (created, 0600) or stdout; with --chain, the chain of
// the layer --dir, leaving out the layers --have names. The report goes to stderr when the stream
// takes stdout.
int cmd_export(const std::string& dir, bool zstd, const std::string& output, bool chain,
               const std::vector<std::string>& have, bool json) {
  Report r(json, output.empty() ? stderr : stdout);
  Outcome exported;
  Options opts;
  nc_options* raw = nullptr;
  exported(nc_options_new(&raw));
  opts.reset(raw);
  if (exported.ok()) exported(nc_options_set_compression(raw, zstd ? NC_COMPRESSION_ZSTD : NC_COMPRESSION_NONE));
  for (const std::string& sha : have)
    if (exported.ok()) exported(nc_options_add_receiver_has(raw, sha.c_str()));
  if (!exported.ok()) return r.finish(exported);
  int fd = STDOUT_FILENO;
  if (output.empty() && ::isatty(fd))
    exported(NC_E_INVALID, "the stream is binary: redirect stdout to a file or a pipe, or give --output FILE");
  if (!output.empty()) {
    fd = ::open(output.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
      exported(errno == EEXIST ? NC_E_INVALID : NC_E_IO,
               fmt::format("cannot create --output {}: {}{}", output, std::strerror(errno),
                           errno == EEXIST ? " (give a new name, or remove it first)" : ""));
  }
  if (exported.ok()) exported(chain ? nc_export_chain(dir.c_str(), fd, opts.get()) : nc_export(dir.c_str(), fd, opts.get()));
  if (!output.empty() && fd >= 0) {
    // A partial stream is refused on import anyway; it is not left lying about either.
    if (!exported.ok()) ::unlink(output.c_str());
    ::close(fd);
  }
  if (exported.ok()) {
    r.field("dir", dir, chain ? "chain of layer" : "checkpoint");
    r.field("output", output.empty() ? "-" : output, "stream");
    r.field("compression", zstd ? "zstd" : "none");
  }
  return r.finish(exported);
}

// Reads a transfer stream from --input or stdin into the new checkpoint folder --dir; with --chain,
// a chain stream into the store folder --dir.
int cmd_import(const std::string& dir, const std::string& input, bool chain, bool json) {
  Report r(json);
  Outcome imported;
  int fd = STDIN_FILENO;
  if (input.empty() && ::isatty(fd))
    imported(NC_E_INVALID, "the stream is read from stdin, which is a terminal: pipe the stream in, or give --input FILE");
  if (!input.empty() && (fd = ::open(input.c_str(), O_RDONLY | O_CLOEXEC)) < 0)
    imported(errno == ENOENT ? NC_E_NOT_FOUND : NC_E_IO,
             fmt::format("cannot open --input {}: {}", input, std::strerror(errno)));
  char* newest = nullptr;
  if (imported.ok()) imported(chain ? nc_import_chain(fd, dir.c_str(), nullptr, &newest) : nc_import(fd, dir.c_str(), nullptr));
  if (!input.empty() && fd >= 0) ::close(fd);
  if (imported.ok()) {
    const std::string checkpoint = chain ? std::string(newest) : dir;
    if (chain) r.field("store", dir, "store");
    r.field("dir", checkpoint, chain ? "newest layer" : "checkpoint");
    r.field("signature", chain ? "valid, and its chain" : "valid");
    report_format(r, checkpoint);
  }
  nc_free(newest);
  return r.finish(imported);
}

// HOST:PORT ([V6ADDR]:PORT for IPv6) resolved to TCP addresses; for a listener (passive) HOST may
// be empty or *, for all addresses.
struct AddrInfoFree {
  void operator()(addrinfo* a) const { ::freeaddrinfo(a); }
};
using AddrInfo = std::unique_ptr<addrinfo, AddrInfoFree>;

AddrInfo resolve(const std::string& host_port, bool passive, Outcome& outcome) {
  const auto colon = host_port.rfind(':');
  std::string host = colon == std::string::npos ? "" : host_port.substr(0, colon);
  const std::string port = colon == std::string::npos ? "" : host_port.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host == "*") host.clear();
  unsigned port_number = 0;
  const auto [end, error] = std::from_chars(port.data(), port.data() + port.size(), port_number);
  if (port.empty() || error != std::errc() || end != port.data() + port.size() || port_number == 0 ||
      port_number > 65535 || (host.empty() && !passive)) {
    outcome(NC_E_INVALID, fmt::format("'{}' is not HOST:PORT (a port from 1 to 65535; [ADDRESS]:PORT for IPv6)",
                                      host_port));
    return nullptr;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found); rc != 0)
    outcome(NC_E_NOT_FOUND, fmt::format("cannot resolve '{}': {}", host_port, ::gai_strerror(rc)));
  return AddrInfo(found);
}

// A TCP connection to HOST:PORT, made within `timeout_s`; -1 (and the outcome) if none could be.
int connect_to(const std::string& host_port, int timeout_s, Outcome& outcome) {
  const AddrInfo addresses = resolve(host_port, false, outcome);
  int last_error = 0;
  for (const addrinfo* a = addresses.get(); a; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const timeval limit{timeout_s, 0}, none{0, 0};  // Linux's connect waits at most SO_SNDTIMEO
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none);
      return fd;
    }
    last_error = errno == EINPROGRESS ? ETIMEDOUT : errno;
    ::close(fd);
  }
  if (addresses)
    outcome(NC_E_IO, fmt::format("cannot connect to the receiver at {}: {} (is `nucleus-checkpoint receive --listen "
                                 "{}` running there?); nothing was dumped",
                                 host_port, std::strerror(last_error), host_port));
  return -1;
}

// A socket listening on HOST:PORT for one connection; -1 (and the outcome) if it cannot.
int listen_on(const std::string& host_port, Outcome& outcome) {
  const AddrInfo addresses = resolve(host_port, true, outcome);
  int last_error = 0;
  for (const addrinfo* a = addresses.get(); a; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 1) == 0) return fd;
    last_error = errno;
    ::close(fd);
  }
  if (addresses)
    outcome(last_error == EACCES ? NC_E_PERMISSION : NC_E_IO,
            fmt::format("cannot listen on --listen {}: {}", host_port, std::strerror(last_error)));
  return -1;
}

// The numbers of a JSON line, by name; 0 for one that is missing.
std::int64_t json_number(const rapidjson::Document& doc, const char* name) {
  const auto it = doc.IsObject() ? doc.FindMember(name) : doc.MemberEnd();
  return doc.IsObject() && it != doc.MemberEnd() && it->value.IsInt64() ? it->value.GetInt64() : 0;
}

// Moves the tree at --pid to the receiver at --to: dumped into --dir (kept), stopped until the
// receiver confirms it runs there, then ended; resumed on a failure, left stopped if the receiver,
// told to run it, does not confirm (NC_E_UNCONFIRMED).
int cmd_migrate(const std::string& criu, pid_t pid, const std::string& to, const std::string& dir,
                const std::string& id, bool zstd, bool post_copy, double reply_timeout_s,
                const std::string& receiver_key_file, const CriuFlags& flags, bool json) {
  const unsigned long long start_ticks = start_ticks_of(pid);
  Report r(json);
  Runtime rt;
  Options opts;
  Outcome migrated = open_runtime_with(criu, flags, false, rt, opts);
  if (migrated.ok() && start_ticks != 0) migrated(nc_options_set_start_ticks(opts.get(), start_ticks));
  if (migrated.ok()) migrated(nc_options_set_compression(opts.get(), zstd ? NC_COMPRESSION_ZSTD : NC_COMPRESSION_NONE));
  if (migrated.ok())
    migrated(nc_options_set_reply_timeout_ms(opts.get(), static_cast<unsigned>(reply_timeout_s * 1000)));
  if (migrated.ok()) migrated(nc_options_set_post_copy(opts.get(), post_copy ? 1 : 0));
  if (migrated.ok() && !receiver_key_file.empty()) {
    std::string text;
    migrated = read_bounded(receiver_key_file, 4096, text, "the most a public key file may be");
    if (migrated.ok()) migrated(nc_options_set_receiver_key(opts.get(), text.c_str()));
  }
  // Connected before anything is dumped: without a receiver the tree is never stopped.
  const int fd = migrated.ok() ? connect_to(to, 10, migrated) : -1;
  nc_migration_report report{};
  report.size = sizeof report;
  const std::string container_id = id.empty() ? std::to_string(pid) : id;
  if (migrated.ok()) migrated(nc_migrate(rt.get(), container_id.c_str(), pid, dir.c_str(), fd, opts.get(), &report));
  if (fd >= 0) ::close(fd);
  if (!migrated.ok()) return r.finish(migrated);
  r.field("pid", pid, "process");
  r.field("to", to, "receiver");
  r.field("dir", dir, "checkpoint here");
  r.field("restored_pid", report.restored_pid, "PID there");
  r.field("restored_dir", report.restored_dir, "checkpoint there");
  r.field("downtime_ms", static_cast<std::int64_t>(report.downtime_ms), "downtime (ms)");
  r.field("dump_ms", static_cast<std::int64_t>(report.dump_ms), "dump (ms)");
  r.field("transfer_ms", static_cast<std::int64_t>(report.transfer_ms), "transfer (ms)");
  r.field("restore_ms", static_cast<std::int64_t>(report.restore_ms), "restore (ms)");
  r.field("bytes_sent", static_cast<std::int64_t>(report.bytes_sent), "bytes sent");
  r.field("compression", zstd ? "zstd" : "none");
  r.field("rounds", report.rounds, "pre-dump rounds");
  r.field("rounds_reason", report.rounds_reason, "because");
  if (report.receiver_key_id[0] != '\0') r.field("receiver_key_id", report.receiver_key_id, "answers proven by key");
  r.flag("post_copy", post_copy, "post-copy");
  if (post_copy) {
    r.field("post_copy_ms", static_cast<std::int64_t>(report.post_copy_ms), "memory followed in (ms)");
    r.field("pages_sent", static_cast<std::int64_t>(report.pages_sent), "pages sent after");
  }
  return r.finish(migrated);
}

// Accepts one connection on --listen, imports the stream it carries into a new folder under --dir,
// restores it and replies with the outcome; then exits.
// One migration over the connection fd, accepted from peer (closed here): its report, and its
// exit code.
int receive_one(nc_runtime* rt, nc_options* opts, int fd, const sockaddr_storage& peer, socklen_t peer_size,
                const std::string& store, bool json) {
  Report r(json);
  Outcome received;
  char host[NI_MAXHOST] = "", port[NI_MAXSERV] = "";
  ::getnameinfo(reinterpret_cast<const sockaddr*>(&peer), peer_size, host, sizeof host, port, sizeof port,
                NI_NUMERICHOST | NI_NUMERICSERV);
  pid_t restored = 0;
  char* reply = nullptr;
  int source_told = 0;
  received(nc_receive_ex(rt, fd, store.c_str(), opts, &restored, &reply, &source_told));
  ::close(fd);
  const std::string source = fmt::format("{}:{}", host, port);
  r.field("from", source, "source");
  if (received.ok()) {
    rapidjson::Document parsed;
    parsed.Parse(reply);
    const rapidjson::Document& doc = parsed;  // const iterators: clang finds != ambiguous on mutable ones
    const auto dir = doc.IsObject() ? doc.FindMember("dir") : doc.MemberEnd();
    r.field("dir", doc.IsObject() && dir != doc.MemberEnd() && dir->value.IsString() ? dir->value.GetString() : "",
            "checkpoint");
    r.field("pid", restored, "restored PID");
    r.field("import_ms", json_number(doc, "import_ms"), "import (ms)");
    r.field("restore_ms", json_number(doc, "restore_ms"), "restore (ms)");
    r.flag("source_told", source_told != 0, "source told");
  }
  nc_free(reply);
  const int code = r.finish(received);
  // A success all the same (the tree runs here), but the source's copy waits for someone to end it.
  if (received.ok() && source_told == 0)
    fmt::print(stderr,
               "nucleus-checkpoint: the tree runs here as PID {}, but the source at {} was not told: the "
               "connection closed before the last answer. Its copy stays stopped there (its migrate failed with "
               "NC_E_UNCONFIRMED, naming the root PID): kill that copy there, this one runs.\n",
               restored, source);
  return code;
}

// Accepts `count` connections (0: until stopped) on --listen, one at a time: each migration is
// imported into a new folder under --dir, restored, and reported (one JSON object per line with
// --json). The exit code is the first failed migration's status; a failed accept ends the run.
int cmd_receive(const std::string& criu, const std::string& listen, const std::string& store, double stream_timeout_s,
                unsigned count, const CriuFlags& flags, bool json) {
  Runtime rt;
  Options opts;
  Outcome ready = open_runtime_with(criu, flags, false, rt, opts);
  if (ready.ok()) ready(nc_options_set_reply_timeout_ms(opts.get(), static_cast<unsigned>(stream_timeout_s * 1000)));
  struct stat st {};
  if (ready.ok() && (::stat(store.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)))
    ready(NC_E_NOT_FOUND, fmt::format("--dir {} is not a folder: create the store first", store));
  const int listener = ready.ok() ? listen_on(listen, ready) : -1;
  if (!ready.ok()) return Report(json).finish(ready);
  fmt::print(stderr, "nucleus-checkpoint: listening on {}\n", printable(listen));
  std::fflush(stderr);
  int first_failure = 0;
  for (unsigned served = 0; count == 0 || served < count; ++served) {
    sockaddr_storage peer{};
    socklen_t peer_size = sizeof peer;
    int fd = -1;
    while ((fd = ::accept4(listener, reinterpret_cast<sockaddr*>(&peer), &peer_size, SOCK_CLOEXEC)) < 0 &&
           errno == EINTR) {
    }
    Outcome accepted;
    if (fd < 0) accepted(NC_E_IO, fmt::format("cannot accept a connection on {}: {}", listen, std::strerror(errno)));
    const int code = fd >= 0 ? receive_one(rt.get(), opts.get(), fd, peer, peer_size, store, json)
                             : Report(json).finish(accepted);
    if (first_failure == 0) first_failure = code;
    if (fd < 0) break;
  }
  ::close(listener);
  return first_failure;
}

// Registry options for push and pull: plain http with --insecure.
nc_status registry_options(bool insecure, Options& opts) {
  nc_options* raw = nullptr;
  nc_status s = nc_options_new(&raw);
  opts.reset(raw);
  if (s == NC_OK) s = nc_options_set_insecure_registry(raw, insecure ? 1 : 0);
  return s;
}

// Publishes --dir as the image REF; prints the manifest's digest, by which REPO@DIGEST pulls it.
int cmd_push(const std::string& dir, const std::string& reference, bool insecure, bool json) {
  Report r(json);
  Outcome pushed;
  Options opts;
  char* digest = nullptr;
  pushed(registry_options(insecure, opts));
  if (pushed.ok()) pushed(nc_push_image(dir.c_str(), reference.c_str(), opts.get(), &digest));
  if (pushed.ok()) {
    r.field("dir", dir, "checkpoint");
    r.field("image", reference);
    r.field("digest", digest);
  }
  nc_free(digest);
  return r.finish(pushed);
}

// Pulls the image REF into the new checkpoint folder --dir, verified.
int cmd_pull(const std::string& reference, const std::string& dir, bool insecure, bool json) {
  Report r(json);
  Outcome pulled;
  Options opts;
  pulled(registry_options(insecure, opts));
  if (pulled.ok()) pulled(nc_pull_image(reference.c_str(), dir.c_str(), opts.get()));
  if (pulled.ok()) {
    r.field("image", reference);
    r.field("dir", dir, "checkpoint");
    r.field("signature", "valid");
    report_format(r, dir);
  }
  return r.finish(pulled);
}

int cmd_keygen(bool json) {
  Report r(json);
  int created = 0;
  Outcome made;
  made(nc_keygen(&created));
  char key_path[4096];
  if (made.ok() && nc_key_path(key_path, sizeof key_path) == NC_OK) {
    r.field("key_path", key_path, "key file");
    r.flag("created", created != 0, "created now");
  }
  return r.finish(made);
}

// keygen --ed25519: the Ed25519 key (created if there is none, trusted here), its id, and its public
// key file written to public_key_out (created 0644) for the hosts that are to verify.
int cmd_keygen_ed25519(const std::string& public_key_out, bool json) {
  Report r(json);
  int created = 0;
  Outcome made;
  made(nc_keygen_ed25519(&created));
  char* text = nullptr;
  char* key_id = nullptr;
  if (made.ok()) made(nc_public_key(&text, &key_id));
  if (made.ok() && !public_key_out.empty()) {
    const int fd = ::open(public_key_out.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    const std::string_view bytes = text;
    if (fd < 0 || ::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()) || ::fsync(fd) != 0)
      made(errno == EEXIST ? NC_E_INVALID : NC_E_IO,
           fmt::format("cannot write --public-key-out {}: {}{}", public_key_out, std::strerror(errno),
                       errno == EEXIST ? " (give a new name, or remove it first)" : ""));
    if (fd >= 0) ::close(fd);
  }
  if (made.ok()) {
    r.field("key_id", key_id, "key id");
    if (!public_key_out.empty()) r.field("public_key_file", public_key_out, "public key file");
    r.flag("created", created != 0, "created now");
  }
  nc_free(text);
  nc_free(key_id);
  return r.finish(made);
}

// trust add FILE: FILE's public key into this host's trust folder.
int cmd_trust_add(const std::string& file, bool json) {
  Report r(json);
  std::string text;
  Outcome trusted = read_bounded(file, 4096, text, "the most a public key file may be");
  if (trusted.ok()) trusted(nc_trust_key(text.c_str()));
  if (trusted.ok()) r.field("trusted", file, "trusted key file");
  return r.finish(trusted);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Checkpoint and restore process trees through CRIU; every checkpoint signed (HMAC-SHA256 or Ed25519).\n"
               "Exit code: 0, the failure's nc_status (1-10), or 64 for a usage error (restore --wait: the "
               "restored root's).",
               "nucleus-checkpoint"};
  app.require_subcommand(1);
  bool json = false;
  std::string criu, dir, id;
  pid_t pid = 0;
  bool leave_running = false;
  CriuFlags flags;
  app.add_flag("--json", json, "Print one JSON object for scripts");

  auto* check = app.add_subcommand("check", "Is this machine ready? CRIU found, its version, criu check, the key, the "
                                            "tools CRIU runs for containers");
  check->add_option("--criu", criu, "CRIU binary to use instead of the trusted paths");

  auto* dump = app.add_subcommand("dump", "Checkpoint the process tree rooted at --pid into --dir, signed");
  dump->add_option("--pid", pid, "Root of the tree")->required()->check(CLI::PositiveNumber);
  dump->add_option("--dir", dir, "Checkpoint folder to create")->required();
  dump->add_option("--id", id, "Container id recorded in metadata.json (default: the PID)");
  dump->add_flag("--leave-running", leave_running, "Keep the tree running after the dump");
  dump->add_option("--criu", criu, "CRIU binary to use instead of the trusted paths");
  nc_signature_format dump_format = NC_SIGNATURE_MANIFEST;
  dump->add_option("--signature-format", dump_format,
                   "Signature format (default manifest; chunked: without chunk digests; seed: nucleus-container's)")
      ->transform(CLI::CheckedTransformer(signature_formats));
  flags.add_to(dump, dump_action);

  auto* predump = app.add_subcommand("predump", "Save the memory of the tree rooted at --pid into --dir, signed, while "
                                                "it runs on: a parent for a later predump or dump (--parent)");
  predump->add_option("--pid", pid, "Root of the tree")->required()->check(CLI::PositiveNumber);
  predump->add_option("--dir", dir, "Checkpoint folder to create")->required();
  predump->add_option("--id", id, "Container id recorded in metadata.json (default: the PID)");
  predump->add_option("--criu", criu, "CRIU binary to use instead of the trusted paths");
  predump->add_option("--signature-format", dump_format, "Signature format (default manifest; chunked: without chunk digests)")
      ->transform(CLI::CheckedTransformer(signature_formats));
  flags.add_to(predump, dump_action);

  auto* restore = app.add_subcommand("restore", "Verify --dir and restore its tree; prints the restored PID");
  restore->add_option("--dir", dir, "Checkpoint folder")->required();
  restore->add_option("--criu", criu, "CRIU binary to use instead of the trusted paths");
  flags.add_to(restore, restore_action);

  auto* sign = app.add_subcommand("sign", "Write --dir/checkpoint.hmac with this machine's key");
  sign->add_option("--dir", dir, "Checkpoint folder")->required();
  nc_signature_format sign_format = NC_SIGNATURE_SEED;
  auto* sign_format_option =
      sign->add_option("--format", sign_format,
                       "Signature format (default seed, as nc_sign, or manifest with --ed25519; chunked: parallel; "
                       "manifest: also checkable by chunk)")
          ->transform(CLI::CheckedTransformer(signature_formats));
  bool sign_ed25519 = false;
  sign->add_flag("--ed25519", sign_ed25519, "Sign with this machine's Ed25519 key instead of the HMAC key");
  auto* verify = app.add_subcommand("verify", "Check --dir against its checkpoint.hmac");
  verify->add_option("--dir", dir, "Checkpoint folder")->required();
  auto* inspect = app.add_subcommand("inspect", "Show a checkpoint's metadata, size and signature state");
  inspect->add_option("--dir", dir, "Checkpoint folder")->required();
  auto* export_cmd = app.add_subcommand("export", "Write --dir (signed in the manifest format) as one transfer "
                                                   "stream to --output or stdout");
  export_cmd->add_option("--dir", dir, "Checkpoint folder")->required();
  bool export_zstd = false;
  export_cmd->add_flag("--zstd", export_zstd, "Compress the stream with zstd (level 1)");
  std::string stream_file;
  export_cmd->add_option("--output", stream_file, "File to create (0600) for the stream (default: stdout)");
  bool export_chain = false;
  export_cmd->add_flag("--chain", export_chain,
                       "--dir is a pre-dump chain's layer: write it with all its parents, oldest first");
  std::vector<std::string> receiver_has;
  export_cmd->add_option("--have", receiver_has,
                         "With --chain: the receiver holds the layer whose checkpoint.hmac has this SHA-256 (64 hex "
                         "digits, as sha256sum shows it); named, not sent. Repeatable")
      ->needs(export_cmd->get_option("--chain"));
  auto* import_cmd = app.add_subcommand("import", "Read a transfer stream from --input or stdin into the new "
                                                  "checkpoint folder --dir, verifying every chunk as it arrives");
  import_cmd->add_option("--dir", dir, "Checkpoint folder to create")->required();
  import_cmd->add_option("--input", stream_file, "File holding the stream (default: stdin)");
  bool import_chain = false;
  import_cmd->add_flag("--chain", import_chain,
                       "The stream is a pre-dump chain (export --chain): --dir is the store folder its layers go in, "
                       "each beside its parent");
  std::string image_ref;
  bool insecure = false;
  auto* push = app.add_subcommand("push", "Publish --dir (verified first) as the OCI image REF in a registry");
  push->add_option("--dir", dir, "Checkpoint folder")->required();
  push->add_option("REF", image_ref, "Image reference: HOST[:PORT]/NAME[:TAG]")->required();
  push->add_flag("--insecure", insecure, "Speak plain http to the registry (skopeo's --tls-verify=false)");
  auto* pull = app.add_subcommand("pull", "Pull the OCI image REF into the new checkpoint folder --dir, verified "
                                          "before it is renamed into place");
  pull->add_option("REF", image_ref, "Image reference: HOST[:PORT]/NAME[:TAG] or HOST[:PORT]/NAME@sha256:HEX")
      ->required();
  pull->add_option("--dir", dir, "Checkpoint folder to create")->required();
  pull->add_flag("--insecure", insecure, "Speak plain http to the registry (skopeo's --tls-verify=false)");
  auto* keygen = app.add_subcommand("keygen", "Create this machine's checkpoint key if there is none, and show where it is");
  bool keygen_ed25519 = false;
  std::string public_key_out;
  keygen->add_flag("--ed25519", keygen_ed25519, "The Ed25519 signing key instead (trusted on this machine at once)");
  keygen->add_option("--public-key-out", public_key_out,
                     "With --ed25519: write its public key file here (new, 0644), for other machines' trust add");
  auto* migrate = app.add_subcommand("migrate", "Move the tree at --pid to the receiver at --to: dumped into --dir, "
                                                "stopped until it runs there, then ended here (resumed on a "
                                                "failure; left stopped if the receiver cannot confirm)");
  migrate->add_option("--pid", pid, "Root of the tree")->required()->check(CLI::PositiveNumber);
  std::string peer;
  migrate->add_option("--to", peer, "The receiver: HOST:PORT ([ADDRESS]:PORT for IPv6)")->required();
  migrate->add_option("--dir", dir, "Checkpoint folder to create here (kept)")->required();
  migrate->add_option("--id", id, "Container id recorded in metadata.json (default: the PID)");
  migrate->add_option("--criu", criu, "CRIU binary to use instead of the trusted paths");
  bool migrate_zstd = false;
  migrate->add_flag("--zstd", migrate_zstd, "Compress the stream with zstd (level 1)");
  bool post_copy = false;
  migrate->add_flag("--post-copy", post_copy,
                    "Send the tree's private memory after it runs on the receiver (downtime no longer grows with "
                    "memory; needs fs.pipe-max-size >= 4194304; a failure before every page is in kills the "
                    "receiver's copy and leaves this one stopped)");
  std::string receiver_key_file;
  migrate->add_option("--receiver-key", receiver_key_file,
                      "With --sign ed25519: the receiver's public key file (keygen --ed25519 --public-key-out there); "
                      "its answers must be proven by that key, trusted here or not (default: any key trusted here)");
  double reply_timeout_s = 300;
  migrate->add_option("--reply-timeout", reply_timeout_s,
                      "Seconds each answer of the receiver may take: its import and restore, then "
                      "its confirmation (and the stream may stall)")
      ->check(CLI::Range(1.0, 86400.0));
  flags.add_to(migrate, dump_action);
  auto* receive = app.add_subcommand("receive", "Accept one migration on --listen: import it into a new folder "
                                                "under --dir (verified), restore it, run it once the source commits; "
                                                "then exit (or take the next, --count)");
  receive->add_option("--listen", peer, "Where to listen: HOST:PORT (*:PORT for every address)")->required();
  receive->add_option("--dir", dir, "The store: each migration is imported into a new folder in it")->required();
  receive->add_option("--criu", criu, "CRIU binary to use instead of the trusted paths");
  double stream_timeout_s = 300;
  receive->add_option("--stream-timeout", stream_timeout_s,
                      "Seconds the source may take to start its stream (its dump) and may stall it")
      ->check(CLI::Range(1.0, 86400.0));
  unsigned receive_count = 1;
  receive->add_option("--count", receive_count,
                      "Migrations to take, one after another, before exiting (0: until stopped); default 1");
  flags.add_to(receive, restore_action);
  auto* trust = app.add_subcommand("trust", "Manage the public keys whose Ed25519 signatures verify on this machine");
  auto* trust_add = trust->add_subcommand("add", "Trust the public key in FILE (as keygen --public-key-out writes it)");
  std::string trust_file;
  trust_add->add_option("FILE", trust_file, "Public key file")->required();
  trust->require_subcommand(1);

  for (auto* sub : app.get_subcommands({})) sub->fallthrough();  // --json may follow the subcommand
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : exit_usage;
  }

  if (*check) return cmd_check(criu, json);
  if (*dump || *predump) return cmd_dump(criu, pid, dir, id, leave_running, flags, dump_format, predump->parsed(), json);
  if (*restore) return cmd_restore(criu, dir, flags, json);
  if (*sign) {
    // The seed format is HMAC-only: Ed25519 signs in the manifest format unless told otherwise.
    if (sign_ed25519 && sign_format_option->count() == 0) sign_format = NC_SIGNATURE_MANIFEST;
    return cmd_hash(sign_format, dir, json, sign_ed25519 ? NC_SIGNING_ED25519 : NC_SIGNING_HMAC);
  }
  if (*verify) return cmd_hash(std::nullopt, dir, json);
  if (*inspect) return cmd_inspect(dir, json);
  if (*export_cmd) return cmd_export(dir, export_zstd, stream_file, export_chain, receiver_has, json);
  if (*import_cmd) return cmd_import(dir, stream_file, import_chain, json);
  if (*migrate) return cmd_migrate(criu, pid, peer, dir, id, migrate_zstd, post_copy, reply_timeout_s, receiver_key_file, flags,
                                     json);
  if (*receive) return cmd_receive(criu, peer, dir, stream_timeout_s, receive_count, flags, json);
  if (*push) return cmd_push(dir, image_ref, insecure, json);
  if (*pull) return cmd_pull(image_ref, dir, insecure, json);
  if (*trust_add) return cmd_trust_add(trust_file, json);
  return keygen_ed25519 ? cmd_keygen_ed25519(public_key_out, json) : cmd_keygen(json);
}
