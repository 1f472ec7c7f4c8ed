"""The data dictionary (``quality/dictionary.yaml``): one description per lake table and column.

``table_description(table)`` and ``column_description(table, column)`` read it (cached); a column
the table does not list takes the ``_shared`` description of that name, then the table's
``_other`` entry (columns taken from what was landed, e.g. a group's clinical columns), else
nothing. Used by ``dagster_project.materialize`` (TableColumn descriptions in the Dagster UI) and
``dagster_project.catalog`` (COMMENT ON VIEW / COLUMN in catalog.duckdb). Pure module.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

DICTIONARY = Path(__file__).resolve().parent / "dictionary.yaml"


@cache
def _dictionary() -> dict:
    return yaml.safe_load(DICTIONARY.read_text(encoding="utf-8")) or {}


def table_description(table: str) -> str | None:
    return (_dictionary().get("tables", {}).get(table) or {}).get("description")


def column_description(table: str, column: str) -> str | None:
    data = _dictionary()
    columns = (data.get("tables", {}).get(table) or {}).get("columns") or {}
    return columns.get(column) or data.get("_shared", {}).get(column) or columns.get("_other")


def described_tables() -> list[str]:
    return sorted(_dictionary().get("tables", {}))
