"""The DuckDB catalog: one view per lake table plus every SQL file in sql/, rebuilt atomically.

Parquet is the truth; ``catalog.duckdb`` only holds views. It is written by exactly one asset into a
temporary file beside it, checkpointed, closed and then ``os.replace``d onto ``catalog.duckdb``: a
reader that has the old file open keeps reading the old inode, a new reader opens the new file,
nobody waits on a lock. Pure module (no Dagster import).

Portable by construction:
- **Storage version pinned** (``CATALOG_STORAGE_VERSION``): the file is written in DuckDB's v1.0.0
  storage format (storage number 64), which DuckDB 0.10 and every later 1.x and 2.x opens, whatever DuckDB
  writes it; ``build_catalog`` refuses to publish a file whose header says otherwise.
- **Relative paths**: table views read ``lake/<table>/*.parquet`` relative to the lake home, which
  DuckDB resolves against its ``file_search_path`` setting (else the working directory). A moved or
  re-mounted lake needs one statement, ``SET file_search_path = '<lake home>'`` (or opening the
  catalog from inside the lake home); ``open_catalog`` / ``radlake.connect()`` do it for you.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from dagster_project.lake import Lake

SQL_DIR = Path(os.environ.get("RADLAKE_SQL_DIR", Path(__file__).resolve().parents[1] / "sql"))
SQL_LAYERS = ("views", "cohorts", "portfolio")
_VIEW_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# DuckDB's storage_compatibility_version for catalog.duckdb, and the storage number it writes
# (DuckDB docs, "Storage Versions and Format": v0.10.x-v1.1.x write 64; 1.4 reads 64-67).
CATALOG_STORAGE_VERSION = "v1.0.0"
CATALOG_STORAGE_NUMBER = 64


@dataclass
class CatalogReport:
    path: Path
    table_views: list[str] = field(default_factory=list)
    sql_views: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # view -> one-line error


def sql_roots(lake: Lake | None = None, sql_dir: Path = SQL_DIR) -> list[Path]:
    """The SQL folders of a lake: the repository's ``sql/``, then the group's own
    ``LAKE_HOME/sql/`` (cohorts, views and portfolio queries of this lake only)."""
    return [sql_dir] + ([lake.home / "sql"] if lake is not None else [])


def sql_files(
    sql_dir: Path | list[Path] = SQL_DIR, layers: tuple[str, ...] = SQL_LAYERS
) -> dict[str, Path]:
    """View name (file stem) -> SQL file, over ``<root>/<layer>/*.sql`` of each root. Stems are
    unique within a root; a later root's file replaces an earlier one of the same name (a lake's
    own ``sql/`` can redefine a shipped view)."""
    found: dict[str, Path] = {}
    for root in [sql_dir] if isinstance(sql_dir, Path) else sql_dir:
        own: dict[str, Path] = {}
        for layer in layers:
            for path in sorted((root / layer).glob("*.sql")):
                name = path.stem
                if not _VIEW_NAME.match(name):
                    raise ValueError(
                        f"{path}: SQL file names must be lowercase snake_case (view names)"
                    )
                if name in own:
                    raise ValueError(f"{path}: view name {name!r} already defined by {own[name]}")
                own[name] = path
        found.update(own)
    return found


def read_select(path: Path) -> str:
    """The SELECT of a SQL file, without a trailing semicolon (a view body)."""
    text = path.read_text(encoding="utf-8").strip()
    return text[:-1].rstrip() if text.endswith(";") else text


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def table_view_sql(lake: Lake, table: str) -> str:
    """A view over the table's Parquet, its glob relative to the lake home (see module doc)."""
    glob = Path(lake.table_glob(table)).relative_to(lake.home).as_posix()
    return (
        f"create or replace view {quote_ident(table)} as "
        f"select * from read_parquet({quote_literal(glob)}, union_by_name = true)"
    )


def search_path_sql(home: Path) -> str:
    """The one statement that points a DuckDB session's relative paths at a lake home."""
    if "," in str(home):  # file_search_path is a comma-separated list
        raise ValueError(
            f"{home}: a lake home path cannot contain a comma (DuckDB file_search_path)"
        )
    return f"set file_search_path = {quote_literal(str(home))}"


def storage_number(path: Path) -> int:
    """The storage version number in a DuckDB file's main header (after checksum and b'DUCK')."""
    with open(path, "rb") as handle:
        header = handle.read(20)
    if header[8:12] != b"DUCK":
        raise ValueError(f"{path}: not a DuckDB database file")
    return int.from_bytes(header[12:20], "little")


def create_views(
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    sql_dir: Path | list[Path] | None = None,
    layers: tuple[str, ...] = SQL_LAYERS,
    report: CatalogReport | None = None,
) -> CatalogReport:
    """Create the table views, then the SQL-file views (retrying in rounds so views may use views).
    Points the connection's relative paths at the lake home first (the table views' globs)."""
    report = report or CatalogReport(path=Path(":memory:"))
    con.execute(search_path_sql(lake.home))
    for table in lake.tables():
        con.execute(table_view_sql(lake, table))
        comment_view(con, table)
        report.table_views.append(table)
    roots = sql_roots(lake) if sql_dir is None else sql_dir
    pending = {name: read_select(path) for name, path in sql_files(roots, layers).items()}
    pending = {n: s for n, s in pending.items() if n not in report.table_views}
    while pending:
        errors: dict[str, str] = {}
        for name, select in pending.items():
            try:
                con.execute(f"create or replace view {quote_ident(name)} as {select}")
                header = leading_comment(select)
                if header:
                    con.execute(f"comment on view {quote_ident(name)} is {quote_literal(header)}")
                report.sql_views.append(name)
            except duckdb.Error as exc:
                errors[name] = str(exc).splitlines()[0]
        if len(errors) == len(pending):  # no progress: the rest reference what does not exist
            report.failed.update(errors)
            break
        pending = {n: pending[n] for n in errors}
    return report


def leading_comment(sql: str) -> str:
    """The ``--`` comment lines at the top of a SQL file, joined (its description)."""
    lines = []
    for line in sql.strip().splitlines():
        if not line.startswith("--"):
            break
        lines.append(line[2:].strip())
    return " ".join(lines)


def comment_view(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """The data dictionary (quality/dictionary.yaml) as COMMENT ON VIEW / COLUMN of a table view."""
    from quality.dictionary import column_description, table_description

    description = table_description(table)
    if description:
        con.execute(f"comment on view {quote_ident(table)} is {quote_literal(description)}")
    for (column,) in con.execute(
        "select column_name from duckdb_columns() where table_name = ?", [table]
    ).fetchall():
        text = column_description(table, column)
        if text:
            con.execute(
                f"comment on column {quote_ident(table)}.{quote_ident(column)} is "
                f"{quote_literal(text)}"
            )


def build_catalog(lake: Lake, sql_dir: Path | list[Path] | None = None) -> CatalogReport:
    """Rebuild ``catalog.duckdb`` in a temporary file and swap it in atomically."""
    target = lake.catalog_path
    tmp = lake.home / f".catalog-{uuid.uuid4().hex}.duckdb"
    report = CatalogReport(path=target)
    try:
        con = duckdb.connect(
            str(tmp), config={"storage_compatibility_version": CATALOG_STORAGE_VERSION}
        )
        try:
            create_views(con, lake, sql_dir, report=report)
            con.execute("checkpoint")
        finally:
            con.close()
        Path(f"{tmp}.wal").unlink(missing_ok=True)
        written = storage_number(tmp)
        if written != CATALOG_STORAGE_NUMBER:  # a DuckDB upgrade must not silently raise it
            raise RuntimeError(
                f"catalog written with DuckDB storage number {written}, expected "
                f"{CATALOG_STORAGE_NUMBER} ({CATALOG_STORAGE_VERSION}): older clients could not open it"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def lake_connection(
    lake: Lake, sql_dir: Path | list[Path] | None = None, with_sql_views: bool = True
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB over the lake's current Parquet (for assets that run SQL): no catalog lock."""
    con = duckdb.connect(":memory:")
    create_views(con, lake, sql_dir, layers=SQL_LAYERS if with_sql_views else ())
    return con


def open_catalog(lake: Lake) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the catalog, its relative paths resolved from the lake home
    (raises FileNotFoundError when there is none yet)."""
    search_path = search_path_sql(lake.home)
    if not lake.catalog_path.exists():
        raise FileNotFoundError(
            f"no catalog at {lake.catalog_path}: run `make demo` or materialize the `catalog` asset"
        )
    con = duckdb.connect(str(lake.catalog_path), read_only=True)
    con.execute(search_path)
    return con


def referenced(sql: str, names: Iterable[str]) -> list[str]:
    """Which of ``names`` the SQL reads (after ``from`` or ``join``)."""
    return [
        n
        for n in names
        if re.search(rf"\b(?:from|join)\s+{re.escape(n)}\b", sql, flags=re.IGNORECASE)
    ]


def explain_sql_error(
    con: duckdb.DuckDBPyConnection, source: str, sql: str, error: Exception
) -> str:
    """One line for a SQL file that cannot run on this lake: the file, DuckDB's first line (it
    names the missing table or column), and what the tables the SQL reads do have."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    views = {
        row[0]: row[1]
        for row in con.execute(
            "select view_name, sql from duckdb_views() where not internal"
        ).fetchall()
    }
    read = referenced(sql, sorted(views))
    have = []
    for name in read:
        columns = [row[0] for row in con.execute(f"describe {quote_ident(name)}").fetchall()]
        have.append(f"{name} has {', '.join(columns)}")
    if not read:
        have.append(f"the lake has {', '.join(sorted(views)) or 'no tables yet'}")
    return f"{source}: {first} ({'; '.join(have)})"
