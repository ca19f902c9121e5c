#!/usr/bin/env bash
# The Rust bindings (bindings/rust) and their suite: cargo (offline; the
# crates have no crates.io dependencies) and bindgen (to check that the
# committed koala-sys/src/bindings.rs is current).
# Debian 12's cargo/rustc is 1.63; the crates stay compatible with it. A cargo
# already on PATH (rustup, say) is used as it is.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
  apt_install cargo
fi
apt_install bindgen
# bindgen formats the bindings it generates with rustfmt when one is on PATH
# (the freshness test ignores whitespace, so this is for readable output).
if ! command -v rustfmt >/dev/null 2>&1 && [ ! -x "${HOME:-/root}/.cargo/bin/rustfmt" ]; then
  apt_install rustfmt
fi
