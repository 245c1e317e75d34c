"""Canonical summaries of `emerging` + `generalization` findings on simulated runs, in several audit modes, for
the equivalence test (`test_emerging_equivalence.py`): the findings of the per-part cell tables path must equal
those of the per-rollout path they replaced (recorded in `data/emerging_equivalence.json`).

    PYTHONPATH=src python tests/detectors/emerging_equivalence.py OUT.json   # record (with the code to compare)

Modes per scenario: `cold` (every step but the last, stored in four parts), `warm` (the last step appended as a
part of its own, caches kept), `memory` (a store that keeps derived data in memory), `max_step` (audit limited
to three quarters of the steps) and `all_splits` (split None: train and eval rows together).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.organisms import run as simulate_run
from rlaudit.store import Store

SCENARIOS = ("goblin_persona", "cot_template", "sycophancy", "clean_basic", "tic_all_conditions", "length_bias",
             "tic_reasoning_first")
DETECTORS = ["emerging", "generalization"]
SIZE = {"steps": 40, "prompts": 16, "generations": 8}


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def summarise(findings: list) -> list[dict[str, Any]]:
    errors = [f for f in findings if f.kind == "audit_error"]
    assert not errors, errors[0].fields.get("traceback")
    return [{"kind": f.kind, "severity": f.severity, "title": f.title, "score": _plain(f.score),
             "explanation": f.explanation, "fields": _plain(dict(f.fields)),
             "evidence": [[e.rollout_id, e.step, e.condition] for e in f.evidence]} for f in findings]


def _append_parts(store: Store, run: str, table: pa.Table, steps: list[int], parts: int) -> None:
    for i, chunk in enumerate(np.array_split(np.asarray(steps), parts)):
        if len(chunk):
            rows = table.filter(pc.is_in(table["step"], pa.array(chunk.tolist(), table["step"].type)))
            store.append(run, rows, key=f"p{int(chunk[0]):05d}")


def scenario_modes(name: str, root: Path) -> dict[str, list[dict[str, Any]]]:
    table = simulate_run(name, seed=0, run_name="sim", **SIZE).canonical()
    steps = sorted(set(table["step"].to_pylist()))
    out = {}
    store = Store(root / f"{name}-store")
    _append_parts(store, "sim", table, steps[:-1], 4)
    out["cold"] = summarise(run_detectors(store, "sim", AuditConfig(detectors=DETECTORS)))
    _append_parts(store, "sim", table, steps[-1:], 1)
    out["warm"] = summarise(run_detectors(store, "sim", AuditConfig(detectors=DETECTORS)))
    out["max_step"] = summarise(run_detectors(store, "sim", AuditConfig(detectors=DETECTORS,
                                                                          max_step=steps[3 * len(steps) // 4])))
    out["all_splits"] = summarise(run_detectors(store, "sim", AuditConfig(detectors=DETECTORS, split=None)))
    mem = Store(root / f"{name}-mem")
    mem.persist_derived = False
    _append_parts(mem, "sim", table, steps, 4)
    out["memory"] = summarise(run_detectors(mem, "sim", AuditConfig(detectors=DETECTORS)))
    return out


def record(scenarios: tuple[str, ...] = SCENARIOS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return {name: scenario_modes(name, Path(tmp)) for name in scenarios}


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(record(), indent=1, sort_keys=True))
