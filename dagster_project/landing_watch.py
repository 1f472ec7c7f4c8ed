"""Which landing folders changed, counting only files that have stopped growing. Pure module.

The sensor calls ``observe`` once per tick with the previous cursor. A folder is *stable* when the
size and mtime of every file in it are the same as at the previous tick (a file still being
copied changes size between ticks) and its newest file is older than ``min_age_s``. A stable
folder whose content digest differs from the one last triggered is *changed*. The cursor keeps one
digest per folder (not per file), so it stays small for folders of 100,000 DICOM files.

A folder the cursor has never seen (the sensor's first tick, or a folder added later) is compared
with the lake instead: when every file in it arrived (mtime and ctime) before the last run that
ingested it started, it is recorded as already triggered, so starting a daemon on a materialized
lake launches nothing; a folder the lake changed since triggers once stable, and so does one whose
assets never ran, even empty (its tables then exist, typed and empty, as in every lake).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

EMPTY_DIGEST = hashlib.sha256().hexdigest()[:32]  # a missing or empty folder
NEVER_INGESTED = "never-ingested"  # "last triggered" of a folder whose assets never ran


@dataclass(frozen=True)
class FolderState:
    digest: str
    files: int
    newest_mtime_ns: int
    newest_change_ns: int  # the latest mtime or ctime: when the newest file arrived here


def folder_state(root: Path) -> FolderState:
    """Digest of (relative path, size, mtime) of every regular, non-hidden file below ``root``."""
    digest = hashlib.sha256()
    files = 0
    newest = changed = 0
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            stat = path.stat()
            digest.update(f"{rel.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            files += 1
            newest = max(newest, stat.st_mtime_ns)
            changed = max(changed, stat.st_mtime_ns, stat.st_ctime_ns)
    return FolderState(digest.hexdigest()[:32], files, newest, changed)


@dataclass
class WatchState:
    """The sensor cursor: per source, the digest seen at the last tick and the one last triggered;
    ``runs``: how many runs it requested (a run key is never reused, even when a folder returns
    to an earlier state, e.g. a file removed and copied back)."""

    seen: dict[str, str] = field(default_factory=dict)
    triggered: dict[str, str] = field(default_factory=dict)
    runs: int = 0

    def to_cursor(self) -> str:
        data = {"seen": self.seen, "triggered": self.triggered, "runs": self.runs}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_cursor(cls, cursor: str | None) -> WatchState:
        data = json.loads(cursor) if cursor else {}
        return cls(
            seen=dict(data.get("seen", {})),
            triggered=dict(data.get("triggered", {})),
            runs=int(data.get("runs", 0)),
        )


@dataclass
class Observation:
    changed: dict[str, int]  # source -> number of files in the (stable) folder
    waiting: list[str]  # sources with files still being written
    state: WatchState
    # first sight of a folder the lake already ingested: recorded, no run
    already_ingested: list[str] = field(default_factory=list)


def observe(
    roots: dict[str, Path],
    state: WatchState,
    now_ns: int | None = None,
    min_age_s: float = 2.0,
    ingested_at: Callable[[str], float | None] | None = None,
) -> Observation:
    """Compare the landing folders with the cursor; return the changed sources and the new cursor.

    ``ingested_at(source)``: when (epoch seconds) the last run that ingested the source started, or
    None if the lake never did; asked only for sources the cursor has never seen.
    """
    now_ns = now_ns if now_ns is not None else time.time_ns()
    new_state = WatchState(seen={}, triggered=dict(state.triggered), runs=state.runs)
    changed: dict[str, int] = {}
    waiting: list[str] = []
    already: list[str] = []
    for source, root in sorted(roots.items()):
        current = folder_state(root)
        new_state.seen[source] = current.digest
        first_sight = source not in state.seen and source not in state.triggered
        if first_sight and ingested_at is not None:
            since = ingested_at(source)
            if since is None:  # never ingested, even if empty: its (empty, typed) tables are due
                new_state.triggered[source] = NEVER_INGESTED
            elif current.files and current.newest_change_ns < since * 1e9:
                new_state.triggered[source] = current.digest
                already.append(source)
        if current.digest == new_state.triggered.get(source, EMPTY_DIGEST):
            continue  # nothing new since the last trigger (or still empty)
        settled = (
            state.seen.get(source) == current.digest
            and now_ns - current.newest_mtime_ns >= min_age_s * 1e9
        )
        if not settled:
            waiting.append(source)
            continue
        changed[source] = current.files
        new_state.triggered[source] = current.digest
    return Observation(changed=changed, waiting=waiting, state=new_state, already_ingested=already)
