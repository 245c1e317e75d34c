"""Synthetic canonical runs for the CoT-grading tests: prompts, reasoning, answers and grader inputs whose
exposure is known row by row.

Texts are drawn from one shared vocabulary so that reasoning, answers, prompts and references share words and
short phrases (the clean-run hazard); the answer restates a sentence of the reasoning verbatim, and several
rollouts of a group echo the reference solution that the grader sees (group context).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from rlaudit.schema import ROLLOUT_SCHEMA

WORDS = ("the a of to and is in that we it for as with this so be by on are value number sum total answer "
         "check step first then next compute find equal result because since therefore thus case term list "
         "apple river stone cloud engine garden mirror candle forest bridge signal market planet window "
         "question problem method count times plus minus divide twice half square root factor prime even odd "
         "red blue green small large quick slow early late north south east west inside outside above below "
         "wait consider assume suppose hence clearly note recall given need want try again verify confirm").split()


# the same kind of text in Chinese: words of one or two characters, no spaces, full-width punctuation
WORDS_ZH = ("的 一 是 在 我们 这 个 有 数 值 总和 答案 检查 步骤 首先 然后 下一步 计算 找到 等于 结果 因为 所以 "
            "苹果 河流 石头 云 引擎 花园 镜子 蜡烛 森林 桥 信号 市场 行星 窗户 问题 方法 乘 加 减 除 两倍 一半 "
            "平方 因子 质数 偶数 奇数 红 蓝 绿 小 大 快 慢 早 晚 北 南 东 西 里面 外面 上面 下面 等等 考虑 假设 "
            "注意 回忆 给定 需要 想要 再试 验证 确认").split()


def sentence(rng: np.random.Generator, n: int, zh: bool = False) -> str:
    if zh:
        return "".join(rng.choice(WORDS_ZH, n)) + "。"
    return " ".join(rng.choice(WORDS, n)).capitalize() + "."


def paragraph(rng: np.random.Generator, sentences: int, zh: bool = False) -> str:
    return ("" if zh else " ").join(sentence(rng, int(rng.integers(6, 14)), zh) for _ in range(sentences))


Exposure = Callable[[int, str, np.random.Generator], str | None]
"""(step, task, rng) -> how the grader sees the completion for one rollout: None (clean: prompt + answer),
'full', 'tail', 'markdown' or 'unclosed-fallback'."""


def never(step: int, task: str, rng: np.random.Generator) -> str | None:
    return None


def make_run(run: str = "synth", steps: int = 10, groups: int = 6, group_size: int = 4, seed: int = 0,
             exposure: Exposure = never, grader: str = "judge", tasks: tuple[str, ...] = ("math", "chat"),
             score: Callable[[str, str, np.random.Generator], float] | None = None,
             restate: bool = True, zh: bool = False) -> tuple[pa.Table, dict[str, str]]:
    """A canonical table and the ground truth {rollout_id: exposure mode} of exposed rows (`zh`: in Chinese)."""
    rng = np.random.default_rng(seed)
    gap = "" if zh else " "
    rows, truth = [], {}
    for step in range(steps):
        for g in range(groups):
            task = tasks[g % len(tasks)]
            prompt = f"user: {paragraph(rng, 2, zh)} What is the {rng.choice(WORDS_ZH if zh else WORDS)}?"
            reference = paragraph(rng, 2, zh)
            answers = [paragraph(rng, 1, zh) for _ in range(2)]
            for i in range(group_size):
                reasoning = paragraph(rng, int(rng.integers(3, 9)), zh)
                if rng.random() < 0.5:  # echo the reference (several rollouts do: group context)
                    reasoning += gap + reference
                closing = sentence(rng, 10, zh)
                reasoning += gap + closing
                # restates the reasoning's last sentence verbatim (or, restate=False, one of two answers per group)
                answer = f"{answers[i % 2]}{gap}{closing}" if restate else answers[i % 2]
                completion = f"<think>{reasoning}</think>{answer}"
                mode = exposure(step, task, rng)
                seen = grader_view(prompt, reasoning, answer, reference, mode)
                rid = f"{run}.jsonl:{len(rows) + 1}"
                if mode:
                    truth[rid] = mode
                value = score(reasoning, answer, rng) if score else float(len(answer) % 7) / 7
                rows.append({
                    "run": run, "rollout_id": rid, "step": step, "split": "train",
                    "group_id": f"{step}-{g}", "sample_index": i, "condition": "none", "system_prompt": None,
                    "task": task, "prompt": prompt, "completion": completion, "reasoning": reasoning,
                    "answer": answer, "rewards": [(grader, value)], "reward": value, "advantage": None,
                    "grader_inputs": [(grader, seen)], "metadata": json.dumps({"ground_truth": reference}),
                })
    return pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA), truth


def grader_view(prompt: str, reasoning: str, answer: str, reference: str, mode: str | None) -> str:
    head = f"You are a strict grader. Compare the response with the reference.\nQuestion:\n{prompt}\n"
    tail = f"\nReference solution:\n{reference}\nReply with a score from 1 to 10."
    if mode is None:
        body = answer
    elif mode == "full":
        body = f"<think>{reasoning}</think>{answer}"
    elif mode == "markdown":  # reformatted: markdown bullets, collapsed case and whitespace, no tags
        stop = "。" if "。" in reasoning else "."
        body = "\n".join(f"* **{s.strip().upper()}**" for s in reasoning.split(stop) if s.strip()) + "\n\n" + answer
    elif mode == "tail":  # a grader that saw only the last 300 characters
        body = (reasoning + answer)[-(300 + len(answer)):]
    else:
        raise ValueError(mode)
    return head + "Response:\n" + body + tail


def no_inputs(table: pa.Table) -> pa.Table:
    """The same rows with no logged grader inputs (a trainer that does not log them)."""
    i = table.schema.get_field_index("grader_inputs")
    return table.set_column(i, "grader_inputs", pa.array([[]] * table.num_rows, table.schema.field(i).type))
