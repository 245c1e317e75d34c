"""Write rollout logs the way the real trainers write them (see each reader's module doc for the source checked).

Each writer mirrors the trainer's own code path: TRL builds a dict, wraps it in a pandas DataFrame and calls
`to_parquet`; verl json.dumps each row with ensure_ascii=False and writes "\\n".join(lines) + "\\n"; prime-rl
orjson-dumps `Episode.to_record()` (compact separators) with a trailing newline per episode.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

CHATML = "<|im_start|>system\n{sys}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
CHATML_DECODED = "system\n{sys}\nuser\n{q}\nassistant\n"  # ChatML after batch_decode(skip_special_tokens=True)
LLAMA3 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{sys}<|eot_id|><|start_header_id|>user"
          "<|end_header_id|>\n\n{q}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
LLAMA3_DECODED = ("system\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{sys}user\n\n{q}"
                  "assistant\n\n")
PLAIN = "system: {sys}\nuser: {q}"


def trl_step(output_dir: Path, step: int, prompts: list[Any], completions: list[Any],
             rewards: dict[str, list[float | None]], extra: dict[str, list[Any]] | None = None,
             advantages: list[float] | None = None, step_as_str: bool = False) -> Path:
    """GRPOTrainer.log with log_completions=True (TRL v1.x)."""
    n = len(prompts)
    table = {
        "step": [str(step) if step_as_str else step] * n,
        "prompt": prompts,
        "completion": completions,
        **{name: [float("nan") if v is None else v for v in values] for name, values in rewards.items()},
        **(extra or {}),
        "advantage": advantages if advantages is not None else [0.0] * n,
    }
    df = pd.DataFrame(table)
    os.makedirs(os.path.join(output_dir, "completions"), exist_ok=True)
    path = Path(output_dir) / "completions" / f"completions_{step:05d}.parquet"
    df.to_parquet(path)
    return path


def verl_step(dump_path: Path, step: int, inputs: list[str], outputs: list[str], scores: list[float],
              extra: dict[str, list[Any]] | None = None, gts: list[Any] | None = None) -> Path:
    """RayPPOTrainer._dump_generations (verl 2026-01)."""
    os.makedirs(dump_path, exist_ok=True)
    filename = os.path.join(dump_path, f"{step}.jsonl")
    n = len(inputs)
    base_data = {"input": inputs, "output": outputs, "gts": gts if gts is not None else [None] * n,
                 "score": scores, "step": [step] * n}
    for k, v in (extra or {}).items():
        if len(v) == n:
            base_data[k] = v
    lines = []
    for i in range(n):
        entry = {k: v[i] for k, v in base_data.items()}
        lines.append(json.dumps(entry, ensure_ascii=False))
    with open(filename, "w") as f:
        f.write("\n".join(lines) + "\n")
    return Path(filename)


def verifiers_trace(system: str | None, question: str, answer: str, reasoning: str | None,
                    rewards: dict[str, tuple[float | None, float]], advantage: float | None = 0.5,
                    info: dict[str, Any] | None = None, trace_id: str = "t") -> dict[str, Any]:
    """A verifiers v1 `Trace.to_record()` (nodes form a linear branch)."""
    nodes: list[dict[str, Any]] = []
    if system is not None:
        nodes.append({"parent": None, "message": {"role": "system", "content": system}, "sampled": False,
                      "timestamp": 0.0, "token_ids": [], "mask": [], "is_content": [], "logprobs": []})
    nodes.append({"parent": len(nodes) - 1 if nodes else None, "message": {"role": "user", "content": question},
                  "sampled": False, "timestamp": 0.0, "token_ids": [], "mask": [], "is_content": [],
                  "logprobs": []})
    assistant = {"role": "assistant", "content": answer, "reasoning_content": reasoning, "tool_calls": None,
                 "provider_state": None}
    nodes.append({"parent": len(nodes) - 1, "message": assistant, "sampled": True, "timestamp": 0.0,
                  "token_ids": [1, 2, 3], "mask": [True, True, True], "is_content": [],
                  "logprobs": [-0.1, -0.2, -0.3],
                  "advantages": None if advantage is None else [advantage] * 3})
    return {"version": 1, "id": trace_id, "verifiers": {"version": "1.0.0", "commit": None},
            "task": {"type": "MathTask", "data": {"question": question}, "key": None, "hash": "h"},
            "agent": {"config": {}, "runtime": None, "name": "agent", "trainable": True}, "tools": [],
            "nodes": nodes, "calls": [], "request_rewrites": [], "response_rewrites": [],
            "rewards": {k: (None if s is None else {"score": s, "weight": w}) for k, (s, w) in rewards.items()},
            "metrics": {"num_turns": 1.0}, "info": info or {}, "extra_usage": [], "is_completed": True,
            "ok": True, "stop_condition": "no_tools", "errors": [], "timing": {"start": 0.0}}


def verifiers_episode(traces: list[dict[str, Any]], step: int, group: str, kind: str = "train",
                      env: str = "gsm8k", episode_id: str = "e") -> dict[str, Any]:
    """A verifiers v1 `Episode.to_record()` as prime-rl's orchestrator stamps it (exclude_none=True)."""
    return {"id": episode_id, "env": {"id": env, "name": env}, "task": {"type": "MathTask", "data": {}},
            "group": {"id": group}, "run": {"type": "train", "id": "run-1", "work": {"type": kind, "step": step}},
            "ok": True, "errors": [], "traces": traces}


def primerl_step(output_dir: Path, step: int, episodes: list[dict[str, Any]], kind: str = "train",
                 subset: str = "effective") -> Path:
    """prime-rl FileMonitor.log_episodes: rollouts/step_N/{kind}/{subset}/traces.jsonl, appended."""
    path = Path(output_dir) / "rollouts" / f"step_{step}" / kind / subset / "traces.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        for episode in episodes:
            f.write(json.dumps(episode, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
    return path
