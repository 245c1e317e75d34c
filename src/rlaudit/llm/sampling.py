"""Bounded, stratified samples for behaviours that cost an LLM call per rollout (`judge:` specs).

A rule spec (term, regex, style) reads every rollout for free; a judge spec costs one call each, so a run of a
million rollouts cannot be judged whole. Wherever a judge spec is evaluated over a run (`trace`, live tracking of
a flagged behaviour, the `monitorability` detector), it is evaluated on a sample drawn here instead:

- strata are the run's steps (optionally x condition, x label): at most `cap` rollouts are judged per stratum,
  so the cost grows with the number of steps, not with the rollouts per step;
- within a stratum whole prompt groups are drawn (`clusters`) when given, so within-group comparisons (GRPO
  advantages, paired preferences) stay intact; the last group drawn may be cut to the cap only if it alone is
  larger than the cap;
- every judged rollout carries the weight N_h / n_h (stratum size over judged), so weighted sums estimate the
  stratum totals without bias.

Intervals: `Sample.rate` gives the stratified estimator of a rate with its standard error,
Var = sum_h W_h^2 (1 - n_h/N_h) s_h^2 / n_h, W_h = N_h / N. The factor (1 - n_h/N_h) is the finite-population
correction: it applies when the estimand is the run's own rollouts (what share of *these* rollouts show it).
When the estimand is the policy's behaviour (the rollouts themselves being draws from it), pass
`finite_population=False`; then only the judged rollouts count as observations. Callers that bootstrap prompt
groups (trace, monitorability) resample the judged groups, so the sampling error is in their intervals too.

`RLAUDIT_JUDGE_PER_STEP` sets the default cap (32). The LLM client's `max_calls` budget stays as a safety net.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from ..stats import norm

DEFAULT_PER_STEP = 32


def default_cap() -> int:
    return int(os.environ.get("RLAUDIT_JUDGE_PER_STEP", DEFAULT_PER_STEP))


@dataclass
class Sample:
    index: np.ndarray  # positions of the judged rows, ascending
    stratum: np.ndarray  # stratum code of each judged row
    weight: np.ndarray  # N_h / n_h of each judged row
    sizes: np.ndarray  # N_h per stratum code
    taken: np.ndarray  # n_h per stratum code
    keys: list[Hashable]  # stratum key per code

    @property
    def population(self) -> int:
        return int(self.sizes.sum())

    def rate(self, values: np.ndarray, level: float = 0.95, finite_population: bool = True) -> dict[str, float]:
        """Stratified estimate of the share of rows with value 1 (values: one per judged row, NaN = missing,
        left out of its stratum), its SE and a normal interval clipped to [0, 1]."""
        v = np.asarray(values, dtype=np.float64)
        ok = ~np.isnan(v)
        n_h = np.bincount(self.stratum[ok], minlength=len(self.sizes)).astype(float)
        k_h = np.bincount(self.stratum[ok], weights=v[ok], minlength=len(self.sizes))
        has = n_h > 0
        if not has.any():
            return {"estimate": float("nan"), "se": float("nan"), "ci": [float("nan"), float("nan")],
                    "judged": 0, "population": self.population}
        W = self.sizes[has] / self.sizes[has].sum()
        p = k_h[has] / n_h[has]
        s2 = np.where(n_h[has] > 1, p * (1 - p) * n_h[has] / np.maximum(n_h[has] - 1, 1), 0.25)
        fpc = np.clip(1 - n_h[has] / self.sizes[has], 0.0, 1.0) if finite_population else 1.0
        est = float((W * p).sum())
        se = float(np.sqrt((W ** 2 * fpc * s2 / n_h[has]).sum()))
        z = norm.ppf(0.5 + level / 2)
        return {"estimate": est, "se": se, "ci": [max(0.0, est - z * se), min(1.0, est + z * se)],
                "judged": int(ok.sum()), "population": self.population}


def stratified_sample(strata: Sequence[Hashable], cap: int, seed: int = 0,
                      clusters: Sequence[Hashable] | None = None) -> Sample:
    """At most `cap` rows per stratum, drawn at random (whole clusters when given); see the module doc."""
    if cap < 1:
        raise ValueError(f"sample cap must be at least 1, got {cap}")
    rng = np.random.default_rng(seed)
    keys = sorted(set(strata), key=repr)
    code_of = {k: i for i, k in enumerate(keys)}
    codes = np.array([code_of[k] for k in strata], dtype=np.int64)
    sizes = np.bincount(codes, minlength=len(keys)).astype(float)
    chosen: list[np.ndarray] = []
    for h in range(len(keys)):
        idx = np.flatnonzero(codes == h)
        if len(idx) <= cap:
            chosen.append(idx)
            continue
        if clusters is None:
            chosen.append(np.sort(rng.choice(idx, cap, replace=False)))
            continue
        by: dict[Hashable, list[int]] = {}
        for i in idx:
            by.setdefault(clusters[i], []).append(int(i))
        names = sorted(by, key=repr)
        picked: list[int] = []
        for j in rng.permutation(len(names)):
            members = by[names[j]]
            if picked and len(picked) + len(members) > cap:
                continue  # try a smaller group; never split one unless it alone exceeds the cap
            picked.extend(members[:cap] if not picked else members)
            if len(picked) >= cap:
                break
        chosen.append(np.sort(np.array(picked, dtype=np.int64)))
    index = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    stratum = codes[index]
    taken = np.bincount(stratum, minlength=len(keys)).astype(float)
    weight = sizes[stratum] / np.maximum(taken[stratum], 1)
    return Sample(index, stratum, weight, sizes, taken, keys)


def sampled_values(behavior, texts, strata: Sequence[Hashable], cap: int | None = None, seed: int = 0,
                   clusters: Sequence[Hashable] | None = None) -> tuple[np.ndarray, Sample | None]:
    """Values of a behaviour per row: every row for free specs (sample None); for a `judge:` spec only the rows
    of a stratified sample are judged and the others are NaN."""
    import pyarrow as pa

    if behavior.kind != "judge":
        return behavior.values(texts), None
    sample = stratified_sample(strata, cap or default_cap(), seed, clusters)
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    out = np.full(len(strata), np.nan)
    if len(sample.index):
        out[sample.index] = behavior.values(texts.take(pa.array(sample.index)))
    return out, sample
