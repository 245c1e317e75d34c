"""`rlaudit fleet scan|status`: the command-line front end of the fleet scanner (registered by `rlaudit.cli`)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import RlauditError

fleet_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                        context_settings={"help_option_names": ["-h", "--help"]},
                        help="Scan every run under some roots, continuously, and alert once per finding.")

StoreOpt = Annotated[Path, typer.Option("--store", help="Store directory (the fleet state lives in "
                                        "STORE/fleet/).", envvar="RLAUDIT_STORE")]
SharedStoreOpt = Annotated[str, typer.Option("--store", help="Store directory (the fleet state lives in "
                                             "STORE/fleet/), or s3://bucket/prefix: a store published on S3, "
                                             "worked on in --store-cache.", envvar="RLAUDIT_STORE")]
CacheOpt = Annotated[Optional[Path], typer.Option("--store-cache", help="Local working copy of an s3:// "
                                                  "store (default: ~/.cache/rlaudit/s3/...).")]


def _open_store(store: str, cache: Optional[Path], endpoint: Optional[str]):  # noqa: ANN202
    """(local store directory, S3Store or None): an s3:// store is pulled into its cache first."""
    from .s3store import S3Store, is_s3

    if not is_s3(store):
        if cache is not None:
            raise RlauditError("--store-cache is for an s3:// --store only")
        return Path(store), None
    remote = S3Store(store, cache, endpoint)
    got = remote.pull()
    logging.getLogger("rlaudit.fleet").info("fleet: pulled %d run(s), %d part(s) (%d bytes) from %s into %s",
                                            got.runs, got.parts, got.bytes, remote.uri, remote.cache)
    return remote.cache, remote


def _consoles():  # noqa: ANN202
    from ..cli import SEVERITY_STYLE, console, out

    return console, out, SEVERITY_STYLE


@fleet_app.command("scan")
def scan_cmd(
    roots: Annotated[list[str], typer.Argument(help="Directories holding runs (any depth), or object-store "
                                               "prefixes (s3://bucket/runs/).")],
    store: SharedStoreOpt = ".rlaudit",
    store_cache: CacheOpt = None,
    engine: Annotated[str, typer.Option("--engine", help="local (worker processes on this machine), ray "
                                        "(one Ray task per run; needs the ray extra) or inline.")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (auto, "
                                                   "ray://host:10001); default: start a local Ray.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Worker processes (local) or CPUs of "
                                                   "the local Ray (default: the cores this process may use, by "
                                                   "its CPU affinity and cgroup CPU quota).")] = None,
    every: Annotated[Optional[float], typer.Option("--every", help="Seconds between passes (default: one "
                                                   "pass, or 60 with --until-idle/--max-passes).")] = None,
    until_idle: Annotated[Optional[float], typer.Option("--until-idle", help="Stop after this many seconds "
                                                        "without new rows in any run.")] = None,
    max_passes: Annotated[Optional[int], typer.Option("--max-passes", help="Stop after this many passes.")] = None,
    heavy_every: Annotated[int, typer.Option("--heavy-every", help="Run the heavy detectors on a run every N "
                                             "new steps (and when it goes quiet).")] = 10,
    idle_after: Annotated[Optional[float], typer.Option("--idle-after", help="A run without new data for this "
                                                        "many seconds is listed only every --idle-every passes "
                                                        "(default: every run every pass).")] = None,
    idle_every: Annotated[int, typer.Option("--idle-every", help="See --idle-after.")] = 10,
    detector: Annotated[Optional[list[str]], typer.Option("--detector", help="Heavy detectors to run "
                                                          "(default: all). Repeatable.")] = None,
    shard_rows: Annotated[int, typer.Option("--shard-rows", help="A run with more new rows than this in one "
                                            "pass is audited in step-range shards over the engine (a full "
                                            "audit); 0: never.")] = 1_000_000,
    alerts: Annotated[Optional[Path], typer.Option("--alerts", help="Append alerts to this JSONL file.")] = None,
    webhook: Annotated[Optional[str], typer.Option("--webhook", help="POST each alert as JSON to this URL.")] = None,
    slack_webhook: Annotated[Optional[str], typer.Option("--slack-webhook", help="Slack-compatible incoming "
                                                         "webhook URL: a readable message per alert.")] = None,
    min_severity: Annotated[str, typer.Option("--min-severity", help="Alert threshold: info, low, medium, "
                                              "high.")] = "medium",
    report: Annotated[Optional[Path], typer.Option("--report", help="Write the fleet page here after each "
                                                   "pass (run reports go to <stem>_runs/).")] = None,
    report_url: Annotated[Optional[str], typer.Option("--report-url", help="URL the report's directory is "
                                                      "served at (links in chat alerts).")] = None,
    run_reports: Annotated[bool, typer.Option("--run-reports/--no-run-reports", help="Write each run's own "
                                              "report next to the fleet page.")] = True,
    s3_endpoint: Annotated[Optional[str], typer.Option("--s3-endpoint", envvar="AWS_ENDPOINT_URL",
                                                       help="S3-compatible endpoint (MinIO, Ceph...).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each run's errors and each sync.")] = False,
) -> None:
    """Scan every run under ROOT...: ingest what is new, audit what changed, alert once per finding."""
    from ..live.alerts import AlertManager, JsonlSink, LogSink, SlackSink, WebhookSink, default_webhook_spool
    from .engines import make_engine
    from .report import run_report_path
    from .scheduler import FleetConfig, FleetScanner

    console, out, style = _consoles()
    if report is not None and not report.parent.resolve().is_dir():
        raise RlauditError(f"--report {report}: directory {report.parent} does not exist")
    if alerts is not None and not alerts.parent.resolve().is_dir():
        raise RlauditError(f"--alerts {alerts}: directory {alerts.parent} does not exist")
    for name, value in (("--every", every), ("--until-idle", until_idle)):
        if value is not None and value < 0:
            raise RlauditError(f"{name} must be >= 0 seconds, got {value}")
    if idle_every < 1 or (idle_after is not None and idle_after < 0):
        raise RlauditError("--idle-after must be >= 0 seconds and --idle-every >= 1 pass")
    if shard_rows < 0:
        raise RlauditError(f"--shard-rows must be >= 0 rows (0: never shard), got {shard_rows}")
    if heavy_every < 1:
        raise RlauditError(f"--heavy-every must be >= 1 step, got {heavy_every}")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    shown = store
    store, remote = _open_store(store, store_cache, s3_endpoint)

    def link(alert) -> str | None:  # noqa: ANN001
        if report is None:
            return None
        path = run_report_path(report, alert.run)
        if report_url:
            return f"{report_url.rstrip('/')}/{path.parent.name}/{path.name}"
        return path.resolve().as_uri()

    def spool(url: str) -> Path:  # alerts a webhook could not take wait in the store, sent at the next start
        return Path(store) / "fleet" / default_webhook_spool(url).name

    sinks: list = [LogSink()]
    if alerts:
        sinks.append(JsonlSink(alerts))
    if webhook:
        sinks.append(WebhookSink(webhook, retries=3, backoff=1.0, spool=spool(webhook)))
    if slack_webhook:
        sinks.append(SlackSink(slack_webhook, link=link, retries=3, backoff=1.0, spool=spool(slack_webhook)))
    manager = AlertManager(sinks, min_severity=min_severity)
    config = FleetConfig(every=heavy_every, detectors=detector, min_severity=min_severity, report=report,
                         run_reports=run_reports, report_url=report_url, s3_endpoint=s3_endpoint,
                         idle_after=idle_after, idle_every=idle_every, shard_rows=shard_rows or None)
    eng = make_engine(engine, workers=workers, address=address)
    scanner = FleetScanner(store, roots, eng, manager, config)
    where = f"{shown} (working copy {store})" if remote else str(store)
    console.print(f"fleet scan of {', '.join(roots)} into {where} with {eng.describe()}", highlight=False,
                  soft_wrap=True)

    def on_pass(res) -> None:  # noqa: ANN001
        errs = f", {res.failed} failed" if res.failed else ""
        console.print(f"pass {res.number}: {res.runs} runs ({res.new_runs} new), {res.audited} audited "
                      f"({res.heavy} heavy), {res.skipped} unchanged{errs}; +{res.rows_added:,} rows, "
                      f"{len(res.alerts)} alert(s) in {res.seconds:.1f} s", highlight=False, soft_wrap=True)
        for label, names in (("missing (source gone, findings kept)", res.gone), ("back", res.back),
                             ("forgotten (removed from the store)", res.forgotten),
                             ("replaced (another run at the same path: read afresh)", res.replaced),
                             ("retried (a worker died; its task ran again)", res.retried)):
            if names:
                console.print(f"  {label}: {', '.join(names)}", highlight=False, soft_wrap=True)
        if res.sharded:
            console.print("  sharded (a full audit in step ranges): " + ", ".join(
                f"{run} ({n} shards)" for run, n in res.sharded.items()), highlight=False, soft_wrap=True)
        for run, err in res.errors.items():
            console.print(f"  [yellow]{run}[/]: {err}", highlight=False, markup=True)
        from rich.markup import escape

        for a in res.alerts:
            out.print(f"  [{style[a.severity]}]{a.severity}[/] {escape(a.run)} step {a.step}: "
                      f"{escape(f'[{a.kind}] {a.title}')}", highlight=False)
        if remote is not None:  # publish after each pass: parts, then versioned manifests, then the state
            pub = remote.push()
            console.print(f"  published to {remote.uri}: {pub.runs} run(s), {pub.parts} part(s), "
                          f"{pub.bytes:,} bytes{', fleet state' if pub.state else ''}", highlight=False,
                          soft_wrap=True)

    try:
        results = scanner.scan(every=every, until_idle=until_idle, max_passes=max_passes, on_pass=on_pass)
    finally:
        scanner.close()
    total = sum(len(r.alerts) for r in results)
    out.print(f"{len(results)} pass(es), {len(scanner.state.runs)} runs, {total} alert(s); state in "
              f"{scanner.state.path}", highlight=False)
    if report:
        out.print(f"fleet report: {report}", highlight=False)


@fleet_app.command("status")
def status_cmd(
    store: SharedStoreOpt = ".rlaudit",
    store_cache: CacheOpt = None,
    s3_endpoint: Annotated[Optional[str], typer.Option("--s3-endpoint", envvar="AWS_ENDPOINT_URL",
                                                       help="S3-compatible endpoint (MinIO, Ceph...).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (one object with every run).")] = False,
) -> None:
    """Every run the fleet scanner knows: format, rows, last step seen, last audit, open findings."""
    from rich.table import Table

    from .report import status_rows
    from .state import FleetState

    console, out, style = _consoles()
    store, _ = _open_store(store, store_cache, s3_endpoint)
    state = FleetState(store)
    if not state.path.is_file():
        raise RlauditError(f"no fleet state in {store} (run `rlaudit fleet scan ROOT --store {store}` first)")
    rows = status_rows(state)
    if as_json:
        typer.echo(json.dumps({"store": str(store), "passes": state.passes, "updated": state.updated,
                               "last_pass": state.last_pass, "alerts_sent": len(state.sent), "runs": rows},
                              indent=1, default=str))
        return
    table = Table(title=f"fleet: {len(rows)} runs, {state.passes} pass(es), {len(state.sent)} alert key(s) sent")
    for col in ("run", "format", "status", "rows", "last step", "last audit", "high", "med", "low", "failures",
                "top finding / error / last failure"):
        table.add_column(col, overflow="fold")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["last_audit"])) if r["last_audit"] else "never"
        f = r["findings"]
        table.add_row(r["run"], r["format"], r["status"], f"{r['rows']:,}",
                      "" if r["last_step"] is None else str(r["last_step"]), when, str(f["high"] or ""),
                      str(f["medium"] or ""), str(f["low"] or ""), str(r["failures"] or ""),
                      (r["error"] or r["top"] or r["last_failure"] or "")[:120]
                      + (f"; last failure {r['last_failure'][:100]}" if r["last_failure"] and r["top"]
                         and not r["error"] else ""))
    out.print(table)


@fleet_app.command("forget")
def forget_cmd(
    runs: Annotated[Optional[list[str]], typer.Argument(help="Runs to forget (default with --missing: every "
                                                        "missing run).")] = None,
    store: SharedStoreOpt = ".rlaudit",
    store_cache: CacheOpt = None,
    s3_endpoint: Annotated[Optional[str], typer.Option("--s3-endpoint", envvar="AWS_ENDPOINT_URL",
                                                       help="S3-compatible endpoint (MinIO, Ceph...).")] = None,
    missing: Annotated[bool, typer.Option("--missing", help="Forget every run whose source is gone.")] = False,
    keep_rows: Annotated[bool, typer.Option("--keep-rows", help="Keep the run's rows in the store (only the "
                                            "fleet forgets it).")] = False,
) -> None:
    """Forget runs: drop them from the fleet state (status, open findings, alert keys) and, unless --keep-rows,
    remove their rows from the store (`rlaudit runs rm`). A forgotten run found again is a new run. On an s3://
    store the change is published: a tombstone version per removed run and a new fleet state."""
    from ..store import Store
    from .state import FleetState

    console, out, _ = _consoles()
    shown = store
    store, remote = _open_store(store, store_cache, s3_endpoint)
    state = FleetState(store)
    if not state.path.is_file():
        raise RlauditError(f"no fleet state in {shown} (run `rlaudit fleet scan ROOT --store {shown}` first)")
    names = list(runs or [])
    if missing:
        names += [n for n, rs in sorted(state.runs.items()) if rs.status == "missing" and n not in names]
    if not names:
        raise RlauditError("name the runs to forget, or pass --missing")
    unknown = [n for n in names if n not in state.runs]
    if unknown:
        raise RlauditError(f"not fleet runs of {shown}: {', '.join(unknown)} (see `rlaudit fleet status`)")
    st = Store(store)
    with state.lock():  # never while a scanner runs on this store
        for name in names:
            if not keep_rows and st.has_run(name):
                st.delete(name)
            state.forget(name)
        state.save()
        if remote is not None:
            pub = remote.push()
            console.print(f"published to {remote.uri}: removed {', '.join(pub.deleted) or 'no rows'}, fleet state "
                          f"{'updated' if pub.state else 'unchanged'}", highlight=False, soft_wrap=True)
    out.print(f"forgot {len(names)} run(s): {', '.join(names)}", highlight=False, soft_wrap=True)


@fleet_app.command("gc")
def gc_cmd(
    store: Annotated[str, typer.Option("--store", help="s3://bucket/prefix: a store published on S3.",
                                       envvar="RLAUDIT_STORE")],
    grace: Annotated[float, typer.Option("--grace", help="Keep every object younger than this many seconds, and "
                                         "versions superseded less than this long ago (longer than any push or "
                                         "pull, plus clock skew).")] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be deleted; delete nothing.")] = False,
    s3_endpoint: Annotated[Optional[str], typer.Option("--s3-endpoint", envvar="AWS_ENDPOINT_URL",
                                                       help="S3-compatible endpoint (MinIO, Ceph...).")] = None,
) -> None:
    """Garbage-collect a store published on S3: superseded manifest and fleet-state versions, parts and details
    no kept version references, runs removed (tombstoned) longer ago than --grace. Safe beside a running
    scanner: only objects older than --grace and not referenced by a version a reader may hold are deleted."""
    from .s3store import S3Store, is_s3

    console, out, _ = _consoles()
    if not is_s3(store):
        raise RlauditError(f"fleet gc works on an s3:// store (a local store deletes as it goes), got {store}")
    if grace < 0:
        raise RlauditError(f"--grace must be >= 0 seconds, got {grace}")
    got = S3Store(store, None, s3_endpoint).gc(grace=grace, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{store}: {verb} {got.objects} object(s) ({got.bytes:,} bytes of run data): {got.manifests} "
              f"superseded manifest version(s), {got.parts} unreferenced part(s), {got.runs_removed} removed "
              f"run(s), {got.states} fleet-state version(s), {got.details} run detail(s)", highlight=False,
              soft_wrap=True)


@fleet_app.command("audit")
def audit_cmd(
    source: Annotated[str, typer.Argument(help="A run in the store, or a run directory (ingested first).")],
    store: StoreOpt = Path(".rlaudit"),
    shards: Annotated[int, typer.Option("--shards", min=0, help="Step ranges the run's per-part scans are split "
                                        "into (default: the engine's workers).")] = 0,
    engine: Annotated[str, typer.Option("--engine", help="local, ray or inline.")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (auto, "
                                                   "ray://host:10001).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Worker processes (local) or CPUs of "
                                                   "the local Ray.")] = None,
    detector: Annotated[Optional[list[str]], typer.Option("--detector", help="Detectors to run (default: "
                                                          "all). Repeatable.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the findings JSON here.")] = None,
) -> None:
    """Audit one large run with its per-part scans (term sets, CoT scan) sharded by step range over the engine;
    the findings are those of `rlaudit audit` (see docs/fleet.md, "Sharding one run")."""
    from ..detectors import AuditConfig
    from ..store import Store, resolve_run
    from .engines import make_engine
    from .shard import sharded_audit

    console, out, style = _consoles()
    st = Store(store)
    run = resolve_run(st, source)
    eng = make_engine(engine, workers=workers, address=address)
    try:
        got = sharded_audit(st, run, eng, shards or eng.workers, AuditConfig(detectors=detector))
    finally:
        eng.close()
    secs = got.seconds
    failed = [r.index for r in got.shards if not r.ok]
    console.print(f"{run}: {sum(n for _, n in got.per_step):,} rollouts in {len(got.plan)} shard(s) on "
                  f"{eng.describe()}: shards {secs['shards']:.1f} s ({secs['cpu_shards']:.1f} CPU s), detectors "
                  f"{secs['detectors']:.1f} s, total {secs['total']:.1f} s"
                  + (f"; shard(s) {failed} failed, their parts were scanned by the driver" if failed else ""),
                  highlight=False, soft_wrap=True)
    from rich.markup import escape

    for f in got.result.findings:
        line = escape(f"[{f.kind}] {f.title}")
        out.print(f"  [{style[f.severity]}]{f.severity}[/] {line}", highlight=False)
    if json_out:
        got.result.write_json(json_out)
