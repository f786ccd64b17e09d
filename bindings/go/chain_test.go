// Pre-dump chains as one stream (ExportChain, ImportChain; the README's "Chain stream"), as root
// with the real CRIU: a real dump made into a chain of two layers as a dump on a parent makes one
// (so that it runs where the kernel cannot pre-dump), moved through a socket pair to a new store and
// restored there; only the layer a receiver lacks sent (ReceiverHas); a plain dump as a chain of
// one; and refused: a stream with one byte flipped (nothing left in the store), a malformed
// ReceiverHas, a checkpoint's stream given to ImportChain and a chain's to Import.
package checkpoint_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"nucleus.dev/checkpoint"
)

// signatureSHA256 is the SHA-256 of the checkpoint's checkpoint.hmac, as ReceiverHas takes it.
func signatureSHA256(t *testing.T, dir string) string {
	t.Helper()
	signature, err := os.ReadFile(filepath.Join(dir, "checkpoint.hmac"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(signature)
	return hex.EncodeToString(sum[:])
}

// linkLayer copies the checkpoint dumped into layers/name and makes it a layer as a dump on a
// parent makes one: the metadata's "chain" record, bound to the signature of layers/parent, and
// CRIU's link to the parent's images, all signed again. Without a parent it is the chain's oldest
// layer, a pre-dump; with one, the final dump.
func linkLayer(t *testing.T, dumped, layers, name, parent string) string {
	t.Helper()
	dir := filepath.Join(layers, name)
	copyTree(t, dumped, dir)
	path := filepath.Join(dir, "metadata.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	decoder := json.NewDecoder(bytes.NewReader(data))
	decoder.UseNumber() // PIDs and inodes kept exactly
	var metadata map[string]any
	if err := decoder.Decode(&metadata); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	nucleus, ok := metadata["nucleus"].(map[string]any)
	if !ok {
		t.Fatalf("%s has no \"nucleus\" object", path)
	}
	bound := ""
	if parent != "" {
		bound = signatureSHA256(t, filepath.Join(layers, parent))
		if err := os.Symlink("../../"+parent+"/images", filepath.Join(dir, "images", "parent")); err != nil {
			t.Fatal(err)
		}
	}
	nucleus["chain"] = map[string]any{"predump": parent == "", "parent": parent, "parent_signature_sha256": bound}
	if data, err = json.Marshal(metadata); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkpoint.SignAs(dir, checkpoint.SignatureManifest, checkpoint.SigningDefault, nil); err != nil {
		t.Fatalf("SignAs(%s): %v", dir, err)
	}
	return dir
}

// newStream creates the file base/name for a stream, closed at the end of the test.
func newStream(t *testing.T, name string) *os.File {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(base, name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// chainStream writes the chain of layer into the new file base/name and returns its path.
func chainStream(t *testing.T, layer, name string, opts *checkpoint.Options) string {
	t.Helper()
	f := newStream(t, name)
	if err := checkpoint.ExportChain(layer, f, opts); err != nil {
		t.Fatalf("ExportChain(%s, %+v): %v", layer, opts, err)
	}
	return f.Name()
}

func sizeOf(t *testing.T, path string) int64 {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Size()
}

func TestChainTransfer(t *testing.T) {
	rt, pid, child, parentCount := treeAndRuntime(t, "chain-stream-counter")
	dumped := filepath.Join(base, "chain-stream-dump")
	if err := rt.Checkpoint("go-chain-stream", pid, dumped, nil); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	reap(t, pid, child)
	atDump := count(t, parentCount)
	layers := privateFolder(t, "chain-stream-layers")
	p0 := linkLayer(t, dumped, layers, "p0", "")
	final := linkLayer(t, dumped, layers, "final", "p0")
	if err := checkpoint.Verify(final); err != nil {
		t.Fatalf("Verify(the chain): %v", err)
	}
	if err := checkpoint.Export(final, newStream(t, "layer.stream"), nil); !errors.Is(err, checkpoint.ErrInvalid) ||
		!strings.Contains(err.Error(), "export it with its chain") {
		t.Errorf("Export of a layer with a parent = %v, want ErrInvalid saying to export its chain", err)
	}

	// The whole chain through a socket pair, compressed, into a store made for it.
	store := filepath.Join(base, "chain-stream-store")
	var newest string
	exported, imported := throughSocketPair(t, func(w *os.File) error {
		return checkpoint.ExportChain(final, w, &checkpoint.Options{Compression: checkpoint.CompressionZstd})
	}, func(r *os.File) (err error) {
		newest, err = checkpoint.ImportChain(r, store, nil)
		return err
	})
	if exported != nil || imported != nil {
		t.Fatalf("a chain through a socket pair: export %v, import %v", exported, imported)
	}
	if newest != filepath.Join(store, "final") {
		t.Errorf("ImportChain returned %q, want %s", newest, filepath.Join(store, "final"))
	}
	if names := committed(t, store); strings.Join(names, " ") != "final p0" {
		t.Errorf("the store holds %q, want the two layers alone", names)
	}
	if link, err := os.Readlink(filepath.Join(store, "final", "images", "parent")); err != nil || link != "../../p0/images" {
		t.Errorf("the imported layer's parent link: %q, %v", link, err)
	}
	for _, layer := range []string{"p0", "final"} {
		if got, want := signatureSHA256(t, filepath.Join(store, layer)), signatureSHA256(t, filepath.Join(layers, layer)); got != want {
			t.Errorf("%s imported with signature %s, not the sender's %s", layer, got, want)
		}
	}
	if err := checkpoint.Verify(newest); err != nil {
		t.Fatalf("Verify(the imported chain): %v", err)
	}

	// A receiver that holds p0 is sent final alone; without p0 the same stream is refused.
	full := chainStream(t, final, "chain-full.stream", nil)
	lacking := chainStream(t, final, "chain-lacking.stream", &checkpoint.Options{ReceiverHas: []string{signatureSHA256(t, p0)}})
	if pages := sizeOf(t, filepath.Join(p0, "images", "pages-1.img")); sizeOf(t, lacking)+pages > sizeOf(t, full) {
		t.Errorf("the stream leaving p0 out (%d bytes) is not %d bytes of pages smaller than the whole chain's (%d)",
			sizeOf(t, lacking), pages, sizeOf(t, full))
	}
	held := privateFolder(t, "chain-stream-held")
	copyTree(t, p0, filepath.Join(held, "p0"))
	if newest, err := checkpoint.ImportChain(fileOf(t, lacking), held, nil); err != nil || newest != filepath.Join(held, "final") {
		t.Fatalf("ImportChain beside the layer held = %q, %v", newest, err)
	}
	if err := checkpoint.Verify(filepath.Join(held, "final")); err != nil {
		t.Errorf("Verify(the chain completed beside the layer held): %v", err)
	}
	empty := filepath.Join(base, "chain-stream-empty")
	if _, err := checkpoint.ImportChain(fileOf(t, lacking), empty, nil); !errors.Is(err, checkpoint.ErrInvalid) ||
		!strings.Contains(err.Error(), "'p0'") {
		t.Errorf("ImportChain of a stream leaving out a layer the store lacks = %v, want ErrInvalid naming p0", err)
	}

	// A plain dump is a chain of one.
	one := chainStream(t, dumped, "chain-one.stream", nil)
	oneStore := filepath.Join(base, "chain-one-store")
	if newest, err := checkpoint.ImportChain(fileOf(t, one), oneStore, nil); err != nil ||
		newest != filepath.Join(oneStore, filepath.Base(dumped)) {
		t.Errorf("ImportChain of a chain of one = %q, %v", newest, err)
	}

	// Refused: one byte flipped in final's part of the stream, after p0 was imported; nothing is
	// left in the store.
	data, err := os.ReadFile(full)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)*3/4] ^= 0x01
	flipped := filepath.Join(base, "chain-flipped.stream")
	if err := os.WriteFile(flipped, data, 0o600); err != nil {
		t.Fatal(err)
	}
	flippedStore := privateFolder(t, "chain-flipped-store")
	if newest, err := checkpoint.ImportChain(fileOf(t, flipped), flippedStore, nil); !errors.Is(err, checkpoint.ErrIntegrity) ||
		newest != "" {
		t.Errorf("ImportChain of a stream with a flipped byte = %q, %v; want ErrIntegrity", newest, err)
	}
	if left := committed(t, flippedStore); len(left) != 0 {
		t.Errorf("a refused chain import left %q in the store", left)
	}
	// A ReceiverHas that is not a SHA-256 in lowercase hex, before a byte is written.
	for _, sha := range []string{"p0", strings.ToUpper(signatureSHA256(t, p0))} {
		w := newStream(t, "chain-refused-"+sha[:2]+".stream")
		err := checkpoint.ExportChain(final, w, &checkpoint.Options{ReceiverHas: []string{sha}})
		if !errors.Is(err, checkpoint.ErrInvalid) || !strings.Contains(err.Error(), "64 lowercase hex digits") {
			t.Errorf("ExportChain with ReceiverHas %q = %v, want ErrInvalid", sha, err)
		}
		if size := sizeOf(t, w.Name()); size != 0 {
			t.Errorf("a refused ExportChain wrote %d bytes", size)
		}
	}
	// Each importer refuses the other's stream, saying which to use.
	plain := newStream(t, "chain-plain.stream")
	if err := checkpoint.Export(dumped, plain, nil); err != nil {
		t.Fatalf("Export: %v", err)
	}
	if _, err := checkpoint.ImportChain(fileOf(t, plain.Name()), filepath.Join(base, "chain-plain-store"), nil); !errors.Is(err,
		checkpoint.ErrIntegrity) || !strings.Contains(err.Error(), "not a chain") {
		t.Errorf("ImportChain of a checkpoint's stream = %v, want ErrIntegrity saying to use Import", err)
	}
	if err := checkpoint.Import(fileOf(t, full), filepath.Join(base, "chain-as-one"), nil); !errors.Is(err,
		checkpoint.ErrIntegrity) || !strings.Contains(err.Error(), "nc_import_chain") {
		t.Errorf("Import of a chain stream = %v, want ErrIntegrity saying to import the chain", err)
	}
	if _, err := checkpoint.ImportChain(nil, store, nil); !errors.Is(err, checkpoint.ErrInvalid) {
		t.Errorf("ImportChain(nil) = %v", err)
	}
	if err := checkpoint.ExportChain(final, nil, nil); !errors.Is(err, checkpoint.ErrInvalid) {
		t.Errorf("ExportChain(nil) = %v", err)
	}

	// The chain restores from the store it was imported into: the tree counts on.
	tree, err := rt.Restore(filepath.Join(store, "final"), nil)
	if err != nil {
		t.Fatalf("Restore of the imported chain: %v", err)
	}
	defer tree.Close()
	if tree.PID != pid {
		t.Errorf("restored as PID %d, not %d", tree.PID, pid)
	}
	if n := waitCount(t, parentCount, atDump+3); n <= atDump+3 {
		t.Fatalf("the tree restored from the imported chain does not count on: %d at the dump, %d now", atDump, n)
	}
}
