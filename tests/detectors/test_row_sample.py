"""Bounded stratified samples drawn in DuckDB (`detectors.row_sample`), and the monitorability detector reading
only such a sample instead of the whole run."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from rlaudit.detectors import AuditConfig, monitorability, run_detectors
from rlaudit.detectors.row_sample import cell_cap, stratified_rows
from rlaudit.schema import canonical_table
from rlaudit.store import Store


def test_cell_cap_is_the_largest_that_fits():
    sizes = np.array([5, 100, 1000])
    assert cell_cap(sizes, 2000) is None  # everything fits
    cap = cell_cap(sizes, 305)
    assert np.minimum(sizes, cap).sum() <= 305 < np.minimum(sizes, cap + 1).sum()
    assert cap == 200  # the two small cells are kept whole, the large one gets the rest


def _con(n_pos: int = 300, n_neg: int = 30_000) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    rng = np.random.default_rng(1)
    n = n_pos + n_neg
    con.register("src", pa.table({
        "rollout_id": [f"r{i}" for i in range(n)], "step": rng.integers(0, 4, n),
        "y": np.r_[np.ones(n_pos), np.zeros(n_neg)], "v": rng.normal(1.0, 1.0, n)}))
    return con


def test_a_run_within_the_budget_is_read_whole():
    con = _con()
    table, info = stratified_rows(con, "src", "rollout_id, step, y, v", ["step", "y"], max_rows=10**6)
    assert not info.sampled and table.num_rows == info.total == 30_300
    assert pa.compute.all(pa.compute.equal(table["weight"], 1.0)).as_py()
    assert table["step"].to_pylist() == sorted(table["step"].to_pylist())


def test_a_sample_keeps_small_cells_whole_and_its_weights_recover_the_totals():
    con = _con()
    table, info = stratified_rows(con, "src", "rollout_id, step, y, v", ["step", "y"], max_rows=3000, seed=3)
    assert info.sampled and info.total == 30_300
    assert table.num_rows <= 3000 * 1.1  # hash thinning: about the cap per cell
    y, w, v = (table[c].to_numpy() for c in ("y", "weight", "v"))
    assert y.sum() == 300  # the rare positives (about 75 per step) are all kept
    assert np.isclose(w.sum(), 30_300)  # the weights sum to each cell's size exactly
    assert abs((w * v).sum() / w.sum() - con.execute("SELECT avg(v) FROM src").fetchall()[0][0]) < 0.05
    again, _ = stratified_rows(con, "src", "rollout_id, step, y, v", ["step", "y"], max_rows=3000, seed=3)
    assert again["rollout_id"].to_pylist() == table["rollout_id"].to_pylist()  # deterministic for a seed


def _run(steps: int = 8, groups: int = 40) -> list[dict]:
    """Half the rollouts hard-code the tests (the answer says so); the reasoning says so in three of four."""
    rows = []
    for step in range(steps):
        for g in range(groups):
            for i in range(4):
                hack, says = i < 2, i != 1 or g % 2 == 0
                rows.append({
                    "run": "m", "rollout_id": f"{step}-{g}-{i}", "step": step, "split": "train",
                    "group_id": f"{step}-{g}", "sample_index": i, "condition": "c", "task": "code",
                    "prompt": f"write a function {g}",
                    "reasoning": "I will hardcode the outputs" if hack and says else "let me write the loop",
                    "answer": "def f(x): return 42  # hardcode" if hack else "def f(x): return x + 1",
                    "completion": "", "grader_inputs": [], "rewards": [("tests", 1.0)], "reward": 1.0})
    return rows


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store")
    store.append("m", canonical_table(_run()), "p1")
    return store


def _finding(store, **options):
    config = AuditConfig(detectors=["monitorability"],
                         options={"monitorability": {"label": "hardcode", "n_boot": 100, **options}})
    [f] = run_detectors(store, "m", config)
    assert f.kind == "monitorability", f.title
    return f


def test_monitorability_reads_only_a_bounded_sample(store, monkeypatch):
    seen = []
    original = monitorability.analyse
    monkeypatch.setattr(monitorability, "analyse", lambda table, *a, **k: seen.append(table.num_rows)
                        or original(table, *a, **k))
    whole = _finding(store)
    assert seen[-1] == 1280 and whole.fields["rows_read"] == {
        "rows": 1280, "of": 1280, "per_cell_cap": None, "max_rows": whole.fields["rows_read"]["max_rows"],
        "reason": whole.fields["rows_read"]["reason"]}
    assert whole.fields["views"]["cot"]["tpr"]["estimate"] == pytest.approx(0.75)
    part = _finding(store, max_rows=400)
    assert seen[-1] <= 440  # the run was never fetched whole
    assert part.fields["rows_read"]["of"] == 1280 and part.fields["rows_read"]["per_cell_cap"] == 25
    assert "stratified sample" in part.explanation
    cot = part.fields["views"]["cot"]
    # weights make the counts estimates of the run's: 640 positives and 640 negatives
    assert cot["positives"] == pytest.approx(640) and cot["negatives"] == pytest.approx(640)
    lo, hi = cot["tpr"]["ci"]
    assert lo <= 0.75 <= hi and hi - lo < 0.25


def test_monitorability_sample_follows_the_memory_budget(store, monkeypatch):
    free = _finding(store).fields["rows_read"]
    monkeypatch.setenv("RLAUDIT_MEMORY", "1MB")  # less than this process already uses: the 1 MB floor applies
    tight = _finding(store).fields["rows_read"]
    assert "RLAUDIT_MEMORY=1MB" in tight["reason"] and "RLAUDIT_MEMORY" not in free["reason"]
    assert tight["max_rows"] < free["max_rows"] / 100
