"""The fleet page: one row per run (status, rows, last step, findings by severity, the top finding with a
sparkline), each linking to the run's own rlaudit report.

The page is small and self-contained (inline CSS, inline SVG sparklines, no script, a Content-Security-Policy
that forbids any request), so it stays light with hundreds of runs. Each run's report is the regular audit
report (`rlaudit.report.write_report`) of its open findings, written to `<stem>_runs/<run>.html` next to the
page, and rewritten only when the run's findings changed. Text from runs and findings is clipped and escaped
(`rlaudit.report.sanitize`, Jinja autoescape).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from ..findings import SEVERITIES, Finding, rank
from ..report.sanitize import short
from ..report.views import KIND_LABELS
from ..store import atomic_write_text

if TYPE_CHECKING:
    from .scheduler import FleetScanner

log = logging.getLogger("rlaudit.fleet")

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>{{ title }}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em} .sub{color:#666;margin-bottom:1em}
table{border-collapse:collapse;width:100%} th,td{padding:.35em .6em;border-bottom:1px solid #e3e3e3;
text-align:left;vertical-align:middle} th{background:#f6f6f6;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.sev{display:inline-block;min-width:1.6em;padding:0 .35em;margin-right:.2em;border-radius:.6em;text-align:center;
font-size:.85em;color:#fff} .sev-high{background:#c62828} .sev-medium{background:#ef8f00}
.sev-low{background:#1e88e5} .sev-info{background:#9e9e9e} .zero{opacity:.18}
.st-error{color:#c62828;font-weight:600} .st-ok{color:#2e7d32} .st-new{color:#777}
.st-missing{color:#8d6e63;font-style:italic} tr.gone td{opacity:.75}
.err{color:#c62828;font-size:.85em} .title{max-width:40em} .muted{color:#777} .nw{white-space:nowrap}
</style></head><body>
<h1>{{ title }}</h1>
<div class="sub">{{ n_runs }} run(s) under {{ roots }} &middot; {{ total_rows }} rollouts &middot; findings:
{% for s, n in totals %}<span class="sev sev-{{ s }}{{ ' zero' if not n }}">{{ n }}</span>{{ s }} {% endfor %}
&middot; pass {{ passes }} &middot; generated {{ generated }} by rlaudit {{ version }}</div>
<table>
<thead><tr><th>run</th><th>format</th><th>status</th><th>rows</th><th>last step</th><th>last audit</th>
<th>findings</th><th>top finding</th><th></th></tr></thead>
<tbody>
{% for r in rows %}<tr id="run-{{ r.name }}"{% if r.status == "missing" %} class="gone"{% endif %}>
<td class="nw">{% if r.link %}<a href="{{ r.link }}">{{ r.name }}</a>{% else %}{{ r.name }}{% endif %}
{% if r.origin %}<div class="muted">{{ r.origin }}</div>{% endif %}</td>
<td>{{ r.format }}</td><td class="st-{{ r.status }}">{{ r.status }}{% if r.missing_since %}<div class="muted">since {{ r.missing_since }}</div>{% endif %}</td>
<td class="num">{{ r.rows }}</td><td class="num">{{ r.last_step }}</td><td class="nw">{{ r.last_audit }}</td>
<td class="nw">{% for s, n in r.sev %}<span class="sev sev-{{ s }}{{ ' zero' if not n }}" title="{{ s }}">{{ n }}</span>{% endfor %}</td>
<td class="title">{% if r.top %}<span class="sev sev-{{ r.top.severity }}">{{ r.top.severity[0]|upper }}</span>
{{ r.top.kind_label }}: {{ r.top.title }}{% endif %}{% if r.error %}<div class="err">{{ r.error }}</div>{% endif %}</td>
<td title="{{ r.spark_of }}">{{ r.spark }}</td></tr>
{% endfor %}</tbody></table>
</body></html>
"""


def _env() -> jinja2.Environment:
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def sparkline_svg(spark: Any, width: int = 120, height: int = 28) -> str:
    """An inline SVG polyline of [[steps], [values]] (empty string when there is nothing to draw)."""
    from markupsafe import Markup

    if not spark or len(spark) != 2:
        return ""
    pts = [(float(s), float(v)) for s, v in zip(*spark) if v is not None and s is not None]
    if len(pts) < 2:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    dx, dy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    coords = " ".join(f"{2 + (x - x0) / dx * (width - 4):.1f},{height - 2 - (y - y0) / dy * (height - 4):.1f}"
                      for x, y in pts)
    return Markup(f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
                  f'<polyline fill="none" stroke="#c62828" stroke-width="1.5" points="{coords}"/></svg>')


def _ago(t: float) -> str:
    if not t:
        return "never"
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_report_path(page: Path, run: str) -> Path:
    return page.parent / f"{page.stem}_runs" / f"{run}.html"


def write_run_report(scanner: FleetScanner, run: str, path: Path) -> None:
    """The regular audit report of one run's open findings."""
    from ..audit import AuditResult
    from ..remedies import add_remedies
    from ..report import write_report
    from ..store import Store

    store = Store(scanner.store_root)
    findings = rank([Finding.from_json(f) for f in scanner.state.run_detail(run).get("findings", [])])
    add_remedies(findings)
    result = AuditResult(runs=[store.summary(run)] if store.has_run(run) else [], findings=findings)
    write_report(store, result, path, title=f"rlaudit: {run}")


def write_fleet_report(scanner: FleetScanner, page: str | Path) -> Path:
    """Write the fleet page (and the run reports that are missing or out of date); returns the page path."""
    from .. import __version__

    page = Path(page)
    page.parent.mkdir(parents=True, exist_ok=True)
    state = scanner.state
    base = scanner.config.report_url
    rows = []
    totals = dict.fromkeys(SEVERITIES, 0)
    for name, rs in sorted(state.runs.items(), key=lambda kv: _order(kv[1])):
        link = None
        rpath = run_report_path(page, name)
        # Run reports only for runs with open findings: a clean run's row says all there is, and each report
        # costs a second or two and ~5 MB (plotly inlined).
        if scanner.config.run_reports and rs.status in ("ok", "missing") and any(rs.findings.values()):
            detail_path = state.run_path(name)
            stale = not rpath.is_file() or (detail_path.is_file() and
                                            detail_path.stat().st_mtime > rpath.stat().st_mtime)
            if not rpath.is_file() or (stale and _changed(state.run_detail(name))):
                try:
                    write_run_report(scanner, name, rpath)
                except Exception as exc:  # noqa: BLE001 - one broken run report never hides the fleet
                    log.error("fleet: report of run %s failed: %s", name, exc)
        if rpath.is_file():
            rel = os.path.relpath(rpath, page.parent)
            link = f"{base.rstrip('/')}/{rel}" if base else rel
        for s, n in rs.findings.items():
            totals[s] = totals.get(s, 0) + n
        top = None
        if rs.top:
            top = {"severity": rs.top["severity"], "kind_label": KIND_LABELS.get(rs.top["kind"], rs.top["kind"]),
                   "title": short(rs.top["title"], 200)}
        rows.append({"name": short(name), "origin": short(rs.origin, 200), "format": rs.format, "status": rs.status,
                     "rows": f"{rs.rows:,}", "last_step": "" if rs.last_step is None else f"{rs.last_step:,}",
                     "last_audit": _ago(rs.last_audit), "sev": [(s, rs.findings.get(s, 0)) for s in
                                                                reversed(SEVERITIES)],
                     "top": top, "error": short(rs.error, 300), "spark": sparkline_svg(rs.top and rs.top.get("spark")),
                     "spark_of": short((rs.top or {}).get("spark_of", ""), 200),
                     "missing_since": _ago(rs.missing_since) if rs.missing_since else "", "link": link})
    html = _env().from_string(_TEMPLATE).render(
        title="rlaudit fleet", n_runs=len(rows), roots=", ".join(scanner.roots),
        total_rows=f"{sum(r.rows for r in state.runs.values()):,}",
        totals=[(s, totals.get(s, 0)) for s in reversed(SEVERITIES)], passes=state.passes + 1,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), version=__version__,
        rows=rows)
    atomic_write_text(page, html)
    return page


def _changed(detail: dict[str, Any]) -> bool:
    return bool(detail.get("changed", True))


def _order(rs: Any) -> tuple:
    """Worst first: errors, then by the most severe open finding, then name; missing runs (source gone) last."""
    worst = max((SEVERITIES.index(s) for s, n in rs.findings.items() if n), default=-1)
    return (rs.status == "missing", rs.status != "error", -worst, rs.name)


def status_rows(state: Any) -> list[dict[str, Any]]:
    """What `rlaudit fleet status` shows, per run."""
    out = []
    for name, rs in sorted(state.runs.items()):
        out.append({"run": name, "format": rs.format, "status": rs.status, "rows": rs.rows,
                    "last_step": rs.last_step, "last_audit": rs.last_audit, "last_heavy_step": rs.last_heavy_step,
                    "pending": rs.pending, "bad_records": rs.bad_records, "missing_since": rs.missing_since or None,
                    "reappeared": rs.reappeared, "failures": rs.failures, "last_failure": rs.last_failure,
                    "findings": {s: rs.findings.get(s, 0) for s in reversed(SEVERITIES)},
                    "top": (rs.top or {}).get("title"), "error": rs.error, "source": rs.source,
                    "origin": rs.origin})
    return out


__all__ = ["write_fleet_report", "sparkline_svg", "status_rows", "run_report_path"]
