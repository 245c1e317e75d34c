#!/usr/bin/env bash
# Set up the environment (a .venv in the project) and run the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh
pip_install torch==2.13.0   # the local CPU wheel first: a bare `torch` requirement would pull a CUDA build
pip_install -e ".[test,fast,trl,mcp,llm,inspect,ray,fleet-test]"   # ray: ~26 s and 285 MB more (docs/fleet.md);
# fast: numba, so the compiled term-set kernels are tested against the numpy path (tests/core/test_kernels.py)
# Test files spread over workers (pytest-xdist, a file's tests stay on one worker): min(cores, 4) by default, so a
# 2-core CI machine runs two files at once (many tests wait on subprocesses, servers and browsers), handed out in
# collection order, where tests/conftest.py puts the slowest files first (--no-loadscope-reorder);
# RLAUDIT_TEST_WORKERS=0 runs in this process, and a `-n N` among the arguments overrides either. The cores are
# counted without OMP_NUM_THREADS, which scripts/_env.sh sets to 1 and GNU nproc takes for the number of cores.
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
WORKERS=${RLAUDIT_TEST_WORKERS:-$(( CORES < 4 ? CORES : 4 ))}
# The whole output also goes to build/test.log; when pytest fails, the lines that say what failed (failed and
# erroring tests, an xdist worker's INTERNALERROR and its exception, a report that could not be sent:
# tests/sendable_reports.py) are repeated last, where a CI log cut to its end still shows them.
mkdir -p build
LOG=build/test.log
COLOR=$([ -t 1 ] && echo --color=yes || echo --color=auto)   # pytest's colours on a terminal, through tee
set +e
"$VENV/bin/python" -m pytest -q "$COLOR" -n "$WORKERS" --dist loadfile --no-loadscope-reorder "$@" 2>&1 | tee "$LOG"
STATUS=${PIPESTATUS[0]}
set -e
if [ "$STATUS" -ne 0 ]; then
  echo "== scripts/test.sh: pytest exited with $STATUS; what failed (the whole output: $LOG):"
  grep -E '^(FAILED|ERROR) |rlaudit tests: |^INTERNALERROR> E +([A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_]*(Error|Exception|Exit|Interrupt)\b' \
    "$LOG" | cut -c1-400 | tail -n 40 || true
fi
exit "$STATUS"
