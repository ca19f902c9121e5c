#!/usr/bin/env bash
# The outside-consumer test: installs this build into a scratch DESTDIR,
# builds train.c against the INSTALLED header, library and koala.pc (strict
# C99, -Wall -Wextra -Werror), runs it, and runs it again through the
# dynamic loader with --inhibit-cache (tests/scratch_install.sh).
#
# usage: run_consumer.sh BUILD_DIR TRAIN_C
set -euo pipefail
source "$(dirname "$0")/../../scratch_install.sh"

scratch_install run_consumer "$1"
# $flags must stay split into words.
# shellcheck disable=SC2086
"$cc" -std=c99 -Wall -Wextra -Werror -pedantic "$2" -o "$scratch/train" $flags -lm
run_installed_program run_consumer "$scratch/train"
