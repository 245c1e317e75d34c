"""Fault injection with real file systems (needs permission to mount; skipped otherwise): a store on a small
tmpfs that fills up, and a store mounted read-only."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from rlaudit.audit import audit_store
from rlaudit.live import LiveConfig, LiveHook
from rlaudit.store import Store
from tests.live.helpers import NERDY, PLAIN, step_batch


def _mount(args: list[str]) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def mounts():
    done: list[Path] = []

    def mount(args: list[str], target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or not _mount([*args, str(target)]):
            pytest.skip("cannot mount file systems here")
        done.append(target)

    yield mount
    for target in reversed(done):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_full_disk_under_a_live_hook_loses_no_step(tmp_path, mounts):
    disk = tmp_path / "small"
    mounts(["-t", "tmpfs", "-o", "size=4m", "tmpfs"], disk)
    hook = LiveHook(disk / "store", "full", config=LiveConfig(detectors=[], every_step=(), background=None))
    for step in range(3):
        b = step_batch(step, 8, {NERDY: 0.3, PLAIN: 0.1})
        hook.log_rollouts(step, b["prompts"], b["completions"], b["rewards"])
    filler = disk / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb") as fh:  # fill the disk
        try:
            while True:
                fh.write(b"\0" * (1 << 16))
                fh.flush()
        except OSError:
            pass
    for step in range(3, 6):
        b = step_batch(step, 8, {NERDY: 0.3, PLAIN: 0.1})
        hook.log_rollouts(step, b["prompts"], b["completions"], b["rewards"])
    gaps = [f for f in hook.findings if f.get("problem") == "steps_not_stored"]
    assert gaps and gaps[0]["missing_steps"] == [3, 4, 5]
    filler.unlink()  # space again
    b = step_batch(6, 8, {NERDY: 0.3, PLAIN: 0.1})
    hook.log_rollouts(6, b["prompts"], b["completions"], b["rewards"])
    hook.close()
    summary = Store(disk / "store").summary("full")
    assert summary.rows == 7 * 16 and summary.steps == (0, 6)
    assert not [f for f in hook.findings if f.get("problem") == "steps_not_stored"]


def test_audit_of_a_read_only_store_runs_every_detector(tmp_path, mounts):
    rw = tmp_path / "rw"
    store = Store(rw)
    for step in range(12):
        b = step_batch(step, 16, {NERDY: 0.05 + 0.07 * step, PLAIN: 0.05})
        table = LiveHook(store, "ro", config=LiveConfig(detectors=[], every_step=(), background=None)
                         ).rollout_table(step, b["prompts"], b["completions"], b["rewards"])
        store.append("ro", table, f"step-{step}")
    ro = tmp_path / "ro"
    mounts(["--bind", "-o", "ro", str(rw)], ro)
    result = audit_store(Store(ro), ["ro"])
    errors = [f.title for f in result.findings if f.kind == "audit_error"]
    assert not errors, errors
