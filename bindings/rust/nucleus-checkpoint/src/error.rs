//! Status codes and errors.
use std::ffi::CStr;
use std::fmt;
use std::os::raw::c_char;
use std::ptr;

use nucleus_checkpoint_sys as sys;

/// A status code of the C ABI (`nc_status`). An integer newtype rather than an enum, so a value a
/// later library returns is an ordinary `Status` with a number, never undefined behaviour: match on
/// the constants with a `_` arm.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Status(pub i32);

impl Status {
    pub const OK: Status = Status(sys::NC_OK);
    /// A bad argument: empty, malformed, or (on the Rust side) a string with a NUL byte.
    pub const INVALID: Status = Status(sys::NC_E_INVALID);
    /// Not root, or a file or folder with unsafe ownership or mode.
    pub const PERMISSION: Status = Status(sys::NC_E_PERMISSION);
    /// No CRIU, no such process, no such checkpoint folder.
    pub const NOT_FOUND: Status = Status(sys::NC_E_NOT_FOUND);
    /// The runtime is busy with another dump or restore.
    pub const STATE: Status = Status(sys::NC_E_STATE);
    /// CRIU failed, is too old, or a PID the checkpoint needs is taken.
    pub const CRIU: Status = Status(sys::NC_E_CRIU);
    /// The checkpoint does not verify: changed, swapped, unsigned, malformed.
    pub const INTEGRITY: Status = Status(sys::NC_E_INTEGRITY);
    /// A system call failed (disk full, I/O error).
    pub const IO: Status = Status(sys::NC_E_IO);
    /// The HMAC key is missing, unreadable, too short or unsafe.
    pub const KEY: Status = Status(sys::NC_E_KEY);
    pub const NOMEM: Status = Status(sys::NC_E_NOMEM);
    /// A bug: in the library, or (see [`Error::is_panic`]) a callback of the caller's that panicked.
    pub const INTERNAL: Status = Status(sys::NC_E_INTERNAL);
    /// This build of the library lacks the feature (registry images without libcurl and
    /// libarchive). Since 0.3.
    pub const UNSUPPORTED: Status = Status(sys::NC_E_UNSUPPORTED);
    /// A migration's source could not learn the outcome after it told the receiver to run the tree:
    /// the source's tree is left stopped, neither resumed (it may run there) nor killed. Since 0.3.
    pub const UNCONFIRMED: Status = Status(sys::NC_E_UNCONFIRMED);

    pub fn is_ok(self) -> bool {
        self == Status::OK
    }

    /// The library's name for it, `"NC_E_INTEGRITY"` (`nc_status_name`); `"NC_E_UNKNOWN"` for a
    /// value the library does not know.
    pub fn name(self) -> &'static str {
        // SAFETY: nc_status_name takes any value and returns a static string of the library's.
        let name = unsafe { sys::nc_status_name(self.0) };
        if name.is_null() {
            return "NC_E_UNKNOWN";
        }
        // SAFETY: non-NULL, NUL-terminated, never freed.
        unsafe { CStr::from_ptr(name) }.to_str().unwrap_or("NC_E_UNKNOWN")
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({}, {})", self.0, self.name())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Status> for i32 {
    fn from(s: Status) -> i32 {
        s.0
    }
}

/// What went wrong in one call: its status, the library's message (what is wrong and what to do),
/// and where CRIU's own run failed, its exit code and `Error` lines. Read from the call's own
/// `nc_error`, so it never depends on the OS thread the call ran on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    status: Status,
    message: String,
    criu_exit_code: Option<i32>,
    criu_lines: String,
    panic: bool,
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error made on the Rust side (no C call was made, or a callback panicked).
    pub(crate) fn new(status: Status, message: impl Into<String>) -> Error {
        Error { status, message: message.into(), criu_exit_code: None, criu_lines: String::new(), panic: false }
    }

    /// A callback of the caller's panicked (`what` says which); `outcome` is the call's own result.
    pub(crate) fn panicked(what: &str, payload: &str, outcome: &Result<()>) -> Error {
        let mut message = format!("the {} panicked: {}", what, payload);
        if let Err(e) = outcome {
            message.push_str(&format!("; the call failed as well: {}", e));
        }
        Error { panic: true, ..Error::new(Status::INTERNAL, message) }
    }

    /// An argument the C ABI cannot take: a string with a NUL byte inside.
    pub(crate) fn nul(what: &str, bytes: &[u8], at: usize) -> Error {
        Error::new(
            Status::INVALID,
            format!("{} holds a NUL byte (at byte {}), which a C string cannot: {:?}", what, at, String::from_utf8_lossy(bytes)),
        )
    }

    /// The outcome held by an `nc_error` (a call's, or an options handle's).
    ///
    /// # Safety
    /// `err` is NULL or a live `nc_error` no other call is using.
    pub(crate) unsafe fn from_nc(returned: sys::nc_status, err: *const sys::nc_error) -> Error {
        let status = if returned != sys::NC_OK { returned } else { sys::nc_error_status(err) };
        let exit = sys::nc_error_criu_exit_code(err);
        Error {
            status: Status(status),
            message: c_string(sys::nc_error_message(err)),
            criu_exit_code: if exit >= 0 { Some(exit) } else { None },
            criu_lines: c_string(sys::nc_error_criu_lines(err)),
            panic: false,
        }
    }

    /// The status, as the C ABI's `nc_status`.
    pub fn status(&self) -> Status {
        self.status
    }

    /// What went wrong and what to do (`nc_error_message`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where a dump's or restore's run of CRIU failed: CRIU's exit code (`nc_error_criu_exit_code`);
    /// `None` for every other failure, and where CRIU did not exit (killed, timed out).
    pub fn criu_exit_code(&self) -> Option<i32> {
        self.criu_exit_code
    }

    /// With [`criu_exit_code`](Self::criu_exit_code): CRIU's own `Error` lines, each ending in
    /// `'\n'`; `""` otherwise (`nc_error_criu_lines`).
    pub fn criu_lines(&self) -> &str {
        &self.criu_lines
    }

    /// Whether a callback of the caller's (progress, notify) panicked. The panic was caught at the
    /// FFI boundary, never unwound through the library; the status is [`Status::INTERNAL`] and the
    /// message quotes the panic.
    pub fn is_panic(&self) -> bool {
        self.panic
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status.name(), self.message)
    }
}

impl std::error::Error for Error {}

/// A C string of the library's, copied; NULL reads as "".
///
/// # Safety
/// `s` is NULL or a valid NUL-terminated string.
pub(crate) unsafe fn c_string(s: *const c_char) -> String {
    if s.is_null() {
        String::new()
    } else {
        CStr::from_ptr(s).to_string_lossy().into_owned()
    }
}

/// One call's own `nc_error`, made for the call and freed after it.
pub(crate) struct CallError(*mut sys::nc_error);

impl CallError {
    pub(crate) fn new() -> Result<CallError> {
        let mut err = ptr::null_mut();
        // SAFETY: err is a valid out pointer.
        let s = unsafe { sys::nc_error_new(&mut err) };
        if s != sys::NC_OK || err.is_null() {
            let status = if s == sys::NC_OK { Status::NOMEM } else { Status(s) };
            return Err(Error::new(status, "nc_error_new: could not make an error object"));
        }
        Ok(CallError(err))
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::nc_error {
        self.0
    }

    /// Ok for NC_OK, else the error this object holds.
    pub(crate) fn check(&self, returned: sys::nc_status) -> Result<()> {
        if returned == sys::NC_OK {
            Ok(())
        } else {
            // SAFETY: self.0 is live, and the call that filled it has returned.
            Err(unsafe { Error::from_nc(returned, self.0) })
        }
    }
}

impl Drop for CallError {
    fn drop(&mut self) {
        // SAFETY: made by nc_error_new, freed once.
        unsafe { sys::nc_error_free(self.0) }
    }
}

/// Runs one `_e` call with an `nc_error` of its own.
pub(crate) fn call(f: impl FnOnce(*mut sys::nc_error) -> sys::nc_status) -> Result<()> {
    let err = CallError::new()?;
    let returned = f(err.as_ptr());
    err.check(returned)
}
