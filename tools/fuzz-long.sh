#!/usr/bin/env bash
# Long libFuzzer runs of both harnesses in fuzz/ (CI runs them briefly from
# tools/hardening.sh; this is for soaking).
#
# Usage: tools/fuzz-long.sh SECONDS [WORK_DIR]
#   SECONDS   per harness (libFuzzer -max_total_time)
#   WORK_DIR  build, growing corpora, logs and crash artifacts
#             (default: build-fuzz-long in the source tree)
# Environment: FUZZ_PARALLEL=1 runs the two harnesses at the same time
# (each on one core, under nice); default one after the other.
# Exit status: 1 if a harness found a crash (artifacts in WORK_DIR/artifacts).
set -euo pipefail
src_dir=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:?usage: tools/fuzz-long.sh SECONDS [WORK_DIR]}
work=${2:-$src_dir/build-fuzz-long}
mkdir -p "$work/artifacts" "$work/logs"

"$src_dir/fuzz/build.sh" "$work/bin"

run_one() {  # harness corpus-name
  local h=$1 name=$2
  mkdir -p "$work/corpus/$name"
  # The growing corpus comes first: new inputs land there, the committed
  # seeds stay untouched.
  nice -n 10 "$work/bin/$h" -max_total_time="$seconds" -print_final_stats=1 \
    -timeout=20 -rss_limit_mb=2048 -artifact_prefix="$work/artifacts/$h-" \
    "$work/corpus/$name" "$src_dir/fuzz/corpus/$name" > "$work/logs/$h.log" 2>&1
}

status=0
if [ "${FUZZ_PARALLEL:-0}" = 1 ]; then
  run_one fuzz_state_load state_load & p1=$!
  run_one fuzz_api_args api_args & p2=$!
  wait $p1 || status=1
  wait $p2 || status=1
else
  run_one fuzz_state_load state_load || status=1
  run_one fuzz_api_args api_args || status=1
fi

for h in fuzz_state_load fuzz_api_args; do
  log="$work/logs/$h.log"
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|INITED)' "$log" | tail -1 | grep -o 'cov: [0-9]*' || echo 'cov: ?')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  crash=$(grep -c -E 'ERROR: (libFuzzer|AddressSanitizer)|runtime error|INVARIANT BROKEN' "$log" || true)
  echo "$h: ${seconds}s, $runs executions ($rate/s), $cov, corpus $(ls "$work/corpus/${h#fuzz_}" | wc -l) files, crash reports: $crash"
done
ls "$work/artifacts" | sed 's/^/artifact: /' || true
exit $status
