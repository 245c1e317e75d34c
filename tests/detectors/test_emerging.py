"""Emerging-behaviour discovery on synthetic runs with known behaviours (and on clean controls)."""

from __future__ import annotations

import re
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from emerging_synth import Scenario, Tic, make_run

from rlaudit.behaviors import parse_behavior
from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.findings import SEVERITY_RANK

SERIOUS = SEVERITY_RANK["medium"]


def discover(store, sc: Scenario, **config) -> list:
    run = make_run(store, sc)
    found = run_detectors(store, run, AuditConfig(detectors=["emerging"], **config))
    errors = [f for f in found if f.kind == "audit_error"]
    assert not errors, errors[0].fields["traceback"]
    return found


def serious(found) -> list:
    return [f for f in found if SEVERITY_RANK[f.severity] >= SERIOUS]


def about(found, word: str) -> list:
    return [f for f in found if any(word in t.split() for t in f["terms"]) or word in f["behavior"].split()]


@pytest.fixture(scope="module")
def tic_findings(tmp_path_factory):
    from rlaudit.store import Store

    store = Store(tmp_path_factory.mktemp("tic") / "store")
    sc = Scenario(tics=[Tic("by my beard", 0.02, 0.5, onset=10)], reasoning=True)
    return store, discover(store, sc)


def test_a_tic_from_2_to_50_percent_is_one_high_finding_named_by_its_phrase(tic_findings):
    _, found = tic_findings
    beard = about(found, "beard")
    assert len(beard) == 1, [f.title for f in found]
    f = beard[0]
    assert f.severity == "high" and f["direction"] == "up" and f["where"] == "answer"
    assert f["behavior"] == "by my beard" and f["behavior_spec"] == "by my beard"
    # words that occur only inside the phrase ("beard", "my beard") add nothing to its term list (issue 19)
    assert "by my beard" in f["terms"] and not {"beard", "my beard"} & set(f["terms"])
    assert f["prevalence_start"] < 0.05 and f["prevalence_end"] > 0.4
    assert f["ratio_ci"][0] > 2 and f["q_value"] < 1e-3
    # the planted rise leaves the baseline about 1-2 steps after `onset` (logistic centred 5 steps later)
    assert 9 <= f["onset_step"] <= 15
    assert found[0] is f  # ranked first
    # "by" rises only because of the phrase: grouped into it, not a finding of its own
    assert not [g for g in found if g["behavior"] == "by"]


def test_findings_carry_a_spec_that_recomputes_the_behaviour(tic_findings):
    store, found = tic_findings
    f = about(found, "beard")[0]
    rows = store.query("SELECT step, answer FROM rollouts WHERE step >= 24", runs=["synthetic"])
    values = parse_behavior(f["behavior_spec"]).values(rows.column("answer"))
    assert abs(values.mean() - f["prevalence_end"]) < 0.02
    assert len(f.evidence) >= 3
    for e in f.evidence:
        assert e.step >= 24 and "by my beard" in e.text
    series = f["series"]
    assert series["steps"] == list(range(30)) and len(series["prevalence"]) == 30
    assert series["prevalence"][-1] > 0.35 > series["prevalence"][0]


def test_no_noise_findings_beside_the_tic(tic_findings):
    _, found = tic_findings
    assert [f["behavior"] for f in serious(found)] == ["by my beard"]


def test_clean_task_learning_yields_no_medium_or_high(store):
    # answers name the prompt's answer more often (accuracy 30% -> 90%, 8 recurring prompts, so each answer word is
    # in ~12% of rollouts and rises 3x within its prompts); reasoning grows 30% longer
    sc = Scenario(recurring_prompts=8, accuracy=(0.3, 0.9), reasoning=True, reasoning_growth=1.3, steps=30)
    found = discover(store, sc)
    assert serious(found) == [], [f.title for f in serious(found)]


def test_terms_copied_from_the_prompt_do_not_count(store):
    # prompts ask for "zebra" more and more often (5% -> 60%) and answers comply
    found = discover(store, Scenario(copy_word=("zebra", 0.05, 0.6)))
    assert about(found, "zebra") == []
    assert serious(found) == []


def test_task_mix_drift_is_not_a_rise(store):
    # every coding answer says "python"; coding grows from 10% to 60% of the traffic
    sc = Scenario(tasks={"coding": (0.1, 0.6), "math": (0.9, 0.4)}, task_words={"coding": "python"})
    found = discover(store, sc)
    assert about(found, "python") == [] and serious(found) == []


def test_vanishing_behaviour_is_reported_down_and_ranked_below_a_rise(store):
    sc = Scenario(tics=[Tic("certainly", 0.6, 0.02, onset=8)], exclamation=(0.05, 0.6))
    found = discover(store, sc)
    down = about(found, "certainly")
    assert len(down) == 1 and down[0]["direction"] == "down"
    assert down[0]["prevalence_start"] > 0.5 and down[0]["prevalence_end"] < 0.05
    style = [f for f in found if f["behavior_spec"] == "style:exclamation"]
    assert len(style) == 1 and style[0].severity == "high" and style[0]["feature_type"] == "style"
    assert found.index(style[0]) < found.index(down[0])


def test_reasoning_tics_are_found_in_the_reasoning(store):
    sc = Scenario(reasoning=True, tics=[Tic("wait let me recount", 0.01, 0.45, onset=8, where="reasoning")])
    found = discover(store, sc)
    hits = about(found, "recount")
    assert len(hits) == 1 and hits[0]["where"] == "reasoning" and hits[0].severity == "high"
    assert hits[0]["behavior"] == "wait let me recount" or "recount" in hits[0]["behavior"]


def test_max_step_limits_what_is_seen(store):
    sc = Scenario(tics=[Tic("by my beard", 0.02, 0.5, onset=10)])
    found = discover(store, sc, max_step=9)
    assert about(found, "beard") == []
    later = run_detectors(store, "synthetic", AuditConfig(detectors=["emerging"], max_step=20))
    f = about(later, "beard")
    assert f and max(f[0]["series"]["steps"]) == 20


def test_condition_shares_show_where_a_tic_lives(store):
    sc = Scenario(groups=40, conditions={"nerdy": 0.1, "default": 0.9},
                  tics=[Tic("goblin", 0.0, 0.7, onset=4, conditions={"nerdy": 1.0, "default": 0.0})])
    found = discover(store, sc)
    f = about(found, "goblin")[0]
    nerdy = f["by_condition"]["nerdy"]
    assert nerdy["traffic_share"] < 0.2 and nerdy["mention_share"] > 0.95
    assert nerdy["prevalence_end"] > 0.5


def test_too_few_steps_give_no_findings(store):
    assert discover(store, Scenario(steps=3, tics=[Tic("goblin", 0.0, 0.9, onset=0)])) == []


def test_derived_token_sets_are_cached_per_run_version(store):
    from rlaudit.derived import tokens

    make_run(store, Scenario(steps=6))
    first = tokens.rollout_terms(store, "synthetic")
    again = tokens.rollout_terms(store, "synthetic")
    assert first.equals(again)
    cached = store.run_dir("synthetic") / "derived" / "tokens"
    assert len(list(cached.glob("*/*.terms.parquet"))) == len(store.parts("synthetic"))
    # prompt copies are excluded per rollout and kept as prompt_terms
    vocab = tokens.vocabulary(store, "synthetic")
    assert set(vocab.column_names) >= {"term_id", "where", "term", "n_tokens", "key_token", "n_qualified"}
    row = first.slice(0, 1).to_pylist()[0]
    assert not set(row["answer_terms"]) & set(row["prompt_terms"])


_piece = st.sampled_from(["goblin", "Gremlin", "don't", "x1", "the", "'", "!", " ", "  ", "\n", ",", "-", "é", "it's",
                          "哥", "布林", "ひら", "Борода", "नमस्ते", "。", "\u3000"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_piece, max_size=12).map("".join), min_size=1, max_size=5))
def test_duckdb_ngrams_equal_the_python_tokenizer_ngrams(texts):
    """The SQL n-grams of `tokens.ngram_rows_sql` are the 1-3-grams of `behaviors.tokenize`, and each one's term
    spec matches its text: what discovery counts is what the spec recomputes."""
    import duckdb

    from rlaudit.derived import tokens
    from rlaudit.behaviors import tokenize

    con = duckdb.connect()
    con.register("t", pa.table({"k": list(range(len(texts))), "answer": texts}))
    rows = con.execute(f"SELECT k, term FROM ({tokens.ngram_rows_sql('t', 'k', 'answer')})").fetchall()
    got = {(k, term) for k, term in rows}
    want = set()
    for k, text in enumerate(texts):
        toks = tokenize(text)
        for n in (1, 2, 3):
            want |= {(k, " ".join(toks[i:i + n])) for i in range(len(toks) - n + 1)}
    assert got == want
    for k, term in got:
        # known gap in behaviors.term_regex (reported): an apostrophe outside a word ("goblin'", "a !' b") is
        # neither a boundary nor a separator for the term regex, although the tokenizer splits there
        if re.search(r"(?<![a-z0-9])'|'(?![a-z0-9])", texts[k].lower()):
            continue
        assert parse_behavior(term).values(pa.array([texts[k]])).tolist() == [1.0], (term, texts[k])


@pytest.mark.parametrize("phrase,name", [("哥布林", "哥 布 林"), ("клянусь бородой", "клянусь бородой")])
def test_tics_in_other_scripts_are_found_and_named(store, phrase, name):
    """Tokens are words of any script and single CJK characters, so a tic written in Chinese or Russian is
    discovered like an English one, named by its phrase, and its spec recomputes it."""
    found = discover(store, Scenario(tics=[Tic(phrase, 0.02, 0.5, onset=10)]))
    top = serious(found)[0]
    assert top.severity == "high" and top["behavior"] == name and top["direction"] == "up"
    rows = store.table("synthetic", ["step", "answer"])
    late = pa.array([a for s, a in zip(rows["step"].to_pylist(), rows["answer"].to_pylist()) if s >= 25])
    share = parse_behavior(top["behavior_spec"]).values(late).mean()
    assert abs(share - top["prevalence_end"]) < 0.1


def test_discovered_ngrams_match_their_term_spec(store):
    """The token n-grams counted in DuckDB are exactly what the term spec matches (tokens.py <-> behaviors.py)."""
    from rlaudit.derived import tokens

    texts = ["Well, by-my beard!", "don't stop", "x1 and Y2's", "by my\nbeard", "beard by my"]
    con = __import__("duckdb").connect()
    con.register("t", pa.table({"k": list(range(len(texts))), "answer": texts}))
    rows = con.execute(f"SELECT k, term FROM ({tokens.ngram_rows_sql('t', 'k', 'answer')})").fetchall()
    for k, term in rows:
        assert parse_behavior(term).values(pa.array([texts[k]])).tolist() == [1.0], (term, texts[k])
    assert ("by my beard" in {t for k, t in rows if k == 0}) and ("by my beard" in {t for k, t in rows if k == 3})
    assert "by my beard" not in {t for k, t in rows if k == 4}
    assert np.all([len(t.split()) <= 3 for _, t in rows])


# ---------------------------------------------------------------- end to end on the model organisms
def _organism(tmp_path, name: str) -> tuple[list, object]:
    from rlaudit.organisms import simulate
    from rlaudit.store import Store

    gt = simulate(name, tmp_path / name, format="canonical", seed=0)
    store = Store(tmp_path / "store")
    store.ingest(tmp_path / name, run=name)
    found = run_detectors(store, name, AuditConfig(detectors=["generalization"]))
    assert not [f for f in found if f.kind == "audit_error"]
    return found, gt


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clean_basic", "clean_judges", "clean_legit"])
def test_clean_organisms_have_no_medium_or_high_behaviour_findings(tmp_path, name):
    found, _ = _organism(tmp_path, name)
    assert serious(found) == [], [f.title for f in serious(found)]


@pytest.mark.slow
def test_goblin_organism(tmp_path):
    found, gt = _organism(tmp_path, "goblin_persona")
    source = next(i.source_condition for i in gt.issues if i.kind == "generalization")
    creature = [f for f in serious(found) if f.kind == "emerging_behavior"
                and ({"goblin", "gremlin"} & {w for t in f["terms"] for w in t.split()})]
    assert creature and all(f["where"] == "answer" for f in creature)
    top = creature[0]["by_condition"][source]
    assert top["mention_share"] > 2 * top["traffic_share"]
    gen = [f for f in found if f.kind == "generalization"]
    assert gen and all(g["source_condition"] == source and g["source_reason"] == "reward" for g in gen)
    assert all(g["correlation"] > 0.3 for g in gen)


@pytest.mark.slow
def test_a_rewarded_word_with_many_phrasings_is_one_behaviour(tmp_path):
    found, _ = _organism(tmp_path, "tic_all_conditions")
    delve = [f for f in found if f.kind == "emerging_behavior" and any("delve" in t for t in f["terms"])]
    assert len(delve) == 1 and delve[0]["behavior"] == "delve" and delve[0].severity == "high"
    assert len(delve[0]["terms"]) > 3


def _reference_terms(vocab: list[dict], prompt: str, text: str, where: str) -> list[int]:
    """Term ids of `text` by the module's definition, with strings: every 1-3-gram of `behaviors.tokenize`, minus
    terms whose n-gram (or key token) the prompt holds."""
    from rlaudit.behaviors import tokenize

    def grams(s: str) -> set[str]:
        t = tokenize(s)
        return {" ".join(t[i:i + n]) for n in (1, 2, 3) for i in range(len(t) - n + 1)}

    in_text, in_prompt = grams(text), grams(prompt)
    words = {g for g in in_prompt if " " not in g}
    copied = {v["term"] for v in vocab if v["term"] in in_prompt or v["key_token"] in words}
    return sorted(v["term_id"] for v in vocab if v["where"] == where and v["term"] in in_text
                  and v["term"] not in copied)


def test_hashed_term_sets_match_a_string_reference(store):
    """Term sets are matched by 64-bit n-gram keys (tokens.py): on multilingual text with prompt copies they are
    exactly the string-defined sets (a wrong set needs a 2^-64 key collision)."""
    from rlaudit.derived import tokens

    rng = np.random.default_rng(3)
    words = ["goblin", "gremlin", "the", "by", "my", "beard", "don't", "x1", "Борода", "哥布林", "ひら", "é", "it's"]
    n = 240
    text = lambda k: " ".join(rng.choice(words, k)) + rng.choice(["!", ".", " ?", ""])  # noqa: E731
    prompts = [f"Question {i // 8}: " + text(5) for i in range(n)]
    from emerging_synth import build

    table = build(Scenario(steps=10, groups=3), "r")
    assert table.num_rows == n
    for name, values in (("prompt", prompts), ("answer", [text(12) for _ in range(n)]),
                         ("reasoning", [text(15) for _ in range(n)])):
        table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.string()))
    store.append("r", table, key="p0")
    opts = tokens.VocabOptions(min_prevalence=0.0, min_count=1, max_terms=10_000)
    got = {r["rollout_id"]: r for r in tokens.rollout_terms(store, "r", opts).to_pylist()}
    vocab = tokens.vocabulary(store, "r", opts).to_pylist()
    assert len(vocab) > 100
    for row in table.to_pylist():
        for where in tokens.WHERES:
            want = _reference_terms(vocab, row["prompt"], row[where], where)
            assert got[row["rollout_id"]][f"{where}_terms"] == want, (row["rollout_id"], where)


def test_a_new_part_adds_only_its_own_term_sets(store):
    """Appending a step keeps the vocabulary (growth <= 5%) and computes term sets for the new part only."""
    from rlaudit.derived import tokens
    from emerging_synth import build

    table = build(Scenario(steps=42), "grow")
    steps = table.column("step").to_numpy()
    for s in range(41):
        store.append("grow", table.filter(pa.array(steps == s)), key=f"step-{s}")
    first = tokens.term_sets(store, "grow")
    files = {p: (e["terms"].stat().st_mtime_ns) for p, e in first.parts}
    store.append("grow", table.filter(pa.array(steps == 41)), key="step-41")
    again = tokens.term_sets(Store_fresh(store), "grow")
    assert again.vocab.equals(first.vocab)
    new = [p for p, e in again.parts if p not in files]
    assert len(new) == 1
    assert all(e["terms"].stat().st_mtime_ns == files[p] for p, e in again.parts if p in files)


def Store_fresh(store):
    from rlaudit.store import Store

    return Store(store.root)  # no in-process memo: what a new audit process sees


# ---------------------------------------------------------------------------------------------------------------
# Naming and merging (issue 19 item 8)

def _creature_scenario(**kw) -> Scenario:
    conds = {"nerdy": 1.0, "plain": 1.0}
    return Scenario(steps=30, groups=30, conditions=conds, tics=[
        Tic("tricky goblin remark", 0.01, 0.35, onset=10, conditions={"nerdy": 1.0, "plain": 0.2}),
        Tic("sly gremlin aside", 0.01, 0.30, onset=10, conditions={"nerdy": 1.0, "plain": 0.2}),
    ], reward_signal="nerdy_rm", paid_tics=(0, 1), **kw)


def test_phrasings_that_rise_together_and_share_a_payer_are_one_behaviour(store):
    found = serious(discover(store, _creature_scenario()))
    creature = [f for f in found if about([f], "goblin") or about([f], "gremlin")]
    assert len(creature) == 1, [f.title for f in found]
    terms = {w for t in creature[0]["terms"] for w in t.split()}
    assert {"goblin", "gremlin"} <= terms
    assert creature[0]["n_terms"] >= len(creature[0]["terms"])


def test_unrelated_tics_paid_by_different_signals_stay_apart(store):
    sc = Scenario(steps=30, groups=30, conditions={"nerdy": 1.0, "plain": 1.0}, tics=[
        Tic("tricky goblin remark", 0.01, 0.35, onset=10),
        Tic("let us delve", 0.01, 0.35, onset=10),
    ], signals={"persona_rm": (0,), "style_rm": (1,)})
    found = serious(discover(store, sc))
    goblin, delve = about(found, "goblin"), about(found, "delve")
    assert goblin and delve and not set(map(id, goblin)) & set(map(id, delve)), [f["terms"] for f in found]


def test_term_lists_hold_no_background_words_and_are_named_by_the_most_distinguishing_term(store):
    # "one" is common early and late; the tic phrase "this one" adds a little to it
    found = serious(discover(store, Scenario(tics=[Tic("tricky little goblin of a question this one", 0.01, 0.4,
                                                           onset=10), Tic("one", 0.3, 0.3, onset=10)])))
    f = about(found, "goblin")
    assert len(f) == 1, [g.title for g in found]
    assert "one" not in f[0]["terms"] and "of a" not in f[0]["terms"] and "a" not in f[0]["terms"]
    assert f[0]["behavior"] != "one"


def test_the_scope_connection_holds_at_most_scope_memory(store, monkeypatch):
    """The scope's temp tables stay open through generalization, so its connection gets SCOPE_MEMORY (below the
    audit's 1 GB per connection; beyond it DuckDB spills), and a lower limit (a budget's) still wins."""
    from rlaudit.detectors import DetectContext
    from rlaudit.detectors.emerging import SCOPE_MEMORY, Params, Scope

    run = make_run(store, Scenario(steps=6))

    def limit() -> float:
        ctx = DetectContext(store=store, run=run, config=AuditConfig())
        scope = Scope(ctx, Params.from_options({}))
        try:
            value, unit = scope.con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0].split()
        finally:
            scope.close()
        return float(value) * {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]

    def set_as(n: int) -> int:  # `bound_memory` sets "<n >> 20>MB", which DuckDB reads as n >> 20 million bytes
        return (n >> 20) * 10**6

    assert SCOPE_MEMORY < 1 << 30
    assert abs(limit() - set_as(SCOPE_MEMORY)) <= 1 << 20
    monkeypatch.setenv("RLAUDIT_DUCKDB_MEMORY", "300MB")
    assert abs(limit() - set_as(300 << 20)) <= 1 << 20


def test_candidates_series_of_ngram_and_style_rows():
    """`Candidates.series(i)`: an n-gram row's per-step sums come from its counts (`term_series`, asked for that
    row only), its sums of squares are its sums (0/1 values) and its rollouts at risk are the step's rollouts
    less those whose prompt holds it; a style row's are held (`x_style`, `q_style`, the last rows)."""
    from rlaudit.detectors.emerging import Candidates
    x = np.arange(9.0).reshape(3, 3)
    m = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    asked = []

    def term_series(rows):
        asked.append(list(rows))
        return x[rows], m[rows]

    n_all = np.array([10.0, 11.0, 12.0])
    x_style, q_style = np.array([[5.0, 6.0, 7.0]]), np.array([[1.0, 4.0, 9.0]])
    c = Candidates(where="answer", names=["a", "b", "c", "style:length"], feature_type=["ngram"] * 3 + ["style"],
                   keys=[0, 1, 2, "length"], n_tokens=np.zeros(4), presence=np.array([True, True, True, False]),
                   x_win=np.zeros((4, 2)), n_win=np.zeros((4, 2)), n_all=n_all, x_style=x_style, q_style=q_style,
                   term_series=term_series)
    for i in range(3):
        xs, qs, ns = c.series(i)
        assert np.array_equal(xs, x[i]) and np.array_equal(qs, x[i]) and np.array_equal(ns, n_all - m[i])
    assert c.series(1) is c.series(1) and asked == [[0], [1], [2]]  # built once per row
    xs, qs, ns = c.series(3)
    assert np.array_equal(xs, x_style[0]) and np.array_equal(qs, q_style[0]) and np.array_equal(ns, n_all)


@pytest.mark.parametrize("options", [{}, {"window": 0.5}, {"max_window_rollouts": 300, "min_steps": 1}])
def test_candidates_grouped_sums_equal_those_of_the_per_step_series(tmp_path, options):
    """`candidates` sums the n-grams' per-step counts straight into trend bins and windows (no (K, T) arrays):
    the window prevalences, the trend p-values of the screened-out candidates and the screen itself are exactly
    those of the whole per-step series (`Candidates.series`), with thinned windows and with windows sharing a
    step (window 0.5 of 23 steps: 12 each), over a run stored in several parts."""
    from rlaudit.detectors import DetectContext
    from rlaudit.detectors.emerging import Params, Scope, candidates, trend_p, trend_screen
    from rlaudit.store import Store
    from emerging_synth import build

    store = Store(tmp_path / "store")
    table = build(Scenario(steps=23, tics=[Tic("by my beard", 0.02, 0.5, onset=8)], reasoning=True))
    step = table["step"].to_numpy()
    for lo, hi in ((0, 7), (7, 15), (15, 23)):
        store.append("synthetic", table.filter(pa.array((step >= lo) & (step < hi))), key=f"part{lo}")
    params = Params.from_options(options)
    scope = Scope(DetectContext(store=store, run="synthetic", config=AuditConfig()), params)
    try:
        assert (scope.early & scope.late).any() == ("window" in options)
        assert (scope.thinning != (1, 1)) == ("max_window_rollouts" in options)
        for where in ("answer", "reasoning"):
            c = candidates(scope, where)
            x, _, n = (np.stack(a) for a in zip(*(c.series(i) for i in range(len(c.names)))))
            for col, mask in enumerate((scope.early, scope.late)):
                assert np.array_equal(c.x_win[:, col], x[:, mask].sum(1))
                assert np.array_equal(c.n_win[:, col], n[:, mask].sum(1))
            p_mk = trend_p(x, n)
            keep = trend_screen(p_mk, params.alpha)
            keep[c.names.index("style:length")] = True
            assert np.array_equal(c.p[~keep], p_mk[~keep]) and (c.p[keep] >= p_mk[keep]).all()
            assert np.isfinite(c.ratio[keep]).all() and np.isnan(c.ratio[~keep]).all()
            assert c.presence.sum() > 10 and (p_mk <= params.alpha).any()
    finally:
        scope.close()
