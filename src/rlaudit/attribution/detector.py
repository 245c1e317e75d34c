"""Detector `attribution`: trace every medium/high emerging behaviour to the reward signals that drove it.

For each `emerging_behavior` finding of severity medium or high (per distinct behaviour spec and text part) it
runs `rlaudit.attribution.trace` and emits one `reward_attribution` finding. All behaviours of a run are assessed
together: Benjamini-Hochberg runs over every (behaviour, signal) paired-preference test, and the severity rule
is the one documented in `rlaudit.attribution.trace.assess`.

Options (`AuditConfig.options["attribution"]`): `alpha` (FDR level, 0.05), `n_boot` (bootstrap replicates,
1000), `outcome_signals` (extra task-success signal names), `advantage_scale` ("group" for GRPO, "none" for
Dr. GRPO), `min_severity` of the behaviours to trace ("medium"), `max_behaviors` (50, most severe first), `cache`
(True: trace from per-part statistics cached beside the run, `rlaudit.attribution.partcache`, where the run and
the behaviours allow it; False: always from the rollouts, `trace.load_frames`; the findings are the same).
"""

from __future__ import annotations

import math

from . import partcache
from .trace import Frame, Prepared, Trace, assess, attribute, evidence_for, learned_through_outcome, load_frames
from ..behaviors import parse_behavior
from ..errors import RlauditError
from ..findings import SEVERITY_RANK, Finding, rank
from ..detectors import DetectContext, Detector, register


@register
class AttributionDetector(Detector):
    name = "attribution"
    kinds = ("reward_attribution",)
    description = "Traces emerging behaviours to the reward signals, conditions and tasks that pushed them up."
    requires = ("emerging",)
    part_stats = ("attribution_meta",)  # per-step counts and signals (`partcache`), read with the other kinds

    def detect(self, ctx: DetectContext) -> list[Finding]:
        opt = lambda key, default: ctx.option(self.name, key, default)  # noqa: E731
        floor = SEVERITY_RANK[opt("min_severity", "medium")]
        wanted: dict[tuple[str, str], Finding] = {}
        for f in rank(ctx.of_kind("emerging_behavior")):
            key = (str(f.get("behavior_spec") or f.get("behavior")), str(f.get("where") or "answer"))
            if SEVERITY_RANK[f.severity] >= floor and key not in wanted:
                wanted[key] = f
        wanted = dict(list(wanted.items())[: int(opt("max_behaviors", 50))])
        if not wanted:
            return []
        findings: list[Finding] = []
        items, sources = [], []
        for (spec, where), source in wanted.items():
            try:
                items.append((parse_behavior(spec), where))
                sources.append(source)
            except RlauditError as exc:
                findings.append(_untraceable(ctx.run, spec, where, str(exc)))
        if not items:
            return findings
        outcome = list(opt("outcome_signals", []))
        directions = ["down" if source.get("direction") == "down" else "up" for source in sources]
        with ctx.connect() as con:
            cached = partcache.traces(
                ctx.store, ctx.run, con, ctx.config.max_step, ctx.config.split,
                [(b, w, d) for (b, w), d in zip(items, directions)], outcome_signals=outcome,
                advantage_scale=opt("advantage_scale", "group"), n_boot=int(opt("n_boot", 1000)),
                seed=ctx.config.seed, also=ctx.part_kinds) if opt("cache", True) else None
            if cached is not None:
                for t, source in zip(cached, sources):
                    t.behavior_severity = source.severity
                assess(cached, float(opt("alpha", 0.05)))
                for t, source in zip(cached, sources):
                    cap_learned(ctx, t, source)
                return findings + [to_finding(t) for t in cached]
            try:
                frames = load_frames(con, items)
            except RlauditError as exc:
                return findings + [_untraceable(ctx.run, spec, where, str(exc)) for spec, where in wanted]
            # frames of rule specs differ only in the behaviour and share their rows (and one Prepared); a judge
            # spec's frame holds only its judged groups (`attribution._judged_frame`) and gets its own
            shared: dict[int, Prepared] = {}

            def prepared_for(frame: Frame) -> Prepared:
                if id(frame.group) not in shared:
                    shared[id(frame.group)] = Prepared.of(frame, outcome)
                return shared[id(frame.group)]

            traces: list[Trace] = []
            for (behavior, where), frame, source, direction in zip(items, frames, sources, directions):
                t = attribute(frame, behavior, where=where, run=ctx.run, outcome_signals=outcome,
                              prepared=prepared_for(frame),
                              advantage_scale=opt("advantage_scale", "group"),
                              n_boot=int(opt("n_boot", 1000)), seed=ctx.config.seed,
                              direction=direction)
                t.behavior_severity = source.severity
                traces.append(t)
            assess(traces, float(opt("alpha", 0.05)))
            for t, frame in zip(traces, frames):
                t.evidence = evidence_for(con, frame, t, prepared=prepared_for(frame))
        for t, source in zip(traces, sources):
            cap_learned(ctx, t, source)
        return findings + [to_finding(t) for t in traces]


def cap_learned(ctx: DetectContext, t: Trace, source: Finding) -> None:
    """A behaviour learnt as intended (`trace.learned_through_outcome`: the push comes through task success and
    no signal rewards it for its own sake) is what RL on the task is for: its `emerging_behavior` finding, and the
    `generalization` findings of its spread across conditions, stay reported (the rise is real) but at most
    low, with the reason. Severity is a statement about a process mistake; the size of the rise is not one: a
    short run that sees a skill's whole rise would otherwise rank it above a long run that sees its plateau.

    Limit: a behaviour that games the outcome checker itself (a verifier that can be fooled) is pushed through
    task success too; logged rewards cannot tell the two apart, so the attribution finding names the signal."""
    signals = learned_through_outcome(t)
    if not signals:
        return
    spec, where = source.get("behavior_spec"), source.get("where") or "answer"
    why = (f"Learnt through task success: {', '.join(signals)} carries the push and no signal rewards it for its "
           "own sake (see its reward_attribution finding), so at most low.")
    for f in ctx.findings:
        if f.kind not in ("emerging_behavior", "generalization") or f.get("behavior_spec") != spec:
            continue
        if (f.get("where") or "answer") != where or f.severity in ("info", "low"):
            continue
        f.fields["severity_before_attribution"] = f.severity
        f.fields["learned_through"] = signals
        f.severity = "low"
        f.explanation = f"{f.explanation} {why}"


def to_finding(t: Trace) -> Finding:
    """The `reward_attribution` finding of a trace: fields from `Trace.fields()`, evidence pairs, a title that
    names the behaviour, the top signal and the condition that pays for it."""
    top = t.top
    where = f" ({t.where})" if t.where != "answer" else ""
    if t.severity == "info":
        title = f"'{t.behavior}'{where}: no reward signal significantly pushes it {t.direction}"
    else:
        cond = f", mostly in condition '{t.condition}'" if t.condition else ""
        title = (f"'{t.behavior}'{where} is pushed {t.direction} by {top.signal} "
                 f"({_pct(top.pressure_share)} of the push{cond})")
        if t.suspect and t.suspect != top.signal:
            title += f"; {t.suspect} rewards it for its own sake"
    return Finding(kind="reward_attribution", run=t.run, severity=t.severity, title=title,
                   explanation=explain(t), score=_score(t), fields=t.fields(), evidence=t.evidence)


def explain(t: Trace) -> str:
    """A reviewer's paragraph: what was compared, the numbers with intervals, the verdict, the caveats."""
    top = t.top
    lo, hi = top.paired_preference_ci
    elo, ehi = top.effect_ci
    unit = ("rollouts above the group median vs below it" if t.numeric
            else f"rollouts with '{t.behavior}' vs without it")
    if t.direction == "down":
        unit = ("rollouts below the group median vs above it" if t.numeric
                else f"rollouts without '{t.behavior}' vs with it")
    parts = [
        f"Within {t.groups_used} comparable groups ({t.group_key}), {top.signal} scored {unit} higher in "
        f"{_pct(top.paired_preference)} of pairs (95% CI {_pct(lo)}-{_pct(hi)}, q={_num(top.q_value)}), "
        f"by {_num(top.effect)} on average (CI {_num(elo)} to {_num(ehi)}), and supplied "
        f"{_pct(top.pressure_share)} of the positive advantage push "
        f"{'toward' if t.direction == 'up' else 'away from'} the behaviour."]
    if t.condition:
        share = t.by_condition.get(t.condition, {}).get("pressure_share")
        parts.append(f"Condition '{t.condition}' supplied {_pct(share)} of that signal's push.")
    if not top.outcome and math.isfinite(top.matched_preference):
        mlo, mhi = top.matched_preference_ci
        parts.append(f"Among pairs with equal outcome signals its preference is {_pct(top.matched_preference)} "
                     f"(CI {_pct(mlo)}-{_pct(mhi)}).")
    parts.append(f"Verdict: {t.verdict}.")
    parts.extend(t.warnings)
    return " ".join(parts)


def _untraceable(run: str, spec: str, where: str, reason: str) -> Finding:
    return Finding(kind="reward_attribution", run=run, severity="info",
                   title=f"'{spec}' could not be traced: {reason}",
                   explanation="The attribution detector could not evaluate this behaviour on this run.",
                   fields={"behavior": spec, "behavior_spec": spec, "where": where, "signal": None,
                           "warning": reason})


def _score(t: Trace) -> float:
    top = t.top
    share = top.pressure_share if math.isfinite(top.pressure_share) else 0.0
    pref = top.paired_preference if math.isfinite(top.paired_preference) else 0.5
    return float(share * abs(2 * pref - 1))


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3g}"
