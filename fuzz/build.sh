#!/usr/bin/env bash
# Builds the libFuzzer harnesses with the library's sources compiled straight
# in (no shared library in between, so coverage guidance reaches the core),
# plus gen_seeds. The chunk kernels are built once, for the baseline
# instruction set (cpu_dispatch.cpp then has nothing to choose), with the
# core's -ffp-contract=off. The fuzzed layouts stay far below the size at
# which the host path wakes its worker threads, so every run is serial and
# deterministic.
#
# Usage: fuzz/build.sh OUT_DIR
# Needs: clang++ (Debian's clang 14) and libclang-rt-14-dev (tools/deps/hardening.sh).
set -euo pipefail
src_dir=$(cd "$(dirname "$0")/.." && pwd)
out_dir=$1
cxx=${FUZZ_CXX:-clang++}
mkdir -p "$out_dir/obj"

common=(-std=c++17 -g -O1 -fno-omit-frame-pointer -Wall -Wno-unknown-pragmas -ffp-contract=off
        -I"$src_dir/include" -I"$src_dir/src" -I"$src_dir/fuzz" -DKOALA_BUILDING_LIBRARY)
sanitize=(-fsanitize=address,undefined -fno-sanitize-recover=undefined)

objs=()
for f in "$src_dir"/src/*.cpp; do
  o="$out_dir/obj/$(basename "${f%.cpp}").o"
  isa=()
  [ "$(basename "$f")" = cpu_kernels.cpp ] && isa=(-DKOALA_CPU_ISA=base)
  "$cxx" "${common[@]}" "${sanitize[@]}" "${isa[@]}" -fsanitize=fuzzer-no-link -Wno-unused-variable \
    -c "$f" -o "$o" &
  objs+=("$o")
  # two compilers at a time: the machine is shared
  [ "$(jobs -rp | wc -l)" -ge 2 ] && wait -n
done
wait

# The harnesses play a C caller, which may pass any int as an enum; in C++
# that is an out-of-range enum load, so the harness files (only) are built
# without UBSan's enum check. The library objects keep it: the library must
# read such values safely, and does.
for h in fuzz_state_load fuzz_api_args; do
  "$cxx" "${common[@]}" "${sanitize[@]}" -fno-sanitize=enum -fsanitize=fuzzer \
    "$src_dir/fuzz/$h.cpp" "${objs[@]}" \
    -ldl -o "$out_dir/$h"
done
"$cxx" "${common[@]}" "${sanitize[@]}" -fsanitize=fuzzer-no-link "$src_dir/fuzz/gen_seeds.cpp" \
  "${objs[@]}" -ldl -o "$out_dir/gen_seeds"
echo "fuzz/build.sh: built $out_dir/{fuzz_state_load,fuzz_api_args,gen_seeds}"
