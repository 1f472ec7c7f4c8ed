"""Benchmark: ComBat harmonization on a real multi-center radiomics set, lake vs plain script.

Data: ``bench/data/nsclc_multicohort/`` (README there; not shipped: ``--prepare <folder>`` builds
it from the six CSVs of github.com/modelhub-ai/deep-prognosis, ``data/``): 984 patients of six public NSCLC
cohorts (HarvardRT, M-SPORE, MUMC, Maastro, Moffitt, Radboud; Hosny et al., PLOS Med 2018),
892 pyradiomics features each, binary 2-year overall survival ``surv2yr``. One cohort is the
development center (``--dev``, default HarvardRT, the largest), the other five are external.

Four arms, every one fitted on the development center only (all of it: the lake's
``internal_validation_fraction`` is 0 so both sides train on the same rows), seeds fixed:

- ``a_plain_raw``: median imputation + ``StandardScaler`` + ``LogisticRegressionCV(penalty='l1',
  solver='liblinear', scoring='roc_auc')`` (stratified 5-fold, seed 42), the analyst's script;
- ``b_plain_combat``: the same script after neuroCombat (Fortin's reference implementation) run
  with the development center as ``ref_batch`` (external features imputed with development
  medians first; neuroCombat estimates each external center's location/scale from that
  center's own features, labels are never passed to it): the "plain ComBat script";
- ``b2_plain_lake_harmonizer``: the same script after the lake's ``Harmonizer`` (combat,
  ``estimate_unlabeled``) fitted on the development rows: equal to ``b`` when the lake's
  harmonization is right, so any gap between ``b`` and ``d`` is the model, not ComBat;
- ``c_lake_none``: ``assets.studies.run.run_study``, ``harmonization: none``, model
  ``logistic_regression`` (the lake's LASSO-LR: filters, LASSO selector, LR);
- ``d_lake_combat``: the same study with ``harmonization: {method: combat, batch: center_id,
  external: estimate_unlabeled, compare_raw: true}``; its ``:raw`` twin must equal ``c``.

Reported: pooled external AUC (all five external centers together) and per-center AUC.

    git clone https://github.com/modelhub-ai/deep-prognosis /tmp/deep-prognosis  # commit 38e46d8
    .venv/bin/python bench/bench_harmonization.py --prepare /tmp/deep-prognosis/data
    .venv/bin/python bench/bench_harmonization.py
    .venv/bin/python bench/bench_harmonization.py --dev Moffitt --bootstrap 100
    .venv/bin/python bench/bench_harmonization.py --arms d --selection '{"lasso_c": 0.1}'
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import benchlib  # noqa: E402

DATA = REPO / "bench" / "data" / "nsclc_multicohort"
CENTERS = ("HarvardRT", "M-SPORE", "MUMC", "Maastro", "Moffitt", "Radboud")
LABEL = "surv2yr"
SEED = 42


def prepare(source: Path) -> None:
    """``features.parquet`` and ``clinical.parquet`` from the six source CSVs (README: the
    feature columns numeric in all six files but ``exponential_*``, ``general_info_*`` and the
    CNN logits; patients without any feature dropped; float32, zstd)."""
    import pandas as pd

    frames = {c: pd.read_csv(source / f"{c}.csv") for c in CENTERS}
    drop = ("id", LABEL, "logit_0", "logit_1")
    numeric = [
        {
            c
            for c in frame.columns
            if c not in drop
            and not c.startswith(("general_info_", "exponential_"))
            and pd.api.types.is_numeric_dtype(frame[c])
        }
        for frame in frames.values()
    ]
    first = next(iter(frames.values()))
    columns = [c for c in first.columns if all(c in n for n in numeric)]
    features, clinical = [], []
    for center, frame in frames.items():
        keys = [f"{center}-{row:03d}" for row in range(len(frame))]
        values = frame[columns].astype("float32").set_axis(keys)
        keep = values.notna().any(axis=1).to_numpy()
        features.append(values[keep].rename_axis("patient_key").reset_index())
        ids = frame["id"].astype("string").str.strip() if "id" in frame else None
        clinical.append(
            pd.DataFrame(
                {
                    "patient_key": keys,
                    "center_id": center,
                    "source_id": ids,
                    "source_row": range(len(frame)),
                    LABEL: frame[LABEL].astype("int64"),
                }
            )[keep]
        )
    DATA.mkdir(parents=True, exist_ok=True)
    options = {"compression": "zstd", "compression_level": 19, "index": False}
    pd.concat(features).to_parquet(DATA / "features.parquet", **options)
    pd.concat(clinical).to_parquet(DATA / "clinical.parquet", **options)
    print(f"written to {DATA}: {len(columns)} features")


def load_frames():
    import pandas as pd

    features = pd.read_parquet(DATA / "features.parquet")
    clinical = pd.read_parquet(DATA / "clinical.parquet")[["patient_key", "center_id", LABEL]]
    return features, clinical


def aucs(y, p, centers, dev: str) -> dict:
    """Pooled external AUC and one AUC per external center."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    y, p, centers = np.asarray(y), np.asarray(p), np.asarray(centers)
    ext = centers != dev
    out = {"pooled": float(roc_auc_score(y[ext], p[ext]))}
    for c in CENTERS:
        if c != dev:
            out[c] = float(roc_auc_score(y[centers == c], p[centers == c]))
    return out


# arms a and b: the plain script ------------------------------------------------------------
def neurocombat_to_dev(X, centers, dev: str):
    """neuroCombat with ``ref_batch=dev``: the development center is left unchanged and each
    other center is mapped onto it from its own features (no labels are passed)."""
    import numpy as np
    import pandas as pd
    from neuroCombat import neuroCombat

    if not hasattr(np, "int"):  # neuroCombat 0.2.12 still calls np.int (removed in NumPy 1.24)
        np.int = int
    covars = pd.DataFrame({"batch": np.asarray(centers)})
    out = neuroCombat(dat=X.to_numpy().T, covars=covars, batch_col="batch", ref_batch=dev)
    return pd.DataFrame(out["data"].T, columns=X.columns, index=X.index)


def plain_script(dev: str, combat: str | None) -> dict:
    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, clinical = load_frames()
    data = clinical.merge(features, on="patient_key")
    cols = [c for c in features.columns if c != "patient_key"]
    X = data[cols].astype(np.float64)
    is_dev = (data.center_id == dev).to_numpy()
    X = X.fillna(X[is_dev].median())  # development medians, for every center
    if combat == "neurocombat":
        X = neurocombat_to_dev(X, data.center_id, dev)
    elif combat == "lake":  # the lake's Harmonizer, fitted on the development rows only
        from assets.studies.harmonize import Harmonizer

        frame = X.assign(center_id=data.center_id.to_numpy())
        harmonizer = Harmonizer("combat", "center_id", (), "estimate_unlabeled")
        X = harmonizer.fit(frame[is_dev]).transform(frame)
    model = make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(
            Cs=10,
            penalty="l1",
            solver="liblinear",
            scoring="roc_auc",
            cv=StratifiedKFold(5, shuffle=True, random_state=SEED),
            max_iter=5000,
            random_state=SEED,  # liblinear shuffles its coordinate descent
        ),
    )
    y = data[LABEL].to_numpy()
    model.fit(X[is_dev], y[is_dev])
    p = model.predict_proba(X)[:, 1]
    coef = model[-1].coef_.ravel()
    return {
        "auc": aucs(y, p, data.center_id, dev),
        "n_features_used": int((coef != 0).sum()),
        "C": float(model[-1].C_[0]),
    }


# arms c and d: the lake's study ------------------------------------------------------------
def lake_study(
    dev: str, harmonization: str, bootstrap: int, out: Path, selection: dict | None = None
) -> dict:
    import polars as pl

    from assets.studies.run import run_study
    from assets.studies.spec import parse_study

    study = {
        "name": f"bench_harmonization_{harmonization}",
        "label": LABEL,
        "features": {"radiomics": {"params_id": "pyradiomics"}},
        "split": {
            "development_centers": [dev],
            "internal_validation_fraction": 0.0,
            "external_validation_centers": [c for c in CENTERS if c != dev],
            "seed": SEED,
        },
        "models": ["logistic_regression"],
        "bootstrap": bootstrap,
    }
    if selection:
        study["selection"] = selection
    if harmonization != "none":
        study["harmonization"] = {
            "method": harmonization,
            "batch": "center_id",
            "external": "estimate_unlabeled",
            "compare_raw": True,
        }
    spec = parse_study(study, "bench_harmonization.yaml")
    features, clinical = load_frames()
    result = run_study(
        spec,
        pl.from_pandas(features),
        pl.from_pandas(clinical),
        out,
        write_report=False,
        figures=False,
    )
    rows = result.metrics.filter(
        (pl.col("metric") == "auc") & pl.col("cohort").str.starts_with("external_validation")
    )
    arms = {}
    for r in rows.iter_rows(named=True):
        center = r["cohort"].split(":", 1)[1] if ":" in r["cohort"] else "pooled"
        arms.setdefault(r["model"], {})[center] = float(r["value"])
    return {
        "auc": arms,
        "selected_features": {k: len(m.selected_features) for k, m in result.fitted.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dev", default="HarvardRT", choices=CENTERS)
    parser.add_argument("--bootstrap", type=int, default=200, help="lake bootstrap resamples")
    parser.add_argument(
        "--selection",
        type=json.loads,
        default=None,
        help='lake selection spec, e.g. {"lasso_c": 1}',
    )
    parser.add_argument("--arms", default="abcd", help="which arms to run (letters)")
    parser.add_argument(
        "--prepare", type=Path, help="build bench/data/nsclc_multicohort from this CSV folder"
    )
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return

    arms, seconds = {}, {}
    plain = (
        ("a_plain_raw", lambda: plain_script(args.dev, None)),
        ("b_plain_combat", lambda: plain_script(args.dev, "neurocombat")),
        ("b2_plain_lake_harmonizer", lambda: plain_script(args.dev, "lake")),
    )
    for name, run in plain:
        if name[0] not in args.arms:
            continue
        start = time.perf_counter()
        arms[name] = run()
        seconds[name] = round(time.perf_counter() - start, 1)
    with tempfile.TemporaryDirectory() as tmp:
        for name, method in (("c_lake_none", "none"), ("d_lake_combat", "combat")):
            if name[0] not in args.arms:
                continue
            start = time.perf_counter()
            lake = lake_study(args.dev, method, args.bootstrap, Path(tmp) / name, args.selection)
            seconds[name] = round(time.perf_counter() - start, 1)
            arms[name] = {
                "auc": lake["auc"]["logistic_regression"],
                "selected": lake["selected_features"],
            }
            if "logistic_regression:raw" in lake["auc"]:
                arms[name + ":raw"] = {"auc": lake["auc"]["logistic_regression:raw"]}

    externals = ["pooled", *[c for c in CENTERS if c != args.dev]]
    rows = [
        [name, *[arm["auc"].get(c, float("nan")) for c in externals]] for name, arm in arms.items()
    ]
    print(f"development center {args.dev}; external AUC (pooled and per center)")
    print(benchlib.table(["arm", *externals], rows))
    suffix = (
        ""
        if args.selection is None
        else "_" + "_".join(f"{k}-{v}" for k, v in args.selection.items())
    )
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load": benchlib.load(),
        "machine": benchlib.machine(),
        "dev": args.dev,
        "bootstrap": args.bootstrap,
        "selection": args.selection,
        "arms": arms,
        "seconds": seconds,
    }
    print("written to", benchlib.write_result(f"harmonization_{args.dev}{suffix}", result))


if __name__ == "__main__":
    main()
