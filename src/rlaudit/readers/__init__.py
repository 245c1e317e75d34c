"""Readers: one module per trainer log layout, all producing the canonical rollout table.

`READERS` is the registry, in detection order (most specific layout first). `resolve_reader` picks the reader
whose `detect` accepts a source; `get_reader` selects one by name (`--format`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RlauditError, UnknownLayoutError
from .base import Reader, ReadContext, ReadOptions, SourceFile, finalize

READERS: list[type[Reader]] = []


def register(cls: type[Reader]) -> type[Reader]:
    """Class decorator adding a reader to the registry."""
    if any(r.name == cls.name for r in READERS):
        raise ValueError(f"reader {cls.name!r} registered twice")
    READERS.append(cls)
    return cls


def reader_names() -> list[str]:
    return [r.name for r in READERS]


def layouts_help() -> str:
    return "\n".join(f"  {r.name:10s} {r.description}" for r in READERS)


def get_reader(name: str) -> Reader:
    for cls in READERS:
        if cls.name == name:
            return cls()
    raise RlauditError(f"unknown format {name!r}; known formats: {', '.join(reader_names())}")


def resolve_reader(source: Path) -> Reader:
    """The reader for `source`, detected from its layout."""
    if source.is_dir() and not any(source.iterdir()):
        raise UnknownLayoutError(f"{source}: empty directory; rlaudit reads these layouts:\n{layouts_help()}")
    for cls in READERS:
        if cls.detect(source):
            return cls()
    raise UnknownLayoutError(
        f"{source}: unknown layout; rlaudit reads these layouts (or pass --format):\n{layouts_help()}")


# Registration order is detection order: specific trainer layouts before the generic table reader.
from . import trl, verl, primerl, vfeval, tinker, nemorl, art, wandb, openrlhf, trackio, canonical  # noqa: E402,F401

__all__ = ["READERS", "Reader", "ReadContext", "ReadOptions", "SourceFile", "finalize", "get_reader",
           "resolve_reader", "register", "reader_names"]
