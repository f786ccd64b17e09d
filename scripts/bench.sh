#!/usr/bin/env bash
# The benchmark (not a timed test): sets up, builds a release build into build-bench/, then runs
# tests/bench/nc_bench, which measures the library against bare CRIU and OpenSSL side by side and
# prints a table of hashing ratios; a table of dumps and restores at each size, of a tree whose
# memory is shared and of one whose is not (the library's streamed restore, its restore from the
# verified folder, bare `criu dump` / `criu restore -d`, the command's peak RSS); then a table of
# container dumps and restores (the library, bare CRIU with the library's own arguments, runc); then
# the transfer rows: `export | import` against `tar | tar` (with zstd and without), and migrating a
# 1 GiB process with `migrate` / `receive` (cold, and post-copy) against a cold move with bare CRIU
# and tar.
# Needs root (CRIU). Extra arguments go to nc_bench, e.g. `--sizes 64` (or `--sizes 64,256`),
# `--containers no` (skip the containers) or `--containers only` (about a minute), `--transfer no`
# or `--transfer only` (2–3 minutes); two sections "only" run both alone.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "bench: run as root (CRIU needs it)" >&2; exit 1; }
start=$SECONDS

bash scripts/setup.sh
# OpenSSL's headers: the benchmark's HMAC baseline.
if ! dpkg-query -W -f='${Status}' libssl-dev 2>/dev/null | grep -q "install ok installed"; then
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends libssl-dev >/dev/null
fi

options=(-Dbuildtype=release -Dbench=true -Dtests=false -Dwerror=true)
if [[ -f build-bench/build.ninja ]]; then
  meson configure build-bench "${options[@]}" >/dev/null
else
  meson setup build-bench "${options[@]}" >/dev/null
fi
# Quiet unless the build fails (ninja prints its errors on stdout).
if ! build_log=$(ninja -C build-bench 2>&1); then
  echo "$build_log" >&2
  exit 1
fi

# The command's key for the peak-RSS runs; the key store wants its folder 0700.
install -d -m 0700 build-bench/bench-key

# Every checkpoint goes to tmpfs, in one folder removed whatever happens. nc_bench records each
# counter (and container launcher) it starts in counter.pids; a restored tree has the same PIDs,
# so that covers both. A PID is killed only while its command line still names this run's folder
# (not a reused PID). The migration rows' workload runs in a PID namespace of its own, restored
# under new host PIDs: so, after those, every process whose command line names this run's folder
# (a restored workload, a receiver or migration under way) is killed too.
# Containers: every container nc_bench starts, and every copy of one CRIU or runc restores, lives
# in cgroups named after this run's folder (the launcher's cgroup v2 folder; runc's and what CRIU
# recreates of them). So runc's container is deleted, then every process in such a cgroup is
# killed (cgroup.kill, and SIGKILL to each one /proc lists in one), then the cgroups are removed.
# (Not by /proc/PID/root: from the host a container's root reads as "/".) Their network namespaces
# are their own and go with their last process.
work=$(mktemp -d /dev/shm/nc-bench.XXXXXX)
tag=${work##*/}
kill_containers() {
  local cgroup proc
  for cgroup in "$@"; do  # a frozen task dies only once thawed
    if [[ -f $cgroup/freezer.state ]]; then echo THAWED >"$cgroup/freezer.state" 2>/dev/null || true; fi
    if [[ -f $cgroup/cgroup.freeze ]]; then echo 0 >"$cgroup/cgroup.freeze" 2>/dev/null || true; fi
    if [[ -f $cgroup/cgroup.kill ]]; then echo 1 >"$cgroup/cgroup.kill" 2>/dev/null || true; fi
  done
  for proc in /proc/[0-9]*; do
    if grep -qF "/$tag-" "$proc/cgroup" 2>/dev/null; then kill -KILL "${proc#/proc/}" 2>/dev/null || true; fi
  done
}
cleanup() {
  if [[ -f $work/counter.pids ]]; then
    while read -r pid; do
      if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "$work/"; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      fi
    done <"$work/counter.pids"
  fi
  local proc
  for proc in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$proc/cmdline"; } 2>/dev/null | grep -qF "$work/"; then
      kill -KILL "${proc#/proc/}" 2>/dev/null || true
    fi
  done
  if [[ -d $work/containers/runc/runc-state ]]; then
    timeout 30 runc --root "$work/containers/runc/runc-state" delete -f "$tag-runc" >/dev/null 2>&1 || true
  fi
  local try cgroups
  for try in {1..20}; do
    # Deepest first; a cgroup empties a moment after its last process is killed.
    mapfile -t cgroups < <(find /sys/fs/cgroup -maxdepth 6 -depth -type d -name "$tag-*" 2>/dev/null)
    kill_containers "${cgroups[@]}"
    ((${#cgroups[@]})) || break
    rmdir "${cgroups[@]}" 2>/dev/null || sleep 0.5
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # through the EXIT trap

# `migrate --post-copy`: CRIU's page server sets its pipes to 4 MiB, beyond this kernel's default
# limit for a process without CAP_SYS_RESOURCE.
if (($(cat /proc/sys/fs/pipe-max-size) < 4194304)); then
  echo "bench: raising fs.pipe-max-size to 4194304 for migrate --post-copy" >&2
  sysctl -q -w fs.pipe-max-size=4194304
fi

status=0
./build-bench/tests/bench/nc_bench --counter build-bench/examples/counter \
  --cli build-bench/examples/nucleus-checkpoint --key-file build-bench/bench-key/hmac.key \
  --launcher build-bench/tests/bench/bench_container_launcher --source . \
  --rewriter build-bench/tests/bench/bench_rewriter \
  --work "$work" "$@" || status=$?
echo "whole run (setup, build, benchmark): $((SECONDS - start)) s"
exit $status
