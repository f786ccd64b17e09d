/* libnucleuscheckpoint: checkpoint and restore Linux process trees through CRIU, with every
 * checkpoint signed by HMAC-SHA256 over its whole folder and verified before CRIU reads it.
 *
 * The C ABI is stable: enum values are written out and never change, handles are opaque.
 * Every function that can fail returns an nc_status. What went wrong and what to do is said in
 * three places: in the nc_error the caller passes to the function's _e twin (nc_verify_e for
 * nc_verify, ...; see "Errors" at the end), which nothing ties to a thread; in the nc_options
 * handle for its setters (nc_options_error); and in nc_last_error(), the calling thread's. */
#ifndef NUCLEUS_CHECKPOINT_H
#define NUCLEUS_CHECKPOINT_H

#include <stddef.h>
#include <sys/types.h>

#include <nucleus/checkpoint_export.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nc_runtime nc_runtime;
typedef struct nc_error nc_error; /* one call's outcome, owned by the caller (see "Errors" at the end) */

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
  NC_E_INTERNAL = 10,
  NC_E_UNSUPPORTED = 11, /* this build of the library lacks the feature (e.g. registry images). Since 0.3. */
  NC_E_UNCONFIRMED = 12  /* a migration's outcome is unknown: the receiver was told to run the tree and did not
                          * confirm; the source's tree is left stopped (see nc_migrate). Since 0.3. */
} nc_status;

/* Finds CRIU in the trusted paths (/usr/sbin, /usr/bin, /usr/local/sbin; PATH only when not
 * root) and checks it: owned by root or the caller, not group/world-writable, new enough. */
NC_EXPORT nc_status nc_runtime_new(nc_runtime **out);
NC_EXPORT nc_status nc_runtime_new_with_criu(const char *criu_path, nc_runtime **out);
NC_EXPORT void nc_runtime_free(nc_runtime *rt); /* accepts NULL */

/* Dumps the process tree rooted at pid into dir (created 0700; CRIU's images in dir/images),
 * writes metadata.json and signs the folder. Needs root. The tree is frozen while CRIU dumps it.
 * With leave_running it then runs on. Otherwise it stays stopped until the checkpoint is signed
 * and in place, and is then killed (SIGKILL to every process of the tree); if anything fails
 * before that, it is resumed and runs on. Killed processes that were the caller's children must
 * be reaped by the caller (waitpid) before the tree can be restored: a zombie holds its PID.
 * The tree's descriptors: see nc_restore. */
NC_EXPORT nc_status nc_checkpoint(nc_runtime *rt, const char *container_id, pid_t pid, const char *dir,
                        int leave_running);

/* Verifies dir and, only if it verifies, restores the tree; returns as soon as it runs, with
 * the restored root's PID. The tree runs on detached (reparented to the nearest subreaper).
 *
 * PIDs: a tree in the caller's PID namespace gets its very PIDs back, so each must be free: held
 * by a running process, the restore fails (NC_E_CRIU, naming it); held by a zombie, it is retried
 * for up to 5 s, then fails. A tree with a PID namespace of its own (a container) gets its PIDs
 * inside that namespace back, in a new namespace, while its host PIDs are new: *restored_pid is
 * the root's PID as the caller's namespace sees it.
 *
 * Descriptors: CRIU reopens regular files at their paths (one removed since the dump fails the
 * restore; one deleted before it travels in the images), /dev/null and other devices, and pipes
 * and sockets between processes of the tree. What the tree shared with processes outside it
 * cannot come back whole: a pipe to the caller (stdio inherited from a parent that is not a
 * terminal included) is restored with nobody at the far end, so the tree's first write to it kills
 * it with SIGPIPE, unless the restorer hands in a new far side (nc_options_add_inherit_fd, key
 * "stdin", "stdout", "stderr" or CRIU's "pipe:[INODE]"); a UNIX socket connected outside fails the
 * dump (NC_E_CRIU) unless ext-unix-sk. A terminal (stdio inherited from an interactive shell)
 * fails the restore: CRIU runs without one. So start a tree to be checkpointed with stdio on
 * /dev/null, on files, or on pipes its restorer will hand back. */
NC_EXPORT nc_status nc_restore(nc_runtime *rt, const char *dir, pid_t *restored_pid);

/* Called from the calling thread as signing and verifying hash file bytes, with the running
 * total: after each read of up to 1 MiB in the seed format, each window of up to 64 chunks
 * (256 MiB) in the chunked one. */
typedef void (*nc_progress_fn)(unsigned long long bytes_hashed, void *user);

/* The signature formats (the README specifies them); verification recognises each. */
typedef enum nc_signature_format {
  NC_SIGNATURE_SEED = 1,   /* nucleus-container 0.3.3's: one serial HMAC-SHA256 over the sorted tree */
  NC_SIGNATURE_CHUNKED = 2, /* per-file chunked SHA-256 digests bound by one HMAC-SHA256: hashed on
                               every core, and during the dump itself */
  NC_SIGNATURE_MANIFEST = 3 /* chunked, and every chunk's digest listed under the HMAC, so that a
                               restore can check each chunk alone; what dumps write by default */
} nc_signature_format;

/* Write dir/checkpoint.hmac with the key store's key (created if there is none); nc_sign and
 * nc_sign_progress in the seed format, nc_sign_ex in the one given. */
NC_EXPORT nc_status nc_sign(const char *dir);
NC_EXPORT nc_status nc_verify(const char *dir); /* NC_OK, or NC_E_INTEGRITY if dir (and, for a layer of a
                                                   pre-dump chain, every parent: since 0.3) does not verify */
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

/* Process-wide: signing and verifying hash at most `bytes` of files (the sum of their sizes) for
 * one checkpoint, and at most 1/16 of that in holes of sparse files; beyond either, NC_E_INTEGRITY
 * before any byte is read. 0 goes back to the default: $NUCLEUS_CHECKPOINT_MAX_BYTES, else 1 TiB. */
NC_EXPORT nc_status nc_set_max_checkpoint_bytes(unsigned long long bytes);

/* The key store: its path (copied into buf, NUL-terminated), and creating its key if there is
 * none (*created is set to 1 if this call created it). nc_key_path fails with NC_E_INVALID,
 * writing nothing, if buf is NULL or smaller than the path. */
NC_EXPORT nc_status nc_key_path(char *buf, size_t size);
NC_EXPORT nc_status nc_keygen(int *created);
/* nc_key_path that reports the size the path needs, snprintf style: *needed (needed must not be
 * NULL) is set to the path's length plus its NUL whenever the path is known. buf NULL with size 0
 * asks for the size alone: NC_OK. A buf smaller than *needed: NC_E_INVALID, buf[0] = '\0' if size
 * is not 0; call again with *needed bytes. Since 0.2. */
NC_EXPORT nc_status nc_key_path_ex(char *buf, size_t size, size_t *needed);

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

/* Every setter returns NC_E_INVALID for a NULL handle or a value it refuses, and records its outcome
 * (NC_OK included) in the handle: nc_options_error. A handle may be read by several calls at once
 * (nc_checkpoint_ex and nc_restore_ex take it const), but set by one thread at a time. Each setter
 * says whether the option applies to the dump, the restore or both; one set for an action it does
 * not apply to is ignored there. */
NC_EXPORT nc_status nc_options_new(nc_options **out); /* defaults: shell-job on, log level 4, no timeout,
                                                         the default signature, streamed restore */
NC_EXPORT void nc_options_free(nc_options *opts);     /* accepts NULL */
NC_EXPORT nc_status nc_options_set_leave_running(nc_options *opts, int on);  /* dump: the tree runs on */
NC_EXPORT nc_status nc_options_set_shell_job(nc_options *opts, int on);      /* both (default on) */
NC_EXPORT nc_status nc_options_set_tcp_established(nc_options *opts, int on); /* both */
NC_EXPORT nc_status nc_options_set_tcp_close(nc_options *opts, int on);       /* both */
NC_EXPORT nc_status nc_options_set_ext_unix_sk(nc_options *opts, int on);     /* both */
NC_EXPORT nc_status nc_options_set_file_locks(nc_options *opts, int on);      /* both */
NC_EXPORT nc_status nc_options_set_manage_cgroups(nc_options *opts, nc_cgroup_mode mode); /* both */
/* Both: CRIU's --external; at dump "mnt[MOUNTPOINT]:KEY", "net[INODE]:KEY", "pid[INODE]:KEY",
 * "dev[MAJOR/MINOR]:KEY", at restore "mnt[KEY]:HOST_PATH", "dev[KEY]:HOST_PATH". */
NC_EXPORT nc_status nc_options_add_external(nc_options *opts, const char *spec);
NC_EXPORT nc_status nc_options_set_work_dir(nc_options *opts, const char *dir);  /* both: CRIU's logs there */
NC_EXPORT nc_status nc_options_set_log_level(nc_options *opts, int level);       /* both: 0 to 4 */
NC_EXPORT nc_status nc_options_set_timeout_ms(nc_options *opts, unsigned int ms); /* both: 0: none */
NC_EXPORT nc_status nc_options_set_restore_mode(nc_options *opts, nc_restore_mode mode); /* restore */
/* Restore: 1 (the default) streams the images to CRIU through the library, which checks every
 * chunk against the signature before CRIU reads it; 0 restores from the folder after verifying it
 * whole (the older, slower path). Since 0.2. */
NC_EXPORT nc_status nc_options_set_image_stream(nc_options *opts, int enabled);
/* Dump: the dumped process's start time (field 22 of /proc/PID/stat) as the caller recorded it: if
 * the PID now belongs to a process that started at another time, the dump is refused (NC_E_NOT_FOUND). */
NC_EXPORT nc_status nc_options_set_start_ticks(nc_options *opts, unsigned long long start_ticks);
/* Dump: the format nc_checkpoint_ex signs in (default NC_SIGNATURE_MANIFEST). */
NC_EXPORT nc_status nc_options_set_signature_format(nc_options *opts, nc_signature_format format);

/* nc_checkpoint and nc_restore with options; opts may be NULL for the defaults. */
NC_EXPORT nc_status nc_checkpoint_ex(nc_runtime *rt, const char *container_id, pid_t pid, const char *dir,
                                     const nc_options *opts);
NC_EXPORT nc_status nc_restore_ex(nc_runtime *rt, const char *dir, const nc_options *opts, pid_t *restored_pid);

/* --- Pre-dump chains (incremental checkpoints). Since 0.3. ---
 * A pre-dump saves a running tree's memory, and the tree runs on; a later pre-dump, and the final
 * nc_checkpoint_ex, given it as their parent, write only the memory changed since. Each layer is a
 * signed checkpoint of its own whose signature binds its parent's; the parent must be a folder
 * beside the layer's (CRIU links to it as ../../NAME/images). nc_verify and nc_restore_ex of a
 * layer verify the whole chain first (at most 64 layers); a chain restores from its folders, never
 * streamed (CRIU's stream mode cannot read parent images). Needs a kernel that tracks changed
 * memory (CONFIG_MEM_SOFT_DIRTY): elsewhere these calls fail with NC_E_CRIU, and nothing runs. */

/* CRIU's pre-dump of the tree rooted at pid into the new folder dir (absent or empty), signed in
 * the chunked or manifest format (nc_options_set_signature_format), its metadata marking it a
 * pre-dump. opts may be NULL; with nc_options_set_parent only what changed since that pre-dump is
 * written. A pre-dump cannot be restored on its own. Since 0.3. */
NC_EXPORT nc_status nc_predump(nc_runtime *rt, const char *container_id, pid_t pid, const char *dir,
                               const nc_options *opts);
/* Dump and pre-dump: the pre-dump (a folder beside dir) to dump on; NULL or "" for none. Since 0.3. */
NC_EXPORT nc_status nc_options_set_parent(nc_options *opts, const char *parent_dir);
/* Dump and pre-dump with a parent: CRIU's --auto-dedup, which punches the pages the new layer holds
 * out of its parents' images to save disk. That changes the parents: the library verifies them
 * before CRIU runs and re-signs each afterwards, oldest first, so the chain verifies as before;
 * nothing else may read the chain meanwhile. Since 0.3. */
NC_EXPORT nc_status nc_options_set_auto_dedup(nc_options *opts, int on);

/* --- Transfer streams: a checkpoint moved through any descriptor (file, pipe, socket) as one framed
 * stream, specified in the README ("Transfer stream"). Since 0.3. --- */

typedef enum nc_compression {
  NC_COMPRESSION_NONE = 0, /* the default */
  NC_COMPRESSION_ZSTD = 1  /* zstd level 1 (importers accept windows of up to 8 MiB) */
} nc_compression;

/* Export: how nc_export compresses the stream; an import reads either. Since 0.3. */
NC_EXPORT nc_status nc_options_set_compression(nc_options *opts, nc_compression compression);
/* Writes the checkpoint folder dir to fd (from its offset on) as one stream: its signature, the
 * listing of its folders and files, then every file chunk by chunk. dir must be signed in
 * NC_SIGNATURE_MANIFEST (others: NC_E_INVALID, saying how to re-sign); it is not verified here,
 * the importer verifies. A reader that goes away fails it with NC_E_IO, never with SIGPIPE (the
 * calling thread blocks SIGPIPE while it writes; signal dispositions are left alone). opts may be
 * NULL. Since 0.3. */
NC_EXPORT nc_status nc_export(const char *dir, int fd, const nc_options *opts);
/* Reads a stream written by nc_export from fd into the new checkpoint folder dir (absent, or an
 * empty folder), through a private staging folder beside it: the listing is authenticated (with the
 * key store's HMAC key, or a trusted Ed25519 public key) before any file byte is accepted, each chunk is checked as it arrives, and the
 * folder is renamed into place only when the stream has ended cleanly. A truncated, reordered,
 * corrupted, oversized or foreign stream, or one with trailing bytes, fails with NC_E_INTEGRITY and
 * leaves nothing behind. opts may be NULL (none of its options apply yet). Since 0.3. */
NC_EXPORT nc_status nc_import(int fd, const char *dir, const nc_options *opts);

/* Pre-dump chains as one stream (the README's "Chain stream"). Since 0.3. */
/* Export: the receiver holds the layer whose checkpoint.hmac has this SHA-256 (64 lowercase hex
 * digits): nc_export_chain names it but does not send it. Repeatable, up to 64 layers (more, or
 * another form: NC_E_INVALID). Since 0.3. */
NC_EXPORT nc_status nc_options_add_receiver_has(nc_options *opts, const char *signature_sha256);
/* Writes the chain of the layer folder layer_dir (the layer and each parent, a sibling folder) to fd
 * as one chain stream, oldest first: a table naming every layer and its signature's SHA-256, then
 * each layer the receiver lacks as nc_export writes a checkpoint (nc_options_set_compression
 * applies). The chain's links and bindings are checked, no signature (the importer verifies): a
 * broken chain (NC_E_INTEGRITY) or a layer to send not signed in NC_SIGNATURE_MANIFEST (NC_E_INVALID)
 * is refused before a byte is written. A folder without a parent is a chain of one. opts may be
 * NULL. Since 0.3. */
NC_EXPORT nc_status nc_export_chain(const char *layer_dir, int fd, const nc_options *opts);
/* Reads a stream written by nc_export_chain from fd into the store folder store_dir (created if
 * missing): each layer sent as nc_import imports a checkpoint, parents first, into the sibling
 * folder the stream names, its parent link made by the importer exactly as signed. A layer not sent
 * must be in store_dir already with the signature the stream names, a layer sent must not be
 * (NC_E_INVALID, naming the folder). Once the stream has ended the whole chain is verified as
 * nc_verify verifies it. Any failure removes the layers this call made, and leaves folders that
 * were there before alone. On success *layer_out (if layer_out is not NULL) is the newest layer's
 * folder, to free with nc_free. opts may be NULL (none of its options apply yet). Since 0.3. */
NC_EXPORT nc_status nc_import_chain(int fd, const char *store_dir, const nc_options *opts, char **layer_out);

/* --- Migration: a process tree moved to another host over one connection, the README's
 * "Migration". A cold migration: one final dump, no pre-dump rounds. The connection is neither
 * encrypted nor authenticated (use a private network or a tunnel); the receiver restores only what
 * a key it trusts signed. Since 0.3. --- */

typedef struct nc_migration_report {
  size_t size;                    /* set by the caller to sizeof(nc_migration_report); later versions only append */
  unsigned long long downtime_ms; /* from the dump's start to the receiver's reply: the tree was stopped throughout */
  unsigned long long dump_ms;     /* the dump, its signature and commit, here */
  unsigned long long transfer_ms; /* the stream sent and imported (verified) by the receiver */
  unsigned long long restore_ms;  /* the receiver's restore */
  unsigned long long bytes_sent;  /* the stream's bytes the receiver acknowledged (TCP; 0 on other sockets) */
  unsigned int rounds;            /* pre-dump rounds before the final dump (0: none are made yet) */
  pid_t restored_pid;             /* the tree's root on the receiver, as the receiver numbers it */
  char rounds_reason[512];        /* why rounds is what it is (NUL-terminated, cut to fit) */
  char restored_dir[4096];        /* the checkpoint folder the receiver imported (NUL-terminated, cut to fit) */
  unsigned long long post_copy_ms; /* post-copy: from the receiver's "ok" until it had every page */
  unsigned long long pages_sent;   /* post-copy: the pages (of the host's size) sent meanwhile */
  char receiver_key_id[33];        /* Ed25519: the id of the key that proved the receiver's answers; "" otherwise */
} nc_migration_report;

/* Migrate: how long the receiver's greeting and the stream may stall unacknowledged and, once
 * sent, how long each of the receiver's answers may take ("ready": its import and restore).
 * Receive: how long the source may take to start its stream (its dump) and may stall it; default 300000 (5 minutes), 0 goes back to it. Since 0.3. */
NC_EXPORT nc_status nc_options_set_reply_timeout_ms(nc_options *opts, unsigned int ms);
/* Migrate post-copy (on != 0), the README's "Post-copy": the tree's private memory is left out of
 * the checkpoint and follows the tree once it runs on the receiver, so the downtime no longer
 * grows with memory. Needs fs.pipe-max-size >= 4194304 here (NC_E_UNSUPPORTED otherwise). Until
 * every page is in, a failure kills the receiver's copy and returns NC_E_UNCONFIRMED with this
 * copy stopped, to resume. Default 0. Since 0.3. */
NC_EXPORT nc_status nc_options_set_post_copy(nc_options *opts, int on);
/* Migrate signing with Ed25519: the receiver's own public key (the text of its public key file, as
 * `keygen --ed25519 --public-key-out` writes it), whose proofs its answers must carry (the README's
 * "Answers"); a receiver greeting with another key is refused with NC_E_INTEGRITY before anything is
 * dumped. It need not be in this host's trust folder. NULL (the default): any key of the trust
 * folder may answer. Text that is not a public key: NC_E_KEY, and none is set. Since 0.3. */
NC_EXPORT nc_status nc_options_set_receiver_key(nc_options *opts, const char *public_key_text);
/* Reads the receiver's greeting (none: NC_E_IO, nothing dumped; connect before calling, so that no
 * receiver means no freeze), answers it proving the key it signs with and waits for the receiver's
 * proven "go" (a receiver that cannot check that key refuses: its status, nothing dumped), dumps the tree rooted at pid into the new checkpoint folder work_dir
 * (signed in the manifest format, with opts' dump options and nc_options_set_signing) and keeps it
 * stopped; sends it on connected_fd as nc_export does (nc_options_set_compression), and waits for
 * the receiver's "ready" (the tree restored there, held stopped); answers "commit" (proven with
 * the signing key) and waits for its "ok" (the tree runs there). "go", "ready", "ok" and any answer after
 * the commit must be proven by the receiver for this connection: with the HMAC key, or signing with
 * Ed25519, with the receiver's own Ed25519 key, which this host must trust or be given
 * (nc_options_set_receiver_key; else NC_E_KEY or NC_E_INTEGRITY before anything is dumped; see the
 * README's "Answers"). On "ok" the stopped tree is
 * killed and report is filled. Before the commit, or on the receiver's refusal (a stream that does
 * not verify, a failed restore), the tree resumes here and the receiver's error, when it sent one,
 * is returned in its status. After the commit, no answer (a timeout, a reset, a garbled or unproven line)
 * returns NC_E_UNCONFIRMED and leaves the tree stopped here, as does this process's death: it may
 * run on the receiver, and must never run on both sides; the message names its root PID and what
 * to do. work_dir stays. report may be NULL. Since 0.3. */
NC_EXPORT nc_status nc_migrate(nc_runtime *rt, const char *container_id, pid_t pid, const char *work_dir,
                               int connected_fd, const nc_options *opts, nc_migration_report *report);
/* The receiving end: greets the source with a fresh nonce (and its own Ed25519 key's id, if it has
 * one: an Ed25519-signed checkpoint needs it, to prove the answers), checks the source's answer,
 * proven by its HMAC key or a trusted Ed25519 key for this connection (else refused at once, nothing
 * read further: NC_E_INTEGRITY, NC_E_KEY), says go, reads one stream from connected_fd into
 * a new folder under store_dir (verified chunk by chunk as nc_import does, committed only whole),
 * restores it (opts' restore options) with every task left stopped, replies
 * {"ready":true,"pid":N,"dir":"...","import_ms":N,"restore_ms":N} and waits (30 s at most) for the
 * source's commit, proven by the checkpoint's signing key for this connection: without it (a
 * replayed stream, a forged commit) the tree is killed before it runs. Then the tree runs and it replies {"ok":true,...} (same fields), which reply_out (may be
 * NULL) receives too, to free with nc_free; on a failure {"ok":false,"status":N,"status_name":
 * "NC_E_...","error":"..."}, and the status is returned. Since 0.3. */
NC_EXPORT nc_status nc_receive(nc_runtime *rt, int connected_fd, const char *store_dir, const nc_options *opts,
                               pid_t *restored_pid, char **reply_out);
/* As nc_receive, and says whether the source heard the outcome: *source_told (may be NULL) is 1
 * when the final {"ok":true,...} was sent, 0 when the tree runs here but that line could not be
 * sent (the source closed or reset the connection after its commit). The source then keeps its copy
 * stopped and fails with NC_E_UNCONFIRMED: kill that copy there, now that this one runs. NC_OK
 * either way (the tree runs here); 0 on a failure. Since 0.3. */
NC_EXPORT nc_status nc_receive_ex(nc_runtime *rt, int connected_fd, const char *store_dir, const nc_options *opts,
                                  pid_t *restored_pid, char **reply_out, int *source_told);

/* --- Registry images: a checkpoint published as an OCI image (one tar layer holding the folder and
 * its signature, annotated as podman and CRI-O annotate checkpoint images) and pulled back into a
 * verified folder; the README's "Registry images". References are HOST[:PORT]/NAME[:TAG] (tag
 * "latest" if none), or HOST[:PORT]/NAME@sha256:HEX to pull. Registries that need credentials are
 * not supported. A library built without libcurl and libarchive returns NC_E_UNSUPPORTED. Since 0.3. --- */

/* Both: speak plain http to the registry (skopeo's --tls-verify=false), for a registry on localhost
 * or a lab network; the default is https with the system's certificate authorities. Since 0.3. */
NC_EXPORT nc_status nc_options_set_insecure_registry(nc_options *opts, int on);
/* Verifies the checkpoint folder dir with this host's keys (NC_E_INTEGRITY: not published), then
 * uploads it as the image reference: an uncompressed tar layer (the same checkpoint always makes
 * the same layer), a config and a manifest. Only a folder signed in format 3 (NC_SIGNATURE_MANIFEST)
 * is published, as only it can be checked as it arrives: formats 1 and 2 are NC_E_INVALID, saying
 * how to re-sign. A pre-dump chain layer with a parent: NC_E_INVALID.
 * Registry errors: NC_E_IO (unreachable, failed), NC_E_PERMISSION (401/403), NC_E_NOT_FOUND (404).
 * digest_out (may be NULL) receives the manifest's digest ("sha256:..."), to free with nc_free;
 * pulling REPO@DIGEST gets exactly this image. opts may be NULL. Since 0.3. */
NC_EXPORT nc_status nc_push_image(const char *dir, const char *reference, const nc_options *opts, char **digest_out);
/* Pulls the image reference into the new checkpoint folder dir (absent, or an empty folder): the
 * manifest (at most 4 MiB; its digest checked when the reference names one) must list exactly one
 * tar layer, plain, gzip or zstd; the layer is read as it arrives (received only as far as it is
 * read, never stored whole; its size and sha256 checked against the manifest to its end) into a
 * private staging folder beside dir, as nc_import reads a stream: its signature (format 3) and its
 * listing first, authenticated with this host's keys before a byte is written, then only the
 * listed folders and files, each of its listed size and each chunk checked before it is written
 * (modes 0700 and 0600), and renamed into place once the whole layer matched its digest. Anything else fails with
 * NC_E_INTEGRITY and leaves nothing behind. opts may be NULL. Since 0.3. */
NC_EXPORT nc_status nc_pull_image(const char *reference, const char *dir, const nc_options *opts);

/* --- Containers: the options a container runtime passes CRIU (CRIU's names) ---
 *
 * Each says whether it applies to the dump, the restore or both; an option set for an action it
 * does not apply to is still checked, and otherwise ignored. Values are checked when set
 * (NC_E_INVALID, naming the option and what is accepted): no empty strings, nothing starting
 * with '-', no newlines. String setters take NULL to go back to the default. The options a dump
 * used that its restore must repeat are recorded in the signed metadata and applied by a plain
 * restore; what is set here takes precedence. */

typedef enum nc_network_lock {
  NC_NETWORK_LOCK_DEFAULT = 0,  /* CRIU's default (iptables) */
  NC_NETWORK_LOCK_IPTABLES = 1, /* needs iptables-restore and ip6tables-restore */
  NC_NETWORK_LOCK_NFTABLES = 2,
  NC_NETWORK_LOCK_SKIP = 3      /* the caller keeps the network quiet itself */
} nc_network_lock;

/* Upper bounds of what a dump records of the runtime's own description. */
#define NC_ANNOTATION_VALUE_MAX 65536u /* bytes of one annotation's value */
#define NC_RUNTIME_FILE_MAX 1048576u   /* bytes of one runtime file */
#define NC_RUNTIME_FILE_NAME_MAX 255u  /* bytes of a runtime file's name */

/* Both: read the tree's mount table and namespaces at dump, declare external what lies outside
 * the container, and record it; apply the record at restore. On by default. */
NC_EXPORT nc_status nc_options_set_detect_container(nc_options *opts, int on);
/* Restore: the container's rootfs, an absolute path (CRIU's --root); default: the recorded one. */
NC_EXPORT nc_status nc_options_set_root(nc_options *opts, const char *path);
/* Restore: this process's open descriptor fd stands for what the dump recorded as key: CRIU's
 * form ("pipe:[12345]", "socket:[678]", an external namespace's key), or "stdin", "stdout",
 * "stderr" for what the tree's root held at 0, 1, 2 (CRIU's --inherit-fd). fd must stay open
 * until the restore; only these descriptors reach CRIU. */
NC_EXPORT nc_status nc_options_add_inherit_fd(nc_options *opts, int fd, const char *key);
/* Restore: join an existing namespace, "NS:PID" or "NS:/PATH" with NS one of net, uts, time, ipc,
 * user, mnt; "user:PID,UID,GID" (CRIU's --join-ns). */
NC_EXPORT nc_status nc_options_add_join_ns(nc_options *opts, const char *spec);
/* Restore: create the namespace but leave it unconfigured, for the caller to set up; CRIU accepts
 * "net" (CRIU's --empty-ns). */
NC_EXPORT nc_status nc_options_add_empty_ns(nc_options *opts, const char *ns);
/* Dump: how CRIU keeps a network namespace's traffic out while it works (CRIU's --network-lock);
 * the restore uses the method the dump did. */
NC_EXPORT nc_status nc_options_set_network_lock(nc_options *opts, nc_network_lock lock);
/* Both: "/PATH", "CONTROLLER:/PATH" or ":/PATH": at dump, the cgroup root to dump from; at restore,
 * the one to restore into (CRIU's --cgroup-root). ":/PATH" is the cgroup v2 hierarchy alone; a
 * bare "/PATH" moves every hierarchy, cgroup v1 ones included. */
NC_EXPORT nc_status nc_options_add_cgroup_root(nc_options *opts, const char *spec);
/* Both: an absolute path to an already mounted cgroup yard, so CRIU mounts none (--cgroup-yard). */
NC_EXPORT nc_status nc_options_set_cgroup_yard(nc_options *opts, const char *path);
/* Dump: which cgroup controllers and properties to dump, CRIU's simplified YAML; newlines
 * allowed here alone (CRIU's --cgroup-props). */
NC_EXPORT nc_status nc_options_set_cgroup_props(nc_options *opts, const char *yaml);
/* Dump: freeze the tree through this cgroup (absolute path) rather than process by process
 * (CRIU's --freeze-cgroup). */
NC_EXPORT nc_status nc_options_set_freeze_cgroup(nc_options *opts, const char *path);
/* Restore: "apparmor:NAME", "selinux:CONTEXT" or "none:" for the restored tree (--lsm-profile). */
NC_EXPORT nc_status nc_options_set_lsm_profile(nc_options *opts, const char *profile);
/* Restore: the SELinux context mounts are restored with (CRIU's --lsm-mount-context). */
NC_EXPORT nc_status nc_options_set_lsm_mount_context(nc_options *opts, const char *context);
/* Dump: leave out TCP connections not yet accepted (CRIU's --skip-in-flight). */
NC_EXPORT nc_status nc_options_set_skip_in_flight(nc_options *opts, int on);
/* Dump: link open but deleted files back where the file system allows (CRIU's --link-remap). */
NC_EXPORT nc_status nc_options_set_link_remap(nc_options *opts, int on);
/* Dump: the largest open but deleted file whose contents go into the images; 0: CRIU's default
 * (CRIU's --ghost-limit; at most 2^63 - 1). */
NC_EXPORT nc_status nc_options_set_ghost_limit(nc_options *opts, unsigned long long bytes);
/* Dump: store deleted files' contents sparsely, by fiemap (CRIU's --ghost-fiemap). */
NC_EXPORT nc_status nc_options_set_ghost_fiemap(nc_options *opts, int on);
/* Both: reach a device file by any path when its own is gone (CRIU's --evasive-devices). */
NC_EXPORT nc_status nc_options_set_evasive_devices(nc_options *opts, int on);
/* Both: how CRIU checks that files are those dumped: "filesize" or "buildid" (CRIU's default)
 * (CRIU's --file-validation). */
NC_EXPORT nc_status nc_options_set_file_validation(nc_options *opts, const char *method);
/* Both: let CRIU read /etc/criu/default.conf and ~/.criu/default.conf. Off by default: a file
 * nobody sees must not change a dump (the library passes --no-default-config). */
NC_EXPORT nc_status nc_options_set_use_default_config(nc_options *opts, int on);
/* CRIU's notifications (its action scripts), by the values of nucleus::checkpoint::CriuNotification. */
typedef enum nc_notification {
  NC_NOTIFY_PRE_DUMP = 1,
  NC_NOTIFY_POST_DUMP = 2,             /* the images are written; the tree is still frozen */
  NC_NOTIFY_PRE_RESTORE = 3,
  NC_NOTIFY_POST_RESTORE = 4,          /* the tree is restored, not yet running */
  NC_NOTIFY_NETWORK_LOCK = 5,
  NC_NOTIFY_NETWORK_UNLOCK = 6,
  NC_NOTIFY_SETUP_NAMESPACES = 7,      /* the namespaces exist: configure them */
  NC_NOTIFY_POST_SETUP_NAMESPACES = 8,
  NC_NOTIFY_PRE_RESUME = 9,            /* the last moment before the restored tree runs */
  NC_NOTIFY_POST_RESUME = 10,
  NC_NOTIFY_STATUS_READY = 11
} nc_notification;

/* Called on the calling thread while CRIU waits for the answer; pid is the tree's root as the host
 * sees it once CRIU knows it (0 before). Return 0 to go on; anything else stops CRIU: a dump fails
 * and the tree runs on; a restore fails and what CRIU made is killed (at pre-resume, before it
 * ever runs). Values not listed above may be added later: return 0 for those. */
typedef int (*nc_notify_fn)(nc_notification what, pid_t pid, void *user);
/* Both: CRIU's notifications for this options' dumps and restores (fn NULL: none). */
NC_EXPORT nc_status nc_options_set_notify(nc_options *opts, nc_notify_fn fn, void *user);
/* Restore: the container the checkpoint must have been signed for (nc_checkpoint's container_id);
 * another container's checkpoint is refused with NC_E_INTEGRITY, naming both. NULL: not checked. */
NC_EXPORT nc_status nc_options_set_expected_container_id(nc_options *opts, const char *container_id);
/* Restore: an annotation the checkpoint must carry with exactly this value (e.g. a generation the
 * runtime bumps at every dump, so that an older signed checkpoint cannot be replayed in place of
 * the newest); refused with NC_E_INTEGRITY otherwise. May be called for several names. */
NC_EXPORT nc_status nc_options_expect_annotation(nc_options *opts, const char *name, const char *value);
/* Dump: a string annotation (name non-empty, both UTF-8, value at most NC_ANNOTATION_VALUE_MAX
 * bytes) recorded in the signed metadata.json; a name may be added once. */
NC_EXPORT nc_status nc_options_add_annotation(nc_options *opts, const char *name, const char *value);
/* Dump: a file of the runtime's own (its config, the container's spec) written as
 * runtime/NAME into the checkpoint before it is signed. name: a plain UTF-8 file name (no '/',
 * not "." or "..", at most NC_RUNTIME_FILE_NAME_MAX bytes), added once; size at most
 * NC_RUNTIME_FILE_MAX; data may be NULL when size is 0. The bytes are copied. */
NC_EXPORT nc_status nc_options_add_runtime_file(nc_options *opts, const char *name, const void *data, size_t size);

/* As nc_restore_ex, with a pidfd for the restored root as well, opened while the root was known
 * to be the restored process: unlike the PID, it can never come to mean another process. Close
 * it when done. With NC_RESTORE_CHILD the root is the caller's child: waitid(P_PIDFD, ...) it. */
NC_EXPORT nc_status nc_restore_pidfd(nc_runtime *rt, const char *dir, const nc_options *opts, pid_t *restored_pid,
                                     int *pidfd);

/* --- Ed25519 signatures, which a receiver can verify but not forge. Since 0.3. ---
 * A host signs with its Ed25519 secret key (beside the HMAC key as checkpoint-ed25519.key, or
 * $NUCLEUS_CHECKPOINT_ED25519_KEY_FILE); verifiers hold only public keys, in a trust folder (beside
 * the HMAC key as trusted-keys/, or $NUCLEUS_CHECKPOINT_TRUSTED_KEYS; owned by root or the caller,
 * not writable by others). nc_verify and the restores accept both kinds of signature: an Ed25519
 * one only from a key in the trust folder, an HMAC one with the HMAC key as before. */

typedef enum nc_signing {
  NC_SIGNING_HMAC = 1,   /* the key store's HMAC key: whoever verifies can also sign (the default) */
  NC_SIGNING_ED25519 = 2 /* the key store's Ed25519 key: verified with its public key alone */
} nc_signing;

/* Creates the key store's Ed25519 key if there is none (*created, if not NULL, set to 1 if this
 * call created it) and trusts its public key on this host. Since 0.3. */
NC_EXPORT nc_status nc_keygen_ed25519(int *created);
/* The key store's Ed25519 public key: in *text_out the text of its public key file, for another
 * host's trust folder (nc_trust_key there), and in *key_id_out its key id (32 hex digits); free
 * both with nc_free. Either may be NULL, not both. NC_E_KEY if there is no key. Since 0.3. */
NC_EXPORT nc_status nc_public_key(char **text_out, char **key_id_out);
/* Adds a public key (the text nc_public_key gives) to this host's trust folder, creating the folder
 * if needed: checkpoints that key signs verify here from then on. Since 0.3. */
NC_EXPORT nc_status nc_trust_key(const char *public_key_text);
/* Dump and pre-dump: the key that signs (NC_SIGNING_HMAC by default). Ed25519 needs the chunked or
 * manifest format. Since 0.3. */
NC_EXPORT nc_status nc_options_set_signing(nc_options *opts, nc_signing signing);
/* nc_sign_ex with the key given: NC_E_INVALID for Ed25519 in the seed format, which is HMAC-only.
 * Since 0.3. */
NC_EXPORT nc_status nc_sign_as(const char *dir, nc_signature_format format, nc_signing signing,
                               nc_progress_fn progress, void *user);
/* Which kind of key signed dir, from its checkpoint.hmac alone (nothing is verified), and for
 * Ed25519 the key's id in *key_id_out (32 hex digits; free with nc_free), NULL for HMAC; key_id_out
 * may be NULL. NC_E_INTEGRITY if dir is unsigned or its signature malformed. Since 0.3. */
NC_EXPORT nc_status nc_signer_of(const char *dir, nc_signing *signing_out, char **key_id_out);

/* --- Versions and probes --- */

NC_EXPORT const char *nc_version_string(void); /* this library's version, "0.1.0" */
NC_EXPORT nc_status nc_criu_version(const nc_runtime *rt, int *major, int *minor, int *patch);
NC_EXPORT nc_status nc_criu_check(const nc_runtime *rt); /* runs `criu check`: NC_OK or NC_E_CRIU */

NC_EXPORT const char *nc_status_name(nc_status s); /* "NC_E_INTEGRITY"; the library's, never freed */

/* --- Errors ---
 *
 * nc_last_error(): the calling thread's message of its latest call that returned an nc_status
 * (nc_error_status aside): "" if that call succeeded, or if there was none. Every such call, on
 * this thread, replaces it; the other functions (the *_free ones, nc_free, nc_last_error,
 * nc_status_name, nc_version_string, nc_error_message and the other nc_error_* readers,
 * nc_options_error) leave it alone. The pointer is valid until the next such call on this thread,
 * or the thread's exit. Where calls do not stay on one thread (Go's goroutines move between
 * threads between two calls), use the _e twins instead. */
NC_EXPORT const char *nc_last_error(void);

/* An nc_error holds one call's outcome: made by nc_error_new, passed as the last argument of any
 * _e function (which also sets nc_last_error() as its twin does), read with the functions below, and
 * freed with nc_error_free. Each _e call resets it: on success it reads NC_OK, "", -1, "". Nothing
 * ties it to a thread; it must not be used by two calls at once. An _e function accepts NULL for
 * err (its twin's behaviour). The readers accept NULL as an empty error. Since 0.2.
 * Its message and CRIU's lines, as nc_last_error(), are fit to print: bytes that are not UTF-8 come
 * as \xNN, controls as \n, \r, \t or \xNN, C1 and bidirectional controls as \uNNNN, and the
 * backslash doubled (as the command line shows text). Since 0.3. */
NC_EXPORT nc_status nc_error_new(nc_error **out);
NC_EXPORT void nc_error_free(nc_error *err); /* accepts NULL */
NC_EXPORT nc_status nc_error_status(const nc_error *err);
/* What went wrong and what to do; "" after a success. Valid until err is passed to another call or
 * freed. */
NC_EXPORT const char *nc_error_message(const nc_error *err);
/* Where a dump's or a restore's run of CRIU failed (NC_E_CRIU): CRIU's exit code, or -1 if it did
 * not exit (killed, timed out, its status taken by a reaper of the caller's). -1 for every other
 * failure, NC_E_CRIU ones the library diagnoses itself included (a PID the tree needs is taken,
 * CRIU too old). */
NC_EXPORT int nc_error_criu_exit_code(const nc_error *err);
/* With nc_error_criu_exit_code's failures: CRIU's own Error lines from its log (at most ten), else
 * its console output, each ending in '\n'; "" for any other. The message quotes them too. Valid
 * until err is passed to another call or freed. */
NC_EXPORT const char *nc_error_criu_lines(const nc_error *err);
/* The outcome of the latest setter called on opts (NC_OK and "" after a success, or before any);
 * NULL if opts is NULL. Owned by opts: valid until opts is freed, its strings until its next setter
 * call. */
NC_EXPORT const nc_error *nc_options_error(const nc_options *opts);

/* The _e twins: each does what the function without _e does, and fills err. */
NC_EXPORT nc_status nc_runtime_new_e(nc_runtime **out, nc_error *err);
NC_EXPORT nc_status nc_runtime_new_with_criu_e(const char *criu_path, nc_runtime **out, nc_error *err);
NC_EXPORT nc_status nc_checkpoint_e(nc_runtime *rt, const char *container_id, pid_t pid, const char *dir,
                                    int leave_running, nc_error *err);
NC_EXPORT nc_status nc_checkpoint_ex_e(nc_runtime *rt, const char *container_id, pid_t pid, const char *dir,
                                       const nc_options *opts, nc_error *err);
NC_EXPORT nc_status nc_restore_e(nc_runtime *rt, const char *dir, pid_t *restored_pid, nc_error *err);
NC_EXPORT nc_status nc_restore_ex_e(nc_runtime *rt, const char *dir, const nc_options *opts, pid_t *restored_pid,
                                    nc_error *err);
NC_EXPORT nc_status nc_restore_pidfd_e(nc_runtime *rt, const char *dir, const nc_options *opts, pid_t *restored_pid,
                                       int *pidfd, nc_error *err);
NC_EXPORT nc_status nc_sign_e(const char *dir, nc_error *err);
NC_EXPORT nc_status nc_verify_e(const char *dir, nc_error *err);
NC_EXPORT nc_status nc_sign_progress_e(const char *dir, nc_progress_fn progress, void *user, nc_error *err);
NC_EXPORT nc_status nc_verify_progress_e(const char *dir, nc_progress_fn progress, void *user, nc_error *err);
NC_EXPORT nc_status nc_sign_ex_e(const char *dir, nc_signature_format format, nc_progress_fn progress, void *user,
                                 nc_error *err);
NC_EXPORT nc_status nc_signature_format_of_e(const char *dir, nc_signature_format *format_out, nc_error *err);
NC_EXPORT nc_status nc_read_metadata_e(const char *dir, char **json_out, nc_error *err);
NC_EXPORT nc_status nc_set_max_checkpoint_bytes_e(unsigned long long bytes, nc_error *err);
NC_EXPORT nc_status nc_key_path_e(char *buf, size_t size, nc_error *err);
NC_EXPORT nc_status nc_key_path_ex_e(char *buf, size_t size, size_t *needed, nc_error *err);
NC_EXPORT nc_status nc_keygen_e(int *created, nc_error *err);
NC_EXPORT nc_status nc_options_new_e(nc_options **out, nc_error *err);
NC_EXPORT nc_status nc_criu_version_e(const nc_runtime *rt, int *major, int *minor, int *patch, nc_error *err);
NC_EXPORT nc_status nc_criu_check_e(const nc_runtime *rt, nc_error *err);
NC_EXPORT nc_status nc_export_e(const char *dir, int fd, const nc_options *opts, nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_import_e(int fd, const char *dir, const nc_options *opts, nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_export_chain_e(const char *layer_dir, int fd, const nc_options *opts,
                                      nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_import_chain_e(int fd, const char *store_dir, const nc_options *opts, char **layer_out,
                                      nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_migrate_e(nc_runtime *rt, const char *container_id, pid_t pid, const char *work_dir,
                                 int connected_fd, const nc_options *opts, nc_migration_report *report,
                                 nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_receive_e(nc_runtime *rt, int connected_fd, const char *store_dir, const nc_options *opts,
                                 pid_t *restored_pid, char **reply_out, nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_receive_ex_e(nc_runtime *rt, int connected_fd, const char *store_dir, const nc_options *opts,
                                    pid_t *restored_pid, char **reply_out, int *source_told,
                                    nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_push_image_e(const char *dir, const char *reference, const nc_options *opts, char **digest_out,
                                    nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_pull_image_e(const char *reference, const char *dir, const nc_options *opts,
                                    nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_predump_e(nc_runtime *rt, const char *container_id, pid_t pid, const char *dir,
                                 const nc_options *opts, nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_keygen_ed25519_e(int *created, nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_public_key_e(char **text_out, char **key_id_out, nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_trust_key_e(const char *public_key_text, nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_sign_as_e(const char *dir, nc_signature_format format, nc_signing signing,
                                 nc_progress_fn progress, void *user, nc_error *err); /* Since 0.3. */
NC_EXPORT nc_status nc_signer_of_e(const char *dir, nc_signing *signing_out, char **key_id_out,
                                   nc_error *err); /* Since 0.3. */

#ifdef __cplusplus
}
#endif

#endif /* NUCLEUS_CHECKPOINT_H */
