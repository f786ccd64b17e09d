//! `Runtime`: a validated CRIU (`nc_runtime`), and what it dumps and restores.
use std::io;
use std::os::raw::{c_char, c_int};
use std::os::unix::io::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr;

use nucleus_checkpoint_sys as sys;

use crate::args;
use crate::callback::with_notify_panics;
use crate::error::{call, Error, Result, Status};
use crate::options::Options;

/// A CRIU binary found and checked once (root- or caller-owned, not group/world-writable, new
/// enough), and the dumps and restores it runs. Freed on drop (`nc_runtime_free`).
///
/// A runtime runs one dump or restore at a time, hence `&mut self`; use one runtime per thread
/// (separate runtimes run in parallel).
pub struct Runtime {
    raw: *mut sys::nc_runtime,
}

// SAFETY: the handle belongs to no thread; the library guards its state with a mutex, and the
// const functions (criu_version, criu_check) may run alongside anything.
unsafe impl Send for Runtime {}
unsafe impl Sync for Runtime {}

/// CRIU's version, as the runtime found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CriuVersion {
    pub major: i32,
    pub minor: i32,
    pub patch: i32,
}

/// A restored tree: its root's PID as this process's PID namespace sees it, and a pidfd opened
/// while that PID was known to be the restored root, so unlike the PID it never comes to mean
/// another process. The pidfd is closed on drop; the tree runs on.
#[derive(Debug)]
pub struct RestoredTree {
    pid: libc::pid_t,
    pidfd: OwnedFd,
}

impl RestoredTree {
    /// The restored root's PID (in a dump of the caller's PID namespace, the very PID it had).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The root's pidfd (with [`crate::RestoreMode::CHILD`], `waitid(P_PIDFD, ...)` it).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The pidfd, to keep after the `RestoredTree`.
    pub fn into_pidfd(self) -> OwnedFd {
        self.pidfd
    }

    /// Sends `signal` to the restored root through its pidfd (`pidfd_send_signal`): never to
    /// another process that got its PID later.
    pub fn send_signal(&self, signal: c_int) -> io::Result<()> {
        // SAFETY: a live pidfd; no siginfo.
        let r = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.pidfd.as_raw_fd(), signal, ptr::null::<libc::siginfo_t>(), 0)
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Kills the restored root (`SIGKILL` through its pidfd). Its own children, if it has any, are
    /// not signalled: kill its process group for those.
    pub fn kill(&self) -> io::Result<()> {
        self.send_signal(libc::SIGKILL)
    }
}

impl AsFd for RestoredTree {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

impl AsRawFd for RestoredTree {
    fn as_raw_fd(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }
}

impl From<RestoredTree> for OwnedFd {
    fn from(tree: RestoredTree) -> OwnedFd {
        tree.pidfd
    }
}

pub(crate) fn options_ptr(options: Option<&Options>) -> *const sys::nc_options {
    options.map_or(ptr::null(), |o| o.as_ptr())
}

impl Runtime {
    /// Finds CRIU in the trusted paths (/usr/sbin, /usr/bin, /usr/local/sbin; PATH only when not
    /// root) and checks it (`nc_runtime_new`).
    pub fn new() -> Result<Runtime> {
        let mut raw = ptr::null_mut();
        // SAFETY: raw is a valid out pointer.
        call(|err| unsafe { sys::nc_runtime_new_e(&mut raw, err) })?;
        Ok(Runtime { raw })
    }

    /// Uses and checks the CRIU binary at `criu` (`nc_runtime_new_with_criu`).
    pub fn with_criu(criu: impl AsRef<Path>) -> Result<Runtime> {
        let criu = args::path("criu path", criu.as_ref())?;
        let mut raw = ptr::null_mut();
        // SAFETY: a C string and a valid out pointer.
        call(|err| unsafe { sys::nc_runtime_new_with_criu_e(criu.as_ptr(), &mut raw, err) })?;
        Ok(Runtime { raw })
    }

    /// The C handle, for calls this crate does not wrap. It stays owned by `self`.
    pub fn as_ptr(&self) -> *mut sys::nc_runtime {
        self.raw
    }

    /// CRIU's version (`nc_criu_version`).
    pub fn criu_version(&self) -> Result<CriuVersion> {
        let (mut major, mut minor, mut patch) = (0, 0, 0);
        // SAFETY: live handle and valid out pointers.
        call(|err| unsafe { sys::nc_criu_version_e(self.raw, &mut major, &mut minor, &mut patch, err) })?;
        Ok(CriuVersion { major, minor, patch })
    }

    /// Runs `criu check` (`nc_criu_check`): Ok, or `Status::CRIU` with CRIU's words.
    pub fn criu_check(&self) -> Result<()> {
        // SAFETY: live handle.
        call(|err| unsafe { sys::nc_criu_check_e(self.raw, err) })
    }

    /// Dumps the tree rooted at `pid` into `dir` (created 0700), writes its metadata and signs the
    /// folder (`nc_checkpoint_ex`). Needs root. Unless [`Options::leave_running`], the tree is
    /// killed once the checkpoint is signed (reap your own children before restoring: a zombie
    /// holds its PID); if anything fails before that, it runs on. `options`: `None` for the
    /// defaults.
    pub fn checkpoint(
        &mut self,
        container_id: &str,
        pid: libc::pid_t,
        dir: impl AsRef<Path>,
        options: Option<&Options>,
    ) -> Result<()> {
        self.dump(container_id, dir.as_ref(), options, |rt, id, dir, opts, err| {
            // SAFETY: the live handle, C strings and options that outlive the call.
            unsafe { sys::nc_checkpoint_ex_e(rt, id, pid, dir, opts, err) }
        })
    }

    /// CRIU's pre-dump of the running tree rooted at `pid` into the new folder `dir` (absent or
    /// empty): its memory, signed (chunked or manifest format) and marked a pre-dump; the tree runs
    /// on (`nc_predump`). A later pre-dump or [`checkpoint`](Self::checkpoint) with
    /// [`Options::parent`] naming this folder (a sibling of theirs) writes only the memory changed
    /// since; restoring the last layer verifies the whole chain. A pre-dump is never restored
    /// alone. Needs a kernel that tracks changed memory (`CONFIG_MEM_SOFT_DIRTY`): elsewhere
    /// `Status::CRIU`, saying so, and nothing is made. Since 0.3.
    pub fn predump(
        &mut self,
        container_id: &str,
        pid: libc::pid_t,
        dir: impl AsRef<Path>,
        options: Option<&Options>,
    ) -> Result<()> {
        self.dump(container_id, dir.as_ref(), options, |rt, id, dir, opts, err| {
            // SAFETY: the live handle, C strings and options that outlive the call.
            unsafe { sys::nc_predump_e(rt, id, pid, dir, opts, err) }
        })
    }

    /// A dump-like `_e` call (`nc_checkpoint_ex_e`, `nc_predump_e`, `nc_migrate_e`) into `dir`: `f`
    /// makes it with the runtime, the container id, `dir` and the options as C takes them.
    pub(crate) fn dump(
        &mut self,
        container_id: &str,
        dir: &Path,
        options: Option<&Options>,
        f: impl FnOnce(
            *mut sys::nc_runtime,
            *const c_char,
            *const c_char,
            *const sys::nc_options,
            *mut sys::nc_error,
        ) -> sys::nc_status,
    ) -> Result<()> {
        let id = args::text("container id", container_id)?;
        let dir = args::path("checkpoint dir", dir)?;
        let opts = options_ptr(options);
        with_notify_panics(|| call(|err| f(self.raw, id.as_ptr(), dir.as_ptr(), opts, err)))
    }

    /// Verifies `dir` and, only if it verifies, restores the tree (`nc_restore_pidfd`): a changed,
    /// swapped or unsigned checkpoint is refused with `Status::INTEGRITY`. Returns as soon as the
    /// tree runs, with its root's PID and pidfd.
    pub fn restore(&mut self, dir: impl AsRef<Path>, options: Option<&Options>) -> Result<RestoredTree> {
        let dir = args::path("checkpoint dir", dir.as_ref())?;
        let opts = options_ptr(options);
        let (mut pid, mut pidfd): (libc::pid_t, c_int) = (0, -1);
        with_notify_panics(|| {
            // SAFETY: live handles, a C string, valid out pointers; the options outlive the call.
            call(|err| unsafe { sys::nc_restore_pidfd_e(self.raw, dir.as_ptr(), opts, &mut pid, &mut pidfd, err) })
        })
        .map_err(|e| {
            if pidfd >= 0 {
                // SAFETY: a descriptor the call handed over: ours to close.
                let tree = RestoredTree { pid, pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) } };
                // The library refuses a restore whose notification was answered "stop", and the
                // panic answered so; should the tree run all the same, it must not run unseen.
                if e.is_panic() {
                    let _ = tree.send_signal(libc::SIGKILL);
                }
            }
            e
        })?;
        if pidfd < 0 {
            return Err(Error::new(Status::INTERNAL, format!("restored as PID {}, but the library gave no pidfd", pid)));
        }
        // SAFETY: a pidfd the library opened for us, owned by nobody else.
        Ok(RestoredTree { pid, pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) } })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // SAFETY: made by nc_runtime_new*, freed once.
        unsafe { sys::nc_runtime_free(self.raw) }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("raw", &self.raw).finish()
    }
}
