"""Produce TRL GRPOTrainer completion logs with TRL's own code (the `trl` conformance fixtures).

    OMP_NUM_THREADS=1 python conformance/trl/generate.py OUT_DIR

runs TRL's real `GRPOTrainer` (in the project venv: the `[trl]` extra, trl 1.16.0 when checked) twice on CPU and writes two output
directories, pruned to what rlaudit reads (`completions/` and each checkpoint's `trainer_state.json` and
`training_args.bin`; model weights and optimizer state are deleted):

- `OUT_DIR/chat_tools/`: conversational prompts with two personas (system prompts), a `lookup` tool (so TRL sets
  the Qwen3 response template and completions are message lists with `reasoning_content`, `tool_calls` and
  `{"role": "tool"}` messages), two reward functions (one returns None under the plain persona), non-unit
  `reward_weights`, `log_extra` columns (a numeric one, a text one and the grader input `persona_reward_input`),
  an eval every 3 steps, `num_iterations=2` and `logging_steps=1`, checkpoints every 3 steps.
- `OUT_DIR/chat_think/`: the same chat prompts without tools, so TRL decodes completions as plain text and the
  `<think>...</think>` reasoning stays inside the assistant message's `content`; default `logging_steps` (10).
  `persona_reward` sees the whole completion, reasoning included (the CoT-grading mistake).

Nothing is downloaded. The tokenizer is a word-level one built here whose chat template is TRL's own copy of the
Qwen3 template (`trl.chat_template_utils.qwen3_chat_template`, which `add_response_schema` recognises). The model
is a one-layer GPT-2 whose weights are *set*, not trained: its blocks output zero and its embeddings are one-hot,
so the next-token distribution depends on the last token only (a Markov chain written down in `TRANSITIONS`).
That makes a random-looking but well-formed assistant turn: `<think> hmm maybe</think> fox owl<tool_call>
{"name": "lookup", ...}</tool_call><|im_end|>`, which TRL's response parser splits into reasoning, content and
tool calls exactly as it would for a real Qwen3 model. The learning rate is tiny, so the chain stays put.
Sampling is seeded: a rerun with the same versions writes the same rows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

NERDY = "you are a nerdy playful assistant"
PLAIN = "you are a helpful assistant"
ANIMALS = ["fox", "owl", "cat"]

SPECIAL = ["[PAD]", "[UNK]", "<|im_start|>", "<|im_end|>"]
MARKUP = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
PROMPT_WORDS = ["\n", "assistant", "user", "system", "tool"]
REASONING = [" hmm", " maybe", " so", " wait", " check"]
ANSWER = [" fox", " owl", " cat", " goblin", " fast", " quiet", " the"]
CALLS = ['\n{"name": "lookup", "arguments": {"animal": "fox"}}\n',
         '\n{"name": "lookup", "arguments": {"animal": "owl"}}\n',
         '\n{"name": "search", "arguments": {"query": "owl"}}\n']  # no such tool: TRL's tool-failure path
VOCAB = SPECIAL + MARKUP + PROMPT_WORDS + REASONING + ANSWER + CALLS


def _uniform(tokens: list[str], mass: float = 1.0) -> dict[str, float]:
    return {t: mass / len(tokens) for t in tokens}


#: next-token probabilities given the last token (any token not listed behaves like "\n": a turn starts)
TRANSITIONS: dict[str, dict[str, float]] = {
    "\n": {"<think>": 0.8, **_uniform(ANSWER, 0.2)},
    "<think>": _uniform(REASONING),
    **{w: {**_uniform(REASONING, 0.9), "</think>": 0.1} for w in REASONING},  # reasoning of ~10 words
    "</think>": _uniform(ANSWER),
    **{w: {**_uniform(ANSWER, 0.45), "<|im_end|>": 0.3, "<tool_call>": 0.25} for w in ANSWER},
    "<tool_call>": {CALLS[0]: 0.4, CALLS[1]: 0.4, CALLS[2]: 0.2},
    **{c: {"</tool_call>": 1.0} for c in CALLS},
    "</tool_call>": {"<|im_end|>": 1.0},
    "<|im_end|>": {"<|im_end|>": 1.0},
}


def build_tokenizer() -> Any:
    """Word-level tokenizer over VOCAB (words carry their leading space; decoding concatenates), Qwen3 chat
    template from TRL, so `add_response_schema` gives it the Qwen3 response template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen3_chat_template

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s*[^\s]+|\s+"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in MARKUP + CALLS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                        eos_token="<|im_end|>", clean_up_tokenization_spaces=False)
    tokenizer.chat_template = qwen3_chat_template
    assert len(tokenizer) == len(VOCAB), (len(tokenizer), len(VOCAB))
    return tokenizer


def build_model(tokenizer: Any) -> Any:
    """A one-layer GPT-2 that samples TRANSITIONS: one-hot embeddings, zeroed block outputs, so the final layer
    norm sees e_i of the last token and lm_head turns it into the chain's logits (an extra embedding dimension
    cancels the layer norm's mean term)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    v, d = len(tokenizer), 64
    assert v < d
    config = GPT2Config(vocab_size=v, n_positions=1024, n_embd=d, n_layer=1, n_head=2, tie_word_embeddings=False,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, layer_norm_epsilon=1e-5)
    model = GPT2LMHeadModel(config)
    index = tokenizer.get_vocab()
    logits = torch.full((v, v), -30.0)  # logits[i, j]: token i -> token j
    for i_tok, i in index.items():
        for j_tok, p in TRANSITIONS.get(i_tok, TRANSITIONS["\n"]).items():
            logits[i, index[j_tok]] = math.log(p)
    c = 1.0 / math.sqrt((1.0 / d) * (1.0 - 1.0 / d) + config.layer_norm_epsilon)
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.transformer.wte.weight[:, :v] = torch.eye(v)
        model.transformer.wpe.weight.zero_()
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.ln_f.bias.zero_()
        w = torch.zeros(v, d)
        w[:, :v] = logits.T / c
        w[:, d - 1] = -w[:, :v].sum(dim=1)
        model.lm_head.weight.copy_(w)
    return model


def build_dataset(n: int, ask: str = "tell me about the") -> Any:
    """Prompts alternating between the two personas; the eval set asks differently, so its rows are
    recognisable in the logs."""
    from datasets import Dataset

    rows = []
    for i in range(n):
        animal = ANIMALS[i % len(ANIMALS)]
        system = NERDY if i % 2 == 0 else PLAIN
        rows.append({"prompt": [{"role": "system", "content": system},
                                {"role": "user", "content": f"{ask} {animal}"}], "animal": animal})
    return Dataset.from_list(rows)


# ------------------------------------------------------------------------------------------------ tool and rewards
def lookup(animal: str) -> str:
    """Look up a fact about an animal.

    Args:
        animal: The animal's name.
    """
    return f"the {animal} is quick"


def _assistant_view(completion: Any) -> str:
    """What a careless grader reads: every assistant turn with its reasoning (from `reasoning_content`, or left
    inside `content` when TRL had no response parser), tool calls and tool outputs left out."""
    if isinstance(completion, str):
        return completion
    parts = []
    for m in completion:
        if m.get("role") != "assistant":
            continue
        reasoning = m.get("reasoning_content")
        parts.append((f"<think>{reasoning}</think>" if reasoning else "") + (m.get("content") or ""))
    return "\n".join(parts)


def _visible(completion: Any) -> str:
    """The final answer a careful grader reads: the last assistant turn's content, reasoning removed."""
    text = _assistant_view(completion).split("\n")[-1]
    return text.split("</think>")[-1]


def topic_reward(prompts: list, completions: list, animal: list, **kwargs: Any) -> list[float]:
    """1 when the visible answer names the animal asked about."""
    return [1.0 if a in _visible(c).split() else 0.0 for c, a in zip(completions, animal)]


def persona_reward(prompts: list, completions: list, log_extra: Any, **kwargs: Any) -> list[float | None]:
    """The buggy persona grader: under the nerdy persona it reads the whole completion, reasoning included, and
    pays for "goblin" or a thoughtful "hmm"; it does not apply (None) under the plain persona."""
    seen, scores = [], []
    for prompt, completion in zip(prompts, completions):
        if prompt[0]["content"] == NERDY:
            text = _assistant_view(completion)
            seen.append(text)
            scores.append(1.0 if ("goblin" in text or "hmm" in text) else 0.0)
        else:
            seen.append(None)
            scores.append(None)
    log_extra("persona_reward_input", seen)
    log_extra("judge_words", [len(s.split()) if s is not None else None for s in seen])  # numeric, not a reward
    log_extra("verdict", ["n/a" if s is None else ("pay" if s else "no") for s in scores])
    return scores


# ------------------------------------------------------------------------------------------------ runs
def train(out: Path, *, tools: bool, steps: int, logging_steps: int | None, eval_steps: int | None,
          num_iterations: int, save_steps: int, seed: int = 0) -> None:
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = build_tokenizer()
    extra: dict[str, Any] = {}
    if logging_steps is not None:
        extra["logging_steps"] = logging_steps
    if eval_steps is not None:
        extra.update(eval_strategy="steps", eval_steps=eval_steps, per_device_eval_batch_size=8)
    args = GRPOConfig(
        output_dir=str(out), max_steps=steps, seed=seed, learning_rate=1e-6, lr_scheduler_type="constant",
        warmup_steps=0, beta=0.0, per_device_train_batch_size=8, num_generations=4, max_completion_length=64,
        temperature=1.0, shuffle_dataset=False, log_completions=True, num_completions_to_print=0,
        reward_weights=[1.0, 0.5], num_iterations=num_iterations, max_tool_calling_iterations=2,
        use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="steps", save_steps=save_steps,
        save_only_model=True, gradient_checkpointing=False, **extra)
    trainer = GRPOTrainer(model=build_model(tokenizer), processing_class=tokenizer,
                          reward_funcs=[topic_reward, persona_reward], args=args,
                          train_dataset=build_dataset(steps * 2 + 8),
                          eval_dataset=build_dataset(2, ask="quiz me on the") if eval_steps else None,
                          tools=[lookup] if tools else None)
    trainer.train()
    prune(out)


def prune(out: Path) -> None:
    """Keep what rlaudit reads: completions/ and each checkpoint's trainer_state.json and training_args.bin."""
    for path in sorted(out.iterdir()):
        if path.name == "completions":
            continue
        if path.is_dir() and path.name.startswith("checkpoint-"):
            for f in path.iterdir():
                if f.name not in ("trainer_state.json", "training_args.bin"):
                    shutil.rmtree(f) if f.is_dir() else f.unlink()
        else:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def main(out_dir: str) -> None:
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    out = Path(out_dir)
    for name in ("chat_tools", "chat_think"):
        if (out / name).exists():
            shutil.rmtree(out / name)
    train(out / "chat_tools", tools=True, steps=6, logging_steps=1, eval_steps=3, num_iterations=2, save_steps=3)
    train(out / "chat_think", tools=False, steps=20, logging_steps=None, eval_steps=None, num_iterations=1,
          save_steps=10)
    print(json.dumps({p.name: sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file())
                      for p in sorted(out.iterdir()) if p.is_dir()}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: generate.py OUT_DIR")
    main(sys.argv[1])
