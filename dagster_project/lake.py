"""The lake on disk: LAKE_HOME resolution, folders, and the one publishing path.

Pure module (no Dagster import). Parquet under ``lake/<table>/*.parquet`` is the source of truth,
and every table version reaches it the same way, **write-audit-publish** (``Transaction``):

1. *write*: the new files are written to ``LAKE_HOME/staging/<transaction>/<table>/``;
2. *audit*: the lake's auditor (the tables' GX suites and value rules, ``quality.audit``) judges
   the lake as it would be after the publish; a failing version goes to
   ``rejected/<table>/<transaction>/`` with ``results.json`` and the previous version stays live;
3. *publish*: under the exclusive publish lock, the staged files are renamed into place (the
   replaced ``<table>.parquet`` optionally kept under ``_history/``), parts deleted, and a manifest
   written (``lake/<table>/_manifest.json`` + ``_manifests/<version>.json``). Related tables are
   one transaction: audited together, published together. A publish killed half-way is finished
   by the next one from its journal.

``Lake.write_table`` / ``write_part`` / ``delete_part`` are one-table transactions. Writers of the
same table take its lock (``dagster_project.locks``: ``flock``, released when a process dies);
``read_table`` holds the shared publish lock while it reads, raw globs (DuckDB) need no lock.

``HashCache`` remembers file sha256s across runs (``state/file_hashes.parquet``, no paths).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from dagster_project.locks import file_lock, locks
from dagster_project.manifest import (
    MANIFEST,
    MANIFESTS_DIR,
    build_manifest,
    file_sha256,
    read_manifest,
    require_regular,
    write_file_atomic,
    write_json_atomic,
)

__all__ = ["AuditFailed", "HashCache", "Lake", "Transaction", "file_sha256", "iter_files"]

LAKE_SUBDIRS = ("landing", "studies", "params", "lake", "models", "reports")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")


def lake_home(path: str | os.PathLike | None = None) -> Path:
    """LAKE_HOME: an explicit path, else the LAKE_HOME variable, else ./lakehouse (absolute)."""
    raw = path if path is not None else os.environ.get("LAKE_HOME") or "lakehouse"
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class Lake:
    """Paths of one lake home. Construct with ``Lake.at()`` to honour LAKE_HOME."""

    home: Path
    auditor: Auditor | None = field(default=None, compare=False, repr=False)

    @classmethod
    def at(
        cls,
        path: str | os.PathLike | None = None,
        create: bool = True,
        auditor: Auditor | None = None,
    ) -> Lake:
        lake = cls(lake_home(path), auditor)
        if create:
            lake.ensure()
        return lake

    def ensure(self) -> None:
        for sub in LAKE_SUBDIRS:
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (self.home / ".tmp").mkdir(exist_ok=True)

    # folders -----------------------------------------------------------------------------
    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def lake_dir(self) -> Path:
        return self.home / "lake"

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.duckdb"

    @property
    def studies_dir(self) -> Path:
        return self.home / "studies"

    @property
    def params_dir(self) -> Path:
        return self.home / "params"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def tmp_dir(self) -> Path:
        return self.home / ".tmp"

    @property
    def state_dir(self) -> Path:
        """Private bookkeeping of assets (e.g. incremental-scan indexes); not a lake table."""
        path = self.home / "state"
        path.mkdir(exist_ok=True)
        return path

    def table_dir(self, table: str) -> Path:
        _check_name(table)
        return self.lake_dir / table

    def table_glob(self, table: str) -> str:
        return str(self.table_dir(table) / "*.parquet")

    def table_files(self, table: str) -> list[Path]:
        folder = self.table_dir(table)
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    def has_table(self, table: str) -> bool:
        return bool(self.table_files(table))

    def tables(self) -> list[str]:
        if not self.lake_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.lake_dir.iterdir()
            if p.is_dir() and _NAME.match(p.name) and any(p.glob("*.parquet"))
        )

    def relative_to_landing(self, path: str | os.PathLike) -> str:
        """Path relative to ``landing/`` (never absolute: absolute paths can carry identifiers)."""
        return Path(os.path.relpath(Path(path).resolve(), self.landing.resolve())).as_posix()

    # writes: every one goes through a Transaction (stage, audit, publish) ---------------------
    def transaction(
        self, lock: Iterable[str] = (), run_id: str | None = None, audit: bool = True
    ) -> Transaction:
        """Stage writes, audit them, publish them together (see ``Transaction``)."""
        return Transaction(self, lock=tuple(lock), run_id=run_id, audit=audit)

    def write_table(self, table: str, frame: pl.DataFrame, keep_history: bool = False) -> Path:
        """Replace ``lake/<table>/<table>.parquet`` (staged, audited, published). With
        ``keep_history`` the previous file is kept under ``_history/`` first."""
        with self.transaction() as tx:
            tx.write_table(table, frame, keep_history=keep_history)
        return self.table_dir(table) / f"{table}.parquet"

    def write_part(self, table: str, part: str, frame: pl.DataFrame) -> Path:
        """Write (or replace) one part of a table made of parts (staged, audited, published)."""
        with self.transaction() as tx:
            tx.write_part(table, part, frame)
        return self.table_dir(table) / f"{part}.parquet"

    def delete_part(self, table: str, part: str) -> None:
        with self.transaction() as tx:
            tx.delete_part(table, part)

    def write_private(self, path: Path, frame: pl.DataFrame) -> Path:
        """Private bookkeeping under ``state/`` (not a table, no audit): 0600, temp + rename."""

        def write(handle) -> None:
            frame.write_parquet(handle, compression="zstd")

        return write_file_atomic(path, write)

    def lock(self, *tables: str, timeout: float | None = None):
        """Exclusive writer locks on ``tables`` (sorted; re-entrant in one process)."""
        return locks([self.lock_path(f"table-{t}") for t in tables], timeout=timeout)

    def lock_path(self, name: str) -> Path:
        return self.home / ".locks" / f"{name}.lock"

    # checkpoints: work in progress of a long asset, kept outside lake/ until it is published ----
    def checkpoint_dir(self, table: str) -> Path:
        _check_name(table)
        return self.home / "staging" / "checkpoints" / table

    def write_checkpoint(self, table: str, part: str, frame: pl.DataFrame) -> Path:
        if not _PART.match(part):
            raise ValueError(f"part name {part!r} for table {table!r} must match {_PART.pattern}")
        target = self.checkpoint_dir(table) / f"{part}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(frame, target, self.tmp_dir)
        return target

    def checkpoint_files(self, table: str) -> list[Path]:
        folder = self.checkpoint_dir(table)
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    # reads -------------------------------------------------------------------------------------
    def read_table(self, table: str) -> pl.DataFrame:
        """The current table (union of its parts); an empty frame when nothing was written.
        Holds the shared publish lock while reading, so a publish is seen whole or not at all."""
        with self._reading():
            files = self.table_files(table)
            if not files:
                return pl.DataFrame()
            return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")

    @contextlib.contextmanager
    def _reading(self):
        """The shared publish lock, or none on a lake this process cannot write (read-only)."""
        lock = file_lock(self.lock_path("publish"), shared=True)
        try:
            lock.__enter__()
        except OSError:
            yield
            return
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    def recover(self) -> list[str]:
        """Finish publishes a killed process left half done (see ``Transaction``)."""
        with file_lock(self.lock_path("publish")):
            return recover(self)

    def scan_table(self, table: str) -> pl.LazyFrame:
        """``read_table`` as a lazy frame (nothing read until collected)."""
        files = self.table_files(table)
        if not files:
            return pl.LazyFrame()
        return pl.concat([pl.scan_parquet(f) for f in files], how="diagonal_relaxed")

    def history(self, table: str) -> list[Path]:
        folder = self.table_dir(table) / "_history"
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    def manifest(self, table: str) -> dict | None:
        """The live version's manifest (``lake/<table>/_manifest.json``), None before any publish."""
        return read_manifest(self.table_dir(table))

    def rejected_dir(self, table: str) -> Path:
        return self.home / "rejected" / table


class AuditFailed(RuntimeError):
    """A staged table version failed its blocking checks; it was kept under ``rejected/``."""

    def __init__(self, results: dict[str, dict], kept: dict[str, Path]):
        self.results, self.kept = results, kept
        lines = []
        for table, result in results.items():
            if not result.get("passed", True):
                failed = "; ".join(result.get("failed", [])) or "see results.json"
                lines.append(f"{table}: {failed} (kept in {kept.get(table)})")
        super().__init__(
            "write-audit-publish: staged version failed its checks, the previous version stays "
            "live: " + " | ".join(lines)
        )


@dataclass
class _Staged:
    writes: dict[str, Path]  # file name in lake/<table>/ -> staged file
    deletes: set[str]
    keep_history: bool = False


# an auditor judges staged tables: (view of the lake as it would be, tables) -> {table: result};
# a result is {"passed": bool, "failed": [str], ...}; a non-passing one blocks the publish
Auditor = Callable[["Lake", list[str]], dict[str, dict]]


class StagedView(Lake):
    """The lake as it will look once a transaction is published (reads only)."""

    def __init__(self, lake: Lake, staged: dict[str, _Staged]):
        object.__setattr__(self, "home", lake.home)
        object.__setattr__(self, "auditor", None)
        object.__setattr__(self, "_staged", staged)

    def table_files(self, table: str) -> list[Path]:
        staged = self._staged.get(table)
        live = {p.name: p for p in Lake.table_files(self, table)}
        if staged is None:
            return sorted(live.values())
        for name in staged.deletes:
            live.pop(name, None)
        live.update(staged.writes)
        return [live[name] for name in sorted(live)]

    def read_table(self, table: str) -> pl.DataFrame:
        files = self.table_files(table)
        if not files:
            return pl.DataFrame()
        return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


class Transaction:
    """Write-audit-publish for one or more tables, published together.

    Writes go to ``LAKE_HOME/staging/<id>/<table>/``; on leaving the ``with`` block without an
    error the lake's auditor (the tables' suites, see ``quality.audit``) judges the staged view;
    a passing set is published under the exclusive publish lock (a journal makes a publish that
    is killed half-way finish on the next publish), each table getting a new manifest; a failing
    set is moved to ``rejected/<table>/<id>/`` with ``results.json`` and ``AuditFailed`` names the
    failed expectations, the previous version staying live. An error inside the block discards
    the staging. ``lock`` tables are locked from the start (a read-modify-write); every written
    table is locked at the latest for the publish.
    """

    def __init__(
        self, lake: Lake, lock: tuple[str, ...] = (), run_id: str | None = None, audit: bool = True
    ):
        self.lake, self.audit = lake, audit
        self.run_id = run_id or os.environ.get("DAGSTER_RUN_ID") or "manual"
        self.id = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
        self.dir = lake.home / "staging" / self.id
        self.staged: dict[str, _Staged] = {}
        self.results: dict[str, dict] = {}
        self.manifests: dict[str, dict] = {}
        self._lock_tables = lock
        self._published = False
        self._stack = contextlib.ExitStack()

    # context ------------------------------------------------------------------------------------
    def __enter__(self) -> Transaction:
        if self._lock_tables:
            self._stack.enter_context(self.lake.lock(*self._lock_tables))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.publish()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._stack.close()

    # staging ------------------------------------------------------------------------------------
    def _table(self, table: str) -> _Staged:
        _check_name(table)
        return self.staged.setdefault(table, _Staged(writes={}, deletes=set()))

    def _stage(self, table: str, name: str, frame: pl.DataFrame) -> Path:
        target = self.dir / table / name
        target.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(target, compression="zstd", statistics=True)
        staged = self._table(table)
        staged.writes[name] = target
        staged.deletes.discard(name)
        return target

    def write_table(self, table: str, frame: pl.DataFrame, keep_history: bool = False) -> Path:
        self._table(table).keep_history |= keep_history
        return self._stage(table, f"{table}.parquet", frame)

    def write_part(self, table: str, part: str, frame: pl.DataFrame) -> Path:
        if not _PART.match(part):
            raise ValueError(f"part name {part!r} for table {table!r} must match {_PART.pattern}")
        return self._stage(table, f"{part}.parquet", frame)

    def delete_part(self, table: str, part: str) -> None:
        staged = self._table(table)
        staged.writes.pop(f"{part}.parquet", None)
        staged.deletes.add(f"{part}.parquet")

    def view(self) -> StagedView:
        return StagedView(self.lake, self.staged)

    # audit + publish ----------------------------------------------------------------------------
    def publish(self) -> dict[str, dict]:
        """Audit the staged tables, then publish them (or keep them under rejected/ and raise)."""
        if self._published or not self.staged:
            return self.manifests
        tables = sorted(self.staged)
        with self.lake.lock(*tables):
            auditor = self.lake.auditor if self.audit else None
            self.results = auditor(self.view(), tables) if auditor else {}
            if not all(r.get("passed", True) for r in self.results.values()):
                raise AuditFailed(self.results, self._reject())
            with file_lock(self.lake.lock_path("publish")):
                recover(self.lake)
                journal = self._journal()
                _apply(journal)
                (self.dir / JOURNAL).unlink(missing_ok=True)
        self._published = True
        return self.manifests

    def _reject(self) -> dict[str, Path]:
        kept = {}
        for table, staged in self.staged.items():
            dest = self.lake.rejected_dir(table) / f"{self.id}-{_safe(self.run_id)}"
            dest.mkdir(parents=True, exist_ok=True)
            for name, path in staged.writes.items():
                os.replace(path, dest / name)
            write_json_atomic(
                dest / "results.json",
                {
                    "table": table,
                    "run_id": self.run_id,
                    "transaction": self.id,
                    "tables": sorted(self.staged),
                    "results": self.results,
                },
            )
            kept[table] = dest
        return kept

    def _journal(self) -> dict:
        """What the publish does, written down first: a killed publish is finished by the next."""
        moves, deletes, links, manifests = [], [], [], {}
        for table, staged in sorted(self.staged.items()):
            folder = self.lake.table_dir(table)
            folder.mkdir(parents=True, exist_ok=True)
            current = folder / f"{table}.parquet"
            if staged.keep_history and current.exists() and current.name in staged.writes:
                stamp = datetime.fromtimestamp(current.stat().st_mtime, UTC)
                dest = folder / "_history" / f"{stamp.strftime('%Y%m%dT%H%M%S%fZ')}.parquet"
                links.append([str(current), str(dest)])
            for name, path in sorted(staged.writes.items()):
                moves.append([str(path), str(folder / name)])
            deletes += [str(folder / name) for name in sorted(staged.deletes)]
            files = self.view().table_files(table)
            previous = read_manifest(folder)
            audit = self.results.get(table, {})
            manifest = build_manifest(table, files, previous, self.run_id, audit)
            # the staged files keep their mtime through the rename: name them as they will be
            manifests[table] = manifest
        self.manifests = manifests
        journal = {
            "moves": moves,
            "deletes": deletes,
            "links": links,
            "manifests": manifests,
            "lake": str(self.lake.lake_dir),
        }
        write_json_atomic(self.dir / JOURNAL, journal)
        return journal


JOURNAL = "PUBLISHING.json"


def _apply(journal: dict) -> None:
    """Carry out a publish journal; every step is idempotent (re-run after a crash)."""
    for current, dest in journal["links"]:
        current, dest = Path(current), Path(dest)
        if current.exists() and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(current, dest)
    for source, dest in journal["moves"]:
        if Path(source).exists():
            os.replace(source, dest)
    for dest in journal["deletes"]:
        Path(dest).unlink(missing_ok=True)
    lake_dir = Path(journal["lake"])
    for table, manifest in journal["manifests"].items():
        folder = lake_dir / table
        write_json_atomic(folder / MANIFESTS_DIR / f"{manifest['version']}.json", manifest)
        write_json_atomic(folder / MANIFEST, manifest)
    _fsync_dirs({Path(d).parent for _, d in journal["moves"]} | {lake_dir})


def recover(lake: Lake) -> list[str]:
    """Finish publishes a killed process left half done; drop abandoned staging (caller holds
    the publish lock). Returns the transactions finished."""
    root = lake.home / "staging"
    finished = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name == "checkpoints" or not folder.is_dir():
            continue
        journal = folder / JOURNAL
        if journal.exists():
            try:
                _apply(json.loads(journal.read_text(encoding="utf-8")))
                finished.append(folder.name)
            except (OSError, ValueError):
                continue
            shutil.rmtree(folder, ignore_errors=True)
        elif time.time() - folder.stat().st_mtime > STALE_STAGING_S:
            shutil.rmtree(folder, ignore_errors=True)  # a run killed before its publish
    return finished


STALE_STAGING_S = 24 * 3600


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64]


def _fsync_dirs(folders: set[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _check_name(table: str) -> None:
    if not _NAME.match(table):
        raise ValueError(f"table name {table!r} must be lowercase snake_case")


def _write_atomic(frame: pl.DataFrame, target: Path, tmp_dir: Path) -> None:
    def write(handle) -> None:
        frame.write_parquet(handle, compression="zstd", statistics=True)

    write_file_atomic(target, write, mode=0o644)


HASH_CACHE_FILE = "file_hashes.parquet"  # under Lake.state_dir
_HASH_KEY = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
_HASH_CACHE_SCHEMA = {
    "st_dev": pl.UInt64,
    "st_ino": pl.UInt64,
    "st_size": pl.Int64,
    "st_mtime_ns": pl.Int64,
    "st_ctime_ns": pl.Int64,
    "sha256": pl.Binary,  # the 32-byte digest
}
_FileKey = tuple[int, int, int, int, int]


def _file_key(stat: os.stat_result) -> _FileKey:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class HashCache:
    """``file_sha256`` remembered across runs, so a re-run does not re-read unchanged files.

    An entry is keyed by the file's stat identity ``(st_dev, st_ino, st_size, st_mtime_ns,
    st_ctime_ns)``, never by its path: paths under landing/ can carry patient identifiers, so the
    cache file holds numbers and digests only. Any write to a file sets its ctime (the kernel
    does; ``os.utime`` cannot put it back), so a rewritten file misses even when its size and mtime
    were restored; a file on another device or inode (copied, re-mounted) simply misses too.

    Two races are closed by not remembering a digest: when the file's identity changed while it
    was read (stat before and after), and when the file changed less than ``racy_window_ns``
    before hashing started. On a file system with coarse timestamps (1 s on ext3 and some NFS, a
    clock tick elsewhere) a second write within the same tick would leave the identity as it was
    and the stale digest would be trusted for good ("racy git"); such a fresh file is hashed again
    on the next run instead, when it has aged.

    ``save`` keeps only the entries used since ``load`` (hits and new digests), so files that are
    no longer landed drop out and the cache never outgrows what one run hashes. That makes a cache
    file private to one consumer (the ``cases`` asset). A missing, corrupt or unreadable cache file
    gives an empty cache (``load_error`` says why): a cache can cost a re-hash, never a run.
    """

    RACY_WINDOW_NS = 2_000_000_000

    def __init__(self, racy_window_ns: int = RACY_WINDOW_NS) -> None:
        self.racy_window_ns = racy_window_ns
        self.hits = 0
        self.misses = 0
        self.load_error: str | None = None
        self._known: dict[_FileKey, bytes] = {}  # loaded from the cache file
        self._used: dict[_FileKey, bytes] = {}  # looked up or hashed since load: what save keeps

    def __len__(self) -> int:
        return len(self._used)

    @classmethod
    def load(cls, path: str | os.PathLike, racy_window_ns: int = RACY_WINDOW_NS) -> HashCache:
        """The cache saved at ``path``; empty when there is none or it cannot be read."""
        cache = cls(racy_window_ns=racy_window_ns)
        path = Path(path)
        if not path.exists():
            return cache
        try:
            frame = pl.read_parquet(path)
            if dict(frame.schema) != _HASH_CACHE_SCHEMA:
                raise ValueError(f"unexpected columns {dict(frame.schema)}")
            frame = frame.drop_nulls().filter(pl.col("sha256").bin.size() == 32)
            keys = zip(*(frame[name].to_list() for name in _HASH_KEY), strict=True)
            cache._known = dict(zip(keys, frame["sha256"].to_list(), strict=True))
        except Exception as exc:  # a damaged cache only costs hashing everything again
            cache.load_error = f"{type(exc).__name__}: {exc}"[:500]
            logging.getLogger(__name__).warning(
                "file hash cache %s ignored, every file is hashed again: %s",
                path.name,
                cache.load_error,
            )
        return cache

    def sha256(self, path: str | os.PathLike) -> str:
        """``file_sha256(path)``, without reading the file when its identity is known."""
        key = _file_key(require_regular(path))
        digest = self._used.get(key) or self._known.get(key)
        if digest is not None:
            self.hits += 1
            self._used[key] = digest
            return digest.hex()
        self.misses += 1
        started = time.time_ns()
        with open(path, "rb") as handle:
            before = _file_key(os.fstat(handle.fileno()))  # the file really read (not ``key``)
            digest = hashlib.file_digest(handle, "sha256").digest()
            after = _file_key(os.fstat(handle.fileno()))
        if before == after and started - before[4] >= self.racy_window_ns:
            self._used[before] = digest
        return digest.hex()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the entries used since ``load`` to ``path`` (0600, temp file + rename)."""
        path = Path(path)
        columns = list(zip(*self._used, strict=True)) or [() for _ in _HASH_KEY]
        frame = pl.DataFrame(
            {
                **{name: list(values) for name, values in zip(_HASH_KEY, columns, strict=True)},
                "sha256": list(self._used.values()),
            },
            schema=_HASH_CACHE_SCHEMA,
        )

        def write(handle) -> None:
            frame.write_parquet(handle, compression="zstd")

        write_file_atomic(path, write)
        return path


def iter_files(root: Path, suffixes: Iterable[str] | None = None) -> list[Path]:
    """Regular files below ``root`` (sorted, hidden files skipped), optionally by suffix."""
    if not root.is_dir():
        return []
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None
    out = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if wanted is None or path.name.lower().endswith(wanted):
            out.append(path)
    return out
