"""Run every benchmark one after the other and print a summary (``make bench``).

Each bench script runs in its own process, never two at a time (they would share the 2 cores).
Its JSON result lands in ``bench/results/<name>.json`` (git-ignored); for the two scripts without
a ``--json`` option (code location, study) the summary is parsed from their output. Every
result file gets the date, the machine, the wall time and the load average before and after.

Sizes: ``--profile quick`` (default; about 12 minutes on 2 cores) or ``--profile full`` (the
sizes of each issue's goal, used for bench/README.md; about 30 minutes on 2 cores).

    .venv/bin/python bench/run_all.py                       # quick
    .venv/bin/python bench/run_all.py --only dicom_scan,dask_scaleout
    .venv/bin/python bench/run_all.py --profile full
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from benchlib import BENCH, REPO, RESULTS, load, machine, table

# name: (script, quick arguments, full arguments, writes its own JSON with --json)
BENCHMARKS: dict[str, tuple[str, list[str], list[str], bool]] = {
    "code_location": ("bench_code_location.py", ["--repeat", "3"], ["--repeat", "5"], False),
    "dicom_scan": (
        "bench_dicom_scan.py",
        # the goal's size ("a few hundred cases") also in the quick profile: fewer files, the
        # scan's fixed costs (worker start, walk, series) weigh more (bench/README.md, section 1)
        ["--patients", "300", "--clinical-files", "1200", "--compressed-files", "100"]
        + ["--slices-per-series", "200"],
        ["--patients", "300", "--clinical-files", "2000", "--compressed-files", "400"]
        + ["--slices-per-series", "200"],  # bench/README.md, section 1
        True,
    ),
    "extraction": (
        "bench_extraction.py",
        ["--source", "demo", "--cases", "100", "--jobs", "2"],
        ["--source", "demo", "--cases", "300", "--jobs", "2"],
        True,
    ),
    "extraction_pyradiomics": (
        "bench_extraction.py",
        ["--source", "pyradiomics", "--cases", "20", "--jobs", "2"],
        ["--source", "pyradiomics", "--cases", "100", "--jobs", "2"],
        True,
    ),
    "dask_scaleout": (
        "bench_dask_scaleout.py",
        ["--patients", "120"],
        ["--patients", "120", "--repeat", "3"],
        True,
    ),
    "pivot": (
        "bench_pivot.py",
        ["--cases", "10000", "--features", "1300"],
        ["--cases", "10000", "--features", "1300"],
        True,
    ),
    "study": (
        "bench_study.py",
        ["--patients", "600", "--features", "300", "--bootstrap", "200"],
        ["--patients", "2500", "--centers", "7", "--features", "1300", "--bootstrap", "1000"],
        False,
    ),
    "suite_scale": (
        "bench_suite_scale.py",
        ["--cases", "1000", "--features", "1300"],
        ["--cases", "10000", "--features", "1300", "--skip-full"],
        True,
    ),
    "quality_gate": (
        "bench_quality_gate.py",
        ["--patients", "60", "--repeat", "1", "--executors", "in_process"],
        ["--patients", "120", "--repeat", "3", "--executors", "in_process,multiprocess"],
        True,
    ),
}


def parse_code_location(stdout: str) -> dict[str, Any]:
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"^(.*?)\s+(\d+\.\d+)\s+\((\d+\.\d+)\.\.(\d+\.\d+)\)\s*$", line)
        if match:
            label, median, low, high = match.groups()
            rows[label.strip()] = {
                "median_s": float(median),
                "min_s": float(low),
                "max_s": float(high),
            }
    return {"rows": rows}


def parse_json_lines(stdout: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in stdout.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            if item.get("part"):
                out[item["part"]] = item
            else:
                out.update(item)
    return out


def headline(name: str, result: dict[str, Any]) -> str:
    """One line of the most telling figures of a result (empty when they are missing)."""
    try:
        if name == "code_location":
            rows = result["rows"]
            return (
                f"definitions load {rows['load radlake definitions']['median_s']} s "
                f"(import dagster {rows['import dagster']['median_s']} s)"
            )
        if name == "dicom_scan":
            parts = []
            for zone in ("demo", "clinical", "clinical_rle"):
                if zone in result:
                    modes = result[zone]["modes"]
                    parts.append(
                        f"{zone}: scan {modes['scan_imaging']['files_per_s']:.0f} files/s = "
                        f"{modes['scan_imaging']['x_full_read']}x full read "
                        f"(evicted {modes['scan_imaging, evicted']['x_full_read']}x), header read "
                        f"{modes.get('header read (dicom_header)', {}).get('x_full_read')}x"
                    )
            return "; ".join(parts) + " [goal >= 10x]"
        if name.startswith("extraction"):
            return (
                f"{result['cases']} {result['source']} cases: lake/CLI {result['ratio_lake_over_cli']:.3f} "
                f"[<= 1.05], re-run/cold {result['rerun_fraction_of_cold']:.3f} [<= 0.02]"
            )
        if name == "dask_scaleout":
            median = result["median"]
            return (
                f"{result['cases']} cases: dask 1w {median['dask:local:1']['wall_s']} s, "
                f"2w {median['dask:local:2']['wall_s']} s, speed-up "
                f"{result['speedup_dask_2_over_1']}x; local:2 {median['local:2']['wall_s']} s"
            )
        if name == "pivot":
            best = {r["operation"]: r["best_s"] for r in result["results"]}
            return (
                f"{result['data']['cases']} x {result['data']['features']}: pivot "
                f"{best['pivot_duckdb']} s [< 1 s], cohort {best['cohort_duckdb']} s [< 0.1 s]"
            )
        if name == "study":
            lake, script = result["lake"]["seconds"], result["script"]["seconds"]
            return (
                f"lake {lake} s, script {script} s, lake/script {lake / script:.2f} "
                "[<= 1.1, lake < 180 s]"
            )
        if name == "suite_scale":
            runs = ", ".join(
                f"{r['mode']} {r['seconds']} s / {r['peak_rss_mb']} MB" for r in result["runs"]
            )
            return f"{result['rows']:,} rows: {runs}; same outcome {result['same_outcome']}"
        if name == "quality_gate":
            parts = [f"first run {result['first_materialization']['wall_s']} s"]
            for executor in ("in_process", "multiprocess"):
                if f"gate_adds_{executor}_s" in result:
                    parts.append(
                        f"gate adds {result[f'gate_adds_{executor}_s']} s "
                        f"({result[f'gate_adds_{executor}_pct']} %) {executor}"
                    )
            gx = result["fresh_interpreter"]["import great_expectations"]["median_s"]
            return ", ".join(parts) + f"; import GX {gx} s"
    except (KeyError, TypeError, ZeroDivisionError) as error:
        return f"(no headline: {type(error).__name__} {error})"
    return ""


def run_one(name: str, profile: str) -> dict[str, Any]:
    script, quick, full, own_json = BENCHMARKS[name]
    arguments = full if profile == "full" else quick
    path = RESULTS / f"{name}.json"
    command = [sys.executable, str(BENCH / script), *arguments]
    if own_json:
        command += ["--json", str(path)]
    print(f"\n=== {name}: {' '.join(command[1:])}  (load {load()})", flush=True)
    load_before = load()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    print(done.stdout[-6000:], flush=True)
    (RESULTS / f"{name}.log").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr, flush=True)
        return {"name": name, "ok": False, "wall_s": round(wall, 1), "error": done.stderr[-500:]}
    if own_json and path.exists():
        result = json.loads(path.read_text())
    elif name == "code_location":
        result = parse_code_location(done.stdout)
    else:
        result = parse_json_lines(done.stdout)
    result.setdefault("benchmark", name)
    result.setdefault("date", datetime.now(UTC).isoformat(timespec="seconds"))
    result.setdefault("machine", machine())
    result["command"] = " ".join(["bench/" + script, *arguments])
    result["run_all"] = {
        "profile": profile,
        "wall_s": round(wall, 1),
        "load_before": load_before,
        "load_after": load(),
    }
    path.write_text(json.dumps(result, indent=2, default=str))
    return {"name": name, "ok": True, "wall_s": round(wall, 1), "headline": headline(name, result)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names + [s for s in args.skip.split(",") if s] if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    names = [n for n in names if n not in args.skip.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {info['nproc']} cores, {info['cpu']}")
    print(f"profile {args.profile}: {', '.join(names)}; load {load()}")
    started = time.perf_counter()
    outcomes = [run_one(name, args.profile) for name in names]
    total = time.perf_counter() - started
    print(f"\nsummary ({args.profile}, {total / 60:.1f} min, load now {load()}):")
    print(
        table(
            ["benchmark", "wall s", "headline"],
            [
                [o["name"], o["wall_s"], o.get("headline") if o["ok"] else "FAILED (see .log)"]
                for o in outcomes
            ],
        )
    )
    summary = {"profile": args.profile, "total_s": round(total, 1), "benchmarks": outcomes}
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0 if all(o["ok"] for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
