//! Migration: a running process tree moved to another host over one connection (`nc_migrate`,
//! `nc_receive`; the README's "Migration"). Since 0.3.
use std::ffi::OsString;
use std::mem;
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::io::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::ptr;
use std::time::Duration;

use nucleus_checkpoint_sys as sys;

use crate::args;
use crate::callback::with_notify_panics;
use crate::error::{call, Result};
use crate::options::Options;
use crate::runtime::{options_ptr, Runtime};
use crate::take_string;

/// What [`Runtime::migrate`] measured, and what the receiver said it did (`nc_migration_report`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// From the dump's start to the receiver's reply: the tree was stopped throughout.
    pub downtime: Duration,
    /// The dump, its signature and commit, here.
    pub dump: Duration,
    /// The stream sent and imported (verified) by the receiver.
    pub transfer: Duration,
    /// The receiver's restore.
    pub restore: Duration,
    /// The stream's bytes the receiver acknowledged (TCP; 0 on other sockets).
    pub bytes_sent: u64,
    /// Pre-dump rounds before the final dump (0: none are made yet), and why.
    pub rounds: u32,
    pub rounds_reason: String,
    /// The tree's root on the receiver, as the receiver numbers it.
    pub restored_pid: libc::pid_t,
    /// The checkpoint folder the receiver imported.
    pub restored_dir: PathBuf,
    /// Post-copy ([`Options::post_copy`]): from the receiver's "ok" until it had every page, and
    /// the pages (of the host's size) sent meanwhile; zero otherwise.
    pub post_copy: Duration,
    pub pages_sent: u64,
    /// The id of the Ed25519 key that proved the receiver's answers (32 hex digits, as
    /// [`crate::public_key`] gives it): [`Options::receiver_key`]'s, or the trusted key the
    /// receiver named; empty when signed with HMAC.
    pub receiver_key_id: String,
}

/// What [`Runtime::receive`] restored: the tree's root as this host numbers it, and the last reply
/// line, `{"ok":true,"pid":N,"dir":"...","import_ms":N,"restore_ms":N}`. `source_told` is false
/// when the tree runs here but that line could not be sent (the source closed or reset the
/// connection after its commit): the source then keeps its copy stopped (`Status::UNCONFIRMED`
/// there), and that copy must be killed there, as this one runs (`nc_receive_ex`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMigration {
    pub pid: libc::pid_t,
    pub reply: String,
    pub source_told: bool,
}

/// The bytes of a NUL-terminated C array, up to its NUL (all of them if it has none).
fn c_array_bytes(chars: &[c_char]) -> Vec<u8> {
    chars.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect()
}

impl From<&sys::nc_migration_report> for MigrationReport {
    fn from(r: &sys::nc_migration_report) -> MigrationReport {
        MigrationReport {
            downtime: Duration::from_millis(r.downtime_ms),
            dump: Duration::from_millis(r.dump_ms),
            transfer: Duration::from_millis(r.transfer_ms),
            restore: Duration::from_millis(r.restore_ms),
            bytes_sent: r.bytes_sent,
            rounds: r.rounds,
            rounds_reason: String::from_utf8_lossy(&c_array_bytes(&r.rounds_reason)).into_owned(),
            restored_pid: r.restored_pid,
            restored_dir: PathBuf::from(OsString::from_vec(c_array_bytes(&r.restored_dir))),
            post_copy: Duration::from_millis(r.post_copy_ms),
            pages_sent: r.pages_sent,
            receiver_key_id: String::from_utf8_lossy(&c_array_bytes(&r.receiver_key_id)).into_owned(),
        }
    }
}

impl Runtime {
    /// Moves the process tree rooted at `pid` to another host (`nc_migrate`): dumps it into the
    /// new checkpoint folder `work_dir` (signed in the manifest format, with the options' dump
    /// options and [`Options::signing`]) and keeps it stopped, sends it on `conn`, a socket already
    /// connected to a receiver (connect first: no receiver, no freeze), as [`crate::export`] does
    /// ([`Options::compression`]), and takes the receiver's answers ([`Options::reply_timeout_ms`]
    /// each): "ready" (restored there, held stopped), to which it answers a commit proven with its
    /// signing key, then "ok". On "ok" the stopped tree is killed (it runs there now). Before the
    /// commit, or on a refusal (a refusal, the receiver gone, silent or reset) the tree
    /// resumes here, and the error has the receiver's own status and message where it sent one
    /// (`Status::INTEGRITY`: the stream does not verify there; `Status::KEY`: it has no key), else
    /// `Status::IO`. `Status::UNCONFIRMED`: the receiver was told to run the tree but never
    /// confirmed; the tree is left stopped here. `work_dir` stays. "ready", "ok" and any answer
    /// after the commit are proven by the receiver for this connection; with `Signing::ED25519`
    /// the receiver needs an Ed25519 key of its own that this host trusts or is given
    /// ([`Options::receiver_key`]; else `Status::KEY`, `Status::INTEGRITY` before anything is
    /// dumped). The connection is not encrypted: use a private network or a tunnel. It blocks
    /// until the reply: run it on a thread of its own when this process is also the receiver.
    pub fn migrate(
        &mut self,
        container_id: &str,
        pid: libc::pid_t,
        work_dir: impl AsRef<Path>,
        conn: impl AsFd,
        options: Option<&Options>,
    ) -> Result<MigrationReport> {
        let fd = conn.as_fd();
        // SAFETY: integers and byte arrays, for which all zeroes is a value.
        let mut report: sys::nc_migration_report = unsafe { mem::zeroed() };
        report.size = mem::size_of::<sys::nc_migration_report>();
        self.dump(container_id, work_dir.as_ref(), options, |rt, id, dir, opts, err| {
            // SAFETY: the live handle, C strings, a descriptor borrowed across the call, options
            // that outlive it, and a report of the size it says.
            unsafe { sys::nc_migrate_e(rt, id, pid, dir, fd.as_raw_fd(), opts, &mut report, err) }
        })?;
        Ok(MigrationReport::from(&report))
    }

    /// The receiving end of [`migrate`](Self::migrate) (`nc_receive`): reads one stream from
    /// `conn` (a connected socket) into a new folder under `store_dir`, verified chunk by chunk as
    /// [`crate::import`] does and committed only whole, restores it held stopped with the options'
    /// restore options, and lets it run only on the source's commit, proven by the key that signed
    /// it for this connection (a replayed stream never runs); each answer goes back to the source
    /// as one line of JSON. Only what a key this
    /// host trusts signed is restored (its HMAC key, or a trusted Ed25519 public key): anything
    /// else is refused (`Status::INTEGRITY`, `Status::KEY`), at the source too. The restored tree
    /// runs on detached (reparented to the nearest child subreaper or PID 1).
    pub fn receive(
        &mut self,
        conn: impl AsFd,
        store_dir: impl AsRef<Path>,
        options: Option<&Options>,
    ) -> Result<ReceivedMigration> {
        let store = args::path("store dir", store_dir.as_ref())?;
        let fd = conn.as_fd();
        let opts = options_ptr(options);
        let (mut pid, mut reply, mut told): (libc::pid_t, *mut c_char, c_int) = (0, ptr::null_mut(), 0);
        let rt = self.as_ptr();
        let outcome = with_notify_panics(|| {
            // SAFETY: the live handle, a descriptor borrowed across the call, a C string, options
            // that outlive it, and valid out pointers.
            call(|err| unsafe {
                sys::nc_receive_ex_e(rt, fd.as_raw_fd(), store.as_ptr(), opts, &mut pid, &mut reply, &mut told, err)
            })
        });
        // SAFETY: NULL, or the library's string, ours to free (taken whatever the outcome).
        let reply = unsafe { take_string(reply) }.unwrap_or_default();
        outcome.map(|()| ReceivedMigration { pid, reply, source_told: told != 0 })
    }
}
