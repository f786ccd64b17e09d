#!/usr/bin/env bash
# Records the library's ABI as the new baseline: the exported symbols and libabigail's abixml.
# Run it only for an intended ABI change, and raise the soname in meson.build if it breaks the ABI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
lib=build/capi/libnucleuscheckpoint.so
{
  echo "# Exported symbols of libnucleuscheckpoint (mangled); scripts/update-abi.sh writes this file."
  nm -D --defined-only "$lib" | awk '$2 != "A" { split($3, s, "@"); print s[1] }' | sort -u
} > capi/libnucleuscheckpoint.symbols
abidw --headers-dir include/nucleus --headers-dir build/include/nucleus --drop-private-types \
  --no-corpus-path --short-locs --no-comp-dir-path --out-file capi/libnucleuscheckpoint.abi "$lib"
echo "updated capi/libnucleuscheckpoint.symbols and capi/libnucleuscheckpoint.abi"
