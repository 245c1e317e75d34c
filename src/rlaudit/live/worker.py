"""The background audit worker: a separate Python process that imports nothing of the trainer's `__main__`.

`multiprocessing`'s spawn and forkserver start methods re-import the parent's main module in the child: a training
script without an `if __name__ == "__main__":` guard would then run its whole training loop a second time inside
the worker (and write the store). Fork is not an option either: the trainer holds torch, CUDA and DuckDB threads.

So the worker is started as `python -m rlaudit.live.worker`, a fresh interpreter that gets the parent's
`sys.path` (so detector modules the trainer registered import the same way) but never its `__main__`. Jobs are
(function, args) pairs pickled over its stdin, results come back pickled over its stdout; the worker exits when
its stdin closes (the trainer finished or died). Detector classes defined in the trainer's `__main__` cannot
travel by reference to such a process; `WorkerExecutor.can_run` says so and the auditor runs those audits in a
thread instead.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, BinaryIO

_HEADER = struct.Struct("!Q")


def _send(fh: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(_HEADER.pack(len(data)))
    fh.write(data)
    fh.flush()


def _receive(fh: BinaryIO) -> Any:
    head = fh.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("audit worker pipe closed")
    size = _HEADER.unpack(head)[0]
    data = fh.read(size)
    if len(data) < size:
        raise EOFError("audit worker pipe closed mid-message")
    return pickle.loads(data)


def uses_main(obj: Any) -> bool:
    """Whether pickling `obj` would refer to something defined in `__main__` (classes or functions)."""
    if isinstance(obj, type) or callable(obj):
        return getattr(obj, "__module__", None) == "__main__"
    if isinstance(obj, (list, tuple, set)):
        return any(uses_main(x) for x in obj)
    if isinstance(obj, dict):
        return any(uses_main(x) for x in obj.values())
    return False


class WorkerExecutor(Executor):
    """A one-process executor backed by `python -m rlaudit.live.worker` (see the module doc). One job at a
    time; a worker that died is restarted for the next job."""

    def __init__(self, nice: int = 10):
        self.nice = nice
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._closed = False

    @staticmethod
    def can_run(fn: Any, *args: Any) -> bool:
        return not uses_main(fn) and not any(uses_main(a) for a in args)

    def _start(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        root = str(Path(__file__).resolve().parents[2])  # the directory holding the rlaudit package
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
        env["RLAUDIT_WORKER_NICE"] = str(self.nice)
        self._proc = subprocess.Popen([sys.executable, "-m", "rlaudit.live.worker"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=env, close_fds=True)
        _send(self._proc.stdin, {"sys_path": [p for p in sys.path if p]})
        return self._proc

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:  # type: ignore[override]
        if self._closed:
            raise RuntimeError("audit worker is shut down")
        future: Future = Future()

        def run() -> None:
            with self._lock:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    proc = self._start()
                    _send(proc.stdin, (fn, args, kwargs))
                    ok, value = _receive(proc.stdout)
                except BaseException as exc:  # noqa: BLE001 - the worker died or the pipe broke
                    self._kill()
                    future.set_exception(RuntimeError(f"audit worker failed: {type(exc).__name__}: {exc}"))
                    return
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

        threading.Thread(target=run, name="rlaudit-audit-client", daemon=True).start()
        return future

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                self._proc.kill()
                self._proc.wait(timeout=5)
            except Exception:  # noqa: BLE001
                pass
            self._proc = None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        with self._lock:  # waits for a running job
            if self._proc is not None:
                try:
                    self._proc.stdin.close()
                    self._proc.wait(timeout=30 if wait else 0.1)
                except Exception:  # noqa: BLE001
                    self._kill()
                self._proc = None


def main() -> None:
    nice = int(os.environ.get("RLAUDIT_WORKER_NICE", "10") or 0)
    if nice:
        try:
            os.nice(nice)
        except OSError:
            pass
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything a detector prints must not corrupt the result pipe
    try:
        setup = _receive(stdin)
    except EOFError:
        return
    for p in reversed(setup.get("sys_path", [])):
        if p not in sys.path:
            sys.path.insert(0, p)
    while True:
        try:
            job = _receive(stdin)
        except EOFError:
            return
        try:
            fn, args, kwargs = job
            result = (True, fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - sent back to the trainer, which logs it
            result = (False, exc if _picklable(exc) else RuntimeError(f"{type(exc).__name__}: {exc}"))
        try:
            _send(stdout, result)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result
            _send(stdout, (False, RuntimeError(f"audit result could not be sent: {exc}")))


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:  # noqa: BLE001
        return False


if __name__ == "__main__":
    main()
