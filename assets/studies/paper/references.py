"""Grants that fund a study and papers that report it (study YAML ``funding:`` and
``publications:``), as lake table ``study_references`` (study, kind, reference); the views
``grant_outputs``, ``paper_provenance`` and ``study_funding`` (sql/views/) join it to grants,
publications, model versions and splits. Pure, no Dagster."""

from __future__ import annotations

from typing import Any

import polars as pl

SCHEMA = {"study": pl.String, "kind": pl.String, "reference": pl.String}


def reference_rows(spec: Any) -> pl.DataFrame:
    rows = [{"study": spec.name, "kind": "grant", "reference": g} for g in spec.funding]
    rows += [{"study": spec.name, "kind": "publication", "reference": p} for p in spec.publications]
    return pl.DataFrame(rows, schema=SCHEMA)


def resolve_references(
    table: pl.DataFrame, grants: pl.DataFrame, publications: pl.DataFrame
) -> pl.DataFrame:
    """``table`` with ``found`` (the grant id or the DOI/PMID is in the lake) and ``title``."""
    titles: dict[str, str] = {}
    if grants.height:
        titles |= {f"grant:{g}": t for g, t in grants.select("grant_id", "title").iter_rows()}
    if publications.height:
        for doi, pmid, title in publications.select("doi", "pmid", "title").iter_rows():
            if doi:
                titles[f"publication:{doi.lower()}"] = title
            if pmid:
                titles[f"publication:{pmid}"] = title
    keys = [f"{k}:{r}" for k, r in table.select("kind", "reference").iter_rows()]
    return table.with_columns(
        pl.Series("found", [k in titles for k in keys], dtype=pl.Boolean),
        pl.Series("title", [titles.get(k) for k in keys], dtype=pl.String),
    )
