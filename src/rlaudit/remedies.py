"""What to do about a finding: one plain-language `remedy` per finding, keyed by its kind.

The audit adds them after the detectors ran (`add_remedies`), so detectors only say what they found; the remedy
is written from the finding's own fields and evidence:

- `cot_grading`: which grader input to strip the reasoning from, and where it was seen (steps, conditions,
  tasks, an evidence rollout);
- `reward_attribution`: which reward signal to fix or reweight, with the evidence pair that shows the bias;
- `emerging_behavior`, `generalization`, `behavior_spread`: which rollouts to filter out of data reused for SFT
  or distillation (`rlaudit export RUN --exclude SPEC`), and where to look for the cause;
- `reward_health`: which reward component to fix, and how it is broken;
- `training_health`: the setting to change in the trainer that wrote the run (`rlaudit.health.settings`);
- `audit_error`: what did not run.

The remedy is a field of the finding JSON (`"remedy": "..."`), a line of the report card and of the CLI table.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from .findings import Finding

__all__ = ["add_remedies", "remedy_for"]


def add_remedies(findings: Iterable[Finding]) -> None:
    """Set `remedy` on every finding that has none yet (in place)."""
    for f in findings:
        if not f.get("remedy"):
            text = remedy_for(f)
            if text:
                f.fields["remedy"] = text


def remedy_for(f: Finding) -> str:
    """The remedy text of one finding ('' when there is nothing to say)."""
    writer = _WRITERS.get(f.kind, _generic)
    try:
        return writer(f)
    except Exception:  # noqa: BLE001 - a remedy is advice; malformed fields must not break an audit or report
        return _generic(f)


# ---------------------------------------------------------------------------------------------- helpers
def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) and x == x else "?"


def _q(text: Any) -> str:
    return shlex.quote(str(text))


def _top(rows: Any, key: str, n: int = 3) -> list[tuple[str, Mapping[str, Any]]]:
    """The `n` items of a {item: {...}} table with the largest numeric `key`."""
    if not isinstance(rows, Mapping):
        return []
    items = [(str(k), v) for k, v in rows.items() if isinstance(v, Mapping)
             and isinstance(v.get(key), (int, float)) and v.get(key) == v.get(key) and v.get(key) > 0]
    return sorted(items, key=lambda kv: -kv[1][key])[:n]


def _spec(f: Finding) -> str:
    return str(f.get("behavior_spec") or f.get("behavior") or f.get("term") or "")


def _export(f: Finding, spec: str) -> str:
    return (f"rlaudit export {_q(f.run)} --exclude {_q(_every_phrasing(f, spec))} "
            f"--out {_q(_slug(f.run) + '-without-' + _slug(spec) + '.jsonl')}")


def _every_phrasing(f: Finding, spec: str) -> str:
    """The spec that excludes a behaviour in all the phrasings it was found in (`terms` of a merged behaviour:
    'goblin' and 'a gremlin' are one tic, and filtering on the name alone would keep the gremlin rollouts)."""
    terms = [str(t) for t in (f.get("terms") or []) if str(t).strip() and "|" not in str(t)]
    if ":" in spec or len(terms) < 2:
        return spec
    return "any:" + "|".join(dict.fromkeys([spec, *terms]))


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out[:40] or "behavior"


# ---------------------------------------------------------------------------------------------- by kind
def _cot_grading(f: Finding) -> str:
    grader = f.get("grader") or "the grader"
    if f.get("method") not in (None, "scan"):  # a statistical screen from scores: exposure not seen directly
        return (f"Log what {grader!r} receives (wrap it with rlaudit.cot.capture) and confirm with `rlaudit "
                f"probe-grader MODULE:FUNCTION {_q(f.run)}`; if it reads the reasoning, pass it only the answer "
                "(the text after the closing think tag).")
    where = []
    if f.get("first_step") is not None:
        where.append(f"from step {f['first_step']}")
    conds = _top(f.get("by_condition"), "exposed_samples")
    if conds:
        where.append("most in condition " + ", ".join(f"{c!r} ({int(v['exposed_samples'])})" for c, v in conds))
    tasks = [(t, v) for t, v in _top(f.get("by_task"), "exposed_samples") if t not in ("unknown", "(none)")]
    if tasks:
        where.append("task " + ", ".join(f"{t!r} ({int(v['exposed_samples'])})" for t, v in tasks))
    example = next((e.rollout_id for e in f.evidence if e.rollout_id), None)
    if example:
        where.append(f"e.g. rollout {example}")
    seen = f"It saw reasoning in {f.get('exposed_samples', '?')} rollouts" + (f", {'; '.join(where)}" if where
                                                                              else "")
    return (f"Strip the reasoning from the input of grader {grader!r} before it scores, on every code path: pass "
            f"it only the answer (the text after the closing think tag). {seen}. Re-score or discard those "
            f"rollouts' {grader} rewards, and check the fix with `rlaudit probe-grader MODULE:FUNCTION RUN`.")


def _pair(f: Finding) -> str:
    """'rollout A (signal = x) vs rollout B (signal = y)': the first evidence pair, with and without."""
    signal = f.get("signal")
    pairs: dict[Any, dict[bool, Any]] = {}
    for e in f.evidence:
        p, has = e.data.get("pair"), e.data.get("has_behavior")
        if p is not None and has is not None:
            pairs.setdefault(p, {})[bool(has)] = e
    for p in sorted(pairs, key=str):
        both = pairs[p]
        if True in both and False in both:
            def score(e: Any) -> str:
                v = (e.data.get("scores") or {}).get(signal)
                return f" ({signal} = {v:.3g})" if isinstance(v, (int, float)) else ""
            return (f"evidence pair {p}: {both[True].rollout_id}{score(both[True])} with the behaviour vs "
                    f"{both[False].rollout_id}{score(both[False])} without, same prompt group")
    return ""


def _reward_attribution(f: Finding) -> str:
    signal, spec = f.get("signal") or f.get("suspect_signal"), _spec(f)
    trace = f"`rlaudit trace {_q(f.run)} --behavior {_q(spec)}`"
    if f.severity in ("info", "low"):
        return (f"Likely learned from the intended reward ({f.get('verdict') or 'no signal pays for it alone'}); "
                f"no change needed unless {spec!r} is unwanted. Details: {trace}.")
    pair = _pair(f)
    cond = f.get("condition")
    where = f" in condition {cond!r}" if cond else ""
    pref = f.get("paired_preference")
    bias = f"prefers rollouts with it in {_pct(pref)} of comparable pairs" if isinstance(pref, float) else "pays for it"
    return (f"Fix or down-weight reward signal {signal!r}{where}: it {bias} and supplies "
            f"{_pct(f.get('pressure_share'))} of the push toward {spec!r}"
            + (f" ({pair})" if pair else "") + ". Remove what it rewards for its own sake (its prompt, rubric or "
            f"keyword list) or lower its weight, then re-check with {trace}.")


def _emerging(f: Finding) -> str:
    spec = _spec(f)
    if f.get("numeric") or spec.startswith("style:") or f.get("direction") == "down":
        what = "a style shift" if f.get("numeric") or spec.startswith("style:") else "a behaviour that fell"
        return (f"If this is unwanted ({what}), find what drives it with `rlaudit trace {_q(f.run)} --behavior "
                f"{_q(spec)}` and fix that reward; before reusing late rollouts for SFT or distillation, check "
                "them for it.")
    late = f.get("prevalence_end")
    share = f" ({_pct(late)} of late rollouts)" if isinstance(late, float) else ""
    return (f"If {spec!r} is unwanted, filter the rollouts that show it{share} out of any data reused for SFT or "
            f"distillation: `{_export(f, spec)}` writes the others. Find what pays for it with `rlaudit trace "
            f"{_q(f.run)} --behavior {_q(spec)}`.")


def _generalization(f: Finding) -> str:
    spec = _spec(f)
    src, dst = f.get("source_condition"), f.get("target_condition")
    cause = (f"fix reward signal {f['rewarded_by']!r} under {src!r}, which pays for it"
             if f.get("rewarded_by") else f"look at what rewards it under {src!r}")
    return (f"{spec!r} learned under {src!r} now shows up under {dst!r}: {cause}, and filter the rollouts that "
            f"show it out of any data reused for SFT or distillation (`{_export(f, spec)}`), so that it does "
            "not spread further.")


def _behavior_spread(f: Finding) -> str:
    spec = _spec(f)
    return (f"{spec!r} is spreading to a new condition while the run trains: fix the reward that pays for it "
            f"(`rlaudit trace {_q(f.run)} --behavior {_q(spec)}`) and keep its rollouts out of data reused for "
            f"SFT (`{_export(f, spec)}`).")


_PROBLEMS = {
    "nan": "returns NaN where it applies: find the inputs it fails on (evidence) and make it return a number",
    "non_finite": "returns infinities: clip or fix the computation",
    "constant": "returns the same value everywhere, so it gives no learning signal: check it is wired to the "
                "rollouts (and its weight)",
    "stuck": "stopped varying during the run: check for a crashed or timed-out scorer, cache or fallback path",
    "out_of_range": "is far out of its usual range: check its scale and the outliers (evidence)",
    "saturated": "is at its maximum for every rollout, so it no longer tells rollouts apart: make it harder or "
                 "drop it once it is satisfied",
}


def _reward_health(f: Finding) -> str:
    signal, problem = f.get("signal"), str(f.get("problem") or "")
    what = _PROBLEMS.get(problem, f"is broken ({problem})" if problem else "is broken")
    step = f" from step {f['first_step']}" if f.get("first_step") is not None else ""
    if problem == "saturated":
        return f"Reward component {signal!r}{step} {what}."
    return (f"Fix reward component {signal!r}{step}: it {what}. Rewards it gave while broken should not be "
            "trusted; re-score those rollouts or exclude them from data reused for SFT.")


_TRAINERS = {"trl": "TRL GRPOConfig", "verl": "verl", "prime-rl": "prime-rl"}


def _training_health(f: Finding) -> str:
    from .health.settings import setting_for

    check, trainer = str(f.get("check") or ""), str(f.get("trainer") or "")
    key = f"{check}_{f.get('direction')}" if check == "zero_variance" else check
    if check == "zero_variance" and f.get("direction") not in ("all_correct", "all_wrong"):
        key = "zero_variance_all_correct"
    advice = setting_for(key, trainer)
    if not advice:
        return (f"Check the training setup behind {check or 'this check'}: the finding's statistics and per-step "
                "series show when it started.")
    who = f"In {_TRAINERS[trainer]}: " if trainer in _TRAINERS else ""
    since = f" (from step {f['onset_step']})" if f.get("onset_step") is not None else ""
    return f"{who}{advice[0].upper()}{advice[1:]}{since}."


def _audit_error(f: Finding) -> str:
    det = f.get("detector") or "a detector"
    return (f"Detector {det!r} did not run on this run, so its checks are missing: see the traceback in the "
            "findings JSON (and report it), or audit with the other detectors (--detector).")


def _monitorability(f: Finding) -> str:
    exposure = f.get("exposure") or {}
    if f.get("verdict") != "drop":
        return ("Nothing to fix from this measurement; re-check as training goes on (`rlaudit monitorability RUN "
                "--label SPEC`), and with an LLM judge monitor (`--monitor judge:RUBRIC --llm ...`) when a "
                "rule-based monitor is too blunt for the behaviour.")
    graders = ", ".join(repr(g) for g in exposure.get("graders") or []) or "the exposed grader"
    return (f"Strip the reasoning from what {graders} sees (rlaudit.cot.capture shows what it receives), and do not rely "
            f"on CoT monitors for this behaviour in checkpoints after step {exposure.get('onset')}: monitor the "
            "actions too, and re-check monitorability once the grader is fixed.")


def _generic(f: Finding) -> str:
    return ""


_WRITERS = {
    "cot_grading": _cot_grading,
    "reward_attribution": _reward_attribution,
    "emerging_behavior": _emerging,
    "generalization": _generalization,
    "behavior_spread": _behavior_spread,
    "reward_health": _reward_health,
    "training_health": _training_health,
    "monitorability": _monitorability,
    "audit_error": _audit_error,
}
