"""Property tests cannot pass or fail by accident of a seed in CI, nor because of `.hypothesis/` (issue 19)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _profile(env: dict[str, str]) -> str:
    code = ("import sys; sys.path.insert(0, 'tests'); import conftest; from hypothesis import settings; "
            "s = settings.default; print(conftest.hypothesis_profile(), s.derandomize, s.database, s.max_examples)")
    clean = {k: v for k, v in __import__("os").environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_ci_is_derandomized_deeper_and_ignores_saved_examples():
    assert _profile({"CI": "true"}) == "ci True None 200"


def test_development_runs_are_random():
    name, derandomize, *_ = _profile({}).split()
    assert (name, derandomize) == ("dev", "False")
    assert _profile({"CI": "false"}).startswith("dev ")


def test_ci_script_sets_ci():
    assert "CI=" in (ROOT / ".ci" / "run").read_text()
