"""The compiled term-set kernels (`rlaudit.derived.kernels`, numba; the path chosen by `rlaudit.kernels`) against the numpy path they replace: the same token
hashes, the same distinct term ids per row (keys naming several terms, prompt copies left out), the same
prompt terms, and the same cached tables of a whole simulated run. Deterministic under the CI Hypothesis
profile; skipped when numba is not installed (the numpy path is then the only one)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit import kernels, text
from rlaudit.derived import kernels as term_kernels
from rlaudit.derived import tokens, tokhash
from rlaudit.errors import RlauditError

from laid_out import laid_out

needs_numba = pytest.mark.skipif(not kernels.available(),
                                 reason="numba is not installed (pip install 'rlaudit[fast]'): numpy path only")

# few distinct words, so n-grams repeat within and across texts; ASCII (compiled tokeniser) and other scripts
# (RE2 in DuckDB), case, apostrophes, digits, punctuation
_WORDS = ["the", "The", "goblin", "GOBLIN", "by", "my", "beard", "don't", "it's", "x1", "42", "a''b", "'q'",
          "rock'n'roll", "é", "Борода", "哥布林", "ひら", "!", ",", "\n", "_"]
_TEXT = st.lists(st.sampled_from(_WORDS), max_size=30).map(" ".join)
_ANY = st.one_of(_TEXT, _TEXT, st.text(max_size=20), st.none())


def _both(f):
    """f() under RLAUDIT_KERNEL=numpy, then under numba."""
    out = []
    for k in ("numpy", "numba"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(kernels.ENV, k)
            out.append(f())
    return out


@needs_numba
@settings(max_examples=60, deadline=None)
@given(st.lists(_ANY, min_size=1, max_size=15))
def test_token_hashes_are_identical(texts):
    a, b = _both(lambda: tokhash.token_hashes(pa.array(texts, pa.string())))
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    assert a[0].dtype == b[0].dtype == np.uint64


# apostrophes at text and block boundaries (the compiled tokeniser checks its room every 4096 bytes of a text),
# texts that end or start mid-token beside each other, empty and separator-only texts, other scripts, a token
# longer than a block, and more tokens than the first guess of the output's size (one per four bytes)
_EDGE_TEXTS = ["", None, "'", "''", "a'", "'a", "a'b", "a''b", "a' b", "don't'", "'don't'", "x'y'z", "rock'n'roll",
               "abc", "'def", "a'", "b", "é'a", "a'é", "naïve don't", "中文 and ascii", " " * 5000,
               "x" * 10_000, "ab'" * 3000 + "c", "a " * 20_000, "q" * 4095 + "'r", "q" * 4094 + "'r s",
               "w " * 2047 + "w'" + "v", "A'B C'D"]


@needs_numba
def test_token_hashes_edge_cases_are_identical():
    a, b = _both(lambda: tokhash.token_hashes(pa.array(_EDGE_TEXTS, pa.string())))
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    assert b[1][-1] > len("a " * 20_000) // 2  # the output grew past its first guess
    ascii_ = [t for t in _EDGE_TEXTS if t is None or t.isascii()]  # all compiled (no RE2 texts in the call)
    a, b = _both(lambda: tokhash.token_hashes(pa.array(ascii_, pa.string())))
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernels.ENV, "numba")
        values, offsets = tokhash.token_hashes(pa.array(["don't'", "'a", "b'"], pa.string()))
    want = tokhash.string_hashes(pa.array(["don't", "a", "b"], pa.string()))
    assert np.array_equal(values, want) and offsets.tolist() == [0, 1, 2, 3]


@needs_numba
def test_ascii_token_hashes_need_non_zero_codes_of_word_bytes():
    codes = tokhash._CODES.copy()
    codes[ord("a")] = 0
    data, offsets = np.frombuffer(b"a b", np.uint8), np.array([0, 3], np.int64)
    with pytest.raises(ValueError, match="codes of word bytes"):
        term_kernels.ascii_token_hashes(data, offsets, np.ones(1, bool), tokhash._WORD, codes, tokhash._BASE,
                                   tokhash._LEN_MIX)


def _vocab(grams: list[tuple[str, str, str]]) -> pa.Table:
    """A vocabulary table as `tokens._compute_vocab` makes it (where, term, key_token, term_id)."""
    return pa.table({"where": pa.array([w for w, _, _ in grams], pa.string()),
                     "term": pa.array([t for _, t, _ in grams], pa.string()),
                     "key_token": pa.array([k for _, _, k in grams], pa.string()),
                     "term_id": pa.array(np.arange(len(grams)), pa.int32())})


@st.composite
def _case(draw):
    texts = draw(st.lists(_ANY, min_size=1, max_size=12))
    prompts = draw(st.lists(_ANY, min_size=1, max_size=4))
    prompt_of = draw(st.lists(st.integers(0, len(prompts) - 1), min_size=len(texts), max_size=len(texts)))
    words = sorted({w.lower() for w in _WORDS if w.strip("!,\n_'") and " " not in w})
    grams = []
    for _ in range(draw(st.integers(0, 40))):
        n = draw(st.integers(1, 3))
        g = [draw(st.sampled_from(words)) for _ in range(n)]
        # the same n-gram in both places is common (one key naming two terms of `any_term`)
        for where in draw(st.sampled_from([("answer",), ("reasoning",), ("answer", "reasoning")])):
            grams.append((where, " ".join(g), draw(st.sampled_from(g))))
    grams = list({(w, t): (w, t, k) for w, t, k in grams}.values())  # (where, term) is unique in a vocabulary
    return texts, prompts, np.array(prompt_of, np.int64), grams


@needs_numba
@settings(max_examples=80, deadline=None)
@given(_case())
def test_term_ids_and_prompt_copies_are_identical(case):
    """The same prompt term lists (`_prompt_lists`) and texts' term lists (prompt copies left out) either way:
    numpy's `_text_pairs` over `token_hashes`, or the compiled one pass per text (`tokhash.text_term_ids`)."""
    texts, prompts, prompt_of, grams = case
    m = tokens._matcher(_vocab(grams))
    n_ids = int(m.key_of_id.shape[0]) or 1

    def pairs():
        pt_off, pi = tokens._prompt_lists(pa.array(prompts, pa.string()), m, 3, n_ids)
        out = [pt_off, pi]
        arr = pa.array(texts, pa.string())
        for where in tokens.WHERES:
            if kernels.use_numba():
                out += tokhash.text_term_ids(arr, 3, m.by_where[where], n_ids, exclude=(prompt_of, pt_off, pi))[1:]
            else:
                out += tokens._text_pairs(*tokhash.token_hashes(arr), m.by_where[where], 3, n_ids, prompt_of, pt_off,
                                          pi)
        return out

    a, b = _both(pairs)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
        assert x.dtype.kind == y.dtype.kind


@needs_numba
@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 4), st.integers(0, 60), st.sampled_from([0, 8, 20]))
def test_row_term_ids_equal_match_then_distinct(seed, max_n, n_keys, low_bits):
    """`term_kernels.row_term_ids` = `_distinct_pairs(*lookup.match(*ngram_keys(...)))` minus the excluded ids, on
    random token rows over a small alphabet (repeated n-grams), keys naming several terms, crowded home slots."""
    rng = np.random.default_rng(seed)
    alphabet = rng.integers(0, 2**63, 6, dtype=np.uint64)
    if low_bits:
        alphabet <<= np.uint64(low_bits)
    lengths = rng.integers(0, 12, rng.integers(1, 30))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.choice(alphabet, int(offsets[-1]))
    rows, keys = tokens.ngram_keys(values, offsets, max_n)
    vocab_keys = np.concatenate([rng.choice(keys, min(n_keys, len(keys))) if len(keys) else keys[:0],
                                 rng.integers(0, 2**63, 5, dtype=np.uint64)])
    n_ids = len(vocab_keys) + 3
    ids = rng.permutation(n_ids)[:len(vocab_keys)].astype(np.int32)  # repeated keys: several terms per key
    lookup = tokens._Lookup(vocab_keys, ids)
    want_r, want_i = tokens._distinct_pairs(*lookup.match(rows, keys), n_ids)
    n_rows = len(offsets) - 1
    excl_of_row = rng.integers(0, 3, n_rows)
    excl = [np.unique(rng.choice(ids, rng.integers(0, 4))) if len(ids) else ids for _ in range(3)]
    excl_off = np.concatenate([[0], np.cumsum([len(e) for e in excl])])
    drop = np.array([i in set(excl[excl_of_row[r]].tolist()) for r, i in zip(want_r, want_i)], bool)
    got_off, got_ids = term_kernels.row_term_ids(values, offsets, max_n, lookup, n_ids,
                                            exclude=(excl_of_row, excl_off, np.concatenate(excl)))
    assert np.array_equal(np.repeat(np.arange(n_rows), np.diff(got_off)), want_r[~drop])
    assert np.array_equal(got_ids, want_i[~drop])
    got_off, got_ids = term_kernels.row_term_ids(values, offsets, max_n, lookup, n_ids)
    assert np.array_equal(got_ids, want_i) and np.array_equal(np.diff(got_off), np.bincount(want_r, minlength=n_rows))


@needs_numba
def test_row_term_ids_tell_absent_keys_at_settled_and_crowded_homes():
    """A key whose home slot holds another key is absent when no key homed there was displaced (answered at
    home), and is probed for when one was: 1-gram keys (the token hashes themselves) chosen to share home slots
    of the smallest table (4,096 slots)."""
    size = 4096
    a, b, e = 5, 5 + size, 5 + 2 * size  # home 5: a there, b displaced to slot 6, e absent (probed)
    c, d = 100, 100 + size  # home 100: c there, settled; d absent (answered at home)
    f = 6 + 3 * size  # home 6, where b lies: absent
    lookup = tokens._Lookup(np.array([a, b, c], np.uint64), np.array([0, 1, 2], np.int32))
    assert lookup.table[5] >= 0 and lookup.ukeys[lookup.table[6]] == b  # b was displaced, as meant
    rows = [[a, d], [b], [c, e], [d], [b, c, f], [e, f], []]
    values = np.array([t for row in rows for t in row], np.uint64)
    offsets = np.concatenate([[0], np.cumsum([len(row) for row in rows])]).astype(np.int64)
    got_off, got_ids = term_kernels.row_term_ids(values, offsets, 1, lookup, 3)
    got = [got_ids[got_off[i]:got_off[i + 1]].tolist() for i in range(len(rows))]
    assert got == [[0], [1], [2], [], [1, 2], [], []]


@needs_numba
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 4))
def test_row_term_ids_of_long_rows_with_many_ids(seed, max_n):
    """Many term ids (bitmap words past 64), rows longer than the kernel's first buffers, key-token lookups whose
    words name many terms (the output grows past its first guess) and exclusion lists, against the numpy path's
    pairs (max_n 0 counts words, as `tokens.ngram_keys` does)."""
    rng = np.random.default_rng(seed)
    alphabet = rng.integers(0, 2**63, 40, dtype=np.uint64)
    lengths = rng.choice([0, 1, 3, 70, 400], rng.integers(1, 12))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.choice(alphabet, int(offsets[-1]))
    rows, keys = tokens.ngram_keys(values, offsets, max_n)
    vocab_keys = np.concatenate([rng.choice(keys, min(600, len(keys))) if len(keys) else keys[:0],
                                 rng.integers(0, 2**63, 50, dtype=np.uint64)])
    n_ids = 4500 + int(rng.integers(0, 64))
    ids = rng.permutation(n_ids)[:len(vocab_keys)].astype(np.int32)
    lookup = tokens._Lookup(vocab_keys, ids)
    # key tokens: some words name up to 300 terms each
    words = rng.choice(alphabet, 12, replace=False)
    k_keys = np.repeat(words, rng.integers(1, 300, len(words)))
    key_lookup = tokens._Lookup(k_keys, rng.integers(0, n_ids, len(k_keys)).astype(np.int32))
    n_rows = len(offsets) - 1
    lists = [np.unique(rng.integers(0, n_ids, rng.integers(0, 900))).astype(np.int32) for _ in range(3)]
    list_off = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    excl_of_row = rng.integers(0, 3, n_rows)
    m_rows, m_ids = lookup.match(rows, keys)
    w_rows = np.repeat(np.arange(n_rows), np.diff(offsets))
    k_rows, k_ids = key_lookup.match(w_rows, values)
    want_r, want_i = tokens._distinct_pairs(np.concatenate([m_rows, k_rows]), np.concatenate([m_ids, k_ids]), n_ids)
    drop = np.array([i in set(lists[excl_of_row[r]].tolist()) for r, i in zip(want_r, want_i)], bool)
    exclude = (excl_of_row, list_off, np.concatenate(lists))
    got_off, got_ids = term_kernels.row_term_ids(values, offsets, max_n, lookup, n_ids, exclude=exclude,
                                                 keys=key_lookup)
    assert np.array_equal(np.repeat(np.arange(n_rows), np.diff(got_off)), want_r[~drop])
    assert np.array_equal(got_ids, want_i[~drop]) and got_ids.dtype == np.int32
    got_off, got_ids = term_kernels.row_term_ids(values, offsets, max_n, lookup, n_ids, keys=key_lookup)
    assert np.array_equal(got_ids, want_i) and np.array_equal(np.diff(got_off), np.bincount(want_r, minlength=n_rows))


def _lookup_of(keys: np.ndarray, share: float, n_ids: int, rng: np.random.Generator) -> tokens._Lookup:
    """A `tokens._Lookup` of about `share` of the distinct `keys`, a tenth of those twice or three times (keys
    naming several terms) and 3 keys found nowhere, each entry with a random term id below `n_ids`."""
    chosen = keys[rng.random(len(keys)) < share]
    again = chosen[rng.random(len(chosen)) < 0.1]
    entries = np.concatenate([chosen, again, again[: len(again) // 2], rng.integers(0, 2**63, 3, dtype=np.uint64)])
    return tokens._Lookup(entries, rng.integers(0, n_ids, len(entries)).astype(np.int32))


@needs_numba
@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(_ANY, st.sampled_from(_EDGE_TEXTS)), min_size=1, max_size=14), st.integers(0, 2**32),
       st.integers(1, 4))
def test_term_ids_in_one_pass_equal_hashes_then_lookup(texts, seed, max_n):
    """`tokhash.span_term_ids` (each text tokenised and looked up in one pass where it lies in a larger buffer,
    non-ASCII texts cut out and hashed apart) = the token counts of `token_hashes` and `row_term_ids` of its
    hashes (the former two-kernel path), with exclusion lists and a key-token lookup; `text_term_ids` the same
    over a string array."""
    from rlaudit.derived import styles
    from rlaudit.text import cut_ranges, validity

    rng = np.random.default_rng(seed)
    arr = pa.array(texts, pa.string())
    order = rng.permutation(len(texts))  # laid out in another order, "x" between them
    data, lo, hi = laid_out(texts, list(order))
    valid = validity(arr)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernels.ENV, "numba")
        values, offsets = tokhash.token_hashes(arr)
        rows, keys = tokens.ngram_keys(values, offsets, max_n)
        n_ids = 200
        # half the distinct n-grams are terms, a few keys name two or three terms (as a vocabulary's may), and
        # some keys are absent; not one entry per occurrence: a key repeated 10,000 times ("a " * 20_000) would
        # name 10,000 terms and make every lookup of it quadratic, which no vocabulary does
        lookup = _lookup_of(np.unique(keys), 0.5, n_ids, rng)
        key_lookup = _lookup_of(np.unique(values), 0.3, n_ids, rng)
        lists = [np.unique(rng.integers(0, n_ids, rng.integers(0, 40))).astype(np.int32) for _ in range(3)]
        exclude = (rng.integers(0, 3, len(texts)), np.concatenate([[0], np.cumsum([len(x) for x in lists])]),
                   np.concatenate(lists))
        found = styles.scan_spans(data, lo, hi)
        for kw in ({}, {"exclude": exclude}, {"keys": key_lookup}, {"exclude": exclude, "keys": key_lookup}):
            want = term_kernels.row_term_ids(values, offsets, max_n, lookup, n_ids, **kw)
            got = tokhash.span_term_ids(data, lo, hi, found.ascii,
                                        lambda r: cut_ranges(data, lo[r], hi[r], valid[r]), max_n, lookup, n_ids, **kw)
            assert np.array_equal(got[0], np.diff(offsets))
            assert np.array_equal(got[1], want[0]) and np.array_equal(got[2], want[1])
            if "exclude" not in kw:
                got = tokhash.text_term_ids(arr, max_n, lookup, n_ids, keys=kw.get("keys"))
                assert np.array_equal(got[0], np.diff(offsets))
                assert np.array_equal(got[1], want[0]) and np.array_equal(got[2], want[1])


@needs_numba
def test_term_sets_of_a_simulated_run_are_identical(tmp_path, monkeypatch):
    """`tokens.term_sets` caches the same vocabulary, term sets and per-step counts with either kernel."""
    from rlaudit.organisms import simulate
    from rlaudit.store import Store

    simulate("goblin_persona", tmp_path / "sim", format="trl", seed=2, steps=12)
    tables = []
    for k in ("numpy", "numba"):
        monkeypatch.setenv(kernels.ENV, k)
        store = Store(tmp_path / f"store-{k}")
        run = store.ingest(tmp_path / "sim").run
        sets = tokens.term_sets(store, run)
        assert all(not isinstance(p["terms"], pa.Table) for _, p in sets.parts)  # cached files
        tables.append((sets.vocab, [(name, sets.part_table(i, "terms"), sets.part_table(i, "counts"))
                                    for i, (name, _) in enumerate(sets.parts)]))
    (va, pa_), (vb, pb) = tables
    assert va.equals(vb)
    assert len(pa_) == len(pb) > 0
    assert sum(t.num_rows for _, t, _ in pa_) > 500
    assert any(len(x) for _, t, _ in pa_ for x in t.column("answer_terms").to_pylist())
    for (na, ta, ca), (nb, tb, cb) in zip(pa_, pb):
        assert na.split("-")[0] == nb.split("-")[0]  # the same source file (the suffix is the ingest time)
        assert ta.equals(tb) and ca.equals(cb)


def test_a_bad_kernel_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "fortran")
    with pytest.raises(RlauditError, match="RLAUDIT_KERNEL='fortran'.*numpy, numba"):
        kernels.backend()
    from rlaudit import memory

    with pytest.raises(RlauditError, match="RLAUDIT_KERNEL"):
        memory.prepare()  # checked before any work, with RLAUDIT_THREADS
    monkeypatch.setenv(kernels.ENV, "numpy")
    assert kernels.backend() == "numpy"
    monkeypatch.setattr(kernels, "_available", False)
    monkeypatch.setenv(kernels.ENV, "numba")
    with pytest.raises(RlauditError, match="numba cannot be imported"):
        kernels.backend()
    monkeypatch.delenv(kernels.ENV)
    assert kernels.backend() == "numpy"  # unset and absent: the numpy path


def test_a_thread_asking_while_another_imports_numba_waits_for_the_answer(monkeypatch):
    """`kernels.available` while another thread is still importing numba: the answer, not a transient False
    (a cold audit's two vocabulary threads ask at once; the second took the numpy path)."""
    import threading
    import time

    inside = threading.Event()

    def slow_import():
        inside.set()
        time.sleep(0.2)
        return True

    monkeypatch.setattr(kernels, "_available", None)
    monkeypatch.setattr(kernels, "_import_numba", slow_import)
    first = threading.Thread(target=kernels.available)
    first.start()
    inside.wait()
    assert kernels.available() is True
    first.join()


def test_the_cli_stops_on_a_bad_kernel_setting_before_any_work(tmp_path, monkeypatch, capsys):
    from rlaudit import cli

    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", str(tmp_path), "--store", str(tmp_path / "store")])
    assert exit_.value.code == 2
    assert "RLAUDIT_KERNEL='fast'" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "store").exists()


@needs_numba
def test_a_live_hook_with_thread_audits_loads_the_kernels_before_training(tmp_path, monkeypatch):
    """Loading numba in the background audit thread would hold the GIL mid-step (0.3-0.5 s measured, several
    seconds under load): a hook whose heavy audits run in a thread loads the kernels when it is created."""
    from rlaudit.live.auditor import LiveAuditor, LiveConfig

    monkeypatch.delenv(kernels.ENV, raising=False)
    monkeypatch.setattr(term_kernels.compiled, "value", None)
    LiveAuditor(str(tmp_path / "store"), "r", LiveConfig(background="process"))
    assert term_kernels.compiled.value is None  # a process audit loads them in its own interpreter
    LiveAuditor(str(tmp_path / "store"), "r", LiveConfig(background="thread"))
    assert term_kernels.compiled.value is not None


@st.composite
def _cells_case(draw):
    n = draw(st.integers(0, 40))
    cell = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    has_r = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    pairs = []
    for lo, hi in ((0, 30), (30, 50)):  # the two places' ids are disjoint, as answer and reasoning terms are
        sets = [sorted(draw(st.sets(st.integers(lo, hi - 1), max_size=8))) for _ in range(n)]
        pairs.append(_lists(sets))
    return np.array(cell, np.int64), np.array(has_r, bool), pairs


def _lists(sets):
    """(int64 offsets per row, int32 ids) of rows' id lists."""
    return (np.concatenate([[0], np.cumsum([len(s) for s in sets], dtype=np.int64)]).astype(np.int64),
            np.array([t for s in sets for t in s], np.int32))


@needs_numba
@settings(max_examples=80, deadline=None)
@given(_cells_case())
def test_cell_term_counts_equal_the_sorted_pairs(case):
    """`term_kernels.cell_term_counts` (the compiled path of `termcells.reduce_arrays`) equals the numpy path."""
    from rlaudit.derived import termcells

    cell, has_r, pairs = case
    a, b = _both(lambda: termcells._cell_terms(cell, has_r, pairs))
    a, b = (np.stack([np.asarray(x, np.int64) for x in t], 1).reshape(-1, 3) for t in (a, b))
    # the numpy path sorts by (cell, id); the compiled one groups by cell, ids in the order first seen
    assert np.array_equal(a, b[np.lexsort((b[:, 1], b[:, 0]))])
    assert np.all(np.diff(b[:, 0]) >= 0)
    kept = np.diff(pairs[0][0]).sum() + np.diff(pairs[1][0])[has_r].sum() if len(cell) else 0
    assert int(b[:, 2].sum()) == kept  # every kept pair counted once


@st.composite
def _vocab_sample(draw):
    """A vocabulary sample as `tokens._compute_vocab` hands it over: texts (few words, so n-grams repeat; other
    scripts, NULLs), each row's bin and condition (NULL a condition of its own), rows ordered by (bin, condition)."""
    n = draw(st.integers(0, 30))
    rows = sorted(draw(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["a", "b", None])), min_size=n,
                                max_size=n)), key=lambda r: (r[0], r[1] is None, r[1] or ""))
    texts = draw(st.lists(_ANY, min_size=n, max_size=n))
    return pa.table({"bin": pa.array([b for b, _ in rows], pa.int32()),
                     "condition": pa.array([c for _, c in rows], pa.string()), "answer": pa.array(texts, pa.string())})


@needs_numba
@settings(max_examples=120, deadline=None)
@given(_vocab_sample(), st.integers(1, 3), st.integers(0, 4), st.sampled_from([0.0, 0.01, 0.2, 0.5, 1 / 3]))
def test_vocabulary_document_frequencies_are_identical(sample, min_count, max_n, min_prevalence):
    """`tokens._sample_df` through `term_kernels.ngram_prevalences` (two passes, a hash table, the records folded
    in the kernel) equals the numpy path (occurrence arrays, sorts, `tokens._prevalences`): kept keys and their
    rows, first occurrences, and the qualifying n-grams with their prevalences, value for value."""
    o = tokens.VocabOptions(min_count=min_count, max_n=max_n, min_prevalence=min_prevalence)
    cells = tokens._SampleCells.of(sample)
    a, b = _both(lambda: tokens._sample_df(sample, cells, "answer", o))
    for name in ("uniq", "total"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y)
    for name in ("row", "start", "order"):
        assert a.first[name].dtype == b.first[name].dtype and np.array_equal(a.first[name], b.first[name])
    assert a.qualified.equals(b.qualified)


def _kernel_records(want: dict[int, set[int]], found: list[int], cell: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n-gram, cell, rows) of every (n-gram, cell) pair holding it: n-gram u = found[u], its rows want[found[u]]."""
    by_cell: dict[tuple[int, int], int] = {}
    for u, k in enumerate(found):
        for r in want[k]:
            by_cell[(u, int(cell[r]))] = by_cell.get((u, int(cell[r])), 0) + 1
    pairs = list(by_cell)
    return (np.array([u for u, _ in pairs], np.int64), np.array([c for _, c in pairs], np.int64),
            np.array([by_cell[p] for p in pairs], np.int64))


@needs_numba
@pytest.mark.parametrize("min_count", [0, 1, 3, 300])
@pytest.mark.parametrize("n_cond, null_cond", [(1, -1), (2, 1), (3, -1)])
def test_vocabulary_counts_of_long_rows_and_colliding_keys(min_count, n_cond, null_cond):
    """`term_kernels.ngram_prevalences` against a count in Python: rows long enough to grow its tables and records
    several times over, keys sharing their low bits (long probe chains, and one counter of the first pass's
    screen), cells as runs of adjacent rows (one condition; two, one of them NULL; three). Every n-gram of
    min_count rows or more is there (others may be), each with its exact rows and first occurrence, and its
    prevalences those `tokens._prevalences` computes from its rows per cell."""
    rng = np.random.default_rng(7)
    lengths = rng.integers(0, 3000, 40)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, 5000, int(offsets[-1])).astype(np.uint64)
    values[: len(values) // 2] <<= np.uint64(30)  # half the words share their low 30 bits (all zero)
    cell = np.repeat(np.arange(8), 5).astype(np.int64)
    rows = np.bincount(cell, minlength=-(-8 // n_cond) * n_cond)
    ukeys, total, f_row, f_start, f_n, pmax, spread = term_kernels.ngram_prevalences(
        values, offsets, cell, rows, n_cond, null_cond, 3, min_count)
    row, key = tokens.ngram_keys(values, offsets, 3)
    want: dict[int, set[int]] = {}
    for k, r in zip(key.tolist(), row.tolist()):
        want.setdefault(k, set()).add(r)
    found = ukeys.tolist()
    assert len(set(found)) == len(found) and set(found) <= set(want)
    assert {k for k, rows in want.items() if len(rows) >= min_count} <= set(found)
    if min_count <= 1:
        assert set(found) == set(want)
    assert [len(want[k]) for k in found] == total.tolist()
    for u in range(0, len(ukeys), 97):  # first occurrences: the key of those tokens, in the first row holding it
        s = offsets[f_row[u]] + f_start[u]
        assert tokens.ngram_keys(values[s:s + f_n[u]], np.array([0, f_n[u]]), f_n[u])[1][-1] == ukeys[u]
        assert f_row[u] == min(want[int(ukeys[u])])
    cells = tokens._SampleCells(cell, rows, n_cond, null_cond)
    o = tokens.VocabOptions(min_count=min_count, min_prevalence=0.0)
    want_q = tokens._prevalences(_kernel_records(want, found, cell), len(found), cells, o)
    assert tokens._qualifying(pmax, spread, o).equals(want_q)


@st.composite
def _step_case(draw):
    n = draw(st.integers(0, 40))
    n_cells, n_prompts, n_ids = draw(st.integers(1, 5)), draw(st.integers(1, 6)), 50
    cell = np.array(draw(st.lists(st.integers(0, n_cells - 1), min_size=n, max_size=n)), np.int64)
    prompt = np.array(draw(st.lists(st.integers(0, n_prompts - 1), min_size=n, max_size=n)), np.int64)
    has_r = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
    pairs = {}
    for where, (lo, hi) in zip(tokens.WHERES, ((0, 30), (30, 50))):  # disjoint ids, as answer and reasoning terms
        sets = [sorted(draw(st.sets(st.integers(lo, hi - 1), max_size=8))) for _ in range(n)]
        pairs[where] = _lists(sets)
    lists = [sorted(draw(st.sets(st.integers(0, n_ids - 1), max_size=10))) for _ in range(n_prompts)]
    pt_start = np.concatenate([[0], np.cumsum([len(s) for s in lists])]).astype(np.int64)
    pi = np.array([t for s in lists for t in s], np.int32)
    return cell, n_cells, pairs, has_r, prompt, n_prompts, pt_start, pi, n_ids


@needs_numba
@settings(max_examples=80, deadline=None)
@given(_step_case())
def test_step_term_counts_are_identical(case):
    """`term_kernels.step_term_counts` (the compiled path of `tokens._step_term_counts`: the per-step counts x and m)
    equals the numpy path, and both equal a count row by row."""
    cell, n_cells, pairs, has_r, prompt, n_prompts, pt_start, pi, n_ids = case
    a, b = _both(lambda: tokens._step_term_counts(cell, n_cells, pairs, has_r, prompt, n_prompts, pt_start, pi,
                                                  n_ids))
    for where, (xa, ma), (xb, mb) in zip(tokens.WHERES, a, b):
        assert xa.dtype == xb.dtype == ma.dtype == mb.dtype == np.int64
        assert np.array_equal(xa, xb) and np.array_equal(ma, mb)
        x, m = np.zeros(n_cells * n_ids, np.int64), np.zeros(n_cells * n_ids, np.int64)
        for r in range(len(cell)):
            if where == "reasoning" and not has_r[r]:
                continue
            off, ids = pairs[where]
            for t in ids[off[r]:off[r + 1]]:
                x[cell[r] * n_ids + t] += 1
            for t in pi[pt_start[prompt[r]]:pt_start[prompt[r] + 1]]:
                m[cell[r] * n_ids + t] += 1
        assert np.array_equal(xa, x) and np.array_equal(ma, m)


def test_compiled_builds_once_across_threads():
    """Worker threads of a cold audit ask for the kernels at once: they are built by one of them, once."""
    import threading

    calls = []
    gate = threading.Event()

    def build():
        gate.wait(1)
        calls.append(1)
        return SimpleNamespace(ok=True)

    lazy = kernels.Compiled(build)
    assert lazy.value is None
    threads = [threading.Thread(target=lazy) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert calls == [1] and lazy().ok and lazy.value is not None


def test_preload_knows_every_kernel_module():
    """`preload` (a live hook before training, the benchmark before timing) loads every module's kernels: one
    left out would be compiled inside a background audit thread, holding the GIL mid-step."""
    import re
    from pathlib import Path

    src = Path(kernels.__file__).parent
    holders = {"rlaudit." + ".".join(p.relative_to(src).with_suffix("").parts)
               for p in src.rglob("*.py") if re.search(r"^compiled = (\w+\.)?Compiled\(", p.read_text(), re.M)}
    assert holders == set(kernels.MODULES)


def test_preload_loads_every_compiled_of_those_modules(monkeypatch):
    """Not only each module's `compiled`: every module-level `Compiled` (ingest's kernels, built apart, were left
    out, and the span gatherer compiled inside a cold emerging run)."""
    import importlib
    import re
    from pathlib import Path

    pytest.importorskip("numba")
    monkeypatch.delenv(kernels.ENV, raising=False)
    src = Path(kernels.__file__).parent
    names = {(name, m) for name in kernels.MODULES for m in re.findall(
        r"^(\w+) = (?:\w+\.)?Compiled\(", (src / Path(*name.split(".")[1:])).with_suffix(".py").read_text(), re.M)}
    assert ("rlaudit.derived.kernels", "ingest") in names
    kernels.preload()
    assert all(getattr(importlib.import_module(name), attr).value is not None for name, attr in names)


# whitespace of every kind at the answer's edges (RE2's, Unicode's, the vertical tab and control bytes that only
# one of them counts), tags split, nested and repeated, and runs of whitespace longer than the numpy path's scan
_SPAN_PIECES = ["<think>", "</think>", "<r>", "</r>", "</", "think>", "<", ">", " ", "\n", "\t", "\r", "\f", "\v",
                "\x1c", "\x85", "\u00a0", "\u2028", "\u3000", "a", "é", "x" * 20, " " * 40, "\n" * 20, "\x00"]


@needs_numba
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.lists(st.sampled_from(_SPAN_PIECES), max_size=12).map("".join), st.none()),
                min_size=1, max_size=25),
       st.sampled_from([text.ThinkTags(), text.ThinkTags("<r>", "</r>")]))
def test_reasoning_spans_are_identical_and_cut_the_reference_split(texts, tags):
    """Ingest's compiled span split (`kernels.think_spans`) gives the numpy path's spans, and both cut exactly
    what the regex reference split gives (Unicode whitespace at an answer's edge left to Arrow's trim)."""
    pytest.importorskip("numba")  # the compiled path runs where numba is imported (an audit imports it first)
    arr = pa.array(texts, pa.string())
    a, b = _both(lambda: text.reasoning_spans(arr, tags))
    for field in ("reasoning_start", "reasoning_end", "answer_start", "answer_end"):
        assert getattr(a, field).equals(getattr(b, field)), field
    ref_r, ref_a = text.split_reasoning(arr, tags)
    assert text.text_at(arr, b.reasoning_start, b.reasoning_end).to_pylist() == ref_r.to_pylist()
    assert text.text_at(arr, b.answer_start, b.answer_end).to_pylist() == ref_a.to_pylist()
    # the close tag's search gives the part's fact too (a null completion is split as empty)
    holds = [text.THINK_CLOSE in (t or "") for t in texts] if tags.close == text.THINK_CLOSE else None
    for spans in (a, b):
        assert (spans.think_close is None) == (holds is None)
        assert holds is None or spans.think_close.tolist() == holds


@needs_numba
def test_reasoning_spans_take_the_compiled_path_once_numba_is_imported(monkeypatch):
    """The compiled split runs (its kernel is called) when numba is chosen and imported, and not under
    RLAUDIT_KERNEL=numpy."""
    pytest.importorskip("numba")
    calls = []
    real = term_kernels.ingest().think_spans
    monkeypatch.setattr(term_kernels.ingest(), "think_spans", lambda *a: calls.append(1) or real(*a))
    arr = pa.array(["<think>r</think> a", "plain"], pa.string())
    spans = text.reasoning_spans(arr)
    assert calls == [1] and spans.answer_start.to_pylist() == [17, 0]
    monkeypatch.setenv(kernels.ENV, "numpy")
    text.reasoning_spans(arr)
    assert calls == [1]


_FACT_PIECES = ["</think>", "</think", "think>", "<", "/", "a", " ", "é", "哥布林", "👍🏽", "e\u0301", "\u00a0",
                "\x00", "x" * 30]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.lists(st.sampled_from(_FACT_PIECES), max_size=10).map("".join), st.none()),
                min_size=1, max_size=25))
def test_completion_facts_are_duckdbs_length_and_think_test(texts):
    """The facts a part keeps of each completion (`layout.FACTS`), on the compiled and the Arrow path, are what
    the per-part statistics computed from the text before: DuckDB's `length(completion)` and `completion LIKE
    '%</think>%'`, null for a null completion."""
    import duckdb

    arr = pa.array(texts, pa.string())
    want = duckdb.sql("SELECT length(c), c LIKE '%</think>%' FROM (SELECT unnest($1) AS c, "
                      "generate_subscripts($1, 1) AS i) ORDER BY i", params=[texts]).fetchall()
    runs = _both(lambda: text.completion_facts(arr)) if kernels.available() else [text.completion_facts(arr)]
    if kernels.available():
        pytest.importorskip("numba")  # the compiled path runs where numba is imported
    for chars, think in runs:
        assert chars.type == pa.int32() and think.type == pa.bool_()
        assert list(zip(chars.to_pylist(), think.to_pylist())) == [tuple(r) for r in want]
