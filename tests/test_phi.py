"""The identifier detector (dagster_project.phi) on published examples and real tables.

- resident identity numbers: GB 11643-1999's own examples (Annex A), the ISO 7064 MOD 11-2 check
  as ORCID publishes it (same algorithm, another standard's worked example), and the property
  ISO 7064 guarantees: every single-digit substitution is detected;
- names: the column names a Chinese hospital's export carries, in Chinese, pinyin and English;
- false positives: every column of lifelines' clinical datasets and of the five radMLBench
  radiomics tables (real data; none holds a person's identifier apart from its id column);
- true positives in real data: the person-name columns of lifelines' canadian_senators and dd.
"""

from __future__ import annotations

import csv
import gzip
import random
from pathlib import Path

import polars as pl
import pytest

from dagster_project.phi import (
    Redactor,
    identifier_name,
    is_resident_id,
    resident_id_check_character,
    screen_column,
    screen_columns,
)
from tests.conftest import shared_path
from tests.test_identifiers_cn import iso7064_mod11_2

# GB 11643-1999, Annex A (公民身份号码实例): Beijing Chaoyang and Guangdong Shantou
GB11643_EXAMPLES = ("11010519491231002X", "440524188001010014")
CLINICAL_DATASETS = (
    "gbsg2", "rossi", "lung", "larynx", "lymph_node", "kidney_transplant", "leukemia", "lymphoma",
    "recur", "g3", "diabetes", "waltons", "stanford_heart_transplants",
    "multicenter_aids_cohort_study", "psychiatric_patients", "lupus", "panel_test", "dfcv",
    "c_botulinum_lag_phase", "mice", "nh4",
)  # fmt: skip
RADMLBENCH = (
    "Colorectal-Liver-Metastases", "HCC-TACE-Seg", "Head-Neck-Radiomics-HN1",
    "NSCLC-Radiogenomics", "WORC-Lipo",
)  # fmt: skip


def _lifelines(name: str):
    import lifelines.datasets as datasets

    return getattr(datasets, f"load_{name}")()


def _pandas_columns(frame) -> dict[str, list]:
    return {c: [v for v in frame[c].tolist() if v == v and v is not None] for c in frame.columns}


def test_gb11643_examples_are_valid_and_every_other_check_character_is_not():
    for number in GB11643_EXAMPLES:
        assert is_resident_id(number) and is_resident_id(number.lower())
        assert resident_id_check_character(number[:17]) == number[17]
        for wrong in "0123456789X":
            if wrong != number[17]:
                assert not is_resident_id(number[:17] + wrong)
        # the 1989 15-digit form of the same person: no century, no check character
        assert is_resident_id(number[:6] + number[8:17])


def test_the_check_is_iso7064_mod11_2_as_orcid_publishes_it():
    # ORCID's worked example 0000-0002-1825-0097: check digit 7 (leading zeros weigh nothing),
    # and a published iD ending in X (lyDATA's CITATION.cff: 0000-0001-9434-328X)
    assert resident_id_check_character("00" + "000000021825009") == "7"
    assert resident_id_check_character("00" + "000000019434328") == "X"
    assert iso7064_mod11_2("000000021825009") == "7"
    rng = random.Random(7)
    for _ in range(500):
        body = f"{rng.choice(['110105', '440305', '650102'])}19{rng.randrange(30, 99)}0{rng.randrange(1, 10)}1{rng.randrange(10)}{rng.randrange(1000):03d}"
        assert resident_id_check_character(body) == iso7064_mod11_2(body)
        number = body + iso7064_mod11_2(body)
        assert is_resident_id(number)
        position = rng.randrange(14, 17)  # the sequence digits: date and province stay valid
        changed = str((int(number[position]) + rng.randrange(1, 10)) % 10)
        assert not is_resident_id(number[:position] + changed + number[position + 1 :])


def test_a_valid_check_character_on_an_impossible_date_or_province_is_not_an_id():
    for body in ("11010519490231002", "11010520990101002", "00010519491231002"):
        assert not is_resident_id(body + iso7064_mod11_2(body))


@pytest.mark.parametrize(
    "name",
    [
        "姓名", "住院号", "门诊号", "病案号", "身份证号", "出生日期", "联系电话", "家庭住址",
        "患者姓名", "身份证号码（18位）", "联系电话2", "手机号", "电子邮箱", "现住址", "病历号",
        "xingming", "zhuyuanhao", "menzhenhao", "binganhao", "shenfenzhenghao", "chushengriqi",
        "lianxidianhua", "jiatingzhuzhi", "XM", "ZYH", "SFZH", "CSRQ", "LXDH", "huanzhe_xingming",
        "MRN", "hospital number", "Hospital No.", "name", "Patient Name", "PatientName",
        "first_name", "DOB", "Date of Birth", "birthdate", "phone", "Mobile Phone", "address",
        "ID card", "ID_Card_No", "e-mail", "Email Address", "zip code", "ＭＲＮ", " 姓 名 ", "SSN",
    ],
)  # fmt: skip
def test_identifier_names_in_chinese_pinyin_and_english(name):
    assert identifier_name(name) is not None


def test_real_clinical_and_radiomics_column_names_are_not_identifier_names():
    names = {c for d in CLINICAL_DATASETS for c in _lifelines(d).columns}
    names |= {"肿瘤大小", "年龄", "性别", "病理类型", "分化程度", "手术日期", "复发", "生存时间",
              "TNM分期", "淋巴结转移", "surgery_date", "tumor_size_cm", "birth_weight"}  # fmt: skip
    flagged = {n for n in names if identifier_name(n) and n.lower() not in ("id", "ids")}
    assert not flagged


def test_no_false_positive_on_real_clinical_tables():
    screened = 0
    for dataset in CLINICAL_DATASETS:
        frame = _lifelines(dataset)
        columns = {c: v for c, v in _pandas_columns(frame).items() if c.lower() != "id"}
        screened += len(columns)
        assert screen_columns(columns) == [], dataset
    assert screened > 100


def test_no_false_positive_on_chinese_categories_of_a_real_trial():
    """GBSG2's values with Chinese headers and categories, as a Chinese hospital would keep them."""
    frame = _lifelines("gbsg2")
    words = {"yes": "是", "no": "否", "Pre": "绝经前", "Post": "绝经后"}
    grade = {"I": "高分化", "II": "中分化", "III": "低分化"}
    columns = {
        "激素治疗": [words[v] for v in frame["horTh"]],
        "绝经状态": [words[v] for v in frame["menostat"]],
        "分化程度": [grade[v] for v in frame["tgrade"]],
        "年龄": frame["age"].tolist(),
        "肿瘤大小": frame["tsize"].tolist(),
        "阳性淋巴结": frame["pnodes"].tolist(),
        "孕激素受体": frame["progrec"].tolist(),
        "雌激素受体": frame["estrec"].tolist(),
        "无复发生存天数": frame["time"].tolist(),
        "受体状态": ["阳性" if v > 10 else "阴性" for v in frame["estrec"]],
        "部位": [["左乳", "右乳", "双乳"][i % 3] for i in range(len(frame))],
    }
    assert screen_columns(columns) == []


def test_no_false_positive_on_real_radiomics_tables():
    screened = 0
    for name in RADMLBENCH:
        path = shared_path("radiomics_features", "radMLBench", "datasets", f"{name}.gz")
        with gzip.open(path, "rb") as handle:
            frame = pl.read_csv(handle, infer_schema=False)
        columns = {c: frame[c].drop_nulls().to_list() for c in frame.columns if c != "ID"}
        screened += len(columns)
        assert screen_columns(columns) == [], name
    assert screened > 2000


def test_person_name_columns_of_real_tables_are_found_by_content():
    senators = _lifelines("canadian_senators")
    names = senators["Name"].tolist()  # "Abbott, John Joseph Caldwell"
    advisers = senators["Appointed on the advice of"].tolist()  # prime ministers, repeated
    leaders = _lifelines("dd")["ehead"].tolist()  # "Mohammad Zahir Shah"
    for values in (names, advisers, leaders):
        finding = screen_column("col_a", values)
        assert finding is not None and finding.rule == "person_name", values[:3]
        assert finding.count == len(values)


def test_content_rules_need_half_of_the_values():
    rng = random.Random(3)
    phones = [f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}" for _ in range(60)]
    sizes = [f"{rng.uniform(0.5, 9):.1f}" for _ in range(60)]
    assert screen_column("x", phones[:24] + sizes[:36]) is None  # 40 %
    assert screen_column("x", phones[:36] + sizes[:24]).rule == "phone"  # 60 %
    assert screen_column("x", ["a@b.cn", "li.wei@hospital.org.cn", "x"]).rule == "email"
    assert screen_column("x", ["010-62751234", "(0755)86001234", "021 5432 1098"]).rule == "phone"


def test_free_text_is_dropped_unless_declared():
    notes = [
        f"Patient seen in clinic on day {i}, tolerating treatment well, no new complaints"
        for i in range(10)
    ]
    assert screen_column("notes", notes).rule == "free_text"
    assert screen_column("notes", notes, keep_free_text=True) is None
    assert screen_column("histology", ["Invasive ductal carcinoma of the breast, NOS"] * 10) is None


def test_redactor_replaces_identifiers_inside_text_and_leaves_dates_and_numbers():
    redact = Redactor(["张伟", "ZY2019000123", "1965-03-12"])
    text = "患者张伟（住院号ZY2019000123）电话13812345678，身份证11010519491231002X，邮箱zw@163.com"
    out = redact(text)
    assert out.count("[redacted]") == 5 and "张伟" not in out and "1381" not in out
    assert redact("1965-03-12") == "1965-03-12"  # a whole date cell is a date, not a quote
    assert redact("11010519491231002Y") == "11010519491231002Y"  # not an id: kept
    assert redact("家属电话0755-86001234") == "家属电话[redacted]"


def test_names_as_hospital_exports_write_them():
    rng = random.Random(11)
    surnames = ("ZHANG", "WANG", "LI", "LIU", "CHEN", "HUANG", "OUYANG")
    given = ("WEI", "FANG", "XIAOMING", "JING", "LEI", "YAN", "JIANHUA", "MIN")
    pinyin = [f"{rng.choice(surnames)} {rng.choice(given)}" for _ in range(30)]
    assert screen_column("x", pinyin).rule == "person_name"  # "ZHANG WEI"
    assert screen_column("x", [v.lower() for v in pinyin]).rule == "person_name"
    assert screen_column("x", [" ".join(v.split()[::-1]).title() for v in pinyin]).rule == (
        "person_name"
    )  # "Wei Zhang"
    padded = ["张 伟", "李 娜", "王 芳", "刘 强", "陈 静", "杨 洋"]  # two-character names padded
    assert screen_column("x", padded).rule == "person_name"
    drugs = ["伊马替尼", "舒尼替尼", "吉西他滨", "奥沙利铂", "卡培他滨", "贝伐珠单抗", "紫杉醇"]
    assert screen_column("用药", drugs) is None


def _lydata() -> dict[str, list[str]]:
    rows = _lydata_rows()
    return {name: [r[name] for r in rows if r[name]] for name in rows[0]}


def test_no_false_positive_on_a_real_hospital_table_with_many_date_columns():
    columns = _lydata()
    assert len(columns) == 26 and len(columns["age"]) == 120
    generic_dates = [c for c in columns if c.endswith("_date") and not c.startswith("diagnose")]
    assert len(generic_dates) == 6  # FNA_date, PET_date, ...: dates named after nothing
    assert screen_columns({c: v for c, v in columns.items() if c != "id"}) == []


def test_a_real_hospital_table_lands_whole_through_the_clinical_loader(tmp_path):
    """The same records as a landed clinical file: every column kept, the dates typed as dates."""
    from assets.clinical.load import load_clinical
    from dagster_project.pseudonym import Pseudonymizer

    columns = _lydata()
    landing = tmp_path / "landing"
    (landing / "clinical").mkdir(parents=True)
    path = landing / "clinical" / "usz.csv"
    names = [c for c in columns if c != "id"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "center_id", *names])
        for row in _lydata_rows():
            writer.writerow([row["id"], "USZ", *(row[n] for n in names)])
    table, rejects, stats = load_clinical([path], landing, Pseudonymizer(b"k"))
    assert [r.rule for r in rejects] == [] and stats["identifier_columns"] == []
    assert table.height == 120 and set(names) <= set(table.columns)
    assert str(table.schema["diagnose_date"]) == "Date" and str(table.schema["CT_date"]) == "Date"


def _lydata_rows() -> list[dict[str, str]]:
    """lyDATA's three-level header flattened: patient columns by name, others as <top>_<name>."""
    path = Path(__file__).parent / "fixtures" / "clinical_real" / "lydata_2021_usz_oropharynx.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        top, _, low, *rows = list(csv.reader(handle))
    names = [
        name if group == "patient" else f"{group}_{name}"
        for group, name in zip(top, low, strict=True)
    ]
    return [dict(zip(names, row, strict=True)) for row in rows]


def test_resident_ids_a_spreadsheet_turned_into_numbers_are_still_found():
    # Excel keeps 15 significant digits of an 18-digit number typed into a cell; openpyxl reads
    # the float, the clinical loader writes it as repr(): the check character is gone, the
    # province and birth date are not
    as_numbers = [repr(float(f"{int(n[:17] + '0'):.14e}")) for n in GB11643_EXAMPLES]
    assert as_numbers[0] == "1.1010519491231e+17"
    finding = screen_column("证件", as_numbers)
    assert finding is not None and finding.rule == "national_id"
    assert screen_column("volume", ["1.5e+17", "2.25e+17", "9.1e+16"]) is None


def test_short_dropped_values_do_not_blank_other_text():
    redact = Redactor(["12", "3A", "王芳", "ZY2019000123", "654321"])
    out = redact("2012年入院，3A床，王芳，ZY2019000123，654321")
    assert out == "2012年入院，3A床，[redacted]，[redacted]，[redacted]"
