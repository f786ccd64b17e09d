/* The main job, end to end through the C ABI: checkpoint a running process tree, show the signed
 * checkpoint, show that a tampered copy is refused, restore the original and show it running on.
 * Then the same for a container, as a container runtime uses the library: the project's launcher
 * starts one (busybox rootfs, namespaces of its own, a volume, pipe stdio); one call checkpoints
 * it, the library finding its rootfs, mounts and namespaces; one call restores it, with a new
 * pipe as its stdout.
 *
 *   demo COUNTER WORKDIR [LAUNCHER MAKE_ROOTFS]
 *
 * (as root; COUNTER is the sample workload, examples/counter; LAUNCHER the container launcher,
 * tests/container/launcher.c, and MAKE_ROOTFS tests/container/make_rootfs.sh, which needs a
 * static busybox: scripts/setup.sh installs busybox-static) */
#define _GNU_SOURCE
#include <nucleus/checkpoint.h>

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

static char checkpoint_dir[4096], tampered_dir[4096], counter_dir[4096];

static void cleanup_container(void);

static void die(const char *what, nc_status s) {
  fprintf(stderr, "demo: %s failed: %s: %s\n", what, nc_status_name(s), nc_last_error());
  cleanup_container();
  exit(1);
}

static long read_count(const char *name) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", counter_dir, name);
  FILE *f = fopen(path, "r");
  long n = -1;
  if (f) {
    if (fscanf(f, "%ld", &n) != 1) n = -1;
    fclose(f);
  }
  return n;
}

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

/* As a child subreaper this process reaps the dumped tree at once; PID 1 may take seconds, and a
 * PID still held by a zombie cannot be restored. */
static void reap(void) {
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

static int print_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)ftw;
  if (type == FTW_F) printf("    %-40s %10lld bytes\n", path + strlen(checkpoint_dir) + 1, (long long)st->st_size);
  return 0;
}

static int copy_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)ftw;
  char dest[8400];
  snprintf(dest, sizeof dest, "%s%s", tampered_dir, path + strlen(checkpoint_dir));
  if (type == FTW_D) return mkdir(dest, 0700) == 0 || errno == EEXIST ? 0 : -1;
  if (type != FTW_F) return -1;
  int in = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  int out = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, st->st_mode & 0600);
  char buf[1 << 16];
  ssize_t n = 0;
  while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof buf)) > 0)
    if (write(out, buf, (size_t)n) != n) n = -1;
  if (in >= 0) close(in);
  if (out >= 0) close(out);
  return in < 0 || out < 0 || n < 0 ? -1 : 0;
}

/* ---- The container ---- */

static pid_t launcher = -1, box = -1;
static int launcher_out = -1, box_pidfd = -1;
static char cgroup[256], volume_counter[4400];

static int pidfd_send(int pidfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0); }

static long box_count(void) {
  FILE *f = fopen(volume_counter, "r");
  long n = -1;
  if (f) {
    if (fscanf(f, "%ld", &n) != 1) n = -1;
    fclose(f);
  }
  return n;
}

/* Everything the container part started is stopped, even on failure: the launcher, the container
 * (a PID-namespace init ignores SIGTERM: SIGKILL), the restored one, and its cgroup. */
static void cleanup_container(void) {
  if (box_pidfd >= 0) {
    pidfd_send(box_pidfd, SIGKILL);
    struct pollfd p = {box_pidfd, POLLIN, 0};
    poll(&p, 1, 5000); /* readable once it is gone */
    close(box_pidfd);
    box_pidfd = -1;
  }
  if (launcher > 0) {
    if (box > 0) kill(box, SIGKILL); /* the launcher's child, not yet reaped: its PID is still its own */
    kill(launcher, SIGKILL);
    waitpid(launcher, NULL, 0);
    launcher = -1;
  }
  if (launcher_out >= 0) close(launcher_out);
  launcher_out = -1;
  for (int i = 0; cgroup[0] && i < 250; ++i) { /* it empties once its processes are reaped */
    reap();
    if (rmdir(cgroup) == 0 || errno == ENOENT) break;
    sleep_ms(20);
  }
  cgroup[0] = '\0';
}

static int fail(const char *what) {
  fflush(stdout);
  if (what) fprintf(stderr, "demo: %s\n", what);
  cleanup_container();
  return 0;
}

/* The last number the container printed, whichever call read it. */
static long last_printed = -1;

/* Reads lines of numbers from fd for up to ms (or until `want` of them came, or EOF), appending
 * them to text; returns the last one, or -1. */
static long read_numbers(int fd, int ms, int want, char *text, size_t size) {
  char line[32];
  size_t len = 0;
  long last = -1;
  int got = 0;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  for (int waited = 0; waited <= ms && got < want; waited += 50) {
    char c;
    ssize_t n = -1;
    while (got < want && (n = read(fd, &c, 1)) == 1) {
      if (c != '\n') {
        if (len + 1 < sizeof line) line[len++] = c;
        continue;
      }
      line[len] = '\0';
      len = 0;
      char *end;
      long v = strtol(line, &end, 10);
      if (end == line || *end != '\0') continue;
      last = last_printed = v;
      ++got;
      size_t used = strlen(text);
      if (used + 24 < size) snprintf(text + used, size - used, "%s%ld", used ? " " : "", v);
    }
    if (n == 0) break; /* EOF */
    if (got < want) sleep_ms(50);
  }
  return last;
}

/* The value of "key" in a JSON object at or after from: a pointer to its first character. */
static const char *json_value(const char *from, const char *key) {
  char quoted[64];
  snprintf(quoted, sizeof quoted, "\"%s\"", key);
  const char *p = from ? strstr(from, quoted) : NULL;
  if (!p) return NULL;
  p += strlen(quoted);
  while (*p == ' ' || *p == '\n' || *p == '\t' || *p == ':') ++p;
  return p;
}

/* The end of the JSON array at p (its closing bracket), brackets inside strings skipped. */
static const char *json_array_end(const char *p) {
  int depth = 0, in_string = 0;
  for (; p && *p; ++p) {
    if (in_string) {
      if (*p == '\\' && p[1]) ++p;
      else if (*p == '"') in_string = 0;
    } else if (*p == '"') {
      in_string = 1;
    } else if (*p == '[') {
      ++depth;
    } else if (*p == ']' && --depth == 0) {
      return p;
    }
  }
  return NULL;
}

/* The JSON string at p, unescaped as far as paths need, into out. */
static const char *json_string(const char *p, char *out, size_t size) {
  size_t n = 0;
  out[0] = '\0';
  if (!p || *p != '"') return p;
  for (++p; *p && *p != '"'; ++p) {
    if (*p == '\\' && p[1]) ++p;
    if (n + 1 < size) out[n++] = *p;
  }
  out[n] = '\0';
  return *p ? p + 1 : p;
}

/* What the library found in the container, from its signed metadata. */
static void show_found(const char *dir) {
  char *json = NULL;
  nc_status s = nc_read_metadata(dir, &json);
  if (s != NC_OK) {
    printf("   (metadata: %s)\n", nc_last_error());
    return;
  }
  const char *c = json_value(json, "container");
  char text[4096];
  json_string(json_value(c, "root"), text, sizeof text);
  printf("   rootfs      %s\n", text);
  const char *mounts = json_value(c, "mounts"), *end = json_array_end(mounts);
  for (const char *m = json_value(mounts, "mountpoint"); m && m < end; m = json_value(m, "mountpoint")) {
    char source[4096];
    m = json_string(m, text, sizeof text);
    json_string(json_value(m, "source"), source, sizeof source);
    printf("   mount       %-12s <- %s (the host's, declared external)\n", text, source);
  }
  const char *own_mnt = json_value(c, "own_mount_namespace"), *own_net = json_value(c, "own_network_namespace");
  printf("   namespaces  mount: %s, network: %s\n", own_mnt && strncmp(own_mnt, "true", 4) == 0 ? "its own" : "the host's",
         own_net && strncmp(own_net, "true", 4) == 0 ? "its own" : "shared");
  const char *fds = json_value(c, "descriptors");
  end = json_array_end(fds);
  printf("   stdio      ");
  for (const char *d = json_value(fds, "fd"); d && d < end; d = json_value(d, "fd")) {
    int fd = atoi(d);
    json_string(json_value(d, "key"), text, sizeof text);
    printf(" %d: %s", fd, text);
  }
  printf("\n");
  nc_free(json);
}

static int run_quietly(const char *sh_script, const char *arg) {
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, STDOUT_FILENO);
    execlp("sh", "sh", sh_script, arg, (char *)NULL);
    _exit(127);
  }
  int status = 0;
  return pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int container_round_trip(nc_runtime *rt, const char *launcher_path, const char *make_rootfs, const char *work) {
  char base[4096], rootfs[4200], volume[4200], dir[4200], launcher_log[4200], text[512] = "";
  snprintf(base, sizeof base, "%s/container", work);
  snprintf(rootfs, sizeof rootfs, "%s/rootfs", base);
  snprintf(volume, sizeof volume, "%s/volume", base);
  snprintf(volume_counter, sizeof volume_counter, "%s/counter", volume);
  snprintf(dir, sizeof dir, "%s/container-checkpoint", work);
  snprintf(launcher_log, sizeof launcher_log, "%s/launcher.log", base);
  if ((mkdir(base, 0700) != 0 && errno != EEXIST) || (mkdir(volume, 0755) != 0 && errno != EEXIST))
    return fail("cannot create the container's folders");
  if (run_quietly(make_rootfs, rootfs) != 0) return fail("make_rootfs.sh failed (is busybox-static installed?)");
  /* A cgroup of its own, as runtimes give each container, in the unified hierarchy. */
  struct statfs fs;
  const char *parent = statfs("/sys/fs/cgroup", &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC ? "/sys/fs/cgroup"
                                                                                             : "/sys/fs/cgroup/unified";
  snprintf(cgroup, sizeof cgroup, "%s/nc-demo-%d", parent, (int)getpid());

  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return fail("pipe failed");
  launcher = fork();
  if (launcher == 0) {
    dup2(out[1], STDOUT_FILENO);
    int log = open(launcher_log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log >= 0) dup2(log, STDERR_FILENO);
    execl(launcher_path, launcher_path, "--rootfs", rootfs, "--volume", volume, "--cgroup2", cgroup, (char *)NULL);
    _exit(127);
  }
  close(out[1]);
  launcher_out = out[0];
  char first[64] = "";
  size_t len = 0;
  for (int waited = 0; launcher > 0 && waited < 30000 && len + 1 < sizeof first; waited += 100) {
    struct pollfd p = {launcher_out, POLLIN, 0};
    char c;
    if (poll(&p, 1, 100) <= 0) continue;
    if (read(launcher_out, &c, 1) != 1 || c == '\n') break;
    first[len++] = c;
    first[len] = '\0';
  }
  if (strncmp(first, "pid ", 4) != 0) {
    fflush(stdout);
    fprintf(stderr, "demo: the launcher did not start the container; its messages are in %s\n", launcher_log);
    return fail(NULL);
  }
  box = (pid_t)atoi(first + 4);
  read_numbers(launcher_out, 3000, 5, text, sizeof text);
  printf("5. a container: busybox rootfs, namespaces of its own, a volume on /data, pipe stdio\n"
         "   its init is PID %d; it counts in the volume, and says so on its stdout: %s\n", box, text);

  nc_status s = nc_checkpoint(rt, "demo-box", box, dir, 0);
  if (s != NC_OK) {
    fflush(stdout);
    fprintf(stderr, "demo: nc_checkpoint of the container failed: %s: %s\n", nc_status_name(s), nc_last_error());
    return fail(NULL);
  }
  /* CRIU stopped it; its launcher sees the pipes close and exits. */
  for (int i = 0; i < 500; ++i) {
    pid_t w = waitpid(launcher, NULL, WNOHANG);
    if (w == launcher || (w < 0 && errno == ECHILD)) {
      launcher = -1;
      break;
    }
    sleep_ms(20);
  }
  /* Where it stopped: the volume's counter, or if the dump came between the file's truncation
   * and its writing, the last number it printed (what the launcher forwarded is read to EOF). */
  char rest[4096] = "";
  read_numbers(launcher_out, 5000, 1 << 30, rest, sizeof rest);
  close(launcher_out);
  launcher_out = -1;
  reap();
  long stopped = box_count() >= 0 ? box_count() : last_printed;
  printf("6. nc_checkpoint: signed checkpoint in %s, the container stopped at %ld;\n"
         "   what the library found (its metadata.json):\n", dir, stopped);
  show_found(dir);

  if (pipe2(out, O_CLOEXEC) != 0) return fail("pipe failed");
  nc_options *opts = NULL;
  pid_t pid = 0;
  if (nc_options_new(&opts) != NC_OK || nc_options_add_inherit_fd(opts, out[1], "stdout") != NC_OK) {
    nc_options_free(opts);
    return fail("options failed");
  }
  s = nc_restore_pidfd(rt, dir, opts, &pid, &box_pidfd);
  nc_options_free(opts);
  close(out[1]);
  if (s != NC_OK) {
    close(out[0]);
    fflush(stdout);
    fprintf(stderr, "demo: nc_restore_pidfd of the container failed: %s: %s\n", nc_status_name(s), nc_last_error());
    return fail(NULL);
  }
  text[0] = '\0';
  read_numbers(out[0], 3000, 5, text, sizeof text);
  sleep_ms(500);
  long now = box_count();
  for (int i = 0; i < 10 && now < 0; ++i) { /* read while the container rewrote it */
    sleep_ms(10);
    now = box_count();
  }
  printf("7. nc_restore_pidfd, a new pipe as its stdout: PID %d, running on\n"
         "   counter in the volume %ld -> %ld; on the new pipe: %s\n", (int)pid, stopped, now, text);
  int ok = now > stopped && text[0] != '\0' && atol(text) > stopped;
  close(out[0]);
  cleanup_container(); /* killed through its pidfd */
  return ok;
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 5) {
    fprintf(stderr, "usage: %s COUNTER WORKDIR [LAUNCHER MAKE_ROOTFS]\n", argv[0]);
    return 2;
  }
  if (mkdir(argv[2], 0700) != 0 && errno != EEXIST) {
    perror(argv[2]);
    return 1;
  }
  snprintf(counter_dir, sizeof counter_dir, "%s/counter", argv[2]);
  snprintf(checkpoint_dir, sizeof checkpoint_dir, "%s/checkpoint", argv[2]);
  snprintf(tampered_dir, sizeof tampered_dir, "%s/tampered", argv[2]);
  mkdir(counter_dir, 0700);
  prctl(PR_SET_CHILD_SUBREAPER, 1);

  pid_t pid = fork();
  if (pid == 0) {
    execl(argv[1], argv[1], counter_dir, (char *)NULL);
    _exit(127);
  }
  while (read_count("parent") < 5 || read_count("child") < 5) sleep_ms(20);
  printf("1. sample process tree running: PID %d (parent counter %ld, child counter %ld)\n", pid,
         read_count("parent"), read_count("child"));

  nc_runtime *rt = NULL;
  nc_status s = nc_runtime_new(&rt);
  if (s != NC_OK) die("nc_runtime_new", s);

  s = nc_checkpoint(rt, "demo", pid, checkpoint_dir, 0);
  if (s != NC_OK) die("nc_checkpoint", s);
  sleep_ms(200);
  reap();
  long at_checkpoint = read_count("parent");
  printf("2. checkpointed into %s; the tree was stopped at counter %ld (PID %d %s)\n", checkpoint_dir, at_checkpoint,
         pid, kill(pid, 0) == 0 ? "still exists" : "is gone");
  nftw(checkpoint_dir, print_entry, 16, FTW_PHYS);
  char hmac_path[4200], hmac[80] = "";
  snprintf(hmac_path, sizeof hmac_path, "%s/checkpoint.hmac", checkpoint_dir);
  FILE *f = fopen(hmac_path, "r");
  if (f) {
    if (!fgets(hmac, sizeof hmac, f)) hmac[0] = '\0';
    hmac[strcspn(hmac, "\n")] = '\0';
    fclose(f);
  }
  printf("   signed: checkpoint.hmac = %s\n", hmac);
  s = nc_verify(checkpoint_dir);
  printf("   nc_verify: %s\n", nc_status_name(s));
  if (s != NC_OK) die("nc_verify", s);

  if (nftw(checkpoint_dir, copy_entry, 16, FTW_PHYS) != 0) {
    perror("copying the checkpoint");
    return 1;
  }
  char pages[8400];
  snprintf(pages, sizeof pages, "%s/images/pages-1.img", tampered_dir);
  int fd = open(pages, O_RDWR | O_NOFOLLOW);
  unsigned char byte = 0;
  if (fd < 0 || pread(fd, &byte, 1, 100) != 1) {
    perror(pages);
    return 1;
  }
  byte ^= 0x01;
  if (pwrite(fd, &byte, 1, 100) != 1) return 1;
  close(fd);
  pid_t ignored = 0;
  s = nc_restore(rt, tampered_dir, &ignored);
  printf("3. a copy with one bit of images/pages-1.img flipped: nc_restore -> %s\n   %s\n", nc_status_name(s),
         nc_last_error());
  if (s != NC_E_INTEGRITY) {
    fprintf(stderr, "demo: the tampered copy was not refused\n");
    return 1;
  }
  /* Refused while CRIU read it: what CRIU had made was killed before it ran an instruction, and
   * this subreaper reaps it before the original is restored under the same PIDs. */
  for (int i = 0; i < 250 && kill(pid, 0) == 0; ++i) {
    reap();
    sleep_ms(20);
  }

  pid_t restored = 0;
  s = nc_restore(rt, checkpoint_dir, &restored);
  if (s != NC_OK) die("nc_restore", s);
  printf("4. restored: PID %d, running on\n", restored);
  for (int i = 0; i < 3; ++i) {
    sleep_ms(500);
    printf("   parent counter %ld, child counter %ld (was %ld at the checkpoint)\n", read_count("parent"),
           read_count("child"), at_checkpoint);
  }
  int ok = read_count("parent") > at_checkpoint && read_count("child") > at_checkpoint;
  kill(-restored, SIGKILL); /* the restored tree is its own process group */
  sleep_ms(100);
  reap();
  if (!ok) {
    nc_runtime_free(rt);
    printf("demo: FAILED, counters did not move\n");
    return 1;
  }
  printf("   the restored tree ran on from its checkpoint\n");

  if (argc == 5) ok = container_round_trip(rt, argv[3], argv[4], argv[2]);
  nc_runtime_free(rt);
  if (!ok) {
    printf("demo: FAILED, the container did not run on from its checkpoint\n");
    return 1;
  }
  printf("demo: OK, %s\n", argc == 5 ? "the process tree and the container ran on from their checkpoints"
                                    : "the restored tree ran on from its checkpoint");
  return 0;
}
