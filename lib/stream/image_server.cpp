#include "stream/image_server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <deque>
#include <future>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "checkpoint/utf8.hpp"
#include "fs/fs_util.hpp"
#include "signature/chunked_digest.hpp"
#include "img_streamer.pb-c.h"

namespace nucleus::checkpoint {

namespace {

constexpr std::string_view images_prefix = "images/";
// CRIU's messages name one image: a few dozen bytes.
constexpr std::uint32_t max_request = 4096;
// As large as an unprivileged pipe may be here: fewer wake-ups on both sides.
constexpr int pipe_size = 1 << 20;
// Chunks in flight per image: one being handed to CRIU while the next ones are read and checked,
// one at a time and in order (a chain of loads): one core hashes ahead while CRIU's restored task
// copies its pages on the other; loads side by side only took CPU from CRIU (measured at 1 GiB).
// Each costs a 4 MiB buffer.
constexpr std::size_t chunks_ahead = 4;

Error stream_error(std::string_view what) {
  return Error(Status::io, fmt::format("CRIU's image stream: {}", what));
}

// A write into a pipe CRIU has closed must fail with EPIPE, not kill the caller's process.
void block_sigpipe() noexcept {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void discard_pending_sigpipe() noexcept {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  const struct timespec now {};
  while (sigtimedwait(&set, nullptr, &now) == SIGPIPE) {
  }
}

// Waits until fd is readable; false if the server is asked to stop first.
bool wait_readable(int fd, int stop_fd) {
  std::array<pollfd, 2> fds{{{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}}};
  for (;;) {
    const int n = ::poll(fds.data(), fds.size(), -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::io, errno, "CRIU's image stream: poll");
    if (fds[1].revents) return false;
    if (fds[0].revents) return true;
  }
}

// Reads exactly size bytes; false on end of stream before the first byte, or if the server is
// asked to stop.
bool read_exact(int fd, int stop_fd, void* data, std::size_t size) {
  std::size_t got = 0;
  while (got < size) {
    if (!wait_readable(fd, stop_fd)) return false;
    const ssize_t n = ::read(fd, static_cast<char*>(data) + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::io, errno, "CRIU's image stream: read");
    if (n == 0) {
      if (got == 0) return false;
      throw stream_error("CRIU closed the connection in the middle of a request");
    }
    got += static_cast<std::size_t>(n);
  }
  return true;
}

// The descriptor CRIU passes with one byte of data (its pipe's write end); none if CRIU went away.
UniqueFd receive_fd(int socket, int stop_fd) {
  if (!wait_readable(socket, stop_fd)) return UniqueFd();
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) throw system_error(Status::io, errno, "CRIU's image stream: receiving the image's pipe");
  if (n == 0) return UniqueFd();
  const cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (n != 1 || !c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int)))
    throw stream_error("CRIU sent no pipe for the image it asked for");
  int fd = -1;
  std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return UniqueFd(fd);
}

// False if CRIU went away.
bool send_reply(int socket, bool exists) {
  ImgStreamerReplyEntry reply = IMG_STREAMER_REPLY_ENTRY__INIT;
  reply.exists = exists;
  std::array<std::uint8_t, 16> message{};
  const auto size = static_cast<std::uint32_t>(img_streamer_reply_entry__pack(&reply, message.data() + 4));
  std::memcpy(message.data(), &size, 4);  // little-endian, as CRIU frames its messages on x86 and arm
  const std::size_t total = 4 + size;
  ssize_t n;
  do n = ::send(socket, message.data(), total, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) return false;
  if (n < 0) throw system_error(Status::io, errno, "CRIU's image stream: answering CRIU");
  if (static_cast<std::size_t>(n) != total) throw stream_error("CRIU's socket took part of an answer");
  return true;
}

// The name of an image directly in the images folder, as CRIU asks for it.
bool plain_image_name(std::string_view name) {
  return !name.empty() && name.size() <= 255 && name != "." && name != ".." && name.find('/') == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

// A chunk's buffer of its own mapping: once vmspliced into CRIU's pipe, its pages are the pipe's
// until CRIU reads them, and unmapping never hands them to anyone else meanwhile (memory from
// malloc could be reused, and rewritten, while still in the pipe).
class ChunkBuffer {
 public:
  ChunkBuffer() = default;
  ChunkBuffer(const ChunkBuffer&) = delete;
  ChunkBuffer& operator=(const ChunkBuffer&) = delete;
  ~ChunkBuffer() {
    if (data_) ::munmap(data_, capacity_);
  }
  unsigned char* reserve(std::size_t size) {
    if (size > capacity_) {
      if (data_) ::munmap(data_, capacity_);
      data_ = nullptr;
      void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw system_error(Status::io, errno, "CRIU's image stream: a chunk buffer");
      data_ = static_cast<unsigned char*>(p);
      capacity_ = size;
    }
    return data_;
  }
  const unsigned char* data() const noexcept { return data_; }

 private:
  unsigned char* data_ = nullptr;
  std::size_t capacity_ = 0;
};

// Hands bytes to CRIU's pipe (non-blocking, so that the server can always stop): spliced, the
// pipe taking the buffer's pages, or copied. False if CRIU closed it (it read what it needed) or
// the server is stopping.
bool write_to_criu(int pipe, int stop_fd, const unsigned char* data, std::size_t size, bool splice) {
  while (size > 0) {
    iovec iov{const_cast<unsigned char*>(data), size};
    const ssize_t n = splice ? ::vmsplice(pipe, &iov, 1, 0) : ::write(pipe, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EPIPE) {
      discard_pending_sigpipe();
      return false;
    }
    if (n < 0 && errno == EAGAIN) {
      std::array<pollfd, 2> fds{{{pipe, POLLOUT, 0}, {stop_fd, POLLIN, 0}}};
      if (::poll(fds.data(), fds.size(), -1) < 0 && errno != EINTR)
        throw system_error(Status::io, errno, "CRIU's image stream: poll");
      if (fds[1].revents) return false;
      continue;
    }
    if (n < 0) throw system_error(Status::io, errno, "CRIU's image stream: writing an image");
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

UniqueFd open_image(int images_fd, const std::string& name, const ManifestFile& file) {
  UniqueFd fd = open_beneath(images_fd, name, "checkpoint file");
  const struct stat st = stat_fd(fd.get(), file.path);
  if (!S_ISREG(st.st_mode) || static_cast<std::uint64_t>(st.st_size) != file.size)
    throw Error(Status::integrity, fmt::format("checkpoint file '{}' changed since it was verified: it is no longer the "
                                               "{}-byte file that was signed", to_valid_utf8(file.path), file.size));
  return fd;
}

}  // namespace

ImageServer::ImageServer(int images_fd, const SignedManifest& manifest)
    : images_fd_(images_fd), manifest_(manifest),
      run_(make_private_run_dir(run_dir, "stream", "image stream folder")) {
  const std::string socket_path = fmt::format("{}/{}", run_.path(), socket_name);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path)
    throw stream_error(fmt::format("the socket path {} is too long", socket_path));
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  try {
    listener_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener_) throw system_error(Status::io, errno, "CRIU's image stream: socket");
    // The folder is the library's own (0700, root's): only CRIU, as root, can connect.
    if (::bind(listener_.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listener_.get(), 1) != 0)
      throw system_error(Status::io, errno, fmt::format("CRIU's image stream: cannot listen at {}", socket_path));
    int stop[2];
    if (::pipe2(stop, O_CLOEXEC) != 0) throw system_error(Status::io, errno, "CRIU's image stream: pipe");
    stop_read_.reset(stop[0]);
    stop_write_.reset(stop[1]);
  } catch (...) {
    remove_folder();
    throw;
  }
  acceptor_ = std::thread(&ImageServer::accept_and_serve, this);
}

ImageServer::~ImageServer() {
  // CRIU has ended by now; whatever still holds its end of the socket or a pipe, every thread of
  // the server waits on the stop pipe as well.
  (void)!::write(stop_write_.get(), "x", 1);
  acceptor_.join();
  for (auto& t : file_threads_) t.join();
  remove_folder();
}

void ImageServer::remove_folder() noexcept {
  // CRIU writes its restore statistics into its images dir, which is this folder.
  for (const char* name : {socket_name, "stats-restore"}) ::unlinkat(run_.dir.get(), name, 0);
  ::unlinkat(run_.parent.get(), run_.name.c_str(), AT_REMOVEDIR);
}

void ImageServer::fail(std::exception_ptr failure) noexcept {
  const std::lock_guard lock(mutex_);
  if (!failure_) failure_ = std::move(failure);
}

void ImageServer::accept_and_serve() noexcept {
  block_sigpipe();
  try {
    if (!wait_readable(listener_.get(), stop_read_.get())) return;
    UniqueFd connection(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!connection) throw system_error(Status::io, errno, "CRIU's image stream: accept");
    serve_requests(connection.get());
  } catch (...) {
    fail(std::current_exception());
  }
}

void ImageServer::serve_requests(int connection) {
  std::vector<std::uint8_t> request;
  for (;;) {
    std::uint32_t size = 0;
    if (!read_exact(connection, stop_read_.get(), &size, sizeof size)) return;  // CRIU is done with images
    if (size > max_request) throw stream_error(fmt::format("a request of {} bytes is not one of CRIU's", size));
    request.resize(size);
    if (!read_exact(connection, stop_read_.get(), request.data(), size)) return;
    ImgStreamerRequestEntry* entry = img_streamer_request_entry__unpack(nullptr, size, request.data());
    if (!entry) throw stream_error("a request CRIU sent is not an image request");
    const std::string name = entry->filename;
    img_streamer_request_entry__free_unpacked(entry, nullptr);
    // Only what was signed exists; CRIU asks for optional images and takes "no" for them.
    const ManifestFile* file =
        plain_image_name(name) ? manifest_.find(std::string(images_prefix) + name) : nullptr;
    if (!send_reply(connection, file != nullptr)) return;
    if (!file) continue;
    UniqueFd pipe = receive_fd(connection, stop_read_.get());
    if (!pipe) return;
    const std::lock_guard lock(mutex_);
    file_threads_.emplace_back(&ImageServer::serve_file, this, std::move(pipe), std::cref(*file), name);
  }
}

void ImageServer::serve_file(UniqueFd pipe, const ManifestFile& file, std::string name) noexcept {
  block_sigpipe();
  try {
    const UniqueFd fd = open_image(images_fd_, name, file);
    (void)::fcntl(pipe.get(), F_SETPIPE_SZ, pipe_size);  // a smaller pipe only costs wake-ups
    // Only this end's description: CRIU closed its copy of the write end once it passed it.
    if (::fcntl(pipe.get(), F_SETFL, O_WRONLY | O_NONBLOCK) != 0)
      throw system_error(Status::io, errno, "CRIU's image stream: a pipe");
    const std::uint64_t chunk = manifest_.chunk_size();
    const std::uint64_t count = file.chunks.size();
    // Chunk i is loaded into buffers[i % buffers.size()] while at most chunks_ahead - 1 chunks
    // before it wait or are being handed over: so the buffer it reuses held chunk i - chunks_ahead - 1,
    // and since a whole chunk (i - 1) went into the pipe after it, no byte of it can still be
    // there, provided the pipe holds no more than a chunk. Otherwise the bytes are copied.
    std::array<ChunkBuffer, chunks_ahead + 1> buffers;
    const int pipe_capacity = ::fcntl(pipe.get(), F_GETPIPE_SZ);
    const bool splice = pipe_capacity > 0 && static_cast<std::uint64_t>(pipe_capacity) <= chunk;
    // Reads chunk `index` into `buffer` and checks it against the signature: only then may CRIU
    // have it. A file that shrank fails the check like one whose bytes changed.
    const auto load = [&](std::uint64_t index, ChunkBuffer& buffer) {
      const std::uint64_t offset = index * chunk;
      const auto size = static_cast<std::size_t>(std::min(chunk, file.size - offset));
      unsigned char* data = buffer.reserve(size);
      const std::size_t got = pread_full(fd.get(), data, size, offset, file.path);
      check_chunk(file, chunk, index, data, got);
      return got;
    };
    std::deque<std::shared_future<std::size_t>> ahead;  // chunks [written, next), in order
    std::uint64_t next = 0;
    for (std::uint64_t written = 0; written < count; ++written) {
      for (; next < count && ahead.size() < chunks_ahead; ++next) {
        // Each load starts once the one before it is done.
        std::shared_future<std::size_t> before = ahead.empty() ? std::shared_future<std::size_t>() : ahead.back();
        ahead.push_back(std::async(std::launch::async, [&load, &buffers, before, next] {
          if (before.valid()) before.wait();
          return load(next, buffers[next % buffers.size()]);
        }).share());
      }
      const std::size_t size = ahead.front().get();
      ahead.pop_front();
      // CRIU may stop reading an image once it has what it needs; verify_rest checks the rest.
      if (!write_to_criu(pipe.get(), stop_read_.get(), buffers[written % buffers.size()].data(), size, splice)) return;
    }
    if (static_cast<std::uint64_t>(stat_fd(fd.get(), file.path).st_size) != file.size)
      throw Error(Status::integrity, fmt::format("checkpoint file '{}' changed while it was read: it is no longer the "
                                                 "{}-byte file that was signed", to_valid_utf8(file.path), file.size));
    const std::lock_guard lock(mutex_);
    served_whole_.insert(file.path);
  } catch (...) {
    fail(std::current_exception());
  }
}

void ImageServer::rethrow_failure() {
  std::exception_ptr failure;
  {
    const std::lock_guard lock(mutex_);
    failure = failure_;
  }
  if (failure) std::rethrow_exception(failure);
}

void ImageServer::verify_rest() {
  try {
    rethrow_failure();
    std::vector<const ManifestFile*> rest;
    {
      const std::lock_guard lock(mutex_);
      for (const auto& file : manifest_.files())
        if (std::string_view(file.path).starts_with(images_prefix) && !served_whole_.contains(file.path))
          rest.push_back(&file);
    }
    for (const ManifestFile* file : rest) {
      const UniqueFd fd = open_image(images_fd_, file->path.substr(images_prefix.size()), *file);
      verify_file(fd.get(), *file, manifest_.chunk_size(), hash_threads());
    }
  } catch (...) {
    fail(std::current_exception());
    throw;
  }
  verified_ = true;
}

}  // namespace nucleus::checkpoint
