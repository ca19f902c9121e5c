#!/bin/sh
# run_in_venv.sh PYTHON ARGS...: runs PYTHON ARGS (a .venv/torch* interpreter:
# pytest, the digits example); exit 77 (meson: skipped) when it is missing.
py=$1
shift
if [ ! -x "$py" ]; then
  echo "skipped: $py not found (run tools/deps/python.sh, tools/deps/torch-pypi.sh)"
  exit 77
fi
exec "$py" "$@"
