"""Versioned clinical data: ``clinical_history`` (SCD type 2) next to the current ``clinical`` table.

Every run of the clinical asset loads all clinical files (``load.py``; a newer file's values replace
an older file's, newer = later modification time, then name) into the current table, then folds it
into the history with :func:`update_history` (a pure function of the previous history and the new
load):

- a patient seen for the first time gets a row ``valid_from = <this load>``, ``valid_to = null``,
  ``is_current = true``;
- a patient whose values changed: the open row is closed (``valid_to = <this load>``,
  ``is_current = false``) and a new open row holds the new values;
- a patient whose values did not change keeps its open row (``source_file`` alone changing, e.g.
  the same values landed again in a new file, is not a change);
- a patient no longer in any file: the open row is closed, no new row.

Times are the load's ``loaded_at`` (when the lake learned the values), so "clinical as of last
Tuesday" is what the lake said last Tuesday::

    select * exclude (valid_from, valid_to, is_current)
    from clinical_history
    where valid_from <= timestamptz '2025-03-04 00:00:00+00'
      and (valid_to is null or valid_to > timestamptz '2025-03-04 00:00:00+00');

(:func:`as_of_sql` writes this query; :func:`clinical_as_of` does the same in polars.)

The Parquet history is a second, coarser way: ``lake.write_table("clinical", table,
keep_history=True)`` keeps each replaced file as ``lake/clinical/_history/<UTC stamp>.parquet``
(the stamp is when that version was written). The table as it was at time T is the newest file
whose stamp is <= T, or the current file when none is newer than T::

    select * from read_parquet('lake/clinical/_history/20250304T081500123456Z.parquet');
    -- all versions with their file names:
    select filename, count(*) from read_parquet('lake/clinical/_history/*.parquet',
        filename = true, union_by_name = true) group by all order by filename;
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

SCD_COLUMNS = ("valid_from", "valid_to", "is_current")
NOT_COMPARED = frozenset({"patient_key", "source_file", "loaded_at", *SCD_COLUMNS})
_STAMP = pl.Datetime("us", "UTC")


def value_columns(frame: pl.DataFrame) -> list[str]:
    """The columns whose change makes a new version (everything but keys, provenance, SCD columns)."""
    return [c for c in frame.columns if c not in NOT_COMPARED]


def update_history(
    previous: pl.DataFrame | None, current: pl.DataFrame, as_of: datetime
) -> pl.DataFrame:
    """The new ``clinical_history``: ``previous`` history folded with the ``current`` clinical table.

    ``as_of`` is the load time (the clinical table's ``loaded_at``), timezone-aware.
    Columns that appear later are null in earlier versions; a column type that changes between
    loads widens (e.g. int -> float) as polars' relaxed concatenation does.
    """
    stamp = pl.lit(as_of, dtype=_STAMP)
    incoming = current.drop("loaded_at", strict=False)
    fresh = incoming.with_columns(
        valid_from=stamp, valid_to=pl.lit(None, dtype=_STAMP), is_current=pl.lit(True)
    )
    if previous is None or previous.is_empty():
        return _ordered(fresh)

    closed = previous.filter(~pl.col("is_current"))
    open_rows = previous.filter(pl.col("is_current"))
    compare = sorted(set(value_columns(open_rows)) | set(value_columns(incoming)))
    old = _with_columns(open_rows, compare)
    new = _with_columns(incoming, compare)
    joined = old.select("patient_key", *compare).join(
        new.select("patient_key", *compare),
        on="patient_key",
        how="full",
        suffix="__new",
        coalesce=False,
    )
    in_old = pl.col("patient_key").is_not_null()
    in_new = pl.col("patient_key__new").is_not_null()
    differs = pl.lit(False)
    for column in compare:
        differs = differs | _differs(column)
    verdict = joined.select(
        pl.coalesce("patient_key", "patient_key__new").alias("patient_key"),
        (in_old & in_new & ~differs).alias("unchanged"),
        (in_old & ~(in_new & ~differs)).alias("close"),
        (in_new & ~(in_old & ~differs)).alias("open"),
    )
    to_close = verdict.filter("close").get_column("patient_key")
    to_open = verdict.filter("open").get_column("patient_key")
    kept_open = open_rows.filter(~pl.col("patient_key").is_in(to_close.implode()))
    now_closed = open_rows.filter(pl.col("patient_key").is_in(to_close.implode())).with_columns(
        valid_to=stamp, is_current=pl.lit(False)
    )
    opened = fresh.filter(pl.col("patient_key").is_in(to_open.implode()))
    parts = [p for p in (closed, now_closed, kept_open, opened) if p.height] or [fresh.head(0)]
    history = pl.concat(parts, how="diagonal_relaxed")
    return _ordered(history)


def _differs(column: str) -> pl.Expr:
    """True when a value changed; null == null, and a type change alone (1 vs 1.0) is no change."""
    a, b = pl.col(column), pl.col(f"{column}__new")
    if_both = (a.is_null() != b.is_null()) | (
        a.is_not_null() & (a.cast(pl.String) != b.cast(pl.String))
    )
    numeric = a.cast(pl.Float64, strict=False)
    numeric_new = b.cast(pl.Float64, strict=False)
    same_number = numeric.is_not_null() & numeric_new.is_not_null() & (numeric == numeric_new)
    return if_both & ~same_number


def _with_columns(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    return frame.with_columns(pl.lit(None).alias(c) for c in missing) if missing else frame


def _ordered(history: pl.DataFrame) -> pl.DataFrame:
    values = [c for c in history.columns if c not in (*SCD_COLUMNS, "patient_key", "source_file")]
    head = ["patient_key"]
    return history.select(*head, *values, "source_file", *SCD_COLUMNS).sort(
        "patient_key", "valid_from"
    )


def current_from_history(history: pl.DataFrame) -> pl.DataFrame:
    """The current rows of a history (``is_current``), without the SCD columns."""
    return history.filter(pl.col("is_current")).drop(*SCD_COLUMNS)


def clinical_as_of(history: pl.DataFrame, when: datetime) -> pl.DataFrame:
    """The clinical table as the lake knew it at ``when`` (timezone-aware)."""
    at = pl.lit(when, dtype=_STAMP)
    valid = (pl.col("valid_from") <= at) & (
        pl.col("valid_to").is_null() | (pl.col("valid_to") > at)
    )
    return history.filter(valid).drop(*SCD_COLUMNS)


def as_of_sql(when: datetime, table: str = "clinical_history") -> str:
    """DuckDB SQL for "clinical as of ``when``" over the history table (or view)."""
    stamp = when.isoformat(sep=" ")
    return (
        f"select * exclude (valid_from, valid_to, is_current) from {table} "
        f"where valid_from <= timestamptz '{stamp}' "
        f"and (valid_to is null or valid_to > timestamptz '{stamp}')"
    )
