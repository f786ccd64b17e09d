// What the library makes of CRIU's failures: each known one explained in the caller's terms (the
// mount, the descriptor, the option or package), CRIU's noise left out.
#include <fcntl.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "criu/criu_log.hpp"
#include "fs/unique_fd.hpp"
#include "test_support.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

TEST_CASE("CRIU's known failures are explained with what fixes them", "[criu_log]") {
  struct Known {
    const char* line;
    std::vector<const char*> hint;
  };
  const Known known[] = {
      {"(00.1) Error (criu/mount.c:753): mnt: 85:./data doesn't have a proper root mount",
       {"mount /data", "external mnt[/data]:KEY"}},
      {"(00.1) Error (criu/util.c:640): execvp(\"iptables-restore\", ...) failed: No such file or directory",
       {"iptables-restore", "install iptables", "network-lock"}},
      {"(00.1) Error (criu/util.c:640): execvp(\"ip\", ...) failed", {"install iproute2"}},
      {"(00.1) Error (criu/files-reg.c:1790): Can't lookup mount=27 for fd=1 path=/tmp/out.log",
       {"descriptor 1", "mount 27"}},
      {"(00.1) 1: Error (criu/net.c:2942): net: Unable to find an external netns: testpod", {"inherit-fd fd[N]:KEY"}},
      {"(00.1) Error (criu/sockets.c:1): sockets: Can't get 1:16 opt: Operation not supported", {"CRIU 4.2.1"}},
      {"(00.1) Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using --tcp-established option.",
       {"tcp-established"}},
      {"(00.1) Error (criu/sk-inet.c:912): inet: Connected TCP socket in image", {"restore with tcp-established"}},
      {"(00.1) 2: Error (criu/cgroup.c:1373): cg: No set 1 found", {"cgroup of its own", "manage-cgroups ignore"}},
      {"(00.1) Error (criu/cr-dump.c:1528): A session leader of 5(1) is outside of its pid namespace", {"setsid"}},
      {"(00.1) 1: Error (criu/mount.c:48): mnt: BUG at criu/mount.c:48", {"rootfs", "--root"}},
  };
  for (const auto& k : known) {
    INFO(k.line);
    const std::string hint = criu_hint(k.line);
    for (const char* part : k.hint) CHECK(contains(hint, part));
  }
  CHECK(criu_hint("(00.1) Error (criu/x.c:1): something new").empty());
}

TEST_CASE("CRIU's cgroupd noise after a failed restore is left out of the message", "[criu_log]") {
  TempDir tmp;
  const UniqueFd dir(::open(tmp.path().c_str(), O_RDONLY | O_DIRECTORY));
  write_file(tmp / "restore.log",
             "(00.1) Error (criu/cgroup.c:2055): cg: cgroupd: recv req error: No such file or directory\n"
             "(00.2) Error (criu/cr-restore.c:2331): Restoring FAILED.\n");
  const std::string errors = criu_errors(dir.get(), "restore.log", "");
  CHECK_FALSE(contains(errors, "cgroupd"));
  CHECK(contains(errors, "Restoring FAILED"));
}

TEST_CASE("CRIU's own lines come back out of criu_errors' text, one each", "[criu_log]") {
  TempDir tmp;
  const UniqueFd dir(::open(tmp.path().c_str(), O_RDONLY | O_DIRECTORY));
  write_file(tmp / "dump.log",
             "(00.1) Info: fine\n"
             "(00.2) Error (criu/sk-unix.c:874): unix: External socket is used. Consider using --ext-unix-sk option.\n"
             "(00.3) Error (criu/vdso.c:1): vdso: Can't find rt vDSO\n"
             "(00.4) Error (criu/cr-dump.c:1975): Dumping FAILED.\n");
  const std::vector<std::string> lines = criu_error_lines(criu_errors(dir.get(), "dump.log", "console"));
  CHECK(lines == std::vector<std::string>{
                     "(00.2) Error (criu/sk-unix.c:874): unix: External socket is used. Consider using --ext-unix-sk option.",
                     "(00.3) Error (criu/vdso.c:1): vdso: Can't find rt vDSO",  // the vDSO hint is the library's
                     "(00.4) Error (criu/cr-dump.c:1975): Dumping FAILED."});
  // No log: the console output's lines; nothing at all: none.
  CHECK(criu_error_lines(criu_errors(dir.get(), "none.log", "  first\nsecond \n")) ==
        std::vector<std::string>{"first", "second"});
  CHECK(criu_error_lines(criu_errors(dir.get(), "none.log", "")).empty());
}
