"""Object-store roots (`s3://bucket/runs/`, any URI pyarrow.fs understands): mirrored incrementally to local disk.

rlaudit's readers read local files (TRL Parquet footers, verl JSONL lines, prime-rl step directories...). A fleet
root in an object store is therefore mirrored into `<store>-mirror/<id>/` (beside the store: the store's ingest
skips files inside the store itself) before discovery: each pass lists
the prefix (one recursive LIST), downloads only objects whose size or modification time changed since the last
pass, deletes local copies of deleted objects, and sets each copy's mtime to the object's, so the store's
incremental ingest (size + mtime, else SHA-256) sees exactly the objects that changed. Runs are then discovered
in the mirror by layout like any local root; their `origin` is the object URI.

Cost: one LIST per pass plus the new bytes (a step file is downloaded once). The mirror holds a copy of the raw
logs (the store holds the canonical Parquet); `--mirror DIR` may put it on a scratch disk.

S3 access: pyarrow's S3 client (bundled with pyarrow: no extra dependency), credentials from the usual AWS
environment/config; an S3-compatible endpoint (MinIO, Ceph, moto) from `--s3-endpoint` or `AWS_ENDPOINT_URL`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import RlauditError
from ..store import atomic_write_text

_INDEX = ".rlaudit-mirror.json"


def is_remote(root: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", root)) and not root.startswith("file://")


@dataclass
class SyncReport:
    objects: int = 0
    downloaded: int = 0
    deleted: int = 0
    bytes: int = 0
    seconds: float = 0.0


def _filesystem(uri: str, endpoint: str | None):
    import pyarrow.fs as pafs

    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a"):
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict = {}
        if endpoint:
            ep = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
            kwargs["endpoint_override"] = ep.netloc
            kwargs["scheme"] = ep.scheme or "http"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
            kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
            if os.environ.get("AWS_SESSION_TOKEN"):
                kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
        path = (parsed.netloc + parsed.path).rstrip("/")
        return pafs.S3FileSystem(**kwargs), path
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise RlauditError(f"{uri}: not a file system rlaudit can read ({exc})") from None
    return fs, path.rstrip("/")


class ObjectMirror:
    """A local, incrementally updated copy of an object-store prefix."""

    def __init__(self, uri: str, cache_root: str | Path, endpoint: str | None = None):
        self.uri = uri.rstrip("/") + "/"
        self.fs, self.prefix = _filesystem(uri, endpoint)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.prefix)[-60:]
        self.local = Path(cache_root) / f"{hashlib.sha1(self.uri.encode()).hexdigest()[:10]}-{slug}"

    def sync(self) -> SyncReport:
        import pyarrow.fs as pafs

        t0 = time.perf_counter()
        report = SyncReport()
        self.local.mkdir(parents=True, exist_ok=True)
        index_path = self.local / _INDEX
        try:
            index: dict[str, list[int]] = json.loads(index_path.read_text()) if index_path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            index = {}
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.prefix, recursive=True, allow_not_found=True))
        except Exception as exc:  # noqa: BLE001
            raise RlauditError(f"{self.uri}: cannot list ({type(exc).__name__}: {exc})") from None
        seen: set[str] = set()
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(self.prefix):].lstrip("/")
            if not rel or any(part.startswith(".") or part == ".." for part in rel.split("/")):
                continue
            seen.add(rel)
            report.objects += 1
            mtime_ns = int(info.mtime_ns or 0)
            stamp = [int(info.size or 0), mtime_ns]
            target = self.local / rel
            if index.get(rel) == stamp and target.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            with self.fs.open_input_stream(info.path) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            if mtime_ns:
                os.utime(tmp, ns=(mtime_ns, mtime_ns))
            os.replace(tmp, target)
            index[rel] = stamp
            report.downloaded += 1
            report.bytes += stamp[0]
        for rel in set(index) - seen:
            (self.local / rel).unlink(missing_ok=True)
            del index[rel]
            report.deleted += 1
        atomic_write_text(index_path, json.dumps(index, sort_keys=True))
        report.seconds = time.perf_counter() - t0
        return report

    def origin(self, local_dir: str | Path) -> str:
        rel = Path(local_dir).resolve().relative_to(self.local.resolve())
        return self.uri + (str(rel) + "/" if str(rel) != "." else "")
