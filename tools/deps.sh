#!/usr/bin/env bash
# Installs what libkoala's build, tests and examples need on Debian 12 (root).
# Idempotent: only missing pieces are installed.
#   tools/deps.sh          everything (core first, then each tools/deps/*.sh)
#   tools/deps.sh core     only the named parts (core, python, jax, ...)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
parts=("$@")
if [ ${#parts[@]} -eq 0 ]; then
  parts=(core)
  for f in "$here"/deps/*.sh; do
    name=$(basename "$f" .sh)
    case $name in core|lib) ;; *) parts+=("$name") ;; esac
  done
fi
for p in "${parts[@]}"; do
  echo "== libkoala setup: $p" >&2
  bash "$here/deps/$p.sh"
done
