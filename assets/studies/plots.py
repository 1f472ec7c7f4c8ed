"""Figures of a study: ROC curves per cohort, and the helpers every study figure uses.

Each plot is a function ``(data, ax) -> ax`` (lifelines/scikit-learn style) so it can be put on
any axes; ``cohort_figure`` lays one panel per cohort side by side, as in the papers, and
``save`` writes a PNG. Figures are made with ``matplotlib.figure.Figure`` (no pyplot state, Agg
canvas), so plotting works in worker processes and without a display.

The PNGs of a study in ``reports/<study>/`` (``roc_png``, ``calibration_png``,
``decision_curve_png``, ``explanation_pngs``, ``nomogram_png``; ``write_figures`` all of them
for a ``StudyResult``) are written by the asset of the stage that computed their data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from assets.studies.report import StudyResult

COHORT_TITLES = {
    "train": "Training",
    "internal_validation": "Internal validation",
    "external_validation": "External validation",
}


def cohort_title(cohort: str) -> str:
    if cohort.startswith("external_validation:"):
        return f"External validation ({cohort.split(':', 1)[1]})"
    return COHORT_TITLES.get(cohort, cohort)


def new_figure(
    n_panels: int, panel_size: tuple[float, float] = (4.2, 4.0), ncols: int | None = None
) -> tuple[Any, list[Any]]:
    """A figure with ``n_panels`` axes on a grid (at most 3 per row by default)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    ncols = ncols or min(max(n_panels, 1), 3)
    nrows = int(np.ceil(max(n_panels, 1) / ncols))
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def save(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure as PNG (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def roc_points(y, p) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of the empirical ROC curve."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(y).astype(int), np.asarray(p, dtype=np.float64))
    return fpr, tpr


def plot_roc(
    data: pl.DataFrame, ax: Any, metrics: pl.DataFrame | None = None, title: str | None = None
) -> Any:
    """ROC curves of all models on one cohort; legend ``model AUC 0.81 [0.75-0.87]``.

    ``data``: ``model``, ``label``, ``probability`` rows of one cohort. ``metrics``: the tidy
    metrics frame filtered to that cohort (the ``auc`` rows give estimate and CI).
    """
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    for model in dict.fromkeys(data["model"].to_list()):
        part = data.filter(pl.col("model") == model)
        y = part["label"].to_numpy()
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr = roc_points(y, part["probability"].to_numpy())
        label = model
        if metrics is not None:
            row = metrics.filter((pl.col("model") == model) & (pl.col("metric") == "auc"))
            if len(row) and row["value"][0] is not None:
                low, high = row["ci_low"][0], row["ci_high"][0]
                ci = f" [{low:.3f}-{high:.3f}]" if low is not None and high is not None else ""
                label = f"{model} AUC {row['value'][0]:.3f}{ci}"
        ax.plot(fpr, tpr, lw=1.4, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - Specificity")
    ax.set_ylabel("Sensitivity")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return ax


def cohort_figure(
    plot: Callable[..., Any], frames: dict[str, Any], suptitle: str | None = None, **kwargs: Any
) -> Any:
    """One panel per cohort: ``plot(frames[cohort], ax, **kwargs)`` titled by the cohort."""
    fig, axes = new_figure(len(frames))
    for ax, (cohort, frame) in zip(axes, frames.items(), strict=True):
        plot(frame, ax, **kwargs)
        ax.set_title(cohort_title(cohort), fontsize=10)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def roc_figure(
    predictions: pl.DataFrame, metrics: pl.DataFrame, cohorts: list[tuple[str, pl.Expr]]
) -> Any:
    """The paper figure: ROC curves of every model, one panel per cohort."""
    fig, axes = new_figure(len(cohorts))
    for ax, (cohort, condition) in zip(axes, cohorts, strict=True):
        plot_roc(
            predictions.filter(condition),
            ax,
            metrics.filter(pl.col("cohort") == cohort),
            title=cohort_title(cohort),
        )
    return fig


# the study's PNGs in reports/<study>/ ------------------------------------------------------
def _cohorts_of(predictions: pl.DataFrame) -> list[tuple[str, pl.Expr]]:
    from assets.studies.metrics import metric_cohorts

    return metric_cohorts(
        predictions.select("patient_key", "cohort", "center_id").unique("patient_key")
    )


def roc_png(report_dir: Path, predictions: pl.DataFrame, metrics: pl.DataFrame) -> Path:
    return save(roc_figure(predictions, metrics, _cohorts_of(predictions)), report_dir / "roc.png")


def _per_cohort_png(
    plot, table: pl.DataFrame, predictions: pl.DataFrame, path: Path
) -> Path | None:
    """One panel per cohort (in the predictions' cohort order) of a tidy table with a cohort column."""
    if table.is_empty():
        return None
    frames = {c: table.filter(pl.col("cohort") == c) for c, _ in _cohorts_of(predictions)}
    return save(cohort_figure(plot, frames), path)


def calibration_png(
    report_dir: Path, predictions: pl.DataFrame, curves: pl.DataFrame
) -> Path | None:
    from assets.studies.calibration import plot_calibration

    return _per_cohort_png(plot_calibration, curves, predictions, report_dir / "calibration.png")


def decision_curve_png(
    report_dir: Path, predictions: pl.DataFrame, dca: pl.DataFrame
) -> Path | None:
    from assets.studies.calibration import plot_decision_curve

    return _per_cohort_png(plot_decision_curve, dca, predictions, report_dir / "decision_curve.png")


def explanation_pngs(report_dir: Path, explanations: dict[str, Any]) -> dict[str, Path]:
    from assets.studies.explain import plot_shap_summary

    paths = {}
    for name, explanation in explanations.items():
        fig, (ax,) = new_figure(1, panel_size=(7.0, 5.0))
        plot_shap_summary(explanation, ax)
        paths[f"explain_{name}"] = save(fig, report_dir / f"explain_{name}.png")
    return paths


def nomogram_png(report_dir: Path, nomogram: Any) -> Path:
    from assets.studies.combined import plot_nomogram

    rows = nomogram.points["predictor"].n_unique() + 3
    fig, (ax,) = new_figure(1, panel_size=(10.0, 0.7 * rows + 1))
    plot_nomogram(nomogram, ax)
    return save(fig, report_dir / "nomogram.png")


def write_figures(report_dir: Path, result: StudyResult) -> dict[str, Path]:
    """Every PNG of a study result; returns name -> path."""
    paths = {"roc": roc_png(report_dir, result.predictions, result.metrics)}
    optional = {
        "calibration": calibration_png(report_dir, result.predictions, result.calibration_curves),
        "decision_curve": decision_curve_png(report_dir, result.predictions, result.dca),
        "nomogram": nomogram_png(report_dir, result.nomogram)
        if result.nomogram is not None
        else None,
    }
    paths.update({k: v for k, v in optional.items() if v is not None})
    paths.update(explanation_pngs(report_dir, result.explanations))
    return paths
