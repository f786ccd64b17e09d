//! Checkpoint and restore Linux process trees through CRIU, with every checkpoint signed
//! (HMAC-SHA256, or Ed25519 for hosts that hold only the public key) and verified before CRIU reads
//! it: a safe API over libnucleuscheckpoint's C ABI (the raw one is the `nucleus-checkpoint-sys`
//! crate). Checkpoints move between hosts as verified streams ([`export`], [`import`]; a pre-dump
//! chain as one: [`export_chain`], [`import_chain`]) or registry images ([`push_image`],
//! [`pull_image`]), and running trees by migration ([`Runtime::migrate`], [`Runtime::receive`]).
//!
//! - Every fallible call returns [`Result`], whose [`Error`] carries the C ABI's [`Status`], the
//!   library's message, and CRIU's exit code and `Error` lines where CRIU's run failed. Each call
//!   has an `nc_error` of its own (the `_e` functions), so an error never depends on the OS thread.
//! - Paths and strings go in as `Path`/`str`; one holding a NUL byte is refused with
//!   [`Status::INVALID`] before the library is called.
//! - Status codes and the C enums are integer newtypes with associated constants, so a value a
//!   later library adds is never undefined behaviour.
//! - Callbacks (progress, CRIU's notifications) run under `catch_unwind`: a panic never unwinds
//!   into C, and is reported as the call's error ([`Error::is_panic`]).
//!
//! ```no_run
//! use nucleus_checkpoint::{Options, Runtime, Status};
//!
//! fn main() -> nucleus_checkpoint::Result<()> {
//!     let mut rt = Runtime::new()?; // finds and checks CRIU
//!     let mut opts = Options::new()?;
//!     opts.leave_running(true)?;
//!     rt.checkpoint("web", 1234, "/var/lib/ckpt/web", Some(&opts))?;
//!     match nucleus_checkpoint::verify("/var/lib/ckpt/web") {
//!         Err(e) if e.status() == Status::INTEGRITY => eprintln!("tampered: {}", e.message()),
//!         other => other?,
//!     }
//!     Ok(())
//! }
//! ```
#![warn(missing_debug_implementations)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::ptr;

pub use nucleus_checkpoint_sys as sys;
pub use libc::pid_t;

mod args;
mod callback;
mod error;
mod migrate;
mod options;
mod runtime;
mod transfer;
mod types;

pub use error::{Error, Result, Status};
pub use migrate::{MigrationReport, ReceivedMigration};
pub use options::Options;
pub use runtime::{CriuVersion, RestoredTree, Runtime};
pub use transfer::{export, export_chain, import, import_chain, pull_image, push_image};
pub use types::{CgroupMode, Compression, NetworkLock, Notification, RestoreMode, SignatureFormat, Signing};

use callback::Progress;
use error::call;

/// The library's version, `"0.1.0"` (`nc_version_string`).
pub fn version() -> &'static str {
    // SAFETY: a static string of the library's.
    let v = unsafe { sys::nc_version_string() };
    if v.is_null() {
        return "";
    }
    // SAFETY: non-NULL, NUL-terminated, never freed.
    unsafe { CStr::from_ptr(v) }.to_str().unwrap_or("")
}

/// Signs `dir` in the seed format (nucleus-container 0.3.3's), with the key store's key, created if
/// there is none (`nc_sign`).
pub fn sign(dir: impl AsRef<Path>) -> Result<()> {
    let dir = args::path("dir", dir.as_ref())?;
    // SAFETY: a C string.
    call(|err| unsafe { sys::nc_sign_e(dir.as_ptr(), err) })
}

/// Signs `dir` in `format` with the HMAC key, calling `progress` with the running total of bytes
/// hashed, on this thread (`nc_sign_ex`). A panic in `progress` is caught and is the call's error.
pub fn sign_with_progress<F: FnMut(u64)>(dir: impl AsRef<Path>, format: SignatureFormat, progress: F) -> Result<()> {
    sign_as_with_progress(dir, format, Signing::HMAC, progress)
}

/// Signs `dir` in `format` with the HMAC key (`nc_sign_ex`).
pub fn sign_format(dir: impl AsRef<Path>, format: SignatureFormat) -> Result<()> {
    sign_as(dir, format, Signing::HMAC)
}

/// Signs `dir` in `format` with the key store's key of kind `signing`, created if there is none
/// (`nc_sign_as`): `Status::INVALID` for Ed25519 in the seed format, which is HMAC-only. Since 0.3.
pub fn sign_as(dir: impl AsRef<Path>, format: SignatureFormat, signing: Signing) -> Result<()> {
    let dir = args::path("dir", dir.as_ref())?;
    // SAFETY: a C string; no progress.
    call(|err| unsafe { sys::nc_sign_as_e(dir.as_ptr(), format.0, signing.0, None, ptr::null_mut(), err) })
}

/// [`sign_as`], calling `progress` with the running total of bytes hashed, on this thread. A panic
/// in `progress` is caught and is the call's error. Since 0.3.
pub fn sign_as_with_progress<F: FnMut(u64)>(
    dir: impl AsRef<Path>,
    format: SignatureFormat,
    signing: Signing,
    mut progress: F,
) -> Result<()> {
    let dir = args::path("dir", dir.as_ref())?;
    let mut state = Progress::new(&mut progress);
    let user = state.user();
    // SAFETY: a C string; user points to state, alive across the call.
    let outcome =
        call(|err| unsafe { sys::nc_sign_as_e(dir.as_ptr(), format.0, signing.0, Progress::callback(), user, err) });
    state.finish(outcome)
}

/// Which kind of key signed `dir` and, for Ed25519, the key's id (32 hex digits, as
/// [`public_key`] gives it), read from its checkpoint.hmac alone: nothing is verified
/// (`nc_signer_of`). `Status::INTEGRITY` if it is unsigned or malformed. Since 0.3.
pub fn signer_of(dir: impl AsRef<Path>) -> Result<(Signing, Option<String>)> {
    let dir = args::path("dir", dir.as_ref())?;
    let mut signing = 0;
    let mut key_id: *mut c_char = ptr::null_mut();
    // SAFETY: a C string and valid out pointers.
    call(|err| unsafe { sys::nc_signer_of_e(dir.as_ptr(), &mut signing, &mut key_id, err) })?;
    // SAFETY: NULL, or the library's string, ours to free.
    Ok((Signing(signing), unsafe { take_string(key_id) }))
}

/// A string the library allocated, copied and freed; `None` for NULL.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string from the library, not used afterwards.
unsafe fn take_string(s: *mut c_char) -> Option<String> {
    take_bytes(s).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A path the library allocated, copied byte for byte (a path need not be UTF-8) and freed;
/// `None` for NULL.
///
/// # Safety
/// As [`take_string`].
unsafe fn take_path(s: *mut c_char) -> Option<PathBuf> {
    take_bytes(s).map(|b| PathBuf::from(std::ffi::OsString::from_vec(b)))
}

/// The bytes of a string the library allocated, copied, and the string freed; `None` for NULL.
///
/// # Safety
/// As [`take_string`].
unsafe fn take_bytes(s: *mut c_char) -> Option<Vec<u8>> {
    if s.is_null() {
        return None;
    }
    let bytes = CStr::from_ptr(s).to_bytes().to_vec();
    sys::nc_free(s as *mut _);
    Some(bytes)
}

/// Ok if `dir` verifies, in whichever format it is signed; `Status::INTEGRITY` if it was changed,
/// swapped, or is unsigned or malformed (`nc_verify`).
pub fn verify(dir: impl AsRef<Path>) -> Result<()> {
    let dir = args::path("dir", dir.as_ref())?;
    // SAFETY: a C string.
    call(|err| unsafe { sys::nc_verify_e(dir.as_ptr(), err) })
}

/// [`verify`], calling `progress` with the running total of bytes hashed, on this thread
/// (`nc_verify_progress`). A panic in `progress` is caught and is the call's error, so a verify
/// whose progress closure panicked never reads as Ok.
pub fn verify_with_progress<F: FnMut(u64)>(dir: impl AsRef<Path>, mut progress: F) -> Result<()> {
    let dir = args::path("dir", dir.as_ref())?;
    let mut state = Progress::new(&mut progress);
    let user = state.user();
    // SAFETY: a C string; user points to state, alive across the call.
    let outcome = call(|err| unsafe { sys::nc_verify_progress_e(dir.as_ptr(), Progress::callback(), user, err) });
    state.finish(outcome)
}

/// The format `dir` is signed in, read from its checkpoint.hmac alone (nothing is verified):
/// `Status::INTEGRITY` if it is unsigned or malformed (`nc_signature_format_of`).
pub fn signature_format_of(dir: impl AsRef<Path>) -> Result<SignatureFormat> {
    let dir = args::path("dir", dir.as_ref())?;
    let mut format = 0;
    // SAFETY: a C string and a valid out pointer.
    call(|err| unsafe { sys::nc_signature_format_of_e(dir.as_ptr(), &mut format, err) })?;
    Ok(SignatureFormat(format))
}

/// The checkpoint's metadata.json, checked and re-serialised (`nc_read_metadata`). Only as
/// trustworthy as the checkpoint: verify first.
pub fn read_metadata(dir: impl AsRef<Path>) -> Result<String> {
    let dir = args::path("dir", dir.as_ref())?;
    let mut json: *mut c_char = ptr::null_mut();
    // SAFETY: a C string and a valid out pointer.
    call(|err| unsafe { sys::nc_read_metadata_e(dir.as_ptr(), &mut json, err) })?;
    // SAFETY: the library's string, ours to free.
    Ok(unsafe { take_string(json) }.unwrap_or_default())
}

/// Process-wide: at most `bytes` of files hashed for one checkpoint; 0 goes back to the default
/// (`nc_set_max_checkpoint_bytes`).
pub fn set_max_checkpoint_bytes(bytes: u64) -> Result<()> {
    // SAFETY: plain value.
    call(|err| unsafe { sys::nc_set_max_checkpoint_bytes_e(bytes, err) })
}

/// The key store's path (`nc_key_path_ex`).
pub fn key_path() -> Result<PathBuf> {
    loop {
        let mut needed = 0;
        // SAFETY: NULL with size 0 asks for the size alone.
        call(|err| unsafe { sys::nc_key_path_ex_e(ptr::null_mut(), 0, &mut needed, err) })?;
        let mut buf = vec![0u8; needed.max(1)];
        let mut again = 0;
        // SAFETY: buf has buf.len() writable bytes.
        let outcome =
            call(|err| unsafe { sys::nc_key_path_ex_e(buf.as_mut_ptr() as *mut c_char, buf.len(), &mut again, err) });
        match outcome {
            Ok(()) => {
                let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                buf.truncate(len);
                return Ok(PathBuf::from(std::ffi::OsString::from_vec(buf)));
            }
            Err(_) if again > buf.len() => continue, // the path changed meanwhile (its env var)
            Err(e) => return Err(e),
        }
    }
}

/// Creates the key store's key if there is none; true if this call created it (`nc_keygen`).
pub fn keygen() -> Result<bool> {
    let mut created: c_int = 0;
    // SAFETY: a valid out pointer.
    call(|err| unsafe { sys::nc_keygen_e(&mut created, err) })?;
    Ok(created != 0)
}

/// Creates the key store's Ed25519 key if there is none, and trusts its public key on this host;
/// true if this call created it (`nc_keygen_ed25519`). It is found as the README says
/// (`$NUCLEUS_CHECKPOINT_ED25519_KEY_FILE`, else beside the HMAC key). Since 0.3.
pub fn keygen_ed25519() -> Result<bool> {
    let mut created: c_int = 0;
    // SAFETY: a valid out pointer.
    call(|err| unsafe { sys::nc_keygen_ed25519_e(&mut created, err) })?;
    Ok(created != 0)
}

/// The key store's Ed25519 public key, from [`public_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// The text of its public key file, for another host's [`trust_key`].
    pub text: String,
    /// Its key id, 32 hex digits, as [`signer_of`] reports it.
    pub key_id: String,
}

/// The key store's Ed25519 public key (`nc_public_key`); `Status::KEY` if there is no key.
/// Since 0.3.
pub fn public_key() -> Result<PublicKey> {
    let (mut text, mut key_id): (*mut c_char, *mut c_char) = (ptr::null_mut(), ptr::null_mut());
    // SAFETY: valid out pointers.
    call(|err| unsafe { sys::nc_public_key_e(&mut text, &mut key_id, err) })?;
    // SAFETY: the library's strings, ours to free.
    let (text, key_id) = unsafe { (take_string(text), take_string(key_id)) };
    Ok(PublicKey { text: text.unwrap_or_default(), key_id: key_id.unwrap_or_default() })
}

/// Adds a public key ([`PublicKey::text`], from the signing host) to this host's trust folder
/// (`$NUCLEUS_CHECKPOINT_TRUSTED_KEYS`, else `trusted-keys/` beside the HMAC key), creating it if
/// needed: checkpoints that key signs verify here from then on (`nc_trust_key`). `Status::KEY` for
/// text that is not a public key. Since 0.3.
pub fn trust_key(public_key_text: &str) -> Result<()> {
    let text = args::text("public key", public_key_text)?;
    // SAFETY: a C string.
    call(|err| unsafe { sys::nc_trust_key_e(text.as_ptr(), err) })
}
