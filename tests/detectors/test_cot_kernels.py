"""The compiled CoT-scan kernels (`rlaudit.cot.kernels`, numba) against the numpy path they replace: the same
token hashes (`shingles.hashed_tokens`), the same screen answer keys (`screen_keys.keys_of`, answers stored as
completion spans or as text), the same scan results and keys of a whole run; and the comparison catches a kernel
that is wrong by one hash. Deterministic under the CI Hypothesis profile; skipped without numba."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit import kernels
from rlaudit.cot import kernels as cot_kernels
from rlaudit.cot.scan import ScanParams
from rlaudit.cot.screen_keys import keys_of
from rlaudit.cot.shingles import hashed_tokens, shingles_from_ids

from cot_synth import make_run

needs_numba = pytest.mark.skipif(not kernels.available(),
                                 reason="numba is not installed (pip install 'rlaudit[fast]'): numpy path only")

# ASCII words in any case, digits, punctuation and every whitespace byte; accented and other-script words (the
# numpy path lowercases them with utf8_lower), separators the tokeniser knows (no-break space, curly quote,
# ideographic comma, fullwidth stop), Chinese/Japanese (single-character tokens), an emoji (a 4-byte character),
# an upper-case letter whose lowercase is longer (U+0130)
_WORDS = ["the", "The", "GOBLIN", "by", "my", "beard", "x1", "42", "don't", "a-b", "!", ",", "\n", "\t", "\r",
          "\f", "  ", "_", "École", "Борода", "\u00a0", "it\u2019s", "\u3001", "\uff0e", "哥布林", "ひらがな",
          "😀ok", "İstanbul", "verylongtokenofmorethan16bytes", "abcdefgh", "abcdefghi"]
_TEXT = st.lists(st.sampled_from(_WORDS), max_size=25).map(lambda w: "".join(w)) | \
    st.lists(st.sampled_from(_WORDS), max_size=25).map(" ".join)
_ANY = st.one_of(_TEXT, _TEXT, st.text(max_size=20), st.none())


def _both(monkeypatch, f):
    """f() under RLAUDIT_KERNEL=numpy, then under numba."""
    out = []
    for k in ("numpy", "numba"):
        monkeypatch.setenv(kernels.ENV, k)
        out.append(f())
    return out


def _same_tokens(texts, monkeypatch):
    array = pa.array(texts, pa.string())
    (h0, o0), (h1, o1) = _both(monkeypatch, lambda: hashed_tokens(array))
    assert h0.dtype == h1.dtype == np.uint64
    assert np.array_equal(o0, o1) and np.array_equal(h0, h1)


@needs_numba
@settings(max_examples=80, deadline=None)
@given(st.lists(_ANY, min_size=1, max_size=12), st.integers(0, 3))
def test_token_hashes_are_identical(texts, cut):
    with pytest.MonkeyPatch.context() as mp:
        _same_tokens(texts, mp)
        _same_tokens(pa.array(texts, pa.string()).slice(min(cut, len(texts))).to_pylist() or [None], mp)


_ASCII_PIECES = ["a", "Z", "0", "9", " ", "\n", "@", "[", "`", "{", "/", ":", "_", "-", "Goblin", "x1 ",
                 "abcdefg", "ABCDEFGH", "abcdefghijklmnopq", "  \t"]


@needs_numba
@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=70).map(lambda b: bytes(x & 0x7F for x in b)),
                 st.lists(st.sampled_from(_ASCII_PIECES), max_size=30).map(lambda p: "".join(p).encode())),
       st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), max_size=6))
def test_ascii_tokens_eight_bytes_at_a_time_are_the_byte_loops(data, spans):
    """The ASCII kernel (`_token_hashes_ascii`: token ends by a trailing-zero count in 64-bit words, the byte
    loop for long tokens and the buffer's last 7 bytes) against the numpy tokeniser of the texts cut out, on
    every ASCII byte and on spans ending anywhere, the buffer's end included."""
    from rlaudit.cot.shingles import span_tokens

    buf = np.frombuffer(data, np.uint8)
    bounds = sorted((int(a * len(buf)), int(b * len(buf))) for a, b in spans)
    starts = np.array([min(a, b) for a, b in bounds], np.int64)
    ends = np.array([max(a, b) for a, b in bounds], np.int64)
    texts = pa.array([data[a:b].decode() for a, b in zip(starts, ends)], pa.string())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernels.ENV, "numba")
        got = span_tokens(buf, starts, ends)
        mp.setenv(kernels.ENV, "numpy")
        want = hashed_tokens(texts)
    assert got is not None
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])


@needs_numba
def test_ascii_tokens_at_every_offset_of_a_word(monkeypatch):
    """Every layout of one 64-bit word systematically: a token of 1-9 bytes at each offset, separators of 1-10
    bytes after it (the next token in the same word, at its first byte after, or beyond), texts ending inside
    the word, and buffers ending there."""
    from rlaudit.cot.shingles import span_tokens

    texts, pieces = [], []
    for lead in range(9):
        for length in range(1, 10):
            for gap in range(1, 11):
                texts.append("." * lead + "Ab1xyzQRS"[:length] + " \n-"[gap % 3] * gap + "nxt go")
    buf = "".join(texts).encode()
    starts = np.cumsum([0] + [len(t) for t in texts[:-1]]).astype(np.int64)
    ends = starts + np.array([len(t) for t in texts], np.int64)
    for cut in (0, 1, 3, 6, 9):  # texts ending early, inside a word
        pieces.append((np.frombuffer(buf, np.uint8), starts, np.maximum(starts, ends - cut)))
    for tail in range(1, 17):  # the buffer itself ending at every byte of a word
        small = buf[:tail + 20]
        pieces.append((np.frombuffer(small, np.uint8), np.array([0, 3, tail], np.int64),
                       np.array([len(small), len(small), len(small)], np.int64)))
    for data, lo, hi in pieces:
        monkeypatch.setenv(kernels.ENV, "numba")
        got = span_tokens(data, lo, hi)
        monkeypatch.setenv(kernels.ENV, "numpy")
        want = hashed_tokens(pa.array([data[a:b].tobytes().decode() for a, b in zip(lo, hi)], pa.string()))
        assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])


@needs_numba
@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(_TEXT, st.text(max_size=30)), max_size=12), st.integers(0, 3))
def test_group_hashes_are_identical(names, cut):
    """The screen's group hashes (`screen_sets._hash`: `byte_span_hashes` of each name, compiled with numba)
    equal the numpy path's, for names of any length and script, on a slice too."""
    from rlaudit.cot.screen_sets import _hash

    array = pa.array(names + [""], pa.string()).slice(min(cut, len(names)))
    with pytest.MonkeyPatch.context() as mp:
        a, b = _both(mp, lambda: _hash(array))
        assert b.dtype == np.uint64 and np.array_equal(a, b)
        real = cot_kernels.span_hashes
        mp.setattr(cot_kernels, "span_hashes", lambda *args: real(*args) ^ np.uint64(1))
        c, d = _both(mp, lambda: _hash(array))
        assert not np.array_equal(c, d)  # the comparison would see a wrong kernel


def _context_tallies_numpy(counted, seen, seen_in_group, reasoning_in_group, row_size, r_off):
    from rlaudit.cot.scan import _tally

    row = np.repeat(np.arange(len(r_off) - 1), np.diff(r_off))
    own = row_size[row]
    invariant = (own >= 2) & (seen_in_group >= own)
    strict = _tally(counted & ~invariant, seen, row, r_off, False)
    loose = _tally(counted & ~(invariant & (reasoning_in_group >= 2)), seen, row, r_off, False)
    return np.array([*strict, *loose])


@needs_numba
@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 4), st.integers(0, 3)),
                         max_size=12), min_size=1, max_size=6), st.data())
def test_context_tallies_in_one_pass_are_the_two_tallies(rows, data):
    """`kernels.tally_context` (both tallies of `GroupContext.decide`, the invariant shingles decided in the
    loop) against the numpy path's two `_tally` calls over the masks it builds."""
    flat = [x for r in rows for x in r]
    counted = np.array([x[0] for x in flat], bool)
    seen = np.array([x[1] for x in flat], bool)
    seen_in_group = np.array([x[2] for x in flat], np.int64)
    reasoning_in_group = np.array([x[3] for x in flat], np.int64)
    r_off = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    row_size = np.array(data.draw(st.lists(st.integers(1, 4), min_size=len(rows), max_size=len(rows))), np.int64)
    got = cot_kernels.tally_context(counted, seen, seen_in_group, reasoning_in_group, row_size, r_off)
    want = _context_tallies_numpy(counted, seen, seen_in_group, reasoning_in_group, row_size, r_off)
    assert np.array_equal(got, want)


def _same_shingles(ids: np.ndarray, offsets: np.ndarray, k: int, monkeypatch) -> None:
    a, b = _both(monkeypatch, lambda: shingles_from_ids(ids, offsets, k))
    assert b.keys.dtype == np.uint64 and np.array_equal(a.keys, b.keys)
    assert np.array_equal(a.row, b.row) and np.array_equal(a.position, b.position)
    assert np.array_equal(a.n_tokens, b.n_tokens) and np.array_equal(a.counts, b.counts)


@needs_numba
@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=14), min_size=1, max_size=8), st.integers(2, 8))
def test_shingle_keys_are_identical(texts, k):
    """The compiled shingles (every window of the batch summed with expanded coefficients, k = 5 unrolled) are
    the numpy path's polynomial: keys, rows and positions, texts shorter than k included."""
    ids = np.array([i for t in texts for i in t], np.uint64)
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in texts])]).astype(np.int64)
    with pytest.MonkeyPatch.context() as mp:
        _same_shingles(ids, offsets, k, mp)
        _same_shingles(ids, offsets, 5, mp)


@needs_numba
def test_a_shingle_kernel_wrong_by_one_key_fails_the_comparison(monkeypatch):
    real = cot_kernels.shingle_keys

    def off_by_one(*args):
        keys = real(*args).copy()
        keys[-1:] ^= np.uint64(1)
        return keys

    ids = np.arange(12, dtype=np.uint64)
    offsets = np.array([0, 7, 12], np.int64)
    _same_shingles(ids, offsets, 5, monkeypatch)
    monkeypatch.setattr(cot_kernels, "shingle_keys", off_by_one)
    with pytest.raises(AssertionError):
        _same_shingles(ids, offsets, 5, monkeypatch)


def _raw_part(texts: list[str | None], as_span: list[bool]) -> pa.Table:
    """A part's stored columns with each answer either a span of the completion ("<think>r</think>answer") or
    logged as text (span null), and some rows the screen cannot pair (no group, no reasoning)."""
    completion, starts, ends, answers, reasoning_start = [], [], [], [], []
    for i, (text, span) in enumerate(zip(texts, as_span)):
        body = text or ""
        c = f"<think>reasoning {i}</think>{body}"
        completion.append(c)
        offset = len(c.encode()) - len(body.encode())
        starts.append(offset if span and text is not None else None)
        ends.append(len(c.encode()) if span and text is not None else None)
        answers.append(None if span else text)
        reasoning_start.append(7 if i % 5 else None)
    n = len(texts)
    return pa.table({
        "rollout_id": [f"r{i}" for i in range(n)], "step": pa.array(range(n), pa.int64()),
        "split": ["train"] * n, "group_id": [None if i % 7 == 3 else f"g{i % 3}" for i in range(n)],
        "answer": pa.array(answers, pa.string()),
        "reasoning": pa.array([None if i % 5 else "logged" for i in range(n)], pa.string()),
        "completion": completion, "_answer_start": pa.array(starts, pa.int32()),
        "_answer_end": pa.array(ends, pa.int32()), "_reasoning_start": pa.array(reasoning_start, pa.int32())})


def _same_keys(raw: pa.Table, monkeypatch):
    a, b = _both(monkeypatch, lambda: keys_of(raw, 3))
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    assert a.to_pydict() == b.to_pydict()


@needs_numba
@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(_ANY, st.booleans()), min_size=1, max_size=14))
def test_answer_keys_are_identical(rows):
    raw = _raw_part([t for t, _ in rows], [s for _, s in rows])
    with pytest.MonkeyPatch.context() as mp:
        _same_keys(raw, mp)
        _same_keys(raw.slice(len(rows) // 2), mp)  # a slice: offsets that do not start at 0


def test_equal_answers_get_equal_keys_in_either_path(monkeypatch):
    """What the screen relies on: answers equal after lowercasing and removing whitespace share a key, whether
    stored as a span or as text, ASCII or not."""
    texts = ["The  Answer\tis 42", "the answer is 42", "THE ANSWER IS\n42", "École  42", "école 42", "other"]
    raw = _raw_part(texts, [True, False, True, True, False, False]).set_column(
        3, "group_id", pa.array(["g"] * 6)).set_column(5, "reasoning", pa.array(["r"] * 6))
    for k in ("numpy", "numba") if kernels.available() else ("numpy",):
        monkeypatch.setenv(kernels.ENV, k)
        ck = keys_of(raw, 3).column("ck").to_numpy()
        assert ck[0] == ck[1] == ck[2] and ck[3] == ck[4] and len(set(ck.tolist())) == 3


@needs_numba
def test_a_kernel_wrong_by_one_hash_fails_the_comparison(monkeypatch):
    """The comparisons above can fail: a token kernel that changes one hash, and an answer kernel that changes
    one key, are caught."""
    real_tokens, real_answers = cot_kernels.token_hashes, cot_kernels.answer_hashes

    def off_by_one(*args, **kwargs):
        hashes, counts = real_tokens(*args, **kwargs)
        hashes = hashes.copy()
        hashes[-1:] ^= np.uint64(1)
        return hashes, counts

    def wrong_key(*args):
        ck, other = real_answers(*args)
        ck = ck.copy()
        ck[:1] += np.uint64(1)
        return ck, other

    monkeypatch.setattr(cot_kernels, "token_hashes", off_by_one)
    with pytest.raises(AssertionError):
        _same_tokens(["The goblin's beard"], monkeypatch)
    monkeypatch.setattr(cot_kernels, "answer_hashes", wrong_key)
    with pytest.raises(AssertionError):
        _same_keys(_raw_part(["the answer", "42"], [True, False]).set_column(
            3, "group_id", pa.array(["g", "g"])), monkeypatch)


@needs_numba
def test_scan_and_keys_of_a_run_are_identical(store, monkeypatch):
    """A whole run's scan results (own and chance pairings) and cached answer keys, scanned on two threads:
    the same rows with either kernel, and the exposures planted in the run are found."""
    from rlaudit.cot.detector import scan_key, scan_parts
    from rlaudit.cot.screen_keys import key_writer, screen_keys

    def exposure(step, task, rng):
        return "full" if rng.random() < 0.2 else ("tail" if rng.random() < 0.1 else None)

    table, truth = make_run(exposure=exposure, steps=8, seed=11)
    steps = table.column("step").to_numpy()
    for i in range(3):
        store.append("synth", table.filter(pa.array(steps % 3 == i)), f"part-{i}")
    params = ScanParams(chance_rows=40)
    monkeypatch.setenv("RLAUDIT_THREADS", "2")

    def results():
        shutil.rmtree(store.run_dir("synth") / "derived", ignore_errors=True)
        key, extra = scan_key(store, "synth", params)
        sql = scan_parts(store, "synth", params, key, extra, also=key_writer(store, "synth"))
        keys = screen_keys(store, "synth", "TRUE")
        return (duckdb.sql(f"SELECT * FROM {sql} ORDER BY ALL").fetchall(),
                duckdb.sql(f"SELECT * FROM {keys} ORDER BY ALL").fetchall())

    (scan0, keys0), (scan1, keys1) = _both(monkeypatch, results)
    assert scan0 == scan1 and keys0 == keys1 and len(keys0) > 0
    assert {r[0] for r in scan0 if r[10] and not r[11]} >= set(truth)


def test_sets_handed_over_by_the_scan_equal_sets_read_alone(store):
    """The screen's candidate rows and group hashes the scan writes from the columns it read (`key_writer`) are
    those `candidate_keys` computes by reading the part itself, and the answer keys themselves are not cached
    (only a run whose prompt groups span parts groups every key: `screen_keys` caches them then)."""
    from rlaudit.cot.detector import scan_key, scan_parts
    from rlaudit.cot.screen_keys import cache_dir, key_writer
    from rlaudit.cot.screen_sets import candidate_keys

    table, _ = make_run(steps=4, seed=3, restate=False)  # two answers per group of four: candidate rows
    store.append("synth", table, "part-0")
    params = ScanParams()
    key, extra = scan_key(store, "synth", params)
    writer = key_writer(store, "synth")
    scan_parts(store, "synth", params, key, extra, also=writer)
    keys_dir = cache_dir(store, "synth")
    assert not list(keys_dir.glob("*.parquet"))  # no answer keys written
    stem = store.parts("synth")[0].stem
    groups = (keys_dir / "sets" / f"{stem}.groups.npy").read_bytes()  # written by the scan

    def candidates():
        sql = candidate_keys(store, "synth", keys_dir, "TRUE", held=writer.sets)
        return duckdb.sql(f"SELECT * FROM {sql} ORDER BY ALL").fetchall()

    handed = candidates()
    shutil.rmtree(store.run_dir("synth") / "derived" / "cot_screen")
    writer.sets.clear()
    alone = candidates()
    assert handed == alone and len(handed) == table.num_rows  # every row repeats its group's answer
    assert (keys_dir / "sets" / f"{stem}.groups.npy").read_bytes() == groups


def test_cached_files_are_parquet(store):
    """Keys cached for a run whose prompt groups span parts (`screen_keys`) are ordinary parquet files beside the
    run (readable on their own)."""
    from rlaudit.cot.screen_keys import screen_keys

    table, _ = make_run(steps=3, seed=1)
    store.append("synth", table, "part-0")
    assert screen_keys(store, "synth", "TRUE") is not None
    files = list((store.run_dir("synth") / "derived" / "cot_screen").glob("v*/*.parquet"))  # not sets/
    assert len(files) == 1 and pq.read_table(files[0]).column_names == ["rollout_id", "step", "split", "group_id",
                                                                          "ck"]


@needs_numba
def test_a_live_hook_with_thread_audits_loads_the_cot_kernels_before_training(tmp_path, monkeypatch):
    """As for the term-set kernels: a hook whose heavy audits run in a thread loads the CoT kernels when it is
    created, not in the middle of a training step."""
    from rlaudit.live.auditor import LiveAuditor, LiveConfig

    monkeypatch.delenv(kernels.ENV, raising=False)
    monkeypatch.setattr(cot_kernels.compiled, "value", None)
    LiveAuditor(str(tmp_path / "store"), "r", LiveConfig(background="process"))
    assert cot_kernels.compiled.value is None
    LiveAuditor(str(tmp_path / "store"), "r", LiveConfig(background="thread"))
    assert cot_kernels.compiled.value is not None


# Batches where every question of the scan has many answers: a vocabulary of a few words (shingles repeat within
# and across texts), reasoning copied whole or in part into the answer, the prompt and grader inputs of the row,
# of another row of its group or of another group, groups of one to five rows and rows without a group, two
# graders (one of them on some rows only, once twice on a row), null and short texts.
_FEW = ["alpha", "beta", "gamma", "delta", "Alpha", "x1", "哥", "布", "École"]
_PHRASE = st.lists(st.sampled_from(_FEW), min_size=0, max_size=14).map(" ".join)


@st.composite
def _batch(draw):
    n = draw(st.integers(1, 14))
    reasoning = [draw(st.none() | _PHRASE) for _ in range(n)]
    groups = [draw(st.none() | st.sampled_from(["g0", "g1", "g2", "g3"])) for _ in range(n)]
    rows = []
    for i in range(n):
        other = draw(st.integers(0, n - 1))
        pieces = {"own": reasoning[i] or "", "other": reasoning[other] or "", "phrase": draw(_PHRASE)}
        def text():
            k = draw(st.sampled_from(sorted(pieces)))
            words = pieces[k].split()
            lo = draw(st.integers(0, len(words)))
            return " ".join(words[lo:draw(st.integers(lo, len(words)))] if draw(st.booleans()) else words)
        graders = [("judge", text() + " " + text())]
        if draw(st.booleans()):
            graders.append(("rubric", text()))
        if i == 0 and draw(st.booleans()):
            graders.append(("judge", text()))  # a grader named twice in one row's map
        rows.append({"rollout_id": f"r{i}", "step": i % 3, "split": "train", "condition": "c", "task": None,
                     "group_id": groups[i], "prompt": draw(st.sampled_from(["", "alpha beta gamma delta x1",
                                                                           text()])),
                     "answer": draw(st.none() | st.just(text())), "reasoning": reasoning[i],
                     "grader_inputs": graders})
    schema = pa.schema([("rollout_id", pa.string()), ("step", pa.int64()), ("split", pa.string()),
                        ("condition", pa.string()), ("task", pa.string()), ("group_id", pa.string()),
                        ("prompt", pa.string()), ("answer", pa.string()), ("reasoning", pa.string()),
                        ("grader_inputs", pa.map_(pa.string(), pa.string()))])
    return pa.Table.from_pylist(rows, schema=schema)


@needs_numba
@settings(max_examples=150, deadline=None)
@given(_batch(), st.integers(2, 5), st.booleans(), st.integers(1, 4))
def test_scan_of_a_batch_is_identical_with_either_path(batch, k, group_context, min_matched):
    """The compiled per-group hash tables (`kernels.prepare` / `seen` / `tally`) and shingles give the per-pair
    results of the numpy path (sorted keys and binary searches), own and chance pairings, field by field."""
    from rlaudit.cot.scan import scan_batch_both

    params = ScanParams(k=k, group_context=group_context, min_matched=min_matched, min_span=2, min_edge_span=2,
                        min_complete=1)
    with pytest.MonkeyPatch.context() as mp:
        a, b = _both(mp, lambda: scan_batch_both(batch, params, True))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.equals(y), (x.to_pydict(), y.to_pydict())


@needs_numba
def test_a_wrong_membership_kernel_fails_the_batch_comparison(monkeypatch):
    """The comparison above can fail: a `seen` kernel that drops one match changes a result."""
    from rlaudit.cot.scan import scan_batch_both

    real = cot_kernels.seen

    def one_less(*args):
        seen, in_group = real(*args)
        seen = seen.copy()
        seen[np.flatnonzero(seen)[:1]] = False
        return seen, in_group

    text = "alpha beta gamma delta alpha beta gamma delta x1 x1 beta"
    batch = pa.Table.from_pylist([{"rollout_id": "r0", "step": 0, "split": "train", "condition": "c", "task": None,
                                   "group_id": "g", "prompt": "", "answer": None, "reasoning": text,
                                   "grader_inputs": [("judge", text)]}], schema=pa.schema([
        ("rollout_id", pa.string()), ("step", pa.int64()), ("split", pa.string()), ("condition", pa.string()),
        ("task", pa.string()), ("group_id", pa.string()), ("prompt", pa.string()), ("answer", pa.string()),
        ("reasoning", pa.string()), ("grader_inputs", pa.map_(pa.string(), pa.string()))]))
    params = ScanParams(k=2)
    monkeypatch.setattr(cot_kernels, "seen", one_less)
    a, b = _both(monkeypatch, lambda: scan_batch_both(batch, params, False))
    assert not a[0].equals(b[0])


@pytest.mark.parametrize("zh", [False, True])
def test_texts_tokenised_where_they_lie_in_the_completion_give_the_same_results(zh, monkeypatch):
    """Parts written by ingest keep the reasoning and the answer as spans of the completion; the compiled path
    tokenises them there (`scan._tokens`, ASCII buffers), the numpy path and non-ASCII buffers cut the texts
    first. Every pair's result (own and chance pairings) equals the scan of the canonical rows."""
    from rlaudit.cot.scan import RESULT_SCHEMA, scan_batch_both, scan_batches, table_batches
    from rlaudit.layout import part_table
    from rlaudit.schema import ROLLOUT_SCHEMA
    from rlaudit.text import reasoning_spans

    def exposure(step, task, rng):
        return "full" if rng.random() < 0.3 else ("tail" if rng.random() < 0.2 else None)

    table, truth = make_run(exposure=exposure, steps=6, seed=5, zh=zh)
    columns = {f.name: table.column(f.name).combine_chunks() for f in ROLLOUT_SCHEMA}
    for name in ("reasoning", "answer"):  # the texts are in the spans, as ingest stores them
        columns[name] = pa.nulls(table.num_rows, pa.string())
    part = part_table(columns, reasoning_spans(columns["completion"]))
    params = ScanParams()
    expected = pa.concat_tables([RESULT_SCHEMA.empty_table(), *scan_batch_both(table, params, True)])
    for kernel in ("numpy", "numba") if kernels.available() else ("numpy",):
        monkeypatch.setenv(kernels.ENV, kernel)
        got = scan_batches(table_batches(part, 3, params.batch_rows, spans=True), params, lambda i: True)
        assert got.to_pylist() == expected.to_pylist()
    assert {r["rollout_id"] for r in expected.to_pylist() if r["exposed"] and not r["chance"]} == set(truth)


@needs_numba
@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(_TEXT, st.text(max_size=20)), min_size=1, max_size=12),
       st.sampled_from(["", " ", "é", "\u2014", "中", "😀"]))
def test_ascii_spans_in_a_buffer_that_is_not_read_in_place_and_the_others_cut(texts, between):
    """A completion buffer holding non-ASCII text: with `ascii_rows`, the ASCII spans are tokenised where they
    lie (next to non-ASCII bytes, which must not leak into their last token) and the others cut and lower-cased
    (`shingles._mixed_tokens`); the same tokens as `hashed_tokens` of the cut texts by the numpy path. Without
    `ascii_rows` such a buffer is left to the caller (None)."""
    from rlaudit.cot.shingles import span_tokens

    pieces = [t.encode() for t in texts]
    glue = between.encode()
    buf = np.frombuffer(b"".join(p + glue for p in pieces) + b"\xc3\xa9", np.uint8)  # never all ASCII
    starts = np.cumsum([0] + [len(p) + len(glue) for p in pieces[:-1]]).astype(np.int64)
    ends = starts + np.array([len(p) for p in pieces], np.int64)
    ascii_rows = np.array([t.isascii() for t in texts])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernels.ENV, "numba")
        assert span_tokens(buf, starts, ends) is None
        got = span_tokens(buf, starts, ends, lambda: ascii_rows)
        got_whole = hashed_tokens(pa.array(texts, pa.string()))
        mp.setenv(kernels.ENV, "numpy")
        want = hashed_tokens(pa.array(texts, pa.string()))
    for hashes, offsets in (got, got_whole):
        assert np.array_equal(offsets, want[1]) and np.array_equal(hashes, want[0])


@pytest.mark.parametrize("spans", [False, True])
def test_a_parts_files_batched_at_once_equal_each_file_batched_alone(spans):
    """`file_batches` selects the rows with grader inputs and makes their columns once per part: each file's
    batches are those `table_batches` gives of the file's own rows (files without grader inputs, a null map,
    batches that cut a file)."""
    from rlaudit.cot.scan import file_batches, table_batches
    from rlaudit.layout import part_table
    from rlaudit.schema import ROLLOUT_SCHEMA
    from rlaudit.text import reasoning_spans

    table, _ = make_run(steps=6, seed=7)
    columns = {f.name: table.column(f.name).combine_chunks() for f in ROLLOUT_SCHEMA}
    maps = columns["grader_inputs"].to_pylist()
    for i in range(0, len(maps), 7):
        maps[i] = None  # null maps: never scanned
    columns["grader_inputs"] = pa.array(maps, columns["grader_inputs"].type)
    for name in ("reasoning", "answer"):
        columns[name] = pa.nulls(table.num_rows, pa.string())
    part = part_table(columns, reasoning_spans(columns["completion"]))
    n = part.num_rows
    cuts = [0, 1, 1, 5, n // 3, n // 3 + 2, n // 2, n]  # an empty file, files of one row, large files
    files = [(lo, hi - lo) for lo, hi in zip(cuts, cuts[1:])]
    got = file_batches(part, 3, 4, files, spans=spans)
    assert len(got) == len(files)
    for (lo, rows), batches in zip(files, got):
        want = [b.to_pylist() for b in table_batches(part.slice(lo, rows), 3, 4, spans=spans)]
        assert [b.to_pylist() for b in batches] == want
    assert sum(b.num_rows for bs in file_batches(part, 3, 4, files, spans=spans) for b in bs) == sum(
        1 for m in maps if m)
