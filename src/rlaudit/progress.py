"""How far an audit's long passes over the stored parts are, for a progress display.

A detector's time goes to a few passes over every stored part (the term sets, the per-part statistics, the CoT
scan, attribution's tables), run on worker and background threads far below the detector's own code: a cold
audit of 10M rollouts spends ~50 s in its first detector, which a bar that advances detector by detector shows
as standing still. Rather than thread a callback through every function on the way, each pass reports to the
process's one listener, where there is one (`listening`: the CLI's progress bar sets it for the length of an
audit); with none, a pass costs a lock and an attribute test per part.

Passes run at once (the background thread's beside the detector's), so the listener is handed all of them, by
name, each as (parts done, parts in all); two passes of one name at once are summed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: called with {pass name: (parts done, parts in all)} of the passes under way, after each change
Listener = Callable[[dict[str, tuple[int, int]]], None]

_lock = threading.Lock()
_listener: Listener | None = None
_passes: dict[int, Pass] = {}  # the passes under way, shown to the listener: id(Pass) -> Pass


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Hand every pass that starts inside this block to `listener` (one listener per process at a time: an
    enclosing one is restored after)."""
    global _listener
    with _lock:
        before, _listener = _listener, listener
    try:
        yield
    finally:
        with _lock:
            _listener = before


class Pass:
    """One pass over `total` parts (`tracking`); `advance` as parts are done, from any thread."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.done = name, total, 0

    def advance(self, parts: int = 1) -> None:
        with _lock:
            if id(self) not in _passes:  # nobody listens (or the pass has ended)
                return
            self.done = min(self.total, self.done + parts)
            _tell()


@contextmanager
def tracking(name: str, total: int) -> Iterator[Pass]:
    """A pass named `name` over `total` parts, shown while this block runs (where a listener listens)."""
    p = Pass(name, total)
    with _lock:
        if _listener is not None and total > 0:
            _passes[id(p)] = p
            _tell()
    try:
        yield p
    finally:
        with _lock:
            if _passes.pop(id(p), None) is not None:
                _tell()


def _tell() -> None:
    """Hand the listener the passes under way by name. Called under `_lock`, so that it gets every change in
    the order made (a display's update is quick, and must not start or advance a pass itself)."""
    if _listener is None:
        return
    out: dict[str, tuple[int, int]] = {}
    for p in _passes.values():
        done, total = out.get(p.name, (0, 0))
        out[p.name] = (done + p.done, total + p.total)
    _listener(out)


def describe(passes: dict[str, tuple[int, int]]) -> str:
    """The passes as one line of a progress display: "term sets 12/50, CoT scan 3/50 parts"."""
    if not passes:
        return ""
    return ", ".join(f"{name} {done:,}/{total:,}" for name, (done, total) in passes.items()) + " parts"
