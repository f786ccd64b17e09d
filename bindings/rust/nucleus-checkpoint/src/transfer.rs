//! Checkpoints between hosts: transfer streams through any descriptor (`nc_export`,
//! `nc_import`), pre-dump chains as one stream (`nc_export_chain`, `nc_import_chain`) and OCI
//! registry images (`nc_push_image`, `nc_pull_image`). Since 0.3.
use std::os::raw::c_char;
use std::os::unix::io::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::ptr;

use nucleus_checkpoint_sys as sys;

use crate::args;
use crate::error::{call, Result};
use crate::options::Options;
use crate::runtime::options_ptr;
use crate::{take_path, take_string};

/// Writes the checkpoint folder `dir` to `fd` (a `File`, a pipe, a `UnixStream`, `TcpStream`, from
/// its offset on) as one transfer stream, compressed as [`Options::compression`] says (`nc_export`):
/// its signature, the listing of its folders and files, then every file chunk by chunk. `dir` must
/// be signed in [`crate::SignatureFormat::MANIFEST`] (others: `Status::INVALID`, saying how to
/// re-sign); it is not verified here, [`import`] verifies. A reader that goes away fails it with
/// `Status::IO`, never with `SIGPIPE`. It blocks until the whole stream is written: run it on a
/// thread of its own when this process also reads the other end.
pub fn export(dir: impl AsRef<Path>, fd: impl AsFd, options: Option<&Options>) -> Result<()> {
    let dir = args::path("dir", dir.as_ref())?;
    let fd = fd.as_fd();
    // SAFETY: a C string, a descriptor borrowed across the call; the options outlive it.
    call(|err| unsafe { sys::nc_export_e(dir.as_ptr(), fd.as_raw_fd(), options_ptr(options), err) })
}

/// Reads a stream written by [`export`] from `fd` into the new checkpoint folder `dir` (absent,
/// or an empty folder), through a private staging folder beside it (`nc_import`): the listing is
/// authenticated (with the HMAC key, or a trusted Ed25519 public key) before any file byte is
/// accepted, each chunk is checked as it arrives, and the folder is renamed into place only once
/// the stream has ended cleanly. A truncated, corrupted, oversized or foreign stream fails with
/// `Status::INTEGRITY` and leaves nothing behind.
pub fn import(fd: impl AsFd, dir: impl AsRef<Path>, options: Option<&Options>) -> Result<()> {
    let dir = args::path("dir", dir.as_ref())?;
    let fd = fd.as_fd();
    // SAFETY: a descriptor borrowed across the call, a C string; the options outlive it.
    call(|err| unsafe { sys::nc_import_e(fd.as_raw_fd(), dir.as_ptr(), options_ptr(options), err) })
}

/// Writes the chain of the layer folder `layer_dir` (the layer and each parent, a sibling folder)
/// to `fd` as one chain stream (README, "Chain stream"), oldest first (`nc_export_chain`): a table
/// naming every layer and its signature's SHA-256, then each layer the receiver lacks as [`export`]
/// writes a checkpoint, compressed as [`Options::compression`] says. [`Options::add_receiver_has`]
/// names the layers the receiver holds, which are not sent. The chain's links and bindings are
/// checked, no signature ([`import_chain`] verifies): a broken chain (`Status::INTEGRITY`) or a
/// layer to send not signed in [`crate::SignatureFormat::MANIFEST`] (`Status::INVALID`) is refused
/// before a byte is written. A folder without a parent is a chain of one. It blocks until the whole
/// stream is written, as [`export`] does.
pub fn export_chain(layer_dir: impl AsRef<Path>, fd: impl AsFd, options: Option<&Options>) -> Result<()> {
    let layer_dir = args::path("layer_dir", layer_dir.as_ref())?;
    let fd = fd.as_fd();
    // SAFETY: a C string, a descriptor borrowed across the call; the options outlive it.
    call(|err| unsafe { sys::nc_export_chain_e(layer_dir.as_ptr(), fd.as_raw_fd(), options_ptr(options), err) })
}

/// Reads a stream written by [`export_chain`] from `fd` into the store folder `store_dir` (created
/// if missing) and returns the newest layer's folder in it (`nc_import_chain`). Each layer sent is
/// imported as [`import`] imports a checkpoint, parents first, into the sibling folder the stream
/// names, its parent link made here exactly as signed. A layer not sent must be in `store_dir`
/// already with the signature the stream names, and a layer sent must not be (`Status::INVALID`,
/// naming the folder). Once the stream has ended, the whole chain is verified as [`crate::verify`]
/// verifies it. Any failure (`Status::INTEGRITY` for a changed, cut or foreign stream) removes the
/// layers this call made and leaves the folders that were there before alone.
pub fn import_chain(fd: impl AsFd, store_dir: impl AsRef<Path>, options: Option<&Options>) -> Result<PathBuf> {
    let store_dir = args::path("store_dir", store_dir.as_ref())?;
    let fd = fd.as_fd();
    let mut newest: *mut c_char = ptr::null_mut();
    // SAFETY: a descriptor borrowed across the call, a C string and a valid out pointer; the
    // options outlive the call.
    call(|err| unsafe {
        sys::nc_import_chain_e(fd.as_raw_fd(), store_dir.as_ptr(), options_ptr(options), &mut newest, err)
    })?;
    // SAFETY: the library's string, ours to free.
    Ok(unsafe { take_path(newest) }.unwrap_or_default())
}

/// Verifies the checkpoint folder `dir` with this host's keys (`Status::INTEGRITY`: not
/// published), then uploads it as the OCI image `reference`, `HOST[:PORT]/NAME[:TAG]` (README,
/// "Registry images"), and returns the manifest's digest, `"sha256:..."`: pulling
/// `HOST[:PORT]/NAME@DIGEST` gets exactly this image (`nc_push_image`). [`Options::insecure_registry`]
/// speaks plain http. Registry errors: `Status::IO` (unreachable), `Status::PERMISSION` (401/403),
/// `Status::NOT_FOUND` (404); a library built without libcurl and libarchive: `Status::UNSUPPORTED`.
pub fn push_image(dir: impl AsRef<Path>, reference: &str, options: Option<&Options>) -> Result<String> {
    let dir = args::path("dir", dir.as_ref())?;
    let reference = args::text("image reference", reference)?;
    let mut digest: *mut c_char = ptr::null_mut();
    // SAFETY: C strings and a valid out pointer; the options outlive the call.
    call(|err| unsafe {
        sys::nc_push_image_e(dir.as_ptr(), reference.as_ptr(), options_ptr(options), &mut digest, err)
    })?;
    // SAFETY: the library's string, ours to free.
    Ok(unsafe { take_string(digest) }.unwrap_or_default())
}

/// Pulls the image `reference` (`HOST[:PORT]/NAME[:TAG]` or `HOST[:PORT]/NAME@sha256:HEX`) into the
/// new checkpoint folder `dir` (absent, or an empty folder): downloaded and extracted into a
/// private staging folder beside it, every digest, size, name and mode checked, verified with this
/// host's keys, and only then renamed into place (`nc_pull_image`). Anything else fails with
/// `Status::INTEGRITY` and leaves nothing behind.
pub fn pull_image(reference: &str, dir: impl AsRef<Path>, options: Option<&Options>) -> Result<()> {
    let reference = args::text("image reference", reference)?;
    let dir = args::path("dir", dir.as_ref())?;
    // SAFETY: C strings; the options outlive the call.
    call(|err| unsafe { sys::nc_pull_image_e(reference.as_ptr(), dir.as_ptr(), options_ptr(options), err) })
}
