/* Containers through the C ABI with the real CRIU, as root: the project's launcher
 * (tests/container/launcher.c: new namespaces, a busybox rootfs, a volume, pipe stdio, a cgroup2
 * leaf of its own) dumped with nc_checkpoint_ex, restored with nc_restore_pidfd and a new pipe as
 * its stdout: the counter goes on in the volume, the output reaches the new pipe, the pidfd is
 * the restored root's. Then a checkpoint with one byte of its pages flipped is refused with
 * NC_E_INTEGRITY and nothing runs. Needs NC_TEST_TMPDIR, NC_TEST_LAUNCHER and NC_TEST_MAKE_ROOTFS
 * (set by tests/meson.build). */
#define _GNU_SOURCE
#include <nucleus/checkpoint.h>

#include "capi_support.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/magic.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>


static char rootfs[4200], volume[4200], counter_file[4300], cgroup[4200], checkpoint[4200];
static pid_t launcher = -1, container = -1;
static int launcher_out = -1;
/* Restored trees, killed through their pidfds at the end whatever happened. */
static int restored_pidfd[4] = {-1, -1, -1, -1};
static pid_t restored_pid[4];
static int restored_count;

static int pidfd_send(int pidfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0); }

static char state_of(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return '\0';
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *close = strrchr(buf, ')');
  return close && close[1] == ' ' ? close[2] : '\0';
}

static int is_alive(pid_t pid) {
  char s = state_of(pid);
  return s != '\0' && s != 'Z' && s != 'X';
}

static int wait_gone(pid_t pid, int ms) {
  for (int i = 0; i < ms / 20; ++i) {
    reap();
    if (!is_alive(pid)) return 1;
    sleep_ms(20);
  }
  reap();
  return !is_alive(pid);
}

static long count(void) {
  FILE *f = fopen(counter_file, "r");
  long n = -1;
  if (f) {
    if (fscanf(f, "%ld", &n) != 1) n = -1;
    fclose(f);
  }
  return n;
}

/* The last number the container printed through its launcher. */
static long last_printed = -1;

/* Reads what the launcher forwarded (so that it never blocks), keeping the last number; 0 at EOF. */
static int drain(int fd) {
  static char line[64];
  static size_t len;
  char c;
  ssize_t n;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  while ((n = read(fd, &c, 1)) == 1) {
    if (c != '\n') {
      if (len + 1 < sizeof line) line[len++] = c;
      continue;
    }
    line[len] = '\0';
    char *end = NULL;
    long v = strtol(line, &end, 10);
    if (len > 0 && *end == '\0') last_printed = v;
    len = 0;
  }
  return n != 0;
}

static int count_above(long n, int ms) {
  for (int i = 0; i < ms / 50; ++i) {
    if (launcher_out >= 0) drain(launcher_out);
    if (count() > n) return 1;
    sleep_ms(50);
  }
  return count() > n;
}

/* The first line read from fd holding a number above `above` within ms; -1 if none (the text
 * read goes to seen). */
static long number_above(int fd, long above, int ms, char *seen, size_t seen_size) {
  char line[64];
  size_t len = 0, used = 0;
  seen[0] = '\0';
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  for (int waited = 0; waited <= ms; waited += 100) {
    char c;
    ssize_t n;
    while ((n = read(fd, &c, 1)) == 1) {
      if (used + 1 < seen_size) {
        seen[used++] = c;
        seen[used] = '\0';
      }
      if (c != '\n') {
        if (len + 1 < sizeof line) line[len++] = c;
        continue;
      }
      line[len] = '\0';
      char *end = NULL;
      long v = strtol(line, &end, 10);
      if (len > 0 && *end == '\0' && v > above) return v;
      len = 0;
    }
    if (n == 0) return -1; /* EOF */
    struct pollfd p = {fd, POLLIN, 0};
    poll(&p, 1, 100);
  }
  return -1;
}

static int run_script(const char *script, const char *arg) {
  pid_t pid = fork();
  if (pid == 0) {
    execlp("sh", "sh", script, arg, (char *)NULL);
    _exit(127);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The unified cgroup hierarchy, wherever it is mounted. */
static const char *cgroup2_parent(void) {
  static const char *const candidates[] = {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"};
  for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; ++i) {
    struct statfs st;
    if (statfs(candidates[i], &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC) return candidates[i];
  }
  return NULL;
}

static int cgroup_empty(void) {
  char path[4300], buf[64];
  snprintf(path, sizeof path, "%s/cgroup.procs", cgroup);
  FILE *f = fopen(path, "r");
  if (!f) return 1; /* gone: empty */
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  return n == 0;
}

/* Starts the launcher's container: 0 once its counter is going. */
static int launch(void) {
  const char *exe = getenv("NC_TEST_LAUNCHER"), *make_rootfs = getenv("NC_TEST_MAKE_ROOTFS");
  const char *parent = cgroup2_parent();
  CHECK(exe != NULL && make_rootfs != NULL && parent != NULL);
  if (!exe || !make_rootfs || !parent) return -1;
  snprintf(cgroup, sizeof cgroup, "%s/nc-test-capi-%d", parent, (int)getpid());
  CHECK(mkdir(volume, 0755) == 0);
  CHECK(run_script(make_rootfs, rootfs) == 0);
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return -1;
  launcher = fork();
  if (launcher == 0) {
    dup2(p[1], STDOUT_FILENO);
    execl(exe, exe, "--rootfs", rootfs, "--volume", volume, "--cgroup2", cgroup, (char *)NULL);
    _exit(127);
  }
  close(p[1]);
  launcher_out = p[0];
  if (launcher < 0) return -1;
  /* Its first line: "pid N", the container's init as the host sees it. */
  char first[64] = "";
  size_t len = 0;
  for (int waited = 0; waited < 60000 && len + 1 < sizeof first; waited += 200) {
    struct pollfd pf = {launcher_out, POLLIN, 0};
    if (poll(&pf, 1, 200) <= 0) continue;
    char c;
    if (read(launcher_out, &c, 1) != 1) break;
    if (c == '\n') break;
    first[len++] = c;
    first[len] = '\0';
  }
  CHECK(strncmp(first, "pid ", 4) == 0);
  if (strncmp(first, "pid ", 4) != 0) return -1;
  container = (pid_t)strtol(first + 4, NULL, 10);
  CHECK(container > 0);
  CHECK(count_above(3, 20000));
  return container > 0 && count() > 3 ? 0 : -1;
}

static void adopt(pid_t pid, int pidfd) {
  if (restored_count < 4) {
    restored_pid[restored_count] = pid;
    restored_pidfd[restored_count++] = pidfd;
  }
}

static void cleanup(void) {
  for (int i = 0; i < restored_count; ++i) {
    if (restored_pidfd[i] < 0) continue;
    pidfd_send(restored_pidfd[i], SIGKILL); /* a PID-namespace init ignores SIGTERM */
    close(restored_pidfd[i]);
    restored_pidfd[i] = -1;
    wait_gone(restored_pid[i], 5000);
  }
  if (launcher > 0) {
    if (container > 0) kill(container, SIGKILL); /* still the launcher's child: not a reused PID */
    kill(launcher, SIGKILL);
    waitpid(launcher, NULL, 0);
    launcher = -1;
  }
  reap();
  if (launcher_out >= 0) close(launcher_out);
  launcher_out = -1;
  for (int i = 0; cgroup[0] && i < 250; ++i) {
    reap();
    if (rmdir(cgroup) == 0 || errno == ENOENT) break;
    sleep_ms(20);
  }
}

/* Flips one byte of the first images/pages-*.img. */
static int tamper(const char *dir) {
  char images[4300], file[4600];
  snprintf(images, sizeof images, "%s/images", dir);
  DIR *d = opendir(images);
  if (!d) return -1;
  struct dirent *e;
  file[0] = '\0';
  while ((e = readdir(d)) != NULL) {
    size_t n = strlen(e->d_name);
    if (strncmp(e->d_name, "pages-", 6) == 0 && n > 4 && strcmp(e->d_name + n - 4, ".img") == 0) {
      snprintf(file, sizeof file, "%s/%s", images, e->d_name);
      break;
    }
  }
  closedir(d);
  if (!file[0]) return -1;
  int fd = open(file, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  unsigned char b = 0;
  int ok = fd >= 0 && pread(fd, &b, 1, 100) == 1;
  b ^= 0x01;
  ok = ok && pwrite(fd, &b, 1, 100) == 1;
  if (fd >= 0) close(fd);
  return ok ? 0 : -1;
}

static void test_container(nc_runtime *rt) {
  if (launch() != 0) return;

  nc_options *opts = NULL;
  CHECK(nc_options_new(&opts) == NC_OK);
  if (!opts) return;
  CHECK(nc_options_set_leave_running(opts, 0) == NC_OK);
  CHECK(nc_options_add_annotation(opts, "io.example.runtime", "capi-container") == NC_OK);
  CHECK(nc_checkpoint_ex(rt, "capi-box", container, checkpoint, opts) == NC_OK);
  nc_options_free(opts);
  /* CRIU stopped the tree; its launcher sees the pipes close and exits. */
  CHECK(wait_gone(container, 10000));
  int exited = 0;
  for (int i = 0; i < 500 && !exited; ++i) {
    pid_t w = waitpid(launcher, NULL, WNOHANG);
    exited = w == launcher || (w < 0 && errno == ECHILD); /* or reaped already by reap() */
    if (!exited) sleep_ms(20);
  }
  CHECK(exited);
  if (exited) launcher = -1;
  /* Where it stopped: the volume's counter, or if the dump came between the file's truncation
   * and its writing, the last number it printed. */
  for (int i = 0; i < 100 && drain(launcher_out); ++i) sleep_ms(50);
  long before = count() >= 0 ? count() : last_printed;
  CHECK(before > 3);
  sleep_ms(300);
  CHECK(count() <= before); /* nothing runs while checkpointed */
  CHECK(nc_verify(checkpoint) == NC_OK);

  char *json = NULL;
  CHECK(nc_read_metadata(checkpoint, &json) == NC_OK);
  CHECK(json != NULL && strstr(json, "io.example.runtime") != NULL);
  CHECK(json != NULL && strstr(json, "\"/data\"") != NULL);     /* the volume, declared external */
  CHECK(json != NULL && strstr(json, "\"pipe:[") != NULL);      /* the root's stdio pipes */
  CHECK(json != NULL && strstr(json, volume) != NULL);          /* the volume's host source */
  nc_free(json);

  int out[2];
  CHECK(pipe2(out, O_CLOEXEC) == 0);
  CHECK(nc_options_new(&opts) == NC_OK);
  if (!opts) return;
  CHECK(nc_options_add_inherit_fd(opts, out[1], "stdout") == NC_OK);
  pid_t pid = 0;
  int pidfd = -1;
  CHECK(nc_restore_pidfd(rt, checkpoint, opts, &pid, &pidfd) == NC_OK);
  nc_options_free(opts);
  close(out[1]);
  if (pidfd >= 0) adopt(pid, pidfd);
  CHECK(pid > 0 && pidfd >= 0);
  if (pid > 0 && pidfd >= 0) {
    /* The pidfd is the restored root's. */
    CHECK(pidfd_send(pidfd, 0) == 0);
    char path[64], info[1024], want[32];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pidfd);
    snprintf(want, sizeof want, "Pid:\t%d\n", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(info, 1, sizeof info - 1, f) : 0;
    if (f) fclose(f);
    info[n] = '\0';
    CHECK(strstr(info, want) != NULL);
    char ns[64], own[64], self[64];
    snprintf(ns, sizeof ns, "/proc/%d/ns/net", (int)pid);
    ssize_t a = readlink(ns, own, sizeof own - 1), b = readlink("/proc/self/ns/net", self, sizeof self - 1);
    CHECK(a > 0 && b > 0 && (a != b || memcmp(own, self, (size_t)a) != 0)); /* a network namespace of its own */

    /* The counter goes on in the volume; the output reaches the new pipe. */
    CHECK(count_above(before + 5, 10000));
    char seen[256];
    long printed = number_above(out[0], before, 10000, seen, sizeof seen);
    if (printed <= before) fprintf(stderr, "read from the new stdout: \"%s\"\n", seen);
    CHECK(printed > before);

    /* Killed through the pidfd, which becomes readable once the root is gone. */
    CHECK(pidfd_send(pidfd, SIGKILL) == 0);
    struct pollfd p = {pidfd, POLLIN, 0};
    CHECK(poll(&p, 1, 10000) == 1);
    CHECK(wait_gone(pid, 10000));
  }
  close(out[0]);

  /* The same checkpoint, one byte of its pages flipped: refused before CRIU runs. */
  CHECK(tamper(checkpoint) == 0);
  long at_tamper = count();
  CHECK(nc_options_new(&opts) == NC_OK);
  if (!opts) return;
  CHECK(pipe2(out, O_CLOEXEC) == 0);
  CHECK(nc_options_add_inherit_fd(opts, out[1], "stdout") == NC_OK);
  pid = 1;
  pidfd = 7;
  nc_status s = nc_restore_pidfd(rt, checkpoint, opts, &pid, &pidfd);
  nc_options_free(opts);
  close(out[1]);
  CHECK(s == NC_E_INTEGRITY);
  CHECK(strlen(nc_last_error()) > 0);
  CHECK(pid == 0 && pidfd == -1);
  if (s == NC_OK && pidfd >= 0) adopt(pid, pidfd);
  CHECK(nc_verify(checkpoint) == NC_E_INTEGRITY);
  sleep_ms(500);
  CHECK(count() == at_tamper); /* nothing runs */
  CHECK(cgroup_empty());
  char buf[16];
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  CHECK(read(out[0], buf, sizeof buf) == 0); /* nothing holds the pipe's write end */
  close(out[0]);
}

int main(void) {
  if (enter_test_folder("capi-container") != 0) return 1;
  snprintf(rootfs, sizeof rootfs, "%s/rootfs", base);
  snprintf(volume, sizeof volume, "%s/volume", base);
  snprintf(counter_file, sizeof counter_file, "%s/counter", volume);
  snprintf(checkpoint, sizeof checkpoint, "%s/checkpoint", base);

  CHECK(geteuid() == 0); /* CRIU needs root */
  nc_runtime *rt = NULL;
  CHECK(nc_runtime_new(&rt) == NC_OK);
  if (rt) test_container(rt);
  cleanup();
  nc_runtime_free(rt);
  return leave_test_folder("capi_container");
}
