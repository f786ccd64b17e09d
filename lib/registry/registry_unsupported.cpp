// push_image and pull_image in a library built without libcurl or libarchive (meson's registry
// feature): they say so, with what to install.
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/registry.hpp>

namespace nucleus::checkpoint {

namespace {

[[noreturn]] void unsupported() {
  throw Error(Status::unsupported,
              "this build of libnucleuscheckpoint has no registry support: rebuild it with "
              "libcurl and libarchive (Debian: libcurl4-openssl-dev libarchive-dev) and the "
              "meson option -Dregistry=enabled or auto");
}

}  // namespace

PushedImage push_image(const std::filesystem::path&, const std::string&, const RegistryOptions&, const KeyStore&) {
  unsupported();
}

void pull_image(const std::string&, const std::filesystem::path&, const RegistryOptions&, const KeyStore&) {
  unsupported();
}

void pull_image(const std::string&, const std::filesystem::path&, const RegistryOptions&, const HmacKey&) {
  unsupported();
}

}  // namespace nucleus::checkpoint
