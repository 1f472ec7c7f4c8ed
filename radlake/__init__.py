"""radlake for analysts: ``radlake.connect()`` opens a lake's catalog read-only from Python.
(The demo lake's generator, cohorts and study live in ``radlake.demo``.)

```python
import radlake

con = radlake.connect()                      # the catalog of $LAKE_HOME (default ./lakehouse)
con = radlake.connect("/mnt/lake")           # a lake home, or its catalog.duckdb
con.sql("select * from grants_per_year").df()
```
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from dagster_project.catalog import open_catalog
from dagster_project.lake import Lake

__all__ = ["connect"]


def connect(path: str | os.PathLike | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection to a lake's ``catalog.duckdb``, its views' relative Parquet
    paths resolved from that lake home (wherever the lake is mounted, whatever the working
    directory). ``path``: a lake home or a ``.duckdb`` catalog file; default ``LAKE_HOME``.
    Raises FileNotFoundError when the lake has no catalog yet."""
    if path is not None and Path(path).suffix == ".duckdb":
        lake = Lake.at(Path(path).expanduser().resolve().parent, create=False)
        if lake.catalog_path.name != Path(path).name:
            raise ValueError(f"{path}: a lake's catalog is named {lake.catalog_path.name}")
    else:
        lake = Lake.at(path, create=False)
    return open_catalog(lake)
