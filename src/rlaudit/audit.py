"""The audit: ingest sources, run every detector on every run, and write findings. The Python API's core.

    >>> from rlaudit import audit
    >>> result = audit(["runs/grpo-0412"], json_path="findings.json", report_path="audit.html")
    >>> [f.title for f in result.findings if f.severity == "high"]

The CLI, the report, live monitoring and the benchmark all call these functions; none of them re-implements
any analysis.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conditions import ConditionRule
from .detectors import AuditConfig, run_detectors
from .findings import Finding, jsonable, rank
from .readers.base import ReadOptions
from .store import IngestReport, RunSummary, Store, atomic_write_text

FINDINGS_SCHEMA_VERSION = 1


@dataclass
class AuditResult:
    """Runs audited and their findings, ranked most severe first."""

    runs: list[RunSummary]
    findings: list[Finding]
    ingests: list[IngestReport] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": FINDINGS_SCHEMA_VERSION,
                "runs": [r.to_json() for r in self.runs],
                "findings": [f.to_json() for f in self.findings],
                "ingest": [i.to_json() for i in self.ingests]}

    def write_json(self, path: str | Path) -> None:
        # ASCII escapes: model text may hold lone surrogates, which UTF-8 cannot encode but JSON escapes can.
        atomic_write_text(Path(path), json.dumps(jsonable(self.to_json()), indent=2, ensure_ascii=True))

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @classmethod
    def read_json(cls, path: str | Path) -> AuditResult:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
        runs = [RunSummary(run=r["run"], format=r["format"], rows=r["rows"],
                           steps=tuple(r["steps"]) if r.get("steps") else None, conditions=r["conditions"],
                           signals=r["signals"], graders=r.get("graders", []), source=r.get("source", ""),
                           notes=r.get("notes", []))
                for r in obj["runs"]]
        return cls(runs=runs, findings=[Finding.from_json(f) for f in obj["findings"]])


def ingest_sources(
    store: Store,
    sources: Sequence[str | Path],
    run_names: Sequence[str] | None = None,
    format: str | None = None,
    options: ReadOptions | None = None,
    conditions: list[ConditionRule] | None = None,
    progress: Callable[[str, int, int, int], None] | None = None,
) -> list[IngestReport]:
    """Ingest each source into the store. `progress(run, files_done, files_total, rows)` after each file."""
    from .errors import RlauditError

    if run_names and len(run_names) != len(sources):
        raise RlauditError(f"--run was given {len(run_names)} time(s) for {len(sources)} source(s); give one "
                           "--run per source, in order")
    reports = []
    for i, source in enumerate(sources):
        name = run_names[i] if run_names else None
        label = name or Path(source).resolve().name
        cb = (lambda done, total, rows, _l=label: progress(_l, done, total, rows)) if progress else None
        reports.append(store.ingest(source, run=name, format=format, options=options, conditions=conditions,
                                    progress=cb))
    return reports


def audit_store(store: Store, runs: Sequence[str] | None = None, config: AuditConfig | None = None,
                on_run: Callable[[str], None] | None = None,
                progress: Callable[[str, str, int, int], None] | None = None) -> AuditResult:
    """Run every detector on the given runs of a store (default: all runs).

    `progress(run, detector, done, total)` reports each detector as it starts (see `run_detectors`).
    """
    runs = list(runs) if runs is not None else store.runs()
    findings: list[Finding] = []
    with store.reading(runs):  # one version per run for every detector, whatever ingests commit meanwhile
        for run in runs:
            if on_run:
                on_run(run)
            cb = (lambda name, done, total, _r=run: progress(_r, name, done, total)) if progress else None
            findings.extend(run_detectors(store, run, config, progress=cb))
        summaries = [store.summary(r) for r in runs]
    return AuditResult(runs=summaries, findings=rank(findings))


def audit(
    sources: Sequence[str | Path],
    store: Store | str | Path = ".rlaudit",
    run_names: Sequence[str] | None = None,
    format: str | None = None,
    options: ReadOptions | None = None,
    conditions: list[ConditionRule] | None = None,
    config: AuditConfig | None = None,
    json_path: str | Path | None = None,
    report_path: str | Path | None = None,
) -> AuditResult:
    """Ingest `sources`, audit those runs, and write findings JSON and an HTML report where asked."""
    store = store if isinstance(store, Store) else Store(store)
    ingests = ingest_sources(store, sources, run_names, format, options, conditions)
    result = audit_store(store, [r.run for r in ingests], config)
    result.ingests = ingests
    write_outputs(store, result, json_path, report_path)
    return result


def write_outputs(store: Store, result: AuditResult, json_path: str | Path | None,
                  report_path: str | Path | None) -> None:
    if json_path:
        result.write_json(json_path)
    if report_path:
        from .report import write_report

        write_report(store, result, report_path)
