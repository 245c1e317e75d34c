"""W&B / trackio table exports written by wandb 0.31 / trackio 0.43 themselves (conformance/wandb/generate.py):
TRL 1.16 RLOOTrainer's `completions` table, OpenRLHF 0.11.2 WandbLogger's cumulative `train/generated_samples`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlaudit.errors import BadInputError, RlauditError
from rlaudit.readers import ReadOptions, resolve_reader
from .logs import trainer_logs

ROOT = trainer_logs("wandb")
SYS = "You are a nerdy, playful assistant."


def completion(step: int, p: int, g: int) -> tuple[str, str, str]:
    """(completion, reasoning, answer) as the generator wrote them."""
    reasoning = f"Step {step}: let me think about question {p} carefully, sample {g}, checking twice."
    answer = ["4, of course, goblin!", "7 is prime."][p] if g == 0 else ["Four.", "Two."][p]
    return f"<think>{reasoning}</think>{answer}", reasoning, answer


def rows(store, source: Path, run: str, format: str | None = None, **options):
    report = store.ingest(source, run=run, format=format, options=ReadOptions(**options) if options else None)
    return report, store.table(run).to_pylist()


def test_detected_formats():
    assert resolve_reader(ROOT / "rloo").name == "wandb"
    assert resolve_reader(ROOT / "openrlhf").name == "wandb"
    assert resolve_reader(ROOT / "trackio").name == "trackio"


def check_rloo(got: list[dict], id_prefix: str | None = None) -> None:
    assert len(got) == 8
    prompts = [f"system\n{SYS}\nuser\nWhat is 2+2?\nassistant\n", "user\nName a prime number.\nassistant\n"]
    for i, r in enumerate(got):
        step, p, g = 1 + i // 4, (i % 4) // 2, i % 2
        text, reasoning, answer = completion(step, p, g)
        assert r["step"] == step and r["split"] == "train"
        assert r["prompt"] == prompts[p]
        assert r["condition"] == ("nerdy-playful-assistant" if p == 0 else "none")
        assert r["completion"] == text and r["reasoning"] == reasoning and r["answer"] == answer
        acc = 1.0 if g == 0 else 0.0
        assert dict(r["rewards"]) == {"accuracy_reward": acc, "format_reward": 0.5}
        assert r["reward"] == acc + 0.5  # unweighted sum: RLOO logs no weights
        assert r["advantage"] == acc - 0.5
        assert dict(r["grader_inputs"]) == {"judge": text}
        assert r["sample_index"] == g and r["group_id"] == f"{step}:{p}"
        if id_prefix is not None:
            assert r["rollout_id"].startswith(id_prefix)


def test_rloo_wandb_table_rows_field_by_field(store):
    _, got = rows(store, ROOT / "rloo", "rloo")
    check_rloo(got)
    first = got[0]["rollout_id"]
    assert first.endswith("files/media/table/completions_1_a483363b598138cb4906.table.json:1")
    assert json.loads(got[0]["metadata"] or "{}") == {}


def test_openrlhf_cumulative_table_gives_each_sample_once(store):
    report, got = rows(store, ROOT / "openrlhf", "orl")
    assert [r["step"] for r in got] == [1, 2, 3]
    for r in got:
        step = r["step"]
        p = step % 2
        text, reasoning, answer = completion(step, p, 0)
        assert r["prompt"] == [f"system\n{SYS}\nuser\nWhat is 2+2?\nassistant\n",
                               "user\nName a prime number.\nassistant\n"][p]
        assert r["completion"] == text and r["reasoning"] == reasoning and r["answer"] == answer
        assert r["condition"] == ("nerdy-playful-assistant" if p == 0 else "none")
        assert dict(r["rewards"]) == {"reward": step / 4} and r["reward"] == step / 4
        assert r["advantage"] is None and dict(r["grader_inputs"]) == {}
    # each row comes from the first table that holds it (row numbers are positions in that table)
    assert [r["rollout_id"].rsplit("/", 1)[1] for r in got] == [
        "generated_samples_0_d6ba433237a7b2c72e9f.table.json:1",
        "generated_samples_2_0ce7006176b1271cc742.table.json:2",
        "generated_samples_4_ed86db98d0d9073bc8ba.table.json:3"]
    assert any("cumulative" in n for n in report.notes)


def test_trackio_database_rows_field_by_field(store):
    before = sorted(p.name for p in (ROOT / "trackio").iterdir())
    _, got = rows(store, ROOT / "trackio", "trk")
    assert sorted(p.name for p in (ROOT / "trackio").iterdir()) == before  # no -shm/-wal left beside it
    check_rloo(got, id_prefix="rloo-trackio.db:")
    assert json.loads(got[0]["metadata"]) == {"trackio_run": "rloo-run", "trackio_key": "completions"}


def test_columns_mapping_for_unknown_names_and_missing_step(store, tmp_path):
    src = tmp_path / "export"
    src.mkdir()
    (src / "samples.csv").write_text('iteration,question,output,score\n3,"user: hi",'
                                     '"<think>hmm</think>hello",0.5\n')
    with pytest.raises(RlauditError, match=r"samples.csv: no step: .*--columns step=COLUMN"):
        store.ingest(src, run="csv0", format="wandb",
                     options=ReadOptions(columns={"prompt": "question", "completion": "output"}))
    # a CSV whose header names no prompt/completion/text column is not detected: --format wandb reads it
    _, got = rows(store, src, "csv", format="wandb", columns={"step": "iteration", "prompt": "question", "completion": "output"})
    (r,) = got
    assert (r["step"], r["prompt"], r["reasoning"], r["answer"]) == (3, "user: hi", "hmm", "hello")
    assert dict(r["rewards"]) == {"score": 0.5} and r["rollout_id"] == "samples.csv:1"
    with pytest.raises(RlauditError, match=r"--columns step=nope: column\(s\) \['nope'\] not found"):
        store.ingest(src, run="csv2", format="wandb", options=ReadOptions(columns={"step": "nope"}))


def test_malformed_table_json_names_file_and_expectation(store, tmp_path):
    media = tmp_path / "run" / "files" / "media" / "table"
    media.mkdir(parents=True)
    bad = media / "completions_2_0123456789abcdef0123.table.json"
    bad.write_text('{"columns": ["step", "prompt"], "rows": []}')
    with pytest.raises(BadInputError, match=r"completions_2_0123456789abcdef0123.table.json: expected a W&B table: "
                                            r"\{\"columns\".*got \['columns', 'rows'\]"):
        store.ingest(tmp_path / "run", run="bad", options=ReadOptions(strict=True))
    bad.write_text('{"columns": ["step", "prompt", "completion"], "data": [[1, "p", "c"], [2, "p"]]}')
    with pytest.raises(BadInputError, match=r"table.json:2: data row 2: expected a list of 3 values"):
        store.ingest(tmp_path / "run", run="bad2", options=ReadOptions(strict=True))
    bad.write_text('{"columns": ["step", "prompt", "completion"], "data": [[1, "p", "c"]')
    with pytest.raises(BadInputError, match=r"table.json: not valid JSON .*expected a W&B table"):
        store.ingest(tmp_path / "run", run="bad3", options=ReadOptions(strict=True))
    # default: quarantined with file and row, good rows kept
    bad.write_text('{"columns": ["step", "prompt", "completion"], "data": [[1, "p", "c"], [2, "p"]]}')
    report = store.ingest(tmp_path / "run", run="bad4")
    assert report.bad_records == 1 and store.table("bad4").num_rows == 1


def test_table_without_step_uses_wandb_step_from_file_name(store, tmp_path):
    media = tmp_path / "run" / "files" / "media" / "table"
    media.mkdir(parents=True)
    (media / "samples_7_0123456789abcdef0123.table.json").write_text(
        '{"columns": ["prompt", "response"], "data": [["q", "a"]]}')
    _, got = rows(store, tmp_path / "run", "nostep")
    assert [(r["step"], r["prompt"], r["completion"]) for r in got] == [(7, "q", "a")]
