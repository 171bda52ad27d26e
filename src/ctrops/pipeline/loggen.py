"""A generator of realistic ad-delivery logs with a known click model.

The demo and the tests need logs that exercise everything the join and the
models must survive, with a ground truth to measure against:

* a hidden CTR model over user, site, device, slot and ad fields with
  *field interactions* (user segment x ad category, site category x ad,
  device x creative format), so a field-aware model beats a linear one;
* Zipf-popular users and sites, an hour-of-day traffic curve and weekend
  traffic dips;
* weekly behaviour: mobile clicks rise on weekends, and with `week_drift` > 0
  the ad effects and the site-category x ad affinities move steadily along a
  random direction, by `week_drift` times their initial spread per week (a
  campaign getting stale, audiences moving), which is why models are
  retrained weekly;
* click delays of seconds to minutes with a tail past the attribution window,
  conversion delays of hours to days, duplicate clicks and conversions
  (double-fired trackers), orphan clicks (the impression log lost the row),
  clicks logged before their impression (clock skew), view-through
  conversions without a click, and a few malformed lines;
* events after the observation end are not written, as in a real log cut.

Everything derives from `seed`: the same arguments write byte-identical files.
The truth counts in `GeneratedLogs` use the default attribution windows of
`ctrops.pipeline.join` (clicks 1 h, conversions 3 days).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ctrops.pipeline.logs_schema import LOG_FORMATS, format_timestamp

DEFAULT_START = date(2026, 10, 5)  # a Monday
NOMINAL_CLICK_WINDOW_S = 3600.0
NOMINAL_CONVERSION_WINDOW_S = 3 * 86400.0

DEVICES = ("mobile", "desktop", "tablet", "ctv")
DEVICE_SHARE = (0.6, 0.3, 0.08, 0.02)
OS_BY_DEVICE = {"mobile": ("android", "ios"), "desktop": ("windows", "macos", "linux"),
                "tablet": ("ios", "android"), "ctv": ("tvos", "androidtv")}
SLOTS = ("300x250", "728x90", "320x50", "160x600", "300x600")
FORMATS = ("banner", "native", "video")
IMPRESSION_COLUMNS = ("impression_id", "ts", "user_id", "user_segment", "site_id", "site_category",
                      "device_type", "os", "slot_size", "ad_id", "creative_id", "campaign_id", "advertiser_id",
                      "bid_price", "win_price")
CLICK_COLUMNS = ("click_id", "impression_id", "ts")
CONVERSION_COLUMNS = ("conversion_id", "impression_id", "ts", "value")


@dataclass
class GeneratedLogs:
    """Where the logs went and what the generator knows to be true about them."""

    out_dir: str
    format: str
    files: dict[str, list[str]] = field(default_factory=dict)  # kind -> day files
    impressions: int = 0
    clicks: int = 0  # distinct clicked impressions within the nominal click window
    duplicate_clicks: int = 0
    orphan_clicks: int = 0
    early_clicks: int = 0
    late_clicks: int = 0
    conversions: int = 0  # attributed conversions within the nominal window
    duplicate_conversions: int = 0
    conversions_without_click: int = 0
    late_conversions: int = 0
    malformed: dict[str, int] = field(default_factory=dict)  # kind -> lines corrupted on purpose
    mean_true_ctr: float = 0.0
    bayes_log_loss: float = 0.0  # log loss of the true CTR against the generated click outcomes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _World:
    """The hidden entities and weights; drawn once per seed."""

    user_segment: np.ndarray
    user_weight: np.ndarray
    user_device: np.ndarray
    user_pop: np.ndarray
    site_category: np.ndarray
    site_weight: np.ndarray
    site_pop: np.ndarray
    campaign_advertiser: np.ndarray
    campaign_category: np.ndarray
    ad_campaign: np.ndarray
    ad_weight: np.ndarray
    ad_drift: np.ndarray
    ad_creatives: list[np.ndarray]
    creative_format: np.ndarray
    creative_weight: np.ndarray
    device_weight: np.ndarray
    slot_weight: np.ndarray
    seg_vec: np.ndarray  # user segment x ad category
    cat_vec: np.ndarray
    sitecat_vec: np.ndarray  # site category x ad
    ad_vec: np.ndarray
    ad_vec_drift: np.ndarray
    device_vec: np.ndarray  # device x creative format
    format_vec: np.ndarray
    advertiser_cvr: np.ndarray
    advertiser_cpc: np.ndarray
    segment_cvr: np.ndarray


def _zipf_weights(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** a
    rng.shuffle(w)
    return w / w.sum()


def _world(rng: np.random.Generator, n_users: int, n_sites: int, n_ads: int) -> _World:
    k = 4
    n_segments, n_site_cats, n_advertisers, n_campaigns, n_ad_cats = 12, 15, 10, max(3, n_ads // 4), 8
    ad_creatives, creative_format = [], []
    for _ in range(n_ads):
        m = int(rng.integers(1, 4))
        ad_creatives.append(np.arange(len(creative_format), len(creative_format) + m))
        creative_format.extend(rng.integers(0, len(FORMATS), m).tolist())
    n_creatives = len(creative_format)
    return _World(
        user_segment=rng.integers(0, n_segments, n_users),
        user_weight=rng.normal(0, 0.3, n_users),
        user_device=rng.choice(len(DEVICES), n_users, p=DEVICE_SHARE),
        user_pop=_zipf_weights(n_users, 1.05, rng),
        site_category=rng.integers(0, n_site_cats, n_sites),
        site_weight=rng.normal(0, 0.5, n_sites),
        site_pop=_zipf_weights(n_sites, 1.1, rng),
        campaign_advertiser=rng.integers(0, n_advertisers, n_campaigns),
        campaign_category=rng.integers(0, n_ad_cats, n_campaigns),
        ad_campaign=rng.integers(0, n_campaigns, n_ads),
        ad_weight=rng.normal(0, 0.5, n_ads),
        ad_drift=rng.normal(0, 0.5, n_ads),
        ad_creatives=ad_creatives,
        creative_format=np.asarray(creative_format),
        creative_weight=rng.normal(0, 0.2, n_creatives),
        device_weight=np.array([0.2, -0.1, 0.05, -0.4]),
        slot_weight=rng.normal(0, 0.3, len(SLOTS)),
        seg_vec=rng.normal(0, 0.6, (n_segments, k)),
        cat_vec=rng.normal(0, 0.6, (n_ad_cats, k)),
        sitecat_vec=rng.normal(0, 0.55, (n_site_cats, k)),
        ad_vec=rng.normal(0, 0.55, (n_ads, k)),
        ad_vec_drift=rng.normal(0, 0.55, (n_ads, k)),
        device_vec=rng.normal(0, 0.5, (len(DEVICES), k)),
        format_vec=rng.normal(0, 0.5, (len(FORMATS), k)),
        advertiser_cvr=rng.normal(-2.6, 0.5, n_advertisers),
        advertiser_cpc=rng.uniform(0.2, 1.5, n_advertisers),
        segment_cvr=rng.normal(0, 0.3, n_segments),
    )


_HOUR_PROFILE = 1.0 + 0.6 * np.sin((np.arange(24) - 8) / 24 * 2 * np.pi)  # evening peak, night trough
_HOUR_PROFILE /= _HOUR_PROFILE.sum()
_WEEKDAY_VOLUME = np.array([1.0, 1.0, 1.0, 1.0, 1.05, 0.85, 0.8])


def _true_logit(w: _World, day: float, weekday: int, user: np.ndarray, site: np.ndarray, device: np.ndarray,
                slot: np.ndarray, ad: np.ndarray, creative: np.ndarray, hour: np.ndarray,
                week_drift: float) -> np.ndarray:
    drift = week_drift * day / 7.0
    campaign = w.ad_campaign[ad]
    ad_vec = w.ad_vec[ad] + drift * w.ad_vec_drift[ad]
    z = (-4.1 + w.user_weight[user] + w.site_weight[site] + w.ad_weight[ad] + drift * w.ad_drift[ad]
         + w.creative_weight[creative] + w.device_weight[device] + w.slot_weight[slot]
         + 0.15 * np.cos((hour - 21) / 24 * 2 * np.pi))
    z += np.einsum("ij,ij->i", w.seg_vec[w.user_segment[user]], w.cat_vec[w.campaign_category[campaign]])
    z += np.einsum("ij,ij->i", w.sitecat_vec[w.site_category[site]], ad_vec)
    z += np.einsum("ij,ij->i", w.device_vec[device], w.format_vec[w.creative_format[creative]])
    if weekday >= 5:  # weekends: phones click more, desktops less
        z += np.where(device == 0, 0.35, np.where(device == 1, -0.25, 0.0))
    return z


def _hex_ids(rng: np.random.Generator, n: int) -> list[str]:
    return [f"{x:016x}" for x in rng.integers(0, 2**63 - 1, n, dtype=np.int64).tolist()]


def generate_logs(out_dir: str | os.PathLike, days: int = 14, impressions_per_day: int = 20_000, seed: int = 0, *,
                  week_drift: float = 0.5, format: str = "jsonl", start: date | str = DEFAULT_START,
                  n_users: int = 5_000, n_sites: int = 150, n_ads: int = 120,
                  duplicate_click_rate: float = 0.03, orphan_click_rate: float = 0.01,
                  early_click_rate: float = 0.002, late_click_rate: float = 0.015,
                  duplicate_conversion_rate: float = 0.02, view_through_rate: float = 0.0005,
                  malformed_rate: float = 0.001, include_truth: bool = False) -> GeneratedLogs:
    """Write `days` days of impression, click and conversion logs under `out_dir`.

    Layout: `out_dir/{impressions,clicks,conversions}/<YYYY-MM-DD>.<jsonl|csv|parquet>`,
    one file per UTC day of the event time. With `include_truth`, impressions
    carry `_true_ctr` (the hidden click probability; a leading "_" keeps it out
    of the features). Returns the paths and the ground-truth counts.
    """
    if format not in LOG_FORMATS:
        raise ValueError(f"format must be one of {LOG_FORMATS}, got {format!r}")
    if days < 1 or impressions_per_day < 1:
        raise ValueError("days and impressions_per_day must be positive")
    start_day = date.fromisoformat(start) if isinstance(start, str) else start
    t0_us = int(datetime(start_day.year, start_day.month, start_day.day, tzinfo=timezone.utc).timestamp()) * 1_000_000
    end_us = t0_us + days * 86_400_000_000
    rng = np.random.default_rng(seed)
    world = _world(rng, n_users, n_sites, n_ads)
    out = Path(out_dir)
    result = GeneratedLogs(out_dir=str(out), format=format)

    imp_cols: dict[str, list] = {c: [] for c in IMPRESSION_COLUMNS}
    if include_truth:
        imp_cols["_true_ctr"] = []
    clicks: list[tuple[str, int]] = []  # (impression id, ts)
    conversions: list[tuple[str, int, float]] = []
    loss_sum = 0.0
    ctr_sum = 0.0
    for d in range(days):
        day_start = t0_us + d * 86_400_000_000
        weekday = (start_day + timedelta(days=d)).weekday()
        n = max(1, int(round(impressions_per_day * _WEEKDAY_VOLUME[weekday] * rng.uniform(0.95, 1.05))))
        hour = rng.choice(24, n, p=_HOUR_PROFILE)
        ts = np.sort(day_start + hour * 3_600_000_000 + rng.integers(0, 3_600_000_000, n))
        hour = ((ts - day_start) // 3_600_000_000).astype(np.int64)
        user = rng.choice(n_users, n, p=world.user_pop)
        device = np.where(rng.random(n) < 0.85, world.user_device[user],
                          rng.choice(len(DEVICES), n, p=DEVICE_SHARE))
        site = rng.choice(n_sites, n, p=world.site_pop)
        slot = rng.integers(0, len(SLOTS), n)
        ad = rng.integers(0, n_ads, n)
        creative = np.array([world.ad_creatives[a][rng.integers(0, len(world.ad_creatives[a]))] for a in ad.tolist()],
                            dtype=np.int64)
        z = _true_logit(world, d + 0.5, weekday, user, site, device, slot, ad, creative, hour, week_drift)
        p = 1.0 / (1.0 + np.exp(-z))
        clicked = rng.random(n) < p
        ids = _hex_ids(rng, n)
        campaign = world.ad_campaign[ad]
        advertiser = world.campaign_advertiser[campaign]
        bid = p * world.advertiser_cpc[advertiser] * 1000.0 * rng.lognormal(0, 0.2, n)
        win = bid * rng.uniform(0.4, 1.0, n)
        for t, u, s, dev, sl, a, c, camp, adv, b, wp, pr, i in zip(
                ts.tolist(), user.tolist(), site.tolist(), device.tolist(), slot.tolist(), ad.tolist(),
                creative.tolist(), campaign.tolist(), advertiser.tolist(), bid.tolist(), win.tolist(),
                p.tolist(), ids):
            imp_cols["impression_id"].append(i)
            imp_cols["ts"].append(t)
            imp_cols["user_id"].append(f"u{u}")
            imp_cols["user_segment"].append(f"seg{world.user_segment[u]}")
            imp_cols["site_id"].append(f"site{s}")
            imp_cols["site_category"].append(f"cat{world.site_category[s]}")
            dname = DEVICES[dev]
            imp_cols["device_type"].append(dname)
            imp_cols["os"].append(OS_BY_DEVICE[dname][(u + s) % len(OS_BY_DEVICE[dname])])
            imp_cols["slot_size"].append(SLOTS[sl])
            imp_cols["ad_id"].append(f"ad{a}")
            imp_cols["creative_id"].append(f"cr{c}")
            imp_cols["campaign_id"].append(f"camp{camp}")
            imp_cols["advertiser_id"].append(f"adv{adv}")
            imp_cols["bid_price"].append(round(b, 4))
            imp_cols["win_price"].append(round(wp, 4))
            if include_truth:
                imp_cols["_true_ctr"].append(round(pr, 6))
        pc = np.clip(p, 1e-12, 1 - 1e-12)
        loss_sum += float(-(np.log(pc[clicked]).sum() + np.log1p(-pc[~clicked]).sum()))
        ctr_sum += float(p.sum())

        # clicks: delay of about a minute, a tail past the window, some before the impression
        ci = np.flatnonzero(clicked)
        delay_s = np.exp(rng.normal(np.log(60.0), 1.2, ci.size))
        kind = rng.random(ci.size)
        late = kind < late_click_rate
        early = (kind >= late_click_rate) & (kind < late_click_rate + early_click_rate)
        delay_s[late] = rng.uniform(NOMINAL_CLICK_WINDOW_S * 1.05, NOMINAL_CLICK_WINDOW_S * 6, int(late.sum()))
        delay_s[early] = -rng.uniform(1.0, 30.0, int(early.sum()))
        delay_s = np.minimum(delay_s, np.where(late, np.inf, NOMINAL_CLICK_WINDOW_S - 60.0))
        delay_s[~late & ~early] = np.maximum(delay_s[~late & ~early], 0.5)
        click_ts = ts[ci] + (delay_s * 1e6).astype(np.int64)
        for j, (row, cts) in enumerate(zip(ci.tolist(), click_ts.tolist())):
            if cts >= end_us:
                continue  # after the log cut
            iid = ids[row]
            clicks.append((iid, cts))
            if late[j]:
                result.late_clicks += 1
                continue
            if early[j]:
                result.early_clicks += 1
                continue
            result.clicks += 1
            if rng.random() < duplicate_click_rate:  # a double-fired tracker, seconds later
                extra = int(rng.integers(1, 3))
                for e in range(extra):
                    dts = cts + int(rng.uniform(0.5, 10.0) * 1e6) * (e + 1)
                    if dts < end_us:
                        clicks.append((iid, dts))
                        result.duplicate_clicks += 1
            # conversions given an attributed click
            adv = int(advertiser[row])
            pz = world.advertiser_cvr[adv] + world.segment_cvr[world.user_segment[user[row]]] \
                + (0.3 if device[row] == 1 else 0.0)
            if rng.random() < 1.0 / (1.0 + np.exp(-pz)):
                conv_ts = cts + int(np.exp(rng.normal(np.log(6 * 3600.0), 1.3)) * 1e6)
                if conv_ts < end_us:
                    value = round(float(rng.lognormal(3.5, 0.8)), 2)
                    conversions.append((iid, conv_ts, value))
                    if conv_ts - cts > NOMINAL_CONVERSION_WINDOW_S * 1e6:
                        result.late_conversions += 1
                    else:
                        result.conversions += 1
                        if rng.random() < duplicate_conversion_rate:
                            conversions.append((iid, conv_ts + int(rng.uniform(1, 120) * 1e6), value))
                            result.duplicate_conversions += 1
        # view-through conversions: an impression converts without a click
        vt = np.flatnonzero(~clicked & (rng.random(n) < view_through_rate))
        for row in vt.tolist():
            conv_ts = int(ts[row]) + int(rng.uniform(1, 48) * 3.6e9)
            if conv_ts < end_us:
                conversions.append((ids[row], conv_ts, round(float(rng.lognormal(3.5, 0.8)), 2)))
                result.conversions_without_click += 1

    # orphan clicks: their impression row never reached the log
    n_orphans = int(round(orphan_click_rate * max(result.clicks, 1)))
    orphan_ts = rng.integers(t0_us, end_us, n_orphans).tolist()
    for iid, t in zip(_hex_ids(rng, n_orphans), orphan_ts):
        clicks.append((iid, int(t)))
    result.orphan_clicks = n_orphans
    result.impressions = len(imp_cols["impression_id"])
    result.mean_true_ctr = ctr_sum / result.impressions
    result.bayes_log_loss = loss_sum / result.impressions

    clicks.sort(key=lambda c: c[1])
    conversions.sort(key=lambda c: c[1])
    click_cols = {"click_id": _hex_ids(rng, len(clicks)), "impression_id": [c[0] for c in clicks],
                  "ts": [c[1] for c in clicks]}
    conv_cols = {"conversion_id": _hex_ids(rng, len(conversions)), "impression_id": [c[0] for c in conversions],
                 "ts": [c[1] for c in conversions], "value": [c[2] for c in conversions]}
    for kind, cols in (("impressions", imp_cols), ("clicks", click_cols), ("conversions", conv_cols)):
        files, bad = _write_kind(out / kind, cols, format, t0_us, days, malformed_rate, rng)
        result.files[kind] = files
        result.malformed[kind] = bad
    return result


def _write_kind(directory: Path, cols: dict[str, list], fmt: str, t0_us: int, days: int,
                malformed_rate: float, rng: np.random.Generator) -> tuple[list[str], int]:
    """Split rows by UTC day of `ts`, corrupt a few, write one file per day."""
    directory.mkdir(parents=True, exist_ok=True)
    names = list(cols)
    ts = np.asarray(cols["ts"], dtype=np.int64)
    day_of = (ts - t0_us) // 86_400_000_000
    files, corrupted = [], 0
    for d in range(days):
        rows = np.flatnonzero(day_of == d)
        day = datetime.fromtimestamp((t0_us + d * 86_400_000_000) / 1e6, tz=timezone.utc).date().isoformat()
        path = directory / f"{day}.{fmt}"
        records = [{c: cols[c][r] for c in names} for r in rows.tolist()]
        for rec in records:
            rec["ts"] = format_timestamp(rec["ts"])
        bad_rows = np.flatnonzero(rng.random(len(records)) < malformed_rate)
        damage = rng.integers(0, 3, bad_rows.size)
        broken_json: set[int] = set()
        for r, how in zip(bad_rows.tolist(), damage.tolist()):
            if how == 0 and fmt != "parquet":
                broken_json.add(r)  # truncated write / shifted columns, applied to the text below
            elif how == 1 or (how == 0 and fmt == "parquet"):
                records[r]["impression_id"] = None
            else:
                records[r]["ts"] = "2026-13-45T99:00:00Z" if r % 2 else "yesterday"
        corrupted += bad_rows.size
        _write_file(path, names, records, fmt, broken_json)
        files.append(str(path))
    return files, corrupted


def _write_file(path: Path, names: list[str], records: list[dict], fmt: str, broken: set[int]) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for r, rec in enumerate(records):
                line = json.dumps({k: v for k, v in rec.items() if v is not None}, separators=(",", ":"))
                fh.write((line[: len(line) // 2] if r in broken else line) + "\n")
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(names)
        for r, rec in enumerate(records):
            row = ["" if rec[c] is None else rec[c] for c in names]
            writer.writerow(row[:-2] if r in broken else row)
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: [rec[c] for rec in records] for c in names})
        pq.write_table(table, tmp)
    os.replace(tmp, path)
