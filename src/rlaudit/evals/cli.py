"""`rlaudit resample`: run, compare, backtest (a Typer sub-app mounted by `rlaudit.cli`).

`rlaudit resample TRANSCRIPTS ...` is `rlaudit resample run TRANSCRIPTS ...` (`rlaudit.cli.main` inserts `run`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import RlauditError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Resampling evals: regenerate the last assistant turn of real transcripts with candidate "
                       "models (tools simulated), compare behaviour rates per category, backtest forecasts.")
console = Console(stderr=True, width=160)
out = Console(width=160)
SUBCOMMANDS = ("run", "compare", "backtest")


def _named(spec: str, what: str) -> tuple[str, str]:
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest or any(c in name for c in ":/#@"):
        raise RlauditError(f"{what} {spec!r}: expected NAME=BACKEND, e.g. candidate=openai://HOST:PORT/v1:MODEL")
    return name, rest


@app.command("run")
def run_cmd(
    transcripts: Annotated[str, typer.Argument(help="Chat JSONL file or directory of them (messages with tool "
                                               "calls), or store:RUN for a stored run's rollouts.")],
    model: Annotated[list[str], typer.Option("--model", help="NAME=BACKEND candidate (openai://HOST[:PORT]/"
                                             "v1:MODEL, openai:MODEL@URL, transformers:PATH, "
                                             "scripted:MODULE:FUNCTION). Repeatable.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Results directory (Parquet, summary.md).")],
    behavior: Annotated[Optional[list[str]], typer.Option("--behavior", help="Behaviour spec scored on each "
                                                          "turn (term, re:, style:, module:fn, judge:...).")] = None,
    judge: Annotated[Optional[list[str]], typer.Option("--judge", help="Judge rubric: judge:[VIEW:]RUBRIC (views "
                                                       "cot, action, all, conversation), a rubric file, or "
                                                       "inline text. Repeatable.")] = None,
    judge_model: Annotated[Optional[str], typer.Option("--judge-model", help="Backend for judges (default "
                                                       "$RLAUDIT_LLM).")] = None,
    judge_max_chars: Annotated[int, typer.Option("--judge-max-chars", help="Characters a judge with view "
                                                 "`conversation` sees at most (older history is left out first)."
                                                 )] = 24_000,
    tool_simulator: Annotated[Optional[str], typer.Option("--tool-simulator", help="[NAME=]BACKEND that writes "
                                                          "outputs of tool calls the transcript did not answer.")
                              ] = None,
    samples: Annotated[int, typer.Option("--samples", help="Resamples per cut and candidate.")] = 4,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Read at most this many transcripts.")] = None,
    cut: Annotated[str, typer.Option("--cut", help="last: the last assistant turn; all: every one.")] = "last",
    max_steps: Annotated[int, typer.Option("--max-steps", help="Tool rounds per resample before it is cut "
                                           "off (truncated).")] = 3,
    temperature: Annotated[float, typer.Option("--temperature")] = 1.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 1024,
    concurrency: Annotated[int, typer.Option("--concurrency", help="LLM calls in flight per backend.")] = 8,
    price: Annotated[Optional[str], typer.Option("--price", help="USD per 1M tokens, INPUT/OUTPUT.")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Response cache (default OUT/llm-cache.sqlite): "
                                                  "a rerun repeats no call.")] = None,
    store: Annotated[Path, typer.Option("--store", envvar="RLAUDIT_STORE", help="Store for store:RUN.")
                     ] = Path(".rlaudit"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the first step's candidate requests with "
                                          "their token counts; send nothing.")] = False,
) -> None:
    """Cut transcripts at the last assistant turn, regenerate it with each candidate, score and compare."""
    from ..llm import client_from_spec, set_default_client
    from . import judge_spec, run_resample
    from .results import rates_markdown

    specs = list(behavior or []) + [judge_spec(j) for j in judge or []]
    if not specs:
        raise RlauditError("give at least one --behavior SPEC or --judge RUBRIC")
    if samples < 1 or max_steps < 0:
        raise RlauditError("--samples must be >= 1 and --max-steps >= 0")
    if out_dir.exists() and not out_dir.is_dir():
        raise RlauditError(f"--out {out_dir}: not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = cache or out_dir / "llm-cache.sqlite"
    candidates = {}
    for spec in model:
        name, backend = _named(spec, "--model")
        if name == "original":
            raise RlauditError("--model: 'original' names the transcripts' own turns; choose another name")
        candidates[name] = client_from_spec(backend, cache=cache, concurrency=concurrency, price=price,
                                            dry_run=dry_run)
    simulator = None
    if tool_simulator:
        backend = tool_simulator.partition("=")[2] if "=" in tool_simulator.split(":")[0] else tool_simulator
        simulator = client_from_spec(backend, cache=cache, concurrency=concurrency, price=price)
    if judge_model:
        set_default_client(client_from_spec(judge_model, cache=cache, concurrency=concurrency, price=price))
    st = None
    if transcripts.startswith("store:"):
        from ..store import Store

        st = Store(store)
    started = time.perf_counter()

    def progress(name, step, active, client):
        acc = client.accounting
        secs = max(time.perf_counter() - started, 1e-9)
        console.print(f"resample {name}: step {step} done ({active:,} continuations); {acc.calls:,} calls "
                      f"({acc.calls / secs:.1f}/s, {acc.cache_hits:,} cached), {acc.prompt_tokens:,}+"
                      f"{acc.completion_tokens:,} tokens, ${acc.cost_usd:.4f}", highlight=False)

    result = run_resample(transcripts, candidates, specs, samples=samples, out=out_dir, simulator=simulator,
                          cut=cut, limit=limit, max_steps=max_steps, temperature=temperature,
                          max_tokens=max_tokens, store=st, progress=progress, judge_max_chars=judge_max_chars)
    m = result["manifest"]
    if dry_run:
        for name, c in candidates.items():
            console.print(f"{name} (dry run): {c.accounting.format()}", highlight=False)
        return
    for name, c in candidates.items():
        console.print(f"{name}: {c.accounting.format()}", highlight=False)
    if simulator is not None:
        console.print(f"tool simulator: {simulator.accounting.format()}", highlight=False)
    out.print(f"{m['transcripts']:,} transcripts, {m['cuts']:,} cuts, {samples} samples per cut; "
              f"{m['simulated_calls']:,} simulated tool outputs, {m['truncated']:,} truncated, {m['errors']:,} "
              "failed", highlight=False)
    out.print(rates_markdown(result["rates"], dims=("all",)), highlight=False, markup=False)
    console.print(f"resample: {out_dir} (samples.parquet, rates.parquet, evidence.parquet, summary.md)")


@app.command("compare")
def compare_cmd(
    results: Annotated[list[Path], typer.Argument(help="Results directories of `rlaudit resample` (merged).")],
    baseline: Annotated[str, typer.Option("--baseline", help="Model the ratios are taken to.")] = "original",
    behavior: Annotated[Optional[list[str]], typer.Option("--behavior", help="Only these behaviours.")] = None,
    dimension: Annotated[Optional[list[str]], typer.Option("--dimension", help="all, task, toolset, condition "
                                                           "(default: all of them).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the rate table as JSON here.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write an HTML page with the plots here: "
                                                   "rates and ratios per category, evidence pairs, and the "
                                                   "backtest when `resample backtest` saved one.")] = None,
) -> None:
    """Rates per category for each model, with the ratio to the baseline (CIs clustered by transcript)."""
    from . import compare
    from .results import DIMENSIONS, rates_markdown

    if report is not None and (report.is_dir() or report.suffix.lower() not in (".html", ".htm")):
        raise RlauditError(f"--report {report}: give a file name ending in .html")
    rates = compare(results, baseline, behavior)
    if not any(r["model"] == baseline for r in rates):
        raise RlauditError(f"--baseline {baseline!r}: no such model in the results "
                           f"({', '.join(sorted({r['model'] for r in rates}))})")
    out.print(rates_markdown(rates, dims=tuple(dimension or DIMENSIONS)), highlight=False, markup=False)
    if json_out:
        json_out.write_text(json.dumps(rates, indent=2))
    if report is not None:
        from ..report import write_resample_report

        path = write_resample_report(results, report, baseline)
        console.print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)", highlight=False)


@app.command("backtest")
def backtest_cmd(
    results: Annotated[Path, typer.Argument(help="Results directory of `rlaudit resample`.")],
    observed: Annotated[str, typer.Option("--observed", help="Later traffic of the deployed model: chat JSONL "
                                          "(file or directory) or store:RUN.")],
    model: Annotated[Optional[str], typer.Option("--model", help="Candidate whose forecast is tested (default: "
                                                 "the only one).")] = None,
    baseline: Annotated[str, typer.Option("--baseline")] = "original",
    limit: Annotated[Optional[int], typer.Option("--limit")] = None,
    store: Annotated[Path, typer.Option("--store", envvar="RLAUDIT_STORE")] = Path(".rlaudit"),
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the backtest as JSON here.")] = None,
) -> None:
    """Forecast vs observed rate per category: multiplicative error and direction of change."""
    from . import run_backtest
    from .results import backtest_markdown

    st = None
    if observed.startswith("store:"):
        from ..store import Store

        st = Store(store)
    result = run_backtest(results, observed, model, baseline, store=st, limit=limit)
    out.print(backtest_markdown(result), highlight=False, markup=False)
    text = json.dumps({**result, "observed_source": observed}, indent=2)
    (results / "backtest.json").write_text(text)  # the report's backtest section reads it
    if json_out:
        json_out.write_text(text)
    console.print(f"backtest: {results / 'backtest.json'}", highlight=False)
