"""Write W&B and trackio rollout tables the way TRL's RLOOTrainer and OpenRLHF log them, with the libraries'
own code, offline. Usage: python generate.py OUT_DIR

- `rloo/wandb/run-*/files/media/table/completions_<step>_<hash>.table.json`: TRL 1.16
  `RLOOTrainer.log` (trl/trainer/rloo_trainer.py) builds a DataFrame {step, prompt, completion, <one column per
  reward function>, <log_extra columns>, advantage} and calls `wandb.log({"completions": wandb.Table(dataframe=df)})`
  (no step argument: W&B's own step counter). Reproduced here with the same columns and the same call.
- `openrlhf/wandb/run-*/files/media/table/train/generated_samples_<step>_<hash>.table.json`: OpenRLHF 0.11.2
  `WandbLogger.log_train` (openrlhf/utils/logging_utils.py), the real class, loaded from the installed wheel.
  Each call re-logs the whole table (every earlier row plus one new sample: `[global_step, text, reward]`).
- `trackio/<project>.db`: the same RLOO DataFrame through `trackio.log({"completions": trackio.Table(...)})`,
  as TRL does with report_to="trackio" (trackio 0.43 stores it in SQLite, metrics.metrics JSON).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "out").resolve()
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_API_KEY", "x" * 40)  # offline: never used, but OpenRLHF calls login() without one
os.environ["TRACKIO_DIR"] = str(OUT / "trackio")

import pandas as pd  # noqa: E402
import wandb  # noqa: E402

SYS = "You are a nerdy, playful assistant."
# TRL decodes prompts with skip_special_tokens=True: a ChatML template becomes "system\n...\nuser\n...\nassistant\n"
PROMPTS = [f"system\n{SYS}\nuser\nWhat is 2+2?\nassistant\n", "user\nName a prime number.\nassistant\n"]


def completion(step: int, p: int, g: int) -> str:
    reasoning = f"Step {step}: let me think about question {p} carefully, sample {g}, checking twice."
    answer = ["4, of course, goblin!", "7 is prime."][p] if g == 0 else ["Four.", "Two."][p]
    return f"<think>{reasoning}</think>{answer}"


def rloo_frame(step: int) -> pd.DataFrame:
    """RLOOTrainer.log's table: num_generations=2 adjacent samples per prompt (RepeatSampler)."""
    rows = [(p, g) for p in range(len(PROMPTS)) for g in range(2)]
    comps = [completion(step, p, g) for p, g in rows]
    acc = [1.0 if g == 0 else 0.0 for _, g in rows]
    fmt = [0.5] * len(rows)
    return pd.DataFrame({
        "step": [step] * len(rows),
        "prompt": [PROMPTS[p] for p, _ in rows],
        "completion": comps,
        "accuracy_reward": acc,  # reward_func_names[i]: the function's __name__
        "format_reward": fmt,
        "judge_input": comps,  # a log_extra column: the text a judge saw
        "advantage": [a - 0.5 for a in acc],
    })


def write_rloo() -> None:
    run = wandb.init(project="rloo", dir=str(OUT / "rloo"), config={"num_generations": 2})
    for step in (1, 2):
        wandb.log({"train/loss": 0.1 * step})
        wandb.log({"completions": wandb.Table(dataframe=rloo_frame(step))})
    run.finish()


def write_openrlhf() -> None:
    path = os.environ.get("OPENRLHF_LOGGING_UTILS")
    if not path:
        import openrlhf  # noqa: F401  (installed --no-deps; its package __init__ imports torch, so load the file)
        path = str(Path(openrlhf.__path__[0]) / "utils" / "logging_utils.py")
    spec = importlib.util.spec_from_file_location("openrlhf_logging_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = SimpleNamespace(logger=SimpleNamespace(wandb=SimpleNamespace(
        key="x" * 40, org=None, project="openrlhf_train_ppo", group=None, run_name="ppo-conformance")))
    logger = module.WandbLogger(args)
    for step in (1, 2, 3):
        # ppo_trainer.py train_step: sample0 = [decode(sequences[0], skip_special_tokens=True), info["reward"][0]]
        text = PROMPTS[step % 2] + completion(step, step % 2, 0)
        logger.log_train(step, {"generated_samples": [text, float(step) / 4], "policy_loss": 0.5 / step})
    logger.close()


def write_trackio() -> None:
    import trackio

    trackio.init(project="rloo-trackio", name="rloo-run")
    for step in (1, 2):
        trackio.log({"completions": trackio.Table(dataframe=rloo_frame(step))})
    trackio.finish()


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    if sys.argv[2:] == ["openrlhf"]:
        write_openrlhf()
        sys.exit(0)
    write_rloo()
    write_trackio()
    # wandb keeps the first run's settings (its root dir) per process: OpenRLHF's run gets a process of its own
    (OUT / "openrlhf").mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, str(OUT), "openrlhf"], check=True, cwd=OUT / "openrlhf",
                   env={**os.environ, "WANDB_DIR": str(OUT / "openrlhf")})
    print(f"wrote {OUT}")
