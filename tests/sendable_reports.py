"""A pytest plugin (loaded by tests/conftest.py) that keeps a test's outcome from being lost on its way out of an
xdist worker.

scripts/test.sh runs the suite on xdist workers, which send each test's report to the controller through execnet.
execnet sends only plain types and UTF-8-encodable strings: one lone surrogate in a captured log line or an
assertion's diff (text under test holds them: readers keep what a policy emitted) makes the worker die with an
INTERNALERROR, the session stops, and the test's own outcome and output never appear. A CI run of 2026-12-05
stopped so, after 232 tests, in a worker's pytest_runtest_logreport, with neither the test nor the error on record
(the part of the log kept held only pytest's and xdist's frames); a lone surrogate is one cause reproduced here.

- `pytest_report_to_serializable` (only xdist calls it) escapes such strings (`\\udcff`) and turns any other type
  into its repr, so the report is sent and the test passes or fails on its merits.
- `pytest_warning_recorded` does the same for a warning's message (an exception raised in a thread, with such a
  string in its message, becomes a warning that xdist sends as it stands).
- `pytest_runtest_logreport` writes the test's id and the error to the worker's stderr (CI's log) if reporting it
  fails anyway, so the next such failure names its test.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

_PLAIN = (bool, int, float, bytes, type(None))  # exact types: execnet does not send their subclasses either


def sendable(value: Any) -> Any:
    """`value` with every string UTF-8 encodable (lone surrogates backslash-escaped) and every container a
    dict, list or tuple of plain values; anything else becomes its repr."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return str(value)
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if type(value) in _PLAIN:
        return value
    if isinstance(value, dict):
        return {sendable(k): sendable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [sendable(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return sendable(repr(value))


@pytest.hookimpl(wrapper=True)
def pytest_report_to_serializable(config, report):  # noqa: ANN001, ANN201
    data = yield
    return None if data is None else sendable(data)


@pytest.hookimpl(tryfirst=True)  # before xdist's (a historic hook: no wrapper)
def pytest_warning_recorded(warning_message, when, nodeid, location) -> None:  # noqa: ANN001
    message = warning_message.message
    text = str(message)
    if sendable(text) != text:
        try:
            warning_message.message = type(message)(sendable(text))
        except Exception:  # noqa: BLE001 - a warning class that takes other arguments
            warning_message.message = UserWarning(sendable(text))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_logreport(report):  # noqa: ANN001, ANN201
    try:
        return (yield)
    except BaseException as exc:
        os.write(2, f"\nrlaudit tests: the report of {report.nodeid} ({report.when}, {report.outcome}) could not be "
                    f"sent: {exc!r}\n".encode("utf-8", "backslashreplace"))
        raise
