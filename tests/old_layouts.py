"""Parts as earlier layouts stored them, for tests that older runs stay readable next to new ones."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from rlaudit.layout import REWARD_PREFIX, join_rewards


def with_rewards_map(part: pa.Table) -> pa.Table:
    """A stored part as layouts before 5 kept it: the rewards map of every rollout, no reward columns."""
    part = part.set_column(part.schema.get_field_index("rewards"), "rewards", join_rewards(part))
    return part.drop_columns([c for c in part.column_names if c.startswith(REWARD_PREFIX)])


def store_as_layout(store, run: str, parts: set[str], layout: int, drop: tuple[str, ...] = ()) -> None:
    """Rewrite the parts `parts` (file names) of `run` as `layout` (before 5) stored them, without the columns
    `drop`, and their manifest entries to say so (that layout, no reward signals)."""
    manifest = store.manifest(run)
    for name in parts:
        path = store.run_dir(run) / "parts" / name
        pq.write_table(with_rewards_map(pq.read_table(path)).drop_columns(list(drop)), path)
    for entry in manifest["files"].values():
        if entry.get("part") in parts:
            entry["layout"] = layout
            entry.pop("signals", None)
    (store.run_dir(run) / "run.json").write_text(json.dumps(manifest))
