"""Each model organism is caught by the detector its ground truth names, and clean controls stay clean.

Every scenario is simulated at the default size, audited with default settings (all registered detectors, plus
the label config its ground truth carries for the opt-in monitorability detector) and
scored with the benchmark's matcher. A scenario whose expected finding kind no registered detector emits is an
expected failure naming the missing detector.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest

from rlaudit.audit import audit_store
from rlaudit.detectors import DETECTORS, AuditConfig
from rlaudit.detectors.training_health import metrics_option
from rlaudit.organisms import SCENARIOS, run
from rlaudit.organisms.bench import ScenarioScore, match
from rlaudit.organisms.writers import write_scalars
from rlaudit.store import Store

EMITTERS = {"emerging_behavior": "emerging", "generalization": "generalization",
            "reward_attribution": "attribution", "cot_grading": "cot_grading", "reward_health": "reward_health",
            "training_health": "training_health", "monitorability": "monitorability"}


def _missing(name: str) -> list[str]:
    kinds = {i.kind for i in SCENARIOS[name].build(60).implants}
    emitted = {k for d in DETECTORS for k in d.kinds}
    return sorted(EMITTERS.get(k, k) for k in kinds - emitted)


def _params() -> list:
    out = []
    for name in SCENARIOS:
        missing = _missing(name)
        marks = [pytest.mark.slow]
        if missing:
            marks.append(pytest.mark.xfail(strict=False, reason=f"detector(s) not registered yet: {missing}"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@lru_cache(maxsize=None)
def audited(name: str, tmp: str) -> tuple[ScenarioScore, list]:
    sim = run(name, seed=0)
    store = Store(tmp)
    store.append(name, sim.canonical(), key="all")
    logs = Path(tmp) / f"{name}-scalars"  # the trainer's scalar log, as the canonical writer puts beside the rollouts
    logs.mkdir()
    # default settings, the label config the run's ground truth names (the opt-in monitorability detector) and
    # the scalar log
    options = dict(sim.ground_truth.audit_options)
    options.update(metrics_option({name: [write_scalars(sim, logs, "canonical")]}))
    config = AuditConfig(options=options)
    findings = audit_store(store, [name], config).findings
    return match(findings, sim.ground_truth), findings


@pytest.fixture(scope="module")
def tmp_store(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("scenarios"))


@pytest.mark.parametrize("name", _params())
def test_implanted_issues_are_detected(name, tmp_store):
    score, findings = audited(name, tmp_store)
    errors = [f.title for f in findings if f.kind == "audit_error"]
    assert errors == []
    missed = [f"{i.kind}: {i.key} (best severity {i.severity})" for i in score.issues
              if not i.legitimate and not i.detected]
    assert missed == [], f"{name}: missed {missed}"
    wrong = [f"{i.key} blamed on {i.attributed_to}" for i in score.issues if i.attribution_right is False]
    assert wrong == [], f"{name}: attribution wrong: {wrong}"


@pytest.mark.parametrize("name", _params())
def test_no_false_findings(name, tmp_store):
    score, _ = audited(name, tmp_store)
    assert score.false_findings == [], f"{name}: {score.false_findings}"
