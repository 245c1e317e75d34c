"""Item 14: probe-grader against graders that exit, return only NaN, or hang."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detectors"))
from cot_synth import make_run  # noqa: E402

from rlaudit.errors import RlauditError  # noqa: E402
from rlaudit.cot.probe import ProbeConfig, load_rollouts, probe  # noqa: E402
from rlaudit.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("probe") / "store")
    table, _ = make_run(run="probe", steps=4, groups=4, group_size=4, seed=7)
    store.append("probe", table, "p")
    return load_rollouts(store, "probe", samples=30)


def exits(prompts, completions, **kw):
    sys.exit(0)


def all_nan(prompts, completions, **kw):
    return [math.nan] * len(completions)


def hangs(prompts, completions, **kw):
    time.sleep(30)
    return [0.0] * len(completions)


def test_grader_calling_sys_exit_is_an_error(rows):
    with pytest.raises(RlauditError, match="sys.exit|SystemExit"):
        probe(exits, rows, ProbeConfig(signature="trl"))


def test_grader_returning_only_nan_is_not_declared_insensitive(rows):
    with pytest.raises(RlauditError, match="NaN|no score"):
        probe(all_nan, rows, ProbeConfig(signature="trl"))


def test_hanging_grader_times_out(rows):
    started = time.monotonic()
    with pytest.raises(RlauditError, match="did not return within"):
        probe(hangs, rows, ProbeConfig(signature="trl", timeout=1.0))
    assert time.monotonic() - started < 10


def test_cli_probe_grader_with_exiting_grader_is_an_error(tmp_path, rows):
    from typer.testing import CliRunner

    from rlaudit.cli import app

    store = Store(tmp_path / "store")
    table, _ = make_run(run="probe", steps=4, groups=4, group_size=4, seed=7)
    store.append("probe", table, "p")
    grader = tmp_path / "g.py"
    grader.write_text("import sys\ndef grade(prompts, completions, **kw):\n    sys.exit(0)\n")
    res = CliRunner().invoke(app, ["probe-grader", f"{grader}:grade", "probe", "--store", str(store.root),
                                   "--samples", "20"], standalone_mode=False)
    assert isinstance(res.exception, RlauditError) and "sys.exit" in str(res.exception)
