"""The lake on disk: LAKE_HOME resolution, folders, and atomic Parquet table writes.

Pure module (no Dagster import). Parquet under ``lake/<table>/`` is the source of truth:
- ``replace`` writes the whole table as ``lake/<table>/<table>.parquet`` via temp file + rename,
  so a reader sees the old file or the new one, never a torn one; the previous version is kept
  under ``lake/<table>/_history/<version>.parquet`` (outside the table's glob) when asked.
- ``write_part`` writes one named part ``lake/<table>/<part>.parquet`` (same atomic rename);
  tables made of parts (quarantine, incremental extraction chunks) are the union of their parts.
Readers glob ``lake/<table>/*.parquet`` and never take a lock.

``HashCache`` remembers file sha256s across runs (``state/file_hashes.parquet``, no paths).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

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

    @classmethod
    def at(cls, path: str | os.PathLike | None = None, create: bool = True) -> Lake:
        lake = cls(lake_home(path))
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

    # writes ------------------------------------------------------------------------------
    def write_table(self, table: str, frame: pl.DataFrame, keep_history: bool = False) -> Path:
        """Replace the whole table atomically. With ``keep_history`` the old file is kept first."""
        target = self.table_dir(table) / f"{table}.parquet"
        if keep_history and target.exists():
            history = self.table_dir(table) / "_history"
            history.mkdir(parents=True, exist_ok=True)
            stamp = datetime.fromtimestamp(target.stat().st_mtime, UTC).strftime("%Y%m%dT%H%M%S%fZ")
            dest = history / f"{stamp}.parquet"
            if not dest.exists():
                os.link(target, dest) if _same_fs(target, history) else _copy_atomic(
                    target, dest, self.tmp_dir
                )
        _write_atomic(frame, target, self.tmp_dir)
        return target

    def write_part(self, table: str, part: str, frame: pl.DataFrame) -> Path:
        """Write (or replace) one part of a table made of parts, atomically."""
        if not _PART.match(part):
            raise ValueError(f"part name {part!r} for table {table!r} must match {_PART.pattern}")
        target = self.table_dir(table) / f"{part}.parquet"
        _write_atomic(frame, target, self.tmp_dir)
        return target

    def delete_part(self, table: str, part: str) -> None:
        (self.table_dir(table) / f"{part}.parquet").unlink(missing_ok=True)

    def read_table(self, table: str) -> pl.DataFrame:
        """The current table (union of its parts); an empty frame when nothing was written."""
        files = self.table_files(table)
        if not files:
            return pl.DataFrame()
        return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")

    def scan_table(self, table: str) -> pl.LazyFrame:
        """``read_table`` as a lazy frame (nothing read until collected)."""
        files = self.table_files(table)
        if not files:
            return pl.LazyFrame()
        return pl.concat([pl.scan_parquet(f) for f in files], how="diagonal_relaxed")

    def history(self, table: str) -> list[Path]:
        folder = self.table_dir(table) / "_history"
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def _check_name(table: str) -> None:
    if not _NAME.match(table):
        raise ValueError(f"table name {table!r} must be lowercase snake_case")


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def _write_atomic(frame: pl.DataFrame, target: Path, tmp_dir: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{target.stem}.{uuid.uuid4().hex}.parquet.tmp"
    try:
        frame.write_parquet(tmp, compression="zstd", statistics=True)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_atomic(source: Path, target: Path, tmp_dir: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=tmp_dir, delete=False) as out, open(source, "rb") as src:
        out.write(src.read())
    os.replace(out.name, target)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
        key = _file_key(os.stat(path))
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
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = list(zip(*self._used, strict=True)) or [() for _ in _HASH_KEY]
        frame = pl.DataFrame(
            {
                **{name: list(values) for name, values in zip(_HASH_KEY, columns, strict=True)},
                "sha256": list(self._used.values()),
            },
            schema=_HASH_CACHE_SCHEMA,
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as handle:
                frame.write_parquet(handle, compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
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
