"""training_health from per-part statistics equals training_health from the rollouts (the reference path,
`use_cache = False`): on simulated runs split into parts, on a step split across parts, under a scope, with token
counts and limits in metadata, and after a part is appended (only the new part is computed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.detectors.training_health import TrainingHealthDetector


def _findings(store, run, use_cache, **config):
    TrainingHealthDetector.use_cache = use_cache
    try:
        found = run_detectors(store, run, AuditConfig(detectors=["training_health"], **config))
    finally:
        TrainingHealthDetector.use_cache = True
    assert not [f for f in found if f.kind == "audit_error"], [f.get("traceback") for f in found]
    return sorted((f.to_json() for f in found), key=lambda f: (f["check"], f.get("signal") or ""))


def _same(a, b, path="$"):
    """Equal, floats to 1e-9 relative (sums of per-part sums add in another order than a scan)."""
    if isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    elif isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def _append_in_parts(store, run, table: pa.Table, cuts: list[int]) -> None:
    steps = np.array(table.column("step").to_pylist())
    bounds = [-math.inf, *cuts, math.inf]
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        store.append(run, table.filter((steps > lo) & (steps <= hi)), key=f"{run}-{i}")


@pytest.mark.parametrize("scenario", ["easy_groups", "length_blowup", "eval_divergence", "broken_reward",
                                      "clean_basic", "goblin_persona"])
def test_cached_equals_the_rollouts(store, scenario):
    from rlaudit.organisms import run

    table = run(scenario, steps=30, prompts=8).canonical()
    _append_in_parts(store, scenario, table, [10, 20])
    ref = _findings(store, scenario, False)
    _same(_findings(store, scenario, True), ref)
    _same(_findings(store, scenario, True), ref)  # warm, from the cache
    _same(_findings(store, scenario, True, max_step=17), _findings(store, scenario, False, max_step=17))
    _same(_findings(store, scenario, True, split=None), _findings(store, scenario, False, split=None))


def test_a_step_split_across_parts_and_an_appended_part(store):
    from rlaudit.organisms import run

    table = run("easy_groups", steps=30, prompts=8).canonical()
    steps = np.array(table.column("step").to_pylist())
    idx = np.arange(table.num_rows)
    store.append("r", table.filter(steps < 12), key="a")
    store.append("r", table.filter((steps == 12) & (idx % 2 == 0)), key="b")  # step 12's groups in two parts
    store.append("r", table.filter(((steps == 12) & (idx % 2 == 1)) | ((steps > 12) & (steps < 30))), key="c")
    _same(_findings(store, "r", True), _findings(store, "r", False))
    cache = store.run_dir("r") / "derived" / "partstats" / "training_health"
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("v*/*.parquet")}
    store.append("r", table.filter(steps == 30), key="d")
    _same(_findings(store, "r", True), _findings(store, "r", False))
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("v*/*.parquet")}
    assert len(after) == 4 and all(after[k] == v for k, v in before.items())


@pytest.mark.parametrize("meta", ["tokens", "limit", "some", "finish"])
def test_token_counts_and_limits_in_metadata(store, meta):
    from tests.detectors.test_training_health import half, make_run, words

    def metadata(s, g, i):
        n = words(s, g, i).count("a")
        return {"tokens": {"completion_tokens": n},
                "limit": {"completion_tokens": n, "max_tokens": 20 + (g % 2) * 10},
                "some": {"completion_tokens": n} if g == 0 else {"x": 1},
                "finish": {"finish_reason": "length" if s > 8 and i < 3 else "stop"}}[meta]

    make_run(store, half, completion=words, metadata=metadata)
    make_run(store, half, completion=words, metadata=metadata, split="eval", append_to="eval")
    _same(_findings(store, "r", True), _findings(store, "r", False))
    _same(_findings(store, "r", True, max_step=9), _findings(store, "r", False, max_step=9))
