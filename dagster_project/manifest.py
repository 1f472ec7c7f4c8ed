"""Table manifests: what exactly a published table version is, so a result can cite its data.

Every publish writes ``lake/<table>/_manifest.json`` (the live version) and keeps a copy under
``lake/<table>/_manifests/<version>.json`` (outside the table's ``*.parquet`` glob). A manifest
holds the version id, the files (name, bytes, rows, sha256), the row count, a content hash (sha256
of the sorted file digests), the code version (git commit when the code is a checkout, else the
package version), the versions of the libraries that wrote and checked it, the run that published
it and its audit results. Pure module (no Dagster import).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import subprocess
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "_manifest.json"
MANIFESTS_DIR = "_manifests"
LIBRARIES = (
    "polars",
    "pyarrow",
    "duckdb",
    "numpy",
    "great_expectations",
    "pyradiomics",
    "pyradiomics-bhklab",  # the distribution this project installs
    "SimpleITK",
    "pydicom",
    "scikit-learn",
    "dagster",
)
REPO = Path(__file__).resolve().parents[1]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes (read in chunks, never whole into memory). A FIFO, socket or
    device raises OSError instead of blocking or reading for ever."""
    require_regular(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def require_regular(path: str | os.PathLike) -> os.stat_result:
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"{Path(path).name} is not a regular file (a FIFO, socket or device)")
    return info


@functools.cache
def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that write, extract and check lake tables."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@functools.cache
def code_version() -> str:
    """``git:<commit>[+dirty]`` of the checkout the code runs from, else ``radlake <version>``."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return f"git:{commit}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        try:
            return f"radlake {metadata.version('radlake')}"
        except metadata.PackageNotFoundError:
            return "unknown"


def parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def build_manifest(
    table: str,
    files: list[Path],
    previous: dict | None,
    run_id: str,
    audit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a table made of ``files``; digests of files unchanged since ``previous``
    (same name, size and mtime) are reused instead of read again."""
    known = {f["name"]: f for f in (previous or {}).get("files", [])}
    entries = []
    for path in sorted(files, key=lambda p: p.name):
        stat = path.stat()
        old = known.get(path.name)
        if old and old.get("bytes") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns:
            entries.append(old)
            continue
        entries.append(
            {
                "name": path.name,
                "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "rows": parquet_rows(path),
                "sha256": file_sha256(path),
            }
        )
    content = hashlib.sha256("".join(e["sha256"] for e in entries).encode()).hexdigest()
    published_at = datetime.now(UTC)
    return {
        "table": table,
        "version": f"{published_at.strftime('%Y%m%dT%H%M%S%fZ')}-{content[:12]}",
        "published_at": published_at.isoformat(),
        "run_id": run_id,
        "rows": sum(e["rows"] for e in entries),
        "content_sha256": content,
        "files": entries,
        "code_version": code_version(),
        "libraries": library_versions(),
        "previous_version": (previous or {}).get("version"),
        "previous_rows": (previous or {}).get("rows"),
        "audit": audit or {},
    }


def read_manifest(table_dir: Path) -> dict | None:
    path = table_dir / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def manifest_history(table_dir: Path) -> list[dict]:
    """Every published manifest of a table, oldest first."""
    folder = table_dir / MANIFESTS_DIR
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return out


def write_file_atomic(path: Path, write: Callable, mode: int = 0o600) -> Path:
    """The one way to replace a private file: ``write(handle)`` into a temp file beside ``path``
    (``mode``), fsync, rename. A killed writer leaves the previous file, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_json_atomic(path: Path, payload: Any) -> None:
    """JSON through ``write_file_atomic`` (readable by all: manifests are not secret)."""
    data = json.dumps(payload, indent=1, sort_keys=True, default=str).encode("utf-8")
    write_file_atomic(path, lambda handle: handle.write(data), 0o644)


def files_match(manifest: dict | None, files: list[Path]) -> bool:
    """True when ``files`` are exactly the manifest's (names, sizes, mtimes): it describes them."""
    if not manifest:
        return False
    want = {(f["name"], f["bytes"], f.get("mtime_ns")) for f in manifest.get("files", [])}
    have = set()
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            return False
        have.add((path.name, stat.st_size, stat.st_mtime_ns))
    return want == have
