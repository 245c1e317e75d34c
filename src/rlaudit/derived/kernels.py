"""Optional compiled kernels (numba) for the term-set hot loop of `rlaudit.derived.tokens`.

Why: a cold audit spends most of its `emerging` time in `tokens._compute_parts`, and there the numpy path makes
many full passes over temporaries of ~200M elements per 1M rollouts (byte masks, n-gram keys, probe rounds,
a sort of every (row, term) pair, a searchsorted for the prompt copies). No pass dominates; the cost is the
number of passes. Small loops, each walking its input once, do the same work:

- `ascii_token_hashes`: tokenises ASCII texts and hashes each token (`_tokenise`), bit-identical to
  `tokhash._ascii_tokens` + `tokhash.span_hashes` (a polynomial hash of the case-folded byte codes modulo 2^64,
  then the length mix and `splitmix64`). Branch-free per byte (~2.4 ns per byte; see `_tokenise`).
- `unicode_token_hashes`: the same for texts in any script, a code point at a time, with DuckDB's own lower-casing
  and RE2's character classes as tables (`tokhash.unicode_tables`), for the non-ASCII texts.
- `row_term_ids`: per row of token hashes, forms the 1..max_n-gram keys exactly as `tokens.ngram_keys`
  (`tokens._ngram_key` folded left to right), probes the vocabulary's open-addressing table (`tokens._Lookup`'s
  own arrays, so both paths read one table), and emits the distinct term ids of the row, sorted, leaving out
  those its prompt holds. It equals `_distinct_pairs(*lookup.match(*ngram_keys(...)))` minus the prompt's
  pairs, keys naming several terms included (tests/core/test_kernels.py checks both against the numpy path).
  For prompts, the terms whose key token is one of the row's words are added (`keys`). Found ids are
  collected without a branch per key and deduplicated and sorted by a bitmap (see `_term_ids`).
- `term_ids`: both in one pass per text, which is how the term sets call them (`tokhash.span_term_ids`): an
  ASCII text's bytes are tokenised into a small buffer that stays in cache and looked up from there, so no
  array of every token's hash is written and read back (the 1M benchmark's 70M tokens: 0.56 GB of fresh pages
  across the batches); texts tokenised elsewhere (non-ASCII ones) come as hashes. `row_term_ids` is its
  hash-only form.

A third loop serves the cell tables the term-set workers write beside the term sets (`rlaudit.derived.termcells`):

- `cell_term_counts`: the rollouts per (cell, term) of a part (`termcells.part_cellterms`), rows taken cell by
  cell with one counter per term, instead of a sort of every (cell, term) pair (~3x as fast; the same rows,
  grouped by cell rather than sorted by term id within a cell).

- `step_term_counts`: the per-step counts of the term sets (`tokens._step_term_counts`: rollouts per
  (file, step, split) cell and term, and those whose prompt holds the term) into dense arrays, one pass over the
  pairs and one over the prompts' terms per (cell, prompt), instead of gathers, repeats and bincounts of every
  pair (~16% of the term-set batches' CPU at 1M rollouts in numpy, ~4% compiled).

One serves the vocabulary's choice (`tokens._sample_df`):

- `ngram_prevalences`: the document frequencies of the sample's n-grams, overall and per (bin, condition) cell,
  in two passes over the token hashes (a byte counter per low key bits screens out the n-grams too rare to
  qualify, then a hash table counts the rest), and their prevalences folded from the (n-gram, cell) counts in a
  third loop, instead of occurrence arrays, sorts and scatters (equal to the numpy path, tested).

Three serve ingest, built apart (`ingest`: an ingest never compiles the term-set kernels) and used only where numba
is imported already (`rlaudit.kernels.import_for_ingest`):

- `gather_spans`: byte ranges copied range by range (`text._cut`).
- `think_spans`: the reasoning/answer split of every completion (`text.reasoning_spans`) in one pass per row,
  equal to its numpy path (tested): 0.114 -> 0.031 CPU s per 200,000 completions of the 1M benchmark.
- `completion_chars`: each completion's characters (`text.completion_facts`, kept in the part: `layout.FACTS`),
  eight bytes at a time, equal to Arrow's `utf8_length` (tested).

Which path runs, and how the kernels are compiled and cached: `rlaudit.kernels` (`use_numba`, re-exported here
for the modules of this package). Each kernel has one signature (read-only arrays); compiled the first time, 7-10
CPU s, then loaded from numba's cache in about 0.5 CPU s with numba's import.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..kernels import Compiled, jit, use_numba  # noqa: F401 - use_numba: the path these kernels take

_MIX = np.uint64(0x9E3779B97F4A7C15)  # = cot.shingles._MIX and the n-gram multiplier of tokens._ngram_key
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_APOSTROPHE = np.uint8(ord("'"))

# ---------------------------------------------------------------------------------------------------------------
# Kernel sources: plain Python over numpy arrays, compiled by `compiled()` (`_build`). uint64 arithmetic only with uint64
# operands (numba widens uint64 op int64 to float64).

def _splitmix64(x):
    x = x + _MIX
    x = (x ^ (x >> _S30)) * _C1
    x = (x ^ (x >> _S27)) * _C2
    return x ^ (x >> _S31)


def _grow(a, need):
    out = np.empty(max(need, 2 * len(a)), a.dtype)
    out[:len(a)] = a
    return out


def _trailing_zeros(x):
    """Index of the lowest set bit of a uint64 (64 for 0). Replaced by LLVM's cttz (one instruction) when the
    kernels compile (`compiled`); this body is its meaning."""
    return (int(x) & -int(x)).bit_length() - 1 if x else 64


def _tokenise(data, s, e, cw, apostrophe, base, len_mix, out, k):
    """Store the hashes of the tokens of the ASCII text data[s:e] at out[k:] and return the new end (k plus the
    text's tokens). A token is a maximal run of word bytes, an apostrophe joining when word bytes of the same text
    are on both sides of it. The caller makes room for (e - s + 1) // 2 + 2 slots from k (at most one token per
    two bytes, and the slot written past the last).

    One pass over the bytes with a running token state (h: the hash so far, p: base^length, n: the length) that
    a non-token byte resets by masks, not branches: token ends are as unpredictable as word lengths, and a
    mispredicted branch per token cost more than the whole byte's work (0.35 -> 0.07 CPU s per 29 MB). The
    current hash is stored at out[k] at every byte and k advances where a token ends. The hash is the same
    polynomial as `tokhash.span_hashes` (codes[b] * base^i summed over the token's bytes i), then the length
    mix and `splitmix64`. Word bytes are found by `cw`, the codes of word bytes and 0 elsewhere (codes of word
    bytes are never 0, `ascii_token_hashes` checks); `apostrophe`: the apostrophe's code. Indices are cast to
    unsigned, which spares numba's negative-index wraparound in the loop."""
    zero, one = np.uint64(0), np.uint64(1)
    k0 = k
    h, p, n = zero, one, zero
    for j in range(s, e):
        b = data[np.uint64(j)]
        c = cw[b]
        # an apostrophe joins when it follows a token byte and a word byte of the same text follows it
        if b == _APOSTROPHE and n != zero and j + 1 < e and cw[data[np.uint64(j + 1)]] != zero:
            c = apostrophe
        out[np.uint64(k)] = h ^ (n * len_mix)  # kept (k advances) where a token ended before b
        k += (n != zero) & (c == zero)
        m = zero - np.uint64(c != zero)  # all ones on a token byte
        h = (h + c * p) & m
        p = p * base if c != zero else one
        n = (n + one) & m
    if n != zero:  # a token runs to the end of the text
        out[np.uint64(k)] = h ^ (n * len_mix)
        k += 1
    for i in range(k0, k):
        out[np.uint64(i)] = _splitmix64(out[np.uint64(i)])
    return k


def _word_codes(word, codes):
    """(cw, apostrophe) of `_tokenise`: the codes of word bytes (0 elsewhere), and the apostrophe's code."""
    cw = np.zeros(256, np.uint64)
    for b in range(256):
        if word[b]:
            cw[b] = codes[b]
    return cw, codes[_APOSTROPHE]


def _ascii_token_hashes(data, offsets, ends, is_ascii, word, codes, base, len_mix):
    """(hashes, per-text token counts) of the ASCII texts (others: no tokens), each text by `_tokenise`.

    The result is a view of the first k slots of the output buffer, not a copy: the buffer is sized ahead
    (len(data) // 3 tokens, grown when a text might not fit: English runs ~3.9 bytes a token, and a quarter was
    outgrown, so copied, by the vocabulary sample's texts) and the slots past k are never written,
    so they take address space only, no memory; the copy cost more than the tokenising (fresh pages).

    `ends` (empty: none): text t is data[offsets[t]:ends[t]] instead, texts where they lie in a larger buffer
    (answers and reasonings within their completions, `tokhash.span_token_hashes`); then len(offsets) = n_texts."""
    spans = len(ends) > 0
    n_texts = len(ends) if spans else len(offsets) - 1
    counts = np.zeros(n_texts, np.int64)
    cw, apostrophe = _word_codes(word, codes)
    out = np.empty(max(16, len(data) // 3), np.uint64)
    k = 0
    for t in range(n_texts):
        if not is_ascii[t]:
            continue
        s, e = offsets[t], ends[t] if spans else offsets[t + 1]
        if k + (e - s + 1) // 2 + 2 > len(out):  # room for the text's tokens
            out = _grow(out, k + (e - s + 1) // 2 + 2)
        k0 = k
        k = _tokenise(data, s, e, cw, apostrophe, base, len_mix, out, k)
        counts[t] = k - k0
    return out[:k], counts


#: `_unicode_tokenise`'s classes of a (lower-cased) code point: a word character, a character that is a token on
#: its own (CJK). Both may hold (a Han numeral): it continues a word, and starts a token of its own.
WORD_CLASS, SINGLE_CLASS = 1, 2


def _decode(data, j, e):
    """(code point, its byte length) of the UTF-8 character at data[j] (j < e). Arrow strings are valid UTF-8;
    a buffer that is not (a stray or truncated byte, a code point past U+10FFFF) reads as U+FFFD, so that no table
    lookup leaves its table."""
    b = np.int64(data[j])
    if b < 0x80:
        return b, 1
    n = 2 if (b & 0xE0) == 0xC0 else 3 if (b & 0xF0) == 0xE0 else 4 if (b & 0xF8) == 0xF0 else 1
    if n == 1 or j + n > e:
        return np.int64(0xFFFD), 1
    cp = b & (0x7F >> n)
    for q in range(1, n):
        cp = (cp << 6) | (np.int64(data[j + q]) & 0x3F)
    if cp > 0x10FFFF:
        return np.int64(0xFFFD), n
    return cp, n


def _add_code_point(cp, codes, base, h, p, n):
    """The token state (hash so far, base^length, length in bytes) after the UTF-8 bytes of `cp`."""
    if cp < 0x80:
        return h + codes[cp] * p, p * base, n + np.uint64(1)
    if cp < 0x800:
        lead, rest = 0xC0 | (cp >> 6), 1
    elif cp < 0x10000:
        lead, rest = 0xE0 | (cp >> 12), 2
    else:
        lead, rest = 0xF0 | (cp >> 18), 3
    h += codes[lead] * p
    p *= base
    for q in range(rest - 1, -1, -1):
        h += codes[0x80 | ((cp >> (6 * q)) & 0x3F)] * p
        p *= base
    return h, p, n + np.uint64(rest + 1)


def _unicode_token_hashes(data, starts, ends, take, lower, classes, codes, base, len_mix):
    """(hashes, per-text token counts) of the texts data[starts[t]:ends[t]] with take[t] (others: no tokens),
    where they lie: the tokens of `behaviors.TOKEN_PATTERN` over the lower-cased text, hashed as `tokhash.span_hashes`
    hashes the lower-cased token's UTF-8 bytes, by one pass over the code points. `lower` and `classes` are
    tables over all code points taken from DuckDB itself (`tokhash.unicode_tables`): its `lower` of each code
    point and whether RE2 matches the lowered code point with the pattern's word or single-character class.

    The pattern's meaning, left to right: a single-class character where no token is open is a token; a word
    character opens a token or continues the open one; an apostrophe continues it when a word character follows;
    anything else closes it (and is looked at again as if no token were open)."""
    n_texts = len(starts)
    counts = np.zeros(n_texts, np.int64)
    out = np.empty(16, np.uint64)
    k = 0
    zero, one = np.uint64(0), np.uint64(1)
    for t in range(n_texts):
        if not take[t]:
            continue
        s, e = starts[t], ends[t]
        if k + (e - s) + 2 > len(out):  # at most a token per byte
            out = _grow(out, k + (e - s) + 2)
        k0 = k
        open_ = False
        h, p, n = zero, one, zero
        j = s
        while j < e:
            cp, width = _decode(data, j, e)
            lc = lower[cp]
            c = classes[lc]
            if open_ and c & WORD_CLASS:
                h, p, n = _add_code_point(lc, codes, base, h, p, n)
                j += width
                continue
            if open_ and lc == 0x27 and j + 1 < e:
                nxt, _ = _decode(data, j + 1, e)
                if classes[lower[nxt]] & WORD_CLASS:
                    h, p, n = _add_code_point(lc, codes, base, h, p, n)
                    j += width
                    continue
            if open_:  # the token ends before this character, which is looked at afresh
                out[k] = _splitmix64(h ^ (n * len_mix))
                k += 1
                open_ = False
                h, p, n = zero, one, zero
            if c & SINGLE_CLASS:
                h1, _, n1 = _add_code_point(lc, codes, base, zero, one, zero)
                out[k] = _splitmix64(h1 ^ (n1 * len_mix))
                k += 1
            elif c & WORD_CLASS:
                open_ = True
                h, p, n = _add_code_point(lc, codes, base, zero, one, zero)
            j += width
        if open_:
            out[k] = _splitmix64(h ^ (n * len_mix))
            k += 1
        counts[t] = k - k0
    return out[:k], counts


def _code_point_flags(data, starts, ends, take, table):
    """Per text data[starts[t]:ends[t]] with take[t], the OR of table[cp] over its code points (0 elsewhere):
    which of several character classes the text holds a character of, in one pass (`styles.code_point_styles`)."""
    n_texts = len(starts)
    out = np.zeros(n_texts, np.uint8)
    for t in range(n_texts):
        if not take[t]:
            continue
        j, e = starts[t], ends[t]
        found = np.uint8(0)
        while j < e:
            if data[j] < 0x80:  # ASCII bytes: no class of these holds one (the caller's table says so)
                j += 1
                continue
            cp, width = _decode(data, j, e)
            found |= table[cp]
            j += width
        out[t] = found
    return out


def _gather_spans(data, lo, hi):
    """(bytes, int64 offsets): the byte ranges data[lo[i]:hi[i]] one after another (`text._cut`), copied range
    by range instead of through a per-byte index array (two int64 temporaries per byte in numpy)."""
    n = len(lo)
    off = np.empty(n + 1, np.int64)
    off[0] = 0
    for i in range(n):
        off[i + 1] = off[i] + (hi[i] - lo[i])
    out = np.empty(off[n], np.uint8)
    for i in range(n):
        out[off[i]:off[i + 1]] = data[lo[i]:hi[i]]
    return out, off


def _think_spans(data, begin, end, open_tag, close_tag):
    """`text.reasoning_spans`' rules for the completions data[begin[i]:end[i]] in one pass per row (absolute byte
    positions, as the numpy path): (reasoning start, reasoning end, answer start, answer end, has reasoning,
    unsure). The close tag is searched byte by byte from the row's start (its first occurrence inside the row),
    the leading RE2 whitespace and the open tag are read where they lie. The answer's edges are trimmed of RE2
    whitespace where the run stops at printable ASCII or fills the region (what `utf8_trim_whitespace` trims
    there too); elsewhere (a Unicode space, a control byte) the row is `unsure` and its untrimmed region is
    given, for the caller to trim by Arrow's rules. The numpy path makes a dozen passes over every byte and
    temporaries of the candidate positions; this reads each byte about once."""
    n = len(begin)
    r_start = np.empty(n, np.int64)
    r_end = np.empty(n, np.int64)
    a_start = np.empty(n, np.int64)
    a_end = np.empty(n, np.int64)
    has = np.zeros(n, np.bool_)
    unsure = np.zeros(n, np.bool_)
    ko, kc = len(open_tag), len(close_tag)
    first = close_tag[0]
    for i in range(n):
        b, e = begin[i], end[i]
        at = -1
        j = b
        while j + kc <= e:
            if data[j] == first:
                same = True
                for q in range(1, kc):
                    if data[j + q] != close_tag[q]:
                        same = False
                        break
                if same:
                    at = j
                    break
            j += 1
        closed = at >= 0
        stop = at if closed else e
        lead = b
        while lead < stop and _is_re2_space(data[lead]):
            lead += 1
        opened = lead + ko <= stop
        if opened:
            for q in range(ko):
                if data[lead + q] != open_tag[q]:
                    opened = False
                    break
        r_start[i] = lead + ko if opened else lead
        r_end[i] = stop
        has[i] = closed or opened
        if opened and not closed:  # an unclosed tag: all reasoning, empty answer
            a_start[i] = e
            a_end[i] = e
            continue
        lo = at + kc if closed else b
        hi = e
        s = lo
        while s < hi and _is_re2_space(data[s]):
            s += 1
        t = hi
        while t > s and _is_re2_space(data[t - 1]):
            t -= 1
        if (s < hi and not 0x21 <= data[s] < 0x7F) or (t > s and not 0x21 <= data[t - 1] < 0x7F):
            unsure[i] = True
            s, t = lo, hi
        a_start[i] = s
        a_end[i] = t
    return r_start, r_end, a_start, a_end, has, unsure


def _completion_chars(data, words, begin, end):
    """Characters of the UTF-8 texts data[begin[i]:end[i]] (`text.completion_facts`): their bytes less the bytes
    that continue a character (10xxxxxx), counted eight at a time where a text covers whole words of `words` (the
    data's bytes as aligned uint64): a byte's top bit set and the next bit clear, `x & ~(x << 1)` at the top bit of
    each byte, summed by one multiplication. ~8x the byte-at-a-time count, which cost most of what reading the
    facts from the part saves the per-part statistics."""
    n = len(begin)
    out = np.empty(n, np.int32)
    top, cont = np.uint8(0xC0), np.uint8(0x80)
    high = np.uint64(0x8080808080808080)
    ones = np.uint64(0x0101010101010101)
    one, seven, shift = np.uint64(1), np.uint64(7), np.uint64(56)
    nw = len(words)
    for i in range(n):
        b, e = begin[i], end[i]
        c = 0
        j = b
        while j < e and (j & 7) != 0:
            c += (data[j] & top) == cont
            j += 1
        w = j >> 3
        while w < nw and (w + 1) * 8 <= e:
            x = words[w]
            c += ((((x & ~(x << one)) & high) >> seven) * ones) >> shift
            w += 1
        j = max(j, w * 8)
        while j < e:
            c += (data[j] & top) == cont
            j += 1
        out[i] = (e - b) - c
    return out


def _is_re2_space(c):
    """RE2's \\s: tab, newline, form feed, carriage return, space (not the vertical tab)."""
    return c == 32 or c == 9 or c == 10 or c == 12 or c == 13


def _set_ids(bits, ids, lo, hi):
    """Set the bits of ids[lo:hi] in the bitmap `bits`."""
    one, six, low = np.uint64(1), np.uint64(6), np.uint64(63)
    for q in range(lo, hi):
        t = np.uint64(ids[q])
        bits[t >> six] |= one << (t & low)


def _probe(key, table, ukeys, rounds):
    """The index into ukeys of `key` in an open-addressing table (`tokens._Lookup`'s arrays), or -1."""
    size = len(table)
    slot = np.int64(key & np.uint64(size - 1))
    for _ in range(rounds):  # linear probing; no key lies `rounds` or more slots from home
        u = table[slot]
        if u < 0:
            return -1
        if ukeys[u] == key:
            return u
        slot = (slot + 1) & (size - 1)
    return -1


def _term_ids(data, starts, ends, given, values, offsets, word, codes, base, len_mix, max_n,
              table, ukeys, ustart, ucount, ids, rounds, n_ids,
              k_table, k_ukeys, k_start, k_count, k_ids, k_rounds, excl_of_row, excl_off, excl_ids):
    """(int64 token counts, int64 offsets, int32 ids): per row, its tokens, and its distinct term ids in
    increasing order: those of its 1..max_n-grams (`table`...: `tokens._Lookup`'s arrays), plus those its words
    name in the key-token lookup (`k_table`...; an empty k_table: none), minus those of its exclusion list
    (excl_ids[excl_off[p]:excl_off[p + 1]] with p = excl_of_row[row]; an empty excl_of_row excludes nothing).

    A row's tokens are its text's, data[starts[r]:ends[r]], tokenised here (`_tokenise`, an ASCII text) into a
    small buffer that stays in cache, where given[r] < 0; else the token hashes values[offsets[g]:offsets[g + 1]]
    with g = given[r] (texts tokenised elsewhere: the non-ASCII ones, or rows given as hashes,
    `row_term_ids`). So a text's token hashes never make a run-sized array: its bytes go to its term ids in one
    pass per row (the former pair of kernels, tokeniser and lookup, wrote and read back 8 bytes per token, and
    the tokeniser's output was fresh pages).

    The lookup is built for the CPU's branch predictor: about half the keys name a term, so "found?" branches
    mispredict, and they cost more than the work. So, per key (up to max_n per token):
    - its home slot answers it with two independent loads from per-slot copies of the table (`slot_key`,
      `slot_val`: the key there, and its term id, -1 for an empty slot, -2 - u for a key u naming several
      terms); the id is stored at hits[n_hits] and n_hits advances when it is the key's (no branch);
    - the rare keys the home slot cannot settle are put aside (`pend`) and probed in the table as before,
      after the row's tokens: those whose home holds a key naming several terms, or holds another key while
      some key homed there was displaced by probing (`unsettled`). Another key at a settled home means the key
      is absent: at the vocabulary's ~5% load, ~1 in 20 absent keys meets one, and probing them all (~3% of the
      keys of a 20,000-answer part) cost ~10% of the kernel.
    A row's ids are then set in a bitmap of all ids (`bits`: duplicates fold), and emitted, in increasing
    order, by a scan of its words without the excluded ones (`ban`, a bitmap of the current exclusion list,
    rebuilt when the list changes: rows of a prompt are usually adjacent). No per-row sort, no stamps.
    Keys of max_n <= 3 (the vocabulary's default 3, and 1) are held in three scalars; longer n-grams in an
    array. The ids are a view of the output buffer's first slots (see `_ascii_token_hashes`)."""
    n_rows = len(given)
    cw, apostrophe = _word_codes(word, codes)
    size = len(table)
    mask = np.uint64(size - 1)
    one, six = np.uint64(1), np.uint64(6)
    slot_key = np.empty(size, np.uint64)
    slot_val = np.empty(size, np.int32)
    unsettled = np.zeros(size, np.bool_)  # a key homed here may be elsewhere, or the key here names several terms
    for q in range(size):
        u = table[q]
        if u < 0:
            slot_key[q] = np.uint64(q + 1) & mask  # a key whose home is another slot: equals no key homed here
            slot_val[q] = -1
        else:
            slot_key[q] = ukeys[u]
            slot_val[q] = ids[ustart[u]] if ucount[u] == 1 else -2 - u
            unsettled[q] |= ucount[u] != 1
            its_home = np.int64(ukeys[u] & mask)
            unsettled[its_home] |= its_home != q  # its key was displaced by probing
    n_words = max((n_ids + 63) >> 6, 1)
    bits = np.zeros(n_words, np.uint64)
    ban = np.zeros(n_words, np.uint64)
    last = -1
    counts = np.zeros(n_rows, np.int64)
    out_off = np.zeros(n_rows + 1, np.int64)
    out = np.empty(max(64, len(values) + len(data) // 4), np.int32)
    tok = np.empty(256, np.uint64)
    cur = np.zeros(max_n + 1, np.uint64)  # cur[n]: key of the n-gram ending at the current token (max_n > 3)
    hits = np.empty(64, np.int32)
    pend = np.empty(64, np.uint64)
    big = np.int64(1) << 62
    from2 = 1 if max_n >= 2 else big  # position in the row from which a token ends a 2-gram (3-gram)
    from3 = 2 if max_n >= 3 else big
    per_token = max(max_n, 1)  # keys per token (words always, as `tokens.ngram_keys`)
    k = 0
    exclude, key_tokens = len(excl_of_row) > 0, len(k_table) > 0
    for r in range(n_rows):
        g = given[r]
        # the row's token hashes, tok[:nt]
        room = offsets[g + 1] - offsets[g] if g >= 0 else (ends[r] - starts[r] + 1) // 2 + 2
        if room > len(tok):
            tok = np.empty(max(room, 2 * len(tok)), np.uint64)
        if g >= 0:
            nt = offsets[g + 1] - offsets[g]
            tok[:nt] = values[offsets[g]:offsets[g + 1]]
        else:
            nt = _tokenise(data, starts[r], ends[r], cw, apostrophe, base, len_mix, tok, 0)
        counts[r] = nt
        if exclude:
            p = excl_of_row[r]
            if p != last:
                if last >= 0:
                    for q in range(excl_off[last], excl_off[last + 1]):
                        ban[np.uint64(excl_ids[q]) >> six] = 0
                _set_ids(ban, excl_ids, excl_off[p], excl_off[p + 1])
                last = p
        n_new = 0  # ids set in `bits` for this row (an upper bound on those emitted)
        if key_tokens:  # the terms its words are the key token of (prompts: few rows, a branch per word)
            for i in range(nt):
                u = _probe(tok[i], k_table, k_ukeys, k_rounds)
                if u >= 0:
                    _set_ids(bits, k_ids, k_start[u], k_start[u] + k_count[u])
                    n_new += k_count[u]
        if per_token * nt + 1 > len(hits):  # one slot per key, and the one written past the last
            hits = np.empty(per_token * nt + 1 + len(hits), np.int32)
            pend = np.empty(len(hits), np.uint64)
        n_hits = 0
        n_pend = 0
        if max_n <= 3:
            k1 = np.uint64(0)
            k2 = np.uint64(0)
            for i in range(nt):
                h = tok[np.uint64(i)]
                k3 = _splitmix64(k2 * _MIX + h)
                k2 = _splitmix64(k1 * _MIX + h)
                k1 = h
                for n in range(3):  # unrolled by LLVM
                    key = k1 if n == 0 else (k2 if n == 1 else k3)
                    ok = i >= (0 if n == 0 else (from2 if n == 1 else from3))
                    home = key & mask
                    v = slot_val[home]
                    good = (slot_key[home] == key) & (v >= 0) & ok
                    hits[np.uint64(n_hits)] = v
                    n_hits += good
                    if ok & unsettled[home] & (not good):
                        pend[np.uint64(n_pend)] = key
                        n_pend += 1
        else:
            for i in range(nt):
                h = tok[np.uint64(i)]
                for n in range(max_n, 1, -1):
                    cur[n] = _splitmix64(cur[n - 1] * _MIX + h)
                cur[1] = h
                for n in range(1, max_n + 1):
                    key = cur[n]
                    ok = i + 1 >= n
                    home = key & mask
                    v = slot_val[home]
                    good = (slot_key[home] == key) & (v >= 0) & ok
                    hits[np.uint64(n_hits)] = v
                    n_hits += good
                    if ok & unsettled[home] & (not good):
                        pend[np.uint64(n_pend)] = key
                        n_pend += 1
        _set_ids(bits, hits, 0, n_hits)
        n_new += n_hits
        for j in range(n_pend):
            u = _probe(pend[j], table, ukeys, rounds)
            if u >= 0:
                _set_ids(bits, ids, ustart[u], ustart[u] + ucount[u])
                n_new += ucount[u]
        if k + min(n_new, n_ids) > len(out):  # outside the scan: an array reassigned in a loop costs refcounts
            out = _grow(out, k + min(n_new, n_ids))
        for w in range(n_words):
            x = bits[w] & ~ban[w]
            bits[w] = 0
            while x:
                out[k] = (w << 6) + np.int64(_trailing_zeros(x))
                k += 1
                x &= x - one
        out_off[r + 1] = k
    return counts, out_off, out[:k]


def _cell_term_counts(order, cell, off_a, ids_a, off_b, ids_b, use_b, n_ids):
    """(cell, id, count) of the distinct (cell, term id) pairs of rows' id lists (place a of every row, place b
    of the rows with use_b), by cell (ids of a cell in the order first seen); `order`: the rows sorted by cell.
    An id's first sighting in a cell is appended without a branch (stored always, the count advancing when its
    counter was 0): about three sightings in four are first ones, at no predictable place, so a branch there
    mispredicted often (the kernel alone: 1.7x the speed on 10 parts of the 1M benchmark run).
    The results are views of buffers sized for every pair (see `_ascii_token_hashes`)."""
    cnt = np.zeros(max(n_ids, 1), np.int32)
    buf = np.empty(max(n_ids, 1) + 1, np.int32)
    size = len(ids_a) + len(ids_b)
    out_c, out_t, out_x = np.empty(size, np.int64), np.empty(size, np.int32), np.empty(size, np.int32)
    k = 0
    i = 0
    n = len(order)
    while i < n:
        c = cell[order[i]]
        m = 0
        j = i
        while j < n and cell[order[j]] == c:
            r = order[j]
            for q in range(off_a[r], off_a[r + 1]):
                t = ids_a[np.uint64(q)]
                x = cnt[t]
                cnt[t] = x + 1
                buf[np.uint64(m)] = t
                m += x == 0
            if use_b[r]:
                for q in range(off_b[r], off_b[r + 1]):
                    t = ids_b[np.uint64(q)]
                    x = cnt[t]
                    cnt[t] = x + 1
                    buf[np.uint64(m)] = t
                    m += x == 0
            j += 1
        for q in range(m):  # in the order first seen (a sort per cell would cost more than the counting)
            t = buf[q]
            out_c[k] = c
            out_t[k] = t
            out_x[k] = cnt[t]
            cnt[t] = 0
            k += 1
        i = j
    return out_c[:k], out_t[:k], out_x[:k]


def _step_term_counts(cell, off, ids, at_risk, cp_cell, cp_prompt, cp_count, pt_off, pt_ids, n_cells, n_ids):
    """Dense (cell, term id) counts, index cell * n_ids + id: x, the ids of the rows at risk (row r's are
    ids[off[r]:off[r + 1]]); m, per (cell, prompt) with cp_count rollouts, that count added to each of the
    prompt's terms (pt_ids[pt_off[p]:pt_off[p + 1]])."""
    x = np.zeros(max(n_cells * n_ids, 0), np.int64)
    m = np.zeros(max(n_cells * n_ids, 0), np.int64)
    for r in range(len(off) - 1):
        if at_risk[r]:
            base = cell[r] * n_ids
            for q in range(off[r], off[r + 1]):
                x[base + ids[q]] += 1
    for j in range(len(cp_cell)):
        k = cp_count[j]
        if k:
            base = cp_cell[j] * n_ids
            p = cp_prompt[j]
            for q in range(pt_off[p], pt_off[p + 1]):
                m[base + pt_ids[q]] += k
    return x, m


def _ngram_keys_at(cur, h, max_n):
    """Advance `cur` by one token of hash h: cur[n] becomes the key of the n-gram ending at that token (as
    `tokens.ngram_keys`: a word's hash, `_splitmix64(prev * _MIX + h)` for a longer one)."""
    for n in range(max_n, 1, -1):
        cur[n] = _splitmix64(cur[n - 1] * _MIX + h)
    cur[1] = h


def _ngram_prevalences(values, offsets, cell, rows, n_cond, null_cond, max_n, min_count, sketch_bits):
    """The 1..max_n-grams of rows of token hashes (flat `values`, per-row `offsets`) that may be found in `min_count`
    rows or more (others may be left out), with their document frequencies and prevalences in the rows' cells
    (`cell` per row, each cell's rows adjacent; cell = bin * n_cond + condition index, `rows` the rows per cell,
    `null_cond` the NULL condition's index or -1), as `tokens._prevalences` computes them from the rows per
    (n-gram, cell).

    Per n-gram (in order of first appearance): its key, the rows holding it, its first occurrence (row, start token
    within the row, n), pmax and spread (see `tokens._prevalences`).

    Two passes over the tokens. Most distinct n-grams occur once (~1.3M distinct of ~4.6M occurrences at the 1M
    benchmark's sample, ~50k in 5 rows or more), and in a hash table each costs cache misses; so the first pass
    counts occurrences per low `sketch_bits` bits of the key (`sketch`: bytes, saturating at 255; one
    increment per occurrence, misses that overlap), and the second enters into the table only the n-grams whose
    count reaches min_count: occurrences are at least rows, and keys sharing low bits only add, so no n-gram of
    min_count rows is left out. Each counter that reaches min_count holds at least one n-gram that enters, so
    their number sizes the table and the per-n-gram arrays once (doubled only past 1.5 times that).
    Rows are taken in order, so an n-gram's repeats within a row are told by its last row, and, cells being
    adjacent, its rows in the current cell by one running counter, written as a record (n-gram, cell, rows) when
    its next row is in another cell (and at the end). A slot holds its key beside its id (`slots`: key, id + 1,
    0 for empty), and an n-gram's running state (last row, rows, current cell, rows in it) is one 16-byte record
    (`state`). The table is doubled before a row could fill it past half.

    The records (~0.6M per place at the 1M benchmark) are then folded, in the order written, into each n-gram's
    prevalences (`_fold_records`, ~0.01 CPU s a place) instead of being returned for numpy's sorts and scatters
    (`tokens._prevalences`, ~0.1 CPU s a place, and the records' selection before it). Tried and slower: folding
    each record as it is written (the scan ~50% slower), or whenever a small buffer of them fills (the n-grams'
    running values, 64 bytes each, then compete with the table for the cache: ~20% slower). Rows and cells must
    fit in 32 bits (`ngram_prevalences` checks)."""
    n_rows = len(offsets) - 1
    cur = np.zeros(max_n + 1, np.uint64)  # cur[n]: key of the n-gram ending at the current token
    threshold = min(max(min_count, 0), 255)
    smask = np.uint64((np.int64(1) << sketch_bits) - 1)
    sketch = np.zeros(np.int64(1) << sketch_bits if threshold > 1 else 1, np.uint8)
    passing = 0  # counters reaching the threshold: at least as many n-grams enter the table
    if threshold > 1:
        for r in range(n_rows):
            s, e = offsets[r], offsets[r + 1]
            for i in range(s, e):
                _ngram_keys_at(cur, values[i], max_n)
                for n in range(1, min(max_n, i - s + 1) + 1):
                    q = np.int64(cur[n] & smask)
                    x = sketch[q]
                    sketch[q] = x + (x < 255)
        for q in range(len(sketch)):
            passing += sketch[q] >= threshold
    cap = max(passing + passing // 2, 1 << 11)
    size = 1 << 12
    while size < 2 * cap:
        size <<= 1
    slots = np.zeros(2 * size, np.uint64)
    ukeys = np.empty(cap, np.uint64)
    state = np.empty(4 * cap, np.int32)
    first = np.empty(3 * cap, np.int64)  # row, start, n
    rec = np.empty(3 * 8 * cap, np.int32)  # id, cell, rows: ~8 per n-gram at the 1M benchmark's sample
    m = 0
    n_rec = 0
    for r in range(n_rows):
        c = np.int32(cell[r])
        r32 = np.int32(r)
        s, e = offsets[r], offsets[r + 1]
        most = max_n * (e - s)  # new n-grams and records this row may add: room made outside the scan
        if m + most > len(ukeys):
            ukeys, state, first = _grow(ukeys, m + most), _grow(state, 4 * (m + most)), _grow(first, 3 * (m + most))
        if 3 * (n_rec + most) > len(rec):
            rec = _grow(rec, 3 * (n_rec + most))
        if 2 * (m + most) > size:  # it might pass half full: more slots, every key placed again
            while 2 * (m + most) > size:
                size <<= 1
            slots = np.zeros(2 * size, np.uint64)
            for v in range(m):
                p = np.int64(ukeys[v] & np.uint64(size - 1))
                while slots[2 * p + 1] != 0:
                    p = (p + 1) & (size - 1)
                slots[2 * p] = ukeys[v]
                slots[2 * p + 1] = v + 1
        mask = np.uint64(size - 1)
        for i in range(s, e):
            _ngram_keys_at(cur, values[i], max_n)
            for n in range(1, min(max_n, i - s + 1) + 1):
                key = cur[n]
                if threshold > 1 and sketch[np.int64(key & smask)] < threshold:
                    continue  # in fewer than min_count rows
                q = np.int64(key & mask)
                while True:
                    u1 = slots[2 * q + 1]
                    if u1 == 0 or slots[2 * q] == key:
                        break
                    q = (q + 1) & (size - 1)
                if u1 == 0:  # a new n-gram
                    slots[2 * q] = key
                    slots[2 * q + 1] = m + 1
                    ukeys[m] = key
                    state[4 * m], state[4 * m + 1], state[4 * m + 2], state[4 * m + 3] = r32, 1, c, 1
                    first[3 * m], first[3 * m + 1], first[3 * m + 2] = r, i - s - n + 1, n
                    m += 1
                    continue
                u = np.int64(u1) - 1
                if state[4 * u] != r32:  # its first occurrence in this row
                    state[4 * u] = r32
                    state[4 * u + 1] += 1
                    if state[4 * u + 2] == c:
                        state[4 * u + 3] += 1
                    else:  # its rows of the previous cell are all counted
                        rec[3 * n_rec], rec[3 * n_rec + 1], rec[3 * n_rec + 2] = u, state[4 * u + 2], state[4 * u + 3]
                        n_rec += 1
                        state[4 * u + 2], state[4 * u + 3] = c, 1
    f = np.empty(8 * m)  # each n-gram's running prevalences (`_fold_records`)
    for u in range(m):
        _fold_start(f, u)
    fc = _fold_constants(rows, n_cond, null_cond, min_count)
    _fold_records(f, rec, n_rec, fc)
    pmax = np.empty(m)
    spread = np.empty(m)
    for u in range(m):  # the running counts still open: each n-gram's last record
        _fold(f, u, state[4 * u + 2], state[4 * u + 3], fc)
        pmax[u], spread[u] = _fold_result(f, u, fc)
    total = state[1:4 * m:4].astype(np.int64)
    return (ukeys[:m].copy(), total, first[0:3 * m:3].copy(), first[1:3 * m:3].copy(), first[2:3 * m:3].copy(),
            pmax, spread)


def _fold_constants(rows, n_cond, null_cond, min_count):
    """What folding a record needs of the sample's cells (`_fold`): rows per cell and per bin, each cell's bin and
    whether it counts within its condition (a named condition, where there are more than one), the number of bins
    that hold rows, whether prevalences within a condition count at all, min_count."""
    n_bins = max(len(rows) // n_cond, 1)
    bin_rows = np.zeros(n_bins, np.int64)
    for c in range(len(rows)):
        bin_rows[c // n_cond] += rows[c]
    bins_present = 0
    for b in range(n_bins):
        bins_present += bin_rows[b] > 0
    within = n_cond - (null_cond >= 0) > 1
    cell_bin = np.empty(len(rows), np.int64)
    cell_named = np.empty(len(rows), np.bool_)
    for c in range(len(rows)):
        cell_bin[c] = c // n_cond
        cell_named[c] = within and c % n_cond != null_cond
    return rows, bin_rows, cell_bin, cell_named, bins_present, within, min_count


def _fold_start(f, u):
    """Start n-gram u's running prevalences: f[8u:8u + 8] = open bin (-1: none), its rows, bins closed, highest
    and lowest prevalence over bins, pmax, highest within a condition (counts as floats, exact). One 64-byte
    line per n-gram: records come in no order of n-gram, and an array per value cost a cache miss apiece
    (2.5x the time)."""
    o = 8 * u
    f[o], f[o + 1], f[o + 2], f[o + 3], f[o + 4], f[o + 5], f[o + 6] = -1.0, 0.0, 0.0, 0.0, np.inf, 0.0, 0.0


def _fold_records(f, rec, n_rec, fc):
    """Fold the records (id, cell, rows) rec[:3 * n_rec] in order (`_fold`)."""
    for j in range(n_rec):
        _fold(f, rec[3 * j], rec[3 * j + 1], rec[3 * j + 2], fc)


def _fold(f, u, c, x, fc):
    """Fold one record into n-gram u's prevalences: it is in x rows of cell c, all of them. As `tokens._prevalences`
    (the same float64 divisions, maxima and minima, so the same values): its prevalence within c's condition,
    and its rows added to c's bin. An n-gram's records come in increasing cell order (rows are taken cell by
    cell), so its rows per bin are one running count, closed when a record of a later bin comes."""
    rows, bin_rows, cell_bin, cell_named, _, _, min_count = fc
    o = 8 * u
    if cell_named[c]:
        p = x / rows[c]
        f[o + 6] = max(f[o + 6], p)
        if x >= min_count:
            f[o + 5] = max(f[o + 5], p)
    b = cell_bin[c]
    if f[o] == b:
        f[o + 1] += x
    else:
        _close_bin(f, o, bin_rows, min_count)
        f[o], f[o + 1] = b, x


def _close_bin(f, o, bin_rows, min_count):
    """Fold an n-gram's rows in its open bin (its running values f[o:o + 8]; none open: nothing) into its
    prevalences over bins."""
    if f[o] < 0:
        return
    x = f[o + 1]
    p = x / bin_rows[np.int64(f[o])]
    f[o + 3] = max(f[o + 3], p)
    f[o + 4] = min(f[o + 4], p)
    if x >= min_count:
        f[o + 5] = max(f[o + 5], p)
    f[o + 2] += 1


def _fold_result(f, u, fc):
    """(pmax, spread) of n-gram u once all its records are folded (its last bin is closed here): spread is the
    highest less the lowest prevalence over bins (0 for the lowest when some bin lacks it), or the highest within
    a condition, whichever is larger."""
    _, bin_rows, _, _, bins_present, within, min_count = fc
    o = 8 * u
    _close_bin(f, o, bin_rows, min_count)
    spread = f[o + 3] - (f[o + 4] if f[o + 2] >= bins_present else 0.0)
    if within:
        spread = max(spread, f[o + 6])
    return f[o + 5], spread


def _build() -> SimpleNamespace:
    """The term-set kernels, compiled (see `Compiled`)."""
    import numba

    glob = globals()
    # helpers are looked up as globals when the kernels compile: jitted versions must be in place first
    for name in ("_splitmix64", "_grow", "_ngram_keys_at", "_word_codes", "_set_ids", "_probe", "_close_bin",
                 "_fold", "_fold_records", "_fold_start", "_fold_result", "_fold_constants", "_decode",
                 "_add_code_point"):
        glob[name] = jit(getattr(glob[name], "py_func", glob[name]))
    glob["_tokenise"] = jit(getattr(_tokenise, "py_func", _tokenise), inline="always")
    from numba.cpython.unsafe.numbers import trailing_zeros

    glob["_trailing_zeros"] = trailing_zeros  # LLVM's cttz
    # one signature each, arrays typed read-only (writable ones convert), so Arrow's read-only buffers and
    # numpy's own arrays share one compiled version (and one cache entry) instead of one per combination
    t = numba.types

    def ro(dtype: Any) -> Any:
        return t.Array(dtype, 1, "C", readonly=True)

    u8, i32, i64, u64, b1 = ro(t.uint8), ro(t.int32), ro(t.int64), ro(t.uint64), ro(t.boolean)
    return SimpleNamespace(
        ascii_token_hashes=jit(_ascii_token_hashes, (u8, i64, i64, b1, b1, u64, t.uint64, t.uint64)),
        unicode_token_hashes=jit(_unicode_token_hashes, (u8, i64, i64, b1, i32, u8, u64, t.uint64, t.uint64)),
        code_point_flags=jit(_code_point_flags, (u8, i64, i64, b1, u8)),
        term_ids=jit(_term_ids, (u8, i64, i64, i64, u64, i64, b1, u64, t.uint64, t.uint64, t.int64,
                                 i32, u64, i64, i64, i32, t.int64, t.int64, i32, u64, i64, i64, i32, t.int64,
                                 i64, i64, i32)),
        cell_term_counts=jit(_cell_term_counts, (i64, i64, i64, i32, i64, i32, b1, t.int64)),
        ngram_prevalences=jit(_ngram_prevalences, (u64, i64, i64, i64, t.int64, t.int64, t.int64, t.int64, t.int64)),
        step_term_counts=jit(_step_term_counts, (i64, i64, i32, b1, i64, i64, i64, i64, i32, t.int64,
                                                 t.int64)))


compiled = Compiled(_build)


def ascii_token_hashes(data: np.ndarray, offsets: np.ndarray, is_ascii: np.ndarray, word: np.ndarray,
                       codes: np.ndarray, base: int, len_mix: np.uint64, ends: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 token hashes, int64 token count per text) of the ASCII texts of a byte buffer with text offsets
    (texts with is_ascii False get no tokens); see `tokhash.token_hashes`. With `ends`, text t is
    data[offsets[t]:ends[t]] (texts where they lie). The hashes may be a view of a larger buffer whose
    unwritten tail takes address space only (see `_ascii_token_hashes`)."""
    c = np.ascontiguousarray
    word, codes = c(word, np.bool_), c(codes, np.uint64)
    if np.any(codes[word] == 0):  # the kernel tells word bytes by their non-zero code
        raise ValueError("the codes of word bytes must not be 0")
    ends = np.zeros(0, np.int64) if ends is None else c(ends, np.int64)
    return compiled().ascii_token_hashes(c(data, np.uint8), c(offsets, np.int64), ends, c(is_ascii, np.bool_),
                                         word, codes, np.uint64(base), np.uint64(len_mix))


def unicode_token_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, take: np.ndarray,
                         lower: np.ndarray, classes: np.ndarray, codes: np.ndarray, base: int, len_mix: np.uint64
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 token hashes, int64 token count per text) of the texts data[starts[t]:ends[t]] with `take` of a
    UTF-8 buffer, any script, where they lie (see `_unicode_token_hashes`; `tokhash` gives it the non-ASCII
    texts)."""
    c = np.ascontiguousarray
    return compiled().unicode_token_hashes(c(data, np.uint8), c(starts, np.int64), c(ends, np.int64),
                                           c(take, np.bool_),
                                           c(lower, np.int32), c(classes, np.uint8), c(codes, np.uint64),
                                           np.uint64(base), np.uint64(len_mix))


def code_point_flags(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, take: np.ndarray,
                     table: np.ndarray) -> np.ndarray:
    """uint8 per text data[starts[t]:ends[t]] with `take`: the OR of `table` (uint8 per code point, 0 for ASCII
    ones) over the text's non-ASCII code points (see `_code_point_flags`)."""
    c = np.ascontiguousarray
    if np.any(table[:0x80]):
        raise ValueError("code_point_flags reads non-ASCII characters only: the table must be 0 below 0x80")
    return compiled().code_point_flags(c(data, np.uint8), c(starts, np.int64), c(ends, np.int64), c(take, np.bool_),
                                       c(table, np.uint8))


def gather_spans(data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(bytes, int64 offsets) of the byte ranges data[lo[i]:hi[i]], concatenated (hi >= lo); None where the
    numpy path should run: numba not chosen, or not imported yet in this process (a copy is not worth numba's
    import, ~0.5 CPU s, e.g. in an ingest). Compiled alone, not with `compiled()`'s term-set kernels."""
    kernels = _ingest_kernels()
    if kernels is None:
        return None
    c = np.ascontiguousarray
    return kernels.gather_spans(c(data, np.uint8), c(lo, np.int64), c(hi, np.int64))


def _ingest_kernels() -> SimpleNamespace | None:
    """Ingest's kernels (`ingest`), or None where the numpy/Arrow paths should run: numba not chosen, or not
    imported yet in this process (an ingest alone does not pay numba's import for them, ~0.5 CPU s; an audit
    imports it before it ingests, `rlaudit.kernels.import_for_ingest`)."""
    return ingest() if "numba" in sys.modules and use_numba() else None


def think_spans(data: np.ndarray, begin: np.ndarray, end: np.ndarray, open_tag: bytes, close_tag: bytes
                ) -> tuple[np.ndarray, ...] | None:
    """`_think_spans` of the completions data[begin[i]:end[i]] (non-empty tags), or None where the numpy path
    should run (`_ingest_kernels`)."""
    kernels = _ingest_kernels() if close_tag else None
    if kernels is None:
        return None
    c = np.ascontiguousarray
    return kernels.think_spans(c(data, np.uint8), c(begin, np.int64), c(end, np.int64),
                                np.frombuffer(open_tag, np.uint8), np.frombuffer(close_tag, np.uint8))


def completion_chars(data: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray | None:
    """`_completion_chars` of the texts data[begin[i]:end[i]] (int32), or None where Arrow's `utf8_length` should
    run (`_ingest_kernels`)."""
    kernels = _ingest_kernels()
    if kernels is None:
        return None
    c = np.ascontiguousarray
    data = c(data, np.uint8)
    words = data[:len(data) // 8 * 8].view(np.uint64) if data.ctypes.data % 8 == 0 else np.zeros(0, np.uint64)
    return kernels.completion_chars(data, words, c(begin, np.int64), c(end, np.int64))


def row_term_ids(values: np.ndarray, offsets: np.ndarray, max_n: int, lookup: Any, n_ids: int,
                 exclude: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, keys: Any = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets per row, int32 term ids): the distinct ids of the terms (`lookup`, a `tokens._Lookup`)
    among each row of token hashes' 1..max_n-grams (flat `values`, int64 `offsets`), sorted. `exclude` = (list
    index of each row, list offsets, ids): ids to leave out per row (the prompt's terms); `keys`: a second
    `_Lookup` whose ids each word of a row adds (the key-token terms of a prompt). The ids may be a view of a
    larger buffer (see `_term_ids`)."""
    n_rows = len(offsets) - 1
    _, off, ids = term_ids(np.zeros(0, np.uint8), np.zeros(n_rows, np.int64), np.zeros(n_rows, np.int64),
                           np.arange(n_rows, dtype=np.int64), (values, offsets), None, None, max_n, lookup, n_ids,
                           exclude, keys)
    return off, ids


def term_ids(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, given: np.ndarray,
             hashes: tuple[np.ndarray, np.ndarray], word: np.ndarray | None, codes: np.ndarray | None,
             max_n: int, lookup: Any, n_ids: int, exclude: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
             keys: Any = None, base: int = 0, len_mix: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int64 token count per row, int64 offsets per row, int32 term ids) of rows that are ASCII texts
    data[starts[r]:ends[r]], tokenised here (where given[r] < 0, with the tokeniser's `word`, `codes`, `base`,
    `len_mix`, see `tokhash`), or token hashes given (`hashes` = (values, offsets), row r's the list given[r]):
    `row_term_ids` of the rows' token hashes in one pass (`_term_ids`)."""
    none = (np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int32))
    c = np.ascontiguousarray
    if word is None:
        word, codes = np.zeros(256, np.bool_), np.ones(256, np.uint64)
    word, codes = c(word, np.bool_), c(codes, np.uint64)
    if np.any(codes[word] == 0):  # the tokeniser tells word bytes by their non-zero code
        raise ValueError("the codes of word bytes must not be 0")

    def table(lk: Any) -> list[Any]:
        if lk is None:
            return [np.zeros(0, np.int32), np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                    np.zeros(0, np.int32), 0]
        return [c(lk.table, np.int32), c(lk.ukeys, np.uint64), c(lk.start, np.int64), c(lk.count, np.int64),
                c(lk.ids, np.int32), int(lk.rounds)]

    of_row, off, excl = exclude or none
    values, offsets = hashes
    return compiled().term_ids(c(data, np.uint8), c(starts, np.int64), c(ends, np.int64), c(given, np.int64),
                               c(values, np.uint64), c(offsets, np.int64), word, codes, np.uint64(base),
                               np.uint64(len_mix), int(max_n), *table(lookup), int(n_ids), *table(keys),
                               c(of_row, np.int64), c(off, np.int64), c(excl, np.int32))


def cell_term_counts(cell: np.ndarray, lists: list[tuple[np.ndarray, np.ndarray]], use_second: np.ndarray,
                     n_ids: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell, term id, rollouts) of the distinct (cell, term id) pairs of the rows' term lists, by cell (a cell's
    ids in the order first seen, not sorted): `cell` per row (non-negative), `lists` two places' id lists
    (offsets per row, ids; the first counted in every row, the second in the rows with `use_second`). One pass
    over the pairs, rows taken cell by cell (the cell tables of `rlaudit.derived.termcells`; equal to
    `termcells._count_pairs` over the same pairs)."""
    c = np.ascontiguousarray
    flat = []
    for off, ids in lists:
        flat += [c(off, np.int64), c(ids, np.int32)]
    order = np.argsort(cell, kind="stable").astype(np.int64)
    return compiled().cell_term_counts(order, c(cell, np.int64), *flat, c(use_second, np.bool_), int(n_ids))


def step_term_counts(cell: np.ndarray, off: np.ndarray, ids: np.ndarray, at_risk: np.ndarray,
                     cp_cell: np.ndarray, cp_prompt: np.ndarray, cp_count: np.ndarray, pt_off: np.ndarray,
                     pt_ids: np.ndarray, n_cells: int, n_ids: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, m): dense int64 counts per cell * n_ids + term id of a place's id lists (offsets per row, ids) of the
    rows `at_risk`, and of the rollouts whose prompt holds the term (`tokens._step_term_counts`, whose numpy path it
    equals)."""
    c = np.ascontiguousarray
    return compiled().step_term_counts(c(cell, np.int64), c(off, np.int64), c(ids, np.int32), c(at_risk, np.bool_),
                                       c(cp_cell, np.int64), c(cp_prompt, np.int64), c(cp_count, np.int64),
                                       c(pt_off, np.int64), c(pt_ids, np.int32), int(n_cells), int(n_ids))


def ngram_prevalences(values: np.ndarray, offsets: np.ndarray, cell: np.ndarray, rows: np.ndarray, n_cond: int,
                      null_cond: int, max_n: int, min_count: int) -> tuple[np.ndarray, ...]:
    """Of rows of token hashes (flat values, int64 offsets per row) whose cells (`cell` per row, bin * n_cond +
    condition index; `rows` per cell; `null_cond` the NULL condition's index or -1) each come as one run of
    adjacent rows: per 1..max_n-gram (in order of first appearance; every one found in `min_count` rows or more,
    and maybe some others) its key, rows holding it, first occurrence (row, start token, n), pmax and spread (as
    `tokens._prevalences`). Two passes over the tokens and one over the (n-gram, cell) records instead of the
    occurrence arrays and sorts of `tokens._ngram_df` and `tokens._prevalences` (see `_ngram_prevalences`)."""
    if len(offsets) > 2**31 or (len(cell) and not 0 <= int(cell.min()) <= int(cell.max()) < min(len(rows), 2**31)):
        raise ValueError("ngram_prevalences: rows and cells must fit in 32 bits, cells index `rows`")
    # a counter per occurrence or more, up to 4 MB (2^22): few n-grams of fewer rows pass (see `_ngram_prevalences`).
    # A larger sketch screens out more but costs more to clear and to probe than it saves: the 1M benchmark's
    # sample (1.2M / 1.6M tokens), the same n-grams kept each way: 2^24 245 / 304 ms, 2^23 209 / 237, 2^22 121-155
    # / 185-190, 2^21 132 / 238, 2^20 143 / 219 (session 50; /work/scratch/s49/vp2.py)
    bits = min(max(int(max_n * len(values)), 1 << 12).bit_length(), 22)
    c = np.ascontiguousarray
    # words always, as `tokens.ngram_keys` (a max_n below 1 counts the words)
    return compiled().ngram_prevalences(c(values, np.uint64), c(offsets, np.int64), c(cell, np.int64),
                                        c(rows, np.int64), max(int(n_cond), 1), int(null_cond), max(int(max_n), 1),
                                        int(min_count), bits)


def _build_ingest() -> SimpleNamespace:
    """The kernels ingest uses (`text._cut`'s span gathering, `text.reasoning_spans`, `text.completion_facts`),
    without the term-set ones."""
    import numba

    glob = globals()  # the helper is looked up as a global when the kernel compiles: jitted first
    glob["_is_re2_space"] = jit(getattr(_is_re2_space, "py_func", _is_re2_space), inline="always")
    u8, i64, u64 = (numba.types.Array(d, 1, "C", readonly=True)
                    for d in (numba.types.uint8, numba.types.int64, numba.types.uint64))
    return SimpleNamespace(gather_spans=jit(_gather_spans, (u8, i64, i64)),
                           think_spans=jit(_think_spans, (u8, i64, i64, u8, u8)),
                           completion_chars=jit(_completion_chars, (u8, u64, i64, i64)))


ingest = Compiled(_build_ingest)
