"""The emerging and generalization findings of the per-part cell tables (`rlaudit.derived.termcells`) equal those of the
per-rollout scope they replaced, recorded in `data/emerging_equivalence.json` by `emerging_equivalence.py` at
commit 176a72d: same findings, severities, titles, onsets, terms, evidence; numbers to 1e-9 (relative)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from emerging_equivalence import SCENARIOS, scenario_modes

RECORDED = json.loads((Path(__file__).parent / "data" / "emerging_equivalence.json").read_text())


def same(a, b, path="") -> list[str]:
    """Differences between two summaries (floats to 1e-9 relative, everything else exactly)."""
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None or not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            return [f"{path}: {a!r} != {b!r}"]
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in same(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_the_comparison_can_fail():
    one = RECORDED["goblin_persona"]["cold"]
    assert not same(one, one)
    changed = json.loads(json.dumps(one))
    changed[0]["fields"]["q_value"] *= 1 + 1e-6
    assert same(one, changed)


@pytest.mark.parametrize("name", SCENARIOS)
def test_findings_equal_the_per_rollout_path(name, tmp_path):
    now = scenario_modes(name, tmp_path)
    for mode, recorded in RECORDED[name].items():
        diffs = same(recorded, now[mode], f"{name}/{mode}")
        assert not diffs, diffs[:10]


def test_steps_shared_by_parts_give_the_same_findings(tmp_path):
    """Parts that share steps (each step's rows split between two parts) give the findings of parts that do
    not: the cell and count rows of a shared step are summed (the aggregation a run without shared steps skips)."""
    import numpy as np
    import pyarrow as pa
    from emerging_equivalence import DETECTORS, SIZE, summarise

    from rlaudit.detectors import AuditConfig, run_detectors
    from rlaudit.organisms import run as simulate_run
    from rlaudit.store import Store

    table = simulate_run("goblin_persona", seed=0, run_name="sim", **SIZE).canonical()
    whole, split = Store(tmp_path / "whole"), Store(tmp_path / "split")
    whole.append("sim", table, key="all")
    half = np.arange(table.num_rows) % 2 == 0
    split.append("sim", table.filter(pa.array(half)), key="even")
    split.append("sim", table.filter(pa.array(~half)), key="odd")
    a = summarise(run_detectors(whole, "sim", AuditConfig(detectors=DETECTORS)))
    b = summarise(run_detectors(split, "sim", AuditConfig(detectors=DETECTORS)))
    assert a and any(f["kind"] == "generalization" for f in a)
    diffs = same(a, b)
    assert not diffs, diffs[:10]
