#!/usr/bin/env bash
# The outside-consumer test: installs this build into a scratch DESTDIR,
# builds train.c against the INSTALLED header, library and koala.pc (strict
# C99, -Wall -Wextra -Werror), runs it, and runs it again through the
# dynamic loader with --inhibit-cache (no ld.so.cache: what a machine
# without the CUDA libraries registered sees).
#
# usage: run_consumer.sh BUILD_DIR TRAIN_C
set -euo pipefail

build_dir=$1
train_c=$2
cc=${CC:-cc}

for tool in meson pkg-config "$cc"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "run_consumer: $tool not found; skipping" >&2
    exit 77
  fi
done

scratch=$(mktemp -d "${TMPDIR:-/tmp}/koala-consumer.XXXXXX")
root="$scratch/root"
# The DESTDIR install rewrites the build's install log (what `ninja
# uninstall` reads): keep the caller's.
log=$build_dir/meson-logs/install-log.txt
saved=
if [ -f "$log" ]; then saved="$scratch/install-log.txt"; cp -p "$log" "$saved"; fi
cleanup() {
  if [ -n "$saved" ]; then cp -p "$saved" "$log"; else rm -f "$log"; fi
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 143' TERM INT   # (meson's timeout) still restores the log

# Only what a user's package holds (library, plugin, header, koala.pc):
# the runtime and devel install tags. --no-rebuild: meson test already
# built everything, and a nested ninja would race the running suite.
meson install -C "$build_dir" --destdir "$root" --no-rebuild --quiet --tags runtime,devel

pc=$(find "$root" -name koala.pc -print -quit)
if [ -z "$pc" ]; then
  echo "run_consumer: koala.pc was not installed" >&2
  exit 1
fi
# Look only into the scratch install, and let pkg-config prefix every -I/-L
# with it (koala.pc names the configured prefix, e.g. /usr/local).
export PKG_CONFIG_LIBDIR="$(dirname "$pc")"
export PKG_CONFIG_PATH=
export PKG_CONFIG_SYSROOT_DIR="$root"
pkg-config --exists --print-errors koala
flags=$(pkg-config --cflags --libs koala)
echo "run_consumer: pkg-config --cflags --libs koala: $flags"
libdir=$(pkg-config --libs-only-L koala | sed -e 's/^ *-L//' -e 's/ .*$//')
if [ ! -e "$libdir/libkoala.so" ]; then
  echo "run_consumer: libkoala.so not found in $libdir" >&2
  exit 1
fi

# $flags must stay split into words.
# shellcheck disable=SC2086
"$cc" -std=c99 -Wall -Wextra -Werror -pedantic "$train_c" -o "$scratch/train" $flags -lm

export LD_LIBRARY_PATH="$libdir"
# The program must resolve the installed copy, not the build tree's.
if ! ldd "$scratch/train" | grep -F "libkoala.so" | grep -qF "$root"; then
  echo "run_consumer: train does not load libkoala from the install:" >&2
  ldd "$scratch/train" >&2
  exit 1
fi

echo "run_consumer: run"
"$scratch/train"

loader=/lib64/ld-linux-x86-64.so.2
if [ -x "$loader" ]; then
  echo "run_consumer: run with $loader --inhibit-cache"
  "$loader" --inhibit-cache "$scratch/train"
else
  echo "run_consumer: $loader not found; the no-cache run is skipped"
fi
echo "run_consumer: OK"
