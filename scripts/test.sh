#!/usr/bin/env bash
# Set up the environment (a .venv in the project) and run the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh
"$VENV/bin/pip" install -q torch==2.13.0   # the local CPU wheel first: a bare `torch` requirement would pull a CUDA build
"$VENV/bin/pip" install -q -e ".[test,trl]"
exec "$VENV/bin/python" -m pytest -q "$@"
