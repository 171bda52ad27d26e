"""Ad logs -> labelled CTR and CVR training data, joined in DuckDB.

Attribution rules (docs/log-schema.md has the full contract):

* impressions are unique by `impression_id`; repeated ids keep the earliest
  row and are counted as `duplicate_impressions`;
* a click is attributed to its impression when
  `imp.ts <= click.ts <= imp.ts + click_window` (both edges included); every
  click row lands in exactly one bucket: attributed (the first in-window click
  of its impression), duplicate (later in-window clicks of the same
  impression: counted once), orphan (no impression), early (before the
  impression: clock skew) or late (after the window);
* a conversion is attributed to an attributed click when
  `click.ts <= conv.ts <= click.ts + conversion_window`, with the same buckets
  plus `without_click` (the impression exists but was not clicked);
* CTR rows: one per impression, label = attributed click;
  CVR rows: one per attributed click, label = attributed conversion;
* a row whose attribution window is still open at the observation end (the
  latest timestamp in any log, unless given) has an unknown label: with
  `drop_immature` (default) it is left out and counted, because keeping it as
  a negative biases the newest days low;
* time split: validation holds the latest `valid_days` UTC calendar days of
  each dataset's rows, training everything before.

Outputs in `out_dir`: `ctr/{train,valid}.parquet`, `ctr/spec.yaml`, the same
for `cvr/` when conversions are given, `rejects.jsonl` when a row was
malformed, and `join_report.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ctrops.errors import DataError
from ctrops.pipeline.logs_schema import (
    AD_COLUMNS,
    ID_COLUMN,
    PRICE_COLUMNS,
    RejectSink,
    read_log,
)

LABEL_COLUMN = "label"
TIME_OUTPUT_COLUMN = "ts"
_US_PER_DAY = 86_400_000_000
_BOOKKEEPING = {ID_COLUMN, "ts_us", "_file", "_line"}
_OUTPUT_NAMES = {LABEL_COLUMN, TIME_OUTPUT_COLUMN, "_positive", "_immature", "_click_delay_s",
                 "_conversion_delay_s", "_conversion_value"}

LogSource = str | os.PathLike | Sequence[str | os.PathLike]


@dataclass
class SplitReport:
    """One labelled dataset (CTR or CVR) and its time split."""

    rows: int = 0
    positives: int = 0
    train_rows: int = 0
    train_positives: int = 0
    valid_rows: int = 0
    valid_positives: int = 0
    immature_rows: int = 0
    train_start: str | None = None  # ISO-8601 UTC of the first training row
    split_time: str | None = None  # first instant of the validation days
    valid_end: str | None = None  # ISO-8601 UTC of the last validation row
    train_path: str | None = None
    valid_path: str | None = None
    spec_path: str | None = None


@dataclass
class JoinReport:
    """Counts of every row of the three logs, and the two datasets produced."""

    impressions: int = 0
    duplicate_impressions: int = 0
    clicks: int = 0
    attributed_clicks: int = 0
    duplicate_clicks: int = 0
    orphan_clicks: int = 0
    early_clicks: int = 0
    late_clicks: int = 0
    conversions: int = 0
    attributed_conversions: int = 0
    duplicate_conversions: int = 0
    orphan_conversions: int = 0
    conversions_without_click: int = 0
    early_conversions: int = 0
    late_conversions: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    reject_path: str | None = None
    click_window_s: float = 0.0
    conversion_window_s: float = 0.0
    observation_end: str | None = None
    ctr: SplitReport = field(default_factory=SplitReport)
    cvr: SplitReport | None = None

    @property
    def rejected_rows(self) -> int:
        return sum(self.rejected.values())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rejected_rows"] = self.rejected_rows
        return out

    def metrics(self) -> dict[str, float]:
        """Flat numeric counts (e.g. for `mlflow.log_metrics`)."""
        out: dict[str, float] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"join.{key}"] = float(value)
        for name, split in (("ctr", self.ctr), ("cvr", self.cvr)):
            if split is None:
                continue
            for key, value in asdict(split).items():
                if isinstance(value, int):
                    out[f"join.{name}.{key}"] = float(value)
        return out


def _iso(ts_us: int | None) -> str | None:
    if ts_us is None:
        return None
    dt = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(ts_us))
    return dt.isoformat().replace("+00:00", "Z")


def _micros(d: timedelta) -> int:
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def join_logs(impressions: LogSource, clicks: LogSource, out_dir: str | os.PathLike, *,
              conversions: LogSource | None = None,
              click_window: timedelta = timedelta(hours=1),
              conversion_window: timedelta = timedelta(days=3),
              valid_days: int = 1,
              format: str | None = None,
              numeric_columns: Iterable[str] = (),
              observation_end: datetime | None = None,
              drop_immature: bool = True,
              max_reject_fraction: float = 0.5,
              duckdb_threads: int = 1,
              duckdb_memory_limit: str = "2GB") -> JoinReport:
    """Join impression, click and (optionally) conversion logs into labelled Parquet datasets.

    Each source is a file, a directory, a glob or a list of them, in JSON
    lines, CSV or Parquet (`format=None` infers it from each file name).
    Impression columns other than the schema's become context features:
    categorical strings, except `numeric_columns` (numeric, log2bin in the
    spec). Columns starting with "_" are carried along but are never features.
    Returns the `JoinReport`, also written to `out_dir/join_report.json`.
    """
    import duckdb

    if valid_days < 1:
        raise DataError(f"valid_days must be >= 1, got {valid_days}")
    for name, window in (("click_window", click_window), ("conversion_window", conversion_window)):
        if window <= timedelta(0):
            raise DataError(f"{name} must be positive, got {window}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    numeric = tuple(numeric_columns)
    reject_path = out / "rejects.jsonl"
    if reject_path.exists():
        reject_path.unlink()  # a stale file from an earlier run would be mistaken for this run's
    sink = RejectSink(reject_path, max_fraction=max_reject_fraction)
    try:
        imp = read_log(impressions, "impressions", sink, format=format, numeric_columns=numeric)
        clk = read_log(clicks, "clicks", sink, format=format)
        conv = read_log(conversions, "conversions", sink, format=format) if conversions is not None else None
    finally:
        sink.close()
    if imp.num_rows == 0:
        raise DataError("no valid impression rows to join", path=str(impressions))

    report = JoinReport(rejected=dict(sink.counts), rejected_by_reason=dict(sink.by_reason),
                        reject_path=str(reject_path) if sink.total else None,
                        click_window_s=click_window.total_seconds(),
                        conversion_window_s=conversion_window.total_seconds())
    cw, vw = _micros(click_window), _micros(conversion_window)

    con = duckdb.connect(config={"threads": duckdb_threads, "memory_limit": duckdb_memory_limit})
    try:
        con.execute("SET enable_progress_bar = false")
        con.register("imp_raw", imp)
        con.register("clk_raw", clk)
        con.register("conv_raw", conv if conv is not None else _empty_events())
        end_us = _observation_end(con, observation_end, with_conversions=conv is not None)
        report.observation_end = _iso(end_us)
        context = [c for c in imp.column_names if c not in _BOOKKEEPING]
        clash = sorted(set(context) & _OUTPUT_NAMES)
        if clash:
            raise DataError(f"impression column(s) {clash} collide with columns the join writes; rename them "
                            f"in the log (reserved: {sorted(_OUTPUT_NAMES)})", path=str(impressions))
        _attribute(con, cw, vw)
        _count(con, report, with_conversions=conv is not None)

        ctr_dir = out / "ctr"
        report.ctr = _write_dataset(
            con, ctr_dir, "ctr",
            rows_sql=f"""
                SELECT i.*, fc.click_ts IS NOT NULL AS _positive,
                       (fc.click_ts - i.ts_us) / 1e6 AS _click_delay_s,
                       i.ts_us + {cw} > {end_us} AS _immature
                FROM imp i LEFT JOIN first_click fc USING ({ID_COLUMN})""",
            context=context, numeric=numeric, valid_days=valid_days, drop_immature=drop_immature,
            extra=("_click_delay_s",))
        if conv is not None:
            report.cvr = _write_dataset(
                con, out / "cvr", "cvr",
                rows_sql=f"""
                    SELECT i.*, fcv.conv_ts IS NOT NULL AS _positive,
                           (fc.click_ts - i.ts_us) / 1e6 AS _click_delay_s,
                           (fcv.conv_ts - fc.click_ts) / 1e6 AS _conversion_delay_s,
                           fcv.conv_value AS _conversion_value,
                           fc.click_ts + {vw} > {end_us} AS _immature
                    FROM imp i JOIN first_click fc USING ({ID_COLUMN})
                    LEFT JOIN first_conv fcv USING ({ID_COLUMN})""",
                context=context, numeric=numeric, valid_days=valid_days, drop_immature=drop_immature,
                extra=("_click_delay_s", "_conversion_delay_s", "_conversion_value"))
    finally:
        con.close()
    (out / "join_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _empty_events() -> pa.Table:
    return pa.table({ID_COLUMN: pa.array([], pa.string()), "ts_us": pa.array([], pa.int64()),
                     "value": pa.array([], pa.float64()), "_file": pa.array([], pa.string()),
                     "_line": pa.array([], pa.int64())})


def _scalar(con: Any, sql: str) -> Any:
    rows = con.execute(sql).fetchall()
    return rows[0][0] if rows else None


def _observation_end(con: Any, given: datetime | None, with_conversions: bool) -> int:
    if given is not None:
        if given.tzinfo is None:
            given = given.replace(tzinfo=timezone.utc)
        return _micros(given - datetime(1970, 1, 1, tzinfo=timezone.utc))
    parts = ["SELECT max(ts_us) FROM imp_raw", "SELECT max(ts_us) FROM clk_raw"]
    if with_conversions:
        parts.append("SELECT max(ts_us) FROM conv_raw")
    return int(_scalar(con, "SELECT max(m) FROM (" + " UNION ALL ".join(f"({p})" for p in parts) + ") t(m)"))


def _attribute(con: Any, cw: int, vw: int) -> None:
    """Classify every click and conversion row; keep the first attributed one per impression."""
    con.execute(f"""
        CREATE TEMP TABLE imp AS
        SELECT * EXCLUDE (_rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY {ID_COLUMN} ORDER BY ts_us, _file, _line) AS _rn
            FROM imp_raw) WHERE _rn = 1""")
    con.execute(f"""
        CREATE TEMP TABLE clk AS
        SELECT c.{ID_COLUMN}, c.ts_us,
               CASE WHEN i.ts_us IS NULL THEN 'orphan'
                    WHEN c.ts_us < i.ts_us THEN 'early'
                    WHEN c.ts_us > i.ts_us + {cw} THEN 'late'
                    ELSE 'in_window' END AS status
        FROM clk_raw c LEFT JOIN imp i USING ({ID_COLUMN})""")
    con.execute(f"""
        CREATE TEMP TABLE first_click AS
        SELECT {ID_COLUMN}, min(ts_us) AS click_ts, count(*) AS n
        FROM clk WHERE status = 'in_window' GROUP BY {ID_COLUMN}""")
    con.execute(f"""
        CREATE TEMP TABLE conv AS
        SELECT v.{ID_COLUMN}, v.ts_us, v.value,
               CASE WHEN i.ts_us IS NULL THEN 'orphan'
                    WHEN fc.click_ts IS NULL THEN 'without_click'
                    WHEN v.ts_us < fc.click_ts THEN 'early'
                    WHEN v.ts_us > fc.click_ts + {vw} THEN 'late'
                    ELSE 'in_window' END AS status
        FROM conv_raw v LEFT JOIN imp i USING ({ID_COLUMN}) LEFT JOIN first_click fc USING ({ID_COLUMN})""")
    con.execute(f"""
        CREATE TEMP TABLE first_conv AS
        SELECT {ID_COLUMN}, min(ts_us) AS conv_ts, arg_min(value, ts_us) AS conv_value, count(*) AS n
        FROM conv WHERE status = 'in_window' GROUP BY {ID_COLUMN}""")


def _count(con: Any, report: JoinReport, with_conversions: bool) -> None:
    report.impressions = int(_scalar(con, "SELECT count(*) FROM imp"))
    report.duplicate_impressions = int(_scalar(con, "SELECT count(*) FROM imp_raw")) - report.impressions
    clicks = dict(con.execute("SELECT status, count(*) FROM clk GROUP BY status").fetchall())
    report.clicks = int(sum(clicks.values()))
    report.attributed_clicks = int(_scalar(con, "SELECT count(*) FROM first_click"))
    report.duplicate_clicks = int(clicks.get("in_window", 0)) - report.attributed_clicks
    report.orphan_clicks = int(clicks.get("orphan", 0))
    report.early_clicks = int(clicks.get("early", 0))
    report.late_clicks = int(clicks.get("late", 0))
    if with_conversions:
        convs = dict(con.execute("SELECT status, count(*) FROM conv GROUP BY status").fetchall())
        report.conversions = int(sum(convs.values()))
        report.attributed_conversions = int(_scalar(con, "SELECT count(*) FROM first_conv"))
        report.duplicate_conversions = int(convs.get("in_window", 0)) - report.attributed_conversions
        report.orphan_conversions = int(convs.get("orphan", 0))
        report.conversions_without_click = int(convs.get("without_click", 0))
        report.early_conversions = int(convs.get("early", 0))
        report.late_conversions = int(convs.get("late", 0))


def _write_dataset(con: Any, directory: Path, name: str, *, rows_sql: str, context: list[str],
                   numeric: tuple[str, ...], valid_days: int, drop_immature: bool,
                   extra: tuple[str, ...]) -> SplitReport:
    """Label, split by day and write one dataset with its FieldSpec."""
    directory.mkdir(parents=True, exist_ok=True)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name}_rows AS {rows_sql}")
    split = SplitReport()
    split.immature_rows = int(_scalar(con, f"SELECT count(*) FROM {name}_rows WHERE _immature")) \
        if drop_immature else 0
    keep = "NOT _immature" if drop_immature else "TRUE"
    last_ts = _scalar(con, f"SELECT max(ts_us) FROM {name}_rows WHERE {keep}")
    first_ts = _scalar(con, f"SELECT min(ts_us) FROM {name}_rows WHERE {keep}")
    split_us = None if last_ts is None else (int(last_ts) // _US_PER_DAY - (valid_days - 1)) * _US_PER_DAY

    features = [c for c in context if not c.startswith("_") and c not in PRICE_COLUMNS]
    carried = [c for c in context if c not in features]
    ad = [c for c in AD_COLUMNS if c in features]
    ordered = ad + [c for c in features if c not in ad]
    select = ", ".join([
        f"{ID_COLUMN}",
        f"make_timestamp(ts_us) AS {TIME_OUTPUT_COLUMN}",
        f"CAST(_positive AS TINYINT) AS {LABEL_COLUMN}",
        *(_quote(c) for c in ordered),
        *(_quote(c) for c in carried),
        *extra,
    ])
    paths = {}
    for part, cond in (("train", f"ts_us < {split_us}"), ("valid", f"ts_us >= {split_us}")):
        if split_us is None:
            cond = "FALSE"
        table = con.sql(f"SELECT {select} FROM {name}_rows WHERE {keep} AND {cond} "
                        f"ORDER BY ts_us, {ID_COLUMN}").to_arrow_table()
        table = _utc(table)
        path = directory / f"{part}.parquet"
        tmp = directory / f".{part}.parquet.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
        paths[part] = path
        n = table.num_rows
        pos = int(pc.sum(table.column(LABEL_COLUMN)).as_py() or 0) if n else 0
        if part == "train":
            split.train_rows, split.train_positives = n, pos
        else:
            split.valid_rows, split.valid_positives = n, pos
    split.rows = split.train_rows + split.valid_rows
    split.positives = split.train_positives + split.valid_positives
    split.train_start = _iso(first_ts)
    split.split_time = _iso(split_us)
    split.valid_end = _iso(last_ts)
    split.train_path, split.valid_path = str(paths["train"]), str(paths["valid"])
    split.spec_path = str(write_field_spec(directory / "spec.yaml", ordered, numeric,
                                          passthrough=[TIME_OUTPUT_COLUMN, *carried, *extra]))
    return split


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _utc(table: pa.Table) -> pa.Table:
    """Pin the timestamp column to UTC whatever the session time zone was."""
    idx = table.schema.get_field_index(TIME_OUTPUT_COLUMN)
    col = table.column(idx).cast(pa.timestamp("us", tz="UTC"))
    return table.set_column(idx, pa.field(TIME_OUTPUT_COLUMN, col.type), col)


def write_field_spec(path: str | os.PathLike, feature_columns: Sequence[str], numeric_columns: Iterable[str] = (),
                     passthrough: Sequence[str] = ()) -> Path:
    """Write the FieldSpec YAML of a labelled dataset: label, id, features in order, passthrough columns.

    The spec is built through `ctrops.data.spec.FieldSpec` so what is written
    is exactly what `FieldSpec.from_yaml` accepts.
    """
    import yaml

    from ctrops.data.spec import FieldDef, FieldSpec

    numeric = set(numeric_columns)
    spec = FieldSpec(label=LABEL_COLUMN,
                     fields=tuple(FieldDef(c, "numeric", "log2bin") if c in numeric else FieldDef(c, "categorical")
                                  for c in feature_columns),
                     id_columns=(ID_COLUMN,), passthrough=tuple(passthrough))
    out = Path(path)
    out.write_text("# written by ctrops.pipeline.join: field numbers follow the order of 'fields'\n"
                   + yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return out
