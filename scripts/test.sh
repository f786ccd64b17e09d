#!/usr/bin/env bash
# The whole suite on a fresh machine: set up, build, run every test (the end-to-end ones with the
# real CRIU, as root), and close with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "setup failed: no working CRIU, so the end-to-end tests cannot run"; echo "0 passed, 1 failed"; exit 1; }
bash scripts/build.sh || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
meson test -C build --print-errorlogs --num-processes 2
status=$?
# The suite again under ASan/UBSan/LSan, the command line under valgrind, and the fuzzers; each records
# its results in a log that is counted below with the suite's.
bash scripts/sanitize.sh || status=1
bash scripts/valgrind.sh || status=1
bash scripts/fuzz.sh || status=1
python3 scripts/count-tests.py build/meson-logs/testlog.json build-asan/meson-logs/testlog.json \
  build/meson-logs/extra-testlog.json || status=1
exit $status
