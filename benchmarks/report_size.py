"""Report benchmark: size and build time of the HTML report for a large run (default 1M rollouts).

    python benchmarks/report_size.py              # 1M rollouts over 2000 steps, 60 findings
    python benchmarks/report_size.py --quick      # 100k rollouts
    python benchmarks/report_size.py --rows 250000 --steps 800 --findings 200 --audit

Builds a store with one synthetic run through `Store.append` (canonical tables made with Arrow, no per-row
Python): 3 conditions, 4 reward signals (one applies to one condition only, NaN elsewhere), prompts of ~40 words,
reasoning of ~60 and answers of ~40 words, one grader input per rollout, every 5000th rollout with a 200k-character
reasoning (what the text caps are for). The findings are hand-made in the documented
shapes of every kind, with per-step series over all steps and 20 evidence rollouts each (the report shows 5);
`--audit` runs the real detectors instead (and reports their time separately).

Printed: report size (total, and without the inlined plotly.js, which is the fixed floor), build time, and the
ratio of the build time to a bare DuckDB scan of the same run's rewards (the floor any per-step aggregate pays).
Target: under ~10 MB at 1M rollouts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

CONDITIONS = ["nerdy", "concise", "none"]
SIGNALS = ["correctness", "helpfulness", "format", "persona"]


def _texts(rng, n: int, words: int, vocab):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = rng.integers(words // 2, words * 3 // 2, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = pc.take(vocab, pa.array(rng.integers(0, len(vocab), int(offsets[-1]))))
    return pc.binary_join(pa.LargeListArray.from_arrays(pa.array(offsets), flat), " ").cast(pa.string())


def synthetic_chunk(rng, run: str, steps: range, per_step: int, vocab, start_id: int):
    """Canonical rows for `steps` (per_step rollouts each), built column-wise."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from rlaudit.schema import canonical_table

    n = len(steps) * per_step
    step = np.repeat(np.asarray(steps, dtype=np.int64), per_step)
    ids = np.arange(start_id, start_id + n)
    cond_idx = rng.integers(0, len(CONDITIONS), n)
    condition = pc.take(pa.array(CONDITIONS), pa.array(cond_idx))
    prompt = _texts(rng, n, 40, vocab)
    reasoning = _texts(rng, n, 60, vocab)
    long_rows = ids % 5000 == 0  # a few very long reasoning texts
    if long_rows.any():
        big = pa.array(["lorem ipsum " * 16_667] * int(long_rows.sum()))
        reasoning = pc.replace_with_mask(reasoning, pa.array(long_rows), big)
    answer = _texts(rng, n, 40, vocab)
    completion = pc.binary_join_element_wise("<think>", reasoning, "</think>", answer, "")
    values = rng.random((n, len(SIGNALS)))
    values[:, 3] = np.where(cond_idx == 0, values[:, 3], np.nan)
    keys = pa.array(np.tile(SIGNALS, n))
    rewards = pa.MapArray.from_arrays(pa.array(np.arange(0, n * len(SIGNALS) + 1, len(SIGNALS), dtype=np.int32)),
                                      keys, pa.array(values.ravel()))
    grader_text = pc.binary_join_element_wise("Question: ", prompt, "\nAnswer: ", answer, "")
    grader_inputs = pa.MapArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)),
                                            pa.array(["judge"] * n), grader_text)
    table = pa.table({
        "run": pa.array([run] * n), "rollout_id": pa.array([f"r{i}" for i in ids]),
        "step": pa.array(step), "split": pa.array(["train"] * n),
        "group_id": pa.array([f"g{i // 8}" for i in ids]), "sample_index": pa.array((ids % 8).astype(np.int32)),
        "condition": condition, "system_prompt": pa.nulls(n, pa.string()), "task": pa.array(["qa"] * n),
        "prompt": prompt, "completion": completion, "reasoning": reasoning, "answer": answer,
        "rewards": rewards, "reward": pa.array(np.nansum(values, axis=1)), "advantage": pa.nulls(n, pa.float64()),
        "grader_inputs": grader_inputs, "metadata": pa.nulls(n, pa.string()),
    })
    return canonical_table(table)  # the columns it lacks (tool calls) null


def build_store(root: Path, rows: int, steps: int, seed: int = 0):
    import numpy as np
    import pyarrow as pa

    from rlaudit.store import Store

    rng = np.random.default_rng(seed)
    vocab = pa.array([f"w{i}" for i in range(300)] + ["goblin", "gremlin", "delve", "splendid"])
    per_step = max(1, rows // steps)
    store = Store(root)
    chunk = max(1, 100_000 // per_step)
    for lo in range(0, steps, chunk):
        block = range(lo, min(steps, lo + chunk))
        store.append("big", synthetic_chunk(rng, "big", block, per_step, vocab, lo * per_step), key=f"steps-{lo}")
    return store, per_step


def synthetic_findings(run: str, steps: int, per_step: int, count: int, seed: int = 0):
    """Findings of every kind in the documented shapes, with full-length series and 20 evidence rollouts each."""
    import numpy as np

    from rlaudit.findings import Evidence, Finding, rank

    rng = np.random.default_rng(seed)
    xs = list(range(steps))
    ramp = np.linspace(0.02, 0.5, steps)

    def curve(scale: float) -> dict:
        return {"steps": xs, "prevalence": np.clip(scale * ramp + rng.normal(0, 0.02, steps), 0, 1).tolist()}

    def evidence() -> list:
        ids = rng.integers(0, steps * per_step, 20)
        return [Evidence(f"r{i}", int(i // per_step), CONDITIONS[int(i) % 3], text="w1 w2 goblin w3",
                         note="answer containing goblin", data={"grader": "judge", "span": [10, 40]})
                for i in ids]

    out = []
    for k in range(count):
        kind = ("emerging_behavior", "generalization", "reward_attribution", "cot_grading", "reward_health")[k % 5]
        fields: dict = {"behavior": f"tic{k}", "where": "answer"}
        if kind == "emerging_behavior":
            fields.update(series={**curve(1.0), "smoothed": curve(1.0)["prevalence"]}, onset_step=steps // 3,
                          by_condition={c: {"traffic_share": 1 / 3, "mention_share": s}
                                        for c, s in zip(CONDITIONS, (0.7, 0.2, 0.1))})
        elif kind == "generalization":
            fields.update(source_condition="nerdy", target_condition="none", correlation=0.9, lag_steps=3,
                          series={c: curve(s) for c, s in zip(CONDITIONS, (1.0, 0.3, 0.2))},
                          mention_share=0.7, traffic_share=0.33)
        elif kind == "reward_attribution":
            fields.update(signal="persona", pressure_share=0.9, paired_preference=0.76,
                          paired_preference_ci=[0.7, 0.8],
                          signals=[{"signal": s, "pressure_share": p, "paired_preference": 0.5 + p / 4,
                                    "paired_preference_ci": [0.45 + p / 4, 0.55 + p / 4],
                                    "series": {"steps": xs, "pressure": ramp.tolist()}}
                                   for s, p in zip(SIGNALS, (0.05, 0.03, 0.02, 0.9))])
        elif kind == "cot_grading":
            fields.update(grader="judge", method="scan", exposure_rate=0.02, first_step=steps // 2,
                          series={"steps": xs, "exposure_rate": np.where(np.arange(steps) >= steps // 2, 0.04,
                                                                         0.0).tolist()},
                          by_condition={c: {"exposure_rate": r} for c, r in zip(CONDITIONS, (0.05, 0.0, 0.01))})
        else:
            fields.update(signal="persona", problem="nan", share=0.66, first_step=0)
        out.append(Finding(kind, run, ("high", "medium", "low")[k % 3], f"{kind} {k}", explanation="synthetic",
                           score=float(count - k), fields=fields, evidence=evidence()))
    return rank(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--findings", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="100k rollouts over 1000 steps")
    ap.add_argument("--audit", action="store_true", help="run the real detectors instead of synthetic findings")
    ap.add_argument("--keep", type=Path, help="write the report here (default: a temp dir)")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.steps = 100_000, 1000

    from rlaudit.audit import AuditResult, audit_store
    from rlaudit.report import build_report_html
    from rlaudit.report import _plotly_js as plotly_js

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store, per_step = build_store(Path(tmp) / "store", args.rows, args.steps)
        summary = store.summary("big")
        print(f"store: {summary.rows:,} rollouts, {args.steps} steps, built in {time.perf_counter() - t0:.1f}s")

        t0 = time.perf_counter()
        store.query("SELECT step, avg(v) FROM (SELECT step, unnest(map_values(rewards)) AS v FROM rollouts) "
                    "GROUP BY step", runs=["big"])
        scan = time.perf_counter() - t0

        if args.audit:
            t0 = time.perf_counter()
            result = audit_store(store, ["big"])
            print(f"audit (detectors): {len(result.findings)} findings in {time.perf_counter() - t0:.1f}s")
        else:
            result = AuditResult(runs=[summary], findings=synthetic_findings("big", args.steps, per_step,
                                                                             args.findings))
        t0 = time.perf_counter()
        html = build_report_html(store, result)
        build = time.perf_counter() - t0
        size = len(html.encode("utf-8"))
        floor = len(plotly_js().encode("utf-8"))
        if args.keep:
            args.keep.write_text(html, encoding="utf-8")
        print(f"report: {size / 1e6:.2f} MB ({(size - floor) / 1e6:.2f} MB without the {floor / 1e6:.2f} MB "
              f"of inlined plotly.js), {len(result.findings)} findings, built in {build:.2f}s")
        print(f"bare DuckDB scan of the rewards per step: {scan:.2f}s; report build / scan = {build / scan:.1f}x")
        print(f"target under ~10 MB: {'met' if size < 10e6 else 'NOT met'}")
    sys.exit(0)


if __name__ == "__main__":
    main()
