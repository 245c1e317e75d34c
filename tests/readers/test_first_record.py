"""`first_record_keys` reads a JSONL file only up to the end of its first record (the fleet scanner asks for it
on every pass, so it must not read a whole step's dump), whatever that record's length."""

from __future__ import annotations

import json

import pytest

import rlaudit.readers.jsonl as jsonl
from rlaudit.readers.jsonl import first_record_keys


@pytest.mark.parametrize("pad", [0, 10, 70_000, 300_000])  # within one 64 KB chunk and across several
def test_keys_of_the_first_record_whatever_its_length(tmp_path, pad):
    path = tmp_path / "0001.jsonl"
    first = {"input": "q" * pad, "output": "a", "score": 1.0}
    path.write_text("\n\n  " + json.dumps(first) + "\n" + json.dumps({"other": 1}) + "\n")
    assert first_record_keys(path) == {"input", "output", "score"}


def test_reads_no_further_than_the_first_line(tmp_path, monkeypatch):
    path = tmp_path / "0001.jsonl"
    path.write_text(json.dumps({"input": "q", "output": "a"}) + "\n" + "x" * (3 << 20) + "\n")
    read = []
    real_open = open

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            block = self.fh.read(n)
            read.append(len(block))
            return block

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(jsonl, "open", lambda p, mode="r": Counting(real_open(p, mode)), raising=False)
    assert first_record_keys(path) == {"input", "output"}
    assert sum(read) <= 1 << 16  # one chunk, not the 4 MB limit


def test_a_first_line_beyond_the_limit_is_guessed_from_its_head(tmp_path):
    path = tmp_path / "0001.jsonl"
    path.write_text(json.dumps({"input": "q" * 5000, "output": "a"}) + "\n")
    assert first_record_keys(path, limit=1000) == {"input"}  # only the keys seen in the head
