"""Resampling evals with scripted backends: exact rates, clustered CIs, ratios, tool simulation, backtest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlaudit.evals import cuts, load_transcripts, run_backtest, run_resample
from rlaudit.evals.results import backtest, read_samples
from rlaudit.llm import ChatRequest, LLMClient, ScriptedBackend
from rlaudit.stats import bootstrap_group_sums, percentile_interval

from .agents import (TOOLS, candidate, reruns_tests, sampler, simulator, transcript, write_jsonl)


def _traffic(tmp_path, n=8):
    recs = [transcript(i, "A" if i < n // 2 else "B", "goblin done" if i % (n // 2) == 0 else "done")
            for i in range(n)]
    write_jsonl(tmp_path / "t.jsonl", recs)
    return recs


def _rate(rates, model, dim="all", cat="all", spec="goblin"):
    return next(r for r in rates if (r["model"], r["dimension"], r["category"], r["behavior"]) == (model, dim, cat,
                                                                                                   spec))


def test_exact_rates_ratios_and_transcript_clustered_cis(tmp_path):
    _traffic(tmp_path)
    res = run_resample(str(tmp_path / "t.jsonl"), {"cand": LLMClient(ScriptedBackend(candidate))}, ["goblin"],
                       samples=4, out=tmp_path / "out", simulator=LLMClient(ScriptedBackend(simulator)))
    rates = res["rates"]
    orig, cand = _rate(rates, "original"), _rate(rates, "cand")
    assert (orig["rate"], orig["samples"], orig["transcripts"]) == (0.25, 8, 8)
    assert (cand["rate"], cand["samples"], cand["transcripts"]) == (0.5, 32, 8)
    assert cand["ratio"] == 2.0
    for task in ("A", "B"):
        assert _rate(rates, "original", "task", task)["rate"] == 0.25
        assert _rate(rates, "cand", "task", task)["ratio"] == 2.0
    # the CIs are one Poisson bootstrap over transcripts, both models with the same weights
    stats = np.zeros((8, 4))
    for r in res["rows"]:
        i, j = int(r["transcript_id"][1:]), 0 if r["model"] == "original" else 2
        stats[i, j] += r["values"]["goblin"]
        stats[i, j + 1] += 1
    reps = bootstrap_group_sums(stats, n_boot=1000, seed=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rr = reps[:, 0::2] / reps[:, 1::2]
        ratio = rr[:, 1] / rr[:, 0]
    lo, hi = percentile_interval(rr)
    assert (orig["ci_low"], orig["ci_high"]) == (lo[0], hi[0])
    assert (cand["ci_low"], cand["ci_high"]) == (0.5, 0.5)  # every transcript gives exactly 2 of 4
    ratio = np.sort(ratio[~np.isnan(ratio)])
    k = len(ratio)  # inverted-CDF order statistics; replicates without an original goblin give inf
    assert (cand["ratio_low"], cand["ratio_high"]) == (ratio[int(np.ceil(0.025 * k)) - 1],
                                                       ratio[int(np.ceil(0.975 * k)) - 1])
    assert cand["ratio_high"] == float("inf")  # 8 transcripts, 2 with the behaviour: the upper bound is open
    # files: samples, rates, evidence, summary
    rows, specs = read_samples([tmp_path / "out"])
    assert specs == ["goblin"] and len(rows) == 8 + 32
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| `goblin` | all | all | cand | 8 | 32 | 50.0% (50.0%-50.0%) | 2.00" in summary
    assert "original: `done`" in summary and "Fixed it, goblin style." in summary


def test_clustering_widens_the_ci_when_transcripts_not_samples_vary(tmp_path):
    recs = [transcript(i, "A", "done") for i in range(20)]

    def by_transcript(request: ChatRequest) -> str:  # all 4 samples of a transcript agree
        return "goblin" if int(request.messages[1][1].split()[2].rstrip(",")) % 2 else "no"

    def by_sample(request: ChatRequest) -> str:  # every transcript has 2 of 4
        return "goblin" if request.param_dict()["seed"] % 2 else "no"

    from rlaudit.evals.transcripts import transcript_from_record

    ts = [transcript_from_record(r, r["id"]) for r in recs]
    res = run_resample(ts, {"t": LLMClient(ScriptedBackend(by_transcript)),
                            "s": LLMClient(ScriptedBackend(by_sample))}, ["goblin"], samples=4)
    t, s = _rate(res["rates"], "t"), _rate(res["rates"], "s")
    assert t["rate"] == s["rate"] == 0.5
    assert s["ci_high"] - s["ci_low"] == 0.0
    assert t["ci_high"] - t["ci_low"] > 0.3  # about 20 independent units, not 80


def test_history_byte_for_byte_tools_passed_and_unanswered_call_simulated(tmp_path):
    recs = _traffic(tmp_path, n=2)
    seen: list[ChatRequest] = []

    def spy(request: ChatRequest) -> str:
        seen.append(request)
        return candidate(request)

    sim_seen: list[ChatRequest] = []

    def sim(request: ChatRequest) -> str:
        sim_seen.append(request)
        return simulator(request)

    res = run_resample(str(tmp_path / "t.jsonl"), {"cand": LLMClient(ScriptedBackend(spy))}, ["goblin"],
                       samples=1, simulator=LLMClient(ScriptedBackend(sim)))
    first = [r for r in seen if len(r.message_dicts()) == 4]
    assert len(first) == 2
    for r in first:
        rec = recs[int(r.message_dicts()[1]["content"].split()[2].rstrip(","))]
        assert r.message_dicts() == rec["messages"][:4]  # every key of every message, as written
        assert r.raw == json.dumps(rec["messages"][:4], ensure_ascii=False, separators=(",", ":"))
        assert r.param_dict()["tools"] == TOOLS and r.param_dict()["seed"] == 0
    s = res["samples"][0]
    assert s.steps == 1 and s.simulated == 1 and not s.truncated
    event = s.tool_events[0]
    assert event["name"] == "read_file" and event["simulated"] and event["output"].startswith("SIMULATED output")
    assert json.loads(event["arguments"]) == {"path": "src/app.py"}
    assert [m["role"] for m in s.new] == ["assistant", "tool", "assistant"]
    assert s.new[1]["tool_call_id"] == s.new[0]["tool_calls"][0]["id"]
    # the simulator saw the tool's schema, the conversation and the call
    user = sim_seen[0].messages[-1][1]
    assert '"name": "read_file"' in user and "Fix issue" in user and 'CALL: read_file({"path": "src/app.py"})' in user
    assert len(sim_seen) == 2


def test_recorded_output_reused_and_step_cap(tmp_path):
    _traffic(tmp_path, n=2)
    ts = load_transcripts(str(tmp_path / "t.jsonl"))
    assert [c.index for c in cuts(ts, "all")] == [2, 4, 2, 4]
    sim = LLMClient(ScriptedBackend(simulator))
    res = run_resample(ts, {"c": LLMClient(ScriptedBackend(reruns_tests))}, ["goblin"],
                       samples=1, simulator=sim, cut="all")
    at2 = next(s for s in res["samples"] if s.cut.index == 2)
    assert at2.tool_events[0]["simulated"] is False and at2.tool_events[0]["output"] == "1 failed: test_0"
    assert at2.new[-1]["content"] == "Done."

    def loops(request: ChatRequest) -> str:
        return '<tool_call>{"name": "read_file", "arguments": {"path": "a"}}</tool_call>'

    sim = LLMClient(ScriptedBackend(simulator))
    res = run_resample(ts[:1], {"c": LLMClient(ScriptedBackend(loops))}, ["goblin"], samples=1, simulator=sim,
                       max_steps=2)
    s = res["samples"][0]
    assert s.steps == 2 and s.truncated and s.simulated == 2 and sim.accounting.calls == 2
    assert [m["role"] for m in s.new] == ["assistant", "tool", "assistant", "tool", "assistant"]


def test_rerun_is_resumable_from_the_cache(tmp_path):
    _traffic(tmp_path)
    backend = ScriptedBackend(candidate)
    kw = dict(samples=2, simulator=LLMClient(ScriptedBackend(simulator), cache=tmp_path / "c.sqlite"))
    run_resample(str(tmp_path / "t.jsonl"), {"c": LLMClient(backend, cache=tmp_path / "c.sqlite")}, ["goblin"], **kw)
    calls = backend.calls
    again = LLMClient(backend, cache=tmp_path / "c.sqlite")
    run_resample(str(tmp_path / "t.jsonl"), {"c": again}, ["goblin"], **kw)
    assert backend.calls == calls and again.accounting.cache_hits == again.accounting.calls == 32


def test_backtest_errors_and_direction_exact():
    def row(model, cat, rate, n):
        return {"dimension": "task", "category": cat, "behavior": "g", "model": model, "samples": n, "rate": rate}

    rates = [row("original", "A", 0.1, 100), row("c", "A", 0.3, 400), row("original", "B", 0.2, 100),
             row("c", "B", 0.1, 400)]
    observed = [row("observed", "A", 0.2, 200), row("observed", "B", 0.3, 200)]
    res = backtest(rates, observed, "c")
    a, b = res["rows"]
    fa, oa = (0.3 * 400 + 0.5) / 401, (0.2 * 200 + 0.5) / 201
    assert a["error"] == pytest.approx(fa / oa) and a["direction_right"] is True
    fb, ob = (0.1 * 400 + 0.5) / 401, (0.3 * 200 + 0.5) / 201
    assert b["error"] == pytest.approx(ob / fb) and b["direction_right"] is False
    assert res["median_error"] == pytest.approx(np.median([fa / oa, ob / fb]))
    assert res["directional_accuracy"] == 0.5


TRUE_BASE = {"t0": 0.05, "t1": 0.10, "t2": 0.20, "t3": 0.30, "t4": 0.40, "t5": 0.15, "t6": 0.25, "t7": 0.08}
TRUE_CAND = {"t0": 0.15, "t1": 0.05, "t2": 0.35, "t3": 0.15, "t4": 0.60, "t5": 0.30, "t6": 0.10, "t7": 0.20}


def _draw(rates, i, task, salt):
    u = int.from_bytes(__import__("hashlib").sha256(f"{salt}{i}".encode()).digest()[:6], "big") / 2**48
    return "goblin!" if u < rates[task] else "done."


def test_simulated_backtest_against_known_truth(tmp_path):
    """Production traffic from the old model (TRUE_BASE), a candidate with known other rates (TRUE_CAND), and
    later traffic of the deployed candidate: the forecast's error and direction against the truth."""
    tasks = sorted(TRUE_BASE)
    n = 80
    prod = [transcript(i, tasks[i % 8], _draw(TRUE_BASE, i, tasks[i % 8], "p")) for i in range(8 * n)]
    later = [transcript(i, tasks[i % 8], _draw(TRUE_CAND, i, tasks[i % 8], "o")) for i in range(8 * n)]
    write_jsonl(tmp_path / "prod.jsonl", prod)
    write_jsonl(tmp_path / "later.jsonl", later)
    run_resample(str(tmp_path / "prod.jsonl"), {"cand": LLMClient(ScriptedBackend(sampler(TRUE_CAND)),
                                                                  concurrency=32)},
                 ["goblin"], samples=4, out=tmp_path / "out")
    res = run_backtest(tmp_path / "out", str(tmp_path / "later.jsonl"))
    print(f"\nsimulated backtest: {res['categories']} categories, median error {res['median_error']:.2f}x, "
          f"directional accuracy {res['directional_accuracy']:.0%}")
    assert res["categories"] == 10  # 8 tasks, 1 tool set, 1 condition
    assert res["median_error"] < 1.5  # the seed's anchor: median 1.5x
    assert res["directional_accuracy"] >= 0.9  # the seed's anchor: 92%
    task_rows = [r for r in res["rows"] if r["dimension"] == "task"]
    assert len(task_rows) == 8 and sum(r["direction_right"] for r in task_rows) >= 7
    for r in task_rows:  # the forecast is the candidate's true rate, within sampling error
        assert abs(r["forecast"] - TRUE_CAND[r["category"]]) < 0.1
        assert r["baseline_rate"] == pytest.approx(TRUE_BASE[r["category"]], abs=0.12)


def test_stored_rollouts_are_transcripts(tmp_path):
    from rlaudit.schema import canonical_table
    from rlaudit.store import Store

    rows = [{"run": "r", "rollout_id": f"f:{i}", "step": i, "split": "train", "condition": "nerdy" if i % 2 else
             "none", "system_prompt": "Be nerdy." if i % 2 else None, "task": "math", "prompt": f"question {i}",
             "completion": "goblin says 4" if i < 2 else "4", "answer": "4", "rewards": {}, "grader_inputs": {}}
            for i in range(6)]
    store = Store(tmp_path / "store")
    store.append("r", canonical_table(rows), "step-0")
    ts = load_transcripts("store:r", store)
    assert len(ts) == 6
    one = next(t for t in ts if t.id == "r:f:1")
    assert one.messages == [{"role": "system", "content": "Be nerdy."}, {"role": "user", "content": "question 1"},
                            {"role": "assistant", "content": "goblin says 4"}]
    assert (one.condition, one.task) == ("nerdy", "math")

    def says_goblin(request: ChatRequest) -> str:
        return "goblin" if request.messages[0][0] == "system" else "4"

    res = run_resample(ts, {"c": LLMClient(ScriptedBackend(says_goblin))}, ["goblin"], samples=2)
    assert _rate(res["rates"], "original")["rate"] == pytest.approx(2 / 6)
    assert _rate(res["rates"], "c", "condition", "nerdy")["rate"] == 1.0
    assert _rate(res["rates"], "c", "condition", "none")["rate"] == 0.0
    assert _rate(res["rates"], "c", "condition", "nerdy")["ratio"] == 3.0


def test_cli_errors_are_one_line(tmp_path, capsys):
    from rlaudit.cli import main

    _traffic(tmp_path)
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}
    (tmp_path / "robot.jsonl").write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    (tmp_path / "unanswered.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    for argv, message in [
        (["resample", str(tmp_path / "t.jsonl"), "--model", "cand", "--behavior", "x", "--out", str(tmp_path / "o")],
         "expected NAME=BACKEND"),
        (["resample", str(tmp_path / "t.jsonl"), "--model", "c=scripted:tests.evals.agents:candidate", "--out",
          str(tmp_path / "o")], "give at least one --behavior"),
        (["resample", str(tmp_path / "nope.jsonl"), "--model", "c=scripted:tests.evals.agents:candidate",
          "--behavior", "x", "--out", str(tmp_path / "o")], "no such file"),
        (["resample", "compare", str(tmp_path)], "no samples.parquet"),
        (["resample", str(tmp_path / "robot.jsonl"), "--model", "c=scripted:tests.evals.agents:candidate",
          "--behavior", "x", "--out", str(tmp_path / "o")], "robot:2: messages[1].role: expected one of"),
        (["resample", str(tmp_path / "unanswered.jsonl"), "--model", "c=scripted:tests.evals.agents:candidate",
          "--behavior", "x", "--out", str(tmp_path / "o2")], "none with an assistant turn to resample"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_chunked_streaming_gives_the_same_results(tmp_path):
    _traffic(tmp_path)
    kw = dict(samples=4, simulator=LLMClient(ScriptedBackend(simulator)))
    one = run_resample(str(tmp_path / "t.jsonl"), {"c": LLMClient(ScriptedBackend(candidate))}, ["goblin"],
                       out=tmp_path / "one", chunk=1000, **kw)
    three = run_resample(str(tmp_path / "t.jsonl"), {"c": LLMClient(ScriptedBackend(candidate))}, ["goblin"],
                         out=tmp_path / "three", chunk=3, **kw)
    assert json.dumps(one["rates"]) == json.dumps(three["rates"]) and one["evidence"] == three["evidence"]
    assert one["manifest"]["simulated_calls"] == three["manifest"]["simulated_calls"] == 32
    assert "text" not in three["rows"][0] and three["samples"] == []  # compact: texts only on disk
    a, _ = read_samples([tmp_path / "one"])
    b, _ = read_samples([tmp_path / "three"])
    key = lambda r: (r["model"], r["cut_id"], r["sample"])  # noqa: E731
    assert sorted(a, key=key) == sorted(b, key=key)
