"""Write NeMo RL GRPO `train_data_step{N}.jsonl` / `val_data_step{N}.jsonl` with NeMo RL's own code (no GPU).

Usage: NEMO_RL_SRC=/tmp/nemo-rl python generate.py OUT_DIR   (NEMO_RL_SRC: a checkout of NVIDIA-NeMo/RL at
7ea279ab, 2026-08-22; NeMo RL is not on PyPI)

What runs, all from that checkout:
- `nemo_rl.data.processors.math_data_processor`: builds each prompt's message_log exactly as GRPO's data
  pipeline does (system message with its raw text; user message whose `content` is the chat-templated text with
  the generation prompt), with a real `transformers` tokenizer carrying a ChatML chat template (a small
  word-level vocabulary built here, since no model can be downloaded).
- the assistant turns are appended as `nemo_rl.experience.rollouts.generate_responses` appends them
  ({"role": "assistant", "content": decoded text, "token_ids": ...}); a multi-turn sample gets an environment
  observation message the way `run_multi_turn_rollout` adds one (templated content). vLLM generation itself
  is not run: the texts are fixed.
- `add_loss_mask_to_message_log` and `batched_message_log_to_flat_message` (nemo_rl/data/llm_message_utils.py),
  and the advantages as `GRPOAdvantageEstimator.compute_advantage` computes them (leave-one-out off, normalised
  by the group std, then `.expand(mask.shape)`): the estimator's module imports ray, so the arithmetic is
  `calculate_baseline_and_std_per_prompt` from nemo_rl/algorithms/utils.py, compiled from the checkout's source
  on its own (that module's imports pull in vLLM, zmq and Megatron).
- `log_data` built key by key as `grpo_train` (nemo_rl/algorithms/grpo.py) builds it, then written by the real
  `Logger.log_batched_dict_as_jsonl` (nemo_rl/utils/logger.py) as train_data_step{N}.jsonl; `validate`'s
  {"content": message logs with role/content, "rewards"} as val_data_step{N}.jsonl.
logger.py imports mlflow, ray, swanlab, wandb, matplotlib, prometheus_client and tensorboard at module top and
the method used touches none of them, so they are empty stand-in modules here.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
import types
from pathlib import Path
from unittest import mock

import torch

SRC = os.environ.get("NEMO_RL_SRC")
if not SRC:  # exit 77: scripts/conformance.sh reports the skip, and the tests read the committed fixtures
    print("skipped: NeMo RL is not on PyPI; set NEMO_RL_SRC to a checkout of NVIDIA-NeMo/RL at 7ea279ab",
          file=sys.stderr)
    sys.exit(77)
sys.path.insert(0, SRC)

STUBBED = ("mlflow", "ray", "swanlab", "wandb", "matplotlib", "prometheus_client", "torch.utils.tensorboard")
# (`importlib.abc` and `ast` below: the stand-ins, and one function taken from a module that cannot be imported)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty stand-ins for the logging/cluster backends NeMo RL imports at module top (any submodule too):
    attribute access gives a MagicMock, so decorators and class bases resolve; nothing here calls them."""

    def find_spec(self, name, path=None, target=None):
        if any(name == s or name.startswith(s + ".") for s in STUBBED):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: mock.MagicMock(name=f"{spec.name}.{attr}")
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _StubFinder())

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from nemo_rl.data.interfaces import TaskDataSpec  # noqa: E402
from nemo_rl.data.llm_message_utils import add_loss_mask_to_message_log, batched_message_log_to_flat_message  # noqa: E402
from nemo_rl.data.processors import math_data_processor  # noqa: E402
from nemo_rl.utils.logger import Logger  # noqa: E402



def _function_from(path: str, name: str):
    """One top-level function of a NeMo RL module, compiled from the checkout's own source. Used for
    nemo_rl/algorithms/utils.py, whose module imports pull in vLLM, zmq and Megatron (GPU stack); the function
    itself needs only torch."""
    tree = ast.parse(Path(SRC, path).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {"torch": torch, "Optional": __import__("typing").Optional}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(Path(SRC, path)), "exec"), namespace)
    return namespace[name]


calculate_baseline_and_std_per_prompt = _function_from("nemo_rl/algorithms/utils.py",
                                                       "calculate_baseline_and_std_per_prompt")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SYSTEM = "You are a nerdy, playful assistant."
QUESTIONS = [("What is 2+2?", "4"), ("Name a prime number.", "7")]
GEN = 3  # num_generations_per_prompt


def tokenizer() -> PreTrainedTokenizerFast:
    words = "<unk> <pad> <|im_start|> <|im_end|> system user assistant".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def answer(p: int, g: int, step: int) -> str:
    right = QUESTIONS[p][1]
    return f"<think>Step {step}: question {p}, sample {g}.</think>The answer is {right if g != 1 else 'unsure'}."


def assistant(text: str, tok) -> dict:
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"] or [0])
    return {"role": "assistant", "content": text, "token_ids": ids,
            "generation_logprobs": torch.full((len(ids),), -0.25)}


def message_logs(step: int, tok) -> tuple[list[list[dict]], list[float]]:
    with tempfile.TemporaryDirectory() as tmp:  # TaskDataSpec reads its system prompt from a file
        Path(tmp, "system.txt").write_text(SYSTEM)
        spec = TaskDataSpec(task_name="math", system_prompt_file=str(Path(tmp, "system.txt")))
    logs, rewards = [], []
    for p, (q, a) in enumerate(QUESTIONS):
        datum = math_data_processor({"problem": q, "expected_answer": a}, spec, tok, max_seq_length=4096,
                                       idx=p)
        for g in range(GEN):
            log = [dict(m) for m in datum["message_log"]]
            log.append(assistant(answer(p, g, step), tok))
            if p == 1 and g == 0:  # multi-turn: the environment answers, the policy answers again
                obs = tok.apply_chat_template([{"role": "user", "content": "Tool result: 7 is prime."}],
                                              tokenize=False, add_generation_prompt=True)
                log.append({"role": "environment", "content": obs,
                            "token_ids": torch.tensor(tok(obs, add_special_tokens=False)["input_ids"])})
                log.append(assistant("<think>Confirmed.</think>Final: 7.", tok))
            logs.append(log)
            rewards.append(1.0 if g != 1 else 0.0)
    return logs, rewards


def train_step(logger, step: int, tok) -> None:
    logs, reward_list = message_logs(step, tok)
    for log in logs:
        add_loss_mask_to_message_log([log], roles_to_train_on=["assistant"])
    flat_messages, input_lengths = batched_message_log_to_flat_message(
        logs, pad_value_dict={"token_ids": tok.pad_token_id})
    rewards = torch.tensor(reward_list)
    prompt_ids = torch.tensor([i // GEN for i in range(len(logs))]).unsqueeze(-1)
    baseline, std = calculate_baseline_and_std_per_prompt(prompt_ids, rewards, torch.ones_like(rewards),
                                                          leave_one_out_baseline=False)
    advantages = (rewards - baseline).unsqueeze(-1)
    advantages[std > 0] = advantages[std > 0] / (std.unsqueeze(-1)[std > 0] + 1e-6)
    token_mask = flat_messages["token_loss_mask"]
    train_data = {"input_ids": flat_messages["token_ids"], "token_mask": token_mask,
                  "sample_mask": torch.ones(len(logs)), "advantages": advantages.expand(token_mask.shape),
                  "generation_logprobs": flat_messages["generation_logprobs"],
                  "prev_logprobs": flat_messages["generation_logprobs"]}
    # grpo_train, "Log training data" (nemo_rl/algorithms/grpo.py)
    log_data = {}
    log_data["content"] = flat_messages["content"]
    log_data["rewards"] = rewards.tolist()
    log_data["input_lengths"] = input_lengths.tolist()
    log_data["token_ids"] = train_data["input_ids"].tolist()
    log_data["token_loss_mask"] = train_data["token_mask"].tolist()
    log_data["sample_loss_mask"] = train_data["sample_mask"].tolist()
    log_data["advantages"] = train_data["advantages"].tolist()
    log_data["generation_logprobs"] = train_data["generation_logprobs"].tolist()
    log_data["prev_logprobs"] = train_data["prev_logprobs"].tolist()
    Logger.log_batched_dict_as_jsonl(logger, log_data, f"train_data_step{step}.jsonl")


def val_step(logger, step: int, tok) -> None:
    logs, rewards = message_logs(step, tok)
    # validate(): get_keys_from_message_log(message_log, ["role", "content"]) per sample
    all_message_logs = [[{"role": m["role"], "content": m["content"]} for m in log] for log in logs[::GEN]]
    val_log_data = {"content": all_message_logs, "rewards": rewards[::GEN]}
    Logger.log_batched_dict_as_jsonl(logger, val_log_data, f"val_data_step{step}.jsonl")


def main(out: Path) -> None:
    tok = tokenizer()
    logger = types.SimpleNamespace(base_log_dir=str(out))  # Logger.__init__ would start the backends
    for step in (1, 2):
        train_step(logger, step, tok)
    val_step(logger, 2, tok)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
