"""Benchmark: the DICOM header scan (imaging_series) vs reading every file in full, in files/s.

Two landing zones, both CT Image Storage files written with pydicom (Explicit VR Little Endian,
uncompressed):

- ``demo``: the demo generator's landing zone (``radlake.demo.generate_demo``):
  48x48 slices (~6 KB files), far smaller than clinical CT, so the pixel data a full read decodes
  is tiny and header-only reading gains little;
- ``clinical``: ``--clinical-files`` files of 512x512 int16 slices (~520 KB files), made from a demo
  file's header with Rows/Columns/PixelData/PixelSpacing replaced, in series of
  ``--slices-per-series`` slices (one patient per series), like a clinical abdominal CT;
- ``clinical_rle``: ``--compressed-files`` such files stored RLE Lossless (~270 KB; a full read
  decodes them with pydicom's numpy RLE decoder), as some PACS exports are compressed.

Measured on each, in this process (imports done before timing), every mode ``--repeat`` times,
interleaved, median reported:

- ``scan_imaging``: radlake's scanner (``assets.imaging.dicom_scan.scan_imaging``) on the landing
  zone with an empty index (every header is read): walking, cases.csv, header reads (in worker
  processes, one per core but one, from 1,000 files: ``header_worker.default_workers``),
  pseudonymization, path scrubbing, series grouping and slice ordering;
- ``scan_imaging, 1 process``: the same with ``workers=0`` (every header read in this process);
- ``scan_imaging re-run``: the same with the previous run's file index (nothing changed);
- ``header read (dicom_header)``: the scanner's per-file reader
  (``assets.imaging.dicom_header.read_header_values``: struct-level walk of the element stream);
- ``read_header (pydicom)``: the pydicom path it falls back to for files it does not handle
  (``assets.imaging.io.read_header``: ``dcmread(stop_before_pixels=True, specific_tags=...)``);
- ``dcmread header``: plain ``pydicom.dcmread(path, stop_before_pixels=True)`` (all tags);
- ``full read``: ``pydicom.dcmread(path)`` + ``.pixel_array`` of every file (the obvious way).

Page cache: ``warm`` modes run after an untimed full read of every file; ``evicted`` modes run
after ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every file (drops this guest's cached pages without
root; ``echo 3 > drop_caches`` needs root). On a VM the host may still cache the disk, so
"evicted" is closer to a fast SSD than to a network share, where header-only reading gains more.
``x full read`` compares warm modes with the warm full read and evicted ones with the evicted.
Peak memory: ``scan_imaging`` and the full read once more each in a fresh interpreter: its peak
RSS (``VmHWM``) and its header worker's (sampled).
Goal (imaging issue): the scan reads at least 10x more files/s than a full read.

    .venv/bin/python bench/bench_dicom_scan.py                                  # defaults
    .venv/bin/python bench/bench_dicom_scan.py --patients 40 --clinical-files 200 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchlib import REPO, load, repeat, table, write_result

sys.path.insert(0, str(REPO))

GOAL = 10.0


def make_clinical(
    landing: Path, template: Path, n_files: int, per_series: int, compress: bool = False
) -> list[Path]:
    """``n_files`` 512x512 int16 CT slices in series of ``per_series``, from a demo file's header;
    RLE Lossless compressed when ``compress`` (pydicom's own encoder and decoder)."""
    import numpy as np
    import pydicom
    from pydicom.uid import RLELossless, generate_uid

    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[-256:256, -256:256]
    body = (xx / 220.0) ** 2 + (yy / 170.0) ** 2 <= 1.0  # an elliptic abdomen in air
    paths = []
    n_series = -(-n_files // per_series)
    for s in range(n_series):
        folder = landing / "imaging" / "CLIN" / f"P{s:04d}" / "CT_PV"
        folder.mkdir(parents=True, exist_ok=True)
        series_uid = generate_uid(entropy_srcs=["radlake-bench", "series", str(s)])
        for k in range(min(per_series, n_files - len(paths))):
            ds = pydicom.dcmread(template)  # a fresh copy (compress() changes the dataset)
            hu = np.where(body, 40, -1000) + rng.normal(0, 12, body.shape)
            ds.Rows = ds.Columns = 512
            ds.PixelSpacing = [0.703125, 0.703125]
            ds.PixelRepresentation = 1
            ds.RescaleIntercept, ds.RescaleSlope = 0, 1
            ds.PixelData = hu.astype(np.int16).tobytes()
            ds.PatientID = f"CLIN{s:04d}"
            ds.PatientName = f"BENCH^PATIENT{s:04d}"
            ds.SeriesInstanceUID = series_uid
            uid = generate_uid(entropy_srcs=["radlake-bench", "slice", str(s), str(k)])
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [-180.0, -180.0, -300.0 + 1.25 * k]
            ds.SliceLocation = -300.0 + 1.25 * k
            if compress:
                ds.compress(RLELossless)
            path = folder / f"IM{k + 1:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def measure(name: str, landing: Path, files: list[Path], times: int) -> dict:
    import pydicom

    from assets.imaging.dicom_header import read_header_values
    from assets.imaging.dicom_scan import scan_imaging
    from assets.imaging.header_worker import SCAN_TAGS, default_workers
    from assets.imaging.io import read_header
    from dagster_project.pseudonym import Pseudonymizer

    pseudonymize = Pseudonymizer(b"radlake-bench")
    n = len(files)
    sizes = [p.stat().st_size for p in files]

    def full():
        for path in files:
            pydicom.dcmread(path).pixel_array  # noqa: B018  (decoding is the point)

    def header():
        for path in files:
            read_header_values(path)

    def pydicom_header():
        for path in files:
            read_header(path, SCAN_TAGS)

    def plain_header():
        for path in files:
            pydicom.dcmread(path, stop_before_pixels=True)

    def scan():
        return scan_imaging(landing, pseudonymize)

    def scan_one_process():
        return scan_imaging(landing, pseudonymize, workers=0)

    first = scan()
    assert first.stats["read"] == n and first.stats["quarantined"] == 0, first.stats
    same = scan_one_process()
    assert same.series.equals(first.series) and same.files.equals(first.files)

    def rescan():
        result = scan_imaging(landing, pseudonymize, previous=first.files)
        assert result.stats["reused"] == n
        return result

    def evict():  # drop these files from the page cache (best effort, no root needed)
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    os.sync()  # dirty pages cannot be evicted
    full()  # warm the page cache (untimed)
    modes = {  # name: (function, evict the files before each timed call)
        "scan_imaging": (scan, False),
        "scan_imaging, 1 process": (scan_one_process, False),
        "scan_imaging re-run": (rescan, False),
        "header read (dicom_header)": (header, False),
        "read_header (pydicom)": (pydicom_header, False),
        "dcmread header": (plain_header, False),
        "full read": (full, False),
        "scan_imaging, evicted": (scan, True),
        "header read (dicom_header), evicted": (header, True),
        "full read, evicted": (full, True),
    }
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(times):  # interleaved, so a change of load hits every mode alike
        for mode, (function, cold) in modes.items():
            if cold:
                evict()
            runs[mode].append(repeat(function, 1)["runs"][0])
            if cold:
                full()  # warm again for the next warm mode (untimed)
    out = {
        "files": n,
        "series": first.stats["series"],
        "scan_workers": first.stats.get("workers", 0),
        "cores": default_workers(),
        "mean_file_kb": round(sum(sizes) / n / 1024, 1),
        "total_mb": round(sum(sizes) / 2**20, 1),
        "modes": {},
    }
    for mode, mode_runs in runs.items():
        seconds = sorted(r["s"] for r in mode_runs)
        median = seconds[len(seconds) // 2]
        out["modes"][mode] = {
            "median_s": median,
            "files_per_s": round(n / median, 1),
            "runs": mode_runs,
        }
    for mode in modes:
        reference = "full read, evicted" if mode.endswith("evicted") else "full read"
        rate = out["modes"][reference]["files_per_s"]
        out["modes"][mode]["x_full_read"] = round(out["modes"][mode]["files_per_s"] / rate, 2)
    out["goal_met_warm"] = out["modes"]["scan_imaging"]["x_full_read"] >= GOAL
    out["goal_met_evicted"] = out["modes"]["scan_imaging, evicted"]["x_full_read"] >= GOAL
    out["peak_rss_mb"] = {mode: peak_rss(mode, landing) for mode in ("scan_imaging", "full read")}
    print(
        f"\n{name}: {n} DICOM files in {out['series']} series, {out['scan_workers']} workers, "
        f"mean {out['mean_file_kb']} KB ({out['total_mb']} MB), load {load()}"
    )
    print(
        "peak RSS, fresh process (MB): "
        + "; ".join(
            f"{mode} {p['process']} (+ header workers {p['children']})"
            if p["children"]
            else f"{mode} {p['process']}"
            for mode, p in out["peak_rss_mb"].items()
        )
    )
    print(
        table(
            ["mode", "median s", "files/s", "x full read", "load (1 min) per run"],
            [
                [
                    mode,
                    m["median_s"],
                    m["files_per_s"],
                    m["x_full_read"],
                    " ".join(str(r["load"][0]) for r in m["runs"]),
                ]
                for mode, m in out["modes"].items()
            ],
        )
    )
    return out


_PEAK_CODE = """
import json, sys, threading, time
from pathlib import Path
import psutil
sys.path.insert(0, {repo!r})
landing = Path({landing!r})
children_peak, done = [0], threading.Event()
def sample():  # the header worker's RSS, every 5 ms
    me = psutil.Process()
    while not done.is_set():
        for child in me.children():
            try:
                children_peak[0] = max(children_peak[0], child.memory_info().rss)
            except psutil.Error:
                pass
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
if {mode!r} == "scan_imaging":
    from assets.imaging.dicom_scan import scan_imaging
    from dagster_project.pseudonym import Pseudonymizer
    result = scan_imaging(landing, Pseudonymizer(b"radlake-bench"))
    assert result.stats["read"] > 0
else:
    import pydicom
    for path in sorted((landing / "imaging").rglob("*.dcm")):
        pydicom.dcmread(path).pixel_array
done.set()
status = Path("/proc/self/status").read_text()
peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
print(json.dumps([peak * 1024, children_peak[0]]))
"""


def peak_rss(mode: str, landing: Path) -> dict:
    """Peak RSS (MB) of one ``mode`` in a fresh interpreter: the process itself (``VmHWM``;
    ``getrusage`` would count the benchmark process it was forked from) and its largest child
    (the scan's header worker; sampled every 5 ms)."""
    import json
    import subprocess

    code = _PEAK_CODE.format(repo=str(REPO), landing=str(landing), mode=mode)
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO
    )
    process, children = json.loads(done.stdout.strip().splitlines()[-1])
    return {"process": round(process / 2**20), "children": round(children / 2**20)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=120, help="demo landing zone size")
    parser.add_argument("--clinical-files", type=int, default=400, help="512x512 files; 0 = none")
    parser.add_argument(
        "--compressed-files", type=int, default=200, help="512x512 RLE Lossless; 0 = none"
    )
    parser.add_argument("--slices-per-series", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/...")
    args = parser.parse_args(argv)

    from radlake.demo import generate_demo

    result: dict = {"load_at_start": load(), "goal": f"scan_imaging >= {GOAL:g}x full read"}
    with tempfile.TemporaryDirectory(prefix="radlake-bench-dicom-") as tmp:
        demo = Path(tmp) / "demo"
        counts = generate_demo(demo, patients=args.patients)
        landing = demo / "landing"
        files = sorted((landing / "imaging").rglob("*.dcm"))
        result["demo"] = {"patients": args.patients, "generator": counts}
        result["demo"].update(measure("demo (48x48)", landing, files, args.repeat))
        template = Path(tmp) / "template.dcm"
        shutil.copyfile(files[0], template)
        shutil.rmtree(demo)  # keep the temporary folder small
        if args.clinical_files:
            clinical = Path(tmp) / "clinical" / "landing"
            made = make_clinical(clinical, template, args.clinical_files, args.slices_per_series)
            result["clinical"] = measure("clinical (512x512)", clinical, made, args.repeat)
        if args.compressed_files:
            rle = Path(tmp) / "rle" / "landing"
            made = make_clinical(
                rle, template, args.compressed_files, args.slices_per_series, compress=True
            )
            result["clinical_rle"] = measure("clinical, RLE Lossless", rle, made, args.repeat)
    write_result("dicom_scan", result, args.json)
    return result


if __name__ == "__main__":
    main()
