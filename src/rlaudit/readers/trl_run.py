"""Run-level facts of a TRL GRPO run that its completion files do not carry: evals, reward functions and weights,
logging and generation cadence. Used by the `trl` reader (`TrlReader.prepare`) and the live TRL callback.

Checked against trl 1.16.0 (`trl/trainer/grpo_trainer.py`) and transformers 5.24.0 (`trainer.py`):

- `Trainer._save_checkpoint` writes `checkpoint-N/trainer_state.json` (`TrainerState.save_to_json`) and
  `checkpoint-N/training_args.bin` (`torch.save(self.args)`, a pickle of the `GRPOConfig`); `trainer.save_state()`
  writes `trainer_state.json` into `output_dir`. No JSON file holds the training arguments.
- `trainer_state.json` has `logging_steps`, `eval_steps`, `global_step` and `log_history`. `GRPOTrainer.log`
  prefixes eval metrics with `eval_`, so a `log_history` entry with `eval_*` keys marks a step that ran an eval.
  Entries hold `rewards/<name>/mean` for each name of `GRPOTrainer.reward_func_names` (`save_to_json` sorts the
  keys, so the order comes from the completion file's columns: `log` writes `**_logs["rewards"]` in
  reward_func_names order before `**_logs["extra"]`).
- `training_args.bin` is read *without unpickling* (no code runs): `pickletools.genops` walks its opcodes and
  takes the plain values (numbers, strings, None, lists of numbers) that follow a few known `GRPOConfig` keys:
  `reward_weights`, `num_iterations`, `steps_per_generation`, `gradient_accumulation_steps`, `logging_steps`,
  `num_generations`, `num_generations_eval`, `generation_batch_size`, `scale_rewards`,
  `multi_objective_aggregation`.
"""

from __future__ import annotations

import json
import pickletools
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARG_KEYS = {"reward_weights", "num_iterations", "steps_per_generation", "gradient_accumulation_steps",
            "logging_steps", "num_generations", "num_generations_eval", "generation_batch_size", "scale_rewards",
            "multi_objective_aggregation", "per_device_train_batch_size"}
_REWARD_KEY = re.compile(r"^rewards/(.+)/mean$")


@dataclass
class TrlRun:
    """What rlaudit knows about a TRL run beyond its completion files (None: not known)."""

    eval_steps: set[int] | None = None  # steps whose completions file an eval overwrote
    covered_until: int | None = None  # log_history covers steps <= this
    eval_every: int | None = None  # trainer_state eval_steps, when evals happened on its multiples
    reward_names: set[str] | None = None  # GRPOTrainer.reward_func_names (trainer_state.json sorts keys: no order)
    logging_steps: int | None = None
    args: dict[str, Any] = field(default_factory=dict)  # plain GRPOConfig values from training_args.bin
    state_file: str | None = None
    args_file: str | None = None

    def is_eval(self, step: int) -> bool | None:
        """True/False when known, None when the step is past what trainer_state.json covers (and evals did not
        follow eval_steps)."""
        if self.eval_steps is None:
            return None
        if self.covered_until is not None and step > self.covered_until:
            return (step % self.eval_every == 0) if self.eval_every else None
        return step in self.eval_steps

    def generation_step(self, step: int) -> int:
        """The global step whose generation batch a train file logged at `step` holds.

        `GRPOTrainer._prepare_inputs` generates when `_step % (steps_per_generation * num_iterations) == 0`,
        `_step` counting micro-batches (gradient_accumulation_steps per global step), and `log` writes the latest
        batch: at global step N that is the batch generated at the last such micro-step below N * ga.
        """
        spg, ni = self.args.get("steps_per_generation"), self.args.get("num_iterations")
        ga = self.args.get("gradient_accumulation_steps") or 1
        if not isinstance(spg, int) or not isinstance(ni, int) or spg * ni <= ga:
            return step
        every = spg * ni
        return ((step * ga - 1) // every * every) // ga + 1

    @property
    def reward_weights(self) -> list[float] | None:
        w = self.args.get("reward_weights")
        return [float(x) for x in w] if isinstance(w, list) else None


def run_root(source: Path) -> Path:
    """The GRPOTrainer output_dir of a source (the directory, its completions/ dir, or a completions file)."""
    root = source.parent if source.is_file() else source
    if root.name in ("train", "eval") and root.parent.name == "completions":
        root = root.parent
    return root.parent if root.name == "completions" else root


def load_run(source: Path) -> TrlRun:
    """Read trainer_state.json and training_args.bin of the run (the newest of output_dir and its checkpoints)."""
    root = run_root(source)
    run = TrlRun()
    states = [p for p in [root / "trainer_state.json", *root.glob("checkpoint-*/trainer_state.json")] if p.is_file()]
    best: tuple[int, Path, dict] | None = None
    for path in states:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        step = state.get("global_step") if isinstance(state, dict) else None
        if isinstance(step, int) and (best is None or step > best[0]):
            best = (step, path, state)
    if best is not None:
        step, path, state = best
        run.state_file = str(path.relative_to(root))
        run.covered_until = step
        history = [e for e in state.get("log_history") or [] if isinstance(e, dict)]
        run.eval_steps = {int(e["step"]) for e in history
                          if isinstance(e.get("step"), int) and any(k.startswith("eval_") for k in e)}
        names: set[str] = set()
        for entry in history:
            for key in entry:
                m = _REWARD_KEY.match(key)
                if m:
                    names.add(m.group(1))
        run.reward_names = names or None
        if isinstance(state.get("logging_steps"), int):
            run.logging_steps = state["logging_steps"]
        every = state.get("eval_steps")
        if run.eval_steps and isinstance(every, int) and every > 0 and all(s % every == 0 for s in run.eval_steps):
            run.eval_every = every
    args_paths = ([best[1].parent / "training_args.bin"] if best else []) + [root / "training_args.bin"] + \
        sorted(root.glob("checkpoint-*/training_args.bin"), key=lambda p: _checkpoint_step(p.parent), reverse=True)
    for path in args_paths:
        if path.is_file():
            values = pickled_values(path, ARG_KEYS)
            if values:
                run.args, run.args_file = values, str(path.relative_to(root))
                break
    if run.logging_steps is None and isinstance(run.args.get("logging_steps"), int):
        run.logging_steps = run.args["logging_steps"]
    return run


def _checkpoint_step(path: Path) -> int:
    m = re.search(r"(\d+)$", path.name)
    return int(m.group(1)) if m else -1


_SKIP = {"MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"}
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_NUMBERS = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT"}


def pickled_values(path: Path, keys: set[str]) -> dict[str, Any]:
    """Plain values stored under `keys` in a pickle (torch.save zip or raw), found without unpickling.

    After a key string, the next opcode (memo bookkeeping skipped) is its value: a number, a string, None, a
    bool, or a list of numbers (EMPTY_LIST, then APPEND or MARK ... APPENDS). Anything else (an enum, an object)
    is left out. Unreadable files give {}.
    """
    try:
        data = path.read_bytes()
        if data[:2] == b"PK":
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return {}
                data = zf.read(name)
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    except Exception:  # a truncated or foreign file: no values rather than an error
        return {}
    ops = [(name, arg) for name, arg in ops if name not in _SKIP]
    out: dict[str, Any] = {}
    for i, (name, arg) in enumerate(ops[:-1]):
        if name not in _STRINGS or arg not in keys or arg in out:
            continue
        value, ok = _value(ops, i + 1)
        if ok:
            out[arg] = value
    return out


def _value(ops: list[tuple[str, Any]], i: int) -> tuple[Any, bool]:
    name, arg = ops[i]
    if name == "NONE":
        return None, True
    if name in ("NEWTRUE", "NEWFALSE"):
        return name == "NEWTRUE", True
    if name in _NUMBERS or name in _STRINGS:
        return arg, True
    if name == "EMPTY_LIST":
        items: list[Any] = []
        j = i + 1
        if j < len(ops) and ops[j][0] == "MARK":
            j += 1
            while j < len(ops) and ops[j][0] in _NUMBERS:
                items.append(ops[j][1])
                j += 1
            return (items, True) if j < len(ops) and ops[j][0] == "APPENDS" else (None, False)
        if j + 1 < len(ops) and ops[j][0] in _NUMBERS and ops[j + 1][0] == "APPEND":
            return [ops[j][1]], True
        return [], True
    return None, False
