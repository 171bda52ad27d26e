"""Run every benchmark script in this folder, one after another.

Each script prints its own figures and their ratio to a baseline measured in the
same run; this runner only sequences them (never in parallel: on a 2-core
machine two benchmarks would time each other) and passes `--quick` through.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def main(argv: list[str]) -> int:
    extra = [a for a in argv if a.startswith("--")]
    only = [a for a in argv if not a.startswith("--")]
    scripts = sorted(p for p in HERE.glob("bench_*.py") if not only or any(o in p.name for o in only))
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} {' '.join(extra)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script), *extra])
        print(f"=== {script.name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(script.name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
