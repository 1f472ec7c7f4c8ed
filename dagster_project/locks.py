"""Lake locks: ``flock`` on files under ``LAKE_HOME/.locks/``, released by the kernel when the
holding process exits, however it exits (kill -9 included): a crashed run cannot leave one held.

- ``table-<name>.lock`` (exclusive): one writer per table, held across a read-modify-write
  (``clinical_history``, the incremental extraction) and across a publish.
- ``publish.lock``: exclusive while a transaction renames its files into ``lake/``; shared while
  ``Lake.read_table`` lists and reads a table's parts, so a reader never sees half a publish.

Locks are re-entrant within one thread (a second ``flock`` on a new descriptor of the same file
would wait for the thread itself); other threads of the process wait like other processes. Pure module (no Dagster import).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_HELD: dict[tuple[int, str], tuple[int, int, int]] = {}  # (thread, path) -> (fd, mode, depth)
_GUARD = threading.RLock()


class LockTimeout(TimeoutError):
    """A lake lock was not obtained in time; the message names the lock and its holder."""


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False, timeout: float | None = None) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (created if missing). ``timeout`` None waits for ever."""
    key = (threading.get_ident(), str(path))  # flock conflicts between descriptors: per thread
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and (held[1] == fcntl.LOCK_EX or mode == fcntl.LOCK_SH):
            _HELD[key] = (held[0], held[1], held[2] + 1)
            reentrant = True
        elif held is not None:
            raise RuntimeError(f"{path.name}: a shared lake lock cannot be upgraded in place")
        else:
            reentrant = False
    if reentrant:
        try:
            yield
        finally:
            with _GUARD:
                fd, held_mode, depth = _HELD[key]
                _HELD[key] = (fd, held_mode, depth - 1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() > deadline:
                    raise LockTimeout(
                        f"lake lock {path.name} still held after {timeout:.0f} s by "
                        f"{_holder(path)}; another run is writing the same table(s)"
                    ) from None
                time.sleep(0.05)
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        with _GUARD:
            _HELD[key] = (fd, mode, 1)
        try:
            yield
        finally:
            with _GUARD:
                _, _, depth = _HELD[key]
                if depth > 1:  # pragma: no cover - released out of order
                    _HELD[key] = (fd, mode, depth - 1)
                else:
                    del _HELD[key]
    finally:
        with _GUARD:
            still_held = key in _HELD and _HELD[key][0] == fd
        if not still_held:
            os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def locks(paths: list[Path], timeout: float | None = None) -> Iterator[None]:
    """Exclusive locks on several files, always taken in sorted order (no deadlock between runs)."""
    with contextlib.ExitStack() as stack:
        for path in sorted(set(paths)):
            stack.enter_context(file_lock(path, timeout=timeout))
        yield


def is_locked(path: Path) -> bool:
    """True when another process holds ``path`` (shared or exclusive)."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
