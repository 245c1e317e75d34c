"""Fleet-scanner benchmark: a fleet of simulated runs (mixed trainer layouts, some with implanted mistakes), scanned
cold, then steady state.

    OMP_NUM_THREADS=1 python benchmarks/fleet.py --runs 20 --steps 30 --engine local --workers 2
    OMP_NUM_THREADS=1 python benchmarks/fleet.py --preset scaled --workers 2     # 20 runs x 25,600 = 512,000
    OMP_NUM_THREADS=1 python benchmarks/fleet.py --preset issue --workers 32    # 200 runs x 51,200 = 10.24M
    OMP_NUM_THREADS=1 python benchmarks/fleet.py --runs 20 --steps 20 --engine both   # an end-to-end check

`--preset issue` is the issue's fleet (200 runs, ~10M rollouts; about 10 GB of simulated logs plus the store,
see the disk figure printed after the build). On a machine too small for it, run a scaled fleet: the script
prints the CPU-seconds per rollout of the cold pass and extrapolates the full size from them (`--extrapolate-to`,
marked as an extrapolation).

Per engine (`--engine local|ray|both`; each scans a fresh store), it prints what the issue's "Measured" section
asks:

- per pass: wall time, CPU seconds of the run tasks, runs audited, rows added, alerts;
- the cold throughput (rollouts/s) and its ratio per core to the single-run audit throughput (`rlaudit.audit` of
  one run, ingest + every detector, in this process), and the same per CPU-second;
- the steady-state pass after one new step in `--grow` runs (default: one run in 20, so 10 of 200), as a ratio
  of the cold pass;
- fault tolerance: a pass in which `--grow` other runs get their last step, an unreadable run appears and the
  worker running one run's task is SIGKILLed (its pid from the task's attempt log); then a recovery pass. It
  prints what failed or was retried, that the others were scanned, that the recovery pass re-audited exactly the
  failed runs, and that the unreadable run is reported (status `error`);
- every implanted mistake (ground truth, `rlaudit.organisms.bench.matches`) alerted, no alert sent twice, and no
  alert on clean runs, per run (the detectors' own recall is `rlaudit bench`'s business).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlaudit.audit import audit  # noqa: E402
from rlaudit.fleet import FleetConfig, FleetScanner, make_engine  # noqa: E402
from rlaudit.live.alerts import AlertManager, JsonlSink  # noqa: E402
from rlaudit.findings import Finding  # noqa: E402
from rlaudit.fleet.report import status_rows  # noqa: E402
from rlaudit.organisms import simulate  # noqa: E402
from rlaudit.organisms.bench import matches  # noqa: E402
from rlaudit.organisms.groundtruth import GroundTruth  # noqa: E402
from rlaudit.stats import wilson_interval  # noqa: E402
from rlaudit.store import Store  # noqa: E402
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
    "issue": (200, 100, 64, 8),  # 200 x 51,200 = 10,240,000: the issue's fleet
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
    ap.add_argument("--grow", type=int, default=None, help="runs that get one new step in the steady-state pass "
                    "(and again in the fault pass; default: one in 20)")
    ap.add_argument("--engine", default="both", choices=["local", "ray", "both", "inline"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--address", default=None, help="a Ray cluster to join (default: a local one of --workers)")
    ap.add_argument("--no-faults", action="store_true", help="skip the fault-tolerance passes")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "rlaudit-fleet-bench")
    ap.add_argument("--keep", action="store_true", help="keep the simulated fleet and stores under --work")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--recheck-alerts", choices=["local", "ray"], default=None,
                    help="only check the alerts a kept run of this engine sent (--work, --keep) against ground truth")
    args = ap.parse_args()
    if args.recheck_alerts:
        recheck(args.work, args.recheck_alerts)
        return
    if args.preset:
        args.runs, args.steps, args.prompts, args.generations = PRESETS[args.preset]
    for name in ("runs", "steps", "prompts", "generations", "workers"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the steady-state pass adds the last step)")
    args.grow = args.grow if args.grow is not None else max(1, round(args.runs / 20))
    if args.grow * (1 if args.no_faults else 2) > args.runs:
        ap.error("--grow is too large: the steady and fault passes each grow --grow distinct runs")

    args.work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    full = build(args.work, args.runs, args.steps, args.prompts, args.generations)
    raw = _du(full)
    total = args.runs * args.steps * args.prompts * args.generations
    print(f"fleet: {args.runs} runs x {args.steps} steps x {args.prompts * args.generations} rollouts = "
          f"{total:,} (simulated in {time.perf_counter() - t:.0f} s; {raw / 1e9:.2f} GB of logs, "
          f"{raw / total:,.0f} bytes per rollout); load average {os.getloadavg()[0]:.2f}")

    # single-run reference: one run, ingest + every detector, in this process
    shutil.rmtree(args.work / "single", ignore_errors=True)
    ref_run = next(p for p in sorted((full / "team-1").iterdir()))
    t, c = time.perf_counter(), time.process_time()
    ref = audit([ref_run], store=args.work / "single")
    single_s = time.perf_counter() - t
    single_cpu = time.process_time() - c
    single_rows = sum(r.rows for r in ref.runs)
    single = {"rollouts": single_rows, "seconds": single_s, "cpu": single_cpu,
              "rollouts_per_s": single_rows / single_s, "rollouts_per_cpu_s": single_rows / single_cpu}
    print(f"single-run audit ({ref_run.name}): {single_rows:,} rollouts in {single_s:.1f} s = "
          f"{single['rollouts_per_s']:,.0f} rollouts/s; {single_cpu:.1f} CPU s = "
          f"{single['rollouts_per_cpu_s']:,.0f} rollouts/CPU-s")
    shutil.rmtree(args.work / "single", ignore_errors=True)
    out: dict = {"size": {"runs": args.runs, "steps": args.steps, "prompts": args.prompts,
                          "generations": args.generations, "rollouts": total, "logs_gb": raw / 1e9},
                 "single_run": single, "engines": {}}
    engines = ["local", "ray"] if args.engine == "both" else [args.engine]
    for name in engines:
        print(f"\n=== engine {name} ===")
        out["engines"][name] = run_engine(args, name, full, total, raw, single)
    print("\n=== summary (the issue's 'Measured') ===")
    for name, e in out["engines"].items():
        print(summary_line(name, e))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


def run_engine(args: argparse.Namespace, name: str, full: Path, total: int, raw: int, single: dict) -> dict:
    """Cold, unchanged, steady, quiet and fault passes of one engine over a fresh copy of the fleet."""
    root, store = args.work / f"root-{name}", args.work / f"store-{name}"
    for d in (root, store, store.with_name(store.name + "-mirror")):
        shutil.rmtree(d, ignore_errors=True)
    copy_upto(full, root, args.steps - 1)
    if name == "ray":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                    os.environ.get("PYTHONPATH", "")])
    alerts = args.work / f"alerts-{name}.jsonl"
    alerts.unlink(missing_ok=True)
    engine = make_engine(name, args.workers, args.address)
    scanner = FleetScanner(store, [root], engine, AlertManager([JsonlSink(alerts)]), FleetConfig())
    out: dict = {"engine": engine.describe(), "workers": engine.workers}
    try:
        def one(label: str, r=None) -> dict:
            r = r or scanner.run_pass()
            row = {"pass": label, "seconds": round(r.seconds, 2), "cpu": round(r.cpu, 2), "audited": r.audited,
                   "heavy": r.heavy, "rows_added": r.rows_added, "alerts": len(r.alerts), "failed": r.failed,
                   "retried": r.retried, "errors": {k: v[:160] for k, v in r.errors.items()},
                   "timings": {k: round(v, 2) for k, v in r.timings.items()}, "load": round(os.getloadavg()[0], 2)}
            print(json.dumps(row))
            return row

        cold = one("cold")
        cores = engine.workers
        tput = cold["rows_added"] / cold["seconds"]
        out["cold"] = cold
        out["cold_rollouts_per_s"] = tput
        out["ratio_per_core"] = tput / cores / single["rollouts_per_s"]
        print(f"cold: {tput:,.0f} rollouts/s on {cores} worker(s) = {tput / single['rollouts_per_s']:.2f}x one "
              f"run's audit ({out['ratio_per_core']:.2f} per core; target >= 0.8)")
        cpu_tput = cold["rows_added"] / cold["cpu"] if cold["cpu"] else float("nan")
        out["cold_rollouts_per_cpu_s"] = cpu_tput
        out["cpu_efficiency"] = cpu_tput / single["rollouts_per_cpu_s"]
        print(f"cold: {cold['cpu']:.1f} CPU s in the workers = {cpu_tput:,.0f} rollouts/CPU-s = "
              f"{out['cpu_efficiency']:.2f}x the single-run audit's rollouts per CPU-second")
        cpu_per = cold["cpu"] / max(1, cold["rows_added"])
        n = args.extrapolate_to
        out["extrapolated"] = {"rollouts": n, "cpu_seconds": n * cpu_per, "hours_on_workers":
                               n * cpu_per / cores / 3600, "logs_gb": n * raw / total / 1e9}
        print(f"EXTRAPOLATED (not measured) to {n:,.0f} rollouts: {n * cpu_per / 3600:,.1f} CPU-hours for the cold "
              f"pass = {n * cpu_per / cores / 3600:,.1f} h on {cores} worker(s) at this pass's CPU per rollout "
              f"({cpu_per * 1e3:.3f} ms); logs {n * raw / total / 1e9:,.1f} GB")
        out["unchanged"] = one("unchanged")
        run_dirs = sorted(p.parent for p in full.rglob("ground_truth.json"))
        grown = run_dirs[: args.grow]
        for d in grown:
            copy_upto(full, root, args.steps, only=str(d.relative_to(full)))
        steady = one(f"{len(grown)} runs +1 step")
        out["steady"] = steady
        out["steady_ratio"] = steady["seconds"] / cold["seconds"]
        print(f"steady state: {len(grown)} of {args.runs} runs +1 step: {steady['seconds']:.2f} s = "
              f"{out['steady_ratio']:.4f} of the cold pass ({steady['cpu']:.2f} CPU s = "
              f"{steady['cpu'] / max(cold['cpu'], 1e-9):.4f} of its CPU)")
        out["quiet"] = one("quiet (final heavy audits)")
        out["quiet_ratio"] = out["quiet"]["seconds"] / cold["seconds"]
        if not args.no_faults:
            out["faults"] = faults(args, scanner, full, root, run_dirs[args.grow: 2 * args.grow], one)
    finally:
        scanner.close()
        if name == "ray":
            import ray

            ray.shutdown()
    out["store_gb"] = _du(store) / 1e9
    print(f"store: {out['store_gb']:.2f} GB ({out['store_gb'] * 1e9 / total:,.0f} bytes per rollout)")
    out["alerts"] = check_alerts(scanner, alerts, full, root)
    if not args.keep:
        for d in (root, store):
            shutil.rmtree(d, ignore_errors=True)
    return out


def faults(args: argparse.Namespace, scanner: FleetScanner, full: Path, root: Path, victims: list[Path],
           one) -> dict:
    """A pass with `victims` growing by their last step, an unreadable run, and the worker running the first
    victim's task SIGKILLed mid-task; then a recovery pass."""
    for d in victims:
        copy_upto(full, root, args.steps, only=str(d.relative_to(full)))
    bad = root / "team-x" / "unreadable"
    (bad / "completions").mkdir(parents=True, exist_ok=True)
    (bad / "config.json").write_text("{}")
    (bad / "completions" / "completions_00001.parquet").write_bytes(b"PAR1 this is not parquet")
    target = next(n for n, rs in scanner.state.runs.items()
                  if Path(rs.source).resolve() == (root / victims[0].relative_to(full)).resolve())
    log = scanner.attempt_log(target, scanner.state.passes + 1)
    killed: dict = {}

    def kill() -> None:  # the pid the victim's task wrote before it started; SIGKILL it while it runs
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (log.is_file() and log.stat().st_size):
            time.sleep(0.005)
        if log.is_file() and log.stat().st_size:
            killed["pid"] = json.loads(log.read_text().splitlines()[0])["pid"]
            try:
                os.kill(killed["pid"], signal.SIGKILL)
                killed["at"] = time.time()
            except ProcessLookupError:
                killed["missed"] = True  # the task had finished already

    watcher = threading.Thread(target=kill, daemon=True)
    watcher.start()
    res = scanner.run_pass()
    watcher.join(timeout=5)
    fault = one(f"faults: {len(victims)} runs +1 step, an unreadable run, worker of {target} killed", res)
    recovery = one("recovery", scanner.run_pass())
    rows = {r["run"]: r for r in status_rows(scanner.state)}
    broken = next(n for n in rows if n.endswith("unreadable"))
    names = [n for n, rs in scanner.state.runs.items()
             if any(Path(rs.source).resolve() == (root / v.relative_to(full)).resolve() for v in victims)]
    complete = args.steps * args.prompts * args.generations
    out = {"killed_pid": killed.get("pid"), "kill_missed": bool(killed.get("missed")), "victim": target,
           "fault_pass": fault, "recovery_pass": recovery,
           # every task of the fault pass came back (audited, or failed and redone next pass)
           "others_scanned": res.audited + res.failed == len(victims) + 1,
           # after the recovery pass: every grown run whole and fine, the unreadable one still reported
           "recovered": all(rows[n]["status"] == "ok" and rows[n]["rows"] == complete for n in names)
           and rows[broken]["status"] == "error",
           "victim_failures_in_status": rows[target]["failures"], "victim_last_failure": rows[target]["last_failure"],
           "unreadable_status": rows[broken]["status"], "unreadable_error": rows[broken]["error"][:200]}
    print(f"fault tolerance: worker pid {out['killed_pid']} running {target}'s task SIGKILLed"
          f"{' (missed: the task had finished)' if out['kill_missed'] else ''}; fault pass: {res.audited} audited, "
          f"{res.failed} failed ({', '.join(sorted(res.errors)) or 'none'}), retried in the pass: "
          f"{', '.join(res.retried) or 'none'}; after the recovery pass ({recovery['audited']} audited, "
          f"{recovery['failed']} failed) every grown run is {'whole (' + str(complete) + ' rows) and ok' if out['recovered'] else 'NOT whole and ok'}; `fleet status`: {target} "
          f"failures={out['victim_failures_in_status']} ({out['victim_last_failure'][:120]}); {broken} status "
          f"{out['unreadable_status']}: {out['unreadable_error'][:120]}")
    return out


def recheck(work: Path, engine: str) -> None:
    """`check_alerts` over a kept benchmark's alerts file and store (no scanning)."""
    from types import SimpleNamespace

    from rlaudit.fleet.state import FleetState

    store = work / f"store-{engine}"
    state = FleetState(store)
    state.load()
    if not state.runs:
        raise SystemExit(f"{store}: no fleet state (run the benchmark with --keep first)")
    check_alerts(SimpleNamespace(state=state, store_root=store), work / f"alerts-{engine}.jsonl", work / "full",
                 work / f"root-{engine}")


def check_alerts(scanner: FleetScanner, alerts: Path, full: Path, root: Path) -> dict:
    """Per run: implanted mistakes alerted (each ground-truth issue matched by an alert), no alert sent twice,
    no alert on clean runs."""
    sent = [json.loads(line) for line in alerts.read_text().splitlines()] if alerts.is_file() else []
    keys = Counter((a["key"], a["severity"]) for a in sent)
    by_run: dict[str, list[dict]] = {}
    for a in sent:
        by_run.setdefault(a["run"], []).append(a)
    missed, clean_alerted, true_alerts, issues = [], [], [], 0
    for name, rs in sorted(scanner.state.runs.items()):
        gt_path = full / Path(rs.source).resolve().relative_to(root.resolve()) / "ground_truth.json"
        if not gt_path.is_file():
            continue  # the unreadable run of the fault pass
        gt = GroundTruth.read(gt_path)
        found = [Finding.from_json(a["finding"]) for a in by_run.get(name, []) if a.get("finding")]
        if gt.clean:
            for a in by_run.get(name, []):
                line = f"{name}: {a['severity']} [{a['kind']}] {a['title'][:80]}"
                why = true_condition(Store(scanner.store_root), name, a.get("finding") or {})
                (true_alerts if why else clean_alerted).append(line + (f" -- TRUE: {why}" if why else ""))
            continue
        for issue in gt.issues:
            issues += 1
            if not any(matches(f, issue) for f in found):
                missed.append(f"{name}: {issue.kind} {issue.id}")
    out = {"alerts": len(sent), "duplicated": sum(1 for n in keys.values() if n > 1), "issues": issues,
           "issues_alerted": issues - len(missed), "missed": missed,
           "clean_runs": sum(1 for rs in scanner.state.runs.values() if "clean" in rs.name),
           "clean_runs_alerted": clean_alerted, "clean_runs_true_condition": true_alerts}
    print(f"alerts: {len(sent)} sent, {out['duplicated']} sent twice; implanted mistakes alerted "
          f"{out['issues_alerted']}/{issues}{' (missed: ' + ', '.join(missed) + ')' if missed else ''}; false alarms "
          f"on clean runs: {len(clean_alerted)} (of {out['clean_runs']} clean runs); alerts on clean runs about a "
          f"condition the run's rows show: {len(true_alerts)}")
    for line in clean_alerted:
        print(f"  FALSE ALARM on a clean run: {line}")
    for line in true_alerts:
        print(f"  clean run, true condition: {line}")
    return out


def true_condition(store, run: str, finding: dict) -> str:  # noqa: ANN001
    """Why an alert on a clean run (no implanted mistake) is nevertheless true, checked independently on the
    run's stored rows, or "" when it is not shown to be. Only training-health conditions can be: they are
    properties the simulated policy reaches by itself (a policy that masters most prompts leaves more than half
    of its groups all correct), not mistakes implanted in the run. Recomputed here with a query of its own: the
    zero-variance share of prompt groups over the finding's window of steps, with its Wilson 95% interval."""
    stats = finding.get("statistics") or {}
    if finding.get("kind") != "training_health" or finding.get("check") != "zero_variance":
        return ""
    # findings written before `window` was in the statistics name it in their explanation only
    said = re.search(r"In steps (\d+)-(\d+)", finding.get("explanation") or "")
    window = stats.get("window") or (said and [said.group(1), said.group(2)])
    if not window:
        return ""
    lo_step, hi_step = (int(x) for x in window)
    with store.connect([run]) as con:
        k, n = con.execute(f"""SELECT count(*) FILTER (WHERE hi - lo <= 1e-9 * greatest(1, abs(hi), abs(lo))),
                                      count(*) FROM (
            SELECT max(reward) AS hi, min(reward) AS lo FROM rollouts
            WHERE split = 'train' AND step BETWEEN {lo_step} AND {hi_step} AND group_id IS NOT NULL
                  AND isfinite(reward) GROUP BY step, group_id HAVING count(*) >= 2)""").fetchall()[0]
    if not n:
        return ""
    lo, hi = (float(b[0]) for b in wilson_interval(np.array([k]), np.array([n])))
    if lo <= 0.5:
        return ""
    return (f"{k} of {n} prompt groups in steps {lo_step}-{hi_step} have one reward for every rollout = {k / n:.1%} "
            f"(95% {lo:.1%}-{hi:.1%}, above half), recomputed from the stored rows")


def summary_line(name: str, e: dict) -> str:
    a, f = e["alerts"], e.get("faults", {})
    fault = ("" if not f else f"; faults: killed worker {'missed' if f['kill_missed'] else 'hit'}, recovered "
             f"{f['recovered']}, victim failures in status {f['victim_failures_in_status']}, unreadable run "
             f"{f['unreadable_status']}")
    return (f"{name}: cold {e['cold_rollouts_per_s']:,.0f} rollouts/s on {e['workers']} = {e['ratio_per_core']:.2f} "
            f"per core of the single-run audit ({e['cpu_efficiency']:.2f} per CPU-s); steady {e['steady_ratio']:.4f} "
            f"of cold; mistakes alerted {a['issues_alerted']}/{a['issues']}, {a['duplicated']} duplicated, false "
            f"alarms on clean runs {len(a['clean_runs_alerted'])}/{a['clean_runs']} (true conditions "
            f"{len(a.get('clean_runs_true_condition', []))}){fault}")


if __name__ == "__main__":
    main()
