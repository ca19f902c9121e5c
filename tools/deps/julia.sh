#!/usr/bin/env bash
# The Julia package (bindings/julia) and its suite: a private Julia 1.5.3
# (Debian 12 has none) under /opt/koala-julia, by tools/install-julia.sh
# (about 25 s the first time, a no-op afterwards). tests/julia/run_julia.sh
# finds it there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
apt_install ca-certificates debian-archive-keyring dpkg-dev
bash "$here/../install-julia.sh" /opt/koala-julia >/dev/null
