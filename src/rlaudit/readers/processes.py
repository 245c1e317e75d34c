"""A run's files parsed in worker processes, for readers whose parse is Python per record.

prime-rl / verifiers episodes are message graphs read record by record in Python (`primerl`): ~70-100 CPU us an
episode, on the one thread of the ingest that holds the GIL, while Arrow's readers (TRL, verl) parse on every
core. `read_in_processes` hands each file to one of a few worker processes (`python -c` running `main` here, not
`multiprocessing`: a spawned child would run the caller's main script again, a forked one inherits DuckDB's
and Arrow's threads mid-lock), each parsing a file at a time with the reader's own `read`, and yields the tables
in file order, as `Reader.read_files` does. What the workers report is replayed here in order: their bad records
(`ctx.bad`: quarantined, or under --strict the worker's `BadInputError` raised at that file), their notes, and the
files they could not read.

Used only where it pays (`use_processes`): a reader that asks for it (`Reader.parse_in_processes`), two or more
files, at least `MIN_BYTES` of them (a worker's start, ~0.3 s of imports, and the wait for the first files are
then a small part of the parse), none larger than `MAX_FILE_BYTES` (a file's tables come back whole, and up to
two files a worker are in flight), and at least two workers by `memory.workers` (the usable cores,
`RLAUDIT_THREADS`, an enclosing `at_most`).
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from ..errors import RlauditError
from .base import BadRecord, ReadContext, ReadOptions, Reader, SourceFile, report_unreadable

#: the least bytes of files worth starting worker processes for (~2.5 s of prime-rl episodes parsed on one core)
MIN_BYTES = 256 << 20
#: the largest file handed to a worker: its raw tables come back whole (see module doc)
MAX_FILE_BYTES = 1 << 30
_LENGTH = struct.Struct("<Q")
#: a worker's program: `main` imported, so that what it pickles is named by this module (not `__main__`)
_WORKER = "from rlaudit.readers.processes import main; main()"


@dataclass
class _Job:
    reader: Reader
    file: SourceFile
    run: str
    options: ReadOptions


@dataclass
class _Result:
    tables: list[pa.Table] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    unreadable: OSError | None = None
    error: BaseException | None = None


def use_processes(reader: Reader, files: list[SourceFile]) -> int:
    """How many worker processes to parse `files` with: 0 where it would not pay (see module doc)."""
    if not reader.parse_in_processes or len(files) < 2:
        return 0
    sizes = []
    for f in files:
        try:
            sizes.append(f.path.stat().st_size)
        except OSError:
            return 0  # reported by the reader, on this thread
    if sum(sizes) < MIN_BYTES or max(sizes) > MAX_FILE_BYTES:
        return 0
    from ..memory import workers

    n = min(workers(max(sizes)), len(files))
    return n if n >= 2 else 0


def read_in_processes(reader: Reader, files: list[SourceFile], ctx: ReadContext, n_workers: int,
                      unreadable: set[str] | None = None) -> Iterator[tuple[SourceFile, pa.Table | None]]:
    """`Reader.read_files` with each file parsed by one of `n_workers` worker processes: file i by worker
    i mod n, each worker two files ahead of the one being handed on."""
    workers = [_Worker() for _ in range(n_workers)]
    sent: deque[tuple[SourceFile, _Worker]] = deque()
    todo = enumerate(files)
    done = False

    def send() -> None:
        i, file = next(todo, (None, None))
        if file is not None:
            worker = workers[i % n_workers]
            worker.send(_Job(reader, file, ctx.run, ctx.options))
            sent.append((file, worker))

    try:
        for _ in range(2 * n_workers):
            send()
        while sent:
            file, worker = sent.popleft()
            result = worker.receive(file)
            send()
            yield from _replay(file, result, ctx, unreadable)
        done = True
    finally:
        for worker in workers:
            worker.close(graceful=done)


def _replay(file: SourceFile, result: _Result, ctx: ReadContext,
            unreadable: set[str] | None) -> Iterator[tuple[SourceFile, pa.Table | None]]:
    """A worker's result as `Reader.read_files` yields it, its reports made on `ctx` in the order they were made."""
    for key, text in result.notes.items():
        ctx.note(text, key)
    for record in result.bad:
        ctx.bad(file, record.line, record.reason, record.raw)
    if result.error is not None:  # after the bad records before it, as reading here would have
        raise result.error
    for table in result.tables:
        yield file, table
    if result.unreadable is not None:
        report_unreadable(file, result.unreadable, ctx, unreadable)
    yield file, None


class _Worker:
    """One worker process: jobs pickled to its stdin, results read from its stdout, one at a time in order; what
    it prints goes to this process's stderr."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])  # the rlaudit this process runs
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        # a process group of its own: Ctrl-C at a terminal stops the ingest's process, which stops its workers
        # (`read_in_processes`), rather than each worker with a traceback of its own
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env={**os.environ, "PYTHONPATH": path}, process_group=0)

    def send(self, job: _Job) -> None:
        _write(self.proc.stdin, job)

    def receive(self, file: SourceFile) -> _Result:
        try:
            return _read(self.proc.stdout)
        except EOFError:
            code = self.proc.wait()
            raise RlauditError(f"{file.relpath}: the worker process parsing it stopped (exit code {code}); "
                               "its error, if any, is printed above") from None

    def close(self, graceful: bool) -> None:
        """Stop the worker: told to once its jobs are done (`graceful`), killed otherwise (the ingest stopped
        early: it may be writing a result nobody reads)."""
        try:
            if graceful and self.proc.poll() is None:
                _write(self.proc.stdin, None)
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def _write(pipe: IO[bytes] | None, obj: Any) -> None:
    _frame(pipe, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _frame(pipe: IO[bytes] | None, data: bytes) -> None:
    """`data` written to `pipe` after its length (what `_read` reads)."""
    assert pipe is not None
    pipe.write(_LENGTH.pack(len(data)))
    pipe.write(data)
    pipe.flush()


def _read(pipe: IO[bytes] | None) -> Any:
    assert pipe is not None
    head = pipe.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError
    size = _LENGTH.unpack(head)[0]
    data = pipe.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def _parse(job: _Job) -> _Result:
    """One file read with the reader's `read_here` (in a worker), its reports kept for `_replay`."""
    result = _Result()
    ctx = ReadContext(run=job.run, options=job.options, on_bad=result.bad.append)
    try:
        for table in job.reader.read_here(job.file, ctx):
            result.tables.append(table)
    except OSError as exc:
        result.unreadable = exc
    except RlauditError as exc:  # a bad file, or under --strict its first bad record: raised at this file
        result.error = exc
    except Exception:  # noqa: BLE001 - a failure of the reader itself: its traceback, raised at this file
        result.error = RuntimeError(f"{job.file.relpath}: reading failed in a worker process:\n"
                                    f"{traceback.format_exc()}")
    result.notes = ctx.notes
    return result


def main() -> None:
    """A worker: read jobs from stdin until None (or the end of stdin: the ingest's process is gone), write each
    one's `_Result` to stdout."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed goes to stderr, not into the results
    while True:
        try:
            job = _read(inp)
        except EOFError:
            return
        if job is None:
            return
        result = _parse(job)
        try:
            data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an error that cannot be pickled: its text instead
            data = pickle.dumps(_Result(error=RuntimeError(f"{job.file.relpath}: {type(exc).__name__}: {exc} "
                                                           f"({result.error!r})")))
        _frame(out, data)
