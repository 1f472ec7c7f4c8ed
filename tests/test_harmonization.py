"""Harmonization (issue 15): the study pipeline's ``harmonize`` step against combatlearn itself.

Real features: radMLBench Head-Neck-Radiomics-HN1 (Aerts et al. 2014; pyradiomics), split into
three pseudo-centers by row (row % 3) with a scanner shift injected into center B (every
feature x 1.3 + 0.5 SD), as multi-center radiomics data look. References: the same computation
done directly with ``combatlearn.ComBat`` (fit on the training rows, transform the others), a
direct pandas per-center z-score, and the study run end to end (leakage: validation labels
never reach the fitted transformer).
"""

from __future__ import annotations

import copy

import joblib
import numpy as np
import pandas as pd
import polars as pl
import pytest

from assets.studies.spec import StudySpecError, parse_study
from tests.conftest import shared_path

HN1 = ("radiomics_features", "radMLBench", "datasets", "Head-Neck-Radiomics-HN1.gz")


@pytest.fixture(scope="module")
def shifted() -> pd.DataFrame:
    raw = pd.read_csv(shared_path(*HN1))
    X = raw.drop(columns=["ID", "Target"]).astype(float)
    X.index = raw["ID"].astype(str)
    centers = np.array(["A", "B", "C"])[np.arange(len(X)) % 3]
    b = centers == "B"
    X.loc[b] = X.loc[b] * 1.3 + 0.5 * X.std().to_numpy()
    return X.assign(center_id=centers, age=np.linspace(40, 80, len(X)))


def test_combat_step_equals_combatlearn_and_removes_the_injected_shift(shifted):
    from combatlearn import ComBat

    from assets.studies.harmonize import Harmonizer

    train = np.arange(len(shifted)) % 2 == 0
    features = shifted.drop(columns=["center_id", "age"])
    batch = shifted["center_id"]
    for covariates in ((), ("age",)):
        frame = shifted if covariates else shifted.drop(columns=["age"])
        step = Harmonizer("combat", "center_id", covariates).fit(frame[train])
        direct = ComBat(
            batch=batch,
            continuous_covariates=shifted[list(covariates)] if covariates else None,
            method="fortin",
        ).fit(features[train])
        for rows in (train, ~train):
            np.testing.assert_allclose(
                step.transform(frame[rows]).to_numpy(),
                direct.transform(features[rows]).to_numpy(),
                rtol=0,
                atol=1e-9,
            )
    harmonized = step.transform(frame[~train])
    centers = batch[~train].to_numpy()

    def gap(X: pd.DataFrame) -> float:  # median |mean B - mean A| in SDs of A, over features
        a, b = X[centers == "A"], X[centers == "B"]
        return float(((b.mean() - a.mean()).abs() / a.std().replace(0, 1)).median())

    # (combatlearn 2.3.0 shrinks each feature's batch shift toward the mean over batches, see
    # assets.studies.harmonize, so part of an injected shift stays)
    assert gap(features[~train]) > 0.5 and gap(harmonized) < 0.7 * gap(features[~train]), (
        gap(features[~train]),
        gap(harmonized),
    )


def neurocombat_reference_batch(reference: pd.DataFrame, new: pd.DataFrame, monkeypatch):
    """Fortin's neuroCombat (the reference implementation) adjusting ``new`` onto ``reference``
    (``ref_batch``, parametric EB), as an independent computation of the same thing."""
    from neuroCombat import neuroCombat

    monkeypatch.setattr(np, "int", int, raising=False)  # neuroCombat 0.2.12 still calls np.int
    stacked = pd.concat([reference, new], ignore_index=True)
    covars = pd.DataFrame({"batch": ["reference"] * len(reference) + ["new"] * len(new)})
    data = neuroCombat(
        dat=stacked.T.to_numpy(), covars=covars, batch_col="batch", ref_batch="reference"
    )["data"].T
    np.testing.assert_allclose(data[: len(reference)], reference.to_numpy(), atol=1e-9)
    return data[len(reference) :]


def test_unseen_center_refused_or_estimated_from_its_own_features(shifted, monkeypatch):
    from combatlearn import ComBat

    from assets.studies.harmonize import HarmonizationError, Harmonizer

    features = shifted.drop(columns=["center_id", "age"])
    seen = (shifted["center_id"] != "B").to_numpy() & (np.arange(len(shifted)) % 2 == 0)
    new = (shifted["center_id"] == "B").to_numpy()
    shifted = shifted.drop(columns=["age"])
    with pytest.raises(HarmonizationError, match=r"\['B'\] were never seen in training"):
        Harmonizer().fit(shifted[seen]).transform(shifted[new])

    step = Harmonizer(external="estimate_unlabeled").fit(shifted[seen])
    assert step.unseen_levels(shifted[new]) == ["B"]
    out = step.transform(shifted[new])
    # directly with the libraries: training (centers A, C) harmonized by combatlearn is the
    # reference batch; center B adjusted onto it by neuroCombat (ref_batch); only B's features
    reference = ComBat(batch=shifted["center_id"][seen], method="fortin").fit(features[seen])
    harmonized_training = reference.transform(features[seen])
    expected = neurocombat_reference_batch(harmonized_training, features[new], monkeypatch)
    np.testing.assert_allclose(out.to_numpy(), expected, rtol=0, atol=1e-9)
    # the injected shift is gone: B's feature means sit at the training reference's
    gap_before = (features[new].mean() - harmonized_training.mean()).abs() / features[seen].std()
    gap_after = (out.mean() - harmonized_training.mean()).abs() / features[seen].std()
    assert gap_after.median() < 0.05 < 0.3 < gap_before.median()


def test_zscore_per_center_equals_pandas(shifted):
    from assets.studies.harmonize import Harmonizer

    train = np.arange(len(shifted)) % 2 == 0
    features = shifted.drop(columns=["center_id", "age"])
    shifted = shifted.drop(columns=["age"])
    step = Harmonizer("zscore_per_center").fit(shifted[train])
    out = step.transform(shifted[~train])
    grouped = features[train].groupby(shifted["center_id"][train])
    means, sds = grouped.mean(), grouped.std(ddof=1).replace(0.0, 1.0)
    centers = shifted["center_id"][~train].to_numpy()
    expected = (features[~train] - means.loc[centers].to_numpy()) / sds.loc[centers].to_numpy()
    np.testing.assert_allclose(out.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)


def test_spec_refuses_the_label_as_covariate_and_names_file_and_key():
    base = {
        "name": "h",
        "label": "relapse",
        "features": {"radiomics": {"params_id": "ct"}},
        "split": {"development_centers": ["C1"]},
    }
    with pytest.raises(StudySpecError) as error:
        parse_study({**base, "harmonization": {"covariates": ["age", "relapse"]}}, "h.yaml")
    assert str(error.value).startswith("h.yaml: harmonization.covariates: 'relapse' is the")
    with pytest.raises(StudySpecError, match="harmonization.method"):
        parse_study({**base, "harmonization": {"method": "covbat"}}, "h.yaml")
    spec = parse_study({**base, "harmonization": {"batch": "manufacturer"}}, "h.yaml")
    assert (spec.harmonization.method, spec.harmonization.external) == ("combat", "refuse")


# the study end to end -------------------------------------------------------------------
def _hn1_study(harmonization: dict) -> dict:
    from tests.test_studies import HN1_STUDY

    study = copy.deepcopy(HN1_STUDY)
    study.update(
        models=["logistic_regression"],
        bootstrap=20,
        cv_folds=3,
        harmonization=harmonization,
        features={"external": {"feature_set": "hn1"}},
    )
    return study


def _shifted_hn1(flip_external_labels: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    """HN1 as in test_studies (C1 development; C2, C3 external) with C3 scanner-shifted."""
    from tests.test_studies import hn1_frames

    features, clinical = hn1_frames()
    c3 = clinical["center_id"] == "C3"
    columns = [c for c in features.columns if c != "patient_key"]
    features = features.with_columns(
        [pl.when(c3).then(pl.col(c) * 1.5).otherwise(pl.col(c)).alias(c) for c in columns]
    )
    if flip_external_labels:
        external = clinical["center_id"].is_in(["C2", "C3"])
        clinical = clinical.with_columns(
            pl.when(external)
            .then(1 - pl.col("ln_metastasis"))
            .otherwise(pl.col("ln_metastasis"))
            .alias("ln_metastasis")
        )
    return features, clinical


def test_study_refuses_unseen_centers_by_default(tmp_path):
    from assets.studies.data import prepare_study
    from assets.studies.split import StudyDataError

    spec = parse_study(_hn1_study({"method": "combat"}), "hn1.yaml")
    with pytest.raises(StudyDataError) as error:
        prepare_study(spec, *_shifted_hn1())
    message = str(error.value)
    assert message.startswith("hn1.yaml: harmonization.external: center_id level(s) ['C2', 'C3']")
    assert "estimate_unlabeled" in message


def test_validation_labels_never_reach_the_fitted_harmonizer(tmp_path):
    """Flip every external patient's label: the fitted transformer and the harmonized external
    features are identical; the metrics say which harmonization; raw runs beside it."""
    from assets.studies.data import prepare_study
    from assets.studies.run import run_study

    study = _hn1_study({"method": "combat", "external": "estimate_unlabeled", "compare_raw": True})
    spec = parse_study(study, "hn1.yaml")
    runs = []
    for flip in (False, True):
        features, clinical = _shifted_hn1(flip)
        result = run_study(
            spec,
            features,
            clinical,
            tmp_path / str(flip),
            code_version_override="test",
            figures=False,
            write_report=False,
        )
        data, splits, _ = prepare_study(spec, features, clinical)
        external = splits.filter(pl.col("cohort") == "external_validation")["patient_key"]
        step = result.fitted["logistic_regression"].pipeline.named_steps["harmonize"]
        runs.append((result, joblib.hash(step), step.transform(data.X(external.to_list()))))
    (first, hash_a, external_a), (second, hash_b, external_b) = runs
    assert hash_a == hash_b
    pd.testing.assert_frame_equal(external_a, external_b)
    assert any("C3 was not in training" in n and "no labels" in n for n in first.notes)
    metrics = first.metrics
    assert set(metrics["harmonization"]) == {
        "combat(batch=center_id, external=estimate_unlabeled)",
        "none",
    }
    raw = metrics.filter(pl.col("model") == "logistic_regression:raw")
    assert set(raw["harmonization"]) == {"none"} and not raw.is_empty()
    # the flipped external labels do change the external AUC: the labels were used there only
    auc = {
        r.metrics.filter(
            (pl.col("model") == "logistic_regression")
            & (pl.col("cohort") == "external_validation")
            & (pl.col("metric") == "auc")
        )["value"][0]
        for r in (first, second)
    }
    assert len(auc) == 2 and abs(sum(auc) - 1.0) < 1e-9
