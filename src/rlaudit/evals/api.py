"""The public API of `rlaudit.evals` (re-exported lazily by the package: `rlaudit --help` stays light)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import RlauditError
from ..llm.core import LLMClient
from ..llm.judge import CONVERSATION_MAX_CHARS
from .resample import Sample, original_row, resample, sample_row
from .results import (BASELINE, SamplesWriter, backtest, backtest_markdown, compact, evidence, finish_results,
                      merge_evidence, parse_behaviors, rate_table, rates_markdown, read_samples, score,
                      summary_markdown)
from .inspect_logs import read_inspect_log
from .transcripts import (Cut, Transcript, cuts, iter_transcripts, load_transcripts, read_chat_jsonl,
                          read_store_run)


def judge_spec(text: str) -> str:
    """`--judge` value as a behaviour spec: `judge:...` as is, an existing file as `judge:@FILE`, else inline."""
    if text.startswith("judge:"):
        return text
    if Path(text).is_file():
        return f"judge:@{text}"
    return f"judge:{text}"


def run_resample(source: str | list[Transcript], candidates: dict[str, LLMClient], behaviors: Sequence[str],
                 samples: int = 4, out: str | Path | None = None, simulator: LLMClient | None = None,
                 cut: str = "last", limit: int | None = None, max_steps: int = 3, temperature: float = 1.0,
                 max_tokens: int = 1024, store: Any = None, progress: Any = None, chunk: int = 1000,
                 judge_max_chars: int = CONVERSATION_MAX_CHARS) -> dict[str, Any]:
    """Resample, score and summarise. With `out`, transcripts are read, resampled, scored and written
    `chunk` at a time: memory holds one chunk's texts plus a few numbers per turn (the returned `rows` are
    compact and `samples` empty). Without `out`, everything is returned in memory."""
    started = time.perf_counter()
    specs = list(dict.fromkeys(behaviors))
    parsed = parse_behaviors(specs)  # spec errors before any call
    if isinstance(source, list):
        stream: Any = iter(source[:limit] if limit is not None else source)
    else:
        stream = iter_transcripts(source, store, limit)
    writer = SamplesWriter(Path(out) / "samples.parquet", specs) if out is not None else None
    rows: list[dict[str, Any]] = []
    ev: list[dict[str, Any]] = []
    kept: list[Sample] = []
    counts = {"transcripts": 0, "cuts": 0, "simulated_calls": 0, "truncated": 0, "errors": 0}
    try:
        while True:
            part = list(itertools.islice(stream, max(1, chunk)))
            if not part:
                break
            found = cuts(part, cut)
            done = resample(found, candidates, samples=samples, simulator=simulator, max_steps=max_steps,
                            temperature=temperature, max_tokens=max_tokens, progress=progress)
            chunk_rows = [original_row(c) for c in found] + [sample_row(s) for s in done]
            score(chunk_rows, parsed, judge_max_chars)
            counts["transcripts"] += len(part)
            counts["cuts"] += len(found)
            counts["simulated_calls"] += sum(s.simulated for s in done)
            counts["truncated"] += sum(s.truncated for s in done)
            counts["errors"] += sum(1 for s in done if s.error)
            if writer is not None:
                writer.write(chunk_rows)
                ev = merge_evidence(ev + evidence(chunk_rows, specs))
                rows.extend(compact(chunk_rows))
            else:
                rows.extend(chunk_rows)
                kept.extend(done)
    finally:
        if writer is not None:
            writer.close()
    if counts["cuts"] == 0:  # silent success on transcripts with nothing to resample would read as "rate 0"
        if writer is not None:
            (Path(out) / "samples.parquet").unlink(missing_ok=True)
        raise RlauditError(f"{source if isinstance(source, str) else 'transcripts'}: {counts['transcripts']} "
                           "transcript(s), none with an assistant turn to resample; no results were written")
    manifest = {"source": source if isinstance(source, str) else "<transcripts>", **counts, "cut": cut,
                "samples": samples, "candidates": list(candidates), "max_steps": max_steps,
                "temperature": temperature, "judge_max_chars": judge_max_chars,
                "llm": {name: {"backend": c.description, **c.accounting.to_json()} for name, c in candidates.items()},
                "simulator": ({"backend": simulator.description, **simulator.accounting.to_json()}
                              if simulator is not None else None),
                "seconds": round(time.perf_counter() - started, 3)}
    if out is not None:
        res = finish_results(Path(out), rows, ev, specs, manifest)
    else:
        res = {"rates": rate_table(rows, specs), "evidence": evidence(rows, specs)}
    return {"rows": rows, "samples": kept, "manifest": manifest, **res}


def compare(dirs: Sequence[str | Path], baseline: str = BASELINE, behaviors: Sequence[str] | None = None
            ) -> list[dict[str, Any]]:
    rows, specs = read_samples(dirs)
    if behaviors:
        specs = [s for s in specs if s in behaviors]
    return rate_table(rows, specs, baseline)


def run_backtest(results_dir: str | Path, observed: str | list[Transcript], model: str | None = None,
                 baseline: str = BASELINE, store: Any = None, limit: int | None = None,
                 judge_max_chars: int | None = None) -> dict[str, Any]:
    """Forecast rates of `model` (default: the only candidate) in `results_dir` against the rates of the same
    behaviours on `observed` traffic (its last assistant turns)."""
    rows, specs = read_samples([results_dir])
    models = sorted({r["model"] for r in rows} - {baseline})
    if model is None:
        if len(models) != 1:
            from ..errors import RlauditError

            raise RlauditError(f"backtest: several candidates ({', '.join(models)}); choose one with --model")
        model = models[0]
    transcripts = observed if isinstance(observed, list) else load_transcripts(observed, store, limit)
    obs_rows = [original_row(c, "observed") for c in cuts(transcripts, "last")]
    if judge_max_chars is None:  # as the forecast was judged
        manifest = Path(results_dir) / "manifest.json"
        saved = json.loads(manifest.read_text()).get("judge_max_chars") if manifest.exists() else None
        judge_max_chars = int(saved or CONVERSATION_MAX_CHARS)
    score(obs_rows, parse_behaviors(specs), judge_max_chars)
    rates = rate_table(rows, specs, baseline)
    return backtest(rates, rate_table(obs_rows, specs, baseline="observed"), model, baseline)


__all__ = ["BASELINE", "Cut", "Sample", "Transcript", "backtest", "backtest_markdown", "compare", "cuts",
           "evidence", "judge_spec", "load_transcripts", "rate_table", "rates_markdown", "read_chat_jsonl",
           "read_inspect_log", "read_samples", "read_store_run", "resample", "run_backtest", "run_resample", "score",
           "summary_markdown"]
