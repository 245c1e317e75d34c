"""The simulated policy: behaviour propensities as parameters, learned by policy gradient.

Each *feature* is a discrete choice the policy makes per rollout (say the tic word or not, box the answer or not,
add 0-3 elaborating sentences, get the task right or not). Its logit under condition c is

    logit[c, f] = init[c, f] + shared[f] + own[c, f]

`shared` moves every condition at once, `own` only one: the `transfer` knob (0..1) splits each update between
them, so learning under one persona spreads to the others to a tunable degree (the goblin pattern).

Updates are REINFORCE with the trainer's advantages: for a Bernoulli/binomial choice x with mean mu, the score
function is (x - mu), so the gradient for (c, f) is sum_i A_i (x_i - mu_i) over the rollouts of condition c.
It is preconditioned by the Fisher information of the choice (floored, so that rare choices are not amplified
into noise), as natural-gradient and Adam-style optimisers do, and a KL-like pull towards the initial policy
keeps unrewarded choices near where they started. A feature grows only if the advantages favour it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Feature:
    """One choice the policy makes per rollout."""

    name: str
    p0: float  # initial probability (per trial) under every condition ...
    offsets: dict[str, float] = field(default_factory=dict)  # ... plus these initial logit offsets per condition
    trials: int = 1  # >1: a binomial count (e.g. number of elaborating sentences)
    parent: str | None = None  # only chosen when the parent feature was chosen (a habit that builds on another)
    task: str | None = None  # only chosen for rollouts of this task (task skill)
    boost: tuple[str, float] | None = None  # (feature, logit added per unit of that feature chosen)
    learnable: bool = True  # False: a property of the sampler, not of the weights (e.g. length-limit truncation)
    lr_scale: float = 1.0  # task skill is learned more slowly than a surface habit


def logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Hyper:
    lr: float = 0.35
    transfer: float = 0.5
    kl: float = 0.25  # pull towards the initial logits, per unit of lr
    fisher_floor: float = 0.08


class Policy:
    """Propensities of `features` under `conditions`, with the update rule described in the module doc."""

    def __init__(self, features: list[Feature], conditions: list[str], tasks: list[str], hyper: Hyper):
        self.features = features
        self.conditions = conditions
        self.tasks = tasks
        self.hyper = hyper
        self.index = {f.name: i for i, f in enumerate(features)}
        C, F = len(conditions), len(features)
        self.init = np.array([[logit(f.p0) + f.offsets.get(c, 0.0) for f in features] for c in conditions])
        self.shared = np.zeros(F)
        self.own = np.zeros((C, F))
        self.rate = np.array([f.lr_scale * f.learnable for f in features], dtype=float)
        self.trials = np.array([f.trials for f in features], dtype=float)

    def logits(self) -> np.ndarray:
        return self.init + self.shared[None, :] + self.own

    def probabilities(self) -> np.ndarray:
        """(conditions, features) per-trial probabilities, ignoring parents and boosts."""
        return sigmoid(self.logits())

    def sample(self, cond: np.ndarray, task: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Choices for rollouts with condition indices `cond` and task indices `task`.

        Returns (x, mu, active): counts chosen, their expected values given everything chosen before, and
        whether the feature was on offer at all (parent chosen, right task). Inactive cells have x = mu = 0.
        """
        n, F = len(cond), len(self.features)
        z = self.logits()[cond]  # (n, F)
        x = np.zeros((n, F))
        mu = np.zeros((n, F))
        active = np.ones((n, F), dtype=bool)
        for j, f in enumerate(self.features):  # in declaration order: parents and boosters come first
            if f.parent is not None:
                active[:, j] &= x[:, self.index[f.parent]] > 0
            if f.task is not None:
                active[:, j] &= task == self.tasks.index(f.task)
            zj = z[:, j]
            if f.boost is not None:
                zj = zj + f.boost[1] * x[:, self.index[f.boost[0]]]  # per unit chosen (0/1 for one trial)
            p = sigmoid(zj)
            draw = rng.binomial(f.trials, p) if f.trials > 1 else (rng.random(n) < p).astype(float)
            x[:, j] = np.where(active[:, j], draw, 0)
            mu[:, j] = np.where(active[:, j], f.trials * p, 0)
        return x, mu, active

    def update(self, x: np.ndarray, mu: np.ndarray, active: np.ndarray, cond: np.ndarray,
               advantages: np.ndarray) -> None:
        """One policy-gradient step from a batch of rollouts and their advantages."""
        h = self.hyper
        n = len(cond)
        C = len(self.conditions)
        score = (x - mu) * advantages[:, None]  # REINFORCE: A * d log pi / d logit
        # Fisher information of each choice (binomial variance), per condition
        p = np.where(active, mu / self.trials, 0.0)
        fisher = np.where(active, self.trials * p * (1 - p), 0.0)
        grad = np.zeros((C, len(self.features)))
        info = np.zeros_like(grad)
        offered = np.zeros_like(grad)
        np.add.at(grad, cond, score)
        np.add.at(info, cond, fisher)
        np.add.at(offered, cond, active.astype(float))
        grad, info, offered = grad / n, info / n, offered / n
        floor = h.fisher_floor * offered * self.trials[None, :]
        own_step = np.divide(grad, np.maximum(info, floor), out=np.zeros_like(grad), where=offered > 0)
        shared_info = np.maximum(info.sum(0), floor.sum(0))
        shared_step = np.divide(grad.sum(0), shared_info, out=np.zeros(len(self.features)), where=shared_info > 0)
        self.shared += h.lr * (h.transfer * shared_step - h.kl * self.shared) * self.rate
        self.own += h.lr * ((1 - h.transfer) * own_step - h.kl * self.own) * self.rate[None, :]

    def expected_rates(self) -> np.ndarray:
        """(conditions, features): probability that a rollout shows each feature at least once, given it is on
        offer, with parents folded in (a child is shown only when its parent is)."""
        p = self.probabilities()
        shown = 1 - (1 - p) ** self.trials[None, :]
        for j, f in enumerate(self.features):
            if f.parent is not None:
                shown[:, j] = shown[:, j] * shown[:, self.index[f.parent]]
        return shown
