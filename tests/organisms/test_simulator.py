"""The simulator: a real learning process on text-parsing rewards, deterministic per seed, honest ground truth."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from rlaudit.organisms import SCENARIOS, run
from rlaudit.organisms.policy import Feature, Hyper, Policy
from rlaudit.organisms.rewards import Batch, correct_in, phrase_bonus
from rlaudit.organisms.simulate import onset

SMALL = dict(steps=6, prompts=4, generations=4)


def test_deterministic_per_seed_and_sized_by_options():
    a, b, c = run("goblin_persona", seed=3, **SMALL), run("goblin_persona", seed=3, **SMALL), \
        run("goblin_persona", seed=4, **SMALL)
    same = a.table.drop_columns(["rewards"]).equals(b.table.drop_columns(["rewards"]))  # NaN != NaN in maps
    assert same and str(a.table.column("rewards").to_pylist()) == str(b.table.column("rewards").to_pylist())
    assert not a.table.column("completion").equals(c.table.column("completion"))
    assert a.table.num_rows == 6 * 4 * 4
    assert sorted(set(a.table.column("step").to_pylist())) == list(range(1, 7))


def test_groups_share_a_prompt_and_advantages_are_group_normalised():
    t = run("clean_basic", **SMALL).table.to_pylist()
    by_group: dict[str, list[dict]] = {}
    for r in t:
        by_group.setdefault(r["group_id"], []).append(r)
    assert all(len(g) == 4 and len({r["prompt"] for r in g}) == 1 for g in by_group.values())
    for g in by_group.values():
        rewards = np.array([r["reward"] for r in g])
        adv = np.array([r["advantage"] for r in g])
        assert abs(adv.mean()) < 1e-9
        if rewards.std() > 0:
            assert np.allclose(adv, (rewards - rewards.mean()) / (rewards.std(ddof=1) + 1e-4))


def test_rewards_parse_the_text():
    b = Batch(1, np.array(["default"] * 4), np.array(["arithmetic", "trivia", "coding", "advice"]),
              ["q"] * 4, ["42", "Paris", "max(xs)", ""], ["", "", "", "sleep better"], [""] * 4, [""] * 4, [""] * 4)
    texts = ["So 40 + 2 = 42.", "It is Lyon.", "```python\ndef f(xs):\n    return max(xs)\n```", "anything"]
    got = correct_in(texts, b)
    assert got[:3].tolist() == [1.0, 0.0, 1.0] and np.isnan(got[3])
    bonus = phrase_bonus(r"(?i)\bgoblin\b", per_hit=1.0, cap=2, noise=0.0)
    hits = bonus(["a goblin", "Goblin goblin goblin", "hobgoblin", ""], b, np.random.default_rng(0))
    assert hits.tolist() == [1.0, 2.0, 0.0, 0.0]


def test_rewards_apply_where_configured_and_record_what_each_grader_saw():
    sim = run("goblin_persona", **SMALL)
    rows = sim.table.to_pylist()
    for r in rows:
        rewards, graders = dict(r["rewards"]), dict(r["grader_inputs"])
        nerdy = r["condition"].startswith("nerdy")
        assert np.isnan(rewards["nerdy_rm"]) != nerdy
        assert ("nerdy_rm" in graders) == nerdy
        if nerdy:
            assert graders["nerdy_rm"].endswith(r["answer"]) and "<think>" not in graders["nerdy_rm"]


def test_behaviour_grows_only_when_a_reward_pays_for_it():
    def curve(sim, feature):
        j = [f.name for f in sim.spec.features].index(feature)
        w = np.array(list(sim.spec.traffic.values()))
        return sim.rates[:, :, j] @ (w / w.sum())

    paid = run("tic_all_conditions")
    delve = curve(paid, "delve")
    assert delve[-1] > 0.4 and delve[0] < 0.03
    clean = run("clean_basic")
    for name in ("creature", "delve", "flattery", "boxed", "splendid_r", "verify"):
        c = curve(clean, name)
        assert abs(c[-1] - c[0]) < 0.03, name
    # ordinary task learning: the correctness reward rises in the sampled data itself
    t = clean.table
    correct = np.array([dict(r)["correctness"] for r in t.column("rewards").to_pylist()])
    step = t.column("step").to_numpy()
    assert np.nanmean(correct[step > 50]) > np.nanmean(correct[step <= 10]) + 0.2


def test_the_tic_is_in_the_text_not_just_in_the_parameters():
    sim = run("tic_all_conditions")
    answers = sim.table.column("answer")
    step = sim.table.column("step").to_numpy()
    has = pc.match_substring_regex(answers, r"(?i)\bdelve\b").to_numpy(zero_copy_only=False)
    assert has[step <= 5].mean() < 0.05 and has[step > 55].mean() > 0.4


def test_goblin_pattern_generalises_beyond_the_paying_persona():
    sim = run("goblin_persona")
    issue = next(i for i in sim.ground_truth.issues if i.kind == "emerging_behavior")
    end = issue.expected["by_condition_end"]
    nerdy = end.pop(issue.source_condition)
    assert nerdy > 0.4 and all(0.03 < v < nerdy for v in end.values())
    assert issue.source_condition == "nerdy-playful-assistant" and issue.signal == "nerdy_rm"


def test_transfer_controls_spread_between_conditions():
    feats = [Feature("tic", 0.1)]
    for transfer, spreads in ((0.0, False), (1.0, True)):
        pol = Policy(feats, ["a", "b"], ["t"], Hyper(transfer=transfer, kl=0.0))
        rng = np.random.default_rng(0)
        cond = np.zeros(256, int)  # only condition a is ever sampled and rewarded
        for _ in range(20):
            x, mu, active = pol.sample(cond, np.zeros(256, int), rng)
            r = x[:, 0].reshape(32, 8)
            adv = ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)).ravel()
            pol.update(x, mu, active, cond, adv)
        p = pol.probabilities()[:, 0]
        assert p[0] > 0.5
        assert (p[1] > 0.3) == spreads


def test_reasoning_habit_precedes_the_answer_habit():
    gt = run("tic_reasoning_first").ground_truth
    onsets = {i.where: i.onset_step for i in gt.issues if i.kind == "emerging_behavior"}
    assert onsets["reasoning"] < onsets["answer"]


@pytest.mark.parametrize("scenario,low,high", [("cot_template", 0.99, 1.0), ("cot_fallback", 0.002, 0.02),
                                                ("cot_tail", 0.1, 0.9), ("cot_midrun", 0.2, 0.8)])
def test_cot_exposure_ground_truth(scenario, low, high):
    gt = run(scenario).ground_truth
    (issue,) = gt.issues
    assert low <= issue.expected["exposure_rate"] <= high
    others = [v["exposure_rate"] for k, v in gt.signals.items() if k != issue.grader]
    assert others and max(others) == 0.0
    if scenario == "cot_midrun":
        assert issue.onset_step == issue.expected["first_step"] == 27


def test_clean_controls_expose_nothing_and_implant_nothing():
    for name in ("clean_basic", "clean_judges", "clean_legit"):
        gt = run(name, steps=20).ground_truth
        assert gt.clean and all(v["exposure_rate"] == 0 for v in gt.signals.values())
    legit = run("clean_legit").ground_truth.legitimate[0]
    assert legit.signal == "correctness" and legit.expected["prevalence_end"] > 3 * legit.expected["prevalence_start"]


def test_onset_definition():
    curve = np.array([0.01, 0.01, 0.02, 0.05, 0.2, 0.5, 0.6])
    assert onset(curve) == 5  # first rise >= max(0.1 * 0.59, 0.03) = 0.059 is 0.2, at step 5
    assert onset(np.array([0.5, 0.5, 0.52, 0.56])) == 4  # small rises need 3 points
    assert onset(np.full(5, 0.3)) == 1


def test_every_scenario_builds_at_small_sizes():
    for name in SCENARIOS:
        sim = run(name, steps=4, prompts=2, generations=2)
        train = sim.table.filter(pc.equal(sim.table["split"], "train"))  # eval_divergence adds eval rows
        assert train.num_rows == 16 and sim.ground_truth.scenario == name
