"""From lake to paper (issue 17) on a lake the demo generator did not make, through the CLI.

Landing zone, all real public data:
- clinical: lifelines' ``lung`` (NCCTG advanced lung cancer, Loprinzi et al. 1994; 228 patients
  from 18 institutions, with real missing values): ``center_id`` = institution, one row without
  an institution (quarantined), and radMLBench Head-Neck-Radiomics-HN1's outcome (Target);
- features: HN1's real pyradiomics features, one file per center (centers assigned by row);
- grants: real NCI projects (``project_io_NCI_CA_subset.csv``: the first 300 rows and
  P30CA015083); publications: 307 real PubMed records with ``<GrantList>``.
Two studies: ``lung_os`` (survival only, 4 cohorts: train, internal validation, two external
institutions; funded by P30CA015083 and reported by PMID 420797, which cites it) and
``hn1_nodes`` (classification on HN1's features, one model, 20 bootstrap resamples).

Expected values are computed here from the landed files and the lake's own rows with pandas and
scipy, never taken from the tables under test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import radlake
from tests.conftest import shared_path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HN1 = ("radiomics_features", "radMLBench", "datasets", "Head-Neck-Radiomics-HN1.gz")
NIH = ("funding", "nih", "project_io_NCI_CA_subset.csv")
PUBMED = ("publications", "pubmed_xml", "pubmed20n0014_subset_307_with_grantlist.xml")
GRANT, PMID = "P30CA015083", "420797"
EXTERNAL = ["I16", "I21"]
LEFT_OUT = "I33"  # an institution in neither list: center_not_in_study
MIN_AGE = 45
LUNG = {
    "name": "lung_os",
    "cohort_query": f"select patient_key from clinical where center_id like 'I%' and age >= {MIN_AGE}",
    "split": {
        "internal_validation_fraction": 0.3,
        "external_validation_centers": EXTERNAL,
        "seed": 3,
    },
    "survival": [{"endpoint": "os", "time": "os_days", "event": "os_event", "groups": "sex"}],
    "funding": [GRANT],
    "publications": [PMID],
}
HN1_STUDY = {
    "name": "hn1_nodes",
    "cohort_query": "select patient_key from clinical where center_id like 'H%'",
    "label": "ln_metastasis",
    "features": {"external": {"feature_set": "hn1"}},
    "split": {
        "development_centers": ["H1"],
        "internal_validation_fraction": 0.3,
        "external_validation_centers": ["H2", "H3"],
        "seed": 7,
    },
    "models": ["logistic_regression"],
    "bootstrap": 20,
    "intended_use": "Research only: lymph-node status of head-and-neck cancer from CT radiomics.",
}


def _land(home: Path) -> dict[str, pd.DataFrame]:
    from lifelines.datasets import load_lung

    landing = home / "landing"
    (landing / "clinical").mkdir(parents=True, exist_ok=True)
    lung = load_lung().reset_index(drop=True)
    lung.columns = [c.replace(".", "_") for c in lung.columns]
    lung.insert(0, "patient_id", [f"L{i + 1:03d}" for i in range(len(lung))])
    lung.insert(1, "center_id", [f"I{int(v):02d}" if v == v else "" for v in lung.pop("inst")])
    lung = lung.rename(columns={"time": "os_days", "status": "os_event"})
    lung.to_csv(landing / "clinical" / "lung.csv", index=False)

    hn1 = pd.read_csv(shared_path(*HN1))
    hn1["ID"] = hn1["ID"].astype(str)
    hn1["center_id"] = np.where(
        np.arange(len(hn1)) % 5 < 3, "H1", np.where(np.arange(len(hn1)) % 5 == 3, "H2", "H3")
    )
    for center, rows in hn1.groupby("center_id"):
        folder = landing / "features" / str(center)
        folder.mkdir(parents=True, exist_ok=True)
        rows.drop(columns=["Target", "center_id"]).to_csv(folder / "hn1.csv", index=False)
    hn1.rename(columns={"ID": "patient_id", "Target": "ln_metastasis"})[
        ["patient_id", "center_id", "ln_metastasis"]
    ].to_csv(landing / "clinical" / "hn1.csv", index=False)

    grants = pd.read_csv(shared_path(*NIH))
    subset = pd.concat([grants.head(300), grants[grants["project_num"] == GRANT]]).drop_duplicates()
    (landing / "portfolio" / "grants").mkdir(parents=True, exist_ok=True)
    subset.to_csv(landing / "portfolio" / "grants" / "nci_projects.csv", index=False)
    (landing / "portfolio" / "publications").mkdir(parents=True, exist_ok=True)
    (landing / "portfolio" / "publications" / "pubmed.xml").write_bytes(
        shared_path(*PUBMED).read_bytes()
    )

    development = sorted(
        set(lung["center_id"]) - {"", LEFT_OUT, *EXTERNAL}, key=lambda c: int(c[1:])
    )
    studies = home / "studies"
    studies.mkdir(exist_ok=True)
    spec = {**LUNG, "split": {"development_centers": development, **LUNG["split"]}}
    (studies / "lung_os.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (studies / "hn1_nodes.yaml").write_text(yaml.safe_dump(HN1_STUDY, sort_keys=False))
    return {"lung": lung, "hn1": hn1, "grants": subset}


@pytest.fixture(scope="module")
def real_lake(tmp_path_factory):
    home = tmp_path_factory.mktemp("paper") / "lakehouse"
    env = {
        **os.environ,
        "LAKE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "LAKE_PSEUDONYM_KEY": "paper-test-secret",
        "RADLAKE_CONFIG_DIR": str(home.parent / "config"),
        "GX_ANALYTICS_ENABLED": "false",
        "MPLBACKEND": "Agg",
    }
    assert subprocess.run([str(BIN / "radlake"), "init"], env=env, cwd=REPO).returncode == 0
    landed = _land(home)
    result = subprocess.run(
        [str(BIN / "radlake"), "materialize", "--select", "*"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    (home / "materialize.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    con = radlake.connect(home)
    yield {"home": home, "con": con, "env": env, **landed}
    con.close()


def _cohorts(con, study: str) -> pd.DataFrame:
    splits = con.sql(f"select * from study_splits where study = '{study}'").df()
    splits["t1"] = np.where(
        splits["cohort"] == "external_validation",
        "external_validation:" + splits["center_id"],
        splits["cohort"],
    )
    return splits


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def test_table_one_matches_pandas_and_scipy(real_lake):
    """Every summary, missing count and p-value of lung_os's Table 1 against a direct computation
    on the same lake rows (study_splits joined to clinical)."""
    from scipy import stats

    con = real_lake["con"]
    splits = _cohorts(con, "lung_os")
    clinical = con.sql("select * from clinical").df()
    data = splits[["patient_key", "t1"]].merge(clinical, on="patient_key", how="left")
    table = con.sql("select * from table_one where study = 'lung_os'").df()
    assert set(table["model_version"]) and table["model_version"].nunique() == 1
    cohorts = ["train", "internal_validation", *[f"external_validation:{c}" for c in EXTERNAL]]
    assert list(dict.fromkeys(table["cohort"])) == cohorts
    n = table[table["variable"] == "n"].set_index("cohort")["summary"].astype(int)
    assert n.to_dict() == data.groupby("t1").size().to_dict()

    dtypes = con.sql("describe clinical").df().set_index("column_name")["column_type"]
    checked = 0
    for variable in ["age", "ph_ecog", "ph_karno", "pat_karno", "meal_cal", "wt_loss", "sex"]:
        rows = table[table["variable"] == variable]
        groups = {c: data.loc[data["t1"] == c, variable] for c in cohorts}
        for c in cohorts:  # missing counts per cohort
            assert set(rows.loc[rows["cohort"] == c, "n_missing"]) == {groups[c].isna().sum()}
        present = {c: g.dropna() for c, g in groups.items()}
        integer = dtypes[variable] in ("BIGINT", "INTEGER")
        if integer and data[variable].nunique() <= 10:  # categorical: n (%) and chi-squared
            levels = sorted(data[variable].dropna().unique())
            for level in levels:
                for c in cohorts:
                    count = int((present[c] == level).sum())
                    row = rows[(rows["cohort"] == c) & (rows["level"] == str(int(level)))]
                    shown = [float(x) for x in NUMBER.findall(row["summary"].item())]
                    assert shown[0] == count
                    assert shown[1] == pytest.approx(100 * count / len(present[c]), abs=0.051)
            observed = [[int((present[c] == lv).sum()) for lv in levels] for c in cohorts]
            expected_p = stats.chi2_contingency(observed).pvalue
            assert rows["test"].iloc[0].startswith("Chi-squared")
        else:
            normal = not any(
                len(g) >= 3 and stats.shapiro(g.astype(float)).pvalue < 0.05
                for g in present.values()
            )
            for c in cohorts:
                values = present[c].astype(float)
                shown = [
                    float(x)
                    for x in NUMBER.findall(rows.loc[rows["cohort"] == c, "summary"].item())
                ]
                if normal:
                    assert "±" in rows.loc[rows["cohort"] == c, "summary"].item()
                    assert shown == pytest.approx([values.mean(), values.std(ddof=1)], abs=0.051)
                else:
                    quartiles = [values.median(), values.quantile(0.25), values.quantile(0.75)]
                    assert shown == pytest.approx(quartiles, abs=0.051)
            samples = [g.astype(float) for g in present.values()]
            if normal:
                expected_p = stats.f_oneway(*samples).pvalue
                assert set(rows["test"]) == {"One-way ANOVA"}
            else:
                expected_p = stats.kruskal(*samples).pvalue
                assert set(rows["test"]) == {"Kruskal-Wallis"}
        assert rows["p_value"].to_numpy() == pytest.approx(expected_p, rel=1e-9)
        checked += 1
    assert checked == 7


def test_patient_flow_adds_up_to_the_landed_files(real_lake):
    """landed = every exclusion + every cohort, and each count equals a count on the landed CSVs."""
    con, lung, hn1 = real_lake["con"], real_lake["lung"], real_lake["hn1"]
    flow = con.sql("select * from patient_flow where study = 'lung_os'").df()
    landed = int(flow.loc[flow["kind"] == "start", "patients"].sum())
    excluded = int(flow.loc[flow["kind"] == "exclusion", "patients"].sum())
    included = int(flow.loc[flow["kind"] == "cohort", "patients"].sum())
    assert landed == len(lung) + len(hn1)  # every clinical row of every landed file
    assert landed == excluded + included
    assert (
        included
        == con.sql("select count(*) from study_splits where study = 'lung_os'").fetchall()[0][0]
    )

    def count(step: str, start: str) -> int:
        rows = flow[(flow["step"] == step) & flow["reason"].str.startswith(start)]
        return int(rows["patients"].sum())

    no_center = int((lung["center_id"] == "").sum())
    assert count("quarantine", "clinical row quarantined") == no_center == 1
    with_center = lung[lung["center_id"] != ""]
    assert count("cohort", "not in the cohort") == len(hn1) + int(
        (with_center["age"] < MIN_AGE).sum()
    )
    eligible = with_center[with_center["age"] >= MIN_AGE]
    assert count("eligibility", "center_not_in_study") == int(
        (eligible["center_id"] == LEFT_OUT).sum()
    )
    cohorts = flow[flow["kind"] == "cohort"].set_index("reason")["patients"]
    for center in EXTERNAL:
        assert cohorts[f"external_validation:{center}"] == int(
            (eligible["center_id"] == center).sum()
        )
    assert (real_lake["home"] / "reports" / "lung_os" / "patient_flow.png").stat().st_size > 20_000


def test_checklist_items_carry_the_lake_facts(real_lake):
    """A sample of filled TRIPOD+AI / CLEAR items against the lake tables they name."""
    con = real_lake["con"]
    items = con.sql("select * from reporting_checklist where study = 'hn1_nodes'").df()
    assert len(items) == 52 + 58
    item = items.set_index(["checklist", "item"])
    filled = items[items["status"] != "author to complete"]
    assert (filled["value"].str.len() > 0).all() and (filled["source"].str.len() > 0).all()
    # performance with CIs (CLEAR 47) equals model_metrics' AUC rows
    auc = con.sql(
        "select cohort, value, ci_low, ci_high from model_metrics where study = 'hn1_nodes' "
        "and metric = 'auc' and model = 'logistic_regression' and model_version = "
        "(select max(model_version) from reporting_checklist where study = 'hn1_nodes')"
    ).fetchall()
    assert len(auc) >= 3
    for cohort, value, low, high in auc:
        text = f"logistic_regression {cohort} {value:.3f} [{low:.3f}-{high:.3f}]"
        assert text in item.loc[("CLEAR", "47"), "value"]
    assert item.loc[("CLEAR", "47"), "status"] == "filled"
    # participants per analysis step (TRIPOD 21): counts per cohort from study_splits
    counts = con.sql(
        "select cohort, center_id, count(*), sum(label) from study_splits where study = 'hn1_nodes' group by all"
    ).fetchall()
    for cohort, center, n, events in counts:
        name = f"external_validation:{center}" if cohort == "external_validation" else cohort
        assert (
            f"{name}: {n} patients, {events} with ln_metastasis=1"
            in item.loc[("TRIPOD+AI", "21"), "value"]
        )
    # features from elsewhere (CLEAR 27): the distinct features of the landed table
    n_features = con.sql(
        "select count(distinct feature) from external_features where feature_set = 'hn1'"
    ).fetchall()[0][0]
    assert f"hn1: {n_features} features per case" in item.loc[("CLEAR", "27"), "value"]
    # no radiomics parameter file: the binning item is the author's; funding always is
    assert item.loc[("CLEAR", "23"), "status"] == "author to complete"
    assert item.loc[("TRIPOD+AI", "18a"), "status"] == "author to complete"
    # the CSV beside the report holds the same rows
    csv = pd.read_csv(
        real_lake["home"] / "reports" / "hn1_nodes" / "reporting_checklist.csv", dtype=str
    )
    assert len(csv) == len(items) and set(csv["status"]) == set(items["status"])
    # the model card: intended use from the YAML, the version's metrics
    card = (real_lake["home"] / "reports" / "hn1_nodes" / "model_card.html").read_text()
    assert HN1_STUDY["intended_use"] in card and "@media print" in card
    assert f"{auc[0][1]:.3f}" in card


def test_grant_outputs_link_a_real_nih_grant_to_its_study_and_papers(real_lake):
    con = real_lake["con"]
    row = con.sql(f"select * from grant_outputs where grant_id = '{GRANT}'").df().iloc[0]
    splits = _cohorts(con, "lung_os")
    citing = {
        r[0]
        for r in con.sql(
            f"select pub_id from publication_grants where grant_id = '{GRANT}' and linked"
        ).fetchall()
    }
    reporting = {
        r[0] for r in con.sql(f"select pub_id from publications where pmid = '{PMID}'").fetchall()
    }
    assert reporting and reporting <= citing  # the paper both reports the study and cites the grant
    assert bool(row["in_lake"]) and row["studies"] == "lung_os" and row["n_studies"] == 1
    assert row["patients"] == len(splits) and row["n_centers"] == splits["center_id"].nunique()
    assert row["papers"] == len(citing | reporting)
    assert row["papers_reporting_studies"] == len(reporting)
    provenance = con.sql(f"select * from paper_provenance where reference = '{PMID}'").df().iloc[0]
    assert provenance["study"] == "lung_os" and provenance["study_grants"] == GRANT
    assert GRANT in provenance["cited_grants"] and provenance["patients"] == len(splits)
    amount = real_lake["grants"].set_index("project_num").loc[GRANT, "total_cost"]
    funding = con.sql("select * from study_funding where study = 'lung_os'").df().iloc[0]
    assert (funding["n_grants"], funding["currency"]) == (1, "USD")
    assert funding["amount"] == pytest.approx(amount)


def test_data_dictionary_in_the_catalog_and_the_dagster_ui(real_lake):
    import dagster as dg

    from quality.dictionary import column_description
    from tests.clients import python_duckdb

    con = real_lake["con"]
    comments = dict(
        con.sql(
            "select column_name, comment from duckdb_columns() where table_name = 'grants'"
        ).fetchall()
    )
    assert comments["amount"] == column_description("grants", "amount")
    assert all(comments.values()), [c for c, t in comments.items() if not t]
    # an old client (DuckDB 1.4, the long-term-support line) reads the same comments
    script = (
        "import duckdb; c = duckdb.connect(r'%s', read_only=True); print(c.sql(\"select comment "
        "from duckdb_columns() where table_name = 'table_one' and column_name = 'summary'\")"
        ".fetchone()[0])" % (real_lake["home"] / "catalog.duckdb")
    )
    old = subprocess.run([str(python_duckdb()), "-c", script], capture_output=True, text=True)
    assert old.stdout.strip() == column_description("table_one", "summary"), old.stderr
    # the column view of the UI: TableColumn descriptions of the last materialization
    os.environ["DAGSTER_HOME"] = real_lake["env"]["DAGSTER_HOME"]
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["lung_os", "table_one"]))
    schema = event.asset_materialization.metadata["dagster/column_schema"].schema
    described = {c.name: c.description for c in schema.columns}
    assert described["p_value"] == column_description("table_one", "p_value")
    assert all(described.values())


def test_survival_report_holds_the_paper_sections(real_lake):
    report = (real_lake["home"] / "reports" / "lung_os" / "report.html").read_text()
    for heading in (
        "Patient flow",
        "Table 1: patient characteristics",
        "Reporting checklists",
        "Funding and publications",
    ):
        assert f"<h2>{heading}" in report
    assert report.count("data:image/png;base64,") >= 2  # flow diagram and Kaplan-Meier


def test_study_yaml_paper_keys_do_not_change_the_model_version():
    from assets.studies.spec import StudySpecError, parse_study

    base = {**HN1_STUDY}
    base.pop("intended_use")
    plain = parse_study(base)
    linked = parse_study(
        {**base, "funding": ["R01CA123456"], "publications": ["https://doi.org/10.1000/XYZ", "123"]}
    )
    assert linked.publications == ("10.1000/xyz", "123")
    assert plain.resolved_yaml() == linked.resolved_yaml()
    with pytest.raises(StudySpecError, match=r"publications\[0\].*neither a DOI"):
        parse_study({**base, "publications": ["my paper"]})


def test_funding_landscape_report_from_real_nih_grants(real_lake):
    """The landscape report's headline numbers against the landed NCI projects (no start years in
    project_io files: the per-year section says so)."""
    grants = real_lake["grants"]
    report = (real_lake["home"] / "reports" / "portfolio" / "funding_landscape.html").read_text()
    (n, amount) = (
        real_lake["con"]
        .sql("select n_projects, amount from grants_summary where source = 'nih'")
        .fetchall()[0]
    )
    assert n == grants["project_num"].nunique()
    assert amount == pytest.approx(grants.groupby("project_num")["total_cost"].first().sum())
    for heading in (
        "Summary",
        "Projects and amount per year",
        "Fund types",
        "Regions",
        "Institutions",
        "Disciplines",
        "Share of imaging",
    ):
        assert f"<h2>{heading}" in report
    assert "carry no start year" in report
