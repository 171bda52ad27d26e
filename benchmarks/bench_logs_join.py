"""Logs -> labelled CTR/CVR data: throughput of `join_logs`, and what not losing rows costs.

    python benchmarks/bench_logs_join.py            # 14 days x 20k impressions/day (~270k impressions)
    python benchmarks/bench_logs_join.py --quick    # 3 days x 3k impressions/day: a smoke run

Logs come from `ctrops.pipeline.loggen.generate_logs` (JSON lines, one file per
day) in two variants: "dirty" (the generator's default 0.1 % malformed lines,
so every file takes the exact line-by-line path) and "clean" (no malformed
line: Arrow's JSON reader path).

Figure: impressions per second through `join_logs` (validate every row, reject
file, attribution of clicks and conversions, time split, Parquet + spec
output), median of --repeats runs, wall and CPU time.

Baseline, measured in the same run: DuckDB reading the same files itself
(`read_json(..., ignore_errors=true)`, one thread like the join) and doing the
CTR click attribution in one SQL statement written to Parquet. It is the
fast, lossy way: the script also prints how many rows it dropped without
saying which, against the rows `join_logs` put in its reject file.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ctrops.pipeline.join import join_logs
from ctrops.pipeline.loggen import CLICK_COLUMNS, IMPRESSION_COLUMNS, generate_logs


def timed(fn, repeats: int) -> tuple[float, float, object]:
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), result


def duckdb_baseline(logs: Path, out: Path) -> int:
    import duckdb

    con = duckdb.connect(config={"threads": 1})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")

    def src(kind: str) -> str:
        names = IMPRESSION_COLUMNS if kind == "impressions" else CLICK_COLUMNS
        columns = ", ".join(f"{name}: 'VARCHAR'" for name in names)  # every column, as the join reads them
        return (f"read_json('{logs / kind}/*.jsonl', format='newline_delimited', ignore_errors=true, "
                f"columns={{{columns}}})")

    con.execute(f"""
        COPY (
          WITH imp AS (SELECT * EXCLUDE (ts), TRY_CAST(ts AS TIMESTAMPTZ) AS ts FROM {src('impressions')}
                       WHERE impression_id IS NOT NULL),
               clk AS (SELECT impression_id, TRY_CAST(ts AS TIMESTAMPTZ) AS ts FROM {src('clicks')}),
               fc AS (SELECT c.impression_id, min(c.ts) AS click_ts FROM clk c JOIN imp i USING (impression_id)
                      WHERE c.ts BETWEEN i.ts AND i.ts + INTERVAL 1 HOUR GROUP BY 1)
          SELECT i.*, CAST(fc.click_ts IS NOT NULL AS TINYINT) AS label FROM imp i LEFT JOIN fc USING (impression_id)
        ) TO '{out}' (FORMAT parquet)""")
    n = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0]
    con.close()
    return int(n)


def count_lines(directory: Path) -> int:
    return sum(sum(1 for line in open(f, "rb") if line.strip()) for f in sorted(directory.glob("*.jsonl")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--days", type=int, default=None)
    ap.add_argument("--per-day", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--workdir", default=None, help="where to generate logs (default: a temp folder)")
    args = ap.parse_args()
    days = args.days or (3 if args.quick else 14)
    per_day = args.per_day or (3_000 if args.quick else 20_000)
    repeats = args.repeats or (2 if args.quick else 3)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ctrops-bench-join-"))
    try:
        for variant, malformed in (("dirty", 0.001), ("clean", 0.0)):
            logs = work / f"logs-{variant}"
            gen = generate_logs(logs, days=days, impressions_per_day=per_day, seed=7, malformed_rate=malformed)
            lines = count_lines(logs / "impressions")

            def ours():
                out = work / f"out-{variant}"
                shutil.rmtree(out, ignore_errors=True)
                return join_logs(logs / "impressions", logs / "clicks", out, conversions=logs / "conversions")

            def theirs():
                return duckdb_baseline(logs, work / f"baseline-{variant}.parquet")

            w_ours, c_ours, report = timed(ours, repeats)
            w_base, c_base, base_rows = timed(theirs, repeats)
            kept = report.impressions + report.duplicate_impressions
            print(f"[{variant}] {days} days x {per_day} impressions/day: {lines:,} impression lines, "
                  f"{report.clicks:,} click rows, {report.conversions:,} conversion rows "
                  f"({sum(gen.malformed.values())} malformed on purpose)")
            print(f"  join_logs      : {w_ours:6.2f} s wall, {c_ours:6.2f} s CPU -> "
                  f"{lines / w_ours:9,.0f} impressions/s wall, {lines / c_ours:9,.0f} /s CPU "
                  f"(median of {repeats})")
            print(f"  duckdb baseline: {w_base:6.2f} s wall, {c_base:6.2f} s CPU -> "
                  f"{lines / w_base:9,.0f} impressions/s wall (CTR only, no report, no rejects)")
            print(f"  ratio join_logs / baseline wall time: {w_ours / w_base:.2f}x")
            print(f"  rows: join_logs kept {kept:,} impressions and put {report.rejected['impressions']} in "
                  f"{report.reject_path or 'no reject file'}; baseline wrote {base_rows:,} rows and dropped "
                  f"{lines - base_rows:,} without a record")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
