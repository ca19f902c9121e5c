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
# Usage: run_julia.sh [SCRIPT [JULIA_OPTION...]]. Without options, the test
# script runs with --compile=min: it calls each method only a few times, so
# Julia's interpreter beats compiling it (3 s instead of 25 s here). The
# example (array-heavy loops) prefers -O0. libkoala computes the numbers
# either way.
script=${1:-$here/runtests.jl}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] || set -- --compile=min
exec "$julia" --startup-file=no "$@" "$script"
