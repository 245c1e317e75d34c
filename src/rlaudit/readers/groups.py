"""Prompt groups for trainers that log no group id: runs of identical prompts (TRL) or keyed sets (verl)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .messages import combine


def encode_distinct(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(distinct values, index of each row's value in them), as `dictionary_encode` gives, for a column without
    nulls. A GRPO batch logs each prompt `num_generations` times in a row, so runs of equal neighbours are
    collapsed first (one cheap comparison per row) and only the run heads are hashed."""
    n = len(values)
    if n < 2:
        encoded = pc.dictionary_encode(values)
        return encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    changed = pc.fill_null(pc.not_equal(values.slice(1), values.slice(0, n - 1)), True)
    new_run = np.concatenate([[True], changed.to_numpy(zero_copy_only=False)])
    encoded = pc.dictionary_encode(values.take(pa.array(np.flatnonzero(new_run))))
    return encoded.dictionary, encoded.indices.to_numpy().astype(np.int64)[np.cumsum(new_run) - 1]


class ConsecutiveGroups:
    """Prompt groups as runs of consecutive identical prompts, split at `group_size` (TRL's layout).

    Stateful across the batches of one file, so a group cut by a batch boundary stays one group.
    group_id is "<step>:<index of the group in the file>" and sample_index the position in the group.
    """

    def __init__(self, group_size: int | None):
        self.group_size = group_size
        self.last_prompt: str | None = None
        self.last_group = -1
        self.last_pos = -1

    def assign(self, prompts: pa.Array, steps: pa.Array) -> tuple[pa.Array, pa.Array]:
        n = len(prompts)
        if n == 0:
            return pa.array([], pa.string()), pa.array([], pa.int32())
        prompts = pc.fill_null(combine(prompts).cast(pa.string()), "")
        # each prompt against the one before it; the first against the previous batch's last (no concatenation
        # of that one with the batch: a copy of every prompt, ~1.5 MB a file at the 1M benchmark)
        new_run = np.empty(n, bool)
        new_run[0] = self.last_prompt is None or prompts[0].as_py() != self.last_prompt
        new_run[1:] = pc.not_equal(prompts.slice(1), prompts.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        idx = np.arange(n)
        run_start = np.maximum.accumulate(np.where(new_run, idx, -1))
        continues = run_start < 0  # rows continuing the previous batch's run
        pos = np.where(continues, self.last_pos + 1 + idx, idx - run_start)
        if self.group_size:
            new_group = new_run | (pos % self.group_size == 0)
            sample = pos % self.group_size
        else:
            new_group = new_run
            sample = pos
        group = self.last_group + np.cumsum(new_group)
        self.last_prompt = prompts[n - 1].as_py()
        self.last_group, self.last_pos = int(group[-1]), int(pos[-1])
        group_id = pc.binary_join_element_wise(steps.cast(pa.string()), pa.array(group).cast(pa.string()), ":")
        return group_id, pa.array(sample.astype(np.int32))


def file_groups(prompts: pa.Array, steps: pa.Array, bounds: np.ndarray, group_size: int | None
                ) -> tuple[pa.Array, pa.Array]:
    """What `ConsecutiveGroups(group_size).assign` gives each file's rows, for several whole files' rows together
    (`bounds`: where each file's rows start, then their end; a file's groups are its own): one pass of array
    calls for a batch of small step files, not one per file (~0.15 ms a file: 0.6 s for a run logged in 3,906
    files)."""
    n = len(prompts)
    if n == 0:
        return pa.array([], pa.string()), pa.array([], pa.int32())
    prompts = pc.fill_null(combine(prompts).cast(pa.string()), "")
    bounds = np.asarray(bounds, np.int64)
    new_run = np.empty(n, bool)
    new_run[0] = True
    new_run[1:] = pc.not_equal(prompts.slice(1), prompts.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = bounds[:-1]
    new_run[starts[starts < n]] = True  # a file's first row starts a run, whatever the row before it
    idx = np.arange(n)
    pos = idx - np.maximum.accumulate(np.where(new_run, idx, 0))
    if group_size:
        new_group = new_run | (pos % group_size == 0)
        sample = pos % group_size
    else:
        new_group, sample = new_run, pos
    counted = np.cumsum(new_group)
    file_start = np.repeat(starts, np.diff(bounds))  # each row's file's first row
    group = counted - counted[file_start]  # 0 for a file's first group
    group_id = pc.binary_join_element_wise(steps.cast(pa.string()), pa.array(group).cast(pa.string()), ":")
    return group_id, pa.array(sample.astype(np.int32))


class KeyedGroups:
    """Prompt groups keyed by a value (verl's uid, or the prompt text when uid is absent).

    All rows of one file with the same key form one group wherever they are in the file (verl's balance_batch
    reorders rows, so identical prompts need not be adjacent); `group_size` splits larger groups in file order.
    Stateful across the batches of one file.
    """

    def __init__(self, group_size: int | None, use_key_in_id: bool):
        self.group_size = group_size
        self.use_key_in_id = use_key_in_id
        self.codes: dict[str, int] = {}
        self.counts = np.zeros(0, dtype=np.int64)

    def assign(self, keys: pa.Array, steps: pa.Array) -> tuple[pa.Array, pa.Array]:
        n = len(keys)
        if n == 0:
            return pa.array([], pa.string()), pa.array([], pa.int32())
        keys = pc.fill_null(combine(keys).cast(pa.string()), "")
        encoded = pc.dictionary_encode(keys)
        local = encoded.indices.to_numpy(zero_copy_only=False)
        mapping = np.array([self.codes.setdefault(k, len(self.codes)) for k in encoded.dictionary.to_pylist()],
                           dtype=np.int64)
        codes = mapping[local]
        if len(self.counts) < len(self.codes):
            self.counts = np.concatenate([self.counts, np.zeros(len(self.codes) - len(self.counts), np.int64)])
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        starts = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]
        first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - first
        pos = self.counts[codes] + rank
        np.add.at(self.counts, codes, 1)
        label = keys if self.use_key_in_id else pa.array(codes).cast(pa.string())
        group_id = pc.binary_join_element_wise(steps.cast(pa.string()), label, ":")
        if self.group_size:
            sub = pos // self.group_size
            group_id = pc.if_else(pa.array(sub > 0), pc.binary_join_element_wise(
                group_id, pa.array(sub).cast(pa.string()), "/"), group_id)
            pos = pos % self.group_size
        return group_id, pa.array(pos.astype(np.int32))
