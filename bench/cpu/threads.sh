#!/usr/bin/env bash
# The thread-control benchmark (issue 10): 1, 2 and 3 processes started at
# once on this machine's cores, each a miniature training loop
# (koala_thread_bench: KOALA-M float32 on the ResNet-18 layout, 20 ms of
# single-threaded "model work" between predict and update), with the
# library's default thread count and with one thread each.
#   bench/cpu/threads.sh BUILD_DIR [STEPS]
# Every process prints its median time in libkoala, in the model work and per
# iteration. Run it on an otherwise idle machine.
set -euo pipefail
build=${1:?usage: bench/cpu/threads.sh BUILD_DIR [STEPS]}
steps=${2:-30}
exe="$build/bench/cpu/koala_thread_bench"
# The model work is calibrated once, alone, so every process does the same.
per_ms=$("$exe" --calibrate)
echo "== machine: $(nproc) CPUs; each process: KOALA-M float32 ResNet-18, $steps steps"
echo "   (KOALA_NUM_THREADS and OMP_NUM_THREADS unset: the default is the CPUs of the process)"
unset KOALA_NUM_THREADS OMP_NUM_THREADS
for procs in 1 2 3; do
  for threads in 0 1; do
    label=$([ "$threads" = 0 ] && echo "default threads" || echo "1 thread each")
    echo "-- $procs process(es), $label"
    pids=()
    for ((p = 0; p < procs; ++p)); do
      "$exe" --threads "$threads" --steps "$steps" --per-ms "$per_ms" &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
  done
done
