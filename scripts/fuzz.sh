#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer (clang, ASan and UBSan) of the metadata parser, the
# signature parser and the verify path over generated trees (tests/fuzz/). Each target runs for
# NC_FUZZ_SECONDS (default 20) over a scratch copy of its checked-in corpus, which stays as it is.
# Each is recorded OK or FAIL in the extra test log; a crashing input is kept in build-fuzz/artifacts/.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-extra-log.sh
dir=build-fuzz seconds=${NC_FUZZ_SECONDS:-20}
targets=(metadata signature tree)
extra_log_reset fuzz:

build_failed() {
  echo "$1" | tail -n 30
  extra_log_add fuzz:build FAIL "$1"
  echo "fuzz: build failed"
  exit 1
}
if [[ ! -f $dir/build.ninja ]]; then  # never set up, or a setup that failed half-way
  rm -rf "$dir"
  # fuzzer-no-link gives the library libFuzzer's coverage instrumentation; the targets add
  # -fsanitize=fuzzer. The project builds warning-free with clang too, hence werror.
  out=$(CC=clang CXX=clang++ meson setup "$dir" -Dfuzzing=true -Dtests=false -Db_sanitize=address,undefined \
    -Db_lundef=false -Dwerror=true -Dcpp_args=-fsanitize=fuzzer-no-link 2>&1) || build_failed "$out"
fi
out=$(ninja -C "$dir" "${targets[@]/#/tests/fuzz/fuzz_}" 2>&1) || build_failed "$out"

scratch=$dir/scratch  # corpus copies and the targets' trees; 0700, as the key folder must be
rm -rf "$scratch" && mkdir -m 0700 "$scratch"
mkdir -p "$dir/artifacts"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$PWD/tests/fuzz/ubsan.supp NC_FUZZ_TMPDIR=$PWD/$scratch
failed=0
for t in "${targets[@]}"; do
  cp -r "tests/fuzz/corpus/$t" "$scratch/corpus-$t"
  log=$scratch/$t.log
  # libFuzzer stops itself after $seconds and reports an input slower than 10 s; timeout is the backstop.
  timeout -k 10 $((seconds + 120)) "$dir/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$dir/artifacts/$t-" "$scratch/corpus-$t" >"$log" 2>&1
  status=$?
  summary=$(grep -E '^(Done [0-9]+ runs|==[0-9]+==ERROR|SUMMARY|fuzz: |artifact_prefix|Test unit written)' "$log" | head -n 8)
  if ((status == 0)); then
    echo "fuzz: $t OK: $summary"
    extra_log_add "fuzz:$t" OK "$summary"
  else
    failed=$((failed + 1))
    tail -n 40 "$log"
    echo "fuzz: $t FAILED (exit $status); the input is in $dir/artifacts/"
    extra_log_add "fuzz:$t" FAIL "$(tail -n 60 "$log")"
  fi
done
rm -rf "$scratch"
echo "fuzz: ${#targets[@]} targets, $failed failed"
((failed == 0))
