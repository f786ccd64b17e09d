/* A minimal container launcher for the end-to-end tests, built the way container runtimes
 * build containers, so that CRIU meets what it meets in production.
 *
 *   launcher --rootfs DIR --volume HOSTDIR [--netns PATH] [--cgroup2 PATH] [--tcp-port PORT]
 *            [--hostname NAME] [--extra SHELL-COMMAND]
 *
 * The container gets new PID, mount, UTS, IPC and cgroup namespaces and a new network
 * namespace (or joins PATH, e.g. /run/netns/NAME, with --netns). Inside it: / is made
 * rprivate, DIR is bind-mounted onto itself, proc is mounted at DIR/proc, a tmpfs at DIR/dev
 * holds binds of the host's /dev/null, /dev/zero and /dev/urandom, HOSTDIR is bind-mounted at
 * DIR/data, then pivot_root(DIR) and the old root is detached; lo is brought up, the hostname
 * set, and busybox sh runs the workload:
 *   - a counter that every 100 ms reads /data/counter, adds one, writes it back and prints it;
 *   - with --tcp-port, `nc -ll -p PORT -e cat /data/counter` on 0.0.0.0:PORT, answering each
 *     connection with the current counter value (raw, no HTTP: use curl --http0.9 or nc);
 *   - with --extra, that shell command in the background as well.
 * With --cgroup2 the launcher creates that cgroup v2 directory and moves the container's
 * init into it before the init unshares its cgroup namespace (as runc does).
 *
 * The container's stdin, stdout and stderr are pipes whose other ends the launcher holds.
 * The launcher prints "pid N" (the container init's host PID) as its first line, then copies
 * whatever the container writes to its stdout and stderr to its own stdout, and exits when
 * both pipes are closed, with the init's status (128+signal if it was killed). It is a child
 * subreaper and reaps everything. SIGINT/SIGTERM make it SIGKILL the container's init.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/close_range.h>
#include <linux/magic.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define STACK_SIZE (256 * 1024)

struct options {
  char rootfs[PATH_MAX];
  char volume[PATH_MAX];
  const char *netns;
  const char *cgroup2;
  const char *hostname;
  const char *extra;
  int tcp_port;
};

struct child_args {
  const struct options *opt;
  int stdio[3];   /* the container's ends: stdin read end, stdout and stderr write ends */
  int sync_read;  /* the launcher writes one byte once the init is in its cgroup */
  int parent_ends[4]; /* the launcher's ends, closed first so a dead launcher means EOF */
  int error_write; /* O_CLOEXEC: closed by a successful exec, carries a message otherwise */
  int netns_fd;   /* -1 for a new network namespace */
};

static pid_t container_pid = -1; /* killed by die() once cloned */

static void die(const char *fmt, ...) {
  va_list ap;
  if (container_pid > 0) {
    kill(container_pid, SIGKILL);
    waitpid(container_pid, NULL, 0);
  }
  va_start(ap, fmt);
  fputs("launcher: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

static void usage(void) {
  fputs("usage: launcher --rootfs DIR --volume HOSTDIR [--netns PATH] [--cgroup2 PATH]\n"
        "                [--tcp-port PORT] [--hostname NAME] [--extra SHELL-COMMAND]\n",
        stderr);
  exit(2);
}

/* ---- in the child: errors go to the launcher through error_write, then exit ---- */

static int error_fd = -1;

static void child_fail(const char *fmt, ...) {
  char msg[1024];
  int saved = errno;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof msg) n = (int)sizeof msg - 1;
  if (saved != 0 && (size_t)n < sizeof msg - 1)
    n += snprintf(msg + n, sizeof msg - (size_t)n, ": %s", strerror(saved));
  if ((size_t)n >= sizeof msg) n = (int)sizeof msg - 1;
  if (write(error_fd, msg, (size_t)n) < 0) {
    /* nothing left to report to */
  }
  _exit(127);
}

static void path_join(char *out, const char *a, const char *b) {
  if (snprintf(out, PATH_MAX, "%s/%s", a, b) >= PATH_MAX) {
    errno = ENAMETOOLONG;
    child_fail("path %s/%s", a, b);
  }
}

static void make_mount_point_file(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) child_fail("create mount point %s", path);
  close(fd);
}

static void bind_mount(const char *src, const char *dst, unsigned long extra) {
  if (mount(src, dst, NULL, MS_BIND | extra, NULL) != 0) child_fail("bind-mount %s on %s", src, dst);
}

static void setup_mounts(const struct options *opt) {
  char path[PATH_MAX];
  struct stat st;

  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) child_fail("make / rprivate");
  bind_mount(opt->rootfs, opt->rootfs, MS_REC);

  path_join(path, opt->rootfs, "proc");
  if (mkdir(path, 0555) != 0 && errno != EEXIST) child_fail("mkdir %s", path);
  if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
    child_fail("mount proc on %s", path);

  path_join(path, opt->rootfs, "dev");
  if (mkdir(path, 0755) != 0 && errno != EEXIST) child_fail("mkdir %s", path);
  if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k") != 0)
    child_fail("mount tmpfs on %s", path);
  static const char *const devices[] = {"null", "zero", "urandom"};
  for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++) {
    char host[32], rel[32];
    snprintf(host, sizeof host, "/dev/%s", devices[i]);
    snprintf(rel, sizeof rel, "dev/%s", devices[i]);
    path_join(path, opt->rootfs, rel);
    make_mount_point_file(path);
    bind_mount(host, path, 0);
  }

  path_join(path, opt->rootfs, "data");
  if (mkdir(path, 0755) != 0 && errno != EEXIST) child_fail("mkdir %s", path);
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) child_fail("%s is not a directory", path);
  bind_mount(opt->volume, path, MS_REC);

  if (chdir(opt->rootfs) != 0) child_fail("chdir %s", opt->rootfs);
  /* pivot_root(".", ".") stacks the old root on top of the new one; detach it. */
  if (syscall(SYS_pivot_root, ".", ".") != 0) child_fail("pivot_root into %s", opt->rootfs);
  if (umount2(".", MNT_DETACH) != 0) child_fail("detach the old root");
  if (chdir("/") != 0) child_fail("chdir /");
}

static void bring_lo_up(void) {
  struct ifreq ifr;
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) child_fail("socket for lo");
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) child_fail("SIOCGIFFLAGS lo");
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) child_fail("SIOCSIFFLAGS lo up");
  close(s);
}

static const char counter_script[] =
    "while :; do "
    "c=; { read -r c < /data/counter; } 2>/dev/null; "
    "c=$(( ${c:-0} + 1 )); "
    "echo \"$c\" > /data/counter; "
    "echo \"$c\"; "
    "sleep 0.1; "
    "done";

static int child_main(void *arg) {
  struct child_args *a = arg;
  const struct options *opt = a->opt;
  char script[4096];
  char buf;

  error_fd = a->error_write;
  for (int i = 0; i < 4; i++) close(a->parent_ends[i]);
  ssize_t n = read(a->sync_read, &buf, 1);
  if (n != 1) {
    errno = n < 0 ? errno : 0;
    child_fail("waiting for the launcher");
  }
  close(a->sync_read);

  /* Dispositions set to SIG_IGN survive exec: give the workload default ones and an empty
   * signal mask, whatever the launcher's parent (e.g. Python ignores SIGPIPE) left behind. */
  for (int sig = 1; sig < NSIG; sig++)
    if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);

  if (setsid() < 0) child_fail("setsid");
  if (unshare(CLONE_NEWCGROUP) != 0) child_fail("unshare the cgroup namespace");
  if (a->netns_fd >= 0) {
    if (setns(a->netns_fd, CLONE_NEWNET) != 0) child_fail("setns into %s", opt->netns);
    close(a->netns_fd);
  }
  setup_mounts(opt);
  bring_lo_up();
  if (sethostname(opt->hostname, strlen(opt->hostname)) != 0) child_fail("sethostname %s", opt->hostname);

  char server[64] = "";
  if (opt->tcp_port > 0)
    snprintf(server, sizeof server, "nc -ll -p %d -e cat /data/counter & ", opt->tcp_port);
  int len = snprintf(script, sizeof script, "%s%s%s%s%s", server, opt->extra ? "( " : "",
                     opt->extra ? opt->extra : "", opt->extra ? " ) & " : "", counter_script);
  if (len < 0 || (size_t)len >= sizeof script) {
    errno = E2BIG;
    child_fail("workload script");
  }

  for (int fd = 0; fd < 3; fd++)
    if (dup2(a->stdio[fd], fd) != fd) child_fail("dup2 onto fd %d", fd);
  for (int fd = 0; fd < 3; fd++)
    if (a->stdio[fd] > 2) close(a->stdio[fd]);
  /* Descriptors the launcher inherited from its own parent must not leak into the container
   * (CRIU would have to dump them); the error pipe must stay open until exec. */
  if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) != 0) child_fail("close_range");

  char *const argv[] = {"sh", "-c", script, NULL};
  char *const envp[] = {"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/", NULL};
  execve("/bin/sh", argv, envp);
  child_fail("exec /bin/sh in the container");
  return 127;
}

/* ---- in the launcher ---- */

static volatile sig_atomic_t kill_requested;

static void on_signal(int sig) {
  (void)sig;
  kill_requested = 1;
}

static void parse(int argc, char **argv, struct options *opt) {
  const char *rootfs = NULL, *volume = NULL;
  memset(opt, 0, sizeof *opt);
  opt->hostname = "box";
  for (int i = 1; i < argc; i++) {
    const char *o = argv[i];
    if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0) usage();
    if (i + 1 >= argc) {
      fprintf(stderr, "launcher: %s needs a value\n", o);
      usage();
    }
    const char *v = argv[++i];
    if (strcmp(o, "--rootfs") == 0) rootfs = v;
    else if (strcmp(o, "--volume") == 0) volume = v;
    else if (strcmp(o, "--netns") == 0) opt->netns = v;
    else if (strcmp(o, "--cgroup2") == 0) opt->cgroup2 = v;
    else if (strcmp(o, "--hostname") == 0) opt->hostname = v;
    else if (strcmp(o, "--extra") == 0) opt->extra = v;
    else if (strcmp(o, "--tcp-port") == 0) {
      char *end;
      long p = strtol(v, &end, 10);
      if (*v == '\0' || *end != '\0' || p < 1 || p > 65535) die("bad --tcp-port %s", v);
      opt->tcp_port = (int)p;
    } else {
      fprintf(stderr, "launcher: unknown option %s\n", o);
      usage();
    }
  }
  if (rootfs == NULL || volume == NULL) {
    fputs("launcher: --rootfs and --volume are required\n", stderr);
    usage();
  }
  if (realpath(rootfs, opt->rootfs) == NULL) die("rootfs %s: %s", rootfs, strerror(errno));
  if (realpath(volume, opt->volume) == NULL) die("volume %s: %s", volume, strerror(errno));
  if (strcmp(opt->rootfs, "/") == 0) die("rootfs must not be /");
  char sh[PATH_MAX + 8];
  snprintf(sh, sizeof sh, "%s/bin/sh", opt->rootfs);
  if (access(sh, X_OK) != 0) die("%s: %s (run make_rootfs.sh first)", sh, strerror(errno));
  struct stat st;
  if (stat(opt->volume, &st) != 0 || !S_ISDIR(st.st_mode)) die("volume %s is not a directory", opt->volume);
  if (strlen(opt->hostname) > 64) die("hostname too long");
}

static void join_cgroup(const char *cgroup, pid_t pid) {
  char path[PATH_MAX + 32], num[32];
  struct statfs fs;
  snprintf(path, sizeof path, "%s", cgroup);
  char *slash = strrchr(path, '/');
  if (slash == NULL || slash == path) die("--cgroup2 %s: expected /sys/fs/cgroup/.../NAME", cgroup);
  *slash = '\0';
  if (statfs(path, &fs) != 0) die("cgroup parent %s: %s", path, strerror(errno));
  if (fs.f_type != CGROUP2_SUPER_MAGIC) die("--cgroup2 %s: %s is not a cgroup2 directory", cgroup, path);
  if (mkdir(cgroup, 0755) != 0 && errno != EEXIST) die("create cgroup %s: %s", cgroup, strerror(errno));
  snprintf(path, sizeof path, "%s/cgroup.procs", cgroup);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die("open %s: %s", path, strerror(errno));
  int len = snprintf(num, sizeof num, "%d\n", (int)pid);
  if (write(fd, num, (size_t)len) != len) die("move %d into %s: %s", (int)pid, cgroup, strerror(errno));
  close(fd);
}

/* Copies what is readable on fd to stdout; returns 0 at EOF. */
static int forward(int fd) {
  static int stdout_broken;
  char buf[65536];
  ssize_t n = read(fd, buf, sizeof buf);
  if (n < 0) return errno == EINTR || errno == EAGAIN ? 1 : 0;
  if (n == 0) return 0;
  for (ssize_t off = 0; off < n && !stdout_broken;) {
    ssize_t w = write(STDOUT_FILENO, buf + off, (size_t)(n - off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      fprintf(stderr, "launcher: writing to stdout: %s (still draining the container)\n", strerror(errno));
      stdout_broken = 1;
      break;
    }
    off += w;
  }
  return 1;
}

int main(int argc, char **argv) {
  struct options opt;
  struct child_args ca;
  int in[2], out[2], err[2], sync[2], errp[2];

  /* With 0-2 open, no pipe below gets one of the numbers the container's stdio dup2()s onto. */
  for (int fd = 0; fd < 3; fd++)
    if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd) die("cannot open /dev/null as fd %d", fd);
  parse(argc, argv, &opt);
  if (geteuid() != 0) die("must run as root");
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) die("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));

  memset(&ca, 0, sizeof ca);
  ca.opt = &opt;
  ca.netns_fd = -1;
  if (opt.netns != NULL) {
    ca.netns_fd = open(opt.netns, O_RDONLY | O_CLOEXEC);
    if (ca.netns_fd < 0) die("open netns %s: %s", opt.netns, strerror(errno));
  }
  /* O_CLOEXEC everywhere: the child dup2()s its three ends onto 0-2, the rest vanish at exec. */
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) || pipe2(sync, O_CLOEXEC) ||
      pipe2(errp, O_CLOEXEC))
    die("pipe: %s", strerror(errno));
  ca.stdio[0] = in[0];
  ca.stdio[1] = out[1];
  ca.stdio[2] = err[1];
  ca.sync_read = sync[0];
  ca.error_write = errp[1];
  ca.parent_ends[0] = in[1];
  ca.parent_ends[1] = out[0];
  ca.parent_ends[2] = err[0];
  ca.parent_ends[3] = sync[1];

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  char *stack = malloc(STACK_SIZE);
  if (stack == NULL) die("out of memory");
  int flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD;
  if (opt.netns == NULL) flags |= CLONE_NEWNET;
  pid_t pid = clone(child_main, stack + STACK_SIZE, flags, &ca);
  if (pid < 0) die("clone: %s", strerror(errno));
  container_pid = pid;

  close(in[0]);
  close(out[1]);
  close(err[1]);
  close(sync[0]);
  close(errp[1]);
  if (ca.netns_fd >= 0) close(ca.netns_fd);

  if (opt.cgroup2 != NULL) join_cgroup(opt.cgroup2, pid);
  if (write(sync[1], "x", 1) != 1) die("starting the container: %s", strerror(errno));
  close(sync[1]);

  char msg[1025];
  ssize_t n;
  while ((n = read(errp[0], msg, sizeof msg - 1)) < 0 && errno == EINTR) {
  }
  close(errp[0]);
  if (n > 0) {
    msg[n] = '\0';
    die("container setup failed: %s", msg);
  }

  printf("pid %d\n", (int)pid);
  fflush(stdout);

  /* in[1] stays open: the container's stdin is a pipe that never reports EOF. */
  struct pollfd fds[2] = {{.fd = out[0], .events = POLLIN}, {.fd = err[0], .events = POLLIN}};
  int open_pipes = 2;
  int init_status = -1;
  while (open_pipes > 0) {
    if (kill_requested) {
      kill(pid, SIGKILL);
      kill_requested = 0;
    }
    int r = poll(fds, 2, 500);
    if (r < 0 && errno != EINTR) die("poll: %s", strerror(errno));
    for (int i = 0; i < 2 && r > 0; i++) {
      if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) && !forward(fds[i].fd)) {
        close(fds[i].fd);
        fds[i].fd = -1;
        open_pipes--;
      }
    }
    int status;
    pid_t w;
    while ((w = waitpid(-1, &status, WNOHANG)) > 0)
      if (w == pid) init_status = status;
  }
  close(in[1]);

  int status;
  pid_t w;
  while (init_status == -1) {
    if (kill_requested) {
      kill(pid, SIGKILL);
      kill_requested = 0;
    }
    w = waitpid(-1, &status, 0);
    if (w == pid) init_status = status;
    else if (w < 0 && errno == ECHILD) break;
  }
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  if (init_status == -1) return 0;
  if (WIFSIGNALED(init_status)) {
    fprintf(stderr, "launcher: container init %d killed by signal %d\n", (int)pid, WTERMSIG(init_status));
    return 128 + WTERMSIG(init_status);
  }
  return WEXITSTATUS(init_status);
}
