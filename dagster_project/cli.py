"""The `radlake` command: query the catalog, generate demo data, materialize, show where things are."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from dagster_project.lake import Lake

EXAMPLE_QUERY = "select center_id, count(*) as patients from clinical group by all order by 1"


def _fail(message: str, code: int = 1) -> int:
    print(f"radlake: {message}", file=sys.stderr)
    return code


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from dagster_project.catalog import open_catalog

    text = args.query
    candidate = Path(text)
    if text.strip().lower().endswith(".sql"):
        if not candidate.is_file():
            return _fail(f"sql: no such SQL file: {candidate}")
        text = candidate.read_text(encoding="utf-8")
    lake = Lake.at(create=False)
    try:
        con = open_catalog(lake)
    except (FileNotFoundError, ValueError) as exc:  # no catalog; a lake path DuckDB cannot search
        return _fail(f"sql: {exc}")
    except duckdb.Error as exc:
        return _fail(f"sql: cannot open catalog {lake.catalog_path}: {str(exc).splitlines()[0]}")
    try:
        relation = con.sql(text)
        if relation is None:
            return _fail(
                "sql: the statement returned no rows (radlake sql is read-only: use SELECT)"
            )
        if args.csv:
            relation.write_csv(str(args.csv))
            print(f"wrote {relation.count('*').fetchall()[0][0]} rows to {args.csv}")
        elif args.parquet:
            relation.write_parquet(str(args.parquet))
            print(f"wrote {relation.count('*').fetchall()[0][0]} rows to {args.parquet}")
        else:
            _print_table(relation, args.max_rows)
    except duckdb.Error as exc:
        return _fail(f"sql: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    finally:
        con.close()
    return 0


def _print_table(relation, max_rows: int) -> None:
    """DuckDB's own box renderer: fits the terminal, elides middle columns of wide tables."""
    import shutil

    width = shutil.get_terminal_size((160, 40)).columns
    relation.show(max_width=width, max_rows=max_rows, max_col_width=40)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from radlake.demo import generate_demo

    lake = Lake.at()
    try:
        counts = generate_demo(
            lake.home,
            patients=args.patients,
            seed=args.seed,
            centers=args.centers,
            force=args.force,
        )
    except FileExistsError as exc:
        return _fail(f"demo-data: {exc}")
    print(f"demo landing zone written to {lake.landing}")
    for key, value in counts.items():
        print(f"  {key}: {value}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from dagster_project.instance import ensure_dagster_home

    lake = Lake.at()
    home = ensure_dagster_home(lake)
    print(f"LAKE_HOME={lake.home}")
    print(f"DAGSTER_HOME={home}")
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    from dagster_project.instance import ensure_dagster_home
    from dagster_project.pseudonym import PseudonymKeyMismatch, load_secret

    lake = Lake.at()
    ensure_dagster_home(lake)
    try:  # one clear message before any asset runs, not one failure per ingest asset
        load_secret(lake.home)
    except PseudonymKeyMismatch as exc:
        return _fail(f"materialize: {exc}")
    env = {**os.environ, "LAKE_HOME": str(lake.home), "GX_ANALYTICS_ENABLED": "false"}
    # INFO on the console: progress, warnings and check results, not every engine event
    log_config = {"loggers": {"console": {"config": {"log_level": args.log_level}}}}
    dg_cli = Path(sys.executable).with_name("dg")
    command = [
        str(dg_cli),
        "launch",
        "--assets",
        args.select,
        "--config-json",
        json.dumps(log_config),
    ]
    # dg finds the code location from the project's pyproject.toml
    return subprocess.call(command, env=env, cwd=Path(__file__).resolve().parents[1])


def cmd_key(args: argparse.Namespace) -> int:
    """Show where the pseudonymization key lives, or rotate it deliberately."""
    from dagster_project import pseudonym

    lake = Lake.at()
    recorded = lake.home / pseudonym.FINGERPRINT_FILE
    if args.action == "show":
        print(f"key from       {pseudonym.key_source(lake.home)}")
        try:
            secret = pseudonym.load_secret(lake.home)
        except pseudonym.PseudonymKeyMismatch as exc:
            return _fail(f"key: {exc}")
        print(f"fingerprint    {pseudonym.fingerprint(secret)} (matches {recorded})")
        print("back it up     keep a copy of the key file (or of LAKE_PSEUDONYM_KEY) offline:")
        print("               without it, landed patients can never get their keys again")
        return 0
    if not args.yes:
        return _fail(
            "key rotate gives every patient a new patient_key: the lake's tables, models and "
            "reports are moved to LAKE_HOME/retired/<time>/ and rebuilt from landing/ by the next "
            "`radlake materialize`. Back up the old key, then run `radlake key rotate --yes`."
        )
    return _rotate_key(lake)


def _rotate_key(lake: Lake) -> int:
    import shutil
    from datetime import UTC, datetime

    from dagster_project import pseudonym

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    recorded = lake.home / pseudonym.FINGERPRINT_FILE
    env = os.environ.get("LAKE_PSEUDONYM_KEY")
    if env and recorded.exists():
        if recorded.read_text().strip() == pseudonym.fingerprint(env.encode("utf-8")):
            return _fail(
                "key rotate: LAKE_PSEUDONYM_KEY is the lake's current key: set the new one"
            )
    elif not env and pseudonym.key_file(lake.home).exists():
        old = pseudonym.key_file(lake.home)
        old.rename(old.with_name(f"{old.name}.retired-{stamp}"))  # a new one is generated below
    retired = lake.home / "retired" / stamp
    for name in ("lake", "state", "models", "reports", "catalog.duckdb"):
        if (lake.home / name).exists():
            retired.mkdir(parents=True, exist_ok=True)
            shutil.move(str(lake.home / name), str(retired / name))
    recorded.unlink(missing_ok=True)
    new = pseudonym.fingerprint(pseudonym.load_secret(lake.home))  # records the new fingerprint
    lake.ensure()
    print(f"new key from {pseudonym.key_source(lake.home)}, fingerprint {new}")
    print(f"the lake made with the old key is in {retired} (delete it when you no longer need it)")
    print("run `radlake materialize` to rebuild every table from landing/ with the new key")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Withdrawal of consent: purge patients from every table, history, state, model and report."""
    import csv

    from dagster_project.erasure import LandingStillHolds, forget
    from dagster_project.pseudonym import Pseudonymizer, PseudonymKeyMismatch

    lake = Lake.at()
    if args.file:
        with open(args.file, newline="", encoding="utf-8-sig") as handle:
            people = [(r["center_id"], r["patient_id"]) for r in csv.DictReader(handle)]
    elif args.center and args.patient_id:
        people = [(args.center, args.patient_id)]
    else:
        return _fail("forget: give --center and --patient-id, or --file with those two columns")
    try:
        pseudonymize = Pseudonymizer.for_lake(lake.home)
    except PseudonymKeyMismatch as exc:
        return _fail(f"forget: {exc}")
    print(
        "radlake forget never deletes from landing/ unless you pass --also-landing: that is yours"
    )
    for n, (center, patient_id) in enumerate(people, start=1):
        try:
            report = forget(
                lake, pseudonymize, center, patient_id, args.reason, also_landing=args.also_landing
            )
        except LandingStillHolds as exc:
            return _fail(f"forget: patient {n} of {len(people)} (center {center}): {exc}")
        removed = ", ".join(f"{t} {k}" for t, k in sorted(report.rows_removed.items())) or "none"
        print(
            f"patient {n} (center {center}): erasure {report.key_sha256[:16]}; rows removed: "
            f"{removed}; files rewritten {len(report.files_rewritten)}, deleted "
            f"{len(report.files_deleted)}; landing files removed {len(report.landing_removed)}; "
            f"model versions marked for retraining: {', '.join(report.model_versions) or 'none'}"
        )
    print("recorded in the `erasures` table; run `radlake materialize` to rebuild the catalog")
    return 0


def cmd_paths(args: argparse.Namespace) -> int:
    from dagster_project.instance import dagster_home

    lake = Lake.at(create=False)
    print(f"lake home      {lake.home}")
    print(f"landing zone   {lake.landing}")
    print(f"tables         {lake.lake_dir}  ({', '.join(lake.tables()) or 'none yet'})")
    print(
        f"catalog        {lake.catalog_path}{'' if lake.catalog_path.exists() else '  (not built yet)'}"
    )
    print(f"reports        {lake.reports_dir}")
    print(f"models         {lake.models_dir}")
    print(f"dagster home   {dagster_home(lake)}")
    print(f'try            radlake sql "{EXAMPLE_QUERY}"')
    print("browse lineage make ui   (Dagster UI on workspace.yaml)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dagster_project.serve import ServeError, serve

    try:
        return serve(args.host, args.port)
    except ServeError as error:
        return _fail(str(error), 2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radlake", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sql = sub.add_parser("sql", help="read-only SQL on catalog.duckdb (a query or a .sql file)")
    sql.add_argument(
        "query", help="a SELECT, or a path to a .sql file (e.g. sql/portfolio/grants_per_year.sql)"
    )
    out = sql.add_mutually_exclusive_group()
    out.add_argument("--csv", type=Path, help="write the result to this CSV file")
    out.add_argument("--parquet", type=Path, help="write the result to this Parquet file")
    sql.add_argument(
        "--max-rows", type=int, default=40, help="rows printed on the terminal (default 40)"
    )
    sql.set_defaults(func=cmd_sql)

    demo = sub.add_parser("demo-data", help="write a realistic demo landing zone into LAKE_HOME")
    demo.add_argument(
        "--patients", type=int, default=200, help="default 200 (about 1-2 min to materialize)"
    )
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--centers", type=int, default=2)
    demo.add_argument(
        "--force", action="store_true", help="write even if landing/ already has files"
    )
    demo.set_defaults(func=cmd_demo_data)

    init = sub.add_parser("init", help="create LAKE_HOME folders and the shared DAGSTER_HOME")
    init.set_defaults(func=cmd_init)

    mat = sub.add_parser("materialize", help="materialize assets with the shared DAGSTER_HOME")
    mat.add_argument("--select", default="*", help="Dagster asset selection (default: everything)")
    mat.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    mat.set_defaults(func=cmd_materialize)

    srv = sub.add_parser(
        "serve", help="the Dagster webserver and daemon (sensors, schedule) on one instance"
    )
    srv.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (0.0.0.0: the lab)")
    srv.add_argument("--port", type=int, default=3000)
    srv.set_defaults(func=cmd_serve)

    key = sub.add_parser("key", help="the pseudonymization key: where it is, or rotate it")
    key.add_argument("action", choices=["show", "rotate"])
    key.add_argument("--yes", action="store_true", help="rotate: yes, give every patient a new key")
    key.set_defaults(func=cmd_key)

    forget = sub.add_parser(
        "forget", help="withdrawal of consent: purge a patient from every table and copy"
    )
    forget.add_argument("--center", help="the patient's center_id")
    forget.add_argument("--patient-id", help="the hospital's patient id (as landed)")
    forget.add_argument("--file", type=Path, help="a CSV of center_id,patient_id to forget")
    forget.add_argument("--reason", default="withdrawal of consent", help="recorded in erasures")
    forget.add_argument(
        "--also-landing",
        action="store_true",
        help="also delete the patient's files and CSV rows from landing/ (otherwise refused "
        "while landing/ still holds them)",
    )
    forget.set_defaults(func=cmd_forget)

    paths = sub.add_parser("paths", help="where the lake, catalog, reports and Dagster home are")
    paths.set_defaults(func=cmd_paths)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
