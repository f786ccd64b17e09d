#include "transfer/transfer_stream.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <set>
#include <cerrno>
#include <cstring>
#include <ctime>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "checkpoint/utf8.hpp"
#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"
#include "signature/hex.hpp"

namespace nucleus::checkpoint::transfer {

namespace {

// Plain output is gathered into writes of this size; input is read ahead by at most this much.
constexpr std::size_t io_buffer_size = 256 << 10;

Error integrity(std::string message) { return Error(Status::integrity, std::move(message)); }

Error truncated(std::string_view what) {
  return integrity(fmt::format("the transfer stream ends early, in {}: it was cut off (the sender failed or was "
                               "stopped, or the file is incomplete); nothing was imported",
                               what));
}

// Waits until fd is ready for `events`: a non-blocking descriptor is waited for, not spun on. With
// a timeout (-1: none), false if it passed first.
bool wait_ready(int fd, short events, int timeout_ms = -1) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int n = ::poll(&p, 1, timeout_ms);
    if (n >= 0) return n > 0;
    if (errno != EINTR) throw system_error(Status::io, errno, "cannot wait for the transfer stream's descriptor");
  }
}

// A timeout in whole milliseconds for poll, -1 for none.
int poll_ms(std::chrono::milliseconds timeout) {
  return timeout.count() > 0 ? static_cast<int>(std::min<std::chrono::milliseconds::rep>(timeout.count(), 0x7fffffff))
                             : -1;
}

void check_zstd(std::size_t rc, std::string_view what) {
  if (ZSTD_isError(rc))
    throw integrity(fmt::format("the transfer stream's zstd compression is corrupt ({}: {}); nothing was imported",
                                what, ZSTD_getErrorName(rc)));
}

}  // namespace

void put_u64le(char* out, std::uint64_t value) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(value >> (8 * i));
}

std::uint64_t get_u64le(const char* in) {
  std::uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= std::uint64_t{static_cast<unsigned char>(in[i])} << (8 * i);
  return value;
}

std::string encode_chain_table(const std::vector<ChainEntry>& layers) {
  std::string table;
  for (const ChainEntry& layer : layers) {
    std::array<unsigned char, 32> sha{};
    if (!from_lower_hex(layer.signature_sha256, sha) || layer.name.empty() || layer.name.size() > 255)
      throw Error(Status::internal, fmt::format("chain layer '{}' cannot be put in a chain table", layer.name));
    table += static_cast<char>(layer.sent ? 1 : 0);
    table.append(reinterpret_cast<const char*>(sha.data()), sha.size());
    table += static_cast<char>(layer.name.size());
    table += layer.name;
  }
  return table;
}

std::vector<ChainEntry> decode_chain_table(std::string_view payload) {
  std::vector<ChainEntry> layers;
  std::set<std::string, std::less<>> names;
  while (!payload.empty()) {
    if (layers.size() == CheckpointChain::max_layers)
      throw integrity(fmt::format("the chain stream names more than {} layers, the most a chain may have; nothing "
                                  "was imported",
                                  CheckpointChain::max_layers));
    constexpr std::size_t head = 1 + 32 + 1;
    const std::size_t name_size = payload.size() < head ? 0 : static_cast<unsigned char>(payload[head - 1]);
    if (payload.size() < head || payload.size() - head < name_size || static_cast<unsigned char>(payload[0]) > 1)
      throw integrity("the chain stream's table of layers is malformed (an entry is cut short or its first byte is "
                      "neither 0 nor 1); nothing was imported");
    const std::string_view name = payload.substr(head, name_size);
    // The newest layer's name is the stream's word alone (each parent's, its child's signed one):
    // it names a folder made here and shown, so no control character either.
    if (!is_plain_name(name) ||
        std::any_of(name.begin(), name.end(), [](unsigned char c) { return is_ascii_control(c); }))
      throw integrity(fmt::format("the chain stream names layer '{}', which is not a plain folder name (UTF-8, 1 to "
                                  "255 bytes, no '/', NUL or control character, not '.' or '..'); nothing was "
                                  "imported",
                                  printable(name)));
    if (!names.emplace(name).second)
      throw integrity(fmt::format("the chain stream names layer '{}' twice; nothing was imported", printable(name)));
    const auto* sha = reinterpret_cast<const unsigned char*>(payload.data() + 1);
    layers.push_back({std::string(name), to_lower_hex({sha, 32}), payload[0] == 1});
    payload.remove_prefix(head + name_size);
  }
  if (layers.empty()) throw integrity("the chain stream's table names no layer; nothing was imported");
  return layers;
}

SigpipeBlock::SigpipeBlock() {
  sigset_t pipe_only, old, pending;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  sigpending(&pending);
  was_pending_ = sigismember(&pending, SIGPIPE) == 1;
  pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
  was_blocked_ = sigismember(&old, SIGPIPE) == 1;
}

SigpipeBlock::~SigpipeBlock() {
  sigset_t pipe_only, pending;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  // Ours, raised by a write to a broken pipe: taken off so that it is never delivered later.
  if (!was_pending_ && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
    const timespec now{0, 0};
    while (::sigtimedwait(&pipe_only, nullptr, &now) < 0 && errno == EINTR) {
    }
  }
  if (!was_blocked_) pthread_sigmask(SIG_UNBLOCK, &pipe_only, nullptr);
}

bool readable_by(int fd, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 60'000)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) throw system_error(Status::io, errno, "cannot wait for the other host");
  }
}

StreamWriter::StreamWriter(int fd, Compression compression, StreamKind kind, std::chrono::milliseconds stall_timeout)
    : fd_(fd), stall_ms_(poll_ms(stall_timeout)), buffer_(io_buffer_size) {
  if (compression != Compression::none && compression != Compression::zstd)
    throw Error(Status::invalid, fmt::format("unknown compression {}", static_cast<int>(compression)));
  const struct stat st = stat_fd(fd, "the transfer stream's descriptor");
  socket_ = S_ISSOCK(st.st_mode);
  char header[header_size];
  std::memcpy(header, (kind == StreamKind::chain ? chain_magic : magic).data(), magic.size());
  const std::uint32_t fields[2] = {version, static_cast<std::uint32_t>(compression)};
  for (int i = 0; i < 2; ++i)
    for (int b = 0; b < 4; ++b) header[magic.size() + 4 * i + b] = static_cast<char>(fields[i] >> (8 * b));
  write_out(header, sizeof header);
  if (compression == Compression::zstd) {
    zstd_.reset(ZSTD_createCCtx());
    if (!zstd_) throw std::bad_alloc();
    ZSTD_CCtx_setParameter(zstd_.get(), ZSTD_c_compressionLevel, 1);
    // Level 1's own window (512 KiB), set so that no other default can exceed what importers accept.
    static_assert(max_window_log >= 19);
    ZSTD_CCtx_setParameter(zstd_.get(), ZSTD_c_windowLog, 19);
    ZSTD_CCtx_setParameter(zstd_.get(), ZSTD_c_checksumFlag, 1);
    buffer_.resize(ZSTD_CStreamOutSize());
  }
}

void StreamWriter::frame(Frame type, const void* payload, std::size_t size) {
  char header[frame_header_size];
  header[0] = static_cast<char>(type);
  put_u64le(header + 1, size);
  body(header, sizeof header);
  body(payload, size);
}

void StreamWriter::finish() {
  frame(Frame::end, nullptr, 0);
  if (zstd_) {
    ZSTD_inBuffer in{nullptr, 0, 0};
    std::size_t left = 0;
    do {
      ZSTD_outBuffer out{buffer_.data(), buffer_.size(), 0};
      left = ZSTD_compressStream2(zstd_.get(), &out, &in, ZSTD_e_end);
      if (ZSTD_isError(left)) throw Error(Status::internal, fmt::format("zstd: {}", ZSTD_getErrorName(left)));
      write_out(buffer_.data(), out.pos);
    } while (left != 0);
  } else {
    flush_buffer();
  }
}

void StreamWriter::body(const void* data, std::size_t size) {
  if (size == 0) return;
  if (zstd_) {
    ZSTD_inBuffer in{data, size, 0};
    while (in.pos < in.size) {
      ZSTD_outBuffer out{buffer_.data(), buffer_.size(), 0};
      const std::size_t rc = ZSTD_compressStream2(zstd_.get(), &out, &in, ZSTD_e_continue);
      if (ZSTD_isError(rc)) throw Error(Status::internal, fmt::format("zstd: {}", ZSTD_getErrorName(rc)));
      write_out(buffer_.data(), out.pos);
    }
    return;
  }
  if (buffered_ + size > buffer_.size()) flush_buffer();
  if (size >= buffer_.size()) return write_out(data, size);  // a chunk: written as it is
  std::memcpy(buffer_.data() + buffered_, data, size);
  buffered_ += size;
}

void StreamWriter::flush_buffer() {
  write_out(buffer_.data(), buffered_);
  buffered_ = 0;
}

void StreamWriter::write_out(const void* data, std::size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    // Bounded: never blocked in send, but waiting in poll as long as the stall timeout allows.
    const bool bounded = socket_ && stall_ms_ >= 0;
    const ssize_t n = socket_ ? ::send(fd_, p, size, MSG_NOSIGNAL | (bounded ? MSG_DONTWAIT : 0)) : ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_ready(fd_, POLLOUT, bounded ? stall_ms_ : -1))
        throw Error(Status::io, fmt::format("cannot write the transfer stream: its reader took nothing for {} ms (the "
                                            "other end stalled)",
                                            stall_ms_));
      continue;
    }
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
      throw system_error(Status::io, errno,
                         "cannot write the transfer stream: its reader went away (the pipe or socket was closed at "
                         "the other end; the importer failed or was stopped)");
    if (n < 0) throw system_error(status_of_errno(errno), errno, "cannot write the transfer stream");
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

StreamReader::StreamReader(int fd, std::chrono::milliseconds stall_timeout, StreamKind kind)
    : fd_(fd), stall_ms_(poll_ms(stall_timeout)), in_(io_buffer_size) {
  char header[header_size];
  std::size_t got = 0;
  while (got < sizeof header) {
    const std::size_t n = read_in(header + got, sizeof header - got);
    if (n == 0) break;
    got += n;
  }
  if (got == 0) throw integrity("the transfer stream is empty: nothing was sent (did the export fail?)");
  const std::string_view expected = kind == StreamKind::chain ? chain_magic : magic;
  const std::string_view other = kind == StreamKind::chain ? magic : chain_magic;
  if (got >= other.size() && std::memcmp(header, other.data(), other.size()) == 0)
    throw integrity(kind == StreamKind::chain
                        ? "this transfer stream holds one checkpoint, not a chain: import it with nucleus-checkpoint "
                          "import / nc_import"
                        : "this transfer stream holds a pre-dump chain, not one checkpoint: import it with "
                          "nucleus-checkpoint import --chain / nc_import_chain");
  if (std::memcmp(header, expected.data(), std::min(got, expected.size())) != 0)
    throw integrity(fmt::format("this is not a nucleus-checkpoint transfer stream (it does not start with the "
                                "stream's magic bytes): give the output of {}",
                                kind == StreamKind::chain ? "nucleus-checkpoint export --chain / nc_export_chain"
                                                          : "nucleus-checkpoint export / nc_export"));
  if (got < sizeof header) throw truncated("its header");
  std::uint32_t fields[2] = {0, 0};
  for (int i = 0; i < 2; ++i)
    for (int b = 0; b < 4; ++b)
      fields[i] |= std::uint32_t{static_cast<unsigned char>(header[magic.size() + 4 * i + b])} << (8 * b);
  if (fields[0] != version)
    throw integrity(fmt::format("the transfer stream is in version {}, which this library does not know (it reads "
                                "version {}): import it with the version that exported it, or upgrade",
                                fields[0], version));
  if (fields[1] == static_cast<std::uint32_t>(Compression::zstd)) {
    zstd_.reset(ZSTD_createDCtx());
    if (!zstd_) throw std::bad_alloc();
    ZSTD_DCtx_setParameter(zstd_.get(), ZSTD_d_windowLogMax, max_window_log);
  } else if (fields[1] != static_cast<std::uint32_t>(Compression::none)) {
    throw integrity(fmt::format("the transfer stream's header names compression {}, which this library does not "
                                "know (0: none, 1: zstd)",
                                fields[1]));
  }
}

std::size_t StreamReader::read_in(void* data, std::size_t size) {
  for (;;) {
    if (stall_ms_ >= 0 && !wait_ready(fd_, POLLIN, stall_ms_))
      throw Error(Status::io, fmt::format("the transfer stream stalled: nothing came for {} ms; nothing was imported",
                                          stall_ms_));
    const ssize_t n = ::read(fd_, data, size);
    if (n >= 0) return static_cast<std::size_t>(n);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      wait_ready(fd_, POLLIN);
      continue;
    }
    throw system_error(status_of_errno(errno), errno, "cannot read the transfer stream");
  }
}

bool StreamReader::refill() {
  in_pos_ = 0;
  in_end_ = read_in(in_.data(), in_.size());
  return in_end_ != 0;
}

FrameHeader StreamReader::next(std::string_view expected) {
  char header[frame_header_size];
  read(header, sizeof header, expected);
  return {header[0], get_u64le(header + 1)};
}

void StreamReader::read(void* data, std::size_t size, std::string_view what) {
  auto* p = static_cast<char*>(data);
  if (!zstd_) {
    while (size > 0) {
      if (in_pos_ == in_end_) {
        // A large read goes straight to its destination; only small ones are read ahead.
        if (size >= in_.size()) {
          const std::size_t n = read_in(p, size);
          if (n == 0) throw truncated(what);
          p += n;
          size -= n;
          continue;
        }
        if (!refill()) throw truncated(what);
      }
      const std::size_t n = std::min(size, in_end_ - in_pos_);
      std::memcpy(p, in_.data() + in_pos_, n);
      in_pos_ += n;
      p += n;
      size -= n;
    }
    return;
  }
  ZSTD_outBuffer out{p, size, 0};
  while (out.pos < out.size) {
    if (zstd_frame_done_) throw truncated(what);
    if (!decompress(out, what) && !refill()) throw truncated(what);
  }
}

bool StreamReader::decompress(ZSTD_outBuffer& out, std::string_view what) {
  // Called with no input too: the decoder may hold output from input it already took.
  const std::size_t before = out.pos, taken = in_pos_;
  ZSTD_inBuffer in{in_.data(), in_end_, in_pos_};
  const std::size_t rc = ZSTD_decompressStream(zstd_.get(), &out, &in);
  in_pos_ = in.pos;
  check_zstd(rc, what);
  zstd_frame_done_ = rc == 0;
  return zstd_frame_done_ || out.pos != before || in_pos_ != taken;
}

void StreamReader::require_end(StreamEnd end) {
  constexpr std::string_view trailing =
      "the transfer stream goes on after its end frame: bytes were appended to it, or two streams were joined; "
      "nothing was imported";
  if (zstd_) {
    // The zstd frame's epilogue (its checksum) may still be unread; anything it decompresses to is
    // trailing data.
    while (!zstd_frame_done_) {
      char byte = 0;
      ZSTD_outBuffer out{&byte, 1, 0};
      if (!decompress(out, "its zstd frame's end") && !refill()) throw truncated("its zstd frame's end");
      if (out.pos != 0) throw integrity(std::string(trailing));
    }
  }
  char byte = 0;
  if (in_pos_ != in_end_ || (end == StreamEnd::descriptor && read_in(&byte, 1) != 0))
    throw integrity(std::string(trailing));
}

}  // namespace nucleus::checkpoint::transfer
