"""Findings: validation, ranking and a JSON form that survives a round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.findings import Evidence, Finding, dumps, jsonable, rank


def make(sev="medium", score=1.0, title="t", **fields):
    return Finding(kind="k", run="r", severity=sev, title=title, score=score, fields=fields)


def test_severity_is_validated():
    with pytest.raises(ValueError, match="severity"):
        make(sev="critical")


def test_fields_may_not_shadow_core_keys():
    with pytest.raises(ValueError, match="core keys"):
        make(title="x", severity_override=1, run="clash")


def test_rank_orders_by_severity_then_score():
    fs = [make("low", 9, "a"), make("high", 1, "b"), make("medium", 5, "c"), make("high", 3, "d")]
    assert [f.title for f in rank(fs)] == ["d", "b", "c", "a"]


def test_json_round_trip_flattens_kind_specific_fields():
    f = Finding(kind="cot_grading", run="r1", severity="high", title="grader saw CoT", explanation="why",
                score=0.5, fields={"grader": "judge", "exposure_rate": np.float64(0.02), "series": np.arange(3)},
                evidence=[Evidence("a.jsonl:3", step=4, condition="nerdy", text="snip", note="n",
                                   data={"span": (1, 5)})])
    obj = json.loads(json.dumps(f.to_json()))
    assert obj["grader"] == "judge" and obj["exposure_rate"] == 0.02 and obj["series"] == [0, 1, 2]
    assert obj["evidence"][0] == {"rollout_id": "a.jsonl:3", "step": 4, "condition": "nerdy", "text": "snip",
                                  "note": "n", "span": [1, 5]}
    back = Finding.from_json(obj)
    assert back.fields["exposure_rate"] == 0.02 and back.evidence[0].data == {"span": [1, 5]}
    assert back.to_json() == obj


def test_jsonable_turns_non_finite_into_null():
    assert jsonable({"a": math.nan, "b": [math.inf, 1.0], "c": np.int64(3)}) == {"a": None, "b": [None, 1.0], "c": 3}
    assert jsonable([1.5, -math.inf, math.nan, np.float64(2.0), (1, math.nan), "x", True, None]) == [
        1.5, None, None, 2.0, [1, None], "x", True, None]


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                                          max_size=4), max_leaves=30)


@settings(max_examples=300)
@given(_JSON, st.integers(0, 3), st.booleans())
def test_dumps_parses_back_to_the_same_value(obj, indent, sort_keys):
    """Property: `dumps` is JSON whose value is `obj`, ASCII only, with the keys sorted when asked."""
    text = dumps(obj, indent=indent, sort_keys=sort_keys)
    assert json.loads(text) == obj and text.isascii()
    if sort_keys:
        assert text == dumps(json.loads(json.dumps(obj, sort_keys=True)), indent=indent)


def test_dumps_puts_objects_one_a_line_and_other_lists_on_one():
    text = dumps({"series": {"steps": [1, 2, 3], "pairs": [[1, 0.5], [2, None]]}, "items": [{"a": 1}, {"b": []}]})
    assert text.splitlines() == [
        "{", '  "series": {', '    "steps": [1, 2, 3],', '    "pairs": [[1, 0.5], [2, null]]', "  },",
        '  "items": [', "    {", '      "a": 1', "    },", "    {", '      "b": []', "    }", "  ]", "}"]


def test_findings_json_survives_lone_surrogates(tmp_path):
    from rlaudit.audit import AuditResult

    f = Finding(kind="k", run="r", severity="low", title="bad \ud800 text", evidence=[Evidence("x:1", text="\udfff")])
    AuditResult(runs=[], findings=[f]).write_json(tmp_path / "f.json")
    back = AuditResult.read_json(tmp_path / "f.json")
    assert back.findings[0].title == "bad \ud800 text" and back.findings[0].evidence[0].text == "\udfff"


def test_dumps_writes_values_deeper_than_depth_on_one_line():
    text = dumps({"files": {"a.parquet": {"rows": 3, "steps": [1, 2], "meta": {"k": 1}}}, "v": 1}, indent=1,
                 sort_keys=True, depth=2)
    assert text.splitlines() == ["{", ' "files": {', '  "a.parquet": {"meta": {"k": 1}, "rows": 3, "steps": [1, 2]}',
                                 " },", ' "v": 1', "}"]
