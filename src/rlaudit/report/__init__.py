"""The audit report: one self-contained HTML file that a reviewer reads at a glance.

    >>> from rlaudit.report import write_report
    >>> write_report(store, result, "audit.html")

The file inlines plotly.js once and everything it shows (no network requests: a Content-Security-Policy in the
page forbids them, and any script but the report's own two). It holds a runs table with reward components over
steps, then the findings ranked by severity, each with a plain-language explanation, its key facts, its figures
(prevalence per condition raw and rescaled, reward attribution, CoT exposure...) and sampled evidence rollouts,
with filters by run, kind and severity.

Model text is untrusted: it is cleaned (`sanitize.clean_text`), clipped (`sanitize.Clip`), and escaped by Jinja's
autoescape; data for the scripts is embedded as escaped JSON (`sanitize.script_json`). Size is bounded: evidence
is capped per finding, curves are aggregated to at most `max_points` step buckets, texts share a budget.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import importlib.resources
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.bccache
from markupsafe import Markup

from ..findings import SEVERITIES, SEVERITY_RANK
from ..store import atomic_write_text
from . import data as report_data
from . import resample as resample_report
from .figures import MAX_POINTS, figures_for, reward_components_figure, signal_figure
from .sanitize import Clip, clean_text, script_json, short
from .views import KIND_LABELS, finding_view, shown_evidence

if TYPE_CHECKING:
    from ..audit import AuditResult
    from ..store import Store

_HERE = Path(__file__).parent


@dataclass
class ReportLimits:
    """Bounds that keep a report readable and small whatever the run size."""

    max_evidence: int = 5  # evidence rollouts shown per finding
    max_detailed: int = 200  # findings shown in full; the rest are listed in the overview table
    max_points: int = MAX_POINTS  # points per curve
    text_cap: int = 20_000  # characters per text
    text_budget: int = 3_000_000  # characters of model text in the whole report


def _plotly_file(*path: str) -> str:
    """A file plotly ships in its package data, read as plotly itself reads it (`pkgutil.get_data`:
    `plotly.offline.get_plotlyjs`, the templates of `plotly.io`), without importing those modules: the report
    needs the text, not plotly's validated objects (~0.2 CPU s a report, more where modules are not kept compiled;
    tests/report/test_figures.py checks both texts against plotly's own)."""
    return importlib.resources.files("plotly").joinpath("package_data", *path).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    js = _plotly_file("plotly.min.js")
    if "</script" in js.lower():  # would end the inline script early; never true for plotly's bundle
        raise RuntimeError("plotly.js bundle contains '</script'; cannot inline it safely")
    return js


@lru_cache(maxsize=1)
def _plotly_template() -> dict[str, Any]:
    """Plotly's "plotly_white" template as a dict (equal to `plotly.io`'s `to_plotly_json()` of it)."""
    return json.loads(_plotly_file("templates", "plotly_white.json"))


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    """The templates' environment, made once per process, so that each template is compiled once (its cache of
    loaded templates); their compiled code is also kept across processes (`_TemplateCache`): compiling the
    report's templates was ~0.2 of the first report's ~0.6 CPU s in a process (`rlaudit audit`, a live report)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             bytecode_cache=_TemplateCache.made())
    env.filters["num"] = lambda x: f"{x:,}" if isinstance(x, int) else clean_text(x)
    return env


class _TemplateCache(jinja2.FileSystemBytecodeCache):
    """Jinja's cache of compiled templates, in its per-user directory under the system's temporary directory
    (made private to the user, its owner checked), each entry keyed by the template's name and checked against a
    hash of its source and Jinja's and Python's versions. A cache is an optimisation, never a reason for a report
    to fail: a directory that cannot be made means no cache, an entry that cannot be read is compiled again, one
    that cannot be written is not kept."""

    @classmethod
    def made(cls) -> _TemplateCache | None:
        try:
            return cls()
        except (OSError, RuntimeError):  # no usable temporary directory (jinja raises RuntimeError)
            return None

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except Exception:  # noqa: BLE001 - a damaged entry: compile the template again
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def _csp_hash(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode() + "'"


def build_report_html(store: Store | None, result: AuditResult, *, title: str | None = None,
                      limits: ReportLimits | None = None, now: _dt.datetime | None = None,
                      resample: Sequence[str | Path] | None = None, resample_baseline: str = "original") -> str:
    """The report as an HTML string. `store` may be None (or lack some runs): then reward curves and the
    stored rollouts that evidence cites are left out, and the evidence shows what the findings carry.

    `resample`: results directories of `rlaudit resample` shown in a resampling section (None: those kept
    beside the store, `STORE/resample/*/`; an empty list: none)."""
    limits = limits or ReportLimits()
    runs = [r.run for r in result.runs]
    finding_runs = sorted({f.run for f in result.findings} - set(runs))
    clip = Clip(cap=limits.text_cap, budget=limits.text_budget)

    figures: list[dict[str, Any]] = []
    with report_data.RunStats(store) if store is not None else contextlib.nullcontext() as stats:
        curves = report_data.reward_curves(store, runs, limits.max_points, stats)
        counts = report_data.condition_counts(store, runs, stats)
    run_rows = []
    for i, r in enumerate(result.runs):
        fig = reward_components_figure(f"run-{i}-rewards", r.run, curves.get(r.run, {}), limits.max_points)
        if fig:
            figures.append(fig)
        sev = Counter(f.severity for f in result.findings if f.run == r.run)
        cond_counts = counts.get(r.run, {})
        total = sum(cond_counts.values()) or 1
        run_rows.append({
            "run": short(r.run), "format": short(r.format, 60), "rows": r.rows,
            "steps": f"{r.steps[0]:,} to {r.steps[1]:,}" if r.steps else "none",
            "conditions": [(short(c, 100), f"{100 * cond_counts[c] / total:.1f}%" if c in cond_counts else "")
                           for c in r.conditions[:30]],
            "more_conditions": max(0, len(r.conditions) - 30),
            "signals": [short(s, 100) for s in r.signals[:50]], "graders": [short(g, 100) for g in r.graders[:50]],
            "severity": [(s, sev[s]) for s in reversed(SEVERITIES) if sev[s]],
            "figure": fig["id"] if fig else None, "in_store": r.run in curves or r.run in counts,
            "notes": [short(n, 600) for n in r.notes[:20]],
        })

    detailed = result.findings[: limits.max_detailed]
    cited: dict[str, list[Any]] = {}
    for f in detailed:
        cited.setdefault(f.run, []).extend(f.evidence[: shown_evidence(f, limits.max_evidence)])
    rows = {}
    for run, evidence in cited.items():
        steps = [e.step for e in evidence]
        known = all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
        rows[run] = report_data.fetch_rollouts(store, run, [e.rollout_id for e in evidence], limits.text_cap,
                                               steps=steps if known else None)
    views = []
    for i, f in enumerate(detailed):
        figs = figures_for(f, f"f{i}", limits.max_points)
        signal = f.get("signal")
        if f.kind == "reward_health" and not figs and isinstance(signal, str) and signal in curves.get(f.run, {}):
            figs = [signal_figure(f"f{i}-signal", signal, curves[f.run][signal], f.fields, limits.max_points)]
        figures.extend(figs)
        views.append(finding_view(i, f, [g["id"] for g in figs], rows.get(f.run, {}), clip, limits.max_evidence))
    overview = [{"index": i, "anchor": f"finding-{i}" if i < len(detailed) else None, "severity": f.severity,
                 "kind": short(f.kind, 100), "kind_label": KIND_LABELS.get(f.kind, short(f.kind, 100)),
                 "run": short(f.run), "title": short(f.title, 300)}
                for i, f in enumerate(result.findings)]

    resample_ctx = None
    dirs = list(resample) if resample is not None else resample_report.discover(getattr(store, "root", None))
    if dirs:
        resample_ctx, resample_figs = resample_report.section(dirs, resample_baseline, clip)
        figures.extend(resample_figs)

    app_js, plotly_js, csp = _scripts()
    severity_counts = Counter(f.severity for f in result.findings)
    kinds = sorted({f.kind for f in result.findings})
    now = now or _dt.datetime.now(_dt.timezone.utc)
    from .. import __version__ as version

    html = _env().get_template("report.html.j2").render(
        title=short(title or _default_title(runs), 300), generated=now.strftime("%Y-%m-%d %H:%M UTC"),
        version=version, csp=csp, runs=run_rows, missing_runs=[short(r) for r in finding_runs],
        findings=views, overview=overview, n_findings=len(result.findings), n_detailed=len(detailed),
        severity_counts=[(s, severity_counts[s]) for s in reversed(SEVERITIES)],
        severities=list(reversed(SEVERITIES)), severity_rank=SEVERITY_RANK,
        kinds=[(short(k, 100), KIND_LABELS.get(k, short(k, 100))) for k in kinds],
        run_names=sorted({short(r) for r in runs + finding_runs}), limits=limits,
        plotly_js=Markup(plotly_js), app_js=Markup(app_js),
        figures_json=Markup(script_json(figures)), template_json=Markup(script_json(_plotly_template())),
        resample=resample_ctx,
    )
    return html


def _scripts() -> tuple[str, str, str]:
    """(report.js, plotly.js, the Content-Security-Policy allowing exactly those two scripts)."""
    app_js = (_HERE / "templates" / "report.js").read_text(encoding="utf-8")
    plotly_js = _plotly_js()
    csp = (f"default-src 'none'; script-src {_csp_hash(plotly_js)} {_csp_hash(app_js)}; "
           "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; base-uri 'none'; form-action 'none'")
    return app_js, plotly_js, csp


def build_resample_html(dirs: Sequence[str | Path], baseline: str = "original", *, title: str | None = None,
                        limits: ReportLimits | None = None, now: _dt.datetime | None = None) -> str:
    """A page of its own for resampling results (`rlaudit resample compare DIR... --report FILE.html`): the
    same look, scripts and safety as the audit report, with only the resampling section."""
    limits = limits or ReportLimits()
    clip = Clip(cap=limits.text_cap, budget=limits.text_budget)
    ctx, figures = resample_report.section(dirs, baseline, clip)
    app_js, plotly_js, csp = _scripts()
    now = now or _dt.datetime.now(_dt.timezone.utc)
    from .. import __version__ as version

    return _env().get_template("resample.html.j2").render(
        title=short(title or f"rlaudit resampling: {', '.join(Path(d).name for d in dirs)}", 300),
        generated=now.strftime("%Y-%m-%d %H:%M UTC"), version=version, csp=csp, rs=ctx,
        text_cap=limits.text_cap, plotly_js=Markup(plotly_js), app_js=Markup(app_js),
        figures_json=Markup(script_json(figures)), template_json=Markup(script_json(_plotly_template())))


def write_resample_report(dirs: Sequence[str | Path], path: str | Path, baseline: str = "original",
                          **kwargs: Any) -> Path:
    """Write the resampling page for `dirs` to `path` (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, build_resample_html(dirs, baseline, **kwargs))
    return path


def _default_title(runs: list[str]) -> str:
    if len(runs) == 1:
        return f"rlaudit report: {runs[0]}"
    return f"rlaudit report: {len(runs)} runs"


def write_report(store: Store | None, result: AuditResult, path: str | Path, **kwargs: Any) -> Path:
    """Write the report for `result` to `path` (atomically) and return the path."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, build_report_html(store, result, **kwargs))
    return path


__all__ = ["ReportLimits", "build_report_html", "build_resample_html", "write_report", "write_resample_report"]
