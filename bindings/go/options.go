package checkpoint

// #include <stdlib.h>
// #include <nucleus/checkpoint.h>
// #include "callbacks.h"
import "C"

import (
	"math"
	"sort"
	"strconv"
	"time"
	"unsafe"
)

// CgroupMode is CRIU's --manage-cgroups mode.
type CgroupMode int

const (
	CgroupDefault CgroupMode = 0 // CRIU's default
	CgroupSoft    CgroupMode = 1
	CgroupFull    CgroupMode = 2
	CgroupStrict  CgroupMode = 3
	CgroupIgnore  CgroupMode = 4
)

// RestoreMode says whose child the restored tree is.
type RestoreMode int

const (
	// RestoreDetached reparents the restored tree to the nearest child subreaper or PID 1 (the default).
	RestoreDetached RestoreMode = 0
	// RestoreChild makes the restored root the caller's child (CRIU's --restore-sibling): wait for
	// it with RestoredTree.Wait.
	RestoreChild RestoreMode = 1
)

// SignatureFormat is a format of checkpoint.hmac (the README specifies them).
type SignatureFormat int

const (
	SignatureDefault  SignatureFormat = 0 // the library's default: SignatureManifest
	SignatureSeed     SignatureFormat = 1 // nucleus-container 0.3.3's serial HMAC
	SignatureChunked  SignatureFormat = 2 // chunked digests bound by one HMAC
	SignatureManifest SignatureFormat = 3 // chunked, every chunk's digest listed
)

func (f SignatureFormat) String() string {
	switch f {
	case SignatureDefault:
		return "default"
	case SignatureSeed:
		return "seed"
	case SignatureChunked:
		return "chunked"
	case SignatureManifest:
		return "manifest"
	}
	return "SignatureFormat(" + strconv.Itoa(int(f)) + ")"
}

// Signing is the kind of key that signs a checkpoint (Options.Signing, SignAs, SignerOf).
type Signing int

const (
	SigningDefault Signing = 0 // the library's default: SigningHMAC
	// SigningHMAC is the key store's HMAC key: whoever verifies can also sign.
	SigningHMAC Signing = 1
	// SigningEd25519 is the key store's Ed25519 key: verified with its public key alone, by a host
	// that trusts it (TrustKey). It needs SignatureChunked or SignatureManifest. Since 0.3.
	SigningEd25519 Signing = 2
)

func (s Signing) String() string {
	switch s {
	case SigningDefault:
		return "default"
	case SigningHMAC:
		return "hmac"
	case SigningEd25519:
		return "ed25519"
	}
	return "Signing(" + strconv.Itoa(int(s)) + ")"
}

// Compression is how Export compresses its stream; Import reads either. Since 0.3.
type Compression int

const (
	CompressionNone Compression = 0 // the default
	CompressionZstd Compression = 1 // zstd level 1
)

// NetworkLock is how CRIU keeps a network namespace's traffic out while it works.
type NetworkLock int

const (
	NetworkLockDefault  NetworkLock = 0 // CRIU's default (iptables)
	NetworkLockIPTables NetworkLock = 1
	NetworkLockNFTables NetworkLock = 2
	NetworkLockSkip     NetworkLock = 3 // the caller keeps the network quiet itself
)

// Notification is one of CRIU's notifications (its action scripts), given to Options.Notify.
type Notification int

const (
	NotifyPreDump             Notification = 1
	NotifyPostDump            Notification = 2 // the images are written; the tree is still frozen
	NotifyPreRestore          Notification = 3
	NotifyPostRestore         Notification = 4 // restored, not yet running
	NotifyNetworkLock         Notification = 5
	NotifyNetworkUnlock       Notification = 6
	NotifySetupNamespaces     Notification = 7 // the namespaces exist: configure them
	NotifyPostSetupNamespaces Notification = 8
	NotifyPreResume           Notification = 9 // the last moment before the restored tree runs
	NotifyPostResume          Notification = 10
	NotifyStatusReady         Notification = 11
)

var notificationNames = map[Notification]string{NotifyPreDump: "pre-dump", NotifyPostDump: "post-dump",
	NotifyPreRestore: "pre-restore", NotifyPostRestore: "post-restore", NotifyNetworkLock: "network-lock",
	NotifyNetworkUnlock: "network-unlock", NotifySetupNamespaces: "setup-namespaces",
	NotifyPostSetupNamespaces: "post-setup-namespaces", NotifyPreResume: "pre-resume",
	NotifyPostResume: "post-resume", NotifyStatusReady: "status-ready"}

// String is CRIU's name of the notification: "pre-resume".
func (n Notification) String() string {
	if name, ok := notificationNames[n]; ok {
		return name
	}
	return "Notification(" + strconv.Itoa(int(n)) + ")"
}

// InheritFD hands the restored tree one of this process's open descriptors for what the dump
// recorded as Key: "stdin", "stdout", "stderr" for what the tree's root held at 0, 1, 2, or CRIU's
// own form ("pipe:[12345]", "socket:[678]", an external namespace's key). FD must stay open until
// Restore returns (for an *os.File f: int(f.Fd()), and keep f reachable until then).
type InheritFD struct {
	FD  int
	Key string
}

// Options are CRIU's options for one Checkpoint or Restore. The zero value (and a nil *Options)
// is the library's defaults: shell-job on, log level 4, no timeout, detached and streamed restore,
// container detection on, the manifest signature. Each field says whether it applies to the dump,
// the restore or both; one set for an action it does not apply to is checked, then ignored there.
// What a restore must repeat of the dump's options is recorded in the signed metadata and applied
// by a plain restore. Values are checked by the library: a refused one fails the call with
// ErrInvalid, naming the option, before anything else is done.
//
// Options are only read by a call, never kept: one value may serve several calls at once.
type Options struct {
	LeaveRunning   bool // dump: the tree runs on after the dump (otherwise it is killed once signed)
	NoShellJob     bool // both: turn CRIU's --shell-job off (on by default)
	TCPEstablished bool // both: checkpoint established TCP connections
	TCPClose       bool // both: restore connected TCP sockets closed
	ExtUnixSk      bool // both: allow UNIX sockets connected outside the tree
	FileLocks      bool // both: checkpoint file locks
	ManageCgroups  CgroupMode
	// External are CRIU's --external specs: at dump "mnt[MOUNTPOINT]:KEY", "net[INODE]:KEY",
	// "pid[INODE]:KEY", "dev[MAJOR/MINOR]:KEY"; at restore "mnt[KEY]:HOST_PATH", "dev[KEY]:HOST_PATH".
	External []string
	WorkDir  string // both: the folder for CRIU's logs
	// LogLevel is CRIU's log level (both), 1 to 4; 0 keeps the default, 4, so CRIU's level 0
	// cannot be chosen here.
	LogLevel int
	// Timeout kills CRIU once it has passed and fails the call (both; 0: none). Rounded up to a
	// millisecond.
	Timeout time.Duration

	RestoreMode   RestoreMode // restore
	NoImageStream bool        // restore: verify the folder whole, then let CRIU read it, instead of streaming
	// StartTicks is the dumped process's start time (field 22 of /proc/PID/stat) as the caller
	// recorded it (dump): if the PID now belongs to a process that started at another time, the
	// dump is refused with ErrNotFound. 0: not checked.
	StartTicks      uint64
	SignatureFormat SignatureFormat // dump: the format to sign in; SignatureDefault: the manifest
	// Signing is the key that signs (dump and Predump; since 0.3): SigningEd25519 makes a
	// checkpoint that hosts holding only its public key verify.
	Signing Signing

	// Pre-dump chains (since 0.3; the README's "Pre-dump chains"). Parent is the pre-dump, a folder
	// beside the new one, that a dump or Predump writes only the changes since; "": none.
	Parent string
	// AutoDedup punches the pages the new layer holds out of its parents' images (dump and Predump
	// with a Parent), re-signing each parent afterwards.
	AutoDedup bool

	Compression      Compression // Export, ExportChain and Migrate (since 0.3)
	InsecureRegistry bool        // PushImage and PullImage: plain http, for localhost or a lab (since 0.3)
	// ReceiverHas are the layers the receiver of ExportChain holds already (since 0.3), named in the
	// stream but not sent: each the SHA-256 of the layer's checkpoint.hmac as 64 lowercase hex
	// digits, as sha256sum shows it; at most 64.
	ReceiverHas []string
	// ReplyTimeout bounds Migrate (since 0.3): how long its stream may stall unacknowledged and,
	// once sent, how long each of the receiver's answers may take (its import and restore); and
	// Receive: how long the source may take to start its stream and may stall it. 0: 5 minutes.
	// Rounded up to a millisecond.
	ReplyTimeout time.Duration
	// PostCopy makes Migrate post-copy (since 0.3; the README's "Post-copy"): the tree's private
	// memory is left out of the checkpoint and follows the tree once it runs on the receiver, so
	// the downtime no longer grows with memory. Needs fs.pipe-max-size >= 4194304 on the source
	// (ErrUnsupported otherwise). Until every page is in, a failure kills the receiver's copy and
	// returns ErrUnconfirmed with the source's copy stopped, to resume.
	PostCopy bool
	// ReceiverKey pins the receiver of a Migrate signed with SigningEd25519 (since 0.3; the
	// README's "Answers"): the text of its public key file (PublicKey there, or `keygen --ed25519
	// --public-key-out`), whose proofs its answers must carry. A receiver greeting with another key
	// is refused with ErrIntegrity before anything is dumped; this key need not be trusted here
	// (TrustKey). Text that is no public key: ErrKey. "": any key this host trusts may answer.
	ReceiverKey string

	// Containers (CRIU's names; see checkpoint.h).
	NoDetectContainer bool        // both: do not find and record the container's rootfs, mounts, namespaces
	Root              string      // restore: the container's rootfs (--root); "": the recorded one
	InheritFDs        []InheritFD // restore
	JoinNS            []string    // restore: "NS:PID", "NS:/PATH", "user:PID,UID,GID" (--join-ns)
	EmptyNS           []string    // restore: "net" (--empty-ns)
	NetworkLock       NetworkLock // dump
	CgroupRoots       []string    // both: "/PATH", "CONTROLLER:/PATH", ":/PATH" (--cgroup-root)
	CgroupYard        string      // both: an already mounted cgroup yard
	CgroupProps       string      // dump: CRIU's --cgroup-props YAML
	FreezeCgroup      string      // dump: freeze through this cgroup
	LSMProfile        string      // restore: "apparmor:NAME", "selinux:CONTEXT", "none:"
	LSMMountContext   string      // restore
	SkipInFlight      bool        // dump
	LinkRemap         bool        // dump
	GhostLimit        uint64      // dump: 0: CRIU's default
	GhostFiemap       bool        // dump
	EvasiveDevices    bool        // both
	FileValidation    string      // both: "filesize" or "buildid"; "": CRIU's default
	UseDefaultConfig  bool        // both: let CRIU read its default.conf files

	// ExpectedContainerID is the container the checkpoint must have been made for (restore):
	// another container's checkpoint is refused with ErrIntegrity, naming both. "": not checked.
	ExpectedContainerID string
	// ExpectAnnotations must each be in the checkpoint's signed annotations with exactly this
	// value (restore), or it is refused with ErrIntegrity: a generation bumped at every dump binds
	// freshness.
	ExpectAnnotations map[string]string
	// Annotations are recorded in the signed metadata.json (dump; UTF-8, values up to 64 KiB).
	Annotations map[string]string
	// RuntimeFiles are written as runtime/NAME into the checkpoint before it is signed (dump;
	// plain file names, up to 1 MiB each).
	RuntimeFiles map[string][]byte

	// Notify is called for CRIU's notifications (both), on the goroutine that called Checkpoint or
	// Restore, while CRIU waits: pid is the tree's root as this process sees it once CRIU knows it
	// (0 before). A non-nil error stops CRIU: a dump fails and the tree runs on; a restore fails
	// and what CRIU made is killed (at NotifyPreResume, before it ever runs). The call's *Error then
	// wraps the callback's error. Notifications not listed here may be added later: return nil
	// for those. It must not call Close on the runtime that is running.
	Notify func(what Notification, pid int) error
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// cOptions is an nc_options handle built from Options for one call.
type cOptions struct {
	handle *C.nc_options
	cb     *callbacks
	free   func()
}

// outcome is a call's error with what its callbacks did: a callback's panic raised again here, on
// the caller's goroutine, and what notify returned to stop CRIU attached.
func (o *cOptions) outcome(err error) error {
	if o.cb != nil {
		o.cb.rethrow()
		err = o.cb.withRefusal(err)
	}
	return err
}

// build makes the nc_options handle for one call (nil for nil Options): its setters are called
// in the fields' order, and the first one refused fails it with the library's message. The
// caller frees it with free() once the call has returned.
func (o *Options) build() (*cOptions, error) {
	if o == nil {
		return &cOptions{free: func() {}}, nil
	}
	var handle *C.nc_options
	if err := call(func(e *C.nc_error) C.nc_status { return C.nc_options_new_e(&handle, e) }); err != nil {
		return nil, err
	}
	out := &cOptions{handle: handle, cb: &callbacks{notify: o.Notify}}
	var strs cStrings
	deleteHandle := func() {}
	out.free = func() {
		C.nc_options_free(handle)
		deleteHandle()
	}
	defer strs.free()

	var failed error
	// set records the first refused setter's outcome, from the handle's own nc_error.
	set := func(s C.nc_status) {
		if failed == nil && s != C.NC_OK {
			failed = errorOf(s, C.nc_options_error(handle))
		}
	}
	str := func(what, s string) *C.char {
		p, err := strs.add(what, s)
		if err != nil && failed == nil {
			failed = err
		}
		return p
	}
	setStr := func(what, value string, setter func(*C.char) C.nc_status) {
		if value == "" || failed != nil {
			return
		}
		if p := str(what, value); p != nil {
			set(setter(p))
		}
	}

	if o.LeaveRunning {
		set(C.nc_options_set_leave_running(handle, 1))
	}
	if o.NoShellJob {
		set(C.nc_options_set_shell_job(handle, 0))
	}
	if o.TCPEstablished {
		set(C.nc_options_set_tcp_established(handle, 1))
	}
	if o.TCPClose {
		set(C.nc_options_set_tcp_close(handle, 1))
	}
	if o.ExtUnixSk {
		set(C.nc_options_set_ext_unix_sk(handle, 1))
	}
	if o.FileLocks {
		set(C.nc_options_set_file_locks(handle, 1))
	}
	if o.ManageCgroups != CgroupDefault {
		set(C.nc_options_set_manage_cgroups(handle, C.nc_cgroup_mode(o.ManageCgroups)))
	}
	for _, spec := range o.External {
		if failed == nil {
			p := str("external", spec)
			if p != nil {
				set(C.nc_options_add_external(handle, p))
			}
		}
	}
	setStr("work dir", o.WorkDir, func(p *C.char) C.nc_status { return C.nc_options_set_work_dir(handle, p) })
	if o.LogLevel != 0 && failed == nil {
		level := o.LogLevel
		if level < math.MinInt32 || level > math.MaxInt32 {
			level = -1 // refused by the library, with its message
		}
		set(C.nc_options_set_log_level(handle, C.int(level)))
	}
	// setMilliseconds gives a positive duration, rounded up to a millisecond, to a setter.
	setMilliseconds := func(what string, d time.Duration, setter func(C.uint) C.nc_status) {
		if d == 0 || failed != nil {
			return
		}
		ms := d / time.Millisecond
		if d%time.Millisecond > 0 {
			ms++
		}
		if d < 0 || ms > math.MaxUint32 {
			failed = invalid("%s %v: must be positive and at most %v", what, d, time.Duration(math.MaxUint32)*time.Millisecond)
		} else {
			set(setter(C.uint(ms)))
		}
	}
	setMilliseconds("Timeout", o.Timeout, func(ms C.uint) C.nc_status { return C.nc_options_set_timeout_ms(handle, ms) })
	if o.RestoreMode != RestoreDetached {
		set(C.nc_options_set_restore_mode(handle, C.nc_restore_mode(o.RestoreMode)))
	}
	if o.NoImageStream {
		set(C.nc_options_set_image_stream(handle, 0))
	}
	if o.StartTicks != 0 {
		set(C.nc_options_set_start_ticks(handle, C.ulonglong(o.StartTicks)))
	}
	if o.SignatureFormat != SignatureDefault {
		set(C.nc_options_set_signature_format(handle, C.nc_signature_format(o.SignatureFormat)))
	}
	if o.Signing != SigningDefault {
		set(C.nc_options_set_signing(handle, C.nc_signing(o.Signing)))
	}
	setStr("parent", o.Parent, func(p *C.char) C.nc_status { return C.nc_options_set_parent(handle, p) })
	if o.AutoDedup {
		set(C.nc_options_set_auto_dedup(handle, 1))
	}
	if o.Compression != CompressionNone {
		set(C.nc_options_set_compression(handle, C.nc_compression(o.Compression)))
	}
	if o.InsecureRegistry {
		set(C.nc_options_set_insecure_registry(handle, 1))
	}
	for _, sha := range o.ReceiverHas {
		if p := str("receiver-has", sha); p != nil && failed == nil {
			set(C.nc_options_add_receiver_has(handle, p))
		}
	}
	setMilliseconds("ReplyTimeout", o.ReplyTimeout, func(ms C.uint) C.nc_status {
		return C.nc_options_set_reply_timeout_ms(handle, ms)
	})
	if o.PostCopy {
		set(C.nc_options_set_post_copy(handle, 1))
	}
	setStr("receiver key", o.ReceiverKey, func(p *C.char) C.nc_status {
		return C.nc_options_set_receiver_key(handle, p)
	})
	if o.NoDetectContainer {
		set(C.nc_options_set_detect_container(handle, 0))
	}
	setStr("root", o.Root, func(p *C.char) C.nc_status { return C.nc_options_set_root(handle, p) })
	for _, fd := range o.InheritFDs {
		if failed != nil {
			break
		}
		if fd.FD < math.MinInt32 || fd.FD > math.MaxInt32 {
			failed = invalid("InheritFDs: descriptor %d is not open in this process", fd.FD)
			break
		}
		// An empty key is refused by the library, naming the option.
		if p := str("inherit-fd key", fd.Key); p != nil {
			set(C.nc_options_add_inherit_fd(handle, C.int(fd.FD), p))
		}
	}
	for _, spec := range o.JoinNS {
		if p := str("join-ns", spec); p != nil && failed == nil {
			set(C.nc_options_add_join_ns(handle, p))
		}
	}
	for _, ns := range o.EmptyNS {
		if p := str("empty-ns", ns); p != nil && failed == nil {
			set(C.nc_options_add_empty_ns(handle, p))
		}
	}
	if o.NetworkLock != NetworkLockDefault {
		set(C.nc_options_set_network_lock(handle, C.nc_network_lock(o.NetworkLock)))
	}
	for _, spec := range o.CgroupRoots {
		if p := str("cgroup-root", spec); p != nil && failed == nil {
			set(C.nc_options_add_cgroup_root(handle, p))
		}
	}
	setStr("cgroup yard", o.CgroupYard, func(p *C.char) C.nc_status { return C.nc_options_set_cgroup_yard(handle, p) })
	setStr("cgroup props", o.CgroupProps, func(p *C.char) C.nc_status { return C.nc_options_set_cgroup_props(handle, p) })
	setStr("freeze cgroup", o.FreezeCgroup, func(p *C.char) C.nc_status { return C.nc_options_set_freeze_cgroup(handle, p) })
	setStr("LSM profile", o.LSMProfile, func(p *C.char) C.nc_status { return C.nc_options_set_lsm_profile(handle, p) })
	setStr("LSM mount context", o.LSMMountContext, func(p *C.char) C.nc_status {
		return C.nc_options_set_lsm_mount_context(handle, p)
	})
	if o.SkipInFlight {
		set(C.nc_options_set_skip_in_flight(handle, 1))
	}
	if o.LinkRemap {
		set(C.nc_options_set_link_remap(handle, 1))
	}
	if o.GhostLimit != 0 {
		set(C.nc_options_set_ghost_limit(handle, C.ulonglong(o.GhostLimit)))
	}
	if o.GhostFiemap {
		set(C.nc_options_set_ghost_fiemap(handle, 1))
	}
	if o.EvasiveDevices {
		set(C.nc_options_set_evasive_devices(handle, 1))
	}
	setStr("file validation", o.FileValidation, func(p *C.char) C.nc_status {
		return C.nc_options_set_file_validation(handle, p)
	})
	if o.UseDefaultConfig {
		set(C.nc_options_set_use_default_config(handle, 1))
	}
	setStr("expected container id", o.ExpectedContainerID, func(p *C.char) C.nc_status {
		return C.nc_options_set_expected_container_id(handle, p)
	})
	for _, name := range sortedKeys(o.ExpectAnnotations) {
		n, v := str("annotation name", name), str("annotation value", o.ExpectAnnotations[name])
		if n != nil && v != nil && failed == nil {
			set(C.nc_options_expect_annotation(handle, n, v))
		}
	}
	for _, name := range sortedKeys(o.Annotations) {
		n, v := str("annotation name", name), str("annotation value", o.Annotations[name])
		if n != nil && v != nil && failed == nil {
			set(C.nc_options_add_annotation(handle, n, v))
		}
	}
	for _, name := range sortedKeys(o.RuntimeFiles) {
		data := o.RuntimeFiles[name]
		if n := str("runtime file name", name); n != nil && failed == nil {
			var p unsafe.Pointer
			if len(data) > 0 {
				p = unsafe.Pointer(&data[0]) // no Go pointers in it; the library copies the bytes
			}
			set(C.nc_options_add_runtime_file(handle, n, p, C.size_t(len(data))))
		}
	}
	if o.Notify != nil && failed == nil {
		h, del := out.cb.handle()
		deleteHandle = del
		set(C.nc_go_set_notify(handle, C.uintptr_t(h)))
	}
	if failed != nil {
		out.free()
		return nil, failed
	}
	return out, nil
}
