"""Compiled (numba) kernels of the CoT-grading scan's text hashing, bit-identical to the numpy path.

Why: per stored part, the CoT scan tokenises and hashes the reasoning, answer, prompts and grader inputs of its
rows with grader inputs (`shingles.hashed_tokens`), and the screen hashes every row's answer
(`screen_keys.answer_hash`). The numpy path makes a dozen passes over byte-sized temporaries for each (masks,
shifted copies, flatnonzero, rounds of 8-byte gathers), and the answer keys first cut every answer out of its
completion and lowercase it into a new buffer. At 1M rollouts that was ~1.8 CPU s of tokenising and ~2.3 CPU s of
answer cutting and hashing (single-thread, per-phase timing in docs/performance.md). The loops here walk each
byte once:

- `token_hashes`: the tokens of `shingles.hashed_tokens` and their `byte_span_hashes`, given the (lowercased)
  byte buffer. The byte classes (word bytes, separator characters, single-character CJK tokens) are decided
  exactly as `shingles._non_ascii_breaks` does, from the same lookup tables.
- `answer_hashes`: `screen_keys.answer_hash` straight from byte spans (an answer that is a slice of its
  completion is hashed in place), lowercasing ASCII on the fly. A span with a non-ASCII byte is not hashed here
  (`utf8_lower` maps code points, which this loop does not attempt): it is flagged and the caller hashes those
  few with the numpy path.
- `shingle_keys`: the keys of `shingles.shingles_from_ids` in branch-free loops over every window of the batch
  (vectorised by the compiler), the windows inside texts then kept (k numpy passes over the batch before).
- `prepare`, `seen`, `tally`: the scan's membership and count questions (`scan.PreparedBatch`) answered with a
  small hash table per prompt group instead of sorting the batch's scoped keys and binary-searching them (see
  `_group_table`), and the per-row tally in one loop. Each question is asked within one row or one group, so a
  group's table (a few thousand slots) stays in the CPU cache.

Which path runs follows `rlaudit.kernels.backend()` (`RLAUDIT_KERNEL=numpy|numba`, numba when importable). The
numpy path stays the reference; tests/detectors/test_cot_kernels.py compares both on random text.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import numpy as np

from .. import kernels as _k

_MIX = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_M31 = np.uint64(31)
_LOW40 = np.uint64((1 << 40) - 1)  # = shingles._LOW: the shingle bits a scoped key keeps

_check_lock = threading.Lock()


def use_numba() -> bool:
    """Whether the compiled path runs (see `rlaudit.kernels.backend`). Under a lock: the scan's threads ask at
    once, and a thread that saw another one's half-done `import numba` would take numba for missing."""
    with _check_lock:
        return _k.use_numba()


# ---------------------------------------------------------------------------------------------------------------
# Kernel sources: plain Python over numpy arrays (uint64 arithmetic with uint64 operands only).

def _mix(x):
    """`shingles.splitmix64` of one value."""
    x = x + _MIX
    x = (x ^ (x >> _S30)) * _C1
    x = (x ^ (x >> _S27)) * _C2
    return x ^ (x >> _S31)


def _byte_codes(seg, word_table, separator_table, single_table):
    """Per byte of a buffer with non-ASCII text: 0 not a word byte, 1 a word byte, 2 a word byte that starts a
    token whatever precedes it (a single-character CJK token, or the byte after one). `_WORD_BYTE` and
    `_non_ascii_breaks` of `shingles`, decided the same way: every 2- and 3-byte lead byte is decoded, the
    separators' bytes are not word bytes."""
    n = len(seg)
    word = np.empty(n, np.uint8)
    for i in range(n):
        word[i] = 1 if word_table[seg[i]] else 0
    breaks = np.zeros(n + 1, np.bool_)
    for i in range(n):
        b = seg[i]
        if b < 0xC0:
            continue
        if (b & 0xE0) == 0xC0 and i + 1 < n:
            cp = ((np.int64(b) & 0x1F) << 6) | (np.int64(seg[i + 1]) & 0x3F)
            if separator_table[cp]:
                word[i] = 0
                word[i + 1] = 0
        elif (b & 0xF0) == 0xE0 and i + 2 < n:
            cp = ((np.int64(b) & 0x0F) << 12) | ((np.int64(seg[i + 1]) & 0x3F) << 6) | (np.int64(seg[i + 2]) & 0x3F)
            if separator_table[cp]:
                word[i] = 0
                word[i + 1] = 0
                word[i + 2] = 0
            if single_table[cp]:
                breaks[i] = True
                breaks[i + 3] = True
    for i in range(n):
        if word[i] and breaks[i]:
            word[i] = 2
    return word


def _length_seeds():
    """The first round of a token's hash for each length below 64, once per call: one `_mix` per short token
    instead of two."""
    by_length = np.empty(64, np.uint64)
    for n in range(64):
        by_length[n] = _mix(np.uint64(n)) * _M31
    return by_length


def _room(out, k, need):
    """`out` (k hashes written) with room for `need` more: grown, if ever, before a text (room for a token per
    byte of it), never inside the token loop: an array that could be rebound there cost 3x the time per token
    (tokens take at most half the bytes in practice)."""
    if k + need <= len(out):
        return out
    grown = np.empty(max(2 * len(out), k + need), np.uint64)
    grown[:k] = out[:k]
    return grown


def _token_end(seg, codes, table, lower, i, e):
    """(end, first 8 bytes lowercased, little-endian) of the token starting at byte i of a text ending at e,
    byte by byte (`_token_hashes`' classes: table[codes[j]] == 1 continues it)."""
    first = np.uint64(lower[seg[i]])
    j = i + 1
    while j < e and table[codes[j]] == 1:
        if j - i < 8:
            first |= np.uint64(lower[seg[j]]) << np.uint64(8 * (j - i))
        j += 1
    return j, first


def _token_hash(seg, lower, i, j, first, by_length):
    """The hash of token seg[i:j] whose first 8 bytes (lowercased) are `first`: seeded by its length, then the
    rest 8 bytes at a time, the last round short."""
    seed = by_length[j - i] if j - i < 64 else _mix(np.uint64(j - i)) * _M31
    h = _mix(seed ^ first)
    p = i + 8
    while p < j:
        chunk = np.uint64(0)
        top = min(p + 8, j)
        for q in range(p, top):
            chunk |= np.uint64(lower[seg[q]]) << np.uint64(8 * (q - p))
        h = _mix((h * _M31) ^ chunk)
        p = top
    return h


def _token_hashes(seg, codes, table, lower, starts, ends):
    """(uint64 hashes, int64 tokens per text) of `shingles.hashed_tokens` over a byte buffer `seg` (lowercased
    but for ASCII letters) whose text t is seg[starts[t]:ends[t]] (texts laid end to end, or spans of other
    text such as the reasoning within its completion). The class of byte i is table[codes[i]] (0 not a
    word byte, 1 a word byte, 2 one that starts a new token): for ASCII text codes is seg itself and table the
    word-byte table, so no per-byte class array is built. Bytes are hashed through `lower` (ASCII case folding),
    so ASCII text need not be lowercased first."""
    n_texts = len(starts)
    counts = np.zeros(n_texts, np.int64)
    out = np.empty(len(seg) // 2 + 16, np.uint64)  # grown by `_room` before a text, if ever
    by_length = _length_seeds()
    k = 0
    for t in range(n_texts):
        s, e = starts[t], ends[t]
        out = _room(out, k, e - s + 1)
        before = k
        i = s
        while i < e:
            if table[codes[i]] == 0:
                i += 1
                continue
            j, first = _token_end(seg, codes, table, lower, i, e)
            out[k] = _token_hash(seg, lower, i, j, first, by_length)
            k += 1
            i = j
        counts[t] = k - before
    return out[:k].copy(), counts


_H8 = np.uint64(0x8080808080808080)  # the top bit of each byte of a 64-bit word
_BYTES = 0x0101010101010101
_GE_A = np.uint64(_BYTES * (0x80 - 0x61))  # added to each byte (all < 0x80): its top bit set where >= 'a'
_GT_Z = np.uint64(_BYTES * (0x7F - 0x7A))  # ... where > 'z'
_GE_0 = np.uint64(_BYTES * (0x80 - 0x30))  # ... where >= '0'
_GT_9 = np.uint64(_BYTES * (0x7F - 0x39))  # ... where > '9'
_CASE = np.uint64(_BYTES * 0x20)
_ONES64 = np.uint64(0xFFFFFFFFFFFFFFFF)
#: the word bytes `_token_hashes_ascii` decides in 64-bit words: ASCII letters in either case and digits
ASCII_WORD = np.zeros(0x80, np.bool_)
ASCII_WORD[0x30:0x3A] = ASCII_WORD[0x41:0x5B] = ASCII_WORD[0x61:0x7B] = True


def trailing_zeros(x):
    """The number of trailing zero bits of a nonzero 64-bit word (replaced by numba's intrinsic in `_build`)."""
    x = int(x)
    return (x & -x).bit_length() - 1


def _load8(seg, i):
    """Bytes seg[i:i + 8] as a little-endian 64-bit word (eight byte loads, which LLVM may combine into one)."""
    return (np.uint64(seg[i]) | (np.uint64(seg[i + 1]) << np.uint64(8)) | (np.uint64(seg[i + 2]) << np.uint64(16))
            | (np.uint64(seg[i + 3]) << np.uint64(24)) | (np.uint64(seg[i + 4]) << np.uint64(32))
            | (np.uint64(seg[i + 5]) << np.uint64(40)) | (np.uint64(seg[i + 6]) << np.uint64(48))
            | (np.uint64(seg[i + 7]) << np.uint64(56)))


def _ascii_classes(x):
    """(word bytes, letters) of a word of 8 ASCII bytes (each < 0x80): the top bit set in each byte of the
    class. Every byte's sums stay below 0x100, so no carry crosses into the next byte."""
    low = x | _CASE  # 'A'-'Z' onto 'a'-'z'; no other byte lands there
    letter = (low + _GE_A) & ~(low + _GT_Z) & _H8
    digit = (x + _GE_0) & ~(x + _GT_9) & _H8
    return letter | digit, letter


def _token_hashes_ascii(seg, table, lower, starts, ends):
    """`_token_hashes` of an all-ASCII buffer (`table`: `ASCII_WORD` as bytes, `lower`: case folding), 8 bytes
    at a time: a token's end is the first byte of its 64-bit word that is not a word byte (a trailing-zero
    count, no branch per byte), its first 8 bytes are that word lowercased and masked, and the next token's
    start is found in the same word when it begins there. Tokens of 8 bytes or more, and the last 7 bytes of
    the buffer, go through the byte loop of `_token_hashes`; the same tokens and hashes (2.4 -> 1.6 ms for a
    1M-benchmark part's reasoning, answers and grader inputs)."""
    n_texts = len(starts)
    n_seg = len(seg)
    counts = np.zeros(n_texts, np.int64)
    out = np.empty(n_seg // 2 + 16, np.uint64)
    by_length = _length_seeds()
    one = np.uint64(1)
    k = 0
    for t in range(n_texts):
        s, e = starts[t], ends[t]
        out = _room(out, k, e - s + 1)
        before = k
        i = s
        while i < e:
            if i + 8 <= n_seg:
                x = _load8(seg, i)
                word, letter = _ascii_classes(x)
                left = e - i
                if left < 8:  # bytes past the text's end end its last token
                    word &= (one << np.uint64(8 * left)) - one
                if (word & np.uint64(0x80)) == 0:  # a separator: on to the next word byte
                    i += np.int64(trailing_zeros(word) >> np.uint64(3)) if word != 0 else 8
                    continue
                stop = ~word & _H8
                if stop != 0:  # the token ends within the word
                    length = np.int64(trailing_zeros(stop) >> np.uint64(3))
                    first = (x | (letter >> np.uint64(2))) & ((one << np.uint64(8 * length)) - one)
                    out[k] = _mix(by_length[length] ^ first)
                    k += 1
                    # the next token where it starts in the same word; else no word byte is left in it
                    after = word & (_ONES64 << np.uint64(8 * length)) if length < 8 else np.uint64(0)
                    i += np.int64(trailing_zeros(after) >> np.uint64(3)) if after != 0 else 8
                    continue
                first = x | (letter >> np.uint64(2))  # 8 bytes or more: the rest byte by byte
                j = i + 8
                while j < e and table[seg[j]] == 1:
                    j += 1
            else:
                if table[seg[i]] == 0:
                    i += 1
                    continue
                j, first = _token_end(seg, seg, table, lower, i, e)
            out[k] = _token_hash(seg, lower, i, j, first, by_length)
            k += 1
            i = j
        counts[t] = k - before
    return out[:k].copy(), counts


def _answer_hashes(data, starts, ends, skip, lower):
    """(uint64 hash per span, bool: span has a non-ASCII byte and was not hashed) of `screen_keys.answer_hash`:
    ASCII lowercased, bytes where `skip` is True (its whitespace) removed, the rest hashed 8 at a time seeded
    with their count. Two passes per span: its kept bytes are first packed into a scratch array of 64-bit words
    (every byte is written where the next kept byte goes, and the fill advances by one for a kept byte, by 0 for
    a skipped one: no branch on where words end, which is unpredictable), then hashed a word at a time, the
    last word's unused bytes masked off. Packing byte by byte into a shifted register instead made each byte
    wait for the previous one's shift: ~2x the time."""
    n = len(starts)
    out = np.zeros(n, np.uint64)
    other = np.zeros(n, np.bool_)
    longest = 0
    for r in range(n):
        longest = max(longest, ends[r] - starts[r])
    words = np.zeros(longest // 8 + 2, np.uint64)
    packed = words.view(np.uint8)  # little-endian: byte j of a word is its bits 8j..8j+7, as the numpy path
    keep = np.empty(256, np.int64)
    for b in range(256):
        keep[b] = 0 if skip[b] else 1
    for r in range(n):
        w = 0
        high = 0
        for i in range(starts[r], ends[r]):
            b = data[i]
            high |= b
            packed[w] = lower[b]
            w += keep[b]
        if high >= 0x80:
            other[r] = True
            continue
        full = w // 8
        h = _mix(np.uint64(w))
        for q in range(full):
            h = _mix((h * _M31) ^ words[q])
        rest = w - 8 * full
        if rest:
            h = _mix((h * _M31) ^ (words[full] & ((np.uint64(1) << np.uint64(8 * rest)) - np.uint64(1))))
        out[r] = h
    return out, other


def _span_hashes(data, starts, ends):
    """`shingles.byte_span_hashes`: each span's length mixed, then its bytes 8 at a time (little-endian, the
    last word short), each word folded in as `h = mix(h * 31 ^ word)`."""
    n = len(starts)
    out = np.empty(n, np.uint64)
    for r in range(n):
        s, e = starts[r], ends[r]
        h = _mix(np.uint64(e - s))
        p = s
        while p < e:
            chunk = np.uint64(0)
            top = min(p + 8, e)
            for q in range(p, top):
                chunk |= np.uint64(data[q]) << np.uint64(8 * (q - p))
            h = _mix((h * _M31) ^ chunk)
            p = top
        out[r] = h
    return out


def _shingle_keys(ids, offsets, k, coeffs):
    """The keys of `shingles.shingles_from_ids`: per text, the hash of every window of k token ids. The window's
    polynomial (Horner's scheme over the ids + 1 with the k multipliers) is expanded: the sum of (ids[p + j] + 1)
    * coeffs[j], coeffs[j] the product of the multipliers after position j (the same value modulo 2^64, where
    all of it is computed). Every window of the flat ids is summed in loops without branches, which the
    compiler vectorises (k = 5, the default, unrolled; other k in k passes), and only the windows inside a text
    are kept: 3-4x faster than a window at a time (a text's windows are few, the inner loop short)."""
    n = len(ids)
    m = max(n - k + 1, 0)
    one = np.uint64(1)
    acc = np.zeros(m, np.uint64)
    if k == 5:
        c0, c1, c2, c3, c4 = coeffs[0], coeffs[1], coeffs[2], coeffs[3], coeffs[4]
        for p in range(m):
            acc[p] = _mix((ids[p] + one) * c0 + (ids[p + 1] + one) * c1 + (ids[p + 2] + one) * c2
                          + (ids[p + 3] + one) * c3 + (ids[p + 4] + one) * c4)
    else:
        for j in range(k):
            cj = coeffs[j]
            for p in range(m):
                acc[p] += (ids[p + j] + one) * cj
        for p in range(m):
            acc[p] = _mix(acc[p])
    n_texts = len(offsets) - 1
    total = 0
    for t in range(n_texts):
        total += max(offsets[t + 1] - offsets[t] - k + 1, 0)
    keys = np.empty(total, np.uint64)
    o = 0
    for t in range(n_texts):
        s = offsets[t]
        for w in range(offsets[t + 1] - s - k + 1):
            keys[o] = acc[s + w]
            o += 1
    return keys


# Per prompt group, a small open-addressing table of the group's distinct reasoning shingles (their low 40 bits,
# what `shingles.scoped` compares): every membership and count question of the scan is asked within one row or
# one group, so the table stays in the CPU cache instead of sorting and binary-searching the whole batch.

def _group_table(rkeys, r_off, rows, tkeys, tids, used, gid):
    """Insert the reasoning shingles of `rows` (one group) into the empty table (`tkeys`, `tids` -1 when empty,
    power-of-two size); `gid[i]` the distinct id of shingle i. Returns the number of distinct keys (their slots
    in `used[:d]`, for the caller to empty)."""
    mask = np.uint64(len(tids) - 1)
    d = 0
    for r in rows:
        for i in range(r_off[r], r_off[r + 1]):
            key = rkeys[i] & _LOW40
            slot = key & mask
            while tids[slot] >= 0 and tkeys[slot] != key:
                slot = (slot + np.uint64(1)) & mask
            if tids[slot] < 0:
                tkeys[slot] = key
                tids[slot] = d
                used[d] = slot
                d += 1
            gid[i] = tids[slot]
    return d


def _find(key, tkeys, tids):
    """The distinct id of `key` in the table, or -1."""
    mask = np.uint64(len(tids) - 1)
    key = key & _LOW40
    slot = key & mask
    while tids[slot] >= 0:
        if tkeys[slot] == key:
            return tids[slot]
        slot = (slot + np.uint64(1)) & mask
    return -1


def _table_size(r_off, order, gstarts):
    """A power of two at least twice the reasoning shingles of the largest group."""
    most = 0
    for g in range(len(gstarts) - 1):
        m = 0
        for j in range(gstarts[g], gstarts[g + 1]):
            r = order[j]
            m += r_off[r + 1] - r_off[r]
        most = max(most, m)
    size = 16
    while size < 2 * most:
        size *= 2
    return size


def _group_arrays(r_off, order, gstarts, n_r):
    """The work arrays `_prepare` and `_seen` share: a hash table sized for the largest group (keys, distinct ids,
    the slots used), each reasoning shingle's distinct id, and per distinct shingle a row stamp and a count."""
    size = _table_size(r_off, order, gstarts)
    return (np.zeros(size, np.uint64), np.full(size, -1, np.int64), np.empty(size, np.int64),
            np.empty(n_r, np.int64), np.empty(size, np.int64), np.empty(size, np.int64))


def _per_shingle(rows, r_off, gid, count, out):
    """Each reasoning shingle of `rows` gets its distinct shingle's `count`."""
    for r in rows:
        for i in range(r_off[r], r_off[r + 1]):
            out[i] = count[gid[i]]


def _prepare(rkeys, r_off, akeys, a_off, pkeys, p_off, prompt_of_row, order, gstarts):
    """Per reasoning shingle: `excluded` (also in its row's answer or prompt) and `in_group` (rows of its group
    whose reasoning has it): `PreparedBatch.of`'s `excluded` and `reasoning_in_group`."""
    n_r = len(rkeys)
    excluded = np.zeros(n_r, np.bool_)
    in_group = np.zeros(n_r, np.int64)
    tkeys, tids, used, gid, stamp, count = _group_arrays(r_off, order, gstarts, n_r)
    for g in range(len(gstarts) - 1):
        rows = order[gstarts[g]:gstarts[g + 1]]
        d = _group_table(rkeys, r_off, rows, tkeys, tids, used, gid)
        stamp[:d] = -1
        count[:d] = 0
        for r in rows:
            for i in range(a_off[r], a_off[r + 1]):
                x = _find(akeys[i], tkeys, tids)
                if x >= 0:
                    stamp[x] = r
            p = prompt_of_row[r]
            for i in range(p_off[p], p_off[p + 1]):
                x = _find(pkeys[i], tkeys, tids)
                if x >= 0:
                    stamp[x] = r
            for i in range(r_off[r], r_off[r + 1]):
                excluded[i] = stamp[gid[i]] == r
        stamp[:d] = -1
        for r in rows:
            for i in range(r_off[r], r_off[r + 1]):
                x = gid[i]
                if stamp[x] != r:
                    stamp[x] = r
                    count[x] += 1
        _per_shingle(rows, r_off, gid, count, in_group)
        for j in range(d):
            tids[used[j]] = -1
    return excluded, in_group


def _seen(rkeys, r_off, gkeys, g_off, recv_off, recv_entries, order, gstarts):
    """Per reasoning shingle, for one grader's pairing (`recv_entries[recv_off[r]:recv_off[r + 1]]`: the grader
    inputs row r receives, `g_off` their shingles): `seen` (in the input its row receives) and `in_group` (rows
    of its group whose received input has it): `PreparedBatch.scan`'s `seen` and `seen_in_group`."""
    n_r = len(rkeys)
    seen = np.zeros(n_r, np.bool_)
    in_group = np.zeros(n_r, np.int64)
    tkeys, tids, used, gid, stamp, count = _group_arrays(r_off, order, gstarts, n_r)
    for g in range(len(gstarts) - 1):
        rows = order[gstarts[g]:gstarts[g + 1]]
        d = _group_table(rkeys, r_off, rows, tkeys, tids, used, gid)
        stamp[:d] = -1
        count[:d] = 0
        for r in rows:
            for e in recv_entries[recv_off[r]:recv_off[r + 1]]:
                for i in range(g_off[e], g_off[e + 1]):
                    x = _find(gkeys[i], tkeys, tids)
                    if x >= 0 and stamp[x] != r:
                        stamp[x] = r
                        count[x] += 1
            for i in range(r_off[r], r_off[r + 1]):
                seen[i] = stamp[gid[i]] == r
        _per_shingle(rows, r_off, gid, count, in_group)
        for j in range(d):
            tids[used[j]] = -1
    return seen, in_group


def _tally(counted, seen, r_off):
    """`scan._tally` per row from row offsets: reasoning-only shingles, matched ones, the longest run of matched
    ones and the longest run touching the start or the end (runs over the counted shingles only)."""
    n = len(r_off) - 1
    only = np.zeros(n, np.int64)
    matched = np.zeros(n, np.int64)
    longest = np.zeros(n, np.int64)
    edge = np.zeros(n, np.int64)
    for r in range(n):
        run = 0
        lead = -1
        for i in range(r_off[r], r_off[r + 1]):
            if not counted[i]:
                continue
            only[r] += 1
            if seen[i]:
                matched[r] += 1
                run += 1
                longest[r] = max(longest[r], run)
            else:
                if lead < 0:
                    lead = run
                run = 0
        if lead < 0:  # no unmatched shingle: the leading run is the whole row
            lead = run
        edge[r] = max(lead, run)
    return only, matched, longest, edge


def _tally_context(counted, seen, seen_in_group, reasoning_in_group, row_size, r_off):
    """`scan.GroupContext.decide`'s two tallies in one pass (each as `_tally`): `strict` counts the counted
    shingles that are not group-invariant (seen in the received input of every row of a group of >= 2 rows
    that have the grader, `row_size[r]` for row r), `loose` drops only invariant shingles that two or more rows
    of the group have in their reasoning. Returns strict's (only, matched, longest, edge), then loose's."""
    n = len(r_off) - 1
    out = np.zeros((8, n), np.int64)
    for r in range(n):
        size = row_size[r]
        run_s = 0
        lead_s = -1
        run_l = 0
        lead_l = -1
        for i in range(r_off[r], r_off[r + 1]):
            if not counted[i]:
                continue
            invariant = size >= 2 and seen_in_group[i] >= size
            if not invariant:  # counted by both
                out[0, r] += 1
                out[4, r] += 1
                if seen[i]:
                    out[1, r] += 1
                    run_s += 1
                    out[2, r] = max(out[2, r], run_s)
                    out[5, r] += 1
                    run_l += 1
                    out[6, r] = max(out[6, r], run_l)
                else:
                    if lead_s < 0:
                        lead_s = run_s
                    run_s = 0
                    if lead_l < 0:
                        lead_l = run_l
                    run_l = 0
            elif reasoning_in_group[i] < 2:  # counted by loose alone
                out[4, r] += 1
                if seen[i]:
                    out[5, r] += 1
                    run_l += 1
                    out[6, r] = max(out[6, r], run_l)
                else:
                    if lead_l < 0:
                        lead_l = run_l
                    run_l = 0
        if lead_s < 0:
            lead_s = run_s
        if lead_l < 0:
            lead_l = run_l
        out[3, r] = max(lead_s, run_s)
        out[7, r] = max(lead_l, run_l)
    return out


def _build() -> SimpleNamespace:
    """The CoT scan's kernels, compiled (see `rlaudit.kernels.Compiled`)."""
    import numba

    jit = _k.jit
    glob = globals()
    # helpers first: the kernels look them up when they compile (the hash inlined: 2.5x faster per token)
    glob["_mix"] = jit(getattr(_mix, "py_func", _mix), inline="always")
    from numba.cpython.unsafe.numbers import trailing_zeros as cttz

    glob["trailing_zeros"] = cttz
    for helper in ("_load8", "_ascii_classes", "_length_seeds", "_room", "_token_end", "_token_hash"):
        glob[helper] = jit(getattr(glob[helper], "py_func", glob[helper]), inline="always")

    t = numba.types

    def ro(dtype: Any) -> Any:
        return t.Array(dtype, 1, "C", readonly=True)

    u8, i64, b1, u64 = ro(t.uint8), ro(t.int64), ro(t.boolean), ro(t.uint64)
    for helper in ("_group_table", "_find", "_table_size", "_group_arrays", "_per_shingle"):
        glob[helper] = jit(getattr(glob[helper], "py_func", glob[helper]))
    return SimpleNamespace(byte_codes=jit(_byte_codes, (u8, b1, b1, b1)),
                                token_hashes=jit(_token_hashes, (u8, u8, u8, u8, i64, i64)),
                                token_hashes_ascii=jit(_token_hashes_ascii, (u8, u8, u8, i64, i64)),
                                answer_hashes=jit(_answer_hashes, (u8, i64, i64, b1, u8)),
                                shingle_keys=jit(_shingle_keys, (u64, i64, t.int64, u64)),
                                span_hashes=jit(_span_hashes, (u8, i64, i64)),
                                prepare=jit(_prepare, (u64, i64, u64, i64, u64, i64, i64, i64, i64)),
                                seen=jit(_seen, (u64, i64, u64, i64, i64, i64, i64, i64)),
                                tally=jit(_tally, (b1, b1, i64)),
                                tally_context=jit(_tally_context, (b1, b1, i64, i64, i64, i64)))


compiled = _k.Compiled(_build)


def token_hashes(seg: np.ndarray, bounds: np.ndarray, word_table: np.ndarray, separator_table: np.ndarray,
                 single_table: np.ndarray, ends: np.ndarray | None = None,
                 ascii: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 token hashes, int64 token count per text) of a UTF-8 buffer with relative offsets, lowercased
    except for ASCII letters, which may be in any case (`word_table` is for lowercase text). With `ends`, text
    t is seg[bounds[t]:ends[t]] instead (spans, e.g. of the completions that hold them). `ascii`: whether every
    byte of `seg` is below 0x80, where the caller knows it (else it is checked here)."""
    c = np.ascontiguousarray
    kern = compiled()
    seg = c(seg, np.uint8)
    word, word8, usual = _word_tables(word_table)
    starts, ends = (bounds[:-1], bounds[1:]) if ends is None else (bounds, ends)
    starts, ends = c(starts, np.int64), c(ends, np.int64)
    if ascii is None:
        ascii = not (len(seg) and seg.max() >= 0x80)
    if not ascii:
        codes, table = kern.byte_codes(seg, word, c(separator_table, np.bool_), c(single_table, np.bool_)), _CODES
    elif usual:  # the usual word bytes: 8 bytes at a time
        return kern.token_hashes_ascii(seg, word8, _LOWER, starts, ends)
    else:
        codes, table = seg, word8
    return kern.token_hashes(seg, codes, table, _LOWER, starts, ends)


def _word_tables(word_table: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(word bytes with upper-case ASCII letters added, the same as bytes, whether its ASCII part is
    `ASCII_WORD`) of a word table, built once per table (the scan passes the same one for every text)."""
    key = np.asarray(word_table, np.bool_).tobytes()
    got = _WORD_TABLES.get(key)
    if got is None:
        word = np.ascontiguousarray(word_table, np.bool_).copy()
        word[0x41:0x5B] = word[0x61:0x7B]  # an upper-case ASCII letter is the word byte its lowercase is
        word.flags.writeable = False
        word8 = word.astype(np.uint8)
        word8.flags.writeable = False
        got = _WORD_TABLES[key] = (word, word8, bool(np.array_equal(word[:0x80], ASCII_WORD)))
    return got


_WORD_TABLES: dict[bytes, tuple[np.ndarray, np.ndarray, bool]] = {}


_CODES = np.arange(3, dtype=np.uint8)  # the class of each byte code `_byte_codes` gives is the code itself
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[0x41:0x5B] += 0x20  # ASCII case folding


def answer_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                  skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash per byte span data[starts[i]:ends[i]], bool per span: non-ASCII, left for the caller)."""
    c = np.ascontiguousarray
    return compiled().answer_hashes(c(data, np.uint8), c(starts, np.int64), c(ends, np.int64), c(skip, np.bool_),
                                    _LOWER)



def span_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """`shingles.byte_span_hashes` of the byte spans data[starts[i]:ends[i]] (e.g. a part's group names)."""
    c = np.ascontiguousarray
    return compiled().span_hashes(c(data, np.uint8), c(starts, np.int64), c(ends, np.int64))


def shingle_keys(ids: np.ndarray, offsets: np.ndarray, k: int, mults: np.ndarray) -> np.ndarray:
    """The keys of the k-shingles of every text (`shingles.shingles_from_ids`; their rows and positions follow
    from the texts' token counts)."""
    c = np.ascontiguousarray
    key = mults.tobytes()
    coeffs = _COEFFS.get(key)
    if coeffs is None:
        coeffs = _COEFFS[key] = _coefficients(mults)
    return compiled().shingle_keys(c(ids, np.uint64), c(offsets, np.int64), int(k), coeffs)


_COEFFS: dict[bytes, np.ndarray] = {}  # by the multipliers' bytes: computed once per k


def _coefficients(mults: np.ndarray) -> np.ndarray:
    """coeffs[j] = the product of mults[j + 1:] modulo 2^64: Horner's acc = acc * mults[j] + x[j] over j is
    the sum of x[j] * coeffs[j] (the first multiplier multiplies 0)."""
    k = len(mults)
    out = np.ones(k, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k - 2, -1, -1):
            out[j] = out[j + 1] * np.uint64(mults[j + 1])
    return out


def prepare(rkeys: np.ndarray, r_off: np.ndarray, akeys: np.ndarray, a_off: np.ndarray, pkeys: np.ndarray,
            p_off: np.ndarray, prompt_of_row: np.ndarray, order: np.ndarray,
            gstarts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(excluded, in_group) per reasoning shingle (see `_prepare`); `order` the rows by group, `gstarts` where
    each group starts in it (and its end)."""
    c = np.ascontiguousarray
    return compiled().prepare(c(rkeys, np.uint64), c(r_off, np.int64), c(akeys, np.uint64), c(a_off, np.int64),
                              c(pkeys, np.uint64), c(p_off, np.int64), c(prompt_of_row, np.int64),
                              c(order, np.int64), c(gstarts, np.int64))


def seen(rkeys: np.ndarray, r_off: np.ndarray, gkeys: np.ndarray, g_off: np.ndarray, recv_off: np.ndarray,
         recv_entries: np.ndarray, order: np.ndarray, gstarts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(seen, in_group) per reasoning shingle for one grader's pairing (see `_seen`)."""
    c = np.ascontiguousarray
    return compiled().seen(c(rkeys, np.uint64), c(r_off, np.int64), c(gkeys, np.uint64), c(g_off, np.int64),
                           c(recv_off, np.int64), c(recv_entries, np.int64), c(order, np.int64),
                           c(gstarts, np.int64))


def tally_context(counted: np.ndarray, seen: np.ndarray, seen_in_group: np.ndarray, reasoning_in_group: np.ndarray,
                  row_size: np.ndarray, r_off: np.ndarray) -> np.ndarray:
    """(8, rows): the strict tally's (reasoning_only, matched, longest, edge), then the loose one's (see
    `_tally_context`)."""
    c = np.ascontiguousarray
    return compiled().tally_context(c(counted, np.bool_), c(seen, np.bool_), c(seen_in_group, np.int64),
                                    c(reasoning_in_group, np.int64), c(row_size, np.int64), c(r_off, np.int64))


def tally(counted: np.ndarray, seen: np.ndarray, r_off: np.ndarray) -> tuple[np.ndarray, ...]:
    """(reasoning_only, matched, longest, edge) per row (see `_tally`)."""
    c = np.ascontiguousarray
    return compiled().tally(c(counted, np.bool_), c(seen, np.bool_), c(r_off, np.int64))
