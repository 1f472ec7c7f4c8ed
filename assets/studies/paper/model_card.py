"""Model card of one model version (Mitchell et al., FAT* 2019), printable: intended use from the
study YAML, the data manifest (inputs, their hashes, centers, cohorts, dates, parameter file),
metrics per cohort with CIs, calibration, and known limits (the YAML's ``limitations`` plus what
the lake shows: the centers and scanners the model has seen, run warnings, small cohorts).
Written with ``report.write_report`` (its print stylesheet makes "Print to PDF" clean).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

SMALL_COHORT = 100  # below this many patients a cohort's CIs are wide; said in the limits


def known_limits(spec: Any, splits: pl.DataFrame, facts: dict, summary: dict) -> list[str]:
    limits = list(spec.limitations)
    centers = sorted(splits.filter(pl.col("cohort") == "train")["center_id"].unique().to_list())
    limits.append(
        f"Trained on center(s) {', '.join(centers)} only; performance elsewhere is known only for "
        f"the external center(s) {', '.join(spec.split.external_validation_centers) or '(none)'}."
    )
    if "protocol" in facts:
        limits.append(
            "Seen imaging protocols (apply with care to other scanners, kernels, phases or "
            "slice thicknesses): " + facts["protocol"].value
        )
    for cohort, n in splits.group_by("cohort").len().sort("cohort").iter_rows():
        if n < SMALL_COHORT:
            limits.append(f"The {cohort} cohort has {n} patients (< {SMALL_COHORT}): wide CIs.")
    limits += [f"Run warning: {w}" for w in summary.get("warnings", [])]
    if "harmonization" in facts:
        limits.append(facts["harmonization"].value.capitalize() + ".")
    return limits


def model_card_sections(
    spec: Any,
    model_version: str,
    splits: pl.DataFrame,
    metrics: pl.DataFrame,
    facts: dict,
    summary: dict,
    hashes: dict,
    figures: dict[str, Path],
) -> list:
    from assets.studies.report import Section, discrimination_table

    best = summary.get("best_model")
    intended = spec.intended_use or "author to complete (add intended_use: to the study YAML)"
    details = pl.DataFrame(
        {
            "field": [
                "study",
                "model version",
                "best model (rule)",
                "models compared",
                "label",
                "code / data version",
                "funding",
                "publications",
            ],
            "value": [
                spec.name,
                model_version,
                f"{best} ({summary.get('best_model_rule', '')})",
                ", ".join(spec.models),
                str(spec.label),
                facts["code"].value if "code" in facts else "",
                ", ".join(spec.funding) or "none listed",
                ", ".join(spec.publications) or "none listed",
            ],
        }
    )
    manifest_keys = ("counts", "centers", "dates", "exclusions", "params", "software", "features")
    manifest = pl.DataFrame(
        {
            "fact": [k for k in manifest_keys if k in facts] + ["input hashes"],
            "value": [facts[k].value for k in manifest_keys if k in facts]
            + [", ".join(f"{k} {v[:16]}" for k, v in sorted(hashes.items()))],
            "source": [facts[k].source for k in manifest_keys if k in facts]
            + [f"models/{spec.name}/{model_version}/hashes.json"],
        }
    )
    shown = metrics.filter(pl.col("model").is_in([best, "combined"]))
    calibration = shown.filter(pl.col("metric").str.starts_with("calibration"))
    return [
        Section("Intended use", [intended, spec.description or ""]),
        Section("Model details", tables=[("", details)]),
        Section("Data manifest", tables=[("What the model was trained and tested on", manifest)]),
        Section(
            "Metrics per cohort",
            tables=[
                (
                    "AUC [95% CI] (bootstrap and DeLong), threshold metrics at the training "
                    "threshold",
                    discrimination_table(
                        shown, ("auc", "auc_delong", "sensitivity", "specificity", "brier")
                    ),
                )
            ],
        ),
        Section(
            "Calibration",
            tables=[
                (
                    "Calibration slope and intercept (Wald CI)",
                    discrimination_table(
                        calibration, ("calibration_slope", "calibration_intercept")
                    ),
                )
            ],
            figures=[("Calibration curves", figures["calibration"])]
            if "calibration" in figures
            else [],
        ),
        Section("Known limits", known_limits(spec, splits, facts, summary)),
    ]


def write_model_card(path: str | Path, spec: Any, model_version: str, sections: list) -> Path:
    from assets.studies.report import write_report

    return write_report(
        path,
        f"Model card: {spec.name}",
        sections,
        subtitle=f"model version {model_version} · print this page to PDF from the browser",
    )
