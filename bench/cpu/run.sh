#!/usr/bin/env bash
# Runs the CPU benchmarks against a build directory:
#   bench/cpu/run.sh BUILD_DIR [THREADS]      (THREADS defaults to 2)
# 1. koala_cpu_bench: libkoala's step vs the stream byte floor (C, all dtypes);
# 2. compare_torch.py: libkoala vs torch Adam and the official-style PyTorch
#    KOALA code (needs Debian's python3-torch: tools/deps/bench.sh).
# Run it on an otherwise idle machine: the figures are bandwidth-bound and a
# busy neighbour on the same cores skews every number.
set -euo pipefail
build=${1:?usage: bench/cpu/run.sh BUILD_DIR [THREADS]}
threads=${2:-2}
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$build" && pwd)
export OMP_NUM_THREADS=$threads
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "== koala_cpu_bench (OMP_NUM_THREADS=$threads)"
"$build/bench/cpu/koala_cpu_bench" ${KOALA_BENCH_ARGS:-}
echo
echo "== compare_torch.py (threads=$threads)"
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  /usr/bin/python3 "$here/compare_torch.py" "$build/libkoala.so" --threads "$threads" ${KOALA_TORCH_ARGS:-}
else
  echo "skipped: Debian's python3-torch is not installed (sudo bash tools/deps/bench.sh)"
fi
