"""Patient flow of a study: from the clinical records landed to each cohort, every exclusion with
its reason and count (lake table ``patient_flow``), and the flow diagram (CONSORT/TRIPOD style).

Steps, in the order the lake applies them:

1. ``landed``: clinical records landed = patients in ``clinical`` + clinical rows in ``quarantine``
2. ``quarantine``: one exclusion per quarantine rule of the clinical ingest (the row never became
   a patient)
3. ``cohort``: patients not returned by the study's cohort SQL
4. ``eligibility``: the split's exclusions: center not in the study, no label, no features (no
   case, or none whose features pass the case rule)
5. ``cohort_assignment``: the patients of each cohort (train, internal_validation, one
   ``external_validation:<center>`` per external center)

``kind`` says what a row is: ``start``, ``exclusion``, ``cohort`` or ``note`` (facts that do not
remove a patient: the case rule, image cases rejected by quarantine, feature rows without a
clinical row). Landed = every exclusion + every cohort, which ``check_flow`` verifies; a gap
(which would be a bug) is written as an ``unaccounted`` exclusion rather than hidden.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path
from typing import Any

import polars as pl

SCHEMA = {
    "study": pl.String,
    "step": pl.String,
    "reason": pl.String,
    "patients": pl.Int64,
    "remaining": pl.Int64,
    "kind": pl.String,
}
FIGURE_NAME = "patient_flow.png"
ELIGIBILITY_TEXT = {
    "center_not_in_study": "center is neither a development nor an external center",
    "no_label": "no value of the label {label}",
    "no_features": "no features ({features}) after the case rule",
}
IMAGING_TABLES = ("cases", "imaging_series", "radiomics_features", "external_features")


def build_flow(
    spec: Any,
    clinical: pl.DataFrame,
    quarantine: pl.DataFrame,
    prepared: dict[str, Any],
    splits: pl.DataFrame,
) -> pl.DataFrame:
    """The ``patient_flow`` rows of a study.

    ``clinical``: the whole clinical table; ``quarantine``: the lake's quarantine table;
    ``prepared``: the split's ``prepared.json`` (``not_in_cohort``, ``excluded``, ``case_rules``).
    """
    from assets.studies.paper.table_one import cohort_order, table_one_cohorts

    rows: list[dict] = []
    remaining = 0

    def add(step: str, reason: str, patients: int, kind: str) -> None:
        nonlocal remaining
        if kind == "start":
            remaining = patients
        elif kind == "exclusion":
            remaining -= patients
        rows.append(
            {
                "study": spec.name,
                "step": step,
                "reason": reason,
                "patients": int(patients),
                "remaining": int(patients if kind == "cohort" else remaining),
                "kind": kind,
            }
        )

    rejected = quarantine.filter(pl.col("target_table") == "clinical")
    add(
        "landed",
        f"clinical records landed: {clinical.height} patients in clinical + {rejected.height} "
        "rows rejected by quarantine",
        clinical.height + rejected.height,
        "start",
    )
    by_rule = rejected.group_by("rule").len().sort("rule")
    for rule, count in by_rule.iter_rows():
        add("quarantine", f"clinical row quarantined: {rule}", count, "exclusion")
    if not by_rule.height:
        add("quarantine", "clinical row quarantined: none", 0, "exclusion")
    cohort = spec.cohort_sql or ("cohort_query" if spec.cohort_query else None)
    add(
        "cohort",
        f"not in the cohort {Path(cohort).stem if spec.cohort_sql else cohort}"
        if cohort
        else "no cohort SQL (every clinical patient)",
        int(prepared.get("not_in_cohort", 0)),
        "exclusion",
    )
    excluded = dict(prepared.get("excluded", {}))
    excluded.pop("not_in_cohort", None)
    features = _features_text(spec)
    for reason, template in ELIGIBILITY_TEXT.items():
        if reason == "no_label" and not spec.is_classification:
            continue
        text = template.format(label=spec.label, features=features)
        add("eligibility", f"{reason}: {text}", int(excluded.get(reason, 0)), "exclusion")
    gap = remaining - splits.height
    if gap:
        add("eligibility", "unaccounted: patients the lake cannot explain", gap, "exclusion")
    for rule, description in sorted((prepared.get("case_rules") or {}).items()):
        add("case_rule", f"{rule}: {description}", 0, "note")
    if excluded.get("no_clinical_row"):
        add(
            "note",
            "feature rows without a clinical row (never in the clinical records)",
            int(excluded["no_clinical_row"]),
            "note",
        )
    imaging = quarantine.filter(pl.col("target_table").is_in(list(IMAGING_TABLES)))
    for rule, count in imaging.group_by("rule").len().sort("rule").iter_rows():
        add("note", f"image/feature records quarantined: {rule}", count, "note")
    counts = dict(table_one_cohorts(splits).group_by("cohort").len().iter_rows())
    for cohort_name in cohort_order(list(counts)):
        add("cohort_assignment", cohort_name, counts[cohort_name], "cohort")
    return pl.DataFrame(rows, schema=SCHEMA)


def _features_text(spec: Any) -> str:
    parts = []
    if spec.features.radiomics is not None:
        parts.append(f"radiomics {spec.features.radiomics.params_id}")
    parts += [f"external {e.feature_set}" for e in spec.features.external]
    return ", ".join(parts) or "none required"


def check_flow(flow: pl.DataFrame) -> tuple[int, int, int]:
    """(landed, excluded, included); landed == excluded + included for a consistent flow."""
    landed = int(flow.filter(pl.col("kind") == "start")["patients"].sum())
    excluded = int(flow.filter(pl.col("kind") == "exclusion")["patients"].sum())
    included = int(flow.filter(pl.col("kind") == "cohort")["patients"].sum())
    return landed, excluded, included


# the diagram ------------------------------------------------------------------------------
def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def flow_figure(flow: pl.DataFrame, title: str = "") -> Any:
    """A flow diagram: the main column (patients remaining after each step), an exclusion box per
    step to its right, and one box per cohort at the bottom; matplotlib ``Figure``."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    start = flow.filter(pl.col("kind") == "start").row(0, named=True)
    steps = [s for s in flow["step"].unique(maintain_order=True).to_list() if s in _EXCLUSION_STEPS]
    cohorts = flow.filter(pl.col("kind") == "cohort")
    notes = flow.filter(pl.col("kind") == "note")
    levels = len(steps) + 2
    note_lines = sum(len(_wrap(r, 150).splitlines()) for r in notes["reason"].to_list())
    figure = Figure(figsize=(10, 1.55 * levels + 0.6 + 0.25 * note_lines), dpi=110)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 10)
    height = 1.55 * levels + 0.25 * note_lines
    ax.set_ylim(-0.25 * note_lines - 0.2, height + 0.4)
    ax.axis("off")

    def box(x: float, y: float, w: float, h: float, text: str, color: str) -> None:
        ax.add_patch(
            FancyBboxPatch(
                (x - w / 2, y - h / 2),
                w,
                h,
                boxstyle="round,pad=0.04",
                facecolor=color,
                edgecolor="#333",
                linewidth=1,
            )
        )
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5, wrap=True)

    def arrow(x0: float, y0: float, x1: float, y1: float) -> None:
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={"arrowstyle": "-|>", "color": "#333", "lw": 1.2},
        )

    main_x, side_x, w, h = 2.9, 7.4, 3.6, 0.75
    y = height - 0.6
    box(main_x, y, w, h, f"Clinical records landed\nn = {start['patients']}", "#e8f0fb")
    if title:
        ax.text(0.2, height + 0.2, title, fontsize=11, weight="bold", va="center")
    for step in steps:
        part = flow.filter((pl.col("step") == step) & (pl.col("kind") == "exclusion"))
        lost = int(part["patients"].sum())
        remaining = int(part["remaining"].to_list()[-1])
        lines = [f"Excluded at {step.replace('_', ' ')}: n = {lost}"]
        lines += [
            _wrap(f"- {reason}: {n}", 58)
            for reason, n in part.select("reason", "patients").iter_rows()
            if n
        ]
        next_y = y - 1.55
        mid = (y + next_y) / 2
        arrow(main_x, y - h / 2, main_x, next_y + h / 2)
        side_h = max(0.6, 0.2 * sum(t.count("\n") + 1 for t in lines) + 0.2)
        box(side_x, mid, 4.4, side_h, "\n".join(lines), "#fbecea")
        ax.plot([main_x, side_x - 2.2], [mid, mid], color="#333", lw=1.2)
        arrow(side_x - 2.4, mid, side_x - 2.2, mid)
        y = next_y
        box(main_x, y, w, h, f"After {step.replace('_', ' ')}\nn = {remaining}", "#e8f0fb")
    bottom = y - 1.55
    n = max(cohorts.height, 1)
    span = 9.4 / n
    for i, (cohort, count) in enumerate(cohorts.select("reason", "patients").iter_rows()):
        cx = 0.3 + span * (i + 0.5)
        arrow(main_x, y - h / 2, cx, bottom + h / 2)
        label = cohort.replace("_", " ").replace(":", "\n")
        box(cx, bottom, min(span - 0.3, 3.2), h, f"{label}\nn = {count}", "#eaf6ea")
    note_y = bottom - 0.85
    for reason, count in notes.select("reason", "patients").iter_rows():
        text = _wrap(f"Note: {reason}" + (f" ({count})" if count else ""), 150)
        ax.text(0.2, note_y, text, fontsize=7.5, color="#555", va="top")
        note_y -= 0.25 * (text.count("\n") + 1)
    return figure


_EXCLUSION_STEPS = ("quarantine", "cohort", "eligibility")


def save_flow_figure(flow: pl.DataFrame, folder: str | os.PathLike, title: str = "") -> Path:
    """Write ``<folder>/patient_flow.png`` atomically; its path."""
    figure = flow_figure(flow, title)
    target = Path(folder) / FIGURE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex}.png")
    try:
        figure.savefig(tmp, format="png")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
