"""The README documents what the code does: its schema table is the code's schema."""

from __future__ import annotations

from pathlib import Path

from rlaudit.schema import schema_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_schema_table_matches_code():
    assert schema_markdown() in README.read_text(encoding="utf-8")


def test_readme_quick_start_scripts_exist():
    root = README.parent
    text = README.read_text(encoding="utf-8")
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"bash {script}" in text
        assert (root / script).is_file()


def test_test_script_counts_cores_despite_omp_num_threads():
    """scripts/test.sh sizes its xdist workers by the cores; scripts/_env.sh exports OMP_NUM_THREADS=1 first, and
    GNU nproc reports that as the number of cores: the suite once ran on one worker of two for that reason."""
    import os
    import subprocess
    import sys

    script = (README.parent / "scripts" / "test.sh").read_text(encoding="utf-8")
    line = next(x for x in script.splitlines() if x.startswith("CORES="))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_THREAD_LIMIT": "1"}
    out = subprocess.run(["bash", "-c", f"{line}; echo $CORES"], env=env, capture_output=True, text=True, check=True)
    plain = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    cores = subprocess.run(["nproc"], env=plain, capture_output=True, text=True, check=True)
    assert int(out.stdout) == int(cores.stdout)
    # and the suite (as the demo) keeps compiled modules for its many Python processes: the setup both source does
    assert "source scripts/_env.sh" in script and "source scripts/_env.sh" in (
        README.parent / "scripts" / "demo.sh").read_text(encoding="utf-8")
    setup = (README.parent / "scripts" / "_env.sh").read_text(encoding="utf-8")
    assert "\nunset PYTHONDONTWRITEBYTECODE\n" in setup
    out = subprocess.run(["bash", "-c", "source scripts/_env.sh >/dev/null 2>&1; echo ${PYTHONDONTWRITEBYTECODE-unset}"],
                         cwd=README.parent, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
                                                 "VENV": os.path.dirname(os.path.dirname(sys.executable))},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "unset"
