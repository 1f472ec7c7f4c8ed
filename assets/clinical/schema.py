"""The optional schema file for clinical data: column types, units, allowed values, date formats.

Where it lives (YAML beside the data, never required):

- ``landing/clinical/schema.yaml`` applies to every clinical file;
- ``landing/clinical/<file-stem>.schema.yaml`` applies to one file (``clinical_2024.csv`` ->
  ``clinical_2024.schema.yaml``). Its columns override the shared file's entries column by column;
  columns it does not name keep the shared entry.

Shape (only ``columns`` is required; every column entry is optional, as is every key in it)::

    description: GIST cohort, outcomes exported from the hospital registry
    columns:
      age:            {type: int, unit: years}
      sex:            {type: category, allowed: [F, M]}
      tumor_size_cm:  {type: float, unit: cm}
      surgery_date:   {type: date, format: "%d/%m/%Y"}
      rfs_months:     {type: duration, unit: months, required: true}
      rfs_event:      {type: event, required: true}
      smoker:         {type: bool}

Types: ``int``, ``float``, ``string``, ``date`` (``format`` is a Python ``strptime`` pattern, default
ISO ``%Y-%m-%d``), ``bool`` (true/false, yes/no, y/n, t/f, 1/0), ``event`` (0/1), ``duration``
(a non-negative number: follow-up time), ``category`` (text, usually with ``allowed``).
``unit`` is free text recorded in the load's stats; ``allowed`` is a list of values (compared after
type conversion, so ``[0, 1, 2]`` for an int column); ``required: true`` quarantines rows where the
column is empty. Columns the schema does not name are typed by inference (see ``load.py``).

A schema file that is not valid raises :class:`SchemaError`, whose message names the file, the key
and what is allowed; the loader turns it into a quarantine entry for the files it governs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

SHARED_SCHEMA_NAME = "schema.yaml"
FILE_SCHEMA_SUFFIX = ".schema.yaml"
COLUMN_TYPES = ("int", "float", "string", "date", "bool", "event", "duration", "category")
COLUMN_KEYS = ("type", "unit", "allowed", "format", "required", "description")
TOP_KEYS = ("columns", "description")
DEFAULT_DATE_FORMAT = "%Y-%m-%d"


class SchemaError(ValueError):
    """A schema file that cannot be used; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class ColumnSpec:
    """What a schema file says about one column."""

    name: str
    type: str | None = None
    unit: str | None = None
    allowed: tuple | None = None
    format: str | None = None
    required: bool = False
    source: str = ""  # the schema file this entry came from (relative to landing/)


@dataclass(frozen=True)
class ClinicalSchema:
    """The column entries that apply to one clinical file (shared entries merged with its own)."""

    columns: dict[str, ColumnSpec] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def get(self, column: str) -> ColumnSpec | None:
        return self.columns.get(column)

    def merged(self, other: ClinicalSchema) -> ClinicalSchema:
        """This schema with ``other``'s columns overriding (the per-file schema over the shared one)."""
        return ClinicalSchema({**self.columns, **other.columns}, self.sources + other.sources)


def schema_paths(data_file: Path) -> list[Path]:
    """The schema files that may apply to a clinical file: the shared one, then the file's own."""
    folder = data_file.parent
    return [folder / SHARED_SCHEMA_NAME, folder / f"{data_file.stem}{FILE_SCHEMA_SUFFIX}"]


def schema_for(data_file: Path, landing: Path) -> ClinicalSchema:
    """The effective schema of one clinical file (empty when there is no schema file).

    Raises :class:`SchemaError` when a schema file that applies is not valid.
    """
    schema = ClinicalSchema()
    for path in schema_paths(data_file):
        if path.is_file():
            schema = schema.merged(load_schema(path, landing))
    return schema


def load_schema(path: Path, landing: Path | None = None) -> ClinicalSchema:
    """Read and validate one schema file."""
    shown = _shown(path, landing)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SchemaError(f"{shown}: not readable YAML ({problem}); fix the file") from exc
    return parse_schema(raw, shown)


def parse_schema(raw: object, shown: str) -> ClinicalSchema:
    """Validate a parsed schema document; ``shown`` is the file name used in error messages."""
    if not isinstance(raw, dict):
        raise SchemaError(f"{shown}: the top level must be a mapping with key 'columns'")
    unknown = sorted(set(map(str, raw)) - set(TOP_KEYS))
    if unknown:
        raise SchemaError(f"{shown}: unknown key '{unknown[0]}' (allowed: {', '.join(TOP_KEYS)})")
    columns = raw.get("columns")
    if not isinstance(columns, dict) or not columns:
        raise SchemaError(
            f"{shown}: key 'columns' must be a non-empty mapping of column name -> entry"
        )
    specs = {}
    for name, entry in columns.items():
        specs[str(name)] = _column_spec(str(name), entry, shown)
    return ClinicalSchema(specs, (shown,))


def _column_spec(name: str, entry: object, shown: str) -> ColumnSpec:
    where = f"{shown}: columns.{name}"
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise SchemaError(f"{where} must be a mapping (allowed keys: {', '.join(COLUMN_KEYS)})")
    unknown = sorted(set(map(str, entry)) - set(COLUMN_KEYS))
    if unknown:
        raise SchemaError(
            f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(COLUMN_KEYS)})"
        )
    kind = entry.get("type")
    if kind is not None and kind not in COLUMN_TYPES:
        raise SchemaError(f"{where}.type is {kind!r} (allowed: {', '.join(COLUMN_TYPES)})")
    unit = entry.get("unit")
    if unit is not None and not isinstance(unit, str | int | float):
        raise SchemaError(f"{where}.unit must be text (e.g. months, cm)")
    allowed = entry.get("allowed")
    if allowed is not None:
        if not isinstance(allowed, list) or not allowed:
            raise SchemaError(f"{where}.allowed must be a non-empty list of values")
        if any(isinstance(v, dict | list) for v in allowed):
            raise SchemaError(f"{where}.allowed must list plain values (text or numbers)")
        allowed = tuple(allowed)
    fmt = entry.get("format")
    if fmt is not None:
        if kind != "date":
            raise SchemaError(f"{where}.format is only allowed with type: date")
        if not isinstance(fmt, str) or "%" not in fmt:
            raise SchemaError(f"{where}.format must be a strptime pattern such as '%d/%m/%Y'")
    required = entry.get("required", False)
    if not isinstance(required, bool):
        raise SchemaError(f"{where}.required must be true or false")
    return ColumnSpec(
        name=name,
        type=kind,
        unit=None if unit is None else str(unit),
        allowed=allowed,
        format=fmt,
        required=required,
        source=shown,
    )


def _shown(path: Path, landing: Path | None) -> str:
    """A schema file's name for messages: relative to landing/ when possible (never absolute)."""
    if landing is not None:
        try:
            return path.resolve().relative_to(landing.resolve()).as_posix()
        except ValueError:
            pass
    return path.name
