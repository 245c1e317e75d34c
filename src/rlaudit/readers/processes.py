"""A run's files parsed in worker processes, for readers whose parse is Python per record.

prime-rl / verifiers episodes are message graphs read record by record in Python (`primerl`): ~70-100 CPU us an
episode, on the one thread of the ingest that holds the GIL, while Arrow's readers (TRL, verl) parse on every
core. `read_in_processes` hands each file to one of a few worker processes (`python -c` running `main` here, not
`multiprocessing`: a spawned child would run the caller's main script again, a forked one inherits DuckDB's
and Arrow's threads mid-lock), each parsing a file at a time with the reader's own `read`, and yields the tables
in file order, as `Reader.read_files` does.

A worker streams what it reads as it reads it: a frame per table (a reader's batch), a frame per bad record, and
a last frame per file with its notes and how it ended (read, unreadable, or an error: under --strict the
`BadInputError` of its first bad record). Here they are replayed in that order, file after file, so bad records,
batches and errors reach the ingest in the order reading here would give them. A thread per worker drains its
pipe into an inbox of at most `INBOX_BYTES` of frames (more only for a single frame larger than that): a worker
whose file is not yet being replayed parses ahead until its inbox is full, then waits. So the memory held for a
worker does not grow with its file, and a file of any size can go to a worker.

Used only where it pays (`use_processes`): a reader that asks for it (`Reader.parse_in_processes`), two or more
files, at least `MIN_BYTES` of them (a worker's start, ~0.3 s of imports, and the wait for the first files are
then a small part of the parse), and at least two workers by `memory.workers` (the usable cores,
`RLAUDIT_THREADS`, an enclosing `at_most`; each worker counted at its process and the least inbox). Under a
memory budget the inboxes shrink to what the budget leaves them (`inbox_bytes`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from ..errors import RlauditError
from .base import ReadContext, ReadOptions, Reader, SourceFile, report_unreadable

#: the least bytes of files worth starting worker processes for (~2.5 s of prime-rl episodes parsed on one core)
MIN_BYTES = 256 << 20
#: the most bytes of a worker's frames held here before they are replayed (see module doc): a prime-rl step file
#: of 1.1 GB (115,000 episodes of ~9.7 KB) streams back ~263 MB of tables, so a worker parses a whole such file
#: while the one before it is replayed (two such files: 14.3-16.9 s by two workers against 28.1-30.3 s parsed in
#: the ingest's process; with 64 MB the second worker waited for the first file: 21.4-22.1 s against 23.9-25.4;
#: docs/performance.md, session 53)
INBOX_BYTES = 256 << 20
#: the least inbox a worker gets under a memory budget (`inbox_bytes`): a few batches of episodes
MIN_INBOX_BYTES = 64 << 20
#: a worker process's own memory (215-249 MB measured parsing prime-rl episodes, docs/performance.md, sessions 52
#: and 53): with the least inbox, what each worker is counted at in `memory.workers`
WORKER_BYTES = 256 << 20
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
class _End:
    """A file's last frame: its notes, and how its read ended (neither set: read to the end)."""

    notes: dict[str, str] = field(default_factory=dict)
    unreadable: OSError | None = None
    error: BaseException | None = None


#: frame kinds: a table of the file, a bad record, the file's `_End`
_TABLE, _BAD, _END = "table", "bad", "end"


#: whether an ingest of this process may start parse workers (see `in_this_process`)
_ALLOWED = [True]


@contextlib.contextmanager
def in_this_process() -> Iterator[None]:
    """Within the block, every ingest of this process parses in this process (`use_processes` gives 0): for work
    already spread one process per core (a fleet's tasks, `fleet.worker.run_task`), where each task's parse
    workers would multiply the processes: on 32 cores, 32 tasks x 4 workers of ~250 MB each."""
    old = _ALLOWED[0]
    _ALLOWED[0] = False
    try:
        yield
    finally:
        _ALLOWED[0] = old


def use_processes(reader: Reader, files: list[SourceFile]) -> int:
    """How many worker processes to parse `files` with: 0 where it would not pay (see module doc), or within
    `in_this_process`."""
    if not _ALLOWED[0] or not reader.parse_in_processes or len(files) < 2:
        return 0
    total = 0
    for f in files:
        try:
            total += f.path.stat().st_size
        except OSError:
            return 0  # reported by the reader, on this thread
    if total < MIN_BYTES:
        return 0
    from ..memory import workers

    n = min(workers(WORKER_BYTES + MIN_INBOX_BYTES), len(files))
    return n if n >= 2 else 0


def inbox_bytes(n_workers: int) -> int:
    """Each of `n_workers` workers' inbox: `INBOX_BYTES`, or under a memory budget (`memory.budget`) what its
    share for per-part work (`memory.SAMPLE_SHARE`, as `memory.workers` counts) leaves beside the workers'
    processes, at least `MIN_INBOX_BYTES`."""
    from ..memory import SAMPLE_SHARE, budget

    b = budget()
    if b is None:
        return INBOX_BYTES
    share = int(b[0] * SAMPLE_SHARE) // max(1, n_workers) - WORKER_BYTES
    return max(MIN_INBOX_BYTES, min(INBOX_BYTES, share))


def read_in_processes(reader: Reader, files: list[SourceFile], ctx: ReadContext, n_workers: int,
                      unreadable: set[str] | None = None) -> Iterator[tuple[SourceFile, pa.Table | None]]:
    """`Reader.read_files` with each file parsed by one of `n_workers` worker processes: file i by worker
    i mod n, each worker two files ahead of the one being replayed."""
    inbox = inbox_bytes(n_workers)
    workers = [_Worker(inbox) for _ in range(n_workers)]
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
            yield from _replay(file, worker, ctx, unreadable)
            send()
        done = True
    finally:
        for worker in workers:
            worker.close(graceful=done)


def _replay(file: SourceFile, worker: _Worker, ctx: ReadContext,
            unreadable: set[str] | None) -> Iterator[tuple[SourceFile, pa.Table | None]]:
    """The worker's frames for `file` as `Reader.read_files` yields them, its reports made on `ctx`, in the order
    the worker made them."""
    while True:
        kind, value = worker.receive(file)
        if kind == _TABLE:
            yield file, value
        elif kind == _BAD:
            ctx.bad(file, value.line, value.reason, value.raw)
        else:
            for key, text in value.notes.items():
                ctx.note(text, key)
            if value.error is not None:
                raise value.error
            if value.unreadable is not None:
                report_unreadable(file, value.unreadable, ctx, unreadable)
            yield file, None
            return


class _Worker:
    """One worker process: jobs pickled to its stdin; its frames, read from its stdout by a thread of its own into
    an inbox (`_Inbox`), taken one at a time in order; what it prints goes to this process's stderr."""

    def __init__(self, inbox: int = INBOX_BYTES) -> None:
        package_root = str(Path(__file__).resolve().parents[2])  # the rlaudit this process runs
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        # a process group of its own: Ctrl-C at a terminal stops the ingest's process, which stops its workers
        # (`read_in_processes`), rather than each worker with a traceback of its own
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env={**os.environ, "PYTHONPATH": path}, process_group=0)
        self.inbox = _Inbox(inbox)
        self.drain = threading.Thread(target=self.inbox.fill, args=(self.proc.stdout,), daemon=True,
                                      name="rlaudit-parse-inbox")
        self.drain.start()

    def send(self, job: _Job) -> None:
        _write(self.proc.stdin, job)

    def receive(self, file: SourceFile) -> tuple[str, Any]:
        """The worker's next frame (kind, value)."""
        data = self.inbox.take()
        if data is None:
            if self.proc.poll() is None:  # its output could not be read: it would wait on the pipe for ever
                self.proc.kill()
            code = self.proc.wait()
            raise RlauditError(f"{file.relpath}: the worker process parsing it stopped (exit code {code}); "
                               "its error, if any, is printed above") from None
        return pickle.loads(data)

    def close(self, graceful: bool) -> None:
        """Stop the worker: told to once its jobs are done (`graceful`), killed otherwise (the ingest stopped
        early: it may be writing frames nobody reads)."""
        self.inbox.close()  # a drain waiting for room takes no more (the worker then ends on a broken pipe)
        try:
            if graceful and self.proc.poll() is None:
                _write(self.proc.stdin, None)
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.drain.join(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class _Inbox:
    """A worker's frames (pickled bytes) read ahead of their replay, at most `limit` bytes of them (a frame larger
    than that is taken alone); None after the last one (the worker's output ended)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held, self.closed = limit, 0, False
        self.frames: deque[bytes | None] = deque()
        self.cond = threading.Condition()

    def fill(self, pipe: IO[bytes]) -> None:
        """Read frames from `pipe` until it ends or the inbox is closed (the drain thread's loop)."""
        while True:
            try:
                data: bytes | None = _read_frame(pipe)
            except Exception:  # noqa: BLE001 - the end, a closed pipe (ValueError), no memory for a frame: the
                data = None  # worker's output ends here, and the ingest says so (`receive`) rather than wait
            with self.cond:
                while data is not None and self.frames and self.held + len(data) > self.limit and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                self.frames.append(data)
                self.held += len(data) if data is not None else 0
                self.cond.notify_all()
            if data is None:
                return

    def take(self) -> bytes | None:
        with self.cond:
            while not self.frames:
                self.cond.wait()
            data = self.frames.popleft()
            self.held -= len(data) if data is not None else 0
            if data is None:
                self.frames.appendleft(None)  # the end stays the end
            self.cond.notify_all()
            return data

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def _write(pipe: IO[bytes] | None, obj: Any) -> None:
    _frame(pipe, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _frame(pipe: IO[bytes] | None, data: bytes) -> None:
    """`data` written to `pipe` after its length (what `_read` reads)."""
    assert pipe is not None
    pipe.write(_LENGTH.pack(len(data)))
    pipe.write(data)
    pipe.flush()


def _read(pipe: IO[bytes] | None) -> Any:
    return pickle.loads(_read_frame(pipe))


def _read_frame(pipe: IO[bytes] | None) -> bytes:
    """The next frame's bytes (what `_frame` wrote); EOFError where the pipe ends first."""
    assert pipe is not None
    head = pipe.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError
    size = _LENGTH.unpack(head)[0]
    data = pipe.read(size)
    if len(data) < size:
        raise EOFError
    return data


def _parse(job: _Job, out: IO[bytes]) -> None:
    """One file read with the reader's `read_here` (in a worker), each table and bad record written to `out` as it
    comes, then the file's `_End`."""
    end = _End()
    ctx = ReadContext(run=job.run, options=job.options, on_bad=lambda record: _write(out, (_BAD, record)))
    try:
        for table in job.reader.read_here(job.file, ctx):
            _write(out, (_TABLE, table))
    except BrokenPipeError:
        raise  # the ingest is gone: nothing to report to
    except OSError as exc:
        end.unreadable = exc
    except RlauditError as exc:  # a bad file, or under --strict its first bad record: raised at this file
        end.error = exc
    except Exception:  # noqa: BLE001 - a failure of the reader itself: its traceback, raised at this file
        end.error = RuntimeError(f"{job.file.relpath}: reading failed in a worker process:\n{traceback.format_exc()}")
    end.notes = ctx.notes
    try:
        data = pickle.dumps((_END, end), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - an error that cannot be pickled: its text instead
        data = pickle.dumps((_END, _End(notes=end.notes, error=RuntimeError(
            f"{job.file.relpath}: {type(exc).__name__}: {exc} ({end.error!r})"))))
    _frame(out, data)


def main() -> None:
    """A worker: read jobs from stdin until None (or the end of stdin: the ingest's process is gone), write each
    one's frames to stdout."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed goes to stderr, not into the frames
    while True:
        try:
            job = _read(inp)
        except EOFError:
            return
        if job is None:
            return
        try:
            _parse(job, out)
        except BrokenPipeError:  # the ingest stopped reading (it stopped early, or was stopped)
            return
