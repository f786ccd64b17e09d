#!/usr/bin/env bash
# A consumer of the installed library: install into a temporary root, build the C demo and the
# C++ example from examples/ with nothing but `pkg-config nucleus-checkpoint` (no other package's
# .pc visible), and run them: a real checkpoint and restore through the installed .so, and a C++
# verify of the result.
# Usage: installed_test.sh BUILD_DIR SOURCE_DIR TMP_DIR
set -euo pipefail
build=$1 src=$2
source "$(dirname "$0")/private_install.sh"
private_install "$build" "$3" installed
if pkg-config --exists libsodium; then echo "libsodium.pc is visible: the check would prove nothing"; exit 1; fi
pkg-config --cflags --libs nucleus-checkpoint >/dev/null
cc -std=c11 -Wall -Werror "$src/examples/demo.c" $(pkg-config --cflags --libs nucleus-checkpoint) -o "$root/demo"
cc -std=c11 -Wall -Werror "$src/examples/counter.c" -o "$root/counter"
c++ -std=c++20 -Wall -Werror "$src/examples/verify_checkpoint.cpp" $(pkg-config --cflags --libs nucleus-checkpoint) \
  -o "$root/verify_checkpoint"
# The consumers really use the installed library, not the build tree's.
linked=$(ldd "$root/demo")
[[ $linked == *"$root/sysroot"*libnucleuscheckpoint.so.0* ]] || { echo "$linked"; exit 1; }
mkdir -m 0700 "$root/keys"
export NUCLEUS_CHECKPOINT_HMAC_KEY_FILE="$root/keys/key"
"$root/demo" "$root/counter" "$root/work"
"$root/verify_checkpoint" "$root/work/checkpoint"
echo "installed: the C and C++ consumers built with pkg-config alone, and ran"
