"""Attribution from per-part statistics (`rlaudit.attribution.partcache`) gives the findings of attribution from
the rollouts (`trace.load_frames`), field by field, cold and warm after new steps, on runs that exercise every
run-wide decision: fitted weights, a residual signal, totals rebuilt from components, infinite values, no group
ids, logged advantages, tasks, falling and numeric behaviours, the audit's step limit and a sampled run."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_attribution import make_run

from rlaudit.derived import segments
from rlaudit.attribution import partcache, trace
from rlaudit.attribution.detector import AttributionDetector
from rlaudit.detectors import AuditConfig, DetectContext
from rlaudit.findings import Finding
from rlaudit.layout import LAYOUT
from rlaudit.store import Store


def emerging(spec: str, direction: str = "up", severity: str = "high") -> Finding:
    return Finding(kind="emerging_behavior", run="sim", severity=severity, title=spec,
                   fields={"behavior": spec, "behavior_spec": spec, "where": "answer", "direction": direction})


BEHAVIOURS = [emerging("goblin"), emerging("re:(?i)^here", "down", "medium"), emerging("style:length")]


def detect(store: Store, cache: bool, max_step: int | None = None, found: list[Finding] | None = None,
           **options) -> list[dict]:
    config = AuditConfig(max_step=max_step, options={"attribution": {"n_boot": 200, "cache": cache, **options}})
    ctx = DetectContext(store=store, run="sim", config=config, findings=copy.deepcopy(found or BEHAVIOURS))
    return [json.loads(json.dumps(f.to_json(), default=str)) for f in AttributionDetector().detect(ctx)]


def same(a, b, path: str = "") -> None:
    """Equal, floats up to their summation order."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (float, int)):
        assert a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), \
            f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def by_step(store: Store, table: pa.Table, steps: range | None = None) -> None:
    """Store `table` one part per step (as trainers that log a file per step)."""
    step = np.asarray(table.column("step"))
    for s in steps if steps is not None else np.unique(step).tolist():
        store.append("sim", table.filter(pa.array(step == s)), key=f"step-{s:05d}")


def check(store: Store, **kwargs) -> list[dict]:
    ref = detect(store, False, **kwargs)
    got = detect(store, True, **kwargs)
    same(ref, got)
    same(ref, detect(store, True, **kwargs))  # warm: every table cached
    return got


def _with(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type))


SCENARIOS = {
    "trl": dict(),
    "weights": dict(weights={"correctness_reward": 2.0, "format_reward": 0.5, "persona_rm": 1.5}),
    "verl": dict(style="verl"),
    "no_group_ids": dict(group_ids=False),
    "no_group_ids_no_repeats": dict(group_ids=False, repeat_prompts=False),
    "advantage": dict(with_advantage=True),
    "legit": dict(legit=1.5, bias=0.0),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_cached_equals_traced_from_rows(tmp_path, name):
    store = Store(tmp_path / "s")
    table = make_run(seed=5, steps=10, **SCENARIOS[name])
    by_step(store, table, range(8))
    got = check(store)
    assert len(got) == 3 and got[0]["signals"]
    by_step(store, table, range(8, 10))  # warm after new steps: only their parts are computed
    check(store)
    check(store, max_step=6)


def test_missing_and_infinite_rewards(tmp_path):
    """Totals missing on some rows (rebuilt from the fitted weights, cached under those weights) and infinite
    component values (counted as not applying)."""
    store = Store(tmp_path / "s")
    table = make_run(seed=2, steps=6, weights={"correctness_reward": 2.0, "format_reward": 1.0, "persona_rm": 1.0})
    reward = np.asarray(table.column("reward").to_numpy(zero_copy_only=False), float).copy()
    reward[::37] = np.nan
    table = _with(table, "reward", reward)
    rewards = table.column("rewards").to_pylist()
    for i in range(0, len(rewards), 74):  # on rows without a total, so the fit stays exact
        rewards[i] = [(k, float("inf") if k == "format_reward" else v) for k, v in rewards[i]]
    table = _with(table, "rewards", rewards)
    by_step(store, table)
    got = check(store)
    notes = " ".join(got[0]["notes"])
    assert "rebuilt from the components" in notes and "infinite values" in notes and "weights fitted" in notes
    files = list((store.run_dir("sim") / "derived" / "attribution").rglob("*.parquet"))
    assert any(len(f.name.split(".")) == 3 for f in files)  # weight-keyed groups of the parts with rebuilt totals


def test_a_run_traced_on_a_sample_of_its_steps(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    table = make_run(seed=1, steps=60, groups_per_condition=4)
    by_step(store, table)
    monkeypatch.setattr(trace, "FRAME_BYTES", int(table.num_rows * (8 * 12 + 64) * trace.WORKING_SET) // 3)
    got = check(store)
    assert "Traced on a random" in got[0]["warning"]


def test_a_sampled_run_in_parts_of_several_steps_computes_only_the_sampled_steps(tmp_path, monkeypatch):
    """Parts that hold several steps (an ingest groups step files: `Store.part_rows`) of a run traced on a sample
    of its steps: every part holds a kept step, but only the rows of the share's steps are read and computed
    (cached in a directory of that share), with the findings of the trace from the rows."""
    store = Store(tmp_path / "s")
    table = make_run(seed=1, steps=160, groups_per_condition=2)
    step = np.asarray(table.column("step"))
    for lo in range(int(step.min()), int(step.max()) + 1, 16):
        store.append("sim", table.filter(pa.array((step >= lo) & (step < lo + 16))), key=f"steps-{lo:05d}")
    monkeypatch.setattr(trace, "FRAME_BYTES", int(table.num_rows * (8 * 12 + 64) * trace.WORKING_SET) // 3)
    computed = []
    real = partcache.part_tables

    def counting(t, *a, **k):
        computed.append(t.num_rows)
        return real(t, *a, **k)

    monkeypatch.setattr(partcache, "part_tables", counting)
    got = check(store)
    warning = got[0]["warning"]
    assert "Traced on a random" in warning and "steps" in warning, warning
    traced = int(warning.split("(")[1].split(" of")[0].replace(",", ""))
    assert traced <= sum(computed) <= 2 * traced < table.num_rows  # the share's steps, not every part's rows


def test_steps_split_across_parts_and_python_predicates_are_traced_from_rows(tmp_path, monkeypatch):
    """Not cacheable (a group could span two parts; a predicate's code may change): traced from the rollouts,
    with the same findings."""
    store = Store(tmp_path / "s")
    table = make_run(seed=3, steps=4)
    half = table.num_rows // 2 + 3
    store.append("sim", table.slice(0, half), key="a")
    store.append("sim", table.slice(half), key="b")
    calls = []
    monkeypatch.setattr(partcache, "_Ctx", lambda *a, **k: calls.append(1))
    check(store)
    assert not calls
    store2 = Store(tmp_path / "s2")
    by_step(store2, table)
    monkeypatch.setattr(trace, "parse_behavior", trace.parse_behavior)
    assert partcache.traces(store2, "sim", None, None, "train",
                            [(trace.parse_behavior("goblin"), "answer", "up")][:0] +
                            [(_python_behaviour(), "answer", "up")], outcome_signals=[], advantage_scale="group",
                            n_boot=10, seed=0) is None


def _python_behaviour():
    from rlaudit.behaviors import Behavior

    return Behavior("mod:f", "mod:f", "python", func=lambda text: "goblin" in text)


def test_in_memory_and_unwritable_stores(tmp_path, monkeypatch):
    """A store that keeps derived data in memory, or whose cache cannot be written (`write_cached` returns the
    table), gets the same findings from tables kept in memory."""
    store = Store(tmp_path / "s")
    by_step(store, make_run(seed=4, steps=5))
    ref = detect(store, False)
    store.persist_derived = False
    same(ref, detect(store, True))
    assert not (store.run_dir("sim") / "derived" / "attribution").exists()
    monkeypatch.setattr(partcache, "write_cached", lambda path, table, **kw: table)
    fresh = Store(tmp_path / "s")
    same(ref, detect(fresh, True))
    same(ref, detect(fresh, True))
    assert not list((store.run_dir("sim") / "derived" / "attribution").rglob("*.parquet"))


@pytest.mark.parametrize("threads", ["1", "2"])
def test_batches_in_threads_equal_the_traced_findings(tmp_path, monkeypatch, threads):
    """Parts computed in several batches, by one thread or two (`_Ctx.ensure`), missing totals included (their
    groups rebuilt in a second pass under the fitted weights): the findings of the rows, field by field."""
    monkeypatch.setattr(partcache, "BATCH_PARTS", 2)
    monkeypatch.setenv("RLAUDIT_THREADS", threads)
    computed: list[int] = []
    original = partcache._Ctx._compute
    monkeypatch.setattr(partcache._Ctx, "_compute",
                        lambda self, batch, *a: (computed.append(len(batch)), original(self, batch, *a))[1])
    store = Store(tmp_path / "s")
    table = make_run(seed=11, steps=9)
    reward = np.asarray(table.column("reward").to_numpy(zero_copy_only=False), float).copy()
    reward[::7] = np.nan  # totals missing on some rows of every part
    by_step(store, _with(table, "reward", reward))
    check(store)
    assert len(computed) >= 5 and max(computed) == 2  # 9 parts in batches of two


def test_segments_written_from_memory_equal_merged_ones(tmp_path, monkeypatch):
    """A cold audit writes the parts of a complete level-1 group into its segment only, from the tables in hand
    (`segments.Fresh`): the same segments, with the same rows, as a merge of per-part files gives (the same
    audit with no group planned), no file for their members, and the findings of the rows cold and warm,
    also when a step limit reads some parts only (by their ranges) and after new steps."""
    monkeypatch.setattr(segments, "FANOUT", 3)
    monkeypatch.setattr(partcache, "BATCH_PARTS", 2)  # batches across segment boundaries
    table = make_run(seed=6, steps=10)
    store, files = Store(tmp_path / "s"), Store(tmp_path / "f")
    by_step(store, table, range(8))
    by_step(files, table, range(8))
    from_memory: list[bool] = []
    original = segments._write
    monkeypatch.setattr(segments, "_write", lambda *a, **k: (from_memory.append(
        (a[5] if len(a) > 5 else k.get("tables")) is not None), original(*a, **k))[1])
    got = check(store)
    root = store.run_dir("sim") / "derived" / "attribution"
    seg = sorted(root.rglob("segments/parts/L1-*.parquet"))
    assert len(seg) == 3 * 2  # three behaviours, 8 parts: two groups of three each
    assert from_memory == [True] * len(seg)  # none read back from the files to merge
    assert len(list(root.glob("*/*/*.parquet"))) == 3 * 2  # per behaviour, only the two parts outside a group
    monkeypatch.setattr(segments.Fresh, "planned", lambda self, path: False)
    same(got, check(files))
    ref = sorted((files.run_dir("sim") / "derived" / "attribution").rglob("segments/parts/L1-*.parquet"))

    def rows(segs):  # per behaviour, each segment's member row counts and rows (the parts' names differ)
        out = {}
        for f in segs:
            t = pq.read_table(f)
            out.setdefault(f.parent.parent.parent.name, []).append(
                (json.loads(pq.read_schema(f).metadata[b"rlaudit_rows"]), t.drop(["part"]).to_pylist()))
        return {k: sorted(v, key=lambda r: r[1][0]["step"]) for k, v in out.items()}

    assert len(ref) == len(seg) and rows(seg) == rows(ref)
    same(got, check(store))
    monkeypatch.setattr(segments, "GRACE", 0.0)  # a merge over the first parts alone would remove the second group
    check(store, max_step=2)  # some parts: read by their ranges, no merge over them alone
    assert sorted(root.rglob("segments/parts/L1-*.parquet")) == seg
    monkeypatch.undo()
    monkeypatch.setattr(segments, "FANOUT", 3)
    by_step(store, table, range(8, 10))  # warm: the new parts' files, merged with the last loose part
    check(store)


def test_parts_of_two_layouts_in_one_batch(tmp_path):
    """A batch reading parts of two layouts (one SELECT each, `file_index` counted from each one's offset; the
    signals from reward columns in one, from the rewards map in the other): every row keeps its own part."""
    from tests.old_layouts import store_as_layout

    store = Store(tmp_path / "s")
    by_step(store, make_run(seed=7, steps=6))
    store_as_layout(store, "sim", {p.name for p in store.parts("sim")[1::2]}, 4)  # every other part as layout 4
    assert set(store.part_layouts("sim").values()) == {4, LAYOUT}
    check(store)


def test_tables_read_back_beyond_the_hand_over(tmp_path, monkeypatch):
    """Computed tables over HAND_OVER bytes are not kept: the cold audit reads them back, to the same findings."""
    monkeypatch.setattr(partcache, "HAND_OVER", 1)
    kept = []
    original = partcache._Ctx._computed_tables
    monkeypatch.setattr(partcache._Ctx, "_computed_tables", staticmethod(
        lambda *a: kept.append(1) or original(*a)))
    store = Store(tmp_path / "s")
    by_step(store, make_run(seed=8, steps=5))
    check(store)
    assert not kept


@pytest.mark.parametrize("case", ["presence", "numeric", "none mixed"])
def test_pair_statistics_over_the_mixed_groups_equal_those_over_every_row(case):
    """`partcache._Mixed`: the pair statistics computed over the rows of the groups whose labels vary only, and 0
    elsewhere, equal `trace._pair_stats` and `trace._matched_stats` over every row, bit for bit."""
    rng = np.random.default_rng(3)
    codes = np.sort(rng.integers(0, 300, 4000))
    groups = trace._Groups.of(np.unique(codes, return_inverse=True)[1].ravel())
    if case == "numeric":  # above / below the group median, NaN at it
        x = np.round(rng.normal(size=codes.size), 1) * (rng.random(groups.n) < 0.3)[groups.codes]
        labels = trace.behavior_labels(groups, x, True)
    else:  # present in every rollout of some groups, in some rollouts of a few, absent from the rest
        share = np.where(rng.random(groups.n) < 0.2, 1.0, np.where(rng.random(groups.n) < 0.1, 0.4, 0.0))
        if case == "none mixed":
            share = np.round(share)
        labels = (rng.random(codes.size) < share[groups.codes]).astype(float)
    outcome = np.where(rng.random(codes.size) < 0.1, np.nan, rng.integers(0, 2, codes.size).astype(float))
    mixed = partcache._Mixed.of(groups, [labels], [outcome])
    assert (mixed.rows.size == 0) == (case == "none mixed")
    full = trace._RankCache()
    sub = trace._refine(groups.codes, [outcome])
    for j, values in enumerate([np.round(rng.normal(size=codes.size), 1), rng.integers(0, 3, codes.size) * 1.0,
                                np.where(rng.random(codes.size) < 0.2, np.nan, rng.normal(size=codes.size))]):
        want = trace._pair_stats(groups, values, labels, full, str(j))
        got = mixed.pair_stats(values, labels, str(j))
        for k in want:
            assert np.array_equal(got[k], want[k] + 0.0), k  # + 0.0: a -0.0 difference of an unmixed group is 0
        m_want = trace._matched_stats(groups, values, labels, sub, full, f"m{j}")
        m_got = mixed.matched_stats(values, labels, f"m{j}")
        for a, b in zip(m_got, m_want):
            assert np.array_equal(a, b)
