"""rlaudit: audit reinforcement-learning runs of language models.

Public API (stable):
- `audit`, `audit_store`, `ingest_sources`, `AuditResult`: ingest runs and run every detector.
- `Store`: the rollout store (Parquet per run, DuckDB views).
- `Finding`, `Evidence`: what detectors return.
- `AuditConfig`, `DETECTORS`: detector configuration and registry.

The names are imported on first use (PEP 562), so that `import rlaudit.cli` (and `rlaudit --help`) does not
import DuckDB, pyarrow and scipy.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "audit": ".audit", "audit_store": ".audit", "ingest_sources": ".audit", "AuditResult": ".audit",
    "DETECTORS": ".detectors", "AuditConfig": ".detectors", "RlauditError": ".errors",
    "Evidence": ".findings", "Finding": ".findings", "ReadOptions": ".readers.base", "Store": ".store",
}

__all__ = ["audit", "audit_store", "ingest_sources", "AuditResult", "Store", "Finding", "Evidence",
           "AuditConfig", "DETECTORS", "ReadOptions", "RlauditError", "__version__"]

if TYPE_CHECKING:
    from .audit import AuditResult, audit, audit_store, ingest_sources
    from .detectors import DETECTORS, AuditConfig
    from .errors import RlauditError
    from .findings import Evidence, Finding
    from .readers.base import ReadOptions
    from .store import Store


class _Package(types.ModuleType):
    """`rlaudit.audit` is the function, as it was when this package imported it eagerly: importing the submodule
    `rlaudit.audit` (which Python then sets as an attribute of the package) must not replace it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "audit" and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable through sys.modules and `from rlaudit.audit import ...`
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlaudit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
