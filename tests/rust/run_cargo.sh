#!/bin/sh
# run_cargo.sh LIB_DIR TARGET_DIR: the Rust suite, run by `meson test`.
# Runs `cargo test --offline` on the workspace bindings/rust (koala-sys and
# koala) against the libkoala.so in LIB_DIR, then the example, which exits
# non-zero unless its loss fell. Exit 77 (skipped) when cargo is absent.
set -eu
lib_dir=$1
target_dir=$2
here=$(cd "$(dirname "$0")" && pwd)
workspace=$here/../../bindings/rust

cargo=$(command -v cargo || true)
if [ -z "$cargo" ] && [ -x "$HOME/.cargo/bin/cargo" ]; then cargo=$HOME/.cargo/bin/cargo; fi
if [ -z "$cargo" ]; then
  echo "SKIP: cargo not found (tools/deps/rust.sh installs Debian's cargo)"
  exit 77
fi

export KOALA_LIB_DIR="$lib_dir"
export CARGO_TARGET_DIR="$target_dir"
cd "$workspace"
"$cargo" --version
"$cargo" test --offline --jobs 2
"$cargo" run --offline --jobs 2 --example train
