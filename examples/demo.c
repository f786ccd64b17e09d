/* The main job, end to end through the C ABI: checkpoint a running process tree, show the signed
 * checkpoint, show that a tampered copy is refused, restore the original and show it running on.
 *
 *   demo COUNTER WORKDIR      (as root; COUNTER is the sample workload, examples/counter) */
#define _GNU_SOURCE
#include <nucleus/checkpoint.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char checkpoint_dir[4096], tampered_dir[4096], counter_dir[4096];

static void die(const char *what, nc_status s) {
  fprintf(stderr, "demo: %s failed: %s: %s\n", what, nc_status_name(s), nc_last_error());
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

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s COUNTER WORKDIR\n", argv[0]);
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
  nc_runtime_free(rt);
  printf("%s\n", ok ? "demo: OK, the restored tree ran on from its checkpoint" : "demo: FAILED, counters did not move");
  return ok ? 0 : 1;
}
