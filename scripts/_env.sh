# Shared by the quick-start scripts: make sure a Python 3.11+ virtualenv exists at $VENV (default .venv).
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  PY=$(command -v python3.11 || command -v python3)
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "rlaudit needs Python >= 3.11" >&2; exit 1; }
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip 2>/dev/null || true
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# pip install, quietly: this workplace's pip config names local indexes that may be absent, and pip warns
# about each of them on every call; those lines (and only those) are dropped.
pip_install() {
  "$VENV/bin/pip" install -q "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}
