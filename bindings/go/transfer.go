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
