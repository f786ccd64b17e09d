#!/usr/bin/env bash
# The benchmark (not a timed test): sets up, builds a release build into build-bench/, then runs
# tests/bench/nc_bench, which measures the library against bare CRIU and OpenSSL side by side and
# prints a table of ratios. Needs root (CRIU). Extra arguments go to nc_bench, e.g. `--sizes 64`.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "bench: run as root (CRIU needs it)" >&2; exit 1; }
start=$SECONDS

bash scripts/setup.sh
# OpenSSL's headers: the benchmark's HMAC baseline.
if ! dpkg-query -W -f='${Status}' libssl-dev 2>/dev/null | grep -q "install ok installed"; then
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends libssl-dev >/dev/null
fi

options=(-Dbuildtype=release -Dbench=true -Dtests=false)
if [[ -f build-bench/build.ninja ]]; then
  meson configure build-bench "${options[@]}" >/dev/null
else
  meson setup build-bench "${options[@]}" >/dev/null
fi
ninja -C build-bench >/dev/null

# The command's key for the peak-RSS runs; the key store wants its folder 0700.
install -d -m 0700 build-bench/bench-key

# Every checkpoint goes to tmpfs, in one folder removed whatever happens. nc_bench records each
# counter it starts in counter.pids; a restored tree has the same PIDs, so that covers both. A
# PID is killed only while its command line still names this run's folder (not a reused PID).
work=$(mktemp -d /dev/shm/nc-bench.XXXXXX)
cleanup() {
  if [[ -f $work/counter.pids ]]; then
    while read -r pid; do
      if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "$work/"; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      fi
    done <"$work/counter.pids"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # through the EXIT trap

status=0
./build-bench/tests/bench/nc_bench --counter build-bench/examples/counter \
  --cli build-bench/examples/nucleus-checkpoint --key-file build-bench/bench-key/hmac.key \
  --work "$work" "$@" || status=$?
echo "whole run (setup, build, benchmark): $((SECONDS - start)) s"
exit $status
