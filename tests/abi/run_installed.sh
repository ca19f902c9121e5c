#!/usr/bin/env bash
# The 1.0-header program against the INSTALLED library: installs this build
# into a scratch DESTDIR (runtime and devel tags, as a distribution package
# would), builds test_abi_1_0.c (frozen 1.0 header) and current_header_run.c
# (the INSTALLED koala.h) with `pkg-config --cflags --libs koala`, strict C99,
# checks the program resolves the installed libkoala.so.1, and runs it, then
# again through the dynamic loader with --inhibit-cache
# (tests/scratch_install.sh).
#
# usage: run_installed.sh BUILD_DIR ABI_SOURCE_DIR
set -euo pipefail
source "$(dirname "$0")/../scratch_install.sh"

abi_dir=$2
scratch_install run_installed "$1"
# The 1.0 half finds koala-1.0.h and abi_problem.h next to itself (quoted
# includes); the current half gets <koala.h> from the install only.
# shellcheck disable=SC2086
"$cc" -std=c99 -Wall -Wextra -Werror -pedantic \
  "$abi_dir/test_abi_1_0.c" "$abi_dir/current_header_run.c" -o "$scratch/abi_1_0" $flags -lm
run_installed_program run_installed "$scratch/abi_1_0"
