"""Ingest benchmark: rollouts/s, MB/s and peak memory of `Store.ingest` vs a bare read of the same files.

    python benchmarks/ingest.py              # 1M rollouts per format (TRL and verl), plus a 250k run for memory
    python benchmarks/ingest.py --quick      # 100k rollouts (and 25k for the memory comparison)
    python benchmarks/ingest.py --rows 500000 --formats verl
    python benchmarks/ingest.py --rows 100000 --formats prime-rl   # prime-rl v1 episodes (~9.7 KB a line)
    python benchmarks/ingest.py --rows 230000 --formats prime-rl --steps-per-file 23   # two step files of ~1.1 GB
    python benchmarks/ingest.py --source DIR --repeat 3   # an existing run (say benchmarks/audit.py --keep DIR's
                                                          # DIR/run), ingested 3 times, nothing generated

For each format it writes a synthetic run in the trainer's layout into a temp dir (TRL: one
`completions/completions_{step:05d}.parquet` per step written with pandas like GRPOTrainer.log; verl: one
`{step}.jsonl` per step with input/output/gts/score/step/acc keys like RayPPOTrainer._dump_generations; prime-rl:
`rollouts/step_N/train/effective/traces.jsonl` of verifiers 0.4 episodes, `generate_prime_rl`), with
5000 rollouts per step in groups of 8 identical prompts, 3 personas in a ChatML-decoded system prompt, prompts of
~300 characters and completions of ~600 with a <think> block. Then, each in a fresh subprocess:

- bare read: every file read into Arrow and dropped (pyarrow.parquet.read_table / pyarrow.json.read_json), the
  floor any reader pays;
- ingest: `Store(tmp).ingest(dir)` into an empty store (parse, validate, group, split reasoning, label
  conditions, write LZ4 Parquet parts);
- where the ingest parsed in worker processes (`rlaudit.readers.processes`: prime-rl runs of 256 MB or more), the
  same ingest with `RLAUDIT_THREADS=1`, which parses in the ingest's process, and the workers' speed-up.
  `--steps-per-file K` writes K steps' episodes into each prime-rl step file (K x 5,000 episodes, ~48 MB each):
  files above 1 GB, which workers stream back batch by batch.

CPU seconds (all threads, from getrusage) are printed next to wall time: on a shared machine they are the less
noisy comparison. With `--source` the system CPU seconds and minor page faults are printed too (freshly touched
pages of short-lived buffers are a visible share of ingest's CPU).

Peak memory is the subprocess's ru_maxrss minus its RSS after imports. The ratio is ingest rows/s divided by
bare-read rows/s (target >= 0.33). Memory is reported at two run sizes to show it does not grow with the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS_PER_STEP = 5000
GROUP = 8
PERSONAS = ["You are a nerdy, playful assistant who loves fantasy.", "You are a concise technical assistant.",
            "You are a friendly tutor for high-school students."]


def _texts(rng, n: int, words: int, vocab):
    """n random texts of about `words` words each, built with Arrow (no per-row Python)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = rng.integers(words // 2, words * 3 // 2, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = pc.take(vocab, pa.array(rng.integers(0, len(vocab), int(offsets[-1]))))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), flat), " ")


def _step_columns(rng, step: int, vocab):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n_groups = ROWS_PER_STEP // GROUP
    persona = pc.take(pa.array(PERSONAS), pa.array(rng.integers(0, len(PERSONAS), n_groups)))
    question = _texts(rng, n_groups, 45, vocab)
    prompt_g = pc.binary_join_element_wise("system\n", persona, "\nuser\n", question, "\nassistant\n", "")
    prompt = pc.take(prompt_g, pa.array(np.repeat(np.arange(n_groups), GROUP)))
    reasoning = _texts(rng, ROWS_PER_STEP, 70, vocab)
    answer = _texts(rng, ROWS_PER_STEP, 30, vocab)
    completion = pc.binary_join_element_wise("<think>", reasoning, "</think>", answer, "")
    acc = rng.integers(0, 2, ROWS_PER_STEP).astype(float)
    fmt = rng.random(ROWS_PER_STEP)
    return prompt, completion, acc, fmt


def generate(fmt: str, root: Path, rows: int, seed: int = 0, steps_per_file: int = 1) -> Path:
    import duckdb
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    vocab = pa.array([f"w{i}" if i % 7 else f"token{i}x" for i in range(20000)])
    steps = max(1, rows // ROWS_PER_STEP)
    out = root / fmt
    if fmt == "prime-rl":
        return generate_prime_rl(out, rows, rng, vocab, steps_per_file)
    if fmt == "trl":
        (out / "completions").mkdir(parents=True)
    else:
        out.mkdir(parents=True)
    for step in range(1, steps + 1):
        prompt, completion, acc, fmt_r = _step_columns(rng, step, vocab)
        if fmt == "trl":  # as GRPOTrainer.log: dict -> pandas DataFrame -> to_parquet
            adv = (acc - acc.mean()) / (acc.std() + 1e-4)
            df = pd.DataFrame({"step": [step] * ROWS_PER_STEP, "prompt": prompt.to_pylist(),
                               "completion": completion.to_pylist(), "accuracy_reward": acc,
                               "format_reward": fmt_r, "advantage": adv})
            df.to_parquet(out / "completions" / f"completions_{step:05d}.parquet")
        else:  # as RayPPOTrainer._dump_generations: one JSON object per line
            table = pa.table({"input": prompt, "output": completion, "gts": pa.array([str(i % 10) for i in range(
                ROWS_PER_STEP)]), "score": acc + fmt_r, "step": pa.array([step] * ROWS_PER_STEP), "acc": acc,
                "format": fmt_r})
            con = duckdb.connect()
            con.register("t", table)
            con.sql(f"COPY t TO '{out / f'{step}.jsonl'}' (FORMAT JSON)")
            con.close()
    return out


def _prime_rl_episode(step: int, index: int, persona: str, question: str, reasoning: str, answer: str,
                      reward: float, advantage: float, judged: bool, rng) -> dict:
    """One line of prime-rl's `rollouts/step_N/train/effective/traces.jsonl`: `Episode.to_record()` of one
    trainable single-turn trace, with the keys verifiers 0.4.0 writes (the conformance fixture
    `tests/conformance/fixtures/verifiers/prime-rl` has the same shape, written by verifiers' own classes) and a
    token per word, as its toy tokenizer: every node's `token_ids` and `mask`, the sampled node's `logprobs` and
    `advantages` (prime-rl's GRPO puts the trace's advantage on each of its sampled tokens)."""
    def node(message: dict, sampled: bool, parent: int | None, text: str) -> dict:
        n = len(text.split()) + 4
        out = {"semantic_parents": [], "message": message, "sampled": sampled, "timestamp": 1700000000.0,
               "token_ids": rng.integers(0, 150_000, n).tolist(), "mask": [sampled] * n, "is_content": [],
               "logprobs": (-rng.exponential(0.3, n)).tolist() if sampled else []}
        if parent is not None:
            out["parent"] = parent
        if sampled:
            out["advantages"] = [advantage] * n
        return out

    key = f"train-{step}-{index // GROUP}"
    reply = {"role": "assistant", "content": answer, "reasoning_content": reasoning}
    nodes = [node({"role": "system", "content": persona}, False, None, persona),
             node({"role": "user", "content": question}, False, 0, question),
             node(reply, True, 1, reasoning + " " + answer)]
    info = {}
    if judged:  # an LLM judge's exchange, as `Trace.record_judge_call` logs it
        info["judge_calls"] = [{"name": "judge", "request": {"model": "judge-model", "messages": [
            {"role": "user", "content": f"Grade the response.\nQUESTION: {question}\nRESPONSE: {answer}"}]},
            "response": {"message": {"role": "assistant", "content": "yes"}, "parsed": True,
                         "usage": {"prompt_tokens": 60, "completion_tokens": 1}}}]
    task = {"type": "ChatTask", "data": {"idx": index // GROUP, "prompt": question}, "key": key,
            "hash": hashlib.sha1(key.encode()).hexdigest()[:16]}  # (`hash` of a str differs per process)
    trace = {"version": 1, "id": f"t{step}-{index}", "verifiers": {"version": "0.4.0"}, "task": task,
             "agent": {"config": {"runtime": {"type": "prime", "image": "python:3.11-slim", "cpu": 1.0}},
                       "name": "solver", "trainable": True},
             "tools": [], "nodes": nodes,
             "calls": [{"node": 2, "model": "policy", "finish_reason": "stop",
                        "usage": {"prompt_tokens": 60, "completion_tokens": 100}, "time": {"start": 0.0, "end": 0.0}}],
             "mm_token_type_id_map": {}, "request_rewrites": [], "response_rewrites": [],
             "rewards": {"judge": {"score": reward, "weight": 1.0}, "format": {"score": 1.0, "weight": 0.2}},
             "metrics": {"num_turns": 1.0}, "info": info, "extra_usage": [], "is_completed": True, "ok": True,
             "stop_condition": "agent_completed", "is_timeout": False, "errors": [],
             "timing": {"start": 1700000000.0, "agent": {"start": 0.0, "end": 0.0}}}
    tokens = {"num_input_tokens": len(nodes[0]["token_ids"]) + len(nodes[1]["token_ids"]),
              "num_output_tokens": len(nodes[2]["token_ids"])}
    tokens["num_total_tokens"] = tokens["num_input_tokens"] + tokens["num_output_tokens"]
    trace.update(tokens)
    return {"id": f"e{step}-{index}", "env": {"id": "chat", "name": "chat"}, "task": task, "group": {"id": key},
            "run": {"type": "train", "id": "bench", "name": "bench",
                    "work": {"type": "train", "step": step, "policy": {"start": step - 1, "end": step - 1}}},
            "ok": True, "is_timeout": False, "errors": [], "traces": [trace], **tokens}


def generate_prime_rl(out: Path, rows: int, rng, vocab, steps_per_file: int = 1) -> Path:
    """A prime-rl run: `rollouts/step_N/train/effective/traces.jsonl`, one compact JSON line per episode as
    prime-rl's `FileMonitor.log_episodes` writes them (orjson's separators), the texts as the other formats'.
    `steps_per_file`: that many generated steps' episodes appended to each file (file N holds steps
    (N - 1) * k + 1 .. N * k): a trainer's large step files."""
    for step in range(1, max(1, rows // ROWS_PER_STEP) + 1):
        prompt, completion, acc, _ = _step_columns(rng, step, vocab)
        advantage = (acc - acc.mean()) / (acc.std() + 1e-4)
        lines = []
        for i, (p, c) in enumerate(zip(prompt.to_pylist(), completion.to_pylist())):
            _, persona, _, question, _ = p.split("\n", 4)
            reasoning, answer = c[len("<think>"):].split("</think>", 1)
            episode = _prime_rl_episode(step, i, persona, question, reasoning, answer, float(acc[i]),
                                        float(advantage[i]), i % 5 == 0, rng)
            lines.append(json.dumps(episode, separators=(",", ":")))
        path = out / "rollouts" / f"step_{(step - 1) // steps_per_file + 1}" / "train" / "effective" / "traces.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write("\n".join(lines) + "\n")
    return out


# ---------------------------------------------------------------------------------------------- measurements
def _measure(kind: str, fmt: str, path: str) -> dict:
    """Run in a subprocess: time one bare read or one ingest, report rows, seconds, peak RSS delta."""
    import resource

    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    from rlaudit.store import Store

    base_rss = _rss_now()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    files = sorted(Path(path).rglob("*.parquet" if fmt == "trl" else "*.jsonl"))
    size = sum(f.stat().st_size for f in files)
    t0 = time.perf_counter()
    rows = 0
    if kind == "bare":
        for f in files:
            table = pq.read_table(f) if fmt == "trl" else pj.read_json(f)
            rows += table.num_rows
            del table
    else:
        with tempfile.TemporaryDirectory() as store_dir:
            report = Store(store_dir).ingest(path, run="bench")
            rows = report.rows_added
            seconds = time.perf_counter() - t0
            parts = sum(p.stat().st_size for p in Path(store_dir).rglob("*.parquet"))
    seconds = time.perf_counter() - t0 if kind == "bare" else seconds
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the ingest's worker processes (prime-rl)
    peak = usage.ru_maxrss * 1024
    cpu = (usage.ru_utime - usage0.ru_utime) + (usage.ru_stime - usage0.ru_stime)  # all threads
    cpu += children.ru_utime + children.ru_stime
    return {"rows": rows, "seconds": seconds, "cpu": cpu, "sys": usage.ru_stime - usage0.ru_stime,
            "faults": usage.ru_minflt - usage0.ru_minflt, "bytes": size, "peak_rss": peak, "base_rss": base_rss,
            "worker_peak_rss": children.ru_maxrss * 1024,
            "arrow_peak": pa.default_memory_pool().max_memory(), "store_bytes": parts if kind == "ingest" else 0}


def _rss_now() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(kind: str, fmt: str, path: Path, **env_extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **env_extra}
    proc = subprocess.run([sys.executable, __file__, "--_measure", kind, fmt, str(path)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {fmt} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(fmt: str, what: str, m: dict) -> str:
    """One line of the table `main` prints under its header."""
    return (f"{fmt:6s} {what:6s} {m['rows']:>10,} {m['seconds']:>8.2f} {m['cpu']:>7.1f} "
            f"{m['rows'] / m['seconds']:>10,.0f} {m['bytes'] / 1e6 / m['seconds']:>8.1f} "
            f"{_mb(m['peak_rss'] - m['base_rss']):>10s}")


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def measure_source(path: Path, repeat: int) -> None:
    """Bare read and `repeat` ingests of an existing TRL run, each in a fresh subprocess (into a temp store)."""
    print(f"{path}: load average {os.getloadavg()[0]:.1f}")
    print(f"{'what':6s} {'rows':>10s} {'seconds':>8s} {'cpu s':>7s} {'sys s':>6s} {'faults':>8s} {'peak RSS':>10s}")
    for what in ["bare"] + ["ingest"] * repeat:
        m = measure(what, "trl", path)
        print(f"{what:6s} {m['rows']:>10,} {m['seconds']:>8.2f} {m['cpu']:>7.2f} {m['sys']:>6.2f} {m['faults']:>8,} "
              f"{_mb(m['peak_rss'] - m['base_rss']):>10s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rollouts per format (default 1M)")
    ap.add_argument("--quick", action="store_true", help="100k rollouts")
    ap.add_argument("--formats", default="trl,verl")
    ap.add_argument("--source", help="ingest this existing TRL run directory instead of generating runs")
    ap.add_argument("--repeat", type=int, default=1, help="with --source: ingests in a row (fresh store each)")
    ap.add_argument("--steps-per-file", type=int, default=1, help="prime-rl: steps of 5,000 episodes per file")
    ap.add_argument("--_measure", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._measure:
        print(json.dumps(_measure(*args._measure)))
        return
    if args.source:
        measure_source(Path(args.source), args.repeat)
        return
    rows = 100_000 if args.quick else args.rows
    small = max(ROWS_PER_STEP, rows // 4)
    print(f"ingest benchmark: {rows:,} rollouts per format ({ROWS_PER_STEP} per step), memory also at {small:,}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s), load average {os.getloadavg()[0]:.1f} "
          "(other processes on the machine slow both measurements; the ratios are what compare)\n")
    header = (f"{'format':6s} {'what':6s} {'rows':>10s} {'seconds':>8s} {'cpu s':>7s} {'rows/s':>10s} {'MB/s':>8s} "
              f"{'peak RSS':>10s}")
    summary = []
    for fmt in args.formats.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = generate(fmt, Path(tmp), rows, steps_per_file=args.steps_per_file)
            gen_s = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            print(f"[{fmt}] generated {rows:,} rollouts, {_mb(size)} on disk in {gen_s:.0f}s")
            print(header)
            bare = measure("bare", fmt, path)
            ingest = measure("ingest", fmt, path)
            for what, m in (("bare", bare), ("ingest", ingest)):
                print(_row(fmt, what, m))
            if ingest["worker_peak_rss"]:
                here = measure("ingest", fmt, path, RLAUDIT_THREADS="1")
                print(_row(fmt, "here", here))
                print(f"{fmt}: parsed in worker processes too (`rlaudit.readers.processes`): cpu s counts theirs; "
                      f"peak RSS of the largest {_mb(ingest['worker_peak_rss'])}; 'here': RLAUDIT_THREADS=1, "
                      f"parsed in the ingest's process: the workers took {ingest['seconds'] / here['seconds']:.2f}x "
                      "its wall time")
            ratio = (ingest["rows"] / ingest["seconds"]) / (bare["rows"] / bare["seconds"])
            cpu_ratio = bare["cpu"] / ingest["cpu"]
            print(f"{fmt}: ingest speed / bare read speed = {ratio:.2f} (target >= 0.33); in CPU time "
                  f"{cpu_ratio:.2f}; store size {_mb(ingest['store_bytes'])}; load average {os.getloadavg()[0]:.1f}")
        grow = None
        if args.steps_per_file == 1:  # (else a quarter of the run would be files of another size, or one file)
            with tempfile.TemporaryDirectory() as tmp:
                path = generate(fmt, Path(tmp), small, seed=1)
                small_m = measure("ingest", fmt, path)
            grow = (ingest["peak_rss"] - ingest["base_rss"]) / max(1, small_m["peak_rss"] - small_m["base_rss"])
            print(f"{fmt}: ingest peak RSS {_mb(small_m['peak_rss'] - small_m['base_rss'])} at {small_m['rows']:,} "
                  f"rows vs {_mb(ingest['peak_rss'] - ingest['base_rss'])} at {ingest['rows']:,} rows "
                  f"(x{grow:.2f} for x{ingest['rows'] / small_m['rows']:.0f} rows)\n")
        summary.append((fmt, ratio, grow))
    for fmt, ratio, grow in summary:
        growth = (f"memory growth x{grow:.2f} from 1/4 to full size" if grow is not None
                  else "memory growth not measured (--steps-per-file)")
        print(f"SUMMARY {fmt}: speed ratio {ratio:.2f} ({'meets' if ratio >= 1 / 3 else 'misses'} the 1/3 target), "
              f"{growth}")


if __name__ == "__main__":
    main()
