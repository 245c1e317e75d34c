#!/usr/bin/env bash
# Regenerate the conformance logs with each trainer's own code (see conformance/README.md).
#   bash scripts/conformance.sh [TRAINER...]      # default: every conformance/<trainer>/ with a generate.py
# Each trainer gets its own virtualenv, .venv-conformance/<trainer>: `requirements.txt` is installed as usual and
# `requirements-nodeps.txt` with --no-deps (packages whose full dependency set is GPU-only). A trainer without a
# requirements.txt runs in the project's own .venv (TRL: the [trl] extra). Logs go to build/conformance/<trainer>;
# the tests read them there when RLAUDIT_CONFORMANCE_DIR=build/conformance, else the committed fixtures. A
# generator exits 77 when a prerequisite cannot be had here (NeMo RL: no PyPI release, needs NEMO_RL_SRC).
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
  if [ -f "$dir/requires-env" ]; then  # variables naming what no registry serves (a source checkout)
    missing=$(grep -v '^#' "$dir/requires-env" | while read -r var; do [ -n "$var" ] && [ -z "${!var:-}" ] && echo "$var"; done || true)
    if [ -n "$missing" ]; then
      echo "conformance: $t: skipped ($(echo $missing) unset; see $dir/requires-env); its tests read tests/conformance/fixtures/$t"
      continue
    fi
  fi
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
  status=0
  HF_HUB_OFFLINE=1 "$python" "$dir/generate.py" "$OUT/$t" || status=$?
  if [ "$status" -eq 77 ]; then  # a prerequisite this machine cannot have (see the generator's message)
    echo "conformance: $t: skipped; its tests read tests/conformance/fixtures/$t"
    continue
  elif [ "$status" -ne 0 ]; then
    echo "conformance: $t: generate.py failed (exit $status)" >&2; exit "$status"
  fi
  touch "$OUT/$t/.complete"  # tests/conformance/logs.py reads only complete output
  echo "conformance: $t: done in $((SECONDS - started)) s -> $OUT/$t"
done
