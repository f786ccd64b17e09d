#include "signature/hmac_sha256.hpp"

#include <sodium.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "signature/hex.hpp"
#include "signature/sodium.hpp"

#if NC_HAVE_OPENSSL
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#endif

namespace nucleus::checkpoint {

struct HmacSha256::State {
  // First, so that it goes last: both engines' states are keyed, OpenSSL's hold the key itself.
  KeyMaterialGuard key_material;
  Engine engine;
  crypto_auth_hmacsha256_state sodium{};
#if NC_HAVE_OPENSSL
  EVP_MAC_CTX* openssl = nullptr;
#endif
  ~State() {
    sodium_memzero(&sodium, sizeof sodium);
#if NC_HAVE_OPENSSL
    EVP_MAC_CTX_free(openssl);  // clears the key material
#endif
  }
};

bool HmacSha256::available(Engine engine) noexcept { return engine == Engine::sodium || NC_HAVE_OPENSSL; }

std::string_view HmacSha256::name(Engine engine) noexcept { return engine == Engine::openssl ? "openssl" : "libsodium"; }

HmacSha256::Engine HmacSha256::default_engine() {
  if (const char* forced = std::getenv("NUCLEUS_CHECKPOINT_HMAC_ENGINE"); forced && std::string_view(forced) == "sodium")
    return Engine::sodium;
  return available(Engine::openssl) ? Engine::openssl : Engine::sodium;
}

HmacSha256::HmacSha256(std::span<const unsigned char> key, Engine engine) : state_(std::make_unique<State>()) {
  state_->engine = engine;
  if (engine == Engine::sodium) {
    init_sodium();
    crypto_auth_hmacsha256_init(&state_->sodium, key.data(), key.size());
    return;
  }
#if NC_HAVE_OPENSSL
  EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (mac) state_->openssl = EVP_MAC_CTX_new(mac);
  EVP_MAC_free(mac);
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end()};
  if (!state_->openssl || EVP_MAC_init(state_->openssl, key.data(), key.size(), params) != 1)
    throw Error(Status::internal, "OpenSSL cannot set up HMAC-SHA256 (set NUCLEUS_CHECKPOINT_HMAC_ENGINE=sodium to "
                                  "use libsodium instead)");
#else
  throw Error(Status::internal, "this build has no OpenSSL HMAC engine");
#endif
}

HmacSha256::~HmacSha256() = default;

void HmacSha256::update(const void* data, std::size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
#if NC_HAVE_OPENSSL
  if (state_->engine == Engine::openssl) {
    if (EVP_MAC_update(state_->openssl, bytes, size) != 1) throw Error(Status::internal, "OpenSSL HMAC update failed");
    return;
  }
#endif
  crypto_auth_hmacsha256_update(&state_->sodium, bytes, size);
}

void HmacSha256::update_u64le(std::uint64_t value) {
  std::array<unsigned char, 8> le{};
  for (std::size_t i = 0; i < le.size(); ++i) le[i] = static_cast<unsigned char>(value >> (8 * i));
  update(le.data(), le.size());
}

std::string HmacSha256::to_hex(const Mac& mac) { return to_lower_hex(mac); }

std::optional<HmacSha256::Mac> HmacSha256::from_hex(std::string_view hex) {
  return array_from_lower_hex<std::tuple_size_v<Mac>>(hex);
}

HmacSha256::Mac HmacSha256::final() {
  Mac mac{};
#if NC_HAVE_OPENSSL
  if (state_->engine == Engine::openssl) {
    std::size_t len = 0;
    if (EVP_MAC_final(state_->openssl, mac.data(), &len, mac.size()) != 1 || len != mac.size())
      throw Error(Status::internal, "OpenSSL HMAC final failed");
    return mac;
  }
#endif
  crypto_auth_hmacsha256_final(&state_->sodium, mac.data());
  return mac;
}

}  // namespace nucleus::checkpoint
