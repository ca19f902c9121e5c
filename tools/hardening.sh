#!/usr/bin/env bash
# The robustness checks of libkoala, run by CI after the main test suite:
#   1. ASan + UBSan build (GCC), the whole C test suite: suites c, hardening,
#      abi and cuda-harness (the CUDA plugin and the GPU tests on the CPU
#      harness of tests/cuda_harness, which needs no nvcc);
#   2. TSan build (clang), the programs that run the library from several
#      threads: hardening/threads (user threads, and the library's own worker
#      pool driven hard), c/threads (thread counts 1-4), c/sharded
#      (simulated processes on threads, meeting in the all-reduce);
#   3. valgrind memcheck over the C test binaries of suites c, hardening and
#      abi (a plain debug build: valgrind cannot run sanitized binaries);
#   4. libFuzzer (clang 14): both harnesses of fuzz/ replay the committed
#      corpus, then fuzz for a bounded time each.
# Every stage runs even if an earlier one failed; the exit status is 1 if any
# failed. Needs tools/deps/core.sh and tools/deps/hardening.sh.
#
# Usage: tools/hardening.sh [SRC_DIR] [WORK_DIR]
#   SRC_DIR   the source tree (default: this script's repository)
#   WORK_DIR  build directories (default: SRC_DIR/build-hardening-ci)
# Environment:
#   HARDENING_FUZZ_SECONDS  fuzzing time per harness (default 60)
#   HARDENING_STAGES        subset to run, e.g. "asan fuzz" (default: all four)
#   HARDENING_JOBS          ninja -j (default 2)
set -uo pipefail
src_dir=$(cd "${1:-$(dirname "$0")/..}" && pwd)
work=${2:-$src_dir/build-hardening-ci}
fuzz_seconds=${HARDENING_FUZZ_SECONDS:-60}
stages=${HARDENING_STAGES:-asan tsan valgrind fuzz}
jobs=${HARDENING_JOBS:-2}
mkdir -p "$work"
work=$(cd "$work" && pwd)

# Only the core library and the C tests: every binding, nvcc's CUDA build
# and the examples are off, so the sanitizers see exactly the C ABI and its
# tests (and the CUDA sources through the CPU harness, built in any case).
meson_opts=(-Dbuildtype=debug -Dcuda=disabled -Dpython=disabled -Dfortran=disabled
            -Drust=disabled -Djulia=disabled -Djax=disabled -Dexamples=false -Dtests=true)

failed=()
summary=()
started_all=$(date +%s)

stage() {  # name command...: runs a stage, records PASS/FAIL and its time
  local name=$1 t0 rc
  shift
  t0=$(date +%s)
  echo "==== hardening: $name"
  "$@"
  rc=$?
  local secs=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then
    summary+=("PASS  $name (${secs}s)")
  else
    summary+=("FAIL  $name (${secs}s, exit $rc)")
    failed+=("$name")
  fi
}

setup() {  # dir meson-options...: configure once, reconfigure if present
  local dir=$1
  shift
  if [ -d "$dir/meson-private" ]; then
    meson configure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$src_dir" "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
  fi
}

# Which of the named suites the build registered (tests/c is written by
# another part of the project), as --suite arguments.
suites_present() {  # build-dir suite...
  local dir=$1 s listed args=()
  shift
  for s in "$@"; do
    # (captured first: grep -q closing the pipe early would fail it under pipefail)
    listed=$(meson test -C "$dir" --list --suite "$s" 2>/dev/null)
    if grep -q "^libkoala:$s / " <<<"$listed"; then
      args+=(--suite "$s")
    fi
  done
  echo "${args[@]}"
}

# ---- 1. ASan + UBSan ----------------------------------------------------------
run_asan() {
  local dir=$work/asan
  setup "$dir" "${meson_opts[@]}" -Db_sanitize=address,undefined -Db_lundef=false || return 1
  ninja -C "$dir" -j"$jobs" >"$dir.build.log" 2>&1 || { tail -40 "$dir.build.log"; return 1; }
  # halt_on_error: the first UB report fails the test; detect_leaks: LSan.
  # verify_asan_link_order=0: suite c's `consumer` and suite abi's
  # `abi_1_0_installed` tests install the library and build an ordinary
  # (uninstrumented) program against it with pkg-config; ASan would
  # otherwise refuse to start that program because its runtime is not first
  # in the library list. The library's own code in it is still instrumented.
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1:verify_asan_link_order=0 \
    meson test -C "$dir" --print-errorlogs --num-processes "$jobs" \
      $(suites_present "$dir" c hardening abi cuda-harness)
}

# ---- 2. TSan -------------------------------------------------------------------
# The library has no OpenMP any more: its worker pool (src/thread_pool.cpp)
# is std::thread + std::mutex + std::condition_variable, which TSan sees in
# full, so the programs run at full size and with several threads per
# optimizer (no KOALA_TEST_SMALL, no thread limit): every race TSan reports
# is real, in the library's state across user threads (thread-local error
# messages, the once-only plugin loader, per-optimizer state) or in the
# pool's hand-off of parts between the caller and the workers.
#
# Built with clang (HARDENING_TSAN_CC / HARDENING_TSAN_CXX to override).
run_tsan() {
  local dir=$work/tsan prog rc=0
  local progs=(tests/hardening/test_threads tests/c/c_threads tests/c/c_sharded)
  CC=${HARDENING_TSAN_CC:-clang} CXX=${HARDENING_TSAN_CXX:-clang++} \
    setup "$dir" "${meson_opts[@]}" -Db_sanitize=thread -Db_lundef=false || return 1
  local targets=()
  for prog in "${progs[@]}"; do
    # (tests/c may not be built: CMocka missing, or another part's tree)
    if ninja -C "$dir" -t targets all 2>/dev/null | grep -q "^$prog:"; then targets+=("$prog"); fi
  done
  ninja -C "$dir" -j"$jobs" "${targets[@]}" >"$dir.build.log" 2>&1 ||
    { tail -40 "$dir.build.log"; return 1; }
  # Kernels with a large mmap randomisation break TSan's memory layout
  # ("unexpected memory mapping"); running without ASLR avoids it.
  local pre=()
  if command -v setarch >/dev/null && setarch "$(uname -m)" -R true 2>/dev/null; then
    pre=(setarch "$(uname -m)" -R)
  fi
  for prog in "${targets[@]}"; do
    echo "tsan: $prog"
    TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 CMOCKA_MESSAGE_OUTPUT=STDOUT \
      "${pre[@]}" "$dir/$prog" >"$dir/$(basename "$prog").log" 2>&1 ||
      { tail -60 "$dir/$(basename "$prog").log"; rc=1; }
  done
  return $rc
}

# ---- 3. valgrind memcheck --------------------------------------------------------
# Definite and indirect leaks and every memory error fail; "possibly lost"
# does not: the library's worker pool keeps its threads (and their stacks)
# alive until exit, which valgrind counts as possibly lost. Only ELF test
# programs run under valgrind (the doc and export checks are Python
# scripts, the installed-library tests shell scripts).
run_valgrind() {
  local dir=$work/debug wrapper=$work/valgrind-wrapper.sh
  setup "$dir" "${meson_opts[@]}" || return 1
  ninja -C "$dir" -j"$jobs" >"$dir.build.log" 2>&1 || { tail -40 "$dir.build.log"; return 1; }
  cat >"$wrapper" <<EOF
#!/usr/bin/env bash
case "\$1" in
  "$dir"/*) ;;     # a test program built here: run it under valgrind
  *) exec "\$@" ;; # an interpreter (the doc check is Python): as is
esac
if head -c 4 "\$1" 2>/dev/null | grep -q ELF; then
  exec valgrind -q --error-exitcode=1 --leak-check=full \\
    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \\
    --suppressions="$src_dir/tests/hardening/valgrind.supp" "\$@"
fi
exec "\$@"
EOF
  chmod +x "$wrapper"
  # valgrind serialises threads and runs 30-100x slower: more time per test,
  # and the long numerical tests (HARDENING_VALGRIND_SKIP, suite/name) are
  # left to the ASan+UBSan stage, which runs every test: under valgrind they
  # take 3-6 minutes each (measured on 2 cores: c/caller_state 391 s,
  # c/fused_predict 352 s, c/threads 316 s, c/half_precision 283 s,
  # c/plusplus_reference 253 s, c/reference_match 249 s, c/sharded 191 s,
  # c/tensor_hyper 90 s). The rest keeps the stage to a few minutes.
  # Names repeat across suites (c/threads, hardening/threads): each suite
  # runs on its own.
  local skip=" ${HARDENING_VALGRIND_SKIP-c/caller_state c/fused_predict c/threads c/half_precision c/plusplus_reference c/reference_match c/sharded c/tensor_hyper} "
  local suite line name names rc=0
  for suite in $(suites_present "$dir" c hardening abi | sed 's/--suite//g'); do
    names=()
    while read -r line; do
      name=${line##* / }
      case "$skip" in *" $suite/$name "*) echo "valgrind: skipping $suite/$name (runs under ASan)"; continue ;; esac
      names+=("$name")
    done < <(meson test -C "$dir" --list --suite "$suite" 2>/dev/null | grep "^libkoala:$suite / ")
    [ ${#names[@]} -gt 0 ] || continue
    KOALA_TEST_SMALL=1 meson test -C "$dir" --print-errorlogs --num-processes "$jobs" \
      --wrapper "$wrapper" --timeout-multiplier 10 --suite "$suite" "${names[@]}" || rc=1
  done
  return $rc
}

# ---- 4. libFuzzer ------------------------------------------------------------------
run_fuzz() {
  local dir=$work/fuzz rc=0 h name
  "$src_dir/fuzz/build.sh" "$dir" >"$dir.build.log" 2>&1 || { tail -40 "$dir.build.log"; return 1; }
  for h in fuzz_state_load fuzz_api_args; do
    name=${h#fuzz_}
    # Replay the committed corpus exactly (regression), then fuzz with a
    # fixed seed into a scratch corpus, so the repository is not modified.
    "$dir/$h" -runs=0 "$src_dir/fuzz/corpus/$name" >"$dir/$h.replay.log" 2>&1 ||
      { tail -40 "$dir/$h.replay.log"; rc=1; continue; }
    rm -rf "$dir/corpus-$name" && mkdir -p "$dir/corpus-$name" "$dir/artifacts"
    "$dir/$h" -seed=1 -max_total_time="$fuzz_seconds" -print_final_stats=1 -timeout=20 \
      -rss_limit_mb=2048 -artifact_prefix="$dir/artifacts/$h-" \
      "$dir/corpus-$name" "$src_dir/fuzz/corpus/$name" >"$dir/$h.log" 2>&1 ||
      { grep -v -E '^#[0-9]+' "$dir/$h.log" | tail -40; rc=1; }
    echo "$h: $(grep -o 'number_of_executed_units: *[0-9]*' "$dir/$h.log" | grep -o '[0-9]*$') executions" \
         "in ${fuzz_seconds}s, $(grep -E '^#[0-9]+' "$dir/$h.log" | tail -1 | grep -o 'cov: [0-9]*')"
  done
  return $rc
}

for s in $stages; do
  case $s in
    asan) stage "ASan+UBSan: meson test (suites c, hardening, abi, cuda-harness)" run_asan ;;
    tsan) stage "TSan: hardening/threads, c/threads, c/sharded" run_tsan ;;
    valgrind) stage "valgrind memcheck: C test binaries" run_valgrind ;;
    fuzz) stage "libFuzzer: ${fuzz_seconds}s per harness" run_fuzz ;;
    *) echo "hardening: unknown stage '$s'"; failed+=("$s") ;;
  esac
done

echo "==== hardening summary ($(( $(date +%s) - started_all ))s in all)"
printf '%s\n' "${summary[@]}"
[ ${#failed[@]} -eq 0 ]
