"""Capture what graders see, for trainers that do not log it (TRL, verl, OpenRLHF).

For OpenRLHF, which writes no rollout files at all, the capture is the rollout log: see `wrap_openrlhf_reward`.

Wrap a reward function and every call appends one JSONL record per scored completion::

    from rlaudit.cot.capture import wrap_trl_reward
    judge = wrap_trl_reward(judge, log_dir="outputs/run1")       # TRL: keeps judge.__name__
    trainer = GRPOTrainer(..., reward_funcs=[judge])               # then: rlaudit audit outputs/run1

Records go to `<log_dir>/grader_inputs/<grader>.jsonl` as
`{"grader", "step", "index", "completion_md5", "input"}` (`completion_md5` null: the input *is* the completion); under TRL the text is also handed to `log_extra`, so
with `log_completions=True` it lands in the completions parquet as a `<grader>_input` column (read it with
`--grader-input <grader>=<grader>_input`). `merge_captured(store, run, path)` joins a capture directory to the
rollouts of a stored run (by the MD5 of the completion text, and the step when both sides know it); the
`cot_grading` scan then treats the captured text exactly like a logged grader input.

What a wrapper records is what the *wrapped function* receives. A TRL reward function or a verl `compute_score`
always receives the full completion, reasoning included, so a capture at that boundary shows the grader had the
reasoning in hand, not that it read it. Where a reward function builds the text it sends to a judge model, wrap
that inner call with `capture_grader` to record exactly what the judge saw; or probe the function with
`rlaudit probe-grader` to measure whether its scores depend on the reasoning.

Overhead is one JSON string escape of the text and a buffered write per completion; hashing for the join is
left to `merge_captured` (see benchmarks/capture_overhead.py).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import inspect
import json
import os
import threading
from json.encoder import encode_basestring
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RlauditError

CAPTURE_DIR = "grader_inputs"
_quote = encode_basestring  # JSON string literal (the C implementation when available)


def completion_text(completion: Any) -> str:
    """A completion as text: strings unchanged; a message list as its messages' contents, one per line."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        return "\n".join(completion_text(m) for m in completion)
    return "" if completion is None else str(completion)


def text_md5(text: str) -> str:
    """The join key between a captured record and a stored rollout (DuckDB's md5() gives the same hex)."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


class CaptureLog:
    """Buffered, thread-safe JSONL appender; flushed every `flush_every` records and at interpreter exit."""

    def __init__(self, path: str | Path, flush_every: int = 512):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self._buffer: list[str] = []
        self._lock = threading.Lock()
        self._counter = 0
        atexit.register(self.flush)

    def reserve(self, n: int) -> int:
        """Reserve n consecutive record indices; returns the first."""
        with self._lock:
            first = self._counter
            self._counter += n
        return first

    def write_many(self, grader: str, inputs: list[str], keys: list[str | None], step: int | None,
                   first_index: int) -> None:
        # one C-level string escape per text; the record's other fields are formatted directly
        head = f'{{"grader": {_quote(grader)}, "step": {"null" if step is None else int(step)}, "index": '
        lines = [f'{head}{first_index + i}, "completion_md5": {"null" if key is None else _quote(key)}, '
                 f'"input": {_quote(text)}}}'
                 for i, (text, key) in enumerate(zip(inputs, keys))]
        self._append(*lines)

    def _append(self, *lines: str) -> None:
        with self._lock:
            self._buffer.extend(lines)
            if len(self._buffer) >= self.flush_every:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buffer:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(self._buffer) + "\n")
        self._buffer.clear()


_LOGS: dict[Path, CaptureLog] = {}


def _log_for(log_dir: str | Path, grader: str) -> CaptureLog:
    path = (Path(log_dir) / CAPTURE_DIR / f"{grader}.jsonl").resolve()
    if path not in _LOGS:
        _LOGS[path] = CaptureLog(path)
    return _LOGS[path]


def flush_all() -> None:
    """Write out every buffered record (also done at exit); call it before auditing a live run."""
    for log in _LOGS.values():
        log.flush()


# ---------------------------------------------------------------- wrappers
def wrap_trl_reward(fn: Callable[..., Any], log_dir: str | Path = ".", name: str | None = None,
                    log_extra: bool = True) -> Callable[..., Any]:
    """Wrap a TRL reward function `f(prompts, completions, completion_ids=None, **kwargs)`.

    The wrapper keeps `__name__` (TRL names the reward column after it), records each completion as the text the
    function received, and, when TRL passes `log_extra`, logs the texts as column `<name>_input`.
    Async reward functions stay async.
    """
    grader = name or getattr(fn, "__name__", None) or type(fn).__name__
    log = _log_for(log_dir, grader)

    def record(completions: Any, kwargs: dict[str, Any]) -> None:
        texts = [completion_text(c) for c in completions]
        state = kwargs.get("trainer_state")
        step = getattr(state, "global_step", None)
        log.write_many(grader, texts, [None] * len(texts), step, log.reserve(len(texts)))
        extra = kwargs.get("log_extra")
        if log_extra and callable(extra):
            extra(f"{grader}_input", texts)

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_wrapper(prompts: Any = None, completions: Any = None, *args: Any, **kwargs: Any) -> Any:
            record(completions or [], kwargs)
            return await fn(prompts, completions, *args, **kwargs)

        wrapper: Callable[..., Any] = async_wrapper
    else:
        @functools.wraps(fn)
        def wrapper(prompts: Any = None, completions: Any = None, *args: Any, **kwargs: Any) -> Any:
            record(completions or [], kwargs)
            return fn(prompts, completions, *args, **kwargs)

    wrapper.__name__ = grader
    wrapper.rlaudit_grader = grader  # type: ignore[attr-defined]
    return wrapper


def wrap_verl_compute_score(fn: Callable[..., Any], log_dir: str | Path = ".", name: str | None = None,
                            step: Callable[[], int | None] | None = None) -> Callable[..., Any]:
    """Wrap a verl `compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs)`.

    `step` is an optional callable returning the current training step (verl does not pass it to the scorer);
    `extra_info["step"]` or `extra_info["global_step"]` is used when present.
    """
    grader = name or getattr(fn, "__name__", "compute_score")
    log = _log_for(log_dir, grader)

    @functools.wraps(fn)
    def wrapper(data_source: Any, solution_str: Any, ground_truth: Any, extra_info: Any = None, **kwargs: Any) -> Any:
        text = completion_text(solution_str)
        s = step() if step else None
        if s is None and isinstance(extra_info, dict):
            s = extra_info.get("step", extra_info.get("global_step"))
        log.write_many(grader, [text], [None], s, log.reserve(1))
        return fn(data_source, solution_str, ground_truth, extra_info, **kwargs)

    wrapper.rlaudit_grader = grader  # type: ignore[attr-defined]
    return wrapper


def capture_grader(fn: Callable[..., Any], name: str, log_dir: str | Path = ".", arg: int | str = 0,
                   completion: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """Wrap the call that sends text to a judge (any function), recording the text argument `arg`
    (position or keyword name). `completion(*args, **kwargs)` may return the rollout's completion for the join
    key; without it the record is keyed by position only and must be merged through a logged column."""
    log = _log_for(log_dir, name)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        text = kwargs.get(arg) if isinstance(arg, str) else (args[arg] if len(args) > arg else None)
        text = completion_text(text)
        key = text_md5(completion_text(completion(*args, **kwargs))) if completion else None
        log.write_many(name, [text], [key], kwargs.get("step"), log.reserve(1))
        return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------- OpenRLHF: the capture is the rollout log
OPENRLHF_DIR = "openrlhf"


def _float_list(value: Any, n: int) -> list[float | None]:
    """Per-sample floats from a reward-function output (tensor, array, list or scalar)."""
    if value is None:
        return [None] * n
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        value = [value] * n
    out: list[float | None] = []
    for v in list(value)[:n]:
        while isinstance(v, (list, tuple)) and len(v) == 1:
            v = v[0]
        try:
            out.append(None if v is None else float(v))
        except (TypeError, ValueError):
            out.append(None)
    return out + [None] * (n - len(out))


class _StepCounter:
    """Samples scored so far by every process writing to one capture directory (a file counter under an flock),
    so that `samples_per_step` gives the same step in each vLLM engine process."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def take(self, n: int) -> int:
        import fcntl

        with open(self.path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            text = fh.read().strip()
            first = int(text) if text else 0
            fh.seek(0)
            fh.truncate()
            fh.write(str(first + n))
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
        return first


def wrap_openrlhf_reward(fn: Callable[..., Any], log_dir: str | Path = ".", name: str | None = None,
                         step: Callable[[], int | None] | None = None,
                         samples_per_step: int | None = None) -> Callable[..., Any]:
    """Wrap an OpenRLHF custom reward function `reward_func(queries, prompts, labels, **kwargs)`.

    OpenRLHF 0.11.2 (openrlhf/utils/agent.py, `SingleTurnAgentExecutor`) loads `reward_func` from the Python file
    given as `--reward.remote_url` and calls it from a thread (`asyncio.to_thread`) once per sample, with lists of
    one: `queries` = prompt and response decoded together with `skip_special_tokens=False`, `prompts` = the
    prompt text, `labels` = the dataset label. It returns `{"rewards": ..., "scores": ..., "extra_logs": {...}}`.
    OpenRLHF writes no rollout files, so each record here carries the whole rollout (prompt, query, label, reward,
    score, numeric extra_logs) and the `openrlhf` reader ingests `<log_dir>/openrlhf/` as a run.

    OpenRLHF passes no step. `step()` may return it; else `samples_per_step` (`rollout.batch_size *
    rollout.n_samples_per_prompt`) gives `1 + samples scored so far // samples_per_step` across all engine processes
    (exact for synchronous training without dynamic filtering); else the step is left null and the reader derives
    it from the pauses between generation rounds. Each process writes its own file (`<grader>.<host>-<pid>.jsonl`).
    """
    grader = name or getattr(fn, "__name__", "reward_func")
    if grader == "reward_func" and name is None:
        grader = "reward"
    root = Path(log_dir) / OPENRLHF_DIR
    counter = _StepCounter(root / f".{grader}.count") if samples_per_step else None
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def log() -> CaptureLog:  # opened lazily, in the process that scores (the vLLM engine actor)
        pid = os.getpid()
        with lock:  # OpenRLHF calls from many threads at once
            if state.get("pid") != pid:
                import socket

                path = (root / f"{grader}.{socket.gethostname()}-{pid}.jsonl").resolve()
                state["log"] = _LOGS[path] = CaptureLog(path, flush_every=64)  # flush_all() and exit flush it
                state["pid"] = pid
            return state["log"]

    @functools.wraps(fn)
    def wrapper(queries: Any, prompts: Any, labels: Any, *args: Any, **kwargs: Any) -> Any:
        import time

        out = fn(queries, prompts, labels, *args, **kwargs)
        queries_l, prompts_l = list(queries or []), list(prompts or [])
        labels_l = list(labels) if isinstance(labels, (list, tuple)) else [labels] * len(queries_l)
        n = len(queries_l)
        result = out if isinstance(out, dict) else {"rewards": out}
        rewards = _float_list(result.get("rewards"), n)
        scores = _float_list(result.get("scores"), n)
        extra = {k: _float_list(v, n) for k, v in (result.get("extra_logs") or {}).items()}
        s = step() if step else None
        if s is None and counter is not None:
            s = 1 + counter.take(n) // samples_per_step
        now = time.time()
        target = log()
        first = target.reserve(n)
        lines = []
        for i in range(n):
            rec = {"grader": grader, "step": s, "index": first + i, "time": now, "pid": os.getpid(),
                   "prompt": completion_text(prompts_l[i]) if i < len(prompts_l) else "",
                   "query": completion_text(queries_l[i]),
                   "label": labels_l[i] if i < len(labels_l) and isinstance(labels_l[i], (str, int, float, type(None)))
                   else str(labels_l[i]),
                   "reward": rewards[i], "score": scores[i], "extra_logs": {k: v[i] for k, v in extra.items()}}
            lines.append(json.dumps(rec, ensure_ascii=False, allow_nan=True))
        target._append(*lines)
        return out

    wrapper.rlaudit_grader = grader  # type: ignore[attr-defined]
    return wrapper


def openrlhf_remote_reward(url: str, log_dir: str | Path = ".", name: str = "remote_rm", timeout: float = 180.0,
                           samples_per_step: int | None = None) -> Callable[..., Any]:
    """A captured `reward_func` that forwards to an OpenRLHF remote reward model over HTTP.

    OpenRLHF 0.11.2 (`SingleTurnAgentExecutor._fetch_rewards_via_http`) POSTs
    `{"query": [...], "prompts": [...], "labels": [...]}` to the `--reward.remote_url` URL and reads
    `{"rewards", "scores", "extra_logs"}` from the JSON reply (openrlhf/cli/serve_rm.py serves `/get_reward`).
    Put `reward_func = openrlhf_remote_reward("http://host:5000/get_reward", log_dir=...)` in a Python file and pass
    that file as `--reward.remote_url`: OpenRLHF then calls this function, which makes the same request.
    """
    import urllib.request

    def reward_func(queries: Any, prompts: Any, labels: Any, **kwargs: Any) -> Any:
        body = json.dumps({"query": list(queries), "prompts": list(prompts), "labels": list(labels)}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))

    return wrap_openrlhf_reward(reward_func, log_dir=log_dir, name=name, samples_per_step=samples_per_step)


# ---------------------------------------------------------------- joining captures to a stored run
def captured_inputs_path(store: Any, run: str) -> Path:
    """Where merged captures of a run live: a (rollout_id, grader, input) Parquet table the scan reads."""
    return store.run_dir(run) / "captured" / "grader_inputs.parquet"


def read_captured(path: str | Path) -> pa.Table:
    """Captured records of a JSONL file or of every `*.jsonl` under a directory, validated line by line."""
    path = Path(path)
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise RlauditError(f"{path}: no captured grader-input JSONL files found")
    rows: dict[str, list[Any]] = {"grader": [], "step": [], "completion_md5": [], "input": []}
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RlauditError(f"{f}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("grader"), str) \
                        or not isinstance(rec.get("input"), str):
                    raise RlauditError(f"{f}:{lineno}: expected an object with string fields 'grader' and 'input'")
                step = rec.get("step")
                if step is not None and not isinstance(step, int):
                    raise RlauditError(f"{f}:{lineno}: field 'step': expected an integer or null, got {step!r}")
                rows["grader"].append(rec["grader"])
                rows["step"].append(step)
                rows["completion_md5"].append(rec.get("completion_md5"))
                rows["input"].append(rec["input"])
    return pa.table({"grader": pa.array(rows["grader"], pa.string()), "step": pa.array(rows["step"], pa.int64()),
                     "completion_md5": pa.array(rows["completion_md5"], pa.string()),
                     "input": pa.array(rows["input"], pa.string())})


def merge_captured(store: Any, run: str, path: str | Path) -> dict[str, int]:
    """Join captured grader inputs to the rollouts of `run` and save them where the scan reads them.

    A record matches the rollouts whose completion has the record's MD5 (also tried without a leading
    'assistant: ' role prefix, as message lists are rendered), at the record's step when it has one. Identical
    completions at one step all receive the text. Returns counts: records, matched, unmatched, rollouts.
    """
    captured = read_captured(path)
    con = store.connect([run])
    con.register("captured", captured)
    merged = con.sql("""
        WITH keys AS (
            SELECT rollout_id, step, md5(completion) AS k FROM rollouts
            UNION SELECT rollout_id, step, md5(regexp_replace(completion, '^assistant: ', '')) FROM rollouts
        ), recs AS (SELECT row_number() OVER () AS rec, grader, step, input,
                           coalesce(completion_md5, md5(input)) AS completion_md5 FROM captured)
        SELECT DISTINCT recs.rec, keys.rollout_id, recs.grader, recs.input
        FROM recs JOIN keys ON keys.k = recs.completion_md5 AND (recs.step IS NULL OR recs.step = keys.step)
    """).to_arrow_table()
    matched_records = len(set(merged.column("rec").to_pylist()))
    table = merged.select(["rollout_id", "grader", "input"])
    out = captured_inputs_path(store, run)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file():
        con.register("new_rows", table)
        con.register("old_rows", pq.read_table(out))
        table = con.sql("SELECT * FROM new_rows UNION ALL SELECT o.* FROM old_rows o WHERE NOT EXISTS "
                            "(SELECT 1 FROM new_rows n WHERE n.rollout_id = o.rollout_id AND n.grader = o.grader)"
                            ).to_arrow_table()
    con.register("all_rows", table)
    table = con.sql("SELECT rollout_id, grader, any_value(input) AS input FROM all_rows "
                        "GROUP BY rollout_id, grader ORDER BY rollout_id, grader").to_arrow_table()
    con.close()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return {"records": captured.num_rows, "matched": matched_records,
            "unmatched": captured.num_rows - matched_records, "rollouts": table.num_rows}
