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
JOBS=${CONFORMANCE_JOBS:-2}  # trainers generated at once: installs wait on the network, generators on the CPU

# One trainer: install its venv, run its generator. Exit 0 done, 77 skipped, anything else failed.
generate() {
  local t=$1 dir=conformance/$1 started=$SECONDS venv python status=0
  [ -f "$dir/generate.py" ] || { echo "conformance: no $dir/generate.py" >&2; return 2; }
  if [ -f "$dir/requires-env" ]; then  # variables naming what no registry serves (a source checkout)
    local missing
    missing=$(grep -v '^#' "$dir/requires-env" | while read -r var; do [ -n "$var" ] && [ -z "${!var:-}" ] && echo "$var"; done || true)
    if [ -n "$missing" ]; then
      echo "conformance: $t: skipped ($(echo $missing) unset; see $dir/requires-env); its tests read tests/conformance/fixtures/$t"
      return 77
    fi
  fi
  if [ -f "$dir/requirements.txt" ]; then
    venv=.venv-conformance/$t
    [ -x "$venv/bin/python" ] || "$PY3" -m venv "$venv"
    pipq() { "$venv/bin/pip" install -q --no-compile --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }
    # --no-compile as in scripts/_env.sh: a generator imports a small part of what is installed
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
  HF_HUB_OFFLINE=1 "$python" "$dir/generate.py" "$OUT/$t" || status=$?
  if [ "$status" -eq 77 ]; then  # a prerequisite this machine cannot have (see the generator's message)
    echo "conformance: $t: skipped; its tests read tests/conformance/fixtures/$t"; return 77
  elif [ "$status" -ne 0 ]; then
    echo "conformance: $t: generate.py failed (exit $status)"; return "$status"
  fi
  touch "$OUT/$t/.complete"  # tests/conformance/logs.py reads only complete output
  echo "conformance: $t: done in $((SECONDS - started)) s -> $OUT/$t"
}

mkdir -p "$OUT/.logs"
declare -A PIDS
for t in "${TRAINERS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  echo "conformance: $t: started (log: $OUT/.logs/$t.log)"
  generate "$t" > "$OUT/.logs/$t.log" 2>&1 &
  PIDS[$t]=$!
done
failed=()
for t in "${TRAINERS[@]}"; do
  status=0; wait "${PIDS[$t]}" || status=$?
  if [ "$status" -ne 0 ] && [ "$status" -ne 77 ]; then
    failed+=("$t"); cat "$OUT/.logs/$t.log" >&2
  else
    grep "^conformance:" "$OUT/.logs/$t.log" || true
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then echo "conformance: failed: ${failed[*]}" >&2; exit 1; fi
