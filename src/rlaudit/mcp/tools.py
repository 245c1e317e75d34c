"""The MCP tools as plain Python: every tool is a method of `Tools` returning a small JSON-able dict.

Nothing here imports the MCP SDK, so the tools are testable (and usable) without it; `server.py` registers
them with the SDK. Each method calls rlaudit's public functions (`Store`, `audit_store`, `parse_behavior`,
`attribution.trace`, `probe`) and only shapes their answers: small, structured, paged (`limits.page`).
Errors a caller can fix (unknown run, bad spec, forbidden query) raise `RlauditError` with a one-line reason.

Read-only: the server opens the store through `ReadOnlyStore`, which refuses ingest, append and delete and keeps
the derived tables it computes in memory instead of writing them into the store.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ..audit import audit_store
from ..behaviors import STYLE_FEATURES, Behavior, parse_behavior, re2_cursor
from ..detectors import AuditConfig
from ..errors import RlauditError
from ..findings import SEVERITY_RANK, Finding, jsonable
from ..store import Store
from .limits import Limits, clip, decode_cursor, page, rounded, size_of, snippet
from .sql import run_query

WHERE = ("answer", "reasoning", "completion", "prompt")
TEXT_FIELDS = ("prompt", "completion", "reasoning", "answer", "system_prompt", "metadata")


class ReadOnlyStore(Store):
    """A Store the MCP server cannot change: no ingest/append/delete; derived tables not yet cached on disk
    are computed and kept in memory (per run version) rather than written."""

    persist_derived = False  # term sets and CoT-scan results stay in memory (`tokens`, `cot_grading`)

    def __init__(self, root: str | Path):
        super().__init__(root)
        self._memory: dict[tuple[str, str, str], pa.Table] = {}
        self._mem_lock = threading.Lock()

    def ingest(self, *args: Any, **kwargs: Any) -> Any:
        raise RlauditError("the MCP server is read-only: ingest runs with `rlaudit ingest` first")

    def append(self, *args: Any, **kwargs: Any) -> Any:
        raise RlauditError("the MCP server is read-only")

    def delete(self, run: str) -> None:
        raise RlauditError("the MCP server is read-only")

    def derived(self, run: str, name: str, compute: Any) -> pa.Table:
        fp = self.fingerprint(run)
        path = self.run_dir(run) / "derived" / f"{name}-{fp}.parquet"
        if path.is_file():
            return pq.read_table(path)
        key = (run, name, fp)
        with self._mem_lock:
            if key in self._memory:
                return self._memory[key]
        table = compute()
        with self._mem_lock:
            self._memory[key] = table
        return table


def _severity(name: str | None, what: str = "min_severity") -> int:
    if name is None:
        return 0
    if name not in SEVERITY_RANK:
        raise RlauditError(f"{what} must be one of {', '.join(SEVERITY_RANK)}, got {name!r}")
    return SEVERITY_RANK[name]


def _compact(obj: Any, depth: int = 0) -> Any:
    """A finding's fields without per-step series (`series`, long lists summarised), floats rounded."""
    if isinstance(obj, dict):
        return {k: _compact(v, depth + 1) for k, v in obj.items() if k not in ("series", "traceback")}
    if isinstance(obj, list):
        if len(obj) > 12:
            return {"n": len(obj), "first": _compact(obj[:3], depth + 1), "last": _compact(obj[-2:], depth + 1)}
        return [_compact(v, depth + 1) for v in obj]
    return rounded(obj)


# Per finding kind: the fields that say what it is about, shown in `findings` listings.
_KEY_FIELDS = {
    "emerging_behavior": ("behavior_spec", "where", "direction", "onset_step", "prevalence_start",
                          "prevalence_end", "ratio"),
    "generalization": ("behavior_spec", "where", "source_condition", "target_conditions", "rewarded_by",
                       "target_prevalence_start", "target_prevalence_end"),
    "reward_attribution": ("behavior_spec", "where", "signal", "suspect_signal", "pressure_share", "condition",
                           "paired_preference", "verdict"),
    "cot_grading": ("grader", "method", "exposure_rate", "exposed_samples", "samples", "first_step"),
    "reward_health": ("signal", "problem"),
    "training_health": ("check", "direction", "onset_step", "trainer"),
    "audit_error": ("detector",),
}


class Tools:
    """The server's tools over one store. Thread-safe: the SDK runs each call in a worker thread."""

    def __init__(self, store: Store | str | Path, limits: Limits | None = None,
                 grader_modules: list[str] | None = None, findings_json: str | Path | None = None,
                 audit_config: AuditConfig | None = None):
        self.store = store if isinstance(store, ReadOnlyStore) else ReadOnlyStore(
            store.root if isinstance(store, Store) else store)
        self.limits = limits or Limits()
        self.grader_modules = sorted(set(grader_modules or []))
        self.audit_config = audit_config or AuditConfig()
        self._findings: dict[tuple[str, str], list[Finding]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._preloaded: dict[str, list[Finding]] = {}
        if findings_json:
            from ..audit import AuditResult

            for f in AuditResult.read_json(findings_json).findings:
                self._preloaded.setdefault(f.run, []).append(f)

    # ------------------------------------------------------------------ helpers
    def _run(self, run: str) -> str:
        if not isinstance(run, str) or not run:
            raise RlauditError(f"give a run name (runs: {', '.join(self.store.runs()) or 'none'})")
        self.store.manifest(run)  # RlauditError naming the known runs
        return run

    def _runs(self, run: str | None) -> list[str]:
        return [self._run(run)] if run else self.store.runs()

    def _run_findings(self, run: str) -> list[Finding]:
        """The run's ranked findings: from --findings when it covers the run, else an audit (cached per run
        version)."""
        if run in self._preloaded:
            return self._preloaded[run]
        key = (run, self.store.fingerprint(run))
        with self._lock:
            lock = self._locks.setdefault(run, threading.Lock())
        with lock:
            if key not in self._findings:
                self._findings[key] = audit_store(self.store, [run], self.audit_config).findings
            return self._findings[key]

    def _behavior(self, spec: str) -> Behavior:
        """Parse a behaviour spec; Python predicates only from the modules the server was started with."""
        if not isinstance(spec, str) or not spec.strip():
            raise RlauditError("give a behaviour spec: a term, 're:REGEX', 'style:NAME' or 'module:function'")
        module, sep, func = spec.strip().partition(":")
        if sep and module not in ("re", "style") and re.fullmatch(r"[A-Za-z_][\w.]*", module) \
                and re.fullmatch(r"[A-Za-z_]\w*", func) and not self._module_allowed(module):
            raise RlauditError(f"behaviour {spec!r}: Python predicates are allowed only from the modules the "
                               f"server was started with (--allow-module; now: "
                               f"{', '.join(self.grader_modules) or 'none'})")
        return parse_behavior(spec)

    def _module_allowed(self, module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in self.grader_modules)

    @staticmethod
    def _where(where: str) -> str:
        if where not in WHERE:
            raise RlauditError(f"where must be one of {', '.join(WHERE)}, got {where!r}")
        return where

    def _finding(self, finding_id: str) -> tuple[str, int, Finding]:
        run, sep, idx = (finding_id or "").rpartition("#")
        if not sep or not idx.isdigit():
            raise RlauditError(f"finding id {finding_id!r} is not RUN#N; take ids from the `findings` tool")
        found = self._run_findings(self._run(run))
        i = int(idx)
        if i >= len(found):
            raise RlauditError(f"run {run!r} has {len(found)} findings; no {finding_id!r}")
        return run, i, found[i]

    def _summary_row(self, run: str, i: int, f: Finding) -> dict[str, Any]:
        row = {"id": f"{run}#{i}", "run": run, "kind": f.kind, "severity": f.severity, "title": f.title}
        for k in _KEY_FIELDS.get(f.kind, ()):
            if f.get(k) is not None:
                row[k] = rounded(jsonable(f.get(k)))
        return row

    # ------------------------------------------------------------------ runs
    def list_runs(self, cursor: str | None = None, limit: int = 20) -> dict[str, Any]:
        """Runs in the store: name, format, rollouts, steps, number of conditions."""
        rows = []
        for r in self.store.runs():
            s = self.store.summary(r)
            rows.append({"run": r, "format": s.format, "rows": s.rows, "steps": list(s.steps) if s.steps else None,
                         "conditions": len(s.conditions), "signals": s.signals})
        return page(rows, cursor, limit, self.limits, "runs", items_key="runs")

    def describe_run(self, run: str, findings: bool = True) -> dict[str, Any]:
        """One run: format, rows, steps, conditions (with traffic), tasks, signals, graders, findings by
        severity (auditing the run on first use)."""
        run = self._run(run)
        s = self.store.summary(run)
        traffic = self.store.query("SELECT condition, count(*) AS n FROM rollouts GROUP BY 1 ORDER BY 2 DESC",
                                   runs=[run]).to_pylist()
        tasks = self.store.query("SELECT task, count(*) AS n FROM rollouts GROUP BY 1 ORDER BY 2 DESC LIMIT 20",
                                 runs=[run]).to_pylist()
        splits = self.store.query("SELECT split, count(*) AS n FROM rollouts GROUP BY 1 ORDER BY 1",
                                  runs=[run]).to_pylist()
        out: dict[str, Any] = {
            "run": run, "format": s.format, "rows": s.rows, "steps": list(s.steps) if s.steps else None,
            "splits": {r["split"]: r["n"] for r in splits},
            "conditions": [{"condition": r["condition"], "rollouts": r["n"],
                            "traffic_share": round(r["n"] / max(s.rows, 1), 4)} for r in traffic],
            "tasks": [{"task": r["task"], "rollouts": r["n"]} for r in tasks],
            "signals": s.signals, "graders": s.graders, "notes": [clip(n, 300) for n in s.notes[:5]]}
        if findings:
            found = self._run_findings(run)
            by: dict[str, int] = {}
            for f in found:
                by[f.severity] = by.get(f.severity, 0) + 1
            kinds: dict[str, int] = {}
            for f in found:
                kinds[f.kind] = kinds.get(f.kind, 0) + 1
            out["findings_by_severity"] = {k: by.get(k, 0) for k in ("high", "medium", "low", "info")}
            out["findings_by_kind"] = kinds
            out["top_findings"] = [self._summary_row(run, i, f) for i, f in enumerate(found[:3])]
        return out

    # ------------------------------------------------------------------ findings
    def findings(self, run: str | None = None, kind: str | None = None, min_severity: str | None = None,
                 behavior: str | None = None, cursor: str | None = None, limit: int = 10) -> dict[str, Any]:
        """Findings (ranked: severity, then effect), filtered by run, kind, minimum severity and behaviour
        (matched against behavior/behavior_spec/terms, case-insensitive)."""
        lo = _severity(min_severity)
        rows = []
        needle = behavior.strip().lower() if behavior else None
        for r in self._runs(run):
            for i, f in enumerate(self._run_findings(r)):
                if kind and f.kind != kind:
                    continue
                if SEVERITY_RANK[f.severity] < lo:
                    continue
                if needle:
                    names = [str(f.get("behavior", "")), str(f.get("behavior_spec", ""))] + \
                        [str(t) for t in (f.get("terms") or [])]
                    if not any(needle in n.lower() for n in names):
                        continue
                rows.append(self._summary_row(r, i, f))
        key = f"findings:{run}:{kind}:{min_severity}:{behavior}"
        return page(rows, cursor, limit, self.limits, key, envelope={
            "filters": {"run": run, "kind": kind, "min_severity": min_severity, "behavior": behavior}},
            items_key="findings")

    def explain_finding(self, finding_id: str, evidence_cursor: str | None = None,
                        evidence_limit: int = 4) -> dict[str, Any]:
        """One finding: explanation, statistics (per-step series left out) and a page of evidence rollouts."""
        run, i, f = self._finding(finding_id)
        stats = _compact(jsonable(f.fields))
        for k in ("terms",):
            if isinstance(stats.get(k), list):
                stats[k] = stats[k][:10]
        evidence = [{"rollout_id": e.rollout_id, "step": e.step, "condition": e.condition,
                     "note": clip(e.note, 200), "text": clip(e.text, self.limits.snippet_chars),
                     **{k: rounded(jsonable(v)) for k, v in e.data.items() if k in ("has_behavior", "scores",
                                                                                   "pair", "span", "grader")}}
                    for e in f.evidence]
        env = {"id": finding_id, "run": run, "kind": f.kind, "severity": f.severity, "title": f.title,
               "explanation": clip(f.explanation, 1200), "score": rounded(jsonable(f.score)), "statistics": stats}
        # Statistics may be large (per-signal, per-condition tables): keep them within the answer budget.
        budget = self.limits.max_answer_bytes // 2
        for k in sorted(stats, key=lambda k: -size_of(stats[k])):
            if size_of(stats) <= budget:
                break
            stats[k] = {"omitted": f"{size_of(stats[k])} bytes; read it with query or a narrower tool"}
        return page(evidence, evidence_cursor, evidence_limit, self.limits, f"evidence:{finding_id}",
                    envelope=env, items_key="evidence")

    def emerging(self, run: str, where: str | None = None, min_severity: str = "low", cursor: str | None = None,
                 limit: int = 10) -> dict[str, Any]:
        """Emerging behaviours of a run and their spreads across conditions (findings of the emerging and
        generalization detectors), ranked."""
        run = self._run(run)
        lo = _severity(min_severity)
        if where is not None:
            self._where(where)
        rows = [self._summary_row(run, i, f) for i, f in enumerate(self._run_findings(run))
                if f.kind in ("emerging_behavior", "generalization") and SEVERITY_RANK[f.severity] >= lo
                and (where is None or f.get("where") == where)]
        return page(rows, cursor, limit, self.limits, f"emerging:{run}:{where}:{min_severity}",
                    envelope={"run": run}, items_key="behaviors")

    def cot_exposure(self, run: str, grader: str | None = None) -> dict[str, Any]:
        """Which graders saw the policy's reasoning: the cot_grading findings of a run (scan of logged grader
        inputs, and the score screen), per grader with rate, CI, first step and the conditions/tasks exposed."""
        run = self._run(run)
        s = self.store.summary(run)
        rows = []
        for i, f in enumerate(self._run_findings(run)):
            if f.kind != "cot_grading" or (grader and f.get("grader") != grader):
                continue
            by_cond = f.get("by_condition") or {}
            exposed_in = sorted((c for c, v in by_cond.items() if isinstance(v, dict) and v.get("exposed")),
                                key=lambda c: -by_cond[c].get("exposed", 0))
            by_task = f.get("by_task") or {}
            rows.append({**self._summary_row(run, i, f),
                         "exposure_rate_ci": rounded(jsonable(f.get("exposure_rate_ci"))),
                         "conditions_exposed": exposed_in[:10],
                         "tasks_exposed": sorted(t for t, v in by_task.items()
                                                 if isinstance(v, dict) and v.get("exposed"))[:10],
                         "evidence_ids": [e.rollout_id for e in f.evidence[:5]]})
        return {"run": run, "graders_logged": s.graders, "signals": s.signals, "exposures": rows,
                "verdict": (f"{len(rows)} grader(s) saw reasoning" if rows else
                            "no grader was found to see the reasoning" + (
                                "" if s.graders else " (the run logs no grader inputs: only the score screen "
                                "ran; probe_grader tests a grader given as code)"))}

    # ------------------------------------------------------------------ rollouts
    def search_rollouts(self, run: str, behavior: str, where: str = "answer", step_min: int | None = None,
                        step_max: int | None = None, condition: str | None = None, split: str | None = None,
                        cursor: str | None = None, limit: int = 10) -> dict[str, Any]:
        """Rollouts showing a behaviour (spec), newest first: ids, step, condition, a snippet around the match,
        and the total count and the share of rollouts in scope."""
        run = self._run(run)
        where = self._where(where)
        beh = self._behavior(behavior)
        conds, params = ["TRUE"], []
        if step_min is not None:
            conds.append("step >= ?")
            params.append(int(step_min))
        if step_max is not None:
            conds.append("step <= ?")
            params.append(int(step_max))
        if condition:
            conds.append("condition = ?")
            params.append(condition)
        if split:
            conds.append("split = ?")
            params.append(split)
        scope = " AND ".join(conds)
        expr = beh.sql(where)
        if expr is None:  # a Python predicate: evaluate on the scoped texts
            t = self.store.query(f"SELECT rollout_id, step, condition, {where} AS text FROM rollouts WHERE {scope} "
                                 "ORDER BY step DESC, rollout_id", params, runs=[run])
            vals = beh.values(t.column("text"))
            keep = [i for i, v in enumerate(vals) if v > 0]
            in_scope = t.num_rows
            rows = t.take(pa.array(keep, type=pa.int64())).to_pylist() if keep else []
        else:
            in_scope = self.store.query(f"SELECT count(*) FROM rollouts WHERE {scope}", params,
                                        runs=[run]).column(0)[0].as_py()
            rows = self.store.query(
                f"SELECT rollout_id, step, condition, {where} AS text FROM rollouts WHERE {scope} AND {expr} > 0 "
                "ORDER BY step DESC, rollout_id", params, runs=[run]).to_pylist()
        key = f"search:{run}:{behavior}:{where}:{step_min}:{step_max}:{condition}:{split}"
        first = decode_cursor(cursor, key)
        window = range(first, min(len(rows), first + max(1, min(int(limit), self.limits.max_items))))
        items: list[dict[str, Any]] = [{} for _ in rows]  # snippets only for the page asked for
        with re2_cursor() as con:
            for i in window:
                r = rows[i]
                start, end = _match_span(con, beh, r["text"])
                items[i] = {"rollout_id": r["rollout_id"], "step": r["step"], "condition": r["condition"],
                            "snippet": snippet(r["text"], start, end, self.limits.snippet_chars)}
        return page(items, cursor, limit, self.limits, key, items_key="matches", envelope={
            "run": run, "behavior": beh.spec, "where": where, "rollouts_in_scope": in_scope,
            "share": round(len(rows) / in_scope, 4) if in_scope else None})

    def get_rollout(self, run: str, rollout_id: str, field: str | None = None, offset: int = 0) -> dict[str, Any]:
        """One rollout whole: step, condition, task, prompt, reasoning, answer, rewards, advantage, grader inputs,
        tool calls. Texts longer than the limit are clipped; `field` and `offset` read the rest of one."""
        run = self._run(run)
        rows = self.store.query("SELECT * FROM rollouts WHERE rollout_id = ?", [rollout_id], runs=[run]).to_pylist()
        if not rows:
            raise RlauditError(f"run {run!r} has no rollout {rollout_id!r}; ids come from search_rollouts, "
                               "findings' evidence or query")
        r = rows[0]
        n = self.limits.text_chars
        grader_inputs = dict(r["grader_inputs"] or [])
        if field is not None:
            texts = {k: r.get(k) for k in TEXT_FIELDS} | {f"grader_inputs.{g}": v for g, v in grader_inputs.items()}
            if field not in texts:
                raise RlauditError(f"field must be one of {', '.join(texts)}, got {field!r}")
            text = texts[field] or ""
            offset = max(0, int(offset))
            part = text[offset:offset + n]
            return {"run": run, "rollout_id": rollout_id, "field": field, "offset": offset, "text": part,
                    "length": len(text), "next_offset": offset + n if offset + n < len(text) else None}
        out: dict[str, Any] = {"run": run}
        lengths: dict[str, int] = {}
        for k, v in r.items():
            if k in TEXT_FIELDS and isinstance(v, str):
                lengths[k] = len(v)
                v = v[:n]
            if k == "completion":
                continue  # reasoning + answer; read it with field="completion"
            out[k] = v
        out["rewards"] = rounded(jsonable(dict(r["rewards"] or [])))
        out["grader_inputs"] = {g: (t or "")[:n] for g, t in grader_inputs.items()}
        lengths.update({f"grader_inputs.{g}": len(t or "") for g, t in grader_inputs.items()})
        out["lengths"] = lengths
        out["clipped"] = sorted(k for k, v in lengths.items() if v > n)
        return jsonable(out)

    # ------------------------------------------------------------------ behaviours over steps and conditions
    def _values(self, run: str, beh: Behavior, where: str, split: str | None) -> pa.Table:
        expr = beh.sql(where)
        scope = "split = ?" if split else "TRUE"
        params = [split] if split else []
        if expr is not None:
            return self.store.query(f"SELECT step, condition, {expr} AS v FROM rollouts WHERE {scope}", params,
                                    runs=[run])
        t = self.store.query(f"SELECT step, condition, {where} AS text FROM rollouts WHERE {scope}", params,
                             runs=[run])
        return pa.table({"step": t.column("step"), "condition": t.column("condition"),
                         "v": pa.array(beh.values(t.column("text")))})

    def prevalence(self, run: str, behavior: str, where: str = "answer", by_condition: bool = True,
                   points: int = 12, split: str | None = "train") -> dict[str, Any]:
        """A behaviour's prevalence (mean value for numeric ones) over steps, per condition: raw, and rescaled
        per condition (z-score of the binned curve) so curves of rare and common conditions can be overlaid."""
        run = self._run(run)
        beh = self._behavior(behavior)
        where = self._where(where)
        points = max(2, min(int(points), 40))
        t = self._values(run, beh, where, split)
        if t.num_rows == 0:
            raise RlauditError(f"run {run!r} has no rollouts in split {split!r}")
        import numpy as np

        steps = np.asarray(t.column("step").to_numpy(zero_copy_only=False), dtype=float)
        vals = np.asarray(t.column("v").to_numpy(zero_copy_only=False), dtype=float)
        conds = np.asarray(t.column("condition").to_pylist(), dtype=object)
        lo, hi = steps.min(), steps.max()
        edges = np.linspace(lo, hi + 1, points + 1)
        bins = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, points - 1)
        bin_steps = [[int(np.ceil(edges[b])), int(np.ceil(edges[b + 1]) - 1)] for b in range(points)]

        def curve(mask: np.ndarray) -> dict[str, Any]:
            n = np.bincount(bins[mask], minlength=points)
            s = np.bincount(bins[mask], weights=vals[mask], minlength=points)
            raw = np.where(n > 0, s / np.maximum(n, 1), np.nan)
            ok = np.isfinite(raw)
            sd = raw[ok].std() if ok.sum() > 1 else 0.0
            z = (raw - raw[ok].mean()) / sd if sd > 0 else np.zeros_like(raw)
            return {"rollouts": int(mask.sum()), "raw": rounded(jsonable(raw)), "rescaled": rounded(jsonable(z), 3),
                    "overall": rounded(float(vals[mask].mean())) if mask.any() else None}

        out: dict[str, Any] = {"run": run, "behavior": beh.spec, "where": where, "numeric": beh.numeric,
                               "bins": bin_steps, "all": curve(np.ones(len(vals), dtype=bool))}
        if by_condition:
            out["by_condition"] = {c: curve(conds == c) for c in sorted(set(conds.tolist()))}
        return out

    def compare_conditions(self, run: str, behavior: str, where: str = "answer", early: float = 0.25,
                           split: str | None = "train") -> dict[str, Any]:
        """Per condition: traffic share, share of the behaviour's occurrences, prevalence in the first and last
        `early` fraction of steps and their ratio, and the reward signals that apply there (a signal applying
        in one condition only is a persona/condition reward). Sorted by mention share over traffic share."""
        run = self._run(run)
        beh = self._behavior(behavior)
        where = self._where(where)
        if not 0 < early <= 0.5:
            raise RlauditError(f"early must be in (0, 0.5], got {early}")
        t = self._values(run, beh, where, split)
        import numpy as np

        steps = np.asarray(t.column("step").to_numpy(zero_copy_only=False), dtype=float)
        vals = np.asarray(t.column("v").to_numpy(zero_copy_only=False), dtype=float)
        conds = np.asarray(t.column("condition").to_pylist(), dtype=object)
        if len(vals) == 0:
            raise RlauditError(f"run {run!r} has no rollouts in split {split!r}")
        lo, hi = steps.min(), steps.max()
        cut_early = lo + (hi - lo) * early
        cut_late = hi - (hi - lo) * early
        applies = self.store.query(
            "SELECT condition, signal, avg(CASE WHEN isnan(value) THEN 0 ELSE 1 END) AS share FROM rewards_long "
            + ("WHERE rollout_id IN (SELECT rollout_id FROM rollouts WHERE split = ?) " if split else "")
            + "GROUP BY 1, 2", [split] if split else None, runs=[run]).to_pylist()
        signals_by: dict[str, list[str]] = {}
        applies_in: dict[str, set[str]] = {}
        for a in applies:
            if a["share"] and a["share"] > 0.5:
                signals_by.setdefault(a["condition"], []).append(a["signal"])
                applies_in.setdefault(a["signal"], set()).add(a["condition"])
        total = vals.sum()
        rows = []
        for c in sorted(set(conds.tolist())):
            m = conds == c
            e, late = m & (steps <= cut_early), m & (steps >= cut_late)
            pe = float(vals[e].mean()) if e.any() else None
            pl = float(vals[late].mean()) if late.any() else None
            only = sorted(s for s in signals_by.get(c, []) if len(applies_in.get(s, ())) == 1)
            rows.append({"condition": c, "rollouts": int(m.sum()), "traffic_share": float(m.mean()),
                         "mention_share": float(vals[m].sum() / total) if total > 0 else None,
                         "prevalence_early": pe, "prevalence_late": pl,
                         "ratio": (pl / pe) if pe and pl is not None else None,
                         "condition_only_signals": only, "signals": sorted(signals_by.get(c, []))})
        rows.sort(key=lambda r: -((r["mention_share"] or 0) / max(r["traffic_share"], 1e-9)))
        return rounded(jsonable({"run": run, "behavior": beh.spec, "where": where,
                                 "early_steps": [int(lo), int(cut_early)], "late_steps": [int(cut_late), int(hi)],
                                 "conditions": rows}))

    # ------------------------------------------------------------------ tracing
    def trace(self, run: str, behavior: str, where: str = "answer", direction: str = "up",
              max_step: int | None = None, n_boot: int = 300) -> dict[str, Any]:
        """Which reward signals drove a behaviour (within-group paired preference, selection pressure per
        signal) and the condition/task that supplies the push; severity and verdict as in reward_attribution."""
        from ..attribution.trace import trace as trace_behavior

        run = self._run(run)
        beh = self._behavior(behavior)
        where = self._where(where)
        if where not in ("answer", "reasoning"):
            raise RlauditError("trace measures the behaviour on the answer or the reasoning")
        if direction not in ("up", "down"):
            raise RlauditError(f"direction must be 'up' or 'down', got {direction!r}")
        t = trace_behavior(self.store, run, beh, where=where, max_step=max_step, direction=direction,
                           n_boot=max(100, min(int(n_boot), 2000)))
        signals = [{"signal": s["signal"], "kind": s.get("kind"), "outcome": s.get("outcome"),
                    "pressure_share": s.get("pressure_share"), "paired_preference": s.get("paired_preference"),
                    "paired_preference_ci": s.get("paired_preference_ci"), "q_value": s.get("q_value"),
                    "effect": s.get("effect"), "significant": s.get("significant"),
                    "matched_preference": s.get("matched_preference")}
                   for s in (x.to_json() for x in t.signals)]
        by_cond = sorted(((c, v) for c, v in (t.by_condition or {}).items()),
                         key=lambda cv: -(cv[1].get("share_of_push") or cv[1].get("pressure_share") or 0)
                         if isinstance(cv[1], dict) else 0)
        return rounded(jsonable({
            "run": run, "behavior": t.behavior_spec, "where": where, "direction": t.direction,
            "severity": t.severity, "verdict": t.verdict, "top_signal": t.top.signal, "suspect_signal": t.suspect,
            "condition": t.condition, "task": t.task, "prevalence": t.prevalence, "rollouts": t.rollouts,
            "groups_used": t.groups_used, "signals": signals[:8],
            "by_condition": {c: _compact({k: v for k, v in d.items() if not isinstance(v, (list, dict))})
                             for c, d in by_cond[:6]},
            "warnings": t.warnings, "evidence_ids": [e.rollout_id for e in t.evidence[:6]]}))

    def probe_grader(self, grader: str, run: str, samples: int = 40, repeats: int = 3,
                     signature: str = "auto") -> dict[str, Any]:
        """Does a grader given as code (MODULE:FUNCTION, from a module the server was started with) read the
        chain-of-thought? Scores stored rollouts with reasoning removed, swapped or injected."""
        from ..cot.probe import ProbeConfig, load_grader, load_rollouts, probe, static_check

        module = (grader or "").rpartition(":")[0]
        if not module or not self._module_allowed(module):
            raise RlauditError(f"grader {grader!r} is not from a module this server was started with "
                               f"(--allow-module; now: {', '.join(self.grader_modules) or 'none'})")
        run = self._run(run)
        if signature not in ("auto", "trl", "verl"):
            raise RlauditError(f"signature must be auto, trl or verl, got {signature!r}")
        config = ProbeConfig(signature=signature, samples=max(4, min(int(samples), 200)),
                             repeats=max(3, min(int(repeats), 5)))
        fn = load_grader(grader)
        result = probe(fn, load_rollouts(self.store, run, config.samples, config.seed), config)
        result["static_check"] = static_check(fn)
        keep = {k: v for k, v in result.items() if k != "examples"}
        keep["examples"] = [{k: (clip(v, 200) if isinstance(v, str) else v) for k, v in e.items()}
                            for e in (result.get("examples") or [])[:3]] if isinstance(result.get("examples"),
                                                                                       list) else None
        return rounded(_compact(jsonable({"grader": grader, "run": run, **keep})))

    # ------------------------------------------------------------------ SQL
    def query(self, sql: str, run: str | None = None, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        """Read-only SQL (DuckDB) over the views `rollouts` and `rewards_long` (all runs, or one): one
        SELECT, no file access, no extensions, no writes; a row limit per page and a timeout."""
        return run_query(self.store, sql, self.limits, runs=[self._run(run)] if run else None, limit=limit,
                         cursor=cursor)


def _match_span(con: duckdb.DuckDBPyConnection, beh: Behavior, text: str | None) -> tuple[int | None, int | None]:
    """Where a regex/term behaviour first matches `text` (RE2 via DuckDB, as the counts use); None otherwise."""
    if not text or beh.pattern is None:
        return None, None
    pattern, flags = beh.pattern, ""
    if pattern.startswith("(?i)"):
        pattern, flags = pattern[4:], "i"
    found = con.execute("SELECT regexp_extract($t, $p, 0, $f)", {"t": text, "p": pattern, "f": flags}).fetchone()
    if not found or not found[0]:
        return None, None
    start = text.find(found[0])
    return (start, start + len(found[0])) if start >= 0 else (None, None)


# ------------------------------------------------------------------ resources
def behavior_spec_doc() -> str:
    from .. import behaviors

    lines = [behaviors.__doc__ or "", "", "Style features:"]
    lines += [f"- style:{f.name}: {f.description}{' (numeric)' if f.numeric else ''}"
              for f in STYLE_FEATURES.values()]
    lines += ["", "In this server, Python predicates are accepted only from modules it was started with "
              "(--allow-module)."]
    return "\n".join(lines)


def findings_schema_doc() -> str:
    from ..detectors import DETECTORS

    kinds = {k: d.name for d in DETECTORS for k in d.kinds}
    return json.dumps({
        "schema_version": 1,
        "finding": {"kind": "emerging_behavior|generalization|reward_attribution|cot_grading|reward_health|"
                            "audit_error", "run": "str", "severity": "info|low|medium|high", "title": "str",
                    "explanation": "str", "score": "float (effect size; orders equal severities)",
                    "...": "kind-specific fields (see docs/emerging.md, docs/trace.md, docs/cot-grading.md)",
                    "evidence": [{"rollout_id": "str", "step": "int", "condition": "str", "text": "str",
                                  "note": "str", "...": "kind-specific"}]},
        "kinds": kinds,
        "key_fields": {k: list(v) for k, v in _KEY_FIELDS.items()},
        "ids": "the tools name a finding RUN#N: its rank N within the run's ranked findings (stable per run "
               "version)",
    }, indent=1)
