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
from sendable_reports import (  # noqa: F401  (hooks)
    pytest_report_to_serializable, pytest_runtest_logreport, pytest_warning_recorded)

settings.register_profile("ci", derandomize=True, database=None, max_examples=200, deadline=None,
                          print_blob=True)
settings.register_profile("dev", deadline=None)


def hypothesis_profile() -> str:
    forced = os.environ.get("HYPOTHESIS_PROFILE")
    if forced:
        return forced
    return "ci" if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no") else "dev"


settings.load_profile(hypothesis_profile())


# The test files that take longest, longest first (seconds of one run of the suite on two xdist workers,
# 2026-12-04, 2-core machine, `scripts/test.sh --durations=0` summed per file: 979 s in all, 509 s wall). They
# run first: scripts/test.sh hands whole files to the workers (`--dist loadfile`) in collection order
# (`--no-loadscope-reorder`; xdist would otherwise order the files by their number of tests), so no long file
# starts last while the other worker has nothing left to do. A file missing here only runs later; the order of
# the others is kept.
SLOWEST_FIRST = [
    "tests/organisms/test_scenarios_detected.py",  # 75
    "tests/fleet/test_shard.py",  # 65
    "tests/fleet/test_ray.py",  # 54
    "tests/detectors/test_emerging_equivalence.py",  # 45
    "tests/fleet/test_scan.py",  # 44
    "tests/mcp_server/test_server.py",  # 42
    "tests/detectors/test_emerging.py",  # 39
    "tests/test_attribution_partcache.py",  # 34
    "tests/organisms/test_scalar_organisms.py",  # 29
    "tests/fleet/test_s3store.py",  # 27
    "tests/core/test_segments.py",  # 26
    "tests/core/test_kernels.py",  # 23
    "tests/mcp_server/test_agent_investigation.py",  # 21
    "tests/organisms/test_bench_small.py",  # 21
    "tests/live/test_trl_grpo.py",  # 20
    "tests/detectors/test_training_stats_cache.py",  # 19
    "tests/reliability/test_memory_budget.py",  # 16
    "tests/conformance/test_trl.py",  # 15
    "tests/core/test_styles.py",  # 15
    "tests/core/test_cli.py",  # 14
]


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: files stay whole


def pytest_report_header(config) -> str:  # noqa: ANN001
    return f"hypothesis profile: {hypothesis_profile()} ({settings.default})"


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")
