"""The trainer setting that addresses each `training_health` check, per trainer (the remedy's "what to change").

Every key was checked in the trainer's source: TRL 1.16 `GRPOConfig` (`trl/trainer/grpo_config.py`:
`num_generations`, `max_completion_length`, `mask_truncated_completions`, `beta`, `epsilon`, `epsilon_high`,
`temperature`, `scale_rewards`, `loss_type`) and transformers `TrainingArguments` (`max_grad_norm`,
`learning_rate`); verl (`verl/trainer/config/actor/actor.yaml`: `clip_ratio`, `clip_ratio_high`,
`entropy_coeff`, `use_kl_loss`, `kl_loss_coef`, `grad_clip`, `loss_agg_mode`, under
`actor_rollout_ref.actor`; `data.max_response_length`; `actor_rollout_ref.rollout.n` and `.temperature`;
`algorithm.filter_groups.enable` (`FilterGroupsConfig`, DAPO dynamic sampling); `algorithm.kl_ctrl.kl_coef`);
prime-rl (`orchestrator.train.sampling.max_completion_tokens` and `.temperature` (`TrainSamplingConfig`),
`orchestrator.train.source[].curriculum.sampler.type = "difficulty_pool"` (`DifficultyPoolSamplerConfig`),
`trainer.loss.kl_tau` (`DefaultLossConfig`), `trainer.optim.max_norm`).
"""

from __future__ import annotations

#: check -> trainer -> setting advice. "any" is used for formats without an entry (generic wording).
SETTINGS: dict[str, dict[str, str]] = {
    "zero_variance_all_correct": {
        "trl": "drop prompts the policy always solves from the dataset (or make them harder), or raise "
               "`num_generations` so that groups still differ",
        "verl": "enable DAPO dynamic sampling `algorithm.filter_groups.enable=True` (with "
                "`algorithm.filter_groups.metric=acc`), or drop solved prompts from `data.train_files`",
        "prime-rl": "sample by difficulty: `orchestrator.train.source[].curriculum.sampler.type = "
                    "\"difficulty_pool\"` (its `easy` pool down-weights solved tasks)",
        "any": "remove or down-weight prompts every generation already solves; they carry no gradient",
    },
    "zero_variance_all_wrong": {
        "trl": "use easier prompts (a curriculum) or raise `num_generations` so that some rollouts succeed; check "
               "the reward function gives partial credit",
        "verl": "enable `algorithm.filter_groups.enable=True` and raise `actor_rollout_ref.rollout.n`, or use "
                "easier data",
        "prime-rl": "use `orchestrator.train.source[].curriculum.sampler.type = \"difficulty_pool\"` (its "
                    "`hard` pool down-weights unsolved tasks)",
        "any": "use easier prompts or more generations per prompt; groups where every rollout fails teach nothing",
    },
    "advantage_ess": {
        "trl": "check `scale_rewards` (\"group\" normalises each group's spread) and the reward outliers that "
               "dominate the advantages",
        "verl": "check the reward outliers and `algorithm.norm_adv_by_std_in_grpo`",
        "any": "clip or normalise the rewards whose outliers dominate the advantages",
    },
    "length_growth": {
        "trl": "cap `max_completion_length` and consider `loss_type=\"dr_grpo\"` (no length normalisation bias); "
               "check the reward for a length preference",
        "verl": "cap `data.max_response_length`, use `actor_rollout_ref.actor.loss_agg_mode=token-mean`, and check "
                "the reward for a length preference",
        "prime-rl": "cap `orchestrator.train.sampling.max_completion_tokens` and check the reward for a length "
                    "preference",
        "any": "cap the completion length and check the reward for a length preference",
    },
    "truncation": {
        "trl": "set `mask_truncated_completions=True` (truncated completions then get no gradient) and raise "
               "`max_completion_length` if the task needs it",
        "verl": "raise `data.max_response_length` or add an overlong penalty; check `response_length/clip_ratio`",
        "prime-rl": "raise `orchestrator.train.sampling.max_completion_tokens` or penalise truncated traces",
        "any": "mask or penalise truncated completions, or raise the length limit",
    },
    "reward_eval_divergence": {
        "trl": "the policy is hacking the training reward: fix the reward (see reward_attribution findings) and "
               "raise `beta` (KL to the reference model) to slow the drift",
        "verl": "fix the training reward and turn on `actor_rollout_ref.actor.use_kl_loss=True` with a larger "
                "`actor_rollout_ref.actor.kl_loss_coef`",
        "prime-rl": "fix the training reward and raise `trainer.loss.kl_tau`",
        "any": "fix the training reward and strengthen the KL penalty to the reference model",
    },
    "plateau": {
        "trl": "raise `learning_rate`, check `frac_reward_zero_std` and the reward's range",
        "verl": "raise `actor_rollout_ref.actor.optim.lr`, check the reward's range",
        "any": "raise the learning rate or check that the reward separates rollouts",
    },
    "entropy_collapse": {
        "trl": "raise `temperature`, widen `epsilon_high` (clip-higher), or lower `learning_rate`",
        "verl": "raise `actor_rollout_ref.actor.entropy_coeff` or `actor_rollout_ref.actor.clip_ratio_high`",
        "prime-rl": "raise `orchestrator.train.sampling.temperature` or lower the learning rate",
        "any": "raise the sampling temperature or add an entropy bonus",
    },
    "kl_drift": {
        "trl": "raise `beta` (KL coefficient) or lower `learning_rate`",
        "verl": "raise `actor_rollout_ref.actor.kl_loss_coef` (with `use_kl_loss=True`) or "
                "`algorithm.kl_ctrl.kl_coef`",
        "prime-rl": "raise `trainer.loss.kl_tau` or lower the learning rate",
        "any": "raise the KL coefficient or lower the learning rate",
    },
    "clip_saturation": {
        "trl": "lower `learning_rate` (updates are too large for `epsilon`), or widen `epsilon`/`epsilon_high`",
        "verl": "lower `actor_rollout_ref.actor.optim.lr` or raise `actor_rollout_ref.actor.clip_ratio`",
        "any": "lower the learning rate or widen the clip range",
    },
    "grad_norm": {
        "trl": "set `max_grad_norm` (gradient clipping) and lower `learning_rate`",
        "verl": "set `actor_rollout_ref.actor.grad_clip` and lower the learning rate",
        "prime-rl": "set `trainer.optim.max_norm` and lower the learning rate",
        "any": "clip gradients and lower the learning rate",
    },
}


def setting_for(check: str, trainer: str | None) -> str:
    """The advice for `check` in the trainer's own terms ('' for an unknown check)."""
    table = SETTINGS.get(check, {})
    return table.get(trainer or "", table.get("any", ""))
