"""Incremental, crash-safe persistence of radiomics features: what to extract, and how it is stored.

Design
------
The unit of work is a *pair* (case, parameter set). A pair is **up to date** when the lake holds
feature rows for it whose ``image_sha256``, ``mask_sha256``, ``label`` and ``params_sha256`` equal
the current ones; only pairs that are not up to date are extracted (``plan_extraction``).

Storage is the lake table ``radiomics_features`` (long: one row per case x feature x params_id)
and ``radiomics_diagnostics`` (pyradiomics' ``diagnostics_*``, as strings), each made of parts:

1. **During a run** the parent process (never a worker) writes every finished batch of cases as a
   new part ``batch-<uuid>.parquet`` of both tables, diagnostics first, then features. Each part is
   written atomically (temp file + rename, ``Lake.write_part``), so a part is either complete or
   absent. Killing the run loses only the cases in flight and those not yet flushed (at most one
   batch, or ~30 s of work).
2. **At the end of a run** ``compact`` rewrites each table as a single file ``<table>.parquet``
   (atomic replace) holding, per (case_id, params_id, feature), only the latest row, and only
   rows whose hashes match the current tasks and parameter files (cases that left ``cases``,
   removed parameter files and stale extractions are dropped); then it deletes the batch parts it
   merged. After compaction a reader sees exactly one row per key.
3. **Crash anywhere** (after a batch, between batch and compaction, or during compaction): the
   next run reads the union of all parts and **deduplicates on read** (latest ``extracted_at`` per
   key, ``read_features``), so planning sees each pair once, skips what is already stored and
   re-extracts only the rest; its compaction then leaves no duplicate behind. Between a crash and
   the next compaction, a raw glob over the table folder can see the same key twice (an old and a
   new extraction); readers that may run then use ``read_features`` or the same
   ``qualify row_number() over (partition by case_id, params_id, feature order by extracted_at
   desc) = 1``.

Failures (pyradiomics raised, or the loader refused the case) are remembered in
``LAKE_HOME/state/radiomics_failures.parquet`` with the same hashes, so a re-run does not retry a
case that will fail again; it re-reports it in quarantine instead. A changed image, mask, label or
parameter file makes the case eligible again. One extraction run at a time per lake is assumed
(the Dagster asset is the only writer).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from dagster_project.lake import Lake

FEATURES_TABLE = "radiomics_features"
DIAGNOSTICS_TABLE = "radiomics_diagnostics"
FAILURES_FILE = "radiomics_failures.parquet"
PAIR_KEY = ("case_id", "params_id")
HASH_COLUMNS = ("image_sha256", "mask_sha256", "label", "params_sha256")

FEATURES_SCHEMA = {
    "case_id": pl.String,
    "patient_key": pl.String,
    "center_id": pl.String,
    "feature": pl.String,
    "value": pl.Float64,
    "params_id": pl.String,
    "params_sha256": pl.String,
    "extractor_version": pl.String,
    "image_sha256": pl.String,
    "mask_sha256": pl.String,
    "label": pl.Int64,
    "extracted_at": pl.Datetime("us", "UTC"),
    "intensity_unit": pl.String,  # the image's values: HU, SUVbw (PET), or null (unknown)
}
DIAGNOSTICS_SCHEMA = {
    "case_id": pl.String,
    "params_id": pl.String,
    "key": pl.String,
    "value": pl.String,
    "params_sha256": pl.String,
    "image_sha256": pl.String,
    "mask_sha256": pl.String,
    "label": pl.Int64,
    "extracted_at": pl.Datetime("us", "UTC"),
}
FAILURES_SCHEMA = {
    "case_id": pl.String,
    "params_id": pl.String,
    "image_sha256": pl.String,
    "mask_sha256": pl.String,
    "label": pl.Int64,
    "params_sha256": pl.String,
    "rule": pl.String,
    "error": pl.String,
    "source_path": pl.String,
    "failed_at": pl.Datetime("us", "UTC"),
}


@dataclass(frozen=True)
class Pair:
    """One unit of work: a case task under one parameter set, with the hashes that identify it."""

    task: Mapping[str, Any]
    params_id: str
    params_path: str
    params_sha256: str

    @property
    def case_id(self) -> str:
        return str(self.task["case_id"])

    def identity(self) -> tuple[str, str, str, str, int, str]:
        t = self.task
        return (
            self.case_id,
            self.params_id,
            str(t["image_sha256"]),
            str(t["mask_sha256"]),
            int(t["label"]),
            self.params_sha256,
        )


@dataclass
class Plan:
    """What a run must do: ``todo`` pairs to extract, up-to-date pairs, and known failures."""

    todo: list[Pair]
    unchanged: list[Pair]
    known_failures: list[tuple[Pair, dict]]  # (pair, failure-ledger row)


# --- reading --------------------------------------------------------------------------------------
def _scan(lake: Lake, table: str, schema: dict) -> pl.LazyFrame:
    files = lake.table_files(table)
    if not files:
        return pl.LazyFrame(schema=schema)
    # parts written before a column was added read it as null
    return pl.scan_parquet([str(f) for f in files], schema=schema, missing_columns="insert")


def latest_per_key(frame: pl.LazyFrame, key: Sequence[str]) -> pl.LazyFrame:
    """Keep the latest row (by ``extracted_at``) per key: the dedupe-on-read rule of this table."""
    return frame.sort("extracted_at").unique(subset=list(key), keep="last", maintain_order=True)


def read_features(lake: Lake, params_id: str | None = None) -> pl.DataFrame:
    """The current ``radiomics_features`` with no duplicate (case_id, params_id, feature)."""
    frame = _scan(lake, FEATURES_TABLE, FEATURES_SCHEMA)
    if params_id is not None:
        frame = frame.filter(pl.col("params_id") == params_id)
    return latest_per_key(frame, (*PAIR_KEY, "feature")).sort(*PAIR_KEY, "feature").collect()


def read_diagnostics(lake: Lake) -> pl.DataFrame:
    """The current ``radiomics_diagnostics`` with no duplicate (case_id, params_id, key)."""
    frame = _scan(lake, DIAGNOSTICS_TABLE, DIAGNOSTICS_SCHEMA)
    return latest_per_key(frame, (*PAIR_KEY, "key")).sort(*PAIR_KEY, "key").collect()


def stored_pairs(lake: Lake) -> pl.DataFrame:
    """The distinct (case, params, hashes) the feature table holds (column projection only)."""
    return (
        _scan(lake, FEATURES_TABLE, FEATURES_SCHEMA)
        .select(*PAIR_KEY, *HASH_COLUMNS)
        .unique()
        .collect()
    )


def read_failures(lake: Lake) -> pl.DataFrame:
    path = lake.state_dir / FAILURES_FILE
    if not path.exists():
        return pl.DataFrame(schema=FAILURES_SCHEMA)
    return pl.read_parquet(path)


def write_failures(lake: Lake, failures: pl.DataFrame) -> None:
    """Replace the failure ledger atomically (private state, not a lake table)."""
    lake.tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = lake.tmp_dir / f"{FAILURES_FILE}.{uuid.uuid4().hex}.tmp"
    try:
        failures.write_parquet(tmp)
        os.replace(tmp, lake.state_dir / FAILURES_FILE)
    finally:
        tmp.unlink(missing_ok=True)


# --- planning -------------------------------------------------------------------------------------
def make_pairs(tasks: Iterable[Mapping[str, Any]], params: Iterable[Any]) -> list[Pair]:
    """Every (case task, parameter set) pair; ``params`` are ``ParamsFile`` objects.

    A task may restrict its parameter sets with ``params_ids`` (e.g. CT cases -> ``ct_default``,
    MR cases -> ``mr_default``); without it, every parameter set applies to the case.
    """
    params = list(params)
    pairs = []
    for task in tasks:
        wanted = task.get("params_ids")
        for p in params:
            if wanted is None or p.params_id in wanted:
                pairs.append(
                    Pair(
                        task=task,
                        params_id=p.params_id,
                        params_path=str(p.path),
                        params_sha256=p.sha256,
                    )
                )
    return pairs


def plan_extraction(pairs: Sequence[Pair], stored: pl.DataFrame, failures: pl.DataFrame) -> Plan:
    """Split pairs into to-extract, up to date (stored with the same hashes) and known failures."""
    done = {tuple(row) for row in stored.select(*PAIR_KEY, *HASH_COLUMNS).iter_rows()}
    failed = {
        (
            r["case_id"],
            r["params_id"],
            r["image_sha256"],
            r["mask_sha256"],
            r["label"],
            r["params_sha256"],
        ): r
        for r in failures.iter_rows(named=True)
    }
    plan = Plan(todo=[], unchanged=[], known_failures=[])
    for pair in pairs:
        identity = pair.identity()
        if identity in done:
            plan.unchanged.append(pair)
        elif identity in failed:
            plan.known_failures.append((pair, failed[identity]))
        else:
            plan.todo.append(pair)
    return plan


# --- writing --------------------------------------------------------------------------------------
def features_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=FEATURES_SCHEMA)


def diagnostics_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=DIAGNOSTICS_SCHEMA)


def write_batch(lake: Lake, features: pl.DataFrame, diagnostics: pl.DataFrame) -> str:
    """One finished batch as new parts of both tables; diagnostics first, so features mark done."""
    part = f"batch-{uuid.uuid4().hex}"
    lake.write_part(DIAGNOSTICS_TABLE, part, diagnostics)
    lake.write_part(FEATURES_TABLE, part, features)
    return part


def current_identities(pairs: Sequence[Pair]) -> pl.DataFrame:
    """The (case, params, hashes) every stored row must match to survive compaction."""
    # identity() is ordered like (*PAIR_KEY, *HASH_COLUMNS)
    rows = [dict(zip((*PAIR_KEY, *HASH_COLUMNS), p.identity(), strict=True)) for p in pairs]
    return pl.DataFrame(
        rows,
        schema={
            "case_id": pl.String,
            "params_id": pl.String,
            "image_sha256": pl.String,
            "mask_sha256": pl.String,
            "label": pl.Int64,
            "params_sha256": pl.String,
        },
    )


def needs_compaction(lake: Lake, pairs: Sequence[Pair], stored: pl.DataFrame) -> bool:
    """True when a table is missing (an empty lake still gets both, typed, with zero rows), holds
    batch parts, or holds rows no current pair accounts for."""
    for table in (FEATURES_TABLE, DIAGNOSTICS_TABLE):
        files = lake.table_files(table)
        if not files or any(f.stem != table for f in files):
            return True
    current = {p.identity() for p in pairs}
    return any(
        tuple(row) not in current for row in stored.select(*PAIR_KEY, *HASH_COLUMNS).iter_rows()
    )


def compact(lake: Lake, pairs: Sequence[Pair]) -> dict[str, int]:
    """Rewrite both tables as one file each: latest row per key, current pairs only; drop parts.

    Returns the row count of each compacted table. The single file is replaced atomically before
    the merged batch parts are deleted, so a crash in between leaves duplicates that the next
    run's dedupe-on-read and compaction remove.
    """
    keep = current_identities(pairs).lazy()
    counts = {}
    for table, schema, key in (
        (FEATURES_TABLE, FEATURES_SCHEMA, (*PAIR_KEY, "feature")),
        (DIAGNOSTICS_TABLE, DIAGNOSTICS_SCHEMA, (*PAIR_KEY, "key")),
    ):
        merged = lake.table_files(table)
        frame = (
            # current pairs first, then the latest per key: a newer but stale row (a run that
            # crashed with parameters since reverted) must not shadow the current one
            latest_per_key(
                _scan(lake, table, schema).join(keep, on=[*PAIR_KEY, *HASH_COLUMNS], how="semi"),
                key,
            )
            .select(list(schema))
            .sort(*key)
            .collect()
        )
        target = lake.write_table(table, frame)
        for path in merged:
            if path != target:
                path.unlink(missing_ok=True)
        counts[table] = frame.height
    return counts
