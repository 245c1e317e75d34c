"""Per-step tracking of behaviours already flagged: the cheap check that runs between heavy audits.

Once emerging-behaviour discovery has flagged a behaviour (an `emerging_behavior` finding with a
`behavior_spec`), following it needs no discovery: count its prevalence per condition in each new step's rows
(one grouped SQL query over that step's part) and keep those counts. The counts are tiny (steps x conditions),
so testing them costs nothing, however long the run.

The test, per tracked behaviour and condition, is whether prevalence in the last `recent` steps exceeds the
first `baseline` steps: rate ratio with a Katz log-scale confidence interval (0.5 added to the cells). It is
run after every step, so it is corrected for every look and every (behaviour, condition) pair with Bonferroni:
z must exceed the normal quantile at `alpha / (pairs x looks)`. That is conservative (consecutive looks share
most of their data) but keeps the chance of any false `behavior_spread` alert over a whole run below `alpha`
under the null of no change. A condition is reported when it is significant *and* the ratio's point estimate is
at least `min_ratio` (default 2: "doubled"). Findings have kind `behavior_spread` (live only); the generalization
detector makes the full, offline version of this judgement.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from ..behaviors import Behavior, parse_behavior
from ..findings import Finding
from ..store import Store

_COLUMNS = {"answer": "answer", "reasoning": "reasoning", "completion": "completion"}


@dataclass
class Tracked:
    """One behaviour being followed, with its per-(step, condition) counts."""

    behavior: Behavior
    column: str
    label: str
    counts: dict[tuple[int, str], list[float]] = field(default_factory=dict)  # (step, cond) -> [n, hits]
    looks: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, rows: list[tuple[int, str, int, float]]) -> None:
        for step, cond, n, hits in rows:
            self.counts[(int(step), str(cond))] = [float(n), float(hits or 0.0)]

    def series(self) -> dict[str, dict[str, list[float]]]:
        """condition -> {"steps": [...], "prevalence": [...]}."""
        out: dict[str, dict[str, list[float]]] = {}
        for (step, cond), (n, hits) in sorted(self.counts.items()):
            s = out.setdefault(cond, {"steps": [], "prevalence": []})
            s["steps"].append(step)
            s["prevalence"].append(hits / n if n else float("nan"))
        return out


class BehaviorTracker:
    """Follows flagged behaviours step by step and reports conditions where they spread."""

    def __init__(self, alpha: float = 0.01, baseline: int = 10, recent: int = 10, min_ratio: float = 2.0,
                 split: str | None = "train"):
        self.alpha, self.baseline, self.recent, self.min_ratio, self.split = alpha, baseline, recent, min_ratio, split
        self.tracked: dict[str, Tracked] = {}

    def follow(self, finding: Finding, view: Store, run: str) -> bool:
        """Start tracking the behaviour of an `emerging_behavior` finding; counts are back-filled from `view`
        (a bounded sample of the run). False when it is already tracked or not trackable."""
        spec = finding.get("behavior_spec")
        if not spec or spec in self.tracked:
            return False
        behavior = parse_behavior(spec)
        if behavior.numeric or behavior.sql("x") is None:  # numeric or Python predicates: not cheap per step
            return False
        column = _COLUMNS.get(finding.get("where") or "answer", "answer")
        tracked = Tracked(behavior=behavior, column=column, label=finding.get("behavior") or spec)
        tracked.add(self._count(view, run, tracked))
        self.tracked[spec] = tracked
        return True

    def update(self, view: Store, run: str) -> None:
        """Add the counts of the rows in `view` (the new step's parts) to every tracked behaviour."""
        for tracked in self.tracked.values():
            tracked.add(self._count(view, run, tracked))

    def _count(self, view: Store, run: str, tracked: Tracked) -> list[tuple[int, str, int, float]]:
        expr = tracked.behavior.sql(tracked.column)
        where = f"WHERE split = '{self.split}'" if self.split else ""
        sql = (f"SELECT step, condition, count(*) AS n, sum(({expr}) > 0) AS hits FROM rollouts {where} "
               "GROUP BY step, condition")
        with view.connect([run]) as con:
            return [tuple(r) for r in con.execute(sql).fetchall()]

    def check(self, run: str, step: int | None = None) -> list[Finding]:
        """`behavior_spread` findings for (behaviour, condition) pairs whose prevalence rose significantly."""
        pairs = sum(len({c for _, c in t.counts}) for t in self.tracked.values())
        findings = []
        for spec, tracked in self.tracked.items():
            steps = sorted({s for s, _ in tracked.counts})
            if len(steps) < self.baseline + self.recent:
                continue
            first, last = set(steps[: self.baseline]), set(steps[-self.recent:])
            for cond in sorted({c for _, c in tracked.counts}):
                n0, k0 = _window(tracked, cond, first)
                n1, k1 = _window(tracked, cond, last)
                if not n0 or not n1:
                    continue
                tracked.looks[cond] += 1
                ratio, lo, hi, z = rate_ratio(k0, n0, k1, n1)
                z_crit = float(norm.isf(self.alpha / (max(pairs, 1) * tracked.looks[cond])))
                if z < z_crit or ratio < self.min_ratio:
                    continue
                p0, p1 = k0 / n0, k1 / n1
                series = tracked.series().get(cond, {})
                findings.append(Finding(
                    kind="behavior_spread", run=run, severity="medium", score=math.log(ratio),
                    title=(f"'{tracked.label}' is spreading under condition {cond}: {p0:.1%} -> {p1:.1%} of "
                           f"rollouts (x{ratio:.1f}, 95% CI {lo:.1f}-{hi:.1f})"),
                    explanation=(
                        f"Live tracking of a behaviour flagged by emerging-behaviour discovery. Prevalence under "
                        f"{cond} in the last {self.recent} steps ({int(k1)}/{int(n1)}) against the first "
                        f"{self.baseline} steps ({int(k0)}/{int(n0)}): rate ratio {ratio:.2f}, z = {z:.1f} over a "
                        f"Bonferroni threshold of {z_crit:.1f} (all looks and conditions)."),
                    fields={"behavior": tracked.label, "behavior_spec": spec, "where": tracked.column,
                            "target_condition": cond, "baseline_prevalence": p0, "recent_prevalence": p1,
                            "ratio": ratio, "ratio_ci": [lo, hi], "z": z, "z_critical": z_crit,
                            "baseline_steps": [min(first), max(first)], "recent_steps": [min(last), max(last)],
                            "step": step, "series": series}))
        return findings

    def snapshot(self) -> dict[str, dict[str, float]]:
        """behaviour -> condition -> prevalence in the latest step (for logs and metrics)."""
        out: dict[str, dict[str, float]] = {}
        for tracked in self.tracked.values():
            latest = max((s for s, _ in tracked.counts), default=None)
            if latest is None:
                continue
            out[tracked.label] = {c: (h / n if n else float("nan"))
                                  for (s, c), (n, h) in tracked.counts.items() if s == latest}
        return out


def _window(tracked: Tracked, cond: str, steps: set[int]) -> tuple[float, float]:
    n = hits = 0.0
    for s in steps:
        c = tracked.counts.get((s, cond))
        if c:
            n += c[0]
            hits += c[1]
    return n, hits


def rate_ratio(k0: float, n0: float, k1: float, n1: float) -> tuple[float, float, float, float]:
    """Ratio of proportions k1/n1 over k0/n0 with a 95% Katz CI and the z of its log (0.5 added to cells)."""
    a, b = k1 + 0.5, k0 + 0.5
    m1, m0 = n1 + 1.0, n0 + 1.0
    log_rr = math.log((a / m1) / (b / m0))
    se = math.sqrt(max(1 / a - 1 / m1 + 1 / b - 1 / m0, 1e-12))
    z = log_rr / se
    lo, hi = np.exp([log_rr - 1.96 * se, log_rr + 1.96 * se])
    return math.exp(log_rr), float(lo), float(hi), z
