"""Feature robustness (lake table ``feature_robustness``): ICCs of radiomics features.

Two sources, one row per feature x params_id x source (columns ``feature, params_id, source,
icc_type, icc, ci_low, ci_high, n``):

- ``readers``: several segmentations of the same lesion (cases.csv ``reader`` column; the lesion
  is ``patient_key`` + ``lesion``, or the image when there is no ``lesion`` column). The readers
  are a random sample of readers who each rate every lesion: ICC(2,1), two-way random effects,
  absolute agreement, single rater (Shrout & Fleiss 1979 case 2; McGraw & Wong ICC(A,1)).
- ``perturbation``: image perturbations of training cases as in Zwanenburg et al. (Sci Rep
  2019;9:614): Gaussian noise, small rotations, sub-voxel translations and mask
  dilation/erosion (``perturbations``); each perturbed copy is another "rater" that is not the
  same for every case in a meaningful way: ICC(1,1), one-way random effects (case 1).

ICCs and their 95% CIs (F-distribution, Shrout & Fleiss / McGraw & Wong) come from pingouin's
``intraclass_corr`` (its CI bounds are rounded to 2 decimals) (checked against Shrout & Fleiss's worked example in the tests). Lesions with
a missing value for some rater are left out of that feature's ICC (``n`` counts those kept);
a feature constant over every lesion and rater has no ICC (null).

``robust_features(table, min_icc)`` gives the features whose lower 95% bound reaches
``min_icc`` in every row available for them (study ``selection.min_icc``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

ROBUSTNESS_SCHEMA = {
    "feature": pl.String,
    "params_id": pl.String,
    "source": pl.String,
    "icc_type": pl.String,
    "icc": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "n": pl.Int64,
}
# Shrout & Fleiss names -> pingouin 0.7 (McGraw & Wong) names
PINGOUIN_TYPE = {"ICC(1,1)": "ICC(1,1)", "ICC(2,1)": "ICC(A,1)", "ICC(3,1)": "ICC(C,1)"}
DEFAULT_PERTURBATIONS = (
    {"name": "noise", "noise_sd": 0.1},
    {"name": "rotate_plus", "rotation_deg": 5.0},
    {"name": "rotate_minus", "rotation_deg": -5.0},
    {"name": "translate", "translation_voxels": 0.5},
    {"name": "dilate", "mask_radius": 1},
    {"name": "erode", "mask_radius": -1},
)


def icc(ratings: pd.DataFrame, icc_type: str = "ICC(2,1)") -> dict[str, float]:
    """One ICC of a long frame ``target, rater, value`` (complete targets only)."""
    import pingouin as pg

    wide = ratings.pivot_table(index="target", columns="rater", values="value", aggfunc="first")
    wide = wide.dropna()
    n = len(wide)
    empty = {"icc": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": n}
    if n < 2 or wide.shape[1] < 2 or np.nanvar(wide.to_numpy()) == 0:
        return empty
    long = wide.reset_index().melt(id_vars="target", var_name="rater", value_name="value")
    result = pg.intraclass_corr(long, targets="target", raters="rater", ratings="value")
    row = result.set_index("Type").loc[PINGOUIN_TYPE[icc_type]]
    low, high = row["CI95"]  # pingouin rounds the CI bounds to 2 decimals
    return {"icc": float(row["ICC"]), "ci_low": float(low), "ci_high": float(high), "n": n}


def icc_table(long: pd.DataFrame, *, params_id: str, source: str, icc_type: str) -> pl.DataFrame:
    """ICC per feature of a long frame ``target, rater, feature, value``."""
    rows = []
    for feature, part in long.groupby("feature", sort=True):
        values = icc(part[["target", "rater", "value"]], icc_type)
        rows.append(
            {
                "feature": str(feature),
                "params_id": params_id,
                "source": source,
                "icc_type": icc_type,
                **{
                    k: (None if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in values.items()
                },
            }
        )
    return pl.DataFrame(rows, schema=ROBUSTNESS_SCHEMA)


def reader_robustness(features: pl.DataFrame, cases: pl.DataFrame) -> pl.DataFrame:
    """ICC(2,1) across readers, per params_id, from ``radiomics_features`` and ``cases``.

    ``cases`` needs ``case_id`` and ``reader``; the lesion is ``patient_key`` + ``lesion`` (or
    ``series_id``/``image_sha256`` when there is no lesion column). Only lesions read by 2+
    readers count; without any, the result is empty.
    """
    if "reader" not in cases.columns or features.is_empty():
        return pl.DataFrame(schema=ROBUSTNESS_SCHEMA)
    lesion_parts = [c for c in ("patient_key", "lesion") if c in cases.columns]
    if "lesion" not in cases.columns:
        lesion_parts += [c for c in ("image_sha256",) if c in cases.columns]
    read = cases.filter(pl.col("reader").is_not_null()).select(
        "case_id",
        pl.concat_str([pl.col(c).cast(pl.String) for c in lesion_parts], separator="|").alias(
            "target"
        ),
        pl.col("reader").cast(pl.String).alias("rater"),
    )
    multi = (
        read.group_by("target").agg(pl.col("rater").n_unique().alias("k")).filter(pl.col("k") >= 2)
    )
    read = read.join(multi.select("target"), on="target", how="semi")
    if read.is_empty():
        return pl.DataFrame(schema=ROBUSTNESS_SCHEMA)
    joined = features.join(read, on="case_id", how="inner")
    parts = [
        icc_table(
            part.select("target", "rater", "feature", "value").to_pandas(),
            params_id=str(params_id),
            source="readers",
            icc_type="ICC(2,1)",
        )
        for (params_id,), part in joined.group_by(["params_id"], maintain_order=True)
    ]
    return pl.concat(parts) if parts else pl.DataFrame(schema=ROBUSTNESS_SCHEMA)


# perturbations ---------------------------------------------------------------------------
def perturb(image: Any, mask: Any, perturbation: dict[str, Any], seed: int) -> tuple[Any, Any]:
    """A perturbed (image, mask) pair (SimpleITK images) for one perturbation spec.

    ``noise_sd``: Gaussian noise with that fraction of the image's SD inside the mask;
    ``rotation_deg``: rotation about the mask's centroid around the slice axis (linear
    interpolation for the image, nearest neighbour for the mask); ``translation_voxels``:
    shift by that fraction of a voxel along every axis; ``mask_radius``: binary dilation (> 0)
    or erosion (< 0) of the mask by that many voxels (in-slice and across slices).
    """
    import SimpleITK as sitk

    mask = sitk.Cast(mask > 0, sitk.sitkUInt8)
    if perturbation.get("noise_sd"):
        values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0]
        sd = float(np.std(values)) * float(perturbation["noise_sd"])
        image = sitk.AdditiveGaussianNoise(sitk.Cast(image, sitk.sitkFloat64), sd, 0.0, seed)
        image = sitk.Cast(image, sitk.sitkFloat64)
    angle = float(perturbation.get("rotation_deg", 0.0))
    shift = float(perturbation.get("translation_voxels", 0.0))
    if angle or shift:
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(mask)
        transform = sitk.Euler3DTransform()
        transform.SetCenter(stats.GetCentroid(1))
        transform.SetRotation(0.0, 0.0, math.radians(angle))
        transform.SetTranslation([shift * s for s in image.GetSpacing()])
        image = sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
        mask = sitk.Resample(mask, mask, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    radius = int(perturbation.get("mask_radius", 0))
    if radius > 0:
        mask = sitk.BinaryDilate(mask, [radius] * 3)
    elif radius < 0:
        mask = sitk.BinaryErode(mask, [-radius] * 3)
    return image, mask


def perturbation_features(
    cases: Sequence[tuple[str, Any, Any]],
    settings: dict[str, Any] | str,
    perturbations: Sequence[dict[str, Any]] = DEFAULT_PERTURBATIONS,
    seed: int = 0,
    enabled: dict[str, list[str]] | None = None,
    label: int = 1,
) -> pd.DataFrame:
    """Long frame ``target, rater, feature, value``: pyradiomics features of every case under
    the original image and each perturbation (rater = perturbation name, ``original`` too).

    ``cases``: (target, image, mask) with paths or SimpleITK images (mask value ``label``);
    ``settings``: pyradiomics settings, or the path of a parameter file.
    """
    import SimpleITK as sitk
    from radiomics import featureextractor

    extractor = (
        featureextractor.RadiomicsFeatureExtractor(str(settings))
        if isinstance(settings, str)
        else featureextractor.RadiomicsFeatureExtractor(**settings)
    )
    if enabled is not None:
        extractor.disableAllFeatures()
        extractor.enableFeaturesByName(**enabled)
    rows = []
    for index, (target, image, mask) in enumerate(cases):
        image = image if isinstance(image, sitk.Image) else sitk.ReadImage(str(image))
        mask = mask if isinstance(mask, sitk.Image) else sitk.ReadImage(str(mask))
        mask = sitk.Cast(mask == label, sitk.sitkUInt8)
        variants = [("original", image, mask)]
        variants += [(p["name"], *perturb(image, mask, p, seed + index)) for p in perturbations]
        for rater, img, msk in variants:
            result = extractor.execute(img, msk, label=1)
            rows += [
                {"target": target, "rater": rater, "feature": k, "value": float(v)}
                for k, v in result.items()
                if not k.startswith("diagnostics_")
            ]
    return pd.DataFrame(rows)


def perturbation_robustness(long: pd.DataFrame, params_id: str) -> pl.DataFrame:
    """ICC(1,1) per feature over the perturbed copies of each case."""
    return icc_table(long, params_id=params_id, source="perturbation", icc_type="ICC(1,1)")


def robust_features(table: pl.DataFrame, min_icc: float, params_id: str | None = None) -> set[str]:
    """Features whose ICC lower 95% bound is >= ``min_icc`` in every row of ``table`` for them."""
    if params_id is not None:
        table = table.filter(pl.col("params_id") == params_id)
    worst = table.group_by("feature").agg(
        pl.col("ci_low").min().alias("low"), pl.col("ci_low").null_count().alias("missing")
    )
    keep = worst.filter((pl.col("missing") == 0) & (pl.col("low") >= min_icc))
    return set(keep["feature"].to_list())


def lake_perturbation_robustness(
    home: Any, n_cases: int, centers: Sequence[str] = (), seed: int = 0
) -> pl.DataFrame:
    """ICC(1,1) under ``DEFAULT_PERTURBATIONS`` of the lake's first ``n_cases`` cases (by
    case_id; only ``centers`` if given, e.g. the development centers), per applicable params_id.

    Images and masks are loaded as the extraction loads them (``mask_qc.load_case_task``).
    """
    import SimpleITK as sitk

    from assets.imaging.cases import LOCATORS_FILE, case_tasks, read_locators
    from assets.imaging.mask_qc import load_case_task
    from assets.radiomics.extract import quiet_radiomics
    from assets.radiomics.params import applies_to, discover_params

    cases = home.read_table("cases")
    if n_cases <= 0 or cases.is_empty():
        return pl.DataFrame(schema=ROBUSTNESS_SCHEMA)
    if centers:
        cases = cases.filter(pl.col("center_id").is_in(list(centers)))
    cases = cases.sort("case_id").head(n_cases)
    tasks = case_tasks(home.landing, cases, read_locators(home.state_dir / LOCATORS_FILE))
    modality = dict.fromkeys(cases["case_id"].to_list())
    if "modality" in cases.columns:
        modality = dict(zip(cases["case_id"], cases["modality"], strict=True))
    params, _ = discover_params(home.params_dir, landing=home.landing)
    quiet_radiomics()
    loaded = []
    for task in tasks:
        image, mask = load_case_task(task)
        loaded.append(
            (task["case_id"], image, sitk.Cast(mask == int(task["label"]), sitk.sitkUInt8))
        )
    parts = []
    for p in params:
        chosen = [c for c in loaded if applies_to(p.params_id, modality.get(c[0]))]
        if len(chosen) >= 2:
            long = perturbation_features(chosen, str(p.path), seed=seed)
            parts.append(perturbation_robustness(long, p.params_id))
    return pl.concat(parts) if parts else pl.DataFrame(schema=ROBUSTNESS_SCHEMA)
