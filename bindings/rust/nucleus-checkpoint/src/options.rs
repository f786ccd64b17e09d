//! `Options`: an `nc_options` handle, each setter one of its setters.
use std::ops::ControlFlow;
use std::os::raw::{c_int, c_void};
use std::os::unix::io::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::ptr;

use nucleus_checkpoint_sys as sys;

use crate::args;
use crate::callback::{notify_trampoline, NotifyFn};
use crate::error::{call, Error, Result};
use crate::types::{CgroupMode, Compression, NetworkLock, Notification, RestoreMode, SignatureFormat, Signing};

/// CRIU's options for a dump or a restore (`nc_options`), with the defaults when made: shell-job
/// on, log level 4, no timeout, the default signature (manifest), a detached and streamed restore.
///
/// Each setter says whether it applies to the dump, the restore or both; one set for an action it
/// does not apply to is ignored there. A setter returns the handle again for chaining, or the
/// library's error for a value it refuses (`nc_options_error`), leaving the option unchanged:
///
/// ```no_run
/// # fn main() -> nucleus_checkpoint::Result<()> {
/// let mut opts = nucleus_checkpoint::Options::new()?;
/// opts.leave_running(true)?.tcp_established(true)?.log_level(2)?;
/// # Ok(()) }
/// ```
///
/// Several dumps and restores may read one `Options` at once (it is `Sync`), so a notification
/// closure must be `Fn + Send + Sync`.
pub struct Options {
    raw: *mut sys::nc_options,
    // Pointed to by the handle's notify user pointer: dropped only after the handle.
    notify: Option<Box<Box<NotifyFn>>>,
}

// SAFETY: the C ABI lets an options handle be read by several calls at once and set by one thread
// at a time; setters take &mut self, calls &self; the notification closure is Send + Sync.
unsafe impl Send for Options {}
unsafe impl Sync for Options {}

macro_rules! flag_setters {
    ($($(#[$doc:meta])* $name:ident => $c:ident,)*) => {$(
        $(#[$doc])*
        pub fn $name(&mut self, on: bool) -> Result<&mut Self> {
            // SAFETY: self.raw is a live handle.
            self.set(|o| unsafe { sys::$c(o, on as c_int) })
        }
    )*};
}

/// A C string for an optional string setter: NULL goes back to the default.
fn opt_ptr(s: &Option<std::ffi::CString>) -> *const std::os::raw::c_char {
    s.as_ref().map_or(ptr::null(), |c| c.as_ptr())
}

impl Options {
    /// A handle with the defaults (`nc_options_new`).
    pub fn new() -> Result<Options> {
        let mut raw = ptr::null_mut();
        // SAFETY: raw is a valid out pointer.
        call(|err| unsafe { sys::nc_options_new_e(&mut raw, err) })?;
        Ok(Options { raw, notify: None })
    }

    /// The C handle, for calls this crate does not wrap. It stays owned by `self`.
    pub fn as_ptr(&self) -> *const sys::nc_options {
        self.raw
    }

    fn set(&mut self, f: impl FnOnce(*mut sys::nc_options) -> sys::nc_status) -> Result<&mut Self> {
        let returned = f(self.raw);
        if returned == sys::NC_OK {
            Ok(self)
        } else {
            // SAFETY: the handle's own error, read before any other setter call on it.
            Err(unsafe { Error::from_nc(returned, sys::nc_options_error(self.raw)) })
        }
    }

    flag_setters! {
        /// Dump: the tree runs on after the dump (otherwise it is killed once the checkpoint is signed).
        leave_running => nc_options_set_leave_running,
        /// Both: CRIU's `--shell-job` (on by default).
        shell_job => nc_options_set_shell_job,
        /// Both: CRIU's `--tcp-established`.
        tcp_established => nc_options_set_tcp_established,
        /// Both: CRIU's `--tcp-close`.
        tcp_close => nc_options_set_tcp_close,
        /// Both: CRIU's `--ext-unix-sk`.
        ext_unix_sk => nc_options_set_ext_unix_sk,
        /// Both: CRIU's `--file-locks`.
        file_locks => nc_options_set_file_locks,
        /// Restore: stream the images to CRIU, every chunk checked first (true, the default), or
        /// verify the folder whole and restore from it (false).
        image_stream => nc_options_set_image_stream,
        /// Both: find and record the container's rootfs, mounts and namespaces (on by default).
        detect_container => nc_options_set_detect_container,
        /// Dump: leave out TCP connections not yet accepted (`--skip-in-flight`).
        skip_in_flight => nc_options_set_skip_in_flight,
        /// Dump: link open but deleted files back (`--link-remap`).
        link_remap => nc_options_set_link_remap,
        /// Dump: store deleted files' contents sparsely (`--ghost-fiemap`).
        ghost_fiemap => nc_options_set_ghost_fiemap,
        /// Both: reach a device file by any path (`--evasive-devices`).
        evasive_devices => nc_options_set_evasive_devices,
        /// Both: let CRIU read its default config files (off by default).
        use_default_config => nc_options_set_use_default_config,
        /// Dump and pre-dump with a [`parent`](Self::parent): CRIU's `--auto-dedup`, which punches
        /// the pages the new layer holds out of its parents' images; the library re-signs each
        /// parent afterwards. Since 0.3.
        auto_dedup => nc_options_set_auto_dedup,
        /// [`crate::push_image`] and [`crate::pull_image`]: plain http, for a registry on
        /// localhost or a lab network (the default is https). Since 0.3.
        insecure_registry => nc_options_set_insecure_registry,
        /// [`crate::Runtime::migrate`] post-copy (the README's "Post-copy"): the tree's private
        /// memory is left out of the checkpoint and follows the tree once it runs on the receiver,
        /// so the downtime no longer grows with memory. Needs `fs.pipe-max-size` >= 4194304 on the
        /// source (`Status::UNSUPPORTED` otherwise). Until every page is in, a failure kills the
        /// receiver's copy and returns `Status::UNCONFIRMED` with this copy stopped, to resume.
        /// Since 0.3.
        post_copy => nc_options_set_post_copy,
    }

    /// Both: CRIU's `--manage-cgroups`.
    pub fn manage_cgroups(&mut self, mode: CgroupMode) -> Result<&mut Self> {
        // SAFETY: live handle; any value is checked by the library.
        self.set(|o| unsafe { sys::nc_options_set_manage_cgroups(o, mode.0) })
    }

    /// Both: CRIU's `--external` (dump: `"mnt[MOUNTPOINT]:KEY"`, ...; restore: `"mnt[KEY]:HOST_PATH"`, ...).
    pub fn add_external(&mut self, spec: &str) -> Result<&mut Self> {
        let spec = args::text("external spec", spec)?;
        // SAFETY: live handle and C string.
        self.set(|o| unsafe { sys::nc_options_add_external(o, spec.as_ptr()) })
    }

    /// Both: the folder CRIU writes its logs to.
    pub fn work_dir(&mut self, dir: impl AsRef<Path>) -> Result<&mut Self> {
        let dir = args::path("work_dir", dir.as_ref())?;
        // SAFETY: live handle and C string.
        self.set(|o| unsafe { sys::nc_options_set_work_dir(o, dir.as_ptr()) })
    }

    /// Both: CRIU's log level, 0 to 4.
    pub fn log_level(&mut self, level: i32) -> Result<&mut Self> {
        // SAFETY: live handle.
        self.set(|o| unsafe { sys::nc_options_set_log_level(o, level) })
    }

    /// Both: kill CRIU and fail the call after this many milliseconds; 0: no timeout.
    pub fn timeout_ms(&mut self, ms: u32) -> Result<&mut Self> {
        // SAFETY: live handle.
        self.set(|o| unsafe { sys::nc_options_set_timeout_ms(o, ms) })
    }

    /// Restore: detached (the default) or as the caller's child.
    pub fn restore_mode(&mut self, mode: RestoreMode) -> Result<&mut Self> {
        // SAFETY: live handle; any value is checked by the library.
        self.set(|o| unsafe { sys::nc_options_set_restore_mode(o, mode.0) })
    }

    /// Dump: the process's start time (field 22 of /proc/PID/stat) as the caller recorded it; a
    /// PID that now belongs to another process is refused (`Status::NOT_FOUND`).
    pub fn start_ticks(&mut self, start_ticks: u64) -> Result<&mut Self> {
        // SAFETY: live handle.
        self.set(|o| unsafe { sys::nc_options_set_start_ticks(o, start_ticks) })
    }

    /// Dump: the format the checkpoint is signed in (default [`SignatureFormat::MANIFEST`]).
    pub fn signature_format(&mut self, format: SignatureFormat) -> Result<&mut Self> {
        // SAFETY: live handle; any value is checked by the library.
        self.set(|o| unsafe { sys::nc_options_set_signature_format(o, format.0) })
    }

    /// Dump and pre-dump: the key that signs (default [`Signing::HMAC`]); [`Signing::ED25519`]
    /// needs the chunked or manifest format. Since 0.3.
    pub fn signing(&mut self, signing: Signing) -> Result<&mut Self> {
        // SAFETY: live handle; any value is checked by the library.
        self.set(|o| unsafe { sys::nc_options_set_signing(o, signing.0) })
    }

    /// Dump and pre-dump: the pre-dump, a folder beside the new one, to write only the changes
    /// since (README, "Pre-dump chains"); `None`: none. Since 0.3.
    pub fn parent(&mut self, dir: Option<&Path>) -> Result<&mut Self> {
        let dir = dir.map(|p| args::path("parent", p)).transpose()?;
        // SAFETY: live handle; NULL or a C string.
        self.set(|o| unsafe { sys::nc_options_set_parent(o, opt_ptr(&dir)) })
    }

    /// Export, [`crate::export_chain`] and migrate: how the stream is compressed (default
    /// [`Compression::NONE`]). Since 0.3.
    pub fn compression(&mut self, compression: Compression) -> Result<&mut Self> {
        // SAFETY: live handle; any value is checked by the library.
        self.set(|o| unsafe { sys::nc_options_set_compression(o, compression.0) })
    }

    /// [`crate::export_chain`]: the receiver holds the layer whose `checkpoint.hmac` has this
    /// SHA-256, 64 lowercase hex digits as `sha256sum` shows it; the stream names that layer but
    /// does not send it (`nc_options_add_receiver_has`). Repeatable, up to 64 layers. Since 0.3.
    pub fn add_receiver_has(&mut self, signature_sha256: &str) -> Result<&mut Self> {
        let sha = args::text("receiver_has", signature_sha256)?;
        // SAFETY: live handle and C string.
        self.set(|o| unsafe { sys::nc_options_add_receiver_has(o, sha.as_ptr()) })
    }

    /// [`crate::Runtime::migrate`]: how long the stream may stall unacknowledged and, once sent,
    /// how long each of the receiver's answers may take (its import and restore);
    /// [`crate::Runtime::receive`]: how long the source may take to start its stream and may stall
    /// it. In milliseconds; 0 goes back to the default, 300000 (5 minutes). Since 0.3.
    pub fn reply_timeout_ms(&mut self, ms: u32) -> Result<&mut Self> {
        // SAFETY: live handle.
        self.set(|o| unsafe { sys::nc_options_set_reply_timeout_ms(o, ms) })
    }

    /// [`crate::Runtime::migrate`] signed with [`Signing::ED25519`]: the receiver's own public
    /// key, the text of its public key file ([`crate::public_key`] there, or `keygen --ed25519
    /// --public-key-out`), whose proofs its answers must carry (the README's "Answers"). A
    /// receiver greeting with another key is refused with `Status::INTEGRITY` before anything is
    /// dumped; this key need not be trusted here. Text that is no public key: `Status::KEY`, and
    /// none is set. `None` (the default): any key this host trusts may answer. Since 0.3.
    pub fn receiver_key(&mut self, public_key_text: Option<&str>) -> Result<&mut Self> {
        let text = public_key_text.map(|s| args::text("receiver_key", s)).transpose()?;
        // SAFETY: live handle; NULL or a C string.
        self.set(|o| unsafe { sys::nc_options_set_receiver_key(o, opt_ptr(&text)) })
    }

    /// Restore: the container's rootfs, an absolute path (`--root`); `None`: the recorded one.
    pub fn root(&mut self, path: Option<&Path>) -> Result<&mut Self> {
        let path = path.map(|p| args::path("root", p)).transpose()?;
        // SAFETY: live handle; NULL or a C string.
        self.set(|o| unsafe { sys::nc_options_set_root(o, opt_ptr(&path)) })
    }

    /// Restore: `fd` stands for what the dump recorded as `key`: `"stdin"`, `"stdout"`,
    /// `"stderr"`, or CRIU's `"pipe:[INODE]"`, ... (`--inherit-fd`). The descriptor is not
    /// duplicated: keep it open until the restore has run.
    pub fn add_inherit_fd(&mut self, fd: BorrowedFd<'_>, key: &str) -> Result<&mut Self> {
        let key = args::text("inherit_fd key", key)?;
        let fd = fd.as_raw_fd();
        // SAFETY: live handle and C string.
        self.set(|o| unsafe { sys::nc_options_add_inherit_fd(o, fd, key.as_ptr()) })
    }

    /// Restore: join an existing namespace, `"NS:PID"` or `"NS:/PATH"` (`--join-ns`).
    pub fn add_join_ns(&mut self, spec: &str) -> Result<&mut Self> {
        let spec = args::text("join_ns spec", spec)?;
        // SAFETY: live handle and C string.
        self.set(|o| unsafe { sys::nc_options_add_join_ns(o, spec.as_ptr()) })
    }

    /// Restore: create the namespace unconfigured; CRIU accepts `"net"` (`--empty-ns`).
    pub fn add_empty_ns(&mut self, ns: &str) -> Result<&mut Self> {
        let ns = args::text("empty_ns", ns)?;
        // SAFETY: live handle and C string.
        self.set(|o| unsafe { sys::nc_options_add_empty_ns(o, ns.as_ptr()) })
    }

    /// Dump: CRIU's `--network-lock`.
    pub fn network_lock(&mut self, lock: NetworkLock) -> Result<&mut Self> {
        // SAFETY: live handle; any value is checked by the library.
        self.set(|o| unsafe { sys::nc_options_set_network_lock(o, lock.0) })
    }

    /// Both: `"/PATH"`, `"CONTROLLER:/PATH"` or `":/PATH"` (`--cgroup-root`).
    pub fn add_cgroup_root(&mut self, spec: &str) -> Result<&mut Self> {
        let spec = args::text("cgroup_root spec", spec)?;
        // SAFETY: live handle and C string.
        self.set(|o| unsafe { sys::nc_options_add_cgroup_root(o, spec.as_ptr()) })
    }

    /// Both: an already mounted cgroup yard, absolute (`--cgroup-yard`); `None`: CRIU mounts one.
    pub fn cgroup_yard(&mut self, path: Option<&Path>) -> Result<&mut Self> {
        let path = path.map(|p| args::path("cgroup_yard", p)).transpose()?;
        // SAFETY: live handle; NULL or a C string.
        self.set(|o| unsafe { sys::nc_options_set_cgroup_yard(o, opt_ptr(&path)) })
    }

    /// Dump: CRIU's `--cgroup-props` YAML; `None`: CRIU's default.
    pub fn cgroup_props(&mut self, yaml: Option<&str>) -> Result<&mut Self> {
        let yaml = yaml.map(|s| args::text("cgroup_props", s)).transpose()?;
        // SAFETY: live handle; NULL or a C string.
        self.set(|o| unsafe { sys::nc_options_set_cgroup_props(o, opt_ptr(&yaml)) })
    }

    /// Dump: freeze the tree through this cgroup (`--freeze-cgroup`); `None`: process by process.
    pub fn freeze_cgroup(&mut self, path: Option<&Path>) -> Result<&mut Self> {
        let path = path.map(|p| args::path("freeze_cgroup", p)).transpose()?;
        // SAFETY: live handle; NULL or a C string.
        self.set(|o| unsafe { sys::nc_options_set_freeze_cgroup(o, opt_ptr(&path)) })
    }

    /// Restore: `"apparmor:NAME"`, `"selinux:CONTEXT"` or `"none:"` (`--lsm-profile`).
    pub fn lsm_profile(&mut self, profile: Option<&str>) -> Result<&mut Self> {
        let profile = profile.map(|s| args::text("lsm_profile", s)).transpose()?;
        // SAFETY: live handle; NULL or a C string.
        self.set(|o| unsafe { sys::nc_options_set_lsm_profile(o, opt_ptr(&profile)) })
    }

    /// Restore: the SELinux context mounts are restored with (`--lsm-mount-context`).
    pub fn lsm_mount_context(&mut self, context: Option<&str>) -> Result<&mut Self> {
        let context = context.map(|s| args::text("lsm_mount_context", s)).transpose()?;
        // SAFETY: live handle; NULL or a C string.
        self.set(|o| unsafe { sys::nc_options_set_lsm_mount_context(o, opt_ptr(&context)) })
    }

    /// Dump: the largest deleted file whose contents go into the images; 0: CRIU's default.
    pub fn ghost_limit(&mut self, bytes: u64) -> Result<&mut Self> {
        // SAFETY: live handle.
        self.set(|o| unsafe { sys::nc_options_set_ghost_limit(o, bytes) })
    }

    /// Both: `"filesize"` or `"buildid"` (`--file-validation`); `None`: CRIU's default.
    pub fn file_validation(&mut self, method: Option<&str>) -> Result<&mut Self> {
        let method = method.map(|s| args::text("file_validation", s)).transpose()?;
        // SAFETY: live handle; NULL or a C string.
        self.set(|o| unsafe { sys::nc_options_set_file_validation(o, opt_ptr(&method)) })
    }

    /// Restore: the container id the checkpoint must have been dumped for; another's is refused
    /// with `Status::INTEGRITY`. `None`: not checked.
    pub fn expected_container_id(&mut self, id: Option<&str>) -> Result<&mut Self> {
        let id = id.map(|s| args::text("expected container id", s)).transpose()?;
        // SAFETY: live handle; NULL or a C string.
        self.set(|o| unsafe { sys::nc_options_set_expected_container_id(o, opt_ptr(&id)) })
    }

    /// Restore: an annotation the checkpoint must carry with exactly this value.
    pub fn expect_annotation(&mut self, name: &str, value: &str) -> Result<&mut Self> {
        let name = args::text("annotation name", name)?;
        let value = args::text("annotation value", value)?;
        // SAFETY: live handle and C strings.
        self.set(|o| unsafe { sys::nc_options_expect_annotation(o, name.as_ptr(), value.as_ptr()) })
    }

    /// Dump: a string annotation recorded in the signed metadata.json; a name may be added once.
    pub fn add_annotation(&mut self, name: &str, value: &str) -> Result<&mut Self> {
        let name = args::text("annotation name", name)?;
        let value = args::text("annotation value", value)?;
        // SAFETY: live handle and C strings.
        self.set(|o| unsafe { sys::nc_options_add_annotation(o, name.as_ptr(), value.as_ptr()) })
    }

    /// Dump: a file of the runtime's own, written as `runtime/NAME` into the checkpoint before it
    /// is signed (the bytes are copied).
    pub fn add_runtime_file(&mut self, name: &str, data: &[u8]) -> Result<&mut Self> {
        let name = args::text("runtime file name", name)?;
        // SAFETY: live handle, C string, and data.len() readable bytes.
        self.set(|o| unsafe {
            sys::nc_options_add_runtime_file(o, name.as_ptr(), data.as_ptr() as *const c_void, data.len())
        })
    }

    /// Both: CRIU's notifications, called on the thread running the dump or restore with the
    /// tree's root PID (0 before CRIU knows it). `ControlFlow::Break(())` stops CRIU: a dump fails
    /// and the tree runs on, a restore fails and what CRIU made is killed. Go on for notifications
    /// you do not know (later libraries may add some). A panic is caught, stops CRIU as `Break`
    /// does, and is the call's error ([`crate::Error::is_panic`]).
    pub fn notify<F>(&mut self, f: F) -> Result<&mut Self>
    where
        F: Fn(Notification, libc::pid_t) -> ControlFlow<()> + Send + Sync + 'static,
    {
        let boxed: Box<Box<NotifyFn>> = Box::new(Box::new(f));
        let user = &*boxed as *const Box<NotifyFn> as *mut c_void;
        // SAFETY: live handle; user stays valid while self (and so the handle) lives, and is
        // replaced in the handle before the old closure is dropped.
        self.set(|o| unsafe { sys::nc_options_set_notify(o, Some(notify_trampoline), user) })?;
        self.notify = Some(boxed);
        Ok(self)
    }

    /// Both: no notifications (the default).
    pub fn clear_notify(&mut self) -> Result<&mut Self> {
        // SAFETY: live handle.
        self.set(|o| unsafe { sys::nc_options_set_notify(o, None, ptr::null_mut()) })?;
        self.notify = None;
        Ok(self)
    }
}

impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: made by nc_options_new, freed once; the notify closure is dropped after.
        unsafe { sys::nc_options_free(self.raw) }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options").field("raw", &self.raw).field("notify", &self.notify.is_some()).finish()
    }
}
