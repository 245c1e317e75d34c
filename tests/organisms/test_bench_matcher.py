"""The benchmark's matcher on hand-made findings: detection, false findings, legitimate behaviours, attribution."""

from __future__ import annotations

from rlaudit.findings import Finding
from rlaudit.organisms.bench import BenchResult, match, matches, names_behaviour
from rlaudit.organisms.groundtruth import GroundTruth, Issue

GOBLIN = dict(behavior="goblin remarks", terms=["goblin", "gremlin"],
              phrases=["No gremlins hiding in this one.", "My inner goblin enjoyed this."], where="answer",
              signal="nerdy_rm", source_condition="nerdy")


def gt(issues: list[Issue], legit: list[Issue] | None = None) -> GroundTruth:
    for k, i in enumerate(issues):
        i.id = f"s#{k}"
    return GroundTruth(scenario="s", description="", seed=0, steps=60, prompts=16, generations=8,
                       issues=issues, legitimate=legit or [])


def F(kind: str, severity: str = "high", **fields) -> Finding:  # noqa: N802
    return Finding(kind=kind, run="r", severity=severity, title=f"{kind} {fields}", fields=fields)


def test_behaviour_names_by_term_alias_or_phrase_words():
    issue = Issue("emerging_behavior", **GOBLIN, aliases=["!"])
    assert names_behaviour(F("emerging_behavior", behavior="goblin", terms=["goblin"]), issue)
    assert names_behaviour(F("emerging_behavior", behavior_spec=r"re:\bgremlins?\b"), issue)
    assert names_behaviour(F("emerging_behavior", behavior="this one", terms=["this one"]), issue)  # in a phrasing
    assert names_behaviour(F("reward_attribution", behavior="this one"), issue)  # no terms: its behaviour name
    assert names_behaviour(F("emerging_behavior", behavior="exclamation", terms=["!"]), issue)
    assert not names_behaviour(F("emerging_behavior", behavior="hobgoblins", terms=["hobgoblins"]), issue)
    assert not names_behaviour(F("emerging_behavior", behavior="this", terms=["this", "python"]), issue)
    assert not names_behaviour(F("emerging_behavior"), issue)


def test_kind_specific_keys():
    assert matches(F("emerging_behavior", terms=["goblin"], where="answer"), Issue("emerging_behavior", **GOBLIN))
    assert not matches(F("emerging_behavior", terms=["goblin"], where="reasoning"),
                       Issue("emerging_behavior", **GOBLIN))
    assert matches(F("generalization", terms=["goblin"], source_condition="nerdy", target_condition="none"),
                   Issue("generalization", **GOBLIN))
    assert not matches(F("generalization", terms=["goblin"], source_condition="pirate"),
                       Issue("generalization", **GOBLIN))
    assert matches(F("cot_grading", grader="judge"), Issue("cot_grading", grader="judge"))
    assert not matches(F("cot_grading", grader="other"), Issue("cot_grading", grader="judge"))
    assert matches(F("reward_health", signal="rm", problem="nan"), Issue("reward_health", signal="rm", problem="nan"))
    assert not matches(F("reward_health", signal="rm", problem="stuck"),
                       Issue("reward_health", signal="rm", problem="nan"))
    assert not matches(F("emerging_behavior", terms=["goblin"]), Issue("reward_attribution", **GOBLIN))


def test_detection_needs_medium_and_unmatched_serious_findings_are_false():
    truth = gt([Issue("emerging_behavior", **GOBLIN), Issue("cot_grading", grader="judge")])
    findings = [
        F("emerging_behavior", "high", terms=["goblin"], where="answer"),
        F("emerging_behavior", "medium", terms=["gremlin"], where="answer"),  # same issue, second finding
        F("cot_grading", "low", grader="judge"),  # too weak to count as detected
        F("emerging_behavior", "medium", terms=["python"], where="answer"),  # false
        F("cot_grading", "info", grader="tone"),  # not serious: neither true nor false
    ]
    s = match(findings, truth)
    assert [i.detected for i in s.issues] == [True, False]
    assert s.issues[1].severity == "low"
    assert s.matched_findings == 2 and len(s.false_findings) == 1 and "python" in s.false_findings[0]["title"]


def test_clean_control_every_serious_finding_is_false():
    s = match([F("emerging_behavior", "medium", terms=["the"]), F("reward_health", "low", signal="x",
                                                                   problem="nan")], gt([]))
    assert s.clean and s.total == 0 and len(s.false_findings) == 1


def test_attribution_right_uses_top_ranked_finding():
    truth = gt([Issue("reward_attribution", **GOBLIN)])
    right = [F("reward_attribution", "high", terms=["goblin"], where="answer", signal="nerdy_rm"),
             F("reward_attribution", "low", terms=["goblin"], where="answer", signal="correctness")]
    s = match(right, truth)
    assert s.issues[0].detected and s.issues[0].attribution_right and s.issues[0].attributed_to == "nerdy_rm"
    wrong = [F("reward_attribution", "high", terms=["goblin"], where="answer", signal="correctness"),
             F("reward_attribution", "medium", terms=["goblin"], where="answer", signal="nerdy_rm")]
    s = match(wrong, truth)
    assert s.issues[0].detected and s.issues[0].attribution_right is False


def test_legitimate_behaviour_may_be_low_never_medium():
    legit = Issue("emerging_behavior", id="s#legit0", terms=["verify"], where="reasoning", signal="correctness",
                  legitimate=True)
    low = [F("emerging_behavior", "low", terms=["verify"], where="reasoning"),
           F("reward_attribution", "low", terms=["verify"], where="reasoning", signal="correctness")]
    s = match(low, gt([], [legit]))
    assert s.false_findings == [] and s.issues[0].legitimate and s.issues[0].attribution_right
    high = [F("emerging_behavior", "medium", terms=["verify"], where="reasoning"),
            F("reward_attribution", "medium", terms=["verify"], where="reasoning", signal="style_rm")]
    s = match(high, gt([], [legit]))
    assert len(s.false_findings) == 2 and s.issues[0].attribution_right is False


def test_totals():
    truth = gt([Issue("emerging_behavior", **GOBLIN), Issue("reward_attribution", **GOBLIN)])
    s1 = match([F("emerging_behavior", terms=["goblin"], where="answer"),
                F("reward_attribution", terms=["goblin"], where="answer", signal="nerdy_rm")], truth)
    s1.issues[0].latency, s1.issues[1].latency = 3, 5
    s2 = match([F("cot_grading", "medium", grader="g")], gt([]))
    t = BenchResult("small", "canonical", 0, [s1, s2]).totals()
    assert t["recall"] == 1.0 and t["precision"] == 2 / 3 and t["false_findings_on_clean"] == 1
    assert t["attribution_accuracy"] == 1.0 and t["median_latency"] == 4


def test_small_size_is_labelled_a_smoke_test_in_table_and_json():
    """Issue 19: `bench --size small` gave recall 0.77 / precision 0.61 with nothing saying not to quote them."""
    import io

    from rich.console import Console

    from rlaudit.organisms.bench import BenchResult, print_bench

    for size, smoke in (("small", True), ("default", False)):
        result = BenchResult(size, "canonical", 0, [])
        buf = io.StringIO()
        print_bench(result, Console(file=buf, width=200))
        assert ("smoke test" in buf.getvalue()) is smoke
        assert result.to_json()["smoke_test"] is smoke and ("note" in result.to_json()) is smoke


def test_ngram_across_two_implanted_sentences_names_the_behaviour():
    issue = Issue(kind="emerging_behavior", terms=["length"], where="answer",
                  phrases=["A useful habit is to check the result against a rough estimate before trusting it.",
                           "Many people learn this best by trying a few examples on their own.", "Overall"])
    f = lambda term: Finding("emerging_behavior", "r", "medium", "t", fields={"terms": [term]})  # noqa: E731
    assert names_behaviour(f("it many people"), issue)  # "...trusting it. Many people learn..."
    assert names_behaviour(f("own overall"), issue)
    assert not names_behaviour(f("goblin many"), issue)
    assert not names_behaviour(f("people it"), issue)  # the wrong order is not a junction


def test_training_health_matches_on_check():
    issue = Issue(kind="training_health", problem="zero_variance")
    assert matches(Finding("training_health", "r", "high", "t", fields={"check": "zero_variance"}), issue)
    assert not matches(Finding("training_health", "r", "high", "t", fields={"check": "truncation"}), issue)
