// The transfer stream's framing (the README's "Transfer stream"): a 16-byte header, then a body,
// compressed with zstd or not, of frames: a type byte, the payload's length as a little-endian
// u64, the payload. Both ends work on bounded buffers: a frame's payload is read only once its
// type and length have been checked against what may come next.
#pragma once

#include <zstd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nucleus/checkpoint/chain.hpp>
#include <nucleus/checkpoint/transfer.hpp>

#include "signature/chunked_signature.hpp"

namespace nucleus::checkpoint::transfer {

// "\x89" catches a 7-bit channel, "\n" a newline conversion, as in PNG's signature.
inline constexpr std::string_view magic{"\x89NCXFER\n", 8};
// A chain stream's (the README's "Chain stream"): a chain table, then each layer's frames as a
// checkpoint stream's body holds them. Its own magic, so neither importer takes the other's stream.
inline constexpr std::string_view chain_magic{"\x89NCXCHN\n", 8};
inline constexpr std::uint32_t version = 1;
inline constexpr std::size_t header_size = 16;  // magic, version (u32 LE), compression (u32 LE)
inline constexpr std::size_t frame_header_size = 9;
// Compressed streams use at most this window: the decompressor refuses larger ones, so an
// importer's memory stays bounded (8 MiB).
inline constexpr int max_window_log = 23;

enum class Frame : char {
  signature = 'S',     // checkpoint.hmac's text, first
  folder = 'D',        // a folder's relative path
  file = 'F',          // a file's size (u64 LE), then its relative path
  listing_end = 'L',   // the listing is complete: the importer authenticates it here
  chunk = 'C',         // the next chunk of the next file with bytes, in walk order
  end = 'E',           // the stream is complete; nothing may follow
  chain = 'H',         // a chain stream's table of its layers, first
};

// What a stream carries, told by its magic: one checkpoint, or a pre-dump chain's layers.
enum class StreamKind { checkpoint, chain };

// What ends a stream: its end frame and its descriptor's end (a file, a pipe), or its end frame
// alone (a connection that goes on: a migration's confirmation follows it).
enum class StreamEnd { descriptor, frame };

struct FrameHeader {
  char type = 0;
  std::uint64_t length = 0;
};

// Writes a stream's header, then frames, to a descriptor: all of each write (short writes and
// EINTR retried, a non-blocking descriptor waited for), with send(MSG_NOSIGNAL) on a socket.
class StreamWriter {
 public:
  // With a stall timeout, on a socket, a write the reader leaves waiting that long fails
  // (Status::io): TCP_USER_TIMEOUT bounds TCP alone, not a Unix socket or a tunnel's.
  StreamWriter(int fd, Compression compression, StreamKind kind = StreamKind::checkpoint,
               std::chrono::milliseconds stall_timeout = {});
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  void frame(Frame type, const void* payload, std::size_t size);
  // Writes the end frame and flushes everything (ends the zstd frame).
  void finish();

 private:
  void body(const void* data, std::size_t size);  // compressed or buffered
  void flush_buffer();
  void write_out(const void* data, std::size_t size);

  int fd_;
  bool socket_;
  int stall_ms_;  // -1: none
  std::vector<char> buffer_;  // plain: frames gathered into larger writes; zstd: compressed output
  std::size_t buffered_ = 0;
  struct CctxFree {
    void operator()(ZSTD_CCtx* c) const noexcept { ZSTD_freeCCtx(c); }
  };
  std::unique_ptr<ZSTD_CCtx, CctxFree> zstd_;
};

// Reads a stream's header, then its body exactly as asked, never more than a bounded read-ahead.
// Every failure is Status::integrity (a truncated, corrupt or overlong stream) or Status::io (the
// descriptor failed), with a message saying which.
class StreamReader {
 public:
  // Reads and checks the header, which must be of a stream of `kind`. With a stall timeout, a read
  // that waits longer fails (Status::io).
  explicit StreamReader(int fd, std::chrono::milliseconds stall_timeout = {},
                        StreamKind kind = StreamKind::checkpoint);
  StreamReader(const StreamReader&) = delete;
  StreamReader& operator=(const StreamReader&) = delete;

  FrameHeader next(std::string_view expected);  // the next frame's header; `expected` names what should come
  void read(void* data, std::size_t size, std::string_view what);
  // Status::integrity unless the body ends here, and with StreamEnd::descriptor the descriptor too.
  void require_end(StreamEnd end);

 private:
  std::size_t read_in(void* data, std::size_t size);  // raw bytes from fd; 0 at its end
  bool refill();                                       // the input buffer, from fd; false at its end
  // One step of the zstd decoder into out; false if it needs more input to go on.
  bool decompress(ZSTD_outBuffer& out, std::string_view what);

  int fd_;
  int stall_ms_;  // -1: none
  std::vector<char> in_;
  std::size_t in_pos_ = 0, in_end_ = 0;
  struct DctxFree {
    void operator()(ZSTD_DCtx* d) const noexcept { ZSTD_freeDCtx(d); }
  };
  std::unique_ptr<ZSTD_DCtx, DctxFree> zstd_;
  bool zstd_frame_done_ = false;
};

// Blocks SIGPIPE in the calling thread while it lives, so that writing to a pipe whose reader went
// away fails with EPIPE instead of killing the process; a SIGPIPE raised meanwhile is taken off the
// thread before the mask is restored. The process's dispositions are left alone.
class SigpipeBlock {
 public:
  SigpipeBlock();
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;
  ~SigpipeBlock();

 private:
  bool was_pending_ = false, was_blocked_ = false;
};

// Waits until fd has something to read (or its end); false once `deadline` passes first.
bool readable_by(int fd, std::chrono::steady_clock::time_point deadline);

// export_checkpoint (nucleus/checkpoint/transfer.hpp) to a socket whose reader may stall: see StreamWriter.
void export_checkpoint(const std::filesystem::path& dir, int fd, const TransferOptions& options,
                       std::chrono::milliseconds stall_timeout);

// import_checkpoint (nucleus/checkpoint/transfer.hpp) of a stream that ends as `end` says; returns
// the text of the checkpoint's signature.
std::string import_checkpoint(int fd, const std::filesystem::path& dir, const VerifyingKeys& keys, StreamEnd end,
                              std::chrono::milliseconds stall_timeout = {});

// One layer in a chain stream's table: its folder name, the SHA-256 (lowercase hex) of its
// checkpoint.hmac, and whether its frames follow (or the receiver holds it already).
struct ChainEntry {
  std::string name;
  std::string signature_sha256;
  bool sent = true;
  bool operator==(const ChainEntry&) const = default;
};
// A table entry: whether sent (1 byte), the SHA-256 (32 bytes), the name's length (1 byte), the name.
inline constexpr std::size_t max_chain_entry_size = 1 + 32 + 1 + 255;
inline constexpr std::size_t max_chain_table_size = CheckpointChain::max_layers * max_chain_entry_size;
// The chain frame's payload: the layers, oldest first.
std::string encode_chain_table(const std::vector<ChainEntry>& layers);
// Status::integrity unless `payload` is 1 to CheckpointChain::max_layers entries, each sent or not,
// each name a plain folder name (UTF-8, no '/', not '.' or '..') met once.
std::vector<ChainEntry> decode_chain_table(std::string_view payload);

void put_u64le(char* out, std::uint64_t value);
std::uint64_t get_u64le(const char* in);

}  // namespace nucleus::checkpoint::transfer
