#!/bin/sh
# check_api_reference.sh DOXYGEN DOXYFILE HEADER: the API reference check
# (meson test api-reference, suite docs).
#  1. doxygen runs on the project's Doxyfile into a scratch directory with
#     WARN_AS_ERROR=FAIL_ON_WARNINGS: any warning (an undocumented
#     declaration, a broken command, ...) fails the test and is printed;
#  2. every function koala.h declares has a man page and an entry in the
#     HTML page of koala.h, and each struct has its own page: the reference
#     documents the whole API, not just what doxygen happened to find.
set -eu
doxygen=$1
doxyfile=$2
header=$3
scratch=$(mktemp -d "${TMPDIR:-/tmp}/koala-apiref.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
warnings=$scratch/warnings.txt

# Later assignments override earlier ones in a Doxyfile read from stdin.
status=0
{ cat "$doxyfile"
  echo "OUTPUT_DIRECTORY = $scratch"
  echo "WARN_LOGFILE = $warnings"
  echo "WARN_AS_ERROR = FAIL_ON_WARNINGS"
} | "$doxygen" - >"$scratch/doxygen.log" 2>&1 || status=$?
count=$(grep -c . "$warnings" 2>/dev/null || true)
if [ "$status" -ne 0 ] || [ "${count:-0}" -ne 0 ]; then
  echo "not ok: doxygen exited $status with ${count:-0} warning(s):"
  cat "$warnings" 2>/dev/null || true
  cat "$scratch/doxygen.log"
  exit 1
fi
echo "ok: doxygen $("$doxygen" --version): no warnings"

# The functions of koala.h: `KOALA_API <type> name(` or `KOALA_API <type> (name)(`.
functions=$(grep -E '^KOALA_API ' "$header" | sed -E 's/^KOALA_API [^(]*[ *(]\(?(koala_[a-z0-9_]+)\)?\(.*/\1/' | sort -u)
n=0
missing=
for f in $functions; do
  n=$((n + 1))
  [ -f "$scratch/man3/$f.3" ] || missing="$missing man3/$f.3"
  grep -q "id=\"[^\"]*\">.*$f\|>$f<" "$scratch/html/koala_8h.html" || missing="$missing html:$f"
done
for s in koala_config koala_info koala_shard; do
  [ -f "$scratch/man3/$s.3" ] || missing="$missing man3/$s.3"
  page=struct$(echo "$s" | sed 's/_/__/g').html   # doxygen doubles underscores
  [ -f "$scratch/html/$page" ] || missing="$missing html/$page"
done
[ -f "$scratch/man3/koala.h.3" ] || missing="$missing man3/koala.h.3"
# the export macro is an implementation detail: no signature may show it
# (the verbatim copy of the header, *_source.html, of course does)
leaks=$(grep -l 'KOALA_API' "$scratch"/man3/*.3 "$scratch"/html/*.html 2>/dev/null | grep -v '_source\.html$' || true)
if [ -n "$leaks" ]; then
  echo "not ok: KOALA_API appears in:" $leaks
  exit 1
fi
if [ "$n" -lt 20 ]; then
  echo "not ok: only $n functions found in $header (the pattern is broken?)"
  exit 1
fi
if [ -n "$missing" ]; then
  echo "not ok: missing from the reference:$missing"
  exit 1
fi
echo "ok: all $n functions of koala.h and its 3 structs are documented (HTML and man3)"
