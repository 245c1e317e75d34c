"""Typed findings: what every detector returns, and their stable JSON form.

A finding has a small common core (kind, run, severity, title, explanation, evidence) that front ends rely on,
plus kind-specific fields that each detector documents. The JSON form flattens the kind-specific fields into
the finding object so that `jq '.findings[] | select(.kind=="cot_grading") | .exposure_rate'` just works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["info", "low", "medium", "high"]
SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

#: The finding kinds rlaudit emits and the detector (or front end) that emits each. `rlaudit findings --kind`
#: checks against these (a test keeps them equal to the detector registry's `kinds`).
KINDS: dict[str, str] = {
    "emerging_behavior": "emerging",
    "generalization": "generalization",
    "reward_attribution": "attribution",
    "cot_grading": "cot_grading",
    "reward_health": "reward_health",
    "training_health": "training_health",
    "monitorability": "monitorability",
    "behavior_spread": "live",
    "audit_error": "any",
}

#: Keys of the common core; kind-specific fields may not reuse them.
CORE_KEYS = frozenset({"kind", "run", "severity", "title", "explanation", "evidence", "score"})


@dataclass
class Evidence:
    """One piece of evidence: a rollout (or a pair of them) and why it matters."""

    rollout_id: str
    step: int | None = None
    condition: str | None = None
    text: str = ""
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rollout_id": self.rollout_id, "step": self.step, "condition": self.condition}
        if self.text:
            out["text"] = self.text
        if self.note:
            out["note"] = self.note
        out.update(jsonable(self.data))
        return out


@dataclass
class Finding:
    """A detector's conclusion about one run, with the evidence a reviewer needs to check it.

    `score` orders findings of equal severity (a detector-specific effect size, larger = more important).
    `fields` holds the kind-specific fields documented by each detector.
    """

    kind: str
    run: str
    severity: Severity
    title: str
    explanation: str = ""
    score: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    evidence: list[Evidence] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITY_RANK:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        clash = CORE_KEYS & set(self.fields)
        if clash:
            raise ValueError(f"kind-specific fields may not reuse core keys: {sorted(clash)}")

    def __getitem__(self, key: str) -> Any:
        """`finding["exposure_rate"]` reads a kind-specific field."""
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "run": self.run,
            "severity": self.severity,
            "title": self.title,
            "explanation": self.explanation,
            "score": jsonable(self.score),
        }
        out.update(jsonable(self.fields))
        out["evidence"] = [e.to_json() for e in self.evidence]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Finding:
        fields_ = {k: v for k, v in obj.items() if k not in CORE_KEYS}
        evidence = []
        for e in obj.get("evidence", []):
            e = dict(e)
            core = {k: e.pop(k, None) for k in ("rollout_id", "step", "condition")}
            evidence.append(
                Evidence(rollout_id=core["rollout_id"] or "", step=core["step"], condition=core["condition"],
                         text=e.pop("text", ""), note=e.pop("note", ""), data=e)
            )
        return cls(kind=obj["kind"], run=obj["run"], severity=obj["severity"], title=obj["title"],
                   explanation=obj.get("explanation", ""), score=obj.get("score") or 0.0,
                   fields=fields_, evidence=evidence)


def rank(findings: list[Finding]) -> list[Finding]:
    """Most severe first, then by score (effect) descending, then stable by title."""
    return sorted(findings, key=lambda f: (-SEVERITY_RANK[f.severity], -_finite(f.score), f.run, f.title))


def _finite(x: float) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else 0.0


_PLAIN = frozenset({str, int, bool, type(None)})


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and non-finite floats into plain JSON values (NaN/inf -> null)."""
    # the plain values first, by exact type (numpy's float64, a float subclass, goes the long way): the findings of
    # a 2,000-step run hold ~100,000 of them in per-step series, each through five isinstance/hasattr tests
    t = type(obj)
    if t in _PLAIN:
        return obj
    if t is float:
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):
        return jsonable(obj.item())
    return str(obj)
