"""One run audited in step-range shards gives the findings of the unsharded audit, on every engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaudit.derived import tokens
from rlaudit.audit import audit
from rlaudit.cot import scan as cot_scan
from rlaudit.fleet import InlineEngine, LocalEngine
from rlaudit.fleet import shard as shard_mod
from rlaudit.fleet.shard import plan, sharded_audit
from rlaudit.organisms import simulate
from rlaudit.store import Store


def findings_json(result) -> str:
    return json.dumps([f.to_json() for f in result.findings], sort_keys=True, default=str)


def same(a, b, rel: float = 1e-9) -> bool:
    """Equal findings: same structure, strings, ints; floats equal up to the last bits. (DuckDB's parallel
    aggregates make the unsharded audit itself differ from run to run in the 16th digit, e.g. a reward
    correlation of 0.6775587829153767 / ...769 / ...777 in three fresh audits of one run.)"""
    if isinstance(a, str) and isinstance(b, str) and a[:1] in "[{":
        return same(json.loads(a), json.loads(b), rel)
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and (
            a == b or abs(a - b) <= rel * max(abs(a), abs(b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b))
    return a == b


@pytest.fixture(autouse=True)
def _one_part_per_step_file(monkeypatch):
    """A run shards along its stored parts (`fleet.shard.plan`): these runs are a few thousand rows, which one
    part would hold whole (`Store.part_rows`), so each step file gets a part of its own (in subprocesses too)."""
    monkeypatch.setenv("RLAUDIT_PART_ROWS", "32")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Two runs: an emerging tic with its reward (term sets) and a mid-run CoT leak (grader-input scan)."""
    base = tmp_path_factory.mktemp("shard-runs")
    out = {}
    for scenario, fmt in (("goblin_persona", "verl"), ("cot_midrun", "prime-rl")):
        simulate(scenario, base / scenario, format=fmt, steps=30, prompts=16, generations=8, seed=1)
        ref_store = base / f"ref-{scenario}"
        ref = audit([base / scenario], store=ref_store)
        assert ref.findings, f"{scenario}: the reference audit must find something to compare"
        out[scenario] = (base / scenario, findings_json(ref))
    return out


def _store_with(tmp_path: Path, source: Path) -> Store:
    store = Store(tmp_path / "store")
    store.ingest(source)
    return store


@pytest.mark.parametrize("scenario", ["goblin_persona", "cot_midrun"])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_sharded_audit_equals_unsharded(tmp_path, runs, scenario, n, monkeypatch):
    source, expected = runs[scenario]
    store = _store_with(tmp_path, source)
    run = source.name
    shards = plan(store, run, n)
    assert len(shards) == n and sum(len(s.parts) for s in shards) == len(store.parts(run))
    assert all(a.hi <= b.lo for a, b in zip(shards, shards[1:])), "contiguous step ranges"

    real_audit = shard_mod.audit_store

    def audit_without_scans(*a, **kw):  # after the shards, the detectors only aggregate cached per-part data
        def no(*_a, **_k):
            raise AssertionError("a per-part scan ran in the driver after the shards")
        with monkeypatch.context() as m:
            m.setattr(tokens, "_compute_parts", no)
            m.setattr(cot_scan, "scan_batch", no)
            return real_audit(*a, **kw)

    monkeypatch.setattr(shard_mod, "audit_store", audit_without_scans)
    got = sharded_audit(store, run, InlineEngine(), n)
    assert all(r.ok for r in got.shards), [r.error for r in got.shards]
    assert same(findings_json(got.result), expected)
    rows = Store(tmp_path / "store").summary(run).rows
    assert sum(n for _, n in got.per_step) == rows and [s for s, _ in got.per_step] == sorted({s for s, _ in got.per_step})
    if scenario == "cot_midrun":
        assert sum(e[3] for e in got.exposure) > 0  # the leak's exposed rollouts, counted by the shards


def test_local_engine_shards_and_a_failed_shard(tmp_path, runs, monkeypatch):
    source, expected = runs["goblin_persona"]
    store = _store_with(tmp_path, source)
    engine = LocalEngine(workers=2)
    try:
        got = sharded_audit(store, source.name, engine, 3)
    finally:
        engine.close()
    assert all(r.ok for r in got.shards) and len({r.index for r in got.shards}) == 3
    assert same(findings_json(got.result), expected)
    # a shard that fails costs time, not correctness: the driver computes what it left undone
    store2 = _store_with(tmp_path / "b", source)
    real = shard_mod.prepare_shard

    def flaky(task):
        if task.shard.index == 1:
            raise OSError("worker lost")
        return real(task)

    class Flaky(InlineEngine):
        def map(self, fn, items):
            for item in items:
                try:
                    yield item, flaky(item), ""
                except OSError as exc:
                    yield item, None, str(exc)

    got = sharded_audit(store2, source.name, Flaky(), 3)
    assert [r.ok for r in got.shards] == [True, False, True]
    assert same(findings_json(got.result), expected)


def test_bad_shard_count(tmp_path, runs):
    source, _ = runs["cot_midrun"]
    store = _store_with(tmp_path, source)
    with pytest.raises(Exception, match="--shards must be >= 1"):
        plan(store, source.name, 0)
    assert len(plan(store, source.name, 1000)) == len(store.parts(source.name))  # never an empty shard


def test_same_is_strict():
    assert same('[{"a": 0.6775587829153767, "b": "x"}]', '[{"a": 0.6775587829153777, "b": "x"}]')
    assert not same('[{"a": 0.67755878, "b": "x"}]', '[{"a": 0.67755879, "b": "x"}]')
    assert not same('[{"a": 1, "b": "x"}]', '[{"a": 1, "b": "y"}]')
    assert not same('[{"a": 1}]', '[{"a": 1}, {"a": 1}]')


def test_cli_fleet_audit(tmp_path, runs):
    from .helpers import run_cli

    source, expected = runs["cot_midrun"]
    out = tmp_path / "f.json"
    res = run_cli("fleet", "audit", str(source), "--store", str(tmp_path / "store"), "--engine", "inline",
                  "--shards", "2", "--json", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "in 2 shard(s) on inline" in res.stderr and "cot_grading" in res.stdout
    assert same(json.dumps(json.loads(out.read_text())["findings"], sort_keys=True), expected)
    bad = run_cli("fleet", "audit", "nope", "--store", str(tmp_path / "store"), "--engine", "inline")
    assert bad.returncode == 2 and "neither a file/directory nor a run" in bad.stderr


def scan_sharded(tmp_path: Path, root: Path, engine, shard_rows: int | None, detectors=None):
    """One fleet pass over `root` with `shard_rows`; (pass result, {run: open findings JSON}, scanner state)."""
    from rlaudit.fleet import FleetConfig, FleetScanner

    store = tmp_path / f"store-{engine.name}-{shard_rows}"
    scanner = FleetScanner(store, [root], engine, config=FleetConfig(shard_rows=shard_rows, detectors=detectors))
    try:
        res = scanner.run_pass(final=True)
        got = {name: json.dumps(scanner.state.run_detail(name)["findings"], sort_keys=True, default=str)
               for name in scanner.state.runs}
    finally:
        scanner.close()
    return res, got, scanner


def reference(tmp_path: Path, root: Path, scanner, detectors=None) -> dict[str, str]:
    """`rlaudit audit` of each run of the fleet, under the fleet's run name."""
    from rlaudit.detectors import AuditConfig

    out = {}
    for name, rs in scanner.state.runs.items():
        ref = audit([rs.source], store=tmp_path / f"ref-{name}", run_names=[name], format=rs.format,
                    config=AuditConfig(detectors=detectors))
        out[name] = findings_json(ref)
    return out


def test_scan_shards_runs_over_shard_rows(tmp_path, fleet_root):
    """`fleet scan` audits a run with more new rows than --shard-rows in step-range shards on its engine; the
    run's findings are those of `rlaudit audit`; runs under the threshold take the one-task path; the next
    passes go on incrementally from the sharded one (no re-alert, nothing re-read)."""
    from .helpers import copy_upto

    full = fleet_root
    root = tmp_path / "growing"
    copy_upto(full, root, 15)  # 15 of 16 steps: 480 rows per run, over the 300-row threshold
    engine = LocalEngine(2)
    res, got, scanner = scan_sharded(tmp_path, root, engine, 300)
    assert res.failed == 0, res.errors
    assert set(res.sharded) == set(scanner.state.runs) and set(res.sharded.values()) == {2}
    ref = reference(tmp_path, root, scanner)
    for name in ref:
        assert same(got[name], ref[name]), name
    assert any(json.loads(v) for v in got.values())
    # the growth of a sharded run (32 new rows per step) is audited incrementally, as without sharding
    copy_upto(full, root, 16)
    from rlaudit.fleet import FleetConfig, FleetScanner

    again = FleetScanner(scanner.store_root, [root], engine, config=FleetConfig(shard_rows=300))
    try:
        p2 = again.run_pass(final=True)
        p3 = again.run_pass(final=True)
    finally:
        again.close()
        engine.close()
    assert p2.failed == 0 and not p2.sharded and p2.audited == 3 and p2.rows_added == 3 * 32
    assert p3.audited == 0 and not p3.alerts


def test_scan_sharded_equals_unsharded_scan_inline(tmp_path, fleet_root):
    """With every run over the threshold, the inline engine's sharded pass alerts what the one-task pass does."""
    res_s, got_s, scanner = scan_sharded(tmp_path, fleet_root, InlineEngine(), 100)
    res_u, got_u, _ = scan_sharded(tmp_path, fleet_root, InlineEngine(), None)
    assert set(res_s.sharded) == set(got_s) and not res_u.sharded
    assert sorted(a.key for a in res_s.alerts) == sorted(a.key for a in res_u.alerts)
    ref = reference(tmp_path, fleet_root, scanner)
    assert all(same(got_s[n], ref[n]) for n in ref)
