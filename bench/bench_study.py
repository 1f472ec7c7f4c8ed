"""Benchmark: a paper-scale study through radlake vs the same computation as a plain script.

Data: the demo generator's cohort (``radlake.demo.simulate_cohort``: 2,500 patients
in 7 centers of decreasing size, latent mitotic-index label, tumour size and location) with
~1,300 radiomics-like features per patient synthesised from the cohort's latent size and
texture scores, 40 shared nuisance factors (radiomics features are strongly correlated), center
batch effects, a few constant and near-duplicate features, and 1 % missing values. Features are
synthesised instead of extracted from the generated DICOM because extraction is benchmarked on
its own (``bench_extraction.py``) and would dominate the time; this measures the study.

Study: development centers C1 + C2 split 7:3 (stratified, seed 42), C3..C7 external (pooled
and per center), LASSO selection after variance and correlation filters, the five models tuned
by 5-fold CV, 1,000 stratified bootstraps and DeLong CIs per model x cohort, combined model with
tumour location and size + nomogram, calibration, decision curves, SHAP, figures, HTML report
and versioned artifacts.

Two parts, each in its own fresh process (so peak RSS is that part's alone), same input files:

- ``lake``: ``assets.studies.run.run_study``;
- ``script_cached`` (optional): the script with ``Pipeline(memory=...)``, caching transformer fits
  across candidates and models as the lake does;
- ``script``: the same computation written as a plain scikit-learn script (the way an analyst
  writes it: a loop over models with ``GridSearchCV``, a Python loop of bootstrap resamples
  with ``sklearn.metrics``, pyplot figures). It uses the study's own custom transformers
  (correlation filter, LASSO selector) so both compute the same models.

    .venv/bin/python bench/bench_study.py                       # paper scale
    .venv/bin/python bench/bench_study.py --patients 600 --features 300 --bootstrap 200  # quick
    .venv/bin/python bench/bench_study.py --parts lake          # the lake study alone

Goals (issue 6): lake / script wall time <= 1.1; the whole lake study < 3 minutes on 2 cores.
Issue 15: the lake study runs with ComBat harmonization (``--harmonization``; the external
centers C3..C7 estimated unlabeled) and nested CV (``--not-nested`` to turn it off); the plain
script is neither harmonized nor nested, so compare it with ``--harmonization none
--not-nested``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STUDY = {
    "name": "bench_gist",
    "label": "mi_high",
    "features": {
        "radiomics": {"params_id": "ct_default"},
        "clinical": ["tumor_location", "tumor_size_cm"],
    },
    "split": {
        "development_centers": ["C1", "C2"],
        "internal_validation_fraction": 0.3,
        "external_validation_centers": ["C3", "C4", "C5", "C6", "C7"],
        "seed": 42,
    },
    "selection": {"variance_min": 0.0, "max_correlation": 0.9, "method": "lasso"},
    "models": ["logistic_regression", "svm", "random_forest", "decision_tree", "xgboost"],
}
CLASSES = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm", "shape")
IMAGE_TYPES = (
    "original",
    "wavelet-LLH",
    "wavelet-LHL",
    "wavelet-HLL",
    "wavelet-HHH",
    "log-sigma-2-0-mm-3D",
    "log-sigma-4-0-mm-3D",
)


# data ------------------------------------------------------------------------------------
def synthesize(folder: Path, patients: int, centers: int, n_features: int, seed: int = 7) -> dict:
    """Write ``features.parquet`` (patient_key + features) and ``clinical.parquet`` to ``folder``."""
    import numpy as np
    import polars as pl

    from dagster_project.pseudonym import Pseudonymizer
    from radlake.demo import simulate_cohort

    cohort = simulate_cohort(patients, seed, centers)
    pseudonymize = Pseudonymizer(b"bench")
    keys = [pseudonymize(p.center_id, p.patient_id) for p in cohort]
    center = np.array([p.center_id for p in cohort])
    size = np.array([p.size_score for p in cohort])
    texture = np.array([p.texture_score for p in cohort])
    rng = np.random.default_rng([seed, 99])
    n = len(cohort)
    nuisance = rng.normal(size=(n, 40))
    loadings = rng.normal(size=(42, n_features)) * rng.uniform(0.2, 1.0, size=n_features)
    # about a fifth of the features carry the size or texture signal, weakly
    informative = rng.random(n_features) < 0.2
    loadings[0] *= np.where(informative, 0.9, 0.05)
    loadings[1] *= np.where(informative, 0.9, 0.05)
    latent = np.column_stack([size, texture, nuisance])
    values = latent @ loadings + rng.normal(scale=1.5, size=(n, n_features))
    centers_sorted = sorted(set(center))
    shift = rng.normal(scale=0.4, size=(len(centers_sorted), n_features))
    for i, c in enumerate(centers_sorted):
        values[center == c] += shift[i]  # scanner / protocol batch effect
    scale = np.exp(rng.normal(1.0, 2.0, size=n_features))  # radiomics features span many units
    values = values * scale + rng.normal(0, 5, size=n_features) * scale
    values[:, :5] = 1.0  # constant features (removed by the variance filter)
    values[:, 5:25] = values[:, 25:45] * 1.01 + rng.normal(scale=0.01, size=(n, 20)) * scale[25:45]
    values[rng.random(values.shape) < 0.01] = np.nan
    names = [
        f"{IMAGE_TYPES[i % len(IMAGE_TYPES)]}_{CLASSES[i % len(CLASSES)]}_Feature{i:04d}"
        for i in range(n_features)
    ]
    features = (
        pl.DataFrame(values, schema=names)
        .with_columns(pl.Series("patient_key", keys))
        .select("patient_key", *names)
    )
    clinical = pl.DataFrame(
        {
            "patient_key": keys,
            "center_id": center.tolist(),
            "mi_high": [p.mi_high for p in cohort],
            "tumor_location": [p.tumor_location for p in cohort],
            "tumor_size_cm": [p.tumor_size_cm for p in cohort],
        }
    )
    features.write_parquet(folder / "features.parquet")
    clinical.write_parquet(folder / "clinical.parquet")
    return {"patients": n, "features": n_features, "centers": len(centers_sorted)}


# part 1: the lake ------------------------------------------------------------------------
def run_lake(
    folder: Path, bootstrap: int, n_jobs: int, harmonization: str = "combat", nested: bool = True
) -> dict:
    import polars as pl

    from assets.studies.run import run_study
    from assets.studies.spec import parse_study

    study = {**STUDY, "bootstrap": bootstrap, "validation": {"nested_cv": nested}}
    if harmonization != "none":  # C3..C7 are never in training: estimated from their features
        study["harmonization"] = {"method": harmonization, "external": "estimate_unlabeled"}
    spec = parse_study(study, "bench_gist.yaml")
    features = pl.read_parquet(folder / "features.parquet")
    clinical = pl.read_parquet(folder / "clinical.parquet")
    result = run_study(spec, features, clinical, folder / "lake_out", n_jobs=n_jobs)
    auc = result.metrics.filter((pl.col("metric") == "auc") & (pl.col("cohort") != "train"))
    return {
        "best_model": result.best_model,
        "auc": {
            f"{r['model']}@{r['cohort']}": round(r["value"], 4)
            for r in auc.iter_rows(named=True)
            if ":" not in r["cohort"]
        },
        "metric_rows": result.metrics.height,
        "selected_features": {k: len(m.selected_features) for k, m in result.fitted.items()},
    }


# part 2: the plain script ----------------------------------------------------------------
def run_script(folder: Path, bootstrap: int, n_jobs: int, cache: bool = False) -> dict:
    """The same study as an analyst's plain scikit-learn script (``cache``: Pipeline memory)."""
    import warnings

    import joblib
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    from scipy.stats import chi2, norm
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score, roc_curve
    from sklearn.model_selection import (
        GridSearchCV,
        StratifiedKFold,
        cross_val_predict,
        train_test_split,
    )
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier
    from xgboost import DMatrix, XGBClassifier

    from assets.studies.transformers import CorrelationFilter, LassoSelector

    warnings.simplefilter("ignore")
    out = folder / "script_out"
    out.mkdir(exist_ok=True)
    seed = 42
    features = pd.read_parquet(folder / "features.parquet")
    clinical = pd.read_parquet(folder / "clinical.parquet")
    data = (
        clinical.merge(features, on="patient_key")
        .sort_values("patient_key")
        .set_index("patient_key", drop=False)
    )
    data.index.name = None
    feature_cols = [c for c in features.columns if c != "patient_key"]

    development = data[data.center_id.isin(["C1", "C2"])]
    train_keys, internal_keys = train_test_split(
        development.patient_key.to_numpy(),
        test_size=0.3,
        stratify=development.mi_high,
        random_state=seed,
    )
    cohort = pd.Series("external_validation", index=data.index)
    cohort[train_keys] = "train"
    cohort[internal_keys] = "internal_validation"
    data["cohort"] = cohort
    data = data[data.center_id.isin(["C1", "C2", "C3", "C4", "C5", "C6", "C7"])]
    order = {"train": 0, "internal_validation": 1, "external_validation": 2}
    data = data.assign(_o=data.cohort.map(order)).sort_values(["_o", "patient_key"])
    train = data[data.cohort == "train"]
    X_train, y_train = train[feature_cols], train.mi_high.to_numpy()
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)

    estimators = {
        "logistic_regression": (LogisticRegression(max_iter=5000), {"C": [0.01, 0.1, 1.0]}),
        "svm": (SVC(kernel="rbf", gamma="scale", random_state=seed), {"C": [0.1, 1.0, 10.0]}),
        "random_forest": (
            RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1),
            {"max_depth": [4, 8], "min_samples_leaf": [3]},
        ),
        "decision_tree": (
            DecisionTreeClassifier(random_state=seed),
            {"max_depth": [2, 3, 5], "min_samples_leaf": [10]},
        ),
        "xgboost": (
            XGBClassifier(
                n_estimators=200,
                learning_rate=0.05,
                max_depth=3,
                subsample=0.8,
                colsample_bytree=0.8,
                tree_method="hist",
                n_jobs=1,
                random_state=seed,
                eval_metric="logloss",
                verbosity=0,
            ),
            {"max_depth": [2, 3], "learning_rate": [0.05]},
        ),
    }
    fitted, thresholds, oof_all = {}, {}, {}
    memory = None
    if cache:
        from joblib import Memory

        memory = Memory(tempfile.mkdtemp(dir=folder), verbose=0)
    for name, (estimator, grid) in estimators.items():
        pipe = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median")),
                ("variance", VarianceThreshold(0.0)),
                ("scale", StandardScaler()),
                ("correlation", CorrelationFilter(0.9)),
                ("select", LassoSelector(random_state=seed)),
                ("model", estimator),
            ],
            memory=memory,
        )
        search = GridSearchCV(
            pipe,
            {f"model__{k}": v for k, v in grid.items()},
            scoring="roc_auc",
            cv=folds,
            n_jobs=n_jobs,
            refit=False,
        )
        search.fit(X_train, y_train)
        best = clone(pipe).set_params(**search.best_params_)
        if name == "svm":
            best.set_params(
                model=CalibratedClassifierCV(
                    best.named_steps["model"], method="sigmoid", ensemble=False, cv=folds
                )
            )
        oof = cross_val_predict(
            best, X_train, y_train, cv=folds, method="predict_proba", n_jobs=n_jobs
        )[:, 1]
        best.fit(X_train, y_train)
        fpr, tpr, cut = roc_curve(y_train, oof)
        thresholds[name] = cut[np.argmax(tpr - fpr)]
        fitted[name], oof_all[name] = best, oof
        joblib.dump(best, out / f"{name}.joblib", compress=3)

    X_all = data[feature_cols]
    probability = {name: model.predict_proba(X_all)[:, 1] for name, model in fitted.items()}
    cohorts = {
        c: (data.cohort == c).to_numpy()
        for c in ("train", "internal_validation", "external_validation")
    }
    for c in ("C3", "C4", "C5", "C6", "C7"):
        cohorts[f"external_validation:{c}"] = (data.center_id == c).to_numpy()

    def delong(y, p):
        pos, neg = p[y == 1], p[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        v10, v01 = psi.mean(1), psi.mean(0)
        return psi.mean(), v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg), v10, v01

    rows = []

    def evaluate(name, p, threshold):
        for cname, mask in cohorts.items():
            y, q = data.mi_high.to_numpy()[mask], p[mask]
            rng = np.random.default_rng(seed)
            pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
            boot = []
            for _ in range(bootstrap):
                idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
                yb, qb = y[idx], q[idx]
                tn, fp, fn, tp = confusion_matrix(yb, qb >= threshold, labels=[0, 1]).ravel()
                boot.append(
                    [
                        roc_auc_score(yb, qb),
                        (tp + tn) / len(yb),
                        tp / (tp + fn),
                        tn / (tn + fp),
                        tp / max(tp + fp, 1),
                        tn / max(tn + fn, 1),
                        brier_score_loss(yb, qb),
                    ]
                )
            boot = np.array(boot)
            tn, fp, fn, tp = confusion_matrix(y, q >= threshold, labels=[0, 1]).ravel()
            point = [
                roc_auc_score(y, q),
                (tp + tn) / len(y),
                tp / (tp + fn),
                tn / (tn + fp),
                tp / max(tp + fp, 1),
                tn / max(tn + fn, 1),
                brier_score_loss(y, q),
            ]
            for i, metric in enumerate(
                ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "brier")
            ):
                rows.append(
                    (name, cname, metric, point[i], *np.percentile(boot[:, i], [2.5, 97.5]))
                )
            auc, var, _, _ = delong(y, q)
            rows.append(
                (
                    name,
                    cname,
                    "auc_delong",
                    auc,
                    auc - 1.96 * np.sqrt(var),
                    auc + 1.96 * np.sqrt(var),
                )
            )
            # calibration slope / intercept, Hosmer-Lemeshow
            lp = np.log(np.clip(q, 1e-9, 1 - 1e-9) / (1 - np.clip(q, 1e-9, 1 - 1e-9)))
            slope = LogisticRegression(C=np.inf).fit(lp[:, None], y).coef_[0, 0]
            groups = pd.qcut(q, 10, labels=False, duplicates="drop")
            table = (
                pd.DataFrame({"g": groups, "y": y, "p": q})
                .groupby("g")
                .agg(o=("y", "sum"), e=("p", "sum"), n=("y", "size"))
            )
            hl = (
                ((table.o - table.e) ** 2) / table.e
                + ((table.o - table.e) ** 2) / (table.n - table.e)
            ).sum()
            rows.append((name, cname, "calibration_slope", slope, np.nan, np.nan))
            rows.append(
                (name, cname, "hosmer_lemeshow_p", chi2.sf(hl, len(table) - 2), np.nan, np.nan)
            )

    for name in fitted:
        evaluate(name, probability[name], thresholds[name])
    metrics = pd.DataFrame(
        rows, columns=["model", "cohort", "metric", "value", "ci_low", "ci_high"]
    )
    internal = metrics[(metrics.metric == "auc") & (metrics.cohort == "internal_validation")]
    best = internal.sort_values("value", ascending=False).model.iloc[0]

    # combined model: logit of the best model's (out-of-fold on training) probability + clinical
    score = probability[best].copy()
    score[cohorts["train"]] = oof_all[best]
    frame = data[["tumor_location", "tumor_size_cm"]].copy()
    frame["radiomics_score"] = np.log(
        np.clip(score, 1e-6, 1 - 1e-6) / (1 - np.clip(score, 1e-6, 1 - 1e-6))
    )
    reference = frame.loc[cohorts["train"], "tumor_location"].value_counts().idxmax()
    combined = Pipeline(
        [
            (
                "design",
                ColumnTransformer(
                    [
                        (
                            "num",
                            SimpleImputer(strategy="median"),
                            ["radiomics_score", "tumor_size_cm"],
                        ),
                        (
                            "cat",
                            OneHotEncoder(
                                drop=[reference], handle_unknown="ignore", sparse_output=False
                            ),
                            ["tumor_location"],
                        ),
                    ]
                ),
            ),
            ("logistic", LogisticRegression(C=np.inf, max_iter=10000)),
        ]
    ).fit(frame[cohorts["train"]], data.mi_high[cohorts["train"]])
    combined_p = combined.predict_proba(frame)[:, 1]
    fpr, tpr, cut = roc_curve(data.mi_high[cohorts["train"]], combined_p[cohorts["train"]])
    evaluate("combined", combined_p, cut[np.argmax(tpr - fpr)])
    for cname, mask in cohorts.items():
        if cname == "train":
            continue
        y = data.mi_high.to_numpy()[mask]
        a1, _, v10a, v01a = delong(y, probability[best][mask])
        a2, _, v10b, v01b = delong(y, combined_p[mask])
        s = np.cov(np.vstack([v10a, v10b])) / len(v10a) + np.cov(np.vstack([v01a, v01b])) / len(
            v01a
        )
        z = (a2 - a1) / np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
        rows.append((f"combined_vs_{best}", cname, "delong_p", 2 * norm.sf(abs(z)), np.nan, np.nan))

    # decision curves
    dca = []
    for name, p in {**probability, "combined": combined_p}.items():
        for cname, mask in cohorts.items():
            y, q = data.mi_high.to_numpy()[mask], p[mask]
            for pt in np.arange(1, 100) / 100:
                tp, fp = np.sum((q >= pt) & (y == 1)), np.sum((q >= pt) & (y == 0))
                dca.append((name, cname, pt, tp / len(y) - fp / len(y) * pt / (1 - pt)))
    pd.DataFrame(dca, columns=["model", "cohort", "threshold", "net_benefit"]).to_parquet(
        out / "dca.parquet"
    )
    metrics = pd.DataFrame(
        rows, columns=["model", "cohort", "metric", "value", "ci_low", "ci_high"]
    )
    metrics.to_parquet(out / "metrics.parquet")

    # explanations: SHAP for xgboost, importances / coefficients for the others
    Xt = fitted["xgboost"][:-1].transform(X_train)
    shap = (
        fitted["xgboost"]
        .named_steps["model"]
        .get_booster()
        .predict(DMatrix(Xt), pred_contribs=True)
    )
    fig, ax = plt.subplots(figsize=(7, 5))
    top = np.argsort(-np.abs(shap[:, :-1]).mean(0))[:15]
    for row, j in enumerate(top[::-1]):
        ax.scatter(
            shap[:, j],
            np.full(len(shap), row) + np.random.default_rng(0).uniform(-0.3, 0.3, len(shap)),
            c=Xt[:, j],
            cmap="coolwarm",
            s=6,
        )
    fig.savefig(out / "shap.png", dpi=120)
    plt.close(fig)
    # ROC, calibration and decision-curve figures: one panel per cohort
    for kind in ("roc", "calibration", "dca"):
        fig, axes = plt.subplots(3, 3, figsize=(12.6, 12))
        for ax, (cname, mask) in zip(axes.ravel(), cohorts.items(), strict=False):
            y = data.mi_high.to_numpy()[mask]
            for name, p in {**probability, "combined": combined_p}.items():
                if kind == "roc":
                    fpr, tpr, _ = roc_curve(y, p[mask])
                    ax.plot(fpr, tpr, label=name)
                elif kind == "calibration":
                    g = pd.qcut(p[mask], 10, labels=False, duplicates="drop")
                    t = pd.DataFrame({"g": g, "y": y, "p": p[mask]}).groupby("g").mean()
                    ax.plot(t.p, t.y, marker="o", label=name)
                else:
                    part = [d for d in dca if d[0] == name and d[1] == cname]
                    ax.plot([d[2] for d in part], [d[3] for d in part], label=name)
            ax.legend(fontsize=7)
            ax.set_title(cname)
        fig.savefig(out / f"{kind}.png", dpi=120)
        plt.close(fig)
    return {"best_model": best, "metric_rows": len(metrics)}


# driver ----------------------------------------------------------------------------------
def _child(
    part: str, folder: Path, bootstrap: int, n_jobs: int, harmonization: str, nested: bool
) -> None:
    started = time.perf_counter()
    if part == "lake":
        summary = run_lake(folder, bootstrap, n_jobs, harmonization, nested)
    else:
        summary = run_script(folder, bootstrap, n_jobs, cache=part == "script_cached")
    seconds = time.perf_counter() - started
    peak_kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    print(
        json.dumps(
            {
                "part": part,
                "seconds": round(seconds, 2),
                "peak_rss_mib": round(peak_kib / 1024, 1),
                **summary,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=2500)
    parser.add_argument("--centers", type=int, default=7)
    parser.add_argument("--features", type=int, default=1300)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--parts", default="lake,script", help="lake, script, script_cached")
    parser.add_argument(
        "--child", choices=["lake", "script", "script_cached"], help=argparse.SUPPRESS
    )
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--harmonization",
        default="combat",
        choices=["combat", "zscore_per_center", "none"],
        help="the lake study's harmonization (external centers: estimate_unlabeled)",
    )
    parser.add_argument(
        "--not-nested",
        action="store_true",
        help="validation.nested_cv: false (the plain script is not nested either)",
    )
    args = parser.parse_args()
    if args.child:
        _child(
            args.child,
            args.folder,
            args.bootstrap,
            args.n_jobs,
            args.harmonization,
            not args.not_nested,
        )
        return
    with tempfile.TemporaryDirectory(prefix="radlake-bench-study-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        sizes = synthesize(folder, args.patients, args.centers, args.features)
        print(
            json.dumps(
                {"data": sizes, "synthesis_seconds": round(time.perf_counter() - started, 2)}
            )
        )
        results = {}
        for part in args.parts.split(","):
            command = [
                sys.executable,
                __file__,
                "--child",
                part,
                "--folder",
                str(folder),
                "--bootstrap",
                str(args.bootstrap),
                "--n-jobs",
                str(args.n_jobs),
                "--harmonization",
                args.harmonization,
                *(["--not-nested"] if args.not_nested else []),
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{part} failed:\n{done.stderr[-3000:]}")
            output = done.stdout.strip().splitlines()[-1]
            results[part] = json.loads(output)
            print(output, flush=True)
        for script in ("script", "script_cached"):
            if {"lake", script} <= set(results):
                ratio = round(results["lake"]["seconds"] / results[script]["seconds"], 3)
                print(
                    json.dumps({f"lake_over_{script}_wall": ratio, "goal": "<= 1.1, lake < 180 s"})
                )


if __name__ == "__main__":
    main()
