package checkpoint

// #include <signal.h>
// #include "callbacks.h"
import "C"

import (
	"fmt"
	"os"
	"syscall"
	"time"
)

// RestoredTree is a tree Restore brought back: its root's PID, and a pidfd for the root, opened
// while the root was known to be the restored process, so that unlike the PID it can never come to
// mean another process. Close it when done; the tree runs on.
type RestoredTree struct {
	PID   int
	PIDFD *os.File
}

// withPidfd runs f with the pidfd, kept open meanwhile.
func (t *RestoredTree) withPidfd(op string, f func(fd C.int) C.int) error {
	if t == nil || t.PIDFD == nil {
		return os.NewSyscallError(op, syscall.EBADF)
	}
	raw, err := t.PIDFD.SyscallConn()
	if err != nil {
		return err
	}
	var r C.int
	if err := raw.Control(func(fd uintptr) { r = f(C.int(fd)) }); err != nil {
		return err
	}
	if r < 0 {
		return os.NewSyscallError(op, syscall.Errno(-r))
	}
	return nil
}

// Signal sends sig to the restored root through its pidfd (pidfd_send_signal): never to a process
// that took its PID since. The rest of the tree is not signalled: a tree whose root leads its own
// process group (setsid) is reached with syscall.Kill(-t.PID, sig) while the root is alive.
func (t *RestoredTree) Signal(sig syscall.Signal) error {
	return t.withPidfd("pidfd_send_signal", func(fd C.int) C.int { return C.nc_go_pidfd_send_signal(fd, C.int(sig)) })
}

// Exited waits up to timeout (negative: without limit) for the restored root to exit, and reports
// whether it has. It reaps nothing.
func (t *RestoredTree) Exited(timeout time.Duration) (bool, error) {
	ms := C.int(-1)
	if timeout >= 0 {
		ms = C.int(1<<31 - 1)
		if timeout < time.Duration(ms)*time.Millisecond {
			ms = C.int((timeout + time.Millisecond - 1) / time.Millisecond)
		}
	}
	var exited bool
	err := t.withPidfd("poll", func(fd C.int) C.int {
		r := C.nc_go_pidfd_poll(fd, ms)
		exited = r == 1
		return r
	})
	return exited, err
}

// Wait waits for the restored root to exit, reaps it and returns its status (waitid P_PIDFD). The
// root must be this process's child: restored with RestoreChild, or restored detached while this
// process is the child subreaper it was reparented to; otherwise ECHILD.
func (t *RestoredTree) Wait() (syscall.WaitStatus, error) {
	var code, status C.int
	if err := t.withPidfd("waitid", func(fd C.int) C.int { return C.nc_go_pidfd_wait(fd, &code, &status) }); err != nil {
		return 0, err
	}
	// In wait(2)'s encoding, which syscall.WaitStatus reads.
	switch code {
	case C.CLD_EXITED:
		return syscall.WaitStatus((int(status) & 0xff) << 8), nil
	case C.CLD_KILLED:
		return syscall.WaitStatus(int(status) & 0x7f), nil
	case C.CLD_DUMPED:
		return syscall.WaitStatus(int(status)&0x7f | 0x80), nil
	}
	return 0, fmt.Errorf("waitid: unexpected si_code %d", int(code))
}

// Close closes the pidfd. The tree runs on.
func (t *RestoredTree) Close() error {
	if t == nil || t.PIDFD == nil {
		return nil
	}
	return t.PIDFD.Close()
}
