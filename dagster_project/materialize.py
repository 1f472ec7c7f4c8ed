"""What every table asset returns: row counts, schema, a preview, the path and a content data version."""

import hashlib

import dagster as dg
import polars as pl

from dagster_project.lake import Lake

PREVIEW_ROWS = 5


def frame_version(frame: pl.DataFrame) -> str:
    """A content hash of a table (schema + rows): unchanged input -> same Dagster data version."""
    digest = hashlib.sha256(str(frame.schema).encode())
    if frame.height:
        digest.update(frame.hash_rows(seed=0).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _schema(frame: pl.DataFrame, table: str) -> dg.TableSchema:
    """Columns with their types and data-dictionary descriptions (quality/dictionary.yaml)."""
    from quality.dictionary import column_description

    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, str(dtype), description=column_description(table, name))
            for name, dtype in frame.schema.items()
        ]
    )


# pseudonyms stay out of Dagster's event log (which `radlake forget` does not rewrite)
KEY_COLUMNS = ("patient_key",)


def _preview(frame: pl.DataFrame) -> str:
    head = frame.head(PREVIEW_ROWS).drop(KEY_COLUMNS, strict=False)
    cols = head.columns[:12]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.select(cols).iter_rows():
        lines.append("| " + " | ".join(str(v)[:40] for v in row) + " |")
    return "\n".join(lines)


def table_result(
    lake: Lake,
    table: str,
    frame: pl.DataFrame,
    stats: dict | None = None,
    extra: dict | None = None,
) -> dg.MaterializeResult:
    """MaterializeResult for a table just written: ``stats`` holds landed/ingested/quarantined/merged."""
    metadata: dict = {
        "dagster/row_count": frame.height,
        "dagster/column_schema": _schema(frame, table),
        "path": dg.MetadataValue.path(str(lake.table_dir(table))),
        "preview": dg.MetadataValue.md(_preview(frame)) if frame.height else "empty",
    }
    for key, value in (stats or {}).items():
        if isinstance(value, bool | int | float | str):
            metadata[key] = value
        elif value is not None:
            metadata[key] = dg.MetadataValue.json(value)
    metadata.update(extra or {})
    return dg.MaterializeResult(
        metadata=metadata, data_version=dg.DataVersion(frame_version(frame))
    )


def removed_since_last_version(lake: Lake, table: str, frame: pl.DataFrame, key: str) -> int:
    """How many ``key`` values the table's live version has that ``frame`` (the next version)
    no longer has: what left the lake because it left landing/. Call before writing ``frame``."""
    if not lake.has_table(table) or key not in frame.columns:
        return 0
    previous = lake.read_table(table)
    if key not in previous.columns:
        return 0
    return previous.select(pl.col(key).is_in(frame.get_column(key).implode()).not_().sum()).item()
