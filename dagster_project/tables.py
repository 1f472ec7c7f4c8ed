"""Tables that exist in every lake, even before anything wrote them (contract: CONTRACT.md, sec. 2).

Ingest assets write their tables even when nothing was landed (typed, zero rows). Tables written
downstream of the catalog (the studies' tables) may not exist yet when the catalog is built, for
example in a lake that has no study or whose study failed: ``ensure_tables`` gives each such table
an empty, typed part, so its catalog view exists (and the SQL views over it) and fills in as soon
as a study writes its own part. A domain declares such tables as ``TABLE_SCHEMAS`` in its
``defs.py``. Pure module (no Dagster import).
"""

from __future__ import annotations

import polars as pl

from dagster_project.lake import Lake

EMPTY_PART = "empty-schema"  # the part name of a table's empty, typed placeholder


def ensure_tables(lake: Lake, schemas: dict[str, dict[str, pl.DataType]]) -> list[str]:
    """Write an empty typed part for every table of ``schemas`` that has no Parquet yet."""
    created = [table for table in schemas if not lake.has_table(table)]
    if created:  # zero rows: nothing to audit (a suite may name columns only a study writes)
        with lake.transaction(audit=False) as tx:
            for table in created:
                tx.write_part(table, EMPTY_PART, pl.DataFrame(schema=schemas[table]))
    return created
