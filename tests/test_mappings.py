"""Mapping files (dagster_project/mappings.py): what a broken one says, which one applies."""

from __future__ import annotations

import pytest
import yaml

from dagster_project.mappings import (
    MappingError,
    load_mappings,
    mapping_for,
    parse_mapping,
    skeleton,
)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"target": "grants", "files": ["*"], "columns": {"a": "grant_id"}, "colums": {}},
         "mappings/m.yaml: unknown key(s) ['colums']; allowed: target, description, files"),
        ({"target": "grant", "files": ["*"], "columns": {"a": "grant_id"}},
         "mappings/m.yaml: target is 'grant'; one of grants, clinical, external_features"),
        ({"target": "grants", "columns": {"a": "grant_id"}},
         "mappings/m.yaml: say which files the mapping applies to"),
        ({"target": "grants", "files": ["*"], "columns": {"a": "title"}},
         "mappings/m.yaml: no column or constant gives grant_id (required for grants)"),
        ({"target": "grants", "files": ["*"], "columns": {"a": "grant_id", "b": "amount"}},
         "mappings/m.yaml: the amount column 'b' needs its currency"),
        ({"target": "grants", "files": ["*"], "columns": {"a": "grant_id", "b": "budget"}},
         "mappings/m.yaml: column 'b' maps to 'budget'; a grants mapping may name grant_id"),
        ({"target": "clinical", "files": ["*"], "columns": {"a": "patient_id"}},
         "mappings/m.yaml: no column or constant gives center_id (required for clinical)"),
        ({"target": "clinical", "files": ["*"], "columns": {"a": {"field": "x", "factr": 2}},
          "constants": {"patient_id": 1, "center_id": 2}},
         "mappings/m.yaml: column 'a' has unknown key(s) ['factr']; allowed: field, factor"),
    ],
)  # fmt: skip
def test_broken_mapping_names_file_key_and_what_is_allowed(raw, message):
    with pytest.raises(MappingError) as error:
        parse_mapping(raw, "mappings/m.yaml")
    assert str(error.value).startswith(message)


def test_files_glob_wins_over_header_signature_and_errors_are_collected(tmp_path):
    folder = tmp_path / "mappings"
    folder.mkdir()
    by_header = {"target": "grants", "header": ["编号"], "columns": {"编号": "grant_id"}}
    by_file = {
        "target": "grants",
        "files": ["portfolio/grants/h*.csv"],
        "columns": {"编号": "grant_id"},
    }
    (folder / "a_header.yaml").write_text(yaml.safe_dump(by_header, allow_unicode=True))
    (folder / "b_file.yaml").write_text(yaml.safe_dump(by_file, allow_unicode=True))
    (folder / "c_broken.yaml").write_text("target: grants\ncolumns: [1, 2\n")
    mappings, errors = load_mappings(tmp_path, "grants")
    assert [m.name for m in mappings] == ["a_header", "b_file"]
    assert list(errors) == ["mappings/c_broken.yaml"]
    assert mapping_for(mappings, "portfolio/grants/h1.csv", ["编号 ", "x"]).name == "b_file"
    assert mapping_for(mappings, "portfolio/grants/other.csv", ["编号"]).name == "a_header"
    assert mapping_for(mappings, "portfolio/grants/other.csv", ["id"]) is None


def test_skeleton_is_valid_yaml_for_any_header():
    text = skeleton(
        "grants", "portfolio/grants/a b.csv", ["项目编号", "金额 (万元)", "id: x", "123", ""]
    )
    parsed = yaml.safe_load(text)
    assert parsed["files"] == ["portfolio/grants/a b.csv"]
    assert list(parsed["columns"]) == ["项目编号", "金额 (万元)", "id: x", "123"]
