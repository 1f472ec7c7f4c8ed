"""Clinical outcomes: lifelines' real survival datasets land and round-trip; every quarantine rule
gives its exact reason; schema files; versioning (as-of through DuckDB); the cohort SQL files."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest
import yaml

from assets.clinical.history import as_of_sql, clinical_as_of, current_from_history, update_history
from assets.clinical.load import clinical_files, load_centers, load_clinical
from assets.clinical.schema import SchemaError, load_schema, schema_for
from dagster_project.pseudonym import Pseudonymizer

PSEUDO = Pseudonymizer(b"test")
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
T1 = datetime(2025, 3, 8, 8, 0, tzinfo=UTC)

# lifelines' bundled datasets, with the schema a user would write for their survival columns.
DATASETS = {
    "rossi": {"week": {"type": "duration", "unit": "weeks"}, "arrest": {"type": "event"}},
    "gbsg2": {
        "time": {"type": "duration", "unit": "days"},
        "cens": {"type": "event"},
        "horTh": {"type": "category", "allowed": ["no", "yes"]},
        "tgrade": {"type": "category", "allowed": ["I", "II", "III"]},
    },
    "lung": {"time": {"type": "duration", "unit": "days"}, "status": {"type": "event"}},
}


def _lifelines(name: str) -> pd.DataFrame:
    from lifelines import datasets

    frame = getattr(datasets, f"load_{name}")()
    ids = pd.DataFrame(
        {
            "patient_id": [f"{name.upper()}-{i:04d}" for i in range(len(frame))],
            "center_id": ["C1" if i % 3 else "C2" for i in range(len(frame))],
        }
    )
    return pd.concat([ids, frame.reset_index(drop=True)], axis=1)


def _landing(tmp_path: Path) -> Path:
    landing = tmp_path / "landing"
    (landing / "clinical").mkdir(parents=True)
    return landing


def _write_csv(landing: Path, name: str, text: str) -> Path:
    path = landing / "clinical" / name
    path.write_text(text, encoding="utf-8")
    return path


def _load(landing: Path, **kwargs):
    return load_clinical(
        clinical_files(landing), landing, PSEUDO, loaded_at=kwargs.pop("loaded_at", T0), **kwargs
    )


def _values_equal(ours: list, theirs: list) -> bool:
    """Element-wise equality where pandas NaN equals our null."""
    for a, b in zip(ours, theirs, strict=True):
        if b is None or (isinstance(b, float) and np.isnan(b)):
            if a is not None:
                return False
        elif a != b:
            return False
    return True


# --- lifelines datasets round-trip --------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_lifelines_dataset_round_trips(tmp_path, name, fmt):
    source = _lifelines(name)
    landing = _landing(tmp_path)
    path = landing / "clinical" / f"{name}.{fmt}"
    if fmt == "csv":
        source.to_csv(path, index=False)
    else:
        source.to_excel(path, index=False)
    (landing / "clinical" / f"{name}.schema.yaml").write_text(
        yaml.safe_dump({"columns": DATASETS[name]})
    )

    table, rejects, stats = _load(landing)

    assert rejects == []
    assert stats["landed"] == len(source) == stats["ingested"] == table.height
    assert stats["quarantined"] == stats["merged"] == 0
    expected_keys = [PSEUDO(c, p) for c, p in zip(source.center_id, source.patient_id, strict=True)]
    assert table.get_column("patient_key").to_list() == expected_keys
    assert table.get_column("center_id").to_list() == source.center_id.tolist()
    assert "patient_id" not in table.columns
    data_columns = [c for c in source.columns if c not in ("patient_id", "center_id")]
    assert table.columns == ["patient_key", "center_id", *data_columns, "source_file", "loaded_at"]
    for column in data_columns:
        assert _values_equal(table.get_column(column).to_list(), source[column].tolist()), column
    for column, spec in DATASETS[name].items():
        if spec["type"] == "event":
            assert table.schema[column] == pl.Int64
            assert set(table.get_column(column).drop_nulls().unique().to_list()) <= {0, 1}
    assert stats["units"] == {c: s["unit"] for c, s in DATASETS[name].items() if "unit" in s}
    assert table.get_column("source_file").unique().to_list() == [f"clinical/{name}.{fmt}"]


def test_csv_types_are_inferred_like_pandas(tmp_path):
    """Without a schema, integer, float and text columns get the types pandas gives the same file."""
    source = _lifelines("gbsg2")
    landing = _landing(tmp_path)
    source.to_csv(landing / "clinical" / "gbsg2.csv", index=False)
    table, rejects, _ = _load(landing)
    reference = pd.read_csv(landing / "clinical" / "gbsg2.csv")
    assert rejects == []
    kinds = {"int64": pl.Int64, "float64": pl.Float64, "object": pl.String}
    for column in source.columns[2:]:
        assert table.schema[column] == kinds[str(reference[column].dtype)], column


# --- quarantine rules, each with its exact reason -----------------------------------------------
def _rossi_with(
    landing: Path, edits: dict[tuple[int, str], object], name: str = "rossi.csv"
) -> pd.DataFrame:
    frame = _lifelines("rossi").astype(object)
    frame = frame.rename(columns={"week": "follow_up_weeks_time", "arrest": "arrest_event"})
    for (row, column), value in edits.items():
        frame.loc[row, column] = value
    frame.to_csv(landing / "clinical" / name, index=False)
    return frame


def _only(rejects, rule):
    found = [r for r in rejects if r.rule == rule]
    assert len(found) == 1, [str(r) for r in rejects]
    return found[0]


def _assert_no_identifier(rejects, frame: pd.DataFrame):
    ids = [str(v) for v in frame["patient_id"].dropna() if str(v).strip()]
    for reject in rejects:
        assert not any(pid in reject.reason or pid in reject.record for pid in ids), reject.reason


def test_rule_missing_id(tmp_path):
    landing = _landing(tmp_path)
    frame = _rossi_with(landing, {(4, "patient_id"): "", (9, "center_id"): None})
    table, rejects, stats = _load(landing)
    assert [(r.rule, r.record) for r in rejects] == [
        ("missing_id", "row 6"),
        ("missing_id", "row 11"),
    ]
    assert rejects[0].reason == (
        "missing_id: clinical/rossi.csv row 6 has no patient_id (every clinical row needs patient_id "
        "and center_id; fill in the patient_id and land the file again)"
    )
    assert rejects[1].reason == (
        "missing_id: clinical/rossi.csv row 11 has no center_id (every clinical row needs patient_id "
        "and center_id; fill in the center_id and land the file again)"
    )
    assert rejects[0].source_path == "clinical/rossi.csv" and rejects[0].target_table == "clinical"
    assert table.height == 430 and stats["landed"] == table.height + stats["quarantined"]
    _assert_no_identifier(rejects, frame)


def test_rule_unknown_center(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "centers.yaml").write_text("centers:\n  C1: {name: Hospital one}\n")
    centers = load_centers(home)
    assert centers == {"C1"}
    landing = _landing(tmp_path)
    frame = _rossi_with(landing, {})
    table, rejects, stats = _load(landing, centers=centers)
    c2_rows = int((frame.center_id == "C2").sum())
    assert stats["quarantined"] == c2_rows and table.height == len(frame) - c2_rows
    assert rejects[0].rule == "unknown_center" and rejects[0].record == "row 2"
    assert rejects[0].reason == (
        "unknown_center: clinical/rossi.csv row 2 has center_id 'C2', which is not in centers.yaml "
        "(known: C1); add the center to LAKE_HOME/centers.yaml or correct the center_id"
    )
    _assert_no_identifier(rejects, frame)


def test_load_centers_shapes(tmp_path):
    assert load_centers(tmp_path) is None
    for text in ("[C1, C2]", "centers: [C1, C2]", "C1: {}\nC2: {name: x}\n"):
        (tmp_path / "centers.yaml").write_text(text)
        assert load_centers(tmp_path) == {"C1", "C2"}
    (tmp_path / "centers.yaml").write_text("centers: 3")
    with pytest.raises(ValueError, match="centers.yaml"):
        load_centers(tmp_path)


def test_rule_unparsable_number_few_strays_keep_the_column_numeric(tmp_path):
    landing = _landing(tmp_path)
    frame = _rossi_with(landing, {(2, "age"): "unknown", (30, "age"): "about 40"})
    table, rejects, stats = _load(landing)
    assert table.schema["age"] == pl.Int64
    assert [(r.rule, r.record) for r in rejects] == [
        ("unparsable_number", "row 4"),
        ("unparsable_number", "row 32"),
    ]
    assert rejects[0].reason == (
        "unparsable_number: clinical/rossi.csv row 4 column 'age' has 'unknown', not a number (430 of "
        "432 values in the column are numbers; correct the value or leave the cell empty, or declare "
        "the column as string in a schema file)"
    )
    kept = frame.drop(index=[2, 30])
    assert table.get_column("age").to_list() == kept.age.astype(int).tolist()
    assert stats["column_types"]["age"] == "int (inferred)"
    _assert_no_identifier(rejects, frame)


def test_many_strays_make_a_text_column_and_quarantine_nothing(tmp_path):
    landing = _landing(tmp_path)
    edits = {(i, "prio"): "n/k" if i % 2 else "few" for i in range(0, 100)}  # 50 of 432 are text
    _rossi_with(landing, edits)
    table, rejects, stats = _load(landing)
    assert (
        rejects == []
        and table.schema["prio"] == pl.String
        and stats["column_types"]["prio"] == "string (inferred)"
    )


def test_rule_unparsable_date(tmp_path):
    landing = _landing(tmp_path)
    dates = [f"2020-01-{(i % 28) + 1:02d}" for i in range(432)]
    dates[7] = "2020-02-30"
    frame = _rossi_with(landing, {})
    frame["surgery_date"] = dates
    frame.to_csv(landing / "clinical" / "rossi.csv", index=False)
    table, rejects, _ = _load(landing)
    assert table.schema["surgery_date"] == pl.Date
    reject = _only(rejects, "unparsable_date")
    assert reject.record == "row 9"
    assert reject.reason == (
        "unparsable_date: clinical/rossi.csv row 9 column 'surgery_date' has '2020-02-30', not a date "
        "in the format YYYY-MM-DD (431 of 432 values in the column are dates; correct the value, or "
        "give the date format in a schema file)"
    )


def test_schema_date_format(tmp_path):
    landing = _landing(tmp_path)
    _write_csv(
        landing,
        "dates.csv",
        "patient_id,center_id,surgery_date\nA,C1,31/01/2020\nB,C1,2020-01-31\n",
    )
    (landing / "clinical" / "schema.yaml").write_text(
        "columns:\n  surgery_date: {type: date, format: '%d/%m/%Y'}\n"
    )
    table, rejects, _ = _load(landing)
    assert table.get_column("surgery_date").to_list() == [datetime(2020, 1, 31).date()]
    assert _only(rejects, "unparsable_date").reason == (
        "unparsable_date: clinical/dates.csv row 3 column 'surgery_date' has '2020-01-31', not a date in "
        "the format %d/%m/%Y (declared date in clinical/schema.yaml; correct the value, or give the "
        "date format in a schema file)"
    )


def test_rule_negative_duration(tmp_path):
    landing = _landing(tmp_path)
    frame = _rossi_with(landing, {(0, "follow_up_weeks_time"): -3})
    table, rejects, stats = _load(landing)
    reject = _only(rejects, "negative_duration")
    assert reject.record == "row 2"
    assert reject.reason == (
        "negative_duration: clinical/rossi.csv row 2 column 'follow_up_weeks_time' is -3, but a "
        "follow-up time cannot be negative (correct the value or leave the cell empty)"
    )
    assert stats["column_types"]["follow_up_weeks_time"] == "duration (name)"
    assert table.height == len(frame) - 1


def test_rule_invalid_event(tmp_path):
    landing = _landing(tmp_path)
    _rossi_with(landing, {(5, "arrest_event"): 2, (6, "arrest_event"): "yes"})
    _, rejects, stats = _load(landing)
    assert [(r.rule, r.record) for r in rejects] == [
        ("invalid_event", "row 7"),
        ("invalid_event", "row 8"),
    ]
    assert rejects[0].reason == (
        "invalid_event: clinical/rossi.csv row 7 column 'arrest_event' is '2', but an event must be 0 "
        "or 1 (recode it: 1 = the event happened, 0 = censored)"
    )
    assert stats["column_types"]["arrest_event"] == "event (name)"


def test_rule_conflicting_duplicate_quarantines_both_and_identical_rows_merge(tmp_path):
    landing = _landing(tmp_path)
    frame = _lifelines("rossi").head(6)
    rows = pd.concat([frame, frame.iloc[[1]], frame.iloc[[3]].assign(age=99)], ignore_index=True)
    rows.to_csv(landing / "clinical" / "rossi.csv", index=False)
    table, rejects, stats = _load(landing)
    assert [(r.rule, r.record) for r in rejects] == [
        ("conflicting_duplicate", "row 5"),
        ("conflicting_duplicate", "row 9"),
    ]
    assert rejects[0].reason == (
        "conflicting_duplicate: clinical/rossi.csv row 5 and row 9 are the same patient with different "
        "values in 'age' (keep one row per patient; all of these rows are quarantined until the file "
        "is corrected)"
    )
    assert table.height == 5 and stats["merged"] == 1
    assert stats["landed"] == 8 == stats["ingested"] + stats["quarantined"] + stats["merged"]
    _assert_no_identifier(rejects, rows)


def test_schema_rules_required_allowed_bool(tmp_path):
    landing = _landing(tmp_path)
    _write_csv(
        landing,
        "gist.csv",
        "patient_id,center_id,sex,smoker,mi_high\nA,C1,F,yes,1\nB,C1,X,no,0\nC,C1,M,maybe,1\nD,C1,M,no,\n",
    )
    (landing / "clinical" / "gist.schema.yaml").write_text(
        "columns:\n  sex: {type: category, allowed: [F, M]}\n  smoker: {type: bool}\n"
        "  mi_high: {type: int, allowed: [0, 1], required: true}\n"
    )
    table, rejects, _ = _load(landing)
    assert table.get_column("smoker").to_list() == [True]
    assert [(r.rule, r.record) for r in rejects] == [
        ("value_not_allowed", "row 3"),
        ("unparsable_bool", "row 4"),
        ("missing_value", "row 5"),
    ]
    assert rejects[0].reason == (
        "value_not_allowed: clinical/gist.csv row 3 column 'sex' has 'X', not one of the values "
        "allowed by clinical/gist.schema.yaml (F, M); correct the value or extend allowed"
    )
    assert rejects[1].reason == (
        "unparsable_bool: clinical/gist.csv row 4 column 'smoker' has 'maybe', not true/false/yes/no/1/0 "
        "(declared bool in clinical/gist.schema.yaml; correct the value or leave the cell empty)"
    )
    assert rejects[2].reason == (
        "missing_value: clinical/gist.csv row 5 column 'mi_high' is empty, but "
        "clinical/gist.schema.yaml marks it required (fill it in, or drop required: true)"
    )


def test_a_row_with_several_problems_names_them_all(tmp_path):
    landing = _landing(tmp_path)
    _write_csv(landing, "x.csv", "patient_id,center_id,os_event,os_months\nA,C1,3,-1\n")
    _, rejects, _ = _load(landing)
    assert len(rejects) == 1 and rejects[0].rule == "invalid_event"
    assert rejects[0].reason.endswith(
        ". Also: negative_duration: clinical/x.csv row 2 column 'os_months' is -1, but a follow-up "
        "time cannot be negative (correct the value or leave the cell empty)"
    )


def test_file_level_rules(tmp_path):
    landing = _landing(tmp_path)
    _write_csv(landing, "a_no_center.csv", "patient_id,age\nA,50\n")
    _write_csv(landing, "b_empty.csv", "")
    _write_csv(landing, "c_dup.csv", "patient_id,center_id,age,age\nA,C1,1,2\n")
    (landing / "clinical" / "d_broken.xlsx").write_bytes(b"this is not a zip archive")
    _write_csv(landing, "e_schema.csv", "patient_id,center_id,age\nA,C1,50\n")
    (landing / "clinical" / "e_schema.schema.yaml").write_text("columns:\n  age: {type: number}\n")
    for i, path in enumerate(sorted((landing / "clinical").iterdir())):
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))
    table, rejects, stats = _load(landing)
    reasons = {r.rule: r.reason for r in rejects}
    assert all(r.record == "" for r in rejects)
    assert reasons["missing_id_column"].startswith(
        "missing_id_column: clinical/a_no_center.csv has no center_id column (found: patient_id, age); "
        "every clinical file needs patient_id and center_id columns. To land it as it is, "
    )
    skeleton = yaml.safe_load(reasons["missing_id_column"].split("LAKE_HOME/mappings:\n", 1)[1])
    assert skeleton["target"] == "clinical"
    assert skeleton["columns"] == {"patient_id": "patient_id", "age": "age"}
    assert (
        reasons["empty_file"]
        == "empty_file: clinical/b_empty.csv has no header and no rows; land a file with data"
    )
    assert reasons["duplicate_column"] == (
        "duplicate_column: clinical/c_dup.csv has the column 'age' more than once; rename or remove the "
        "copy and land the file again"
    )
    assert reasons["unreadable_file"] == (
        "unreadable_file: clinical/d_broken.xlsx could not be read as a XLSX workbook (File is not a zip "
        "file); save it as UTF-8 CSV or .xlsx and land it again"
    )
    assert reasons["invalid_schema"] == (
        "invalid_schema: clinical/e_schema.csv was not loaded: clinical/e_schema.schema.yaml: "
        "columns.age.type is 'number' (allowed: int, float, string, date, bool, event, duration, category)"
    )
    assert (
        table.height == 0
        and stats["landed"] == 5 == stats["quarantined"] == stats["files_quarantined"]
    )
    assert str(tmp_path) not in " ".join(reasons.values())


def test_schema_file_validation_names_file_key_and_allowed(tmp_path):
    cases = {
        "colums: {}\n": "s.yaml: unknown key 'colums' (allowed: columns, description)",
        "columns: {age: {type: int, units: years}}\n": (
            "s.yaml: columns.age: unknown key 'units' (allowed: type, unit, allowed, format, required, description)"
        ),
        "columns: {age: {type: int, format: '%Y'}}\n": "s.yaml: columns.age.format is only allowed with type: date",
        "columns: {age: {required: 'yes'}}\n": "s.yaml: columns.age.required must be true or false",
        "columns: {sex: {allowed: F}}\n": "s.yaml: columns.sex.allowed must be a non-empty list of values",
        "columns: [age]\n": "s.yaml: key 'columns' must be a non-empty mapping of column name -> entry",
    }
    for text, message in cases.items():
        path = tmp_path / "s.yaml"
        path.write_text(text)
        with pytest.raises(SchemaError) as info:
            load_schema(path, tmp_path)
        assert str(info.value) == message


def test_file_schema_overrides_shared_schema_per_column(tmp_path):
    landing = _landing(tmp_path)
    data = _write_csv(landing, "a.csv", "patient_id,center_id\n")
    (landing / "clinical" / "schema.yaml").write_text(
        "columns:\n  age: {type: int, unit: years}\n  grade: {type: int}\n"
    )
    (landing / "clinical" / "a.schema.yaml").write_text(
        "columns:\n  grade: {type: category, allowed: [G1, G2]}\n"
    )
    schema = schema_for(data, landing)
    assert schema.get("age").type == "int" and schema.get("age").unit == "years"
    assert (
        schema.get("grade").type == "category"
        and schema.get("grade").source == "clinical/a.schema.yaml"
    )


def test_identifier_columns_are_dropped(tmp_path):
    landing = _landing(tmp_path)
    _write_csv(
        landing,
        "ids.csv",
        "patient_id,center_id,Patient Name,DOB,MRN,age\nP-1,C1,Jane Roe,1950-02-03,MRN77,70\n",
    )
    table, rejects, stats = _load(landing)
    assert rejects == [] and table.columns == [
        "patient_key",
        "center_id",
        "age",
        "source_file",
        "loaded_at",
    ]
    assert stats["dropped_identifier_columns"] == ["DOB", "MRN", "Patient Name"]
    text = str(table.to_dicts())
    assert not any(v in text for v in ("Jane", "1950-02-03", "MRN77", "P-1"))


# --- versioning ---------------------------------------------------------------------------------
def test_newer_file_replaces_values_and_history_reads_the_earlier_version(tmp_path, lake):
    from dagster_project.lake import Lake

    assert isinstance(lake, Lake)
    landing = lake.landing
    (landing / "clinical").mkdir(parents=True, exist_ok=True)
    source = _lifelines("rossi")
    first = landing / "clinical" / "rossi_2024.csv"
    source.to_csv(first, index=False)
    os.utime(first, (1_700_000_000, 1_700_000_000))

    table0, rejects0, _ = _load(landing, loaded_at=T0)
    assert rejects0 == []
    history0 = update_history(None, table0, T0)
    lake.write_table("clinical", table0, keep_history=True)
    lake.write_table("clinical_history", history0)

    # A newer follow-up file: patient 0 re-arrested at week 30; only the columns that changed.
    update = pd.DataFrame(
        {
            "patient_id": [source.patient_id[0]],
            "center_id": [source.center_id[0]],
            "week": [30],
            "arrest": [1],
        }
    )
    second = landing / "clinical" / "rossi_update.csv"
    update.to_csv(second, index=False)
    os.utime(second, (1_700_000_100, 1_700_000_100))
    table1, rejects1, stats1 = _load(landing, loaded_at=T1, previous=table0)
    assert rejects1 == [] and stats1["superseded"] == 1 and stats1["merged"] == 1
    assert stats1["landed"] == len(source) + 1 == stats1["ingested"] + stats1["merged"]
    key0 = PSEUDO(source.center_id[0], source.patient_id[0])
    row = table1.filter(pl.col("patient_key") == key0).to_dicts()[0]
    assert (row["week"], row["arrest"], row["age"]) == (
        30,
        1,
        source.age[0],
    )  # age kept from the older file
    assert row["source_file"] == "clinical/rossi_update.csv" and row["loaded_at"] == T1
    unchanged = table1.filter(pl.col("patient_key") != key0)
    assert unchanged.get_column("loaded_at").unique().to_list() == [T0]  # previous stamp kept

    history1 = update_history(history0, table1, T1)
    lake.write_table("clinical", table1, keep_history=True)
    lake.write_table("clinical_history", history1)
    assert history1.height == len(source) + 1
    assert (
        current_from_history(history1)
        .drop("source_file")
        .sort("patient_key")
        .equals(table1.drop("source_file", "loaded_at").sort("patient_key"))
    )

    # "clinical as of" a time between the two loads, through DuckDB over the lake's Parquet.
    con = duckdb.connect()
    con.execute(
        f"create view clinical_history as select * from read_parquet('{lake.table_glob('clinical_history')}')"
    )
    between = datetime(2025, 3, 4, tzinfo=UTC)
    earlier = con.sql(as_of_sql(between) + " order by patient_key").pl()
    now = con.sql(as_of_sql(datetime(2025, 3, 9, tzinfo=UTC)) + " order by patient_key").pl()
    before_first = con.sql(as_of_sql(datetime(2025, 2, 1, tzinfo=UTC))).pl()
    assert before_first.height == 0
    was = earlier.filter(pl.col("patient_key") == key0).to_dicts()[0]
    assert (was["week"], was["arrest"]) == (source.week[0], source.arrest[0])
    assert now.filter(pl.col("patient_key") == key0).get_column("week").to_list() == [30]
    assert earlier.height == now.height == len(source)
    assert clinical_as_of(history1, between).sort("patient_key").equals(earlier.sort("patient_key"))

    # The same earlier version through the Parquet history that write_table(keep_history=True) keeps.
    versions = lake.history("clinical")
    assert len(versions) == 1
    old = pl.read_parquet(versions[0]).filter(pl.col("patient_key") == key0).to_dicts()[0]
    assert old["week"] == source.week[0]

    # A re-run over the same files changes nothing.
    table2, _, _ = _load(landing, loaded_at=datetime(2025, 3, 9, tzinfo=UTC), previous=table1)
    assert table2.equals(table1)
    assert update_history(history1, table2, datetime(2025, 3, 9, tzinfo=UTC)).equals(history1)


def test_history_closes_patients_that_disappear_and_adds_new_columns(tmp_path):
    landing = _landing(tmp_path)
    _write_csv(landing, "a.csv", "patient_id,center_id,age\nA,C1,50\nB,C1,60\n")
    table0, _, _ = _load(landing, loaded_at=T0)
    history0 = update_history(None, table0, T0)
    (landing / "clinical" / "a.csv").write_text("patient_id,center_id,age,grade\nA,C1,50,2\n")
    table1, _, _ = _load(landing, loaded_at=T1)
    history1 = update_history(history0, table1, T1)
    key_a, key_b = PSEUDO("C1", "A"), PSEUDO("C1", "B")
    rows = {(r["patient_key"], r["valid_from"]): r for r in history1.to_dicts()}
    assert rows[(key_b, T0)]["valid_to"] == T1 and rows[(key_b, T0)]["is_current"] is False
    assert rows[(key_a, T0)]["valid_to"] == T1 and rows[(key_a, T1)]["grade"] == 2
    assert current_from_history(history1).get_column("patient_key").to_list() == [key_a]


# --- cohort SQL and the inventory view over small tables --------------------------------------
def _small_lake(lake, landing_rows: str, pseudo: Pseudonymizer = PSEUDO) -> None:
    landing = lake.landing
    (landing / "clinical").mkdir(parents=True, exist_ok=True)
    (landing / "clinical" / "clinical.csv").write_text(landing_rows)
    table, rejects, _ = load_clinical(clinical_files(landing), landing, pseudo, loaded_at=T0)
    assert rejects == []
    lake.write_table("clinical", table)
    k = {
        p: pseudo(c, p)
        for p, c in (("P1", "C1"), ("P2", "C1"), ("P3", "C2"), ("P4", "C2"), ("P5", "C1"))
    }
    series = pl.DataFrame(
        {
            "series_id": ["S1", "S2", "S3", "S4", "S5", "S6"],
            "patient_key": [k["P1"], k["P1"], k["P2"], k["P3"], k["P4"], k["P5"]],
            "center_id": ["C1", "C1", "C1", "C2", "C2", "C1"],
            "modality": ["CT", "CT", "CT", "CT", "MR", "CT"],
            "manufacturer": ["GE", "GE", "Siemens", "Philips", "Siemens", None],
            "slice_thickness_mm": [5.0, 5.0, 1.25, 3.0, 4.0, 5.02],
            "pixel_spacing_mm": [0.7, 0.7, 0.8, 0.7, 0.5, 0.7],
            "n_slices": [40, 42, 200, 60, 24, 38],
            "acquired_on": pl.Series(
                ["2020-01-01", "2020-01-01", "2021-05-02", "2019-03-03", "2019-04-04", "2022-06-06"]
            ).str.to_date(),
            "source_path": ["imaging/x"] * 6,
            "phase": [
                "portal_venous",
                "arterial",
                "portal_venous",
                "portal_venous",
                "unknown",
                None,
            ],
        }
    )
    cases = pl.DataFrame(
        {
            "case_id": ["K1", "K2", "K3", "K4", "K5", "K6"],
            "patient_key": [k["P1"], k["P1"], k["P2"], k["P3"], k["P4"], k["P5"]],
            "center_id": ["C1", "C1", "C1", "C2", "C2", "C1"],
            "series_id": ["S1", "S2", "S3", "S4", "S5", "S6"],
            "mask_source": ["nifti"] * 6,
            "label": [1] * 6,
            "image_sha256": ["a"] * 6,
            "mask_sha256": ["b"] * 6,
            "phase": [
                None,
                None,
                None,
                None,
                None,
                "portal_venous",
            ],  # P5's phase only in cases.csv
        }
    )
    lake.write_table("imaging_series", series)
    lake.write_table("cases", cases)


CLINICAL_DEMO = (
    "patient_id,center_id,age,sex,mi_high,tumor_location,tumor_size_cm,rfs_months,rfs_event,os_months,"
    "os_event,surgery_date\n"
    "P1,C1,60,F,1,stomach,5.5,20,0,24,0,2020-01-10\n"  # long follow-up
    "P2,C1,55,M,0,small_bowel,3.1,6,1,8,0,2021-05-10\n"  # short, but an event
    "P3,C2,70,M,1,stomach,8.0,6,0,9,0,2019-03-10\n"  # short, no event -> out
    "P4,C2,48,F,0,stomach,2.0,30,0,30,0,2019-04-10\n"  # MR only -> out
    "P5,C1,66,F,1,rectum,4.4,13,0,,,2022-06-10\n"  # portal venous by cases.phase, no OS
)


def test_cohort_sql_files_run_over_small_tables(lake):
    from dagster_project.catalog import create_views
    from radlake.demo.generator import write_demo_definitions

    _small_lake(lake, CLINICAL_DEMO)
    write_demo_definitions(lake.home)  # the demo's cohorts live in the demo lake's own sql/
    con = duckdb.connect()
    report = create_views(con, lake)
    assert (lake.home / "sql" / "cohorts" / "gist_portal_venous.sql").exists()
    assert {"gist_portal_venous", "all_ct_with_outcome", "dataset_inventory"} <= set(
        report.sql_views
    ), report.failed

    k = {p: PSEUDO(c, p) for p, c in (("P1", "C1"), ("P2", "C1"), ("P3", "C2"), ("P5", "C1"))}
    gist = con.sql("select * from gist_portal_venous").pl()
    assert sorted(gist.get_column("patient_key").to_list()) == sorted([k["P1"], k["P2"], k["P5"]])
    p1 = gist.filter(pl.col("patient_key") == k["P1"]).to_dicts()[0]
    assert (
        p1["follow_up_months"],
        p1["had_event"],
        p1["n_portal_venous_cases"],
        p1["mi_high"],
    ) == (24, False, 1, 1)
    assert "source_file" not in gist.columns and "patient_id" not in gist.columns

    outcome = con.sql("select patient_key, n_ct_cases, phases from all_ct_with_outcome").pl()
    assert outcome.sort("patient_key").rows() == sorted(
        [
            (k["P1"], 2, "arterial, portal_venous"),
            (k["P2"], 1, "portal_venous"),
            (k["P3"], 1, "portal_venous"),
        ]
    )

    inventory = con.sql("select * from dataset_inventory").pl()
    c1_ge = inventory.filter(
        (pl.col("center_id") == "C1") & (pl.col("manufacturer") == "GE")
    ).to_dicts()
    assert len(c1_ge) == 1
    assert (
        c1_ge[0]["n_series"],
        c1_ge[0]["n_cases"],
        c1_ge[0]["n_patients"],
        c1_ge[0]["slice_thickness_mm"],
    ) == (
        2,
        2,
        1,
        5.0,
    )
    assert (
        inventory.get_column("n_series").sum() == 6 and inventory.get_column("n_cases").sum() == 6
    )
    assert "unknown" in inventory.get_column("manufacturer").to_list()


def test_cohort_sql_parses_as_plain_select():
    from dagster_project.catalog import SQL_DIR, read_select
    from radlake.demo.generator import DEMO_DIR

    cohorts = sorted((SQL_DIR / "cohorts").glob("*.sql"))
    cohorts += sorted((DEMO_DIR / "sql" / "cohorts").glob("*.sql"))
    assert len(cohorts) >= 3
    for path in cohorts + [SQL_DIR / "views" / "dataset_inventory.sql"]:
        select = read_select(path)
        assert "create " not in select.lower(), path
        statements = duckdb.extract_statements(select)
        assert len(statements) == 1 and statements[0].type == duckdb.StatementType.SELECT, path


# --- the Dagster layer and the GX suite drafts --------------------------------------------------
def test_dagster_assets_materialize_clinical_features_and_cohorts(lake_home):
    import dagster as dg

    from assets.clinical import defs as clinical_defs
    from dagster_project.lake import Lake
    from dagster_project.quarantine import read_quarantine
    from dagster_project.resources import LakeResource
    from dagster_project.sql_assets import sql_file_asset
    from quality.suites import run_suite
    from radlake.demo.generator import write_demo_definitions

    home = Lake.at(lake_home)
    _small_lake(home, CLINICAL_DEMO, Pseudonymizer.for_lake(lake_home))  # the key the assets use
    (home.landing / "clinical" / "late.csv").write_text(
        "patient_id,center_id,age\n,C1,50\n"
    )  # no id
    (home.landing / "features" / "C1").mkdir(parents=True)
    (home.landing / "features" / "C1" / "cd8.csv").write_text(
        "patient_id,cd8_density\nP1,12.5\nP2,3.25\nP9,1.0\n"
    )
    checks = [c for c in clinical_defs.defs.asset_checks if "accounting" in str(c.check_keys)]
    gist = write_demo_definitions(home.home)[0].parent / "gist_portal_venous.sql"
    result = dg.materialize(
        [
            clinical_defs.clinical,
            clinical_defs.external_features,
            sql_file_asset(gist, "cohorts", clinical_defs.LAKE_TABLES),
            *checks,
        ],
        resources={"lake": LakeResource(home=str(lake_home))},
        selection=dg.AssetSelection.assets(
            "clinical", "clinical_history", "external_features", "gist_portal_venous"
        ),
    )
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert (
        home.read_table("clinical").height == 5 and home.read_table("clinical_history").height == 5
    )
    assert read_quarantine(home, "clinical").get_column("rule").to_list() == ["missing_id"]
    assert read_quarantine(home, "external_features").get_column("rule").to_list() == [
        "unknown_patient"
    ]
    features = home.read_table("external_features")
    assert sorted(features.get_column("value").to_list()) == [3.25, 12.5]
    cohort = result.asset_materializations_for_node("gist_portal_venous")[0]
    assert cohort.metadata["patients"].value == 3

    for table in ("clinical", "clinical_history", "external_features"):
        outcome = run_suite(table, home.read_table(table).to_pandas())
        assert outcome.success, [
            (o.expectation, o.kwargs, o.sample_values, o.error) for o in outcome.failed
        ]


def test_xlsx_rows_are_numbered_as_the_spreadsheet_shows_them(tmp_path):
    from openpyxl import Workbook

    landing = _landing(tmp_path)
    book = Workbook()
    sheet = book.active
    for row, values in (
        (3, ("patient_id", "center_id", "os_event")),
        (4, ("A", "C1", 1)),
        (5, ("B", "C1", 5)),
    ):
        for column, value in zip("BCD", values, strict=True):
            sheet[f"{column}{row}"] = value
    book.save(landing / "clinical" / "sheet.xlsx")
    table, rejects, _ = _load(landing)
    assert table.get_column("os_event").to_list() == [1]
    assert [(r.record, r.reason) for r in rejects] == [
        (
            "row 5",
            "invalid_event: clinical/sheet.xlsx row 5 column 'os_event' is '5', but an event must be 0 or 1 "
            "(recode it: 1 = the event happened, 0 = censored)",
        )
    ]
