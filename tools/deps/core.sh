#!/usr/bin/env bash
# The core library, its C tests and the C demo: compiler, Meson, CMocka.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
apt_install build-essential meson ninja-build pkg-config libcmocka-dev
