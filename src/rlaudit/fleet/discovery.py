"""Finding the runs under a fleet root, by layout.

A ROOT is a directory (or an object-store prefix, mirrored to a local directory first: `objectstore`). Runs are
the directories a reader recognises (`rlaudit.readers.READERS`: TRL output dirs, verl rollout dirs, prime-rl
output dirs, NeMo RL log dirs...). The walk is top-down: a directory that one reader recognises is a run and is
not descended into, unless two or more of its sub-directories are runs themselves (then it is a container that
a reader with a multi-level glob happened to match, e.g. a directory of NeMo RL runs). A directory that no
trainer layout matches but that holds rollout tables directly (`*.jsonl`, `*.parquet`) and no run below is read
as the generic `canonical` layout (a W&B run directory as `wandb`).

Discovery is cheap on later passes: directories already known as runs (`known`) are not detected again, only
checked to still exist; hidden directories and the store itself are skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..readers import READERS

log = logging.getLogger("rlaudit.fleet")

_GENERIC = ("canonical", "wandb")  # readers whose detection reads a whole tree: tried last, bottom-up
_TABLE_SUFFIXES = (".jsonl", ".parquet")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9._+=@-]+")


@dataclass(frozen=True)
class RunSource:
    """A run found under a root: its store name, local directory, layout and where it came from."""

    name: str
    source: str  # local directory the readers read
    format: str
    root: str  # the ROOT argument it was found under (an s3:// URI for object-store roots)
    origin: str = ""  # the run's own URI when it lives in an object store

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "source": self.source, "format": self.format, "root": self.root,
                "origin": self.origin}


def run_name(root: Path, path: Path) -> str:
    """The store name of the run at `path` under `root`: its relative path with '/' as '.', made valid."""
    rel = path.relative_to(root)
    parts = rel.parts if rel.parts else (root.name,)
    name = _BAD_CHARS.sub("_", ".".join(parts)).lstrip("._-+=@") or "run"
    if len(name) > 100:  # keep names short and unique
        name = name[:88] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def _detect(path: Path, generic: bool = False) -> str | None:
    for cls in READERS:
        if (cls.name in _GENERIC) != generic:
            continue
        try:
            if cls.detect(path):
                return cls.name
        except Exception as exc:  # noqa: BLE001 - an unreadable file must not stop discovery
            log.debug("fleet: %s detection failed on %s: %s", cls.name, path, exc)
    return None


def _subdirs(path: Path, skip: set[Path]) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))
                      and p.resolve() not in skip)
    except OSError:
        return []


def _has_tables(path: Path) -> bool:
    try:
        return any(p.suffix in _TABLE_SUFFIXES and p.is_file() for p in path.iterdir())
    except OSError:
        return False


def _has_files(path: Path) -> bool:
    try:
        return any(p.is_file() and not p.name.startswith(".") for p in path.iterdir())
    except OSError:
        return False


def discover(root: str | Path, known: dict[str, str] | None = None, skip: list[Path] | None = None,
             max_depth: int = 8, label: str | None = None) -> list[RunSource]:
    """Runs under the local directory `root`. `known`: source directory -> format of runs found before (not
    detected again). `skip`: directories never entered (the store). `label`: the root as the user gave it."""
    root = Path(root).resolve()
    known = known or {}
    skip_set = {Path(p).resolve() for p in skip or []}
    found: list[tuple[Path, str]] = []
    cache: dict[Path, str | None] = {}

    def detect(d: Path) -> str | None:
        if d not in cache:
            cache[d] = _detect(d)
        return cache[d]

    def visit(d: Path, depth: int) -> bool:
        key = str(d)
        if key in known and d.is_dir():
            found.append((d, known[key]))
            return True
        fmt = detect(d)
        children = _subdirs(d, skip_set) if depth < max_depth else []
        if fmt is not None:
            # Readers with multi-level globs (verl, NeMo RL) also match a directory *of* runs. A match is a run
            # when no sub-directory is matched, or one is and the directory holds files of its own (a TRL
            # output dir: configs beside `completions/`); otherwise it is a container and the walk goes on.
            runs_below = sum(1 for c in children if detect(c) is not None)
            if runs_below == 0 or (runs_below == 1 and _has_files(d)):
                found.append((d, fmt))
                return True
        if fmt is None and d != root and (d / "files").is_dir() and (g := _detect(d, generic=True)) == "wandb":
            found.append((d, g))
            return True
        before = len(found)
        for c in children:
            visit(c, depth + 1)
        below = found[before:]
        if not below and _has_tables(d):
            g = _detect(d, generic=True)
            if g is not None:
                found.append((d, g))
                return True
        # A generic table directory (`steps/`) alone in a directory that holds other files (a config, notes): the
        # run is that directory, named after it rather than after its data folder.
        if (d != root and len(below) == 1 and below[0][1] in _GENERIC and below[0][0].parent == d
                and len(children) == 1 and _has_files(d)):
            found[before] = (d, below[0][1])
        return bool(below)

    if root.is_dir():
        visit(root, 0)
    runs = []
    for path, fmt in sorted(found):
        runs.append(RunSource(name=run_name(root, path), source=str(path), format=fmt,
                              root=label or str(root)))
    return runs


def discover_all(roots: list[tuple[str, Path]], known: dict[str, str] | None = None,
                 skip: list[Path] | None = None) -> list[RunSource]:
    """Runs under every (label, local directory) root. Names that two roots share get the root's name as a
    prefix, so two runs never land in one store run."""
    per_root = [discover(path, known, skip, label=label) for label, path in roots]
    counts: dict[str, int] = {}
    for runs in per_root:
        for r in runs:
            counts[r.name] = counts.get(r.name, 0) + 1
    out: list[RunSource] = []
    seen: set[str] = set()
    for (label, path), runs in zip(roots, per_root):
        prefix = run_name(Path(path).parent, Path(path)) if len(roots) > 1 else ""
        for r in runs:
            name = r.name
            if counts[name] > 1 and prefix:
                name = f"{prefix}.{name}"[:128]
            while name in seen:
                name = f"{name}@{hashlib.sha1(r.source.encode()).hexdigest()[:6]}"
            seen.add(name)
            out.append(RunSource(name=name, source=r.source, format=r.format, root=r.root, origin=r.origin))
    return out


#: The signature of a run directory that holds no rollout file any more (deleted, or emptied by the mirror of an
#: object-store root whose objects were deleted): the run is `missing`, not failed.
NO_FILES = "missing:no rollout files"


def source_signature(source: str, fmt: str) -> str:
    """Changes when the run's rollout files change (names, sizes, modification times): the cheap test of
    whether a run needs a pass at all. One stat per file, no reads. `NO_FILES` when the directory is gone or
    holds no rollout file."""
    from ..readers import get_reader

    h = hashlib.sha1()
    if not Path(source).is_dir():
        return NO_FILES
    try:
        files = get_reader(fmt).files(Path(source))
    except Exception as exc:  # noqa: BLE001 - the worker reports the real error
        return f"error:{type(exc).__name__}:{exc}"
    if not files:
        return NO_FILES
    for f in files:
        try:
            st = os.stat(f.path)
            h.update(f"{f.relpath}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f.relpath}\0missing\n".encode())
    return h.hexdigest()
