"""Studies (issue 6) against external references.

- radMLBench Head-Neck-Radiomics-HN1 (Aerts et al. 2014; real pyradiomics features, binary
  lymph-node outcome) as a three-center study (centers assigned artificially by row): plausible
  AUCs, every CI contains its estimate, a re-run gives identical metrics and version.
- scikit-learn's Wisconsin breast-cancer data: the study's logistic-regression AUC equals a plain
  scikit-learn computation of the same pipeline on the same split to 1e-9.
- DeLong: the worked example of Hanley & McNeil (Radiology 1982;143:29-36, Table 1: CT ratings
  of 109 patients): AUC 0.893 and standard error 0.032 as published; DeLong variance and
  DeLong's test equal a direct O(n^2) implementation of DeLong et al. (Biometrics 1988).
- Bootstrap resamples against scikit-learn metrics, calibration / decision curves against
  closed forms and independent computations, the pipeline's leakage guarantee, the nomogram
  against the model it draws, XGBoost SHAP additivity against XGBoost's own margin.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import polars as pl
import pytest
import yaml

from assets.studies.spec import StudySpecError, SurvivalSpec, load_study, parse_study
from tests.conftest import REPO, shared_path

HN1 = ("radiomics_features", "radMLBench", "datasets", "Head-Neck-Radiomics-HN1.gz")
HN1_VOLUME = "GTV-1_original_shape_MeshVolume"
HN1_DIAMETER = "GTV-1_original_shape_Maximum3DDiameter"


# data ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hn1_tables() -> tuple[pl.DataFrame, pl.DataFrame]:
    return hn1_frames()


def hn1_frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    """HN1 features + a clinical table: patient_key pseudonymised, centers assigned by row.

    The two clinical columns of the combined model are derived from the real tumour volume and
    diameter of the same file (HN1 ships no clinical columns).
    """
    from dagster_project.pseudonym import Pseudonymizer

    metadata = yaml.safe_load(
        shared_path("radiomics_features", "radMLBench", "metadata.yaml").read_text()
    )
    raw = pd.read_csv(shared_path(*HN1))
    info = metadata["Head-Neck-Radiomics-HN1"]
    assert raw.shape == (info["nInstances"], info["nFeatures"] + 2)
    pseudonymize = Pseudonymizer(b"test")
    centers = np.where(
        np.arange(len(raw)) % 5 < 3, "C1", np.where(np.arange(len(raw)) % 5 == 3, "C2", "C3")
    )
    keys = [pseudonymize(c, pid) for c, pid in zip(centers, raw["ID"].astype(str), strict=True)]
    features = pl.from_pandas(raw.drop(columns=["ID", "Target"])).with_columns(
        pl.Series("patient_key", keys)
    )
    diameter = raw[HN1_DIAMETER]
    clinical = pl.DataFrame(
        {
            "patient_key": keys,
            "center_id": centers.tolist(),
            "ln_metastasis": raw["Target"].astype(int).tolist(),
            "tumor_volume": raw[HN1_VOLUME].tolist(),
            "diameter_class": np.where(
                diameter < diameter.quantile(1 / 3),
                "small",
                np.where(diameter < diameter.quantile(2 / 3), "medium", "large"),
            ).tolist(),
        }
    )
    return features, clinical


HN1_STUDY = {
    "name": "hn1_lymph_nodes",
    "label": "ln_metastasis",
    "features": {
        "external": {"feature_set": "hn1"},
        "clinical": ["tumor_volume", "diameter_class"],
    },
    "split": {
        "development_centers": ["C1"],
        "internal_validation_fraction": 0.3,
        "external_validation_centers": ["C2", "C3"],
        "seed": 7,
    },
    "selection": {"variance_min": 0.0, "max_correlation": 0.9, "method": "lasso"},
    "bootstrap": 200,
}


@pytest.fixture(scope="module")
def hn1_result(hn1_tables, tmp_path_factory):
    from assets.studies.run import run_study

    features, clinical = hn1_tables
    spec = parse_study(HN1_STUDY, "hn1_lymph_nodes.yaml")
    return run_study(
        spec, features, clinical, tmp_path_factory.mktemp("hn1"), code_version_override="test"
    )


# spec ------------------------------------------------------------------------------------
def test_shipped_demo_study_loads_with_defaults():
    spec = load_study(REPO / "radlake" / "demo" / "studies" / "gist_mitotic_index.yaml")
    assert spec.label == "mi_high" and spec.features.radiomics.params_id == "ct_default"
    assert spec.split.external_validation_centers == ("C2",)
    assert spec.models == (
        "logistic_regression",
        "svm",
        "random_forest",
        "decision_tree",
        "xgboost",
    )
    assert spec.best_model.metric == "auc" and spec.best_model.cohort == "cv"
    assert spec.survival[0].times == (36.0, 60.0) and spec.survival[0].cox_terms == (
        "predicted_label",
        "tumor_size_cm",
    )
    minimal = parse_study(
        {
            "name": "m",
            "label": "y",
            "features": {"radiomics": {"params_id": "ct"}},
            "split": {"development_centers": ["C1"]},
        }
    )
    assert (minimal.bootstrap, minimal.selection.method, minimal.selection.max_correlation) == (
        1000,
        "lasso",
        0.9,
    )
    assert (minimal.split.internal_validation_fraction, minimal.split.seed, minimal.case_rule) == (
        0.3,
        42,
        "largest_roi",
    )
    # the resolved YAML round-trips to the same spec
    assert (
        parse_study(yaml.safe_load(minimal.resolved_yaml()), "resolved").to_dict()
        == minimal.to_dict()
    )


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"selction": {}}, "selction", ["did you mean 'selection'", "allowed here"]),
        (
            {"split": {"development_centers": ["C1"], "seed": "abc"}},
            "split.seed",
            ["expected an integer", "'abc'"],
        ),
        ({"models": ["xgb"]}, "models[0]", ["did you mean 'xgboost'", "logistic_regression"]),
        (
            {"split": {"development_centers": ["C1"], "internal_validation_fraction": 1.5}},
            "split.internal_validation_fraction",
            ["[0, 1)"],
        ),
        (
            {"split": {"development_centers": [1]}},
            "split.development_centers[0]",
            ["expected a string"],
        ),
        ({"selection": {"method": "boruta"}}, "selection.method", ["lasso", "mrmr", "univariate"]),
        (
            {
                "survival": [
                    {
                        "endpoint": "rfs",
                        "time": "t",
                        "event": "e",
                        "cutoff": {"method": "optimal", "variable": "x"},
                    }
                ]
            },
            "survival[0].cutoff.method",
            ["maxstat", "median"],
        ),
        (
            {"grids": {"xgboost": {"max_depth": {"a": 1}}}},
            "grids.xgboost.max_depth",
            ["non-empty list"],
        ),
        ({"case_rule": "biggest"}, "case_rule", ["largest_roi", "phase:<name>"]),
        ({"cv_folds": 1}, "cv_folds", ["must be >= 2"]),
        ({"cv_folds": 2.5}, "cv_folds", ["expected an integer"]),
    ],
)
def test_spec_errors_name_file_key_and_allowed(tmp_path, change, key, words):
    study = {
        "name": "s",
        "label": "y",
        "features": {"radiomics": {"params_id": "ct"}},
        "split": {"development_centers": ["C1"]},
    }
    study.update(change)
    path = tmp_path / "bad_study.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(StudySpecError) as error:
        load_study(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {key}:"), message
    for word in words:
        assert word in message, message


def test_survival_only_study_and_survival_entry_fields():
    spec = parse_study(
        {
            "name": "os_only",
            "split": {"development_centers": ["C1"], "internal_validation_fraction": 0},
            "survival": [
                {
                    "endpoint": "os",
                    "time": "os_months",
                    "event": "os_event",
                    "groups": "stage",
                    "cox_terms": ["stage", "age"],
                    "times": [36, 60],
                    "cutoff": {"method": "maxstat", "variable": "score"},
                    "reference_levels": {"stage": "I"},
                    "agreement": {"score": "score", "readers": ["reader1", "reader2"]},
                }
            ],
        },
        "os_only.yaml",
    )
    assert not spec.is_classification and spec.models == ()
    entry = spec.survival[0]
    assert [f for f in SurvivalSpec.__dataclass_fields__] == [
        "endpoint",
        "time",
        "event",
        "groups",
        "cox_terms",
        "times",
        "cutoff",
        "reference_levels",
        "agreement",
    ]
    assert (entry.cutoff.method, entry.cutoff.variable, entry.reference_levels) == (
        "maxstat",
        "score",
        {"stage": "I"},
    )
    assert entry.agreement.readers == ("reader1", "reader2")
    with pytest.raises(StudySpecError, match="only allowed in a classification study"):
        parse_study(
            {
                "name": "x",
                "split": {"development_centers": ["C1"]},
                "models": ["svm"],
                "survival": [{"endpoint": "os", "time": "t", "event": "e"}],
            },
            "x.yaml",
        )


def test_grid_override_names_are_checked_against_the_estimator():
    from assets.studies.pipeline import param_grid

    spec = parse_study(
        {
            "name": "g",
            "label": "y",
            "features": {"radiomics": {"params_id": "ct"}},
            "split": {"development_centers": ["C1"]},
            "grids": {"xgboost": {"max_depth": [4], "depth": [2]}},
        },
        "g.yaml",
    )
    with pytest.raises(StudySpecError, match=r"g.yaml: grids.xgboost.depth: not a parameter"):
        param_grid("xgboost", spec)
    ok = parse_study({**HN1_STUDY, "grids": {"xgboost": {"max_depth": [4, 5]}}}, "ok.yaml")
    assert param_grid("xgboost", ok) == {"model__max_depth": [4, 5], "model__learning_rate": [0.05]}


# split -----------------------------------------------------------------------------------
def test_split_stratified_external_whole_and_exclusions_counted(hn1_tables):
    from assets.studies.split import split_patients

    _, clinical = hn1_tables
    frame = clinical.select("patient_key", "center_id", pl.col("ln_metastasis").alias("label"))
    keys = frame["patient_key"].to_list()
    frame = frame.with_columns(
        pl.when(pl.col("patient_key").is_in(keys[:3]))
        .then(None)
        .otherwise(pl.col("label"))
        .alias("label"),
        (~pl.col("patient_key").is_in(keys[3:5])).alias("has_features"),
    )
    frame = pl.concat(
        [
            frame,
            pl.DataFrame(
                {
                    "patient_key": ["elsewhere"],
                    "center_id": ["C9"],
                    "label": [1],
                    "has_features": [True],
                }
            ),
        ],
        how="vertical_relaxed",
    )
    spec = parse_study(HN1_STUDY, "hn1.yaml")
    splits, excluded = split_patients(frame.sample(fraction=1.0, shuffle=True, seed=1), spec)
    assert excluded == {"no_label": 3, "no_features": 2, "center_not_in_study": 1}
    assert splits.height == frame.height - 6
    usable = frame.filter(
        pl.col("label").is_not_null() & pl.col("has_features") & (pl.col("center_id") != "C9")
    )
    external = usable.filter(pl.col("center_id").is_in(["C2", "C3"]))
    assert set(splits.filter(pl.col("cohort") == "external_validation")["patient_key"]) == set(
        external["patient_key"]
    )
    development = splits.filter(pl.col("center_id") == "C1")
    internal = development.filter(pl.col("cohort") == "internal_validation")
    assert internal.height == math.ceil(0.3 * development.height)
    # stratified: positives in internal validation are the rounded share of the development positives
    assert abs(internal["label"].sum() - 0.3 * development["label"].sum()) <= 1
    # input row order does not matter
    again, _ = split_patients(frame, spec)
    assert again.equals(splits)


# HN1 study -------------------------------------------------------------------------------
def test_hn1_study_aucs_plausible_and_every_ci_contains_its_estimate(hn1_result):
    metrics = hn1_result.metrics
    auc = metrics.filter(pl.col("metric") == "auc")
    assert set(auc["model"]) == {
        "logistic_regression",
        "svm",
        "random_forest",
        "decision_tree",
        "xgboost",
        "combined",
    }
    assert set(auc["cohort"]) == {
        "train",
        "internal_validation",
        "external_validation",
        "external_validation:C2",
        "external_validation:C3",
    }
    pooled = auc.filter(
        pl.col("cohort").is_in(["internal_validation", "external_validation"])
        & (pl.col("model") != "combined")
    )
    assert pooled["value"].is_between(0.5, 1.0).all(), pooled
    assert auc["value"].is_between(0.3, 1.0).all()
    with_ci = metrics.filter(
        pl.col("ci_low").is_not_null() & (pl.col("ci_method") != "delong_paired")
    )
    # 6 models x 5 cohorts x (7 bootstrap metrics + auc_delong + calibration slope and intercept),
    # less calibration slopes not estimable (separation), plus each model's random-effects AUC
    # pooled over the external centers
    not_estimable = metrics.filter(pl.col("ci_method") == "not_estimable_separation")
    assert set(not_estimable["ci_flag"]) <= {"not_estimable"}  # a row without an interval says why
    pooled_re = with_ci.filter(pl.col("metric") == "auc_pooled_random_effects")
    assert pooled_re.height == 6 and set(pooled_re["cohort"]) == {"external_validation"}
    assert with_ci.height == 6 * 5 * 10 - not_estimable.height + 6
    outside = with_ci.filter(
        (pl.col("ci_low") > pl.col("value") + 1e-12) | (pl.col("ci_high") < pl.col("value") - 1e-12)
    )
    assert outside.is_empty(), outside
    # zero-width intervals are flagged (e.g. a training AUC of 1: every resample gives 1)
    zero_width = with_ci.filter(pl.col("ci_high") - pl.col("ci_low") <= 1e-12)
    assert (zero_width["ci_flag"] == "degenerate_ci").all(), zero_width
    # both CI methods reported and labelled; DeLong test of combined vs best radiomics model
    assert set(metrics.filter(pl.col("metric") == "auc")["ci_method"]) == {"bootstrap_percentile"}
    assert set(metrics.filter(pl.col("metric") == "auc_delong")["ci_method"]) == {"delong"}
    comparison = metrics.filter(pl.col("model") == f"combined_vs_{hn1_result.best_model}")
    assert set(comparison["metric"]) == {"auc_difference", "delong_z", "delong_p"}
    assert comparison.filter(pl.col("metric") == "delong_p")["value"].is_between(0, 1).all()
    assert hn1_result.best_model_rule.startswith("highest cross-validated training AUC (nested")
    cv = metrics.filter((pl.col("metric") == "cv_auc") & (pl.col("model") != "combined"))
    assert hn1_result.best_model == cv.sort("value", descending=True)["model"][0]


def test_hn1_rerun_gives_identical_metrics_and_version(hn1_tables, hn1_result, tmp_path):
    from assets.studies.run import run_study

    features, clinical = hn1_tables
    spec = parse_study(HN1_STUDY, "hn1_lymph_nodes.yaml")
    # same data delivered in another row order
    again = run_study(
        spec,
        features.reverse(),
        clinical.reverse(),
        tmp_path,
        code_version_override="test",
        figures=False,
        write_report=False,
    )
    assert again.model_version == hn1_result.model_version
    assert again.metrics.equals(hn1_result.metrics)
    assert again.predictions.sort("model", "patient_key").equals(
        hn1_result.predictions.sort("model", "patient_key")
    )
    reseeded = parse_study({**HN1_STUDY, "split": {**HN1_STUDY["split"], "seed": 8}}, "x.yaml")
    from assets.studies.versioning import model_version

    assert (
        model_version(reseeded.resolved_yaml(), hn1_result.data_hashes, "test")
        != hn1_result.model_version
    )


def test_hn1_artifacts_versions_and_report(hn1_result):
    from assets.studies.store import load_fitted

    version_dir = hn1_result.artifact_dir
    assert (
        version_dir.name == hn1_result.model_version
        and version_dir.parent.name == "hn1_lymph_nodes"
    )
    for name in (
        "resolved.yaml",
        "hashes.json",
        "metrics.parquet",
        "predictions.parquet",
        "combined.joblib",
        "xgboost.joblib",
    ):
        assert (version_dir / name).is_file(), name
    assert pl.read_parquet(version_dir / "metrics.parquet").equals(hn1_result.metrics)
    fitted, combined = load_fitted(version_dir)
    assert set(fitted) == set(hn1_result.fitted) and combined is not None
    row = hn1_result.model_versions_row
    assert row.columns == [
        "study",
        "model_version",
        "trained_at",
        "data_version",
        "code_version",
        "params",
        "artifact_path",
    ]
    assert row["artifact_path"][0] == f"models/hn1_lymph_nodes/{hn1_result.model_version}"
    for name in (
        "roc",
        "calibration",
        "decision_curve",
        "nomogram",
        "explain_xgboost",
        "explain_logistic_regression",
    ):
        assert hn1_result.figures[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    html = hn1_result.report_path.read_text()
    assert html.count("data:image/png;base64,") == len(hn1_result.figures)
    assert "DeLong" in html and hn1_result.best_model in html
    splits = hn1_result.splits
    assert splits.columns[:4] == ["study", "patient_key", "center_id", "cohort"]
    assert set(splits["cohort"]) == {"train", "internal_validation", "external_validation"}
    assert hn1_result.excluded == {
        "no_label": 0,
        "no_features": 0,
        "center_not_in_study": 0,
        "no_clinical_row": 0,
    }


def test_hn1_nomogram_reproduces_the_combined_model(hn1_result, hn1_tables):
    from assets.studies.combined import nomogram_probability, total_points

    combined, nomogram = hn1_result.combined, hn1_result.nomogram
    predictions = hn1_result.predictions.filter(pl.col("model") == "combined")
    _, clinical = hn1_tables
    frame = clinical.to_pandas().set_index("patient_key").loc[predictions["patient_key"].to_list()]
    best = hn1_result.fitted[hn1_result.best_model]
    # radiomics score as the combined model saw it: out-of-fold for training patients
    probability = hn1_result.predictions.filter(pl.col("model") == best.name).sort("patient_key")
    by_key = dict(zip(probability["patient_key"], probability["probability"], strict=True))
    by_key |= {
        k: v
        for k, v in zip(probability["patient_key"], probability["oof_probability"], strict=True)
        if v is not None
    }
    p = np.clip([by_key[k] for k in predictions["patient_key"]], 1e-6, 1 - 1e-6)
    frame["radiomics_score"] = np.log(p / (1 - p))
    assert np.allclose(
        nomogram_probability(nomogram, total_points(nomogram, frame)),
        predictions["probability"].to_numpy(),
        atol=1e-9,
    )
    assert np.allclose(
        combined.predict_probability(frame), predictions["probability"].to_numpy(), atol=1e-12
    )
    # the predictor with the largest effect spans exactly 0-100 points
    effects = [abs(b) * (hi - lo) for b, lo, hi in nomogram.numeric.values()]
    effects += [max(v.values()) - min(v.values()) for v in nomogram.categorical.values()]
    assert (
        max(effects) == pytest.approx(nomogram.scale)
        and nomogram.points["points"].is_between(-1e-9, 100 + 1e-9).all()
    )


def test_xgboost_shap_adds_up_to_xgboost_margin(hn1_result, hn1_tables):
    from xgboost import DMatrix

    from assets.studies.explain import transformed_inputs, xgboost_shap

    features, _ = hn1_tables
    train_keys = hn1_result.splits.filter(pl.col("cohort") == "train")["patient_key"].to_list()
    X = features.to_pandas().set_index("patient_key").loc[train_keys]
    pipeline = hn1_result.fitted["xgboost"].pipeline
    shap, bias, _, names = xgboost_shap(pipeline, X)
    values, _ = transformed_inputs(pipeline, X)
    margin = (
        pipeline.named_steps["model"].get_booster().predict(DMatrix(values), output_margin=True)
    )
    assert np.allclose(shap.sum(axis=1) + bias, margin, atol=1e-4)
    table = hn1_result.explanations["xgboost"].importance
    assert table["method"][0] == "shap_pred_contribs" and table["feature"].to_list()[0] in names
    assert np.allclose(
        table["importance"].to_numpy(), np.sort(np.abs(shap).mean(axis=0))[::-1], atol=1e-6
    )


def test_changing_validation_patients_changes_nothing_in_the_fitted_pipeline(
    hn1_tables, hn1_result
):
    from assets.studies.data import assemble_study_data
    from assets.studies.pipeline import fit_models
    from assets.studies.split import split_patients

    features, clinical = hn1_tables
    spec = parse_study({**HN1_STUDY, "models": ["logistic_regression", "xgboost"]}, "leak.yaml")
    validation = hn1_result.splits.filter(pl.col("cohort") != "train")["patient_key"].to_list()
    feature_columns = [c for c in features.columns if c != "patient_key"]
    rng = np.random.default_rng(0)
    changed = features.with_columns(
        [
            pl.when(pl.col("patient_key").is_in(validation))
            .then(pl.col(c) * 10 + float(rng.normal()))
            .otherwise(pl.col(c))
            .alias(c)
            for c in feature_columns
        ]
    )
    data = assemble_study_data(spec, changed, clinical)
    splits, _ = split_patients(data.split_input, spec)
    assert splits.equals(hn1_result.splits)
    train_keys = splits.filter(pl.col("cohort") == "train")["patient_key"].to_list()
    X_train = data.X(train_keys)
    refit = fit_models(
        spec, X_train, splits.filter(pl.col("cohort") == "train")["label"].to_numpy()
    )
    for name, model in refit.items():
        before = hn1_result.fitted[name]
        assert model.selected_features == before.selected_features
        assert model.best_params == before.best_params and model.threshold == before.threshold
        for step in ("impute", "scale"):
            for attribute in ("statistics_", "mean_", "scale_"):
                if hasattr(model.pipeline.named_steps[step], attribute):
                    assert np.array_equal(
                        getattr(model.pipeline.named_steps[step], attribute),
                        getattr(before.pipeline.named_steps[step], attribute),
                    )
        assert np.array_equal(
            model.predict_probability(X_train), before.predict_probability(X_train)
        )
        # while the validation patients' own predictions do change
        original = features.to_pandas().set_index("patient_key").loc[validation]
        assert not np.array_equal(
            model.predict_probability(data.X(validation)), before.predict_probability(original)
        )
    assert np.array_equal(
        refit["logistic_regression"].pipeline.named_steps["model"].coef_,
        hn1_result.fitted["logistic_regression"].pipeline.named_steps["model"].coef_,
    )


# breast cancer: AUC equals plain scikit-learn ---------------------------------------------
def _plain_sklearn_pipeline(k: int = 10):
    """The study's univariate logistic pipeline from plain scikit-learn (+ a greedy |r| filter)."""
    from sklearn.base import BaseEstimator, TransformerMixin
    from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_classif
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    class GreedyCorrelationFilter(TransformerMixin, BaseEstimator):
        """Independent re-implementation: keep a column unless |r| > t with an earlier kept one."""

        def __init__(self, threshold=0.9):
            self.threshold = threshold

        def fit(self, X, y=None):
            corr = pd.DataFrame(X).corr().abs().to_numpy()
            kept: list[int] = []
            for j in range(corr.shape[0]):
                if all(corr[j, k] <= self.threshold for k in kept):
                    kept.append(j)
            self.kept_ = kept
            return self

        def transform(self, X):
            return np.asarray(X)[:, self.kept_]

    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("variance", VarianceThreshold(0.0)),
            ("scale", StandardScaler()),
            ("correlation", GreedyCorrelationFilter(0.9)),
            ("select", SelectKBest(f_classif, k=k)),
            ("model", LogisticRegression(max_iter=5000)),
        ]
    )


WDBC_STUDY = {  # scikit-learn's breast cancer data, two centers
    "name": "wdbc",
    "label": "malignant",
    "features": {"external": {"feature_set": "wdbc"}},
    "split": {
        "development_centers": ["C1"],
        "internal_validation_fraction": 0.3,
        "external_validation_centers": ["C2"],
        "seed": 3,
    },
    "selection": {
        "variance_min": 0.0,
        "max_correlation": 0.9,
        "method": "univariate",
        "n_features": 10,
    },
    "models": ["logistic_regression"],
    "bootstrap": 200,
}


def test_breast_cancer_logistic_auc_equals_plain_sklearn(tmp_path):
    from sklearn.datasets import load_breast_cancer
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from assets.studies.metrics import youden_threshold
    from assets.studies.run import run_study

    data = load_breast_cancer(as_frame=True)
    X = data.data
    keys = [f"bc{i:03d}" for i in range(len(X))]
    centers = ["C2" if i % 4 == 0 else "C1" for i in range(len(X))]
    features = pl.from_pandas(X).with_columns(pl.Series("patient_key", keys))
    clinical = pl.DataFrame(
        {"patient_key": keys, "center_id": centers, "malignant": (1 - data.target).tolist()}
    )
    spec = parse_study(WDBC_STUDY, "wdbc.yaml")
    result = run_study(
        spec, features, clinical, tmp_path, code_version_override="test", write_report=False
    )

    pipeline = _plain_sklearn_pipeline(10)
    # the same split (from study_splits), patients in the same (patient_key) order
    splits = result.splits
    frame = X.assign(patient_key=keys, label=(1 - data.target).to_numpy()).set_index("patient_key")
    train = frame.loc[splits.filter(pl.col("cohort") == "train")["patient_key"].to_list()]
    search = GridSearchCV(
        pipeline,
        {"model__C": [0.01, 0.1, 1.0]},
        scoring="roc_auc",
        cv=StratifiedKFold(5, shuffle=True, random_state=3),
    )
    search.fit(train[X.columns], train["label"])
    assert search.best_params_["model__C"] == result.fitted["logistic_regression"].best_params["C"]
    metrics = result.metrics.filter(
        (pl.col("model") == "logistic_regression") & (pl.col("metric") == "auc")
    )
    for cohort in ("train", "internal_validation", "external_validation"):
        part = frame.loc[splits.filter(pl.col("cohort") == cohort)["patient_key"].to_list()]
        expected = roc_auc_score(part["label"], search.predict_proba(part[X.columns])[:, 1])
        observed = metrics.filter(pl.col("cohort") == cohort)["value"][0]
        assert abs(observed - expected) <= 1e-9, (cohort, observed, expected)

    # nested CV: the out-of-fold probabilities and cv_auc equal scikit-learn's nested CV
    # (a GridSearchCV re-run inside every outer fold of cross_val_predict)
    from sklearn.model_selection import cross_val_predict

    outer = StratifiedKFold(5, shuffle=True, random_state=3)
    inner = StratifiedKFold(3, shuffle=True, random_state=3)  # validation.inner_cv_folds: 3
    nested = GridSearchCV(
        _plain_sklearn_pipeline(10), {"model__C": [0.01, 0.1, 1.0]}, scoring="roc_auc", cv=inner
    )
    oof = cross_val_predict(
        nested, train[X.columns], train["label"], cv=outer, method="predict_proba"
    )
    logistic = result.fitted["logistic_regression"]
    np.testing.assert_allclose(logistic.oof_probability, oof[:, 1], rtol=0, atol=1e-9)
    fold_aucs = [
        roc_auc_score(train["label"].iloc[test], oof[test, 1])
        for _, test in outer.split(train[X.columns], train["label"])
    ]
    assert abs(logistic.cv_auc - np.mean(fold_aucs)) <= 1e-9
    assert logistic.nested and logistic.threshold == youden_threshold(train["label"], oof[:, 1])


# small cohorts: fewer folds, or a clear error ----------------------------------------------
PILOT_STUDY = {
    **WDBC_STUDY,
    "name": "pilot",
    # compared below with scikit-learn's non-nested GridSearchCV / cross_val_predict
    "validation": {"nested_cv": False},
    "selection": {**WDBC_STUDY["selection"], "n_features": 5},
    "models": ["logistic_regression", "svm"],
    "bootstrap": 50,
}


def _pilot_cohort(development_positives: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """36 breast-cancer patients (the demo's size): 25 in C1 with ``development_positives``
    malignant, 11 in C2 with 5 malignant."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    malignant = 1 - data.target.to_numpy()
    pos, neg = np.flatnonzero(malignant == 1), np.flatnonzero(malignant == 0)
    rows = [*pos[:development_positives], *neg[: 25 - development_positives]]
    rows += [*pos[50:55], *neg[50:56]]
    keys = [f"bc{i:03d}" for i in rows]
    features = pl.from_pandas(data.data.iloc[rows].reset_index(drop=True)).with_columns(
        pl.Series("patient_key", keys)
    )
    clinical = pl.DataFrame(
        {
            "patient_key": keys,
            "center_id": ["C1"] * 25 + ["C2"] * 11,
            "malignant": malignant[rows].tolist(),
        }
    )
    return features, clinical


def test_small_cohort_trains_with_reduced_folds_equal_to_plain_sklearn(tmp_path, caplog):
    """4 positives in training: 4-fold CV (noted, logged); the logistic AUCs and the SVM's nested
    Platt calibration equal plain scikit-learn with the same folds."""
    import json
    import logging

    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
    from sklearn.svm import SVC

    from assets.studies.run import run_study

    features, clinical = _pilot_cohort(6)
    spec = parse_study(PILOT_STUDY, "pilot.yaml")
    with caplog.at_level(logging.WARNING, logger="assets.studies.pipeline"):
        result = run_study(
            spec,
            features,
            clinical,
            tmp_path,
            code_version_override="test",
            write_report=False,
            figures=False,
        )
    splits = result.splits
    train_keys = splits.filter(pl.col("cohort") == "train")["patient_key"].to_list()
    frame = features.to_pandas().set_index("patient_key")
    frame["label"] = dict(zip(clinical["patient_key"], clinical["malignant"], strict=True))
    columns = [c for c in frame.columns if c != "label"]
    train = frame.loc[train_keys]
    assert (len(train), int(train["label"].sum())) == (17, 4)

    note = "pilot: 5-fold CV reduced to 4-fold: the training cohort has 4 positives"
    assert {m.cv_folds for m in result.fitted.values()} == {4}
    assert [n for n in result.notes if n.startswith(note)] == [result.fitted["svm"].cv_note]
    summary = json.loads((result.artifact_dir / "summary.json").read_text())
    assert any(n.startswith(note) for n in summary["notes"])
    assert note in caplog.text
    params = json.loads(result.model_versions_row["params"][0])
    assert params["models"]["logistic_regression"]["cv_folds"] == 4
    assert params["spec"]["cv_folds"] == 5

    # logistic regression: plain scikit-learn, StratifiedKFold(4) with the study seed
    folds = StratifiedKFold(4, shuffle=True, random_state=3)
    search = GridSearchCV(
        _plain_sklearn_pipeline(5), {"model__C": [0.01, 0.1, 1.0]}, scoring="roc_auc", cv=folds
    )
    search.fit(train[columns], train["label"])
    logistic = result.fitted["logistic_regression"]
    assert logistic.best_params["C"] == search.best_params_["model__C"]
    assert abs(logistic.cv_auc - search.best_score_) <= 1e-9
    best = clone(search.estimator).set_params(**search.best_params_)
    oof = cross_val_predict(best, train[columns], train["label"], cv=folds, method="predict_proba")
    np.testing.assert_allclose(logistic.oof_probability, oof[:, 1], rtol=0, atol=1e-9)
    auc = result.metrics.filter(
        (pl.col("model") == "logistic_regression") & (pl.col("metric") == "auc")
    )
    for cohort in ("train", "internal_validation", "external_validation"):
        part = frame.loc[splits.filter(pl.col("cohort") == cohort)["patient_key"].to_list()]
        expected = roc_auc_score(part["label"], search.predict_proba(part[columns])[:, 1])
        observed = auc.filter(pl.col("cohort") == cohort)["value"][0]
        assert abs(observed - expected) <= 1e-9, (cohort, observed, expected)

    # SVM (the model that crashed): each outer training fold holds 3 positives, so its Platt
    # calibration is cross-validated with StratifiedKFold(3) there, StratifiedKFold(4) on all
    svm = result.fitted["svm"]

    def calibrated(n_splits: int):
        model = SVC(kernel="rbf", C=svm.best_params["C"], gamma="scale")
        inner = StratifiedKFold(n_splits, shuffle=True, random_state=3)
        return _plain_sklearn_pipeline(5).set_params(
            model=CalibratedClassifierCV(model, method="sigmoid", ensemble=False, cv=inner)
        )

    X_train, y_train = train[columns], train["label"].to_numpy()
    expected_oof = np.empty(len(train))
    for fit_rows, test_rows in folds.split(X_train, y_train):
        assert y_train[fit_rows].sum() == 3
        model = calibrated(3).fit(X_train.iloc[fit_rows], y_train[fit_rows])
        expected_oof[test_rows] = model.predict_proba(X_train.iloc[test_rows])[:, 1]
    np.testing.assert_allclose(svm.oof_probability, expected_oof, rtol=0, atol=1e-9)
    external = frame.loc[
        splits.filter(pl.col("cohort") == "external_validation")["patient_key"].to_list()
    ]
    np.testing.assert_allclose(
        svm.predict_probability(external[columns]),
        calibrated(4).fit(X_train, y_train).predict_proba(external[columns])[:, 1],
        rtol=0,
        atol=1e-9,
    )


def test_too_few_patients_of_a_class_is_a_clear_study_data_error(tmp_path):
    from assets.studies.data import prepare_study
    from assets.studies.run import run_study
    from assets.studies.split import StudyDataError, split_patients

    spec = parse_study(PILOT_STUDY, "pilot.yaml")
    # 2 malignant in C1: the stratified split works, the training cohort gets 1 of them
    features, clinical = _pilot_cohort(2)
    _, splits, _ = prepare_study(spec, features, clinical)
    train = splits.filter(pl.col("cohort") == "train")
    assert (train.height, train["label"].sum()) == (17, 1)
    with pytest.raises(StudyDataError) as error:
        run_study(spec, features, clinical, tmp_path, write_report=False, figures=False)
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    for words in (
        "study pilot: the training cohort (development center(s) C1",
        "has 16 patient(s) with malignant=0 and 1 with malignant=1",
        "needs at least 2 patients of each class in training",
        "add patients",
        "more split.development_centers",
        "split.internal_validation_fraction: 0",
    ):
        assert words in message, message
    assert "Requesting" not in message and not (tmp_path / "models" / "pilot").exists()

    # 3 malignant in C1 (2 in training): 2-fold CV for logistic regression, but the SVM's
    # calibration inside each fold would see one positive: a clear error names svm
    features, clinical = _pilot_cohort(3)
    with pytest.raises(StudyDataError, match="remove svm from models") as error:
        run_study(spec, features, clinical, tmp_path, write_report=False, figures=False)
    assert "15 patient(s) with malignant=0 and 2 with malignant=1" in str(error.value)
    assert "the svm model needs at least 3 of each class" in str(error.value)
    logistic = parse_study({**PILOT_STUDY, "models": ["logistic_regression"]}, "pilot.yaml")
    result = run_study(logistic, features, clinical, tmp_path, write_report=False, figures=False)
    assert result.fitted["logistic_regression"].cv_folds == 2
    assert any("5-fold CV reduced to 2-fold" in n for n in result.notes)

    # 1 malignant in C1: no stratified split at all (not scikit-learn's error)
    features, clinical = _pilot_cohort(1)
    frame = clinical.rename({"malignant": "label"})
    with pytest.raises(StudyDataError) as error:
        split_patients(frame, spec)
    for words in (
        "study pilot: development center(s) C1 have 25 usable patient(s)",
        "24 with malignant=0 and 1 with malignant=1",
        "internal_validation_fraction: 0",
    ):
        assert words in str(error.value), str(error.value)
    # without internal validation all 25 train: 1 positive is still too few to cross-validate
    no_internal = parse_study(
        {**PILOT_STUDY, "split": {**PILOT_STUDY["split"], "internal_validation_fraction": 0}},
        "pilot.yaml",
    )
    with pytest.raises(StudyDataError, match="24 patient.s. with malignant=0 and 1 with") as error:
        run_study(no_internal, features, clinical, tmp_path, write_report=False, figures=False)
    assert "internal_validation_fraction: 0" not in str(error.value)


def test_cv_folds_key_caps_the_folds():
    from assets.studies.pipeline import training_cv

    spec = parse_study(PILOT_STUDY, "pilot.yaml")
    assert spec.cv_folds == 5 and "cv_folds: 5" in spec.resolved_yaml()
    y = np.array([0] * 20 + [1] * 10)
    assert (training_cv(spec, y).n_splits, training_cv(spec, y).note) == (5, None)
    three = parse_study({**PILOT_STUDY, "cv_folds": 3}, "pilot.yaml")
    assert (training_cv(three, y).n_splits, training_cv(three, y).note) == (3, None)
    # fewer negatives than folds: the note says so
    plan = training_cv(spec, 1 - np.array([0] * 20 + [1] * 4))
    assert plan.n_splits == 4 and plan.counts == (4, 20)
    assert plan.note.startswith(
        "pilot: 5-fold CV reduced to 4-fold: the training cohort has 4 negatives"
    )
    with pytest.raises(StudySpecError, match="only allowed in a classification study"):
        parse_study(
            {
                "name": "x",
                "split": {"development_centers": ["C1"]},
                "cv_folds": 3,
                "survival": [{"endpoint": "os", "time": "t", "event": "e"}],
            },
            "x.yaml",
        )


def test_models_asset_fails_with_the_study_data_error(lake):
    """A pilot cohort with one positive in training: the Dagster asset fails with the message."""
    import dagster as dg

    from assets.studies.defs import build_study_defs
    from dagster_project.resources import LakeResource

    features, clinical = _pilot_cohort(2)
    # keyed like real patient keys (32 hex digits): study_splits is audited before it is published
    keyed = pl.col("patient_key").map_elements(
        lambda k: hashlib.md5(k.encode()).hexdigest(), return_dtype=pl.String
    )
    features, clinical = features.with_columns(keyed), clinical.with_columns(keyed)
    long = (
        features.unpivot(index="patient_key", variable_name="feature", value_name="value")
        .join(clinical.select("patient_key", "center_id"), on="patient_key")
        .with_columns(
            pl.col("patient_key").alias("case_id"),
            pl.lit("wdbc").alias("feature_set"),
            pl.lit("features/wdbc.csv").alias("source_file"),
        )
    )
    lake.write_table("external_features", long)
    lake.write_table("clinical", clinical)
    (lake.studies_dir / "pilot.yaml").write_text(yaml.safe_dump(PILOT_STUDY))
    defs = build_study_defs(lake.studies_dir)
    wanted = {"pilot/study_splits", "pilot/models"}
    assets = [a for a in defs.assets if a.key.to_user_string() in wanted]
    run = dg.materialize(
        assets, resources={"lake": LakeResource(home=str(lake.home))}, raise_on_error=False
    )
    assert not run.success
    (failure,) = run.get_step_failure_events()
    assert failure.step_key == "pilot__models"
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith("study pilot: the training cohort (development center(s) C1")
    assert "1 with malignant=1" in description and "internal_validation_fraction: 0" in description


# DeLong and bootstrap against a published worked example ----------------------------------
# Hanley & McNeil, Radiology 1982;143:29-36, Table 1: ratings 1 (definitely normal) .. 5
# (definitely abnormal) of 109 CT images; published area 0.893 with standard error 0.032.
HM_NORMAL = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
HM_ABNORMAL = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])


def _delong_by_definition(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """DeLong, DeLong & Clarke-Pearson (1988) directly: AUCs and the covariance matrix S."""
    aucs, v10s, v01s = [], [], []
    for s in scores:
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    m, n = len(v10s[0]), len(v01s[0])
    s10 = np.atleast_2d(np.cov(np.vstack(v10s), ddof=1))
    s01 = np.atleast_2d(np.cov(np.vstack(v01s), ddof=1))
    return np.array(aucs), s10 / m + s01 / n


def test_delong_on_hanley_mcneil_worked_example():
    from assets.studies.metrics import auc_score, delong_ci, delong_variance

    y = np.concatenate([np.zeros(len(HM_NORMAL)), np.ones(len(HM_ABNORMAL))]).astype(int)
    ratings = np.concatenate([HM_NORMAL, HM_ABNORMAL]).astype(float)
    assert round(auc_score(y, ratings), 3) == 0.893
    # the published SE is Hanley & McNeil's formula (their eq. 2): it reproduces 0.032
    a, n1, n0 = auc_score(y, ratings), 51, 58
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se_hm = math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0))
    assert round(se_hm, 3) == 0.032
    aucs, covariance = _delong_by_definition(y, [ratings])
    auc, variance = delong_variance(y, ratings)
    assert auc == pytest.approx(aucs[0], abs=1e-12)
    assert variance == pytest.approx(covariance[0, 0], rel=1e-12)
    # DeLong's nonparametric SE estimates the same quantity as the published 0.032
    assert math.sqrt(variance) == pytest.approx(0.032, abs=0.0015)
    _, low, high, se = delong_ci(y, ratings)
    assert (low, high) == pytest.approx((auc - 1.959964 * se, auc + 1.959964 * se), abs=1e-6)


def test_stratified_bootstrap_ci_on_hanley_mcneil_example():
    from assets.studies.metrics import bootstrap_metrics, delong_ci, percentile_ci, resample_counts

    y = np.concatenate([np.zeros(len(HM_NORMAL)), np.ones(len(HM_ABNORMAL))]).astype(int)
    ratings = np.concatenate([HM_NORMAL, HM_ABNORMAL]).astype(float)
    counts = resample_counts(y, 2000, [20240101])
    assert (counts.positives.sum(axis=1) == 51).all() and (counts.negatives.sum(axis=1) == 58).all()
    boot = bootstrap_metrics(y, ratings, 3.0, counts)["auc"]
    auc, low, high, se = delong_ci(y, ratings)
    # bootstrap SE and percentile CI agree with the DeLong/published SE (0.032) to sampling error
    assert boot.std(ddof=1) == pytest.approx(se, rel=0.1)
    boot_low, boot_high = percentile_ci(boot)
    assert boot_low < auc < boot_high
    assert (boot_low, boot_high) == pytest.approx((low, high), abs=0.015)


def test_delong_test_equals_definition_on_real_predictions(hn1_result):
    from assets.studies.metrics import delong_test

    predictions = hn1_result.predictions.filter(pl.col("cohort") == "external_validation")
    a = predictions.filter(pl.col("model") == "logistic_regression").sort("patient_key")
    b = predictions.filter(pl.col("model") == "random_forest").sort("patient_key")
    y = a["label"].to_numpy().astype(int)
    pa, pb = a["probability"].to_numpy(), b["probability"].to_numpy()
    aucs, s = _delong_by_definition(y, [pa, pb])
    z_expected = (aucs[1] - aucs[0]) / math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    test = delong_test(y, pa, pb)
    assert test["z"] == pytest.approx(z_expected, rel=1e-10)
    from scipy.stats import norm

    assert test["p_value"] == pytest.approx(2 * norm.sf(abs(z_expected)), rel=1e-9)


def test_bootstrap_resamples_match_sklearn_metrics():
    from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

    from assets.studies.metrics import bootstrap_metrics, resample_counts

    rng = np.random.default_rng(5)
    y = (rng.random(90) < 0.4).astype(int)
    p = np.round(np.clip(0.3 * y + rng.random(90) * 0.7, 0, 1), 2)  # rounded: ties on purpose
    counts = resample_counts(y, 25, [1])
    boot = bootstrap_metrics(y, p, 0.5, counts)
    pos, neg = p[y == 1], p[y == 0]
    for b in range(25):
        ps = np.concatenate(
            [np.repeat(pos, counts.positives[b]), np.repeat(neg, counts.negatives[b])]
        )
        ys = np.concatenate(
            [np.ones(counts.positives[b].sum()), np.zeros(counts.negatives[b].sum())]
        )
        tn, fp, fn, tp = confusion_matrix(ys, ps >= 0.5, labels=[0, 1]).ravel()
        assert boot["auc"][b] == pytest.approx(roc_auc_score(ys, ps), abs=1e-12)
        assert boot["brier"][b] == pytest.approx(brier_score_loss(ys, ps), abs=1e-12)
        assert boot["sensitivity"][b] == pytest.approx(tp / (tp + fn), abs=1e-12)
        assert boot["specificity"][b] == pytest.approx(tn / (tn + fp), abs=1e-12)
        assert boot["ppv"][b] == pytest.approx(tp / (tp + fp), abs=1e-12)


# calibration and decision curves ----------------------------------------------------------
def test_calibration_and_decision_curves_against_independent_computations():
    from scipy.stats import chi2
    from sklearn.linear_model import LogisticRegression

    from assets.studies.calibration import (
        calibration_slope_intercept,
        decision_curve,
        hosmer_lemeshow,
    )

    rng = np.random.default_rng(11)
    p = rng.beta(2, 3, size=400)
    y = (rng.random(400) < np.clip(1.3 * p - 0.1, 0, 1)).astype(int)
    logit = np.log(p / (1 - p))
    fit = calibration_slope_intercept(y, p)
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(logit[:, None], y)
    assert fit["slope"] == pytest.approx(reference.coef_[0, 0], abs=1e-5)
    # calibration-in-the-large of a constant prediction p0 is logit(mean y) - logit(p0)
    constant = calibration_slope_intercept(y, np.full(400, 0.3))
    assert constant["intercept"] == pytest.approx(
        math.log(y.mean() / (1 - y.mean())) - math.log(0.3 / 0.7), abs=1e-9
    )
    # Hosmer-Lemeshow as R ResourceSelection::hoslem.test, recomputed with pandas
    groups = pd.cut(p, np.quantile(p, np.linspace(0, 1, 11)), include_lowest=True)
    table = (
        pd.DataFrame({"g": groups, "y": y, "p": p})
        .groupby("g", observed=True)
        .agg(o=("y", "sum"), e=("p", "sum"), n=("y", "size"))
    )
    statistic = (
        ((table.o - table.e) ** 2) / table.e + ((table.o - table.e) ** 2) / (table.n - table.e)
    ).sum()
    hl = hosmer_lemeshow(y, p)
    assert hl["statistic"] == pytest.approx(statistic, rel=1e-10)
    assert (hl["df"], hl["p_value"]) == (8.0, pytest.approx(chi2.sf(statistic, 8), rel=1e-10))
    # decision curve: treat-all closed form; model net benefit from a direct count
    dca = decision_curve(y, p)
    prevalence = y.mean()
    pt = dca["threshold"].to_numpy()
    assert np.allclose(
        dca["treat_all"].to_numpy(), prevalence - (1 - prevalence) * pt / (1 - pt), atol=1e-12
    )
    for threshold in (0.1, 0.35, 0.6):
        row = dca.filter(pl.col("threshold") == threshold)
        tp, fp = int(((p >= threshold) & (y == 1)).sum()), int(((p >= threshold) & (y == 0)).sum())
        assert row["net_benefit"][0] == pytest.approx(
            tp / 400 - fp / 400 * threshold / (1 - threshold), abs=1e-12
        )
    # treating everyone (p = 1) is the treat-all curve
    assert np.allclose(
        decision_curve(y, np.ones(400))["net_benefit"].to_numpy(), dca["treat_all"].to_numpy()
    )


def test_selectors_mrmr_and_univariate_on_breast_cancer():
    from sklearn.datasets import load_breast_cancer
    from sklearn.feature_selection import SelectKBest, f_classif

    from assets.studies.transformers import (
        CorrelationFilter,
        LassoSelector,
        MRMRSelector,
        UnivariateSelector,
    )

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    assert np.array_equal(
        UnivariateSelector(k=7).fit(X, y).get_support(),
        SelectKBest(f_classif, k=7).fit(X, y).get_support(),
    )
    assert UnivariateSelector(k=99).fit(X, y).get_support().all()
    mrmr = MRMRSelector(k=5, random_state=0).fit(X, y)
    assert mrmr.get_support().sum() == 5 and mrmr.selected_order_[0] == int(
        np.argmax(mrmr.relevance_)
    )
    kept = CorrelationFilter(0.9).fit(X).get_support()
    corr = np.abs(np.corrcoef(X[:, kept], rowvar=False))
    assert (corr[np.triu_indices(kept.sum(), 1)] <= 0.9).all()
    lasso = LassoSelector(random_state=0).fit(X, y)
    assert 0 < lasso.get_support().sum() < X.shape[1] and not lasso.fallback_


# the Dagster layer ------------------------------------------------------------------------
def test_dagster_study_families_materialize_into_the_lake(lake, hn1_tables):
    """HN1 (classification) and lifelines' rossi (survival-only) studies through real Dagster runs.

    Reference for the survival path: R ``coxph(Surv(week, arrest) ~ fin + age + race + wexp +
    mar + paro + prio, data = rossi)`` gives coef(fin) = -0.379422 (Fox & Weisberg appendix).
    """
    import dagster as dg
    from lifelines.datasets import load_rossi

    from assets.studies.defs import build_study_defs
    from dagster_project.resources import LakeResource

    features, clinical = hn1_tables
    centers = clinical.select("patient_key", "center_id")
    long = (
        features.unpivot(index="patient_key", variable_name="feature", value_name="value")
        .join(centers, on="patient_key")
        .with_columns(
            pl.col("patient_key").alias("case_id"),
            pl.lit("hn1").alias("feature_set"),
            pl.lit("features/hn1.csv").alias("source_file"),
        )
    )
    lake.write_table("external_features", long)
    rossi = pl.from_pandas(load_rossi()).with_columns(
        # keyed like real patient keys: study_splits is audited before it is published
        pl.format("rossi{}", pl.int_range(pl.len()))
        .map_elements(lambda k: hashlib.md5(k.encode()).hexdigest(), return_dtype=pl.String)
        .alias("patient_key"),
        pl.lit("R1").alias("center_id"),
    )
    lake.write_table("clinical", pl.concat([clinical, rossi], how="diagonal_relaxed"))
    hn1 = {**HN1_STUDY, "models": ["logistic_regression", "decision_tree"], "bootstrap": 100}
    (lake.studies_dir / "hn1.yaml").write_text(yaml.safe_dump(hn1))
    rossi_study = {
        "name": "rossi_recidivism",
        "split": {"development_centers": ["R1"], "internal_validation_fraction": 0},
        "bootstrap": 100,
        "survival": [
            {
                "endpoint": "arrest",
                "time": "week",
                "event": "arrest",
                "groups": "fin",
                "cox_terms": ["fin", "age", "race", "wexp", "mar", "paro", "prio"],
                "times": [26, 52],
            }
        ],
    }
    (lake.studies_dir / "rossi.yaml").write_text(yaml.safe_dump(rossi_study))
    (lake.studies_dir / "broken.yaml").write_text(
        "name: broken\nlabel: y\nsplit: {development_centers: [C1]}\nmodels: [xgb]\n"
    )

    defs = build_study_defs(lake.studies_dir)
    keys = {a.key.to_user_string() for a in defs.assets}
    family = [
        "study_splits",
        "models",
        "model_metrics",
        "explanations",
        "calibration",
        "decision_curves",
        "report",
    ]
    paper = ["table_one", "patient_flow", "reporting_checklist", "study_references"]
    assert keys == {f"hn1_lymph_nodes/{leaf}" for leaf in [*family, *paper, "model_card"]} | {
        "rossi_recidivism/study_splits",
        "rossi_recidivism/survival_results",
        "rossi_recidivism/report",
        "broken/invalid_study",
    } | {f"rossi_recidivism/{leaf}" for leaf in paper}
    valid = [a for a in defs.assets if a.key.path[0] != "broken"]
    run = dg.materialize(valid, resources={"lake": LakeResource(home=str(lake.home))})
    assert run.success
    broken = dg.materialize(
        [a for a in defs.assets if a.key.path[0] == "broken"], raise_on_error=False
    )
    assert not broken.success

    splits = lake.read_table("study_splits")
    assert set(splits["study"]) == {"hn1_lymph_nodes", "rossi_recidivism"}
    assert splits.filter(pl.col("study") == "rossi_recidivism").height == 432
    versions = lake.read_table("model_versions")
    version = versions["model_version"][0]
    metrics = lake.read_table("model_metrics")
    assert set(metrics["model_version"]) == {version}
    auc = metrics.filter(pl.col("metric") == "auc")
    assert auc["value"].is_between(0.3, 1.0).all() and set(auc["model"]) == {
        "logistic_regression",
        "decision_tree",
        "combined",
    }
    assert metrics.filter(pl.col("metric") == "calibration_slope").height == 3 * 5
    survival = lake.read_table("survival_results")
    cox = survival.filter(
        (pl.col("analysis") == "cox_multivariable")
        & (pl.col("term") == "fin")
        & (pl.col("cohort") == "train")
    )
    assert cox["estimate"][0] == pytest.approx(math.exp(-0.379422), rel=1e-5)
    for study in ("hn1_lymph_nodes", "rossi_recidivism"):
        html = (lake.reports_dir / study / "report.html").read_text()
        assert "<table>" in html and "data:image/png;base64," in html


def test_best_model_is_chosen_by_cross_validated_auc_only():
    from assets.studies.pipeline import FittedModel, select_best_model

    fitted = {
        n: FittedModel(n, None, {}, cv, 0.01, 0.5, np.array([]), nested=True)
        for n, cv in (("svm", 0.71), ("xgboost", 0.74))
    }
    base = {
        "name": "b",
        "label": "y",
        "features": {"radiomics": {"params_id": "ct"}},
        "models": ["svm", "xgboost"],
        "split": {"development_centers": ["C1"]},
    }
    spec = parse_study(base, "b.yaml")
    # validation-cohort metrics are never looked at (an empty frame is enough)
    assert select_best_model(None, fitted, spec) == (
        "xgboost",
        "highest cross-validated training AUC (nested CV: tuning repeated inside every outer fold)",
    )
    for cohort in ("internal_validation", "external_validation", "train"):
        with pytest.raises(StudySpecError) as error:
            parse_study({**base, "best_model": {"cohort": cohort}}, "b.yaml")
        message = str(error.value)
        assert message.startswith("b.yaml: best_model.cohort:") and "training only" in message


def test_combined_threshold_and_training_survival_labels_are_out_of_fold(hn1_result, hn1_tables):
    """Issue 15: no threshold from apparent training predictions; training-cohort survival
    groups by predicted label use the out-of-fold labels."""
    from assets.studies.metrics import youden_threshold
    from assets.studies.store import survival_frame

    predictions = hn1_result.predictions
    train = predictions.filter(pl.col("cohort") == "train").sort("patient_key")
    thresholds = hn1_result.metrics.filter(
        (pl.col("metric") == "threshold") & (pl.col("cohort") == "train")
    )
    for model in ("combined", hn1_result.best_model):
        part = train.filter(pl.col("model") == model)
        assert part["oof_probability"].null_count() == 0
        expected = youden_threshold(part["label"].to_numpy(), part["oof_probability"].to_numpy())
        assert thresholds.filter(pl.col("model") == model)["value"][0] == expected
    _, clinical = hn1_tables
    frame = survival_frame(
        hn1_result.spec, clinical, hn1_result.splits, predictions, hn1_result.best_model
    ).set_index("patient_key")
    best = train.filter(pl.col("model") == hn1_result.best_model)
    oof_labels = dict(zip(best["patient_key"], best["oof_predicted_label"], strict=True))
    for key, label in oof_labels.items():
        assert frame.loc[key, "predicted_label"] == label
    apparent = dict(zip(best["patient_key"], best["predicted_label"], strict=True))
    assert oof_labels != apparent  # the apparent labels differ: the choice matters
