# Sourced (bash) by the tests that build an outside program against the
# INSTALLED files, as a user of a distribution package would
# (tests/c/consumer/run_consumer.sh, tests/abi/run_installed.sh).
#
#   scratch_install NAME BUILD_DIR
#     installs BUILD_DIR into a scratch DESTDIR (the runtime and devel tags:
#     what a package holds) and points pkg-config at that install only; sets
#     $scratch, $root, $flags (pkg-config --cflags --libs koala), $libdir and
#     $includedir. Exits 77 when meson, pkg-config or $cc is missing.
#   run_installed_program NAME EXE
#     checks that EXE resolves the installed libkoala.so (not the build
#     tree's), runs it, and runs it again through the dynamic loader with
#     --inhibit-cache (no ld.so.cache: what a machine without the CUDA
#     libraries registered sees).
cc=${CC:-cc}

scratch_install() {
  local name=$1 build_dir=$2 tool
  for tool in meson pkg-config "$cc"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "$name: $tool not found; skipping" >&2
      exit 77
    fi
  done
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/koala-$name.XXXXXX")
  root="$scratch/root"
  # The DESTDIR install rewrites the build's install log (what `ninja
  # uninstall` reads): keep the caller's.
  scratch_log=$build_dir/meson-logs/install-log.txt
  scratch_saved=
  if [ -f "$scratch_log" ]; then
    scratch_saved="$scratch/install-log.txt"
    cp -p "$scratch_log" "$scratch_saved"
  fi
  trap scratch_cleanup EXIT
  trap 'exit 143' TERM INT   # (meson's timeout) still restores the log

  # --no-rebuild: meson test built everything already, and a nested ninja
  # would race the running suite.
  meson install -C "$build_dir" --destdir "$root" --no-rebuild --quiet --tags runtime,devel

  local pc
  pc=$(find "$root" -name koala.pc -print -quit)
  if [ -z "$pc" ]; then
    echo "$name: koala.pc was not installed" >&2
    exit 1
  fi
  # Look only into the scratch install, and let pkg-config prefix every -I/-L
  # with it (koala.pc names the configured prefix, e.g. /usr/local).
  export PKG_CONFIG_LIBDIR="$(dirname "$pc")"
  export PKG_CONFIG_PATH=
  export PKG_CONFIG_SYSROOT_DIR="$root"
  pkg-config --exists --print-errors koala
  flags=$(pkg-config --cflags --libs koala)
  echo "$name: pkg-config --cflags --libs koala: $flags"
  libdir=$(pkg-config --libs-only-L koala | sed -e 's/^ *-L//' -e 's/ .*$//')
  includedir=$(pkg-config --cflags-only-I koala | sed -e 's/^ *-I//' -e 's/ .*$//')
  if [ ! -e "$libdir/libkoala.so" ]; then
    echo "$name: libkoala.so not found in $libdir" >&2
    exit 1
  fi
  if [ ! -e "$includedir/koala.h" ]; then
    echo "$name: koala.h not found in $includedir" >&2
    exit 1
  fi
}

scratch_cleanup() {
  if [ -n "$scratch_saved" ]; then cp -p "$scratch_saved" "$scratch_log"; else rm -f "$scratch_log"; fi
  rm -rf "$scratch"
}

run_installed_program() {
  local name=$1 exe=$2 loader=/lib64/ld-linux-x86-64.so.2
  export LD_LIBRARY_PATH="$libdir"
  if ! ldd "$exe" | grep -F "libkoala.so" | grep -qF "$root"; then
    echo "$name: $(basename "$exe") does not load libkoala from the install:" >&2
    ldd "$exe" >&2
    exit 1
  fi
  echo "$name: run against $libdir"
  "$exe"
  if [ -x "$loader" ]; then
    echo "$name: run with $loader --inhibit-cache"
    "$loader" --inhibit-cache "$exe"
  else
    echo "$name: $loader not found; the no-cache run is skipped"
  fi
  echo "$name: OK"
}
