package checkpoint

// #cgo pkg-config: nucleus-checkpoint
// #include <stdlib.h>
// #include <nucleus/checkpoint.h>
import "C"

import (
	"fmt"
	"io/fs"
	"strings"
	"unsafe"
)

// Status is the C ABI's nc_status: what kind of failure an *Error is. The values are the ABI's
// and never change. A Status is an error itself, so errors.Is(err, StatusIntegrity) works, as does
// errors.Is(err, ErrIntegrity).
type Status int

// The statuses, with the C ABI's values.
const (
	StatusOK         Status = 0
	StatusInvalid    Status = 1 // a bad argument: empty, malformed, refused by an option
	StatusPermission Status = 2 // not root, or a file or folder with unsafe ownership or mode
	StatusNotFound   Status = 3 // no CRIU, no such process, no such checkpoint folder
	StatusState      Status = 4 // the runtime is busy with another dump or restore
	StatusCRIU       Status = 5 // CRIU failed, is too old, or a PID the checkpoint needs is taken
	StatusIntegrity  Status = 6 // the checkpoint does not verify: changed, swapped, unsigned
	StatusIO         Status = 7 // a system call failed (disk full, I/O error)
	StatusKey        Status = 8 // the HMAC key is missing, unreadable, not a key, or unsafe
	StatusNoMem      Status = 9
	StatusInternal   Status = 10 // a bug in the library
	// StatusUnsupported: this build of the library lacks the feature (registry images without
	// libcurl and libarchive). Since 0.3.
	StatusUnsupported Status = 11
	// StatusUnconfirmed: a migration's source could not learn the outcome after it told the
	// receiver to run the tree; the source's tree is left stopped, neither resumed (it may run
	// there) nor killed. Since 0.3.
	StatusUnconfirmed Status = 12
)

// The sentinels for errors.Is: errors.Is(err, ErrIntegrity) is true for every *Error whose Status
// is StatusIntegrity.
var (
	ErrInvalid     error = StatusInvalid
	ErrPermission  error = StatusPermission
	ErrNotFound    error = StatusNotFound
	ErrState       error = StatusState
	ErrCRIU        error = StatusCRIU
	ErrIntegrity   error = StatusIntegrity
	ErrIO          error = StatusIO
	ErrKey         error = StatusKey
	ErrNoMem       error = StatusNoMem
	ErrInternal    error = StatusInternal
	ErrUnsupported error = StatusUnsupported
	ErrUnconfirmed error = StatusUnconfirmed
)

var statusNames = [...]string{"NC_OK", "NC_E_INVALID", "NC_E_PERMISSION", "NC_E_NOT_FOUND", "NC_E_STATE",
	"NC_E_CRIU", "NC_E_INTEGRITY", "NC_E_IO", "NC_E_KEY", "NC_E_NOMEM", "NC_E_INTERNAL",
	"NC_E_UNSUPPORTED", "NC_E_UNCONFIRMED"}

// String is the C ABI's name of the status, as nc_status_name gives it: "NC_E_INTEGRITY".
func (s Status) String() string {
	if s >= 0 && int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("nc_status(%d)", int(s))
}

// Error makes a Status usable as a sentinel error.
func (s Status) Error() string { return s.String() }

// Error is a failure reported by the library: what went wrong and what to do (Message), and where
// CRIU's own run failed, its exit code and its Error lines. Every error this package returns is
// an *Error; use errors.As to read its fields and errors.Is to test its Status.
type Error struct {
	Status  Status
	Message string // the library's message: what is wrong and what to do next
	// CRIUExitCode is CRIU's exit code where a dump's or restore's run of CRIU failed, and -1
	// otherwise (CRIU killed or timed out, or a failure the library found itself).
	CRIUExitCode int
	// CRIULines are CRIU's own Error lines from its log (at most ten), with CRIUExitCode's
	// failures; the Message quotes them too.
	CRIULines []string
	// Err is what a Go callback (Options.Notify) returned to stop CRIU, or nil; errors.Is and
	// errors.As see it through Unwrap.
	Err error
}

// Error returns the status's name and the library's message.
func (e *Error) Error() string {
	if e.Message == "" {
		return e.Status.String()
	}
	return e.Status.String() + ": " + e.Message
}

// Is reports whether target is e's Status (StatusIntegrity, ErrIntegrity), an *Error with the
// same Status, fs.ErrNotExist for StatusNotFound, or fs.ErrPermission for StatusPermission.
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case Status:
		return e.Status == t
	case *Error:
		return t != nil && e.Status == t.Status
	}
	switch target {
	case fs.ErrNotExist:
		return e.Status == StatusNotFound
	case fs.ErrPermission:
		return e.Status == StatusPermission
	}
	return false
}

// Unwrap returns the error of a Go callback that stopped the operation, or nil.
func (e *Error) Unwrap() error { return e.Err }

// invalid is an argument refused before the library is called.
func invalid(format string, args ...any) error {
	return &Error{Status: StatusInvalid, Message: fmt.Sprintf(format, args...), CRIUExitCode: -1}
}

// errorOf reads a call's outcome from its nc_error (nil for NC_OK).
func errorOf(s C.nc_status, e *C.nc_error) error {
	if s == C.NC_OK {
		return nil
	}
	err := &Error{Status: Status(s), Message: C.GoString(C.nc_error_message(e)),
		CRIUExitCode: int(C.nc_error_criu_exit_code(e))}
	if lines := strings.TrimSuffix(C.GoString(C.nc_error_criu_lines(e)), "\n"); lines != "" {
		err.CRIULines = strings.Split(lines, "\n")
	}
	return err
}

// call runs one library call with an nc_error of its own, made for it and freed after it: its
// outcome is this call's alone, whichever OS thread the goroutine ran on, so no caller ever needs
// runtime.LockOSThread.
func call(f func(e *C.nc_error) C.nc_status) error {
	var e *C.nc_error
	if s := C.nc_error_new(&e); s != C.NC_OK {
		return &Error{Status: Status(s), Message: "cannot make an nc_error (out of memory)", CRIUExitCode: -1}
	}
	defer C.nc_error_free(e)
	return errorOf(f(e), e)
}

// cString copies s for C, refusing a NUL byte (C would see a shorter string). Free it with
// C.free.
func cString(what, s string) (*C.char, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return nil, invalid("%s %q contains a NUL byte", what, s)
	}
	return C.CString(s), nil
}

// cStrings copies every string for C at once; free releases them all.
type cStrings []*C.char

func (c *cStrings) add(what, s string) (*C.char, error) {
	p, err := cString(what, s)
	if err == nil {
		*c = append(*c, p)
	}
	return p, err
}

func (c *cStrings) free() {
	for _, p := range *c {
		C.free(unsafe.Pointer(p))
	}
	*c = nil
}

// arg is a string argument of a call, and what it is (for the message refusing a NUL byte).
type arg struct{ what, value string }

// withArgs runs f with args copied for C, in their order, and opts built into a handle (nil: the
// defaults); all are freed once f returns.
func withArgs(opts *Options, args []arg, f func(c []*C.char, o *cOptions) error) error {
	var strs cStrings
	defer strs.free()
	for _, a := range args {
		if _, err := strs.add(a.what, a.value); err != nil {
			return err
		}
	}
	o, err := opts.build()
	if err != nil {
		return err
	}
	defer o.free()
	return f(strs, o)
}
