"""One extraction run: plan what changed, extract it in parallel, persist batches, compact.

``run_extraction(lake, tasks, params_files, backend, progress=..., batch_size=...)`` ties the
pieces together (see ``incremental`` for the storage design):

1. pairs = every case task x every parameter set; pairs already stored with the same image,
   mask, label and parameter hashes are *unchanged*; pairs that failed before with the same
   hashes are re-reported as rejects without being retried;
2. the rest runs on the backend (``local`` process pool or ``dask``), one unit of work per case
   with all its parameter sets (the case read once, see ``extract.run_case``); results stream
   back to this process, which writes a batch part every ``batch_size`` finished pairs or ``flush_seconds``;
3. the tables are compacted to one file each (latest row per key, current pairs only).

The unit of the returned stats is a pair (case x params_id):
``landed == ingested + quarantined`` with ``ingested == extracted + unchanged``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from assets.radiomics.backends import Backend, run_parallel
from assets.radiomics.extract import (
    EXTRACTION_FAILED,
    TASK_KEYS,
    CaseResult,
    Loader,
    extractor_version,
    merge_parts,
    run_case,
)
from assets.radiomics.incremental import (
    FAILURES_SCHEMA,
    FEATURES_TABLE,
    Pair,
    compact,
    diagnostics_frame,
    features_frame,
    make_pairs,
    needs_compaction,
    plan_extraction,
    read_failures,
    stored_pairs,
    write_batch,
    write_failures,
)
from assets.radiomics.params import TARGET_TABLE, ParamsFile, params_file
from assets.radiomics.schedule import plan_units
from dagster_project.lake import Lake
from dagster_project.quarantine import Reject


@dataclass(frozen=True)
class Progress:
    """Where a run stands; ``str()`` is the log line (done/total, cases per minute, ETA)."""

    done: int
    total: int
    extracted: int
    failed: int
    elapsed_s: float

    @property
    def cases_per_minute(self) -> float:
        return 60.0 * self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.done == 0:
            return None
        return (self.total - self.done) * self.elapsed_s / self.done

    def __str__(self) -> str:
        eta = "?" if self.eta_s is None else _duration(self.eta_s)
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"radiomics: {self.done}/{self.total} case x params done ({percent:.0f}%), "
            f"{self.extracted} extracted, {self.failed} failed, "
            f"{self.cases_per_minute:.1f} cases/min, ETA {eta}"
        )


ProgressCallback = Callable[[Progress], None]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _params(params_files: Sequence[ParamsFile | str | os.PathLike]) -> list[ParamsFile]:
    out = [p if isinstance(p, ParamsFile) else params_file(p) for p in params_files]
    ids = [p.params_id for p in out]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"params_id must be unique per run; repeated: {duplicates}")
    return out


def _tasks(tasks: Sequence[Mapping[str, Any]]) -> list[dict]:
    out, seen = [], set()
    for task in tasks:
        missing = [k for k in TASK_KEYS if k not in task]
        if missing:
            raise ValueError(f"case task {task.get('case_id', '?')!r} lacks {missing}")
        if task["case_id"] in seen:
            raise ValueError(f"case_id {task['case_id']!r} appears twice in the tasks")
        seen.add(task["case_id"])
        plain = dict(task)
        plain["image_path"], plain["mask_path"] = str(task["image_path"]), str(task["mask_path"])
        plain["label"] = int(task["label"])
        if task.get("params_ids") is not None:
            plain["params_ids"] = tuple(str(i) for i in task["params_ids"])
        out.append(plain)
    return out


def _reject(pair: Pair, rule: str, error: str) -> Reject:
    task = pair.task
    where = str(task.get("source_path") or f"imaging/{task['center_id']}")
    if rule == EXTRACTION_FAILED:
        reason = (
            f"{EXTRACTION_FAILED}: pyradiomics failed on case {pair.case_id} with params "
            f"'{pair.params_id}': {error} (check the image, the mask and the label; the case is "
            "tried again when one of them or the parameter file changes)"
        )
    else:  # the loader's own rule and sentence (mask QC and the like)
        reason = error if error.startswith(f"{rule}:") else f"{rule}: {error}"
    return Reject(
        source_path=where,
        target_table=TARGET_TABLE,
        rule=rule,
        reason=reason,
        record=f"case {pair.case_id}, params {pair.params_id}",
    )


NONFINITE_KEY = "diagnostics_radlake_nonfinite:"  # + feature name, in radiomics_diagnostics


def _nonfinite(value: float) -> str:
    """Why a feature has no row: pyradiomics gave NaN (undefined for this ROI, or a truly complex
    result) or an infinite value; the suite's ``finite`` rule keeps such values out of the table."""
    kind = "NaN" if math.isnan(value) else "infinite"
    return f"{kind}: pyradiomics returned {value!r}; the feature is undefined for this ROI"


class _BatchWriter:
    """Buffers finished pairs in the parent and writes them as one batch part at a time."""

    def __init__(self, lake: Lake, batch_size: int, flush_seconds: float):
        self.lake, self.batch_size, self.flush_seconds = lake, max(1, batch_size), flush_seconds
        self.features: list[dict] = []
        self.diagnostics: list[dict] = []
        self.pairs = 0
        self.last_flush = time.monotonic()
        self.parts: list[str] = []
        self.feature_rows = 0

    def add(self, pair: Pair, result: CaseResult) -> None:
        task, now = pair.task, datetime.now(UTC)
        common = {
            "case_id": pair.case_id,
            "params_id": pair.params_id,
            "params_sha256": pair.params_sha256,
            "image_sha256": str(task["image_sha256"]),
            "mask_sha256": str(task["mask_sha256"]),
            "label": int(task["label"]),
            "extracted_at": now,
        }
        for feature, value in result.features:
            if not math.isfinite(value):  # kept out of the table, with its reason beside it
                self.diagnostics.append(
                    {**common, "key": f"{NONFINITE_KEY}{feature}", "value": _nonfinite(value)}
                )
                continue
            self.features.append(
                {
                    **common,
                    "patient_key": str(task["patient_key"]),
                    "center_id": str(task["center_id"]),
                    "feature": feature,
                    "value": value,
                    "extractor_version": result.extractor_version,
                    "intensity_unit": task.get("intensity_unit"),
                }
            )
        for key, value in result.diagnostics.items():
            self.diagnostics.append({**common, "key": key, "value": value})
        self.pairs += 1
        if (
            self.pairs >= self.batch_size
            or time.monotonic() - self.last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        if self.pairs:
            part = write_batch(
                self.lake, features_frame(self.features), diagnostics_frame(self.diagnostics)
            )
            self.parts.append(part)
            self.feature_rows += len(self.features)
        self.features, self.diagnostics, self.pairs = [], [], 0
        self.last_flush = time.monotonic()


def run_extraction(
    lake: Lake,
    tasks: Sequence[Mapping[str, Any]],
    params_files: Sequence[ParamsFile | str | os.PathLike],
    backend: Backend | str | None = "local",
    progress: ProgressCallback | None = None,
    batch_size: int = 16,
    loader: Loader | None = None,
    flush_seconds: float = 30.0,
) -> tuple[dict, list[Reject]]:
    """Extract what changed for ``tasks`` x ``params_files``; returns ``(stats, rejects)``.

    ``loader`` must be picklable (a module-level function) to reach the workers. Pairs of cases
    missing from ``tasks`` or parameter files missing from ``params_files`` are removed from the
    tables by the final compaction: pass every current case and every parameter set.
    """
    started = time.perf_counter()
    backend = Backend.parse(backend)
    params = _params(params_files)
    pairs = make_pairs(_tasks(tasks), params)
    stored = stored_pairs(lake)
    failures = read_failures(lake)
    plan = plan_extraction(pairs, stored, failures, extractor_version())

    rejects = [_reject(pair, row["rule"], row["error"]) for pair, row in plan.known_failures]
    ledger = [row for _, row in plan.known_failures]  # known failures of current pairs stay
    writer = _BatchWriter(lake, batch_size, flush_seconds)
    extracted, failed, worker_seconds = 0, 0, 0.0
    extraction_started = time.perf_counter()
    # one unit of work per case (read once, preprocessing shared: extract.run_case), largest
    # first, a dominant case split by image type across workers (schedule.plan_units)
    units = plan_units(plan.todo, backend.parallelism())
    parts_left = Counter((job.pair.case_id, job.pair.params_id) for u in units for job in u.jobs)
    pending: dict[tuple[str, str], list[CaseResult]] = {}
    arguments = [(u.task, [job.worker_args() for job in u.jobs], loader) for u in units]
    results = run_parallel(run_case, arguments, backend)
    try:
        for index, outcome in results:
            for position, job in enumerate(units[index].jobs):
                pair, key = job.pair, (job.pair.case_id, job.pair.params_id)
                if isinstance(outcome, list):
                    worker_seconds += outcome[position].seconds
                    pending.setdefault(key, []).append(outcome[position])
                else:  # the worker itself failed (died, result lost): report, retry next run
                    message = f"the worker running it failed ({type(outcome).__name__}: {outcome})"
                    lost = CaseResult(*key, rule=EXTRACTION_FAILED, error=message, retry=True)
                    pending.setdefault(key, []).append(lost)
                parts_left[key] -= 1
                if parts_left[key]:
                    continue  # other parts of a split case are still running
                result = merge_parts(pending.pop(key))
                if result.ok:
                    writer.add(pair, result)
                    extracted += 1
                else:
                    failed += 1
                    rejects.append(_reject(pair, result.rule, result.error))
                    if not result.retry:  # a lost worker's pair is tried again next run
                        ledger.append(_ledger_row(pair, result.rule, result.error))
            if progress is not None:
                elapsed = time.perf_counter() - extraction_started
                progress(Progress(extracted + failed, len(plan.todo), extracted, failed, elapsed))
    except BaseException:
        # interrupted (Dagster termination, Ctrl-C, a failing callback): keep what is finished
        with contextlib.suppress(Exception):
            writer.flush()
        raise
    finally:
        results.close()  # stop the workers now, not when the traceback is garbage-collected
    writer.flush()
    extraction_seconds = time.perf_counter() - extraction_started

    write_failures(lake, pl.DataFrame(ledger, schema=FAILURES_SCHEMA))
    compacted = None
    if extracted or needs_compaction(lake, pairs, stored):
        compacted = compact(lake, pairs)

    stats = {
        "landed": len(pairs),
        "ingested": extracted + len(plan.unchanged),
        "quarantined": len(rejects),
        "extracted": extracted,
        "unchanged": len(plan.unchanged),
        "failed_this_run": failed,
        "known_failures": len(plan.known_failures),
        "cases": len({p.case_id for p in pairs}),
        "params_ids": [p.params_id for p in params],
        "backend": backend.describe(),
        "batches_written": len(writer.parts),
        "feature_rows_written": writer.feature_rows,
        "seconds_per_case": extraction_seconds / len(plan.todo) if plan.todo else 0.0,
        "worker_seconds_per_case": worker_seconds / len(plan.todo) if plan.todo else 0.0,
        "total_seconds": time.perf_counter() - started,
        "table_rows": compacted[FEATURES_TABLE] if compacted else None,
    }
    return stats, rejects


def _ledger_row(pair: Pair, rule: str, error: str) -> dict:
    case_id, params_id, image_sha, mask_sha, label, params_sha = pair.identity()
    return {
        "case_id": case_id,
        "params_id": params_id,
        "image_sha256": image_sha,
        "mask_sha256": mask_sha,
        "label": label,
        "params_sha256": params_sha,
        "rule": rule,
        "error": error,
        "source_path": str(pair.task.get("source_path") or ""),
        "failed_at": datetime.now(UTC),
    }
