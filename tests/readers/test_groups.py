"""Prompt groups of trainers that log no group id (`rlaudit.readers.groups`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.readers.groups import ConsecutiveGroups, file_groups


def _assign(batches: list[list[str | None]], size: int | None) -> tuple[list[str], list[int]]:
    groups = ConsecutiveGroups(size)
    ids, samples = [], []
    for prompts in batches:
        gid, sample = groups.assign(pa.array(prompts, pa.string()), pa.array([7] * len(prompts), pa.int64()))
        ids += gid.to_pylist()
        samples += sample.to_pylist()
    return ids, samples


@pytest.mark.parametrize("size", [None, 2, 3])
def test_groups_do_not_depend_on_where_batches_are_cut(size):
    """A run of equal prompts cut by a batch boundary stays one group (a null prompt is the empty prompt)."""
    prompts = ["a", "a", "a", "b", "b", None, "", "c", "a", "a"]
    whole = _assign([prompts], size)
    for cut in range(1, len(prompts)):
        assert _assign([prompts[:cut], prompts[cut:]], size) == whole
    assert _assign([[p] for p in prompts], size) == whole


def test_runs_of_equal_prompts_split_at_the_group_size():
    ids, samples = _assign([["a"] * 5 + ["b"] * 2], 2)
    assert ids == ["7:0", "7:0", "7:1", "7:1", "7:2", "7:3", "7:3"]
    assert samples == [0, 1, 0, 1, 0, 0, 1]
    ids, samples = _assign([["a", "a", "b", "a"]], None)
    assert ids == ["7:0", "7:0", "7:1", "7:2"] and samples == [0, 1, 0, 0]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(files=st.lists(st.tuples(st.lists(st.sampled_from(["a", "b", "", None]), max_size=9),
                                st.integers(0, 3)), max_size=6),
       size=st.sampled_from([None, 1, 2, 3]))
def test_file_groups_equal_each_files_own_groups(files, size):
    """`file_groups` over several files' rows together gives each file the groups `ConsecutiveGroups` gives it
    alone (TRL's batches of small step files; empty files included): a file's first row starts a group even
    where it repeats the prompt before it, and group indices restart at 0 in each file."""
    prompts = [p for rows, _ in files for p in rows]
    steps = [step for rows, step in files for _ in rows]
    bounds = np.concatenate([[0], np.cumsum([len(rows) for rows, _ in files], dtype=np.int64)])
    ids, samples = file_groups(pa.array(prompts, pa.string()), pa.array(steps, pa.int64()), bounds, size)
    want_ids, want_samples = [], []
    for rows, step in files:
        if rows:
            gid, sample = ConsecutiveGroups(size).assign(pa.array(rows, pa.string()), pa.array([step] * len(rows)))
            want_ids += gid.to_pylist()
            want_samples += sample.to_pylist()
    assert ids.to_pylist() == want_ids
    assert samples.to_pylist() == want_samples
