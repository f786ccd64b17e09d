#define _GNU_SOURCE
#include "callbacks.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "_cgo_export.h"

static int nc_go_notify(nc_notification what, pid_t pid, void *user) {
  return ncGoNotify((int)what, (int)pid, (uintptr_t)user);
}

static void nc_go_progress(unsigned long long bytes, void *user) { ncGoProgress(bytes, (uintptr_t)user); }

nc_status nc_go_set_notify(nc_options *opts, uintptr_t handle) {
  return nc_options_set_notify(opts, handle ? nc_go_notify : NULL, (void *)handle);
}

nc_status nc_go_verify_progress_e(const char *dir, uintptr_t handle, nc_error *err) {
  return nc_verify_progress_e(dir, handle ? nc_go_progress : NULL, (void *)handle, err);
}

nc_status nc_go_sign_as_e(const char *dir, nc_signature_format format, nc_signing signing, uintptr_t handle,
                          nc_error *err) {
  return nc_sign_as_e(dir, format, signing, handle ? nc_go_progress : NULL, (void *)handle, err);
}

int nc_go_pidfd_send_signal(int pidfd, int sig) {
  return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) == 0 ? 0 : -errno;
}

int nc_go_pidfd_poll(int pidfd, int timeout_ms) {
  struct pollfd p = {pidfd, POLLIN, 0};
  int n;
  do n = poll(&p, 1, timeout_ms);
  while (n < 0 && errno == EINTR && timeout_ms < 0);
  if (n < 0) return -errno;
  return n > 0 ? 1 : 0;
}

int nc_go_pidfd_wait(int pidfd, int *code, int *status) {
  siginfo_t info;
  memset(&info, 0, sizeof info);
  int r;
  do r = waitid(P_PIDFD, (id_t)pidfd, &info, WEXITED);
  while (r < 0 && errno == EINTR);
  if (r < 0) return -errno;
  *code = info.si_code;
  *status = info.si_status;
  return 0;
}
