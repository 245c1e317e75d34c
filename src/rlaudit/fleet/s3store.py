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

Not done (see docs/fleet.md): garbage collection of retired parts and old versions (nothing is deleted; a
lifecycle rule or a later `gc` must keep every part listed by versions a reader may still hold), and derived
data is not shared between machines.
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
        out: dict[str, int] = {}
        base = self._key(rel)
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    out[obj["Key"][len(base):]] = int(obj["Size"])
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
        latest = self._latest("fleet/state/")
        if latest and latest != sync.get("fleet"):
            obj = json.loads(self._get(f"fleet/state/{latest:012d}.json"))
            fleet = self.cache / "fleet"
            (fleet / "runs").mkdir(parents=True, exist_ok=True)
            for run, sha in obj.pop("details", {}).items():
                atomic_write_text(fleet / "runs" / f"{run}.json", self._get(f"fleet/details/{run}/{sha}.json").decode())
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
                # part names are unique to one ingest and an upload is atomic: a listed part is complete
                uploaded = set(self._list(f"runs/{run}/parts/"))
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
