"""Small cohorts (issue 18): the demo study materialized the way a user does it, at 20-60 patients.

`radlake demo-data --patients N` then `radlake materialize`, with the demo study that demo-data
writes into the lake cut down to two models and 200 bootstrap resamples (as
tests/test_end_to_end.py does) so each size takes seconds.
Each run completes: every asset and every blocking check succeeds (the study's tables are judged
on data properties; an interval's relation to its estimate is said in ci_flag / ci_note), so the
catalog is built. Every model_metrics row is inside its interval or flagged with the reason, and
the stratified bootstrap rows are recomputed here with numpy and scikit-learn, resample by
resample, down to their flag. Below what the spec supports (12 patients: two of a class in
training, and the demo study's SVM needs three) the run stops with the study's StudyDataError,
named in the failed step.
"""

from __future__ import annotations

import html
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STUDY = "gist_mitotic_index"
MODELS = ["logistic_regression", "decision_tree"]
BOOTSTRAP = 200
TOLERANCE = 1e-9


def _env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LAKE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "LAKE_PSEUDONYM_KEY": "small-cohort-test-secret",
        "GX_ANALYTICS_ENABLED": "false",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "MPLBACKEND": "Agg",
    }


def _radlake(home: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(BIN / "radlake"), *args]
    return subprocess.run(command, env=_env(home), cwd=REPO, capture_output=True, text=True)


def _demo_lake(tmp_path: Path, patients: int, models: list[str]) -> tuple[Path, str, int]:
    """A demo lake of ``patients``, the demo study cut down: (LAKE_HOME, output, return code)."""
    home = tmp_path / "lakehouse"
    generated = _radlake(home, "demo-data", "--patients", str(patients))
    assert generated.returncode == 0, generated.stderr
    # the demo study as radlake demo-data wrote it into the lake
    written = home / "studies" / f"{STUDY}.yaml"
    study = yaml.safe_load(written.read_text())
    study.update(models=models, bootstrap=BOOTSTRAP)
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(yaml.safe_dump(study, sort_keys=False))
    result = _radlake(home, "materialize", "--select", "*")
    return home, result.stdout + result.stderr, result.returncode


def _run_events(home: Path):
    """(runs, failed steps, asset check evaluations) from the lake's Dagster instance."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        runs = instance.get_runs()
        failures, checks = [], []
        for run in runs:
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                if event is None:
                    continue
                if event.event_type == dg.DagsterEventType.STEP_FAILURE:
                    failures.append(event)
                elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
                    checks.append(event.event_specific_data)
        return runs, failures, checks


def _direct_bootstrap(y: np.ndarray, p: np.ndarray, threshold: float, cohort: str, seed: int):
    """Every bootstrap metric on every resample, one resample at a time (scikit-learn metrics).

    The resamples are the study's documented ones (metrics module docstring): positives and
    negatives each drawn with replacement to their own count, from a generator seeded with the
    study seed and the cohort name (``stable_seed``), positives first.
    """
    from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score

    from assets.studies.metrics import stable_seed

    rng = np.random.default_rng(stable_seed(seed, cohort))
    pos, neg = p[y == 1], p[y == 0]
    draws_pos = rng.integers(0, len(pos), size=(BOOTSTRAP, len(pos)))
    draws_neg = rng.integers(0, len(neg), size=(BOOTSTRAP, len(neg)))
    out = {m: [] for m in ("auc", "accuracy", "sensitivity", "specificity", "brier")}
    for b in range(BOOTSTRAP):
        probability = np.r_[pos[draws_pos[b]], neg[draws_neg[b]]]
        label = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
        predicted = (probability >= threshold).astype(int)
        out["auc"].append(roc_auc_score(label, probability))
        out["accuracy"].append(accuracy_score(label, predicted))
        out["sensitivity"].append(predicted[label == 1].mean())
        out["specificity"].append(1 - predicted[label == 0].mean())
        out["brier"].append(brier_score_loss(label, probability))
    return {m: np.asarray(v) for m, v in out.items()}


def _expected_flag(value: float, values: np.ndarray) -> str | None:
    """The flag of a percentile interval, by the rules written out (ci_flags docstring)."""
    low, high = np.percentile(values, [2.5, 97.5])
    tol = TOLERANCE * max(1.0, abs(value), abs(low), abs(high))
    distinct = np.unique(np.round(values, 9)).size
    if high - low <= tol or distinct < 5:
        return "degenerate_ci"
    if value < low - tol or value > high + tol:
        return "estimate_outside_ci"
    return None


@pytest.mark.parametrize("patients", [20, 30, 40, 60])
def test_demo_study_at_small_sizes_completes_and_flags_its_intervals(tmp_path, patients):
    home, output, code = _demo_lake(tmp_path, patients, MODELS)
    assert code == 0, output[-6000:]
    runs, failures, checks = _run_events(home)
    assert [r.status.value for r in runs] == ["SUCCESS"]
    assert failures == []
    study_checks = [c for c in checks if c.asset_key.path[0] == STUDY]
    assert {c.check_name for c in study_checks} >= {"gx_suite", "auc_drop_vs_previous_version"}
    assert all(c.passed for c in checks if c.check_name == "gx_suite"), checks
    assert (home / "catalog.duckdb").is_file()

    from dagster_project.lake import Lake

    lake = Lake.at(home)  # tables are the union of their parts
    metrics = lake.read_table("model_metrics")
    assert set(metrics["model"]) >= {*MODELS, "combined"}
    # each row: inside its interval (float precision), or flagged with a reason
    with_ci = metrics.filter(pl.col("ci_low").is_not_null() & pl.col("value").is_not_null())
    tol = TOLERANCE * pl.max_horizontal(1.0, pl.col("value").abs(), pl.col("ci_low").abs())
    inside = (pl.col("value") >= pl.col("ci_low") - tol) & (
        pl.col("value") <= pl.col("ci_high") + tol
    )
    unflagged_outside = with_ci.filter(~inside & pl.col("ci_flag").is_null())
    assert unflagged_outside.is_empty(), unflagged_outside
    assert with_ci.filter(~inside)["ci_flag"].is_in(["estimate_outside_ci", "degenerate_ci"]).all()
    flagged = metrics.filter(pl.col("ci_flag").is_not_null())
    assert flagged["ci_note"].str.len_chars().min() > 10, flagged
    undefined = metrics.filter(pl.col("value").is_null() & (pl.col("ci_method") != "none"))
    assert (undefined["ci_flag"] == "not_estimable").all(), undefined

    # the bootstrap rows recomputed resample by resample, down to their flags
    version = metrics["model_version"][0]
    predictions = pl.read_parquet(home / "models" / STUDY / version / "predictions.parquet")
    seed = yaml.safe_load((home / "studies" / f"{STUDY}.yaml").read_text())["split"]["seed"]
    checked = 0
    for (model, cohort), part in predictions.group_by("model", "cohort"):
        part = part.sort("patient_key")
        y = part["label"].to_numpy().astype(int)
        if y.min() == y.max():
            continue
        p = part["probability"].to_numpy()
        rows = metrics.filter((pl.col("model") == model) & (pl.col("cohort") == cohort))
        by_metric = {r["metric"]: r for r in rows.iter_rows(named=True)}
        direct = _direct_bootstrap(y, p, by_metric["threshold"]["value"], cohort, seed)
        for metric, values in direct.items():
            row = by_metric[metric]
            low, high = np.percentile(values, [2.5, 97.5])
            assert row["ci_low"] == pytest.approx(low, abs=1e-12), (model, cohort, metric)
            assert row["ci_high"] == pytest.approx(high, abs=1e-12), (model, cohort, metric)
            assert row["ci_flag"] == _expected_flag(row["value"], values), row
            checked += 1
    assert checked >= 5 * 3 * len(MODELS)

    survival = lake.read_table("survival_results")
    assert survival["ci_flag"].drop_nulls().is_in(["degenerate_ci", "estimate_outside_ci"]).all()
    report = (home / "reports" / STUDY / "report.html").read_text()
    if flagged.height:
        assert "Intervals to read with care" in report
        assert all(html.escape(note) in report for note in flagged["ci_note"])


def test_below_what_the_study_supports_the_run_names_the_study_data_error(tmp_path):
    """12 patients: 2 of each class in training; the demo study's SVM needs 3 (its Platt
    calibration is cross-validated inside every fold)."""
    home, output, code = _demo_lake(tmp_path, 12, ["logistic_regression", "svm"])
    assert code != 0
    _, failures, _ = _run_events(home)
    assert [f.step_key for f in failures] == [f"{STUDY}__models"]
    description = failures[0].step_failure_data.user_failure_data.description
    assert description.startswith(f"study {STUDY}: the training cohort")
    assert "the svm model needs at least 3 of each class in training" in description
    assert "remove svm from models" in description
    # everything that does not depend on the study was materialized
    assert (home / "lake" / "clinical").is_dir() and (home / "lake" / "radiomics_features").is_dir()
