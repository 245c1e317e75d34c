"""Time the warm re-audit after one new step per stage, as `benchmarks/audit.py`'s warm audit runs it: the ingest
of the new step, each detector, the run summary, the findings JSON and the report (CPU seconds each).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/warm.py DIR OUT [--no-step]

DIR: a directory kept by `benchmarks/audit.py --keep DIR` (or a hardlinked copy of one: `cp -al A B`; the store
never writes in place); each call adds one step to DIR/run and ingests it (`detectors.add_step`), unless
`--no-step` (the same audit on the store as it is). OUT: the findings JSON is written to OUT.json and the report
to OUT.html, to compare two versions of the code on copies of the same data.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import audit as bench  # noqa: E402  (its CPU reader)
from detectors import add_step  # noqa: E402


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        raise SystemExit(__doc__)
    from rlaudit import kernels
    from rlaudit.audit import AuditResult
    from rlaudit.detectors import AuditConfig, run_detectors
    from rlaudit.findings import rank
    from rlaudit.memory import prepare
    from rlaudit.report import write_report
    from rlaudit.store import Store

    prepare()
    kernels.preload()  # compiled once per machine: not part of an audit's cost
    root, out = Path(args[0]), args[1]
    rows: list[tuple[str, float]] = []
    open_: list[tuple[str, float]] = []

    def start(name: str) -> None:
        end()
        open_.append((name, bench._cpu()))

    def end() -> None:
        if open_:
            name, c0 = open_.pop()
            rows.append((name, bench._cpu() - c0))

    start("ingest")
    step = None if "--no-step" in sys.argv else add_step(root, Store(root / "store"), "bench")
    store = Store(root / "store")
    findings = run_detectors(store, "bench", AuditConfig(), progress=lambda name, done, total: start(name) if name
                             else end())
    start("summary")
    summary = store.summary("bench")
    result = AuditResult(runs=[summary], findings=rank(findings))
    start("findings JSON")
    result.write_json(Path(out + ".json"))
    start("report")
    write_report(store, result, Path(out + ".html"))
    end()
    print(f"step {step}: " + "  ".join(f"{name} {cpu:.2f}" for name, cpu in rows))


if __name__ == "__main__":
    main()
