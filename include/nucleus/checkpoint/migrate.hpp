// Moving a running process tree to another host (the README's "Migration"): the source dumps the
// tree and keeps it stopped, and sends the checkpoint over a connection as a transfer stream; the
// receiver imports it (verified chunk by chunk), restores it and holds it stopped, and says
// "ready"; the source gives up its own copy and says "commit", proven by its signing key for this
// connection; the receiver lets the tree run and says "ok", and the source's copy ends. Each answer
// that ends or holds the source's copy is proven by the receiver for this connection (the HMAC
// key, or the receiver's own Ed25519 key, which the source must trust or be given); an unproven
// refusal before the commit only resumes it. The workload never runs on
// both sides: the source resumes only before its commit or on the receiver's proven refusal, and a
// source that cannot learn the outcome after its commit leaves its copy stopped (Status::unconfirmed). A cold migration: one final dump,
// no pre-dump rounds.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <nucleus/checkpoint/criu_options.hpp>
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/ed25519.hpp>
#include <nucleus/checkpoint/transfer.hpp>
#include <nucleus/checkpoint_export.h>

namespace nucleus::checkpoint {

struct MigrateOptions {
  CriuOptions criu;           // the dump's; leave_running is ignored (the tree stays stopped)
  TransferOptions transfer;   // the stream's compression
  // How long the stream may stall (unacknowledged) and, once it is sent, how long each of the
  // receiver's replies may take: "ready" (its import and restore), then "ok" after the commit.
  std::chrono::milliseconds reply_timeout{std::chrono::minutes(5)};
  // Post-copy (the README's "Post-copy"): the tree's private memory is left out of the checkpoint
  // and sent once the tree runs on the receiver, as it touches it and in the background, so the
  // downtime no longer grows with memory. Needs fs.pipe-max-size >= 4194304 on the source. Until
  // the last page is in, the tree's memory is split between the hosts: a failure then (a lost
  // connection, a page that does not authenticate) kills the receiver's copy and leaves the
  // source's stopped, with Status::unconfirmed.
  bool post_copy = false;
  // Signing with Ed25519: the receiver's own public key, the one whose proofs its answers must carry
  // (the README's "Answers"); a greeting that names another is refused before anything is dumped.
  // It need not be in this host's trust folder. Without it, any key of the trust folder may answer.
  std::optional<Ed25519PublicKey> receiver_key;
};

struct MigrationReport {
  std::chrono::milliseconds downtime{0};  // from the dump's start to the receiver's "ok": the tree runs again
  std::chrono::milliseconds dump{0};      // the dump, signature and commit on the source
  std::chrono::milliseconds transfer{0};  // the stream sent and imported (the receiver's import time)
  std::chrono::milliseconds restore{0};   // the receiver's restore
  std::uint64_t bytes_sent = 0;           // the stream's bytes the receiver acknowledged (TCP), 0 elsewhere
  unsigned rounds = 0;                    // pre-dump rounds before the final dump
  std::string rounds_reason;              // why there were that many
  pid_t restored_pid = 0;                 // the tree's root on the receiver (its PID there)
  std::string receiver_key_id;            // Ed25519: the id of the key that proved the receiver's answers
  std::string restored_dir;               // the checkpoint folder the receiver imported
  // Post-copy: from the receiver's "ok" until it had every page, and the pages sent meanwhile.
  std::chrono::milliseconds post_copy{0};
  std::uint64_t pages_sent = 0;
};

// Dumps the tree into the new checkpoint folder work_dir (signed in the manifest format), keeps it
// stopped, exports it over connected_fd (a socket connected to a receiver) and takes the replies
// above. Signing with Ed25519 (options.criu.signing), the receiver's greeting must name an Ed25519
// key of the receiver's own that this host's trust folder holds: else Status::key (it has none) or
// Status::integrity (not trusted), before anything is dumped. This host proves the key it signs
// with and dumps only on the receiver's proven "go": a receiver that refuses it (it cannot check
// that key) fails the migration with its status before anything is dumped. On the receiver's proven "ok" the
// stopped tree is killed and the report returned. Before the commit, or on the receiver's proven
// refusal after it, the tree resumes and the error (the receiver's own when it sent one) is thrown.
// After the commit, anything else (no answer in time, a reset, a garbled or unproven line) throws Status::unconfirmed and leaves the tree stopped, as does this process's
// death from the commit on: it may be running on the receiver. work_dir stays either way.
NC_EXPORT MigrationReport migrate(CriuRuntime& runtime, const ContainerInfo& container,
                                  const std::filesystem::path& work_dir, int connected_fd,
                                  const MigrateOptions& options = {});

struct ReceivedMigration {
  std::filesystem::path dir;  // the new checkpoint folder under the store
  RestoredTree tree;          // the restored root (its pidfd the caller's to close)
  std::chrono::milliseconds import_time{0}, restore_time{0};
  std::string reply;          // the last JSON line sent back
  bool source_told = true;    // false: the tree runs here, but the final "ok" could not be sent
  // Post-copy: from the "ok" until every page was in, and the pages received meanwhile.
  std::chrono::milliseconds post_copy_time{0};
  std::uint64_t pages_received = 0;
};

// Greets the source with a fresh nonce ({"nonce":"<hex>"}, and the id of this host's Ed25519 key if
// it holds one), reads the source's nonce and proof (its HMAC key or an Ed25519 key this host
// trusts, for this connection; else refused at once, nothing read further), says
// {"go":true,"proof":..}, then reads one transfer stream from
// connected_fd into a new folder under store (verified with this host's keys as it arrives,
// committed only whole), restores it with options, every task left stopped, and writes
// {"ready":true,"pid":..,"dir":..,"import_ms":..,"restore_ms":..}; then waits (30 s at most) for the
// source's {"commit":true,"proof":..}, which must prove, by the key that signed the checkpoint,
// that its signer commits it on this connection (a replayed stream never runs). Without it the
// tree is killed before it ran; with it the tree resumes and {"ok":true,...} goes back. A failure
// is answered with {"ok":false,"status":..,"status_name":..,"error":..} and thrown; an "ok" that
// cannot be sent is not (the tree runs here, the source keeps its copy stopped): source_told says so.
// Every answer once the source proved its key ("go" on) carries its proof for both nonces (the README's "Answers"):
// an Ed25519-signed checkpoint needs an Ed25519 key of this host's own (Status::key otherwise).
// stream_timeout bounds how long the source may take to start its stream (its dump) and how long
// the stream may stall: one idle connection must not hold the receiver forever.
NC_EXPORT ReceivedMigration receive_migration(CriuRuntime& runtime, int connected_fd,
                                              const std::filesystem::path& store, const CriuOptions& options = {},
                                              std::chrono::milliseconds stream_timeout = std::chrono::minutes(5));

}  // namespace nucleus::checkpoint
