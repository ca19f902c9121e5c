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
# koala.torch is measured too, from the build's Python package when it has one.
[ -d "$build/bindings/python/koala" ] && export PYTHONPATH="$build/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
echo "== compare_torch.py, Debian's torch (threads=$threads)"
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  /usr/bin/python3 "$here/compare_torch.py" "$build/libkoala.so" --threads "$threads" ${KOALA_TORCH_ARGS:-}
else
  echo "skipped: Debian's python3-torch is not installed (sudo bash tools/deps/bench.sh)"
fi
pypi=$here/../../.venv/torch-pypi/bin/python
echo
echo "== compare_torch.py, PyPI's torch (threads=$threads)"
if [ -x "$pypi" ] && "$pypi" -c 'import torch' 2>/dev/null; then
  "$pypi" "$here/compare_torch.py" "$build/libkoala.so" --threads "$threads" ${KOALA_TORCH_ARGS:-}
else
  echo "skipped: no .venv/torch-pypi (sudo bash tools/deps/torch-pypi.sh)"
fi
