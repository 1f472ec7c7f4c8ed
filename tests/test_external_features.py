"""External feature tables: radMLBench's real radiomics tables and a pyradiomics batch output land
and round-trip exactly (against pandas reading the source files); quarantine rules; the shared
pivot (DuckDB equals polars, the case rule applied and stated); the pivot views."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest

from assets.clinical.external import external_case_id, load_external_features
from assets.clinical.load import clinical_files, load_clinical
from assets.clinical.pivot import pivot_features
from dagster_project.pseudonym import Pseudonymizer
from tests.conftest import shared_path

PSEUDO = Pseudonymizer(b"test")
RADMLBENCH = (
    "Colorectal-Liver-Metastases",
    "HCC-TACE-Seg",
    "Head-Neck-Radiomics-HN1",
    "NSCLC-Radiogenomics",
    "WORC-Lipo",
)


def _center(dataset: str) -> str:
    return "C_" + "".join(ch for ch in dataset if ch.isalnum())[:12]


@pytest.fixture(scope="module")
def radmlbench(tmp_path_factory):
    """A landing zone with each radMLBench table as a feature set (one center per dataset) and the
    labels as a clinical CSV; plus the pandas reading of every source file."""
    landing = tmp_path_factory.mktemp("radmlbench") / "landing"
    (landing / "clinical").mkdir(parents=True)
    sources, clinical_rows = {}, []
    for dataset in RADMLBENCH:
        source = pd.read_csv(
            shared_path("radiomics_features", "radMLBench", "datasets", f"{dataset}.gz")
        )
        sources[dataset] = source
        folder = landing / "features" / _center(dataset)
        folder.mkdir(parents=True)
        source.drop(columns=["Target"]).to_csv(folder / f"{dataset}.csv", index=False)
        clinical_rows.append(
            pd.DataFrame(
                {"patient_id": source.ID, "center_id": _center(dataset), "target": source.Target}
            )
        )
    pd.concat(clinical_rows).to_csv(landing / "clinical" / "radmlbench_labels.csv", index=False)
    clinical, clinical_rejects, _ = load_clinical(clinical_files(landing), landing, PSEUDO)
    assert clinical_rejects == []
    long, rejects, stats = load_external_features(landing, PSEUDO, None, clinical)
    return {
        "landing": landing,
        "sources": sources,
        "clinical": clinical,
        "long": long,
        "rejects": rejects,
        "stats": stats,
    }


def test_radmlbench_tables_land_with_exact_counts(radmlbench):
    long, stats, sources = radmlbench["long"], radmlbench["stats"], radmlbench["sources"]
    assert radmlbench["rejects"] == []
    assert long.columns == [
        "case_id",
        "patient_key",
        "feature_set",
        "feature",
        "value",
        "center_id",
        "source_file",
    ]
    assert long.schema["value"] == pl.Float64
    total_rows = sum(len(s) for s in sources.values())
    assert stats["landed"] == stats["ingested"] == total_rows and stats["quarantined"] == 0
    for dataset, source in sources.items():
        features = [c for c in source.columns if c not in ("ID", "Target")]
        part = long.filter(pl.col("feature_set") == dataset)
        assert part.height == len(source) * len(features)
        assert (
            part.get_column("case_id").n_unique()
            == len(source)
            == part.get_column("patient_key").n_unique()
        )
        assert stats["feature_sets"][f"{_center(dataset)}/{dataset}"] == {
            "rows": len(source),
            "features": len(features),
        }
        assert part.get_column("feature").unique(maintain_order=True).to_list() == features
        assert part.get_column("source_file").unique().to_list() == [
            f"features/{_center(dataset)}/{dataset}.csv"
        ]


def test_radmlbench_values_and_labels_round_trip_exactly(radmlbench):
    """Pivot each feature set back to wide and compare every value with pandas' reading of the source."""
    for dataset, source in radmlbench["sources"].items():
        wide, rule = pivot_features(radmlbench["long"], "external", dataset, "first")
        assert rule.startswith("one case per patient: the lowest case_id; 0 of ")
        keys = [PSEUDO(_center(dataset), pid) for pid in source.ID]
        ordered = wide.join(pl.DataFrame({"patient_key": keys}), on="patient_key", how="right")
        features = [c for c in source.columns if c not in ("ID", "Target")]
        assert ordered.height == len(source)
        assert np.array_equal(
            ordered.select(features).to_numpy(), source[features].to_numpy(dtype=float)
        )
        labels = radmlbench["clinical"].join(
            pl.DataFrame({"patient_key": keys}), on="patient_key", how="right"
        )
        assert labels.get_column("target").to_list() == source.Target.tolist()
        assert radmlbench["clinical"].schema["target"] == pl.Int64


def test_pivot_duckdb_equals_polars_on_real_tables(radmlbench):
    for dataset in ("WORC-Lipo", "Head-Neck-Radiomics-HN1"):
        ours, rule_duckdb = pivot_features(radmlbench["long"], "external", dataset, "largest_roi")
        statement, _ = pivot_features(
            radmlbench["long"], "external", dataset, "largest_roi", engine="duckdb_pivot"
        )
        theirs, rule_polars = pivot_features(
            radmlbench["long"], "external", dataset, "largest_roi", engine="polars"
        )
        assert ours.equals(theirs) and statement.equals(theirs) and rule_duckdb == rule_polars
        measure = {"WORC-Lipo": "MR", "Head-Neck-Radiomics-HN1": "GTV-1"}[dataset]
        assert f"largest ROI by feature {measure}_original_shape_VoxelVolume" in rule_duckdb


def test_a_source_file_landed_as_is_with_unknown_patients(radmlbench, tmp_path):
    """The gzipped source itself lands (ID column, .csv.gz); patients the clinical table lacks are
    quarantined with the reason; a file directly under features/ is misplaced."""
    landing = tmp_path / "landing"
    source = shared_path(
        "radiomics_features", "radMLBench", "datasets", "Head-Neck-Radiomics-HN1.gz"
    )
    (landing / "features" / "C9").mkdir(parents=True)
    (landing / "features" / "C9" / "hn1.csv.gz").write_bytes(source.read_bytes())
    (landing / "features" / "loose.csv").write_text("patient_id,f\nA,1\n")
    (landing / "features" / "C9" / "notes.txt").write_text("not a table")
    known = pl.DataFrame({"patient_key": [PSEUDO("C9", "HN1004")], "center_id": ["C9"]})
    long, rejects, stats = load_external_features(landing, PSEUDO, None, known)
    reference = pd.read_csv(source)
    assert long.get_column("patient_key").unique().to_list() == [PSEUDO("C9", "HN1004")]
    assert long.height == reference.shape[1] - 1  # Target is just another numeric column here
    unknown = [r for r in rejects if r.rule == "unknown_patient"]
    assert len(unknown) == len(reference) - 1
    row = reference.index[reference.ID != "HN1004"][0] + 2
    assert unknown[0].record == f"row {row}"
    assert unknown[0].reason == (
        f"unknown_patient: features/C9/hn1.csv.gz row {row}: the ID value matches no patient of center C9 "
        "in the clinical table (check how the id is spelled in both files, or land the patient's "
        "clinical row first)"
    )
    assert {r.rule: r.reason for r in rejects if not r.record} == {
        "misplaced_file": (
            "misplaced_file: features/loose.csv is not directly in a center folder; put feature tables "
            "in features/<center_id>/<feature_set>.csv (or .parquet)"
        ),
        "unsupported_file_type": (
            "unsupported_file_type: features/C9/notes.txt is not a .csv, .csv.gz or .parquet feature table; "
            "convert it or move it out of landing/features/"
        ),
    }
    assert (
        stats["landed"]
        == len(reference) + 2
        == stats["ingested"] + stats["quarantined"] + stats["merged"]
    )
    assert not any(pid in r.reason for r in rejects for pid in reference.ID)


# --- a pyradiomics batch output ------------------------------------------------------------------
def _batch_output(landing: Path) -> pd.DataFrame:
    """pyradiomics' baseline shape features as its batch output CSV: Image, Mask, patient_id, then
    diagnostics_* and the features; one row per case (original and resampled per image)."""
    baseline = pd.read_csv(
        shared_path("pyradiomics", "baseline", "baseline_shape.csv"), index_col=0
    ).T
    cases = baseline.index.tolist()
    batch = pd.DataFrame(
        {
            "Image": [f"{c.split('_')[0]}_image.nrrd" for c in cases],
            "Mask": [f"{c.split('_')[0]}_label.nrrd" for c in cases],
            "patient_id": [c.split("_")[0] for c in cases],
            "sequence": ["T1" if c.startswith("brain") else "CT" for c in cases],
        }
    )
    batch = pd.concat([batch, baseline.reset_index(drop=True)], axis=1)
    folder = landing / "features" / "C1"
    folder.mkdir(parents=True, exist_ok=True)
    batch.to_csv(folder / "pyradiomics_batch.csv", index=False)
    return baseline


def test_pyradiomics_batch_output_lands_as_it_is(tmp_path):
    landing = tmp_path / "landing"
    baseline = _batch_output(landing)
    long, rejects, stats = load_external_features(landing, PSEUDO)
    features = [c for c in baseline.columns if c.startswith("original_")]
    diagnostics = [c for c in baseline.columns if c.startswith("diagnostics_")]
    assert rejects == [] and stats["ingested"] == len(baseline) == 8
    assert sorted(long.get_column("feature").unique().to_list()) == sorted(features)
    assert stats["skipped_columns"]["C1/pyradiomics_batch"] == {
        "batch": ["Image", "Mask"],
        "diagnostics": len(diagnostics),
    }
    assert stats["non_numeric_columns"]["C1/pyradiomics_batch"] == ["sequence"]
    # two cases per patient (original, resampled): distinct, stable case ids
    assert (
        long.get_column("case_id").n_unique() == 8
        and long.get_column("patient_key").n_unique() == 4
    )
    brain1 = PSEUDO("C1", "brain1")
    ids = (
        long.filter(pl.col("patient_key") == brain1).get_column("case_id").unique().sort().to_list()
    )
    assert ids == sorted(external_case_id("C1", "pyradiomics_batch", brain1, n) for n in (1, 2))
    for case, row in baseline.iterrows():
        case_id = external_case_id(
            "C1", "pyradiomics_batch", PSEUDO("C1", case.split("_")[0]), 2 if "_" in case else 1
        )
        got = dict(long.filter(pl.col("case_id") == case_id).select("feature", "value").iter_rows())
        assert got == {f: float(row[f]) for f in features}, case


def test_pivot_largest_roi_picks_the_baseline_largest_volume_and_says_so(tmp_path):
    landing = tmp_path / "landing"
    baseline = _batch_output(landing)
    long, _, _ = load_external_features(landing, PSEUDO)
    wide, rule = pivot_features(long, "external", "pyradiomics_batch", "largest_roi")
    polars_wide, _ = pivot_features(
        long, "external", "pyradiomics_batch", "largest_roi", engine="polars"
    )
    assert wide.equals(polars_wide)
    assert rule == (
        "one case per patient: the largest ROI by feature original_shape_VoxelVolume of the same feature "
        "set (ties and cases without a size: lowest case_id); 4 of 4 patients had several cases"
    )
    volumes = baseline["original_shape_VoxelVolume"].astype(float)
    largest = volumes.groupby(volumes.index.str.split("_").str[0]).max()
    got = dict(
        zip(
            wide.get_column("patient_key"),
            wide.get_column("original_shape_VoxelVolume"),
            strict=True,
        )
    )
    assert got == {PSEUDO("C1", p): v for p, v in largest.items()}

    first, rule_first = pivot_features(long, "external", "pyradiomics_batch", "first")
    assert rule_first.startswith("one case per patient: the lowest case_id;")
    lowest = long.group_by("patient_key").agg(pl.col("case_id").min())
    assert dict(first.select("patient_key", "case_id").iter_rows()) == dict(lowest.iter_rows())


def _synthetic_long() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Three patients, five cases, no shape feature; cases carry ROI voxels and phases."""
    rows = []
    for case, patient, values in (
        ("k1", "p1", (1.0, 2.0)),
        ("k2", "p1", (3.0, 4.0)),
        ("k3", "p2", (5.0, None)),
        ("k4", "p3", (7.0, 8.0)),
        ("k5", "p3", (9.0, 10.0)),
    ):
        for feature, value in zip(
            ("original_firstorder_Mean", "original_glcm_Contrast"), values, strict=True
        ):
            rows.append((case, patient, "C1", feature, value, "ct_default"))
    long = pl.DataFrame(
        rows,
        schema=["case_id", "patient_key", "center_id", "feature", "value", "params_id"],
        orient="row",
    )
    cases = pl.DataFrame(
        {
            "case_id": ["k1", "k2", "k3", "k4", "k5"],
            "series_id": ["s1", "s2", "s3", "s4", "s5"],
            "qc_roi_voxels": [100, 50, 10, 5, 500],
            "phase": [None, "arterial", None, None, "portal_venous"],
        }
    )
    series = pl.DataFrame(
        {
            "series_id": ["s1", "s2", "s3", "s4", "s5"],
            "phase": ["portal_venous", None, "arterial", "x", None],
        }
    )
    return long, cases, series


def test_case_rules_with_qc_voxels_phase_and_fallback():
    long, cases, series = _synthetic_long()
    wide, rule = pivot_features(long, "radiomics", "ct_default", "largest_roi", cases=cases)
    assert dict(wide.select("patient_key", "case_id").iter_rows()) == {
        "p1": "k1",
        "p2": "k3",
        "p3": "k5",
    }
    assert rule == (
        "one case per patient: the largest ROI by cases.qc_roi_voxels (ties and cases without a size: "
        "lowest case_id); 2 of 3 patients had several cases"
    )
    assert wide.filter(pl.col("patient_key") == "p2").get_column(
        "original_glcm_Contrast"
    ).to_list() == [None]

    fallback, rule = pivot_features(long, "radiomics", "ct_default", "largest_roi")
    assert dict(fallback.select("patient_key", "case_id").iter_rows()) == {
        "p1": "k1",
        "p2": "k3",
        "p3": "k4",
    }
    assert rule == (
        "one case per patient: the lowest case_id, because largest ROI was asked but there is no ROI size "
        "(neither original_shape_VoxelVolume/MeshVolume nor cases.qc_roi_voxels); 2 of 3 patients had "
        "several cases"
    )

    portal, rule = pivot_features(
        long, "radiomics", "ct_default", "phase:portal_venous", cases=cases, series=series
    )
    assert dict(portal.select("patient_key", "case_id").iter_rows()) == {"p1": "k1", "p3": "k5"}
    assert rule == (
        "one case per patient: phase portal_venous, then the largest ROI by cases.qc_roi_voxels (ties and "
        "cases without a size: lowest case_id); 0 of 2 patients had several cases; 1 of 3 patients have "
        "no portal_venous case and are left out"
    )
    for engine in ("duckdb_pivot", "polars"):
        other, _ = pivot_features(
            long,
            "radiomics",
            "ct_default",
            "phase:portal_venous",
            cases=cases,
            series=series,
            engine=engine,
        )
        assert other.equals(portal), engine
        other, _ = pivot_features(
            long, "radiomics", "ct_default", "largest_roi", cases=cases, engine=engine
        )
        assert other.equals(wide), engine

    with pytest.raises(ValueError, match="allowed: largest_roi, first, phase:<name>"):
        pivot_features(long, "radiomics", "ct_default", "smallest")
    with pytest.raises(ValueError, match="needs a phase"):
        pivot_features(long, "radiomics", "ct_default", "phase:arterial", cases=cases.drop("phase"))


def test_pivot_over_a_duckdb_connection_and_the_pivot_views(lake):
    """The lake's tables through the catalog: the pivot, the by-case map view, the ct_default view
    whose column list is pyradiomics' own enabled original features."""
    from radiomics import getFeatureClasses

    from dagster_project.catalog import create_views

    long, cases, _ = _synthetic_long()
    extra = pl.DataFrame(
        {
            "case_id": ["k1", "k2"],
            "patient_key": ["p1", "p1"],
            "center_id": ["C1", "C1"],
            "feature": ["original_shape_VoxelVolume"] * 2,
            "value": [10.0, 20.0],
            "params_id": ["ct_default"] * 2,
        }
    )
    radiomics = pl.concat([long, extra]).with_columns(extractor_version=pl.lit("3.1.4"))
    lake.write_table("radiomics_features", radiomics)
    lake.write_table("cases", cases)
    con = duckdb.connect()
    report = create_views(con, lake)
    assert {"radiomics_features_by_case", "radiomics_features_wide_ct_default"} <= set(
        report.sql_views
    ), report.failed

    wide, rule = pivot_features(con, "radiomics", "ct_default", "largest_roi")
    assert dict(wide.select("patient_key", "case_id").iter_rows()) == {
        "p1": "k2",
        "p2": "k3",
        "p3": "k4",
    }
    assert "original_shape_VoxelVolume" in rule
    by_case = con.sql(
        "select case_id, features['original_firstorder_Mean'] as mean, n_features "
        "from radiomics_features_by_case order by case_id"
    ).fetchall()
    assert by_case[:2] == [("k1", 1.0, 3), ("k2", 3.0, 3)]

    expected = sorted(
        f"original_{name}_{feature}"
        for name, cls in getFeatureClasses().items()
        if name != "shape2D"
        for feature, deprecated in cls.getFeatureNames().items()
        if not deprecated
    )
    view = con.sql("select * from radiomics_features_wide_ct_default order by case_id").pl()
    assert sorted(c for c in view.columns if c.startswith("original_")) == expected
    assert view.height == 5 and view.get_column("original_firstorder_Mean").to_list() == [
        1.0,
        3.0,
        5.0,
        7.0,
        9.0,
    ]


def test_case_id_rows_link_through_cases_and_rules(tmp_path):
    landing = tmp_path / "landing"
    folder = landing / "features" / "C1"
    folder.mkdir(parents=True)
    cases = pl.DataFrame(
        {
            "case_id": ["K1", "K2", "K3"],
            "patient_key": ["pk1", "pk2", "pk3"],
            "center_id": ["C1", "C1", "C2"],
        }
    )
    pl.DataFrame(
        {
            "case_id": ["K1", "K2", "K2", "K9", None, "K3", "K3"],
            "cd3_density": [1.5, 2.5, 2.5, 9.0, 1.0, 3.0, 3.5],
            "region": ["tumor"] * 7,
        }
    ).write_parquet(folder / "pathology.parquet")
    (folder / "empty.csv").write_text("case_id,f1\n")
    (folder / "noid.csv").write_text("lesion,f1\nA,1\n")
    long, rejects, stats = load_external_features(landing, PSEUDO, cases)
    assert long.select("case_id", "patient_key", "center_id", "value").rows() == [
        ("K1", "pk1", "C1", 1.5),
        ("K2", "pk2", "C1", 2.5),
    ]
    assert stats["non_numeric_columns"] == {"C1/pathology": ["region"]}
    got = [(r.rule, r.record) for r in rejects]
    assert got == [
        ("empty_file", ""),
        ("missing_id_column", ""),
        ("unknown_case_id", "row 4"),
        ("missing_id", "row 5"),
        ("conflicting_duplicate", "row 6"),
        ("conflicting_duplicate", "row 7"),
    ]
    reasons = [r.reason for r in rejects]
    assert reasons[0] == "empty_file: features/C1/empty.csv has no data rows; land a file with data"
    assert reasons[1] == (
        "missing_id_column: features/C1/noid.csv has no patient_id or case_id column; add one so each "
        "row can be linked to a patient"
    )
    assert reasons[2] == (
        "unknown_case_id: features/C1/pathology.parquet row 4 has a case_id that is not in the cases "
        "table (3 cases known); use the case_id of a landed image/mask pair, or link the row by "
        "patient_id instead"
    )
    assert reasons[3] == (
        "missing_id: features/C1/pathology.parquet row 5 has no case_id value (each row needs a "
        "patient_id or case_id to link it to a patient; fill it in and land the file again)"
    )
    assert reasons[4] == (
        "conflicting_duplicate: features/C1/pathology.parquet row 6 and row 7 have the same case_id with "
        "different feature values (keep one row per case; all of these rows are quarantined until the "
        "file is corrected)"
    )
    assert (
        stats["merged"] == 1
        and stats["landed"] == 9 == stats["ingested"] + stats["quarantined"] + stats["merged"]
    )


def test_pivot_engines_agree_on_nan_values_null_values_and_absent_features():
    from polars.testing import assert_frame_equal

    long = pl.DataFrame(
        {
            "case_id": ["k1", "k1", "k2", "k3", "k3"],
            "patient_key": ["p1", "p1", "p2", "p3", "p3"],
            "center_id": ["C1"] * 5,
            "feature": ["a", "b", "a", "a", "b"],
            "value": [float("nan"), 1.0, 2.0, None, 3.0],
            "params_id": ["x"] * 5,
        }
    )
    frames = [
        pivot_features(long, "radiomics", "x", "first", engine=e)[0]
        for e in ("duckdb", "duckdb_pivot", "polars")
    ]
    for other in frames[1:]:
        assert_frame_equal(frames[0], other)
    wide = frames[0]
    assert np.isnan(wide.get_column("a")[0]) and wide.get_column("a")[2] is None
    assert wide.get_column("b").to_list() == [1.0, None, 3.0]  # k2 has no feature b
