#!/bin/sh
# run_cargo.sh BUILD_ROOT WORK_DIR SOURCE_ROOT: the Rust suite, run by
# `meson test`. Exit 77 (skipped) when cargo is absent.
#
# Cargo writes Cargo.lock next to the workspace manifest (no stable option
# moves it), so the suite runs on a copy of the crates under WORK_DIR (in the
# build tree), never in the source tree; the copy's lock file is deleted
# before each run, so whichever cargo runs writes its own format (Debian's
# cargo 0.66 refuses the v4 files of newer ones). Target directories live
# under WORK_DIR too.
#
#  1. bindings/rust (koala-sys, koala): `cargo test --offline` and the example
#     `train`, linked through KOALA_LIB_DIR=BUILD_ROOT (the override);
#  2. tests/rust/downstream, a crate depending on `koala` only, found through
#     pkg-config (BUILD_ROOT/meson-uninstalled/koala-uninstalled.pc; no
#     KOALA_LIB_DIR): `cargo run` of a binary without an rpath (cargo's
#     library path reaches it), then its rpath'd binary run on its own with no
#     LD_LIBRARY_PATH.
set -eu
build_root=$1
work=$2
src_root=$3

cargo=$(command -v cargo || true)
if [ -z "$cargo" ] && [ -x "$HOME/.cargo/bin/cargo" ]; then cargo=$HOME/.cargo/bin/cargo; fi
if [ -z "$cargo" ]; then
  echo "SKIP: cargo not found (tools/deps/rust.sh installs Debian's cargo)"
  exit 77
fi
"$cargo" --version
# Whatever the caller's environment says, the suite decides where libkoala is.
unset LD_LIBRARY_PATH KOALA_LIB_DIR PKG_CONFIG_PATH PKG_CONFIG_LIBDIR PKG_CONFIG_SYSROOT_DIR

# A fresh copy of what the crates need, with the source tree's layout (so the
# relative paths between them, and to include/koala.h, hold) and with its
# modification times (so cargo rebuilds only what changed).
copy=$work/src
rm -rf "$copy"
mkdir -p "$copy/bindings" "$copy/tests/rust" "$copy/include"
tar -C "$src_root/bindings" --exclude=target --exclude=Cargo.lock -cf - rust | tar -C "$copy/bindings" -xf -
tar -C "$src_root/tests/rust" --exclude=target --exclude=Cargo.lock -cf - downstream | tar -C "$copy/tests/rust" -xf -
cp -p "$src_root/include/koala.h" "$copy/include/"
lock_before=$(ls -l --time-style=full-iso "$src_root/bindings/rust/Cargo.lock" 2>/dev/null || echo none)

echo "== 1. bindings/rust: cargo test (KOALA_LIB_DIR=$build_root)"
(
  cd "$copy/bindings/rust"
  export KOALA_LIB_DIR="$build_root" CARGO_TARGET_DIR="$work/target"
  "$cargo" test --offline --jobs 2
  "$cargo" run --offline --jobs 2 --example train
)

echo "== 2. a downstream crate (depends on koala only), libkoala through pkg-config"
uninstalled=$build_root/meson-uninstalled
if ! PKG_CONFIG_LIBDIR=$uninstalled pkg-config --exists koala 2>/dev/null; then
  echo "pkg-config does not find koala in $uninstalled" >&2
  exit 1
fi
(
  cd "$copy/tests/rust/downstream"
  export PKG_CONFIG_LIBDIR="$uninstalled" CARGO_TARGET_DIR="$work/target-downstream"
  echo "-- cargo run of the binary without an rpath (cargo's library path):"
  "$cargo" run --offline --jobs 2 --bin koala-downstream-plain
  "$cargo" build --offline --jobs 2 --bins
)
bin=$work/target-downstream/debug/koala-downstream
echo "-- $bin on its own (no LD_LIBRARY_PATH, rpath from its build.rs):"
readelf -d "$bin" | grep -E 'RUNPATH|RPATH' || { echo "no run-time path in $bin" >&2; exit 1; }
"$bin"
plain=$work/target-downstream/debug/koala-downstream-plain
if "$plain" >/dev/null 2>&1; then
  echo "-- (the binary without an rpath also runs on its own: libkoala.so.1 is on the system loader path here)"
else
  echo "-- as expected, the binary without an rpath does not find libkoala.so.1 on its own"
fi

lock_after=$(ls -l --time-style=full-iso "$src_root/bindings/rust/Cargo.lock" 2>/dev/null || echo none)
if [ "$lock_before" != "$lock_after" ]; then
  echo "FAILED: the suite changed $src_root/bindings/rust/Cargo.lock" >&2
  exit 1
fi
echo "rust suite: OK"
