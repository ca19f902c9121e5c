#!/usr/bin/env bash
# Many processes over MPI: examples/mpi (C and Fortran ZeRO-style training)
# and tests/mpi. Debian 12's Open MPI 4.1: mpicc/mpif90 wrappers and the
# pkg-config files meson's dependency('mpi') reads (libopenmpi-dev), mpirun
# (openmpi-bin). The Fortran example also needs gfortran (the fortran part).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
apt_install libopenmpi-dev openmpi-bin
