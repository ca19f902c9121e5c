#!/bin/sh
# run_julia.sh: runs tests/julia/runtests.jl (or the script given) with the
# private Julia that tools/deps/julia.sh installs; exit 77 (skipped) where
# there is no Julia. Julia is looked for in $KOALA_JULIA, then
# /opt/koala-julia/julia, then `julia` on PATH.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
julia=${KOALA_JULIA:-}
[ -n "$julia" ] || { [ -x /opt/koala-julia/julia ] && julia=/opt/koala-julia/julia; } || true
[ -n "$julia" ] || julia=$(command -v julia || true)
if [ -z "$julia" ]; then
  echo "SKIP: no julia (tools/deps/julia.sh installs one under /opt/koala-julia)"
  exit 77
fi
exec "$julia" --startup-file=no "${1:-$here/runtests.jl}"
