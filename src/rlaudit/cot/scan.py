"""CoT-grading scan: did a grader's logged input contain the policy's reasoning?

For every rollout and every grader in its `grader_inputs` map, the reasoning's word shingles (k consecutive
normalised tokens, see `rlaudit.cot.shingles`) are looked up in the grader input's shingles. Only *reasoning-only*
shingles count as exposure evidence:

- shingles that also occur in the rollout's answer or prompt are dropped: the grader legitimately sees those,
  and reasoning that restates the answer or quotes the question must not look like exposure;
- shingles that occur in the grader inputs of *every* rollout of the prompt group (size >= 2) are group
  context: a reference solution or rubric the grader would have seen whatever this rollout wrote, which a
  rollout may happen to echo. They are dropped, with one exception that keeps listwise graders (one input
  holding every completion of the group) visible: when at least two rollouts of a group would be exposed through
  group-invariant text found only in their own reasoning, that text counts for them.

Decision rule for one (rollout, grader) pair, with defaults in `ScanParams`:

    exposed  <=>  (matched >= min_matched  and  matched / reasoning_only >= min_containment)
                  or  longest run of consecutive matched shingles >= min_span
                  or  a run of >= min_edge_span matched shingles that starts or ends the reasoning
                  or  (matched >= min_complete  and  every reasoning-only shingle matched)

With k=5, min_matched=8 means at least 12 reasoning-only words were seen, and min_containment=0.5 that the grader
saw at least half of the reasoning; min_span=16 consecutive shingles is a verbatim passage of 20+ words anywhere,
and min_edge_span=8 a passage of 12+ words that is exactly the beginning or the end of the reasoning: what a
grader that keeps only the first or last N characters of the completion sees. A chance overlap must not only be
long but also sit flush against the reasoning's edge, which is why the edge rule can ask for less; likewise a
short reasoning seen whole (min_complete=5: all of at least 9 reasoning-only words).
Chance overlap of 12-20 word passages between texts not copied from each other is the null that copy detection
by shingling relies on: independently written text shares isolated 5-word phrases (excluded above when they come
from the prompt, answer or group context), not runs of them. Reasoning shorter than k words cannot be scanned;
such pairs are counted as not exposed.

Calibration on the run's own text: the same rule is applied to chance pairings, each rollout's reasoning against
the grader input of a rollout of another group (all rollouts for runs up to `chance_rows`, evenly spaced batches
beyond). A grader is reported only when its exposure count exceeds what the chance pairings produce (one-sided
Fisher exact test at `alpha`=0.01), so text that the reasoning shares with every grader input (a template, a
common phrase) or sentence-level coincidences cannot raise an alarm on a clean run. The price is a floor: with no
chance exposure, about 7 exposed rollouts are needed before a grader is reported.

The per-pair results are a derived table cached per run version (computed once for all steps, so latency
measurements at growing `max_step` are cheap); aggregation is DuckDB SQL over that table.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .stats import wilson_interval
from ..stats import fisher_exact_greater
from ..findings import Evidence, Finding
from ..layout import SPANS, read_columns, read_stored, to_canonical
from ..text import span_ranges
from . import kernels as _kernels
from .shingles import (SORT_KIND, SortedKeys, distinct, edge_runs, hashed_tokens, longest_runs, matching_spans,
                       scope_of, scoped, shingle_of, shingles_from_ids, span_tokens)

RESULT_SCHEMA = pa.schema([
    ("rollout_id", pa.string()), ("step", pa.int64()), ("split", pa.string()), ("condition", pa.string()),
    ("task", pa.string()), ("grader", pa.string()), ("reasoning_only", pa.int64()), ("matched", pa.int64()),
    ("containment", pa.float64()), ("longest_span", pa.int64()), ("exposed", pa.bool_()),
    ("chance", pa.bool_()),  # a chance pairing: this rollout's reasoning vs another group's grader input
])
#: RESULT_SCHEMA without rows, built once (Arrow tables are immutable): `Schema.empty_table` costs ~0.2 ms, and
#: the scan starts each batch's and each part's list of results with it (~500 calls per 1M rollouts).
EMPTY_RESULTS = RESULT_SCHEMA.empty_table()
_COLUMNS = ["rollout_id", "step", "split", "condition", "task", "group_id", "prompt", "answer", "reasoning",
            "grader_inputs"]


@dataclass(frozen=True)
class ScanParams:
    """Thresholds of the per-rollout decision (see module doc). Set through
    `AuditConfig.options["cot_grading"]` with the same names."""

    k: int = 5
    min_matched: int = 8
    min_containment: float = 0.5
    min_span: int = 16
    min_edge_span: int = 8
    min_complete: int = 5
    group_context: bool = True
    chance_rows: int = 200_000
    batch_rows: int = 16_384

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ScanParams:
        from ..errors import RlauditError

        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in options.items() if k in known}
        p = cls(**values)
        if p.k < 2 or min(p.min_matched, p.min_span, p.min_edge_span, p.min_complete) < 1 \
                or not 0 < p.min_containment <= 1:
            raise RlauditError(f"cot_grading options: need k>=2, min_matched/min_span/min_edge_span/min_complete >= 1, "
                               f"0<min_containment<=1; got {asdict(p)}")
        return p

    def cache_key(self) -> str:
        d = asdict(self)
        d.pop("batch_rows")
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def decide(self, tally: Tally) -> np.ndarray:
        """The per-rollout decision rule of the module doc."""
        return ((tally.matched >= self.min_matched) & (tally.containment >= self.min_containment)) | \
            (tally.longest >= self.min_span) | (tally.edge >= self.min_edge_span) | \
            ((tally.matched >= self.min_complete) & (tally.matched == tally.reasoning_only))


class Tally(NamedTuple):
    """Per rollout: reasoning-only shingles, how many of them the grader saw, and the longest run of seen ones."""

    reasoning_only: np.ndarray
    matched: np.ndarray
    longest: np.ndarray
    edge: np.ndarray  # longest run touching the start or the end of the reasoning

    @property
    def containment(self) -> np.ndarray:
        return np.divide(self.matched, self.reasoning_only, out=np.zeros(len(self.matched)),
                         where=self.reasoning_only > 0)


# ---------------------------------------------------------------- the per-batch kernel
def scan_batch(batch: pa.RecordBatch | pa.Table, params: ScanParams, chance: bool = False) -> pa.Table:
    """One result row per (rollout, grader) pair of the batch (see RESULT_SCHEMA).

    `chance=True` scans chance pairings instead: each rollout's reasoning against the grader input of a rollout of
    another group (see `chance_partner`), which measures how often the decision rule fires on unrelated text.
    """
    prepared = PreparedBatch.of(batch, params)
    return prepared.scan(params, chance) if prepared is not None else EMPTY_RESULTS


def scan_batch_both(batch: pa.RecordBatch | pa.Table, params: ScanParams, chance: bool) -> list[pa.Table]:
    """`scan_batch` of the batch, and with `chance` also its chance pairings, from one tokenisation: the chance
    pairing reuses the batch's shingles (reasoning, answer, prompt, grader input) and only re-pairs them."""
    prepared = PreparedBatch.of(batch, params)
    if prepared is None:
        return [EMPTY_RESULTS]
    out = [prepared.scan(params, False)]
    if chance:
        out.append(prepared.scan(params, True))
    return out


@dataclass
class PreparedBatch:
    """The shingles of one batch and what the decision needs of them apart from the grader input's owner: which
    reasoning shingles are excluded (in the answer or prompt) and how many rollouts of each group have them.
    Computed once, then paired with the grader inputs of the batch itself and of the chance pairing.

    Two exact paths answer the membership and count questions: numpy sorts the batch's scoped keys
    (`SortedKeys`) and binary-searches them; with numba (`cot.kernels.prepare` / `seen`) each prompt group's
    reasoning shingles go into a small hash table and every question is asked within its row or group, so the
    table stays in the CPU cache and nothing is sorted (`by_group`: the rows ordered by group, and where each
    group starts)."""

    batch: pa.Table
    n: int
    parent: np.ndarray  # row of each grader-input entry
    names: np.ndarray  # grader name of each entry (object)
    grader_shingles: Any  # Shingles of the grader inputs, one text per entry
    g_off: np.ndarray  # the shingles of entry e are grader_shingles[g_off[e]:g_off[e + 1]]
    reasoning: Any  # Shingles of the reasoning
    r_off: np.ndarray  # the reasoning shingles of row i are reasoning[r_off[i]:r_off[i + 1]]
    excluded: np.ndarray  # per reasoning shingle: also in the row's answer or prompt
    group_of_row: np.ndarray
    prompt_of_row: np.ndarray
    reasoning_in_group: np.ndarray | None  # per reasoning shingle: rows of its group whose reasoning has it
    rq: SortedKeys | None = None  # numpy: reasoning shingles scoped by row
    gq: SortedKeys | None = None  # numpy: reasoning shingles scoped by group (group_context only)
    by_group: tuple[np.ndarray, np.ndarray] | None = None  # numba: rows by group, group starts (and the end)

    @classmethod
    def of(cls, batch: pa.RecordBatch | pa.Table, params: ScanParams,
           scope: np.ndarray | None = None) -> PreparedBatch | None:
        """`scope` (per row): batches scanned as one (`scan_file_batches`): prompt groups do not reach across
        scopes, so each row is decided as in its own batch."""
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        batch = batch.combine_chunks()
        n = batch.num_rows
        # rebase a sliced map (its keys and items ignore slicing)
        gi = pa.concat_arrays([batch.column("grader_inputs").chunk(0)])
        offsets = np.asarray(gi.offsets.to_numpy(zero_copy_only=False), np.int64)
        offsets = offsets - offsets[0]
        parent = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        if len(parent) == 0:
            return None
        prompts = pc.dictionary_encode(pc.fill_null(batch.column("prompt").chunk(0), ""))
        prompt_of_row = prompts.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        group_of_row = _group_index(batch.column("group_id").chunk(0), n, scope)
        ascii_rows = functools.cache(lambda: _is_ascii(batch.column("completion")))  # asked once, if ever
        R, A, P, G = (shingles_from_ids(*tokens, params.k) for tokens in (
            _tokens(batch, "reasoning", ascii_rows), _tokens(batch, "answer", ascii_rows),
            hashed_tokens(prompts.dictionary),
            hashed_tokens(gi.items.cast(pa.string()))))
        names = gi.keys.cast(pa.string()).to_numpy(zero_copy_only=False).astype(object)
        r_off, g_off = _text_offsets(R, params.k), _text_offsets(G, params.k)
        common = dict(batch=batch, n=n, parent=parent, names=names, grader_shingles=G, g_off=g_off, reasoning=R,
                      r_off=r_off, group_of_row=group_of_row, prompt_of_row=prompt_of_row)
        if _kernels.use_numba():
            order = np.argsort(group_of_row, kind="stable")
            by_group = (order, _run_starts(group_of_row[order]))
            excluded, in_group = _kernels.prepare(R.keys, r_off, A.keys, _text_offsets(A, params.k), P.keys,
                                                  _text_offsets(P, params.k), prompt_of_row, *by_group)
            return cls(**common, excluded=excluded, reasoning_in_group=in_group if params.group_context else None,
                       by_group=by_group)
        rq = SortedKeys(scoped(R.keys, R.row))
        # the prompt's shingles, repeated for every row that has that prompt (prompts are shared within a group)
        p_rows, p_index = _expand(prompt_of_row, np.bincount(P.row, minlength=len(prompts.dictionary)))
        excluded = rq.member(np.concatenate([scoped(A.keys, A.row), scoped(P.keys[p_index], p_rows)]))
        gq = reasoning_in_group = None
        if params.group_context:
            gq = SortedKeys(scoped(R.keys, group_of_row[R.row]))
            r_distinct = rq.distinct()  # (row, shingle) pairs: counting them per group counts rows
            reasoning_in_group = gq.count(scoped(shingle_of(r_distinct), group_of_row[scope_of(r_distinct)]))
        return cls(**common, excluded=excluded, reasoning_in_group=reasoning_in_group, rq=rq, gq=gq)

    def scan(self, params: ScanParams, chance: bool) -> pa.Table:
        """The result rows of the batch's own pairs, or (`chance`) of its chance pairings."""
        receiver = chance_receiver(self.group_of_row, self.prompt_of_row) if chance else None
        return self._scan(params, receiver)[0]

    def scan_scoped(self, params: ScanParams, scope: np.ndarray, paired: np.ndarray) -> pa.Table:
        """For a batch of several batches (`scope`: each row's, as given to `of`; `paired`: per scope whether it
        gets chance pairings), the result rows each would give scanned alone, one after another: its own pairs
        (by grader, then row) and, where paired, its chance pairings, drawn within it as `chance_receiver` would."""
        own, own_scope = self._scan(params, None, scope)
        if not paired.any():
            return own
        receiver = np.full(self.n, -1, np.int64)
        for s, (lo, hi) in enumerate(_runs(scope)):
            if paired[s]:
                r = chance_receiver(self.group_of_row[lo:hi], self.prompt_of_row[lo:hi])
                receiver[lo:hi] = np.where(r >= 0, r + lo, -1)
        pairs, pair_scope = self._scan(params, receiver, scope)
        kind = np.concatenate([np.zeros(own.num_rows, np.int64), np.ones(pairs.num_rows, np.int64)])
        order = np.lexsort((np.arange(len(kind)), kind, np.concatenate([own_scope, pair_scope])))
        return pa.concat_tables([own, pairs]).take(pa.array(order))

    def _scan(self, params: ScanParams, receiver: np.ndarray | None, scope: np.ndarray | None = None
              ) -> tuple[pa.Table, np.ndarray]:
        """The result rows of the pairs (`receiver`: the chance pairing's, row j's input to row receiver[j]; None:
        each row's own) and, with `scope`, the rows in each scope's order (by scope, grader, then as given) with
        each one's scope."""
        parent, names = self.parent, self.names
        names_keep = np.ones(len(parent), bool)
        chance = receiver is not None
        if chance:
            names_keep = receiver[parent] >= 0
            parent = np.where(names_keep, receiver[parent], 0)
        out = [EMPTY_RESULTS]
        ranks, received = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for grader in sorted(set(names.tolist())):  # few graders: the loop is over graders, not rollouts
            entries = np.flatnonzero((names == grader) & names_keep)
            rows = parent[entries]
            seen, seen_in_group = self._seen(params, parent, entries, rows)
            counted = ~self.excluded
            if params.group_context:
                context = GroupContext(self.group_of_row, rows, self.reasoning_in_group, self.r_off,
                                       self.by_group is not None)
                tally, exposed = context.decide(params, counted, seen, seen_in_group, self.reasoning)
            else:
                tally = _tally(counted, seen, self.reasoning.row, self.r_off, self.by_group is not None)
                exposed = params.decide(tally)
            out.append(self._rows(grader, rows, tally, exposed, chance))
            ranks.append(np.full(len(rows), len(ranks) - 1))
            received.append(rows)
        table = pa.concat_tables(out)
        if scope is None:
            return table, np.zeros(0, np.int64)
        rank, rows = np.concatenate(ranks), np.concatenate(received)
        # a chance pairing stays within its scope: a row's scope is its giver's
        order = np.lexsort((np.arange(len(rows)), rank, scope[rows]))
        return table.take(pa.array(order)), scope[rows][order]

    def _seen(self, params: ScanParams, parent: np.ndarray, entries: np.ndarray,
              rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Per reasoning shingle: whether the grader input its row receives (`entries`, received by `rows`) has
        it, and (group_context) how many rows of its group receive an input that has it."""
        R, G, n = self.reasoning, self.grader_shingles, self.n
        if self.by_group is not None:
            order = np.argsort(rows, kind="stable")  # the entries each row receives, row by row
            recv_off = np.zeros(n + 1, np.int64)
            np.cumsum(np.bincount(rows, minlength=n), out=recv_off[1:])
            seen, in_group = _kernels.seen(R.keys, self.r_off, G.keys, self.g_off, recv_off, entries[order],
                                           *self.by_group)
            return seen, in_group if params.group_context else None
        is_entry = np.zeros(len(self.names), bool)
        is_entry[entries] = True
        g_mask = is_entry[G.row]
        # sorted once for both uses below
        g_sorted = np.sort(scoped(G.keys[g_mask], parent[G.row[g_mask]]), kind=SORT_KIND)
        seen = self.rq.member(g_sorted, presorted=True)
        if not params.group_context:
            return seen, None
        group = self.group_of_row
        g_distinct = distinct(g_sorted, presorted=True)  # (row, shingle) pairs: counting them per group counts rows
        return seen, self.gq.count(scoped(shingle_of(g_distinct), group[scope_of(g_distinct)]))

    def _rows(self, grader: str, rows: np.ndarray, tally: Tally, exposed: np.ndarray, chance: bool) -> pa.Table:
        b = self.batch
        if len(rows) == self.n and np.array_equal(rows, np.arange(self.n)):
            # every row in order (a batch's own pairs with one grader): its columns as they are, no take
            columns = {c: b.column(c) for c in ("rollout_id", "step", "split", "condition", "task")}
        else:
            take = pa.array(rows)
            columns = {c: b.column(c).take(take) for c in ("rollout_id", "step", "split", "condition", "task")}
        return pa.table({
            **columns, "grader": pa.array([grader] * len(rows), pa.string()),
            "reasoning_only": tally.reasoning_only[rows], "matched": tally.matched[rows],
            "containment": tally.containment[rows], "longest_span": tally.longest[rows], "exposed": exposed[rows],
            "chance": np.full(len(rows), chance),
        }, schema=RESULT_SCHEMA)


@dataclass
class GroupContext:
    """Text in the grader input of every rollout of a group is context, not this rollout's reasoning (see the
    module doc), except when the group looks listwise."""

    group_of_row: np.ndarray
    rows: np.ndarray  # rows that have this grader
    reasoning_in_group: np.ndarray  # per reasoning shingle: rows of its group whose reasoning has it
    r_off: np.ndarray  # reasoning shingles per row (offsets)
    compiled: bool  # tally with the numba kernel

    def decide(self, params: ScanParams, counted: np.ndarray, seen: np.ndarray, seen_in_group: np.ndarray,
               reasoning: Any) -> tuple[Tally, np.ndarray]:
        """`seen_in_group`: per reasoning shingle, rows of its group whose grader input has it; `reasoning`: the
        reasoning's `Shingles` (their rows, read by the numpy path alone)."""
        group = self.group_of_row
        size = np.bincount(group[self.rows], minlength=group.max() + 1)
        if self.compiled:  # both tallies in one pass, the invariant shingles decided on the way
            both = _kernels.tally_context(counted, seen, seen_in_group, self.reasoning_in_group, size[group],
                                          self.r_off)
            strict, loose = Tally(*both[:4]), Tally(*both[4:])
        else:
            r_row = reasoning.row
            own_size = size[group[r_row]]
            invariant = (own_size >= 2) & (seen_in_group >= own_size)
            strict = _tally(counted & ~invariant, seen, r_row, self.r_off, False)
            loose = _tally(counted & ~(invariant & (self.reasoning_in_group >= 2)), seen, r_row, self.r_off, False)
        exposed_strict = params.decide(strict)
        # Exposure that rests on group-invariant text counts only when it looks listwise: at least two
        # rollouts of the group are exposed through invariant text found in their own reasoning alone.
        via_invariant = params.decide(loose) & ~exposed_strict
        listwise = np.bincount(group[via_invariant], minlength=len(size)) >= 2
        use_loose = via_invariant & listwise[group]
        tally = Tally(*(np.where(use_loose, lo, st) for lo, st in zip(loose, strict)))
        return tally, exposed_strict | use_loose


def _tally(counted: np.ndarray, seen: np.ndarray, row: np.ndarray, r_off: np.ndarray, compiled: bool) -> Tally:
    if compiled:
        return Tally(*_kernels.tally(counted, seen, r_off))
    n = len(r_off) - 1
    flag, rows = seen[counted], row[counted]
    leading, trailing = edge_runs(flag, rows, n)
    return Tally(np.bincount(rows, minlength=n), np.bincount(row[counted & seen], minlength=n),
                 longest_runs(flag, rows, n), np.maximum(leading, trailing))


def _tokens(batch: pa.Table, name: str, ascii_rows: Callable[[], np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """`hashed_tokens` of the batch's canonical column `name` (reasoning or answer). A batch of a part's columns
    (`table_batches(..., spans=True)`) holds them as spans of the completion: those are tokenised where they lie
    (`span_tokens`: no cut, no copy; in a buffer that is not all ASCII, the spans of the completions that
    `ascii_rows()` calls ASCII, the others cut and lower-cased). Where some row's text was logged separately, the
    texts are cut first (`to_canonical`). The same tokens either way."""
    start, end = SPANS[name]
    if start not in batch.column_names:  # canonical columns
        return hashed_tokens(batch.column(name))
    text = batch.column(name)
    if text.null_count == len(text):  # every text is a span of its completion (or absent)
        completion = batch.column("completion")
        data, lo, hi, _ = span_ranges(completion, batch.column(start), batch.column(end))
        hashed = span_tokens(data, lo, hi, ascii_rows or (lambda: _is_ascii(completion)))
        if hashed is not None:
            return hashed
    return hashed_tokens(to_canonical(batch.select([name, "completion", start, end])).column(name))


def _is_ascii(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per text, whether it is ASCII (so is every span within it); a null text too (its spans are empty)."""
    return np.asarray(pc.fill_null(pc.string_is_ascii(texts), True).to_numpy(zero_copy_only=False), bool)


def _text_offsets(shingles: Any, k: int) -> np.ndarray:
    """Offsets of each text's shingles (texts of fewer than k tokens have none)."""
    out = np.zeros(len(shingles.n_tokens) + 1, np.int64)
    np.cumsum(np.maximum(shingles.n_tokens - k + 1, 0), out=out[1:])
    return out


def _run_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts in a sorted array, and its length at the end."""
    new = np.ones(len(sorted_values), bool)
    new[1:] = sorted_values[1:] != sorted_values[:-1]
    return np.append(np.flatnonzero(new), len(sorted_values)).astype(np.int64)


def chance_receiver(group_of_row: np.ndarray, prompt_of_row: np.ndarray) -> np.ndarray:
    """For each row j, the row i that receives j's grader input in the chance pairing (-1: none).

    Rows are ordered by group and rotated by half the batch, so a grader input goes to a rollout of another
    group; pairs that would share a group or a prompt are dropped (their text is legitimately related).
    """
    n = len(group_of_row)
    order = np.argsort(group_of_row, kind="stable")
    receiver = np.empty(n, np.int64)
    receiver[order] = np.roll(order, n // 2)
    unrelated = (group_of_row[receiver] != group_of_row) & (prompt_of_row[receiver] != prompt_of_row)
    return np.where(unrelated, receiver, -1)


def _expand(owner_of_row: np.ndarray, count_per_owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows that each own a range of items (item counts per owner, items stored owner by owner), the
    (row, item index) pairs of every row's items, without a Python loop."""
    starts = np.concatenate([[0], np.cumsum(count_per_owner)[:-1]])
    per_row = count_per_owner[owner_of_row]
    rows = np.repeat(np.arange(len(owner_of_row), dtype=np.int64), per_row)
    within = np.arange(len(rows), dtype=np.int64) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    return rows, starts[owner_of_row][rows] + within


def _group_index(group_id: pa.Array, n: int, scope: np.ndarray | None = None) -> np.ndarray:
    """Dense group index per row; rows without a group each form their own group. With `scope` (batches scanned
    as one: `PreparedBatch.of`), each scope's rows are numbered as that batch alone would number them, after the
    scopes before it: a group of one scope is never the same-named group of another, and the groups' order within
    a scope (which `chance_receiver` rotates) is the batch's own."""
    if scope is not None:
        out, base = np.empty(n, np.int64), 0
        for lo, hi in _runs(scope):
            out[lo:hi] = _group_index(group_id.slice(lo, hi - lo), hi - lo) + base
            base = int(out[lo:hi].max()) + 1
        return out
    enc = pc.dictionary_encode(group_id)
    idx = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(idx >= 0, idx, len(enc.dictionary) + np.arange(n, dtype=np.int64))


def _runs(scope: np.ndarray) -> list[tuple[int, int]]:
    """(first, end) of each run of equal values of `scope` (the rows of each batch scanned as one), in order."""
    cuts = [0, *(np.flatnonzero(np.diff(scope)) + 1).tolist(), len(scope)]
    return list(zip(cuts[:-1], cuts[1:]))


# ---------------------------------------------------------------- the run-level scan
def scan_run(con: duckdb.DuckDBPyConnection, params: ScanParams, source: str = "all_rollouts",
             extra_inputs: str | None = None, chance: Callable[[int], bool] | None = None) -> pa.Table:
    """Scan every rollout of `source` (a view or table of `con`) that has grader inputs, in Arrow batches, plus
    chance pairings on about `params.chance_rows` of them (every batch for runs up to that size, evenly spaced
    batches beyond).

    `extra_inputs`: a parquet path of captured grader inputs (rollout_id, grader, input) merged into the map.
    `chance(i)`: whether batch i gets chance pairings (default: evenly spaced batches as above).
    """
    if chance is None:
        total = con.execute(f"SELECT count(*) FROM {source} WHERE cardinality(grader_inputs) > 0").fetchall()[0][0]
        stride = max(1, -(-total // max(1, params.chance_rows)))
        chance = lambda i: i % stride == 0  # noqa: E731
    return scan_batches(iter_batches(con, params.batch_rows, source, extra_inputs), params, chance)


def scan_batches(batches: Iterable[pa.RecordBatch | pa.Table], params: ScanParams,
                 chance: Callable[[int], bool]) -> pa.Table:
    """The results of every batch, plus the chance pairings of batch i where `chance(i)`."""
    parts = [EMPTY_RESULTS]
    for i, batch in enumerate(batches):
        parts += scan_batch_both(batch, params, params.chance_rows > 0 and chance(i))
    return pa.concat_tables(parts)


def scan_file_batches(files: Iterable[tuple[Iterable[pa.Table], Callable[[int], bool]]],
                      params: ScanParams) -> pa.Table:
    """What `scan_batches` gives for each file's (batches, chance) one after another, row for row and in the same
    order, with fewer prepared batches: consecutive batches, of one file or several, are prepared as one of up to
    `params.batch_rows` rows, each keeping its prompt groups and its chance pairings to itself (`scope`,
    `PreparedBatch.scan_scoped`), so each row is decided as in its own batch. A part of many small files (TRL: a
    file per logging step) otherwise paid a batch's fixed cost per file: ~1,000 batches of ~200 rows with grader
    inputs at 1M rollouts in 1,000-row files."""
    out = [EMPTY_RESULTS]
    pending: list[pa.Table] = []
    paired: list[bool] = []
    held = 0

    def flush() -> None:
        nonlocal held
        if len(pending) == 1:
            out.extend(scan_batch_both(pending[0], params, paired[0]))
        elif pending:
            scope = np.repeat(np.arange(len(pending)), [b.num_rows for b in pending])
            prepared = PreparedBatch.of(pa.concat_tables(pending), params, scope)
            if prepared is not None:
                out.append(prepared.scan_scoped(params, scope, np.asarray(paired)))
        pending.clear()
        paired.clear()
        held = 0

    for batches, chance in files:
        for i, batch in enumerate(batches):
            if pending and held + batch.num_rows > params.batch_rows:
                flush()
            pending.append(batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch]))
            paired.append(params.chance_rows > 0 and chance(i))
            held += batch.num_rows
    flush()
    return pa.concat_tables(out)


def part_batches(path: str | Path, layout: int, rows: int) -> Iterator[pa.Table]:
    """The rows `iter_batches` selects (those with grader inputs) of one stored part, read with Arrow alone: the
    same rows in the same order and batches of `rows`, without the cost of a database query per part."""
    return table_batches(read_scan_columns(path, layout), layout, rows)


def scan_columns(layout: int) -> list[str]:
    """The stored columns of a part of `layout` that the scan reads."""
    return _COLUMNS if layout < 2 else read_columns(_COLUMNS)


def read_scan_columns(path: str | Path, layout: int) -> pa.Table:
    """The stored columns the scan needs of one part, every row (`table_batches` selects), read on the scan's
    own thread (`layout.read_stored`)."""
    return read_stored(path, scan_columns(layout))


def table_batches(table: pa.Table, layout: int, rows: int, spans: bool = False) -> Iterator[pa.Table]:
    """`part_batches` of a part's stored columns (`read_scan_columns`). With `spans` (and a part of layout 2 or
    more), the batches keep the part's columns for the reasoning and the answer (their text, the completion and
    the span columns) instead of cutting the texts out: `PreparedBatch.of` tokenises them where they lie."""
    (batches,) = file_batches(table, layout, rows, [(0, table.num_rows)], spans)
    return batches


def file_batches(table: pa.Table, layout: int, rows: int, files: list[tuple[int, int]], spans: bool = False
                 ) -> list[Iterator[pa.Table]]:
    """`table_batches` of each file's rows of a part (`files`: (first row, rows) each, in order), with the rows
    selected and their columns made once for the part: a part of 250 files of 64 rollouts (a step each) paid
    the selection's Arrow calls per file, 2 of a cold scan's 6.6 CPU s at 15,625 steps."""
    maps = table.column("grader_inputs").combine_chunks()
    entries = np.diff(np.asarray(maps.offsets.to_numpy(zero_copy_only=False), np.int64))
    # a null map has no entries: dropped, as SQL's WHERE drops cardinality(NULL) > 0
    keep = entries > 0 if maps.null_count == 0 else (entries > 0) & maps.is_valid().to_numpy(zero_copy_only=False)
    table = table.filter(pa.array(keep))
    if layout >= 2 and spans:
        table = table.select(_COLUMNS + ["completion", *SPANS["reasoning"], *SPANS["answer"]])
    else:
        table = (to_canonical(table) if layout >= 2 else table).select(_COLUMNS)
    kept = np.concatenate([[0], np.cumsum(keep)])  # kept rows before each row: a file's rows stay one range
    return [_slices(table, int(kept[lo]), int(kept[lo + n]), rows) for lo, n in files]


def _slices(table: pa.Table, lo: int, hi: int, rows: int) -> Iterator[pa.Table]:
    for start in range(lo, hi, rows):
        yield table.slice(start, min(rows, hi - start))


def iter_batches(con: duckdb.DuckDBPyConnection, rows: int, source: str = "all_rollouts",
                 extra_inputs: str | None = None, order: str | None = None) -> Iterator[pa.RecordBatch]:
    """The rows of `source` with grader inputs (merged with the captured ones of `extra_inputs`), in Arrow batches
    of `rows`; `order`: a column of `source` to batch them in the order of (else the query's, which a join may
    change)."""
    cols = ", ".join(f"r.{c}" for c in _COLUMNS if c != "grader_inputs")
    if extra_inputs:
        path = extra_inputs.replace("'", "''")
        sql = (f"SELECT {cols}, CASE WHEN c.cap IS NULL THEN r.grader_inputs "
               f"ELSE map_concat(r.grader_inputs, c.cap) END AS grader_inputs FROM {source} r LEFT JOIN "
               f"(SELECT rollout_id, map(list(grader), list(input)) AS cap FROM read_parquet('{path}') "
               f"GROUP BY rollout_id) c ON r.rollout_id = c.rollout_id "
               f"WHERE cardinality(r.grader_inputs) > 0 OR c.cap IS NOT NULL")
    else:
        sql = f"SELECT {cols}, r.grader_inputs FROM {source} r WHERE cardinality(r.grader_inputs) > 0"
    if order:
        sql += f" ORDER BY r.{order}"
    reader = con.sql(sql).to_arrow_reader(rows)
    for batch in reader:
        if batch.num_rows:
            yield batch


# ---------------------------------------------------------------- findings
def findings_from_results(con: duckdb.DuckDBPyConnection, results: pa.Table | str, run: str, params: ScanParams,
                          where: str, options: dict[str, Any], evidence_source: str = "rollouts",
                          extra_inputs: str | None = None,
                          part_rows: Callable[[list[str]], str] | None = None) -> list[Finding]:
    """One finding per grader whose exposure is above chance: at least `min_exposed` exposed rollouts (default
    1) and more than the chance pairings produce (one-sided Fisher exact test at `alpha`, default 0.01).

    With `part_rows` (part file names -> SQL of their rows in the columns of `evidence_source`), the counts and
    the exposed rows come from the per-part summaries of the results, the view `cot_summary` of `con`
    (`cot.summary`), and the evidence reads only the parts that hold its rollouts: the same findings, without
    reading every result row and every rollout of the run."""
    if part_rows is None:  # with summaries the per-pair results are not read: no views over them
        # (binding a view over a 2,000-step run's result files cost ~5-10 ms, and these were three)
        if isinstance(results, str):  # SQL source (e.g. read_parquet of cached per-part results)
            con.execute(f"CREATE OR REPLACE TEMP VIEW _cot_scan AS SELECT * FROM {results}")
        else:
            con.register("_cot_scan", results)
        con.execute(f"CREATE OR REPLACE TEMP VIEW cot_scan AS SELECT * FROM _cot_scan WHERE NOT chance AND {where}")
        con.execute(f"CREATE OR REPLACE TEMP VIEW cot_chance AS SELECT * FROM _cot_scan WHERE chance AND {where}")
    # the counts every statistic below needs, per (chance, grader, step, condition, task): one pass over the
    # per-pair results (a few hundred rows at 1M rollouts) instead of one per query
    if part_rows is None:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _cot_counts AS SELECT chance, grader, step, condition, task, count(*) AS n, "
            "sum(exposed::INT) AS exposed, min(CASE WHEN exposed THEN step END) AS first, "
            f"count(*) FILTER (WHERE reasoning_only > 0) AS scannable FROM _cot_scan WHERE {where} GROUP BY ALL")
    else:  # the same sums, from each part's sums
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _cot_counts AS SELECT chance, grader, step, condition, task, sum(n) AS n, "
            "sum(exposed) AS exposed, min(first) AS first, sum(scannable) AS scannable FROM cot_summary "
            f"WHERE kind = 0 AND {where} GROUP BY chance, grader, step, condition, task")
        con.execute("CREATE OR REPLACE TEMP VIEW _cot_exposed AS SELECT rollout_id, step, grader, TRUE AS exposed, "
                    "containment, "
                    f"matched, reasoning_only, longest_span, part FROM cot_summary WHERE kind = 1 AND {where}")
    min_exposed = int(options.get("min_exposed", 1))
    alpha = float(options.get("alpha", 0.01))
    severity = options.get("severity", "high")
    chance = {g: (int(n), int(k or 0)) for g, n, k in con.execute(
        "SELECT grader, sum(n), sum(exposed) FROM _cot_counts WHERE chance GROUP BY grader").fetchall()}
    totals = con.execute(
        "SELECT grader, sum(n) AS n, sum(exposed) AS exposed, min(first) AS first, sum(scannable) AS scannable "
        "FROM _cot_counts WHERE NOT chance GROUP BY grader ORDER BY grader").fetchall()
    found = []
    for grader, n, exposed, first_step, scannable in totals:
        exposed = int(exposed or 0)
        n0, k0 = chance.get(grader, (0, 0))
        # no chance pairs (a run whose grader inputs all come from one prompt group): nothing to calibrate against,
        # so the exact-span rule stands alone, and the finding says so instead of quoting a p-value of 0
        p_value = fisher_exact_greater([[exposed, n - exposed], [k0, n0 - k0]]) \
            if n0 else None
        if exposed < min_exposed or (p_value is not None and p_value > alpha):
            continue
        calibration = (f"Pairing reasoning with other groups' grader inputs, the same rule fires on {k0:,} of {n0:,} "
                       f"chance pairs (one-sided Fisher p={p_value:.2g}). ") if p_value is not None else (
            "No chance pairs could be formed (the grader inputs come from a single prompt group), so this count is "
            "not calibrated against chance; the matched spans are shown as evidence. ")
        lo, hi = wilson_interval(exposed, n)
        rate = exposed / n
        f = Finding(
            kind="cot_grading", run=run, severity=severity,
            title=f"Grader '{grader}' saw the policy's reasoning in {exposed:,} of {n:,} rollouts ({rate:.2%})",
            explanation=(
                f"The logged input of grader '{grader}' contains the rollout's chain-of-thought (text found only in "
                f"the reasoning, not in the prompt or answer) in {exposed:,} rollouts, first at step {first_step}. "
                f"{calibration}A grader that reads the reasoning rewards what it says, which teaches the policy to "
                "shape or hide its reasoning. Each evidence item marks the matching span in the grader input."),
            score=rate,
            fields={
                "grader": grader, "method": "scan", "exposure_rate": rate, "exposure_rate_ci": [lo, hi],
                "exposed_samples": exposed, "samples": n, "scannable_samples": int(scannable),
                "first_step": int(first_step), "chance_samples": n0, "chance_exposed": k0,
                "chance_rate": k0 / n0 if n0 else None, "p_value": p_value,
                "series": _series(con, grader), "by_condition": _breakdown(con, grader, "condition"),
                "by_task": _breakdown(con, grader, "task"),
                "thresholds": {"k": params.k, "min_matched": params.min_matched,
                               "min_containment": params.min_containment, "min_span": params.min_span,
                               "min_edge_span": params.min_edge_span, "min_complete": params.min_complete},
            },
            evidence=_evidence(con, grader, params, int(options.get("max_evidence", 5)), evidence_source,
                               extra_inputs, part_rows),
        )
        found.append(f)
    return found


def _series(con: duckdb.DuckDBPyConnection, grader: str) -> dict[str, list[Any]]:
    rows = con.execute("SELECT step, sum(n), sum(exposed) FROM _cot_counts WHERE NOT chance AND grader = ? "
                       "GROUP BY step ORDER BY step", [grader]).fetchall()
    return {"steps": [r[0] for r in rows], "samples": [r[1] for r in rows], "exposed": [int(r[2]) for r in rows],
            "exposure_rate": [r[2] / r[1] for r in rows]}


def _breakdown(con: duckdb.DuckDBPyConnection, grader: str, column: str) -> dict[str, dict[str, Any]]:
    rows = con.execute(f"SELECT coalesce({column}, 'unknown'), sum(n), sum(exposed), min(first) FROM _cot_counts "
                       "WHERE NOT chance AND grader = ? GROUP BY 1 ORDER BY 1", [grader]).fetchall()
    out = {}
    for key, n, exposed, first in rows:
        lo, hi = wilson_interval(int(exposed), n)
        out[key] = {"samples": n, "exposed_samples": int(exposed), "exposure_rate": exposed / n,
                    "exposure_rate_ci": [lo, hi], "first_step": first}
    return out


def _evidence(con: duckdb.DuckDBPyConnection, grader: str, params: ScanParams, limit: int, source: str,
              extra_inputs: str | None, part_rows: Callable[[list[str]], str] | None = None) -> list[Evidence]:
    """The first exposures in time, then the most complete ones, each with the matching spans of the input
    (from the exposed rows of the summaries and the parts holding them, with `part_rows`)."""
    exposed = "cot_scan" if part_rows is None else "_cot_exposed"
    ids = con.execute(
        f"(SELECT rollout_id FROM {exposed} WHERE grader = ? AND exposed ORDER BY step, rollout_id LIMIT ?) UNION "
        f"(SELECT rollout_id FROM {exposed} WHERE grader = ? AND exposed ORDER BY containment DESC, rollout_id "
        "LIMIT ?)", [grader, max(1, limit // 2 + limit % 2), grader, limit // 2]).fetchall()
    ids = [i[0] for i in ids]
    if not ids:
        return []
    con.register("_cot_ids", pa.table({"rollout_id": ids}))
    scanned = "cot_scan"
    if part_rows is not None:  # only the parts that hold these rollouts
        names = [r[0] for r in con.execute("SELECT DISTINCT part FROM _cot_exposed SEMI JOIN _cot_ids USING "
                                           "(rollout_id) WHERE grader = ? ORDER BY 1", [grader]).fetchall()]
        source = f"(SELECT * FROM ({part_rows(names)}) SEMI JOIN _cot_ids USING (rollout_id))"
        scanned = "_cot_exposed"
    input_expr = "r.grader_inputs[?]"
    join = ""
    if extra_inputs:
        path = extra_inputs.replace("'", "''")
        input_expr = "coalesce(r.grader_inputs[?], c.input)"
        join = (f"LEFT JOIN (SELECT rollout_id, input FROM read_parquet('{path}') WHERE grader = $g) c "
                "ON c.rollout_id = r.rollout_id")
    sql = (f"SELECT r.rollout_id, r.step, r.condition, r.prompt, r.answer, r.reasoning, {input_expr} AS seen, "
           f"s.containment, s.matched, s.reasoning_only, s.longest_span FROM {source} r "
           f"JOIN _cot_ids USING (rollout_id) JOIN {scanned} s ON s.rollout_id = r.rollout_id AND s.grader = ? "
           f"{join} ORDER BY r.step, r.rollout_id")
    if extra_inputs:
        sql = sql.replace("[?]", "[$g]").replace("s.grader = ?", "s.grader = $g")
        rows = con.execute(sql, {"g": grader}).fetchall()
    else:
        rows = con.execute(sql, [grader, grader]).fetchall()
    out = []
    for rid, step, cond, prompt, answer, reasoning, seen, containment, matched, only, longest in rows:
        seen = seen or ""
        spans = matching_spans(reasoning or "", seen, [prompt or "", answer or ""], params.k)
        start, end = spans[0] if spans else (0, 0)
        lo = max(0, start - 80)
        hi = min(len(seen), max(end, start) + 80)
        match = "exact" if reasoning and reasoning.strip() and reasoning.strip() in seen else "fuzzy"
        out.append(Evidence(
            rollout_id=rid, step=step, condition=cond, text=seen[lo:hi],
            note=(f"{matched} of {only} reasoning-only {params.k}-word shingles ({containment:.0%}) are in the "
                  f"input of '{grader}'; longest verbatim run {longest + params.k - 1 if longest else 0} words "
                  f"({match} match)"),
            data={"grader": grader, "span": [start, end], "spans": [list(s) for s in spans[:20]],
                  "text_offset": lo, "containment": containment, "match": match,
                  "grader_input_chars": len(seen)},
        ))
    return out
