#include "signature/sha256.hpp"

#include <sodium.h>

#include <nucleus/checkpoint/error.hpp>

#include "signature/sodium.hpp"

#if NC_HAVE_OPENSSL
#include <openssl/evp.h>
#endif

namespace nucleus::checkpoint {

struct Sha256::State {
  HmacSha256::Engine engine;
  crypto_hash_sha256_state sodium{};
#if NC_HAVE_OPENSSL
  EVP_MD_CTX* openssl = nullptr;
  ~State() { EVP_MD_CTX_free(openssl); }
#endif

  void start() {
#if NC_HAVE_OPENSSL
    if (engine == HmacSha256::Engine::openssl) {
      if (EVP_DigestInit_ex2(openssl, EVP_sha256(), nullptr) != 1) throw Error(Status::internal, "OpenSSL SHA-256 init failed");
      return;
    }
#endif
    crypto_hash_sha256_init(&sodium);
  }
};

Sha256::Sha256(HmacSha256::Engine engine) : state_(std::make_unique<State>()) {
  state_->engine = engine;
  if (engine == HmacSha256::Engine::sodium) {
    init_sodium();
  } else {
#if NC_HAVE_OPENSSL
    state_->openssl = EVP_MD_CTX_new();
    if (!state_->openssl) throw Error(Status::no_memory, "OpenSSL cannot allocate a SHA-256 context");
#else
    throw Error(Status::internal, "this build has no OpenSSL hashing engine");
#endif
  }
  state_->start();
}

Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(const void* data, std::size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
#if NC_HAVE_OPENSSL
  if (state_->engine == HmacSha256::Engine::openssl) {
    if (EVP_DigestUpdate(state_->openssl, bytes, size) != 1) throw Error(Status::internal, "OpenSSL SHA-256 update failed");
    return;
  }
#endif
  crypto_hash_sha256_update(&state_->sodium, bytes, size);
}

Sha256::Digest Sha256::final() {
  Digest digest{};
#if NC_HAVE_OPENSSL
  if (state_->engine == HmacSha256::Engine::openssl) {
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(state_->openssl, digest.data(), &len) != 1 || len != digest.size())
      throw Error(Status::internal, "OpenSSL SHA-256 final failed");
    state_->start();
    return digest;
  }
#endif
  crypto_hash_sha256_final(&state_->sodium, digest.data());
  state_->start();
  return digest;
}

}  // namespace nucleus::checkpoint
