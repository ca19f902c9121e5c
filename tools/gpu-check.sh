#!/usr/bin/env bash
# The one command for a GPU machine, from a clean checkout:
#   tools/gpu-check.sh [BUILD_DIR]        (default build-gpu-check)
# 1. configures with -Dcuda=enabled and builds (meson + ninja; installed with
#    pip if missing, which needs PyPI or wheels at hand),
# 2. runs the whole meson test suite (host suites + 'gpu'),
# 3. runs the GPU tests under compute-sanitizer memcheck and racecheck
#    (shorter parity runs: KOALA_GPU_TEST_STEPS=5),
# 4. runs the GPU benchmark and the torch fused-Adam comparison,
# and prints a summary. Exit status 0 only if nothing failed.
# Needs only the repository, the CUDA toolkit (nvcc, compute-sanitizer) and
# python3; torch is optional (its comparison is skipped without it).
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build-gpu-check}
export PATH="/usr/local/cuda/bin:$PATH"
LOGDIR="${BUILD%/}-logs"
summary=()
failed=0

step() {  # step NAME COMMAND...: runs it, logs it, records PASS/SKIP/FAIL
    local name=$1
    shift
    local log="$LOGDIR/${name//[^A-Za-z0-9_.-]/_}.log"
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then
        summary+=("PASS  $name")
    elif [ "$rc" -eq 77 ]; then
        summary+=("SKIP  $name")
    else
        summary+=("FAIL  $name (exit $rc, log $log)")
        failed=1
    fi
    return "$rc"
}

for tool in meson ninja; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        python3 -m pip install --quiet meson ninja || { echo "cannot install $tool"; exit 1; }
    fi
done
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv

mkdir -p "$BUILD"
mkdir -p "$LOGDIR"
if [ -f "$BUILD/build.ninja" ]; then
    step configure meson setup --reconfigure "$BUILD" -Dcuda=enabled
else
    step configure meson setup "$BUILD" -Dcuda=enabled
fi || { printf '%s\n' "${summary[@]}"; exit 1; }
step build ninja -C "$BUILD" || { printf '%s\n' "${summary[@]}"; exit 1; }

step "meson test (all suites)" meson test -C "$BUILD" --no-rebuild --print-errorlogs

SANITIZER=$(command -v compute-sanitizer || true)
for t in test_device_parity test_device_contract; do
    exe="$BUILD/tests/gpu/$t"
    if [ -z "$SANITIZER" ]; then
        summary+=("SKIP  sanitizers for $t (compute-sanitizer not found)")
        continue
    fi
    for tool in memcheck racecheck; do
        step "$tool $t" env KOALA_GPU_TEST_STEPS=5 "$SANITIZER" --tool "$tool" \
            --error-exitcode 3 "$exe"
    done
done

step "benchmark koala_gpu_bench" "$BUILD/bench/gpu/koala_gpu_bench"
step "benchmark torch fused Adam vs libkoala" python3 bench/gpu/torch_adam.py "$BUILD/libkoala.so"

echo
echo "================ gpu-check summary ================"
printf '%s\n' "${summary[@]}"
echo "logs: $LOGDIR"
exit "$failed"
