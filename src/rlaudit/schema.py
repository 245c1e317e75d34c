"""The canonical rollout table: the one shape every reader produces and every detector reads.

One row is one rollout (one sampled completion for one prompt at one training step). Readers map each
trainer's logs onto these columns; nothing downstream knows which trainer wrote the run.
"""

from __future__ import annotations

import pyarrow as pa

#: One tool call the policy made: the tool's name and the arguments exactly as the model wrote them (usually JSON).
TOOL_CALL = pa.struct([pa.field("name", pa.string()), pa.field("arguments", pa.string())])
TOOL_CALLS = pa.list_(TOOL_CALL)

#: Column name -> (Arrow type, nullable, meaning). The order here is the column order on disk.
COLUMNS: dict[str, tuple[pa.DataType, bool, str]] = {
    "run": (pa.string(), False, "Run name (the source directory's base name unless given)."),
    "rollout_id": (pa.string(), False, "Stable id within the run: '<source file>:<line or row>'."),
    "step": (pa.int64(), False, "Training step the rollout was generated at."),
    "split": (pa.string(), False, "'train' or 'eval'."),
    "group_id": (pa.string(), True, "Prompt group: rollouts of one prompt at one step, compared by the trainer."),
    "sample_index": (pa.int32(), True, "Index of the rollout within its group."),
    "condition": (pa.string(), False, "Readable label of the system prompt / persona ('none' without one)."),
    "system_prompt": (pa.string(), True, "The system prompt the condition was derived from."),
    "task": (pa.string(), True, "Environment, task or data source, when the trainer logs it."),
    "prompt": (pa.string(), False, "Prompt as text (message lists are rendered 'role: content' per line)."),
    "completion": (pa.string(), False, "Full completion as generated, reasoning included."),
    "reasoning": (pa.string(), True, "Chain-of-thought (null when the completion has none)."),
    "answer": (pa.string(), False, "The completion without its reasoning: what the user sees."),
    "tool_calls": (TOOL_CALLS, True, "Tool calls the policy made, in order over its turns (arguments as written)."),
    "tool_outputs": (pa.list_(pa.string()), True,
                     "What tools or the environment returned to the policy between its turns, in order."),
    "rewards": (pa.map_(pa.string(), pa.float64()), False, "Reward components: signal -> value (NaN: n/a)."),
    "reward": (pa.float64(), True, "Total reward as the trainer used it."),
    "advantage": (pa.float64(), True, "Advantage the trainer assigned, when logged."),
    "grader_inputs": (pa.map_(pa.string(), pa.string()), False, "Grader name -> the exact text it saw."),
    "metadata": (pa.string(), True, "JSON object of every other logged field."),
}

ROLLOUT_SCHEMA = pa.schema([pa.field(name, typ, nullable=nullable) for name, (typ, nullable, _) in COLUMNS.items()])

#: Columns a reader must always fill; the rest may be null.
REQUIRED = [name for name, (_, nullable, _) in COLUMNS.items() if not nullable]

NO_CONDITION = "none"


def canonical_table(data: pa.Table | dict[str, object] | list[dict[str, object]]) -> pa.Table:
    """A canonical table from columns (a dict of lists or arrays), rows (a list of dicts) or an Arrow table.

    Nullable columns that `data` lacks are null (tables built before a column was added stay valid); required
    ones must be there. Values are cast to the canonical types.
    """
    if isinstance(data, list):
        data = {name: [row.get(name) for row in data] for name in COLUMNS if any(name in row for row in data)}
    if isinstance(data, dict):
        data = pa.table({name: data[name] for name in COLUMNS if name in data},
                        schema=pa.schema([f for f in ROLLOUT_SCHEMA if f.name in data]))
    missing = [name for name in REQUIRED if name not in data.column_names]
    if missing:
        raise ValueError(f"a canonical table needs the columns {missing} (see `rlaudit schema`)")
    for field in ROLLOUT_SCHEMA:
        if field.name not in data.column_names:
            data = data.append_column(field, pa.nulls(data.num_rows, field.type))
    return data.select(ROLLOUT_SCHEMA.names).cast(ROLLOUT_SCHEMA)


def empty_table() -> pa.Table:
    """A zero-row table of the canonical schema."""
    return ROLLOUT_SCHEMA.empty_table()


def schema_markdown() -> str:
    """The schema as a Markdown table, for the README and `rlaudit schema`."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for name, (typ, nullable, doc) in COLUMNS.items():
        lines.append(f"| `{name}` | `{typ}{'' if nullable else ' not null'}` | {doc} |")
    return "\n".join(lines)
