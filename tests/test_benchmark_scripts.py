"""The benchmark scripts the README's tables cite still run, each at a small size, as a subprocess.

They build their runs with rlaudit's own functions, so a change of the schema or an API can break them without
any other test noticing: three of them (`emerging.py`, `cot_scan.py`, `report_size.py`) built canonical tables
that lacked the tool-call columns added to the schema, and failed for every size until they were run again to
refresh the README's figures. Here each must exit 0 and print the line that carries its figure. The figures
themselves are not checked: a few thousand rollouts say nothing about speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: (script, its smallest sensible arguments, a line it prints with its figures)
CASES = [
    ("audit.py", ["--rollouts", "20000"], "cold audit total:"),
    ("audit_memory.py", ["--rollouts", "20000", "--no-trace"], "process peak RSS"),
    ("ingest.py", ["--rows", "8000", "--formats", "trl"], "SUMMARY trl:"),
    ("ingest.py", ["--rows", "10000", "--steps-per-file", "2", "--formats", "prime-rl"], "SUMMARY prime-rl:"),
    ("emerging.py", ["--rollouts", "4000", "--per-step", "200"], "planted tic:"),
    ("attribution.py", ["--rows", "4000", "--boot", "50", "--repeat", "1"], "trace goblin"),
    ("cot_scan.py", ["--rollouts", "4000", "--chunk", "2000", "--steps", "20"], "exposed found:"),
    ("reward_health.py", ["--rows", "4000"], "reward_health cold"),
    ("training_health.py", ["--rows", "4000"], "training_health:"),
    ("report_size.py", ["--rows", "2000", "--steps", "20", "--findings", "5"], "report:"),
    ("live_overhead.py", ["--steps", "24", "--every", "10", "--window", "3"], "late / early:"),
    ("capture_overhead.py", ["--batches", "2", "--repeats", "1"], "overhead"),
    ("ab.py", ["WORKTREE", "WORKTREE", "--rollouts", "20000", "--turns", "1"], "B - A, wall ratio:"),
]


@pytest.mark.parametrize("script, args, line", CASES, ids=[f"{c[0]}-{c[1][-1]}" if c[0] == "ingest.py" else c[0]
                                                           for c in CASES])
def test_benchmark_script_runs(script: str, args: list[str], line: str, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{script} {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
    assert line in done.stdout, f"{script} printed no {line!r}:\n{done.stdout[-3000:]}"


def test_ab_names_a_revision_it_cannot_find(tmp_path: Path) -> None:
    """`ab.py` stops on a revision git does not know, naming it, before it generates or measures anything."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ab.py"), "no-such-revision", "WORKTREE",
                           "--rollouts", "20000", "--keep", str(tmp_path / "run")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "'no-such-revision' is not a revision" in done.stderr
    assert not (tmp_path / "run").exists()


def test_audit_generates_again_a_run_whose_generation_stopped(tmp_path: Path) -> None:
    """`audit.py --keep DIR` on a DIR whose generation was stopped (its steps begun, no last step) generates the
    run again instead of failing on the missing last step."""
    kept = tmp_path / "kept"
    (kept / "run" / "completions").mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "audit.py"), "--rollouts", "20000",
                           "--keep", str(kept)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "generation was stopped" in done.stdout and "generated 20,000 rollouts" in done.stdout
    assert "cold audit total:" in done.stdout
    assert len(list((kept / "last").glob("*.parquet"))) == 1
