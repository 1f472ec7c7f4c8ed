"""Dagster layer of the portfolio domain: thin assets over assets.portfolio (pure logic).

- ``grants``: landing/portfolio/grants/* -> lake/grants (ingest).
- ``publications`` (multi-asset): landing/portfolio/publications/* -> lake/publications,
  lake/publication_authors, lake/publication_grants (ingest; grant links resolved against grants).
- one asset per ``sql/portfolio/*.sql`` file (the same SELECT the catalog exposes as a view),
  showing its result in the asset metadata.
- ``funding_trends_figure``: reports/portfolio/funding_trends.png from grants_per_year, shown in
  the asset metadata.
"""

from pathlib import Path

import dagster as dg

from dagster_project.core_assets import INGEST_TAG, reads
from dagster_project.instance import LAKE_POOL
from dagster_project.materialize import table_result
from dagster_project.quarantine import write_quarantine
from dagster_project.resources import LakeResource
from dagster_project.sql_assets import sql_file_asset
from quality.checks import accounting_check, suite_check

SQL_DIR = Path(__file__).resolve().parents[2] / "sql" / "portfolio"
TABLES = ("grants", "publications", "publication_authors", "publication_grants")


@dg.asset(
    group_name="portfolio",
    kinds={"python", "parquet"},
    tags={INGEST_TAG: "ingest"},
    metadata=reads("landing/portfolio/grants", "mappings"),
    pool=LAKE_POOL,
    description=(
        "One row per grant from landing/portfolio/grants/** (NSFC exports in their real shapes, "
        "NIH RePORTER API JSON, ExPORTER and project_io CSV, any format with a mapping in "
        "LAKE_HOME/mappings); duplicates merged by grant id, amount in whole currency units."
    ),
)
def grants(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    from assets.portfolio.grants import load_grants
    from dagster_project.lake import iter_files
    from dagster_project.mappings import load_mappings

    home = lake.lake()
    files = iter_files(home.landing / "portfolio" / "grants")
    mappings, mapping_errors = load_mappings(home.home, "grants")
    table, rejects, stats = load_grants(files, home.landing, mappings, mapping_errors)
    with home.transaction() as tx:
        tx.write_table("grants", table, keep_history=True)
        write_quarantine(tx, "grants", rejects)
    for reject in rejects:
        context.log.warning(str(reject))
    for path, why in stats["skipped_files"].items():
        context.log.info(f"{path} skipped: {why}")
    for error in mapping_errors.values():
        context.log.warning(f"mapping not used: {error}")
    stats["mapping_errors"] = mapping_errors
    return table_result(home, "grants", table, stats)


@dg.multi_asset(
    pool=LAKE_POOL,
    specs=[
        dg.AssetSpec(
            "publications",
            deps=["grants"],
            group_name="portfolio",
            kinds={"python", "parquet"},
            tags={INGEST_TAG: "ingest"},
            metadata=reads("landing/portfolio/publications"),
            description=(
                "One row per publication from landing/portfolio/publications/* (the group's "
                "export, MEDLINE, PubMed XML); duplicates merged by DOI, PMID, title + year."
            ),
        ),
        dg.AssetSpec(
            "publication_authors",
            deps=["grants"],
            group_name="portfolio",
            kinds={"python", "parquet"},
            description="One row per author of a publication: pub_id, position, name as written.",
        ),
        dg.AssetSpec(
            "publication_grants",
            deps=["grants"],
            group_name="portfolio",
            kinds={"python", "parquet"},
            description=(
                "One row per publication and grant reference (PubMed GrantList, MEDLINE GR, "
                "grant numbers in the text), resolved to grants.grant_id where possible."
            ),
        ),
    ],
)
def publications(context: dg.AssetExecutionContext, lake: LakeResource):
    from assets.portfolio.publications import load_publications
    from dagster_project.lake import iter_files

    home = lake.lake()
    files = iter_files(home.landing / "portfolio" / "publications")
    known = home.read_table("grants") if home.has_table("grants") else None
    pubs, authors, links, rejects, stats = load_publications(files, home.landing, grants=known)
    for reject in rejects:
        context.log.warning(str(reject))
    outputs = (
        ("publications", pubs, stats),
        ("publication_authors", authors, {"rows": authors.height}),
        (
            "publication_grants",
            links,
            {"rows": links.height, "linked": int(links["linked"].sum()) if links.height else 0},
        ),
    )
    with home.transaction() as tx:  # the three tables and the rejects are published together
        for name, frame, _ in outputs:
            tx.write_table(name, frame, keep_history=True)
        write_quarantine(tx, "publications", rejects)
    for name, frame, extra in outputs:
        result = table_result(home, name, frame, extra)
        yield dg.MaterializeResult(
            asset_key=name, metadata=result.metadata, data_version=result.data_version
        )


SQL_ASSETS = [sql_file_asset(path, "portfolio", TABLES) for path in sorted(SQL_DIR.glob("*.sql"))]


@dg.asset(
    group_name="portfolio",
    kinds={"python", "png"},
    deps=["grants_per_year"],
    description="Projects (bars) and amount (line) per year: reports/portfolio/funding_trends.png.",
)
def funding_trends_figure(
    context: dg.AssetExecutionContext, lake: LakeResource
) -> dg.MaterializeResult:
    import base64

    from assets.portfolio.figures import save_funding_trends_figure
    from dagster_project.catalog import lake_connection, read_select

    home = lake.lake()
    con = lake_connection(home, with_sql_views=False)
    try:
        per_year = con.sql(read_select(SQL_DIR / "grants_per_year.sql")).pl()
    finally:
        con.close()
    path = save_funding_trends_figure(per_year, home.reports_dir)
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "figure": dg.MetadataValue.md(f"![funding trends](data:image/png;base64,{encoded})"),
            "years": per_year.filter(per_year["year"].is_not_null()).height,
        }
    )


@dg.asset(
    group_name="portfolio",
    kinds={"python", "html"},
    deps=[
        "grants_summary",
        "grants_per_year",
        "grants_by_fund_type",
        "grants_by_region",
        "grants_by_institution",
        "grants_by_discipline",
        "grants_imaging_share",
    ],
    description="The funding-landscape analysis (projects and amount per year with growth, fund "
    "types, regions and institutions, disciplines, share of imaging) with its figures: "
    "reports/portfolio/funding_landscape.html.",
)
def funding_landscape_report(
    context: dg.AssetExecutionContext, lake: LakeResource
) -> dg.MaterializeResult:
    import base64

    from assets.portfolio.landscape import QUERIES, write_landscape_report
    from dagster_project.catalog import lake_connection, read_select

    home = lake.lake()
    con = lake_connection(home, with_sql_views=False)
    try:
        results = {name: con.sql(read_select(SQL_DIR / f"{name}.sql")).pl() for name in QUERIES}
    finally:
        con.close()
    path, figures = write_landscape_report(results, home.reports_dir)
    shown = {
        f"figure_{name}": dg.MetadataValue.md(
            f"![{name}](data:image/png;base64,{base64.b64encode(p.read_bytes()).decode('ascii')})"
        )
        for name, p in figures.items()
    }
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "grants": int(results["grants_summary"]["n_projects"].sum())
            if results["grants_summary"].height
            else 0,
            **shown,
        }
    )


defs = dg.Definitions(
    assets=[grants, publications, *SQL_ASSETS, funding_trends_figure, funding_landscape_report],
    asset_checks=[
        *[suite_check(table) for table in TABLES],
        accounting_check("grants"),
        accounting_check("publications"),
    ],
)
