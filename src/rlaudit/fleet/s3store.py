"""A store that lives on S3 (`--store s3://bucket/prefix`): a local working copy, published with versioned
manifests and conditional puts.

What a lab runs. The scanner works on a local store (DuckDB reads local Parquet at disk speed; flock, leases and
atomic renames are POSIX), the *cache* (`--store-cache DIR`). S3 holds the published store: it survives the
scanner's machine, another machine (a report server, an MCP server, a scanner taking over) pulls it, and only
what changed moves. After each pass the scanner publishes; at start it pulls.

Layout under the prefix::

    runs/<run>/parts/<part>.parquet          immutable (a part name is unique to one ingest), uploaded once
    runs/<run>/quarantine.jsonl              bad records (replaced whole when it grew)
    runs/<run>/manifests/<v:012d>.json       one object per published version of the run's manifest
    fleet/details/<run>/<sha1>.json          a run's fleet detail (findings, auditor memory), by content
    fleet/state/<n:012d>.json                one object per published fleet state; lists each run's detail sha1

Why it is atomic and safe on S3 (strongly consistent since 2020: a read after a successful write sees it):

- *Parts before manifests.* A manifest version is published only after every part it lists is uploaded, so a
  reader that sees version v finds all of v's parts. Derived data (`derived/`) is not published: it is a
  cache a reader recomputes (a scanner on a new machine recomputes it for the parts it audits).
- *Versioned names + conditional put = compare-and-swap.* A writer publishes version `base + 1`, where `base`
  is the latest version it pulled or published, with `If-None-Match: *` (S3 conditional writes; MinIO and
  moto implement them too). Two writers that started from the same base race for one name: exactly one put
  succeeds, the other gets 412 and stops with a conflict error instead of overwriting. A writer that finds a
  newer version than its base (another writer published meanwhile) also stops. Objects are never overwritten.
- *Readers* list `manifests/`, take the highest version and download the parts they lack; an older version is
  still complete (nothing is deleted), so a reader racing a writer sees either version, never a torn one.
- *The fleet state* (run summaries, alert keys sent, the outbox) is one versioned object under the same rule,
  and each run's detail a content-addressed object it points to, so a state and its details change together.

Deleting a run (`fleet forget`, `runs rm`, on an s3:// store) publishes a *tombstone*: the run's next manifest
version, `{"deleted": true, "files": {}}`, under the same conditional put; a reader that pulls it drops its copy.

Garbage collection (`gc`, `rlaudit fleet gc`) deletes only objects older than a grace period that no version a
reader may still be using references: a manifest (or fleet state) version superseded for longer than the grace
period, parts no kept version lists, details no kept state points to, and a tombstoned run whole. A concurrent
writer is safe: everything it uploads is younger than the grace period, the version it publishes supersedes the
latest (kept) one, and it re-uploads any part it needs that the version it starts from does not list (so a part
GC judged orphaned is never relied on unless uploaded again). The grace period must exceed the longest push or
pull (default one hour) and the clock skew between S3 and this machine.

Derived data (`runs/<run>/derived/`: term sets, CoT scan results) is not published, on purpose: the fleet
scanner's own audits never write it (its live audits read bounded views whose derived tables stay in memory,
`StoreView.persist_derived`), so only `fleet audit` and sharded runs leave any; it is a pure function of the
parts and the detector options (recomputed on demand, keyed by them), about as large as the parts it derives
from, and a reader of the published store (status, reports) needs the findings, which are published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import RlauditError
from ..store import MANIFEST, atomic_write_text

log = logging.getLogger("rlaudit.fleet")

_SYNC = ".s3sync.json"  # in the cache: what was last pulled/published (bases, uploaded parts)


class StoreConflict(RlauditError):
    """Another writer published a version this writer did not start from."""


@dataclass
class SyncStats:
    runs: int = 0  # runs published or pulled
    parts: int = 0  # part objects uploaded or downloaded
    bytes: int = 0
    state: bool = False  # the fleet state was published or pulled
    skipped: int = 0  # runs already in sync
    conflicts: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # runs removed (tombstone published, or pulled)


@dataclass
class GcStats:
    manifests: int = 0  # superseded manifest versions deleted
    parts: int = 0  # parts no kept version lists
    runs_removed: int = 0  # tombstoned runs deleted whole
    states: int = 0  # superseded fleet-state versions
    details: int = 0  # run details no kept state points to
    objects: int = 0
    bytes: int = 0  # of the deleted run objects (parts, manifests)
    deleted: list[str] = field(default_factory=list)


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith(("s3://", "s3a://"))


def default_cache(uri: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlaudit" / "s3"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", uri.split("://", 1)[-1])[-60:]
    return base / f"{hashlib.sha1(uri.encode()).hexdigest()[:10]}-{slug}"


class S3Store:
    """The published copy of a store at `uri`, synced with the local working store `cache`."""

    def __init__(self, uri: str, cache: str | Path | None = None, endpoint: str | None = None):
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise RlauditError("--store s3://... needs boto3: pip install 'rlaudit[s3]'") from None
        parsed = urlparse(uri)
        if parsed.scheme not in ("s3", "s3a") or not parsed.netloc:
            raise RlauditError(f"{uri}: not an s3://bucket/prefix URI")
        self.uri = f"s3://{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self.cache = Path(cache) if cache else default_cache(self.uri)
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "://" not in endpoint:
            endpoint = f"http://{endpoint}"
        self.s3 = boto3.client("s3", endpoint_url=endpoint or None,
                               config=Config(retries={"max_attempts": 5, "mode": "standard"}))

    # ------------------------------------------------------------------ object helpers
    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _list(self, rel: str) -> dict[str, int]:
        """Object names (relative to `rel`) -> size under the prefix `rel`."""
        return {name: size for name, (size, _) in self._list_meta(rel).items()}

    def _list_meta(self, rel: str) -> dict[str, tuple[int, float]]:
        """Object names (relative to `rel`) -> (size, last modified, epoch seconds) under the prefix `rel`."""
        out: dict[str, tuple[int, float]] = {}
        base = self._key(rel)
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    out[obj["Key"][len(base):]] = (int(obj["Size"]), obj["LastModified"].timestamp())
        except Exception as exc:  # noqa: BLE001 - botocore raises many types
            raise RlauditError(f"{self.uri}: cannot list {rel} ({type(exc).__name__}: {exc})") from None
        return out

    def _latest(self, rel: str) -> int:
        """The highest published version under `rel` (`<v:012d>.json` objects), 0 when none."""
        versions = [int(name[:-5]) for name in self._list(rel) if re.fullmatch(r"\d{12}\.json", name)]
        return max(versions, default=0)

    def _get(self, rel: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read()

    def _put_new(self, rel: str, body: bytes) -> None:
        """Create `rel`; fails with StoreConflict if it exists (`If-None-Match: *`)."""
        from botocore.exceptions import ClientError

        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=body, IfNoneMatch="*")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise StoreConflict(f"{self.uri}: {rel} was published by another writer meanwhile; this "
                                    "scanner's store is out of date (stop the other scanner, then start this "
                                    "one again to pull)") from None
            raise

    def _is_ours(self, rel: str, manifest: dict[str, Any]) -> bool:
        """Whether the published manifest `rel` lists exactly the files of `manifest`."""
        try:
            return _same_files(json.loads(self._get(rel)), manifest)
        except Exception:  # noqa: BLE001 - unreadable: not ours
            return False

    def _upload(self, path: Path, rel: str) -> int:
        self.s3.upload_file(str(path), self.bucket, self._key(rel))
        return path.stat().st_size

    # ------------------------------------------------------------------ sync bookkeeping
    def _sync_state(self) -> dict[str, Any]:
        p = self.cache / _SYNC
        try:
            return json.loads(p.read_text()) if p.is_file() else {"runs": {}, "fleet": 0}
        except (OSError, json.JSONDecodeError):
            return {"runs": {}, "fleet": 0}

    def _save_sync(self, sync: dict[str, Any]) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.cache / _SYNC, json.dumps(sync, sort_keys=True))

    # ------------------------------------------------------------------ pull
    def pull(self) -> SyncStats:
        """Bring the latest published version of every run and of the fleet state into the cache. A run with
        local changes not yet published is left alone unless the remote moved too (then: conflict)."""
        from ..store import Store

        stats = SyncStats()
        sync = self._sync_state()
        store = Store(self.cache)
        objects = self._list("runs/")  # one listing for every run
        runs = sorted({name.split("/", 1)[0] for name in objects if "/" in name})
        for run in runs:
            latest = max((int(n[-17:-5]) for n in objects
                          if re.fullmatch(rf"{re.escape(run)}/manifests/\d{{12}}\.json", n)), default=0)
            if not latest:
                continue  # parts uploaded, manifest not yet: not published
            mine = sync["runs"].get(run, {})
            if mine.get("base") == latest:
                stats.skipped += 1
                continue
            local_v = _local_version(store, run)
            if local_v is not None and local_v != mine.get("local"):
                raise StoreConflict(f"{self.uri}: run {run!r} changed both here (cache {self.cache}) and on S3 "
                                    f"(version {latest}); move the cache away to start from S3's copy")
            manifest = json.loads(self._get(f"runs/{run}/manifests/{latest:012d}.json"))
            if manifest.get("deleted"):  # a tombstone: the run was removed by a writer
                if local_v is not None:
                    store.delete(run)
                    stats.deleted.append(run)
                sync["runs"][run] = {"base": latest, "deleted": True}
                continue
            d = self.cache / "runs" / run
            (d / "parts").mkdir(parents=True, exist_ok=True)
            for entry in manifest["files"].values():
                part = entry.get("part")
                if part and not (d / "parts" / part).is_file():
                    tmp = d / "parts" / f".{part}.s3tmp"
                    self.s3.download_file(self.bucket, self._key(f"runs/{run}/parts/{part}"), str(tmp))
                    os.replace(tmp, d / "parts" / part)
                    stats.parts += 1
                    stats.bytes += (d / "parts" / part).stat().st_size
            if f"{run}/quarantine.jsonl" in objects:
                (d / "quarantine.jsonl").write_bytes(self._get(f"runs/{run}/quarantine.jsonl"))
            manifest["version"] = latest
            atomic_write_text(d / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
            sync["runs"][run] = {"base": latest, "local": latest, "parts": sorted(
                e["part"] for e in manifest["files"].values() if e.get("part"))}
            stats.runs += 1
        for run in [r for r, mine in sync["runs"].items() if r not in runs and not mine.get("deleted")]:
            # published once, now without any object: removed and collected (`gc`) since this cache last synced
            if _local_version(store, run) is not None:
                if _local_version(store, run) != sync["runs"][run].get("local"):
                    raise StoreConflict(f"{self.uri}: run {run!r} was removed on S3 and changed here (cache "
                                        f"{self.cache}); move the cache away to start from S3's copy")
                store.delete(run)
                stats.deleted.append(run)
            del sync["runs"][run]
        latest = self._latest("fleet/state/")
        if latest and latest != sync.get("fleet"):
            obj = json.loads(self._get(f"fleet/state/{latest:012d}.json"))
            fleet = self.cache / "fleet"
            (fleet / "runs").mkdir(parents=True, exist_ok=True)
            details = obj.pop("details", {})
            for run, sha in details.items():
                atomic_write_text(fleet / "runs" / f"{run}.json", self._get(f"fleet/details/{run}/{sha}.json").decode())
            for stale in (fleet / "runs").glob("*.json"):  # runs the published state forgot
                if stale.stem not in details:
                    stale.unlink()
            atomic_write_text(fleet / "state.json", json.dumps(obj, indent=1))
            sync["fleet"] = latest
            sync["fleet_local"] = _sha_file(fleet / "state.json")
            sync["fleet_details"] = {p.stem: _sha_file(p) for p in sorted((fleet / "runs").glob("*.json"))}
            stats.state = True
        self._save_sync(sync)
        return stats

    # ------------------------------------------------------------------ push
    def push(self) -> SyncStats:
        """Publish every run whose local manifest changed since the last sync, then the fleet state."""
        from ..store import Store

        stats = SyncStats()
        sync = self._sync_state()
        store = Store(self.cache)
        local = set(store.runs())
        for run in sorted(r for r, mine in sync["runs"].items() if r not in local and not mine.get("deleted")):
            self._tombstone(run, sync)
            stats.deleted.append(run)
        for run in store.runs():
            mine = sync["runs"].get(run, {})
            with store.reading([run]) as pinned:  # a consistent local version; its parts are not deleted
                manifest = dict(pinned[run])
                local_v = int(manifest.get("version", 0))
                if mine.get("local") == local_v:
                    stats.skipped += 1
                    continue
                base = int(mine.get("base", 0))
                latest = self._latest(f"runs/{run}/manifests/")
                listed = {e["part"] for e in manifest["files"].values() if e.get("part")}
                q = store.run_dir(run) / "quarantine.jsonl"
                if latest == base + 1 and self._is_ours(f"runs/{run}/manifests/{latest:012d}.json", manifest):
                    # published by this writer just before it was stopped (the sync record was not saved)
                    sync["runs"][run] = {"base": latest, "local": local_v, "parts": sorted(listed),
                                         "quarantine": q.stat().st_size if q.is_file() else 0}
                    self._save_sync(sync)
                    continue
                if latest != base:
                    raise StoreConflict(f"{self.uri}: run {run!r} is at version {latest} on S3, this store "
                                        f"started from {base}: another writer published it")
                # part names are unique to one ingest and an upload is atomic: a listed part is complete. Only parts
                # the published base lists are relied on without an upload: another listed part may be one `gc`
                # judged orphaned (a stopped writer's) and is deleting; uploading it again makes it young.
                uploaded = set(self._list(f"runs/{run}/parts/")) & set(mine.get("parts", []))
                for path in store.parts(run, manifest):  # parts first: a reader of the manifest finds them all
                    if path.name not in uploaded:
                        stats.bytes += self._upload(path, f"runs/{run}/parts/{path.name}")
                        stats.parts += 1
                        uploaded.add(path.name)
                if q.is_file() and q.stat().st_size != mine.get("quarantine", 0):
                    self._upload(q, f"runs/{run}/quarantine.jsonl")
                version = base + 1
                body = dict(manifest, version=version)
                body.pop("_stale", None)
                self._put_new(f"runs/{run}/manifests/{version:012d}.json",
                              json.dumps(body, indent=1, sort_keys=True).encode())
            sync["runs"][run] = {"base": version, "local": local_v, "parts": sorted(listed),
                                 "quarantine": q.stat().st_size if q.is_file() else 0}
            self._save_sync(sync)  # after each run: a crash re-publishes nothing already published
            stats.runs += 1
        stats.state = self._push_fleet(sync)
        self._save_sync(sync)
        return stats

    def _tombstone(self, run: str, sync: dict[str, Any]) -> None:
        """Publish the removal of a run this cache had published: a `deleted` manifest version, by CAS."""
        import time

        base = int(sync["runs"][run].get("base", 0))
        latest = self._latest(f"runs/{run}/manifests/")
        if latest != base:
            raise StoreConflict(f"{self.uri}: run {run!r} is at version {latest} on S3, this store started from "
                                f"{base}: another writer published it; not removing it")
        if latest:
            body = {"deleted": True, "files": {}, "version": base + 1, "updated": time.time()}
            self._put_new(f"runs/{run}/manifests/{base + 1:012d}.json", json.dumps(body).encode())
        sync["runs"][run] = {"base": base + 1, "deleted": True}
        self._save_sync(sync)

    # ------------------------------------------------------------------ garbage collection
    def gc(self, grace: float = 3600.0, dry_run: bool = False, now: float | None = None) -> GcStats:
        """Delete superseded manifest and fleet-state versions, unreferenced parts and details, and tombstoned
        runs, keeping everything younger than `grace` seconds (module doc). Never writes."""
        import time

        now = time.time() if now is None else now
        stats = GcStats()
        doomed: list[str] = []
        objects = self._list_meta("runs/")
        by_run: dict[str, dict[str, tuple[int, float]]] = {}
        for name, meta in objects.items():
            if "/" in name:
                run, rest = name.split("/", 1)
                by_run.setdefault(run, {})[rest] = meta
        for run, objs in sorted(by_run.items()):
            doomed += [f"runs/{run}/{rel}" for rel in self._gc_run(run, objs, grace, now, stats)]
        doomed += self._gc_fleet(grace, now, stats)
        stats.objects = len(doomed)
        stats.bytes = sum(self._size_of(k, objects) for k in doomed)
        if not dry_run:
            for i in range(0, len(doomed), 1000):
                batch = [{"Key": self._key(k)} for k in doomed[i:i + 1000]]
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        stats.deleted = doomed
        return stats

    def _size_of(self, rel: str, run_objects: dict[str, tuple[int, float]]) -> int:
        meta = run_objects.get(rel[len("runs/"):]) if rel.startswith("runs/") else None
        return meta[0] if meta else 0

    def _gc_run(self, run: str, objs: dict[str, tuple[int, float]], grace: float, now: float,
                stats: GcStats) -> list[str]:
        """What of one run can go: see `gc`. Names relative to runs/<run>/."""
        versions = sorted((int(n[10:22]), n) for n in objs if re.fullmatch(r"manifests/\d{12}\.json", n))
        old = now - grace
        if not versions:  # parts of a run never published (a writer still uploading, or stopped): orphans
            return [n for n, (_, t) in objs.items() if n.startswith("parts/") and t < old]
        latest_v, latest_name = versions[-1]
        head = json.loads(self._get(f"runs/{run}/{latest_name}"))
        if head.get("deleted") and objs[latest_name][1] < old:  # removed for longer than the grace: all of it
            stats.runs_removed += 1
            return [n for n, (_, t) in objs.items() if t < old]
        kept = [latest_name]
        # version v stays while v+1 was published less than `grace` ago (a reader may hold v and be downloading)
        for (v, name), (_, nxt) in zip(versions[:-1], versions[1:]):
            if objs[nxt][1] >= old:
                kept.append(name)
        referenced: set[str] = set()
        for name in kept:
            manifest = head if name == latest_name else json.loads(self._get(f"runs/{run}/{name}"))
            referenced |= {e["part"] for e in manifest.get("files", {}).values() if e.get("part")}
        gone = [name for _, name in versions if name not in kept]
        stats.manifests += len(gone)
        parts = [n for n, (_, t) in objs.items() if n.startswith("parts/") and n[6:] not in referenced and t < old]
        stats.parts += len(parts)
        return gone + parts

    def _gc_fleet(self, grace: float, now: float, stats: GcStats) -> list[str]:
        """Superseded fleet-state versions and the details no kept state points to."""
        old = now - grace
        states = self._list_meta("fleet/state/")
        versions = sorted(n for n in states if re.fullmatch(r"\d{12}\.json", n))
        if not versions:
            return []
        kept = [versions[-1]] + [v for v, nxt in zip(versions[:-1], versions[1:]) if states[nxt][1] >= old]
        referenced: set[str] = set()
        for v in kept:
            obj = json.loads(self._get(f"fleet/state/{v}"))
            referenced |= {f"{run}/{sha}.json" for run, sha in obj.get("details", {}).items()}
        details = self._list_meta("fleet/details/")
        gone = [f"fleet/state/{v}" for v in versions if v not in kept]
        dropped = [f"fleet/details/{n}" for n, (_, t) in details.items() if n not in referenced and t < old]
        stats.states += len(gone)
        stats.details += len(dropped)
        return gone + dropped

    def _push_fleet(self, sync: dict[str, Any]) -> bool:
        fleet = self.cache / "fleet"
        state_path = fleet / "state.json"
        if not state_path.is_file():
            return False
        digest = _sha_file(state_path)
        details = {p.stem: p for p in sorted((fleet / "runs").glob("*.json"))} if (fleet / "runs").is_dir() else {}
        shas = {run: _sha_file(p) for run, p in details.items()}
        if sync.get("fleet_local") == digest and sync.get("fleet_details") == shas:
            return False
        base = int(sync.get("fleet", 0))
        latest = self._latest("fleet/state/")
        obj = json.loads(state_path.read_text())
        obj["details"] = shas
        if latest == base + 1 and json.loads(self._get(f"fleet/state/{latest:012d}.json")) == obj:
            sync.update({"fleet": latest, "fleet_local": digest, "fleet_details": shas})  # ours, before a stop
            return True
        if latest != base:
            raise StoreConflict(f"{self.uri}: the fleet state is at version {latest} on S3, this scanner started "
                                f"from {base}: another scanner published it")
        have = set(self._list("fleet/details/"))
        for run, sha in shas.items():
            if f"{run}/{sha}.json" not in have:
                self._upload(details[run], f"fleet/details/{run}/{sha}.json")
        self._put_new(f"fleet/state/{base + 1:012d}.json", json.dumps(obj, indent=1).encode())
        sync.update({"fleet": base + 1, "fleet_local": digest, "fleet_details": shas})
        return True


def _same_files(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("files") == b.get("files")


def _local_version(store: Any, run: str) -> int | None:
    if not store.has_run(run):
        return None
    try:
        return int(store.manifest(run).get("version", 0))
    except RlauditError:
        return None


def _sha_file(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()
