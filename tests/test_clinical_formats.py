"""Clinical spreadsheets as hospitals keep them: Chinese column names, title rows and merged cells
above the header, answers written 是/否; and a mapping file that lands an idiosyncratic export
unchanged. Through a Dagster materialization of `clinical` in a temporary lake.

The values are real public survival data shipped with lifelines (GBSG2: German Breast Cancer Study
Group trial, Schumacher et al. 1994; larynx: Kardaun 1983, Klein & Moeschberger), laid out the
way a Chinese hospital export looks (headers translated, a merged title cell, a date line); every
expected number is computed here with pandas from the lifelines frame.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

GBSG_HEADER = ["患者编号", "中心", "年龄", "激素治疗", "肿瘤大小(mm)", "随访时间(天)", "是否复发"]


def _gbsg_xlsx(path: Path) -> object:
    """GBSG2 as an XLSX: merged title, date line, blank row, Chinese header on row 4, the center
    cell merged down over each center's patients."""
    from lifelines.datasets import load_gbsg2
    from openpyxl import Workbook

    frame = load_gbsg2()
    frame["patient_id"] = [f"G{i + 1:04d}" for i in range(len(frame))]
    frame["center"] = ["中心A" if i % 3 else "中心B" for i in range(len(frame))]
    frame = frame.sort_values("center", kind="stable").reset_index(drop=True)
    book = Workbook()
    sheet = book.active
    sheet.append(["德国乳腺癌研究组 GBSG2 随访数据"])
    sheet.merge_cells(start_row=1, start_column=1, end_row=1, end_column=len(GBSG_HEADER))
    sheet.append(["导出日期：2026-11-01", None, None, None, "单位：天"])
    sheet.append([])
    sheet.append(GBSG_HEADER)
    first = {}
    for row in frame.itertuples():
        first.setdefault(row.center, sheet.max_row + 1)
        sheet.append(
            [
                row.patient_id,
                row.center if first[row.center] == sheet.max_row + 1 else None,
                int(row.age),
                "是" if row.horTh == "yes" else "否",
                int(row.tsize),
                int(row.time),
                "是" if row.cens == 1 else "否",
            ]
        )
    # each center written once, merged down over its patients (as hospital sheets do)
    last = sheet.max_row
    for start in first.values():
        end = min([r - 1 for r in first.values() if r > start] + [last])
        sheet.merge_cells(start_row=start, start_column=2, end_row=end, end_column=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return frame


def _larynx_csv(path: Path) -> object:
    """Larynx cancer survival as a CSV whose headers no built-in name covers (a mapping does)."""
    from lifelines.datasets import load_larynx

    frame = load_larynx()
    frame["case"] = [f"L{i + 1:03d}" for i in range(len(frame))]
    lines = ["病例号,诊断年龄,生存(年),结局"]
    for row in frame.itertuples():
        lines.append(f"{row.case},{row.age},{row.time},{'死亡' if row.death == 1 else '存活'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    return frame


LARYNX_MAPPING = {
    "target": "clinical",
    "description": "larynx cancer follow-up export of the ENT department",
    "files": ["clinical/larynx*.csv"],
    "columns": {
        "病例号": "patient_id",
        "诊断年龄": "age",
        "生存(年)": {"field": "os_months", "factor": 12},
        "结局": {"field": "os_event", "values": {"死亡": 1, "存活": 0}},
    },
    "constants": {"center_id": "ENT"},
}


def _materialize(lake_home: Path):
    import dagster as dg

    from assets.clinical import defs as clinical_defs
    from dagster_project.resources import LakeResource

    checks = [c for c in clinical_defs.defs.asset_checks if "accounting" in str(c.check_keys)]
    result = dg.materialize(
        [clinical_defs.clinical, *checks],
        resources={"lake": LakeResource(home=str(lake_home))},
        selection=dg.AssetSelection.assets("clinical", "clinical_history"),
    )
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    return result.asset_materializations_for_node("clinical")[0].metadata


def test_chinese_spreadsheet_and_mapped_export_land_through_dagster(lake_home):
    from dagster_project.lake import Lake
    from dagster_project.quarantine import read_quarantine

    home = Lake.at(lake_home)
    gbsg = _gbsg_xlsx(home.landing / "clinical" / "gbsg2_随访.xlsx")
    larynx = _larynx_csv(home.landing / "clinical" / "larynx_ent.csv")
    landed = {p: p.read_bytes() for p in (home.landing / "clinical").iterdir()}

    # without the mapping, the larynx export has no recognizable ids: quarantined with a
    # ready-to-edit mapping; the Chinese spreadsheet lands by the built-in names
    metadata = _materialize(lake_home)
    quarantine = read_quarantine(home, "clinical")
    assert quarantine.select("source_path", "rule").rows() == [
        ("clinical/larynx_ent.csv", "missing_id_column")
    ]
    draft = yaml.safe_load(quarantine["reason"].item().split("LAKE_HOME/mappings:\n", 1)[1])
    assert draft["target"] == "clinical" and draft["files"] == ["clinical/larynx_ent.csv"]
    assert list(draft["columns"]) == ["病例号", "诊断年龄", "生存(年)", "结局"]
    assert metadata["header_rows"].value == {"clinical/gbsg2_随访.xlsx": 4}

    # the user completes the draft as LARYNX_MAPPING and materializes again
    (home.home / "mappings").mkdir(exist_ok=True)
    (home.home / "mappings" / "larynx.yaml").write_text(
        yaml.safe_dump(LARYNX_MAPPING, allow_unicode=True), encoding="utf-8"
    )
    metadata = _materialize(lake_home)
    assert read_quarantine(home, "clinical").height == 0
    assert metadata["mappings"].value == {"clinical/larynx_ent.csv": "mappings/larynx.yaml"}
    assert metadata["landed"].value == len(gbsg) + len(larynx)

    clinical = home.read_table("clinical")
    assert {"patient_key", "center_id", "age", "激素治疗", "tumor_size_mm"} <= set(clinical.columns)
    assert {"follow_up_days", "rfs_event", "os_months", "os_event"} <= set(clinical.columns)
    assert "患者编号" not in clinical.columns and "patient_id" not in clinical.columns

    breast = clinical.filter(clinical["center_id"].is_in(["中心A", "中心B"])).to_pandas()
    assert len(breast) == len(gbsg)
    assert breast["follow_up_days"].sum() == gbsg["time"].sum()
    assert breast["rfs_event"].sum() == gbsg["cens"].sum()
    assert breast["tumor_size_mm"].mean() == pytest.approx(gbsg["tsize"].mean())
    assert breast["age"].sum() == gbsg["age"].sum()
    assert (breast["激素治疗"] == "是").sum() == (gbsg["horTh"] == "yes").sum()
    assert breast.groupby("center_id").size().to_dict() == {
        "中心A": sum(1 for i in range(len(gbsg)) if i % 3),
        "中心B": sum(1 for i in range(len(gbsg)) if not i % 3),
    }

    ent = clinical.filter(clinical["center_id"] == "ENT").to_pandas()
    assert len(ent) == len(larynx)
    assert ent["os_months"].sum() == pytest.approx((larynx["time"] * 12).sum())
    assert ent["os_event"].sum() == larynx["death"].sum()
    assert ent["age"].sum() == larynx["age"].sum()

    assert {p: p.read_bytes() for p in (home.landing / "clinical").iterdir()} == landed


def test_header_detection_on_title_rows_and_full_width_numbers(tmp_path):
    from assets.clinical.load import load_clinical

    landing = tmp_path / "landing"
    path = landing / "clinical" / "随访.csv"
    path.parent.mkdir(parents=True)
    path.write_text(
        "某医院 胃肠间质瘤 随访登记表,,,\n"
        "填表日期：2026年11月,,,\n"
        ",,,\n"
        "病人ID,中心编号,随访时间（月）,死亡\n"
        "A1,C1,１２.５,是\n"
        "A2,C1,30,否\n"
        ",,,\n"
        "病人ID,中心编号,随访时间（月）,死亡\n"  # the header repeated (a page break)
        "A3,C2,7,是\n",
        encoding="gb18030",
    )
    table, rejects, stats = load_clinical([path], landing, lambda c, p: f"{c}:{p}")
    assert rejects == []
    assert table.columns[:4] == ["patient_key", "center_id", "follow_up_months", "os_event"]
    assert table["follow_up_months"].to_list() == [12.5, 30.0, 7.0]
    assert table["os_event"].to_list() == [1, 0, 1]
    assert stats["header_rows"] == {"clinical/随访.csv": 4}
    assert stats["landed"] == 3


def test_mapping_names_the_id_of_a_feature_table(tmp_path):
    """external_features: a real radMLBench table whose patient column has a Chinese name."""
    import pandas as pd

    from assets.clinical.external import load_external_features
    from dagster_project.mappings import parse_mapping
    from tests.conftest import shared_path

    source = pd.read_csv(
        shared_path("radiomics_features", "radMLBench", "datasets", "Head-Neck-Radiomics-HN1.gz")
    ).iloc[:12]
    features = [c for c in source.columns if c not in ("ID", "Target")][:25]
    table = source[["ID", "Target", *features]].rename(columns={"ID": "受试者编号"})
    landing = tmp_path / "landing"
    (landing / "features" / "HN").mkdir(parents=True)
    table.to_csv(landing / "features" / "HN" / "hn1.csv", index=False)
    mapping = parse_mapping(
        {
            "target": "external_features",
            "header": ["受试者编号"],
            "columns": {"受试者编号": "patient_id", "Target": None},
        },
        "mappings/hn1.yaml",
    )
    long, rejects, stats = load_external_features(
        landing, lambda c, p: f"{c}:{p}", mappings=[mapping]
    )
    assert rejects == [] and stats["mappings"] == {"features/HN/hn1.csv": "mappings/hn1.yaml"}
    assert long.height == len(table) * len(features)
    assert set(long["feature"]) == set(features)  # the label column was dropped, not a feature
    assert long["value"].sum() == pytest.approx(float(table[features].to_numpy().sum()))


def test_old_xls_workbook_lands_through_a_mapping(tmp_path):
    """A real .xls (xlrd's sample): read, its first worksheet lands, the others are named."""
    import shutil

    import xlrd

    from assets.clinical.load import load_clinical
    from dagster_project.mappings import parse_mapping
    from tests.conftest import REPO

    source = REPO / "tests" / "fixtures" / "xls" / "profiles.xls"
    landing = tmp_path / "landing"
    (landing / "clinical").mkdir(parents=True)
    shutil.copy(source, landing / "clinical" / "profiles.xls")
    mapping = parse_mapping(
        {
            "target": "clinical",
            "files": ["clinical/*.xls"],
            "columns": {"PROFIL": "patient_id"},
            "constants": {"center_id": "XLS"},
        },
        "mappings/profiles.yaml",
    )
    table, rejects, stats = load_clinical(
        [landing / "clinical" / "profiles.xls"],
        landing,
        lambda c, p: f"{c}:{p}",
        mappings=[mapping],
    )
    sheet = xlrd.open_workbook(source).sheet_by_name("PROFILEDEF")
    header = sheet.row_values(0)
    assert rejects == [] and table.height == sheet.nrows - 1
    for col in range(1, sheet.ncols):
        expected = sum(v for v in sheet.col_values(col, 1) if v != "")
        assert table[header[col]].sum() == pytest.approx(expected), header[col]
    others = [s.name for s in xlrd.open_workbook(source).sheets()[1:] if s.nrows]
    assert stats["other_sheets"] == {"clinical/profiles.xls": others}


def test_builtin_names_never_shadow_a_column_of_the_file(tmp_path):
    from assets.clinical.load import load_clinical

    landing = tmp_path / "landing"
    path = landing / "clinical" / "sites.csv"
    path.parent.mkdir(parents=True)
    path.write_text("patient_id,center_id,site,性别\nP1,C1,gastric,男\nP2,C1,colon,女\n")
    table, rejects, stats = load_clinical([path], landing, lambda c, p: f"{c}:{p}")
    assert rejects == []
    assert table.columns[:4] == ["patient_key", "center_id", "site", "sex"]
    assert table["sex"].to_list() == ["M", "F"]
    assert stats["renamed_columns"] == {"clinical/sites.csv": {"性别": "sex"}}


def test_patients_on_the_second_worksheet_after_a_notes_sheet(tmp_path):
    from lifelines.datasets import load_larynx
    from openpyxl import Workbook

    from assets.clinical.load import load_clinical

    larynx = load_larynx()
    book = Workbook()
    notes = book.active
    notes.title = "填表说明"
    notes.append(["生存时间单位为年；死亡=1"])
    notes.append(["变量", "含义"])
    data = book.create_sheet("数据")
    data.append(["患者编号", "中心", "生存时间(年)", "死亡"])
    for i, row in enumerate(larynx.itertuples()):
        data.append([f"L{i}", "ENT", row.time, "是" if row.death else "否"])
    path = tmp_path / "landing" / "clinical" / "larynx.xlsx"
    path.parent.mkdir(parents=True)
    book.save(path)
    table, rejects, stats = load_clinical([path], tmp_path / "landing", lambda c, p: f"{c}:{p}")
    assert rejects == [] and table.height == len(larynx)
    assert table["os_years"].sum() == pytest.approx(larynx["time"].sum())
    assert table["os_event"].sum() == larynx["death"].sum()
    assert stats["other_sheets"] == {"clinical/larynx.xlsx": ["填表说明"]}
