"""training_health: each check on constructed runs with exact statistics, the scalar-log checks, and silence on
a healthy run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binom

from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.detectors.training_health import metrics_option
from rlaudit.schema import canonical_table
from rlaudit.stats import wilson_interval

STEPS, GROUPS, G = 12, 8, 8  # 12 steps x 8 groups of 8; windows: steps 1-4 and 9-12


def make_run(store, reward, completion=None, answer=None, reasoning=None, advantage=None, split="train",
             steps=STEPS, run="r", condition=None, append_to=None, components=None, metadata=None):
    """A run whose per-rollout values come from functions of (step, group, sample index)."""
    rows: dict[str, list] = {k: [] for k in (
        "run", "rollout_id", "step", "split", "group_id", "sample_index", "condition", "system_prompt", "task",
        "prompt", "completion", "reasoning", "answer", "rewards", "reward", "advantage", "grader_inputs",
        "metadata")}
    for s in range(1, steps + 1):
        for g in range(GROUPS):
            for i in range(G):
                r = float(reward(s, g, i))
                rows["run"].append(run)
                rows["rollout_id"].append(f"{split}{s}:{g}:{i}")
                rows["step"].append(s)
                rows["split"].append(split)
                rows["group_id"].append(f"{split}{s}-{g}")
                rows["sample_index"].append(i)
                rows["condition"].append(condition(s, g, i) if condition else "none")
                rows["system_prompt"].append(None)
                rows["task"].append("t")
                rows["prompt"].append(f"p{g}")
                rows["completion"].append(completion(s, g, i) if completion else "c" * 100)
                rows["reasoning"].append(reasoning(s, g, i) if reasoning else None)
                rows["answer"].append(answer(s, g, i) if answer else "a")
                rows["rewards"].append(components(s, g, i) if components else [("score", r)])
                rows["reward"].append(r)
                rows["advantage"].append(float(advantage(s, g, i)) if advantage else None)
                rows["grader_inputs"].append([])
                rows["metadata"].append(json.dumps(metadata(s, g, i)) if metadata else None)
    store.append(run, canonical_table(rows), key=f"{split}-{append_to or 'all'}")


def checks(store, run="r", **config):
    found = run_detectors(store, run, AuditConfig(detectors=["training_health"], **config))
    assert not [f for f in found if f.kind == "audit_error"], [f.get("traceback") for f in found]
    return {f["check"]: f for f in found}


def half(s, g, i):  # 4 of 8 right in every group
    return float(i % 2)


def test_healthy_run_is_quiet(store):
    make_run(store, half)
    assert {c: f.severity for c, f in checks(store).items() if f.severity in ("medium", "high")} == {}


@pytest.mark.parametrize("value,direction", [(1.0, "all_correct"), (0.0, "all_wrong")])
def test_zero_variance_exact(store, value, direction):
    # late third (steps 9-12): 6 of 8 groups have the same reward for every rollout
    make_run(store, lambda s, g, i: value if s >= 9 and g < 6 else half(s, g, i))
    f = checks(store)["zero_variance"]
    k, n = 4 * 6, 4 * 8
    st = f["statistics"]
    assert st["estimate"] == pytest.approx(k / n) and f.severity == "high"  # 0.75 >= 0.75
    assert (st["window"], st["groups"], st["zero_groups"]) == ([9, 12], n, k)  # what was counted, for a re-check
    assert st["p_value"] == pytest.approx(binom.sf(k - 1, n, 0.5))
    lo, hi = wilson_interval(np.array([k]), np.array([n]))
    assert st["ci"] == pytest.approx([lo[0], hi[0]])
    assert f["direction"] == direction
    assert st[f"{direction}_share"] == pytest.approx(0.75)
    assert st["early_share"] == 0.0
    assert f["onset_step"] == 9  # moving mean over 3 steps: (0 + .75 + .75) / 3 = 0.5 at step 9
    assert st["q_value"] <= 0.05 and st["tests"] >= 1
    assert f.evidence and all(e.step >= 9 for e in f.evidence)


def test_advantage_ess_exact(store):
    # one rollout per group carries almost all of the advantage
    adv = lambda s, g, i: 10.0 if i == 0 else 0.1  # noqa: E731
    make_run(store, half, advantage=adv)
    f = checks(store)["advantage_ess"]
    ess = (10 + 7 * 0.1) ** 2 / (8 * (100 + 7 * 0.01))
    assert f["statistics"]["estimate"] == pytest.approx(ess)
    assert f.severity == "medium"


def test_length_growth_exact(store):
    def completion(s, g, i):
        base = 100 if s <= 4 else 200 if s <= 8 else 300
        return "x" * (base + (10 if g % 2 else -10) * base // 100)
    cond = lambda s, g, i: "nerdy" if g < 4 else "none"  # noqa: E731
    make_run(store, half, completion=completion, condition=cond)
    f = checks(store)["length_growth"]
    assert f["statistics"]["estimate"] == pytest.approx(3.0)
    assert f.severity == "high"  # >= 2.5
    lo, hi = f["statistics"]["ci"]
    assert lo < 3.0 < hi
    assert set(f["by_condition"]) == {"nerdy", "none"}
    assert f["onset_step"] == 5  # first step past the baseline whose smoothed mean departs


def test_truncation_exact(store):
    trunc = lambda s, g, i: s >= 9 and i < 2  # noqa: E731  2 of 8 = 25% in the last third
    make_run(store, half, reasoning=lambda s, g, i: "thinking", answer=lambda s, g, i: "" if trunc(s, g, i) else "a",
             completion=lambda s, g, i: "<think>\nthinking" if trunc(s, g, i) else "<think>\nthinking\n</think>\n\na")
    f = checks(store)["truncation"]
    assert f["statistics"]["estimate"] == pytest.approx(0.25) and f["statistics"]["early"] == 0.0
    assert f.severity == "high"
    assert f["onset_step"] == 9
    assert all(e.note == "truncated completion" for e in f.evidence)


def test_truncation_unknown_without_markers(store):
    make_run(store, half)
    found = run_detectors(store, "r", AuditConfig(detectors=["training_health"]))
    assert "truncation" not in {f["check"] for f in found}


def test_reward_eval_divergence_exact(store):
    make_run(store, lambda s, g, i: s / 12 * (i % 2) + s / 24)  # training reward rises with the step
    make_run(store, lambda s, g, i: (13 - s) / 12 * (i % 2), split="eval", append_to="eval")  # eval falls
    f = checks(store)["reward_eval_divergence"]
    eval_means = np.array([(13 - s) / 24 for s in range(1, 13)])
    assert f["statistics"]["estimate"] == pytest.approx(eval_means[-4:].mean() - eval_means[:4].mean())
    assert f.severity == "high"
    assert f["statistics"]["p_eval_fall"] < 0.01 and f["statistics"]["p_train_rise"] < 0.01


def test_max_step_limits_eval_rows(store):
    make_run(store, lambda s, g, i: s / 12 * (i % 2) + s / 24)
    make_run(store, lambda s, g, i: (13 - s) / 12 * (i % 2), split="eval", append_to="eval")
    assert "reward_eval_divergence" not in checks(store, max_step=3)


# ---------------------------------------------------------------------------------------------- scalar logs
def test_scalar_checks_from_verl_file_logger(store, tmp_path):
    make_run(store, half)
    path = tmp_path / "exp.jsonl"  # verl FileLogger: {"step", "data"}
    with open(path, "w") as fh:
        for s in range(1, 13):
            fh.write(json.dumps({"step": s, "data": {
                "actor/entropy": 1.0 if s <= 4 else 0.05, "actor/kl_loss": 0.001 * s ** 3,
                "actor/pg_clipfrac": 0.35 + 0.01 * (s % 2), "actor/grad_norm": 1e4 if s == 7 else 1.0,
                "actor/lr": 1e-6}}) + "\n")
    found = checks(store, options=metrics_option({"r": [path]}))
    ent = found["entropy_collapse"]
    assert ent.severity == "high" and ent["statistics"]["estimate"] == pytest.approx(0.05)
    assert ent["statistics"]["key"] == "actor/entropy" and ent["onset_step"] == 5
    assert found["kl_drift"].severity == "medium"
    assert found["clip_saturation"]["statistics"]["estimate"] == pytest.approx(np.mean([0.35, 0.36] * 2))
    assert found["grad_norm"]["onset_step"] == 7 and found["grad_norm"]["statistics"]["spikes"] == 1
    assert ent["scalar_keys"]["learning_rate"] == "actor/lr"
    assert any("keys found" in n and "entropy=actor/entropy" in n for n in ent["notes"])


def test_prime_rl_metrics_jsonl_keys(tmp_path):
    from rlaudit.health.scalars import read_scalar_logs

    path = tmp_path / "metrics.jsonl"  # prime-rl FileMonitor: {"step", "time", ...}
    path.write_text("".join(json.dumps({"step": s, "time": 1.0 * s, "entropy/all/mean": 0.5,
                                        "optim/grad_norm": 0.3, "optim/lr": 1e-6,
                                        "effective/gsm8k/is_truncated/mean": 0.01}) + "\n" for s in range(3)))
    log = read_scalar_logs([path])
    assert log.formats == {"prime-rl"}
    assert log.found() == {"entropy": "entropy/all/mean", "grad_norm": "optim/grad_norm",
                           "learning_rate": "optim/lr", "truncation": "effective/gsm8k/is_truncated/mean"}


def test_trl_trainer_state_written_by_trl():
    """The trainer_state.json of a real TRL GRPO run (conformance fixture, trl 1.16)."""
    from pathlib import Path

    from rlaudit.health.scalars import find_scalar_logs, read_scalar_logs

    root = Path(__file__).parents[1] / "conformance" / "fixtures" / "trl" / "chat_think"
    files = find_scalar_logs(root / "completions")
    assert [f.relative_to(root).as_posix() for f in files] == ["checkpoint-20/trainer_state.json"]
    log = read_scalar_logs(files)
    assert log.found() == {"entropy": "entropy", "clip_fraction": "clip_ratio/region_mean", "grad_norm": "grad_norm",
                           "learning_rate": "learning_rate", "truncation": "completions/clipped_ratio",
                           "length": "completions/mean_length", "zero_std_groups": "frac_reward_zero_std",
                           "reward": "reward"}
    assert log.series("entropy") == ([10, 20], [1.6576265215873718, 1.7353349566459655])


def test_tensorboard_written_by_trl_logger():
    """Events written by transformers' TensorBoardCallback (TRL with report_to="tensorboard") from the same run's
    log_history (tests/health/fixtures/make_trl_tensorboard.py); values are float32 in the file."""
    from pathlib import Path

    from rlaudit.health.scalars import find_scalar_logs, read_scalar_logs

    root = Path(__file__).parents[1] / "health" / "fixtures" / "trl_tensorboard"
    files = find_scalar_logs(root)
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents")
    log = read_scalar_logs(files)
    assert log.formats == {"tensorboard"}
    assert log.found()["entropy"] == "train/entropy" and log.found()["grad_norm"] == "train/grad_norm"
    steps, values = log.series("train/entropy")
    assert steps == [10, 20] and values == pytest.approx([1.6576265215873718, 1.7353349566459655], rel=1e-6)
    assert len(log.rows) == 52


def test_bh_across_checks(store):
    """Every check with a p-value is one test; q-values are BH over them."""
    make_run(store, lambda s, g, i: 1.0 if s >= 9 and g < 6 else half(s, g, i))
    f = checks(store)["zero_variance"]
    st = f["statistics"]
    assert st["tests"] >= 2  # zero_variance, advantage_ess, length_growth at least
    assert st["p_value"] <= st["q_value"] <= min(1.0, st["p_value"] * st["tests"]) + 1e-12


def test_truncation_from_finish_reason_and_bad_metadata(store):
    """A trainer's finish reason marks truncation; metadata that is not JSON is ignored, not an error."""
    rows = {k: [] for k in ("run", "rollout_id", "step", "split", "group_id", "sample_index", "condition",
                            "system_prompt", "task", "prompt", "completion", "reasoning", "answer", "rewards",
                            "reward", "advantage", "grader_inputs", "metadata")}
    for s in range(1, STEPS + 1):
        for g in range(GROUPS):
            for i in range(G):
                meta = json.dumps({"finish_reason": "length" if s >= 9 and i < 3 else "stop"})
                for k, v in (("run", "m"), ("rollout_id", f"{s}:{g}:{i}"), ("step", s), ("split", "train"),
                             ("group_id", f"{s}-{g}"), ("sample_index", i), ("condition", "none"),
                             ("system_prompt", None), ("task", "t"), ("prompt", "p"), ("completion", "c"),
                             ("reasoning", None), ("answer", "a"), ("rewards", [("score", half(s, g, i))]),
                             ("reward", half(s, g, i)), ("advantage", None), ("grader_inputs", []),
                             ("metadata", "not json" if g == 0 else meta)):
                    rows[k].append(v)
    store.append("m", canonical_table(rows), key="all")
    f = checks(store, run="m")["truncation"]
    assert f["statistics"]["estimate"] == pytest.approx(3 / 8 * 7 / 8)  # group 0's metadata is unreadable


def test_plateau_per_component_tost(store):
    """A learned component and a flat one: the flat one (only) is a plateau; p is the TOST p of the OLS slope."""
    from scipy.stats import linregress, t as student_t

    n_steps = 60  # 12 steps of 64 rollouts cannot show a change within +-0.2 SD (TOST power is too low)
    learned = lambda s, g, i: float(i < 2 + s // 15)  # noqa: E731  rises from 2/8 to 6/8 right
    flat = lambda s, g, i: 0.5 + 0.3 * (-1) ** i + 0.01 * (-1) ** s  # noqa: E731  spread 0.3, mean wobbles
    make_run(store, lambda s, g, i: learned(s, g, i) + flat(s, g, i), steps=n_steps,
             components=lambda s, g, i: [("acc", learned(s, g, i)), ("judge", flat(s, g, i))])
    found = run_detectors(store, "r", AuditConfig(detectors=["training_health"]))
    plateaus = {f["signal"]: f for f in found if f.kind == "training_health" and f["check"] == "plateau"}
    assert set(plateaus) == {"rewards.judge"}
    f = plateaus["rewards.judge"]
    assert f.severity == "low"
    steps = np.arange(1, n_steps + 1)
    y = np.array([np.mean([flat(s, g, i) for g in range(GROUPS) for i in range(G)]) for s in steps])
    within = np.sqrt(np.mean([np.var([flat(s, g, i) for g in range(GROUPS) for i in range(G)], ddof=1)
                              for s in steps]))
    fit = linregress(steps, y)
    change, se, margin = fit.slope * (n_steps - 1), fit.stderr * (n_steps - 1), 0.2 * within
    p = max(student_t.sf((change + margin) / se, n_steps - 2), student_t.sf((margin - change) / se, n_steps - 2))
    assert f["statistics"]["estimate"] == pytest.approx(change)
    assert f["statistics"]["margin"] == pytest.approx(margin)
    assert f["statistics"]["p_value"] == pytest.approx(p)
    assert f["statistics"]["q_value"] <= 0.05 and f["statistics"]["tests"] >= 3  # BH shared with the other checks


def test_plateau_single_component_is_one_test(store):
    make_run(store, lambda s, g, i: 0.5 + 0.1 * ((s * 7 + g * 3 + i) % 5 - 2), steps=36)
    found = run_detectors(store, "r", AuditConfig(detectors=["training_health"]))
    plateaus = [f for f in found if f.kind == "training_health" and f["check"] == "plateau"]
    assert [f["signal"] for f in plateaus] == ["reward"]


# ---------------------------------------------------------------------------------------------- length units
def words(s, g, i):  # 10 words early, 20 in the middle, 30 late; the same 100 characters throughout
    n = 10 if s <= 4 else 20 if s <= 8 else 30
    return " ".join(["a"] * n).ljust(100, ".")


def test_length_in_tokens_from_metadata(store):
    """Characters stay flat while the logged token counts triple: the check measures tokens and says so."""
    make_run(store, half, completion=words, metadata=lambda s, g, i: {"completion_tokens": words(s, g, i).count("a")})
    f = checks(store)["length_growth"]
    assert f["unit"] == "tokens" and f["length_source"] == "metadata.completion_tokens"
    assert f["statistics"]["estimate"] == pytest.approx(3.0) and "(in tokens)" in f.title
    assert "length in tokens (metadata.completion_tokens)" in f["notes"]


def test_characters_when_only_some_rollouts_have_token_counts(store):
    make_run(store, half, completion=words,
             metadata=lambda s, g, i: {"completion_tokens": 5} if g == 0 else {"other": 1})
    found = run_detectors(store, "r", AuditConfig(detectors=["training_health"]))
    notes = next(f for f in found if f.kind == "training_health")["notes"]
    assert any("length in characters" in n and "for only 96 of 768 rollouts" in n for n in notes)
    assert "length_growth" not in {f["check"] for f in found}  # 100 characters throughout


def test_truncation_at_the_token_limit(store):
    """No end markers at all, but the limit is known: completions that reach it were cut."""
    n_tok = lambda s, g, i: 64 if s >= 9 and i < 2 else 20  # noqa: E731
    make_run(store, half, metadata=lambda s, g, i: {"completion_tokens": n_tok(s, g, i)})
    assert "truncation" not in checks(store)  # limit unknown: nothing to compare with
    f = checks(store, options={"training_health": {"max_tokens": 64}})["truncation"]
    assert f["statistics"]["estimate"] == pytest.approx(0.25) and f["unit"] == "tokens" and f["max_tokens"] == 64
    assert "reached it: 64 tokens" in f.explanation


def test_truncation_at_a_per_rollout_limit_in_metadata(store):
    make_run(store, half, metadata=lambda s, g, i: {"completion_tokens": 64 if s >= 9 and i < 2 else 20,
                                                    "max_tokens": 64})
    f = checks(store)["truncation"]
    assert f["statistics"]["estimate"] == pytest.approx(0.25) and f["max_tokens"] == 64


def test_length_in_tokens_with_a_tokenizer(store, tmp_path):
    """A word-level tokenizer.json built here: the token count is the word count, whatever the characters."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    make_run(store, half, completion=words)
    assert "length_growth" not in checks(store)  # in characters it did not grow
    f = checks(store, options={"training_health": {"tokenizer": str(tmp_path)}})["length_growth"]
    # each completion: n words of 'a' plus one run of dots (one [UNK] token): 11, 21, 31 tokens
    assert f["unit"] == "tokens" and f["length_source"] == f"tokenizer {tmp_path}"
    assert f["statistics"]["estimate"] == pytest.approx(31 / 11)


def test_missing_tokenizer_is_a_clear_error(store, tmp_path):
    from rlaudit.errors import RlauditError
    from rlaudit.health.lengths import load_tokenizer

    with pytest.raises(RlauditError, match="no tokenizer.json there"):
        load_tokenizer(str(tmp_path))
