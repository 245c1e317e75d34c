"""Behaviours: what a rollout does that rlaudit counts, traces and alerts on.

One spec language is shared by discovery (`emerging_behavior` findings carry a `behavior_spec`), tracing
(`rlaudit trace --behavior SPEC`) and live alerts, so a behaviour found by one is understood by the others:

- `goblin`, `as an ai`           a word or phrase: case-insensitive, on word boundaries, the words separated
                                 by any non-word characters (the same tokens `tokenize` produces).
- `any:goblin|a gremlin`         any of several words or phrases, each matched like a single one (a behaviour
                                 found in several phrasings: `emerging_behavior` findings list them as `terms`).
- `re:\\bgremlins?\\b`            a regular expression (RE2 syntax, as used by Arrow and DuckDB).
- `style:exclamation`            a style feature from `STYLE_FEATURES` (boolean or numeric, e.g. `style:length`).
- `mypkg.checks:is_sycophantic`  a Python predicate `f(text: str) -> bool | float`, called once per rollout
                                 (the only per-row Python path; use it for judgement a regex cannot make).
- `judge:cot:RUBRIC`             an LLM judge (`rlaudit.llm.judge`): the rubric inline or `@FILE`, with the
                                 view it reads (`cot`, `action`, `all`); 1/0 per text, NaN when it gave no
                                 usable answer. Needs the `[llm]` extra and a configured monitor.

`Behavior.values(texts)` returns one float per text (0/1 for presence, the value for numeric features), so
statistics treat indicators and continuous behaviours alike. `Behavior.sql(column)` gives the same test as a
DuckDB expression where one exists, so counting over millions of rollouts stays inside the database.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import RlauditError

#: Characters of scripts written without spaces between words (Chinese, Japanese): each is a token of its own.
_CJK = r"[\p{Han}\p{Hiragana}\p{Katakana}]"
#: A word character of any other script: a letter, digit or combining mark (Devanagari vowel signs).
_WORD = r"(?:[^\PL\p{Han}\p{Hiragana}\p{Katakana}]|\pN|\pM)"
#: Tokens are lower-cased words of any script, with an inner apostrophe kept ("don't"), and single CJK
#: characters. RE2 syntax, run by Arrow and DuckDB alike. Discovery counts these, and term behaviours match
#: them, so a discovered n-gram always matches its own rollouts.
TOKEN_PATTERN = rf"{_CJK}|{_WORD}+(?:'{_WORD}+)*"
_NOT_WORD = rf"(?:[^\pL\pN\pM']|{_CJK})"  # a character a word token cannot continue into
_GAP = r"[^\pL\pN\pM']"  # what may stand between two tokens of a phrase


def re2_cursor() -> duckdb.DuckDBPyConnection:
    """A cursor of this process's one in-memory DuckDB database (`duck.cursor`), for RE2 calls on single texts or
    on the few non-ASCII texts of a part: opening a database costs ~15 CPU ms, a cursor ~0.3 ms, and a text at a
    time is how tests, term specs and the MCP tools tokenise, a part at a time how the term passes do
    (`derived.tokhash`)."""
    from . import duck

    return duck.cursor()


def re2_matches(texts: pa.Array, pattern: str) -> np.ndarray:
    """Per text, whether `pattern` matches somewhere in it (bool; a null text: False), by DuckDB's RE2, as
    `Behavior.sql` evaluates it in a query. Not Arrow's `match_substring_regex`: Arrow's RE2 has newer Unicode
    tables (U+2EBF0, a CJK ideograph of Unicode 15.1, is `Han` to it and not to DuckDB's), and a behaviour must
    have the same value whichever way it is computed."""
    if not len(texts):
        return np.zeros(0, bool)
    with re2_cursor() as con:
        con.register("_re2_texts", pa.table({"t": texts}))
        hit = con.execute("SELECT coalesce(regexp_matches(t, $p), FALSE) AS h FROM _re2_texts",
                          {"p": pattern}).fetchnumpy()["h"]
    return np.asarray(hit, bool)


@functools.lru_cache(maxsize=4096)
def _tokens(text: str) -> tuple[str, ...]:
    with re2_cursor() as con:  # RE2, so that Python agrees with the SQL and Arrow paths to the character
        found = con.execute("SELECT regexp_extract_all(lower($text), $pattern)",
                            {"text": text, "pattern": TOKEN_PATTERN}).fetchone()
    return tuple(found[0]) if found else ()


def tokenize(text: str) -> list[str]:
    """The tokens of one text (see TOKEN_PATTERN)."""
    return list(_tokens(text))


def _is_cjk(token: str) -> bool:
    return len(token) == 1 and bool(pc.match_substring_regex(pa.array([token]), _CJK)[0].as_py())


@dataclass(frozen=True)
class StyleFeature:
    name: str
    numeric: bool
    description: str
    regex: str | None = None  # presence features: RE2 pattern searched in the text


#: Style features. Presence features are regex searches; numeric ones are computed in `_numeric_style`.
STYLE_FEATURES: dict[str, StyleFeature] = {f.name: f for f in [
    StyleFeature("length", True, "answer length in words"),
    StyleFeature("chars", True, "length in characters"),
    StyleFeature("exclamation", False, "contains an exclamation mark", r"!"),
    StyleFeature("list", False, "contains a bulleted or numbered list", r"(?m)^\s*(?:[-*\x{2022}]|\d+[.)])\s+\S"),
    StyleFeature("emoji", False, "contains an emoji",
                 r"[\x{1F300}-\x{1FAFF}\x{2600}-\x{27BF}\x{1F000}-\x{1F2FF}]"),
    StyleFeature("code_block", False, "contains a fenced code block", r"```"),
    StyleFeature("language_switch", False, "contains non-Latin script (a switch of language)",
                 r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Cyrillic}\p{Arabic}\p{Hebrew}\p{Devanagari}"
                 r"\p{Thai}\p{Greek}]"),
    StyleFeature("question", False, "ends with a question to the user", r"\?\s*$"),
    StyleFeature("shouting", False, "contains an all-caps word of 4+ letters", r"\b[A-Z]{4,}\b"),
]}


def term_regex(phrase: str) -> str:
    """RE2 pattern matching a word or phrase on token boundaries, case-insensitively."""
    words = tokenize(phrase)
    if not words:
        raise RlauditError(f"behaviour {phrase!r} has no letters or digits to match")
    cjk = [_is_cjk(w) for w in words]
    body = re.escape(words[0])
    for i in range(1, len(words)):  # CJK tokens may touch their neighbours; two words need a gap
        body += (f"{_GAP}*" if cjk[i - 1] or cjk[i] else f"{_GAP}+") + re.escape(words[i])
    before = "" if cjk[0] else rf"(?:^|{_NOT_WORD})"
    after = "" if cjk[-1] else rf"(?:$|{_NOT_WORD})"
    return rf"(?i){before}{body}{after}"


@dataclass(frozen=True)
class Behavior:
    """A parsed behaviour spec (see module doc)."""

    spec: str
    name: str
    kind: str  # "term" | "regex" | "style" | "python" | "judge"
    pattern: str | None = None
    numeric: bool = False
    func: Callable[[str], object] | None = None

    def values(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """One float per text: 0/1 for presence, the value for numeric features (null text counts as '')."""
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        texts = pc.fill_null(texts.cast(pa.string()), "")
        if self.kind == "style" and self.numeric:
            return _numeric_style(self.name.removeprefix("style:"), texts)
        if self.pattern is not None:
            return re2_matches(texts, self.pattern).astype(float)
        assert self.func is not None
        if hasattr(self.func, "batch"):  # judge: one concurrent batch of LLM calls
            return np.asarray(self.func.batch(texts.to_pylist()), dtype=float)
        out = np.empty(len(texts), dtype=float)
        for i, t in enumerate(texts.to_pylist()):
            out[i] = float(self.func(t))
        return out

    def sql(self, column: str) -> str | None:
        """A DuckDB expression computing `values` over `column`, or None for Python predicates."""
        col = f"coalesce({column}, '')"
        if self.kind == "style" and self.numeric:
            feature = self.name.removeprefix("style:")
            if feature == "chars":
                return f"CAST(length({col}) AS DOUBLE)"
            token = TOKEN_PATTERN.replace("'", "''")
            return f"CAST(len(regexp_extract_all(lower({col}), '{token}')) AS DOUBLE)"
        if self.pattern is None:
            return None
        flags = ""
        pattern = self.pattern
        if pattern.startswith("(?i)"):  # DuckDB takes flags as an argument
            pattern, flags = pattern[4:], ", 'i'"
        escaped = pattern.replace("'", "''")
        return f"CAST(regexp_matches({col}, '{escaped}'{flags}) AS DOUBLE)"


def _numeric_style(feature: str, texts: pa.Array) -> np.ndarray:
    if feature == "chars":
        return pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(float)
    counts = pc.count_substring_regex(pc.utf8_lower(texts), TOKEN_PATTERN)
    return counts.to_numpy(zero_copy_only=False).astype(float)


def parse_behavior(spec: str) -> Behavior:
    """Parse a behaviour spec; errors name the spec and what was expected."""
    spec = spec.strip()
    if not spec:
        raise RlauditError("empty behaviour spec; give a term, 're:REGEX', 'style:NAME' or 'module:function'")
    if spec.startswith("judge:"):
        from .llm.judge import JudgeBehavior, JudgeSpec

        judge = JudgeSpec.parse(spec)
        return Behavior(spec, judge.name, "judge", func=JudgeBehavior(judge))
    if spec.startswith("any:"):
        phrases = [p.strip() for p in spec[4:].split("|") if p.strip()]
        if not phrases:
            raise RlauditError(f"behaviour {spec!r}: 'any:' needs phrases separated by '|', e.g. 'any:goblin|gremlin'")
        bodies = [term_regex(p).removeprefix("(?i)") for p in phrases]
        return Behavior(spec, phrases[0], "term", pattern=f"(?i)(?:{'|'.join(bodies)})")
    if spec.startswith("re:"):
        pattern = spec[3:]
        try:
            pc.match_substring_regex(pa.array([""]), pattern)
        except pa.ArrowInvalid as exc:
            raise RlauditError(f"behaviour {spec!r}: invalid RE2 regex: {exc}") from None
        return Behavior(spec, spec, "regex", pattern=pattern)
    if spec.startswith("style:"):
        name = spec[6:]
        feature = STYLE_FEATURES.get(name)
        if feature is None:
            raise RlauditError(f"behaviour {spec!r}: unknown style feature; known: {', '.join(STYLE_FEATURES)}")
        return Behavior(spec, spec, "style", pattern=feature.regex, numeric=feature.numeric)
    module, sep, func = spec.partition(":")
    if sep and re.fullmatch(r"[A-Za-z_][\w.]*", module) and re.fullmatch(r"[A-Za-z_]\w*", func):
        try:
            fn = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as exc:
            raise RlauditError(f"behaviour {spec!r}: cannot import predicate {func} from {module}: {exc}") from None
        if not callable(fn):
            raise RlauditError(f"behaviour {spec!r}: {module}.{func} is not callable")
        return Behavior(spec, func, "python", func=fn)
    return Behavior(spec, " ".join(tokenize(spec)) or spec, "term", pattern=term_regex(spec))
