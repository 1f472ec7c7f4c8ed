"""SQL files as Dagster assets: each sql/cohorts and sql/portfolio file (and chosen views) runs over
the lake's current Parquet, shows its result in the UI and gets lineage from the tables it reads."""

from collections.abc import Iterable
from pathlib import Path

import dagster as dg
import polars as pl

from dagster_project.catalog import referenced
from dagster_project.materialize import KEY_COLUMNS, frame_version
from dagster_project.resources import LakeResource

PREVIEW_ROWS = 20


def markdown_table(frame: pl.DataFrame, rows: int = PREVIEW_ROWS, width: int = 60) -> str:
    """The first rows of a frame as a markdown table (floats to 4 significant digits)."""
    if frame.height == 0:
        return "no rows"
    head = frame.head(rows).drop(KEY_COLUMNS, strict=False)  # no pseudonyms in the event log
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    for row in head.iter_rows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(c.replace("|", "/")[:width] for c in cells) + " |")
    return "\n".join(lines)


def sql_description(sql: str, default: str) -> str:
    """The file's leading ``--`` comment lines, as the asset's description."""
    lines = [line[2:].strip() for line in sql.splitlines() if line.startswith("--")]
    return " ".join(lines) or default


def sql_file_asset(path: Path, group: str, tables: Iterable[str]) -> dg.AssetsDefinition:
    """An asset running one SQL file over the lake (an in-memory DuckDB: no catalog lock)."""
    sql = path.read_text(encoding="utf-8")

    @dg.asset(
        name=path.stem,
        deps=referenced(sql, tables),
        group_name=group,
        kinds={"sql", "duckdb"},
        description=sql_description(sql, f"The query {path.parent.name}/{path.name}."),
    )
    def _query(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        import duckdb

        from dagster_project.catalog import explain_sql_error, lake_connection, read_select

        con = lake_connection(lake.lake(), with_sql_views=False)
        try:
            frame = con.sql(read_select(path)).pl()
        except duckdb.Error as error:  # e.g. a cohort written for another lake's clinical columns
            message = explain_sql_error(con, str(path), sql, error)
            context.log.error(message)
            raise dg.Failure(description=message) from None
        finally:
            con.close()
        metadata = {
            "dagster/row_count": frame.height,
            "result": dg.MetadataValue.md(markdown_table(frame)),
            "sql": dg.MetadataValue.path(str(path)),
        }
        if "patient_key" in frame.columns:
            metadata["patients"] = frame.get_column("patient_key").n_unique()
        return dg.MaterializeResult(
            metadata=metadata, data_version=dg.DataVersion(frame_version(frame))
        )

    return _query
