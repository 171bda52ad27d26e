"""Join of impression/click/conversion logs: attribution edges, counts, rejects, time split."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctrops.data.spec import FieldSpec
from ctrops.errors import DataError
from ctrops.pipeline.join import join_logs
from ctrops.pipeline.logs_schema import RejectSink, parse_timestamp, read_log

DAY1 = datetime(2026, 11, 2, tzinfo=timezone.utc)


def iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def imp(iid: str, at: datetime, ad: str = "ad1", **ctx) -> dict:
    return {"impression_id": iid, "ts": iso(at), "ad_id": ad, "creative_id": "cr1", "campaign_id": "camp1",
            "advertiser_id": "adv1", "site_id": ctx.pop("site_id", "s1"), "bid_price": 1.5, "win_price": 0.9,
            **ctx}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


T10 = DAY1 + timedelta(hours=10)


@pytest.fixture()
def logs(tmp_path: Path) -> dict[str, Path]:
    impressions = [
        imp("i1", T10),
        imp("i2", T10),
        '{"impression_id": "broken", "ts": ',  # line 3: truncated write
        imp("i3", T10, site_id="s2"),
        {"ts": iso(T10), "ad_id": "ad1"},  # line 5: no impression id
        {"impression_id": "i9", "ts": "nope", "ad_id": "ad1"},  # line 6: bad timestamp
        imp("i4", T10),
        imp("i5", T10 + timedelta(hours=1)),
        imp("i6", DAY1 + timedelta(days=1, hours=3)),
        imp("i6", DAY1 + timedelta(days=1, hours=4)),  # duplicate id: the earlier row wins
        imp("i7", DAY1 + timedelta(days=2, hours=5), ad="ad2"),
        imp("i8", DAY1 + timedelta(days=2, hours=23, minutes=30)),  # window still open at the end
    ]
    clicks = [
        {"click_id": "c1", "impression_id": "i1", "ts": iso(T10 + timedelta(hours=1))},  # exactly at the edge
        {"click_id": "c2", "impression_id": "i2", "ts": iso(T10 + timedelta(hours=1, milliseconds=1))},  # late
        {"click_id": "c3", "impression_id": "i3", "ts": iso(T10 + timedelta(minutes=5))},
        {"click_id": "c4", "impression_id": "i3", "ts": iso(T10 + timedelta(minutes=6))},  # duplicate
        {"click_id": "c5", "impression_id": "i3", "ts": iso(T10 + timedelta(minutes=7))},  # duplicate
        {"click_id": "c6", "impression_id": "ghost", "ts": iso(T10)},  # orphan
        {"click_id": "c7", "impression_id": "i4", "ts": iso(T10 - timedelta(minutes=1))},  # before impression
        {"click_id": "c8", "impression_id": "i7", "ts": iso(DAY1 + timedelta(days=2, hours=5, minutes=2))},
        {"click_id": "c9", "impression_id": "i6", "ts": iso(DAY1 + timedelta(days=1, hours=3, minutes=1))},
        {"impression_id": "i1"},  # line 10: no timestamp
    ]
    conversions = [
        {"impression_id": "i3", "ts": iso(T10 + timedelta(hours=2)), "value": 12.5},  # attributed
        {"impression_id": "i3", "ts": iso(T10 + timedelta(hours=3)), "value": 12.5},  # duplicate
        {"impression_id": "i5", "ts": iso(T10 + timedelta(hours=3))},  # impression never clicked
        {"impression_id": "ghost", "ts": iso(T10 + timedelta(hours=3))},  # orphan
        {"impression_id": "i1", "ts": iso(T10 + timedelta(days=5))},  # late: after the 1-day window
        {"impression_id": "i7", "ts": iso(DAY1 + timedelta(days=2, hours=23, minutes=59)), "value": "abc"},
    ]
    return {
        "impressions": write_jsonl(tmp_path / "logs" / "impressions.jsonl", impressions),
        "clicks": write_jsonl(tmp_path / "logs" / "clicks.jsonl", clicks),
        "conversions": write_jsonl(tmp_path / "logs" / "conversions.jsonl", conversions),
    }


def run(logs: dict[str, Path], out: Path, **kw):
    kw.setdefault("conversion_window", timedelta(days=1))
    return join_logs(logs["impressions"], logs["clicks"], out, conversions=logs["conversions"], **kw)


def test_click_attribution_buckets(logs, tmp_path):
    r = run(logs, tmp_path / "out", drop_immature=False)
    assert r.impressions == 8  # i1..i8, i6 once
    assert r.duplicate_impressions == 1
    assert r.clicks == 9  # the row without a timestamp is rejected, not counted
    assert r.attributed_clicks == 4  # i1 (edge), i3, i6, i7
    assert r.duplicate_clicks == 2
    assert r.orphan_clicks == 1
    assert r.early_clicks == 1
    assert r.late_clicks == 1
    assert r.clicks == (r.attributed_clicks + r.duplicate_clicks + r.orphan_clicks + r.early_clicks
                        + r.late_clicks)
    labels = dict(zip(*pq.read_table(r.ctr.train_path, columns=["impression_id", "label"])
                      .to_pydict().values()))
    assert labels == {"i1": 1, "i2": 0, "i3": 1, "i4": 0, "i5": 0, "i6": 1}


def test_window_edge_is_inclusive_and_configurable(logs, tmp_path):
    r = run(logs, tmp_path / "narrow", click_window=timedelta(minutes=59, seconds=59), drop_immature=False)
    assert r.late_clicks == 2  # i1's click at exactly 1 h is now outside too
    r = run(logs, tmp_path / "wide", click_window=timedelta(hours=1, milliseconds=1), drop_immature=False)
    assert r.late_clicks == 0


def test_conversion_buckets(logs, tmp_path):
    r = run(logs, tmp_path / "out", drop_immature=False)
    assert r.conversions == 5  # the row with value "abc" is rejected
    assert r.attributed_conversions == 1
    assert r.duplicate_conversions == 1
    assert r.conversions_without_click == 1
    assert r.orphan_conversions == 1
    assert r.late_conversions == 1
    cvr = pq.read_table(r.cvr.train_path).to_pydict()
    assert dict(zip(cvr["impression_id"], cvr["label"])) == {"i1": 0, "i3": 1, "i6": 0}
    i3 = cvr["impression_id"].index("i3")
    assert cvr["_conversion_delay_s"][i3] == pytest.approx(7200 - 300)
    assert cvr["_conversion_value"][i3] == 12.5


def test_malformed_rows_go_to_the_reject_file_with_lines(logs, tmp_path):
    r = run(logs, tmp_path / "out")
    assert r.rejected == {"impressions": 3, "clicks": 1, "conversions": 1}
    rejects = [json.loads(line) for line in Path(r.reject_path).read_text().splitlines()]
    where = {(Path(x["file"]).name, x["line"]): x["reason"] for x in rejects}
    assert where[("impressions.jsonl", 3)].startswith("bad JSON")
    assert where[("impressions.jsonl", 5)] == "missing field 'impression_id'"
    assert "timestamp" in where[("impressions.jsonl", 6)]
    assert where[("clicks.jsonl", 10)] == "missing field 'ts'"
    assert "value" in where[("conversions.jsonl", 6)]
    assert all(x["raw"] for x in rejects)
    saved = json.loads((tmp_path / "out" / "join_report.json").read_text())
    assert saved["rejected_rows"] == 5


def test_time_split_and_immature_rows(logs, tmp_path):
    end = DAY1 + timedelta(days=3) - timedelta(seconds=1)
    r = run(logs, tmp_path / "out", observation_end=end)
    assert r.observation_end == "2026-11-04T23:59:59Z"
    # i8 (23:30 on the last day) still has an open click window at the observation end
    assert r.ctr.immature_rows == 1
    assert r.ctr.split_time == "2026-11-04T00:00:00Z"
    valid = pq.read_table(r.ctr.valid_path).to_pydict()
    assert valid["impression_id"] == ["i7"]
    train = pq.read_table(r.ctr.train_path)
    assert train.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    split = datetime(2026, 11, 4, tzinfo=timezone.utc)
    assert max(train.column("ts").to_pylist()) < split
    assert r.ctr.train_rows + r.ctr.valid_rows == r.ctr.rows == r.impressions - r.ctr.immature_rows == 7
    r2 = run(logs, tmp_path / "out2", valid_days=2, observation_end=end)
    assert r2.ctr.split_time == "2026-11-03T00:00:00Z"
    assert sorted(pq.read_table(r2.ctr.valid_path).column("impression_id").to_pylist()) == ["i6", "i7"]


def test_spec_matches_the_written_columns(logs, tmp_path):
    r = run(logs, tmp_path / "out", numeric_columns=())
    spec = FieldSpec.from_yaml(r.ctr.spec_path)
    assert spec.label == "label"
    assert spec.field_names[:4] == ("ad_id", "creative_id", "campaign_id", "advertiser_id")
    assert "site_id" in spec.field_names
    assert "bid_price" not in spec.field_names and "bid_price" in spec.passthrough  # not known before the auction
    cols = set(pq.read_schema(r.ctr.train_path).names)
    assert set(spec.columns) <= cols


def test_numeric_context_columns(tmp_path):
    imps = write_jsonl(tmp_path / "imp.jsonl", [imp(f"i{n}", T10 + timedelta(minutes=n), age=20 + n)
                                                for n in range(5)] + [imp("bad", T10, age="old")])
    clicks = write_jsonl(tmp_path / "clk.jsonl", [{"impression_id": "i1", "ts": iso(T10 + timedelta(minutes=2))}])
    r = join_logs(imps, clicks, tmp_path / "out", numeric_columns=["age"], drop_immature=False)
    assert r.rejected["impressions"] == 1
    spec = FieldSpec.from_yaml(r.ctr.spec_path)
    assert spec.fields[spec.field_index("age")].kind == "numeric"
    assert pq.read_schema(r.ctr.valid_path).field("age").type == pa.float64()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet_give_the_same_counts(logs, tmp_path, fmt):
    expected = run(logs, tmp_path / "jsonl", drop_immature=False)
    converted = {}
    for kind, path in logs.items():
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the truncated line has no equivalent here
        names = sorted({k for row in rows for k in row})
        out = tmp_path / fmt / f"{kind}.{fmt}"
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            with open(out, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=names)
                w.writeheader()
                w.writerows(rows)
        else:
            pq.write_table(pa.table({n: [None if r.get(n) is None else str(r.get(n)) for r in rows]
                                     for n in names}), out)
        converted[kind] = out
    got = run(converted, tmp_path / f"out_{fmt}", drop_immature=False)
    for key in ("impressions", "duplicate_impressions", "attributed_clicks", "duplicate_clicks", "orphan_clicks",
                "early_clicks", "late_clicks", "attributed_conversions", "conversions_without_click"):
        assert getattr(got, key) == getattr(expected, key), key
    assert got.rejected["impressions"] == expected.rejected["impressions"] - 1


def test_csv_wrong_column_count_is_rejected_with_its_line(tmp_path):
    path = tmp_path / "imp.csv"
    path.write_text("impression_id,ts,ad_id\n"
                    "a,2026-11-02T10:00:00Z,ad1\n"
                    "b,2026-11-02T10:00:00Z\n"
                    "c,2026-11-02T10:00:00Z,ad1\n")
    sink = RejectSink(tmp_path / "rejects.jsonl")
    table = read_log(path, "impressions", sink)
    sink.close()
    assert table.column("impression_id").to_pylist() == ["a", "c"]
    assert table.column("_line").to_pylist() == [2, 4]
    rec = json.loads((tmp_path / "rejects.jsonl").read_text())
    assert (rec["line"], rec["kind"]) == (3, "impressions")
    assert rec["reason"].startswith("wrong number of columns")


def test_a_mostly_broken_file_stops_the_run(tmp_path):
    rows = ["not json"] * 150 + [json.dumps(imp(f"i{n}", T10)) for n in range(10)]
    path = write_jsonl(tmp_path / "imp.jsonl", rows)
    with pytest.raises(DataError, match="malformed"):
        read_log(path, "impressions", RejectSink(None))


def test_timestamp_forms():
    base = parse_timestamp("2026-11-02T10:00:00Z")
    assert parse_timestamp("2026-11-02T19:00:00+09:00") == base
    assert parse_timestamp("2026-11-02 10:00:00") == base
    assert parse_timestamp(base / 1e6) == base  # epoch seconds
    assert parse_timestamp(str(base // 1000)) == base  # epoch milliseconds as text
    assert parse_timestamp(base) == base  # epoch microseconds
    for bad in ("yesterday", "2026-13-45T99:00:00Z", "", -5, True):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_no_impressions_is_an_error(tmp_path):
    imps = write_jsonl(tmp_path / "imp.jsonl", ["{oops"])
    clicks = write_jsonl(tmp_path / "clk.jsonl", [])
    with pytest.raises(DataError, match="no valid impression"):
        join_logs(imps, clicks, tmp_path / "out")


@pytest.mark.parametrize("dirty", [False, True])
def test_reader_timestamps_and_values_follow_the_documented_rules(tmp_path, dirty):
    forms = ["2026-11-02T10:00:00Z", "2026-11-02T19:00:00+09:00", "2026-11-02 10:00:00.250",
             1793613600, 1793613600123, "1793613600.5", 1793613600123456]
    rows = [{"impression_id": f"i{n}", "ts": ts, "ad_id": 7, "bid_price": 2, "flag": True, "tags": ["a"]}
            for n, ts in enumerate(forms)]
    rows.append({"impression_id": 12345, "ts": forms[0], "ad_id": "x", "bid_price": 1.25, "flag": None})
    bad = ["{not json"] if dirty else []  # a bad line forces the line-by-line parser
    path = write_jsonl(tmp_path / "imp.jsonl", bad + rows)
    sink = RejectSink(None)
    t = read_log(path, "impressions", sink)
    assert sink.total == (1 if dirty else 0)
    assert t.column("ts_us").to_pylist() == [parse_timestamp(r["ts"]) for r in rows]
    assert t.column("impression_id").to_pylist()[-1] == "12345"
    assert t.column("ad_id").to_pylist() == ["7"] * len(forms) + ["x"]
    assert t.column("bid_price").to_pylist() == [2.0] * len(forms) + [1.25]
    assert t.column("flag").to_pylist()[0] == "true" and t.column("tags").to_pylist()[0] == '["a"]'
    assert t.column("_line").to_pylist() == list(range(1 + len(bad), len(rows) + 1 + len(bad)))


def test_a_context_column_named_like_an_output_column_is_refused(tmp_path):
    imps = write_jsonl(tmp_path / "imp.jsonl", [imp("i1", T10, label="x")])
    clicks = write_jsonl(tmp_path / "clk.jsonl", [])
    with pytest.raises(DataError, match="'label'"):
        join_logs(imps, clicks, tmp_path / "out")


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    rows = [json.dumps(imp(f"i{n}", T10)) for n in range(4)]
    path = tmp_path / "imp.jsonl"
    path.write_text(rows[0] + "\n\n" + rows[1] + "\n   \n" + rows[2] + "\n" + '{"impression_id": "x"}' + "\n" + rows[3])
    sink = RejectSink(tmp_path / "rejects.jsonl")
    t = read_log(path, "impressions", sink)
    sink.close()
    assert t.column("_line").to_pylist() == [1, 3, 5, 7]
    assert json.loads((tmp_path / "rejects.jsonl").read_text())["line"] == 6
    clean = tmp_path / "clean.jsonl"
    clean.write_text("\n".join(rows))  # no final newline
    assert read_log(clean, "impressions", RejectSink(None)).column("_line").to_pylist() == [1, 2, 3, 4]
