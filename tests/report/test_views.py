"""View models: facts per kind, tables, evidence with grader spans in every documented shape, never a crash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.findings import Evidence, Finding
from rlaudit.report.sanitize import Clip
from rlaudit.report.views import evidence_view, field_tables, finding_view, fmt_p, fmt_share

INPUT = "User: hi\nAssistant: <think>secret plan here</think>hello"
SPAN = [INPUT.index("secret"), INPUT.index("</think>")]


def _marked(view):
    return ["".join(p for p, hl in g.segments if hl) for g in view.graders]


@pytest.mark.parametrize("data", [
    {"grader_input": INPUT, "span": SPAN},
    {"grader_input": INPUT, "spans": [SPAN]},
    {"grader_input": INPUT, "spans": [{"start": SPAN[0], "end": SPAN[1]}]},
    {"grader_input": INPUT, "start": SPAN[0], "end": SPAN[1]},
    {"grader_input": INPUT, "matched_text": "secret plan here"},
    {"grader_inputs": {"judge": INPUT}, "span": SPAN},
])
def test_grader_span_is_highlighted_from_every_shape(data):
    view = evidence_view(Finding("cot_grading", "r", "high", "t"), Evidence("x", 1, data=data), None, Clip())
    assert _marked(view) == ["secret plan here"]


def test_excerpt_with_text_offset_is_highlighted_without_the_store():
    lo = 10
    ev = Evidence("x", 1, text=INPUT[lo:], data={"grader": "judge", "span": SPAN, "text_offset": lo,
                                                 "grader_input_chars": len(INPUT)})
    view = evidence_view(Finding("cot_grading", "r", "high", "t"), ev, None, Clip())
    assert _marked(view) == ["secret plan here"] and view.graders[0].omitted_before == lo
    assert view.text is None  # shown once, as what the grader saw


def test_stored_grader_input_is_used_and_reasoning_located_when_no_offsets():
    row = {"prompt": "hi", "reasoning": "secret plan here", "reasoning_len": 16, "answer": "hello",
           "grader_inputs": {"judge": INPUT}, "rewards": {"judge": 0.5}, "reward": 0.5}
    view = evidence_view(Finding("cot_grading", "r", "high", "t", fields={"grader": "judge"}),
                         Evidence("x", 1), row, Clip())
    assert _marked(view) == ["secret plan here"] and "exact search" in view.graders[0].note
    assert [label for label, _ in view.texts] == ["prompt", "reasoning", "answer"]
    assert ("judge", "0.5") in view.rewards


def test_offsets_outside_the_input_are_shown_without_highlight():
    view = evidence_view(Finding("cot_grading", "r", "high", "t"),
                         Evidence("x", 1, data={"grader_input": "short", "span": [100, 200]}), None, Clip())
    assert _marked(view) == [""] and "outside" in view.graders[0].note


def test_facts_tables_and_other_fields():
    f = Finding("reward_attribution", "r", "high", "t", fields={
        "signal": "persona", "pressure_share": 0.912, "paired_preference": 0.76, "paired_preference_ci": [0.7, 0.8],
        "signals": [{"signal": "persona", "pressure_share": 0.9, "p_value": 1e-9, "series": {"steps": [1]}}],
        "odd": {"x": 1}})
    view = finding_view(0, f, [], {}, Clip(), 5)
    facts = dict(view.facts)
    assert facts["share of selection pressure"] == "91.2%"
    assert facts["paired preference"] == "0.76 (95% CI 0.7 to 0.8)"
    (table,) = view.tables
    assert table.columns == ["signal", "share of push", "p-value"] and table.rows == [["persona", "90.0%", "1.0e-09"]]
    assert [k for k, _ in view.other_fields] == ["odd"]


def test_formatters():
    assert fmt_share(0.006) == "0.6%" and fmt_share(0.5) == "50.0%" and fmt_share(None) == ""
    assert fmt_p(0.04) == "0.04" and fmt_p(1e-9) == "1.0e-09"


values = st.recursive(st.none() | st.booleans() | st.integers(-3, 300) | st.floats() | st.text(max_size=30),
                      lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(
                          ["span", "spans", "start", "end", "grader_input", "grader", "text_offset", "matched_text",
                           "grader_inputs", "signal", "pressure_share", "x"]), c, max_size=5), max_leaves=15)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["cot_grading", "reward_attribution", "emerging_behavior", "other"]),
       st.dictionaries(st.sampled_from(["grader", "signals", "by_condition", "series", "signal", "ratio",
                                        "ratio_ci", "method", "behavior", "terms"]), values, max_size=5),
       st.dictionaries(st.sampled_from(["span", "spans", "start", "end", "grader_input", "grader", "text_offset",
                                        "matched_text", "grader_inputs", "grader_input_chars", "note"]), values,
                       max_size=6),
       st.text(max_size=50))
def test_views_never_raise_on_odd_fields_and_evidence(kind, fields, data, text):
    f = Finding(kind, "r", "low", "t", fields=fields, evidence=[Evidence("x", 1, text=text, data=data)])
    view = finding_view(0, f, [], {}, Clip(), 5)
    for g in view.evidence[0].graders:
        assert all(isinstance(p, str) for p, _ in g.segments)


def test_field_tables_skip_scalar_mappings():
    tables, used = field_tables(Finding("x", "r", "low", "t", fields={"thresholds": {"k": 5}, "by_task": {
        "math": {"samples": 3, "exposure_rate": 0.5}}}))
    assert used == {"by_task"} and tables[0].rows == [["math", "3", "50.0%"]]


# ---------------------------------------------------------------- what a reader sees (issue 19, item 11)
def test_field_names_are_labels_and_nested_numbers_are_rounded():
    from rlaudit.findings import Evidence
    from rlaudit.report.views import evidence_view, label, value_text

    assert label("pressure_share_ci") == "share of push (95% CI)" and label("has_behavior") == "shows the behaviour"
    assert label("some_new_field_ci") == "some new field (95% CI)"
    assert value_text({"helpfulness": 0.9097706237275489, "correctness": None}) == "helpfulness = 0.91, correctness = n/a"
    assert value_text({"a": [0.123456789, {"b": 2.718281828459045}]}) == '{"a": [0.1235, {"b": 2.718}]}'
    ev = Evidence("r:1", data={"has_behavior": True, "scores": {"rm": 1.9645686733128975}, "pair": 1})
    view = evidence_view(Finding("reward_attribution", "r", "high", "t"), ev, None, Clip())
    assert dict((k, v.shown) for k, v in view.data) == {"shows the behaviour": "yes", "scores": "rm = 1.96"}
    assert view.pair == "1"


def test_evidence_pairs_are_never_cut_in_half_and_are_grouped():
    from rlaudit.findings import Evidence
    from rlaudit.report.views import shown_evidence

    ev = [Evidence(f"r:{i}", data={"pair": i // 2 + 1, "has_behavior": i % 2 == 0}) for i in range(6)]
    f = Finding("reward_attribution", "r", "high", "t", evidence=ev)
    assert [shown_evidence(f, n) for n in (0, 1, 2, 3, 4, 5, 6, 9)] == [0, 2, 2, 4, 4, 6, 6, 6]
    view = finding_view(0, f, [], {}, Clip(), 5)
    assert [[e.rollout_id for e in g] for g in view.evidence_groups] == [["r:0", "r:1"], ["r:2", "r:3"], ["r:4", "r:5"]]
    single = Finding("emerging_behavior", "r", "low", "t", evidence=[Evidence(f"r:{i}") for i in range(7)])
    assert shown_evidence(single, 5) == 5


def test_term_lists_are_a_line_of_their_own_not_a_fact_and_the_remedy_is_shown():
    terms = [f"term{i}" for i in range(30)]
    f = Finding("emerging_behavior", "run", "medium", "t", fields={"behavior": "goblin", "behavior_spec": "goblin",
                                                                   "terms": terms, "n_terms": 44})
    view = finding_view(0, f, [], {}, Clip(), 5)
    assert "terms" not in dict(view.facts)
    assert view.lists == [("terms", terms, 44)]
    assert view.remedy.startswith("If 'goblin' is unwanted")
    every = "any:" + "|".join(["goblin", *terms])  # a merged behaviour is excluded in every phrasing
    assert (f"rlaudit export run --exclude '{every}' --out run-without-goblin.jsonl", True) in view.remedy_segments


def test_table_cells_do_not_break_words_anywhere():
    """`overflow-wrap: anywhere` lets a table column shrink below a word: 'gobli n-perso na-trl' at 800 px."""
    from pathlib import Path

    import rlaudit.report

    css = (Path(rlaudit.report.__file__).parent / "templates" / "report.css").read_text()
    rules = [r for r in css.split("}") if "anywhere" in r]
    assert all(r.strip().startswith("pre") for r in rules), rules
