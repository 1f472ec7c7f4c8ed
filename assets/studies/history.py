"""A study's model history: comparing its versions (pure, no Dagster).

- ``version_order`` / ``previous_version``: a study's versions in ``model_versions``, ordered by
  ``trained_at`` (ties by version id, so the order is stable).
- ``auc_drop_outcome``: the best model's AUC on every ``external_validation*`` cohort
  (``external_validation`` pooled and ``external_validation:<center>``) in the previous version
  against the latest one; fails when any drop (previous - latest) exceeds the study's
  ``auc_drop_warning``. "Best model" is each version's own best model (``summary.json``): the
  result the study reports. Passes, with a note, when there is no previous version, no
  threshold, or no external cohort to compare.

The SQL side of the same history is ``sql/views/model_history.sql``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

EXTERNAL_PREFIX = "external_validation"


def version_order(model_versions: pl.DataFrame, study: str) -> list[str]:
    """The study's model versions, oldest first (by ``trained_at``, then version id)."""
    if model_versions.is_empty() or "study" not in model_versions.columns:
        return []
    rows = (
        model_versions.filter(pl.col("study") == study)
        .select("model_version", "trained_at")
        .group_by("model_version")
        .agg(pl.col("trained_at").min())
        .sort("trained_at", "model_version")
    )
    return rows["model_version"].to_list()


def previous_version(model_versions: pl.DataFrame, study: str, latest: str) -> str | None:
    """The most recently trained version of the study other than ``latest`` (None if none).

    Normally the version trained just before ``latest``. When inputs return to an earlier state,
    ``latest`` is that earlier (reused) version and the previous one is the last other version.
    """
    others = [v for v in version_order(model_versions, study) if v != latest]
    return others[-1] if others else None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def external_auc(metrics: pl.DataFrame, study: str, version: str, model: str) -> dict[str, float]:
    """AUC of ``model`` in ``version`` on each ``external_validation*`` cohort (undefined left out)."""
    if metrics.is_empty() or "study" not in metrics.columns:
        return {}
    rows = metrics.filter(
        (pl.col("study") == study)
        & (pl.col("model_version") == version)
        & (pl.col("model") == model)
        & (pl.col("metric") == "auc")
        & pl.col("cohort").str.starts_with(EXTERNAL_PREFIX)
    )
    values = {c: _number(v) for c, v in zip(rows["cohort"], rows["value"], strict=True)}
    return {c: v for c, v in sorted(values.items()) if v is not None}


@dataclass(frozen=True)
class AucDrop:
    """One external cohort: previous and latest AUC, drop = previous - latest."""

    cohort: str
    previous: float
    latest: float
    drop: float
    exceeded: bool


@dataclass
class AucDropOutcome:
    passed: bool
    note: str
    latest_version: str
    latest_model: str | None
    previous_version: str | None = None
    previous_model: str | None = None
    threshold: float | None = None
    drops: list[AucDrop] = field(default_factory=list)

    @property
    def worst(self) -> AucDrop | None:
        return max(self.drops, key=lambda d: d.drop) if self.drops else None

    def metadata(self) -> dict[str, Any]:
        """Flat check metadata: versions, models, threshold, the largest drop and every cohort."""
        meta: dict[str, Any] = {
            "note": self.note,
            "latest_version": self.latest_version,
            "latest_model": self.latest_model,
            "previous_version": self.previous_version,
            "previous_model": self.previous_model,
            "threshold": self.threshold,
        }
        worst = self.worst
        if worst is not None:
            meta.update(
                {
                    "cohort": worst.cohort,
                    "previous": worst.previous,
                    "latest": worst.latest,
                    "drop": worst.drop,
                }
            )
            meta["cohorts"] = {
                d.cohort: {
                    "previous": d.previous,
                    "latest": d.latest,
                    "drop": d.drop,
                    "exceeded": d.exceeded,
                }
                for d in self.drops
            }
        return {k: v for k, v in meta.items() if v is not None}


def auc_drop_outcome(
    metrics: pl.DataFrame,
    *,
    study: str,
    latest_version: str,
    latest_model: str | None,
    previous_version: str | None,
    previous_model: str | None,
    threshold: float | None,
) -> AucDropOutcome:
    """Compare the best model's external AUC of the previous and the latest version.

    ``previous_model`` defaults to ``latest_model`` when the previous version's best model is not
    known. Fails when some ``external_validation*`` cohort's AUC fell by more than ``threshold``.
    """
    outcome = AucDropOutcome(
        passed=True,
        note="",
        latest_version=latest_version,
        latest_model=latest_model,
        previous_version=previous_version,
        previous_model=previous_model or latest_model,
        threshold=threshold,
    )
    if previous_version is None:
        outcome.note = f"no previous version of {study}: nothing to compare (first version)"
        return outcome
    if latest_model is None:
        outcome.note = f"no best model recorded for version {latest_version}: nothing to compare"
        return outcome
    latest = external_auc(metrics, study, latest_version, latest_model)
    previous = external_auc(metrics, study, previous_version, outcome.previous_model)
    for cohort in sorted(set(latest) & set(previous)):
        drop = previous[cohort] - latest[cohort]
        exceeded = threshold is not None and drop > threshold
        outcome.drops.append(AucDrop(cohort, previous[cohort], latest[cohort], drop, exceeded))
    if not outcome.drops:
        outcome.note = (
            "no external_validation cohort with an AUC in both versions: nothing to compare"
        )
        return outcome
    worst = outcome.worst
    change = (
        f"{outcome.previous_model} {worst.previous:.3f} ({previous_version}) -> "
        f"{latest_model} {worst.latest:.3f} ({latest_version}) on {worst.cohort}"
    )
    if threshold is None:
        outcome.note = (
            f"largest external AUC drop {worst.drop:.3f}: {change}; no auc_drop_warning set"
        )
        return outcome
    exceeded = [d for d in outcome.drops if d.exceeded]
    outcome.passed = not exceeded
    if exceeded:
        outcome.note = (
            f"external AUC dropped by {worst.drop:.3f} > auc_drop_warning {threshold:g}: {change}"
            f" ({len(exceeded)} cohort(s) over the threshold)"
        )
    else:
        outcome.note = f"largest external AUC drop {worst.drop:.3f} <= auc_drop_warning {threshold:g}: {change}"
    return outcome
