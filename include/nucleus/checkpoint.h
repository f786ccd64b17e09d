/* libnucleuscheckpoint: checkpoint and restore Linux process trees through CRIU, with every
 * checkpoint signed by HMAC-SHA256 over its whole folder and verified before CRIU reads it.
 *
 * The C ABI is stable: enum values are written out and never change, handles are opaque.
 * Every function returns an nc_status; on failure nc_last_error() says what went wrong and what
 * to do, for the calling thread. */
#ifndef NUCLEUS_CHECKPOINT_H
#define NUCLEUS_CHECKPOINT_H

#include <stddef.h>
#include <sys/types.h>

#include <nucleus/checkpoint_export.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nc_runtime nc_runtime;

typedef enum nc_status {
  NC_OK = 0,
  NC_E_INVALID = 1,    /* a bad argument: NULL, empty, malformed */
  NC_E_PERMISSION = 2, /* not root, or a file or folder with unsafe ownership or mode */
  NC_E_NOT_FOUND = 3,  /* no CRIU, no such process, no such checkpoint folder */
  NC_E_STATE = 4,      /* the runtime is busy with another dump or restore */
  NC_E_CRIU = 5,       /* CRIU failed, is too old, or a PID the checkpoint needs is taken */
  NC_E_INTEGRITY = 6,  /* the checkpoint does not verify: changed, swapped, unsigned, malformed */
  NC_E_IO = 7,         /* a system call failed (disk full, I/O error) */
  NC_E_KEY = 8,        /* the HMAC key is missing, unreadable, too short or unsafe */
  NC_E_NOMEM = 9,
  NC_E_INTERNAL = 10
} nc_status;

/* Finds CRIU in the trusted paths (/usr/sbin, /usr/bin, /usr/local/sbin; PATH only when not
 * root) and checks it: owned by root or the caller, not group/world-writable, new enough. */
NC_EXPORT nc_status nc_runtime_new(nc_runtime **out);
NC_EXPORT nc_status nc_runtime_new_with_criu(const char *criu_path, nc_runtime **out);
NC_EXPORT void nc_runtime_free(nc_runtime *rt); /* accepts NULL */

/* Dumps the process tree rooted at pid into dir (created 0700; CRIU's images in dir/images),
 * writes metadata.json and signs the folder. Needs root. With leave_running the tree keeps
 * running; otherwise CRIU stops it once the dump is complete. */
NC_EXPORT nc_status nc_checkpoint(nc_runtime *rt, const char *container_id, pid_t pid, const char *dir,
                        int leave_running);

/* Verifies dir and, only if it verifies, restores the tree; returns as soon as it runs, with
 * the restored root's PID. The tree runs on detached (reparented to the nearest subreaper). */
NC_EXPORT nc_status nc_restore(nc_runtime *rt, const char *dir, pid_t *restored_pid);

/* Called from the calling thread as signing and verifying hash file bytes, with the running
 * total: after each read of up to 1 MiB in the seed format, each window of up to 64 chunks
 * (256 MiB) in the chunked one. */
typedef void (*nc_progress_fn)(unsigned long long bytes_hashed, void *user);

/* The two signature formats (the README specifies both); verification recognises either. */
typedef enum nc_signature_format {
  NC_SIGNATURE_SEED = 1,   /* nucleus-container 0.3.3's: one serial HMAC-SHA256 over the sorted tree */
  NC_SIGNATURE_CHUNKED = 2 /* per-file chunked SHA-256 digests bound by one HMAC-SHA256: hashed on
                              every core, and during the dump itself; what dumps write by default */
} nc_signature_format;

/* Write dir/checkpoint.hmac with the key store's key (created if there is none); nc_sign and
 * nc_sign_progress in the seed format, nc_sign_ex in the one given. */
NC_EXPORT nc_status nc_sign(const char *dir);
NC_EXPORT nc_status nc_verify(const char *dir); /* NC_OK, or NC_E_INTEGRITY if dir does not verify */
NC_EXPORT nc_status nc_sign_progress(const char *dir, nc_progress_fn progress, void *user);
NC_EXPORT nc_status nc_verify_progress(const char *dir, nc_progress_fn progress, void *user);
NC_EXPORT nc_status nc_sign_ex(const char *dir, nc_signature_format format, nc_progress_fn progress, void *user);
/* The format dir is signed in, from its checkpoint.hmac alone (nothing is verified):
 * NC_E_INTEGRITY if it is unsigned or the signature is malformed. */
NC_EXPORT nc_status nc_signature_format_of(const char *dir, nc_signature_format *format_out);

/* The checkpoint's metadata.json, checked and re-serialised, in *json_out (free it with nc_free).
 * It is only as trustworthy as the checkpoint: verify first. */
NC_EXPORT nc_status nc_read_metadata(const char *dir, char **json_out);
NC_EXPORT void nc_free(void *p); /* accepts NULL */

/* The key store: its path (copied into buf, NUL-terminated), and creating its key if there is
 * none (*created is set to 1 if this call created it). */
NC_EXPORT nc_status nc_key_path(char *buf, size_t size);
NC_EXPORT nc_status nc_keygen(int *created);

/* --- Options (ABI-stable: an opaque handle with setters; new options only add setters) --- */

typedef struct nc_options nc_options;

typedef enum nc_cgroup_mode {
  NC_CGROUP_DEFAULT = 0, /* CRIU's default */
  NC_CGROUP_SOFT = 1,
  NC_CGROUP_FULL = 2,
  NC_CGROUP_STRICT = 3,
  NC_CGROUP_IGNORE = 4
} nc_cgroup_mode;

typedef enum nc_restore_mode {
  NC_RESTORE_DETACHED = 0, /* reparented to the nearest subreaper or PID 1 (default) */
  NC_RESTORE_CHILD = 1     /* the caller's child, which it can waitpid() for (CRIU's --restore-sibling) */
} nc_restore_mode;

NC_EXPORT nc_status nc_options_new(nc_options **out); /* defaults: shell-job on, log level 4, no timeout,
                                                         chunked signature */
NC_EXPORT void nc_options_free(nc_options *opts);     /* accepts NULL */
NC_EXPORT nc_status nc_options_set_leave_running(nc_options *opts, int on);
NC_EXPORT nc_status nc_options_set_shell_job(nc_options *opts, int on);
NC_EXPORT nc_status nc_options_set_tcp_established(nc_options *opts, int on);
NC_EXPORT nc_status nc_options_set_tcp_close(nc_options *opts, int on);
NC_EXPORT nc_status nc_options_set_ext_unix_sk(nc_options *opts, int on);
NC_EXPORT nc_status nc_options_set_file_locks(nc_options *opts, int on);
NC_EXPORT nc_status nc_options_set_manage_cgroups(nc_options *opts, nc_cgroup_mode mode);
NC_EXPORT nc_status nc_options_add_external(nc_options *opts, const char *spec); /* CRIU's --external */
NC_EXPORT nc_status nc_options_set_work_dir(nc_options *opts, const char *dir);  /* CRIU's logs there */
NC_EXPORT nc_status nc_options_set_log_level(nc_options *opts, int level);       /* 0 to 4 */
NC_EXPORT nc_status nc_options_set_timeout_ms(nc_options *opts, unsigned int ms); /* 0: none */
NC_EXPORT nc_status nc_options_set_restore_mode(nc_options *opts, nc_restore_mode mode);
/* The dumped process's start time (field 22 of /proc/PID/stat) as the caller recorded it: if the
 * PID now belongs to a process that started at another time, the dump is refused (NC_E_NOT_FOUND). */
NC_EXPORT nc_status nc_options_set_start_ticks(nc_options *opts, unsigned long long start_ticks);
/* The format nc_checkpoint_ex signs in (default NC_SIGNATURE_CHUNKED). */
NC_EXPORT nc_status nc_options_set_signature_format(nc_options *opts, nc_signature_format format);

/* nc_checkpoint and nc_restore with options; opts may be NULL for the defaults. */
NC_EXPORT nc_status nc_checkpoint_ex(nc_runtime *rt, const char *container_id, pid_t pid, const char *dir,
                                     const nc_options *opts);
NC_EXPORT nc_status nc_restore_ex(nc_runtime *rt, const char *dir, const nc_options *opts, pid_t *restored_pid);

/* --- Versions and probes --- */

NC_EXPORT const char *nc_version_string(void); /* this library's version, "0.1.0" */
NC_EXPORT nc_status nc_criu_version(const nc_runtime *rt, int *major, int *minor, int *patch);
NC_EXPORT nc_status nc_criu_check(const nc_runtime *rt); /* runs `criu check`: NC_OK or NC_E_CRIU */

NC_EXPORT const char *nc_last_error(void); /* this thread's last failure message; "" if none */
NC_EXPORT const char *nc_status_name(nc_status s);

#ifdef __cplusplus
}
#endif

#endif /* NUCLEUS_CHECKPOINT_H */
