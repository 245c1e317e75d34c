"""The emerging and generalization findings of the per-part cell tables (`rlaudit.termcells`) equal those of the
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
