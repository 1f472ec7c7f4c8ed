"""The funding-landscape report: the NSFC medical-AI funding analysis (projects and amount per
year with growth, fund types, regions and institutions, disciplines, share of imaging) as one
self-contained HTML page with its figures, from whatever grants the lake holds.

Input: the results of the ``sql/portfolio/grants_*.sql`` queries (``QUERIES``), by name. Output:
``reports/portfolio/funding_landscape.html`` and ``reports/portfolio/landscape_*.png``. Amounts
are never added across currencies: each figure draws one series per source and currency. Pure
module (no Dagster; matplotlib's object API only, imported inside the functions).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import polars as pl

QUERIES = (
    "grants_summary",
    "grants_per_year",
    "grants_by_fund_type",
    "grants_by_region",
    "grants_by_institution",
    "grants_by_discipline",
    "grants_imaging_share",
)
REPORT_NAME = "funding_landscape.html"
TOP = 10


def _save(figure: Any, folder: Path, name: str) -> Path:
    target = folder / f"landscape_{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex}.png")
    try:
        figure.savefig(tmp, format="png")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def share_bars(frame: pl.DataFrame, label: str, title: str) -> Any:
    """Horizontal bars of ``share_projects`` per ``label`` (top ``TOP``), one panel per source
    and currency; a matplotlib Figure."""
    from matplotlib.figure import Figure

    groups = frame.partition_by("source", "currency", as_dict=True, maintain_order=True)
    figure = Figure(figsize=(8, 1.2 + 0.32 * TOP * max(len(groups), 1)), dpi=110)
    axes = figure.subplots(max(len(groups), 1), 1, squeeze=False)[:, 0]
    for ax, ((source, currency), part) in zip(axes, groups.items(), strict=False):
        part = part.sort("n_projects", descending=True).head(TOP).reverse()
        names = [str(v) if v is not None else "unknown" for v in part[label].to_list()]
        ax.barh(names, [100 * (v or 0) for v in part["share_projects"].to_list()], color="#4C72B0")
        for y, (n, amount) in enumerate(part.select("n_projects", "amount").iter_rows()):
            ax.text(0.5, y, f"{n} projects, {amount or 0:,.0f} {currency}", va="center", fontsize=7)
        ax.set_xlabel("share of projects (%)")
        ax.set_title(f"{title} ({source}, {currency})", fontsize=10)
    figure.tight_layout()
    return figure


def landscape_figures(
    results: dict[str, pl.DataFrame], folder: str | os.PathLike
) -> dict[str, Path]:
    """The report's PNGs (only those with data)."""
    from assets.portfolio.figures import funding_trends_figure

    folder = Path(folder)
    paths: dict[str, Path] = {}
    per_year = results["grants_per_year"].filter(pl.col("year").is_not_null())
    if per_year.height:
        paths["trends"] = _save(funding_trends_figure(per_year).figure, folder, "trends")
    for name, label, title in (
        ("grants_by_fund_type", "fund_type", "Fund types"),
        ("grants_by_region", "region", "Regions"),
        ("grants_by_discipline", "discipline_group", "Disciplines"),
    ):
        if results[name].height:
            paths[name] = _save(share_bars(results[name], label, title), folder, label)
    return paths


def _pct(frame: pl.DataFrame) -> pl.DataFrame:
    shares = [c for c in frame.columns if "share" in c or c.endswith("_growth")]
    return frame.with_columns([(pl.col(c) * 100).round(1).alias(f"{c} %") for c in shares]).drop(
        shares
    )


def landscape_sections(results: dict[str, pl.DataFrame], figures: dict[str, Path]) -> list:
    from assets.studies.report import Section

    summary = results["grants_summary"]
    sections = [
        Section(
            "Summary",
            [
                f"{int(summary['n_projects'].sum()) if summary.height else 0} grants in the lake "
                "(sources and currencies kept apart; amounts in whole currency units)."
            ],
            tables=[("", _pct(summary))] if summary.height else [],
        )
    ]
    per_year = results["grants_per_year"]
    sections.append(
        Section(
            "Projects and amount per year, growth",
            []
            if per_year.filter(pl.col("year").is_not_null()).height
            else ["The lake's grants carry no start year (e.g. NIH project_io files)."],
            tables=[("Year-on-year growth of projects and amount", _pct(per_year))],
            figures=[("Projects (bars) and amount (lines) per year", figures["trends"])]
            if "trends" in figures
            else [],
        )
    )
    for name, heading, caption in (
        ("grants_by_fund_type", "Fund types", "Fund types (normalised; original names listed)"),
        ("grants_by_region", "Regions", "Regions, with the top three's share"),
        ("grants_by_institution", "Institutions", f"Institutions (top {TOP} per source)"),
        ("grants_by_discipline", "Disciplines", "Discipline groups of the application codes"),
        (
            "grants_imaging_share",
            "Share of imaging",
            "Projects whose title or keywords name an imaging term",
        ),
    ):
        frame = results[name]
        if name == "grants_by_institution" and frame.height:
            frame = frame.filter(pl.col("institution_rank") <= TOP)
        sections.append(
            Section(
                heading,
                tables=[(caption, _pct(frame))],
                figures=[(heading, figures[name])] if name in figures else [],
            )
        )
    return sections


def write_landscape_report(
    results: dict[str, pl.DataFrame], reports_dir: str | os.PathLike
) -> tuple[Path, dict[str, Path]]:
    """Figures and ``reports/portfolio/funding_landscape.html``; (report path, figure paths)."""
    from assets.studies.report import write_report

    folder = Path(reports_dir) / "portfolio"
    figures = landscape_figures(results, folder)
    path = write_report(
        folder / REPORT_NAME,
        "Funding landscape",
        landscape_sections(results, figures),
        subtitle="Projects and amount per year, fund types, regions, institutions, disciplines "
        "and the share of imaging, from the lake's grants table (sql/portfolio/grants_*.sql).",
    )
    return path, figures
