"""Benchmark: a GX suite on a large radiomics table, every row vs distinct values.

The ``radiomics_features`` suite (quality/suites/radiomics_features.yaml: 11 expectations,
regexes on ids and feature names, not-null, compound key unique) on a synthetic long table of
``--cases`` cases x ``--features`` features, in two fresh processes each:

- ``every row``: ``quality.suites.run_suite`` on the table as pandas (what the check did before,
  and still does up to ``quality.scaled.LARGE_TABLE_ROWS`` rows);
- ``distinct values``: ``quality.scaled.run_suite_scaled`` on a lazy scan of the Parquet files.

Reported: seconds (reading included, GX import excluded), peak RSS, and whether both gave the
same outcome (verdicts, unexpected row counts). The table carries a few defects (a malformed
case_id, a null center, a duplicated key) so that both have something to find.

    .venv/bin/python bench/bench_suite_scale.py --cases 1000 --features 1300      # 1.3M rows
    .venv/bin/python bench/bench_suite_scale.py --cases 10000 --features 1300 --skip-full
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchlib import load, table, write_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate(folder: Path, n_cases: int, n_features: int, part_cases: int = 1000) -> int:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(17)
    features = [f"wavelet-LLH_glcm_Feature{i:04d}" for i in range(n_features)]
    folder.mkdir(parents=True)
    rows = 0
    for start in range(0, n_cases, part_cases):
        stop = min(start + part_cases, n_cases)
        k = stop - start
        ids = [f"{i:032x}" for i in rng.integers(0, 2**62, k)]
        idx = np.repeat(np.arange(k), n_features)
        frame = pl.DataFrame(
            {
                "case_id": pl.Series(ids).gather(idx),
                "patient_key": pl.Series([i[::-1] for i in ids]).gather(idx),
                "center_id": pl.Series(["C1", "C2"] * k)[:k].gather(idx),
                "feature": pl.Series(features * k),
                "value": rng.normal(size=k * n_features),
                "params_id": pl.repeat("ct_default", k * n_features, eager=True),
                "params_sha256": pl.repeat("a" * 64, k * n_features, eager=True),
                "image_sha256": pl.repeat("b" * 64, k * n_features, eager=True),
                "mask_sha256": pl.repeat("c" * 64, k * n_features, eager=True),
                "extractor_version": pl.repeat("3.1.4", k * n_features, eager=True),
            }
        ).with_columns(
            extracted_at=pl.datetime(2026, 11, 27, time_zone="UTC").cast(pl.Datetime("us", "UTC"))
        )
        if start == 0:  # defects: a malformed id, a null center, a duplicated key
            frame = frame.with_row_index("i").with_columns(
                case_id=pl.when(pl.col("i") == 5).then(pl.lit("NOT-A-KEY")).otherwise("case_id"),
                center_id=pl.when(pl.col("i") == 7).then(None).otherwise("center_id"),
            )
            frame = pl.concat([frame, frame.filter(pl.col("i") == 9)]).drop("i")
        frame.write_parquet(folder / f"part-{start:08d}.parquet")
        rows += frame.height
    return rows


def _peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _measure(mode: str, folder: str, queue) -> None:
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations  # noqa: F401  (import outside the timed region)
    import polars as pl

    from quality.scaled import run_suite_scaled, to_pandas
    from quality.suites import run_suite

    start = time.perf_counter()
    scan = pl.scan_parquet(f"{folder}/*.parquet")
    if mode == "every row":
        outcome = run_suite("radiomics_features", to_pandas(scan.collect()))
    else:
        outcome = run_suite_scaled("radiomics_features", scan)
    seconds = time.perf_counter() - start
    queue.put(
        {
            "mode": mode,
            "seconds": round(seconds, 2),
            "peak_rss_mb": _peak_mb(),
            "rows": outcome.rows,
            "failed": sorted(
                (o.expectation, str(o.kwargs), o.unexpected_count) for o in outcome.failed
            ),
            "load": load(),
        }
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--features", type=int, default=1300)
    parser.add_argument("--skip-full", action="store_true", help="only the distinct-value path")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    results = {"load_at_start": load(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="radlake-bench-suite-") as tmp:
        folder = Path(tmp) / "radiomics_features"
        results["rows"] = generate(folder, args.cases, args.features)
        modes = ["distinct values"] + ([] if args.skip_full else ["every row"])
        for mode in modes:
            queue = context.Queue()
            process = context.Process(target=_measure, args=(mode, str(folder), queue))
            process.start()
            results["runs"].append(queue.get())
            process.join()
    runs = results["runs"]
    results["same_outcome"] = len({repr(r["failed"]) for r in runs}) == 1 if len(runs) > 1 else None
    print(f"{results['rows']:,} rows")
    print(
        table(
            ["mode", "seconds", "peak RSS MB", "failed expectations (unexpected rows)"],
            [
                [
                    r["mode"],
                    r["seconds"],
                    r["peak_rss_mb"],
                    "; ".join(f"{f[0]}: {f[2]}" for f in r["failed"]),
                ]
                for r in runs
            ],
        )
    )
    print(f"same outcome: {results['same_outcome']}")
    write_result("suite_scale", results, args.json)
    return results


if __name__ == "__main__":
    main()
