"""Behaviour specs: parsing, matching, and agreement between the Arrow and DuckDB paths."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit import duck
from rlaudit.behaviors import STYLE_FEATURES, parse_behavior, tokenize
from rlaudit.errors import RlauditError

TEXTS = ["A goblin! appears", "goblins everywhere", "Goblin", "hobgoblin", "big  red,goblin", None,
         "- item\n- two", "日本語 text", "Ok?  ", "I'm SURE 😀", "```py\nx\n```"]


@pytest.mark.parametrize("spec,expected", [
    ("goblin", [1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]),
    ("big red goblin", [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
    (r"re:\bgoblins?\b", [1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
    ("style:exclamation", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ("style:list", [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
    ("style:code_block", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
    ("style:emoji", [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
    ("style:language_switch", [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
    ("style:question", [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]),
    ("i'm", [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
])
def test_values_match_expectations(spec, expected):
    assert parse_behavior(spec).values(pa.array(TEXTS)).tolist() == expected


@pytest.mark.parametrize("spec", ["goblin", "big red goblin", r"re:\bgoblins?\b", "i'm", "re:it's"]
                         + [f"style:{name}" for name in STYLE_FEATURES])
def test_sql_agrees_with_arrow(spec):
    b = parse_behavior(spec)
    con = duckdb.connect()
    con.register("t", pa.table({"x": pa.array(TEXTS, pa.string())}))
    via_sql = con.sql(f"SELECT {b.sql('x')} AS v FROM t").fetchnumpy()["v"]
    assert via_sql.tolist() == b.values(pa.array(TEXTS)).tolist()


@pytest.mark.parametrize("spec", ["style:language_switch", r"re:\p{Han}", "re:(?i)ÉCOLE"])
def test_values_and_sql_agree_on_characters_newer_than_one_engines_unicode_tables(spec):
    """U+2EBF0 (a CJK ideograph of Unicode 15.1) is Han to Arrow's RE2 and not to DuckDB's: `values` matches with
    DuckDB's RE2, as the SQL does, so the two agree on it (and on the other texts, nulls and empties among them)."""
    texts = pa.array(["-\n-\U0002ebf0", "漢字", "école", None, "", "plain"], pa.string())
    b = parse_behavior(spec)
    con = duckdb.connect()
    con.register("t", pa.table({"x": texts}))
    via_sql = con.sql(f"SELECT {b.sql('x')} AS v FROM t").fetchnumpy()["v"]
    assert b.values(texts).tolist() == via_sql.tolist()
    assert b.values(texts)[0] == 0.0 and (spec != r"re:\p{Han}" or b.values(texts)[1] == 1.0)


def test_python_predicate(tmp_path, monkeypatch):
    (tmp_path / "mychecks.py").write_text("def has_x(t):\n    return 'x' in t\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    b = parse_behavior("mychecks:has_x")
    assert b.kind == "python" and b.sql("x") is None
    assert b.values(pa.array(["axe", "bee", None])).tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("spec,message", [
    ("", "empty behaviour"), ("re:(?<=a)b", "invalid RE2"), ("style:sparkles", "unknown style feature"),
    ("nosuchmod_xyz:func", "cannot import"), ("!!!", "no letters"),
])
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(RlauditError, match=message):
        parse_behavior(spec)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["goblin", "gremlin", "the", "cat", "don't", "x1"]), min_size=1, max_size=3),
       st.lists(st.sampled_from([" ", ", ", "\n", "! ", " -- "]), min_size=3, max_size=3))
def test_a_phrase_matches_any_text_containing_its_tokens_in_order(words, seps):
    """Discovery counts tokens; a term behaviour built from a token n-gram must match where the n-gram occurs."""
    text = "Start " + "".join(w + s for w, s in zip(words, seps)) + "end"
    phrase = " ".join(words)
    assert parse_behavior(phrase).values(pa.array([text])).tolist() == [1.0]
    assert " ".join(tokenize(text)).find(" ".join(tokenize(phrase))) >= 0


def test_tokens_are_words_of_any_script_and_single_cjk_characters():
    text = "Le Gobelin dit « 哥布林 » — don't! Ёжик नमस्ते ひらがな 42x"
    assert tokenize(text) == ["le", "gobelin", "dit", "哥", "布", "林", "don't", "ёжик", "नमस्ते", "ひ", "ら", "が",
                              "な", "42x"]


@pytest.mark.parametrize("spec,texts,expected", [
    ("哥布林", ["这是哥布林。", "哥 布 林!", "哥布", "哥x布林", "大哥布林们"], [1, 1, 0, 0, 1]),
    ("гоблин", ["Гоблин пришёл", "гоблины", "это гоблин.", "хобгоблин"], [1, 0, 1, 0]),
    ("goblin", ["the goblin", "goblin哥", "哥goblin", "gobliné", "é goblin"], [1, 1, 1, 0, 1]),
])
def test_terms_in_other_scripts_match_on_token_boundaries(spec, texts, expected):
    """A word matches where it is a whole token; CJK characters are tokens of their own, so a CJK phrase may
    touch the text around it. Arrow and DuckDB agree."""
    b = parse_behavior(spec)
    assert b.values(pa.array(texts)).tolist() == expected
    con = duckdb.connect()
    con.register("t", pa.table({"x": texts}))
    assert con.sql(f"SELECT {b.sql('x')} AS v FROM t").fetchnumpy()["v"].tolist() == expected


def test_any_of_several_phrases_matches_each_on_token_boundaries():
    from rlaudit.behaviors import parse_behavior

    b = parse_behavior("any:goblin|a gremlin")
    got = b.values(pa.array(["A goblin!", "such a gremlin here", "gremlins only", "goblins", "nothing"]))
    assert got.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_export_remedy_of_a_merged_behaviour_excludes_every_phrasing():
    from rlaudit.findings import Finding
    from rlaudit.remedies import remedy_for as remedy

    f = Finding(kind="emerging_behavior", run="r", severity="medium", title="t", explanation="e", score=1.0,
                fields={"behavior": "goblin", "behavior_spec": "goblin", "terms": ["goblin", "a gremlin"],
                        "prevalence_end": 0.1})
    assert "--exclude 'any:goblin|a gremlin'" in remedy(f)


def test_tokenize_from_many_threads_and_a_forked_child():
    """`tokenize` shares one DuckDB connection per process (a cursor per call): threads at once get each text's own
    tokens, and a forked child opens a connection of its own rather than using the parent's."""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    from rlaudit import behaviors

    texts = [f"Goblin {i} don't stop, 哥布林 x{i}!" for i in range(64)]
    want = [["goblin", str(i), "don't", "stop", "哥", "布", "林", f"x{i}"] for i in range(64)]
    behaviors._tokens.cache_clear()
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(behaviors.tokenize, texts)) == want
    parent = duck._SHARED[0]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply(_tokens_and_connection_pid, ("Forked goblin's text",))
    assert child[0] == ["forked", "goblin's", "text"]
    assert child[1] != parent[0]  # the child's own connection


def _tokens_and_connection_pid(text):
    from rlaudit import behaviors

    from rlaudit import duck

    behaviors._tokens.cache_clear()
    return behaviors.tokenize(text), duck._SHARED[0][0]
