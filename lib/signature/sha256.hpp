// Streaming SHA-256 from the same engine as HmacSha256 (OpenSSL when built in, else libsodium):
// the chunk and file digests of the chunked signature format.
#pragma once

#include <array>
#include <cstddef>
#include <memory>

#include "signature/hmac_sha256.hpp"

namespace nucleus::checkpoint {

class Sha256 {
 public:
  using Digest = std::array<unsigned char, 32>;

  explicit Sha256(HmacSha256::Engine engine = HmacSha256::default_engine());
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;

  void update(const void* data, std::size_t size);
  Digest final();  // and starts over, ready for the next message

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace nucleus::checkpoint
