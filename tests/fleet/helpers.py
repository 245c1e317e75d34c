"""Simulated fleets for the fleet-scanner tests: runs in several trainer layouts, grown step by step."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rlaudit.organisms import simulate

SRC = Path(__file__).resolve().parents[2] / "src"
# (scenario, format, place under the root): CoT-grading leaks (high, found by the cheap per-step scan), a
# clean control, and a run in another layout.
FLEET = [("cot_template", "prime-rl", "team-a/cot"), ("clean_basic", "verl", "team-b/clean"),
         ("cot_template", "trl", "team-b/template")]
_STEP = re.compile(r"(?:step_|completions_|^)0*(\d+)(?:\.jsonl|\.parquet)?$")


def make_full(base: Path, steps: int = 16, fleet: list[tuple[str, str, str]] | None = None) -> Path:
    """Simulate every run of `fleet` completely under `base/full/`."""
    full = base / "full"
    for scenario, fmt, place in fleet or FLEET:
        simulate(scenario, full / place, format=fmt, steps=steps, prompts=8, generations=4, seed=1)
    return full


def step_of(rel: Path) -> int | None:
    for part in reversed(rel.parts):
        m = _STEP.search(part)
        if m:
            return int(m.group(1))
    return None


def copy_upto(full: Path, root: Path, upto: int, only: str | None = None) -> int:
    """Copy the files of steps <= `upto` (and every file without a step) from `full` to `root`; returns the
    number of files copied (already present files are left alone: a trainer appends)."""
    n = 0
    for src in sorted(full.rglob("*")):
        if not src.is_file():
            continue
        rel = src.relative_to(full)
        if only and not str(rel).startswith(only):
            continue
        step = step_of(rel)
        dst = root / rel
        if (step is None or step <= upto) and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            n += 1
    return n


def alert_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], bool], timeout: float = 120.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return False


def rlaudit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from rlaudit.cli import main; sys.argv[0] = 'rlaudit'; main()", *args]


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    import os

    e = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(rlaudit_cmd(*args), capture_output=True, text=True, env=e, timeout=timeout)


def exit_if_marked(task):  # noqa: ANN001, ANN201 - a LocalEngine.task_fn for the retry tests
    """Stand-in worker task: the process dies (as if SIGKILLed) when the task's run name contains "die" and its
    attempt log does not yet hold `die-once`'s first attempt; otherwise it returns an ok outcome. Runs named
    "die-always" die on every attempt, "die-once" only on the first."""
    import os

    from rlaudit.fleet.worker import RunOutcome, _note_attempt

    before = _note_attempt(task.attempt_log, socket.gethostname())
    if "die-always" in task.name or ("die-once" in task.name and not before):
        os._exit(9)
    time.sleep(0.2)  # long enough for the other tasks of the window to be in the pool when one dies
    return RunOutcome(name=task.name, ok=True, attempts=before)
