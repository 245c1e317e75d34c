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
    import json

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


def test_parts_held_only_by_segments_give_the_same_findings(tmp_path, monkeypatch):
    """A cold audit writes the per-step counts and cell tables of parts in a complete segment group into the
    segment only (`segments.Fresh`): every mode (warm after a new part, `max_step`, every split) reads them by
    their row ranges and gives the recorded findings, also when the segments are older than the grace period;
    no reader of some parts merges (that would remove the segments holding the others: the window's and the
    sampled steps' term sets once registered per-step count views over their parts, through segments), and
    no part is computed twice."""
    from rlaudit.derived import segments
    from rlaudit.detectors import emerging

    import emerging_equivalence

    monkeypatch.setattr(segments, "FANOUT", 2)  # the eight cold parts make four segments, two outside the windows
    monkeypatch.setattr(segments, "GRACE", 0.0)
    append = emerging_equivalence._append_parts
    monkeypatch.setattr(emerging_equivalence, "_append_parts",
                        lambda store, run, table, steps, parts: append(store, run, table, steps, 2 * parts))
    from rlaudit.derived import tokens

    computed: list[str] = []
    real = tokens._compute_parts
    monkeypatch.setattr(tokens, "_compute_parts",
                        lambda paths, *a, **k: computed.extend(str(p) for p in paths) or real(paths, *a, **k))
    merged: list[tuple[str, int]] = []  # (kind, files) of every merging `covering` call
    covering = segments.covering
    monkeypatch.setattr(segments, "covering", lambda paths, kind, merge=True, **k: (
        merge and merged.append((kind, len(paths)))) or covering(paths, kind, merge=merge, **k))
    name = "goblin_persona"
    now = scenario_modes(name, tmp_path)
    # only views over every part merge (a merge over some parts removes the segments holding the others)
    assert merged and {n for _, n in merged} <= {8, 9}, merged
    # each stored part computed once: no mode lost the segments holding the cold parts (and computed them again)
    stored = [p for p in computed if f"{name}-store" in p]
    assert len(stored) == len(set(stored)) == 8 + 1
    derived = tmp_path / f"{name}-store" / "runs" / "sim" / "derived"
    assert len(list(derived.rglob("*.cells.parquet"))) == 1  # the new part's; the cold ones: segments
    # made from the parts' flat lists when asked (`termcells`)
    assert not list(derived.rglob("*cellterms*")) and not list(derived.rglob("*promptterms*"))
    for mode, recorded in RECORDED[name].items():
        diffs = same(recorded, now[mode], f"{name}/{mode}")
        assert not diffs, diffs[:10]
    # a sample of the steps for the reward correlations (a scope over twice the window cap)
    monkeypatch.setattr(emerging.Params, "max_window_rollouts", 1000)
    again = scenario_modes(name, tmp_path / "sampled")
    assert again["warm"] and any(f["kind"] == "generalization" for f in again["warm"])
    assert not [f for f in again["warm"] if f["kind"] == "audit_error"]


def test_new_parts_held_only_by_a_segment_grow_the_cached_step_counts(tmp_path, monkeypatch):
    """Parts that arrive together after an audit and fill a segment group are written into that segment only
    (`segments.Fresh`); the run's cached dense counts (`stepcounts`) then grow by reading them from it (they
    were read as per-part files: an audit error), and the findings equal those of counts built from scratch."""
    import numpy as np
    import pyarrow as pa
    from emerging_equivalence import DETECTORS, SIZE, summarise

    from rlaudit.derived import segments, tokens
    from rlaudit.detectors import AuditConfig, run_detectors
    from rlaudit.organisms import run as simulate_run
    from rlaudit.store import Store

    monkeypatch.setattr(segments, "FANOUT", 2)
    monkeypatch.setattr(tokens, "REUSE_GROWTH", 1.0)  # the vocabulary kept as the run grows by a third
    table = simulate_run("goblin_persona", seed=0, run_name="sim", **SIZE).canonical()
    step = np.asarray(table["step"].to_numpy())
    eighths = np.array_split(np.unique(step), 8)
    grown = Store(tmp_path / "grown")
    derived = grown.root / "runs" / "sim" / "derived"
    for i, steps in enumerate(eighths):
        grown.append("sim", table.filter(pa.array(np.isin(step, steps))), key=f"q{i}")
        if i == 5:  # an audit of six parts caches the dense counts of its parts
            run_detectors(grown, "sim", AuditConfig(detectors=DETECTORS))
            (cached,) = derived.rglob("step_counts/manifest.json")
    files = sorted(p for p in derived.rglob("*.counts.parquet") if "segments" not in p.parts)
    b = summarise(run_detectors(grown, "sim", AuditConfig(detectors=DETECTORS)))  # raises on an audit error
    # the scenario: the two new parts' counts are in a segment only, and the cached counts grew (not rebuilt)
    assert sorted(p for p in derived.rglob("*.counts.parquet") if "segments" not in p.parts) == files
    assert [len(c["parts"]) for c in json.loads(cached.read_text())["chunks"]] == [6, 2]  # grown by a chunk
    cached.unlink()  # built from scratch: every part's rows through the segments
    a = summarise(run_detectors(grown, "sim", AuditConfig(detectors=DETECTORS)))
    diffs = same(a, b)
    assert a and not diffs, diffs[:10]
