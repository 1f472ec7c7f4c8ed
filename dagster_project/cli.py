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
    except FileNotFoundError as exc:
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
    from dagster_project.demo_data import generate_demo

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
    import dagster as dg

    from dagster_project.instance import ensure_dagster_home, reap_dead_runs
    from dagster_project.locks import file_lock

    lake = Lake.at()
    home = ensure_dagster_home(lake)
    # one process at a time creates a fresh instance's storage (two at once race on its tables)
    with file_lock(home / ".radlake-init.lock"), dg.DagsterInstance.get() as instance:
        for run_id in reap_dead_runs(instance, lake):
            print(f"run {run_id} had died (killed?): marked failed, its pool slots freed")
    for transaction in lake.recover():
        print(f"finished publish {transaction} that a killed run left half done")
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


def cmd_provenance(args: argparse.Namespace) -> int:
    """The lake snapshot a model version was trained on (manifests of every input table)."""
    lake = Lake.at(create=False)
    path = lake.models_dir / args.study / args.version / "provenance.json"
    if not path.is_file():
        versions = sorted(p.name for p in (lake.models_dir / args.study).glob("*/provenance.json"))
        known = ", ".join(Path(v).parent.name for v in versions) if versions else "none"
        return _fail(
            f"no provenance for {args.study} version {args.version} ({path}); known: {known}"
        )
    payload = json.loads(path.read_text(encoding="utf-8"))
    if args.export:
        Path(args.export).write_text(json.dumps(payload, indent=1, sort_keys=True), "utf-8")
        print(f"wrote {args.export}")
        return 0
    print(f"study {payload['study']}  model version {payload['model_version']}")
    print(f"{'table':24} {'version':40} {'rows':>10}  content sha256")
    for table, manifest in sorted(payload["inputs"].items()):
        print(
            f"{table:24} {manifest['version']:40} {manifest['rows']:>10}  "
            f"{manifest['content_sha256']}"
        )
    libraries = {}
    for manifest in payload["inputs"].values():
        libraries.update(manifest.get("libraries", {}))
    code = sorted({m.get("code_version", "") for m in payload["inputs"].values()})
    print("code: " + ", ".join(code))
    print("libraries: " + ", ".join(f"{k} {v}" for k, v in sorted(libraries.items())))
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

    prov = sub.add_parser(
        "provenance", help="the lake table versions a model version was trained on"
    )
    prov.add_argument("study")
    prov.add_argument(
        "version", help="model_version (see: radlake sql 'select * from model_versions')"
    )
    prov.add_argument("--export", type=Path, help="write the whole snapshot (JSON) to this file")
    prov.set_defaults(func=cmd_provenance)

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
