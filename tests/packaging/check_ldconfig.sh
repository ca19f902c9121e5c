#!/bin/sh
# check_ldconfig.sh BUILD_DIR SOURCE_DIR: the README's install section, for
# real (meson test install-ldconfig, suite packaging).
#
# In a private mount namespace (nothing leaks to the machine): an empty
# tmpfs over /usr/local and a copy of /etc over /etc. There:
#   meson install (the build's prefix, /usr/local);
#   the README's minimal C program, built with `pkg-config --cflags --libs
#   koala`, does NOT start (libkoala.so.1 is not in the loader's cache);
#   `ldconfig`;
#   it starts and trains; so does tests/packaging/hello.f90 built with
#   `pkg-config koala-fortran`, and the downstream Rust crate's binary
#   without an rpath (koala-sys found libkoala through pkg-config);
# all without LD_LIBRARY_PATH.
# Skipped (77) without root, unshare, or a /usr/local prefix.
set -eu
build=$1
src=$2

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root (an install to /usr/local in a private mount namespace)"
command -v unshare >/dev/null 2>&1 || skip "no unshare"
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
[ -x "$ldconfig" ] || skip "no ldconfig"
prefix=$(meson introspect --buildoptions "$build" | python3 -c \
  'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"][0])')
[ "$prefix" = /usr/local ] || skip "the build's prefix is $prefix, not /usr/local"

if [ "${KOALA_LDCONFIG_NAMESPACE:-}" != 1 ]; then
  unshare -m --propagation private true 2>/dev/null || skip "unshare -m is not permitted here"
  # the install rewrites the build's install log (what `ninja uninstall`
  # reads): keep the caller's
  log=$build/meson-logs/install-log.txt
  saved=
  if [ -f "$log" ]; then saved=$(mktemp); cp -p "$log" "$saved"; fi
  restore() { if [ -n "$saved" ]; then mv "$saved" "$log"; else rm -f "$log"; fi; }
  trap restore EXIT
  trap 'exit 143' TERM INT   # (meson's timeout) still restores the log
  KOALA_LDCONFIG_NAMESPACE=1 unshare -m --propagation private sh "$0" "$@"
  exit 0
fi

# ---- inside the namespace ---------------------------------------------------
scratch=$(mktemp -d "${TMPDIR:-/tmp}/koala-ldconfig.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cp -a /etc "$scratch/etc"
mount --bind "$scratch/etc" /etc
mount -t tmpfs koala-usr-local /usr/local
# a cache that knows nothing of /usr/local (the machine's may name an earlier
# install), as on a machine where libkoala was never installed
"$ldconfig"
unset LD_LIBRARY_PATH PKG_CONFIG_PATH PKG_CONFIG_LIBDIR PKG_CONFIG_SYSROOT_DIR KOALA_LIB_DIR

echo "== meson install (prefix /usr/local)"
meson install -C "$build" --no-rebuild --quiet

# The README's minimal program: the first ```c block after the heading that
# names it.
python3 - "$src/README.md" "$scratch/train.c" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"^#+ .*minimal C program.*?^```c\n(.*?)^```", text, re.S | re.M | re.I)
if not m:
    sys.exit("README.md: no ```c block after a 'minimal C program' heading")
open(sys.argv[2], "w").write(m.group(1))
EOF
cd "$scratch"
# shellcheck disable=SC2046
cc train.c $(pkg-config --cflags --libs koala) -o train
echo "== before ldconfig:"
if ./train >out.txt 2>err.txt; then
  echo "FAILED: the program started before ldconfig (is libkoala elsewhere on the loader path?)" >&2
  cat out.txt
  exit 1
fi
cat err.txt
grep -q 'libkoala.so.1' err.txt || { echo "FAILED: not the expected loader error" >&2; exit 1; }

echo "== ldconfig, then:"
"$ldconfig"
ldd ./train | grep koala
ldd ./train | grep -q '/usr/local/lib.*/libkoala.so.1' || { echo "FAILED: not the installed libkoala" >&2; exit 1; }
./train | tee out.txt
grep -q 'step 0' out.txt || { echo "FAILED: the README program printed no step" >&2; exit 1; }

if command -v gfortran >/dev/null 2>&1 && pkg-config --exists koala-fortran; then
  echo "== Fortran: pkg-config koala-fortran: $(pkg-config --cflags --libs koala-fortran)"
  # shellcheck disable=SC2046
  gfortran "$src/tests/packaging/hello.f90" $(pkg-config --cflags --libs koala-fortran) -o hello
  ./hello
else
  echo "== (no gfortran or no koala-fortran.pc: the Fortran check is skipped)"
fi

cargo=$(command -v cargo || true)
[ -n "$cargo" ] || { [ -x "$HOME/.cargo/bin/cargo" ] && cargo=$HOME/.cargo/bin/cargo; } || true
if [ -n "$cargo" ]; then
  echo "== Rust: the downstream crate, libkoala through pkg-config (koala.pc of the install)"
  mkdir -p crates/bindings crates/tests/rust crates/include
  tar -C "$src/bindings" --exclude=target --exclude=Cargo.lock -cf - rust | tar -C crates/bindings -xf -
  tar -C "$src/tests/rust" --exclude=target --exclude=Cargo.lock -cf - downstream | tar -C crates/tests/rust -xf -
  (cd crates/tests/rust/downstream &&
    CARGO_TARGET_DIR="$build/tests/packaging/cargo-target" "$cargo" build --offline --jobs 2 --quiet --bins)
  # no rpath, no LD_LIBRARY_PATH, no cargo: only the loader cache
  "$build/tests/packaging/cargo-target/debug/koala-downstream-plain"
else
  echo "== (no cargo: the Rust check is skipped)"
fi
echo "install-ldconfig: OK"
