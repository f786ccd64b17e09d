#!/usr/bin/env bash
# Packaging checks, each configuring and building a library-only build of its own, kept in
# BUILD_DIR/packaging/MODE so that later runs are incremental:
#   static      -Ddefault_library=static: the installed archive holds the whole core; pkg-config
#               finds nothing but nucleus-checkpoint.pc (no libsodium.pc, fmt.pc, ...), and a C
#               program linked with `pkg-config --static --libs` runs (tests/packaging_consumer.c).
#   subproject  a parent meson project with werror off and this repository, under another folder
#               name, in its subprojects/ beside nucleus-checkpoint.wrap: dependency('nucleus-checkpoint')
#               finds it, the library is built without -Werror, and the parent's C program runs.
#               Without the wrap, the dependency is not found.
#   clang       the library and the examples with clang and -Dwerror=true: any clang warning fails.
# Usage: packaging_test.sh MODE BUILD_DIR SOURCE_DIR TMP_DIR
set -euo pipefail
mode=$1 build=$(realpath "$2") src=$(realpath "$3")
mkdir -p "$4"
tmp=$(mktemp -d -p "$4" "packaging-$mode-XXXXXX")
chmod 0700 "$tmp"
trap 'rm -rf "$tmp"' EXIT
dir=$build/packaging/$mode
mkdir -p "$build/packaging"
die() { echo "packaging ($mode): $*" >&2; exit 1; }

# setup_and_build DIR OPTIONS...: configure once (again if an earlier setup failed half-way), then build.
setup_and_build() {
  local d=$1; shift
  if [[ ! -f $d/build.ninja ]]; then
    rm -rf "$d"
    meson setup "$d" "$@" >"$tmp/setup.log" 2>&1 || { cat "$tmp/setup.log"; die "meson setup failed"; }
  fi
  ninja -C "$d" >"$tmp/build.log" 2>&1 || { tail -n 60 "$tmp/build.log"; die "build failed"; }
}

case $mode in
static)
  setup_and_build "$dir" "$src" -Ddefault_library=static -Dtests=false -Dexamples=false -Dwerror=true --prefix=/usr
  meson install -C "$dir" --destdir "$tmp/sysroot" --no-rebuild --quiet >/dev/null
  mapfile -t libs < <(find "$tmp/sysroot" -name 'libnucleuscheckpoint*')
  [[ ${#libs[@]} -eq 1 && ${libs[0]} == */libnucleuscheckpoint.a ]] ||
    die "expected the static archive alone, found: ${libs[*]}"
  # The whole core is in the archive: a signing class, the key store, the image stream.
  defined=$(nm -C --defined-only "${libs[0]}" 2>/dev/null)
  for sym in 'nucleus::checkpoint::HmacTree::verify' 'nucleus::checkpoint::KeyStore::load_or_create' 'nc_sign_ex'; do
    grep -qF "$sym" <<<"$defined" || die "$sym is not in ${libs[0]}"
  done
  # pkg-config sees our .pc and nothing else, as on a machine with only the runtime packages.
  pc=$(find "$tmp/sysroot" -name nucleus-checkpoint.pc)
  mkdir "$tmp/pc" && cp "$pc" "$tmp/pc/"
  export PKG_CONFIG_LIBDIR=$tmp/pc PKG_CONFIG_PATH='' PKG_CONFIG_SYSROOT_DIR=$tmp/sysroot
  pkg-config --exists libsodium 2>/dev/null && die "libsodium.pc is visible: the check would prove nothing"
  grep -E '^Requires' "$pc" && die "nucleus-checkpoint.pc has Requires: pkg-config needs their -dev packages"
  cflags=$(pkg-config --cflags nucleus-checkpoint) || die "pkg-config --cflags failed"
  pkg-config --libs nucleus-checkpoint >/dev/null || die "pkg-config --libs failed"
  static_libs=$(pkg-config --static --libs nucleus-checkpoint) || die "pkg-config --static --libs failed"
  echo "pkg-config --cflags: $cflags"
  echo "pkg-config --static --libs: $static_libs"
  # shellcheck disable=SC2086  # pkg-config's output is a list of flags
  cc -std=c11 -Wall -Wextra -Werror "$src/tests/packaging_consumer.c" $cflags $static_libs -o "$tmp/consumer" ||
    die "a C program does not link with pkg-config --static --libs"
  ! ldd "$tmp/consumer" | grep -q nucleuscheckpoint || die "the program links a shared libnucleuscheckpoint"
  mkdir -m 0700 "$tmp/run"
  "$tmp/consumer" "$tmp/run"
  echo "static: the archive holds the core; a C program linked with pkg-config --static alone, and ran"
  ;;
subproject)
  parent=$dir/parent
  mkdir -p "$parent/subprojects"
  # Under another folder name than the project's (nucleus-checkpoint) and the wrap's default.
  ln -sfn "$src" "$parent/subprojects/nc-checkout"
  sed 's/^directory = .*/directory = nc-checkout/' "$src/nucleus-checkpoint.wrap" >"$tmp/nucleus-checkpoint.wrap"
  cmp -s "$tmp/nucleus-checkpoint.wrap" "$parent/subprojects/nucleus-checkpoint.wrap" 2>/dev/null ||
    cp "$tmp/nucleus-checkpoint.wrap" "$parent/subprojects/nucleus-checkpoint.wrap"
  cmp -s "$src/tests/packaging_consumer.c" "$parent/consumer.c" 2>/dev/null || cp "$src/tests/packaging_consumer.c" "$parent/consumer.c"
  cat >"$tmp/meson.build" <<'EOF'
project('parent', 'c', default_options : ['werror=false', 'warning_level=1', 'c_std=c11'])
executable('consumer', 'consumer.c', dependencies : dependency('nucleus-checkpoint'))
EOF
  cmp -s "$tmp/meson.build" "$parent/meson.build" 2>/dev/null || cp "$tmp/meson.build" "$parent/meson.build"
  # Without the wrap, a folder of another name is not found.
  mkdir -p "$tmp/nowrap/subprojects"
  cp "$parent/meson.build" "$parent/consumer.c" "$tmp/nowrap/"
  ln -s "$src" "$tmp/nowrap/subprojects/nc-checkout"
  if meson setup "$tmp/nowrap/b" "$tmp/nowrap" --force-fallback-for=nucleus-checkpoint >"$tmp/nowrap.log" 2>&1; then
    die "dependency('nucleus-checkpoint') was found without the wrap: the check would prove nothing"
  fi
  # The subproject even where an installed nucleus-checkpoint.pc would be found first.
  setup_and_build "$parent/b" "$parent" --force-fallback-for=nucleus-checkpoint
  werror=$(meson introspect "$parent/b" --buildoptions |
    python3 -c 'import json, sys; print([o["value"] for o in json.load(sys.stdin) if o["name"] == "nucleus-checkpoint:werror"])')
  [[ $werror == "[False]" ]] || die "the subproject's werror is $werror, not the parent's false"
  ! grep -q -- '-Werror' "$parent/b/build.ninja" || die "-Werror in the parent's build: forced on it"
  [[ -f $parent/b/subprojects/nc-checkout/capi/libnucleuscheckpoint.so ]] || die "the library was not built as a subproject"
  [[ ! -e $parent/b/subprojects/nc-checkout/examples && ! -e $parent/b/subprojects/nc-checkout/tests ]] ||
    die "a subproject build has examples or tests"
  mkdir -m 0700 "$tmp/run"
  "$parent/b/consumer" "$tmp/run"
  echo "subproject: found through nucleus-checkpoint.wrap under subprojects/nc-checkout, built without -Werror, and ran"
  ;;
clang)
  command -v clang++ >/dev/null || die "clang is not installed (scripts/setup.sh installs it)"
  CC=clang CXX=clang++ setup_and_build "$dir" "$src" -Dtests=false -Dwerror=true
  # werror turns warnings into errors; check nothing slipped past it (a warning meson passes on).
  ! grep -E 'warning:' "$tmp/build.log" || die "clang warned"
  echo "clang: $(clang++ --version | head -n1) built the library and the examples with -Werror, no warnings"
  ;;
*) die "unknown mode (static, subproject or clang)" ;;
esac
