"""Shared fixtures, and the Hypothesis profiles.

Property tests must not pass or fail by accident of a seed, nor fail because of an example saved by an earlier
run in the same clone:

- `ci` (when `CI` is set, as `.ci/run` does): derandomized, so every run draws the same examples; deeper (more
  examples for tests that do not set their own count); no example database, so nothing in `.hypothesis/` can
  change the outcome.
- `dev` (otherwise): random examples, a new sample each run, and failures saved in `.hypothesis/` and replayed
  first until fixed; this is how new bugs are found.

`HYPOTHESIS_PROFILE=ci|dev` forces one.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from rlaudit.store import Store

settings.register_profile("ci", derandomize=True, database=None, max_examples=200, deadline=None,
                          print_blob=True)
settings.register_profile("dev", deadline=None)


def hypothesis_profile() -> str:
    forced = os.environ.get("HYPOTHESIS_PROFILE")
    if forced:
        return forced
    return "ci" if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no") else "dev"


settings.load_profile(hypothesis_profile())


def pytest_report_header(config) -> str:  # noqa: ANN001
    return f"hypothesis profile: {hypothesis_profile()} ({settings.default})"


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")
