"""Model history (issue 8): no retraining on unchanged inputs, the model_history view, AUC-drop check.

Real data: radMLBench Head-Neck-Radiomics-HN1 (Aerts et al. 2014; real pyradiomics features,
binary lymph-node outcome) landed as it would be by a user: one feature CSV per center (centers
assigned by row, as in tests/test_studies.py) and a clinical CSV, ingested by the real
``clinical`` / ``external_features`` assets and studied through real Dagster materializations:

1. first run: the version is fitted (``retrained`` True);
2. same landing zone again: same version, loaded not refitted (``retrained`` False), pipeline
   files untouched, the same ``model_versions`` row (trained_at kept) and Dagster data version;
3. a follow-up clinical file flips the outcome of every development-center patient (C1): a new
   version is trained, both versions stay in ``model_versions`` and ``model_metrics``. The model
   then learns the inverted outcome, so its external AUC (labels of C2/C3 unchanged) must fall:
   the AUC-drop check (threshold 0.1) warns. Expected values come from ``model_metrics`` rows
   (the metric code is tested against scikit-learn in tests/test_studies.py), never from the
   view or the check under test.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
import yaml

from assets.studies.history import (
    auc_drop_outcome,
    external_auc,
    previous_version,
    version_order,
)
from tests.conftest import shared_path

HN1 = ("radiomics_features", "radMLBench", "datasets", "Head-Neck-Radiomics-HN1.gz")
STUDY = "hn1_history"
MODELS = ["logistic_regression", "decision_tree"]
THRESHOLD = 0.1
CHECK = "auc_drop_vs_previous_version"
SPEC = {
    "name": STUDY,
    "label": "ln_metastasis",
    "features": {"external": {"feature_set": "hn1"}},
    "split": {
        "development_centers": ["C1"],
        "internal_validation_fraction": 0.3,
        "external_validation_centers": ["C2", "C3"],
        "seed": 7,
    },
    "selection": {"variance_min": 0.0, "max_correlation": 0.9, "method": "lasso"},
    "models": MODELS,
    "bootstrap": 20,
    "auc_drop_warning": THRESHOLD,
}


def _land(landing: Path) -> pd.DataFrame:
    """HN1 as landed files: landing/features/<center>/hn1.csv and landing/clinical/hn1.csv."""
    raw = pd.read_csv(shared_path(*HN1))
    raw["ID"] = raw["ID"].astype(str)
    raw["center_id"] = np.where(
        np.arange(len(raw)) % 5 < 3, "C1", np.where(np.arange(len(raw)) % 5 == 3, "C2", "C3")
    )
    for center, rows in raw.groupby("center_id"):
        folder = landing / "features" / str(center)
        folder.mkdir(parents=True, exist_ok=True)
        rows.drop(columns=["Target", "center_id"]).to_csv(folder / "hn1.csv", index=False)
    (landing / "clinical").mkdir(parents=True, exist_ok=True)
    raw.rename(columns={"ID": "patient_id", "Target": "ln_metastasis"})[
        ["patient_id", "center_id", "ln_metastasis"]
    ].to_csv(landing / "clinical" / "hn1.csv", index=False)
    return raw


def _materialize(home: Path, assets: list):
    import dagster as dg

    from dagster_project.resources import LakeResource

    run = dg.materialize(assets, resources={"lake": LakeResource(home=str(home))})
    assert run.success
    materialized = {
        e.asset_key.to_user_string(): e.step_materialization_data.materialization
        for e in run.get_asset_materialization_events()
    }
    checks = {c.check_name: c for c in run.get_asset_check_evaluations()}
    return materialized, checks


def _model_files(version_dir: Path) -> dict[str, int]:
    return {m: (version_dir / f"{m}.joblib").stat().st_mtime_ns for m in MODELS}


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """The lake after three runs (fit, unchanged re-run, changed labels), with what each reported."""
    from assets.clinical.defs import clinical, external_features
    from assets.studies.defs import build_study_defs
    from dagster_project.lake import Lake

    root = tmp_path_factory.mktemp("history")
    home = root / "lakehouse"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAKE_HOME", str(home))
        mp.setenv("LAKE_PSEUDONYM_KEY", "test-secret-not-for-production")
        lake = Lake.at(home)
        raw = _land(lake.landing)
        (lake.studies_dir / f"{STUDY}.yaml").write_text(yaml.safe_dump(SPEC))
        defs = build_study_defs(lake.studies_dir)
        study_assets = [a for a in defs.assets if a.key.path[0] == STUDY]
        check = [c for c in defs.asset_checks if CHECK in {s.name for s in c.check_specs}]
        assert len(check) == 1
        assets = [clinical, external_features, *study_assets, *check]

        runs, seconds, files = [], [], []
        for step in range(3):
            if step == 2:  # follow-up file: every development (C1) patient's outcome flipped
                c1 = raw[raw["center_id"] == "C1"]
                relabel = lake.landing / "clinical" / "hn1_relabel.csv"
                pd.DataFrame(
                    {
                        "patient_id": c1["ID"],
                        "center_id": "C1",
                        "ln_metastasis": 1 - c1["Target"],
                    }
                ).to_csv(relabel, index=False)
                later = (lake.landing / "clinical" / "hn1.csv").stat().st_mtime + 60
                os.utime(relabel, (later, later))  # newer than hn1.csv: its values win
            start = time.perf_counter()
            runs.append(_materialize(home, assets))
            seconds.append(time.perf_counter() - start)
            version = json.loads((home / "models" / STUDY / "current.json").read_text())
            files.append(_model_files(home / "models" / STUDY / version["model_version"]))
        yield {"lake": lake, "runs": runs, "files": files, "seconds": seconds, "raw": raw}


def _meta(materialization, key: str):
    value = materialization.metadata[key]
    return getattr(value, "value", value)


def _version(run) -> str:
    return _meta(run[0][f"{STUDY}/models"], "model_version")


def test_unchanged_inputs_reuse_the_version_without_refitting(history):
    (first, _), (second, _), _ = history["runs"]
    models = f"{STUDY}/models"
    assert _meta(first[models], "retrained") is True
    assert _meta(second[models], "retrained") is False
    assert _version(history["runs"][0]) == _version(history["runs"][1])
    # the pipelines were not written again, and the run's row and data version are the same
    assert history["files"][0] == history["files"][1]
    assert _meta(first[models], "trained_at") == _meta(second[models], "trained_at")
    assert first[models].tags["dagster/data_version"] == second[models].tags["dagster/data_version"]
    version_dir = history["lake"].models_dir / STUDY / _version(history["runs"][0])
    marker = json.loads((version_dir / "complete.json").read_text())
    assert set(marker["files"]) == {f"{m}.joblib" for m in MODELS} | {
        "resolved.yaml",
        "hashes.json",
    }
    # the unchanged re-run evaluates the loaded pipelines to the same metrics
    metrics = f"{STUDY}/model_metrics"
    assert (
        first[metrics].tags["dagster/data_version"] == second[metrics].tags["dagster/data_version"]
    )


def test_changed_labels_train_a_new_version_and_keep_the_old_one(history):
    lake = history["lake"]
    first, third = _version(history["runs"][0]), _version(history["runs"][2])
    assert third != first
    assert _meta(history["runs"][2][0][f"{STUDY}/models"], "retrained") is True
    versions = lake.read_table("model_versions").filter(pl.col("study") == STUDY)
    assert versions.height == 2 and set(versions["model_version"]) == {first, third}
    trained = dict(zip(versions["model_version"], versions["trained_at"], strict=True))
    assert trained[first] < trained[third]
    metrics = lake.read_table("model_metrics").filter(pl.col("study") == STUDY)
    assert set(metrics["model_version"]) == {first, third}
    for version in (first, third):
        rows = metrics.filter(pl.col("model_version") == version)
        assert rows.filter(pl.col("metric") == "auc").height >= len(MODELS) * 3
        assert rows.filter(pl.col("metric") == "calibration_slope").height > 0
    # the first version's pipelines were left alone by the new version's training
    assert _model_files(lake.models_dir / STUDY / first) == history["files"][0]
    # the flipped training labels really reached the study's inputs
    inputs = pl.read_parquet(lake.models_dir / STUDY / "inputs" / "clinical.parquet")
    c1 = inputs.filter(pl.col("center_id") == "C1")["ln_metastasis"].sum()
    raw = history["raw"]
    assert c1 == int((1 - raw.loc[raw["center_id"] == "C1", "Target"]).sum())


def test_model_history_view_pairs_latest_and_previous_values(history):
    from dagster_project.catalog import lake_connection

    lake = history["lake"]
    first, third = _version(history["runs"][0]), _version(history["runs"][2])
    metrics = lake.read_table("model_metrics").filter(pl.col("study") == STUDY)
    con = lake_connection(lake)
    try:
        columns = [d[0] for d in con.execute("select * from model_history limit 0").description]
        rows = con.execute(f"select * from model_history where study = '{STUDY}'").fetchall()
    finally:
        con.close()
    view = pl.DataFrame(rows, schema=columns, orient="row")
    assert set(view["latest_version"]) == {third} and set(view["previous_version"]) == {first}
    keys = ["model", "cohort", "metric"]
    assert view.select(keys).is_unique().all()

    def values(version: str, name: str) -> pl.DataFrame:
        return metrics.filter(pl.col("model_version") == version).select(
            *keys, pl.col("value").alias(name)
        )

    expected = values(third, "latest").join(
        values(first, "previous"), on=keys, how="full", coalesce=True
    )
    assert view.height == expected.height
    joined = view.join(expected, on=keys, how="inner")
    assert joined.height == expected.height
    both = joined.filter(pl.col("latest").is_not_null() & pl.col("previous").is_not_null())
    assert both.height > 0
    np.testing.assert_allclose(both["latest_value"], both["latest"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(both["previous_value"], both["previous"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        both["difference"], both["latest"] - both["previous"], rtol=0, atol=1e-12
    )


def test_auc_drop_check_warns_after_the_labels_flip(history):
    import dagster as dg

    lake = history["lake"]
    first, third = _version(history["runs"][0]), _version(history["runs"][2])
    checks = [run[1][CHECK] for run in history["runs"]]
    assert all(c.severity == dg.AssetCheckSeverity.WARN for c in checks)
    assert checks[0].passed and checks[1].passed  # one version only: nothing to compare
    assert "no previous version" in checks[0].description
    # expectation from the model_metrics rows: each version's best model, pooled external AUC
    metrics = lake.read_table("model_metrics").filter(
        (pl.col("study") == STUDY)
        & (pl.col("metric") == "auc")
        & (pl.col("cohort") == "external_validation")
    )
    best = {
        v: json.loads((lake.models_dir / STUDY / v / "summary.json").read_text())["best_model"]
        for v in (first, third)
    }

    def auc(version: str) -> float:
        row = metrics.filter(
            (pl.col("model_version") == version) & (pl.col("model") == best[version])
        )
        return row["value"].item()

    drop = auc(first) - auc(third)
    assert drop > THRESHOLD  # the model learnt the inverted outcome
    last = checks[2]
    assert not last.passed
    meta = {k: getattr(v, "value", v) for k, v in last.metadata.items()}
    assert meta["previous_version"] == first and meta["latest_version"] == third
    assert meta["threshold"] == THRESHOLD
    pooled = meta["cohorts"]["external_validation"]
    assert pooled["previous"] == pytest.approx(auc(first), abs=1e-12)
    assert pooled["latest"] == pytest.approx(auc(third), abs=1e-12)
    assert pooled["drop"] == pytest.approx(drop, abs=1e-12) and pooled["exceeded"]
    assert meta["drop"] >= drop


# pure functions ----------------------------------------------------------------------------
def _metrics(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema=["study", "model_version", "model", "cohort", "metric", "value"], orient="row"
    )


def _versions(rows: list[tuple]) -> pl.DataFrame:
    from datetime import UTC, datetime

    return pl.DataFrame(
        {
            "study": [r[0] for r in rows],
            "model_version": [r[1] for r in rows],
            "trained_at": [datetime(2025, 1, r[2], tzinfo=UTC) for r in rows],
        }
    )


def test_version_order_and_previous_version_follow_trained_at():
    versions = _versions([("s", "b", 3), ("s", "a", 1), ("t", "z", 2), ("s", "c", 2)])
    assert version_order(versions, "s") == ["a", "c", "b"]
    assert previous_version(versions, "s", "b") == "c"
    assert previous_version(versions, "s", "a") == "b"  # inputs went back to version a
    assert previous_version(versions, "t", "z") is None
    assert previous_version(pl.DataFrame(), "s", "a") is None


METRICS = _metrics(
    [
        ("s", "v1", "lr", "external_validation", "auc", 0.80),
        ("s", "v1", "lr", "external_validation:C2", "auc", 0.85),
        ("s", "v1", "rf", "external_validation", "auc", 0.60),
        ("s", "v1", "lr", "internal_validation", "auc", 0.90),
        ("s", "v2", "lr", "external_validation", "auc", 0.70),
        ("s", "v2", "lr", "external_validation:C2", "auc", 0.60),
        ("s", "v2", "lr", "internal_validation", "auc", 0.30),
        ("s", "v2", "rf", "external_validation", "auc", 0.75),
        ("s", "v2", "lr", "external_validation", "brier", 0.9),
        ("x", "v2", "lr", "external_validation", "auc", 0.1),
    ]
)


def test_auc_drop_outcome_compares_every_external_cohort_of_the_best_model():
    assert external_auc(METRICS, "s", "v1", "lr") == {
        "external_validation": 0.80,
        "external_validation:C2": 0.85,
    }
    common = {"study": "s", "latest_version": "v2", "previous_version": "v1"}
    # lr -> lr: pooled drop 0.10, per-center drop 0.25
    out = auc_drop_outcome(METRICS, **common, latest_model="lr", previous_model="lr", threshold=0.2)
    assert not out.passed
    assert [d.cohort for d in out.drops if d.exceeded] == ["external_validation:C2"]
    meta = out.metadata()
    assert meta["cohort"] == "external_validation:C2"
    assert (meta["previous"], meta["latest"], meta["threshold"]) == (0.85, 0.60, 0.2)
    assert meta["drop"] == pytest.approx(0.25)
    assert auc_drop_outcome(
        METRICS, **common, latest_model="lr", previous_model="lr", threshold=0.3
    ).passed
    # the drop equal to the threshold is not "more than" it
    assert auc_drop_outcome(
        METRICS, **common, latest_model="lr", previous_model="lr", threshold=0.25 + 1e-12
    ).passed
    # each version's own best model: rf 0.75 now vs lr 0.80 before -> drop 0.05 (pooled only)
    out = auc_drop_outcome(
        METRICS, **common, latest_model="rf", previous_model="lr", threshold=0.04
    )
    assert not out.passed and [d.cohort for d in out.drops] == ["external_validation"]
    assert out.drops[0].drop == pytest.approx(0.05)
    # unknown previous best model: the latest one's name is used
    out = auc_drop_outcome(METRICS, **common, latest_model="rf", previous_model=None, threshold=0.1)
    assert out.passed and out.drops[0].drop == pytest.approx(-0.15)


def test_auc_drop_outcome_passes_with_a_note_when_nothing_to_compare():
    first = auc_drop_outcome(
        METRICS,
        study="s",
        latest_version="v1",
        latest_model="lr",
        previous_version=None,
        previous_model=None,
        threshold=0.0,
    )
    assert first.passed and "no previous version" in first.note and not first.drops
    assert "drop" not in first.metadata()
    unset = auc_drop_outcome(
        METRICS,
        study="s",
        latest_version="v2",
        latest_model="lr",
        previous_version="v1",
        previous_model="lr",
        threshold=None,
    )
    assert unset.passed and "no auc_drop_warning" in unset.note and unset.drops
    no_external = auc_drop_outcome(
        METRICS.with_columns(pl.lit("internal_validation").alias("cohort")).unique(),
        study="s",
        latest_version="v2",
        latest_model="lr",
        previous_version="v1",
        previous_model="lr",
        threshold=0.0,
    )
    assert no_external.passed and "no external_validation cohort" in no_external.note
    nan = _metrics([("s", "v1", "lr", "external_validation", "auc", float("nan"))])
    assert external_auc(nan, "s", "v1", "lr") == {}


def test_a_version_folder_is_complete_only_with_its_marker_and_intact_files(tmp_path):
    from datetime import UTC, datetime

    from assets.studies.spec import parse_study
    from assets.studies.store import COMPLETE_MARKER, read_complete, write_complete

    spec = parse_study(SPEC, f"{STUDY}.yaml")
    folder = tmp_path / "v1"
    folder.mkdir()
    files = [folder / f"{m}.joblib" for m in MODELS] + [folder / "hashes.json"]
    for path in files:
        path.write_bytes(path.name.encode())
    (folder / "resolved.yaml").write_text(spec.resolved_yaml())
    assert read_complete(folder, spec, "v1") is None  # a crash before the marker: not complete
    at = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    write_complete(folder, "v1", at, [*files, folder / "resolved.yaml"])
    marker = read_complete(folder, spec, "v1")
    assert marker is not None and datetime.fromisoformat(marker["trained_at"]) == at
    assert read_complete(folder, spec, "v2") is None  # the marker names another version
    files[0].write_bytes(b"cut")  # a pipeline changed or cut short after the run
    assert read_complete(folder, spec, "v1") is None
    files[0].write_bytes(files[0].name.encode())
    assert read_complete(folder, spec, "v1") is not None
    files[1].unlink()
    assert read_complete(folder, spec, "v1") is None
    files[1].write_bytes(files[1].name.encode())
    other = parse_study({**SPEC, "models": ["logistic_regression"]}, f"{STUDY}.yaml")
    assert read_complete(folder, other, "v1") is None  # resolved.yaml of another study text
    (folder / COMPLETE_MARKER).write_text("{not json")
    assert read_complete(folder, spec, "v1") is None


def test_each_version_records_the_table_versions_it_was_trained_on(history, monkeypatch):
    """Provenance: a model version keeps the manifests of the lake tables it read, and
    ``radlake provenance`` prints and exports that snapshot."""
    import subprocess
    import sys

    from dagster_project.manifest import file_sha256

    lake = history["lake"]
    first, last = _version(history["runs"][0]), _version(history["runs"][2])
    snapshots = {}
    for version in (first, last):
        payload = json.loads((lake.models_dir / STUDY / version / "provenance.json").read_text())
        inputs = payload["inputs"]
        assert {"clinical", "external_features"} <= set(inputs)
        for table, manifest in inputs.items():
            # the manifest is the one the lake kept for that version, and names real files
            kept = lake.table_dir(table) / "_manifests" / f"{manifest['version']}.json"
            assert json.loads(kept.read_text()) == manifest
            assert manifest["code_version"] and manifest["libraries"]["polars"] == pl.__version__
        snapshots[version] = inputs
    # the relabelled clinical file made a new clinical version; the features did not change
    assert (
        snapshots[first]["clinical"]["content_sha256"]
        != snapshots[last]["clinical"]["content_sha256"]
    )
    assert (
        snapshots[first]["external_features"]["content_sha256"]
        == snapshots[last]["external_features"]["content_sha256"]
    )
    # the live clinical file is the last version's, byte for byte
    (live,) = lake.table_files("clinical")
    assert file_sha256(live) == snapshots[last]["clinical"]["files"][0]["sha256"]

    monkeypatch.setenv("LAKE_HOME", str(lake.home))
    radlake = [sys.executable, "-m", "dagster_project.cli", "provenance", STUDY]
    shown = subprocess.run([*radlake, first], capture_output=True, text=True, check=True).stdout
    assert snapshots[first]["clinical"]["version"] in shown
    assert f"{snapshots[first]['clinical']['rows']:>10}" in shown
    out = lake.home / "snapshot.json"
    subprocess.run([*radlake, last, "--export", str(out)], check=True, capture_output=True)
    assert json.loads(out.read_text())["inputs"] == snapshots[last]
    missing = subprocess.run([*radlake, "0000"], capture_output=True, text=True)
    assert missing.returncode == 1 and "no provenance" in missing.stderr + missing.stdout
