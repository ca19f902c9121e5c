#!/usr/bin/env bash
# tools/hardening.sh: sanitizer builds (GCC's libasan/libubsan/libtsan come
# with build-essential from core.sh), valgrind, and libFuzzer (Debian's
# clang 14 plus its runtime libraries in libclang-rt-14-dev, and libomp-14-dev
# for the clang TSan build; llvm provides
# llvm-symbolizer for readable sanitizer stacks).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
apt_install clang libclang-rt-14-dev libomp-14-dev llvm valgrind python3
