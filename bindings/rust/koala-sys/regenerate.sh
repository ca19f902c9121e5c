#!/bin/sh
# regenerate.sh [OUT [--no-rustfmt]]: regenerates the raw bindings from
# include/koala.h with bindgen (Debian package `bindgen`, 0.60) into OUT
# (default src/bindings.rs). Run it after any change to koala.h and commit
# the result; the test tests/bindings_current.rs fails while the committed
# file is stale. bindgen formats its output with rustfmt where one is found
# (for a readable committed file); --no-rustfmt skips that (the freshness
# test uses it, so it needs no rustfmt). KOALA_HEADER overrides the header's
# path (the test suite runs on a copy of this workspace in the build tree).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/src/bindings.rs}
header=${KOALA_HEADER:-$here/../../../include/koala.h}
format=
if [ "${2:-}" = "--no-rustfmt" ]; then format=--no-rustfmt-bindings; fi
# shellcheck disable=SC2086
bindgen "$header" \
  --allowlist-function 'koala_.*' \
  --allowlist-type 'koala_.*' \
  --allowlist-var 'KOALA_.*' \
  --size_t-is-usize \
  $format \
  --output "$out"
