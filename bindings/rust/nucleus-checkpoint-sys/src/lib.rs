//! Raw declarations of libnucleuscheckpoint's C ABI, `include/nucleus/checkpoint.h`, written by
//! hand (bindgen is not needed). Every function, type and constant here has the header's name; the
//! header's comments are the documentation. The safe API is the `nucleus-checkpoint` crate.
//!
//! The C enums are declared as `c_int` with constants (not Rust enums), so a value a later version
//! of the library returns is an ordinary integer here, never undefined behaviour.
#![allow(non_camel_case_types)]

use std::marker::{PhantomData, PhantomPinned};
use std::os::raw::{c_char, c_int, c_uint, c_ulonglong, c_void};

pub use libc::{pid_t, size_t};

macro_rules! opaque {
    ($($name:ident),*) => {$(
        #[repr(C)]
        pub struct $name {
            _data: [u8; 0],
            _marker: PhantomData<(*mut u8, PhantomPinned)>,
        }
    )*};
}
opaque!(nc_runtime, nc_error, nc_options);

pub type nc_status = c_int;
pub const NC_OK: nc_status = 0;
pub const NC_E_INVALID: nc_status = 1;
pub const NC_E_PERMISSION: nc_status = 2;
pub const NC_E_NOT_FOUND: nc_status = 3;
pub const NC_E_STATE: nc_status = 4;
pub const NC_E_CRIU: nc_status = 5;
pub const NC_E_INTEGRITY: nc_status = 6;
pub const NC_E_IO: nc_status = 7;
pub const NC_E_KEY: nc_status = 8;
pub const NC_E_NOMEM: nc_status = 9;
pub const NC_E_INTERNAL: nc_status = 10;
pub const NC_E_UNSUPPORTED: nc_status = 11;
pub const NC_E_UNCONFIRMED: nc_status = 12;

pub type nc_signature_format = c_int;
pub const NC_SIGNATURE_SEED: nc_signature_format = 1;
pub const NC_SIGNATURE_CHUNKED: nc_signature_format = 2;
pub const NC_SIGNATURE_MANIFEST: nc_signature_format = 3;

pub type nc_signing = c_int;
pub const NC_SIGNING_HMAC: nc_signing = 1;
pub const NC_SIGNING_ED25519: nc_signing = 2;

pub type nc_compression = c_int;
pub const NC_COMPRESSION_NONE: nc_compression = 0;
pub const NC_COMPRESSION_ZSTD: nc_compression = 1;

pub type nc_cgroup_mode = c_int;
pub const NC_CGROUP_DEFAULT: nc_cgroup_mode = 0;
pub const NC_CGROUP_SOFT: nc_cgroup_mode = 1;
pub const NC_CGROUP_FULL: nc_cgroup_mode = 2;
pub const NC_CGROUP_STRICT: nc_cgroup_mode = 3;
pub const NC_CGROUP_IGNORE: nc_cgroup_mode = 4;

pub type nc_restore_mode = c_int;
pub const NC_RESTORE_DETACHED: nc_restore_mode = 0;
pub const NC_RESTORE_CHILD: nc_restore_mode = 1;

pub type nc_network_lock = c_int;
pub const NC_NETWORK_LOCK_DEFAULT: nc_network_lock = 0;
pub const NC_NETWORK_LOCK_IPTABLES: nc_network_lock = 1;
pub const NC_NETWORK_LOCK_NFTABLES: nc_network_lock = 2;
pub const NC_NETWORK_LOCK_SKIP: nc_network_lock = 3;

pub type nc_notification = c_int;
pub const NC_NOTIFY_PRE_DUMP: nc_notification = 1;
pub const NC_NOTIFY_POST_DUMP: nc_notification = 2;
pub const NC_NOTIFY_PRE_RESTORE: nc_notification = 3;
pub const NC_NOTIFY_POST_RESTORE: nc_notification = 4;
pub const NC_NOTIFY_NETWORK_LOCK: nc_notification = 5;
pub const NC_NOTIFY_NETWORK_UNLOCK: nc_notification = 6;
pub const NC_NOTIFY_SETUP_NAMESPACES: nc_notification = 7;
pub const NC_NOTIFY_POST_SETUP_NAMESPACES: nc_notification = 8;
pub const NC_NOTIFY_PRE_RESUME: nc_notification = 9;
pub const NC_NOTIFY_POST_RESUME: nc_notification = 10;
pub const NC_NOTIFY_STATUS_READY: nc_notification = 11;

pub const NC_ANNOTATION_VALUE_MAX: c_uint = 65536;
pub const NC_RUNTIME_FILE_MAX: c_uint = 1048576;
pub const NC_RUNTIME_FILE_NAME_MAX: c_uint = 255;

/// nc_migrate's report; set `size` to `size_of::<nc_migration_report>()` before the call.
#[repr(C)]
pub struct nc_migration_report {
    pub size: size_t,
    pub downtime_ms: c_ulonglong,
    pub dump_ms: c_ulonglong,
    pub transfer_ms: c_ulonglong,
    pub restore_ms: c_ulonglong,
    pub bytes_sent: c_ulonglong,
    pub rounds: c_uint,
    pub restored_pid: pid_t,
    pub rounds_reason: [c_char; 512],
    pub restored_dir: [c_char; 4096],
    pub post_copy_ms: c_ulonglong,
    pub pages_sent: c_ulonglong,
    pub receiver_key_id: [c_char; 33],
}

/// Called on the calling thread with the running total of bytes hashed. Must not unwind.
pub type nc_progress_fn = Option<unsafe extern "C" fn(bytes_hashed: c_ulonglong, user: *mut c_void)>;
/// Called on the calling thread while CRIU waits; 0 goes on. Must not unwind.
pub type nc_notify_fn = Option<unsafe extern "C" fn(what: nc_notification, pid: pid_t, user: *mut c_void) -> c_int>;

extern "C" {
    pub fn nc_runtime_new(out: *mut *mut nc_runtime) -> nc_status;
    pub fn nc_runtime_new_with_criu(criu_path: *const c_char, out: *mut *mut nc_runtime) -> nc_status;
    pub fn nc_runtime_free(rt: *mut nc_runtime);

    pub fn nc_checkpoint(
        rt: *mut nc_runtime,
        container_id: *const c_char,
        pid: pid_t,
        dir: *const c_char,
        leave_running: c_int,
    ) -> nc_status;
    pub fn nc_restore(rt: *mut nc_runtime, dir: *const c_char, restored_pid: *mut pid_t) -> nc_status;

    pub fn nc_sign(dir: *const c_char) -> nc_status;
    pub fn nc_verify(dir: *const c_char) -> nc_status;
    pub fn nc_sign_progress(dir: *const c_char, progress: nc_progress_fn, user: *mut c_void) -> nc_status;
    pub fn nc_verify_progress(dir: *const c_char, progress: nc_progress_fn, user: *mut c_void) -> nc_status;
    pub fn nc_sign_ex(
        dir: *const c_char,
        format: nc_signature_format,
        progress: nc_progress_fn,
        user: *mut c_void,
    ) -> nc_status;
    pub fn nc_signature_format_of(dir: *const c_char, format_out: *mut nc_signature_format) -> nc_status;

    pub fn nc_read_metadata(dir: *const c_char, json_out: *mut *mut c_char) -> nc_status;
    pub fn nc_free(p: *mut c_void);

    pub fn nc_set_max_checkpoint_bytes(bytes: c_ulonglong) -> nc_status;

    pub fn nc_key_path(buf: *mut c_char, size: size_t) -> nc_status;
    pub fn nc_keygen(created: *mut c_int) -> nc_status;
    pub fn nc_key_path_ex(buf: *mut c_char, size: size_t, needed: *mut size_t) -> nc_status;

    pub fn nc_options_new(out: *mut *mut nc_options) -> nc_status;
    pub fn nc_options_free(opts: *mut nc_options);
    pub fn nc_options_set_leave_running(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_shell_job(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_tcp_established(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_tcp_close(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_ext_unix_sk(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_file_locks(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_manage_cgroups(opts: *mut nc_options, mode: nc_cgroup_mode) -> nc_status;
    pub fn nc_options_add_external(opts: *mut nc_options, spec: *const c_char) -> nc_status;
    pub fn nc_options_set_work_dir(opts: *mut nc_options, dir: *const c_char) -> nc_status;
    pub fn nc_options_set_log_level(opts: *mut nc_options, level: c_int) -> nc_status;
    pub fn nc_options_set_timeout_ms(opts: *mut nc_options, ms: c_uint) -> nc_status;
    pub fn nc_options_set_restore_mode(opts: *mut nc_options, mode: nc_restore_mode) -> nc_status;
    pub fn nc_options_set_image_stream(opts: *mut nc_options, enabled: c_int) -> nc_status;
    pub fn nc_options_set_start_ticks(opts: *mut nc_options, start_ticks: c_ulonglong) -> nc_status;
    pub fn nc_options_set_signature_format(opts: *mut nc_options, format: nc_signature_format) -> nc_status;
    pub fn nc_options_set_compression(opts: *mut nc_options, compression: nc_compression) -> nc_status;
    pub fn nc_export(dir: *const c_char, fd: c_int, opts: *const nc_options) -> nc_status;
    pub fn nc_import(fd: c_int, dir: *const c_char, opts: *const nc_options) -> nc_status;
    pub fn nc_options_add_receiver_has(opts: *mut nc_options, signature_sha256: *const c_char) -> nc_status;
    pub fn nc_export_chain(layer_dir: *const c_char, fd: c_int, opts: *const nc_options) -> nc_status;
    pub fn nc_import_chain(fd: c_int, store_dir: *const c_char, opts: *const nc_options,
                           layer_out: *mut *mut c_char) -> nc_status;
    pub fn nc_options_set_reply_timeout_ms(opts: *mut nc_options, ms: c_uint) -> nc_status;
    pub fn nc_options_set_post_copy(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_receiver_key(opts: *mut nc_options, public_key_text: *const c_char) -> nc_status;
    pub fn nc_migrate(rt: *mut nc_runtime, container_id: *const c_char, pid: pid_t, work_dir: *const c_char,
                      connected_fd: c_int, opts: *const nc_options, report: *mut nc_migration_report) -> nc_status;
    pub fn nc_receive(rt: *mut nc_runtime, connected_fd: c_int, store_dir: *const c_char, opts: *const nc_options,
                      restored_pid: *mut pid_t, reply_out: *mut *mut c_char) -> nc_status;
    pub fn nc_receive_ex(rt: *mut nc_runtime, connected_fd: c_int, store_dir: *const c_char, opts: *const nc_options,
                         restored_pid: *mut pid_t, reply_out: *mut *mut c_char, source_told: *mut c_int) -> nc_status;
    pub fn nc_options_set_insecure_registry(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_push_image(dir: *const c_char, reference: *const c_char, opts: *const nc_options,
                         digest_out: *mut *mut c_char) -> nc_status;
    pub fn nc_pull_image(reference: *const c_char, dir: *const c_char, opts: *const nc_options) -> nc_status;
    pub fn nc_predump(
        rt: *mut nc_runtime,
        container_id: *const c_char,
        pid: pid_t,
        dir: *const c_char,
        opts: *const nc_options,
    ) -> nc_status;
    pub fn nc_options_set_parent(opts: *mut nc_options, parent_dir: *const c_char) -> nc_status;
    pub fn nc_options_set_auto_dedup(opts: *mut nc_options, on: c_int) -> nc_status;

    pub fn nc_keygen_ed25519(created: *mut c_int) -> nc_status;
    pub fn nc_public_key(text_out: *mut *mut c_char, key_id_out: *mut *mut c_char) -> nc_status;
    pub fn nc_trust_key(public_key_text: *const c_char) -> nc_status;
    pub fn nc_options_set_signing(opts: *mut nc_options, signing: nc_signing) -> nc_status;
    pub fn nc_sign_as(
        dir: *const c_char,
        format: nc_signature_format,
        signing: nc_signing,
        progress: nc_progress_fn,
        user: *mut c_void,
    ) -> nc_status;
    pub fn nc_signer_of(dir: *const c_char, signing_out: *mut nc_signing, key_id_out: *mut *mut c_char) -> nc_status;

    pub fn nc_checkpoint_ex(
        rt: *mut nc_runtime,
        container_id: *const c_char,
        pid: pid_t,
        dir: *const c_char,
        opts: *const nc_options,
    ) -> nc_status;
    pub fn nc_restore_ex(
        rt: *mut nc_runtime,
        dir: *const c_char,
        opts: *const nc_options,
        restored_pid: *mut pid_t,
    ) -> nc_status;

    pub fn nc_options_set_detect_container(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_root(opts: *mut nc_options, path: *const c_char) -> nc_status;
    pub fn nc_options_add_inherit_fd(opts: *mut nc_options, fd: c_int, key: *const c_char) -> nc_status;
    pub fn nc_options_add_join_ns(opts: *mut nc_options, spec: *const c_char) -> nc_status;
    pub fn nc_options_add_empty_ns(opts: *mut nc_options, ns: *const c_char) -> nc_status;
    pub fn nc_options_set_network_lock(opts: *mut nc_options, lock: nc_network_lock) -> nc_status;
    pub fn nc_options_add_cgroup_root(opts: *mut nc_options, spec: *const c_char) -> nc_status;
    pub fn nc_options_set_cgroup_yard(opts: *mut nc_options, path: *const c_char) -> nc_status;
    pub fn nc_options_set_cgroup_props(opts: *mut nc_options, yaml: *const c_char) -> nc_status;
    pub fn nc_options_set_freeze_cgroup(opts: *mut nc_options, path: *const c_char) -> nc_status;
    pub fn nc_options_set_lsm_profile(opts: *mut nc_options, profile: *const c_char) -> nc_status;
    pub fn nc_options_set_lsm_mount_context(opts: *mut nc_options, context: *const c_char) -> nc_status;
    pub fn nc_options_set_skip_in_flight(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_link_remap(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_ghost_limit(opts: *mut nc_options, bytes: c_ulonglong) -> nc_status;
    pub fn nc_options_set_ghost_fiemap(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_evasive_devices(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_file_validation(opts: *mut nc_options, method: *const c_char) -> nc_status;
    pub fn nc_options_set_use_default_config(opts: *mut nc_options, on: c_int) -> nc_status;
    pub fn nc_options_set_notify(opts: *mut nc_options, fn_: nc_notify_fn, user: *mut c_void) -> nc_status;
    pub fn nc_options_set_expected_container_id(opts: *mut nc_options, container_id: *const c_char) -> nc_status;
    pub fn nc_options_expect_annotation(opts: *mut nc_options, name: *const c_char, value: *const c_char)
        -> nc_status;
    pub fn nc_options_add_annotation(opts: *mut nc_options, name: *const c_char, value: *const c_char) -> nc_status;
    pub fn nc_options_add_runtime_file(
        opts: *mut nc_options,
        name: *const c_char,
        data: *const c_void,
        size: size_t,
    ) -> nc_status;

    pub fn nc_restore_pidfd(
        rt: *mut nc_runtime,
        dir: *const c_char,
        opts: *const nc_options,
        restored_pid: *mut pid_t,
        pidfd: *mut c_int,
    ) -> nc_status;

    pub fn nc_version_string() -> *const c_char;
    pub fn nc_criu_version(rt: *const nc_runtime, major: *mut c_int, minor: *mut c_int, patch: *mut c_int)
        -> nc_status;
    pub fn nc_criu_check(rt: *const nc_runtime) -> nc_status;

    pub fn nc_status_name(s: nc_status) -> *const c_char;

    pub fn nc_last_error() -> *const c_char;

    pub fn nc_error_new(out: *mut *mut nc_error) -> nc_status;
    pub fn nc_error_free(err: *mut nc_error);
    pub fn nc_error_status(err: *const nc_error) -> nc_status;
    pub fn nc_error_message(err: *const nc_error) -> *const c_char;
    pub fn nc_error_criu_exit_code(err: *const nc_error) -> c_int;
    pub fn nc_error_criu_lines(err: *const nc_error) -> *const c_char;
    pub fn nc_options_error(opts: *const nc_options) -> *const nc_error;

    pub fn nc_runtime_new_e(out: *mut *mut nc_runtime, err: *mut nc_error) -> nc_status;
    pub fn nc_runtime_new_with_criu_e(
        criu_path: *const c_char,
        out: *mut *mut nc_runtime,
        err: *mut nc_error,
    ) -> nc_status;
    pub fn nc_checkpoint_e(
        rt: *mut nc_runtime,
        container_id: *const c_char,
        pid: pid_t,
        dir: *const c_char,
        leave_running: c_int,
        err: *mut nc_error,
    ) -> nc_status;
    pub fn nc_checkpoint_ex_e(
        rt: *mut nc_runtime,
        container_id: *const c_char,
        pid: pid_t,
        dir: *const c_char,
        opts: *const nc_options,
        err: *mut nc_error,
    ) -> nc_status;
    pub fn nc_restore_e(rt: *mut nc_runtime, dir: *const c_char, restored_pid: *mut pid_t, err: *mut nc_error)
        -> nc_status;
    pub fn nc_restore_ex_e(
        rt: *mut nc_runtime,
        dir: *const c_char,
        opts: *const nc_options,
        restored_pid: *mut pid_t,
        err: *mut nc_error,
    ) -> nc_status;
    pub fn nc_restore_pidfd_e(
        rt: *mut nc_runtime,
        dir: *const c_char,
        opts: *const nc_options,
        restored_pid: *mut pid_t,
        pidfd: *mut c_int,
        err: *mut nc_error,
    ) -> nc_status;
    pub fn nc_sign_e(dir: *const c_char, err: *mut nc_error) -> nc_status;
    pub fn nc_verify_e(dir: *const c_char, err: *mut nc_error) -> nc_status;
    pub fn nc_sign_progress_e(
        dir: *const c_char,
        progress: nc_progress_fn,
        user: *mut c_void,
        err: *mut nc_error,
    ) -> nc_status;
    pub fn nc_verify_progress_e(
        dir: *const c_char,
        progress: nc_progress_fn,
        user: *mut c_void,
        err: *mut nc_error,
    ) -> nc_status;
    pub fn nc_sign_ex_e(
        dir: *const c_char,
        format: nc_signature_format,
        progress: nc_progress_fn,
        user: *mut c_void,
        err: *mut nc_error,
    ) -> nc_status;
    pub fn nc_signature_format_of_e(
        dir: *const c_char,
        format_out: *mut nc_signature_format,
        err: *mut nc_error,
    ) -> nc_status;
    pub fn nc_read_metadata_e(dir: *const c_char, json_out: *mut *mut c_char, err: *mut nc_error) -> nc_status;
    pub fn nc_set_max_checkpoint_bytes_e(bytes: c_ulonglong, err: *mut nc_error) -> nc_status;
    pub fn nc_key_path_e(buf: *mut c_char, size: size_t, err: *mut nc_error) -> nc_status;
    pub fn nc_key_path_ex_e(buf: *mut c_char, size: size_t, needed: *mut size_t, err: *mut nc_error) -> nc_status;
    pub fn nc_keygen_e(created: *mut c_int, err: *mut nc_error) -> nc_status;
    pub fn nc_options_new_e(out: *mut *mut nc_options, err: *mut nc_error) -> nc_status;
    pub fn nc_criu_version_e(
        rt: *const nc_runtime,
        major: *mut c_int,
        minor: *mut c_int,
        patch: *mut c_int,
        err: *mut nc_error,
    ) -> nc_status;
    pub fn nc_criu_check_e(rt: *const nc_runtime, err: *mut nc_error) -> nc_status;
    pub fn nc_export_e(dir: *const c_char, fd: c_int, opts: *const nc_options, err: *mut nc_error) -> nc_status;
    pub fn nc_import_e(fd: c_int, dir: *const c_char, opts: *const nc_options, err: *mut nc_error) -> nc_status;
    pub fn nc_export_chain_e(layer_dir: *const c_char, fd: c_int, opts: *const nc_options,
                             err: *mut nc_error) -> nc_status;
    pub fn nc_import_chain_e(fd: c_int, store_dir: *const c_char, opts: *const nc_options,
                             layer_out: *mut *mut c_char, err: *mut nc_error) -> nc_status;
    pub fn nc_migrate_e(rt: *mut nc_runtime, container_id: *const c_char, pid: pid_t, work_dir: *const c_char,
                        connected_fd: c_int, opts: *const nc_options, report: *mut nc_migration_report,
                        err: *mut nc_error) -> nc_status;
    pub fn nc_receive_e(rt: *mut nc_runtime, connected_fd: c_int, store_dir: *const c_char, opts: *const nc_options,
                        restored_pid: *mut pid_t, reply_out: *mut *mut c_char, err: *mut nc_error) -> nc_status;
    pub fn nc_receive_ex_e(rt: *mut nc_runtime, connected_fd: c_int, store_dir: *const c_char,
                           opts: *const nc_options, restored_pid: *mut pid_t, reply_out: *mut *mut c_char,
                           source_told: *mut c_int, err: *mut nc_error) -> nc_status;
    pub fn nc_push_image_e(dir: *const c_char, reference: *const c_char, opts: *const nc_options,
                           digest_out: *mut *mut c_char, err: *mut nc_error) -> nc_status;
    pub fn nc_pull_image_e(reference: *const c_char, dir: *const c_char, opts: *const nc_options,
                           err: *mut nc_error) -> nc_status;
    pub fn nc_predump_e(
        rt: *mut nc_runtime,
        container_id: *const c_char,
        pid: pid_t,
        dir: *const c_char,
        opts: *const nc_options,
        err: *mut nc_error,
    ) -> nc_status;
    pub fn nc_keygen_ed25519_e(created: *mut c_int, err: *mut nc_error) -> nc_status;
    pub fn nc_public_key_e(text_out: *mut *mut c_char, key_id_out: *mut *mut c_char, err: *mut nc_error) -> nc_status;
    pub fn nc_trust_key_e(public_key_text: *const c_char, err: *mut nc_error) -> nc_status;
    pub fn nc_sign_as_e(
        dir: *const c_char,
        format: nc_signature_format,
        signing: nc_signing,
        progress: nc_progress_fn,
        user: *mut c_void,
        err: *mut nc_error,
    ) -> nc_status;
    pub fn nc_signer_of_e(
        dir: *const c_char,
        signing_out: *mut nc_signing,
        key_id_out: *mut *mut c_char,
        err: *mut nc_error,
    ) -> nc_status;
}
