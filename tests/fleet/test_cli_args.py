"""The fleet commands refuse worker and shard counts that mean nothing, instead of running with a default: a
`--workers 0` or `--workers -3` used to start the default pool silently."""

from __future__ import annotations

import subprocess

import pytest

from .helpers import rlaudit_cmd


@pytest.mark.parametrize(("args", "option"), [
    (["scan", "ROOT", "--workers", "0"], "--workers"),
    (["scan", "ROOT", "--workers", "-3"], "--workers"),
    (["audit", "RUN", "--workers", "0"], "--workers"),
    (["audit", "RUN", "--shards", "-1"], "--shards"),
])
def test_meaningless_counts_are_refused(tmp_path, args, option):
    args = [str(tmp_path / a) if a in ("ROOT", "RUN") else a for a in args]
    proc = subprocess.run(rlaudit_cmd("fleet", *args, "--store", str(tmp_path / "st")), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"Invalid value for '{option}'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "st").exists()  # refused before anything was stored
