// libsodium must be initialised once before use; every entry point that uses it calls this.
#pragma once

namespace nucleus::checkpoint {

void init_sodium();

}  // namespace nucleus::checkpoint
