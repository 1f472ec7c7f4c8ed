"""Incremental extraction, crash recovery, quarantine and the two parallel backends.

Real pyradiomics runs on real files from ../shared/data (pyradiomics' breast1 and brain2, the IBSI
phantom) under pyradiomics' own example parameter file ``exampleSettings/Params.yaml``, dropped
unchanged into ``LAKE_HOME/params`` as a user would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
import radiomics

from assets.radiomics.backends import Backend
from assets.radiomics.incremental import FEATURES_TABLE, read_diagnostics, read_features
from assets.radiomics.params import SHIPPED_DIR, discover_params, params_sha256, read_params
from assets.radiomics.run import Progress, run_extraction
from dagster_project.lake import Lake
from dagster_project.pseudonym import Pseudonymizer
from tests.conftest import shared_path
from tests.test_radiomics_reference import tasks_from_cases_csv, write_cases_csv

CENTER = "C1"
KEY = ["case_id", "params_id", "feature"]


def land_cases(lake: Lake, extra_rows: list[dict] | None = None) -> Path:
    """breast1, brain2 and the IBSI phantom in landing/imaging/C1 with a cases.csv."""
    folder = lake.landing / "imaging" / CENTER
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in ("breast1", "brain2"):
        for suffix in ("image", "label"):
            source = shared_path("pyradiomics", f"{case}_{suffix}.nrrd")
            shutil.copyfile(source, folder / source.name)
        rows.append(
            {"Image": f"{case}_image.nrrd", "Mask": f"{case}_label.nrrd", "Label": 1, "patient_id": f"P-{case}", "study_id": case}
        )  # fmt: skip
    phantom = shared_path("ibsi", "digital_phantom", "nifti")
    shutil.copyfile(phantom / "image" / "phantom.nii.gz", folder / "phantom.nii.gz")
    shutil.copyfile(phantom / "mask" / "mask.nii.gz", folder / "phantom_mask.nii.gz")
    rows.append(
        {"Image": "phantom.nii.gz", "Mask": "phantom_mask.nii.gz", "Label": 1, "patient_id": "P-phantom", "study_id": "phantom"}
    )  # fmt: skip
    write_cases_csv(folder, rows + (extra_rows or []))
    shutil.copyfile(
        shared_path("pyradiomics", "exampleSettings", "Params.yaml"),
        lake.params_dir / "Params.yaml",
    )
    return folder / "cases.csv"


def current(lake: Lake, cases_csv: Path) -> tuple[list[dict], list]:
    """What the asset passes to run_extraction: the cases and the parameter files of now."""
    params, rejects = discover_params(lake.params_dir, include_shipped=False, landing=lake.landing)
    assert rejects == []
    return tasks_from_cases_csv(lake, cases_csv, Pseudonymizer(b"test")), params


def assert_no_duplicates(lake: Lake) -> None:
    """Raw union of every part (what a glob reader sees): one row per key."""
    raw = lake.read_table(FEATURES_TABLE)
    assert raw.height == raw.select(KEY).unique().height
    assert [p.name for p in lake.table_files(FEATURES_TABLE)] == ["radiomics_features.parquet"]


def test_rerun_with_nothing_changed_extracts_nothing(lake):
    cases_csv = land_cases(lake)
    tasks, params = current(lake, cases_csv)
    progress: list[Progress] = []
    first, rejects = run_extraction(
        lake, tasks, params, backend="local:2", progress=progress.append
    )
    assert rejects == []
    assert (first["extracted"], first["unchanged"], first["landed"]) == (3, 0, 3)
    assert [p.done for p in progress] == [1, 2, 3] and progress[-1].total == 3
    assert progress[-1].cases_per_minute > 0 and "cases/min, ETA 0m00s" in str(progress[-1])
    features = read_features(lake)
    assert features.group_by("case_id").len()["len"].to_list() == [features.height // 3] * 3
    assert features["value"].dtype == pl.Float64
    assert set(features["params_id"]) == {"Params"}
    assert set(features["extractor_version"]) == {radiomics.__version__}
    table_file = lake.table_files(FEATURES_TABLE)[0]
    written = table_file.stat().st_mtime_ns

    tasks, params = current(lake, cases_csv)  # hashes recomputed from the files, as a new run would
    second, rejects = run_extraction(lake, tasks, params, backend="local:2")
    assert rejects == []
    assert (second["extracted"], second["unchanged"], second["batches_written"]) == (0, 3, 0)
    assert second["total_seconds"] < 5  # no worker is started when nothing changed
    assert table_file.stat().st_mtime_ns == written  # the table is not even rewritten
    assert_no_duplicates(lake)


def test_params_content_change_reextracts_comment_change_does_not(lake):
    cases_csv = land_cases(lake)
    run_extraction(lake, *current(lake, cases_csv), backend="local:2")
    before = read_features(lake)
    user_file = lake.params_dir / "Params.yaml"

    user_file.write_text(user_file.read_text() + "\n# reviewed by the radiomics group\n")
    stats, _ = run_extraction(lake, *current(lake, cases_csv), backend="local:2")
    assert (stats["extracted"], stats["unchanged"]) == (0, 3)

    user_file.write_text(user_file.read_text().replace("binWidth: 25", "binWidth: 10"))
    stats, _ = run_extraction(lake, *current(lake, cases_csv), backend="local:2")
    assert (stats["extracted"], stats["unchanged"]) == (3, 0)
    after = read_features(lake)
    assert after["params_sha256"].n_unique() == 1
    assert after["params_sha256"][0] != before["params_sha256"][0]
    entropy = (
        before.join(after, on=KEY, suffix="_new")
        .filter(
            pl.col("feature") == "original_firstorder_Entropy", pl.col("case_id") != "C1-phantom"
        )
        .select("value", "value_new")
    )  # the phantom's grey levels 1-6 fall in one bin at either width: its entropy stays 0
    assert entropy.height == 2 and (entropy["value"] != entropy["value_new"]).all()
    assert_no_duplicates(lake)


def test_changed_mask_or_label_reextracts_only_that_case(lake):
    import SimpleITK as sitk

    cases_csv = land_cases(lake)
    run_extraction(lake, *current(lake, cases_csv), backend="local:2")
    mask = cases_csv.parent / "brain2_label.nrrd"
    # same voxels, other pixel type: the file (and so mask_sha256) changes
    sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(mask)), sitk.sitkUInt8), str(mask))
    stats, _ = run_extraction(lake, *current(lake, cases_csv), backend="local:2")
    assert (stats["extracted"], stats["unchanged"]) == (1, 2)
    assert_no_duplicates(lake)


def test_killed_mid_run_resumes_without_duplicates(lake):
    cases_csv = land_cases(lake)
    tasks, params = current(lake, cases_csv)

    def die_after_first_batch(progress: Progress) -> None:
        raise RuntimeError("simulated kill after the first batch was written")

    with pytest.raises(RuntimeError, match="simulated kill"):
        run_extraction(
            lake, tasks, params, backend="local:2", progress=die_after_first_batch, batch_size=1
        )
    parts = lake.table_files(FEATURES_TABLE)
    assert len(parts) == 1 and parts[0].name.startswith("batch-")  # no compaction happened
    assert read_features(lake)["case_id"].n_unique() == 1

    stats, rejects = run_extraction(lake, tasks, params, backend="local:2")
    assert rejects == []
    assert (stats["extracted"], stats["unchanged"]) == (2, 1)
    assert_no_duplicates(lake)
    features = read_features(lake)
    assert features["case_id"].n_unique() == 3
    assert features.group_by("case_id").len()["len"].n_unique() == 1  # complete: same count each
    assert read_diagnostics(lake)["case_id"].n_unique() == 3

    # killed during compaction (after the new file, before the old parts were deleted)
    table_dir = lake.table_dir(FEATURES_TABLE)
    shutil.copyfile(table_dir / "radiomics_features.parquet", table_dir / "batch-leftover.parquet")
    assert lake.read_table(FEATURES_TABLE).height == 2 * features.height  # a glob sees duplicates
    assert read_features(lake).height == features.height  # dedupe on read does not
    stats, _ = run_extraction(lake, tasks, params, backend="local:2")
    assert stats["extracted"] == 0
    assert_no_duplicates(lake)


def test_killed_run_of_edited_params_then_reverted_keeps_current_rows(lake):
    cases_csv = land_cases(lake)
    run_extraction(lake, *current(lake, cases_csv), backend="local:2")
    complete = read_features(lake)
    user_file = lake.params_dir / "Params.yaml"
    original = user_file.read_text()

    def die(progress: Progress) -> None:
        raise RuntimeError("simulated kill")

    user_file.write_text(original.replace("binWidth: 25", "binWidth: 10"))
    with pytest.raises(RuntimeError):
        run_extraction(
            lake, *current(lake, cases_csv), backend="local:2", progress=die, batch_size=1
        )
    user_file.write_text(original)  # back to the parameters the compacted table holds
    stats, _ = run_extraction(lake, *current(lake, cases_csv), backend="local:2")
    assert (stats["extracted"], stats["unchanged"]) == (0, 3)
    # the newer rows of the killed run are stale: they must not shadow the current ones
    assert read_features(lake).equals(complete)
    assert_no_duplicates(lake)


def test_cases_gone_from_cases_are_dropped(lake):
    cases_csv = land_cases(lake)
    tasks, params = current(lake, cases_csv)
    run_extraction(lake, tasks, params, backend="local:2")
    stats, _ = run_extraction(lake, tasks[:2], params, backend="local:2")
    assert (stats["extracted"], stats["unchanged"]) == (0, 2)
    kept = {t["case_id"] for t in tasks[:2]}
    assert set(read_features(lake)["case_id"]) == kept
    assert set(read_diagnostics(lake)["case_id"]) == kept
    assert_no_duplicates(lake)


def test_failing_case_is_quarantined_and_not_retried(lake):
    bad = {"Image": "breast1_image.nrrd", "Mask": "breast1_label.nrrd", "Label": 2, "patient_id": "P-breast1", "study_id": "breast1-label2"}  # fmt: skip
    cases_csv = land_cases(lake, extra_rows=[bad])
    tasks, params = current(lake, cases_csv)
    first, rejects = run_extraction(lake, tasks, params, backend="local:2")
    assert (first["extracted"], first["quarantined"]) == (3, 1)
    assert first["landed"] == first["ingested"] + first["quarantined"]
    (reject,) = rejects
    assert reject.rule == "extraction_failed"
    assert "C1-breast1-label2" in reject.reason and "Label (2) not present in mask" in reject.reason
    assert reject.source_path == "imaging/C1/cases.csv"
    assert str(lake.home) not in reject.reason and "P-breast1" not in str(reject)

    second, rejects = run_extraction(lake, tasks, params, backend="local:2")
    assert (second["extracted"], second["known_failures"], second["quarantined"]) == (0, 1, 1)
    assert [r.rule for r in rejects] == ["extraction_failed"]  # still reported, not retried


class Refused(Exception):
    """Like the imaging domain's CaseRejected: a rule id and a sentence."""

    def __init__(self, rule: str, reason: str):
        super().__init__(reason)
        self.rule, self.reason = rule, reason


def refusing_loader(task: dict):
    """A loader that refuses the phantom (module level, so worker processes can import it)."""
    if task["case_id"].endswith("phantom"):
        raise Refused("empty_mask", f"empty_mask: case {task['case_id']} has 0 voxels of label 1")
    from assets.radiomics.extract import read_image_mask

    return read_image_mask(task)


def test_loader_rejection_keeps_its_rule(lake):
    tasks, params = current(lake, land_cases(lake))
    stats, rejects = run_extraction(lake, tasks, params, backend="local:2", loader=refusing_loader)
    assert (stats["extracted"], stats["quarantined"]) == (2, 1)
    assert [(r.rule, r.reason) for r in rejects] == [
        ("empty_mask", "empty_mask: case C1-phantom has 0 voxels of label 1")
    ]


def test_local_and_dask_backends_give_identical_features(tmp_path):
    frames = []
    for name, backend in (
        ("local", Backend("local", max_workers=2)),
        ("dask", Backend("dask", address="local:2")),
    ):
        lake = Lake.at(tmp_path / name)
        stats, rejects = run_extraction(lake, *current(lake, land_cases(lake)), backend=backend)
        assert rejects == [] and stats["extracted"] == 3
        frames.append(read_features(lake).select(*KEY, "value", "patient_key").sort(KEY))
    assert frames[0].height > 0
    assert frames[0].equals(frames[1])


def test_params_discovery_defaults_override_and_invalid(lake):
    params, rejects = discover_params(lake.params_dir, landing=lake.landing)
    assert rejects == []
    assert {p.params_id: p.source for p in params} == {
        "ct_default": "shipped",
        "mr_default": "shipped",
        "pt_default": "shipped",
    }
    assert all(p.path.parent == SHIPPED_DIR and len(p.sha256) == 64 for p in params)

    (lake.params_dir / "ct_default.yaml").write_text("setting:\n  binWidth: 10\n")
    (lake.params_dir / "broken.yaml").write_text("setting:\n  binWidth: -1\n  notASetting: 3\n")
    params, rejects = discover_params(lake.params_dir, landing=lake.landing)
    assert {p.params_id: p.source for p in params} == {
        "ct_default": "lake",
        "mr_default": "shipped",
        "pt_default": "shipped",
    }
    (reject,) = rejects
    assert reject.rule == "invalid_params" and reject.source_path == "../params/broken.yaml"
    assert "binWidth" in reject.reason and "notASetting" in reject.reason


def test_params_already_extracted_with_skip_the_schema_check(lake):
    """A content hash the lake already extracted with counts as validated (no pyradiomics schema
    load on a run with nothing new); any other content is checked, so an edit that breaks the
    file is still rejected."""
    (lake.params_dir / "broken.yaml").write_text("setting:\n  binWidth: -1\n")
    broken = params_sha256(read_params(lake.params_dir / "broken.yaml"))
    _, rejects = discover_params(lake.params_dir, include_shipped=False)
    assert [r.rule for r in rejects] == ["invalid_params"]
    params, rejects = discover_params(lake.params_dir, include_shipped=False, validated={broken})
    assert rejects == [] and [p.sha256 for p in params] == [broken]
    (lake.params_dir / "broken.yaml").write_text("setting:\n  binWidth: -2\n")  # edited: checked
    _, rejects = discover_params(lake.params_dir, include_shipped=False, validated={broken})
    assert [r.rule for r in rejects] == ["invalid_params"]
