"""Every finding says what to do (`remedy`), and `rlaudit export` writes the rollouts without a behaviour."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rlaudit.audit import audit_store
from rlaudit.detectors import AuditConfig
from rlaudit.errors import RlauditError
from rlaudit.export import export_run
from rlaudit.findings import KINDS, Evidence, Finding
from rlaudit.organisms import simulate
from rlaudit.remedies import add_remedies, remedy_for
from rlaudit.store import Store


@pytest.fixture(scope="module")
def goblin_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("g")
    simulate("goblin_persona", root / "goblin", format="trl", seed=2)
    store = Store(root / "store")
    store.ingest(root / "goblin")
    return store


def test_every_kind_has_a_remedy_even_with_malformed_fields():
    for kind in KINDS:
        assert remedy_for(Finding(kind, "r", "high", "t", fields={"behavior_spec": "goblin", "grader": "g",
                                                                 "signal": "s"})), kind
        remedy_for(Finding(kind, "r", "high", "t", fields={"by_condition": [1, None], "pair": None,
                                                          "exposed_samples": "x"}))  # never raises


def test_cot_grading_remedy_names_the_grader_input_and_where_it_was_seen():
    f = Finding("cot_grading", "run", "high", "t", fields={
        "grader": "usefulness_rm", "method": "scan", "exposed_samples": 93, "first_step": 4,
        "by_condition": {"a": {"exposed_samples": 3}, "b": {"exposed_samples": 50}},
        "by_task": {"math": {"exposed_samples": 90}}}, evidence=[Evidence("1.jsonl:27")])
    text = remedy_for(f)
    assert "Strip the reasoning from the input of grader 'usefulness_rm'" in text
    assert "from step 4" in text and "'b' (50), 'a' (3)" in text and "'math'" in text and "1.jsonl:27" in text


def test_attribution_remedy_names_the_signal_and_the_evidence_pair():
    f = Finding("reward_attribution", "run", "high", "t", fields={
        "behavior_spec": "goblin", "signal": "nerdy_rm", "pressure_share": 0.93, "paired_preference": 0.84,
        "condition": "nerdy"}, evidence=[
        Evidence("a:1", data={"pair": 1, "has_behavior": True, "scores": {"nerdy_rm": 1.9}}),
        Evidence("a:2", data={"pair": 1, "has_behavior": False, "scores": {"nerdy_rm": 0.1}})])
    text = remedy_for(f)
    assert "Fix or down-weight reward signal 'nerdy_rm' in condition 'nerdy'" in text
    assert "a:1 (nerdy_rm = 1.9) with the behaviour vs a:2 (nerdy_rm = 0.1) without" in text
    assert "rlaudit trace run --behavior goblin" in text
    low = Finding("reward_attribution", "run", "low", "t", fields={"behavior_spec": "verify", "signal": "acc"})
    assert "no change needed" in remedy_for(low)


def test_emerging_remedy_gives_the_export_command():
    f = Finding("emerging_behavior", "my run", "medium", "t", fields={"behavior_spec": "great question",
                                                                     "prevalence_end": 0.2})
    assert "rlaudit export 'my run' --exclude 'great question' --out my-run-without-great-question.jsonl" \
        in remedy_for(f)


def test_the_audit_adds_remedies_to_the_findings_json(tmp_path, goblin_store):
    result = audit_store(goblin_store, None, AuditConfig(detectors=["attribution"]))
    assert result.findings and all(f.get("remedy") for f in result.findings)
    result.write_json(tmp_path / "f.json")
    data = json.loads((tmp_path / "f.json").read_text())
    assert all(isinstance(f["remedy"], str) and f["remedy"] for f in data["findings"])
    existing = Finding("cot_grading", "r", "high", "t", fields={"remedy": "custom"})
    add_remedies([existing])
    assert existing["remedy"] == "custom"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_leaves_out_exactly_the_rollouts_that_show_the_behaviour(tmp_path, goblin_store, fmt):
    out = tmp_path / f"clean.{fmt}"
    res = export_run(goblin_store, "goblin", out, ["goblin", r"re:\bgremlins?\b"], format=fmt)
    con = goblin_store.connect()
    total, shown = con.execute(r"SELECT count(*), count(*) FILTER (WHERE regexp_matches(lower(completion), "
                               r"'\bgoblin\b|\bgremlins?\b')) FROM rollouts").fetchone()
    assert res.rollouts == total and res.written == total - shown and shown > 0
    rows = ([json.loads(line) for line in out.read_text().splitlines()] if fmt == "jsonl"
            else pq.read_table(out).to_pylist())
    assert len(rows) == res.written
    assert not any("goblin" in r["completion"].lower() for r in rows)
    assert {"run", "rollout_id", "step", "prompt", "completion", "rewards"} <= set(rows[0])
    if fmt == "jsonl":  # what rlaudit writes it reads back
        back = Store(tmp_path / "s2")
        assert back.ingest(out).rows_added == res.written


def test_export_refuses_a_numeric_feature_and_leaves_no_file(tmp_path, goblin_store):
    with pytest.raises(RlauditError, match="numeric style feature"):
        export_run(goblin_store, "goblin", tmp_path / "x.jsonl", ["style:length"])
    assert list(tmp_path.iterdir()) == []


def test_export_cli(tmp_path, goblin_store, capsys):
    from rlaudit.cli import main

    main(["export", "goblin", "--store", str(goblin_store.root), "--exclude", "goblin", "--out",
          str(tmp_path / "x.parquet")])
    assert pq.read_metadata(tmp_path / "x.parquet").num_rows > 0
    assert "left out ('goblin'" in " ".join(capsys.readouterr().err.split())


def test_training_health_remedy_names_the_trainer_setting():
    f = lambda check, trainer, **kw: remedy_for(Finding(  # noqa: E731
        "training_health", "run", "high", "t", fields={"check": check, "trainer": trainer, **kw}))
    assert "`num_generations`" in f("zero_variance", "trl", direction="all_correct", onset_step=9)
    assert "from step 9" in f("zero_variance", "trl", direction="all_correct", onset_step=9)
    assert "algorithm.filter_groups.enable=True" in f("zero_variance", "verl", direction="all_correct")
    assert "difficulty_pool" in f("zero_variance", "prime-rl", direction="all_wrong")
    assert "`mask_truncated_completions=True`" in f("truncation", "trl")
    assert "data.max_response_length" in f("length_growth", "verl")
    assert "`beta`" in f("reward_eval_divergence", "trl")
    assert "actor_rollout_ref.actor.entropy_coeff" in f("entropy_collapse", "verl")
    assert "trainer.loss.kl_tau" in f("kl_drift", "prime-rl")
    assert f("clip_saturation", "canonical")  # formats without trainer keys get the generic advice
