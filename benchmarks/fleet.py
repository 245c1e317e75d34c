"""Fleet-scanner benchmark: a fleet of simulated runs (mixed trainer layouts, some with implanted mistakes), scanned
cold, then steady state.

    OMP_NUM_THREADS=1 python benchmarks/fleet.py --runs 20 --steps 30 --engine local --workers 2
    OMP_NUM_THREADS=1 python benchmarks/fleet.py --preset scaled --workers 2     # 20 runs x 25,600 = 512,000
    OMP_NUM_THREADS=1 python benchmarks/fleet.py --preset issue --workers 32    # 200 runs x 51,200 = 10.24M

`--preset issue` is the issue's fleet (200 runs, ~10M rollouts; about 10 GB of simulated logs plus the store,
see the disk figure printed after the build). On a machine too small for it, run a scaled fleet: the script
prints the CPU-seconds per rollout of the cold pass and extrapolates the full size from them (`--extrapolate-to`,
marked as an extrapolation).

Prints, per pass: wall time, runs audited, rows added, alerts; the cold throughput (rollouts/s) and its ratio to
the single-run audit throughput (`rlaudit.audit` of one run, ingest + every detector, in this process); the
steady-state pass after one new step in `--grow` runs, as a ratio of the cold pass; and whether every implanted
mistake was alerted exactly once with no alert on clean runs (by run: the detectors' own recall is
`rlaudit bench`'s business).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlaudit.audit import audit  # noqa: E402
from rlaudit.fleet import FleetConfig, FleetScanner, make_engine  # noqa: E402
from rlaudit.live.alerts import AlertManager, JsonlSink  # noqa: E402
from rlaudit.organisms import simulate  # noqa: E402
from tests.fleet.helpers import copy_upto  # noqa: E402

SCENARIOS = ["clean_basic", "goblin_persona", "clean_judges", "cot_template", "clean_legit", "sycophancy",
             "clean_basic", "cot_midrun", "clean_judges", "format_marker"]
FORMATS = ["trl", "verl", "prime-rl", "canonical"]


def build(base: Path, runs: int, steps: int, prompts: int, generations: int) -> Path:
    full = base / "full"
    size = {"runs": runs, "steps": steps, "prompts": prompts, "generations": generations}
    if (full / "done.json").is_file():
        built = json.loads((full / "done.json").read_text() or "{}")
        if built and built != size:
            raise SystemExit(f"{full} holds a fleet of another size ({built}); use another --work directory")
        return full
    for i in range(runs):
        scenario, fmt = SCENARIOS[i % len(SCENARIOS)], FORMATS[i % len(FORMATS)]
        simulate(scenario, full / f"team-{i % 3}" / f"run{i:03d}-{scenario}", format=fmt, steps=steps,
                 prompts=prompts, generations=generations, seed=i)
    (full / "done.json").write_text(json.dumps(size))
    return full


PRESETS = {  # runs, steps, prompts, generations
    "small": (20, 30, 16, 8),  # 20 x 3,840 = 76,800
    "scaled": (20, 50, 64, 8),  # 20 x 25,600 = 512,000
    "issue": (200, 100, 64, 8),  # 200 x 51,200 = 10,240,000: the fleet
}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="a fleet size (overrides --runs/--steps/--prompts/--generations)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--extrapolate-to", type=float, default=10_240_000,
                    help="rollouts of the fleet to extrapolate the cold pass to (default: the issue's 10.24M)")
    ap.add_argument("--grow", type=int, default=2, help="runs that get one new step in the steady-state pass")
    ap.add_argument("--engine", default="local")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--address", default=None)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "rlaudit-fleet-bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.preset:
        args.runs, args.steps, args.prompts, args.generations = PRESETS[args.preset]
    for name in ("runs", "steps", "prompts", "generations", "workers"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the steady-state pass adds the last step)")

    args.work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    full = build(args.work, args.runs, args.steps, args.prompts, args.generations)
    raw = _du(full)
    total = args.runs * args.steps * args.prompts * args.generations
    print(f"fleet: {args.runs} runs x {args.steps} steps x {args.prompts * args.generations} rollouts = "
          f"{total:,} (simulated in {time.perf_counter() - t:.0f} s; {raw / 1e9:.2f} GB of logs, "
          f"{raw / total:,.0f} bytes per rollout)")
    root, store = args.work / "root", args.work / "store"
    for d in (root, store, args.work / "single"):
        shutil.rmtree(d, ignore_errors=True)
    copy_upto(full, root, args.steps - 1)

    # single-run reference: one run, ingest + every detector, in this process
    ref_run = next(p for p in sorted((full / "team-1").iterdir()))
    t, c = time.perf_counter(), time.process_time()
    ref = audit([ref_run], store=args.work / "single")
    single_s = time.perf_counter() - t
    single_cpu = time.process_time() - c
    single_rows = sum(r.rows for r in ref.runs)
    single_tput = single_rows / single_s
    print(f"single-run audit ({ref_run.name}): {single_rows:,} rollouts in {single_s:.1f} s = "
          f"{single_tput:,.0f} rollouts/s; {single_cpu:.1f} CPU s = {single_rows / single_cpu:,.0f} rollouts/CPU-s")

    alerts = args.work / "alerts.jsonl"
    alerts.unlink(missing_ok=True)
    scanner = FleetScanner(store, [root], make_engine(args.engine, args.workers, args.address),
                           AlertManager([JsonlSink(alerts)]), FleetConfig())
    out: dict = {"runs": args.runs, "engine": scanner.engine.describe(), "single_run_rollouts_per_s": single_tput,
                 "single_run_rollouts_per_cpu_s": single_rows / single_cpu}
    try:
        def one(label: str) -> dict:
            r = scanner.run_pass()
            row = {"pass": label, "seconds": round(r.seconds, 2), "cpu": round(r.cpu, 2), "audited": r.audited,
                   "heavy": r.heavy,
                   "rows_added": r.rows_added, "alerts": len(r.alerts), "failed": r.failed,
                   "timings": {k: round(v, 2) for k, v in r.timings.items()}}
            print(json.dumps(row))
            return row

        cold = one("cold")
        cores = scanner.engine.workers
        tput = cold["rows_added"] / cold["seconds"]
        out["cold"] = cold
        out["cold_rollouts_per_s"] = tput
        out["ratio_per_core"] = tput / cores / single_tput
        print(f"cold: {tput:,.0f} rollouts/s on {cores} worker(s) = {tput / single_tput:.2f}x one run's audit "
              f"({tput / cores / single_tput:.2f} per core)")
        cpu_tput = cold["rows_added"] / cold["cpu"] if cold["cpu"] else float("nan")
        out["cold_rollouts_per_cpu_s"] = cpu_tput
        out["cpu_efficiency"] = cpu_tput / (single_rows / single_cpu)
        print(f"cold: {cold['cpu']:.1f} CPU s in the workers = {cpu_tput:,.0f} rollouts/CPU-s = "
              f"{out['cpu_efficiency']:.2f}x the single-run audit's rollouts per CPU-second")
        # measurement-based extrapolation to the full fleet (CPU per rollout of this cold pass; same machine)
        cpu_per = cold["cpu"] / max(1, cold["rows_added"])
        n = args.extrapolate_to
        out["extrapolated"] = {"rollouts": n, "cpu_seconds": n * cpu_per, "hours_on_workers":
                               n * cpu_per / cores / 3600, "store_gb": None, "logs_gb": n * raw / total / 1e9}
        print(f"EXTRAPOLATED (not measured) to {n:,.0f} rollouts: {n * cpu_per / 3600:,.1f} CPU-hours for the cold "
              f"pass = {n * cpu_per / cores / 3600:,.1f} h on {cores} worker(s) at this pass's CPU per rollout "
              f"({cpu_per * 1e3:.3f} ms); logs {n * raw / total / 1e9:,.1f} GB")
        out["unchanged"] = one("unchanged")
        grown = sorted({p.parent.name for p in full.rglob("ground_truth.json")})[: args.grow]
        for run_dir in sorted(full.glob("team-*/*")):
            if run_dir.name in grown:
                copy_upto(full, root, args.steps, only=str(run_dir.relative_to(full)))
        steady = one(f"{args.grow} runs +1 step")
        out["steady"] = steady
        out["steady_ratio"] = steady["seconds"] / cold["seconds"]
        print(f"steady state: {steady['seconds']:.1f} s = {out['steady_ratio']:.3f} of the cold pass")
        out["quiet"] = one("quiet (final heavy audits)")
        out["quiet_ratio"] = out["quiet"]["seconds"] / cold["seconds"]
    finally:
        scanner.close()
    store_bytes = _du(store)
    out["store_gb"] = store_bytes / 1e9
    out["extrapolated"]["store_gb"] = out["extrapolated"]["rollouts"] * store_bytes / total / 1e9
    print(f"store: {store_bytes / 1e9:.2f} GB ({store_bytes / total:,.0f} bytes per rollout; "
          f"EXTRAPOLATED {out['extrapolated']['store_gb']:,.1f} GB at {out['extrapolated']['rollouts']:,.0f})")
    sent = [json.loads(line) for line in alerts.read_text().splitlines()]
    keys = Counter((a["key"], a["severity"]) for a in sent)
    by_run = Counter(a["run"] for a in sent)
    clean = [r for r in scanner.state.runs if "clean" in r]
    implanted = [r for r in scanner.state.runs if "clean" not in r]
    out["alerts_total"] = len(sent)
    out["alerts_duplicated"] = sum(1 for n in keys.values() if n > 1)
    out["implanted_runs_alerted"] = f"{sum(1 for r in implanted if by_run[r])}/{len(implanted)}"
    out["clean_runs_alerted"] = f"{sum(1 for r in clean if by_run[r])}/{len(clean)}"
    print(f"alerts: {len(sent)} ({out['alerts_duplicated']} duplicated); implanted runs alerted "
          f"{out['implanted_runs_alerted']}; clean runs alerted {out['clean_runs_alerted']} "
          f"({', '.join(sorted(r for r in clean if by_run[r])) or 'none'})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
