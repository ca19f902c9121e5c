#!/usr/bin/env bash
# The Fortran binding (`module koala`), its tests and example: gfortran.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
apt_install gfortran
