"""View models: findings and their evidence turned into what the template shows, every text cleaned and clipped.

The template only lays out what these objects hold. Facts are chosen and formatted per finding kind (the
contract in COMMON.md); anything a kind does not list, and every field of an unknown kind, is shown in a generic
"all fields" table, so a new detector's findings are readable before the report learns about them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..findings import Evidence, Finding
from ..remedies import remedy_for
from .figures import interval, table_rows
from .sanitize import Clip, Clipped, clean_text, highlight_segments, short

KIND_LABELS = {
    "emerging_behavior": "emerging behaviour",
    "generalization": "generalisation",
    "reward_attribution": "reward attribution",
    "cot_grading": "CoT grading",
    "reward_health": "reward health",
    "training_health": "training health",
    "monitorability": "monitorability",
    "audit_error": "audit error",
}

#: One sentence per kind on why a reviewer should care; shown under the detector's own explanation.
WHY = {
    "emerging_behavior": "The policy produces this more (or less) as training goes on. Tics that the reward pays "
                         "for spread to other conditions and, through reused rollouts, to later models.",
    "generalization": "A behaviour learned under one condition moves in step under another: after rescaling, "
                      "the curves overlap. What one system prompt's reward taught is not staying there.",
    "reward_attribution": "This reward signal is what pushes the behaviour: within prompt groups, rollouts with "
                          "the behaviour score higher on it, and its share of the policy-gradient push is given.",
    "cot_grading": "A grader that sees the chain-of-thought rewards what the reasoning says, which teaches the "
                   "model to hide or dress up its reasoning and erodes CoT monitoring.",
    "reward_health": "A reward signal that is constant, stuck, NaN or out of range gives the policy no (or a "
                     "wrong) learning signal; findings built on it are suspect.",
    "training_health": "A run that is not learning (groups without signal, collapsed entropy, runaway length, a "
                       "training reward that rises while held-out scores fall) wastes compute or ships a hacked "
                       "policy; the remedy names the trainer setting to change.",
    "monitorability": "How well monitors that read the chain-of-thought catch what the actions show (g-mean² = "
                      "TPR x TNR), and whether that fell where a grader saw the reasoning: the policy may have "
                      "learned to stop saying what it does.",
    "audit_error": "A detector crashed on this run, so its checks did not run: absence of its findings here "
                   "means nothing.",
}

# (label, field, formatter name) per kind; formatters below.
FACTS: dict[str, list[tuple[str, str, str]]] = {
    "emerging_behavior": [("behaviour", "behavior", "text"), ("where", "where", "text"),
                          ("feature", "feature_type", "text"), ("terms", "terms", "list"),
                          ("onset step", "onset_step", "num"), ("prevalence at start", "prevalence_start", "share"),
                          ("prevalence at end", "prevalence_end", "share"), ("ratio end/start", "ratio", "ratio_ci"),
                          ("q-value (BH)", "q_value", "p")],
    "generalization": [("behaviour", "behavior", "text"), ("where", "where", "text"),
                       ("source condition", "source_condition", "text"),
                       ("target condition", "target_condition", "text"),
                       ("correlation of rescaled curves", "correlation", "num"), ("lag (steps)", "lag_steps", "num"),
                       ("share of mentions", "mention_share", "share"), ("share of traffic", "traffic_share", "share")],
    "reward_attribution": [("behaviour", "behavior", "text"), ("where", "where", "text"),
                           ("reward signal", "signal", "text"), ("condition", "condition", "text"),
                           ("share of selection pressure", "pressure_share", "share"),
                           ("paired preference", "paired_preference", "pref_ci"),
                           ("effect on score", "effect", "effect_ci"), ("q-value", "q_value", "p"),
                           ("verdict", "verdict", "text"), ("warning", "warning", "text")],
    "cot_grading": [("grader", "grader", "text"), ("method", "method", "method"),
                    ("exposure rate", "exposure_rate", "share"), ("exposed samples", "exposed_samples", "num"),
                    ("first exposed step", "first_step", "num"),
                    ("same-answer pairs scored differently", "share_different", "share"),
                    ("feature the score tracks", "feature", "text"), ("correlation", "correlation", "num"),
                    ("q-value", "q_value", "p")],
    "reward_health": [("signal", "signal", "text"), ("problem", "problem", "text"), ("share", "share", "share"),
                      ("first step", "first_step", "num")],
    "training_health": [("check", "check", "text"), ("direction", "direction", "text"),
                        ("onset step", "onset_step", "num"), ("trainer", "trainer", "text")],
    "monitorability": [("monitor", "monitor_used", "text"), ("g-mean² CoT only", "g_mean2_cot", "num"),
                       ("g-mean² action only", "g_mean2_action", "num"), ("g-mean² all", "g_mean2_all", "num"),
                       ("verbalisation rate", "verbalisation_rate", "share"),
                       ("exposure onset step", "exposure_onset", "num"),
                       ("g-mean² change, exposed vs unexposed (DiD)", "did_g_mean2", "num"),
                       ("minimum detectable effect", "did_mde", "num"), ("verdict", "verdict", "text")],
    "audit_error": [("detector", "detector", "text")],
}

#: Fields that hold plot data or per-item tables: drawn as figures, not printed as facts.
PLOT_FIELDS = {"series", "series_by_condition", "condition_series", "curves", "traceback", "steps", "train_steps"}

_GRADER_TEXT_KEYS = ("grader_input", "grader_text", "input", "grader_view", "seen")
_MATCH_KEYS = ("matched_text", "span_text")  # the matched text itself (not "match", which may be a label)


#: Field names as a reader says them; others get `label()`'s generic treatment.
LABELS = {
    "pressure_share": "share of push", "pressure_share_ci": "share of push (95% CI)",
    "pressure": "push", "pressure_ci": "push (95% CI)",
    "paired_preference": "paired preference", "paired_preference_ci": "paired preference (95% CI)",
    "matched_preference": "equally-correct pairs", "matched_preference_ci": "equally-correct pairs (95% CI)",
    "effect_ci": "effect (95% CI)", "equals_total": "is the total", "applies": "applies to",
    "has_behavior": "shows the behaviour", "behavior_value": "behaviour value", "group_id": "prompt group",
    "traffic_share": "share of rollouts", "mention_share": "share of mentions",
    "prevalence_start": "prevalence at start", "prevalence_end": "prevalence at end",
    "exposed_samples": "exposed", "exposure_rate": "exposure rate", "exposure_rate_ci": "exposure rate (95% CI)",
    "first_step": "first step", "q_value": "q-value", "p_value": "p-value", "rollout_id": "rollout",
}


def label(name: Any) -> str:
    """A field name as a column or row label: `pressure_share_ci` -> 'share of push (95% CI)'."""
    text = clean_text(name)
    if text in LABELS:
        return LABELS[text]
    ci = text.endswith("_ci")
    words = (text[:-3] if ci else text).replace("_", " ").replace("behavior", "behaviour").strip()
    return f"{words} (95% CI)" if ci else words


def fmt_num(x: Any) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        if x == int(x) and abs(x) < 1e15:
            return f"{int(x):,}"
        return f"{x:.3g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return clean_text(x)


def fmt_share(x: Any) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        return fmt_num(x)
    pct = 100 * x
    return f"{pct:.2g}%" if 0 < abs(pct) < 1 else f"{pct:.1f}%"


def fmt_p(x: Any) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        return fmt_num(x)
    return f"{x:.2g}" if x >= 1e-3 else f"{x:.1e}"


def _with_ci(value: Any, ci: Any, fmt: Callable[[Any], str]) -> str:
    out = fmt(value)
    iv = interval(ci)
    return f"{out} (95% CI {fmt(iv[0])} to {fmt(iv[1])})" if iv else out


def _text_list(x: Any) -> str:
    if isinstance(x, (list, tuple)):
        return ", ".join(clean_text(v) for v in x[:30]) + (f", … ({len(x)} in all)" if len(x) > 30 else "")
    return clean_text(x)


def _method(x: Any) -> str:
    if x == "screen":
        return "screen: statistical evidence from scores alone (suspected, not proven)"
    if x == "scan":
        return "scan: the reasoning was found in logged grader inputs"
    return clean_text(x)


def format_fact(fmt: str, finding: Finding, key: str) -> str:
    value = finding.get(key)
    if fmt == "share":
        return fmt_share(value)
    if fmt == "p":
        return fmt_p(value)
    if fmt == "num":
        return fmt_num(value)
    if fmt == "list":
        return _text_list(value)
    if fmt == "method":
        return _method(value)
    if fmt == "ratio_ci":
        return _with_ci(value, finding.get("ratio_ci"), fmt_num)
    if fmt == "pref_ci":
        return _with_ci(value, finding.get("paired_preference_ci"), fmt_num)
    if fmt == "effect_ci":
        return _with_ci(value, finding.get("effect_ci"), fmt_num)
    return clean_text(value)


# ---------------------------------------------------------------------------------------------- tables
@dataclass
class TableView:
    """A per-item table of a finding (per signal, per condition, per task...)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    omitted: int = 0


_TABLE_KEY = {"signals": "signal", "per_signal": "signal", "by_signal": "signal", "signal_table": "signal",
              "by_condition": "condition", "by_task": "task"}
MAX_TABLE_ROWS, MAX_TABLE_COLUMNS = 30, 12


def _cell(column: str, value: Any) -> str | None:
    """A table cell, or None when the value is not tabular (nested dicts, long lists)."""
    if isinstance(value, (list, tuple)):
        iv = interval(value)
        return f"{fmt_cell(column, iv[0])} to {fmt_cell(column, iv[1])}" if iv else None
    if isinstance(value, Mapping):
        return None
    return fmt_cell(column, value)


def fmt_cell(column: str, value: Any) -> str:
    name = column.lower()
    if any(w in name for w in ("share", "rate", "prevalence", "applies")):
        return fmt_share(value)
    if name in ("p_value", "q_value") or name.endswith(("_p", "_q")):
        return fmt_p(value)
    return fmt_num(value) if value is not None else ""


def field_tables(finding: Finding) -> tuple[list[TableView], set[str]]:
    """Tables for fields that hold a list of records or a {item: {...}} mapping; returns the fields used."""
    tables, used = [], set()
    for key, value in finding.fields.items():
        if not (isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value)) and not (
                isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values())):
            continue
        item = _TABLE_KEY.get(key, key[3:] if key.startswith("by_") else "item")
        rows = table_rows(value, item)
        columns: list[str] = []
        for r in rows:
            for c, v in r.items():
                if c not in columns and _cell(c, v) is not None:
                    columns.append(c)
        if item in columns:
            columns.remove(item)
            columns.insert(0, item)
        columns = columns[:MAX_TABLE_COLUMNS]
        if len(columns) < 2:
            continue
        body = [[_cell(c, r.get(c)) or "" for c in columns] for r in rows[:MAX_TABLE_ROWS]]
        tables.append(TableView(title=label(short(key, 100)), columns=[short(label(c), 60) for c in columns],
                                rows=[[short(x, 300) for x in row] for row in body],
                                omitted=max(0, len(rows) - MAX_TABLE_ROWS)))
        used.add(key)
    return tables, used


# ---------------------------------------------------------------------------------------------- evidence
@dataclass
class GraderView:
    """What a grader saw, cut around the exposed span, with the span highlighted."""

    name: str
    segments: list[tuple[str, bool]]
    total: int
    omitted_before: int
    omitted_after: int
    highlighted: bool
    note: str = ""


@dataclass
class EvidenceView:
    rollout_id: str
    step: Any
    condition: str
    note: str
    text: Clipped | None
    texts: list[tuple[str, Clipped]] = field(default_factory=list)  # prompt, reasoning, answer
    rewards: list[tuple[str, str]] = field(default_factory=list)
    graders: list[GraderView] = field(default_factory=list)
    data: list[tuple[str, Clipped]] = field(default_factory=list)
    in_store: bool = False
    pair: str | None = None  # evidence pairs (attribution: with and without the behaviour, same prompt group)


def _spans(data: Mapping[str, Any]) -> list[tuple[int, int]]:
    """Character offsets of matched spans, from whichever shape the evidence uses."""
    raw: list[Any] = []
    for key in ("spans", "span", "match_span", "offsets", "exposed_span"):
        v = data.get(key)
        if isinstance(v, (list, tuple)) and v:
            raw = list(v) if isinstance(v[0], (list, tuple, Mapping)) else [v]
            break
    for a, b in (("start", "end"), ("span_start", "span_end"), ("match_start", "match_end")):
        if a in data and b in data:
            raw.append([data[a], data[b]])
    out = []
    for item in raw:
        if isinstance(item, Mapping):
            item = [item.get("start"), item.get("end")]
        if isinstance(item, (list, tuple)) and len(item) >= 2:
            s, e = item[0], item[1]
            if isinstance(s, int) and isinstance(e, int) and not isinstance(s, bool) and 0 <= s < e:
                out.append((s, e))
    return out


def grader_view(name: str, text: Any, spans: list[tuple[int, int]], match: str | None, clip: Clip,
                match_note: str = "span located by its matched text") -> GraderView:
    raw = clean_text(text)
    note = ""
    valid = [(s, e) for s, e in spans if e <= len(raw)]
    if spans and not valid:
        note = "span offsets lie outside the grader input; shown without highlight"
    if not valid and match:
        m = clean_text(match)
        pos = raw.find(m) if m else -1
        if pos >= 0:
            valid = [(pos, pos + len(m))]
            note = note or match_note
    if valid:
        lo, hi = min(s for s, _ in valid), max(e for _, e in valid)
        window, offset, _, _ = clip.window(raw, lo, hi)
        local = [(s - offset, e - offset) for s, e in valid]
        shown = window.shown
        segments = highlight_segments(shown, local)
        return GraderView(name=name, segments=segments, total=len(raw), omitted_before=offset,
                          omitted_after=len(raw) - offset - len(shown), highlighted=True, note=note)
    clipped = clip(raw)
    return GraderView(name=name, segments=[(clipped.shown, False)], total=len(raw), omitted_before=0,
                      omitted_after=clipped.omitted, highlighted=False, note=note)


def _scalar(x: Any) -> bool:
    return x is None or isinstance(x, (str, int, float, bool))


def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits, recursively (a 16-digit float tells a reader nothing more)."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def value_text(value: Any) -> str:
    """A field value as text: numbers formatted, {name: number} as 'name = 0.91, ...', lists comma-separated."""
    if isinstance(value, str):
        return value
    if _scalar(value):
        return fmt_num(value) if value is not None else "n/a"
    if isinstance(value, Mapping) and value and all(_scalar(v) for v in value.values()):
        return ", ".join(f"{clean_text(k)} = {value_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)) and all(_scalar(v) and not isinstance(v, str) for v in value):
        iv = interval(value)
        return f"{fmt_num(iv[0])} to {fmt_num(iv[1])}" if iv and len(value) == 2 else \
            ", ".join(value_text(v) for v in value)
    try:
        return json.dumps(_rounded(value), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _short(value: Any, clip: Clip) -> Clipped:
    return clip(value_text(value))


_PAIR_KEYS = {"pair"}  # shown as the pair the evidence belongs to
_SPAN_KEYS = {"spans", "span", "match_span", "offsets", "exposed_span", "start", "end", "span_start", "span_end",
              "match_start", "match_end", "text_offset", "grader_input_chars", "grader_inputs", *_GRADER_TEXT_KEYS}


def evidence_view(finding: Finding, ev: Evidence, row: Mapping[str, Any] | None, clip: Clip) -> EvidenceView:
    """One evidence item: its note, the cited rollout from the store (texts, rewards), what the grader saw with
    the exposed span highlighted, and the item's remaining data."""
    data = dict(ev.data) if isinstance(ev.data, Mapping) else {}
    step = ev.step if ev.step is not None else (row or {}).get("step")
    view = EvidenceView(rollout_id=short(ev.rollout_id), step=short(step, 40) if step is not None else None,
                        condition=short(ev.condition or (row or {}).get("condition")), note=short(ev.note, 2_000),
                        text=None, in_store=row is not None)
    if row is not None:
        _add_rollout(view, row, clip)
    excerpt_is_grader_input = _add_grader_views(view, finding, ev, data, row, clip)
    excerpt_in_rollout = row is not None and ev.text.strip() and any(
        ev.text.strip() in (row.get(c) or "") for c in ("answer", "reasoning", "completion"))
    if ev.text and not excerpt_is_grader_input and not excerpt_in_rollout:
        view.text = clip(ev.text)
    view.data = [(label(short(k, 100)), _short(v, clip)) for k, v in list(data.items())[:20]
                 if k not in _SPAN_KEYS and k not in _PAIR_KEYS]
    pair = data.get("pair")
    view.pair = short(pair, 40) if pair is not None and _scalar(pair) else None
    return view


def _add_rollout(view: EvidenceView, row: Mapping[str, Any], clip: Clip) -> None:
    """Prompt, reasoning and answer (or the completion when neither was split out), rewards and advantage."""
    columns = ("reasoning", "answer") if (row.get("reasoning") or row.get("answer")) else ("completion",)
    for col in ("prompt", *columns):
        if row.get(col):
            c = clip(row[col])
            view.texts.append((col, Clipped(c.shown, max(c.total, int(row.get(f"{col}_len") or 0)))))
    rewards = row.get("rewards") or {}
    view.rewards = [(short(k, 100), fmt_num(v)) for k, v in sorted(rewards.items())[:30]]
    for key, label in (("reward", "total"), ("advantage", "advantage")):
        if row.get(key) is not None:
            view.rewards.append((label, fmt_num(row[key])))


def _add_grader_views(view: EvidenceView, finding: Finding, ev: Evidence, data: dict[str, Any],
                      row: Mapping[str, Any] | None, clip: Clip) -> bool:
    """What the grader saw, from the first source that has it: the evidence's own copy of the input, the stored
    input (spans point into it; else the rollout's reasoning is searched), or the evidence's excerpt of the
    input, whose position in it is `text_offset`. Returns whether the evidence text was such an excerpt."""
    spans = _spans(data)
    match = next((data[k] for k in _MATCH_KEYS if isinstance(data.get(k), str)), None)
    grader = short(data.get("grader") or finding.get("grader") or "grader", 100)
    stored = (row or {}).get("grader_inputs") or {}
    text_key = next((k for k in _GRADER_TEXT_KEYS if isinstance(data.get(k), str)), None)
    offset = data.get("text_offset")
    has_offset = isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0
    if text_key is not None:
        view.graders.append(grader_view(grader, data[text_key], spans, match, clip))
        return False
    if isinstance(data.get("grader_inputs"), Mapping):
        for name, text in list(data["grader_inputs"].items())[:4]:
            view.graders.append(grader_view(short(name, 100), text, spans, match, clip))
        return False
    if grader in stored and (spans or match or finding.kind == "cot_grading"):
        reasoning = (row or {}).get("reasoning")
        if not spans and not match and reasoning and len(reasoning) == ((row or {}).get("reasoning_len") or 0):
            match = reasoning  # complete (not cut) reasoning: find it verbatim in what the grader saw
        view.graders.append(grader_view(grader, stored[grader], spans, match, clip,
                                        "span located by an exact search for this rollout's reasoning"))
        return has_offset
    if spans and ev.text and has_offset:
        g = grader_view(grader, ev.text, [(a - offset, b - offset) for a, b in spans], None, clip)
        g.omitted_before += offset
        total = data.get("grader_input_chars")
        if isinstance(total, int) and total >= offset + len(ev.text):
            g.omitted_after += total - offset - len(ev.text)
            g.total = total
        view.graders.append(g)
        return True
    return False


# ---------------------------------------------------------------------------------------------- findings
@dataclass
class FindingView:
    index: int
    anchor: str
    kind: str
    kind_label: str
    run: str
    severity: str
    title: str
    explanation: Clipped
    why: str
    score: str
    facts: list[tuple[str, str]]
    other_fields: list[tuple[str, Clipped]]
    figures: list[str]
    tables: list[TableView]
    evidence: list[EvidenceView]
    evidence_total: int
    traceback: Clipped | None = None
    screen: bool = False
    remedy: str = ""
    lists: list[tuple[str, list[str], int]] = field(default_factory=list)  # (label, items shown, items in all)

    @property
    def remedy_segments(self) -> list[tuple[str, bool]]:
        """The remedy as (text, is_command) pieces: `backticked` commands are shown as code."""
        parts = self.remedy.split("`")
        if len(parts) % 2 == 0:  # unbalanced backticks: plain text
            return [(self.remedy, False)]
        return [(p, i % 2 == 1) for i, p in enumerate(parts) if p]

    @property
    def evidence_groups(self) -> list[list[EvidenceView]]:
        """Evidence in display groups: an evidence pair side by side, every other item on its own."""
        groups: list[list[EvidenceView]] = []
        for e in self.evidence:
            if e.pair is not None and groups and groups[-1][0].pair == e.pair and len(groups[-1]) < 2:
                groups[-1].append(e)
            else:
                groups.append([e])
        return groups


MAX_LIST_ITEMS = 30


def shown_evidence(finding: Finding, max_evidence: int) -> int:
    """How many evidence items the report shows: `max_evidence`, plus one where that would cut a pair in half."""
    ev = finding.evidence
    n = min(max_evidence, len(ev))
    if 0 < n < len(ev):
        last, nxt = ev[n - 1].data.get("pair"), ev[n].data.get("pair")
        before = ev[n - 2].data.get("pair") if n >= 2 else None
        if last is not None and last == nxt and before != last:
            n += 1
    return n


def finding_view(index: int, finding: Finding, figures: Sequence[str], rows: Mapping[str, Mapping[str, Any]],
                 clip: Clip, max_evidence: int) -> FindingView:
    facts: list[tuple[str, str]] = []
    shown: set[str] = set()
    lists: list[tuple[str, list[str], int]] = []
    for name, key, fmt in FACTS.get(finding.kind, []):
        value = finding.get(key)
        if value is None:
            continue
        shown.add(key)
        if fmt == "list" and isinstance(value, (list, tuple)):  # a list stretches the grid: a line of its own
            if value:
                total = finding.get("n_terms") if key == "terms" else None  # the JSON may hold the first ones only
                total = total if isinstance(total, int) and total >= len(value) else len(value)
                lists.append((name, [short(v, 80) for v in value[:MAX_LIST_ITEMS]], total))
            continue
        facts.append((name, short(format_fact(fmt, finding, key), 500)))
    shown |= {"ratio_ci", "paired_preference_ci", "effect_ci", "remedy"}
    tables, used = field_tables(finding)
    shown |= used
    other = [(label(short(k, 100)), _short(v, clip)) for k, v in finding.fields.items()
             if k not in shown and k not in PLOT_FIELDS]
    tb = finding.get("traceback")
    return FindingView(
        index=index, anchor=f"finding-{index}", kind=short(finding.kind, 100),
        kind_label=KIND_LABELS.get(finding.kind, short(finding.kind, 100).replace("_", " ")),
        run=short(finding.run), severity=finding.severity, title=short(finding.title, 500),
        explanation=clip(finding.explanation), why=WHY.get(finding.kind, ""),
        score=fmt_num(finding.score), facts=facts, other_fields=other[:40], figures=list(figures),
        tables=tables, evidence=[evidence_view(finding, ev, rows.get(ev.rollout_id), clip)
                                 for ev in finding.evidence[:shown_evidence(finding, max_evidence)]],
        evidence_total=len(finding.evidence), traceback=clip(tb) if isinstance(tb, str) else None,
        screen=finding.kind == "cot_grading" and finding.get("method") == "screen",
        remedy=short(finding.get("remedy") or remedy_for(finding), 2_000), lists=lists)
