/* A process tree moved to another host through the C ABI: the sender connects to the receiver,
 * then nc_migrate dumps the tree, keeps it stopped and streams the signed checkpoint; the receiver's
 * nc_receive imports it (verified chunk by chunk) and restores it. Once the receiver says the tree
 * is ready, the sender commits, the tree runs there and ends here; a failure before the commit
 * resumes it here. The README's "Migration" says what is checked and what the connection does not
 * protect. With --post-copy the tree's memory is left out of the checkpoint and follows the tree
 * once it runs there (the README's "Post-copy"; the sender needs fs.pipe-max-size >= 4194304); the
 * receiver takes either.
 *
 *   migrate send PID HOST:PORT WORK_DIR [--zstd] [--post-copy]   (WORK_DIR: the checkpoint folder
 *                                                                  made here, kept)
 *   migrate receive HOST:PORT STORE   (STORE: an existing folder; each migration is a new folder in it)
 *
 * ([ADDRESS]:PORT for IPv6.) As root, on both hosts; the receiver trusts the key the sender signs
 * with (the same HMAC key file, or the sender's Ed25519 public key: `nucleus-checkpoint trust add`).
 * Either exits 0, or prints the nc_status name and the library's message and exits with that
 * status's value. The receiver exits 0 too when the tree runs there but its last answer never
 * reached the sender (source_told: 0), and says on stderr to kill the sender's stopped copy. */
#define _GNU_SOURCE /* accept4 */
#include <nucleus/checkpoint.h>

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Prints a failed call's status and message (which names the call); returns the status, the exit code. */
static int fail(nc_status status, const char *message) {
  fprintf(stderr, "migrate: %s: %s\n", nc_status_name(status), message);
  return (int)status;
}

/* Splits HOST:PORT (or [ADDRESS]:PORT) into host, copied into its buffer, and a port from 1 to
 * 65535; 0 if it is not that shape or does not fit. */
static int split_host_port(const char *text, char *host, size_t host_size, char port[6]) {
  const char *colon = strrchr(text, ':');
  if (!colon || colon == text || strlen(colon + 1) > 5 || strspn(colon + 1, "0123456789") != strlen(colon + 1))
    return 0;
  long number = strtol(colon + 1, NULL, 10);
  const char *start = text, *end = colon;
  if (*start == '[' && end[-1] == ']') { /* [ADDRESS] */
    ++start;
    --end;
  }
  if (number < 1 || number > 65535 || start == end || (size_t)(end - start) >= host_size) return 0;
  memcpy(host, start, (size_t)(end - start));
  host[end - start] = '\0';
  snprintf(port, 6, "%ld", number);
  return 1;
}

/* The addresses HOST:PORT names in *found (for a listener, HOST may be "*": every address), to free
 * with freeaddrinfo; else a message on stderr and NC_E_INVALID (not HOST:PORT) or NC_E_NOT_FOUND. */
static nc_status resolve(const char *host_port, int passive, struct addrinfo **found) {
  char host[256], port[6];
  if (!split_host_port(host_port, host, sizeof host, port)) {
    fprintf(stderr, "migrate: '%s' is not HOST:PORT (a port from 1 to 65535; [ADDRESS]:PORT for IPv6)\n", host_port);
    return NC_E_INVALID;
  }
  struct addrinfo hints = {0};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  int rc = getaddrinfo(passive && strcmp(host, "*") == 0 ? NULL : host, port, &hints, found);
  if (rc != 0) {
    fprintf(stderr, "migrate: cannot resolve '%s': %s\n", host_port, gai_strerror(rc));
    return NC_E_NOT_FOUND;
  }
  return NC_OK;
}

enum socket_role { CONNECTING, LISTENING };

/* In *fd_out, a TCP socket connected to HOST:PORT (within 10 s), or listening there for one
 * connection; else a message on stderr and the status to exit with. */
static nc_status tcp_socket(const char *host_port, enum socket_role role, int *fd_out) {
  struct addrinfo *addresses = NULL;
  nc_status resolved = resolve(host_port, role == LISTENING, &addresses);
  if (resolved != NC_OK) return resolved;
  int fd = -1, error = 0;
  for (struct addrinfo *a = addresses; a && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      error = errno;
      continue;
    }
    int done;
    if (role == LISTENING) {
      int on = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on); /* a port just freed can be taken again */
      done = bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1) == 0;
    } else {
      struct timeval limit = {10, 0}, none = {0, 0}; /* Linux's connect waits at most SO_SNDTIMEO */
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
      done = connect(fd, a->ai_addr, a->ai_addrlen) == 0;
      if (done) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none); /* the library bounds the rest */
    }
    if (!done) {
      error = errno == EINPROGRESS ? ETIMEDOUT : errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(addresses);
  if (fd < 0 && role == LISTENING) fprintf(stderr, "migrate: cannot listen on %s: %s\n", host_port, strerror(error));
  if (fd < 0 && role == CONNECTING)
    fprintf(stderr, "migrate: cannot connect to the receiver at %s: %s (is `migrate receive %s` running there?); "
                    "nothing was dumped\n", host_port, strerror(error), host_port);
  *fd_out = fd;
  return fd < 0 ? NC_E_IO : NC_OK;
}

static int send_tree(nc_runtime *rt, nc_error *err, pid_t pid, const char *to, const char *work_dir, int zstd,
                     int post_copy) {
  nc_options *opts = NULL;
  if (nc_options_new_e(&opts, err) != NC_OK) return fail(nc_error_status(err), nc_error_message(err));
  /* Compressed or not, post-copy or not, the receiver reads either. */
  if (nc_options_set_compression(opts, zstd ? NC_COMPRESSION_ZSTD : NC_COMPRESSION_NONE) != NC_OK ||
      nc_options_set_post_copy(opts, post_copy) != NC_OK) {
    const nc_error *refused = nc_options_error(opts); /* a setter's outcome is kept in the handle */
    int rc = fail(nc_error_status(refused), nc_error_message(refused));
    nc_options_free(opts);
    return rc;
  }
  /* Connected first: with no receiver the tree is never stopped. */
  int fd = -1;
  nc_status connected = tcp_socket(to, CONNECTING, &fd);
  if (connected != NC_OK) {
    nc_options_free(opts);
    return (int)connected;
  }
  /* Dumps, streams, waits until the receiver restored it, commits: it runs on one side only. */
  nc_migration_report report = {0};
  report.size = sizeof report; /* so that a newer library fills only what this program knows */
  char id[32];
  snprintf(id, sizeof id, "%d", (int)pid); /* the container id recorded in the checkpoint's metadata */
  nc_status s = nc_migrate_e(rt, id, pid, work_dir, fd, opts, &report, err);
  close(fd);
  nc_options_free(opts);
  /* NC_E_UNCONFIRMED: the receiver was told to run it and did not confirm, so it may run there: it
   * stays stopped here, and the message says what to do. Any other failure: it runs on here. */
  if (s != NC_OK) return fail(s, nc_error_message(err));
  printf("restored_pid: %d\n", (int)report.restored_pid); /* as the receiver numbers it */
  printf("restored_dir: %s\n", report.restored_dir);
  printf("downtime_ms: %llu\n", report.downtime_ms); /* the tree was stopped all that time: */
  printf("dump_ms: %llu\n", report.dump_ms);         /* the dump and its signature, here, */
  printf("transfer_ms: %llu\n", report.transfer_ms); /* the stream imported and verified there, */
  printf("restore_ms: %llu\n", report.restore_ms);   /* and the restore there */
  printf("bytes_sent: %llu\n", report.bytes_sent);
  printf("rounds: %u\n", report.rounds);
  printf("rounds_reason: %s\n", report.rounds_reason);
  if (post_copy) { /* the memory that followed the tree through the page stream */
    printf("post_copy_ms: %llu\n", report.post_copy_ms);
    printf("pages_sent: %llu\n", report.pages_sent);
  }
  return 0;
}

static int receive_tree(nc_runtime *rt, nc_error *err, const char *listen_address, const char *store) {
  struct stat st;
  if (stat(store, &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "migrate: %s is not a folder: create the store first\n", store);
    return NC_E_NOT_FOUND;
  }
  int listener = -1;
  nc_status listening = tcp_socket(listen_address, LISTENING, &listener);
  if (listening != NC_OK) return (int)listening;
  fprintf(stderr, "migrate: listening on %s\n", listen_address);
  int fd;
  while ((fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC)) < 0 && errno == EINTR) {
  }
  int accept_error = errno;
  close(listener); /* one connection, one migration */
  if (fd < 0) {
    fprintf(stderr, "migrate: cannot accept a connection on %s: %s\n", listen_address, strerror(accept_error));
    return NC_E_IO;
  }
  /* Imports into a new folder in store and restores it, held stopped; tells the sender it is ready,
   * and runs it once the sender commits (then says "ok"); a failure is written back instead. */
  pid_t restored = 0;
  char *reply = NULL;
  int source_told = 0;
  nc_status s = nc_receive_ex_e(rt, fd, store, NULL, &restored, &reply, &source_told, err);
  close(fd);
  if (s != NC_OK) return fail(s, nc_error_message(err));
  printf("restored_pid: %d\n", (int)restored); /* it runs on, detached: reparented to the nearest subreaper */
  printf("reply: %s\n", reply);                /* the last line: {"ok":true,"pid":...,"dir":...} */
  printf("source_told: %d\n", source_told);    /* 0: that line never reached the sender */
  nc_free(reply);
  /* It runs here all the same, but the sender's copy stays stopped until someone ends it. */
  if (!source_told)
    fprintf(stderr, "migrate: the tree runs here as PID %d, but the sender was not told (the connection closed before "
                    "the last answer): its copy stays stopped there (NC_E_UNCONFIRMED): kill it there\n",
            (int)restored);
  return 0;
}

static int usage(void) {
  fprintf(stderr, "usage: migrate send PID HOST:PORT WORK_DIR [--zstd] [--post-copy]\n"
                  "       migrate receive HOST:PORT STORE\n");
  return NC_E_INVALID;
}

int main(int argc, char **argv) {
  int sending = argc >= 5 && argc <= 7 && strcmp(argv[1], "send") == 0;
  int receiving = argc == 4 && strcmp(argv[1], "receive") == 0;
  int zstd = 0, post_copy = 0;
  for (int i = 5; sending && i < argc; ++i) {
    int *flag = strcmp(argv[i], "--zstd") == 0 ? &zstd : strcmp(argv[i], "--post-copy") == 0 ? &post_copy : NULL;
    if (!flag || *flag) {
      fprintf(stderr, "migrate: %s option '%s' (the options are --zstd and --post-copy, each once)\n",
              flag ? "repeated" : "unknown", argv[i]);
      return usage();
    }
    *flag = 1;
  }
  if (!sending && !receiving) return usage();
  pid_t pid = 0;
  if (sending) {
    char *end = NULL;
    errno = 0;
    long n = strtol(argv[2], &end, 10);
    if (errno != 0 || end == argv[2] || *end != '\0' || n <= 0 || n > INT_MAX) {
      fprintf(stderr, "migrate: PID '%s' is not a process id\n", argv[2]);
      return usage();
    }
    pid = (pid_t)n;
  }
  /* Each _e call fills err with its outcome (status and message); unlike nc_last_error(), nothing
   * ties it to a thread. */
  nc_error *err = NULL;
  if (nc_error_new(&err) != NC_OK) return fail(NC_E_NOMEM, nc_last_error());
  /* Finds and checks CRIU. */
  nc_runtime *rt = NULL;
  int rc;
  if (nc_runtime_new_e(&rt, err) != NC_OK)
    rc = fail(nc_error_status(err), nc_error_message(err));
  else if (sending)
    rc = send_tree(rt, err, pid, argv[3], argv[4], zstd, post_copy);
  else
    rc = receive_tree(rt, err, argv[2], argv[3]);
  nc_runtime_free(rt);
  nc_error_free(err);
  return rc;
}
