"""Dagster layer of the studies domain: one family of thin assets per study YAML.

Each asset calls one stage's entry point (``data.prepare_study``, ``fit.train_study``,
``evaluate.evaluate_study``, ``explain.explain_models``, ``calibration.calibrate_study`` /
``dca_table``, ``survival.run_survival``, ``report.write_study_report``) on what ``store``
reloads from the previous stage, and saves the result through ``store``.

Studies are found when the code location loads: every ``LAKE_HOME/studies/*.yaml`` (the demo's
study is there only in a lake made by ``radlake demo-data``). For a study ``<name>`` (group
``studies``):

- ``<name>/study_splits``: cohorts -> lake ``study_splits`` (part ``<name>``); excluded patients
  by reason and the case rule in the metadata
- ``<name>/models``: tuned pipelines -> ``models/<name>/<version>/``; lake ``model_versions``
  (part ``<name>-<version>``). Unchanged inputs give the same content-hashed version: when its
  folder already holds a complete training run the pipelines are loaded, not refitted, the
  original ``trained_at`` is kept (same data version) and the metadata says ``retrained: False``
- ``<name>/model_metrics``: metrics with bootstrap and DeLong CIs, best model, combined model,
  DeLong test -> lake ``model_metrics`` (part ``<name>-<version>``); each row's ``ci_flag`` /
  ``ci_note`` (``assets.studies.ci_flags``), the flagged rows in the metadata; ROC and nomogram
  PNGs; check ``auc_drop_vs_previous_version`` (WARN, not blocking: the best model's external AUC fell
  by more than ``auc_drop_warning`` since the previous version)
- ``<name>/explanations``: SHAP / importances / coefficients, top features, PNGs
- ``<name>/calibration``: curves, slope, intercept, Hosmer-Lemeshow -> lake ``model_metrics``
  (part ``<name>-<version>-calibration``); PNG
- ``<name>/decision_curves``: net benefit vs treat-all / treat-none; PNG
- ``<name>/survival_results`` (studies with ``survival:``): lake ``survival_results`` (part
  ``<name>-<version>``)
- ``<name>/report``: ``reports/<name>/report.html``

Metrics parts are per version, so ``model_metrics`` keeps every version. A YAML that does not
validate becomes the asset ``<file stem>/invalid_study``, which fails with the error (file, key,
what is allowed) instead of silently disappearing. Data a valid study cannot use (a
``StudyDataError``, e.g. too few patients of a class for the split or the cross-validation, a
best-model rule on a cohort where every model's metric is undefined) fails ``study_splits`` /
``models`` / ``model_metrics`` / ``survival_results`` with that message as the failure
description; reduced cross-validation folds are logged as warnings and listed in the ``models``
metadata (``cv_folds``, ``notes``). ``RADLAKE_STUDY_JOBS`` (default 1) sets the parallel
cross-validation fits.
"""

import base64
import os
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from dagster_project.lake import Lake
from dagster_project.materialize import table_result
from dagster_project.resources import LakeResource
from dagster_project.sql_assets import markdown_table

GROUP = "studies"
KINDS = {"python", "parquet"}


def _n_jobs() -> int:
    return max(1, int(os.environ.get("RADLAKE_STUDY_JOBS", "1")))


def _image(path: Path | None) -> str:
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{Path(path).stem}](data:image/png;base64,{data})"


def _table(frame) -> str:
    return markdown_table(frame, rows=60)  # a study's tables (models x cohorts) run longer


def _splits(home: Lake, name: str):
    import polars as pl

    path = home.table_dir("study_splits") / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"no study_splits part for {name}: materialize {name}/study_splits first"
        )
    return pl.read_parquet(path)


def _study_data(home: Lake, spec):
    from assets.studies.data import reload_study_data
    from assets.studies.store import load_inputs

    features, clinical, prepared = load_inputs(home, spec)
    return reload_study_data(spec, features, clinical, _splits(home, spec.name)), prepared


@contextmanager
def _fail_on_study_data_error(context: dg.AssetExecutionContext):
    """A ``StudyDataError`` (data the study cannot use, e.g. too few patients of a class) fails
    the asset with its message as the failure description, not only as a Python traceback."""
    from assets.studies.split import StudyDataError

    try:
        yield
    except StudyDataError as error:
        context.log.error(str(error))
        raise dg.Failure(
            description=str(error), metadata={"error": dg.MetadataValue.text(str(error))}
        ) from error


def _checks(table: str, key: dg.AssetKey) -> list:
    """The table's GX suite (quality/suites/<table>.yaml) as a blocking check on this study's asset."""
    from quality.checks import suite_check

    return [suite_check(table, asset=key)]


def study_assets(spec) -> tuple[list, list]:
    """(assets, checks) of one study."""
    name = spec.name

    def key(leaf: str) -> dg.AssetKey:
        return dg.AssetKey([name, leaf])

    upstream = [dg.AssetKey("clinical")]
    if spec.features.radiomics is not None:
        upstream.append(dg.AssetKey("radiomics_features"))
    if spec.features.external:
        upstream.append(dg.AssetKey("external_features"))
    cohort_file = Path(spec.cohort_sql) if spec.cohort_sql else None
    if cohort_file is not None and cohort_file.parent.name == "cohorts":
        # lineage tables -> cohort -> study: the cohort's own asset (one per sql/cohorts file)
        upstream.append(dg.AssetKey(cohort_file.stem))

    @dg.asset(
        key=key("study_splits"),
        group_name=GROUP,
        kinds=KINDS,
        deps=upstream,
        description=f"{name}: patients split into train / internal_validation / external_validation "
        f"(seed {spec.split.seed}); excluded patients counted by reason.",
    )
    def study_splits(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        from assets.studies.data import prepare_study
        from assets.studies.lake_inputs import study_inputs
        from assets.studies.split import cohort_counts, split_patients
        from assets.studies.store import save_inputs

        home = lake.lake()
        with _fail_on_study_data_error(context):
            features, clinical, info = study_inputs(home, spec)
            if spec.is_classification:
                _, splits, excluded = prepare_study(spec, features, clinical)
            else:
                splits, excluded = split_patients(clinical.select("patient_key", "center_id"), spec)
        if "not_in_cohort" in info:
            excluded = {"not_in_cohort": info["not_in_cohort"], **excluded}
        save_inputs(home, spec, features, clinical, {**info, "excluded": excluded})
        home.write_part("study_splits", name, splits)
        for reason, count in excluded.items():
            if count:
                context.log.warning(f"{name}: {count} patient(s) excluded: {reason}")
        stats = {
            "patients": splits.height,
            "excluded": excluded,
            "case_rules": info.get("case_rules", {}),
        }
        return table_result(
            home,
            "study_splits",
            splits,
            stats,
            extra={"cohorts": dg.MetadataValue.md(_table(cohort_counts(splits)))},
        )

    assets = [study_splits]
    checks = _checks("study_splits", study_splits.key)
    if spec.is_classification:
        classification, more_checks = _classification_assets(spec, key, study_splits.key)
        assets += classification
        checks += more_checks
    if spec.survival:
        assets.append(_survival_asset(spec, key, study_splits.key))
        checks += _checks("survival_results", key("survival_results"))
    paper, paper_checks = _paper_assets(spec, key, [a.key for a in assets])
    assets += paper
    checks += paper_checks
    assets.append(_report_asset(spec, key, [a.key for a in assets]))
    return assets, checks


def _classification_assets(spec, key, splits_key: dg.AssetKey) -> tuple[list, list]:
    name = spec.name

    @dg.asset(
        key=key("models"),
        group_name=GROUP,
        kinds={"python", "scikit-learn"},
        deps=[splits_key],
        description=f"{name}: {', '.join(spec.models)} tuned by cross-validation on training only; "
        "versioned pipelines under models/<study>/<version>/.",
    )
    def models(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        import polars as pl

        from assets.studies.fit import train_study
        from assets.studies.store import write_current, write_provenance

        home = lake.lake()
        with _fail_on_study_data_error(context):
            data, _ = _study_data(home, spec)
            trained = train_study(spec, data, _splits(home, name), home.home, n_jobs=_n_jobs())
        for note in trained.notes:
            context.log.warning(note)
        write_provenance(home, spec, trained.model_version)
        write_current(home, spec, trained.model_version)
        home.write_part(
            "model_versions", f"{name}-{trained.model_version}", trained.model_versions_row
        )
        summary = pl.DataFrame(
            {
                "model": list(trained.fitted),
                "cv_auc": [m.cv_auc for m in trained.fitted.values()],
                "threshold": [m.threshold for m in trained.fitted.values()],
                "best_params": [str(m.best_params) for m in trained.fitted.values()],
                "features": [len(m.selected_features) for m in trained.fitted.values()],
            }
        )
        trained_at = trained.trained_at.isoformat() if trained.trained_at else None
        if trained.retrained:
            context.log.info(
                f"{name}: retrained: True: fitted model version {trained.model_version} "
                f"in {trained.version_dir}"
            )
        else:
            context.log.info(
                f"{name}: retrained: False: model version {trained.model_version} already complete "
                f"in {trained.version_dir} (trained at {trained_at}): loaded, not refitted"
            )
        return table_result(
            home,
            "model_versions",
            trained.model_versions_row,
            {
                "model_version": trained.model_version,
                "artifact_path": str(trained.version_dir),
                "retrained": trained.retrained,
                "trained_at": trained_at,
                "cv_folds": {m: getattr(f, "cv_folds", None) for m, f in trained.fitted.items()},
                "notes": trained.notes,
            },
            extra={"models": dg.MetadataValue.md(_table(summary))},
        )

    @dg.asset(
        key=key("model_metrics"),
        group_name=GROUP,
        kinds=KINDS,
        deps=[models.key],
        description=f"{name}: AUC (stratified bootstrap CI and DeLong CI), threshold metrics at "
        "Youden's J, Brier; best model by the study's rule; combined model; DeLong test.",
    )
    def model_metrics(
        context: dg.AssetExecutionContext, lake: LakeResource
    ) -> dg.MaterializeResult:
        import polars as pl

        from assets.studies.evaluate import evaluate_study
        from assets.studies.pipeline import training_notes
        from assets.studies.plots import nomogram_png, roc_png
        from assets.studies.report import METHODS_TEXT, ci_flag_table, discrimination_table
        from assets.studies.store import load_fitted, read_current, save_evaluation

        home = lake.lake()
        version, version_dir = read_current(home, spec)
        fitted, _ = load_fitted(version_dir)
        raw = load_fitted(version_dir / "raw")[0] if (version_dir / "raw").is_dir() else {}
        with _fail_on_study_data_error(context):
            data, prepared = _study_data(home, spec)
            evaluation = evaluate_study(spec, data, _splits(home, name), fitted, version, raw)
        notes = [*data.notes, *training_notes(fitted)]
        save_evaluation(version_dir, evaluation, prepared.get("excluded", {}), notes)
        report_dir = home.reports_dir / name
        roc = roc_png(report_dir, evaluation.predictions, evaluation.metrics)
        nomogram = (
            nomogram_png(report_dir, evaluation.nomogram)
            if evaluation.nomogram is not None
            else None
        )
        home.write_part("model_metrics", f"{name}-{version}", evaluation.metrics)
        for warning in evaluation.warnings:
            context.log.warning(warning)
        auc = discrimination_table(evaluation.metrics, ("auc", "auc_delong"))
        flagged = ci_flag_table(evaluation.metrics)
        comparison = evaluation.metrics.filter(
            pl.col("metric").is_in(["auc_difference", "delong_z", "delong_p"])
        )
        return table_result(
            home,
            "model_metrics",
            evaluation.metrics,
            {
                "model_version": version,
                "best_model": evaluation.best_model,
                "best_model_rule": evaluation.best_model_rule,
                "ci_flags": dict(flagged.group_by("ci_flag").len().sort("ci_flag").iter_rows()),
            },
            extra={
                "ci_methods": dg.MetadataValue.md(METHODS_TEXT),
                "flagged_intervals": dg.MetadataValue.md(_table(flagged)),
                "auc": dg.MetadataValue.md(_table(auc)),
                "delong_combined_vs_best": dg.MetadataValue.md(
                    _table(
                        comparison.select("model", "cohort", "metric", "value", "ci_low", "ci_high")
                    )
                ),
                "roc": dg.MetadataValue.md(_image(roc)),
                "nomogram": dg.MetadataValue.md(_image(nomogram)),
            },
        )

    @dg.asset(
        key=key("explanations"),
        group_name=GROUP,
        kinds={"python", "xgboost"},
        deps=[models.key],
        description=f"{name}: SHAP values (XGBoost pred_contribs), impurity importances, "
        "coefficients; top features and summary plots.",
    )
    def explanations(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        from assets.studies.explain import explain_models, top_features_table
        from assets.studies.plots import explanation_pngs
        from assets.studies.store import load_fitted, read_current, save_explanations

        home = lake.lake()
        version, version_dir = read_current(home, spec)
        fitted, _ = load_fitted(version_dir)
        data, _ = _study_data(home, spec)
        explained = explain_models(spec, fitted, data, _splits(home, name))
        top = top_features_table(explained)
        save_explanations(version_dir, top)
        paths = explanation_pngs(home.reports_dir / name, explained)
        extra = {
            f"plot_{k.removeprefix('explain_')}": dg.MetadataValue.md(_image(p))
            for k, p in paths.items()
        }
        return dg.MaterializeResult(
            metadata={
                "model_version": version,
                "top_features": dg.MetadataValue.md(_table(top.head(75))),
                **extra,
            }
        )

    @dg.asset(
        key=key("calibration"),
        group_name=GROUP,
        kinds=KINDS,
        deps=[model_metrics.key],
        description=f"{name}: calibration curves (deciles), slope and intercept, Hosmer-Lemeshow per model x cohort.",
    )
    def calibration(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        import polars as pl

        from assets.studies.calibration import calibrate_study
        from assets.studies.plots import calibration_png
        from assets.studies.store import read_current, save_calibration

        home = lake.lake()
        version, version_dir = read_current(home, spec)
        predictions = pl.read_parquet(version_dir / "predictions.parquet")
        curves, rows = calibrate_study(spec, predictions, version)
        save_calibration(version_dir, curves, rows)
        png = calibration_png(home.reports_dir / name, predictions, curves)
        home.write_part("model_metrics", f"{name}-{version}-calibration", rows)
        return table_result(
            home,
            "model_metrics",
            rows,
            {"model_version": version},
            extra={"calibration": dg.MetadataValue.md(_image(png))},
        )

    @dg.asset(
        key=key("decision_curves"),
        group_name=GROUP,
        kinds=KINDS,
        deps=[model_metrics.key],
        description=f"{name}: decision curve analysis (net benefit vs treat-all / treat-none) per cohort.",
    )
    def decision_curves(
        context: dg.AssetExecutionContext, lake: LakeResource
    ) -> dg.MaterializeResult:
        import polars as pl

        from assets.studies.calibration import dca_table
        from assets.studies.plots import decision_curve_png
        from assets.studies.store import read_current, save_decision_curves

        home = lake.lake()
        version, version_dir = read_current(home, spec)
        predictions = pl.read_parquet(version_dir / "predictions.parquet")
        dca = dca_table(predictions)
        save_decision_curves(version_dir, dca)
        png = decision_curve_png(home.reports_dir / name, predictions, dca)
        return dg.MaterializeResult(
            metadata={
                "model_version": version,
                "rows": dca.height,
                "decision_curves": dg.MetadataValue.md(_image(png)),
            }
        )

    checks = _checks("model_versions", models.key) + _checks("model_metrics", model_metrics.key)
    checks.append(_auc_drop_check(spec, model_metrics.key))
    return [models, model_metrics, explanations, calibration, decision_curves], checks


def _auc_drop_check(spec, metrics_key: dg.AssetKey) -> dg.AssetChecksDefinition:
    """WARN (not blocking): the best model's external AUC fell by more than ``auc_drop_warning``
    from the previous model version to the current one (``assets.studies.history``)."""
    name = spec.name

    @dg.asset_check(
        asset=metrics_key,
        name="auc_drop_vs_previous_version",
        blocking=False,
        description=f"{name}: warns when the best model's external_validation AUC (each "
        "external_validation* cohort) dropped by more than the study's auc_drop_warning from the "
        "previous model version (by trained_at) to the current one.",
    )
    def auc_drop_check(
        context: dg.AssetCheckExecutionContext, lake: LakeResource
    ) -> dg.AssetCheckResult:
        from assets.studies.history import auc_drop_outcome, previous_version
        from assets.studies.store import read_current, version_best_model

        home = lake.lake()
        latest, _ = read_current(home, spec)
        previous = previous_version(home.read_table("model_versions"), name, latest)
        outcome = auc_drop_outcome(
            home.read_table("model_metrics"),
            study=name,
            latest_version=latest,
            latest_model=version_best_model(home, spec, latest),
            previous_version=previous,
            previous_model=version_best_model(home, spec, previous) if previous else None,
            threshold=spec.auc_drop_warning,
        )
        (context.log.info if outcome.passed else context.log.warning)(f"{name}: {outcome.note}")
        return dg.AssetCheckResult(
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.WARN,
            description=outcome.note,
            metadata=outcome.metadata(),
        )

    return auc_drop_check


def _survival_asset(spec, key, splits_key: dg.AssetKey):
    name = spec.name
    deps = [splits_key] + ([key("model_metrics")] if spec.is_classification else [])

    @dg.asset(
        key=key("survival_results"),
        group_name=GROUP,
        kinds={"python", "lifelines"},
        deps=deps,
        description=f"{name}: Kaplan-Meier, log-rank, Cox and C-index for "
        f"{', '.join(e.endpoint for e in spec.survival)} per cohort (groups: e.g. the best model's predicted label).",
    )
    def survival_results(
        context: dg.AssetExecutionContext, lake: LakeResource
    ) -> dg.MaterializeResult:
        import json

        import pandas as pd
        import polars as pl

        from assets.studies.store import load_inputs, study_version, survival_frame
        from assets.studies.survival import run_survival

        home = lake.lake()
        _, clinical, _ = load_inputs(home, spec)
        splits = _splits(home, name)
        predictions = best = None
        version, version_dir = study_version(home, spec)
        if spec.is_classification:
            predictions = pl.read_parquet(version_dir / "predictions.parquet")
            best = json.loads((version_dir / "summary.json").read_text())["best_model"]
        frame = survival_frame(spec, clinical, splits, predictions, best)
        out_dir = home.reports_dir / name / "survival"
        tables, figures = [], []
        for entry in spec.survival:
            with _fail_on_study_data_error(context):
                rows, paths = run_survival(
                    frame,
                    entry.endpoint,
                    entry.time,
                    entry.event,
                    entry.groups,
                    entry.cox_terms,
                    entry.times,
                    "cohort",
                    entry.cutoff,
                    entry.reference_levels,
                    out_dir,
                    agreement=entry.agreement,
                    n_bootstrap=spec.bootstrap,
                    seed=spec.split.seed,
                )
            tables.append(rows)
            figures += [str(p) for p in paths]
        table = pl.from_pandas(pd.concat(tables, ignore_index=True)).with_columns(
            pl.lit(name).alias("study"),
            pl.lit(version).alias("model_version"),
            pl.col("ci_flag", "ci_note").cast(pl.String),
        )
        table = table.select(
            "study",
            "model_version",
            *[c for c in table.columns if c not in ("study", "model_version")],
        )
        home.write_part("survival_results", f"{name}-{version}", table)
        (out_dir / "figures.json").write_text(json.dumps(figures))
        return table_result(
            home, "survival_results", table, {"model_version": version, "figures": figures}
        )

    return survival_results


def _report_asset(spec, key, deps: list[dg.AssetKey]):
    name = spec.name

    @dg.asset(
        key=key("report"),
        group_name=GROUP,
        kinds={"html"},
        deps=deps,
        description=f"{name}: the self-contained HTML report reports/{name}/report.html.",
    )
    def report(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        import json

        import polars as pl

        from assets.studies.report import (
            survival_section,
            write_study_report,
            write_survival_report,
        )
        from assets.studies.store import load_inputs, load_study_result, read_current

        home = lake.lake()
        splits = _splits(home, name)
        path = home.reports_dir / name / "report.html"
        extra = []
        if spec.survival:
            part = home.table_dir("survival_results")
            rows = (
                pl.concat(
                    [pl.read_parquet(p) for p in sorted(part.glob(f"{name}-*.parquet"))],
                    how="diagonal_relaxed",
                )
                if part.is_dir()
                else pl.DataFrame()
            )
            listing = home.reports_dir / name / "survival" / "figures.json"
            figures = (
                [Path(p) for p in json.loads(listing.read_text())] if listing.is_file() else []
            )
            if spec.is_classification:
                version, _ = read_current(home, spec)
                rows = rows.filter(pl.col("model_version") == version) if rows.height else rows
            extra.append(survival_section(rows, figures))
        extra += _paper_report_sections(home, spec)
        if spec.is_classification:
            _, version_dir = read_current(home, spec)
            result = load_study_result(home, spec, version_dir, splits)
            write_study_report(result, path, extra_sections=extra)
        else:
            _, _, prepared = load_inputs(home, spec)
            write_survival_report(spec, splits, prepared.get("excluded", {}), extra, path)
        # the catalog was built right after ingest, before this study wrote its tables: DuckDB 2
        # re-binds a view to new columns, DuckDB 1.x refuses ("contents of view were altered"),
        # so the study's last step builds the catalog again (the same atomic swap)
        from dagster_project.catalog import build_catalog

        refreshed = build_catalog(home)
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "bytes": path.stat().st_size,
                "catalog_views": len(refreshed.table_views) + len(refreshed.sql_views),
            }
        )

    return report


def invalid_study_asset(stem: str, message: str):
    """An asset that fails with a study YAML's validation error (so the UI shows it)."""

    @dg.asset(
        key=dg.AssetKey([stem, "invalid_study"]),
        group_name=GROUP,
        description=f"INVALID study file: {message}",
    )
    def invalid_study(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        raise dg.Failure(description=message)

    return invalid_study


def build_study_defs(studies_dir: Path) -> dg.Definitions:
    """The Definitions of every study in ``studies_dir``."""
    from assets.studies.lake_inputs import discover_studies

    studies, errors = discover_studies(studies_dir)
    assets, checks = [], []
    for spec in studies.values():
        more_assets, more_checks = study_assets(spec)
        assets += more_assets
        checks += more_checks
    assets += [invalid_study_asset(stem, message) for stem, message in errors.items()]
    return dg.Definitions(assets=assets, asset_checks=checks)


def _table_schemas() -> dict:
    """The studies' tables (key columns, typed): they exist, empty, in a lake without a study."""
    import polars as pl

    from assets.studies.metrics import METRICS_SCHEMA
    from assets.studies.paper import checklists, flow, references, table_one
    from assets.studies.split import SPLITS_SCHEMA
    from assets.studies.versioning import MODEL_VERSIONS_SCHEMA

    survival = ("study", "model_version", "endpoint", "cohort", "analysis", "term")
    return {
        "table_one": table_one.SCHEMA,
        "patient_flow": flow.SCHEMA,
        "reporting_checklist": checklists.SCHEMA,
        "study_references": references.SCHEMA,
        "study_splits": SPLITS_SCHEMA,
        "model_versions": MODEL_VERSIONS_SCHEMA,
        "model_metrics": METRICS_SCHEMA,
        "survival_results": {
            **dict.fromkeys(survival, pl.String),
            **dict.fromkeys(("estimate", "ci_low", "ci_high", "p_value"), pl.Float64),
            **dict.fromkeys(("ci_flag", "ci_note"), pl.String),
            # every other column a study writes (results.RESULT_COLUMNS): a catalog view made
            # over the placeholder keeps its types when the study's part lands (DuckDB 1.x checks)
            **dict.fromkeys(("statistic", "df"), pl.Float64),
            **dict.fromkeys(("n", "events"), pl.Int64),
            "note": pl.String,
            **dict.fromkeys(("coef", "se"), pl.Float64),
        },
    }


def _paper_report_sections(home: Lake, spec) -> list:
    """Patient flow, Table 1, checklists and the model card link (assets.studies.paper)."""
    from assets.studies.paper.sections import paper_sections
    from assets.studies.store import study_version

    version, _ = study_version(home, spec)
    return paper_sections(home, spec, version)


def _paper_assets(spec, key, upstream: list[dg.AssetKey]) -> tuple[list, list]:
    """From lake to paper: ``table_one``, ``patient_flow`` (+ flow diagram),
    ``reporting_checklist`` (TRIPOD+AI, CLEAR; + CSV) and, for a classification study, the
    printable ``model_card`` (assets.studies.paper)."""
    name = spec.name
    splits_key = key("study_splits")
    version_key = [key("models")] if spec.is_classification else [splits_key]
    meta = {"funding": ", ".join(spec.funding), "publications": ", ".join(spec.publications)}
    paper_meta = {k: v for k, v in meta.items() if v}  # grant -> study -> paper links in the UI

    @dg.asset(
        key=key("table_one"),
        group_name=GROUP,
        kinds=KINDS,
        deps=[splits_key, *version_key],
        description=f"{name}: Table 1, clinical characteristics per cohort (train, internal, each "
        "external center) with missing counts and between-cohort tests (tableone).",
    )
    def table_one(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        from assets.studies.paper.inputs import paper_inputs
        from assets.studies.paper.table_one import RULES_TEXT, build_table_one, table_one_wide
        from assets.studies.store import study_version

        home = lake.lake()
        splits, clinical, _ = paper_inputs(home, spec)
        version, _ = study_version(home, spec)
        table, skipped = build_table_one(splits, clinical, name, version)
        home.write_part("table_one", f"{name}-{version}", table)
        return table_result(
            home,
            "table_one",
            table,
            {"model_version": version, "skipped_columns": skipped},
            extra={
                "table_one": dg.MetadataValue.md(_table(table_one_wide(table))),
                "rules": dg.MetadataValue.text(RULES_TEXT),
            },
        )

    @dg.asset(
        key=key("patient_flow"),
        group_name=GROUP,
        kinds={"python", "parquet", "png"},
        deps=[splits_key, dg.AssetKey("quarantine")],
        description=f"{name}: patient flow from the clinical records landed through quarantine, "
        "cohort SQL and eligibility to each cohort; flow diagram reports/<study>/patient_flow.png.",
    )
    def patient_flow(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        from assets.studies.paper.flow import build_flow, check_flow, save_flow_figure
        from assets.studies.paper.inputs import paper_inputs
        from dagster_project.quarantine import read_quarantine

        home = lake.lake()
        splits, _, prepared = paper_inputs(home, spec)
        flow = build_flow(
            spec, home.read_table("clinical"), read_quarantine(home), prepared, splits
        )
        home.write_part("patient_flow", name, flow)
        png = save_flow_figure(flow, home.reports_dir / name, title=f"Patient flow: {name}")
        landed, excluded, included = check_flow(flow)
        return table_result(
            home,
            "patient_flow",
            flow,
            {"landed": landed, "excluded": excluded, "included": included},
            extra={"flow_diagram": dg.MetadataValue.md(_image(png))},
        )

    checklist_deps = [*upstream, table_one.key, patient_flow.key]
    checklist_deps += [dg.AssetKey("grants")] if spec.funding else []
    checklist_deps += [dg.AssetKey("publications")] if spec.publications else []

    @dg.asset(
        key=key("reporting_checklist"),
        group_name=GROUP,
        kinds={"python", "parquet", "csv"},
        deps=checklist_deps,
        description=f"{name}: TRIPOD+AI (2024) and CLEAR (2023) items filled from the lake, each "
        "with its value and source, or 'author to complete'; reports/<study>/reporting_checklist.csv.",
        metadata=paper_meta,
    )
    def reporting_checklist(
        context: dg.AssetExecutionContext, lake: LakeResource
    ) -> dg.MaterializeResult:
        from assets.studies.paper.checklists import checklist_summary, fill_checklists
        from assets.studies.paper.inputs import paper_facts

        home = lake.lake()
        version, _, _, facts = paper_facts(home, spec)
        table = fill_checklists(facts, name, version)
        home.write_part("reporting_checklist", f"{name}-{version}", table)
        csv_path = home.reports_dir / name / "reporting_checklist.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        table.write_csv(csv_path)
        return table_result(
            home,
            "reporting_checklist",
            table,
            {"model_version": version, "csv": str(csv_path)},
            extra={"by_status": dg.MetadataValue.md(_table(checklist_summary(table)))},
        )

    @dg.asset(
        key=key("study_references"),
        group_name=GROUP,
        kinds=KINDS,
        deps=[
            dg.AssetKey(t)
            for t, refs in (("grants", spec.funding), ("publications", spec.publications))
            if refs
        ],
        description=f"{name}: the grants that fund the study and the papers that report it "
        "(study YAML funding: / publications:) -> lake study_references; views grant_outputs, "
        "paper_provenance, study_funding.",
        metadata=paper_meta,
    )
    def study_references(
        context: dg.AssetExecutionContext, lake: LakeResource
    ) -> dg.MaterializeResult:
        from assets.studies.paper.references import reference_rows, resolve_references

        home = lake.lake()
        table = reference_rows(spec)
        home.write_part("study_references", name, table)
        resolved = resolve_references(
            table, home.read_table("grants"), home.read_table("publications")
        )
        for row in resolved.filter(~resolved["found"]).iter_rows(named=True):
            context.log.warning(
                f"{name}: {row['kind']} {row['reference']} (study YAML) is not in the lake's "
                f"{'grants' if row['kind'] == 'grant' else 'publications'} table"
            )
        return table_result(
            home,
            "study_references",
            table,
            {"unresolved": int((~resolved["found"]).sum())},
            extra={"links": dg.MetadataValue.md(_table(resolved))},
        )

    assets = [table_one, patient_flow, reporting_checklist, study_references]
    checks = (
        _checks("table_one", table_one.key)
        + _checks("patient_flow", patient_flow.key)
        + _checks("reporting_checklist", reporting_checklist.key)
        + _checks("study_references", study_references.key)
    )
    if spec.is_classification:
        assets.append(_model_card_asset(spec, key, [reporting_checklist.key, *upstream]))
    return assets, checks


def _model_card_asset(spec, key, deps: list[dg.AssetKey]):
    name = spec.name

    @dg.asset(
        key=key("model_card"),
        group_name=GROUP,
        kinds={"html"},
        deps=deps,
        description=f"{name}: the printable model card of the current version (intended use, data "
        "manifest, metrics per cohort, calibration, known limits): reports/<study>/model_card.html.",
    )
    def model_card(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        import json
        import shutil

        import polars as pl

        from assets.studies.paper.inputs import paper_facts
        from assets.studies.paper.model_card import model_card_sections, write_model_card

        home = lake.lake()
        version, version_dir, splits, facts = paper_facts(home, spec)
        metrics = home.read_table("model_metrics").filter(
            (pl.col("study") == name) & (pl.col("model_version") == version)
        )
        summary = json.loads((version_dir / "summary.json").read_text(encoding="utf-8"))
        hashes = json.loads((version_dir / "hashes.json").read_text(encoding="utf-8"))
        figures = {p.stem: p for p in sorted((home.reports_dir / name).glob("*.png"))}
        sections = model_card_sections(
            spec, version, splits, metrics, facts, summary, hashes.get("data", {}), figures
        )
        path = write_model_card(
            home.reports_dir / name / "model_card.html", spec, version, sections
        )
        shutil.copyfile(path, version_dir / "model_card.html")  # kept with its version
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "model_version": version,
                "intended_use": spec.intended_use or "author to complete",
            }
        )

    return model_card


TABLE_SCHEMAS = _table_schemas()
defs = build_study_defs(Lake.at(create=False).studies_dir)
