"""NIH grant files in the terms of the ExPORTER project CSV: ExPORTER itself, the RePORTER API v2
JSON, the RePORTER website's Export and the project_io summaries; rows of one core project are
aggregated by :func:`aggregate_exporter` (rules in ``grants.py``'s docstring).
Pure module (no Dagster import).
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date

from assets.portfolio.grant_cells import (
    Problems,
    cell,
    check_amount,
    check_year,
    clean_text,
    clean_title,
    int_or_none,
    normalize_header,
    row_label,
    split_keywords,
    wrong_columns,
    year_or_none,
)
from dagster_project.sheets import Sheet, cell_text

# header keys (normalized) that identify each NIH format
EXPORTER_KEYS = ("coreprojectnum", "fy")
PROJECT_IO_KEYS = ("projectnum", "totalcost")
# the RePORTER website's "Export" CSV (SearchResult_Export.csv, metadata rows above the header)
REPORTER_EXPORT_KEYS = ("projectnumber", "fiscalyear", "contactpiprojectleader")


def is_reporter_json(sheet: Sheet) -> bool:
    """NIH RePORTER API v2 project records (``/v2/projects/search`` results)."""
    keys = set(sheet.header)
    return (
        sheet.kind == "json"
        and "fiscal_year" in keys
        and bool(keys & {"core_project_num", "project_num"})
    )


# ExPORTER files that sit beside the project files but hold no grants
_COMPANIONS = (
    ({"applicationid", "abstracttext"}, "ExPORTER abstracts (APPLICATION_ID, ABSTRACT_TEXT)"),
    ({"pmid", "projectnumber"}, "ExPORTER publication links (PMID, PROJECT_NUMBER)"),
    ({"pmid", "pubtitle"}, "ExPORTER publications (PMID, PUB_TITLE)"),
    ({"patentid", "patenttitle"}, "ExPORTER patents (PATENT_ID, PATENT_TITLE)"),
)


def companion_file(header: list[str]) -> str | None:
    keys = {normalize_header(h)[0] for h in header}
    for signature, what in _COMPANIONS:
        if signature <= keys:
            return f"{what}, not grant records"
    return None


def contact_pi(names: str | None) -> str | None:
    """The contact PI of an ExPORTER PI_NAMEs cell ("A, B (contact); C, D;"), else the first."""
    if not names:
        return None
    parts = [p.strip() for p in names.split(";") if p.strip()]
    for part in parts:
        if "(contact)" in part.lower():
            return clean_text(re.sub(r"\(contact\)", "", part, flags=re.IGNORECASE))
    return clean_text(parts[0]) if parts else None


def exporter_rows(sheet: Sheet):
    """(k, record label, cells, {normalized ExPORTER column: text}) of an ExPORTER CSV."""
    index = sheet.index()
    for k, (position, line, cells) in enumerate(sheet.rows, start=1):
        values = {name: cell(cells, i) for name, i in index.items()}
        yield k, row_label(sheet, k, position, line), cells, values


def reporter_export_rows(sheet: Sheet):
    """The RePORTER website export (Project Number, Fiscal Year, Total Cost, Contact PI / Project
    Leader, Organization Name ...) in ExPORTER terms; a row with only "Total Cost (Sub Projects)"
    is a sub-project (its cost is inside the parent's Total Cost)."""
    index: dict[str, int] = {}
    for i, name in enumerate(sheet.header):  # the brackets are part of these names
        key = re.sub(r"[^0-9a-z]", "", unicodedata.normalize("NFKC", name).lower())
        index.setdefault(key, i)
    for k, (position, line, cells) in enumerate(sheet.rows, start=1):

        def get(name: str, cells: list[str | None] = cells) -> str | None:
            return cell(cells, index.get(name))

        number = get("projectnumber") or ""
        core = re.sub(r"^\d(?=[A-Z])|-.*$", "", number.replace(" ", "").upper()) or None
        contact = get("contactpiprojectleader")
        sub_only = get("totalcost") is None and get("totalcostsubprojects") is not None
        values = {
            "applicationid": get("applicationid"),
            "coreprojectnum": core,
            "fy": get("fiscalyear"),
            "totalcost": get("totalcost"),
            "subprojectid": "sub-project" if sub_only else None,
            "projecttitle": get("projecttitle"),
            "pinames": f"{contact} (contact)" if contact else None,
            "orgname": get("organizationname"),
            "orgstate": get("organizationstate"),
            "orgcountry": get("organizationcountry"),
            "activity": get("activity"),
            "projectstart": get("projectstartdate"),
            "projectend": get("projectenddate"),
            "projectterms": get("projectterms"),
        }
        yield k, row_label(sheet, k, position, line), cells, values


def reporter_rows(sheet: Sheet):
    """RePORTER API v2 project objects in ExPORTER terms (the same rules apply to both)."""
    for k, project in enumerate(sheet.records, start=1):
        org = project.get("organization") or {}
        pis = project.get("principal_investigators") or []
        names = [
            f"{p.get('full_name') or ''}{' (contact)' if p.get('is_contact_pi') else ''}"
            for p in pis
            if isinstance(p, dict)
        ]
        core = project.get("core_project_num")
        if not core and project.get("project_num"):
            core = re.sub(r"^\d|-.*$", "", str(project["project_num"]))
        values = {
            "applicationid": cell_text(project.get("appl_id")),
            "coreprojectnum": cell_text(core),
            "fy": cell_text(project.get("fiscal_year")),
            "totalcost": cell_text(project.get("award_amount")),
            "subprojectid": cell_text(project.get("subproject_id")),
            "projecttitle": cell_text(project.get("project_title")),
            "pinames": "; ".join(n for n in names if n.strip()) or None,
            "orgname": cell_text(org.get("org_name")),
            "orgstate": cell_text(org.get("org_state")),
            "orgcountry": cell_text(org.get("org_country")),
            "activity": cell_text(project.get("activity_code")),
            "projectstart": cell_text(project.get("project_start_date")),
            "projectend": cell_text(project.get("project_end_date")),
            "projectterms": cell_text(project.get("pref_terms")),
        }
        yield k, f"record {k}", [], values


def parse_nih_rows(rows, path: str, order: int, width: int | None, fmt: str, stats: dict):
    this_year = date.today().year
    records, rejects = [], []
    amount_column, id_column = {
        "nih_reporter_api": ("award_amount", "core_project_num"),
        "nih_reporter_export": ("Total Cost", "Project Number"),
    }.get(fmt, ("TOTAL_COST", "CORE_PROJECT_NUM"))
    for k, record, cells, values in rows:
        stats["landed"] += 1
        where = f"{record} of {path}"
        if width is not None and any(c for c in cells[width:]):
            rejects.append(wrong_columns(path, record, where, len(cells), width))
            continue
        problems = Problems()
        grant_id = (values.get("coreprojectnum") or "").replace(" ", "").upper() or None
        if not grant_id:
            problems.add(
                "missing_grant_id",
                f"{where} has no grant id (column '{id_column}' is empty; fill it in or "
                f"remove the row, and land the file again)",
            )
        else:
            where = f"{where} (grant {grant_id})"
        raw_amount = values.get("totalcost")
        amount, _factor = check_amount(problems, raw_amount, amount_column, where)
        fiscal_year = check_year(
            problems, values.get("fy"), "FY", where, "fiscal year", this_year + 1
        )
        start = year_or_none(values.get("projectstart"))
        end = year_or_none(values.get("projectend"))
        reject = problems.reject(path, record)
        if reject:
            rejects.append(reject)
            continue
        subproject = bool(values.get("subprojectid"))
        country = values.get("orgcountry")
        records.append(
            {
                "grant_id": grant_id,
                "source": "nih",
                "title": clean_title(values.get("projecttitle")),
                "pi": contact_pi(values.get("pinames")),
                "institution": values.get("orgname"),
                "region": values.get("orgstate"),
                "country": country.title() if country else None,
                "fund_type_original": (values.get("activity") or grant_id[:3]).upper(),
                # sub-project cost is already inside the parent row's TOTAL_COST
                "amount": None if subproject else amount,
                "currency": "USD",
                "amount_unit": "USD",
                "amount_original": None if subproject else raw_amount,
                "amount_original_unit": "USD" if raw_amount and not subproject else None,
                "discipline_code": grant_id[3:5],
                "keywords": split_keywords(values.get("projectterms")),
                "source_format": fmt,
                "_fy": fiscal_year,
                "_project_start": start,
                "_project_end": end,
                "_application_id": values.get("applicationid"),
                "_order": (order, k),
                "_file": path,
            }
        )
    return records, rejects


def parse_nih_project_io(sheet: Sheet, path: str, order: int, stats: dict):
    index = sheet.index()
    width = len(sheet.header)
    records, rejects = [], []
    for k, (position, line, cells) in enumerate(sheet.rows, start=1):
        stats["landed"] += 1
        record = row_label(sheet, k, position, line)
        where = f"{record} of {path}"
        if any(c for c in cells[width:]):
            rejects.append(wrong_columns(path, record, where, len(cells), width))
            continue
        problems = Problems()
        grant_id = (cell(cells, index.get("projectnum")) or "").replace(" ", "").upper() or None
        if not grant_id:
            problems.add(
                "missing_grant_id",
                f"{where} has no grant id (column 'project_num' is empty; fill it in or remove "
                f"the row, and land the file again)",
            )
        else:
            where = f"{where} (grant {grant_id})"
        raw_amount = cell(cells, index.get("totalcost"))
        amount, _factor = check_amount(problems, raw_amount, "total_cost", where)
        reject = problems.reject(path, record)
        if reject:
            rejects.append(reject)
            continue
        records.append(
            {
                "grant_id": grant_id,
                "source": "nih",
                "fund_type_original": grant_id[:3],
                "amount": amount,
                "currency": "USD",
                "amount_unit": "USD",
                "amount_original": raw_amount,
                "amount_original_unit": "USD" if raw_amount is not None else None,
                "discipline_code": grant_id[3:5],
                "n_pubs": int_or_none(cell(cells, index.get("npubs"))),
                "n_patents": int_or_none(cell(cells, index.get("npatents"))),
                "source_format": "nih_project_io",
                "_order": (order, k),
                "_file": path,
            }
        )
    return records, rejects


def aggregate_exporter(rows: list[dict]) -> tuple[list[dict], int]:
    """ExPORTER application rows -> one record per core project; returns (records, rows merged)."""
    by_application: dict[str, dict] = {}
    anonymous = []
    for row in sorted(rows, key=lambda r: r["_order"]):
        if row["_application_id"]:
            by_application[row["_application_id"]] = row  # newest file wins
        else:
            anonymous.append(row)
    unique = list(by_application.values()) + anonymous
    by_grant: dict[str, list[dict]] = {}
    for row in unique:
        by_grant.setdefault(row["grant_id"], []).append(row)
    records = []
    for grant_id, group in by_grant.items():
        group.sort(key=lambda r: (r["_fy"] or 0, r["_order"]))
        latest = dict(group[-1])
        amounts = [r["amount"] for r in group if r["amount"] is not None]
        ends = [r["_project_end"] for r in group if r["_project_end"] is not None]
        years = [r["_fy"] for r in group if r["_fy"] is not None]
        latest.update(
            grant_id=grant_id,
            amount=round(sum(amounts), 2) if amounts else None,
            amount_original=None,  # a sum of fiscal years has no single original cell
            amount_original_unit="USD" if amounts else None,
            start_year=min(years) if years else None,
            end_year=max(ends) if ends else (max(years) if years else None),
            n_fiscal_years=len(set(years)) or None,
            _files=sorted({r["_file"] for r in group}),
            _order=max(r["_order"] for r in group),
        )
        records.append(latest)
    return records, len(rows) - len(records)
