"""Turn expectation suites into blocking Dagster asset checks, plus the per-source accounting check.

- ``suite_check(table)``: reports the audit that write-audit-publish ran on the staged version
  before it went live (``quality.audit``, recorded in the manifest), plus non-blocking row-count
  drop and freshness checks. A version that failed its audit never went live: its asset failed
  naming the failed expectations, and the version is under ``rejected/<table>/``. Blocking: when
  the live version fails (an edited suite), nothing downstream runs.
- ``accounting_check(asset, source)``: every landed unit is either ingested or quarantined
  (landed = ingested + quarantined + merged), and the quarantine table really holds what the asset said.
"""

import os
from collections.abc import Callable

import dagster as dg

from dagster_project.lake import Lake
from dagster_project.resources import LakeResource

FRESHNESS_HOURS = float(os.environ.get("RADLAKE_FRESHNESS_HOURS", "26"))  # nightly + slack


def live_audit(lake: Lake, table: str) -> tuple[dict, str]:
    """(audit result, where it comes from) of the live version of ``table``: the one recorded at
    publish when the manifest describes the live files and the suite is unchanged, else a new
    audit of the live files (a lake written before write-audit-publish, an edited suite)."""
    from dagster_project.manifest import files_match
    from quality.audit import audit_table, suite_sha256

    manifest = lake.manifest(table)
    recorded = (manifest or {}).get("audit") or {}
    if files_match(manifest, lake.table_files(table)) and recorded.get(
        "suite_sha256"
    ) == suite_sha256(table):
        return recorded, f"staging audit of version {manifest['version']}"
    return audit_table(lake, table), "audit of the live files"


def _rule(result: dict, name: str) -> dict:
    return next((r for r in result.get("rules", []) if r["rule"] == name), {})


def suite_check(
    table: str, asset: str | dg.AssetKey | None = None, name: str = "gx_suite"
) -> dg.AssetChecksDefinition:
    """The table's checks (asset key defaults to the table name; a side table written by another
    table's asset gets its own check ``name`` on that asset):

    - ``<name>`` (blocking): the GX suite and the blocking value rules, as audited on the staged
      version before it was published (write-audit-publish), read from the table's manifest;
    - ``<name>_row_count_drop`` (warning): rows lost against the previous version;
    - ``<name>_freshness`` (warning): the live version is older than ``RADLAKE_FRESHNESS_HOURS``.
    """
    asset_key = dg.AssetKey(asset) if isinstance(asset, str) else (asset or dg.AssetKey(table))
    specs = [
        dg.AssetCheckSpec(
            name,
            asset=asset_key,
            blocking=True,
            description=f"quality/suites/{table}.yaml on lake/{table}/, audited before publish.",
        ),
        dg.AssetCheckSpec(
            f"{name}_row_count_drop",
            asset=asset_key,
            description=f"lake/{table}/ lost more rows than the suite's row_count_drop allows.",
        ),
        dg.AssetCheckSpec(
            f"{name}_freshness",
            asset=asset_key,
            description=f"lake/{table}/ was published within RADLAKE_FRESHNESS_HOURS.",
        ),
    ]

    # one op per (asset, check): two studies' assets check the same table under their own names
    op_name = f"{asset_key.to_python_identifier()}_{name}"

    @dg.multi_asset_check(specs=specs, name=op_name)
    def _suite_check(context: dg.AssetCheckExecutionContext, lake: LakeResource):
        home = lake.lake()
        if not home.has_table(table):
            error = {"error": f"lake/{table}/ has no Parquet file: the asset wrote nothing"}
            for spec in specs:
                yield dg.AssetCheckResult(
                    asset_key=asset_key, check_name=spec.name, passed=False, metadata=error
                )
            return
        result, source = live_audit(home, table)
        suite = result.get("suite") or {}
        failed = dict(suite.get("failed") or {})
        for rule in result.get("rules", []):
            if not rule["passed"] and rule["severity"] == "error":
                failed[f"{rule['rule']}({rule['arguments']})"] = {
                    "unexpected_count": rule.get("unexpected_count"),
                    "sample_values": rule.get("sample_values", []),
                    "error": rule["message"],
                }
        if failed:
            context.log.error(f"{table}: {len(failed)} check(s) failed: {', '.join(failed)}")
        yield dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=name,
            passed=bool(result.get("passed")),
            # nothing landed for this domain: a typed table with zero rows, checked all the same
            description=f"empty table: lake/{table}/ has 0 rows (nothing landed for it yet); "
            "the column expectations hold vacuously"
            if suite.get("rows", 0) == 0
            else None,
            metadata={
                "rows": suite.get("rows", 0),
                "empty": suite.get("rows", 0) == 0,
                "evaluated_on": suite.get("evaluated_on", ""),
                "audited": source,
                "expectations": suite.get("expectations", 0),
                "failed": len(failed),
                "failed_expectations": dg.MetadataValue.json(failed),
                "value_rules": dg.MetadataValue.json(result.get("rules", [])),
                "warnings": dg.MetadataValue.json(result.get("warnings", [])),
                "report": dg.MetadataValue.md(_report(table, result)),
            },
        )
        drop = _rule(result, "row_count_drop")
        yield dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=f"{name}_row_count_drop",
            passed=bool(drop.get("passed", True)),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"rule": drop.get("message", "no row_count_drop rule in the suite")},
        )
        yield _freshness(home, table, asset_key, f"{name}_freshness")

    return _suite_check


def _report(table: str, result: dict) -> str:
    suite = result.get("suite") or {}
    failed = suite.get("failed") or {}
    lines = [
        f"**{table}**: {suite.get('expectations', 0) - len(failed)}/{suite.get('expectations', 0)}"
        f" expectations passed on {suite.get('rows', 0)} rows",
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    for name, info in failed.items():
        lines.append(f"| {name} | FAILED | {info} |".replace("\n", " "))
    for rule in result.get("rules", []):
        status = "passed" if rule["passed"] else f"FAILED ({rule['severity']})"
        lines.append(f"| {rule['rule']}({rule['arguments']}) | {status} | {rule['message']} |")
    return "\n".join(lines)


def _freshness(home: Lake, table: str, asset_key, check_name: str) -> dg.AssetCheckResult:
    from datetime import UTC, datetime

    manifest = home.manifest(table) or {}
    published = manifest.get("published_at")
    if published is None:
        age = None
    else:
        age = (datetime.now(UTC) - datetime.fromisoformat(published)).total_seconds() / 3600
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=age is not None and age <= FRESHNESS_HOURS,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "published_at": str(published),
            "age_hours": round(age, 2) if age is not None else -1.0,
            "max_age_hours": FRESHNESS_HOURS,
            "version": str(manifest.get("version")),
        },
    )


def _metadata_number(metadata: dict, key: str) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    return int(getattr(value, "value", value))


def accounting_check(
    asset: str,
    source: str | None = None,
    count_landed: Callable[[Lake], int] | None = None,
) -> dg.AssetChecksDefinition:
    """Blocking check: landed = ingested + quarantined (+ merged) for one ingest source.

    ``count_landed`` recounts the landed units from ``landing/`` independently of the asset; without
    it the asset's own ``landed`` metadata is used. ``quarantined`` is compared with the rows this
    source really has in the quarantine table.
    """
    source = source or asset

    @dg.asset_check(
        asset=dg.AssetKey(asset),
        name="accounting",
        blocking=True,
        description="Every landed unit is ingested or quarantined: nothing dropped silently.",
    )
    def _accounting(
        context: dg.AssetCheckExecutionContext, lake: LakeResource
    ) -> dg.AssetCheckResult:
        from dagster_project.quarantine import read_quarantine

        event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is None or event.asset_materialization is None:
            return dg.AssetCheckResult(
                passed=False, metadata={"error": f"{asset} was never materialized"}
            )
        metadata = dict(event.asset_materialization.metadata)
        home = lake.lake()
        counts = {
            k: _metadata_number(metadata, k) or 0
            for k in ("landed", "ingested", "quarantined", "merged")
        }
        landed = count_landed(home) if count_landed else counts["landed"]
        in_quarantine = read_quarantine(home, source).height
        balanced = landed == counts["ingested"] + counts["quarantined"] + counts["merged"]
        honest = in_quarantine == counts["quarantined"]
        return dg.AssetCheckResult(
            passed=balanced and honest,
            metadata={
                "landed": landed,
                "ingested": counts["ingested"],
                "quarantined": counts["quarantined"],
                "merged": counts["merged"],
                "quarantine_rows": in_quarantine,
                "rule": "landed == ingested + quarantined + merged; quarantine_rows == quarantined",
            },
        )

    _accounting.__name__ = f"{asset}_accounting"
    return _accounting
