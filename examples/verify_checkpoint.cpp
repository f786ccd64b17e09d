// The C++ API from outside: verify a checkpoint folder with the key store's key, then print
// its metadata (read only after it verifies).
//
//   verify_checkpoint DIR
#include <fcntl.h>
#include <unistd.h>

#include <iostream>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>
#include <nucleus/checkpoint/metadata.hpp>

namespace nc = nucleus::checkpoint;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " DIR\n";
    return 64;
  }
  try {
    const int dir = ::open(argv[1], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dir < 0) throw nc::Error(nc::Status::not_found, std::string("cannot open ") + argv[1]);
    nc::HmacTree::verify(dir, nc::KeyStore());
    const auto metadata = nc::CheckpointMetadata::load(dir);
    ::close(dir);
    std::cout << argv[1] << ": signature valid; container " << metadata.container_id << ", originally PID "
              << metadata.original_pid << ", written by libnucleuscheckpoint " << metadata.version << "\n";
    return 0;
  } catch (const nc::Error& e) {
    std::cerr << argv[1] << ": " << nc::status_name(e.status()) << ": " << e.what() << "\n";
    return static_cast<int>(e.status());
  }
}
