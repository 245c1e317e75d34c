"""Compiled kernels (numba), optional: which path runs, how a kernel module builds its kernels, and loading them all.

Several modules keep a hot loop twice: a numpy path (the reference and the fallback) and a numba kernel that
walks its input once (`rlaudit.derived.kernels` for the term sets, `rlaudit.derived.styles`,
`rlaudit.cot.kernels`, `rlaudit.attribution.kernels`). This module holds what they share.

Which path runs: `RLAUDIT_KERNEL=numpy|numba` forces one (a bad value, or `numba` without numba installed, is
an `RlauditError`); unset, numba is used when it can be imported (`pip install 'rlaudit[fast]'`), else numpy.
Each kernel is compiled at its first use in a process (`Compiled`): seconds the first time on a machine, then
loaded from numba's on-disk cache (`jit`'s `cache=True`: in `$NUMBA_CACHE_DIR` if set, else `__pycache__`
beside the module, else numba's user-wide cache directory; where none is writable they compile in every
process). Kernels release the GIL, so worker threads run them in parallel.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

ENV = "RLAUDIT_KERNEL"
CHOICES = ("numpy", "numba")

_available: bool | None = None
_checking = threading.Lock()


def available() -> bool:
    """Whether numba can be imported (checked once per process). Set only once the import is done, under a lock:
    a cold audit's two vocabulary threads ask at once, and the one that did not import numba used to read a
    transient False and take the numpy path (slower; the same results)."""
    global _available
    if _available is None:
        with _checking:
            if _available is None:
                _available = _import_numba()
    return _available


def _import_numba() -> bool:
    if importlib.util.find_spec("numba") is None:
        return False
    try:
        import numba  # noqa: F401
        return True
    except Exception:  # an installed numba that does not fit this numpy: the numpy path
        return False


def setting() -> str | None:
    """The path `RLAUDIT_KERNEL` asks for, or None when unset. Checked without importing numba (the CLI
    checks it before any work, `memory.prepare`): a bad value, or `numba` where numba is not installed, is an
    `RlauditError`."""
    env = os.environ.get(ENV, "").strip().lower()
    if not env:
        return None
    from .errors import RlauditError

    if env not in CHOICES:
        raise RlauditError(f"{ENV}={os.environ.get(ENV)!r}: choose one of {', '.join(CHOICES)} (or leave it unset)")
    if env == "numba" and (_available is False or importlib.util.find_spec("numba") is None):
        raise _no_numba()
    return env


def _no_numba() -> Exception:
    from .errors import RlauditError

    return RlauditError(f"{ENV}=numba but numba cannot be imported: pip install 'rlaudit[fast]', or set {ENV}=numpy")


def backend() -> str:
    """"numba" or "numpy": the path the kernels take now (see module doc)."""
    env = setting()
    if env == "numpy":
        return env
    if available():
        return "numba"
    if env == "numba":  # installed but does not import (e.g. a numpy it was not built for)
        raise _no_numba()
    return "numpy"


def use_numba() -> bool:
    return backend() == "numba"


def import_for_ingest() -> None:
    """Import numba now where the compiled path is chosen. Ingest's kernels (`rlaudit.derived.kernels.ingest`: the
    reasoning/answer span split, span gathering) run only where numba is imported already: an ingest alone would
    pay numba's import (~0.5 CPU s) for what they save (~0.4 CPU s per 1M rollouts). An audit imports it before it
    ingests (its detectors import it anyway), so its ingest takes the compiled path."""
    if use_numba():
        import numba  # noqa: F401


def jit(f: Any, sig: Any = None, **options: Any) -> Any:
    """`numba.njit` without the GIL, cached on disk (compiled in every process where no cache can be written)."""
    import numba

    args = (sig,) if sig is not None else ()
    try:
        return numba.njit(*args, cache=True, nogil=True, **options)(f)
    except RuntimeError:  # no writable cache location
        return numba.njit(*args, nogil=True, **options)(f)


class Compiled:
    """A module's numba kernels, built by `build` at the first call (compiled, or loaded from numba's on-disk
    cache: ~0.1-0.5 s, seconds the first time on a machine), then kept for the process; thread-safe, so the
    worker threads of a cold audit build them once. Each kernel module has one (`compiled = Compiled(_build)`,
    called as `compiled()`); `preload` loads them all."""

    def __init__(self, build: Callable[[], SimpleNamespace]):
        self._build = build
        self._lock = threading.Lock()
        #: the kernels once built, else None (tests reset it to check who loads them)
        self.value: SimpleNamespace | None = None

    def __call__(self) -> SimpleNamespace:
        if self.value is None:
            with self._lock:
                if self.value is None:
                    self.value = self._build()
        return self.value


#: the modules whose kernels `preload` loads (each holds `compiled`, a `Compiled`, and maybe others)
MODULES = ("rlaudit.derived.kernels", "rlaudit.derived.styles", "rlaudit.cot.kernels", "rlaudit.attribution.kernels",
           "rlaudit.derived.windowsums", "rlaudit.derived.grouped")


def preload() -> None:
    """Load every compiled kernel of rlaudit now, where numba is used: before a live hook's training starts (a
    background audit thread loading them would hold the GIL mid-step) and before a benchmark times anything.
    Every module-level `Compiled` of those modules, not only `compiled`: `rlaudit.derived.kernels.ingest` (built
    apart, for ingest) left out was compiled inside the first cold emerging run of a checkout (~5-7 CPU s of
    numba's type inference under `benchmarks/detectors.py`, which did not preload either)."""
    if use_numba():
        for name in MODULES:
            for value in list(vars(importlib.import_module(name)).values()):
                if isinstance(value, Compiled):
                    value()
