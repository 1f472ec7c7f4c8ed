"""One read and one preprocessing per case for every parameter set that shares its settings.

``extract.run_case`` reads a case once and runs pyradiomics' ``loadImage`` (normalization,
resampling, pre-crop) once per group of parameter sets whose preprocessing settings are equal.
Reference: pyradiomics itself, ``RadiomicsFeatureExtractor(params).execute(image, mask)`` once
per (case, parameter set) on the files, on real images (pyradiomics' brain1 and breast1 NRRD):
features and ``diagnostics_*`` must be identical, with the reads and resamplings counted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from assets.radiomics import extract
from assets.radiomics.incremental import read_diagnostics, read_features
from assets.radiomics.params import discover_params
from assets.radiomics.run import run_extraction
from dagster_project.lake import Lake
from dagster_project.pseudonym import Pseudonymizer
from tests.conftest import shared_path
from tests.test_radiomics_reference import tasks_from_cases_csv, write_cases_csv

BASE = {
    "imageType": {"Original": {}, "LoG": {"sigma": [2.0]}},
    "featureClass": {"firstorder": None, "glcm": None, "shape": None},
    "setting": {
        "binWidth": 25,
        "interpolator": "sitkBSpline",
        "resampledPixelSpacing": [2, 2, 2],
        "padDistance": 5,
        "additionalInfo": True,  # diagnostics of the preprocessing must be the same too
    },
}
# a_bw25 and b_bw10 differ only in binWidth (shared preprocessing); c_3mm resamples differently;
# d_tiny_roi refuses every ROI (its checkMask fails): only that parameter set may fail
VARIANTS = {
    "a_bw25": {},
    "b_bw10": {"binWidth": 10},
    "c_3mm": {"resampledPixelSpacing": [3, 3, 3]},
    "d_tiny_roi": {"minimumROISize": 10**9},
}


def _params(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, change in VARIANTS.items():
        content = yaml.safe_load(yaml.safe_dump(BASE))
        content["setting"].update(change)
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(content))
    return paths


def _direct(image: Path, mask: Path, params: Path) -> dict:
    """pyradiomics on the files, nothing shared."""
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    extract.quiet_radiomics()
    return dict(RadiomicsFeatureExtractor(str(params)).execute(str(image), str(mask), label=1))


def _task(case: str) -> dict:
    return {
        "case_id": case,
        "image_path": str(shared_path("pyradiomics", f"{case}_image.nrrd")),
        "mask_path": str(shared_path("pyradiomics", f"{case}_label.nrrd")),
        "label": 1,
    }


def test_run_case_reads_once_resamples_once_per_settings_and_equals_pyradiomics(
    tmp_path, monkeypatch
):
    from radiomics import imageoperations

    params = _params(tmp_path / "params")
    reads, resamplings = [], []
    resample = imageoperations.resampleImage

    def counting_resample(*args, **kwargs):
        resamplings.append(kwargs.get("resampledPixelSpacing"))
        return resample(*args, **kwargs)

    def counting_loader(task):
        reads.append(task["case_id"])
        return extract.read_image_mask(task)

    from radiomics.featureextractor import RadiomicsFeatureExtractor

    shapes = []
    compute_shape = RadiomicsFeatureExtractor.computeShape

    def counting_shape(self, *args, **kwargs):
        shapes.append(self.settings.get("resampledPixelSpacing"))
        return compute_shape(self, *args, **kwargs)

    monkeypatch.setattr(imageoperations, "resampleImage", counting_resample)
    monkeypatch.setattr(RadiomicsFeatureExtractor, "computeShape", counting_shape)
    task = _task("brain1")
    results = extract.run_case(task, [(k, str(p)) for k, p in params.items()], counting_loader)
    monkeypatch.setattr(RadiomicsFeatureExtractor, "computeShape", compute_shape)
    # the shape features once per shape key: a_bw25 + b_bw10 share them (binWidth is not a
    # geometry), c_3mm has its own, d_tiny_roi fails before shape
    assert sorted(shapes) == [[2, 2, 2], [3, 3, 3]]

    assert reads == ["brain1"]
    # a_bw25 + b_bw10 share one; c_3mm and d_tiny_roi (minimumROISize is not on the after-load
    # list: unknown means not shared) have their own
    assert sorted(map(tuple, resamplings)) == [(2, 2, 2), (2, 2, 2), (3, 3, 3)]
    by_id = {r.params_id: r for r in results}
    assert [r.params_id for r in results] == list(VARIANTS)
    failed = by_id["d_tiny_roi"]
    assert not failed.ok and failed.rule == extract.EXTRACTION_FAILED, failed
    monkeypatch.setattr(imageoperations, "resampleImage", resample)
    for name in ("a_bw25", "b_bw10", "c_3mm"):
        assert by_id[name].ok, by_id[name].error
        expected = _direct(Path(task["image_path"]), Path(task["mask_path"]), params[name])
        got = dict(by_id[name].features) | by_id[name].diagnostics
        expected_features = {
            k: extract._real(v) for k, v in expected.items() if not k.startswith("diagnostics_")
        }
        expected_diagnostics = {
            k: str(v) for k, v in expected.items() if k.startswith("diagnostics_")
        }
        assert {k: got[k] for k in expected_features} == expected_features, name
        assert by_id[name].diagnostics == expected_diagnostics, name
        assert len(got) == len(expected)
    # binWidth changes the texture but not the shape: the sharing did not mix the two up
    a, b = dict(by_id["a_bw25"].features), dict(by_id["b_bw10"].features)
    assert a["original_shape_VoxelVolume"] == b["original_shape_VoxelVolume"]
    assert a["original_glcm_Contrast"] != b["original_glcm_Contrast"]


def test_loader_refusal_fails_every_parameter_set_of_the_case(tmp_path):
    params = _params(tmp_path / "params")
    task = _task("brain1") | {"mask_path": str(tmp_path / "missing.nrrd")}
    results = extract.run_case(task, [(k, str(p)) for k, p in params.items()])
    assert [r.ok for r in results] == [False] * len(VARIANTS)
    assert all(r.rule == extract.EXTRACTION_FAILED for r in results)
    assert all(str(tmp_path) not in r.error for r in results)  # paths scrubbed


def _land(tmp_path) -> tuple[Lake, Path, list[dict]]:
    """brain1 and breast1 (pyradiomics' NRRD) landed in C1 with a cases.csv; the case tasks."""
    lake = Lake.at(tmp_path / "home")
    folder = lake.landing / "imaging" / "C1"
    folder.mkdir(parents=True)
    rows = []
    for case in ("brain1", "breast1"):
        for suffix in ("image", "label"):
            shutil.copyfile(
                shared_path("pyradiomics", f"{case}_{suffix}.nrrd"),
                folder / f"{case}_{suffix}.nrrd",
            )
        rows.append({"Image": f"{case}_image.nrrd", "Mask": f"{case}_label.nrrd", "Label": 1, "patient_id": f"P-{case}", "study_id": case})  # fmt: skip
    cases_csv = write_cases_csv(folder, rows)
    return lake, folder, tasks_from_cases_csv(lake, cases_csv, Pseudonymizer(b"test"))


def _discover(lake: Lake) -> list:
    params, rejects = discover_params(lake.params_dir, include_shipped=False)
    assert rejects == []
    return params


def test_lake_run_on_two_workers_equals_direct_pyradiomics(tmp_path):
    lake, folder, tasks = _land(tmp_path)
    paths = _params(lake.params_dir)
    params = _discover(lake)
    stats, quarantined = run_extraction(lake, tasks, params, backend="local:2")
    assert stats["extracted"] == 6 and stats["quarantined"] == 2
    assert {r.record.split(", params ")[1] for r in quarantined} == {"d_tiny_roi"}
    features = read_features(lake)
    diagnostics = read_diagnostics(lake)
    for task in tasks:
        case = Path(task["image_path"]).name.removesuffix("_image.nrrd")
        for name in ("a_bw25", "b_bw10", "c_3mm"):
            expected = _direct(
                folder / f"{case}_image.nrrd", folder / f"{case}_label.nrrd", paths[name]
            )
            mine = features.filter(
                (features["case_id"] == task["case_id"]) & (features["params_id"] == name)
            )
            got = dict(zip(mine["feature"], mine["value"], strict=True))
            want = {
                k: extract._real(v) for k, v in expected.items() if not k.startswith("diagnostics_")
            }
            assert got == {k: v for k, v in want.items() if v == v}, (case, name)
            keys = diagnostics.filter(
                (diagnostics["case_id"] == task["case_id"]) & (diagnostics["params_id"] == name)
            )
            stored = dict(zip(keys["key"], keys["value"], strict=True))
            assert stored["diagnostics_Mask-interpolated_VoxelNum"] == str(
                expected["diagnostics_Mask-interpolated_VoxelNum"]
            )


@pytest.mark.parametrize("change", ["normalize", "label", "unknown_setting"])
def test_settings_outside_the_known_after_load_list_keep_parameter_sets_apart(change):
    settings = dict(BASE["setting"])
    other = dict(settings)
    if change == "normalize":
        other["normalize"] = True
    elif change == "unknown_setting":
        other["someFutureSetting"] = 1
    label = 2 if change == "label" else 1
    assert extract.preprocessing_key(settings, 1) != extract.preprocessing_key(other, label)
    assert extract.preprocessing_key(settings, 1) == extract.preprocessing_key(
        settings | {"binWidth": 5, "symmetricalGLCM": False}, 1
    )


# --- a dominant case split by image type across workers (schedule.plan_units) -------------------
FILTERED = {**BASE, "imageType": {"Original": {}, "LoG": {"sigma": [2.0, 3.0]}, "Wavelet": {}}}


def _landed_pair(tmp_path) -> tuple[Lake, list[dict], list, Path, Path]:
    lake, folder, tasks = _land(tmp_path)
    (lake.params_dir / "filtered.yaml").write_text(yaml.safe_dump(FILTERED))
    params = _discover(lake)
    for task in tasks:  # what the cases table gives: brain1 dominates the run
        task["roi_volume_ml"] = 100.0 if "brain1" in task["image_path"] else 1.0
    return lake, tasks, params, folder, lake.params_dir / "filtered.yaml"


def test_plan_splits_only_the_dominant_case_and_shares_out_its_image_types(tmp_path):
    from assets.radiomics.incremental import make_pairs
    from assets.radiomics.schedule import plan_units

    _, tasks, params, _, _ = _landed_pair(tmp_path)
    units = plan_units(make_pairs(tasks, params), workers=2)
    brain = [u for u in units if "brain1" in u.task["image_path"]]
    breast = [u for u in units if "breast1" in u.task["image_path"]]
    assert len(brain) == 2 and len(breast) == 1
    assert breast[0].jobs[0].image_types is None  # small case: whole, read once
    parts = [u.jobs[0] for u in brain]
    assert [p.shape for p in parts] == [True, False]  # shape once
    names = [
        f"{name}:{sigma}"
        for p in parts
        for name, custom in p.image_types.items()
        for sigma in custom.get("sigma", [None])
    ]
    assert sorted(names) == ["LoG:2.0", "LoG:3.0", "Original:None", "Wavelet:None"]
    assert units[0].cost >= units[-1].cost  # largest first
    assert plan_units(make_pairs(tasks, params), workers=1)[0].jobs[0].image_types is None


def test_split_case_through_the_lake_equals_one_pyradiomics_execute(tmp_path):
    lake, tasks, params, folder, params_path = _landed_pair(tmp_path)
    stats, rejects = run_extraction(lake, tasks, params, backend="local:2")
    assert rejects == [] and stats["extracted"] == 2
    features, diagnostics = read_features(lake), read_diagnostics(lake)
    for task in tasks:
        case = Path(task["image_path"]).name.removesuffix("_image.nrrd")
        expected = _direct(
            folder / f"{case}_image.nrrd", folder / f"{case}_label.nrrd", params_path
        )
        mine = features.filter(features["case_id"] == task["case_id"])
        got = dict(zip(mine["feature"], mine["value"], strict=True))
        assert len(got) == mine.height  # no feature twice
        want = {
            k: extract._real(v) for k, v in expected.items() if not k.startswith("diagnostics_")
        }
        assert got == {k: v for k, v in want.items() if v == v}, case
        rows = diagnostics.filter(
            (diagnostics["case_id"] == task["case_id"])
            & ~diagnostics["key"].str.starts_with("diagnostics_radlake")
        )
        stored = dict(zip(rows["key"], rows["value"], strict=True))
        assert stored == {k: str(v) for k, v in expected.items() if k.startswith("diagnostics_")}
