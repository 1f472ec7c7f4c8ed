"""Real grant exports land: NSFC (institution export with Chinese headers, the NSFC database's own
field names, per-discipline files of a collection tool, XLSX with a title row), NIH RePORTER API
JSON; code lists and read-mes are skipped; an unknown format is quarantined with a mapping
skeleton that, filled in and saved in LAKE_HOME/mappings, lands the file unchanged.

The records are real (tests/fixtures/grants/README.md says where each comes from). Every expected
total is computed here from the source files with csv / json / openpyxl and the source's own
amount field, with the unit conversion written out (NSFC: 万元 x 10 000 = CNY; NIH: USD).
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from assets.portfolio.grant_cells import amount_and_unit, parse_year
from assets.portfolio.grants import load_grants
from dagster_project.mappings import load_mappings
from tests.conftest import REPO, shared_path

FIXTURES = REPO / "tests" / "fixtures" / "grants"
WAN = 10_000  # 1 万元 = 10 000 CNY


# independent readings of the fixtures ------------------------------------------------------------
def _csv_rows(name: str, delimiter: str = ",") -> list[dict]:
    with (FIXTURES / name).open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def _xlsx_rows(name: str) -> list[dict]:
    from openpyxl import load_workbook

    book = load_workbook(FIXTURES / name, read_only=True)
    rows = list(book.worksheets[0].iter_rows(values_only=True))
    book.close()
    return [dict(zip(rows[0], r, strict=False)) for r in rows[1:]]


def nsfc_expected() -> dict[str, float]:
    """grant id -> amount in CNY, from each file's own id and amount fields."""
    out: dict[str, float] = {}
    for row in _csv_rows("C0105.csv"):
        out[row["approveText"]] = float(row["money"]) * WAN
    for row in _csv_rows("all_search_results.csv"):  # "65.0（万元）": the unit is in the cell
        out[row["approveText"]] = float(row["money"].replace("（万元）", "")) * WAN
    for row in _xlsx_rows("C0102.xlsx"):
        out[str(row["approveText"])] = row["money"] * WAN
    for row in _xlsx_rows("C0501.2019.xlsx"):
        out[str(row["project_id"])] = row["money"] * WAN
    for row in _csv_rows("nsfc_result_query.tsv", "\t"):
        out[row["批准号"]] = float(row["资助经费(万元)"]) * WAN
    for response in json.loads((FIXTURES / "nsfc_conclusion_projects.json").read_text()):
        out[response["data"]["ratifyNo"]] = float(response["data"]["supportNum"]) * WAN
    return out


def reporter_expected() -> dict[str, float]:
    """core project number -> USD: award_amount summed over the non-sub-project records."""
    results = json.loads((FIXTURES / "reporter_projects_search.json").read_text())["results"]
    out: dict[str, float] = {}
    for project in results:
        if project["subproject_id"] is None:
            core = project["core_project_num"]
            out[core] = out.get(core, 0.0) + project["award_amount"]
    return out


def _landed_rows() -> int:
    """Data rows in the fixtures (what the lake must account for), counted independently."""
    return (
        len(_csv_rows("C0105.csv"))
        + len(_csv_rows("all_search_results.csv"))
        + len(_xlsx_rows("C0102.xlsx"))
        + len(_xlsx_rows("C0501.2019.xlsx"))
        + len(_csv_rows("nsfc_result_query.tsv", "\t"))
        + len(json.loads((FIXTURES / "nsfc_conclusion_projects.json").read_text()))
        + len(json.loads((FIXTURES / "reporter_projects_search.json").read_text())["results"])
    )


def _with_title_rows(landing: Path) -> None:
    """Shapes groups have: a CSV with a title line, a blank line and a 合计 (total) line; an XLSX
    with a merged title cell above the header (the real records, re-laid out)."""
    from openpyxl import Workbook, load_workbook

    grants = landing / "portfolio" / "grants"
    text = (FIXTURES / "C0105.csv").read_text(encoding="utf-8")
    total = sum(float(r["money"]) for r in _csv_rows("C0105.csv"))
    (grants / "C01").mkdir(parents=True, exist_ok=True)
    (grants / "C01" / "C0105.csv").write_text(
        "国家自然科学基金资助项目（申请代码 C0105）,,,\n\n" + text + f"合计,,,,,,,,,{total},,,,\n",
        encoding="utf-8",
    )
    source = load_workbook(FIXTURES / "C0102.xlsx", read_only=True)
    rows = list(source.worksheets[0].iter_rows(values_only=True))
    source.close()
    book = Workbook()
    sheet = book.active
    sheet.append(["2019年度 国家自然科学基金资助项目 C0102"])
    sheet.merge_cells(start_row=1, start_column=1, end_row=1, end_column=len(rows[0]))
    for row in rows:
        sheet.append(list(row))
    book.save(grants / "C01" / "C0102.xlsx")


def land_fixtures(landing: Path) -> None:
    grants = landing / "portfolio" / "grants"
    grants.mkdir(parents=True, exist_ok=True)
    for name in (
        "all_search_results.csv",
        "C0501.2019.xlsx",
        "nsfc_result_query.tsv",
        "nsfc_conclusion_projects.json",
        "reporter_projects_search.json",
        "subcodes_C.csv",
        "README.md",
    ):
        shutil.copy(FIXTURES / name, grants / name)
    _with_title_rows(landing)
    # a real file of a format the lake does not know: NIH clinical studies per project
    with gzip.open(shared_path("funding", "nih", "clinical_studies.csv.gz"), "rt") as handle:
        head = [next(handle) for _ in range(6)]
    (grants / "clinical_studies.csv").write_text("".join(head), encoding="utf-8")


# pure ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "value", "factor"),
    [
        ("50", 50.0, None),
        ("50.00", 50.0, None),
        ("５０．５", 50.5, None),  # full-width digits
        ("50万", 50.0, 1e4),
        ("65.0（万元）", 65.0, 1e4),
        ("500000元", 500000.0, 1.0),
        ("1,234.5", 1234.5, None),
        ("¥ 60", 60.0, None),
        ("—", None, None),  # "no value" is a grant without an amount, not a bad row
        ("无", None, None),
    ],
)
def test_amount_cells_as_groups_write_them(raw, value, factor):
    assert amount_and_unit(raw) == (value, factor)


def test_year_cells():
    assert [parse_year(t) for t in ("2019", "2019年", "201912", "2014-01-01 00:00:00.0")] == [
        2019,
        2019,
        2019,
        2014,
    ]


def test_each_real_format_alone_matches_its_source(tmp_path):
    landing = tmp_path / "landing"
    expected = nsfc_expected()
    for name, fmt in (
        ("C0105.csv", "nsfc"),
        ("all_search_results.csv", "nsfc"),
        ("C0102.xlsx", "nsfc"),
        ("C0501.2019.xlsx", "nsfc"),
        ("nsfc_result_query.tsv", "nsfc"),
        ("nsfc_conclusion_projects.json", "nsfc"),
        ("reporter_projects_search.json", "nih_reporter_api"),
    ):
        path = landing / "portfolio" / "grants" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / name, path)
        grants, rejects, stats = load_grants([path], landing)
        assert rejects == [], name
        assert stats["formats"] == {f"portfolio/grants/{name}": fmt}
        want = reporter_expected() if fmt == "nih_reporter_api" else expected
        got = dict(grants.select("grant_id", "amount").rows())
        assert got == pytest.approx({k: want[k] for k in got}), name
        assert set(grants["currency"]) == {"USD" if fmt == "nih_reporter_api" else "CNY"}
        assert stats["landed"] == stats["ingested"] + stats["merged"]
    # titles arrive numbered ("1.聚琥珀酸..."): the list number is not part of the title
    first = _csv_rows("C0105.csv")[0]
    grants, _, _ = load_grants([landing / "portfolio" / "grants" / "C0105.csv"], landing)
    row = grants.filter(pl.col("grant_id") == first["approveText"]).row(0, named=True)
    assert first["title"].startswith("1.") and row["title"] == first["title"][2:]
    assert (row["pi"], row["institution"], row["discipline_code"]) == (
        first["personText"],
        first["organization"],
        "C0105",
    )


# through Dagster ---------------------------------------------------------------------------------
def _materialize(lake_home: Path):
    import dagster as dg

    from assets.portfolio import defs as portfolio
    from dagster_project.resources import LakeResource

    checks = [c for c in portfolio.defs.asset_checks if "grants" in str(c.check_keys)]
    result = dg.materialize(
        [portfolio.grants, *checks], resources={"lake": LakeResource(home=str(lake_home))}
    )
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    return result.asset_materializations_for_node("grants")[0].metadata


def test_real_exports_land_through_dagster_and_unknown_one_lands_by_mapping(lake_home):
    from dagster_project.lake import Lake
    from dagster_project.quarantine import read_quarantine

    home = Lake.at(lake_home)
    land_fixtures(home.landing)
    landed_before = {
        p: p.read_bytes() for p in (home.landing / "portfolio" / "grants").rglob("*") if p.is_file()
    }
    metadata = _materialize(lake_home)

    grants = home.read_table("grants")
    nsfc, nih = nsfc_expected(), reporter_expected()
    assert grants.height == len(nsfc) + len(nih)
    cny = grants.filter(pl.col("currency") == "CNY")
    assert dict(cny.select("grant_id", "amount").rows()) == pytest.approx(nsfc)
    assert cny["amount"].sum() == pytest.approx(sum(nsfc.values()))
    usd = grants.filter(pl.col("currency") == "USD")
    assert dict(usd.select("grant_id", "amount").rows()) == pytest.approx(nih)
    assert set(cny["source"]) == {"nsfc"} and set(usd["source"]) == {"nih"}

    quarantine = read_quarantine(home, "grants")
    assert quarantine.select("source_path", "rule").rows() == [
        ("portfolio/grants/clinical_studies.csv", "unknown_format")
    ]
    reason = quarantine["reason"].item()
    assert "header (row 1): project_num, trial_id, study_status" in reason
    skeleton = yaml.safe_load(reason.split("materialize again:\n", 1)[1])
    assert skeleton["target"] == "grants"
    assert list(skeleton["columns"]) == ["project_num", "trial_id", "study_status"]

    # accounting: every data row is a grant, a merged duplicate or in quarantine; the unknown
    # file is one unit; the 合计 line, the code list and the read-me are not records
    assert metadata["landed"].value == _landed_rows() + 1
    assert metadata["quarantined"].value == 1
    assert metadata["summary_rows"].value == 1
    assert metadata["header_rows"].value == {
        "portfolio/grants/C01/C0105.csv": 3,
        "portfolio/grants/C01/C0102.xlsx": 2,
    }
    assert set(metadata["skipped_files"].value) == {
        "portfolio/grants/subcodes_C.csv",
        "portfolio/grants/README.md",
    }

    # the user fills in the skeleton and saves it: the same file lands, unchanged
    skeleton["columns"]["project_num"] = "grant_id"
    skeleton["constants"] = {"source": "nih"}
    (home.home / "mappings").mkdir(exist_ok=True)
    (home.home / "mappings" / "nih_clinical_studies.yaml").write_text(
        yaml.safe_dump(skeleton, allow_unicode=True), encoding="utf-8"
    )
    assert load_mappings(home.home, "grants")[1] == {}
    metadata = _materialize(lake_home)
    grants = home.read_table("grants")
    studies = _csv_rows_text(home.landing / "portfolio" / "grants" / "clinical_studies.csv")
    mapped = grants.filter(pl.col("source_format") == "mapping:mappings/nih_clinical_studies.yaml")
    assert sorted(mapped["grant_id"]) == sorted({r["project_num"] for r in studies})
    assert read_quarantine(home, "grants").height == 0
    assert metadata["formats"].value["portfolio/grants/clinical_studies.csv"] == (
        "mapping:mappings/nih_clinical_studies.yaml"
    )
    after = {
        p: p.read_bytes() for p in (home.landing / "portfolio" / "grants").rglob("*") if p.is_file()
    }
    assert after == landed_before  # landing/ is never modified


def _csv_rows_text(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_worksheet_of_a_workbook_is_read(tmp_path):
    """A workbook with one sheet per discipline and a code-list sheet: all records land."""
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for title, name in (("C0102", "C0102.xlsx"), ("C0501", "C0501.2019.xlsx")):
        sheet = book.create_sheet(title)
        rows = _xlsx_rows(name)
        sheet.append(list(rows[0]))
        for row in rows:
            sheet.append(list(row.values()))
    codes = book.create_sheet("代码表")
    for line in _csv_rows("subcodes_C.csv"):
        codes.append(list(line.values()))
    path = tmp_path / "landing" / "portfolio" / "grants" / "C01_C05.xlsx"
    path.parent.mkdir(parents=True)
    book.save(path)
    grants, rejects, stats = load_grants([path], tmp_path / "landing")
    ids = {str(r["approveText"]) for r in _xlsx_rows("C0102.xlsx")}
    ids |= {str(r["project_id"]) for r in _xlsx_rows("C0501.2019.xlsx")}
    assert rejects == [] and set(grants["grant_id"]) == ids
    assert set(stats["formats"]) == {
        "portfolio/grants/C01_C05.xlsx [C0102]",
        "portfolio/grants/C01_C05.xlsx [C0501]",
    }
    assert list(stats["skipped_files"]) == ["portfolio/grants/C01_C05.xlsx [代码表]"]


def test_reporter_website_export_with_metadata_rows(tmp_path):
    """The RePORTER website's Export CSV (column names as public loaders of SearchResult_Export
    read them; six metadata rows above the header), holding the two real API records."""
    results = json.loads((FIXTURES / "reporter_projects_search.json").read_text())["results"]
    header = [
        "Application ID", "Project Number", "Project Title", "Contact PI / Project Leader",
        "Organization Name", "Organization State", "Organization Country", "Fiscal Year",
        "Activity", "Project Start Date", "Project End Date", "Total Cost",
        "Total Cost (Sub Projects)",
    ]  # fmt: skip
    lines = [
        ["NIH RePORTER"], ["Search Results Export"], ["Criteria: fiscal years 2022-2023"],
        ["Exported on: 11/01/2026"], ["Records: 2"], [],
    ]  # fmt: skip
    lines.append(header)
    for p in results:
        pi = next(x["full_name"] for x in p["principal_investigators"] if x["is_contact_pi"])
        start, end = p["project_start_date"][:10].split("-"), p["project_end_date"][:10].split("-")
        lines.append(
            [
                p["appl_id"], p["project_num"], p["project_title"], pi,
                p["organization"]["org_name"], p["organization"]["org_state"],
                p["organization"]["org_country"], p["fiscal_year"], p["activity_code"],
                f"{int(start[1])}/{int(start[2])}/{start[0]}", f"{int(end[1])}/{int(end[2])}/{end[0]}",
                p["award_amount"], "",
            ]
        )  # fmt: skip
    path = tmp_path / "landing" / "portfolio" / "grants" / "SearchResult_Export.csv"
    path.parent.mkdir(parents=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(lines)
    # a sub-project row: its cost is already inside the parent's Total Cost
    first = lines[7]
    lines.append([999, first[1], "Core B", first[3], first[4], first[5], first[6], first[7],
                  first[8], first[9], first[10], "", 12345])  # fmt: skip
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(lines)
    grants, rejects, stats = load_grants([path], tmp_path / "landing")
    assert rejects == [] and stats["formats"] == {
        "portfolio/grants/SearchResult_Export.csv": "nih_reporter_export"
    }
    assert stats["landed"] == 3 and stats["merged"] == 1
    assert stats["header_rows"] == {"portfolio/grants/SearchResult_Export.csv": 7}
    assert dict(grants.select("grant_id", "amount").rows()) == reporter_expected()
    assert dict(grants.select("grant_id", "end_year").rows()) == {
        p["core_project_num"]: int(p["project_end_date"][:4]) for p in results
    }


def test_files_beside_the_exports_are_skipped_not_lost(tmp_path):
    """ExPORTER companions, a read-me and a code list hold no grants: listed, not quarantined."""
    grants_dir = tmp_path / "landing" / "portfolio" / "grants"
    grants_dir.mkdir(parents=True)
    (grants_dir / "RePORTER_PUBLNK_C_2023.csv").write_text("PMID,PROJECT_NUMBER\n1,R01CA1\n")
    (grants_dir / "RePORTER_PRJABS_C_FY2023.csv").write_text("APPLICATION_ID,ABSTRACT_TEXT\n1,a\n")
    (grants_dir / "说明.txt").write_text("数据来源：国家自然科学基金委\n", encoding="utf-8")
    (grants_dir / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    shutil.copy(FIXTURES / "subcodes_C.csv", grants_dir / "subcodes_C.csv")
    grants, rejects, stats = load_grants(sorted(grants_dir.iterdir()), tmp_path / "landing")
    assert grants.height == 0 and rejects == []
    assert stats["landed"] == stats["quarantined"] == 0
    assert sorted(stats["skipped_files"]) == sorted(
        f"portfolio/grants/{p.name}" for p in grants_dir.iterdir()
    )


def test_zip_archive_of_exports(tmp_path):
    """Exports arrive zipped (NIH ExPORTER ships its CSV files as ZIP): every member is read."""
    import zipfile

    path = tmp_path / "landing" / "portfolio" / "grants" / "nsfc_C01_C05.zip"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("C0105.csv", "all_search_results.csv", "C0102.xlsx"):
            archive.write(FIXTURES / name, f"exports/{name}")
    grants, rejects, stats = load_grants([path], tmp_path / "landing")
    expected = nsfc_expected()
    ids = {r["approveText"] for r in _csv_rows("C0105.csv") + _csv_rows("all_search_results.csv")}
    ids |= {str(r["approveText"]) for r in _xlsx_rows("C0102.xlsx")}
    assert rejects == [] and set(grants["grant_id"]) == ids
    assert dict(grants.select("grant_id", "amount").rows()) == pytest.approx(
        {i: expected[i] for i in ids}
    )
    assert sorted(stats["formats"]) == [
        f"portfolio/grants/nsfc_C01_C05.zip [exports/{n}]"
        for n in ("C0102.xlsx", "C0105.csv", "all_search_results.csv")
    ]


def test_amount_column_without_unit_in_yuan_is_not_multiplied(tmp_path):
    """The same real records with the amount written in 元 under a header without a unit."""
    rows = _csv_rows("C0105.csv")
    path = tmp_path / "landing" / "portfolio" / "grants" / "yuan.csv"
    path.parent.mkdir(parents=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["批准号", "项目名称", "批准金额"])
        writer.writerows([r["approveText"], r["title"], int(float(r["money"]) * WAN)] for r in rows)
    grants, _rejects, stats = load_grants([path], tmp_path / "landing")
    assert stats["assumed_cny_files"] == ["portfolio/grants/yuan.csv"]
    assert dict(grants.select("grant_id", "amount").rows()) == pytest.approx(
        {r["approveText"]: float(r["money"]) * WAN for r in rows}
    )
