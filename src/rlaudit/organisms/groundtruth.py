"""Ground truth of a simulated run: what was implanted, which finding kind should catch it, and when it began.

`ground_truth.json` next to the run's logs holds a `GroundTruth`:

- `issues`: one `Issue` per thing an auditor must report at severity >= medium. `kind` names the finding kind
  expected to catch it (`emerging_behavior`, `generalization`, `reward_attribution`, `cot_grading`,
  `reward_health`, `monitorability`: a drop verdict); the key fields say what the matching finding must name
  (behaviour terms, grader, signal, source condition, reward problem). `onset_step` is when the issue began: for
  a learned behaviour, the first step at which its expected prevalence (from the policy's parameters, not from samples) has risen by 10% of its
  eventual rise and by at least 3 percentage points; for an exposure or a broken reward, the first step at which
  it happened.
- `legitimate`: behaviours learned from the intended reward. An auditor may report them, at most at low
  severity, attributed to that signal.
- Clean controls have no issues.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RlauditError


@dataclass
class Issue:
    kind: str
    id: str = ""
    behavior: str = ""  # readable name
    terms: list[str] = field(default_factory=list)  # core terms: a finding naming any of them names this behaviour
    phrases: list[str] = field(default_factory=list)  # the implanted phrasings (findings on their words match)
    aliases: list[str] = field(default_factory=list)  # other names of the same behaviour (style features)
    where: str | None = None  # answer | reasoning
    signal: str | None = None  # the reward signal that drove it / is broken
    grader: str | None = None  # cot_grading: the grader that saw the reasoning
    source_condition: str | None = None  # condition label where it is paid for
    task: str | None = None
    problem: str | None = None  # reward_health problem
    onset_step: int | None = None
    expected: dict[str, Any] = field(default_factory=dict)  # measured facts (prevalence, exposure rate, ...)
    legitimate: bool = False


@dataclass
class GroundTruth:
    scenario: str
    description: str
    seed: int
    steps: int
    prompts: int
    generations: int
    format: str = "canonical"
    run: str = ""
    conditions: dict[str, str] = field(default_factory=dict)  # persona key -> condition label
    signals: dict[str, dict[str, Any]] = field(default_factory=dict)  # reward name -> view, weight, intended
    issues: list[Issue] = field(default_factory=list)
    legitimate: list[Issue] = field(default_factory=list)
    audit_options: dict[str, Any] = field(default_factory=dict)  # detector options to audit it with (labels, ...)

    @property
    def clean(self) -> bool:
        return not self.issues

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path / "ground_truth.json"
        path.write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> GroundTruth:
        obj = dict(obj)
        obj["issues"] = [Issue(**i) for i in obj.get("issues", [])]
        obj["legitimate"] = [Issue(**i) for i in obj.get("legitimate", [])]
        return cls(**obj)

    @classmethod
    def read(cls, path: str | Path) -> GroundTruth:
        path = Path(path)
        if path.is_dir():
            path = path / "ground_truth.json"
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as exc:
            raise RlauditError(f"{path}: not a ground-truth file ({exc})") from None
