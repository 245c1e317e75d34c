"""Parts as earlier layouts stored them, for tests that older runs stay readable next to new ones."""

from __future__ import annotations

import pyarrow as pa

from rlaudit.layout import REWARD_PREFIX, join_rewards


def with_rewards_map(part: pa.Table) -> pa.Table:
    """A stored part as layouts before 5 kept it: the rewards map of every rollout, no reward columns."""
    part = part.set_column(part.schema.get_field_index("rewards"), "rewards", join_rewards(part))
    return part.drop_columns([c for c in part.column_names if c.startswith(REWARD_PREFIX)])
