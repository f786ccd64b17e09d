// CriuOptions as CRIU 4.2.1's command lines: every option reaches the dump and/or restore argv
// exactly as CRIU spells it, only for the action it applies to; bad values are refused, naming
// the option, before anything runs.
#include <functional>
#include <string>
#include <vector>

#include "criu/criu_args.hpp"
#include "test_support.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

using Argv = std::vector<std::string>;

Argv dump_argv(const CriuOptions& o) { return criu_dump_args(42, "/proc/self/fd/3", "/proc/self/fd/4", o); }
Argv restore_argv(const CriuOptions& o, const std::vector<InheritedFd>& inherited = {}) {
  return criu_restore_args("/proc/self/fd/3", "/proc/self/fd/4", o, inherited);
}

// How often `part` appears in argv as consecutive arguments.
int occurrences(const Argv& argv, const Argv& part) {
  int n = 0;
  for (std::size_t i = 0; i + part.size() <= argv.size(); ++i)
    if (std::equal(part.begin(), part.end(), argv.begin() + static_cast<std::ptrdiff_t>(i))) ++n;
  return n;
}

// What an option must add, and where.
struct Case {
  const char* name;
  std::function<void(CriuOptions&)> set;
  Argv args;
  bool at_dump, at_restore;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> all{
      {"tcp_established", [](CriuOptions& o) { o.tcp_established = true; }, {"--tcp-established"}, true, true},
      {"tcp_close", [](CriuOptions& o) { o.tcp_close = true; }, {"--tcp-close"}, true, true},
      {"ext_unix_sk", [](CriuOptions& o) { o.ext_unix_sk = true; }, {"--ext-unix-sk"}, true, true},
      {"file_locks", [](CriuOptions& o) { o.file_locks = true; }, {"--file-locks"}, true, true},
      {"manage_cgroups", [](CriuOptions& o) { o.manage_cgroups = CgroupMode::strict; }, {"--manage-cgroups=strict"},
       true, true},
      {"external", [](CriuOptions& o) { o.external = {"mnt[/data]:data"}; }, {"--external", "mnt[/data]:data"}, true,
       true},
      {"log_level", [](CriuOptions& o) { o.log_level = 2; }, {"-v2"}, true, true},
      {"leave_running", [](CriuOptions& o) { o.leave_running = true; }, {"--leave-running"}, true, false},
      {"restore_mode", [](CriuOptions& o) { o.restore_mode = RestoreMode::child; }, {"--restore-sibling"}, false, true},
      {"root", [](CriuOptions& o) { o.root = "/var/lib/c/rootfs"; }, {"--root", "/var/lib/c/rootfs"}, false, true},
      {"join_ns", [](CriuOptions& o) { o.join_ns = {"net:/run/netns/pod", "user:1234,0,0"}; },
       {"--join-ns", "net:/run/netns/pod", "--join-ns", "user:1234,0,0"}, false, true},
      {"empty_ns", [](CriuOptions& o) { o.empty_ns = {"net"}; }, {"--empty-ns", "net"}, false, true},
      {"network_lock", [](CriuOptions& o) { o.network_lock = NetworkLock::nftables; }, {"--network-lock", "nftables"},
       true, false},
      {"network_lock skip", [](CriuOptions& o) { o.network_lock = NetworkLock::skip; }, {"--network-lock", "skip"}, true,
       false},
      {"cgroup_root", [](CriuOptions& o) { o.cgroup_root = {"/pods/c", "memory:/pods/m", ":/pods/v2"}; },
       {"--cgroup-root", "/pods/c", "--cgroup-root", "memory:/pods/m", "--cgroup-root", ":/pods/v2"}, true, true},
      {"cgroup_yard", [](CriuOptions& o) { o.cgroup_yard = "/run/yard"; }, {"--cgroup-yard", "/run/yard"}, true, true},
      {"cgroup_props", [](CriuOptions& o) { o.cgroup_props = "\"cpu\":\n  \"strategy\": \"replace\"\n"; },
       {"--cgroup-props", "\"cpu\":\n  \"strategy\": \"replace\"\n"}, true, false},
      {"freeze_cgroup", [](CriuOptions& o) { o.freeze_cgroup = "/sys/fs/cgroup/pods/c"; },
       {"--freeze-cgroup", "/sys/fs/cgroup/pods/c"}, true, false},
      {"lsm_profile", [](CriuOptions& o) { o.lsm_profile = "apparmor:container-default"; },
       {"--lsm-profile", "apparmor:container-default"}, false, true},
      {"lsm_mount_context", [](CriuOptions& o) { o.lsm_mount_context = "system_u:object_r:container_file_t:s0:c1,c2"; },
       {"--lsm-mount-context", "system_u:object_r:container_file_t:s0:c1,c2"}, false, true},
      {"skip_in_flight", [](CriuOptions& o) { o.skip_in_flight = true; }, {"--skip-in-flight"}, true, false},
      {"link_remap", [](CriuOptions& o) { o.link_remap = true; }, {"--link-remap"}, true, false},
      {"ghost_limit", [](CriuOptions& o) { o.ghost_limit = 5u << 20; }, {"--ghost-limit", "5242880"}, true, false},
      {"ghost_fiemap", [](CriuOptions& o) { o.ghost_fiemap = true; }, {"--ghost-fiemap"}, true, false},
      {"evasive_devices", [](CriuOptions& o) { o.evasive_devices = true; }, {"--evasive-devices"}, true, true},
      {"file_validation", [](CriuOptions& o) { o.file_validation = "filesize"; }, {"--file-validation", "filesize"},
       true, true},
      {"parent", [](CriuOptions& o) { o.parent = "/var/lib/ckpt/web.0"; },
       {"--track-mem", "--prev-images-dir", "../../web.0/images"}, true, false},
      {"auto_dedup", [](CriuOptions& o) { o.auto_dedup = true; }, {"--auto-dedup"}, true, false},
  };
  return all;
}

}  // namespace

TEST_CASE("the default command lines", "[criu_args]") {
  const CriuOptions defaults;
  CHECK(dump_argv(defaults) == Argv{"dump", "--no-default-config", "-v4", "--leave-stopped", "--shell-job", "--tree",
                                    "42", "--images-dir", "/proc/self/fd/3", "--work-dir", "/proc/self/fd/4",
                                    "--log-file", "dump.log"});
  CHECK(restore_argv(defaults) == Argv{"restore", "--no-default-config", "-v4", "--shell-job", "--pidfile",
                                       "restore.pid", "--restore-detached", "--images-dir", "/proc/self/fd/3",
                                       "--work-dir", "/proc/self/fd/4", "--log-file", "restore.log"});
}

TEST_CASE("each option reaches exactly the actions it applies to", "[criu_args]") {
  const CriuOptions defaults;
  const Argv plain_dump = dump_argv(defaults), plain_restore = restore_argv(defaults);
  for (const auto& c : cases()) {
    INFO(c.name);
    CriuOptions o;
    c.set(o);
    const Argv dump = dump_argv(o), restore = restore_argv(o);
    CHECK(occurrences(dump, c.args) == (c.at_dump ? 1 : 0));
    CHECK(occurrences(restore, c.args) == (c.at_restore ? 1 : 0));
    // Nothing else changes: the option adds its arguments and no others.
    if (!c.at_dump) CHECK(dump == plain_dump);
    if (!c.at_restore) CHECK(restore == plain_restore);
    if (c.at_dump && c.name != std::string("log_level") && c.name != std::string("leave_running"))
      CHECK(dump.size() == plain_dump.size() + c.args.size());
    if (c.at_restore && c.name != std::string("log_level"))
      CHECK(restore.size() == plain_restore.size() + c.args.size());
  }
}

TEST_CASE("all options at once", "[criu_args]") {
  CriuOptions o;
  for (const auto& c : cases()) c.set(o);
  const Argv dump = dump_argv(o), restore = restore_argv(o);
  for (const auto& c : cases()) {
    INFO(c.name);
    if (c.name == std::string("network_lock")) continue;  // overridden by "network_lock skip"
    CHECK(occurrences(dump, c.args) == (c.at_dump ? 1 : 0));
    CHECK(occurrences(restore, c.args) == (c.at_restore ? 1 : 0));
  }
  CHECK(occurrences(dump, {"--leave-stopped"}) == 0);
}

TEST_CASE("a pre-dump is CRIU's pre-dump with the dump's options, the tree left running", "[criu_args]") {
  CriuOptions o;
  o.parent = "web.0";
  const Argv argv = criu_predump_args(42, "/proc/self/fd/3", "/proc/self/fd/4", o);
  REQUIRE(!argv.empty());
  CHECK(argv.front() == "pre-dump");
  CHECK(occurrences(argv, {"--leave-running"}) == 1);
  CHECK(occurrences(argv, {"--leave-stopped"}) == 0);
  CHECK(occurrences(argv, {"--prev-images-dir", "../../web.0/images"}) == 1);
  CHECK(occurrences(argv, {"--tree", "42"}) == 1);
}

TEST_CASE("--no-default-config unless use_default_config", "[criu_args]") {
  CriuOptions o;
  CHECK(dump_argv(o).at(1) == "--no-default-config");
  CHECK(restore_argv(o).at(1) == "--no-default-config");
  o.use_default_config = true;
  CHECK(occurrences(dump_argv(o), {"--no-default-config"}) == 0);
  CHECK(occurrences(restore_argv(o), {"--no-default-config"}) == 0);
}

TEST_CASE("inherited descriptors come from the caller's resolution, not from the options", "[criu_args]") {
  CriuOptions o;
  o.inherit_fds = {{0, "stdin"}, {7, "pipe:[99]"}};  // the caller's numbers and keys: not CRIU's
  const Argv restore = restore_argv(o, {{3, "pipe:[12345]"}, {4, "socket:[678]"}});
  CHECK(occurrences(restore, {"--inherit-fd", "fd[3]:pipe:[12345]"}) == 1);
  CHECK(occurrences(restore, {"--inherit-fd", "fd[4]:socket:[678]"}) == 1);
  CHECK(occurrences(restore, {"--inherit-fd"}) == 2);
  CHECK(occurrences(dump_argv(o), {"--inherit-fd"}) == 0);
  CHECK(occurrences(restore_argv(o), {"--inherit-fd"}) == 0);

  const auto bad_fd = require_error([&] { restore_argv(CriuOptions(), {{-1, "pipe:[1]"}}); });
  CHECK(bad_fd.status() == Status::invalid);
  CHECK(contains(bad_fd.what(), "--inherit-fd"));
  CHECK(contains(require_error([&] { restore_argv(CriuOptions(), {{3, ""}}); }).what(), "--inherit-fd"));
  o.inherit_fds = {{-2, "stdout"}};
  CHECK(contains(require_error([&] { dump_argv(o); }).what(), "--inherit-fd"));
}

TEST_CASE("bad values are refused, naming the option, at dump, restore and alone", "[criu_args]") {
  struct Bad {
    std::function<void(CriuOptions&)> set;
    const char* option;
    const char* says;
  };
  const std::vector<Bad> bad{
      {[](CriuOptions& o) { o.external = {""}; }, "--external", "empty"},
      {[](CriuOptions& o) { o.external = {"--exec-cmd"}; }, "--external", "'-'"},
      {[](CriuOptions& o) { o.external = {"mnt[/a]:k\nx"}; }, "--external", "newline"},
      {[](CriuOptions& o) { o.external = {std::string("mnt[/a]:k\0x", 11)}; }, "--external", "NUL"},
      {[](CriuOptions& o) { o.external = {"mnt[/a--config=/tmp/evil]:k"}; }, "--external", "--config="},
      {[](CriuOptions& o) { o.root = "rootfs"; }, "--root", "absolute"},
      {[](CriuOptions& o) { o.root = "-/x"; }, "--root", "'-'"},
      {[](CriuOptions& o) { o.join_ns = {"pid:1234"}; }, "--join-ns", "net, uts, time, ipc, user, mnt"},
      {[](CriuOptions& o) { o.join_ns = {"net"}; }, "--join-ns", "NS:PID"},
      {[](CriuOptions& o) { o.join_ns = {"net:"}; }, "--join-ns", "PID or an absolute path"},
      {[](CriuOptions& o) { o.join_ns = {"net:run/netns/x"}; }, "--join-ns", "PID or an absolute path"},
      {[](CriuOptions& o) { o.join_ns = {"net:1234,0,0"}; }, "--join-ns", "only a user namespace"},
      {[](CriuOptions& o) { o.empty_ns = {"pid"}; }, "--empty-ns", "only net"},
      {[](CriuOptions& o) { o.network_lock = static_cast<NetworkLock>(4); }, "network lock", "4"},
      {[](CriuOptions& o) { o.manage_cgroups = static_cast<CgroupMode>(9); }, "cgroup mode", "9"},
      {[](CriuOptions& o) { o.restore_mode = static_cast<RestoreMode>(2); }, "restore mode", "2"},
      {[](CriuOptions& o) { o.log_level = 5; }, "log level", "0 to 4"},
      {[](CriuOptions& o) { o.cgroup_root = {"pods/c"}; }, "--cgroup-root", "CONTROLLER:/PATH"},
      {[](CriuOptions& o) { o.cgroup_root = {"/a:b"}; }, "--cgroup-root", "CONTROLLER:/PATH"},
      {[](CriuOptions& o) { o.cgroup_yard = "yard"; }, "--cgroup-yard", "absolute"},
      {[](CriuOptions& o) { o.cgroup_props = std::string("a:\0", 3); }, "--cgroup-props", "NUL"},
      {[](CriuOptions& o) { o.freeze_cgroup = "\n"; }, "--freeze-cgroup", "newline"},
      {[](CriuOptions& o) { o.lsm_profile = "container-default"; }, "--lsm-profile", "apparmor:NAME"},
      {[](CriuOptions& o) { o.lsm_profile = "smack:x"; }, "--lsm-profile", "apparmor:NAME"},
      {[](CriuOptions& o) { o.lsm_profile = "selinux:"; }, "--lsm-profile", "apparmor:NAME"},
      {[](CriuOptions& o) { o.lsm_mount_context = "-x"; }, "--lsm-mount-context", "'-'"},
      {[](CriuOptions& o) { o.ghost_limit = ~0ull; }, "--ghost-limit", "largest"},
      {[](CriuOptions& o) { o.file_validation = "sha1"; }, "--file-validation", "filesize or buildid"},
  };
  for (const auto& b : bad) {
    CriuOptions o;
    b.set(o);
    INFO(b.option << " " << b.says);
    for (const auto& run : std::vector<std::function<void()>>{
             [&] { dump_argv(o); }, [&] { restore_argv(o); }, [&] { validate_criu_options(o); }}) {
      const Error e = require_error(run);
      CHECK(e.status() == Status::invalid);
      CHECK(contains(e.what(), b.option));
      CHECK(contains(e.what(), b.says));
    }
  }
}

TEST_CASE("accepted edge values", "[criu_args]") {
  CriuOptions o;
  o.join_ns = {"mnt:/proc/1/ns/mnt", "uts:1", "ipc:/run/ipc", "time:/proc/2/ns/time", "user:/proc/3/ns/user,1000,1000"};
  o.lsm_profile = "none:";
  o.ghost_limit = static_cast<std::uint64_t>(std::numeric_limits<long>::max());
  o.file_validation = "buildid";
  CHECK_NOTHROW(validate_criu_options(o));
  CHECK(occurrences(dump_argv(o), {"--ghost-limit", std::to_string(std::numeric_limits<long>::max())}) == 1);
  CHECK(occurrences(restore_argv(o), {"--lsm-profile", "none:"}) == 1);
  CHECK(require_error([] { criu_dump_args(0, "/a", "/b", CriuOptions()); }).status() == Status::invalid);
}
