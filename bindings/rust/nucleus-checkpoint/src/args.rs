//! Arguments for the C ABI: paths and strings as C strings, refusing a NUL byte inside.
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};

pub(crate) fn bytes(what: &str, b: &[u8]) -> Result<CString> {
    match b.iter().position(|&c| c == 0) {
        Some(at) => Err(Error::nul(what, b, at)),
        None => Ok(CString::new(b).expect("no NUL byte")),
    }
}

pub(crate) fn os(what: &str, s: &OsStr) -> Result<CString> {
    bytes(what, s.as_bytes())
}

pub(crate) fn path(what: &str, p: &Path) -> Result<CString> {
    os(what, p.as_os_str())
}

pub(crate) fn text(what: &str, s: &str) -> Result<CString> {
    bytes(what, s.as_bytes())
}
