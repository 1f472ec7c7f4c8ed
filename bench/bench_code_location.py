"""How long the code location takes to load, against `import dagster` alone (the floor).

Each measurement is a fresh interpreter (what `dagster dev` and every run worker pay).
Usage: .venv/bin/python bench/bench_code_location.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def timed(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = {
        "python -c pass": "pass",
        "import dagster": "import dagster",
        "load radlake definitions": "from dagster_project.definitions import defs; defs.resolve_asset_graph()",
        "import great_expectations (what the gate would add if imported at load)": "import great_expectations",
    }
    print(f"{'what':75s} median s   (min..max over {args.repeat})")
    for label, code in rows.items():
        times = [timed(code) for _ in range(args.repeat)]
        print(
            f"{label:75s} {statistics.median(times):6.2f}     ({min(times):.2f}..{max(times):.2f})"
        )


if __name__ == "__main__":
    main()
