"""The `rlaudit` command line: a thin layer over `rlaudit.audit`, `rlaudit.store` and the detectors.

Every command turns options into the same objects the Python API takes, calls one function, and prints.
User mistakes (`RlauditError`) print one clear message and exit 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from .errors import RlauditError

# Everything heavy (DuckDB, pyarrow, numpy, scipy, the detectors) is imported inside the command that needs it:
# `rlaudit --help` and usage errors should not pay for scipy.
if TYPE_CHECKING:
    from .audit import AuditResult
    from .conditions import ConditionRule
    from .detectors import AuditConfig
    from .findings import Finding
    from .readers.base import ReadOptions
    from .store import IngestReport, Store

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Audit RL runs of language models: CoT grading, reward-driven tics, emerging behaviours.")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"rlaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Audit RL runs of language models: CoT grading, reward-driven tics, emerging behaviours."""
console = Console(stderr=True)
out = Console()
if not console.is_terminal:  # logs and CI: wide enough that finding titles are not folded into slivers
    console = Console(stderr=True, width=160)
if not out.is_terminal:
    out = Console(width=160)

SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}

# ---------------------------------------------------------------- shared options
StoreOpt = Annotated[Path, typer.Option("--store", help="Store directory.", envvar="RLAUDIT_STORE")]
RunOpt = Annotated[Optional[list[str]], typer.Option("--run", help="Run name for each SOURCE, in order "
                                                     "(default: the source directory's base name).")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", help="Log layout; detected when omitted. "
                                                  "See `rlaudit formats`.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Any bad record is an error (default: quarantine it).")]
TagsOpt = Annotated[Optional[str], typer.Option("--think-tags", help="Reasoning tags as OPEN,CLOSE "
                                                "(default '<think>,</think>').")]
GraderOpt = Annotated[Optional[list[str]], typer.Option("--grader-input", help="GRADER=COLUMN: COLUMN holds "
                                                        "the text reward signal GRADER saw. Repeatable.")]
ColumnsOpt = Annotated[Optional[list[str]], typer.Option("--columns", help="CANONICAL=FIELD mappings for "
                                                         "generic tables, comma-separated or repeated.")]
ColumnsFileOpt = Annotated[Optional[Path], typer.Option("--columns-file", help="JSON or TOML file with a "
                                                        "{canonical: field} mapping (optionally under [columns]).")]
ConditionOpt = Annotated[Optional[list[str]], typer.Option("--condition", help="NAME=REGEX: rollouts whose "
                                                           "prompt matches REGEX get condition NAME. Repeatable.")]
GroupSizeOpt = Annotated[Optional[int], typer.Option("--group-size", help="Generations per prompt (TRL "
                                                     "num_generations), to split repeated prompts into groups.")]
ScalarLogOpt = Annotated[Optional[list[str]], typer.Option(
    "--scalar-log", help="[RUN=]PATH: the trainer's scalar log for training_health (TRL trainer_state.json, verl/"
                         "prime-rl metric JSONL, TensorBoard events, a W&B run directory or history export, or a "
                         "directory holding them). RUN= is needed when auditing several runs. Repeatable; replaces "
                         "the logs found beside the rollouts.")]
WeightsOpt = Annotated[Optional[list[str]], typer.Option("--reward-weights", help="NAME=W,... TRL reward_weights "
                                                         "by reward function (default: from training_args.bin).")]


def _store(path: Path) -> Store:
    from .store import Store

    return Store(path)


def _rules(condition: list[str] | None) -> list[ConditionRule]:
    from .conditions import ConditionRule

    return [ConditionRule.parse(c) for c in condition or []]


def _config(**kw) -> AuditConfig:  # noqa: ANN003
    from .detectors import AuditConfig

    return AuditConfig(**kw)


def _read_findings(path: Path) -> AuditResult:
    from .audit import AuditResult

    return AuditResult.read_json(path)


def _think_tags(spec: str | None):  # noqa: ANN202
    from .text import ThinkTags

    return ThinkTags.parse(spec)


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items or []:
        for part in item.split(",") if what == "--columns" else [item]:
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise RlauditError(f"{what} expects KEY=VALUE, got {part!r}")
            pairs[key.strip()] = value.strip()
    return pairs


def _u(value: object, limit: int = 2000) -> str:
    """User text (paths, run, signal, grader and condition names, finding titles) for rich output: markup
    escaped, so `[/x]` or `acc[v2]` print as written, and cut to `limit` characters."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit:,} more characters)"
    return _escape(text)


def _columns_file(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RlauditError(f"--columns-file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise RlauditError(f"--columns-file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RlauditError(f"--columns-file {path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None
    data = data.get("columns", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise RlauditError(f"--columns-file {path}: expected a mapping of canonical column -> source field")
    return data


def read_options(strict: bool, think_tags: str | None, grader_input: list[str] | None,
                 columns: list[str] | None, columns_file: Path | None, group_size: int | None,
                 reward_weights: list[str] | None = None) -> ReadOptions:
    from .schema import COLUMNS

    mapping = {**_columns_file(columns_file), **_pairs(columns, "--columns")}
    unknown = sorted(set(mapping) - set(COLUMNS))
    if unknown:
        raise RlauditError(f"--columns: unknown canonical column(s) {unknown}; known: {', '.join(COLUMNS)}")
    if group_size is not None and group_size < 1:
        raise RlauditError("--group-size must be a positive integer")
    weights: dict[str, float] = {}
    for item in reward_weights or []:
        for name, value in _pairs(item.split(","), "--reward-weights").items():
            try:
                weights[name] = float(value)
            except ValueError:
                raise RlauditError(f"--reward-weights {name}={value}: the weight is not a number") from None
    from .readers.base import ReadOptions
    from .text import ThinkTags

    return ReadOptions(think_tags=ThinkTags.parse(think_tags), grader_inputs=_pairs(grader_input, "--grader-input"),
                       columns=mapping, group_size=group_size, strict=strict, reward_weights=weights)


def _ingest_with_progress(store: Store, sources: list[Path], runs: list[str] | None, fmt: str | None,
                          options: ReadOptions, conditions: list[ConditionRule]) -> list[IngestReport]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .audit import ingest_sources

    with Progress(TextColumn("ingest {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rows]:,} rows"), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as progress:
        tasks: dict[str, int] = {}

        def update(run: str, done: int, total: int, rows: int) -> None:
            if run not in tasks:
                tasks[run] = progress.add_task(run, total=total, rows=0)
            progress.update(tasks[run], completed=done, total=total, rows=rows)

        reports = ingest_sources(store, sources, runs, fmt, options, conditions, progress=update)
    for r in reports:
        _print_ingest(r)
    return reports


def _audit_with_progress(store: Store, runs: list[str], config: AuditConfig) -> AuditResult:
    """`audit_store` with one progress bar per run, advancing detector by detector, and beside the detector the
    passes over the stored parts under way and how far each is (`rlaudit.progress`): a cold audit of a large
    run spends most of its time in its first detector's passes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import progress as passes
    from .audit import audit_store

    with Progress(TextColumn("scan {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detector]}"), TextColumn("{task.fields[passes]}", style="dim"),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as progress:
        tasks: dict[str, int] = {}
        current: list[int] = []  # the task of the run being audited

        def update(run: str, detector: str, done: int, total: int) -> None:
            if run not in tasks:
                tasks[run] = progress.add_task(run, total=total, detector="", passes="")
            current[:] = [tasks[run]]
            progress.update(tasks[run], completed=done, total=total, detector=detector)

        def show(under_way: dict[str, tuple[int, int]]) -> None:
            if current:
                text = passes.describe(under_way)
                progress.update(current[0], passes=f"· {text}" if text else "")

        started = time.perf_counter()
        with passes.listening(show):
            result = audit_store(store, runs, config, progress=update)
    _hint_numba(time.perf_counter() - started)
    return result


#: an audit slower than this without numba gets the hint that the `fast` extra would halve it
NUMBA_HINT_SECONDS = 30.0


def _hint_numba(seconds: float) -> None:
    """Say so when a long audit ran the numpy kernels: on the 1M-rollout benchmark they cost twice the CPU of
    the compiled ones (docs/performance.md), and nothing else tells a user who installed the bare package."""
    from . import kernels

    # not where RLAUDIT_KERNEL asked for a path (`kernels.setting`)
    if seconds >= NUMBA_HINT_SECONDS and kernels.setting() is None and kernels.backend() == "numpy":
        console.print(f"[yellow]note:[/] the audit took {seconds:.0f} s on the numpy kernels; "
                      "`pip install 'rlaudit\\[fast]'` (numba) runs them compiled, about twice as fast, same findings",
                      highlight=False, soft_wrap=True)


def _run_of_source(st: Store, source: str, run: str | None, fmt: str | None) -> str:
    """The run a SOURCE argument names; a file/directory is ingested first, with progress."""
    from .readers.base import ReadOptions
    from .store import resolve_run

    return resolve_run(st, source, lambda path: _ingest_with_progress(
        st, [path], [run] if run else None, fmt, ReadOptions(), [])[0].run)


def _print_ingest(r: IngestReport) -> None:
    replaced = f", {r.files_replaced} replaced by newer copies" if r.files_replaced else ""
    compacted = f", {r.parts_compacted} small part(s) merged" if r.parts_compacted else ""
    console.print(f"[bold]{_u(r.run)}[/] ({_u(r.format)}): {r.rows_added:,} rows from {r.files_read} file(s), "
                  f"{r.files_skipped} unchanged{replaced}{compacted}, {r.seconds:.1f}s")
    if r.bad_records:
        console.print(f"[yellow]warning:[/] {r.bad_records} bad record(s) quarantined in {_u(r.quarantine)}")
        for ex in r.bad_examples:
            console.print(f"  {ex}", markup=False)
    for text in r.notes:  # what the reader assumed or the logs lack: it changes what the numbers mean
        console.print(f"  note: {text}", markup=False, soft_wrap=True)


def _check_output(path: Path | None, option: str) -> None:
    """An output path whose directory does not exist is a mistake (a typo), found before any work is done."""
    if path is None:
        return
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise RlauditError(f"{option} {path}: directory {parent} does not exist; create it first "
                           f"(mkdir -p {parent}) or choose another path")
    if Path(path).is_dir():
        raise RlauditError(f"{option} {path} is a directory; give a file name, e.g. {Path(path) / 'audit.html'}"
                           if option in ("--report", "--out") else f"{option} {path} is a directory; give a file name")


def _print_store(store: Path) -> None:
    """Where the rollouts went: later commands need the same --store (or RLAUDIT_STORE)."""
    import os

    if os.environ.get("RLAUDIT_STORE") and Path(os.environ["RLAUDIT_STORE"]) == Path(store):
        console.print(f"store: {_u(store)} (from RLAUDIT_STORE)", highlight=False)
    elif Path(store) == Path(".rlaudit"):
        console.print(f"store: {_u(store)}", highlight=False)
    else:
        console.print(f"store: {_u(store)} (other commands need --store {_u(store)}, or export RLAUDIT_STORE={_u(store)})",
                      highlight=False)


def print_findings(findings: list[Finding], limit: int = 30, remedies: bool = False) -> None:
    """The findings as a table on stdout (results go to stdout, diagnostics to stderr).

    With `remedies`, each finding's remedy (what to do about it) is a dim line under its title.
    """
    if not findings:
        out.print("[green]No findings.[/]")
        return
    table = Table(title=f"{len(findings)} finding(s)", show_lines=remedies)
    for col in ("severity", "kind", "run", "finding" + (" / what to do" if remedies else "")):
        table.add_column(col, overflow="fold")
    for f in findings[:limit]:
        text = _u(f.title, 500)
        if remedies and f.get("remedy"):
            text += f"\n[dim]-> {_u(str(f.get('remedy')), 2000)}[/]"
        table.add_row(f"[{SEVERITY_STYLE.get(f.severity, '')}]{_u(f.severity)}[/]", _u(f.kind), _u(f.run), text)
    out.print(table)
    if len(findings) > limit:
        out.print(f"... and {len(findings) - limit} more (see --json)")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# ---------------------------------------------------------------- commands
@app.command()
def audit(
    sources: Annotated[list[Path], typer.Argument(help="Run directories (or files) to audit.")],
    store: StoreOpt = Path(".rlaudit"),
    run: RunOpt = None,
    format: FormatOpt = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write findings JSON here.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write the HTML report here.")] = None,
    strict: StrictOpt = False,
    think_tags: TagsOpt = None,
    grader_input: GraderOpt = None,
    columns: ColumnsOpt = None,
    columns_file: ColumnsFileOpt = None,
    condition: ConditionOpt = None,
    group_size: GroupSizeOpt = None,
    reward_weights: WeightsOpt = None,
    detector: Annotated[Optional[list[str]], typer.Option("--detector", help="Run only these detectors.")] = None,
    max_step: Annotated[Optional[int], typer.Option("--max-step", help="Audit only steps <= this.")] = None,
    scalar_log: ScalarLogOpt = None,
    tokenizer: Annotated[Optional[Path], typer.Option(
        "--tokenizer", help="tokenizer.json (or a directory holding it) to measure completion lengths in tokens "
                            "(training_health; default: token counts the log carries, else characters).")] = None,
    max_completion_tokens: Annotated[Optional[int], typer.Option(
        "--max-completion-tokens", help="The trainer's completion length limit in tokens (TRL "
                                        "max_completion_length, verl data.max_response_length): completions that "
                                        "reach it count as truncated.")] = None,
    fail_on: Annotated[Optional[str], typer.Option(
        "--fail-on", help="Exit 1 when a finding at or above this severity (info|low|medium|high) exists, 3 when "
                          "none does but a detector could not run (a gate for CI).")] = None,
    labels: Annotated[Optional[Path], typer.Option(
        "--labels", help="Monitorability label config (TOML or JSON: label or label_signal, intervention, "
                         "exposure, verbaliser, ...): runs the monitorability detector in the audit.")] = None,
    monitor: Annotated[Optional[str], typer.Option(
        "--monitor", help="With --labels: the monitor, a behaviour spec or judge:[cot:|action:|all:]RUBRIC "
                          "(overrides the config's).")] = None,
    llm: Annotated[Optional[str], typer.Option(
        "--llm", help="With --labels: LLM backend for judge monitors and labels: openai://HOST[:PORT]/PATH:MODEL "
                      "(or openai:MODEL@URL), transformers:PATH or scripted:MODULE:FUNCTION (overrides the "
                      "config's).")] = None,
    price: Annotated[Optional[str], typer.Option(
        "--price", help="With --llm: USD per 1M tokens, INPUT/OUTPUT.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="With --labels: ingest, then print how many LLM calls and tokens the monitorability "
                          "analysis would send; send nothing and stop.")] = False,
) -> None:
    """Ingest each SOURCE into the store, run every detector, write findings and a report."""
    gate = _fail_on(fail_on)
    monitor_options = _monitor_options(labels, monitor, llm, price, dry_run)
    options = read_options(strict, think_tags, grader_input, columns, columns_file, group_size, reward_weights)
    rules = _rules(condition)
    if detector:  # before ingesting: a typo should not cost a long ingest first
        from .detectors import ordered

        ordered(detector)
    _check_output(json_out, "--json")
    _check_output(report, "--report")
    scalar_specs = _scalar_logs(scalar_log)  # before ingesting: a wrong path should not cost a long ingest first
    health = _health_options(tokenizer, max_completion_tokens)
    st = _store(store)
    from .kernels import import_for_ingest

    import_for_ingest()
    ingests = _ingest_with_progress(st, sources, run, format, options, rules)
    scalar_paths = _assign_scalar_logs(scalar_specs, [r.run for r in ingests])
    detector_options = _metrics_option(scalar_paths)
    if health:
        detector_options.setdefault("training_health", {}).update(health)
    config = _config(max_step=max_step, detectors=detector, options=detector_options)
    if monitor_options is not None:
        _attach_client(monitor_options, st)
        config.options["monitorability"] = monitor_options
        if dry_run:
            _monitorability_dry_run(st, [r.run for r in ingests], config, monitor_options)
            return
    result = _audit_with_progress(st, [r.run for r in ingests], config)
    if monitor_options is not None and "client" in monitor_options:
        console.print(monitor_options["client"].accounting.format(), highlight=False)
    result.ingests = ingests
    from .audit import write_outputs

    with console.status("writing outputs", spinner="dots"):
        write_outputs(st, result, json_out, report)
    print_findings(result.findings)
    for path, what in ((json_out, "findings"), (report, "report")):
        if path:
            console.print(f"{what}: {_u(path)}")
    if json_out and result.findings:
        console.print(f"what to do about each finding: rlaudit findings {_u(json_out)}", highlight=False)
    _print_store(store)
    failed = [f for f in result.findings if f.kind == "audit_error"]
    if failed:  # an audit that could not run every detector must not pass for a clean one
        console.print(f"[bold red]error:[/] {len(failed)} detector run(s) failed, the audit is incomplete; first: "
                      f"{_u(failed[0].title, 300)}", highlight=False)
    if gate is not None:
        code, message = gate_status(result.findings, gate)
        console.print(f"gate (--fail-on {gate}): {message}", highlight=False)
        if code:
            raise typer.Exit(code)
    if failed:
        raise typer.Exit(GATE_INCOMPLETE)


def _monitor_options(labels: Path | None, monitor: str | None, llm: str | None, price: str | None,
                     dry_run: bool) -> dict | None:
    """The monitorability detector's options from `audit --labels FILE` and its overrides (None: not asked)."""
    if labels is None:
        if monitor or llm or price or dry_run:
            raise RlauditError("--monitor, --llm, --price and --dry-run configure the monitorability detector: "
                               "give --labels FILE (what counts as misbehaviour) too")
        return None
    from .detectors.monitorability import load_label_config

    options = load_label_config(labels)
    if monitor:
        options["monitor"] = monitor
    if llm:
        options["llm"] = llm
    if price:
        options["llm_price"] = price
    options["dry_run"] = dry_run
    judged = any(str(options.get(k) or "").startswith("judge:") for k in ("label", "monitor", "verbaliser"))
    if judged and not options.get("llm"):
        raise RlauditError("the label config uses a judge: spec: give --llm BACKEND (or `llm` in the config)")
    return options


def _attach_client(options: dict, st: Store) -> None:
    """One LLM client for the monitor, labels and verbaliser, caching in the store (dry run: printing nothing
    per request; the summary says what would be sent)."""
    if not options.get("llm"):
        return
    import io

    from .llm import client_from_spec

    client = client_from_spec(options["llm"], cache=options.get("llm_cache") or st.root / "llm-cache.sqlite",
                              concurrency=int(options.get("llm_concurrency", 8)), price=options.get("llm_price"),
                              dry_run=bool(options.get("dry_run")))
    if options.get("dry_run"):
        client.dry_run_out = io.StringIO()
    options["client"] = client
    if str(options.get("label", "")).startswith("judge:"):
        from .llm import set_default_client

        set_default_client(client)  # judge labels are parsed as behaviour specs: they use the default client


def _monitorability_dry_run(st: Store, runs: list[str], config: AuditConfig, options: dict) -> None:
    """Run only the monitorability analysis (and the CoT scan it needs) with a dry-run client: count the calls
    and tokens a real audit would send."""
    from .detectors import AuditConfig, run_detectors

    client = options.get("client")
    for name in runs:
        run_detectors(st, name, AuditConfig(max_step=config.max_step, detectors=["monitorability"],
                                            options=config.options))
    if client is None:
        out.print("monitorability dry run: the monitor and labels are rule-based; a real audit sends no LLM "
                  "calls", highlight=False)
        return
    a = client.accounting
    out.print(f"monitorability dry run ({client.description}): {a.calls:,} calls, {a.dry_run:,} would be sent "
              f"({a.cache_hits:,} cached), about {a.dry_run_prompt_tokens:,} prompt tokens", highlight=False)
    console.print(a.format(), highlight=False)
def _scalar_logs(specs: list[str] | None) -> list[tuple[str | None, list[Path]]]:
    """(run or None, files) per `--scalar-log [RUN=]PATH`; a path that is no scalar log is an error naming it."""
    from .health.scalars import ScalarLogError, scalar_log_files

    out = []
    for spec in specs or []:
        run_name, path = None, spec
        if "=" in spec and not Path(spec).exists():
            run_name, path = spec.split("=", 1)
            if not run_name or not path:
                raise RlauditError(f"--scalar-log expects PATH or RUN=PATH, got {spec!r}")
        try:
            out.append((run_name, scalar_log_files(path)))
        except ScalarLogError as exc:
            raise RlauditError(str(exc)) from None
    return out


def _assign_scalar_logs(specs: list[tuple[str | None, list[Path]]], runs: list[str]) -> dict[str, list[Path]]:
    """run -> scalar-log files; prints, per run, the files and which keys map onto rlaudit's metrics."""
    from .health.scalars import METRIC_KEYS, read_scalar_logs

    paths: dict[str, list[Path]] = {}
    for run_name, files in specs:
        if run_name is None:
            if len(runs) != 1:
                raise RlauditError(f"--scalar-log {files[0]}: {len(runs)} runs are audited ({', '.join(runs)}); "
                                   "say which run it belongs to with --scalar-log RUN=PATH")
            run_name = runs[0]
        if run_name not in runs:
            raise RlauditError(f"--scalar-log {run_name}=...: no run {run_name!r} in this audit (runs: "
                               f"{', '.join(runs)})")
        paths.setdefault(run_name, []).extend(files)
    for run_name, files in paths.items():
        log = read_scalar_logs(files)
        found = log.found()
        console.print(f"scalar logs of {_u(run_name)}: {len(log.files)} file(s) ({', '.join(sorted(log.formats)) or 'none readable'}), "
                      f"{len(log.keys)} keys; mapped: "
                      + (", ".join(f"{m}={k}" for m, k in found.items()) or "none of the known keys")
                      + (f"; not found: {', '.join(m for m in METRIC_KEYS if m not in found)}" if found else ""),
                      highlight=False, soft_wrap=True)
        for reason in log.skipped:
            console.print(f"[yellow]warning:[/] {_u(reason, 500)}", highlight=False, soft_wrap=True)
    return paths


def _health_options(tokenizer: Path | None, max_tokens: int | None) -> dict:
    """training_health options for lengths in tokens; the tokenizer is loaded once here so a bad path fails early."""
    out: dict = {}
    if tokenizer is not None:
        from .health.lengths import load_tokenizer

        load_tokenizer(str(tokenizer))
        out["tokenizer"] = str(tokenizer)
    if max_tokens is not None:
        if max_tokens < 1:
            raise RlauditError(f"--max-completion-tokens must be a positive integer, got {max_tokens}")
        out["max_tokens"] = max_tokens
    return out


def _metrics_option(paths: dict[str, list[Path]]) -> dict:
    from .detectors.training_health import metrics_option

    return metrics_option(paths) if paths else {}


#: Exit statuses of `rlaudit audit --fail-on` (documented in the README): 2 stays the user-error status.
GATE_FAIL, GATE_INCOMPLETE = 1, 3


def _fail_on(value: str | None) -> str | None:
    if value is None:
        return None
    from .findings import SEVERITIES

    v = value.strip().lower()
    if v not in SEVERITIES:
        raise RlauditError(f"--fail-on must be one of {', '.join(SEVERITIES)}, got {value!r}")
    return v


def gate_status(found: list[Finding], threshold: str) -> tuple[int, str]:
    """(exit status, one line) of the CI gate: 1 when a finding other than `audit_error` is at or above
    `threshold`; else 3 when a detector could not run (an `audit_error` finding: the audit is incomplete);
    else 0."""
    from .findings import SEVERITY_RANK

    failing = [f for f in found if f.kind != "audit_error" and SEVERITY_RANK[f.severity] >= SEVERITY_RANK[threshold]]
    errors = [f for f in found if f.kind == "audit_error"]
    if failing:
        kinds = sorted({f.kind for f in failing})
        return GATE_FAIL, (f"FAIL: {len(failing)} finding(s) at or above {threshold} ({', '.join(kinds)}); exit "
                           f"{GATE_FAIL}")
    if errors:
        names = sorted({str(f.get("detector")) for f in errors})
        return GATE_INCOMPLETE, (f"INCOMPLETE: detector(s) {', '.join(names)} could not run; exit "
                                 f"{GATE_INCOMPLETE}")
    return 0, f"pass: no finding at or above {threshold}"


@app.command()
def ingest(
    sources: Annotated[list[Path], typer.Argument(help="Run directories (or files) to ingest.")],
    store: StoreOpt = Path(".rlaudit"),
    run: RunOpt = None,
    format: FormatOpt = None,
    strict: StrictOpt = False,
    think_tags: TagsOpt = None,
    grader_input: GraderOpt = None,
    columns: ColumnsOpt = None,
    columns_file: ColumnsFileOpt = None,
    condition: ConditionOpt = None,
    group_size: GroupSizeOpt = None,
    reward_weights: WeightsOpt = None,
) -> None:
    """Ingest SOURCES into the store without auditing (idempotent and incremental)."""
    options = read_options(strict, think_tags, grader_input, columns, columns_file, group_size, reward_weights)
    rules = _rules(condition)
    _ingest_with_progress(_store(store), sources, run, format, options, rules)
    _print_store(store)


@app.command("runs")
def runs_cmd(
    action: Annotated[list[str] | None, typer.Argument(
        help="`rm NAME...` removes runs from the store; `compact NAME...` merges a run's small parts (live "
             "appends, step-by-step ingests) into parts of ~16,384 rows, which later audits read faster; "
             "nothing lists them.", show_default=False)] = None,
    store: Annotated[str, typer.Option("--store", help="Store directory, or s3://bucket/prefix (a store "
                                       "published on S3 by `fleet scan`: pulled into --store-cache, and a "
                                       "removal is published).", envvar="RLAUDIT_STORE")] = ".rlaudit",
    store_cache: Annotated[Optional[Path], typer.Option("--store-cache", help="Local working copy of an "
                                                        "s3:// store.")] = None,
    s3_endpoint: Annotated[Optional[str], typer.Option("--s3-endpoint", envvar="AWS_ENDPOINT_URL",
                                                       help="S3-compatible endpoint (MinIO, Ceph...).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """What the store holds: rows, steps, conditions, reward signals and graders per run (`runs rm NAME` removes
    a run, `runs compact NAME` merges its small parts)."""
    from .fleet.cli import _open_store

    local, remote = _open_store(store, store_cache, s3_endpoint)
    st = _store(local)
    if action:
        if action[0] not in ("rm", "compact") or len(action) < 2:
            raise RlauditError("usage: rlaudit runs [--store DIR] [--json] | rlaudit runs rm NAME... [--store DIR] "
                               "| rlaudit runs compact NAME... [--store DIR]")
        if action[0] == "compact":
            if remote is not None:
                raise RlauditError(f"runs compact: {store} is an s3:// store; compact the runs where they are "
                                   "ingested (the fleet's workers' stores), not their published copy")
            for name in action[1:]:
                before = len(st.stored_parts(name))
                fewer = st.compact(name)
                console.print(f"{_u(name)}: {before:,} part(s) -> {before - fewer:,}" if fewer else
                              f"{_u(name)}: {before:,} part(s), none small enough to merge", highlight=False)
            return
        for name in action[1:]:
            st.delete(name)
            console.print(f"removed run {_u(name)} from store {_u(store)}")
        if remote is not None:  # a tombstone version per removed run
            pub = remote.push()
            console.print(f"published the removal of {', '.join(pub.deleted) or 'nothing'} to {remote.uri}")
        return
    summaries = [st.summary(r) for r in st.runs()]
    if as_json:
        out.print_json(json.dumps([s.to_json() for s in summaries]))
        return
    if not summaries:
        console.print(f"store {_u(store)} holds no runs; add some with `rlaudit ingest DIR` or `rlaudit audit DIR`")
        return
    table = Table(title=f"store {_u(store)}")
    for col in ("run", "format", "rows", "steps", "conditions", "signals", "graders"):
        table.add_column(col, overflow="fold")
    for s in summaries:
        steps = f"{s.steps[0]}..{s.steps[1]}" if s.steps else "-"
        table.add_row(_u(s.run), _u(s.format), f"{s.rows:,}", steps, _u(", ".join(s.conditions)),
                      _u(", ".join(s.signals)), _u(", ".join(s.graders)))
    out.print(table)


@app.command()
def findings(
    path: Annotated[Path, typer.Argument(help="A findings JSON file written by --json.")],
    kind: Annotated[Optional[str], typer.Option(help="Only this finding kind.")] = None,
    severity: Annotated[Optional[str], typer.Option(help="Only this severity and above.")] = None,
    remedies: Annotated[bool, typer.Option("--remedies/--no-remedies", help="Show what to do about each "
                                           "finding under its title.")] = True,
) -> None:
    """Show the findings of a findings JSON file as a table."""
    from .findings import KINDS, SEVERITIES, SEVERITY_RANK

    if severity is not None:
        severity = severity.strip().lower()
        if severity not in SEVERITY_RANK:
            raise RlauditError(f"--severity must be one of {', '.join(SEVERITIES)} (that severity and above), "
                               f"got {severity!r}")
    try:
        result = _read_findings(path)
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RlauditError(f"{path}: not a findings JSON file ({type(exc).__name__}: {exc})") from None
    bad = sorted({str(f.severity) for f in result.findings if f.severity not in SEVERITY_RANK})
    if bad:
        raise RlauditError(f"{path}: not a findings JSON file (unknown severity {bad[0]!r})")
    if kind is not None:
        kind = kind.strip().lower().replace("-", "_")
        known = dict(KINDS) | {f.kind: "" for f in result.findings}
        if kind not in known:
            by_detector = {d: k for k, d in KINDS.items() if d not in ("any", "live")}
            hint = (f"; {kind!r} is a detector, whose findings have kind {by_detector[kind]!r}"
                    if kind in by_detector else "")
            raise RlauditError(f"--kind {kind!r} is not a finding kind{hint} (kinds: {', '.join(known)})")
    fs = [f for f in result.findings if (kind is None or f.kind == kind)
          and (severity is None or SEVERITY_RANK[f.severity] >= SEVERITY_RANK[severity])]
    if remedies:
        from .remedies import add_remedies

        add_remedies(fs)  # findings files written before remedies existed
    print_findings(fs, limit=10_000, remedies=remedies)


@app.command("report")
def report_cmd(
    out_path: Annotated[Path, typer.Option("--out", help="HTML file to write.")],
    store: StoreOpt = Path(".rlaudit"),
    json_in: Annotated[Optional[Path], typer.Option("--json", help="Findings JSON (from `--json`) to report "
                                                    "instead of re-running the audit.")] = None,
    run: Annotated[Optional[list[str]], typer.Option("--run", help="Only these runs (default: all).")] = None,
    title: Annotated[Optional[str], typer.Option("--title", help="Report title.")] = None,
    max_evidence: Annotated[int, typer.Option("--max-evidence", help="Evidence rollouts shown per finding.")] = 5,
    max_step: Annotated[Optional[int], typer.Option("--max-step", help="Audit only steps <= this.")] = None,
    resample: Annotated[Optional[list[Path]], typer.Option("--resample", help="Results directory of `rlaudit "
                                                           "resample` to show in a resampling section (default: "
                                                           "those under STORE/resample/). Repeatable.")] = None,
    resample_baseline: Annotated[str, typer.Option("--resample-baseline", help="Model the resampling ratios "
                                                   "are taken to.")] = "original",
) -> None:
    """Write the HTML report for the runs of a store (auditing them now), or for a findings JSON file."""
    from .report import ReportLimits, write_report

    if max_evidence < 0:
        raise RlauditError("--max-evidence must be >= 0")
    _check_output(out_path, "--out")
    st = _store(store)
    if json_in is not None:
        try:
            result = _read_findings(json_in)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise RlauditError(f"{json_in}: not a findings JSON file written by --json ({exc})") from None
        if run:
            result.runs = [r for r in result.runs if r.run in run]
            result.findings = [f for f in result.findings if f.run in run]
        if not st.runs():
            console.print(f"[yellow]note:[/] store {_u(store)} holds no runs: the report shows the findings JSON only "
                          "(no reward curves, evidence without the stored rollouts)")
    else:
        known = st.runs()
        if not known:
            raise RlauditError(f"store {store} holds no runs; ingest some with `rlaudit ingest DIR`, or pass "
                               "--json FINDINGS to report a findings file")
        missing = sorted(set(run or []) - set(known))
        if missing:
            raise RlauditError(f"no run(s) {missing} in store {store} (runs: {', '.join(known)})")
        result = _audit_with_progress(st, list(run) if run else known, _config(max_step=max_step))
    try:
        with console.status("writing report", spinner="dots"):
            path = write_report(st, result, out_path, title=title, limits=ReportLimits(max_evidence=max_evidence),
                                resample=list(resample) if resample else None,
                                resample_baseline=resample_baseline)
    except OSError as exc:
        raise RlauditError(f"--out {out_path}: cannot write the report ({exc.strerror or exc})") from None
    print_findings(result.findings)
    console.print(f"report: {_u(path)} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def formats() -> None:
    """The log layouts rlaudit reads."""
    from .readers import READERS

    for r in READERS:
        out.print(f"[bold]{r.name}[/]  {r.description}")


@app.command()
def schema() -> None:
    """The canonical rollout table (Markdown)."""
    from .schema import schema_markdown

    typer.echo(schema_markdown())


# ---------------------------------------------------------------- trace (reward attribution)
@app.command("trace")
def trace_cmd(
    source: Annotated[str, typer.Argument(help="A run directory/file to ingest, or the name of a stored run.")],
    behavior: Annotated[str, typer.Option("--behavior", "-b", help="Behaviour spec: a term ('goblin'), "
                                          "'re:REGEX', 'style:NAME' or 'module:function'.")],
    where: Annotated[str, typer.Option("--where", help="Text the behaviour is measured on: answer or "
                                       "reasoning.")] = "answer",
    store: StoreOpt = Path(".rlaudit"),
    run: Annotated[Optional[str], typer.Option("--run", help="Run name when SOURCE is ingested.")] = None,
    format: FormatOpt = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the trace as JSON here.")] = None,
    max_step: Annotated[Optional[int], typer.Option("--max-step", help="Use only steps <= this.")] = None,
    outcome: Annotated[Optional[list[str]], typer.Option("--outcome", help="Signal that measures task success "
                                                         "(in addition to names like accuracy/correct). "
                                                         "Repeatable.")] = None,
    no_scale: Annotated[bool, typer.Option("--no-std-scale", help="Advantages are not divided by the group "
                                           "std (Dr. GRPO).")] = False,
    boot: Annotated[int, typer.Option("--boot", help="Bootstrap replicates.")] = 1000,
    direction: Annotated[str, typer.Option("--direction", help="up: what pushed the behaviour up; down: what "
                                           "pushed it down (a behaviour that fell).")] = "up",
) -> None:
    """Trace a behaviour to the reward signals, conditions and tasks that pushed it up during training."""
    from .attribution.trace import trace as trace_behavior
    from .findings import jsonable

    if where not in ("answer", "reasoning"):
        raise RlauditError(f"--where must be 'answer' or 'reasoning', got {where!r}")
    if direction not in ("up", "down"):
        raise RlauditError(f"--direction must be 'up' or 'down', got {direction!r}")
    st = _store(store)
    name = _run_of_source(st, source, run, format)
    with console.status("tracing", spinner="dots"):
        t = trace_behavior(st, name, behavior, where, max_step=max_step, outcome_signals=outcome or [],
                           advantage_scale="none" if no_scale else "group", n_boot=boot, direction=direction)
    _print_trace(t)
    if json_out:
        from .store import atomic_write_text

        atomic_write_text(json_out, json.dumps(jsonable(t.to_json()), indent=2, ensure_ascii=False))
        console.print(f"trace: {_u(json_out)}")


def _trace_level(t, pct) -> str:  # noqa: ANN001
    """How common the traced behaviour is, in its own unit: a share of rollouts for a presence behaviour, a mean
    for a numeric style feature (`style:length` is a mean length in words, not a 'prevalence 2275%')."""
    if getattr(t, "numeric", False):
        return f"mean {t.prevalence:.3g}" if t.prevalence == t.prevalence else "mean -"
    return f"prevalence {pct(t.prevalence)}"


def _print_trace(t) -> None:  # noqa: ANN001 - rlaudit.attribution.trace.Trace, imported lazily
    def pct(x: float) -> str:
        return "-" if x is None or x != x else f"{100 * x:.0f}%"

    def num(x: float) -> str:
        return "-" if x is None or x != x else f"{x:+.3g}"

    def ci(pair: tuple[float, float], fmt) -> str:  # noqa: ANN001
        return "" if any(v is None or v != v for v in pair) else f" [{fmt(pair[0])}, {fmt(pair[1])}]"

    traced = "" if t.direction == "up" else ", traced downwards"
    out.print(f"[bold]{_u(t.behavior)}[/] ({t.where}{traced}) in run [bold]{_u(t.run)}[/]: {t.rollouts:,} rollouts, "
              f"{_trace_level(t, pct)}, {t.groups_used:,} of {t.groups:,} groups comparable "
              f"(compared within {t.group_key})", highlight=False)
    table = Table(title="reward signals, by selection pressure")
    for col in ("signal", "pressure share", "paired preference", "q", "effect (with - without)",
                "equally-correct pairs", "applies"):
        table.add_column(col, overflow="fold")
    for s in t.signals:
        label = s.signal + (" (outcome)" if s.outcome else "") + (" (total)" if s.kind == "total" else "")
        style = "bold" if s.significant and s.kind != "total" else ""
        table.add_row(f"[{style}]{_u(label)}[/]" if style else _u(label),
                      pct(s.pressure_share) + ci(s.pressure_share_ci, pct),
                      pct(s.paired_preference) + ci(s.paired_preference_ci, pct),
                      "-" if s.q_value != s.q_value else f"{s.q_value:.2g}",
                      num(s.effect) + ci(s.effect_ci, num),
                      pct(s.matched_preference) + ci(s.matched_preference_ci, pct), pct(s.applies))
    out.print(table)
    top = t.top.signal
    for title, rows in (("condition", t.by_condition), ("task", t.by_task)):
        if len(rows) < 2 and title == "task":
            continue
        table = Table(title=f"by {title}: who pays for it ({top})")
        for col in (title, "rollouts", "prevalence", f"share of {top}'s push", f"{top} paired preference"):
            table.add_column(col, overflow="fold")
        for name, row in sorted(rows.items(), key=lambda kv: -(kv[1]["pressure_share"] if kv[1]["pressure_share"]
                                                              == kv[1]["pressure_share"] else -1)):
            table.add_row(_u(name), f"{row['rollouts']:,}", pct(row["prevalence"]), pct(row["pressure_share"]),
                          pct(row["paired_preference"][top]) + ci(tuple(row["paired_preference_ci"][top]), pct))
        out.print(table)
    out.print(f"[{SEVERITY_STYLE[t.severity]}]{t.severity}[/]: {_u(t.verdict)}", highlight=False)
    for w in t.warnings:
        out.print(f"[yellow]warning:[/] {_u(w)}", highlight=False)
    for e in t.evidence[:4]:
        out.print(f"  {_u(e.note)} [dim]{_u(e.rollout_id)}[/]: {_u(repr(e.text[:160]))}", highlight=False)


@app.command("probe-grader")
def probe_grader_cmd(
    grader: Annotated[str, typer.Argument(help="The grader as MODULE:FUNCTION (module importable from the current "
                                          "directory, or path/to/file.py:function).")],
    source: Annotated[str, typer.Argument(help="A run directory (ingested into the store first) or a run name "
                                          "in --store.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the probe result JSON here.")] = None,
    signature: Annotated[str, typer.Option("--signature", help="trl: f(prompts, completions, **kw); verl: "
                                           "compute_score(data_source, solution_str, ground_truth, extra_info); "
                                           "auto: guess from the parameter names.")] = "auto",
    samples: Annotated[int, typer.Option("--samples", help="Rollouts (with reasoning) to probe.")] = 200,
    repeats: Annotated[int, typer.Option("--repeats", help="Scorings of each original, to measure the "
                                         "grader's own noise (>= 3).")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Sampling and counterfactual seed.")] = 0,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds one grader call may take.")] = 120.0,
    think_tags: TagsOpt = None,
    store: StoreOpt = Path(".rlaudit"),
) -> None:
    """Call a grader on stored rollouts with the reasoning removed, swapped and edited: does its score move?"""
    from .cot.probe import ProbeConfig, probe_grader

    if samples < 2:
        raise RlauditError("--samples must be at least 2")
    if timeout <= 0:
        raise RlauditError("--timeout must be > 0 seconds")
    config = ProbeConfig(signature=signature, samples=samples, repeats=repeats, seed=seed,
                         tags=_think_tags(think_tags), timeout=timeout)
    with console.status("probing grader", spinner="dots"):
        result = probe_grader(grader, source, _store(store), config, json_out)
    verdict = "[bold red]CoT-sensitive[/]" if result["cot_sensitive"] else "[green]not CoT-sensitive[/]"
    lo, hi = result["fraction_moved_ci"]
    console.print(f"{_u(grader)} on {_u(result['run'])} ({result['samples']} rollouts): {verdict} (p={result['p_value']:.2g}); "
                  f"moved beyond noise: {result['fraction_moved']:.1%} [{lo:.1%}, {hi:.1%}], "
                  f"noise {'none (deterministic)' if result['noise']['deterministic'] else 'measured'}")
    table = Table(show_lines=False)
    for col in ("variant", "moved", "mean |delta|", "p"):
        table.add_column(col)
    for name, v in result["variants"].items():
        table.add_row(name, f"{v['moved_beyond_noise']}/{v['n']}", f"{v['mean_abs_delta']:.3g}", f"{v['p_value']:.2g}")
    console.print(table)
    if result["static_check"]["warning"]:
        console.print(f"[yellow]warning:[/] {_u(result['static_check']['warning'])}", highlight=False)
    if result["errors"]:
        console.print(f"[yellow]warning:[/] the grader failed on {result['errors']} call(s): {_u(result['first_error'])}",
                      highlight=False)
    if json_out:
        console.print(f"probe result: {_u(json_out)}")


@app.command("monitorability")
def monitorability_cmd(
    source: Annotated[str, typer.Argument(help="A run directory/file to ingest, or the name of a stored run.")],
    label: Annotated[Optional[str], typer.Option("--label", help="Behaviour spec on the answer that marks a "
                                                 "misbehaving rollout (outcome property), e.g. 're:special.?case' "
                                                 "or 'judge:action:RUBRIC'.")] = None,
    label_signal: Annotated[Optional[str], typer.Option("--label-signal", help="Or: a reward signal; value > "
                                                        "--label-threshold is positive.")] = None,
    label_threshold: Annotated[float, typer.Option("--label-threshold")] = 0.0,
    monitor: Annotated[Optional[str], typer.Option("--monitor", help="Monitor: a behaviour spec read in each "
                                                   "view (default: the label spec) or 'judge:RUBRIC'.")] = None,
    llm: Annotated[Optional[str], typer.Option("--llm", help="LLM for judge monitors: openai:MODEL@URL, "
                                               "transformers:PATH or scripted:MODULE:FUNCTION.")] = None,
    verbaliser: Annotated[Optional[str], typer.Option(
        "--verbaliser", help="A separate judge of verbalisation (does the reasoning state the behaviour?): a "
                             "spec or judge:cot:RUBRIC read on the reasoning of positives (default: the CoT-only "
                             "monitor).")] = None,
    price: Annotated[Optional[str], typer.Option("--price", help="USD per 1M tokens, INPUT/OUTPUT.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", help="LLM calls in flight.")] = 8,
    sample_per_cell: Annotated[int, typer.Option("--sample-per-cell", help="Judge monitors: rollouts per (step, "
                                                 "condition, label).")] = 16,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the LLM requests and token counts; send "
                                          "nothing.")] = False,
    treated: Annotated[Optional[list[str]], typer.Option("--treated", help="Intervention: treated condition "
                                                         "(repeatable).")] = None,
    control: Annotated[Optional[list[str]], typer.Option("--control", help="Intervention: control condition "
                                                         "(repeatable).")] = None,
    onset: Annotated[Optional[int], typer.Option("--onset", help="Exposure onset step (default: from the "
                                                 "cot_grading scan).")] = None,
    exposed: Annotated[Optional[list[str]], typer.Option("--exposed", help="Exposed condition, with --onset "
                                                         "(repeatable).")] = None,
    store: StoreOpt = Path(".rlaudit"),
    run: Annotated[Optional[str], typer.Option("--run", help="Run name when SOURCE is ingested.")] = None,
    format: FormatOpt = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the finding as JSON here.")] = None,
    max_step: Annotated[Optional[int], typer.Option("--max-step", help="Use only steps <= this.")] = None,
    boot: Annotated[int, typer.Option("--boot", help="Bootstrap replicates.")] = 1000,
) -> None:
    """CoT monitorability of a run: g-mean² per view, verbalisation trend, and whether CoT exposure changed it."""
    from .detectors import AuditConfig, run_detectors
    from .findings import jsonable

    if not (label or label_signal):
        raise RlauditError("give --label SPEC or --label-signal NAME (what counts as misbehaviour)")
    if onset is None and exposed:
        raise RlauditError("--exposed needs --onset")
    st = _store(store)
    name = _run_of_source(st, source, run, format)
    options: dict = {"label": label, "label_signal": label_signal, "label_threshold": label_threshold,
                     "monitor": monitor, "n_boot": boot, "sample_per_cell": sample_per_cell,
                     "verbaliser": verbaliser}
    if llm:
        from .llm import client_from_spec

        options["client"] = client_from_spec(llm, cache=st.root / "llm-cache.sqlite", concurrency=concurrency,
                                             price=price, dry_run=dry_run)
        if (label or "").startswith("judge:"):  # judge labels are behaviour specs: they use the default client
            from .llm import set_default_client

            set_default_client(options["client"])
    if treated or control:
        options["intervention"] = {"treated": treated or [], "control": control or []}
    if onset is not None:
        options["exposure"] = {"onset": onset, "conditions": exposed or []}
    config = AuditConfig(max_step=max_step, detectors=["monitorability"], options={"monitorability": options})
    with console.status("monitorability", spinner="dots"):
        findings = [f for f in run_detectors(st, name, config) if f.kind in ("monitorability", "audit_error")]
    if "client" in options:
        console.print(options["client"].accounting.format(), highlight=False)
    for f in findings:
        if f.kind == "audit_error":
            raise RlauditError(f.title)
        out.print(f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/] {f.title}", highlight=False)
        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"

        table = Table(title=f"monitor {f.fields['monitor']['spec']!r} ({f.fields['monitor']['kind']})")
        for col in ("view", "TPR", "TNR", "g-mean²", "95% CI", "exposure DiD (g-mean²)", "MDE"):
            table.add_column(col)
        for view, v in f.fields["views"].items():
            g = v["g_mean2"]
            dd = (v.get("exposure") or {}).get("g_mean2") or {}
            table.add_row(view, fmt(v["tpr"]["estimate"]), fmt(v["tnr"]["estimate"]), fmt(g["estimate"]),
                          f"[{fmt(g['ci'][0])}, {fmt(g['ci'][1])}]",
                          "-" if not dd else f"{fmt(dd['estimate'])} [{fmt(dd['ci'][0])}, {fmt(dd['ci'][1])}]",
                          "-" if not dd else fmt(dd.get("mde")))
        out.print(table)
        verbal = f.fields.get("verbalisation")
        if verbal:
            rate = verbal["rate"]
            out.print(f"verbalisation (by {verbal['by']}): {fmt(rate['estimate'])} [{fmt(rate['ci'][0])}, "
                      f"{fmt(rate['ci'][1])}], trend {verbal['trend']} (p={verbal['trend_p_value']:.2g}); "
                      f"verdict: {f.fields['verdict'].replace('_', ' ')}", highlight=False)
        for grader, g in (f.fields.get("by_grader") or {}).items():
            d = g["g_mean2"]
            out.print(f"grader {grader}: onset {g['onset']}, exposed {g['exposed']}: g-mean² DiD {fmt(d['estimate'])} "
                      f"[{fmt(d['ci'][0])}, {fmt(d['ci'][1])}], q={fmt(g['q_value'])}, "
                      f"{g['verdict'].replace('_', ' ')}", highlight=False)
        if json_out:
            from .store import atomic_write_text

            atomic_write_text(json_out, json.dumps(jsonable(f.to_json()), indent=2, ensure_ascii=False))
            console.print(f"monitorability: {json_out}")
    if not findings:
        out.print("no labelled rollouts with the behaviour: nothing to measure")


# ---------------------------------------------------------------- export (data without a behaviour)
@app.command("export")
def export_cmd(
    source: Annotated[str, typer.Argument(help="A run directory/file to ingest, or the name of a stored run.")],
    out_path: Annotated[Path, typer.Option("--out", help="File to write (.jsonl or .parquet).")],
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", "-x", help="Behaviour spec whose rollouts "
                                                         "are left out: a term, 're:REGEX', 'style:NAME' or "
                                                         "'module:function'. Repeatable.")] = None,
    format: Annotated[Optional[str], typer.Option("--format", help="jsonl or parquet (default: from the --out "
                                                  "suffix, else jsonl).")] = None,
    where: Annotated[str, typer.Option("--where", help="Text the behaviours are looked for in: completion "
                                       "(reasoning and answer), answer or reasoning.")] = "completion",
    split: Annotated[Optional[str], typer.Option("--split", help="Only this split (train or eval; default: "
                                                 "all).")] = None,
    store: StoreOpt = Path(".rlaudit"),
    run: Annotated[Optional[str], typer.Option("--run", help="Run name when SOURCE is ingested.")] = None,
    source_format: Annotated[Optional[str], typer.Option("--source-format", help="Log layout of SOURCE when it "
                                                         "is ingested (detected when omitted).")] = None,
) -> None:
    """Write a run's rollouts without those that show a behaviour (canonical columns), e.g. for SFT reuse."""
    from .export import FORMATS, WHERE, exclusion_behavior, export_run

    if not exclude:
        raise RlauditError("give at least one --exclude BEHAVIOR (e.g. --exclude goblin); without it the export "
                           "would copy the run unchanged")
    if format is not None and format not in FORMATS:
        raise RlauditError(f"--format must be jsonl or parquet, got {format!r}")
    if where not in WHERE:
        raise RlauditError(f"--where must be one of {', '.join(WHERE)}, got {where!r}")
    if split not in (None, "train", "eval"):
        raise RlauditError(f"--split must be train or eval, got {split!r}")
    for spec in exclude:
        exclusion_behavior(spec)  # a bad spec fails before anything is ingested
    _check_output(out_path, "--out")
    st = _store(store)
    name = _run_of_source(st, source, run, source_format)
    with console.status(f"exporting {name}", spinner="dots"):
        result = export_run(st, name, out_path, exclude, where=where, format=format, split=split)
    excluded = ", ".join(f"{spec!r}: {n:,}" for spec, n in result.excluded.items())
    dropped = result.rollouts - result.written
    console.print(f"{result.path}: {result.written:,} of {result.rollouts:,} rollouts of run {name} "
                  f"({result.format}); {dropped:,} left out ({excluded}; in the {where})", highlight=False,
                  markup=False, soft_wrap=True)


# ---------------------------------------------------------------- emerging (behaviour discovery)
@app.command("emerging")
def emerging_cmd(
    source: Annotated[str, typer.Argument(help="A run directory/file to ingest, or the name of a stored run.")],
    store: StoreOpt = Path(".rlaudit"),
    run: Annotated[Optional[str], typer.Option("--run", help="Run name when SOURCE is ingested.")] = None,
    format: FormatOpt = None,
    max_step: Annotated[Optional[int], typer.Option("--max-step", help="Use only steps <= this.")] = None,
    where: Annotated[Optional[str], typer.Option("--where", help="Only behaviours in the answer or the "
                                                 "reasoning.")] = None,
    min_severity: Annotated[str, typer.Option("--min-severity", help="Hide findings below this severity "
                                              "(info, low, medium, high).")] = "low",
    limit: Annotated[int, typer.Option("--limit", help="Rows to show.")] = 30,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the findings as JSON here.")] = None,
) -> None:
    """Behaviours whose prevalence rose (or fell) over training, ranked, and the conditions they spread to."""
    from .detectors import run_detectors
    from .findings import SEVERITY_RANK, jsonable, rank

    if where not in (None, "answer", "reasoning"):
        raise RlauditError(f"--where must be 'answer' or 'reasoning', got {where!r}")
    if min_severity not in SEVERITY_RANK:
        raise RlauditError(f"--min-severity must be one of {', '.join(SEVERITY_RANK)}, got {min_severity!r}")
    st = _store(store)
    name = _run_of_source(st, source, run, format)
    with console.status("discovering behaviours", spinner="dots"):
        found = run_detectors(st, name, _config(max_step=max_step, detectors=["emerging", "generalization"]))
    from .remedies import add_remedies

    add_remedies(found)
    failed = [f for f in found if f.kind == "audit_error"]
    for f in failed:
        console.print(f"[red]error:[/] {_u(f.title, 500)}", highlight=False)
    keep = [f for f in rank(found) if f.kind in ("emerging_behavior", "generalization")
            and SEVERITY_RANK[f.severity] >= SEVERITY_RANK[min_severity] and (where is None or f.get("where") == where)]
    if keep or not failed:  # a detector that failed found nothing: not "no emerging behaviours"
        _print_emerging([f for f in keep if f.kind == "emerging_behavior"], [f for f in keep if f.kind ==
                                                                             "generalization"], name, limit)
    if json_out:
        from .store import atomic_write_text

        atomic_write_text(json_out, json.dumps(jsonable([f.to_json() for f in keep]), indent=2, ensure_ascii=False))
        console.print(f"findings: {_u(json_out)}")
    if failed:  # as `audit`: an incomplete answer must not pass for a clean one
        console.print(f"[bold red]error:[/] {len(failed)} detector run(s) failed, the answer is incomplete",
                      highlight=False)
        raise typer.Exit(GATE_INCOMPLETE)


def _print_emerging(behaviours: list[Finding], spread: list[Finding], run: str, limit: int) -> None:
    def pct(x: float | None, numeric: bool = False) -> str:
        return "-" if x is None else (f"{x:.3g}" if numeric else f"{100 * x:.1f}%")

    if not behaviours:
        out.print(f"[green]No emerging behaviours in run {_u(run)}.[/]")
        return
    table = Table(title=f"emerging behaviours in {_u(run)} ({len(behaviours)})")
    for col in ("severity", "behaviour", "where", "start -> end", "ratio [95% CI]", "q", "onset", "condition "
                "(mentions / traffic)"):
        table.add_column(col, overflow="fold")
    for f in behaviours[:limit]:
        num = bool(f.get("numeric"))
        lo, hi = f["ratio_ci"]
        by = f.get("by_condition") or {}
        top = max(by.items(), key=lambda kv: kv[1]["mention_share"] - kv[1]["traffic_share"], default=None)
        cond = f"{top[0]} ({pct(top[1]['mention_share'])} / {pct(top[1]['traffic_share'])})" if top and len(by) > 1 \
            else "-"
        n_terms = int(f.get("n_terms") or len(f.get("terms") or []))  # the JSON's count, not the list shown
        label = f["behavior"] + (f" (+{n_terms - 1} term{'s' if n_terms > 2 else ''})" if n_terms > 1 else "")
        table.add_row(f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/]", _u(label), _u(f["where"]),
                      f"{pct(f['prevalence_start'], num)} -> {pct(f['prevalence_end'], num)}",
                      f"{f['ratio']:.2f} [{lo:.2f}, {hi:.2f}]", f"{f['q_value']:.2g}",
                      str(f.get("onset_step", "-")), _u(cond))
    out.print(table)
    if len(behaviours) > limit:
        out.print(f"... and {len(behaviours) - limit} more (see --json)")
    if spread:
        table = Table(title="spread across conditions")
        for col in ("severity", "behaviour", "source", "target", "target start -> end", "r (lag)", "why source"):
            table.add_column(col, overflow="fold")
        for f in spread[:limit]:
            why = f"reward {f['rewarded_by']}" if f.get("rewarded_by") else "mentions >> traffic"
            table.add_row(f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/]", _u(f["behavior"]),
                          _u(f["source_condition"]), _u(f["target_condition"]),
                          f"{pct(f['target_prevalence_start'])} -> {pct(f['target_prevalence_end'])}",
                          f"{f['correlation']:.2f} ({f['lag_steps']:g})", why)
        out.print(table)


# ---------------------------------------------------------------- simulate and bench (model organisms)
@app.command("simulate")
def simulate_cmd(
    scenario: Annotated[Optional[str], typer.Argument(help="Scenario name (see --list).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Directory to write the run into.")] = None,
    format: Annotated[str, typer.Option("--format", help="canonical, trl, verl or prime-rl.")] = "canonical",
    steps: Annotated[Optional[int], typer.Option(help="Training steps (default 60).")] = None,
    prompts: Annotated[Optional[int], typer.Option(help="Prompts per step (default 16).")] = None,
    generations: Annotated[Optional[int], typer.Option(help="Generations per prompt (default 8).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (runs are deterministic per seed).")] = 0,
    list_: Annotated[bool, typer.Option("--list", help="List the scenarios and exit.")] = False,
) -> None:
    """Simulate an RL run with an implanted process mistake (or a clean control) and its ground truth."""
    from .organisms import SCENARIOS, simulate

    if list_ or scenario is None:
        table = Table(title="scenarios")
        table.add_column("scenario")
        table.add_column("implanted")
        table.add_column("description", overflow="fold")
        for s in SCENARIOS.values():
            implants = sorted({i.kind for i in s.build(60).implants}) or ["clean"]
            table.add_row(s.name, ", ".join(implants), s.description)
        out.print(table)
        if scenario is None and not list_:
            raise RlauditError("give a SCENARIO (or --list)")
        return
    if out_dir is None:
        raise RlauditError("--out DIR is required")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RlauditError(f"--out {out_dir} is not empty: a simulated run is written into a directory of its "
                           "own (files of another run or format would be read as part of it); choose a new "
                           "directory or remove this one first")
    gt = simulate(scenario, out_dir, format=format, steps=steps, prompts=prompts, generations=generations,
                  seed=seed)
    console.print(f"[bold]{scenario}[/] ({format}): {gt.steps} steps x {gt.prompts} prompts x {gt.generations} "
                  f"generations -> {out_dir}")
    for i in gt.issues:
        what = i.grader or i.signal or ""
        console.print(f"  implanted {i.kind}: {'/'.join(i.terms) or what} (onset step {i.onset_step})",
                      highlight=False)
    for i in gt.legitimate:
        console.print(f"  legitimate: {'/'.join(i.terms)} from {i.signal}", highlight=False)
    console.print(f"ground truth: {_u(Path(out_dir) / 'ground_truth.json')}")


@app.command("bench")
def bench_cmd(
    scenarios: Annotated[Optional[list[str]], typer.Option("--scenarios", help="Only these scenarios "
                                                           "(repeatable or comma-separated).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON here.")] = None,
    size: Annotated[str, typer.Option("--size", help="default (60x16x8): the figures quoted as the auditor's "
                                      "quality; small (30x8x8): a smoke test that the bench runs, too little "
                                      "data for its recall and precision to mean anything; large (200x64x8, "
                                      "102,400 rollouts) and xlarge (200x640x8, 1,024,000): more data must not "
                                      "do worse (see the onset error column; use --no-latency, --scenarios).")
                 ] = "default",
    format: Annotated[str, typer.Option("--format", help="Trainer format the runs are written in.")] = "canonical",
    seed: Annotated[int, typer.Option(help="Simulation seed.")] = 0,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Measure detection latency "
                                          "(re-audits growing prefixes of each run).")] = True,
) -> None:
    """Score the auditor on the model organisms: recall, false findings, attribution, latency."""
    from .organisms.bench import bench, print_bench

    names = [n.strip() for item in scenarios or [] for n in item.split(",") if n.strip()] or None
    with console.status("bench", spinner="dots") as status:
        result = bench(names, size=size, format=format, seed=seed, latency=latency,
                       on_scenario=lambda n: status.update(f"bench: {n}"))
    print_bench(result, out)
    if json_out:
        import json as _json

        from .findings import jsonable
        from .store import atomic_write_text

        atomic_write_text(json_out, _json.dumps(jsonable(result.to_json()), indent=1))
        console.print(f"results: {_u(json_out)}")


@app.command("watch")
def watch_cmd(
    source: Annotated[Path, typer.Argument(help="Run directory a trainer is writing (TRL output dir, verl "
                                           "rollout_data_dir, prime-rl output dir...). May not exist yet.")],
    store: StoreOpt = Path(".rlaudit"),
    run: Annotated[Optional[str], typer.Option("--run", help="Run name (default: the directory's name).")] = None,
    format: FormatOpt = None,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between polls.")] = 5.0,
    until_idle: Annotated[Optional[float], typer.Option("--until-idle", help="Stop after this many seconds "
                                                        "without new rows (default: run until Ctrl-C).")] = None,
    max_polls: Annotated[Optional[int], typer.Option("--max-polls", help="Stop after this many polls.")] = None,
    alerts: Annotated[Optional[Path], typer.Option("--alerts", help="Append alerts to this JSONL file (also "
                                                   "read back, so a restarted watch does not repeat them).")] = None,
    webhook: Annotated[Optional[str], typer.Option("--webhook", help="POST each alert as JSON to this URL.")] = None,
    min_severity: Annotated[str, typer.Option("--min-severity", help="Alert threshold: info, low, medium, "
                                              "high.")] = "medium",
    every: Annotated[int, typer.Option("--every", help="Run the heavy detectors every N steps.")] = 10,
    detector: Annotated[Optional[list[str]], typer.Option("--detector", help="Heavy detectors to run "
                                                          "(default: all). Repeatable.")] = None,
    foreground: Annotated[bool, typer.Option("--foreground", help="Run heavy audits in the polling thread "
                                             "instead of a background thread.")] = False,
    strict: StrictOpt = False,
    think_tags: TagsOpt = None,
    grader_input: GraderOpt = None,
    condition: ConditionOpt = None,
    group_size: GroupSizeOpt = None,
) -> None:
    """Follow SOURCE while a trainer writes it: ingest new files, audit, alert. Stops on Ctrl-C."""
    import logging

    from .live import LiveConfig, make_alerts, watch

    options = read_options(strict, think_tags, grader_input, None, None, group_size)
    rules = _rules(condition)
    manager = make_alerts(alerts, webhook, min_severity)
    config = LiveConfig(every=every, detectors=detector, background=not foreground)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    waiting: list[str] = []

    def on_poll(status) -> None:  # noqa: ANN001
        if status.waiting and status.waiting not in waiting:
            waiting.append(status.waiting)
            console.print(f"waiting: {_u(status.waiting)}", highlight=False)
        elif status.rows_added:
            console.print(f"poll {status.poll}: +{status.rows_added:,} rows, latest step {status.latest_step}",
                          highlight=False)

    console.print(f"watching {_u(source)} (every {interval:g} s; Ctrl-C to stop)", highlight=False)
    result = watch(source, _store(store), run, format=format, options=options, conditions=rules, interval=interval,
                   until_idle=until_idle, max_polls=max_polls, config=config, alerts=manager, on_poll=on_poll)
    steps = f"steps {result.steps[0]}-{result.steps[1]}" if result.steps else "no steps"
    out.print(f"run {_u(result.run)}: {result.rows:,} rows ({steps}) in {result.polls} poll(s), "
              f"{len(result.alerts)} alert(s); stopped by {result.stopped_by}", highlight=False)
    for a in result.alerts:
        out.print(f"  [{SEVERITY_STYLE[a.severity]}]{a.severity}[/] step {a.step}: {_u(f'[{a.kind}] {a.title}', 500)}",
                  highlight=False)
    if result.auditor and result.auditor.errors:
        console.print(f"[yellow]warning:[/] {len(result.auditor.errors)} live-audit error(s), first: "
                      f"{_u(result.auditor.errors[0])}", highlight=False)


@app.command("mcp")
def mcp_cmd(
    store: StoreOpt = Path(".rlaudit"),
    transport: Annotated[str, typer.Option("--transport", help="stdio (for a client that starts the server) or "
                                           "http (streamable HTTP at http://HOST:PORT/mcp).")] = "stdio",
    host: Annotated[str, typer.Option("--host", help="HTTP address to bind; anything but loopback needs "
                                      "--token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="HTTP port.")] = 8765,
    token: Annotated[Optional[str], typer.Option("--token", envvar="RLAUDIT_MCP_TOKEN", help="Bearer token "
                                                 "every HTTP request must carry.")] = None,
    allow_module: Annotated[Optional[list[str]], typer.Option("--allow-module", help="A Python module whose "
                            "graders (probe_grader) and predicates (behaviour specs) the tools may import. "
                            "Repeatable.")] = None,
    findings_json: Annotated[Optional[Path], typer.Option("--findings", help="Findings JSON of `rlaudit audit "
                             "--json` to serve for the runs it covers (other runs are audited on first use).")] = None,
) -> None:
    """Serve the store to coding agents over MCP: read-only tools with small answers (docs/agents.md)."""
    from .mcp.server import serve

    serve(store, transport=transport, host=host, port=port, token=token, grader_modules=allow_module,
          findings_json=str(findings_json) if findings_json else None)


# ---------------------------------------------------------------- fleet (src/rlaudit/fleet/cli.py)
from .fleet.cli import fleet_app  # noqa: E402 - after the shared consoles it uses

app.add_typer(fleet_app, name="fleet")


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(ClickException, Abort, Exit) classes as the installed typer raises them.

    Typer 0.2x vendors its own copy of click (`typer._click`) whose exceptions are not click's, so catching
    `click.exceptions.ClickException` misses every usage error. The classes are found from typer's public
    `typer.BadParameter` (whatever click it uses), plus click's own when it is installed.
    """
    bases = [c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"]
    modules = {sys.modules[c.__module__] for c in bases}
    try:
        import click.exceptions as click_exceptions

        modules.add(click_exceptions)
    except ImportError:  # typer without click
        pass

    def classes(name: str) -> tuple[type, ...]:
        return tuple({getattr(m, name) for m in modules if isinstance(getattr(m, name, None), type)})

    return classes("ClickException"), classes("Abort") + (typer.Abort,), classes("Exit") + (typer.Exit,)


def _usage_error_line(exc: Exception) -> str:
    """One line for a click/typer usage error: the message and where to read the usage."""
    message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None and getattr(ctx, "command_path", "") else "rlaudit"
    return f"{message} (see `{path} --help`)"


def run() -> None:
    """The `rlaudit` script and `python -m rlaudit`: `main`, then an exit without the interpreter's teardown.

    After an audit, tearing the interpreter down (freeing every module's objects, the pooled DuckDB databases, the
    compiled kernels) took 0.36-0.50 s of a 3.9-4.4 s `rlaudit audit` of 100,000 rollouts (docs/performance.md,
    session 49), time in which the user waits for nothing. So once the command is done, the process does what
    a normal exit does that anyone can observe (threading's exit hooks and the join of the threads that are not
    daemons, the `atexit` callbacks, the flush of stdout and stderr) and ends with `os._exit`. `main` itself
    returns or raises as before, for callers in the same process (tests, notebooks). An exception that is not
    SystemExit propagates: its traceback and the usual teardown."""
    try:
        main()
    except SystemExit as exc:
        _exit_now(exc.code)
    _exit_now(0)


def _exit_now(code: object) -> None:
    """Exit with `code` as `SystemExit(code)` would (None: 0; a string: printed to stderr, 1), skipping the
    interpreter's teardown: see `run`."""
    import atexit
    import os
    import threading

    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None:  # an interpreter without it (CPython has it from 3.4 to 3.13): its own exit, teardown too
        sys.exit(code)
    shutdown()  # what the interpreter calls first when it exits: threading's own exit hooks (an executor left open
    # tells its idle workers to stop), then a join of every non-daemon thread; joining them here hung on such a pool
    atexit._run_exitfuncs()  # logging's shutdown, temporary directories, coverage's data file in tests
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`| head`), a stream already closed
            code = code or 120  # what the interpreter exits with when it cannot flush stdout
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors (ours and usage errors) become one `error:` line and exit 2."""
    argv = _resample_argv(list(sys.argv[1:] if argv is None else argv))
    try:
        from .memory import prepare

        prepare()  # under a memory budget, before any thread starts (rlaudit.memory)
        code = app(args=argv, prog_name="rlaudit", standalone_mode=False)
    except RlauditError as exc:
        console.print(f"[bold red]error:[/] {_u(exc, 5000)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # usage errors arrive here in non-standalone mode, as typer's own click classes
        click_exc, abort_exc, exit_exc = _click_exceptions()
        if isinstance(exc, exit_exc):
            sys.exit(getattr(exc, "exit_code", 0))
        if isinstance(exc, abort_exc):
            sys.exit(130)
        if not isinstance(exc, click_exc):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `rlaudit` or `rlaudit COMMAND`: the help itself
            console.print(exc.format_message(), markup=False, highlight=False)
            sys.exit(2)
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(_usage_error_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    if isinstance(code, int) and code:  # typer returns Exit codes (e.g. Ctrl-C: 130) in non-standalone mode
        sys.exit(code)


def _resample_argv(argv: list[str]) -> list[str]:
    """`rlaudit resample TRANSCRIPTS ...` means `rlaudit resample run TRANSCRIPTS ...`."""
    from .evals.cli import SUBCOMMANDS

    if len(argv) >= 2 and argv[0] == "resample" and argv[1] not in SUBCOMMANDS + ("-h", "--help"):
        return ["resample", "run", *argv[1:]]
    return argv


from .evals.cli import app as _resample_app  # noqa: E402 - light (typer only)

app.add_typer(_resample_app, name="resample")

if __name__ == "__main__":
    main()
