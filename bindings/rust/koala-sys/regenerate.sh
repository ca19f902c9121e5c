#!/bin/sh
# regenerate.sh [OUT]: regenerates the raw bindings from include/koala.h with
# bindgen (Debian package `bindgen`, 0.60) into OUT (default src/bindings.rs).
# Run it after any change to koala.h and commit the result; the test
# tests/bindings_current.rs fails while the committed file is stale.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/src/bindings.rs}
header=$here/../../../include/koala.h
bindgen "$header" \
  --allowlist-function 'koala_.*' \
  --allowlist-type 'koala_.*' \
  --allowlist-var 'KOALA_.*' \
  --size_t-is-usize \
  --output "$out"
