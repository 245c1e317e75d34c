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
# RLAUDIT_TEST_WORKERS=0 runs in this process, and a `-n N` among the arguments overrides either
WORKERS=${RLAUDIT_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}
exec "$VENV/bin/python" -m pytest -q -n "$WORKERS" --dist loadfile --no-loadscope-reorder "$@"
