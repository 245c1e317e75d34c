"""`rlaudit watch`: following a TRL run directory while it is written."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rlaudit.cli import app
from rlaudit.errors import RlauditError
from rlaudit.live import LiveConfig, watch
from rlaudit.live.alerts import AlertManager, JsonlSink

from .helpers import NERDY, PLAIN, write_trl_step


def rate(step: int) -> dict[str, float]:
    return {NERDY: 0.0 if step < 8 else 0.9, PLAIN: 0.0 if step < 8 else 0.9}


def test_watch_follows_a_growing_trl_directory(store, tmp_path, test_detectors):
    run_dir = tmp_path / "grpo-out"
    steps_written = []

    def trainer_step(_seconds: float) -> None:  # stands in for time passing while the trainer writes a step
        if len(steps_written) < 20:
            step = len(steps_written) + 1
            write_trl_step(run_dir / "completions", step, 10, rate(step))
            steps_written.append(step)

    statuses = []
    result = watch(run_dir, store, run="grpo", interval=0, max_polls=25, sleep=trainer_step,
                   config=LiveConfig(detectors=["test_goblin"], every_step=(), every=3, background=False),
                   alerts=AlertManager([JsonlSink(tmp_path / "alerts.jsonl")]), on_poll=statuses.append)
    assert statuses[0].waiting and "does not exist" in statuses[0].waiting
    assert result.stopped_by == "max_polls" and result.rows == 20 * 20 and result.steps == (1, 20)
    assert store.summary("grpo").signals == ["persona", "task"]
    goblin = [a for a in result.alerts if a.kind == "emerging_behavior"]
    assert goblin and 8 <= goblin[0].step <= 20
    assert result.auditor.errors == []
    # each poll read only the new file: the store's ingest is incremental
    assert store.manifest("grpo")["version"] <= 25 + 2


def test_watch_stops_when_idle_and_on_ctrl_c(store, tmp_path, test_detectors):
    run_dir = tmp_path / "done-run"
    for step in range(1, 4):
        write_trl_step(run_dir / "completions", step, 4, rate(step))
    idle = watch(run_dir, store, interval=0, until_idle=0.0, sleep=lambda s: None,
                 config=LiveConfig(detectors=["test_goblin"], every_step=(), background=False),
                 alerts=AlertManager([JsonlSink(tmp_path / "a.jsonl")]))
    assert idle.stopped_by == "idle" and idle.polls == 1 and idle.rows == 24

    def interrupt(_seconds):
        raise KeyboardInterrupt

    stopped = watch(run_dir, store, run="again", interval=1, sleep=interrupt,
                    config=LiveConfig(detectors=["test_goblin"], every_step=(), background=False),
                    alerts=AlertManager([JsonlSink(tmp_path / "b.jsonl")]))
    assert stopped.stopped_by == "interrupt" and stopped.rows == 24


def test_cli_watch(tmp_path, test_detectors):
    run_dir = tmp_path / "grpo-out"
    for step in range(1, 16):
        write_trl_step(run_dir / "completions", step, 10, rate(step))
    alerts = tmp_path / "alerts.jsonl"
    res = CliRunner().invoke(app, ["watch", str(run_dir), "--store", str(tmp_path / "store"), "--run", "grpo",
                                   "--max-polls", "2", "--interval", "0", "--alerts", str(alerts),
                                   "--detector", "test_goblin", "--every", "1", "--foreground"])
    assert res.exit_code == 0, res.output
    assert "300 rows" in res.output and "steps 1-15" in res.output
    assert "[emerging_behavior] goblin in" in res.output  # kinds in brackets are printed, not eaten as markup
    lines = [json.loads(x) for x in alerts.read_text().splitlines()]
    assert lines and lines[0]["kind"] == "emerging_behavior"


def test_cli_watch_bad_options(tmp_path):
    res = CliRunner().invoke(app, ["watch", str(tmp_path), "--min-severity", "urgent", "--max-polls", "1"])
    assert isinstance(res.exception, RlauditError) and "min severity" in str(res.exception)
    res = CliRunner().invoke(app, ["watch", str(tmp_path), "--webhook", "ftp://x", "--max-polls", "1"])
    assert isinstance(res.exception, RlauditError) and "http" in str(res.exception)
    res = CliRunner().invoke(app, ["watch", str(tmp_path), "--every", "0", "--max-polls", "1"])
    assert isinstance(res.exception, RlauditError) and ">= 1 step" in str(res.exception)


def test_watch_follows_verl_dumps_and_a_file_that_grows(store, tmp_path, test_detectors):
    """verl writes {step}.jsonl per step; a file caught half-written is re-read once complete."""
    from .helpers import step_batch

    dump = tmp_path / "rollout_data"

    def lines(step: int) -> list[str]:
        b = step_batch(step, 6, rate(step))
        return [json.dumps({"input": f"system\n{p[0]['content']}\nuser\n{p[1]['content']}", "output": c,
                            "score": t, "acc": t, "step": step})
                for p, c, t in zip(b["prompts"], b["completions"], b["rewards"]["task"])]

    polls = iter(range(1, 100))

    def trainer_step(_seconds: float) -> None:
        poll = next(polls)
        if poll > 13:
            return
        if poll == 12:  # the last file is caught half-written ...
            (dump / "12.jsonl").write_text("\n".join(lines(12)[:6]) + "\n")
            return
        step = 12 if poll == 13 else poll  # ... and complete at the next poll
        dump.mkdir(exist_ok=True)
        (dump / f"{step}.jsonl").write_text("\n".join(lines(step)) + "\n")

    trainer_step(0)
    result = watch(dump, store, run="verl", interval=0, max_polls=14, sleep=trainer_step,
                   config=LiveConfig(detectors=["test_goblin"], every_step=(), every=2, background=False),
                   alerts=AlertManager([JsonlSink(tmp_path / "alerts.jsonl")]))
    assert result.steps == (1, 12) and store.summary("verl").format == "verl"
    per_step = store.query("SELECT step, count(*) AS n FROM rollouts GROUP BY step", runs=["verl"]).to_pydict()
    assert set(per_step["n"]) == {12}  # the re-read replaced the half file's rows, nothing doubled
    assert any(a.kind == "emerging_behavior" for a in result.alerts)
    assert result.auditor.errors == []
