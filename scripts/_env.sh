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
