"""Write Tinker cookbook rollout summaries with the cookbook's own code (no GPU, no network).

Usage: python generate.py OUT_DIR   (in a venv with requirements.txt installed)

Builds small TrajectoryGroups by hand from the cookbook's own data classes (`tinker_cookbook.rl.types`:
Transition, Trajectory, TrajectoryGroup; `tinker.ModelInput` observations; `TokensWithLogprobs` actions), then
does exactly what `tinker_cookbook.rl.train._maybe_export_rollout_summary_jsonl` and
`RLTestSetEvaluator.__call__` do: `serialize_rollout_summaries(...)` and `TrainingRunStore.write_rollouts(...)`
on a `LocalStorage`, which writes `OUT_DIR/iteration_NNNNNN/{train,eval_<label>}_rollout_summaries.jsonl`.
The legacy flat layout (cookbook #389..#516: `OUT_DIR/train_iteration_NNNNNN_rollout_summaries.jsonl`, written
by `write_rollout_summaries_jsonl`) holds the same records; that function raises in 0.6.1 (past its removal
version), so it is not called here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tinker
from tinker_cookbook.completers import TokensWithLogprobs
from tinker_cookbook.rl.rollout_logging import serialize_rollout_summaries
from tinker_cookbook.rl.types import Trajectory, TrajectoryGroup, Transition
from tinker_cookbook.stores.storage import LocalStorage
from tinker_cookbook.stores.training_store import TrainingRunStore


def transition(ob_len: int, ac_len: int, reward: float, done: bool, metrics=None, logs=None) -> Transition:
    return Transition(ob=tinker.ModelInput.from_ints(list(range(ob_len))),
                      ac=TokensWithLogprobs(tokens=list(range(ac_len)), maybe_logprobs=[-0.5] * ac_len),
                      reward=reward, episode_done=done, metrics=metrics or {}, logs=logs or {})


def single_turn_group(correct: list[float], fmt: list[float], format_coef: float = 0.1) -> TrajectoryGroup:
    """A ProblemEnv-style group: one transition per trajectory, reward = format_coef*(format-1) + correct."""
    trajs = [Trajectory(transitions=[transition(12, 5 + i, format_coef * (f - 1) + c, True,
                                                {"format": f, "correct": c, "stop/completed": 1.0})],
                        final_ob=tinker.ModelInput.empty())
             for i, (c, f) in enumerate(zip(correct, fmt))]
    return TrajectoryGroup(trajectories_G=trajs, final_rewards_G=[0.0] * len(trajs),
                           metrics_G=[{} for _ in trajs])


def multi_turn_group() -> TrajectoryGroup:
    """A tool-use group: two transitions (tool call, then answer) and a group-level (pairwise) reward."""
    trajs = []
    for i, final in enumerate([0.5, -0.5]):
        steps = [transition(20, 8, 0.0, False, {"num_tool_calls": 1.0},
                            {"tool_call_0": 'search({"q": "tinker"})', "tool_result_0": "Tinker is an API"}),
                 transition(40, 6 + i, 1.0 - i, True, {"correct": 1.0 - i, "stop/completed": 1.0},
                            {"assistant_content": f"answer {i}"})]
        trajs.append(Trajectory(transitions=steps, final_ob=tinker.ModelInput.from_ints(list(range(50)))))
    return TrajectoryGroup(trajectories_G=trajs, final_rewards_G=[0.5, -0.5],
                           metrics_G=[{"win_rate": 1.0}, {"win_rate": 0.0}])


def main(out: Path) -> None:
    store = TrainingRunStore(LocalStorage(out))
    for iteration in (0, 1):
        groups = [single_turn_group([1.0, 0.0, 1.0], [1.0, 1.0, 0.0]), multi_turn_group()]
        tags = [["gsm8k", "math"], ["search_tool"]]
        records = serialize_rollout_summaries(split="train", iteration=iteration, trajectory_groups_P=groups,
                                              taglist_P=tags, sampling_client_steps_P=[iteration, iteration])
        store.write_rollouts(iteration, records, base_name="train")
    # RLTestSetEvaluator at iteration 1, evaluator label "gsm8k_test"
    eval_groups = [single_turn_group([1.0, 1.0], [1.0, 1.0])]
    records = serialize_rollout_summaries(split="eval/gsm8k_test", iteration=1, trajectory_groups_P=eval_groups,
                                          taglist_P=[["gsm8k"]], sampling_client_steps_P=[1])
    store.write_rollouts(1, records, base_name="eval_gsm8k_test")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
