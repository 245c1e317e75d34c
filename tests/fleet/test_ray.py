"""The Ray engine: one Ray task per run, the same worker code. The test starts a local Ray cluster (2 CPUs) of
its own and scans with `--engine ray --address auto`. Skipped when Ray is not installed
(`pip install 'rlaudit[ray]'`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from rlaudit.fleet import FleetConfig, FleetScanner, InlineEngine  # noqa: E402
from rlaudit.fleet.state import FleetState  # noqa: E402
from rlaudit.live.alerts import AlertManager, JsonlSink  # noqa: E402

from .helpers import SRC, alert_lines, free_port, run_cli, wait_for  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
# A throw-away cluster: no token file written to ~/.ray, no usage stats.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(autouse=True)
def _one_part_per_step_file(monkeypatch):
    """A run shards along its stored parts (`fleet.shard.plan`): these runs are a few thousand rows, which one
    part would hold whole (`Store.part_rows`), so each step file gets a part of its own (in subprocesses too)."""
    monkeypatch.setenv("RLAUDIT_PART_ROWS", "32")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    port = free_port()
    tmp = Path("/tmp") / f"rayt{os.getpid()}"  # Ray's socket paths must stay short
    # the cluster's workers ingest too (`fleet scan`): a part per step file there as well
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "RLAUDIT_PART_ROWS": "32"}
    ray_bin = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
                             "--node-ip-address", "127.0.0.1",
                             "--include-dashboard", "false", "--object-store-memory", str(200 * 1024 ** 2),
                             "--temp-dir", str(tmp), "--disable-usage-stats"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    ready = wait_for(lambda: subprocess.run([str(ray_bin), "status", "--address", address], env=env,
                                            capture_output=True).returncode == 0, timeout=180, every=1.0)
    try:
        assert ready, "local Ray cluster did not start"
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_ray_engine_same_results_as_inline(tmp_path, fleet_root, ray_cluster):
    alerts = tmp_path / "ray.jsonl"
    res = run_cli("fleet", "scan", str(fleet_root), "--store", str(tmp_path / "store"), "--engine", "ray",
                  "--address", "auto", "--alerts", str(alerts), "--detector", "cot_grading",
                  env={**RAY_ENV, "RAY_ADDRESS": ray_cluster})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "with ray (2 CPUs" in res.stderr and "3 audited" in res.stderr
    hosts = {r.host for r in FleetState(tmp_path / "store").runs.values()}
    assert hosts
    inline = FleetScanner(tmp_path / "s2", [fleet_root], InlineEngine(),
                          AlertManager([JsonlSink(tmp_path / "inline.jsonl")]), FleetConfig(detectors=["cot_grading"]))
    ref = inline.run_pass(final=True)
    inline.close()
    assert sorted(a["key"] for a in alert_lines(alerts)) == sorted(a.key for a in ref.alerts)
    again = run_cli("fleet", "scan", str(fleet_root), "--store", str(tmp_path / "store"), "--engine", "ray",
                    "--address", "auto", "--alerts", str(alerts), "--detector", "cot_grading",
                    env={**RAY_ENV, "RAY_ADDRESS": ray_cluster})
    assert again.returncode == 0 and "0 audited" in again.stderr and "0 alert(s)" in again.stdout


def test_ray_worker_killed_mid_pass(tmp_path, fleet_root, ray_cluster, monkeypatch):
    """The Ray worker running one run's task is SIGKILLed mid-task (its pid from the attempt log the task
    writes): Ray retries the task in the same pass (or the run is redone on the next); nothing is lost or doubled,
    no alert is sent twice, the other runs are scanned, and `fleet status` reports the failure."""
    import json
    import threading

    import ray

    from rlaudit.fleet import RayEngine
    from rlaudit.fleet.report import status_rows
    from rlaudit.store import Store

    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    engine = RayEngine(address=ray_cluster)
    alerts = tmp_path / "alerts.jsonl"
    store = tmp_path / "store"
    scanner = FleetScanner(store, [fleet_root], engine, AlertManager([JsonlSink(alerts)]),
                           FleetConfig(detectors=["cot_grading"]))
    victim = "team-a.cot"
    log = scanner.attempt_log(victim, 1)
    try:
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("p", scanner.run_pass()))
        t.start()
        assert wait_for(lambda: log.is_file() and log.stat().st_size > 0, timeout=300, every=0.01)
        pid = json.loads(log.read_text().splitlines()[0])["pid"]
        os.kill(pid, signal.SIGKILL)
        t.join(timeout=600)
        p1 = result["p"]
        assert set(p1.errors) <= {victim}
        assert p1.audited + p1.failed == 3 and p1.audited >= 2  # the other runs were scanned
        assert (p1.retried, p1.failed) in (([victim], 0), ([], 1)), (p1.retried, p1.failed, p1.errors)
        p2 = scanner.run_pass()
        assert p2.failed == 0 and p2.audited == p1.failed  # retried by Ray, or redone on the next pass
        assert all(r.status == "ok" for r in scanner.state.runs.values())
    finally:
        scanner.close()
        ray.shutdown()
    keys = [(a["key"], a["severity"]) for a in alert_lines(alerts)]
    assert len(keys) == len(set(keys)) and {a["run"] for a in alert_lines(alerts)} == {"team-a.cot", "team-b.template"}
    for run in scanner.state.runs:
        assert Store(store).summary(run).rows == 16 * 32
    # the failure is in `fleet status`: the killed worker's pid, on the victim's row only
    rows = {r["run"]: r for r in status_rows(FleetState(store))}
    why = f"worker pid {pid} " if p1.retried else "ray task failed"
    assert rows[victim]["failures"] == 1 and why in rows[victim]["last_failure"], rows[victim]
    assert all(r["failures"] == 0 for name, r in rows.items() if name != victim)
    shown = run_cli("fleet", "status", "--store", str(store), "--json")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert {r["run"]: r["failures"] for r in json.loads(shown.stdout)["runs"]}[victim] == 1
    table = run_cli("fleet", "status", "--store", str(store))
    assert table.returncode == 0 and "last failure" in table.stdout, table.stdout
    assert not list((store / "fleet" / "attempts").glob("*"))  # attempt logs are removed once read


def test_ray_sharded_audit_equals_unsharded(tmp_path, ray_cluster, monkeypatch):
    """One run's per-part scans as Ray tasks over 3 step ranges: the findings of the unsharded audit."""
    from rlaudit.audit import audit
    from rlaudit.fleet import RayEngine
    from rlaudit.fleet.shard import sharded_audit
    from rlaudit.organisms import simulate
    from rlaudit.store import Store

    from .test_shard import findings_json, same

    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PYTHONPATH", str(SRC))
    src = tmp_path / "cot_midrun"
    simulate("cot_midrun", src, format="prime-rl", steps=30, prompts=16, generations=8, seed=1)
    expected = findings_json(audit([src], store=tmp_path / "ref"))
    store = Store(tmp_path / "store")
    store.ingest(src)
    engine = RayEngine(address=ray_cluster)
    try:
        got = sharded_audit(store, "cot_midrun", engine, 3)
    finally:
        import ray

        ray.shutdown()
    assert [r.ok for r in got.shards] == [True, True, True], [r.error for r in got.shards]
    assert same(findings_json(got.result), expected)
    assert sum(e[3] for e in got.exposure) > 0


def test_ray_scan_shards_huge_run(tmp_path, fleet_root, ray_cluster, monkeypatch):
    """`fleet scan --engine ray` audits runs over the shard threshold in step-range shards as Ray tasks; the
    findings are those of `rlaudit audit`."""
    import ray

    from rlaudit.fleet import RayEngine

    from .test_shard import reference, same, scan_sharded

    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PYTHONPATH", str(SRC))
    engine = RayEngine(address=ray_cluster)
    try:
        res, got, scanner = scan_sharded(tmp_path, fleet_root, engine, 300)
    finally:
        ray.shutdown()
    assert res.failed == 0, res.errors
    assert set(res.sharded) == set(got) and set(res.sharded.values()) == {2}
    ref = reference(tmp_path, fleet_root, scanner)
    assert all(same(got[n], ref[n]) for n in ref)


def test_a_cluster_of_its_own_runs_workers_at_the_local_engines_niceness(tmp_path):
    """Ray starts its workers at niceness 15 by default; a cluster the engine starts itself uses the local
    engine's (5), so a scan on a shared machine is not starved by everything else."""
    code = ("import os, ray\n"
            "from rlaudit.fleet.engines import RayEngine, WORKER_NICENESS\n"
            "RayEngine(workers=1, init_kwargs={'object_store_memory': 100 * 1024 ** 2})\n"
            "nice = ray.get(ray.remote(lambda: os.nice(0)).remote())\n"
            "print('NICE', nice, min(19, os.nice(0) + WORKER_NICENESS))\n"
            "ray.shutdown()\n")
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_worker_niceness", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    nice, expected = out.stdout.split("NICE")[1].split()
    assert nice == expected  # WORKER_NICENESS above the driver's niceness (Ray's default: 15 above)
