"""Completion length in the unit the trainer limits: tokens when known, characters otherwise.

`length_view(con, ...)` creates the temp view `th_rollouts` (the `rollouts` view plus `th_len`, the completion's
length, and `th_max`, the length limit when known) and says which unit and source it used. In order:

1. a tokenizer given by the user (`tokenizer`: a `tokenizer.json` file or a directory holding one, read with the
   `tokenizers` package, which the [trl] extra brings): every completion is tokenised once (batched) and the
   counts joined by rollout id;
2. token counts the reader kept in each rollout's metadata, when every rollout has one: `completion_tokens`
   (also what OpenAI-style usage records call it), `num_completion_tokens`, `response_tokens`, `loss_tokens`
   (NeMo RL: the sample's loss-masked tokens, its generated tokens), or Tinker's `token_lengths` (the sum of each
   step's action length `ac_len`);
3. characters of the stored completion.

The limit (`th_max`, tokens only): `max_tokens` given by the user (`rlaudit audit --max-completion-tokens`, the
trainer's `max_completion_length` / `data.max_response_length` / `max_tokens`), else a per-rollout metadata
`max_tokens`, `max_completion_tokens` or `max_response_length`. A completion whose length reaches the limit was
cut by it: the truncation check counts it as truncated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from ..errors import RlauditError

_META = "CASE WHEN json_valid(metadata) THEN metadata END"
TOKEN_KEYS = ("completion_tokens", "num_completion_tokens", "response_tokens", "loss_tokens")
MAX_KEYS = ("max_tokens", "max_completion_tokens", "max_response_length")
_TINKER = (f"list_sum(TRY_CAST(json_extract({_META}, '$.token_lengths[*][1]') AS DOUBLE[]))")
TOKENS_SQL = ("coalesce(" + ", ".join(f"TRY_CAST(json_extract_string({_META}, '$.{k}') AS DOUBLE)"
                                      for k in TOKEN_KEYS) + f", {_TINKER})")
MAX_SQL = "coalesce(" + ", ".join(f"TRY_CAST(json_extract_string({_META}, '$.{k}') AS DOUBLE)" for k in MAX_KEYS) + ")"


@dataclass
class LengthUnit:
    unit: str  # "tokens" | "characters"
    source: str  # where the lengths came from
    max_tokens: float | None = None  # the limit when one value holds for the run (else per rollout or unknown)
    has_max: bool = False

    def describe(self) -> str:
        limit = f"; limit {self.max_tokens:g} tokens" if self.max_tokens else (
            "; per-rollout limits from metadata" if self.has_max else "")
        return f"length in {self.unit} ({self.source}{limit})"


def load_tokenizer(spec: str):  # noqa: ANN201 - tokenizers.Tokenizer, imported lazily
    """The tokenizer at `spec` (a tokenizer.json or a directory holding one); RlauditError saying what is wrong."""
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise RlauditError(f"tokenizer {spec}: no tokenizer.json there (give the file, or a directory holding it)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise RlauditError("counting tokens with a tokenizer needs the `tokenizers` package "
                           "(pip install 'rlaudit[trl]' or pip install tokenizers)") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the library raises its own exception type
        raise RlauditError(f"tokenizer {path}: not a readable tokenizer.json ({exc})") from None


def length_view(con: duckdb.DuckDBPyConnection, tokenizer: str | None = None,
                max_tokens: float | None = None, batch: int = 4096, known: tuple[int, int] | None = None,
                limits: tuple[float | None, float | None, int] | None = None) -> LengthUnit:
    """Create `th_rollouts` (see the module doc) and return the unit it measures in. `known` (rows, rows with
    metadata token counts) and `limits` (min, max and count of the metadata limit), when the caller has them
    from cached statistics, spare the scans of every rollout's metadata that would count them."""
    if tokenizer:
        tok = load_tokenizer(tokenizer)
        ids, counts = [], []
        cur = con.execute("SELECT rollout_id, completion FROM rollouts")
        while rows := cur.fetchmany(batch):
            ids += [r[0] for r in rows]
            counts += [len(e.ids) for e in tok.encode_batch([r[1] or "" for r in rows], add_special_tokens=False)]
        con.register("th_tok_arrow", pa.table({"rollout_id": pa.array(ids, pa.string()),
                                               "th_len": pa.array(counts, pa.float64())}))
        con.execute("CREATE OR REPLACE TEMP TABLE th_tok AS SELECT * FROM th_tok_arrow")
        con.unregister("th_tok_arrow")
        length, join = "th_tok.th_len", "LEFT JOIN th_tok USING (rollout_id)"
        unit = LengthUnit("tokens", f"tokenizer {tokenizer}")
    else:
        # a sample first: most logs carry no token counts, and parsing every metadata object costs a full scan
        if known is None:
            sampled = con.execute(f"SELECT count({TOKENS_SQL}) FROM (SELECT metadata FROM rollouts LIMIT 2048)").fetchone()
            known = con.execute(f"SELECT count(*), count({TOKENS_SQL}) FROM rollouts").fetchone() if sampled[0] else (0, 0)
        if known[0] and known[0] == known[1]:
            key = con.execute(f"""SELECT CASE {' '.join(f"WHEN json_extract_string({_META}, '$.{k}') IS NOT NULL "
                                                           f"THEN '{k}'" for k in TOKEN_KEYS)}
                                   ELSE 'token_lengths' END FROM rollouts LIMIT 1""").fetchone()[0]
            length, join = TOKENS_SQL, ""
            unit = LengthUnit("tokens", f"metadata.{key}")
        else:
            length, join = "length(completion)::DOUBLE", ""
            unit = LengthUnit("characters", "the stored completion text"
                              + (f" (token counts in metadata for only {known[1]} of {known[0]} rollouts)"
                                 if known[1] else ""))
    limit = "NULL::DOUBLE" if unit.unit != "tokens" else (
        f"{float(max_tokens)}::DOUBLE" if max_tokens else MAX_SQL)
    con.execute(f"""CREATE OR REPLACE TEMP VIEW th_rollouts AS
                    SELECT rollouts.*, {length} AS th_len, {limit} AS th_max FROM rollouts {join}""")
    if unit.unit == "tokens":
        if max_tokens:
            unit.max_tokens, unit.has_max = float(max_tokens), True
        else:
            lo, hi, n = limits if limits is not None else con.execute(
                "SELECT min(th_max), max(th_max), count(th_max) FROM th_rollouts").fetchone()
            unit.has_max = bool(n)
            unit.max_tokens = float(lo) if n and lo == hi else None
    return unit
