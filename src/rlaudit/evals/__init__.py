"""Resampling evals on real traffic: cut transcripts at an assistant turn, regenerate it with candidate models
(simulating the tools they call), score original and resampled turns with behaviour specs and judge rubrics,
and compare rates per category of traffic; backtest forecasts against later observed traffic.

    from rlaudit.evals import run_resample
    from rlaudit.llm import client_from_spec
    result = run_resample("traffic.jsonl", {"candidate": client_from_spec("openai:m@http://127.0.0.1:8000/v1")},
                          behaviors=["goblin", "judge:action:@rubric.md"], samples=4, out="results/",
                          simulator=client_from_spec("openai:sim@..."))

Modules: `transcripts` (readers and cuts), `tools` (tool calls and the simulator), `resample` (the generation
loop), `results` (scores, clustered rates, ratios, evidence, backtest). See docs/resampling.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BASELINE", "Cut", "Sample", "Transcript", "backtest", "backtest_markdown", "compare", "cuts",
           "evidence", "judge_spec", "load_transcripts", "rate_table", "rates_markdown", "read_chat_jsonl",
           "read_inspect_log", "read_samples", "read_store_run", "run_backtest", "run_resample", "score",
           "summary_markdown"]


def __getattr__(name: str) -> Any:  # lazy: numpy, pyarrow and DuckDB load on first use
    # (the generation loop itself is `rlaudit.evals.resample.resample`: `resample` names the submodule)
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
