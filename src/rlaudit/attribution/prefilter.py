"""A term behaviour's SQL run only on the rollouts that can match it: a cheap, exact necessary condition first.

A term spec's pattern (`behaviors.term_regex`: `(?i)` + a boundary + the phrase's tokens, each `re.escape`d,
separated by gaps + a boundary; `any:` specs an alternation of such phrases) spends most of its time in the
boundary and gap classes (Unicode classes RE2 cannot skip ahead on): over the answers of the 1M-rollout
benchmark it cost ~0.55 CPU s, reading the answers ~0.5. Every match of a phrase contains a match of each of
its escaped tokens under the same `(?i)` flag, so `regexp_matches(text, '<token>', 'i')` (one literal per
phrase, alternated: the same engine, flags and case folding, no assertions) is true wherever the pattern
matches; rows where it is false get the pattern's own value there, 0.0. That test costs about a fifth of the
pattern, and the pattern then runs on the rows holding the token (a term that emerged: ~15-25% of them).

Only term specs are gated: their literals come from the same tokens and escapes as their pattern (each is
checked to be in the pattern). A regex spec would need its required literals parsed out of RE2 syntax, a style
feature has none worth testing (its SQL is already a literal or a class), and a token shorter than three
characters would select most rows."""

from __future__ import annotations

import re

from ..behaviors import Behavior, tokenize

MIN_LITERAL = 3


def literals(behavior: Behavior) -> list[str] | None:
    """One escaped token per phrase of a term spec (its longest: the rarest, as a rule), each a substring of the
    behaviour's pattern; None when the spec is not a term or some phrase has no token of MIN_LITERAL characters."""
    if behavior.kind != "term" or behavior.pattern is None:
        return None
    spec = behavior.spec.strip()
    phrases = [p.strip() for p in spec[4:].split("|") if p.strip()] if spec.startswith("any:") else [spec]
    out = []
    for phrase in phrases:
        tokens = tokenize(phrase)
        if not tokens:
            return None
        longest = re.escape(max(tokens, key=len))
        if len(max(tokens, key=len)) < MIN_LITERAL or longest not in behavior.pattern:
            return None
        out.append(longest)
    return list(dict.fromkeys(out))


def gated_sql(behavior: Behavior, column: str) -> str | None:
    """`behavior.sql(column)`, with term specs computed only where one of their `literals` occurs (0.0 elsewhere,
    the pattern's own value there)."""
    expr = behavior.sql(column)
    lits = literals(behavior) if expr is not None else None
    if not lits:
        return expr
    gate = "|".join(lits).replace("'", "''")
    return f"CASE WHEN regexp_matches(coalesce({column}, ''), '{gate}', 'i') THEN {expr} ELSE 0.0 END"
