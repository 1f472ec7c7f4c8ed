"""Split a study's patients into train / internal_validation / external_validation cohorts.

Development centers are split at ``internal_validation_fraction``, stratified on the label, with
the study seed (``sklearn.model_selection.train_test_split``); patients are sorted by
``patient_key`` first, so the split does not depend on the order rows arrive in. External
centers are kept whole. Patients are excluded, and counted by reason, never silently:

- ``no_label``: the label is missing (classification studies)
- ``no_features``: no feature row (``has_features`` false)
- ``center_not_in_study``: the center is neither a development nor an external center

Small cohorts: a stratified split needs at least 2 patients of each class among the development
patients (one for each cohort) and at least 2 patients in each cohort; otherwise
``split_patients`` raises a ``StudyDataError`` naming the study, the centers, the class counts
and the remedies (more patients, a larger development cohort,
``internal_validation_fraction: 0``) instead of scikit-learn's error. There is deliberately no fallback to an unstratified split:
with a single patient of a class, one of the two cohorts has no patient of that class, so its AUC
is undefined (internal validation) or no model can be cross-validated on it (training), and a
random split would only hide that. (The training cohort's own minimum, 2 of each class for the
cross-validation, is checked when the models are fitted: ``pipeline.training_cv``.)
"""

from __future__ import annotations

import numpy as np
import polars as pl

from assets.studies.spec import StudySpec

EXCLUSION_REASONS = ("no_label", "no_features", "center_not_in_study")
SPLITS_SCHEMA = {
    "study": pl.String,
    "patient_key": pl.String,
    "center_id": pl.String,
    "cohort": pl.String,
    "label": pl.Int8,
}


class StudyDataError(ValueError):
    """The study's data cannot be used as asked (e.g. a label that is not binary)."""


def binary_label(values: pl.Series, column: str) -> pl.Series:
    """A 0/1 Int8 label (nulls kept) from ints, floats, booleans; anything else is an error."""
    if values.dtype == pl.Boolean:
        return values.cast(pl.Int8)
    if values.dtype.is_numeric():
        floats = values.cast(pl.Float64).fill_nan(None)
        bad = floats.drop_nulls().filter(~floats.drop_nulls().is_in([0.0, 1.0]))
        if len(bad):
            raise StudyDataError(
                f"label column {column!r} must be binary 0/1; found values "
                f"{sorted(set(bad.to_list()))[:5]} (recode the clinical column or choose another label)"
            )
        return floats.cast(pl.Int8)
    raise StudyDataError(
        f"label column {column!r} has type {values.dtype}; it must be a 0/1 or boolean column"
    )


def split_patients(frame: pl.DataFrame, spec: StudySpec) -> tuple[pl.DataFrame, dict[str, int]]:
    """Assign each usable patient a cohort; return (splits, excluded counts by reason).

    ``frame``: one row per patient with ``patient_key``, ``center_id``, ``label`` (absent or
    null for survival-only studies) and optionally ``has_features`` (bool).
    """
    from sklearn.model_selection import train_test_split

    split = spec.split
    needs_label = spec.is_classification
    data = frame.select(
        pl.col("patient_key").cast(pl.String),
        pl.col("center_id").cast(pl.String),
        binary_label(frame["label"], spec.label or "label").alias("label")
        if "label" in frame.columns
        else pl.lit(None, dtype=pl.Int8).alias("label"),
        (
            pl.col("has_features").cast(pl.Boolean).fill_null(False)
            if "has_features" in frame.columns
            else pl.lit(True)
        ).alias("has_features"),
    ).unique("patient_key", keep="first", maintain_order=True)
    excluded = dict.fromkeys(EXCLUSION_REASONS, 0)
    in_study = pl.col("center_id").is_in(
        [*split.development_centers, *split.external_validation_centers]
    )
    excluded["center_not_in_study"] = data.filter(~in_study).height
    data = data.filter(in_study)
    if needs_label:
        excluded["no_label"] = data.filter(pl.col("label").is_null()).height
        data = data.filter(pl.col("label").is_not_null())
    excluded["no_features"] = data.filter(~pl.col("has_features")).height
    data = data.filter(pl.col("has_features")).sort("patient_key")

    development = data.filter(pl.col("center_id").is_in(list(split.development_centers)))
    external = data.filter(pl.col("center_id").is_in(list(split.external_validation_centers)))
    keys = development["patient_key"].to_numpy()
    cohort = np.full(len(keys), "train", dtype=object)
    if split.internal_validation_fraction > 0 and len(keys):
        labels = development["label"].to_numpy() if needs_label else None
        if labels is not None:
            counts = np.bincount(labels.astype(int), minlength=2)
            n_test = int(np.ceil(split.internal_validation_fraction * len(keys)))
            if counts.min() < 2 or n_test < 2 or len(keys) - n_test < 2:
                raise StudyDataError(
                    f"study {spec.name}: development center(s) "
                    f"{', '.join(split.development_centers)} have {len(keys)} usable patient(s), "
                    f"{counts[0]} with {spec.label}=0 and {counts[1]} with {spec.label}=1; a "
                    f"stratified split with internal_validation_fraction "
                    f"{split.internal_validation_fraction:g} (train {len(keys) - n_test}, "
                    f"internal validation {n_test}) needs at least 2 patients of each class and 2 "
                    "patients in each cohort. To fix: add patients (of the rarer class); or use a "
                    "larger development cohort (more split.development_centers); or set "
                    "split.internal_validation_fraction: 0 (every development patient trains, "
                    "the cross-validated AUC picks the best model)"
                )
        elif len(keys) - int(np.ceil(split.internal_validation_fraction * len(keys))) < 1:
            raise StudyDataError(
                f"study {spec.name}: development center(s) {', '.join(split.development_centers)} "
                f"have {len(keys)} usable patient(s): too few for an internal_validation_fraction "
                f"{split.internal_validation_fraction:g} split (add patients or set "
                "split.internal_validation_fraction: 0)"
            )
        _, test_index = train_test_split(
            np.arange(len(keys)),
            test_size=split.internal_validation_fraction,
            stratify=labels,
            random_state=split.seed,
            shuffle=True,
        )
        cohort[test_index] = "internal_validation"
    splits = pl.concat(
        [
            development.select("patient_key", "center_id", "label").with_columns(
                pl.Series("cohort", cohort.tolist(), dtype=pl.String)
            ),
            external.select("patient_key", "center_id", "label").with_columns(
                pl.lit("external_validation").alias("cohort")
            ),
        ]
    )
    order = {"train": 0, "internal_validation": 1, "external_validation": 2}
    splits = (
        splits.with_columns(pl.lit(spec.name).alias("study"))
        .sort(pl.col("cohort").replace_strict(order, return_dtype=pl.Int8), "patient_key")
        .select(list(SPLITS_SCHEMA))
        .cast(SPLITS_SCHEMA)
    )
    return splits, excluded


def cohort_counts(splits: pl.DataFrame) -> pl.DataFrame:
    """Patients and positives per cohort and center (the table a paper's flowchart reports)."""
    return (
        splits.group_by("cohort", "center_id")
        .agg(pl.len().alias("patients"), pl.col("label").cast(pl.Int64).sum().alias("positives"))
        .sort("cohort", "center_id")
    )
