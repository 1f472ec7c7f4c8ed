"""Stage 2, the fit (asset ``models``): ``train_study`` harmonizes, selects and tunes every model
on the training cohort only.

``versioning.model_version`` names the run; when ``models/<study>/<version>/`` already holds a
complete training run (``complete.json``, written last, see ``store.read_complete``) the
pipelines are loaded instead of refitted and the original ``trained_at`` is kept; otherwise
``pipeline.fit_models`` tunes every pipeline (harmonization, selection and the model are steps
of one scikit-learn pipeline, fitted inside every cross-validation fold) and
``store.save_training`` writes the pipelines, ``resolved.yaml``, ``hashes.json`` and then
``complete.json``. The result, a ``TrainedStudy``, is what ``evaluate.evaluate_study`` takes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from assets.studies.data import StudyData, train_inputs
from assets.studies.spec import StudySpec
from assets.studies.store import load_fitted, read_complete, save_training
from assets.studies.versioning import code_version, model_version, model_versions_row


@dataclass
class TrainedStudy:
    """Stage 2 (asset ``models``): the tuned pipelines and the version they are saved under.

    ``retrained`` is False when the version folder already held a complete training run and the
    pipelines were loaded from it instead of being fitted again. ``notes``: how the training
    deviated from the study as written (cross-validation folds reduced for a small cohort, see
    ``pipeline.training_cv``); they go to ``summary.json`` and the report with the data notes.
    """

    model_version: str
    code_version: str
    data_hashes: dict[str, str]
    fitted: dict[str, Any]
    version_dir: Path
    model_versions_row: pl.DataFrame
    retrained: bool = True
    trained_at: datetime | None = None
    notes: list[str] = field(default_factory=list)
    raw_fitted: dict[str, Any] = field(default_factory=dict)  # harmonization.compare_raw


def train_study(
    spec: StudySpec,
    data: StudyData,
    splits: pl.DataFrame,
    out_dir: str | Path,
    *,
    n_jobs: int = 1,
    code_version_override: str | None = None,
    trained_at: datetime | None = None,
    reuse: bool = True,
) -> TrainedStudy:
    """Fit every model on training; write the pipelines, resolved.yaml, hashes.json, complete.json.

    With ``reuse`` (default) a version folder that already holds a complete training run
    (``read_complete``) is not refitted: its pipelines are loaded and its original ``trained_at``
    is kept (``trained_at`` given here is then ignored), so the ``model_versions`` row is the
    same as the first time.
    """
    from assets.studies.pipeline import fit_models, training_notes

    code = code_version_override or code_version()
    version = model_version(spec.resolved_yaml(), data.data_hashes, code)
    relative = Path("models") / spec.name / version
    version_dir = Path(out_dir) / relative
    marker = read_complete(version_dir, spec, version) if reuse else None

    compare_raw = spec.harmonization.enabled and spec.harmonization.compare_raw

    def trained(fitted, at: datetime, fitted_now: bool, raw=None) -> TrainedStudy:
        row = model_versions_row(
            spec, version, code, data.data_hashes, fitted, relative.as_posix(), at
        )
        return TrainedStudy(
            version,
            code,
            data.data_hashes,
            fitted,
            version_dir,
            row,
            fitted_now,
            at,
            training_notes(fitted),
            raw or {},
        )

    if marker is not None:
        fitted, _ = load_fitted(version_dir, spec.models)
        raw = load_fitted(version_dir / "raw", spec.models)[0] if compare_raw else {}
        return trained(fitted, datetime.fromisoformat(marker["trained_at"]), False, raw)

    X_train, y_train = train_inputs(data, splits)
    raw = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # joblib cache timing notes
        fitted = fit_models(spec, X_train, y_train, n_jobs=n_jobs)
        if compare_raw:
            from dataclasses import replace

            from assets.studies.spec import HarmonizationSpec

            unharmonized = replace(spec, harmonization=HarmonizationSpec())
            keys = splits.filter(pl.col("cohort") == "train")["patient_key"].to_list()
            raw = fit_models(unharmonized, data.X_raw(keys), y_train, n_jobs=n_jobs)
    trained_at = trained_at or datetime.now(UTC)
    save_training(version_dir, spec, version, code, data.data_hashes, fitted, raw, trained_at)
    return trained(fitted, trained_at, True, raw)
