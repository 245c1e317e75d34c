"""rlaudit: audit reinforcement-learning runs of language models.

Public API (stable):
- `audit`, `audit_store`, `ingest_sources`, `AuditResult`: ingest runs and run every detector.
- `Store`: the rollout store (Parquet per run, DuckDB views).
- `Finding`, `Evidence`: what detectors return.
- `AuditConfig`, `DETECTORS`: detector configuration and registry.
"""

from .audit import AuditResult, audit, audit_store, ingest_sources
from .detectors import DETECTORS, AuditConfig
from .errors import RlauditError
from .findings import Evidence, Finding
from .readers.base import ReadOptions
from .store import Store

__version__ = "0.1.0"

__all__ = ["audit", "audit_store", "ingest_sources", "AuditResult", "Store", "Finding", "Evidence",
           "AuditConfig", "DETECTORS", "ReadOptions", "RlauditError", "__version__"]
