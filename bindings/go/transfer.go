package checkpoint

// #include <nucleus/checkpoint.h>
import "C"

import (
	"runtime"
	"syscall"
)

// withFd runs f with conn's descriptor, which conn cannot close meanwhile (RawConn.Control holds
// it). A descriptor the poller made non-blocking is fine: the library waits for it with poll.
func withFd(op string, conn syscall.Conn, f func(fd C.int) error) error {
	if conn == nil {
		return invalid("%s: no descriptor (nil)", op)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return invalid("%s: %v", op, err)
	}
	var result error
	if err := raw.Control(func(fd uintptr) { result = f(C.int(fd)) }); err != nil {
		return invalid("%s: %v", op, err) // closed
	}
	runtime.KeepAlive(conn)
	return result
}

// Export writes the checkpoint folder dir to w (an *os.File, a pipe, a *net.UnixConn or
// *net.TCPConn, from its current offset on) as one transfer stream, compressed as
// opts.Compression says (opts may be nil): its signature, the listing of its folders and files,
// then every file chunk by chunk. dir must be signed in SignatureManifest (others: ErrInvalid,
// saying how to re-sign); it is not verified here, Import verifies. A reader that goes away fails
// it with ErrIO, never with SIGPIPE. It blocks until the whole stream is written: run it on a
// goroutine of its own when this process also reads the other end. Since 0.3.
func Export(dir string, w syscall.Conn, opts *Options) error {
	return withArgs(opts, []arg{{"checkpoint folder", dir}}, func(c []*C.char, o *cOptions) error {
		return withFd("export", w, func(fd C.int) error {
			return call(func(e *C.nc_error) C.nc_status { return C.nc_export_e(c[0], fd, o.handle, e) })
		})
	})
}

// Import reads a stream written by Export from r into the new checkpoint folder dir (absent, or
// an empty folder), through a private staging folder beside it: the listing is authenticated
// (with the HMAC key, or a trusted Ed25519 public key) before any file byte is accepted, each chunk
// is checked as it arrives, and the folder is renamed into place only once the stream has ended
// cleanly. A truncated, corrupted, oversized or foreign stream fails with ErrIntegrity and leaves
// nothing behind. opts may be nil. Since 0.3.
func Import(r syscall.Conn, dir string, opts *Options) error {
	return withArgs(opts, []arg{{"checkpoint folder", dir}}, func(c []*C.char, o *cOptions) error {
		return withFd("import", r, func(fd C.int) error {
			return call(func(e *C.nc_error) C.nc_status { return C.nc_import_e(fd, c[0], o.handle, e) })
		})
	})
}

// ExportChain writes the chain of the layer folder layerDir (the layer and each parent, a sibling
// folder) to w as one chain stream (the README's "Chain stream"), oldest first: a table naming
// every layer and its signature's SHA-256, then each layer the receiver lacks as Export writes a
// checkpoint, compressed as opts.Compression says (opts may be nil). opts.ReceiverHas names the
// layers the receiver holds, which are not sent. The chain's links and bindings are checked, no
// signature (ImportChain verifies): a broken chain (ErrIntegrity) or a layer to send not signed in
// SignatureManifest (ErrInvalid) is refused before a byte is written. A folder without a parent is
// a chain of one. It blocks until the whole stream is written, as Export does. Since 0.3.
func ExportChain(layerDir string, w syscall.Conn, opts *Options) error {
	return withArgs(opts, []arg{{"layer folder", layerDir}}, func(c []*C.char, o *cOptions) error {
		return withFd("export chain", w, func(fd C.int) error {
			return call(func(e *C.nc_error) C.nc_status { return C.nc_export_chain_e(c[0], fd, o.handle, e) })
		})
	})
}

// ImportChain reads a stream written by ExportChain from r into the store folder storeDir (created
// if missing) and returns the newest layer's folder in it. Each layer sent is imported as Import
// imports a checkpoint, parents first, into the sibling folder the stream names, its parent link
// made here exactly as signed. A layer not sent must be in storeDir already with the signature the
// stream names, and a layer sent must not be (ErrInvalid, naming the folder). Once the stream has
// ended, the whole chain is verified as Verify verifies it. Any failure (ErrIntegrity for a
// changed, cut or foreign stream) removes the layers this call made and leaves the folders that
// were there before alone. opts may be nil. Since 0.3.
func ImportChain(r syscall.Conn, storeDir string, opts *Options) (newestLayer string, err error) {
	err = withArgs(opts, []arg{{"store folder", storeDir}}, func(c []*C.char, o *cOptions) error {
		return withFd("import chain", r, func(fd C.int) error {
			var layer *C.char
			err := call(func(e *C.nc_error) C.nc_status { return C.nc_import_chain_e(fd, c[0], o.handle, &layer, e) })
			newestLayer = takeString(layer)
			return err
		})
	})
	return newestLayer, err
}

// PushImage verifies the checkpoint folder dir with this host's keys (ErrIntegrity: not
// published), then uploads it to a registry as the OCI image reference, HOST[:PORT]/NAME[:TAG]
// (the README's "Registry images"), and returns the manifest's digest ("sha256:..."): pulling
// HOST[:PORT]/NAME@DIGEST gets exactly this image. opts.InsecureRegistry speaks plain http (opts
// may be nil). Registry errors: ErrIO (unreachable), ErrPermission (401/403), ErrNotFound (404);
// a library built without libcurl and libarchive: ErrUnsupported. Since 0.3.
func PushImage(dir, reference string, opts *Options) (digest string, err error) {
	err = withArgs(opts, []arg{{"checkpoint folder", dir}, {"image reference", reference}}, func(c []*C.char,
		o *cOptions) error {
		var d *C.char
		err := call(func(e *C.nc_error) C.nc_status { return C.nc_push_image_e(c[0], c[1], o.handle, &d, e) })
		digest = takeString(d)
		return err
	})
	return digest, err
}

// PullImage pulls the image reference (HOST[:PORT]/NAME[:TAG] or HOST[:PORT]/NAME@sha256:HEX)
// into the new checkpoint folder dir (absent, or an empty folder): downloaded and extracted into a
// private staging folder beside dir, every digest, size, name and mode checked, verified with
// this host's keys, and only then renamed into place. Anything else fails with ErrIntegrity and
// leaves nothing behind. opts may be nil. Since 0.3.
func PullImage(reference, dir string, opts *Options) error {
	return withArgs(opts, []arg{{"image reference", reference}, {"checkpoint folder", dir}}, func(c []*C.char,
		o *cOptions) error {
		return call(func(e *C.nc_error) C.nc_status { return C.nc_pull_image_e(c[0], c[1], o.handle, e) })
	})
}
