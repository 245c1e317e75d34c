"""The cores an audit sizes its pools by respect the container it runs in: the CPU affinity and the cgroup's CPU
quota (`memory.usable_cores`), not `os.cpu_count()`, which is the host's. A fleet started with the default worker
count in a container limited to two CPUs on a many-core host spawned one audit process per host core."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaudit import memory


def _tree(tmp_path: Path, cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake /proc/self/cgroup (`cgroup`) and /sys/fs/cgroup holding `files` (relative path -> content)."""
    root = tmp_path / "sys"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "cgroup"
    proc.write_text(cgroup)
    return proc, root


def test_v2_quota_is_the_smallest_up_the_hierarchy(tmp_path):
    proc, root = _tree(tmp_path, "0::/kubepods/pod1/box\n", {
        "kubepods/pod1/box/cpu.max": "max 100000\n",  # none at the process's own level
        "kubepods/pod1/cpu.max": "150000 100000\n",  # 1.5 CPUs for the pod
        "kubepods/cpu.max": "800000 100000\n",
    })
    assert memory._read_cpu_quota(proc, root) == pytest.approx(1.5)


def test_v2_without_a_quota(tmp_path):
    proc, root = _tree(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert memory._read_cpu_quota(proc, root) is None
    proc, root = _tree(tmp_path / "none", "0::/a\n", {})  # no cpu controller files at all
    assert memory._read_cpu_quota(proc, root) is None


def test_v1_quota_and_none(tmp_path):
    proc, root = _tree(tmp_path, "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n", {
        "cpu,cpuacct/docker/x/cpu.cfs_quota_us": "200000\n",
        "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n",
    })
    assert memory._read_cpu_quota(proc, root) == pytest.approx(2.0)
    proc, root = _tree(tmp_path / "unlimited", "3:cpu,cpuacct:/\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert memory._read_cpu_quota(proc, root) is None


def test_unreadable_or_malformed_files_mean_no_quota(tmp_path):
    assert memory._read_cpu_quota(tmp_path / "missing", tmp_path) is None
    proc, root = _tree(tmp_path, "0::/a\n", {"a/cpu.max": "lots\n"})
    assert memory._read_cpu_quota(proc, root) is None


@pytest.mark.parametrize(("affinity", "quota", "cores"), [(8, None, 8), (8, 1.5, 2), (8, 2.0, 2), (8, 0.25, 1),
                                                         (2, 16.0, 2)])
def test_usable_cores_is_the_affinity_capped_by_the_quota_rounded_up(monkeypatch, affinity, quota, cores):
    monkeypatch.setattr(memory.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr(memory, "cgroup_cpu_quota", lambda: quota)
    assert memory.usable_cores() == cores


def test_pools_size_by_usable_cores_not_the_host(monkeypatch):
    from rlaudit.derived import tokens
    from rlaudit.fleet.engines import LocalEngine

    monkeypatch.delenv("RLAUDIT_THREADS", raising=False)
    monkeypatch.delenv("RLAUDIT_MEMORY", raising=False)
    monkeypatch.setattr(memory.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(memory.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(memory, "cgroup_cpu_quota", lambda: 1.0)
    assert memory.usable_cores() == 1
    assert tokens.workers() == 1
    assert memory.workers(1) == 1
    assert LocalEngine().workers == 1
    assert LocalEngine(workers=3).workers == 3  # asked for: as asked
