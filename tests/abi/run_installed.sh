#!/usr/bin/env bash
# The 1.0-header program against the INSTALLED library: installs this build
# into a scratch DESTDIR (runtime and devel tags, as a distribution package
# would), builds test_abi_1_0.c (frozen 1.0 header) and current_header_run.c
# (the INSTALLED koala.h) with `pkg-config --cflags --libs koala`, strict C99,
# checks the program resolves the installed libkoala.so.1, and runs it, then
# again through the dynamic loader with --inhibit-cache.
#
# usage: run_installed.sh BUILD_DIR ABI_SOURCE_DIR
set -euo pipefail

build_dir=$1
abi_dir=$2
cc=${CC:-cc}

for tool in meson pkg-config "$cc"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "run_installed: $tool not found; skipping" >&2
    exit 77
  fi
done

scratch=$(mktemp -d "${TMPDIR:-/tmp}/koala-abi.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
root="$scratch/root"

# --no-rebuild: meson test built everything already, and a nested ninja
# would race the running suite.
meson install -C "$build_dir" --destdir "$root" --no-rebuild --quiet --tags runtime,devel

pc=$(find "$root" -name koala.pc -print -quit)
if [ -z "$pc" ]; then
  echo "run_installed: koala.pc was not installed" >&2
  exit 1
fi
export PKG_CONFIG_LIBDIR="$(dirname "$pc")"
export PKG_CONFIG_PATH=
export PKG_CONFIG_SYSROOT_DIR="$root"
flags=$(pkg-config --cflags --libs koala)
libdir=$(pkg-config --libs-only-L koala | sed -e 's/^ *-L//' -e 's/ .*$//')
includedir=$(pkg-config --cflags-only-I koala | sed -e 's/^ *-I//' -e 's/ .*$//')
if [ ! -e "$includedir/koala.h" ]; then
  echo "run_installed: koala.h not found in $includedir" >&2
  exit 1
fi

# The 1.0 half finds koala-1.0.h and abi_problem.h next to itself (quoted
# includes); the current half gets <koala.h> from the install only.
# shellcheck disable=SC2086
"$cc" -std=c99 -Wall -Wextra -Werror -pedantic \
  "$abi_dir/test_abi_1_0.c" "$abi_dir/current_header_run.c" -o "$scratch/abi_1_0" $flags -lm

export LD_LIBRARY_PATH="$libdir"
if ! ldd "$scratch/abi_1_0" | grep -F "libkoala.so" | grep -qF "$root"; then
  echo "run_installed: abi_1_0 does not load libkoala from the install:" >&2
  ldd "$scratch/abi_1_0" >&2
  exit 1
fi

echo "run_installed: run against $libdir"
"$scratch/abi_1_0"
loader=/lib64/ld-linux-x86-64.so.2
if [ -x "$loader" ]; then
  echo "run_installed: run with $loader --inhibit-cache"
  "$loader" --inhibit-cache "$scratch/abi_1_0"
fi
echo "run_installed: OK"
