"""Object-store roots against a real S3 endpoint: moto's server mode on 127.0.0.1, started by the test (no mock
of the file-system layer: pyarrow's S3 client talks HTTP to it). Skipped when moto is not installed
(`pip install 'moto[server]'`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("moto")
pytest.importorskip("flask")  # moto's server mode

import pyarrow.fs as pafs  # noqa: E402

from rlaudit.fleet import FleetConfig, FleetScanner, InlineEngine  # noqa: E402
from rlaudit.live.alerts import AlertManager, JsonlSink  # noqa: E402

from .helpers import alert_lines, free_port, step_of, wait_for  # noqa: E402

ROWS_PER_STEP = 32


@pytest.fixture
def s3(monkeypatch):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="testing",
                           secret_key="testing", region="us-east-1", allow_bucket_creation=True)

    def up() -> bool:
        try:
            fs.create_dir("fleet")
            return True
        except OSError:
            return False

    try:
        assert wait_for(up, timeout=60, every=0.2), "moto server did not start"
        yield fs, endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _upload(fs, full, upto: int, only: str = "") -> int:
    n = 0
    for src in sorted(full.rglob("*")):
        rel = src.relative_to(full)
        if not src.is_file() or not str(rel).startswith(only):
            continue
        step = step_of(rel)
        key = f"fleet/runs/{rel.as_posix()}"
        if step is not None and step > upto:
            continue
        if fs.get_file_info(key).type == pafs.FileType.File:
            continue
        with fs.open_output_stream(key) as out:
            out.write(src.read_bytes())
        n += 1
    return n


def test_s3_root_incremental(tmp_path, full_fleet, s3):
    fs, endpoint = s3
    _upload(fs, full_fleet, 8)
    alerts = tmp_path / "alerts.jsonl"
    scanner = FleetScanner(tmp_path / "store", ["s3://fleet/runs/"], InlineEngine(),
                           AlertManager([JsonlSink(alerts)]), FleetConfig(detectors=["cot_grading"],
                                                                          s3_endpoint=endpoint))
    p1 = scanner.run_pass()
    assert (p1.runs, p1.audited, p1.failed) == (3, 3, 0), p1.errors
    assert p1.rows_added == 3 * 8 * ROWS_PER_STEP
    assert p1.synced["s3://fleet/runs/"]["downloaded"] == p1.synced["s3://fleet/runs/"]["objects"] > 24
    assert {a.run for a in p1.alerts} == {"team-a.cot", "team-b.template"}
    assert scanner.state.runs["team-b.clean"].origin == "s3://fleet/runs/team-b/clean/"
    p2 = scanner.run_pass()
    assert (p2.audited, p2.synced["s3://fleet/runs/"]["downloaded"]) == (0, 0)
    assert _upload(fs, full_fleet, 9, only="team-b/clean") == 1  # a trainer wrote one more step
    p3 = scanner.run_pass()
    assert p3.synced["s3://fleet/runs/"]["downloaded"] == 1
    assert (p3.audited, p3.rows_added, len(p3.alerts)) == (1, ROWS_PER_STEP, 0)
    scanner.close()
    keys = [a["key"] for a in alert_lines(alerts)]
    assert len(keys) == len(set(keys))
    os.environ.pop("AWS_ENDPOINT_URL", None)


def test_s3_run_deleted_from_the_bucket_is_missing(tmp_path, full_fleet, s3):
    """Every object of a run deleted from the bucket: the run is `missing` (findings kept), not an error; a
    bucket that cannot be listed marks nothing missing."""
    fs, endpoint = s3
    _upload(fs, full_fleet, 4)
    scanner = FleetScanner(tmp_path / "store", ["s3://fleet/runs/"], InlineEngine(),
                           AlertManager([JsonlSink(tmp_path / "a.jsonl")]),
                           FleetConfig(detectors=["cot_grading"], s3_endpoint=endpoint))
    assert scanner.run_pass().audited == 3
    fs.delete_dir("fleet/runs/team-a/cot")
    p = scanner.run_pass()
    assert p.synced["s3://fleet/runs/"]["deleted"] > 0
    assert p.gone == ["team-a.cot"] and p.failed == 0, p.to_json()
    rs = scanner.state.runs["team-a.cot"]
    assert rs.status == "missing" and rs.findings.get("high")
    scanner._mirrors["s3://fleet/runs/"].fs = pafs.S3FileSystem(  # the endpoint goes away
        endpoint_override=f"127.0.0.1:{free_port()}", scheme="http", access_key="testing", secret_key="testing",
        region="us-east-1", connect_timeout=1, request_timeout=1, retry_strategy=pafs.AwsStandardS3RetryStrategy(0))
    p = scanner.run_pass()
    assert "s3://fleet/runs/" in p.errors and p.gone == []
    assert [r.status for n, r in sorted(scanner.state.runs.items())] == ["missing", "ok", "ok"]
    scanner.close()
