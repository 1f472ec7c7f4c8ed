"""Publication files (landing/portfolio/publications/*) -> `publications`, `publication_authors`,
`publication_grants`.

Formats, detected from the content (not the file name):
- ``export``: the group's list export (../shared/data/publications/seed_export/portfolio_export.txt):
  numbered records ``12.Title``; an authors line separated by ';' (absent for some records); a
  citation line ``Journal Year;Volume(Issue):pages``; the abstract; page-chrome words such as
  "Result Analysis", "Print", "Save", "E-mail" on lines of their own are ignored.
- ``medline``: PubMed MEDLINE/.nbib (``TAG - value`` lines, 6-space continuation lines).
- ``pubmed_xml``: PubMed XML (``<PubmedArticleSet>``), read with ``ElementTree.iterparse`` so a large
  file is never held as a tree.

Duplicates (the same paper twice in one export, or in several files and formats) are merged by DOI,
then PMID, then normalized title + year (never across two different PMIDs or DOIs). The merged row
takes each field from the best source that has it (PubMed XML, then MEDLINE, then the export);
``source_files`` and ``source_formats`` list every origin. ``pub_id`` is ``pmid:<n>``, else
``doi:<doi>``, else ``title:<sha1 of normalized title|year, 16 hex>``.

``publication_grants``: one row per publication and grant reference as written (grain: pub_id,
grant_id, grant_raw). References come from PubMed ``<GrantList>`` / MEDLINE ``GR`` (``link_source``
"grant_list") and from grant numbers in the record's text ("text"; see grant_numbers.py). With a
``grants`` table, NIH references resolve to its core project numbers: the exact core project number
when the activity is written ("5 P30 CA17065" -> P30CA017065), else every grant with the same IC +
serial ("CA 13208" -> any xxxCA013208; ``match_rule`` "serial"); NSFC references to the approval
number. Unresolved references keep ``linked`` false and ``grant_id`` = the core project number (or
the activity-less key CA013208; another funder's number without spaces); an NIH/NSFC reference
whose number cannot be read ("1R01") keeps the text as written with ``match_rule`` "unreadable".

Malformed records (no citation line, no title, an XML record that does not parse, a MEDLINE line
with no tag, a MEDLINE record with neither PMID nor title) are quarantined with their position in the file (record number and line); the rest of
the file lands. Units of ``stats``: records. Pure module (no Dagster import).
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from assets.portfolio.grant_numbers import GrantKey, grants_in_text, parse_grant
from assets.portfolio.grants import frame_from_rows, relative_path
from assets.portfolio.lookups import normalize_text
from dagster_project.quarantine import Reject
from dagster_project.sheets import read_text

TARGET = "publications"
FORMAT_PRIORITY = {"pubmed_xml": 0, "medline": 1, "export": 2}  # which source's fields win a merge

PUBLICATIONS_SCHEMA: dict[str, pl.DataType] = {
    "pub_id": pl.String,
    "title": pl.String,
    "authors": pl.List(pl.String),
    "journal": pl.String,
    "journal_abbrev": pl.String,
    "year": pl.Int32,
    "volume": pl.String,
    "issue": pl.String,
    "pages": pl.String,
    "abstract": pl.String,
    "doi": pl.String,
    "pmid": pl.String,
    "source_files": pl.List(pl.String),
    "source_formats": pl.List(pl.String),
    "n_records": pl.Int32,
}
AUTHORS_SCHEMA: dict[str, pl.DataType] = {
    "pub_id": pl.String,
    "position": pl.Int32,
    "name": pl.String,
}
PUBLICATION_GRANTS_SCHEMA: dict[str, pl.DataType] = {
    "pub_id": pl.String,
    "grant_id": pl.String,
    "grant_key": pl.String,
    "grant_raw": pl.String,
    "agency": pl.String,
    "agency_kind": pl.String,
    "link_source": pl.String,
    "match_rule": pl.String,
    "linked": pl.Boolean,
    "source_file": pl.String,
}

# page chrome of the export (whole lines, case-insensitive): web-page buttons, not data
EXPORT_CHROME = {
    "result analysis",
    "print",
    "save",
    "e-mail",
    "email",
    "export",
    "download",
    "select all",
    "share",
    "cite",
    "back to top",
    "previous",
    "next",
    "close",
    "结果分析",
    "打印",
    "保存",
    "导出",
    "下载",
    "全选",
    "分享",
    "引用",
}
_EXPORT_HEADER = re.compile(r"^\s*(\d{1,5})\s*[.．、]\s*(\S.*)$")
_CITATIONS = (
    # "Chinese Journal of Radiology 2025;59(5):549-557"
    re.compile(
        r"^(?P<journal>\S.*?)[\s,.]+(?P<year>(?:19|20)\d{2})\s*[;；]\s*(?P<volume>[^\s():;,]*)\s*"
        r"(?:\((?P<issue>[^)]*)\))?\s*(?::\s*(?P<pages>\S.*?))?\s*\.?\s*$"
    ),
    # "Chinese Journal of Radiology, 2025, 59(5): 549-557" (GB/T 7714 order)
    re.compile(
        r"^(?P<journal>\S.*?)\s*[,，]\s*(?P<year>(?:19|20)\d{2})\s*[,，]\s*(?P<volume>[^\s():;,]*)\s*"
        r"(?:\((?P<issue>[^)]*)\))?\s*(?::\s*(?P<pages>\S.*?))?\s*\.?\s*$"
    ),
)
_MEDLINE_TAG = re.compile(r"^([A-Z][A-Z0-9]{1,3})\s*- ?(.*)$")
_DOI_PREFIX = re.compile(r"^(?:https?://(?:dx\.)?doi\.org/|doi:\s*)", re.IGNORECASE)


@dataclass
class _Record:
    """One parsed record of one file, before merging."""

    fmt: str
    file: str
    order: int  # file order, then record order: the merge keeps the earliest of equal priority
    position: int
    title: str | None = None
    authors: list[str] = field(default_factory=list)
    journal: str | None = None
    journal_abbrev: str | None = None
    year: int | None = None
    volume: str | None = None
    issue: str | None = None
    pages: str | None = None
    abstract: str | None = None
    doi: str | None = None
    pmid: str | None = None
    grants: list[GrantKey] = field(default_factory=list)  # listed grants (GrantList / GR)
    text: str = ""  # where grant numbers may be written


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    text = re.sub(r"\s+", " ", str(value)).strip()
    return text or None


def clean_doi(value: str | None) -> str | None:
    """A DOI as written, without resolver prefix ("https://doi.org/", "doi:") or final period."""
    text = _clean(value)
    if not text:
        return None
    text = _DOI_PREFIX.sub("", text).rstrip(".")
    return text if text.startswith("10.") else None


def normalized_title(title: str | None) -> str:
    """Title for duplicate matching: NFKC, lower case, letters and digits only (CJK kept)."""
    return re.sub(r"[\W_]+", "", normalize_text(title).lower())


def _year(text: str | None) -> int | None:
    match = re.search(r"(?:19|20)\d{2}", text or "")
    return int(match.group(0)) if match else None


def _position(record: int, line: int | None = None) -> str:
    return f"record {record}" + (f" (line {line})" if line else "")


def _reject(path: str, rule: str, record: str, text: str) -> Reject:
    return Reject(path, TARGET, rule, f"{rule}: {text}", record=record)


# the group's export ---------------------------------------------------------------------------------
def _citation(line: str) -> re.Match | None:
    for pattern in _CITATIONS:
        match = pattern.match(line.strip())
        if match:
            return match
    return None


def _citation_follows(lines: list[tuple[int, str]], i: int) -> bool:
    """A citation line within the 3 lines after line i, with no other numbered line between."""
    for j in range(i + 1, min(i + 4, len(lines))):
        if _citation(lines[j][1]):
            return True
        if _EXPORT_HEADER.match(lines[j][1]):
            return False
    return False


def parse_export(text: str, path: str, order: int = 0) -> tuple[list[_Record], list[Reject]]:
    """The group's numbered export -> records; malformed records -> Rejects (record, line)."""
    lines = [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and line.strip().lower() not in EXPORT_CHROME
    ]
    # a numbered line with a citation right after it starts a record ("strong"); one without
    # starts a (malformed, quarantined) record only when it continues the numbering and no
    # strong record has that number, so "2. In a second paragraph..." stays in its abstract
    candidates = []
    for i, (_number, line) in enumerate(lines):
        match = _EXPORT_HEADER.match(line)
        if match and not _citation(line):
            candidates.append((i, int(match.group(1)), match.group(2), _citation_follows(lines, i)))
    strong_numbers = {n for _i, n, _title, strong in candidates if strong}
    starts: list[int] = []  # indexes into `lines` where a record begins
    previous = None
    for i, n, title, strong in candidates:
        weak = (
            previous is not None
            and n == previous + 1
            and n not in strong_numbers
            and not re.match(r"\d", title)
        )
        if strong or weak:
            starts.append(i)
            previous = n
    records, rejects = [], []
    if starts and starts[0] > 0 or not starts and lines:
        first = lines[0][0]
        last = lines[(starts[0] if starts else len(lines)) - 1][0]
        rejects.append(
            _reject(
                path,
                "export_stray_text",
                f"lines {first}-{last}",
                f"lines {first}-{last} of {path} come before the first numbered record and are not a "
                f"record (remove them or number the record, and land the file again)",
            )
        )
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        block = lines[start:end]
        header_line, header = block[0]
        match = _EXPORT_HEADER.match(header)
        number = int(match.group(1))
        where = _position(number, header_line)
        cite_at = next((j for j in range(1, min(4, len(block))) if _citation(block[j][1])), None)
        if cite_at is None:
            rejects.append(
                _reject(
                    path,
                    "export_missing_citation",
                    where,
                    f"{where} of {path} has no citation line 'Journal Year;Volume(Issue):pages' "
                    f"within 3 lines of its title (add it and land the file again)",
                )
            )
            continue
        title_lines = [match.group(2)] + [t for _, t in block[1 : cite_at - 1]]
        author_line = block[cite_at - 1][1] if cite_at >= 2 else None
        cite = _citation(block[cite_at][1])
        abstract = _clean(" ".join(t for _, t in block[cite_at + 1 :]))
        record = _Record(
            fmt="export",
            file=path,
            order=order,
            position=number,
            title=_clean(" ".join(title_lines)),
            authors=[a.strip() for a in (author_line or "").split(";") if a.strip()],
            journal=_clean(cite.group("journal")),
            year=int(cite.group("year")),
            volume=_clean(cite.group("volume")),
            issue=_clean(cite.group("issue")),
            pages=_clean(cite.group("pages")),
            abstract=abstract,
            text=" ".join(filter(None, [abstract])),
        )
        records.append(record)
    return records, rejects


# MEDLINE ------------------------------------------------------------------------------------------
def parse_medline(text: str, path: str, order: int = 0) -> tuple[list[_Record], list[Reject]]:
    """MEDLINE (.nbib/.txt) -> records. A record is a run of tagged lines ended by a blank line
    (or a new PMID line); a line that is neither a tag nor a continuation rejects its record."""
    blocks: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            if current:
                blocks.append(current)
                current = []
            continue
        if line.startswith("PMID-") and current:
            blocks.append(current)
            current = []
        current.append((number, line))
    if current:
        blocks.append(current)
    records, rejects = [], []
    for index, block in enumerate(blocks, start=1):
        where = _position(index, block[0][0])
        fields: list[tuple[str, str]] = []
        bad_line = None
        for number, line in block:
            match = _MEDLINE_TAG.match(line)
            if match and not line[:1].isspace():
                fields.append((match.group(1), match.group(2).strip()))
            elif line[:1].isspace() and fields:
                tag, value = fields[-1]
                fields[-1] = (tag, f"{value} {line.strip()}".strip())
            else:
                bad_line = number
                break
        if bad_line is not None:
            rejects.append(
                _reject(
                    path,
                    "medline_bad_line",
                    _position(index, bad_line),
                    f"{_position(index, bad_line)} of {path} is neither a 'TAG - value' line nor an "
                    f"indented continuation (fix or remove the line and land the file again)",
                )
            )
            continue
        values: dict[str, list[str]] = {}
        for tag, value in fields:
            values.setdefault(tag, []).append(value)

        def first(tag: str, values=values) -> str | None:
            return _clean(values[tag][0]) if values.get(tag) else None

        if not first("PMID") and not first("TI"):
            rejects.append(
                _reject(
                    path,
                    "medline_missing_id",
                    where,
                    f"{where} of {path} has neither a PMID nor a TI (title) line (export the record "
                    f"again from PubMed and land the file again)",
                )
            )
            continue
        authors: list[str] = []
        previous_tag = None
        for tag, value in fields:
            if tag in ("FAU", "CN") or (tag == "AU" and previous_tag != "FAU"):
                authors.append(_clean(value))
            previous_tag = tag
        doi = None
        for tag in ("LID", "AID"):
            for value in values.get(tag, []):
                if value.endswith("[doi]"):
                    doi = doi or clean_doi(value[: -len("[doi]")])
        grants = []
        for value in values.get("GR", []):
            parts = [p.strip() for p in value.split("/")]
            raw = parts[0]
            if raw:
                grants.append(
                    parse_grant(
                        raw,
                        agency=parts[2] if len(parts) > 2 else None,
                        acronym=parts[1] if len(parts) > 1 else None,
                        country=parts[3] if len(parts) > 3 else None,
                    )
                )
        abstract = first("AB")
        records.append(
            _Record(
                fmt="medline",
                file=path,
                order=order,
                position=index,
                title=first("TI"),
                authors=[a for a in authors if a],
                journal=first("JT") or first("TA"),
                journal_abbrev=first("TA"),
                year=_year(first("DP")),
                volume=first("VI"),
                issue=first("IP"),
                pages=first("PG"),
                abstract=abstract,
                doi=doi,
                pmid=first("PMID"),
                grants=grants,
                text=" ".join(filter(None, [abstract] + values.get("OAB", []))),
            )
        )
    return records, rejects


# PubMed XML ---------------------------------------------------------------------------------------
def _itertext(element: ET.Element | None) -> str | None:
    return None if element is None else _clean("".join(element.itertext()))


def _xml_record(article: ET.Element, path: str, order: int, index: int) -> _Record:
    """One <PubmedArticle> (or <PubmedBookArticle>) element -> a record."""
    citation = article.find("MedlineCitation")
    if citation is None:  # a book article
        book = article.find("BookDocument")
        title = _itertext(book.find("ArticleTitle")) if book is not None else None
        if book is not None and not title:
            title = _itertext(book.find("Book/BookTitle"))
        return _Record(
            fmt="pubmed_xml",
            file=path,
            order=order,
            position=index,
            title=title,
            pmid=_clean(book.findtext("PMID")) if book is not None else None,
            year=_year(book.findtext("Book/PubDate/Year")) if book is not None else None,
        )
    art = citation.find("Article")
    art = art if art is not None else ET.Element("Article")
    issue = art.find("Journal/JournalIssue")
    pub_date = issue.find("PubDate") if issue is not None else None
    year = None
    if pub_date is not None:
        year = _year(pub_date.findtext("Year")) or _year(pub_date.findtext("MedlineDate"))
    year = year or _year(art.findtext("ArticleDate/Year"))
    authors = []
    for author in art.findall("AuthorList/Author"):
        collective = _itertext(author.find("CollectiveName"))
        last = _clean(author.findtext("LastName"))
        given = _clean(author.findtext("ForeName")) or _clean(author.findtext("Initials"))
        name = collective or (f"{last}, {given}" if last and given else last)
        if name:
            authors.append(name)
    parts = []
    for part in art.findall("Abstract/AbstractText"):
        body = _itertext(part)
        if body:
            label = part.get("Label")
            parts.append(f"{label}: {body}" if label else body)
    abstract = " ".join(parts) or None
    doi = None
    for article_id in article.findall("PubmedData/ArticleIdList/ArticleId"):
        if article_id.get("IdType") == "doi":
            doi = clean_doi(article_id.text)
            break
    if doi is None:
        for location in art.findall("ELocationID"):
            if location.get("EIdType") == "doi":
                doi = clean_doi(location.text)
                break
    pages = _clean(art.findtext("Pagination/MedlinePgn"))
    if not pages:
        start, end = art.findtext("Pagination/StartPage"), art.findtext("Pagination/EndPage")
        pages = _clean("-".join(p for p in (start, end) if p))
    grants = []
    for grant in art.findall("GrantList/Grant"):
        raw = _clean(grant.findtext("GrantID"))
        if raw:
            grants.append(
                parse_grant(
                    raw,
                    agency=grant.findtext("Agency"),
                    acronym=grant.findtext("Acronym"),
                    country=grant.findtext("Country"),
                )
            )
    title = _itertext(art.find("ArticleTitle")) or _itertext(art.find("VernacularTitle"))
    return _Record(
        fmt="pubmed_xml",
        file=path,
        order=order,
        position=index,
        title=title,
        authors=authors,
        journal=_clean(art.findtext("Journal/Title")),
        journal_abbrev=_clean(art.findtext("Journal/ISOAbbreviation"))
        or _clean(citation.findtext("MedlineJournalInfo/MedlineTA")),
        year=year,
        volume=_clean(issue.findtext("Volume")) if issue is not None else None,
        issue=_clean(issue.findtext("Issue")) if issue is not None else None,
        pages=pages,
        abstract=abstract,
        doi=doi,
        pmid=_clean(citation.findtext("PMID")),
        grants=grants,
        text=" ".join(filter(None, [abstract])),
    )


_ARTICLE_TAGS = ("PubmedArticle", "PubmedBookArticle")


def parse_pubmed_xml(
    file: Path, path: str, order: int = 0
) -> tuple[list[_Record], list[Reject], dict]:
    """PubMed XML -> records, streaming with iterparse. If the document is broken, it is re-read
    record by record so every well-formed <PubmedArticle> still lands and each broken one is
    quarantined with its record number and line. Returns (records, rejects, info)."""
    records: list[_Record] = []
    info = {"grants_without_id": 0, "recovered": False}
    try:
        index = 0
        root = None
        for event, element in ET.iterparse(file, events=("start", "end")):
            if root is None and event == "start":
                root = element
            if event == "end" and element.tag in _ARTICLE_TAGS:
                index += 1
                records.append(_xml_record(element, path, order, index))
                info["grants_without_id"] += _grants_without_id(element)
                root.clear()  # keep memory flat on large files
        return records, [], info
    except ET.ParseError:
        info["recovered"] = True
    return _parse_pubmed_xml_by_record(file, path, order, info)


def _grants_without_id(element: ET.Element) -> int:
    return sum(
        1
        for g in element.findall("MedlineCitation/Article/GrantList/Grant")
        if not _clean(g.findtext("GrantID"))
    )


def _parse_pubmed_xml_by_record(file: Path, path: str, order: int, info: dict):
    text, _encoding = read_text(file)
    opener = re.compile(r"<(PubmedArticle|PubmedBookArticle)(?=[\s>])")
    starts = [m for m in opener.finditer(text)]
    records, rejects = [], []
    for index, match in enumerate(starts, start=1):
        end = starts[index].start() if index < len(starts) else len(text)
        chunk = text[match.start() : end]
        closing = f"</{match.group(1)}>"
        line = text.count("\n", 0, match.start()) + 1
        where = _position(index, line)
        cut = chunk.rfind(closing)
        try:
            if cut < 0:
                raise ET.ParseError(f"no closing {closing}")
            element = ET.fromstring(chunk[: cut + len(closing)])
        except ET.ParseError as exc:
            rejects.append(
                _reject(
                    path,
                    "xml_malformed_record",
                    where,
                    f"{where} of {path} is not well-formed XML ({exc}); the other records of the file "
                    f"were read (fix the record or export it again from PubMed)",
                )
            )
            continue
        records.append(_xml_record(element, path, order, index))
        info["grants_without_id"] += _grants_without_id(element)
    if not starts:
        rejects.append(
            _reject(
                path,
                "xml_malformed_record",
                "",
                f"{path} is not well-formed XML and holds no <PubmedArticle> record (export it again "
                f"from PubMed and land it again)",
            )
        )
    return records, rejects, info


# format detection -----------------------------------------------------------------------------------
def detect_format(head: str) -> str | None:
    """pubmed_xml / medline / export from the first few kB of a file; None when unknown."""
    text = head.lstrip("\ufeff \r\n\t")
    if text.startswith("<?xml") or "<PubmedArticleSet" in head or "<PubmedArticle>" in head:
        return "pubmed_xml"
    if re.search(r"^PMID- ?\d", head, re.MULTILINE):
        return "medline"
    if any(_EXPORT_HEADER.match(line) for line in head.splitlines()[:20]):
        return "export"
    return None


# merging --------------------------------------------------------------------------------------------
class _UnionFind:
    """Groups of record indexes, each knowing the PMIDs and DOIs of its members."""

    def __init__(self, records: list[_Record]):
        self.parent = list(range(len(records)))
        self.pmids = [{r.pmid} - {None} for r in records]
        self.dois = [{r.doi.lower()} if r.doi else set() for r in records]  # DOIs ignore case

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            keep, drop = min(ra, rb), max(ra, rb)
            self.parent[drop] = keep
            self.pmids[keep] |= self.pmids[drop]
            self.dois[keep] |= self.dois[drop]

    def compatible(self, a: int, b: int) -> bool:
        """Two groups may be the same paper: together they hold at most one PMID and one DOI."""
        ra, rb = self.find(a), self.find(b)
        return len(self.pmids[ra] | self.pmids[rb]) <= 1 and len(self.dois[ra] | self.dois[rb]) <= 1


def _groups(records: list[_Record]) -> list[list[_Record]]:
    """Records of the same paper: by DOI, PMID, then normalized title + year (no id conflict)."""
    uf = _UnionFind(records)
    for key in ("doi", "pmid"):
        seen: dict[str, int] = {}
        for i, record in enumerate(records):
            value = getattr(record, key)
            value = value.lower() if value and key == "doi" else value
            if value:
                if value in seen:
                    uf.union(seen[value], i)
                else:
                    seen[value] = i
    by_title: dict[tuple[str, int | None], list[int]] = {}
    for i, record in enumerate(records):
        title = normalized_title(record.title)
        if not title:
            continue
        candidates = by_title.setdefault((title, record.year), [])
        # two PMIDs or two DOIs are two papers even with the same title ("Editorial")
        match = next((j for j in candidates if uf.compatible(j, i)), None)
        if match is not None:
            uf.union(match, i)
        candidates.append(i)
    grouped: dict[int, list[_Record]] = {}
    for i, record in enumerate(records):
        grouped.setdefault(uf.find(i), []).append(record)
    return list(grouped.values())


def publication_id(pmid: str | None, doi: str | None, title: str | None, year: int | None) -> str:
    """Stable id: pmid:<n>, else doi:<lower-case doi>, else title:<sha1(normalized title|year)[:16]>."""
    if pmid:
        return f"pmid:{pmid}"
    if doi:
        return f"doi:{doi.lower()}"
    digest = hashlib.sha1(f"{normalized_title(title)}|{year or ''}".encode()).hexdigest()
    return f"title:{digest[:16]}"


_FIELDS = (
    "title",
    "journal",
    "journal_abbrev",
    "year",
    "volume",
    "issue",
    "pages",
    "abstract",
    "doi",
    "pmid",
)


def _merge_group(group: list[_Record]) -> dict:
    ranked = sorted(group, key=lambda r: (FORMAT_PRIORITY[r.fmt], r.order, r.position))
    row: dict = {
        name: next((getattr(r, name) for r in ranked if getattr(r, name)), None) for name in _FIELDS
    }
    row["authors"] = next((r.authors for r in ranked if r.authors), [])
    row["source_files"] = sorted({r.file for r in group})
    row["source_formats"] = sorted({r.fmt for r in group}, key=FORMAT_PRIORITY.get)
    row["n_records"] = len(group)
    row["pub_id"] = publication_id(row["pmid"], row["doi"], row["title"], row["year"])
    return row


# grant links ----------------------------------------------------------------------------------------
class _GrantIndex:
    """The grants table seen from a paper: exact core numbers, IC+serial keys, NSFC numbers."""

    def __init__(self, grants: pl.DataFrame | None):
        self.ids: set[str] = set()
        self.by_serial: dict[str, list[str]] = {}
        if grants is not None and grants.height:
            for grant_id, source in grants.select("grant_id", "source").iter_rows():
                self.ids.add(grant_id)
                if source == "nih" and re.fullmatch(r"[A-Z0-9]{3}[A-Z]{2}\d{6}", grant_id or ""):
                    self.by_serial.setdefault(grant_id[3:], []).append(grant_id)
        self.nsfc = frozenset(i for i in self.ids if re.fullmatch(r"\d{8}", i))

    def resolve(self, ref: GrantKey) -> list[tuple[str, str, bool]]:
        """[(grant_id, match_rule, linked)] for one reference."""
        if ref.agency_kind == "nih" and ref.key:
            if ref.core_project_num and ref.core_project_num in self.ids:
                return [(ref.core_project_num, "core_project_number", True)]
            if ref.key in self.by_serial:
                return [(g, "serial", True) for g in sorted(self.by_serial[ref.key])]
            return [(ref.core_project_num or ref.key, "unmatched", False)]
        if ref.agency_kind == "nsfc" and ref.key:
            if ref.key in self.ids:
                return [(ref.key, "approval_number", True)]
            return [(ref.key, "unmatched", False)]
        if ref.key is None:  # an NIH/NSFC reference whose number cannot be read ("1R01")
            return [(ref.raw, "unreadable", False)]
        return [(ref.key, "unmatched", False)]


def _link_rows(pub_id: str, group: list[_Record], index: _GrantIndex) -> list[dict]:
    rows: dict[tuple, dict] = {}
    for record in sorted(group, key=lambda r: (FORMAT_PRIORITY[r.fmt], r.order, r.position)):
        references = [(g, "grant_list") for g in record.grants]
        references += [(g, "text") for g in grants_in_text(record.text, index.nsfc)]
        for ref, link_source in references:
            for grant_id, rule, linked in index.resolve(ref):
                key = (grant_id, ref.raw)
                if key in rows:
                    continue
                rows[key] = {
                    "pub_id": pub_id,
                    "grant_id": grant_id,
                    "grant_key": ref.key,
                    "grant_raw": ref.raw,
                    "agency": ref.agency,
                    "agency_kind": ref.agency_kind,
                    "link_source": link_source,
                    "match_rule": rule,
                    "linked": linked,
                    "source_file": record.file,
                }
    return list(rows.values())


# entry point ----------------------------------------------------------------------------------------
def load_publications(
    files: list[Path], landing: Path, grants: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, list[Reject], dict]:
    """Publication files -> (publications, publication_authors, publication_grants, rejects, stats).

    ``grants`` (the grants table, optional) resolves grant references to grant ids. ``stats``:
    landed / ingested / quarantined / merged in records (landed = ingested + quarantined + merged),
    plus files, formats, records_by_format, merged_within_file, grants_without_id.
    """
    stats: dict = {
        "landed": 0,
        "ingested": 0,
        "quarantined": 0,
        "merged": 0,
        "files": len(files),
        "formats": {},
        "records_by_format": {},
        "merged_within_file": 0,
        "grants_without_id": 0,
    }
    records: list[_Record] = []
    rejects: list[Reject] = []
    for order, file in enumerate(sorted(files, key=str)):
        path = relative_path(file, landing)
        try:
            with open(file, "rb") as handle:
                head = handle.read(8192).decode("utf-8", errors="replace")
        except OSError as exc:
            rejects.append(
                _reject(
                    path,
                    "unreadable_file",
                    "",
                    f"{path} cannot be read ({type(exc).__name__}); land it again",
                )
            )
            stats["landed"] += 1
            continue
        fmt = detect_format(head)
        stats["formats"][path] = fmt
        if fmt is None:
            rejects.append(
                _reject(
                    path,
                    "unknown_format",
                    "",
                    f"{path} is neither PubMed XML, MEDLINE (PMID- lines) nor the group's numbered "
                    f"export ('1.Title' lines); export it in one of these formats and land it again",
                )
            )
            stats["landed"] += 1
            continue
        if fmt == "pubmed_xml":
            found, bad, info = parse_pubmed_xml(Path(file), path, order)
            stats["grants_without_id"] += info["grants_without_id"]
        else:
            text, _encoding = read_text(Path(file))
            parser = parse_medline if fmt == "medline" else parse_export
            found, bad = parser(text, path, order)
        for record in [r for r in found if not r.title]:
            found.remove(record)
            where = _position(record.position) + (f" (PMID {record.pmid})" if record.pmid else "")
            bad.append(
                _reject(
                    path,
                    "missing_title",
                    where,
                    f"{where} of {path} has no title (export the record again with its title and land "
                    f"the file again)",
                )
            )
        stats["landed"] += len(found) + len(bad)
        stats["records_by_format"][fmt] = stats["records_by_format"].get(fmt, 0) + len(found)
        records.extend(found)
        rejects.extend(bad)
    index = _GrantIndex(grants)
    pubs, authors, links = [], [], []
    for group in _groups(records):
        row = _merge_group(group)
        pubs.append(row)
        files_in_group = [r.file for r in group]
        stats["merged_within_file"] += len(files_in_group) - len(set(files_in_group))
        for position, name in enumerate(row["authors"], start=1):
            authors.append({"pub_id": row["pub_id"], "position": position, "name": name})
        links.extend(_link_rows(row["pub_id"], group, index))
    stats["quarantined"] = len(rejects)
    stats["ingested"] = len(pubs)
    stats["merged"] = len(records) - len(pubs)
    publications = frame_from_rows(pubs, PUBLICATIONS_SCHEMA).sort("pub_id")
    publication_authors = frame_from_rows(authors, AUTHORS_SCHEMA).sort("pub_id", "position")
    publication_grants = frame_from_rows(links, PUBLICATION_GRANTS_SCHEMA).sort(
        "pub_id", "grant_id", "grant_raw"
    )
    return publications, publication_authors, publication_grants, rejects, stats
