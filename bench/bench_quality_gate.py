"""Benchmark: what the quality gate (blocking GX suites + accounting checks) adds to a full run.

Setup (untimed except the first run): a temporary ``LAKE_HOME`` with ``LAKE_PSEUDONYM_KEY`` set
and ``DAGSTER_HOME`` inside it, the demo landing zone (``radlake demo-data --patients N``), and one
``radlake materialize --select '*'`` (the cold first run: extraction, studies, models), so that
the timed runs are re-materializations of an up-to-date lake, as the nightly job does.

Timed, each a ``dagster job execute`` in a fresh process (code location load included), on two
jobs over the radlake code location (``dagster_project.definitions.defs`` plus two asset jobs):

- ``with_checks``: ``AssetSelection.all()`` (every asset and every asset check);
- ``without_checks``: ``AssetSelection.all() - AssetSelection.all_asset_checks()``;

with the code location's default executor (in-process: one GX import per run) and, unless
``--executors in_process``, ``RADLAKE_EXECUTOR=multiprocess`` (one process per step: every check
step loads the code location and imports GX again). Runs alternate with/without, ``--repeat``
times; the time spent in check steps comes from Dagster's step stats of each run.

Also: ``import great_expectations`` in a fresh interpreter (``--repeat`` times, vs ``python -c
pass``), and each table's GX suite alone (``quality.suites.run_suite`` on the table's current
Parquet, in one process after the import: first call and median of ``--repeat``).
No numeric goal; the question is the gate's share of a warm full run, and the executor choice.

    .venv/bin/python bench/bench_quality_gate.py --patients 120 --repeat 3
    .venv/bin/python bench/bench_quality_gate.py --patients 40 --repeat 1 --executors in_process
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, load, run_python, table, write_result

JOBS_FILE = '''\
"""The radlake code location plus two benchmark jobs (written by bench_quality_gate.py)."""

import dagster as dg

from dagster_project import definitions as radlake  # one Definitions at module scope

defs = dg.Definitions.merge(
    radlake.defs,
    dg.Definitions(
        jobs=[
            dg.define_asset_job("with_checks", selection=dg.AssetSelection.all()),
            dg.define_asset_job(
                "without_checks",
                selection=dg.AssetSelection.all() - dg.AssetSelection.all_asset_checks(),
            ),
        ]
    ),
)
'''


def lake_env(home: Path, executor: str = "in_process") -> dict[str, str]:
    return {
        **os.environ,
        "LAKE_HOME": str(home),
        "LAKE_PSEUDONYM_KEY": "radlake-bench-secret",
        "DAGSTER_HOME": str(home / "dagster_home"),
        "GX_ANALYTICS_ENABLED": "false",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "MPLBACKEND": "Agg",
        "RADLAKE_EXECUTOR": executor,
        "PYTHONPATH": str(REPO),
    }


def call(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return seconds


def check_step_names() -> set[str]:
    """Step keys of the code location's asset checks (one op per check)."""
    sys.path.insert(0, str(REPO))
    from dagster_project.definitions import defs

    return {check.node_def.name for check in defs.asset_checks or []}


def step_breakdown(dagster_home: Path, checks: set[str]) -> dict:
    """Status and seconds by kind of step (asset, GX suite, accounting, other check), latest run."""
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        stats = instance.get_run_step_stats(run.run_id)
    out = {"run_id": run.run_id, "status": run.status.value, "steps": len(stats)}
    kinds = ("asset", "gx_suite", "accounting", "other_check")
    out.update({f"{kind}_steps": 0 for kind in kinds})
    out.update({f"{kind}_s": 0.0 for kind in kinds})
    for step in stats:
        kind = "asset"
        if step.step_key in checks:
            kind = next(
                (k for k in ("gx_suite", "accounting") if step.step_key.endswith(k)), "other_check"
            )
        out[f"{kind}_steps"] += 1
        if step.start_time and step.end_time:
            out[f"{kind}_s"] = round(out[f"{kind}_s"] + step.end_time - step.start_time, 2)
    out["check_s"] = round(out["gx_suite_s"] + out["accounting_s"] + out["other_check_s"], 2)
    return out


def suite_times(home: Path, times: int) -> dict:
    """(child process) import GX, then each table's suite on its current Parquet."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    sys.path.insert(0, str(REPO))
    started = time.perf_counter()
    import great_expectations  # noqa: F401

    gx_import = time.perf_counter() - started
    from dagster_project.lake import Lake
    from quality.checks import _table_frame
    from quality.suites import load_suite, run_suite, suite_tables

    lake = Lake.at(home)
    rows = []
    for name in suite_tables():
        if not lake.has_table(name):
            continue
        started = time.perf_counter()
        frame = _table_frame(lake, name)
        read = time.perf_counter() - started
        seconds = []
        for _ in range(times):
            started = time.perf_counter()
            outcome = run_suite(name, frame)
            seconds.append(time.perf_counter() - started)
        rows.append(
            {
                "table": name,
                "rows": len(frame),
                "columns": len(frame.columns),
                "expectations": len(load_suite(name)),
                "passed": outcome.success,
                "read_s": round(read, 3),
                "first_s": round(seconds[0], 3),
                "median_s": round(statistics.median(seconds), 3),
                "load": load(),
            }
        )
    return {"gx_import_in_process_s": round(gx_import, 2), "tables": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--executors", default="in_process,multiprocess")
    parser.add_argument(
        "--repeat-multiprocess", type=int, default=1, help="runs per variant, multiprocess"
    )
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/...")
    parser.add_argument("--suites-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.suites_child:
        print(json.dumps(suite_times(args.suites_child, args.repeat)))
        return {}

    bin_dir = Path(sys.executable).parent
    result: dict = {"load_at_start": load(), "patients": args.patients, "runs": []}
    workdir = Path(tempfile.mkdtemp(prefix="radlake-bench-gate-"))
    try:
        home = workdir / "lakehouse"
        jobs = workdir / "bench_jobs.py"
        jobs.write_text(JOBS_FILE)
        env = lake_env(home)
        checks = check_step_names()
        call([str(bin_dir / "radlake"), "init"], env)
        call([str(bin_dir / "radlake"), "demo-data", "--patients", str(args.patients)], env)
        load_before = load()
        first = call([str(bin_dir / "radlake"), "materialize", "--select", "*"], env)
        result["first_materialization"] = {
            "wall_s": round(first, 1),
            "load_before": load_before,
            "load_after": load(),
            **step_breakdown(home / "dagster_home", checks),
        }
        print(f"first (cold) materialization: {first:.1f} s, load {load()}", flush=True)

        for executor in args.executors.split(","):
            times = args.repeat if executor == "in_process" else args.repeat_multiprocess
            for _ in range(times):
                for job in ("with_checks", "without_checks"):
                    load_before = load()
                    command = [str(bin_dir / "dagster"), "job", "execute", "-f", str(jobs)]
                    seconds = call([*command, "-d", str(REPO), "-j", job], lake_env(home, executor))
                    row = {
                        "executor": executor,
                        "job": job,
                        "wall_s": round(seconds, 1),
                        "load_before": load_before,
                        "load_after": load(),
                        **step_breakdown(home / "dagster_home", checks),
                    }
                    assert row["status"] == "SUCCESS", row
                    result["runs"].append(row)
                    print(json.dumps(row), flush=True)

        imports = {}
        for label, code in (("python -c pass", "pass"), ("import great_expectations", None)):
            code = code or "import great_expectations"
            seconds = [run_python(code, {"GX_ANALYTICS_ENABLED": "false"}) for _ in range(3)]
            imports[label] = {
                "median_s": round(statistics.median(seconds), 2),
                "runs_s": [round(s, 2) for s in seconds],
                "load": load(),
            }
        result["fresh_interpreter"] = imports
        done = subprocess.run(
            [sys.executable, __file__, "--suites-child", str(home), "--repeat", str(args.repeat)],
            env=lake_env(home),
            capture_output=True,
            text=True,
            check=True,
        )
        result["suites"] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    summary = []
    for executor in args.executors.split(","):
        walls = {}
        for job in ("with_checks", "without_checks"):
            rows = [r for r in result["runs"] if r["executor"] == executor and r["job"] == job]
            walls[job] = statistics.median(r["wall_s"] for r in rows)
            check_s = statistics.median(r["check_s"] for r in rows)
            summary.append(
                [
                    executor,
                    job,
                    len(rows),
                    walls[job],
                    rows[0]["steps"],
                    check_s,
                    " ".join(str(r["load_before"][0]) for r in rows),
                ]
            )
        added = walls["with_checks"] - walls["without_checks"]
        result[f"gate_adds_{executor}_s"] = round(added, 1)
        result[f"gate_adds_{executor}_pct"] = round(100 * added / walls["without_checks"], 1)
    result["summary"] = summary
    print()
    print(f"first (cold) materialization {result['first_materialization']['wall_s']} s")
    print(
        table(
            ["executor", "job", "runs", "median wall s", "steps", "check steps s", "load per run"],
            summary,
        )
    )
    for executor in args.executors.split(","):
        print(
            f"gate adds ({executor}): {result[f'gate_adds_{executor}_s']} s "
            f"({result[f'gate_adds_{executor}_pct']} % of the run without checks)"
        )
    print()
    print(
        table(
            ["fresh interpreter", "median s", "runs s"],
            [[k, v["median_s"], " ".join(map(str, v["runs_s"]))] for k, v in imports.items()],
        )
    )
    suites = result["suites"]
    print(f"\nGX import inside the suite process: {suites['gx_import_in_process_s']} s")
    print(
        table(
            ["table", "rows", "expectations", "read s", "first s", "median s"],
            [
                [t["table"], t["rows"], t["expectations"], t["read_s"], t["first_s"], t["median_s"]]
                for t in suites["tables"]
            ],
        )
    )
    total = sum(t["median_s"] for t in suites["tables"])
    result["suites_total_median_s"] = round(total, 2)
    print(f"all suites: {total:.2f} s (median per table, summed)")
    write_result("quality_gate", result, args.json)
    return result


if __name__ == "__main__":
    main()
