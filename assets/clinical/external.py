"""The ``external_features`` table: feature tables computed elsewhere, as one long table.

Input: ``landing/features/<center_id>/<feature_set>.csv`` (also ``.csv.gz``) or ``.parquet``; one
row per case; ``feature_set`` is the file name without its suffix. Radiomics from another
pipeline, deep-learning embeddings, foundation-model features, pathology measurements (e.g. CD3+
and CD8+ densities per tissue region) are all just feature sets.

Columns
    - the id: ``case_id`` (a case of the ``cases`` table) and/or a patient id column: ``patient_id``
      (also accepted: ``patientid``, ``patient``, ``subject_id``, ``subject``, ``id`` — radMLBench
      and many exports call it ``ID``); matched case-insensitively, spaces/hyphens read as ``_``.
    - skipped, never features, counted in ``stats['skipped_columns']``: pyradiomics'
      ``diagnostics_*`` columns, the batch columns ``Image``, ``Mask``, ``Label``,
      ``Label_channel``, ``Reader``, ``Segment``, ``center_id``, and name-like identifier columns
      (``load.IDENTIFIER_COLUMNS``: dropped, listed by name only). A pyradiomics batch output CSV
      therefore lands as it is.
    - every other column is a feature when all its non-empty values are numbers (empty, ``NA``,
      ``NaN`` are missing: a row with ``value`` null); any other column is reported in
      ``stats['non_numeric_columns']`` and skipped — never fatal.

Linking (per row)
    - a ``case_id`` value must be in ``cases`` (``cases_df``); the case's patient_key and center
      are used. Not in cases (or no cases table): quarantined (``unknown_case_id``).
    - otherwise the patient id gives ``patient_key = pseudonymize(center_id, patient_id)`` and
      ``case_id`` = a stable hash of center, feature_set and patient_key (not of the raw id, which
      could be guessed back); a patient's 2nd, 3rd ... distinct row (lesions, sequences) is a
      further case, numbered in file order. When a ``clinical_df`` with rows is given, a patient it
      does not know is quarantined (``unknown_patient``): usually an id spelled differently.
    - no id value: quarantined (``missing_id``). Identical repeated rows merge (``merged``); the
      same ``case_id`` twice with different values: all its rows are quarantined
      (``conflicting_duplicate``).
    Whole files: ``misplaced_file`` (not directly in ``features/<center_id>/``),
    ``unsupported_file_type``, ``unreadable_file``, ``empty_file``, ``missing_id_column``,
    ``duplicate_feature_set`` (the same stem twice in one center).

Row numbers: ``row N`` is the spreadsheet row of a CSV (header = row 1, first case = row 2) and
the 1-based row of a Parquet file. Units for ``stats`` are rows; a rejected file counts as one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import polars as pl

from assets.clinical.load import IDENTIFIER_COLUMNS, MISSING_TOKENS
from dagster_project.mappings import Mapping, convert_number, mapping_for
from dagster_project.pseudonym import normalize_patient_id
from dagster_project.quarantine import Reject

TARGET_TABLE = "external_features"
FEATURE_SUFFIXES = (".csv", ".csv.gz", ".parquet")
CASE_ID_NAMES = ("case_id", "caseid")
PATIENT_ID_NAMES = ("patient_id", "patientid", "patient", "subject_id", "subject", "id")
BATCH_COLUMNS = frozenset(
    {"image", "mask", "label", "label_channel", "reader", "segment", "center_id"}
)
LONG_COLUMNS = (
    "case_id",
    "patient_key",
    "feature_set",
    "feature",
    "value",
    "center_id",
    "source_file",
)
LONG_SCHEMA = {
    "case_id": pl.String,
    "patient_key": pl.String,
    "feature_set": pl.String,
    "feature": pl.String,
    "value": pl.Float64,
    "center_id": pl.String,
    "source_file": pl.String,
}

Pseudonymize = Callable[[str, object], str]


def _normalize(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def feature_set_name(path: Path) -> str | None:
    """The feature set of a file (its name without the suffix), or None for an unsupported file."""
    lowered = path.name.lower()
    for suffix in sorted(FEATURE_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def external_case_id(
    center_id: str, feature_set: str, patient_key: str, occurrence: int = 1
) -> str:
    """Stable case id of a feature-table row linked by patient: hash of center, set, patient (, n)."""
    parts = [center_id, feature_set, patient_key] + ([str(occurrence)] if occurrence > 1 else [])
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _read(path: Path) -> pl.DataFrame:
    if path.name.lower().endswith(".parquet"):
        return pl.read_parquet(path)
    with path.open("rb") as handle:
        first = handle.readline(65536)
    if first[:2] == b"\x1f\x8b":
        first = b""  # gzip: polars decompresses it; the separator is sniffed on plain text only
    separator = max((",", ";", "\t"), key=lambda s: first.count(s.encode())) if first else ","
    return pl.read_csv(path, infer_schema=False, separator=separator, encoding="utf8-lossy")


def apply_mapping(frame: pl.DataFrame, mapping: Mapping) -> pl.DataFrame:
    """A feature table with a mapping's names, value codes and unit factors (the file unchanged)."""
    rules = mapping.rules_by_column(frame.columns)
    columns = []
    for index, name in enumerate(frame.columns):
        rule = rules.get(index)
        if rule is None:
            columns.append(frame.get_column(name))
            continue
        if rule.field is None:
            continue
        series = frame.get_column(name)
        if rule.values or rule.factor is not None:
            texts = [None if v is None else str(v) for v in series.to_list()]
            values = [convert_number(_coded(rule, t), rule.factor) for t in texts]
            series = pl.Series(name, values, dtype=pl.String)
        columns.append(series.alias(rule.field))
    for name, value in mapping.constants.items():
        if name not in [c.name for c in columns]:
            columns.append(pl.Series(name, [str(value)] * frame.height, dtype=pl.String))
    return pl.DataFrame(columns)


def _coded(rule, text: str | None) -> str | None:
    value = rule.code(text)
    return None if value is None else str(value)


def _numeric(series: pl.Series) -> pl.Series | None:
    """The column as Float64 (missing -> null), or None when some non-missing value is not a number."""
    if series.dtype == pl.Boolean:
        return series.cast(pl.Float64)
    if series.dtype.is_numeric():
        out = series.cast(pl.Float64)
        return out.fill_nan(None)
    if series.dtype not in (pl.String, pl.Null):
        return None
    text = series.cast(pl.String).str.strip_chars()
    missing = text.is_null() | text.str.to_lowercase().is_in(list(MISSING_TOKENS))
    values = text.cast(pl.Float64, strict=False)  # missing tokens cast to null, "nan" to NaN
    if (values.is_null() & ~missing).any():
        return None
    return values.fill_nan(None)


def load_external_features(
    landing: Path,
    pseudonymize: Pseudonymize,
    cases_df: pl.DataFrame | None = None,
    clinical_df: pl.DataFrame | None = None,
    mappings: list[Mapping] | None = None,
) -> tuple[pl.DataFrame, list[Reject], dict]:
    """Every feature table under ``landing/features/`` as one long table; see the module docstring.

    ``mappings``: external_features mappings of ``LAKE_HOME/mappings`` (rename, drop, convert
    columns of a matching file before it is read as a feature table)."""
    from dagster_project.lake import iter_files

    root = Path(landing) / "features"
    rejects: list[Reject] = []
    stats: dict = {
        "landed": 0,
        "ingested": 0,
        "quarantined": 0,
        "merged": 0,
        "files": 0,
        "files_quarantined": 0,
        "feature_sets": {},
        "skipped_columns": {},
        "non_numeric_columns": {},
        "dropped_identifier_columns": {},
        "missing_values": 0,
    }
    cases = _case_index(cases_df)
    known_patients = _patient_index(clinical_df)
    seen_sets: set[tuple[str, str]] = set()
    parts: list[pl.DataFrame] = []
    for path in iter_files(root):
        stats["files"] += 1
        shown = "features/" + path.relative_to(root).as_posix()
        relative = path.relative_to(root).parts
        feature_set = feature_set_name(path)

        def file_reject(rule: str, reason: str, shown: str = shown) -> None:
            rejects.append(Reject(shown, TARGET_TABLE, rule, reason))
            stats["landed"] += 1
            stats["files_quarantined"] += 1

        if len(relative) != 2:
            file_reject(
                "misplaced_file",
                f"misplaced_file: {shown} is not directly in a center folder; put feature tables "
                "in features/<center_id>/<feature_set>.csv (or .parquet)",
            )
            continue
        if feature_set is None:
            file_reject(
                "unsupported_file_type",
                f"unsupported_file_type: {shown} is not a .csv, .csv.gz or .parquet feature table; "
                "convert it or move it out of landing/features/",
            )
            continue
        center = relative[0]
        if (center, feature_set) in seen_sets:
            file_reject(
                "duplicate_feature_set",
                f"duplicate_feature_set: {shown} repeats the feature set '{feature_set}' of center "
                f"{center} (another file with the same name was loaded); keep one file per feature set",
            )
            continue
        try:
            frame = _read(path)
        except Exception as exc:  # a parser error is a quarantined file, never a crashed run
            detail = (str(exc).splitlines() or [type(exc).__name__])[0].replace(str(path), shown)
            file_reject(
                "unreadable_file",
                f"unreadable_file: {shown} could not be read ({detail[:200]}); save it as UTF-8 CSV "
                "or Parquet and land it again",
            )
            continue
        mapping = mapping_for(mappings or [], shown, frame.columns)
        if mapping is not None:
            frame = apply_mapping(frame, mapping)
            stats.setdefault("mappings", {})[shown] = mapping.path
        part = _load_file(
            frame,
            path,
            shown,
            center,
            feature_set,
            pseudonymize,
            cases,
            known_patients,
            rejects,
            stats,
        )
        if part is None:
            continue
        seen_sets.add((center, feature_set))
        if part.height:
            parts.append(part)
    long = pl.concat(parts, how="vertical") if parts else pl.DataFrame(schema=LONG_SCHEMA)
    stats["quarantined"] = len(rejects)
    stats["long_rows"] = long.height
    stats["missing_values"] = int(long.get_column("value").null_count())
    stats["rules"] = _count_rules(rejects)
    return long.select(LONG_COLUMNS), rejects, stats


def _case_index(cases_df: pl.DataFrame | None) -> dict[str, tuple[str, str]]:
    if cases_df is None or cases_df.is_empty() or "case_id" not in cases_df.columns:
        return {}
    frame = cases_df.select("case_id", "patient_key", "center_id").unique("case_id", keep="first")
    return {r[0]: (r[1], r[2]) for r in frame.iter_rows()}


def _patient_index(clinical_df: pl.DataFrame | None) -> set[str] | None:
    if clinical_df is None or clinical_df.is_empty() or "patient_key" not in clinical_df.columns:
        return None
    return set(clinical_df.get_column("patient_key").to_list())


def _load_file(
    frame: pl.DataFrame,
    path: Path,
    shown: str,
    center: str,
    feature_set: str,
    pseudonymize: Pseudonymize,
    cases: dict[str, tuple[str, str]],
    known_patients: set[str] | None,
    rejects: list[Reject],
    stats: dict,
) -> pl.DataFrame | None:
    """One feature file -> its long rows (None when the whole file is rejected)."""

    def file_reject(rule: str, reason: str) -> None:
        rejects.append(Reject(shown, TARGET_TABLE, rule, reason))
        stats["landed"] += 1
        stats["files_quarantined"] += 1

    is_csv = not path.name.lower().endswith(".parquet")
    first_row = 2 if is_csv else 1
    frame = frame.with_row_index("__row", offset=first_row)
    data_columns = [c for c in frame.columns if c != "__row"]
    # Blank lines of a CSV are all-null rows: not rows a user wrote.
    frame = (
        frame.filter(~pl.all_horizontal(pl.col(c).is_null() for c in data_columns))
        if data_columns
        else frame
    )
    if frame.is_empty():
        file_reject("empty_file", f"empty_file: {shown} has no data rows; land a file with data")
        return None
    normalized = {_normalize(c): c for c in data_columns}
    case_col = next((normalized[n] for n in CASE_ID_NAMES if n in normalized), None)
    patient_col = next((normalized[n] for n in PATIENT_ID_NAMES if n in normalized), None)
    if case_col is None and patient_col is None:
        file_reject(
            "missing_id_column",
            f"missing_id_column: {shown} has no patient_id or case_id column; add one so each row "
            "can be linked to a patient",
        )
        return None

    skipped: dict[str, list[str] | int] = {}
    features: dict[str, pl.Series] = {}
    non_numeric: list[str] = []
    dropped: list[str] = []
    diagnostics = 0
    for column in data_columns:
        norm = _normalize(column)
        if column in (case_col, patient_col):
            continue
        if norm.startswith("diagnostics_"):
            diagnostics += 1
        elif norm in BATCH_COLUMNS:
            skipped.setdefault("batch", []).append(column)
        elif norm in IDENTIFIER_COLUMNS or norm in PATIENT_ID_NAMES or norm in CASE_ID_NAMES:
            dropped.append(column)
        else:
            values = _numeric(frame.get_column(column))
            if values is None:
                non_numeric.append(column)
            else:
                features[column] = values
    if diagnostics:
        skipped["diagnostics"] = diagnostics
    key = f"{center}/{feature_set}"
    if skipped:
        stats["skipped_columns"][key] = skipped
    if non_numeric:
        stats["non_numeric_columns"][key] = non_numeric
    if dropped:
        stats["dropped_identifier_columns"][key] = dropped

    ids = _row_ids(frame, case_col, patient_col)
    rows = frame.get_column("__row").to_list()
    feature_frame = (
        pl.DataFrame(features) if features else pl.DataFrame({"__none": [None] * frame.height})
    )
    hashes = feature_frame.hash_rows(seed=0).to_list()
    linked: list[tuple[int, str, str, str]] = []  # (position, case_id, patient_key, center)
    occurrences: dict[str, list[tuple[int, int]]] = {}  # patient_key -> [(position, row hash)]
    by_case: dict[str, list[int]] = {}
    stats["landed"] += frame.height
    for position, (number, (case_id, patient_id)) in enumerate(zip(rows, ids, strict=True)):
        where = f"{shown} row {number}"
        if case_id is not None:
            found = cases.get(case_id)
            if found is None:
                rejects.append(
                    Reject(
                        shown,
                        TARGET_TABLE,
                        "unknown_case_id",
                        f"unknown_case_id: {where} has a case_id that is not in the cases table "
                        f"({len(cases)} cases known); use the case_id of a landed image/mask pair, "
                        "or link the row by patient_id instead",
                        record=f"row {number}",
                    )
                )
                continue
            by_case.setdefault(case_id, []).append(position)
            linked.append((position, case_id, found[0], found[1]))
            continue
        if patient_id is None:
            wanted = " or ".join(c for c in (case_col, patient_col) if c)
            rejects.append(
                Reject(
                    shown,
                    TARGET_TABLE,
                    "missing_id",
                    f"missing_id: {where} has no {wanted} value (each row needs a patient_id or "
                    "case_id to link it to a patient; fill it in and land the file again)",
                    record=f"row {number}",
                )
            )
            continue
        patient_key = pseudonymize(center, patient_id)
        if known_patients is not None and patient_key not in known_patients:
            rejects.append(
                Reject(
                    shown,
                    TARGET_TABLE,
                    "unknown_patient",
                    f"unknown_patient: {where}: the {patient_col} value matches no patient of center "
                    f"{center} in the clinical table (check how the id is spelled in both files, or "
                    "land the patient's clinical row first)",
                    record=f"row {number}",
                )
            )
            continue
        seen = occurrences.setdefault(patient_key, [])
        if any(h == hashes[position] for _, h in seen):
            stats["merged"] += 1  # an identical repeated row: the same case again
            continue
        seen.append((position, hashes[position]))
        linked.append(
            (
                position,
                external_case_id(center, feature_set, patient_key, len(seen)),
                patient_key,
                center,
            )
        )

    # The same case_id twice: identical rows merge, differing rows are all quarantined.
    drop: set[int] = set()
    for positions in by_case.values():
        if len(positions) < 2:
            continue
        if len({hashes[p] for p in positions}) == 1:
            drop.update(positions[1:])
            stats["merged"] += len(positions) - 1
            continue
        drop.update(positions)
        for p in positions:
            others = [str(rows[o]) for o in positions if o != p]
            rejects.append(
                Reject(
                    shown,
                    TARGET_TABLE,
                    "conflicting_duplicate",
                    f"conflicting_duplicate: {shown} row {rows[p]} and row{'s' if len(others) > 1 else ''} "
                    f"{', '.join(others)} have the same case_id with different feature values (keep "
                    "one row per case; all of these rows are quarantined until the file is corrected)",
                    record=f"row {rows[p]}",
                )
            )
    linked = [item for item in linked if item[0] not in drop]
    stats["ingested"] += len(linked)
    stats["feature_sets"][key] = {"rows": len(linked), "features": len(features)}
    if not linked or not features:
        return pl.DataFrame(schema=LONG_SCHEMA)
    positions = [item[0] for item in linked]
    wide = pl.DataFrame(features)[positions].with_columns(
        pl.Series("case_id", [item[1] for item in linked], dtype=pl.String),
        pl.Series("patient_key", [item[2] for item in linked], dtype=pl.String),
        pl.Series("center_id", [item[3] for item in linked], dtype=pl.String),
        pl.lit(feature_set).alias("feature_set"),
        pl.lit(shown).alias("source_file"),
    )
    index = ["case_id", "patient_key", "feature_set", "center_id", "source_file"]
    long = wide.unpivot(on=list(features), index=index, variable_name="feature", value_name="value")
    return long.select(LONG_COLUMNS).cast(LONG_SCHEMA)


def _row_ids(frame: pl.DataFrame, case_col: str | None, patient_col: str | None) -> list[tuple]:
    def texts(column: str | None) -> list[str | None]:
        if column is None:
            return [None] * frame.height
        out = []
        for value in frame.get_column(column).to_list():
            text = None if value is None else normalize_patient_id(value)  # 123.0 -> "123"
            out.append(None if text is None or text.lower() in MISSING_TOKENS else text)
        return out

    return list(zip(texts(case_col), texts(patient_col), strict=True))


def _count_rules(rejects: list[Reject]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reject in rejects:
        counts[reject.rule] = counts.get(reject.rule, 0) + 1
    return dict(sorted(counts.items()))
