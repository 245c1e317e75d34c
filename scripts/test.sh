#!/usr/bin/env bash
# Set up the environment (a .venv in the project) and run the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh
"$VENV/bin/pip" install -q -e ".[test]"
exec "$VENV/bin/python" -m pytest -q "$@"
