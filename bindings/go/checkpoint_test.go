// The package against the installed library, as root with the real CRIU (tests/go_binding_test.sh
// runs it): errors and their statuses; a real process tree checkpointed, a tampered copy refused,
// the tree restored and seen counting on; callbacks; 64 goroutines failing at once, each with its
// own message; and the 0.3 calls: a tree dumped with Ed25519, moved as a transfer stream to a
// receiver that holds only the public key, and restored there; pre-dumps; a chain of layers moved
// as one chain stream and restored; registry arguments; migrations, to a receiver on another
// goroutine and refused by one trusting no key.
//
// It needs NC_TEST_COUNTER (examples/counter) and NC_TEST_TMPDIR (a folder only root can change,
// such as /var/tmp/nucleus-checkpoint-tests); without NC_TEST_COUNTER the tests that need CRIU skip.
package checkpoint_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"nucleus.dev/checkpoint"
)

// base is this run's private folder, with the key in base/keys.
var base string

func TestMain(m *testing.M) {
	root := os.Getenv("NC_TEST_TMPDIR")
	if root == "" {
		root = os.TempDir()
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp(root, "go-binding-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	base = dir
	if err := os.Mkdir(filepath.Join(base, "keys"), 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// The library reads it through getenv: os.Setenv reaches C's environment in a cgo program.
	os.Setenv("NUCLEUS_CHECKPOINT_HMAC_KEY_FILE", filepath.Join(base, "keys", "checkpoint.key"))
	// As a child subreaper this process reaps the dumped and restored trees at once: a PID held
	// by a zombie cannot be restored.
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, 36 /* PR_SET_CHILD_SUBREAPER */, 1, 0); e != 0 {
		fmt.Fprintln(os.Stderr, "PR_SET_CHILD_SUBREAPER:", e)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(base)
	os.Exit(code)
}

func asError(t *testing.T, err error) *checkpoint.Error {
	t.Helper()
	var e *checkpoint.Error
	if !errors.As(err, &e) {
		t.Fatalf("want a *checkpoint.Error, got %T: %v", err, err)
	}
	return e
}

func TestStatusesAndErrors(t *testing.T) {
	// The ABI's values and names.
	for i, s := range []checkpoint.Status{checkpoint.StatusOK, checkpoint.StatusInvalid, checkpoint.StatusPermission,
		checkpoint.StatusNotFound, checkpoint.StatusState, checkpoint.StatusCRIU, checkpoint.StatusIntegrity,
		checkpoint.StatusIO, checkpoint.StatusKey, checkpoint.StatusNoMem, checkpoint.StatusInternal,
		checkpoint.StatusUnsupported, checkpoint.StatusUnconfirmed} {
		if int(s) != i {
			t.Errorf("status %v is %d, want %d", s, int(s), i)
		}
	}
	if got := checkpoint.StatusIntegrity.String(); got != "NC_E_INTEGRITY" {
		t.Errorf("StatusIntegrity.String() = %q", got)
	}
	if got := checkpoint.StatusUnsupported.String(); got != "NC_E_UNSUPPORTED" {
		t.Errorf("StatusUnsupported.String() = %q", got)
	}
	if got := checkpoint.StatusUnconfirmed.String(); got != "NC_E_UNCONFIRMED" {
		t.Errorf("StatusUnconfirmed.String() = %q", got)
	}
	if got := checkpoint.Status(42).String(); got != "nc_status(42)" {
		t.Errorf("Status(42).String() = %q", got)
	}
	if v := checkpoint.Version(); v == "" || strings.Count(v, ".") != 2 {
		t.Errorf("Version() = %q", v)
	}

	missing := filepath.Join(base, "no-such-checkpoint")
	err := checkpoint.Verify(missing)
	e := asError(t, err)
	if e.Status != checkpoint.StatusNotFound || !strings.Contains(e.Message, missing) || e.CRIUExitCode != -1 ||
		len(e.CRIULines) != 0 {
		t.Errorf("Verify(missing): %#v", e)
	}
	if !errors.Is(err, checkpoint.ErrNotFound) || !errors.Is(err, checkpoint.StatusNotFound) ||
		!errors.Is(err, fs.ErrNotExist) || errors.Is(err, checkpoint.ErrIntegrity) || errors.Is(err, fs.ErrPermission) {
		t.Errorf("errors.Is on %v gives the wrong answers", err)
	}
	if !errors.Is(err, &checkpoint.Error{Status: checkpoint.StatusNotFound}) {
		t.Errorf("errors.Is with an *Error of the same status: false")
	}
	if want := "NC_E_NOT_FOUND: " + e.Message; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}

	if err := checkpoint.Verify(""); !errors.Is(err, checkpoint.ErrInvalid) {
		t.Errorf("Verify(\"\") = %v", err)
	}
	// A NUL byte would make C see another path: refused here.
	if err := checkpoint.Verify(missing + "\x00/x"); !errors.Is(err, checkpoint.ErrInvalid) ||
		!strings.Contains(err.Error(), "NUL") {
		t.Errorf("Verify with a NUL byte = %v", err)
	}
	if f, err := checkpoint.SignatureFormatOf(missing); err == nil || f != 0 {
		t.Errorf("SignatureFormatOf(missing) = %v, %v", f, err)
	}
	if _, err := checkpoint.ReadMetadata(missing); !errors.Is(err, checkpoint.ErrNotFound) {
		t.Errorf("ReadMetadata(missing) = %v", err)
	}

	if _, err := checkpoint.NewWithCRIU("/nonexistent/criu"); !errors.Is(err, checkpoint.ErrNotFound) {
		t.Errorf("NewWithCRIU(/nonexistent/criu) = %v", err)
	}

	path, err := checkpoint.KeyPath()
	if err != nil || path != os.Getenv("NUCLEUS_CHECKPOINT_HMAC_KEY_FILE") {
		t.Errorf("KeyPath() = %q, %v", path, err)
	}
	if err := checkpoint.SetMaxCheckpointBytes(0); err != nil {
		t.Errorf("SetMaxCheckpointBytes(0) = %v", err)
	}
}

// A setter the library refuses fails the call with its message, naming the option, before
// anything is done.
func TestOptionsRefused(t *testing.T) {
	rt, err := checkpoint.New()
	if err != nil {
		t.Skipf("no usable CRIU: %v", err) // the CRIU tests below fail for it where it is required
	}
	defer rt.Close()
	dir := filepath.Join(base, "refused")
	for _, c := range []struct {
		opts *checkpoint.Options
		want string
	}{
		{&checkpoint.Options{LogLevel: 5}, "nc_options_set_log_level"},
		{&checkpoint.Options{External: []string{"--exec-cmd"}}, "nc_options_add_external"},
		{&checkpoint.Options{Root: "relative/rootfs"}, "--root"},
		{&checkpoint.Options{InheritFDs: []checkpoint.InheritFD{{FD: 1 << 20, Key: "stdout"}}}, "not open"},
		{&checkpoint.Options{Annotations: map[string]string{"": "v"}}, "nc_options_add_annotation"},
		{&checkpoint.Options{RuntimeFiles: map[string][]byte{"a/b": nil}}, "plain file name"},
		{&checkpoint.Options{Timeout: -time.Second}, "Timeout"},
		{&checkpoint.Options{ReplyTimeout: 1 << 62}, "ReplyTimeout"},
		{&checkpoint.Options{WorkDir: "/x\x00y"}, "NUL"},
	} {
		err := rt.Checkpoint("refused", os.Getpid(), dir, c.opts)
		if !errors.Is(err, checkpoint.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("options %+v: got %v, want ErrInvalid naming %q", *c.opts, err, c.want)
		}
		if _, err := rt.Restore(dir, c.opts); !errors.Is(err, checkpoint.ErrInvalid) {
			t.Errorf("restore with options %+v: got %v, want ErrInvalid", *c.opts, err)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused checkpoint left %s: %v", dir, err)
	}
	if err := rt.Close(); err != nil {
		t.Error(err)
	}
	if err := rt.Close(); err != nil { // again: a no-op
		t.Error(err)
	}
	if err := rt.Checkpoint("closed", os.Getpid(), dir, nil); !errors.Is(err, checkpoint.ErrInvalid) ||
		!strings.Contains(err.Error(), "closed") {
		t.Errorf("Checkpoint on a closed runtime: %v", err)
	}
}

func count(t *testing.T, path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return -1
	}
	return n
}

// waitCount waits up to 10 s for the counter at path to pass above, and returns its value.
func waitCount(t *testing.T, path string, above int) int {
	n := count(t, path)
	for deadline := time.Now().Add(10 * time.Second); n <= above && time.Now().Before(deadline); n = count(t, path) {
		time.Sleep(20 * time.Millisecond)
	}
	return n
}

// startCounter starts examples/counter (a parent and a child counting in DIR/parent and DIR/child,
// in a session of their own) with stdio on /dev/null.
func startCounter(t *testing.T, dir string) int {
	counter := os.Getenv("NC_TEST_COUNTER")
	if counter == "" {
		t.Skip("NC_TEST_COUNTER is not set (tests/go_binding_test.sh sets it)")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	pid, err := syscall.ForkExec(counter, []string{counter, dir},
		&syscall.ProcAttr{Files: []uintptr{null.Fd(), null.Fd(), null.Fd()}})
	if err != nil {
		t.Fatal(err)
	}
	if n := waitCount(t, filepath.Join(dir, "parent"), 2); n <= 2 {
		t.Fatalf("the counter did not start counting (%d)", n)
	}
	return pid
}

// describe says what holds pid, for a failure's message.
func describe(pid int) string {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return fmt.Sprintf("PID %d free", pid)
	}
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return fmt.Sprintf("PID %d held by %q (%s)", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}),
		strings.TrimSpace(string(stat)))
}

func alive(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// stateOf is pid's state letter in /proc/PID/stat (T: stopped), 0 once it is gone.
func stateOf(pid int) byte {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	end := bytes.LastIndexByte(stat, ')')
	if err != nil || end < 0 || end+2 >= len(stat) {
		return 0
	}
	return stat[end+2]
}

// reap reaps every exited child (this process is a child subreaper) until the PIDs are free,
// waiting up to 5 s. Called only while no library call runs, so it never takes CRIU's status.
func reap(t *testing.T, pids ...int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; {
		for {
			var ws syscall.WaitStatus
			if p, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); p <= 0 || err != nil {
				break
			}
		}
		held := false
		for _, pid := range pids {
			held = held || alive(pid)
		}
		if !held {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("PIDs %v still held", pids)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// childOf returns the counter's child's PID.
func childOf(t *testing.T, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(data))
	if len(fields) != 1 {
		t.Fatalf("the counter %d has children %q", pid, fields)
	}
	child, _ := strconv.Atoi(fields[0])
	return child
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dest := filepath.Join(to, rel)
		if d.IsDir() {
			return os.Mkdir(dest, 0o700)
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// tamper copies the checkpoint at from to to, with one byte flipped in the middle of its first
// page image; it returns the image's name.
func tamper(t *testing.T, from, to string) string {
	t.Helper()
	copyTree(t, from, to)
	pages, _ := filepath.Glob(filepath.Join(to, "images", "pages-*.img"))
	if len(pages) == 0 {
		t.Fatalf("no images/pages-*.img in %s", to)
	}
	data, err := os.ReadFile(pages[0])
	if err != nil || len(data) == 0 {
		t.Fatalf("%s: %v (%d bytes)", pages[0], err, len(data))
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(pages[0], data, 0o600); err != nil {
		t.Fatal(err)
	}
	return filepath.Base(pages[0])
}

func TestCheckpointRestore(t *testing.T) {
	counterDir := filepath.Join(base, "counter")
	pid := startCounter(t, counterDir)
	child := childOf(t, pid)
	parentCount := filepath.Join(counterDir, "parent")
	childCount := filepath.Join(counterDir, "child")
	defer func() { // whatever happens, nothing is left running
		syscall.Kill(-pid, syscall.SIGKILL)
		reap(t, pid, child)
	}()

	rt, err := checkpoint.New()
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	v, err := rt.CRIUVersion()
	if err != nil || v.Major < 4 {
		t.Fatalf("CRIUVersion() = %v, %v", v, err)
	}

	// Dump, the tree killed once it is signed; the callbacks see it.
	ckpt := filepath.Join(base, "checkpoint")
	var seen []string
	err = rt.Checkpoint("go-counter", pid, ckpt, &checkpoint.Options{
		Annotations:  map[string]string{"io.example.owner": "go", "io.example.generation": "7"},
		RuntimeFiles: map[string][]byte{"config.json": []byte(`{"go":true}`)},
		Timeout:      2 * time.Minute,
		Notify: func(what checkpoint.Notification, notifiedPID int) error {
			seen = append(seen, fmt.Sprintf("%v %d", what, notifiedPID))
			return nil
		},
	})
	if err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if s := strings.Join(seen, ","); !strings.Contains(s, fmt.Sprintf("pre-dump %d", pid)) ||
		!strings.Contains(s, fmt.Sprintf("post-dump %d", pid)) {
		t.Errorf("notifications at dump: %q", s)
	}
	reap(t, pid, child)
	atDump, childAtDump := count(t, parentCount), count(t, childCount)
	time.Sleep(200 * time.Millisecond)
	if n := count(t, parentCount); n != atDump {
		t.Fatalf("the counter ran on after the dump: %d then %d", atDump, n)
	}

	// The checkpoint: verifies, with progress; its format and metadata.
	if err := checkpoint.Verify(ckpt); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	var progress []uint64
	if err := checkpoint.VerifyProgress(ckpt, func(b uint64) { progress = append(progress, b) }); err != nil {
		t.Fatalf("VerifyProgress: %v", err)
	}
	if len(progress) == 0 || progress[len(progress)-1] == 0 {
		t.Errorf("progress: %v", progress)
	}
	for i := 1; i < len(progress); i++ {
		if progress[i] < progress[i-1] {
			t.Errorf("progress went back: %v", progress)
		}
	}
	if f, err := checkpoint.SignatureFormatOf(ckpt); err != nil || f != checkpoint.SignatureManifest {
		t.Errorf("SignatureFormatOf = %v, %v", f, err)
	}
	meta, err := checkpoint.ReadMetadata(ckpt)
	if err != nil || !bytes.Contains(meta, []byte(`"go-counter"`)) || !bytes.Contains(meta, []byte("io.example.owner")) {
		t.Errorf("ReadMetadata = %s, %v", meta, err)
	}
	if data, err := os.ReadFile(filepath.Join(ckpt, "runtime", "config.json")); err != nil || string(data) != `{"go":true}` {
		t.Errorf("runtime/config.json: %q, %v", data, err)
	}

	// A tampered copy: refused by Verify and by Restore, naming the image; nothing runs.
	tampered := filepath.Join(base, "tampered")
	image := tamper(t, ckpt, tampered)
	err = checkpoint.Verify(tampered)
	if e := asError(t, err); !errors.Is(err, checkpoint.ErrIntegrity) || !strings.Contains(e.Message, image) {
		t.Errorf("Verify(tampered) = %v, want ErrIntegrity naming %s", err, image)
	}
	tree, err := rt.Restore(tampered, nil)
	if e := asError(t, err); !errors.Is(err, checkpoint.ErrIntegrity) || !strings.Contains(e.Message, image) ||
		tree != nil {
		t.Errorf("Restore(tampered) = %v, %v; want ErrIntegrity naming %s", tree, err, image)
	}
	// What CRIU had made is killed before it runs: reparented to this process, its subreaper, it is
	// reaped here. The counters never moved.
	reap(t, pid, child)
	time.Sleep(200 * time.Millisecond)
	if n := count(t, parentCount); n != atDump || count(t, childCount) != childAtDump {
		t.Fatalf("the tampered checkpoint ran: the count %d at the dump, %d now", atDump, n)
	}

	// Signed for another container, or another generation: refused.
	_, err = rt.Restore(ckpt, &checkpoint.Options{ExpectedContainerID: "go-other"})
	if !errors.Is(err, checkpoint.ErrIntegrity) || !strings.Contains(err.Error(), "go-other") {
		t.Errorf("Restore for another container = %v", err)
	}
	_, err = rt.Restore(ckpt, &checkpoint.Options{ExpectAnnotations: map[string]string{"io.example.generation": "8"}})
	if !errors.Is(err, checkpoint.ErrIntegrity) {
		t.Errorf("Restore of another generation = %v", err)
	}
	reap(t, pid, child)
	if n := count(t, parentCount); n != atDump {
		t.Fatalf("a refused restore ran the tree: the count %d at the dump, %d now", atDump, n)
	}

	// Restored: its PIDs back, a pidfd, and both counters count on from where they stopped.
	var preResume []int
	tree, err = rt.Restore(ckpt, &checkpoint.Options{
		ExpectedContainerID: "go-counter",
		ExpectAnnotations:   map[string]string{"io.example.generation": "7"},
		Notify: func(what checkpoint.Notification, notifiedPID int) error {
			if what == checkpoint.NotifyPreResume {
				preResume = append(preResume, notifiedPID)
			}
			return nil
		},
	})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if tree.PID != pid || tree.PIDFD == nil {
		t.Fatalf("Restore = PID %d, pidfd %v; want PID %d and a pidfd", tree.PID, tree.PIDFD, pid)
	}
	if len(preResume) != 1 || preResume[0] != pid {
		t.Errorf("pre-resume notifications: %v", preResume)
	}
	if n := waitCount(t, parentCount, atDump+3); n <= atDump+3 {
		t.Fatalf("the restored parent does not count on: %d at the dump, %d now", atDump, n)
	}
	childAt := count(t, childCount)
	if n := waitCount(t, childCount, childAt+3); n <= childAt+3 {
		t.Fatalf("the restored child does not count on: %d then %d", childAt, n)
	}
	if exited, err := tree.Exited(0); err != nil || exited {
		t.Errorf("Exited(0) = %v, %v for a running tree", exited, err)
	}

	// A notify callback that refuses stops the dump: the error wraps its own, the tree runs on.
	refusal := errors.New("not now")
	err = rt.Checkpoint("go-counter", pid, filepath.Join(base, "refused-dump"), &checkpoint.Options{
		Notify: func(what checkpoint.Notification, _ int) error {
			if what == checkpoint.NotifyPreDump {
				return refusal
			}
			return nil
		},
	})
	if !errors.Is(err, refusal) || !strings.Contains(err.Error(), "pre-dump") {
		t.Errorf("Checkpoint with a refusing callback = %v", err)
	}
	at := count(t, parentCount)
	if n := waitCount(t, parentCount, at+2); n <= at+2 {
		t.Fatalf("the tree does not run on after a refused dump")
	}

	// Dumped again, left running; then killed through the pidfd.
	again := filepath.Join(base, "again")
	if err := rt.Checkpoint("go-counter", pid, again, &checkpoint.Options{LeaveRunning: true}); err != nil {
		t.Fatalf("Checkpoint(LeaveRunning): %v", err)
	}
	at = count(t, parentCount)
	if n := waitCount(t, parentCount, at+2); n <= at+2 {
		t.Fatalf("the tree does not run on after a dump with LeaveRunning")
	}
	if err := tree.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("Signal: %v", err)
	}
	if exited, err := tree.Exited(5 * time.Second); err != nil || !exited {
		t.Fatalf("Exited after SIGKILL = %v, %v", exited, err)
	}
	// Restored detached, the tree was reparented to this process, its subreaper: Wait reaps it.
	if ws, err := tree.Wait(); err != nil || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("Wait = %v, %v; want killed by SIGKILL", ws, err)
	}
	if err := tree.Signal(syscall.SIGKILL); !errors.Is(err, syscall.ESRCH) { // gone, and the pidfd says so
		t.Errorf("Signal after it was reaped = %v, want ESRCH", err)
	}
	tree.Close()
	syscall.Kill(child, syscall.SIGKILL) // reparented to us as well: reaped below
	reap(t, pid, child)

	// Restored as this process's child (CRIU's --restore-sibling), from the folder verified whole:
	// its parent is this process even when it is no subreaper; Wait reaps it with its status.
	setSubreaper(t, false)
	tree, err = rt.Restore(again, &checkpoint.Options{RestoreMode: checkpoint.RestoreChild, NoImageStream: true})
	setSubreaper(t, true)
	if err != nil {
		t.Fatalf("Restore(RestoreChild): %v", err)
	}
	if ppid := parentOf(t, tree.PID); ppid != os.Getpid() {
		t.Errorf("restored with RestoreChild, its parent is %d, not this process (%d)", ppid, os.Getpid())
	}
	at = count(t, parentCount)
	if n := waitCount(t, parentCount, at+2); n <= at+2 {
		t.Fatalf("the tree restored as a child does not count on")
	}
	if err := tree.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ws, err := tree.Wait()
	if err != nil || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("Wait = %v (signaled %v, %v), %v", ws, ws.Signaled(), ws.Signal(), err)
	}
	tree.Close()
}

func setSubreaper(t *testing.T, on bool) {
	t.Helper()
	arg := uintptr(0)
	if on {
		arg = 1
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, 36 /* PR_SET_CHILD_SUBREAPER */, arg, 0); e != 0 {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", e)
	}
}

// parentOf reads the parent's PID from /proc/PID/stat.
func parentOf(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// Two runtimes dump and restore in parallel; one runtime refuses a second operation meanwhile.
func TestParallelRuntimes(t *testing.T) {
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		dir := filepath.Join(base, fmt.Sprintf("parallel-%d", i))
		pid := startCounter(t, dir)
		child := childOf(t, pid)
		defer func() {
			syscall.Kill(-pid, syscall.SIGKILL)
			reap(t, pid, child)
		}()
		wg.Add(1)
		go func(i, pid int) {
			defer wg.Done()
			rt, err := checkpoint.New()
			if err != nil {
				errs[i] = err
				return
			}
			defer rt.Close()
			errs[i] = rt.Checkpoint("parallel", pid, filepath.Join(base, fmt.Sprintf("parallel-checkpoint-%d", i)),
				&checkpoint.Options{LeaveRunning: true})
		}(i, pid)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("parallel dump %d: %v", i, err)
		}
	}

	rt, err := checkpoint.New()
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	pid := startCounter(t, filepath.Join(base, "busy"))
	child := childOf(t, pid)
	defer func() {
		syscall.Kill(-pid, syscall.SIGKILL)
		reap(t, pid, child)
	}()
	var during error
	err = rt.Checkpoint("busy", pid, filepath.Join(base, "busy-checkpoint"), &checkpoint.Options{
		LeaveRunning: true,
		Notify: func(what checkpoint.Notification, _ int) error {
			if what == checkpoint.NotifyPreDump {
				_, during = rt.Restore("/nonexistent", nil) // the same runtime, busy dumping
			}
			return nil
		},
	})
	if err != nil {
		t.Errorf("the busy dump itself: %v", err)
	}
	if !errors.Is(during, checkpoint.ErrState) || !strings.Contains(during.Error(), "one runtime per thread") {
		t.Errorf("a restore on a runtime that is dumping = %v, want ErrState", during)
	}
}

// 64 goroutines × 200 failing calls at once, moving between OS threads as they go: each call's
// error is its own, message and all, with no runtime.LockOSThread anywhere. Some goroutines verify
// tampered copies instead, each with a different image changed, and must see their own image named.
func TestErrorsAcrossGoroutines(t *testing.T) {
	const goroutines, calls = 64, 200
	pathOf := func(g, i int) string { return fmt.Sprintf("/nonexistent-nc-go/goroutine-%02d/call-%04d", g, i) }
	reference := checkpoint.Verify(pathOf(99, 9999))
	if reference == nil {
		t.Fatal("Verify of a missing folder succeeded")
	}
	template := reference.Error()
	if !strings.Contains(template, pathOf(99, 9999)) {
		t.Fatalf("the message does not name the folder: %q", template)
	}

	// Tampered copies, if the CRIU test left a checkpoint: copy k has its k-th file's middle byte
	// flipped, so each names another file.
	var tampered []string
	var tamperedFile []string
	if ckpt := filepath.Join(base, "checkpoint"); checkpoint.Verify(ckpt) == nil {
		var files []string
		filepath.WalkDir(filepath.Join(ckpt, "images"), func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if info, err := d.Info(); err == nil && info.Size() > 0 {
					rel, _ := filepath.Rel(ckpt, path)
					files = append(files, rel)
				}
			}
			return nil
		})
		for k := 0; k < 4 && k < len(files); k++ {
			dir := filepath.Join(base, fmt.Sprintf("tampered-%d", k))
			copyTree(t, ckpt, dir)
			path := filepath.Join(dir, files[k])
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			data[len(data)/2] ^= 0x80
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			tampered = append(tampered, dir)
			tamperedFile = append(tamperedFile, files[k])
		}
	}

	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(8)) // more threads for the goroutines to move between
	var wrong, integrity sync.Map
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			<-start
			bad := 0
			for i := 0; i < calls; i++ {
				if k := g % 16; k < len(tampered) && i%40 == 0 {
					err := checkpoint.Verify(tampered[k])
					// The file this copy has changed, and no other copy's.
					msg := ""
					if err != nil {
						msg = err.Error()
					}
					if !errors.Is(err, checkpoint.ErrIntegrity) || !strings.Contains(msg, "'"+tamperedFile[k]+"'") {
						bad++
						wrong.Store(fmt.Sprintf("%d/%d", g, i), msg)
					}
					integrity.Store(g, true)
					continue
				}
				path := pathOf(g, i)
				err := checkpoint.Verify(path)
				want := strings.Replace(template, pathOf(99, 9999), path, 1)
				var e *checkpoint.Error
				if !errors.As(err, &e) || e.Status != checkpoint.StatusNotFound || err.Error() != want {
					bad++
					wrong.Store(fmt.Sprintf("%d/%d", g, i), fmt.Sprint(err))
				}
				if i%8 == 0 {
					runtime.Gosched()
				}
			}
		}(g)
	}
	close(start)
	wg.Wait()
	n := 0
	wrong.Range(func(k, v any) bool {
		if n++; n <= 5 {
			t.Errorf("call %v got someone else's error: %v", k, v)
		}
		return true
	})
	if n > 0 {
		t.Errorf("%d of %d calls saw an error not their own", n, goroutines*calls)
	}
	seen := 0
	integrity.Range(func(_, _ any) bool { seen++; return true })
	t.Logf("%d goroutines × %d calls, %d tampered copies verified by %d goroutines", goroutines, calls,
		len(tampered), seen)
}

// A progress or notify callback that panics: the panic reaches the caller, not C.
func TestCallbackPanic(t *testing.T) {
	dir := filepath.Join(base, "signed")
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "images", "data"), bytes.Repeat([]byte("x"), 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkpoint.Sign(dir, checkpoint.SignatureChunked, nil); err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if f, err := checkpoint.SignatureFormatOf(dir); err != nil || f != checkpoint.SignatureChunked {
		t.Errorf("SignatureFormatOf = %v, %v", f, err)
	}
	var last uint64
	if err := checkpoint.VerifyProgress(dir, func(b uint64) { last = b }); err != nil || last != 3<<20 {
		t.Errorf("VerifyProgress = %v, last total %d", err, last)
	}
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Errorf("recovered %v, want the callback's panic", v)
			}
		}()
		checkpoint.VerifyProgress(dir, func(uint64) { panic("boom") })
		t.Errorf("VerifyProgress returned after its callback panicked")
	}()
	if err := checkpoint.Verify(dir); err != nil { // the library is fine afterwards
		t.Errorf("Verify after a panic: %v", err)
	}
}
