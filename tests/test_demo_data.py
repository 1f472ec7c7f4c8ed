"""The demo landing-zone generator, checked with external readers (pydicom, SimpleITK, pyradiomics,
pandas, lifelines) and against the structure of the group's real export in ../shared/data."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radlake.demo import generator as demo_data
from tests.conftest import shared_path

PATIENTS = 12
SEED = 7
CITATION = re.compile(
    r"^(?P<journal>\D+?) (?P<year>\d{4});(?P<volume>\d+)\((?P<issue>\d+)\):(?P<pages>\d+-\d+)$"
)
TITLE = re.compile(r"^(?P<number>\d+)\.(?P<title>\S.*)$")
AUTHOR = r"[A-Z][a-z]+(?:[ -][A-Za-z]+)* [A-Z]+"
AUTHORS = re.compile(rf"^{AUTHOR}(?: ; {AUTHOR})*$")
IMAGING_WORDS = ("影像", "CT", "MRI", "radiomics", "超声", "PET")


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("demo") / "lakehouse"
    counts = demo_data.generate_demo(home, patients=PATIENTS, seed=SEED)
    assert counts["patients"] == PATIENTS
    return home / "landing"


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _cases(landing: Path) -> list[tuple[Path, dict[str, str]]]:
    rows = []
    for center in sorted((landing / "imaging").iterdir()):
        with open(center / "cases.csv", encoding="utf-8", newline="") as handle:
            rows += [(center, row) for row in csv.DictReader(handle)]
    return rows


def _clinical(landing: Path) -> pd.DataFrame:
    return pd.read_csv(landing / "clinical" / "clinical.csv", dtype={"patient_id": str})


def _grants(landing: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = landing / "portfolio" / "grants"
    read = {"encoding": "utf-8", "dtype": {"批准号": str}}
    return (
        pd.read_csv(folder / "nsfc_grants.csv", **read),
        pd.read_csv(folder / "nsfc_grants_2019_update.csv", **read),
    )


# --- determinism and overwrite protection ---------------------------------------------------------
def test_same_seed_gives_byte_identical_files_and_another_seed_differs(landing, tmp_path):
    again = tmp_path / "again"
    demo_data.generate_demo(again, patients=PATIENTS, seed=SEED)
    first, second = _digests(landing), _digests(again / "landing")
    assert len(first) > 200
    assert first == second

    other = tmp_path / "other"
    demo_data.generate_demo(other, patients=PATIENTS, seed=SEED + 1)
    changed = _digests(other / "landing")
    assert changed["clinical/clinical.csv"] != first["clinical/clinical.csv"]
    assert changed["portfolio/grants/nsfc_grants.csv"] != first["portfolio/grants/nsfc_grants.csv"]


def test_refuses_to_overwrite_a_landing_zone_unless_forced(tmp_path):
    home = tmp_path / "lakehouse"
    (home / "landing" / "clinical").mkdir(parents=True)
    (home / "landing" / "clinical" / "mine.csv").write_text("patient_id,center_id\n")
    (home / "studies").mkdir()
    (home / "studies" / "keep.yaml").write_text("name: keep\n")
    with pytest.raises(FileExistsError, match=r"already holds 1 file.*force=True"):
        demo_data.generate_demo(home, patients=2, seed=SEED)
    assert (home / "landing" / "clinical" / "mine.csv").exists()

    counts = demo_data.generate_demo(home, patients=2, seed=SEED, force=True)
    assert counts["patients"] == 2
    assert not (home / "landing" / "clinical" / "mine.csv").exists()
    assert (home / "studies" / "keep.yaml").exists()  # only landing/ is the generator's


# --- imaging -----------------------------------------------------------------------------------------
def test_dicom_files_are_ct_image_storage_carrying_the_patient_identifiers(landing):
    import pydicom
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    expected = {"C1": ("SIEMENS", 1.25), "C2": ("GE MEDICAL SYSTEMS", 5.0)}
    sop_uids = set()
    for center, case in _cases(landing):
        folder = center / case["Image"]
        files = sorted(folder.glob("*.dcm"))
        assert len(files) in range(12, 21)
        series_uids = set()
        for path in files:
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.SOPInstanceUID.is_valid and ds.StudyInstanceUID.is_valid
            assert ds.Modality == "CT" and (ds.Rows, ds.Columns) == (48, 48)
            manufacturer, thickness = expected[center.name]
            assert ds.Manufacturer == manufacturer and float(ds.SliceThickness) == thickness
            assert ds.PatientID == case["patient_id"]
            assert re.fullmatch(r"[A-Z]+\^[A-Z]+", str(ds.PatientName))
            assert re.fullmatch(r"(19|20)\d{6}", ds.PatientBirthDate)
            assert ds.StudyID == case["study_id"]
            assert case["phase"].replace("_", " ") in ds.SeriesDescription
            assert ds.ContrastBolusAgent and ds.ConvolutionKernel and ds.KVP
            hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            assert ds.pixel_array.dtype == np.int16 and hu.min() >= -1024 and hu.max() < 400
            series_uids.add(ds.SeriesInstanceUID)
            sop_uids.add(ds.SOPInstanceUID)
        assert len(series_uids) == 1
        # odd centers name folders after the patient id, even ones after the accession number
        assert (case["patient_id"] in case["Image"]) == (center.name == "C1")
    assert len(sop_uids) == sum(1 for _ in landing.rglob("*.dcm"))


def test_series_read_by_simpleitk_match_their_masks_and_pydicom_values(landing):
    import pydicom
    import SimpleITK as sitk

    for center, case in _cases(landing):
        reader = sitk.ImageSeriesReader()
        names = reader.GetGDCMSeriesFileNames(str(center / case["Image"]))
        reader.SetFileNames(names)
        image = reader.Execute()
        mask = sitk.ReadImage(str(center / case["Mask"]))
        assert mask.GetSize() == image.GetSize()
        assert mask.GetOrigin() == image.GetOrigin()
        assert mask.GetSpacing() == image.GetSpacing()
        assert mask.GetDirection() == image.GetDirection()

        labels = sitk.GetArrayFromImage(mask)
        assert set(np.unique(labels)) == {0, 1} and labels.sum() >= 3
        volume = sitk.GetArrayFromImage(image).astype(float)
        # pydicom, sorted by ImagePositionPatient z, decodes the same HU values
        slices = sorted(
            (pydicom.dcmread(n) for n in names), key=lambda d: float(d.ImagePositionPatient[2])
        )
        decoded = np.stack(
            [d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices]
        )
        np.testing.assert_array_equal(volume, decoded)
        lesion, around = volume[labels == 1].mean(), volume[labels == 0].mean()
        assert 20 < lesion < 130 and abs(lesion - around) < 150


def test_fast_series_writer_writes_the_bytes_of_pydicom_dcmwrite(landing):
    patient = demo_data.simulate_cohort(PATIENTS, SEED, 2)[-1]  # a C2 patient: head-first order
    protocol = demo_data.PROTOCOLS[1]
    ctx, hu, _ = demo_data.render_patient(patient, protocol, SEED)[0]
    folder = landing / "imaging" / "C2" / demo_data._series_folder(protocol, patient, ctx.series)
    stored = demo_data.stored_pixels(hu, protocol)
    for k in range(ctx.geometry.size[2]):
        buffer = io.BytesIO()
        demo_data.slice_dataset(ctx, k, stored[k]).save_as(buffer, enforce_file_format=True)
        assert (folder / f"IM{ctx.instance(k):04d}.dcm").read_bytes() == buffer.getvalue()


def test_cases_csv_is_a_pyradiomics_batch_file_pyradiomics_accepts(landing):
    import logging

    import SimpleITK as sitk
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    cases = _cases(landing)
    for center, case in cases:
        assert list(case) == list(demo_data.CASES_COLUMNS)
        assert (center / case["Image"]).is_dir() and (center / case["Mask"]).is_file()
        assert case["Label"] == "1" and case["phase"] in {"portal_venous", "arterial"}
    imaging_patients = {case["patient_id"] for _, case in cases}
    assert len(imaging_patients) == PATIENTS

    extractor = featureextractor.RadiomicsFeatureExtractor(binWidth=25)
    extractor.disableAllFeatures()
    extractor.enableFeatureClassByName("shape")
    for center in ("C1", "C2"):  # one case per center, as pyradiomics' batch mode reads them
        folder, case = next((c, r) for c, r in cases if c.name == center)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / case["Image"])))
        result = extractor.execute(reader.Execute(), str(folder / case["Mask"]))
        assert result["original_shape_MeshVolume"] > 50.0  # mm3: a lesion, not a voxel


def test_deep_features_have_one_numeric_row_per_imaged_patient(landing):
    ids = {case["patient_id"] for _, case in _cases(landing)}
    seen = set()
    for center in ("C1", "C2"):
        table = pd.read_csv(
            landing / "features" / center / "deep_features.csv", dtype={"patient_id": str}
        )
        assert list(table.columns) == ["patient_id", *(f"deep_{k:02d}" for k in range(16))]
        assert table.drop(columns="patient_id").dtypes.map(pd.api.types.is_float_dtype).all()
        seen |= set(table.patient_id)
    assert seen == ids


# --- clinical ------------------------------------------------------------------------------------
def test_clinical_csv_has_the_cohort_and_exactly_the_documented_defects(landing):
    clinical = _clinical(landing)
    assert tuple(clinical.columns) == demo_data.CLINICAL_COLUMNS
    missing_id = clinical.patient_id.isna()
    negative = clinical.rfs_months < 0
    bad_event = ~clinical.rfs_event.isin([0, 1])
    assert (missing_id.sum(), negative.sum(), bad_event.sum()) == (1, 1, 1)
    assert len(demo_data.CLINICAL_DEFECTS) == 3
    bad = missing_id | negative | bad_event
    valid = clinical[~bad]

    imaging_ids = {case["patient_id"] for _, case in _cases(landing)}
    assert set(valid.patient_id) == imaging_ids
    assert not set(clinical[bad].patient_id.dropna()) & imaging_ids  # defects are extra patients
    assert valid.patient_id.str.fullmatch(r"(GZ|SD)20\d\d-\d{6}").all()
    assert valid.center_id.value_counts(normalize=True)["C1"] == pytest.approx(0.7, abs=0.05)
    assert valid.os_event.isin([0, 1]).all() and valid.mi_high.isin([0, 1]).all()
    assert (valid.os_months >= valid.rfs_months).all() and (valid.rfs_months > 0).all()
    assert set(valid.tumor_location) <= {"gastric", "small_intestine", "other"}
    dates = pd.to_datetime(clinical.surgery_date, format="%Y-%m-%d")
    assert dates.min() >= pd.Timestamp("2013-01-01") and dates.max() <= pd.Timestamp("2018-06-30")


def test_clinical_schema_file_is_valid_for_the_clinical_loader(landing):
    from assets.clinical.schema import schema_for

    schema = schema_for(landing / "clinical" / "clinical.csv", landing)
    assert schema.get("rfs_event").type == "event" and schema.get("rfs_months").type == "duration"
    assert schema.get("surgery_date").format == "%Y-%m-%d"


def test_simulated_cohort_has_the_study_design_signal():
    from lifelines import CoxPHFitter
    from sklearn.metrics import roc_auc_score

    cohort = demo_data.simulate_cohort(2000, SEED, 7)
    frame = pd.DataFrame(
        {
            "mi_high": [p.mi_high for p in cohort],
            "size": [p.tumor_size_cm for p in cohort],
            "image": [p.size_score + p.texture_score for p in cohort],
            "rfs_months": [p.rfs_months for p in cohort],
            "rfs_event": [p.rfs_event for p in cohort],
            "center": [p.center_id for p in cohort],
        }
    )
    assert 0.35 < frame.mi_high.mean() < 0.5
    sizes = frame.center.value_counts().reindex([f"C{k}" for k in range(1, 8)])
    assert sizes.is_monotonic_decreasing and sizes.min() > 50
    # informative but not separable: latent image scores and clinical size
    assert 0.72 < roc_auc_score(frame.mi_high, frame.image) < 0.85
    assert 0.65 < roc_auc_score(frame.mi_high, frame["size"]) < 0.8
    # survival worse for high MI, with realistic censoring
    assert 0.15 < frame.rfs_event.mean() < 0.45
    cox = CoxPHFitter().fit(
        frame[["rfs_months", "rfs_event", "mi_high"]], "rfs_months", "rfs_event"
    )
    assert 2.0 < cox.hazard_ratios_["mi_high"] < 5.0 and cox.summary.loc["mi_high", "p"] < 1e-6


def test_center_sizes():
    assert demo_data.center_sizes(120, 2) == [84, 36]
    assert demo_data.center_sizes(12, 2) == [8, 4]
    sizes = demo_data.center_sizes(2500, 7)
    assert sum(sizes) == 2500 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match="centers must be between 1 and 7"):
        demo_data.center_sizes(100, 8)
    with pytest.raises(ValueError, match="at least one patient per center"):
        demo_data.center_sizes(1, 2)


# --- portfolio -----------------------------------------------------------------------------------
def test_grants_csv_is_an_nsfc_style_export_with_one_bad_row_and_one_duplicate(landing):
    grants, update = _grants(landing)
    assert tuple(grants.columns) == tuple(update.columns) == demo_data.GRANT_COLUMNS
    both = pd.concat([grants, update])
    assert both["批准号"].str.fullmatch(r"[68]1\d{6}").all()
    # the NSFC digits: third = last digit of the approval year
    assert (both["批准号"].str[2].astype(int) == both["批准年份"] % 10).all()
    assert (both["结题年份"] > both["批准年份"]).all()

    repeated = both["批准号"].value_counts()
    assert list(repeated[repeated > 1].index) == list(set(grants["批准号"]) & set(update["批准号"]))
    assert len(repeated[repeated > 1]) == 1
    assert (both["金额（万元）"] < 0).sum() == 1 and (grants["金额（万元）"] < 0).sum() == 1

    unique = both.drop_duplicates("批准号")
    per_year = unique["批准年份"].value_counts().sort_index()
    assert (
        list(per_year.index) == [2015, 2016, 2017, 2018, 2019] and per_year.is_monotonic_increasing
    )
    general_young = unique["项目类别"].isin(["面上项目", "青年科学基金项目"]).mean()
    assert 0.85 <= general_young <= 0.95
    imaging = unique["关键词"].map(lambda k: any(w in k for w in IMAGING_WORDS)).mean()
    assert 0.55 <= imaging <= 0.8
    province = unique["依托单位"].map(demo_data.INSTITUTION_PROVINCE)
    assert province.notna().all() and 0.4 <= province.isin(["北京", "上海", "广东"]).mean() <= 0.7
    regional = unique["项目类别"] == "地区科学基金项目"
    assert province[regional].isin([p for _, p in demo_data.REGIONAL_INSTITUTIONS]).all()
    assert unique["项目名称"].str.match(r"^\d+\.").sum() >= 1  # copy-paste list numbers


def _parse_export(text: str) -> tuple[list[dict], list[str]]:
    """Records of the group's export format (title, optional authors, citation, abstract) + chrome."""
    body, _, chrome = text.rpartition("\n\n")
    lines = body.split("\n")
    records, i = [], 0
    while i < len(lines):
        title = TITLE.match(lines[i])
        assert title, f"line {i + 1} is not a numbered title: {lines[i][:60]!r}"
        authors = None
        if not CITATION.match(lines[i + 1]):
            authors = lines[i + 1]
            i += 1
        citation = CITATION.match(lines[i + 1])
        assert citation, f"line {i + 2} is not a citation: {lines[i + 1][:60]!r}"
        records.append(
            {
                "number": int(title["number"]),
                "title": title["title"],
                "authors": authors,
                "citation": citation.groupdict(),
                "abstract": lines[i + 2],
            }
        )
        i += 3
    return records, chrome.split("\n")


def test_publication_export_has_the_structure_of_the_seed_export(landing):
    seed_text = shared_path("publications", "seed_export", "portfolio_export.txt").read_text(
        "utf-8"
    )
    text = (landing / "portfolio" / "publications" / "group_export.txt").read_text("utf-8")
    seed_records, seed_chrome = _parse_export(seed_text)
    records, chrome = _parse_export(text)

    assert chrome == seed_chrome == list(demo_data.CHROME_LINES)
    assert text.endswith(chrome[-1]) and seed_text.endswith(seed_chrome[-1])  # no final newline
    for parsed in (seed_records, records):
        assert [r["number"] for r in parsed] == list(range(1, len(parsed) + 1))
        assert all(AUTHORS.match(r["authors"]) for r in parsed if r["authors"] is not None)
        assert sum(r["authors"] is None for r in parsed) == 1  # the seed's record 8 quirk
        assert all(len(r["abstract"]) > 200 for r in parsed)
    assert 9 <= len(records) <= 12
    titles = Counter(r["title"] for r in records)
    assert sorted(titles.values(), reverse=True)[:2] == [2, 1]  # exactly one paper twice

    grants, update = _grants(landing)
    valid_ids = set(grants.loc[grants["金额（万元）"] > 0, "批准号"]) | set(update["批准号"])
    mentioned = {g for r in records for g in re.findall(r"NSFC grant ([\d and]+)\.", r["abstract"])}
    cited = {g for m in mentioned for g in m.split(" and ")}
    assert cited and cited <= valid_ids
