#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU. Needs no network.
#
#   tools/gpu-check.sh [BUILD_DIR]             full check (default build-gpu-check)
#   tools/gpu-check.sh --quick [BUILD_DIR]     build, then the quick check
#   tools/gpu-check.sh --prepare DIR           where nvcc is: build what the quick
#                                              check runs into DIR (a few MiB;
#                                              movable: the rpaths are $ORIGIN)
#   tools/gpu-check.sh --quick --prebuilt DIR  on the GPU machine: the quick check
#                                              on DIR's binaries, nothing built
#
# Full: configures -Dcuda=enabled and builds (meson and ninja from PATH or
# from python3's mesonbuild / ninja modules), runs every meson suite, then
# the quick check's steps with the full 100-step parity run and bench.
# Quick (at most 8 minutes, each step within what is left): test_plugin_load,
# test_device_contract, test_device_parity (20 steps);
# koala_gpu_bench and torch's fused Adam comparison (20 steps each); both
# device tests under compute-sanitizer memcheck, synccheck and racecheck
# (KOALA_GPU_TEST_STEPS=3). A step the 8 minutes cut short is a FAIL line
# saying so. Every GPU program runs with
# KOALA_REQUIRE_GPU=1: no usable GPU fails the check instead of skipping it.
# The exit status is 0 only if every step passed; a missing
# compute-sanitizer or torch is a SKIP line in the summary. Logs go to
# GPU_CHECK_LOGS (default DIR-logs).
set -u
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"

mode=full
prebuilt=
build=build-gpu-check
while [ $# -gt 0 ]; do
    case $1 in
        --quick) mode=quick ;;
        --prepare) mode=prepare; build=${2:?--prepare needs a directory}; shift ;;
        --prebuilt) prebuilt=${2:?--prebuilt needs a directory}; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        -*) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
        *) build=$1 ;;
    esac
    shift
done
if [ -n "$prebuilt" ] && [ "$mode" != quick ]; then
    echo "gpu-check: --prebuilt goes with --quick" >&2
    exit 2
fi

# What the quick check runs, relative to a build directory.
QUICK_FILES=(libkoala.so.1.1.0 libkoala.so.1 libkoala.so libkoala_cuda.so
             tests/gpu/test_plugin_load
             tests/gpu/test_device_contract tests/gpu/test_device_parity
             bench/gpu/koala_gpu_bench)

# meson: on PATH or python3's mesonbuild module. ninja: on PATH, or the
# binary of python3's ninja module, which meson then finds through $NINJA.
find_tools() {
    if command -v meson >/dev/null 2>&1; then MESON=(meson); else MESON=(python3 -m mesonbuild.mesonmain); fi
    "${MESON[@]}" --version >/dev/null 2>&1 || { echo "gpu-check: no meson" >&2; return 1; }
    if command -v ninja >/dev/null 2>&1; then NINJA=$(command -v ninja); else
        NINJA=$(python3 -c 'import ninja, os; print(os.path.join(ninja.BIN_DIR, "ninja"))' 2>/dev/null)
    fi
    [ -n "$NINJA" ] && [ -x "$NINJA" ] || { echo "gpu-check: no ninja" >&2; return 1; }
    export NINJA
}

setup_args() {  # dir: "setup [--reconfigure] dir -Dcuda=enabled"
    if [ -f "$1/build.ninja" ]; then echo "setup --reconfigure $1 -Dcuda=enabled"; else echo "setup $1 -Dcuda=enabled"; fi
}

if [ "$mode" = prepare ]; then
    # Only the core, the plugin, the tests and the benchmarks.
    find_tools || exit 1
    work="${build%/}.build"
    # shellcheck disable=SC2046
    "${MESON[@]}" $(setup_args "$work") -Dbuildtype=release -Dpython=disabled \
        -Dfortran=disabled -Drust=disabled -Djulia=disabled -Djax=disabled -Dexamples=false \
        -Dtests=true -Dbench=true || exit 1
    "$NINJA" -C "$work" || exit 1
    rm -rf "$build"
    for f in "${QUICK_FILES[@]}"; do
        mkdir -p "$build/$(dirname "$f")"
        cp -P "$work/$f" "$build/$f" || exit 1
    done
    echo "gpu-check: $build holds the quick check's binaries ($(du -sh "$build" | cut -f1));"
    echo "  on the GPU machine: tools/gpu-check.sh --quick --prebuilt $build"
    exit 0
fi

dir=${prebuilt:-$build}
LOGDIR=${GPU_CHECK_LOGS:-${dir%/}-logs}
mkdir -p "$LOGDIR"
summary=()
failed=0
started=$(date +%s)
deadline=
[ "$mode" = quick ] && deadline=$(( started + 8 * 60 - 15 ))

# step NAME SECONDS COMMAND...: runs COMMAND within SECONDS (and, in quick
# mode, within what is left of the 8 minutes), logs it, records the outcome.
step() {
    local name=$1 limit=$2 t0 rc
    shift 2
    local log="$LOGDIR/${name//[^A-Za-z0-9_.-]/_}.log"
    if [ -n "$deadline" ]; then
        local left=$(( deadline - $(date +%s) ))
        if [ "$left" -le 0 ]; then
            summary+=("FAIL  $name (not run: the 8 minutes are used up)")
            failed=1
            return 1
        fi
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    echo "=== $name: $*"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    local took="$(( $(date +%s) - t0 ))s"
    if [ "$rc" -eq 0 ]; then
        summary+=("PASS  $name ($took)")
    elif [ "$rc" -eq 77 ]; then
        summary+=("SKIP  $name ($took)")
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        summary+=("FAIL  $name (stopped at its ${limit}s limit, log $log)")
        failed=1
    else
        summary+=("FAIL  $name (exit $rc, log $log)")
        failed=1
    fi
    return "$rc"
}

finish() {
    echo
    echo "================ gpu-check summary ($(( $(date +%s) - started ))s) ================"
    printf '%s\n' "${summary[@]}"
    echo "logs: $LOGDIR"
    exit "$failed"
}

command -v nvidia-smi >/dev/null 2>&1 &&
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$LOGDIR/nvidia-smi.log"

if [ -n "$prebuilt" ]; then
    for f in "${QUICK_FILES[@]}"; do
        [ -e "$dir/$f" ] || { echo "gpu-check: no $dir/$f (tools/gpu-check.sh --prepare $dir)"; exit 1; }
    done
else
    find_tools || exit 1
    deadline_saved=$deadline
    deadline=  # building is not part of the 8 minutes
    # shellcheck disable=SC2046
    step configure 600 "${MESON[@]}" $(setup_args "$dir") || finish
    step build 3600 "$NINJA" -C "$dir" || finish
    [ -n "$deadline_saved" ] && deadline=$(( $(date +%s) + 8 * 60 - 15 ))
fi

export KOALA_REQUIRE_GPU=1
parity_steps=20
bench_steps=(--steps 20)
if [ "$mode" = full ]; then
    step "meson test (all suites)" 3600 "${MESON[@]}" test -C "$dir" --no-rebuild --print-errorlogs
    parity_steps=100
    bench_steps=()
fi

step plugin-load 60 "$dir/tests/gpu/test_plugin_load"
step device_contract 300 "$dir/tests/gpu/test_device_contract"
step device_parity 300 env KOALA_GPU_TEST_STEPS=$parity_steps "$dir/tests/gpu/test_device_parity"

# The benchmarks before the sanitizers: their figures matter most if the
# 8 minutes run out.
step "benchmark koala_gpu_bench" 150 "$dir/bench/gpu/koala_gpu_bench" "${bench_steps[@]}"
if python3 -c 'import torch' >/dev/null 2>&1; then
    step "benchmark torch fused Adam vs libkoala" 150 python3 bench/gpu/torch_adam.py \
        "$dir/libkoala.so" "${bench_steps[@]}"
else
    summary+=("SKIP  benchmark torch fused Adam vs libkoala (no torch in python3)")
fi

SANITIZER=$(command -v compute-sanitizer || true)
for tool in memcheck synccheck racecheck; do
    for t in test_device_contract test_device_parity; do
        if [ -z "$SANITIZER" ]; then
            summary+=("SKIP  $tool $t (compute-sanitizer not found)")
            continue
        fi
        # (the contract test's deliberate kernel fault would be memcheck's error)
        step "$tool $t" 240 env KOALA_GPU_TEST_STEPS=3 KOALA_GPU_TEST_NO_FAULT=1 "$SANITIZER" --tool "$tool" \
            --error-exitcode 3 "$dir/tests/gpu/$t"
    done
done
finish
