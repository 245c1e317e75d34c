"""Raw tables of several files finalized together (`finalize_parts`, the ingest's `_part_tables`) give what
finalizing each file alone gives: the same rows, rollout ids, steps, splits, condition labels and notes."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlaudit.store as store_module
from rlaudit.errors import BadInputError
from rlaudit.readers.base import ReadContext, SourceFile, finalize_part, finalize_parts
from rlaudit.store import Store
from tests.readers.trainer_files import trl_step, verl_step

SYSTEMS = ["You are a pirate.", "You are terse.", None]


def _rows(table: pa.Table) -> list[dict]:
    """The rows, NaN made comparable."""
    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, tuple):
            return tuple(clean(x) for x in v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v
    return [clean(r) for r in table.to_pylist()]


@st.composite
def batches(draw):
    """Raw tables of 1-6 files sharing one schema, with the per-file cases `finalize` treats apart."""
    with_step = draw(st.booleans())
    with_split = draw(st.booleans())
    with_lines = draw(st.booleans())
    with_sub = draw(st.booleans())
    out = []
    for i in range(draw(st.integers(1, 6))):
        n = draw(st.integers(0, 5))
        file_step = draw(st.one_of(st.none(), st.integers(-3, 9))) if with_step else draw(st.integers(-3, 9))
        split = draw(st.sampled_from(["train", "eval"]))
        cols = {}
        if with_step:
            cols["step"] = pa.array(draw(st.lists(st.one_of(st.none(), st.integers(-3, 9)), min_size=n, max_size=n)),
                                    pa.int64())
        if with_split:
            cols["split"] = pa.array(draw(st.lists(st.sampled_from([None, "train", "eval"]), min_size=n,
                                                   max_size=n)), pa.string())
        systems = draw(st.lists(st.sampled_from(SYSTEMS), min_size=n, max_size=n))
        cols["prompt"] = pa.array([f"system: {s}\nuser: q{i}-{j}" if s else f"q{j}" for j, s in enumerate(systems)],
                                  pa.string())
        cols["completion"] = pa.array(draw(st.lists(st.sampled_from(["a", "<think>r</think>a", "<think>r", None]),
                                                    min_size=n, max_size=n)), pa.string())
        cols["rewards"] = pa.array([[("r", float(j))] for j in range(n)], pa.map_(pa.string(), pa.float64()))
        if with_lines:
            cols["line"] = pa.array(range(10, 10 + n), pa.int64())
        if with_sub:
            cols["sub"] = pa.array(draw(st.lists(st.one_of(st.none(), st.integers(0, 2)), min_size=n, max_size=n)),
                                   pa.int64())
        out.append((pa.table(cols), SourceFile(path=None, relpath=f"d/f{i}.jsonl", split=split, step=file_step)))
    return out


@settings(max_examples=60, deadline=None)
@given(raws=batches())
def test_files_finalized_together_equal_each_alone(raws):
    alone_ctx, together_ctx = ReadContext(run="r"), ReadContext(run="r")
    try:
        alone = [finalize_part(raw, file, alone_ctx) for raw, file in raws]
    except BadInputError as exc:
        with pytest.raises(BadInputError, match=str(exc).split(":")[0]):
            finalize_parts(raws, together_ctx)
        return
    together = finalize_parts(raws, together_ctx)
    assert [t.num_rows for t in together] == [r.num_rows for r, _ in raws]
    assert [_rows(t) for t in together] == [_rows(t) for t in alone]
    assert together_ctx.notes == alone_ctx.notes
    assert together_ctx.labeler.labels == alone_ctx.labeler.labels


def test_notes_name_the_last_file_as_one_by_one():
    def raw(steps):
        return pa.table({"step": pa.array(steps, pa.int64()), "prompt": ["q"] * len(steps),
                         "completion": ["a"] * len(steps)})

    raws = [(raw([1, 5, 6]), SourceFile(None, "f1", step=1)), (raw([-2, -4]), SourceFile(None, "f2", step=-2)),
            (raw([3, 8, 3]), SourceFile(None, "f3", step=3)), (raw([4]), SourceFile(None, "f4", step=4))]
    ctx = ReadContext(run="r")
    finalize_parts(raws, ctx)
    assert ctx.notes["step-mismatch"].startswith("some lines log a step other than their file name's (e.g. f3: "
                                                 "step 3 in the name, 8 in a line)")
    assert ctx.notes["negative-steps"].startswith("negative steps are logged (e.g. -4 in f2)")


def _stored(root, src, batch_rows, monkeypatch, **kw):
    monkeypatch.setattr(store_module._part_tables, "__defaults__", (batch_rows,))
    store = Store(root)
    report = store.ingest(src, run="r", **kw)
    rows = store.connect(["r"]).sql("SELECT * EXCLUDE (run) FROM rollouts ORDER BY rollout_id").to_arrow_table()
    return _rows(rows), report


def test_an_ingest_of_many_small_files_stores_what_it_stored_file_by_file(tmp_path, monkeypatch):
    """verl step files of 3 rows and TRL completions files whose columns change midway (a reward function added:
    another raw schema, so a batch ends there) are stored alike whatever the batch."""
    verl = tmp_path / "verl"
    for step in range(1, 30):
        verl_step(verl, step, [f"system\nYou are {step % 3}.\nuser\nq{step}-{i}" for i in range(3)],
                  [f"<think>r{i}</think>a{step}" for i in range(3)], [float(i) for i in range(3)])
    trl = tmp_path / "trl"
    for step in range(1, 12):
        rewards = {"acc": [1.0, 0.0]} | ({"fmt": [0.5, None]} if step > 6 else {})
        trl_step(trl, step, [f"q{step}", f"q{step}"], [f"a{step}", f"<think>x</think>b{step}"], rewards)
    for src in (verl, trl):
        one, r1 = _stored(tmp_path / f"{src.name}-1", src, 1, monkeypatch)
        many, r2 = _stored(tmp_path / f"{src.name}-many", src, 16_384, monkeypatch)
        few, r3 = _stored(tmp_path / f"{src.name}-few", src, 7, monkeypatch)
        assert one == many == few and len(one) == (87 if src is verl else 22)
        assert r1.notes == r2.notes == r3.notes and r1.files_read == r2.files_read == r3.files_read


@st.composite
def trl_runs(draw):
    """TRL completions files of a few rows: repeated prompts (groups), NaN rewards, a reward function added midway
    (another schema), advantages logged as text with a bad value in some files (bad rows, another schema)."""
    files = []
    text_advantages = draw(st.booleans())  # in every file (one schema: files read together) or none
    for step in sorted(draw(st.sets(st.integers(1, 40), min_size=1, max_size=8))):
        n = draw(st.integers(0, 6))
        prompts = draw(st.lists(st.sampled_from(["q1", "q2", "system: be brief\nuser: q3"]), min_size=n, max_size=n))
        completions = draw(st.lists(st.sampled_from(["a", "<think>r</think>b", "<think>cut"]), min_size=n,
                                    max_size=n))
        rewards = {"acc": draw(st.lists(st.one_of(st.none(), st.floats(-1, 1)), min_size=n, max_size=n))}
        if draw(st.integers(0, 3)) == 0:
            rewards["fmt"] = [0.5] * n
        advantages = draw(st.lists(st.sampled_from(["0.5", "-1", "oops"]), min_size=n, max_size=n)) \
            if text_advantages else None
        files.append((step, prompts, completions, rewards, advantages))
    return files, draw(st.sampled_from([None, 2]))


@settings(max_examples=25, deadline=None)
@given(run=trl_runs())
def test_trl_files_read_together_store_what_each_alone_stores(tmp_path_factory, run):
    files, group_size = run
    src = tmp_path_factory.mktemp("trl")
    for step, prompts, completions, rewards, advantages in files:
        path = trl_step(src, step, prompts, completions, rewards)
        if advantages is not None:  # logged as text (some loggers stringify): "oops" is a bad row
            import pandas as pd
            df = pd.read_parquet(path)
            df["advantage"] = advantages
            df.to_parquet(path)
    from rlaudit.readers import trl as trl_module
    from rlaudit.readers.base import ReadOptions

    stored = []
    for small in (0, trl_module.SMALL_FILE_ROWS):
        root = tmp_path_factory.mktemp("store")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trl_module, "SMALL_FILE_ROWS", small)
            store = Store(root)
            report = store.ingest(src, run="r", options=ReadOptions(group_size=group_size))
        rows = (store.connect(["r"]).sql("SELECT * EXCLUDE (run) FROM rollouts ORDER BY rollout_id")
                .to_arrow_table() if report.rows_added else pa.table({}))
        bad = sorted((b.file, b.line, b.reason) for b in store.quarantined("r"))
        stored.append((repr(_rows(rows)), bad, report.notes, report.files_read, report.rows_added))
    assert stored[0] == stored[1]


def test_a_file_that_cannot_be_read_is_reported_and_read_again_next_time(tmp_path, monkeypatch):
    """An I/O error on one of several small TRL files (read together) quarantines that file as unreadable, stores
    the others' rows, and leaves it unrecorded so that the next ingest reads it."""
    from rlaudit.readers import trl as trl_module

    src = tmp_path / "trl"
    for step in range(1, 6):
        trl_step(src, step, [f"q{step}"] * 2, ["a", "b"], {"acc": [1.0, 0.0]})
    real_open = trl_module.TrlReader._open

    def failing_open(self, file, ctx, **options):
        if file.step == 3:
            raise OSError(5, "Input/output error")
        return real_open(self, file, ctx, **options)

    store = Store(tmp_path / "st")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trl_module.TrlReader, "_open", failing_open)
        report = store.ingest(src, run="r")
    assert report.rows_added == 8 and report.bad_records == 1
    bad = store.quarantined("r")
    assert [(b.file, b.line) for b in bad] == [("completions/completions_00003.parquet", None)]
    assert bad[0].reason == "unreadable file (Input/output error)"
    again = store.ingest(src, run="r")
    assert again.rows_added == 2 and again.files_read == 1


_FLAT = st.sampled_from([(pa.string(), st.one_of(st.none(), st.text(max_size=6))),
                         (pa.int64(), st.one_of(st.none(), st.integers(-5, 5))),
                         (pa.float64(), st.one_of(st.none(), st.floats(allow_nan=True))),
                         (pa.bool_(), st.one_of(st.none(), st.booleans()))])


def _values(array: pa.Array | pa.ChunkedArray) -> list:
    """The values, NaN as a marker (NaN equals nothing, itself included, so lists holding it never compare equal)."""
    return [("NaN",) if isinstance(v, float) and math.isnan(v) else v for v in array.to_pylist()]


@settings(max_examples=150, deadline=None)
@given(_FLAT.flatmap(lambda tv: st.tuples(st.just(tv[0]), st.lists(tv[1], min_size=1, max_size=40))),
       st.lists(st.integers(0, 40), max_size=6), st.booleans())
def test_combine_joins_adjacent_slices_without_a_copy_and_copies_anything_else(typed, cuts, gap):
    """`messages.combine` of consecutive slices of one flat array (what `finalize_parts` concatenates: a batch's
    table sliced per file) is that array's range, sharing its buffers; slices with a gap, or chunks of other
    arrays, are copied; the values are the chunks' either way."""
    from rlaudit.readers.messages import combine

    typ, values = typed
    array = pa.array(values, typ)
    bounds = sorted({0, len(array), *(c for c in cuts if c <= len(array))})
    pieces = [array.slice(lo, hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:])]
    if gap and len(pieces) > 2:
        pieces.pop(1)  # no longer adjacent
    chunked = pa.chunked_array(pieces, typ)
    joined = combine(chunked)
    assert _values(joined) == _values(chunked) and joined.null_count == chunked.null_count
    if array.buffers()[-1].size:  # (empty buffers may share an address)
        shares = joined.buffers()[-1].address == array.buffers()[-1].address
        assert shares == (len(pieces) > 0 and not (gap and len(bounds) > 3))
    other = pa.chunked_array([pa.array(values[:1], typ), pa.array(values[:1], typ)])
    assert _values(combine(other)) == _values(other)
    if other.chunk(0).buffers()[-1].size:  # (empty buffers may share an address)
        assert combine(other).buffers()[-1].address != other.chunk(0).buffers()[-1].address
