"""The lake on disk: LAKE_HOME resolution, folders, and atomic Parquet table writes.

Pure module (no Dagster import). Parquet under ``lake/<table>/`` is the source of truth:
- ``replace`` writes the whole table as ``lake/<table>/<table>.parquet`` via temp file + rename,
  so a reader sees the old file or the new one, never a torn one; the previous version is kept
  under ``lake/<table>/_history/<version>.parquet`` (outside the table's glob) when asked.
- ``write_part`` writes one named part ``lake/<table>/<part>.parquet`` (same atomic rename);
  tables made of parts (quarantine, incremental extraction chunks) are the union of their parts.
Readers glob ``lake/<table>/*.parquet`` and never take a lock.
"""

from __future__ import annotations

import os
import re
import tempfile
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
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
