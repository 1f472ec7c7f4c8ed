"""Benchmark: what write-audit-publish costs against write-then-check, in one run.

1. **The 13M-row table** (10,000 cases x 1,300 features, ``bench_suite_scale.generate`` without its
   defects): ``write_then_check`` = publish without an auditor, then audit the live files (what the
   old write + blocking check did, plus the manifest); ``write_audit_publish`` = stage, audit the
   staged files, publish (``Lake.write_table`` with the GX auditor). Both include the manifest
   (sha256 of the new file).
2. **A full demo run** (``radlake demo-data --patients N`` then ``radlake materialize``, each in a
   fresh lake): ``RADLAKE_WAP=0`` (tables written first, the suite checks audit the live files)
   against the default (audited in staging, the checks read the recorded audit).

    .venv/bin/python bench/bench_publish.py --cases 10000 --features 1300 --patients 120
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_suite_scale import generate  # noqa: E402
from benchlib import machine, table, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TABLE = "radiomics_features"


def big_table(n_cases: int, n_features: int, folder: Path):
    import polars as pl

    generate(folder, n_cases, n_features)
    frame = pl.read_parquet(folder / "*.parquet")
    # generate() plants three defects; this benchmark times a version that passes
    frame = frame.filter(
        (pl.col("case_id") != "NOT-A-KEY") & pl.col("center_id").is_not_null()
    ).unique(subset=["case_id", "params_id", "feature"], keep="first")
    return frame.with_columns(label=pl.lit(1, dtype=pl.Int64))


def time_big(frame) -> dict:
    import great_expectations  # noqa: F401  (its ~5 s import is not what is compared)

    from dagster_project.lake import Lake
    from quality.audit import audit_table, audit_tables

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        plain = Lake.at(Path(tmp) / "a")
        start = time.perf_counter()
        plain.write_table(TABLE, frame)
        written = time.perf_counter()
        result = audit_table(plain, TABLE)
        out["write_then_check"] = {
            "write_s": written - start,
            "check_s": time.perf_counter() - written,
            "total_s": time.perf_counter() - start,
            "passed": result["passed"],
        }
        audited = Lake.at(Path(tmp) / "b", auditor=audit_tables)
        start = time.perf_counter()
        audited.write_table(TABLE, frame)
        out["write_audit_publish"] = {
            "total_s": time.perf_counter() - start,
            "passed": audited.manifest(TABLE)["audit"]["passed"],
        }
    out["rows"] = frame.height
    return out


def time_demo(patients: int) -> dict:
    radlake = str(Path(sys.executable).with_name("radlake"))
    out = {}
    for label, wap in (("write_then_check", "0"), ("write_audit_publish", "1")):
        with tempfile.TemporaryDirectory() as tmp:
            env = {
                **os.environ,
                "LAKE_HOME": f"{tmp}/lake",
                "DAGSTER_HOME": f"{tmp}/dagster_home",
                "LAKE_PSEUDONYM_KEY": "bench",
                "RADLAKE_WAP": wap,
                "PYTHONPATH": str(REPO),
            }
            subprocess.run(
                [radlake, "demo-data", "--patients", str(patients)],
                env=env,
                check=True,
                capture_output=True,
            )
            start = time.perf_counter()
            run = subprocess.run(
                [radlake, "materialize", "--log-level", "WARNING"],
                env=env,
                capture_output=True,
                text=True,
            )
            out[label] = {"seconds": time.perf_counter() - start, "returncode": run.returncode}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=1300)
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        frame = big_table(args.cases, args.features, Path(tmp) / "gen")
    result = {"machine": machine(), "big_table": time_big(frame)}
    del frame
    if not args.skip_demo:
        result["demo"] = time_demo(args.patients)
    big = result["big_table"]
    rows = [
        ["13M table: write then check", f"{big['write_then_check']['total_s']:.1f} s"],
        ["13M table: write-audit-publish", f"{big['write_audit_publish']['total_s']:.1f} s"],
    ]
    for label, run in result.get("demo", {}).items():
        rows.append([f"demo run ({args.patients} patients): {label}", f"{run['seconds']:.1f} s"])
    print(table(["what", "wall time"], rows))
    write_result("publish", result)
    return result


if __name__ == "__main__":
    main()
