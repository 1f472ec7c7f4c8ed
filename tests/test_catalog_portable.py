"""The catalog opens in every DuckDB researchers use, wherever the lake is mounted (issue 21).

A lake is materialized with ``radlake materialize`` from real public files (300 NCI projects of
the NIH project_io subset, two PubMed MEDLINE exports, the pyradiomics brain1 NRRD image and
label), copied to another mount point, and the original deleted. The copy's catalog is then read:
by DuckDB 2.x in this process through ``radlake.connect()``, by ``radlake sql`` from an unrelated
working directory, by DuckDB 1.4 (Python, its own virtualenv) and by the DuckDB npm package.

References: the landed source files themselves (pandas, hashlib, the MEDLINE ``PMID-`` lines) for
what the views hold; DuckDB's documented storage number for the v1.0.0 format; and, for the older
clients, DuckDB 2.x's own answer on the same file (every view: row count and a digest of its rows
as DuckDB renders them).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest

import radlake
from dagster_project.catalog import CATALOG_STORAGE_NUMBER, storage_number
from tests.clients import node_digests, node_duckdb, python_digests, python_duckdb
from tests.clients.digests import digests
from tests.conftest import REPO, shared_path

BIN = Path(sys.executable).parent
NIH_ROWS = 300
MEDLINE = ("pubmed_result1.txt", "pubmed_result2.txt")
# DuckDB docs, "Storage Versions and Format": files in the v1.0.0 format carry storage number 64
# (written by v0.10.x-v1.1.x), which DuckDB 1.4 reads (versions 64-67) and 2.x reads.
DOCUMENTED_V1_0_0_STORAGE_NUMBER = 64


def _env(home: Path, dagster_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LAKE_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "LAKE_PSEUDONYM_KEY": "portable-catalog-test-secret",
        "RADLAKE_DEMO_STUDIES": "0",
        "GX_ANALYTICS_ENABLED": "false",
        "MPLBACKEND": "Agg",
    }


def radlake_cli(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = _env(home, home.parent / "dagster_home")
    command = [str(BIN / "radlake"), *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def moved(tmp_path_factory) -> dict:
    """A real lake materialized at mount_a, copied to mount_b; mount_a is gone."""
    root = tmp_path_factory.mktemp("portable")
    original = root / "mount_a" / "lakehouse"
    landing = original / "landing"
    grants = landing / "portfolio" / "grants" / "nci_projects.csv"
    grants.parent.mkdir(parents=True)
    with shared_path("funding", "nih", "project_io_NCI_CA_subset.csv").open() as source:
        grants.write_text("".join(itertools.islice(source, NIH_ROWS + 1)))  # header + rows
    (landing / "portfolio" / "publications").mkdir(parents=True)
    for name in MEDLINE:
        shutil.copy(
            shared_path("publications", "medline", name), landing / "portfolio" / "publications"
        )
    (landing / "imaging" / "C1").mkdir(parents=True)
    for name in ("brain1_image.nrrd", "brain1_label.nrrd"):
        shutil.copy(shared_path("pyradiomics", name), landing / "imaging" / "C1")

    # the cohorts group is left out: the shipped demo cohorts need the demo's clinical columns
    result = radlake_cli(
        "materialize", "--select", "not group:cohorts", "--log-level", "WARNING",
        home=original, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (original / "catalog.duckdb").exists()

    references = {
        "grants": pd.read_csv(grants),
        "pmids": {
            line.split("-", 1)[1].strip()
            for name in MEDLINE
            for line in (landing / "portfolio" / "publications" / name).read_text().splitlines()
            if line.startswith("PMID-")
        },
        "image_sha256": hashlib.sha256(
            (landing / "imaging/C1/brain1_image.nrrd").read_bytes()
        ).hexdigest(),
        "mask_sha256": hashlib.sha256(
            (landing / "imaging/C1/brain1_label.nrrd").read_bytes()
        ).hexdigest(),
    }
    copy = root / "mount_b" / "shared" / "lake_copy"
    shutil.copytree(original, copy, symlinks=True)
    shutil.rmtree(root / "mount_a")
    return {"home": copy, "original": original, "root": root, **references}


@pytest.fixture(scope="module")
def digests_duckdb2(moved) -> dict:
    with radlake.connect(moved["home"]) as con:
        return digests(con)


def test_moved_lake_answers_in_duckdb2_through_radlake_connect(moved, digests_duckdb2):
    assert not moved["original"].exists()
    with radlake.connect(moved["home"]) as con:
        count, amount, pubs = con.execute(
            "select count(*), sum(amount), sum(n_pubs) from grants"
        ).fetchone()
        nih = moved["grants"]
        assert (count, amount, pubs) == (len(nih), nih["total_cost"].sum(), nih["n_pubs"].sum())
        pmids = {row[0] for row in con.execute("select pmid from publications").fetchall()}
        assert pmids == moved["pmids"]
        assert con.execute("select image_sha256, mask_sha256 from cases").fetchall() == [
            (moved["image_sha256"], moved["mask_sha256"])
        ]
        assert (
            con.execute("select count(distinct feature) from radiomics_features").fetchone()[0] > 50
        )
        assert con.execute("select sum(n_cases) from dataset_inventory").fetchone()[0] == 1
        # no view remembers where the lake was built
        for (sql,) in con.execute("select sql from duckdb_views() where not internal").fetchall():
            assert str(moved["original"]) not in sql and "read_parquet('/" not in sql
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("create table scratch as select 1")
    # every table and every sql/ view that has its tables is there and answers
    expected = {"grants", "publications", "cases", "radiomics_features", "quarantine"}
    expected |= {"grants_by_fund_type", "publications_per_year", "dataset_inventory"}
    assert expected <= set(digests_duckdb2)


def test_catalog_is_written_in_the_pinned_v1_0_0_storage_format(moved):
    assert storage_number(moved["home"] / "catalog.duckdb") == DOCUMENTED_V1_0_0_STORAGE_NUMBER
    assert CATALOG_STORAGE_NUMBER == DOCUMENTED_V1_0_0_STORAGE_NUMBER


def test_moved_lake_answers_in_duckdb_1_4(moved, digests_duckdb2, tmp_path):
    python = python_duckdb()
    # the documented step (SET file_search_path) from an unrelated directory ...
    answer = python_digests(python, moved["home"], cwd=tmp_path)
    assert answer["duckdb"].startswith("1.4.")
    assert answer["views"] == digests_duckdb2
    # ... or no step at all from inside the lake home (the DuckDB CLI's `cd lake && duckdb ...`)
    assert python_digests(python, moved["home"], cwd=moved["home"], from_cwd=True) == answer


@pytest.mark.npm
def test_moved_lake_answers_in_the_duckdb_npm_package(moved, digests_duckdb2, tmp_path):
    answer = node_digests(node_duckdb(), moved["home"], cwd=tmp_path)
    assert answer["duckdb"].startswith("v1.")
    assert answer["views"] == digests_duckdb2


def test_radlake_sql_from_another_directory_reads_the_lake_not_the_cwd(moved, tmp_path):
    # a decoy: the working directory has a lake/grants of its own that must not be read
    decoy = tmp_path / "lake" / "grants"
    decoy.mkdir(parents=True)
    pl.DataFrame({"grant_id": ["decoy"], "amount": [1.0]}).write_parquet(decoy / "grants.parquet")
    query = tmp_path / "queries" / "nci.sql"
    query.parent.mkdir()
    query.write_text("select count(*) as n_grants, sum(n_pubs) as n_pubs from grants;\n")
    result = radlake_cli(
        "sql", "queries/nci.sql", "--csv", "out.csv", home=moved["home"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    answer = pl.read_csv(tmp_path / "out.csv")  # relative output paths land in the cwd
    nih = moved["grants"]
    assert answer.row(0) == (len(nih), nih["n_pubs"].sum())
    result = radlake_cli(
        "sql", "select pmid from publications order by 1", home=moved["home"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert all(pmid in result.stdout for pmid in moved["pmids"])
