"""Items 9 and 13: exit status of an incomplete audit; user text never parsed as rich markup."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rlaudit.cli import app
from rlaudit.store import Store
from tests.readers.trainer_files import verl_step


def test_audit_with_a_failed_detector_exits_3(tmp_path, test_detectors):
    src = tmp_path / "run"
    verl_step(src, 1, ["q1", "q2"], ["a", "b"], [1.0, 0.0])
    res = CliRunner().invoke(app, ["audit", str(src), "--store", str(tmp_path / "s"), "--detector", "test_broken",
                                   "--json", str(tmp_path / "f.json")])
    assert res.exit_code == 3, res.output
    assert "incomplete" in res.output
    assert json.loads((tmp_path / "f.json").read_text())["findings"][0]["kind"] == "audit_error"


def test_markup_in_user_text_is_printed_as_written(tmp_path):
    src = tmp_path / "a[" / "x]run"  # the path holds "[/x]"
    src.mkdir(parents=True)
    with open(src / "r.jsonl", "w") as fh:
        for i in range(4):
            fh.write(json.dumps({"step": i, "prompt": "q", "completion": "a", "rewards": {"acc[v2]": 1.0,
                                                                                          "[/bold]": 0.0}}) + "\n")
    store = tmp_path / "s"
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(src), "--store", str(store), "--run", "r"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["runs", "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert "acc[v2]" in res.output and "[/bold]" in res.output


def test_findings_table_escapes_and_bounds_titles(tmp_path):
    path = tmp_path / "f.json"
    huge = "[/x] " + "t" * 5_000_000
    path.write_text(json.dumps({"schema_version": 1, "runs": [], "findings": [
        {"kind": "audit_error", "run": "r[/y]", "severity": "low", "title": huge, "explanation": "", "score": 0,
         "evidence": []}]}))
    res = CliRunner().invoke(app, ["findings", str(path)])
    assert res.exit_code == 0, res.output
    assert "[/x]" in res.output and "r[/y]" in res.output and len(res.output) < 20_000


def test_malformed_findings_json_is_a_clear_error(tmp_path):
    from rlaudit.cli import main

    for text in ('{"findings": [1, 2]}', '[]', '{"findings": [{"kind": "x"}]}', '{"findings": {"a": 1}}'):
        path = tmp_path / "f.json"
        path.write_text(text)
        res = CliRunner().invoke(app, ["findings", str(path)], standalone_mode=False)
        assert isinstance(res.exception, Exception) and "not a findings JSON file" in str(res.exception), text


def test_malformed_columns_file_is_a_clear_error(tmp_path):
    from rlaudit.cli import _columns_file
    from rlaudit.errors import RlauditError

    import pytest

    for name, text in (("c.json", "[1, 2]"), ("c.json", '{"columns": 3}'), ("c.toml", "a = [1]"),
                       ("c.json", '{"prompt": {"x": 1}}'), ("c.json", b"\xff\xfe".decode("latin-1"))):
        path = tmp_path / name
        path.write_text(text, encoding="latin-1")
        with pytest.raises(RlauditError, match="columns-file"):
            _columns_file(path)
