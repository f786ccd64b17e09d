// The public headers compile alone as C++, the C header included.
#include <nucleus/checkpoint.h>
#include <nucleus/checkpoint/checkpoint_state.hpp>
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>
#include <nucleus/checkpoint/metadata.hpp>

int main() { return nc_status{NC_OK} == static_cast<int>(nucleus::checkpoint::Status::ok) ? 0 : 1; }
