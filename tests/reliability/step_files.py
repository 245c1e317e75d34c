"""Source files of a canonical JSONL run for the store's part tests: consecutive rollouts, four to a step, each
with a distinct answer (`a<i>`), so a test can say which file's rows a part holds."""

from __future__ import annotations

import json
from pathlib import Path


def write_rows(path: Path, first: int, rows: int, tag: str = "") -> None:
    """Rollouts `first` .. `first + rows - 1` into `path` (`tag` marks a rewritten file's answers)."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(first, first + rows):
            fh.write(json.dumps({"step": i // 4, "prompt": f"q{i}", "completion": f"<think>t</think>a{i}{tag}",
                                 "rewards": {"r": float(i % 2)}}) + "\n")


def write_source(tmp_path: Path, sizes: list[int]) -> Path:
    """`tmp_path/src` with a file `fNNN.jsonl` of each size, the rollouts numbered on from file to file."""
    src = tmp_path / "src"
    src.mkdir()
    first = 0
    for f, rows in enumerate(sizes):
        write_rows(src / f"f{f:03d}.jsonl", first, rows)
        first += rows
    return src
