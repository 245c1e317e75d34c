"""CoT-grading screen: suspect a grader of reading the reasoning from scores alone.

Within a prompt group the prompt is fixed, so a grader that reads only the prompt and the answer must give the
same score (up to its own noise) to rollouts whose answers are identical. The screen therefore looks at pairs of
rollouts with the same group and the same normalised answer, and asks, per reward signal, whether the score
difference of a pair *tracks a difference in its reasoning*:

- pairs are disjoint (each rollout in at most one pair), so pairs are independent under the null;
- features of the reasoning: log length, and presence of the words whose presence most often differs within
  pairs (chosen without looking at scores, so the choice does not bias the test);
- per feature, the statistic is sum(dscore * dfeature); a pair's orientation is arbitrary, so under the null
  (score independent of reasoning given the answer) each term's sign is a fair coin. The sign-flip
  randomisation test's normal approximation gives a p-value (z = S / sqrt(sum (dscore*dfeature)^2)), which
  stays valid for stochastic graders: noise that ignores the reasoning does not correlate with it;
- Bonferroni across the features of a signal, Benjamini-Hochberg across signals.

A signal that scores identical answers differently but not in a way that tracks the reasoning (a stochastic
answer-only judge) is not flagged. Findings are labelled statistical and carry low/medium severity: a
correlation is a reason to probe the grader (`rlaudit probe-grader`), not proof.
"""

from __future__ import annotations

import math
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from .stats import wilson_interval
from ..stats import benjamini_hochberg, norm
from ..findings import Evidence, Finding
from .shingles import Vocabulary, normalized_tokens

# Pairs: disjoint pairs of rollouts with the same group and normalised answer, per signal with a finite score.
# Only (group, answer) sets of two or more rollouts can form pairs, so they are found first on a hash of the
# answer (a hash collision only adds candidates: the pairing itself compares the answers); the pairs are then
# built without text, sampled, and only the sampled pairs' reasoning is read.
#: The coarse answer key: answers equal once whitespace runs are collapsed are equal once it is removed.
ANSWER_HASH = "hash(translate(lower(trim(answer)), chr(9) || chr(10) || chr(12) || chr(13) || ' ', ''))"
#: Rows the screen can pair at all (the rows `screen_keys` caches per part).
SCREENABLE = "group_id IS NOT NULL AND reasoning IS NOT NULL"

_COARSE = f"""
WITH coarse AS (
    SELECT rollout_id, step, group_id, condition, rewards, answer, {ANSWER_HASH} AS ck
    FROM rollouts WHERE {SCREENABLE}
), keyed AS (  -- a superset first: the candidates on the coarse key
    SELECT rollout_id, step, group_id, condition, rewards,
           regexp_replace(lower(trim(answer)), '\\s+', ' ', 'g') AS answer_key
    FROM coarse SEMI JOIN (SELECT group_id, ck FROM coarse GROUP BY ALL HAVING count(*) >= 2) c
         ON c.group_id = coarse.group_id AND c.ck = coarse.ck
)"""

# The same candidates from precomputed coarse keys ({keys}: rollout_id, group_id, ck of the screenable rows in
# scope): only the candidates' answers are read and normalised. Joining on (rollout_id, group_id) can only add
# rows (a duplicated id), and `sets` below keeps exact answer matches alone, so the pairs are the same.
_COARSE_CACHED = f"""
WITH keys AS (SELECT rollout_id, group_id, ck FROM {{keys}}),
cand AS (
    SELECT rollout_id, group_id FROM keys
    SEMI JOIN (SELECT group_id, ck FROM keys GROUP BY ALL HAVING count(*) >= 2) c
         ON c.group_id = keys.group_id AND c.ck = keys.ck
), keyed AS (
    SELECT rollout_id, step, group_id, condition, rewards,
           regexp_replace(lower(trim(answer)), '\\s+', ' ', 'g') AS answer_key
    FROM rollouts r WHERE {SCREENABLE} AND rollout_id IN (SELECT rollout_id FROM cand)
         AND group_id IN (SELECT group_id FROM cand)
)"""

_PAIRS_TAIL = """, sets AS (
    SELECT group_id, hash(answer_key) AS h FROM keyed GROUP BY ALL HAVING count(*) >= 2
), scored AS (
    SELECT rollout_id, step, group_id, condition, answer_key,
           unnest(map_keys(rewards)) AS signal, unnest(map_values(rewards)) AS value
    FROM keyed SEMI JOIN sets ON sets.group_id = keyed.group_id AND sets.h = hash(keyed.answer_key)
), clean AS (
    SELECT *, row_number() OVER (PARTITION BY signal, group_id, answer_key ORDER BY hash(rollout_id), rollout_id)
              AS rn
    FROM scored WHERE isfinite(value) AND NOT list_contains($skip, signal)
)
SELECT a.signal, a.step, a.condition, a.group_id, a.rollout_id AS id_a, b.rollout_id AS id_b,
       a.value AS score_a, b.value AS score_b, a.answer_key AS answer,
       row_number() OVER (PARTITION BY a.signal ORDER BY a.group_id, a.answer_key, a.rn) - 1 AS _k
FROM clean a JOIN clean b ON a.signal = b.signal AND a.group_id = b.group_id AND a.answer_key = b.answer_key
     AND b.rn = a.rn + 1 AND a.rn % 2 = 1
"""
_PAIRS_SQL = _COARSE + _PAIRS_TAIL

_TEXTS_SQL = """
WITH texts AS (
    SELECT rollout_id, group_id, any_value(reasoning) AS reasoning FROM rollouts
    WHERE reasoning IS NOT NULL AND rollout_id IN (SELECT id_a FROM _screen_pairs UNION ALL SELECT id_b FROM _screen_pairs)
    GROUP BY ALL)
SELECT p.*, ra.reasoning AS reasoning_a, rb.reasoning AS reasoning_b
FROM (SELECT *, row_number() OVER () AS _i FROM _screen_pairs) p
JOIN texts ra ON ra.rollout_id = p.id_a AND ra.group_id = p.group_id
JOIN texts rb ON rb.rollout_id = p.id_b AND rb.group_id = p.group_id
ORDER BY p._i
"""


def screen(con: duckdb.DuckDBPyConnection, run: str, options: dict[str, Any], skip_signals: set[str] = frozenset(),
           seed: int = 0, keys: str | None = None) -> list[Finding]:
    """Statistical CoT-grading findings for the reward signals of the `rollouts` view of `con`.

    `keys`: SQL of the coarse answer keys of the rows in scope (`rlaudit.cot.screen_keys`, cached per part), so
    that only candidate rows' answers are read instead of every answer of the run; the findings are the same."""
    alpha = float(options.get("screen_alpha", 0.05))
    max_pairs = int(options.get("screen_max_pairs", 20_000))
    n_terms = int(options.get("screen_terms", 50))
    min_pairs = int(options.get("screen_min_pairs", 20))
    # the pairs stay in DuckDB (one row per pair of identical answers: up to half the run per signal, spilled to
    # disk beyond its memory limit); only the sampled pairs of one signal at a time come to Python
    if keys is not None:
        sets = con.execute(f"SELECT count(*) FROM (SELECT group_id, ck FROM {keys} GROUP BY ALL "
                           "HAVING count(*) >= 2)").fetchall()[0][0]
        if not sets:
            return []  # no two rollouts of a group answered alike: no pair to test
    pairs_sql = _PAIRS_SQL if keys is None else _COARSE_CACHED.format(keys=keys) + _PAIRS_TAIL
    con.execute(f"CREATE OR REPLACE TEMP TABLE _screen_all AS {pairs_sql}", {"skip": sorted(skip_signals)})
    counts = dict(con.execute("SELECT signal, count(*) FROM _screen_all GROUP BY signal").fetchall())
    signals = sorted(set(counts) - set(skip_signals))
    tests = []
    for signal in signals:
        keep = np.arange(counts[signal])
        if counts[signal] > max_pairs:
            rng = np.random.default_rng(seed)
            keep = np.sort(rng.choice(counts[signal], max_pairs, replace=False))
        con.register("_screen_keep", pa.table({"_k": pa.array(keep, pa.int64())}))
        sub = con.sql("SELECT * EXCLUDE (_k) FROM _screen_all SEMI JOIN _screen_keep USING (_k) "
                      "WHERE signal = $s ORDER BY _k", params={"s": signal}).to_arrow_table()
        con.unregister("_screen_keep")
        con.register("_screen_pairs", sub)  # the reasoning of the (sampled) pairs only
        sub = con.sql(_TEXTS_SQL).to_arrow_table().drop_columns(["_i"])
        con.unregister("_screen_pairs")
        result = test_signal(sub, n_terms)
        if result["pairs"] >= min_pairs:
            tests.append((signal, sub, result))
    con.execute("DROP TABLE IF EXISTS _screen_all")
    if not tests:
        return []
    q = benjamini_hochberg([t[2]["p_value"] for t in tests])
    found = []
    for (signal, sub, result), q_value in zip(tests, q):
        if q_value > alpha:
            continue
        found.append(_finding(run, signal, sub, result, float(q_value)))
    return found


def test_signal(pairs: pa.Table, n_terms: int = 50) -> dict[str, Any]:
    """Sign-flip tests of score difference vs reasoning-feature difference over disjoint identical-answer pairs."""
    a = pairs.column("score_a").to_numpy()
    b = pairs.column("score_b").to_numpy()
    delta = a - b
    tol = 1e-9 * (1 + np.max(np.abs(np.concatenate([a, b])))) if len(a) else 0.0
    different = np.abs(delta) > tol
    names, features = reasoning_features(pairs, n_terms)
    products = delta[:, None] * features
    s = products.sum(axis=0)
    var = (products ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(var > 0, s / np.sqrt(var), 0.0)
        corr = np.where(var > 0, s / np.sqrt((delta ** 2).sum() * (features ** 2).sum(axis=0)), 0.0)
    p = 2 * norm.sf(np.abs(z))
    best = int(np.argmin(p)) if len(p) else 0
    p_signal = min(1.0, float(p[best]) * len(p)) if len(p) else 1.0
    return {"pairs": int(len(delta)), "different": int(different.sum()), "feature": names[best] if names else None,
            "correlation": float(corr[best]) if len(p) else 0.0, "z": float(z[best]) if len(p) else 0.0,
            "p_value": p_signal, "features_tested": len(names), "mask_different": different, "delta": delta}


def reasoning_features(pairs: pa.Table, n_terms: int) -> tuple[list[str], np.ndarray]:
    """(names, matrix pairs x features) of within-pair differences: log length and word presence."""
    n = pairs.num_rows
    ra, rb = pairs.column("reasoning_a"), pairs.column("reasoning_b")
    length = np.log1p(pa.compute.utf8_length(ra).to_numpy(zero_copy_only=False).astype(float)) - \
        np.log1p(pa.compute.utf8_length(rb).to_numpy(zero_copy_only=False).astype(float))
    names = ["reasoning length (log chars)"]
    columns = [length]
    if n_terms > 0 and n:
        ta, tb = normalized_tokens(ra), normalized_tokens(rb)
        vocab = Vocabulary([ta, tb])
        ids_a, off_a = vocab.ids(0).astype(np.int64), vocab.offsets(0)
        ids_b, off_b = vocab.ids(1).astype(np.int64), vocab.offsets(1)
        pair_a = np.repeat(np.arange(n), np.diff(off_a))
        pair_b = np.repeat(np.arange(n), np.diff(off_b))
        width = int(max(ids_a.max(initial=0), ids_b.max(initial=0))) + 1
        pres_a = np.unique(pair_a * width + ids_a)
        pres_b = np.unique(pair_b * width + ids_b)
        both = np.intersect1d(pres_a, pres_b, assume_unique=True)
        only_a = np.setdiff1d(pres_a, both, assume_unique=True)
        only_b = np.setdiff1d(pres_b, both, assume_unique=True)
        discordant = np.bincount(np.concatenate([only_a, only_b]) % width, minlength=width)
        chosen = np.argsort(-discordant, kind="stable")[:n_terms]
        chosen = chosen[discordant[chosen] >= 2]
        col_of = np.full(width, -1)
        col_of[chosen] = np.arange(len(chosen))
        matrix = np.zeros((n, len(chosen)))
        for keys, sign in ((only_a, 1.0), (only_b, -1.0)):
            c = col_of[keys % width]
            keep = c >= 0
            matrix[keys[keep] // width, c[keep]] += sign
        words = vocab.words.to_pylist()
        names += [f"word '{words[i]}' in reasoning" for i in chosen]
        columns += [matrix[:, j] for j in range(len(chosen))]
    return names, np.column_stack(columns) if columns else np.zeros((n, 0))


def _finding(run: str, signal: str, pairs: pa.Table, result: dict[str, Any], q_value: float) -> Finding:
    different, delta = result["mask_different"], result["delta"]
    n, k = result["pairs"], result["different"]
    lo, hi = wilson_interval(k, n)
    steps = pairs.column("step").to_numpy()
    conds = pairs.column("condition").to_pylist()
    first = int(steps[different].min()) if k else None
    series_steps = sorted(set(steps.tolist()))
    series = {"steps": series_steps,
              "pairs": [int((steps == s).sum()) for s in series_steps],
              "share_different": [float(different[steps == s].mean()) for s in series_steps]}
    by_condition = {}
    for c in sorted(set(conds)):
        m = np.array([x == c for x in conds])
        by_condition[c] = {"pairs": int(m.sum()), "share_different": float(different[m].mean())}
    severity = "medium" if q_value <= 1e-3 and k / n >= 0.05 else "low"
    direction = "higher" if result["correlation"] > 0 else "lower"
    order = np.argsort(-np.abs(delta))[:5]
    evidence = []
    for i in order:
        if not different[i]:
            continue
        row = {c: pairs.column(c)[int(i)].as_py() for c in
               ("id_a", "id_b", "step", "condition", "score_a", "score_b", "reasoning_a", "reasoning_b", "answer")}
        evidence.append(Evidence(
            rollout_id=row["id_a"], step=row["step"], condition=row["condition"], text=row["answer"][:300],
            note=(f"same answer as {row['id_b']} in the same group, but '{signal}' gave {row['score_a']:.4g} vs "
                  f"{row['score_b']:.4g}; reasoning {len(row['reasoning_a'])} vs {len(row['reasoning_b'])} chars"),
            data={"pair_rollout_id": row["id_b"], "score": row["score_a"], "pair_score": row["score_b"],
                  "reasoning": row["reasoning_a"][-400:], "pair_reasoning": row["reasoning_b"][-400:]}))
    return Finding(
        kind="cot_grading", run=run, severity=severity,
        title=(f"Suspected CoT grading (statistical screen): '{signal}' scores identical answers differently, "
               f"tracking {result['feature']}"),
        explanation=(
            f"Statistical evidence only. Among {n:,} disjoint pairs of rollouts with the same prompt group and the "
            f"same answer, '{signal}' gave different scores to {k:,} ({k / n:.1%}). Within such pairs the score "
            f"difference correlates with the difference in {result['feature']} (correlation "
            f"{result['correlation']:+.2f}: {direction} score with more of it; sign-flip test "
            f"p={result['p_value']:.2g} after Bonferroni over {result['features_tested']} features, BH q={q_value:.2g} across signals). A grader "
            "that reads only the prompt and answer cannot do that, so it probably sees the reasoning. Confirm with "
            "`rlaudit probe-grader` or by capturing its inputs (rlaudit.cot.capture)."),
        score=abs(result["correlation"]),
        fields={"grader": signal, "method": "screen", "statistical": True, "exposure_rate": None,
                "exposed_samples": None, "first_step": first, "pairs": n, "pairs_different": k,
                "share_different": k / n, "share_different_ci": [lo, hi], "feature": result["feature"],
                "correlation": result["correlation"], "p_value": result["p_value"],
                "q_value": q_value if math.isfinite(q_value) else None,
                "features_tested": result["features_tested"], "series": series, "by_condition": by_condition},
        evidence=evidence,
    )
