"""The prefilter of term behaviours (`rlaudit.attribution.prefilter`): the gated SQL gives the pattern's values on
every text, including case variants outside ASCII (RE2's `(?i)` folds K with the Kelvin sign and s with the
long s), apostrophes, gaps of every kind, and texts where the literal occurs without the phrase."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.attribution.prefilter import gated_sql, literals
from rlaudit.behaviors import parse_behavior

SPECS = ["by my beard", "goblin", "any:goblin|a gremlin", "any:Sparkles|shiny  things", "don't panic",
         "mask", "key", "ok", "re:(?i)beard", "style:exclamation", "style:length"]
PIECES = ["by", "my", "beard", "BEARD", "Beard", "goblin", "GOBLIN", "gremlin", "a", "shiny", "things", "sparkles",
          "SPARKLES", "ſparkles", "\u212aey", "key", "mask", "MAſK", "don't", "don", "t", "panic", "ok", "OK",
          "日本", "é", "x", "'", "-", " ", "  ", "\n", ".", ",", "!", "_", "1", "\u0301"]


BEHAVIOURS = {spec: parse_behavior(spec) for spec in SPECS}


def _compare(specs: list[str], texts: list[str | None]) -> None:
    """Every spec's gated SQL and pattern over `texts`, in one query."""
    cols = [f"{sql} AS \"{k}{i}\"" for i, s in enumerate(specs)
            for k, sql in (("p", BEHAVIOURS[s].sql("x")), ("g", gated_sql(BEHAVIOURS[s], "x")))]
    with duckdb.connect() as con:
        con.register("t", pa.table({"x": pa.array(texts, pa.string())}))
        got = con.sql(f"SELECT {', '.join(cols)} FROM t").fetchnumpy()
    for i, spec in enumerate(specs):
        assert got[f"g{i}"].tolist() == got[f"p{i}"].tolist(), spec


def test_literals_of_term_specs_only():
    assert literals(parse_behavior("by my beard")) == ["beard"]
    assert literals(parse_behavior("any:goblin|a gremlin")) == ["goblin", "gremlin"]
    assert literals(parse_behavior("don't panic")) == ["don't"]
    assert literals(parse_behavior("ok")) is None  # too short to select anything
    assert literals(parse_behavior("any:goblin|ok")) is None  # every phrase needs one
    for spec in ("re:(?i)beard", "style:exclamation", "style:length"):
        assert literals(parse_behavior(spec)) is None
        assert gated_sql(parse_behavior(spec), "x") == parse_behavior(spec).sql("x")


@pytest.mark.parametrize("spec", SPECS)
def test_gated_equals_pattern_on_edge_cases(spec):
    texts = [None, "", "By My Beard!", "by-my\nbeard.", "by 'my beard", "by my beards", "beard by my", "BY MY BEARD",
             "by my \u212aeard", "by my beard\u0301", "x by my beard", "xby my beard", "a Gremlin", "a  gremlin!",
             "GOBLIN", "hobgoblin", "goblin's", "ſparkles", "Shiny things", "shiny\tthings", "don't panic",
             "DON'T PANIC",
             "don't  panic", "mask", "MAſK", "\u212aey", "key", "ok", "OK.", "日本 beard", "beard日本"]
    _compare([spec], texts)


@settings(max_examples=15, deadline=None)  # ~0.3 s each: DuckDB compiles the 22 patterns
@given(st.lists(st.one_of(st.none(), st.lists(st.sampled_from(PIECES), max_size=12).map("".join)),
                min_size=1, max_size=80))
def test_gated_equals_pattern_property(texts):
    for spec in SPECS:
        _compare([spec], texts)
