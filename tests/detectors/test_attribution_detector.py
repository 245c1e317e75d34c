"""The `attribution` detector: traces the medium/high emerging behaviours it is given, jointly assessed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rlaudit.detectors import AuditConfig, DetectContext
from rlaudit.attribution.detector import AttributionDetector
from rlaudit.findings import Finding

_spec = importlib.util.spec_from_file_location("attribution_runs", Path(__file__).parent.parent / "test_attribution.py")
_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_runs)
make_run = _runs.make_run


def emerging(run: str, spec: str, severity: str = "high", where: str = "answer") -> Finding:
    return Finding(kind="emerging_behavior", run=run, severity=severity, title=f"'{spec}' is rising",
                   fields={"behavior": spec, "behavior_spec": spec, "where": where})


def detect(store, run: str, found: list[Finding], **options) -> list[Finding]:
    config = AuditConfig(options={"attribution": {"n_boot": 200, **options}})
    ctx = DetectContext(store=store, run=run, config=config, findings=found)
    return AttributionDetector().detect(ctx)


def test_traces_medium_and_high_behaviours_only(store):
    store.append("sim", make_run(bias=0.6), key="p")
    found = detect(store, "sim", [emerging("sim", "goblin", "high"), emerging("sim", "goblin", "medium"),
                                  emerging("sim", "style:length", "low")])
    assert len(found) == 1  # the duplicate spec is traced once, the low one not at all
    f = found[0]
    assert f.kind == "reward_attribution" and f.severity == "high"
    assert f["signal"] == "persona_rm" and f["condition"] == "nerdy" and f["grouping"] == "group_id"
    assert f["paired_preference_ci"][0] > 0.5 and f["pressure_share"] > 0.5
    assert [s["signal"] for s in f["signals"]][0] == "persona_rm"
    assert f["signals"][-1]["kind"] == "total"
    assert "persona_rm" in f.title and "nerdy" in f.title
    assert len(f.evidence) >= 2 and f.evidence[0].data["has_behavior"]
    obj = json.loads(json.dumps(f.to_json()))
    assert obj["signal"] == "persona_rm" and obj["by_condition"]["nerdy"]["pressure_share"] > 0.9
    assert Finding.from_json(obj).fields["signal"] == "persona_rm"


def test_bh_runs_across_behaviours_and_unrelated_behaviour_is_info(store):
    store.append("sim", make_run(bias=0.6), key="p")
    found = detect(store, "sim", [emerging("sim", "goblin"), emerging("sim", "re:\\bhere\\b", "medium"),
                                  emerging("sim", "style:exclamation", "medium")])
    by = {f["behavior_spec"]: f for f in found}
    assert by["goblin"].severity == "high"
    # 'Here:' opens exactly the answers without the tic, so persona_rm disfavours it: nothing pushes it up.
    assert by["re:\\bhere\\b"].severity == "info"
    # No answer has an exclamation mark: nothing to compare, reported as info with a warning.
    assert by["style:exclamation"].severity == "info" and by["style:exclamation"]["warning"]
    assert all(0 <= s["q_value"] <= 1 for f in found for s in f["signals"] if s["q_value"] is not None)


def test_unparseable_spec_becomes_an_info_finding(store):
    store.append("sim", make_run(steps=3), key="p")
    found = detect(store, "sim", [emerging("sim", "re:(unclosed")])
    assert len(found) == 1 and found[0].severity == "info" and "could not be traced" in found[0].title


def test_no_emerging_behaviours_no_findings(store):
    store.append("sim", make_run(steps=3), key="p")
    assert detect(store, "sim", []) == []


def test_respects_max_step(store):
    store.append("sim", make_run(steps=8), key="p")
    config = AuditConfig(max_step=3, options={"attribution": {"n_boot": 100}})
    ctx = DetectContext(store=store, run="sim", config=config, findings=[emerging("sim", "goblin")])
    f = AttributionDetector().detect(ctx)[0]
    assert max(f["signals"][0]["series"]["steps"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["goblin_persona", "clean_legit"])
def test_audit_traces_what_discovery_finds_on_simulated_runs(store, scenario):
    """Full chain on the simulator: `emerging` finds behaviours, `attribution` traces them. The goblin tic is
    attributed to the Nerdy persona reward (high); the legitimate control yields nothing above low."""
    from rlaudit.detectors import run_detectors
    from rlaudit.organisms import run as simulate_run

    sim = simulate_run(scenario, seed=3)
    store.append(scenario, sim.canonical(), key="sim")
    found = run_detectors(store, scenario, AuditConfig(detectors=["attribution"],
                                                       options={"attribution": {"n_boot": 300}}))
    assert not [f for f in found if f.kind == "audit_error"]
    traced = [f for f in found if f.kind == "reward_attribution"]
    issues = [i for i in sim.ground_truth.issues if i.kind == "reward_attribution"]
    if issues:
        issue = issues[0]
        hits = [f for f in traced if f.severity == "high" and any(t in f["behavior"] for t in issue.terms)]
        assert hits and all(f["signal"] == issue.signal for f in hits)
        assert all(f["condition"] == issue.source_condition for f in hits)
    else:  # discovery may or may not surface the verification habit; whatever is traced is not a problem
        assert all(f.severity in ("info", "low") for f in traced)
