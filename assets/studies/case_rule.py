"""Case rules for readers and lesions: which case(s) of a patient a study uses.

cases.csv may give several masks of one image (``reader``) and several lesions per patient
(``lesion``); the ``cases`` table keeps every one of them apart. A study's ``case_rule`` chooses:

- ``largest_roi`` (default), ``first``, ``phase:<name>``: one case per patient, by the shared pivot
  (``assets.clinical.pivot``), whatever reader or lesion it is.
- ``reader:<name>``: only that reader's cases (``cases.reader``, case-insensitive), then the largest
  ROI among them; patients the reader did not segment are left out and counted.
- ``all_lesions``: one row per patient whose features are the mean over the patient's lesions
  (each lesion's case chosen by largest ROI when several readers drew it); ``n_lesions`` says how
  many lesions each row averages.
- ``per_lesion``: one row per patient and lesion (column ``lesion``), each lesion's case chosen by
  largest ROI. For feature tables and robustness work (e.g. the inter-reader ICC); a study's
  models need one row per patient, so a study YAML refuses it (``spec``).

``pivot(con, source, selector, case_rule)`` returns ``(wide frame, sentence)`` like
``assets.clinical.pivot.pivot_features``; ``by_reader`` gives the long values of the cases that
several readers drew on the same image and lesion (the input of an inter-observer ICC).
"""

from __future__ import annotations

import polars as pl

from assets.clinical.pivot import SOURCES, _quote, parse_case_rule, pivot_features

STUDY_RULES = ("largest_roi", "first", "phase:<name>", "reader:<name>", "all_lesions")
ALL_RULES = (*STUDY_RULES, "per_lesion")
_SEP = "\x1f"


def parse(case_rule: str) -> tuple[str, str | None]:
    """(kind, argument): kinds largest_roi, first, phase, reader, all_lesions, per_lesion."""
    rule = (case_rule or "largest_roi").strip()
    if rule in ("all_lesions", "per_lesion"):
        return rule, None
    if rule.startswith("reader:") and rule[len("reader:") :].strip():
        return "reader", rule[len("reader:") :].strip()
    try:
        return parse_case_rule(rule)
    except ValueError:
        raise ValueError(
            f"case_rule {case_rule!r} is not allowed (allowed: {', '.join(ALL_RULES)})"
        ) from None


def pivot(con, source: str, selector: str, case_rule: str = "largest_roi"):
    """One row per patient (per patient and lesion for ``per_lesion``) and the rule's sentence."""
    kind, argument = parse(case_rule)
    if kind in ("largest_roi", "first", "phase"):
        return pivot_features(con, source, selector, case_rule)
    long, cases = _long_with_cases(con, source, selector)
    if kind == "reader":
        everyone = long.get_column("patient_key").n_unique()
        wanted = cases.filter(pl.col("reader").str.to_lowercase() == argument.lower()).get_column(
            "case_id"
        )
        long = long.filter(pl.col("case_id").is_in(wanted.to_list()))
        wide, how = pivot_features(long, source, selector, "largest_roi", cases=cases)
        kept = wide.height
        return wide, (
            f"reader {argument}, then {how}; {everyone - kept} of {everyone} patients have no case "
            f"of reader {argument} and are left out"
        )
    lesions = long.join(cases.select("case_id", "lesion"), on="case_id", how="left")
    keyed = lesions.with_columns(
        patient_key=pl.col("patient_key") + _SEP + pl.col("lesion").fill_null("")
    ).drop("lesion")
    wide, how = pivot_features(keyed, source, selector, "largest_roi", cases=cases)
    split = pl.col("patient_key").str.split_exact(_SEP, 1)
    wide = wide.with_columns(
        split.struct.field("field_0").alias("patient_key"),
        split.struct.field("field_1").replace("", None).alias("lesion"),
    )
    features = [
        c for c in wide.columns if c not in ("patient_key", "case_id", "center_id", "lesion")
    ]
    if kind == "per_lesion":
        wide = wide.select("patient_key", "lesion", "case_id", "center_id", *features).sort(
            "patient_key", "lesion", nulls_last=True
        )
        return (
            wide,
            f"one row per patient and lesion: each lesion's {how.removeprefix('one case per patient: ')}",
        )
    aggregated = (
        wide.group_by("patient_key")
        .agg(
            pl.col("case_id").min(),
            pl.col("center_id").first(),
            pl.len().alias("n_lesions"),
            *[pl.col(c).mean() for c in features],
        )
        .sort("patient_key")
    )
    several = aggregated.filter(pl.col("n_lesions") > 1).height
    return aggregated.select("patient_key", "case_id", "center_id", "n_lesions", *features), (
        f"one row per patient: the mean of each feature over the patient's lesions, each lesion's "
        f"case by the largest ROI; {several} of {aggregated.height} patients have several lesions"
    )


def by_reader(con, params_id: str) -> pl.DataFrame:
    """Radiomics values of images and lesions that several readers segmented: patient_key, lesion,
    image_sha256, reader, case_id, feature, value (input for an inter-observer ICC)."""
    long, cases = _long_with_cases(con, "radiomics", params_id)
    keyed = cases.filter(pl.col("reader").is_not_null()).with_columns(
        n_readers=pl.col("reader").n_unique().over("image_sha256", "lesion")
    )
    several = keyed.filter(pl.col("n_readers") > 1).select(
        "case_id", "image_sha256", "lesion", "reader"
    )
    return (
        long.join(several, on="case_id", how="inner")
        .select("patient_key", "lesion", "image_sha256", "reader", "case_id", "feature", "value")
        .sort("patient_key", "lesion", "feature", "reader", nulls_last=True)
    )


def _long_with_cases(con, source: str, selector: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not allowed (allowed: {', '.join(SOURCES)})")
    table, column = SOURCES[source]
    long = con.sql(
        f'select patient_key, case_id, center_id, feature, value, "{column}" from "{table}" '
        f'where "{column}" = {_quote(selector)}'
    ).pl()
    names = {
        r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()
    }
    columns = set()
    if "cases" in names:
        columns = {r[0] for r in con.execute('describe "cases"').fetchall()}
    wanted = ["case_id", "reader", "lesion", "image_sha256", "qc_roi_voxels"]
    if "case_id" in columns:
        select = ", ".join(c if c in columns else f"null as {c}" for c in wanted)
        cases = con.sql(f'select {select} from "cases"').pl()
    else:
        cases = pl.DataFrame(schema=dict.fromkeys(wanted, pl.String))
    cases = cases.with_columns(
        pl.col("reader").cast(pl.String),
        pl.col("lesion").cast(pl.String),
        pl.col("image_sha256").cast(pl.String),
        pl.col("qc_roi_voxels").cast(pl.Int64),
    )
    return long, cases
