"""Benchmark: lake extraction vs pyradiomics' own batch CLI, on the same cases and parameter file.

What it measures, each step in a fresh subprocess (interpreter start and imports included, as a
user would pay them), on the same cases.csv and the same pyradiomics parameter file:

1. ``pyradiomics cases.csv --jobs J -o out.csv -f csv -p params.yaml`` (the batch CLI);
2. the lake's ``run_extraction`` with the local process pool of J workers (cold: empty lake);
3. the same again with nothing changed (the incremental no-change re-run).

Reported: wall seconds, the lake/CLI wall-time ratio (goal <= 1.05), the no-change re-run as a
fraction of the cold run (goal <= 0.02), peak memory (largest process, and the whole process tree
sampled every 0.1 s) and the largest relative difference between the CLI's and the lake's
feature values (they must agree). Case sources:

- ``--source pyradiomics`` (default): pyradiomics' five test cases (brain1, brain2, breast1, lung1,
  prostate phantom) from ../shared/data, replicated (hard links) to ``--cases`` cases;
- ``--source demo``: the project's demo generator (``radlake.demo``); its DICOM series
  are converted to NIfTI first (untimed), because the pyradiomics CLI cannot read a DICOM folder.

Usage::

    .venv/bin/python bench/bench_extraction.py --cases 20 --jobs 2
    .venv/bin/python bench/bench_extraction.py --source demo --cases 300 --jobs 2 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

SHARED = Path(os.environ.get("RADLAKE_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
PYRADIOMICS_CASES = (
    ("brain1_image.nrrd", "brain1_label.nrrd"),
    ("brain2_image.nrrd", "brain2_label.nrrd"),
    ("breast1_image.nrrd", "breast1_label.nrrd"),
    ("lung1_image.nrrd", "lung1_label.nrrd"),
    ("prostate_phantom_subvolume.nrrd", "prostate_phantom_subvolume-label.nrrd"),
)
DEFAULT_PARAMS = SHARED / "pyradiomics" / "exampleSettings" / "Params.yaml"
CENTER = "BENCH"


# --- preparing the cases (untimed) ----------------------------------------------------------------
def prepare_pyradiomics(folder: Path, n_cases: int) -> list[tuple[Path, Path]]:
    """``n_cases`` image/mask pairs cycling over pyradiomics' test cases (hard links, no copies)."""
    pairs = []
    for i in range(n_cases):
        image, mask = PYRADIOMICS_CASES[i % len(PYRADIOMICS_CASES)]
        pair = []
        for name in (image, mask):
            target = folder / f"case{i:04d}_{name}"
            try:
                os.link(SHARED / "pyradiomics" / name, target)
            except OSError:  # another file system: copy
                shutil.copyfile(SHARED / "pyradiomics" / name, target)
            pair.append(target)
        pairs.append((pair[0], pair[1]))
    return pairs


def prepare_demo(folder: Path, n_cases: int, scratch: Path) -> list[tuple[Path, Path]]:
    """Demo cases (one series per patient) with each DICOM series converted to NIfTI."""
    import SimpleITK as sitk

    from radlake.demo import generate_demo

    generate_demo(scratch, patients=n_cases)
    pairs = []
    for cases_csv in sorted((scratch / "landing" / "imaging").glob("*/cases.csv")):
        with open(cases_csv, encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                reader = sitk.ImageSeriesReader()
                files = reader.GetGDCMSeriesFileNames(str(cases_csv.parent / row["Image"]))
                reader.SetFileNames(files)
                image = folder / f"case{len(pairs):04d}_image.nii.gz"
                sitk.WriteImage(reader.Execute(), str(image))
                mask = folder / f"case{len(pairs):04d}_mask.nii.gz"
                shutil.copyfile(cases_csv.parent / row["Mask"], mask)
                pairs.append((image, mask))
    return pairs[:n_cases]


def write_batch_csv(path: Path, pairs: list[tuple[Path, Path]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Image", "Mask", "Label", "patient_id"])
        for i, (image, mask) in enumerate(pairs):
            writer.writerow([str(image), str(mask), 1, f"case{i:04d}"])


# --- the lake side, run in its own process ----------------------------------------------------------
def lake_run(home: Path, cases_csv: Path, jobs: int) -> dict:
    """One ``run_extraction`` over the batch CSV (what the asset does after the cases table).

    Files are hashed through the lake's file hash cache, as the ``cases`` asset does, so the
    no-change re-run does not read the images again.
    """
    from assets.radiomics.incremental import stored_pairs
    from assets.radiomics.params import discover_params
    from assets.radiomics.run import run_extraction
    from dagster_project.lake import HASH_CACHE_FILE, HashCache, Lake

    started = time.perf_counter()  # the step itself: what the asset's compute time would be
    lake = Lake.at(home)
    hashes = HashCache.load(lake.state_dir / HASH_CACHE_FILE)
    tasks = []
    with open(cases_csv, encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            tasks.append(
                {
                    "case_id": row["patient_id"],
                    "patient_key": row["patient_id"],
                    "center_id": CENTER,
                    "image_path": row["Image"],
                    "mask_path": row["Mask"],
                    "label": int(row["Label"]),
                    "image_sha256": hashes.sha256(row["Image"]),
                    "mask_sha256": hashes.sha256(row["Mask"]),
                }
            )
    hashes.save(lake.state_dir / HASH_CACHE_FILE)
    known = set(stored_pairs(lake).get_column("params_sha256").to_list())  # as the asset does
    params, rejects = discover_params(lake.params_dir, include_shipped=False, validated=known)
    assert not rejects, rejects
    stats, case_rejects = run_extraction(
        lake, tasks, params, backend=f"local:{jobs}", batch_size=16
    )
    stats["step_s"] = time.perf_counter() - started
    stats["rejects"] = [str(r) for r in case_rejects]
    stats["hash_cache_hits"], stats["hash_cache_misses"] = hashes.hits, hashes.misses
    return stats


# --- measuring --------------------------------------------------------------------------------------
def measure(command: list[str], cwd: Path) -> dict:
    """Wall time, peak RSS of the largest process and of the whole process tree (sampled)."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_tree, peak_single = [0], [0]
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                sizes = []
                for proc in procs:
                    with contextlib.suppress(psutil.Error):
                        sizes.append(proc.memory_info().rss)
                peak_tree[0] = max(peak_tree[0], sum(sizes))
                peak_single[0] = max([peak_single[0], *sizes])
            except psutil.Error:
                pass
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(
            f"{command[0]} failed ({process.returncode}):\n{stderr.decode()[-3000:]}"
        )
    return {
        "wall_s": wall,
        "peak_rss_largest_mb": peak_single[0] / 2**20,
        "peak_rss_tree_mb": peak_tree[0] / 2**20,
        "stdout": stdout.decode(),
    }


def compare_outputs(cli_csv: Path, home: Path) -> tuple[float, int]:
    """Largest relative difference between the CLI's and the lake's values; values compared."""
    import polars as pl

    from assets.radiomics.incremental import read_features
    from dagster_project.lake import Lake

    lake = read_features(Lake.at(home))
    lake_values = {
        (r[0], r[1]): r[2] for r in lake.select("case_id", "feature", "value").iter_rows()
    }
    cli = pl.read_csv(cli_csv, infer_schema_length=0)
    worst, compared = 0.0, 0
    for row in cli.iter_rows(named=True):
        for name, text in row.items():
            if not name.startswith("original_"):
                continue
            mine = lake_values.get((row["patient_id"], name))
            if mine is None:
                raise AssertionError(
                    f"{row['patient_id']} {name}: in the CLI output, not in the lake"
                )
            # the CLI writes a numpy complex as "(1-2.6e-17j)" (a shape feature on a near-flat
            # ROI); the lake stores its real part, as float() of a numpy complex does
            theirs = complex(text).real if text.endswith("j)") else float(text)
            scale = max(abs(theirs), 1e-12)
            worst = max(worst, abs(mine - theirs) / scale)
            compared += 1
    return worst, compared


def run_benchmark(source: str, n_cases: int, jobs: int, params: Path, workdir: Path) -> dict:
    folder = workdir / "cases"
    folder.mkdir(parents=True)
    if source == "demo":
        pairs = prepare_demo(folder, n_cases, workdir / "demo_home")
    else:
        pairs = prepare_pyradiomics(folder, n_cases)
    cases_csv = workdir / "cases.csv"
    write_batch_csv(cases_csv, pairs)
    home = workdir / "lakehouse"
    (home / "params").mkdir(parents=True)
    shutil.copyfile(params, home / "params" / params.name)  # same file for both tools

    python = sys.executable
    pyradiomics_cli = Path(python).with_name("pyradiomics")
    cli_out = workdir / "cli_out.csv"
    cli = measure(
        [
            str(pyradiomics_cli),
            str(cases_csv),
            "--jobs",
            str(jobs),
            "-o",
            str(cli_out),
            "-f",
            "csv",
            "-p",
            str(params),
        ],
        workdir,
    )
    lake_command = [
        python,
        str(Path(__file__).resolve()),
        "--lake-run",
        str(home),
        str(cases_csv),
        str(jobs),
    ]
    cold = measure(lake_command, workdir)
    rerun = measure(lake_command, workdir)
    cold_stats, rerun_stats = json.loads(cold.pop("stdout")), json.loads(rerun.pop("stdout"))
    cli.pop("stdout")
    worst, compared = compare_outputs(cli_out, home)
    return {
        "source": source,
        "cases": len(pairs),
        "jobs": jobs,
        "params": params.name,
        "cli": cli,
        "lake_cold": cold,
        "lake_rerun": rerun,
        "ratio_lake_over_cli": cold["wall_s"] / cli["wall_s"],
        "rerun_fraction_of_cold": rerun["wall_s"] / cold["wall_s"],
        "rerun_in_process_s": rerun_stats["total_seconds"],
        # in-process: hashing (cache) + planning + extraction, without interpreter start/imports
        "cold_step_s": cold_stats["step_s"],
        "rerun_step_s": rerun_stats["step_s"],
        "rerun_step_fraction_of_cold": rerun_stats["step_s"] / cold_stats["step_s"],
        "cold_extracted": cold_stats["extracted"],
        "cold_rejects": cold_stats["rejects"],
        "rerun_extracted": rerun_stats["extracted"],
        "cold_hash_cache": {k: cold_stats[f"hash_cache_{k}"] for k in ("hits", "misses")},
        "rerun_hash_cache": {k: rerun_stats[f"hash_cache_{k}"] for k in ("hits", "misses")},
        "max_relative_difference_cli_vs_lake": worst,
        "values_compared": compared,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("pyradiomics", "demo"), default="pyradiomics")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run when given")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--lake-run", nargs=3, metavar=("HOME", "CASES_CSV", "JOBS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.lake_run:  # the timed lake side (a subprocess of the benchmark)
        home, cases_csv, jobs = args.lake_run
        print(json.dumps(lake_run(Path(home), Path(cases_csv), int(jobs)), default=str))
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="radlake-bench-"))
    try:
        result = run_benchmark(args.source, args.cases, args.jobs, args.params.resolve(), workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{result['cases']} cases ({result['source']}, {result['params']}), {result['jobs']} jobs\n"
        f"  pyradiomics CLI      {result['cli']['wall_s']:8.1f} s   peak RSS {result['cli']['peak_rss_tree_mb']:.0f} MB (tree)\n"
        f"  lake, cold           {result['lake_cold']['wall_s']:8.1f} s   peak RSS {result['lake_cold']['peak_rss_tree_mb']:.0f} MB (tree)\n"
        f"  lake, no change      {result['lake_rerun']['wall_s']:8.1f} s   ({result['rerun_in_process_s']:.2f} s in run_extraction)\n"
        f"  lake / CLI           {result['ratio_lake_over_cli']:8.3f}    (goal <= 1.05)\n"
        f"  re-run / cold        {result['rerun_fraction_of_cold']:8.3f}    (goal <= 0.02; fresh processes)\n"
        f"  step re-run / cold   {result['rerun_step_fraction_of_cold']:8.4f}    "
        f"({result['rerun_step_s']:.3f} s / {result['cold_step_s']:.1f} s: hashing + plan + extraction in the process)\n"
        f"  CLI vs lake values   max relative difference {result['max_relative_difference_cli_vs_lake']:.1e} "
        f"over {result['values_compared']} values"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
