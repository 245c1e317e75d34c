"""OpenRLHF capture: the wrapped reward function is called the way OpenRLHF 0.11.2 calls it, and the capture is
ingested as the run's rollout log.

The call is reproduced from openrlhf/utils/agent.py (0.11.2, read in the wheel; the real module imports torch,
transformers and vLLM, so it is not imported here): `SingleTurnAgentExecutor.__init__` loads `reward_func` from the
`--reward.remote_url` file with `importlib.util.spec_from_file_location("reward_func", path)`, and
`_fetch_rewards_via_func` calls it as `asyncio.to_thread(self.reward_func, queries[i:i+1], prompts[i:i+1],
labels[i:i+1])`, one sample per call, the `n_samples_per_prompt` samples of a prompt gathered concurrently
(`RolloutRayActor.generate_responses`). `queries` = decode(prompt + response tokens, skip_special_tokens=False).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "detectors"))
from cot_synth import make_run  # noqa: E402

from rlaudit.audit import audit_store  # noqa: E402
from rlaudit.cot.capture import flush_all  # noqa: E402
from rlaudit.detectors import AuditConfig  # noqa: E402
from rlaudit.errors import BadInputError  # noqa: E402
from rlaudit.readers import ReadOptions, resolve_reader  # noqa: E402

SYS = "<|im_start|>system\nYou are a nerdy, playful assistant.<|im_end|>\n"


def wrapper_file(tmp_path: Path, log_dir: Path, extra: str = "") -> Path:
    """The file a user passes as --reward.remote_url: their reward function, wrapped."""
    path = tmp_path / "rlaudit_reward.py"
    path.write_text(f'''
import torch_free_rewards_stub as _stub  # noqa: F401  (a user's grader module)
from rlaudit.cot.capture import wrap_openrlhf_reward

def my_reward(queries, prompts, labels, **kwargs):
    rewards = [1.0 if label in q[len(p):] else 0.0 for q, p, label in zip(queries, prompts, labels)]
    return {{"rewards": rewards, "scores": rewards, "extra_logs": {{"length": [float(len(q)) for q in queries]}}}}

reward_func = wrap_openrlhf_reward(my_reward, log_dir={str(log_dir)!r}{extra})
''')
    (tmp_path / "torch_free_rewards_stub.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    return path


def load_like_openrlhf(path: Path):
    spec = importlib.util.spec_from_file_location("reward_func", str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reward_func


def score_batch(reward_func, prompts: list[str], responses: list[list[str]], labels: list[str]) -> list:
    """One rollout batch: every sample is its own to_thread call with lists of one, as OpenRLHF does."""
    async def run():
        calls = [asyncio.to_thread(reward_func, [p + r], [p], [label])
                 for p, rs, label in zip(prompts, responses, labels) for r in rs]
        return await asyncio.gather(*calls)
    return asyncio.run(run())


PROMPTS = [f"{SYS}<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nName a prime.<|im_end|>\n<|im_start|>assistant\n"]


def responses(step: int) -> list[list[str]]:
    return [[f"<think>step {step} sample {g} thinking</think>4<|im_end|>" for g in range(2)],
            [f"<think>step {step} sample {g} prime</think>{7 if g == 0 else 9}<|im_end|>" for g in range(2)]]


def test_capture_is_ingested_as_openrlhf_rows(store, tmp_path, monkeypatch):
    log_dir = tmp_path / "logs"
    reward_func = load_like_openrlhf(wrapper_file(tmp_path, log_dir))
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    for step in (1, 2):
        out = score_batch(reward_func, PROMPTS, responses(step), ["4", "7"])
        assert out[0]["rewards"] == [1.0] and out[3]["rewards"] == [0.0]  # the user's result, unchanged
        clock[0] += 60.0  # training between rollout batches
    flush_all()
    assert resolve_reader(log_dir).name == "openrlhf"
    report = store.ingest(log_dir, run="orl")
    got = sorted(store.table("orl").to_pylist(), key=lambda r: (r["step"], r["prompt"] != PROMPTS[0], r["completion"]))
    assert len(got) == 8
    for r in got:
        p = 0 if r["prompt"] == PROMPTS[0] else 1
        assert r["prompt"] == PROMPTS[p]
        assert r["condition"] == ("nerdy-playful-assistant" if p == 0 else "none")
        g = int(r["completion"].split("sample ")[1][0])
        assert r["completion"] == responses(r["step"])[p][g]
        assert r["reasoning"] == f"step {r['step']} sample {g} " + ("thinking" if p == 0 else "prime")
        reward = 1.0 if (p == 0 or g == 0) else 0.0
        assert r["reward"] == reward
        assert dict(r["rewards"]) == {"my_reward": reward, "length": float(len(PROMPTS[p] + r["completion"]))}
        assert dict(r["grader_inputs"]) == {"my_reward": PROMPTS[p] + r["completion"]}
        meta = json.loads(r["metadata"])
        assert meta["label"] == ["4", "7"][p] and meta["score"] == reward
        assert r["group_id"].startswith(f"{r['step']}:")
    # groups: the two samples of a prompt at a step
    groups = {}
    for r in got:
        groups.setdefault(r["group_id"], []).append((r["step"], r["prompt"], r["sample_index"]))
    assert sorted(len(v) for v in groups.values()) == [2, 2, 2, 2]
    assert all(len({(s, p) for s, p, _ in v}) == 1 and sorted(i for *_, i in v) == [0, 1] for v in groups.values())
    assert [r["step"] for r in got] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert any("pauses between generation rounds" in n for n in report.notes)


def test_samples_per_step_numbers_steps_across_calls(store, tmp_path):
    log_dir = tmp_path / "logs"
    reward_func = load_like_openrlhf(wrapper_file(tmp_path, log_dir, ", samples_per_step=4"))
    for step in (1, 2, 3):
        score_batch(reward_func, PROMPTS, responses(step), ["4", "7"])
    flush_all()
    store.ingest(log_dir, run="sps")
    rows = store.table("sps").to_pylist()
    assert sorted(r["step"] for r in rows) == [1] * 4 + [2] * 4 + [3] * 4
    assert all(f"step {r['step']} " in r["completion"] for r in rows)


def test_grader_fed_full_completion_is_a_high_cot_grading_finding(store, tmp_path):
    table, _ = make_run(run="src", steps=4, groups=4, seed=5)
    log_dir = tmp_path / "logs"
    # rollout.batch_size (4 prompts) * n_samples_per_prompt (4) = 16 samples per step
    reward_func = load_like_openrlhf(wrapper_file(tmp_path, log_dir, ", name='judge', samples_per_step=16"))
    for step in range(4):
        batch = [r for r in table.to_pylist() if r["step"] == step]

        async def run(batch=batch):
            return await asyncio.gather(*[asyncio.to_thread(reward_func, [r["prompt"] + r["completion"]],
                                                            [r["prompt"]], ["x"]) for r in batch])
        asyncio.run(run())
    flush_all()
    store.ingest(log_dir, run="cot")
    rows = store.table("cot").to_pylist()
    assert len(rows) == table.num_rows and all(r["reasoning"] for r in rows)
    (f,) = audit_store(store, ["cot"], AuditConfig(detectors=["cot_grading"])).of_kind("cot_grading")
    assert f["grader"] == "judge" and f.severity == "high" and f["exposure_rate"] == 1.0


def test_bad_capture_records_name_file_line_and_field(store, tmp_path):
    d = tmp_path / "logs" / "openrlhf"
    d.mkdir(parents=True)
    good = {"grader": "rm", "step": 1, "prompt": "user: q\n", "query": "user: q\nanswer", "reward": 1.0}
    (d / "rm.host-1.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "reward": "high"}) + "\n"
                                       + json.dumps({**good, "query": None}) + "\n")
    with pytest.raises(BadInputError, match=r"rm.host-1.jsonl:2: field 'reward': expected a number or null"):
        store.ingest(tmp_path / "logs", run="bad", options=ReadOptions(strict=True))
    report = store.ingest(tmp_path / "logs", run="bad2")
    assert report.bad_records == 2 and store.table("bad2").column("completion").to_pylist() == ["answer"]
