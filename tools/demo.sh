#!/usr/bin/env bash
# The README's demo: installs what is missing, builds the core library and
# trains a small MLP on the UCI digits with KOALA-V, KOALA-M, KOALA++ and plain SGD.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh core
BUILD_DIR=build-demo bash tools/build.sh -Dtests=false -Dbench=false -Dcuda=disabled -Dpython=disabled \
  -Dfortran=disabled -Drust=disabled -Djulia=disabled -Djax=disabled
mkdir -p out
build-demo/examples/c/koala-digits --data examples/data/digits.csv --out out "$@"
echo "loss curves: out/digits-loss.svg (and out/digits-loss.csv)"
