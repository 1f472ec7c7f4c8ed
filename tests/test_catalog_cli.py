"""The DuckDB catalog (atomic swap, readers never blocked) and `radlake sql` from a shell."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

import radlake
from dagster_project.catalog import (
    build_catalog,
    lake_connection,
    open_catalog,
    search_path_sql,
    sql_files,
)

REPO = Path(__file__).resolve().parents[1]


def radlake_cli(*args: str, home: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "LAKE_HOME": str(home)}
    command = [sys.executable, "-m", "dagster_project.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.fixture
def small_lake(lake):
    lake.write_table(
        "clinical",
        pl.DataFrame(
            {
                "patient_key": ["k1", "k2", "k3"],
                "center_id": ["C1", "C1", "C2"],
                "age": [61, 47, 70],
            }
        ),
    )
    lake.write_part(
        "quarantine",
        "clinical",
        pl.DataFrame({"source_path": ["clinical/a.csv"], "reason": ["missing_id: row 4"]}),
    )
    return lake


def test_catalog_has_a_view_per_table_and_sql_file(small_lake):
    report = build_catalog(small_lake)
    assert {"clinical", "quarantine"} <= set(report.table_views)
    with open_catalog(small_lake) as con:
        assert con.execute("select count(*) from clinical").fetchall()[0][0] == 3
        views = {
            r[0]
            for r in con.execute(
                "select view_name from duckdb_views() where not internal"
            ).fetchall()
        }
    assert {"clinical", "quarantine"} <= views
    # every shipped SQL file that only needs present tables became a view; the others are reported
    assert set(report.sql_views) | set(report.failed) == set(sql_files()) - set(report.table_views)


def test_reader_holding_old_catalog_keeps_working_during_rebuild(small_lake):
    build_catalog(small_lake)
    reader = duckdb.connect(str(small_lake.catalog_path), read_only=True)
    reader.execute(search_path_sql(small_lake.home))
    assert reader.execute("select count(*) from clinical").fetchall()[0][0] == 3
    small_lake.write_table("grants", pl.DataFrame({"grant_id": ["81971612"], "amount": [550000.0]}))
    build_catalog(small_lake)  # swaps a new file in while the reader holds the old one
    assert reader.execute("select sum(age) from clinical").fetchall()[0][0] == 178
    reader.close()
    with open_catalog(small_lake) as fresh:
        assert fresh.execute("select count(*) from grants").fetchall()[0][0] == 1
    assert not list(small_lake.home.glob(".catalog-*"))


def test_lake_connection_reads_current_parquet_without_catalog(small_lake):
    con = lake_connection(small_lake)
    assert con.execute("select max(age) from clinical").fetchall()[0][0] == 70
    assert not small_lake.catalog_path.exists()


def test_radlake_sql_query_file_and_outputs(small_lake, tmp_path):
    build_catalog(small_lake)
    result = radlake_cli(
        "sql",
        "select center_id, count(*) n from clinical group by all order by 1",
        home=small_lake.home,
    )
    assert result.returncode == 0, result.stderr
    assert "C1" in result.stdout and "C2" in result.stdout and "center_id" in result.stdout
    query = tmp_path / "by_center.sql"
    query.write_text(
        "select center_id, avg(age) as mean_age\nfrom clinical\ngroup by all\norder by 1;\n"
    )
    out_csv = tmp_path / "out.csv"
    result = radlake_cli("sql", str(query), "--csv", str(out_csv), home=small_lake.home)
    assert result.returncode == 0, result.stderr
    assert pl.read_csv(out_csv)["mean_age"].to_list() == [54.0, 70.0]
    out_parquet = tmp_path / "out.parquet"
    result = radlake_cli(
        "sql", "select * from quarantine", "--parquet", str(out_parquet), home=small_lake.home
    )
    assert result.returncode == 0, result.stderr
    assert pl.read_parquet(out_parquet)["reason"].to_list() == ["missing_id: row 4"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("select * from no_such_table",), "CatalogException"),
        (("selec 1",), "ParserException"),
        (("create table x as select 1",), "read-only"),
        (("missing/file.sql",), "no such SQL file"),
    ],
)
def test_radlake_sql_errors_are_one_line(small_lake, args, expected):
    build_catalog(small_lake)
    result = radlake_cli("sql", *args, home=small_lake.home)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_radlake_sql_without_catalog(lake):
    result = radlake_cli("sql", "select 1", home=lake.home)
    assert result.returncode == 1
    assert "no catalog" in result.stderr and "make demo" in result.stderr
    assert "Traceback" not in result.stderr


def test_radlake_connect_is_read_only_from_any_directory(small_lake, tmp_path, monkeypatch):
    build_catalog(small_lake)
    monkeypatch.chdir(tmp_path)  # not the lake home: relative view paths must still resolve
    for target in (None, small_lake.home, small_lake.catalog_path, str(small_lake.home)):
        with radlake.connect(target) as con:  # None: LAKE_HOME (the fixture sets it)
            assert con.execute("select sum(age) from clinical").fetchone()[0] == 61 + 47 + 70
            with pytest.raises(duckdb.Error, match="read-only"):
                con.execute("create table scratch as select 1")


def test_radlake_connect_follows_a_moved_lake(small_lake, tmp_path):
    build_catalog(small_lake)
    moved = tmp_path / "elsewhere" / "lake"
    shutil.copytree(small_lake.home, moved)
    shutil.rmtree(small_lake.home)
    with radlake.connect(moved) as con:
        assert con.execute("select count(*) from clinical").fetchone()[0] == 3
        assert con.execute("select reason from quarantine").fetchall() == [("missing_id: row 4",)]


def test_radlake_connect_errors(lake, tmp_path):
    with pytest.raises(FileNotFoundError, match="no catalog"):
        radlake.connect(lake.home)
    with pytest.raises(ValueError, match="catalog.duckdb"):
        radlake.connect(tmp_path / "other.duckdb")
    with pytest.raises(ValueError, match="comma"):
        radlake.connect(tmp_path / "a,b")
