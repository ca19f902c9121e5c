#!/bin/sh
# install_mod.sh MODFILE INCLUDEDIR: run by `meson install` to put the Fortran
# module file next to koala.h (Meson itself does not install .mod files).
set -eu
mod=$1
incdir=$2
case $incdir in
  /*) dest="${DESTDIR:-}$incdir" ;;
  *)  dest="$MESON_INSTALL_DESTDIR_PREFIX/$incdir" ;;
esac
mkdir -p "$dest"
cp "$mod" "$dest/"
echo "Installing $mod to $dest"
