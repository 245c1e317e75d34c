"""Per-step tracking of behaviours already flagged: the cheap check that runs between heavy audits.

Once emerging-behaviour discovery has flagged a behaviour (an `emerging_behavior` finding with a
`behavior_spec`), following it needs no discovery: count its prevalence per condition in each new step's rows
(one Arrow pass over that step's part) and keep those counts. The counts are tiny (steps x conditions),
so testing them costs nothing, however long the run.

Conditions where the behaviour had already risen when it was flagged are the flag's own news (tested at the
plain 5% level, so "already risen" is read generously); tracking reports the *other* conditions. The test, per
tracked behaviour and such a condition, is whether prevalence in the last `recent` steps exceeds the
first `baseline` steps (each window shrinks to half the steps known while the run is shorter): rate ratio
with a Katz log-scale confidence interval (0.5 added to the cells). It is re-run after every step, so the
error rate is spent over looks and pairs: the L-th look at a pair is tested at `alpha / (pairs x L x (L+1))`
(Bonferroni over the (behaviour, condition) pairs; over looks, a spending sequence that sums to 1). That is
conservative (consecutive looks share most of their data: late looks need a large rise) but keeps the chance of
any false `behavior_spread` alert over a whole run below `alpha` under the null of no change. A condition is
reported when it is significant *and* the ratio's point estimate is at least `min_ratio` (default 2:
"doubled"). Findings have kind `behavior_spread` (live only; fields behavior, behavior_spec, where,
target_condition, source_conditions, baseline/recent prevalence, ratio, ratio_ci, z, z_critical, series); the
`generalization` detector makes the full, offline version of this judgement.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..behaviors import Behavior, parse_behavior
from ..findings import Finding
from ..llm.sampling import sampled_values
from ..layout import read_part
from ..stats import norm
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
    known: set[str] = field(default_factory=set)  # conditions where it had already risen when flagged
    steps: list[int] = field(default_factory=list)  # sorted steps seen (kept incrementally: no rescans)
    conds: set[str] = field(default_factory=set)

    def conditions(self) -> set[str]:
        return set(self.conds)

    def add(self, rows: list[tuple[int, str, int, float]]) -> None:
        for step, cond, n, hits in rows:
            step, cond = int(step), str(cond)
            self.counts[(step, cond)] = [float(n), float(hits or 0.0)]
            self.conds.add(cond)
            if not self.steps or step > self.steps[-1]:
                self.steps.append(step)
            elif step not in self.steps:
                bisect.insort(self.steps, step)

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
        if behavior.numeric or behavior.kind == "python":  # numeric, or a per-row Python call: not per step
            return False
        column = _COLUMNS.get(finding.get("where") or "answer", "answer")
        tracked = Tracked(behavior=behavior, column=column, label=finding.get("behavior") or spec)
        tracked.add(self._count(view, run, [tracked])[0])
        # Conditions where it already rose when it was flagged are the finding's own news; what tracking adds
        # is a rise *elsewhere* afterwards (the tic spreading to personas that never paid for it).
        tracked.known = {c for c in tracked.conditions() if self._rise(tracked, c, z_crit=norm.isf(0.05))}
        self.tracked[spec] = tracked
        return True

    def update(self, view: Store, run: str) -> None:
        """Add the counts of the rows in `view` (the new step's parts) to every tracked behaviour."""
        items = list(self.tracked.values())
        for tracked, rows in zip(items, self._count(view, run, items)):
            tracked.add(rows)

    def _count(self, view: Store, run: str, items: list[Tracked]) -> list[list[tuple[int, str, int, float]]]:
        """Per (step, condition): rollouts, and rollouts showing each behaviour. Read with Arrow straight from
        the view's parts (a step's part is a few hundred rows: a database connection would cost more)."""
        if not items:
            return []
        columns = sorted({"step", "condition", "split"} | {t.column for t in items})
        layouts = view.part_layouts(run)
        tables = [read_part(path, columns, layouts.get(path.name, 1)) for path in view.parts(run)]
        if not tables:
            return [[] for _ in items]
        table = pa.concat_tables(tables)
        if self.split:
            table = table.filter(pc.equal(table["split"], self.split))
        strata = list(zip(table["step"].to_pylist(), table["condition"].to_pylist()))
        cols = {}
        for i, t in enumerate(items):
            # a judge spec is judged on at most `llm.sampling.default_cap()` rollouts per (step, condition);
            # its counts are then those of the judged rollouts, so every interval built on them (the rate
            # ratio's) carries the sampling error
            values, _ = sampled_values(t.behavior, table[t.column], strata, seed=0)
            judged = ~np.isnan(values)
            cols[f"h{i}"] = pa.array(np.where(judged, values > 0, False).astype(np.int64))
            cols[f"n{i}"] = pa.array(judged.astype(np.int64))
        keyed = pa.table({"step": table["step"], "condition": table["condition"], **cols})
        grouped = keyed.group_by(["step", "condition"]).aggregate([(name, "sum") for name in cols]).to_pydict()
        keys = list(zip(grouped["step"], grouped["condition"]))
        return [[(s, c, grouped[f"n{i}_sum"][j], grouped[f"h{i}_sum"][j]) for j, (s, c) in enumerate(keys)
                 if grouped[f"n{i}_sum"][j] > 0] for i in range(len(items))]

    def _rise(self, tracked: Tracked, cond: str, z_crit: float) -> tuple[float, float, float, float, float,
                                                                           float, float, float] | None:
        """(ratio, lo, hi, z, n0, k0, n1, k1) when prevalence under `cond` rose past `z_crit`, else None."""
        first, last = self.windows(tracked)
        if not first:
            return None
        n0, k0 = _window(tracked, cond, set(first))
        n1, k1 = _window(tracked, cond, set(last))
        if not n0 or not n1:
            return None
        ratio, lo, hi, z = rate_ratio(k0, n0, k1, n1)
        return (ratio, lo, hi, z, n0, k0, n1, k1) if z >= z_crit and ratio >= self.min_ratio else None

    def windows(self, tracked: Tracked) -> tuple[list[int], list[int]]:
        """(baseline steps, recent steps): the first `baseline` and last `recent` steps tracked, shrunk to half
        the steps each while fewer are known (at least 2 each; none before 4 steps)."""
        steps = tracked.steps
        if len(steps) < 4:
            return [], []
        b = min(self.baseline, len(steps) // 2)
        r = min(self.recent, len(steps) - b)
        return steps[:b], steps[-r:]

    def check(self, run: str, step: int | None = None) -> list[Finding]:
        """`behavior_spread` findings for (behaviour, condition) pairs whose prevalence rose significantly."""
        pairs = sum(len(t.conditions() - t.known) for t in self.tracked.values())
        findings = []
        for spec, tracked in self.tracked.items():
            first, last = self.windows(tracked)
            if not first:
                continue
            for cond in sorted(tracked.conditions() - tracked.known):
                tracked.looks[cond] += 1
                looks = tracked.looks[cond]
                z_crit = float(norm.isf(self.alpha / (max(pairs, 1) * looks * (looks + 1))))
                rise = self._rise(tracked, cond, z_crit)
                if rise is None:
                    continue
                ratio, lo, hi, z, n0, k0, n1, k1 = rise
                p0, p1 = k0 / n0, k1 / n1
                findings.append(Finding(
                    kind="behavior_spread", run=run, severity="medium", score=math.log(ratio),
                    title=(f"'{tracked.label}' is spreading to condition {cond}: {p0:.1%} -> {p1:.1%} of "
                           f"rollouts (x{ratio:.1f}, 95% CI {lo:.1f}-{hi:.1f})"),
                    explanation=(
                        f"Live tracking of a behaviour flagged by emerging-behaviour discovery in "
                        f"{', '.join(sorted(tracked.known)) or 'the run as a whole'}. Prevalence under {cond} in "
                        f"the last {len(last)} steps ({int(k1)}/{int(n1)}) against the first {len(first)} "
                        f"steps ({int(k0)}/{int(n0)}): rate ratio {ratio:.2f}, z = {z:.1f} over the threshold of "
                        f"{z_crit:.1f} (error rate spent over all looks and conditions)."),
                    fields={"behavior": tracked.label, "behavior_spec": spec, "where": tracked.column,
                            "target_condition": cond, "source_conditions": sorted(tracked.known),
                            "baseline_prevalence": p0, "recent_prevalence": p1, "ratio": ratio,
                            "ratio_ci": [lo, hi], "z": z, "z_critical": z_crit, "baseline_steps": [first[0],
                            first[-1]], "recent_steps": [last[0], last[-1]], "step": step,
                            "series": tracked.series().get(cond, {})}))
        return findings

    def snapshot(self) -> dict[str, dict[str, float]]:
        """behaviour -> condition -> prevalence in the latest step (for logs and metrics)."""
        out: dict[str, dict[str, float]] = {}
        for tracked in self.tracked.values():
            if not tracked.steps:
                continue
            latest = tracked.steps[-1]
            row: dict[str, float] = {}
            for cond in sorted(tracked.conds):
                n, hits = tracked.counts.get((latest, cond), (0.0, 0.0))
                if n:
                    row[cond] = hits / n
            out[tracked.label] = row
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
