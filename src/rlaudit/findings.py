"""Typed findings: what every detector returns, and their stable JSON form.

A finding has a small common core (kind, run, severity, title, explanation, evidence) that front ends rely on,
plus kind-specific fields that each detector documents. The JSON form flattens the kind-specific fields into
the finding object so that `jq '.findings[] | select(.kind=="cot_grading") | .exposure_rate'` just works.
"""

from __future__ import annotations

import json
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
        # a list's plain items and finite floats kept without a call each (`v - v == 0` is false for NaN and
        # inf): the series of a 15,625-step run hold ~1.7M of them
        return [v if (tv := type(v)) in _PLAIN or (tv is float and v - v == 0.0) else jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):
        return jsonable(obj.item())
    return str(obj)


_COMPACT = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": "))
_COMPACT_SORTED = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": "), sort_keys=True)


def dumps(obj: Any, indent: int = 2, sort_keys: bool = False, depth: int | None = None) -> str:
    """JSON text of `obj` (plain JSON values, as `jsonable` gives) for people and machines alike: objects, and
    lists that hold objects, one item a line indented by `indent`; any other list (a per-step series, pairs of
    numbers) on one line. Equal, parsed, to `json.dumps(obj)`. The standard library's encoder indents only in
    Python (its C encoder takes no indent): a 15,625-step run's findings (1.7M numbers, one a line) took 0.9 s
    to write and 19 MB; one series a line is written by the C encoder. `depth`: values nested deeper than that
    many objects and lists are written on one line whatever they hold (a store manifest's entry per file)."""
    out: list[str] = []
    _dump(obj, out, "\n", " " * indent, _COMPACT_SORTED if sort_keys else _COMPACT, sort_keys,
          -1 if depth is None else depth)
    return "".join(out)


def _dump(obj: Any, out: list[str], pad: str, step: str, enc: json.JSONEncoder, sort_keys: bool,
          depth: int) -> None:
    if depth == 0:
        out.append(enc.encode(obj))
    elif type(obj) is dict and obj:
        inner = pad + step
        items = sorted(obj.items()) if sort_keys else obj.items()
        out.append("{")
        for i, (k, v) in enumerate(items):
            out.append(("," if i else "") + inner + enc.encode(str(k)) + ": ")
            _dump(v, out, inner, step, enc, sort_keys, depth - 1)
        out.append(pad + "}")
    elif type(obj) in _LISTS and _holds_object(obj):
        inner = pad + step
        out.append("[")
        for i, v in enumerate(obj):
            out.append(("," if i else "") + inner)
            _dump(v, out, inner, step, enc, sort_keys, depth - 1)
        out.append(pad + "]")
    else:
        out.append(enc.encode(obj))


_LISTS = (list, tuple)
_NESTED = (dict, list, tuple)


def _holds_object(items: list | tuple) -> bool:
    """True when a non-empty object is among `items`, at any depth (a list of numbers: one pass, no call each)."""
    return any(type(v) in _NESTED for v in items) and any(
        (v if type(v) is dict else type(v) in _LISTS and _holds_object(v)) for v in items)
