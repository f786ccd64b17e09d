/* The C side of the Go package: trampolines from the library's callbacks to Go (their user
 * pointer is a runtime/cgo.Handle), and the pidfd calls a RestoredTree makes. */
#ifndef NUCLEUS_CHECKPOINT_GO_CALLBACKS_H
#define NUCLEUS_CHECKPOINT_GO_CALLBACKS_H

#include <stdint.h>

#include <nucleus/checkpoint.h>

/* nc_options_set_notify with the Go trampoline; handle identifies the Go callbacks. */
nc_status nc_go_set_notify(nc_options *opts, uintptr_t handle);
/* nc_verify_progress_e and nc_sign_as_e with the Go trampoline (handle 0: no progress). */
nc_status nc_go_verify_progress_e(const char *dir, uintptr_t handle, nc_error *err);
nc_status nc_go_sign_as_e(const char *dir, nc_signature_format format, nc_signing signing, uintptr_t handle,
                          nc_error *err);

/* 0, or -errno. */
int nc_go_pidfd_send_signal(int pidfd, int sig);
/* 1 once the process has exited, 0 if timeout_ms passed first (negative: no timeout), or -errno. */
int nc_go_pidfd_poll(int pidfd, int timeout_ms);
/* waitid(P_PIDFD, pidfd, WEXITED): 0 with its si_code and si_status, or -errno. */
int nc_go_pidfd_wait(int pidfd, int *code, int *status);

#endif
