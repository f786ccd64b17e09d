# Sourced by the tests that consume the installed library as its users do. private_install BUILD
# TMP NAME installs BUILD into a new folder $root below TMP (removed on exit), and lets pkg-config
# see our .pc and nothing else (no libsodium.pc, fmt.pc, ...), as on a machine with only the
# runtime packages; it sets $libdir (the sysroot's) and LD_LIBRARY_PATH to it.
private_install() {
  mkdir -p "$2"
  root=$(mktemp -d -p "$2" "$3-XXXXXX")
  trap 'rm -rf "$root"' EXIT
  meson install -C "$1" --destdir "$root/sysroot" --no-rebuild --quiet >/dev/null
  local pc
  pc=$(find "$root/sysroot" -name nucleus-checkpoint.pc | head -n1)
  [[ -n $pc ]] || { echo "no nucleus-checkpoint.pc was installed"; exit 1; }
  mkdir "$root/pc" && cp "$pc" "$root/pc/"
  export PKG_CONFIG_LIBDIR="$root/pc" PKG_CONFIG_PATH='' PKG_CONFIG_SYSROOT_DIR="$root/sysroot"
  libdir=$(pkg-config --variable=libdir nucleus-checkpoint)  # sysroot included
  export LD_LIBRARY_PATH=$libdir
}
