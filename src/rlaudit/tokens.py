"""Per-rollout term sets: which words and n-grams (1-3 tokens) each rollout's answer and reasoning contain.

Discovery of emerging behaviours, cross-condition generalisation, attribution and live alerts all ask the same
question of every rollout ("does it say X?"), so the answer is computed once per run version and cached with
`Store.derived` (recomputed only when the run's rows change; an audit limited by `max_step` or `split` filters
the cached rows instead of recomputing them).

Two derived tables:

- `term-vocab`: the candidate terms (term_id, where, term, n_tokens). Candidates are chosen on a
  deterministic sample of rollouts (by hash of rollout id): an n-gram qualifies when it reaches
  `min_prevalence` of the sampled rollouts of some step bin, overall or within one condition (so a tic
  confined to a small persona is not drowned by the rest of the traffic); of those, the `max_terms` per
  `where` whose binned prevalence varies most are kept (constant words cannot emerge). The number that
  qualified before the cut is stored (`n_qualified`): discovery counts them all as tested hypotheses.
- `rollout-terms`: one row per rollout with its scope keys (step, split, condition, task, group, a hash of
  the prompt), style features of answer and reasoning (`answer__exclamation`, `reasoning__length`, ...;
  the same SQL as `Behavior.sql`, so values agree with `style:NAME` specs) and the *distinct* candidate term
  ids found in the answer and in the reasoning (`answer_terms`, `reasoning_terms`). An occurrence does not
  count when the same n-gram, or its key token (its rarest word: "zebra" of "the zebra"), occurs in the
  rollout's prompt (copying the question is not a tic); the
  candidate ids found in the prompt are kept (`prompt_terms`) so that prevalences can be computed among the
  rollouts *at risk*, those whose prompt does not already contain the term.

Tokens are `behaviors.TOKEN_PATTERN` runs of the lower-cased text, so a discovered n-gram, used as a term
spec, matches exactly the rollouts counted here (up to the prompt exclusion). All work is DuckDB SQL in
chunks of rollouts, so memory stays bounded on runs of millions of rollouts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from .behaviors import STYLE_FEATURES, TOKEN_PATTERN, parse_behavior
from .layout import view_columns
from .store import Store, atomic_write_text, bound_memory

WHERES = ("answer", "reasoning")
VOCAB = "term-vocab"
ROLLOUT_TERMS = "rollout-terms"

_TOKENS = TOKEN_PATTERN.replace("'", "''")
_CHUNK = 150_000  # rollouts per SQL chunk: bounds DuckDB's working set


@dataclass(frozen=True)
class VocabOptions:
    """How candidate terms are chosen (see module doc)."""

    max_terms: int = 4000  # per where
    min_prevalence: float = 0.01  # in some step bin (overall or within one condition)
    min_count: int = 5  # rollouts in that bin
    sample: int = 40_000  # rollouts sampled for the choice (20 bins of ~2,000)
    bins: int = 20
    max_n: int = 3


def style_columns() -> list[tuple[str, str, str]]:
    """(column name, where, feature name) of every per-rollout style column."""
    return [(f"{where}__{name}", where, name) for where in WHERES for name in STYLE_FEATURES]


def tokens_sql(column: str) -> str:
    """DuckDB expression: the list of tokens of `column` (see `behaviors.tokenize`)."""
    return f"regexp_extract_all(lower(coalesce({column}, '')), '{_TOKENS}')"


def ngram_rows_sql(source: str, key: str, column: str, max_n: int = 3) -> str:
    """SQL yielding (key, term) for every 1..max_n-gram occurrence of `column` in `source` (with repeats).

    Tokens are unnested side by side with their shifted copies, so an n-gram is the concatenation of one
    row's columns: no per-rollout list building, which is what makes this fast in DuckDB.
    """
    shifted = ", ".join(f"unnest(tk[{k + 1}:]) AS w{k + 1}" for k in range(max_n))
    parts = []
    for n in range(1, max_n + 1):
        expr = " || ' ' || ".join(f"w{k + 1}" for k in range(n))
        cond = f" WHERE w{n} IS NOT NULL" if n > 1 else ""
        parts.append(f"SELECT {key}, {expr} AS term FROM pos{cond}")
    return (f"WITH pos AS (SELECT {key}, {shifted} FROM (SELECT {key}, {tokens_sql(column)} AS tk FROM {source})) "
            + " UNION ALL ".join(parts))


def _scope_columns() -> str:
    style = []
    for col, where, name in style_columns():
        sql = parse_behavior(f"style:{name}").sql(where)
        style.append(f"{sql} AS {col}")
    return ", ".join([
        "rollout_id", "step", "split", "condition", "task", "group_id",
        "hash(coalesce(prompt, '')) AS prompt_key",
        "(reasoning IS NOT NULL AND length(trim(reasoning)) > 0) AS has_reasoning",
        *style,
    ])


def vocabulary(store: Store, run: str, options: VocabOptions = VocabOptions()) -> pa.Table:
    """The cached `term-vocab` table of a run (see module doc)."""
    return term_sets(store, run, options).vocab


def rollout_terms(store: Store, run: str, options: VocabOptions = VocabOptions()) -> pa.Table:
    """The `rollout-terms` rows of a run as one Arrow table (see module doc). For tests and small runs: the
    detectors read the per-part cache through `TermSets.register` without materialising the run."""
    sets = term_sets(store, run, options)
    tables = [sets.part_table(i, "terms") for i in range(len(sets.parts))]
    return pa.concat_tables(tables) if tables else pa.table({})


def term_step_counts(store: Store, run: str, options: VocabOptions = VocabOptions()) -> pa.Table:
    """Per-step counts of every candidate term: (where, term_id, step, split, x, m), where x counts the
    rollouts whose text contains the term and m those whose prompt does (not at risk). For reasoning terms only
    rollouts with reasoning count. An audit limited by `max_step` sums these instead of re-reading every
    rollout's term set. (Parts that share a step are summed.)"""
    sets = term_sets(store, run, options)
    con = duckdb.connect()
    sets.register(con)
    out = con.sql('SELECT "where", term_id, step, split, sum(x) AS x, sum(m) AS m FROM step_counts '
                  "GROUP BY ALL").to_arrow_table()
    con.close()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Per-part cache. The vocabulary is chosen on a sample of the whole run; every stored part's term sets and
# per-step counts are then computed on their own (bounded memory: one part at a time) and cached beside the run
# under the vocabulary's id, so a part is tokenised once per vocabulary, and a run that grows by a step only
# tokenises the new part as long as the vocabulary is kept (see `REUSE_GROWTH`).

#: A cached vocabulary is kept while the run only grew (its parts are all still stored) by at most this share of
#: the rows it was chosen on; beyond that it is chosen again (and every part re-tokenised). Terms that qualify
#: only in the added rows wait for that re-choice: a rise confined to the last few percent of a run cannot pass
#: the window test (early vs late 20% of steps) anyway.
REUSE_GROWTH = 0.05


@dataclass
class TermSets:
    """A run's vocabulary and, per stored part, its term sets and per-step counts (files, or tables in memory
    for stores that do not persist derived data)."""

    vocab: pa.Table
    parts: list[tuple[str, Any]]  # (part name, {"terms": path|table, "counts": path|table})

    def part_table(self, i: int, kind: str) -> pa.Table:
        v = self.parts[i][1][kind]
        return v if isinstance(v, pa.Table) else pq.read_table(v)

    def register(self, con: duckdb.DuckDBPyConnection, terms: str = "rt", counts: str = "step_counts") -> None:
        """Views `terms` (one row per rollout) and `counts` (per part and step) over the cached parts."""
        for kind, view in (("terms", terms), ("counts", counts)):
            paths = [p[kind] for _, p in self.parts if not isinstance(p[kind], pa.Table)]
            tables = [p[kind] for _, p in self.parts if isinstance(p[kind], pa.Table)]
            selects = []
            if paths:
                selects.append(f"SELECT * FROM read_parquet({_sql_list([str(x) for x in paths])})")
            if tables:
                name = f"_{view}_mem"
                con.register(name, pa.concat_tables(tables))
                selects.append(f"SELECT * FROM {name}")
            if not selects:
                con.register(f"_{view}_empty", _EMPTY[kind])
                selects.append(f"SELECT * FROM _{view}_empty")
            con.execute(f"CREATE OR REPLACE VIEW {view} AS {' UNION ALL BY NAME '.join(selects)}")


_EMPTY: dict[str, pa.Table] = {}


def term_sets(store: Store, run: str, options: VocabOptions = VocabOptions()) -> TermSets:
    """The run's vocabulary and per-part term sets, computing (and caching) what is missing."""
    persist = getattr(store, "persist_derived", True)
    memo = store.__dict__.setdefault("_term_sets_memo", {})
    okey = hashlib.sha1(repr(options).encode()).hexdigest()[:10]
    manifest = store.manifest(run)
    rows_of = {e["part"]: int(e.get("rows") or 0) for e in manifest["files"].values() if e.get("part")}
    layouts = store.part_layouts(run)
    parts = store.parts(run)
    names = [p.name for p in parts]
    rows = sum(rows_of.get(n, 0) for n in names)
    base = store.run_dir(run) / "derived" / "tokens"
    vocab, vocab_id = _cached_vocab(store, run, options, okey, names, rows, base, persist, memo)
    out = []
    done: dict[str, Any] = memo.setdefault(("parts", vocab_id), {})
    vdir = base / vocab_id
    for path in parts:
        entry: dict[str, Any] | None = done.get(path.name)
        if entry is None and persist:
            files = {"terms": vdir / f"{path.stem}.terms.parquet", "counts": vdir / f"{path.stem}.counts.parquet"}
            if all(f.is_file() for f in files.values()):
                entry = files
        if entry is None:
            terms, counts = _compute_part(path, layouts.get(path.name, 1), vocab, options)
            if persist:
                vdir.mkdir(parents=True, exist_ok=True)
                entry = {}
                for kind, table in (("terms", terms), ("counts", counts)):
                    f = vdir / f"{path.stem}.{kind}.parquet"
                    tmp = vdir / f".{f.name}.{os.getpid()}.tmp"
                    pq.write_table(table, tmp, compression="zstd", compression_level=1)
                    os.replace(tmp, f)
                    entry[kind] = f
            else:
                entry = {"terms": terms, "counts": counts}
            if not _EMPTY:
                _EMPTY.update({"terms": terms.schema.empty_table(), "counts": counts.schema.empty_table()})
        done[path.name] = entry
        out.append((path.name, entry))
    if persist:
        _prune(base, vocab_id, {p.stem for p in parts})
    return TermSets(vocab=vocab, parts=out)


def _cached_vocab(store: Store, run: str, options: VocabOptions, okey: str, names: list[str], rows: int,
                  base: Path, persist: bool, memo: dict[Any, Any]) -> tuple[pa.Table, str]:
    """The vocabulary to use (cached or chosen now) and its id."""
    meta_path, vocab_path = base / f"vocab-{okey}.json", base / f"vocab-{okey}.parquet"
    meta = memo.get(("vocab", okey))
    if meta is None and persist and meta_path.is_file() and vocab_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            meta = {**json.loads(meta_path.read_text()), "table": pq.read_table(vocab_path)}
    if meta is not None:
        old = set(meta["parts"])
        grew = rows - meta["rows"]
        if old <= set(names) and 0 <= grew <= REUSE_GROWTH * max(meta["rows"], 1):
            return meta["table"], meta["id"]
    table = _compute_vocab(store, run, options)
    digest = hashlib.sha1(okey.encode())
    for col in ("where", "term", "term_id", "key_token"):
        digest.update(repr(table.column(col).to_pylist()).encode())
    vocab_id = digest.hexdigest()[:16]
    meta = {"parts": names, "rows": rows, "id": vocab_id}
    memo[("vocab", okey)] = {**meta, "table": table}
    if persist:
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".{vocab_path.name}.{os.getpid()}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, vocab_path)
        atomic_write_text(meta_path, json.dumps(meta))
    return table, vocab_id


def _prune(base: Path, vocab_id: str, stems: set[str]) -> None:
    """Remove cached part data of other vocabularies and of parts the run no longer lists."""
    for d in base.iterdir():
        if d.is_dir() and d.name != vocab_id:
            shutil.rmtree(d, ignore_errors=True)
    vdir = base / vocab_id
    if vdir.is_dir():
        for f in vdir.iterdir():
            if f.name.split(".")[0] not in stems:
                f.unlink(missing_ok=True)


def _compute_vocab(store: Store, run: str, o: VocabOptions) -> pa.Table:
    con = store.connect([run])
    n = con.execute("SELECT count(*) FROM rollouts").fetchall()[0][0]
    per_mille = 1000 if n <= o.sample else max(1, int(1000 * o.sample / n))
    con.execute(f"""
        CREATE TEMP TABLE s AS
        SELECT row_number() OVER () AS sid, condition, answer, reasoning,
               least({o.bins - 1}, CAST(floor({o.bins} * (step - min(step) OVER ())
                     / (max(step) OVER () - min(step) OVER () + 1)) AS INTEGER)) AS bin
        FROM rollouts WHERE hash(rollout_id) % 1000 < {per_mille}""")
    con.execute("CREATE TEMP TABLE cells AS SELECT bin, condition, count(*) AS n FROM s GROUP BY ALL")
    frames = []
    for where in WHERES:
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE df AS
            SELECT term, bin, condition, count(*) AS df
            FROM (SELECT DISTINCT s.sid, t.term, s.bin, s.condition
                  FROM ({ngram_rows_sql('s', 'sid', where, o.max_n)}) t JOIN s USING (sid))
            GROUP BY ALL""")
        # prevalence per (bin) overall and per (bin, condition); a term absent from a cell has prevalence 0
        frames.append(con.sql(f"""
            WITH overall AS (
                SELECT term, bin, sum(df) AS df FROM df GROUP BY ALL),
            prev_all AS (
                SELECT term, max(o.df / c.n) AS pmax,
                       max(o.df / c.n) - CASE WHEN count(*) < (SELECT count(DISTINCT bin) FROM cells)
                                              THEN 0 ELSE min(o.df / c.n) END AS spread,
                       max(CASE WHEN o.df >= {o.min_count} THEN o.df / c.n ELSE 0 END) AS pmax_counted
                FROM overall o JOIN (SELECT bin, sum(n) AS n FROM cells GROUP BY bin) c USING (bin)
                GROUP BY term),
            prev_cond AS (
                SELECT term, max(CASE WHEN d.df >= {o.min_count} THEN d.df / c.n ELSE 0 END) AS pmax_counted,
                       max(d.df / c.n) AS spread
                FROM df d JOIN cells c USING (bin, condition)
                WHERE (SELECT count(DISTINCT condition) FROM cells) > 1
                GROUP BY term),
            q AS (
                SELECT a.term, greatest(a.pmax_counted, coalesce(c.pmax_counted, 0)) AS pmax,
                       greatest(a.spread, coalesce(c.spread, 0)) AS spread
                FROM prev_all a LEFT JOIN prev_cond c USING (term))
            SELECT '{where}' AS "where", term, len(string_split(term, ' ')) AS n_tokens, pmax, spread,
                   count(*) OVER () AS n_qualified
            FROM q WHERE pmax >= {o.min_prevalence}
            ORDER BY spread DESC, term
            LIMIT {o.max_terms}""").to_arrow_table())
        # key token: the n-gram's rarest token (its content word), by document frequency in the sample
        con.register("chosen", frames[-1])
        unigram_df = "SELECT term AS token, sum(df) AS df FROM df WHERE NOT contains(term, ' ') GROUP BY term"
        keys = con.sql(f"""
            SELECT term, arg_min(token, coalesce(u.df, 0)) AS key_token
            FROM (SELECT term, unnest(string_split(term, ' ')) AS token FROM chosen)
            LEFT JOIN ({unigram_df}) u USING (token) GROUP BY term""").to_arrow_table()
        con.unregister("chosen")
        frames[-1] = frames[-1].join(keys, "term")
    con.close()
    table = pa.concat_tables(frames)
    return table.append_column("term_id", pa.array(range(table.num_rows), pa.int32()))


def _hash_key_sql(h: str, n: int) -> str:
    """The 64-bit key of the n-gram whose token hashes are h1..hn (columns `{h}1`..) or list items (`{h}[i]`)."""
    items = [f"{h}{i + 1}" if not h.endswith("]") else f"{h[:-1]}{i + 1}]" for i in range(n)]
    return items[0] if n == 1 else f"hash({', '.join(items)})"


def hashed_ngram_rows_sql(source: str, key: str, hashes: str, max_n: int = 3) -> str:
    """SQL yielding (key, n, k) for every 1..max_n-gram occurrence, where `hashes` is a list column of token
    hashes (`hash(token)`) and k the n-gram's 64-bit key: the token hash for a word, `hash(h1, ..., hn)` for a
    longer n-gram. The same key as `vocab_keys_sql` gives the vocabulary's terms, so n-grams are matched by
    integer joins, never built as strings. Two distinct n-grams share a key with probability ~2^-64 per pair."""
    shifted = ", ".join(f"unnest({hashes}[{k + 1}:]) AS h{k + 1}" for k in range(max_n))
    parts = []
    for n in range(1, max_n + 1):
        cond = f" WHERE h{n} IS NOT NULL" if n > 1 else ""
        parts.append(f"SELECT {key}, {n} AS n, {_hash_key_sql('h', n)} AS k FROM pos{cond}")
    return f"WITH pos AS (SELECT {key}, {shifted} FROM {source}) " + " UNION ALL ".join(parts)


def _token_hashes_sql(column: str) -> str:
    return f"list_transform({tokens_sql(column)}, lambda x: hash(x))"


def _compute_part(path: Path, layout: int, vocab: pa.Table, o: VocabOptions) -> tuple[pa.Table, pa.Table]:
    """Term sets (one row per rollout) and per-step term counts of one stored part.

    Each text is tokenised once (the `length` style feature is the token count of the same list), tokens are
    hashed, and n-grams are matched against the vocabulary by their 64-bit keys (`hashed_ngram_rows_sql`)."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    bound_memory(con)
    con.execute(f"CREATE VIEW rollouts AS SELECT {view_columns(layout)} FROM read_parquet({_sql_list([str(path)])})")
    con.register("vocab_arrow", vocab)
    keys = " ".join(f"WHEN {n} THEN {_hash_key_sql('th[]', n)}" for n in range(1, o.max_n + 1))
    con.execute(f"""CREATE TEMP TABLE vocab AS
        SELECT "where", term_id, CASE len(th) {keys} END AS k, hash(key_token) AS key_h
        FROM (SELECT "where", term_id, key_token, list_transform(string_split(term, ' '), lambda x: hash(x)) AS th
              FROM vocab_arrow)""")
    style = []
    for col, where, name in style_columns():
        sql = (f"CAST(len({where}_h) AS DOUBLE)" if name == "length"
               else parse_behavior(f"style:{name}").sql(where))
        style.append(f"{sql} AS {col}")
    # rid: a key unique within the run (64-bit hash of rollout id and step), so term sets of parts computed
    # separately can be read together
    con.execute(f"""CREATE TEMP TABLE r AS
        SELECT row_number() OVER () - 1 AS rn, hash(rollout_id, step) AS rid, rollout_id, step, split, condition,
               task, group_id, prompt_key, has_reasoning, {", ".join(style)}, prompt, answer_h, reasoning_h
        FROM (SELECT *, hash(coalesce(prompt, '')) AS prompt_key,
                     (reasoning IS NOT NULL AND length(trim(reasoning)) > 0) AS has_reasoning,
                     {_token_hashes_sql('answer')} AS answer_h, {_token_hashes_sql('reasoning')} AS reasoning_h
              FROM rollouts)""")
    n = con.execute("SELECT count(*) FROM r").fetchall()[0][0]
    out = []
    style_cols = ", ".join(col for col, _, _ in style_columns())
    for lo in range(0, max(n, 1), _CHUNK):
        con.execute(f"CREATE OR REPLACE TEMP TABLE c AS SELECT * FROM r WHERE rn >= {lo} AND rn < {lo + _CHUNK}")
        # candidate n-grams of each distinct prompt in the chunk, to exclude copies
        con.execute(f"""CREATE OR REPLACE TEMP TABLE pk AS
            SELECT prompt_key, {_token_hashes_sql('any_value(prompt)')} AS prompt_h FROM c GROUP BY prompt_key""")
        # an n-gram counts as copied when the prompt holds the n-gram or its key token ("the zebra" when the
        # prompt says "zebra")
        con.execute(f"""CREATE OR REPLACE TEMP TABLE pterms AS
            WITH g AS (SELECT DISTINCT prompt_key, n, k FROM ({hashed_ngram_rows_sql('pk', 'prompt_key', 'prompt_h',
                                                                                      o.max_n)}))
            SELECT DISTINCT prompt_key, "where", term_id FROM (
                SELECT g.prompt_key, v."where", v.term_id FROM g JOIN vocab v USING (k)
                UNION ALL
                SELECT g.prompt_key, v."where", v.term_id FROM g JOIN vocab v ON v.key_h = g.k WHERE g.n = 1)""")
        lists = []
        for where in WHERES:
            lists.append(f"""
                (SELECT rid, list(DISTINCT term_id ORDER BY term_id) AS {where}_terms
                 FROM ({hashed_ngram_rows_sql('c', 'rid, prompt_key', f'{where}_h', o.max_n)}) t
                 JOIN (SELECT k, term_id FROM vocab WHERE "where" = '{where}') v USING (k)
                 ANTI JOIN pterms p ON p.prompt_key = t.prompt_key AND p.term_id = v.term_id
                 GROUP BY rid) {where}_l""")
        prompt_lists = """(SELECT prompt_key, list(DISTINCT term_id ORDER BY term_id) AS prompt_terms
                           FROM pterms GROUP BY prompt_key) pl"""
        out.append(con.sql(f"""
            SELECT c.rid, rollout_id, step, split, condition, task, group_id, prompt_key, has_reasoning,
                   {style_cols},
                   coalesce(answer_terms, []::INTEGER[]) AS answer_terms,
                   coalesce(reasoning_terms, []::INTEGER[]) AS reasoning_terms,
                   coalesce(prompt_terms, []::INTEGER[]) AS prompt_terms
            FROM c LEFT JOIN {lists[0]} USING (rid) LEFT JOIN {lists[1]} USING (rid)
                   LEFT JOIN {prompt_lists} USING (prompt_key)
            ORDER BY c.rn""").to_arrow_table())
    terms = pa.concat_tables(out)
    con.register("rt", terms)
    parts = []
    for where in WHERES:
        filt = "has_reasoning" if where == "reasoning" else "TRUE"
        parts.append(f"""
            SELECT '{where}' AS "where", term_id, step, split, sum(x)::BIGINT AS x, sum(m)::BIGINT AS m FROM (
                SELECT step, split, unnest({where}_terms) AS term_id, 1 AS x, 0 AS m FROM rt WHERE {filt}
                UNION ALL
                SELECT step, split, unnest(pt) AS term_id, 0 AS x, k AS m FROM (
                    SELECT step, split, count(*) AS k, any_value(prompt_terms) AS pt FROM rt WHERE {filt}
                    GROUP BY step, split, prompt_key))
            GROUP BY ALL""")
    counts = con.sql(" UNION ALL ".join(parts)).to_arrow_table()
    con.close()
    return terms, counts


def _sql_list(items: list[str]) -> str:
    return "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in items) + "]"


def register(con: duckdb.DuckDBPyConnection, tables: Iterable[tuple[str, pa.Table]]) -> None:
    """Register derived tables as views of a connection (zero-copy)."""
    for name, table in tables:
        con.register(name, table)
