// Moving a running process tree to another host (the README's "Migration"): the source dumps the
// tree and keeps it stopped, sends the checkpoint over a connection as a transfer stream, and waits
// for the receiver's one-line reply; the receiver imports the stream (verified chunk by chunk) and
// restores it. The tree ends on the source only once it runs on the receiver, and resumes on the
// source on any failure. A cold migration: one final dump, no pre-dump rounds.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>

#include <nucleus/checkpoint/criu_options.hpp>
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/transfer.hpp>
#include <nucleus/checkpoint_export.h>

namespace nucleus::checkpoint {

struct MigrateOptions {
  CriuOptions criu;           // the dump's; leave_running is ignored (the tree stays stopped)
  TransferOptions transfer;   // the stream's compression
  // How long the stream may stall (unacknowledged) and, once it is sent, how long the receiver's
  // reply may take: its import and its restore.
  std::chrono::milliseconds reply_timeout{std::chrono::minutes(5)};
};

struct MigrationReport {
  std::chrono::milliseconds downtime{0};  // from the dump's start to the reply: the tree is stopped throughout
  std::chrono::milliseconds dump{0};      // the dump, signature and commit on the source
  std::chrono::milliseconds transfer{0};  // the stream sent and imported (the receiver's import time)
  std::chrono::milliseconds restore{0};   // the receiver's restore
  std::uint64_t bytes_sent = 0;           // the stream's bytes the receiver acknowledged (TCP), 0 elsewhere
  unsigned rounds = 0;                    // pre-dump rounds before the final dump
  std::string rounds_reason;              // why there were that many
  pid_t restored_pid = 0;                 // the tree's root on the receiver (its PID there)
  std::string restored_dir;               // the checkpoint folder the receiver imported
};

// Dumps the tree into the new checkpoint folder work_dir (signed in the manifest format), keeps it
// stopped, exports it over connected_fd (a socket connected to a receiver), shuts the socket's
// sending side down and waits for the reply. On the receiver's "ok" the stopped tree is killed and
// the report returned; on anything else (a refusal, the receiver gone or silent, a reset) the tree
// resumes and the error (the receiver's own when it sent one) is thrown. work_dir stays either way.
NC_EXPORT MigrationReport migrate(CriuRuntime& runtime, const ContainerInfo& container,
                                  const std::filesystem::path& work_dir, int connected_fd,
                                  const MigrateOptions& options = {});

struct ReceivedMigration {
  std::filesystem::path dir;  // the new checkpoint folder under the store
  RestoredTree tree;          // the restored root (its pidfd the caller's to close)
  std::chrono::milliseconds import_time{0}, restore_time{0};
  std::string reply;          // the JSON line sent back
};

// Reads one transfer stream from connected_fd into a new folder under store (verified with this
// host's keys as it arrives, committed only whole), restores it with options, and writes the
// outcome back as one line of JSON: {"ok":true,"pid":..,"dir":..,"import_ms":..,"restore_ms":..} or
// {"ok":false,"status":..,"status_name":..,"error":..}. A failure is thrown after its reply was
// sent (or could not be).
NC_EXPORT ReceivedMigration receive_migration(CriuRuntime& runtime, int connected_fd,
                                              const std::filesystem::path& store, const CriuOptions& options = {});

}  // namespace nucleus::checkpoint
