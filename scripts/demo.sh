#!/usr/bin/env bash
# The main job: set up, simulate three RL runs in three real trainer formats (a persona reward that pays for
# a goblin tic, a grader that sees the chain-of-thought through a rare fallback path, and a clean control),
# then audit them as one fleet. Writes out/findings.json and out/audit.html.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh
pip_install -e .
OUT=${OUT:-out}
rm -rf "$OUT"
mkdir -p "$OUT/runs"
RLAUDIT="$VENV/bin/rlaudit"
"$RLAUDIT" simulate goblin_persona --format trl --out "$OUT/runs/goblin-persona-trl"
"$RLAUDIT" simulate cot_fallback --format verl --out "$OUT/runs/cot-fallback-verl"
"$RLAUDIT" simulate clean_legit --format prime-rl --out "$OUT/runs/clean-legit-prime"
"$RLAUDIT" audit "$OUT"/runs/* --store "$OUT/store" --json "$OUT/findings.json" --report "$OUT/audit.html"
echo "ground truth of each run: $OUT/runs/*/ground_truth.json"
echo "what to do about each finding: $RLAUDIT findings $OUT/findings.json"
echo "the runs are in store $OUT/store: export RLAUDIT_STORE=$OUT/store (then: $RLAUDIT runs)"
