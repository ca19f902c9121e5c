#!/usr/bin/env bash
# The API reference (doc/api): Debian's doxygen (1.9.4 on Debian 12) turns
# the comments of include/koala.h into HTML and man pages (man3); its meson
# test fails on any doxygen warning.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
apt_install doxygen
