/* libnucleuscheckpoint: checkpoint and restore Linux process trees through CRIU, with every
 * checkpoint signed by HMAC-SHA256 over its whole folder and verified before CRIU reads it.
 *
 * The C ABI is stable: enum values are written out and never change, handles are opaque.
 * Every function returns an nc_status; on failure nc_last_error() says what went wrong and what
 * to do, for the calling thread. */
#ifndef NUCLEUS_CHECKPOINT_H
#define NUCLEUS_CHECKPOINT_H

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

NC_EXPORT nc_status nc_sign(const char *dir);   /* writes dir/checkpoint.hmac with the key store's key */
NC_EXPORT nc_status nc_verify(const char *dir); /* NC_OK, or NC_E_INTEGRITY if dir does not verify */

NC_EXPORT const char *nc_last_error(void); /* this thread's last failure message; "" if none */
NC_EXPORT const char *nc_status_name(nc_status s);

#ifdef __cplusplus
}
#endif

#endif /* NUCLEUS_CHECKPOINT_H */
