"""End to end on the simulator's CoT-exposure scenarios and clean controls (rlaudit.organisms)."""

from __future__ import annotations

import pytest

from rlaudit.audit import audit_store
from rlaudit.detectors import AuditConfig

simulate = pytest.importorskip("rlaudit.organisms.simulate")

STEPS = 20


def audit_scenario(store, name: str):
    sim = simulate.run(name, steps=STEPS, seed=1, run_name=name)
    store.append(name, sim.canonical(), "p")
    result = audit_store(store, [name], AuditConfig(detectors=["cot_grading"]))
    assert not result.of_kind("audit_error")
    truth = [i for i in sim.ground_truth.issues if i.kind == "cot_grading"]
    return result.of_kind("cot_grading"), truth


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cot_template", "cot_fallback", "cot_midrun"])
def test_exposure_scenarios_are_measured(store, name):
    found, (truth,) = audit_scenario(store, name)
    (f,) = [f for f in found if f["method"] == "scan"]
    assert f["grader"] == truth.grader and f.severity == "high"
    expected = truth.expected["exposed_samples"]
    assert abs(f["exposed_samples"] - expected) <= max(2, 0.05 * expected)
    assert f["first_step"] == truth.expected["first_step"]
    if truth.task:
        assert f["by_task"][truth.task]["exposed_samples"] == f["exposed_samples"]


@pytest.mark.slow
def test_tail_only_grader_is_found_without_overcounting(store):
    found, (truth,) = audit_scenario(store, "cot_tail")
    (f,) = [f for f in found if f["method"] == "scan"]
    assert f["grader"] == truth.grader and f["first_step"] <= truth.expected["first_step"] + 1
    # the scan sees only tails of 12+ words; the ground truth counts any 5-word sentence: recall is partial
    assert 0.3 * truth.expected["exposed_samples"] <= f["exposed_samples"] <= truth.expected["exposed_samples"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clean_basic", "clean_judges", "clean_legit", "length_bias", "sycophancy"])
def test_runs_without_exposure_give_no_cot_findings(store, name):
    found, truth = audit_scenario(store, name)
    assert not truth
    assert found == []
