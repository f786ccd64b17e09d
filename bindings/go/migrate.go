package checkpoint

// #include <nucleus/checkpoint.h>
import "C"

import (
	"syscall"
	"time"
	"unsafe"
)

// MigrationReport is what Migrate measured, and what the receiver said it did
// (nc_migration_report). Since 0.3.
type MigrationReport struct {
	Downtime time.Duration // from the dump's start to the receiver's reply: the tree was stopped throughout
	Dump     time.Duration // the dump, its signature and commit, here
	Transfer time.Duration // the stream sent and imported (verified) by the receiver
	Restore  time.Duration // the receiver's restore
	// BytesSent are the stream's bytes the receiver acknowledged (TCP; 0 on other sockets).
	BytesSent uint64
	// Rounds are the pre-dump rounds before the final dump (0: none are made yet), and
	// RoundsReason why.
	Rounds       int
	RoundsReason string
	RestoredPID  int    // the tree's root on the receiver, as the receiver numbers it
	RestoredDir  string // the checkpoint folder the receiver imported
	// Post-copy (Options.PostCopy): PostCopy is the time from the receiver's "ok" until it had
	// every page, and PagesSent the pages (of the host's size) sent meanwhile; both 0 otherwise.
	PostCopy  time.Duration
	PagesSent uint64
	// ReceiverKeyID is the id of the Ed25519 key that proved the receiver's answers (32 hex
	// digits, as PublicKey gives it): Options.ReceiverKey's, or the trusted key the receiver named;
	// "" when signed with HMAC.
	ReceiverKeyID string
}

// ReceivedMigration is what Receive restored: the tree's root as this host numbers it, and the
// last reply line ({"ok":true,"pid":N,"dir":"...","import_ms":N,"restore_ms":N}). SourceTold is
// false when the tree runs here but that line could not be sent (the source closed or reset the
// connection after its commit): the source then keeps its copy stopped (ErrUnconfirmed there),
// and that copy must be killed there, as this one runs (nc_receive_ex). Since 0.3.
type ReceivedMigration struct {
	PID        int
	Reply      string
	SourceTold bool
}

// Migrate moves the process tree rooted at pid to another host (the README's "Migration"): it
// dumps the tree into the new checkpoint folder workDir (signed in SignatureManifest, with opts'
// dump options and Signing) and keeps it stopped, sends it on conn, a socket already connected to
// a receiver (connect first: no receiver, no freeze), as Export does (opts.Compression), and
// takes the receiver's answers (opts.ReplyTimeout each): "ready" (restored there, held stopped),
// to which it answers a commit proven with its signing key, then "ok". On "ok" the stopped tree
// is killed (it runs there now) and the report is returned. Before the commit, or on a refusal
// (a refusal, the receiver gone, silent or reset before its "ready"), the tree resumes here, and the error has
// the receiver's own status and message where it sent one (ErrIntegrity: the stream does not
// verify there; ErrKey: the receiver has no key), else ErrIO. ErrUnconfirmed: the receiver was
// told to run the tree but its confirmation never came; the tree is left stopped here. workDir
// stays. "ready", "ok" and any answer after the commit are proven by the receiver for this
// connection; with SigningEd25519 the receiver needs an Ed25519 key of its own that this host
// trusts or is given (Options.ReceiverKey; else ErrKey, ErrIntegrity before anything is dumped).
// The connection is not encrypted: use a private network or a tunnel.
//
// conn's descriptor is used in place, through SyscallConn().Control, which keeps conn from
// closing it until Migrate returns; a descriptor the poller made non-blocking is fine (the library
// waits for it with poll). Migrate blocks until the reply: run it on a goroutine of its own when
// this process is also the receiver. Since 0.3.
func (r *Runtime) Migrate(id string, pid int, workDir string, conn syscall.Conn, opts *Options) (MigrationReport, error) {
	var report C.nc_migration_report
	report.size = C.size_t(unsafe.Sizeof(report))
	err := withFd("migrate", conn, func(fd C.int) error {
		return r.dump("migrate", id, pid, workDir, opts, func(rt *C.nc_runtime, cid *C.char, cpid C.pid_t,
			cdir *C.char, o *C.nc_options, e *C.nc_error) C.nc_status {
			return C.nc_migrate_e(rt, cid, cpid, cdir, fd, o, &report, e)
		})
	})
	if err != nil {
		return MigrationReport{}, err
	}
	return MigrationReport{
		Downtime:      time.Duration(report.downtime_ms) * time.Millisecond,
		Dump:          time.Duration(report.dump_ms) * time.Millisecond,
		Transfer:      time.Duration(report.transfer_ms) * time.Millisecond,
		Restore:       time.Duration(report.restore_ms) * time.Millisecond,
		BytesSent:     uint64(report.bytes_sent),
		Rounds:        int(report.rounds),
		RoundsReason:  C.GoString(&report.rounds_reason[0]),
		RestoredPID:   int(report.restored_pid),
		RestoredDir:   C.GoString(&report.restored_dir[0]),
		PostCopy:      time.Duration(report.post_copy_ms) * time.Millisecond,
		PagesSent:     uint64(report.pages_sent),
		ReceiverKeyID: C.GoString(&report.receiver_key_id[0]),
	}, nil
}

// Receive is the receiving end of Migrate: it reads one stream from conn (a connected socket) into
// a new folder under storeDir, verified chunk by chunk as Import does and committed only whole,
// restores it held stopped with opts' restore options, and lets it run only on the source's commit,
// proven by the key that signed it for this connection (a replayed stream never runs); each answer
// goes back to the source as one line of JSON. It restores only what a key this host trusts signed (its HMAC key, or a trusted Ed25519
// public key): anything else is refused (ErrIntegrity, ErrKey), and so is the stream at the source.
// The restored tree runs on detached (reparented to the nearest child subreaper or PID 1).
//
// conn's descriptor is used in place, as Migrate uses it. Since 0.3.
func (r *Runtime) Receive(conn syscall.Conn, storeDir string, opts *Options) (ReceivedMigration, error) {
	var received ReceivedMigration
	err := withArgs(opts, []arg{{"store folder", storeDir}}, func(c []*C.char, o *cOptions) error {
		return withFd("receive", conn, func(fd C.int) error {
			return r.use("receive", func(rt *C.nc_runtime) error {
				var pid C.pid_t
				var reply *C.char
				var told C.int
				err := call(func(e *C.nc_error) C.nc_status {
					return C.nc_receive_ex_e(rt, fd, c[0], o.handle, &pid, &reply, &told, e)
				})
				received = ReceivedMigration{PID: int(pid), Reply: takeString(reply), SourceTold: told != 0}
				return o.outcome(err)
			})
		})
	})
	if err != nil {
		return ReceivedMigration{}, err
	}
	return received, nil
}
