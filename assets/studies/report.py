"""Stage 7, the report (asset ``report``): one self-contained HTML file (tables and PNGs
embedded as base64).

``write_report(path, title, sections)`` writes any list of ``Section``s; ``write_study_report``
builds the sections of a ``StudyResult`` (cohorts and exclusions, discrimination with both CI
methods, the best model and its rule, the combined model and nomogram, calibration, decision
curves, explanations, methods). The Dagster layer writes it to ``reports/<study>/report.html``.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from dagster_project.lake import write_file_atomic

if TYPE_CHECKING:
    from assets.studies.spec import StudySpec

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.82rem;margin:.6rem 0}th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5rem 0}
.note{color:#555;font-size:.85rem}td.text{text-align:left}.warn{color:#a33}pre{background:#f7f7f7;padding:.6rem;font-size:.8rem;overflow:auto}
@media print{body{margin:0;max-width:none;font-size:9pt}h2{break-after:avoid}table,figure,img{break-inside:avoid}pre{white-space:pre-wrap}a{color:inherit}}
"""


@dataclass
class StudyResult:
    """Every stage's result of one classification study: what the report (stage 7) is made of.

    ``run.run_study`` builds it in one process; ``store.load_study_result`` rebuilds it from a
    version folder for the ``report`` asset.
    """

    spec: StudySpec
    model_version: str
    code_version: str
    data_hashes: dict[str, str]
    splits: pl.DataFrame
    excluded: dict[str, int]
    fitted: dict[str, Any]
    best_model: str
    best_model_rule: str
    predictions: pl.DataFrame
    metrics: pl.DataFrame  # model_metrics rows (discrimination, calibration, comparison)
    calibration_curves: pl.DataFrame
    dca: pl.DataFrame
    explanations: dict[str, Any]
    top_features: pl.DataFrame
    combined: Any | None = None
    nomogram: Any | None = None
    figures: dict[str, Path] = field(default_factory=dict)
    artifact_dir: Path | None = None
    report_path: Path | None = None
    model_versions_row: pl.DataFrame | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)  # plain text, escaped when rendered
    tables: list[tuple[str, pl.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)
    preformatted: str | None = None


def html_table(frame: pl.DataFrame, digits: int = 3) -> str:
    """An HTML table of a polars frame, floats rounded to ``digits``."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.iter_rows():
        cells = []
        for value in row:
            if value is None:
                text = ""
            elif isinstance(value, float):
                text = (
                    f"{value:.{digits}f}"
                    if abs(value) >= 10 ** (-digits) or value == 0
                    else f"{value:.2e}"
                )
            else:
                text = str(value)
            css = " class='text'" if isinstance(value, str) and len(value) > 24 else ""
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def render_report(title: str, sections: list[Section], subtitle: str = "") -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
    ]
    parts.append(f"<h1>{html.escape(title)}</h1>")
    if subtitle:
        parts.append(f"<p class='note'>{html.escape(subtitle)}</p>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        for paragraph in section.paragraphs:
            css = " class='warn'" if paragraph.startswith("WARNING") else ""
            parts.append(f"<p{css}>{html.escape(paragraph)}</p>")
        for caption, table in section.tables:
            if caption:
                parts.append(f"<p class='note'>{html.escape(caption)}</p>")
            parts.append(html_table(table))
        for caption, path in section.figures:
            if Path(path).exists():
                parts.append(
                    f"<figure>{_image(path)}<figcaption class='note'>{html.escape(caption)}</figcaption></figure>"
                )
        if section.preformatted:
            parts.append(f"<pre>{html.escape(section.preformatted)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, title: str, sections: list[Section], subtitle: str = "") -> Path:
    data = render_report(title, sections, subtitle).encode("utf-8")
    return write_file_atomic(Path(path), lambda handle: handle.write(data), 0o644)


# the mark a flagged estimate carries in the report's tables (assets.studies.ci_flags)
FLAG_MARKS = {
    "estimate_outside_ci": "†",
    "degenerate_ci": "‡",
    "no_ci": "*",
    "not_estimable": "n/e",
}


def _ci_text(value: Any, low: Any, high: Any, flag: str | None = None) -> str:
    mark = FLAG_MARKS.get(flag, "") if flag else ""
    if value is None:
        return mark
    if low is None or high is None:
        return f"{value:.3f}{mark}"
    return f"{value:.3f} [{low:.3f}-{high:.3f}]{mark}"


def discrimination_table(metrics: pl.DataFrame, metric_names: tuple[str, ...]) -> pl.DataFrame:
    """Model x cohort rows with 'estimate [CI]' per metric (the paper's Table 2); a flagged
    interval carries its ``FLAG_MARKS`` mark."""
    wanted = metrics.filter(pl.col("metric").is_in(list(metric_names)))
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in wanted.iter_rows(named=True):
        key = (r["model"], r["cohort"])
        row = rows.setdefault(
            key,
            {"model": r["model"], "cohort": r["cohort"], "n": r["n"], "positives": r["n_positive"]},
        )
        row[r["metric"]] = _ci_text(r["value"], r["ci_low"], r["ci_high"], r.get("ci_flag"))
    columns = ["model", "cohort", "n", "positives", *metric_names]
    return pl.DataFrame(
        [{c: row.get(c, "") for c in columns} for row in rows.values()],
        schema={c: (pl.Int64 if c in ("n", "positives") else pl.String) for c in columns},
    )


METHODS_TEXT = (
    "Every preprocessing, harmonization and selection step is fitted on the training cohort only. "
    "Best model: highest cross-validated training AUC (nested CV: tuning repeated inside every "
    "outer fold); validation cohorts are never used to choose. "
    "AUC 95% CI: stratified bootstrap (positives and negatives resampled separately), percentile "
    "method, seeded; 'auc_delong': DeLong variance (fast midrank algorithm, Sun & Xu 2014), normal "
    "CI clipped to [0, 1]. Threshold metrics at Youden's J of the out-of-fold training "
    "probabilities (positive when probability >= threshold; the combined model's too), bootstrap "
    "CIs from the same resamples, PPV/NPV from plain (non-stratified) resamples. Calibration "
    "slope/intercept: logistic recalibration, Wald CIs, slope 'not estimable' under separation. "
    "Hosmer-Lemeshow: 10 quantile groups, df = g - 2 on training, g on validation cohorts. "
    "External centers: per-center AUC and calibration-in-the-large; heterogeneity by a "
    "DerSimonian-Laird random-effects meta-analysis of logit AUCs (I^2, tau^2). Decision curves: "
    "net benefit = TP/n - FP/n * pt/(1 - pt). "
    "Interval flags (ci_flag, ci_note): an undefined estimate, a missing or zero-width interval, "
    "bootstrap resamples with fewer than 5 distinct values, or an estimate outside its percentile "
    "interval (beyond float precision) is said in the row; marks: "
    + ", ".join(f"{mark} {flag}" for flag, mark in FLAG_MARKS.items())
    + "."
)


def ci_flag_table(rows: pl.DataFrame, keys: tuple[str, ...] = ("model", "cohort", "metric")):
    """The rows of a metrics (or survival) table whose interval carries a flag or a note."""
    value = "value" if "value" in rows.columns else "estimate"
    columns = [*keys, value, "ci_low", "ci_high", "ci_flag", "ci_note"]
    if "ci_flag" not in rows.columns:  # a model version written before the flags existed
        return pl.DataFrame(schema={c: pl.String for c in columns})
    flagged = rows.filter(pl.col("ci_flag").is_not_null() | pl.col("ci_note").is_not_null())
    return flagged.select(columns)


def ci_flag_paragraphs(flagged: pl.DataFrame) -> list[str]:
    """What each flag present in ``flagged`` means (``ci_flags.CI_FLAG_TEXT``), with its mark."""
    from assets.studies.ci_flags import CI_FLAG_TEXT, CI_FLAGS

    present = set(flagged["ci_flag"].drop_nulls().to_list()) if flagged.height else set()
    if not present:
        return []
    count = flagged["ci_flag"].drop_nulls().len()
    lines = [
        f"{count} estimate(s) below carry a flag on their interval (column ci_flag of "
        "model_metrics / survival_results; ci_note says why, with the numbers). These are "
        "properties of the interval method on this cohort, not errors in the data:"
    ]
    lines += [
        f"{FLAG_MARKS[flag]} {flag}: {CI_FLAG_TEXT[flag]}" for flag in CI_FLAGS if flag in present
    ]
    return lines


def study_sections(result: Any) -> list[Section]:
    """The sections of a ``StudyResult``."""
    from assets.studies.split import cohort_counts

    spec = result.spec
    metrics = result.metrics
    figures = result.figures
    excluded = pl.DataFrame(
        {"reason": list(result.excluded), "patients": list(result.excluded.values())}
    )
    sections = [
        Section(
            "Cohorts",
            [
                f"Development centers {list(spec.split.development_centers)} split "
                f"{1 - spec.split.internal_validation_fraction:g}:{spec.split.internal_validation_fraction:g} "
                f"(stratified on {spec.label}, seed {spec.split.seed}); external validation centers "
                f"{list(spec.split.external_validation_centers)} kept whole."
            ],
            tables=[
                ("Patients per cohort and center", cohort_counts(result.splits)),
                ("Excluded patients by reason", excluded),
            ],
        ),
        Section(
            "Discrimination",
            [f"Best radiomics model: {result.best_model} (rule: {result.best_model_rule})."]
            + [f"WARNING: {w}" for w in result.warnings],
            tables=[
                (
                    "AUC with bootstrap CI and with DeLong CI",
                    discrimination_table(metrics, ("auc", "auc_delong", "cv_auc")),
                ),
                (
                    "Threshold metrics (bootstrap CIs) and Brier score",
                    discrimination_table(
                        metrics,
                        (
                            "threshold",
                            "accuracy",
                            "sensitivity",
                            "specificity",
                            "ppv",
                            "npv",
                            "brier",
                        ),
                    ),
                ),
            ],
            figures=[("ROC curves per cohort", figures["roc"])] if "roc" in figures else [],
        ),
    ]
    flagged = ci_flag_table(metrics)
    if flagged.height:
        sections.append(
            Section(
                "Intervals to read with care",
                ci_flag_paragraphs(flagged),
                tables=[("Flagged or annotated intervals (discrimination, calibration)", flagged)],
            )
        )
    if result.combined is not None:
        comparison = metrics.filter(
            pl.col("metric").is_in(["auc_difference", "delong_z", "delong_p"])
        )
        tables = [
            (
                "Combined model coefficients (unpenalised logistic regression, Wald CIs)",
                result.combined.coefficients,
            ),
            (
                "DeLong test, combined vs best radiomics model",
                comparison.select("model", "cohort", "metric", "value", "ci_low", "ci_high"),
            ),
        ]
        if result.nomogram is not None:
            tables.append(("Nomogram points", result.nomogram.points))
        sections.append(
            Section(
                "Combined model and nomogram",
                [
                    f"Radiomics score (logit of the {result.best_model} probability) plus clinical columns {list(spec.features.clinical)}."
                ],
                tables=tables,
                figures=[("Nomogram", figures["nomogram"])] if "nomogram" in figures else [],
            )
        )
    calibration = metrics.filter(
        pl.col("metric").str.starts_with("calibration") | pl.col("metric").str.starts_with("hosmer")
    )
    sections.append(
        Section(
            "Calibration and decision curves",
            tables=[
                (
                    "Calibration slope and intercept (Wald CI), Hosmer-Lemeshow",
                    discrimination_table(
                        calibration,
                        (
                            "calibration_slope",
                            "calibration_intercept",
                            "hosmer_lemeshow_chi2",
                            "hosmer_lemeshow_p",
                        ),
                    ),
                )
            ],
            figures=[
                (c, figures[k])
                for k, c in (
                    ("calibration", "Calibration curves (decile bins)"),
                    ("decision_curve", "Decision curves"),
                )
                if k in figures
            ],
        )
    )
    sections.append(
        Section(
            "Explanations",
            tables=[("Top features per model", result.top_features)]
            if not result.top_features.is_empty()
            else [],
            figures=[
                (name.removeprefix("explain_"), path)
                for name, path in figures.items()
                if name.startswith("explain_")
            ],
        )
    )
    sections.append(
        Section(
            "Methods",
            [METHODS_TEXT, harmonization_text(result), *result.notes],
            preformatted=spec.resolved_yaml(),
        )
    )
    return sections


def harmonization_text(result: Any) -> str:
    """Which harmonization was fitted where (``model_metrics.harmonization`` says the same)."""
    spec = result.spec.harmonization
    if not spec.enabled:
        return "Harmonization: none."
    for model in result.fitted.values():
        step = getattr(model.pipeline, "named_steps", {}).get("harmonize")
        if step is not None:
            return f"Harmonization: {step.describe()}."
    return f"Harmonization: {spec.method} by {spec.batch} (external: {spec.external})."


def survival_section(results: pl.DataFrame, figures: list[Path]) -> Section:
    """Survival rows (``survival_results``) and Kaplan-Meier figures of a study."""
    from assets.studies.results import RESULT_COLUMNS

    hidden = ("statistic", "df", "note", "coef", "se", "ci_note")
    shown = [c for c in RESULT_COLUMNS if c not in hidden]
    columns = [c for c in shown if c in results.columns]
    tables = [("", results.select(columns))] if columns else []
    paragraphs = [
        "Kaplan-Meier, log-rank, Cox and C-index per endpoint and cohort (see assets.studies.survival for the methods)."
    ]
    flagged = ci_flag_table(results, ("endpoint", "cohort", "analysis", "term"))
    if flagged.height:
        paragraphs += ci_flag_paragraphs(flagged)
        tables.append(("Flagged or annotated intervals", flagged))
    return Section(
        "Survival", paragraphs, tables=tables, figures=[(Path(p).stem, Path(p)) for p in figures]
    )


def write_study_report(
    result: Any, path: str | Path, extra_sections: list[Section] | None = None
) -> Path:
    """The report of a classification study (plus e.g. its survival section)."""
    subtitle = f"model version {result.model_version} · code {result.code_version} · data {result.data_hashes}"
    sections = study_sections(result)
    # extra sections go before the methods
    sections[-1:-1] = extra_sections or []
    return write_report(path, f"Study {result.spec.name}", sections, subtitle)


def write_survival_report(
    spec: Any,
    splits: pl.DataFrame,
    excluded: dict[str, int],
    sections: list[Section],
    path: str | Path,
) -> Path:
    """The report of a survival-only study."""
    from assets.studies.split import cohort_counts

    counts = Section(
        "Cohorts",
        tables=[
            ("Patients per cohort and center", cohort_counts(splits)),
            (
                "Excluded patients by reason",
                pl.DataFrame({"reason": list(excluded), "patients": list(excluded.values())}),
            ),
        ],
    )
    methods = Section("Study", preformatted=spec.resolved_yaml())
    return write_report(path, f"Study {spec.name}", [counts, *sections, methods])
