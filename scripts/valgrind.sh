#!/usr/bin/env bash
# The command line of build/ under valgrind's memcheck (keygen, verify, inspect, sign) on a real
# checkpoint that the demo makes, and on its tampered and unsigned copies. Prints a line a run and
# "valgrind: N checks, M failed", and records that in the extra test log for count-tests.py.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-extra-log.sh
extra_log_reset valgrind
work=$PWD/build/valgrind  # 0700: it holds the private key folder
examples=build/examples
bash scripts/build.sh || { extra_log_add valgrind FAIL "build failed"; echo "valgrind: build failed"; exit 1; }
rm -rf "$work" && mkdir -m 0700 "$work" "$work/keys" "$work/logs"
export NUCLEUS_CHECKPOINT_HMAC_KEY_FILE=$work/keys/checkpoint-hmac.key

checks=0 failed=0 lines=()
# run NAME EXPECTED_EXIT COMMAND...: one program under memcheck; a finding exits 99, a hang 124.
run() {
  local name=$1 want=$2 log=$work/logs/$1.log status
  shift 2
  timeout -k 10 300 valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=99 --track-fds=no \
    --log-file="$log.valgrind" "$@" >"$log" 2>&1
  status=$?
  checks=$((checks + 1))
  if ((status == want)); then
    lines+=("valgrind: $name OK")
  else
    failed=$((failed + 1))
    lines+=("valgrind: $name FAILED (exit $status, expected $want; log: $log.valgrind)")
    tail -n 20 "$log" "$log.valgrind"
  fi
  echo "${lines[-1]}"
}

run keygen 0 "$examples/nucleus-checkpoint" keygen  # creates the key the demo then signs with
# The demo runs plain: under valgrind the library cannot start CRIU at all. It spawns CRIU with
# clone3 and waits on a pidfd; valgrind answers clone3 with ENOSYS (by design) and 3.19 does not
# know pidfd_open, so the demo and `check` would fail for valgrind's reasons, not the library's.
# The ASan build runs those paths instead (criu_e2e, cli). The demo makes the checkpoint read here.
if ! "$examples/demo" "$examples/counter" "$work/demo" >"$work/logs/demo.log" 2>&1; then
  tail -n 20 "$work/logs/demo.log"
  # Failing before its dump, it leaves its sample tree running: one process group, PID printed first.
  pid=$(sed -n 's/^1\. sample process tree running: PID \([0-9]*\).*/\1/p' "$work/logs/demo.log")
  [[ -n $pid ]] && grep -qF "$work/demo" "/proc/$pid/cmdline" 2>/dev/null && kill -KILL -- "-$pid"
fi
cli=$examples/nucleus-checkpoint ckpt=$work/demo/checkpoint copy=$work/copy
cp -a "$ckpt" "$copy" 2>/dev/null && rm -f "$copy/checkpoint.hmac"
run verify 0 "$cli" verify --dir "$ckpt"
run verify-json 0 "$cli" --json verify --dir "$ckpt"
run inspect 0 "$cli" inspect --dir "$ckpt"
run verify-tampered 6 "$cli" verify --dir "$work/demo/tampered"  # the demo's copy with one bit flipped
run verify-unsigned 6 "$cli" verify --dir "$copy"
run sign 0 "$cli" sign --dir "$copy"
run verify-signed 0 "$cli" verify --dir "$copy"
lines+=("valgrind: $checks checks, $failed failed")
echo "${lines[-1]}"
extra_log_add valgrind "$( ((failed == 0)) && echo OK || echo FAIL)" "$(printf '%s\n' "${lines[@]}")"
((failed == 0))
