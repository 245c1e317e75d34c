"""Items 11-12: bad input is quarantined (an error under --strict), never aborting an ingest nor vanishing."""

from __future__ import annotations

import json
import os

import pytest

from rlaudit.errors import BadInputError
from rlaudit.readers.base import ReadOptions
from rlaudit.store import Store
from tests.readers.trainer_files import verl_step


def _line(i, **over):
    rec = {"step": i // 4, "prompt": f"q{i}", "completion": f"a{i}", "rewards": {"r": 1.0}}
    rec.update(over)
    return json.dumps(rec)


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines))


def test_lone_surrogates_and_cesu8_are_quarantined(tmp_path, store):
    src = tmp_path / "s"
    _write(src / "a.jsonl", [_line(0), _line(1).replace('"a1"', '"x\\udc00y"'),
                             _line(2).replace('a2', 'b').encode().replace(b'"b"', b'"\xed\xb0\x80"'), _line(3)])
    report = store.ingest(src, run="r", format="canonical")
    assert report.rows_added == 2 and report.bad_records == 2
    assert all("surrogate" in r.reason for r in store.quarantined("r"))
    with pytest.raises(BadInputError, match="surrogate"):
        Store(tmp_path / "s2").ingest(src, run="r", format="canonical", options=ReadOptions(strict=True))


@pytest.mark.parametrize("step", ["9223372036854775808", "1e300", "4611686018427387904", "-5e18"])
def test_absurd_steps_are_quarantined(tmp_path, store, step):
    src = tmp_path / "s"
    _write(src / "a.jsonl", [_line(0), _line(1).replace('"step": 0', f'"step": {step}'), _line(2)])
    report = store.ingest(src, run="r", format="canonical")
    assert report.rows_added == 2 and report.bad_records == 1
    assert "step" in store.quarantined("r")[0].reason


def test_negative_and_mismatched_steps_are_noted(tmp_path, store):
    src = tmp_path / "v"
    verl_step(src, 3, ["q1", "q2"], ["a", "b"], [1.0, 0.0])
    p = src / "3.jsonl"
    lines = p.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["step"] = 7
    lines[1] = json.dumps(rec)
    p.write_text("\n".join(lines) + "\n")
    report = store.ingest(src, run="v")
    assert any("file name" in n for n in report.notes)
    src2 = tmp_path / "neg"
    _write(src2 / "a.jsonl", [_line(0, step=-1), _line(1)])
    report = store.ingest(src2, run="n", format="canonical")
    assert any("negative steps" in n for n in report.notes)


def test_unreadable_file_is_quarantined_and_retried(tmp_path, store, monkeypatch):
    src = tmp_path / "s"
    _write(src / "a.jsonl", [_line(0), _line(1)])
    _write(src / "b.jsonl", [_line(4), _line(5)])
    import builtins

    real_open = builtins.open

    def deny(path, *a, **k):
        if str(path).endswith("b.jsonl"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", deny)
    report = store.ingest(src, run="r", format="canonical")
    assert report.rows_added == 2 and report.bad_records == 1
    assert "unreadable" in store.quarantined("r")[0].reason
    monkeypatch.setattr(builtins, "open", real_open)
    again = store.ingest(src, run="r", format="canonical")
    assert again.rows_added == 2 and store.summary("r").rows == 4


def test_a_word_in_a_reward_column_quarantines_that_line(tmp_path, store):
    src = tmp_path / "v"
    verl_step(src, 1, [f"q{i}" for i in range(32)], ["a"] * 32, [1.0] * 32,
              extra={"acc": [1.0 if i != 7 else "high" for i in range(32)]})
    report = store.ingest(src, run="v")
    assert report.bad_records == 1 and report.rows_added == 31
    assert "acc" in store.summary("v").signals
    with pytest.raises(BadInputError, match="acc"):
        Store(tmp_path / "s2").ingest(src, run="v", options=ReadOptions(strict=True))


def test_a_garbage_first_file_does_not_flip_detection(tmp_path, store):
    src = tmp_path / "v"
    for step in (2, 3):
        verl_step(src, step, ["q1", "q2"], ["a", "b"], [1.0, 0.0])
    (src / "1.jsonl").write_bytes(b"\x00\x01garbage\n")
    report = store.ingest(src, run="v")
    assert report.format == "verl" and report.rows_added == 4 and report.bad_records == 1
