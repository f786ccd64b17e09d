/* The migration benchmark's workload: one process holding MIB MiB of memory and rewriting
 * RATE MiB of it every second, a tenth every 100 ms, round and round, as a busy service does.
 *
 *   rewriter DIR MIB RATE
 *
 * Each page is half pseudo-random bytes and half zeros, so that zstd -1 has something to gain and
 * something to lose. It starts its own session, and writes DIR/ticks (the ticks so far) every
 * 100 ms, renamed into place, once its memory is filled: the benchmark waits for that file. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { page = 4096, ticks_per_second = 10 };

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* The first half of each page new pseudo-random bytes, the second half zeros. */
static void write_pages(unsigned char *memory, size_t from, size_t to, uint64_t *state) {
  for (size_t at = from; at < to; at += page) {
    for (size_t i = 0; i < page / 2; i += sizeof(uint64_t)) {
      const uint64_t word = splitmix64(state);
      memcpy(memory + at + i, &word, sizeof word);
    }
    memset(memory + at + page / 2, 0, page / 2);
  }
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s DIR MIB RATE\n", argv[0]);
    return 2;
  }
  const size_t size = (size_t)strtoul(argv[2], NULL, 10) << 20;
  const size_t per_tick = ((size_t)strtoul(argv[3], NULL, 10) << 20) / ticks_per_second / page * page;
  const int dir_fd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  unsigned char *memory = size ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : NULL;
  if (dir_fd < 0 || size == 0 || memory == MAP_FAILED || per_tick > size) {
    fprintf(stderr, "rewriter: cannot open %s or map %s MiB (of which %s MiB/s rewritten)\n", argv[1], argv[2], argv[3]);
    return 1;
  }
  setsid();
  uint64_t state = 1;
  write_pages(memory, 0, size, &state);
  size_t next = 0; /* where the next tick's rewrite starts */
  for (unsigned long tick = 0;; ++tick) {
    const int fd = openat(dir_fd, ".ticks.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
      dprintf(fd, "%lu\n", tick);
      close(fd);
      renameat(dir_fd, ".ticks.tmp", dir_fd, "ticks");
    }
    const size_t end = next + per_tick < size ? next + per_tick : size;
    write_pages(memory, next, end, &state);
    next = end == size ? 0 : end;
    const struct timespec pause = {0, 1000 * 1000 * 1000 / ticks_per_second};
    nanosleep(&pause, NULL);
  }
}
