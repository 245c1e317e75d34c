"""A store published on S3 (`--store s3://bucket/prefix`), against moto's server on 127.0.0.1 started by the
test: parts before versioned manifests, conditional puts, a second machine pulls the same store, a second
writer is refused."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("moto")
pytest.importorskip("flask")
pytest.importorskip("boto3")

from rlaudit.fleet import FleetConfig, FleetScanner, InlineEngine  # noqa: E402
from rlaudit.fleet.s3store import S3Store, StoreConflict  # noqa: E402
from rlaudit.fleet.state import FleetState  # noqa: E402
from rlaudit.live.alerts import AlertManager, JsonlSink  # noqa: E402
from rlaudit.store import Store  # noqa: E402

from .helpers import copy_upto, run_cli  # noqa: E402
from .test_s3 import s3  # noqa: E402,F401 - the moto server fixture

ROWS_PER_STEP = 32
URI = "s3://fleet/stores/lab"


def _scan(cache, root, alerts):
    scanner = FleetScanner(cache, [root], InlineEngine(), AlertManager([JsonlSink(alerts)]),
                           FleetConfig(detectors=["cot_grading"]))
    try:
        return scanner.run_pass()
    finally:
        scanner.close()


def _objects(remote: S3Store) -> dict[str, int]:
    return remote._list("")


def test_s3_store_publish_pull_and_conflict(tmp_path, full_fleet, s3):
    fs, endpoint = s3
    root = tmp_path / "root"
    copy_upto(full_fleet, root, 6)
    a = S3Store(URI, tmp_path / "cache-a", endpoint)
    assert a.pull().runs == 0  # an empty store
    p1 = _scan(a.cache, root, tmp_path / "alerts.jsonl")
    assert p1.audited == 3 and p1.alerts
    pub = a.push()
    assert pub.runs == 3 and pub.state and pub.parts == 3  # a part per run: its six step files, read at once
    objs = _objects(a)
    for run in ("team-a.cot", "team-b.clean", "team-b.template"):
        manifest = json.loads(a._get(f"runs/{run}/manifests/000000000001.json"))
        assert manifest["version"] == 1
        for e in manifest["files"].values():  # every part a published manifest lists is there
            assert f"runs/{run}/parts/{e['part']}" in objs
    assert "fleet/state/000000000001.json" in objs
    assert a.push().runs == 0 and not a.push().state  # nothing changed: nothing published

    # a second machine pulls the published store: same rows, same fleet state and alert keys
    b = S3Store(URI, tmp_path / "cache-b", endpoint)
    got = b.pull()
    assert got.runs == 3 and got.parts == 3 and got.state
    for run in ("team-a.cot", "team-b.clean"):
        assert Store(b.cache).summary(run).rows == Store(a.cache).summary(run).rows == 6 * ROWS_PER_STEP
    sa, sb = FleetState(a.cache), FleetState(b.cache)
    assert sb.sent == sa.sent and set(sb.runs) == set(sa.runs)
    assert sb.run_detail("team-a.cot")["findings"] == sa.run_detail("team-a.cot")["findings"]

    # the runs grow: only the new parts are uploaded, each run gets version 2
    copy_upto(full_fleet, root, 8)
    p2 = _scan(a.cache, root, tmp_path / "alerts.jsonl")
    assert p2.rows_added == 3 * 2 * ROWS_PER_STEP and not p2.alerts  # alert keys survived
    pub = a.push()
    assert (pub.runs, pub.parts) == (3, 3)  # a part per run: its two new files
    assert "runs/team-b.clean/manifests/000000000002.json" in _objects(a)
    # the reader catches up incrementally
    got = b.pull()
    assert (got.runs, got.parts) == (3, 3)
    assert Store(b.cache).summary("team-b.clean").rows == 8 * ROWS_PER_STEP

    # b now writes (takes over) and publishes version 3; a, still at base 2, must not overwrite it
    copy_upto(full_fleet, root, 9, only="team-b/clean")
    _scan(b.cache, root, tmp_path / "alerts-b.jsonl")
    assert b.push().runs == 1
    copy_upto(full_fleet, root, 10, only="team-b/clean")
    _scan(a.cache, root, tmp_path / "alerts.jsonl")
    with pytest.raises(StoreConflict, match="another writer"):
        a.push()
    with pytest.raises(StoreConflict):  # and a pull does not silently drop a's unpublished rows either
        a.pull()


def test_conditional_put_is_a_compare_and_swap(tmp_path, s3):
    """Two writers racing for the same version name: exactly one put succeeds (If-None-Match: *)."""
    fs, endpoint = s3
    one, two = S3Store(URI, tmp_path / "1", endpoint), S3Store(URI, tmp_path / "2", endpoint)
    one._put_new("runs/x/manifests/000000000001.json", b'{"a": 1}')
    with pytest.raises(StoreConflict, match="published by another writer"):
        two._put_new("runs/x/manifests/000000000001.json", b'{"b": 2}')
    assert one._get("runs/x/manifests/000000000001.json") == b'{"a": 1}'


def test_cli_scan_and_status_on_an_s3_store(tmp_path, full_fleet, s3):
    fs, endpoint = s3
    root = tmp_path / "root"
    copy_upto(full_fleet, root, 5)
    env = {"AWS_ENDPOINT_URL": endpoint}
    res = run_cli("fleet", "scan", str(root), "--store", URI, "--store-cache", str(tmp_path / "c1"), "--engine",
                  "inline", "--detector", "cot_grading", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"published to {URI}: 3 run(s), 3 part(s)" in res.stderr
    status = run_cli("fleet", "status", "--store", URI, "--store-cache", str(tmp_path / "c2"), "--json", env=env)
    assert status.returncode == 0, status.stderr[-2000:]
    rows = {r["run"]: r for r in json.loads(status.stdout)["runs"]}
    assert rows["team-a.cot"]["rows"] == 5 * ROWS_PER_STEP and rows["team-a.cot"]["findings"]["high"] >= 1
    bad = run_cli("fleet", "status", "--store", "s3://", env=env)
    assert bad.returncode == 2 and "not an s3://bucket/prefix" in bad.stderr


def test_writer_stopped_after_publishing_resumes(tmp_path, full_fleet, s3, monkeypatch):
    """A writer stopped between publishing a version and recording it recognises that version as its own."""
    fs, endpoint = s3
    root = tmp_path / "root"
    copy_upto(full_fleet, root, 3)
    a = S3Store(URI, tmp_path / "cache", endpoint)
    a.pull()
    _scan(a.cache, root, tmp_path / "alerts.jsonl")
    real = S3Store._save_sync
    monkeypatch.setattr(S3Store, "_save_sync", lambda self, sync: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        a.push()  # one run published, its sync record lost
    monkeypatch.setattr(S3Store, "_save_sync", real)
    again = S3Store(URI, tmp_path / "cache", endpoint).push()
    assert again.runs == 2 and again.state  # the other two runs and the state; the first was recognised
    objs = _objects(a)
    assert sum(1 for k in objs if "/manifests/" in k) == 3 and "fleet/state/000000000001.json" in objs


def _complete(remote: S3Store) -> None:
    """Every part the latest manifest of every run lists is on S3, and the latest state's details too."""
    objs = _objects(remote)
    runs = {k.split("/")[1] for k in objs if k.startswith("runs/")}
    for run in runs:
        latest = remote._latest(f"runs/{run}/manifests/")
        manifest = json.loads(remote._get(f"runs/{run}/manifests/{latest:012d}.json"))
        for e in manifest["files"].values():
            assert f"runs/{run}/parts/{e['part']}" in objs, (run, e["part"])
    state = json.loads(remote._get(f"fleet/state/{remote._latest('fleet/state/'):012d}.json"))
    for run, sha in state["details"].items():
        assert f"fleet/details/{run}/{sha}.json" in objs


def test_forget_and_runs_rm_act_on_the_s3_store(tmp_path, full_fleet, s3):
    """`fleet forget` and `runs rm` on an s3:// store publish the removal (a tombstone version); a reader that
    pulls drops the run, its fleet detail and its alert keys."""
    import time

    fs, endpoint = s3
    env = {"AWS_ENDPOINT_URL": endpoint}
    root = tmp_path / "root"
    copy_upto(full_fleet, root, 4)
    a = S3Store(URI, tmp_path / "a", endpoint)
    _scan(a.cache, root, tmp_path / "alerts.jsonl")
    a.push()
    b = S3Store(URI, tmp_path / "b", endpoint)
    b.pull()
    assert set(Store(b.cache).runs()) == {"team-a.cot", "team-b.clean", "team-b.template"}
    res = run_cli("fleet", "forget", "team-a.cot", "--store", URI, "--store-cache", str(a.cache), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "removed team-a.cot" in res.stderr
    tomb = json.loads(a._get("runs/team-a.cot/manifests/000000000002.json"))
    assert tomb["deleted"] and tomb["files"] == {}
    res = run_cli("runs", "rm", "team-b.clean", "--store", URI, "--store-cache", str(tmp_path / "c"), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "published the removal of team-b.clean" in res.stderr
    got = b.pull()
    assert sorted(got.deleted) == ["team-a.cot", "team-b.clean"]
    assert Store(b.cache).runs() == ["team-b.template"]
    sb = FleetState(b.cache)
    assert "team-a.cot" not in sb.runs and not any("|team-a.cot|" in k for k in sb.sent)
    assert not (b.cache / "fleet" / "runs" / "team-a.cot.json").exists()
    # GC: nothing is old yet; then, an hour on, the removed runs go whole and old versions go
    assert a.gc(grace=3600).objects == 0
    before = _objects(a)
    g = a.gc(grace=3600, now=time.time() + 7200)
    assert g.runs_removed == 2 and g.states >= 1
    after = _objects(a)
    assert not any(k.startswith(("runs/team-a.cot/", "runs/team-b.clean/")) for k in after)
    assert set(before) - set(after) == set(g.deleted)
    _complete(a)
    # a reader that had pulled the runs drops them when their objects are gone; the remaining run is intact
    fresh = S3Store(URI, tmp_path / "d", endpoint)
    assert fresh.pull().runs == 1 and Store(fresh.cache).summary("team-b.template").rows == 4 * ROWS_PER_STEP


def test_gc_is_safe_beside_a_concurrent_writer(tmp_path, full_fleet, s3):
    """GC deletes superseded versions and orphaned parts only once they are older than the grace period: a
    writer's fresh uploads and the version a reader may still hold are kept; the latest version stays whole."""
    import time

    fs, endpoint = s3
    root = tmp_path / "root"
    copy_upto(full_fleet, root, 3)
    a = S3Store(URI, tmp_path / "a", endpoint)
    _scan(a.cache, root, tmp_path / "alerts.jsonl")
    a.push()
    copy_upto(full_fleet, root, 5)
    _scan(a.cache, root, tmp_path / "alerts.jsonl")
    a.push()  # version 2 of every run, published just now
    # a writer mid-push: a part uploaded, its manifest not yet published
    a.s3.put_object(Bucket="fleet", Key="stores/lab/runs/team-a.cot/parts/zz-inflight.parquet", Body=b"x")
    now = time.time()
    g = a.gc(grace=60, now=now + 30)  # within the grace: version 1 may be held by a reader, the upload is young
    assert g.objects == 0
    g = a.gc(grace=60, now=now + 120)
    assert g.manifests == 3 and "runs/team-a.cot/parts/zz-inflight.parquet" in g.deleted
    assert all("/manifests/000000000002.json" not in k for k in g.deleted)
    _complete(a)
    # the writer goes on: the part it had uploaded was collected, so it uploads what it publishes again
    copy_upto(full_fleet, root, 6)
    _scan(a.cache, root, tmp_path / "alerts.jsonl")
    assert a.push().runs == 3
    _complete(a)
    b = S3Store(URI, tmp_path / "b", endpoint)
    b.pull()
    assert Store(b.cache).summary("team-a.cot").rows == 6 * ROWS_PER_STEP


def test_cli_gc_dry_run(tmp_path, full_fleet, s3):
    fs, endpoint = s3
    root = tmp_path / "root"
    copy_upto(full_fleet, root, 2)
    a = S3Store(URI, tmp_path / "a", endpoint)
    _scan(a.cache, root, tmp_path / "alerts.jsonl")
    a.push()
    res = run_cli("fleet", "gc", "--store", URI, "--grace", "0", "--dry-run", env={"AWS_ENDPOINT_URL": endpoint})
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{URI}: would delete 0 object(s)" in res.stdout
    bad = run_cli("fleet", "gc", "--store", str(tmp_path), env={"AWS_ENDPOINT_URL": endpoint})
    assert bad.returncode == 2 and "s3:// store" in bad.stderr
