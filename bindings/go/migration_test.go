// The 0.3 calls against the installed library, as root with the real CRIU: a real tree dumped
// with Ed25519 on a "signer" key store, moved as transfer streams (a socket pair, a pipe, a file)
// to a "receiver" key store that holds only the signer's public key, and restored there; a
// stream with one byte flipped refused with nothing left; pre-dumps; registry arguments; and
// migrations, the receiver on one goroutine and the source on another, of a counter in a PID
// namespace of its own: one over loopback TCP, signed with Ed25519 and pinned to the receiver's key,
// that the receiver restores; over a socket pair, ones the source refuses (a receiver it does not
// trust, or not the one given) or a receiver trusting no key refuses, so that the source resumes;
// and one cut right after the commit, which runs on the receiver (SourceTold false) and stays
// stopped at the source; and one post-copy, whose memory follows the tree through the page stream.
package checkpoint_test

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"nucleus.dev/checkpoint"
)

// useKeys points the library's key store at these files for the rest of the test (the library
// reads the environment at each call), and back at the end.
func useKeys(t *testing.T, hmac, ed25519, trusted string) {
	t.Helper()
	for name, value := range map[string]string{"NUCLEUS_CHECKPOINT_HMAC_KEY_FILE": hmac,
		"NUCLEUS_CHECKPOINT_ED25519_KEY_FILE": ed25519, "NUCLEUS_CHECKPOINT_TRUSTED_KEYS": trusted} {
		old, had := os.LookupEnv(name)
		os.Setenv(name, value)
		name := name
		t.Cleanup(func() {
			if had {
				os.Setenv(name, old)
			} else {
				os.Unsetenv(name)
			}
		})
	}
}

// privateFolder makes a new 0700 folder below base.
func privateFolder(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(base, name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// treeAndRuntime starts the counter in base/name and makes a runtime: the counter's PID, its
// child's and the file it counts in. Whatever happens, the tree is killed and reaped at the end.
func treeAndRuntime(t *testing.T, name string) (rt *checkpoint.Runtime, pid, child int, parentCount string) {
	t.Helper()
	counterDir := filepath.Join(base, name)
	pid = startCounter(t, counterDir)
	child = childOf(t, pid)
	t.Cleanup(func() {
		syscall.Kill(-pid, syscall.SIGKILL)
		reap(t, pid, child)
	})
	rt, err := checkpoint.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt, pid, child, filepath.Join(counterDir, "parent")
}

// smallCheckpoint makes a folder with one 3 MiB image, signed as format and signing say.
func smallCheckpoint(t *testing.T, name string, format checkpoint.SignatureFormat, signing checkpoint.Signing) string {
	t.Helper()
	dir := filepath.Join(base, name)
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o700); err != nil {
		t.Fatal(err)
	}
	data := []byte(strings.Repeat("pages of memory ", 3<<16))
	if err := os.WriteFile(filepath.Join(dir, "images", "pages-1.img"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkpoint.SignAs(dir, format, signing, nil); err != nil {
		t.Fatalf("SignAs(%v, %v): %v", format, signing, err)
	}
	return dir
}

// throughSocketPair runs exportTo on a goroutine, writing into one end of a socket pair, while this
// goroutine runs importFrom, reading from the other end; it returns both outcomes.
func throughSocketPair(t *testing.T, exportTo, importFrom func(*os.File) error) (exported, imported error) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	reader, writer := os.NewFile(uintptr(fds[0]), "import"), os.NewFile(uintptr(fds[1]), "export")
	done := make(chan error, 1)
	go func() {
		done <- exportTo(writer)
		writer.Close() // the end of the stream
	}()
	imported = importFrom(reader)
	reader.Close() // an exporter still writing gets EPIPE, not a wait for ever
	return <-done, imported
}

// leftBeside lists what a refused import left in dir's parent under a name holding dir's.
func leftBeside(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		if strings.Contains(e.Name(), filepath.Base(dir)) {
			left = append(left, e.Name())
		}
	}
	return left
}

func TestEd25519TransferRestore(t *testing.T) {
	signer, receiver := privateFolder(t, "signer-keys"), privateFolder(t, "receiver-keys")
	useKeys(t, filepath.Join(signer, "hmac.key"), filepath.Join(signer, "ed25519.key"), filepath.Join(signer, "trusted"))

	if _, _, err := checkpoint.PublicKey(); !errors.Is(err, checkpoint.ErrKey) {
		t.Errorf("PublicKey() with no key = %v, want ErrKey", err)
	}
	if created, err := checkpoint.KeygenEd25519(); err != nil || !created {
		t.Fatalf("KeygenEd25519() = %v, %v", created, err)
	}
	if created, err := checkpoint.KeygenEd25519(); err != nil || created {
		t.Errorf("KeygenEd25519() again = %v, %v; want made already", created, err)
	}
	publicKey, keyID, err := checkpoint.PublicKey()
	if err != nil || !strings.HasPrefix(publicKey, "nucleus-checkpoint-ed25519-public 1\n") || len(keyID) != 32 {
		t.Fatalf("PublicKey() = %q, %q, %v", publicKey, keyID, err)
	}
	chunked := smallCheckpoint(t, "chunked", checkpoint.SignatureChunked, checkpoint.SigningEd25519)
	if err := checkpoint.SignAs(chunked, checkpoint.SignatureSeed, checkpoint.SigningEd25519,
		nil); !errors.Is(err, checkpoint.ErrInvalid) || !strings.Contains(err.Error(), "HMAC-only") {
		t.Errorf("SignAs in the seed format with Ed25519 = %v, want ErrInvalid", err)
	}
	if s, id, err := checkpoint.SignerOf(chunked); err != nil || s != checkpoint.SigningEd25519 || id != keyID {
		t.Errorf("SignerOf(chunked) = %v, %q, %v", s, id, err)
	}
	hmacSigned := smallCheckpoint(t, "hmac-signed", checkpoint.SignatureManifest, checkpoint.SigningDefault)
	if s, id, err := checkpoint.SignerOf(hmacSigned); err != nil || s != checkpoint.SigningHMAC || id != "" {
		t.Errorf("SignerOf(hmac-signed) = %v, %q, %v", s, id, err)
	}
	if _, _, err := checkpoint.SignerOf(filepath.Join(base, "no-such")); !errors.Is(err, checkpoint.ErrNotFound) {
		t.Errorf("SignerOf(missing) = %v", err)
	}

	// The real tree, dumped and signed with the signer's Ed25519 key.
	rt, pid, child, parentCount := treeAndRuntime(t, "ed25519-counter")
	ckpt := filepath.Join(base, "ed25519-checkpoint")
	if err := rt.Checkpoint("go-ed25519", pid, ckpt, &checkpoint.Options{Signing: checkpoint.SigningEd25519}); err != nil {
		t.Fatalf("Checkpoint(Ed25519): %v", err)
	}
	reap(t, pid, child)
	atDump := count(t, parentCount)
	if s, id, err := checkpoint.SignerOf(ckpt); err != nil || s != checkpoint.SigningEd25519 || id != keyID {
		t.Fatalf("SignerOf(the dump) = %v, %q, %v; want Ed25519 %s", s, id, err, keyID)
	}
	if err := checkpoint.Verify(ckpt); err != nil { // the signer trusts its own key
		t.Fatalf("Verify on the signer: %v", err)
	}
	// Streams written on the signer: plain and zstd into files; only the manifest format.
	plain, zstd := filepath.Join(base, "plain.stream"), filepath.Join(base, "zstd.stream")
	for path, compression := range map[string]checkpoint.Compression{plain: checkpoint.CompressionNone,
		zstd: checkpoint.CompressionZstd} {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkpoint.Export(ckpt, f, &checkpoint.Options{Compression: compression}); err != nil {
			t.Fatalf("Export(%v): %v", compression, err)
		}
		f.Close()
	}
	plainInfo, _ := os.Stat(plain)
	zstdInfo, _ := os.Stat(zstd)
	if zstdInfo.Size() >= plainInfo.Size() {
		t.Errorf("the zstd stream (%d bytes) is no smaller than the plain one (%d)", zstdInfo.Size(), plainInfo.Size())
	}
	refusedStream, err := os.Create(filepath.Join(base, "refused.stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer refusedStream.Close()
	if err := checkpoint.Export(chunked, refusedStream, nil); !errors.Is(err, checkpoint.ErrInvalid) ||
		!strings.Contains(err.Error(), "sign it in format 3") {
		t.Errorf("Export of a chunked checkpoint = %v, want ErrInvalid saying how to re-sign", err)
	}
	if info, _ := refusedStream.Stat(); info.Size() != 0 {
		t.Errorf("a refused export wrote %d bytes", info.Size())
	}
	closed, _ := os.Open(os.DevNull)
	closed.Close()
	if err := checkpoint.Export(ckpt, closed, nil); !errors.Is(err, checkpoint.ErrInvalid) {
		t.Errorf("Export to a closed file = %v", err)
	}
	if err := checkpoint.Import(nil, filepath.Join(base, "nil"), nil); !errors.Is(err, checkpoint.ErrInvalid) {
		t.Errorf("Import(nil) = %v", err)
	}

	// The receiver: a key store of its own, with no key at all, trusting nobody yet.
	useKeys(t, filepath.Join(receiver, "hmac.key"), filepath.Join(receiver, "ed25519.key"),
		filepath.Join(receiver, "trusted"))
	if err := checkpoint.Verify(ckpt); !errors.Is(err, checkpoint.ErrIntegrity) || !strings.Contains(err.Error(), keyID) {
		t.Fatalf("Verify on a receiver that does not trust the key = %v, want ErrIntegrity naming %s", err, keyID)
	}
	untrusted := filepath.Join(base, "untrusted-import")
	if err := checkpoint.Import(fileOf(t, plain), untrusted, nil); !errors.Is(err, checkpoint.ErrIntegrity) {
		t.Errorf("Import signed by an untrusted key = %v, want ErrIntegrity", err)
	}
	if left := leftBeside(t, untrusted); len(left) != 0 {
		t.Errorf("a refused import left %v", left)
	}
	if err := checkpoint.TrustKey("nucleus-checkpoint-ed25519-public 1\nabc\n"); !errors.Is(err, checkpoint.ErrKey) {
		t.Errorf("TrustKey(not a key) = %v, want ErrKey", err)
	}
	if err := checkpoint.TrustKey(publicKey); err != nil {
		t.Fatalf("TrustKey: %v", err)
	}
	if err := checkpoint.Verify(ckpt); err != nil {
		t.Fatalf("Verify with only the public key trusted: %v", err)
	}
	// The signer's HMAC signatures stay its own: without the signer's HMAC key, they never verify.
	if err := checkpoint.Verify(hmacSigned); !errors.Is(err, checkpoint.ErrKey) {
		t.Errorf("Verify of an HMAC checkpoint on a receiver with no HMAC key = %v, want ErrKey", err)
	}
	if created, err := checkpoint.Keygen(); err != nil || !created {
		t.Fatalf("Keygen() on the receiver = %v, %v", created, err)
	}
	if err := checkpoint.Verify(hmacSigned); !errors.Is(err, checkpoint.ErrIntegrity) {
		t.Errorf("Verify of the signer's HMAC checkpoint with the receiver's key = %v, want ErrIntegrity", err)
	}

	// Through a socket pair, compressed; through a pipe; from the file: each verifies.
	viaSocket := filepath.Join(base, "via-socket")
	exported, imported := throughSocketPair(t, func(w *os.File) error {
		return checkpoint.Export(ckpt, w, &checkpoint.Options{Compression: checkpoint.CompressionZstd})
	}, func(r *os.File) error { return checkpoint.Import(r, viaSocket, nil) })
	if exported != nil || imported != nil {
		t.Fatalf("through a socket pair: export %v, import %v", exported, imported)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- checkpoint.Export(ckpt, w, nil)
		w.Close()
	}()
	viaPipe := filepath.Join(base, "via-pipe")
	if err := checkpoint.Import(r, viaPipe, nil); err != nil {
		t.Fatalf("Import from a pipe: %v", err)
	}
	r.Close()
	if err := <-done; err != nil {
		t.Fatalf("Export into a pipe: %v", err)
	}
	viaFile := filepath.Join(base, "via-file")
	if err := checkpoint.Import(fileOf(t, zstd), viaFile, nil); err != nil {
		t.Fatalf("Import from the zstd file: %v", err)
	}
	for _, dir := range []string{viaSocket, viaPipe, viaFile} {
		if err := checkpoint.Verify(dir); err != nil {
			t.Errorf("Verify(%s): %v", dir, err)
		}
		if s, id, err := checkpoint.SignerOf(dir); err != nil || s != checkpoint.SigningEd25519 || id != keyID {
			t.Errorf("SignerOf(%s) = %v, %q, %v", dir, s, id, err)
		}
	}

	// One byte flipped in the middle of the stream: refused, and nothing left behind.
	data, err := os.ReadFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	flippedStream := filepath.Join(base, "flipped.stream")
	if err := os.WriteFile(flippedStream, data, 0o600); err != nil {
		t.Fatal(err)
	}
	flipped := filepath.Join(base, "flipped-import")
	err = checkpoint.Import(fileOf(t, flippedStream), flipped, nil)
	if !errors.Is(err, checkpoint.ErrIntegrity) {
		t.Errorf("Import of a stream with a flipped byte = %v, want ErrIntegrity", err)
	}
	if _, serr := os.Stat(flipped); !errors.Is(serr, fs.ErrNotExist) {
		t.Errorf("a refused import left %s: %v", flipped, serr)
	}
	if left := leftBeside(t, flipped); len(left) != 0 {
		t.Errorf("a refused import left %v", left)
	}
	t.Logf("plain stream %d bytes, zstd %d; the flipped byte: %v", plainInfo.Size(), zstdInfo.Size(), err)

	// The receiver restores the imported copy: the tree counts on from where it stopped.
	tree, err := rt.Restore(viaSocket, &checkpoint.Options{ExpectedContainerID: "go-ed25519"})
	if err != nil {
		t.Fatalf("Restore of the imported copy on the receiver: %v", err)
	}
	defer tree.Close()
	if tree.PID != pid {
		t.Errorf("restored as PID %d, not %d", tree.PID, pid)
	}
	if n := waitCount(t, parentCount, atDump+3); n <= atDump+3 {
		t.Fatalf("the restored tree does not count on: %d at the dump, %d now", atDump, n)
	}
}

// fileOf opens path for reading, closed at the end of the test.
func fileOf(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// tracksMemory says whether this kernel tracks changed memory (soft-dirty), as CRIU sees it.
func tracksMemory(t *testing.T) bool {
	criu := os.Getenv("NC_TEST_CRIU")
	for _, candidate := range []string{"/usr/sbin/criu", "/usr/bin/criu", "/usr/local/sbin/criu"} {
		if _, err := os.Stat(candidate); criu == "" && err == nil {
			criu = candidate
		}
	}
	if criu == "" {
		t.Fatal("no criu to probe")
	}
	return exec.Command(criu, "check", "--feature", "mem_dirty_track").Run() == nil
}

func TestPredump(t *testing.T) {
	chain := privateFolder(t, "chain")
	p0, final := filepath.Join(chain, "p0"), filepath.Join(chain, "final")
	rt, pid, child, parentCount := treeAndRuntime(t, "chain-counter")
	if err := rt.Predump("go-chain", -1, p0, nil); !errors.Is(err, checkpoint.ErrInvalid) ||
		!strings.Contains(err.Error(), "predump") {
		t.Errorf("Predump(-1) = %v", err)
	}
	// Auto-dedup without a parent has nothing to take from: refused before anything runs.
	err := rt.Checkpoint("go-chain", pid, final, &checkpoint.Options{AutoDedup: true})
	if !errors.Is(err, checkpoint.ErrInvalid) || !strings.Contains(err.Error(), "auto-dedup needs a parent") {
		t.Errorf("Checkpoint(AutoDedup, no Parent) = %v", err)
	}
	// A parent that is not a sibling folder: refused before anything runs.
	err = rt.Checkpoint("go-chain", pid, final, &checkpoint.Options{Parent: "../p0", LeaveRunning: true})
	if !errors.Is(err, checkpoint.ErrInvalid) || !strings.Contains(err.Error(), "must be a folder beside") {
		t.Errorf("Checkpoint(Parent elsewhere) = %v", err)
	}
	if _, serr := os.Stat(final); !errors.Is(serr, fs.ErrNotExist) {
		t.Errorf("a refused dump left %s: %v", final, serr)
	}
	err = rt.Predump("go-chain", pid, p0, &checkpoint.Options{SignatureFormat: checkpoint.SignatureManifest})
	if !tracksMemory(t) {
		// This kernel cannot: the clear refusal, nothing made, the tree runs on.
		if !errors.Is(err, checkpoint.ErrCRIU) || !strings.Contains(err.Error(), "CONFIG_MEM_SOFT_DIRTY") {
			t.Fatalf("Predump without soft-dirty tracking = %v, want ErrCRIU naming CONFIG_MEM_SOFT_DIRTY", err)
		}
		if _, serr := os.Stat(p0); !errors.Is(serr, fs.ErrNotExist) {
			t.Errorf("a refused pre-dump left %s: %v", p0, serr)
		}
		at := count(t, parentCount)
		if n := waitCount(t, parentCount, at+2); n <= at+2 {
			t.Errorf("the tree does not run on after a refused pre-dump")
		}
		t.Logf("no soft-dirty tracking here: %v", err)
		return
	}
	if err != nil {
		t.Fatalf("Predump: %v", err)
	}
	if err := rt.Checkpoint("go-chain", pid, final, &checkpoint.Options{Parent: p0, AutoDedup: true}); err != nil {
		t.Fatalf("Checkpoint on the pre-dump: %v", err)
	}
	reap(t, pid, child)
	atDump := count(t, parentCount)
	if err := checkpoint.Verify(final); err != nil {
		t.Fatalf("Verify(chain): %v", err)
	}
	if _, err := rt.Restore(p0, nil); !errors.Is(err, checkpoint.ErrInvalid) {
		t.Errorf("Restore of a pre-dump alone = %v, want ErrInvalid", err)
	}
	tree, err := rt.Restore(final, nil)
	if err != nil {
		t.Fatalf("Restore(chain): %v", err)
	}
	defer tree.Close()
	if n := waitCount(t, parentCount, atDump+3); n <= atDump+3 {
		t.Fatalf("the tree restored from the chain does not count on")
	}
}

// The registry round trip is tests/registry_test.py's; here the arguments and a registry that
// is not there, which need none.
func TestRegistryArguments(t *testing.T) {
	target := filepath.Join(base, "pulled")
	err := checkpoint.PullImage("no-host-here", target, nil)
	if errors.Is(err, checkpoint.ErrUnsupported) {
		t.Fatalf("this library was built without registry images: %v", err)
	}
	if !errors.Is(err, checkpoint.ErrInvalid) || !strings.Contains(err.Error(), "HOST[:PORT]/NAME[:TAG]") {
		t.Errorf("PullImage(a malformed reference) = %v, want ErrInvalid naming the form", err)
	}
	if _, err := checkpoint.PushImage(filepath.Join(base, "checkpoint"), "", nil); !errors.Is(err, checkpoint.ErrInvalid) {
		t.Errorf("PushImage(\"\") = %v", err)
	}
	if _, err := checkpoint.PushImage(filepath.Join(base, "checkpoint"), "a\x00b", nil); !errors.Is(err, checkpoint.ErrInvalid) ||
		!strings.Contains(err.Error(), "NUL") {
		t.Errorf("PushImage with a NUL byte = %v", err)
	}
	// Plain http to a port nothing listens on: an I/O error naming the URL; nothing left behind.
	err = checkpoint.PullImage("127.0.0.1:1/checkpoints/web:v1", target, &checkpoint.Options{InsecureRegistry: true})
	if !errors.Is(err, checkpoint.ErrIO) || !strings.Contains(err.Error(), "http://127.0.0.1:1/v2/checkpoints/web/manifests/v1") {
		t.Errorf("PullImage from no registry = %v, want ErrIO naming the http URL", err)
	}
	if _, serr := os.Stat(target); !errors.Is(serr, fs.ErrNotExist) {
		t.Errorf("a failed pull left %s: %v", target, serr)
	}
}

// containedCounter starts the counter as the init of a PID namespace of its own, so that while
// its migration holds it stopped here, the receiver (this same host) finds its PIDs free: its PID
// here and the file it counts in. memory are the counter's optional arguments (MIB [private]: the
// memory it fills). Whatever happens it is killed (SIGKILL, which a PID namespace's init cannot
// ignore, and which ends the whole namespace) and reaped at the end.
func containedCounter(t *testing.T, name string, memory ...string) (pid int, parentCount string) {
	t.Helper()
	counter := os.Getenv("NC_TEST_COUNTER")
	if counter == "" {
		t.Skip("NC_TEST_COUNTER is not set (tests/go_binding_test.sh sets it)")
	}
	dir := privateFolder(t, name)
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	pid, err = syscall.ForkExec(counter, append([]string{counter, dir}, memory...), &syscall.ProcAttr{
		Files: []uintptr{null.Fd(), null.Fd(), null.Fd()},
		Sys:   &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killAndReap(t, pid) })
	parentCount = filepath.Join(dir, "parent")
	if n := waitCount(t, parentCount, 2); n <= 2 {
		t.Fatalf("the counter did not start counting (%d)", n)
	}
	return pid, parentCount
}

// killAndReap ends a PID namespace's init, and with it its namespace, and reaps it.
func killAndReap(t *testing.T, pid int) {
	if pid > 0 {
		syscall.Kill(pid, syscall.SIGKILL)
		reap(t, pid)
	}
}

// received is what Receive returned on its goroutine.
type received struct {
	tree checkpoint.ReceivedMigration
	err  error
}

// receiveOn runs Receive on conn, on a goroutine of its own with a runtime of its own (a runtime
// runs one call at a time), into store; its outcome comes on the channel.
func receiveOn(t *testing.T, conn func() (net.Conn, error), store string) <-chan received {
	t.Helper()
	rt, err := checkpoint.New()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan received, 1)
	go func() {
		defer rt.Close()
		c, err := conn()
		if err != nil {
			done <- received{err: err}
			return
		}
		defer c.Close()
		tree, err := rt.Receive(c.(syscall.Conn), store, nil)
		done <- received{tree, err}
	}()
	return done
}

// outcome waits for what Receive returned; the tree it restored, if any, is killed and reaped at
// the end of the test.
func outcome(t *testing.T, done <-chan received) received {
	got := <-done
	if got.tree.PID > 0 {
		restored := got.tree.PID
		t.Cleanup(func() { killAndReap(t, restored) })
	}
	return got
}

// receiveOverLoopback runs Receive (receiveOn) on loopback TCP into store, and returns the
// source's end, connected to it; both are closed at the end of the test.
func receiveOverLoopback(t *testing.T, store string) (*net.TCPConn, <-chan received) {
	t.Helper()
	listener, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close() })
	done := receiveOn(t, func() (net.Conn, error) { return listener.AcceptTCP() }, store)
	conn, err := net.DialTCP("tcp", nil, listener.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, done
}

// countsOnThere checks that the migrated tree pid is gone here, and that its copy restored as
// restored counts on from where it stopped.
func countsOnThere(t *testing.T, pid, restored int, parentCount string) {
	t.Helper()
	reap(t, pid)
	atMove := count(t, parentCount)
	if n := waitCount(t, parentCount, atMove+3); n <= atMove+3 {
		t.Errorf("the migrated counter does not count on: %d when moved, %d now", atMove, n)
	}
	if !alive(restored) {
		t.Errorf("the restored root %d is gone", restored)
	}
}

// committed lists the folders a receiver's store holds, staging folders included.
func committed(t *testing.T, store string) []string {
	t.Helper()
	entries, err := os.ReadDir(store)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// migrationSource starts a contained counter (filling memory, if given) to migrate and makes the
// source's runtime and a store for the receiver, all named after name.
func migrationSource(t *testing.T, name string, memory ...string) (rt *checkpoint.Runtime, pid int, parentCount,
	store string) {
	t.Helper()
	pid, parentCount = containedCounter(t, name+"-counter", memory...)
	rt, err := checkpoint.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt, pid, parentCount, privateFolder(t, name+"-store")
}

func TestMigrate(t *testing.T) {
	// Signed with Ed25519, the receiver pinned: this process is both ends, so the receiver's key is
	// the source's own.
	keys := privateFolder(t, "migration-keys")
	useKeys(t, filepath.Join(keys, "hmac.key"), filepath.Join(keys, "ed25519.key"), filepath.Join(keys, "trusted"))
	if _, err := checkpoint.KeygenEd25519(); err != nil {
		t.Fatal(err)
	}
	publicKey, keyID, err := checkpoint.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	rt, pid, parentCount, store := migrationSource(t, "migration")
	workDir := filepath.Join(base, "migration-out")

	// Descriptors that are no connected socket: refused before anything is dumped.
	if _, err := rt.Migrate("go-migrate", pid, workDir, nil, nil); !errors.Is(err, checkpoint.ErrInvalid) {
		t.Errorf("Migrate(nil) = %v, want ErrInvalid", err)
	}
	if _, err := rt.Migrate("go-migrate", pid, workDir, fileOf(t, parentCount), nil); !errors.Is(err,
		checkpoint.ErrInvalid) || !strings.Contains(err.Error(), "not a connected socket") {
		t.Errorf("Migrate(a file) = %v, want ErrInvalid saying it is not a socket", err)
	}
	if _, serr := os.Stat(workDir); !errors.Is(serr, fs.ErrNotExist) {
		t.Errorf("a refused migration left %s: %v", workDir, serr)
	}

	// Loopback TCP: the receiver accepts on one goroutine, the source connects on this one.
	conn, done := receiveOverLoopback(t, store)
	start := time.Now()
	report, err := rt.Migrate("go-migrate", pid, workDir, conn, &checkpoint.Options{ReplyTimeout: 2 * time.Minute,
		Signing: checkpoint.SigningEd25519, ReceiverKey: publicKey})
	elapsed := time.Since(start)
	got := outcome(t, done)
	if err != nil || got.err != nil {
		t.Fatalf("Migrate: %v; Receive: %v", err, got.err)
	}
	t.Logf("migrated in %v: %+v", elapsed, report)

	if report.Downtime <= 0 || report.Dump <= 0 || report.Downtime < report.Dump || report.Downtime > elapsed {
		t.Errorf("downtime %v, dump %v (the call took %v)", report.Downtime, report.Dump, elapsed)
	}
	if report.BytesSent == 0 || report.Rounds != 0 || report.RoundsReason == "" {
		t.Errorf("bytes sent %d, rounds %d (%q)", report.BytesSent, report.Rounds, report.RoundsReason)
	}
	if report.RestoredPID <= 0 || report.RestoredPID != got.tree.PID || report.RestoredPID == pid {
		t.Errorf("the report's restored PID is %d, Receive's %d, the source's %d", report.RestoredPID,
			got.tree.PID, pid)
	}
	if filepath.Dir(report.RestoredDir) != store || !strings.HasPrefix(filepath.Base(report.RestoredDir), "migration-") {
		t.Errorf("restored from %q, not a migration folder in %s", report.RestoredDir, store)
	}
	var reply struct {
		OK  bool   `json:"ok"`
		PID int    `json:"pid"`
		Dir string `json:"dir"`
	}
	if err := json.Unmarshal([]byte(got.tree.Reply), &reply); err != nil || !reply.OK ||
		reply.PID != got.tree.PID || reply.Dir != report.RestoredDir {
		t.Errorf("the receiver's reply %q (%v)", got.tree.Reply, err)
	}
	if !got.tree.SourceTold {
		t.Errorf("SourceTold is false, yet the source confirmed the migration")
	}
	if report.ReceiverKeyID != keyID {
		t.Errorf("the receiver's answers proven by key %q, not by the one given, %s", report.ReceiverKeyID, keyID)
	}
	if err := checkpoint.Verify(report.RestoredDir); err != nil {
		t.Errorf("Verify(the received folder): %v", err)
	}
	if err := checkpoint.Verify(workDir); err != nil {
		t.Errorf("Verify(the source's folder): %v", err)
	}

	// The source's tree is gone, and the restored one counts on from where it stopped.
	countsOnThere(t, pid, report.RestoredPID, parentCount)
}

// raisePipeMaxSize raises fs.pipe-max-size, if lower, to the 4 MiB that post-copy needs on the
// source (root may). It is left raised: other tests running meanwhile may need it too.
func raisePipeMaxSize(t *testing.T) {
	t.Helper()
	const sysctl, needed = "/proc/sys/fs/pipe-max-size", 4 << 20
	data, err := os.ReadFile(sysctl)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && n >= needed {
		return
	}
	if err := os.WriteFile(sysctl, []byte(strconv.Itoa(needed)), 0); err != nil {
		t.Fatalf("post-copy needs fs.pipe-max-size >= %d: %v", needed, err)
	}
}

// TestMigratePostCopy migrates a counter holding 16 MiB of its own post-copy over loopback TCP:
// the checkpoint leaves that memory out, and it follows the tree through the page stream to the
// receiver, where the tree counts on.
func TestMigratePostCopy(t *testing.T) {
	const memoryMiB = 16
	raisePipeMaxSize(t)
	rt, pid, parentCount, store := migrationSource(t, "post-copy", strconv.Itoa(memoryMiB), "private")
	conn, done := receiveOverLoopback(t, store)
	report, err := rt.Migrate("go-post-copy", pid, filepath.Join(base, "post-copy-out"), conn,
		&checkpoint.Options{PostCopy: true, ReplyTimeout: 2 * time.Minute})
	got := outcome(t, done)
	if err != nil || got.err != nil {
		t.Fatalf("Migrate post-copy: %v; Receive: %v", err, got.err)
	}
	t.Logf("migrated post-copy: %+v", report)
	// Most of the counter's memory came through the page stream: the checkpoint did not carry it.
	// (PostCopy may be 0: the receiver's CRIU fetches pages from the restore on, so all of a small
	// tree's may be in before its "ok".)
	if report.PagesSent < memoryMiB*256/2 {
		t.Errorf("%d pages sent, want at least %d of its %d MiB", report.PagesSent, memoryMiB*256/2, memoryMiB)
	}
	if report.RestoredPID <= 0 || report.RestoredPID != got.tree.PID || !got.tree.SourceTold {
		t.Errorf("the report's restored PID is %d, Receive's %+v", report.RestoredPID, got.tree)
	}
	if report.ReceiverKeyID != "" {
		t.Errorf("an HMAC-signed migration's answers proven by Ed25519 key %q", report.ReceiverKeyID)
	}
	countsOnThere(t, pid, report.RestoredPID, parentCount)
}

func TestMigrateRefused(t *testing.T) {
	// First the source refuses: it signs with Ed25519 and does not trust the key the receiver
	// (this process, at the same time) proves its answers with, so it could not tell the
	// receiver's "ok" from a forged one; nothing is dumped. So it refuses when given another key as
	// the receiver's, or text that is no key. Then the receiver refuses: the source signs with HMAC
	// and the receiver accepts Ed25519 signatures only.
	otherKeys := privateFolder(t, "other-keys")
	useKeys(t, filepath.Join(otherKeys, "hmac.key"), filepath.Join(otherKeys, "ed25519.key"),
		filepath.Join(otherKeys, "trusted"))
	if _, err := checkpoint.KeygenEd25519(); err != nil {
		t.Fatal(err)
	}
	otherKey, _, err := checkpoint.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	keys := privateFolder(t, "refusing-keys")
	trusted := filepath.Join(keys, "trusted")
	useKeys(t, filepath.Join(keys, "hmac.key"), filepath.Join(keys, "ed25519.key"), trusted)
	if _, err := checkpoint.KeygenEd25519(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(trusted); err != nil { // the key trusted itself: no more
		t.Fatal(err)
	}
	rt, pid, parentCount, store := migrationSource(t, "refused")
	for i, c := range []struct {
		name, want           string
		opts                 *checkpoint.Options
		signers              string
		sourceIs, receiverIs error
	}{
		{"an untrusted receiver", "does not trust", &checkpoint.Options{Signing: checkpoint.SigningEd25519}, "any",
			checkpoint.ErrIntegrity, checkpoint.ErrIO},
		{"another receiver than the one given", "not with the receiver's key given", &checkpoint.Options{
			Signing: checkpoint.SigningEd25519, ReceiverKey: otherKey}, "any", checkpoint.ErrIntegrity, checkpoint.ErrIO},
		{"half a public key as the receiver's", "nc_options_set_receiver_key", &checkpoint.Options{
			Signing: checkpoint.SigningEd25519, ReceiverKey: otherKey[:len(otherKey)/2]}, "any", checkpoint.ErrKey,
			checkpoint.ErrIO},
		{"a receiver refusing HMAC", "the receiver refused the migration", nil, "ed25519", checkpoint.ErrIntegrity,
			checkpoint.ErrIntegrity},
	} {
		t.Setenv("NUCLEUS_CHECKPOINT_SIGNERS", c.signers)
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		source, receiving := unixConn(t, fds[0]), unixConn(t, fds[1])
		done := receiveOn(t, func() (net.Conn, error) { return receiving, nil }, store)
		workDir := filepath.Join(base, "refused-out-"+strconv.Itoa(i))
		_, err = rt.Migrate("go-refused", pid, workDir, source, c.opts)
		source.Close() // the receiver, reading what is left of the stream, sees its end
		got := outcome(t, done)
		if !errors.Is(err, c.sourceIs) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Migrate = %v, want %v saying %q", c.name, err, c.sourceIs, c.want)
		}
		if !errors.Is(got.err, c.receiverIs) || got.tree.PID != 0 {
			t.Errorf("%s: Receive = %+v, %v; want %v", c.name, got.tree, got.err, c.receiverIs)
		}
		t.Logf("%s: %v", c.name, err)
		if names := committed(t, store); len(names) != 0 {
			t.Errorf("%s: a refused migration left %v in the receiver's store", c.name, names)
		}
		// The source runs on (or resumed): the counter counts here.
		at := count(t, parentCount)
		if n := waitCount(t, parentCount, at+3); n <= at+3 || !alive(pid) {
			t.Errorf("%s: the source's counter does not count on: %d, then %d", c.name, at, n)
		}
	}
}

// TestMigrateUntold cuts the connection right after the source's commit, before the receiver's
// "ok": a relay between the two stops reading the receiver's side before it passes the commit on,
// then closes the source's side. The tree runs on the receiver, whose Receive succeeds with
// SourceTold false; the source cannot confirm (ErrUnconfirmed) and leaves its copy stopped.
func TestMigrateUntold(t *testing.T) {
	rt, pid, parentCount, store := migrationSource(t, "untold")
	pair := func() (*net.UnixConn, *net.UnixConn) {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return unixConn(t, fds[0]), unixConn(t, fds[1])
	}
	source, toSource := pair()
	toReceiver, receiving := pair()
	done := receiveOn(t, func() (net.Conn, error) { return receiving, nil }, store)
	readyPassed := make(chan struct{})
	go func() { // the receiver's answers, passed back: its "ready" noted before the source reads it
		buf := make([]byte, 4096)
		for {
			n, err := toReceiver.Read(buf)
			if err != nil {
				return
			}
			if strings.Contains(string(buf[:n]), `"ready":true`) {
				close(readyPassed)
			}
			if _, err := toSource.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	go func() { // the source's stream, then its commit
		buf := make([]byte, 1<<16)
		for {
			n, err := toSource.Read(buf)
			if err != nil {
				return
			}
			select {
			case <-readyPassed: // the commit: the receiver's "ok" after it meets EPIPE
				toReceiver.CloseRead()
				toReceiver.Write(buf[:n])
				toSource.Close()
				return
			default:
			}
			if _, err := toReceiver.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	_, err := rt.Migrate("go-untold", pid, filepath.Join(base, "untold-out"), source, nil)
	got := outcome(t, done)
	if got.err != nil || got.tree.PID <= 0 || got.tree.SourceTold {
		t.Fatalf("Receive = %+v, %v; want the tree restored and SourceTold false", got.tree, got.err)
	}
	if !errors.Is(err, checkpoint.ErrUnconfirmed) {
		t.Errorf("Migrate whose receiver's answer never came = %v, want ErrUnconfirmed", err)
	}
	if state := stateOf(pid); state != 'T' {
		t.Errorf("the source's copy is in state %q, want it stopped (T)", state)
	}
	at := count(t, parentCount)
	if n := waitCount(t, parentCount, at+3); n <= at+3 {
		t.Errorf("the received counter does not count on: %d, then %d", at, n)
	}
}

// unixConn makes one end of a socket pair a *net.UnixConn (its descriptor non-blocking, in Go's
// poller), closed at the end of the test.
func unixConn(t *testing.T, fd int) *net.UnixConn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "socketpair")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}
