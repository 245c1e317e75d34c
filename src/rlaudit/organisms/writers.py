"""Write a simulated run in the layout a real trainer would have logged it.

- `canonical`: rlaudit's own JSONL, one file per step (`steps/step_00001.jsonl`), canonical field names.
- `trl`: TRL GRPOTrainer with `log_completions=True`: `completions/completions_{step:05d}.parquet` with columns
  `step, prompt, completion`, one float column per reward function (named after the function, NaN where it
  returned None), the `log_extra` columns (here `<grader>_input`: the text each grader saw), then `advantage`.
  Prompts are the chat-templated text (ChatML, system prompt included); reasoning stays in the completion.
- `verl`: `trainer.rollout_data_dir`: `{step}.jsonl` with `input, output, gts, score, step`, then the extra keys
  the reward function returned (one per component, and `<grader>_input` strings) and `uid` (the prompt group).
  Like verl, prompts and responses are decoded with `skip_special_tokens=True`, so the ChatML markers are gone
  (`system\\n...\\nuser\\n...\\nassistant\\n`). NaN scores are written as JSON `NaN`, as Python's json does.
- `prime-rl`: `rollouts/step_{N}/{train,eval}/effective/traces.jsonl`, one verifiers 0.4 `Episode` per line
  (`Episode.to_record()`, as prime-rl's `FileMonitor.log_episodes` writes it): the policy's trace holds message
  nodes (system, user, and the assistant with `reasoning_content` kept apart from `content`) with a token per word
  and, in training, the GRPO advantage on the sampled tokens; `rewards {name: {score, weight}}` (null score: did
  not apply); the model call (`finish_reason` "length" where the completion was cut in its reasoning); each
  grader's input as the judge call it made (`info.judge_calls`).

Beside the rollouts, each format gets the trainer's scalar log (`optimizer.py`'s token-level model plus the
reward statistics of the logged rollouts), where that trainer writes it:

- `trl`: `trainer_state.json` (`TrainerState.save_to_json`): `log_history` entries with `step`, `entropy`, `kl`
  (only when the KL coefficient is non-zero, as GRPOTrainer), `clip_ratio/low_mean`, `clip_ratio/high_mean`,
  `clip_ratio/region_mean`, `grad_norm`, `learning_rate`, `reward`, `reward_std`, `frac_reward_zero_std`.
- `verl`: the `FileLogger` JSONL (`metrics.jsonl`, one `{"step", "data"}` per line): `actor/entropy`,
  `actor/kl_loss` (only with a KL loss), `actor/pg_clipfrac`, `actor/grad_norm`, `actor/lr`, `critic/score/mean`.
- `prime-rl`: the `FileMonitor`'s `metrics.jsonl` (`{"step", "time", ...}`): `entropy/all/mean`,
  `optim/grad_norm`, `optim/lr`. prime-rl logs no KL to a reference and no clip fraction, so the ground truth of
  a run in this format drops the issues only those would show (`UNOBSERVABLE`).
- `canonical`: a W&B history export (`wandb_history.csv`, `run.history()` written by pandas' `to_csv`: index,
  `_runtime`, `_step`, `_timestamp`, then the keys) with TRL's keys as logged through W&B (`train/entropy`,
  `train/global_step`, ...).

`ground_truth.json` is written next to the logs in every format.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RlauditError
from .simulate import SimulatedRun


def _steps(table: pa.Table, split: str | None = "train") -> list[tuple[int, list[dict[str, Any]]]]:
    """Rows by step (of one split; None: all). Eval-split rows (scenarios with `eval_every`) are written by
    the canonical and prime-rl writers only; the TRL and verl layouts keep evals elsewhere."""
    rows = [r for r in table.to_pylist() if split is None or r["split"] == split]
    by_step: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)
    return sorted(by_step.items())


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def write_canonical(sim: SimulatedRun, out: Path) -> list[Path]:
    d = out / "steps"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    keep = ["step", "split", "group_id", "sample_index", "system_prompt", "task", "prompt", "completion",
            "reasoning", "answer", "reward", "advantage"]
    for step, rows in _steps(sim.table, None):
        path = d / f"step_{step:05d}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for r in rows:
                rec = {k: r[k] for k in keep}
                rec["rewards"] = {k: _finite_or_none(v) for k, v in r["rewards"]}
                rec["grader_inputs"] = dict(r["grader_inputs"])
                rec["metadata"] = {"example_id": r["example_id"], "gold": r["gold"]}
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def write_trl(sim: SimulatedRun, out: Path) -> list[Path]:
    d = out / "completions"
    d.mkdir(parents=True, exist_ok=True)
    graders = sim.signals
    paths = []
    for step, rows in _steps(sim.table):
        cols: dict[str, pa.Array] = {
            "step": pa.array([step] * len(rows), pa.int64()),
            "prompt": pa.array([r["prompt"] for r in rows], pa.string()),
            "completion": pa.array([r["completion"] for r in rows], pa.string()),
        }
        for name in sim.signals:
            cols[name] = pa.array([dict(r["rewards"]).get(name, math.nan) for r in rows], pa.float64())
        for name in graders:  # log_extra(f"{name}_input", texts) from inside each reward function
            cols[f"{name}_input"] = pa.array([dict(r["grader_inputs"]).get(name) for r in rows], pa.string())
        cols["advantage"] = pa.array([r["advantage"] for r in rows], pa.float64())
        path = d / f"completions_{step:05d}.parquet"
        pq.write_table(pa.table(cols), path)
        paths.append(path)
    return paths


def _decoded(chatml_prompt: str) -> str:
    """What verl's `batch_decode(..., skip_special_tokens=True)` leaves of a ChatML prompt."""
    return chatml_prompt.replace("<|im_start|>", "").replace("<|im_end|>", "")


def write_verl(sim: SimulatedRun, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for step, rows in _steps(sim.table):
        path = out / f"{step}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for r in rows:
                rec: dict[str, Any] = {"input": _decoded(r["prompt"]), "output": r["completion"], "gts": r["gold"],
                                       "score": r["reward"], "step": step}
                for name, value in r["rewards"]:
                    rec[name] = value
                for name, text in r["grader_inputs"]:
                    rec[f"{name}_input"] = text
                rec["uid"] = _uid(r["group_id"])
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def _uid(key: str) -> str:
    h = hashlib.sha1(key.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def write_primerl(sim: SimulatedRun, out: Path) -> list[Path]:
    """prime-rl's `FileMonitor.log_episodes`: `rollouts/step_N/{train,eval}/effective/traces.jsonl`, one
    compact JSON line per episode (`Episode.to_record()`, verifiers 0.4), each holding the policy's one trace."""
    weights = {name: info["weight"] for name, info in sim.ground_truth.signals.items()}
    paths = []
    for (step, split), rows in [((s, sp), rs) for sp in ("train", "eval") for s, rs in _steps(sim.table, sp)]:
        d = out / "rollouts" / f"step_{step}" / split / "effective"
        d.mkdir(parents=True, exist_ok=True)
        path = d / "traces.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(_episode(r, step, split, weights), ensure_ascii=False,
                                    separators=(",", ":")) + "\n")
        paths.append(path)
    return paths


def _episode(r: dict[str, Any], step: int, split: str, weights: dict[str, float]) -> dict[str, Any]:
    """One rollout as verifiers 0.4 records it and prime-rl stamps it (the shape of the conformance suite's
    episodes, which verifiers' own classes write: `conformance/verifiers/generate.py`): a trainable single-turn
    trace whose message nodes carry a token per word (`token_ids`, `mask`; the sampled node its `logprobs` and, in
    training, prime-rl's GRPO advantage on each token), a model call whose finish reason is "length" where the
    completion was cut inside its reasoning, rewards {name: {score, weight}}, and each grader's input as the judge
    call it made (`info.judge_calls`)."""
    key = _uid(r["group_id"])
    task = {"type": "ChatTask", "data": {"idx": r["example_id"], "prompt": r["user"]}, "key": key,
            "hash": hashlib.sha1(key.encode()).hexdigest()[:16]}
    if r["system_prompt"]:
        task["data"]["system_prompt"] = r["system_prompt"]
    advantage = _finite_or_none(r["advantage"]) if split == "train" else None
    messages = ([{"role": "system", "content": r["system_prompt"]}] if r["system_prompt"] else []) + [
        {"role": "user", "content": r["user"]},
        {"role": "assistant", "content": r["answer"], "reasoning_content": r["reasoning"]}]
    nodes = []
    for i, message in enumerate(messages):
        sampled = message["role"] == "assistant"
        words = " ".join(filter(None, (message.get("reasoning_content"), message["content"]))).split()
        ids = [zlib.crc32(w.encode()) % 150_000 for w in words] + [151_645]  # the end-of-turn token
        node = {"semantic_parents": [], "message": message, "sampled": sampled, "timestamp": 1_700_000_000.0,
                "token_ids": ids, "mask": [sampled] * len(ids), "is_content": [],
                "logprobs": [-0.25] * len(ids) if sampled else []}
        if i:
            node["parent"] = i - 1
        if sampled and advantage is not None:
            node["advantages"] = [advantage] * len(ids)
        nodes.append(node)
    cut = "</think>" not in r["completion"]  # the length limit ended it inside its reasoning
    n_in, n_out = sum(len(n["token_ids"]) for n in nodes[:-1]), len(nodes[-1]["token_ids"])
    usage = {"prompt_tokens": n_in, "completion_tokens": n_out}
    judge_calls = [{"name": name, "request": {"model": "judge", "messages": [{"role": "user", "content": text}]},
                    "response": {"message": {"role": "assistant", "content": ""}}}
                   for name, text in r["grader_inputs"]]
    trace = {"version": 1, "id": f"t-{r['rollout_id']}", "verifiers": {"version": "0.4.0"}, "task": task,
             "agent": {"name": "solver", "trainable": True}, "tools": [], "nodes": nodes,
             "calls": [{"node": len(nodes) - 1, "model": "policy", "finish_reason": "length" if cut else "stop",
                        "usage": usage}],
             "rewards": {k: {"score": _finite_or_none(v), "weight": weights.get(k, 1.0)} for k, v in r["rewards"]},
             "metrics": {"num_turns": 1.0}, "info": {"judge_calls": judge_calls} if judge_calls else {},
             "is_completed": True, "ok": True, "stop_condition": "agent_completed", "is_timeout": False,
             "errors": [], "num_input_tokens": n_in, "num_output_tokens": n_out,
             "num_total_tokens": n_in + n_out}
    return {"id": hashlib.sha1(f"{r['run']}:{r['rollout_id']}".encode()).hexdigest(),
            "env": {"id": r["task"], "name": r["task"]}, "task": task, "group": {"id": key},
            "run": {"type": "train", "id": r["run"], "name": r["run"],
                    "work": {"type": split, "step": step, "policy": {"start": step - 1, "end": step - 1}}},
            "ok": True, "is_timeout": False, "errors": [], "traces": [trace]}


# ---------------------------------------------------------------- scalar logs
def _scalar_rows(sim: SimulatedRun) -> list[dict[str, float]]:
    """Per step: the token-level model's scalars and the reward statistics of the step's training rollouts."""
    sc = sim.scalars
    log_kl = sim.spec is not None and sim.spec.optim.beta > 0
    rows = []
    for i, (step, rollouts) in enumerate(_steps(sim.table)):
        rewards = [r["reward"] for r in rollouts]
        groups: dict[str, list[float]] = {}
        for r in rollouts:
            groups.setdefault(r["group_id"], []).append(r["reward"])
        flat = [max(g) - min(g) <= 1e-12 for g in groups.values()]
        row = {"step": step, "entropy": float(sc["entropy"][i]), "clip_low": float(sc["clip_low"][i]),
               "clip_high": float(sc["clip_high"][i]), "clip_region": float(sc["clip_region"][i]),
               "grad_norm": float(sc["grad_norm"][i]), "learning_rate": float(sc["learning_rate"][i]),
               "reward": float(sum(rewards) / len(rewards)),
               "reward_std": float(pa.array(rewards).to_numpy().std(ddof=1)) if len(rewards) > 1 else 0.0,
               "frac_reward_zero_std": sum(flat) / len(flat)}
        if log_kl:
            row["kl"] = float(sc["kl"][i])
        rows.append(row)
    return rows


_TRL_KEYS = {"entropy": "entropy", "kl": "kl", "clip_low": "clip_ratio/low_mean", "clip_high": "clip_ratio/high_mean",
             "clip_region": "clip_ratio/region_mean", "grad_norm": "grad_norm", "learning_rate": "learning_rate",
             "reward": "reward", "reward_std": "reward_std", "frac_reward_zero_std": "frac_reward_zero_std"}
_VERL_KEYS = {"entropy": "actor/entropy", "kl": "actor/kl_loss", "clip_region": "actor/pg_clipfrac",
              "grad_norm": "actor/grad_norm", "learning_rate": "actor/lr", "reward": "critic/score/mean"}
_PRIMERL_KEYS = {"entropy": "entropy/all/mean", "grad_norm": "optim/grad_norm", "learning_rate": "optim/lr"}
#: format -> training_health problems its scalar log cannot show (the ground truth drops them)
UNOBSERVABLE = {"prime-rl": {"kl_drift", "clip_saturation"}}


def _renamed(row: dict[str, float], keys: dict[str, str], prefix: str = "") -> dict[str, float]:
    return {prefix + keys[k]: v for k, v in row.items() if k in keys}


def write_scalars(sim: SimulatedRun, out: Path, format: str) -> Path | None:
    """The trainer's scalar log for `format` (see the module doc); None without simulated scalars."""
    if not sim.scalars:
        return None
    rows = _scalar_rows(sim)
    if format == "trl":
        path = out / "trainer_state.json"
        history = [{**_renamed(r, _TRL_KEYS), "step": r["step"]} for r in rows]
        path.write_text(json.dumps({"global_step": rows[-1]["step"] if rows else 0, "log_history": history},
                                   indent=2), encoding="utf-8")
    elif format in ("verl", "prime-rl"):
        path = out / "metrics.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for r in rows:
                rec = {"step": r["step"], "data": _renamed(r, _VERL_KEYS)} if format == "verl" else \
                    {"step": r["step"], "time": 30.0 * r["step"], **_renamed(r, _PRIMERL_KEYS)}
                fh.write(json.dumps(rec) + "\n")
    else:
        path = out / "wandb_history.csv"
        names = sorted({"train/" + _TRL_KEYS[k] for r in rows for k in r if k in _TRL_KEYS} | {"train/global_step"})
        header = ["", "_runtime", "_step", "_timestamp", *names]
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(",".join(header) + "\n")
            for i, r in enumerate(rows):
                values = {"train/" + _TRL_KEYS[k]: v for k, v in r.items() if k in _TRL_KEYS}
                values["train/global_step"] = r["step"]
                cells = [str(i), repr(30.0 * (i + 1)), str(i), repr(1.79e9 + 30.0 * (i + 1)),
                         *(repr(values[n]) if n in values else "" for n in names)]
                fh.write(",".join(cells) + "\n")
    return path


WRITERS: dict[str, Callable[[SimulatedRun, Path], list[Path]]] = {
    "canonical": write_canonical, "trl": write_trl, "verl": write_verl, "prime-rl": write_primerl,
}


def write(sim: SimulatedRun, out_dir: str | Path, format: str = "canonical") -> list[Path]:
    """Write the run's logs in `format` and its ground truth into `out_dir`; returns the log files."""
    if format not in WRITERS:
        raise RlauditError(f"unknown simulator format {format!r}; choose one of {', '.join(WRITERS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = WRITERS[format](sim, out)
    write_scalars(sim, out, format)
    hidden = UNOBSERVABLE.get(format, set())
    sim.ground_truth.issues = [i for i in sim.ground_truth.issues
                               if not (i.kind == "training_health" and i.problem in hidden)]
    sim.ground_truth.format = format
    sim.ground_truth.write(out / "ground_truth.json")
    return paths
