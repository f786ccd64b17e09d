#!/usr/bin/env bash
# The library's ABI (functions, and every type they reach) equals the checked-in baseline, by
# libabigail's abidiff. Usage: check_abi.sh BASELINE.abi LIBRARY HEADERS_DIR
set -uo pipefail
abidiff --no-added-syms --headers-dir2 "$3" "$1" "$2"
status=$?
if ((status != 0)); then
  echo "the ABI changed against $1 (abidiff status $status)."
  echo "an intended compatible change: run scripts/update-abi.sh and commit; an incompatible one also raises the soname"
fi
exit $status
