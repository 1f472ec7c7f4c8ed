"""Benchmark: the lake's extraction against its limit, on real public CT (and PET, RTSTRUCT) cases.

The limit of a parallel extraction on C cores is the sum of the single-case times measured in one
warm process, divided by C: no parallel run can do better without making a single case faster.
This script measures

- ``limit``: one process extracts every case alone (all its parameter sets: ``run_case``, the
  case read once and its preprocessing shared between parameter sets that allow it), one after
  the other, after an untimed warm-up case (imports, pyradiomics' extractors, the first read),
  through the lake's own loader (``mask_qc.load_case_task``: DICOM series, RTSTRUCT
  rasterization, PET in SUV, mask QC); ``limit = sum of the case times / jobs``;
- ``lake``: ``run_extraction`` (what the ``radiomics_features`` asset runs) over the same cases
  on the local process pool of ``jobs`` workers, cold (empty lake), in a fresh process: largest
  cases first, a case that dominates the run split by image type across the workers
  (``assets/radiomics/schedule.py``); its in-process step time and the wall time, with the peak
  memory of the process tree (sampled every 0.1 s);

and reports ``lake step / limit`` (target <= 1.1) and the largest relative difference between the
lake's values and the single-case values (they must be identical).

Cases (real public data from ../shared/data; ``--copies`` replicates each, one center per copy,
hard links, so case ids differ while the files are the same):

- the IBSI soft-tissue-sarcoma CT series STS_041..044 with their clinical RTSTRUCT (GTV_Mass_CT);
- the same patients' PET series (SUV) with their RTSTRUCT (GTV_Mass_PET);
- pyradiomics' lung1 CT (NRRD image and label);
- autoradiomics' CT_head DICOM series with its NIfTI mask.

Parameters: pyradiomics' ``exampleSettings/exampleCT.yaml`` (Original, LoG at five sigmas,
wavelet: ~1,200 features a case) as ``ct_bench``, the same with ``binWidth: 0.25`` as
``pt_bench`` for PET (SUV), and with ``--bin-width-variant`` also ``ct_bench_bw10`` (binWidth 10:
a bin-width sensitivity analysis, which shares the read and the resampling with ``ct_bench``).

Usage::

    .venv/bin/python bench/bench_extraction_limit.py --copies 1 --jobs 2 --bin-width-variant --json out.json

The machine may be shared: the load average is recorded before and after each step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(os.environ.get("RADLAKE_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
STS = ("STS_041", "STS_042", "STS_043", "STS_044")
SECRET = "bench-extraction-limit"


def _link_tree(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_dir():
            _link_tree(path, target / path.name)
            continue
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copyfile(path, target / path.name)


def prepare(home: Path, copies: int, params_source: Path, variant: bool) -> None:
    """The landing zone (one center per copy) and the two parameter files (untimed)."""
    import yaml

    imaging = home / "landing" / "imaging"
    for copy in range(copies):
        center = imaging / f"B{copy + 1}"
        rows = ["Image,Mask,Label,patient_id"]
        for patient in STS:
            for modality, roi in (("CT", "GTV_Mass_CT"), ("PET", "GTV_Mass_PET")):
                source = SHARED / "dicom" / "ibsi_sts" / patient / modality
                _link_tree(source / "image", center / patient / modality)
                _link_tree(source / "mask", center / patient / f"{modality}_rs")
                rows.append(f"{patient}/{modality},{patient}/{modality}_rs/RS.dcm,{roi},{patient}")
        _link_tree(SHARED / "dicom" / "autoradiomics" / "CT_head", center / "head" / "CT")
        os.link(
            SHARED / "dicom" / "autoradiomics" / "nifti" / "CT_head_seg.nii.gz",
            center / "head" / "mask.nii.gz",
        )
        rows.append("head/CT,head/mask.nii.gz,1,HEAD")
        for name in ("lung1_image.nrrd", "lung1_label.nrrd"):
            os.link(SHARED / "pyradiomics" / name, center / name)
        rows.append("lung1_image.nrrd,lung1_label.nrrd,1,LUNG1")
        (center / "cases.csv").write_text("\n".join(rows) + "\n")
    params = home / "params"
    params.mkdir(parents=True, exist_ok=True)
    ct = yaml.safe_load(params_source.read_text())
    (params / "ct_bench.yaml").write_text(yaml.safe_dump(ct))
    pet = yaml.safe_load(params_source.read_text())
    pet.setdefault("setting", {})["binWidth"] = 0.25
    (params / "pt_bench.yaml").write_text(yaml.safe_dump(pet))
    if variant:
        ct["setting"]["binWidth"] = 10
        (params / "ct_bench_bw10.yaml").write_text(yaml.safe_dump(ct))


def make_tasks(home: Path) -> list[dict]:
    """The cases table (scan + cases, untimed) turned into the extractor's tasks."""
    from assets.imaging.cases import case_tasks, load_cases
    from assets.imaging.dicom_scan import scan_imaging
    from assets.radiomics.params import applies_to, discover_params
    from dagster_project.lake import Lake
    from dagster_project.pseudonym import Pseudonymizer

    os.environ["LAKE_PSEUDONYM_KEY"] = SECRET
    lake = Lake.at(home)
    pseudonymize = Pseudonymizer.for_lake(lake.home)
    scan = scan_imaging(lake.landing, pseudonymize)
    result = load_cases(lake.landing, scan.series, pseudonymize, scan_files=scan.files)
    if result.rejects:
        raise RuntimeError("cases quarantined: " + "; ".join(str(r) for r in result.rejects))
    params, _ = discover_params(lake.params_dir, include_shipped=False)
    rows = {r["case_id"]: r for r in result.cases.iter_rows(named=True)}
    tasks = case_tasks(lake.landing, result.cases, result.locators)
    for task in tasks:
        modality = rows[task["case_id"]]["modality"]
        # lung1 is a bare NRRD (no modality): it is CT
        task["params_ids"] = [
            p.params_id for p in params if applies_to(p.params_id, modality or "CT")
        ]
    return tasks


# --- the two timed sides, each in its own process ------------------------------------------------
def limit_run(home: Path, tasks_json: Path) -> dict:
    """Every case alone (all its parameter sets), one after the other, in this (warm) process."""
    from assets.imaging.mask_qc import load_case_task
    from assets.radiomics.extract import quiet_radiomics, run_case

    quiet_radiomics()
    tasks = json.loads(tasks_json.read_text())
    params = {p.stem: str(p) for p in sorted((home / "params").glob("*.yaml"))}

    def jobs(task: dict) -> list[tuple[str, str]]:
        return [(pid, params[pid]) for pid in task["params_ids"]]

    smallest = min(
        tasks,
        key=lambda t: os.path.getsize(t["mask_path"]) if os.path.isfile(t["mask_path"]) else 0,
    )
    assert all(r.ok for r in run_case(smallest, jobs(smallest), load_case_task))  # warm-up, untimed
    times, values = {}, {}
    for task in tasks:
        started = time.perf_counter()
        results = run_case(task, jobs(task), load_case_task)
        times[task["case_id"]] = time.perf_counter() - started
        for result in results:
            if not result.ok:
                raise RuntimeError(
                    f"{task['case_id']} {result.params_id}: {result.rule} {result.error}"
                )
            for name, value in result.features:
                values[f"{task['case_id']}|{result.params_id}|{name}"] = value
    return {"case_seconds": times, "values": values}


def lake_run(home: Path, tasks_json: Path, jobs: int) -> dict:
    from assets.imaging.mask_qc import load_case_task
    from assets.radiomics.params import discover_params
    from assets.radiomics.run import run_extraction
    from dagster_project.lake import Lake

    started = time.perf_counter()
    lake = Lake.at(home)
    tasks = json.loads(tasks_json.read_text())
    params, _ = discover_params(lake.params_dir, include_shipped=False)
    stats, rejects = run_extraction(
        lake, tasks, params, backend=f"local:{jobs}", loader=load_case_task
    )
    stats["step_s"] = time.perf_counter() - started
    stats["rejects"] = [str(r) for r in rejects]
    return stats


def compare(home: Path, values: dict) -> tuple[float, int]:
    from assets.radiomics.incremental import read_features
    from dagster_project.lake import Lake

    worst, compared = 0.0, 0
    for case_id, params_id, name, value in (
        read_features(Lake.at(home)).select("case_id", "params_id", "feature", "value").iter_rows()
    ):
        theirs = values.get(f"{case_id}|{params_id}|{name}")
        if theirs is None:
            continue
        compared += 1
        if value != theirs and not (value != value and theirs != theirs):  # NaN == NaN here
            worst = max(worst, abs(value - theirs) / max(abs(theirs), 1e-12))
    return worst, compared


def run(copies: int, jobs: int, params_source: Path, workdir: Path, variant: bool) -> dict:
    from bench_extraction import measure
    from benchlib import load, machine

    home = workdir / "lakehouse"
    prepare(home, copies, params_source, variant)
    tasks = make_tasks(home)
    tasks_json = workdir / "tasks.json"
    tasks_json.write_text(json.dumps(tasks))
    me = str(Path(__file__).resolve())
    load_before = load()
    limit = measure([sys.executable, me, "--limit-run", str(home), str(tasks_json)], workdir)
    limit_stats = json.loads(limit.pop("stdout"))
    shutil.rmtree(home / "lake", ignore_errors=True)
    load_between = load()
    lake = measure(
        [sys.executable, me, "--lake-run", str(home), str(tasks_json), str(jobs)], workdir
    )
    lake_stats = json.loads(lake.pop("stdout"))
    worst, compared = compare(home, limit_stats["values"])
    case_seconds = limit_stats["case_seconds"]
    limit_s = sum(case_seconds.values()) / jobs
    return {
        "machine": machine(),
        "load": {"before": load_before, "between": load_between, "after": load()},
        "cases": len(tasks),
        "pairs": sum(len(t["params_ids"]) for t in tasks),
        "jobs": jobs,
        "params": params_source.name,
        "bin_width_variant": variant,
        "limit_sum_case_s": sum(case_seconds.values()),
        "limit_s": limit_s,
        "case_seconds": case_seconds,
        "largest_case_s": max(case_seconds.values()),
        "lake_step_s": lake_stats["step_s"],
        "lake_wall_s": lake["wall_s"],
        "lake_over_limit": lake_stats["step_s"] / limit_s,
        "lake_peak_rss_tree_mb": lake["peak_rss_tree_mb"],
        "lake_peak_rss_largest_mb": lake["peak_rss_largest_mb"],
        "limit_peak_rss_mb": limit["peak_rss_largest_mb"],
        "lake_extracted": lake_stats["extracted"],
        "lake_rejects": lake_stats["rejects"],
        "max_relative_difference": worst,
        "values_compared": compared,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--params", type=Path, default=SHARED / "pyradiomics" / "exampleSettings" / "exampleCT.yaml"
    )
    parser.add_argument("--bin-width-variant", action="store_true", help="add ct_bench_bw10")
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run when given")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--limit-run", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--lake-run", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.limit_run:
        print(json.dumps(limit_run(Path(args.limit_run[0]), Path(args.limit_run[1]))))
        return 0
    if args.lake_run:
        home, tasks_json, jobs = args.lake_run
        print(json.dumps(lake_run(Path(home), Path(tasks_json), int(jobs)), default=str))
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="radlake-limit-"))
    try:
        result = run(args.copies, args.jobs, args.params.resolve(), workdir, args.bin_width_variant)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{result['cases']} cases, {result['pairs']} case x params pairs, {result['jobs']} jobs "
        f"({result['params']}); load {result['load']}\n"
        f"  limit (sum of single cases / jobs) {result['limit_s']:8.1f} s  "
        f"(largest case {result['largest_case_s']:.1f} s)\n"
        f"  lake run_extraction step          {result['lake_step_s']:8.1f} s  "
        f"(wall {result['lake_wall_s']:.1f} s, peak RSS {result['lake_peak_rss_tree_mb']:.0f} MB tree)\n"
        f"  lake / limit                      {result['lake_over_limit']:8.3f}    (target <= 1.1)\n"
        f"  values: max relative difference {result['max_relative_difference']:.1e} over "
        f"{result['values_compared']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
