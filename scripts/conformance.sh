#!/usr/bin/env bash
# Regenerate the conformance logs with each trainer's own code (see conformance/README.md).
#   bash scripts/conformance.sh [TRAINER...]      # default: every conformance/<trainer>/ with a generate.py
# Each trainer gets its own virtualenv, .venv-conformance/<trainer>: `requirements.txt` is installed as usual and
# `requirements-nodeps.txt` with --no-deps (packages whose full dependency set is GPU-only). A trainer without a
# requirements.txt runs in the project's own .venv (TRL: the [trl] extra). Logs go to build/conformance/<trainer>;
# the tests read them there when RLAUDIT_CONFORMANCE_DIR=build/conformance, else the committed fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh
OUT=${RLAUDIT_CONFORMANCE_DIR:-build/conformance}
if [ "$#" -gt 0 ]; then TRAINERS=("$@"); else
  TRAINERS=(); for d in conformance/*/; do [ -f "$d/generate.py" ] && TRAINERS+=("$(basename "$d")"); done
fi
PY3=$(command -v python3.11 || command -v python3)
for t in "${TRAINERS[@]}"; do
  dir=conformance/$t
  [ -f "$dir/generate.py" ] || { echo "conformance: no $dir/generate.py" >&2; exit 2; }
  started=$SECONDS
  if [ -f "$dir/requirements.txt" ]; then
    venv=.venv-conformance/$t
    [ -x "$venv/bin/python" ] || "$PY3" -m venv "$venv"
    pipq() { "$venv/bin/pip" install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }
    # the local CPU torch wheel first, so that no requirement pulls a CUDA build
    if grep -qiE '^torch([=<> ]|$)' "$dir/requirements.txt"; then pipq torch==2.13.0; fi
    pipq -r "$dir/requirements.txt"
    if [ -f "$dir/requirements-nodeps.txt" ]; then pipq --no-deps -r "$dir/requirements-nodeps.txt"; fi
    python=$venv/bin/python
  else  # the project's own venv with the [trl] extra, as scripts/test.sh sets it up
    pip_install torch==2.13.0
    pip_install -e ".[test,trl]"
    python=$VENV/bin/python
  fi
  rm -rf "${OUT:?}/$t"; mkdir -p "$OUT/$t"
  echo "conformance: $t: generating with its own code ($python)"
  HF_HUB_OFFLINE=1 "$python" "$dir/generate.py" "$OUT/$t"
  echo "conformance: $t: done in $((SECONDS - started)) s -> $OUT/$t"
done
