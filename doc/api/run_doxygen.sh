#!/bin/sh
# run_doxygen.sh DOXYGEN DOXYFILE OUTDIR: builds the API reference into
# OUTDIR/html and OUTDIR/man3 (the Doxyfile names OUTDIR), from scratch so
# that no page of a removed declaration survives. Doxygen's MAN_LINKS gives
# every documented name a man page; the ones of struct fields (lr.3, a.3,
# phase.3, ...) would clutter man3 with generic names, so only pages whose
# names start with koala/KOALA (functions, types, enums, macros, koala.h
# itself) are kept: the fields are on the struct pages.
set -eu
doxygen=$1
doxyfile=$2
outdir=$3
rm -rf "$outdir/html" "$outdir/man3"
"$doxygen" "$doxyfile"
for page in "$outdir"/man3/*.3; do
  case $(basename "$page") in
    koala*|KOALA*) ;;
    *) rm -f "$page" ;;
  esac
done
