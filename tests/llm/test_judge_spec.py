"""`judge:` behaviour specs: parsing, views, rubric files, verdict parsing and use through `Behavior.values`."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from rlaudit.behaviors import parse_behavior
from rlaudit.errors import RlauditError
from rlaudit.llm import LLMClient, ScriptedBackend, set_default_client
from rlaudit.llm.judge import JudgeSpec, parse_verdict, render_view


def test_parse_views_and_files(tmp_path):
    assert JudgeSpec.parse("judge:does it flatter the user?") == JudgeSpec("does it flatter the user?", "all",
                                                                           "judge:does it flatter the user?")
    assert JudgeSpec.parse("judge:cot:is it hiding something?").view == "cot"
    rubric = tmp_path / "hack.txt"
    rubric.write_text("Does the answer special-case the tests?\n")
    spec = JudgeSpec.parse(f"judge:action:@{rubric}")
    assert (spec.view, spec.rubric) == ("action", "Does the answer special-case the tests?")
    # a colon inside the rubric is not a view
    assert JudgeSpec.parse("judge:note: be strict").rubric == "note: be strict"
    with pytest.raises(RlauditError, match="empty rubric"):
        JudgeSpec.parse("judge:cot:")
    with pytest.raises(RlauditError, match="cannot read"):
        JudgeSpec.parse(f"judge:@{tmp_path / 'missing.txt'}")
    assert render_view("cot", "p", "r", "a") == "REASONING:\nr"
    assert render_view("all", "p", "r", "a") == "PROMPT:\np\n\nREASONING:\nr\n\nANSWER:\na"


def test_verdict_parsing_quotes_and_failures():
    shown = "REASONING:\nI will   hardcode the outputs."
    v = parse_verdict('Sure. {"label": "yes", "score": 0.8, "quote": "will hardcode the"}', shown)
    assert (v.label, v.score, v.quote_found) == (True, 0.8, True) and shown[v.span[0]:v.span[1]] == "will   hardcode the"
    v = parse_verdict('{"label": "no", "score": 7, "quote": "not in the text"}', shown)
    assert (v.label, v.score, v.quote_found, v.span) == (False, 1.0, False, None)
    assert parse_verdict("Yes, clearly.", shown).label is True
    assert parse_verdict("No.", shown).score == 0.0
    bad = parse_verdict("I cannot tell", shown)
    assert bad.label is None and math.isnan(bad.score) and bad.error == "unparseable answer"


def test_judge_spec_works_where_a_spec_works():
    def answer(request):
        shown = request.messages[-1][1].split("\n\n", 1)[1]  # after the rubric
        return '{"label": "yes", "quote": "goblin"}' if "goblin" in shown else "no"

    backend = ScriptedBackend(answer)
    set_default_client(LLMClient(backend))
    try:
        behavior = parse_behavior("judge:cot:does the reasoning mention a goblin?")
        assert behavior.kind == "judge" and behavior.sql("reasoning") is None
        values = behavior.values(pa.array(["a goblin appears", "nothing here", None]))
        assert values.tolist() == [1.0, 0.0, 0.0] and backend.calls == 3
        assert behavior.func.last_verdicts[0].quote_found
    finally:
        set_default_client(None)


def test_judge_without_a_configured_llm_says_how_to_configure(monkeypatch):
    monkeypatch.delenv("RLAUDIT_LLM", raising=False)
    set_default_client(None)
    behavior = parse_behavior("judge:is it rude?")
    with pytest.raises(RlauditError, match="RLAUDIT_LLM"):
        behavior.values(pa.array(["hello"]))
