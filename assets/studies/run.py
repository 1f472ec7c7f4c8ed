"""A classification study in one process: ``run_study`` chains the stages (tests, the benchmark).

In the lake each stage is its own Dagster asset (``defs``) and ``store`` hands the results from
one to the next on disk; here they pass in memory and ``store.save_results`` writes the same
files at the end:

1. ``data.prepare_study`` (``study_splits``): StudyData, cohorts, exclusions
2. ``fit.train_study`` (``models``): tuned pipelines, content-hashed ``model_version``
3. ``evaluate.evaluate_study`` (``model_metrics``): predictions, metrics, best and combined model
4. ``explain.explain_models`` (``explanations``)
5. ``calibration.calibrate_study`` and ``calibration.dca_table`` (``calibration``,
   ``decision_curves``)
6. survival (``survival.run_survival``, ``survival_results``) is a lake-only stage
7. ``plots.write_figures`` and ``report.write_study_report`` (``report``)

``out_dir`` is normally ``LAKE_HOME``: artifacts in ``models/<study>/<version>/``
(``<model>.joblib``, ``combined.joblib``, ``resolved.yaml``, ``hashes.json``, ``complete.json``,
``metrics.parquet``, ``predictions.parquet``, ``calibration_curves.parquet``,
``decision_curves.parquet``, ``top_features.parquet``, ``summary.json``), figures and
``report.html`` in ``reports/<study>/``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from assets.studies.calibration import calibrate_study, dca_table
from assets.studies.data import prepare_study
from assets.studies.evaluate import evaluate_study
from assets.studies.explain import explain_models, top_features_table
from assets.studies.fit import train_study
from assets.studies.plots import write_figures
from assets.studies.report import StudyResult, write_study_report
from assets.studies.spec import StudySpec
from assets.studies.store import save_results


def run_study(
    spec: StudySpec,
    features_df: pl.DataFrame,
    clinical_df: pl.DataFrame,
    out_dir: str | Path,
    *,
    n_jobs: int = 1,
    code_version_override: str | None = None,
    trained_at: datetime | None = None,
    write_report: bool = True,
    figures: bool = True,
) -> StudyResult:
    """Split, fit, predict, evaluate, explain, calibrate and report one classification study.

    ``out_dir`` is normally LAKE_HOME: artifacts go to ``models/<study>/<version>/``, figures
    and the report to ``reports/<study>/``. ``n_jobs`` parallelises the cross-validation fits;
    ``figures=False`` / ``write_report=False`` skip the PNGs / the HTML report.
    """
    out_dir = Path(out_dir)
    data, splits, excluded = prepare_study(spec, features_df, clinical_df)
    trained = train_study(
        spec,
        data,
        splits,
        out_dir,
        n_jobs=n_jobs,
        code_version_override=code_version_override,
        trained_at=trained_at,
    )
    evaluation = evaluate_study(
        spec, data, splits, trained.fitted, trained.model_version, trained.raw_fitted
    )
    curves, calibration_rows = calibrate_study(spec, evaluation.predictions, trained.model_version)
    dca = dca_table(evaluation.predictions)
    explanations = explain_models(spec, trained.fitted, data, splits)
    result = StudyResult(
        spec=spec,
        model_version=trained.model_version,
        code_version=trained.code_version,
        data_hashes=trained.data_hashes,
        splits=splits,
        excluded=excluded,
        fitted=trained.fitted,
        best_model=evaluation.best_model,
        best_model_rule=evaluation.best_model_rule,
        predictions=evaluation.predictions,
        metrics=pl.concat([evaluation.metrics, calibration_rows]),
        calibration_curves=curves,
        dca=dca,
        explanations=explanations,
        top_features=top_features_table(explanations),
        combined=evaluation.combined,
        nomogram=evaluation.nomogram,
        artifact_dir=trained.version_dir,
        model_versions_row=trained.model_versions_row,
        warnings=evaluation.warnings,
        notes=[*data.notes, *trained.notes],
    )
    save_results(result, trained.version_dir)
    report_dir = out_dir / "reports" / spec.name
    if figures:
        result.figures = write_figures(report_dir, result)
    if write_report:
        result.report_path = write_study_report(result, report_dir / "report.html")
    return result
