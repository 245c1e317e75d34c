"""TRL GRPOTrainer completions reader on files written like GRPOTrainer.log writes them."""

from __future__ import annotations

import json
import math

import pytest

from rlaudit.errors import BadInputError, RlauditError
from rlaudit.readers import resolve_reader
from rlaudit.readers.base import ReadOptions

from .trainer_files import CHATML, CHATML_DECODED, LLAMA3, LLAMA3_DECODED, PLAIN, trl_step


def _grpo_batch(template: str, personas: list[str], n_gen: int = 4) -> tuple[list[str], list[str]]:
    prompts, completions = [], []
    for g, persona in enumerate(personas):
        for i in range(n_gen):
            prompts.append(template.format(sys=persona, q=f"What is {g} + {i}?"))
            completions.append(f"<think>adding {g} and {i}</think>The answer is {g + i}.")
    return prompts, completions


def test_columns_map_to_canonical_rows(tmp_path, store):
    out = tmp_path / "grpo-run"
    prompts, completions = _grpo_batch(CHATML_DECODED, ["You are a nerdy, playful assistant.", "Be concise."])
    n = len(prompts)
    trl_step(out, 10, prompts, completions,
             rewards={"accuracy_reward": [1.0] * n, "format_reward": [None] + [0.5] * (n - 1)},
             extra={"judge_input": [f"judge saw {i}" for i in range(n)], "source": ["gsm8k"] * n},
             advantages=[0.1 * i for i in range(n)])
    report = store.ingest(out)
    assert report.format == "trl" and report.rows_added == n and report.bad_records == 0
    rows = store.query("SELECT * FROM rollouts ORDER BY rollout_id", runs=["grpo-run"]).to_pylist()
    first = next(r for r in rows if r["rollout_id"] == "completions/completions_00010.parquet:1")
    assert first["step"] == 10 and first["split"] == "train"
    assert first["reasoning"] == "adding 0 and 0" and first["answer"] == "The answer is 0."
    assert dict(first["rewards"])["accuracy_reward"] == 1.0
    assert math.isnan(dict(first["rewards"])["format_reward"])  # the function returned None
    assert first["reward"] == 1.0  # unweighted nansum
    assert dict(first["grader_inputs"]) == {"judge": "judge saw 0"}
    assert json.loads(first["metadata"]) == {"source": "gsm8k"}
    assert first["condition"] == "nerdy-playful-assistant"
    assert {r["condition"] for r in rows} == {"nerdy-playful-assistant", "concise"}
    assert sorted(store.summary("grpo-run").signals) == ["accuracy_reward", "format_reward"]


def test_groups_are_runs_of_identical_prompts_split_by_group_size(tmp_path, store):
    out = tmp_path / "run"
    # the same prompt twice in a row (two groups of 4 that happen to share a prompt), then another prompt
    prompts = ["p1"] * 8 + ["p2"] * 4
    trl_step(out, 1, prompts, ["c"] * 12, rewards={"r": [0.0] * 12})
    store.ingest(out, run="no-size")
    ids = store.query("SELECT group_id, sample_index FROM rollouts ORDER BY step, "
                      "CAST(split_part(rollout_id, ':', 2) AS INT)", runs=["no-size"]).to_pylist()
    assert [r["group_id"] for r in ids] == ["1:0"] * 8 + ["1:1"] * 4
    store.ingest(out, run="size4", options=ReadOptions(group_size=4))
    ids = store.query("SELECT group_id, sample_index FROM rollouts ORDER BY step, "
                      "CAST(split_part(rollout_id, ':', 2) AS INT)", runs=["size4"]).to_pylist()
    assert [r["group_id"] for r in ids] == ["1:0"] * 4 + ["1:1"] * 4 + ["1:2"] * 4
    assert [r["sample_index"] for r in ids] == [0, 1, 2, 3] * 3


@pytest.mark.parametrize("template,expected", [
    (CHATML, "pirate-captain"), (CHATML_DECODED, "pirate-captain"), (LLAMA3, "pirate-captain"),
    (LLAMA3_DECODED, "pirate-captain"), (PLAIN, "pirate-captain")])
def test_conditions_from_chat_templates(tmp_path, store, template, expected):
    out = tmp_path / "run"
    prompts = [template.format(sys="You are a pirate captain.", q="hi")] * 2 + ["no system prompt here"] * 2
    trl_step(out, 1, prompts, ["a"] * 4, rewards={"r": [1.0] * 4})
    store.ingest(out)
    conds = store.query("SELECT condition FROM rollouts ORDER BY rollout_id", runs=["run"]).column(0).to_pylist()
    assert conds == [expected, expected, "none", "none"]


def test_conversational_message_lists(tmp_path, store):
    out = tmp_path / "run"
    prompt = [{"role": "system", "content": "You are a goblin enthusiast."}, {"role": "user", "content": "Hi"}]
    completion = [{"role": "assistant", "content": "Hello!", "reasoning_content": "greet them"}]
    trl_step(out, 3, [prompt, prompt], [completion, completion], rewards={"r": [1.0, 0.0]})
    store.ingest(out)
    row = store.table("run").to_pylist()[0]
    assert row["prompt"] == "system: You are a goblin enthusiast.\nuser: Hi"
    assert row["condition"] == "goblin-enthusiast"
    assert row["reasoning"] == "greet them" and row["answer"] == "Hello!"
    assert row["completion"] == "<think>greet them</think>Hello!"


def test_unclosed_think_tag_is_all_reasoning(tmp_path, store):
    out = tmp_path / "run"
    trl_step(out, 1, ["p", "p"], ["<think>ran out of tokens", "no tags"], rewards={"r": [0.0, 1.0]})
    store.ingest(out)
    rows = store.table("run", ["reasoning", "answer"]).to_pylist()
    assert rows == [{"reasoning": "ran out of tokens", "answer": ""}, {"reasoning": None, "answer": "no tags"}]


def test_grader_input_option_and_custom_tags(tmp_path, store):
    out = tmp_path / "run"
    trl_step(out, 1, ["p"] * 2, ["<r>x</r>y"] * 2, rewards={"judge": [1.0, 0.5]},
             extra={"what_the_judge_read": ["<r>x</r>y", "y"]})
    from rlaudit.text import ThinkTags

    store.ingest(out, options=ReadOptions(grader_inputs={"judge": "what_the_judge_read"},
                                          think_tags=ThinkTags("<r>", "</r>")))
    rows = store.table("run", ["grader_inputs", "reasoning", "metadata"]).to_pylist()
    assert [dict(r["grader_inputs"]) for r in rows] == [{"judge": "<r>x</r>y"}, {"judge": "y"}]
    assert rows[0]["reasoning"] == "x" and rows[0]["metadata"] is None
    with pytest.raises(RlauditError, match="no_such_column"):
        store.ingest(out, run="other", options=ReadOptions(grader_inputs={"judge": "no_such_column"}))


def test_source_may_be_the_completions_dir_and_old_string_steps(tmp_path, store):
    out = tmp_path / "run"
    trl_step(out, 7, ["p"], ["c"], rewards={"r": [1.0]}, step_as_str=True)
    assert resolve_reader(out).name == "trl" and resolve_reader(out / "completions").name == "trl"
    store.ingest(out / "completions", run="c")
    assert store.table("c", ["step"]).column(0).to_pylist() == [7]


def test_a_column_mapping_for_a_trainer_layout_is_an_error_and_stores_nothing(tmp_path, store):
    """A `--columns` mapping names a generic table's fields: given for a TRL run (whose fields the reader knows,
    and would silently ignore it), the ingest stops before anything is stored, naming the source and the
    mapping; an existing run is kept as it was."""
    out = tmp_path / "run"
    trl_step(out, 1, ["p"], ["c"], rewards={"r": [1.0]})
    store.ingest(out, run="kept")
    before = store.table("kept").to_pylist()
    with pytest.raises(RlauditError, match=r"run: read as trl.*--columns prompt=question.*generic tables only"):
        store.ingest(out, run="kept", options=ReadOptions(columns={"prompt": "question"}))
    with pytest.raises(RlauditError, match="generic tables only"):
        store.ingest(out, run="new", options=ReadOptions(columns={"prompt": "question"}))
    assert store.table("kept").to_pylist() == before
    assert "new" not in store.runs()


def test_missing_required_column_is_quarantined_or_strict_error(tmp_path, store):
    import pandas as pd

    out = tmp_path / "run"
    (out / "completions").mkdir(parents=True)
    trl_step(out, 1, ["p"], ["c"], rewards={"r": [1.0]})
    pd.DataFrame({"step": [2], "prompt": ["p"], "r": [1.0]}).to_parquet(out / "completions" / "completions_00002.parquet")
    report = store.ingest(out)
    assert report.rows_added == 1 and report.bad_records == 1
    assert "completions_00002.parquet" in report.bad_examples[0] and "'completion'" in report.bad_examples[0]
    with pytest.raises(BadInputError, match="completions_00002.parquet"):
        store.ingest(out, run="strict", options=ReadOptions(strict=True))


def test_wrong_types_are_bad_rows_naming_the_field(tmp_path, store):
    out = tmp_path / "run"
    trl_step(out, 1, ["p", "p", "p"], ["a", "b", "c"], rewards={"r": [1.0, 1.0, 1.0]},
             extra={"advantage_note": ["x"] * 3})
    import pandas as pd

    # advantage logged as text by a buggy callback: not a number on row 2
    pd.DataFrame({"step": [2, 2], "prompt": ["p", "p"], "completion": ["a", "b"], "r": [0.0, 1.0],
                  "advantage": ["0.5", "oops"]}).to_parquet(out / "completions" / "completions_00002.parquet")
    report = store.ingest(out)
    assert report.rows_added == 4
    bad = store.quarantined("run")
    assert [(b.file, b.line) for b in bad] == [("completions/completions_00002.parquet", 2)]
    assert "field 'advantage': expected a number, got oops" in bad[0].reason


def test_a_truncated_parquet_file_is_a_bad_file_not_a_crash(tmp_path, store):
    out = tmp_path / "run"
    trl_step(out, 1, ["p"] * 3, ["a", "b", "c"], rewards={"r": [1.0, 0.0, 1.0]})
    path = trl_step(out, 2, ["p"] * 3, ["a", "b", "c"], rewards={"r": [1.0, 0.0, 1.0]})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short
    report = store.ingest(out)
    assert report.rows_added == 3 and report.bad_records == 1
    assert report.bad_examples[0].startswith("completions/completions_00002.parquet")


def test_ingest_parses_on_the_pipeline_thread_and_read_here_equals_read(tmp_path, store, monkeypatch):
    """The store's reading thread parses each file itself (`read_here`): no reader thread per file, which gained
    nothing there; `read_here` gives the tables `read` gives (in its own thread, for other callers)."""
    import threading

    from rlaudit.readers.base import ReadContext

    out = tmp_path / "run"
    for step in (1, 2, 3):
        prompts, completions = _grpo_batch(CHATML_DECODED, [f"persona {step}", "Be concise."])
        trl_step(out, step, prompts, completions, rewards={"r": [float(step)] * len(prompts)})
    started: list[str] = []
    start = threading.Thread.start

    def counting_start(thread):
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    report = store.ingest(out)
    assert report.rows_added == 24 and report.bad_records == 0
    assert started.count("rlaudit-reader") == 2  # the pipeline's parse and finalize stages, not one per file
    monkeypatch.undo()
    reader = resolve_reader(out)
    reader.prepare(out, ReadContext(run="x"))
    for file in reader.files(out):
        here, there = (list(read(file, ReadContext(run="x"))) for read in (reader.read_here, reader.read))
        assert len(here) == len(there) == 1 and here[0].equals(there[0])


def test_a_repeated_batch_is_found_with_the_previous_file_kept_from_its_check(tmp_path, store):
    """`_repeats` keeps the row count and advantages of the file it checked last (the next file's previous one)
    instead of opening it again: a repeat is still skipped, a file with the same advantages but other rows is
    still read, and a previous file rewritten since its check is opened again."""
    import os

    from rlaudit.readers.base import ReadContext

    out = tmp_path / "run"
    batches = {s: _grpo_batch(CHATML_DECODED, [f"persona {s}", "Be concise."]) for s in (1, 2, 4)}
    adv = [0.5 * i for i in range(8)]
    trl_step(out, 1, *batches[1], rewards={"r": [1.0] * 8}, advantages=[-1.0] * 8)
    trl_step(out, 2, *batches[2], rewards={"r": [2.0] * 8}, advantages=adv)
    trl_step(out, 3, *batches[2], rewards={"r": [2.0] * 8}, advantages=adv)  # step 2's batch logged again
    trl_step(out, 4, *batches[4], rewards={"r": [4.0] * 8}, advantages=adv)  # same advantages, other rows
    report = store.ingest(out)
    assert report.rows_added == 24 and report.bad_records == 0
    steps = store.query("SELECT DISTINCT step FROM rollouts ORDER BY 1", runs=["run"]).column(0).to_pylist()
    assert steps == [1, 2, 4]
    assert any("same generation batch" in n for n in report.notes)

    reader = resolve_reader(out)
    ctx = ReadContext(run="x")
    reader.prepare(out, ctx)
    files = {f.step: f for f in reader.files(out)}
    assert len(list(reader.read_here(files[1], ctx))) == 1  # checked: kept for step 2's check
    path = trl_step(out, 1, *batches[2], rewards={"r": [2.0] * 8}, advantages=adv)  # now step 2's batch
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert list(reader.read_here(files[2], ctx)) == []  # a repeat of the file as it is now
