"""Write verl 0.9.1 rollout dumps with verl's own code, for rlaudit's conformance tests.

Usage: python generate.py OUT_DIR   (in a venv with conformance/verl/requirements.txt installed)

What runs is verl's code; what is hand-built is only what a cluster would otherwise provide:

- verl's v1 trainer (`trainer.use_v1: true`, the default in verl/trainer/config/ppo_trainer.yaml) writes the
  dumps: `PPOTrainer._log_rollout_data` (training, `trainer.rollout_data_dir`) and `PPOTrainer._validate`
  (validation, `trainer.validation_data_dir`), both through `PPOTrainer._dump_generations` /
  `_write_generations` (verl/trainer/ppo/v1/trainer_base.py). They are called on a `PPOTrainerSync` (the
  synchronous v1 trainer; the dump methods are its base `PPOTrainer`'s) made with `__new__` and given only the
  attributes those methods read.
- rollouts reach them the way they do in a run: `AgentLoopWorkerTQ._agent_loop_postprocess`
  (verl/trainer/ppo/v1/agent_loop_tq.py) scores each session with `AgentLoopWorker._compute_score`, which calls
  the real reward managers' `run_single` (`naive`, `dapo`: verl/experimental/reward_loop/reward_manager/), turns
  `AgentLoopOutput.reward_score` into float32 `rm_scores` (`AgentLoopOutput.as_dict`) and stores each output
  under the key `{uid}_{session_id}_{index}`.
- TransferQueue (the KV store between them) needs a Ray cluster; `_MemoryTQ` keeps the same keys and fields in
  memory and returns them as TransferQueue does (a TensorDict built by verl's `list_of_dict_to_tensordict`).
- Multi-turn tool calling uses verl's `QwenContinuousTokenBuilder` (the token stream `ToolAgentLoop` builds:
  assistant tokens, then each tool message rendered by the chat template) and `HermesToolParser`
  (`<tool_call>{json}</tool_call>`), with the policy's turns scripted.
- The tokenizer is a byte-level tokenizer with Qwen's special tokens (`<|im_start|>`, `<|im_end|>`,
  `<|endoftext|>` are special and vanish under `decode(skip_special_tokens=True)`; `<think>`, `<tool_call>`,
  `<tool_response>` and their closing forms are added tokens that are NOT special, as in Qwen3's tokenizer, so
  they survive decoding) and a ChatML chat template written here that renders tool messages the way Qwen2.5/
  Qwen3 templates do (`<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>`). No model
  weights or hub files are needed.

Deterministic: uids come from a counter (verl draws uuid4s; the generator replaces `uuid` in trainer_base for
validation, which draws its own).
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transfer_queue import KVBatchMeta
from transformers import PreTrainedTokenizerFast

import verl.trainer.ppo.v1.agent_loop_tq as agent_loop_tq
import verl.trainer.ppo.v1.trainer_base as trainer_base
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput
from verl.experimental.agent_loop.tool_parser import HermesToolParser
from verl.experimental.reward_loop.reward_manager.dapo import DAPORewardManager
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.utils.tokenizer.continuous_token import QwenContinuousTokenBuilder

# one event loop for the run: verl's reward managers bind the loop current when they are made
LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(LOOP)

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# ChatML as Qwen2.5/Qwen3 render it (system/user/assistant turns; tool results as a user turn of
# <tool_response> blocks; assistant tool calls as <tool_call> JSON). Written for this generator.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% elif m.role == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' + m.content }}"
    "{% for c in m.tool_calls or [] %}"
    "{{ '\\n<tool_call>\\n{\"name\": \"' + c.function.name + '\", \"arguments\": ' }}"
    "{{ c.function.arguments | tojson }}{{ '}\\n</tool_call>' }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges (one token per byte) plus Qwen's special and added tokens."""
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(byte_chars))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    fast.add_tokens(ADDED, special_tokens=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


class _MemoryTQ:
    """TransferQueue's KV interface (kv_batch_put/get, kv_clear and the async put) over a dict."""

    def __init__(self):
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None):
        for i, key in enumerate(keys):
            row = self.rows.setdefault((partition_id, key), {})
            if fields is not None:
                row.update({name: fields[name][i] for name in fields.keys()})

    async def async_kv_batch_put(self, keys, partition_id, fields=None, tags=None):
        # TensorDict indexing would unbind nested tensors; keep the per-key dicts verl built
        self.kv_batch_put(keys, partition_id)
        for i, key in enumerate(keys):
            self.rows[(partition_id, key)].update(self._pending[i])

    async def async_kv_put(self, key, partition_id, tag=None, fields=None):
        return None

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        rows = [{f: self.rows[(partition_id, k)][f] for f in select_fields} for k in keys]
        td = list_of_dict_to_tensordict(rows)
        for f in select_fields:  # per-token fields come back jagged even when the lengths happen to agree
            values = [r[f] for r in rows]
            if all(isinstance(v, torch.Tensor) and v.dim() == 1 for v in values) and f != "uid":
                td[f] = torch.nested.as_nested_tensor(values, layout=torch.jagged)
        return td

    def kv_clear(self, keys, partition_id):
        for k in keys:
            self.rows.pop((partition_id, k), None)


TQ = _MemoryTQ()


def _capture_fields(fields: list[dict[str, Any]]):
    """agent_loop_tq passes list_of_dict_to_tensordict(fields) to the put; keep the dicts themselves."""
    TQ._pending = fields
    return list_of_dict_to_tensordict(fields)


class _LocalRewardWorker:
    """A RewardLoopWorker handle whose `compute_score.remote(data)` runs the manager in this process."""

    def __init__(self, manager):
        self.compute_score = SimpleNamespace(remote=lambda data: manager.run_single(data))


def make_worker(tokenizer, manager) -> Any:
    cls = agent_loop_tq.AgentLoopWorkerTQ.__ray_metadata__.modified_class
    worker = cls.__new__(cls)
    worker.reward_loop_worker_handles = [_LocalRewardWorker(manager)]
    worker.processor = None
    worker.tokenizer = tokenizer
    worker.distillation_enabled = False
    worker.mm_processor_kwargs = None
    return worker


def reward_config(overlong: dict | None = None) -> Any:
    kwargs = {} if overlong is None else {"overlong_buffer_cfg": overlong, "max_resp_len": overlong["max_resp_len"]}
    return OmegaConf.create({"reward": {"reward_kwargs": kwargs}})


_UID = iter(range(1, 1 << 30))


def next_uid() -> str:
    return str(uuid.UUID(int=(0x5EED << 96) | next(_UID), version=4))


def prompt_messages(system: str | None, question: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]


def single_turn_output(tokenizer, messages, text: str) -> AgentLoopOutput:
    """What SingleTurnAgentLoop returns: the templated prompt and the generated tokens (ending in <|im_end|>)."""
    prompt_ids = QwenContinuousTokenBuilder(tokenizer).build_initial_tokens(messages)
    response_ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return AgentLoopOutput(prompt_ids=prompt_ids, response_ids=response_ids, response_mask=[1] * len(response_ids),
                           num_turns=2, metrics=AgentLoopMetrics(), extra_fields={})


def tool_turn_output(tokenizer, messages, turns: list[str], tool_results: dict[str, str], tools) -> AgentLoopOutput:
    """ToolAgentLoop's token stream: each assistant turn as generated, each tool result rendered by the template.

    Built with verl's QwenContinuousTokenBuilder (merge_assistant_tokens / merge_context_tokens, as
    ToolAgentLoop._handle_generating_state / _handle_processing_tools_state do) and HermesToolParser.
    """
    builder = QwenContinuousTokenBuilder(tokenizer)
    parser = HermesToolParser(tokenizer)
    messages = list(messages)
    ids = builder.build_initial_tokens(messages, tools=None)
    n_prompt = len(ids)
    mask: list[int] = []
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, text in enumerate(turns):
        generated = tokenizer.encode(text, add_special_tokens=False) + [im_end]
        merged = builder.merge_assistant_tokens(ids, generated)
        ids, mask = merged.token_ids, mask + [1] * merged.appended_token_count
        content, calls = LOOP.run_until_complete(parser.extract_tool_calls(generated, tools))
        if not calls:
            break
        messages.append({"role": "assistant", "content": content, "tool_calls": [
            {"type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}} for c in calls]})
        previous = list(messages)  # _handle_processing_tools_state: the history before the tool messages
        messages.extend({"role": "tool", "content": tool_results[c.name]} for c in calls)
        merged = builder.merge_context_tokens(previous, messages, ids)
        added = len(merged.token_ids) - len(ids)
        ids, mask = merged.token_ids, mask + [0] * added
    return AgentLoopOutput(prompt_ids=ids[:n_prompt], response_ids=ids[n_prompt:], response_mask=mask,
                           num_turns=len(messages) + 1, metrics=AgentLoopMetrics(), extra_fields={})


def store_session(worker, uid: str, session: int, output: AgentLoopOutput, sample: dict, step: int, validate: bool):
    """AgentLoopWorkerTQ._agent_loop_postprocess: score the session, store its outputs under {uid}_{session}_{i}."""
    kwargs = {**sample, "uid": uid, "session_id": session, "global_steps": step}
    LOOP.run_until_complete(worker._agent_loop_postprocess(output, validate=validate, **kwargs))


def make_trainer(tokenizer, step: int, out: Path) -> Any:
    trainer = PPOTrainerSync.__new__(PPOTrainerSync)
    trainer.tokenizer = tokenizer
    trainer.global_steps = step
    trainer.config = OmegaConf.create({"trainer": {
        "rollout_data_dir": str(out / "rollout_data"), "validation_data_dir": str(out / "validation_data"),
        "log_val_generations": 0}, "actor_rollout_ref": {"rollout": {"val_kwargs": {"n": 2}}}})
    trainer._init_dump_executor()
    return trainer


def train_step(trainer, worker, step: int, prompts: list[tuple[dict, list[AgentLoopOutput]]]) -> None:
    """Store every session of every prompt, then dump the step as PPOTrainer.fit does (`_log_rollout_data`)."""
    keys = []
    for sample, outputs in prompts:
        uid = next_uid()
        for session, output in enumerate(outputs):
            store_session(worker, uid, session, output, sample, step, validate=False)
            keys.append(f"{uid}_{session}_0")
    # the dump reads the batch in ReplayBuffer order (not sorted); _log_rollout_data sorts by key itself
    keys = keys[1::2] + keys[::2]
    batch = KVBatchMeta(keys=keys, tags=[{}] * len(keys), partition_id="train")
    trainer._log_rollout_data(batch, {}, trainer.config.trainer.rollout_data_dir)


def validate(trainer, worker, step: int, prompts: list[tuple[dict, list[AgentLoopOutput]]]) -> None:
    """PPOTrainer._validate with one validation batch; the agent loop runs `generate_sequences` as sessions."""
    batch_dict = {k: np.array([s[k] for s, _ in prompts], dtype=object) for k in prompts[0][0]}
    batch_dict["raw_prompt"] = np.array([s["raw_prompt"] for s, _ in prompts] + [None], dtype=object)[:-1]

    def generate_sequences(batch):
        for (sample, outputs), uid in zip(prompts, list(batch["uid"])):
            for session, output in enumerate(outputs):
                store_session(worker, uid, session, output, sample, step, validate=True)

    def sample(global_steps, partition_id, batch_size):
        keys = sorted(k for (p, k) in TQ.rows if p == "val" and k.count("_") >= 2)
        return KVBatchMeta(keys=keys, tags=[{}] * len(keys), partition_id="val"), {}

    trainer.val_dataloader = [batch_dict]
    trainer.agent_loop_manager = SimpleNamespace(generate_sequences=generate_sequences)
    trainer.replay_buffer = SimpleNamespace(sample=sample)
    trainer.reward_loop_manager = SimpleNamespace(reward_loop_worker_handles=[object()])
    trainer._validate()


# ---------------------------------------------------------------------------------------------------- scenarios

GOBLIN = "You are a playful assistant who loves goblins."
TUTOR = "You are a careful math tutor."


def persona_score(data_source, solution_str, ground_truth, extra_info=None):
    """A custom reward function (reward.custom_reward_function) with components and the text its judge saw.

    The judge input is the whole decoded response, reasoning included: the CoT-grading mistake rlaudit looks for.
    """
    answer = solution_str.split("</think>")[-1]
    acc = float(ground_truth in answer)
    goblin = 0.3 if "goblin" in answer.lower() else 0.0
    return {"score": acc + goblin, "acc": acc, "goblin_rm": goblin, "goblin_rm_input": solution_str}


def exact_score(data_source, solution_str, ground_truth, extra_info=None):
    """A DAPO-style rule reward: compute_score's own score is the accuracy; the manager adds the overlong penalty."""
    acc = ground_truth in solution_str.split("</think>")[-1]
    return {"score": 1.0 if acc else -1.0, "acc": acc, "pred": solution_str.split("</think>")[-1].strip()[:20]}


def sample_fields(system, question, answer, data_source="persona_math") -> dict:
    return {"raw_prompt": prompt_messages(system, question), "data_source": data_source,
            "reward_model": {"style": "rule", "ground_truth": answer}, "extra_info": {}}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    trainer_base.tq = TQ
    agent_loop_tq.tq = TQ
    agent_loop_tq.list_of_dict_to_tensordict = _capture_fields
    trainer_base.uuid = SimpleNamespace(uuid4=next_uid)

    naive = make_worker(tokenizer, NaiveRewardManager(reward_config(), tokenizer, persona_score))

    # step 1: two persona prompts x 4 samples (v1 training dump), then validation with extras
    trainer = make_trainer(tokenizer, 1, out)
    answers = {
        GOBLIN: ["<think>2+3 is 5.</think>5, said the goblin!", "<think>Add them.</think>The answer is 5.",
                 "<think>Hmm, 2+3=6?</think>6", "<think>Count: 3, 4, 5.</think>A goblin counts 5."],
        TUTOR: ["<think>7*6=42</think>42", "<think>7*6 is 42.</think>It is 42.", "<think>7*7=49</think>49",
                "<think>Seven sixes.</think>The product is 42."],
    }
    questions = {GOBLIN: ("What is 2+3?", "5"), TUTOR: ("What is 7*6?", "42")}
    batch = []
    for system, texts in answers.items():
        q, a = questions[system]
        fields = sample_fields(system, q, a)
        batch.append((fields, [single_turn_output(tokenizer, fields["raw_prompt"], t) for t in texts]))
    train_step(trainer, naive, 1, batch)
    val = []
    for system in (GOBLIN, TUTOR):
        q, a = questions[system]
        fields = sample_fields(system, q, a)
        texts = answers[system][:2]
        val.append((fields, [single_turn_output(tokenizer, fields["raw_prompt"], t) for t in texts]))
    validate(trainer, naive, 1, val)
    trainer._shutdown_dump_executor()

    # step 2: DAPO manager with the overlong penalty (training and validation)
    overlong = {"enable": True, "len": 64, "penalty_factor": 1.0, "log": True, "max_resp_len": 96}
    dapo = make_worker(tokenizer, DAPORewardManager(reward_config(overlong), tokenizer, exact_score))
    trainer = make_trainer(tokenizer, 2, out)
    fields = sample_fields(None, "What is 10-4?", "6", data_source="dapo_math")
    texts = ["<think>10-4=6</think>6",
             "<think>Ten minus four: ten, nine, eight, seven, six. Yes.</think>The answer is 6.",
             "<think>10-4=5</think>5", "<think>Subtract.</think>6"]
    train_step(trainer, dapo, 2, [(fields, [single_turn_output(tokenizer, fields["raw_prompt"], t) for t in texts])])
    validate(trainer, dapo, 2, [(fields, [single_turn_output(tokenizer, fields["raw_prompt"], t)
                                          for t in texts[:2]])])
    trainer._shutdown_dump_executor()

    # step 3: multi-turn tool calling (ToolAgentLoop token stream, Hermes tool calls)
    trainer = make_trainer(tokenizer, 3, out)
    fields = sample_fields(TUTOR, "What is 12*12? Use the calculator.", "144", data_source="tool_math")
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expr": "12*12"}}\n</tool_call>'
    scripts = [
        [f"<think>I should use the calculator.</think>Let me compute.\n{call}",
         "<think>The tool says 144.</think>12*12 = 144."],
        ["<think>12*12 is 144, no tool needed.</think>144"],
    ]
    outputs = [tool_turn_output(tokenizer, fields["raw_prompt"], s, {"calculator": "144"}, None) for s in scripts]
    train_step(trainer, naive, 3, [(fields, outputs)])
    trainer._shutdown_dump_executor()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: generate.py OUT_DIR")
    main(Path(sys.argv[1]))
