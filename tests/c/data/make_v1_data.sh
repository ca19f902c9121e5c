#!/usr/bin/env bash
# Regenerates tests/c/data/v1_* with libkoala 1.0 itself: checks out commit
# f596f19 (the 1.0.0 release) into a scratch git worktree, builds its
# CPU-only library, builds gen_v1_data.c
# against that library and the frozen 1.0 header (tests/abi/koala-1.0.h),
# and runs it. Not part of the test suite (it needs the git history); the
# outputs are committed. Deterministic: a re-run writes the same bytes.
#
# usage: tests/c/data/make_v1_data.sh [SCRATCH_DIR]
set -euo pipefail
src_dir=$(cd "$(dirname "$0")/../../.." && pwd)
scratch=${1:-$(mktemp -d "${TMPDIR:-/tmp}/koala-v1data.XXXXXX")}
commit=f596f19
cc=${CC:-cc}

git -C "$src_dir" worktree add --detach "$scratch/koala-1.0" "$commit" >/dev/null
trap 'git -C "$src_dir" worktree remove --force "$scratch/koala-1.0"' EXIT
meson setup "$scratch/build-1.0" "$scratch/koala-1.0" -Dcuda=disabled -Dpython=disabled \
  -Dfortran=disabled -Drust=disabled -Djulia=disabled -Djax=disabled -Dtests=false \
  -Dexamples=false -Dbench=false >"$scratch/setup.log"
ninja -C "$scratch/build-1.0" -j2 >"$scratch/build.log"

"$cc" -std=c99 -Wall -Wextra -Werror -pedantic -O2 \
  -I"$src_dir/tests/abi" -I"$src_dir/tests/c" \
  "$src_dir/tests/c/data/gen_v1_data.c" -o "$scratch/gen_v1_data" \
  -L"$scratch/build-1.0" -lkoala -Wl,-rpath,"$scratch/build-1.0"

"$scratch/gen_v1_data" "$src_dir/tests/c/data"
echo "make_v1_data: written with libkoala $(git -C "$src_dir" rev-parse --short "$commit")"
