"""Feature robustness (issue 15): ICCs of radiomics features, pingouin checked against
Shrout & Fleiss (Psychol Bull 1979;86:420-428, Table 2: 6 targets x 4 judges; ICC(1,1) = .17,
ICC(2,1) = .29, ICC(3,1) = .71), and computed from real images:

- readers: the four real IBSI soft-tissue-sarcoma CTs (``ibsi_sts/STS_04x/nifti``) with their
  published contour (reader A) and that contour dilated by one voxel (reader B), plus the
  AutoRadiomics prostate MR with its mask and its shipped dilated mask; pyradiomics features
  through the ``cases`` (``reader`` column) and ``radiomics_features`` shape of the lake; the
  ICC(2,1) of one feature is recomputed from Shrout & Fleiss's ANOVA formula by hand.
- perturbations (Zwanenburg et al. 2019): noise leaves every shape feature unchanged (ICC 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest

from tests.conftest import shared_path

SHROUT_FLEISS = [
    [9, 2, 5, 8],
    [6, 1, 3, 2],
    [8, 4, 6, 8],
    [7, 1, 2, 6],
    [10, 5, 6, 9],
    [6, 2, 4, 7],
]
ENABLED = {"shape": ["VoxelVolume", "Sphericity"], "firstorder": ["Mean", "Energy", "Kurtosis"]}


def _long(table) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"target": i, "rater": j, "value": v}
            for i, r in enumerate(table)
            for j, v in enumerate(r)
        ]
    )


def test_icc_equals_shrout_fleiss_worked_example():
    from assets.radiomics.robustness import icc

    published = {"ICC(1,1)": 0.17, "ICC(2,1)": 0.29, "ICC(3,1)": 0.71}
    for kind, value in published.items():
        assert round(icc(_long(SHROUT_FLEISS), kind)["icc"], 2) == value


def _icc21_by_hand(wide: np.ndarray) -> float:
    """Shrout & Fleiss (1979) case 2: (BMS - EMS) / (BMS + (k-1) EMS + k (JMS - EMS) / n)."""
    n, k = wide.shape
    grand = wide.mean()
    bms = k * ((wide.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    jms = n * ((wide.mean(axis=0) - grand) ** 2).sum() / (k - 1)
    resid = wide - wide.mean(axis=1, keepdims=True) - wide.mean(axis=0, keepdims=True) + grand
    ems = (resid**2).sum() / ((n - 1) * (k - 1))
    return (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)


@pytest.fixture(scope="module")
def two_reader_lake(tmp_path_factory) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``cases`` (with ``reader``) and long ``radiomics_features`` computed from real images."""
    import SimpleITK as sitk
    from radiomics import featureextractor

    folder = tmp_path_factory.mktemp("readers")
    pairs = []
    for patient in ("STS_041", "STS_042", "STS_043", "STS_044"):
        image = shared_path("dicom", "ibsi_sts", patient, "nifti", "CT_image.nii.gz")
        mask = shared_path("dicom", "ibsi_sts", patient, "nifti", "CT_mask.nii.gz")
        dilated = folder / f"{patient}_dilated.nii.gz"
        sitk.WriteImage(sitk.BinaryDilate(sitk.ReadImage(str(mask)) > 0, [1, 1, 1]), str(dilated))
        pairs += [(patient, "A", image, mask), (patient, "B", image, dilated)]
    prostate = ("dicom", "autoradiomics", "nifti", "prostate")
    pairs += [
        (
            "prostate",
            "A",
            shared_path(*prostate, "img.nii.gz"),
            shared_path(*prostate, "seg_one_label.nii.gz"),
        ),
        (
            "prostate",
            "B",
            shared_path(*prostate, "img.nii.gz"),
            shared_path(*prostate, "seg_dilated_10mm.nii.gz"),
        ),
    ]
    extractor = featureextractor.RadiomicsFeatureExtractor(binWidth=25)
    extractor.disableAllFeatures()
    extractor.enableFeaturesByName(**ENABLED)
    cases, rows = [], []
    for patient, reader, image, mask in pairs:
        case_id = f"{patient}-{reader}"
        cases.append({"case_id": case_id, "patient_key": patient, "lesion": "1", "reader": reader})
        result = extractor.execute(str(image), str(mask), label=1)
        rows += [
            {"case_id": case_id, "params_id": "ct_default", "feature": k, "value": float(v)}
            for k, v in result.items()
            if not k.startswith("diagnostics_")
        ]
    return pl.DataFrame(cases), pl.DataFrame(rows)


def test_reader_icc21_from_real_masks(two_reader_lake):
    from assets.radiomics.robustness import ROBUSTNESS_SCHEMA, reader_robustness, robust_features

    cases, features = two_reader_lake
    table = reader_robustness(features, cases)
    assert table.schema == pl.Schema(ROBUSTNESS_SCHEMA)
    assert set(table["source"]) == {"readers"} and set(table["icc_type"]) == {"ICC(2,1)"}
    assert set(table["n"]) == {5}
    wide = (
        features.join(cases, on="case_id")
        .filter(pl.col("feature") == "original_shape_Sphericity")
        .pivot("reader", index="patient_key", values="value")
        .sort("patient_key")
        .select("A", "B")
        .to_numpy()
    )
    row = table.filter(pl.col("feature") == "original_shape_Sphericity")
    assert row["icc"][0] == pytest.approx(_icc21_by_hand(wide), abs=1e-9)
    assert row["ci_low"][0] <= row["icc"][0] <= row["ci_high"][0]
    kept = robust_features(table, 0.5)
    lows = dict(zip(table["feature"], table["ci_low"], strict=True))
    assert kept == {f for f, low in lows.items() if low is not None and low >= 0.5}


def test_noise_perturbation_leaves_shape_features_unchanged():
    from assets.radiomics.robustness import perturbation_features, perturbation_robustness

    cases = [
        (
            p,
            shared_path("dicom", "ibsi_sts", p, "nifti", "CT_image.nii.gz"),
            shared_path("dicom", "ibsi_sts", p, "nifti", "CT_mask.nii.gz"),
        )
        for p in ("STS_041", "STS_042", "STS_043")
    ]
    long = perturbation_features(
        cases,
        {"binWidth": 25},
        perturbations=({"name": "noise", "noise_sd": 0.1}, {"name": "erode", "mask_radius": -1}),
        enabled={"shape": ["VoxelVolume"], "firstorder": ["Mean"]},
    )
    noise_only = long[long["rater"].isin(["original", "noise"])]
    table = perturbation_robustness(noise_only, "ct_default")
    volume = table.filter(pl.col("feature") == "original_shape_VoxelVolume")
    assert volume["icc"][0] == pytest.approx(1.0, abs=1e-12)  # noise never moves the mask
    assert set(table["icc_type"]) == {"ICC(1,1)"}
    eroded = long[(long["rater"] == "erode") & (long["feature"] == "original_shape_VoxelVolume")]
    original = long[
        (long["rater"] == "original") & (long["feature"] == "original_shape_VoxelVolume")
    ]
    assert (eroded["value"].to_numpy() < original["value"].to_numpy()).all()


def test_feature_robustness_asset_materializes_and_passes_its_suite(lake, two_reader_lake):
    """The Dagster asset over the lake's cases (with readers) and radiomics_features."""
    import dagster as dg

    from assets.radiomics.defs import feature_robustness
    from assets.radiomics.robustness import reader_robustness
    from dagster_project.resources import LakeResource
    from quality.checks import suite_check

    cases, features = two_reader_lake
    lake.write_table("cases", cases)
    lake.write_table("radiomics_features", features)
    run = dg.materialize(
        [feature_robustness, suite_check("feature_robustness")],
        resources={"lake": LakeResource(home=str(lake.home))},
    )
    assert run.success
    checks = run.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)
    stored = lake.read_table("feature_robustness").sort("feature")
    assert stored.equals(reader_robustness(features, cases).sort("feature"))


LIGHT_PARAMS = """imageType:
  Original: {}
featureClass:
  shape: [VoxelVolume, Sphericity]
  firstorder: [Mean, Kurtosis]
setting:
  binWidth: 25
  label: 1
"""


def test_readers_and_perturbations_through_the_lake(tmp_path, monkeypatch):
    """Real CTs landed with two readers' masks per lesion (cases.csv ``reader``, ``lesion``),
    the imaging and radiomics assets, then feature_robustness with ``perturbation_cases``:
    ICC(2,1) rows equal pingouin on the lake's own feature values; ICC(1,1) rows for every
    feature from the perturbed copies."""
    import shutil

    import dagster as dg
    import pingouin as pg
    import SimpleITK as sitk

    from assets.imaging.defs import defs as imaging_defs
    from assets.radiomics.defs import feature_robustness, radiomics_features
    from dagster_project.lake import Lake
    from dagster_project.resources import ExtractionBackend, LakeResource
    from quality.checks import suite_check

    home = tmp_path / "lakehouse"
    monkeypatch.setenv("LAKE_HOME", str(home))
    monkeypatch.setenv("LAKE_PSEUDONYM_KEY", "robustness-secret")
    lake = Lake.at(home)
    center = lake.landing / "imaging" / "C1"
    rows = ["Image,Mask,Label,patient_id,reader,lesion"]
    patients = ("STS_041", "STS_042", "STS_043")
    for patient in patients:
        (center / patient).mkdir(parents=True)
        for name in ("CT_image.nii.gz", "CT_mask.nii.gz"):
            shutil.copy2(shared_path("dicom", "ibsi_sts", patient, "nifti", name), center / patient)
        mask = sitk.ReadImage(str(center / patient / "CT_mask.nii.gz")) > 0
        sitk.WriteImage(sitk.BinaryDilate(mask, [1, 1, 1]), str(center / patient / "B.nii.gz"))
        rows.append(f"{patient}/CT_image.nii.gz,{patient}/CT_mask.nii.gz,1,{patient},A,1")
        rows.append(f"{patient}/CT_image.nii.gz,{patient}/B.nii.gz,1,{patient},B,1")
    (center / "cases.csv").write_text("\n".join(rows) + "\n")
    lake.params_dir.mkdir(parents=True, exist_ok=True)
    (lake.params_dir / "ct_default.yaml").write_text(LIGHT_PARAMS)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [
                *imaging_defs.assets,
                radiomics_features,
                feature_robustness,
                suite_check("feature_robustness"),
            ],
            instance=instance,
            resources={"lake": LakeResource(), "extraction": ExtractionBackend(max_workers=1)},
            run_config={"ops": {"feature_robustness": {"config": {"perturbation_cases": 2}}}},
        )
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())
    table = lake.read_table("feature_robustness").filter(pl.col("params_id") == "ct_default")
    readers = table.filter(pl.col("source") == "readers")
    assert set(readers["icc_type"]) == {"ICC(2,1)"} and set(readers["n"]) == {3}
    # the reader ICC of a feature from the lake's own rows, directly with pingouin
    values = (
        lake.read_table("radiomics_features")
        .filter(
            (pl.col("feature") == "original_shape_Sphericity")
            & (pl.col("params_id") == "ct_default")
        )
        .join(lake.read_table("cases").select("case_id", "reader"), on="case_id")
        .select(pl.col("patient_key").alias("target"), pl.col("reader").alias("rater"), "value")
        .to_pandas()
    )
    reference = pg.intraclass_corr(values, targets="target", raters="rater", ratings="value")
    expected = reference.set_index("Type").loc["ICC(A,1)", "ICC"]
    observed = readers.filter(pl.col("feature") == "original_shape_Sphericity")["icc"][0]
    assert observed == pytest.approx(expected, abs=1e-9)
    # perturbations of the first two cases (by case_id): shape is untouched by noise alone
    perturbed = table.filter(pl.col("source") == "perturbation")
    assert set(perturbed["icc_type"]) == {"ICC(1,1)"} and set(perturbed["n"]) == {2}
    assert set(perturbed["feature"]) == set(readers["feature"])


def test_selection_min_icc_keeps_robust_features_only(lake, two_reader_lake):
    """A study with ``selection.min_icc`` reads feature_robustness and keeps the features whose
    ICC lower bound reaches it; without rows for its params_id it is a clear spec error."""
    from assets.radiomics.robustness import reader_robustness, robust_features
    from assets.studies.lake_inputs import study_inputs
    from assets.studies.spec import StudySpecError, parse_study

    cases, features = two_reader_lake
    long = features.join(cases.select("case_id", "patient_key"), on="case_id").with_columns(
        pl.lit("C1").alias("center_id"), pl.lit("pyradiomics v3.1.4").alias("extractor_version")
    )
    lake.write_table("cases", cases.with_columns(pl.lit("C1").alias("center_id")))
    lake.write_table("radiomics_features", long)
    patients = sorted(set(cases["patient_key"]))
    lake.write_table(
        "clinical",
        pl.DataFrame(
            {"patient_key": patients, "center_id": "C1", "y": [i % 2 for i in range(len(patients))]}
        ),
    )
    study = {
        "name": "robust",
        "label": "y",
        "features": {"radiomics": {"params_id": "ct_default"}},
        "case_rule": "first",
        "split": {"development_centers": ["C1"]},
        "selection": {"min_icc": 0.5},
    }
    spec = parse_study(study, "robust.yaml")
    with pytest.raises(
        StudySpecError, match="robust.yaml: selection.min_icc: no feature_robustness"
    ):
        study_inputs(lake, spec)
    table = reader_robustness(features, cases)
    lake.write_table("feature_robustness", table)
    wide, _, info = study_inputs(lake, spec)
    kept = set(wide.columns) - {"patient_key"}
    assert kept == robust_features(table, 0.5, "ct_default") and kept
    assert kept < set(features["feature"])
    assert info["min_icc"].startswith(f"{len(kept)} of {features['feature'].n_unique()}")
