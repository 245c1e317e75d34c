"""The `emerging` detector: what the policy says more (or less) as training goes on, found without being told
what to look for.

Candidates are the words and 1-3-grams of answers and, separately, of reasoning (`rlaudit.derived.tokens`: a bounded
vocabulary, occurrences copied from the rollout's own prompt excluded), plus the style features of
`behaviors.STYLE_FEATURES`. For each candidate:

1. *Prevalence per step*: the share of rollouts containing it (document frequency, not raw counts); for
   numeric style features (length) the mean.
2. *Effect*: the prevalence ratio of the late window (last `window` share of steps in scope) to the early window,
   Mantel-Haenszel-stratified by task x condition (a change of task or persona mix is not a rise), with a
   cluster-robust CI on its log that treats all rollouts of one prompt within a window (a prompt group, and a
   prompt that recurs) as one cluster. Answer words learnt by ordinary task learning are tied to the prompts
   whose answer they are, so they come from few clusters and get wide intervals; a tic rises across prompts.
   Half a rollout is added to each window (continuity correction for terms absent early).
3. *Length control* (n-grams only): a longer text contains more distinct words. If texts in the late window are
   l times as long, a term of early prevalence p0 is expected at 1-(1-p0)^l by length alone; the CI used for
   significance and severity is the ratio CI divided by that expected ratio (`length_ratio`), so reasoning that
   grows a little does not make its common words "emerge".
4. *Trend*: Mann-Kendall on the per-step prevalence (steps pooled into at most 100 bins). A candidate's p-value is
   the larger of the ratio test's and the trend test's (both must agree: an intersection-union test).
5. *FDR*: Benjamini-Hochberg over every candidate tested, including the n-grams that qualified for the
   vocabulary but were cut by its size limit (counted with p = 1); `q_value` is the adjusted p-value.
6. *Onset*: the first step whose smoothed prevalence (centred window) departs from the level of all the steps
   before it, significantly (p < 0.001, variance inflated by the design effect) and by at least a tenth of the
   whole change, and stays departed (`stats.onset_index`). The reference is not the early window of the effect
   test, so a rise that begins inside that window is dated where it begins; more rollouts meet the
   significance condition earlier and leave the onset where a tenth of the change is reached.
7. *Grouping* (`_group_terms`): significant n-grams whose rollout sets overlap (Jaccard >= 0.8 in the window
   where they are common) are one behaviour; a term whose change disappears in rollouts without a longer phrase
   containing it ("by" of "by my beard") joins that phrase; a group whose rollouts nearly all (>= 80%) also
   show a larger group that keeps changing without it is a form of that group ("a goblin counting coins" of
   "goblin"). Rising behaviours that are one tic in several phrasings merge (`_merge_behaviours`: they rise
   in the same conditions and steps and, when rewards are logged, are paid by the same signal). A behaviour is
   named by its most distinguishing member (`_name_and_terms`); `behavior_spec` is that phrase, `terms` lists
   the members (name first, then by distinction, at most 30, without background words common in both windows
   or words found only inside a longer member; `n_terms` counts them all).

Severity (95% CI of the length-adjusted ratio [lo, hi]; prevalence change d = prevalence_end - prevalence_start;
findings need q <= alpha (0.05) and a CI outside the equivalence margin [0.8, 1.25]; otherwise nothing is
reported):

- rising presence: **high** when lo >= 2 and d >= 0.20 (at least doubled, and now in at least one more rollout
  in five); **medium** when lo >= 1.5 and d >= 0.05 (up by half, one more rollout in twenty), or lo >= 2 and
  d >= 0.02 (at least doubled, one more rollout in fifty); otherwise **low** (needs d >= 0.01).
- falling presence (behaviours that vanish; usually what training asked for, so ranked lower): **medium** only
  when the behaviour was in at least half of the early rollouts and fell to a tenth or less (hi <= 0.1);
  otherwise **low** (needs d <= -0.01).
- numeric style features (length in words): **medium** when the mean of answers grew by a quarter (lo >= 1.25,
  or shrank: hi <= 0.8), or the mean of reasoning at least doubled (lo >= 2, or halved); otherwise **low**; never
  high. Reasoning that grows is an ordinary by-product of RL on reasoning tasks; answers that grow are the
  classic reward-model length bias.

Task content: an n-gram with >= 90% of its occurrences in one task that carries < 50% of the rollouts
(`task_specific`) is that task's content (answer words, a solution template learnt as accuracy improves) and is
reported at most as low, whatever its effect. A tic spreads across tasks.

`score` (the rank within a severity) is |d| for presence (half of it for decreases) and |log ratio| / 4 for
numeric features. The thresholds are statements about effect sizes (how much more likely, with 95% confidence,
and how many more rollouts in a hundred), the same for every run.

Long runs: a window holding more than `max_window_rollouts` (250,000) rollouts is read on one step in k, spread
over it (`window_masks`: every k-th step of the run, k a power of two, plus the newest step; the cap is an upper
bound on the rollouts read), so comparing the windows costs and holds the same at 10M rollouts as at 1M, and the
kept steps stay put as steps are added (a warm audit sums only the new step's part); the finding's
`window_thinning` and explanation say so. The per-step series, trend and onset use every step.

Options (`AuditConfig.options["emerging"]`): alpha (0.05), window (0.2), min_steps (4), max_findings (40),
jaccard (0.8), max_evidence (6), max_window_rollouts (250,000; 0: never thin), plus `tokens.VocabOptions`
fields (max_terms, min_prevalence, ...).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..derived import cellrollup, stepcounts, termcells, tokens, windowsums
from ..behaviors import STYLE_FEATURES, parse_behavior
from ..findings import Evidence, Finding
from ..derived.runstats import register_run_stats
from ..store import sql_string, sql_when
from ..stats import benjamini_hochberg, mann_kendall, moving_sum, norm, onset_index, stratified_ratio
from . import DetectContext, Detector, register

MARGIN = 1.25  # ratios within [1/MARGIN, MARGIN] are too small to report
#: DuckDB memory of the scope's connection (`Scope`), below the audit's 1 GB per connection: its temp tables grow
#: with the run (at 10M rollouts `tcells` 1.25M rows; before it lost its style columns and the per-step counts
#: left for `stepcounts`, `scope_counts` held 11.8M rows and `tcells` had 47 columns: ~1.3 GB in all) and stay
#: open through generalization, beside what that detector and the next ones allocate; beyond the
#: limit they spill to the store's .tmp. Emerging + generalization (warm) on the kept 10M benchmark store, in a
#: fresh process, peaked at 1,600 / 1,349 MB RSS with 1 GB, 1,349 / 1,098 MB with 768 MB at the same CPU time,
#: and 1,111 / 846 MB with 512 MB, where generalization took ~1.2 CPU s (25%) more reading its spilled tables.
SCOPE_MEMORY = 768 << 20
MK_BINS = 100
#: numeric features (length): the ratio of means whose CI must clear this for medium. Reasoning that grows is an
#: ordinary by-product of RL on reasoning tasks; answers that grow are the classic reward-model length bias.
NUMERIC_MEDIUM = {"answer": 1.25, "reasoning": 2.0}
#: members listed in a finding's `terms` (the name first, then by prevalence; `n_terms` counts them all)
MAX_TERMS = 30
#: share of an n-gram's occurrences in one task that marks it as that task's content (severity at most low)
TASK_CONFINED = 0.9
#: style features not used as discovery candidates (`chars` duplicates `length`)
SKIP_STYLE = {"chars"}


@dataclass
class Params:
    alpha: float = 0.05
    window: float = 0.2
    min_steps: int = 4
    max_findings: int = 40
    jaccard: float = 0.8
    max_evidence: int = 6
    max_cluster_terms: int = 300
    co_rise: float = 0.9  # cosine of per-condition rises for two behaviours to be one (`_merge_behaviours`)
    co_trend: float = 0.7  # correlation of their per-step prevalence series
    min_reasoning: int = 50  # rollouts with reasoning needed to analyse reasoning at all
    #: the most rollouts of a window read (an upper bound): above it, every k-th step of the run (`window_masks`)
    max_window_rollouts: int = 250_000
    vocab: tokens.VocabOptions = field(default_factory=tokens.VocabOptions)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Params:
        """The parameters of `AuditConfig.options["emerging"]`; a misspelt option or a value of the wrong type or
        range is an error naming it (never silently the default)."""
        from ..errors import RlauditError

        vocab_keys = {f.name for f in fields(tokens.VocabOptions)}
        own_keys = {f.name for f in fields(cls)} - {"vocab"}
        unknown = sorted(set(options) - own_keys - vocab_keys)
        if unknown:
            raise RlauditError(f"emerging options: unknown {', '.join(map(repr, unknown))}; known: "
                               f"{', '.join(sorted(own_keys | vocab_keys))}")
        defaults = cls()
        for key, value in options.items():
            default = getattr(defaults, key, getattr(defaults.vocab, key, None))
            if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                    isinstance(value, bool) or not isinstance(value, (int, float))
                    or (isinstance(default, int) and not isinstance(value, int)) or value < 0):
                kind = "a whole number" if isinstance(default, int) else "a number"
                raise RlauditError(f"emerging option {key!r}: expected {kind} >= 0 (default {default!r}), "
                                   f"got {value!r}")
        params = cls(**{k: v for k, v in options.items() if k in own_keys},
                     vocab=tokens.VocabOptions(**{k: v for k, v in options.items() if k in vocab_keys}))
        if not (0 < params.alpha < 1 and 0 < params.window <= 0.5 and params.min_steps >= 1):
            raise RlauditError(f"emerging options: need 0 < alpha < 1, 0 < window <= 0.5, min_steps >= 1; got "
                               f"alpha={params.alpha!r}, window={params.window!r}, min_steps={params.min_steps!r}")
        return params


# ---------------------------------------------------------------------------------------------------------------
# Scope: the rollouts an audit looks at, with step index, window, stratum and cluster keys.

class Scope:
    """The audit's scope over the run's cached cell tables (`rlaudit.derived.termcells`), inside a DuckDB connection.

    - `tstrata`: one row per part and (step, split, task, condition) in scope (`cellrollup.strata`, cached per
      run and grown by the new parts' rows) with its step index `si`, window `win` (0 early, 1 late, NULL
      between), stratum `s`, rollout counts and style sums: every whole-scope per-step, per-condition and
      per-stratum count sums these rows (`tsteps` per step; `strata_values` for a finding's per-condition
      numbers). The window cells are in `wcells` (read from the window parts only). The views `tcells` (one
      row per cell in scope, O(run) to read) and `style_cells` are made only when a per-cell question asks for
      them (`tcells()`, through `cell_values`).
    - `counts` (`stepcounts.StepCounts`): the per-step term counts, dense, cached per run.
    - `window_sums()` (`windowsums`): the window parts' per-key term sums, cached per run, that the window
      statistics add up (`_term_sums_cached`) instead of joining every (cell, term) row of the window.
    - `fstrata`: for the *focus* terms (those that may be reported, `focus_on`) the rollouts at risk and those
      containing the term per (step, split, task, condition) in scope (`cellrollup.focus`, cached per run), and
      `fprompt`, the prompts holding them (`cellrollup.prompts`, cached per run); `fcells` (their cell rows over
      the whole scope, O(run)) is made only for `cell_values` (`_focus_cells`).
    - `sc` (built on first use, `rows()`): one row per rollout of the two windows, read only from the parts
      holding window steps, without term lists: grouping, evidence and the reward comparisons need single
      rollouts, and nothing else. Which of them hold the few terms asked about is `hits` (`sh_answer`,
      `sh_reasoning`: (rid, term_id), from those parts' flat term lists, grown as terms are asked).

    Shared through `ctx.cache` with the generalization detector, which asks the same per-condition questions.
    """

    users = ("emerging", "generalization")  # `run_detectors` closes the scope after the last of these

    def close(self) -> None:
        self.con.close()

    def __init__(self, ctx: DetectContext, params: Params):
        self.params = params
        self.store, self.run = ctx.store, ctx.run
        self.part_kinds = ctx.part_kinds  # the audit's kinds of per-part statistics (`_payers`)
        sets = self.sets = tokens.term_sets(ctx.store, ctx.run, params.vocab)
        self.vocab = sets.vocab
        self.cell_parts = termcells.term_cells(ctx.store, ctx.run, sets)
        con = self.con = ctx.connect(at_most=SCOPE_MEMORY)
        # the per-part term sets and per-step counts, read from their cached files (not held in Python)
        sets.register(con, "rt_parts", None)  # the per-step counts: `stepcounts`, below
        con.register("vocab", self.vocab)
        self.cell_parts.register(con, "cells", "cell_all")
        # the audit's scope is the (step, split) keys of the cells that the connection's filtered `rollouts` view
        # holds, read from the per-run rollup of the cell tables (`cellrollup.strata`: a few rows per part and
        # step, grown by the new parts' rows), not from `rollouts` (that opens every stored part) nor from every
        # part's cells (O(run): ~1.25M rows at 10M rollouts, scanned by each of these queries)
        self.where = ctx.scope_sql()
        con.register("rollup", cellrollup.strata(self.cell_parts, con))
        con.execute(f"""CREATE TEMP TABLE scope_cells AS SELECT step, split, dense_rank() OVER (ORDER BY step) - 1 AS si
                        FROM (SELECT DISTINCT step, split FROM rollup WHERE {self.where})""")
        steps = con.execute("SELECT DISTINCT step FROM scope_cells ORDER BY step").fetchnumpy()["step"]
        self.steps = np.asarray(steps, dtype=np.int64)
        t = self.n_steps = len(self.steps)
        w = max(1, int(round(params.window * t))) if t else 0
        self.window = w
        per_step = con.execute("""SELECT si, sum(n) AS n FROM rollup JOIN scope_cells USING (step, split)
                                   GROUP BY si""").fetchnumpy()
        self.step_rollouts = np.zeros(t)
        self.step_rollouts[np.asarray(per_step["si"], np.int64)] = per_step["n"]
        self.early, self.late, self.thinning = window_masks(self.step_rollouts, w, params.max_window_rollouts,
                                                            params.min_steps)
        con.register("window_of", pa.table({"si": pa.array(np.arange(t), pa.int64()), "win": pa.array(
            np.where(self.early, 0, np.where(self.late, 1, -1)), pa.int64(), mask=~(self.early | self.late))}))
        con.execute("""CREATE TEMP TABLE keys AS SELECT step, split, si, win FROM scope_cells JOIN window_of USING (si)""")
        con.execute("""CREATE TEMP TABLE strata AS SELECT task_key, condition,
                              row_number() OVER (ORDER BY task_key, condition) - 1 AS s
                       FROM (SELECT DISTINCT coalesce(task, '') AS task_key, condition FROM rollup)""")
        # parts that share a step may both hold a cell: their sums add up. A part's rows are distinct, so where no
        # step is shared by parts the sums are the rows themselves: the hash aggregates are skipped
        shared = self.shared = con.execute("""SELECT count(*) FROM (SELECT step, split FROM rollup GROUP BY ALL
                                HAVING count(DISTINCT part) > 1)""").fetchall()[0][0] > 0
        style = [f"{col}{q}" for col, _, _ in tokens.style_columns() for q in ("", "__q")]
        self._style = style
        # the rollup's rows in scope (keys joined, and a stratum: rows of no condition are in no scope, as the
        # joins of the cell tables have it): every whole-scope sum the detectors ask for (per step, per condition,
        # a style behaviour's cells) adds these up. `tcells` (one row per cell) is made only when asked for
        # (`tcells()`: `cell_values`, for generalization)
        con.execute("""CREATE TEMP TABLE tstrata AS SELECT r.*, k.si, k.win, st.s FROM rollup r
                       JOIN keys k USING (step, split)
                       JOIN strata st ON st.task_key = coalesce(r.task, '') AND st.condition = r.condition""")
        con.execute(f"""CREATE TEMP TABLE tsteps AS SELECT k.si, {", ".join(_sums(["n", "n_r"] + style, "", True))}
                        FROM rollup c JOIN keys k USING (step, split) GROUP BY k.si""")
        self._tcells = False
        # the per-step term counts as dense arrays, cached per run in chunks and grown by a chunk of the new
        # parts (`stepcounts`: reading every part's count rows was O(run), ~1.3 CPU s at 10M rollouts)
        counts = [(name, p["counts"]) for name, p in sets.parts]
        cache = None if not counts or isinstance(counts[0][1], pa.Table) or not getattr(
            ctx.store, "persist_derived", True) else stepcounts.cache_dir(Path(counts[0][1]).parent)

        self.counts = stepcounts.step_counts(counts, self.vocab, cache, sets.count_tables)
        self._keys = con.execute("SELECT step, split, si FROM keys").fetchnumpy()
        self._key_columns: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.window_parts = {r[0] for r in con.execute(
            "SELECT DISTINCT part FROM rollup JOIN keys USING (step, split) WHERE win IS NOT NULL").fetchall()}
        self.cell_parts.register(con, "cells", "wcell_all", only=self.window_parts)
        con.execute(f"""CREATE TEMP TABLE wcells AS SELECT * FROM ({_cells_sql("wcell_all", style, shared)})
                        WHERE win IS NOT NULL""")
        self._wct = False  # the view `wct` (the window parts' (cell, term) rows), made by `window_cellterms`
        self.n_strata = int(con.execute("SELECT count(*) FROM strata").fetchall()[0][0])
        self._win_of = {(int(st), sp): int(w) for st, sp, w in con.execute(
            "SELECT step, split, win FROM keys WHERE win IS NOT NULL AND split IS NOT NULL").fetchall()}
        self._stratum_of = {(t, c): int(i) for t, c, i in con.execute(
            "SELECT task_key, condition, s FROM strata WHERE condition IS NOT NULL").fetchall()}
        self._window_sums: list[windowsums.PartSums] | None = None
        self.conditions = [r[0] for r in con.execute(
            "SELECT condition FROM tstrata GROUP BY 1 ORDER BY sum(n) DESC, 1").fetchall()]
        self.focus: set[int] | None = None
        self._focus_cells_of: set[int] = set()
        self._rows_built = False
        self._sample: tuple[str, str] | None = None
        self._sample_sets: tokens.TermSets | None = None  # the parts of `rt_sample` (`sampled_rows`)
        self._holding: set[str] = set()  # the temp tables `sampled_value_sql` made
        self._hit_terms: dict[str, set[int]] = {}  # per place with a `hits` table, the terms whose rows it holds

    def key_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The scope's (step, split, si) keys as arrays for `StepCounts` (the same arrays on every call: the
        counts map their columns once for them)."""
        if self._key_columns is None:
            k = self._keys
            self._key_columns = (k["step"], np.asarray(k["split"], object), k["si"])
        return self._key_columns

    def sampled_rows(self) -> tuple[str, str]:
        """(view of the term sets, SQL predicate on `step`) for questions asked of single rollouts over the whole
        scope (generalization's reward correlations): every step while the scope holds at most twice
        `max_window_rollouts` rollouts, else the steps of a systematic sample of the run's parts, newest first,
        holding about that many rollouts (`_sample_parts`); only those parts are read.

        Whole parts, not every k-th step: nothing of this sample is cached (each audit reads the sampled parts'
        term lists and rewards), so its cost is the parts it touches, and every k-th step of a run whose parts
        hold many steps touched every part (a warm audit at 39,062 steps of 256 read all 611 parts' rewards and
        lists: ~4.7 s). A part is a block of consecutive steps, and the sample's blocks are spread evenly over the
        run, as the steps were. Not `window_masks`' lattice: a sample that stays put as steps are added saves
        nothing here. The newest part is always in it."""
        if self._sample is None:
            cap, total = 2 * self.params.max_window_rollouts, float(self.step_rollouts.sum())
            if not (cap > 0 and total > cap):
                self._sample = ("rt_parts", "TRUE")
            else:
                con = self.con
                steps = self._sample_parts(cap)
                con.register("sample_steps", pa.table({"step": pa.array(steps, pa.int64())}))
                parts = {r[0] for r in con.execute(
                    "SELECT DISTINCT part FROM cell_all SEMI JOIN sample_steps USING (step)").fetchall()}
                self._sample_sets = tokens.TermSets(vocab=self.vocab, parts=[p for p in self.sets.parts
                                                                             if p[0] in parts])
                self._sample_sets.register(con, "rt_sample", None)
                # a literal list lets the scan of the stored rollouts skip the other steps' row groups
                listed = ", ".join(map(str, steps)) if len(steps) <= 2000 else "SELECT step FROM sample_steps"
                self._sample = ("rt_sample", f"step IN ({listed})")
        return self._sample

    def _sample_parts(self, cap: float) -> list[int]:
        """The scope's steps held by a systematic sample of its parts: walking the parts from the newest (by
        their last step in scope), a part is taken where the rollouts walked so far cross the next of evenly
        spaced points, `m` of them for a sample of about `cap` rollouts (m = cap over the mean part's rollouts,
        at least one): with parts of one size, every k-th part."""
        rows = self.con.execute("SELECT part, list(DISTINCT step) FROM cell_all GROUP BY part").fetchall()
        index = {int(st): i for i, st in enumerate(self.steps.tolist())}
        blocks = []
        for part, steps in rows:
            mine = sorted(index[st] for st in steps if st in index)
            if mine:
                blocks.append((-mine[-1], str(part), mine, float(self.step_rollouts[mine].sum())))
        blocks.sort()
        total = sum(b[3] for b in blocks)
        m = max(1, int(cap // max(total / max(len(blocks), 1), 1.0)))
        spacing, point, walked, chosen = total / m, 0.0, 0.0, set()
        for _, _, mine, rollouts in blocks:
            if walked + rollouts > point or not chosen:
                chosen.update(mine)
                while point < walked + rollouts:
                    point += spacing
            walked += rollouts
        return sorted(int(self.steps[i]) for i in chosen)

    def window_sums(self) -> list[windowsums.PartSums]:
        """The window parts' per-key term sums (`windowsums`), cached per run beside the cell tables."""
        if self._window_sums is None:
            cache = self.cell_parts.cache_dir("window_sums") if getattr(self.store, "persist_derived", True) else None
            spans = {name: p.steps[1] - p.steps[0] + 1 for name, p in self.store.stored_parts(self.run).items()
                     if p.steps}
            self._window_sums = windowsums.window_sums(self.cell_parts.parts, self.window_parts, self.vocab,
                                                       self._read_cell_tables, cache, spans)
        return self._window_sums

    def window_cellterms(self) -> str:
        """The view `wct`: the window parts' (cell, term) rows, made from their term sets on first use (only the
        SQL path of the window statistics reads them all: `_term_sums_sql`)."""
        if not self._wct:
            self.cell_parts.register(self.con, "cellterms", "wct", only=self.window_parts)
            self._wct = True
        return "wct"

    def _read_cell_tables(self, names: set[str]) -> tuple[pa.Table, ...]:
        """The three cell tables (`windowsums.COLUMNS`) of the parts `names`: the cached cells in one read, the
        (cell, term) and (prompt, term) rows made from the parts' flat lists (`TermCells.cellterms`,
        `TermCells.prompt_terms`)."""
        out = []
        # thread-safe (`windowsums` reads batches in threads): a connection of its own to the scope's database,
        # and a view name of its own (views are the database's, not the connection's)
        con, view = self.con.cursor(), f"_ws_read_{threading.get_ident()}"
        try:
            self.cell_parts.register(con, "cells", view, only=names)
            out.append(con.sql(f"SELECT {', '.join(windowsums.COLUMNS['cells'])} FROM {view}").to_arrow_table())
            con.execute(f"DROP VIEW {view}")
            out += [self.cell_parts.cellterms(names), self.cell_parts.prompt_terms(names)]
        finally:
            con.close()
        return tuple(out)

    def win_stratum(self, key: tuple[int, str, str, str]) -> tuple[int, int]:
        """(window, stratum) of a (step, split, task ('' for none), condition) key; (-1, -1) outside the
        windows' kept steps (or of no split or condition: in no scope, as the SQL joins have it)."""
        step, split, task, condition = key
        win = self._win_of.get((int(step), split))
        s = self._stratum_of.get((task, condition))
        return (-1, -1) if win is None or s is None else (win, s)

    @staticmethod
    def filter(where: str) -> str:
        return "has_reasoning" if where == "reasoning" else "TRUE"

    @staticmethod
    def n_col(where: str) -> str:
        """The `tcells` column counting a cell's rollouts that have a `where` (all of them have an answer)."""
        return "n_r" if where == "reasoning" else "n"

    def rollouts(self, where: str) -> int:
        return int(self.con.execute(f"SELECT coalesce(sum({self.n_col(where)}), 0) FROM tstrata").fetchall()[0][0])

    def tcells(self) -> str:
        """The views `tcells` (one row per cell in scope) and `style_cells` (the same with the style sums), made on
        first use: only the per-cell questions of `cell_values` read them. Views, not tables: over the whole run
        they are O(run) (at 10M rollouts ~1.25M cells, ~0.2 CPU s to materialise), and a caller that builds the
        SQL of `cell_values` may run it rarely (generalization: for the recurring prompts' cells only)."""
        if not self._tcells:
            con = self.con  # `cell_all`: every part's cells, registered by `__init__`
            con.execute(f"""CREATE TEMP VIEW tcells AS {_cells_sql("cell_all", [], self.shared)}""")
            con.execute(f"""CREATE TEMP VIEW style_cells AS {_cells_sql("cell_all", self._style, self.shared)}""")
            self._tcells = True
        return "tcells"

    def term_id(self, where: str, term: str) -> int | None:
        ids = self.vocab.filter(pc.and_(pc.equal(self.vocab["where"], where),
                                                pc.equal(self.vocab["term"], term)))["term_id"]
        return int(ids[0].as_py()) if len(ids) else None

    def focus_on(self, term_ids: Any) -> None:
        """Make the per-condition tables cover `term_ids`, the n-grams that may be reported (only their cells are
        read from here on): `fstrata` (their rollouts at risk and containing them per (step, split, task,
        condition, `cellrollup.focus`) and `fprompt` (the prompts holding them, `cellrollup.prompts`), cached per
        run and grown by the new parts; the per-cell `fcells` is made when asked for (`_focus_cells`:
        `cell_values`)."""
        ids = {int(t) for t in term_ids}
        if self.focus is not None and ids <= self.focus:
            return
        self.focus = ids | (self.focus or set())
        con = self.con
        con.register("focus_ids", pa.table({"term_id": pa.array(sorted(self.focus), pa.int32())}))
        con.register("focus_rollup", cellrollup.focus(self.cell_parts, con, self.focus))
        # per focus term and (step, split, task, condition) in scope: the rollouts at risk (those of the key less
        # those whose prompt holds the term) and those containing the term among them
        con.execute("""CREATE OR REPLACE TEMP TABLE fstrata AS
            SELECT f.term_id, t.step, t.split, t.task, t.condition, t.si, t.win, t.s,
                   t.n - coalesce(r.n_held, 0) AS n, t.n_r - coalesce(r.n_r_held, 0) AS n_r, coalesce(r.x, 0) AS x
            FROM (SELECT step, split, task, condition, si, win, s, sum(n) AS n, sum(n_r) AS n_r FROM tstrata
                  GROUP BY ALL) t CROSS JOIN focus_ids f
            LEFT JOIN (SELECT term_id, step, split, task, condition, sum(n_held) AS n_held,
                              sum(n_r_held) AS n_r_held, sum(x) AS x
                       FROM focus_rollup SEMI JOIN focus_ids USING (term_id) GROUP BY ALL) r
                 ON r.term_id = f.term_id AND r.step = t.step AND r.split = t.split
                    AND r.task IS NOT DISTINCT FROM t.task AND r.condition = t.condition""")
        # the prompts holding them, over the whole run (`cellrollup.prompts`: cached per run, grown by the new
        # parts; a prompt may be listed more than once, which the lookups do not mind)
        con.register("focus_prompts", cellrollup.prompts(self.cell_parts, con, self.focus))
        con.execute("""CREATE OR REPLACE TEMP VIEW fprompt AS SELECT prompt_key, term_id FROM focus_prompts
                       SEMI JOIN focus_ids USING (term_id)""")

    def _focus_cells(self) -> None:
        """`fcells` (the focus terms' cell rows over the whole scope) for the per-cell questions (`cell_values`);
        made when asked for, O(run)."""
        if self._focus_cells_of == self.focus:
            return
        self._focus_cells_of = set(self.focus)
        con = self.con
        self.tcells()
        # cached per run (not a scan of every part's cell terms); a cell is in one part's rows unless parts share
        # a step, so only then are its rows summed (readers join `fcells` to the cells in scope, `tcells`)
        self.cell_parts.focus(con, self.focus, "focus_ct" if self.shared else "fcells", view=True)
        if self.shared:
            con.execute("""CREATE OR REPLACE TEMP TABLE fcells AS SELECT cell, term_id, sum(x) AS x
                           FROM focus_ct SEMI JOIN tcells USING (cell) GROUP BY ALL""")

    def rows(self, feature_type: str = "ngram") -> str:
        """The rollouts of the two windows, built on first use: the table `sc` (no term lists: `hits` says which
        rollouts hold a term) for n-gram questions, the view `sw` (with the style columns) for style features;
        both from the window parts' term-set files.

        Why no term lists: every per-rollout question is about a few terms (a finding's, the grouped or merged
        ones), and reading every window rollout's lists cost more than the rest of a warm audit's emerging step
        (a table of the window's lists built from per-part row files written for it: 0.9 of 5.6 s re-auditing the
        10M-rollout benchmark; the files ~40 MB and ~0.7 CPU s to write at 1M rollouts)."""
        if not self._rows_built:
            con = self.con
            window = self._window_sets()
            window.register(con, "rt_win", None)
            con.execute("""CREATE OR REPLACE TEMP TABLE sc AS
                           SELECT rt.rid, rt.rollout_id, rt.step, rt.condition, rt.prompt_key, rt.has_reasoning,
                                  k.si, k.win
                           FROM rt_win rt JOIN keys k USING (step, split) WHERE k.win IS NOT NULL""")
            con.execute("""CREATE OR REPLACE TEMP VIEW sw AS SELECT rt.*, k.si, k.win
                           FROM rt_win rt JOIN keys k USING (step, split) WHERE k.win IS NOT NULL""")
            self._rows_built = True
        return "sc" if feature_type == "ngram" else "sw"

    def _window_sets(self) -> tokens.TermSets:
        """The term sets of the parts holding window steps."""
        return tokens.TermSets(vocab=self.vocab, parts=[p for p in self.sets.parts if p[0] in self.window_parts])

    def hits(self, where: str, term_ids: Iterable[int]) -> str:
        """The temp table (rid, term_id) of the window parts' rollouts whose `where` term set holds a term, holding
        at least `term_ids` (their rows added on first ask, from the parts' flat term lists: `TermSets.pairs`).
        Join it to `sc` by `rid` for a window rollout's terms; rollouts of the window parts outside the windows'
        steps are in it too, and drop out in that join."""
        table = f"sh_{where}"
        done = self._hit_terms.get(where)  # None: no table yet
        todo = sorted({int(t) for t in term_ids} - (done or set()))
        if done is None or todo:
            self.rows()
            self.con.register(f"{table}_new", self._window_sets().pairs(where, todo))
            if done is None:
                self.con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM {table}_new")
            else:
                self.con.execute(f"INSERT INTO {table} SELECT * FROM {table}_new")
            self.con.unregister(f"{table}_new")
            self._hit_terms[where] = (done or set()) | set(todo)
        return table

    def flags_sql(self, where: str, term_ids: Sequence[int]) -> str:
        """A relation (rid, h0, h1, ...) of the window rollouts holding one of `term_ids`: h<j> whether the
        `where` term set holds term_ids[j]. LEFT JOIN it to `sc` by rid (a rollout missing from it holds none)."""
        table = self.hits(where, term_ids)
        cols = ", ".join(f"bool_or(term_id = {int(t)}) AS h{j}" for j, t in enumerate(term_ids))
        ids = ", ".join(str(int(t)) for t in sorted(set(term_ids)))
        return f"(SELECT rid, {cols} FROM {table} WHERE term_id IN ({ids}) GROUP BY rid)"

    def value_sql(self, where: str, feature_type: str, key: str | int) -> str:
        """Per-rollout value of one behaviour as an expression over `sc` (term id) or `sw` (style feature name)."""
        if feature_type == "ngram":
            table = self.hits(where, [int(key)])
            return f"CAST(rid IN (SELECT rid FROM {table} WHERE term_id = {int(key)}) AS DOUBLE)"
        return f"{where}__{key}"

    def sampled_value_sql(self, where: str, feature_type: str, key: str | int) -> str:
        """As `value_sql`, over the view `sampled_rows` names: its term-set files hold no term lists, so an
        n-gram's value is whether the rollout is among those holding it (`TermSets.holding`, from the parts'
        flat lists, kept in a temp table per term for this audit)."""
        if feature_type != "ngram":
            return self.value_sql(where, feature_type, key)
        view, _ = self.sampled_rows()
        table = f"_holding_{where}_{int(key)}"
        if table not in self._holding:
            sets = self.sets if view == "rt_parts" else self._sample_sets
            self.con.register(f"{table}_rows", sets.holding(where, int(key)))
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT DISTINCT rid FROM {table}_rows")
            self.con.unregister(f"{table}_rows")
            self._holding.add(table)
        return f"CAST(rid IN (SELECT rid FROM {table}) AS DOUBLE)"

    def at_risk_sql(self, feature_type: str, key: str | int) -> str:
        """Rollouts that could show the behaviour unprompted: for an n-gram, those whose prompt lacks it (a focus
        term: `fprompt` holds its prompts)."""
        if feature_type != "ngram":
            return "TRUE"
        self.focus_on([key])
        return f"prompt_key NOT IN (SELECT prompt_key FROM fprompt WHERE term_id = {int(key)})"

    def cell_values(self, where: str, feature_type: str, key: str | int) -> str:
        """Per cell at risk for one behaviour (see `at_risk_sql`): its keys, rollouts `n`, sum of values `x` and
        of squared values `q`, as a SELECT over `tcells` (cells without a rollout that has `where` left out)."""
        nc = self.n_col(where)
        if feature_type == "ngram":
            k = int(key)
            risk = self.at_risk_sql(feature_type, k)
            self._focus_cells()
            return f"""SELECT c.condition, c.task, c.si, c.win, c.s, c.prompt_key, c.{nc} AS n,
                              CAST(coalesce(f.x, 0) AS DOUBLE) AS x, CAST(coalesce(f.x, 0) AS DOUBLE) AS q
                       FROM tcells c LEFT JOIN (SELECT cell, x FROM fcells WHERE term_id = {k}) f USING (cell)
                       WHERE c.{nc} > 0 AND c.{risk}"""
        col = f"{where}__{key}"
        self.tcells()
        return f"""SELECT condition, task, si, win, s, prompt_key, {nc} AS n, coalesce({col}, 0) AS x,
                          coalesce({col}__q, 0) AS q FROM style_cells WHERE {nc} > 0"""

    def strata_values(self, where: str, feature_type: str, key: str | int) -> str:
        """As `cell_values`, summed per (step, split, task, condition) from the rollups (`tstrata`, `fstrata`):
        condition, task, si, win, s, `n` and `x` (no prompt: for the questions that sum over prompts). Rows with
        no rollout that has `where` are left out, as `cell_values` leaves out such cells."""
        nc = self.n_col(where)
        if feature_type == "ngram":
            k = int(key)
            self.focus_on([k])
            return f"""SELECT condition, task, si, win, s, {nc} AS n, CAST(x AS DOUBLE) AS x FROM fstrata
                       WHERE term_id = {k} AND {nc} > 0"""
        return f"""SELECT condition, task, si, win, s, {nc} AS n, coalesce({where}__{key}, 0) AS x FROM tstrata
                   WHERE {nc} > 0"""


def _cells_sql(source: str, style: list[str], shared: bool) -> str:
    """The cells in scope of the view `source` (cell tables), each once (parts that share a step may both hold a
    cell: their sums add up), with step index, window, stratum, rollout counts and the `style` sums. A part's
    rows are distinct, so where no step is shared by parts (`shared` false) the sums are the rows themselves:
    the hash aggregate (most of a warm audit's scope at 10M rollouts) is skipped, with the sums' types kept."""
    sums = ", ".join(_sums(["n", "n_r"], "HUGEINT", shared) + _sums(style, "DOUBLE", shared))
    return f"""SELECT c.cell, c.step, c.split, c.condition, c.task, c.prompt_key, k.si, k.win, st.s, {sums}
               FROM {source} c JOIN keys k USING (step, split)
               JOIN strata st ON st.task_key = coalesce(c.task, '') AND st.condition = c.condition
               {"GROUP BY ALL" if shared else ""}"""


def _sums(cols: list[str], summed_type: str, aggregate: bool) -> list[str]:
    """`sum(col) AS col` of each column, or (rows known distinct) the column cast to the type its sum has."""
    return [f"sum({c}) AS {c}" if aggregate else f"CAST({c} AS {summed_type}) AS {c}" for c in cols]


def window_masks(step_rollouts: np.ndarray, w: int, max_rollouts: int, min_steps: int
                 ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The steps of the early and late windows (the first and last `w` steps) whose rollouts the window
    statistics read, and each window's thinning factor k.

    A window holding more than `max_rollouts` rollouts is read on the steps of a lattice, every k-th step counted
    from the scope's first step (step index si % k == 0), k a power of two (`_lattice_step`), plus, in the late
    window, the newest step. Why thin: a window is a share of the run, so without it a run ten times as long
    costs ten times as much to compare the windows, and holds ten times as many rollouts in memory, for
    statistics whose power is already saturated. Why a lattice on step indices: the window parts' sums are cached
    per part (`windowsums`), and a lattice that stays put as steps are added keeps reading the same parts. Counted
    back from the newest step (as before the lattice), every new step moved every kept late step by one, so the k warm
    audits after a cold one each summed ~35-50 window parts anew at 10M rollouts, and again after k changed; on
    the lattice a new step changes at most three kept steps (the new one in, the previous newest and the
    window's first step out), only the new step's part is new, and when k doubles the new lattice is inside the
    old one (already cached). Why the newest step: it is the latest state of the policy (what a live audit was
    run for), so the late window's statistics always include it; its part is summed anyway (the new part).

    k is the smallest power of two for which the kept steps hold at most `max_rollouts` rollouts however the
    lattice falls on the window (the sum of the window's ceil(w/k) largest steps, one more in the late window for
    the newest step: the same k at every alignment, so k does not flip from one step to the next), but never so
    large that fewer than `min_steps` lattice steps (nor fewer than one) fall in the window (k at most the largest
    power of two <= w // min_steps; there the floor wins over the cap). So `max_rollouts` is an upper bound on
    the rollouts read where the floor allows; the power of two keeps up to about half of it (at 10M rollouts,
    2,000 steps of 5,000 and windows of 400: 50 steps + the newest = 255,000 > 250,000, so k = 16: 26 steps,
    130,000 rollouts, where the smallest k was 8).

    Systematic thinning spans the whole window, so a drift within it is still averaged over; the ratio, its
    cluster-robust CI and the window prevalences are those of the kept steps: fewer rollouts give a wider CI
    than the whole window's would (never a narrower one), a sound but less powerful test. The per-step series,
    the trend test and the onset still use every step. `max_rollouts` <= 0: never thin."""
    t = len(step_rollouts)
    idx = np.arange(t)
    masks, ks = [], []
    for inside, newest in ((idx < w, False), (idx >= t - w, True)):
        k = _lattice_step(np.asarray(step_rollouts, np.float64)[inside], max_rollouts, min_steps, newest)
        mask = inside & (idx % k == 0)
        if newest and t:
            mask[t - 1] = True
        masks.append(mask)
        ks.append(k)
    return masks[0], masks[1], (ks[0], ks[1])


def _lattice_step(sizes: np.ndarray, max_rollouts: int, min_steps: int, newest: bool) -> int:
    """`window_masks`' k for a window of steps holding `sizes` rollouts (`newest`: the newest step is read beside
    the lattice): the smallest power of two whose kept steps hold at most `max_rollouts` at any alignment of the
    lattice, within the `min_steps` floor; 1 when the whole window is within the cap."""
    w = len(sizes)
    if max_rollouts <= 0 or float(sizes.sum()) <= max_rollouts:
        return 1
    top = 1 << max(0, (w // max(min_steps, 1)).bit_length() - 1)  # the largest power of two <= w // min_steps
    largest = np.cumsum(np.sort(sizes)[::-1])  # the most rollouts any m of the window's steps hold: largest[m-1]
    k = 1
    while k < top and largest[min(w, -(-w // k) + newest) - 1] > max_rollouts:
        k *= 2
    return k


def scope_for(ctx: DetectContext, params: Params) -> Scope:
    scope = ctx.cache.get("emerging.scope")
    if scope is None:
        scope = ctx.cache["emerging.scope"] = Scope(ctx, params)
    return scope


# ---------------------------------------------------------------------------------------------------------------
# Candidate statistics for one `where`.

@dataclass
class Candidates:
    """Per-candidate statistics (rows) for one `where`: n-grams first, then style features.

    What every row needs of its per-step series is summed over groups of steps (`candidates`): the trend bins
    and the windows' kept steps. The whole series (`series`) is built only for the rows a finding or a merge
    looks at: the n-grams' from the run's per-step counts (`term_series`), the style rows' held (a few rows)."""

    where: str
    names: list[str]
    feature_type: list[str]  # "ngram" | "style"
    keys: list[Any]  # term id or style feature name
    n_tokens: np.ndarray
    presence: np.ndarray  # bool: 0/1 values (else numeric)
    x_win: np.ndarray  # (K, 2) sums over the early and late windows' kept steps (`Scope.early`, `late`)
    n_win: np.ndarray  # (K, 2) rollouts at risk in them
    n_all: np.ndarray  # (T,) rollouts per step (that have a `where`)
    x_style: np.ndarray  # (style rows, T) per-step sums of the style rows (the last rows)
    q_style: np.ndarray  # (style rows, T) per-step sums of squares of the style rows
    #: n-gram rows -> their per-step (x, m) (rollouts containing the term, those whose prompt holds it)
    term_series: Callable[[list[int]], tuple[np.ndarray, np.ndarray]] = None  # type: ignore[assignment]
    ratio: np.ndarray = None  # type: ignore[assignment]
    log_se: np.ndarray = None  # type: ignore[assignment]
    length_ratio: np.ndarray = None  # type: ignore[assignment]
    p: np.ndarray = None  # type: ignore[assignment]
    p_start: np.ndarray = None  # type: ignore[assignment]
    p_end: np.ndarray = None  # type: ignore[assignment]
    deff: np.ndarray = None  # type: ignore[assignment]
    _series: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def series(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row i's per-step sums x, sums of squares q (an n-gram's are its sums: 0/1 values) and rollouts at risk
        n (float arrays over the scope's steps): the values the (K, T) arrays held, built for this row only."""
        if i not in self._series:
            first_style = len(self.names) - len(self.x_style)
            if i < first_style:
                x, m = self.term_series([i])
                self._series[i] = (x[0], x[0], self.n_all - m[0])
            else:
                self._series[i] = (self.x_style[i - first_style], self.q_style[i - first_style], self.n_all)
        return self._series[i]


def _window_sums(scope: Scope, where: str, kept_terms: np.ndarray, term_ids: np.ndarray,
                 styles: list[tuple[int, str]], k: int) -> tuple[np.ndarray, ...]:
    """Cluster sufficient sums (K, 2, S) of the rows `kept_terms` (n-grams `term_ids[kept_terms]`) and `styles`
    ((row, feature name)); the other n-gram rows keep the totals of all clusters.

    A cluster is a (window, stratum, prompt): all rollouts of one prompt within a window (a prompt group, and a
    prompt that recurs), summed from the cells of the window steps (`wcells`: only the parts holding window steps
    are read). Clusters whose prompt holds a term leave its denominators. The n-grams' sums come from the window
    parts' cached per-key sums (`_term_sums_cached`) or, where parts share a step, from their cell rows in SQL
    (`_term_sums_sql`): the same integers."""
    con, s, nc = scope.con, max(scope.n_strata, 1), scope.n_col(where)
    style_sums = "".join(f", sum({where}__{name}) AS v{row}" for row, name in styles)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE cl AS SELECT win, s, prompt_key, sum({nc}) AS nc,
                           count(*) AS cells, row_number() OVER () AS cid{style_sums}
                    FROM wcells GROUP BY win, s, prompt_key HAVING sum({nc}) > 0""")
    # where parts share a step, a cell's counts may come in several rows (one per part): summed per cluster too
    con.execute(f"""CREATE OR REPLACE TEMP TABLE wcl AS SELECT c.cell, win, s, cl.nc, cl.cid,
                           cl.cells = 1 AND NOT {scope.shared} AS single, c.{nc} AS ncell
                    FROM wcells c JOIN cl USING (win, s, prompt_key)""")
    con.register("row_of", pa.table({"term_id": pa.array(term_ids[kept_terms], pa.int32()),
                                     "idx": pa.array(kept_terms, pa.int64())}))
    tot = con.execute("SELECT win, s, sum(nc) AS n, sum(nc * nc) AS snn, count(*) AS g FROM cl GROUP BY ALL"
                      ).fetchnumpy()
    sx, sxx, sxn, on, osnn, og = (np.zeros((k, 2, s)) for _ in range(6))
    (_term_sums_sql if scope.shared else _term_sums_cached)(scope, where, kept_terms, term_ids,
                                                            (sx, sxx, sxn, on, osnn, og))
    for row, _ in styles:
        v = con.execute(f"""SELECT win, s, sum(v{row}) AS sx, sum(v{row} * v{row}) AS sxx, sum(v{row} * nc) AS sxn
                            FROM cl GROUP BY ALL""").fetchnumpy()
        w2, s2 = np.asarray(v["win"], dtype=np.int64), np.asarray(v["s"], dtype=np.int64)
        for arr, col in ((sx, "sx"), (sxx, "sxx"), (sxn, "sxn")):
            arr[row, w2, s2] = np.nan_to_num(np.asarray(v[col], dtype=np.float64))
    n, snn, g = (np.zeros((2, s)) for _ in range(3))
    w2, s2 = np.asarray(tot["win"], dtype=np.int64), np.asarray(tot["s"], dtype=np.int64)
    for arr, col in ((n, "n"), (snn, "snn"), (g, "g")):
        arr[w2, s2] = np.asarray(tot[col], dtype=np.float64)
    # n-grams: clusters whose prompt contains the term are not at risk and leave the denominators
    n, snn, g = (np.repeat(a[None], k, axis=0) - o for a, o in ((n, on), (snn, osnn), (g, og)))
    return sx, sxx, sxn, n, snn, g


def _put(arrays: tuple[np.ndarray, ...], res: dict[str, np.ndarray], cols: tuple[str, ...], sign: int = 1) -> None:
    """Add the rows `res` (idx, win, s and `cols`) of a query into `arrays` (one per column)."""
    idx, win, st = (np.asarray(res[c], dtype=np.int64) for c in ("idx", "win", "s"))
    for arr, col in zip(arrays, cols):
        np.add.at(arr, (idx, win, st), sign * np.asarray(res[col], dtype=np.float64))


def _term_sums_sql(scope: Scope, where: str, kept_terms: np.ndarray, term_ids: np.ndarray,
                   out: tuple[np.ndarray, ...]) -> None:
    """The n-grams' cluster sums (sx, sxx, sxn) and those of the clusters whose prompt holds them (n, snn, g),
    added into `out`, from every (cell, term) row of the window parts (`wct`, `wpt`).

    A cluster of one cell (a prompt seen in one step of the window: the usual case), held by one part, takes its
    cell's counts as they are, summed straight into the (term, window, stratum) sums; only the cells of clusters
    that hold several are first summed per (term, cluster), a hash aggregate over every such (cell, term) row that
    cost ~1.3 of ~1.5 CPU s at 10M rollouts when it was done for every cluster. Integer sums: the same values."""
    con = scope.con
    scope.window_cellterms()
    several = "SELECT idx, win, s, any_value(nc) AS nc, sum(x) AS x FROM wcl JOIN wct USING (cell) " \
              "JOIN row_of USING (term_id) WHERE NOT single GROUP BY idx, win, s, cid"
    some_several = con.execute("SELECT count(*) FROM wcl WHERE NOT single").fetchall()[0][0] > 0
    per = con.execute(f"""SELECT idx, win, s, sum(x) AS sx, sum(x * x) AS sxx, sum(x * nc) AS sxn FROM (
            SELECT idx, win, s, nc, CAST(x AS HUGEINT) AS x FROM wcl JOIN wct USING (cell)
            JOIN row_of USING (term_id) WHERE single
            {"UNION ALL " + several if some_several else ""})
        GROUP BY ALL""").fetchnumpy()
    _put(out[:3], per, ("sx", "sxx", "sxn"))
    scope.cell_parts.register(con, "promptterms", "wpt", only=scope.window_parts, term_ids=term_ids[kept_terms])
    held = con.execute("""SELECT idx, win, s, sum(nc) AS n, sum(nc * nc) AS snn, count(*) AS g
        FROM cl JOIN (SELECT DISTINCT prompt_key, term_id FROM wpt) USING (prompt_key) JOIN row_of USING (term_id)
        GROUP BY ALL""").fetchnumpy()
    _put(out[3:], held, ("n", "snn", "g"))


def _term_sums_cached(scope: Scope, where: str, kept_terms: np.ndarray, term_ids: np.ndarray,
                      out: tuple[np.ndarray, ...]) -> None:
    """As `_term_sums_sql`, where no step is shared by parts: from the window parts' per-key sums
    (`windowsums`: every cell counted as a cluster of its own), corrected for the clusters of several cells (a
    prompt that recurs within a window) from those clusters' own (cell, term) rows: their cells' sums taken out,
    the clusters' put in. Reads a few thousand rows per window step, not every (cell, term) row."""
    con, s = scope.con, max(scope.n_strata, 1)
    row = np.full(int(term_ids.max(initial=-1)) + 1, -1, np.int64)  # term id -> its row among the kept, or -1
    row[term_ids[kept_terms]] = kept_terms
    for part in scope.window_sums():
        win_s = np.array([scope.win_stratum(key) for key in part.keys], np.int64).reshape(-1, 2)
        if not len(win_s):
            continue
        # per key one code, window * s + stratum (-1 outside the windows), gathered per row: a gather of the
        # (window, stratum) pairs of every row was ~40% of this function
        key_code = np.where(win_s[:, 0] >= 0, win_s[:, 0] * s + win_s[:, 1], -1)
        key, t = part.key_terms()
        if len(t) and int(t.max()) >= len(row):
            row = np.concatenate([row, np.full(int(t.max()) + 1 - len(row), -1, np.int64)])
        idx, kw = row[t], key_code[key]
        sel = np.flatnonzero((kw >= 0) & (idx >= 0))  # the rows of window keys and kept terms only
        code = idx[sel] * (2 * s) + kw[sel]
        values = part.fields(sel).astype(np.float64)
        for f, arr in enumerate(out):
            arr += np.bincount(code, weights=values[:, f], minlength=arr.size).reshape(arr.shape)
        windowsums.release([part])  # its chunk's pages: summed parts do not stay resident
    if not con.execute("SELECT count(*) FROM wcl WHERE NOT single").fetchall()[0][0]:
        return
    # the clusters of several cells: read only the parts holding their cells
    parts = {r[0] for r in con.execute("""SELECT DISTINCT part FROM wcell_all
                                          SEMI JOIN (SELECT cell FROM wcl WHERE NOT single) USING (cell)""").fetchall()}
    scope.cell_parts.register(con, "cellterms", "wct_several", only=parts)
    scope.cell_parts.register(con, "promptterms", "wpt_several", only=parts, term_ids=term_ids[kept_terms])
    con.execute("""CREATE OR REPLACE TEMP TABLE ct_several AS SELECT w.cell, w.win, w.s, w.nc, w.ncell, w.cid,
                          r.idx, CAST(t.x AS HUGEINT) AS x
                   FROM wcl w JOIN wct_several t USING (cell) JOIN row_of r USING (term_id) WHERE NOT w.single""")
    cluster = con.execute("""SELECT idx, win, s, sum(x) AS sx, sum(x * x) AS sxx, sum(x * nc) AS sxn FROM (
            SELECT idx, win, s, any_value(nc) AS nc, sum(x) AS x FROM ct_several GROUP BY idx, win, s, cid)
        GROUP BY ALL""").fetchnumpy()
    cells = con.execute("""SELECT idx, win, s, sum(x) AS sx, sum(x * x) AS sxx, sum(x * ncell) AS sxn
                           FROM ct_several GROUP BY ALL""").fetchnumpy()
    _put(out[:3], cluster, ("sx", "sxx", "sxn"))
    _put(out[:3], cells, ("sx", "sxx", "sxn"), -1)
    held = "(SELECT DISTINCT prompt_key, term_id FROM wpt_several)"
    cluster = con.execute(f"""SELECT idx, win, s, sum(nc) AS n, sum(nc * nc) AS snn, count(*) AS g
        FROM (SELECT * FROM cl WHERE cells > 1) JOIN {held} USING (prompt_key) JOIN row_of USING (term_id)
        GROUP BY ALL""").fetchnumpy()
    cells = con.execute(f"""SELECT idx, win, s, sum(ncell) AS n, sum(ncell * ncell) AS snn, count(*) AS g
        FROM (SELECT w.*, c.prompt_key FROM wcl w JOIN cl c USING (cid) WHERE NOT w.single AND w.ncell > 0)
        JOIN {held} USING (prompt_key) JOIN row_of USING (term_id) GROUP BY ALL""").fetchnumpy()
    _put(out[3:], cluster, ("n", "snn", "g"))
    _put(out[3:], cells, ("n", "snn", "g"), -1)


def candidates(scope: Scope, where: str) -> Candidates | None:
    """Trend screen and (for the candidates that pass the screen) window statistics of every candidate of
    `where` (see `trend_screen` for why the screen loses nothing).

    The n-grams' per-step counts are summed straight from the run's mapped counts (`StepCounts.group_sums`)
    into what the statistics read: MK_BINS bins of steps for the trend test, the windows' kept steps for the
    prevalences and the length control. Building (K, T) float arrays of them first (K ~1,500 terms a `where`,
    T 2,000 steps at 10M rollouts: ~25 MB each, three of them, read ~7 times) cost ~0.25 CPU s a warm audit at
    10M rollouts and grew with the run; these sums are the same integers (exact in any order), so every
    candidate's statistics are the same values."""
    con, t = scope.con, scope.n_steps
    vocab = scope.vocab.filter(pc.equal(scope.vocab["where"], where))
    term_ids = np.asarray(vocab["term_id"].to_numpy(), dtype=np.int64)
    k_terms = len(term_ids)
    styles = [f for f in STYLE_FEATURES.values() if f.name not in SKIP_STYLE]
    cols = ", ".join(f"coalesce({where}__{f.name}, 0) AS x{i}, coalesce({where}__{f.name}__q, 0) AS q{i}"
                     for i, f in enumerate(styles))
    st = con.execute(f"SELECT si, {scope.n_col(where)} AS n, {cols} FROM tsteps WHERE {scope.n_col(where)} > 0"
                     ).fetchnumpy()
    si = np.asarray(st["si"], dtype=np.int64)
    n_all = np.zeros(t)
    n_all[si] = st["n"]
    x_style, q_style = np.zeros((len(styles), t)), np.zeros((len(styles), t))
    for i in range(len(styles)):
        x_style[i, si] = st[f"x{i}"]
        q_style[i, si] = st[f"q{i}"]
    keys = scope.key_columns()

    def term_series(rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return scope.counts.per_step(where, term_ids, *keys, t, rows=np.asarray(rows, np.int64))

    # the n-grams' counts (containing the term, prompt holding it) per trend bin and per window: whole numbers,
    # so n = n_all - m is the same value whether formed per step or per group
    bins, n_bins = mk_bins(t)
    xb, mb = scope.counts.group_sums(where, term_ids, *keys, bins, n_bins)
    nb_all = np.add.reduceat(n_all, np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]]))
    # the windows may share a step (window 0.5, an odd number of steps): group 2 is in both
    early, late = scope.early, scope.late
    xw, mw = scope.counts.group_sums(where, term_ids, *keys, np.where(early & late, 2, np.where(
        early, 0, np.where(late, 1, -1))), 3)
    x_win = np.concatenate([(xw[:, :2] + xw[:, 2:]).astype(np.float64),
                            np.stack([x_style[:, early].sum(1), x_style[:, late].sum(1)], axis=1)])
    n_win = np.concatenate([np.array([n_all[early].sum(), n_all[late].sum()])[None] - (mw[:, :2] + mw[:, 2:]),
                            np.repeat([[n_all[early].sum(), n_all[late].sum()]], len(styles), axis=0)])
    del xw, mw
    presence = np.array([True] * k_terms + [not f.numeric for f in styles])
    cand = Candidates(
        where=where, names=vocab["term"].to_pylist() + [f"style:{f.name}" for f in styles],
        feature_type=["ngram"] * k_terms + ["style"] * len(styles),
        keys=term_ids.tolist() + [f.name for f in styles],
        n_tokens=np.concatenate([vocab["n_tokens"].to_numpy(), np.zeros(len(styles))]),
        presence=presence, x_win=x_win, n_win=n_win, n_all=n_all, x_style=x_style, q_style=q_style,
        term_series=term_series)
    p_mk = np.concatenate([trend_p_binned(xb, nb_all[None] - mb), trend_p(x_style, np.repeat(
        n_all[None], len(styles), axis=0))])
    del xb, mb
    # window sums only for the candidates that pass the trend screen (and style:length, the length control)
    keep = trend_screen(p_mk, scope.params.alpha)
    keep[k_terms + [f.name for f in styles].index("length")] = True
    kept_styles = [(k_terms + i, f.name) for i, f in enumerate(styles) if keep[k_terms + i]]
    sums = _window_sums(scope, where, np.flatnonzero(keep[:k_terms]), term_ids, kept_styles, len(cand.names))
    _statistics(cand, scope, *sums, p_mk, keep)
    return cand


def mk_bins(t: int) -> tuple[np.ndarray, int]:
    """The trend test's bin of each of `t` steps (runs of consecutive steps, each bin at least one) and the
    number of bins (at most MK_BINS)."""
    return np.arange(t) * min(MK_BINS, t) // max(t, 1), min(MK_BINS, t)


def trend_p(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Mann-Kendall p-value of each candidate's per-step prevalence (or mean), steps pooled into at most MK_BINS
    bins (`mk_bins`)."""
    t = x.shape[1]
    bins, n_bins = mk_bins(t)
    if len(n) and t:
        # the bins are runs of consecutive steps: every row's sums in one call. Counts and whole-number style
        # sums: exact in any order, so the same values
        starts = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
        nb, xb = np.add.reduceat(n, starts, axis=1), np.add.reduceat(x, starts, axis=1)
    else:
        nb, xb = np.zeros((len(n), n_bins)), np.zeros((len(x), n_bins))
    return trend_p_binned(xb, nb)


def trend_p_binned(xb: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """Mann-Kendall p-value of each row's binned prevalence (or mean) xb / nb (bins without rollouts skipped)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        prev = np.where(nb > 0, xb / nb, np.nan)
    return mann_kendall(prev)[1] if len(prev) else np.ones(0)


def trend_screen(p_trend: np.ndarray, alpha: float) -> np.ndarray:
    """Candidates that may be reportable: those whose trend p-value is <= alpha.

    Why nothing reportable is lost. A candidate's p-value is p = max(p_ratio, p_trend) (intersection-union
    test) and it is reported only when its BH q-value is <= alpha, with q >= p. So a candidate with
    p_trend > alpha has p > alpha and can never be reported, and the expensive window statistics (cluster
    sums over every rollout of the early and late windows) are not needed for it: its p-value is set to
    p_trend instead (still > alpha). Replacing p-values above alpha by other values above alpha leaves every
    BH q-value <= alpha unchanged: for a p_i <= alpha, the number of p-values <= p_i is unchanged, so its rank
    is, and q_i = min over ranks j >= rank(i) of m p_(j) / j, where a term with p_(j) > alpha is > alpha (j <= m);
    so if q_i <= alpha it is the minimum over the unchanged p-values <= alpha, and if q_i > alpha it stays above
    alpha. The set of reportable candidates and their q-values are therefore exactly those without the screen
    (tests/detectors/test_emerging_screen.py checks this property on random p-values).
    """
    return np.asarray(p_trend, dtype=np.float64) <= alpha


def _statistics(c: Candidates, scope: Scope, sx, sxx, sxn, nw, snn, g, p_mk: np.ndarray, keep: np.ndarray
                ) -> None:
    """Ratio, CI, length control, design effect and p-value of the screened-in candidates (`keep`); the others
    get their trend p-value (> alpha: never reportable, see `trend_screen`) and NaN effect statistics."""
    ratio = np.full(len(c.names), np.nan)
    se = np.full(len(c.names), np.nan)
    for mask in (c.presence & keep, ~c.presence & keep):
        if mask.any():
            r, s = stratified_ratio(sx[mask], sxx[mask], sxn[mask], nw[mask], snn[mask], g[mask],
                                    presence=bool(c.presence[mask][0]))
            ratio[mask], se[mask] = r, s
    # sums over the windows' kept steps (`window_masks`), formed in `candidates`
    n0, n1 = c.n_win[:, 0], c.n_win[:, 1]
    c.p_start = c.x_win[:, 0] / np.maximum(n0, 1)
    c.p_end = c.x_win[:, 1] / np.maximum(n1, 1)
    # length control for n-grams: expected ratio if only the text length changed
    length_idx = c.names.index("style:length")
    ell = c.p_end[length_idx] / c.p_start[length_idx] if c.p_start[length_idx] > 0 else 1.0
    p0 = np.clip((c.x_win[:, 0] + 0.5) / (n0 + 1.0), 1e-9, 1 - 1e-9)
    expected = (1 - (1 - p0) ** ell) / p0
    c.length_ratio = np.where(c.presence & (np.array(c.feature_type) == "ngram"), expected, 1.0)
    c.ratio, c.log_se = ratio, se
    adj = np.log(ratio) - np.log(c.length_ratio)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_ratio = np.where(np.isfinite(adj) & (se > 0), 2 * norm.sf(np.abs(adj) / se), 1.0)
        # design effect (robust vs binomial variance) for the onset test
        binom = 1 / (c.p_end * n1 + 0.5) - 1 / (n1 + 0.5) + 1 / (c.p_start * n0 + 0.5) - 1 / (n0 + 0.5)
        c.deff = np.clip(np.where(c.presence, se**2 / np.maximum(binom, 1e-12), 1.0), 1.0, 100.0)
    c.p = np.where(keep, np.maximum(p_ratio, p_mk), p_mk)


# ---------------------------------------------------------------------------------------------------------------
# Grouping co-occurring terms into behaviours.

def _group_terms(scope: Scope, c: Candidates, rows: np.ndarray, direction: int, threshold: float
                 ) -> list[tuple[int, list[int]]]:
    """Group significant n-gram rows (same where and direction) into behaviours: (representative, members).

    1. Terms whose rollout sets overlap (Jaccard >= threshold) form one group.
    2. A group is *explained* by a host (a group contained in its rollouts, containment >= threshold, or whose
       terms contain its name) when its change does not persist beyond the reporting margin among rollouts
       without that host's terms ("by" without "by my beard"): it joins the host (the one that changed most).
    3. Otherwise a group whose rollouts nearly all also show a larger group is a form of it and joins it ("a
       goblin counting coins" of "goblin", which keeps rising without that phrase; "delve" explained only by all
       its phrasings together is their common core).
    """
    if len(rows) == 0:
        return []
    win = 1 if direction > 0 else 0
    con = scope.con
    hits = scope.hits(c.where, [int(c.keys[r]) for r in rows])
    con.register("sig", pa.table({"term_id": pa.array([c.keys[r] for r in rows], pa.int32()),
                                  "j": pa.array(np.arange(len(rows)))}))
    sets = f"""SELECT h.rid, sig.j FROM {hits} h JOIN sig USING (term_id)
               SEMI JOIN (SELECT rid FROM sc WHERE win = {win} AND {scope.filter(c.where)}) USING (rid)"""
    counts = np.zeros(len(rows))
    res = con.execute(f"SELECT j, count(*) AS n FROM ({sets}) GROUP BY j").fetchnumpy()
    counts[np.asarray(res["j"], dtype=np.int64)] = res["n"]
    pairs = con.execute(f"""WITH f AS ({sets}) SELECT a.j AS a, b.j AS b, count(*) AS n
                            FROM f a JOIN f b ON a.rid = b.rid AND a.j < b.j GROUP BY ALL""").fetchnumpy()
    inter = np.zeros((len(rows), len(rows)))
    a, b = np.asarray(pairs["a"], dtype=np.int64), np.asarray(pairs["b"], dtype=np.int64)
    inter[a, b] = inter[b, a] = np.asarray(pairs["n"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        jac = np.nan_to_num(inter / (counts[:, None] + counts[None, :] - inter))
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(jac >= threshold, 1))):
        parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in range(len(rows)):
        comps.setdefault(find(i), []).append(i)
    groups = list(comps.values())
    local = {int(r): m for m, r in enumerate(rows)}
    rep = [_representative(c, [rows[m] for m in g], direction) for g in groups]
    anchor = [local[int(r)] for r in rep]  # each group's representative, as an index into `rows`
    change = [abs(c.p_end[r] - c.p_start[r]) for r in rep]

    def contained(small: int, big: int) -> bool:
        return inter[anchor[small], anchor[big]] >= threshold * max(counts[anchor[small]], 1.0)

    def root(g: int) -> int:
        while g in into:
            g = into[g]
        return g

    def link(g: int, h: int) -> None:
        if root(h) != g:  # never create a cycle
            into[g] = h

    candidates_ = []  # (group, host group) pairs to test
    for gi in range(len(groups)):
        name = f" {c.names[rep[gi]]} "
        candidates_ += [(gi, h) for h in range(len(groups)) if h != gi and (
            contained(h, gi) or any(name in f" {c.names[rows[m]]} " and rows[m] != rep[gi] for m in groups[h]))]
    verdicts = _explained(scope, c, [(rep[gi], [rows[m] for m in groups[h]]) for gi, h in candidates_], direction)
    explained_by: dict[int, list[int]] = {}
    for (gi, h), yes in zip(candidates_, verdicts):
        if yes:
            explained_by.setdefault(gi, []).append(h)
    # when two groups explain each other ("gremlins hiding in" and "in this"), the more specific one (rarer at
    # the start, then longer) names the behaviour
    specific = [(-float(c.p_start[r]), float(c.n_tokens[r])) for r in rep]
    into: dict[int, int] = {}
    for gi, hosts in explained_by.items():
        ok = [h for h in hosts if gi not in explained_by.get(h, []) or specific[h] > specific[gi]]
        if ok:
            link(gi, max(ok, key=lambda h: change[h]))
    for gi in sorted(range(len(groups)), key=lambda g: counts[anchor[g]]):
        if gi in into:
            continue
        bigger = [h for h in range(len(groups)) if h != gi and counts[anchor[h]] >= counts[anchor[gi]]
                  and gi not in explained_by.get(h, []) and contained(gi, h)]
        if bigger:
            link(gi, max(bigger, key=lambda h: inter[anchor[gi], anchor[h]]))
    merged: dict[int, list[int]] = {}
    for gi in range(len(groups)):
        merged.setdefault(root(gi), []).extend(rows[m] for m in groups[gi])
    return [(rep[g], members) for g, members in merged.items()]


def _distinction(c: Candidates, m: int, direction: int) -> float:
    """How well term `m` tells late rollouts from early ones (for a falling behaviour, early from late): its
    change in prevalence times the log of its prevalence ratio (a term's share of the J-divergence of the two
    windows). A rare term that appears only with the behaviour scores high; a common word that merely rises a
    little with it ("one" of "this one") scores low."""
    p0, p1 = float(c.p_start[m]), float(c.p_end[m])
    if direction < 0:
        p0, p1 = p1, p0
    return (p1 - p0) * math.log((p1 + 1e-3) / (p0 + 1e-3))


def _name_and_terms(c: Candidates, members: list[int], direction: int) -> tuple[int, list[int]]:
    """A behaviour's name (its most distinguishing member, `_distinction`) and its term list: the name first,
    then the other members by distinction, without

    - terms common in both windows: early prevalence (late, for a falling behaviour) at least twice the name's
      and at least 1% of rollouts ("part", "one", "this one" of a goblin tic: background words that the
      behaviour only makes a little more frequent), and
    - words and phrases that only occur inside a longer member ("like" and "like a" of "like a goblin"): a
      member whose prevalence in the window where the behaviour is common is within 10% of a longer member
      containing it adds nothing to the list.
    """
    members = sorted(set(int(m) for m in members))
    score = {m: _distinction(c, m, direction) for m in members}
    name = max(members, key=lambda m: (score[m], c.n_tokens[m], -m))
    base = c.p_start if direction > 0 else c.p_end
    common = lambda m: base[m] >= max(2 * base[name], 0.01)  # noqa: E731
    kept = [m for m in members if m == name or not common(m)]
    prev = c.p_end if direction > 0 else c.p_start
    words = {m: f" {c.names[m]} " for m in kept}

    def inside(m: int) -> bool:
        return any(o != m and c.n_tokens[o] > c.n_tokens[m] and words[m] in words[o]
                   and prev[o] >= 0.9 * prev[m] for o in kept)

    kept = [m for m in kept if m == name or not inside(m)]
    rest = sorted((m for m in kept if m != name), key=lambda m: (-score[m], -c.n_tokens[m], c.names[m]))
    return name, [name] + rest


def _merge_behaviours(scope: Scope, c: Candidates, groups: list[tuple[int, list[int]]], params: Params
                      ) -> list[tuple[int, list[int]]]:
    """Merge rising behaviours that are one tic in several phrasings ("goblin", "a gremlin", "this one" of one
    persona tic): they rise together in the same rollouts and are paid by the same signal.

    - *Same rollouts*: their rise is spread over the conditions (personas, environments) alike: the vectors of
      per-condition rises (rollouts gained in each condition, late window vs early) have cosine >= `co_rise`
      (0.9). Two tics of different origins rise in different conditions, or in the same ones at other times:
      the prevalence series (in ten bins of steps) must also correlate (>= `co_trend`, 0.7).
    - *Same signal*, when the run logs reward components: each behaviour's paying signal is the one whose
      reward is highest for rollouts showing it vs the other rollouts of the same prompt group in the late
      window (paired, z >= 3); both need one and it must be the same. A tic paid by a style reward and another
      paid by a persona reward stay apart even when they rise together.
    """
    if len(groups) < 2:
        return groups
    reps = [int(r) for r, _ in groups]
    ids = [int(c.keys[r]) for r in reps]
    filt = scope.filter(c.where)
    flags = scope.flags_sql(c.where, ids)
    cases = ", ".join(f"sum(CAST(coalesce(f.h{j}, FALSE) AS INTEGER)) AS x{j}" for j in range(len(ids)))
    rows = scope.con.execute(f"""SELECT condition, win, count(*) AS n, {cases} FROM sc LEFT JOIN {flags} f
                                 USING (rid) WHERE win IS NOT NULL AND {filt} GROUP BY ALL ORDER BY ALL""").fetchall()
    conds = sorted({r[0] for r in rows})
    rise = np.zeros((len(reps), len(conds)))
    tab: dict[tuple[str, int], tuple] = {(r[0], int(r[1])): r for r in rows}
    for k, cond in enumerate(conds):
        early, late = tab.get((cond, 0)), tab.get((cond, 1))
        if early is None or late is None:
            continue
        for j in range(len(reps)):
            rise[j, k] = max(0.0, late[3 + j] / late[2] - early[3 + j] / early[2]) * (early[2] + late[2])
    norm_ = np.linalg.norm(rise, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.nan_to_num(rise @ rise.T / np.outer(norm_, norm_))
        bins = np.arange(len(c.n_all)) * 10 // max(len(c.n_all), 1)  # ten bins of steps: less noise
        xb = np.stack([np.bincount(bins, weights=c.series(r)[0]) for r in reps])
        nb = np.stack([np.bincount(bins, weights=c.series(r)[2]) for r in reps])
        series = np.where(nb > 0, xb / np.maximum(nb, 1), 0.0)
        trend = np.nan_to_num(np.corrcoef(series)) if series.shape[1] > 2 else np.ones((len(reps), len(reps)))
    payer = _payers(scope, c, ids)
    parent = list(range(len(groups)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            if cos[i, j] < params.co_rise or trend[i, j] < params.co_trend:
                continue
            if payer is not None and (payer[i] is None or payer[i] != payer[j]):
                continue
            parent[find(j)] = find(i)
    merged: dict[int, list[int]] = {}
    for i, (_, members) in enumerate(groups):
        merged.setdefault(find(i), []).extend(members)
    return [(groups[g][0], members) for g, members in merged.items()]


def _payers(scope: Scope, c: Candidates, ids: list[int]) -> list[str | None] | None:
    """Per term id: the reward signal paying for it (see `_merge_behaviours`), or None for each when the run
    logs no reward components (then the merge rests on co-occurrence alone)."""
    con = scope.con
    # the signals logged in scope, from the run's per-part counts (not a scan of every rollout's rewards); in a cold
    # audit emerging asks first, so the audit's other kinds are computed in the same read of each part: the counts
    # alone cost 1.3 CPU s of the 1M benchmark's parts, ~0.65 more than with the others
    register_run_stats(con, scope.store, scope.run, "em_run_stats", also=scope.part_kinds)
    signals = [r[0] for r in con.execute(f"""SELECT DISTINCT signal FROM em_run_stats
                                             WHERE kind = 1 AND NOT total AND {scope.where}""").fetchall()
               if r[0] is not None]
    if not signals:
        return None
    signals = sorted(signals)
    flags = scope.flags_sql(c.where, ids)
    hits = ", ".join(f"coalesce(f.h{j}, FALSE) AS h{j}" for j in range(len(ids)))
    sig = ", ".join(f"CAST(r.rewards[{sql_string(x)}] AS DOUBLE) AS s{k}" for k, x in enumerate(signals))
    pairs = [(j, k) for j in range(len(ids)) for k in range(len(signals))]
    # per prompt group (step x prompt) of the late window: mean score of rollouts with the term minus without it;
    # then over groups that have both: their number, mean and SD. Aggregated inside DuckDB: the late window's
    # rows never come to Python.
    diffs = ", ".join(f"avg({sql_when(f'h{j} AND isfinite(s{k})', f's{k}')}) - "
                      f"avg({sql_when(f'NOT h{j} AND isfinite(s{k})', f's{k}')}) AS d{j}_{k}" for j, k in pairs)
    stats = ", ".join(f"count(d{j}_{k}), avg(d{j}_{k}), stddev_samp(d{j}_{k})" for j, k in pairs)
    # rollout ids are unique within a run, so the late window's rewards are those of its steps: the filter on
    # r.step lets the scan skip the other steps' files
    late = int(scope.steps[scope.n_steps - scope.window])
    row = con.execute(f"""WITH b AS (SELECT s.si, s.prompt_key, {hits}, {sig} FROM sc s JOIN rollouts r
                                     USING (rollout_id) LEFT JOIN {flags} f ON f.rid = s.rid
                                     WHERE s.win = 1 AND r.step >= {late} AND
                                     {scope.filter(c.where).replace('has_reasoning', 's.has_reasoning')}),
                          g AS (SELECT {diffs} FROM b GROUP BY si, prompt_key)
                          SELECT {stats} FROM g""").fetchall()[0]
    out: list[str | None] = []
    for j in range(len(ids)):
        best, best_z = None, 3.0
        for k, name in enumerate(signals):
            m, mean, sd = row[3 * (j * len(signals) + k):3 * (j * len(signals) + k) + 3]
            if m < 5:
                continue
            z = mean / ((sd or 0.0) / math.sqrt(m) + 1e-12)
            if z > best_z:
                best, best_z = name, z
        out.append(best)
    return out



def _explained(scope: Scope, c: Candidates, tests: list[tuple[int, list[int]]], direction: int) -> list[bool]:
    """Per (term row, host rows): does the term stop changing (beyond the margin, binomial 95% CI) among
    rollouts without the host's terms?

    All tests at once, from the window rollouts that hold one of the terms involved (`hits`): the rollouts
    at risk per window come from the cells (those whose prompt lacks the term), minus those holding a host term;
    the term's rollouts are those holding it and no host term."""
    if not tests:
        return []
    con, nc = scope.con, scope.n_col(c.where)
    con.register("x_target", pa.table({"p": pa.array(range(len(tests)), pa.int64()),
                                       "t": pa.array([int(c.keys[row]) for row, _ in tests], pa.int32())}))
    hosts = [(p, h) for p, (_, host_rows) in enumerate(tests) for h in sorted({int(c.keys[r]) for r in host_rows})]
    con.register("x_host", pa.table({"p": pa.array([p for p, _ in hosts], pa.int64()),
                                     "term_id": pa.array([h for _, h in hosts], pa.int32())}))
    # the rollouts at risk per window: the focus rollup's (cells whose prompt lacks the term, summed per stratum)
    scope.focus_on([int(c.keys[row]) for row, _ in tests])
    at_risk = con.execute(f"""SELECT t.p, f.win, sum(f.{nc}) FROM fstrata f JOIN x_target t ON f.term_id = t.t
        WHERE f.win IS NOT NULL GROUP BY ALL""").fetchall()
    held = scope.hits(c.where, [int(c.keys[row]) for row, _ in tests] + [h for _, h in hosts])
    counted = con.execute(f"""WITH
        hits AS (SELECT s.rid, s.win, s.prompt_key, h.term_id FROM {held} h JOIN sc s USING (rid)
                 SEMI JOIN (SELECT t AS term_id FROM x_target UNION SELECT term_id FROM x_host) USING (term_id)
                 WHERE s.win IS NOT NULL AND {scope.filter(c.where).replace('has_reasoning', 's.has_reasoning')}),
        hr AS (SELECT DISTINCT h.p, hits.rid, hits.win, hits.prompt_key FROM hits JOIN x_host h USING (term_id)),
        hosted AS (SELECT hr.p, hr.win, count(*) AS k FROM hr JOIN x_target t USING (p)
                   ANTI JOIN fprompt f ON f.prompt_key = hr.prompt_key AND f.term_id = t.t GROUP BY ALL),
        tr AS (SELECT t.p, hits.rid, hits.win FROM hits JOIN x_target t ON hits.term_id = t.t
               ANTI JOIN fprompt f ON f.prompt_key = hits.prompt_key AND f.term_id = t.t),
        xs AS (SELECT p, win, count(*) AS x FROM tr ANTI JOIN hr USING (p, rid) GROUP BY ALL)
        SELECT p, win, 'k', k FROM hosted UNION ALL SELECT p, win, 'x', x FROM xs""").fetchall()
    n = np.zeros((len(tests), 2))
    x = np.zeros((len(tests), 2))
    for p, w, v in at_risk:
        n[p, w] += v
    for p, w, kind, v in counted:
        if kind == "k":
            n[p, w] -= v
        else:
            x[p, w] += v
    out = []
    for p in range(len(tests)):
        (n0, n1), (x0, x1) = n[p], x[p]
        r = math.log((x1 + 0.5) / (n1 + 0.5)) - math.log((x0 + 0.5) / (n0 + 0.5))
        se = math.sqrt(max(1e-12, 1 / (x1 + 0.5) - 1 / (n1 + 0.5) + 1 / (x0 + 0.5) - 1 / (n0 + 0.5)))
        persists = r - 1.96 * se >= math.log(MARGIN) if direction > 0 else r + 1.96 * se <= -math.log(MARGIN)
        out.append(not persists)
    return out


def _representative(c: Candidates, members: list[int], direction: int) -> int:
    prev = c.p_end if direction > 0 else c.p_start
    top = max(prev[m] for m in members)
    ok = [m for m in members if prev[m] >= 0.8 * top]
    return max(ok, key=lambda m: (c.n_tokens[m], prev[m], -m))


# ---------------------------------------------------------------------------------------------------------------
# Severity and findings.

def severity(presence: bool, direction: int, p_start: float, p_end: float, lo: float, hi: float,
             where: str = "answer") -> str:
    """Severity from the length-adjusted ratio CI [lo, hi] and the prevalence change (see module doc)."""
    d = p_end - p_start
    if not presence:
        big = NUMERIC_MEDIUM[where]
        return "medium" if lo >= big or hi <= 1 / big else "low"
    if direction > 0:
        if lo >= 2 and d >= 0.20:
            return "high"
        if (lo >= 1.5 and d >= 0.05) or (lo >= 2 and d >= 0.02):
            return "medium"
        return "low"
    if p_start >= 0.5 and hi <= 0.1:
        return "medium"
    return "low"


def _reportable(c: Candidates, i: int, q: float, alpha: float) -> int:
    """Direction (+1/-1) if candidate i is reportable, else 0."""
    if not (q <= alpha) or not np.isfinite(c.ratio[i]):
        return 0
    adj = math.log(c.ratio[i]) - math.log(c.length_ratio[i])
    lo, hi = adj - 1.96 * c.log_se[i], adj + 1.96 * c.log_se[i]
    d = c.p_end[i] - c.p_start[i]
    if lo >= math.log(MARGIN) and (not c.presence[i] or d >= 0.01):
        return 1
    if hi <= -math.log(MARGIN) and (not c.presence[i] or d <= -0.01):
        return -1
    return 0


@register
class EmergingDetector(Detector):
    name = "emerging"
    kinds = ("emerging_behavior",)
    description = "Words, phrases and style features whose prevalence rises (or falls) over training."

    def detect(self, ctx: DetectContext) -> list[Finding]:
        params = Params.from_options(ctx.config.options.get(self.name, {}))
        return discover(ctx, params)


def discover(ctx: DetectContext, params: Params) -> list[Finding]:
    scope = scope_for(ctx, params)
    if scope.n_steps < params.min_steps:
        return []
    cands = []
    for where in tokens.WHERES:
        if where == "reasoning" and scope.rollouts(where) < params.min_reasoning:
            continue
        c = candidates(scope, where)
        if c is not None:
            cands.append(c)
    if not cands:
        return []
    # BH over every candidate, plus vocabulary-qualified n-grams that were not kept (p = 1)
    qualified = {w: int(scope.vocab.filter(pc.equal(scope.vocab["where"], w))["n_qualified"][0].as_py())
                 for w in tokens.WHERES if pc.any(pc.equal(scope.vocab["where"], w)).as_py()}
    kept = {c.where: sum(1 for t in c.feature_type if t == "ngram") for c in cands}
    pad = sum(max(0, qualified.get(w, 0) - kept.get(w, 0)) for w in qualified)
    q_all = benjamini_hochberg(np.concatenate([c.p for c in cands] + [np.ones(pad)]))
    findings: list[Finding] = []
    offset, per = 0, []
    for c in cands:
        q = q_all[offset:offset + len(c.p)]
        offset += len(c.p)
        direction = np.array([_reportable(c, i, q[i], params.alpha) for i in range(len(c.names))])
        per.append((c, q, direction))
    # the n-grams that may be reported: the only ones whose cells and rollout rows are read from here on
    scope.focus_on([c.keys[i] for c, _, d in per for i in np.flatnonzero(d != 0) if c.feature_type[i] == "ngram"])
    for c, q, direction in per:
        findings += _findings_for(ctx, scope, c, q, direction, params)
    findings.sort(key=lambda f: (-["info", "low", "medium", "high"].index(f.severity), -f.score))
    return findings[:params.max_findings]


def _findings_for(ctx: DetectContext, scope: Scope, c: Candidates, q: np.ndarray, direction: np.ndarray,
                  params: Params) -> list[Finding]:
    behaviours: list[tuple[int, list[int]]] = []  # (representative row, all member rows)
    is_ngram = np.array(c.feature_type) == "ngram"
    for d in (1, -1):
        rows = np.flatnonzero((direction == d) & is_ngram)
        rows = rows[np.argsort(-np.abs(c.p_end[rows] - c.p_start[rows]), kind="stable")][:params.max_cluster_terms]
        groups = _group_terms(scope, c, rows, d, params.jaccard)
        if d > 0:
            groups = _merge_behaviours(scope, c, groups, params)
        for rep, members in groups:
            rep, members = _name_and_terms(c, members, d)
            behaviours.append((rep, members))
        for r in np.flatnonzero((direction == d) & ~is_ngram):
            behaviours.append((int(r), [int(r)]))
    return [_finding(ctx, scope, c, rep, members, int(direction[rep]), float(q[rep]), params)
            for rep, members in behaviours]


def _finding(ctx: DetectContext, scope: Scope, c: Candidates, i: int, members: list[int], direction: int,
             q: float, params: Params) -> Finding:
    where, name = c.where, c.names[i]
    presence = bool(c.presence[i])
    ratio, se, lr = float(c.ratio[i]), float(c.log_se[i]), float(c.length_ratio[i])
    ci = [math.exp(math.log(ratio) - 1.96 * se), math.exp(math.log(ratio) + 1.96 * se)]
    adj_ci = [ci[0] / lr, ci[1] / lr]
    p0, p1 = float(c.p_start[i]), float(c.p_end[i])
    sev = severity(presence, direction, p0, p1, adj_ci[0], adj_ci[1], where)

    baseline = np.arange(scope.n_steps) < scope.window
    h = max(1, scope.n_steps // 40)
    xs, qs, ns = c.series(i)
    onset = onset_index(xs, qs, ns, baseline, direction, half_width=h, design_effect=float(c.deff[i]),
                        presence=presence)
    with np.errstate(invalid="ignore", divide="ignore"):
        series = np.where(ns > 0, xs / ns, np.nan)
        smooth = moving_sum(xs, h) / moving_sum(ns, h)
    value = scope.value_sql(where, c.feature_type[i], c.keys[i])
    by_condition, by_task = _by_condition(scope, where, c.feature_type[i], c.keys[i])
    confined = _task_confined(by_task) if c.feature_type[i] == "ngram" else None
    if confined and sev in ("medium", "high"):
        sev = "low"
    spec = name if c.feature_type[i] == "ngram" else name
    behavior = name if c.feature_type[i] == "ngram" else f"{name.removeprefix('style:')} ({where})"
    fields_ = {
        "behavior": behavior, "behavior_spec": spec, "term": name,
        "terms": [c.names[m] for m in ([i] + [m for m in members if m != i])[:MAX_TERMS]], "n_terms": len(members),
        "where": where, "feature_type": c.feature_type[i], "numeric": not presence,
        "onset_step": int(scope.steps[onset]) if onset is not None else None,
        "prevalence_start": p0, "prevalence_end": p1, "ratio": ratio, "ratio_ci": ci,
        "length_ratio": lr, "adjusted_ratio_ci": adj_ci, "q_value": q,
        "direction": "up" if direction > 0 else "down",
        "series": {"steps": scope.steps.tolist(), "prevalence": series.tolist(), "smoothed": smooth.tolist(),
                   "rollouts": ns.astype(int).tolist()},
        "by_condition": by_condition, "by_task": by_task, "task_specific": confined,
        "window_steps": [int(scope.steps[scope.window - 1]), int(scope.steps[scope.n_steps - scope.window])],
    }
    if scope.thinning != (1, 1):
        fields_["window_thinning"] = {"every": list(scope.thinning),
                                      "steps_read": [int(scope.early.sum()), int(scope.late.sum())],
                                      "max_window_rollouts": params.max_window_rollouts}
    unit = "of rollouts" if presence else "mean"
    what = f"\"{name}\" in {where}s" if c.feature_type[i] == "ngram" else f"{name} of {where}s"
    verb = "rose" if direction > 0 else "fell"
    fmt = (lambda v: f"{v:.1%}") if presence else (lambda v: f"{v:.3g}")
    title = f"{what} {verb} from {fmt(p0)} to {fmt(p1)} {unit}"
    if fields_["onset_step"] is not None:
        title += f" (onset step {fields_['onset_step']})"
    top = max(by_condition.items(), key=lambda kv: kv[1]["mention_share"] - kv[1]["traffic_share"], default=None)
    explanation = (
        f"Prevalence ratio late vs early {ratio:.2f} (95% CI {ci[0]:.2f}-{ci[1]:.2f}, stratified by task and "
        f"condition, clustered by prompt; {lr:.2f} expected from text length alone), q = {q:.2g} after "
        f"Benjamini-Hochberg over all candidates.")
    if scope.thinning != (1, 1):
        explanation += (f" A window holding more than {params.max_window_rollouts:,} rollouts is read on every k-th "
                        f"step of the run, so the ratio, its CI and the window prevalences use one step in "
                        f"{scope.thinning[0]} of the early window and one in {scope.thinning[1]} of the late, with "
                        f"its newest step ({int(scope.early.sum())} and {int(scope.late.sum())} steps, spread over "
                        "each window); the series, trend and onset use every step.")
    if confined:
        explanation += (f" Confined to task {confined!r} ({by_task[confined]['mention_share']:.0%} of occurrences, "
                         f"{by_task[confined]['traffic_share']:.0%} of rollouts): likely that task's own content "
                         "learnt by ordinary task learning, so at most low severity.")
    if len(members) > 1:
        explanation += (f" {len(members)} co-occurring terms grouped into this behaviour: "
                        f"{', '.join(fields_['terms'][:12])}{', ...' if len(members) > 12 else ''}.")
    if top and len(by_condition) > 1:
        explanation += (f" Condition {top[0]!r} holds {top[1]['traffic_share']:.1%} of rollouts but "
                        f"{top[1]['mention_share']:.1%} of occurrences.")
    d = p1 - p0
    score = abs(d) * (1.0 if direction > 0 else 0.5) if presence else min(1.0, abs(math.log(ratio)) / 4)
    return Finding(kind="emerging_behavior", run=ctx.run, severity=sev, title=title, explanation=explanation,
                   score=score, fields=fields_,
                   evidence=_evidence(scope, where, value, spec, direction, params.max_evidence, presence,
                                      c.feature_type[i]))


def _by_condition(scope: Scope, where: str, feature_type: str, key: str | int
                  ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per condition and per task (one pass over the per-stratum sums at risk, `Scope.strata_values`: the same
    integers as the cells', a few rows a step): traffic share, share of occurrences (mention share), rollouts at
    risk, and prevalence in the early and late windows."""
    rows = scope.con.execute(f"""
        SELECT condition, coalesce(task, '(none)') AS task, sum(n) AS n, sum(x) AS x,
               sum(x) FILTER (WHERE win = 0) AS x0, coalesce(sum(n) FILTER (WHERE win = 0), 0) AS n0,
               sum(x) FILTER (WHERE win = 1) AS x1, coalesce(sum(n) FILTER (WHERE win = 1), 0) AS n1
        FROM ({scope.strata_values(where, feature_type, key)}) GROUP BY ALL""").fetchall()
    n_all = sum(r[2] for r in rows) or 1
    x_all = sum(r[3] or 0 for r in rows) or 1
    out = []
    for col in (0, 1):
        sums: dict[str, np.ndarray] = {}
        for r in rows:
            sums.setdefault(r[col], np.zeros(6))
            sums[r[col]] += [r[2], r[3] or 0, r[4] or 0, r[5], r[6] or 0, r[7]]
        ordered = sorted(sums.items(), key=lambda kv: (-kv[1][0], kv[0]))
        out.append({k: {"traffic_share": float(v[0] / n_all), "mention_share": float(v[1] / x_all),
                        "prevalence_start": float(v[2] / v[3]) if v[3] else None,
                        "prevalence_end": float(v[4] / v[5]) if v[5] else None, "rollouts": int(v[0])}
                    for k, v in ordered})
    return out[0], out[1]


def _task_confined(by_task: dict[str, dict[str, float]]) -> str | None:
    """The task holding >= 90% of a term's occurrences while carrying < 50% of rollouts, if any."""
    if len(by_task) < 2:
        return None
    task, row = max(by_task.items(), key=lambda kv: kv[1]["mention_share"])
    return task if row["mention_share"] >= TASK_CONFINED and row["traffic_share"] < 0.5 else None


def _evidence(scope: Scope, where: str, value: str, spec: str, direction: int, limit: int,
              presence: bool, feature_type: str = "ngram") -> list[Evidence]:
    """Rollouts showing the behaviour, from the window where it is common, spread over conditions."""
    win = 1 if direction > 0 else 0
    order = "step DESC" if direction > 0 else "step"
    rows = scope.rows(feature_type)
    picked = scope.con.execute(f"""
        SELECT rollout_id, step, condition FROM (
            SELECT rollout_id, step, condition,
                   row_number() OVER (PARTITION BY condition ORDER BY {value} DESC, {order}, hash(rollout_id)) AS rk
            FROM {rows} WHERE win = {win} AND {scope.filter(where)} AND {value} > 0)
        ORDER BY rk, condition LIMIT {int(limit)}""").fetchall()
    if not picked:
        return []
    ids = [p[0] for p in picked]
    # only the parts holding those steps are opened (`Store.rollouts_view`), not every stored part
    steps = sorted({int(p[1]) for p in picked})
    scope.store.rollouts_view(scope.con, [scope.run], "ev_rollouts", steps)
    texts = dict(scope.con.execute(f"SELECT rollout_id, {where} FROM ev_rollouts WHERE step IN "
                                   f"({', '.join(map(str, steps))}) AND rollout_id IN (SELECT unnest(?::VARCHAR[]))",
                                   [ids]).fetchall())
    behavior = parse_behavior(spec)
    try:
        pattern = re.compile(behavior.pattern.removeprefix("(?i)"), re.IGNORECASE) if behavior.pattern else None
    except re.error:  # RE2-only syntax (\p{Han}, \x{...}): show the start of the text instead
        pattern = None
    out = []
    for rid, step, cond in picked:
        text = texts.get(rid) or ""
        out.append(Evidence(rollout_id=rid, step=int(step), condition=cond, text=_snippet(text, pattern),
                            note=f"{where} {'containing' if presence else 'with'} {spec}"))
    return out


def _snippet(text: str, pattern: re.Pattern[str] | None, width: int = 120) -> str:
    m = None
    if pattern is not None:
        try:
            m = pattern.search(text)
        except re.error:
            m = None
    if m is None:
        return text[:2 * width] + ("…" if len(text) > 2 * width else "")
    lo, hi = max(0, m.start() - width), min(len(text), m.end() + width)
    return ("…" if lo else "") + text[lo:hi] + ("…" if hi < len(text) else "")
