"""The trainer's own scalars for a simulated run: a small token-level policy trained with the PPO/GRPO loss.

The rollout simulator (`simulate.py`) models *behaviours* (habits a reward pays for); the scalars a trainer logs
(entropy, KL to the reference, clip fraction, gradient norm) are properties of the token distribution and the
optimiser. They come from this model, run beside the rollouts with its own random stream (so adding it changed
no simulated rollout):

- `contexts` x `vocab` logits, initialised N(0, 1); the reference policy is the initial one.
- Each step samples `samples` tokens per context from the current (old) policy. A token's reward is a fixed
  per-(context, token) preference of scale `signal` plus unit noise; advantages are normalised within each
  context (GRPO's group) unless `scale_rewards` is False (then only centred, as TRL's `scale_rewards="none"`).
  At `reward_bug` steps the rewards are multiplied by `bug_scale` (a reward server returning raw logits).
- `iterations` PPO epochs on the batch: the clipped surrogate's gradient (ratio pi/pi_old, zero where clipped:
  ratio outside [1 - eps, 1 + eps] on the side the advantage pushes), minus `beta` times the gradient of the
  exact KL(pi || pi_ref), plus `entropy_coef` times the entropy gradient; its norm is logged before clipping to
  `max_grad_norm` (as transformers and verl log it), then the logits move by `lr` times the clipped gradient.
- Logged per step: mean token entropy (nats), mean KL(pi || pi_ref) (only when `beta` > 0: TRL logs `kl` only
  then, verl `actor/kl_loss` only with `use_kl_loss`), the clip fraction of the last epoch (low, high, region),
  the gradient norm (mean over epochs), the learning rate.

What goes wrong, and so what the health organisms set: a learning rate too high with no KL term collapses the
entropy; a KL coefficient too small lets the KL to the reference grow without bound; many epochs with a large
step saturate the clip; an unscaled reward with outliers spikes the gradient norm. The defaults are a healthy
run: a weak learnable signal, a KL term, clipped gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Optim:
    lr: float = 0.2
    beta: float = 0.1
    epsilon: float = 0.2
    entropy_coef: float = 0.0
    max_grad_norm: float | None = 1.0
    iterations: int = 1
    scale_rewards: bool = True
    signal: float = 0.15
    reward_bug: tuple[int, ...] = ()  # steps (1-based) whose rewards are multiplied by bug_scale
    bug_scale: float = 1000.0
    contexts: int = 16
    vocab: int = 32
    samples: int = 16


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)


def objective(theta: np.ndarray, rows: np.ndarray, t: np.ndarray, a: np.ndarray, p_old: np.ndarray,
              live: np.ndarray, opt: Optim, log_ref: np.ndarray) -> float:
    """The loss being ascended, with the clip mask held fixed: sum over contexts of the mean surrogate
    ratio * A over the unclipped samples, - beta * KL(pi || ref), + entropy_coef * H(pi). (`gradient` is its
    gradient; tests/organisms check them against each other by finite differences.)"""
    pi = _softmax(theta)
    n = len(t) // theta.shape[0]
    value = float(np.sum(np.where(live, pi[rows, t] / p_old * a, 0.0)) / n)
    value -= opt.beta * float((pi * (np.log(pi) - log_ref)).sum())
    value += opt.entropy_coef * float(_entropy(pi).sum())
    return value


def gradient(theta: np.ndarray, rows: np.ndarray, t: np.ndarray, a: np.ndarray, p_old: np.ndarray, opt: Optim,
             log_ref: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gradient of `objective`, low-clipped mask, high-clipped mask) at `theta` for one batch."""
    k, v = theta.shape
    n = len(t) // k
    pi = _softmax(theta)
    ratio = pi[rows, t] / p_old
    low = (ratio < 1 - opt.epsilon) & (a < 0)
    high = (ratio > 1 + opt.epsilon) & (a > 0)
    live = ~(low | high)
    # d/dtheta of ratio_i * A_i: ratio_i * A_i * (onehot(t_i) - pi[c_i]), over the unclipped samples
    w = np.where(live, ratio * a, 0.0) / n
    grad = np.zeros((k, v))
    np.add.at(grad, (rows, t), w)
    grad -= pi * np.bincount(rows, weights=w, minlength=k)[:, None]
    log_pi = np.log(pi)
    if opt.beta > 0:  # grad of KL(pi || ref) per context: pi * (log pi - log ref - KL)
        assert log_ref is not None
        kl_c = (pi * (log_pi - log_ref)).sum(axis=1, keepdims=True)
        grad -= opt.beta * pi * (log_pi - log_ref - kl_c)
    if opt.entropy_coef > 0:  # grad of H(pi): -pi * (log pi + H)
        h_c = _entropy(pi)[:, None]
        grad -= opt.entropy_coef * pi * (log_pi + h_c)
    return grad, low, high


def train(opt: Optim, steps: int, seed: int) -> dict[str, np.ndarray]:
    """Run the model for `steps` steps; per-step arrays of what the trainer logs (see the module doc)."""
    rng = np.random.default_rng([seed, 0x7E51])  # its own stream: the rollouts' draws are untouched
    k, v, n = opt.contexts, opt.vocab, opt.samples
    theta = rng.normal(0.0, 1.0, (k, v))
    ref = _softmax(theta)
    log_ref = np.log(ref)
    pref = rng.normal(0.0, 1.0, (k, v)) * opt.signal
    rows = np.repeat(np.arange(k), n)
    out = {key: np.zeros(steps) for key in ("entropy", "kl", "clip_low", "clip_high", "clip_region", "grad_norm")}
    for s in range(steps):
        old = _softmax(theta)
        tokens = np.array([rng.choice(v, size=n, p=old[c]) for c in range(k)])  # (k, n)
        reward = pref[np.arange(k)[:, None], tokens] + rng.normal(0.0, 1.0, (k, n))
        if s + 1 in opt.reward_bug:
            reward = reward * opt.bug_scale
        adv = reward - reward.mean(axis=1, keepdims=True)
        if opt.scale_rewards:
            adv = adv / (reward.std(axis=1, ddof=1, keepdims=True) + 1e-4)
        a, t = adv.ravel(), tokens.ravel()
        p_old = old[rows, t]
        norms = []
        for _ in range(opt.iterations):
            grad, low, high = gradient(theta, rows, t, a, p_old, opt, log_ref)
            norm = float(np.sqrt((grad**2).sum()))
            norms.append(norm)
            if opt.max_grad_norm is not None and norm > opt.max_grad_norm:
                grad *= opt.max_grad_norm / norm
            theta = theta + opt.lr * grad
        pi = _softmax(theta)
        out["entropy"][s] = _entropy(pi).mean()
        out["kl"][s] = (pi * (np.log(pi) - log_ref)).sum(axis=1).mean()
        out["clip_low"][s], out["clip_high"][s] = low.mean(), high.mean()
        out["clip_region"][s] = (low | high).mean()
        out["grad_norm"][s] = float(np.mean(norms))
    out["learning_rate"] = np.full(steps, opt.lr)
    return out


#: training_health checks this model drives (the other checks come from the rollouts)
PROBLEMS = ("entropy_collapse", "kl_drift", "clip_saturation", "grad_norm")


def onset(metrics: dict[str, np.ndarray], problem: str, spikes: tuple[int, ...] = ()) -> int | None:
    """When a problem began, from the model's own trajectory (the ground truth's onset_step)."""
    if problem == "entropy_collapse":
        hit = np.flatnonzero(metrics["entropy"] < 0.5 * metrics["entropy"][0])
    elif problem == "kl_drift":
        hit = np.flatnonzero(metrics["kl"] > 0.1)
    elif problem == "clip_saturation":
        hit = np.flatnonzero(metrics["clip_region"] > 0.2)
    elif problem == "grad_norm":
        return min(spikes) if spikes else None
    else:
        return None
    return int(hit[0]) + 1 if len(hit) else None
