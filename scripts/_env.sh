# Shared by the quick-start scripts: make sure a Python 3.11+ virtualenv exists at $VENV (default .venv).
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  PY=$(command -v python3.11 || command -v python3)
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "rlaudit needs Python >= 3.11" >&2; exit 1; }
  echo "setup: creating $VENV with $("$PY" --version)" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip 2>/dev/null || true
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Python's default of keeping compiled modules, even where the environment turns it off (this workplace's machines
# set PYTHONDONTWRITEBYTECODE=1; so do many container images), since pip installs here without compiling (below):
# else every command compiles rlaudit, numpy, pyarrow, scipy, ... from source again. The test suite starts hundreds
# of Python processes (CLI, fleet workers, MCP and live servers): 3.4 s against 1.2 s for the detectors' imports,
# tests/fleet/test_scan.py + test_shard.py 138 -> 104 s (2026-12-04, 2-core machine); the demo's `rlaudit` commands
# each ~2 s (imports, numba and its kernels: 3.3-3.8 s without bytecode, 1.2-1.5 s with, 2026-12-08)
unset PYTHONDONTWRITEBYTECODE

# pip install with a line per step (a first install takes minutes): pip's own output is kept quiet, each
# package pip starts collecting is shown as one line, and the time the step took. This workplace's pip config
# names local indexes that may be absent, and pip warns about each of them on every call; those lines (and
# only those) are dropped. --no-compile: pip would byte-compile every module of every package it installs (torch
# alone: 46 s against 13 s without, 2026-12-03, 2-core machine at load 5); Python compiles a module when it is
# first imported and keeps the .pyc, so only what runs is ever compiled.
pip_install() {
  local start=$SECONDS
  echo "setup: pip install $* ..." >&2
  "$VENV/bin/pip" install --progress-bar off --no-compile "$@" \
    2> >(grep -v "^WARNING: Location '.*' is ignored" >&2) \
    | { grep --line-buffered -E "^(Collecting|Successfully installed)" || true; } \
    | sed -u -e 's/^Collecting \([^ ]*\).*/setup:   collecting \1/' -e 's/^Successfully installed /setup:   installed: /' >&2
  local rc=${PIPESTATUS[0]}
  echo "setup: done in $((SECONDS - start)) s" >&2
  return "$rc"
}
