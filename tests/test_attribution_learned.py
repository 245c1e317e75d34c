"""A behaviour learnt as intended (pushed through the correctness reward, rewarded by nothing for its own sake) is
reported at most low by every detector that names it, whatever the run's length; a tic a reward pays for its own
sake keeps its severity."""

from __future__ import annotations

import pytest

from rlaudit.audit import audit
from rlaudit.findings import SEVERITY_RANK
from rlaudit.organisms import simulate


def _findings(tmp_path, scenario: str, steps: int, seed: int):
    simulate(scenario, tmp_path / "run", format="canonical", steps=steps, prompts=8, generations=8, seed=seed)
    return audit([tmp_path / "run"], store=tmp_path / "store").findings


@pytest.mark.parametrize("seed", [1, 7])  # at 20 steps the verify step rose high (and spread: generalization)
def test_skill_learnt_through_correctness_is_at_most_low(tmp_path, seed):
    found = _findings(tmp_path, "clean_legit", 20, seed)
    verify = [f for f in found if f.kind in ("emerging_behavior", "generalization")
              and "let me verify" in (f.get("terms") or [f.get("behavior")])]
    assert verify, "the rise of the verification step is reported"
    assert all(f.severity == "low" for f in verify)
    capped = [f for f in verify if f.get("severity_before_attribution")]
    assert capped and all(f.get("learned_through") == ["correctness"] for f in capped)
    assert any(f.get("severity_before_attribution") == "high" for f in capped)
    assert "Learnt through task success: correctness" in capped[0].explanation
    assert not [f for f in found if SEVERITY_RANK[f.severity] >= SEVERITY_RANK["medium"]]


def test_tic_paid_for_its_own_sake_keeps_its_severity(tmp_path):
    found = _findings(tmp_path, "sycophancy", 20, 0)
    tics = [f for f in found if f.kind == "emerging_behavior" and SEVERITY_RANK[f.severity] >= SEVERITY_RANK["medium"]]
    assert tics and not any(f.get("learned_through") for f in found)
