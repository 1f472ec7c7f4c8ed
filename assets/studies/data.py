"""Stage 1, the data (asset ``study_splits``): ``prepare_study`` joins the features to the
clinical table and splits the patients into cohorts.

``assemble_study_data`` joins the wide features (``patient_key`` + numeric columns, from the
shared pivot) to the clinical table and hashes both (``versioning.frame_sha256``);
``split.split_patients`` assigns cohorts and counts exclusions by reason; ``harmonization_plan``
refuses (or notes) batch levels the training cohort never saw. The result, a ``StudyData`` and
the splits, is what ``fit.train_study`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from assets.studies.spec import StudySpec
from assets.studies.split import EXCLUSION_REASONS, StudyDataError, split_patients
from assets.studies.versioning import frame_sha256

ID_COLUMNS = ("patient_key", "center_id", "case_id", "study", "cohort", "label")
MIN_PER_LEVEL = 5  # training patients per batch level (each CV training part keeps >= 2)


@dataclass
class StudyData:
    """Patients of a study with their features and clinical columns (pandas, one row each)."""

    frame: Any  # pandas DataFrame indexed by patient_key
    feature_columns: list[str]
    clinical_numeric: list[str]
    clinical_categorical: list[str]
    split_input: pl.DataFrame  # patient_key, center_id, label, has_features
    excluded: dict[str, int]
    data_hashes: dict[str, str]
    notes: list[str] = field(default_factory=list)
    # batch and covariate columns the ``harmonize`` step reads (empty without harmonization)
    harmonization_columns: list[str] = field(default_factory=list)

    def X(self, keys: list[str]) -> Any:
        """Model input: the features plus the harmonization step's batch/covariate columns."""
        extra = [c for c in self.harmonization_columns if c not in self.feature_columns]
        return self.frame.loc[keys, [*self.feature_columns, *extra]]

    def X_raw(self, keys: list[str]) -> Any:
        """The features alone (the models fitted without harmonization)."""
        return self.frame.loc[keys, self.feature_columns]


def _referenced_clinical_columns(spec: StudySpec) -> list[str]:
    names = [spec.label] if spec.label else []
    names += list(spec.features.clinical)
    names += list(spec.harmonization.covariates)
    for entry in spec.survival:
        names += [entry.time, entry.event, *entry.cox_terms]
        names += [entry.groups] if entry.groups else []
        names += [entry.cutoff.variable] if entry.cutoff else []
    return list(dict.fromkeys(names))


def assemble_study_data(
    spec: StudySpec, features_df: pl.DataFrame, clinical_df: pl.DataFrame
) -> StudyData:
    """Join the wide features (``patient_key`` + numeric columns) to the clinical table."""
    harmonization = spec.harmonization
    batch_in_features = harmonization.enabled and harmonization.batch != "center_id"
    if batch_in_features and harmonization.batch not in features_df.columns:
        raise StudyDataError(
            f"{spec.source}: harmonization.batch: {harmonization.batch!r} is not known for the "
            "study's patients (it comes from imaging_series through the case chosen per patient; "
            "external feature tables have no imaging series): use batch: center_id"
        )
    for column in (
        "patient_key",
        "center_id",
        *([spec.label] if spec.label else []),
        *spec.features.clinical,
        *(harmonization.covariates if harmonization.enabled else ()),
    ):
        if column not in clinical_df.columns:
            raise StudyDataError(
                f"{spec.source}: column {column!r} is not in the clinical table (has: "
                f"{sorted(clinical_df.columns)[:20]}); fix the study YAML or the clinical file"
            )
    if "patient_key" not in features_df.columns:
        raise StudyDataError("the feature table has no patient_key column")
    duplicated = features_df["patient_key"].is_duplicated().sum()
    if duplicated:
        raise StudyDataError(
            f"the feature table has {duplicated} rows of patients with several cases; apply the study's "
            f"case_rule ({spec.case_rule}) in the pivot first"
        )
    notes: list[str] = []
    not_features = (*ID_COLUMNS, *((harmonization.batch,) if batch_in_features else ()))
    feature_columns = [
        c
        for c in features_df.columns
        if c not in not_features and features_df[c].dtype.is_numeric()
    ]
    skipped = [c for c in features_df.columns if c not in not_features and c not in feature_columns]
    if skipped:
        notes.append(f"{len(skipped)} non-numeric feature columns ignored: {skipped[:10]}")
    features = features_df.select(
        "patient_key",
        *feature_columns,
        *((harmonization.batch,) if batch_in_features else ()),
    ).with_columns(pl.col(feature_columns).cast(pl.Float64))

    clinical_cols = [c for c in _referenced_clinical_columns(spec) if c in clinical_df.columns]
    clinical = clinical_df.select(
        "patient_key",
        "center_id",
        *[c for c in clinical_cols if c not in ("patient_key", "center_id")],
    )
    clinical = clinical.unique("patient_key", keep="first", maintain_order=True)
    feature_keys = set(features["patient_key"].to_list())
    clinical_keys = set(clinical["patient_key"].to_list())
    excluded = dict.fromkeys((*EXCLUSION_REASONS, "no_clinical_row"), 0)
    excluded["no_clinical_row"] = len(feature_keys - clinical_keys)

    split_input = clinical.select(
        "patient_key",
        "center_id",
        *([pl.col(spec.label).alias("label")] if spec.label else []),
        pl.col("patient_key").is_in(list(feature_keys)).alias("has_features"),
    )
    merged = clinical.join(features, on="patient_key", how="inner") if feature_columns else clinical
    frame = merged.to_pandas().set_index("patient_key", drop=False)
    frame.index.name = None

    from assets.studies.combined import clinical_types

    numeric, categorical = clinical_types(
        frame, list(spec.features.clinical), spec.features.categorical
    )
    hashes = {"features": frame_sha256(features), "clinical": frame_sha256(clinical)}
    columns = [harmonization.batch, *harmonization.covariates] if harmonization.enabled else []
    return StudyData(
        frame,
        feature_columns,
        numeric,
        categorical,
        split_input,
        excluded,
        hashes,
        notes,
        list(dict.fromkeys(columns)),
    )


def prepare_study(
    spec: StudySpec, features_df: pl.DataFrame, clinical_df: pl.DataFrame
) -> tuple[StudyData, pl.DataFrame, dict[str, int]]:
    """Stage 1 (asset ``study_splits``): data, cohorts and excluded patients by reason."""
    if not spec.is_classification:
        raise StudyDataError(f"{spec.source}: study {spec.name} has no label: it is survival-only")
    data = assemble_study_data(spec, features_df, clinical_df)
    splits, excluded = split_patients(data.split_input, spec)
    data.notes.extend(harmonization_plan(spec, data, splits))
    return data, splits, {**data.excluded, **excluded}


def reload_study_data(
    spec: StudySpec, features_df: pl.DataFrame, clinical_df: pl.DataFrame, splits: pl.DataFrame
) -> StudyData:
    """``prepare_study``'s StudyData again, for a later stage, from its saved inputs and splits."""
    data = assemble_study_data(spec, features_df, clinical_df)
    data.notes.extend(harmonization_plan(spec, data, splits))
    return data


def harmonization_plan(spec: StudySpec, data: StudyData, splits: pl.DataFrame) -> list[str]:
    """Notes on batch levels never seen in training; a StudyDataError when they are refused."""
    h = spec.harmonization
    if not h.enabled:
        return []
    batch = data.frame[h.batch].astype("string").fillna("missing").astype(str)
    cohort = dict(zip(splits["patient_key"].to_list(), splits["cohort"].to_list(), strict=True))
    keys = [k for k in batch.index if k in cohort]
    trained = {batch[k] for k in keys if cohort[k] == "train"}
    counts: dict[str, int] = {}
    for k in keys:
        if cohort[k] == "train":
            counts[batch[k]] = counts.get(batch[k], 0) + 1
    small = sorted(level for level, n in counts.items() if n < MIN_PER_LEVEL)
    if small:
        raise StudyDataError(
            f"{spec.source}: harmonization.batch: {h.batch} level(s) {small} have fewer than "
            f"{MIN_PER_LEVEL} training patients ({ {lv: counts[lv] for lv in small} }): their "
            "location and scale cannot be estimated inside every cross-validation fold. To fix: "
            "use a coarser batch (center_id), or add patients"
        )
    unseen: dict[str, int] = {}
    for k in keys:
        if cohort[k] != "train" and batch[k] not in trained:
            unseen[batch[k]] = unseen.get(batch[k], 0) + 1
    if not unseen:
        return []
    if h.external == "refuse":
        raise StudyDataError(
            f"{spec.source}: harmonization.external: {h.batch} level(s) {sorted(unseen)} of the "
            f"validation cohorts were never seen in training ({sorted(trained)}), and "
            "harmonization.external is 'refuse'. To fix: set harmonization.external: "
            "estimate_unlabeled (each new level's location/scale from its own features, never "
            "its labels), or harmonization.method: none"
        )
    return [
        f"harmonization: {h.batch} {level} was not in training: its location and scale were "
        f"estimated from its own {n} patients' features only (no labels) against the frozen "
        "training reference (harmonization.external: estimate_unlabeled)"
        for level, n in sorted(unseen.items())
    ]


def train_inputs(data: StudyData, splits: pl.DataFrame) -> tuple[Any, np.ndarray]:
    train = splits.filter(pl.col("cohort") == "train")
    return data.X(train["patient_key"].to_list()), train["label"].to_numpy().astype(int)
