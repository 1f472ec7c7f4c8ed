"""Quarantine: the one shared way for every ingest to record a rejected file, row or record.

Each ingest asset owns one part of the ``quarantine`` table (``lake/quarantine/<source>.parquet``)
and replaces it on every run, so the table always says what the latest run of each source
rejected, and why. Pure module (no Dagster import).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from dagster_project.lake import Lake

QUARANTINE_TABLE = "quarantine"
QUARANTINE_SCHEMA = {
    "source_path": pl.String,  # relative to landing/ (identifier-bearing parts replaced)
    "record": pl.String,  # which row/record/case inside the file ("" for a whole file)
    "target_table": pl.String,
    "reason": pl.String,  # "<rule>: <what was found> (<what to do>)"
    "rule": pl.String,  # short machine-readable rule id, e.g. "empty_mask"
    "source": pl.String,  # the ingest asset that rejected it
    "detected_at": pl.Datetime("us", "UTC"),
}


@dataclass
class Reject:
    """One rejected file, row or record. ``reason`` names the rule and the numbers."""

    source_path: str
    target_table: str
    rule: str
    reason: str
    record: str = ""
    detected_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __str__(self) -> str:
        where = f"{self.source_path}" + (f" [{self.record}]" if self.record else "")
        return f"{where} -> {self.target_table}: {self.reason}"


def rejects_frame(rejects: list[Reject], source: str) -> pl.DataFrame:
    rows = [
        {
            "source_path": r.source_path,
            "record": r.record,
            "target_table": r.target_table,
            "reason": r.reason,
            "rule": r.rule,
            "source": source,
            "detected_at": r.detected_at,
        }
        for r in rejects
    ]
    return pl.DataFrame(rows, schema=QUARANTINE_SCHEMA)


def write_quarantine(lake: Lake, source: str, rejects: list[Reject]) -> pl.DataFrame:
    """Replace this source's part of the quarantine table (an empty part when nothing was rejected)."""
    frame = rejects_frame(rejects, source)
    lake.write_part(QUARANTINE_TABLE, source, frame)
    return frame


def read_quarantine(lake: Lake, source: str | None = None) -> pl.DataFrame:
    frame = lake.read_table(QUARANTINE_TABLE)
    if frame.is_empty():
        return pl.DataFrame(schema=QUARANTINE_SCHEMA)
    return frame.filter(pl.col("source") == source) if source else frame
