"""TRIPOD+AI (2024) and CLEAR (2023) filled from the lake (lake table ``reporting_checklist``).

The item lists are ``checklists/tripod_ai.csv`` and ``checklists/clear.csv`` (label, section, a
paraphrased topic, whether the lake can fill it, and the lake facts it needs). ``lake_facts``
computes each fact of one study version from the lake (``Fact(value, source)``: the text and the
table or file it came from); ``fill_checklists`` gives every item:

- ``filled``: the lake holds every fact the item asks for (any rationale is still the author's)
- ``partly filled``: the lake holds some of them; the author completes the rest
- ``author to complete``: the lake holds none (title, ethics, discussion, funding, ...)

``value`` is the facts' text joined with " | ", ``source`` the lake tables and files they came
from. A fact the lake cannot give for this study (no readers recorded, no harmonization step
named, a survival-only study's metrics) is absent, never invented.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

CHECKLIST_DIR = Path(__file__).resolve().parent / "checklists"
CHECKLISTS = {"TRIPOD+AI": "tripod_ai.csv", "CLEAR": "clear.csv"}
SCHEMA = {
    "study": pl.String,
    "model_version": pl.String,
    "checklist": pl.String,
    "item": pl.String,
    "section": pl.String,
    "topic": pl.String,
    "status": pl.String,
    "value": pl.String,
    "source": pl.String,
}
STUDY_SOURCES = (
    "clinical",
    "imaging_series",
    "cases",
    "radiomics_features",
    "external_features",
)  # quarantine target tables that can remove a study's patients
FILLED, PARTLY, AUTHOR = "filled", "partly filled", "author to complete"

# the phrases of the CSVs' lake_source column -> the fact that answers them
ALIASES = {
    "cohort counts": "counts",
    "per-cohort patient counts": "counts",
    "per-cohort counts": "counts",
    "per-cohort counts and dates": ("counts", "dates"),
    "per-cohort dates": "dates",
    "dates": "dates",
    "split": "split",
    "data split": "split",
    "model types": "models",
    "models": "models",
    "model types and tuning": ("models", "tuning"),
    "model types and hyperparameter tuning": ("models", "tuning"),
    "model tuning": "tuning",
    "hyperparameter tuning": "tuning",
    "metrics with cis": "metrics",
    "metrics with cis per cohort": "metrics",
    "metrics": "metrics",
    "performance metrics": "metric_names",
    "calibration": "calibration",
    "decision curves": "decision_curves",
    "cohort exclusions and counts": "exclusions",
    "cohort exclusions": "exclusions",
    "inclusion/exclusion counts": "exclusions",
    "inclusion/exclusion counts per center": ("exclusions", "centers"),
    "centers per cohort": "centers",
    "centers": "centers",
    "imaging protocol per center": "protocol",
    "imaging protocol": "protocol",
    "segmentation source": "segmentation",
    "segmentation source (mask format)": "segmentation",
    "segmentation readers": "readers",
    "extraction params": "params",
    "extraction software and params": ("software", "params"),
    "extraction software version": "software",
    "param file": "params",
    "param file resampling": "resampling",
    "param file binning": "binning",
    "param file filters": "filters",
    "ibsi settings": "ibsi",
    "extracted features": "features",
    "harmonization method": "harmonization",
    "selection steps": "selection",
    "feature selection steps": "selection",
    "missing data counts": "missing",
    "quarantine reasons": "quarantine",
    "code version hash": "code",
    "model version hash": "model_version",
}


@dataclass(frozen=True)
class Fact:
    value: str
    source: str


def read_checklist(name: str) -> list[dict[str, str]]:
    with open(CHECKLIST_DIR / CHECKLISTS[name], encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def needed_facts(lake_source: str) -> list[str]:
    """The fact keys of a CSV ``lake_source`` cell (phrases separated by ';')."""
    keys: list[str] = []
    for phrase in (p.strip().lower() for p in lake_source.split(";") if p.strip()):
        if phrase not in ALIASES:
            raise KeyError(f"checklist phrase {phrase!r} has no fact (add it to ALIASES)")
        alias = ALIASES[phrase]
        keys += list(alias) if isinstance(alias, tuple) else [alias]
    return list(dict.fromkeys(keys))


def fill_checklists(facts: dict[str, Fact], study: str, model_version: str) -> pl.DataFrame:
    """One row per checklist item of TRIPOD+AI and CLEAR."""
    rows = []
    for checklist in CHECKLISTS:
        for item in read_checklist(checklist):
            keys = needed_facts(item["lake_source"]) if item["lake_fillable"] != "no" else []
            found = [facts[k] for k in keys if k in facts]
            if not found:
                status = AUTHOR
            elif item["lake_fillable"] == "yes" and len(found) == len(keys):
                status = FILLED
            else:
                status = PARTLY
            rows.append(
                {
                    "study": study,
                    "model_version": model_version,
                    "checklist": checklist,
                    "item": item["item"],
                    "section": item["section"],
                    "topic": item["topic"],
                    "status": status,
                    "value": " | ".join(f.value for f in found),
                    "source": "; ".join(dict.fromkeys(f.source for f in found)),
                }
            )
    return pl.DataFrame(rows, schema=SCHEMA)


# the facts --------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    return "NA" if value is None else f"{value:.{digits}f}"


def _range(values: list[float], unit: str) -> str:
    values = sorted(v for v in values if v is not None)
    if not values:
        return "not recorded"
    low, high = values[0], values[-1]
    return f"{low:g} {unit}" if low == high else f"{low:g}-{high:g} {unit}"


def _values(part: pl.DataFrame, column: str) -> str:
    if column not in part.columns:
        return "not recorded"
    found = sorted(str(v) for v in part[column].drop_nulls().unique().to_list())
    return ", ".join(found) if found else "not recorded"


def _numbers(part: pl.DataFrame, column: str) -> list:
    return part[column].to_list() if column in part.columns else []


def protocol_per_center(series: pl.DataFrame) -> dict[str, str]:
    """center -> one line of its imaging protocol (from ``imaging_series`` of the study's patients)."""
    out = {}
    for center in sorted(series["center_id"].unique().to_list()):
        part = series.filter(pl.col("center_id") == center)
        out[center] = (
            f"{center}: {part.height} series; modality {_values(part, 'modality')}; scanner "
            f"{_values(part, 'manufacturer')} {_values(part, 'manufacturer_model')}; kVp "
            f"{_values(part, 'kvp')}; kernel {_values(part, 'convolution_kernel')}; contrast "
            f"{_values(part, 'contrast_agent')}; phase {_values(part, 'phase')}; slice thickness "
            f"{_range(_numbers(part, 'slice_thickness_mm'), 'mm')}; pixel spacing "
            f"{_range(_numbers(part, 'pixel_spacing_mm'), 'mm')}"
        )
    return out


def lake_facts(
    home: Any,
    spec: Any,
    model_version: str,
    splits: pl.DataFrame,
    flow: pl.DataFrame,
    table_one: pl.DataFrame,
    version_dir: Path | None = None,
) -> dict[str, Fact]:
    """Every fact the lake holds for one study version (see the module doc)."""
    from assets.studies.paper.table_one import table_one_cohorts
    from dagster_project.catalog import lake_connection

    facts: dict[str, Fact] = {}
    keys = splits["patient_key"].to_list()
    cohorts = table_one_cohorts(splits).join(
        splits.select("patient_key", "center_id", "label"), on="patient_key"
    )
    per = cohorts.group_by("cohort", maintain_order=True).agg(
        pl.len().alias("n"), pl.col("label").cast(pl.Int64).sum().alias("events")
    )
    counts = "; ".join(
        f"{c}: {n} patients" + (f", {e} with {spec.label}=1" if spec.label else "")
        for c, n, e in per.iter_rows()
    )
    facts["counts"] = Fact(counts, "study_splits")
    centers = cohorts.group_by("cohort", maintain_order=True).agg(
        pl.col("center_id").unique().sort()
    )
    facts["centers"] = Fact(
        "; ".join(f"{c}: centers {', '.join(v)}" for c, v in centers.iter_rows()), "study_splits"
    )
    split = spec.split
    facts["split"] = Fact(
        f"development centers {', '.join(split.development_centers)} split "
        f"{1 - split.internal_validation_fraction:g}:{split.internal_validation_fraction:g} into "
        f"train and internal_validation, stratified on {spec.label or 'nothing'}, at patient level, "
        f"seed {split.seed}; external validation centers "
        f"{', '.join(split.external_validation_centers) or 'none'} kept whole; every "
        "preprocessing, selection and tuning step fitted on train only",
        "study YAML; study_splits",
    )
    excluded = flow.filter(pl.col("kind") == "exclusion")
    facts["exclusions"] = Fact(
        "; ".join(f"{r}: {n}" for r, n in excluded.select("reason", "patients").iter_rows())
        + f" (landed {flow.filter(pl.col('kind') == 'start')['patients'].sum()}, included "
        f"{splits.height})",
        "patient_flow; quarantine",
    )
    from dagster_project.quarantine import read_quarantine

    rejected = read_quarantine(home)
    rejected = rejected.filter(pl.col("target_table").is_in(list(STUDY_SOURCES)))
    if rejected.height:
        by = rejected.group_by("target_table", "rule").len().sort("target_table", "rule")
        facts["quarantine"] = Fact(
            "rejected records by rule: " + "; ".join(f"{t}/{r}: {n}" for t, r, n in by.iter_rows()),
            "quarantine",
        )
    else:
        facts["quarantine"] = Fact("no record was rejected by the quality gate", "quarantine")
    missing = (
        table_one.filter(pl.col("variable") != "n")
        .group_by("variable", "cohort")
        .agg(pl.col("n_missing").first())
    )
    total = missing.group_by("variable", maintain_order=True).agg(pl.col("n_missing").sum())
    facts["missing"] = Fact(
        "missing values per clinical variable (all cohorts): "
        + "; ".join(f"{v}: {n}" for v, n in total.sort("variable").iter_rows())
        + "; patients without features are excluded (patient_flow), missing feature values are "
        "imputed by the training median inside the pipeline",
        "table_one; patient_flow",
    )

    con = lake_connection(home, with_sql_views=False)
    try:
        con.register("study_keys", pl.DataFrame({"patient_key": keys}))
        empty = pl.DataFrame()
        series = (
            con.sql("select s.* from imaging_series s join study_keys using (patient_key)").pl()
            if home.has_table("imaging_series")
            else empty
        )
        cases = (
            con.sql("select c.* from cases c join study_keys using (patient_key)").pl()
            if home.has_table("cases")
            else empty
        )
        radiomics = None
        if spec.features.radiomics is not None and home.has_table("radiomics_features"):
            radiomics = con.sql(
                "select feature, any_value(extractor_version) as extractor_version, "
                "any_value(params_sha256) as params_sha256, count(distinct case_id) as cases "
                "from radiomics_features join study_keys using (patient_key) "
                "where params_id = ? group by feature order by feature",
                params=[spec.features.radiomics.params_id],
            ).pl()
    finally:
        con.close()
    if series.height and "acquired_on" in series.columns:
        dated = cohorts.join(series.select("patient_key", "acquired_on"), on="patient_key")
        by_cohort = dated.group_by("cohort", maintain_order=True).agg(
            pl.col("acquired_on").min().alias("first"), pl.col("acquired_on").max().alias("last")
        )
        if by_cohort.height and by_cohort["first"].drop_nulls().len():
            facts["dates"] = Fact(
                "image acquisition dates: "
                + "; ".join(f"{c}: {a} to {b}" for c, a, b in by_cohort.iter_rows()),
                "imaging_series.acquired_on",
            )
    if series.height:
        facts["protocol"] = Fact(
            " || ".join(protocol_per_center(series).values()), "imaging_series"
        )
    if cases.height:
        sources = cases.group_by("mask_source").len().sort("mask_source")
        facts["segmentation"] = Fact(
            f"{cases.height} image/mask cases of the study's patients; mask source "
            + ", ".join(f"{s}: {n}" for s, n in sources.iter_rows())
            + "; mask QC (labels present, ROI size, geometry vs image) in cases.qc_*",
            "cases",
        )
        if "reader" in cases.columns and cases["reader"].drop_nulls().len():
            readers = cases.group_by("reader").len().sort("reader")
            facts["readers"] = Fact(
                f"{readers.height} reader(s): "
                + ", ".join(f"{r}: {n} cases" for r, n in readers.iter_rows()),
                "cases.reader",
            )
    if radiomics is not None and radiomics.height:
        _radiomics_facts(facts, home, spec, radiomics)
    elif spec.features.external and home.has_table("external_features"):
        external = home.read_table("external_features")
        sets = [e.feature_set for e in spec.features.external]
        external = external.filter(
            pl.col("feature_set").is_in(sets) & pl.col("patient_key").is_in(keys)
        )
        per_set = (
            external.group_by("feature_set").agg(pl.col("feature").n_unique()).sort("feature_set")
        )
        facts["features"] = Fact(
            "features computed outside the lake (landing/features/): "
            + "; ".join(f"{s}: {n} features per case" for s, n in per_set.iter_rows()),
            "external_features",
        )
    facts["selection"] = Fact(
        f"inside each model's pipeline, fitted on train only: median imputation, variance "
        f"filter (min {spec.selection.variance_min:g}), standardisation, correlation "
        f"filter (|r| > {spec.selection.max_correlation}), {spec.selection.method} selection"
        + (
            f" (n_features {spec.selection.n_features})"
            if spec.selection.n_features is not None
            else ""
        ),
        "study YAML (resolved)",
    )
    harmonization = getattr(spec, "harmonization", None)
    facts["harmonization"] = Fact(
        f"harmonization: {harmonization}"
        if harmonization
        else "no harmonization step (none named in the study YAML); features standardised on "
        "the training cohort",
        "study YAML (resolved)",
    )
    if spec.is_classification:
        _model_facts(facts, home, spec, model_version, version_dir)
    return facts


def _radiomics_facts(facts: dict, home: Any, spec: Any, radiomics: pl.DataFrame) -> None:
    from assets.radiomics.params import SHIPPED_DIR, params_sha256, read_params

    params_id = spec.features.radiomics.params_id
    versions = sorted(set(radiomics["extractor_version"].drop_nulls().to_list()))
    facts["software"] = Fact(
        f"pyradiomics {', '.join(versions)} (IBSI-aligned feature definitions; deviations "
        "documented by pyradiomics), 3D extraction unless force2D is set",
        "radiomics_features.extractor_version",
    )
    classes: dict[str, int] = {}
    image_types: set[str] = set()
    for name in radiomics["feature"].to_list():
        parts = name.split("_")
        if len(parts) >= 3:
            image_types.add(parts[0])
            classes[parts[1]] = classes.get(parts[1], 0) + 1
    facts["features"] = Fact(
        f"{radiomics.height} features per case ({params_id}); per class: "
        + ", ".join(f"{k} {v}" for k, v in sorted(classes.items()))
        + f"; image types: {', '.join(sorted(image_types))}",
        "radiomics_features",
    )
    path = next(
        (
            p
            for p in (
                Path(home.home) / "params" / f"{params_id}.yaml",
                Path(home.home) / "params" / f"{params_id}.yml",
                SHIPPED_DIR / f"{params_id}.yaml",
            )
            if p.is_file()
        ),
        None,
    )
    if path is None:
        return
    content = read_params(path)
    used = set(radiomics["params_sha256"].drop_nulls().to_list())
    same = params_sha256(content) in used
    where = f"parameter file {params_id} ({'LAKE_HOME/params' if path.parent.name == 'params' and path.parent.parent == Path(home.home) else 'shipped'}; sha256 {'matches' if same else 'DIFFERS from'} the extraction)"
    setting = content.get("setting") or {}
    facts["params"] = Fact(
        f"{where}: setting {json.dumps(setting, sort_keys=True)}; imageType "
        f"{json.dumps(content.get('imageType') or {'Original': {}}, sort_keys=True)}; "
        f"featureClass {sorted((content.get('featureClass') or {}).keys()) or 'all'}; any "
        "setting not listed stays at the pyradiomics default",
        f"params/{path.name}; radiomics_features.params_sha256",
    )
    spacing = setting.get("resampledPixelSpacing")
    facts["resampling"] = Fact(
        f"resampled to {spacing} mm with interpolator {setting.get('interpolator', 'sitkBSpline')}"
        " (mask: nearest neighbour)"
        if spacing
        else "no resampling (resampledPixelSpacing not set): native voxel size",
        f"params/{path.name}",
    )
    if "binCount" in setting:
        binning = f"fixed bin number: binCount {setting['binCount']}"
    else:
        binning = f"fixed bin width: binWidth {setting.get('binWidth', 25)}"
    facts["binning"] = Fact(binning, f"params/{path.name}")
    facts["filters"] = Fact(
        f"image types {json.dumps(content.get('imageType') or {'Original': {}}, sort_keys=True)}",
        f"params/{path.name}",
    )
    ibsi = {
        k: setting.get(k, default)
        for k, default in (
            ("normalize", False),
            ("resegmentRange", None),
            ("voxelArrayShift", 0),
            ("force2D", False),
            ("label", 1),
            ("padDistance", 5),
            ("preCrop", False),
        )
    }
    facts["ibsi"] = Fact(
        "IBSI-relevant settings: " + ", ".join(f"{k} {v}" for k, v in ibsi.items()),
        f"params/{path.name}",
    )


def _model_facts(
    facts: dict, home: Any, spec: Any, model_version: str, version_dir: Path | None
) -> None:
    versions = home.read_table("model_versions")
    if not versions.height:
        return
    row = versions.filter(
        (pl.col("study") == spec.name) & (pl.col("model_version") == model_version)
    )
    if row.height:
        r = row.row(0, named=True)
        facts["code"] = Fact(
            f"code version {r['code_version']}, data version {r['data_version']}",
            "model_versions",
        )
        facts["model_version"] = Fact(
            f"model version {model_version} trained {r['trained_at']}; artifacts "
            f"{r['artifact_path']}",
            "model_versions",
        )
    summary = {}
    if version_dir is not None and (Path(version_dir) / "summary.json").is_file():
        summary = json.loads((Path(version_dir) / "summary.json").read_text(encoding="utf-8"))
    facts["models"] = Fact(
        f"models {', '.join(spec.models)}; best model {summary.get('best_model', 'NA')} "
        f"({summary.get('best_model_rule', 'rule not recorded')}); combined model: logistic "
        f"regression of the radiomics score and {', '.join(spec.features.clinical) or 'no'} "
        "clinical columns",
        "model_versions; summary.json",
    )
    grids = spec.grids or "library default grids (assets/studies/pipeline.py)"
    facts["tuning"] = Fact(
        f"GridSearchCV, stratified {spec.cv_folds}-fold cross-validation on train only, "
        f"grids {grids}; threshold by Youden's J on out-of-fold training probabilities; seed "
        f"{spec.split.seed}",
        "study YAML (resolved)",
    )
    metrics = home.read_table("model_metrics")
    if not metrics.height:
        return
    metrics = metrics.filter(
        (pl.col("study") == spec.name) & (pl.col("model_version") == model_version)
    )
    if not metrics.height:
        return
    auc = metrics.filter(pl.col("metric") == "auc").sort("model", "cohort")
    if auc.height:
        facts["metrics"] = Fact(
            "AUC [95% CI, "
            + str(auc["ci_method"][0])
            + "]: "
            + "; ".join(
                f"{m} {c} {_fmt(v)} [{_fmt(lo)}-{_fmt(hi)}]"
                for m, c, v, lo, hi in auc.select(
                    "model", "cohort", "value", "ci_low", "ci_high"
                ).iter_rows()
            ),
            "model_metrics",
        )
    names = sorted(set(metrics["metric"].to_list()))
    facts["metric_names"] = Fact(f"metrics computed: {', '.join(names)}", "model_metrics")
    slope = metrics.filter(pl.col("metric") == "calibration_slope").sort("model", "cohort")
    if slope.height:
        best = summary.get("best_model")
        shown = slope.filter(pl.col("model") == best) if best else slope
        facts["calibration"] = Fact(
            "calibration slope [95% CI]: "
            + "; ".join(
                f"{m} {c} {_fmt(v, 2)} [{_fmt(lo, 2)}-{_fmt(hi, 2)}]"
                for m, c, v, lo, hi in (shown if shown.height else slope)
                .select("model", "cohort", "value", "ci_low", "ci_high")
                .iter_rows()
            )
            + "; curves, intercepts and Hosmer-Lemeshow for every model in model_metrics",
            "model_metrics",
        )
    if version_dir is not None and (Path(version_dir) / "decision_curves.parquet").is_file():
        dca = pl.read_parquet(Path(version_dir) / "decision_curves.parquet")
        if dca.height:
            facts["decision_curves"] = Fact(
                f"decision curves (net benefit vs treat-all / treat-none) for {dca.height} "
                "model x cohort x threshold rows"
                + (
                    f", thresholds {dca['threshold'].min():.2f}-{dca['threshold'].max():.2f}"
                    if "threshold" in dca.columns
                    else ""
                ),
                f"models/{spec.name}/{model_version}/decision_curves.parquet",
            )


def checklist_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Items per checklist and status."""
    return (
        table.group_by("checklist", "status")
        .len()
        .rename({"len": "items"})
        .sort("checklist", "status")
    )
