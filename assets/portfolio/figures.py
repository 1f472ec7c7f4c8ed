"""Funding-trend figure: projects per year (bars) and amount per year (line, twin axis).

Input is the result of ``sql/portfolio/grants_per_year.sql`` (columns source, currency, year,
n_projects, amount) as a pandas or polars frame. matplotlib is imported inside the functions and
only its object API is used (``Figure`` + Agg canvas, no pyplot state), so this is safe in worker
processes and loads nothing when the code location starts. Pure module (no Dagster import).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dagster_project.lake import write_file_atomic

FIGURE_NAME = "funding_trends.png"


def _records(per_year: Any) -> list[dict]:
    """Rows of a pandas or polars frame (or a list of dicts) as dicts, rows without a year dropped."""
    if hasattr(per_year, "to_dicts"):  # polars
        rows = per_year.to_dicts()
    elif hasattr(per_year, "to_dict"):  # pandas
        rows = per_year.to_dict("records")
    else:
        rows = list(per_year)
    return [r for r in rows if r.get("year") is not None and r.get("year") == r.get("year")]


def _scale(values: list[float]) -> tuple[float, str]:
    largest = max((abs(v) for v in values if v is not None), default=0.0)
    for factor, label in ((1e9, "billion"), (1e6, "million"), (1e3, "thousand")):
        if largest >= factor:
            return factor, label
    return 1.0, ""


def funding_trends_figure(per_year_df: Any, ax: Any = None) -> Any:
    """Bars of projects per year and a line of amount per year on a twin axis; returns ``ax``.

    One bar series and one line per source/currency (amounts are never added across currencies).
    Without ``ax`` a new Agg-backed Figure is made (``ax.figure``)."""
    from matplotlib.figure import Figure

    if ax is None:
        ax = Figure(figsize=(8, 4.5), dpi=120).subplots()
    rows = _records(per_year_df)
    series: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        series.setdefault((str(row.get("source")), str(row.get("currency"))), []).append(row)
    years = sorted({int(r["year"]) for r in rows})
    amount_ax = ax.twinx()
    factor, label = _scale([r.get("amount") or 0.0 for r in rows])
    width = 0.8 / max(len(series), 1)
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3"]
    for i, ((source, currency), group) in enumerate(sorted(series.items())):
        group = sorted(group, key=lambda r: r["year"])
        xs = [int(r["year"]) for r in group]
        offset = (i - (len(series) - 1) / 2) * width
        color = colors[i % len(colors)]
        ax.bar(
            [x + offset for x in xs],
            [r["n_projects"] for r in group],
            width=width,
            color=color,
            alpha=0.6,
            label=f"{source} projects",
        )
        amounts = [(r.get("amount") or 0.0) / factor for r in group]
        amount_ax.plot(
            xs,
            amounts,
            marker="o",
            color=color,
            label=f"{source} amount ({label + ' ' if label else ''}{currency})",
        )
    ax.set_xlabel("year")
    ax.set_ylabel("projects")
    amount_ax.set_ylabel(f"amount ({label + ' ' if label else ''}currency units)")
    if years:
        ax.set_xticks(years)
        ax.set_xticklabels([str(y) for y in years], rotation=45 if len(years) > 8 else 0)
    ax.set_title("Funding trends: projects and amount per year")
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = amount_ax.get_legend_handles_labels()
    if handles or more_handles:
        ax.legend(handles + more_handles, labels + more_labels, loc="upper left", fontsize="small")
    ax.figure.tight_layout()
    return ax


def save_funding_trends_figure(
    per_year_df: Any, reports_dir: str | os.PathLike, name: str = FIGURE_NAME
) -> Path:
    """Draw the figure and write it to ``<reports_dir>/portfolio/<name>`` atomically; the path."""
    ax = funding_trends_figure(per_year_df)
    target = Path(reports_dir) / "portfolio" / name
    return write_file_atomic(target, lambda handle: ax.figure.savefig(handle, format="png"), 0o644)
