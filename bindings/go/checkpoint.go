// Package checkpoint checkpoints and restores Linux process trees through CRIU with
// libnucleuscheckpoint, which signs every checkpoint over its whole folder (HMAC-SHA256, or
// Ed25519 for hosts that hold only the public key) and verifies it before CRIU reads a byte of it:
// a changed, swapped or unsigned checkpoint is never restored (ErrIntegrity). Checkpoints move
// between hosts as verified streams (Export, Import) or registry images (PushImage, PullImage),
// and running trees by migration (Runtime.Migrate, Runtime.Receive).
//
// It binds the library's C ABI (nucleus/checkpoint.h) through cgo and pkg-config
// (nucleus-checkpoint). Every call gets an nc_error of its own, so its *Error is exactly its own
// call's, whichever OS threads the goroutine ran on: nothing here needs runtime.LockOSThread.
//
// Dumping and restoring need root and CRIU; the key is found as the README says
// ($NUCLEUS_CHECKPOINT_HMAC_KEY_FILE first) and created by the first dump.
package checkpoint

// #include <stdlib.h>
// #include <string.h>
// #include <unistd.h>
// #include <nucleus/checkpoint.h>
// #include "callbacks.h"
import "C"

import (
	"math"
	"os"
	"runtime"
	"strconv"
	"sync"
	"unsafe"
)

// Runtime is a validated CRIU: New finds it, Close releases it. A runtime runs one dump or restore
// at a time; a second call meanwhile fails with ErrState rather than racing, so give each goroutine
// that dumps or restores a Runtime of its own (separate runtimes run in parallel). Close waits for
// a call in progress to return.
type Runtime struct {
	mu sync.RWMutex // read-held by every call, write-held by Close
	rt *C.nc_runtime
}

// New finds CRIU in the trusted paths (/usr/sbin, /usr/bin, /usr/local/sbin; PATH only when not
// root) and checks it: owned by root or the caller, not group- or world-writable, new enough.
func New() (*Runtime, error) {
	var rt *C.nc_runtime
	if err := call(func(e *C.nc_error) C.nc_status { return C.nc_runtime_new_e(&rt, e) }); err != nil {
		return nil, err
	}
	return newRuntime(rt), nil
}

// NewWithCRIU uses the CRIU binary at path, checked as New checks the one it finds.
func NewWithCRIU(path string) (*Runtime, error) {
	p, err := cString("CRIU path", path)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(p))
	var rt *C.nc_runtime
	if err := call(func(e *C.nc_error) C.nc_status { return C.nc_runtime_new_with_criu_e(p, &rt, e) }); err != nil {
		return nil, err
	}
	return newRuntime(rt), nil
}

func newRuntime(rt *C.nc_runtime) *Runtime {
	r := &Runtime{rt: rt}
	runtime.SetFinalizer(r, (*Runtime).Close)
	return r
}

// Close releases the runtime, once any call on it has returned. Closing again is a no-op.
func (r *Runtime) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rt != nil {
		C.nc_runtime_free(r.rt)
		r.rt = nil
		runtime.SetFinalizer(r, nil)
	}
	return nil
}

// use runs f with the runtime's handle, kept from Close until f returns.
func (r *Runtime) use(op string, f func(rt *C.nc_runtime) error) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.rt == nil {
		return invalid("%s: the runtime is closed", op)
	}
	return f(r.rt)
}

// Checkpoint dumps the process tree rooted at pid into dir (a new folder, or an empty one; created
// 0700), writes its metadata (id as its container id) and signs it. opts may be nil.
//
// CRIU freezes the tree while it dumps it. With opts.LeaveRunning it then runs on. Otherwise it
// stays stopped until the checkpoint is signed and in place, and is then killed; if anything fails
// before that it is resumed, so a failed dump never loses the process. A killed process that was
// this process's child stays a zombie, holding its PID, until it is reaped (Wait on its
// os.Process or exec.Cmd): reap it before restoring.
func (r *Runtime) Checkpoint(id string, pid int, dir string, opts *Options) error {
	return r.dump("checkpoint", id, pid, dir, opts, func(rt *C.nc_runtime, cid *C.char, cpid C.pid_t, cdir *C.char,
		o *C.nc_options, e *C.nc_error) C.nc_status {
		return C.nc_checkpoint_ex_e(rt, cid, cpid, cdir, o, e)
	})
}

// Predump saves the memory of the running tree rooted at pid into the new folder dir (absent or
// empty), signed (SignatureChunked or SignatureManifest) and marked a pre-dump; the tree runs on.
// A later Predump or Checkpoint with opts.Parent naming this folder (a sibling of theirs) writes
// only the memory changed since; restoring the last layer verifies the whole chain. A pre-dump is
// never restored alone. It needs a kernel that tracks changed memory (CONFIG_MEM_SOFT_DIRTY):
// elsewhere ErrCRIU, saying so, and nothing is made. opts may be nil. Since 0.3.
func (r *Runtime) Predump(id string, pid int, dir string, opts *Options) error {
	return r.dump("predump", id, pid, dir, opts, func(rt *C.nc_runtime, cid *C.char, cpid C.pid_t, cdir *C.char,
		o *C.nc_options, e *C.nc_error) C.nc_status {
		return C.nc_predump_e(rt, cid, cpid, cdir, o, e)
	})
}

// dump runs a dump-like call (op names it) of the tree rooted at pid into dir.
func (r *Runtime) dump(op, id string, pid int, dir string, opts *Options, f func(rt *C.nc_runtime, cid *C.char,
	cpid C.pid_t, cdir *C.char, o *C.nc_options, e *C.nc_error) C.nc_status) error {
	if pid < 0 || pid > math.MaxInt32 {
		return invalid("%s: %d is not a process ID", op, pid)
	}
	return withArgs(opts, []arg{{"container id", id}, {"checkpoint folder", dir}}, func(c []*C.char, o *cOptions) error {
		return r.use(op, func(rt *C.nc_runtime) error {
			return o.outcome(call(func(e *C.nc_error) C.nc_status { return f(rt, c[0], C.pid_t(pid), c[1], o.handle, e) }))
		})
	})
}

// Restore verifies dir and, only if it verifies, restores the tree; it returns as soon as the tree
// runs, with the restored root's PID and a pidfd for it. opts may be nil.
//
// A tree in this process's PID namespace gets its very PIDs back, so each must be free (held by a
// running process: ErrCRIU naming it; by a zombie: retried for up to 5 s). A container's tree (a PID
// namespace of its own) gets new host PIDs: PID is its root as this process sees it. Restored
// detached (the default), the tree is reparented to the nearest child subreaper or PID 1.
// What the tree shared with processes outside it (a pipe to this process as its stdout) comes back
// with nobody at the far end unless opts.InheritFDs hands in a new one.
func (r *Runtime) Restore(dir string, opts *Options) (*RestoredTree, error) {
	cdir, err := cString("checkpoint folder", dir)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cdir))
	o, err := opts.build()
	if err != nil {
		return nil, err
	}
	defer o.free()
	var tree *RestoredTree
	err = r.use("restore", func(rt *C.nc_runtime) error {
		var pid C.pid_t
		pidfd := C.int(-1)
		err := call(func(e *C.nc_error) C.nc_status {
			return C.nc_restore_pidfd_e(rt, cdir, o.handle, &pid, &pidfd, e)
		})
		if o.cb != nil {
			if pidfd >= 0 && o.cb.panicked {
				C.close(pidfd)
			}
			o.cb.rethrow()
			err = o.cb.withRefusal(err)
		}
		if err != nil {
			return err
		}
		tree = &RestoredTree{PID: int(pid)}
		if pidfd >= 0 {
			tree.PIDFD = os.NewFile(uintptr(pidfd), "pidfd:"+strconv.Itoa(int(pid)))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return tree, nil
}

// CRIUVersion is the version of the runtime's CRIU.
type CRIUVersion struct{ Major, Minor, Patch int }

func (v CRIUVersion) String() string {
	return strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) + "." + strconv.Itoa(v.Patch)
}

// CRIUVersion returns the version of the runtime's CRIU.
func (r *Runtime) CRIUVersion() (CRIUVersion, error) {
	var v CRIUVersion
	err := r.use("criu version", func(rt *C.nc_runtime) error {
		var major, minor, patch C.int
		err := call(func(e *C.nc_error) C.nc_status { return C.nc_criu_version_e(rt, &major, &minor, &patch, e) })
		v = CRIUVersion{int(major), int(minor), int(patch)}
		return err
	})
	return v, err
}

// CRIUCheck runs `criu check`: nil, or ErrCRIU with what CRIU said.
func (r *Runtime) CRIUCheck() error {
	return r.use("criu check", func(rt *C.nc_runtime) error {
		return call(func(e *C.nc_error) C.nc_status { return C.nc_criu_check_e(rt, e) })
	})
}

// Verify checks dir against its signature: nil, or ErrIntegrity (changed, swapped, unsigned,
// malformed), ErrNotFound, ErrKey, ... with a message naming what differs.
func Verify(dir string) error { return VerifyProgress(dir, nil) }

// VerifyProgress is Verify, calling progress (on this goroutine) with the running total of bytes
// hashed as it goes. progress may be nil.
func VerifyProgress(dir string, progress func(bytesHashed uint64)) error {
	cdir, err := cString("checkpoint folder", dir)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(cdir))
	return withProgress(progress, func(h C.uintptr_t, e *C.nc_error) C.nc_status {
		return C.nc_go_verify_progress_e(cdir, h, e)
	})
}

// Sign writes dir/checkpoint.hmac with the key store's HMAC key (created if there is none) in
// format (SignatureDefault: the seed format, as nc_sign), calling progress as it hashes (may be
// nil). Checkpoint signs by itself: this is for folders made otherwise.
func Sign(dir string, format SignatureFormat, progress func(bytesHashed uint64)) error {
	return SignAs(dir, format, SigningHMAC, progress)
}

// SignAs is Sign with the key store's key of kind signing (SigningDefault: HMAC), created if there
// is none. SigningEd25519 in the seed format, which is HMAC-only, is ErrInvalid. Since 0.3.
func SignAs(dir string, format SignatureFormat, signing Signing, progress func(bytesHashed uint64)) error {
	if format == SignatureDefault {
		format = SignatureSeed
	}
	if signing == SigningDefault {
		signing = SigningHMAC
	}
	cdir, err := cString("checkpoint folder", dir)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(cdir))
	return withProgress(progress, func(h C.uintptr_t, e *C.nc_error) C.nc_status {
		return C.nc_go_sign_as_e(cdir, C.nc_signature_format(format), C.nc_signing(signing), h, e)
	})
}

// SignerOf returns the kind of key that signed dir and, for Ed25519, the key's id (32 hex digits,
// as PublicKey gives it; "" for HMAC), from its checkpoint.hmac alone: nothing is verified.
// ErrIntegrity if dir is unsigned or its signature malformed. Since 0.3.
func SignerOf(dir string) (signing Signing, keyID string, err error) {
	cdir, err := cString("checkpoint folder", dir)
	if err != nil {
		return 0, "", err
	}
	defer C.free(unsafe.Pointer(cdir))
	var s C.nc_signing
	var id *C.char
	if err := call(func(e *C.nc_error) C.nc_status { return C.nc_signer_of_e(cdir, &s, &id, e) }); err != nil {
		return 0, "", err
	}
	return Signing(s), takeString(id), nil
}

// takeString copies a string the library allocated, and frees it ("" for NULL).
func takeString(s *C.char) string {
	if s == nil {
		return ""
	}
	defer C.nc_free(unsafe.Pointer(s))
	return C.GoString(s)
}

func withProgress(progress func(uint64), f func(h C.uintptr_t, e *C.nc_error) C.nc_status) error {
	var h C.uintptr_t
	cb := &callbacks{progress: progress}
	if progress != nil {
		handle, del := cb.handle()
		defer del()
		h = C.uintptr_t(handle)
	}
	err := call(func(e *C.nc_error) C.nc_status { return f(h, e) })
	cb.rethrow()
	return err
}

// SignatureFormatOf returns the format dir is signed in, from its checkpoint.hmac alone (nothing is
// verified): ErrIntegrity if it is unsigned or the signature is malformed.
func SignatureFormatOf(dir string) (SignatureFormat, error) {
	cdir, err := cString("checkpoint folder", dir)
	if err != nil {
		return 0, err
	}
	defer C.free(unsafe.Pointer(cdir))
	var f C.nc_signature_format
	if err := call(func(e *C.nc_error) C.nc_status { return C.nc_signature_format_of_e(cdir, &f, e) }); err != nil {
		return 0, err
	}
	return SignatureFormat(f), nil
}

// ReadMetadata returns the checkpoint's metadata.json, checked and re-serialised. It is only as
// trustworthy as the checkpoint: Verify first.
func ReadMetadata(dir string) ([]byte, error) {
	cdir, err := cString("checkpoint folder", dir)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cdir))
	var json *C.char
	if err := call(func(e *C.nc_error) C.nc_status { return C.nc_read_metadata_e(cdir, &json, e) }); err != nil {
		return nil, err
	}
	defer C.nc_free(unsafe.Pointer(json))
	return C.GoBytes(unsafe.Pointer(json), C.int(C.strlen(json))), nil
}

// KeyPath returns the path of the key store's key (whether or not it exists yet).
func KeyPath() (string, error) {
	var needed C.size_t
	if err := call(func(e *C.nc_error) C.nc_status { return C.nc_key_path_ex_e(nil, 0, &needed, e) }); err != nil {
		return "", err
	}
	for {
		size := needed
		if size == 0 {
			size = 1
		}
		buf := make([]byte, size)
		err := call(func(e *C.nc_error) C.nc_status {
			return C.nc_key_path_ex_e((*C.char)(unsafe.Pointer(&buf[0])), size, &needed, e)
		})
		if err == nil {
			return C.GoString((*C.char)(unsafe.Pointer(&buf[0]))), nil
		}
		if needed <= size { // a failure other than a path that grew meanwhile (its environment can change)
			return "", err
		}
	}
}

// Keygen creates the key store's key if there is none; created says whether this call did.
func Keygen() (created bool, err error) {
	var c C.int
	err = call(func(e *C.nc_error) C.nc_status { return C.nc_keygen_e(&c, e) })
	return c != 0, err
}

// KeygenEd25519 creates the key store's Ed25519 key if there is none (created says whether this
// call did) and trusts its public key on this host. The key is found as the README says
// ($NUCLEUS_CHECKPOINT_ED25519_KEY_FILE first, else beside the HMAC key). Since 0.3.
func KeygenEd25519() (created bool, err error) {
	var c C.int
	err = call(func(e *C.nc_error) C.nc_status { return C.nc_keygen_ed25519_e(&c, e) })
	return c != 0, err
}

// PublicKey returns the key store's Ed25519 public key: text, the content of its public key file
// for another host's TrustKey, and its key id (32 hex digits, as SignerOf reports it). ErrKey if
// there is no key. Since 0.3.
func PublicKey() (text, keyID string, err error) {
	var t, id *C.char
	if err := call(func(e *C.nc_error) C.nc_status { return C.nc_public_key_e(&t, &id, e) }); err != nil {
		return "", "", err
	}
	return takeString(t), takeString(id), nil
}

// TrustKey adds a public key (PublicKey's text, from the signing host) to this host's trust folder
// ($NUCLEUS_CHECKPOINT_TRUSTED_KEYS, else trusted-keys/ beside the HMAC key), creating it if
// needed: checkpoints that key signs verify here from then on. ErrKey for text that is not a
// public key. Since 0.3.
func TrustKey(publicKeyText string) error {
	text, err := cString("public key", publicKeyText)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(text))
	return call(func(e *C.nc_error) C.nc_status { return C.nc_trust_key_e(text, e) })
}

// SetMaxCheckpointBytes limits, process-wide, the bytes of files signing and verifying hash for one
// checkpoint (and to 1/16 of it the holes of sparse files); beyond either, ErrIntegrity before any
// byte is read. 0 goes back to the default: $NUCLEUS_CHECKPOINT_MAX_BYTES, else 1 TiB.
func SetMaxCheckpointBytes(bytes uint64) error {
	return call(func(e *C.nc_error) C.nc_status { return C.nc_set_max_checkpoint_bytes_e(C.ulonglong(bytes), e) })
}

// Version is the library's version as nc_version_string gives it ("0.1.0"): the installed
// library's, which may be newer than the one this package was built against.
func Version() string { return C.GoString(C.nc_version_string()) }
