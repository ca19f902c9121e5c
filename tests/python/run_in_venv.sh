#!/bin/sh
# run_pytest.sh PYTHON TESTDIR [pytest args]: the Python suite under the
# .venv/torch interpreter; exit 77 (meson: skipped) when that venv is missing.
py=$1
shift
if [ ! -x "$py" ]; then
  echo "skipped: $py not found (run tools/deps/python.sh)"
  exit 77
fi
exec "$py" -m pytest -q -p no:cacheprovider "$@"
