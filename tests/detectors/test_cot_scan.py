"""The CoT-grading scan on synthetic runs whose exposure is known rollout by rollout."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from cot_synth import make_run, paragraph, sentence
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.audit import audit_store
from rlaudit.detectors import AuditConfig
from rlaudit.cot.scan import ScanParams, scan_batch
from rlaudit.errors import RlauditError
from rlaudit.schema import ROLLOUT_SCHEMA, canonical_table


def scan_findings(store, table, **options):
    store.append(table.column("run")[0].as_py(), table, "part-1")
    config = AuditConfig(detectors=["cot_grading"], options={"cot_grading": {"screen": False, **options}})
    result = audit_store(store, [table.column("run")[0].as_py()], config)
    errors = result.of_kind("audit_error")
    assert not errors, errors[0].fields["traceback"]
    return [f for f in result.of_kind("cot_grading") if f["method"] == "scan"]


def exposed_ids(table):
    return {r["rollout_id"] for r in scan_batch(table, ScanParams()).to_pylist() if r["exposed"]}


@pytest.mark.parametrize("mode", ["full", "markdown", "tail"])
def test_each_exposure_mode_is_found_exactly(mode):
    def exposure(step, task, rng):
        return mode if rng.random() < 0.25 else None

    table, truth = make_run(exposure=exposure, seed=3)
    assert truth
    assert exposed_ids(table) == set(truth)


@pytest.mark.parametrize("mode", ["full", "markdown", "tail"])
def test_exposure_of_chinese_reasoning_is_found_exactly(mode):
    """Chinese has no spaces between words: the scan's tokens are its characters, so exposure is found as in
    English, and the shared vocabulary of a clean Chinese run does not look like exposure."""
    def exposure(step, task, rng):
        return mode if rng.random() < 0.25 else None

    table, truth = make_run(exposure=exposure, seed=3, zh=True)
    assert truth
    assert exposed_ids(table) == set(truth)


def test_clean_chinese_run_has_no_scan_findings(store):
    table, truth = make_run(run="clean-zh", steps=30, groups=8, seed=11, zh=True)
    assert not truth
    assert scan_findings(store, table) == []


def test_clean_run_has_no_scan_findings(store):
    # reasoning and answers share vocabulary and a verbatim sentence; graders see prompt + answer + reference,
    # and half the rollouts echo the reference in their reasoning
    table, truth = make_run(run="clean", steps=30, groups=8, seed=11)
    assert not truth
    assert scan_findings(store, table) == []


def test_rare_fallback_exposure_rate_first_step_and_ci(store):
    def exposure(step, task, rng):  # a fallback path that shows the full completion in ~1.5% of calls
        return "full" if rng.random() < 0.015 else None

    table, truth = make_run(run="fallback", steps=40, groups=10, seed=5, exposure=exposure)
    (f,) = scan_findings(store, table)
    n = table.num_rows
    assert f["exposed_samples"] == len(truth) and f["samples"] == n
    assert f["exposure_rate"] == pytest.approx(len(truth) / n)
    lo, hi = f["exposure_rate_ci"]
    assert lo < len(truth) / n < hi
    steps = table.to_pandas().set_index("rollout_id").loc[sorted(truth), "step"]
    assert f["first_step"] == steps.min()
    assert f.severity == "high" and f["grader"] == "judge"
    assert sum(f["series"]["exposed"]) == len(truth)


def test_mid_run_onset_in_one_task_is_localised(store):
    def exposure(step, task, rng):
        return "full" if task == "math" and step >= 12 else None

    table, truth = make_run(run="onset", steps=20, seed=2, exposure=exposure)
    (f,) = scan_findings(store, table)
    assert f["first_step"] == 12
    assert f["by_task"]["chat"]["exposed_samples"] == 0
    assert f["by_task"]["math"]["first_step"] == 12
    series = dict(zip(f["series"]["steps"], f["series"]["exposed"]))
    assert all(series[s] == 0 for s in range(12)) and all(series[s] > 0 for s in range(12, 20))


def test_evidence_marks_the_span_of_reasoning_in_the_grader_input(store):
    table, truth = make_run(run="ev", seed=4, exposure=lambda s, t, r: "markdown" if r.random() < 0.2 else None)
    (f,) = scan_findings(store, table)
    rows = {r["rollout_id"]: r for r in table.to_pylist()}
    assert f.evidence
    for ev in f.evidence:
        assert ev.rollout_id in truth
        seen = dict(rows[ev.rollout_id]["grader_inputs"])["judge"]
        start, end = ev.data["span"]
        words = seen[start:end].lower().replace("*", " ").split()
        reasoning = rows[ev.rollout_id]["reasoning"].lower()
        assert len(words) >= 10 and " ".join(words[:4]).strip(".") in reasoning.replace(".", "")
        assert ev.data["text_offset"] <= start


def test_max_step_scopes_the_scan(store):
    table, truth = make_run(run="late", steps=10, seed=8,
                            exposure=lambda s, t, r: "full" if s >= 7 and r.random() < 0.5 else None)
    store.append("late", table, "p")
    options = {"cot_grading": {"screen": False}}
    early = audit_store(store, ["late"], AuditConfig(detectors=["cot_grading"], max_step=6, options=options))
    assert early.of_kind("cot_grading") == []
    full = audit_store(store, ["late"], AuditConfig(detectors=["cot_grading"], options=options))
    assert full.of_kind("cot_grading")[0]["first_step"] == 7


def test_min_exposed_and_severity_options(store):
    table, truth = make_run(run="opt", seed=9, exposure=lambda s, t, r: "full" if r.random() < 0.05 else None)
    assert 0 < len(truth) < 50
    assert scan_findings(store, table, min_exposed=50) == []
    (f,) = audit_store(store, ["opt"], AuditConfig(detectors=["cot_grading"], options={"cot_grading": {
        "screen": False, "severity": "medium"}})).of_kind("cot_grading")
    assert f.severity == "medium"
    with pytest.raises(RlauditError, match="min_containment"):
        ScanParams.from_options({"min_containment": 0})


def _row(rid, group, prompt, reasoning, answer, seen, step=0):
    return {"run": "r", "rollout_id": rid, "step": step, "split": "train", "group_id": group, "sample_index": 0,
            "condition": "none", "system_prompt": None, "task": None, "prompt": prompt,
            "completion": f"<think>{reasoning}</think>{answer}", "reasoning": reasoning, "answer": answer,
            "rewards": [("judge", 1.0)], "reward": 1.0, "advantage": None, "grader_inputs": [("judge", seen)],
            "metadata": None}


def test_reasoning_that_restates_answer_or_quotes_prompt_is_not_exposure():
    rng = np.random.default_rng(0)
    prompt, answer = paragraph(rng, 4), paragraph(rng, 4)
    reasoning = f"{prompt} {answer}"  # nothing reasoning-only except the seams
    rows = [_row("a", "g1", prompt, reasoning, answer, f"Question: {prompt}\nResponse: {answer}"),
            _row("b", "g2", prompt, reasoning, answer, f"{prompt} {answer}")]  # even the seam is seen here
    assert exposed_ids(canonical_table(rows)) == set()


def test_listwise_grader_that_sees_every_completion_of_the_group_is_found():
    rng = np.random.default_rng(1)
    prompt = paragraph(rng, 2)
    members = [(paragraph(rng, 5), sentence(rng, 8)) for _ in range(4)]
    seen = "Rank these responses:\n" + "\n---\n".join(f"<think>{r}</think>{a}" for r, a in members)
    rows = [_row(f"r{i}", "g", prompt, r, a, seen) for i, (r, a) in enumerate(members)]
    assert exposed_ids(canonical_table(rows)) == {"r0", "r1", "r2", "r3"}


def test_one_rollout_echoing_a_group_reference_is_not_exposure():
    rng = np.random.default_rng(2)
    prompt, reference = paragraph(rng, 2), paragraph(rng, 3)
    rows = []
    for i in range(4):
        reasoning = paragraph(rng, 4) + (" " + reference if i == 0 else "")
        answer = sentence(rng, 8)
        rows.append(_row(f"r{i}", "g", prompt, reasoning, answer, f"Q: {prompt}\nA: {answer}\nRef: {reference}"))
    assert exposed_ids(canonical_table(rows)) == set()


def test_run_without_grader_inputs_gives_no_findings(store):
    table, _ = make_run(run="nogi", seed=1)
    table = table.set_column(table.schema.get_field_index("grader_inputs"), "grader_inputs",
                             pa.array([[]] * table.num_rows, ROLLOUT_SCHEMA.field("grader_inputs").type))
    assert scan_findings(store, table) == []


def test_findings_json_round_trip(store):
    table, _ = make_run(run="js", seed=6, exposure=lambda s, t, r: "full" if r.random() < 0.1 else None)
    (f,) = scan_findings(store, table)
    obj = json.loads(json.dumps(f.to_json()))
    assert obj["kind"] == "cot_grading" and obj["method"] == "scan" and obj["evidence"][0]["span"]


def test_decision_rule_needs_many_matches_and_coverage_or_a_long_verbatim_run():
    from rlaudit.cot.scan import Tally

    p = ScanParams()
    t = Tally(reasoning_only=np.array([60, 60, 10, 200, 12, 200, 200, 5, 4]),
              matched=np.array([5, 40, 8, 20, 7, 9, 9, 5, 4]), longest=np.array([5, 10, 8, 16, 7, 9, 9, 5, 4]),
              edge=np.array([5, 0, 8, 0, 7, 8, 0, 5, 4]))
    # 5/60 seen: no; 40/60 seen: yes; 8/10 seen: yes; 20/200 but a 20-word run: yes; 7/12: too few;
    # a 12-word run that ends (or starts) the reasoning: yes; the same run in the middle: no;
    # a 9-word reasoning seen whole: yes; an 8-word one: too short to tell from coincidence
    assert p.decide(t).tolist() == [False, True, True, True, False, True, False, True, False]


def test_a_short_coincidental_overlap_is_not_exposure():
    # a rollout-specific grader input (not group context) that shares one 10-word sentence with the reasoning
    rng = np.random.default_rng(5)
    rows = []
    for i in range(6):
        prompt, shared = paragraph(rng, 2), sentence(rng, 10)
        reasoning = f"{paragraph(rng, 4)} {shared} {paragraph(rng, 2)}"
        answer = sentence(rng, 9)
        rows.append(_row(f"r{i}", f"g{i}", prompt, reasoning, answer, f"Q: {prompt}\nA: {answer}\nNote: {shared}"))
    table = canonical_table(rows)
    results = scan_batch(table, ScanParams()).to_pylist()
    assert all(r["matched"] >= 4 for r in results)  # the overlap is seen...
    assert not any(r["exposed"] for r in results)  # ...but is not exposure


def test_sliced_batches_give_the_same_results():
    table, truth = make_run(seed=12, exposure=lambda s, t, r: "full" if r.random() < 0.3 else None)
    whole = exposed_ids(table)
    parts = set()
    for start in range(0, table.num_rows, 37):  # slices share buffers with offsets != 0
        parts |= exposed_ids(table.slice(start, 37))
    assert whole == set(truth) and parts == whole


def test_chance_calibration_silences_sentence_coincidences(store):
    # reasoning and per-rollout grader notes drawn from one small pool of long sentences: the per-rollout rule
    # fires often on coincidences, but no more often than on chance pairings, so no finding
    rng = np.random.default_rng(7)
    pool = [sentence(rng, 13) for _ in range(12)]
    rows = []
    for i in range(400):
        prompt, answer = paragraph(rng, 2), sentence(rng, 8)
        reasoning = " ".join(rng.choice(pool, 3))
        seen = f"Q: {prompt}\nA: {answer}\nNote: {rng.choice(pool)}"
        rows.append(_row(f"r{i}", f"g{i // 4}", prompt, reasoning, answer, seen, step=i // 40))
    table = canonical_table(rows)
    assert len(exposed_ids(table)) > 20
    assert scan_findings(store, table) == []


def test_a_run_whose_grader_inputs_are_one_group_says_it_has_no_chance_calibration(store):
    """One prompt group's grader inputs leave no other group to pair with: the finding must say the count is not
    calibrated against chance, not quote 'fires on 0 of 0 chance pairs (p=0)'."""
    rng = np.random.default_rng(3)
    prompt = paragraph(rng, 2)
    rows = []
    for i in range(4):
        reasoning, answer = paragraph(rng, 4), sentence(rng, 9)
        rows.append(_row(f"r{i}", "g0", prompt, reasoning, answer, f"<think>{reasoning}</think>{answer}"))
    [finding] = scan_findings(store, canonical_table(rows))
    assert finding["p_value"] is None and finding["chance_samples"] == 0
    assert "No chance pairs could be formed" in finding.explanation and "0 of 0" not in finding.explanation


def test_parts_scanned_on_threads_match_one_thread_and_the_sql_path(store, monkeypatch):
    """Scanning the parts on several threads, reading them with Arrow, gives the same rows as one thread, and as
    the SQL path (`scan_run` over the part's view) that captured inputs still take."""
    import duckdb

    from rlaudit.cot.detector import scan_key, scan_parts
    from rlaudit.cot.scan import scan_run
    from rlaudit.layout import view_columns

    def exposure(step, task, rng):
        return "full" if rng.random() < 0.2 else None

    table, truth = make_run(exposure=exposure, steps=12, seed=5)
    steps = table.column("step").to_numpy()
    for i in range(4):
        store.append("synth", table.filter(pa.array(steps % 4 == i)), f"part-{i}")
    params = ScanParams(chance_rows=50)  # a stride above 1: chance pairings on some batches only

    def results(threads):
        monkeypatch.setenv("RLAUDIT_THREADS", str(threads))
        import shutil
        shutil.rmtree(store.run_dir("synth") / "derived", ignore_errors=True)
        key, extra = scan_key(store, "synth", params)
        sql = scan_parts(store, "synth", params, key, extra)
        return duckdb.sql(f"SELECT * FROM {sql} ORDER BY ALL").fetchall()

    one, two = results(1), results(2)
    assert one == two and {r[0] for r in one if r[10] and not r[11]} == set(truth)
    con = duckdb.connect()
    sql_rows = []
    for part in store.parts("synth"):
        fmt = store.part_formats("synth")[part.name]
        con.execute(f"CREATE OR REPLACE VIEW p AS SELECT {view_columns(*fmt)} FROM read_parquet('{part}')")
        sql_rows += scan_run(con, ScanParams(chance_rows=0), "p").to_pylist()
    arrow_rows = [r for r in one if not r[11]]
    assert sorted(tuple(r.values()) for r in sql_rows) == arrow_rows


def test_workers_follow_the_environment_and_the_memory_budget(monkeypatch):
    from rlaudit import memory

    monkeypatch.delenv("RLAUDIT_MEMORY", raising=False)
    monkeypatch.setenv("RLAUDIT_THREADS", "3")
    assert memory.workers(1 << 30) == 3
    monkeypatch.setenv("RLAUDIT_THREADS", "zero")
    with pytest.raises(RlauditError, match="RLAUDIT_THREADS"):
        memory.workers(1)
    monkeypatch.delenv("RLAUDIT_THREADS")
    monkeypatch.setattr(memory, "budget", lambda: (1 << 30, "test"))
    assert memory.workers(1 << 30) == 1  # 15% of a 1 GB budget holds less than one 1 GB worker
    monkeypatch.setattr(memory, "budget", lambda: None)
    assert 1 <= memory.workers(1 << 30) <= memory.MAX_WORKERS


def test_growing_run_takes_scanned_row_counts_from_the_index(store, monkeypatch):
    """The stride of a growing run counts the rows of the parts scanned before from the cache's row-count index
    (`RowCounts`, one file), not from every result file's footer: the same stride, so the same chance pairings
    and the same results as a cold scan of all parts, and an index that names every cached file's rows."""
    import shutil

    import duckdb
    import pyarrow.parquet as pq

    from rlaudit.cot import detector
    from rlaudit.cot.detector import RowCounts, scan_key, scan_parts

    table, _ = make_run(exposure=lambda step, task, rng: "full" if rng.random() < 0.2 else None, steps=12, seed=7)
    steps = table.column("step").to_numpy()
    params = ScanParams(chance_rows=30, batch_rows=16)  # a stride above 1 that grows with the run
    key, extra = scan_key(store, "synth", params)
    cache = store.run_dir("synth") / "derived" / "cot_scan" / key
    strides = []
    real = detector._stride
    monkeypatch.setattr(detector, "_stride", lambda *a, **k: strides.append(real(*a, **k)) or strides[-1])
    for i in range(4):
        store.append("synth", table.filter(pa.array(steps % 4 == i)), f"part-{i}")
        if i == 3:  # a footer read now would mean the index was not used
            monkeypatch.setattr(detector.pq, "read_metadata", lambda *a, **k: pytest.fail("footer read"))
        warm = scan_parts(store, "synth", params, key, extra)
    monkeypatch.undo()
    counts = RowCounts(cache).counts
    assert counts == {f.name: pq.read_metadata(f).num_rows for f in cache.glob("*.parquet")} and len(counts) == 4
    assert strides[-1] > 1
    # the stride the old count (every footer) gives, for the last part, on the same state
    found = {p.name: cache / f"{p.stem}.parquet" for p in store.parts("synth")[:3]}
    con = duckdb.connect()
    assert real(con, store.parts("synth")[3:], found, params) == strides[-1]
    # an index that is lost or names no file is rebuilt from the footers
    (cache / RowCounts.NAME).write_text("[1, 2]")
    (cache / f"{store.parts('synth')[3].stem}.parquet").unlink()
    again = scan_parts(store, "synth", params, key, extra)
    assert duckdb.sql(f"SELECT * FROM {again} ORDER BY ALL").fetchall() == \
        duckdb.sql(f"SELECT * FROM {warm} ORDER BY ALL").fetchall()
    assert RowCounts(cache).counts == counts
    shutil.rmtree(cache.parent)


def test_summaries_of_a_cold_audit_go_straight_into_segments(store, monkeypatch):
    """A cold audit of a run of more parts than a segment holds writes the summaries of a whole group of parts
    into their segment only (`summary.fresh`), not into a file each; a later audit finds them done (none is
    summarised again) and gives the same findings, as do summaries written one file per part."""
    import shutil

    from rlaudit.cot import summary
    from rlaudit.derived import segments
    from rlaudit.detectors import AuditConfig, run_detectors

    parts = segments.FANOUT + 2
    table, truth = make_run(exposure=lambda step, task, rng: "full" if rng.random() < 0.2 else None, steps=parts,
                            seed=3)
    steps = table.column("step").to_numpy()
    for i in range(parts):
        store.append("synth", table.filter(pa.array(steps == i)), f"part-{i:02d}")

    def audit():
        return [f.to_json() for f in run_detectors(store, "synth", AuditConfig(detectors=["cot_grading"]))]

    cold = audit()
    assert [f["exposed_samples"] for f in cold if f["kind"] == "cot_grading" and f.get("method") == "scan"] == [len(truth)]
    d = next((store.run_dir("synth") / "derived" / "cot_scan").glob("*/summary/v*"))
    assert len(list(d.glob("*.parquet"))) == 2 and len(segments.held(d / "segments" / "summary")) == segments.FANOUT
    monkeypatch.setattr(summary, "save_summary", lambda *a: pytest.fail("summarised again"))
    assert audit() == cold
    monkeypatch.undo()
    shutil.rmtree(d)  # summarised again from the result files, one file per part
    assert audit() == cold and len(list(d.glob("*.parquet"))) == parts


def test_chance_pairings_do_not_depend_on_when_the_run_was_ingested(tmp_path):
    """The same files ingested into two stores at different times (the parts' names differ in their ingest time)
    get the same chance pairings with a stride above 1, so the same results, chance rows included."""
    import duckdb

    from rlaudit.cot.detector import scan_key, scan_parts
    from rlaudit.store import Store, part_source

    table, _ = make_run(exposure=lambda step, task, rng: "full" if rng.random() < 0.2 else None, steps=12, seed=3)
    steps = table.column("step").to_numpy()
    params = ScanParams(chance_rows=40, batch_rows=16)

    def results(root):
        store = Store(root)
        for i in range(4):
            store.append("synth", table.filter(pa.array(steps % 4 == i)), f"part-{i}")
        key, extra = scan_key(store, "synth", params)
        sql = scan_parts(store, "synth", params, key, extra)
        return [p.name for p in store.parts("synth")], duckdb.sql(f"SELECT * FROM {sql} ORDER BY ALL").fetchall()

    names_a, a = results(tmp_path / "a")
    names_b, b = results(tmp_path / "b")
    assert set(names_a).isdisjoint(names_b)  # ingest times differ ...
    assert [part_source(n) for n in names_a] == [part_source(n) for n in names_b]  # ... the sources do not
    chance = [r for r in a if r[11]]
    assert chance and len(chance) < sum(1 for r in a if not r[11])  # some batches only: the stride matters
    assert a == b


def test_part_source_drops_only_the_ingest_time():
    from rlaudit.store import part_source

    assert part_source("0a6ffbc4b893-18edc2fcae367ca7.parquet") == "0a6ffbc4b893"
    assert part_source("0a6ffbc4b893-18edc2fcae367ca7") == "0a6ffbc4b893"
    assert part_source("completions_00001.parquet") == "completions_00001"  # not a stored part's name: as it is
    assert part_source("run-final.parquet") == "run-final"


@settings(max_examples=20, deadline=None, derandomize=True)
@given(cuts=st.lists(st.integers(1, 30), min_size=1, max_size=6), batch_rows=st.integers(2, 60),
       paired=st.sets(st.integers(0, 8), max_size=3), listwise=st.booleans())
def test_file_batches_scanned_together_give_each_batch_alone(cuts, batch_rows, paired, listwise):
    """`scan_file_batches` scans several files' batches as one prepared batch but must give, row for row and in
    order, what scanning each batch alone gives (`scan_batches` per file), whatever the files' sizes, the batch
    size, which batches get chance pairings, and with group ids repeated across files (the same group name in
    two files is two groups)."""
    from rlaudit.cot.scan import scan_batches, scan_file_batches

    table, _ = make_run(seed=5, steps=4, groups=6, exposure=lambda s, t, r: "full" if r.random() < 0.3 else None)
    if listwise:  # groups named alike at every step ("3", not "1-3"): a group must not reach across files
        table = table.set_column(table.schema.get_field_index("group_id"), "group_id",
                                 pc.replace_substring_regex(table.column("group_id"), "^[0-9]+-", ""))
    # two graders per rollout (the second sees the first's input without its last line): results come per grader
    inputs = table.column("grader_inputs").combine_chunks()
    seen = inputs.items.to_pylist()
    keys, items = [], []
    for text in seen:
        keys += ["judge", "critic"]
        items += [text, text.rsplit("\n", 1)[0]]
    two = pa.MapArray.from_arrays(pa.array(np.arange(0, 2 * len(seen) + 1, 2), pa.int32()), pa.array(keys),
                                  pa.array(items))
    table = table.set_column(table.schema.get_field_index("grader_inputs"), "grader_inputs", two)
    params = ScanParams(batch_rows=batch_rows)
    files, start = [], 0
    for k, n in enumerate(cuts):
        rows = table.slice(start, n)
        start += n
        if rows.num_rows:
            files.append(([rows.slice(i, batch_rows) for i in range(0, rows.num_rows, batch_rows)],
                          lambda i, k=k: (k * 7 + i) % 9 in paired))
    alone = pa.concat_tables([scan_batches(batches, params, chance) for batches, chance in files])
    together = scan_file_batches(files, params)
    assert together.to_pylist() == alone.to_pylist()
