/* A sample workload: a process tree of two (a parent and its child), each counting up in a file
 * every 50 ms: DIR/parent and DIR/child. It starts its own session, so the whole tree is one
 * process group. Restored from a checkpoint, both counters go on from where they stopped.
 *
 *   counter DIR [MIB [private]]
 *
 * With MIB, the parent fills MIB MiB of memory, for large dumps: before it forks, so the child
 * shares it copy-on-write (and CRIU writes it once for each), or with `private` after, so only
 * the parent has it. On SIGUSR1 each process that holds it checks it and writes how many of its
 * pages are not as filled to DIR/NAME.verify (0: all of them are): a restore that lost memory, or
 * handed out zero pages in its place, shows there. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Kept where the compiler must assume it is read, so the filled memory is never optimised away. */
static char *volatile filled;
static size_t filled_size;
static volatile sig_atomic_t verify_asked;

static void ask_verify(int sig) {
  (void)sig;
  verify_asked = 1;
}

static void write_count(int dir_fd, const char *name, unsigned long n) {
  char tmp[80]; /* room for the longest name, NAME.verify */
  snprintf(tmp, sizeof tmp, ".%s.tmp", name);
  int fd = openat(dir_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) {
    dprintf(fd, "%lu\n", n);
    close(fd);
    renameat(dir_fd, tmp, dir_fd, name); /* readers never see a half-written number */
  }
}

static void count_forever(int dir_fd, const char *name) {
  for (unsigned long n = 0;; ++n) {
    if (verify_asked && filled) {
      verify_asked = 0;
      unsigned long bad = 0;
      for (size_t i = 0; i < filled_size; i += 4096) bad += filled[i] != (char)(i >> 12);
      char verify[32];
      snprintf(verify, sizeof verify, "%s.verify", name);
      write_count(dir_fd, verify, bad);
    }
    write_count(dir_fd, name, n);
    struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
}

/* size bytes of memory that is really there: a byte written in every page. */
static void fill(size_t size) {
  char *memory = size ? malloc(size) : NULL;
  for (size_t i = 0; memory && i < size; i += 4096) memory[i] = (char)(i >> 12);
  filled = memory;
  filled_size = memory ? size : 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 4 || (argc == 4 && strcmp(argv[3], "private") != 0)) {
    fprintf(stderr, "usage: %s DIR [MIB [private]]\n", argv[0]);
    return 2;
  }
  size_t size = argc >= 3 ? (size_t)strtoul(argv[2], NULL, 10) << 20 : 0;
  int shared = argc != 4;
  if (shared) fill(size);
  int dir_fd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) {
    perror(argv[1]);
    return 1;
  }
  signal(SIGUSR1, ask_verify);
  setsid();
  pid_t child = fork();
  if (child < 0) {
    perror("fork");
    return 1;
  }
  if (!shared && child != 0) fill(size);
  count_forever(dir_fd, child == 0 ? "child" : "parent");
}
