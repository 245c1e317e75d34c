"""Fixtures for reliability tests."""

from tests.live.conftest import test_detectors  # noqa: F401
