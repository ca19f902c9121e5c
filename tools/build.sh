#!/usr/bin/env bash
# Configures (or reconfigures) and builds libkoala in BUILD_DIR (default: build)
# with every component whose tools are installed; extra arguments go to
# `meson setup` (e.g. -Dcuda=disabled).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${BUILD_DIR:-build}
opts=(-Dwerror=true "$@")
if [ -f "$dir/build.ninja" ]; then
  meson setup --reconfigure "$dir" "${opts[@]}" >/dev/null
else
  meson setup "$dir" "${opts[@]}"
fi
ninja -C "$dir"
