"""What a new user hits in the first hour (issue 19): usage errors, mistakes that look like success, where output
goes, start-up cost. Each test failed before its fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from rlaudit.cli import main
from rlaudit.organisms import simulate


def run_main(capsys, *args):
    """`rlaudit.cli.main` in-process: (exit code, stdout, stderr with rich's wrapping undone)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    cap = capsys.readouterr()
    return code, cap.out, " ".join(cap.err.split())


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "goblin"
    simulate("goblin_persona", out, format="trl", steps=8, prompts=8, generations=4, seed=1)
    return out


# ---------------------------------------------------------------- item 1: usage errors
@pytest.mark.parametrize("args,message", [
    (["bogus"], "No such command 'bogus'"),
    (["audit", "--bogus"], "No such option: --bogus"),
    (["audit"], "Missing argument"),
    (["simulate", "goblin_persona", "--steps", "abc"], "'--steps'"),
    (["findings", "f.json", "--severity"], "requires an argument"),
])
def test_usage_errors_are_one_error_line_and_exit_2(args, message):
    """The real entry point, as a subprocess: typer raises its own (vendored) click exception classes."""
    proc = subprocess.run([sys.executable, "-m", "rlaudit.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_dash_h_is_help_and_version_prints_the_version(capsys):
    from rlaudit import __version__

    code, out, _ = run_main(capsys, "-h")
    assert code == 0 and "Usage: rlaudit" in out and "audit" in out
    code, out, _ = run_main(capsys, "audit", "-h")
    assert code == 0 and "--store" in out
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"rlaudit {__version__}"


def test_python_dash_m_rlaudit_is_the_same_command_line():
    ok = subprocess.run([sys.executable, "-m", "rlaudit", "-h"], capture_output=True, text=True)
    assert ok.returncode == 0 and "Usage: rlaudit" in ok.stdout and "audit" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "rlaudit", "bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "No such command 'bogus'" in bad.stderr


def test_the_script_exits_as_a_normal_exit_would_without_the_teardown(tmp_path):
    """`cli.run` (the script, `python -m rlaudit`) ends with `os._exit`: it must still wait for threads that are not
    daemons (and stop an executor's idle workers, as the interpreter does), run the atexit callbacks, flush what
    was printed and give SystemExit's exit code."""
    program = f"""
import atexit, sys, threading, time
from pathlib import Path
out = Path({str(tmp_path)!r})
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(0.3)
    (out / "thread").write_text("done")
threading.Thread(target=late).start()
from concurrent.futures import ThreadPoolExecutor
left_open = ThreadPoolExecutor(1)  # never shut down: its idle worker must be told to stop, not waited for
left_open.submit(time.sleep, 0).result()
print("printed before", end="")  # no newline: held in stdout's buffer until the flush
sys.argv = ["rlaudit", *sys.argv[1:]]
from rlaudit.cli import run
run()
"""
    ok = subprocess.run([sys.executable, "-c", program, "--version"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("printed beforerlaudit ")
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"
    bad = subprocess.run([sys.executable, "-c", program, "audit", str(tmp_path / "missing"), "--store",
                          str(tmp_path / "store")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no such file or directory" in bad.stderr
    said = subprocess.run([sys.executable, "-c", "from rlaudit.cli import _exit_now; _exit_now('gave up')"],
                          capture_output=True, text=True)
    assert said.returncode == 1 and said.stderr.strip() == "gave up"
    plain = subprocess.run([sys.executable, "-c", "import threading; del threading._shutdown\n"
                            "from rlaudit.cli import _exit_now; _exit_now(3)"], capture_output=True, text=True)
    assert plain.returncode == 3  # without threading's hook: the interpreter's own exit, the same code


def test_a_bad_thread_setting_stops_the_command_before_any_work(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RLAUDIT_THREADS", "two")
    code, _, err = run_main(capsys, "audit", str(tmp_path / "nothing"), "--store", str(tmp_path / "store"))
    assert code == 2 and "RLAUDIT_THREADS='two': give a whole number of threads >= 1" in err
    assert not (tmp_path / "store").exists()


def test_the_thread_setting_governs_the_term_set_pool_too(monkeypatch):
    from rlaudit.derived import tokens

    monkeypatch.setenv("RLAUDIT_THREADS", "1")
    assert tokens.workers() == 1
    monkeypatch.setenv("RLAUDIT_THREADS", "3")
    assert tokens.workers() == 3


def test_help_does_not_import_the_heavy_modules():
    code = ("import sys, rlaudit.cli; heavy = [m for m in ('scipy', 'duckdb', 'pyarrow', 'numpy', 'rlaudit.detectors')"
            " if m in sys.modules]; print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    import rlaudit

    assert rlaudit.Store.__name__ == "Store" and "audit" in dir(rlaudit)  # the public API still resolves
    import rlaudit.audit  # noqa: F401 - importing the submodule must not replace the function
    from rlaudit import audit

    assert callable(audit) and audit.__module__ == "rlaudit.audit"


def test_reading_a_findings_json_does_not_import_the_detectors(tmp_path):
    """`rlaudit findings FILE` (and the report from a JSON) reads a file: importing every detector module (scipy,
    numba, and through pyarrow pandas) took it from ~0.75 to ~2.2 s."""
    from rlaudit.audit import AuditResult
    from rlaudit.findings import Finding

    path = tmp_path / "findings.json"
    AuditResult(runs=[], findings=[Finding(kind="emerging_behavior", severity="high", run="r", title="goblins rose",
                                           explanation="e")]).write_json(path)
    code = ("import sys; from rlaudit.cli import main\ntry: main(['findings', sys.argv[1]])\nexcept SystemExit: pass\n"
            "print([m for m in ('rlaudit.detectors', 'scipy', 'numba') if m in sys.modules], file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert "goblins rose" in proc.stdout and proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr


# ---------------------------------------------------------------- item 2: mistakes that look like success
@pytest.fixture(scope="module")
def findings_file(tmp_path_factory):
    from rlaudit.findings import Finding

    path = tmp_path_factory.mktemp("f") / "findings.json"
    fs = [Finding("emerging_behavior", "r", "medium", "goblin rose"), Finding("cot_grading", "r", "high", "saw CoT"),
          Finding("reward_health", "r", "low", "constant")]
    path.write_text(json.dumps({"schema_version": 1, "runs": [], "findings": [f.to_json() for f in fs]}))
    return path


def test_findings_severity_is_validated_and_case_insensitive(capsys, findings_file):
    code, _, err = run_main(capsys, "findings", findings_file, "--severity", "hgh")
    assert code == 2 and "error: --severity must be one of info, low, medium, high" in err
    code, out, _ = run_main(capsys, "findings", findings_file, "--severity", "HIGH")
    assert code == 0 and "saw CoT" in out and "goblin rose" not in out and "constant" not in out


def test_findings_kind_is_validated_and_a_detector_name_is_explained(capsys, findings_file):
    code, _, err = run_main(capsys, "findings", findings_file, "--kind", "emerging")
    assert code == 2 and "'emerging' is a detector, whose findings have kind 'emerging_behavior'" in err
    code, _, err = run_main(capsys, "findings", findings_file, "--kind", "nonsense")
    assert code == 2 and "not a finding kind" in err
    code, out, _ = run_main(capsys, "findings", findings_file, "--kind", "Emerging_Behavior")
    assert code == 0 and "goblin rose" in out and "saw CoT" not in out


def test_known_kinds_match_the_detector_registry():
    from rlaudit.detectors import DETECTORS
    from rlaudit.findings import KINDS

    registry = {k: d.name for d in DETECTORS for k in d.kinds}
    assert registry == {k: d for k, d in KINDS.items() if d not in ("any", "live")}


def test_generic_jsonl_without_columns_is_an_error_naming_its_fields(tmp_path, capsys):
    src = tmp_path / "mylogs"
    src.mkdir()
    (src / "data.jsonl").write_text("".join(json.dumps({"iteration": i, "question": "q", "response": "r",
                                                        "score": 1.0}) + "\n" for i in range(10)))
    code, out, err = run_main(capsys, "audit", src, "--store", tmp_path / "s")
    assert code == 2 and "none of the 10 record(s) could be read" in err
    assert "[data.jsonl:1, data.jsonl:2, data.jsonl:3, data.jsonl:4, data.jsonl:5]; and 5 more record(s)" in err
    assert "iteration, question, response, score" in err and "--columns step=FIELD" in err
    assert "No findings" not in out
    assert not (tmp_path / "s" / "runs" / "mylogs").exists()  # no 0-row run left behind
    code, _, _ = run_main(capsys, "ingest", src, "--store", tmp_path / "s",
                          "--columns", "step=iteration,prompt=question,completion=response")
    assert code == 0


def test_a_directory_of_torn_parquet_files_is_an_error_naming_each_file(tmp_path, capsys, trl_run):
    """Every file of a TRL completions directory cut short (a copy interrupted): the error says why and names
    the files, not only how many; nothing is stored."""
    src = tmp_path / "torn" / "completions"
    src.mkdir(parents=True)
    for f in sorted((trl_run / "completions").glob("*.parquet"))[:3]:
        (src / f.name).write_bytes(f.read_bytes()[:2000])
    code, out, err = run_main(capsys, "audit", src.parent, "--store", tmp_path / "s", "--format", "trl")
    assert code == 2 and "none of the 3 record(s) could be read as trl" in err
    assert "not a readable Parquet file" in err
    names = ", ".join(f"completions/completions_0000{i}.parquet" for i in (1, 2, 3))
    assert f"[{names}]" in err
    assert not (tmp_path / "s" / "runs" / "torn").exists()


def test_trl_completions_after_its_output_dir_is_the_same_data(tmp_path, capsys, trl_run):
    store = tmp_path / "s"
    assert run_main(capsys, "ingest", trl_run, "--store", store)[0] == 0
    code, _, err = run_main(capsys, "ingest", trl_run / "completions", "--store", store)
    assert code == 2 and "same rollout files as run 'goblin'" in err
    assert sorted(p.name for p in (store / "runs").iterdir()) == ["goblin"]
    assert run_main(capsys, "ingest", trl_run, "--store", store)[0] == 0  # re-ingesting the run itself is fine


def test_a_directory_with_two_log_formats_is_an_error_naming_both(tmp_path, capsys, trl_run):
    mixed = tmp_path / "mixed"
    shutil.copytree(trl_run, mixed)
    simulate("clean_legit", tmp_path / "v", format="verl", steps=4, prompts=4, generations=2)
    for f in (tmp_path / "v").glob("*.jsonl"):
        shutil.copy(f, mixed / f.name)
    code, _, err = run_main(capsys, "ingest", mixed, "--store", tmp_path / "s")
    assert code == 2 and "2 log layouts: trl" in err and "verl" in err and "--format" in err
    assert run_main(capsys, "ingest", mixed, "--store", tmp_path / "s", "--format", "trl")[0] == 0


def test_simulate_into_a_non_empty_directory_refuses(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "other.jsonl").write_text("{}\n")
    code, _, err = run_main(capsys, "simulate", "clean_legit", "--out", tmp_path / "x", "--steps", "3")
    assert code == 2 and "is not empty" in err
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["other.jsonl"]


def test_unknown_detector_is_reported_before_ingesting(tmp_path, capsys, trl_run):
    code, _, err = run_main(capsys, "audit", trl_run, "--store", tmp_path / "s", "--detector", "nosuch")
    assert code == 2 and "unknown detector" in err
    assert not (tmp_path / "s" / "runs").exists()


def test_audit_outputs_into_a_missing_directory_error_before_ingesting(tmp_path, capsys, trl_run):
    code, _, err = run_main(capsys, "audit", trl_run, "--store", tmp_path / "s", "--json", tmp_path / "no" / "f.json")
    assert code == 2 and "does not exist" in err and not (tmp_path / "s" / "runs").exists()


# ---------------------------------------------------------------- item 3: results to stdout, the store path
def test_tables_go_to_stdout_and_the_store_path_is_printed(tmp_path, capsys, trl_run):
    store = tmp_path / "s"
    code, out, err = run_main(capsys, "audit", trl_run, "--store", store, "--json", tmp_path / "f.json",
                              "--detector", "reward_health")
    assert code == 0 and f"store: {store}" in err and f"--store {store}" in err
    assert "finding" in out or "No findings" in out
    code, out, err = run_main(capsys, "runs", "--store", store)
    assert code == 0 and "goblin" in out and "goblin" not in err
    code, out, err = run_main(capsys, "findings", tmp_path / "f.json")
    assert code == 0 and ("finding(s)" in out or "No findings" in out) and err == ""
