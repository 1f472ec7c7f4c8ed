"""Benchmark: radiomics extraction on dask, 1 worker vs 2 workers, and the local process pool.

Cases: the demo generator's landing zone (``--patients`` patients; one portal-venous CT series per
patient, a few with a second, arterial, series), scanned and paired with their masks by radlake
itself (``scan_imaging`` + ``load_cases``, untimed), then turned into extractor tasks with
``case_tasks`` exactly as the ``radiomics_features`` asset does, with the shipped ``ct_default``
parameter file and the asset's loader (``mask_qc.load_case_task``: DICOM series + NIfTI mask).

Timed, each into a fresh empty lake (so no pair is "unchanged"), ``run_extraction`` with:

- ``dask:local:1``: a dask ``LocalCluster`` of 1 worker process, 1 thread;
- ``dask:local:2``: 2 worker processes, 1 thread each;
- ``local:2``: the default backend, a ``spawn`` process pool of 2 workers.

Wall time includes starting the cluster or pool and the workers' first imports (pyradiomics,
SimpleITK), as every materialization pays them. Reported: wall seconds, cases/min, speed-up of
2 dask workers over 1, and the per-case worker seconds. No numeric goal was set; the ideal on 2
cores is 2x, and this script calls >= 1.6x "scales" (the parent process, which receives results and
writes batches, shares the 2 cores with the workers).

    .venv/bin/python bench/bench_dask_scaleout.py --patients 120
    .venv/bin/python bench/bench_dask_scaleout.py --patients 30 --backends dask:local:1,dask:local:2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, load, table, write_result

sys.path.insert(0, str(REPO))

GOAL = 1.6
BACKENDS = "dask:local:1,dask:local:2,local:2"


def prepare(home: Path, patients: int) -> tuple[list[dict], list]:
    """Demo landing zone -> case tasks and the ct_default parameter file (untimed)."""
    from assets.imaging.cases import case_tasks, load_cases
    from assets.imaging.dicom_scan import scan_imaging
    from assets.radiomics.params import SHIPPED_DIR, params_file
    from dagster_project.pseudonym import Pseudonymizer
    from radlake.demo import generate_demo

    generate_demo(home, patients=patients)
    landing = home / "landing"
    pseudonymize = Pseudonymizer(b"radlake-bench")
    scan = scan_imaging(landing, pseudonymize)
    cases = load_cases(landing, scan.series, pseudonymize, scan_files=scan.files)
    tasks = case_tasks(landing, cases.cases, cases.locators)
    assert tasks, "the demo landing zone gave no cases"
    return tasks, [params_file(SHIPPED_DIR / "ct_default.yaml")]


def run(backend: str, tasks: list[dict], params: list, lake_home: Path) -> dict:
    from assets.imaging.mask_qc import load_case_task
    from assets.radiomics.run import run_extraction
    from dagster_project.lake import Lake

    lake = Lake.at(lake_home)
    load_before = load()
    start = time.perf_counter()
    stats, rejects = run_extraction(lake, tasks, params, backend, loader=load_case_task)
    wall = time.perf_counter() - start
    assert stats["unchanged"] == 0 and stats["extracted"] + len(rejects) == len(tasks), stats
    return {
        "backend": backend,
        "wall_s": round(wall, 2),
        "extracted": stats["extracted"],
        "rejects": len(rejects),
        "cases_per_min": round(60 * stats["extracted"] / wall, 1),
        "worker_s_per_case": round(stats["worker_seconds_per_case"], 3),
        "worker_s_total": round(stats["worker_seconds_per_case"] * stats["extracted"], 1),
        "feature_rows": stats["table_rows"],
        "load_before": load_before,
        "load_after": load(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument(
        "--backends", default=BACKENDS, help=f"comma-separated (default {BACKENDS})"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per backend (median wall)")
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/...")
    args = parser.parse_args(argv)

    import radiomics  # noqa: F401  (the parent's own imports stay outside the timings)

    result: dict = {"load_at_start": load(), "patients": args.patients, "runs": []}
    with tempfile.TemporaryDirectory(prefix="radlake-bench-dask-") as tmp:
        tasks, params = prepare(Path(tmp) / "demo", args.patients)
        result["cases"] = len(tasks)
        print(f"{args.patients} demo patients -> {len(tasks)} cases x ct_default", flush=True)
        for r in range(args.repeat):
            for backend in args.backends.split(","):
                row = run(
                    backend, tasks, params, Path(tmp) / f"lake-{backend}-{r}".replace(":", "_")
                )
                result["runs"].append(row)
                print(row, flush=True)
    best: dict[str, dict] = {}
    for backend in args.backends.split(","):
        walls = sorted(row["wall_s"] for row in result["runs"] if row["backend"] == backend)
        median = walls[len(walls) // 2]
        best[backend] = next(
            row for row in result["runs"] if row["backend"] == backend and row["wall_s"] == median
        )
    result["median"] = best
    if {"dask:local:1", "dask:local:2"} <= set(best):
        speedup = best["dask:local:1"]["wall_s"] / best["dask:local:2"]["wall_s"]
        result["speedup_dask_2_over_1"] = round(speedup, 2)
        result["goal"] = f"speed-up >= {GOAL} (no numeric goal set; ideal 2x)"
        result["goal_met"] = speedup >= GOAL
    if {"local:2", "dask:local:2"} <= set(best):
        result["dask2_over_local2_wall"] = round(
            best["dask:local:2"]["wall_s"] / best["local:2"]["wall_s"], 2
        )
    reference = best.get("dask:local:1", next(iter(best.values())))["wall_s"]
    print()
    print(
        table(
            [
                "backend",
                "wall s",
                "cases/min",
                "speed-up",
                "worker s/case",
                "worker s total",
                "load before..after",
            ],
            [
                [
                    b,
                    row["wall_s"],
                    row["cases_per_min"],
                    round(reference / row["wall_s"], 2),
                    row["worker_s_per_case"],
                    row["worker_s_total"],
                    f"{row['load_before'][0]}..{row['load_after'][0]}",
                ]
                for b, row in best.items()
            ],
        )
    )
    if "speedup_dask_2_over_1" in result:
        print(
            f"dask 2 workers / 1 worker: {result['speedup_dask_2_over_1']}x "
            f"(>= {GOAL}: {'met' if result['goal_met'] else 'missed'})"
        )
    write_result("dask_scaleout", result, args.json)
    return result


if __name__ == "__main__":
    main()
