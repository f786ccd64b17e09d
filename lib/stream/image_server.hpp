// Restore through a stream the library serves: CRIU (`restore --stream`) connects to
// streamer-serve.sock in the folder it is given as its images dir, asks for each image by name,
// and reads it from a pipe it passes over the socket. Every chunk is checked against the signed
// manifest before it enters the pipe, so CRIU reads no byte that is not as signed, whoever holds
// the files open for writing; and the pages are hashed while CRIU restores, not before.
#pragma once

#include <exception>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "criu/runtime_support.hpp"
#include "fs/unique_fd.hpp"
#include "signature/signed_manifest.hpp"

namespace nucleus::checkpoint {

class ImageServer {
 public:
  static constexpr const char* socket_name = "streamer-serve.sock";

  // Listens at streamer-serve.sock in a private folder of its own (dir(), CRIU's images dir) and
  // serves the manifest's files under images/ from images_fd, on threads of its own, until CRIU
  // closes the socket or the server is destroyed. The manifest must outlive the server.
  ImageServer(int images_fd, const SignedManifest& manifest);
  ~ImageServer();  // stops serving and waits for its threads
  ImageServer(const ImageServer&) = delete;
  ImageServer& operator=(const ImageServer&) = delete;

  // Once CRIU has read what it needs (at its pre-resume notification, while the tree is still
  // stopped): throws the first failure met while serving, then verifies from the folder every
  // image CRIU did not read whole, so the restore is refused unless the whole checkpoint is as
  // signed. Status::integrity for a byte that is not.
  void verify_rest();
  // The first failure met while serving, if any, rethrown (Status::integrity if a chunk differed).
  void rethrow_failure();
  // verify_rest succeeded.
  bool verified() const noexcept { return verified_; }
  int dir() const noexcept { return run_.dir.get(); }

 private:
  void accept_and_serve() noexcept;
  void serve_requests(int connection);
  void serve_file(UniqueFd pipe, const ManifestFile& file, std::string name) noexcept;
  void fail(std::exception_ptr failure) noexcept;
  void remove_folder() noexcept;

  int images_fd_;
  const SignedManifest& manifest_;
  PrivateRunDir run_;
  UniqueFd listener_, stop_read_, stop_write_;
  bool verified_ = false;

  std::mutex mutex_;  // guards what follows
  std::exception_ptr failure_;
  std::set<std::string> served_whole_;  // manifest paths
  std::vector<std::thread> file_threads_;

  std::thread acceptor_;  // last: started once everything above exists
};

}  // namespace nucleus::checkpoint
