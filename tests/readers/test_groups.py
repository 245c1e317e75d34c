"""Prompt groups of trainers that log no group id (`rlaudit.readers.groups`)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rlaudit.readers.groups import ConsecutiveGroups


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
