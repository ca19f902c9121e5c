#!/usr/bin/env bash
# Runs one program under mpirun on this machine only, bounded in time.
#
#   run_mpi.sh NP SECONDS PROGRAM [ARGS...]
#
# - Exit 77 (meson: SKIP) when MPI is not usable here: no mpirun on PATH, or
#   PROGRAM is "-" (meson found no MPI at configure time and built nothing).
# - Open MPI on loopback only: the TCP transport and the runtime's own
#   out-of-band channel on `lo`, no shared-memory or network probing, so the
#   run needs no network and is the same in a container as on a laptop.
#   --oversubscribe: NP may exceed the 2 cores; --allow-run-as-root: CI runs
#   as root (Open MPI refuses to otherwise).
# - Every rank gets KOALA_NUM_THREADS=1 (the library's pool: one thread per
#   rank on a 2-core machine; programs also set cfg.threads = 1).
# - After SECONDS, mpirun gets SIGTERM (it forwards it to the ranks); 5 s
#   later every process still in mpirun's session is killed by pid, so a rank
#   stuck in a collective never outlives the test.
# - RUN_MPI_EXPECT_FAILED_CHECKS=1: the run is a negative control; it passes
#   only when the program ran to its end and reported failed checks (exit
#   status 1), not when it crashed, aborted or timed out.
set -u
if [ $# -lt 3 ]; then
  echo "usage: run_mpi.sh NP SECONDS PROGRAM [ARGS...]" >&2
  exit 2
fi
np=$1 seconds=$2 program=$3
shift 3
if [ "$program" = "-" ]; then
  echo "SKIP: libkoala was configured without MPI (bash tools/deps.sh mpi, then reconfigure)"
  exit 77
fi
mpirun=$(command -v mpirun || true)
if [ -z "$mpirun" ]; then
  echo "SKIP: mpirun is not on PATH (bash tools/deps.sh mpi installs Open MPI)"
  exit 77
fi
command -v setsid >/dev/null || { echo "run_mpi.sh: setsid (util-linux) is missing" >&2; exit 1; }

args=(--oversubscribe -np "$np"
      --mca btl self,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo
      -x KOALA_NUM_THREADS=1 -x OMP_NUM_THREADS=1)
[ "$(id -u)" -eq 0 ] && args=(--allow-run-as-root "${args[@]}")
# Ranks print lines in any order; --tag-output says which rank wrote what.
args+=(--tag-output)

# setsid: mpirun leads a new session, so the ranks (which Open MPI puts in
# process groups of their own) can still be found by session id.
setsid "$mpirun" "${args[@]}" "$program" "$@" &
pid=$!

kill_session() {
  local left
  left=$(ps -o pid= -s "$pid" 2>/dev/null | tr -d ' ' | tr '\n' ' ')
  [ -n "$left" ] && kill -KILL $left 2>/dev/null
}
(
  # Each sleep is a child of its own: on TERM (the run ended in time) the
  # trap ends it at once, so no stray sleep outlives the test.
  sleeper=
  trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
  nap() { sleep "$1" & sleeper=$!; wait "$sleeper"; }
  nap "$seconds"
  echo "run_mpi.sh: mpirun -np $np $program ran past $seconds s; stopping it" >&2
  kill -TERM "$pid" 2>/dev/null
  nap 5
  kill_session
) &
watchdog=$!

wait "$pid"
rc=$?
kill "$watchdog" 2>/dev/null
wait "$watchdog" 2>/dev/null
kill_session  # ranks that outlived mpirun (none when it exits normally)
if [ "${RUN_MPI_EXPECT_FAILED_CHECKS:-0}" = 1 ]; then
  if [ "$rc" -eq 1 ]; then
    echo "run_mpi.sh: negative control: the checks failed, as they must"
    exit 0
  fi
  echo "run_mpi.sh: negative control: expected exit status 1 (failed checks), got $rc" >&2
  exit 1
fi
exit $rc
