// libsodium must be initialised once before use; every entry point that uses it calls this. And
// the memory that holds key material.
#pragma once

#include <cstddef>

namespace nucleus::checkpoint {

void init_sodium();

// Key material must never reach a core file. libsodium keeps a key's own bytes in guarded memory
// (sodium_malloc: locked, left out of core dumps, wiped when freed), but OpenSSL's HMAC copies the
// key, both engines keep the keyed hash states, in ordinary heap, and the key passes through
// vector registers that the dynamic linker saves on the stack. So while any key material lives
// (an HmacKey, a key file being read, an HmacSha256), the process is not dumpable
// (PR_SET_DUMPABLE 0: no core file at all, and no ptrace or /proc/PID/mem without
// CAP_SYS_PTRACE). The last holder to go makes it dumpable again if it was (a 2, suid_dumpable's,
// cannot be set back: it stays 0). Counted for the whole process, under a lock.
class KeyMaterialGuard {
 public:
  KeyMaterialGuard();  // throws Error(Status::internal) if the process cannot be made non-dumpable
  ~KeyMaterialGuard();
  KeyMaterialGuard(const KeyMaterialGuard&) = delete;
  KeyMaterialGuard& operator=(const KeyMaterialGuard&) = delete;
};

// size bytes of guarded memory for key material, held as a KeyMaterialGuard holds; freed (wiped)
// with free_key_bytes. Throws Error(Status::no_memory).
unsigned char* alloc_key_bytes(std::size_t size);
void free_key_bytes(unsigned char* bytes) noexcept;

}  // namespace nucleus::checkpoint
