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
from typing import TYPE_CHECKING, Any

from .conditions import ConditionRule
from .findings import Finding, dumps, jsonable, rank
from .readers.base import ReadOptions
from .remedies import add_remedies
from .store import IngestReport, RunSummary, Store, atomic_write_text

if TYPE_CHECKING:  # imported where the detectors run: reading a findings JSON (`AuditResult.read_json`, the
    # `findings` and `report` commands) does not need every detector module (~0.4 s to import, with pandas)
    from .detectors import AuditConfig

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
        atomic_write_text(Path(path), dumps(jsonable(self.to_json())))

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
        check_source(store, source, name, format)
        is_new = not store.has_run(label)
        cb = (lambda done, total, rows, _l=label: progress(_l, done, total, rows)) if progress else None
        report = store.ingest(source, run=name, format=format, options=options, conditions=conditions,
                              progress=cb)
        _check_nothing_readable(store, source, report, is_new, options)
        reports.append(report)
    return reports


def check_source(store: Store, source: str | Path, run: str | None = None, format: str | None = None) -> None:
    """Refuse, before reading anything, a source that would be stored wrongly without a word.

    - a directory holding rollouts of two trainer layouts (say TRL and verl): detection would read one and
      ignore the other, so the user chooses with `--format` or gives each sub-directory as its own source;
    - the same rollout files as another stored run (TRL's `completions/` after its output dir): a second run
      of the same data would double every finding of a fleet audit.
    """
    from .errors import RlauditError
    from .readers import READERS, get_reader

    path = Path(source).resolve()
    if not path.exists():
        return  # store.ingest says so
    if format is None and path.is_dir():
        seen: set[Path] = set()
        layouts: list[tuple[str, int]] = []
        for cls in READERS:
            if cls.name == "canonical" or not cls.detect(path):  # canonical matches any table: never a 2nd layout
                continue
            files = {f.path.resolve() for f in cls().files(path)}
            if files - seen:
                layouts.append((cls.name, len(files - seen)))
            seen |= files
        if len(layouts) > 1:
            listed = " and ".join(f"{name} ({n} file{'s' * (n != 1)})" for name, n in layouts)
            raise RlauditError(f"{path} holds rollouts in {len(layouts)} log layouts: {listed}; pass --format "
                               f"{layouts[0][0]} (or another) to read one of them, or give each layout's "
                               "sub-directory as its own SOURCE")
    target = run or path.name
    if store.has_run(target):
        return  # re-ingesting a run (incremental): its own files overlap, as they should
    try:
        reader = get_reader(format) if format else None
        if reader is None:
            from .readers import resolve_reader

            reader = resolve_reader(path)
        files = {f.path.resolve() for f in reader.files(path)}
    except RlauditError:
        return  # store.ingest reports the layout problem
    for other in store.runs():
        m = store.manifest(other)
        root = Path(m.get("source", ""))
        if not root.is_absolute():
            continue
        stored = {(base / rel).resolve() for rel in m.get("files", {})
                  for base in ((root, root.parent) if root.is_file() else (root,))}
        same = files & stored
        if same:
            raise RlauditError(
                f"{path} holds the same rollout files as run {other!r} in {store.root} (ingested from {root}; "
                f"{len(same)} of {len(files)} file(s) in common): it is the same data, not a new run. Use run "
                f"{other!r} (`--run {other}` with its source {root}, or name {other!r} where a command takes "
                f"a run), or delete {store.run_dir(other)} to store it again under another name")


def _check_nothing_readable(store: Store, source: str | Path, report: IngestReport, is_new: bool,
                            options: ReadOptions | None) -> None:
    """A source of which no record could be read is an error, not an empty run that audits to "No findings".

    The usual cause is a generic JSONL/Parquet table whose field names are not rlaudit's: the error names the
    fields found and how to map them. A run this ingest created is removed again, so no 0-row run is left.
    """
    from .errors import RlauditError

    if report.rows_added or not report.bad_records or store.summary(report.run).rows:
        return
    reasons = _reasons_where(report)
    fields = _fields_of(store, report.run)
    if is_new:
        store.delete(report.run)
    hint = ""
    if report.format == "canonical" and not (options and options.columns):
        hint = (" Map them onto rlaudit's columns with --columns, e.g. --columns step=FIELD,prompt=FIELD,"
                "completion=FIELD (or --columns-file; `rlaudit schema` lists the columns).")
    found = f" The records have the fields: {', '.join(fields)}." if fields else ""
    kept = "" if is_new else f" Run {report.run!r} keeps what it held."
    raise RlauditError(f"{source}: none of the {report.bad_records:,} record(s) could be read as {report.format} "
                       f"({'; '.join(reasons)}).{found}{hint}{kept} Nothing was stored.")


def _reasons_where(report: IngestReport) -> list[str]:
    """Each distinct reason of the ingest's first quarantined records (`bad_examples`, "file:line: reason"),
    with where it was met: the file, or the file and line, of its first records (a directory of torn Parquet
    files names them, not only how many), and how many more records there were."""
    where: dict[str, list[str]] = {}
    for e in report.bad_examples:
        location, sep, reason = e.partition(": ")
        where.setdefault(reason if sep else e, []).extend([location] if sep else [])
    shown = sum(len(v) for v in where.values())
    more = f"; and {report.bad_records - shown:,} more record(s)" if report.bad_records > shown else ""
    out = [f"{reason} [{', '.join(locations)}]" if locations else reason for reason, locations in sorted(where.items())]
    return [*out[:-1], out[-1] + more] if out else out


def _fields_of(store: Store, run: str) -> list[str]:
    """Top-level field names of the first quarantined record's file (for the error message)."""
    bad = store.quarantined(run)
    if not bad:
        return []
    m = store.manifest(run)
    root = Path(m.get("source", ""))
    path = (root.parent if root.is_file() else root) / bad[0].file
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        from .readers.jsonl import first_record_keys

        return sorted(first_record_keys(path))
    except Exception:  # noqa: BLE001 - only a hint in an error message
        return []


def audit_store(store: Store, runs: Sequence[str] | None = None, config: AuditConfig | None = None,
                on_run: Callable[[str], None] | None = None,
                progress: Callable[[str, str, int, int], None] | None = None) -> AuditResult:
    """Run every detector on the given runs of a store (default: all runs).

    `progress(run, detector, done, total)` reports each detector as it starts (see `run_detectors`).
    """
    from .detectors import run_detectors
    from .memory import prepare

    prepare()  # fit malloc to a memory budget before the detectors' threads start (rlaudit.memory)
    runs = list(runs) if runs is not None else store.runs()
    findings: list[Finding] = []
    with store.reading(runs):  # one version per run for every detector, whatever ingests commit meanwhile
        for run in runs:
            if on_run:
                on_run(run)
            cb = (lambda name, done, total, _r=run: progress(_r, name, done, total)) if progress else None
            findings.extend(run_detectors(store, run, config, progress=cb))
        summaries = [store.summary(r) for r in runs]
    add_remedies(findings)  # what to do about each finding, keyed by kind (detectors only say what they found)
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
    from .kernels import import_for_ingest
    from .memory import prepare

    prepare()  # before the ingest's threads start (rlaudit.memory); `audit_store` calls it again, harmlessly
    import_for_ingest()  # its compiled kernels, where numba is used (the detectors import it anyway)
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
