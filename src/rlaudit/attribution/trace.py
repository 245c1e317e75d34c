"""Root cause: trace a behaviour to the reward signals, conditions and data that drove it.

A policy-gradient trainer raises the probability of a behaviour when, among the rollouts it compares, the ones
with the behaviour get higher advantages. GRPO compares the rollouts of one prompt group, so everything here is
computed *within groups* and pooled over groups:

- **Paired preference** of a signal: P(score with the behaviour > score without), over every (with, without)
  pair of rollouts in the same group where the signal applies, ties counting 1/2 (the within-group Mann-Whitney
  probability). 0.5 means the signal is indifferent; the pooled value weighs groups by their number of pairs.
- **Effect**: the mean within-group paired score difference (with - without), pooled the same way.
- **Selection pressure** of a signal: sum over groups of the covariance between the behaviour and the signal's
  contribution to the advantage, i.e. sum_i (x_i - mean_g x) * w_k (c_ik - mean_g c_k) / sd_g(r). GRPO's
  advantage is (r - mean_g r) / sd_g(r) with r = sum_k w_k c_k, so the contributions add up to the advantage and
  the pressures add up to the total push the update gives the behaviour. A signal that does not apply to a
  rollout (NaN) contributes 0 to it, as TRL's `nansum` of reward functions does. `pressure_share` is a signal's
  share of the positive push of all components. Reported per rollout (the sum divided by the rollouts used).
- **Outcome-matched preference**: the paired preference restricted to pairs whose outcome signals (correctness,
  accuracy, pass/fail: see `OUTCOME_PATTERN`) are equal; rollouts no outcome signal applies to are left out. A
  signal that only rewards the behaviour because the behaviour helps solve the task loses its preference among
  equally-correct pairs; a signal with a preference of its own (a persona reward model that likes goblins) keeps
  it. This is what separates a legitimately learned behaviour from a reward-driven tic (see `assess`).

Numeric behaviours (`style:length`) are split at the group median: rollouts above it count as "with", below it
as "without", rollouts at the median are left out of the pairs; the pressure uses the raw value.

Confidence intervals come from a Poisson bootstrap over groups (`stats.bootstrap_group_sums`: every pooled
estimate is a ratio of group sums, and resampling groups keeps within-group correlation intact); p-values of
the paired preference use the cluster-robust (delta-method) standard error with a t reference on groups-1
degrees of freedom, and are controlled with Benjamini-Hochberg across every (behaviour, signal) tested together.

Runs without group ids fall back to comparing rollouts of the same step, condition and prompt text (when prompts
repeat within a step) or of the same step and condition; the trace then carries a warning: rollouts of
different prompts differ in difficulty, so the comparison is noisier and can be confounded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import stats
from ..behaviors import Behavior, parse_behavior
from ..errors import RlauditError
from ..findings import SEVERITY_RANK, Evidence, Severity
from ..store import sql_string
from ..kernels import use_numba
from .kernels import compiled, group_midranks

#: Names of signals that measure task success. Matched case-insensitively anywhere in the signal name; extend
#: per run with `outcome_signals=[...]` (or `rlaudit trace --outcome NAME`).
OUTCOME_PATTERN = re.compile(
    r"(?i)(correct|accura|(?:^|[^a-z])acc(?:$|[^a-z])|pass(?:ed|_?rate|@|$|[^a-z])|solve|exact|verif|"
    r"success|unit_?tests?|(?:^|[^a-z])em(?:$|[^a-z]))")

#: Fewer comparable groups than this: no interval, no test (the estimate is reported but flagged).
MIN_GROUPS = 3
#: Fewer comparable groups than this: intervals are shown with a warning that they are unreliable.
FEW_GROUPS = 20


@dataclass
class SignalAttribution:
    """Everything measured for one reward signal against one behaviour."""

    signal: str
    kind: str  # "component" | "other" (total minus the weighted components) | "total"
    outcome: bool  # a task-success signal (see OUTCOME_PATTERN)
    equals_total: bool  # the total itself, or a component identical to it: not separable from the total
    weight: float  # its weight in the total reward (fitted; 1.0 when unknown)
    applies: float  # share of rollouts where the signal is not NaN
    pressure: float
    pressure_ci: tuple[float, float]
    pressure_share: float
    pressure_share_ci: tuple[float, float]
    paired_preference: float
    paired_preference_ci: tuple[float, float]
    p_value: float
    effect: float
    effect_ci: tuple[float, float]
    pairs: int
    groups_used: int
    matched_preference: float = float("nan")
    matched_preference_ci: tuple[float, float] = (float("nan"), float("nan"))
    matched_pairs: int = 0
    q_value: float = float("nan")
    significant: bool = False
    series: dict[str, list[Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        # as `asdict`, without its deep copy of every number of the per-step series (1.5 s at 15,625 steps): the
        # other fields are numbers, strings and tuples
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["series"] = {k: list(v) for k, v in self.series.items()}
        return out


@dataclass
class Trace:
    """The attribution of one behaviour in one run (the `reward_attribution` finding's content)."""

    run: str
    behavior: str
    behavior_spec: str
    where: str
    numeric: bool
    grouping: str  # "group_id" | "step"
    group_key: str  # the exact comparison unit, e.g. "step,condition,prompt"
    rollouts: int
    groups: int
    groups_used: int
    prevalence: float
    signals: list[SignalAttribution]
    by_condition: dict[str, dict[str, Any]]
    by_task: dict[str, dict[str, Any]]
    condition: str | None
    task: str | None
    advantage_check: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    behavior_severity: str = "medium"
    direction: str = "up"  # "down": traced toward the behaviour's absence (it fell during training)
    severity: Severity = "info"
    verdict: str = ""
    suspect: str | None = None  # the non-outcome signal that carries the pressure, when there is one
    evidence_rows: list[tuple[int, int]] = field(default_factory=list, repr=False)  # frame rows (with, without)

    @property
    def top(self) -> SignalAttribution:
        """The signal with the largest selection pressure (a component when the run has any)."""
        return self.signals[0]

    def signal(self, name: str) -> SignalAttribution:
        for s in self.signals:
            if s.signal == name:
                return s
        raise KeyError(name)

    def fields(self) -> dict[str, Any]:
        """Kind-specific fields of the `reward_attribution` finding."""
        top = self.top
        return {
            "behavior": self.behavior, "behavior_spec": self.behavior_spec, "where": self.where,
            "signal": top.signal, "pressure_share": top.pressure_share,
            "paired_preference": top.paired_preference, "paired_preference_ci": list(top.paired_preference_ci),
            "effect": top.effect, "effect_ci": list(top.effect_ci), "q_value": top.q_value,
            "condition": self.condition, "task": self.task, "suspect_signal": self.suspect,
            "signals": [s.to_json() for s in self.signals], "by_condition": self.by_condition,
            "by_task": self.by_task, "groups_used": self.groups_used, "groups": self.groups,
            "rollouts": self.rollouts, "prevalence": self.prevalence, "numeric": self.numeric,
            "direction": self.direction, "grouping": self.grouping, "group_key": self.group_key,
            "advantage_check": self.advantage_check,
            "warning": " ".join(self.warnings) or None, "notes": self.notes, "verdict": self.verdict,
        }

    def to_json(self) -> dict[str, Any]:
        out = {"run": self.run, "severity": self.severity, **self.fields()}
        out["evidence"] = [e.to_json() for e in self.evidence]
        return out


# ================================================================================================ loading
@dataclass
class Frame:
    """The columns attribution needs, one entry per rollout, sorted by comparison group."""

    group: np.ndarray  # int64 codes 0..G-1, ascending
    step: np.ndarray
    condition: np.ndarray  # int codes into condition_names
    condition_names: list[str]
    task: np.ndarray  # int codes into task_names (-1: no task)
    task_names: list[str]
    behavior: np.ndarray  # float: 0/1 or the numeric value
    components: dict[str, np.ndarray]  # NaN: the signal did not apply
    reward: np.ndarray | None  # the logged total (NaN where missing); None when never logged
    advantage: np.ndarray | None
    rollout_id: pa.Array | None = None
    grouping: str = "group_id"
    group_key: str = "group_id"
    warnings: list[str] = field(default_factory=list)
    order: np.ndarray | None = None  # row i of the frame is row order[i] of the table it was built from
    step_clusters: bool = False  # traced on a sample of steps: intervals resample steps (`_step_sample`)

    def subset(self, mask: np.ndarray) -> Frame:
        """The rows where `mask` holds (still sorted by group, groups recoded 0..G'-1)."""
        n = len(self.group)
        pick = np.flatnonzero(mask)

        def cut(v: Any) -> Any:
            if isinstance(v, np.ndarray) and v.shape[:1] == (n,):
                return v[pick]
            if isinstance(v, dict):
                return {k: cut(x) for k, x in v.items()}
            if isinstance(v, (pa.Array, pa.ChunkedArray)) and len(v) == n:
                return v.take(pa.array(pick))
            return v

        changed = {f.name: cut(getattr(self, f.name)) for f in fields(self) if f.name not in ("group", "order")}
        _, codes = np.unique(self.group[pick], return_inverse=True)
        return replace(self, group=codes.astype(np.int64), order=self.order[pick] if self.order is not None
                       else pick, **changed)

    @classmethod
    def build(cls, group_keys: np.ndarray, **columns: Any) -> Frame:
        """Sort rows by group and recode the groups 0..G-1 (any hashable, sortable keys)."""
        _, codes = np.unique(group_keys, return_inverse=True)
        order = np.argsort(codes, kind="stable")
        taken: dict[str, Any] = {}
        for name, value in columns.items():
            if isinstance(value, np.ndarray) and value.shape[:1] == codes.shape:
                taken[name] = value[order]
            elif isinstance(value, dict):
                taken[name] = {k: v[order] for k, v in value.items()}
            elif isinstance(value, (pa.Array, pa.ChunkedArray)):
                taken[name] = value.take(pa.array(order))
            else:
                taken[name] = value
        return cls(group=codes[order].astype(np.int64), order=order, **taken)



def load_frame(con: duckdb.DuckDBPyConnection, behavior: Behavior, where: str) -> Frame:
    """Read the needed columns of the `rollouts` view into a Frame (see `load_frames`)."""
    return load_frames(con, [(behavior, where)])[0]


#: memory for tracing a run (its frames and the trace's working arrays), unless the memory budget
#: (`rlaudit.memory`) is smaller: a larger run is traced on a random sample of whole comparison groups
FRAME_BYTES = 768 << 20
#: resident memory of a trace per byte of its frame columns (8 bytes per rollout and column plus ~64 of id): the
#: streamed parts, their concatenation and group-order copies, and the trace's centred and bootstrap arrays.
#: Measured (`benchmarks/attribution.py --memory --rows 1000000`): 2.8x traced whole, 3.0x on half the groups;
#: on the audit benchmark's 1M-rollout run (12 columns) the attribution stage added ~530 MB, 3.3x. A bound, not
#: a fit: a run's frames then stay within FRAME_BYTES of resident memory.
WORKING_SET = 3.5
_MOD = 1_000_003


def load_frames(con: duckdb.DuckDBPyConnection, items: list[tuple[Behavior, str]],
                max_bytes: int | None = None) -> list[Frame]:
    """One Frame per (behaviour, where), from a single scan of the `rollouts` view: behaviours with a SQL form
    are evaluated inside DuckDB, Python predicates on the fetched text; the frames share every other column.

    Frames hold every rollout in NumPy, so a run whose frames would need more than `max_bytes` (default
    FRAME_BYTES, or less under a memory budget) is traced on a random sample of whole comparison groups (a hash
    of the group key), which keeps every within-group comparison intact; the frames' warnings say so."""
    for _, where in items:
        if where not in ("answer", "reasoning"):
            raise RlauditError(f"where must be 'answer' or 'reasoning', got {where!r}")
    per_step = con.execute("SELECT step, count(*) AS n FROM rollouts GROUP BY step ORDER BY step").fetchnumpy()
    step_values, step_rows = np.asarray(per_step["step"], np.int64), np.asarray(per_step["n"], np.int64)
    if not step_rows.sum():
        raise RlauditError("no rollouts to trace (check the run name, --max-step and the split)")
    exprs = [beh.sql(where) for beh, where in items]
    texts = sorted({where for (_, where), e in zip(items, exprs) if e is None})
    # sized before the run's signals are listed (listing them reads every reward map): from a few steps' maps
    probe = step_values[np.linspace(0, len(step_values) - 1, min(len(step_values), 16)).astype(np.int64)]
    n_signals = len(_signals(con, "rollouts", f"step IN ({', '.join(map(str, probe.tolist()))})"))
    def frame_columns(signals: int) -> int:  # the signals, behaviours, 6 fixed columns, 4 per text
        return signals + len(items) + 6 + 4 * len(texts)

    traced, where_sql, sampled, warnings = _step_sample(step_values, step_rows, frame_columns(n_signals), max_bytes)
    n, n_group, n_reasoning, n_reward, n_adv, n_tasks = con.execute(
        "SELECT count(*), count(group_id), count(reasoning), count(reward), count(advantage), "
        f"count(DISTINCT task) FROM rollouts WHERE {where_sql}").fetchall()[0]
    if n_reasoning == 0 and any(where == "reasoning" for _, where in items):
        raise RlauditError("this run has no reasoning text; trace with --where answer")
    signals = _signals(con, "rollouts", where_sql)
    if not signals and n_reward == 0:
        raise RlauditError("this run logs no reward signals (neither a rewards map nor a total reward)")

    key, grouping, group_key, key_warnings = _group_key(con, n, n_group, where_sql)
    warnings = key_warnings + warnings
    beh_cols = "".join(f", {e} AS _b{i}" for i, e in enumerate(exprs) if e is not None)
    text_cols = "".join(f", coalesce({w}, '') AS _text_{w}" for w in texts)
    sig_cols = "".join(f", CAST(rewards[{sql_string(s)}] AS DOUBLE) AS _s{i}" for i, s in enumerate(signals))
    if not sampled:  # steps too few to sample: a random share of the comparison groups instead
        sample = _group_sample(n, key, frame_columns(len(signals)), max_bytes)
        if sample is not None:
            where_sql, warnings = f"{where_sql} AND {sample[0]}", warnings + [sample[1]]
    query = (f"SELECT {key} AS _group, step, condition, task, rollout_id, reward, advantage"
             f"{beh_cols}{text_cols}{sig_cols} FROM rollouts WHERE {where_sql}")
    # Streamed in record batches into per-column numpy parts (the run is never held as one Arrow table, nor as
    # DuckDB's materialised result); then each column is sorted into group order on its own. The frames equal
    # those of `Frame.build` over the whole result: same rows, same order, condition and task codes in order of
    # first appearance (tests/test_attribution_frames.py).
    floats_cols = ([f"_s{i}" for i in range(len(signals))] + (["reward"] if n_reward else [])
                   + (["advantage"] if n_adv else []) + [f"_b{i}" for i, e in enumerate(exprs) if e is not None])
    parts: dict[str, list[np.ndarray]] = {c: [] for c in ["_group", "step", "condition", "task", *floats_cols]}
    texts_of: dict[str, list[pa.Array]] = {w: [] for w in texts}  # Python predicates: evaluated once, at the end
    ids: list[pa.Array] = []
    names: dict[str, dict[str, int]] = {"condition": {}, "task": {}}
    # every part is copied out of the batch: a column (or a zero-copy numpy view of it) would keep the whole
    # exported batch alive, and with it every column of the run
    def own(values: pa.Array, dtype: Any) -> np.ndarray:
        return np.array(values.to_numpy(zero_copy_only=False), dtype=dtype, copy=True)

    for batch in con.sql(query).to_arrow_reader(1 << 16):
        parts["_group"].append(own(batch.column("_group"), None))
        parts["step"].append(own(batch.column("step"), np.int64))
        for col in ("condition", "task"):
            enc = pc.dictionary_encode(batch.column(col))
            seen = names[col]
            glob = np.array([seen.setdefault(str(v), len(seen)) for v in enc.dictionary.to_pylist()] + [-1],
                            dtype=np.int64)
            parts[col].append(glob[own(pc.fill_null(enc.indices, -1), np.int64)])  # -1 (no task): the last
        for col in floats_cols:
            parts[col].append(own(pc.fill_null(batch.column(col), float("nan")), float))
        for w in texts:
            texts_of[w].append(batch.column(f"_text_{w}").take(pa.array(np.arange(batch.num_rows))))
        ids.append(batch.column("rollout_id").take(pa.array(np.arange(batch.num_rows))))
        del batch

    rows = sum(len(p) for p in parts["step"])
    scratch = np.empty(rows, dtype=np.float64)  # one buffer for every column's concatenation (8-byte types)

    def take(col: str, dtype: Any = float) -> np.ndarray:
        whole = scratch.view(dtype)
        if parts[col]:
            np.concatenate(parts.pop(col), out=whole)
        return whole[order]

    _, codes = np.unique(np.concatenate(parts.pop("_group")), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    group = codes[order].astype(np.int64, copy=False)
    del codes
    sorted_ids = pa.chunked_array(ids, type=ids[0].type if ids else pa.string()).take(pa.array(order))
    del ids
    rollout_id = sorted_ids.chunk(0) if sorted_ids.num_chunks == 1 else sorted_ids.combine_chunks()
    del sorted_ids
    components = {s: take(f"_s{i}") for i, s in enumerate(signals)}
    base = Frame(group=group, step=take("step", np.int64), condition=take("condition", np.int64),
                 condition_names=list(names["condition"]), task=take("task", np.int64),
                 task_names=list(names["task"]) if n_tasks else [], behavior=np.zeros(rows), components=components,
                 reward=take("reward") if n_reward else None, advantage=take("advantage") if n_adv else None,
                 rollout_id=rollout_id, grouping=grouping, group_key=group_key, warnings=warnings, order=order,
                 step_clusters=traced is not None)
    frames = []
    for i, ((beh, where), expr) in enumerate(zip(items, exprs)):
        if beh.kind == "judge":  # one LLM call per rollout: judge a bounded sample of whole groups per step
            frames.append(_judged_frame(base, beh, pa.chunked_array(texts_of[where], type=pa.string()), order,
                                        warnings))
            continue
        values = (take(f"_b{i}") if expr is not None
                  else beh.values(pa.chunked_array(texts_of[where], type=pa.string()))[order])
        frames.append(replace(base, behavior=values, warnings=list(warnings)))
    return frames


def _signals(con: duckdb.DuckDBPyConnection, view: str, where_sql: str) -> list[str]:
    """The reward signals named in the rewards maps of the rows `where_sql`, sorted."""
    return [r[0] for r in con.execute(f"SELECT DISTINCT unnest(map_keys(rewards)) AS s FROM {view} "
                                      f"WHERE {where_sql} ORDER BY s").fetchall() if r[0] is not None]


#: fewest steps a run traced on a sample of its steps keeps; with fewer, whole comparison groups are sampled
MIN_SAMPLED_STEPS = 20


def _step_sample(steps: np.ndarray, rows: np.ndarray, columns: int, max_bytes: int | None
                 ) -> tuple[np.ndarray | None, str, bool, list[str]]:
    """(steps traced or None for all, SQL filter on `step`, whether the run is sampled by step, warnings) for a
    run of `rows[i]` rollouts at `steps[i]` whose frames have `columns` 8-byte columns.

    A run whose frames (WORKING_SET times ~(8 * columns + 64) bytes per rollout) exceed the memory for tracing is
    traced on a random share of its steps, every rollout of a kept step: only those steps' rows are read (the
    scan skips the others), so the cost stops growing with the run. A step is kept when a fixed hash of its
    number falls below the share, so a growing run keeps tracing the same steps. Intervals then resample the
    kept steps (`Frame.step_clusters`): the rollouts of one step share the policy of that step, so the
    step-to-step variation is part of the sampling error. With fewer than MIN_SAMPLED_STEPS steps kept, the
    caller samples comparison groups instead (`_group_sample`). The share is a power of two (`step_share`)."""
    n = int(rows.sum())
    fit = step_share(n, columns, max_bytes)
    if fit is None:
        return None, "TRUE", False, []
    share, reason = fit
    u = stats.stable_uniform(steps)
    keep = u < share
    if rows[keep].sum() > 1.05 * share * n:  # an unlucky draw of large steps: drop the highest hashes
        order = np.argsort(u, kind="stable")
        fits = np.cumsum(rows[order]) <= share * n
        keep = np.zeros(len(steps), bool)
        keep[order[fits]] = True
    if keep.sum() < MIN_SAMPLED_STEPS:
        return None, "TRUE", False, []
    kept = steps[keep]
    got = int(rows[keep].sum())
    listed = ", ".join(map(str, kept.tolist()))
    return kept, f"step IN ({listed})", True, [
        f"Traced on a random {keep.sum():,} of the run's {len(steps):,} steps ({got:,} of {n:,} rollouts, every "
        f"rollout of a kept step; the same steps as the run grows) to stay within {reason}; intervals resample "
        "the kept steps, so they carry the sampling error and the step-to-step variation."]


def step_share(n: int, columns: int, max_bytes: int | None) -> tuple[float, str] | None:
    """`_frame_share` rounded down to a power of two: the steps kept (a hash below the share) then stay the same
    until the run doubles, so the per-part tables of a sampled run's kept steps (`partcache`) are computed once
    per doubling, not at every audit of a growing run. It traces at least half the rows that would fit."""
    fit = _frame_share(n, columns, max_bytes)
    return None if fit is None else (2.0 ** math.floor(math.log2(fit[0])), fit[1])


def _frame_share(n: int, columns: int, max_bytes: int | None) -> tuple[float, str] | None:
    """(share of the run that fits, what set the memory) when tracing `n` rollouts of `columns` 8-byte columns
    (plus ~64 bytes of id each; WORKING_SET times that in all) would exceed the memory for tracing (`max_bytes`,
    else FRAME_BYTES or the memory budget); None when it fits."""
    if max_bytes is None:
        from ..memory import sample_bytes

        max_bytes, source = sample_bytes(FRAME_BYTES)
        reason = f"the memory budget ({source})" if source else f"{FRAME_BYTES >> 20} MB for frames"
    else:
        reason = f"{max_bytes >> 20} MB for frames"
    need = int(n * (8 * columns + 64) * WORKING_SET)
    return None if need <= max_bytes else (max_bytes / need, reason)


def _group_sample(n: int, key: str, columns: int, max_bytes: int | None) -> tuple[str, str] | None:
    """(SQL filter keeping a random share of comparison groups, the warning that says so) when the frames of `n`
    rollouts of `columns` columns would exceed the memory for tracing (`_frame_share`); None when they fit."""
    fit = _frame_share(n, columns, max_bytes)
    if fit is None:
        return None
    share, reason = fit
    return (f"(({key}) % {_MOD}) < {max(1, int(share * _MOD))}",
            f"Traced on a random {share:.1%} of the comparison groups (about {int(n * share):,} of {n:,} rollouts) "
            f"to stay within {reason}; intervals are over the sampled groups and so include the sampling error.")


def _judged_frame(base: Frame, beh: Behavior, texts: pa.ChunkedArray, order: np.ndarray,
                  warnings: list[str]) -> Frame:
    """The frame restricted to a stratified sample of whole prompt groups (at most `RLAUDIT_JUDGE_PER_STEP`
    rollouts per step, `llm.sampling`), with the judge's verdicts as the behaviour. Groups are drawn at
    random within each step, so they are draws from the policy like the full set; every bootstrap of the trace
    resamples the judged groups only, so the sampling error is in its intervals."""
    from ..llm.sampling import default_cap, sampled_values

    cap = default_cap()
    values, sample = sampled_values(beh, texts.take(pa.array(order)), base.step.tolist(), cap=cap, seed=0,
                                    clusters=base.group.tolist())
    keep = ~np.isnan(values)
    judged = int(keep.sum())
    note = (f"judge spec: {judged:,} of {len(values):,} rollouts judged (whole prompt groups, at most {cap} "
            f"rollouts per step; RLAUDIT_JUDGE_PER_STEP); unusable answers: "
            f"{int(len(sample.index) - judged) if sample else 0}")
    frame = base.subset(keep)
    return replace(frame, behavior=values[keep], warnings=list(warnings) + [note])


def _group_key(con: duckdb.DuckDBPyConnection, n: int, n_group: int, where_sql: str = "TRUE"
               ) -> tuple[str, str, str, list[str]]:
    """SQL for the comparison unit, the grouping label, the key's description, and warnings.

    Group ids when most rollouts have one (combined with the step, in case a trainer reuses ids across steps);
    otherwise step x condition x prompt text when prompts repeat within a step, else step x condition."""
    if n_group >= n / 2:
        warnings = [] if n_group == n else [
            f"{n - n_group} rollout(s) have no group id and are left out of the comparisons."]
        return ("CASE WHEN group_id IS NULL THEN hash(rollout_id) ELSE hash(step, group_id) END", "group_id",
                "group_id", warnings)
    repeats = con.execute(
        f"SELECT count(*) / count(DISTINCT (step, condition, prompt)) FROM rollouts WHERE {where_sql}"
    ).fetchall()[0][0]
    if repeats >= 2:
        return ("hash(step, condition, prompt)", "step", "step,condition,prompt",
                ["No group ids: rollouts are compared within the same step, condition and prompt text (the same "
                 "as prompt groups when each prompt is sampled once per step)."])
    return ("hash(step, condition)", "step", "step,condition",
            ["No group ids and prompts do not repeat: rollouts are compared within the same step and condition, "
             "across different prompts. The estimate is weaker (prompt difficulty adds noise and can confound) "
             "and should be confirmed with grouped logs."])


# ================================================================================================ signals
@dataclass
class _Signal:
    name: str
    kind: str
    values: np.ndarray  # NaN where it did not apply
    weight: float
    outcome: bool
    equals_total: bool = False


def is_outcome_signal(name: str, extra: list[str] | None = None) -> bool:
    """Whether a signal measures task success (by name; `extra` names are outcome signals too)."""
    return name in (extra or []) or bool(OUTCOME_PATTERN.search(name))


def build_signals(frame: Frame, outcome_signals: list[str] | None = None) -> tuple[list[_Signal], np.ndarray,
                                                                                  list[str]]:
    """The signals to attribute to, the total reward per rollout, and notes on how the total was rebuilt.

    The total is the logged `reward` where present. Component weights are fitted by least squares of the total
    on the components (NaN as 0); when the fit is exact (TRL's weighted sum) those weights are used. Otherwise
    (verl's `score` with extra keys that are not its parts) the components keep weight 1 and the residual
    total - sum(components) becomes the signal "other". A component equal to the total (verl's `score` also
    logged as a key) is flagged `equals_total`: it cannot be separated from the total.
    """
    notes: list[str] = []
    infinite = {k: int(np.isinf(v).sum()) for k, v in frame.components.items() if np.isinf(v).any()}
    if infinite:
        notes.append("infinite values treated as 'did not apply': " + ", ".join(
            f"{k} ({n})" for k, n in infinite.items()) + ".")
    comps = {k: np.where(np.isinf(v), np.nan, v) for k, v in frame.components.items() if np.isfinite(v).any()}
    reward = frame.reward
    if reward is not None and not np.isfinite(reward).any():
        reward = None
    aliases = set()
    if reward is not None:
        for name, v in comps.items():
            if np.isfinite(v).all() and np.allclose(v, np.nan_to_num(reward, nan=np.inf), rtol=1e-9, atol=1e-12):
                aliases.add(name)
                notes.append(f"signal {name!r} equals the total reward: it cannot be separated from the total.")
    names = sorted(comps)
    matrix = np.column_stack([np.nan_to_num(comps[k], nan=0.0) for k in names]) if names else np.zeros((0, 0))
    weights = np.ones(len(names))
    total_name = "reward" if "reward" not in comps else "reward_total"
    other_name = "other" if "other" not in comps else "other_residual"
    other: np.ndarray | None = None
    if reward is None:
        total = matrix.sum(axis=1)
        notes.append("no total reward logged: the total is the sum of the components.")
    else:
        total = reward.copy()
        known = np.isfinite(reward)
        if names:
            fit, *_ = np.linalg.lstsq(matrix[known], reward[known], rcond=None)
            resid = reward[known] - matrix[known] @ fit
            scale = max(1.0, float(np.sqrt(np.mean(reward[known] ** 2))))
            if np.sqrt(np.mean(resid**2)) <= 1e-6 * scale:
                weights = np.where(np.abs(fit - np.round(fit)) < 1e-9, np.round(fit), fit)
                if not np.allclose(weights, 1.0):
                    notes.append("component weights fitted from the total: " + ", ".join(
                        f"{n}={w:.4g}" for n, w in zip(names, weights)) + ".")
            else:
                other = np.where(known, reward - matrix.sum(axis=1), 0.0)
                notes.append(f"the components do not add up to the total; {other_name!r} = total - sum(components) "
                             "is attributed as a signal of its own.")
        if not known.all():
            total[~known] = matrix[~known] @ weights if names else np.nan
            notes.append(f"{int((~known).sum())} rollout(s) without a total reward: rebuilt from the components.")
    out = [_Signal(n, "component", comps[n], float(w), is_outcome_signal(n, outcome_signals), n in aliases)
           for n, w in zip(names, weights)]
    if other is not None:
        out.append(_Signal(other_name, "other", other, 1.0, False))
    out.append(_Signal(total_name, "total", total, 1.0, False, True))
    return out, total, notes


# ================================================================================================ computation
@dataclass
class _Groups:
    """Group-level layout of a sorted Frame."""

    codes: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray

    @property
    def n(self) -> int:
        return int(self.starts.size)

    @classmethod
    def of(cls, codes: np.ndarray) -> _Groups:
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if codes.size else np.zeros(0, np.int64)
        sizes = np.diff(np.r_[starts, codes.size])
        return cls(codes, starts, sizes)

    def sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.codes, weights=values, minlength=self.n)

    def mean(self, values: np.ndarray) -> np.ndarray:
        return self.sum(values) / self.sizes


def behavior_labels(groups: _Groups, x: np.ndarray, numeric: bool) -> np.ndarray:
    """1 = with the behaviour, 0 = without, NaN = not compared. Numeric behaviours: above / below the group
    median (rows at the median are not compared)."""
    if not numeric:
        return (x > 0).astype(float)
    order = np.lexsort((x, groups.codes))
    xs = x[order]
    lo = xs[groups.starts + (groups.sizes - 1) // 2]
    hi = xs[groups.starts + groups.sizes // 2]
    median = ((lo + hi) / 2.0)[groups.codes]
    return np.where(x > median, 1.0, np.where(x < median, 0.0, np.nan))


def _refine(codes: np.ndarray, keys: list[np.ndarray]) -> np.ndarray:
    """Sub-group codes: rows of one group with equal `keys` (outcome values; NaN is a value of its own)."""
    cols = [np.where(np.isnan(k), np.inf, k) for k in keys]
    order = np.lexsort(tuple(reversed([codes, *cols])))
    change = np.zeros(codes.size, dtype=bool)
    change[0] = True
    for c in [codes, *cols]:
        s = c[order]
        change[1:] |= s[1:] != s[:-1]
    out = np.empty(codes.size, dtype=np.int64)
    out[order] = np.cumsum(change) - 1
    return out


class _RankCache:
    """Within-group ranks of each signal, computed once and reused by every behaviour traced on the same frame.

    For a presence behaviour every rollout is labelled, so the ranks that the Mann-Whitney U needs (among the
    rollouts where the signal applies) do not depend on the behaviour; a numeric behaviour leaves the rollouts at
    its group median unlabelled, and is ranked afresh."""

    def __init__(self) -> None:
        self._ranks: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def mann_whitney(self, key: str, codes: np.ndarray, values: np.ndarray, labels: np.ndarray,
                     n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.pair_sums(key, codes, values, labels, n_groups, sums=False)[:3]

    def pair_sums(self, key: str, codes: np.ndarray, values: np.ndarray, labels: np.ndarray, n_groups: int,
                  sums: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any, Any]:
        """Per group: U, n1, n0 (`stats.grouped_mann_whitney` among the rows with a finite value) and, with
        `sums`, the sums of the finite values labelled 1 and labelled 0 (else None). With numba one compiled pass
        over the rows (`kernels.pair_sums`: the same sums in the same order as the bincounts)."""
        if np.isnan(labels).any() and np.isnan(labels[np.isfinite(values)]).any():
            u, n1, n0 = stats.grouped_mann_whitney(codes, values, labels, n_groups)
            return (u, n1, n0, *(_label_sums(codes, values, labels, n_groups) if sums else (None, None)))
        if key not in self._ranks:
            ok = np.isfinite(values)
            self._ranks[key] = (ok, group_midranks(codes[ok], values[ok], n_groups))
        ok, ranks = self._ranks[key]
        if use_numba():
            r1, n1, n0, s1, s0 = compiled().pair_sums(
                np.ascontiguousarray(codes, np.int64), np.ascontiguousarray(values, np.float64),
                np.ascontiguousarray(labels, np.float64), ok, ranks, int(n_groups))
            return r1 - n1 * (n1 + 1) / 2.0, n1, n0, (s1 if sums else None), (s0 if sums else None)
        c, lab = codes[ok], labels[ok] > 0.5
        n1 = np.bincount(c, weights=lab, minlength=n_groups)
        n0 = np.bincount(c, weights=~lab, minlength=n_groups)
        r1 = np.bincount(c, weights=np.where(lab, ranks, 0.0), minlength=n_groups)
        return (r1 - n1 * (n1 + 1) / 2.0, n1, n0,
                *(_label_sums(codes, values, labels, n_groups) if sums else (None, None)))


def _label_sums(codes: np.ndarray, values: np.ndarray, labels: np.ndarray, n_groups: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the sums of the finite values labelled 1 and labelled 0."""
    ok = np.isfinite(values) & np.isfinite(labels)
    return (np.bincount(codes, weights=np.where(ok & (labels == 1), values, 0.0), minlength=n_groups),
            np.bincount(codes, weights=np.where(ok & (labels == 0), values, 0.0), minlength=n_groups))


def _pair_stats(groups: _Groups, values: np.ndarray, labels: np.ndarray, cache: _RankCache,
                key: str) -> dict[str, np.ndarray]:
    u, n1, n0, s1, s0 = cache.pair_sums(key, groups.codes, values, labels, groups.n)
    return {"u": u, "pairs": n1 * n0, "diff": n0 * s1 - n1 * s0}


def _matched_stats(groups: _Groups, values: np.ndarray, labels: np.ndarray, sub: np.ndarray, cache: _RankCache,
                   key: str) -> tuple[np.ndarray, np.ndarray]:
    """U and pairs among outcome-matched pairs, summed back to the original groups."""
    n_sub = int(sub.max()) + 1 if sub.size else 0
    u, n1, n0 = cache.mann_whitney(key, sub, values, labels, n_sub)
    parent = np.zeros(n_sub, dtype=np.int64)
    parent[sub] = groups.codes
    return (np.bincount(parent, weights=u, minlength=groups.n),
            np.bincount(parent, weights=n1 * n0, minlength=groups.n))


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> Any:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(den) > 0, np.asarray(num) / np.where(np.asarray(den) > 0, den, 1), np.nan)


def _ci(lo: float, hi: float) -> tuple[float, float]:
    return (float(lo), float(hi))


def _preference_p(u: np.ndarray, pairs: np.ndarray) -> float:
    """Two-sided p-value of 'paired preference = 0.5' from the cluster-robust SE (t on groups-1 df); when the
    SE is 0 (every group agrees completely) a sign test over the groups."""
    used = pairs > 0
    g = int(used.sum())
    if g < MIN_GROUPS:
        return 1.0
    p_hat = u[used].sum() / pairs[used].sum()
    se = stats.ratio_of_sums_se(u[used], pairs[used])
    if not np.isfinite(se) or se == 0:
        return 1.0 if p_hat == 0.5 else min(1.0, 2.0 * 0.5**g)
    return float(2.0 * stats.t.sf(abs(p_hat - 0.5) / se, g - 1))


@dataclass
class Prepared:
    """What attribution computes from a frame's rewards alone, shared by every behaviour traced on it."""

    groups: _Groups
    signals: list[_Signal]
    total: np.ndarray
    notes: list[str]
    sub: np.ndarray | None  # outcome-matched sub-groups (None without outcome signals)
    measured: np.ndarray | None  # rollouts some outcome signal applies to
    ranks: _RankCache

    @classmethod
    def of(cls, frame: Frame, outcome_signals: list[str] | None = None) -> Prepared:
        groups = _Groups.of(frame.group)
        signals, total, notes = build_signals(frame, outcome_signals)
        outcome = [s for s in signals if s.outcome]
        sub = _refine(groups.codes, [s.values for s in outcome]) if outcome else None
        measured = np.any([np.isfinite(s.values) for s in outcome], axis=0) if outcome else None
        return cls(groups, signals, total, notes, sub, measured, _RankCache())


def attribute(frame: Frame, behavior: Behavior, *, where: str = "answer", run: str = "",
              outcome_signals: list[str] | None = None, advantage_scale: str = "group", n_boot: int = 1000,
              seed: int = 0, level: float = 0.95, direction: str = "up", prepared: Prepared | None = None) -> Trace:
    """Attribute the behaviour values in `frame` to its reward signals (see the module doc).

    `direction="down"` traces a behaviour that fell: "with" then means without it (the negated value for
    numeric behaviours), so the drivers found are the signals that pushed it down. `prepared` (from
    `Prepared.of(frame)`) may be shared by behaviours traced on frames of the same `load_frames` call."""
    if advantage_scale not in ("group", "none"):
        raise RlauditError(f"advantage_scale must be 'group' (GRPO) or 'none' (Dr. GRPO), got {advantage_scale!r}")
    if direction not in ("up", "down"):
        raise RlauditError(f"direction must be 'up' or 'down', got {direction!r}")
    raw = np.nan_to_num(frame.behavior.astype(float), nan=0.0)
    numeric = behavior.numeric or not np.isin(np.unique(raw), (0.0, 1.0)).all()
    x = raw if direction == "up" else (-raw if numeric else 1.0 - raw)
    prep = prepared or Prepared.of(frame, outcome_signals)
    groups, signals = prep.groups, prep.signals
    labels = behavior_labels(groups, x, numeric)
    adv = _Advantage.of(groups, prep.total, x, advantage_scale)
    warnings = list(frame.warnings) + adv.warnings
    notes = prep.notes + adv.notes
    per_group = _group_stats(prep, labels, adv)
    group_steps = frame.step[groups.starts]
    # the resampled units: groups, or the steps a sampled run kept (their groups together)
    clusters = np.unique(group_steps, return_inverse=True)[1].ravel() if frame.step_clusters else None
    results = _summarise(signals, per_group, adv.rollouts, group_steps, n_boot, seed, level, clusters)
    top = results[0]
    n_total = float(adv.rollouts.sum())
    by_condition = _breakdown(frame.condition, frame.condition_names, groups, raw, per_group, signals, top.signal,
                              n_total, clusters)
    by_task = (_breakdown(frame.task, frame.task_names, groups, raw, per_group, signals, top.signal, n_total,
                          clusters) if len(frame.task_names) > 1 else {})
    if top.groups_used < MIN_GROUPS:
        warnings.append(f"Only {top.groups_used} group(s) contain rollouts both with and without the behaviour: "
                        "no confidence intervals or tests.")
    elif top.groups_used < FEW_GROUPS:
        warnings.append(f"Only {top.groups_used} groups contain rollouts both with and without the behaviour: "
                        "the intervals are rough.")
    check = _advantage_check(frame, groups, adv)
    if check and check.get("correlation") is not None and check["correlation"] < 0.9:
        warnings.append(
            f"The logged advantage correlates only {check['correlation']:.2f} with the GRPO advantage rebuilt from "
            "the rewards (different normalisation, KL in the reward, or a different estimator): pressures are "
            "computed from the rebuilt advantage.")
    trace = Trace(
        run=run, behavior=behavior.name, behavior_spec=behavior.spec, where=where, numeric=bool(numeric),
        grouping=frame.grouping, group_key=frame.group_key, rollouts=int(raw.size), groups=groups.n,
        groups_used=top.groups_used, prevalence=float(np.mean(raw)) if raw.size else math.nan, signals=results,
        by_condition=by_condition, by_task=by_task, condition=_argmax_pressure(by_condition),
        task=_argmax_pressure(by_task), advantage_check=check, warnings=warnings, notes=notes,
        direction=direction)
    top_values = next(s.values for s in signals if s.name == top.signal)
    trace.evidence_rows = _evidence_rows(frame, groups, labels, per_group, top, top_values, trace.condition)
    assess([trace])
    return trace


@dataclass
class _Advantage:
    """The GRPO advantage rebuilt per rollout from the total reward, and the centred behaviour.

    advantage_i = (r_i - mean_g r) / sd_g(r) (sample std, as TRL); 'none' scaling (Dr. GRPO) skips the division.
    Rollouts without any reward are left out of their group's mean and std and get no advantage. Groups whose
    rollouts all got the same total have no advantage at all (degenerate)."""

    r_c: np.ndarray  # total reward centred in its group (0 without a reward)
    x_c: np.ndarray  # behaviour centred in its group, over rollouts with a reward
    inv_scale: np.ndarray  # per group: 1 / sd_g(r), or 1 without scaling; 0 for degenerate groups
    has_total: np.ndarray
    rollouts: np.ndarray  # per group: rollouts with a reward
    warnings: list[str]
    notes: list[str]

    @classmethod
    def of(cls, groups: _Groups, total: np.ndarray, x: np.ndarray, scale: str) -> _Advantage:
        has_total = np.isfinite(total)
        r = np.where(has_total, total, 0.0)
        n = groups.sum(has_total.astype(float))
        r_c = np.where(has_total, r - np.nan_to_num(_ratio(groups.sum(r), n))[groups.codes], 0.0)
        sd = np.sqrt(_ratio(groups.sum(r_c**2), n - 1))
        tiny = 1e-9 * max(1.0, float(np.max(np.abs(r))) if r.size else 1.0)
        varies = np.isfinite(sd) & (sd > tiny) & (n >= 2)
        inv = (1.0 / np.where(varies, sd, 1.0)) if scale == "group" else np.ones(groups.n)
        x_c = np.where(has_total, x - np.nan_to_num(_ratio(groups.sum(x * has_total), n))[groups.codes], 0.0)
        warnings, notes = [], []
        if not has_total.all():
            warnings.append(f"{int((~has_total).sum())} rollout(s) have no reward at all and add no pressure.")
        degenerate = int(((n >= 2) & ~varies).sum())
        if degenerate:
            notes.append(f"{degenerate} group(s) where every rollout got the same total reward give no advantage "
                         "(no pressure) and only ties to the paired preference.")
        return cls(r_c, x_c, np.where(varies, inv, 0.0), has_total, n, warnings, notes)


#: Per-group statistics of each signal, summed over groups by the estimates and the bootstrap.
_KEYS = ("u", "pairs", "diff", "pressure", "mu", "mpairs")


def _group_stats(prep: Prepared, labels: np.ndarray, adv: _Advantage) -> dict[str, dict[str, np.ndarray]]:
    """Per signal and group: Mann-Whitney U and pairs, paired difference sum, pressure, and the U and pairs of
    outcome-matched pairs (rollouts no outcome signal applies to are left out of those)."""
    groups = prep.groups
    out: dict[str, dict[str, np.ndarray]] = {}
    for s in prep.signals:
        d = _pair_stats(groups, s.values, labels, prep.ranks, s.name)
        c = np.where(adv.has_total, np.nan_to_num(s.values, nan=0.0), 0.0)
        d["pressure"] = s.weight * groups.sum(adv.x_c * c) * adv.inv_scale
        if prep.sub is not None and not s.outcome and s.kind != "total":
            matched_values = np.where(prep.measured, s.values, np.nan)
            d["mu"], d["mpairs"] = _matched_stats(groups, matched_values, labels, prep.sub, prep.ranks,
                                                  f"matched:{s.name}")
        else:
            d["mu"] = d["mpairs"] = np.zeros(groups.n)
        out[s.name] = d
    return out


def _by_cluster(clusters: np.ndarray | None, *columns: np.ndarray) -> list[np.ndarray]:
    """Per-group columns summed per resampled unit (`clusters`: per group, its unit), or as they are."""
    if clusters is None:
        return list(columns)
    size = int(clusters.max()) + 1 if clusters.size else 0
    return [np.bincount(clusters, weights=c, minlength=size) for c in columns]


def _group_matrix(columns: list[np.ndarray]) -> np.ndarray:
    """The (groups x statistics) matrix of `columns`, C order as `np.column_stack` gives it (the sums' order),
    each column copied into its place: one allocation (stacking them as rows and copying that transposed wrote
    the matrix twice, ~0.1-0.2 CPU s of a cold 1M-rollout audit, most of it first touches of fresh pages)."""
    matrix = np.empty((len(columns[0]) if columns else 0, len(columns)))
    for j, c in enumerate(columns):
        matrix[:, j] = c
    return matrix


def _summarise(signals: list[_Signal], per_group: dict[str, dict[str, np.ndarray]], rollouts: np.ndarray,
               group_steps: np.ndarray, n_boot: int, seed: int, level: float,
               clusters: np.ndarray | None = None, applies: dict[str, float] | None = None
               ) -> list[SignalAttribution]:
    """Point estimates, one joint bootstrap of the groups (or of `clusters` of them) for every interval, p-values
    and per-step series. Returns the signals sorted by pressure (largest first), the total last. `applies`: each
    signal's share of rollouts where it applies, when the signals carry no per-rollout values (`partcache`)."""
    matrix = _group_matrix(_by_cluster(clusters, *[per_group[s.name][k] for s in signals for k in _KEYS],
                                       rollouts))
    reps = stats.bootstrap_group_sums(matrix, n_boot=n_boot, seed=seed)
    sums = matrix.sum(axis=0)
    n_total, n_rep = sums[-1], reps[:, -1]
    col = {(s.name, key): i * len(_KEYS) + j for i, s in enumerate(signals) for j, key in enumerate(_KEYS)}
    parts = [s.name for s in signals if s.kind != "total"] or [signals[-1].name]
    pos_rep = np.column_stack([np.maximum(reps[:, col[n, "pressure"]], 0) for n in parts])
    pos_point = np.array([max(sums[col[n, "pressure"]], 0.0) for n in parts])
    share_rep = _ratio(pos_rep, pos_rep.sum(axis=1, keepdims=True))
    share_point = _ratio(pos_point, pos_point.sum())
    steps, step_codes = np.unique(group_steps, return_inverse=True)
    nan2 = (math.nan, math.nan)
    results: list[SignalAttribution] = []
    for s in signals:
        d = per_group[s.name]
        pt = {k: sums[col[s.name, k]] for k in _KEYS}
        pr = {k: reps[:, col[s.name, k]] for k in _KEYS}
        used, m_used = int((d["pairs"] > 0).sum()), int((d["mpairs"] > 0).sum())
        j = parts.index(s.name) if s.name in parts else None
        by_step = {k: np.bincount(step_codes, weights=d[k], minlength=steps.size)
                   for k in ("u", "pairs", "diff", "pressure")}
        results.append(SignalAttribution(
            signal=s.name, kind=s.kind, outcome=s.outcome, equals_total=s.equals_total, weight=s.weight,
            applies=(applies[s.name] if applies is not None
                     else float(np.isfinite(s.values).mean()) if s.values.size else 0.0),
            pressure=float(pt["pressure"] / n_total) if n_total else math.nan,
            pressure_ci=percentile(_ratio(pr["pressure"], n_rep), level),
            pressure_share=float(share_point[j]) if j is not None else math.nan,
            pressure_share_ci=percentile(share_rep[:, j], level) if j is not None else nan2,
            paired_preference=float(_ratio(pt["u"], pt["pairs"])),
            paired_preference_ci=percentile(_ratio(pr["u"], pr["pairs"]), level) if used >= MIN_GROUPS else nan2,
            p_value=_preference_p(*_by_cluster(clusters, d["u"], d["pairs"])),
            effect=float(_ratio(pt["diff"], pt["pairs"])),
            effect_ci=percentile(_ratio(pr["diff"], pr["pairs"]), level) if used >= MIN_GROUPS else nan2,
            pairs=int(pt["pairs"]), groups_used=used,
            matched_preference=float(_ratio(pt["mu"], pt["mpairs"])),
            matched_preference_ci=(percentile(_ratio(pr["mu"], pr["mpairs"]), level) if m_used >= MIN_GROUPS
                                   else nan2),
            matched_pairs=int(pt["mpairs"]),
            series={"steps": steps.tolist(),
                    "paired_preference": _ratio(by_step["u"], by_step["pairs"]).tolist(),
                    "effect": _ratio(by_step["diff"], by_step["pairs"]).tolist(),
                    "pressure": by_step["pressure"].tolist()}))
    ordered = sorted(results[:-1], key=lambda a: -a.pressure if np.isfinite(a.pressure) else math.inf)
    return ordered + results[-1:]


def percentile(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = stats.percentile_interval(np.asarray(samples, dtype=float).reshape(-1, 1), level)
    return _ci(lo[0], hi[0])


def _breakdown(codes: np.ndarray, names: list[str], groups: _Groups, x: np.ndarray,
               per_group: dict[str, dict[str, np.ndarray]], signals: list[_Signal], top: str,
               n_total: float, clusters: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Per condition (or task): its rollouts, prevalence, and each signal's pressure and paired preference.
    `pressure_share` is the condition's share of the top signal's positive pressure: who pays for the tic."""
    if not names:
        return {}
    n_codes = len(names)
    return _breakdown_of(names, codes[groups.starts], np.bincount(codes[codes >= 0], minlength=n_codes),
                         np.bincount(codes[codes >= 0], weights=x[codes >= 0], minlength=n_codes), per_group,
                         signals, top, n_total, clusters)


def _breakdown_of(names: list[str], gcode: np.ndarray, rows: np.ndarray, xsum: np.ndarray,
                  per_group: dict[str, dict[str, np.ndarray]], signals: list[_Signal], top: str, n_total: float,
                  clusters: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """`_breakdown` from each group's code (-1: none), and the rollouts and behaviour sum per code."""
    n_codes = len(names)
    valid = gcode >= 0
    prevalence = _ratio(xsum, rows)
    top_pressure = np.bincount(gcode[valid], weights=per_group[top]["pressure"][valid], minlength=n_codes)
    positive = np.maximum(top_pressure, 0).sum()
    out: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        in_c = valid & (gcode == c)
        entry: dict[str, Any] = {
            "rollouts": int(rows[c]), "groups": int(in_c.sum()), "prevalence": float(prevalence[c]),
            "pressure_share": float(max(top_pressure[c], 0) / positive) if positive > 0 else math.nan,
            "pressure": {}, "paired_preference": {}, "paired_preference_ci": {}, "effect": {}}
        for s in signals:
            d = per_group[s.name]
            u, pairs = d["u"][in_c], d["pairs"][in_c]
            entry["pressure"][s.name] = float(d["pressure"][in_c].sum() / n_total) if n_total else math.nan
            p = float(_ratio(u.sum(), pairs.sum()))
            entry["paired_preference"][s.name] = p
            se = stats.ratio_of_sums_se(*_by_cluster(None if clusters is None else clusters[in_c], u, pairs))
            z = stats.norm.ppf(0.975)
            entry["paired_preference_ci"][s.name] = ([p - z * se, p + z * se] if np.isfinite(se)
                                                     and (pairs > 0).sum() >= MIN_GROUPS else [math.nan, math.nan])
            entry["effect"][s.name] = float(_ratio(d["diff"][in_c].sum(), pairs.sum()))
        out[name] = entry
    return out


def _argmax_pressure(breakdown: dict[str, dict[str, Any]]) -> str | None:
    best = [(v["pressure_share"], k) for k, v in breakdown.items() if np.isfinite(v["pressure_share"])]
    return max(best)[1] if best else None


def _advantage_check(frame: Frame, groups: _Groups, adv: _Advantage) -> dict[str, Any] | None:
    """Compare the rebuilt GRPO advantage with the logged one: correlation over rollouts, and the total push
    computed from each (sum of x_c * advantage). Agreement means the decomposition describes what the trainer
    did; disagreement is reported as a warning (the signal ranking is still computed from the rewards)."""
    if frame.advantage is None:
        return None
    logged = frame.advantage
    ok = np.isfinite(logged)
    if ok.sum() < 3:
        return None
    rebuilt = adv.r_c * adv.inv_scale[groups.codes]
    a, b = logged[ok], rebuilt[ok]
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None
    return {"rollouts": int(ok.sum()), "correlation": corr,
            "pressure_logged": float(np.sum(adv.x_c[ok] * a) / ok.sum()),
            "pressure_rebuilt": float(np.sum(adv.x_c[ok] * b) / ok.sum())}


def _evidence_rows(frame: Frame, groups: _Groups, labels: np.ndarray, per_group: dict[str, dict[str, np.ndarray]],
                   top: SignalAttribution, values: np.ndarray, cond: str | None,
                   n_pairs: int = 3) -> list[tuple[int, int]]:
    """Up to `n_pairs` (with, without) row pairs from distinct groups of condition `cond` (the one supplying most
    pressure) when it has any, latest steps first, in groups where the top signal favours the behaviour (the
    best-scored rollout with the behaviour next to the worst-scored one without). `values`: the top signal's."""
    d = per_group[top.signal]
    direction = 1.0 if not top.paired_preference < 0.5 else -1.0
    candidates = (d["pairs"] > 0) & (direction * d["diff"] > 0)
    if cond is not None:
        code = frame.condition_names.index(cond)
        in_cond = candidates & (frame.condition[groups.starts] == code)
        if in_cond.any():
            candidates = in_cond
    chosen = np.flatnonzero(candidates)
    chosen = chosen[np.argsort(-frame.step[groups.starts[chosen]], kind="stable")][:n_pairs]
    pairs = (group_pair(values, labels, groups.starts[g], groups.starts[g] + groups.sizes[g], direction)
             for g in chosen)
    return [p for p in pairs if p is not None]


def group_pair(values: np.ndarray, labels: np.ndarray, lo: int, hi: int, direction: int) -> tuple[int, int] | None:
    """The evidence pair of the group of rows lo:hi: its rollout with the behaviour that `values` score highest
    (lowest, `direction` -1) and its rollout without it that they score lowest (highest); None without both."""
    v, lab = values[lo:hi], labels[lo:hi]
    with_ = np.flatnonzero((lab == 1) & np.isfinite(v))
    without = np.flatnonzero((lab == 0) & np.isfinite(v))
    if not (with_.size and without.size):
        return None
    return int(lo + with_[np.argmax(direction * v[with_])]), int(lo + without[np.argmin(direction * v[without])])


# ================================================================================================ verdicts
def assess(traces: list[Trace], alpha: float = 0.05) -> None:
    """Benjamini-Hochberg over every (behaviour, signal) paired-preference test, then a severity per trace.

    A *driver* is a signal (not the total) with positive pressure whose paired preference is BH-significant
    above 0.5. Each driver is classed by how it rewards the behaviour:
    - *outcome*: a task-success signal (`OUTCOME_PATTERN` or `outcome_signals`);
    - *via outcome*: its outcome-matched preference interval contains 0.5 (or lies below it) and lies below
      its unmatched estimate: among equally correct rollouts it no longer prefers the behaviour;
    - *own*: its preference holds among outcome-matched pairs (lower bound > 0.5), or the run has no outcome
      signal to match on: it rewards the behaviour for its own sake;
    - *unclear*: too few outcome-matched pairs to tell (e.g. a judge on tasks without a gold answer), or the
      signal is the total itself or identical to it (a run that logs only a total): not separable.
    Adding the drivers' pressure shares per class:
    - high: *own* drivers carry >= 50% of the positive push and the behaviour itself is medium/high;
    - medium: *own* drivers carry more of the push than outcome / via-outcome drivers (or >= 50% for a low
      behaviour), or *unclear* drivers carry >= 50% of it;
    - low: outcome and via-outcome drivers carry the most: the behaviour is learned because it helps solve the
      task, as intended;
    - info: no driver (no signal pushes the behaviour up with a significant paired preference).
    The 50% line is "most of the push", not a fitted threshold; intervals and the FDR level carry the statistics.
    """
    tests = [(t, s) for t in traces for s in t.signals]
    q = stats.benjamini_hochberg(np.array([s.p_value for _, s in tests], dtype=float)) if tests else []
    for (_, s), qv in zip(tests, q):
        s.q_value = float(qv)
        s.significant = bool(qv <= alpha)
    for t in traces:
        t.severity, t.verdict, t.suspect = _severity(t)


def driver_class(s: SignalAttribution, has_outcome: bool) -> str:
    """'outcome' | 'via_outcome' | 'own' | 'unclear' for a driver (see `assess`)."""
    if s.outcome:
        return "outcome"
    if s.equals_total:
        return "unclear"
    if not has_outcome:
        return "own"
    lo, hi = s.matched_preference_ci
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "unclear"
    if lo > 0.5:
        return "own"
    return "via_outcome" if hi < s.paired_preference else "unclear"


def _drivers(t: Trace) -> tuple[dict[str, list[SignalAttribution]], dict[str, float]]:
    """The significant drivers of an assessed trace by class (`driver_class`), and each class's push share."""
    parts = [s for s in t.signals if s.kind != "total"] or t.signals
    has_outcome = any(s.outcome for s in parts)
    drivers = [s for s in parts if s.pressure > 0 and s.significant and s.paired_preference > 0.5]
    classes: dict[str, list[SignalAttribution]] = {}
    for s in drivers:
        classes.setdefault(driver_class(s, has_outcome), []).append(s)
    share = {c: sum(s.pressure_share for s in ss if np.isfinite(s.pressure_share)) for c, ss in classes.items()}
    return classes, share


def learned_through_outcome(t: Trace) -> list[str]:
    """The task-success signals through which an assessed rising behaviour was learnt, when it was learnt as
    intended: at least half of the positive push comes through them (outcome signals, or signals that prefer it
    only among unequally-correct pairs), and no significant signal rewards it for its own sake or can't be told
    apart from task success for a push of half or more. Otherwise [] (including falling behaviours)."""
    if t.direction != "up":
        return []
    classes, share = _drivers(t)
    legit = share.get("outcome", 0.0) + share.get("via_outcome", 0.0)
    if legit < 0.5 or share.get("own", 0.0) > 0 or share.get("unclear", 0.0) >= 0.5:
        return []
    return [s.signal for c in ("outcome", "via_outcome") for s in classes.get(c, [])]


def _severity(t: Trace) -> tuple[Severity, str, str | None]:
    classes, share = _drivers(t)
    it = "the behaviour" if t.direction == "up" else "the behaviour's absence"
    if not classes:
        return "info", (f"no reward signal pushes the behaviour {t.direction} with a significant paired "
                        "preference"), None
    own, unclear = share.get("own", 0.0), share.get("unclear", 0.0)
    legit = share.get("outcome", 0.0) + share.get("via_outcome", 0.0)
    big = SEVERITY_RANK.get(t.behavior_severity, 2) >= SEVERITY_RANK["medium"]

    def names(c: str) -> str:
        return ", ".join(s.signal for s in classes.get(c, []))

    suspect = max(classes.get("own", []) or classes.get("unclear", []) or [None],
                  key=lambda s: s.pressure if s is not None else 0)
    name = suspect.signal if suspect is not None else None
    if own >= 0.5 and big:
        return "high", (f"{names('own')} rewards {it} for its own sake and carries {own:.0%} of the push"), name
    if own > 0 and (own >= 0.5 or own >= legit):
        return "medium", f"{names('own')} rewards {it} for its own sake ({own:.0%} of the push)", name
    if unclear >= 0.5:
        return "medium", (f"{names('unclear')} rewards {it} ({unclear:.0%} of the push), but cannot be told apart "
                          "from task success (too few equally-correct pairs, or it is the total reward itself)"), name
    if legit == 0:
        return "low", (f"{names('unclear')} rewards {it}, but carries only {unclear:.0%} of the push and cannot be "
                       "told apart from task success"), None
    via = f"; {names('via_outcome')} prefer it only through correctness" if "via_outcome" in classes else ""
    own_note = f"; {names('own')} also rewards it for its own sake ({own:.0%})" if own > 0 else ""
    return "low", (f"the push comes mostly through task success ({legit:.0%}: "
                   f"{names('outcome') or names('via_outcome')}{via}){own_note}: learned as intended"), None


# ================================================================================================ entry point
def trace(store: Any, run: str, behavior: str | Behavior, where: str = "answer", *, max_step: int | None = None,
          split: str | None = "train", outcome_signals: list[str] | None = None, advantage_scale: str = "group",
          n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, behavior_severity: str = "medium",
          direction: str = "up", con: duckdb.DuckDBPyConnection | None = None) -> Trace:
    """Trace `behavior` (a spec for `parse_behavior`, or a Behavior) in `run` to its reward signals.

    `con` may be a connection whose `rollouts` view is already scoped (a detector's `ctx.connect()`); otherwise
    the run is read from `store`, restricted to `split` and steps <= `max_step`. `direction="down"` traces what
    pushed a falling behaviour down. The returned Trace is assessed
    on its own (BH over its signals); the detector re-assesses all behaviours of a run together.
    """
    from ..detectors import AuditConfig, DetectContext

    beh = behavior if isinstance(behavior, Behavior) else parse_behavior(behavior)
    own = con is None
    if con is None:
        store.manifest(run)  # clear error for an unknown run
        con = DetectContext(store=store, run=run, config=AuditConfig(max_step=max_step, split=split)).connect()
    try:
        frame = load_frame(con, beh, where)
        result = attribute(frame, beh, where=where, run=run, outcome_signals=outcome_signals,
                           advantage_scale=advantage_scale, n_boot=n_boot, seed=seed, direction=direction)
        result.behavior_severity = behavior_severity
        assess([result], alpha)
        result.evidence = evidence_for(con, frame, result)
    finally:
        if own:
            con.close()
    return result


def evidence_for(con: duckdb.DuckDBPyConnection, frame: Frame, t: Trace, max_chars: int = 600,
                 prepared: Prepared | None = None) -> list[Evidence]:
    """Evidence pairs of a trace: for each chosen group, the rollout with the behaviour and the one without,
    their text (the part the behaviour was measured on) and every signal's score."""
    where = t.where
    rows = t.evidence_rows
    if not rows or frame.rollout_id is None:
        return []
    flat = [i for pair in rows for i in pair]
    ids = frame.rollout_id.take(pa.array(flat)).to_pylist()
    con.register("_evidence_ids", pa.table({"rollout_id": ids}))
    texts = {r[0]: r[1:] for r in con.execute(
        f"SELECT rollout_id, step, condition, {where}, group_id FROM rollouts "
        "WHERE rollout_id IN (SELECT rollout_id FROM _evidence_ids)").fetchall()}
    con.unregister("_evidence_ids")
    signals = prepared.signals if prepared is not None else build_signals(frame)[0]
    out = []
    for pair, (i, j) in enumerate(rows):
        favoured = t.direction == "up"  # traced downwards, the favoured rollout is the one without it
        for row, has in ((i, favoured), (j, not favoured)):
            rid = ids[flat.index(row)]
            step, cond, text, gid = texts.get(rid, (None, None, "", None))
            scores = {s.name: _num(s.values[row]) for s in signals}
            out.append(Evidence(
                rollout_id=rid, step=step, condition=cond, text=(text or "")[:max_chars],
                note=f"pair {pair + 1}: {'with' if has else 'without'} the behaviour "
                     f"({t.top.signal} = {_fmt(scores.get(t.top.signal))})",
                data={"pair": pair + 1, "has_behavior": has, "group_id": gid,
                      "behavior_value": _num(frame.behavior[row]), "scores": scores}))
    return out


def _num(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"
