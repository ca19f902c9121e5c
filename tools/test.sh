#!/usr/bin/env bash
# The README's test command: installs what is missing, builds every component
# this machine can build (CUDA when nvcc is present, warnings as errors) and
# runs every test suite: C, Python, JAX, Fortran, Rust, Julia, examples, GPU
# (skipped without a GPU), then the sanitizer, valgrind and fuzzing jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/cuda/bin"
bash tools/deps.sh
BUILD_DIR=build bash tools/build.sh
meson_status=0
meson test -C build --print-errorlogs --num-processes 2 || meson_status=1
hardening_status=skip
if [ -f tools/hardening.sh ]; then
  if bash tools/hardening.sh .; then hardening_status=ok; else hardening_status=fail; fi
fi
# One closing line over everything: the meson tests plus the hardening job.
python3 - build/meson-logs/testlog.json "$hardening_status" <<'PY'
import json, sys
counts = {}
for line in open(sys.argv[1]):
    r = json.loads(line)["result"]
    counts[r] = counts.get(r, 0) + 1
passed = counts.get("OK", 0) + counts.get("EXPECTEDFAIL", 0)
failed = sum(v for k, v in counts.items() if k not in ("OK", "SKIP", "EXPECTEDFAIL"))
skipped = counts.get("SKIP", 0)
h = sys.argv[2]
passed += h == "ok"
failed += h == "fail"
print(f"libkoala: {passed} passed, {failed} failed, {skipped} skipped")
PY
[ "$meson_status" = 0 ] && [ "$hardening_status" != fail ]
