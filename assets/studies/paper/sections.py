"""The report sections of the paper tables: patient flow (figure + table), Table 1, the reporting
checklists and a link to the model card. Reads the study's parts of ``patient_flow``,
``table_one`` and ``reporting_checklist`` (pure, no Dagster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl


def _part(home: Any, table: str, part: str) -> pl.DataFrame:
    path = Path(home.table_dir(table)) / f"{part}.parquet"
    return pl.read_parquet(path) if path.is_file() else pl.DataFrame()


def paper_sections(home: Any, spec: Any, model_version: str) -> list:
    from assets.studies.paper.checklists import checklist_summary
    from assets.studies.paper.flow import FIGURE_NAME, check_flow
    from assets.studies.paper.table_one import RULES_TEXT, table_one_wide
    from assets.studies.report import Section

    sections = []
    report_dir = Path(home.reports_dir) / spec.name
    flow = _part(home, "patient_flow", spec.name)
    if flow.height:
        landed, excluded, included = check_flow(flow)
        sections.append(
            Section(
                "Patient flow",
                [
                    f"{landed} clinical records landed; {excluded} excluded; {included} included "
                    "in the cohorts (lake table patient_flow)."
                ],
                tables=[("", flow.drop("study"))],
                figures=[("Patient flow diagram", report_dir / FIGURE_NAME)],
            )
        )
    table_one = _part(home, "table_one", f"{spec.name}-{model_version}")
    if table_one.height:
        sections.append(
            Section(
                "Table 1: patient characteristics per cohort",
                [RULES_TEXT],
                tables=[("", table_one_wide(table_one))],
            )
        )
    checklist = _part(home, "reporting_checklist", f"{spec.name}-{model_version}")
    if checklist.height:
        tables = [("Items per status", checklist_summary(checklist))]
        for name in checklist["checklist"].unique(maintain_order=True).to_list():
            tables.append(
                (
                    name,
                    checklist.filter(pl.col("checklist") == name).select(
                        "item", "section", "topic", "status", "value", "source"
                    ),
                )
            )
        sections.append(
            Section(
                "Reporting checklists (TRIPOD+AI 2024, CLEAR 2023)",
                [
                    "Each item is filled from the lake (value and the lake table or file it came "
                    "from), partly filled, or left to the author. CSV: "
                    "reporting_checklist.csv beside this report; lake table reporting_checklist.",
                ],
                tables=tables,
            )
        )
    references = _part(home, "study_references", spec.name)
    if references.height:
        from assets.studies.paper.references import resolve_references

        resolved = resolve_references(
            references, home.read_table("grants"), home.read_table("publications")
        )
        sections.append(
            Section(
                "Funding and publications",
                [
                    "Grants that fund this study and papers that report it (study YAML funding: "
                    "and publications:); found = in the lake's grants or publications table. "
                    "Views grant_outputs, paper_provenance, study_funding."
                ],
                tables=[("", resolved.drop("study"))],
            )
        )
    card = report_dir / "model_card.html"
    if card.is_file():
        sections.append(
            Section("Model card", [f"The printable model card of this version: {card.name}"])
        )
    return sections
