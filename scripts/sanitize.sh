#!/usr/bin/env bash
# The meson suite built with AddressSanitizer, LeakSanitizer and UBSan (gcc) in build-asan/; any
# report aborts its test. Its results, build-asan/meson-logs/testlog.json, are counted by
# count-tests.py; a failed build leaves none, which count-tests.py counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=build-asan
rm -f "$dir/meson-logs/testlog.json"  # never count an earlier run's results

if [[ ! -f $dir/build.ninja ]]; then  # never set up, or a setup that failed half-way
  rm -rf "$dir"
  meson setup "$dir" -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug -Dwerror=true >/dev/null || exit 1
fi
if ! out=$(ninja -C "$dir" 2>&1); then
  echo "$out" | tail -n 30
  echo "sanitize: build failed"
  exit 1
fi
# CRIU cannot restore a process built with ASan (the restore dies, "killed by signal 11", while
# its memory, ASan's shadow included, is mapped back), so the workload the tests dump,
# examples/counter, is built plain. The library, the C ABI, the command line and the tests stay
# instrumented. Ninja keeps this newer file as it is.
cc -std=c11 -O2 -o "$dir/examples/counter" examples/counter.c || exit 1

# Left out: symbols and abi compare the exports with baselines taken from the normal build (an
# -O0 build exports more, e.g. static constexpr members); installed builds consumers with plain
# cc against the instrumented library, which ASan refuses ("ASan runtime does not come first");
# packaging_* configure builds of their own, uninstrumented, which the normal suite runs already;
# readme_snippets, go_binding and rust_binding, like installed, build consumers of the installed
# library with plain compilers (cc, cgo, rustc).
skip='^(symbols|abi|installed|packaging_.*|readme_snippets|go_binding|rust_binding)$'
mapfile -t tests < <(meson test -C "$dir" --list --no-rebuild 2>/dev/null | grep -Ev "$skip")
((${#tests[@]})) || { echo "sanitize: no tests listed"; exit 1; }
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
meson test -C "$dir" --no-rebuild --print-errorlogs --num-processes 2 --timeout-multiplier 2 "${tests[@]}"
